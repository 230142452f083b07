//! Call records that are never lost: written to the database when it answers in time, else
//! appended to the durable local spool and replayed later. Recording is idempotent by CallSid and
//! ordered by SequenceNumber, so retries, replays and late callbacks are all safe to apply again.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};
use std::time::{Duration, Instant};

use actix_web::web::Bytes;
use callplane_plugin_api::storage::sqlx::{self, Row};
use callplane_plugin_api::storage::{Db, DbKind, Spool, SqliteWriter, is_connection_error, rusqlite};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::params::Params;
use crate::twiml;

/// How long a webhook waits for the database before it spools instead: Twilio gives up after 15 s.
pub const DB_WRITE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a business lookup waits before falling back to the cache.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a cached business is used without asking the database again.
const CACHE_TTL: Duration = Duration::from_secs(30);

pub use callplane_plugin_api::timestamps::now;

/// Which webhook an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// `/webhook/incoming_call`.
    Incoming,
    /// `/webhook/outbound_call` (the callee answered).
    OutboundAnswered,
    /// `/webhook/call_status`.
    Status,
}

impl EventKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Incoming => "incoming",
            Self::OutboundAnswered => "outbound_answered",
            Self::Status => "status",
        }
    }
}

/// One webhook, as recorded (and as spooled: one JSON line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallEvent {
    /// Which webhook.
    pub kind: EventKind,
    /// Twilio's CallSid.
    pub call_sid: String,
    /// The tenant, when known.
    pub business_id: Option<i64>,
    /// `inbound` or `outbound`.
    pub direction: String,
    /// Caller.
    pub from: String,
    /// Callee.
    pub to: String,
    /// Twilio's CallStatus.
    pub status: String,
    /// Twilio's SequenceNumber (status callbacks).
    pub sequence: Option<i64>,
    /// The lead of an outbound call.
    pub lead_id: Option<String>,
    /// The request id of the webhook.
    pub request_id: Option<String>,
    /// The REQ id of the outbound request that placed the call (from the webhook URL).
    #[serde(default)]
    pub req_id: Option<String>,
    /// Every form parameter Twilio sent.
    pub params: Params,
    /// When it arrived (Unix seconds).
    pub received_at: i64,
}

/// Where a recorded event went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Committed to the database.
    Database,
    /// Durably spooled; replayed when the database is back.
    Spooled,
    /// Neither: the database and the spool both failed (logged as an error, counted).
    Lost,
    /// Not recorded on purpose: `CALLPLANE_RECORD_CALLS=false` (benchmarks only).
    Disabled,
}

impl Recorded {
    /// `true`, `spooled` or `false`, as the outcome line says.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Database => "true",
            Self::Spooled => "spooled",
            Self::Lost => "false",
            Self::Disabled => "disabled",
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

/// Every event once, under its call's row id (the call row is upserted first, in the same
/// transaction): a retry of the same (call, kind, sequence) is skipped.
const INSERT_EVENTS: MultiRow = MultiRow {
    head: "INSERT INTO call_events (call_id, kind, status, sequence, request_id, payload, received_at)",
    row: "((SELECT id FROM calls WHERE call_sid = ?), ?, ?, ?, ?, ?, ?)",
    tail: "ON CONFLICT (call_id, kind, sequence) DO NOTHING",
};

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

    /// The stored parameters: a JSON array of `[name, value]` pairs.
    fn payload(&self) -> String {
        serde_json::to_string(&self.params).unwrap_or_else(|_| "[]".to_owned())
    }
}

/// Writes `events` through the pool in one transaction: the call rows (once per CallSid), each
/// status when its sequence is newer, and the events (once per CallSid, kind and sequence).
/// Applying an event twice changes nothing, so a batch may hold retries of each other. Calls and
/// events go in one multi-row statement each: on PostgreSQL a statement is a network round trip.
/// (A SQLite file is written by the group-commit writer's own connection, [`write_sqlite`].)
///
/// # Errors
/// A database error; nothing is committed then.
async fn write_events(db: &Db, events: &[&Pending]) -> Result<(), sqlx::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let mut tx = db.pool().begin().await?;
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
    upsert_calls(&mut tx, db.kind(), events).await?;
    // Status updates in CallSid order, like the rows above (see `commit`).
    let mut statuses: Vec<&&Pending> = events.iter().filter(|e| e.kind == EventKind::Status).collect();
    statuses.sort_by(|a, b| a.call_sid.cmp(&b.call_sid));
    for event in statuses {
        sqlx::query(sqlx::AssertSqlSafe(values(db.kind(), UPDATE_STATUS, 1)))
            .bind(&event.status)
            .bind(event.status_sequence())
            .bind(event.received_at)
            .bind(&event.call_sid)
            .bind(event.status_sequence())
            .execute(&mut *tx)
            .await?;
    }
    insert_events(&mut tx, db.kind(), events).await?;
    tx.commit().await
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
    events: &[&Pending],
) -> Result<(), sqlx::Error> {
    // PostgreSQL refuses to upsert one row twice in a statement: one entry per CallSid.
    let mut calls: Vec<(&Pending, Option<i64>, Option<&String>)> = Vec::with_capacity(events.len());
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

/// [`INSERT_EVENTS`] for every event, in one statement.
async fn insert_events(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    kind: DbKind,
    events: &[&Pending],
) -> Result<(), sqlx::Error> {
    let sql = INSERT_EVENTS.sql(kind, events.len());
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(false);
    for event in events {
        query = query
            .bind(&event.call_sid)
            .bind(event.kind.as_str())
            .bind(&event.status)
            .bind(event.sequence.unwrap_or(-1))
            .bind(&event.request_id)
            .bind(&event.params_json)
            .bind(event.received_at);
    }
    query.execute(&mut **tx).await?;
    Ok(())
}

/// Writes `events` to a SQLite file in one transaction, with the same statements and the same
/// effect as [`write_events`], one row at a time: on the writer's own connection a cached
/// single-row statement costs no parsing and no hop to another thread, so rows are cheaper one by
/// one than in a multi-row statement parsed for every batch. `BEGIN IMMEDIATE` takes the write
/// lock up front (waiting for it within the busy timeout) instead of failing to upgrade a read.
///
/// # Errors
/// A SQLite error; nothing is committed then.
fn write_sqlite(conn: &mut rusqlite::Connection, events: &[&Pending]) -> rusqlite::Result<()> {
    static UPSERT_ONE: LazyLock<String> = LazyLock::new(|| UPSERT_CALLS.sql(DbKind::Sqlite, 1));
    static INSERT_ONE: LazyLock<String> = LazyLock::new(|| INSERT_EVENTS.sql(DbKind::Sqlite, 1));
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    {
        let mut attach = tx.prepare_cached(ATTACH_CALL_SID)?;
        for event in events {
            if let Some(req_id) = &event.req_id {
                attach.execute(rusqlite::params![event.call_sid, req_id, event.call_sid])?;
            }
        }
        let mut upsert = tx.prepare_cached(&UPSERT_ONE)?;
        for event in events {
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
        }
        let mut status = tx.prepare_cached(UPDATE_STATUS)?;
        for event in events.iter().filter(|e| e.kind == EventKind::Status) {
            status.execute(rusqlite::params![
                event.status,
                event.status_sequence(),
                event.received_at,
                event.call_sid,
                event.status_sequence(),
            ])?;
        }
        let mut insert = tx.prepare_cached(&INSERT_ONE)?;
        for event in events {
            insert.execute(rusqlite::params![
                event.call_sid,
                event.kind.as_str(),
                event.status,
                event.sequence.unwrap_or(-1),
                event.request_id,
                event.params_json,
                event.received_at,
            ])?;
        }
    }
    tx.commit()
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// Records events: the database first, the spool when the database fails or is slow.
#[derive(Debug, Clone)]
pub struct Recorder {
    spool: Arc<Spool>,
    recorded: Family<OutcomeLabels, Counter>,
    group: GroupCommit,
    enabled: bool,
}

/// The most events one transaction commits.
const MAX_BATCH: usize = 256;
/// Events waiting for the writer; a webhook that finds the queue full waits (within its timeout)
/// and spools when that runs out.
const QUEUE: usize = 4096;

/// Group commit: webhooks hand their events to one writer thread, which commits everything queued
/// so far (up to [`MAX_BATCH`]) in one transaction and tells every owner. There is no timer: a
/// batch is what arrived while the previous commit ran (and while the writer yielded its CPU to
/// the workers a few times, [`gather`]), so one event alone commits at once, and under load an
/// event waits for at most the commit in progress plus its own. The writer has its
/// own thread so that its work never queues behind HTTP requests on a worker (on PostgreSQL a
/// pooled connection is still driven by the runtime that opened it, which may be a worker's).
#[derive(Debug, Clone)]
struct GroupCommit {
    db: Db,
    batch_sizes: Histogram,
    /// Started on first use: commands that never record a call start no thread.
    writer: Arc<std::sync::Mutex<Option<mpsc::Sender<Pending>>>>,
}

/// An event waiting for the writer.
#[derive(Debug)]
struct Pending {
    /// Shared with the owner, who spools it if the commit does not answer in time.
    event: Arc<CallEvent>,
    /// Its stored parameters ([`CallEvent::payload`]), serialised by the owner: the HTTP workers
    /// run in parallel, the one writer is what every webhook waits for.
    params_json: String,
    committed: oneshot::Sender<bool>,
}

impl std::ops::Deref for Pending {
    type Target = CallEvent;

    fn deref(&self) -> &CallEvent {
        &self.event
    }
}

/// Where the writer commits.
enum Store {
    /// A SQLite file, through the writer's own connection ([`write_sqlite`]).
    Sqlite(SqliteWriter),
    /// PostgreSQL (or an in-memory SQLite database), through the pool ([`write_events`]).
    Pool(Db),
}

/// Why a batch was not committed.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    /// The connection broke: the same batch may well succeed on another one.
    #[error("connection lost: {0}")]
    Connection(String),
    /// A statement failed: one event of the batch may be at fault.
    #[error("{0}")]
    Statement(String),
    /// The database cannot take writes now (locked, disk full, pool exhausted, …).
    #[error("{0}")]
    Unavailable(String),
    /// No answer within [`DB_WRITE_TIMEOUT`].
    #[error("timed out after {DB_WRITE_TIMEOUT:?}")]
    TimedOut,
}

impl Store {
    /// The writer's store: its own connection to a SQLite file, else the pool.
    fn open(db: &Db) -> Self {
        match db.open_sqlite_writer() {
            Some(Ok(conn)) => Self::Sqlite(conn),
            Some(Err(error)) => {
                tracing::warn!(error = %error, "[TWILIO] the call-record writer cannot open its SQLite connection; writing through the pool");
                Self::Pool(db.clone())
            }
            None => Self::Pool(db.clone()),
        }
    }

    async fn write(&mut self, events: &[&Pending]) -> Result<(), WriteError> {
        match self {
            Self::Sqlite(conn) => write_sqlite(conn, events).map_err(|error| {
                use rusqlite::ErrorCode as Code;
                match error.sqlite_error_code() {
                    Some(
                        Code::DatabaseBusy
                        | Code::DatabaseLocked
                        | Code::DiskFull
                        | Code::SystemIoFailure
                        | Code::CannotOpen
                        | Code::ReadOnly
                        | Code::OutOfMemory,
                    ) => WriteError::Unavailable(error.to_string()),
                    _ => WriteError::Statement(error.to_string()),
                }
            }),
            Self::Pool(db) => match tokio::time::timeout(DB_WRITE_TIMEOUT, write_events(db, events)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) if is_connection_error(&error) => Err(WriteError::Connection(error.to_string())),
                Ok(Err(sqlx::Error::Database(error))) => Err(WriteError::Statement(error.to_string())),
                Ok(Err(error)) => Err(WriteError::Unavailable(error.to_string())),
                Err(_) => Err(WriteError::TimedOut),
            },
        }
    }
}

impl GroupCommit {
    /// Whether `event` was committed. `false` (or never answering, for the caller's timeout) means
    /// it may or may not be in the database: spool it, applying it twice is harmless.
    async fn write(&self, event: Arc<CallEvent>) -> bool {
        let Some(writer) = self.writer() else { return false };
        let (committed, done) = oneshot::channel();
        let params_json = event.payload();
        let pending = Pending {
            event,
            params_json,
            committed,
        };
        if writer.send(pending).await.is_err() {
            return false;
        }
        done.await.unwrap_or(false)
    }

    fn writer(&self) -> Option<mpsc::Sender<Pending>> {
        let mut slot = self.writer.lock().ok()?;
        if slot.as_ref().is_none_or(mpsc::Sender::is_closed) {
            let (tx, rx) = mpsc::channel(QUEUE);
            let store = Store::open(&self.db);
            let sizes = self.batch_sizes.clone();
            let mut runtime = tokio::runtime::Builder::new_current_thread();
            // A SQLite writer does no network I/O: its thread sleeps on a futex, not in epoll.
            match store {
                Store::Sqlite(_) => runtime.enable_time(),
                Store::Pool(_) => runtime.enable_all(),
            };
            let spawned = runtime.build().and_then(|runtime| {
                std::thread::Builder::new()
                    .name("call-recorder".to_owned())
                    .spawn(move || runtime.block_on(write_batches(store, rx, sizes)))
            });
            if let Err(error) = spawned {
                tracing::error!(error = %error, "[TWILIO] the call-record writer cannot start");
                return None;
            }
            *slot = Some(tx);
        }
        slot.clone()
    }
}

/// The writer: takes what is queued, commits it as one batch, answers, repeats.
async fn write_batches(mut store: Store, mut queue: mpsc::Receiver<Pending>, batch_sizes: Histogram) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        gather(&mut queue, &mut batch);
        // Owners that stopped waiting (their timeout ran out) have spooled their event already.
        batch.retain(|p: &Pending| !p.committed.is_closed());
        if batch.is_empty() {
            continue;
        }
        batch_sizes.observe(batch.len() as f64);
        commit(&mut store, std::mem::take(&mut batch)).await;
    }
}

/// A batch smaller than this is worth waiting for, see [`gather`].
const GATHER_BELOW: usize = 32;
/// How many times the writer yields its CPU for a small batch, see [`gather`].
const GATHER_YIELDS: usize = 3;

/// Lets a small batch grow before it is committed, without a timer: the writer yields its CPU (at
/// most [`GATHER_YIELDS`] times), so that HTTP workers ready to run hand over their events first,
/// and takes what they queued meanwhile. Much of a commit's cost is the same for one event as for
/// many (the write lock, and the pages every commit rewrites, written to the log once per commit),
/// so this saved the writer 15–25 % of its CPU per event under load (docs/performance.md). When
/// nothing else is waiting for a CPU a yield returns at once: a lone event is not held up. At
/// worst a yield costs one scheduler time slice of whatever runs instead (a few milliseconds, far
/// inside [`DB_WRITE_TIMEOUT`]).
fn gather(queue: &mut mpsc::Receiver<Pending>, batch: &mut Vec<Pending>) {
    for _ in 0..GATHER_YIELDS {
        if batch.len() >= GATHER_BELOW {
            return;
        }
        std::thread::yield_now();
        while batch.len() < MAX_BATCH {
            let Ok(pending) = queue.try_recv() else { break };
            batch.push(pending);
        }
    }
}

/// Commits `batch` in one transaction. A batch that lost its connection is tried once more (the
/// pool hands out another one); when a statement fails, each event is retried alone so that one
/// bad event cannot sink the others.
async fn commit(store: &mut Store, mut batch: Vec<Pending>) {
    // The same order in every instance's transactions: two batches sharing CallSids lock their
    // rows in the same order and cannot deadlock each other.
    batch.sort_by(|a, b| a.call_sid.cmp(&b.call_sid));
    let events: Vec<&Pending> = batch.iter().collect();
    let mut result = store.write(&events).await;
    if let Err(WriteError::Connection(error)) = &result {
        tracing::warn!(error = %error, events = batch.len(), "[TWILIO] batch lost its connection; retrying once");
        result = store.write(&events).await;
    }
    drop(events);
    match result {
        Ok(()) => {
            for Pending { event, committed, .. } in batch {
                // The owner frees the event, on its own thread: not this one, which every
                // webhook waits for.
                drop(event);
                let _ = committed.send(true);
            }
        }
        Err(WriteError::Statement(error)) if batch.len() > 1 => {
            tracing::warn!(error = %error, events = batch.len(), "[TWILIO] batch failed; writing its events one by one");
            for pending in batch {
                let ok = store.write(&[&pending]).await.is_ok();
                let _ = pending.committed.send(ok);
            }
        }
        // Every owner hears a dropped sender and spools its own event.
        Err(error) => tracing::warn!(error = %error, events = batch.len(), "[TWILIO] database write failed"),
    }
}

impl Recorder {
    /// A recorder over `db` and `spool`, counting into `metrics`
    /// (`callplane_twilio_calls_recorded_total{outcome}`).
    /// With `enabled` false nothing is recorded (`CALLPLANE_RECORD_CALLS=false`, benchmarks only).
    pub fn new(db: Db, spool: Arc<Spool>, enabled: bool, metrics: &mut Registry) -> Self {
        let recorded = Family::default();
        metrics.register(
            "calls_recorded",
            "Call events by where they were recorded (database, spooled, lost)",
            recorded.clone(),
        );
        let batch_sizes = Histogram::new(exponential_buckets(1.0, 2.0, 9));
        metrics.register(
            "record_batch_size",
            "Call events committed per database transaction (group commit)",
            batch_sizes.clone(),
        );
        let group = GroupCommit {
            db,
            batch_sizes,
            writer: Arc::default(),
        };
        Self {
            spool,
            recorded,
            group,
            enabled,
        }
    }

    /// The spool.
    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    fn count(&self, outcome: &'static str) {
        self.recorded.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Records the event `event` builds durably before returning: committed to the database
    /// (group commit, see [`GroupCommit`]) or, when the database fails or does not answer within
    /// [`DB_WRITE_TIMEOUT`], fsync'd to the spool. (With recording disabled the event is not even
    /// built.)
    pub async fn record(&self, event: impl FnOnce() -> CallEvent) -> Recorded {
        if !self.enabled {
            self.count("disabled");
            return Recorded::Disabled;
        }
        let event = Arc::new(event());
        match tokio::time::timeout(DB_WRITE_TIMEOUT, self.group.write(event.clone())).await {
            Ok(true) => {
                self.count("database");
                return Recorded::Database;
            }
            Ok(false) => tracing::warn!(call_sid = %event.call_sid, "[TWILIO] database write failed; spooling"),
            Err(_) => tracing::warn!(call_sid = %event.call_sid, "[TWILIO] database write timed out; spooling"),
        }
        let line = match serde_json::to_string(&*event) {
            Ok(line) => line,
            Err(error) => {
                tracing::error!(call_sid = %event.call_sid, error = %error, "[TWILIO] call event cannot be serialised: LOST");
                self.count("lost");
                return Recorded::Lost;
            }
        };
        match self.spool.append(&line).await {
            Ok(()) => {
                self.count("spooled");
                Recorded::Spooled
            }
            Err(error) => {
                tracing::error!(call_sid = %event.call_sid, error = %error, spool = %self.spool.path().display(), "[TWILIO] call event could not be spooled: LOST");
                self.count("lost");
                Recorded::Lost
            }
        }
    }

    /// Moves spooled events into the database, through the group commit like any webhook's;
    /// returns how many were applied.
    ///
    /// # Errors
    /// An I/O error of the spool file.
    pub async fn replay(&self) -> std::io::Result<usize> {
        self.spool
            .replay(|line| async move {
                let Ok(event) = serde_json::from_str::<CallEvent>(&line) else {
                    tracing::error!(line = %line, "[TWILIO] unreadable spool line skipped");
                    return Ok(());
                };
                match tokio::time::timeout(DB_WRITE_TIMEOUT, self.group.write(Arc::new(event))).await {
                    Ok(true) => Ok(()),
                    _ => Err(()),
                }
            })
            .await
    }

    /// Replays the spool every `every` while the server runs.
    pub async fn replay_forever(self, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            match self.replay().await {
                Ok(0) => {}
                Ok(n) => {
                    let left = self.spool.backlog().await.unwrap_or(0);
                    tracing::info!(
                        replayed = n,
                        backlog = left,
                        "[TWILIO] spool replayed into the database"
                    );
                }
                Err(error) => tracing::error!(error = %error, "[TWILIO] spool replay failed"),
            }
        }
    }
}

/// A business as the webhooks need it, as read from the database ([`Business::new`] renders its
/// greeting; the business is shared read-only from then on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Business {
    /// Id.
    pub id: i64,
    /// What callers hear.
    pub greeting: String,
    /// Optional media-stream URL.
    pub media_stream_url: Option<String>,
    /// The greeting as TwiML, rendered (and escaped) once when the business is read: every call
    /// to the number is answered with it.
    greeting_twiml: Bytes,
}

impl Business {
    /// A business, its greeting rendered.
    pub fn new(id: i64, greeting: String, media_stream_url: Option<String>) -> Self {
        Self {
            greeting_twiml: twiml::say(&greeting, false).into(),
            id,
            greeting,
            media_stream_url,
        }
    }

    /// What a caller hears: the business's media stream, else its greeting.
    pub fn answer(&self, call_sid: &str) -> Bytes {
        match &self.media_stream_url {
            Some(url) => twiml::stream(url, call_sid, self.id).into(),
            None => self.greeting_twiml.clone(),
        }
    }
}

/// The answer of a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The number belongs to this business.
    Known(Arc<Business>),
    /// No business has this number.
    Unknown,
    /// The database did not answer and nothing is cached.
    Unavailable,
}

/// A number's business (or its absence) and when that was read.
type CacheEntry = (Option<Arc<Business>>, Instant);

/// Businesses by phone number, cached so that a database outage does not silence known numbers.
#[derive(Debug, Clone)]
pub struct Directory {
    db: Db,
    cache: Arc<RwLock<HashMap<String, CacheEntry>>>,
}

impl Directory {
    /// A directory over `db`.
    pub fn new(db: Db) -> Self {
        Self {
            db,
            cache: Arc::default(),
        }
    }

    /// The business that owns `number`.
    pub async fn by_number(&self, number: &str) -> Lookup {
        let cached = self.cache.read().ok().and_then(|c| c.get(number).cloned());
        if let Some((entry, at)) = &cached
            && at.elapsed() < CACHE_TTL
        {
            return entry.clone().map_or(Lookup::Unknown, Lookup::Known);
        }
        let query = sqlx::query("SELECT id, greeting, media_stream_url FROM businesses WHERE phone_number = $1")
            .bind(number)
            .fetch_optional(self.db.pool());
        match tokio::time::timeout(LOOKUP_TIMEOUT, query).await {
            Ok(Ok(row)) => {
                let business = row.and_then(|r| {
                    Some(Arc::new(Business::new(
                        r.try_get(0).ok()?,
                        r.try_get(1).ok()?,
                        r.try_get(2).ok()?,
                    )))
                });
                if let Ok(mut cache) = self.cache.write() {
                    cache.insert(number.to_owned(), (business.clone(), Instant::now()));
                }
                business.map_or(Lookup::Unknown, Lookup::Known)
            }
            _ => {
                tracing::warn!(number = %number, cached = cached.is_some(), "[TWILIO] business lookup failed; using the cache");
                match cached {
                    Some((entry, _)) => entry.map_or(Lookup::Unknown, Lookup::Known),
                    None => Lookup::Unavailable,
                }
            }
        }
    }

    /// The business with `id` (for outbound webhooks, which carry it).
    pub async fn by_id(&self, id: i64) -> Option<Business> {
        let query = sqlx::query("SELECT id, greeting, media_stream_url FROM businesses WHERE id = $1")
            .bind(id)
            .fetch_optional(self.db.pool());
        let row = tokio::time::timeout(LOOKUP_TIMEOUT, query).await.ok()?.ok()??;
        Some(Business::new(
            row.try_get(0).ok()?,
            row.try_get(1).ok()?,
            row.try_get(2).ok()?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_business_answers_with_its_greeting_rendered_once_or_its_stream() {
        let business = Business::new(7, "Tom & Jerry's".into(), None);
        let answer = business.answer("CA1");
        assert!(
            answer.ends_with(b"<Say>Tom &amp; Jerry&apos;s</Say></Response>"),
            "{answer:?}"
        );
        assert_eq!(
            answer.as_ptr(),
            business.answer("CA2").as_ptr(),
            "every call shares the rendered greeting"
        );
        let streamed = Business::new(7, "hi".into(), Some("wss://media.example/s".into()));
        let answer = String::from_utf8(streamed.answer("CA3").to_vec()).unwrap();
        assert!(
            answer.contains(r#"<Stream url="wss://media.example/s"><Parameter name="call_sid" value="CA3"/>"#),
            "{answer}"
        );
    }

    fn pending(n: usize) -> Pending {
        let event = CallEvent {
            kind: EventKind::Incoming,
            call_sid: format!("CA{n:032}"),
            business_id: None,
            direction: "inbound".into(),
            from: String::new(),
            to: String::new(),
            status: "ringing".into(),
            sequence: None,
            lead_id: None,
            request_id: None,
            req_id: None,
            params: Params::default(),
            received_at: 0,
        };
        Pending {
            event: Arc::new(event),
            params_json: "[]".into(),
            committed: oneshot::channel().0,
        }
    }

    #[test]
    fn a_small_batch_takes_what_is_queued_and_a_large_one_is_left_alone() {
        let (tx, mut rx) = mpsc::channel(QUEUE);
        for n in 0..GATHER_BELOW + 10 {
            tx.try_send(pending(n)).unwrap();
        }
        let mut batch = vec![rx.try_recv().unwrap()];
        gather(&mut rx, &mut batch);
        assert_eq!(batch.len(), GATHER_BELOW + 10, "everything queued joins a small batch");

        for n in 0..5 {
            tx.try_send(pending(n)).unwrap();
        }
        let mut large: Vec<Pending> = (0..GATHER_BELOW).map(pending).collect();
        gather(&mut rx, &mut large);
        assert_eq!(large.len(), GATHER_BELOW, "a batch of {GATHER_BELOW} commits as it is");
        assert_eq!(rx.len(), 5);
    }

    #[test]
    fn multi_row_placeholders_follow_the_engine() {
        assert_eq!(values(DbKind::Postgres, "(?, ?)", 3), "($1, $2), ($3, $4), ($5, $6)");
        assert_eq!(values(DbKind::Sqlite, "(?, f(?))", 2), "(?, f(?)), (?, f(?))");
        assert_eq!(values(DbKind::Postgres, "(?, -1)", 1), "($1, -1)");
    }
}
