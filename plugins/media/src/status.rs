//! `POST /webhook/stream_status`: Twilio's events of a relayed stream (`<Stream statusCallback>`):
//! `stream-started`, `stream-stopped` and `stream-error` with its `StreamError`, which otherwise
//! only Twilio's console shows. Signed like every webhook; each event is logged and added to the
//! call's timeline.

use actix_web::web::Bytes;
use actix_web::{HttpResponse, web};
use callplane_plugin_api::telemetry::{TRACE_TARGET, current_request_id};
use callplane_plugin_api::timestamps::now_ms;
use callplane_plugin_api::{ApiError, CallNote};

use crate::relay::RelayState;

/// The route.
pub const PATH: &str = "/webhook/stream_status";

/// A CallSid: `CA` and 32 letters or digits.
fn valid_call_sid(sid: &str) -> bool {
    sid.len() == 34 && sid.starts_with("CA") && sid[2..].bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Records one stream event; answers an empty `<Response/>`.
pub async fn stream_status(body: Bytes, state: web::Data<RelayState>) -> Result<HttpResponse, ApiError> {
    let mut call_sid = String::new();
    let (mut stream_sid, mut event, mut error) = (String::new(), String::new(), String::new());
    for (name, value) in url::form_urlencoded::parse(&body) {
        match &*name {
            "CallSid" => call_sid = value.into_owned(),
            "StreamSid" => stream_sid = value.into_owned(),
            "StreamEvent" => event = value.into_owned(),
            "StreamError" => error = value.into_owned(),
            _ => {}
        }
    }
    if !valid_call_sid(&call_sid) {
        tracing::warn!(target: TRACE_TARGET, "[TWILIO][STREAM] refused: a stream event without a valid CallSid (answered 400)");
        return Err(ApiError::bad_request("CallSid is missing or malformed"));
    }
    let shown = |v: &str| crate::relay::value(v);
    let mut detail = format!("stream_sid={}", shown(&stream_sid));
    if !error.is_empty() {
        detail.push_str(&format!(" error={}", shown(&error)));
    }
    let step = match event.as_str() {
        "stream-started" | "stream-stopped" | "stream-error" => event.clone(),
        _ => "stream-event".to_owned(),
    };
    if step == "stream-error" {
        tracing::warn!(target: TRACE_TARGET, call_sid = %call_sid, "[TWILIO][STREAM] event={step} {detail} call_sid={call_sid}");
    } else {
        tracing::info!(target: TRACE_TARGET, call_sid = %call_sid, "[TWILIO][STREAM] event={step} {detail} call_sid={call_sid}");
    }
    if let Some(ledger) = state.ledger.get() {
        ledger.note(CallNote {
            call_sid,
            at_ms: now_ms(),
            source: "stream",
            step,
            detail,
            instance_id: state.instance_id.clone(),
            request_id: current_request_id().map(|id| id.to_string()),
        });
    }
    Ok(HttpResponse::Ok()
        .content_type("text/xml")
        .body(r#"<?xml version="1.0" encoding="UTF-8"?><Response/>"#))
}
