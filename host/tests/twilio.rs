//! The real binary, end to end, with a fake Twilio REST API: simulated webhooks signed over the
//! public URL (as behind a TLS proxy), the calls API, an outbound call, and the exact trace lines,
//! in order, in the log file. On PostgreSQL (when `TEST_POSTGRES_URL` is set), the database is
//! stopped mid-stream: webhooks keep answering, records are spooled, then replayed with zero loss.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use callplane_e2e::harness::{PgDatabase, Sandbox, Server};
use serde_json::json;

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_callplane");
const PUBLIC: &str = "https://voice.example.com";
const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "e2e-auth-token-7c1d";
const NUMBER: &str = "+972501234567";

fn env<'a>(api: &'a str, database: Option<&'a str>) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("CALLPLANE_CRITICAL_PLUGINS", "permissions,twilio"),
        ("CALLPLANE_PUBLIC_BASE_URL", PUBLIC),
        ("TWILIO_ACCOUNT_SID", ACCOUNT),
        ("TWILIO_AUTH_TOKEN", TOKEN),
        ("TWILIO_API_BASE", api),
    ];
    if let Some(url) = database {
        env.push(("CALLPLANE_DATABASE_URL", url));
    }
    env
}

fn bootstrap(sandbox: &Sandbox, env: &[(&str, &str)]) {
    sandbox.bootstrap(
        Path::new(BIN),
        env,
        NUMBER,
        ("agent@dental.example", "agent", "agent password 123"),
    );
}

fn simulate_inbound(sandbox: &Sandbox, env: &[(&str, &str)], server: &Server, call_sid: &str) -> String {
    let target = server.url("");
    let out = sandbox.run(
        Path::new(BIN),
        &[
            "simulate",
            "--target",
            &target,
            "inbound",
            "--to",
            NUMBER,
            "--from",
            "+972541112222",
            "--call-sid",
            call_sid,
        ],
        env,
    );
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    out.stdout
}

fn agent_token(server: &Server) -> String {
    server.login("agent@dental.example", "agent password 123")
}

/// The position of the first line after `from` containing every needle.
fn line_after(log: &[&str], from: usize, needles: &[&str]) -> usize {
    log.iter()
        .enumerate()
        .skip(from)
        .find(|(_, l)| needles.iter().all(|n| l.contains(n)))
        .map(|(i, _)| i)
        .unwrap_or_else(|| panic!("no line with {needles:?} after line {from}:\n{}", log.join("\n")))
}

#[test]
fn inbound_and_outbound_end_to_end_with_the_trace_lines_in_order() {
    let api = common::fake_twilio();
    let sandbox = Sandbox::new();
    let env = env(&api, None);
    bootstrap(&sandbox, &env);
    let server = sandbox.serve(Path::new(BIN), &env);

    let sid = "CA0123456789abcdef0123456789abcdef";
    let answer = simulate_inbound(&sandbox, &env, &server, sid);
    assert!(answer.contains("-> 200") && answer.contains("<Say>"), "{answer}");
    let forged = server.request(
        "POST",
        "/webhook/incoming_call",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("x-twilio-signature", "AAAAAAAAAAAAAAAAAAAAAAAAAAA="),
        ],
        Some("CallSid=CA1"),
    );
    assert_eq!(forged.status, 403);

    let token = agent_token(&server);
    let auth = format!("Bearer {token}");
    let calls = server
        .request("GET", "/api/calls", &[("authorization", &auth)], None)
        .json();
    assert_eq!(calls["calls"][0]["call_sid"], sid);
    let body = json!({ "to": "+15005550006", "lead_id": 42 }).to_string();
    let placed = server.request(
        "POST",
        "/api/calls/outbound",
        &[("authorization", &auth), ("content-type", "application/json")],
        Some(&body),
    );
    assert_eq!(placed.status, 201, "{}", placed.body);
    let req_id = placed.json()["req_id"].as_str().unwrap().to_owned();
    let metrics = server.get("/metrics").body;
    assert!(
        metrics.contains(r#"callplane_twilio_webhooks_total{route="/webhook/incoming_call",signature="valid"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"callplane_twilio_webhooks_total{route="/webhook/incoming_call",signature="invalid"} 1"#)
    );
    assert!(metrics.contains(r#"callplane_twilio_calls_recorded_total{outcome="database"} 1"#));
    assert!(metrics.contains(r#"callplane_twilio_outbound_total{result="ok",code=""} 1"#));

    server.signal("TERM");
    assert!(server.wait().0.success());
    let text = sandbox.log_text();
    let log: Vec<&str> = text.lines().collect();
    let hit = line_after(
        &log,
        0,
        &[&format!(
            "[TWILIO][INBOUND] hit path=/webhook/incoming_call call_sid={sid} from=+972541112222 to={NUMBER} direction=inbound signature_present=true"
        )],
    );
    let outcome = line_after(
        &log,
        hit,
        &["[TWILIO][INBOUND] outcome signature=valid tenant=1 recorded=true", sid],
    );
    let refused = line_after(
        &log,
        outcome,
        &[
            "[TWILIO][INBOUND] outcome signature=invalid tenant=unknown recorded=false",
            "call_sid=CA1",
        ],
    );
    let req = format!("[OUTBOUND][REQ={req_id}]");
    let start = line_after(
        &log,
        refused,
        &[&format!("{req} tenant=1 lead_id=42 to=+15005550006 from={NUMBER}")],
    );
    let calling = line_after(&log, start, &[&format!("{req} calling twilio...")]);
    line_after(
        &log,
        calling,
        &[&format!("{req} twilio_ok call_sid={}", common::PLACED)],
    );
    assert!(!text.contains(TOKEN), "the auth token never reaches the log");
}

/// Values Twilio relays from callers (caller names, numbers) reach the trace lines escaped and
/// quoted: a line break or a terminal escape in them cannot forge a log line or reach a terminal.
#[test]
fn webhook_values_cannot_forge_log_lines() {
    let api = common::fake_twilio();
    let sandbox = Sandbox::new();
    let env = env(&api, None);
    bootstrap(&sandbox, &env);
    let server = sandbox.serve(Path::new(BIN), &env);
    let forged_to = "+1555\n2026-01-01T00:00:00.000000Z  INFO [TWILIO][INBOUND] FORGED";
    let out = sandbox.run(
        Path::new(BIN),
        &[
            "simulate",
            "--target",
            &server.url(""),
            "inbound",
            "--to",
            forged_to,
            "--from",
            "\u{1b}[2Jcaller",
        ],
        &env,
    );
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("-> 200"), "{}", out.stdout);
    server.signal("TERM");
    assert!(server.wait().0.success());
    let text = sandbox.log_text();
    let log: Vec<&str> = text.lines().collect();
    line_after(
        &log,
        0,
        &[
            r#"[TWILIO][INBOUND] hit path=/webhook/incoming_call"#,
            r#"from="\u{1b}[2Jcaller" to="+1555\n2026-01-01T00:00:00.000000Z  INFO [TWILIO][INBOUND] FORGED""#,
        ],
    );
    line_after(&log, 0, &[r#"[TWILIO][INBOUND] unknown called number to="+1555\n2026"#]);
    assert!(
        log.iter().all(|line| !line.starts_with("2026-01-01")),
        "a forged line:\n{text}"
    );
    assert!(!text.contains('\u{1b}'), "a raw terminal escape reached the log");
}

#[test]
fn postgres_stopped_mid_stream_loses_no_call() {
    let Some(pg) = PgDatabase::create("postgres_stopped_mid_stream_loses_no_call") else {
        return;
    };
    let api = common::fake_twilio();
    let sandbox = Sandbox::new();
    let env = env(&api, Some(&pg.url));
    bootstrap(&sandbox, &env);
    let server = sandbox.serve(Path::new(BIN), &env);
    let sid = |i: usize| format!("CA{i:032x}");
    for i in 0..5 {
        simulate_inbound(&sandbox, &env, &server, &sid(i));
    }
    // Stop the database: no new connections, every open one cut.
    pg.admin(&format!("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false", pg.name()));
    pg.admin(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'",
        pg.name()
    ));
    for i in 5..15 {
        let started = Instant::now();
        let answer = simulate_inbound(&sandbox, &env, &server, &sid(i));
        assert!(
            answer.contains("<Say>"),
            "answered while the database is down: {answer}"
        );
        assert!(started.elapsed() < Duration::from_secs(10), "within Twilio's timeout");
    }
    // Still in rotation: every call it answers is kept in the spool.
    let ready = server.get("/readyz");
    assert_eq!(ready.status, 200, "degraded, not out: {}", ready.body);
    let body = ready.json();
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["degraded"][0], "database");
    assert_eq!(body["checks"]["twilio.spool"]["detail"]["backlog"], 10);
    assert_eq!(body["checks"]["twilio.spool"]["without_database"], true);
    let metrics = server.get("/metrics").body;
    for series in ["callplane_database_up 0", "callplane_twilio_spool_backlog 10"] {
        assert!(metrics.contains(series), "{series} in:\n{metrics}");
    }
    pg.admin(&format!("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true", pg.name()));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = server.get("/readyz");
        if ready.status == 200 && ready.json()["checks"]["twilio.spool"]["detail"]["backlog"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the spool did not drain: {}", ready.body);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(pg.scalar("SELECT COUNT(*) FROM calls"), 15, "zero calls lost");
    let metrics = server.get("/metrics").body;
    for series in [
        "callplane_database_up 1",
        "callplane_twilio_spool_backlog 0",
        "callplane_twilio_spool_oldest_seconds 0",
    ] {
        assert!(metrics.contains(series), "{series} in:\n{metrics}");
    }
    server.signal("TERM");
    let (_, output) = server.wait();
    assert!(output.contains("recorded=spooled"), "{output}");
    assert!(output.contains("[TWILIO] spool replayed into the database"), "{output}");
}

/// Many webhooks at once are committed in shared transactions (group commit). Retries of the same
/// webhook and out-of-order status callbacks for one call land in the same batch; each call must
/// still end with one row, its newest status and each event once.
fn concurrent_webhooks_are_grouped_and_applied_once(database: Option<&str>) {
    let api = common::fake_twilio();
    let sandbox = Sandbox::new();
    let env = env(&api, database);
    bootstrap(&sandbox, &env);
    let server = sandbox.serve(Path::new(BIN), &env);
    const CALLS: usize = 12;
    let sid = |i: usize| format!("CA{:032x}", 0xB000 + i);
    // Every webhook from its own thread at once: a call's first webhook and its retry, and its
    // statuses out of order (each twice), race each other into the same batches.
    let post = |path: &'static str, params: Vec<(&'static str, String)>| {
        let params: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let reply = common::post_signed(&server, PUBLIC, TOKEN, path, &params).unwrap();
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
    };
    std::thread::scope(|scope| {
        for i in 0..CALLS {
            let base = [
                ("AccountSid", ACCOUNT.to_owned()),
                ("CallSid", sid(i)),
                ("From", "+972541112222".to_owned()),
                ("To", NUMBER.to_owned()),
                ("Direction", "inbound".to_owned()),
            ];
            let mut webhooks = Vec::new();
            for _ in 0..2 {
                let mut inbound = base.to_vec();
                inbound.push(("CallStatus", "ringing".to_owned()));
                webhooks.push(("/webhook/incoming_call", inbound));
                for (sequence, status) in [("2", "completed"), ("0", "ringing"), ("1", "in-progress")] {
                    let mut callback = base.to_vec();
                    callback.extend([
                        ("CallStatus", status.to_owned()),
                        ("SequenceNumber", sequence.to_owned()),
                    ]);
                    webhooks.push(("/webhook/call_status", callback));
                }
            }
            for (path, params) in webhooks {
                let post = &post;
                scope.spawn(move || post(path, params));
            }
        }
    });
    let auth = format!("Bearer {}", agent_token(&server));
    let list = server.request("GET", "/api/calls?limit=100", &[("authorization", &auth)], None);
    assert_eq!(list.json()["calls"].as_array().unwrap().len(), CALLS, "{}", list.body);
    for i in 0..CALLS {
        let call = server
            .request(
                "GET",
                &format!("/api/calls/{}", sid(i)),
                &[("authorization", &auth)],
                None,
            )
            .json();
        assert_eq!(call["status"], "completed", "the newest status wins: {call}");
        assert_eq!(call["events"].as_array().unwrap().len(), 4, "each event once: {call}");
    }
    let metrics = server.get("/metrics").body;
    let batches: usize = metrics
        .lines()
        .find_map(|l| l.strip_prefix("callplane_twilio_record_batch_size_count "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(batches < CALLS * 8, "concurrent webhooks share transactions: {batches}");
    let _ = writeln!(
        std::io::stderr(),
        "group commit: {} webhooks in {batches} transactions",
        CALLS * 8
    );
}

#[test]
fn concurrent_webhooks_are_grouped_and_applied_once_on_sqlite() {
    concurrent_webhooks_are_grouped_and_applied_once(None);
}

#[test]
fn concurrent_webhooks_are_grouped_and_applied_once_on_postgres() {
    let Some(pg) = PgDatabase::create("concurrent_webhooks_are_grouped_and_applied_once_on_postgres") else {
        return;
    };
    concurrent_webhooks_are_grouped_and_applied_once(Some(&pg.url));
}
