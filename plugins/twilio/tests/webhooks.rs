//! The twilio plugin mounted exactly as the host mounts it, together with the real permissions
//! plugin (which it requires and which guards the calls API), on a fresh SQLite database.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::{StatusCode, header};
use actix_web::test::{self as atest, TestRequest};
use actix_web::{HttpRequest, HttpResponse, HttpServer, web};
use callplane_plugin_api::Settings;
use callplane_plugin_api::storage::{Db, sqlx};
use callplane_plugin_api::testing::TestHost;
use callplane_plugin_permissions::{Store, password};
use callplane_plugin_twilio::cli::Filter;
use callplane_plugin_twilio::signature;
use serde_json::{Value, json};

const BASE: &str = "https://voice.example.com";
const TOKEN: &str = "test-auth-token";
const BUSINESS_NUMBER: &str = "+972501234567";
const STREAM_NUMBER: &str = "+972509999999";
const SID: &str = "CA0123456789abcdef0123456789abcdef";

struct Fixture {
    dir: tempfile::TempDir,
    db: Db,
    host: TestHost,
}

async fn fixture() -> Fixture {
    fixture_with_api("http://127.0.0.1:9").await
}

const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";

async fn fixture_with_api(api_base: &str) -> Fixture {
    fixture_with(&[("api_base", api_base)]).await
}

/// A fixture whose twilio plugin has `keys` set beyond the test defaults.
async fn fixture_with(keys: &[(&str, &str)]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::connect_lazy(&format!("sqlite://{}/t.db", dir.path().display())).unwrap();
    fixture_in(dir, db, keys).await
}

/// A fixture on `db` whose spool lives in `dir` (and may be there already).
async fn fixture_in(dir: tempfile::TempDir, db: Db, keys: &[(&str, &str)]) -> Fixture {
    let mut settings = Settings {
        public_base_url: BASE.to_owned(),
        ..Settings::default()
    };
    settings
        .set("twilio", "spool_dir", dir.path().join("spool").display().to_string())
        .set("twilio", "auth_token", TOKEN)
        .set("twilio", "api_base", "http://127.0.0.1:9")
        .set("twilio", "account_sid", ACCOUNT);
    for (key, value) in keys {
        settings.set("twilio", key, *value);
    }
    let host = TestHost::new(
        settings,
        db.clone(),
        &[&callplane_plugin_permissions::PLUGIN, &callplane_plugin_twilio::PLUGIN],
    )
    .await;
    let store = Store::new(db.clone());
    let a = store
        .create_business("Dental", BUSINESS_NUMBER, "Welcome to Dental & Co", None, 1)
        .await
        .unwrap();
    let b = store
        .create_business(
            "Streamer",
            STREAM_NUMBER,
            "hi",
            Some("wss://media.example.com/s?x=1&y=2"),
            1,
        )
        .await
        .unwrap();
    let hash = password::hash("correct horse battery");
    store
        .create_user(a, "agent@a.example", &hash, "agent", 1)
        .await
        .unwrap();
    store
        .create_user(a, "viewer@a.example", &hash, "viewer", 1)
        .await
        .unwrap();
    store
        .create_user(b, "agent@b.example", &hash, "agent", 1)
        .await
        .unwrap();
    Fixture { dir, db, host }
}

macro_rules! app {
    ($f:expr) => {
        atest::init_service($f.host.app()).await
    };
}

fn form(params: &[(&str, &str)]) -> Vec<(String, String)> {
    params.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn inbound(sid: &str, to: &str) -> Vec<(String, String)> {
    form(&[
        ("CallSid", sid),
        ("From", "+15005550006"),
        ("To", to),
        ("CallStatus", "ringing"),
        ("Direction", "inbound"),
    ])
}

fn status(sid: &str, status: &str, sequence: &str) -> Vec<(String, String)> {
    form(&[
        ("CallSid", sid),
        ("From", "+15005550006"),
        ("To", BUSINESS_NUMBER),
        ("CallStatus", status),
        ("SequenceNumber", sequence),
        ("Direction", "inbound"),
    ])
}

/// A webhook as Twilio sends it: form body, signed over the public URL with the auth token.
fn signed(path_and_query: &str, params: &[(String, String)]) -> TestRequest {
    let signature = signature::compute(TOKEN, &format!("{BASE}{path_and_query}"), params);
    unsigned(path_and_query, params).insert_header(("x-twilio-signature", signature))
}

fn unsigned(path_and_query: &str, params: &[(String, String)]) -> TestRequest {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params.iter())
        .finish();
    TestRequest::post()
        .uri(path_and_query)
        .peer_addr("54.172.60.1:443".parse().unwrap())
        .insert_header((header::CONTENT_TYPE, "application/x-www-form-urlencoded"))
        .set_payload(body)
}

async fn text<B: actix_web::body::MessageBody>(res: ServiceResponse<B>) -> (StatusCode, String, String) {
    let status = res.status();
    let ctype = res
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = actix_web::body::to_bytes(res.into_body()).await.ok().unwrap();
    (status, ctype, String::from_utf8_lossy(&bytes).into_owned())
}

async fn count(db: &Db, sql: &str) -> i64 {
    db.run(|pool| sqlx::query_as::<_, (i64,)>(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(pool))
        .await
        .unwrap()
        .0
}

fn spool_lines(f: &Fixture) -> usize {
    std::fs::read(f.dir.path().join("spool").join(callplane_plugin_twilio::SPOOL_FILE))
        .unwrap_or_default()
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .count()
}

/// Runs the replay task the host would run until the spool is empty.
async fn drain_spool(f: &Fixture) {
    let task = f.host.task("spool-replay").unwrap();
    let replaying = actix_web::rt::spawn(task());
    for _ in 0..100 {
        if spool_lines(f) == 0 {
            break;
        }
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    replaying.abort();
    assert_eq!(spool_lines(f), 0, "the spool drained");
}

#[actix_rt::test]
async fn a_signed_inbound_call_is_answered_and_recorded() {
    let f = fixture().await;
    let app = app!(f);
    let (status, ctype, body) = text(
        app.call(signed("/webhook/incoming_call", &inbound(SID, BUSINESS_NUMBER)).to_request())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ctype, "text/xml");
    assert!(body.contains("<Say>Welcome to Dental &amp; Co</Say>"), "{body}");
    let (business, direction, state): (Option<i64>, String, String) =
        f.db.run(|pool| {
            sqlx::query_as("SELECT business_id, direction, status FROM calls WHERE call_sid = $1")
                .bind(SID)
                .fetch_one(pool)
        })
        .await
        .unwrap();
    assert_eq!(
        (business, direction.as_str(), state.as_str()),
        (Some(1), "inbound", "ringing")
    );

    let streamed = "CA11111111111111111111111111111111";
    let (_, _, body) = text(
        app.call(signed("/webhook/incoming_call", &inbound(streamed, STREAM_NUMBER)).to_request())
            .await
            .unwrap(),
    )
    .await;
    assert!(
        body.contains(r#"<Connect><Stream url="wss://media.example.com/s?x=1&amp;y=2">"#),
        "{body}"
    );
    assert!(
        body.contains(&format!(
            r#"<Parameter name="call_sid" value="{streamed}"/><Parameter name="business_id" value="2"/>"#
        )),
        "{body}"
    );
}

#[actix_rt::test]
async fn bad_signatures_are_403_and_write_nothing() {
    let f = fixture().await;
    let app = app!(f);
    let params = inbound(SID, BUSINESS_NUMBER);
    let good = signature::compute(TOKEN, &format!("{BASE}/webhook/incoming_call"), &params);
    let mut tampered = params.clone();
    tampered[1].1 = "+19999999999".to_owned();
    let cases: Vec<(&str, TestRequest)> = vec![
        ("missing", unsigned("/webhook/incoming_call", &params)),
        (
            "garbage",
            unsigned("/webhook/incoming_call", &params).insert_header(("x-twilio-signature", "garbage")),
        ),
        (
            "tampered",
            unsigned("/webhook/incoming_call", &tampered).insert_header(("x-twilio-signature", good.clone())),
        ),
        (
            "foreign token",
            unsigned("/webhook/incoming_call", &params).insert_header((
                "x-twilio-signature",
                signature::compute("other-token", &format!("{BASE}/webhook/incoming_call"), &params),
            )),
        ),
        (
            "other path",
            unsigned("/webhook/incoming_call", &params).insert_header((
                "x-twilio-signature",
                signature::compute(TOKEN, &format!("{BASE}/webhook/call_status"), &params),
            )),
        ),
        (
            "http instead of https",
            unsigned("/webhook/incoming_call", &params).insert_header((
                "x-twilio-signature",
                signature::compute(TOKEN, "http://voice.example.com/webhook/incoming_call", &params),
            )),
        ),
        (
            "forged host",
            unsigned("/webhook/incoming_call", &params)
                .insert_header(("host", "evil.example"))
                .insert_header(("x-forwarded-host", "evil example"))
                .insert_header((
                    "x-twilio-signature",
                    signature::compute(TOKEN, "https://evil.example/webhook/incoming_call", &params),
                )),
        ),
        (
            "duplicate header",
            unsigned("/webhook/incoming_call", &params)
                .append_header(("x-twilio-signature", good.clone()))
                .append_header(("x-twilio-signature", good.clone())),
        ),
        (
            "signed without the query",
            unsigned("/webhook/outbound_call?lead_id=1&business_id=1", &params).insert_header((
                "x-twilio-signature",
                signature::compute(TOKEN, &format!("{BASE}/webhook/outbound_call"), &params),
            )),
        ),
    ];
    for (name, req) in cases {
        let (status, ctype, body) = text(app.call(req.to_request()).await.unwrap()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{name}");
        assert_eq!(ctype, "text/xml", "{name}");
        assert!(body.ends_with("<Response/>"), "{name}: {body}");
    }
    assert_eq!(count(&f.db, "SELECT COUNT(*) FROM calls").await, 0);
    assert_eq!(count(&f.db, "SELECT COUNT(*) FROM call_events").await, 0);
    assert_eq!(spool_lines(&f), 0);
    // A forged Host with the right signature for the configured URL is fine: the URL never comes from Host.
    let res = app
        .call(
            signed("/webhook/incoming_call", &params)
                .insert_header(("host", "evil.example"))
                .to_request(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[actix_rt::test]
async fn retries_are_recorded_once_and_late_statuses_never_move_a_call_back() {
    let f = fixture().await;
    let app = app!(f);
    for _ in 0..3 {
        let res = app
            .call(signed("/webhook/incoming_call", &inbound(SID, BUSINESS_NUMBER)).to_request())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    for (state, seq) in [
        ("completed", "3"),
        ("ringing", "1"),
        ("completed", "3"),
        ("in-progress", "2"),
    ] {
        let (code, _, body) = text(
            app.call(signed("/webhook/call_status", &status(SID, state, seq)).to_request())
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(code, StatusCode::OK);
        assert!(body.ends_with("<Response/>"));
    }
    let (state, last): (String, i64) =
        f.db.run(|pool| {
            sqlx::query_as("SELECT status, last_sequence FROM calls WHERE call_sid = $1")
                .bind(SID)
                .fetch_one(pool)
        })
        .await
        .unwrap();
    assert_eq!((state.as_str(), last), ("completed", 3));
    assert_eq!(count(&f.db, "SELECT COUNT(*) FROM calls").await, 1);
    assert_eq!(
        count(&f.db, "SELECT COUNT(*) FROM call_events").await,
        4,
        "1 incoming + sequences 3, 1, 2"
    );
}

#[actix_rt::test]
async fn an_unknown_number_gets_a_polite_hangup_and_a_record() {
    let f = fixture().await;
    let app = app!(f);
    let (status, _, body) = text(
        app.call(signed("/webhook/incoming_call", &inbound(SID, "+15550000000")).to_request())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains("not in service") && body.ends_with("<Hangup/></Response>"),
        "{body}"
    );
    let business: (Option<i64>,) =
        f.db.run(|pool| {
            sqlx::query_as("SELECT business_id FROM calls WHERE call_sid = $1")
                .bind(SID)
                .fetch_one(pool)
        })
        .await
        .unwrap();
    assert_eq!(business.0, None, "recorded with the tenant unknown");
}

#[actix_rt::test]
async fn malformed_webhooks_are_4xx_never_5xx() {
    let f = fixture().await;
    let app = app!(f);
    let no_sid = form(&[("From", "+1"), ("To", BUSINESS_NUMBER)]);
    let res = app
        .call(signed("/webhook/incoming_call", &no_sid).to_request())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let big: Vec<(String, String)> = (0..10_000).map(|i| (format!("P{i}"), "x".repeat(10))).collect();
    let res = app
        .call(signed("/webhook/incoming_call", &big).to_request())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let raw = TestRequest::post()
        .uri("/webhook/incoming_call")
        .insert_header((header::CONTENT_TYPE, "application/x-www-form-urlencoded"))
        .insert_header(("x-twilio-signature", "AAAAAAAAAAAAAAAAAAAAAAAAAAA="))
        .set_payload(&b"CallSid=%ZZ%\xff\xfe&To=%"[..])
        .to_request();
    assert_eq!(app.call(raw).await.unwrap().status(), StatusCode::BAD_REQUEST);
    let json = TestRequest::post()
        .uri("/webhook/incoming_call")
        .insert_header((header::CONTENT_TYPE, "application/json"))
        .insert_header((
            "x-twilio-signature",
            signature::compute(TOKEN, &format!("{BASE}/webhook/incoming_call"), &[] as &[(&str, &str)]),
        ))
        .set_payload(r#"{"CallSid":"CA1"}"#)
        .to_request();
    assert_eq!(
        app.call(json).await.unwrap().status(),
        StatusCode::FORBIDDEN,
        "JSON without bodySHA256"
    );
    assert_eq!(count(&f.db, "SELECT COUNT(*) FROM calls").await, 0);
}

/// Bodies Twilio never sends are refused even when the signature verifies over what a lenient
/// decoder makes of them: two raw bodies that decode alike are a parser differential.
#[actix_rt::test]
async fn bodies_twilio_never_sends_are_refused_even_when_signed() {
    let f = fixture().await;
    let app = app!(f);
    let sid = "CA0123456789abcdef0123456789abcdef";
    let url = format!("{BASE}/webhook/incoming_call");
    for (raw, content_type, expected) in [
        // Escapes that decode to invalid UTF-8, a bad escape, raw non-UTF-8 bytes.
        (
            format!("CallSid={sid}&To=%2B15550001111&From=%C3%28").into_bytes(),
            "application/x-www-form-urlencoded",
            400,
        ),
        (
            format!("CallSid={sid}&To=%2B15550001111&From=%G1").into_bytes(),
            "application/x-www-form-urlencoded",
            400,
        ),
        (
            [format!("CallSid={sid}&To=%2B15550001111&From=").as_bytes(), b"\xff"].concat(),
            "application/x-www-form-urlencoded",
            400,
        ),
        // A well-formed form body under another content type, or none.
        (
            format!("CallSid={sid}&To=%2B15550001111").into_bytes(),
            "text/plain",
            415,
        ),
        (format!("CallSid={sid}&To=%2B15550001111").into_bytes(), "", 415),
    ] {
        // Signed over the lenient decoding: what the signature check used to see.
        let lenient: Vec<(String, String)> = url::form_urlencoded::parse(&raw).into_owned().collect();
        let mut req = TestRequest::post()
            .uri("/webhook/incoming_call")
            .peer_addr("54.172.60.1:443".parse().unwrap())
            .insert_header(("x-twilio-signature", signature::compute(TOKEN, &url, &lenient)))
            .set_payload(raw.clone());
        if !content_type.is_empty() {
            req = req.insert_header((header::CONTENT_TYPE, content_type));
        }
        let (status, _, body) = text(app.call(req.to_request()).await.unwrap()).await;
        assert_eq!(
            status.as_u16(),
            expected,
            "{:?} as {content_type:?}: {body}",
            String::from_utf8_lossy(&raw)
        );
        assert_eq!(body, callplane_plugin_twilio::twiml::empty(), "an empty TwiML answer");
    }
    assert_eq!(count(&f.db, "SELECT COUNT(*) FROM calls").await, 0, "recorded nowhere");
    assert_eq!(count(&f.db, "SELECT COUNT(*) FROM call_events").await, 0);
}

/// A call that can be kept neither in the database nor in the spool (full) is never answered 200:
/// 503, so that Twilio retries it or turns to the fallback URL.
#[actix_rt::test]
async fn a_call_that_cannot_be_kept_is_answered_503_never_200() {
    let f = fixture_with(&[("spool_max_bytes", "2048")]).await;
    let app = app!(f);
    f.db.run(|pool| {
        sqlx::raw_sql("ALTER TABLE calls RENAME TO calls_away; ALTER TABLE call_events RENAME TO call_events_away")
            .execute(pool)
    })
    .await
    .unwrap();
    let mut statuses = Vec::new();
    for i in 0..10 {
        let res = app
            .call(
                signed(
                    "/webhook/incoming_call",
                    &inbound(&format!("CA{i:032x}"), BUSINESS_NUMBER),
                )
                .to_request(),
            )
            .await
            .unwrap();
        statuses.push(res.status().as_u16());
        if res.status() == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(res.headers().get(header::RETRY_AFTER).unwrap(), "5");
        }
    }
    let kept = statuses.iter().filter(|s| **s == 200).count();
    assert!(kept >= 1 && statuses[kept..].iter().all(|s| *s == 503), "{statuses:?}");
    assert_eq!(spool_lines(&f), kept, "every 200 is a spooled call, every 503 none");
    let spool = std::fs::read_to_string(f.dir.path().join("spool").join(callplane_plugin_twilio::SPOOL_FILE)).unwrap();
    assert!(spool.len() <= 2048 && spool.ends_with('\n'), "bounded, whole lines");
}

#[actix_rt::test]
async fn with_the_database_gone_calls_are_spooled_and_replayed_without_loss() {
    let f = fixture().await;
    let app = app!(f);
    let sid = |i: usize| format!("CA{i:032x}");
    let first = app
        .call(signed("/webhook/incoming_call", &inbound(&sid(0), BUSINESS_NUMBER)).to_request())
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    // The call tables disappear mid-stream: every write now fails.
    f.db.run(|pool| {
        sqlx::raw_sql("ALTER TABLE calls RENAME TO calls_away; ALTER TABLE call_events RENAME TO call_events_away")
            .execute(pool)
    })
    .await
    .unwrap();
    for i in 1..=20 {
        let (status, _, body) = text(
            app.call(signed("/webhook/incoming_call", &inbound(&sid(i), BUSINESS_NUMBER)).to_request())
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "webhooks still answer");
        assert!(
            body.contains("Welcome to Dental"),
            "the business is still known (cached)"
        );
        let res = app
            .call(signed("/webhook/call_status", &status_for(&sid(i))).to_request())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    assert_eq!(spool_lines(&f), 40);
    f.db.run(|pool| {
        sqlx::raw_sql("ALTER TABLE calls_away RENAME TO calls; ALTER TABLE call_events_away RENAME TO call_events")
            .execute(pool)
    })
    .await
    .unwrap();
    drain_spool(&f).await;
    assert_eq!(count(&f.db, "SELECT COUNT(*) FROM calls").await, 21, "zero calls lost");
    assert_eq!(
        count(&f.db, "SELECT COUNT(*) FROM call_events").await,
        41,
        "zero events lost"
    );
    // The replay wrote each call and both its events in one batch: every event is under the
    // call its own CallSid names (the writer takes a new call's row id straight from the insert).
    assert_eq!(
        count(
            &f.db,
            "SELECT COUNT(*) FROM call_events e JOIN calls c ON c.id = e.call_id
             WHERE e.payload LIKE '%[\"CallSid\",\"' || c.call_sid || '\"]%'"
        )
        .await,
        41,
        "every event under its own call"
    );
    assert_eq!(
        count(&f.db, "SELECT COUNT(*) FROM calls WHERE status = 'completed'").await,
        20
    );
}

#[actix_rt::test]
async fn a_write_lock_held_too_long_spools_the_call_and_it_is_recorded_once() {
    let f = fixture().await;
    let app = app!(f);
    // Another connection holds SQLite's write lock longer than a webhook waits for its record.
    let mut holder = f.db.run(|pool| pool.acquire()).await.unwrap();
    sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut *holder).await.unwrap();
    let started = std::time::Instant::now();
    let (status, _, body) = text(
        app.call(signed("/webhook/incoming_call", &inbound(SID, BUSINESS_NUMBER)).to_request())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "the caller is still answered");
    assert!(body.contains("Welcome to Dental"), "{body}");
    assert!(
        started.elapsed() >= Duration::from_millis(2900),
        "it waited for the database first"
    );
    assert_eq!(spool_lines(&f), 1, "the record went to the spool");
    sqlx::raw_sql("ROLLBACK").execute(&mut *holder).await.unwrap();
    drop(holder);
    // The writer commits the batch it was holding once the lock is free, and the replay applies
    // the spooled copy again: one call, one event.
    drain_spool(&f).await;
    assert_eq!(count(&f.db, "SELECT COUNT(*) FROM calls").await, 1);
    assert_eq!(count(&f.db, "SELECT COUNT(*) FROM call_events").await, 1);
}

fn status_for(sid: &str) -> Vec<(String, String)> {
    status(sid, "completed", "4")
}

async fn token<S, B>(app: &S, email: &str) -> String
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: actix_web::body::MessageBody,
{
    let req = TestRequest::post()
        .uri("/api/auth/login")
        .peer_addr("203.0.113.9:1".parse().unwrap())
        .set_json(json!({ "email": email, "password": "correct horse battery" }))
        .to_request();
    let (_, _, body) = text(app.call(req).await.unwrap()).await;
    serde_json::from_str::<Value>(&body).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[actix_rt::test]
async fn the_calls_api_is_page_guarded_and_tenant_scoped() {
    let f = fixture().await;
    let app = app!(f);
    app.call(signed("/webhook/incoming_call", &inbound(SID, BUSINESS_NUMBER)).to_request())
        .await
        .unwrap();
    let other = "CA22222222222222222222222222222222";
    app.call(signed("/webhook/incoming_call", &inbound(other, STREAM_NUMBER)).to_request())
        .await
        .unwrap();
    let agent_a = token(&app, "agent@a.example").await;
    let viewer_a = token(&app, "viewer@a.example").await;
    let agent_b = token(&app, "agent@b.example").await;
    let get = |path: &str, token: &str| {
        TestRequest::get()
            .uri(path)
            .insert_header((header::AUTHORIZATION, format!("Bearer {token}")))
            .to_request()
    };
    let (status, _, body) = text(app.call(get("/api/calls", &agent_a)).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let listed: Value = serde_json::from_str(&body).unwrap();
    let sids: Vec<&str> = listed["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["call_sid"].as_str().unwrap())
        .collect();
    assert_eq!(sids, [SID], "only business A's call");
    let (status, _, body) = text(app.call(get(&format!("/api/calls/{SID}"), &agent_a)).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let call: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(call["events"].as_array().unwrap().len(), 1);
    assert_eq!(
        app.call(get(&format!("/api/calls/{SID}"), &agent_b))
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.call(get(&format!("/api/calls/{other}"), &agent_a))
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.call(get("/api/calls", &viewer_a)).await.unwrap().status(),
        StatusCode::FORBIDDEN,
        "viewers lack the calls page"
    );
    assert_eq!(
        app.call(TestRequest::get().uri("/api/calls").to_request())
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    for bad in [
        "direction=sideways",
        "limit=0",
        "limit=1000",
        "from=yesterday",
        "status=DROP%20TABLE",
        "offset=-1",
        "colour=red",
    ] {
        let res = app.call(get(&format!("/api/calls?{bad}"), &agent_a)).await.unwrap();
        assert!(res.status().is_client_error(), "{bad}: {}", res.status());
    }
    let (status, _, body) = text(
        app.call(get(
            "/api/calls?direction=inbound&from=2000-01-01T00:00:00Z&limit=1",
            &agent_a,
        ))
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let found = |query: &'static str| {
        let req = get(&format!("/api/calls?{query}"), &agent_a);
        let app = &app;
        async move {
            let (_, _, body) = text(app.call(req).await.unwrap()).await;
            serde_json::from_str::<Value>(&body).unwrap()["calls"]
                .as_array()
                .unwrap()
                .len()
        }
    };
    assert_eq!(found("direction=inbound").await, 1);
    assert_eq!(found("direction=outbound").await, 0, "the filter filters");
    assert_eq!(found("status=ringing").await, 1);
    assert_eq!(found("status=completed").await, 0);
    assert_eq!(found("to=2000-01-01T00:00:00Z").await, 0);
}

// Outbound calls against a fake Twilio REST API: a real HTTP server started by the test, which
// checks the exact request and answers success, each error code, a 500, a slow answer and a reset.

/// One request the fake Twilio received.
#[derive(Debug, Clone)]
struct Captured {
    path: String,
    authorization: String,
    form: Vec<(String, String)>,
}

async fn fake_twilio(req: HttpRequest, body: web::Bytes, seen: web::Data<Mutex<Vec<Captured>>>) -> HttpResponse {
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let to = form
        .iter()
        .find(|(k, _)| k == "To")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    seen.lock().unwrap().push(Captured {
        path: req.path().to_owned(),
        authorization: req
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default(),
        form,
    });
    let error = |status: u16, code: u32, message: &str| {
        HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap()).json(json!({
            "code": code, "message": message, "more_info": format!("https://www.twilio.com/docs/errors/{code}"), "status": status
        }))
    };
    match to.as_str() {
        "+15005550006" => {
            HttpResponse::Created().json(json!({ "sid": "CAfeedfeedfeedfeedfeedfeedfeedfeed", "status": "queued" }))
        }
        "+15005550001" => error(400, 21211, "The 'To' number +15005550001 is not a valid phone number."),
        "+15005550002" => error(401, 20003, "Authenticate"),
        "+15005550003" => {
            let mut res = error(429, 20429, "Too Many Requests");
            res.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("7"));
            res
        }
        "+15005550004" => error(500, 20500, "Internal Server Error"),
        "+15005550005" => {
            actix_web::rt::time::sleep(Duration::from_secs(15)).await;
            HttpResponse::Created().json(json!({ "sid": "CAlate", "status": "queued" }))
        }
        _ => error(400, 21201, "No 'To' number is specified"),
    }
}

/// Starts the fake on an ephemeral port; returns its base URL and what it saw.
fn start_fake() -> (String, Arc<Mutex<Vec<Captured>>>) {
    let seen = web::Data::new(Mutex::new(Vec::new()));
    let captured = seen.clone().into_inner();
    let server = HttpServer::new(move || {
        actix_web::App::new()
            .app_data(seen.clone())
            .default_service(web::to(fake_twilio))
    })
    .workers(1)
    .bind(("127.0.0.1", 0))
    .unwrap();
    let addr = server.addrs()[0];
    actix_web::rt::spawn(server.run());
    (format!("http://{addr}"), captured)
}

async fn call<S, B>(app: &S, token: &str, body: Value) -> (u16, Value)
where
    S: Service<actix_http::Request, Response = actix_web::dev::ServiceResponse<B>, Error = actix_web::Error>,
    B: actix_web::body::MessageBody,
{
    let req = TestRequest::post()
        .uri("/api/calls/outbound")
        .insert_header((header::AUTHORIZATION, format!("Bearer {token}")))
        .set_json(body)
        .to_request();
    let res = app.call(req).await.unwrap();
    let status = res.status().as_u16();
    let retry = res
        .headers()
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = actix_web::body::to_bytes(res.into_body()).await.ok().unwrap();
    let mut json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if let Some(retry) = retry {
        json["retry_after"] = Value::from(retry);
    }
    (status, json)
}

#[actix_rt::test]
async fn the_exact_twilio_request_and_every_answer() {
    let (api, seen) = start_fake();
    let f = fixture_with_api(&api).await;
    let app = app!(f);
    let agent = token(&app, "agent@a.example").await;

    let (status, body) = call(&app, &agent, json!({ "to": "+15005550006", "lead_id": 42 })).await;
    assert_eq!(status, 201, "{body}");
    let req_id = body["req_id"].as_str().unwrap().to_owned();
    assert_eq!(req_id.len(), 8);
    assert!(req_id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(body["call_sid"], "CAfeedfeedfeedfeedfeedfeedfeedfeed");
    let sent = seen.lock().unwrap()[0].clone();
    assert_eq!(sent.path, format!("/2010-04-01/Accounts/{ACCOUNT}/Calls.json"));
    use base64::Engine as _;
    let expected_auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{ACCOUNT}:{TOKEN}"))
    );
    assert_eq!(sent.authorization, expected_auth);
    let field = |name: &str| {
        sent.form
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(field("To"), ["+15005550006"]);
    assert_eq!(field("From"), [BUSINESS_NUMBER], "from = the business number");
    assert_eq!(
        field("Url"),
        [format!("{BASE}/webhook/outbound_call?lead_id=42&business_id=1&req_id={req_id}").as_str()]
    );
    assert_eq!(
        field("StatusCallback"),
        [format!("{BASE}/webhook/call_status?req_id={req_id}").as_str()]
    );
    assert_eq!(
        field("StatusCallbackEvent"),
        ["initiated", "ringing", "answered", "completed"]
    );
    let (sid, state, lead): (Option<String>, String, Option<String>) =
        f.db.run(|pool| {
            sqlx::query_as("SELECT call_sid, status, lead_id FROM calls WHERE req_id = $1")
                .bind(&req_id)
                .fetch_one(pool)
        })
        .await
        .unwrap();
    assert_eq!(
        (sid.as_deref(), state.as_str(), lead.as_deref()),
        (Some("CAfeedfeedfeedfeedfeedfeedfeedfeed"), "queued", Some("42"))
    );

    // Twilio's errors, each to a clear answer, each kept on the call record.
    for (to, expected_status, expected_code, twilio_code) in [
        ("+15005550001", 422, "invalid_number", Some(21211)),
        ("+15005550002", 502, "twilio_auth", Some(20003)),
        ("+15005550003", 503, "twilio_rate_limited", Some(20429)),
        ("+15005550004", 502, "twilio_unavailable", Some(20500)),
        ("+15005550005", 504, "twilio_timeout", None),
    ] {
        let (status, body) = call(&app, &agent, json!({ "to": to, "lead_id": "lead-7" })).await;
        assert_eq!(status, expected_status, "{to}: {body}");
        assert_eq!(body["error"]["code"], expected_code, "{to}");
        assert_eq!(body["error"]["twilio_code"], json!(twilio_code), "{to}");
        let req_id = body["error"]["req_id"].as_str().unwrap();
        let (state, error): (String, Option<String>) =
            f.db.run(|pool| {
                sqlx::query_as("SELECT status, error FROM calls WHERE req_id = $1")
                    .bind(req_id)
                    .fetch_one(pool)
            })
            .await
            .unwrap();
        assert_eq!(state, "failed", "{to}");
        let error = error.unwrap();
        if let Some(code) = twilio_code {
            assert!(error.starts_with(&code.to_string()), "{to}: {error}");
        }
        if expected_status == 503 {
            assert_eq!(body["retry_after"], "7");
        }
    }

    // Bad input never reaches Twilio.
    let before = seen.lock().unwrap().len();
    for bad in [
        json!({ "to": "0501234567", "lead_id": 1 }),
        json!({ "to": "+1 415 555", "lead_id": 1 }),
        json!({ "to": "+15005550006", "lead_id": "x y" }),
        json!({ "to": "+15005550006" }),
        json!({ "to": "+15005550006", "lead_id": 1, "from": "+1999" }),
    ] {
        let (status, _) = call(&app, &agent, bad.clone()).await;
        assert_eq!(status, 422, "{bad}");
    }
    assert_eq!(seen.lock().unwrap().len(), before);
    let viewer = token(&app, "viewer@a.example").await;
    assert_eq!(
        call(&app, &viewer, json!({ "to": "+15005550006", "lead_id": 1 }))
            .await
            .0,
        403
    );
}

#[actix_rt::test]
async fn a_reset_connection_is_a_502_and_the_failure_is_kept() {
    // A "Twilio" that accepts the connection and closes it without answering.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            drop(stream);
        }
    });
    let f = fixture_with_api(&format!("http://{addr}")).await;
    let app = app!(f);
    let agent = token(&app, "agent@a.example").await;
    let (status, body) = call(&app, &agent, json!({ "to": "+15005550006", "lead_id": 9 })).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "twilio_unreachable");
    let state: (String,) =
        f.db.run(|pool| sqlx::query_as("SELECT status FROM calls WHERE lead_id = '9'").fetch_one(pool))
            .await
            .unwrap();
    assert_eq!(state.0, "failed");
}

#[actix_rt::test]
async fn webhooks_attach_a_call_sid_the_outbound_request_never_got() {
    let (api, _) = start_fake();
    let f = fixture_with_api(&api).await;
    let app = app!(f);
    let agent = token(&app, "agent@a.example").await;
    // Twilio answers 500 (or times out) although it placed the call.
    let (status, body) = call(&app, &agent, json!({ "to": "+15005550004", "lead_id": "lead-7" })).await;
    assert_eq!(status, 502);
    let req_id = body["error"]["req_id"].as_str().unwrap().to_owned();
    let answered = form(&[
        ("CallSid", SID),
        ("From", BUSINESS_NUMBER),
        ("To", "+15005550004"),
        ("CallStatus", "in-progress"),
        ("Direction", "outbound-api"),
    ]);
    let path = format!("/webhook/outbound_call?lead_id=lead-7&business_id=1&req_id={req_id}");
    assert_eq!(
        app.call(signed(&path, &answered).to_request()).await.unwrap().status(),
        StatusCode::OK
    );
    let mut done = status_for(SID);
    done.retain(|(k, _)| k != "Direction");
    done.push(("Direction".to_owned(), "outbound-api".to_owned()));
    let path = format!("/webhook/call_status?req_id={req_id}");
    assert_eq!(
        app.call(signed(&path, &done).to_request()).await.unwrap().status(),
        StatusCode::OK
    );
    let rows: Vec<(Option<String>, Option<String>, String)> =
        f.db.run(|pool| sqlx::query_as("SELECT call_sid, req_id, status FROM calls").fetch_all(pool))
            .await
            .unwrap();
    assert_eq!(rows.len(), 1, "one record for the request and its call: {rows:?}");
    let (sid, state, error, lead): (Option<String>, String, Option<String>, Option<String>) =
        f.db.run(|pool| {
            sqlx::query_as("SELECT call_sid, status, error, lead_id FROM calls WHERE req_id = $1")
                .bind(&req_id)
                .fetch_one(pool)
        })
        .await
        .unwrap();
    assert_eq!(sid.as_deref(), Some(SID));
    assert_eq!(state, "completed", "the call moved on");
    assert!(
        error.unwrap().starts_with("20500"),
        "the REST failure stays on the record"
    );
    assert_eq!(lead.as_deref(), Some("lead-7"));
    // The trace tells the client's error from the call's fate.
    let t = traced(&f.db, SID).await;
    assert_eq!(verdict(&t, "twilio api"), "failed: 20500 Internal Server Error");
    assert_eq!(verdict(&t, "state"), "completed: the call ended");
    assert!(
        t.hints
            .iter()
            .any(|h| h.starts_with("our request to Twilio failed (20500) but Twilio placed the call all the same")),
        "{t:#?}"
    );
}

/// A call answered with a media stream and not heard of since: after five minutes the trace says
/// where to look.
#[actix_rt::test]
async fn a_stream_without_a_status_callback_is_pointed_out() {
    let f = fixture().await;
    let app = app!(f);
    let res = app
        .call(signed("/webhook/incoming_call", &inbound(SID, STREAM_NUMBER)).to_request())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let t = traced(&f.db, SID).await;
    assert!(t.timeline[0].what.contains("answered 200 stream"), "{t:#?}");
    assert!(t.hints.is_empty(), "not yet: {t:#?}");
    f.db.run(|pool| sqlx::query("UPDATE call_events SET received_ms = received_ms - 360000").execute(pool))
        .await
        .unwrap();
    let t = traced(&f.db, SID).await;
    assert!(
        t.hints
            .iter()
            .any(|h| h.starts_with("answered with a media stream 6 minutes ago and no status callback since")),
        "{t:#?}"
    );
    assert!(
        verdict(&t, "state").starts_with("ringing: last heard of 6 minutes ago"),
        "{t:#?}"
    );
}

/// The spool's own faults, on both engines: a line torn by a crash, an invalid UTF-8 byte inside a
/// record, and (on PostgreSQL, which cannot store it) a NUL byte. Replay decodes lossily, moves
/// what can never be written to the dead-letter file, counts it, and goes on behind it.
#[actix_rt::test]
async fn torn_undecodable_and_poison_spool_lines_do_not_stop_the_replay() {
    // Real spool lines: three calls answered while the call tables are away.
    let first = fixture().await;
    let app = app!(first);
    first
        .db
        .run(|pool| {
            sqlx::raw_sql("ALTER TABLE calls RENAME TO calls_away; ALTER TABLE call_events RENAME TO call_events_away")
                .execute(pool)
        })
        .await
        .unwrap();
    let sid = |i: usize| format!("CA{i:032x}");
    for i in 0..3 {
        let res = app
            .call(signed("/webhook/incoming_call", &inbound(&sid(i), BUSINESS_NUMBER)).to_request())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    let spool_file = first.dir.path().join("spool").join(callplane_plugin_twilio::SPOOL_FILE);
    let spooled: Vec<String> = std::fs::read_to_string(&spool_file)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(spooled.len(), 3);
    drop(app);
    let Fixture { mut dir, host, .. } = first;
    drop(host); // and with it the spool's lock

    let postgres = callplane_plugin_api::testing::ScratchPostgres::create(
        "torn_undecodable_and_poison_spool_lines_do_not_stop_the_replay",
    );
    let mut engines = vec![format!("sqlite://{}/replayed.db", dir.path().display())];
    engines.extend(postgres.as_ref().map(|p| p.url.clone()));
    for url in engines {
        let on_postgres = url.starts_with("postgres");
        let mut bytes = spooled[0].replace("+15005550006", "+1500555#0006").into_bytes();
        // One raw byte that is not UTF-8, where the placeholder was.
        let at = bytes.iter().position(|b| *b == b'#').unwrap();
        bytes[at] = 0xFF;
        bytes.push(b'\n');
        bytes.extend(spooled[1].replace("+15005550006", "+1500555\\u00000006").bytes());
        bytes.push(b'\n');
        bytes.extend(spooled[2].bytes());
        bytes.push(b'\n');
        bytes.extend(&spooled[2].as_bytes()[..30]); // torn by a crash: no newline
        std::fs::write(&spool_file, &bytes).unwrap();
        let _ = std::fs::remove_file(spool_file.with_extension("dead-letter.jsonl"));

        let db = Db::connect_lazy(&url).unwrap();
        let f = fixture_in(dir, db, &[]).await;
        drain_spool(&f).await;
        let stored = count(&f.db, "SELECT COUNT(*) FROM calls").await;
        let dead: Vec<Value> = std::fs::read_to_string(spool_file.with_extension("dead-letter.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let (from,): (String,) =
            f.db.run(|pool| {
                sqlx::query_as("SELECT from_number FROM calls WHERE call_sid = $1")
                    .bind(sid(0))
                    .fetch_one(pool)
            })
            .await
            .unwrap();
        assert_eq!(
            from, "+1500555\u{FFFD}0006",
            "{url}: decoded lossily, one character spoiled"
        );
        if on_postgres {
            assert_eq!(stored, 2, "{url}: the NUL byte cannot be stored");
            assert_eq!(dead.len(), 2, "{url}: {dead:?}");
            assert!(dead[0]["line"].as_str().unwrap().contains(&sid(1)), "{dead:?}");
            assert!(
                dead[1]["line"].as_str().unwrap().ends_with(&spooled[2][..30]),
                "{dead:?}"
            );
        } else {
            assert_eq!(stored, 3, "{url}: SQLite stores the NUL byte");
            assert_eq!(dead.len(), 1, "{url}: {dead:?}");
        }
        assert!(
            dead.last().unwrap()["reason"]
                .as_str()
                .unwrap()
                .starts_with("not a call event"),
            "{dead:?}"
        );
        let metric = format!("callplane_twilio_spool_dead_letters_total {}", dead.len());
        assert!(
            f.host.metrics().contains(&metric),
            "{url}: {metric} in\n{}",
            f.host.metrics()
        );
        let Fixture { dir: kept, host, .. } = f;
        drop(host);
        dir = kept;
    }
}

// The call timeline behind `callplane trace`: written with each webhook, read from the database.

use callplane_plugin_twilio::trace::{self, CallId, Trace, Viewer};

async fn traced(db: &Db, id: &str) -> Trace {
    trace::load(db, &CallId::parse(id).unwrap(), Viewer::Operator, None)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{id} is known"))
}

fn verdict<'a>(trace: &'a Trace, question: &str) -> &'a str {
    &trace.verdict.iter().find(|v| v.question == question).unwrap().answer
}

/// A fresh fixture on SQLite, and one on PostgreSQL when `TEST_POSTGRES_URL` is set (the scratch
/// database lives as long as the returned guard).
async fn on_both_engines(test: &str) -> (Option<callplane_plugin_api::testing::ScratchPostgres>, Vec<Fixture>) {
    let postgres = callplane_plugin_api::testing::ScratchPostgres::create(test);
    let mut fixtures = vec![fixture().await];
    if let Some(pg) = &postgres {
        fixtures.push(fixture_in(tempfile::tempdir().unwrap(), Db::connect_lazy(&pg.url).unwrap(), &[]).await);
    }
    (postgres, fixtures)
}

/// Waits until `sql` counts `n` rows (refused webhooks are written without waiting).
async fn wait_for_rows(db: &Db, what: &str, sql: &'static str, n: i64) {
    eventually(what, || {
        let db = db.clone();
        async move { count(&db, sql).await == n }
    })
    .await;
}

/// Polls `check` until it holds, for up to 10 s (refused webhooks are written without waiting).
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    for _ in 0..200 {
        if check().await {
            return;
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} within 10 s");
}

/// An inbound call with a retry, out-of-order statuses and a webhook signed for the wrong scheme,
/// on SQLite and (with `TEST_POSTGRES_URL`) PostgreSQL: the timeline has every event once with
/// the instance, what we answered and whether each status applied; the verdict names the cause
/// of the refusal; tenants see their own calls only, never refused webhooks.
#[actix_rt::test]
async fn the_timeline_explains_answered_and_refused_calls_on_both_engines() {
    let (_postgres, fixtures) = on_both_engines("timeline_answered_and_refused").await;
    for f in fixtures {
        let app = app!(f);
        for params in [
            inbound(SID, BUSINESS_NUMBER),
            inbound(SID, BUSINESS_NUMBER), // Twilio's retry
            status(SID, "ringing", "1"),
            status(SID, "completed", "3"),
            status(SID, "in-progress", "2"), // late
        ] {
            let path = if params.iter().any(|(k, _)| k == "SequenceNumber") {
                "/webhook/call_status"
            } else {
                "/webhook/incoming_call"
            };
            let res = app.call(signed(path, &params).to_request()).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
        }
        let t = traced(&f.db, SID).await;
        let what: Vec<&str> = t.timeline.iter().map(|e| e.what.as_str()).collect();
        assert_eq!(t.timeline.len(), 4, "the retry is stored once: {what:#?}");
        assert!(
            what[0]
                .starts_with("POST /webhook/incoming_call signature=valid status=ringing; answered 200 greeting in "),
            "{what:#?}"
        );
        assert!(what[1].contains("status=ringing sequence=1 applied"), "{what:#?}");
        assert!(what[2].contains("status=completed sequence=3 applied"), "{what:#?}");
        assert!(
            what[3].contains("status=in-progress sequence=2 ignored: stale"),
            "{what:#?}"
        );
        let instance = Settings::default().instance_id;
        assert!(
            t.timeline
                .iter()
                .all(|e| e.instance.as_deref() == Some(instance.as_str()) && e.request_id.is_some()),
            "{t:#?}"
        );
        assert!(
            t.timeline[0]
                .twiml
                .as_deref()
                .unwrap()
                .contains("<Say>Welcome to Dental &amp; Co</Say>"),
            "{t:#?}"
        );
        assert!(verdict(&t, "reached us").starts_with("yes, "), "{t:#?}");
        assert!(
            verdict(&t, "reached us").ends_with(&format!("on {instance} at /webhook/incoming_call")),
            "{t:#?}"
        );
        assert_eq!(verdict(&t, "signature"), "valid (4 webhooks)");
        assert_eq!(verdict(&t, "tenant"), "business 1");
        assert_eq!(verdict(&t, "state"), "completed: the call ended");
        assert!(
            t.verdict.iter().all(|v| v.question != "twilio api"),
            "inbound: no API question"
        );
        let shown = t.text();
        assert!(shown.contains("verdict:\n  reached us  yes, "), "{shown}");

        // Signed for http:// while this instance is configured with https://.
        let forged = "CA99999999999999999999999999999999";
        let params = inbound(forged, BUSINESS_NUMBER);
        let wrong = signature::compute(TOKEN, "http://voice.example.com/webhook/incoming_call", &params);
        for _ in 0..3 {
            let req = unsigned("/webhook/incoming_call", &params).insert_header(("x-twilio-signature", wrong.clone()));
            assert_eq!(
                app.call(req.to_request()).await.unwrap().status(),
                StatusCode::FORBIDDEN
            );
        }
        wait_for_rows(
            &f.db,
            "the refused webhooks are kept",
            "SELECT COUNT(*) FROM unverified_webhooks",
            3,
        )
        .await;
        assert_eq!(
            count(&f.db, "SELECT COUNT(*) FROM calls").await,
            1,
            "never a call record"
        );
        let t = traced(&f.db, forged).await;
        assert!(t.call.is_none());
        assert_eq!(t.timeline.len(), 3);
        assert!(t.timeline.iter().all(|e| e.source == "unverified"
            && e.what.starts_with(
                "UNVERIFIED POST /webhook/incoming_call refused 403 signature=invalid client=54.172.60.1"
            )));
        assert_eq!(
            verdict(&t, "signature"),
            "invalid: 3 requests refused with 403; likely cause: CALLPLANE_PUBLIC_BASE_URL is probably wrong: Twilio signed http://voice.example.com/webhook/incoming_call, this instance checks https://voice.example.com/webhook/incoming_call"
        );
        assert_eq!(
            verdict(&t, "tenant"),
            "none: refused webhooks are never attributed to a tenant"
        );
        assert!(
            t.hints
                .iter()
                .any(|h| h.starts_with("every request Twilio sent for this call was refused with 403 (3 attempts)")),
            "{t:#?}"
        );
        // A missing signature is its own cause.
        let missing = "CA88888888888888888888888888888888";
        app.call(unsigned("/webhook/incoming_call", &inbound(missing, BUSINESS_NUMBER)).to_request())
            .await
            .unwrap();
        wait_for_rows(
            &f.db,
            "the unsigned webhook is kept",
            "SELECT COUNT(*) FROM unverified_webhooks",
            4,
        )
        .await;
        assert!(verdict(&traced(&f.db, missing).await, "signature").contains("no X-Twilio-Signature header"));

        // `calls`: the answered call and the refused ones, each with its verdict.
        let lines = callplane_plugin_twilio::cli::recent(&f.db, &Filter::since(0))
            .await
            .unwrap();
        let verdict_of = |sid: &str| {
            lines
                .iter()
                .find(|l| l.call_sid.as_deref() == Some(sid))
                .map(|l| l.verdict.as_str())
        };
        assert_eq!(verdict_of(SID), Some("answered"));
        assert_eq!(verdict_of(forged), Some("refused"));
        assert_eq!(verdict_of(missing), Some("refused"));
        let to_a = callplane_plugin_twilio::cli::recent(
            &f.db,
            &Filter {
                to: Some(BUSINESS_NUMBER),
                ..Filter::since(0)
            },
        )
        .await
        .unwrap();
        assert_eq!(to_a.len(), 1, "--to filters, and refused webhooks name no number");

        // The API: the tenant's own calls, as JSON; another tenant's, refused ones and bad ids 404.
        let agent_a = token(&app, "agent@a.example").await;
        let agent_b = token(&app, "agent@b.example").await;
        let get = |path: String, token: &str| {
            TestRequest::get()
                .uri(&path)
                .insert_header((header::AUTHORIZATION, format!("Bearer {token}")))
                .to_request()
        };
        let (status, ctype, body) = text(
            app.call(get(format!("/api/calls/{SID}/trace"), &agent_a))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!((status, ctype.as_str()), (StatusCode::OK, "application/json"), "{body}");
        let json: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["timeline"].as_array().unwrap().len(), 4);
        assert_eq!(json["verdict"][2]["answer"], "business 1");
        for (path, who) in [
            (format!("/api/calls/{SID}/trace"), &agent_b),
            (format!("/api/calls/{forged}/trace"), &agent_a),
            ("/api/calls/CA%3Cscript%3E/trace".to_owned(), &agent_a),
            ("/api/calls/deadbeef/trace".to_owned(), &agent_a),
        ] {
            let (status, _, body) = text(app.call(get(path.clone(), who)).await.unwrap()).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
            assert!(body.contains("\"error\""), "{path}: {body}");
        }
    }
}

/// An outbound call Twilio placed, and one it refused (21211), through the fake REST server: each
/// has its steps, found by REQ id and by CallSid.
#[actix_rt::test]
async fn outbound_requests_have_their_steps_in_the_timeline() {
    let (api, _) = start_fake();
    let f = fixture_with_api(&api).await;
    let app = app!(f);
    let agent = token(&app, "agent@a.example").await;
    let (status, body) = call(&app, &agent, json!({ "to": "+15005550006", "lead_id": 42 })).await;
    assert_eq!(status, 201, "{body}");
    let req_id = body["req_id"].as_str().unwrap();
    let t = traced(&f.db, req_id).await;
    let what: Vec<&str> = t.timeline.iter().map(|e| e.what.as_str()).collect();
    assert_eq!(what.len(), 3, "{what:#?}");
    assert!(
        what[0].starts_with("outbound request accepted: tenant=1 lead_id=42 to=+15005550006 from=+972501234567"),
        "{what:#?}"
    );
    assert_eq!(what[1], "calling Twilio's REST API");
    assert!(
        what[2].starts_with("twilio_ok call_sid=CAfeedfeedfeedfeedfeedfeedfeedfeed status=queued after "),
        "{what:#?}"
    );
    assert!(
        verdict(&t, "twilio api").starts_with("accepted: call CAfeedfeedfeedfeedfeedfeedfeedfeed placed in "),
        "{t:#?}"
    );
    assert!(
        verdict(&t, "reached us").starts_with("no webhook has arrived"),
        "{t:#?}"
    );
    // The same steps by CallSid, and the answered webhook joins them.
    let sid = "CAfeedfeedfeedfeedfeedfeedfeedfeed";
    let answered = form(&[
        ("CallSid", sid),
        ("From", BUSINESS_NUMBER),
        ("To", "+15005550006"),
        ("CallStatus", "in-progress"),
    ]);
    let path = format!("/webhook/outbound_call?lead_id=42&business_id=1&req_id={req_id}");
    assert_eq!(
        app.call(signed(&path, &answered).to_request()).await.unwrap().status(),
        StatusCode::OK
    );
    let t = traced(&f.db, sid).await;
    assert_eq!(t.timeline.len(), 4, "{t:#?}");
    assert!(
        t.timeline[3]
            .what
            .starts_with("POST /webhook/outbound_call signature=valid"),
        "{t:#?}"
    );

    let (status, body) = call(&app, &agent, json!({ "to": "+15005550001", "lead_id": 43 })).await;
    assert_eq!(status, 422, "{body}");
    let t = traced(&f.db, body["error"]["req_id"].as_str().unwrap()).await;
    assert!(
        t.timeline[2]
            .what
            .starts_with("twilio_failed err=21211 The 'To' number +15005550001 is not a valid phone number. after "),
        "{t:#?}"
    );
    assert_eq!(
        verdict(&t, "twilio api"),
        "failed: 21211 The 'To' number +15005550001 is not a valid phone number."
    );
    assert_eq!(verdict(&t, "state"), "failed: the call ended");
    let lines = callplane_plugin_twilio::cli::recent(&f.db, &Filter::since(0))
        .await
        .unwrap();
    assert_eq!(
        lines.iter().filter(|l| l.verdict == "failed-outbound").count(),
        1,
        "{lines:#?}"
    );
}

/// A call answered while the database was away: the trace shows it waiting in this instance's
/// spool, then spooled and replayed once the replay moved it.
#[actix_rt::test]
async fn a_spooled_call_is_traced_before_and_after_its_replay() {
    let f = fixture().await;
    let app = app!(f);
    let away = "ALTER TABLE calls RENAME TO calls_away; ALTER TABLE call_events RENAME TO call_events_away";
    f.db.run(|pool| sqlx::raw_sql(away).execute(pool)).await.unwrap();
    assert_eq!(
        app.call(signed("/webhook/incoming_call", &inbound(SID, BUSINESS_NUMBER)).to_request())
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let back = "ALTER TABLE calls_away RENAME TO calls; ALTER TABLE call_events_away RENAME TO call_events";
    f.db.run(|pool| sqlx::raw_sql(back).execute(pool)).await.unwrap();
    let spool = f.dir.path().join("spool").join(callplane_plugin_twilio::SPOOL_FILE);
    let t = trace::load(&f.db, &CallId::parse(SID).unwrap(), Viewer::Operator, Some(&spool))
        .await
        .unwrap()
        .unwrap();
    assert!(t.call.is_none());
    assert!(
        t.timeline[0]
            .what
            .starts_with("spooled (incoming) on this instance, not yet in the database"),
        "{t:#?}"
    );
    assert!(
        t.hints
            .iter()
            .any(|h| h.starts_with("1 event spooled on this instance and not yet replayed")),
        "{t:#?}"
    );
    drain_spool(&f).await;
    let t = traced(&f.db, SID).await;
    let what: Vec<&str> = t.timeline.iter().map(|e| e.what.as_str()).collect();
    assert_eq!(what.len(), 3, "{what:#?}");
    assert!(what[0].starts_with("POST /webhook/incoming_call"), "{what:#?}");
    assert_eq!(what[1], "spooled (incoming): the database was away");
    assert_eq!(what[2], "replayed into the database (incoming)");
    let lines = callplane_plugin_twilio::cli::recent(&f.db, &Filter::since(0))
        .await
        .unwrap();
    assert_eq!(lines[0].verdict, "spooled");
}

/// 100,000 forged webhooks from many addresses cannot fill the disk: the evidence table ends at
/// its bound in rows, and one client at its bound per client.
#[actix_rt::test]
async fn forged_webhooks_cannot_grow_the_evidence_table_past_its_bounds() {
    let f = fixture_with(&[("unverified_max_rows", "300"), ("unverified_per_client", "20")]).await;
    let app = app!(f);
    for i in 0..100_000u32 {
        let sid = format!("CA{i:032x}");
        let peer = format!("10.{}.{}.{}:5000", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff);
        let req = unsigned("/webhook/incoming_call", &inbound(&sid, BUSINESS_NUMBER))
            .insert_header(("x-twilio-signature", "AAAAAAAAAAAAAAAAAAAAAAAAAAA="))
            .peer_addr(peer.parse().unwrap());
        assert_eq!(
            app.call(req.to_request()).await.unwrap().status(),
            StatusCode::FORBIDDEN
        );
    }
    // One more in a fresh budget window: once its row is in, the flood before it is written.
    actix_web::rt::time::sleep(Duration::from_millis(1100)).await;
    let last =
        unsigned("/webhook/incoming_call", &inbound(SID, BUSINESS_NUMBER)).peer_addr("192.0.2.1:5000".parse().unwrap());
    assert_eq!(
        app.call(last.to_request()).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    wait_for_rows(
        &f.db,
        "the writer caught up",
        "SELECT COUNT(*) FROM unverified_webhooks WHERE client = '192.0.2.1'",
        1,
    )
    .await;
    assert_eq!(
        count(&f.db, "SELECT COUNT(*) FROM unverified_webhooks").await,
        300,
        "at its bound"
    );
    // One client alone, as fast as it can, for longer than the budget's window (a second).
    let (mut sent, alone) = (0, std::time::Instant::now());
    while sent < 2_000 || alone.elapsed() < Duration::from_millis(1500) {
        let req = unsigned(
            "/webhook/incoming_call",
            &inbound(&format!("CA{sent:032x}"), BUSINESS_NUMBER),
        )
        .insert_header(("x-twilio-signature", "AAAAAAAAAAAAAAAAAAAAAAAAAAA="))
        .peer_addr("192.0.2.7:5000".parse().unwrap());
        assert_eq!(
            app.call(req.to_request()).await.unwrap().status(),
            StatusCode::FORBIDDEN
        );
        sent += 1;
    }
    wait_for_rows(
        &f.db,
        "the writer caught up",
        "SELECT COUNT(*) FROM unverified_webhooks WHERE client = '192.0.2.7'",
        20,
    )
    .await;
    assert!(count(&f.db, "SELECT COUNT(*) FROM unverified_webhooks").await <= 300);
    assert_eq!(count(&f.db, "SELECT COUNT(*) FROM calls").await, 0);
    let metrics = f.host.metrics();
    assert!(
        metrics.contains("callplane_twilio_unverified_webhooks_total{kept=\"over_budget\"}"),
        "{metrics}"
    );
}

/// Retention deletes timeline rows and refused webhooks older than the retention, oldest first,
/// and keeps the young ones and every call row, on both engines.
#[actix_rt::test]
async fn retention_prunes_old_timeline_rows_and_keeps_calls_on_both_engines() {
    let (_postgres, fixtures) = on_both_engines("retention_prunes").await;
    for f in fixtures {
        let app = app!(f);
        for i in 0..4u32 {
            let sid = format!("CA{i:032x}");
            app.call(signed("/webhook/incoming_call", &inbound(&sid, BUSINESS_NUMBER)).to_request())
                .await
                .unwrap();
            app.call(
                unsigned(
                    "/webhook/incoming_call",
                    &inbound(&format!("CB{i:032x}"), BUSINESS_NUMBER),
                )
                .to_request(),
            )
            .await
            .unwrap();
        }
        wait_for_rows(
            &f.db,
            "the refused webhooks are kept",
            "SELECT COUNT(*) FROM unverified_webhooks",
            4,
        )
        .await;
        // The two oldest of each are 40 days old.
        let old_s = callplane_plugin_twilio::records::now() - 40 * 86_400;
        let aged = format!(
            "UPDATE call_events SET received_at = {old_s} WHERE id IN (SELECT id FROM call_events ORDER BY id LIMIT 2);
             UPDATE unverified_webhooks SET received_ms = {} WHERE id IN (SELECT id FROM unverified_webhooks ORDER BY id LIMIT 2)",
            old_s * 1000
        );
        f.db.run(|pool| sqlx::raw_sql(sqlx::AssertSqlSafe(aged)).execute(pool))
            .await
            .unwrap();
        let now = callplane_plugin_twilio::records::now_ms();
        assert_eq!(trace::prune(&f.db, 30, now).await.unwrap(), Some(4));
        assert_eq!(count(&f.db, "SELECT COUNT(*) FROM call_events").await, 2);
        assert_eq!(count(&f.db, "SELECT COUNT(*) FROM unverified_webhooks").await, 2);
        assert_eq!(count(&f.db, "SELECT COUNT(*) FROM calls").await, 4, "call rows stay");
        assert_eq!(
            trace::prune(&f.db, 30, now).await.unwrap(),
            Some(0),
            "nothing more is old"
        );
        assert_eq!(
            trace::prune(&f.db, 1, now + 2 * 86_400_000).await.unwrap(),
            Some(4),
            "young rows age too"
        );
    }
}

/// CP112 (`check --deploy`): a business whose media server is `ws://` is named, with the fix.
#[actix_rt::test]
async fn unencrypted_media_servers_are_a_deploy_finding() {
    let f = fixture().await;
    assert_eq!(
        callplane_plugin_twilio::config::unencrypted_media_servers(f.db.clone()).await,
        None,
        "wss:// and no media server are fine"
    );
    f.db.run(|pool| {
        sqlx::query("UPDATE businesses SET media_stream_url = 'ws://agent.internal/s' WHERE phone_number = $1")
            .bind(STREAM_NUMBER)
            .execute(pool)
    })
    .await
    .unwrap();
    let (message, hint) = callplane_plugin_twilio::config::unencrypted_media_servers(f.db.clone())
        .await
        .unwrap();
    assert!(
        message.contains("(ws://agent.internal/s)") && message.contains("31922"),
        "{message}"
    );
    assert!(hint.contains("wss://"), "{hint}");
}
