//! Call records that are never lost: written to the database when it answers in time, else
//! appended to the durable local spool and replayed later. Recording is idempotent by CallSid and
//! ordered by SequenceNumber, so retries, replays and late callbacks are all safe to apply again.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use callplane_plugin_api::storage::sqlx::{self, Row};
use callplane_plugin_api::storage::{Db, DbKind, Spool, is_connection_error};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

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
    pub params: Vec<(String, String)>,
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

/// Writes one event in one transaction (see [`write_events`]).
///
/// # Errors
/// A database error; nothing is committed then.
pub async fn write_event(db: &Db, event: &CallEvent) -> Result<(), sqlx::Error> {
    write_events(db, &[event]).await
}

/// Writes `events` in one transaction: the call rows (once per CallSid), each status when its
/// sequence is newer, and the events (once per CallSid, kind and sequence). Applying an event
/// twice changes nothing, so a batch may hold retries of each other. Calls and events go in one
/// multi-row statement each, so a batch of a hundred webhooks costs a handful of statements.
///
/// # Errors
/// A database error; nothing is committed then.
pub async fn write_events(db: &Db, events: &[&CallEvent]) -> Result<(), sqlx::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let mut tx = db.pool().begin().await?;
    for event in events {
        if let Some(req_id) = &event.req_id {
            // An outbound call whose CallSid never reached its record: this webhook brings it.
            sqlx::query(
                "UPDATE calls SET call_sid = $1 WHERE req_id = $2 AND call_sid IS NULL
                   AND NOT EXISTS (SELECT 1 FROM calls WHERE call_sid = $3)",
            )
            .bind(&event.call_sid)
            .bind(req_id)
            .bind(&event.call_sid)
            .execute(&mut *tx)
            .await?;
        }
    }
    upsert_calls(&mut tx, db.kind(), events).await?;
    // Status updates in CallSid order, like the rows above (see `commit`).
    let mut statuses: Vec<&&CallEvent> = events.iter().filter(|e| e.kind == EventKind::Status).collect();
    statuses.sort_by(|a, b| a.call_sid.cmp(&b.call_sid));
    for event in statuses {
        sqlx::query("UPDATE calls SET status = $1, last_sequence = $2, updated_at = $3 WHERE call_sid = $4 AND last_sequence < $2")
            .bind(&event.status)
            .bind(event.sequence.unwrap_or(-1).max(0))
            .bind(event.received_at)
            .bind(&event.call_sid)
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

/// One row per CallSid: created by its first event, and given its tenant and lead by any event
/// that knows them. The tenant, when the webhook did not know it, is looked up by the business's
/// number (the called number of an inbound call, the caller of an outbound one), so a call spooled
/// while the database was down still lands in its business.
async fn upsert_calls(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    kind: DbKind,
    events: &[&CallEvent],
) -> Result<(), sqlx::Error> {
    // PostgreSQL refuses to upsert one row twice in a statement: one entry per CallSid.
    let mut calls: Vec<(&CallEvent, Option<i64>, Option<&String>)> = Vec::with_capacity(events.len());
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
    let sql = format!(
        "INSERT INTO calls (call_sid, business_id, direction, from_number, to_number, status, lead_id, last_sequence, created_at, updated_at)
         VALUES {}
         ON CONFLICT (call_sid) DO UPDATE SET
           business_id = COALESCE(calls.business_id, excluded.business_id),
           lead_id = COALESCE(calls.lead_id, excluded.lead_id)
         WHERE (calls.business_id IS NULL AND excluded.business_id IS NOT NULL)
            OR (calls.lead_id IS NULL AND excluded.lead_id IS NOT NULL)",
        values(
            kind,
            "(?, COALESCE(?, (SELECT id FROM businesses WHERE phone_number = ?)), ?, ?, ?, ?, ?, -1, ?, ?)",
            calls.len()
        ),
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(false);
    for (event, business, lead) in calls {
        let number = if event.direction == "outbound" {
            &event.from
        } else {
            &event.to
        };
        query = query
            .bind(&event.call_sid)
            .bind(business)
            .bind(number)
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

/// Every event once: a retry of the same (CallSid, kind, sequence) is skipped.
async fn insert_events(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    kind: DbKind,
    events: &[&CallEvent],
) -> Result<(), sqlx::Error> {
    let sql = format!(
        "INSERT INTO call_events (call_sid, kind, status, sequence, request_id, payload, received_at)
         VALUES {} ON CONFLICT (call_sid, kind, sequence) DO NOTHING",
        values(kind, "(?, ?, ?, ?, ?, ?, ?)", events.len()),
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(false);
    for event in events {
        let payload = serde_json::to_string(&event.params).unwrap_or_else(|_| "[]".to_owned());
        query = query
            .bind(&event.call_sid)
            .bind(event.kind.as_str())
            .bind(&event.status)
            .bind(event.sequence.unwrap_or(-1))
            .bind(&event.request_id)
            .bind(payload)
            .bind(event.received_at);
    }
    query.execute(&mut **tx).await?;
    Ok(())
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

/// Records events: the database first, the spool when the database fails or is slow.
#[derive(Debug, Clone)]
pub struct Recorder {
    db: Db,
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
/// batch is what arrived while the previous commit ran, so one event alone commits at once, and
/// under load an event waits for at most the commit in progress plus its own. The writer has its
/// own thread so that its work never queues behind HTTP requests on a worker (on PostgreSQL a
/// pooled connection is still driven by the runtime that opened it, which may be a worker's).
#[derive(Debug, Clone)]
struct GroupCommit {
    db: Db,
    batch_sizes: Histogram,
    /// Started on first use: commands that never record a call start no thread.
    writer: Arc<std::sync::Mutex<Option<mpsc::Sender<Pending>>>>,
}

#[derive(Debug)]
struct Pending {
    event: CallEvent,
    committed: oneshot::Sender<bool>,
}

impl GroupCommit {
    /// Whether `event` was committed. `false` (or never answering, for the caller's timeout) means
    /// it may or may not be in the database: spool it, applying it twice is harmless.
    async fn write(&self, event: &CallEvent) -> bool {
        let Some(writer) = self.writer() else { return false };
        let (committed, done) = oneshot::channel();
        let pending = Pending {
            event: event.clone(),
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
            let (db, sizes) = (self.db.clone(), self.batch_sizes.clone());
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            let spawned = runtime.and_then(|runtime| {
                std::thread::Builder::new()
                    .name("call-recorder".to_owned())
                    .spawn(move || runtime.block_on(write_batches(db, rx, sizes)))
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
async fn write_batches(db: Db, mut queue: mpsc::Receiver<Pending>, batch_sizes: Histogram) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // Owners that stopped waiting (their timeout ran out) have spooled their event already.
        batch.retain(|p: &Pending| !p.committed.is_closed());
        if batch.is_empty() {
            continue;
        }
        batch_sizes.observe(batch.len() as f64);
        commit(&db, std::mem::take(&mut batch)).await;
    }
}

/// Commits `batch` in one transaction. A batch that lost its connection is tried once more (the
/// pool hands out another one); when a statement fails, each event is retried alone so that one
/// bad event cannot sink the others.
async fn commit(db: &Db, mut batch: Vec<Pending>) {
    // The same order in every instance's transactions: two batches sharing CallSids lock their
    // rows in the same order and cannot deadlock each other.
    batch.sort_by(|a, b| a.event.call_sid.cmp(&b.event.call_sid));
    let events: Vec<&CallEvent> = batch.iter().map(|p| &p.event).collect();
    let mut attempt = tokio::time::timeout(DB_WRITE_TIMEOUT, write_events(db, &events)).await;
    if let Ok(Err(error)) = &attempt
        && is_connection_error(error)
    {
        tracing::warn!(error = %error, events = batch.len(), "[TWILIO] batch lost its connection; retrying once");
        attempt = tokio::time::timeout(DB_WRITE_TIMEOUT, write_events(db, &events)).await;
    }
    drop(events);
    match attempt {
        Ok(Ok(())) => {
            for pending in batch {
                let _ = pending.committed.send(true);
            }
        }
        Ok(Err(sqlx::Error::Database(error))) if batch.len() > 1 => {
            tracing::warn!(error = %error, events = batch.len(), "[TWILIO] batch failed; writing its events one by one");
            let _ = tokio::time::timeout(DB_WRITE_TIMEOUT, async {
                for pending in batch {
                    let ok = write_event(db, &pending.event).await.is_ok();
                    let _ = pending.committed.send(ok);
                }
            })
            .await;
        }
        // Every owner hears a dropped sender and spools its own event.
        Ok(Err(error)) => tracing::warn!(error = %error, events = batch.len(), "[TWILIO] database write failed"),
        Err(_) => tracing::warn!(events = batch.len(), "[TWILIO] database write timed out"),
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
            db: db.clone(),
            batch_sizes,
            writer: Arc::default(),
        };
        Self {
            db,
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

    fn count(&self, outcome: &str) {
        self.recorded
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Records `event` durably before returning: committed to the database (group commit, see
    /// [`GroupCommit`]) or, when the database fails or does not answer within
    /// [`DB_WRITE_TIMEOUT`], fsync'd to the spool.
    pub async fn record(&self, event: &CallEvent) -> Recorded {
        if !self.enabled {
            self.count("disabled");
            return Recorded::Disabled;
        }
        match tokio::time::timeout(DB_WRITE_TIMEOUT, self.group.write(event)).await {
            Ok(true) => {
                self.count("database");
                return Recorded::Database;
            }
            Ok(false) => tracing::warn!(call_sid = %event.call_sid, "[TWILIO] database write failed; spooling"),
            Err(_) => tracing::warn!(call_sid = %event.call_sid, "[TWILIO] database write timed out; spooling"),
        }
        let line = match serde_json::to_string(event) {
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

    /// Moves spooled events into the database; returns how many were applied.
    ///
    /// # Errors
    /// An I/O error of the spool file.
    pub async fn replay(&self) -> std::io::Result<usize> {
        let db = self.db.clone();
        self.spool
            .replay(|line| {
                let db = db.clone();
                async move {
                    let Ok(event) = serde_json::from_str::<CallEvent>(&line) else {
                        tracing::error!(line = %line, "[TWILIO] unreadable spool line skipped");
                        return Ok(());
                    };
                    tokio::time::timeout(DB_WRITE_TIMEOUT, write_event(&db, &event))
                        .await
                        .map_err(|_| ())
                        .and_then(|r| r.map_err(|_| ()))
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

/// A business as the webhooks need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Business {
    /// Id.
    pub id: i64,
    /// What callers hear.
    pub greeting: String,
    /// Optional media-stream URL.
    pub media_stream_url: Option<String>,
}

/// The answer of a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The number belongs to this business.
    Known(Business),
    /// No business has this number.
    Unknown,
    /// The database did not answer and nothing is cached.
    Unavailable,
}

/// A number's business (or its absence) and when that was read.
type CacheEntry = (Option<Business>, Instant);

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
                    Some(Business {
                        id: r.try_get(0).ok()?,
                        greeting: r.try_get(1).ok()?,
                        media_stream_url: r.try_get(2).ok()?,
                    })
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
        Some(Business {
            id: row.try_get(0).ok()?,
            greeting: row.try_get(1).ok()?,
            media_stream_url: row.try_get(2).ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_row_placeholders_follow_the_engine() {
        assert_eq!(values(DbKind::Postgres, "(?, ?)", 3), "($1, $2), ($3, $4), ($5, $6)");
        assert_eq!(values(DbKind::Sqlite, "(?, f(?))", 2), "(?, f(?)), (?, f(?))");
        assert_eq!(values(DbKind::Postgres, "(?, -1)", 1), "($1, -1)");
    }
}
