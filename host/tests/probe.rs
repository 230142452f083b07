//! The findings of the outside security probe, each replayed against the real binary: metric
//! series minted by percent-encoded paths, invisible characters and oversized values in the log,
//! the headers of API answers, `X-Forwarded-Proto` alone from a trusted proxy, and `100 Continue`
//! sent before a 413. (The throttle, grant and Origin findings are in the permissions plugin's
//! route tests, the year-10000 one in the calendar's.)

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use callplane_e2e::harness::{Sandbox, Server};
use common::form;

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_callplane");
const TOKEN: &str = "probe-auth-token-5be1";
const NUMBER: &str = "+972501234567";
const SID: &str = "CA0123456789abcdef0123456789abcdef";
const OWNER: (&str, &str, &str) = ("owner@dental.example", "owner", "owner password 123");

fn env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("CALLPLANE_PUBLIC_BASE_URL", "http://voice.example.com"),
        ("TWILIO_AUTH_TOKEN", TOKEN),
        ("TWILIO_ACCOUNT_SID", "AC0123456789abcdef0123456789abcdef"),
    ]
}

fn serve_with(extra: &[(&'static str, &'static str)]) -> (Sandbox, Server) {
    let mut env = env();
    env.extend_from_slice(extra);
    let sandbox = Sandbox::new();
    sandbox.bootstrap(Path::new(BIN), &env, NUMBER, OWNER);
    let server = sandbox.serve(Path::new(BIN), &env);
    (sandbox, server)
}

/// Every series `/metrics` shows: each sample line up to its value.
fn series(server: &Server) -> BTreeSet<String> {
    let reply = server.get("/metrics");
    assert_eq!(reply.status, 200);
    reply
        .body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.rsplit_once(' ').map_or(l, |(series, _)| series).to_owned())
        .collect()
}

/// A tiny deterministic generator (xorshift), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `path` with a random choice of its characters percent-encoded, in random hex case.
fn percent_encoded(path: &str, rng: &mut Rng) -> String {
    let mut out = String::new();
    for (i, c) in path.chars().enumerate() {
        // The leading slash stays, and at least one character is encoded.
        if i > 0 && (rng.next().is_multiple_of(3) || i == path.len() - 1) {
            let hex = format!("%{:02X}", c as u32);
            out.push_str(&if rng.next().is_multiple_of(2) {
                hex.to_lowercase()
            } else {
                hex
            });
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn percent_encoded_webhook_paths_mint_no_metric_series() {
    let (_sandbox, server) = serve_with(&[]);
    let paths = [
        "/webhook/incoming_call",
        "/webhook/outbound_call",
        "/webhook/call_status",
    ];
    let body = form(&[("CallSid", SID), ("From", "+15550001111"), ("To", NUMBER)]);
    let unsigned = |path: &str| {
        server.request(
            "POST",
            path,
            &[("content-type", "application/x-www-form-urlencoded")],
            Some(&body),
        )
    };
    // Every series an unsigned webhook can create, created once on the plain paths (and the one
    // of a path no route takes).
    for path in paths {
        assert_eq!(unsigned(path).status, 403, "{path}");
    }
    assert_eq!(unsigned("/webhook/no_such_hook").status, 404);
    series(&server); // A scrape is counted once answered: the first one's series show from the second.
    let before = series(&server);
    assert!(
        before
            .iter()
            .any(|s| s.contains(r#"route="/webhook/incoming_call""#) && s.contains("missing")),
        "{before:?}"
    );

    let mut rng = Rng(0x5eed_cafe_f00d_d00d);
    let mut routed = 0;
    for i in 0..200 {
        let path = percent_encoded(paths[i % paths.len()], &mut rng);
        let reply = unsigned(&path);
        assert!(matches!(reply.status, 403 | 404), "{path}: {}", reply.status);
        routed += usize::from(reply.status == 403);
    }
    assert!(
        routed > 50,
        "actix routes most encodings to the webhooks ({routed} of 200 did)"
    );
    let after = series(&server);
    let minted: Vec<_> = after.difference(&before).collect();
    assert!(minted.is_empty(), "new series: {minted:?}");
}

/// Waits until the log files hold `needle`, and returns their text.
fn log_with(sandbox: &Sandbox, needle: &str) -> String {
    let started = Instant::now();
    loop {
        let text = sandbox.log_text();
        if text.contains(needle) {
            return text;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no {needle:?} in the log:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn log_bytes(sandbox: &Sandbox) -> usize {
    sandbox.log_text().len()
}

#[test]
fn invisible_characters_in_trace_values_are_escaped_in_the_log_file() {
    let (sandbox, server) = serve_with(&[]);
    for from in ["x\u{3164}to=+972509999999", "\u{202E}+972509999999"] {
        let body = form(&[("CallSid", SID), ("From", from), ("To", NUMBER)]);
        let reply = server.request(
            "POST",
            "/webhook/incoming_call",
            &[("content-type", "application/x-www-form-urlencoded")],
            Some(&body),
        );
        assert_eq!(reply.status, 403);
    }
    let text = log_with(&sandbox, r#"from="\u{202e}+972509999999""#);
    assert!(text.contains(r#"from="x\u{3164}to=+972509999999""#), "{text}");
    assert!(
        !text.contains('\u{3164}') && !text.contains('\u{202E}'),
        "written raw:\n{text}"
    );
}

#[test]
fn an_unsigned_60_kb_webhook_adds_little_to_the_log() {
    let (sandbox, server) = serve_with(&[]);
    let probe = |from: &str| {
        let body = form(&[("CallSid", SID), ("From", from), ("To", NUMBER), ("CallerName", from)]);
        server.request(
            "POST",
            "/webhook/incoming_call",
            &[("content-type", "application/x-www-form-urlencoded")],
            Some(&body),
        )
    };
    // A first small one, so that the log holds every line a webhook writes once per process.
    assert_eq!(probe("+15550001111").status, 403);
    log_with(&sandbox, "signature=missing");
    let before = log_bytes(&sandbox);
    let big = format!("+1{}", "5".repeat(30 * 1024));
    assert_eq!(probe(&big).status, 403);
    let text = log_with(&sandbox, "(+30658)");
    let grown = text.len() - before;
    assert!(grown < 2048, "the log grew by {grown} bytes:\n{}", &text[before..]);
    assert!(
        text.contains(&format!("from=+1{}…(+30658)", "5".repeat(62))),
        "{}",
        &text[before..]
    );
}

#[test]
fn api_answers_are_neither_cached_nor_sniffed() {
    let (_sandbox, server) = serve_with(&[]);
    let body = serde_json::json!({ "email": OWNER.0, "password": OWNER.2 }).to_string();
    let login = server.request(
        "POST",
        "/api/auth/login",
        &[("content-type", "application/json")],
        Some(&body),
    );
    assert_eq!(login.status, 200, "{}", login.body);
    let denied = server.get("/api/calls");
    assert_eq!(denied.status, 401);
    let missing = server.get("/api/nothing-here");
    assert_eq!(missing.status, 404);
    for reply in [&login, &denied, &missing, &server.get("/readyz")] {
        assert_eq!(reply.header("cache-control"), Some("no-store"), "{reply:?}");
        assert_eq!(reply.header("x-content-type-options"), Some("nosniff"), "{reply:?}");
    }
}

#[test]
fn x_forwarded_proto_alone_from_a_trusted_proxy_makes_the_cookie_secure() {
    let (_sandbox, server) = serve_with(&[("CALLPLANE_TRUSTED_PROXIES", "127.0.0.1/32")]);
    let body = serde_json::json!({ "email": OWNER.0, "password": OWNER.2 }).to_string();
    let cookie = |headers: &[(&str, &str)]| {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        let reply = server.request("POST", "/api/auth/login", &all, Some(&body));
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.header("set-cookie").unwrap().to_owned()
    };
    let plain = cookie(&[]);
    assert!(!plain.contains("Secure"), "{plain}");
    let via_tls = cookie(&[("x-forwarded-proto", "https")]);
    assert!(via_tls.contains("Secure"), "{via_tls}");
}

/// The status line of the first answer on `stream`.
fn first_status(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") {
        assert_eq!(stream.read(&mut byte).expect("an answer, not a hang"), 1, "closed");
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).trim_end().to_owned()
}

#[test]
fn an_oversized_body_is_refused_before_100_continue() {
    let (_sandbox, server) = serve_with(&[]);
    let ask = |length: usize| {
        let mut stream = TcpStream::connect(server.addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let head = format!(
            "POST /webhook/incoming_call HTTP/1.1\r\nHost: voice.example.com\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nExpect: 100-continue\r\n\
             Content-Length: {length}\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream
    };
    let mut huge = ask(50_000_000);
    assert_eq!(first_status(&mut huge), "HTTP/1.1 413 Payload Too Large");
    let mut rest = String::new();
    huge.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("\"code\":\"too_large\""), "{rest}");
    assert!(rest.to_lowercase().contains("connection: close"), "{rest}");

    // A body of a size some route takes is invited as before.
    let mut small = ask(10);
    assert_eq!(first_status(&mut small), "HTTP/1.1 100 Continue");
    assert_eq!(
        first_status(&mut small),
        "",
        "the blank line that ends the interim answer"
    );
    small.write_all(b"CallSid=xy").unwrap();
    assert_eq!(
        first_status(&mut small),
        "HTTP/1.1 403 Forbidden",
        "unsigned, so refused once read"
    );
}

/// The per-account lock is a denial of service by design; `admin unlock` is the operator's way out.
#[test]
fn an_operator_lifts_an_account_lock_with_admin_unlock() {
    let (sandbox, server) = serve_with(&[]);
    let attempt = |password: &str| {
        let body = serde_json::json!({ "email": OWNER.0, "password": password }).to_string();
        server
            .request(
                "POST",
                "/api/auth/login",
                &[("content-type", "application/json")],
                Some(&body),
            )
            .status
    };
    for _ in 0..5 {
        assert_eq!(attempt("not the password"), 401);
    }
    assert_eq!(attempt(OWNER.2), 429, "locked, even with the right password");
    let unlocked = sandbox.run(Path::new(BIN), &["admin", "unlock", "--email", OWNER.0], &env());
    assert_eq!(unlocked.code, Some(0), "{}{}", unlocked.stdout, unlocked.stderr);
    assert!(
        unlocked
            .stdout
            .contains(&format!("unlocked account={} failures_forgotten=5", OWNER.0)),
        "{}",
        unlocked.stdout
    );
    assert_eq!(attempt(OWNER.2), 200);
    let usage = sandbox.run(Path::new(BIN), &["admin", "unlock"], &env());
    assert_ne!(usage.code, Some(0), "unlock needs --email or --client");
}
