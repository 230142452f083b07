//! The storage error type.

/// Everything that can go wrong in the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The database URL is not one this build understands.
    #[error("unsupported database URL {url:?}: expected sqlite://… or postgres://…")]
    UnsupportedUrl {
        /// The URL with any password removed.
        url: String,
    },
    /// The directory that should hold the SQLite file could not be created.
    #[error("cannot create database directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: String,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A query or connection failed.
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    /// The writer's own SQLite connection could not be opened or configured.
    #[error("SQLite writer connection: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A thread could not be started.
    #[error("cannot start the {name} thread: {source}")]
    Thread {
        /// The thread's name.
        name: &'static str,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A migration that was already applied has different SQL now.
    #[error(
        "migration {plugin}/{version} ({description}) was changed after it was applied \
         (checksum {applied} in the database, {current} in this binary)"
    )]
    MigrationChanged {
        /// Plugin that owns the migration.
        plugin: String,
        /// Migration version.
        version: i64,
        /// Migration description.
        description: String,
        /// Checksum recorded in the database.
        applied: String,
        /// Checksum of the SQL in this binary.
        current: String,
    },
    /// A migration's SQL failed.
    #[error("migration {plugin}/{version} ({description}) failed: {source}")]
    MigrationFailed {
        /// Plugin that owns the migration.
        plugin: String,
        /// Migration version.
        version: i64,
        /// Migration description.
        description: String,
        /// The database error.
        source: sqlx::Error,
    },
    /// The plugin's migration list is malformed (versions not strictly increasing).
    #[error(
        "plugin {plugin}: migration versions must be positive and strictly increasing (found {version} after {previous})"
    )]
    MigrationOrder {
        /// Plugin that owns the migrations.
        plugin: String,
        /// The offending version.
        version: i64,
        /// The version before it.
        previous: i64,
    },
    /// An operation did not finish in time.
    #[error("database did not answer within {0:?}")]
    Timeout(std::time::Duration),
}
