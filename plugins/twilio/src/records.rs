//! Call records that are never lost: written to the database when it answers in time (through
//! the storage crate's group commit, [`crate::sql`] saying how), else appended to the durable local
//! spool and replayed later. Recording is idempotent by CallSid and ordered by SequenceNumber, so
//! retries, replays and late callbacks are all safe to apply again.

use std::sync::Arc;
use std::time::Duration;

use callplane_plugin_api::storage::{Db, GroupCommit, MAX_BATCH, Spool};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub use crate::directory::{Business, Directory, Lookup};
pub use crate::event::{CallEvent, EventKind, Recorded, now};
use crate::readiness::SpoolGauges;
use crate::sql::QueuedEvent;

/// How long a webhook waits for the database before it spools instead: Twilio gives up after 15 s.
pub const DB_WRITE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// Records events: the database first, the spool when the database fails or is slow.
#[derive(Debug, Clone)]
pub struct Recorder {
    spool: Arc<Spool>,
    recorded: Family<OutcomeLabels, Counter>,
    group: GroupCommit<QueuedEvent>,
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
        let batch_sizes = Histogram::new(exponential_buckets(1.0, 2.0, 9));
        metrics.register(
            "record_batch_size",
            "Call events committed per database transaction (group commit)",
            batch_sizes.clone(),
        );
        const { assert!(MAX_BATCH <= 1 << 8, "the histogram's buckets cover a batch") };
        let group = GroupCommit::new(db, "call-recorder", DB_WRITE_TIMEOUT, move |size| {
            batch_sizes.observe(size as f64);
        });
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
    /// (group commit) or, when the database fails or does not answer within
    /// [`DB_WRITE_TIMEOUT`], fsync'd to the spool. (With recording disabled the event is not even
    /// built.)
    pub async fn record(&self, event: impl FnOnce() -> CallEvent) -> Recorded {
        if !self.enabled {
            self.count("disabled");
            return Recorded::Disabled;
        }
        let event = Arc::new(event());
        match tokio::time::timeout(DB_WRITE_TIMEOUT, self.group.write(QueuedEvent::new(event.clone()))).await {
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
                match tokio::time::timeout(DB_WRITE_TIMEOUT, self.group.write(QueuedEvent::new(Arc::new(event)))).await
                {
                    Ok(true) => Ok(()),
                    _ => Err(()),
                }
            })
            .await
    }

    /// Replays the spool every `every` while the server runs, keeping `gauges` current.
    pub async fn replay_forever(self, every: Duration, gauges: SpoolGauges) {
        loop {
            tokio::time::sleep(every).await;
            let replayed = self.replay().await;
            if let Err(error) = gauges.update(&self.spool).await {
                tracing::warn!(error = %error, "[TWILIO] the spool gauges cannot be read");
            }
            match replayed {
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
