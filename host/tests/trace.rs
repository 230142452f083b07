//! `callplane trace` and `callplane calls` end to end: two instances of the real binary on one
//! database (SQLite, and PostgreSQL when `TEST_POSTGRES_URL` is set), a fake Twilio REST API, and
//! every shape of call the timeline must explain — an inbound call with a retry and out-of-order
//! statuses, an outbound call placed and one refused (21211), a forged webhook, a webhook signed
//! for the wrong scheme and (on PostgreSQL) a call spooled while the database was stopped — traced
//! from a third process that shares nothing with the servers but the database.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::path::Path;
use std::time::Duration;

use callplane_e2e::harness::{Outcome, PgDatabase, Sandbox, Server, eventually};
use serde_json::{Value, json};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_callplane");
const PUBLIC: &str = "https://voice.example.com";
const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "trace-auth-token-51f0";
const NUMBER: &str = "+972501234567";

struct Deployment {
    sandbox: Sandbox,
    env: Vec<(String, String)>,
    a: Server,
    b: Server,
}

impl Deployment {
    /// Two instances, `web-a` and `web-b`, each with its own spool, on `database` (the sandbox's
    /// SQLite file when `None`).
    fn start(database: Option<&str>) -> Self {
        let api = common::fake_twilio();
        let sandbox = Sandbox::new();
        let mut env: Vec<(String, String)> = [
            ("CALLPLANE_CRITICAL_PLUGINS", "permissions,twilio"),
            ("CALLPLANE_PUBLIC_BASE_URL", PUBLIC),
            ("TWILIO_ACCOUNT_SID", ACCOUNT),
            ("TWILIO_AUTH_TOKEN", TOKEN),
            ("TWILIO_API_BASE", &api),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        if let Some(url) = database {
            env.push(("CALLPLANE_DATABASE_URL".to_owned(), url.to_owned()));
        }
        let shared: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        sandbox.bootstrap(
            Path::new(BIN),
            &shared,
            NUMBER,
            ("agent@dental.example", "agent", "agent password 123"),
        );
        let instance = |name: &'static str, spool: &'static str| {
            let mut own = shared.clone();
            own.extend([("CALLPLANE_INSTANCE_ID", name), ("CALLPLANE_SPOOL_DIR", spool)]);
            sandbox.serve(Path::new(BIN), &own)
        };
        let a = instance("web-a", "spool-a");
        let b = instance("web-b", "spool-b");
        Self { sandbox, env, a, b }
    }

    fn env(&self) -> Vec<(&str, &str)> {
        self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    /// `callplane args…` as an operator runs it: a third process, the database URL its only link.
    fn cli(&self, args: &[&str]) -> Outcome {
        self.sandbox.run(Path::new(BIN), args, &self.env())
    }

    /// `callplane trace id`, which must find the call.
    fn trace(&self, id: &str) -> String {
        let out = self.cli(&["trace", id]);
        assert_eq!(out.code, Some(0), "trace {id}:\n{}{}", out.stdout, out.stderr);
        out.stdout
    }
}

/// Posts a webhook signed over `url_base` (the configured public URL, or a wrong one).
fn webhook(server: &Server, url_base: &str, path: &str, params: &[(&str, &str)]) -> u16 {
    let signature = common::sign(TOKEN, &format!("{url_base}{path}"), params);
    server
        .request(
            "POST",
            path,
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("x-twilio-signature", &signature),
            ],
            Some(&common::form(params)),
        )
        .status
}

fn inbound(sid: &str) -> Vec<(&str, &str)> {
    vec![
        ("CallSid", sid),
        ("From", "+972541112222"),
        ("To", NUMBER),
        ("CallStatus", "ringing"),
        ("Direction", "inbound"),
    ]
}

fn status<'a>(sid: &'a str, status: &'a str, sequence: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CallSid", sid),
        ("From", "+972541112222"),
        ("To", NUMBER),
        ("CallStatus", status),
        ("SequenceNumber", sequence),
        ("Direction", "inbound"),
    ]
}

/// The verdict line of `question` in `trace`'s text output.
fn verdict<'a>(trace: &'a str, question: &str) -> &'a str {
    let verdict = trace.split_once("\nverdict:\n").unwrap().1;
    verdict
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(question))
        .unwrap_or_else(|| panic!("no {question} line in:\n{trace}"))
        .trim()
}

/// The timeline line containing every needle.
fn timeline_line<'a>(trace: &'a str, needles: &[&str]) -> &'a str {
    trace
        .lines()
        .find(|l| needles.iter().all(|n| l.contains(n)))
        .unwrap_or_else(|| panic!("no timeline line with {needles:?} in:\n{trace}"))
}

fn place(server: &Server, token: &str, to: &str) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    let body = json!({ "to": to, "lead_id": 7 }).to_string();
    let reply = server.request(
        "POST",
        "/api/calls/outbound",
        &[("authorization", &auth), ("content-type", "application/json")],
        Some(&body),
    );
    (reply.status, reply.json())
}

fn trace_end_to_end(pg: Option<&PgDatabase>) {
    let d = Deployment::start(pg.map(|p| p.url.as_str()));
    let engine = if pg.is_some() { "PostgreSQL" } else { "SQLite" };

    // An inbound call on web-a; Twilio's retry lands on web-b; its statuses arrive out of order.
    let call = "CA11111111111111111111111111111111";
    assert_eq!(webhook(&d.a, PUBLIC, "/webhook/incoming_call", &inbound(call)), 200);
    assert_eq!(webhook(&d.b, PUBLIC, "/webhook/incoming_call", &inbound(call)), 200);
    assert_eq!(
        webhook(&d.b, PUBLIC, "/webhook/call_status", &status(call, "completed", "3")),
        200
    );
    assert_eq!(
        webhook(&d.a, PUBLIC, "/webhook/call_status", &status(call, "ringing", "1")),
        200
    );

    // Outbound: one placed (web-a), one refused by Twilio with 21211 (web-b).
    let token = d.a.login("agent@dental.example", "agent password 123");
    let (code, placed) = place(&d.a, &token, "+15005550006");
    assert_eq!(code, 201, "{placed}");
    let placed_req = placed["req_id"].as_str().unwrap().to_owned();
    let (code, refused) = place(&d.b, &token, "+15005550001");
    assert_eq!(code, 422, "{refused}");
    let refused_req = refused["error"]["req_id"].as_str().unwrap().to_owned();

    // A forged webhook, and one signed for http:// while we are https://.
    let forged = "CA22222222222222222222222222222222";
    let reply = d.a.request(
        "POST",
        "/webhook/incoming_call",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("x-twilio-signature", "AAAAAAAAAAAAAAAAAAAAAAAAAAA="),
        ],
        Some(&common::form(&inbound(forged))),
    );
    assert_eq!(reply.status, 403);
    let wrong_scheme = "CA33333333333333333333333333333333";
    for _ in 0..2 {
        assert_eq!(
            webhook(
                &d.b,
                "http://voice.example.com",
                "/webhook/incoming_call",
                &inbound(wrong_scheme)
            ),
            403
        );
    }

    // The inbound call, from a third process.
    let t = d.trace(call);
    assert!(
        t.starts_with(&format!("call {call} (inbound, +972541112222 -> {NUMBER}), business 1")),
        "{engine}:\n{t}"
    );
    let first = timeline_line(&t, &["web-a", "POST /webhook/incoming_call", "answered 200 greeting"]);
    assert!(first.contains("request_id="), "{first}");
    assert_eq!(
        t.matches("POST /webhook/incoming_call").count(),
        1,
        "the retry is stored once:\n{t}"
    );
    timeline_line(&t, &["web-b", "status=completed sequence=3 applied"]);
    timeline_line(&t, &["web-a", "status=ringing sequence=1 ignored: stale"]);
    assert!(
        verdict(&t, "reached us").ends_with("on web-a at /webhook/incoming_call"),
        "{t}"
    );
    assert_eq!(verdict(&t, "signature"), "valid (3 webhooks)");
    assert_eq!(verdict(&t, "tenant"), "business 1");
    assert_eq!(verdict(&t, "state"), "completed: the call ended");

    // The outbound calls, by REQ id.
    let t = d.trace(&placed_req);
    timeline_line(
        &t,
        &["web-a", "outbound request accepted: tenant=1 lead_id=7 to=+15005550006"],
    );
    timeline_line(&t, &["web-a", &format!("twilio_ok call_sid={}", common::PLACED)]);
    assert!(
        verdict(&t, "twilio api").starts_with(&format!("accepted: call {} placed in ", common::PLACED)),
        "{t}"
    );
    let t = d.trace(&refused_req);
    timeline_line(&t, &["web-b", "twilio_failed err=21211"]);
    assert_eq!(
        verdict(&t, "twilio api"),
        "failed: 21211 The 'To' number +15005550001 is not a valid phone number."
    );

    // The refused webhooks (kept without holding up the 403: poll until they are written).
    let mut t = String::new();
    eventually(Duration::from_secs(10), "the refused webhooks are kept", || {
        let out = d.cli(&["trace", wrong_scheme]);
        t = out.stdout;
        out.code == Some(0) && t.matches("UNVERIFIED").count() == 2
    });
    timeline_line(
        &t,
        &[
            "web-b",
            "UNVERIFIED POST /webhook/incoming_call refused 403 signature=invalid",
        ],
    );
    assert_eq!(
        verdict(&t, "signature"),
        "invalid: 2 requests refused with 403; likely cause: CALLPLANE_PUBLIC_BASE_URL is probably wrong: Twilio signed http://voice.example.com/webhook/incoming_call, this instance checks https://voice.example.com/webhook/incoming_call"
    );
    assert!(
        t.contains("every request Twilio sent for this call was refused with 403 (2 attempts)"),
        "{t}"
    );
    eventually(Duration::from_secs(10), "the forged webhook is kept", || {
        d.cli(&["trace", forged]).code == Some(0)
    });
    let t = d.trace(forged);
    assert!(
        verdict(&t, "signature").contains("is TWILIO_AUTH_TOKEN this account's token?"),
        "{t}"
    );
    assert_eq!(
        verdict(&t, "tenant"),
        "none: refused webhooks are never attributed to a tenant"
    );

    // JSON, `calls`, and the bad cases.
    let json = d.cli(&["trace", call, "--format", "json"]);
    let parsed: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(parsed["timeline"].as_array().unwrap().len(), 3, "{parsed}");
    assert_eq!(parsed["timeline"][0]["instance"], "web-a");
    let listed = d.cli(&["calls", "--since", "1h", "--format", "json"]);
    assert_eq!(listed.code, Some(0), "{}", listed.stderr);
    let lines: Vec<Value> = serde_json::from_str(&listed.stdout).unwrap();
    let verdict_of = |sid: &str| {
        lines
            .iter()
            .find(|l| l["call_sid"] == sid || l["req_id"] == sid)
            .map(|l| l["verdict"].as_str().unwrap().to_owned())
    };
    assert_eq!(verdict_of(call).as_deref(), Some("answered"));
    assert_eq!(verdict_of(&refused_req).as_deref(), Some("failed-outbound"));
    assert_eq!(verdict_of(forged).as_deref(), Some("refused"));
    assert_eq!(verdict_of(wrong_scheme).as_deref(), Some("refused"));
    let text = d.cli(&["calls", "--status", "refused"]);
    assert_eq!(text.stdout.lines().count(), 2, "{}", text.stdout);
    let unknown = d.cli(&["trace", "CA44444444444444444444444444444444"]);
    assert_eq!(unknown.code, Some(1));
    assert!(
        unknown.stderr.contains("CA44444444444444444444444444444444 is unknown"),
        "{}",
        unknown.stderr
    );
    for bad in [
        &["trace", "CA<script>"][..],
        &["trace"],
        &["calls", "--since", "99999999d"],
        &["calls", "--since", "soon"],
    ] {
        let out = d.cli(bad);
        assert_eq!(out.code, Some(2), "{bad:?}: {}{}", out.stdout, out.stderr);
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    }

    // Stopping the database mid-stream (PostgreSQL): web-b spools the call, `trace` says plainly
    // that the database cannot be read, then shows the call spooled and replayed.
    if let Some(pg) = pg {
        pg.admin(&format!("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false", pg.name()));
        pg.admin(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'",
            pg.name()
        ));
        let spooled = "CA55555555555555555555555555555555";
        assert_eq!(webhook(&d.b, PUBLIC, "/webhook/incoming_call", &inbound(spooled)), 200);
        let down = d.cli(&["trace", spooled]);
        assert_eq!(down.code, Some(1), "{}{}", down.stdout, down.stderr);
        assert!(!down.stderr.contains("panicked"), "{}", down.stderr);
        pg.admin(&format!("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true", pg.name()));
        let mut t = String::new();
        eventually(Duration::from_secs(30), "the spooled call is replayed", || {
            let out = d.cli(&["trace", spooled]);
            t = out.stdout;
            t.contains("replayed into the database")
        });
        timeline_line(&t, &["web-b", "POST /webhook/incoming_call"]);
        timeline_line(&t, &["web-b", "spooled (incoming): the database was away"]);
        assert!(
            verdict(&t, "reached us").ends_with("on web-b at /webhook/incoming_call"),
            "{t}"
        );
    }
}

#[test]
fn trace_explains_every_call_across_two_instances_on_sqlite() {
    trace_end_to_end(None);
}

#[test]
fn trace_explains_every_call_across_two_instances_on_postgres() {
    let Some(pg) = PgDatabase::create("trace_explains_every_call") else {
        return;
    };
    trace_end_to_end(Some(&pg));
}
