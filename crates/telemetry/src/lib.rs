//! `callplane-telemetry`: everything an operator reads.
//!
//! * [`logging`]: the tracing subscriber — an `EnvFilter`, text or JSON lines on the console and in
//!   daily rolling files written by a **lossless** non-blocking writer (a full buffer makes the
//!   logging thread wait; a line is never dropped). The returned [`LogGuard`] flushes on drop and
//!   must live as long as the process.
//! * [`format`]: the text and JSON line formats.
//! * [`instance`]: the instance id every line names (`instance=…`).
//! * [`request`]: the per-request middleware — a request id (a fresh UUID, or the incoming
//!   `X-Request-Id` when the peer is a trusted proxy) echoed in the response and carried by the
//!   request's [`RequestScope`] into every log line of that request together with the client's
//!   address and scheme under the trusted-proxy rules (`X-Forwarded-For`/`-Proto` or
//!   `Forwarded`), and the request metrics.
//! * [`proxy`]: [`TrustedProxies`], the CIDRs whose forwarding headers are believed.
//! * [`metrics`]: HTTP metrics registered in a Prometheus registry.
//! * [`value`]: how values from outside are written into a text line (quoted, escaped, bounded).
//!
//! Architecture invariant: nothing here knows about plugins or the database.

pub mod format;
pub mod instance;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod request;
pub mod value;

pub use instance::{hostname, instance_id, set_instance_id};
pub use logging::{BOOT_TARGET, Console, LogFormat, LogGuard, LogSettings, TRACE_TARGET, TelemetryError};
pub use metrics::HttpMetrics;
pub use proxy::{ClientOrigin, Scheme, TrustedProxies};
pub use request::{HttpTelemetry, RequestId, RequestScope, current_request_id, request_context};
pub use value::needs_quotes;
