//! The three webhooks. The host has already run the signature provider (which logged the `hit`
//! line); each handler looks up the tenant, records the event durably, logs the outcome line and
//! answers TwiML.

use actix_web::http::StatusCode;
use actix_web::web::Bytes;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use callplane_plugin_api::telemetry::{ClientOrigin, TRACE_TARGET, current_request_id};

use crate::directory::{Business, StreamRoute};
use crate::event::{Answer, AnswerKind};
use crate::ledger::Ledger;
use crate::provider::{Webhook, shown, trace_prefix};
use crate::records::{CallEvent, Directory, EventKind, Lookup, Recorded, Recorder, now};
use crate::twiml;

/// The webhook routes (the lines they log name the route, not the path as a client spelled it).
pub(crate) const INCOMING_CALL: &str = "/webhook/incoming_call";
/// See [`INCOMING_CALL`].
pub(crate) const OUTBOUND_CALL: &str = "/webhook/outbound_call";
/// See [`INCOMING_CALL`].
pub(crate) const CALL_STATUS: &str = "/webhook/call_status";

/// Handler state.
#[derive(Debug, Clone)]
pub(crate) struct WebhookState {
    pub(crate) recorder: Recorder,
    pub(crate) directory: Directory,
    /// This instance's id, on every event it records.
    pub(crate) instance_id: String,
    /// Through the media relay, or straight to the media server.
    pub(crate) streams: StreamRoute,
    /// Remembers the calls answered with a relayed stream.
    pub(crate) ledger: Ledger,
}

impl WebhookState {
    /// `business`'s answer to `call_sid`; a relayed stream is remembered for the relay.
    fn answer(&self, business: &Business, call_sid: &str) -> (AnswerKind, Bytes) {
        let relay = self.streams.urls();
        let answer = business.answer(call_sid, relay);
        if let (AnswerKind::Stream, Some(_), Some(url)) = (answer.0, relay, &business.media_stream_url) {
            self.ledger.streamed(call_sid, business.id, url);
        }
        answer
    }
}

fn xml(status: StatusCode, body: impl Into<Bytes>) -> HttpResponse {
    HttpResponse::build(status).content_type("text/xml").body(body.into())
}

/// The webhook the signature check parsed, taken (not copied) from the request.
fn webhook(req: &HttpRequest) -> Webhook {
    req.extensions_mut().remove::<Webhook>().unwrap_or_default()
}

/// What a webhook is about, before it is recorded.
struct Received<'a> {
    kind: EventKind,
    call_sid: &'a str,
    direction: &'a str,
    business_id: Option<i64>,
}

/// The event to record; it keeps the webhook's parameters, and the answer (200 with `body`) it
/// gets when it is kept.
fn event(
    req: &HttpRequest,
    state: &WebhookState,
    hook: Webhook,
    about: &Received<'_>,
    answer: (AnswerKind, &Bytes),
) -> CallEvent {
    let (kind, body) = answer;
    CallEvent {
        kind: about.kind,
        call_sid: about.call_sid.to_owned(),
        business_id: about.business_id,
        direction: about.direction.to_owned(),
        from: hook.get("From").unwrap_or_default().to_owned(),
        to: hook.get("To").unwrap_or_default().to_owned(),
        status: hook
            .get("CallStatus")
            .filter(|s| !s.is_empty())
            .unwrap_or("unknown")
            .to_owned(),
        sequence: hook
            .get("SequenceNumber")
            .and_then(|s| s.parse::<i64>().ok())
            .filter(|n| *n >= 0),
        lead_id: hook.query("lead_id").map(str::to_owned),
        req_id: hook
            .query("req_id")
            .filter(|r| r.len() == 8 && r.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(str::to_owned),
        request_id: current_request_id().map(|id| id.to_string()),
        received_at: now(),
        received_ms: hook.received_ms,
        instance_id: Some(state.instance_id.clone()),
        client: req.extensions().get::<ClientOrigin>().map(|c| c.ip.to_string()),
        answer: Some(Answer {
            status: StatusCode::OK.as_u16(),
            kind,
            twiml: (kind != AnswerKind::Empty).then(|| String::from_utf8_lossy(body).into_owned()),
        }),
        latency_us: hook
            .arrived
            .map(|at| i64::try_from(at.elapsed().as_micros()).unwrap_or(i64::MAX)),
        spooled_ms: None,
        params: hook.params,
    }
}

/// A CallSid as Twilio sends them: `CA` and 32 hex digits (tests and simulations use the same shape).
fn valid_call_sid(sid: &str) -> bool {
    sid.len() == 34 && sid.starts_with("CA") && sid[2..].bytes().all(|b| b.is_ascii_alphanumeric())
}

fn log_outcome(path: &str, call_sid: &str, tenant: &str, recorded: Recorded) {
    let prefix = trace_prefix(path);
    let recorded = recorded.as_str();
    if recorded == "false" {
        tracing::error!(target: TRACE_TARGET, call_sid, tenant, recorded, "{prefix} outcome signature=valid tenant={tenant} recorded={recorded} call_sid={call_sid}");
    } else {
        tracing::info!(target: TRACE_TARGET, call_sid, tenant, recorded, "{prefix} outcome signature=valid tenant={tenant} recorded={recorded} call_sid={call_sid}");
    }
}

/// The answer to a webhook whose event could be kept neither in the database nor in the spool:
/// 503, so that Twilio retries it or turns to the number's fallback URL. Never a 200 for a call
/// that was not kept.
fn unkept() -> HttpResponse {
    let mut res = xml(StatusCode::SERVICE_UNAVAILABLE, twiml::empty());
    res.headers_mut().insert(
        actix_web::http::header::RETRY_AFTER,
        actix_web::http::header::HeaderValue::from_static("5"),
    );
    res
}

fn bad_request(path: &str, problem: &str) -> HttpResponse {
    tracing::warn!(target: TRACE_TARGET, path, problem, "{} refused: {problem}", trace_prefix(path));
    xml(StatusCode::BAD_REQUEST, twiml::empty())
}

/// `POST /webhook/incoming_call`.
pub(crate) async fn incoming_call(req: HttpRequest, state: web::Data<WebhookState>) -> HttpResponse {
    let hook = webhook(&req);
    let path = INCOMING_CALL;
    let Some(call_sid) = hook.get("CallSid").filter(|s| valid_call_sid(s)).map(str::to_owned) else {
        return bad_request(path, "missing or malformed CallSid");
    };
    let to = hook.get("To").unwrap_or_default().to_owned();
    let lookup = state.directory.by_number(&to).await;
    let business_id = match &lookup {
        Lookup::Known(b) => Some(b.id),
        _ => None,
    };
    let (kind, body): (AnswerKind, Bytes) = match &lookup {
        Lookup::Known(business) => state.answer(business, &call_sid),
        Lookup::Unknown => (
            AnswerKind::UnknownNumber,
            twiml::say(twiml::UNKNOWN_NUMBER, true).into(),
        ),
        Lookup::Unavailable => (AnswerKind::Fallback, twiml::say(twiml::FALLBACK_GREETING, true).into()),
    };
    let about = Received {
        kind: EventKind::Incoming,
        call_sid: &call_sid,
        direction: "inbound",
        business_id,
    };
    let recorded = state
        .recorder
        .record(|| event(&req, &state, hook, &about, (kind, &body)))
        .await;
    let tenant = business_id.map_or_else(|| "unknown".to_owned(), |id| id.to_string());
    log_outcome(path, &call_sid, &tenant, recorded);
    if recorded == Recorded::Lost {
        return unkept();
    }
    if lookup == Lookup::Unknown {
        let shown_to = &*shown(Some(&to));
        tracing::warn!(target: TRACE_TARGET, call_sid = %call_sid, to = shown_to, "[TWILIO][INBOUND] unknown called number to={shown_to}: no business has it; answered and hung up");
    }
    xml(StatusCode::OK, body)
}

/// `POST /webhook/outbound_call?lead_id=&business_id=`: the callee of an outbound call answered.
pub(crate) async fn outbound_call(req: HttpRequest, state: web::Data<WebhookState>) -> HttpResponse {
    let hook = webhook(&req);
    let path = OUTBOUND_CALL;
    let Some(call_sid) = hook.get("CallSid").filter(|s| valid_call_sid(s)).map(str::to_owned) else {
        return bad_request(path, "missing or malformed CallSid");
    };
    let Some(business_id) = hook.query("business_id").and_then(|b| b.parse::<i64>().ok()) else {
        return bad_request(path, "business_id is not a number");
    };
    let business = state.directory.by_id(business_id).await;
    let (kind, body) = business.map_or_else(
        || (AnswerKind::Fallback, twiml::say(twiml::FALLBACK_GREETING, true).into()),
        |b| state.answer(&b, &call_sid),
    );
    let about = Received {
        kind: EventKind::OutboundAnswered,
        call_sid: &call_sid,
        direction: "outbound",
        business_id: Some(business_id),
    };
    let recorded = state
        .recorder
        .record(|| event(&req, &state, hook, &about, (kind, &body)))
        .await;
    log_outcome(path, &call_sid, &business_id.to_string(), recorded);
    if recorded == Recorded::Lost {
        return unkept();
    }
    xml(StatusCode::OK, body)
}

/// `POST /webhook/call_status`: progress of a call, applied in SequenceNumber order.
pub(crate) async fn call_status(req: HttpRequest, state: web::Data<WebhookState>) -> HttpResponse {
    let hook = webhook(&req);
    let path = CALL_STATUS;
    let Some(call_sid) = hook.get("CallSid").filter(|s| valid_call_sid(s)).map(str::to_owned) else {
        return bad_request(path, "missing or malformed CallSid");
    };
    let outbound = hook.get("Direction").is_some_and(|d| d.starts_with("outbound"));
    let (direction, number) = if outbound {
        ("outbound", hook.get("From"))
    } else {
        ("inbound", hook.get("To"))
    };
    let business_id = match state.directory.by_number(number.unwrap_or_default()).await {
        Lookup::Known(b) => Some(b.id),
        _ => hook.query("business_id").and_then(|b| b.parse().ok()),
    };
    let about = Received {
        kind: EventKind::Status,
        call_sid: &call_sid,
        direction,
        business_id,
    };
    let body = twiml::empty();
    let recorded = state
        .recorder
        .record(|| event(&req, &state, hook, &about, (AnswerKind::Empty, &body)))
        .await;
    let tenant = business_id.map_or_else(|| "unknown".to_owned(), |id| id.to_string());
    log_outcome(path, &call_sid, &tenant, recorded);
    if recorded == Recorded::Lost {
        return unkept();
    }
    xml(StatusCode::OK, body)
}
