//! The call event: what one webhook records (and what the spool keeps, one JSON line each), and
//! where it went.

use serde::{Deserialize, Serialize};

use crate::params::Params;

pub use callplane_plugin_api::timestamps::{now, now_ms};

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
    /// The kind as stored.
    pub fn as_str(self) -> &'static str {
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
    /// When it arrived (Unix milliseconds): the timeline's order. `0` in events spooled before
    /// the timeline existed (then `received_at` counts).
    #[serde(default)]
    pub received_ms: i64,
    /// The instance that received it (`CALLPLANE_INSTANCE_ID`).
    #[serde(default)]
    pub instance_id: Option<String>,
    /// The client's address under the trusted-proxy rules (Twilio's, or the proxy's in front).
    #[serde(default)]
    pub client: Option<String>,
    /// What we answered.
    #[serde(default)]
    pub answer: Option<Answer>,
    /// Microseconds from the request's arrival to its answer being decided (signature, tenant,
    /// TwiML), before the durable write.
    #[serde(default)]
    pub latency_us: Option<i64>,
    /// When it was spooled because the database was away (Unix milliseconds).
    #[serde(default)]
    pub spooled_ms: Option<i64>,
}

/// What a webhook was answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// What the TwiML does.
    pub kind: AnswerKind,
    /// The TwiML itself (absent for an empty `<Response/>`).
    #[serde(default)]
    pub twiml: Option<String>,
}

/// What the TwiML of an answer does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerKind {
    /// The business's greeting.
    Greeting,
    /// `<Connect><Stream>` to the business's media server.
    Stream,
    /// No business has the called number: a message, then hang up.
    UnknownNumber,
    /// The business could not be looked up (database away, nothing cached): the fallback greeting.
    Fallback,
    /// An empty `<Response/>` (status callbacks).
    Empty,
}

impl AnswerKind {
    /// The kind as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Greeting => "greeting",
            Self::Stream => "stream",
            Self::UnknownNumber => "unknown_number",
            Self::Fallback => "fallback",
            Self::Empty => "empty",
        }
    }
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
