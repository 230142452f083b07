//! A fixture host served for real: health, metrics, request ids, logs, access enforcement, the
//! route table as the CLI reports it, degraded plugins and the SIGTERM drain.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::path::Path;
use std::time::{Duration, Instant};

use callplane_e2e::fixtures::SLOW_STARTED;
use callplane_e2e::harness::{Sandbox, Server, eventually};

const OK: &str = env!("CARGO_BIN_EXE_fixture-ok");
const DEGRADED: &str = env!("CARGO_BIN_EXE_fixture-degraded");
const MEDIA_PANICS: &str = env!("CARGO_BIN_EXE_fixture-media-panics");
const CRITICAL: (&str, &str) = ("CALLPLANE_CRITICAL_PLUGINS", "permissions,notes,twilio");

fn serve_ok(sandbox: &Sandbox, extra: &[(&str, &str)]) -> Server {
    let mut env = vec![CRITICAL];
    env.extend_from_slice(extra);
    sandbox.serve(Path::new(OK), &env)
}

#[test]
fn health_metrics_request_ids_and_log_file() {
    let sandbox = Sandbox::new();
    let server = serve_ok(&sandbox, &[]);

    let live = server.get("/livez");
    assert_eq!(live.status, 200);
    assert_eq!(live.json()["status"], "alive");

    let ready = server.get("/readyz");
    assert_eq!(ready.status, 200, "{}", ready.body);
    let body = ready.json();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["draining"], false);
    assert_eq!(body["database"]["reachable"], true);
    assert_eq!(body["database"]["kind"], "sqlite");
    assert_eq!(body["checks"]["notes.backlog"]["ready"], true);
    let plugins: Vec<(String, String)> = body["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = ["permissions", "notes", "slow", "twilio"]
        .iter()
        .map(|n| (n.to_string(), "active".to_owned()))
        .collect();
    assert_eq!(plugins, expected, "boot order: requirements first, then name");

    // Request ids: generated, echoed, not taken from an untrusted client, present in the log line.
    let missing = server.request("GET", "/no/such/route", &[("x-request-id", "client-chosen")], None);
    assert_eq!(missing.status, 404);
    let id = missing.header("x-request-id").unwrap().to_owned();
    assert_ne!(id, "client-chosen");
    assert_eq!(id.len(), 36, "a UUID: {id}");
    assert_eq!(missing.json()["error"]["request_id"], id.as_str());
    assert_eq!(missing.json()["error"]["code"], "not_found");

    let metrics = server.get("/metrics");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    for needle in [
        "callplane_build_info{version=\"0.1.0\"} 1",
        "callplane_plugin_info{plugin=\"notes\",version=\"0.0.1-fixture\",critical=\"true\",status=\"active\"} 1",
        "callplane_http_requests_total{route=\"/livez\",method=\"GET\",status=\"200\"} 1",
        "callplane_http_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\"} 1",
        "callplane_draining 0",
    ] {
        assert!(
            metrics.body.contains(needle),
            "metrics lack {needle}:\n{}",
            metrics.body
        );
    }

    server.signal("TERM");
    let (status, _) = server.wait();
    assert!(status.success(), "clean shutdown exits 0: {status}");
    let log = sandbox.log_text();
    assert!(log.contains("[BOOT] ready bind=127.0.0.1:"), "{log}");
    let line = log
        .lines()
        .find(|l| l.contains("[HTTP] request rejected"))
        .expect("the 404 is logged");
    assert!(line.contains(&format!("request_id={id}")), "{line}");
    assert!(line.contains("path=/no/such/route status=404"), "{line}");
    assert!(log.contains("[SHUTDOWN] stopped"), "flushed at exit:\n{log}");
}

#[test]
fn a_panicking_handler_answers_500_for_its_request_only() {
    let sandbox = Sandbox::new();
    let server = serve_ok(&sandbox, &[]);
    for _ in 0..3 {
        let reply = server.get("/fixture/panic");
        assert_eq!(reply.status, 500);
        let body = reply.json();
        assert_eq!(body["error"]["code"], "internal");
        assert_eq!(body["error"]["request_id"].as_str(), reply.header("x-request-id"));
    }
    assert_eq!(server.get("/livez").status, 200, "the process keeps serving");
    assert_eq!(server.get("/fixture/slow?ms=1").status, 200);
    let metrics = server.get("/metrics").body;
    assert!(
        metrics.contains(r#"callplane_http_handler_panics_total{route="/fixture/panic"} 3"#),
        "{metrics}"
    );
    server.wait_for_output("[HTTP] handler panicked; answered 500");
}

#[test]
fn access_policies_are_enforced_by_the_host() {
    let sandbox = Sandbox::new();
    let server = serve_ok(&sandbox, &[]);
    let notes = |token: Option<&str>| {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
        server.request("GET", "/api/notes", &headers, None)
    };
    let anonymous = notes(None);
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.json()["error"]["code"], "unauthenticated");
    assert!(anonymous.json()["error"]["request_id"].is_string());
    assert_eq!(notes(Some("1:calendar")).status, 403);
    assert_eq!(notes(Some("1:notes")).status, 200);

    let post = |token: &str, body: &str| {
        let auth = format!("Bearer {token}");
        server.request(
            "POST",
            "/api/notes",
            &[("authorization", &auth), ("content-type", "application/json")],
            Some(body),
        )
    };
    assert_eq!(post("1:notes", r#"{"body":"call back"}"#).status, 201);
    assert_eq!(post("1:notes", "{").status, 400);
    assert_eq!(post("1:notes", r#"{"body":"x","extra":1}"#).status, 422);
    assert_eq!(post("1:notes", r#"{"body":7}"#).status, 422);
    assert_eq!(
        post("1:calendar", r#"{"body":"x"}"#).status,
        403,
        "checked before the body is read"
    );
    assert_eq!(notes(Some("1:notes")).json(), serde_json::json!([[1, "call back"]]));
    assert_eq!(
        notes(Some("2:notes")).json(),
        serde_json::json!([]),
        "migrations ran; tenants are separate"
    );

    let unsigned = server.request("POST", "/webhook/ping", &[], Some(""));
    assert_eq!(unsigned.status, 403);
    assert_eq!(unsigned.header("content-type"), Some("text/xml"));
    let signed = server.request("POST", "/webhook/ping", &[("x-twilio-signature", "valid")], Some(""));
    assert_eq!(signed.status, 200);
    assert!(signed.body.contains("<Say>pong</Say>"));
    let wrong_method = server.request("GET", "/webhook/ping", &[], None);
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.header("allow"), Some("POST"));
}

#[test]
fn routes_and_check_json_match_the_live_table() {
    let sandbox = Sandbox::new();
    let routes = sandbox.run(Path::new(OK), &["routes", "--format", "json"], &[CRITICAL]);
    assert_eq!(routes.code, Some(0), "{}", routes.stderr);
    let table: serde_json::Value = serde_json::from_str(&routes.stdout).unwrap();
    let table = table["routes"].as_array().unwrap().clone();
    assert_eq!(table.len(), 11, "{table:#?}");
    let text = sandbox.run(Path::new(OK), &["routes"], &[CRITICAL]);
    assert_eq!(text.stdout.lines().count(), table.len() + 1);
    assert!(text.stdout.lines().next().unwrap().starts_with("METHOD  PATH"));
    assert!(
        text.stdout
            .contains("GET     /api/notes       notes        PageAccess(notes)  true"),
        "{}",
        text.stdout
    );

    let check = sandbox.run(Path::new(OK), &["check", "--format", "json"], &[CRITICAL]);
    assert_eq!(check.code, Some(0));
    let check: serde_json::Value = serde_json::from_str(&check.stdout).unwrap();
    assert_eq!(check["ok"], true);

    let server = serve_ok(&sandbox, &[]);
    for route in &table {
        let method = route["method"].as_str().unwrap();
        let path = route["path"].as_str().unwrap().replace("{", "").replace("}", "");
        let reply = server.request(method, &path, &[], Some(""));
        let unmatched = reply.status == 404 && reply.body.contains("no route for");
        assert!(!unmatched, "{method} {path} is in the table but not served");
        let expected = match route["access"].as_str().unwrap() {
            "Public" => None,
            "TwilioSignature" => Some(403),
            _ => Some(401),
        };
        if let Some(status) = expected {
            assert_eq!(reply.status, status, "{method} {path} without credentials");
        }
    }
    let off_table = server.request("DELETE", "/api/everything", &[], None);
    assert_eq!(off_table.status, 404);

    let ready = server.get("/readyz").json();
    let live_plugins: Vec<&str> = ready["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    let checked: Vec<&str> = check["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(live_plugins, checked);
}

#[test]
fn trusted_proxy_request_ids_are_honoured_and_json_logs_carry_them() {
    let sandbox = Sandbox::new();
    let server = serve_ok(
        &sandbox,
        &[
            ("CALLPLANE_TRUSTED_PROXIES", "127.0.0.1/32"),
            ("CALLPLANE_LOG_FORMAT", "json"),
        ],
    );
    let reply = server.request(
        "GET",
        "/nowhere",
        &[
            ("x-request-id", "lb-req-42"),
            ("x-forwarded-for", "198.51.100.7"),
            ("x-forwarded-proto", "https"),
        ],
        None,
    );
    assert_eq!(reply.header("x-request-id"), Some("lb-req-42"));
    let invalid = server.request("GET", "/nowhere", &[("x-request-id", "bad id with spaces")], None);
    assert_eq!(
        invalid.header("x-request-id").map(str::len),
        Some(36),
        "replaced by a generated UUID"
    );
    server.signal("TERM");
    let (status, _) = server.wait();
    assert!(status.success());
    let log = sandbox.log_text();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let ready = lines
        .iter()
        .find(|l| l["message"].as_str().is_some_and(|m| m.starts_with("[BOOT] ready")))
        .unwrap();
    assert!(ready["bind"].is_string() && ready["boot_ms"].is_number(), "{ready}");
    let request = lines
        .iter()
        .find(|l| l["span"]["request_id"] == "lb-req-42")
        .expect("the request's lines carry the proxy's request id");
    assert_eq!(
        request["span"]["client"], "198.51.100.7",
        "client address from X-Forwarded-For of a trusted proxy"
    );
    assert_eq!(request["span"]["scheme"], "https", "scheme from X-Forwarded-Proto");
}

#[test]
fn sigterm_turns_readiness_off_first_and_finishes_in_flight_requests() {
    let sandbox = Sandbox::new();
    let server = serve_ok(&sandbox, &[("CALLPLANE_SHUTDOWN_DRAIN_SECS", "2")]);
    assert_eq!(server.get("/readyz").status, 200);
    std::thread::scope(|scope| {
        let slow = scope.spawn(|| {
            let reply = server.get("/fixture/slow?ms=3500");
            (reply, Instant::now())
        });
        // The slow request is in flight before the signal.
        server.wait_for_output(SLOW_STARTED);
        server.signal("TERM");
        let signalled = Instant::now();
        let mut not_ready = None;
        while signalled.elapsed() < Duration::from_secs(2) {
            if server.get("/readyz").status == 503 {
                not_ready = Some(Instant::now());
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let not_ready = not_ready.expect("readiness turns 503 during the drain");
        assert!(
            not_ready.duration_since(signalled) < Duration::from_secs(1),
            "at once, not after the drain"
        );
        assert_eq!(server.get("/livez").status, 200, "still serving while draining");
        let (reply, finished) = slow.join().unwrap();
        assert_eq!(reply.status, 200, "the in-flight request completes");
        assert_eq!(reply.body, "done");
        assert!(
            not_ready < finished,
            "readiness was 503 before the slow request finished"
        );
    });
    let (status, output) = server.wait();
    assert!(status.success(), "{status}\n{output}");
    let draining = output.find("[SHUTDOWN] draining").expect("drain logged");
    let closing = output.find("[SHUTDOWN] drain over").expect("listener close logged");
    assert!(draining < closing);
}

#[test]
fn a_second_signal_stops_at_once() {
    let sandbox = Sandbox::new();
    let server = serve_ok(&sandbox, &[("CALLPLANE_SHUTDOWN_DRAIN_SECS", "60")]);
    server.signal("TERM");
    eventually(
        Duration::from_secs(30),
        "readiness turns 503 after the first signal",
        || server.get("/readyz").status == 503,
    );
    let started = Instant::now();
    server.signal("INT");
    let (_, output) = server.wait();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "stopped without waiting for the 60 s drain"
    );
    assert!(output.contains("[SHUTDOWN] second signal: stopping now"), "{output}");
}

#[test]
fn a_second_signal_during_the_graceful_stop_stops_at_once() {
    let sandbox = Sandbox::new();
    let server = serve_ok(&sandbox, &[("CALLPLANE_SHUTDOWN_DRAIN_SECS", "0")]);
    let url = server.url("/fixture/slow?ms=20000");
    let slow = std::thread::spawn(move || ureq::get(&url).call().map(|r| r.status().as_u16()));
    server.wait_for_output(SLOW_STARTED);
    server.signal("TERM");
    // No drain: the graceful stop begins at once and waits for the 20 s request.
    server.wait_for_output("[SHUTDOWN] drain over");
    let started = Instant::now();
    server.signal("TERM");
    let (status, output) = server.wait();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "stopped without waiting for the slow request"
    );
    assert_eq!(
        status.code(),
        Some(1),
        "a forced stop is not a clean shutdown:\n{output}"
    );
    assert!(output.contains("[SHUTDOWN] stopped at once"), "{output}");
    assert!(slow.join().unwrap().is_err(), "the in-flight request was cut off");
    assert!(
        sandbox.log_text().contains("[SHUTDOWN] second signal: stopping now"),
        "flushed before exit"
    );
}

#[test]
fn non_critical_registration_failures_degrade_instead_of_stopping() {
    let sandbox = Sandbox::new();
    let env = [("CALLPLANE_CRITICAL_PLUGINS", "permissions,notes")];
    let server = sandbox.serve(Path::new(DEGRADED), &env);
    let output = server.output();
    assert!(
        output
            .contains("[BOOT][DEGRADED] plugin=crashy disabled: registration panicked: fixture: registration panicked"),
        "{output}"
    );
    assert!(
        output.contains("[BOOT][DEGRADED] plugin=flaky disabled: registration returned an error"),
        "{output}"
    );
    assert!(output.contains("[BOOT][WARN] CP006"), "{output}");
    let ready = server.get("/readyz");
    assert_eq!(ready.status, 200, "non-critical failures keep the instance ready");
    let body = ready.json();
    assert_eq!(body["status"], "degraded");
    let crashy = body["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "crashy")
        .unwrap();
    assert_eq!(crashy["status"], "disabled");

    let plugins = sandbox.run(Path::new(DEGRADED), &["plugins", "--format", "json"], &env);
    assert_eq!(plugins.code, Some(0));
    let listed: serde_json::Value = serde_json::from_str(&plugins.stdout).unwrap();
    let statuses: Vec<(&str, &str)> = listed["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        statuses,
        [
            ("crashy", "disabled"),
            ("flaky", "disabled"),
            ("permissions", "active"),
            ("notes", "active")
        ]
    );
    let text = sandbox.run(Path::new(DEGRADED), &["plugins"], &env);
    assert!(
        text.stdout
            .contains("flaky        0.0.1-fixture  false     -            disabled (registration returned an error"),
        "{}",
        text.stdout
    );
}

#[test]
fn two_instances_share_postgresql() {
    let Some(pg) = callplane_e2e::harness::PgDatabase::create("two_instances_share_postgresql") else {
        return;
    };
    let sandboxes = [Sandbox::new(), Sandbox::new()];
    let env = [
        CRITICAL,
        ("CALLPLANE_DATABASE_URL", pg.url.as_str()),
        ("CALLPLANE_INSTANCES", "2"),
    ];
    // Both boot at once against the empty database: migrations must apply exactly once.
    let servers: Vec<Server> = std::thread::scope(|scope| {
        let handles: Vec<_> = sandboxes
            .iter()
            .map(|s| scope.spawn(|| s.serve(Path::new(OK), &env)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let applied: usize = servers
        .iter()
        .map(|s| s.output().matches("[MIGRATE] applied").count())
        .sum();
    assert_eq!(applied, 1, "one instance migrated, the other found nothing to do");
    let ready = servers[1].get("/readyz").json();
    assert_eq!(ready["database"]["kind"], "postgres");
    assert_eq!(ready["database"]["reachable"], true);

    let auth = ("authorization", "Bearer 5:notes");
    let created = servers[0].request(
        "POST",
        "/api/notes",
        &[auth, ("content-type", "application/json")],
        Some(r#"{"body":"shared"}"#),
    );
    assert_eq!(created.status, 201);
    let seen = servers[1].request("GET", "/api/notes", &[auth], None);
    assert_eq!(
        seen.json(),
        serde_json::json!([[1, "shared"]]),
        "written on one instance, read on the other"
    );
    drop(servers);
}

#[test]
fn no_log_line_is_dropped_under_load() {
    let sandbox = Sandbox::new();
    let server = serve_ok(&sandbox, &[]);
    const THREADS: usize = 8;
    const PER_THREAD: usize = 250;
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let server = &server;
            scope.spawn(move || {
                for i in 0..PER_THREAD {
                    assert_eq!(server.get(&format!("/load/{t}/{i}")).status, 404);
                }
            });
        }
    });
    server.signal("TERM");
    let (status, _) = server.wait();
    assert!(status.success());
    let log = sandbox.log_text();
    let logged = log
        .lines()
        .filter(|l| l.contains("[HTTP] request rejected") && l.contains("path=/load/"))
        .count();
    assert_eq!(
        logged,
        THREADS * PER_THREAD,
        "every request's line reached the log file"
    );
}

#[test]
fn a_failing_log_file_is_counted_and_the_service_keeps_answering() {
    let sandbox = Sandbox::new();
    // The disk is full: today's log file is /dev/full (writes fail with ENOSPC). The directory
    // itself is writable, so the boot check passes, as it would on a disk that fills up later.
    let today = std::process::Command::new("date").args(["-u", "+%F"]).output().unwrap();
    let today = String::from_utf8(today.stdout).unwrap();
    std::fs::create_dir_all(sandbox.log_dir()).unwrap();
    let file = sandbox.log_dir().join(format!("callplane.{}.log", today.trim()));
    std::os::unix::fs::symlink("/dev/full", &file).unwrap();
    let server = serve_ok(&sandbox, &[]);
    for i in 0..50 {
        assert_eq!(server.get(&format!("/disk-full/{i}")).status, 404);
    }
    assert_eq!(server.get("/readyz").status, 200);
    // The log is written on a thread of its own: the failures are counted in its time.
    eventually(Duration::from_secs(30), "log write errors counted", || {
        let metrics = server.get("/metrics").body;
        let errors: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("callplane_log_write_errors_total "))
            .unwrap_or_else(|| panic!("{metrics}"))
            .parse()
            .unwrap();
        errors > 0.0
    });
    server.signal("TERM");
    let (status, output) = server.wait();
    assert!(status.success(), "{output}");
    assert!(output.contains("[LOG] writing the log file failed"), "{output}");
    for i in 0..50 {
        assert!(
            output.contains(&format!("path=/disk-full/{i} ")),
            "the console still has every line ({i} missing):\n{output}"
        );
    }
}

/// The media relay is not critical: a relay that panics at registration leaves the host DEGRADED
/// and answering calls, with today's TwiML (the stream goes straight to the media server, as in a
/// build without `plugin-media`).
#[test]
fn a_relay_that_panics_at_registration_leaves_calls_answered_as_before() {
    let sandbox = Sandbox::new();
    let bin = Path::new(MEDIA_PANICS);
    let env = [("CALLPLANE_CRITICAL_PLUGINS", "permissions,twilio")];
    let business = sandbox.run(
        bin,
        &[
            "admin",
            "create-business",
            "--name",
            "Streamer",
            "--phone",
            "+15550001111",
            "--media-stream-url",
            "wss://agent.example.com/media",
        ],
        &env,
    );
    assert_eq!(business.code, Some(0), "{}{}", business.stdout, business.stderr);
    let server = sandbox.serve(bin, &env);
    let output = server.output();
    assert!(
        output.contains("[BOOT][DEGRADED] plugin=media disabled: registration panicked"),
        "{output}"
    );
    assert_eq!(server.get("/readyz").json()["status"], "degraded");
    let answer = sandbox.run(
        bin,
        &[
            "simulate",
            "--target",
            &server.url(""),
            "inbound",
            "--to",
            "+15550001111",
        ],
        &env,
    );
    assert_eq!(answer.code, Some(0), "{}{}", answer.stdout, answer.stderr);
    assert!(
        answer.stdout.contains("-> 200")
            && answer
                .stdout
                .contains(r#"<Stream url="wss://agent.example.com/media">"#)
            && !answer.stdout.contains("/ws/twilio/media"),
        "today's TwiML: {}",
        answer.stdout
    );
}
