//! `GET /ws/twilio/media`: Twilio's Media Stream in, the business's media server (the agent) out.
//!
//! The upgrade has passed the Twilio signature check (which logged the `hit` line) before the
//! handler runs. Then, on the worker that took the socket:
//!
//! 1. `connected` and `start` are read (within the idle timeout); `start` must name a call this
//!    deployment answered with a stream for that business ([`CallLedger::stream_target`]), else
//!    the socket is closed with the reason;
//! 2. the agent's socket is opened within `connect_timeout_ms`; when it cannot be, Twilio's socket
//!    is closed cleanly so that the caller hears the `<Say>` after `</Connect>`;
//! 3. frames are relayed both ways through a bounded [`Queue`] each: Twilio's six message kinds to
//!    the agent, the agent's `media`, `mark` and `clear` to Twilio (anything else would end the
//!    stream at Twilio: dropped and counted); when a side is slow its oldest media is dropped,
//!    never a `mark` or a `stop`;
//! 4. the first side to end ends both: `stop` from Twilio (passed on, then the agent's socket is
//!    closed), Twilio gone or silent for `idle_timeout_secs`, the agent closing or failing (Twilio's
//!    socket closed cleanly: the fallback plays).
//!
//! Each step logs its `[TWILIO][STREAM]` line and is added to the call's timeline.

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_tls::connect::{ConnectError, ConnectInfo, Connection};
use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{CloseCode, CloseReason, Message, MessageStream, Session};
use awc::BoxedSocket;
use awc::http::Uri;
use awc::ws::{Codec, Frame};
use bytestring::ByteString;
use callplane_plugin_api::telemetry::value::{shown, truncated};
use callplane_plugin_api::telemetry::{TRACE_TARGET, current_request_id};
use callplane_plugin_api::timestamps::now_ms;
use callplane_plugin_api::{ApiError, CallLedger, CallNote, StreamTarget, Wanted};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::time::timeout;

use crate::config::RelayConfig;
use crate::messages::{Event, Start};
use crate::metrics::{Frames, Metrics};
use crate::queue::{Pushed, Queue};

/// The relay's route.
pub const PATH: &str = "/ws/twilio/media";
/// The largest frame accepted from either side (a Twilio media message is about 300 bytes).
pub const MAX_FRAME: usize = 64 * 1024;
/// How long a close may take to reach Twilio.
const FLUSH: Duration = Duration::from_secs(1);
/// How long a trace value may be, in characters.
const MAX_VALUE: usize = 64;

/// The relay's state.
pub struct RelayState {
    /// Its settings.
    pub config: RelayConfig,
    /// The calls, as the twilio plugin keeps them.
    pub ledger: Wanted<dyn CallLedger>,
    /// Its series.
    pub metrics: Metrics,
    /// This instance, on every timeline note.
    pub instance_id: String,
}

impl std::fmt::Debug for RelayState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayState")
            .field("config", &self.config)
            .field("instance_id", &self.instance_id)
            .finish_non_exhaustive()
    }
}

/// A value as trace lines show it: `-` when empty, cut, quoted when it would break the line.
pub(crate) fn value(v: &str) -> String {
    if v.is_empty() {
        return "-".to_owned();
    }
    shown(&truncated(v, MAX_VALUE)).into_owned()
}

/// A media server's URL as logs and timelines show it: scheme, host, port and path (a query or
/// credentials may carry a token).
pub fn agent_shown(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}{}{}",
            u.scheme(),
            u.host_str().unwrap_or("-"),
            u.port().map_or(String::new(), |p| format!(":{p}")),
            u.path()
        ),
        Err(_) => "(not a URL)".to_owned(),
    }
}

/// The upgrade: refused with 503 past `max_streams`, with 400 when it is not a WebSocket handshake.
pub async fn upgrade(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<RelayState>,
) -> Result<HttpResponse, ApiError> {
    let active = usize::try_from(state.metrics.active()).unwrap_or(0);
    if active >= state.config.max_streams {
        tracing::warn!(target: TRACE_TARGET, active, "[TWILIO][STREAM] refused: {active} streams are relayed already (max_streams); answered 503");
        state.metrics.closed("refused");
        return Err(ApiError::unavailable(
            "this instance relays as many streams as it may",
            1,
        ));
    }
    let (response, session, stream) =
        actix_ws::handle(&req, body).map_err(|e| ApiError::bad_request(format!("not a WebSocket handshake: {e}")))?;
    let request_id = current_request_id().map(|id| id.to_string());
    actix_web::rt::spawn(relay(
        state.into_inner(),
        session,
        stream.max_frame_size(MAX_FRAME),
        request_id,
    ));
    Ok(response)
}

/// One stream, as its trace lines and timeline tell it.
struct Stream {
    state: Arc<RelayState>,
    call_sid: String,
    request_id: Option<String>,
    opened: Instant,
    frames_in: Cell<u64>,
    frames_out: Cell<u64>,
    dropped: Cell<u64>,
    refused: Cell<u64>,
}

impl Stream {
    fn note(&self, step: &str, detail: String) {
        if let Some(ledger) = self.state.ledger.get() {
            ledger.note(CallNote {
                call_sid: self.call_sid.clone(),
                at_ms: now_ms(),
                source: "stream",
                step: step.to_owned(),
                detail,
                instance_id: self.state.instance_id.clone(),
                request_id: self.request_id.clone(),
            });
        }
    }

    /// The `stop` line, the timeline's last step and the outcome's count.
    fn stopped(&self, outcome: &'static str, reason: &str) {
        let detail = format!(
            "frames_in={} frames_out={} dropped={} refused={} duration_ms={} reason={outcome}",
            self.frames_in.get(),
            self.frames_out.get(),
            self.dropped.get(),
            self.refused.get(),
            self.opened.elapsed().as_millis()
        );
        let call_sid = &self.call_sid;
        tracing::info!(target: TRACE_TARGET, call_sid = %call_sid, outcome, "[TWILIO][STREAM] stop {detail} call_sid={call_sid} ({reason})");
        self.note("stop", detail);
        self.state.metrics.closed(outcome);
    }
}

async fn close(session: &Session, code: CloseCode, description: &str) {
    let reason = CloseReason {
        code,
        description: Some(description.to_owned()),
    };
    let _ = timeout(FLUSH, session.clone().close(Some(reason))).await;
}

/// Reads Twilio's socket up to `start`, keeping what came before it for the agent.
async fn read_start(
    twilio: &mut MessageStream,
    session: &mut Session,
    idle: Duration,
    early: &mut Vec<ByteString>,
) -> Result<(Start, ByteString), String> {
    loop {
        let message = match timeout(idle, twilio.recv()).await {
            Err(_) => return Err(format!("no start message within {} s", idle.as_secs())),
            Ok(None) => return Err("Twilio closed the socket before start".to_owned()),
            Ok(Some(Err(e))) => return Err(format!("protocol error before start: {e}")),
            Ok(Some(Ok(message))) => message,
        };
        match message {
            Message::Text(text) => match Event::of(&text) {
                Event::Connected => early.push(text),
                Event::Start => {
                    let start: Start =
                        serde_json::from_str(&text).map_err(|e| format!("unreadable start message: {e}"))?;
                    return Ok((start, text));
                }
                other => return Err(format!("{other:?} before start")),
            },
            Message::Ping(bytes) => {
                let _ = session.pong(&bytes).await;
            }
            Message::Close(_) => return Err("Twilio closed the socket before start".to_owned()),
            _ => return Err("a binary frame before start: not Twilio's".to_owned()),
        }
    }
}

/// TCP connections with `TCP_NODELAY`: a frame every 20 ms must leave at once, not wait for the
/// acknowledgement of the one before (Nagle's algorithm against a delayed ACK costs up to 40 ms).
pub fn tcp_nodelay()
-> impl actix_service::Service<ConnectInfo<Uri>, Response = Connection<Uri, tokio::net::TcpStream>, Error = ConnectError>
+ Clone {
    use actix_service::Service as _;
    let tcp = actix_tls::connect::Connector::default().service();
    actix_service::fn_service(move |info: ConnectInfo<Uri>| {
        let tcp = tcp.clone();
        async move {
            let connection = tcp.call(info).await?;
            let _ = connection.io_ref().set_nodelay(true);
            Ok(connection)
        }
    })
}

/// Opens the agent's socket (`ws://` or `wss://` with the relay's TLS roots).
async fn connect(url: &str, config: &RelayConfig) -> Result<actix_codec::Framed<BoxedSocket, Codec>, String> {
    let connector = awc::Connector::new()
        .connector(tcp_nodelay())
        .rustls_0_23(config.tls.clone())
        .timeout(config.connect_timeout);
    let client = awc::Client::builder()
        .connector(connector)
        .timeout(config.connect_timeout)
        .finish();
    let (_, framed) = client.ws(url).max_frame_size(MAX_FRAME).connect().await.map_err(|e| {
        use awc::error::{ConnectError, SendRequestError, WsClientError};
        match e {
            WsClientError::InvalidResponseStatus(status) => {
                format!("the media server refused the socket: HTTP {}", status.as_u16())
            }
            WsClientError::SendRequest(
                SendRequestError::Timeout | SendRequestError::Connect(ConnectError::Timeout),
            ) => {
                format!("no answer within {} ms", config.connect_timeout.as_millis())
            }
            other => other.to_string(),
        }
    })?;
    Ok(framed)
}

/// How the relaying ended.
#[derive(Debug)]
enum Ending {
    /// Twilio sent `stop`.
    Stopped,
    /// Twilio's socket closed or failed.
    TwilioGone(String),
    /// No frame from Twilio for the idle timeout.
    Idle,
    /// The agent closed its socket.
    AgentClosed(String),
    /// The agent's socket failed.
    AgentError(String),
    /// A side queued more control messages than a queue keeps.
    Overflow(&'static str),
}

impl Ending {
    fn outcome(&self) -> (&'static str, String) {
        match self {
            Self::Stopped => ("stopped", "Twilio ended the stream".to_owned()),
            Self::TwilioGone(why) => ("twilio_gone", format!("Twilio's socket went away: {why}")),
            Self::Idle => ("idle", "no frame from Twilio within the idle timeout".to_owned()),
            Self::AgentClosed(why) => ("agent_closed", format!("the media server closed the stream: {why}")),
            Self::AgentError(why) => ("agent_error", format!("the media server's socket failed: {why}")),
            Self::Overflow(side) => (
                "overflow",
                format!("{side} queued more control messages than the relay keeps"),
            ),
        }
    }
}

fn close_reason(reason: Option<&CloseReason>) -> String {
    reason.map_or_else(
        || "no close code".to_owned(),
        |r| {
            let code: u16 = r.code.into();
            format!(
                "code {code}{}",
                r.description
                    .as_deref()
                    .map_or(String::new(), |d| format!(" {}", value(d)))
            )
        },
    )
}

async fn relay(state: Arc<RelayState>, mut session: Session, mut twilio: MessageStream, request_id: Option<String>) {
    let _active = state.metrics.opened();
    let opened = Instant::now();
    let mut early = Vec::new();
    let refuse = |call_sid: &str, business: &str, why: &str| {
        let (call_sid, business) = (value(call_sid), value(business));
        tracing::warn!(target: TRACE_TARGET, call_sid = %call_sid, "[TWILIO][STREAM] refused call_sid={call_sid} business_id={business}: {why}; socket closed");
        state.metrics.closed("refused");
    };
    let (start, start_text) = match read_start(&mut twilio, &mut session, state.config.idle_timeout, &mut early).await {
        Ok(start) => start,
        Err(why) => {
            refuse("", "", &why);
            close(&session, CloseCode::Policy, &why).await;
            return;
        }
    };
    let (call_sid, business_id) = match start.claim() {
        Ok((sid, business)) => (sid.to_owned(), business),
        Err(why) => {
            let business = start
                .start
                .custom_parameters
                .get("business_id")
                .cloned()
                .unwrap_or_default();
            refuse(&start.start.call_sid, &business, &why);
            close(&session, CloseCode::Policy, &why).await;
            return;
        }
    };
    let stream = Stream {
        state: state.clone(),
        call_sid: call_sid.clone(),
        request_id,
        opened,
        frames_in: Cell::new(u64::try_from(early.len()).unwrap_or(0) + 1),
        frames_out: Cell::new(0),
        dropped: Cell::new(0),
        refused: Cell::new(0),
    };
    let detail = format!(
        "stream_sid={} business_id={business_id} tracks={} format={}",
        value(&start.stream_sid),
        value(&start.start.tracks.join(",")),
        value(&start.format())
    );
    tracing::info!(target: TRACE_TARGET, call_sid = %call_sid, business_id, "[TWILIO][STREAM] start {detail} call_sid={call_sid}");
    let target = match state.ledger.get() {
        Some(ledger) => ledger.stream_target(&call_sid, business_id).await,
        None => StreamTarget::Unavailable("no call ledger: the twilio plugin is not active".to_owned()),
    };
    let agent_url = match target {
        StreamTarget::Agent(url) => url,
        StreamTarget::Unknown => {
            let why = format!("no call {call_sid} was answered with a stream for business {business_id}");
            refuse(&call_sid, &business_id.to_string(), &why);
            close(&session, CloseCode::Policy, "unknown call").await;
            return;
        }
        StreamTarget::Unavailable(why) => {
            let why = format!("the call could not be checked: {why}");
            refuse(&call_sid, &business_id.to_string(), &why);
            stream.note("refused", why);
            close(&session, CloseCode::Again, "the call could not be checked").await;
            return;
        }
    };
    stream.note("start", detail);

    let shown_url = agent_shown(&agent_url);
    let connecting = Instant::now();
    let agent = match timeout(state.config.connect_timeout, connect(&agent_url, &state.config)).await {
        Ok(Ok(agent)) => agent,
        failed => {
            let err = match failed {
                Ok(Err(e)) => e,
                _ => format!("no answer within {} ms", state.config.connect_timeout.as_millis()),
            };
            let detail = format!("err={} agent={shown_url}", value(&err));
            tracing::error!(target: TRACE_TARGET, call_sid = %call_sid, "[TWILIO][STREAM] agent_failed {detail} call_sid={call_sid}: the caller hears the fallback");
            stream.note("agent_failed", detail);
            close(&session, CloseCode::Normal, "media server unavailable").await;
            stream.stopped("agent_failed", "the media server could not be reached");
            return;
        }
    };
    let took = connecting.elapsed();
    state.metrics.connected_in(took.as_secs_f64());
    let detail = format!("ms={} agent={shown_url}", took.as_millis());
    tracing::info!(target: TRACE_TARGET, call_sid = %call_sid, "[TWILIO][STREAM] agent_connected {detail} call_sid={call_sid}");
    stream.note("agent_connected", detail);

    early.push(start_text);
    let ending = pump(&stream, &mut twilio, &session, agent, early).await;
    let (outcome, reason) = ending.outcome();
    stream.stopped(outcome, &reason);
}

/// Relays until one side ends; returns how.
async fn pump(
    stream: &Stream,
    twilio: &mut MessageStream,
    session: &Session,
    agent: actix_codec::Framed<BoxedSocket, Codec>,
    early: Vec<ByteString>,
) -> Ending {
    let config = &stream.state.config;
    let (to_agent_frames, to_twilio_frames) = (
        stream.state.metrics.frames("to_agent"),
        stream.state.metrics.frames("to_twilio"),
    );
    let to_agent: Queue<awc::ws::Message> = Queue::new(config.queue_frames);
    let to_twilio: Queue<ByteString> = Queue::new(config.queue_frames);
    for text in early {
        to_agent.push(awc::ws::Message::Text(text), false);
        to_agent_frames.relayed.inc();
    }
    let (mut agent_tx, mut agent_rx) = agent.split();
    let count = |pushed: Pushed, frames: &Frames| match pushed {
        Pushed::Queued => {
            frames.relayed.inc();
            true
        }
        Pushed::DroppedOldest => {
            frames.relayed.inc();
            frames.dropped.inc();
            stream.dropped.set(stream.dropped.get() + 1);
            true
        }
        Pushed::Overflow => false,
    };

    let read_twilio = async {
        let mut pong = session.clone();
        loop {
            let message = match timeout(config.idle_timeout, twilio.recv()).await {
                Err(_) => return Ending::Idle,
                Ok(None) => return Ending::TwilioGone("closed".to_owned()),
                Ok(Some(Err(e))) => return Ending::TwilioGone(e.to_string()),
                Ok(Some(Ok(message))) => message,
            };
            match message {
                Message::Text(text) => {
                    stream.frames_in.set(stream.frames_in.get() + 1);
                    let event = Event::of(&text);
                    if !event.from_twilio() {
                        to_agent_frames.refused.inc();
                        stream.refused.set(stream.refused.get() + 1);
                        continue;
                    }
                    let pushed = to_agent.push(awc::ws::Message::Text(text), event == Event::Media);
                    if !count(pushed, &to_agent_frames) {
                        return Ending::Overflow("Twilio");
                    }
                    if event == Event::Stop {
                        to_agent.close();
                        return Ending::Stopped;
                    }
                }
                Message::Ping(bytes) => {
                    let _ = pong.pong(&bytes).await;
                }
                Message::Close(reason) => return Ending::TwilioGone(close_reason(reason.as_ref())),
                _ => {
                    to_agent_frames.refused.inc();
                    stream.refused.set(stream.refused.get() + 1);
                }
            }
        }
    };
    let read_agent = async {
        while let Some(frame) = agent_rx.next().await {
            match frame {
                Ok(Frame::Text(bytes)) => {
                    let text = ByteString::try_from(bytes).ok();
                    let event = text.as_deref().map_or(Event::Other, Event::of);
                    match text.filter(|_| event.to_twilio()) {
                        Some(text) => {
                            stream.frames_out.set(stream.frames_out.get() + 1);
                            if !count(to_twilio.push(text, event == Event::Media), &to_twilio_frames) {
                                return Ending::Overflow("the media server");
                            }
                        }
                        None => {
                            to_twilio_frames.refused.inc();
                            stream.refused.set(stream.refused.get() + 1);
                        }
                    }
                }
                Ok(Frame::Ping(bytes)) => {
                    to_agent.push(awc::ws::Message::Pong(bytes), false);
                }
                Ok(Frame::Close(reason)) => return Ending::AgentClosed(close_reason(reason.as_ref())),
                Ok(Frame::Pong(_)) => {}
                Ok(Frame::Binary(_) | Frame::Continuation(_)) => {
                    to_twilio_frames.refused.inc();
                    stream.refused.set(stream.refused.get() + 1);
                }
                Err(e) => return Ending::AgentError(e.to_string()),
            }
        }
        Ending::AgentClosed("the connection ended".to_owned())
    };
    let write_agent = async {
        while let Some(message) = to_agent.pop().await {
            if let Err(e) = agent_tx.send(message).await {
                return Ending::AgentError(e.to_string());
            }
        }
        // The closing handshake: our close frame, then the agent's answer (read below), and only
        // then the connection ends (closed at once, the agent could lose what it had not read).
        let _ = agent_tx
            .send(awc::ws::Message::Close(Some(CloseCode::Normal.into())))
            .await;
        Ending::Stopped
    };
    let write_twilio = async {
        let mut session = session.clone();
        while let Some(text) = to_twilio.pop().await {
            if session.text(text).await.is_err() {
                return Ending::TwilioGone("closed while the relay wrote".to_owned());
            }
        }
        Ending::TwilioGone("closed".to_owned())
    };
    let (mut read_twilio, mut read_agent) = (std::pin::pin!(read_twilio), std::pin::pin!(read_agent));
    let (mut write_agent, mut write_twilio) = (std::pin::pin!(write_agent), std::pin::pin!(write_twilio));
    let (ending, agent_read, agent_written) = tokio::select! {
        ending = &mut read_twilio => (ending, false, false),
        ending = &mut read_agent => (ending, true, false),
        ending = &mut write_agent => (ending, false, true),
        ending = &mut write_twilio => (ending, false, false),
    };
    // Twilio's socket is closed first and cleanly (after an agent that left, Twilio plays what
    // follows `</Connect>`); then the agent's ends too: after the `stop` already queued for it,
    // however slowly it reads, or at once, with a close frame, and its answering close (each
    // within the idle timeout: a slow agent still gets its `stop`).
    match ending {
        Ending::Overflow(_) => close(session, CloseCode::Size, "queue overflow").await,
        Ending::AgentClosed(_) | Ending::AgentError(_) => close(session, CloseCode::Normal, "media server left").await,
        _ => close(session, CloseCode::Normal, "stream ended").await,
    }
    if !agent_written {
        to_agent.close();
        let _ = timeout(config.idle_timeout, &mut write_agent).await;
    }
    if !agent_read {
        let _ = timeout(config.idle_timeout, &mut read_agent).await;
    }
    ending
}
