//! The schema: businesses, users, role → page grants, sessions, failed-login counters.
//!
//! Times are Unix seconds (`BIGINT`) and flags `0/1` integers, so the same queries run on SQLite
//! and PostgreSQL through the `Any` driver.

use callplane_plugin_api::Migration;

/// The plugin's migrations, in version order. Never edit a shipped one: add a version.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration::portable(
        1,
        "businesses, users, role pages, sessions, login failures",
        "
        CREATE TABLE businesses (
            id {id},
            name TEXT NOT NULL,
            phone_number TEXT NOT NULL UNIQUE,
            greeting TEXT NOT NULL,
            media_stream_url TEXT,
            created_at BIGINT NOT NULL
        );
        CREATE TABLE users (
            id {id},
            business_id BIGINT NOT NULL REFERENCES businesses (id),
            email TEXT NOT NULL UNIQUE,
            password_hash TEXT NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'agent', 'viewer')),
            active BIGINT NOT NULL DEFAULT 1,
            created_at BIGINT NOT NULL
        );
        CREATE INDEX users_business ON users (business_id);
        CREATE TABLE role_pages (
            business_id BIGINT NOT NULL REFERENCES businesses (id),
            role TEXT NOT NULL,
            page TEXT NOT NULL,
            PRIMARY KEY (business_id, role, page)
        );
        CREATE TABLE sessions (
            token_hash TEXT PRIMARY KEY,
            user_id BIGINT NOT NULL REFERENCES users (id),
            created_at BIGINT NOT NULL,
            expires_at BIGINT NOT NULL,
            revoked_at BIGINT
        );
        CREATE INDEX sessions_user ON sessions (user_id);
        CREATE TABLE login_failures (
            scope TEXT NOT NULL,
            subject TEXT NOT NULL,
            failed_at BIGINT NOT NULL
        );
        CREATE INDEX login_failures_subject ON login_failures (scope, subject, failed_at);
    ",
    ),
    // A successful login forgives exactly the failure row it recorded itself, by id (version 1
    // could only name rows by their second, and forgave other attempts' rows with its own).
    Migration::portable(
        2,
        "login failures get an id",
        "
        CREATE TABLE login_failures_v2 (
            id {id},
            scope TEXT NOT NULL,
            subject TEXT NOT NULL,
            failed_at BIGINT NOT NULL
        );
        INSERT INTO login_failures_v2 (scope, subject, failed_at)
            SELECT scope, subject, failed_at FROM login_failures;
        DROP TABLE login_failures;
        ALTER TABLE login_failures_v2 RENAME TO login_failures;
        CREATE INDEX login_failures_subject ON login_failures (scope, subject, failed_at);
    ",
    ),
    // A grant is read-only or read-write; viewers, read-only by intent, become so.
    Migration::portable(
        3,
        "page grants get a level; viewers read only",
        "
        ALTER TABLE role_pages ADD COLUMN level TEXT NOT NULL DEFAULT 'write' CHECK (level IN ('read', 'write'));
        UPDATE role_pages SET level = 'read' WHERE role = 'viewer';
    ",
    ),
];

#[cfg(test)]
mod tests {
    use callplane_plugin_api::storage::sqlx::{self, Row as _};
    use callplane_plugin_api::storage::{Db, PluginMigrations, migrate};

    use super::MIGRATIONS;

    /// A database from before page levels: its viewers become read-only, everyone else keeps
    /// reading and writing.
    #[actix_rt::test]
    async fn existing_viewers_become_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect_lazy(&format!("sqlite://{}/m.db", dir.path().display())).unwrap();
        let set = |migrations| {
            [PluginMigrations {
                plugin: "permissions",
                migrations,
            }]
        };
        migrate(&db, &set(&MIGRATIONS[..2])).await.unwrap();
        db.run(|pool| sqlx::raw_sql(
            "INSERT INTO businesses (name, phone_number, greeting, created_at) VALUES ('B', '+15550001', 'hi', 1);
             INSERT INTO role_pages (business_id, role, page) VALUES (1, 'viewer', 'calendar'), (1, 'agent', 'calendar');",
        ).execute(pool))
        .await
        .unwrap();
        migrate(&db, &set(MIGRATIONS)).await.unwrap();
        let rows = db
            .run(|pool| sqlx::query("SELECT role, level FROM role_pages ORDER BY role").fetch_all(pool))
            .await
            .unwrap();
        let levels: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        assert_eq!(
            levels,
            [
                ("agent".to_owned(), "write".to_owned()),
                ("viewer".to_owned(), "read".to_owned())
            ]
        );
    }
}
