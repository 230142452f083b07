//! The console's pages mounted exactly as the host mounts them, with the real permissions and
//! twilio plugins on a fresh SQLite database: who may see what, the security headers, escaping of
//! everything Twilio and users send, tenant isolation, the refresh fragments and the filters.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::{StatusCode, header};
use actix_web::test::{self as atest, TestRequest};
use callplane_plugin_api::Settings;
use callplane_plugin_api::storage::Db;
use callplane_plugin_api::testing::TestHost;
use callplane_plugin_permissions::{Level, Store, password};
use callplane_plugin_twilio::signature;

const BASE: &str = "https://voice.example.com";
const TOKEN: &str = "console-test-token";
const NUMBER_A: &str = "+972501234567";
const NUMBER_B: &str = "+972507654321";
const PASSWORD: &str = "correct horse battery";

struct Fixture {
    _dir: tempfile::TempDir,
    host: TestHost,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::connect_lazy(&format!("sqlite://{}/t.db", dir.path().display())).unwrap();
    let mut settings = Settings {
        public_base_url: BASE.to_owned(),
        ..Settings::default()
    };
    settings
        .set("twilio", "spool_dir", dir.path().join("spool").display().to_string())
        .set("twilio", "auth_token", TOKEN)
        // Nothing listens there: outbound calls fail as `twilio_unreachable`.
        .set("twilio", "api_base", "http://127.0.0.1:9")
        .set("twilio", "account_sid", "AC0123456789abcdef0123456789abcdef");
    let host = TestHost::new(
        settings,
        db.clone(),
        &[
            &callplane_plugin_permissions::PLUGIN,
            &callplane_plugin_twilio::PLUGIN,
            &callplane_plugin_console::PLUGIN,
        ],
    )
    .await;
    let store = Store::new(db.clone());
    let a = store
        .create_business("Dental", NUMBER_A, "Welcome", None, 1)
        .await
        .unwrap();
    let b = store.create_business("Other", NUMBER_B, "Hi", None, 1).await.unwrap();
    let hash = password::hash(PASSWORD);
    for (business, email, role) in [
        (a, "agent@a.example", "agent"),
        (a, "viewer@a.example", "viewer"),
        (a, "reader@a.example", "viewer"),
        (b, "agent@b.example", "agent"),
    ] {
        store.create_user(business, email, &hash, role, 1).await.unwrap();
    }
    Fixture { _dir: dir, host }
}

macro_rules! app {
    ($f:expr) => {
        atest::init_service($f.host.app()).await
    };
}

async fn read<B: actix_web::body::MessageBody>(res: ServiceResponse<B>) -> (StatusCode, header::HeaderMap, String) {
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = actix_web::body::to_bytes(res.into_body()).await.ok().unwrap();
    (status, headers, String::from_utf8_lossy(&bytes).into_owned())
}

async fn send<S, B>(app: &S, req: TestRequest) -> (StatusCode, header::HeaderMap, String)
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: actix_web::body::MessageBody,
{
    read(app.call(req.to_request()).await.unwrap()).await
}

/// Signs in as `email`; returns the session token.
async fn sign_in<S, B>(app: &S, email: &str) -> String
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: actix_web::body::MessageBody,
{
    let login = TestRequest::post()
        .uri("/api/auth/login")
        .set_json(serde_json::json!({ "email": email, "password": PASSWORD }));
    let (status, _, body) = send(app, login).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    serde_json::from_str::<serde_json::Value>(&body).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn get(path: &str, token: &str) -> TestRequest {
    TestRequest::get()
        .uri(path)
        .insert_header((header::AUTHORIZATION, format!("Bearer {token}")))
}

/// An inbound call webhook as Twilio sends it, signed, with `extra` parameters.
fn inbound(sid: &str, to: &str, extra: &[(&str, &str)]) -> TestRequest {
    let mut params = vec![
        ("CallSid", sid),
        ("From", "+15005550006"),
        ("To", to),
        ("CallStatus", "ringing"),
        ("Direction", "inbound"),
    ];
    params.extend_from_slice(extra);
    let signature = signature::compute(TOKEN, &format!("{BASE}/webhook/incoming_call"), &params);
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&params)
        .finish();
    TestRequest::post()
        .uri("/webhook/incoming_call")
        .peer_addr("54.172.60.1:443".parse().unwrap())
        .insert_header((header::CONTENT_TYPE, "application/x-www-form-urlencoded"))
        .insert_header(("x-twilio-signature", signature))
        .set_payload(body)
}

fn sid(n: u8) -> String {
    format!("CA{n:032x}")
}

fn assert_guarded(headers: &header::HeaderMap, what: &str) {
    assert_eq!(
        headers.get(header::CONTENT_SECURITY_POLICY).unwrap(),
        callplane_plugin_console::CSP,
        "{what}"
    );
    let csp = callplane_plugin_console::CSP;
    assert!(
        csp.contains("script-src 'self';") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
    assert_eq!(headers.get(header::X_FRAME_OPTIONS).unwrap(), "DENY", "{what}");
    assert_eq!(
        headers.get(header::X_CONTENT_TYPE_OPTIONS).unwrap(),
        "nosniff",
        "{what}"
    );
}

#[actix_rt::test]
async fn a_visit_without_a_session_is_sent_to_sign_in() {
    let f = fixture().await;
    let app = app!(f);
    for (path, next) in [
        ("/console/calls", "%2Fconsole%2Fcalls"),
        ("/console/calls?since=1h", "%2Fconsole%2Fcalls%3Fsince%3D1h"),
        (
            &format!("/console/calls/{}", sid(1)),
            &format!("%2Fconsole%2Fcalls%2F{}", sid(1)),
        ),
        ("/console/outbound", "%2Fconsole%2Foutbound"),
    ] {
        let (status, headers, _) = send(&app, TestRequest::get().uri(path)).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(
            headers.get(header::LOCATION).unwrap().to_str().unwrap(),
            format!("/console/login?next={next}"),
            "{path}"
        );
    }
    // The script's fragments answer as an API does: 401, which the script turns into sign-in.
    for path in ["/console/live", &format!("/console/calls/{}/trace", sid(1))] {
        let (status, _, body) = send(&app, TestRequest::get().uri(path)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {body}");
        assert!(body.contains("\"unauthenticated\""), "{body}");
    }
    // A forged or expired session is no session.
    let (status, _, _) = send(&app, get("/console/calls", &"x".repeat(43))).await;
    assert_eq!(status, StatusCode::SEE_OTHER);

    let (status, headers, body) = send(&app, TestRequest::get().uri("/console/login?next=/console/outbound")).await;
    assert_eq!(status, StatusCode::OK);
    assert_guarded(&headers, "sign-in page");
    assert!(body.contains(r#"data-next="/console/outbound""#), "{body}");
    // Without the script the form posts (never a GET carrying the password) and stays disabled.
    assert!(
        body.contains(r#"<form id="sign-in" method="post" action="/api/auth/login""#),
        "{body}"
    );
    assert!(body.contains(r#"<button type="submit" disabled>"#), "{body}");
    let (_, _, body) = send(
        &app,
        TestRequest::get().uri("/console/login?next=https://evil.example/"),
    )
    .await;
    assert!(body.contains(r#"data-next="/console/calls""#), "{body}");
    let (status, headers, _) = send(&app, TestRequest::get().uri("/console")).await;
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(headers.get(header::LOCATION).unwrap(), "/console/calls");
}

#[actix_rt::test]
async fn a_role_without_the_calls_page_gets_403_and_a_read_only_one_cannot_place_calls() {
    let f = fixture().await;
    let app = app!(f);
    let viewer = sign_in(&app, "viewer@a.example").await;
    for path in [
        "/console/calls",
        "/console/live",
        "/console/outbound",
        &format!("/console/calls/{}", sid(1)),
    ] {
        let (status, _, body) = send(&app, get(path, &viewer)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
        assert!(body.contains("calls"), "the refusal names the page: {body}");
    }

    Store::new(f.host.db.clone())
        .grant_page(1, "viewer", "calls", Level::Read)
        .await
        .unwrap();
    let reader = sign_in(&app, "reader@a.example").await;
    let (status, _, body) = send(&app, get("/console/outbound", &reader)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("may read calls but not place them"), "{body}");
    assert!(!body.contains(r#"id="outbound""#), "no form: {body}");
    let agent = sign_in(&app, "agent@a.example").await;
    let (_, headers, body) = send(&app, get("/console/outbound", &agent)).await;
    assert_guarded(&headers, "outbound page");
    assert!(
        body.contains(r#"<form id="outbound" method="post" action="/api/calls/outbound">"#),
        "{body}"
    );
}

#[actix_rt::test]
async fn the_live_list_shows_the_business_calls_with_their_verdicts_and_refreshes_by_entity_tag() {
    let f = fixture().await;
    let app = app!(f);
    let agent = sign_in(&app, "agent@a.example").await;
    let (status, headers, body) = send(&app, get("/console/calls", &agent)).await;
    assert_eq!(status, StatusCode::OK);
    assert_guarded(&headers, "live list");
    assert!(body.contains("No calls yet"), "{body}");
    assert!(
        body.contains(r#"data-refresh="/console/live?since=24h&amp;number=&amp;verdict=""#),
        "{body}"
    );
    // Only this origin's script, and no inline one.
    assert_eq!(body.matches("<script").count(), 1, "{body}");
    assert!(body.contains(r#"<script src="/console/assets/console.js?v="#), "{body}");

    let (status, headers, empty) = send(&app, get("/console/live?since=24h&number=&verdict=", &agent)).await;
    assert_eq!(status, StatusCode::OK);
    let tag = headers.get(header::ETAG).unwrap().clone();
    let (status, _, body) = send(
        &app,
        get("/console/live?since=24h&number=&verdict=", &agent).insert_header((header::IF_NONE_MATCH, tag.clone())),
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::NOT_MODIFIED, ""),
        "nothing new: no body"
    );

    let (status, _, _) = send(&app, inbound(&sid(1), NUMBER_A, &[])).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = send(&app, inbound(&sid(2), NUMBER_B, &[])).await;
    assert_eq!(status, StatusCode::OK);
    let (status, headers, rows) = send(
        &app,
        get("/console/live?since=24h&number=&verdict=", &agent).insert_header((header::IF_NONE_MATCH, tag.clone())),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "a new call changes the rows");
    assert_ne!(headers.get(header::ETAG).unwrap(), &tag);
    assert_ne!(rows, empty);
    assert!(rows.contains(&format!(r#"<tr data-call="{}">"#, sid(1))), "{rows}");
    assert!(
        rows.contains(r#"<span class="verdict v-answered">answered</span>"#),
        "{rows}"
    );
    assert!(rows.contains(r#"<td data-label="Status">ringing</td>"#), "{rows}");
    assert!(rows.contains(r#"<time datetime="20"#), "{rows}");
    assert!(!rows.contains(&sid(2)), "another business's call: {rows}");
    assert!(!rows.contains("<html"), "a fragment, not a page: {rows}");

    // Filters: by number (digits anywhere, typed with spaces), by verdict, by time.
    for (query, shown) in [
        ("number=0006", true),
        ("number=%2B1+500-555", true),
        ("number=999", false),
        ("verdict=answered", true),
        ("verdict=no-webhook", false),
        ("since=15m", true),
    ] {
        let (status, _, body) = send(&app, get(&format!("/console/calls?{query}"), &agent)).await;
        assert_eq!(status, StatusCode::OK, "{query}");
        assert_eq!(body.contains(&sid(1)), shown, "{query}: {body}");
    }
    let (status, headers, body) = send(&app, get("/console/calls?since=forever&number=%3Cb%3E", &agent)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_guarded(&headers, "refused filter");
    assert!(body.contains("since must be one of 15m, 1h, 24h, 7d"), "{body}");
    assert!(
        body.contains(r#"value="&lt;b&gt;""#),
        "what was typed is shown again, escaped: {body}"
    );
    assert!(
        !body.contains("data-refresh"),
        "a refused filter is not refreshed: {body}"
    );
    let (status, _, body) = send(&app, get("/console/live?verdict=refused", &agent)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.contains("verdict must be one of"), "{body}");
}

#[actix_rt::test]
async fn everything_twilio_and_users_send_is_shown_as_text() {
    let f = fixture().await;
    let app = app!(f);
    let agent = sign_in(&app, "agent@a.example").await;
    let name = "<script>window.pwned=1</script><b>Mallory</b>";
    let (status, _, _) = send(
        &app,
        inbound(
            &sid(3),
            NUMBER_A,
            &[("CallerName", name), ("FromCity", "\"><img src=x onerror=alert(1)>")],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, headers, body) = send(&app, get(&format!("/console/calls/{}", sid(3)), &agent)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_guarded(&headers, "call page");
    assert!(
        body.contains("&lt;script&gt;window.pwned=1&lt;/script&gt;&lt;b&gt;Mallory&lt;/b&gt;"),
        "{body}"
    );
    assert!(body.contains("&quot;&gt;&lt;img src=x onerror=alert(1)&gt;"), "{body}");
    assert!(
        !body.contains("<script>window") && !body.contains("<img src=x"),
        "{body}"
    );
    assert!(!body.contains("<b>Mallory"), "{body}");
    assert_eq!(
        body.matches("<script").count(),
        1,
        "only the console's own script: {body}"
    );
    // The page reads without a script: the verdict, the timeline and the TwiML are all there.
    for part in [
        "<dt>reached us</dt>",
        "<dt>tenant</dt><dd>business 1</dd>",
        "POST /webhook/incoming_call signature=valid",
        "<pre class=\"twiml\">&lt;?xml version=&quot;1.0&quot; encoding=&quot;UTF-8&quot;?&gt;&lt;Response&gt;&lt;Say&gt;Welcome&lt;/Say&gt;",
        "<summary>Parameters Twilio sent (7)</summary>",
        r#"<section id="trace" data-refresh=""#,
    ] {
        assert!(body.contains(part), "{part}: {body}");
    }
    // The part the script refreshes: the same section, tagged; unchanged, a 304.
    let path = format!("/console/calls/{}/trace", sid(3));
    let (status, headers, fragment) = send(&app, get(&path, &agent)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        fragment.starts_with(r#"<section id="trace""#) && !fragment.contains("<html"),
        "{fragment}"
    );
    assert!(fragment.contains("&lt;script&gt;window.pwned=1"), "{fragment}");
    let tag = headers.get(header::ETAG).unwrap().clone();
    let (status, _, body) = send(&app, get(&path, &agent).insert_header((header::IF_NONE_MATCH, tag))).await;
    assert_eq!((status, body.as_str()), (StatusCode::NOT_MODIFIED, ""));
    // A path that is not an id is shown as nothing but "no such call".
    let (status, headers, body) = send(&app, get("/console/calls/%3Cscript%3Ealert(1)%3C%2Fscript%3E", &agent)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_guarded(&headers, "404 page");
    assert!(
        body.contains("No such call") && !body.contains("<script>alert"),
        "{body}"
    );
}

#[actix_rt::test]
async fn no_business_sees_another_business_calls() {
    let f = fixture().await;
    let app = app!(f);
    send(&app, inbound(&sid(4), NUMBER_A, &[])).await;
    let a = sign_in(&app, "agent@a.example").await;
    let b = sign_in(&app, "agent@b.example").await;
    let (status, _, _) = send(&app, get(&format!("/console/calls/{}", sid(4)), &a)).await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        format!("/console/calls/{}", sid(4)),
        format!("/console/calls/{}/trace", sid(4)),
    ] {
        let (status, _, body) = send(&app, get(&path, &b)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert!(!body.contains("+15005550006"), "{body}");
    }
    let (_, _, body) = send(&app, get("/console/calls", &b)).await;
    assert!(!body.contains(&sid(4)), "{body}");

    // A refused (unsigned) webhook naming a call is never shown: it belongs to no tenant.
    let forged = inbound(&sid(5), NUMBER_A, &[]).insert_header(("x-twilio-signature", "forged"));
    let (status, _, _) = send(&app, forged).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = send(&app, get(&format!("/console/calls/{}", sid(5)), &a)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, _, body) = send(&app, get("/console/calls", &a)).await;
    assert!(!body.contains(&sid(5)), "{body}");
}

#[actix_rt::test]
async fn a_failed_outbound_request_has_a_page_by_its_req_id() {
    let f = fixture().await;
    let app = app!(f);
    let agent = sign_in(&app, "agent@a.example").await;
    let placed = TestRequest::post()
        .uri("/api/calls/outbound")
        .insert_header((header::AUTHORIZATION, format!("Bearer {agent}")))
        .set_json(serde_json::json!({ "to": "+15005550009", "lead_id": "console" }));
    let (status, _, body) = send(&app, placed).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    let req_id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"]["req_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, _, rows) = send(&app, get("/console/live?verdict=failed-outbound", &agent)).await;
    assert!(
        rows.contains(&format!(r#"<a href="/console/calls/{req_id}">{req_id}</a>"#)),
        "{rows}"
    );
    let (status, _, body) = send(&app, get(&format!("/console/calls/{req_id}"), &agent)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for part in [
        "twilio_failed err=twilio_unreachable",
        "<dt>twilio api</dt><dd>failed: twilio_unreachable",
        "REQ=",
    ] {
        assert!(body.contains(part), "{part}: {body}");
    }
    assert!(
        body.contains(r#"<section id="trace">"#),
        "a failed call changes no more: the page stops refreshing: {body}"
    );
    let other = sign_in(&app, "agent@b.example").await;
    let (status, _, _) = send(&app, get(&format!("/console/calls/{req_id}"), &other)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[actix_rt::test]
async fn the_assets_are_embedded_and_cacheable() {
    let f = fixture().await;
    let app = app!(f);
    for (path, kind, needle) in [
        ("/console/assets/console.js", "text/javascript", "keepFresh"),
        ("/console/assets/console.css", "text/css", "@media (max-width: 640px)"),
    ] {
        let (status, headers, body) = send(&app, TestRequest::get().uri(path)).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(
            headers
                .get(header::CONTENT_TYPE)
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with(kind)
        );
        assert!(
            headers
                .get(header::CACHE_CONTROL)
                .unwrap()
                .to_str()
                .unwrap()
                .contains("immutable")
        );
        assert!(body.contains(needle), "{path}");
        assert!(
            !body.contains("http://") && !body.contains("https://"),
            "nothing from another origin: {path}"
        );
    }
}
