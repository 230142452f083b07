//! The console's HTML, as compile-time templates: every value (a caller name from Twilio, a
//! number a user typed) goes through maud's escaping, and the only script is the embedded one.

use callplane_plugin_api::calls::{CallLine, Entry, Trace, VERDICTS};
use callplane_plugin_api::{Principal, calls::CallSummary};
use maud::{DOCTYPE, Markup, html};

use crate::assets::{CSS_URL, JS_URL};

/// The Content-Security-Policy of every console answer: scripts, styles, images and connections
/// from this origin only, no inline script or style, no framing, forms posting here only.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Statuses after which a call changes no more (the call page stops refreshing).
const FINAL_STATUSES: [&str; 5] = ["completed", "busy", "failed", "no-answer", "canceled"];

/// The filters of the live list, as the form shows them.
#[derive(Debug, Clone)]
pub(crate) struct Filters {
    /// `15m`, `1h`, `24h` or `7d`.
    pub since: String,
    /// Digits of a number, as typed.
    pub number: String,
    /// A verdict, or empty for any.
    pub verdict: String,
}

/// The choices of the "since" filter: the value in the query, what the picker shows, and the
/// window in milliseconds.
pub(crate) const SINCE: [(&str, &str, i64); 4] = [
    ("15m", "15 minutes", 15 * 60_000),
    ("1h", "hour", 3_600_000),
    ("24h", "24 hours", 86_400_000),
    ("7d", "7 days", 7 * 86_400_000),
];

/// `<time>` for an RFC 3339 UTC instant: the UTC value as text and on hover; the script replaces
/// the text with the browser's local time and keeps the UTC value in the title.
fn when(rfc3339: &str) -> Markup {
    let utc = format!(
        "{} UTC",
        rfc3339
            .split('.')
            .next()
            .unwrap_or(rfc3339)
            .trim_end_matches('Z')
            .replace('T', " ")
    );
    html! { time datetime=(rfc3339) title=(utc) { (utc) } }
}

/// A page: the bar (with the signed-in user when there is one) and `body`.
fn layout(title: &str, who: Option<&Principal>, body: &Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · callplane" }
                link rel="stylesheet" href=(*CSS_URL);
                script src=(*JS_URL) defer {}
            }
            body {
                header.bar {
                    a.brand href="/console/calls" { "callplane" }
                    @if let Some(who) = who {
                        nav {
                            a href="/console/calls" { "Live calls" }
                            a href="/console/outbound" { "Place a call" }
                        }
                        span.who { (who.email) " · business " (who.business_id) }
                        button #sign-out type="button" { "Sign out" }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// The sign-in page; `next` is where to go once signed in (a console path).
pub(crate) fn sign_in(next: &str) -> Markup {
    let body = html! {
        section.narrow {
            h1 { "Sign in" }
            form #sign-in method="post" action="/api/auth/login" data-next=(next) {
                label { "E-mail" input type="email" name="email" autocomplete="username" required; }
                label { "Password" input type="password" name="password" autocomplete="current-password" required; }
                // Enabled by the script: without it the form would send the password nowhere useful.
                button type="submit" disabled { "Sign in" }
            }
            p #sign-in-error.error role="alert" {}
            noscript { p.error { "Signing in needs JavaScript." } }
        }
    };
    layout("Sign in", None, &body)
}

/// The query string of `filters` (for the refresh URL and the links).
pub(crate) fn query_of(filters: &Filters) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("since", &filters.since)
        .append_pair("number", &filters.number)
        .append_pair("verdict", &filters.verdict)
        .finish()
}

/// The live list: the filters, then the calls, refreshed by the script from `/console/live`.
pub(crate) fn live(who: &Principal, filters: &Filters, calls: &[CallLine], problem: Option<&str>) -> Markup {
    let body = html! {
        h1 { "Live calls" }
        form.filters method="get" action="/console/calls" {
            label { "Since"
                select name="since" {
                    @for (value, shown, _) in SINCE {
                        option value=(value) selected[filters.since == value] { "the last " (shown) }
                    }
                }
            }
            label { "Number"
                input type="search" name="number" value=(filters.number) inputmode="tel"
                    pattern="[+0-9 .\\(\\)\\-]{1,24}" placeholder="+9725…" maxlength="24";
            }
            label { "Verdict"
                select name="verdict" {
                    option value="" { "any" }
                    @for verdict in VERDICTS {
                        option value=(verdict) selected[filters.verdict == verdict] { (verdict) }
                    }
                }
            }
            button type="submit" { "Filter" }
        }
        @if let Some(problem) = problem {
            p.error role="alert" { (problem) }
        }
        p #live-status.muted aria-live="polite" {
            "Showing " (calls.len()) @if calls.len() == 1 { " call." } @else { " calls." }
        }
        div.scroll {
            table.calls {
                thead { tr {
                    th { "Time" } th { "Direction" } th { "From" } th { "To" }
                    th { "Status" } th { "Verdict" } th { "Call" }
                } }
                // A refused filter is not refreshed: it would be refused every 3 s.
                tbody #call-rows data-refresh=[problem.is_none().then(|| format!("/console/live?{}", query_of(filters)))] {
                    (rows(calls))
                }
            }
        }
    };
    layout("Live calls", Some(who), &body)
}

/// The rows of the live list (the fragment `/console/live` answers).
pub(crate) fn rows(calls: &[CallLine]) -> Markup {
    html! {
        @for call in calls {
            @let id = call.call_sid.as_deref().or(call.req_id.as_deref()).unwrap_or("-");
            tr data-call=(id) {
                td data-label="Time" { (when(&call.at)) }
                td data-label="Direction" { (call.direction) }
                td data-label="From" { (call.from) }
                td data-label="To" { (call.to) }
                td data-label="Status" { (call.status) }
                td data-label="Verdict" { span class=(format!("verdict v-{}", call.verdict)) { (call.verdict) } }
                td data-label="Call" { a href=(format!("/console/calls/{id}")) { (id) } }
            }
        }
        @if calls.is_empty() {
            tr.empty { td colspan="7" { "No calls yet: new ones appear here as they arrive." } }
        }
    }
}

/// A call's page: its summary, verdict, hints and timeline.
pub(crate) fn call(who: &Principal, id: &str, trace: &Trace) -> Markup {
    let body = html! {
        p { a href="/console/calls" { "← Live calls" } }
        h1 { "Call " code { (id) } }
        p #live-status.muted aria-live="polite" {}
        (trace_section(id, trace))
    };
    layout(&format!("Call {id}"), Some(who), &body)
}

/// Whether the call may still change (the page keeps refreshing it).
fn live_call(call: Option<&CallSummary>) -> bool {
    call.is_none_or(|c| !FINAL_STATUSES.contains(&c.status.as_str()))
}

/// The parts of a call's page that change (the fragment `/console/calls/{id}/trace` answers).
pub(crate) fn trace_section(id: &str, trace: &Trace) -> Markup {
    let refresh = live_call(trace.call.as_ref()).then(|| format!("/console/calls/{id}/trace"));
    let caller_name = trace
        .timeline
        .iter()
        .flat_map(|e| e.params.iter().flatten())
        .find(|(name, value)| name == "CallerName" && !value.is_empty())
        .map(|(_, value)| value);
    html! {
        section #trace data-refresh=[refresh] {
            @if let Some(c) = &trace.call {
                dl.summary {
                    dt { "Direction" } dd { (c.direction) }
                    dt { "From" } dd { (c.from) }
                    @if let Some(name) = caller_name { dt { "Caller name" } dd.caller-name { (name) } }
                    dt { "To" } dd { (c.to) }
                    dt { "Status" } dd.status { (c.status) }
                    @if let Some(req) = &c.req_id { dt { "Outbound request" } dd { "REQ=" (req) } }
                    @if let Some(sid) = &c.call_sid { dt { "CallSid" } dd { code { (sid) } } }
                    @if let Some(error) = &c.error { dt { "Error" } dd.error { (error) } }
                    dt { "Created" } dd { (when(&c.created_at)) }
                }
            }
            h2 { "Verdict" }
            dl.verdict {
                @for v in &trace.verdict {
                    dt { (v.question) } dd { (v.answer) }
                }
            }
            @if !trace.hints.is_empty() {
                h2 { "Hints" }
                ul.hints { @for hint in &trace.hints { li { (hint) } } }
            }
            h2 { "Timeline" }
            ol.timeline {
                @for e in &trace.timeline { (entry(e)) }
            }
        }
    }
}

fn entry(e: &Entry) -> Markup {
    html! {
        li class=(format!("event src-{}", e.source)) {
            div.meta {
                (when(&e.at))
                span.source { (e.source) }
                @if let Some(instance) = &e.instance { span.instance { "on " (instance) } }
                @if let Some(request) = &e.request_id { span.request { "request " (request) } }
            }
            p.what { (e.what) }
            @if let Some(twiml) = &e.twiml {
                p.label { "TwiML we answered:" }
                pre.twiml { (twiml) }
            }
            @if let Some(params) = &e.params {
                details.params data-key=(format!("{}-{}", e.at_ms, e.source)) {
                    summary { "Parameters Twilio sent (" (params.len()) ")" }
                    dl {
                        @for (name, value) in params {
                            dt { (name) }
                            dd { (value) }
                        }
                    }
                }
            }
        }
    }
}

/// The form that places an outbound call (through `POST /api/calls/outbound`).
pub(crate) fn outbound(who: &Principal) -> Markup {
    let may_call = who.write_pages.iter().any(|p| p == crate::PAGE);
    let body = html! {
        h1 { "Place a call" }
        @if may_call {
            p.muted { "Twilio calls the number from your business's number; the call's page then fills in as it progresses." }
            form #outbound method="post" action="/api/calls/outbound" {
                label { "Number to call"
                    input type="tel" name="to" required pattern="\\+[1-9][0-9]{1,14}" placeholder="+972501234567" maxlength="16";
                }
                label { "Lead id"
                    input type="text" name="lead_id" required pattern="[A-Za-z0-9_\\-]{1,64}" value="console" maxlength="64";
                }
                button type="submit" { "Call" }
            }
            p #outbound-result role="status" {}
            noscript { p.error { "Placing a call needs JavaScript." } }
        } @else {
            p.error { "Your role may read calls but not place them." }
        }
    };
    layout("Place a call", Some(who), &body)
}

/// A page that says what went wrong (no such call, the calls cannot be read right now).
pub(crate) fn problem(who: Option<&Principal>, title: &str, message: &str) -> Markup {
    let body = html! {
        h1 { (title) }
        p.error { (message) }
        p { a href="/console/calls" { "← Live calls" } }
    };
    layout(title, who, &body)
}
