//! `callplane trace <CallSid | REQ id>` and `callplane calls`: what happened to a call, and which
//! calls arrived lately, read from the database (any instance, or a laptop with the database URL).

use std::time::Duration;

pub use callplane_plugin_api::calls::CallLine;
use callplane_plugin_api::storage::Db;
use callplane_plugin_api::storage::sqlx::{self, Row};
use callplane_plugin_api::timestamps::rfc3339_ms;
use callplane_plugin_api::{CommandContext, PluginCommand};
use clap::{CommandFactory as _, FromArgMatches as _, Parser, ValueEnum};

use crate::SPOOL_FILE;
use crate::event::now_ms;
use crate::trace::{self, CallId, Viewer};

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// For people.
    Text,
    /// One JSON document.
    Json,
}

#[derive(Debug, Parser)]
#[command(
    name = "trace",
    about = "What happened to a call: its timeline across every instance, and a verdict",
    after_help = "Exit status: 0 when the call is known, 1 when it is not (or the database cannot be read), 2 on usage errors."
)]
struct TraceCli {
    /// A CallSid (CA…) or the REQ id of an outbound request (8 hex digits).
    #[arg(value_parser = CallId::parse)]
    id: CallId,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

/// `callplane trace`.
pub const TRACE: PluginCommand = PluginCommand {
    name: "trace",
    summary: "What happened to a call (by CallSid or REQ id): timeline and verdict, from the database",
    definition: TraceCli::command,
    database: true,
    run: |ctx| Box::pin(run_trace(ctx)),
};

async fn run_trace(ctx: CommandContext) -> Result<(), String> {
    let cli = TraceCli::from_arg_matches(&ctx.matches).map_err(|e| e.to_string().trim_end().to_owned())?;
    let spool = ctx.settings.plugin("twilio").path("spool_dir").join(SPOOL_FILE);
    let found = trace::load(&ctx.db, &cli.id, Viewer::Operator, Some(&spool))
        .await
        .map_err(|e| format!("the database cannot be read: {e}"))?;
    let Some(trace) = found else {
        let (CallId::Sid(id) | CallId::Req(id)) = &cli.id;
        return Err(format!(
            "{id} is unknown: no call, outbound request or refused webhook with this id is in this database"
        ));
    };
    match cli.format {
        Format::Text => print!("{}", trace.text()),
        Format::Json => println!("{}", serde_json::to_string_pretty(&trace).map_err(|e| e.to_string())?),
    }
    Ok(())
}

/// The longest `--since`: ten years.
const MAX_SINCE: Duration = Duration::from_secs(3650 * 86_400);

/// `90s`, `15m`, `1h`, `7d`, up to [`MAX_SINCE`].
fn parse_since(text: &str) -> Result<Duration, String> {
    let usage = || format!("{text:?}: expected a number and a unit (s, m, h, d), such as 15m, 1h or 7d");
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(usage)?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| usage())?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(usage()),
    };
    let secs = n
        .checked_mul(unit_secs)
        .filter(|s| *s <= MAX_SINCE.as_secs())
        .ok_or_else(|| format!("{text:?} is too far back: at most 3650d"))?;
    Ok(Duration::from_secs(secs))
}

#[derive(Debug, Parser)]
#[command(
    name = "calls",
    about = "Recent calls, one line each with its verdict: are calls arriving, and which went wrong?"
)]
struct CallsCli {
    /// How far back: 90s, 15m, 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = parse_since)]
    since: Duration,
    /// Only calls to this number.
    #[arg(long)]
    to: Option<String>,
    /// Only calls with this status (completed, no-answer, …) or verdict (answered, refused,
    /// unknown-number, failed-outbound, spooled, requested, placed, no-webhook).
    #[arg(long)]
    status: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

/// `callplane calls`.
pub const CALLS: PluginCommand = PluginCommand {
    name: "calls",
    summary: "Recent calls with their verdicts (answered, refused, unknown number, failed outbound, spooled)",
    definition: CallsCli::command,
    database: true,
    run: |ctx| Box::pin(run_calls(ctx)),
};

/// Most lines `calls` prints.
pub const MAX_LINES: i64 = 1000;

/// Which calls [`recent`] lists.
#[derive(Debug, Clone, Copy)]
pub struct Filter<'a> {
    /// Calls created at or after this instant (Unix milliseconds).
    pub since_ms: i64,
    /// One business's calls only: a tenant's view, without refused webhooks.
    pub business: Option<i64>,
    /// Only calls to this number.
    pub to: Option<&'a str>,
    /// Only calls from or to a number containing these digits (`+` and digits only).
    pub number: Option<&'a str>,
    /// At most this many calls (and at most [`MAX_LINES`]).
    pub limit: i64,
}

impl Filter<'_> {
    /// Every call since `since_ms`, up to [`MAX_LINES`].
    pub fn since(since_ms: i64) -> Self {
        Self {
            since_ms,
            business: None,
            to: None,
            number: None,
            limit: MAX_LINES,
        }
    }
}

/// The calls `filter` names, newest first; in the operator's view (no business, no number) also
/// refused webhooks for calls never recorded.
///
/// # Errors
/// A database error.
pub async fn recent(db: &Db, filter: &Filter<'_>) -> Result<Vec<CallLine>, sqlx::Error> {
    let Filter {
        since_ms,
        business,
        to,
        number,
        limit,
    } = *filter;
    // Digits and `+` only (callers check): no LIKE wildcard can come from the filter.
    debug_assert!(number.is_none_or(|n| n.bytes().all(|b| b.is_ascii_digit() || b == b'+')));
    let pattern = number.map(|n| format!("%{n}%"));
    let rows = db
        .run(|pool| {
            sqlx::query(
                "SELECT c.call_sid, c.req_id, c.business_id, c.direction, c.from_number, c.to_number, c.status, c.created_at,
                   (SELECT e.answer_kind FROM call_events e WHERE e.call_id = c.id AND e.kind <> 'status' ORDER BY e.id LIMIT 1) AS answer_kind,
                   (SELECT COUNT(*) FROM call_events e WHERE e.call_id = c.id) AS events,
                   (SELECT COUNT(*) FROM call_events e WHERE e.call_id = c.id AND e.spooled_ms IS NOT NULL) AS spooled
                 FROM calls c
                 WHERE c.created_at >= $1 AND ($2 IS NULL OR c.to_number = $2) AND ($3 IS NULL OR c.business_id = $3)
                   AND ($4 IS NULL OR c.from_number LIKE $4 OR c.to_number LIKE $4)
                 ORDER BY c.created_at DESC, c.id DESC LIMIT $5",
            )
            .bind(since_ms / 1000)
            .bind(to)
            .bind(business)
            .bind(&pattern)
            .bind(limit.clamp(0, MAX_LINES))
            .fetch_all(pool)
        })
        .await?;
    let mut lines = Vec::with_capacity(rows.len());
    for r in &rows {
        let direction: String = r.try_get("direction")?;
        let status: String = r.try_get("status")?;
        let answer: Option<String> = r.try_get("answer_kind")?;
        let events: i64 = r.try_get("events")?;
        let spooled: i64 = r.try_get("spooled")?;
        let verdict = if direction == "outbound" && status == "failed" && events == 0 {
            "failed-outbound"
        } else if answer.as_deref() == Some("unknown_number") {
            "unknown-number"
        } else if spooled > 0 {
            "spooled"
        } else if answer.is_some() {
            "answered"
        } else if direction == "outbound" && status == "requested" {
            "requested"
        } else if direction == "outbound" && events == 0 {
            "placed"
        } else {
            "no-webhook"
        };
        let created: i64 = r.try_get("created_at")?;
        lines.push(CallLine {
            at: rfc3339_ms(created.saturating_mul(1000)),
            call_sid: r.try_get("call_sid")?,
            req_id: r.try_get("req_id")?,
            direction,
            from: r.try_get("from_number")?,
            to: r.try_get("to_number")?,
            business_id: r.try_get("business_id")?,
            status,
            verdict: verdict.to_owned(),
        });
    }
    if to.is_none() && business.is_none() && number.is_none() {
        let refused = db
            .run(|pool| {
                sqlx::query(
                    "SELECT u.call_sid, MIN(u.received_ms) AS first FROM unverified_webhooks u
                     WHERE u.received_ms >= $1 AND NOT EXISTS (SELECT 1 FROM calls c WHERE c.call_sid = u.call_sid)
                     GROUP BY u.call_sid ORDER BY first DESC LIMIT $2",
                )
                .bind(since_ms)
                .bind(limit.clamp(0, MAX_LINES))
                .fetch_all(pool)
            })
            .await?;
        for r in &refused {
            lines.push(CallLine {
                at: rfc3339_ms(r.try_get("first")?),
                call_sid: r.try_get("call_sid")?,
                req_id: None,
                direction: "unknown".to_owned(),
                from: "-".to_owned(),
                to: "-".to_owned(),
                business_id: None,
                status: "refused".to_owned(),
                verdict: "refused".to_owned(),
            });
        }
        lines.sort_by(|a, b| b.at.cmp(&a.at));
        lines.truncate(usize::try_from(limit).unwrap_or(0));
    }
    Ok(lines)
}

async fn run_calls(ctx: CommandContext) -> Result<(), String> {
    let cli = CallsCli::from_arg_matches(&ctx.matches).map_err(|e| e.to_string().trim_end().to_owned())?;
    let since_ms = now_ms().saturating_sub(i64::try_from(cli.since.as_millis()).unwrap_or(i64::MAX));
    let filter = Filter {
        to: cli.to.as_deref(),
        ..Filter::since(since_ms)
    };
    let mut lines = recent(&ctx.db, &filter)
        .await
        .map_err(|e| format!("the database cannot be read: {e}"))?;
    if let Some(status) = &cli.status {
        lines.retain(|l| &l.status == status || &l.verdict == status);
    }
    match cli.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&lines).map_err(|e| e.to_string())?),
        Format::Text => {
            if lines.is_empty() {
                println!("no calls since {}", rfc3339_ms(since_ms));
            }
            for l in &lines {
                println!(
                    "{}  {:<15} {:<8} {:<16} -> {:<16} {:<12} {:<34} {}",
                    l.at,
                    l.verdict,
                    l.direction,
                    l.from,
                    l.to,
                    l.status,
                    l.call_sid.as_deref().unwrap_or("-"),
                    l.req_id.as_deref().map_or(String::new(), |r| format!("REQ={r}")),
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_number_and_a_unit_and_refuses_the_rest() {
        assert_eq!(parse_since("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_since("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_since("7d"), Ok(Duration::from_secs(7 * 86_400)));
        for bad in ["", "h", "1", "1w", "-1h", "1.5h", "١h"] {
            assert!(parse_since(bad).is_err(), "{bad:?}");
        }
        assert!(parse_since("99999999999999999999d").unwrap_err().contains("expected"));
        assert!(parse_since("3651d").unwrap_err().contains("too far back"));
        assert!(
            parse_since("18446744073709551615d")
                .unwrap_err()
                .contains("too far back")
        );
    }
}
