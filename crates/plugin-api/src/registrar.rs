//! The [`Registrar`] a plugin declares itself through, the resulting [`Registration`] (data), and
//! [`mount`], which turns route tables into actix services.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use actix_web::body::EitherBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, StatusCode, header};
use actix_web::middleware::{Next, from_fn};
use actix_web::{FromRequest, Handler, Responder, web};
use callplane_storage::{Db, Migration};
use futures_util::future::LocalBoxFuture;
use prometheus_client::registry::Registry;

use crate::{Access, AccessProvider, ApiError, Capability, Settings};

/// Builds a fresh actix [`actix_web::Route`] for a worker. `HttpServer` runs the app factory once
/// per worker thread, so the route table holds factories, not consumed values.
pub type HandlerFactory = Arc<dyn Fn() -> actix_web::Route + Send + Sync>;

/// Adds one piece of plugin state (`web::Data<T>`) to an app.
pub type StateInstaller = Arc<dyn Fn(&mut web::ServiceConfig) + Send + Sync>;

/// A readiness check contributed by a plugin (`/readyz`).
pub type ReadinessCheck = Arc<dyn Fn() -> LocalBoxFuture<'static, ReadinessReport> + Send + Sync>;

/// A task a plugin runs while the server runs (e.g. replaying a spool); started after bind, on
/// the server's runtime, never by `check`, `routes` or commands.
pub type BackgroundTask = Arc<dyn Fn() -> LocalBoxFuture<'static, ()> + Send + Sync>;

/// Work a plugin does when the server starts, and only then (create its spool file, say):
/// `register` only declares, so `check`, `routes` and `plugins` touch nothing. `serve` runs the
/// hooks after validation and before migrations; an error stops the boot (exit 78, nothing bound).
pub type StartHook = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The answer of a [`ReadinessCheck`].
#[derive(Debug, Clone, PartialEq)]
pub struct ReadinessReport {
    /// Whether this check lets the instance take traffic.
    pub ready: bool,
    /// Details shown in `/readyz` (e.g. a spool backlog).
    pub detail: serde_json::Value,
}

/// One declared route: data the host validates before serving.
#[derive(Clone)]
pub struct RouteSpec {
    /// The plugin that declared it (`host` for the host's own routes).
    pub plugin: &'static str,
    /// HTTP method.
    pub method: Method,
    /// Path pattern in actix syntax (`/api/calls/{call_sid}`).
    pub path: String,
    /// Who may call it.
    pub access: Access,
    /// Builds the actix route (method guard and handler, no access check).
    pub handler: HandlerFactory,
}

impl fmt::Debug for RouteSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteSpec")
            .field("plugin", &self.plugin)
            .field("method", &self.method)
            .field("path", &self.path)
            .field("access", &self.access)
            .finish_non_exhaustive()
    }
}

impl RouteSpec {
    /// Builds a route spec from any actix handler.
    pub fn new<F, Args>(plugin: &'static str, method: Method, path: &str, access: Access, handler: F) -> Self
    where
        F: Handler<Args> + Send + Sync,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        let guard = method.clone();
        Self {
            plugin,
            method,
            path: path.to_owned(),
            access,
            handler: Arc::new(move || web::route().method(guard.clone()).to(handler.clone())),
        }
    }

    /// The path with every `{parameter}` replaced by `{}`: two routes with the same method and
    /// shape collide (actix would silently serve only the first).
    pub fn shape(&self) -> String {
        let mut shape = String::with_capacity(self.path.len());
        let mut in_param = false;
        for c in self.path.chars() {
            match c {
                '{' => {
                    in_param = true;
                    shape.push_str("{}");
                }
                '}' => in_param = false,
                _ if !in_param => shape.push(c),
                _ => {}
            }
        }
        shape
    }
}

/// Everything one plugin declared.
#[derive(Default)]
pub struct Registration {
    /// The routes, in declaration order.
    pub routes: Vec<RouteSpec>,
    /// The migrations, in version order.
    pub migrations: Vec<Migration>,
    /// Shared state to add to the app.
    pub states: Vec<StateInstaller>,
    /// Access capabilities this plugin enforces for everyone.
    pub providers: Vec<(Capability, Arc<dyn AccessProvider>)>,
    /// Readiness checks, by name.
    pub readiness: Vec<(String, ReadinessCheck)>,
    /// Background tasks, by name.
    pub tasks: Vec<(String, BackgroundTask)>,
    /// Start hooks, by name.
    pub start_hooks: Vec<(String, StartHook)>,
    /// The type of each piece of shared state, by name (the host refuses two plugins sharing one
    /// type: the second would shadow the first).
    pub state_types: Vec<(std::any::TypeId, &'static str)>,
    /// Malformed declarations (bad paths, migrations out of order, …): the registration counts
    /// as failed.
    pub problems: Vec<String>,
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("routes", &self.routes)
            .field("migrations", &self.migrations.len())
            .field("states", &self.state_types.iter().map(|(_, n)| n).collect::<Vec<_>>())
            .field("providers", &self.providers.iter().map(|(c, _)| *c).collect::<Vec<_>>())
            .field("readiness", &self.readiness.iter().map(|(n, _)| n).collect::<Vec<_>>())
            .field("tasks", &self.tasks.iter().map(|(n, _)| n).collect::<Vec<_>>())
            .field(
                "start_hooks",
                &self.start_hooks.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("problems", &self.problems)
            .finish()
    }
}

/// What a plugin's `register` function declares itself through, in the shape of actix's
/// `configure`: routes with their access policy, migrations, state, access providers and
/// readiness checks. Nothing is served until the host has validated every plugin's declarations.
pub struct Registrar<'a> {
    plugin: &'static str,
    settings: &'a Settings,
    db: &'a Db,
    metrics: &'a mut Registry,
    out: Registration,
}

impl fmt::Debug for Registrar<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registrar")
            .field("plugin", &self.plugin)
            .field("out", &self.out)
            .finish()
    }
}

impl<'a> Registrar<'a> {
    /// A registrar for `plugin`. The host makes one per plugin; plugin tests make their own.
    pub fn new(plugin: &'static str, settings: &'a Settings, db: &'a Db, metrics: &'a mut Registry) -> Self {
        Self {
            plugin,
            settings,
            db,
            metrics,
            out: Registration::default(),
        }
    }

    /// The plugin being registered.
    pub fn plugin(&self) -> &'static str {
        self.plugin
    }

    /// Validated configuration.
    pub fn settings(&self) -> &Settings {
        self.settings
    }

    /// This plugin's own configuration: every key it declared in its
    /// [`RoutePlugin::config`](crate::RoutePlugin::config), validated, defaults filled in.
    pub fn config(&self) -> &crate::PluginConfig {
        self.settings.plugin(self.plugin)
    }

    /// The shared database pool (connects lazily; migrations run after registration).
    pub fn db(&self) -> &Db {
        self.db
    }

    /// This plugin's metrics registry (series are prefixed `callplane_<plugin>_`).
    pub fn metrics(&mut self) -> &mut Registry {
        self.metrics
    }

    /// Declares a route.
    pub fn route<F, Args>(&mut self, method: Method, path: &str, access: Access, handler: F) -> &mut Self
    where
        F: Handler<Args> + Send + Sync,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        if let Err(problem) = check_path(path) {
            self.out.problems.push(format!("{method} {path:?}: {problem}"));
        }
        if let Access::PageAccess(page) = access
            && !is_page_name(page)
        {
            self.out.problems.push(format!(
                "{method} {path}: page name {page:?} must be lowercase [a-z0-9_-]"
            ));
        }
        self.out
            .routes
            .push(RouteSpec::new(self.plugin, method, path, access, handler));
        self
    }

    /// Declares a `GET` route.
    pub fn get<F, Args>(&mut self, path: &str, access: Access, handler: F) -> &mut Self
    where
        F: Handler<Args> + Send + Sync,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        self.route(Method::GET, path, access, handler)
    }

    /// Declares a `POST` route.
    pub fn post<F, Args>(&mut self, path: &str, access: Access, handler: F) -> &mut Self
    where
        F: Handler<Args> + Send + Sync,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        self.route(Method::POST, path, access, handler)
    }

    /// Declares a `PUT` route.
    pub fn put<F, Args>(&mut self, path: &str, access: Access, handler: F) -> &mut Self
    where
        F: Handler<Args> + Send + Sync,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        self.route(Method::PUT, path, access, handler)
    }

    /// Declares a `PATCH` route.
    pub fn patch<F, Args>(&mut self, path: &str, access: Access, handler: F) -> &mut Self
    where
        F: Handler<Args> + Send + Sync,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        self.route(Method::PATCH, path, access, handler)
    }

    /// Declares a `DELETE` route.
    pub fn delete<F, Args>(&mut self, path: &str, access: Access, handler: F) -> &mut Self
    where
        F: Handler<Args> + Send + Sync,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        self.route(Method::DELETE, path, access, handler)
    }

    /// Declares the plugin's migrations (versions strictly increasing: anything else is a
    /// problem `check` reports, not a failure of the first `serve`).
    pub fn migrations(&mut self, migrations: &[Migration]) -> &mut Self {
        self.out.migrations.extend_from_slice(migrations);
        let mut previous = 0;
        for m in &self.out.migrations {
            if m.version <= previous {
                self.out.problems.push(format!(
                    "migration version {} follows version {previous}: versions must increase",
                    m.version
                ));
            }
            previous = previous.max(m.version);
        }
        self
    }

    /// Shares `value` with handlers as `web::Data<T>`; returns the same handle. One piece of state
    /// per type in the whole app: a second one of the same type would shadow the first, so it is
    /// a problem (within a plugin) or a boot finding (across plugins).
    pub fn state<T: Send + Sync + 'static>(&mut self, value: T) -> web::Data<T> {
        let id = std::any::TypeId::of::<T>();
        let name = std::any::type_name::<T>();
        if self.out.state_types.iter().any(|(seen, _)| *seen == id) {
            self.out.problems.push(format!(
                "state of type {name} declared twice (the second would shadow the first)"
            ));
        }
        self.out.state_types.push((id, name));
        let data = web::Data::new(value);
        let installed = data.clone();
        self.out.states.push(Arc::new(move |cfg: &mut web::ServiceConfig| {
            cfg.app_data(installed.clone());
        }));
        data
    }

    /// Provides `capability` to every plugin (at most one plugin may provide each).
    pub fn provide_access(&mut self, capability: Capability, provider: impl AccessProvider) -> &mut Self {
        self.out.providers.push((capability, Arc::new(provider)));
        self
    }

    /// Adds a readiness check reported under `name` in `/readyz`.
    pub fn readiness(&mut self, name: &str, check: ReadinessCheck) -> &mut Self {
        self.out.readiness.push((name.to_owned(), check));
        self
    }

    /// Runs `task` in the background while the server serves.
    pub fn background(&mut self, name: &str, task: BackgroundTask) -> &mut Self {
        self.out.tasks.push((name.to_owned(), task));
        self
    }

    /// Runs `hook` when the server starts (see [`StartHook`]).
    pub fn on_start(&mut self, name: &str, hook: StartHook) -> &mut Self {
        self.out.start_hooks.push((name.to_owned(), hook));
        self
    }

    /// Ends registration and returns the declarations.
    pub fn finish(self) -> Registration {
        self.out
    }
}

fn is_page_name(page: &str) -> bool {
    !page.is_empty()
        && page
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Checks a route path: absolute, no empty segments, no trailing slash, no query or fragment, and
/// `{name}` parameters that are whole segments.
fn check_path(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("paths start with '/'");
    }
    if path.len() > 1 && path.ends_with('/') {
        return Err("paths do not end with '/'");
    }
    for segment in path[1..].split('/') {
        if path == "/" {
            break;
        }
        if segment.is_empty() {
            return Err("empty path segment");
        }
        if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            let mut chars = name.chars();
            let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err("parameters are {name} with name [A-Za-z_][A-Za-z0-9_]*");
            }
        } else if !segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
        {
            return Err("literal segments use [A-Za-z0-9-_.~] (a parameter is a whole segment: {name})");
        }
    }
    Ok(())
}

/// Mounts `routes` into `cfg`: one actix resource per path (so several methods share it and any
/// other method gets a JSON 405 with `Allow`), each route wrapped with the provider of its access
/// policy. A route whose capability has no provider is refused at boot; should one ever get here,
/// it fails closed with 500.
pub fn mount(
    cfg: &mut web::ServiceConfig,
    routes: &[RouteSpec],
    providers: &BTreeMap<Capability, Arc<dyn AccessProvider>>,
) {
    for (path, group) in mount_order(routes) {
        let allow = group.iter().map(|r| r.method.as_str()).collect::<Vec<_>>().join(", ");
        let mut resource = web::resource(path).default_service(web::to(move || {
            let allow = allow.clone();
            async move {
                let mut res = ApiError::response(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    &format!("allowed methods: {allow}"),
                );
                if let Ok(value) = header::HeaderValue::from_str(&allow) {
                    res.headers_mut().insert(header::ALLOW, value);
                }
                res
            }
        }));
        for spec in group {
            let access = spec.access;
            let policy = access
                .capability()
                .map(|capability| providers.get(&capability).cloned());
            resource = resource
                .route((spec.handler)().wrap(from_fn(move |req, next| guard(policy.clone(), access, req, next))));
        }
        cfg.service(resource);
    }
}

/// The routes grouped by path, in the order actix is to try them.
///
/// Actix serves a request from the first resource whose pattern matches, trying them in turn, so
/// a literal segment must come before a parameter in the same position (`/api/calls/outbound`
/// before `/api/calls/{call_sid}`), whatever order the plugins declared them in. Paths without
/// any parameter go first of all, and among them Twilio's webhooks: the busiest routes, whose
/// caller waits on the answer, are matched first. (Two literal paths never match the same
/// request, so their order changes nothing else.)
fn mount_order(routes: &[RouteSpec]) -> Vec<(&str, Vec<&RouteSpec>)> {
    let mut by_path: Vec<(&str, Vec<&RouteSpec>)> = Vec::new();
    for route in routes {
        match by_path.iter_mut().find(|(path, _)| *path == route.path) {
            Some((_, group)) => group.push(route),
            None => by_path.push((&route.path, vec![route])),
        }
    }
    fn key<'a>((path, group): &(&'a str, Vec<&RouteSpec>)) -> (bool, bool, Vec<(bool, &'a str)>) {
        let webhook = group.iter().any(|r| r.access == Access::TwilioSignature);
        (path.contains('{'), !webhook, specificity(path))
    }
    by_path.sort_by(|a, b| key(a).cmp(&key(b)));
    by_path
}

/// Sort key of a path pattern: per segment, literals (`false`) before parameters (`true`).
fn specificity(path: &str) -> Vec<(bool, &str)> {
    path.split('/')
        .map(|segment| (segment.starts_with('{'), segment))
        .collect()
}

/// Every route's own middleware: its access policy, then its handler, and a panic in either
/// answers 500 (JSON, with the request id) for this request only: the panic is caught, logged
/// and counted (`callplane_http_handler_panics_total`), and the worker keeps serving.
///
/// `policy` is `None` for a public route, `Some(None)` for a policy whose provider is missing
/// (refused at boot; should such a route ever be mounted, it fails closed with 500).
async fn guard(
    policy: Option<Option<Arc<dyn AccessProvider>>>,
    access: Access,
    mut req: ServiceRequest,
    next: Next<actix_web::body::BoxBody>,
) -> Result<ServiceResponse<EitherBody<actix_web::body::BoxBody>>, actix_web::Error> {
    use futures_util::FutureExt as _;
    // Routing is done by now, so holding a second handle on the request is harmless.
    let request = req.request().clone();
    let served = std::panic::AssertUnwindSafe(async move {
        match policy {
            None => {}
            Some(None) => {
                tracing::error!(access = %access, path = %req.path(), "[HTTP] no provider for access policy; refusing");
                let res = ApiError::response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "access policy cannot be enforced",
                );
                return Ok(req.into_response(res).map_into_right_body());
            }
            Some(Some(provider)) => {
                if let Err(denied) = provider.authorize(&mut req, access).await {
                    return Ok(req.into_response(denied).map_into_right_body());
                }
            }
        }
        Ok(next.call(req).await?.map_into_left_body())
    });
    match served.catch_unwind().await {
        Ok(result) => result,
        Err(panic) => {
            // A label, so the route pattern and never the path a client sent.
            let route = request.match_pattern().unwrap_or_else(|| "unmatched".to_owned());
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(route = %route, panic = %message, "[HTTP] handler panicked; answered 500");
            if let Some(telemetry) = request.app_data::<web::Data<callplane_telemetry::HttpTelemetry>>() {
                telemetry.metrics.panicked(&route);
            }
            let res = ApiError::response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error; see the server log for this request id",
            );
            Ok(ServiceResponse::new(request, res).map_into_right_body())
        }
    }
}

#[cfg(test)]
mod tests {
    use actix_web::dev::Service;
    use actix_web::test as atest;
    use actix_web::{App, HttpMessage, HttpResponse};

    use super::*;
    use crate::Principal;

    #[test]
    fn paths_are_checked() {
        for ok in [
            "/",
            "/livez",
            "/api/calls/{call_sid}",
            "/webhook/incoming_call",
            "/a.b/c-d_e~",
        ] {
            assert_eq!(check_path(ok), Ok(()), "{ok}");
        }
        for bad in [
            "", "api", "/api/", "/a//b", "/a/{}", "/a/x{id}", "/a/{1d}", "/a b", "/a?x=1", "/a#f",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }

    #[actix_rt::test]
    async fn literal_segments_win_over_parameters_whatever_the_declaration_order() {
        let settings = Settings::default();
        let db = Db::connect_lazy("sqlite::memory:").unwrap();
        let mut metrics = Registry::default();
        let mut reg = Registrar::new("calls", &settings, &db, &mut metrics);
        reg.get(
            "/api/calls/{sid}",
            Access::Public,
            |sid: web::Path<String>| async move { format!("call {sid}") },
        )
        .post("/api/calls/outbound", Access::Public, || async { "dialling" });
        let routes = reg.finish().routes;
        let app = atest::init_service(App::new().configure(|cfg| mount(cfg, &routes, &BTreeMap::new()))).await;
        let post =
            atest::call_and_read_body(&app, atest::TestRequest::post().uri("/api/calls/outbound").to_request()).await;
        assert_eq!(post, "dialling");
        let get = atest::call_and_read_body(&app, atest::TestRequest::get().uri("/api/calls/CA1").to_request()).await;
        assert_eq!(get, "call CA1");
    }

    #[actix_rt::test]
    async fn webhooks_are_tried_first_and_parameters_last() {
        let settings = Settings::default();
        let db = Db::connect_lazy("sqlite::memory:").unwrap();
        let mut metrics = Registry::default();
        let mut reg = Registrar::new("calls", &settings, &db, &mut metrics);
        reg.get("/api/calls/{sid}", Access::Public, || async { "" })
            .get("/livez", Access::Public, || async { "" })
            .post("/webhook/b", Access::TwilioSignature, || async { "" })
            .get("/api/calls/recent", Access::Public, || async { "" })
            .post("/webhook/a", Access::TwilioSignature, || async { "" })
            .post("/api/calls/recent", Access::Public, || async { "" });
        let routes = reg.finish().routes;
        let order: Vec<(&str, usize)> = mount_order(&routes)
            .into_iter()
            .map(|(path, group)| (path, group.len()))
            .collect();
        assert_eq!(
            order,
            [
                ("/webhook/a", 1),
                ("/webhook/b", 1),
                ("/api/calls/recent", 2),
                ("/livez", 1),
                ("/api/calls/{sid}", 1)
            ]
        );
    }

    #[test]
    fn shapes_ignore_parameter_names() {
        let a = RouteSpec::new("a", Method::GET, "/api/x/{id}", Access::Public, || async { "" });
        let b = RouteSpec::new("b", Method::GET, "/api/x/{other_id}", Access::Public, || async { "" });
        assert_eq!(a.shape(), "/api/x/{}");
        assert_eq!(a.shape(), b.shape());
    }

    /// Lets a request in when it carries `x-user: <business>`, as a `Principal` of that business.
    struct HeaderSessions;

    impl AccessProvider for HeaderSessions {
        fn authorize<'a>(
            &'a self,
            req: &'a mut ServiceRequest,
            access: Access,
        ) -> LocalBoxFuture<'a, Result<(), HttpResponse>> {
            Box::pin(async move {
                let business = req
                    .headers()
                    .get("x-user")
                    .and_then(|v| v.to_str().ok()?.parse::<i64>().ok())
                    .ok_or_else(|| ApiError::response(StatusCode::UNAUTHORIZED, "unauthenticated", "no session"))?;
                if access == Access::PageAccess("secret") {
                    return Err(ApiError::response(StatusCode::FORBIDDEN, "forbidden", "no page"));
                }
                req.extensions_mut().insert(Principal {
                    user_id: 1,
                    business_id: business,
                    email: "a@example.com".into(),
                    role: "agent".into(),
                    pages: vec!["calls".into()],
                    write_pages: vec![],
                    admin: false,
                });
                Ok(())
            })
        }
    }

    async fn whoami(who: Principal) -> String {
        who.business_id.to_string()
    }

    fn table() -> Vec<RouteSpec> {
        let settings = Settings::default();
        let db = Db::connect_lazy("sqlite::memory:").unwrap();
        let mut metrics = Registry::default();
        let mut reg = Registrar::new("demo", &settings, &db, &mut metrics);
        reg.get("/open", Access::Public, || async { "open" })
            .get("/calls", Access::PageAccess("calls"), whoami)
            .post("/calls", Access::PageAccess("calls"), whoami)
            .get("/secret", Access::PageAccess("secret"), whoami)
            .get("/unprovided", Access::TwilioSignature, || async { "should never run" });
        let out = reg.finish();
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        out.routes
    }

    #[actix_rt::test]
    async fn mounted_routes_enforce_their_policies() {
        let routes = table();
        let mut providers: BTreeMap<Capability, Arc<dyn AccessProvider>> = BTreeMap::new();
        providers.insert(Capability::Sessions, Arc::new(HeaderSessions));
        let app = atest::init_service(App::new().configure(|cfg| mount(cfg, &routes, &providers))).await;
        let status = |req: atest::TestRequest| {
            let app = &app;
            async move { app.call(req.to_request()).await.unwrap().status().as_u16() }
        };
        assert_eq!(status(atest::TestRequest::get().uri("/open")).await, 200);
        assert_eq!(status(atest::TestRequest::get().uri("/calls")).await, 401);
        assert_eq!(
            status(atest::TestRequest::get().uri("/calls").insert_header(("x-user", "7"))).await,
            200
        );
        assert_eq!(
            status(atest::TestRequest::post().uri("/calls").insert_header(("x-user", "7"))).await,
            200
        );
        assert_eq!(
            status(atest::TestRequest::get().uri("/secret").insert_header(("x-user", "7"))).await,
            403
        );
        assert_eq!(
            status(atest::TestRequest::get().uri("/unprovided")).await,
            500,
            "fails closed"
        );
        let res = app
            .call(
                atest::TestRequest::delete()
                    .uri("/calls")
                    .insert_header(("x-user", "7"))
                    .to_request(),
            )
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 405);
        assert_eq!(res.headers().get("allow").unwrap(), "GET, POST");
        let body = atest::read_body(
            app.call(
                atest::TestRequest::get()
                    .uri("/calls")
                    .insert_header(("x-user", "7"))
                    .to_request(),
            )
            .await
            .unwrap(),
        )
        .await;
        assert_eq!(body, "7");
    }

    /// Panics when asked for `PageAccess("boom")`.
    struct PanickyProvider;

    fn explode() -> &'static str {
        panic!("handler fixture")
    }

    impl AccessProvider for PanickyProvider {
        fn authorize<'a>(
            &'a self,
            _: &'a mut ServiceRequest,
            access: Access,
        ) -> LocalBoxFuture<'a, Result<(), HttpResponse>> {
            Box::pin(async move {
                assert_ne!(access, Access::PageAccess("boom"), "provider fixture: boom");
                Ok(())
            })
        }
    }

    #[actix_rt::test]
    async fn a_panic_in_a_provider_or_a_guarded_handler_answers_500_for_that_request_only() {
        let settings = Settings::default();
        let db = Db::connect_lazy("sqlite::memory:").unwrap();
        let mut metrics = Registry::default();
        let mut reg = Registrar::new("demo", &settings, &db, &mut metrics);
        reg.get("/provider-panics", Access::PageAccess("boom"), || async { "never" })
            .get("/handler-panics", Access::PageAccess("calls"), || async { explode() })
            .get("/fine", Access::PageAccess("calls"), || async { "fine" });
        let routes = reg.finish().routes;
        let mut providers: BTreeMap<Capability, Arc<dyn AccessProvider>> = BTreeMap::new();
        providers.insert(Capability::Sessions, Arc::new(PanickyProvider));
        let app = atest::init_service(App::new().configure(|cfg| mount(cfg, &routes, &providers))).await;
        for path in ["/provider-panics", "/handler-panics"] {
            let res = app
                .call(atest::TestRequest::get().uri(path).to_request())
                .await
                .unwrap();
            assert_eq!(res.status().as_u16(), 500, "{path}");
            let body: serde_json::Value = serde_json::from_slice(&atest::read_body(res).await).unwrap();
            assert_eq!(body["error"]["code"], "internal", "{path}");
        }
        let fine = atest::call_and_read_body(&app, atest::TestRequest::get().uri("/fine").to_request()).await;
        assert_eq!(fine, "fine", "the worker keeps serving");
    }
}
