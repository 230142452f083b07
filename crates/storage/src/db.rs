//! The connection pool.

use std::path::{Path, PathBuf};
use std::str::FromStr;
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

/// A database pool: cheap to clone, shared by every plugin.
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
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
            kind,
            redacted_url: redact_url(url),
            sqlite_file: sqlite_file(url),
        })
    }

    /// The underlying pool, for queries.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
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

    /// Checks that the database answers `SELECT 1` within `timeout`.
    ///
    /// # Errors
    /// The connection or query error, or [`StorageError::Timeout`].
    pub async fn ping(&self, timeout: Duration) -> Result<(), StorageError> {
        self.prepare()?;
        match tokio::time::timeout(timeout, self.pool.execute("SELECT 1")).await {
            Ok(result) => result.map(drop).map_err(StorageError::from),
            Err(_) => Err(StorageError::Timeout(timeout)),
        }
    }

    /// Closes every connection; later queries fail.
    pub async fn close(&self) {
        self.pool.close().await;
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

/// Whether `error` broke the connection rather than the statement (I/O, protocol, a crashed
/// SQLite worker): the same read on another connection may well succeed. Each actix worker runs
/// its own Tokio runtime and pooled connections belong to the runtime that opened them, so a
/// connection can die with a worker during a graceful stop while another worker still holds it.
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
        sqlx::query("CREATE TABLE t (v TEXT)").execute(db.pool()).await.unwrap();
        let conn = db.open_sqlite_writer().unwrap().unwrap();
        conn.execute("INSERT INTO t VALUES ('from the writer')", []).unwrap();
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        let pages: u32 = conn.query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0)).unwrap();
        assert_eq!(pages, crate::writer::WRITER_CHECKPOINT_PAGES);
        let (v,): (String,) = sqlx::query_as("SELECT v FROM t").fetch_one(db.pool()).await.unwrap();
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
        let mode: (String,) = sqlx::query_as("PRAGMA journal_mode")
            .fetch_one(db.pool())
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
