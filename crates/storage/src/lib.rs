//! `callplane-storage`: the database layer shared by the host and every plugin.
//!
//! * [`Db`] is a connection pool over either the embedded SQLite database (the default, created on
//!   first use) or PostgreSQL (several instances behind a load balancer). Queries are runtime queries
//!   through `sqlx`'s `Any` driver, so building never needs a database. Write SQL with `$1`-style
//!   placeholders: both backends accept them.
//! * [`Migration`] and [`migrate`] apply each plugin's versioned migrations, recording them in the
//!   `callplane_schema_versions` table. Two instances booting at once migrate exactly once.
//!
//! * [`GroupCommit`] commits what many writers hand it in batches, one transaction each, on a
//!   thread of its own; a plugin says how a batch is written ([`Batched`]). On a SQLite file that
//!   thread uses its own connection ([`Db::open_sqlite_writer`]: `rusqlite`, the same SQLite
//!   library `sqlx` links), without a hop through `sqlx`'s connection thread, and checkpoints its
//!   log on a thread of its own ([`writer`]).
//! * [`Spool`] is the durable local spool: records that cannot reach the database wait there,
//!   `fsync`ed by a writer thread of its own (many appends share one `fsync`), until they are
//!   replayed; a record the database can never take moves to a dead-letter file beside it.
//!
//! Architecture invariant: this crate knows nothing of HTTP or plugins beyond their names.

mod db;
mod error;
mod group_commit;
mod migrate;
mod spool;
pub mod writer;

pub use db::{Db, DbKind, is_connection_error, redact_url, sqlite_url_relative_to};
pub use error::StorageError;
pub use group_commit::{Batched, GroupCommit, MAX_BATCH, PoolWrite, Written};
pub use migrate::{
    AppliedMigration, Migration, MigrationState, MigrationStatus, PluginMigrations, SCHEMA_TABLE, migrate, status,
};
pub use rusqlite;
pub use spool::{DeadLetter, ReplayReport, Replayed, Spool, SpoolFile};
pub use sqlx;
pub use writer::SqliteWriter;
