//! The console's routes: pages for people, and the fragments the script refreshes them with.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use callplane_plugin_api::calls::{CallLine, CallQuery, Trace, VERDICTS};
use callplane_plugin_api::telemetry::current_request_id;
use callplane_plugin_api::timestamps::now_ms;
use callplane_plugin_api::{ApiError, CallBook, Principal, Wanted};
use maud::Markup;
use serde::Deserialize;

use crate::assets::fingerprint;
use crate::pages::{self, CSP, Filters, SINCE};

/// Most calls the live list shows.
pub(crate) const MAX_ROWS: usize = 100;

/// What the handlers share: the calls, from the plugin that keeps them.
pub(crate) struct Console {
    /// The twilio plugin's [`CallBook`] (the host disables the console without it).
    pub(crate) book: Wanted<dyn CallBook>,
}

impl Console {
    fn book(&self) -> Result<&dyn CallBook, ApiError> {
        self.book
            .get()
            .ok_or_else(|| ApiError::unavailable("the calls cannot be read: the twilio plugin is not active", 30))
    }

    /// The business's calls `query` names.
    async fn recent(&self, business_id: i64, query: &CallQuery) -> Result<Vec<CallLine>, ApiError> {
        self.book()?.recent(business_id, query).await
    }

    /// The trace of the business's call `id`.
    async fn trace(&self, business_id: i64, id: &str) -> Result<Option<Trace>, ApiError> {
        self.book()?.trace(business_id, id).await
    }
}

/// The headers every console answer carries besides the host's own (`nosniff`, `no-store`).
fn guarded(mut res: HttpResponse) -> HttpResponse {
    let headers = res.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    res
}

/// A whole page.
fn page(status: StatusCode, markup: Markup) -> HttpResponse {
    guarded(
        HttpResponse::build(status)
            .content_type("text/html; charset=utf-8")
            .body(markup.into_string()),
    )
}

/// A page that says why `error` kept the console from answering: what a client may be told (a
/// 500's detail goes to the log, the page names the request id), `Retry-After` kept.
fn failed(who: Option<&Principal>, error: &ApiError) -> HttpResponse {
    error.log_if_server_error();
    let message = match current_request_id() {
        Some(id) if error.status().is_server_error() => format!("{} (request id {id})", error.public_message()),
        _ => error.public_message().to_owned(),
    };
    let mut res = page(
        error.status(),
        pages::problem(who, "The calls cannot be shown", &message),
    );
    if let Some(secs) = error.retry_after_secs() {
        res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    res
}

/// Whether an `If-None-Match` header names `tag`: a list of tags, each maybe weak (`W/"…"`, as a
/// proxy that compresses the answer makes it), or `*` (RFC 9110's weak comparison).
fn names_tag(if_none_match: &str, tag: &str) -> bool {
    if_none_match
        .split(',')
        .map(str::trim)
        .any(|candidate| candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == tag)
}

/// A fragment the script refreshes a page with, tagged with a hash of its content: `304 Not
/// Modified` (no body) when the script's copy is current.
fn fragment(req: &HttpRequest, markup: Markup) -> HttpResponse {
    let body = markup.into_string();
    let tag = format!("\"{}\"", fingerprint(&body));
    let current = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| names_tag(v, &tag));
    let res = if current {
        HttpResponse::NotModified().insert_header((header::ETAG, tag)).finish()
    } else {
        HttpResponse::Ok()
            .content_type("text/html; charset=utf-8")
            .insert_header((header::ETAG, tag))
            .body(body)
    };
    guarded(res)
}

/// `GET /console`: to the live list.
pub(crate) async fn home() -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header((header::LOCATION, "/console/calls"))
        .finish()
}

/// Where the sign-in page sends a user afterwards.
#[derive(Debug, Deserialize)]
pub(crate) struct NextQuery {
    next: Option<String>,
}

/// `next` when it is a console page of this host, else the live list (never another site).
fn next_page(next: Option<&str>) -> &str {
    match next {
        Some(next)
            if next.starts_with("/console/")
                && !next.contains("//")
                && !next.contains('\\')
                && next.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            next
        }
        _ => "/console/calls",
    }
}

/// `GET /console/login`.
pub(crate) async fn sign_in(query: web::Query<NextQuery>) -> HttpResponse {
    page(StatusCode::OK, pages::sign_in(next_page(query.next.as_deref())))
}

/// The live list's filters, as the query string has them.
#[derive(Debug, Deserialize)]
pub(crate) struct FilterQuery {
    since: Option<String>,
    number: Option<String>,
    verdict: Option<String>,
}

/// The filters as given (to show them again) and the query they mean, or what is wrong with them.
fn filters(query: &FilterQuery, now_ms: i64) -> (Filters, Result<CallQuery, String>) {
    let since = query.since.as_deref().unwrap_or("24h");
    // People type numbers with spaces and dashes.
    let number: String = query
        .number
        .as_deref()
        .unwrap_or_default()
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '(' | ')' | '.'))
        .collect();
    let verdict = query.verdict.as_deref().unwrap_or_default();
    let shown = Filters {
        since: since.to_owned(),
        number: number.clone(),
        verdict: verdict.to_owned(),
    };
    let Some(&(_, _, window_ms)) = SINCE.iter().find(|(value, _, _)| *value == since) else {
        let choices: Vec<&str> = SINCE.iter().map(|(value, _, _)| *value).collect();
        return (shown, Err(format!("since must be one of {}", choices.join(", "))));
    };
    let digits = number.strip_prefix('+').unwrap_or(&number);
    if !number.is_empty() && (digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit())) {
        return (
            shown,
            Err("number must be up to 15 digits, with or without a leading +".to_owned()),
        );
    }
    if !verdict.is_empty() && !VERDICTS.contains(&verdict) {
        return (shown, Err(format!("verdict must be one of {}", VERDICTS.join(", "))));
    }
    let query = CallQuery {
        since_ms: now_ms.saturating_sub(window_ms),
        number: (!number.is_empty()).then(|| number.clone()),
        verdict: (!verdict.is_empty()).then(|| verdict.to_owned()),
        limit: MAX_ROWS,
    };
    (shown, Ok(query))
}

/// `GET /console/calls`: the live list.
pub(crate) async fn live(who: Principal, console: web::Data<Console>, query: web::Query<FilterQuery>) -> HttpResponse {
    let (shown, query) = filters(&query, now_ms());
    let query = match query {
        Ok(query) => query,
        Err(problem) => return page(StatusCode::BAD_REQUEST, pages::live(&who, &shown, &[], Some(&problem))),
    };
    match console.recent(who.business_id, &query).await {
        Ok(calls) => page(StatusCode::OK, pages::live(&who, &shown, &calls, None)),
        Err(e) => failed(Some(&who), &e),
    }
}

/// `GET /console/live`: the live list's rows, for the script.
pub(crate) async fn live_rows(
    req: HttpRequest,
    who: Principal,
    console: web::Data<Console>,
    query: web::Query<FilterQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = filters(&query, now_ms()).1.map_err(ApiError::unprocessable)?;
    let calls = console.recent(who.business_id, &query).await?;
    Ok(fragment(&req, pages::rows(&calls)))
}

/// `GET /console/calls/{call}`: a call of the business (a CallSid, or the REQ id of an outbound
/// request); any other id is 404.
pub(crate) async fn call(who: Principal, console: web::Data<Console>, id: web::Path<String>) -> HttpResponse {
    match console.trace(who.business_id, &id).await {
        Ok(Some(trace)) => page(StatusCode::OK, pages::call(&who, &id, &trace)),
        Ok(None) => page(
            StatusCode::NOT_FOUND,
            pages::problem(Some(&who), "No such call", "Your business has no call with this id."),
        ),
        Err(e) => failed(Some(&who), &e),
    }
}

/// `GET /console/calls/{call}/trace`: the changing part of a call's page, for the script.
pub(crate) async fn call_trace(
    req: HttpRequest,
    who: Principal,
    console: web::Data<Console>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let trace = console
        .trace(who.business_id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such call"))?;
    Ok(fragment(&req, pages::trace_section(&id, &trace)))
}

/// `GET /console/outbound`: the form that places a call.
pub(crate) async fn outbound(who: Principal) -> HttpResponse {
    page(StatusCode::OK, pages::outbound(&who))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(since: &str, number: &str, verdict: &str) -> FilterQuery {
        FilterQuery {
            since: Some(since.to_owned()),
            number: Some(number.to_owned()),
            verdict: Some(verdict.to_owned()),
        }
    }

    #[test]
    fn filters_take_the_choices_and_refuse_the_rest() {
        let (_, ok) = filters(&query("1h", "+972 50-123", "answered"), 10_000_000);
        assert_eq!(
            ok,
            Ok(CallQuery {
                since_ms: 10_000_000 - 3_600_000,
                number: Some("+97250123".to_owned()),
                verdict: Some("answered".to_owned()),
                limit: MAX_ROWS,
            })
        );
        let (_, none) = filters(
            &FilterQuery {
                since: None,
                number: None,
                verdict: None,
            },
            0,
        );
        assert_eq!(none.map(|q| (q.number, q.verdict)), Ok((None, None)));
        for (since, number, verdict, complaint) in [
            ("2h", "", "", "since"),
            ("1h", "+", "", "number"),
            ("1h", "12%34", "", "number"),
            ("1h", "1234567890123456", "", "number"),
            ("1h", "", "refused", "verdict"),
            ("1h", "", "<b>", "verdict"),
        ] {
            let (shown, refused) = filters(&query(since, number, verdict), 0);
            assert!(
                refused.unwrap_err().starts_with(complaint),
                "{since} {number} {verdict}"
            );
            assert_eq!(shown.since, since, "what was typed is shown again");
        }
    }

    #[test]
    fn entity_tags_compare_weakly_in_lists() {
        let tag = r#""0123456789abcdef""#;
        for names in [tag, r#"W/"0123456789abcdef""#, r#""x", W/"0123456789abcdef""#, "*"] {
            assert!(names_tag(names, tag), "{names}");
        }
        for other in ["", r#""x""#, "0123456789abcdef", r#"W/"0123456789abcdee""#] {
            assert!(!names_tag(other, tag), "{other}");
        }
    }

    #[test]
    fn sign_in_sends_people_to_console_pages_only() {
        assert_eq!(next_page(Some("/console/calls/CA1?x=1")), "/console/calls/CA1?x=1");
        for elsewhere in [
            None,
            Some("https://evil.example/"),
            Some("//evil.example/console/"),
            Some("/console//evil"),
            Some("/console/\\evil"),
            Some("/api/me"),
            Some("/console/ x"),
        ] {
            assert_eq!(next_page(elsewhere), "/console/calls", "{elsewhere:?}");
        }
    }
}
