//! The host's own routes: `/livez`, `/readyz`, `/metrics`, `/openapi.json`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix_web::http::header::ContentType;
use actix_web::{HttpResponse, web};
use callplane_plugin_api::openapi::RouteDoc;
use callplane_plugin_api::{Access, ApiError, ReadinessCheck, RouteSpec};
use callplane_storage::Db;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::json;

use crate::boot::{HOST, PluginReport, PluginStatus};

/// How long `/readyz` waits for the database before calling it unreachable.
const DB_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a database probe result is reused: a flood of `/readyz` must not take the pool's
/// connections away from the webhooks.
const DB_PROBE_TTL: Duration = Duration::from_secs(1);
/// How long a plugin's readiness check may take before it counts as not ready.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Shared by the health handlers and the shutdown sequence.
pub struct HostState {
    draining: AtomicBool,
    draining_gauge: Gauge,
    database_up: Gauge,
    db: Db,
    plugins: Vec<PluginReport>,
    checks: Vec<(String, String, ReadinessCheck)>,
    registry: Registry,
    last_probe: std::sync::Mutex<Option<(std::time::Instant, bool)>>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    plugin: String,
    version: String,
    critical: String,
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

impl HostState {
    /// Registers the boot-info series (`callplane_build_info`, `callplane_plugin_info`,
    /// `callplane_draining`) and takes ownership of the finished registry.
    pub fn new(
        db: Db,
        plugins: Vec<PluginReport>,
        checks: Vec<(String, String, ReadinessCheck)>,
        mut registry: Registry,
    ) -> Self {
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .set(1);
        registry.register("build_info", "callplane build", build);
        let info = Family::<PluginLabels, Gauge>::default();
        for p in &plugins {
            let labels = PluginLabels {
                plugin: p.name.clone(),
                version: p.version.clone(),
                critical: p.critical.to_string(),
                status: serde_json::to_value(p.status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
            };
            info.get_or_create(&labels).set(1);
        }
        registry.register("plugin_info", "Plugins known at boot, with their status", info);
        let draining_gauge = Gauge::default();
        registry.register(
            "draining",
            "1 while the instance drains before stopping",
            draining_gauge.clone(),
        );
        let database_up = Gauge::default();
        registry.register(
            "database_up",
            "1 while the database answered the last readiness probe, 0 after it did not",
            database_up.clone(),
        );
        Self {
            draining: AtomicBool::new(false),
            draining_gauge,
            database_up,
            db,
            plugins,
            checks,
            registry,
            last_probe: std::sync::Mutex::new(None),
        }
    }

    /// Turns readiness off for good: the load balancer stops sending new traffic.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.draining_gauge.set(1);
    }

    /// Whether the database answers, probed at most once per [`DB_PROBE_TTL`]. The error itself is
    /// logged, not returned: `/readyz` is public.
    async fn database_reachable(&self) -> bool {
        let cached = *self
            .last_probe
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, reachable)) = cached.filter(|(at, _)| at.elapsed() < DB_PROBE_TTL) {
            return reachable;
        }
        let reachable = match self.db.ping(DB_PROBE_TIMEOUT).await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(error = %error, database = self.db.redacted_url(), "[HEALTH] database unreachable");
                false
            }
        };
        *self
            .last_probe
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((std::time::Instant::now(), reachable));
        self.database_up.set(i64::from(reachable));
        reachable
    }

    /// Whether the instance is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

/// The host's routes, declared like any plugin's so `routes` lists them and collisions are found.
pub fn host_routes() -> Vec<RouteSpec> {
    use actix_web::http::Method;
    let documented = |route: RouteSpec, doc: RouteDoc| RouteSpec {
        doc: Some(std::sync::Arc::new(doc)),
        ..route
    };
    vec![
        documented(
            RouteSpec::new(HOST, Method::GET, "/livez", Access::Public, livez),
            RouteDoc::new("Liveness: the process serves HTTP").json::<Alive>(200, "alive"),
        ),
        documented(
            RouteSpec::new(HOST, Method::GET, "/readyz", Access::Public, readyz),
            RouteDoc::new("Readiness: whether to send this instance traffic")
                .json::<Readiness>(200, "ready, or degraded but able to keep every call")
                .json::<Readiness>(503, "draining, a critical plugin down, or a call could not be kept"),
        ),
        documented(
            RouteSpec::new(HOST, Method::GET, "/metrics", Access::Public, metrics),
            RouteDoc::new("Prometheus / OpenMetrics metrics").text(
                200,
                "the metrics",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ),
        ),
        documented(
            RouteSpec::new(HOST, Method::GET, OPENAPI_PATH, Access::Public, openapi),
            RouteDoc::new("This document: the HTTP API as OpenAPI 3.1").json::<OpenApiDocument>(200, "the document"),
        ),
    ]
}

/// Where the OpenAPI document is served.
pub const OPENAPI_PATH: &str = "/openapi.json";

/// The OpenAPI document of the route table this instance serves, built once at boot.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[schema(value_type = Object)]
pub struct OpenApiDocument(pub serde_json::Value);

/// `/livez`'s answer (documented; the handler builds it as JSON).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)] // a schema only
struct Alive {
    /// Always `alive`.
    status: String,
}

/// `/readyz`'s answer (documented; the handler builds it as JSON).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)] // a schema only
struct Readiness {
    /// `ready`, `degraded` or `not_ready`.
    status: String,
    /// What is degraded (`database`, …).
    degraded: Vec<String>,
    /// Whether the instance is draining (shutting down).
    draining: bool,
    /// The database's kind and whether it answered.
    #[schema(value_type = Object)]
    database: serde_json::Value,
    /// Every plugin: name, version, critical, status.
    #[schema(value_type = Vec<Object>)]
    plugins: Vec<serde_json::Value>,
    /// Each plugin's readiness checks, by `plugin.check`.
    #[schema(value_type = Object)]
    checks: serde_json::Value,
}

async fn openapi(document: web::Data<OpenApiDocument>) -> HttpResponse {
    HttpResponse::Ok().json(&document.0)
}

async fn livez() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "alive" }))
}

async fn readyz(state: web::Data<HostState>) -> HttpResponse {
    let draining = state.is_draining();
    let db_reachable = state.database_reachable().await;
    let mut checks = serde_json::Map::new();
    let mut checks_ready = true;
    let mut keep_without_database = true;
    for (plugin, name, check) in &state.checks {
        let report = tokio::time::timeout(CHECK_TIMEOUT, check()).await.unwrap_or_else(|_| {
            tracing::warn!(plugin = %plugin, check = %name, "[HEALTH] readiness check timed out");
            callplane_plugin_api::ReadinessReport {
                ready: false,
                without_database: false,
                detail: json!("timed out"),
            }
        });
        checks_ready &= report.ready;
        keep_without_database &= report.without_database;
        checks.insert(
            format!("{plugin}.{name}"),
            json!({ "ready": report.ready, "without_database": report.without_database, "detail": report.detail }),
        );
    }
    let critical_down = state
        .plugins
        .iter()
        .any(|p| p.critical && p.status != PluginStatus::Active);
    // "Send me traffic": an instance whose database is away stays in rotation while every plugin
    // still keeps its promises without it (calls go to the spool); it leaves when draining, when a
    // critical plugin is down, or when something could no longer be kept.
    let mut degraded: Vec<String> = state
        .plugins
        .iter()
        .filter(|p| p.status != PluginStatus::Active)
        .map(|p| format!("plugin:{}", p.name))
        .collect();
    if !db_reachable {
        degraded.insert(0, "database".to_owned());
    }
    let ready = !draining && !critical_down && checks_ready && (db_reachable || keep_without_database);
    let status = match (ready, degraded.is_empty()) {
        (false, _) => "not_ready",
        (true, false) => "degraded",
        (true, true) => "ready",
    };
    let body = json!({
        "status": status,
        "degraded": degraded,
        "draining": draining,
        "database": {
            "kind": state.db.kind().as_str(),
            "reachable": db_reachable,
        },
        "plugins": state.plugins.iter().map(|p| json!({
            "name": p.name,
            "version": p.version,
            "critical": p.critical,
            "status": p.status,
        })).collect::<Vec<_>>(),
        "checks": checks,
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

async fn metrics(state: web::Data<HostState>) -> Result<HttpResponse, ApiError> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &state.registry)
        .map_err(|e| ApiError::internal(format!("encoding metrics: {e}")))?;
    Ok(HttpResponse::Ok()
        .insert_header(ContentType(
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
                .parse()
                .map_err(|_| ApiError::internal("mime"))?,
        ))
        .body(text))
}

#[cfg(test)]
mod tests {
    use actix_web::{App, test as atest};
    use serde_json::Value;

    use super::*;
    use crate::boot::PluginReport;

    fn plugin(name: &str, critical: bool, status: PluginStatus) -> PluginReport {
        PluginReport {
            name: name.into(),
            version: "1".into(),
            summary: String::new(),
            critical,
            requires: vec![],
            status,
            routes: 0,
            reason: None,
        }
    }

    async fn probe(db: Db, plugins: Vec<PluginReport>, draining: bool) -> (u16, Value) {
        let state = web::Data::new(HostState::new(db, plugins, vec![], Registry::default()));
        if draining {
            state.start_draining();
        }
        let app = atest::init_service(App::new().app_data(state).route("/readyz", web::get().to(readyz))).await;
        let res = atest::call_service(&app, atest::TestRequest::get().uri("/readyz").to_request()).await;
        let status = res.status().as_u16();
        (status, atest::read_body_json(res).await)
    }

    #[actix_web::test]
    async fn readiness_follows_database_draining_and_plugins() {
        let sqlite = || Db::connect_lazy("sqlite::memory:").unwrap();
        let (status, body) = probe(sqlite(), vec![plugin("a", true, PluginStatus::Active)], false).await;
        assert_eq!((status, body["status"].as_str()), (200, Some("ready")));

        let (status, body) = probe(sqlite(), vec![plugin("a", true, PluginStatus::Active)], true).await;
        assert_eq!((status, body["draining"].as_bool()), (503, Some(true)));

        let (status, body) = probe(sqlite(), vec![plugin("b", false, PluginStatus::Disabled)], false).await;
        assert_eq!((status, body["status"].as_str()), (200, Some("degraded")));

        let (status, _) = probe(sqlite(), vec![plugin("c", true, PluginStatus::Failed)], false).await;
        assert_eq!(status, 503, "a critical plugin that is not active");

        let down = || Db::connect_lazy("postgres://nobody:pw@127.0.0.1:1/none").unwrap();
        let (status, body) = probe(down(), vec![], false).await;
        assert_eq!(
            status, 200,
            "a database away alone does not take the instance out: {body}"
        );
        assert_eq!(body["status"], "degraded");
        assert_eq!(body["degraded"], json!(["database"]));
        assert_eq!(body["database"]["reachable"], false);
        assert!(
            !body.to_string().contains("pw@"),
            "no credentials in the answer: {body}"
        );
    }

    fn check(ready: bool, without_database: bool) -> (String, String, ReadinessCheck) {
        let check: ReadinessCheck = std::sync::Arc::new(move || {
            Box::pin(async move {
                callplane_plugin_api::ReadinessReport {
                    ready,
                    without_database,
                    detail: json!(null),
                }
            })
        });
        ("p".to_owned(), "c".to_owned(), check)
    }

    async fn probe_checks(db: Db, checks: Vec<(String, String, ReadinessCheck)>) -> (u16, Value, String) {
        let state = web::Data::new(HostState::new(db, vec![], checks, Registry::default()));
        let app = atest::init_service(
            App::new()
                .app_data(state)
                .route("/readyz", web::get().to(readyz))
                .route("/metrics", web::get().to(metrics)),
        )
        .await;
        let res = atest::call_service(&app, atest::TestRequest::get().uri("/readyz").to_request()).await;
        let status = res.status().as_u16();
        let body = atest::read_body_json(res).await;
        let metrics = atest::call_service(&app, atest::TestRequest::get().uri("/metrics").to_request()).await;
        let text = String::from_utf8(atest::read_body(metrics).await.to_vec()).unwrap();
        (status, body, text)
    }

    #[actix_web::test]
    async fn without_a_database_the_instance_stays_only_while_every_check_keeps_its_promises() {
        let down = || Db::connect_lazy("postgres://nobody:pw@127.0.0.1:1/none").unwrap();
        let (status, body, metrics) = probe_checks(down(), vec![check(true, true)]).await;
        assert_eq!((status, body["status"].as_str()), (200, Some("degraded")), "{body}");
        assert!(metrics.contains("database_up 0"), "{metrics}");
        let (status, body, _) = probe_checks(down(), vec![check(true, true), check(true, false)]).await;
        assert_eq!((status, body["status"].as_str()), (503, Some("not_ready")), "{body}");
        // With the database up, a check's answer without it does not matter.
        let (status, body, metrics) =
            probe_checks(Db::connect_lazy("sqlite::memory:").unwrap(), vec![check(true, false)]).await;
        assert_eq!((status, body["status"].as_str()), (200, Some("ready")), "{body}");
        assert!(metrics.contains("database_up 1"), "{metrics}");
        let (status, _, _) = probe_checks(Db::connect_lazy("sqlite::memory:").unwrap(), vec![check(false, true)]).await;
        assert_eq!(status, 503, "a check that is not ready");
    }
}
