//! `POST /api/calls/outbound {to, lead_id}`: record first, then ask Twilio to place the call, with
//! the `[OUTBOUND][REQ=…]` lifecycle on the log and every failure kept on the call record.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, web};
use base64::Engine as _;
use callplane_plugin_api::storage::Db;
use callplane_plugin_api::storage::sqlx::{self, Row};
use callplane_plugin_api::telemetry::value::{plain_text, truncated};
use callplane_plugin_api::telemetry::{TRACE_TARGET, current_request_id};
use callplane_plugin_api::{ApiError, Principal};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::Account;
use crate::records::{now, now_ms};

/// How long Twilio's REST API gets to answer.
pub(crate) const TWILIO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutboundLabels {
    result: &'static str,
    code: String,
}

/// How many distinct error codes get a series of their own; later ones are counted as `other`.
/// The codes come from the REST API's answers: however that server behaves, the metric stays
/// bounded.
const MAX_CODE_LABELS: usize = 64;

/// What the outbound handler needs.
#[derive(Debug, Clone)]
pub(crate) struct OutboundState {
    public_base_url: String,
    instance_id: String,
    account: Account,
    outcomes: Family<OutboundLabels, Counter>,
    codes: Arc<Mutex<BTreeSet<String>>>,
}

impl OutboundState {
    /// Registers `callplane_twilio_outbound_total{result,code}`.
    pub(crate) fn new(public_base_url: String, instance_id: String, account: Account, metrics: &mut Registry) -> Self {
        let outcomes = Family::default();
        metrics.register(
            "outbound",
            "Outbound call requests by result and Twilio error code",
            outcomes.clone(),
        );
        Self {
            public_base_url,
            instance_id,
            account,
            outcomes,
            codes: Arc::default(),
        }
    }

    fn count(&self, result: &'static str, code: &str) {
        let code = {
            let mut codes = self.codes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if codes.contains(code) || (codes.len() < MAX_CODE_LABELS && codes.insert(code.to_owned())) {
                code.to_owned()
            } else {
                "other".to_owned()
            }
        };
        self.outcomes.get_or_create(&OutboundLabels { result, code }).inc();
    }
}

/// The CRM's lead: a number or a string.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub(crate) enum LeadId {
    Number(u64),
    Text(String),
}

/// `POST /api/calls/outbound`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct OutboundRequest {
    /// The number to call, E.164.
    #[schema(pattern = "^\\+[1-9][0-9]{1,14}$")]
    to: String,
    lead_id: LeadId,
}

thread_local! {
    /// `awc::Client` is not `Send`: one per worker thread.
    static CLIENT: awc::Client = awc::Client::builder().timeout(TWILIO_TIMEOUT).disable_redirects().finish();
}

/// A step of an outbound request, as its timeline keeps it (`outbound_events`).
#[derive(Debug, Default)]
struct Step<'a> {
    step: &'static str,
    call_sid: Option<&'a str>,
    twilio_code: Option<&'a str>,
    detail: Option<&'a str>,
    duration_ms: Option<i64>,
}

/// Adds `steps` to the timeline of `req_id`. The call record is what counts: a step that cannot be
/// written is logged, and the request goes on.
async fn record_steps(db: &Db, state: &OutboundState, req_id: &str, steps: &[Step<'_>]) {
    let at = now_ms();
    let request_id = current_request_id().map(|id| id.to_string());
    let written = db
        .run(|pool| async move {
            let mut tx = pool.begin().await?;
            for step in steps {
                sqlx::query(
                    "INSERT INTO outbound_events (req_id, step, at_ms, instance_id, request_id, call_sid, twilio_code, detail, duration_ms)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(req_id)
                .bind(step.step)
                .bind(at)
                .bind(&state.instance_id)
                .bind(&request_id)
                .bind(step.call_sid)
                .bind(step.twilio_code)
                .bind(step.detail)
                .bind(step.duration_ms)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await
        })
        .await;
    if let Err(e) = written {
        tracing::error!(target: TRACE_TARGET, error = %e, "[OUTBOUND][REQ={req_id}] the call's timeline could not be written");
    }
}

/// Milliseconds since `since`.
fn millis(since: Instant) -> i64 {
    i64::try_from(since.elapsed().as_millis()).unwrap_or(i64::MAX)
}

/// `REQ`: the first 8 hex digits of a v4 UUID.
fn new_req_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

/// Whether `number` is E.164: `+`, a non-zero digit, at most 15 digits in all.
pub(crate) fn is_e164(number: &str) -> bool {
    number
        .strip_prefix('+')
        .is_some_and(|d| (2..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()) && !d.starts_with('0'))
}

fn db_unavailable(e: &sqlx::Error) -> ApiError {
    ApiError::database("[OUTBOUND] call record", e)
}

/// An error answer that also names the outbound request and, when Twilio gave one, its code.
fn failure(
    status: StatusCode,
    code: &str,
    message: &str,
    req_id: &str,
    twilio: Option<&Value>,
    retry_after: Option<u64>,
) -> HttpResponse {
    let mut res = HttpResponse::build(status).json(json!({
        "error": {
            "code": code,
            "message": message,
            "request_id": current_request_id().map(|id| id.to_string()),
            "req_id": req_id,
            "twilio_code": twilio.and_then(|t| t.get("code")).cloned(),
            "more_info": twilio.and_then(|t| t.get("more_info")).cloned(),
        }
    }));
    if let Some(secs) = retry_after {
        res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    res
}

async fn mark_failed(db: &Db, req_id: &str, error: &str) {
    let result = db
        .run(|pool| {
            sqlx::query("UPDATE calls SET status = 'failed', error = $1, updated_at = $2 WHERE req_id = $3")
                .bind(error)
                .bind(now())
                .bind(req_id)
                .execute(pool)
        })
        .await;
    if let Err(e) = result {
        tracing::error!(target: TRACE_TARGET, error = %e, "[OUTBOUND][REQ={req_id}] the failure could not be saved on the call record");
    }
}

/// Attaches Twilio's CallSid to the call recorded for `req_id`. A status callback may have
/// arrived first and created a row for the sid: then that row takes the request's details.
async fn attach_sid(db: &Db, req_id: &str, call_sid: &str, status: &str) -> Result<(), sqlx::Error> {
    let updated = db
        .run(|pool| {
            sqlx::query("UPDATE calls SET call_sid = $1, status = $2, updated_at = $3 WHERE req_id = $4")
                .bind(call_sid)
                .bind(status)
                .bind(now())
                .bind(req_id)
                .execute(pool)
        })
        .await;
    let error = match updated {
        Ok(_) => return Ok(()),
        Err(e) if unique_violation(&e) => e,
        Err(e) => return Err(e),
    };
    // A callback created the sid's row first: it takes the request's details, the placeholder
    // goes. Nothing changes unless that row is really there.
    db.run(|pool| async move {
        let mut tx = pool.begin().await?;
        let Some(row) = sqlx::query("SELECT business_id, lead_id FROM calls WHERE req_id = $1 AND call_sid IS NULL")
            .bind(req_id)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Err(error);
        };
        sqlx::query("DELETE FROM calls WHERE req_id = $1 AND call_sid IS NULL")
            .bind(req_id)
            .execute(&mut *tx)
            .await?;
        let merged = sqlx::query(
            "UPDATE calls SET req_id = $1, business_id = COALESCE(business_id, $2), lead_id = COALESCE(lead_id, $3) WHERE call_sid = $4",
        )
        .bind(req_id)
        .bind(row.try_get::<Option<i64>, _>(0)?)
        .bind(row.try_get::<Option<String>, _>(1)?)
        .bind(call_sid)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if merged != 1 {
            return Err(error); // rolled back: the placeholder stays
        }
        tx.commit().await
    })
    .await
}

/// The `twilio_failed` step: Twilio's error code (or ours: `twilio_timeout`, …) and message.
async fn failed_step(db: &Db, state: &OutboundState, req_id: &str, code: &str, message: &str, calling: Instant) {
    let failed = [Step {
        step: "twilio_failed",
        twilio_code: Some(code),
        detail: Some(message),
        duration_ms: Some(millis(calling)),
        ..Step::default()
    }];
    record_steps(db, state, req_id, &failed).await;
}

fn unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// `POST /api/calls/outbound`.
pub(crate) async fn create(
    who: Principal,
    db: web::Data<Db>,
    state: web::Data<OutboundState>,
    body: web::Json<OutboundRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    if !is_e164(&body.to) {
        return Err(ApiError::unprocessable(format!(
            "to {:?} is not an E.164 number such as +972501234567",
            body.to
        )));
    }
    let lead_id = match body.lead_id {
        LeadId::Number(n) => n.to_string(),
        LeadId::Text(t)
            if !t.is_empty()
                && t.len() <= 64
                && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            t
        }
        LeadId::Text(_) => {
            return Err(ApiError::unprocessable(
                "lead_id must be a number or 1–64 characters of [A-Za-z0-9_-]",
            ));
        }
    };
    let from: String = db
        .run(|pool| {
            sqlx::query("SELECT phone_number FROM businesses WHERE id = $1")
                .bind(who.business_id)
                .fetch_optional(pool)
        })
        .await
        .map_err(|e| db_unavailable(&e))?
        .ok_or_else(|| ApiError::not_found("your business no longer exists"))?
        .try_get(0)
        .map_err(|e| db_unavailable(&e))?;
    let to = body.to;
    let tenant = who.business_id;
    // Record first: whatever Twilio does next, the attempt exists. A REQ id is 32 bits: on the
    // rare collision, draw another.
    let at = now();
    let mut attempt = 0;
    let req_id = loop {
        let req_id = new_req_id();
        tracing::info!(target: TRACE_TARGET, req_id = %req_id, tenant, lead_id = %lead_id, to = %to, from = %from,
            "[OUTBOUND][REQ={req_id}] tenant={tenant} lead_id={lead_id} to={to} from={from}");
        let inserted = db.run(|pool| sqlx::query(
            "INSERT INTO calls (call_sid, req_id, business_id, direction, from_number, to_number, status, lead_id, last_sequence, created_at, updated_at)
             VALUES (NULL, $1, $2, 'outbound', $3, $4, 'requested', $5, -1, $6, $6)",
        )
        .bind(&req_id)
        .bind(tenant)
        .bind(&from)
        .bind(&to)
        .bind(&lead_id)
        .bind(at)
        .execute(pool))
        .await;
        match inserted {
            Ok(_) => break req_id,
            Err(e) if unique_violation(&e) && attempt < 3 => attempt += 1,
            Err(e) => return Err(db_unavailable(&e)),
        }
    };

    let public = &state.public_base_url;
    let account = &state.account;
    let answer_url = format!(
        "{public}/webhook/outbound_call?{}",
        url::form_urlencoded::Serializer::new(String::new())
            .append_pair("lead_id", &lead_id)
            .append_pair("business_id", &tenant.to_string())
            .append_pair("req_id", &req_id)
            .finish()
    );
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    form.append_pair("To", &to)
        .append_pair("From", &from)
        .append_pair("Url", &answer_url)
        .append_pair("Method", "POST")
        // Both URLs carry the REQ id: should the CallSid never reach the record here (a timeout
        // after Twilio placed the call), the webhooks attach it to this request's record.
        .append_pair(
            "StatusCallback",
            &format!("{public}/webhook/call_status?req_id={req_id}"),
        )
        .append_pair("StatusCallbackMethod", "POST");
    for event in ["initiated", "ringing", "answered", "completed"] {
        form.append_pair("StatusCallbackEvent", event);
    }
    let endpoint = format!("{}/2010-04-01/Accounts/{}/Calls.json", account.api_base, account.sid);
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", account.sid, account.auth_token.expose()));

    let accepted = format!("tenant={tenant} lead_id={lead_id} to={to} from={from}");
    let steps = [
        Step {
            step: "accepted",
            detail: Some(&accepted),
            ..Step::default()
        },
        Step {
            step: "calling_twilio",
            ..Step::default()
        },
    ];
    record_steps(&db, &state, &req_id, &steps).await;
    tracing::info!(target: TRACE_TARGET, req_id = %req_id, "[OUTBOUND][REQ={req_id}] calling twilio...");
    let calling = Instant::now();
    let request = CLIENT.with(|client| {
        client
            .post(&endpoint)
            .insert_header((header::AUTHORIZATION, format!("Basic {credentials}")))
            .insert_header((header::CONTENT_TYPE, "application/x-www-form-urlencoded"))
            .insert_header((header::ACCEPT, "application/json"))
            .send_body(form.finish())
    });
    let mut response = match request.await {
        Ok(response) => response,
        Err(error) => {
            let timed_out = matches!(error, awc::error::SendRequestError::Timeout);
            let (status, code, message) = if timed_out {
                (
                    StatusCode::GATEWAY_TIMEOUT,
                    "twilio_timeout",
                    format!("Twilio did not answer within {}s", TWILIO_TIMEOUT.as_secs()),
                )
            } else {
                (
                    StatusCode::BAD_GATEWAY,
                    "twilio_unreachable",
                    format!("Twilio could not be reached: {error}"),
                )
            };
            tracing::error!(target: TRACE_TARGET, req_id = %req_id, "[OUTBOUND][REQ={req_id}] twilio_failed err={code} {message}");
            failed_step(&db, &state, &req_id, code, &message, calling).await;
            mark_failed(&db, &req_id, &format!("{code}: {message}")).await;
            state.count("failed", code);
            return Ok(failure(status, code, &message, &req_id, None, None));
        }
    };
    let http_status = response.status();
    let bytes = match response.body().limit(256 * 1024).await {
        Ok(bytes) => bytes,
        Err(error) => {
            let message = format!("Twilio's answer could not be read: {error}");
            tracing::error!(target: TRACE_TARGET, req_id = %req_id, "[OUTBOUND][REQ={req_id}] twilio_failed err=unreadable {message}");
            failed_step(&db, &state, &req_id, "unreadable", &message, calling).await;
            mark_failed(&db, &req_id, &message).await;
            state.count("failed", "unreadable");
            return Ok(failure(
                StatusCode::BAD_GATEWAY,
                "twilio_unreadable",
                &message,
                &req_id,
                None,
                None,
            ));
        }
    };
    let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);

    if http_status.is_success() {
        let Some(call_sid) = answer
            .get("sid")
            .and_then(Value::as_str)
            .filter(|s| s.starts_with("CA"))
        else {
            let message = "Twilio accepted the call but sent no CallSid".to_owned();
            tracing::error!(target: TRACE_TARGET, req_id = %req_id, "[OUTBOUND][REQ={req_id}] twilio_failed err=no_sid {message}");
            failed_step(&db, &state, &req_id, "no_sid", &message, calling).await;
            mark_failed(&db, &req_id, &message).await;
            state.count("failed", "no_sid");
            return Ok(failure(
                StatusCode::BAD_GATEWAY,
                "twilio_bad_answer",
                &message,
                &req_id,
                None,
                None,
            ));
        };
        let call_status = answer.get("status").and_then(Value::as_str).unwrap_or("queued");
        tracing::info!(target: TRACE_TARGET, req_id = %req_id, call_sid, "[OUTBOUND][REQ={req_id}] twilio_ok call_sid={call_sid}");
        let ok = [Step {
            step: "twilio_ok",
            call_sid: Some(call_sid),
            detail: Some(call_status),
            duration_ms: Some(millis(calling)),
            ..Step::default()
        }];
        record_steps(&db, &state, &req_id, &ok).await;
        if let Err(e) = attach_sid(&db, &req_id, call_sid, call_status).await {
            // The call is placed; its webhooks will record it under its sid.
            tracing::error!(target: TRACE_TARGET, error = %e, call_sid, "[OUTBOUND][REQ={req_id}] the CallSid could not be saved yet");
        }
        state.count("ok", "");
        return Ok(HttpResponse::Created().json(json!({
            "req_id": req_id,
            "call_sid": call_sid,
            "status": call_status,
            "to": to,
            "from": from,
            "lead_id": lead_id,
        })));
    }

    let twilio_code = answer.get("code").and_then(Value::as_i64);
    let twilio_message = answer
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("no message")
        .to_owned();
    // Free text from the REST API, at the end of the line: escaped so it cannot break the line.
    let shown_message = plain_text(&truncated(&twilio_message, 512)).into_owned();
    let code_text = twilio_code.map_or_else(|| format!("http_{}", http_status.as_u16()), |c| c.to_string());
    tracing::error!(target: TRACE_TARGET, req_id = %req_id, twilio_code = %code_text,
        "[OUTBOUND][REQ={req_id}] twilio_failed err={code_text} {shown_message}");
    failed_step(&db, &state, &req_id, &code_text, &twilio_message, calling).await;
    mark_failed(&db, &req_id, &format!("{code_text} {twilio_message}")).await;
    state.count("failed", &code_text);
    let twilio = (!answer.is_null()).then_some(&answer);
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .unwrap_or(5);
    let (status, code, message, retry) = match (twilio_code, http_status.as_u16()) {
        (Some(21211 | 21210 | 21212 | 21214 | 21215 | 21217 | 21219 | 13224), _) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_number",
            format!("Twilio refused the number: {twilio_message}"),
            None,
        ),
        (Some(20429), _) | (_, 429) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "twilio_rate_limited",
            format!("Twilio is rate limiting: {twilio_message}"),
            Some(retry_after),
        ),
        (Some(20003 | 20005), _) | (_, 401 | 403) => (
            StatusCode::BAD_GATEWAY,
            "twilio_auth",
            "Twilio rejected the account credentials; check TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN".to_owned(),
            None,
        ),
        (_, 500..) => (
            StatusCode::BAD_GATEWAY,
            "twilio_unavailable",
            format!("Twilio failed ({http_status}): {twilio_message}"),
            None,
        ),
        _ => (
            StatusCode::BAD_GATEWAY,
            "twilio_error",
            format!("Twilio refused the call: {twilio_message}"),
            None,
        ),
    };
    Ok(failure(status, code, &message, &req_id, twilio, retry))
}
