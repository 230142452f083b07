//! The per-request middleware: request id, client address, the request's log context, metrics.

use std::cell::OnceCell;
use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, web};
use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::proxy::{ClientOrigin, Scheme};
use crate::{HttpMetrics, TrustedProxies};

/// The response (and trusted request) header carrying the request id.
pub static REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

tokio::task_local! {
    static CURRENT: RequestScope;
}

/// The id of one request: a UUID we generated, or the id a trusted proxy sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(Arc<str>);

impl RequestId {
    /// A fresh random (v4) UUID.
    pub fn generate() -> Self {
        let mut text = [0; uuid::fmt::Hyphenated::LENGTH];
        Self(uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text).into())
    }

    /// Accepts an incoming id only if it is 1–128 characters of `[A-Za-z0-9._:-]`, so it can go into
    /// logs and headers verbatim.
    pub fn from_header(value: &str) -> Option<Self> {
        let ok = !value.is_empty()
            && value.len() <= 128
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        ok.then(|| Self(value.into()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The id of the request being handled on this task, if any. Error responses use it to fill their
/// `request_id` field without threading the request through every call.
pub fn current_request_id() -> Option<RequestId> {
    CURRENT.try_with(|scope| scope.id.clone()).ok()
}

/// What every log line of one request carries: its id, and the client's address and scheme under
/// the trusted-proxy rules. The log formats append it (text: ` request_id=… client=… scheme=…`;
/// JSON: a `span` object) to each line logged while the request's future runs.
///
/// It is a task-local of the request's future rather than a `tracing` span: a span cost every
/// request about 6 % of a webhook's instructions (its registry slot, its fields formatted up
/// front, an enter and an exit on every poll), while this costs one task-local, and its text is
/// written only when the request logs its first line (most requests log none).
#[derive(Debug)]
pub struct RequestScope {
    id: RequestId,
    origin: Option<ClientOrigin>,
    text: OnceCell<String>,
}

impl RequestScope {
    /// The context of the request `id` from `origin`.
    pub fn new(id: RequestId, origin: Option<ClientOrigin>) -> Self {
        Self {
            id,
            origin,
            text: OnceCell::new(),
        }
    }

    /// The fields as a text line ends: ` request_id=… client=… scheme=…`, bare (an id is
    /// restricted to `[A-Za-z0-9._:-]`, and addresses and schemes have no spaces or quotes).
    pub fn text(&self) -> &str {
        self.text.get_or_init(|| {
            let mut text = String::with_capacity(96);
            text.push_str(" request_id=");
            text.push_str(self.id.as_str());
            if let Some(origin) = self.origin {
                let _ = write!(text, " client={} scheme={}", origin.ip, origin.scheme.as_str());
            }
            text
        })
    }

    /// Calls `f` with the scope of the request running on this task, if there is one (the log
    /// formats use it).
    pub fn with_current<R>(f: impl FnOnce(&Self) -> R) -> Option<R> {
        CURRENT.try_with(f).ok()
    }

    /// Runs `f` with this scope current: lines it logs carry the scope.
    pub fn in_scope<R>(self, f: impl FnOnce() -> R) -> R {
        CURRENT.sync_scope(self, f)
    }
}

/// The JSON format's `span` object: `{"request_id": …, "client": …, "scheme": …}`.
impl Serialize for RequestScope {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("request_id", self.id.as_str())?;
        if let Some(origin) = self.origin {
            map.serialize_entry("client", &origin.ip)?;
            map.serialize_entry("scheme", origin.scheme.as_str())?;
        }
        map.end()
    }
}

/// What [`request_context`] needs; registered once as `web::Data<HttpTelemetry>`.
#[derive(Debug, Clone)]
pub struct HttpTelemetry {
    /// Whose forwarding headers to believe.
    pub proxies: TrustedProxies,
    /// Where request metrics go.
    pub metrics: HttpMetrics,
}

/// Middleware (use with `actix_web::middleware::from_fn`) that gives every request an id, a
/// [`RequestScope`] carrying that id (so every log line of the request names it) and the client's
/// address, a metrics observation, and an `X-Request-Id` response header. It must be the outermost
/// middleware.
///
/// # Errors
/// Passes on an error of the inner service. The host's services answer errors as responses, so in
/// practice every response gets here and carries the header.
pub async fn request_context(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let started = Instant::now();
    let telemetry = req.app_data::<web::Data<HttpTelemetry>>().cloned();
    let peer = req.peer_addr().map(|addr| addr.ip());
    let trusted_peer = match (&telemetry, peer) {
        (Some(t), Some(ip)) => t.proxies.contains(ip),
        _ => false,
    };
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let request_id = header(REQUEST_ID_HEADER.as_str())
        .filter(|_| trusted_peer)
        .and_then(RequestId::from_header)
        .unwrap_or_else(RequestId::generate);
    let origin = match (&telemetry, peer) {
        (Some(t), Some(ip)) => Some(t.proxies.origin(ip, req.headers())),
        (None, Some(ip)) => Some(ClientOrigin {
            ip: ip.to_canonical(),
            scheme: Scheme::Http,
        }),
        (_, None) => None,
    };
    if let Some(origin) = origin {
        req.extensions_mut().insert(origin);
    }
    req.extensions_mut().insert(request_id.clone());
    let method = req.method().clone();
    let header_value = HeaderValue::from_str(request_id.as_str());

    let scope = RequestScope::new(request_id, origin);
    CURRENT
        .scope(scope, async move {
            let mut response = next.call(req).await?;
            if let Ok(value) = header_value {
                response.headers_mut().insert(REQUEST_ID_HEADER.clone(), value);
            }
            let status = response.status().as_u16();
            let elapsed = started.elapsed();
            let route = response
                .request()
                .match_pattern()
                .unwrap_or_else(|| "unmatched".to_owned());
            if let Some(t) = &telemetry {
                t.metrics
                    .observe(route, metric_method(&method), status, elapsed.as_secs_f64());
            }
            // Bounded: an unmatched path is whatever a client sent (up to the header limit).
            let path = crate::value::truncated(response.request().path(), MAX_LOGGED_PATH);
            let ms = Millis(elapsed);
            if status >= 500 && status != 503 {
                tracing::error!(method = %method, path = %path, status, ms = %ms, "[HTTP] request failed");
            } else if status >= 400 {
                // Includes 503: a draining or not-ready instance answers it on purpose.
                tracing::info!(method = %method, path = %path, status, ms = %ms, "[HTTP] request rejected");
            } else {
                tracing::debug!(method = %method, path = %path, status, ms = %ms, "[HTTP] request");
            }
            Ok(response)
        })
        .await
}

/// The longest path the request line shows, in characters.
const MAX_LOGGED_PATH: usize = 256;

/// A duration as the request line shows it: milliseconds, three decimals (formatted only when the
/// line is written: the per-request line is `debug`).
struct Millis(std::time::Duration);

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.3}", self.0.as_secs_f64() * 1000.0)
    }
}

/// The method as a metrics label: the standard ones, everything else `other` (a client must not be
/// able to create series at will).
fn metric_method(method: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method as M;
    match *method {
        M::GET => "GET",
        M::POST => "POST",
        M::PUT => "PUT",
        M::PATCH => "PATCH",
        M::DELETE => "DELETE",
        M::HEAD => "HEAD",
        M::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use actix_web::middleware::from_fn;
    use actix_web::test as atest;
    use actix_web::{App, HttpResponse};
    use prometheus_client::registry::Registry;

    use super::*;

    #[test]
    fn unknown_methods_share_one_metrics_label() {
        use actix_web::http::Method;
        assert_eq!(metric_method(&Method::GET), "GET");
        assert_eq!(metric_method(&Method::from_bytes(b"FOO1").unwrap()), "other");
        assert_eq!(metric_method(&Method::from_bytes(b"PROPFIND").unwrap()), "other");
    }

    #[test]
    fn incoming_ids_are_restricted_to_safe_characters() {
        assert!(RequestId::from_header("abc-123_x.y:z").is_some());
        assert!(RequestId::from_header("").is_none());
        assert!(RequestId::from_header("a b").is_none());
        assert!(RequestId::from_header("a\"b").is_none());
        assert!(RequestId::from_header(&"a".repeat(129)).is_none());
        assert_eq!(RequestId::generate().as_str().len(), 36);
    }

    async fn echo_id() -> HttpResponse {
        HttpResponse::Ok().body(current_request_id().map(|id| id.to_string()).unwrap_or_default())
    }

    fn app_data(trusted: &[&str]) -> web::Data<HttpTelemetry> {
        web::Data::new(HttpTelemetry {
            proxies: TrustedProxies::parse(trusted).unwrap(),
            metrics: HttpMetrics::register(&mut Registry::default()),
        })
    }

    #[actix_rt::test]
    async fn generated_id_is_echoed_and_visible_to_the_handler() {
        let app = atest::init_service(
            App::new()
                .app_data(app_data(&[]))
                .wrap(from_fn(request_context))
                .route("/", web::get().to(echo_id)),
        )
        .await;
        let req = atest::TestRequest::get()
            .uri("/")
            .peer_addr("198.51.100.1:5000".parse().unwrap())
            .insert_header(("x-request-id", "forged-by-client"))
            .to_request();
        let res = atest::call_service(&app, req).await;
        let header = res.headers().get("x-request-id").unwrap().to_str().unwrap().to_owned();
        assert_ne!(header, "forged-by-client", "untrusted peers cannot choose the id");
        assert_eq!(header.len(), 36);
        let body = atest::read_body(res).await;
        assert_eq!(body, header.as_bytes());
    }

    #[actix_rt::test]
    async fn trusted_proxy_id_is_honoured() {
        let app = atest::init_service(
            App::new()
                .app_data(app_data(&["10.0.0.0/8"]))
                .wrap(from_fn(request_context))
                .route("/", web::get().to(echo_id)),
        )
        .await;
        let req = atest::TestRequest::get()
            .uri("/")
            .peer_addr("10.0.0.7:5000".parse().unwrap())
            .insert_header(("x-request-id", "lb-42"))
            .to_request();
        let res = atest::call_service(&app, req).await;
        assert_eq!(res.headers().get("x-request-id").unwrap(), "lb-42");

        // A forged first X-Forwarded-For line does not win over the proxy's own line.
        let app = atest::init_service(
            App::new()
                .app_data(app_data(&["10.0.0.0/8"]))
                .wrap(from_fn(request_context))
                .route(
                    "/",
                    web::get().to(|req: actix_web::HttpRequest| async move {
                        let client = req.extensions().get::<ClientOrigin>().map(|c| c.ip.to_string());
                        HttpResponse::Ok().body(client.unwrap_or_default())
                    }),
                ),
        )
        .await;
        let req = atest::TestRequest::get()
            .uri("/")
            .peer_addr("10.0.0.7:5000".parse().unwrap())
            .append_header(("x-forwarded-for", "6.6.6.6"))
            .append_header(("x-forwarded-for", "198.51.100.7"))
            .to_request();
        let body = atest::call_and_read_body(&app, req).await;
        assert_eq!(body, "198.51.100.7");
    }
}
