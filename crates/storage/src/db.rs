//! The connection pool, and the runtime its connections live on.
//!
//! Every actix worker runs a current-thread Tokio runtime of its own. A connection registers its
//! socket (and its timers) with the runtime that was current when it was opened, so a pooled
//! PostgreSQL connection opened on worker A and later handed to worker B depended on A: it stalled
//! while A was busy (nobody polled A's reactor) and broke when A's runtime stopped during a graceful
//! shutdown. [`Db`] therefore owns a runtime of its own, with one thread that does nothing but drive
//! the database's sockets and timers, and every query runs *inside its context* ([`Db::run`]): the
//! connection opened, the socket registered and the background tasks `sqlx` spawns (returning a
//! connection to the pool, the reaper) all belong to that runtime, whichever worker polls the query.
//! The query's own future still runs on the caller's task, so it may borrow, and costs one enter per
//! poll rather than a hop to another thread.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions, Executor};

use crate::StorageError;
use crate::writer::SqliteWriter;

/// Which database engine a [`Db`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    /// Embedded SQLite (single instance).
    Sqlite,
    /// PostgreSQL (shared by several instances).
    Postgres,
}

impl DbKind {
    /// Classifies a database URL by its scheme.
    ///
    /// # Errors
    /// [`StorageError::UnsupportedUrl`] for anything but `sqlite:` and `postgres:`/`postgresql:`.
    pub fn from_url(url: &str) -> Result<Self, StorageError> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres)
        } else {
            Err(StorageError::UnsupportedUrl { url: redact_url(url) })
        }
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

/// A database pool: cheap to clone, shared by every plugin. Queries go through [`Db::run`].
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    runtime: Arc<DbRuntime>,
    kind: DbKind,
    redacted_url: String,
    /// The database file of a file-backed SQLite URL.
    sqlite_file: Option<PathBuf>,
}

/// SQLite settings applied to every new connection: WAL so readers never block the writer,
/// `synchronous=NORMAL` (durable across process crashes in WAL mode), a busy timeout instead of
/// immediate `SQLITE_BUSY`, and enforced foreign keys.
const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
     PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;";

/// The path and the query of a `sqlite:` URL (both empty for any other URL).
fn sqlite_parts(url: &str) -> (&str, &str) {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or_default();
    rest.split_once('?').unwrap_or((rest, ""))
}

/// The SQLite file a `sqlite:` URL names, unless the database lives in memory.
fn sqlite_file(url: &str) -> Option<PathBuf> {
    let (path, query) = sqlite_parts(url);
    let in_memory = path.is_empty() || path == ":memory:" || query.split('&').any(|p| p == "mode=memory");
    (!in_memory).then(|| PathBuf::from(path))
}

impl Db {
    /// Builds a pool without connecting, and without touching the disk: the first query connects.
    /// For SQLite the database file is created on first use, in the directory [`Db::prepare`]
    /// creates.
    ///
    /// # Errors
    /// An unsupported or unparsable URL.
    pub fn connect_lazy(url: &str) -> Result<Self, StorageError> {
        sqlx::any::install_default_drivers();
        let runtime = Arc::new(DbRuntime::start()?);
        // The pool's maintenance tasks are spawned when it is built: on the database runtime.
        let _entered = runtime.handle.enter();
        let kind = DbKind::from_url(url)?;
        let effective = match kind {
            DbKind::Sqlite => prepare_sqlite_url(url)?,
            DbKind::Postgres => url.to_owned(),
        };
        let options = AnyConnectOptions::from_str(&effective)?
            .log_statements(tracing::log::LevelFilter::Trace)
            .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1));
        let pool = AnyPoolOptions::new()
            .max_connections(match kind {
                DbKind::Sqlite => 4,
                DbKind::Postgres => 16,
            })
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if kind == DbKind::Sqlite {
                        conn.execute(sqlx::raw_sql(SQLITE_PRAGMAS)).await?;
                    }
                    Ok(())
                })
            })
            .connect_lazy_with(options);
        Ok(Self {
            pool,
            runtime,
            kind,
            redacted_url: redact_url(url),
            sqlite_file: sqlite_file(url),
        })
    }

    /// Runs the query that `query` builds over the pool in the context of the database runtime
    /// (see the module documentation): the connection it uses lives as long as the pool, not as
    /// long as the worker that happens to run it.
    ///
    /// ```no_run
    /// # async fn f(db: &callplane_storage::Db, id: i64) -> Result<(), sqlx::Error> {
    /// let (name,): (String,) = db
    ///     .run(|pool| sqlx::query_as("SELECT name FROM businesses WHERE id = $1").bind(id).fetch_one(pool))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn run<'a, F: Future>(&'a self, query: impl FnOnce(&'a AnyPool) -> F) -> OnDbRuntime<F> {
        let _entered = self.runtime.handle.enter();
        OnDbRuntime {
            handle: self.runtime.handle.clone(),
            inner: Some(Box::pin(query(&self.pool))),
        }
    }

    /// Runs what `work` builds on the database runtime, detached: for a write nobody waits for
    /// (a timeline note), from any thread, with or without an async runtime of its own.
    pub fn spawn<F>(&self, work: impl FnOnce(Db) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.runtime.handle.spawn(work(self.clone()));
    }

    /// The engine behind this pool.
    pub fn kind(&self) -> DbKind {
        self.kind
    }

    /// The URL with any password replaced by `***`, safe to log.
    pub fn redacted_url(&self) -> &str {
        &self.redacted_url
    }

    /// A connection of its own to a file-backed SQLite database, with the pool's settings, for a
    /// dedicated writer thread: its statements run on the calling thread instead of being handed
    /// to `sqlx`'s connection thread one by one, and a thread of its own checkpoints the log so
    /// that the writer's transactions never wait for a checkpoint ([`crate::writer`]). `None` for
    /// PostgreSQL and in-memory SQLite.
    ///
    /// # Errors
    /// The file cannot be opened or configured, or the checkpoint thread cannot start.
    pub fn open_sqlite_writer(&self) -> Option<Result<SqliteWriter, StorageError>> {
        let path = self.sqlite_file.as_deref()?;
        Some(SqliteWriter::open(path, SQLITE_PRAGMAS))
    }

    /// Creates the directory of a file-backed SQLite database (SQLite creates the file, not its
    /// directory). [`crate::migrate`] and [`Db::ping`] call it: declaring a pool (`check`,
    /// `routes`) creates nothing on disk.
    ///
    /// # Errors
    /// The directory cannot be created.
    pub fn prepare(&self) -> Result<(), StorageError> {
        let dir = self
            .sqlite_file
            .as_deref()
            .and_then(Path::parent)
            .filter(|d| !d.as_os_str().is_empty());
        if let Some(dir) = dir {
            std::fs::create_dir_all(dir).map_err(|source| StorageError::CreateDir {
                path: dir.display().to_string(),
                source,
            })?;
        }
        Ok(())
    }

    /// The database file of a file-backed SQLite URL (`None` for PostgreSQL or in memory).
    pub fn sqlite_path(&self) -> Option<&Path> {
        self.sqlite_file.as_deref()
    }

    /// Checks that the database answers `SELECT 1` within `timeout`.
    ///
    /// # Errors
    /// The connection or query error, or [`StorageError::Timeout`].
    pub async fn ping(&self, timeout: Duration) -> Result<(), StorageError> {
        self.prepare()?;
        match self
            .run(|pool| tokio::time::timeout(timeout, pool.execute("SELECT 1")))
            .await
        {
            Ok(result) => result.map(drop).map_err(StorageError::from),
            Err(_) => Err(StorageError::Timeout(timeout)),
        }
    }

    /// Closes every connection; later queries fail.
    pub async fn close(&self) {
        self.run(AnyPool::close).await;
    }
}

/// The runtime that owns the database's connections: one thread, which drives their sockets and
/// timers and runs the few tasks `sqlx` spawns. Stopped when the last [`Db`] clone goes.
#[derive(Debug)]
struct DbRuntime {
    handle: tokio::runtime::Handle,
    /// Taken on drop.
    runtime: Option<tokio::runtime::Runtime>,
}

impl DbRuntime {
    const THREAD: &'static str = "callplane-db";

    fn start() -> Result<Self, StorageError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(Self::THREAD)
            .enable_all()
            .build()
            .map_err(|source| StorageError::Thread {
                name: Self::THREAD,
                source,
            })?;
        Ok(Self {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        })
    }
}

impl Drop for DbRuntime {
    fn drop(&mut self) {
        // The last clone may go inside another runtime, where a blocking shutdown would panic.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A query running in the context of the database runtime ([`Db::run`]). Dropping it unfinished
/// (a client that went away) drops the query in that context too, so the connection it held goes
/// back to the pool through the database runtime.
#[must_use = "a query does nothing unless awaited"]
pub struct OnDbRuntime<F> {
    handle: tokio::runtime::Handle,
    inner: Option<Pin<Box<F>>>,
}

impl<F> std::fmt::Debug for OnDbRuntime<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnDbRuntime").finish_non_exhaustive()
    }
}

impl<F: Future> Future for OnDbRuntime<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let _entered = this.handle.enter();
        let Some(inner) = this.inner.as_mut() else {
            panic!("OnDbRuntime polled after it finished");
        };
        let output = std::task::ready!(inner.as_mut().poll(cx));
        // Whatever the query still holds (its connection) is released in this context.
        this.inner = None;
        Poll::Ready(output)
    }
}

impl<F> Drop for OnDbRuntime<F> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            let _entered = self.handle.enter();
            drop(inner);
        }
    }
}

/// Adds `mode=rwc` (create if missing) to a file-backed SQLite URL that does not choose a mode
/// itself.
fn prepare_sqlite_url(url: &str) -> Result<String, StorageError> {
    let (path, query) = sqlite_parts(url);
    if path.is_empty() {
        return Err(StorageError::UnsupportedUrl { url: url.to_owned() });
    }
    let has_mode = query.split('&').any(|p| p.starts_with("mode="));
    Ok(match (has_mode, query.is_empty()) {
        (true, _) => url.to_owned(),
        (false, true) => format!("{url}?mode=rwc"),
        (false, false) => format!("{url}&mode=rwc"),
    })
}

/// `url` with a relative SQLite file resolved against `dir` (the directory of the configuration
/// file that named it). Any other URL, an absolute path, an in-memory database or an empty `dir`
/// leaves it as it is.
pub fn sqlite_url_relative_to(url: &str, dir: &Path) -> String {
    match sqlite_file(url) {
        Some(file) if file.is_relative() && !dir.as_os_str().is_empty() => {
            let (_, query) = sqlite_parts(url);
            let path = dir.join(file);
            if query.is_empty() {
                format!("sqlite://{}", path.display())
            } else {
                format!("sqlite://{}?{query}", path.display())
            }
        }
        _ => url.to_owned(),
    }
}

/// Whether `error` broke the connection rather than the statement (I/O, protocol, a crashed
/// SQLite worker): the database is unreachable or went away, rather than refusing this statement.
pub fn is_connection_error(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed
    )
}

/// Replaces the password of a URL with `***` so it can be logged or shown in a finding.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut parsed) if parsed.password().is_some() => {
            // Setting a password only fails for URLs that cannot have one, which this one has.
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(_) => raw.to_owned(),
        Err(_) => "<unparsable URL>".to_owned(),
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn only_broken_connections_count_as_connection_errors() {
        let io = sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset"));
        assert!(is_connection_error(&io));
        assert!(is_connection_error(&sqlx::Error::Protocol("unexpected message".into())));
        assert!(!is_connection_error(&sqlx::Error::RowNotFound));
        assert!(
            !is_connection_error(&sqlx::Error::PoolTimedOut),
            "waiting again would not help"
        );
    }

    use super::*;

    #[test]
    fn relative_sqlite_files_are_resolved_against_a_directory() {
        let dir = Path::new("/etc/callplane");
        assert_eq!(
            sqlite_url_relative_to("sqlite://data/x.db", dir),
            "sqlite:///etc/callplane/data/x.db"
        );
        assert_eq!(
            sqlite_url_relative_to("sqlite:x.db?mode=ro", dir),
            "sqlite:///etc/callplane/x.db?mode=ro"
        );
        assert_eq!(
            sqlite_url_relative_to("sqlite://data/x.db", Path::new("conf")),
            "sqlite://conf/data/x.db"
        );
        for unchanged in ["sqlite:///var/lib/x.db", "sqlite::memory:", "postgres://u@h/db"] {
            assert_eq!(sqlite_url_relative_to(unchanged, dir), unchanged);
        }
        assert_eq!(
            sqlite_url_relative_to("sqlite://data/x.db", Path::new("")),
            "sqlite://data/x.db"
        );
    }

    #[test]
    fn only_file_backed_sqlite_urls_name_a_file() {
        assert_eq!(sqlite_file("sqlite://data/x.db"), Some(PathBuf::from("data/x.db")));
        assert_eq!(
            sqlite_file("sqlite:///var/lib/x.db?mode=rwc"),
            Some(PathBuf::from("/var/lib/x.db"))
        );
        assert_eq!(sqlite_file("sqlite:x.db"), Some(PathBuf::from("x.db")));
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(sqlite_file("sqlite://x.db?mode=memory"), None);
        assert_eq!(sqlite_file("postgres://u@h/db"), None);
    }

    #[tokio::test]
    async fn the_writer_connection_sees_what_the_pool_sees() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect_lazy(&format!("sqlite://{}/w.db", dir.path().display())).unwrap();
        db.run(|pool| sqlx::query("CREATE TABLE t (v TEXT)").execute(pool))
            .await
            .unwrap();
        let conn = db.open_sqlite_writer().unwrap().unwrap();
        conn.execute("INSERT INTO t VALUES ('from the writer')", []).unwrap();
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        let pages: u32 = conn.query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0)).unwrap();
        assert_eq!(pages, crate::writer::WRITER_CHECKPOINT_PAGES);
        let (v,): (String,) = db
            .run(|pool| sqlx::query_as("SELECT v FROM t").fetch_one(pool))
            .await
            .unwrap();
        assert_eq!(v, "from the writer");
        assert!(
            Db::connect_lazy("sqlite::memory:")
                .unwrap()
                .open_sqlite_writer()
                .is_none()
        );
        assert!(
            Db::connect_lazy("postgres://u@h/db")
                .unwrap()
                .open_sqlite_writer()
                .is_none()
        );
    }

    /// A current-thread runtime, as each actix worker runs.
    fn worker() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Which PostgreSQL backend (connection) answered.
    type Backend = Result<Result<i32, sqlx::Error>, tokio::time::error::Elapsed>;

    /// Worker A opens a connection and releases it to the pool, then is busy (its runtime alive
    /// but not polled), then stops. Worker B queries during each and says which backend answered.
    fn busy_then_stopped_worker(
        pool: &AnyPool,
        query: impl Fn() -> Pin<Box<dyn Future<Output = Result<i32, sqlx::Error>> + Send>> + Send + Sync,
    ) -> (i32, Backend, Backend) {
        let (released, busy) = (std::sync::Barrier::new(2), std::sync::Barrier::new(2));
        std::thread::scope(|scope| {
            let a = scope.spawn(|| {
                let runtime = worker();
                let backend = runtime.block_on(async {
                    let backend = query().await.unwrap();
                    while pool.num_idle() == 0 {
                        // Lets the task that returns the connection to the pool run.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    backend
                });
                released.wait();
                // Busy: a long synchronous stretch, nobody polls this runtime's reactor.
                std::thread::sleep(Duration::from_millis(1500));
                busy.wait();
                drop(runtime);
                backend
            });
            released.wait();
            let b = worker();
            let while_busy = b.block_on(async { tokio::time::timeout(Duration::from_secs(1), query()).await });
            busy.wait();
            let a_backend = a.join().unwrap();
            let after_stop = b.block_on(async { tokio::time::timeout(Duration::from_secs(5), query()).await });
            (a_backend, while_busy, after_stop)
        })
    }

    fn postgres_url(test: &str) -> Option<String> {
        let url = std::env::var("TEST_POSTGRES_URL").ok();
        if url.is_none() {
            // Straight to stderr: the test harness captures `eprintln!` of passing tests.
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                format!("SKIPPED {test}: TEST_POSTGRES_URL is not set (PostgreSQL tests run in .ci/run)\n").as_bytes(),
            );
        }
        url
    }

    const BACKEND: &str = "SELECT pg_backend_pid()";

    #[test]
    fn a_connection_outlives_the_worker_that_opened_it() {
        let Some(url) = postgres_url("a_connection_outlives_the_worker_that_opened_it") else {
            return;
        };
        let db = Db::connect_lazy(&url).unwrap();
        let query = || -> Pin<Box<dyn Future<Output = Result<i32, sqlx::Error>> + Send>> {
            let db = db.clone();
            Box::pin(async move { db.run(|pool| sqlx::query_scalar(BACKEND).fetch_one(pool)).await })
        };
        let (opened, while_busy, after_stop) = busy_then_stopped_worker(&db.pool, query);
        assert_eq!(
            while_busy.expect("no stall while the opening worker is busy").unwrap(),
            opened,
            "the connection worker A opened answers worker B at once"
        );
        assert_eq!(
            after_stop.expect("answers after the opening worker stopped").unwrap(),
            opened,
            "the connection outlived worker A's runtime"
        );

        // The same sequence on a bare pool shows what the database runtime prevents: the
        // connection stalls while its worker is busy and is lost when that worker stops.
        // (No reaper, which would need a runtime to be built in.)
        let bare = AnyPoolOptions::new()
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_lazy(&url)
            .unwrap();
        let query = || -> Pin<Box<dyn Future<Output = Result<i32, sqlx::Error>> + Send>> {
            let bare = bare.clone();
            Box::pin(async move { sqlx::query_scalar(BACKEND).fetch_one(&bare).await })
        };
        let (opened, while_busy, after_stop) = busy_then_stopped_worker(&bare, query);
        assert!(while_busy.is_err(), "a bare pool's connection stalls with its worker");
        assert!(
            !matches!(after_stop, Ok(Ok(backend)) if backend == opened),
            "a bare pool's connection dies with its worker"
        );
    }

    #[test]
    fn kind_follows_the_scheme() {
        assert_eq!(DbKind::from_url("sqlite://data/x.db").unwrap(), DbKind::Sqlite);
        assert_eq!(DbKind::from_url("postgres://u@h/db").unwrap(), DbKind::Postgres);
        assert_eq!(DbKind::from_url("postgresql://u@h/db").unwrap(), DbKind::Postgres);
        assert!(DbKind::from_url("mysql://u@h/db").is_err());
        assert!(DbKind::from_url("data/x.db").is_err());
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db.internal:5432/callplane"),
            "postgres://app:***@db.internal:5432/callplane"
        );
        assert_eq!(redact_url("sqlite://data/x.db"), "sqlite://data/x.db");
        let err = DbKind::from_url("mysql://root:hunter2@h/db").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[tokio::test]
    async fn sqlite_url_gets_create_mode_and_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("nested/deeper/cp.db");
        let url = format!("sqlite://{}", file.display());
        assert_eq!(prepare_sqlite_url(&url).unwrap(), format!("{url}?mode=rwc"));
        let db = Db::connect_lazy(&url).unwrap();
        assert!(!dir.path().join("nested").exists(), "declaring a pool creates nothing");
        db.prepare().unwrap();
        assert!(file.parent().unwrap().is_dir(), "prepare creates the directory");
        assert_eq!(
            prepare_sqlite_url("sqlite::memory:?cache=shared").unwrap(),
            "sqlite::memory:?cache=shared&mode=rwc"
        );
        assert_eq!(
            prepare_sqlite_url("sqlite://x.db?mode=ro").unwrap(),
            "sqlite://x.db?mode=ro"
        );
    }

    #[tokio::test]
    async fn sqlite_file_is_created_on_first_use_in_wal_mode() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data/cp.db");
        let db = Db::connect_lazy(&format!("sqlite://{}", file.display())).unwrap();
        assert!(!file.exists(), "lazy pool must not touch the disk");
        db.ping(Duration::from_secs(5)).await.unwrap();
        assert!(file.exists());
        let mode: (String,) = db
            .run(|pool| sqlx::query_as("PRAGMA journal_mode").fetch_one(pool))
            .await
            .unwrap();
        assert_eq!(mode.0.to_lowercase(), "wal");
    }

    #[tokio::test]
    async fn ping_reports_an_unreachable_postgres() {
        // Port 1 on loopback refuses connections at once.
        let db = Db::connect_lazy("postgres://nobody:pw@127.0.0.1:1/none").unwrap();
        let err = db.ping(Duration::from_secs(10)).await.unwrap_err();
        assert!(!err.to_string().contains("pw@"), "{err}");
    }
}
