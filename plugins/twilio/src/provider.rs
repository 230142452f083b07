//! The `TwilioSignature` access provider: logs each webhook's `hit` line on arrival, before the
//! signature check or any database work, then validates `X-Twilio-Signature` over the configured
//! public URL (never the `Host` or `X-Forwarded-*` headers) and refuses with 403 and empty TwiML.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use actix_web::dev::ServiceRequest;
use actix_web::error::PayloadError;
use actix_web::http::{StatusCode, header};
use actix_web::web::Bytes;
use actix_web::{FromRequest, HttpMessage, HttpResponse};
use callplane_plugin_api::telemetry::value::{shown as log_value, truncated};
use callplane_plugin_api::telemetry::{ClientOrigin, TRACE_TARGET, current_request_id};
use callplane_plugin_api::{Access, AccessProvider, Secret, is_body_timeout};
use futures_util::future::LocalBoxFuture;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::event::now_ms;
use crate::params::Params;
use crate::records::Recorder;
use crate::signature::{self, AuthKey, Outcome};
use crate::twiml;
use crate::unverified::{Attempt, Budget, Caps, likely_cause};
use crate::webhooks::{CALL_STATUS, INCOMING_CALL, OUTBOUND_CALL};

/// Largest webhook body accepted (Twilio's forms are a few KiB).
pub const MAX_WEBHOOK_BODY: usize = 64 * 1024;

/// A verified webhook's parameters (request extension for the handlers).
#[derive(Debug, Clone, Default)]
pub struct Webhook {
    /// The decoded form fields, in arrival order.
    pub params: Params,
    /// The decoded query parameters.
    pub query: Params,
    /// When the provider saw it: the start of its handler latency.
    pub arrived: Option<Instant>,
    /// When it arrived (Unix milliseconds).
    pub received_ms: i64,
}

impl Webhook {
    /// The first form value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params.get(name)
    }

    /// The first query value of `name`.
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query.get(name)
    }
}

/// The plugin's webhook paths and the literal trace prefix of each.
static WEBHOOKS: [(&str, &str); 3] = [
    (INCOMING_CALL, "[TWILIO][INBOUND]"),
    (OUTBOUND_CALL, "[TWILIO][OUTBOUND]"),
    (CALL_STATUS, "[TWILIO][STATUS]"),
];

/// The entry of `path` in [`WEBHOOKS`].
fn known(path: &str) -> Option<&'static (&'static str, &'static str)> {
    WEBHOOKS.iter().find(|(known, _)| *known == path)
}

/// The literal trace prefix of a webhook path.
pub fn trace_prefix(path: &str) -> &'static str {
    known(path).map_or("[TWILIO][WEBHOOK]", |(_, prefix)| prefix)
}

/// The route a webhook request matched: the declared pattern, never the request's own path (actix
/// also routes percent-encoded spellings such as `/webhook/incoming%5Fcall` here, and a label or a
/// trace prefix taken from those would let anyone mint new metric series). Borrowed for the
/// plugin's own routes.
fn route_of(req: &ServiceRequest) -> Cow<'static, str> {
    match req.match_pattern() {
        Some(pattern) => known(&pattern).map_or_else(|| pattern.into(), |(known, _)| (*known).into()),
        None => "unmatched".into(),
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    route: Cow<'static, str>,
    signature: &'static str,
}

/// Where refused webhooks are kept as evidence ([`crate::unverified`]).
#[derive(Debug, Clone)]
pub struct Evidence {
    /// The writer they go to.
    pub recorder: Recorder,
    /// This instance's id.
    pub instance_id: String,
    /// The table's bounds.
    pub caps: Caps,
}

/// Verifies Twilio's signature for every `Access::TwilioSignature` route.
#[derive(Debug, Clone)]
pub struct SignatureProvider {
    key: AuthKey,
    public_base_url: String,
    webhooks: Family<WebhookLabels, Counter>,
    evidence: Option<Evidence>,
    budget: Arc<Budget>,
    unverified: Family<KeptLabels, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeptLabels {
    kept: &'static str,
}

impl SignatureProvider {
    /// A provider signing over `public_base_url` with `auth_token`, counting into `metrics`
    /// (`callplane_twilio_webhooks_total{route,signature}`,
    /// `callplane_twilio_unverified_webhooks_total{kept}`), keeping refused webhooks that name a
    /// CallSid in `evidence` (if any).
    pub fn new(
        auth_token: Secret,
        public_base_url: String,
        evidence: Option<Evidence>,
        metrics: &mut Registry,
    ) -> Self {
        let webhooks = Family::default();
        metrics.register(
            "webhooks",
            "Twilio webhooks by route and signature outcome",
            webhooks.clone(),
        );
        let unverified = Family::default();
        metrics.register(
            "unverified_webhooks",
            "Refused webhooks naming a CallSid, by whether they were kept as evidence (stored, over_budget, queue_full)",
            unverified.clone(),
        );
        Self {
            key: AuthKey::new(auth_token.expose()),
            public_base_url,
            webhooks,
            evidence,
            budget: Arc::default(),
            unverified,
        }
    }

    /// Keeps a refused webhook that names a CallSid, within the budget.
    fn keep_refused(
        &self,
        req: &ServiceRequest,
        route: &str,
        hook: &Webhook,
        signature: Option<&str>,
        outcome: Outcome,
    ) {
        let (Some(evidence), Some(call_sid)) = (&self.evidence, hook.get("CallSid").filter(|s| !s.is_empty())) else {
            return;
        };
        let kept = if !self.budget.admit() {
            "over_budget"
        } else {
            let rest = match req.query_string() {
                "" => req.path().to_owned(),
                query => format!("{}?{query}", req.path()),
            };
            let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok());
            let attempt = Attempt {
                received_ms: hook.received_ms,
                instance_id: evidence.instance_id.clone(),
                route: route.to_owned(),
                call_sid: truncated(call_sid, MAX_TRACE_VALUE).into_owned(),
                client: req
                    .extensions()
                    .get::<ClientOrigin>()
                    .map_or_else(|| "unknown".to_owned(), |c| c.ip.to_string()),
                request_id: current_request_id().map(|id| id.to_string()),
                signature: outcome.as_str(),
                likely_cause: likely_cause(
                    &self.key,
                    &self.public_base_url,
                    host,
                    &rest,
                    hook.params.iter(),
                    signature,
                ),
                caps: evidence.caps,
            };
            if evidence.recorder.keep_refused(attempt) {
                "stored"
            } else {
                "queue_full"
            }
        };
        self.unverified.get_or_create(&KeptLabels { kept }).inc();
    }
}

fn refuse(status: StatusCode) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/xml")
        .body(twiml::empty())
}

/// The longest value a trace line shows, in characters (a CallSid is 34, an E.164 number at most
/// 16): the `hit` line is written before the signature is checked, so its size must not be the
/// sender's choice.
pub(crate) const MAX_TRACE_VALUE: usize = 64;

/// A value as the trace line shows it: `-` when absent, cut to [`MAX_TRACE_VALUE`] characters,
/// quoted when it has spaces, quotes, control or invisible characters (a `+` sent unencoded
/// arrives as a space), bare otherwise: the log lines' rule
/// ([`needs_quotes`](callplane_plugin_api::telemetry::needs_quotes)).
pub(crate) fn shown(value: Option<&str>) -> Cow<'_, str> {
    match value.filter(|v| !v.is_empty()) {
        None => "-".into(),
        Some(v) => match truncated(v, MAX_TRACE_VALUE) {
            Cow::Borrowed(v) => log_value(v),
            Cow::Owned(cut) => log_value(&cut).into_owned().into(),
        },
    }
}

/// Whether `req` opens a WebSocket (`GET` with `Upgrade: websocket`).
fn is_websocket_upgrade(req: &ServiceRequest) -> bool {
    req.method() == actix_web::http::Method::GET
        && req
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Logs the contract's `hit` line for `path` (`socket`: a Media Stream's WebSocket handshake,
/// which names neither the call nor the business: they arrive in the stream's `start` message).
fn log_hit(path: &str, hook: &Webhook, signature_present: bool, socket: bool) {
    if socket {
        tracing::info!(
            target: TRACE_TARGET,
            path, signature_present,
            "[TWILIO][STREAM] hit path={path} call_sid=- business_id=- signature_present={signature_present}"
        );
        return;
    }
    let call_sid = &*shown(hook.get("CallSid"));
    let from = &*shown(hook.get("From"));
    let to = &*shown(hook.get("To"));
    match path {
        INCOMING_CALL => {
            let direction = &*shown(hook.get("Direction").or(Some("inbound")));
            tracing::info!(
                target: TRACE_TARGET,
                path, call_sid, from, to, direction, signature_present,
                "[TWILIO][INBOUND] hit path=/webhook/incoming_call call_sid={call_sid} from={from} to={to} direction={direction} signature_present={signature_present}"
            );
        }
        OUTBOUND_CALL => {
            let lead_id = &*shown(hook.query("lead_id"));
            let business_id = &*shown(hook.query("business_id"));
            tracing::info!(
                target: TRACE_TARGET,
                path, call_sid, from, to, lead_id, business_id, signature_present,
                "[TWILIO][OUTBOUND] hit path=/webhook/outbound_call call_sid={call_sid} from={from} to={to} lead_id={lead_id} business_id={business_id} signature_present={signature_present}"
            );
        }
        CALL_STATUS => {
            let call_status = &*shown(hook.get("CallStatus"));
            let sequence = &*shown(hook.get("SequenceNumber"));
            tracing::info!(
                target: TRACE_TARGET,
                path, call_sid, call_status, sequence, signature_present,
                "[TWILIO][STATUS] hit path=/webhook/call_status call_sid={call_sid} call_status={call_status} sequence={sequence} signature_present={signature_present}"
            );
        }
        _ => tracing::info!(
            target: TRACE_TARGET,
            path, call_sid, signature_present,
            "[TWILIO][WEBHOOK] hit path={path} call_sid={call_sid} signature_present={signature_present}"
        ),
    }
}

impl AccessProvider for SignatureProvider {
    fn authorize<'a>(&'a self, req: &'a mut ServiceRequest, _: Access) -> LocalBoxFuture<'a, Result<(), HttpResponse>> {
        Box::pin(async move {
            let arrived = Instant::now();
            let received_ms = now_ms();
            let route = route_of(req);
            let path = &*route;
            // Twilio opens a Media Stream with a signed GET upgrade and no body: its payload is
            // the socket, for the handler (reading it here would wait for the call to end).
            let socket = is_websocket_upgrade(req);
            let prefix = if socket { "[TWILIO][STREAM]" } else { trace_prefix(path) };
            // The signed URL is the one Twilio called, spelled as it was called.
            let called_path = req.path().to_owned();
            let query_string = req.query_string().to_owned();
            let headers: Vec<&str> = req
                .headers()
                .get_all("x-twilio-signature")
                .filter_map(|v| v.to_str().ok())
                .collect();
            let signature_present = !headers.is_empty();
            // One header, or the request is not what Twilio sends.
            let header = match headers.as_slice() {
                [one] => Some(Some((*one).to_owned())),
                [] => Some(None),
                _ => None,
            };
            let media_type = req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(|c| c.split(';').next().unwrap_or_default().trim().to_ascii_lowercase());
            let is_json = media_type.as_deref() == Some("application/json");
            let is_form = media_type.as_deref() == Some("application/x-www-form-urlencoded");
            let (http, payload) = req.parts_mut();
            let read = if socket {
                Ok(Bytes::new())
            } else {
                Bytes::from_request(http, payload).await
            };
            let body = match read {
                Ok(body) if body.len() <= MAX_WEBHOOK_BODY => body,
                Err(e) if e.as_error::<PayloadError>().is_some_and(is_body_timeout) => {
                    tracing::info!(target: TRACE_TARGET, path = %path, signature_present, "{prefix} hit path={path} body=timed_out signature_present={signature_present}");
                    return Err(refuse(StatusCode::REQUEST_TIMEOUT));
                }
                _ => {
                    tracing::info!(target: TRACE_TARGET, path = %path, signature_present, "{prefix} hit path={path} body=too_large_or_unreadable signature_present={signature_present}");
                    return Err(refuse(StatusCode::PAYLOAD_TOO_LARGE));
                }
            };
            // Only what Twilio sends: a form body decoded strictly, or JSON (signed through its
            // `bodySHA256`). Anything else is refused whatever its signature says, after the `hit`
            // line (shown as leniently decoded).
            let (params, refusal) = if is_json || socket {
                (Params::default(), None)
            } else if is_form {
                match Params::parse_strict(&body) {
                    Ok(params) => (params, None),
                    Err(malformed) => (
                        Params::parse(&body),
                        Some((StatusCode::BAD_REQUEST, malformed.to_string())),
                    ),
                }
            } else {
                let shown = media_type.as_deref().unwrap_or("none");
                (
                    Params::default(),
                    Some((
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        format!(
                            "content type {} is not a Twilio webhook's",
                            log_value(&truncated(shown, MAX_TRACE_VALUE))
                        ),
                    )),
                )
            };
            let hook = Webhook {
                params,
                query: Params::parse(query_string.as_bytes()),
                arrived: Some(arrived),
                received_ms,
            };
            log_hit(path, &hook, signature_present, socket);
            if let Some((status, problem)) = refusal {
                self.webhooks
                    .get_or_create(&WebhookLabels {
                        route: route.clone(),
                        signature: "not_checked",
                    })
                    .inc();
                let call_sid = &*shown(hook.get("CallSid"));
                tracing::warn!(
                    target: TRACE_TARGET,
                    path, call_sid, status = status.as_u16(),
                    "{prefix} refused: {problem} call_sid={call_sid} recorded=false (answered {})", status.as_u16()
                );
                return Err(refuse(status));
            }

            let base = if socket {
                Cow::Owned(signature::websocket_url(&self.public_base_url))
            } else {
                Cow::Borrowed(self.public_base_url.as_str())
            };
            let url = if query_string.is_empty() {
                format!("{base}{called_path}")
            } else {
                format!("{base}{called_path}?{query_string}")
            };
            let outcome = match &header {
                None => Outcome::Invalid,
                Some(signature) => {
                    let json_body = if is_json {
                        Some(std::str::from_utf8(&body).unwrap_or("\u{fffd}"))
                    } else {
                        None
                    };
                    signature::validate_with(&self.key, &url, hook.params.iter(), json_body, signature.as_deref())
                }
            };
            self.webhooks
                .get_or_create(&WebhookLabels {
                    route: route.clone(),
                    signature: outcome.as_str(),
                })
                .inc();
            if outcome != Outcome::Valid {
                self.keep_refused(req, path, &hook, header.as_ref().and_then(Option::as_deref), outcome);
                let call_sid = &*shown(hook.get("CallSid"));
                let signature = outcome.as_str();
                tracing::warn!(
                    target: TRACE_TARGET,
                    path = %path, call_sid, signature,
                    "{prefix} outcome signature={signature} tenant=unknown recorded=false call_sid={call_sid} (refused with 403)"
                );
                return Err(refuse(StatusCode::FORBIDDEN));
            }
            if !socket {
                req.set_payload(actix_web::dev::Payload::from(body));
            }
            req.extensions_mut().insert(hook);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_values_are_bare_unless_they_would_break_the_line() {
        assert_eq!(shown(None), "-");
        assert_eq!(shown(Some("")), "-");
        for bare in ["+15550001111", "CA0123456789abcdef", "Jürgen", "a=b&c", "日本"] {
            assert_eq!(shown(Some(bare)), bare);
        }
        for (value, quoted) in [
            (" 1555", r#"" 1555""#),
            ("a\tb", r#""a\tb""#),
            ("say \"hi\"", r#""say \"hi\"""#),
            ("del\u{7f}", r#""del\u{7f}""#),
            ("next\u{85}line", r#""next\u{85}line""#),
            ("wide\u{3000}space", r#""wide\u{3000}space""#),
        ] {
            assert_eq!(shown(Some(value)), quoted, "{value:?}");
        }
    }
}
