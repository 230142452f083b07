//! Mounting plugins in a test app exactly as the host does: the plugins' own `register`, the
//! migrations, the extractor configuration, the access providers and the request middleware.
//!
//! ```text
//! let host = TestHost::new(Settings::default(), db, &[("permissions", permissions::register)]).await;
//! let app = actix_web::test::init_service(host.app()).await;
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::middleware::from_fn;
use actix_web::{App, Error, web};
use callplane_storage::{Db, PluginMigrations, migrate};
use callplane_telemetry::{HttpMetrics, HttpTelemetry, TrustedProxies};
use prometheus_client::registry::Registry;

use crate::{
    AccessProvider, BackgroundTask, Capability, RegisterError, Registrar, RouteSpec, Settings, StateInstaller, edge,
    extractor_configs, mount,
};

/// A plugin's registration function.
pub type RegisterFn = fn(&mut Registrar<'_>) -> Result<(), RegisterError>;

/// Plugins registered and migrated, ready to be mounted in an `actix_web::test` app.
pub struct TestHost {
    /// The database the plugins use.
    pub db: Db,
    routes: Vec<RouteSpec>,
    providers: BTreeMap<Capability, Arc<dyn AccessProvider>>,
    states: Vec<StateInstaller>,
    tasks: Vec<(String, BackgroundTask)>,
}

impl std::fmt::Debug for TestHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestHost")
            .field("routes", &self.routes)
            .finish_non_exhaustive()
    }
}

impl TestHost {
    /// Registers `plugins` in order (requirements first) and applies their migrations.
    ///
    /// # Panics
    /// When a registration or a migration fails: the test setup is broken.
    pub async fn new(settings: Settings, db: Db, plugins: &[(&'static str, RegisterFn)]) -> Self {
        Self::with_routes(settings, db, plugins, |_| {}).await
    }

    /// Like [`TestHost::new`], with extra routes declared by `extra` (as a plugin named `test`).
    ///
    /// # Panics
    /// When a registration or a migration fails.
    pub async fn with_routes(
        settings: Settings,
        db: Db,
        plugins: &[(&'static str, RegisterFn)],
        extra: impl FnOnce(&mut Registrar<'_>),
    ) -> Self {
        let mut metrics = Registry::default();
        let mut host = Self {
            db: db.clone(),
            routes: Vec::new(),
            providers: BTreeMap::new(),
            states: Vec::new(),
            tasks: Vec::new(),
        };
        let mut migrations = Vec::new();
        for (name, register) in plugins {
            let mut reg = Registrar::new(name, &settings, &db, &mut metrics);
            register(&mut reg).unwrap_or_else(|e| panic!("registering {name}: {e}"));
            let out = reg.finish();
            assert!(out.problems.is_empty(), "{name}: {:?}", out.problems);
            migrations.push((*name, out.migrations));
            host.routes.extend(out.routes);
            host.providers.extend(out.providers);
            host.states.extend(out.states);
            host.tasks.extend(out.tasks);
        }
        let mut reg = Registrar::new("test", &settings, &db, &mut metrics);
        extra(&mut reg);
        host.routes.extend(reg.finish().routes);
        let sets: Vec<PluginMigrations<'_>> = migrations
            .iter()
            .map(|(plugin, m)| PluginMigrations { plugin, migrations: m })
            .collect();
        migrate(&db, &sets).await.unwrap_or_else(|e| panic!("migrating: {e}"));
        host
    }

    /// A background task the plugins declared, to start it in the test.
    pub fn task(&self, name: &str) -> Option<BackgroundTask> {
        self.tasks.iter().find(|(n, _)| n == name).map(|(_, t)| t.clone())
    }

    /// The app, built as the host builds it.
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
        let telemetry = web::Data::new(HttpTelemetry {
            proxies: TrustedProxies::default(),
            metrics: HttpMetrics::register(&mut Registry::default()),
        });
        let (routes, providers, states) = (self.routes.clone(), self.providers.clone(), self.states.clone());
        App::new()
            .app_data(telemetry)
            .app_data(web::Data::new(self.db.clone()))
            .configure(extractor_configs)
            .configure(move |cfg| {
                for install in &states {
                    install(cfg);
                }
                mount(cfg, &routes, &providers);
            })
            .wrap(from_fn(edge))
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
