//! The [`Registrar`] a plugin declares itself through, and the resulting [`Registration`]: data
//! the host validates, and mounts with [`crate::app`].

use std::fmt;
use std::sync::Arc;

use actix_web::http::Method;
use actix_web::{FromRequest, Handler, Responder, web};
use callplane_storage::{Db, Migration};
use futures_util::future::LocalBoxFuture;
use prometheus_client::registry::Registry;

use crate::{Access, AccessProvider, Capability, Settings};

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
pub type StartHook = Arc<dyn Fn() -> Result<(), StartFailure> + Send + Sync>;

/// A production check of the plugin's data (`CP1xx`, run by `check --deploy` once the database
/// answers): the problem and a hint, or `None` when all is well or the data cannot be read (an
/// unmigrated database is `migrate status`'s finding, not this check's).
pub type DataCheck = Arc<dyn Fn(Db) -> LocalBoxFuture<'static, Option<(String, String)>> + Send + Sync>;

/// Why a plugin cannot start ([`StartHook`]): the finding `serve` prints before it refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartFailure {
    /// The finding's id: the plugin's own (`CP1xx`), or `CP006` (cannot start) by default.
    pub id: &'static str,
    /// What is wrong.
    pub message: String,
    /// What to do about it.
    pub hint: String,
}

impl From<String> for StartFailure {
    /// A `CP006` finding with a generic hint (a path or permission named in `message`).
    fn from(message: String) -> Self {
        Self {
            id: "CP006",
            message,
            hint: "fix the path or permission named above".to_owned(),
        }
    }
}

impl std::fmt::Display for StartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {} ({})", self.id, self.message, self.hint)
    }
}

/// The answer of a [`ReadinessCheck`].
#[derive(Debug, Clone, PartialEq)]
pub struct ReadinessReport {
    /// Whether this check lets the instance take traffic.
    pub ready: bool,
    /// Whether the plugin keeps its promises while the database is unreachable (its work waits
    /// durably elsewhere, as the twilio plugin's calls wait in the spool). While every check says
    /// so, an instance whose database is away stays in rotation (`/readyz` 200, `degraded`):
    /// taking every instance out together would drop what each could still keep.
    pub without_database: bool,
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
    /// What it takes and answers, for the OpenAPI document (see [`Registrar::doc`]).
    pub doc: Option<Arc<crate::openapi::RouteDoc>>,
    /// The sign-in page of a page for people (see [`Registrar::sign_in`]).
    pub sign_in: Option<&'static str>,
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
            doc: None,
            sign_in: None,
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
    /// Checks of the plugin's data for `check --deploy`, by finding id ([`Registrar::data_check`]).
    pub data_checks: Vec<(&'static str, DataCheck)>,
    /// Services this plugin shares with others ([`Registrar::offer`]).
    pub offers: Vec<crate::services::Offer>,
    /// Services this plugin asked for ([`Registrar::need`], [`Registrar::want`]).
    pub wants: Vec<crate::services::Want>,
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
            .field("offers", &self.offers)
            .field("wants", &self.wants)
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

    /// Documents the route declared last (`reg.post(…).doc(RouteDoc::new(…)…)`): its summary,
    /// body and answers in the OpenAPI document (`callplane routes --format openapi`,
    /// `GET /openapi.json`). An undocumented route is listed with its access and errors only.
    pub fn doc(&mut self, doc: crate::openapi::RouteDoc) -> &mut Self {
        match self.out.routes.last_mut() {
            Some(route) => route.doc = Some(Arc::new(doc)),
            None => self.out.problems.push("doc() before any route was declared".to_owned()),
        }
        self
    }

    /// Makes the route declared last a page for people (`reg.get(…).sign_in("/console/login")`):
    /// a `GET` refused for want of a session (401) is answered `303 See Other` to `page`, with
    /// the page asked for in `?next=`, instead of the JSON error an API client gets. Every other
    /// refusal (a role without the page: 403) is answered as usual.
    pub fn sign_in(&mut self, page: &'static str) -> &mut Self {
        match self.out.routes.last_mut() {
            Some(route) if page.starts_with('/') && !page.starts_with("//") => route.sign_in = Some(page),
            Some(route) => self.out.problems.push(format!(
                "{} {}: sign-in page {page:?} must be a path on this host",
                route.method, route.path
            )),
            None => self
                .out
                .problems
                .push("sign_in() before any route was declared".to_owned()),
        }
        self
    }

    /// Declares the plugin's migrations (versions strictly increasing: anything else is a
    /// problem `check` reports, not a failure of the first `serve`).
    pub fn migrations(&mut self, migrations: &[Migration]) -> &mut Self {
        let mut previous = self.out.migrations.last().map_or(0, |m| m.version);
        for m in migrations {
            if m.version <= previous {
                self.out.problems.push(format!(
                    "migration version {} follows version {previous}: versions must increase",
                    m.version
                ));
            }
            previous = previous.max(m.version);
        }
        self.out.migrations.extend_from_slice(migrations);
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

    /// Adds a production check of the plugin's data (`check --deploy` runs it once the database
    /// answers; see [`DataCheck`]). `id` is the finding's, `CP1` and two digits.
    pub fn data_check(&mut self, id: &'static str, check: DataCheck) -> &mut Self {
        self.out.data_checks.push((id, check));
        self
    }

    /// Shares `service` with every other plugin (see [`crate::services`]); one offer per type in
    /// the whole binary.
    pub fn offer<T: ?Sized + Send + Sync + 'static>(&mut self, service: Arc<T>) -> &mut Self {
        self.out.offers.push(crate::services::Offer::new(service));
        self
    }

    /// A service this plugin cannot work without, filled in once every plugin has registered.
    /// When no active plugin offers it, the host treats this plugin as failed to register
    /// (critical: the boot stops; otherwise it is left out and the host runs degraded).
    pub fn need<T: ?Sized + Send + Sync + 'static>(&mut self) -> crate::services::Wanted<T> {
        let (want, wanted) = crate::services::Want::new(true);
        self.out.wants.push(want);
        wanted
    }

    /// A service this plugin uses when some active plugin offers it, filled in once every plugin
    /// has registered (empty until then, and for good when nobody offers it).
    pub fn want<T: ?Sized + Send + Sync + 'static>(&mut self) -> crate::services::Wanted<T> {
        let (want, wanted) = crate::services::Want::new(false);
        self.out.wants.push(want);
        wanted
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

#[cfg(test)]
mod tests {
    use super::*;

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
    async fn a_sign_in_page_is_a_path_on_this_host() {
        let (settings, mut metrics) = (Settings::default(), Registry::default());
        let db = Db::connect_lazy("sqlite::memory:").unwrap_or_else(|e| panic!("{e}"));
        let mut reg = Registrar::new("pages", &settings, &db, &mut metrics);
        reg.get("/pages/a", Access::PageAccess("calls"), || async { "" })
            .sign_in("/pages/login")
            .get("/pages/b", Access::PageAccess("calls"), || async { "" })
            .sign_in("//evil.example/login")
            .sign_in("https://evil.example/login");
        let out = reg.finish();
        assert_eq!(out.routes[0].sign_in, Some("/pages/login"));
        assert_eq!(out.routes[1].sign_in, None);
        assert_eq!(out.problems.len(), 2, "{:?}", out.problems);
        assert!(
            out.problems[0].contains("must be a path on this host"),
            "{:?}",
            out.problems
        );
    }

    #[test]
    fn shapes_ignore_parameter_names() {
        let a = RouteSpec::new("a", Method::GET, "/api/x/{id}", Access::Public, || async { "" });
        let b = RouteSpec::new("b", Method::GET, "/api/x/{other_id}", Access::Public, || async { "" });
        assert_eq!(a.shape(), "/api/x/{}");
        assert_eq!(a.shape(), b.shape());
    }
}
