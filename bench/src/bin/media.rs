//! `just bench` (second part): the media relay. N concurrent streams, each a fake Twilio sending a
//! 20 ms μ-law frame 50 times a second and timing each frame until the echo agent's answer comes
//! back, first straight to the agent (the baseline: the agent's and the client's own time), then
//! through `callplane serve` (release build) in the same run. The relay's added latency is the
//! difference of the percentiles; the server's CPU per stream comes from `/proc/<pid>/stat`, and
//! the memory of an idle stream from the server's RSS before and after opening idle streams.
//!
//! `BENCH_STREAMS` (default 200), `BENCH_SECS` (default 5, measured after 1 s of warm-up),
//! `BENCH_IDLE_STREAMS` (default 500). Targets (docs/performance.md): p99 added latency below
//! 5 ms with 200 streams, an idle stream below 64 KiB.

use std::cell::RefCell;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::bail;
use callplane_plugin_api::storage::{Db, sqlx};
use callplane_plugin_media::fake::{self, Agent, frame_of, payload};
use callplane_plugin_twilio::signature;
use futures_util::{SinkExt as _, StreamExt as _};

#[path = "../inbound.rs"]
mod inbound;
#[path = "../procs.rs"]
mod procs;

use procs::{built, clean_command, clock_ticks_per_second, cpu_ticks, env_number, free_port, memory_mb, stop};

const TOKEN: &str = "bench-media-token-51c0";
const ACCOUNT: &str = "AC5ef8732a3c49700934481addd5ce1659";
const NUMBER: &str = "+15005550006";
const WARMUP: Duration = Duration::from_secs(1);

/// Round-trip times of the measured frames, in microseconds.
type Samples = Rc<RefCell<Vec<u64>>>;

/// What every stream of one load shares.
struct Run<'a> {
    client: &'a awc::Client,
    url: &'a str,
    signature: Option<&'a str>,
    measured_from: Instant,
    until: Instant,
    samples: Samples,
}

/// One stream: `connected` and `start`, then a frame every 20 ms (the first after `offset`) until
/// `until`, timing each echo; a `stop` at the end. Frames sent before `measured_from` are not
/// counted.
async fn stream(run: &Run<'_>, call_sid: &str, offset: Duration) -> anyhow::Result<()> {
    let Run {
        client,
        url,
        signature,
        measured_from,
        until,
        samples,
    } = run;
    let (measured_from, until) = (*measured_from, *until);
    let mut request = client.ws(*url);
    if let Some(signature) = signature {
        request = request.set_header("x-twilio-signature", *signature);
    }
    let (_, framed) = request.connect().await.map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
    let (mut sink, mut source) = framed.split();
    let stream_sid = format!("MZ{}", &call_sid[2..]);
    let text = |v: serde_json::Value| awc::ws::Message::Text(v.to_string().into());
    sink.send(text(
        serde_json::json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}),
    ))
    .await?;
    sink.send(text(serde_json::json!({
        "event": "start", "sequenceNumber": "1", "streamSid": stream_sid,
        "start": {"accountSid": ACCOUNT, "streamSid": stream_sid, "callSid": call_sid, "tracks": ["inbound"],
                  "customParameters": {"call_sid": call_sid, "business_id": "1"},
                  "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}
    })))
    .await?;
    let sent: Rc<RefCell<Vec<Instant>>> = Rc::default();
    let speaking = {
        let sent = sent.clone();
        async move {
            actix_web::rt::time::sleep(offset).await;
            let mut tick = actix_web::rt::time::interval(Duration::from_millis(20));
            let mut n: u32 = 0;
            while Instant::now() < until {
                tick.tick().await;
                sent.borrow_mut().push(Instant::now());
                let media = serde_json::json!({
                    "event": "media", "streamSid": stream_sid,
                    "media": {"track": "inbound", "chunk": (n + 1).to_string(), "timestamp": (n * 20).to_string(), "payload": payload(n)}
                });
                sink.send(text(media)).await?;
                n += 1;
            }
            sink.send(text(serde_json::json!({"event": "stop", "streamSid": stream_sid})))
                .await?;
            anyhow::Ok(sink)
        }
    };
    let listening = async {
        while let Some(Ok(frame)) = source.next().await {
            let awc::ws::Frame::Text(bytes) = frame else {
                continue;
            };
            let now = Instant::now();
            let v: serde_json::Value = serde_json::from_slice(&bytes)?;
            let Some(n) = v["media"]["payload"].as_str().and_then(frame_of) else {
                continue;
            };
            let at = sent.borrow().get(n as usize).copied();
            if let Some(at) = at.filter(|at| *at >= measured_from) {
                samples
                    .borrow_mut()
                    .push(u64::try_from(now.duration_since(at).as_micros()).unwrap_or(u64::MAX));
            }
        }
        anyhow::Ok(())
    };
    let (spoke, _) = futures_util::join!(speaking, listening);
    drop(spoke?);
    Ok(())
}

/// `n` streams at once, staggered over one frame period; the round trips of the measured frames.
async fn load(
    url: &str,
    signed: bool,
    call_sids: &[String],
    measure: Duration,
) -> anyhow::Result<(Vec<u64>, Duration)> {
    let client = fake::client();
    let samples = Samples::default();
    let started = Instant::now();
    let (measured_from, until) = (started + WARMUP, started + WARMUP + measure);
    let signature = signed.then(|| signature::compute(TOKEN, url, std::iter::empty::<(&str, &str)>()));
    let n = u32::try_from(call_sids.len()).unwrap_or(u32::MAX).max(1);
    let run = Run {
        client: &client,
        url,
        signature: signature.as_deref(),
        measured_from,
        until,
        samples: samples.clone(),
    };
    let streams = call_sids.iter().enumerate().map(|(i, sid)| {
        let offset = Duration::from_millis(20) * u32::try_from(i).unwrap_or(0) / n;
        stream(&run, sid, offset)
    });
    for result in futures_util::future::join_all(streams).await {
        result?;
    }
    let mut samples = samples.take();
    samples.sort_unstable();
    Ok((samples, measure))
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[rank] as f64 / 1000.0
}

/// `callplane serve` in a directory of its own, on SQLite, its business's media server the echo
/// agent.
struct Relay {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl Relay {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = clean_command(&self.bin, self.dir.path(), args);
        cmd.env("CALLPLANE_BIND", format!("127.0.0.1:{}", self.port))
            .env("CALLPLANE_DATABASE_URL", self.database_url())
            .env("CALLPLANE_LOG_DIR", self.dir.path().join("logs"))
            .env("CALLPLANE_SPOOL_DIR", self.dir.path().join("spool"))
            .env("CALLPLANE_PUBLIC_BASE_URL", self.base())
            .env("CALLPLANE_SHUTDOWN_DRAIN_SECS", "0")
            .env("CALLPLANE_MEDIA_IDLE_TIMEOUT_SECS", "600")
            .env("CALLPLANE_MEDIA_MAX_STREAMS", "10000")
            .env("TWILIO_ACCOUNT_SID", ACCOUNT)
            .env("TWILIO_AUTH_TOKEN", TOKEN)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn database_url(&self) -> String {
        format!("sqlite://{}/callplane.db", self.dir.path().display())
    }

    /// Seeds the business (its media server the agent: `ws://` on loopback, written by hand as
    /// `admin create-business` takes `wss://` only) and answers `calls` calls, as Twilio would
    /// before it opens their streams.
    async fn seed(&self, agent: &str, calls: &[String]) -> anyhow::Result<()> {
        let out = self
            .command(&["admin", "create-business", "--name", "Bench", "--phone", NUMBER])
            .output()?;
        if !out.status.success() {
            bail!("seeding: {}", String::from_utf8_lossy(&out.stderr));
        }
        let db = Db::connect_lazy(&self.database_url())?;
        db.run(|pool| {
            sqlx::query("UPDATE businesses SET media_stream_url = $1")
                .bind(format!("{agent}/echo"))
                .execute(pool)
        })
        .await?;
        db.close().await;
        let client = awc::Client::default();
        for sid in calls {
            inbound::call(&client, &self.base(), TOKEN, NUMBER, sid).await?;
        }
        Ok(())
    }
}

async fn wait_ready(base: &str) -> anyhow::Result<()> {
    let client = awc::Client::default();
    let started = Instant::now();
    loop {
        if let Ok(res) = client.get(format!("{base}/readyz")).send().await
            && res.status().is_success()
        {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("{base} not ready within 30 s");
        }
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Opens `n` streams that say nothing after `start` (Twilio's side of a call on hold) and holds
/// them open for `hold`.
async fn idle_streams(url: &str, call_sids: &[String], hold: Duration) -> anyhow::Result<usize> {
    let client = fake::client();
    let signature = signature::compute(TOKEN, url, std::iter::empty::<(&str, &str)>());
    let mut open = Vec::new();
    for sid in call_sids {
        let (_, framed) = client
            .ws(url)
            .set_header("x-twilio-signature", signature.as_str())
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut framed = framed;
        let stream_sid = format!("MZ{}", &sid[2..]);
        for message in [
            serde_json::json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}),
            serde_json::json!({"event": "start", "streamSid": stream_sid, "start": {"callSid": sid, "streamSid": stream_sid, "tracks": ["inbound"], "customParameters": {"call_sid": sid, "business_id": "1"}}}),
        ] {
            framed.send(awc::ws::Message::Text(message.to_string().into())).await?;
        }
        open.push(framed);
    }
    actix_web::rt::time::sleep(hold).await;
    Ok(open.len())
}

fn main() -> anyhow::Result<()> {
    let bin = built("callplane")?;
    let streams = usize::try_from(env_number("BENCH_STREAMS", 200)).unwrap_or(200);
    let idle = usize::try_from(env_number("BENCH_IDLE_STREAMS", 500)).unwrap_or(500);
    let measure = Duration::from_secs(env_number("BENCH_SECS", 5));
    actix_web::rt::System::new().block_on(async move {
        let agent = Agent::start(Duration::ZERO);
        let calls: Vec<String> = (0..streams + idle).map(|i| format!("CA{:032x}", i + 1)).collect();
        let (active, held) = calls.split_at(streams);
        println!(
            "media relay bench: {streams} streams x 50 frames/s, {} s measured after {} s, echo agent in this process",
            measure.as_secs(),
            WARMUP.as_secs()
        );
        let direct = load(&format!("{}/echo", agent.base), false, active, measure).await?.0;

        let relay = Relay {
            dir: tempfile::tempdir()?,
            bin,
            port: free_port()?,
        };
        let child = relay.command(&["serve"]).spawn()?;
        wait_ready(&relay.base()).await?;
        relay.seed(&agent.base, &calls).await?;
        let pid = child.id();
        let url = format!("{}/ws/twilio/media", relay.base().replacen("http://", "ws://", 1));
        let tick = clock_ticks_per_second();
        let cpu_before = cpu_ticks(pid)?;
        let timed = Instant::now();
        let relayed = load(&url, true, active, measure).await?.0;
        let cpu = (cpu_ticks(pid)? - cpu_before) as f64 / tick / timed.elapsed().as_secs_f64();

        let rss_before = memory_mb(pid, "VmRSS")?;
        let rss_url = url.clone();
        let held: Vec<String> = held.to_vec();
        let holding = actix_web::rt::spawn(async move { idle_streams(&rss_url, &held, Duration::from_secs(3)).await });
        actix_web::rt::time::sleep(Duration::from_secs(2)).await;
        let rss_after = memory_mb(pid, "VmRSS")?;
        let opened = holding.await??;
        stop(child)?;
        agent.stop().await;

        let row = |name: &str, s: &[u64]| {
            println!(
                "  {name:<14} {:>8.2} {:>8.2} {:>8.2}   ({} frames)",
                percentile(s, 0.5),
                percentile(s, 0.99),
                percentile(s, 0.999),
                s.len()
            );
        };
        println!("round trip, frame in -> echo out (ms):");
        println!("  {:<14} {:>8} {:>8} {:>8}", "", "p50", "p99", "p99.9");
        row("agent direct", &direct);
        row("through relay", &relayed);
        let added_p50 = percentile(&relayed, 0.5) - percentile(&direct, 0.5);
        let added_p99 = percentile(&relayed, 0.99) - percentile(&direct, 0.99);
        println!("  {:<14} {added_p50:>8.2} {added_p99:>8.2}", "added");
        let expected = streams as f64 * 50.0 * measure.as_secs_f64();
        let lost = 1.0 - relayed.len() as f64 / expected;
        println!(
            "server CPU: {:.1} % of a core for {streams} streams, {:.3} % per stream; {:.2} % of the measured frames not echoed",
            cpu * 100.0,
            cpu * 100.0 / streams as f64,
            lost * 100.0
        );
        let per_idle_kib = (rss_after - rss_before) * 1024.0 / opened.max(1) as f64;
        println!("memory: {per_idle_kib:.1} KiB per idle stream ({opened} idle streams, RSS {rss_before:.1} -> {rss_after:.1} MB)");
        let p99_ok = added_p99 < 5.0;
        let memory_ok = per_idle_kib < 64.0;
        println!(
            "targets: p99 added latency < 5 ms: {} ({added_p99:.2} ms); idle stream < 64 KiB: {} ({per_idle_kib:.1} KiB)",
            if p99_ok { "met" } else { "MISSED" },
            if memory_ok { "met" } else { "MISSED" }
        );
        anyhow::Ok(())
    })
}
