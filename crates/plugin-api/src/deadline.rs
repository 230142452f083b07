//! The request-body deadline: a client that sends its headers and then trickles (or withholds)
//! the body must not hold a worker's handler forever.

use std::pin::Pin;
use std::time::Duration;

use actix_web::HttpMessage as _;
use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::middleware::Next;
use actix_web::web::Bytes;
use callplane_telemetry::request_context;
use futures_util::{FutureExt as _, Stream, StreamExt as _};

/// How long a request body may take to arrive, counted from the handler's first read of it. Twilio gives
/// up on a webhook after 15 s; a real client sends a few KiB in milliseconds.
pub const BODY_DEADLINE: Duration = Duration::from_secs(10);

/// Whether `error` is the deadline of [`time_body`] running out (extractor error handlers
/// answer 408 for it).
pub fn is_body_timeout(error: &PayloadError) -> bool {
    matches!(error, PayloadError::Io(e) if e.kind() == std::io::ErrorKind::TimedOut)
}

/// The host's outermost middleware (`actix_web::middleware::from_fn`): [`request_context`]
/// (request id and the request's log context, metrics) around [`time_body`], and the headers
/// every answer carries: `X-Content-Type-Options: nosniff`, and `Cache-Control: no-store` unless
/// the handler chose its own caching (an answer may carry a bearer token or a tenant's data; no
/// cache on the way may keep it). One layer for all of it, since every layer costs each request
/// a boxed future and calls through a vtable.
///
/// # Errors
/// Passes on an error of the inner service.
pub async fn edge(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    time_body(&mut req);
    let mut res = request_context(req, next).await?;
    protective_headers(res.headers_mut());
    Ok(res)
}

/// Adds what every answer carries: `X-Content-Type-Options: nosniff`, and `Cache-Control:
/// no-store` unless the answer chose its own caching.
pub fn protective_headers(headers: &mut HeaderMap) {
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

/// The body of a request that has one must arrive within [`BODY_DEADLINE`]; after that its stream
/// fails with a timed-out I/O error, which the extractors turn into `408 Request Timeout`.
pub fn time_body(req: &mut ServiceRequest) {
    let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0");
    if !has_body {
        return;
    }
    let payload = req.take_payload();
    // The clock starts when the handler first reads the body, not while the access check
    // (a session lookup, say) runs before it.
    let timed = futures_util::stream::unfold(Some((payload, None)), |state| async move {
        let (mut payload, deadline) = state?;
        let deadline = deadline.unwrap_or_else(|| tokio::time::Instant::now() + BODY_DEADLINE);
        // A chunk already received needs no timer (most bodies arrive with their headers).
        let next = match payload.next().now_or_never() {
            Some(ready) => Ok(ready),
            None => tokio::time::timeout_at(deadline, payload.next()).await,
        };
        match next {
            Ok(Some(chunk)) => Some((chunk, Some((payload, Some(deadline))))),
            Ok(None) => None,
            Err(_) => {
                let late = std::io::Error::new(std::io::ErrorKind::TimedOut, "the request body did not arrive in time");
                Some((Err(PayloadError::Io(late)), None))
            }
        }
    });
    let timed: Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>> = Box::pin(timed);
    req.set_payload(Payload::Stream { payload: timed });
}
