//! Mounting plugins in a test app exactly as the host does: the plugins' own `register`, the
//! migrations, the extractor configuration, the access providers and the request middleware.
//!
//! ```text
//! let host = TestHost::new(Settings::default(), db, &[&callplane_plugin_permissions::PLUGIN]).await;
//! let app = actix_web::test::init_service(host.app()).await;
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::{App, Error, web};
use callplane_storage::{Db, PluginMigrations, migrate};
use callplane_telemetry::{HttpMetrics, HttpTelemetry, TrustedProxies};
use prometheus_client::registry::Registry;

use crate::app::{AppParts, StateInstaller, build};
use crate::{AccessProvider, BackgroundTask, Capability, Registrar, RoutePlugin, RouteSpec, Settings, StartHook};

/// Plugins registered and migrated, ready to be mounted in an `actix_web::test` app.
pub struct TestHost {
    /// The database the plugins use.
    pub db: Db,
    routes: Vec<RouteSpec>,
    providers: BTreeMap<Capability, Arc<dyn AccessProvider>>,
    states: Vec<StateInstaller>,
    tasks: Vec<(String, BackgroundTask)>,
    start_hooks: Vec<(String, StartHook)>,
    metrics: Registry,
}

impl std::fmt::Debug for TestHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestHost")
            .field("routes", &self.routes)
            .finish_non_exhaustive()
    }
}

impl TestHost {
    /// Registers `plugins` in order (requirements first), applies their migrations and runs their
    /// start hooks. A configuration key of a plugin that `settings` does not set has its default.
    ///
    /// # Panics
    /// When a registration or a migration fails: the test setup is broken.
    pub async fn new(settings: Settings, db: Db, plugins: &[&'static RoutePlugin]) -> Self {
        Self::with_routes(settings, db, plugins, |_| {}).await
    }

    /// Like [`TestHost::new`], with extra routes declared by `extra` (as a plugin named `test`).
    ///
    /// # Panics
    /// When a registration or a migration fails.
    pub async fn with_routes(
        mut settings: Settings,
        db: Db,
        plugins: &[&'static RoutePlugin],
        extra: impl FnOnce(&mut Registrar<'_>),
    ) -> Self {
        for plugin in plugins {
            let config = settings.plugins.entry(plugin.name.to_owned()).or_default();
            for key in plugin.config {
                config.fill(key);
            }
        }
        // Named as the host names them: `callplane_<plugin>_…`.
        let mut metrics = Registry::with_prefix("callplane");
        let mut host = Self {
            db: db.clone(),
            routes: Vec::new(),
            providers: BTreeMap::new(),
            states: Vec::new(),
            tasks: Vec::new(),
            start_hooks: Vec::new(),
            metrics: Registry::default(),
        };
        let mut migrations = Vec::new();
        let mut shared = (Vec::new(), Vec::new());
        for plugin in plugins {
            let name = plugin.name;
            let registry = metrics.sub_registry_with_prefix(name.replace('-', "_"));
            let mut reg = Registrar::new(name, &settings, &db, registry);
            (plugin.register)(&mut reg).unwrap_or_else(|e| panic!("registering {name}: {e}"));
            let out = reg.finish();
            assert!(out.problems.is_empty(), "{name}: {:?}", out.problems);
            migrations.push((name, out.migrations));
            host.routes.extend(out.routes);
            host.providers.extend(out.providers);
            host.states.extend(out.states);
            host.tasks.extend(out.tasks);
            host.start_hooks.extend(out.start_hooks);
            shared.0.extend(out.offers);
            shared.1.push((name, out.wants));
        }
        // Services, as the host shares them once every plugin has registered.
        let offers: Vec<&crate::services::Offer> = shared.0.iter().collect();
        for (name, wants) in &shared.1 {
            let unmet = crate::services::unmet(wants, &offers);
            assert!(
                unmet.is_empty(),
                "{name} needs {unmet:?}, which none of the test's plugins offers"
            );
            crate::services::fill(wants, &offers);
        }
        let mut reg = Registrar::new("test", &settings, &db, &mut metrics);
        extra(&mut reg);
        host.routes.extend(reg.finish().routes);
        let sets: Vec<PluginMigrations<'_>> = migrations
            .iter()
            .map(|(plugin, m)| PluginMigrations { plugin, migrations: m })
            .collect();
        migrate(&db, &sets).await.unwrap_or_else(|e| panic!("migrating: {e}"));
        for (name, hook) in &host.start_hooks {
            hook().unwrap_or_else(|e| panic!("start hook {name}: {e}"));
        }
        host.metrics = metrics;
        host
    }

    /// The plugins' metrics in the Prometheus text format, as `/metrics` shows them.
    pub fn metrics(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.metrics);
        text
    }

    /// A background task the plugins declared, to start it in the test.
    pub fn task(&self, name: &str) -> Option<BackgroundTask> {
        self.tasks.iter().find(|(n, _)| n == name).map(|(_, t)| t.clone())
    }

    /// The app, built by the same function the host builds it with ([`crate::app::build`]).
    pub fn app(
        &self,
    ) -> App<
        impl ServiceFactory<
            ServiceRequest,
            Config = (),
            Response = ServiceResponse<impl MessageBody + use<>>,
            Error = Error,
            InitError = (),
        > + use<>,
    > {
        build(&AppParts {
            routes: self.routes.clone(),
            providers: self.providers.clone(),
            states: self.states.clone(),
            telemetry: web::Data::new(HttpTelemetry {
                proxies: TrustedProxies::default(),
                metrics: HttpMetrics::register(&mut Registry::default()),
            }),
            db: web::Data::new(self.db.clone()),
        })
    }
}

/// A name for a throwaway test database, unique across the test processes of a machine and the
/// tests running in parallel inside one (the process id, the clock's nanoseconds, and a counter:
/// two tests can read the same nanoseconds).
pub fn unique_database_name(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}_{}_{nanos}_{n}", std::process::id())
}

/// A throwaway PostgreSQL database on the server `TEST_POSTGRES_URL` names, dropped (with its
/// connections) on drop. Tests that need PostgreSQL use it and skip, saying so, without the
/// variable; `.ci/run` sets it, so nothing is skipped there.
#[derive(Debug)]
pub struct ScratchPostgres {
    admin_url: String,
    name: String,
    /// The URL of the fresh database.
    pub url: String,
}

impl ScratchPostgres {
    /// Creates a database for `test`, or returns `None` (saying so on stderr) when
    /// `TEST_POSTGRES_URL` is not set.
    ///
    /// # Panics
    /// When the server refuses to create the database.
    pub fn create(test: &str) -> Option<Self> {
        let Ok(admin_url) = std::env::var("TEST_POSTGRES_URL") else {
            // Straight to stderr: the test harness captures `eprintln!` of passing tests.
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test} on PostgreSQL: TEST_POSTGRES_URL is not set (PostgreSQL tests run in .ci/run)"
            );
            return None;
        };
        let name = unique_database_name("cp_test");
        admin_sql(&admin_url, format!("CREATE DATABASE {name}"));
        let url = url_with_database(&admin_url, &name);
        Some(Self { admin_url, name, url })
    }

    /// Runs `sql` as the administrator, on the server's maintenance database.
    ///
    /// # Panics
    /// When the statement fails.
    pub fn admin(&self, sql: &str) {
        admin_sql(&self.admin_url, sql.to_owned());
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for ScratchPostgres {
    fn drop(&mut self) {
        admin_sql(
            &self.admin_url,
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

/// `base` (a `postgres://` URL) pointing at `database` instead, its query kept.
fn url_with_database(base: &str, database: &str) -> String {
    let (without_query, query) = base.split_once('?').map_or((base, None), |(b, q)| (b, Some(q)));
    let root = without_query.rsplit_once('/').map_or(without_query, |(root, _)| root);
    match query {
        Some(q) => format!("{root}/{database}?{q}"),
        None => format!("{root}/{database}"),
    }
}

/// Runs `sql` on `url` from a thread and runtime of its own (callers may be inside a runtime, or
/// in `Drop`).
fn admin_sql(url: &str, sql: String) {
    use callplane_storage::sqlx;
    let url = url.to_owned();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for administrative SQL");
        runtime.block_on(async move {
            let db = Db::connect_lazy(&url).expect("TEST_POSTGRES_URL is a postgres:// URL");
            db.run(|pool| sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone())).execute(pool))
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            db.close().await;
        });
    })
    .join()
    .expect("administrative SQL");
}
