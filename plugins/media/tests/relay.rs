//! The relay end to end, over real sockets: the permissions, twilio and media plugins mounted as
//! the host mounts them (on SQLite), served on a loopback port; a fake Twilio places the call
//! through the signed webhook and opens the stream as Twilio does; fake agents echo, read slowly,
//! refuse, close mid-call or never answer.

#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use actix_web::HttpServer;
use callplane_plugin_api::Settings;
use callplane_plugin_api::storage::Db;
use callplane_plugin_api::testing::TestHost;
use callplane_plugin_media::fake::{Agent, CLOSED, Got, TwilioStream, frame_of, silent_agent};
use callplane_plugin_permissions::Store;
use callplane_plugin_twilio::signature;
use callplane_plugin_twilio::trace::{self, CallId, Viewer};

const TOKEN: &str = "relay-test-token";
const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";

/// Every log line of the test process (the relay runs on the server's worker threads).
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || Capture(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        buffer
    })
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The log lines that mention `call_sid`.
fn lines_of(call_sid: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
    text.lines()
        .filter(|l| l.contains(call_sid))
        .map(str::to_owned)
        .collect()
}

struct Relay {
    base: String,
    db: Db,
    host: Arc<TestHost>,
    _dir: tempfile::TempDir,
    handle: actix_web::dev::ServerHandle,
    agent: Agent,
    /// Business ids by agent path (`/echo`, `/slow`, …), each with its own number.
    businesses: Vec<(String, i64, String)>,
    next_call: std::cell::Cell<u32>,
}

impl Relay {
    fn business(&self, path: &str) -> (i64, &str) {
        let (_, id, number) = self.businesses.iter().find(|(p, _, _)| p == path).unwrap();
        (*id, number)
    }

    fn socket_url(&self) -> String {
        format!("{}/ws/twilio/media", self.base.replacen("http://", "ws://", 1))
    }

    fn socket_signature(&self) -> String {
        signature::compute(TOKEN, &self.socket_url(), std::iter::empty::<(&str, &str)>())
    }

    fn new_call_sid(&self) -> String {
        let n = self.next_call.get();
        self.next_call.set(n + 1);
        format!("CA{n:032x}")
    }

    /// Places a call to the business of `agent_path` through the signed webhook; returns the
    /// CallSid and the TwiML.
    async fn call(&self, agent_path: &str) -> (String, String) {
        let call_sid = self.new_call_sid();
        let (_, number) = self.business(agent_path);
        let params = [
            ("CallSid", call_sid.as_str()),
            ("From", "+15005550006"),
            ("To", number),
            ("CallStatus", "ringing"),
            ("Direction", "inbound"),
        ];
        let url = format!("{}/webhook/incoming_call", self.base);
        let signature = signature::compute(TOKEN, &url, params);
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        let mut res = awc::Client::new()
            .post(&url)
            .insert_header(("x-twilio-signature", signature))
            .content_type("application/x-www-form-urlencoded")
            .send_body(body)
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let twiml = String::from_utf8(res.body().await.unwrap().to_vec()).unwrap();
        (call_sid, twiml)
    }

    /// A started stream of `call_sid` for business `business_id`.
    async fn stream(&self, call_sid: &str, business_id: i64) -> TwilioStream {
        let mut stream = TwilioStream::open(&self.socket_url(), Some(&self.socket_signature()), call_sid)
            .await
            .unwrap();
        assert!(stream.start(call_sid, business_id).await);
        stream
    }

    async fn trace(&self, call_sid: &str) -> trace::Trace {
        trace::load(&self.db, &CallId::Sid(call_sid.to_owned()), Viewer::Operator, None)
            .await
            .unwrap()
            .unwrap()
    }

    /// The trace once its stream hop has a `step` (notes are written in the background).
    async fn trace_with(&self, call_sid: &str, step: &str) -> trace::Trace {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let trace = self.trace(call_sid).await;
            if trace
                .timeline
                .iter()
                .any(|e| e.source == "stream" && e.what.starts_with(step))
            {
                return trace;
            }
            assert!(Instant::now() < deadline, "no {step} in {:#?}", trace.timeline);
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What the agent at `path` received, once it received a `stop` (or after 10 s): Twilio's
    /// socket is closed before the agent's last messages are flushed.
    async fn agent_until_stop(&self, path: &str) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let received = self.agent.received(path);
            if events(&received).iter().any(|e| e == "stop") || Instant::now() > deadline {
                return received;
            }
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(self) {
        self.handle.stop(false).await;
        self.agent.stop().await;
    }
}

const AGENT_PATHS: [&str; 4] = ["/echo", "/slow", "/close", "/refuse"];

async fn relay_with(media_keys: &[(&str, &str)], slow_for: Duration) -> Relay {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let db = Db::connect_lazy(&format!("sqlite://{}/relay.db", dir.path().display())).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let mut settings = Settings {
        public_base_url: base.clone(),
        instance_id: "relay-test".to_owned(),
        ..Settings::default()
    };
    settings
        .set("twilio", "spool_dir", dir.path().join("spool").display().to_string())
        .set("twilio", "auth_token", TOKEN)
        .set("twilio", "account_sid", ACCOUNT)
        .set("media", "connect_timeout_ms", "500")
        .set("media", "idle_timeout_secs", "2");
    for (key, value) in media_keys {
        settings.set("media", key, *value);
    }
    let host = Arc::new(
        TestHost::new(
            settings,
            db.clone(),
            &[
                &callplane_plugin_permissions::PLUGIN,
                &callplane_plugin_twilio::PLUGIN,
                &callplane_plugin_media::PLUGIN,
            ],
        )
        .await,
    );
    let agent = Agent::start(slow_for);
    let store = Store::new(db.clone());
    let mut businesses = Vec::new();
    let mut targets: Vec<(String, String)> = AGENT_PATHS
        .iter()
        .map(|p| ((*p).to_owned(), format!("{}{p}", agent.base)))
        .collect();
    targets.push(("/silent".to_owned(), silent_agent()));
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    targets.push((
        "/unreachable".to_owned(),
        format!("ws://{}/nobody", closed.local_addr().unwrap()),
    ));
    drop(closed);
    for (i, (path, url)) in targets.into_iter().enumerate() {
        let number = format!("+1555000{:04}", i);
        let id = store
            .create_business(&format!("B{i}"), &number, "hello", Some(&url), 1)
            .await
            .unwrap();
        businesses.push((path, id, number));
    }
    let app_host = host.clone();
    let server = HttpServer::new(move || app_host.app())
        .workers(2)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    Relay {
        base,
        db,
        host,
        _dir: dir,
        handle,
        agent,
        businesses,
        next_call: std::cell::Cell::new(1),
    }
}

async fn relay() -> Relay {
    relay_with(&[], Duration::ZERO).await
}

fn events(texts: &[String]) -> Vec<String> {
    texts
        .iter()
        .filter(|t| *t != CLOSED)
        .map(|t| {
            serde_json::from_str::<serde_json::Value>(t).unwrap()["event"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// Whether the agent at `path` saw its socket end within `wait`.
async fn agent_closed(relay: &Relay, path: &str, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if relay.agent.received(path).last().is_some_and(|t| t == CLOSED) {
            return true;
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[actix_rt::test]
async fn a_silent_twilio_socket_is_closed_and_a_vanished_one_takes_the_agents_along() {
    let relay = relay().await;
    let (business, _) = relay.business("/echo");
    // Silent after start: closed after the idle timeout (2 s here), and the agent's socket too.
    let (call_sid, _) = relay.call("/echo").await;
    let mut twilio = relay.stream(&call_sid, business).await;
    let (_, closed, took) = twilio.until_closed(Duration::from_secs(5)).await;
    assert_eq!(closed, Some(Got::Closed(Some(1000))));
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert!(agent_closed(&relay, "/echo", Duration::from_secs(5)).await);
    let trace = relay.trace_with(&call_sid, "stop").await;
    assert!(
        trace.timeline.iter().any(|e| e.what.contains("reason=idle")),
        "{:#?}",
        trace.timeline
    );
    // Twilio's side vanishes mid-stream: the agent's socket is closed.
    relay.agent.received.lock().unwrap().clear();
    let (call_sid, _) = relay.call("/echo").await;
    let mut twilio = relay.stream(&call_sid, business).await;
    assert!(twilio.speak(5).await);
    drop(twilio);
    assert!(
        agent_closed(&relay, "/echo", Duration::from_secs(5)).await,
        "the agent's socket ends with Twilio's"
    );
    let trace = relay.trace_with(&call_sid, "stop").await;
    assert!(
        trace.timeline.iter().any(|e| e.what.contains("reason=twilio_gone")),
        "{:#?}",
        trace.timeline
    );
    relay.stop().await;
}

#[actix_rt::test]
async fn a_relayed_call_flows_both_ways_in_order_and_is_traced() {
    let relay = relay().await;
    let (business, _) = relay.business("/echo");
    let (call_sid, twiml) = relay.call("/echo").await;
    let stream_url = relay.socket_url();
    assert!(
        twiml.contains(&format!(
            r#"<Stream url="{stream_url}" statusCallback="{}/webhook/stream_status""#,
            relay.base
        )),
        "{twiml}"
    );
    assert!(
        !twiml.contains("/echo"),
        "the media server's URL is not Twilio's business: {twiml}"
    );
    assert!(
        twiml.contains("</Connect><Say>") && twiml.ends_with("<Hangup/></Response>"),
        "{twiml}"
    );

    let mut twilio = relay.stream(&call_sid, business).await;
    let speaking = async {
        assert!(twilio.speak(50).await);
        assert!(twilio.mark("greeting-done").await);
    };
    speaking.await;
    // Echoes and the mark come back in order.
    let mut frames = Vec::new();
    let mut marks = Vec::new();
    while frames.len() < 50 || marks.is_empty() {
        let Some(Got::Text(text)) = twilio.next(Duration::from_secs(5)).await else {
            panic!("the relay stopped early after {} frames", frames.len());
        };
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        match v["event"].as_str().unwrap() {
            "media" => frames.push(frame_of(v["media"]["payload"].as_str().unwrap()).unwrap()),
            "mark" => marks.push(v["mark"]["name"].as_str().unwrap().to_owned()),
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(frames, (0..50).collect::<Vec<_>>(), "every frame, in order");
    assert_eq!(marks, ["greeting-done"], "the mark round trip");
    assert!(twilio.stop().await);
    let (_, closed, took) = twilio.until_closed(Duration::from_secs(5)).await;
    assert_eq!(
        closed,
        Some(Got::Closed(Some(1000))),
        "stop ends Twilio's socket cleanly"
    );
    assert!(took < Duration::from_secs(2), "{took:?}");

    let received = relay.agent_until_stop("/echo").await;
    let kinds = events(&received);
    assert_eq!(kinds[..2], ["connected", "start"]);
    assert_eq!(kinds.iter().filter(|k| *k == "media").count(), 50);
    assert_eq!(kinds[kinds.len() - 2..], ["mark", "stop"], "stop last, after the mark");

    let trace = relay.trace_with(&call_sid, "stop").await;
    let hop: Vec<&str> = trace
        .timeline
        .iter()
        .filter(|e| e.source == "stream")
        .map(|e| e.what.split(' ').next().unwrap())
        .collect();
    assert_eq!(hop, ["start", "agent_connected", "stop"], "{:#?}", trace.timeline);
    let stop = trace.timeline.iter().find(|e| e.what.starts_with("stop")).unwrap();
    assert!(
        stop.what.contains("frames_in=54 frames_out=51 dropped=0") && stop.what.contains("reason=stopped"),
        "{}",
        stop.what
    );
    let verdict = trace.verdict.iter().find(|v| v.question == "media stream").unwrap();
    assert!(verdict.answer.starts_with("relayed (agent ms="), "{}", verdict.answer);
    eprintln!("{}", trace.text());

    let lines = lines_of(&call_sid);
    for expected in [
        "[TWILIO][STREAM] start stream_sid=MZ",
        "[TWILIO][STREAM] agent_connected ms=",
        "[TWILIO][STREAM] stop frames_in=54 frames_out=51 dropped=0",
    ] {
        assert!(lines.iter().any(|l| l.contains(expected)), "{expected} in {lines:#?}");
    }
    let text = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
    assert!(
        text.contains("[TWILIO][STREAM] hit path=/ws/twilio/media call_sid=- business_id=- signature_present=true"),
        "the hit line of the upgrade"
    );
    let metrics = relay.host.metrics();
    for series in [
        "callplane_media_streams_closed_total{outcome=\"stopped\"} 1",
        "callplane_media_frames_total{direction=\"to_twilio\",fate=\"relayed\"} 51",
        "callplane_media_streams_active 0",
    ] {
        assert!(metrics.contains(series), "{series} in {metrics}");
    }
    relay.stop().await;
}

#[actix_rt::test]
async fn forged_missing_and_foreign_streams_are_refused_and_nothing_is_relayed() {
    let relay = relay().await;
    let (business, _) = relay.business("/echo");
    let (call_sid, _) = relay.call("/echo").await;
    for signature in [None, Some("AAAAAAAAAAAAAAAAAAAAAAAAAAA=")] {
        let refused = TwilioStream::open(&relay.socket_url(), signature, &call_sid).await;
        match refused {
            Err(awc::error::WsClientError::InvalidResponseStatus(status)) => assert_eq!(status, 403),
            other => panic!("expected 403 before the upgrade, got {:?}", other.map(|_| ())),
        }
    }
    // Signed over the https spelling of the URL (what a server behind TLS sees): refused too.
    let https = signature::compute(
        TOKEN,
        &format!("{}/ws/twilio/media", relay.base),
        std::iter::empty::<(&str, &str)>(),
    );
    assert!(
        TwilioStream::open(&relay.socket_url(), Some(&https), &call_sid)
            .await
            .is_err()
    );

    // Signed, but `start` names the call under another business: closed with the policy code.
    let (other_business, _) = relay.business("/slow");
    let mut twilio = relay.stream(&call_sid, other_business).await;
    let (texts, closed, _) = twilio.until_closed(Duration::from_secs(5)).await;
    assert!(texts.is_empty());
    assert_eq!(closed, Some(Got::Closed(Some(1008))));
    // A call nobody answered: closed too.
    let mut twilio = relay.stream("CA99999999999999999999999999999999", business).await;
    assert_eq!(
        twilio.until_closed(Duration::from_secs(5)).await.1,
        Some(Got::Closed(Some(1008)))
    );
    // The call sid parameter of our TwiML must be the stream's own call.
    let mut twilio = TwilioStream::open(&relay.socket_url(), Some(&relay.socket_signature()), &call_sid)
        .await
        .unwrap();
    assert!(twilio.start("CA00000000000000000000000000000042", business).await);
    assert_eq!(
        twilio.until_closed(Duration::from_secs(5)).await.1,
        Some(Got::Closed(Some(1008)))
    );

    actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    assert!(relay.agent.received("/echo").is_empty(), "nothing reached the agent");
    assert!(relay.agent.received("/slow").is_empty());
    let metrics = relay.host.metrics();
    assert!(
        metrics.contains("callplane_media_streams_closed_total{outcome=\"refused\"} 3"),
        "{metrics}"
    );
    let text = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
    assert!(
        text.contains("signature=missing") || text.contains("signature=invalid"),
        "refusals are traced"
    );
    relay.stop().await;
}

#[actix_rt::test]
async fn each_agent_failure_closes_twilios_socket_within_the_bound_and_names_the_cause() {
    let relay = relay().await;
    for (path, cause) in [
        ("/refuse", "refused the socket: HTTP 403"),
        ("/silent", "no answer within 500 ms"),
        ("/unreachable", "err="),
    ] {
        let (business, _) = relay.business(path);
        let (call_sid, _) = relay.call(path).await;
        let mut twilio = relay.stream(&call_sid, business).await;
        let (_, closed, took) = twilio.until_closed(Duration::from_secs(5)).await;
        assert_eq!(
            closed,
            Some(Got::Closed(Some(1000))),
            "{path}: closed cleanly, so the fallback plays"
        );
        assert!(
            took < Duration::from_millis(1500),
            "{path}: within the 500 ms bound, took {took:?}"
        );
        let trace = relay.trace_with(&call_sid, "agent_failed").await;
        let failed = trace
            .timeline
            .iter()
            .find(|e| e.what.starts_with("agent_failed"))
            .unwrap();
        assert!(failed.what.contains(cause), "{path}: {}", failed.what);
        let verdict = trace.verdict.iter().find(|v| v.question == "media stream").unwrap();
        assert!(
            verdict.answer.contains("the caller heard the fallback message"),
            "{}",
            verdict.answer
        );
        assert!(
            trace.hints.iter().any(|h| h.contains("media server failed")),
            "{:?}",
            trace.hints
        );
        assert!(
            lines_of(&call_sid)
                .iter()
                .any(|l| l.contains("[TWILIO][STREAM] agent_failed err=")),
            "{path}"
        );
        if path == "/refuse" {
            eprintln!("{}\n{}", lines_of(&call_sid).join("\n"), trace.text());
        }
    }
    // Closed mid-call: Twilio's socket is closed too, and the cause is in the timeline.
    let (business, _) = relay.business("/close");
    let (call_sid, _) = relay.call("/close").await;
    let mut twilio = relay.stream(&call_sid, business).await;
    let speaking = twilio.speak(20).await;
    let (_, closed, _) = twilio.until_closed(Duration::from_secs(5)).await;
    assert!(speaking || closed.is_some());
    assert_eq!(closed, Some(Got::Closed(Some(1000))));
    let trace = relay.trace_with(&call_sid, "stop").await;
    let stop = trace.timeline.iter().find(|e| e.what.starts_with("stop")).unwrap();
    assert!(stop.what.contains("reason=agent_closed"), "{}", stop.what);
    assert!(
        relay
            .host
            .metrics()
            .contains("callplane_media_streams_closed_total{outcome=\"agent_failed\"} 3"),
        "{}",
        relay.host.metrics()
    );
    relay.stop().await;
}

/// The resident set of this process, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Frames the slow-agent test sends as fast as the socket takes them: 10 minutes of audio, about
/// 10 MB, more than the kernel's socket buffers hold (Linux grows a sender's to 4 MiB), so the
/// relay's bound is what is tested, not the kernel's.
const BURST: usize = 30_000;

#[actix_rt::test]
async fn a_slow_agent_costs_dropped_frames_not_memory_and_never_a_mark_or_the_stop() {
    let relay = relay_with(
        &[("queue_frames", "50"), ("idle_timeout_secs", "20")],
        // Asleep well past the burst (about 1.5 s here), even on a loaded machine.
        Duration::from_secs(6),
    )
    .await;
    let (business, _) = relay.business("/slow");
    let (call_sid, _) = relay.call("/slow").await;
    let mut twilio = relay.stream(&call_sid, business).await;
    let before = rss_kib();
    // A burst while the agent reads nothing, a mark every 10,000 frames, then stop.
    for i in 0..BURST {
        assert!(twilio.media().await);
        if i % 10_000 == 9_999 {
            assert!(twilio.mark(&format!("m{i}")).await);
        }
    }
    assert!(twilio.stop().await);
    let grown = rss_kib().saturating_sub(before);
    let (_, closed, _) = twilio.until_closed(Duration::from_secs(10)).await;
    assert_eq!(closed, Some(Got::Closed(Some(1000))));
    let trace = relay.trace_with(&call_sid, "stop").await;
    // The agent reads what waited for it once it wakes up, the stop last.
    let received = relay.agent_until_stop("/slow").await;
    let kinds = events(&received);
    assert_eq!(
        kinds.iter().filter(|k| *k == "mark").count(),
        3,
        "no mark dropped: {} received; {:#?}",
        kinds.len(),
        trace.timeline
    );
    assert_eq!(kinds.last().map(String::as_str), Some("stop"), "the stop arrives, last");
    let media = kinds.iter().filter(|k| *k == "media").count();
    assert!(
        media < BURST,
        "the slow agent got {media} of {BURST} frames: none was dropped"
    );
    let stop = trace.timeline.iter().find(|e| e.what.starts_with("stop")).unwrap();
    let dropped: usize = stop
        .what
        .split_once("dropped=")
        .and_then(|(_, rest)| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert_eq!(
        dropped + media,
        BURST,
        "every frame is relayed or counted as dropped: {}",
        stop.what
    );
    assert!(
        grown < 16 * 1024,
        "memory grew by {grown} KiB while the agent did not read"
    );
    let mut report = std::io::stderr();
    let _ = writeln!(
        report,
        "slow agent: {media} of {BURST} frames relayed, {dropped} dropped, RSS +{grown} KiB"
    );
    relay.stop().await;
}

#[actix_rt::test]
async fn two_hundred_concurrent_streams_on_one_instance() {
    let relay = relay().await;
    let (business, _) = relay.business("/echo");
    let mut calls = Vec::new();
    for _ in 0..200 {
        calls.push(relay.call("/echo").await.0);
    }
    let started = Instant::now();
    let streams = calls.iter().map(|call_sid| {
        let relay = &relay;
        async move { twilio_speaks(&mut relay.stream(call_sid, business).await).await }
    });
    let results = futures_util::future::join_all(streams).await;
    assert!(results.iter().all(|echoes| *echoes == 50), "{results:?}");
    eprintln!("200 streams × 50 frames relayed and echoed in {:?}", started.elapsed());
    // Each stream is counted once its agent has answered the close too.
    let deadline = Instant::now() + Duration::from_secs(10);
    let stopped = "callplane_media_streams_closed_total{outcome=\"stopped\"} 200";
    while !relay.host.metrics().contains(stopped) && Instant::now() < deadline {
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = relay.host.metrics();
    assert!(metrics.contains(stopped), "{metrics}");
    assert!(metrics.contains("callplane_media_streams_active 0"), "{metrics}");
    relay.stop().await;
}

/// Speaks 50 frames at 50 a second, counts the echoes, stops; the socket must then close cleanly.
async fn twilio_speaks(twilio: &mut TwilioStream) -> usize {
    assert!(twilio.speak(50).await);
    let mut echoes = 0;
    while echoes < 50 {
        match twilio.next(Duration::from_secs(15)).await {
            Some(Got::Text(_)) => echoes += 1,
            _ => break,
        }
    }
    assert!(twilio.stop().await);
    let (_, closed, _) = twilio.until_closed(Duration::from_secs(15)).await;
    assert_eq!(closed, Some(Got::Closed(Some(1000))));
    echoes
}

/// Posts Twilio's stream event for `call_sid`, signed with `signature` (computed when `None`).
async fn stream_event(relay: &Relay, params: &[(&str, &str)], signature: Option<&str>) -> u16 {
    let url = format!("{}/webhook/stream_status", relay.base);
    let computed = signature::compute(TOKEN, &url, params.iter().copied());
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    awc::Client::new()
        .post(&url)
        .insert_header(("x-twilio-signature", signature.unwrap_or(&computed)))
        .content_type("application/x-www-form-urlencoded")
        .send_body(body)
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[actix_rt::test]
async fn twilios_stream_errors_land_in_the_timeline() {
    let relay = relay().await;
    let (call_sid, _) = relay.call("/echo").await;
    let event = [
        ("AccountSid", ACCOUNT),
        ("CallSid", call_sid.as_str()),
        ("StreamSid", "MZ00000000000000000000000000000007"),
        ("StreamName", "MZ00000000000000000000000000000007"),
        ("StreamEvent", "stream-error"),
        ("StreamError", "31920 Stream - WebSocket - Handshake Error"),
        ("Timestamp", "2026-12-03T09:00:00.000Z"),
    ];
    assert_eq!(
        stream_event(&relay, &event, Some("AAAAAAAAAAAAAAAAAAAAAAAAAAA=")).await,
        403,
        "forged"
    );
    let no_call = [("StreamEvent", "stream-started")];
    assert_eq!(stream_event(&relay, &no_call, None).await, 400, "no CallSid");
    assert_eq!(stream_event(&relay, &event, None).await, 200);
    let trace = relay.trace_with(&call_sid, "stream-error").await;
    let noted = trace
        .timeline
        .iter()
        .find(|e| e.what.starts_with("stream-error"))
        .unwrap();
    assert!(
        noted
            .what
            .contains("error=\"31920 Stream - WebSocket - Handshake Error\""),
        "{}",
        noted.what
    );
    let verdict = trace.verdict.iter().find(|v| v.question == "media stream").unwrap();
    assert!(verdict.answer.contains("Twilio reported"), "{}", verdict.answer);
    assert!(
        lines_of(&call_sid)
            .iter()
            .any(|l| l.contains("[TWILIO][STREAM] event=stream-error")),
        "{:?}",
        lines_of(&call_sid)
    );
    relay.stop().await;
}
