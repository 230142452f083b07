//! `just bench` (third part): what open console pages cost. Each open live list asks
//! `GET /console/live` every 3 s with the entity tag of the rows it shows (exactly what the page's
//! script does), so an unchanged list costs a 304 without a body. This driver opens `BENCH_PAGES`
//! such pages (default 50) against `callplane serve` (release build, SQLite) whose business already
//! has 100 calls and receives a new one every `BENCH_CALL_EVERY_SECS` (default 10; 2 is a busy
//! line, where nearly every refresh finds news), and measures the server's CPU from
//! `/proc/<pid>/stat` over `BENCH_SECS` (default 60), against the same server with the same calls
//! arriving and no page open, in the same run.

use std::cell::Cell;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

#[path = "../inbound.rs"]
mod inbound;
#[path = "../procs.rs"]
mod procs;

use procs::{built, clean_command, clock_ticks_per_second, cpu_ticks, env_number, free_port, memory_mb, stop};

const TOKEN: &str = "bench-console-token-7d21";
const ACCOUNT: &str = "AC5ef8732a3c49700934481addd5ce1659";
const NUMBER: &str = "+15005550006";
const EMAIL: &str = "operator@bench.example";
const PASSWORD: &str = "a long bench password";
/// How often the page's script asks (console.js, REFRESH_MS).
const REFRESH: Duration = Duration::from_secs(3);
/// Calls the business has before the measurement.
const SEEDED_CALLS: u32 = 100;

/// `callplane serve` in a directory of its own, on SQLite.
struct Server {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl Server {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = clean_command(&self.bin, self.dir.path(), args);
        cmd.env("CALLPLANE_BIND", format!("127.0.0.1:{}", self.port))
            .env(
                "CALLPLANE_DATABASE_URL",
                format!("sqlite://{}/callplane.db", self.dir.path().display()),
            )
            .env("CALLPLANE_LOG_DIR", self.dir.path().join("logs"))
            .env("CALLPLANE_SPOOL_DIR", self.dir.path().join("spool"))
            .env("CALLPLANE_PUBLIC_BASE_URL", self.base())
            .env("CALLPLANE_SHUTDOWN_DRAIN_SECS", "0")
            .env("TWILIO_ACCOUNT_SID", ACCOUNT)
            .env("TWILIO_AUTH_TOKEN", TOKEN)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The business and its operator, with the real admin commands.
    fn seed(&self) -> anyhow::Result<()> {
        let out = self
            .command(&["admin", "create-business", "--name", "Bench", "--phone", NUMBER])
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!("create-business: {}", String::from_utf8_lossy(&out.stderr));
        }
        let mut user = self
            .command(&[
                "admin",
                "create-user",
                "--business",
                "1",
                "--email",
                EMAIL,
                "--role",
                "agent",
            ])
            .stdin(Stdio::piped())
            .spawn()?;
        std::io::Write::write_all(
            user.stdin.as_mut().context("stdin")?,
            format!("{PASSWORD}\n").as_bytes(),
        )?;
        if !user.wait()?.success() {
            bail!("create-user failed");
        }
        Ok(())
    }
}

/// What the pages saw.
#[derive(Default)]
struct Counts {
    changed: Cell<u64>,
    unchanged: Cell<u64>,
    bytes: Cell<u64>,
}

/// One open live list until `until`: a request every [`REFRESH`] (the first after `offset`),
/// with the session cookie and the last entity tag.
async fn page(
    client: &awc::Client,
    url: &str,
    cookie: &str,
    offset: Duration,
    until: Instant,
    counts: &Counts,
) -> anyhow::Result<()> {
    actix_web::rt::time::sleep(offset).await;
    let mut tag: Option<String> = None;
    while Instant::now() < until {
        let mut request = client.get(url).insert_header(("cookie", cookie));
        if let Some(tag) = &tag {
            request = request.insert_header(("if-none-match", tag.as_str()));
        }
        let mut res = request.send().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        match res.status().as_u16() {
            200 => {
                tag = res
                    .headers()
                    .get("etag")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let body = res.body().limit(4 << 20).await?;
                counts.changed.set(counts.changed.get() + 1);
                counts
                    .bytes
                    .set(counts.bytes.get() + u64::try_from(body.len()).unwrap_or(0));
            }
            304 => counts.unchanged.set(counts.unchanged.get() + 1),
            other => bail!("GET {url} answered {other}"),
        }
        actix_web::rt::time::sleep(REFRESH).await;
    }
    Ok(())
}

/// A new call every `every` from `first` until `until`; returns the next number.
async fn arrivals(
    client: &awc::Client,
    base: &str,
    every: Duration,
    first: u32,
    until: Instant,
) -> anyhow::Result<u32> {
    let mut n = first;
    while Instant::now() < until {
        inbound::call(client, base, TOKEN, NUMBER, &format!("CA{n:032x}")).await?;
        n += 1;
        actix_web::rt::time::sleep(every).await;
    }
    Ok(n)
}

/// The server's CPU (share of one core) while `work` runs.
async fn cpu_while<F: std::future::Future<Output = anyhow::Result<T>>, T>(
    pid: u32,
    work: F,
) -> anyhow::Result<(f64, T)> {
    let before = cpu_ticks(pid)?;
    let started = Instant::now();
    let out = work.await?;
    let ticks = (cpu_ticks(pid)? - before) as f64;
    Ok((ticks / clock_ticks_per_second() / started.elapsed().as_secs_f64(), out))
}

fn main() -> anyhow::Result<()> {
    let bin = built("callplane")?;
    let pages = u32::try_from(env_number("BENCH_PAGES", 50)).unwrap_or(50);
    let secs = Duration::from_secs(env_number("BENCH_SECS", 60));
    let every = Duration::from_secs(env_number("BENCH_CALL_EVERY_SECS", 10).max(1));
    let server = Server {
        dir: tempfile::tempdir()?,
        bin,
        port: free_port()?,
    };
    server.seed()?;
    let child = server.command(&["serve"]).stdin(Stdio::null()).spawn()?;
    let pid = child.id();
    let result = actix_web::rt::System::new().block_on(async {
        let base = server.base();
        let client = awc::Client::builder().timeout(Duration::from_secs(10)).finish();
        let started = Instant::now();
        loop {
            if let Ok(res) = client.get(format!("{base}/readyz")).send().await
                && res.status().is_success()
            {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("{base} not ready within 30 s");
            }
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        }
        for n in 1..=SEEDED_CALLS {
            inbound::call(&client, &base, TOKEN, NUMBER, &format!("CA{n:032x}")).await?;
        }
        let login = client
            .post(format!("{base}/api/auth/login"))
            .send_json(&serde_json::json!({ "email": EMAIL, "password": PASSWORD }))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .json::<serde_json::Value>()
            .await?;
        let cookie = format!(
            "callplane_session={}",
            login["token"].as_str().context("a session token")?
        );
        println!(
            "console bench: {pages} open live lists (a GET every {} s with If-None-Match), {SEEDED_CALLS} calls, a new call every {} s; {} s per phase",
            REFRESH.as_secs(),
            every.as_secs(),
            secs.as_secs()
        );

        // Baseline: the same arrivals, no page open.
        let until = Instant::now() + secs;
        let (idle_cpu, next) = cpu_while(pid, arrivals(&client, &base, every, SEEDED_CALLS + 1, until)).await?;

        // The pages, staggered over one refresh period as real users would be.
        let url = format!("{base}/console/live?since=24h&number=&verdict=");
        let counts = Rc::new(Counts::default());
        let until = Instant::now() + secs;
        let open = (0..pages).map(|i| {
            let offset = REFRESH * i / pages.max(1);
            let (client, url, cookie, counts) = (&client, &url, &cookie, counts.clone());
            async move { page(client, url, cookie, offset, until, &counts).await }
        });
        let (open_cpu, _) = cpu_while(pid, async {
            let (pages_done, arrived) =
                futures_util::join!(futures_util::future::join_all(open), arrivals(&client, &base, every, next, until));
            for done in pages_done {
                done?;
            }
            arrived
        })
        .await?;
        let requests = counts.changed.get() + counts.unchanged.get();
        let minutes = secs.as_secs_f64() / 60.0;
        let per_request_ms = (open_cpu - idle_cpu).max(0.0) * secs.as_secs_f64() * 1000.0 / requests.max(1) as f64;
        println!(
            "  no page open      server CPU {:5.1} % of a core",
            idle_cpu * 100.0
        );
        println!(
            "  {pages} pages open     server CPU {:5.1} % of a core ({:+.1} points: {:.2} % of a core per open page)",
            open_cpu * 100.0,
            (open_cpu - idle_cpu) * 100.0,
            (open_cpu - idle_cpu) * 100.0 / f64::from(pages.max(1))
        );
        println!(
            "  requests          {requests} in {} s: {:.1} per page per minute; {} changed (200, {:.1} KB each), {} unchanged (304)",
            secs.as_secs(),
            requests as f64 / f64::from(pages.max(1)) / minutes,
            counts.changed.get(),
            counts.bytes.get() as f64 / 1000.0 / counts.changed.get().max(1) as f64,
            counts.unchanged.get()
        );
        println!(
            "  server CPU per refresh {per_request_ms:.2} ms; server RSS {:.0} MB (peak {:.0} MB)",
            memory_mb(pid, "VmRSS")?,
            memory_mb(pid, "VmHWM")?
        );
        anyhow::Ok(())
    });
    stop(child)?;
    result
}
