//! The [`CallLedger`] this plugin offers to others (the media relay): which calls were answered
//! with a stream, for which business and to which media server, and the steps other plugins add
//! to a call's timeline (`call_notes`, shown by `callplane trace`).
//!
//! A call answered on this instance is known from memory (a bounded map of the latest answers), so
//! a stream that reaches the instance that answered its call is checked without the database, even
//! while the database is away; a stream that reaches another instance is checked in the database.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use callplane_plugin_api::storage::Db;
use callplane_plugin_api::storage::sqlx;
use callplane_plugin_api::telemetry::TRACE_TARGET;
use callplane_plugin_api::{CallLedger, CallNote, StreamTarget};
use futures_util::future::LocalBoxFuture;

/// How many answered streams this instance remembers (the newest; about 100 bytes each).
const REMEMBERED: usize = 10_000;
/// How long a database lookup of a stream may take: Twilio waits for the socket's `start`.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// The latest calls this instance answered with a stream: CallSid → (business, media server).
#[derive(Debug, Default)]
struct Answered {
    by_sid: HashMap<String, (i64, String)>,
    order: VecDeque<String>,
}

/// The plugin's [`CallLedger`].
#[derive(Debug, Clone)]
pub struct Ledger {
    db: Db,
    answered: Arc<Mutex<Answered>>,
}

impl Ledger {
    /// A ledger over `db`.
    pub fn new(db: Db) -> Self {
        Self {
            db,
            answered: Arc::default(),
        }
    }

    /// Remembers that `call_sid` was answered with a stream of `business_id` to `media_url`.
    pub fn streamed(&self, call_sid: &str, business_id: i64, media_url: &str) {
        let Ok(mut answered) = self.answered.lock() else {
            return;
        };
        let fresh = answered
            .by_sid
            .insert(call_sid.to_owned(), (business_id, media_url.to_owned()))
            .is_none();
        if fresh {
            answered.order.push_back(call_sid.to_owned());
        }
        while answered.order.len() > REMEMBERED {
            if let Some(oldest) = answered.order.pop_front() {
                answered.by_sid.remove(&oldest);
            }
        }
    }

    fn remembered(&self, call_sid: &str) -> Option<(i64, String)> {
        self.answered.lock().ok()?.by_sid.get(call_sid).cloned()
    }
}

impl CallLedger for Ledger {
    fn stream_target<'a>(&'a self, call_sid: &'a str, business_id: i64) -> LocalBoxFuture<'a, StreamTarget> {
        Box::pin(async move {
            if let Some((business, url)) = self.remembered(call_sid) {
                return if business == business_id {
                    StreamTarget::Agent(url)
                } else {
                    StreamTarget::Unknown
                };
            }
            let query = self.db.run(|pool| {
                sqlx::query_scalar::<_, Option<String>>(
                    "SELECT b.media_stream_url FROM calls c JOIN businesses b ON b.id = c.business_id
                     WHERE c.call_sid = $1 AND c.business_id = $2
                       AND EXISTS (SELECT 1 FROM call_events e WHERE e.call_id = c.id AND e.answer_kind = 'stream')",
                )
                .bind(call_sid)
                .bind(business_id)
                .fetch_optional(pool)
            });
            match tokio::time::timeout(LOOKUP_TIMEOUT, query).await {
                Ok(Ok(Some(Some(url)))) => StreamTarget::Agent(url),
                Ok(Ok(_)) => StreamTarget::Unknown,
                Ok(Err(e)) => StreamTarget::Unavailable(format!("the calls could not be read: {e}")),
                Err(_) => StreamTarget::Unavailable(format!(
                    "the database did not answer within {} s",
                    LOOKUP_TIMEOUT.as_secs()
                )),
            }
        })
    }

    fn note(&self, note: CallNote) {
        self.db.spawn(|db| async move {
            let written = db
                .run(|pool| {
                    sqlx::query(
                        "INSERT INTO call_notes (call_sid, at_ms, source, step, detail, instance_id, request_id)
                         VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    )
                    .bind(&note.call_sid)
                    .bind(note.at_ms)
                    .bind(note.source)
                    .bind(&note.step)
                    .bind(&note.detail)
                    .bind(&note.instance_id)
                    .bind(&note.request_id)
                    .execute(pool)
                })
                .await;
            if let Err(e) = written {
                let (call_sid, step) = (&note.call_sid, &note.step);
                tracing::error!(
                    target: TRACE_TARGET, call_sid = %call_sid, step = %step, error = %e,
                    "[TWILIO] a step of call {call_sid} ({step}) could not be added to its timeline; the log line stands"
                );
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn remembered_streams_answer_without_the_database_and_only_for_their_business() {
        // A database that is never reached: the answers come from memory.
        let ledger = Ledger::new(Db::connect_lazy("postgres://nobody@127.0.0.1:1/none").unwrap());
        ledger.streamed("CA1", 7, "wss://agent.example/s");
        assert_eq!(
            ledger.stream_target("CA1", 7).await,
            StreamTarget::Agent("wss://agent.example/s".to_owned())
        );
        assert_eq!(ledger.stream_target("CA1", 8).await, StreamTarget::Unknown);
        for i in 0..REMEMBERED {
            ledger.streamed(&format!("CA-{i}"), 1, "wss://a");
        }
        assert!(ledger.remembered("CA1").is_none(), "the oldest answer is forgotten");
        assert!(ledger.remembered(&format!("CA-{}", REMEMBERED - 1)).is_some());
        assert_eq!(ledger.answered.lock().unwrap().order.len(), REMEMBERED);
    }
}
