//! Per-plugin, versioned migrations.
//!
//! Each plugin owns an ordered list of [`Migration`]s with SQL for both engines. [`migrate`] applies
//! the pending ones of every plugin inside one transaction that holds the database-wide migration
//! lock (`BEGIN IMMEDIATE` on SQLite, a transaction-scoped advisory lock on PostgreSQL), so two
//! instances booting at once against an empty database migrate exactly once: the second waits, then
//! finds nothing to do. Applied migrations are recorded with a checksum of their SQL; editing a
//! migration after it shipped is refused instead of silently diverging.

use ring::digest;
use sqlx::{Connection, Executor, Row};

use crate::{Db, DbKind, StorageError};

/// The table that records applied migrations.
pub const SCHEMA_TABLE: &str = "callplane_schema_versions";

/// Key of the PostgreSQL advisory lock held while migrating (`"callplan"` in ASCII).
const PG_MIGRATION_LOCK: i64 = 0x6361_6c6c_706c_616e;

/// One schema change of one plugin.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Positive, strictly increasing within the plugin.
    pub version: i64,
    /// A short description, recorded with the version.
    pub description: &'static str,
    /// The SQL for SQLite (may hold several statements).
    pub sqlite: &'static str,
    /// The SQL for PostgreSQL (may hold several statements).
    pub postgres: &'static str,
}

/// What `{id}` stands for in migration SQL: the engine's auto-increment primary key.
const ID_COLUMN: [(DbKind, &str); 2] = [
    (DbKind::Sqlite, "INTEGER PRIMARY KEY AUTOINCREMENT"),
    (DbKind::Postgres, "BIGSERIAL PRIMARY KEY"),
];

impl Migration {
    /// One SQL text for both engines: write `id {id}` for the auto-increment primary key and keep
    /// to what SQLite and PostgreSQL share (`BIGINT`, `TEXT`, `CHECK`, `UNIQUE`, indexes).
    pub const fn portable(version: i64, description: &'static str, sql: &'static str) -> Self {
        Self {
            version,
            description,
            sqlite: sql,
            postgres: sql,
        }
    }

    /// The SQL for `kind`, with `{id}` rendered.
    fn sql(&self, kind: DbKind) -> String {
        let raw = match kind {
            DbKind::Sqlite => self.sqlite,
            DbKind::Postgres => self.postgres,
        };
        let id = ID_COLUMN
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or("", |(_, column)| column);
        raw.replace("{id}", id)
    }
}

/// The migrations of one plugin.
#[derive(Debug, Clone, Copy)]
pub struct PluginMigrations<'a> {
    /// The owning plugin's name.
    pub plugin: &'a str,
    /// Its migrations in version order.
    pub migrations: &'a [Migration],
}

/// A migration applied by a [`migrate`] call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedMigration {
    /// The owning plugin.
    pub plugin: String,
    /// The version applied.
    pub version: i64,
    /// Its description.
    pub description: String,
}

/// Applies every pending migration of `sets`, in the order given (the host passes plugins in boot
/// order, so a plugin's requirements are migrated before it). Returns what was applied.
///
/// # Errors
/// A connection error, a malformed migration list, a migration whose SQL changed after it was
/// applied, or a failing migration. Nothing is committed on error. A database that is up to date
/// is only read: nothing is locked or created.
pub async fn migrate(db: &Db, sets: &[PluginMigrations<'_>]) -> Result<Vec<AppliedMigration>, StorageError> {
    let current = status(db, sets).await?;
    for unknown in current.iter().filter(|m| m.state == MigrationState::Unknown) {
        // A newer binary migrated this database (a rolling upgrade in progress, or a rollback):
        // keep running, but say so.
        tracing::warn!(
            plugin = unknown.plugin,
            version = unknown.version,
            "[MIGRATE] the database has a migration this binary does not know"
        );
    }
    // Up to date: nothing to lock or create, so a role without DDL rights gets here too.
    if current.iter().all(|m| !m.state.needs_attention()) {
        return Ok(Vec::new());
    }
    db.prepare()?;
    db.run(|pool| apply(pool, db.kind(), sets)).await
}

async fn apply(
    pool: &sqlx::AnyPool,
    kind: DbKind,
    sets: &[PluginMigrations<'_>],
) -> Result<Vec<AppliedMigration>, StorageError> {
    let mut conn = pool.acquire().await?;
    let mut tx = match kind {
        DbKind::Sqlite => conn.begin_with("BEGIN IMMEDIATE").await?,
        DbKind::Postgres => {
            let mut tx = conn.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(PG_MIGRATION_LOCK)
                .execute(&mut *tx)
                .await?;
            tx
        }
    };
    tx.execute(sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS callplane_schema_versions (
             plugin TEXT NOT NULL,
             version BIGINT NOT NULL,
             description TEXT NOT NULL,
             checksum TEXT NOT NULL,
             applied_at TEXT NOT NULL,
             PRIMARY KEY (plugin, version)
         )",
    ))
    .await?;

    let mut applied = Vec::new();
    for set in sets {
        let rows = sqlx::query("SELECT version, checksum FROM callplane_schema_versions WHERE plugin = $1")
            .bind(set.plugin)
            .fetch_all(&mut *tx)
            .await?;
        let mut done = std::collections::BTreeMap::new();
        for row in rows {
            done.insert(row.try_get::<i64, _>(0)?, row.try_get::<String, _>(1)?);
        }
        for migration in set.migrations {
            let sql = migration.sql(kind);
            let current = checksum(&sql);
            if let Some(recorded) = done.get(&migration.version) {
                if *recorded != current {
                    return Err(StorageError::MigrationChanged {
                        plugin: set.plugin.to_owned(),
                        version: migration.version,
                        description: migration.description.to_owned(),
                        applied: recorded.clone(),
                        current,
                    });
                }
                continue;
            }
            tx.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(sql)))
                .await
                .map_err(|source| StorageError::MigrationFailed {
                    plugin: set.plugin.to_owned(),
                    version: migration.version,
                    description: migration.description.to_owned(),
                    source,
                })?;
            sqlx::query(
                "INSERT INTO callplane_schema_versions (plugin, version, description, checksum, applied_at)
                 VALUES ($1, $2, $3, $4, CAST(CURRENT_TIMESTAMP AS TEXT))",
            )
            .bind(set.plugin)
            .bind(migration.version)
            .bind(migration.description)
            .bind(&current)
            .execute(&mut *tx)
            .await?;
            tracing::info!(
                plugin = set.plugin,
                version = migration.version,
                description = migration.description,
                "[MIGRATE] applied"
            );
            applied.push(AppliedMigration {
                plugin: set.plugin.to_owned(),
                version: migration.version,
                description: migration.description.to_owned(),
            });
        }
    }
    tx.commit().await?;
    Ok(applied)
}

/// Where one migration stands in a database (see [`status`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MigrationStatus {
    /// The owning plugin.
    pub plugin: String,
    /// The migration's version.
    pub version: i64,
    /// Its description (as recorded, for a migration this binary does not know).
    pub description: String,
    /// Applied, pending, changed or unknown.
    pub state: MigrationState,
    /// When it was applied (the database's clock), if it was.
    pub applied_at: Option<String>,
}

/// The state of a migration in a database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MigrationState {
    /// Applied, with the SQL this binary has.
    Applied,
    /// Not applied yet.
    Pending,
    /// Applied, but this binary's SQL differs: [`migrate`] refuses to go on.
    Changed,
    /// Applied by a binary that knows more migrations (newer, or one that a rollback left).
    Unknown,
}

impl MigrationState {
    /// `applied`, `pending`, `changed` or `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Pending => "pending",
            Self::Changed => "changed",
            Self::Unknown => "unknown",
        }
    }

    /// Whether [`migrate`] still has something to do, or would refuse: the schema is not what
    /// this binary serves.
    pub fn needs_attention(self) -> bool {
        matches!(self, Self::Pending | Self::Changed)
    }
}

/// Where every migration of `sets` stands in `db`, in the order given, each plugin's migrations
/// in version order followed by any the database has and the binary does not know. Only reads:
/// a role without DDL rights can ask, and a database never migrated has every migration pending.
///
/// # Errors
/// A connection error, or a malformed migration list.
pub async fn status(db: &Db, sets: &[PluginMigrations<'_>]) -> Result<Vec<MigrationStatus>, StorageError> {
    for set in sets {
        check_order(set)?;
    }
    let exists_sql = match db.kind() {
        DbKind::Sqlite => "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = $1",
        DbKind::Postgres => {
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = $1"
        }
    };
    // A SQLite file that does not exist yet has nothing applied; connecting would create it.
    let never_created = db.sqlite_path().is_some_and(|file| !file.exists());
    let recorded: Vec<(String, i64, String, String, String)> = if never_created {
        Vec::new()
    } else {
        db.run(|pool| async move {
            let tables: i64 = sqlx::query_scalar(exists_sql)
                .bind(SCHEMA_TABLE)
                .fetch_one(pool)
                .await?;
            if tables == 0 {
                return Ok(Vec::new());
            }
            sqlx::query_as(
                "SELECT plugin, version, description, checksum, applied_at FROM callplane_schema_versions
                 ORDER BY plugin, version",
            )
            .fetch_all(pool)
            .await
        })
        .await?
    };
    let kind = db.kind();
    let mut out = Vec::new();
    for set in sets {
        let mine = || recorded.iter().filter(|r| r.0 == set.plugin);
        for migration in set.migrations {
            let found = mine().find(|r| r.1 == migration.version);
            let state = match found {
                None => MigrationState::Pending,
                Some(r) if r.3 == checksum(&migration.sql(kind)) => MigrationState::Applied,
                Some(_) => MigrationState::Changed,
            };
            out.push(MigrationStatus {
                plugin: set.plugin.to_owned(),
                version: migration.version,
                description: migration.description.to_owned(),
                state,
                applied_at: found.map(|r| r.4.clone()),
            });
        }
        for r in mine().filter(|r| set.migrations.iter().all(|m| m.version != r.1)) {
            out.push(MigrationStatus {
                plugin: set.plugin.to_owned(),
                version: r.1,
                description: r.2.clone(),
                state: MigrationState::Unknown,
                applied_at: Some(r.4.clone()),
            });
        }
    }
    Ok(out)
}

fn check_order(set: &PluginMigrations<'_>) -> Result<(), StorageError> {
    let mut previous = 0;
    for migration in set.migrations {
        if migration.version <= previous {
            return Err(StorageError::MigrationOrder {
                plugin: set.plugin.to_owned(),
                version: migration.version,
                previous,
            });
        }
        previous = migration.version;
    }
    Ok(())
}

fn checksum(sql: &str) -> String {
    digest::digest(&digest::SHA256, sql.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOTES_V1: Migration = Migration {
        version: 1,
        description: "notes table",
        sqlite: "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL);",
        postgres: "CREATE TABLE notes (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL);",
    };
    const NOTES_V2: Migration = Migration {
        version: 2,
        description: "notes author",
        sqlite: "ALTER TABLE notes ADD COLUMN author TEXT; CREATE INDEX notes_author ON notes (author);",
        postgres: "ALTER TABLE notes ADD COLUMN author TEXT; CREATE INDEX notes_author ON notes (author);",
    };

    fn temp_db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect_lazy(&format!("sqlite://{}/t.db", dir.path().display())).unwrap();
        (dir, db)
    }

    async fn versions(db: &Db) -> Vec<(String, i64)> {
        db.run(|pool| {
            sqlx::query_as("SELECT plugin, version FROM callplane_schema_versions ORDER BY plugin, version")
                .fetch_all(pool)
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn applies_pending_migrations_once() {
        let (_dir, db) = temp_db();
        let first = [PluginMigrations {
            plugin: "notes",
            migrations: &[NOTES_V1],
        }];
        assert_eq!(migrate(&db, &first).await.unwrap().len(), 1);
        let second = [PluginMigrations {
            plugin: "notes",
            migrations: &[NOTES_V1, NOTES_V2],
        }];
        let applied = migrate(&db, &second).await.unwrap();
        assert_eq!(applied.len(), 1);
        assert_eq!(applied[0].version, 2);
        assert!(migrate(&db, &second).await.unwrap().is_empty());
        assert_eq!(versions(&db).await, vec![("notes".into(), 1), ("notes".into(), 2)]);
        db.run(|pool| {
            sqlx::query("INSERT INTO notes (body, author) VALUES ($1, $2)")
                .bind("hello")
                .bind("me")
                .execute(pool)
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn status_reads_what_is_applied_pending_changed_and_unknown_without_writing() {
        let (dir, db) = temp_db();
        let both = [PluginMigrations {
            plugin: "notes",
            migrations: &[NOTES_V1, NOTES_V2],
        }];
        let states = |list: Vec<MigrationStatus>| list.into_iter().map(|m| (m.version, m.state)).collect::<Vec<_>>();
        let fresh = status(&db, &both).await.unwrap();
        assert_eq!(
            states(fresh),
            [(1, MigrationState::Pending), (2, MigrationState::Pending)]
        );
        assert!(!dir.path().join("t.db").exists(), "asking created no database");

        migrate(&db, &both[..]).await.unwrap();
        let applied = status(&db, &both).await.unwrap();
        assert!(
            applied
                .iter()
                .all(|m| m.state == MigrationState::Applied && m.applied_at.is_some())
        );

        let edited = Migration {
            sqlite: "CREATE TABLE notes (id INTEGER PRIMARY KEY);",
            ..NOTES_V1
        };
        let older = [PluginMigrations {
            plugin: "notes",
            migrations: &[edited],
        }];
        assert_eq!(
            states(status(&db, &older).await.unwrap()),
            [(1, MigrationState::Changed), (2, MigrationState::Unknown)]
        );
    }

    #[tokio::test]
    async fn a_changed_migration_is_refused() {
        let (_dir, db) = temp_db();
        migrate(
            &db,
            &[PluginMigrations {
                plugin: "notes",
                migrations: &[NOTES_V1],
            }],
        )
        .await
        .unwrap();
        let edited = Migration {
            sqlite: "CREATE TABLE notes (id INTEGER PRIMARY KEY);",
            ..NOTES_V1
        };
        let err = migrate(
            &db,
            &[PluginMigrations {
                plugin: "notes",
                migrations: &[edited],
            }],
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, StorageError::MigrationChanged { version: 1, .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_failing_migration_commits_nothing() {
        let (_dir, db) = temp_db();
        let broken = Migration {
            version: 2,
            description: "broken",
            sqlite: "CREATE TABL oops;",
            postgres: "",
        };
        let sets = [
            PluginMigrations {
                plugin: "good",
                migrations: &[NOTES_V1],
            },
            PluginMigrations {
                plugin: "bad",
                migrations: &[broken],
            },
        ];
        let err = migrate(&db, &sets).await.unwrap_err();
        assert!(
            matches!(err, StorageError::MigrationFailed { ref plugin, .. } if plugin == "bad"),
            "{err}"
        );
        let tables: Vec<(String,)> = db
            .run(|pool| sqlx::query_as("SELECT name FROM sqlite_master WHERE name = 'notes'").fetch_all(pool))
            .await
            .unwrap();
        assert!(tables.is_empty(), "the good plugin's migration must be rolled back too");
    }

    #[test]
    fn portable_sql_renders_the_key_per_engine() {
        let m = Migration::portable(1, "t", "CREATE TABLE t (id {id}, name TEXT NOT NULL);");
        assert_eq!(
            m.sql(DbKind::Sqlite),
            "CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL);"
        );
        assert_eq!(
            m.sql(DbKind::Postgres),
            "CREATE TABLE t (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL);"
        );
    }

    #[tokio::test]
    async fn versions_must_increase() {
        let (_dir, db) = temp_db();
        let sets = [PluginMigrations {
            plugin: "notes",
            migrations: &[NOTES_V2, NOTES_V1],
        }];
        let err = migrate(&db, &sets).await.unwrap_err();
        assert!(
            matches!(
                err,
                StorageError::MigrationOrder {
                    version: 1,
                    previous: 2,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn concurrent_migrations_apply_once() {
        let (_dir, db) = temp_db();
        let other = Db::connect_lazy(db.redacted_url()).unwrap();
        let sets = [PluginMigrations {
            plugin: "notes",
            migrations: &[NOTES_V1, NOTES_V2],
        }];
        let (a, b) = tokio::join!(migrate(&db, &sets), migrate(&other, &sets));
        assert_eq!(a.unwrap().len() + b.unwrap().len(), 2);
        assert_eq!(versions(&db).await.len(), 2);
    }
}

/// The same guarantees on PostgreSQL, in a fresh database per test. They need `TEST_POSTGRES_URL`
/// (a role that may create databases); without it they say so and pass, and `.ci/run` sets it.
#[cfg(test)]
mod postgres_tests {
    use std::io::Write as _;

    use super::*;

    const TABLE_V1: Migration = Migration {
        version: 1,
        description: "items",
        sqlite: "",
        postgres: "CREATE TABLE items (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL);",
    };

    /// A fresh, uniquely named database on the test server, dropped on drop.
    struct FreshDb {
        admin: Db,
        name: String,
        url: String,
    }

    impl FreshDb {
        async fn create() -> Option<Self> {
            let Ok(base) = std::env::var("TEST_POSTGRES_URL") else {
                // Straight to stderr: the test harness captures `eprintln!` of passing tests.
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED: TEST_POSTGRES_URL is not set; PostgreSQL migration tests did not run"
                );
                return None;
            };
            let admin = Db::connect_lazy(&base).unwrap();
            let name = unique_name();
            admin
                .run(|pool| sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(pool))
                .await
                .unwrap();
            let mut url = url::Url::parse(&base).unwrap();
            url.set_path(&name);
            Some(Self {
                admin,
                name,
                url: url.to_string(),
            })
        }
    }

    /// A name no other test (in this or a concurrent run) uses.
    fn unique_name() -> String {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("cp_storage_{}_{nanos}_{n}", std::process::id())
    }

    impl Drop for FreshDb {
        fn drop(&mut self) {
            let admin = self.admin.clone();
            let name = self.name.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let _ = admin
                        .run(|pool| {
                            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                            )))
                            .execute(pool)
                        })
                        .await;
                });
            })
            .join()
            .unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_boots_on_an_empty_postgres_migrate_once() {
        let Some(fresh) = FreshDb::create().await else {
            return;
        };
        let a = Db::connect_lazy(&fresh.url).unwrap();
        let b = Db::connect_lazy(&fresh.url).unwrap();
        assert_eq!(a.kind(), DbKind::Postgres);
        let sets = [PluginMigrations {
            plugin: "items",
            migrations: &[TABLE_V1],
        }];
        let (ra, rb) = tokio::join!(migrate(&a, &sets), migrate(&b, &sets));
        assert_eq!(
            ra.unwrap().len() + rb.unwrap().len(),
            1,
            "exactly one instance applied it"
        );
        let rows: Vec<(String, i64)> = a
            .run(|pool| sqlx::query_as("SELECT plugin, version FROM callplane_schema_versions").fetch_all(pool))
            .await
            .unwrap();
        assert_eq!(rows, [("items".to_owned(), 1)]);
        a.run(|pool| {
            sqlx::query("INSERT INTO items (name) VALUES ($1)")
                .bind("x")
                .execute(pool)
        })
        .await
        .unwrap();
        a.close().await;
        b.close().await;
    }
}
