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
];
