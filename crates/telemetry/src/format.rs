//! The two line formats: text (for people and grep) and JSON (for log shippers), the cached
//! timestamp both start with, and the field collection that leaves out what the message already
//! says.

use std::fmt::{self, Write as _};
use std::ops::Range;
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::instance::instance_id;
use crate::request::RequestScope;
use crate::value::{needs_quotes, quote};

/// The text line:
/// `2026-11-25T17:00:00.123456Z  INFO message key=value… instance=… request_id=… client=… scheme=…`.
///
/// Values print bare unless [`needs_quotes`] says otherwise (then quoted and escaped), so the
/// contract's literal lines (`[TWILIO][INBOUND] hit path=/webhook/incoming_call call_sid=CA…`)
/// come out exactly and still grep. A field the message already shows is not repeated — `key=`
/// starts a word of the message, or the value itself is a word of it — so boot lines can spell
/// out their fields in the contract's wording while the JSON format still gets them as keys.
/// The line ends with the instance id ([`crate::instance`]) and its request's fields
/// ([`RequestScope`]), if it was logged by a request.
#[derive(Debug, Clone, Copy)]
pub struct TextFormat;

impl<S, N> FormatEvent<S, N> for TextFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        LineTime.format_time(&mut writer)?;
        writer.write_str(match *event.metadata().level() {
            Level::ERROR => " ERROR ",
            Level::WARN => "  WARN ",
            Level::INFO => "  INFO ",
            Level::DEBUG => " DEBUG ",
            Level::TRACE => " TRACE ",
        })?;
        let mut fields = FieldCollector::default();
        event.record(&mut fields);
        writer.write_str(&fields.message)?;
        for (name, value) in fields.pairs() {
            writer.write_char(' ')?;
            writer.write_str(name)?;
            writer.write_char('=')?;
            writer.write_str(value)?;
        }
        if let Some(instance) = instance_id() {
            writer.write_str(" instance=")?;
            writer.write_str(instance)?;
        }
        RequestScope::with_current(|scope| writer.write_str(scope.text())).unwrap_or(Ok(()))?;
        writeln!(writer)
    }
}

/// The JSON line: one object with `timestamp`, `level`, the message and fields as keys (as
/// `tracing_subscriber`'s flattened JSON writes them), `target`, `instance`, and the request's fields
/// ([`RequestScope`]) under `span`, if it was logged by a request.
#[derive(Debug, Clone, Copy)]
pub struct JsonFormat;

impl<S, N> FormatEvent<S, N> for JsonFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        use serde::ser::{SerializeMap as _, Serializer as _};

        let mut timestamp = String::with_capacity(32);
        LineTime.format_time(&mut Writer::new(&mut timestamp))?;
        let meta = event.metadata();
        let mut line = Vec::with_capacity(512);
        let mut serializer = serde_json::Serializer::new(&mut line);
        let result = (|| {
            let mut map = serializer.serialize_map(None)?;
            map.serialize_entry("timestamp", &timestamp)?;
            map.serialize_entry("level", meta.level().as_str())?;
            let mut fields = tracing_serde::SerdeMapVisitor::new(map);
            event.record(&mut fields);
            let mut map = fields.take_serializer()?;
            map.serialize_entry("target", meta.target())?;
            if let Some(instance) = instance_id() {
                map.serialize_entry("instance", instance)?;
            }
            RequestScope::with_current(|scope| map.serialize_entry("span", scope)).unwrap_or(Ok(()))?;
            map.end()
        })();
        result.map_err(|_| fmt::Error)?;
        writer.write_str(std::str::from_utf8(&line).map_err(|_| fmt::Error)?)?;
        writeln!(writer)
    }
}

/// Each line's timestamp, as `tracing_subscriber`'s `SystemTime` writes it
/// (`2026-11-26T01:01:39.004142Z`), with the date and time of day formatted once per second and
/// thread rather than for every line.
#[derive(Debug, Clone, Copy, Default)]
pub struct LineTime;

impl FormatTime for LineTime {
    fn format_time(&self, writer: &mut Writer<'_>) -> fmt::Result {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        write_timestamp(since, writer)
    }
}

/// Writes the instant `since` the Unix epoch as [`LineTime`] does.
pub(crate) fn write_timestamp(since: Duration, writer: &mut impl fmt::Write) -> fmt::Result {
    thread_local! {
        /// The second last formatted, and its text up to the seconds.
        static SECOND: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let secs = since.as_secs();
    SECOND.with_borrow_mut(|(at, text)| {
        if *at != secs {
            let t = i64::try_from(secs)
                .ok()
                .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
            text.clear();
            write!(
                text,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )?;
            *at = secs;
        }
        writer.write_str(text)
    })?;
    let mut fraction = *b".000000Z";
    let mut micros = since.subsec_micros();
    for digit in fraction[1..7].iter_mut().rev() {
        *digit = b'0' + u8::try_from(micros % 10).unwrap_or(0);
        micros /= 10;
    }
    writer.write_str(std::str::from_utf8(&fraction).map_err(|_| fmt::Error)?)
}

/// Whether `message` already shows the field: `name=` at the start of a word (`equals` holds
/// where the message's `=` signs are), or `value` as a whole word (bounded by non-alphanumeric
/// characters).
fn shown_in(message: &str, equals: &[usize], name: &str, value: &str) -> bool {
    let boundary = |c: Option<char>| c.is_none_or(|c| !c.is_alphanumeric() && c != '_');
    let key = equals.iter().any(|&at| {
        message[..at]
            .strip_suffix(name)
            .is_some_and(|before| boundary(before.chars().next_back()))
    });
    key || (value.len() > 1
        && message.match_indices(value).any(|(at, _)| {
            boundary(message[..at].chars().next_back()) && boundary(message[at + value.len()..].chars().next())
        }))
}

/// An event's message and the fields it does not already show ([`shown_in`]). The values share one
/// buffer (bare, or quoted where [`needs_quotes`]), so a line costs the same few allocations
/// however many fields it has.
///
/// The `tracing` macros record the message first, so each later field is checked against it as
/// it arrives, and one the message shows is not even copied. (A field recorded before the message
/// is kept: printed twice rather than lost.)
struct FieldCollector {
    message: String,
    /// Where the message's `=` signs are: found once, then checked for every field.
    equals: Vec<usize>,
    values: String,
    /// Each field's name and where its value is in `values`.
    pairs: Vec<(&'static str, Range<usize>)>,
}

impl Default for FieldCollector {
    /// Room for a typical line up front, so it is not grown a few bytes at a time.
    fn default() -> Self {
        Self {
            message: String::with_capacity(256),
            equals: Vec::with_capacity(8),
            values: String::with_capacity(128),
            pairs: Vec::with_capacity(8),
        }
    }
}

impl FieldCollector {
    /// Notes where the message, now complete, has its `=` signs.
    fn message_recorded(&mut self) {
        self.equals.clear();
        self.equals.extend(self.message.match_indices('=').map(|(at, _)| at));
    }

    /// Whether the message shows the field.
    fn shown(&self, name: &str, value: &str) -> bool {
        shown_in(&self.message, &self.equals, name, value)
    }

    /// Ends the value written to `values` from `start` on, quoting it when needed.
    fn close(&mut self, name: &'static str, start: usize) {
        let value = &self.values[start..];
        if needs_quotes(value) {
            let mut quoted = String::new();
            quote(value, &mut quoted);
            self.values.truncate(start);
            self.values.push_str(&quoted);
        }
        self.pairs.push((name, start..self.values.len()));
    }

    fn pairs(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.pairs.iter().map(|(name, at)| (*name, &self.values[at.clone()]))
    }
}

impl Visit for FieldCollector {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
            self.message_recorded();
        } else if !self.shown(field.name(), value) {
            let start = self.values.len();
            self.values.push_str(value);
            self.close(field.name(), start);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
            self.message_recorded();
        } else {
            let start = self.values.len();
            let _ = write!(self.values, "{value:?}");
            if self.shown(field.name(), &self.values[start..]) {
                self.values.truncate(start);
            } else {
                self.close(field.name(), start);
            }
        }
    }
}
