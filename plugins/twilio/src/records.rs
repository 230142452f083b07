//! Call records that are never lost: written to the database when it answers in time, else
//! appended to the durable local spool and replayed later. Recording is idempotent by CallSid and
//! ordered by SequenceNumber, so retries, replays and late callbacks are all safe to apply again.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use callplane_plugin_api::storage::sqlx::{self, Row};
use callplane_plugin_api::storage::{Db, Spool};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

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
}

impl Recorded {
    /// `true`, `spooled` or `false`, as the outcome line says.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Database => "true",
            Self::Spooled => "spooled",
            Self::Lost => "false",
        }
    }
}

/// Writes one event in one transaction: the call row (once per CallSid), the status when the
/// sequence is newer, and the event (once per CallSid, kind and sequence).
///
/// # Errors
/// A database error; nothing is committed then.
pub async fn write_event(db: &Db, event: &CallEvent) -> Result<(), sqlx::Error> {
    let mut tx = db.pool().begin().await?;
    let sequence = event.sequence.unwrap_or(-1);
    // The tenant: as known when the webhook arrived, else looked up now by the business's number
    // (the called number of an inbound call, the caller of an outbound one): a call spooled while
    // the database was down still lands in its business.
    let number = if event.direction == "outbound" {
        &event.from
    } else {
        &event.to
    };
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
    sqlx::query(
        "INSERT INTO calls (call_sid, business_id, direction, from_number, to_number, status, lead_id, last_sequence, created_at, updated_at)
         VALUES ($1, COALESCE($2, (SELECT id FROM businesses WHERE phone_number = $9)), $3, $4, $5, $6, $7, -1, $8, $8)
         ON CONFLICT (call_sid) DO NOTHING",
    )
    .bind(&event.call_sid)
    .bind(event.business_id)
    .bind(&event.direction)
    .bind(&event.from)
    .bind(&event.to)
    .bind(&event.status)
    .bind(&event.lead_id)
    .bind(event.received_at)
    .bind(number)
    .execute(&mut *tx)
    .await?;
    if event.kind == EventKind::Status {
        sqlx::query("UPDATE calls SET status = $1, last_sequence = $2, updated_at = $3 WHERE call_sid = $4 AND last_sequence < $2")
            .bind(&event.status)
            .bind(sequence.max(0))
            .bind(event.received_at)
            .bind(&event.call_sid)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(
        "UPDATE calls SET business_id = COALESCE(business_id, $1, (SELECT id FROM businesses WHERE phone_number = $2)),
           lead_id = COALESCE(lead_id, $3) WHERE call_sid = $4",
    )
    .bind(event.business_id)
    .bind(number)
    .bind(&event.lead_id)
    .bind(&event.call_sid)
    .execute(&mut *tx)
    .await?;
    let payload = serde_json::to_string(&event.params).unwrap_or_else(|_| "[]".to_owned());
    sqlx::query(
        "INSERT INTO call_events (call_sid, kind, status, sequence, request_id, payload, received_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (call_sid, kind, sequence) DO NOTHING",
    )
    .bind(&event.call_sid)
    .bind(event.kind.as_str())
    .bind(&event.status)
    .bind(sequence)
    .bind(&event.request_id)
    .bind(payload)
    .bind(event.received_at)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
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
}

impl Recorder {
    /// A recorder over `db` and `spool`, counting into `metrics`
    /// (`callplane_twilio_calls_recorded_total{outcome}`).
    pub fn new(db: Db, spool: Arc<Spool>, metrics: &mut Registry) -> Self {
        let recorded = Family::default();
        metrics.register(
            "calls_recorded",
            "Call events by where they were recorded (database, spooled, lost)",
            recorded.clone(),
        );
        Self { db, spool, recorded }
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

    /// Records `event` durably, in the database or the spool.
    pub async fn record(&self, event: &CallEvent) -> Recorded {
        match tokio::time::timeout(DB_WRITE_TIMEOUT, write_event(&self.db, event)).await {
            Ok(Ok(())) => {
                self.count("database");
                return Recorded::Database;
            }
            Ok(Err(error)) => {
                tracing::warn!(call_sid = %event.call_sid, error = %error, "[TWILIO] database write failed; spooling")
            }
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
