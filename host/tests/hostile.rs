//! Hostile input against the real binary: webhooks nobody signed (or signed for something else),
//! malformed bodies (400, or 415 for a content type Twilio never sends, whatever the signature),
//! oversized and endless ones, and slow clients. Every case has its expected status; none may
//! produce a 5xx, a panic or a hang, and none may write a call record.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use callplane_e2e::harness::{Sandbox, Server};
use common::{form, sign, sqlite_rows};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_callplane");
const PUBLIC: &str = "https://voice.example.com";
const TOKEN: &str = "hostile-auth-token-91c4";
const NUMBER: &str = "+972501234567";
const SID: &str = "CA0123456789abcdef0123456789abcdef";

fn env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("CALLPLANE_PUBLIC_BASE_URL", PUBLIC),
        ("TWILIO_AUTH_TOKEN", TOKEN),
        ("TWILIO_ACCOUNT_SID", "AC0123456789abcdef0123456789abcdef"),
    ]
}

/// Sends raw bytes (whatever a hostile client wants) and returns the status code.
fn raw(addr: SocketAddr, request: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.write_all(request).unwrap();
    status_of(&mut stream)
}

fn status_of(stream: &mut TcpStream) -> u16 {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") {
        let n = stream.read(&mut byte).expect("an answer, not a hang");
        assert_eq!(n, 1, "connection closed without an answer");
        head.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn post(path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut request = format!("POST {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("host")) {
        request.push_str("Host: voice.example.com\r\n");
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn serve() -> (Sandbox, Server) {
    let sandbox = Sandbox::new();
    sandbox.bootstrap(
        Path::new(BIN),
        &env(),
        NUMBER,
        ("owner@dental.example", "owner", "owner password 123"),
    );
    let server = sandbox.serve(Path::new(BIN), &env());
    (sandbox, server)
}

#[test]
fn hostile_webhooks_are_refused_and_write_nothing() {
    let (sandbox, server) = serve();
    let incoming = format!("{PUBLIC}/webhook/incoming_call");
    let params = [
        ("CallSid", SID),
        ("From", "+972541112222"),
        ("To", NUMBER),
        ("CallStatus", "ringing"),
    ];
    let body = form(&params);
    let good = sign(TOKEN, &incoming, &params);
    let forged = "AAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let form_type = ("Content-Type", "application/x-www-form-urlencoded");
    let outbound_query = "/webhook/outbound_call?lead_id=42&business_id=1";

    // 10,000 parameters in 40 KB: under the size limit, so the parser sees them all.
    let huge_params = "a=1&".repeat(10_000);
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "invalid percent-encoding",
            post(
                "/webhook/incoming_call",
                &[form_type, ("X-Twilio-Signature", forged)],
                b"CallSid=CA%ZZ%&To=%2&From=%%%",
            ),
            400,
        ),
        (
            "non-UTF-8 body",
            post(
                "/webhook/incoming_call",
                &[form_type, ("X-Twilio-Signature", forged)],
                b"CallSid=\xff\xfe\xfd&To=\xc3\x28",
            ),
            400,
        ),
        (
            "body over the 64 KiB limit",
            post(
                "/webhook/incoming_call",
                &[form_type, ("X-Twilio-Signature", &good)],
                &vec![b'a'; 70 * 1024],
            ),
            413,
        ),
        (
            "10,000 parameters",
            post(
                "/webhook/incoming_call",
                &[form_type, ("X-Twilio-Signature", forged)],
                huge_params.as_bytes(),
            ),
            403,
        ),
        (
            "missing signature",
            post("/webhook/incoming_call", &[form_type], body.as_bytes()),
            403,
        ),
        (
            "duplicate signature headers (one of them valid)",
            post(
                "/webhook/incoming_call",
                &[form_type, ("X-Twilio-Signature", &good), ("X-Twilio-Signature", &good)],
                body.as_bytes(),
            ),
            403,
        ),
        (
            "signature for another path",
            post(
                "/webhook/call_status",
                &[form_type, ("X-Twilio-Signature", &good)],
                body.as_bytes(),
            ),
            403,
        ),
        (
            "signature over the URL without its query",
            post(
                outbound_query,
                &[
                    form_type,
                    (
                        "X-Twilio-Signature",
                        &sign(TOKEN, &format!("{PUBLIC}/webhook/outbound_call"), &params),
                    ),
                ],
                body.as_bytes(),
            ),
            403,
        ),
        (
            "http/https swap",
            post(
                "/webhook/incoming_call",
                &[
                    form_type,
                    (
                        "X-Twilio-Signature",
                        &sign(TOKEN, "http://voice.example.com/webhook/incoming_call", &params),
                    ),
                ],
                body.as_bytes(),
            ),
            403,
        ),
        (
            "signed over a forged Host / X-Forwarded-Host (with spaces)",
            post(
                "/webhook/incoming_call",
                &[
                    form_type,
                    ("Host", "evil example"),
                    ("X-Forwarded-Host", "evil example"),
                    ("X-Forwarded-Proto", "http"),
                    (
                        "X-Twilio-Signature",
                        &sign(TOKEN, "https://evil example/webhook/incoming_call", &params),
                    ),
                ],
                body.as_bytes(),
            ),
            403,
        ),
        (
            "JSON body without bodySHA256",
            post(
                "/webhook/incoming_call",
                &[
                    ("Content-Type", "application/json"),
                    ("X-Twilio-Signature", &sign(TOKEN, &incoming, &[])),
                ],
                br#"{"CallSid":"CA0123456789abcdef0123456789abcdef"}"#,
            ),
            403,
        ),
        (
            "wrong content type, forged signature",
            post(
                "/webhook/incoming_call",
                &[("Content-Type", "text/plain"), ("X-Twilio-Signature", forged)],
                body.as_bytes(),
            ),
            415,
        ),
    ];
    let tried = cases.len();
    for (what, request, expected) in cases {
        let status = raw(server.addr, &request);
        assert_eq!(status, expected, "{what}");
        assert_eq!(sqlite_rows(&sandbox, "calls"), 0, "{what}: nothing written");
        assert_eq!(sqlite_rows(&sandbox, "call_events"), 0, "{what}: nothing written");
    }

    // The same webhook, signed properly, is accepted: the cases above failed for their reason.
    let status = raw(
        server.addr,
        &post(
            "/webhook/incoming_call",
            &[form_type, ("X-Twilio-Signature", &good)],
            body.as_bytes(),
        ),
    );
    assert_eq!(status, 200);
    assert_eq!(sqlite_rows(&sandbox, "calls"), 1);

    server.signal("TERM");
    let (_, output) = server.wait();
    assert!(!output.contains("panicked"), "{output}");
    let _ = writeln!(
        std::io::stderr(),
        "hostile webhooks: {tried} inputs refused, 0 records written"
    );
}

#[test]
fn slow_bodies_time_out_with_408_instead_of_holding_a_worker() {
    let (sandbox, server) = serve();
    let incoming = format!("{PUBLIC}/webhook/incoming_call");
    let params = [("CallSid", SID), ("From", "+972541112222"), ("To", NUMBER)];
    let body = form(&params);
    let signature = sign(TOKEN, &incoming, &params);
    // Headers, then a few bytes of the body, then nothing: a slow-loris client.
    let slow = |path: &str, headers: &[(&str, &str)]| {
        let addr = server.addr;
        let (path, headers): (String, Vec<(String, String)>) = (
            path.to_owned(),
            headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        let body = body.clone();
        std::thread::spawn(move || {
            let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let request = post(&path, &headers, body.as_bytes());
            let mut stream = TcpStream::connect(addr).unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let cut = request.len() - body.len() + 5;
            stream.write_all(&request[..cut]).unwrap();
            let started = Instant::now();
            let status = status_of(&mut stream);
            (status, started.elapsed())
        })
    };
    let webhook = slow(
        "/webhook/incoming_call",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("X-Twilio-Signature", &signature),
        ],
    );
    let api = slow("/api/auth/login", &[("Content-Type", "application/json")]);
    // Meanwhile the server answers everyone else at once.
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    assert_eq!(server.get("/livez").status, 200);
    assert!(started.elapsed() < Duration::from_secs(2));

    for (what, handle) in [("webhook", webhook), ("login", api)] {
        let (status, waited) = handle.join().unwrap();
        assert_eq!(status, 408, "{what}");
        assert!(
            waited >= Duration::from_secs(9) && waited < Duration::from_secs(20),
            "{what}: {waited:?}"
        );
    }
    assert_eq!(sqlite_rows(&sandbox, "calls"), 0);
}
