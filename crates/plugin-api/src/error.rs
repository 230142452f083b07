//! The one JSON error shape of the HTTP API, and registration errors.

use std::borrow::Cow;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, ResponseError, error, web};
use callplane_telemetry::current_request_id;
use serde_json::json;

/// An API error: a status and the body `{"error":{"code","message","request_id"}}`.
///
/// Plugins map their own `thiserror` enums into it (or implement [`ResponseError`] with
/// [`ApiError::response`]). 5xx messages are logged in full but sent generic, so internals never
/// reach a client.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    status: StatusCode,
    code: Cow<'static, str>,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    /// An error with any status.
    pub fn new(status: StatusCode, code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 401 `unauthenticated`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }

    /// 403 `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 409 `conflict`.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 422 `invalid`.
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
    }

    /// 429 `rate_limited` with `Retry-After`.
    pub fn too_many_requests(message: impl Into<String>, retry_after_secs: u64) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message).retry_after(retry_after_secs)
    }

    /// 500 `internal`: the detail is logged, the client sees a generic message.
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", detail)
    }

    /// 503 `unavailable` with `Retry-After`.
    pub fn unavailable(message: impl Into<String>, retry_after_secs: u64) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message).retry_after(retry_after_secs)
    }

    /// The answer to a database error, the one mapping every plugin uses: 503 `unavailable` with
    /// `Retry-After` when the database could not be reached or cannot take the work now (a broken
    /// or refused connection, an exhausted or closed pool, a locked SQLite file, a PostgreSQL
    /// server shutting down or out of connections); anything else is a bug, not an outage: 500
    /// with the request id. Either way the cause is logged under `what` (never sent).
    pub fn database(what: &str, error: &callplane_storage::sqlx::Error) -> Self {
        if is_unavailable(error) {
            tracing::warn!(error = %error, "[DB] {what}: the database is unavailable");
            Self::unavailable("the database is unavailable; try again shortly", 5)
        } else {
            Self::internal(format!("{what}: {error}"))
        }
    }

    /// Adds a `Retry-After` header (seconds).
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The machine-readable code.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The message (for 5xx, the logged detail).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// What a client may be told: the message, except for a 500, whose detail is for the log.
    pub fn public_message(&self) -> &str {
        match self.status {
            StatusCode::INTERNAL_SERVER_ERROR => "internal error; see the server log for this request id",
            _ => &self.message,
        }
    }

    /// The `Retry-After` seconds, when the error has them.
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after
    }

    /// Logs a server error (5xx) with its detail, as its answer is built; a client error is not
    /// logged. Call it when answering the error some other way than [`ResponseError`] (a page).
    pub fn log_if_server_error(&self) {
        if self.status.is_server_error() {
            tracing::error!(code = %self.code, error = %self.message, "[HTTP] internal error");
        }
    }

    /// Builds the JSON response for `status`/`code`/`message`, with the current request id.
    pub fn response(status: StatusCode, code: &str, message: &str) -> HttpResponse {
        let request_id = current_request_id().map(|id| id.to_string());
        HttpResponse::build(status).json(json!({
            "error": { "code": code, "message": message, "request_id": request_id }
        }))
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        self.log_if_server_error();
        let mut response = Self::response(self.status, &self.code, self.public_message());
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// Whether a database error means "not now" rather than "wrong": see [`ApiError::database`].
fn is_unavailable(error: &callplane_storage::sqlx::Error) -> bool {
    use callplane_storage::sqlx::Error as E;
    match error {
        E::PoolTimedOut | E::PoolClosed => true,
        E::Database(db) => {
            let code = db.code();
            let code = code.as_deref().unwrap_or_default();
            // SQLite BUSY (5) and LOCKED (6) with their extended codes; PostgreSQL connection
            // exceptions (08…), shutdown and start-up (57P01–57P03), too many connections (53300).
            matches!(code.parse::<i32>().map(|c| c & 0xff), Ok(5 | 6))
                || code.starts_with("08")
                || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
        }
        other => callplane_storage::is_connection_error(other),
    }
}

/// `limit` (default 50, at most `max`) and `offset` (0 to 1,000,000) of a paginated listing.
///
/// # Errors
/// A 422 naming the parameter out of range.
pub fn paging(limit: Option<i64>, offset: Option<i64>, max: i64) -> Result<(i64, i64), ApiError> {
    let limit = limit.unwrap_or(50.min(max));
    if !(1..=max).contains(&limit) {
        return Err(ApiError::unprocessable(format!("limit must be 1 to {max}")));
    }
    let offset = offset.unwrap_or(0);
    if !(0..=1_000_000).contains(&offset) {
        return Err(ApiError::unprocessable("offset must be 0 to 1000000"));
    }
    Ok((limit, offset))
}

/// A plugin's registration failed. The host reports it as CP006 (or CP010 for configuration).
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// A configuration value the plugin needs is invalid.
    #[error("configuration key {key}: {message}")]
    Config {
        /// The key, as written in `callplane.toml` or the environment.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// The largest request body any route accepts (the raw-body limit; JSON and form bodies are held
/// to 64 KiB). A request announcing a longer `Content-Length` is refused with 413 before its body
/// is read, and before `100 Continue` is sent to a client that asked for it.
pub const MAX_BODY: usize = 256 * 1024;

/// Registers extractor configurations whose errors answer in the API's JSON shape: malformed JSON
/// 400, JSON of the wrong shape 422, wrong content type 415, body over the limit 413, a bad query
/// string 400, a path segment that does not parse 404.
pub fn extractor_configs(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::JsonConfig::default().limit(64 * 1024).error_handler(json_error))
        .app_data(web::FormConfig::default().limit(64 * 1024).error_handler(form_error))
        .app_data(web::PayloadConfig::default().limit(MAX_BODY))
        .app_data(web::QueryConfig::default().error_handler(query_error))
        .app_data(web::PathConfig::default().error_handler(path_error));
}

fn json_error(err: error::JsonPayloadError, _: &HttpRequest) -> actix_web::Error {
    use error::JsonPayloadError as E;
    let api = match &err {
        E::OverflowKnownLength { .. } | E::Overflow { .. } => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", "request body is too large")
        }
        E::ContentType => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected Content-Type: application/json",
        ),
        E::Payload(e) if crate::is_body_timeout(e) => body_timeout(),
        E::Deserialize(e) if e.is_data() => ApiError::unprocessable(format!("invalid request body: {e}")),
        E::Deserialize(e) => ApiError::bad_request(format!("malformed JSON: {e}")),
        other => ApiError::bad_request(format!("unreadable request body: {other}")),
    };
    api.into()
}

fn form_error(err: error::UrlencodedError, _: &HttpRequest) -> actix_web::Error {
    use error::UrlencodedError as E;
    let api = match &err {
        E::Overflow { .. } => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", "request body is too large"),
        E::ContentType => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected Content-Type: application/x-www-form-urlencoded",
        ),
        E::Payload(e) if crate::is_body_timeout(e) => body_timeout(),
        other => ApiError::bad_request(format!("malformed form body: {other}")),
    };
    api.into()
}

fn body_timeout() -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        "the request body did not arrive in time",
    )
}

fn query_error(err: error::QueryPayloadError, _: &HttpRequest) -> actix_web::Error {
    ApiError::bad_request(format!("invalid query string: {err}")).into()
}

fn path_error(_: error::PathError, req: &HttpRequest) -> actix_web::Error {
    ApiError::not_found(format!("no such resource: {}", req.path())).into()
}

#[cfg(test)]
mod tests {
    use actix_web::test as atest;
    use actix_web::{App, body};
    use serde::Deserialize;

    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        #[allow(dead_code)]
        n: u32,
    }

    async fn take(_: web::Json<Body>) -> HttpResponse {
        HttpResponse::NoContent().finish()
    }

    async fn status_and_code(payload: &'static str, content_type: &'static str) -> (u16, serde_json::Value) {
        let app = atest::init_service(App::new().configure(extractor_configs).route("/", web::post().to(take))).await;
        let req = atest::TestRequest::post()
            .uri("/")
            .insert_header(("content-type", content_type))
            .set_payload(payload)
            .to_request();
        let res = atest::call_service(&app, req).await;
        let status = res.status().as_u16();
        let bytes = body::to_bytes(res.into_body()).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or_default())
    }

    #[actix_rt::test]
    async fn extractor_errors_use_the_json_shape() {
        assert_eq!(status_and_code("{", "application/json").await.0, 400);
        assert_eq!(status_and_code(r#"{"n":"x"}"#, "application/json").await.0, 422);
        let (status, body) = status_and_code(r#"{"n":1,"extra":2}"#, "application/json").await;
        assert_eq!(status, 422);
        assert_eq!(body["error"]["code"], "invalid");
        assert_eq!(status_and_code(r#"{"n":1}"#, "text/plain").await.0, 415);
        let big = Box::leak(format!(r#"{{"n":1,"pad":"{}"}}"#, "x".repeat(70_000)).into_boxed_str());
        let (status, body) = status_and_code(big, "application/json").await;
        assert_eq!(status, 413);
        assert_eq!(body["error"]["code"], "too_large");
    }

    #[actix_rt::test]
    async fn internal_errors_hide_their_detail() {
        let res = ApiError::internal("password=hunter2 in the connection string").error_response();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let bytes = body::to_bytes(res.into_body()).await.unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("\"code\":\"internal\""), "{text}");
    }

    #[test]
    fn database_outages_are_503_and_bugs_are_500() {
        use callplane_storage::sqlx::Error as E;
        let outage = ApiError::database("listing", &E::PoolTimedOut);
        assert_eq!(outage.status().as_u16(), 503);
        assert_eq!(outage.error_response().headers().get("retry-after").unwrap(), "5");
        let io = E::Io(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset"));
        assert_eq!(ApiError::database("listing", &io).status().as_u16(), 503);
        let decoding = E::ColumnNotFound("business_id".into());
        let bug = ApiError::database("listing", &decoding);
        assert_eq!(bug.status().as_u16(), 500, "a decoding bug is not an outage");
        assert!(
            bug.message().contains("business_id"),
            "the cause is logged: {}",
            bug.message()
        );
    }

    #[actix_rt::test]
    async fn a_constraint_violation_is_a_500_not_an_outage() {
        use callplane_storage::{Db, sqlx};
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/e.db", dir.path().display());
        let db = Db::connect_lazy(&url).unwrap();
        db.prepare().unwrap();
        db.run(|pool| sqlx::raw_sql("CREATE TABLE t (n BIGINT PRIMARY KEY)").execute(pool))
            .await
            .unwrap();
        db.run(|pool| sqlx::raw_sql("INSERT INTO t VALUES (1)").execute(pool))
            .await
            .unwrap();
        let duplicate = db
            .run(|pool| sqlx::raw_sql("INSERT INTO t VALUES (1)").execute(pool))
            .await
            .unwrap_err();
        assert_eq!(ApiError::database("inserting", &duplicate).status().as_u16(), 500);
    }

    #[test]
    fn rate_limits_carry_retry_after() {
        let res = ApiError::too_many_requests("slow down", 30).error_response();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers().get("retry-after").unwrap(), "30");
    }
}
