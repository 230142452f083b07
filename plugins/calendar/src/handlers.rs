//! The appointment routes.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use callplane_plugin_api::telemetry::current_request_id;
use callplane_plugin_api::timestamps::{now, parse_rfc3339, rfc3339};
use callplane_plugin_api::{ApiError, Principal};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::STATUSES;
use crate::store::{Appointment, Range, Store, WriteError};

/// Largest page of the listing.
const MAX_LIMIT: i64 = 200;

/// Handler state.
#[derive(Debug, Clone)]
pub(crate) struct CalendarState {
    pub(crate) store: Store,
    pub(crate) max_secs: i64,
}

fn json_of(a: &Appointment) -> Value {
    json!({
        "id": a.id,
        "title": a.title,
        "starts_at": rfc3339(a.starts_at),
        "ends_at": rfc3339(a.ends_at),
        "lead_id": a.lead_id,
        "call_sid": a.call_sid,
        "notes": a.notes,
        "status": a.status,
        "created_by": a.created_by,
        "created_at": rfc3339(a.created_at),
        "updated_at": rfc3339(a.updated_at),
        "version": a.version,
    })
}

fn with_etag(mut res: HttpResponse, version: i64) -> HttpResponse {
    if let Ok(value) = HeaderValue::from_str(&format!("\"{version}\"")) {
        res.headers_mut().insert(header::ETAG, value);
    }
    res
}

fn db_error(e: &callplane_plugin_api::storage::sqlx::Error) -> ApiError {
    ApiError::database("[CALENDAR] appointments", e)
}

fn write_error(e: WriteError) -> HttpResponse {
    use actix_web::ResponseError as _;
    match e {
        WriteError::Overlap(id) => HttpResponse::Conflict().json(json!({
            "error": {
                "code": "overlap",
                "message": format!("overlaps scheduled appointment {id}"),
                "request_id": current_request_id().map(|r| r.to_string()),
                "conflicting_id": id,
            }
        })),
        WriteError::NotFound => ApiError::not_found("no such appointment").error_response(),
        WriteError::Stale(current) => with_etag(
            ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "stale_version",
                format!("the appointment changed; its version is now {current}"),
            )
            .error_response(),
            current,
        ),
        WriteError::Invalid(message) => ApiError::unprocessable(message).error_response(),
        WriteError::Database(e) => db_error(&e).error_response(),
    }
}

/// `If-Match: "3"` (or `3`, `W/"3"`) as a version; a malformed value is a 400.
fn if_match(req: &HttpRequest) -> Result<Option<i64>, ApiError> {
    let Some(raw) = req.headers().get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = raw.to_str().unwrap_or_default().trim();
    if text == "*" {
        return Ok(None); // any current version
    }
    let text = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
    text.parse::<i64>()
        .map(Some)
        .map_err(|_| ApiError::bad_request("If-Match must be the appointment's version, e.g. \"3\""))
}

fn check_text(name: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.chars().count() > max || value.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(ApiError::unprocessable(format!(
            "{name} must be at most {max} characters without control characters"
        )));
    }
    Ok(())
}

/// Validates everything an appointment holds, whatever the route.
fn validate(a: &Appointment, max_secs: i64) -> Result<(), ApiError> {
    if a.title.trim().is_empty() {
        return Err(ApiError::unprocessable("title must not be empty"));
    }
    check_text("title", &a.title, 200)?;
    if a.ends_at <= a.starts_at {
        return Err(ApiError::unprocessable("ends_at must be after starts_at"));
    }
    if a.ends_at - a.starts_at > max_secs {
        return Err(ApiError::unprocessable(format!(
            "an appointment lasts at most {} minutes",
            max_secs / 60
        )));
    }
    if let Some(lead) = &a.lead_id
        && (lead.is_empty()
            || lead.len() > 64
            || !lead
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    {
        return Err(ApiError::unprocessable(
            "lead_id must be 1–64 characters of [A-Za-z0-9_-]",
        ));
    }
    if let Some(sid) = &a.call_sid
        && !(sid.len() == 34 && sid.starts_with("CA") && sid[2..].bytes().all(|b| b.is_ascii_alphanumeric()))
    {
        return Err(ApiError::unprocessable(
            "call_sid must be a Twilio CallSid (CA followed by 32 characters)",
        ));
    }
    if let Some(notes) = &a.notes {
        check_text("notes", notes, 2000)?;
    }
    if !STATUSES.contains(&a.status.as_str()) {
        return Err(ApiError::unprocessable(format!(
            "status must be one of {}",
            STATUSES.join(", ")
        )));
    }
    Ok(())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    from: Option<String>,
    to: Option<String>,
    status: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

/// `GET /api/calendar/appointments?from=&to=&status=&limit=&offset=`.
pub(crate) async fn list(
    who: Principal,
    state: web::Data<CalendarState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let from = q
        .from
        .as_deref()
        .map(|v| parse_rfc3339("from", v))
        .transpose()?
        .unwrap_or(i64::MIN);
    let to =
        q.to.as_deref()
            .map(|v| parse_rfc3339("to", v))
            .transpose()?
            .unwrap_or(i64::MAX);
    if to <= from {
        return Err(ApiError::unprocessable("to must be after from"));
    }
    if let Some(s) = &q.status
        && !STATUSES.contains(&s.as_str())
    {
        return Err(ApiError::unprocessable(format!(
            "status must be one of {}",
            STATUSES.join(", ")
        )));
    }
    let (limit, offset) = callplane_plugin_api::paging(q.limit, q.offset, MAX_LIMIT)?;
    let range = Range {
        from,
        to,
        status: q.status,
        limit,
        offset,
    };
    let found = state
        .store
        .list(who.business_id, &range)
        .await
        .map_err(|e| db_error(&e))?;
    let next = (i64::try_from(found.len()).unwrap_or(0) == limit).then_some(offset + limit);
    Ok(HttpResponse::Ok().json(json!({
        "appointments": found.iter().map(json_of).collect::<Vec<_>>(),
        "limit": limit,
        "offset": offset,
        "next_offset": next,
    })))
}

/// `POST /api/calendar/appointments`: RFC 3339 times with an offset.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewAppointment {
    title: String,
    #[schema(format = DateTime)]
    starts_at: String,
    #[schema(format = DateTime)]
    ends_at: String,
    lead_id: Option<String>,
    call_sid: Option<String>,
    notes: Option<String>,
    #[schema(pattern = "^(scheduled|cancelled|completed)$")]
    status: Option<String>,
}

/// `POST /api/calendar/appointments`.
pub(crate) async fn create(
    who: Principal,
    state: web::Data<CalendarState>,
    body: web::Json<NewAppointment>,
) -> HttpResponse {
    let body = body.into_inner();
    let at = now();
    let build = || -> Result<Appointment, ApiError> {
        let a = Appointment {
            id: 0,
            title: body.title.trim().to_owned(),
            starts_at: parse_rfc3339("starts_at", &body.starts_at)?,
            ends_at: parse_rfc3339("ends_at", &body.ends_at)?,
            lead_id: body.lead_id.clone(),
            call_sid: body.call_sid.clone(),
            notes: body.notes.clone(),
            status: body.status.clone().unwrap_or_else(|| "scheduled".to_owned()),
            created_by: who.user_id,
            created_at: at,
            updated_at: at,
            version: 1,
        };
        validate(&a, state.max_secs)?;
        Ok(a)
    };
    let new = match build() {
        Ok(a) => a,
        Err(e) => return actix_web::ResponseError::error_response(&e),
    };
    match state.store.create(who.business_id, new).await {
        Ok(a) => {
            tracing::info!(
                business_id = who.business_id,
                id = a.id,
                by = who.user_id,
                "[CALENDAR] appointment created"
            );
            with_etag(HttpResponse::Created().json(json_of(&a)), a.version)
        }
        Err(e) => write_error(e),
    }
}

/// `GET /api/calendar/appointments/{id}`.
pub(crate) async fn get(
    who: Principal,
    state: web::Data<CalendarState>,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let found = state
        .store
        .get(who.business_id, id.into_inner())
        .await
        .map_err(|e| db_error(&e))?;
    let a = found.ok_or_else(|| ApiError::not_found("no such appointment"))?;
    Ok(with_etag(HttpResponse::Ok().json(json_of(&a)), a.version))
}

/// `PATCH /api/calendar/appointments/{id}`: the fields to change.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Change {
    title: Option<String>,
    #[schema(format = DateTime)]
    starts_at: Option<String>,
    #[schema(format = DateTime)]
    ends_at: Option<String>,
    lead_id: Option<String>,
    call_sid: Option<String>,
    notes: Option<String>,
    #[schema(pattern = "^(scheduled|cancelled|completed)$")]
    status: Option<String>,
}

/// `PATCH /api/calendar/appointments/{id}` (with `If-Match` for optimistic concurrency).
pub(crate) async fn update(
    req: HttpRequest,
    who: Principal,
    state: web::Data<CalendarState>,
    id: web::Path<i64>,
    body: web::Json<Change>,
) -> HttpResponse {
    use actix_web::ResponseError as _;
    let expected = match if_match(&req) {
        Ok(v) => v,
        Err(e) => return e.error_response(),
    };
    let change = body.into_inner();
    let starts = match change
        .starts_at
        .as_deref()
        .map(|v| parse_rfc3339("starts_at", v))
        .transpose()
    {
        Ok(v) => v,
        Err(e) => return e.error_response(),
    };
    let ends = match change
        .ends_at
        .as_deref()
        .map(|v| parse_rfc3339("ends_at", v))
        .transpose()
    {
        Ok(v) => v,
        Err(e) => return e.error_response(),
    };
    let max_secs = state.max_secs;
    let result = state
        .store
        .update(who.business_id, id.into_inner(), expected, move |current| {
            let next = Appointment {
                title: change.title.map_or(current.title.clone(), |t| t.trim().to_owned()),
                starts_at: starts.unwrap_or(current.starts_at),
                ends_at: ends.unwrap_or(current.ends_at),
                lead_id: change.lead_id.or(current.lead_id.clone()),
                call_sid: change.call_sid.or(current.call_sid.clone()),
                notes: change.notes.or(current.notes.clone()),
                status: change.status.unwrap_or(current.status.clone()),
                updated_at: now(),
                ..current
            };
            validate(&next, max_secs).map_err(|e| WriteError::Invalid(e.message().to_owned()))?;
            Ok(next)
        })
        .await;
    match result {
        Ok(a) => with_etag(HttpResponse::Ok().json(json_of(&a)), a.version),
        Err(e) => write_error(e),
    }
}

/// `DELETE /api/calendar/appointments/{id}` (with an optional `If-Match`).
pub(crate) async fn delete(
    req: HttpRequest,
    who: Principal,
    state: web::Data<CalendarState>,
    id: web::Path<i64>,
) -> HttpResponse {
    use actix_web::ResponseError as _;
    let expected = match if_match(&req) {
        Ok(v) => v,
        Err(e) => return e.error_response(),
    };
    let id = id.into_inner();
    match state.store.delete(who.business_id, id, expected).await {
        Ok(()) => {
            tracing::info!(
                business_id = who.business_id,
                id,
                by = who.user_id,
                "[CALENDAR] appointment deleted"
            );
            HttpResponse::NoContent().finish()
        }
        Err(e) => write_error(e),
    }
}
