//! The call event: what one webhook records (and what the spool keeps, one JSON line each), and
//! where it went.

use serde::{Deserialize, Serialize};

use crate::params::Params;

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
    /// The kind as stored.
    pub(crate) fn as_str(self) -> &'static str {
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
