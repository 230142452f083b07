//! Call records: `calls` (one row per CallSid) and `call_events` (every webhook, once).
//!
//! Version 3 adds the call timeline: the details of each event, `outbound_events` (the steps of
//! an outbound request, by REQ id) and `unverified_webhooks` (refused webhooks, bounded).
//! Version 4 adds `call_notes`: steps other plugins add to a call's timeline (the media relay's
//! stream hop), by CallSid.
//!
//! `call_events` belongs to its call by the call's row id and is unique on
//! `(call_id, kind, sequence)` (sequence `-1` for the call's first webhook), so a webhook Twilio
//! retries is stored once. `calls.last_sequence` only ever grows: a late, out-of-order status
//! callback is kept as an event but never moves the call backwards.

use callplane_plugin_api::Migration;

/// The plugin's migrations. Never edit a shipped one: add a version.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration::portable(
        1,
        "calls and call events",
        "
    CREATE TABLE calls (
        id {id},
        call_sid TEXT UNIQUE,
        req_id TEXT UNIQUE,
        business_id BIGINT,
        direction TEXT NOT NULL,
        from_number TEXT NOT NULL,
        to_number TEXT NOT NULL,
        status TEXT NOT NULL,
        lead_id TEXT,
        last_sequence BIGINT NOT NULL DEFAULT -1,
        error TEXT,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    );
    CREATE INDEX calls_business_created ON calls (business_id, created_at);
    CREATE TABLE call_events (
        id {id},
        call_sid TEXT NOT NULL,
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        sequence BIGINT NOT NULL,
        request_id TEXT,
        payload TEXT NOT NULL,
        received_at BIGINT NOT NULL,
        UNIQUE (call_sid, kind, sequence)
    );
",
    ),
    // Events keyed by CallSid put every event's index entry at a random place (CallSids are
    // random), so every event dirtied a page of its own in that index; keyed by the call's row id
    // (assigned in order) the events of a batch share the index's last page. Every event has its
    // call: both are written in one transaction. An event without one fails the migration, and
    // the boot with it, rather than be dropped.
    Migration {
        version: 2,
        description: "call events keyed by their call's row id",
        // SQLite cannot drop a table's UNIQUE constraint: the table is rebuilt, ids kept. Its id
        // is a plain INTEGER PRIMARY KEY (no AUTOINCREMENT bookkeeping per insert): events are
        // never deleted, so ids still only grow.
        sqlite: "
    CREATE TABLE call_events_by_call (
        id INTEGER PRIMARY KEY,
        call_id BIGINT NOT NULL REFERENCES calls (id),
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        sequence BIGINT NOT NULL,
        request_id TEXT,
        payload TEXT NOT NULL,
        received_at BIGINT NOT NULL,
        UNIQUE (call_id, kind, sequence)
    );
    INSERT INTO call_events_by_call (id, call_id, kind, status, sequence, request_id, payload, received_at)
        SELECT e.id, c.id, e.kind, e.status, e.sequence, e.request_id, e.payload, e.received_at
        FROM call_events e LEFT JOIN calls c ON c.call_sid = e.call_sid
        ORDER BY e.id;
    DROP TABLE call_events;
    ALTER TABLE call_events_by_call RENAME TO call_events;
",
        // Dropping `call_sid` drops the unique constraint it was part of.
        postgres: "
    ALTER TABLE call_events ADD COLUMN call_id BIGINT REFERENCES calls (id);
    UPDATE call_events SET call_id = calls.id FROM calls WHERE calls.call_sid = call_events.call_sid;
    ALTER TABLE call_events ALTER COLUMN call_id SET NOT NULL;
    ALTER TABLE call_events DROP COLUMN call_sid;
    ALTER TABLE call_events ADD CONSTRAINT call_events_call_kind_sequence UNIQUE (call_id, kind, sequence);
",
    },
    // The call timeline (`callplane trace`): each event says where and when it arrived, what we
    // answered and whether a status callback moved its call; the outbound lifecycle has its own
    // rows (keyed by REQ id: a request may never get a CallSid); refused webhooks are kept apart,
    // bounded, never under a tenant.
    Migration::portable(
        3,
        "call timeline: event details, outbound steps, unverified webhooks",
        "
    ALTER TABLE call_events ADD COLUMN received_ms BIGINT;
    ALTER TABLE call_events ADD COLUMN stored_ms BIGINT;
    ALTER TABLE call_events ADD COLUMN spooled_ms BIGINT;
    ALTER TABLE call_events ADD COLUMN instance_id TEXT;
    ALTER TABLE call_events ADD COLUMN client TEXT;
    ALTER TABLE call_events ADD COLUMN answer_status BIGINT;
    ALTER TABLE call_events ADD COLUMN answer_kind TEXT;
    ALTER TABLE call_events ADD COLUMN twiml TEXT;
    ALTER TABLE call_events ADD COLUMN latency_us BIGINT;
    ALTER TABLE call_events ADD COLUMN applied BIGINT;
    CREATE TABLE outbound_events (
        id {id},
        req_id TEXT NOT NULL,
        step TEXT NOT NULL,
        at_ms BIGINT NOT NULL,
        instance_id TEXT NOT NULL,
        request_id TEXT,
        call_sid TEXT,
        twilio_code TEXT,
        detail TEXT,
        duration_ms BIGINT
    );
    CREATE INDEX outbound_events_req ON outbound_events (req_id);
    CREATE TABLE unverified_webhooks (
        id {id},
        received_ms BIGINT NOT NULL,
        instance_id TEXT NOT NULL,
        route TEXT NOT NULL,
        call_sid TEXT NOT NULL,
        client TEXT NOT NULL,
        request_id TEXT,
        signature TEXT NOT NULL,
        likely_cause TEXT
    );
    CREATE INDEX unverified_webhooks_call ON unverified_webhooks (call_sid);
    CREATE INDEX unverified_webhooks_client ON unverified_webhooks (client, id);
",
    ),
    // Steps other plugins add to a call's timeline through the call ledger (the media relay's
    // `start`, `agent_connected`/`agent_failed`, `stop`, Twilio's stream events), by CallSid: a
    // stream may be noted before its call's row is written (the spool), so no foreign key.
    Migration::portable(
        4,
        "call notes: steps of other plugins in a call's timeline",
        "
    CREATE TABLE call_notes (
        id {id},
        call_sid TEXT NOT NULL,
        at_ms BIGINT NOT NULL,
        source TEXT NOT NULL,
        step TEXT NOT NULL,
        detail TEXT NOT NULL,
        instance_id TEXT NOT NULL,
        request_id TEXT
    );
    CREATE INDEX call_notes_call ON call_notes (call_sid);
",
    ),
    // Every webhook inserts a call row, and on SQLite two things of `calls`' first shape cost
    // every insert work for nothing (docs/performance.md): `AUTOINCREMENT`, which reads and
    // rewrites the table's row in `sqlite_sequence` (a plain INTEGER PRIMARY KEY takes the
    // largest id plus one: only a deleted newest row's id can come back, and only outbound requests
    // that never got a CallSid, and so no events, are ever deleted), and `req_id UNIQUE`, whose
    // index took an entry for every inbound call's NULL. The table is rebuilt with its ids.
    // `call_events` refers to it: with foreign keys deferred, dropping the old table counts its
    // events as orphans and putting each call back counts its events as attached again, so the
    // commit checks that every event has its call. PostgreSQL keeps its table (its sequence costs
    // no row write; its unique index on `req_id` skips NULLs).
    Migration {
        version: 5,
        description: "calls without AUTOINCREMENT, req_id unique where set (SQLite)",
        sqlite: "
    PRAGMA defer_foreign_keys = ON;
    CREATE TEMP TABLE calls_v4 AS SELECT * FROM calls;
    DROP TABLE calls;
    CREATE TABLE calls (
        id INTEGER PRIMARY KEY,
        call_sid TEXT UNIQUE,
        req_id TEXT,
        business_id BIGINT,
        direction TEXT NOT NULL,
        from_number TEXT NOT NULL,
        to_number TEXT NOT NULL,
        status TEXT NOT NULL,
        lead_id TEXT,
        last_sequence BIGINT NOT NULL DEFAULT -1,
        error TEXT,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    );
    INSERT INTO calls (id, call_sid, req_id, business_id, direction, from_number, to_number, status,
                       lead_id, last_sequence, error, created_at, updated_at)
        SELECT id, call_sid, req_id, business_id, direction, from_number, to_number, status,
               lead_id, last_sequence, error, created_at, updated_at
        FROM calls_v4 ORDER BY id;
    DROP TABLE calls_v4;
    CREATE UNIQUE INDEX calls_req_id ON calls (req_id) WHERE req_id IS NOT NULL;
    CREATE INDEX calls_business_created ON calls (business_id, created_at);
    DELETE FROM sqlite_sequence WHERE name = 'calls';
",
        postgres: "",
    },
];

#[cfg(test)]
mod tests {
    use callplane_plugin_api::storage::{Db, PluginMigrations, migrate, sqlx};
    use futures_util::FutureExt as _;

    use super::MIGRATIONS;

    async fn upgrade(db: &Db, to: usize) -> Result<usize, callplane_plugin_api::storage::StorageError> {
        let set = PluginMigrations {
            plugin: "twilio",
            migrations: &MIGRATIONS[..to],
        };
        migrate(db, &[set]).await.map(|applied| applied.len())
    }

    async fn exec(db: &Db, sql: &str) {
        db.run(|pool| sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned())).execute(pool))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Version 1 data: two calls, three events (the second call's in reverse id order).
    const V1_DATA: &str = "
        INSERT INTO calls (call_sid, direction, from_number, to_number, status, created_at, updated_at)
            VALUES ('CA01', 'inbound', '+1', '+2', 'ringing', 1, 1), ('CA02', 'inbound', '+3', '+4', 'completed', 2, 3);
        INSERT INTO call_events (call_sid, kind, status, sequence, request_id, payload, received_at)
            VALUES ('CA02', 'status', 'completed', 3, 'r3', '[[\"a\",\"b\"]]', 3),
                   ('CA01', 'incoming', 'ringing', -1, NULL, '[]', 1),
                   ('CA02', 'incoming', 'ringing', -1, 'r2', '[]', 2);";

    /// id, CallSid, kind, status, sequence, request id, payload, received at.
    type EventRow = (i64, String, String, String, i64, Option<String>, String, i64);

    /// Upgrading keeps every event, its id and its fields, now attached to its call by row id, and
    /// the new key still refuses a duplicate.
    async fn upgrade_keeps_every_event(db: &Db) {
        assert_eq!(upgrade(db, 1).await.unwrap(), 1);
        exec(db, V1_DATA).await;
        assert_eq!(upgrade(db, 2).await.unwrap(), 1, "version 2 applied");
        let rows: Vec<EventRow> = db
            .run(|pool| {
                sqlx::query_as(
                    "SELECT e.id, c.call_sid, e.kind, e.status, e.sequence, e.request_id, e.payload, e.received_at
             FROM call_events e JOIN calls c ON c.id = e.call_id ORDER BY e.id",
                )
                .fetch_all(pool)
            })
            .await
            .unwrap();
        let pairs = r#"[["a","b"]]"#.to_owned();
        let expected = vec![
            (
                1,
                "CA02".into(),
                "status".into(),
                "completed".into(),
                3,
                Some("r3".into()),
                pairs,
                3,
            ),
            (
                2,
                "CA01".into(),
                "incoming".into(),
                "ringing".into(),
                -1,
                None,
                "[]".into(),
                1,
            ),
            (
                3,
                "CA02".into(),
                "incoming".into(),
                "ringing".into(),
                -1,
                Some("r2".into()),
                "[]".into(),
                2,
            ),
        ];
        assert_eq!(rows, expected);
        exec(
            db,
            "INSERT INTO call_events (call_id, kind, status, sequence, payload, received_at)
             VALUES ((SELECT id FROM calls WHERE call_sid = 'CA02'), 'status', 'completed', 3, '[]', 9)
             ON CONFLICT (call_id, kind, sequence) DO NOTHING;
             INSERT INTO call_events (call_id, kind, status, sequence, payload, received_at)
             VALUES ((SELECT id FROM calls WHERE call_sid = 'CA02'), 'status', 'completed', 4, '[]', 9)
             ON CONFLICT (call_id, kind, sequence) DO NOTHING;",
        )
        .await;
        let ids: Vec<(i64, i64)> = db
            .run(|pool| sqlx::query_as("SELECT id, sequence FROM call_events ORDER BY id").fetch_all(pool))
            .await
            .unwrap();
        // (PostgreSQL's sequence spends a number on the skipped duplicate: ids may have gaps.)
        assert_eq!(ids.len(), 4, "the duplicate was skipped: {ids:?}");
        assert!(
            ids[3].0 > 3 && ids[3].1 == 4,
            "the new event comes after the kept ones: {ids:?}"
        );
        // Version 3 keeps them too, their timeline fields empty: a trace of an older call shows
        // what was kept.
        assert_eq!(upgrade(db, 3).await.unwrap(), 1, "version 3 applied");
        let old: Vec<(i64, Option<i64>, Option<String>)> = db
            .run(|pool| {
                sqlx::query_as("SELECT id, received_ms, instance_id FROM call_events ORDER BY id").fetch_all(pool)
            })
            .await
            .unwrap();
        assert_eq!(old.len(), 4);
        assert!(
            old.iter().all(|(_, ms, instance)| ms.is_none() && instance.is_none()),
            "{old:?}"
        );
    }

    /// An event whose call row is missing (only possible by hand: both are written in one
    /// transaction) fails the upgrade, and nothing of it is committed.
    async fn an_orphan_event_fails_the_upgrade_and_keeps_version_1(db: &Db) {
        assert_eq!(upgrade(db, 1).await.unwrap(), 1);
        exec(db, V1_DATA).await;
        exec(
            db,
            "INSERT INTO call_events (call_sid, kind, status, sequence, payload, received_at)
             VALUES ('CA99', 'incoming', 'ringing', -1, '[]', 5)",
        )
        .await;
        assert!(
            upgrade(db, MIGRATIONS.len()).await.is_err(),
            "the orphan refuses the upgrade"
        );
        let (events,): (i64,) = db
            .run(|pool| sqlx::query_as("SELECT COUNT(*) FROM call_events WHERE call_sid LIKE 'CA%'").fetch_one(pool))
            .await
            .unwrap();
        assert_eq!(events, 4, "version 1's table is untouched");
    }

    /// Version 4 data: an outbound request that never got a CallSid, and two answered calls with
    /// events (ids 1–3 taken, 4 spent by a deleted row).
    const V4_DATA: &str = "
        INSERT INTO calls (req_id, business_id, direction, from_number, to_number, status, created_at, updated_at)
            VALUES ('00aa11bb', 7, 'outbound', '+1', '+2', 'requested', 1, 1);
        INSERT INTO calls (call_sid, business_id, direction, from_number, to_number, status, created_at, updated_at)
            VALUES ('CA01', 7, 'inbound', '+3', '+4', 'ringing', 2, 2), ('CA02', 7, 'inbound', '+5', '+4', 'completed', 3, 3),
                   ('CA03', 7, 'inbound', '+6', '+4', 'ringing', 4, 4);
        DELETE FROM calls WHERE call_sid = 'CA03';
        INSERT INTO call_events (call_id, kind, status, sequence, payload, received_at)
            VALUES (2, 'incoming', 'ringing', -1, '[]', 2), (3, 'incoming', 'ringing', -1, '[]', 3),
                   (3, 'status', 'completed', 2, '[]', 4);";

    #[actix_rt::test]
    async fn sqlite_calls_lose_autoincrement_and_keep_their_ids_and_events() {
        let (_dir, db) = sqlite();
        assert_eq!(upgrade(&db, 4).await.unwrap(), 4);
        exec(&db, V4_DATA).await;
        // The commit checks the deferred foreign keys: the events counted as orphans when the old
        // table was dropped must all have their calls back.
        assert_eq!(upgrade(&db, 5).await.unwrap(), 1, "version 5 applied");
        let calls: Vec<(i64, Option<String>, Option<String>)> = db
            .run(|pool| sqlx::query_as("SELECT id, call_sid, req_id FROM calls ORDER BY id").fetch_all(pool))
            .await
            .unwrap();
        assert_eq!(
            calls,
            vec![
                (1, None, Some("00aa11bb".into())),
                (2, Some("CA01".into()), None),
                (3, Some("CA02".into()), None)
            ]
        );
        let events: Vec<(String, String)> = db
            .run(|pool| {
                sqlx::query_as(
                    "SELECT c.call_sid, e.kind FROM call_events e JOIN calls c ON c.id = e.call_id ORDER BY e.id",
                )
                .fetch_all(pool)
            })
            .await
            .unwrap();
        assert_eq!(events.len(), 3, "every event still has its call: {events:?}");
        let (schema, sequences): (String, i64) = db
            .run(|pool| {
                sqlx::query_as(
                    "SELECT (SELECT sql FROM sqlite_master WHERE name = 'calls'),
                            (SELECT COUNT(*) FROM sqlite_sequence WHERE name = 'calls')",
                )
                .fetch_one(pool)
            })
            .await
            .unwrap();
        assert!(!schema.contains("AUTOINCREMENT"), "{schema}");
        assert_eq!(sequences, 0);
        // The next call takes the next id; NULL request ids are many, a set one is unique; an
        // event still needs its call.
        exec(
            &db,
            "INSERT INTO calls (call_sid, direction, from_number, to_number, status, created_at, updated_at)
                 VALUES ('CA04', 'inbound', '+7', '+4', 'ringing', 5, 5), ('CA05', 'inbound', '+8', '+4', 'ringing', 5, 5)",
        )
        .await;
        let (id,): (i64,) = db
            .run(|pool| sqlx::query_as("SELECT id FROM calls WHERE call_sid = 'CA05'").fetch_one(pool))
            .await
            .unwrap();
        assert_eq!(id, 5);
        for refused in [
            "INSERT INTO calls (req_id, direction, from_number, to_number, status, created_at, updated_at)
                 VALUES ('00aa11bb', 'outbound', '+1', '+2', 'requested', 6, 6)",
            "INSERT INTO call_events (call_id, kind, status, sequence, payload, received_at)
                 VALUES (99, 'incoming', 'ringing', -1, '[]', 6)",
        ] {
            let result = db
                .run(|pool| sqlx::raw_sql(sqlx::AssertSqlSafe(refused.to_owned())).execute(pool))
                .await;
            assert!(result.is_err(), "{refused}");
        }
    }

    fn sqlite() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect_lazy(&format!("sqlite://{}/m.db", dir.path().display())).unwrap();
        (dir, db)
    }

    #[actix_rt::test]
    async fn sqlite_upgrade_keeps_every_event() {
        let (_dir, db) = sqlite();
        upgrade_keeps_every_event(&db).await;
    }

    #[actix_rt::test]
    async fn sqlite_orphan_event_fails_the_upgrade() {
        let (_dir, db) = sqlite();
        an_orphan_event_fails_the_upgrade_and_keeps_version_1(&db).await;
    }

    /// Runs `check` on a fresh database of the server named by `TEST_POSTGRES_URL` (`.ci/run` sets
    /// it), dropped afterwards; says so and passes without it.
    async fn on_postgres<F: AsyncFnOnce(&Db)>(test: &str, check: F) {
        let Ok(base) = std::env::var("TEST_POSTGRES_URL") else {
            // Straight to stderr: the test harness captures `eprintln!` of passing tests.
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                format!("SKIPPED {test}: TEST_POSTGRES_URL is not set (PostgreSQL tests run in .ci/run)\n").as_bytes(),
            );
            return;
        };
        let admin = Db::connect_lazy(&base).unwrap();
        let name = callplane_plugin_api::testing::unique_database_name("cp_twilio");
        exec(&admin, &format!("CREATE DATABASE {name}")).await;
        let mut url = url::Url::parse(&base).unwrap();
        url.set_path(&name);
        let db = Db::connect_lazy(url.as_str()).unwrap();
        let outcome = std::panic::AssertUnwindSafe(check(&db)).catch_unwind().await;
        db.close().await;
        exec(&admin, &format!("DROP DATABASE {name} WITH (FORCE)")).await;
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }

    #[actix_rt::test]
    async fn postgres_upgrade_keeps_every_event() {
        on_postgres("postgres_upgrade_keeps_every_event", upgrade_keeps_every_event).await;
    }

    #[actix_rt::test]
    async fn postgres_orphan_event_fails_the_upgrade() {
        on_postgres(
            "postgres_orphan_event_fails_the_upgrade",
            an_orphan_event_fails_the_upgrade_and_keeps_version_1,
        )
        .await;
    }
}
