//! How call events are written: the SQL for both engines, one transaction per group-commit batch
//! ([`QueuedEvent`] is what the storage crate's [`GroupCommit`] commits).

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use callplane_plugin_api::storage::sqlx;
use callplane_plugin_api::storage::{Batched, Db, DbKind, PoolWrite, rusqlite};

#[cfg(doc)]
use callplane_plugin_api::storage::GroupCommit;

use crate::event::{CallEvent, EventKind, now_ms};
use crate::unverified::Attempt;

/// An event on its way to the database, its stored parameters serialised by its owner (the
/// HTTP workers run in parallel; the one writer is what every webhook waits for).
#[derive(Debug)]
pub(crate) struct QueuedEvent {
    /// Shared with the owner, who spools it if the commit does not answer in time.
    pub(crate) event: Arc<CallEvent>,
    /// [`CallEvent::payload`].
    pub(crate) params_json: String,
}

impl QueuedEvent {
    pub(crate) fn new(event: Arc<CallEvent>) -> Self {
        let params_json = event.payload();
        Self { event, params_json }
    }
}

impl std::ops::Deref for QueuedEvent {
    type Target = CallEvent;

    fn deref(&self) -> &CallEvent {
        &self.event
    }
}

/// What the call-record writer commits: call events, and refused webhooks kept as evidence
/// (one writer, so that they never contend for SQLite's write lock).
#[derive(Debug)]
pub(crate) enum Queued {
    /// A verified webhook's event.
    Event(QueuedEvent),
    /// A refused webhook.
    Unverified(Attempt),
}

/// A batch split by kind.
fn split<'a>(batch: &[&'a Queued]) -> (Vec<&'a QueuedEvent>, Vec<&'a Attempt>) {
    let (mut events, mut attempts) = (Vec::with_capacity(batch.len()), Vec::new());
    for item in batch {
        match item {
            Queued::Event(event) => events.push(event),
            Queued::Unverified(attempt) => attempts.push(attempt),
        }
    }
    (events, attempts)
}

impl Batched for Queued {
    fn write_sqlite(conn: &mut rusqlite::Connection, batch: &[&Self]) -> rusqlite::Result<()> {
        let (events, attempts) = split(batch);
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        write_sqlite(&tx, &events)?;
        write_attempts_sqlite(&tx, &attempts)?;
        tx.commit()
    }

    fn write_pool<'a>(db: &'a Db, batch: &'a [&'a Self]) -> PoolWrite<'a> {
        Box::pin(async move {
            let (events, attempts) = split(batch);
            write_pool(db, &events, &attempts).await
        })
    }

    /// Events by CallSid (two batches sharing CallSids lock their rows in the same order), then
    /// refused webhooks.
    fn order(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Self::Event(a), Self::Event(b)) => a.call_sid.cmp(&b.call_sid),
            (Self::Event(_), Self::Unverified(_)) => Ordering::Less,
            (Self::Unverified(_), Self::Event(_)) => Ordering::Greater,
            (Self::Unverified(a), Self::Unverified(b)) => a.received_ms.cmp(&b.received_ms),
        }
    }
}

/// A statement inserting any number of rows: `head`, then `row` once per row, then `tail`.
/// Written with `?` placeholders; [`MultiRow::sql`] numbers them for PostgreSQL.
struct MultiRow {
    head: &'static str,
    row: &'static str,
    tail: &'static str,
}

impl MultiRow {
    fn sql(&self, kind: DbKind, rows: usize) -> String {
        format!("{} VALUES {} {}", self.head, values(kind, self.row, rows), self.tail)
    }
}

/// An outbound call whose CallSid never reached its record: the webhook that brings it (its URL
/// carries the record's `req_id`) attaches it.
const ATTACH_CALL_SID: &str = "UPDATE calls SET call_sid = ? WHERE req_id = ? AND call_sid IS NULL
   AND NOT EXISTS (SELECT 1 FROM calls WHERE call_sid = ?)";

/// One row per CallSid: created by its first event, and given its tenant and lead by any event
/// that knows them. The tenant, when the webhook did not know it, is looked up by the business's
/// number (the called number of an inbound call, the caller of an outbound one), so a call spooled
/// while the database was down still lands in its business.
const UPSERT_CALLS: MultiRow = MultiRow {
    head: "INSERT INTO calls (call_sid, business_id, direction, from_number, to_number, status, lead_id, last_sequence, created_at, updated_at)",
    row: "(?, COALESCE(?, (SELECT id FROM businesses WHERE phone_number = ?)), ?, ?, ?, ?, ?, -1, ?, ?)",
    tail: "ON CONFLICT (call_sid) DO UPDATE SET
           business_id = COALESCE(calls.business_id, excluded.business_id),
           lead_id = COALESCE(calls.lead_id, excluded.lead_id)
         WHERE (calls.business_id IS NULL AND excluded.business_id IS NOT NULL)
            OR (calls.lead_id IS NULL AND excluded.lead_id IS NOT NULL)",
};

/// A status callback moves its call forward, never back: only a newer SequenceNumber applies.
const UPDATE_STATUS: &str =
    "UPDATE calls SET status = ?, last_sequence = ?, updated_at = ? WHERE call_sid = ? AND last_sequence < ?";

/// A call's row id by its CallSid, as [`INSERT_EVENTS`] spells it.
const CALL_BY_SID: &str = "(SELECT id FROM calls WHERE call_sid = ?)";

/// Every event once, under its call's row id (the call row is upserted first, in the same
/// transaction): a retry of the same (call, kind, sequence) is skipped.
/// With the event go its timeline fields: where and when it arrived, what we answered, whether a
/// status callback applied, and when it was spooled and stored.
const INSERT_EVENTS: MultiRow = MultiRow {
    head: "INSERT INTO call_events (call_id, kind, status, sequence, request_id, payload, received_at,
           received_ms, stored_ms, spooled_ms, instance_id, client, answer_status, answer_kind, twiml, latency_us, applied)",
    row: "((SELECT id FROM calls WHERE call_sid = ?), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    tail: "ON CONFLICT (call_id, kind, sequence) DO NOTHING",
};

/// A refused webhook.
const INSERT_ATTEMPT: &str = "INSERT INTO unverified_webhooks
    (received_ms, instance_id, route, call_sid, client, request_id, signature, likely_cause)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?)";
/// Keeps a client's newest `per_client` refused webhooks (client, client, per_client).
const PRUNE_CLIENT: &str = "DELETE FROM unverified_webhooks WHERE client = ? AND id <=
    (SELECT id FROM unverified_webhooks WHERE client = ? ORDER BY id DESC LIMIT 1 OFFSET ?)";
/// Keeps the newest `max_rows` refused webhooks (ids only grow).
const PRUNE_ROWS: &str = "DELETE FROM unverified_webhooks WHERE id <= (SELECT MAX(id) FROM unverified_webhooks) - ?";

impl CallEvent {
    /// The business whose number this call is on: the called number of an inbound call, the
    /// caller of an outbound one.
    fn business_number(&self) -> &str {
        if self.direction == "outbound" {
            &self.from
        } else {
            &self.to
        }
    }

    /// The sequence a status callback moves its call to.
    fn status_sequence(&self) -> i64 {
        self.sequence.unwrap_or(-1).max(0)
    }

    /// When it arrived, in Unix milliseconds (events spooled before the timeline existed carry
    /// only seconds).
    pub(crate) fn arrival_ms(&self) -> i64 {
        if self.received_ms > 0 {
            self.received_ms
        } else {
            self.received_at.saturating_mul(1000)
        }
    }

    /// The stored parameters: a JSON array of `[name, value]` pairs.
    fn payload(&self) -> String {
        self.params.to_json()
    }
}

/// Writes `events` and `attempts` through the pool in one transaction: the call rows (once per
/// CallSid), each status when its sequence is newer, the events (once per CallSid, kind and
/// sequence), then the refused webhooks. Applying an event twice changes nothing, so a batch may
/// hold retries of each other. Calls and events go in one multi-row statement each: on
/// PostgreSQL a statement is a network round trip. (A SQLite file is written by the group-commit
/// writer's own connection, [`write_sqlite`].)
///
/// # Errors
/// A database error; nothing is committed then.
async fn write_pool(db: &Db, events: &[&QueuedEvent], attempts: &[&Attempt]) -> Result<(), sqlx::Error> {
    if events.is_empty() && attempts.is_empty() {
        return Ok(());
    }
    db.run(|pool| async move {
        let mut tx = pool.begin().await?;
        for event in events {
            if let Some(req_id) = &event.req_id {
                sqlx::query(sqlx::AssertSqlSafe(values(db.kind(), ATTACH_CALL_SID, 1)))
                    .bind(&event.call_sid)
                    .bind(req_id)
                    .bind(&event.call_sid)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        if !events.is_empty() {
            upsert_calls(&mut tx, db.kind(), events).await?;
            // Status updates in CallSid order, like the rows above (see `Queued::order`).
            let mut applied = vec![None; events.len()];
            for (i, event) in events.iter().enumerate().filter(|(_, e)| e.kind == EventKind::Status) {
                let changed = sqlx::query(sqlx::AssertSqlSafe(values(db.kind(), UPDATE_STATUS, 1)))
                    .bind(&event.status)
                    .bind(event.status_sequence())
                    .bind(event.received_at)
                    .bind(&event.call_sid)
                    .bind(event.status_sequence())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                applied[i] = Some(changed > 0);
            }
            insert_events(&mut tx, db.kind(), events, &applied).await?;
        }
        for attempt in attempts {
            insert_attempt(&mut tx, db.kind(), attempt).await?;
        }
        if let Some(caps) = attempts.first().map(|a| a.caps) {
            let mut clients: Vec<&str> = attempts.iter().map(|a| a.client.as_str()).collect();
            clients.sort_unstable();
            clients.dedup();
            for client in clients {
                sqlx::query(sqlx::AssertSqlSafe(values(db.kind(), PRUNE_CLIENT, 1)))
                    .bind(client)
                    .bind(client)
                    .bind(caps.per_client)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query(sqlx::AssertSqlSafe(values(db.kind(), PRUNE_ROWS, 1)))
                .bind(caps.max_rows)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    })
    .await
}

async fn insert_attempt(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    kind: DbKind,
    attempt: &Attempt,
) -> Result<(), sqlx::Error> {
    sqlx::query(sqlx::AssertSqlSafe(values(kind, INSERT_ATTEMPT, 1)))
        .bind(attempt.received_ms)
        .bind(&attempt.instance_id)
        .bind(&attempt.route)
        .bind(&attempt.call_sid)
        .bind(&attempt.client)
        .bind(&attempt.request_id)
        .bind(attempt.signature)
        .bind(&attempt.likely_cause)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// `rows` copies of `row` (a tuple whose `?` are parameters), separated by commas. PostgreSQL gets
/// them numbered (`$1`, `$2`, …); SQLite keeps plain `?`, because numbered names cost it a linear
/// search per parameter (quadratic in a multi-row statement).
fn values(kind: DbKind, row: &str, rows: usize) -> String {
    let mut out = String::with_capacity((row.len() + 24) * rows);
    let mut n = 0;
    for i in 0..rows {
        if i > 0 {
            out.push_str(", ");
        }
        for ch in row.chars() {
            if ch == '?' && kind == DbKind::Postgres {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(ch);
            }
        }
    }
    out
}

/// [`UPSERT_CALLS`] for every CallSid of `events`, in one statement.
async fn upsert_calls(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    kind: DbKind,
    events: &[&QueuedEvent],
) -> Result<(), sqlx::Error> {
    // PostgreSQL refuses to upsert one row twice in a statement: one entry per CallSid.
    let mut calls: Vec<(&QueuedEvent, Option<i64>, Option<&String>)> = Vec::with_capacity(events.len());
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(events.len());
    for event in events {
        match index.get(event.call_sid.as_str()) {
            Some(&i) => {
                let (_, business, lead) = &mut calls[i];
                *business = business.or(event.business_id);
                *lead = lead.or(event.lead_id.as_ref());
            }
            None => {
                index.insert(&event.call_sid, calls.len());
                calls.push((event, event.business_id, event.lead_id.as_ref()));
            }
        }
    }
    let sql = UPSERT_CALLS.sql(kind, calls.len());
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(false);
    for (event, business, lead) in calls {
        query = query
            .bind(&event.call_sid)
            .bind(business)
            .bind(event.business_number())
            .bind(&event.direction)
            .bind(&event.from)
            .bind(&event.to)
            .bind(&event.status)
            .bind(lead)
            .bind(event.received_at)
            .bind(event.received_at);
    }
    query.execute(&mut **tx).await?;
    Ok(())
}

/// [`INSERT_EVENTS`] for every event, in one statement; `applied[i]` says whether the status
/// callback `events[i]` moved its call.
async fn insert_events(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    kind: DbKind,
    events: &[&QueuedEvent],
    applied: &[Option<bool>],
) -> Result<(), sqlx::Error> {
    let sql = INSERT_EVENTS.sql(kind, events.len());
    let stored_ms = now_ms();
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(false);
    for (event, applied) in events.iter().zip(applied) {
        let answer = event.answer.as_ref();
        query = query
            .bind(&event.call_sid)
            .bind(event.kind.as_str())
            .bind(&event.status)
            .bind(event.sequence.unwrap_or(-1))
            .bind(&event.request_id)
            .bind(&event.params_json)
            .bind(event.received_at)
            .bind(event.arrival_ms())
            .bind(stored_ms)
            .bind(event.spooled_ms)
            .bind(&event.instance_id)
            .bind(&event.client)
            .bind(answer.map(|a| i64::from(a.status)))
            .bind(answer.map(|a| a.kind.as_str()))
            .bind(answer.and_then(|a| a.twiml.as_deref()))
            .bind(event.latency_us)
            .bind(applied.map(i64::from));
    }
    query.execute(&mut **tx).await?;
    Ok(())
}

/// Writes `events` to a SQLite file in `tx`, with the same statements and the same effect as
/// [`write_pool`], one row at a time: on the writer's own connection a cached single-row
/// statement costs no parsing and no hop to another thread, so rows are cheaper one by one than in
/// a multi-row statement parsed for every batch. (The caller's transaction is `BEGIN IMMEDIATE`:
/// it takes the write lock up front, waiting within the busy timeout, instead of failing to
/// upgrade a read.)
///
/// # Errors
/// A SQLite error; nothing is committed then.
fn write_sqlite(tx: &rusqlite::Transaction<'_>, events: &[&QueuedEvent]) -> rusqlite::Result<()> {
    static UPSERT_ONE: LazyLock<String> = LazyLock::new(|| UPSERT_CALLS.sql(DbKind::Sqlite, 1));
    static INSERT_ONE: LazyLock<String> = LazyLock::new(|| INSERT_EVENTS.sql(DbKind::Sqlite, 1));
    // The same, for an event whose call the upsert just inserted: its row id is known.
    static INSERT_ONE_BY_ID: LazyLock<String> = LazyLock::new(|| INSERT_ONE.replacen(CALL_BY_SID, "?", 1));
    if events.is_empty() {
        return Ok(());
    }
    let mut attach = tx.prepare_cached(ATTACH_CALL_SID)?;
    for event in events {
        if let Some(req_id) = &event.req_id {
            attach.execute(rusqlite::params![event.call_sid, req_id, event.call_sid])?;
        }
    }
    let mut upsert = tx.prepare_cached(&UPSERT_ONE)?;
    let mut inserted = Vec::with_capacity(events.len());
    for event in events {
        let before = tx.last_insert_rowid();
        upsert.execute(rusqlite::params![
            event.call_sid,
            event.business_id,
            event.business_number(),
            event.direction,
            event.from,
            event.to,
            event.status,
            event.lead_id,
            event.received_at,
            event.received_at,
        ])?;
        // The connection's last inserted row id moves only when the upsert inserted the call
        // (should it land on the same number by chance, the event looks its call up instead).
        let after = tx.last_insert_rowid();
        inserted.push((after != before).then_some(after));
    }
    let mut status = tx.prepare_cached(UPDATE_STATUS)?;
    let mut applied = vec![None; events.len()];
    for (i, event) in events.iter().enumerate().filter(|(_, e)| e.kind == EventKind::Status) {
        let changed = status.execute(rusqlite::params![
            event.status,
            event.status_sequence(),
            event.received_at,
            event.call_sid,
            event.status_sequence(),
        ])?;
        applied[i] = Some(changed > 0);
    }
    let stored_ms = now_ms();
    let (mut by_sid, mut by_id) = (tx.prepare_cached(&INSERT_ONE)?, tx.prepare_cached(&INSERT_ONE_BY_ID)?);
    for ((event, applied), call_id) in events.iter().zip(applied).zip(inserted) {
        let answer = event.answer.as_ref();
        let (insert, call): (_, &dyn rusqlite::ToSql) = match &call_id {
            Some(id) => (&mut by_id, id),
            None => (&mut by_sid, &event.call_sid),
        };
        insert.execute(rusqlite::params![
            call,
            event.kind.as_str(),
            event.status,
            event.sequence.unwrap_or(-1),
            event.request_id,
            event.params_json,
            event.received_at,
            event.arrival_ms(),
            stored_ms,
            event.spooled_ms,
            event.instance_id,
            event.client,
            answer.map(|a| a.status),
            answer.map(|a| a.kind.as_str()),
            answer.and_then(|a| a.twiml.as_deref()),
            event.latency_us,
            applied,
        ])?;
    }
    Ok(())
}

/// Writes `attempts` in `tx` and prunes the table to its caps.
fn write_attempts_sqlite(tx: &rusqlite::Transaction<'_>, attempts: &[&Attempt]) -> rusqlite::Result<()> {
    let Some(caps) = attempts.first().map(|a| a.caps) else {
        return Ok(());
    };
    let mut insert = tx.prepare_cached(INSERT_ATTEMPT)?;
    for a in attempts {
        insert.execute(rusqlite::params![
            a.received_ms,
            a.instance_id,
            a.route,
            a.call_sid,
            a.client,
            a.request_id,
            a.signature,
            a.likely_cause,
        ])?;
    }
    let mut clients: Vec<&str> = attempts.iter().map(|a| a.client.as_str()).collect();
    clients.sort_unstable();
    clients.dedup();
    let mut prune = tx.prepare_cached(PRUNE_CLIENT)?;
    for client in clients {
        prune.execute(rusqlite::params![client, client, caps.per_client])?;
    }
    tx.prepare_cached(PRUNE_ROWS)?.execute([caps.max_rows])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_names_its_call_by_sid_or_by_id() {
        let by_sid = INSERT_EVENTS.sql(DbKind::Sqlite, 1);
        let by_id = by_sid.replacen(CALL_BY_SID, "?", 1);
        assert_ne!(by_id, by_sid);
        assert!(!by_id.contains("SELECT"), "{by_id}");
        assert_eq!(by_id.matches('?').count(), by_sid.matches('?').count());
    }

    #[test]
    fn multi_row_placeholders_follow_the_engine() {
        assert_eq!(values(DbKind::Postgres, "(?, ?)", 3), "($1, $2), ($3, $4), ($5, $6)");
        assert_eq!(values(DbKind::Sqlite, "(?, f(?))", 2), "(?, f(?)), (?, f(?))");
        assert_eq!(values(DbKind::Postgres, "(?, -1)", 1), "($1, -1)");
    }
}
