//! `just bench`: measures callplane's webhook path against a minimal actix-web baseline in the
//! same run, with the same signed 25-parameter Twilio form, and checks the targets of
//! docs/performance.md.
//!
//! For each scenario a fresh server process is started in its own directory (SQLite database, or
//! a scratch PostgreSQL database, with a seeded business; log directory), driven from this process
//! by a bounded load generator (raw HTTP/1.1 on one thread: a fixed number of keep-alive
//! connections, each writing its next request when the last answer is read, every request with a
//! new CallSid), then stopped. Server CPU time comes from `/proc/<pid>/stat`, memory from
//! `/proc/<pid>/status`. The headline is the server CPU per request against the baseline's: the
//! one figure a load generator sharing the cores cannot flatter.
//!
//! At 32 connections two more compare the same steady valid load (8,000 webhooks a second, a
//! quarter of saturation) alone and with as many forged webhooks beside it on 32 more
//! connections: forged traffic must not slow valid webhooks down.
//!
//! With `TEST_POSTGRES_URL` set, two more scenarios run at 32 connections: recorded on PostgreSQL,
//! and `db_down`: PostgreSQL taken away (through a TCP hop the bench cuts) after boot, every
//! webhook spooled.
//!
//! Run from the repository root after `cargo build --release -p callplane -p callplane-bench`.
//! Every scenario runs in five rounds, interleaved with the others, and its median round is
//! reported: a slow spell of the shared machine then hits every scenario alike.
//! `BENCH_SECS` (default 5) sets the measured seconds per round (after 2 s of warm-up).
//! `BENCH_ONLY=recorded@32` (or `baseline@128`, `unrecorded@32`, `recorded-pg@32`, `db_down@32`,
//! `paced@32`, `forged50@32`)
//! runs one scenario alone and
//! checks no targets: for profiling it (docs/performance.md). With it, `BENCH_WRAP` is a command
//! the server under test is started through, such as
//! `valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out` (instructions per request are then
//! the total divided by `sent`, which counts the warm-up too).

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix_web::rt::net::TcpStream;
use anyhow::{Context, bail};
use callplane_e2e::hop::DbHop;
use callplane_plugin_api::storage::{Db, sqlx};
use callplane_plugin_api::testing::ScratchPostgres;
use callplane_plugin_twilio::signature;
use procs::{built, clean_command, clock_ticks_per_second, cpu_ticks, env_number, free_port, memory_mb, stop};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

mod procs;

const TOKEN: &str = "bench-auth-token-3f9e";
const ACCOUNT: &str = "AC5ef8732a3c49700934481addd5ce1659";
const PUBLIC: &str = "https://voice.example.com";
const NUMBER: &str = "+15005550006";
const WARMUP: Duration = Duration::from_secs(2);
/// Boots and `check` runs measured; the median is reported.
const REPEATS: usize = 7;
/// Interleaved rounds of every scenario; the median round is reported.
const ROUNDS: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    Baseline,
    /// `paced`: valid webhooks at [`PACED_RPS`] (not as fast as possible), with as many forged
    /// ones beside them when `forged`.
    Callplane {
        record: bool,
        db: Engine,
        paced: bool,
        forged: bool,
    },
}

/// Where callplane's database is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    Sqlite,
    Postgres,
    /// PostgreSQL, taken away after boot: every webhook is spooled.
    PostgresDown,
}

const RECORDED: Server = Server::Callplane {
    record: true,
    db: Engine::Sqlite,
    paced: false,
    forged: false,
};
const UNRECORDED: Server = Server::Callplane {
    record: false,
    db: Engine::Sqlite,
    paced: false,
    forged: false,
};
const RECORDED_PG: Server = Server::Callplane {
    record: true,
    db: Engine::Postgres,
    paced: false,
    forged: false,
};
const DB_DOWN: Server = Server::Callplane {
    record: true,
    db: Engine::PostgresDown,
    paced: false,
    forged: false,
};
/// Valid webhooks at a steady rate well below saturation, alone…
const PACED: Server = Server::Callplane {
    record: true,
    db: Engine::Sqlite,
    paced: true,
    forged: false,
};
/// …and with as many forged webhooks beside them (a flood of 50 % forged traffic).
const FORGED: Server = Server::Callplane {
    record: true,
    db: Engine::Sqlite,
    paced: true,
    forged: true,
};
/// The valid webhooks a second of [`PACED`] and [`FORGED`] (and their forged ones, of `FORGED`):
/// about a quarter of what the recorded scenario reaches flat out on two cores, so that the
/// machine has room and a slowdown of valid webhooks can only come from the forged ones.
const PACED_RPS: u32 = 8_000;

impl Server {
    fn label(self) -> &'static str {
        match self {
            Self::Baseline => "baseline (actix-web)",
            RECORDED => "callplane, recorded",
            UNRECORDED => "callplane, not recorded",
            RECORDED_PG => "callplane, recorded, PostgreSQL",
            DB_DOWN => "callplane, db_down (spooled)",
            PACED => "callplane, recorded, paced",
            FORGED => "callplane, recorded, paced + as many forged",
            Self::Callplane { .. } => "callplane",
        }
    }

    fn engine(self) -> Engine {
        match self {
            Self::Baseline => Engine::Sqlite,
            Self::Callplane { db, .. } => db,
        }
    }
}

/// What one scenario measured.
#[derive(Debug, Default)]
struct Measured {
    sent: u64,
    /// Of `sent`, forged webhooks (answered 403 as they must be; not in `rps` nor the latencies).
    forged: u64,
    errors: u64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_us_per_request: f64,
    peak_rss_mb: f64,
    trace_lines: u64,
    /// Rows in `calls` after the run (recorded scenarios), or lines in the spool (`db_down`).
    records: Option<i64>,
}

struct Paths {
    callplane: PathBuf,
    baseline: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let paths = Paths {
        callplane: built("callplane")?,
        baseline: built("bench-baseline")?,
    };
    let secs = env_number("BENCH_SECS", 5);
    let measure = Duration::from_secs(secs);
    let tick = clock_ticks_per_second();
    if let Ok(only) = std::env::var("BENCH_ONLY") {
        let (name, conns) = only.split_once('@').context("BENCH_ONLY is <scenario>@<connections>")?;
        let server = match name {
            "baseline" => Server::Baseline,
            "recorded" => RECORDED,
            "unrecorded" => UNRECORDED,
            "recorded-pg" => RECORDED_PG,
            "db_down" => DB_DOWN,
            "paced" => PACED,
            "forged50" => FORGED,
            _ => bail!("BENCH_ONLY scenarios: baseline, recorded, unrecorded, recorded-pg, db_down, paced, forged50"),
        };
        let conns: usize = conns.parse().context("BENCH_ONLY connections")?;
        return actix_web::rt::System::new().block_on(async move {
            let m = scenario(&paths, server, conns, measure, tick).await?;
            println!("{} @{conns}: {m:?}", server.label());
            Ok(())
        });
    }
    actix_web::rt::System::new().block_on(run(&paths, measure, tick))
}

async fn run(paths: &Paths, measure: Duration, tick: f64) -> anyhow::Result<()> {
    println!(
        "callplane bench: {ROUNDS} interleaved rounds of {} s per scenario after {} s warm-up, loopback, {} CPUs",
        measure.as_secs(),
        WARMUP.as_secs(),
        cpus()
    );

    // Boot to ready, check, idle memory.
    let sandbox = Sandbox::new(paths, RECORDED)?;
    let mut boots = Vec::new();
    let mut idle_rss = 0.0;
    for i in 0..REPEATS {
        let (child, booted) = sandbox.start().await?;
        boots.push(booted.as_secs_f64() * 1000.0);
        if i == 0 {
            tokio_sleep(Duration::from_secs(1)).await;
            idle_rss = memory_mb(child.id(), "VmRSS")?;
        }
        stop(child)?;
    }
    let mut checks = Vec::new();
    for _ in 0..REPEATS {
        let started = Instant::now();
        let out = sandbox.callplane(&["check"]).output()?;
        checks.push(started.elapsed().as_secs_f64() * 1000.0);
        if !out.status.success() {
            bail!("callplane check failed: {}", String::from_utf8_lossy(&out.stdout));
        }
    }
    let boot_ms = median(&mut boots);
    let check_ms = median(&mut checks);

    let postgres = std::env::var_os("TEST_POSTGRES_URL").is_some();
    if !postgres {
        println!("TEST_POSTGRES_URL is not set: the PostgreSQL scenarios (recorded-pg, db_down) do not run");
    }
    // Rounds interleave the scenarios, so that a slow spell of the shared machine hits all of
    // them alike; each scenario's median round is reported and compared.
    let mut rounds: Vec<(Server, usize, Vec<Measured>)> = Vec::new();
    for conns in [32usize, 128] {
        let mut servers = vec![Server::Baseline, RECORDED, UNRECORDED];
        if conns == 32 {
            servers.extend([PACED, FORGED]);
        }
        if postgres && conns == 32 {
            servers.extend([RECORDED_PG, DB_DOWN]);
        }
        for round in 1..=ROUNDS {
            for &server in &servers {
                let measured = scenario(paths, server, conns, measure, tick).await?;
                println!(
                    "  round {round}/{ROUNDS} {:<24} {conns:>3} connections: {:>8.0} req/s, {} errors",
                    server.label(),
                    measured.rps,
                    measured.errors
                );
                match rounds.iter_mut().find(|(s, c, _)| *s == server && *c == conns) {
                    Some((_, _, all)) => all.push(measured),
                    None => rounds.push((server, conns, vec![measured])),
                }
            }
        }
    }
    let mut results = Vec::new();
    for (server, conns, mut all) in rounds {
        all.sort_by(|a, b| a.rps.total_cmp(&b.rps));
        let faults = all.iter().map(Faults::of).fold(Faults::default(), Faults::add);
        let median = all.swap_remove(all.len() / 2);
        results.push((server, conns, median, faults));
    }

    println!();
    println!("median rounds:");
    println!(
        "| scenario | conns | req/s | p50 ms | p99 ms | server CPU µs/req | peak RSS MB | errors | trace lines / sent | records |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (server, conns, m, _) in &results {
        println!(
            "| {} | {conns} | {:.0} | {:.2} | {:.2} | {:.1} | {:.1} | {} | {} / {} | {} |",
            server.label(),
            m.rps,
            m.p50_ms,
            m.p99_ms,
            m.cpu_us_per_request,
            m.peak_rss_mb,
            m.errors,
            m.trace_lines,
            m.sent,
            m.records.map_or("-".to_owned(), |r| r.to_string()),
        );
    }
    println!();
    println!("boot to ready (first 200 from /readyz, median of {REPEATS}): {boot_ms:.1} ms");
    println!("callplane check wall time (median of {REPEATS}): {check_ms:.1} ms");
    println!("idle RSS after boot: {idle_rss:.1} MB");
    println!();

    let mut targets = Targets::default();
    for conns in [32usize, 128] {
        let get = |s: Server| {
            results
                .iter()
                .find(|(server, c, _, _)| *server == s && *c == conns)
                .map(|(_, _, m, _)| m)
        };
        let (Some(base), Some(rec), Some(norec)) = (get(Server::Baseline), get(RECORDED), get(UNRECORDED)) else {
            bail!("a scenario is missing");
        };
        // The headline first: server CPU per request, which the shared load generator cannot
        // flatter (its cost is not in it).
        targets.at_most(
            &format!("recorded / baseline server CPU µs per request @{conns}"),
            rec.cpu_us_per_request / base.cpu_us_per_request,
            2.0,
        );
        targets.ratio(&format!("recorded / baseline req/s @{conns}"), rec.rps / base.rps, 0.5);
        targets.ratio(
            &format!("not recorded / baseline req/s @{conns}"),
            norec.rps / base.rps,
            0.9,
        );
        if let Some(pg) = get(RECORDED_PG) {
            targets.ratio(
                &format!("recorded on PostgreSQL / baseline server CPU µs per request @{conns} (information)"),
                pg.cpu_us_per_request / base.cpu_us_per_request,
                f64::NAN,
            );
            targets.ratio(
                &format!("recorded on PostgreSQL / baseline req/s @{conns} (information)"),
                pg.rps / base.rps,
                f64::NAN,
            );
        }
        if let (Some(alone), Some(mixed)) = (get(PACED), get(FORGED)) {
            // The same valid webhooks, with and without as many forged ones beside them.
            targets.ratio(
                &format!("valid p50 ms with as many forged / without @{conns} (information)"),
                mixed.p50_ms / alone.p50_ms,
                f64::NAN,
            );
            targets.ratio(
                &format!("valid p99 ms with as many forged / without @{conns} (information)"),
                mixed.p99_ms / alone.p99_ms,
                f64::NAN,
            );
            targets.ratio(
                &format!("valid req/s with as many forged / without @{conns}"),
                mixed.rps / alone.rps,
                0.9,
            );
        }
        if let Some(down) = get(DB_DOWN) {
            targets.ratio(&format!("db_down / baseline req/s @{conns}"), down.rps / base.rps, 0.3);
            targets.below(&format!("db_down p99 ms @{conns}"), down.p99_ms, 50.0);
            targets.ratio(
                &format!("db_down / baseline server CPU µs per request @{conns} (information)"),
                down.cpu_us_per_request / base.cpu_us_per_request,
                f64::NAN,
            );
        }
    }
    targets.below("boot to ready ms", boot_ms, 50.0);
    targets.below("check ms", check_ms, 50.0);
    targets.below("idle RSS MB", idle_rss, 20.0);
    for (server, conns, m, faults) in &results {
        let name = server.label();
        if matches!(server, Server::Callplane { .. }) && *conns == 128 {
            targets.below(&format!("{name} peak RSS MB @128"), m.peak_rss_mb, 40.0);
        }
        targets.equal(&format!("{name} @{conns} errors, all rounds"), faults.errors, 0);
        targets.equal(
            &format!("{name} @{conns} requests without their trace line, all rounds"),
            faults.untraced,
            0,
        );
        if matches!(server, Server::Callplane { record: true, .. }) {
            targets.equal(
                &format!("{name} @{conns} accepted webhooks without their row (spool line for db_down), all rounds"),
                faults.unrecorded,
                0,
            );
        }
    }
    targets.print();
    if targets.missed > 0 {
        bail!("{} target(s) missed", targets.missed);
    }
    Ok(())
}

/// What must never happen, summed over a scenario's rounds.
#[derive(Debug, Default)]
struct Faults {
    errors: u64,
    /// Requests sent without a trace line in the log file.
    untraced: u64,
    /// Accepted webhooks without a row in `calls` (recorded scenarios).
    unrecorded: u64,
}

impl Faults {
    fn of(m: &Measured) -> Self {
        let accepted = m.sent - m.forged - m.errors;
        Self {
            errors: m.errors,
            untraced: m.sent.abs_diff(m.trace_lines),
            unrecorded: m
                .records
                .map_or(0, |rows| accepted.abs_diff(u64::try_from(rows).unwrap_or(0))),
        }
    }

    fn add(self, other: Self) -> Self {
        Self {
            errors: self.errors + other.errors,
            untraced: self.untraced + other.untraced,
            unrecorded: self.unrecorded + other.unrecorded,
        }
    }
}

#[derive(Default)]
struct Targets {
    lines: Vec<String>,
    missed: usize,
}

impl Targets {
    fn verdict(&mut self, ok: bool) -> &'static str {
        if ok {
            "ok"
        } else {
            self.missed += 1;
            "MISSED"
        }
    }

    fn ratio(&mut self, what: &str, value: f64, at_least: f64) {
        let line = if at_least.is_nan() {
            format!("{what}: {value:.2}")
        } else {
            let verdict = self.verdict(value >= at_least);
            format!("{what}: {value:.2} (target ≥ {at_least:.2}) {verdict}")
        };
        self.lines.push(line);
    }

    fn at_most(&mut self, what: &str, value: f64, limit: f64) {
        let verdict = self.verdict(value <= limit);
        self.lines
            .push(format!("{what}: {value:.2} (target ≤ {limit:.2}) {verdict}"));
    }

    fn below(&mut self, what: &str, value: f64, limit: f64) {
        let verdict = self.verdict(value < limit);
        self.lines
            .push(format!("{what}: {value:.1} (target < {limit:.0}) {verdict}"));
    }

    fn equal<T: PartialEq + std::fmt::Display>(&mut self, what: &str, value: T, expected: T) {
        let verdict = self.verdict(value == expected);
        self.lines
            .push(format!("{what}: {value} (expected {expected}) {verdict}"));
    }

    fn print(&self) {
        for line in &self.lines {
            println!("{line}");
        }
    }
}

/// A private directory with a seeded database (SQLite in it, or a scratch PostgreSQL database,
/// possibly behind a hop the bench cuts) and a log directory.
struct Sandbox<'p> {
    dir: tempfile::TempDir,
    paths: &'p Paths,
    port: u16,
    record: bool,
    /// Dropped (after the hop) when the sandbox goes.
    postgres: Option<ScratchPostgres>,
    hop: Option<DbHop>,
}

impl<'p> Sandbox<'p> {
    fn new(paths: &'p Paths, server: Server) -> anyhow::Result<Self> {
        let port = free_port()?;
        let (postgres, hop) = match server.engine() {
            Engine::Sqlite => (None, None),
            Engine::Postgres | Engine::PostgresDown => {
                let scratch = ScratchPostgres::create("bench").context("TEST_POSTGRES_URL")?;
                let hop = (server.engine() == Engine::PostgresDown).then(|| DbHop::start(&scratch.url));
                (Some(scratch), hop)
            }
        };
        let sandbox = Self {
            dir: tempfile::tempdir()?,
            paths,
            port,
            record: !matches!(server, Server::Callplane { record: false, .. }),
            postgres,
            hop,
        };
        let out = sandbox
            .callplane(&["admin", "create-business", "--name", "Bench", "--phone", NUMBER])
            .output()?;
        if !out.status.success() {
            bail!(
                "seeding failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(sandbox)
    }

    fn log_dir(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    fn database_url(&self) -> String {
        match (&self.hop, &self.postgres) {
            (Some(hop), _) => hop.url().to_owned(),
            (None, Some(postgres)) => postgres.url.clone(),
            (None, None) => format!("sqlite://{}/callplane.db", self.dir.path().display()),
        }
    }

    fn callplane(&self, args: &[&str]) -> Command {
        let mut cmd = clean_command(&self.paths.callplane, self.dir.path(), args);
        cmd.env("CALLPLANE_BIND", format!("127.0.0.1:{}", self.port))
            .env("CALLPLANE_DATABASE_URL", self.database_url())
            .env("CALLPLANE_LOG_DIR", self.log_dir())
            .env("CALLPLANE_SPOOL_DIR", self.dir.path().join("spool"))
            .env("CALLPLANE_PUBLIC_BASE_URL", PUBLIC)
            .env("CALLPLANE_SHUTDOWN_DRAIN_SECS", "0")
            .env("CALLPLANE_RECORD_CALLS", self.record.to_string())
            .env("TWILIO_ACCOUNT_SID", ACCOUNT)
            .env("TWILIO_AUTH_TOKEN", TOKEN)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    }

    /// Starts `callplane serve`; returns it and the time to its first 200 from `/readyz`.
    async fn start(&self) -> anyhow::Result<(Child, Duration)> {
        let started = Instant::now();
        let child = wrapped(self.callplane(&["serve"])).spawn()?;
        wait_ready(self.port, started).await.map(|d| (child, d))
    }
}

/// `command`, started through `BENCH_WRAP` when that is set (profiling one scenario).
fn wrapped(command: Command) -> Command {
    let wrap = std::env::var("BENCH_WRAP").unwrap_or_default();
    let mut words = wrap.split_whitespace();
    let Some(program) = words.next() else {
        return command;
    };
    let mut outer = Command::new(program);
    outer
        .args(words)
        .arg(command.get_program())
        .args(command.get_args())
        .envs(command.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (key, value) in command.get_envs() {
        if value.is_none() {
            outer.env_remove(key);
        }
    }
    if let Some(dir) = command.get_current_dir() {
        outer.current_dir(dir);
    }
    outer
}

async fn wait_ready(port: u16, started: Instant) -> anyhow::Result<Duration> {
    let client = awc::Client::default();
    let url = format!("http://127.0.0.1:{port}/readyz");
    loop {
        if let Ok(res) = client.get(&url).send().await
            && res.status().is_success()
        {
            return Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("not ready within 30 s: {url}");
        }
        tokio_sleep(Duration::from_millis(1)).await;
    }
}

async fn scenario(
    paths: &Paths,
    server: Server,
    conns: usize,
    measure: Duration,
    tick: f64,
) -> anyhow::Result<Measured> {
    let sandbox = Sandbox::new(paths, server)?;
    let child = match server {
        Server::Callplane { .. } => sandbox.start().await?.0,
        Server::Baseline => {
            std::fs::create_dir_all(sandbox.log_dir())?;
            let started = Instant::now();
            let child = wrapped(Command::new(&paths.baseline))
                .args([
                    &format!("127.0.0.1:{}", sandbox.port),
                    PUBLIC,
                    TOKEN,
                    &sandbox.log_dir().display().to_string(),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            wait_ready(sandbox.port, started).await?;
            child
        }
    };
    let pid = child.id();
    let load = match server {
        Server::Callplane {
            paced: true, forged, ..
        } => Load::paced(sandbox.port, conns, if forged { conns } else { 0 }, PACED_RPS),
        _ => Load::new(sandbox.port, conns),
    };
    if let Some(hop) = &sandbox.hop {
        // db_down: the database goes away once the instance has answered calls (its directory
        // knows the number, as in an outage of a running deployment).
        load.run(Duration::from_millis(200), false).await;
        hop.cut();
    }
    load.run(WARMUP, false).await;
    let cpu_before = cpu_ticks(pid)?;
    let window = load.run(measure, true).await;
    let cpu_after = cpu_ticks(pid)?;
    let peak_rss_mb = memory_mb(pid, "VmHWM")?;
    stop(child)?;

    let mut latencies = load.latencies.take();
    latencies.sort_unstable();
    let measured = latencies.len() as u64;
    let pick = |q: f64| {
        let i = ((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1));
        latencies.get(i).map_or(0.0, |us| f64::from(*us) / 1000.0)
    };
    let cpu_us = (cpu_after - cpu_before) as f64 / tick * 1e6;
    let records = match server {
        DB_DOWN => {
            // Those answered before the database went away are in it; the others in the spool.
            let url = sandbox
                .postgres
                .as_ref()
                .map(|p| p.url.clone())
                .context("db_down runs on PostgreSQL")?;
            let spooled = count_lines(&sandbox.dir.path().join("spool"), "\"call_sid\"")?;
            Some(count_calls(&url).await? + i64::try_from(spooled)?)
        }
        Server::Callplane { record: true, .. } => Some(count_calls(&sandbox.database_url()).await?),
        _ => None,
    };
    Ok(Measured {
        sent: load.sent.get(),
        forged: load.forged_sent.get(),
        errors: load.errors.get(),
        rps: measured as f64 / window.as_secs_f64(),
        p50_ms: pick(0.50),
        p99_ms: pick(0.99),
        cpu_us_per_request: if measured == 0 { 0.0 } else { cpu_us / measured as f64 },
        peak_rss_mb,
        trace_lines: count_lines(&sandbox.log_dir(), "[TWILIO][INBOUND] hit")?,
        records,
    })
}

/// The load generator: `conns` keep-alive connections on this thread, each writing its next
/// signed webhook as soon as the last answer is read (or, paced, at its next turn), and in the
/// forged scenario as many more sending forged ones. Raw HTTP/1.1 over a socket (a request is one
/// `write`, an answer is read up to its `Content-Length`), so that the generator's own CPU per
/// request — taken from the two cores the server runs on too — is a few µs, not the tens of an
/// HTTP client library's.
struct Load {
    addr: std::net::SocketAddr,
    conns: usize,
    /// Connections sending forged webhooks beside the `conns` valid ones, at the same pace.
    forged_conns: usize,
    /// Each connection's interval between requests (`None`: as fast as answers come).
    pace: Option<Duration>,
    next_sid: Cell<u64>,
    sent: Cell<u64>,
    forged_sent: Cell<u64>,
    errors: Cell<u64>,
    latencies: RefCell<Vec<u32>>,
}

impl Load {
    fn new(port: u16, conns: usize) -> Rc<Self> {
        Self::build(port, conns, 0, None)
    }

    /// `conns` connections sending `rps` valid webhooks a second in all, and `forged_conns` more
    /// sending forged ones at the same pace each.
    fn paced(port: u16, conns: usize, forged_conns: usize, rps: u32) -> Rc<Self> {
        let per_connection = Duration::from_secs(1) * u32::try_from(conns).unwrap_or(u32::MAX) / rps;
        Self::build(port, conns, forged_conns, Some(per_connection))
    }

    fn build(port: u16, conns: usize, forged_conns: usize, pace: Option<Duration>) -> Rc<Self> {
        Rc::new(Self {
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            conns,
            forged_conns,
            pace,
            next_sid: Cell::new(1),
            sent: Cell::new(0),
            forged_sent: Cell::new(0),
            errors: Cell::new(0),
            latencies: RefCell::new(Vec::new()),
        })
    }

    /// Drives the load for `duration`; returns the real length of the window.
    async fn run(self: &Rc<Self>, duration: Duration, record: bool) -> Duration {
        let started = Instant::now();
        let deadline = started + duration;
        let workers: Vec<_> = (0..self.conns + self.forged_conns)
            .map(|i| {
                let load = Rc::clone(self);
                let forged = i >= self.conns;
                actix_web::rt::spawn(async move {
                    let mut conn = None;
                    let mut next = Instant::now();
                    while Instant::now() < deadline {
                        load.one(&mut conn, record, forged).await;
                        if let Some(pace) = load.pace {
                            next += pace;
                            actix_web::rt::time::sleep_until(next.into()).await;
                        }
                    }
                })
            })
            .collect();
        for worker in workers {
            let _ = worker.await;
        }
        started.elapsed()
    }

    async fn one(&self, conn: &mut Option<TcpStream>, record: bool, forged: bool) {
        let n = self.next_sid.get();
        self.next_sid.set(n + 1);
        let (body, mut sig) = webhook(n);
        if forged {
            sig = "AAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_owned();
        }
        let request = format!(
            "POST /webhook/incoming_call HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             X-Twilio-Signature: {sig}\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        let started = Instant::now();
        self.sent.set(self.sent.get() + 1);
        if forged {
            self.forged_sent.set(self.forged_sent.get() + 1);
        }
        let expected = if forged { 403 } else { 200 };
        let ok = match actix_web::rt::time::timeout(Duration::from_secs(15), exchange(conn, self.addr, &request)).await
        {
            Ok(Ok(status)) => status == expected,
            _ => {
                *conn = None;
                false
            }
        };
        if !ok {
            self.errors.set(self.errors.get() + 1);
        } else if record && !forged {
            let us = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
            self.latencies.borrow_mut().push(us);
        }
    }
}

/// Writes `request` on the connection (opened first when there is none) and reads the answer:
/// its status when it carries TwiML (`0` when it does not).
async fn exchange(conn: &mut Option<TcpStream>, addr: std::net::SocketAddr, request: &str) -> std::io::Result<u16> {
    let stream = match conn {
        Some(stream) => stream,
        None => {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            conn.insert(stream)
        }
    };
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::with_capacity(1024);
    let head = loop {
        if stream.read_buf(&mut answer).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
    };
    let text = String::from_utf8_lossy(&answer[..head]).into_owned();
    let length: usize = text
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .ok_or(std::io::ErrorKind::InvalidData)?;
    while answer.len() < head + length {
        if stream.read_buf(&mut answer).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    let keep_alive = !text.to_ascii_lowercase().contains("connection: close");
    if !keep_alive {
        *conn = None;
    }
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3)?.parse().ok())
        .unwrap_or(0);
    Ok(if answer[head..].starts_with(b"<?xml") {
        status
    } else {
        0
    })
}

/// A realistic inbound-call webhook (the 25 parameters Twilio sends), signed over the public URL.
fn webhook(n: u64) -> (String, String) {
    let sid = format!("CA{n:032x}");
    let params: Vec<(String, String)> = [
        ("AccountSid", ACCOUNT),
        ("ApiVersion", "2010-04-01"),
        ("CallSid", &sid),
        ("CallStatus", "ringing"),
        (
            "CallToken",
            "%7B%22parentCallInfoToken%22%3A%22eyJhbGciOiJFUzI1NiJ9%22%7D",
        ),
        ("Called", NUMBER),
        ("CalledCity", "SAN FRANCISCO"),
        ("CalledCountry", "US"),
        ("CalledState", "CA"),
        ("CalledZip", "94105"),
        ("Caller", "+14155550123"),
        ("CallerCity", "OAKLAND"),
        ("CallerCountry", "US"),
        ("CallerState", "CA"),
        ("CallerZip", "94612"),
        ("Direction", "inbound"),
        ("From", "+14155550123"),
        ("FromCity", "OAKLAND"),
        ("FromCountry", "US"),
        ("FromState", "CA"),
        ("FromZip", "94612"),
        ("StirVerstat", "TN-Validation-Passed-A"),
        ("To", NUMBER),
        ("ToCity", "SAN FRANCISCO"),
        ("ToCountry", "US"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let sig = signature::compute(TOKEN, &format!("{PUBLIC}/webhook/incoming_call"), &params);
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&params)
        .finish();
    (body, sig)
}

async fn count_calls(url: &str) -> anyhow::Result<i64> {
    let db = Db::connect_lazy(url)?;
    let (n,): (i64,) = db
        .run(|pool| sqlx::query_as("SELECT COUNT(*) FROM calls").fetch_one(pool))
        .await?;
    db.close().await;
    Ok(n)
}

fn count_lines(dir: &Path, needle: &str) -> anyhow::Result<u64> {
    let mut n = 0;
    for entry in std::fs::read_dir(dir)? {
        let text = std::fs::read_to_string(entry?.path())?;
        n += text.lines().filter(|l| l.contains(needle)).count() as u64;
    }
    Ok(n)
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

async fn tokio_sleep(d: Duration) {
    actix_web::rt::time::sleep(d).await;
}
