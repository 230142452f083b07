//! A bounded soak of the real binary: signed webhooks (each call: incoming, then three status
//! callbacks), calls and calendar API traffic at once, for `TEST_SOAK_SECS` (default 20;
//! `.ci/run` runs 120). No request may fail, resident memory may not grow by more than
//! [`RSS_GROWTH_BOUND_MIB`] after warm-up, and every accepted webhook must be a row.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::io::Write as _;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use callplane_e2e::harness::Sandbox;
use common::{post_signed, sqlite_rows};
use serde_json::json;

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_callplane");
const PUBLIC: &str = "https://voice.example.com";
const TOKEN: &str = "soak-auth-token-6a1f";
const NUMBER: &str = "+972501234567";
/// How much resident memory may grow between the end of warm-up and the end of the soak.
const RSS_GROWTH_BOUND_MIB: u64 = 16;
const WARMUP: Duration = Duration::from_secs(5);

#[test]
fn soak_mixed_traffic_loses_nothing_and_does_not_grow() {
    let secs: u64 = std::env::var("TEST_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let env = [
        ("CALLPLANE_PUBLIC_BASE_URL", PUBLIC),
        ("TWILIO_AUTH_TOKEN", TOKEN),
        ("TWILIO_ACCOUNT_SID", "AC0123456789abcdef0123456789abcdef"),
    ];
    let sandbox = Sandbox::new();
    sandbox.bootstrap(
        Path::new(BIN),
        &env,
        NUMBER,
        ("agent@dental.example", "agent", "agent password 123"),
    );
    let server = sandbox.serve(Path::new(BIN), &env);
    let token = server.login("agent@dental.example", "agent password 123");
    let bearer = format!("Bearer {token}");

    let stop = AtomicBool::new(false);
    let next_call = AtomicUsize::new(0);
    let (calls, webhooks, api) = (AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0));
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let fail = |what: String| failures.lock().unwrap().push(what);
    let (rss_warm, rss_end) = std::thread::scope(|scope| {
        for _ in 0..3 {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let sid = format!("CA{:032x}", next_call.fetch_add(1, Ordering::Relaxed));
                    let base = [("CallSid", sid.as_str()), ("From", "+972541112222"), ("To", NUMBER)];
                    let mut steps = vec![("/webhook/incoming_call", "ringing", None)];
                    steps.extend(
                        [("0", "ringing"), ("1", "in-progress"), ("2", "completed")]
                            .map(|(seq, status)| ("/webhook/call_status", status, Some(seq))),
                    );
                    for (path, status, sequence) in steps {
                        let mut params = base.to_vec();
                        params.push(("CallStatus", status));
                        if let Some(seq) = sequence {
                            params.push(("SequenceNumber", seq));
                        }
                        match post_signed(&server, PUBLIC, TOKEN, path, &params).map(|r| r.status) {
                            Ok(200) => {
                                webhooks.fetch_add(1, Ordering::Relaxed);
                            }
                            other => fail(format!("{path} {sid}: {other:?}")),
                        }
                    }
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        scope.spawn(|| {
            let mut day = 0u32;
            while !stop.load(Ordering::Relaxed) {
                day += 1;
                let slot = json!({
                    "title": "Soak check-up",
                    "starts_at": format!("2030-{:02}-{:02}T09:00:00Z", day / 28 % 12 + 1, day % 28 + 1),
                    "ends_at": format!("2030-{:02}-{:02}T09:30:00Z", day / 28 % 12 + 1, day % 28 + 1),
                });
                let auth = [("authorization", bearer.as_str()), ("content-type", "application/json")];
                let created = server.try_request("POST", "/api/calendar/appointments", &auth, Some(&slot.to_string()));
                let id = match created {
                    Ok(r) if r.status == 201 => r.json()["id"].as_i64().unwrap(),
                    other => {
                        fail(format!("create appointment: {other:?}"));
                        continue;
                    }
                };
                for (method, path) in [
                    ("GET", "/api/calls?limit=20".to_owned()),
                    ("GET", "/api/me".to_owned()),
                    ("GET", format!("/api/calendar/appointments/{id}")),
                    ("DELETE", format!("/api/calendar/appointments/{id}")),
                ] {
                    match server.try_request(method, &path, &auth, None) {
                        Ok(r) if r.status < 300 => {
                            api.fetch_add(1, Ordering::Relaxed);
                        }
                        other => fail(format!("{method} {path}: {other:?}")),
                    }
                }
            }
        });
        // However this ends, the clients stop.
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _stop = Stop(&stop);
        std::thread::sleep(WARMUP);
        let warm = server.rss_kib();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(secs) {
            std::thread::sleep(Duration::from_millis(200));
            assert!(failures.lock().unwrap().is_empty(), "{:?}", failures.lock().unwrap());
        }
        (warm, server.rss_kib())
    });

    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    let (calls, webhooks, api) = (calls.into_inner(), webhooks.into_inner(), api.into_inner());
    server.signal("TERM");
    let (status, output) = server.wait();
    assert!(status.success(), "{output}");
    assert!(!output.contains("panicked"));
    assert_eq!(sqlite_rows(&sandbox, "calls"), calls as i64, "every call recorded once");
    assert_eq!(
        sqlite_rows(&sandbox, "call_events"),
        webhooks as i64,
        "every accepted webhook is an event"
    );
    assert_eq!(
        sqlite_rows(&sandbox, "appointments"),
        0,
        "every appointment created was deleted"
    );
    let growth_mib = rss_end.saturating_sub(rss_warm) / 1024;
    let _ = writeln!(
        std::io::stderr(),
        "soak: {secs} s, {calls} calls, {webhooks} webhooks, {api} API requests, 0 failed, 0 records lost, RSS {} → {} MiB",
        rss_warm / 1024,
        rss_end / 1024
    );
    assert!(
        growth_mib <= RSS_GROWTH_BOUND_MIB,
        "RSS grew {growth_mib} MiB after warm-up ({rss_warm} → {rss_end} KiB)"
    );
}
