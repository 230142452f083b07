//! Call records that are never lost: written to the database when it answers in time (through
//! the storage crate's group commit, [`crate::sql`] saying how), else appended to the durable local
//! spool and replayed later. Recording is idempotent by CallSid and ordered by SequenceNumber, so
//! retries, replays and late callbacks are all safe to apply again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use callplane_plugin_api::storage::{Db, GroupCommit, MAX_BATCH, ReplayReport, Replayed, Spool, Written};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub use crate::directory::{Business, Directory, Lookup};
pub use crate::event::{CallEvent, EventKind, Recorded, now, now_ms};
use crate::readiness::SpoolGauges;
use crate::sql::{Queued, QueuedEvent};
use crate::unverified::Attempt;

/// How long a webhook waits for the database before it spools instead: Twilio gives up after 15 s.
pub const DB_WRITE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// Whether the database is away, shared by the recorder and the directory: set by the first write
/// or lookup that fails or times out, cleared when the replay finds the database back. Meanwhile
/// webhooks spool at once and known numbers are answered from the cache, instead of each request
/// waiting up to its timeout for a database that is not there. Clones share the flag.
#[derive(Debug, Clone, Default)]
pub struct Outage(Arc<AtomicBool>);

impl Outage {
    /// Whether the database is away.
    pub fn is_on(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Marks the database away; `true` for the call that began the outage.
    pub fn begins(&self) -> bool {
        !self.0.swap(true, Ordering::Relaxed)
    }

    /// Marks the database back.
    pub fn ends(&self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// Records events: the database first, the spool when the database fails or is slow.
#[derive(Debug, Clone)]
pub struct Recorder {
    db: Db,
    spool: Arc<Spool>,
    /// Whether the database is away: meanwhile webhooks spool at once.
    outage: Outage,
    recorded: Family<OutcomeLabels, Counter>,
    dead_letters: Counter,
    group: GroupCommit<Queued>,
    enabled: bool,
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
        let dead_letters = Counter::default();
        metrics.register(
            "spool_dead_letters",
            "Spooled call events the database can never take, moved to the dead-letter file",
            dead_letters.clone(),
        );
        let batch_sizes = Histogram::new(exponential_buckets(1.0, 2.0, 9));
        metrics.register(
            "record_batch_size",
            "Call events committed per database transaction (group commit)",
            batch_sizes.clone(),
        );
        const { assert!(MAX_BATCH <= 1 << 8, "the histogram's buckets cover a batch") };
        let group = GroupCommit::new(db.clone(), "call-recorder", DB_WRITE_TIMEOUT, move |size| {
            batch_sizes.observe(size as f64);
        });
        Self {
            db,
            spool,
            outage: Outage::default(),
            recorded,
            dead_letters,
            group,
            enabled,
        }
    }

    /// Whether the database is away.
    pub fn outage(&self) -> &Outage {
        &self.outage
    }

    /// The spool.
    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    fn count(&self, outcome: &'static str) {
        self.recorded.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Records the event `event` builds durably before returning: committed to the database
    /// (group commit) or, when the database fails or does not answer within
    /// [`DB_WRITE_TIMEOUT`], fsync'd to the spool; after such a failure, straight to the spool
    /// until the replay finds the database back. (With recording disabled the event is not even
    /// built.)
    pub async fn record(&self, event: impl FnOnce() -> CallEvent) -> Recorded {
        if !self.enabled {
            self.count("disabled");
            return Recorded::Disabled;
        }
        let event = Arc::new(event());
        if !self.outage.is_on() {
            let written = tokio::time::timeout(
                DB_WRITE_TIMEOUT,
                self.group.write(Queued::Event(QueuedEvent::new(event.clone()))),
            )
            .await;
            match written {
                Ok(Written::Committed) => {
                    self.count("database");
                    return Recorded::Database;
                }
                // Kept all the same: the replay moves it to the dead-letter file, with the reason.
                Ok(Written::Refused(reason)) => {
                    tracing::error!(call_sid = %event.call_sid, reason = %reason, "[TWILIO] the database refuses this call event; spooling");
                }
                Ok(Written::Failed) | Err(_) => {
                    let how = if written.is_err() { "timed out" } else { "failed" };
                    if self.outage.begins() {
                        tracing::warn!(call_sid = %event.call_sid, "[TWILIO] database write {how}; spooling calls until the database is back");
                    }
                }
            }
        }
        // The owner holds the only reference again: the writer answered, or was let go.
        let mut event = Arc::unwrap_or_clone(event);
        event.spooled_ms = Some(now_ms());
        let line = match serde_json::to_string(&event) {
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

    /// Keeps `attempt` (a refused webhook) with the next batch, without waiting; `false` when the
    /// writer's queue is full and it was dropped.
    pub fn keep_refused(&self, attempt: Attempt) -> bool {
        self.enabled && self.group.submit(Queued::Unverified(attempt))
    }

    /// Moves spooled events into the database, a batch at a time through the group commit like
    /// any webhook's. A line that is not a call event, or that the database refuses, goes to the
    /// dead-letter file (`[TWILIO][SPOOL] dead_letter`, counted); the replay stops at the first
    /// event the database cannot take now.
    ///
    /// # Errors
    /// An I/O error of the spool file or the dead-letter file.
    pub async fn replay(&self) -> std::io::Result<ReplayReport> {
        let report = self
            .spool
            .replay(MAX_BATCH, |line| async move {
                let event = match serde_json::from_str::<CallEvent>(&line) {
                    Ok(event) => event,
                    Err(error) => return Replayed::Poison(format!("not a call event: {error}")),
                };
                match tokio::time::timeout(
                    DB_WRITE_TIMEOUT,
                    self.group.write(Queued::Event(QueuedEvent::new(Arc::new(event)))),
                )
                .await
                {
                    Ok(Written::Committed) => Replayed::Applied,
                    Ok(Written::Refused(reason)) => Replayed::Poison(reason),
                    Ok(Written::Failed) | Err(_) => Replayed::Unavailable,
                }
            })
            .await?;
        for letter in &report.dead_letters {
            self.dead_letters.inc();
            let call_sid = serde_json::from_str::<serde_json::Value>(&letter.line)
                .ok()
                .and_then(|v| v["call_sid"].as_str().map(str::to_owned));
            tracing::error!(
                call_sid = call_sid.as_deref().unwrap_or("unknown"),
                reason = %letter.reason,
                line = %letter.line,
                file = %self.spool.dead_letter_path().display(),
                "[TWILIO][SPOOL] dead_letter"
            );
        }
        Ok(report)
    }

    /// Replays the spool every `every` while the server runs, keeping `gauges` current.
    pub async fn replay_forever(self, every: Duration, gauges: SpoolGauges) {
        loop {
            tokio::time::sleep(every).await;
            let replayed = self.replay().await;
            if self.outage.is_on() {
                let back = match &replayed {
                    Ok(report) if report.applied > 0 => true,
                    _ => self.spool.backlog() == 0 && self.db.ping(DB_WRITE_TIMEOUT).await.is_ok(),
                };
                if back {
                    self.outage.ends();
                    tracing::info!("[TWILIO] the database is back; recording calls in it again");
                }
            }
            if let Err(error) = gauges.update(&self.spool) {
                tracing::warn!(error = %error, "[TWILIO] the spool gauges cannot be read");
            }
            match replayed {
                Ok(ReplayReport { applied: 0, .. }) => {}
                Ok(report) => {
                    tracing::info!(
                        replayed = report.applied,
                        backlog = self.spool.backlog(),
                        "[TWILIO] spool replayed into the database"
                    );
                }
                Err(error) => tracing::error!(error = %error, "[TWILIO] spool replay failed"),
            }
        }
    }
}
