//! Two instances of the real binary on one PostgreSQL database behind nginx, which terminates TLS
//! with the repository's own site configuration (`deploy/nginx/callplane.conf`, started by
//! `.ci/nginx-up`). Signed webhooks arrive over https at both instances and are recorded once, a
//! session made on one instance works on the other, forged forwarding headers from untrusted
//! peers change nothing, and a rolling restart under steady load fails no request.
//!
//! Needs `TEST_POSTGRES_URL` and the `TEST_NGINX_*` variables `.ci/nginx-up` prints; without them
//! every test says SKIPPED and passes. The instances listen on the upstream addresses of the site
//! configuration, so the tests here take turns (one lock).

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use callplane_e2e::harness::{PgDatabase, Reply, Sandbox, Server, send};
use callplane_e2e::hop::DbHop;

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_callplane");
const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "lb-auth-token-5e2a";
const NUMBER: &str = "+972501234567";
const USER: (&str, &str, &str) = ("agent@dental.example", "agent", "agent password 123");

/// The upstream addresses are fixed by the site configuration: one test at a time.
static TURN: Mutex<()> = Mutex::new(());

/// nginx as `.ci/nginx-up` started it.
struct Nginx {
    /// `https://localhost`: the public base URL of the instances.
    url: String,
    /// Where nginx connects to the instances from (their only trusted proxy).
    peer: String,
    /// The instances' addresses, read from the site configuration nginx runs.
    upstreams: Vec<SocketAddr>,
    /// The CA that signed nginx's certificate.
    ca: String,
    agent: ureq::Agent,
}

/// Everything a test needs, or `None` (said on stderr) when the environment lacks a service.
struct Cluster {
    nginx: Nginx,
    pg: PgDatabase,
    /// The database URL the instances use (the scratch database, or a hop to it).
    db_url: String,
    sandboxes: Vec<Sandbox>,
    _turn: MutexGuard<'static, ()>,
}

fn cluster(test: &str) -> Option<Cluster> {
    let vars = ["TEST_NGINX_URL", "TEST_NGINX_CA", "TEST_NGINX_PEER", "TEST_NGINX_SITE"].map(std::env::var);
    let [Ok(url), Ok(ca), Ok(peer), Ok(site)] = vars else {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test}: TEST_NGINX_URL/_CA/_PEER/_SITE are not set (nginx tests run in .ci/run)"
        );
        return None;
    };
    let pg = PgDatabase::create(test)?;
    let turn = TURN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let site = std::fs::read_to_string(&site).unwrap();
    let upstreams: Vec<SocketAddr> = site
        .lines()
        .filter_map(|line| {
            line.trim()
                .strip_prefix("server ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(upstreams.len(), 2, "the site configuration names two instances");
    let pem = std::fs::read(&ca).unwrap();
    let root = ureq::tls::Certificate::from_pem(&pem).unwrap();
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::new_with_certs(&[root]))
        .build();
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .tls_config(tls)
        .build()
        .into();
    Some(Cluster {
        nginx: Nginx {
            url,
            peer,
            upstreams,
            ca,
            agent,
        },
        db_url: pg.url.clone(),
        pg,
        sandboxes: vec![Sandbox::new(), Sandbox::new()],
        _turn: turn,
    })
}

impl Cluster {
    fn env(&self, instance: usize) -> Vec<(String, String)> {
        [
            ("CALLPLANE_BIND", self.nginx.upstreams[instance].to_string()),
            ("CALLPLANE_DATABASE_URL", self.db_url.clone()),
            ("CALLPLANE_INSTANCES", "2".to_owned()),
            ("CALLPLANE_PUBLIC_BASE_URL", self.nginx.url.clone()),
            ("CALLPLANE_TRUSTED_PROXIES", format!("{}/32", self.nginx.peer)),
            ("TWILIO_ACCOUNT_SID", ACCOUNT.to_owned()),
            ("TWILIO_AUTH_TOKEN", TOKEN.to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v))
        .to_vec()
    }

    fn serve(&self, instance: usize) -> Server {
        let env = self.env(instance);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.sandboxes[instance].serve(Path::new(BIN), &env)
    }

    /// Both instances booted at once on the empty database, then a business and a user.
    fn start(&self) -> Vec<Server> {
        let servers: Vec<Server> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..2).map(|i| scope.spawn(move || self.serve(i))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let env = self.env(0);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.sandboxes[0].bootstrap(Path::new(BIN), &env, NUMBER, USER);
        // nginx may still count an instance as failed from before it started (`.ci/run` probes
        // nginx first), and tries a failed instance with one request per fail_timeout, refusing
        // concurrent ones meanwhile ("no live upstreams"): one request at a time until both are
        // back in rotation.
        let mut in_a_row = 0;
        wait_until(
            || {
                let ok = self
                    .try_request("GET", "/livez", &[], "")
                    .is_ok_and(|r| r.status == 200);
                in_a_row = if ok { in_a_row + 1 } else { 0 };
                in_a_row >= 4
            },
            "nginx routes to both instances",
        );
        servers
    }

    /// A request through nginx; transport errors are returned.
    fn try_request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Result<Reply, String> {
        let url = format!("{}{path}", self.nginx.url);
        send(&self.nginx.agent, method, &url, headers, Some(body)).map_err(|e| e.to_string())
    }

    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        self.try_request(method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path} through nginx: {e}"))
    }

    /// `USER` logs in through nginx; the 200 answer (its cookie and token).
    fn login(&self) -> Reply {
        let body = serde_json::json!({ "email": USER.0, "password": USER.2 }).to_string();
        let login = self.request(
            "POST",
            "/api/auth/login",
            &[("content-type", "application/json")],
            &body,
        );
        assert_eq!(login.status, 200, "{}", login.body);
        login
    }

    /// An inbound-call webhook for `call_sid`, signed over the public URL as Twilio would sign it:
    /// (signature, body).
    fn webhook(&self, call_sid: &str) -> (String, String) {
        let params = [
            ("AccountSid", ACCOUNT),
            ("ApiVersion", "2010-04-01"),
            ("CallSid", call_sid),
            ("CallStatus", "ringing"),
            ("Called", NUMBER),
            ("Caller", "+972541112222"),
            ("Direction", "inbound"),
            ("From", "+972541112222"),
            ("To", NUMBER),
        ];
        let url = format!("{}/webhook/incoming_call", self.nginx.url);
        (common::sign(TOKEN, &url, &params), common::form(&params))
    }

    fn send_webhook(&self, call_sid: &str) -> Result<Reply, String> {
        let (signature, body) = self.webhook(call_sid);
        self.try_request(
            "POST",
            "/webhook/incoming_call",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("x-twilio-signature", &signature),
            ],
            &body,
        )
    }
}

fn call_sid(n: usize) -> String {
    format!("CA{n:032x}")
}

/// Lines of `output` that are the request with id `id`.
fn lines_of<'a>(output: &'a str, id: &str) -> Vec<&'a str> {
    output
        .lines()
        .filter(|l| l.contains(&format!("request_id={id}")))
        .collect()
}

#[test]
fn signed_webhooks_over_https_reach_both_instances_and_are_recorded_once() {
    let Some(cluster) = cluster("signed_webhooks_over_https_reach_both_instances_and_are_recorded_once") else {
        return;
    };
    let servers = cluster.start();
    let applied: Vec<usize> = servers
        .iter()
        .map(|s| s.output().matches("[MIGRATE] applied").count())
        .collect();
    assert!(
        applied.contains(&0) && applied.iter().any(|&n| n > 0),
        "booted at once on the empty database, one instance migrated and the other found nothing to do: {applied:?}"
    );

    const CALLS: usize = 40;
    for round in 0..2 {
        // The second round is Twilio retrying every webhook: answered again, recorded once.
        for n in 0..CALLS {
            let reply = cluster.send_webhook(&call_sid(n)).unwrap();
            assert_eq!(reply.status, 200, "round {round}, call {n}: {}", reply.body);
            assert!(reply.body.contains("<Response>"), "{}", reply.body);
            assert!(reply.header("content-type").is_some_and(|t| t.starts_with("text/xml")));
        }
    }
    let outcomes = || -> Vec<usize> {
        servers
            .iter()
            .map(|s| {
                s.output()
                    .matches("[TWILIO][INBOUND] outcome signature=valid tenant=1 recorded=true")
                    .count()
            })
            .collect()
    };
    // The instances print their lines in their own time.
    wait_until(
        || outcomes().iter().sum::<usize>() >= 2 * CALLS,
        "an outcome line per webhook",
    );
    let outcomes = outcomes();
    assert_eq!(outcomes.iter().sum::<usize>(), 2 * CALLS, "{outcomes:?}");
    assert!(
        outcomes.iter().all(|&n| n >= CALLS / 2),
        "round robin spreads the webhooks: {outcomes:?}"
    );
    assert_eq!(cluster.pg.scalar("SELECT COUNT(*) FROM calls"), CALLS as i64);
    assert_eq!(
        cluster
            .pg
            .scalar("SELECT COUNT(DISTINCT call_sid) FROM calls WHERE business_id = 1"),
        CALLS as i64
    );

    // nginx's request id reaches the instance and comes back; the instance saw the real client
    // (the test, from 127.0.0.1) over https.
    let reply = cluster.send_webhook(&call_sid(0)).unwrap();
    let id = reply.header("x-request-id").unwrap().to_owned();
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "nginx's $request_id: {id}"
    );
    let outputs = || servers[0].output() + "\n" + &servers[1].output();
    wait_until(
        || {
            lines_of(&outputs(), &id)
                .iter()
                .any(|l| l.contains("[TWILIO][INBOUND] hit"))
        },
        "an instance logs the hit line with nginx's request id",
    );
    let output = outputs();
    let lines = lines_of(&output, &id);
    assert!(
        lines.iter().any(|l| l.contains("[TWILIO][INBOUND] hit")),
        "the hit line carries nginx's request id:\n{output}"
    );
    for line in &lines {
        assert!(
            line.contains("client=127.0.0.1") && line.contains("scheme=https"),
            "{line}"
        );
    }

    // A signature over a URL other than the public one is refused, whatever Host nginx passes on.
    let params_body = cluster.webhook(&call_sid(99)).1;
    let parsed: Vec<(String, String)> = url::form_urlencoded::parse(params_body.as_bytes())
        .into_owned()
        .collect();
    let parsed: Vec<(&str, &str)> = parsed.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let forged = common::sign(TOKEN, "https://evil.example/webhook/incoming_call", &parsed);
    let reply = cluster.request(
        "POST",
        "/webhook/incoming_call",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("x-twilio-signature", &forged),
            ("host", "evil.example"),
            ("x-forwarded-host", "evil.example"),
        ],
        &params_body,
    );
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert_eq!(
        cluster.pg.scalar("SELECT COUNT(*) FROM calls"),
        CALLS as i64,
        "nothing written"
    );
}

#[test]
fn a_session_made_on_one_instance_works_on_the_other() {
    let Some(cluster) = cluster("a_session_made_on_one_instance_works_on_the_other") else {
        return;
    };
    let servers = cluster.start();
    let login = cluster.login();
    let cookie = login.header("set-cookie").unwrap();
    assert!(cookie.contains("Secure") && cookie.contains("HttpOnly"), "{cookie}");
    let token = login.json()["token"].as_str().unwrap().to_owned();
    let bearer = format!("Bearer {token}");
    for server in &servers {
        let me = server.request("GET", "/api/me", &[("authorization", &bearer)], None);
        assert_eq!(me.status, 200, "{}", me.body);
        assert_eq!(me.json()["user"]["email"], USER.0);
    }
    // Signed out through one instance, the session is gone on both.
    let out = servers[0].request("POST", "/api/auth/logout", &[("authorization", &bearer)], None);
    assert_eq!(out.status, 204, "{}", out.body);
    for server in &servers {
        let me = server.request("GET", "/api/me", &[("authorization", &bearer)], None);
        assert_eq!(me.status, 401, "{}", me.body);
    }
}

#[test]
fn forged_forwarding_headers_from_untrusted_peers_change_nothing() {
    let Some(cluster) = cluster("forged_forwarding_headers_from_untrusted_peers_change_nothing") else {
        return;
    };
    let servers = cluster.start();
    let forged = [
        ("x-forwarded-for", "203.0.113.9"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "evil example"),
        ("forwarded", "for=203.0.113.9;proto=https"),
        ("x-request-id", "forged-request-id"),
    ];
    // Straight to an instance: the test's address (127.0.0.1) is not a trusted proxy.
    let direct = servers[0].request("GET", "/nowhere", &forged, None);
    assert_eq!(direct.status, 404);
    let direct_id = direct.header("x-request-id").unwrap().to_owned();
    assert_ne!(direct_id, "forged-request-id");
    // Through nginx: nginx sets its own request id and appends the real client address.
    let via = cluster.request("GET", "/nowhere", &forged, "");
    assert_eq!(via.status, 404);
    let via_id = via.header("x-request-id").unwrap().to_owned();
    assert_ne!(via_id, "forged-request-id");

    // Each request's `[HTTP] request rejected` line (its last) reaches the output in its own time.
    let outputs = || servers[0].output() + "\n" + &servers[1].output();
    wait_until(
        || {
            let output = outputs();
            !lines_of(&output, &direct_id).is_empty() && !lines_of(&output, &via_id).is_empty()
        },
        "both requests are logged",
    );
    let output = outputs();
    assert!(
        !output.contains("forged-request-id") && !output.contains("203.0.113.9"),
        "{output}"
    );
    let direct_lines = lines_of(&output, &direct_id);
    assert!(!direct_lines.is_empty(), "{output}");
    for line in direct_lines {
        assert!(line.contains("client=127.0.0.1 scheme=http"), "direct: {line}");
    }
    let via_lines = lines_of(&output, &via_id);
    assert!(!via_lines.is_empty(), "{output}");
    for line in via_lines {
        assert!(line.contains("client=127.0.0.1 scheme=https"), "through nginx: {line}");
    }
}

#[test]
fn rolling_restart_under_steady_load_fails_no_request() {
    let Some(cluster) = cluster("rolling_restart_under_steady_load_fails_no_request") else {
        return;
    };
    let mut servers: Vec<Option<Server>> = cluster.start().into_iter().map(Some).collect();
    let token = cluster.login().json()["token"].as_str().unwrap().to_owned();
    let bearer = format!("Bearer {token}");

    const CLIENTS: usize = 4;
    let stop = AtomicBool::new(false);
    let next_sid = AtomicUsize::new(1_000);
    let sent = AtomicUsize::new(0);
    let accepted_webhooks = AtomicUsize::new(0);
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let stopped: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let restarts = std::thread::scope(|scope| {
        // However this scope ends (a failed assertion included), the clients stop.
        let _stop = StopOnDrop(&stop);
        for _ in 0..CLIENTS {
            scope.spawn(|| {
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let (what, result) = if i.is_multiple_of(4) {
                        let r = cluster.try_request("GET", "/api/calls?limit=5", &[("authorization", &bearer)], "");
                        ("GET /api/calls", r)
                    } else {
                        let sid = call_sid(next_sid.fetch_add(1, Ordering::Relaxed));
                        ("webhook", cluster.send_webhook(&sid))
                    };
                    sent.fetch_add(1, Ordering::Relaxed);
                    match result {
                        Ok(reply) if reply.status == 200 => {
                            if what == "webhook" {
                                accepted_webhooks.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Ok(reply) => failures
                            .lock()
                            .unwrap()
                            .push(format!("{what}: {} {}", reply.status, reply.body)),
                        Err(e) => failures.lock().unwrap().push(format!("{what}: {e}")),
                    }
                }
            });
        }
        let hits = |server: &Server| server.output().matches("[TWILIO][INBOUND] hit").count();
        // Both instances take traffic before anything is restarted.
        wait_until(
            || servers.iter().flatten().all(|s| hits(s) >= 5),
            "both instances serve",
        );
        let mut restarts = Vec::new();
        for (instance, slot) in servers.iter_mut().enumerate() {
            let old = slot.take().unwrap();
            let started = Instant::now();
            old.signal("TERM");
            let (status, output) = old.wait();
            stopped.lock().unwrap().push(output.clone());
            assert!(status.success(), "{output}");
            assert!(output.contains("[SHUTDOWN] draining"), "{output}");
            let new = cluster.serve(instance);
            // Back in nginx's rotation (its fail_timeout has passed) before the next one stops.
            wait_until(|| hits(&new) >= 5, "the restarted instance serves again");
            restarts.push(started.elapsed());
            *slot = Some(new);
        }
        std::thread::sleep(Duration::from_millis(500));
        restarts
    });

    let sent = sent.into_inner();
    let failures = failures.into_inner().unwrap();
    let _ = writeln!(
        std::io::stderr(),
        "rolling restart: {sent} requests through nginx ({} webhooks accepted), {} failed, restarts took {restarts:?}",
        accepted_webhooks.load(Ordering::Relaxed),
        failures.len()
    );
    if !failures.is_empty() {
        // What the instances said about it: every warning and error of every process.
        let mut outputs = stopped.into_inner().unwrap();
        outputs.extend(servers.iter().flatten().map(Server::output));
        let said: Vec<&str> = outputs
            .iter()
            .flat_map(|o| o.lines())
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .collect();
        panic!(
            "{} of {sent} failed: {:#?}\ninstances said:\n{}",
            failures.len(),
            &failures[..failures.len().min(10)],
            said.join("\n")
        );
    }
    assert!(sent >= 200, "steady load: only {sent} requests");
    // Every accepted webhook is a call in the shared database (the spool stayed empty: the
    // database never went away).
    assert_eq!(
        cluster.pg.scalar("SELECT COUNT(*) FROM calls"),
        accepted_webhooks.load(Ordering::Relaxed) as i64
    );
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn wait_until(mut done: impl FnMut() -> bool, what: &str) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(60), "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One series of an instance's `/metrics`, summed over its labels that contain `labels`.
fn metric(server: &Server, name: &str, labels: &str) -> f64 {
    let metrics = server.get("/metrics").body;
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The database goes away for `TEST_OUTAGE_SECS` (60 s by default) under steady webhook load
/// through nginx with two instances: no webhook fails, both instances stay in rotation (`/readyz`
/// 200 `degraded` throughout), every call answered is in the database once it is back, and the
/// spool gauges return to 0.
#[test]
fn a_database_outage_under_load_fails_no_webhook_and_loses_no_call() {
    let Some(mut cluster) = cluster("a_database_outage_under_load_fails_no_webhook_and_loses_no_call") else {
        return;
    };
    let outage = Duration::from_secs(
        std::env::var("TEST_OUTAGE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    let hop = DbHop::start(&cluster.pg.url);
    cluster.db_url = hop.url().to_owned();
    let servers = cluster.start();

    const CLIENTS: usize = 4;
    let stop = AtomicBool::new(false);
    let next_sid = AtomicUsize::new(1_000);
    let sent = AtomicUsize::new(0);
    let accepted = AtomicUsize::new(0);
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut probes: Vec<(usize, u16, String)> = Vec::new();
    std::thread::scope(|scope| {
        let _stop = StopOnDrop(&stop);
        for _ in 0..CLIENTS {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let sid = call_sid(next_sid.fetch_add(1, Ordering::Relaxed));
                    sent.fetch_add(1, Ordering::Relaxed);
                    match cluster.send_webhook(&sid) {
                        Ok(reply) if reply.status == 200 => {
                            accepted.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(reply) => failures
                            .lock()
                            .unwrap()
                            .push(format!("{} {}", reply.status, reply.body)),
                        Err(e) => failures.lock().unwrap().push(e),
                    }
                }
            });
        }
        let recorded = |server: &Server| metric(server, "callplane_twilio_calls_recorded_total", "database");
        wait_until(
            || servers.iter().all(|s| recorded(s) >= 5.0),
            "both instances record calls",
        );
        hop.cut();
        let cut = Instant::now();
        while cut.elapsed() < outage {
            for (i, server) in servers.iter().enumerate() {
                let reply = server.get("/readyz");
                let status = reply.json()["status"].as_str().unwrap_or("").to_owned();
                probes.push((i, reply.status, status));
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        hop.restore();
        std::thread::sleep(Duration::from_secs(2));
    });

    let (sent, accepted) = (sent.into_inner(), accepted.into_inner());
    let failures = failures.into_inner().unwrap();
    let spooled: f64 = servers
        .iter()
        .map(|s| metric(s, "callplane_twilio_calls_recorded_total", "spooled"))
        .sum();
    let backlog = |s: &Server| metric(s, "callplane_twilio_spool_backlog", "");
    wait_until(
        || servers.iter().all(|s| backlog(s) == 0.0),
        "the spool gauges return to 0",
    );
    let stored = cluster.pg.scalar("SELECT COUNT(*) FROM calls");
    let lost = accepted as i64 - stored;
    let _ = writeln!(
        std::io::stderr(),
        "database outage of {outage:?}: {sent} webhooks through nginx, {} failed, {spooled} spooled, {lost} lost",
        failures.len()
    );
    assert!(failures.is_empty(), "{:#?}", &failures[..failures.len().min(10)]);
    assert!(spooled >= 10.0, "the outage was real: {spooled} spooled");
    for (instance, status, state) in &probes {
        assert_eq!(*status, 200, "instance {instance} left rotation: {probes:?}");
        assert!(state == "degraded" || state == "ok", "{probes:?}");
    }
    for instance in 0..2 {
        assert!(
            probes.iter().any(|(i, _, s)| *i == instance && s == "degraded"),
            "instance {instance} said it was degraded: {probes:?}"
        );
    }
    assert_eq!(lost, 0, "every call answered is in the database");
}

/// The shipped site answers `/metrics` only to the networks it names (loopback): from another
/// address nginx refuses it (403) however the path is spelled, and everything else is served.
#[test]
fn metrics_are_answered_only_to_the_networks_the_site_names() {
    let Some(cluster) = cluster("metrics_are_answered_only_to_the_networks_the_site_names") else {
        return;
    };
    let _servers = cluster.start();
    let named = cluster.request("GET", "/metrics", &[], "");
    assert_eq!(named.status, 200, "from loopback: {}", named.body);
    assert!(named.body.contains("callplane_build_info"));
    let document = cluster.request("GET", "/openapi.json", &[], "");
    assert_eq!(document.status, 200, "from loopback: {}", document.body);
    assert!(document.body.contains("\"openapi\":\"3.1.0\""), "{}", document.body);
    // The same requests from 127.0.0.3, an address the site does not name (curl can choose its
    // source address).
    let from_elsewhere = |path: &str| -> String {
        let out = std::process::Command::new("curl")
            .args([
                "-4",
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--interface",
                "127.0.0.3",
            ])
            .args(["--cacert", &cluster.nginx.ca, "--path-as-is"])
            .arg(format!("{}{path}", cluster.nginx.url))
            .output()
            .expect("curl (installed by .ci/run) runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    for path in [
        "/metrics",
        "/metrics?format=text",
        "/%6detrics",
        "//metrics",
        "/openapi.json",
        "/%6fpenapi.json",
    ] {
        assert_eq!(from_elsewhere(path), "403", "{path}");
    }
    assert_eq!(from_elsewhere("/livez"), "200", "everything else is served");
}

/// A Twilio TLS client trusting nginx's CA (as Twilio trusts the public certificate).
fn websocket_client(ca: &str) -> awc::Client {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    awc::Client::builder()
        .connector(awc::Connector::new().rustls_0_23(std::sync::Arc::new(tls)))
        .timeout(Duration::from_secs(10))
        .finish()
}

/// A call's media stream relayed through the shipped site: Twilio's `wss://` upgrade (signed over
/// the public `wss://` URL) passes nginx to an instance, whose relay reaches the business's media
/// server; frames go both ways, `stop` ends both sockets, and `callplane trace` shows the hop.
#[test]
fn a_media_stream_is_relayed_through_nginx() {
    use callplane_plugin_media::fake::{Agent, Got, TwilioStream, frame_of};
    let Some(cluster) = cluster("a_media_stream_is_relayed_through_nginx") else {
        return;
    };
    let _servers = cluster.start();
    actix_rt::System::new().block_on(async {
        let agent = Agent::start(Duration::ZERO);
        // A media server on loopback without TLS: `admin create-business` takes wss:// only, so
        // the row is written by hand (CP112 would name it in production).
        cluster.pg.execute(&format!(
            "UPDATE businesses SET media_stream_url = '{}/echo' WHERE phone_number = '{NUMBER}'",
            agent.base
        ));
        let sid = call_sid(77);
        let answer = cluster.send_webhook(&sid).unwrap();
        assert_eq!(answer.status, 200, "{}", answer.body);
        let socket_url = format!(
            "{}/ws/twilio/media",
            cluster.nginx.url.replacen("https://", "wss://", 1)
        );
        assert!(
            answer.body.contains(&format!("<Stream url=\"{socket_url}\"")),
            "{}",
            answer.body
        );
        let signature = common::sign(TOKEN, &socket_url, &[]);
        let client = websocket_client(&cluster.nginx.ca);
        let mut twilio = TwilioStream::open_with(&client, &socket_url, Some(&signature), &sid)
            .await
            .unwrap();
        assert!(twilio.start(&sid, 1).await);
        assert!(twilio.speak(50).await);
        assert!(twilio.mark("said-hello").await);
        let (mut frames, mut marks) = (Vec::new(), 0);
        while frames.len() < 50 || marks == 0 {
            let Some(Got::Text(text)) = twilio.next(Duration::from_secs(10)).await else {
                panic!("the relay stopped after {} echoes", frames.len());
            };
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            match v["event"].as_str() {
                Some("media") => frames.push(frame_of(v["media"]["payload"].as_str().unwrap()).unwrap()),
                Some("mark") => marks += 1,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(frames, (0..50).collect::<Vec<u32>>(), "in order, through nginx");
        assert!(twilio.stop().await);
        assert_eq!(
            twilio.until_closed(Duration::from_secs(10)).await.1,
            Some(Got::Closed(Some(1000)))
        );
        agent.stop().await;
    });
    let env = cluster.env(0);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let sid = call_sid(77);
    let mut trace = String::new();
    wait_until(
        || {
            trace = cluster.sandboxes[0].run(Path::new(BIN), &["trace", &sid], &env).stdout;
            trace.contains("reason=stopped")
        },
        "the stream's stop in the call's timeline",
    );
    for step in [
        "start stream_sid=",
        "agent_connected ms=",
        "stop frames_in=54 frames_out=51 dropped=0",
    ] {
        assert!(trace.contains(step), "{step} in:\n{trace}");
    }
    let verdict = trace
        .lines()
        .find(|l| l.trim_start().starts_with("media stream"))
        .unwrap_or_default();
    assert!(verdict.contains(" relayed (agent ms="), "{trace}");
}
