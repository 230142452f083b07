//! `GET /api/calls` and `GET /api/calls/{call_sid}`: the caller's business's calls only.

use actix_web::{HttpResponse, web};
use callplane_plugin_api::storage::Db;
use callplane_plugin_api::storage::sqlx::{self, Row};
use callplane_plugin_api::timestamps::{parse_rfc3339, rfc3339};
use callplane_plugin_api::{ApiError, Principal};
use serde::Deserialize;
use serde_json::{Value, json};

/// Largest page of `GET /api/calls`.
pub(crate) const MAX_LIMIT: i64 = 200;

fn db_error(e: sqlx::Error) -> ApiError {
    ApiError::database("[TWILIO] calls query", &e)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    direction: Option<String>,
    status: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

fn call_json(row: &sqlx::any::AnyRow) -> Result<Value, sqlx::Error> {
    Ok(json!({
        "call_sid": row.try_get::<Option<String>, _>("call_sid")?,
        "req_id": row.try_get::<Option<String>, _>("req_id")?,
        "direction": row.try_get::<String, _>("direction")?,
        "from": row.try_get::<String, _>("from_number")?,
        "to": row.try_get::<String, _>("to_number")?,
        "status": row.try_get::<String, _>("status")?,
        "lead_id": row.try_get::<Option<String>, _>("lead_id")?,
        "last_sequence": row.try_get::<i64, _>("last_sequence")?,
        "error": row.try_get::<Option<String>, _>("error")?,
        "created_at": rfc3339(row.try_get("created_at")?),
        "updated_at": rfc3339(row.try_get("updated_at")?),
    }))
}

const CALL_COLUMNS: &str = "call_sid, req_id, direction, from_number, to_number, status, lead_id, last_sequence, error, created_at, updated_at";

/// `GET /api/calls?direction=&status=&from=&to=&limit=&offset=`, newest first.
pub(crate) async fn list_calls(
    who: Principal,
    db: web::Data<Db>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    if let Some(d) = &q.direction
        && !matches!(d.as_str(), "inbound" | "outbound")
    {
        return Err(ApiError::unprocessable("direction must be inbound or outbound"));
    }
    if let Some(s) = &q.status
        && (s.is_empty() || s.len() > 32 || !s.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'))
    {
        return Err(ApiError::unprocessable(
            "status must be a Twilio call status such as completed or no-answer",
        ));
    }
    let from = q.from.as_deref().map(|v| parse_rfc3339("from", v)).transpose()?;
    let to = q.to.as_deref().map(|v| parse_rfc3339("to", v)).transpose()?;
    let (limit, offset) = callplane_plugin_api::paging(q.limit, q.offset, MAX_LIMIT)?;
    let sql = format!(
        "SELECT {CALL_COLUMNS} FROM calls WHERE business_id = $1
           AND ($2 IS NULL OR direction = $2) AND ($3 IS NULL OR status = $3)
           AND created_at >= $4 AND created_at < $5
         ORDER BY created_at DESC, id DESC LIMIT $6 OFFSET $7"
    );
    let rows = db
        .run(|pool| {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(who.business_id)
                .bind(q.direction)
                .bind(q.status)
                .bind(from.unwrap_or(i64::MIN))
                .bind(to.unwrap_or(i64::MAX))
                .bind(limit)
                .bind(offset)
                .fetch_all(pool)
        })
        .await
        .map_err(db_error)?;
    let calls = rows
        .iter()
        .map(call_json)
        .collect::<Result<Vec<_>, _>>()
        .map_err(db_error)?;
    let next = (i64::try_from(calls.len()).unwrap_or(0) == limit).then_some(offset + limit);
    Ok(HttpResponse::Ok().json(json!({ "calls": calls, "limit": limit, "offset": offset, "next_offset": next })))
}

/// `GET /api/calls/{call_sid}`: the call and its events, oldest first.
pub(crate) async fn get_call(
    who: Principal,
    db: web::Data<Db>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let call_sid = path.into_inner();
    let sql = format!("SELECT {CALL_COLUMNS} FROM calls WHERE call_sid = $1 AND business_id = $2");
    let row = db
        .run(|pool| {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(&call_sid)
                .bind(who.business_id)
                .fetch_optional(pool)
        })
        .await
        .map_err(db_error)?
        .ok_or_else(|| ApiError::not_found("no such call"))?;
    let mut call = call_json(&row).map_err(db_error)?;
    let events = db
        .run(|pool| {
            sqlx::query(
                "SELECT kind, status, sequence, request_id, payload, received_at FROM call_events
         WHERE call_id = (SELECT id FROM calls WHERE call_sid = $1) ORDER BY received_at, id",
            )
            .bind(&call_sid)
            .fetch_all(pool)
        })
        .await
        .map_err(db_error)?;
    let events: Vec<Value> = events
        .iter()
        .map(|e| {
            let payload: String = e.try_get(4)?;
            let sequence: i64 = e.try_get(2)?;
            Ok(json!({
                "kind": e.try_get::<String, _>(0)?,
                "status": e.try_get::<String, _>(1)?,
                "sequence": (sequence >= 0).then_some(sequence),
                "request_id": e.try_get::<Option<String>, _>(3)?,
                "params": serde_json::from_str::<Value>(&payload).unwrap_or(Value::Null),
                "received_at": rfc3339(e.try_get(5)?),
            }))
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(db_error)?;
    call["events"] = Value::from(events);
    Ok(HttpResponse::Ok().json(call))
}

/// `GET /api/calls/{call_sid}/trace`: the call's timeline and verdict, as `callplane trace
/// --format json` prints it, for the caller's business only (another's call is 404; refused
/// webhooks, not attributable to a tenant, are left out).
pub(crate) async fn get_trace(
    who: Principal,
    db: web::Data<Db>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = crate::trace::CallId::parse(&path.into_inner())
        .ok()
        .filter(|id| matches!(id, crate::trace::CallId::Sid(_)))
        .ok_or_else(|| ApiError::not_found("no such call"))?;
    let trace = crate::trace::load(&db, &id, crate::trace::Viewer::Tenant(who.business_id), None)
        .await
        .map_err(db_error)?
        .ok_or_else(|| ApiError::not_found("no such call"))?;
    Ok(HttpResponse::Ok().json(trace))
}
