//! Fixture plugins that prove the host machinery without the real feature plugins.
//!
//! Sessions are faked with `Authorization: Bearer <business_id>:<page>,<page>…` and signatures with
//! `X-Twilio-Signature: valid`: the point is the host's enforcement, not the credentials.

use std::time::Duration;

use actix_web::dev::ServiceRequest;
use actix_web::http::StatusCode;
use actix_web::{HttpMessage, HttpResponse, web};
use callplane_plugin_api::storage::{Db, sqlx};
use callplane_plugin_api::{
    Access, AccessProvider, ApiError, Capability, Migration, Principal, ReadinessReport, RegisterError, Registrar,
    RoutePlugin,
};
use futures_util::future::LocalBoxFuture;
use serde::Deserialize;
use serde_json::json;

/// Resolves the fake bearer token into a [`Principal`].
struct HeaderSessions;

impl AccessProvider for HeaderSessions {
    fn authorize<'a>(
        &'a self,
        req: &'a mut ServiceRequest,
        access: Access,
    ) -> LocalBoxFuture<'a, Result<(), HttpResponse>> {
        Box::pin(async move {
            let token = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .and_then(|t| t.split_once(':'))
                .and_then(|(business, pages)| Some((business.parse::<i64>().ok()?, pages.to_owned())));
            let Some((business_id, pages)) = token else {
                return Err(ApiError::response(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "a valid session is required",
                ));
            };
            let pages: Vec<String> = pages.split(',').filter(|p| !p.is_empty()).map(str::to_owned).collect();
            let admin = pages.iter().any(|p| p == "admin");
            let allowed = match access {
                Access::PageAccess(page) => pages.iter().any(|p| p == page),
                Access::Admin => admin,
                _ => true,
            };
            if !allowed {
                return Err(ApiError::response(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "your role lacks this page",
                ));
            }
            req.extensions_mut().insert(Principal {
                user_id: 1,
                business_id,
                email: "fixture@example.com".into(),
                role: if admin { "admin".into() } else { "agent".into() },
                write_pages: pages.clone(),
                pages,
                admin,
            });
            Ok(())
        })
    }
}

/// Accepts webhooks carrying `X-Twilio-Signature: valid`; anything else is 403 with empty TwiML.
struct FakeSignatures;

impl AccessProvider for FakeSignatures {
    fn authorize<'a>(&'a self, req: &'a mut ServiceRequest, _: Access) -> LocalBoxFuture<'a, Result<(), HttpResponse>> {
        Box::pin(async move {
            match req.headers().get("x-twilio-signature").and_then(|v| v.to_str().ok()) {
                Some("valid") => Ok(()),
                _ => Err(HttpResponse::Forbidden().content_type("text/xml").body("<Response/>")),
            }
        })
    }
}

async fn login() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "token": "1:notes" }))
}

async fn me(who: Principal) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "business_id": who.business_id, "pages": who.pages, "admin": who.admin }))
}

/// A fixture `permissions`: the session provider plus login and `/api/me`.
pub fn register_permissions(reg: &mut Registrar<'_>) -> Result<(), RegisterError> {
    reg.provide_access(Capability::Sessions, HeaderSessions);
    reg.post("/api/auth/login", Access::Public, login)
        .get("/api/me", Access::Authenticated, me);
    Ok(())
}

const NOTES_MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "notes",
    sqlite: "CREATE TABLE fixture_notes (id INTEGER PRIMARY KEY, business_id BIGINT NOT NULL, body TEXT NOT NULL);",
    postgres: "CREATE TABLE fixture_notes (id BIGSERIAL PRIMARY KEY, business_id BIGINT NOT NULL, body TEXT NOT NULL);",
}];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewNote {
    body: String,
}

async fn list_notes(who: Principal, db: web::Data<Db>) -> Result<HttpResponse, ApiError> {
    let rows: Vec<(i64, String)> = db
        .run(|pool| {
            sqlx::query_as("SELECT id, body FROM fixture_notes WHERE business_id = $1 ORDER BY id")
                .bind(who.business_id)
                .fetch_all(pool)
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(HttpResponse::Ok().json(rows))
}

async fn add_note(who: Principal, db: web::Data<Db>, note: web::Json<NewNote>) -> Result<HttpResponse, ApiError> {
    if note.body.is_empty() || note.body.len() > 1000 {
        return Err(ApiError::unprocessable("body must be 1–1000 bytes"));
    }
    db.run(|pool| {
        sqlx::query("INSERT INTO fixture_notes (business_id, body) VALUES ($1, $2)")
            .bind(who.business_id)
            .bind(&note.body)
            .execute(pool)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(HttpResponse::Created().finish())
}

/// A fixture feature plugin: a migration, page-protected routes, a readiness check.
pub fn register_notes(reg: &mut Registrar<'_>) -> Result<(), RegisterError> {
    reg.migrations(NOTES_MIGRATIONS);
    reg.get("/api/notes", Access::PageAccess("notes"), list_notes).post(
        "/api/notes",
        Access::PageAccess("notes"),
        add_note,
    );
    reg.readiness(
        "backlog",
        std::sync::Arc::new(|| {
            Box::pin(async {
                ReadinessReport {
                    ready: true,
                    without_database: false,
                    detail: json!({ "backlog": 0 }),
                }
            })
        }),
    );
    Ok(())
}

async fn webhook_ping() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/xml")
        .body("<Response><Say>pong</Say></Response>")
}

/// A fixture `twilio`: the signature provider and one webhook.
pub fn register_twilio(reg: &mut Registrar<'_>) -> Result<(), RegisterError> {
    reg.provide_access(Capability::TwilioSignature, FakeSignatures);
    reg.post("/webhook/ping", Access::TwilioSignature, webhook_ping);
    Ok(())
}

#[derive(Deserialize)]
struct SlowQuery {
    ms: u64,
}

/// What `GET /fixture/slow` prints on the console when a request reaches it: a test waits for it
/// (with [`Server::wait_for_output`](crate::harness::Server::wait_for_output)) to know that the
/// request is in flight.
pub const SLOW_STARTED: &str = "[FIXTURE] slow request started";

async fn slow(query: web::Query<SlowQuery>) -> HttpResponse {
    // Straight to the console, which the harness reads: the fixture has no logger of its own.
    println!("{SLOW_STARTED} ms={}", query.ms);
    actix_web::rt::time::sleep(Duration::from_millis(query.ms.min(30_000))).await;
    HttpResponse::Ok().body("done")
}

#[allow(clippy::panic)]
async fn boom() -> HttpResponse {
    panic!("fixture: handler panicked")
}

/// A plugin with a slow public route (`GET /fixture/slow?ms=`) for shutdown tests and one that
/// panics (`GET /fixture/panic`).
pub fn register_slow(reg: &mut Registrar<'_>) -> Result<(), RegisterError> {
    reg.get("/fixture/slow", Access::Public, slow)
        .get("/fixture/panic", Access::Public, boom);
    Ok(())
}

/// Registration that fails with an error.
pub fn register_error(_: &mut Registrar<'_>) -> Result<(), RegisterError> {
    Err(RegisterError::Other("fixture: cannot reach its dependency".into()))
}

/// Registration that panics (the old app's swallowed import error, made loud).
pub fn register_panic(_: &mut Registrar<'_>) -> Result<(), RegisterError> {
    panic!("fixture: registration panicked")
}

/// A plugin that registers nothing.
pub fn register_nothing(_: &mut Registrar<'_>) -> Result<(), RegisterError> {
    Ok(())
}

/// Declares `GET /api/notes` again (CP003 against `notes`).
pub fn register_colliding(reg: &mut Registrar<'_>) -> Result<(), RegisterError> {
    reg.get("/api/notes", Access::PageAccess("notes"), list_notes);
    Ok(())
}

/// Webhook routes with the wrong policies (CP007, CP008).
pub fn register_bad_webhooks(reg: &mut Registrar<'_>) -> Result<(), RegisterError> {
    reg.post("/webhook/open", Access::Public, webhook_ping).post(
        "/webhook/paged",
        Access::PageAccess("calls"),
        webhook_ping,
    );
    Ok(())
}

/// A public API route that is not login (CP009).
pub fn register_public_api(reg: &mut Registrar<'_>) -> Result<(), RegisterError> {
    reg.get("/api/leak", Access::Public, login);
    Ok(())
}

/// Calendar-like routes behind page access, in a binary without any session provider (CP004).
pub fn register_agenda(reg: &mut Registrar<'_>) -> Result<(), RegisterError> {
    reg.get("/api/agenda", Access::PageAccess("calendar"), list_notes);
    Ok(())
}

/// Builds a fixture plugin value for `inventory::submit!`.
pub const fn plugin(
    name: &'static str,
    requires: &'static [&'static str],
    critical: bool,
    register: fn(&mut Registrar<'_>) -> Result<(), RegisterError>,
) -> RoutePlugin {
    RoutePlugin {
        name,
        version: "0.0.1-fixture",
        summary: "fixture",
        requires,
        critical,
        register,
        commands: &[],
        config: &[],
        deploy_checks: &[],
    }
}

/// The fixture `permissions` plugin.
pub const PERMISSIONS: RoutePlugin = plugin("permissions", &[], false, register_permissions);
/// The fixture `notes` plugin (requires `permissions`).
pub const NOTES: RoutePlugin = plugin("notes", &["permissions"], false, register_notes);
/// The fixture `twilio` plugin.
pub const TWILIO: RoutePlugin = plugin("twilio", &[], false, register_twilio);
/// The fixture `slow` plugin.
pub const SLOW: RoutePlugin = plugin("slow", &[], false, register_slow);
