//! The tracing subscriber and where its lines go: the console plus daily rolling files, written by
//! one lossless non-blocking writer. The line formats are [`crate::format`]'s.

use std::fmt;
use std::io::{BufWriter, Write as _};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

pub use crate::format::{JsonFormat, LineTime, TextFormat};

/// Target of the `[BOOT]`/`[SHUTDOWN]` lines. Always logged at `info`, whatever the filter says:
/// a refused boot must never be silent.
pub const BOOT_TARGET: &str = "callplane::boot";
/// Target of the call trace lines (`[TWILIO][…]`, `[OUTBOUND][…]`). Always logged at `info`.
pub const TRACE_TARGET: &str = "callplane::trace";

/// Prefix of the rolling log files: `callplane.YYYY-MM-DD.log`.
pub const LOG_FILE_PREFIX: &str = "callplane";

/// How many daily files are kept.
pub const LOG_FILES_KEPT: usize = 14;

/// Line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// `timestamp LEVEL message key=value…` — the literal trace prefixes lead the message.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `message`, the fields as keys, and the
    /// request's fields ([`crate::RequestScope`]) under `span`.
    Json,
}

/// Where console output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Console {
    /// Standard output (the server).
    Stdout,
    /// Standard error (commands whose standard output is their result, such as `check --format json`).
    Stderr,
    /// No console output.
    Off,
}

/// Everything [`init`] needs.
#[derive(Debug, Clone)]
pub struct LogSettings {
    /// Line format for console and files.
    pub format: LogFormat,
    /// An `EnvFilter` directive such as `info` or `info,sqlx=warn`.
    pub filter: String,
    /// Directory of the daily rolling files; `None` writes no files.
    pub dir: Option<PathBuf>,
    /// Console destination.
    pub console: Console,
}

/// Errors setting up logging.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The filter directive does not parse.
    #[error("invalid log filter {filter:?}: {message}")]
    Filter {
        /// The directive.
        filter: String,
        /// Why it does not parse.
        message: String,
    },
    /// The log directory cannot be created or written.
    #[error("log directory {dir} is not writable: {message}")]
    LogDir {
        /// The directory.
        dir: String,
        /// The underlying error.
        message: String,
    },
    /// A global subscriber is already installed.
    #[error("a tracing subscriber is already installed: {0}")]
    AlreadyInstalled(String),
}

/// Keeps the background writers alive; dropping it flushes every buffered line. Hold it until the
/// process exits (return it from `main`'s scope, never `std::process::exit` past it).
#[must_use = "dropping the guard stops the log writers"]
pub struct LogGuard {
    _guards: Vec<WorkerGuard>,
}

impl fmt::Debug for LogGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogGuard")
            .field("writers", &self._guards.len())
            .finish()
    }
}

/// Validates an `EnvFilter` directive without installing anything.
///
/// # Errors
/// [`TelemetryError::Filter`] naming the directive.
pub fn parse_filter(filter: &str) -> Result<EnvFilter, TelemetryError> {
    EnvFilter::builder().parse(filter).map_err(|e| TelemetryError::Filter {
        filter: filter.to_owned(),
        message: e.to_string(),
    })
}

/// Checks that the log directory can be written, creating it if it does not exist (what `serve`
/// does before it opens the log file).
///
/// # Errors
/// [`TelemetryError::LogDir`] naming the directory.
pub fn probe_log_dir(dir: &std::path::Path) -> Result<(), TelemetryError> {
    std::fs::create_dir_all(dir).map_err(|e| log_dir_error(dir, &e))?;
    probe_writable(dir).map_err(|e| log_dir_error(dir, &e))
}

/// Checks, without creating it, that the log directory could be used ([`check_dir_writable`]).
///
/// # Errors
/// [`TelemetryError::LogDir`] naming the directory.
pub fn check_log_dir(dir: &std::path::Path) -> Result<(), TelemetryError> {
    check_dir_writable(dir).map_err(|e| log_dir_error(dir, &e))
}

/// Checks, without creating it, that `dir` could be written: it is a writable directory, or it
/// does not exist yet and its closest existing ancestor is a writable directory. (`check` leaves
/// the disk as it found it; the probe file it may write is removed at once.)
///
/// # Errors
/// Why it could not be written.
pub fn check_dir_writable(dir: &std::path::Path) -> std::io::Result<()> {
    let existing =
        dir.ancestors()
            .find(|a| a.as_os_str().is_empty() || a.exists())
            .map_or(std::path::Path::new("/"), |a| {
                if a.as_os_str().is_empty() {
                    std::path::Path::new(".")
                } else {
                    a
                }
            });
    if !existing.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            format!("{} is not a directory", existing.display()),
        ));
    }
    probe_writable(existing)
}

fn probe_writable(dir: &std::path::Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".write-probe-{}", std::process::id()));
    std::fs::write(&probe, b"probe")?;
    std::fs::remove_file(&probe)
}

fn log_dir_error(dir: &std::path::Path, e: &std::io::Error) -> TelemetryError {
    TelemetryError::LogDir {
        dir: dir.display().to_string(),
        message: e.to_string(),
    }
}

/// Installs the global subscriber.
///
/// # Errors
/// A bad filter, an unwritable log directory, or a subscriber already installed.
pub fn init(settings: &LogSettings) -> Result<LogGuard, TelemetryError> {
    let mut filter = parse_filter(&settings.filter)?;
    for target in [BOOT_TARGET, TRACE_TARGET] {
        filter = filter.add_directive(format!("{target}=info").parse().map_err(
            |e: tracing_subscriber::filter::ParseError| TelemetryError::Filter {
                filter: target.to_owned(),
                message: e.to_string(),
            },
        )?);
    }
    let console: Option<Box<dyn std::io::Write + Send>> = match settings.console {
        Console::Stdout => Some(Box::new(std::io::stdout())),
        Console::Stderr => Some(Box::new(std::io::stderr())),
        Console::Off => None,
    };
    let file = match &settings.dir {
        Some(dir) => {
            probe_log_dir(dir)?;
            let appender = RollingFileAppender::builder()
                .rotation(Rotation::DAILY)
                .filename_prefix(LOG_FILE_PREFIX)
                .filename_suffix("log")
                .max_log_files(LOG_FILES_KEPT)
                .build(dir)
                .map_err(|e| TelemetryError::LogDir {
                    dir: dir.display().to_string(),
                    message: e.to_string(),
                })?;
            Some(CountedWrites(appender))
        }
        None => None,
    };
    let mut guards = Vec::new();
    let layers = (console.is_some() || file.is_some()).then(|| {
        let (writer, guard) = NonBlockingBuilder::default()
            .lossy(false)
            .buffered_lines_limit(QUEUED_LINES)
            .finish(Sinks::new(console, file));
        guards.push(guard);
        layer(settings.format, writer)
    });

    tracing_subscriber::registry()
        .with(layers)
        .with(filter)
        .try_init()
        .map_err(|e| TelemetryError::AlreadyInstalled(e.to_string()))?;
    Ok(LogGuard { _guards: guards })
}

/// Failed writes to the log file (disk full, file system gone read-only), for
/// `callplane_log_write_errors_total`. The service keeps answering when its log file fails; this
/// counter and one line on standard error say so.
pub fn write_errors() -> &'static Counter {
    static ERRORS: std::sync::LazyLock<Counter> = std::sync::LazyLock::new(Counter::default);
    &ERRORS
}

/// The log file writer, counting its failures.
struct CountedWrites<W>(W);

impl<W: std::io::Write> CountedWrites<W> {
    fn count<T>(result: std::io::Result<T>) -> std::io::Result<T> {
        if let Err(error) = &result
            && write_errors().inc() == 0
        {
            // Not through tracing: that would write to the failing file again.
            let _ = writeln!(
                std::io::stderr(),
                "[LOG] writing the log file failed: {error}; lines are missing from the file while it fails (counted in callplane_log_write_errors_total; the console, if on, still has them)"
            );
        }
        result
    }
}

impl<W: std::io::Write> std::io::Write for CountedWrites<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Self::count(self.0.write(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Self::count(self.0.flush())
    }
}

/// Lines waiting for the log writer thread. When the queue is full the logging thread waits (a
/// line is never dropped); 16,384 lines absorb bursts. The queue is allocated up front, so it is
/// kept well below the library's default of 128,000.
const QUEUED_LINES: usize = 16_384;

/// Under load, the least time between two flushes of the log writer thread (see [`Sinks`]).
const PACE: Duration = Duration::from_millis(1);

/// What the one log writer thread writes every line to: the console and the file, each formatted
/// once by the logging thread and handed over once.
///
/// - Each sink is buffered: the writer thread takes every line queued, then flushes, so a burst
///   costs one `write(2)` per sink instead of one per line, and nothing waits in a buffer once
///   the queue is empty.
/// - A failing sink never stops the other: file errors are counted ([`write_errors`]), console
///   errors (a closed terminal) are dropped.
/// - Under load the thread paces itself: when it flushed less than [`PACE`] ago, it sleeps for
///   [`PACE`] after this flush. Lines then queue up meanwhile and the request threads hand them
///   over without waking it for each one (a wake-up is a system call and a context switch per
///   line). A quiet service still writes each line at once.
struct Sinks {
    console: Option<BufWriter<Box<dyn std::io::Write + Send>>>,
    file: Option<BufWriter<CountedWrites<RollingFileAppender>>>,
    last_flush: Instant,
}

impl Sinks {
    fn new(console: Option<Box<dyn std::io::Write + Send>>, file: Option<CountedWrites<RollingFileAppender>>) -> Self {
        const BUFFER: usize = 64 * 1024;
        Self {
            console: console.map(|c| BufWriter::with_capacity(BUFFER, c)),
            file: file.map(|f| BufWriter::with_capacity(BUFFER, f)),
            last_flush: Instant::now(),
        }
    }
}

impl std::io::Write for Sinks {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(console) = &mut self.console {
            let _ = console.write_all(buf);
        }
        if let Some(file) = &mut self.file {
            let _ = file.write_all(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if let Some(console) = &mut self.console {
            let _ = console.flush();
        }
        if let Some(file) = &mut self.file {
            let _ = file.flush();
        }
        if self.last_flush.elapsed() < PACE {
            std::thread::sleep(PACE);
        }
        self.last_flush = Instant::now();
        Ok(())
    }
}

fn layer<W>(format: LogFormat, writer: W) -> Box<dyn Layer<Registry> + Send + Sync>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let base = tracing_subscriber::fmt::layer().with_ansi(false).with_writer(writer);
    match format {
        LogFormat::Text => base.event_format(TextFormat).boxed(),
        LogFormat::Json => base.event_format(JsonFormat).boxed(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::format::Writer;
    use tracing_subscriber::fmt::time::FormatTime;

    use super::*;
    use crate::format::write_timestamp;
    use crate::request::RequestScope;

    fn timestamp(secs: u64, micros: u32) -> String {
        let mut out = String::new();
        write_timestamp(Duration::new(secs, micros * 1000), &mut out).unwrap();
        out
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        assert_eq!(timestamp(1_709_251_199, 1), "2024-02-29T23:59:59.000001Z");
        assert_eq!(
            timestamp(1_709_251_199, 999_999),
            "2024-02-29T23:59:59.999999Z",
            "same second, cached date"
        );
        assert_eq!(
            timestamp(1_709_251_200, 0),
            "2024-03-01T00:00:00.000000Z",
            "the next second"
        );
        assert_eq!(timestamp(0, 123_456), "1970-01-01T00:00:00.123456Z");
        assert_eq!(timestamp(1_764_118_899, 4_142), "2025-11-26T01:01:39.004142Z");
    }

    #[test]
    fn line_time_writes_what_tracing_subscribers_system_time_writes() {
        use tracing_subscriber::fmt::time::SystemTime;
        for _ in 0..100 {
            let (mut ours, mut theirs) = (String::new(), String::new());
            LineTime.format_time(&mut Writer::new(&mut ours)).unwrap();
            SystemTime.format_time(&mut Writer::new(&mut theirs)).unwrap();
            // Taken a moment apart: retry when a second boundary fell between them.
            if ours[..19] == theirs[..19] {
                assert_eq!(ours.len(), theirs.len(), "{ours} against {theirs}");
                assert_eq!((&ours[19..20], &ours[26..]), (".", "Z"), "{ours}");
                return;
            }
        }
        panic!("the two clocks never agreed on the second");
    }

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn capture(format: LogFormat, emit: impl FnOnce()) -> String {
        let buffer = Buffer::default();
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::registry().with(layer(format, move || sink.clone()));
        tracing::subscriber::with_default(subscriber, emit);
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    fn scope(id: &str, origin: Option<(&str, crate::Scheme)>) -> RequestScope {
        let origin = origin.map(|(ip, scheme)| crate::ClientOrigin {
            ip: ip.parse().unwrap(),
            scheme,
        });
        RequestScope::new(crate::RequestId::from_header(id).unwrap(), origin)
    }

    #[test]
    fn text_lines_keep_the_literal_prefix_and_bare_values() {
        let out = capture(LogFormat::Text, || {
            scope("r-1", None).in_scope(|| {
                let path = "/webhook/incoming_call";
                tracing::info!(path = %path, call_sid = "CA123", signature_present = true, "[TWILIO][INBOUND] hit");
            });
        });
        assert!(
            out.contains(" INFO [TWILIO][INBOUND] hit path=/webhook/incoming_call call_sid=CA123 signature_present=true request_id=r-1\n"),
            "{out}"
        );
    }

    #[test]
    fn a_requests_lines_end_with_its_fields_and_only_its_lines() {
        let out = capture(LogFormat::Text, || {
            scope("r-2", Some(("10.0.0.7", crate::Scheme::Https))).in_scope(|| {
                tracing::info!(note = "two words", "[HTTP] request");
                tracing::info!("[HTTP] again");
            });
            tracing::info!("[BOOT] outside");
        });
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(
            lines[0].ends_with(r#" INFO [HTTP] request note="two words" request_id=r-2 client=10.0.0.7 scheme=https"#),
            "{out}"
        );
        assert!(
            lines[1].ends_with(" INFO [HTTP] again request_id=r-2 client=10.0.0.7 scheme=https"),
            "{out}"
        );
        assert!(lines[2].ends_with(" INFO [BOOT] outside"), "{out}");
    }

    #[test]
    fn invisible_characters_in_fields_are_escaped_in_text() {
        let out = capture(LogFormat::Text, || {
            tracing::info!(from = "x\u{3164}to=+97250", name = "\u{202E}evil", "[HTTP] request");
        });
        assert!(
            out.contains(r#"from="x\u{3164}to=+97250" name="\u{202e}evil""#),
            "{out}"
        );
    }

    #[test]
    fn fields_embedded_in_the_message_are_not_repeated_in_text() {
        let out = capture(LogFormat::Text, || {
            tracing::info!(
                plugin = "twilio",
                routes = 3,
                "[BOOT] ✅ plugin=twilio routes=3 registered (calls)"
            );
        });
        assert!(
            out.trim_end()
                .ends_with("INFO [BOOT] ✅ plugin=twilio routes=3 registered (calls)"),
            "{out}"
        );
    }

    #[test]
    fn only_fields_the_message_really_shows_are_left_out() {
        let out = capture(LogFormat::Text, || {
            tracing::error!(
                id = "CP001",
                plugin = "twilio",
                "[BOOT] ❌ [BOOT][FATAL] CP001 critical plugin 'twilio' is missing"
            );
        });
        assert!(
            out.trim_end()
                .ends_with("[BOOT][FATAL] CP001 critical plugin 'twilio' is missing"),
            "{out}"
        );
        let out = capture(LogFormat::Text, || {
            tracing::info!(id = 7, lead = "4", "call lead_id=42 ok")
        });
        assert!(out.trim_end().ends_with("call lead_id=42 ok id=7 lead=4"), "{out}");
    }

    #[test]
    fn a_field_recorded_before_the_message_is_printed_not_lost() {
        // The macros record the message first; a field that comes before it cannot be checked
        // against it, so it is kept even though the message shows it.
        let out = capture(LogFormat::Text, || {
            tracing::info!(id = 7, message = "id=7 done", lead = 4)
        });
        assert!(out.trim_end().ends_with(" INFO id=7 done id=7 lead=4"), "{out}");
    }

    #[test]
    fn boot_and_trace_lines_survive_any_filter() {
        // `init` installs a global subscriber once per process; the directive logic is checked here.
        let mut filter = parse_filter("off").unwrap();
        for target in [BOOT_TARGET, TRACE_TARGET] {
            filter = filter.add_directive(format!("{target}=info").parse().unwrap());
        }
        let text = filter.to_string();
        assert!(
            text.contains("callplane::boot=info") && text.contains("callplane::trace=info"),
            "{text}"
        );
    }

    #[test]
    fn values_with_spaces_are_quoted() {
        let out = capture(LogFormat::Text, || {
            tracing::warn!(reason = "no such number", empty = "", "x")
        });
        assert!(out.contains(r#"x reason="no such number" empty="""#), "{out}");
    }

    #[test]
    fn json_lines_carry_message_fields_and_span() {
        let out = capture(LogFormat::Json, || {
            scope("r-2", Some(("2001:db8::7", crate::Scheme::Http))).in_scope(|| {
                tracing::info!(plugin = "twilio", routes = 3, "[BOOT] ✅ plugin=twilio routes=3");
            });
            tracing::warn!(to = "+1555\n{\"x\"", "[TWILIO][INBOUND] unknown called number\r\n");
        });
        let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2, "one line per event, line breaks escaped: {out}");
        assert_eq!(lines[0]["message"], "[BOOT] ✅ plugin=twilio routes=3");
        assert_eq!(lines[0]["level"], "INFO");
        assert_eq!(lines[0]["plugin"], "twilio");
        assert_eq!(lines[0]["routes"], 3);
        assert_eq!(
            lines[0]["span"],
            serde_json::json!({"request_id": "r-2", "client": "2001:db8::7", "scheme": "http"})
        );
        assert_eq!(lines[1]["to"], "+1555\n{\"x\"");
        assert_eq!(lines[1]["message"], "[TWILIO][INBOUND] unknown called number\r\n");
        assert!(lines[1].get("span").is_none(), "{out}");
    }

    #[test]
    fn json_lines_are_what_tracing_subscribers_flattened_json_writes() {
        fn emit() {
            let ip: std::net::IpAddr = [10, 0, 0, 7].into();
            tracing::warn!(
                target: TRACE_TARGET,
                call_sid = "CA1",
                sequence = 3_u64,
                delta = -2_i64,
                ok = true,
                ratio = 0.5,
                client = %ip,
                shown = ?Some("x"),
                "[TWILIO][STATUS] hit {}", "now"
            );
        }
        let ours = capture(LogFormat::Json, emit);
        let buffer = Buffer::default();
        let sink = buffer.clone();
        let theirs = tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(move || sink.clone());
        tracing::subscriber::with_default(tracing_subscriber::registry().with(theirs), emit);
        let theirs = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let parse = |line: &str| {
            let mut value: serde_json::Value = serde_json::from_str(line).unwrap();
            let stamp = value.as_object_mut().unwrap().remove("timestamp").unwrap();
            assert_eq!(stamp.as_str().unwrap().len(), 27, "{line}");
            value
        };
        assert_eq!(parse(&ours), parse(&theirs), "{ours}{theirs}");
    }

    #[test]
    fn bad_filters_and_unwritable_dirs_are_reported() {
        assert!(matches!(parse_filter("info,[[["), Err(TelemetryError::Filter { .. })));
        let file = tempfile::NamedTempFile::new().unwrap();
        let err = probe_log_dir(&file.path().join("logs")).unwrap_err();
        assert!(matches!(err, TelemetryError::LogDir { .. }), "{err}");
        let err = check_log_dir(&file.path().join("logs")).unwrap_err();
        assert!(matches!(err, TelemetryError::LogDir { .. }), "{err}");
        let dir = tempfile::tempdir().unwrap();
        check_log_dir(&dir.path().join("data/logs")).unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "checked, not created"
        );
    }
}
