//! The calls as the plugin that answers them keeps them, in the shapes other plugins read: a
//! business's recent calls with their verdicts ([`CallLine`]) and one call's trace ([`Trace`]:
//! its timeline, the verdict and the hints), behind the [`CallBook`] service the twilio plugin
//! offers (`callplane calls` and `callplane trace` print the same values).

use futures_util::future::LocalBoxFuture;
use serde::Serialize;

use crate::ApiError;

/// The call's row.
#[derive(Debug, Clone, Serialize)]
pub struct CallSummary {
    /// Twilio's CallSid (absent while an outbound request has none).
    pub call_sid: Option<String>,
    /// The outbound request's REQ id.
    pub req_id: Option<String>,
    /// The tenant.
    pub business_id: Option<i64>,
    /// `inbound` or `outbound`.
    pub direction: String,
    /// Caller.
    pub from: String,
    /// Callee.
    pub to: String,
    /// The last status applied.
    pub status: String,
    /// Why an outbound request failed.
    pub error: Option<String>,
    /// When the row was created (RFC 3339).
    pub created_at: String,
}

/// One line of the timeline.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// When (Unix milliseconds).
    pub at_ms: i64,
    /// When (RFC 3339, UTC).
    pub at: String,
    /// `webhook`, `status`, `outbound`, `spool`, `unverified`, or `stream` (the media relay's hop).
    pub source: &'static str,
    /// The instance that saw it.
    pub instance: Option<String>,
    /// The request id.
    pub request_id: Option<String>,
    /// What happened, in one line.
    pub what: String,
    /// The TwiML we answered, for a webhook.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub twiml: Option<String>,
    /// The parameters Twilio sent, for a webhook, in its order (`CallerName`, `From`, …:
    /// untrusted text).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params: Option<Vec<(String, String)>>,
}

/// One answer of the verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// `reached us`, `signature`, `tenant`, `twilio api`, `state`.
    pub question: &'static str,
    /// The answer.
    pub answer: String,
}

/// A call's trace.
#[derive(Debug, Clone, Serialize)]
pub struct Trace {
    /// The id asked for.
    pub id: String,
    /// The call's row, when there is one (refused webhooks alone make none).
    pub call: Option<CallSummary>,
    /// Everything that happened, oldest first.
    pub timeline: Vec<Entry>,
    /// The answers.
    pub verdict: Vec<Verdict>,
    /// Known failure shapes the timeline shows, and what to do.
    pub hints: Vec<String>,
}

impl Trace {
    /// The trace for people: the call, its timeline, the verdict, the hints.
    pub fn text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        match &self.call {
            Some(c) => {
                let _ = writeln!(
                    out,
                    "call {} ({}, {} -> {}){}{}, created {}",
                    c.call_sid.as_deref().unwrap_or("(no CallSid yet)"),
                    c.direction,
                    c.from,
                    c.to,
                    c.req_id.as_deref().map_or(String::new(), |r| format!(", REQ={r}")),
                    c.business_id.map_or(String::new(), |b| format!(", business {b}")),
                    c.created_at
                );
            }
            None => {
                let _ = writeln!(out, "{}: no call record", self.id);
            }
        }
        let _ = writeln!(out, "\ntimeline (UTC):");
        for e in &self.timeline {
            let _ = writeln!(
                out,
                "  {}  {:<11} {:<20} {}{}",
                e.at,
                e.source,
                e.instance.as_deref().unwrap_or("-"),
                e.what,
                e.request_id
                    .as_deref()
                    .map_or(String::new(), |r| format!("  request_id={r}"))
            );
            if let Some(twiml) = &e.twiml {
                let _ = writeln!(out, "  {:>24}  twiml: {twiml}", "");
            }
        }
        let _ = writeln!(out, "\nverdict:");
        // The answers line up one column past the longest question.
        let width = self.verdict.iter().map(|v| v.question.len()).max().unwrap_or(0) + 1;
        for v in &self.verdict {
            let _ = writeln!(out, "  {:<width$} {}", v.question, v.answer);
        }
        if !self.hints.is_empty() {
            let _ = writeln!(out, "\nhints:");
            for h in &self.hints {
                let _ = writeln!(out, "  - {h}");
            }
        }
        out
    }
}

/// One line of `callplane calls`.
#[derive(Debug, Clone, Serialize)]
pub struct CallLine {
    /// When it began (RFC 3339, UTC).
    pub at: String,
    /// The CallSid (absent for an outbound request Twilio never placed).
    pub call_sid: Option<String>,
    /// The REQ id of an outbound request.
    pub req_id: Option<String>,
    /// `inbound` or `outbound` (`unknown` for refused webhooks).
    pub direction: String,
    /// Caller.
    pub from: String,
    /// Callee.
    pub to: String,
    /// The tenant.
    pub business_id: Option<i64>,
    /// Twilio's last status.
    pub status: String,
    /// `answered` (we answered its webhook), `refused` (only refused webhooks name it),
    /// `unknown-number`, `failed-outbound` (Twilio's API refused or never answered our request),
    /// `spooled` (kept in the spool while the database was away, replayed since), `requested`
    /// (outbound, Twilio not called yet), `placed` (outbound, Twilio accepted it, no webhook yet),
    /// `no-webhook` (only status callbacks arrived: is the number's Voice URL ours?).
    pub verdict: String,
}

/// Which of a business's calls [`CallBook::recent`] lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallQuery {
    /// Calls created at or after this instant (Unix milliseconds).
    pub since_ms: i64,
    /// Only calls from or to a number containing these digits (`+` and digits only).
    pub number: Option<String>,
    /// Only calls with this verdict (`answered`, `no-webhook`, …; see [`CallLine::verdict`]).
    pub verdict: Option<String>,
    /// At most this many calls.
    pub limit: usize,
}

/// The verdicts a business's calls can have, in the order a picker lists them (see
/// [`CallLine::verdict`]; the operator's view adds `unknown-number`, for calls to a number no
/// business has, and `refused`, for calls only refused webhooks name: neither belongs to a
/// business).
pub const VERDICTS: [&str; 6] = [
    "answered",
    "no-webhook",
    "failed-outbound",
    "spooled",
    "requested",
    "placed",
];

/// A business's calls, as the plugin that records them keeps them (offered by the twilio plugin,
/// needed by the console). Every answer is scoped to one business: another business's call is
/// `None`, exactly like a call that does not exist, and refused webhooks (never attributable to a
/// tenant) are never part of an answer.
pub trait CallBook: Send + Sync {
    /// The business's calls matching `query`, newest first, with their verdicts.
    ///
    /// # Errors
    /// The calls cannot be read (the database is away: 503; anything else: 500).
    fn recent<'a>(
        &'a self,
        business_id: i64,
        query: &'a CallQuery,
    ) -> LocalBoxFuture<'a, Result<Vec<CallLine>, ApiError>>;

    /// The trace of the business's call `id` (a CallSid, or the REQ id of an outbound request);
    /// `None` when it is not one of the business's calls or is not an id at all.
    ///
    /// # Errors
    /// The call cannot be read (the database is away: 503; anything else: 500).
    fn trace<'a>(&'a self, business_id: i64, id: &'a str) -> LocalBoxFuture<'a, Result<Option<Trace>, ApiError>>;
}
