//! `serve`: logging, boot validation, migrations, bind, ready, graceful drain.

use std::net::TcpListener;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_http::{ConnectionType, HttpMessage as _, HttpService, Request, Response, StatusCode};
use actix_service::{IntoServiceFactory, Service, ServiceFactory, ServiceFactoryExt as _, fn_service, map_config};
use actix_web::ResponseError as _;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::AppConfig;
use actix_web::http::header::{self, HeaderValue};
use actix_web::web;
use callplane_plugin_api::app::{self, AppParts, StateInstaller};
use callplane_plugin_api::telemetry::value::truncated;
use callplane_plugin_api::{ApiError, MAX_BODY, protective_headers};
use callplane_telemetry::request::REQUEST_ID_HEADER;
use callplane_telemetry::{
    BOOT_TARGET, Console, HttpMetrics, HttpTelemetry, LogGuard, LogSettings, RequestId, RequestScope,
};
use prometheus_client::registry::Registry;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::boot::{self, PluginStatus};
use crate::cli::{EXIT_CONFIG, lazy_db};
use crate::config::Config;
use crate::deploy;
use crate::finding::{Finding, Level};
use crate::health::{HostState, host_routes};
use crate::report;

/// How long in-flight requests get to finish once the listener has stopped.
const GRACEFUL_TIMEOUT_SECS: u64 = 30;

/// How long a client may take to send a request's head.
const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Installs logging for `serve`: console plus the rolling files. An unusable log directory is a
/// CP105 error (without a log file the call trace would be lost); logging then falls back to the
/// console so the findings are still printed. Every line names the instance (`instance=…`).
pub fn init_logging(config: &Config, findings: &mut Vec<Finding>) -> Option<LogGuard> {
    callplane_telemetry::set_instance_id(&config.settings.instance_id);
    let settings = LogSettings {
        format: config.log_format,
        filter: config.log_filter.clone(),
        dir: Some(config.log_dir.clone()),
        console: Console::Stdout,
    };
    match callplane_telemetry::logging::init(&settings) {
        Ok(guard) => Some(guard),
        Err(error) => {
            findings.push(Finding::error(
                "CP105",
                None,
                error.to_string(),
                "create the log directory and give the service user write access, or set CALLPLANE_LOG_DIR",
            ));
            callplane_telemetry::logging::init(&LogSettings { dir: None, ..settings }).ok()
        }
    }
}

/// Validates, migrates, binds and serves until a signal; returns the process exit code.
/// With `no_migrate`, a pending migration refuses the boot (CP012) instead of being applied.
pub async fn run(config: Config, mut findings: Vec<Finding>, started: Instant, no_migrate: bool) -> ExitCode {
    let db = lazy_db(&config, &mut findings);
    let mut registry = Registry::with_prefix("callplane");
    let plan = boot::plan(
        &config,
        &callplane_plugin_api::linked_plugins(),
        &db,
        &mut registry,
        host_routes(),
    );
    findings.extend(plan.findings.iter().cloned());
    findings.extend(
        deploy::static_checks(&config, &plan.active_plugins(), Level::Warning)
            .into_iter()
            .filter(|f| f.id != "CP105"),
    );

    tracing::info!(target: BOOT_TARGET, "[BOOT] {}", config.file_line());
    for p in &plan.plugins {
        match p.status {
            PluginStatus::Active => tracing::info!(
                target: BOOT_TARGET,
                plugin = %p.name,
                version = %p.version,
                routes = p.routes,
                critical = p.critical,
                "{}",
                report::registered_line(p)
            ),
            PluginStatus::Disabled => {
                tracing::warn!(target: BOOT_TARGET, plugin = %p.name, "{}", report::degraded_line(p))
            }
            PluginStatus::Missing | PluginStatus::Failed => {}
        }
    }
    for finding in &findings {
        let [head, hint] = finding.lines();
        let plugin = finding.plugin.as_deref();
        match finding.level {
            Level::Error => tracing::error!(target: BOOT_TARGET, id = finding.id, plugin, "{head}"),
            Level::Warning => {
                tracing::warn!(target: BOOT_TARGET, id = finding.id, plugin, "{head}")
            }
        }
        match finding.level {
            Level::Error => tracing::error!(target: BOOT_TARGET, "{hint}"),
            Level::Warning => tracing::warn!(target: BOOT_TARGET, "{hint}"),
        }
    }
    if findings.iter().any(|f| f.level == Level::Error) {
        tracing::error!(target: BOOT_TARGET, "{}", report::fatal_line(&findings));
        return ExitCode::from(EXIT_CONFIG);
    }

    // `register` only declared; what a plugin must create or open to serve, it does now.
    let mut start_failures = Vec::new();
    for active in &plan.active {
        for (name, hook) in &active.registration.start_hooks {
            if let Err(failure) = hook() {
                start_failures.push(Finding::error(
                    failure.id,
                    Some(active.plugin.name),
                    format!(
                        "plugin '{}' cannot start ({name}): {}",
                        active.plugin.name, failure.message
                    ),
                    failure.hint,
                ));
            }
        }
    }
    if !start_failures.is_empty() {
        for finding in &start_failures {
            let [head, hint] = finding.lines();
            tracing::error!(target: BOOT_TARGET, id = finding.id, plugin = finding.plugin.as_deref(), "{head}");
            tracing::error!(target: BOOT_TARGET, "{hint}");
        }
        tracing::error!(target: BOOT_TARGET, "{}", report::fatal_line(&start_failures));
        return ExitCode::from(EXIT_CONFIG);
    }

    if no_migrate {
        match plan.migration_status(&db).await {
            Ok(list) => {
                let behind: Vec<String> = list
                    .iter()
                    .filter(|m| m.state.needs_attention())
                    .map(|m| format!("{} {} ({}, {})", m.plugin, m.version, m.description, m.state.as_str()))
                    .collect();
                if !behind.is_empty() {
                    let finding = Finding::error(
                        "CP012",
                        None,
                        format!(
                            "serve --no-migrate: the database {} is not up to date: {}",
                            db.redacted_url(),
                            behind.join("; ")
                        ),
                        "run `callplane migrate` (the migration job, with a role that may change the schema) first; \
                         `callplane migrate status` lists what is pending",
                    );
                    let [head, hint] = finding.lines();
                    tracing::error!(target: BOOT_TARGET, id = finding.id, "{head}");
                    tracing::error!(target: BOOT_TARGET, "{hint}");
                    tracing::error!(target: BOOT_TARGET, "{}", report::fatal_line(&[finding]));
                    return ExitCode::from(EXIT_CONFIG);
                }
            }
            Err(error) => {
                tracing::error!(target: BOOT_TARGET, error = %error, database = db.redacted_url(), "[BOOT] ❌ cannot read the schema versions");
                return ExitCode::FAILURE;
            }
        }
    } else if let Err(error) = plan.migrate(&db).await {
        tracing::error!(target: BOOT_TARGET, error = %error, database = db.redacted_url(), "[BOOT] ❌ migrations failed");
        return ExitCode::FAILURE;
    }

    let listener = match TcpListener::bind(config.bind) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(target: BOOT_TARGET, bind = %config.bind, error = %error, "[BOOT] ❌ cannot bind");
            return ExitCode::FAILURE;
        }
    };
    let bound = listener.local_addr().unwrap_or(config.bind);

    let telemetry = web::Data::new(HttpTelemetry {
        proxies: config.settings.trusted_proxies.clone(),
        metrics: HttpMetrics::register(&mut registry),
    });
    let checks = plan.readiness_checks();
    let tasks: Vec<_> = plan
        .active
        .iter()
        .flat_map(|a| {
            a.registration
                .tasks
                .iter()
                .map(|(name, task)| (a.plugin.name, name.clone(), task.clone()))
        })
        .collect();
    let plugin_count = plan.active.len();
    let route_count = plan.routes.len();
    let openapi = web::Data::new(crate::health::OpenApiDocument(crate::report::openapi_json(
        &plan.routes,
    )));
    let host = web::Data::new(HostState::new(db.clone(), plan.plugins, checks, registry));
    let host_state = host.clone();
    let mut states: Vec<StateInstaller> = plan
        .active
        .iter()
        .flat_map(|a| a.registration.states.iter().cloned())
        .collect();
    states.push(Arc::new(move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(host_state.clone()).app_data(openapi.clone());
    }));
    // Built once; every worker builds its app from it, with the same function the tests use.
    let parts = Arc::new(AppParts {
        routes: plan.routes,
        providers: plan.providers,
        states,
        telemetry,
        db: web::Data::new(db.clone()),
    });
    let app = move || app::build(&parts);
    let server = match http_server(listener, app) {
        Ok(server) => server,
        Err(error) => {
            tracing::error!(target: BOOT_TARGET, bind = %bound, error = %error, "[BOOT] ❌ cannot listen");
            return ExitCode::FAILURE;
        }
    };

    // Signal handlers are installed before the ready line: a SIGTERM right after it must drain,
    // not kill the process with the default action.
    let signals = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(error), _) | (_, Err(error)) => {
            tracing::error!(target: BOOT_TARGET, error = %error, "[BOOT] ❌ cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    let boot_ms = started.elapsed().as_millis();
    tracing::info!(
        target: BOOT_TARGET,
        bind = %bound,
        plugins = plugin_count,
        routes = route_count,
        boot_ms = u64::try_from(boot_ms).unwrap_or(u64::MAX),
        "[BOOT] ready bind={bound} plugins={plugin_count} routes={route_count} boot_ms={boot_ms}"
    );

    for (plugin, name, task) in tasks {
        tracing::debug!(plugin, task = %name, "[BOOT] background task started");
        actix_web::rt::spawn(task());
    }
    let (force_stop, forced) = tokio::sync::oneshot::channel();
    actix_web::rt::spawn(shutdown_on_signal(
        signals,
        server.handle(),
        host,
        Duration::from_secs(config.shutdown_drain_secs),
        force_stop,
    ));
    // A second signal abandons the graceful stop: returning here drops the log guard (flushing
    // every line) and ends the process, worker threads included.
    let result = tokio::select! {
        result = server => result,
        Ok(()) = forced => {
            tracing::warn!(target: BOOT_TARGET, "[SHUTDOWN] stopped at once; in-flight requests were cut off");
            return ExitCode::FAILURE;
        }
    };
    db.close().await;
    match result {
        Ok(()) => {
            tracing::info!(target: BOOT_TARGET, "[SHUTDOWN] stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(target: BOOT_TARGET, error = %error, "[SHUTDOWN] server failed");
            ExitCode::FAILURE
        }
    }
}

/// The HTTP server over `listener`: what `actix_web::HttpServer::listen` builds, with our own
/// handler of `Expect: 100-continue` ([`expect_continue`]), which `HttpServer` has no setting
/// for. Signals are ours (readiness must flip before the listener closes), so actix's are off.
fn http_server<F, I, S, B>(listener: TcpListener, app: F) -> std::io::Result<actix_server::Server>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: IntoServiceFactory<S, Request>,
    S: ServiceFactory<Request, Config = AppConfig> + 'static,
    S::Error: Into<actix_web::Error> + 'static,
    S::InitError: std::fmt::Debug,
    S::Response: Into<Response<B>> + 'static,
    <S::Service as Service<Request>>::Future: 'static,
    S::Service: 'static,
    B: MessageBody + 'static,
{
    let builder = actix_server::Server::build()
        .disable_signals()
        .shutdown_timeout(GRACEFUL_TIMEOUT_SECS);
    // Idle keep-alive connections close as soon as a graceful stop begins, as under HttpServer.
    let stopping = builder.graceful_shutdown_signal();
    let local = listener.local_addr()?;
    let builder = builder.listen("callplane-http", listener, move || {
        let stopping = stopping.clone();
        let app = app().into_factory().map_err(|error| error.into().error_response());
        HttpService::build()
            .graceful_shutdown_signal(move || {
                let stopping = stopping.clone();
                async move { stopping.notified().await }
            })
            .client_request_timeout(CLIENT_REQUEST_TIMEOUT)
            .client_disconnect_timeout(Duration::from_secs(1))
            // Small answers and a media stream's 20 ms frames leave at once (no Nagle delay).
            .tcp_nodelay(true)
            .local_addr(local)
            .expect(fn_service(expect_continue))
            .finish(map_config(app, |()| AppConfig::default()))
            .tcp()
    })?;
    Ok(builder.run())
}

/// Answers `Expect: 100-continue`: a request that announces a body larger than any route takes
/// ([`MAX_BODY`]) gets its 413 at once, before `100 Continue` could invite the body, and the
/// connection closes (the client may send the body anyway). The answer carries what every answer
/// carries (a request id, `nosniff`, `no-store`), although no middleware sees it.
async fn expect_continue(req: Request) -> Result<Request, BodyTooLarge> {
    let length = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let Some(length) = length.filter(|l| *l > MAX_BODY as u64) else {
        return Ok(req);
    };
    let id = RequestId::generate();
    let scope = RequestScope::new(id.clone(), None);
    let mut res = scope.in_scope(|| {
        tracing::info!(method = %req.method(), path = %truncated(req.path(), 256), length, status = 413, "[HTTP] request rejected: the body it announces is too large (before 100 Continue)");
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("request body is too large (at most {MAX_BODY} bytes)"),
        )
        .error_response()
    });
    res.head_mut().set_connection_type(ConnectionType::Close);
    protective_headers(res.headers_mut());
    if let Ok(value) = HeaderValue::from_str(id.as_str()) {
        res.headers_mut().insert(REQUEST_ID_HEADER.clone(), value);
    }
    Err(BodyTooLarge(res.into()))
}

/// The answer of [`expect_continue`] to an oversized body.
struct BodyTooLarge(Response<BoxBody>);

impl From<BodyTooLarge> for Response<BoxBody> {
    fn from(refused: BodyTooLarge) -> Self {
        refused.0
    }
}

/// First SIGTERM/SIGINT: readiness goes 503 at once and the instance keeps serving for the drain
/// period, so the load balancer notices before the listener closes; then actix stops accepting and
/// lets in-flight requests finish. A second signal at any point stops at once (through `force`:
/// actix handles one stop command at a time, so a second `stop` would wait for the first).
async fn shutdown_on_signal(
    (mut term, mut int): (Signal, Signal),
    handle: actix_web::dev::ServerHandle,
    host: web::Data<HostState>,
    drain: Duration,
    force: tokio::sync::oneshot::Sender<()>,
) {
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    host.start_draining();
    tracing::info!(
        target: BOOT_TARGET,
        signal = name,
        drain_secs = drain.as_secs(),
        "[SHUTDOWN] draining: readiness is 503, still serving; a second signal stops at once"
    );
    let stop_gracefully = async {
        tokio::time::sleep(drain).await;
        tracing::info!(
            target: BOOT_TARGET,
            timeout_secs = GRACEFUL_TIMEOUT_SECS,
            "[SHUTDOWN] drain over: closing the listener, finishing in-flight requests"
        );
        handle.stop(true).await;
    };
    tokio::select! {
        () = stop_gracefully => {}
        _ = term.recv() => stop_now(force),
        _ = int.recv() => stop_now(force),
    }
}

fn stop_now(force: tokio::sync::oneshot::Sender<()>) {
    tracing::warn!(target: BOOT_TARGET, "[SHUTDOWN] second signal: stopping now");
    let _ = force.send(());
}
