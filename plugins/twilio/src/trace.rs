//! Every call explained: its stored timeline (webhooks with what we answered, status callbacks,
//! the outbound request's steps, spooling and replay, refused webhooks naming it) and a verdict
//! that answers the questions operators ask when calls go missing — did it reach us, was the
//! signature valid, which tenant, did Twilio's API accept our request, where did it stop.
//!
//! Read from the database only, so `callplane trace` works from any instance (or a laptop with the
//! database URL), and `GET /api/calls/{sid}/trace` shows a tenant its own calls (never refused
//! webhooks: they are not attributable).

use std::path::Path;

use callplane_plugin_api::storage::sqlx::{self, Row};
use callplane_plugin_api::storage::{Db, DbKind};
use callplane_plugin_api::timestamps::rfc3339_ms;

pub use callplane_plugin_api::calls::{CallSummary, Entry, Trace, Verdict};

use crate::event::{CallEvent, now_ms};

/// A status after which no callback follows.
const FINAL_STATUSES: [&str; 5] = ["completed", "busy", "failed", "no-answer", "canceled"];
/// How long an answered call may go without a status callback before the verdict says so.
pub const SILENT_AFTER_MS: i64 = 5 * 60 * 1000;

/// What an id given to `trace` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallId {
    /// A CallSid: `CA` and 32 letters or digits.
    Sid(String),
    /// The REQ id of an outbound request: 8 hex digits.
    Req(String),
}

impl CallId {
    /// Parses a CallSid or a REQ id.
    ///
    /// # Errors
    /// What the id should look like.
    pub fn parse(id: &str) -> Result<Self, String> {
        let sid = id.len() == 34 && id.starts_with("CA") && id[2..].bytes().all(|b| b.is_ascii_alphanumeric());
        let req = id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit());
        if sid {
            Ok(Self::Sid(id.to_owned()))
        } else if req {
            Ok(Self::Req(id.to_ascii_lowercase()))
        } else {
            Err("expected a CallSid (CA and 32 letters or digits) or a REQ id (8 hex digits)".to_owned())
        }
    }
}

/// Who asks: an operator sees everything; a tenant its own calls, without refused webhooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Viewer {
    /// `callplane trace`.
    Operator,
    /// `GET /api/calls/{sid}/trace`: the business's own calls.
    Tenant(i64),
}

/// A stored webhook event.
#[derive(Debug)]
struct Event {
    at_ms: i64,
    kind: String,
    status: String,
    sequence: i64,
    request_id: Option<String>,
    instance: Option<String>,
    client: Option<String>,
    answer_status: Option<i64>,
    answer_kind: Option<String>,
    twiml: Option<String>,
    params: Option<Vec<(String, String)>>,
    latency_us: Option<i64>,
    applied: Option<i64>,
    spooled_ms: Option<i64>,
    stored_ms: Option<i64>,
}

/// A stored outbound step.
#[derive(Debug)]
struct Step {
    at_ms: i64,
    step: String,
    instance: String,
    request_id: Option<String>,
    call_sid: Option<String>,
    twilio_code: Option<String>,
    detail: Option<String>,
    duration_ms: Option<i64>,
}

/// A stored step of another plugin (`call_notes`: the media relay's stream hop).
#[derive(Debug)]
struct Note {
    at_ms: i64,
    source: String,
    step: String,
    detail: String,
    instance: String,
    request_id: Option<String>,
}

/// A stored refused webhook.
#[derive(Debug)]
struct Refused {
    at_ms: i64,
    instance: String,
    route: String,
    client: String,
    request_id: Option<String>,
    signature: String,
    likely_cause: Option<String>,
}

fn route_of(kind: &str) -> &'static str {
    match kind {
        "incoming" => crate::webhooks::INCOMING_CALL,
        "outbound_answered" => crate::webhooks::OUTBOUND_CALL,
        _ => crate::webhooks::CALL_STATUS,
    }
}

/// The trace of `id` as `viewer` may see it; `None` when nothing is known of it. `spool` is this
/// instance's spool file, searched for events not yet in the database (the operator's view only).
///
/// # Errors
/// A database error.
pub async fn load(db: &Db, id: &CallId, viewer: Viewer, spool: Option<&Path>) -> Result<Option<Trace>, sqlx::Error> {
    let call = match id {
        CallId::Sid(sid) => call_row(db, "call_sid", sid).await?,
        CallId::Req(req) => call_row(db, "req_id", req).await?,
    };
    if let Viewer::Tenant(business) = viewer
        && call.as_ref().is_none_or(|(_, c)| c.business_id != Some(business))
    {
        return Ok(None);
    }
    let call_sid = match id {
        CallId::Sid(sid) => Some(sid.clone()),
        CallId::Req(_) => call.as_ref().and_then(|(_, c)| c.call_sid.clone()),
    };
    let req_id = match id {
        CallId::Req(req) => Some(req.clone()),
        CallId::Sid(_) => call.as_ref().and_then(|(_, c)| c.req_id.clone()),
    };
    let events = match &call {
        Some((row_id, _)) => events(db, *row_id).await?,
        None => Vec::new(),
    };
    let steps = match &req_id {
        Some(req) => steps(db, req).await?,
        None => Vec::new(),
    };
    let (refused, pending) = match (viewer, &call_sid) {
        (Viewer::Operator, Some(sid)) => (refused(db, sid).await?, spooled(spool, sid)),
        _ => (Vec::new(), Vec::new()),
    };
    // Notes belong to a call the relay checked against its business: a tenant sees its own.
    let notes = match &call_sid {
        Some(sid) => notes(db, sid).await?,
        None => Vec::new(),
    };
    if call.is_none() && steps.is_empty() && refused.is_empty() && pending.is_empty() && notes.is_empty() {
        return Ok(None);
    }
    let call = call.map(|(_, c)| c);
    let shown_id = match id {
        CallId::Sid(s) | CallId::Req(s) => s.clone(),
    };
    let found = Found {
        events,
        steps,
        refused,
        pending,
        notes,
    };
    Ok(Some(assemble(shown_id, call, &found, now_ms())))
}

/// Everything stored of a call, by kind.
struct Found {
    events: Vec<Event>,
    steps: Vec<Step>,
    refused: Vec<Refused>,
    pending: Vec<CallEvent>,
    notes: Vec<Note>,
}

async fn notes(db: &Db, call_sid: &str) -> Result<Vec<Note>, sqlx::Error> {
    let rows = db
        .run(|pool| {
            sqlx::query(
                "SELECT at_ms, source, step, detail, instance_id, request_id
                 FROM call_notes WHERE call_sid = $1 ORDER BY id",
            )
            .bind(call_sid)
            .fetch_all(pool)
        })
        .await?;
    rows.iter()
        .map(|r| {
            Ok(Note {
                at_ms: r.try_get("at_ms")?,
                source: r.try_get("source")?,
                step: r.try_get("step")?,
                detail: r.try_get("detail")?,
                instance: r.try_get("instance_id")?,
                request_id: r.try_get("request_id")?,
            })
        })
        .collect()
}

async fn call_row(db: &Db, column: &str, value: &str) -> Result<Option<(i64, CallSummary)>, sqlx::Error> {
    let sql = format!(
        "SELECT id, call_sid, req_id, business_id, direction, from_number, to_number, status, error, created_at
         FROM calls WHERE {column} = $1"
    );
    let row = db
        .run(|pool| sqlx::query(sqlx::AssertSqlSafe(sql)).bind(value).fetch_optional(pool))
        .await?;
    row.map(|r| {
        Ok((
            r.try_get("id")?,
            CallSummary {
                call_sid: r.try_get("call_sid")?,
                req_id: r.try_get("req_id")?,
                business_id: r.try_get("business_id")?,
                direction: r.try_get("direction")?,
                from: r.try_get("from_number")?,
                to: r.try_get("to_number")?,
                status: r.try_get("status")?,
                error: r.try_get("error")?,
                created_at: callplane_plugin_api::timestamps::rfc3339(r.try_get("created_at")?),
            },
        ))
    })
    .transpose()
}

async fn events(db: &Db, call_id: i64) -> Result<Vec<Event>, sqlx::Error> {
    let rows = db
        .run(|pool| {
            sqlx::query(
                "SELECT kind, status, sequence, request_id, received_at, received_ms, instance_id, client,
                        answer_status, answer_kind, twiml, payload, latency_us, applied, spooled_ms, stored_ms
                 FROM call_events WHERE call_id = $1 ORDER BY id",
            )
            .bind(call_id)
            .fetch_all(pool)
        })
        .await?;
    rows.iter()
        .map(|r| {
            let received_at: i64 = r.try_get("received_at")?;
            Ok(Event {
                at_ms: r
                    .try_get::<Option<i64>, _>("received_ms")?
                    .unwrap_or(received_at.saturating_mul(1000)),
                kind: r.try_get("kind")?,
                status: r.try_get("status")?,
                sequence: r.try_get("sequence")?,
                request_id: r.try_get("request_id")?,
                instance: r.try_get("instance_id")?,
                client: r.try_get("client")?,
                answer_status: r.try_get("answer_status")?,
                answer_kind: r.try_get("answer_kind")?,
                twiml: r.try_get("twiml")?,
                params: serde_json::from_str(&r.try_get::<String, _>("payload")?).ok(),
                latency_us: r.try_get("latency_us")?,
                applied: r.try_get("applied")?,
                spooled_ms: r.try_get("spooled_ms")?,
                stored_ms: r.try_get("stored_ms")?,
            })
        })
        .collect()
}

async fn steps(db: &Db, req_id: &str) -> Result<Vec<Step>, sqlx::Error> {
    let rows = db
        .run(|pool| {
            sqlx::query(
                "SELECT at_ms, step, instance_id, request_id, call_sid, twilio_code, detail, duration_ms
                 FROM outbound_events WHERE req_id = $1 ORDER BY id",
            )
            .bind(req_id)
            .fetch_all(pool)
        })
        .await?;
    rows.iter()
        .map(|r| {
            Ok(Step {
                at_ms: r.try_get("at_ms")?,
                step: r.try_get("step")?,
                instance: r.try_get("instance_id")?,
                request_id: r.try_get("request_id")?,
                call_sid: r.try_get("call_sid")?,
                twilio_code: r.try_get("twilio_code")?,
                detail: r.try_get("detail")?,
                duration_ms: r.try_get("duration_ms")?,
            })
        })
        .collect()
}

async fn refused(db: &Db, call_sid: &str) -> Result<Vec<Refused>, sqlx::Error> {
    let rows = db
        .run(|pool| {
            sqlx::query(
                "SELECT received_ms, instance_id, route, client, request_id, signature, likely_cause
                 FROM unverified_webhooks WHERE call_sid = $1 ORDER BY id",
            )
            .bind(call_sid)
            .fetch_all(pool)
        })
        .await?;
    rows.iter()
        .map(|r| {
            Ok(Refused {
                at_ms: r.try_get("received_ms")?,
                instance: r.try_get("instance_id")?,
                route: r.try_get("route")?,
                client: r.try_get("client")?,
                request_id: r.try_get("request_id")?,
                signature: r.try_get("signature")?,
                likely_cause: r.try_get("likely_cause")?,
            })
        })
        .collect()
}

/// Events of `call_sid` waiting in the spool file at `spool`, read line by line (it may be large;
/// lines that are not call events are skipped).
fn spooled(spool: Option<&Path>, call_sid: &str) -> Vec<CallEvent> {
    use std::io::BufRead as _;
    let Some(file) = spool.and_then(|p| std::fs::File::open(p).ok()) else {
        return Vec::new();
    };
    std::io::BufReader::new(file)
        .split(b'\n')
        .map_while(Result::ok)
        .filter(|line| line.windows(call_sid.len()).any(|w| w == call_sid.as_bytes()))
        .filter_map(|line| serde_json::from_str::<CallEvent>(&String::from_utf8_lossy(&line)).ok())
        .filter(|e| e.call_sid == call_sid)
        .collect()
}

fn entry(
    at_ms: i64,
    source: &'static str,
    instance: Option<String>,
    request_id: Option<String>,
    what: String,
) -> Entry {
    Entry {
        at_ms,
        at: rfc3339_ms(at_ms),
        source,
        instance,
        request_id,
        what,
        twiml: None,
        params: None,
    }
}

fn event_entries(e: &Event, out: &mut Vec<Entry>) {
    let route = route_of(&e.kind);
    let client = e.client.as_deref().map_or(String::new(), |c| format!(" client={c}"));
    let latency = e.latency_us.map_or(String::new(), |us| format!(" in {us} µs"));
    let answered = match (e.answer_status, e.answer_kind.as_deref()) {
        (Some(status), Some(kind)) => format!("answered {status} {kind}"),
        _ => "answered 200".to_owned(),
    };
    let what = if e.kind == "status" {
        let outcome = match e.applied {
            Some(1) => "applied",
            Some(_) => "ignored: stale (a newer sequence was applied)",
            None => "recorded",
        };
        format!(
            "POST {route} signature=valid status={} sequence={} {outcome}; {answered}{latency}{client}",
            e.status, e.sequence
        )
    } else {
        format!(
            "POST {route} signature=valid status={}; {answered}{latency}{client}",
            e.status
        )
    };
    let source = if e.kind == "status" { "status" } else { "webhook" };
    let mut webhook = entry(e.at_ms, source, e.instance.clone(), e.request_id.clone(), what);
    webhook.twiml.clone_from(&e.twiml);
    webhook.params.clone_from(&e.params);
    out.push(webhook);
    if let Some(spooled) = e.spooled_ms {
        out.push(entry(
            spooled,
            "spool",
            e.instance.clone(),
            e.request_id.clone(),
            format!("spooled ({}): the database was away", e.kind),
        ));
        if let Some(stored) = e.stored_ms {
            out.push(entry(
                stored,
                "spool",
                e.instance.clone(),
                e.request_id.clone(),
                format!("replayed into the database ({})", e.kind),
            ));
        }
    }
}

fn step_entry(s: &Step) -> Entry {
    let took = s.duration_ms.map_or(String::new(), |ms| format!(" after {ms} ms"));
    let what = match s.step.as_str() {
        "accepted" => format!("outbound request accepted: {}", s.detail.as_deref().unwrap_or_default()),
        "calling_twilio" => "calling Twilio's REST API".to_owned(),
        "twilio_ok" => format!(
            "twilio_ok call_sid={} status={}{took}",
            s.call_sid.as_deref().unwrap_or("-"),
            s.detail.as_deref().unwrap_or("-")
        ),
        "twilio_failed" => format!(
            "twilio_failed err={} {}{took}",
            s.twilio_code.as_deref().unwrap_or("-"),
            s.detail.as_deref().unwrap_or_default()
        ),
        other => other.to_owned(),
    };
    entry(
        s.at_ms,
        "outbound",
        Some(s.instance.clone()),
        s.request_id.clone(),
        what,
    )
}

fn refused_entry(r: &Refused) -> Entry {
    let cause = r.likely_cause.as_deref().map_or(String::new(), |c| format!(" ({c})"));
    entry(
        r.at_ms,
        "unverified",
        Some(r.instance.clone()),
        r.request_id.clone(),
        format!(
            "UNVERIFIED POST {} refused 403 signature={} client={}{cause}",
            r.route, r.signature, r.client
        ),
    )
}

/// Builds the trace: the timeline in order, the verdict and the hints, as of `now_ms`.
fn assemble(id: String, call: Option<CallSummary>, found: &Found, now_ms: i64) -> Trace {
    let Found {
        events,
        steps,
        refused,
        pending,
        notes,
    } = found;
    let mut timeline = Vec::new();
    for n in notes {
        timeline.push(entry(
            n.at_ms,
            if n.source == "stream" { "stream" } else { "note" },
            Some(n.instance.clone()),
            n.request_id.clone(),
            format!("{} {}", n.step, n.detail).trim_end().to_owned(),
        ));
    }
    for e in events {
        event_entries(e, &mut timeline);
    }
    timeline.extend(steps.iter().map(step_entry));
    timeline.extend(refused.iter().map(refused_entry));
    for p in pending {
        timeline.push(entry(
            p.spooled_ms.unwrap_or(p.received_ms),
            "spool",
            p.instance_id.clone(),
            p.request_id.clone(),
            format!(
                "spooled ({}) on this instance, not yet in the database",
                p.kind.as_str()
            ),
        ));
    }
    timeline.sort_by_key(|e| e.at_ms);

    let mut verdict = Vec::new();
    let mut hints = Vec::new();
    let first = events.iter().min_by_key(|e| e.at_ms);

    // Reached us.
    let reached = match (first, refused.first(), pending.first()) {
        (Some(e), _, _) => format!(
            "yes, {} on {} at {}",
            rfc3339_ms(e.at_ms),
            e.instance.as_deref().unwrap_or("an instance"),
            route_of(&e.kind)
        ),
        (None, Some(r), _) => format!(
            "Twilio's requests reached {} ({} at {}) but every one was refused",
            r.instance,
            rfc3339_ms(r.at_ms),
            r.route
        ),
        (None, None, Some(p)) => format!(
            "yes, {} on {}; spooled, not yet in the database",
            rfc3339_ms(p.received_ms),
            p.instance_id.as_deref().unwrap_or("this instance")
        ),
        (None, None, None) => "no webhook has arrived for it".to_owned(),
    };
    verdict.push(Verdict {
        question: "reached us",
        answer: reached,
    });

    // Signature.
    let cause = refused.iter().rev().find_map(|r| r.likely_cause.clone());
    let signature = match (events.len() + pending.len(), refused.len()) {
        (0, 0) => "-".to_owned(),
        (valid, 0) => format!("valid ({valid} webhook{})", plural(valid)),
        (valid, bad) => {
            let why = cause.clone().unwrap_or_else(|| {
                "the signature matches no URL this instance knows: is TWILIO_AUTH_TOKEN this account's token?"
                    .to_owned()
            });
            if valid == 0 {
                format!(
                    "invalid: {bad} request{} refused with 403; likely cause: {why}",
                    plural(bad)
                )
            } else {
                format!("valid {valid}, invalid {bad} (refused with 403); likely cause: {why}")
            }
        }
    };
    verdict.push(Verdict {
        question: "signature",
        answer: signature,
    });

    // Tenant.
    let unknown_number = events
        .iter()
        .any(|e| e.answer_kind.as_deref() == Some("unknown_number"));
    let tenant = match &call {
        Some(c) if unknown_number => format!("unknown number: no business has {}", c.to),
        Some(CallSummary {
            business_id: Some(b), ..
        }) => format!("business {b}"),
        Some(_) => "not resolved".to_owned(),
        None if !pending.is_empty() => pending[0]
            .business_id
            .map_or_else(|| "not resolved yet".to_owned(), |b| format!("business {b}")),
        None => "none: refused webhooks are never attributed to a tenant".to_owned(),
    };
    verdict.push(Verdict {
        question: "tenant",
        answer: tenant,
    });

    // Twilio's API (outbound only).
    let outbound = !steps.is_empty() || call.as_ref().is_some_and(|c| c.direction == "outbound");
    let ok = steps.iter().find(|s| s.step == "twilio_ok");
    let failed = steps.iter().find(|s| s.step == "twilio_failed");
    if outbound {
        let api = match (ok, failed) {
            (Some(s), _) => format!(
                "accepted: call {} placed{}",
                s.call_sid.as_deref().unwrap_or("-"),
                s.duration_ms.map_or(String::new(), |ms| format!(" in {ms} ms"))
            ),
            (None, Some(s)) => format!(
                "failed: {} {}",
                s.twilio_code.as_deref().unwrap_or("-"),
                s.detail.as_deref().unwrap_or_default()
            ),
            (None, None) if steps.iter().any(|s| s.step == "calling_twilio") => {
                "no answer recorded from Twilio's REST API".to_owned()
            }
            (None, None) => "not called by this deployment (the call was placed elsewhere)".to_owned(),
        };
        verdict.push(Verdict {
            question: "twilio api",
            answer: api,
        });
        if let Some(s) = failed
            && !events.is_empty()
        {
            hints.push(format!(
                "our request to Twilio failed ({}) but Twilio placed the call all the same: its webhooks arrived; the client saw an error for a call that exists",
                s.twilio_code.as_deref().unwrap_or_default()
            ));
        }
    }

    // State, and where it stopped.
    let statuses: Vec<&Event> = events.iter().filter(|e| e.kind == "status").collect();
    let last_applied = statuses
        .iter()
        .filter(|e| e.applied == Some(1))
        .max_by_key(|e| e.sequence);
    let last_at = timeline.last().map_or(0, |e| e.at_ms);
    let state = match &call {
        Some(c) if FINAL_STATUSES.contains(&c.status.as_str()) => {
            format!("{}: the call ended", c.status)
        }
        Some(c) => {
            let ago = (now_ms - last_at) / 60_000;
            format!(
                "{}: last heard of {} ago{}",
                c.status,
                minutes(ago),
                last_applied.map_or(String::new(), |e| format!(" (status sequence {})", e.sequence))
            )
        }
        None if !pending.is_empty() => "spooled on this instance, not yet in the database".to_owned(),
        None => "refused: never recorded as a call".to_owned(),
    };
    verdict.push(Verdict {
        question: "state",
        answer: state,
    });
    if let Some((answer, hint)) = stream_verdict(notes) {
        verdict.push(Verdict {
            question: "media stream",
            answer,
        });
        hints.extend(hint);
    }

    let streamed = events.iter().find(|e| e.answer_kind.as_deref() == Some("stream"));
    let ended = call
        .as_ref()
        .is_some_and(|c| FINAL_STATUSES.contains(&c.status.as_str()));
    if let Some(stream) = streamed
        && statuses.iter().all(|s| s.at_ms <= stream.at_ms)
        && now_ms - stream.at_ms >= SILENT_AFTER_MS
        && !ended
    {
        hints.push(format!(
            "answered with a media stream {} ago and no status callback since: check the number's status callback URL (…/webhook/call_status) and whether the media server took the stream",
            minutes((now_ms - stream.at_ms) / 60_000)
        ));
    }
    if !refused.is_empty() && events.is_empty() {
        hints.push(format!(
            "every request Twilio sent for this call was refused with 403 ({} attempt{}): {}",
            refused.len(),
            plural(refused.len()),
            cause.unwrap_or_else(|| {
                "check TWILIO_AUTH_TOKEN and CALLPLANE_PUBLIC_BASE_URL against the number's webhook URL".to_owned()
            })
        ));
    }
    if !pending.is_empty() {
        hints.push(format!(
            "{} event{} spooled on this instance and not yet replayed: the database was away; they are replayed every 2 s once it answers",
            pending.len(),
            plural(pending.len())
        ));
    }
    if let Some(e) = events.iter().find(|e| e.answer_kind.as_deref() == Some("fallback")) {
        hints.push(format!(
            "the caller heard the fallback greeting at {}: the business could not be looked up (database away, nothing cached)",
            rfc3339_ms(e.at_ms)
        ));
    }
    Trace {
        id,
        call,
        timeline,
        verdict,
        hints,
    }
}

/// The media relay's hop, from its notes: relayed, or where it stopped (and what the caller heard).
fn stream_verdict(notes: &[Note]) -> Option<(String, Option<String>)> {
    let stream: Vec<&Note> = notes.iter().filter(|n| n.source == "stream").collect();
    let last = |step: &str| stream.iter().rev().find(|n| n.step == step);
    if stream.is_empty() {
        return None;
    }
    let twilio_error = last("stream-error").map(|n| format!("; Twilio reported {}", n.detail));
    let twilio_error = twilio_error.unwrap_or_default();
    if let Some(failed) = last("agent_failed") {
        return Some((
            format!(
                "the media server did not take the stream ({}): the caller heard the fallback message{twilio_error}",
                failed.detail
            ),
            Some(format!(
                "the business's media server failed at {} ({}): check that it is up and reachable from {}; callers hear the fallback message until it is",
                rfc3339_ms(failed.at_ms),
                failed.detail,
                failed.instance
            )),
        ));
    }
    if let Some(refused) = last("refused") {
        return Some((format!("refused by the relay: {}{twilio_error}", refused.detail), None));
    }
    let answer = match (last("agent_connected"), last("stop")) {
        (Some(connected), Some(stop)) => {
            format!(
                "relayed (agent {}); ended: {}{twilio_error}",
                connected.detail, stop.detail
            )
        }
        (Some(connected), None) => format!("relaying (agent {}), no stop yet{twilio_error}", connected.detail),
        (None, _) if last("start").is_some() => format!("started; the media server was not reached{twilio_error}"),
        (None, _) => format!("Twilio's stream events only{twilio_error}"),
    };
    Some((answer, None))
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn minutes(n: i64) -> String {
    match n {
        0 => "less than a minute".to_owned(),
        1 => "1 minute".to_owned(),
        n => format!("{n} minutes"),
    }
}

/// Rows one retention transaction deletes at most: SQLite's write lock is never held for long.
const PRUNE_CHUNK: i64 = 5_000;

/// Deletes timeline rows (events, outbound steps) and refused webhooks older than `days`, oldest
/// first, [`PRUNE_CHUNK`] rows a transaction; call rows stay. On PostgreSQL one instance at a time
/// does it (a transaction-level advisory lock; an instance that finds it held skips the round).
/// Returns the rows deleted, or `None` when another instance held the lock.
///
/// # Errors
/// A database error.
pub async fn prune(db: &Db, days: i64, now_ms: i64) -> Result<Option<u64>, sqlx::Error> {
    let cutoff_ms = now_ms.saturating_sub(days.saturating_mul(86_400_000));
    let mut deleted = 0;
    for (table, column, cutoff) in [
        ("call_events", "received_at", cutoff_ms / 1000),
        ("outbound_events", "at_ms", cutoff_ms),
        ("unverified_webhooks", "received_ms", cutoff_ms),
        ("call_notes", "at_ms", cutoff_ms),
    ] {
        // Rows are appended in time order (ids only grow): everything below the first young row
        // is old. Found by walking the ids from the oldest, which stops at the first young row.
        let sql = format!("SELECT id FROM {table} WHERE {column} >= $1 ORDER BY id LIMIT 1");
        let young: Option<i64> = db
            .run(|pool| {
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .bind(cutoff)
                    .fetch_optional(pool)
            })
            .await?;
        let boundary = match young {
            Some(id) => id,
            None => {
                let sql = format!("SELECT COALESCE(MAX(id), 0) + 1 FROM {table}");
                db.run(|pool| sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(pool))
                    .await?
            }
        };
        loop {
            match delete_chunk(db, table, boundary).await? {
                None => return Ok(None),
                Some(0) => break,
                Some(n) => deleted += n,
            }
        }
    }
    Ok(Some(deleted))
}

/// Deletes up to [`PRUNE_CHUNK`] of the oldest rows of `table` below `boundary`.
async fn delete_chunk(db: &Db, table: &str, boundary: i64) -> Result<Option<u64>, sqlx::Error> {
    /// `pg_try_advisory_xact_lock` key of the retention task.
    const LOCK: i64 = 0x6361_6c6c_7472_6163;
    let kind = db.kind();
    let sql = format!("DELETE FROM {table} WHERE id < $1 AND id < (SELECT MIN(id) FROM {table}) + $2");
    db.run(|pool| async move {
        let mut tx = pool.begin().await?;
        if kind == DbKind::Postgres {
            let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
                .bind(LOCK)
                .fetch_one(&mut *tx)
                .await?;
            if !held {
                return Ok(None);
            }
        }
        let n = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(boundary)
            .bind(PRUNE_CHUNK)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(Some(n))
    })
    .await
}
