//! Real WebSockets for tests and the benchmark (cargo feature `fake`): a fake Twilio that speaks
//! the Media Streams protocol (20 ms μ-law frames of 160 bytes, base64, 50 a second) and fake
//! agents (echo, slow reader, refusing, closing mid-call). Not compiled into the host.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse, HttpServer, web};
use actix_ws::Message;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use futures_util::{SinkExt as _, StreamExt as _};

/// What [`Agent::received`] lists last once an agent's socket has ended.
pub const CLOSED: &str = "<closed>";

/// What a fake agent received, in order (the raw texts).
pub type Received = Arc<Mutex<Vec<String>>>;

/// A fake agent server: `GET /echo` echoes media and marks back, `/slow` reads nothing for its
/// first `slow_for`, `/close` closes after five media frames, `/refuse` answers 403.
pub struct Agent {
    /// `ws://127.0.0.1:port`.
    pub base: String,
    /// Every text an agent socket received, per path (`/echo`, `/slow`, `/close`).
    pub received: Received,
    handle: actix_web::dev::ServerHandle,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct AgentState {
    received: Received,
    slow_for: Duration,
}

fn event_of(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v["event"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The agent's answer to a Twilio message: media echoed, marks returned.
fn echo_of(text: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let stream_sid = v["streamSid"].as_str().unwrap_or_default();
    match v["event"].as_str()? {
        "media" => Some(
            serde_json::json!({"event": "media", "streamSid": stream_sid, "media": {"payload": v["media"]["payload"]}})
                .to_string(),
        ),
        "mark" => Some(
            serde_json::json!({"event": "mark", "streamSid": stream_sid, "mark": {"name": v["mark"]["name"]}})
                .to_string(),
        ),
        _ => None,
    }
}

async fn agent_socket(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AgentState>,
) -> actix_web::Result<HttpResponse> {
    let path = req.path().to_owned();
    let (response, mut session, mut stream) = actix_ws::handle(&req, body)?;
    actix_web::rt::spawn(async move {
        if path == "/slow" {
            actix_web::rt::time::sleep(state.slow_for).await;
        }
        let mut media = 0;
        while let Some(Ok(message)) = stream.recv().await {
            let Message::Text(text) = message else {
                if matches!(message, Message::Close(_)) {
                    break;
                }
                continue;
            };
            if let Ok(mut received) = state.received.lock() {
                received.push(format!("{path} {text}"));
            }
            let event = event_of(&text);
            if event == "media" {
                media += 1;
            }
            if path == "/close" && media == 5 {
                let _ = session.clone().close(None).await;
                return;
            }
            if path == "/echo"
                && let Some(echo) = echo_of(&text)
                && session.text(echo).await.is_err()
            {
                return;
            }
            if event == "stop" {
                break;
            }
        }
        let _ = session.close(None).await;
        if let Ok(mut received) = state.received.lock() {
            received.push(format!("{path} {CLOSED}"));
        }
    });
    Ok(response)
}

impl Agent {
    /// Starts the agents on a free loopback port. The listening socket has a small receive buffer
    /// so that a reader that stops reading pushes back within about a hundred KiB.
    ///
    /// # Panics
    /// When no port can be bound.
    #[allow(clippy::unwrap_used)]
    pub fn start(slow_for: Duration) -> Self {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(64 * 1024).unwrap();
        socket.set_reuse_address(true).unwrap();
        let address: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        socket.bind(&address.into()).unwrap();
        socket.listen(1024).unwrap();
        let listener: std::net::TcpListener = socket.into();
        let port = listener.local_addr().unwrap().port();
        let received = Received::default();
        let state = AgentState {
            received: received.clone(),
            slow_for,
        };
        let server = HttpServer::new(move || {
            actix_web::App::new()
                .app_data(web::Data::new(state.clone()))
                .route("/echo", web::get().to(agent_socket))
                .route("/slow", web::get().to(agent_socket))
                .route("/close", web::get().to(agent_socket))
                .route("/refuse", web::get().to(HttpResponse::Forbidden))
        })
        .workers(1)
        .tcp_nodelay(true)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        Self {
            base: format!("ws://127.0.0.1:{port}"),
            received,
            handle,
        }
    }

    /// The texts the agent at `path` received, in order, then [`CLOSED`] once its socket ended.
    #[allow(clippy::unwrap_used)]
    pub fn received(&self, path: &str) -> Vec<String> {
        let prefix = format!("{path} ");
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter_map(|r| r.strip_prefix(&prefix).map(str::to_owned))
            .collect()
    }

    /// Stops the agents.
    pub async fn stop(&self) {
        self.handle.stop(false).await;
    }
}

/// A loopback address that accepts connections and never answers a byte (an agent that hangs).
///
/// # Panics
/// When no port can be bound.
#[allow(clippy::unwrap_used)]
pub fn silent_agent() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for connection in listener.incoming().flatten() {
            held.push(connection);
        }
    });
    format!("ws://127.0.0.1:{port}/silent")
}

/// The payload of media frame `n`: 160 bytes of μ-law silence (0xFF) carrying `n` in the first
/// four, base64.
pub fn payload(n: u32) -> String {
    let mut audio = [0xFF_u8; 160];
    audio[..4].copy_from_slice(&n.to_be_bytes());
    B64.encode(audio)
}

/// The frame number of an echoed payload.
pub fn frame_of(payload: &str) -> Option<u32> {
    let audio = B64.decode(payload).ok()?;
    Some(u32::from_be_bytes(audio.get(..4)?.try_into().ok()?))
}

/// A client as Twilio's side would be: `TCP_NODELAY`, no limit on concurrent sockets.
pub fn client() -> awc::Client {
    awc::Client::builder()
        .connector(awc::Connector::new().connector(crate::relay::tcp_nodelay()).limit(0))
        .timeout(Duration::from_secs(30))
        .finish()
}

/// Twilio's side of one stream.
pub struct TwilioStream {
    sink: futures_util::stream::SplitSink<actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>, awc::ws::Message>,
    source: futures_util::stream::SplitStream<actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>>,
    /// The stream's sid.
    pub stream_sid: String,
    call_sid: String,
    sent: u32,
}

impl std::fmt::Debug for TwilioStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwilioStream")
            .field("stream_sid", &self.stream_sid)
            .finish_non_exhaustive()
    }
}

/// What Twilio's socket got back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    /// A text message.
    Text(String),
    /// The relay closed the socket (code).
    Closed(Option<u16>),
}

impl TwilioStream {
    /// Opens `url` (`ws://…/ws/twilio/media`) as Twilio does: a GET upgrade with
    /// `X-Twilio-Signature` (none when `signature` is `None`).
    ///
    /// # Errors
    /// The handshake's failure (a refusal is `InvalidResponseStatus`).
    pub async fn open(url: &str, signature: Option<&str>, call_sid: &str) -> Result<Self, awc::error::WsClientError> {
        Self::open_with(&client(), url, signature, call_sid).await
    }

    /// [`TwilioStream::open`] with `client` (its TLS roots, say, for a `wss://` URL).
    ///
    /// # Errors
    /// The handshake's failure.
    pub async fn open_with(
        client: &awc::Client,
        url: &str,
        signature: Option<&str>,
        call_sid: &str,
    ) -> Result<Self, awc::error::WsClientError> {
        let mut request = client.ws(url);
        if let Some(signature) = signature {
            request = request.set_header("x-twilio-signature", signature);
        }
        let (_, framed) = request.connect().await?;
        let (sink, source) = framed.split();
        Ok(Self {
            sink,
            source,
            stream_sid: format!("MZ{}", &call_sid[2..]),
            call_sid: call_sid.to_owned(),
            sent: 0,
        })
    }

    async fn send(&mut self, value: serde_json::Value) -> bool {
        self.sink
            .send(awc::ws::Message::Text(value.to_string().into()))
            .await
            .is_ok()
    }

    /// `connected`, then `start` with our TwiML's parameters (`call_sid`, `business_id`).
    pub async fn start(&mut self, call_sid_param: &str, business_id: i64) -> bool {
        let connected = serde_json::json!({"event": "connected", "protocol": "Call", "version": "1.0.0"});
        let start = serde_json::json!({
            "event": "start", "sequenceNumber": "1", "streamSid": self.stream_sid,
            "start": {
                "accountSid": "AC0123456789abcdef0123456789abcdef", "streamSid": self.stream_sid,
                "callSid": self.call_sid, "tracks": ["inbound"],
                "customParameters": {"call_sid": call_sid_param, "business_id": business_id.to_string()},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
            }
        });
        self.send(connected).await && self.send(start).await
    }

    /// The next media frame (numbered from 0).
    pub async fn media(&mut self) -> bool {
        let n = self.sent;
        self.sent += 1;
        let media = serde_json::json!({
            "event": "media", "sequenceNumber": (n + 2).to_string(), "streamSid": self.stream_sid,
            "media": {"track": "inbound", "chunk": (n + 1).to_string(), "timestamp": (n * 20).to_string(), "payload": payload(n)}
        });
        self.send(media).await
    }

    /// `n` media frames at 50 a second (a frame every 20 ms).
    pub async fn speak(&mut self, n: u32) -> bool {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for _ in 0..n {
            tick.tick().await;
            if !self.media().await {
                return false;
            }
        }
        true
    }

    /// A `mark` named `name`.
    pub async fn mark(&mut self, name: &str) -> bool {
        let mark = serde_json::json!({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}});
        self.send(mark).await
    }

    /// `stop`.
    pub async fn stop(&mut self) -> bool {
        let stop = serde_json::json!({
            "event": "stop", "sequenceNumber": (self.sent + 2).to_string(), "streamSid": self.stream_sid,
            "stop": {"accountSid": "AC0123456789abcdef0123456789abcdef", "callSid": self.call_sid}
        });
        self.send(stop).await
    }

    /// The next message from the relay, or `None` after `wait` without one.
    pub async fn next(&mut self, wait: Duration) -> Option<Got> {
        loop {
            let frame = tokio::time::timeout(wait, self.source.next()).await.ok()?;
            return Some(match frame {
                Some(Ok(awc::ws::Frame::Text(bytes))) => Got::Text(String::from_utf8_lossy(&bytes).into_owned()),
                Some(Ok(awc::ws::Frame::Close(reason))) => Got::Closed(reason.map(|r| r.code.into())),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => Got::Closed(None),
            });
        }
    }

    /// Everything the relay sends until it closes (or `wait` passes without a message), and how
    /// long that took.
    pub async fn until_closed(&mut self, wait: Duration) -> (Vec<String>, Option<Got>, Duration) {
        let started = Instant::now();
        let mut texts = Vec::new();
        while let Some(got) = self.next(wait).await {
            match got {
                Got::Text(text) => texts.push(text),
                closed @ Got::Closed(_) => return (texts, Some(closed), started.elapsed()),
            }
        }
        (texts, None, started.elapsed())
    }
}
