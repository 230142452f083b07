//! The permissions plugin mounted exactly as the host mounts it (its own `register`, the host's
//! extractor configuration and request middleware), on a fresh database per test: SQLite, or a
//! scratch PostgreSQL database.

// Each test file uses its own subset.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use actix_web::HttpResponse;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::{StatusCode, header};
use actix_web::test::TestRequest;
use callplane_plugin_api::storage::Db;
use callplane_plugin_api::testing::{ScratchPostgres, TestHost};
use callplane_plugin_api::{Access, Principal, Settings};
use callplane_plugin_permissions::{Store, password, session};
use serde_json::{Value, json};

pub const ORIGIN: &str = "https://app.example.com";

pub struct Fixture {
    _dir: tempfile::TempDir,
    _postgres: Option<ScratchPostgres>,
    pub db: Db,
    pub store: Store,
    pub host: TestHost,
}

pub async fn page(who: Principal) -> HttpResponse {
    HttpResponse::Ok().body(who.role)
}

/// A fixture on SQLite.
pub async fn fixture() -> Fixture {
    fixture_on(None).await
}

/// A fixture on `postgres` when given, else on SQLite.
pub async fn fixture_on(postgres: Option<ScratchPostgres>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let url = postgres.as_ref().map_or_else(
        || format!("sqlite://{}/p.db", dir.path().display()),
        |pg| pg.url.clone(),
    );
    let db = Db::connect_lazy(&url).unwrap();
    let settings = Settings {
        public_base_url: ORIGIN.to_owned(),
        ..Settings::default()
    };
    // Page routes of another plugin, enforced by this plugin's provider.
    let host = TestHost::with_routes(settings, db.clone(), &[&callplane_plugin_permissions::PLUGIN], |reg| {
        reg.get("/test/calendar", Access::PageAccess("calendar"), page)
            .get("/test/settings", Access::PageAccess("settings"), page)
            .post("/test/calendar", Access::PageAccess("calendar"), page);
    })
    .await;
    Fixture {
        _dir: dir,
        _postgres: postgres,
        store: Store::new(db.clone()),
        db,
        host,
    }
}

/// The fixture's app as an initialised test service.
#[macro_export]
macro_rules! app {
    ($f:expr) => {
        actix_web::test::init_service($f.host.app()).await
    };
}

pub async fn seed_business(f: &Fixture, phone: &str) -> i64 {
    f.store
        .create_business("Biz", phone, "hello", None, session::now())
        .await
        .unwrap()
}

pub async fn seed_user(f: &Fixture, business: i64, email: &str, role: &str) -> i64 {
    let hash = password::hash("correct horse battery");
    f.store
        .create_user(business, email, &hash, role, session::now())
        .await
        .unwrap()
        .id
}

pub fn peer(req: TestRequest) -> TestRequest {
    req.peer_addr("203.0.113.5:40000".parse().unwrap())
}

pub fn login_req(email: &str, pw: &str) -> actix_http::Request {
    peer(TestRequest::post().uri("/api/auth/login"))
        .set_json(json!({ "email": email, "password": pw }))
        .to_request()
}

pub async fn body_json<B: actix_web::body::MessageBody>(res: ServiceResponse<B>) -> (StatusCode, Value, String) {
    let status = res.status();
    let cookie = res
        .headers()
        .get(header::SET_COOKIE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = actix_web::body::to_bytes(res.into_body()).await.ok().unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null), cookie)
}

pub async fn login<S, B>(app: &S, email: &str) -> String
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: actix_web::body::MessageBody,
{
    let (status, body, _) = body_json(app.call(login_req(email, "correct horse battery")).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

pub fn bearer(req: TestRequest, token: &str) -> TestRequest {
    peer(req).insert_header((header::AUTHORIZATION, format!("Bearer {token}")))
}
