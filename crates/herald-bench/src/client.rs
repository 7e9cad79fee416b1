//! The bench's own client for three protocols, with just what load needs:
//! connect, subscribe, receive publications, publish from a client, answer
//! heartbeats.
//!
//! - Centrifuge protocol v2 (JSON): Herald's own endpoint.
//! - Pusher protocol 7: Herald's `/app/{key}`, Sockudo, Soketi, Reverb.
//! - Socket.IO 4 (Engine.IO 4 over WebSocket): the peer in `bench/peers`.
//!
//! Each connection may bind its own loopback source address, so one machine
//! can open more connections to one server port than one source address
//! has ports.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use crate::protobuf;
use crate::sse::SseClient;
use crate::ws::{WsClient, WsError};

mod detached;
pub use detached::Detached;

/// How many times a Centrifuge subscription refused with a temporary
/// error is asked for.
const SUBSCRIBE_ATTEMPTS: u32 = 5;

/// Subscriptions asked for again after a temporary error, by every client
/// of this process.
static SUBSCRIBE_RETRIES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many subscriptions this process's clients asked for again after a
/// temporary error.
pub fn subscribe_retries() -> usize {
    SUBSCRIBE_RETRIES.load(std::sync::atomic::Ordering::Relaxed)
}

/// Commands sent without waiting (publications) that the server answered
/// with an error, by every client of this process.
static REFUSED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many commands sent without waiting the server refused, and the
/// first refusal, so a publication refused is not taken for one lost.
pub fn refused() -> (usize, Option<String>) {
    let first = FIRST_REFUSAL.lock().ok().and_then(|first| first.clone());
    (REFUSED.load(std::sync::atomic::Ordering::Relaxed), first)
}

/// Subscriptions the server ended (an `unsubscribe` push, such as 2500
/// "insufficient state", after which an SDK subscribes again and
/// recovers), by every client of this process.
static UNSUBSCRIBED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many subscriptions the server ended while clients read publications.
pub fn unsubscribed() -> usize {
    UNSUBSCRIBED.load(std::sync::atomic::Ordering::Relaxed)
}

static FIRST_REFUSAL: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

fn count_refusal(reply: &Value) {
    if REFUSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0 {
        if let Ok(mut first) = FIRST_REFUSAL.lock() {
            *first = Some(reply.to_string());
        }
    }
}

/// Which protocol the bench speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Centrifuge protocol v2, JSON (Herald, Centrifugo).
    #[default]
    Centrifuge,
    /// Centrifuge protocol v2, Protobuf (the `centrifuge-protobuf` subprotocol).
    #[serde(rename = "centrifuge-protobuf")]
    CentrifugeProtobuf,
    /// Herald's uni-directional SSE (`/connection/uni_sse`): channels come
    /// with the token, publications as events; the client sends nothing.
    #[serde(rename = "uni-sse")]
    UniSse,
    /// Centrifuge protocol v2, JSON, over Server-Sent Events with
    /// bidirectional emulation (`/connection/sse`): replies and pushes come
    /// as events, commands and heartbeat answers are posted to `/emulation`.
    Sse,
    /// Pusher Channels protocol 7 (Herald, Sockudo, Soketi, Reverb).
    Pusher,
    /// Socket.IO 4 over WebSocket (the Socket.IO peer in bench/peers).
    Socketio,
}

impl Protocol {
    /// Whether this is the bidirectional Centrifuge protocol, in either
    /// encoding, over a WebSocket or emulated over SSE.
    pub fn centrifuge(self) -> bool {
        matches!(self, Protocol::Centrifuge | Protocol::CentrifugeProtobuf | Protocol::Sse)
    }
}

/// Where a WebSocket endpoint lives.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub addr: SocketAddr,
    /// A `Cookie` header for the handshake (a session cookie a connect
    /// proxy authenticates by).
    pub cookie: Option<String>,
}

impl Target {
    /// Parses `ws://host:port/path` (or `http://` for an event stream); the
    /// host must be an IP address.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("ws://")
            .or_else(|| url.strip_prefix("http://"))
            .ok_or_else(|| anyhow::anyhow!("{url}: only ws:// (and http:// for uni-sse and sse) URLs are supported"))?;
        let authority = rest.split('/').next().unwrap_or(rest);
        let addr: SocketAddr = authority
            .parse()
            .map_err(|_| anyhow::anyhow!("{url}: the host must be IP:port, e.g. ws://127.0.0.1:8000/…"))?;
        Ok(Self { url: url.to_owned(), addr, cookie: None })
    }
}

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// This process hit its open-files limit.
    #[error("out of file descriptors (the open-files limit of this process)")]
    FileLimit,
    /// The source address ran out of ports, or the server refused.
    #[error("cannot connect: {0}")]
    Network(String),
    /// The server answered, but not as a server of this protocol would.
    #[error("protocol: {0}")]
    Protocol(String),
}

fn network(e: std::io::Error) -> ConnectError {
    if e.raw_os_error() == Some(24) || e.raw_os_error() == Some(23) {
        ConnectError::FileLimit
    } else {
        ConnectError::Network(e.to_string())
    }
}

fn protocol_error(e: impl std::fmt::Display) -> ConnectError {
    ConnectError::Protocol(e.to_string())
}

fn ws_error(e: WsError) -> ConnectError {
    match e {
        WsError::Io(e) => network(e),
        other => protocol_error(other),
    }
}

/// A publication as the bench sends it: `{"seq": n, "ts": micros, "pad": …}`,
/// with `"from": member` when a client published it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Shared with every publication of the channel this client received.
    pub channel: Arc<str>,
    pub from: Option<u64>,
    pub seq: u64,
    /// When the publication was meant to be sent, unix microseconds.
    pub sent_at_micros: u64,
    /// Its stream position, when the server gives one (Centrifuge).
    pub offset: Option<u64>,
}

impl Received {
    fn from_data(channel: &str, data: &Value, offset: Option<u64>) -> Option<Self> {
        Some(Self {
            channel: channel.into(),
            from: data["from"].as_u64(),
            seq: data["seq"].as_u64()?,
            sent_at_micros: data["ts"].as_u64()?,
            offset,
        })
    }
}

/// One message from the server, after heartbeats were answered.
#[derive(Debug)]
enum Incoming {
    /// A bench publication, read without building a JSON tree.
    Publication(Received),
    Json(Value),
    /// A Socket.IO packet: its type digits and JSON payload.
    SocketIo(String, Value),
}

/// One connected client.
#[derive(Debug)]
pub struct BenchClient {
    link: Link,
    protocol: Protocol,
    next_id: u32,
    /// Each recoverable channel's last known position: offset and epoch.
    positions: std::collections::HashMap<String, (u64, String)>,
    /// The last message's contents, kept to reuse the allocation.
    incoming: Vec<Incoming>,
    /// The names of channels publications came from, so that each
    /// publication does not allocate its channel's name again.
    names: Names,
    /// Channels whose subscription the server ended, asking the client to
    /// subscribe again, since the caller last took them (`take_ended`).
    ended: Vec<String>,
    /// Where an emulated client posts what it sends (`Protocol::Sse`).
    emulated: Option<Box<Emulated>>,
}

/// What an emulated client needs to post its commands: the node, the
/// source address its stream came from, and its session as the connect
/// reply named it.
#[derive(Debug)]
struct Emulated {
    server: SocketAddr,
    source: Option<IpAddr>,
    session: String,
    node: String,
}

/// The most of `/emulation`'s answer read.
const EMULATION_ANSWER: u64 = 4 * 1024;

/// How long a post to `/emulation` may take, answer included (the node
/// waits up to 2 s for the session to take the commands).
const EMULATION_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

impl Emulated {
    /// Posts `data` (commands, as a WebSocket client would send them) to
    /// the node's `/emulation` on a connection of its own, and reads the
    /// answer to its end, so that the node closes first and keeps the
    /// closed connection's `TIME_WAIT`, not this process's ports.
    async fn post(&self, data: &str) -> Result<(), ConnectError> {
        tokio::time::timeout(EMULATION_DEADLINE, self.post_unbounded(data))
            .await
            .map_err(|_| ConnectError::Protocol("/emulation did not answer within 10 s".into()))?
    }

    async fn post_unbounded(&self, data: &str) -> Result<(), ConnectError> {
        let socket = TcpSocket::new_v4().map_err(network)?;
        if let Some(ip) = self.source {
            socket.bind(SocketAddr::new(ip, 0)).map_err(network)?;
        }
        let mut stream = socket.connect(self.server).await.map_err(network)?;
        let body = json!({"session": self.session, "node": self.node, "data": data}).to_string();
        let request = format!(
            "POST /emulation HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            self.server,
            body.len()
        );
        stream.write_all(request.as_bytes()).await.map_err(network)?;
        let mut answer = Vec::new();
        (&mut stream).take(EMULATION_ANSWER).read_to_end(&mut answer).await.map_err(network)?;
        match answer.starts_with(b"HTTP/1.1 204") {
            true => Ok(()),
            false => {
                let status = answer.split(|b| *b == b'\r').next().unwrap_or_default();
                Err(ConnectError::Protocol(format!("/emulation answered {}", String::from_utf8_lossy(status))))
            }
        }
    }
}

/// The connection under a client.
#[derive(Debug)]
enum Link {
    Ws(WsClient),
    Sse(SseClient),
}

impl Link {
    fn ws(&mut self) -> Result<&mut WsClient, ConnectError> {
        match self {
            Link::Ws(ws) => Ok(ws),
            Link::Sse(_) => Err(ConnectError::Protocol("an SSE client has no WebSocket to send on".into())),
        }
    }
}

/// One message from the server, for [`BenchClient::next_events`].
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A bench publication.
    Publication(Received),
    /// Anything else: a reply, a push, an error.
    Message(Value),
}

/// How a recoverable subscription came out.
#[derive(Debug, Default)]
pub struct Resubscribed {
    /// Every channel said `recovered: true` (or had nothing to recover).
    pub recovered: bool,
    /// The publications the replies carried (what was missed).
    pub publications: Vec<Received>,
}

impl BenchClient {
    /// Opens a WebSocket from `source` (if given) and completes the
    /// protocol's handshake (`token` is the Centrifuge connection token).
    pub async fn connect(
        target: &Target,
        source: Option<IpAddr>,
        protocol: Protocol,
        token: &str,
    ) -> Result<Self, ConnectError> {
        Self::connect_with(target, source, protocol, token, None).await
    }

    /// As [`connect`](Self::connect), with the socket's receive buffer set
    /// to `receive_buffer` bytes (the kernel doubles it): a client that
    /// stops reading then holds up the server after that little.
    pub async fn connect_with(
        target: &Target,
        source: Option<IpAddr>,
        protocol: Protocol,
        token: &str,
        receive_buffer: Option<u32>,
    ) -> Result<Self, ConnectError> {
        let socket = TcpSocket::new_v4().map_err(network)?;
        if let Some(bytes) = receive_buffer {
            socket.set_recv_buffer_size(bytes).map_err(network)?;
        }
        if let Some(ip) = source {
            socket.bind(SocketAddr::new(ip, 0)).map_err(network)?;
        }
        let stream = socket.connect(target.addr).await.map_err(network)?;
        let _ = stream.set_nodelay(true);
        let link = match protocol {
            Protocol::UniSse | Protocol::Sse => {
                let path =
                    target.url.split_once("//").map_or("/", |(_, rest)| rest.find('/').map_or("/", |at| &rest[at..]));
                let request = match protocol {
                    Protocol::Sse => json!({"id": 1, "connect": {"token": token, "name": "herald-bench"}}),
                    _ => json!({"token": token, "name": "herald-bench"}),
                }
                .to_string();
                let path = format!("{path}?cf_connect={}", form_encoded(&request));
                Link::Sse(SseClient::open(stream, &target.addr.to_string(), &path).await.map_err(ws_error)?)
            }
            _ => {
                let subprotocol = (protocol == Protocol::CentrifugeProtobuf).then_some("centrifuge-protobuf");
                let ws = WsClient::handshake_with(stream, &target.url, target.cookie.as_deref(), subprotocol)
                    .await
                    .map_err(ws_error)?;
                Link::Ws(ws)
            }
        };
        let mut client = Self {
            link,
            protocol,
            next_id: 1,
            positions: Default::default(),
            incoming: Vec::new(),
            names: Names::default(),
            ended: Vec::new(),
            emulated: None,
        };
        match protocol {
            Protocol::UniSse => loop {
                let connected = client
                    .next_incoming()
                    .await?
                    .iter()
                    .any(|m| matches!(m, Incoming::Json(m) if m.get("connect").is_some()));
                if connected {
                    break;
                }
            },
            Protocol::Sse => {
                // Its connect command went in the URL, as id 1.
                let reply = client.reply(1).await?;
                let connected = &reply["connect"];
                let (Some(session), Some(node)) = (connected["session"].as_str(), connected["node"].as_str()) else {
                    return Err(ConnectError::Protocol(format!("connect refused or not emulated: {reply}")));
                };
                let (session, node) = (session.to_owned(), node.to_owned());
                client.emulated = Some(Box::new(Emulated { server: target.addr, source, session, node }));
                client.next_id = 2;
            }
            Protocol::Centrifuge | Protocol::CentrifugeProtobuf => {
                let reply = client.command(json!({"connect": {"token": token, "name": "herald-bench"}})).await?;
                if reply.get("connect").is_none() {
                    return Err(ConnectError::Protocol(format!("connect refused: {reply}")));
                }
            }
            Protocol::Pusher => {
                let first = client.next_incoming().await?;
                let established =
                    matches!(&first[..], [Incoming::Json(f)] if f["event"] == "pusher:connection_established");
                if !established {
                    return Err(ConnectError::Protocol("no pusher:connection_established".into()));
                }
            }
            Protocol::Socketio => {
                // The Engine.IO open packet came first; join the default namespace.
                client.send("40".to_owned()).await?;
                loop {
                    let connected =
                        client.next_incoming().await?.iter().any(|m| matches!(m, Incoming::SocketIo(t, _) if t == "0"));
                    if connected {
                        break;
                    }
                }
            }
        }
        Ok(client)
    }

    async fn send(&mut self, text: String) -> Result<(), ConnectError> {
        if let Some(emulated) = &self.emulated {
            return emulated.post(&text).await;
        }
        let protobuf = self.protocol == Protocol::CentrifugeProtobuf;
        let ws = self.link.ws()?;
        if protobuf {
            return ws.send_binary(&protobuf::commands(&text)).await.map_err(ws_error);
        }
        ws.send_text(&text).await.map_err(ws_error)
    }

    /// Sends a Centrifuge command and waits for its reply.
    async fn command(&mut self, mut command: Value) -> Result<Value, ConnectError> {
        let id = self.next_id;
        self.next_id += 1;
        command["id"] = json!(id);
        self.send(command.to_string()).await?;
        self.reply(id).await
    }

    /// Reads until the reply with `id`, skipping what comes before it.
    async fn reply(&mut self, id: u32) -> Result<Value, ConnectError> {
        loop {
            for message in self.next_incoming().await? {
                if let Incoming::Json(message) = message {
                    if message["id"] == id {
                        return Ok(message);
                    }
                }
            }
        }
    }

    /// Subscribes to every channel (in one frame where the protocol allows).
    pub async fn subscribe(&mut self, channels: &[String]) -> Result<(), ConnectError> {
        if channels.is_empty() {
            return Ok(());
        }
        match self.protocol {
            // Its channels came with its token.
            Protocol::UniSse => Ok(()),
            Protocol::Centrifuge | Protocol::CentrifugeProtobuf | Protocol::Sse => {
                self.centrifuge_subscribe(channels, false).await.map(drop)
            }
            Protocol::Pusher => {
                for channel in channels {
                    self.send(json!({"event": "pusher:subscribe", "data": {"channel": channel}}).to_string()).await?;
                }
                let mut pending = channels.len();
                while pending > 0 {
                    for message in self.next_incoming().await? {
                        let Incoming::Json(frame) = message else { continue };
                        match frame["event"].as_str() {
                            Some("pusher_internal:subscription_succeeded") => pending -= 1,
                            Some("pusher:subscription_error" | "pusher:error") => {
                                return Err(ConnectError::Protocol(format!("subscribe refused: {frame}")))
                            }
                            _ => {}
                        }
                    }
                }
                Ok(())
            }
            Protocol::Socketio => {
                self.send(format!("420{}", json!(["subscribe", channels]))).await?;
                loop {
                    for message in self.next_incoming().await? {
                        if matches!(&message, Incoming::SocketIo(t, _) if t == "30") {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    /// Subscribes recoverably (Centrifuge): channels this client saw before
    /// recover from their last position, as a client SDK does after a
    /// reconnect.
    pub async fn subscribe_recovering(&mut self, channels: &[String]) -> Result<Resubscribed, ConnectError> {
        if !self.protocol.centrifuge() {
            return Err(ConnectError::Protocol("only the centrifuge protocol recovers".into()));
        }
        self.centrifuge_subscribe(channels, true).await
    }

    /// Continues with the positions of an earlier connection.
    pub fn set_positions(&mut self, positions: std::collections::HashMap<String, (u64, String)>) {
        self.positions = positions;
    }

    pub fn positions(&self) -> &std::collections::HashMap<String, (u64, String)> {
        &self.positions
    }

    /// Subscribes to `channels`; those refused with a temporary error
    /// (the server's engine did not answer in time) are asked again after
    /// a pause, up to [`SUBSCRIBE_ATTEMPTS`] times, as client SDKs do.
    async fn centrifuge_subscribe(
        &mut self,
        channels: &[String],
        recoverable: bool,
    ) -> Result<Resubscribed, ConnectError> {
        let mut outcome = Resubscribed { recovered: true, publications: Vec::new() };
        let mut channels = channels.to_vec();
        for attempt in 1..=SUBSCRIBE_ATTEMPTS {
            let again = self.centrifuge_subscribe_once(&channels, recoverable, &mut outcome).await?;
            if again.is_empty() {
                break;
            }
            if attempt == SUBSCRIBE_ATTEMPTS {
                return Err(ConnectError::Protocol(format!(
                    "subscribe refused {SUBSCRIBE_ATTEMPTS} times with a temporary error: {}",
                    again.join(", ")
                )));
            }
            SUBSCRIBE_RETRIES.fetch_add(again.len(), std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(std::time::Duration::from_millis(250 << attempt)).await;
            channels = again;
        }
        // Publications that followed a reply in the same frame moved the position on.
        self.advance_positions(&outcome.publications);
        Ok(outcome)
    }

    /// One subscribe frame for `channels`; returns those refused with a
    /// temporary error.
    async fn centrifuge_subscribe_once(
        &mut self,
        channels: &[String],
        recoverable: bool,
        outcome: &mut Resubscribed,
    ) -> Result<Vec<String>, ConnectError> {
        let mut again = Vec::new();
        if channels.is_empty() {
            return Ok(again);
        }
        let first = self.next_id;
        let frame: Vec<String> = channels
            .iter()
            .enumerate()
            .map(|(i, channel)| {
                let mut subscribe = json!({"channel": channel});
                if recoverable {
                    subscribe["recoverable"] = json!(true);
                    if let Some((offset, epoch)) = self.positions.get(channel) {
                        subscribe["recover"] = json!(true);
                        subscribe["offset"] = json!(offset);
                        subscribe["epoch"] = json!(epoch);
                    }
                }
                json!({"id": first + i as u32, "subscribe": subscribe}).to_string()
            })
            .collect();
        self.next_id += channels.len() as u32;
        self.send(frame.join("\n")).await?;
        let mut pending = channels.len();
        while pending > 0 {
            for message in self.next_incoming().await? {
                let message = match message {
                    Incoming::Publication(publication) => {
                        outcome.publications.push(publication);
                        continue;
                    }
                    Incoming::Json(message) => message,
                    Incoming::SocketIo(..) => continue,
                };
                let id = message["id"].as_u64().unwrap_or(0) as u32;
                if id < first || id >= first + channels.len() as u32 {
                    // A publication may overtake the replies of other channels.
                    outcome.publications.extend(publication(self.protocol, &Incoming::Json(message)));
                    continue;
                }
                pending -= 1;
                let channel = &channels[(id - first) as usize];
                if let Some(error) = message.get("error") {
                    if error["temporary"] == true {
                        again.push(channel.clone());
                        continue;
                    }
                    return Err(ConnectError::Protocol(format!("subscribe refused: {message}")));
                }
                let reply = &message["subscribe"];
                if reply["was_recovering"] == true && reply["recovered"] != true {
                    outcome.recovered = false;
                }
                for publication in reply["publications"].as_array().into_iter().flatten() {
                    outcome.publications.extend(Received::from_data(
                        channel,
                        &publication["data"],
                        publication["offset"].as_u64(),
                    ));
                }
                if let Some(epoch) = reply["epoch"].as_str() {
                    let offset = reply["offset"].as_u64().unwrap_or(0);
                    self.positions.insert(channel.clone(), (offset, epoch.to_owned()));
                }
            }
        }
        Ok(again)
    }

    /// The messages of the next WebSocket message; heartbeats are answered
    /// on the way.
    async fn next_incoming(&mut self) -> Result<Vec<Incoming>, ConnectError> {
        self.read_incoming().await?;
        Ok(std::mem::take(&mut self.incoming))
    }

    /// Reads the next WebSocket message into `self.incoming`.
    async fn read_incoming(&mut self) -> Result<(), ConnectError> {
        self.incoming.clear();
        let (protocol, names, incoming) = (self.protocol, &mut self.names, &mut self.incoming);
        match &mut self.link {
            Link::Sse(sse) => {
                let data = sse.next_event().await.map_err(ws_error)?;
                let answer = interpret(protocol, data, names, incoming)?;
                // A uni-directional stream's pings need no answer; an
                // emulated client posts its.
                if let (Some(Answer { payload, .. }), Some(emulated)) = (answer, &self.emulated) {
                    emulated.post(std::str::from_utf8(payload).unwrap_or("{}")).await?;
                }
            }
            Link::Ws(ws) => {
                let message = ws.next_bytes().await.map_err(ws_error)?;
                if let Some(Answer { binary, payload }) = interpret(protocol, message, names, incoming)? {
                    ws.send_message(binary, payload).await.map_err(ws_error)?;
                }
            }
        }
        Ok(())
    }

    /// Sends Centrifuge commands in one frame, numbering them; returns the
    /// first one's id (the rest follow it).
    pub async fn send_commands(&mut self, commands: Vec<Value>) -> Result<u32, ConnectError> {
        let first = self.next_id;
        let mut frame = Vec::with_capacity(commands.len());
        for mut command in commands {
            command["id"] = json!(self.next_id);
            self.next_id += 1;
            frame.push(command.to_string());
        }
        self.send(frame.join("\n")).await?;
        Ok(first)
    }

    /// The next WebSocket message's contents, in order, in place of what
    /// `events` held: for callers that follow the protocol themselves.
    /// Heartbeats are answered on the way; positions are not tracked.
    pub async fn next_events(&mut self, events: &mut Vec<Event>) -> Result<(), ConnectError> {
        self.read_incoming().await?;
        let protocol = self.protocol;
        events.clear();
        events.extend(self.incoming.drain(..).map(|message| match (publication(protocol, &message), message) {
            (Some(publication), _) | (None, Incoming::Publication(publication)) => Event::Publication(publication),
            (None, Incoming::Json(message)) => Event::Message(message),
            (None, Incoming::SocketIo(kind, payload)) => Event::Message(json!([kind, payload])),
        }));
        Ok(())
    }

    /// The next WebSocket message's contents as JSON, each with its size in
    /// bytes (Centrifuge JSON; pings are answered): for callers that weigh
    /// what they receive.
    pub async fn next_raw(&mut self, events: &mut Vec<(usize, Event)>) -> Result<(), ConnectError> {
        events.clear();
        let ws = self.link.ws()?;
        let text = ws.next_text().await.map_err(ws_error)?;
        let mut pinged = false;
        for line in text.lines().filter(|line| !line.is_empty()) {
            let message: Value = serde_json::from_str(line).map_err(protocol_error)?;
            if message == json!({}) {
                pinged = true;
                continue;
            }
            events.push((line.len(), Event::Message(message)));
        }
        if pinged {
            ws.send_text("{}").await.map_err(ws_error)?;
        }
        Ok(())
    }

    /// Publishes from this client without waiting for a reply. Pusher
    /// clients publish only client events on private channels, which the
    /// bench does not sign: the chat scenario speaks Centrifuge or Socket.IO.
    pub async fn publish_nowait(&mut self, channel: &str, data: &Value) -> Result<(), ConnectError> {
        match self.protocol {
            Protocol::Centrifuge | Protocol::CentrifugeProtobuf | Protocol::Sse => {
                let id = self.next_id;
                self.next_id += 1;
                self.send(json!({"id": id, "publish": {"channel": channel, "data": data}}).to_string()).await
            }
            Protocol::Socketio => {
                self.send(format!("42{}", json!(["publish", {"channel": channel, "data": data}]))).await
            }
            Protocol::Pusher => Err(ConnectError::Protocol("the bench does not publish as a Pusher client".into())),
            Protocol::UniSse => Err(ConnectError::Protocol("a uni-directional client sends nothing".into())),
        }
    }

    /// The publications of the next WebSocket message, in place of what
    /// `received` held (a buffer the caller keeps, so reading allocates
    /// nothing per message).
    pub async fn next_publications(&mut self, received: &mut Vec<Received>) -> Result<(), ConnectError> {
        self.read_incoming().await?;
        received.clear();
        keep_publications(self.protocol, &mut self.incoming, received, &mut self.ended);
        self.advance_positions(received);
        Ok(())
    }

    /// This client's connection, to be read on a plain thread from now on
    /// (see [`Detached`]).
    pub fn detach(self) -> Result<Detached, ConnectError> {
        if self.emulated.is_some() {
            // Its heartbeat answers are posts, which a reader thread does not make.
            return Err(ConnectError::Protocol("an emulated SSE client is read by its own task only".into()));
        }
        Detached::new(self.link, self.protocol)
    }

    /// The channels whose subscription the server ended since the last
    /// call (an SDK subscribes to them again, recovering).
    pub fn take_ended(&mut self) -> Vec<String> {
        std::mem::take(&mut self.ended)
    }

    /// Moves each recoverable channel's known position on past `publications`.
    fn advance_positions(&mut self, publications: &[Received]) {
        if self.positions.is_empty() {
            return;
        }
        for publication in publications {
            if let (Some(offset), Some(position)) = (publication.offset, self.positions.get_mut(&*publication.channel))
            {
                position.0 = position.0.max(offset);
            }
        }
    }

    /// Keeps the connection alive (answering heartbeats) until `stop` resolves.
    pub async fn hold(&mut self, stop: impl std::future::Future<Output = ()>) -> Result<(), ConnectError> {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return Ok(()),
                messages = self.next_incoming() => { messages?; }
            }
        }
    }

    /// Drops the connection without a goodbye, as a network failure would.
    pub fn abort(self) {
        drop(self.link);
    }
}

/// `text` as one `application/x-www-form-urlencoded` value.
fn form_encoded(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(char::from(byte)),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// The names of the channels publications came from, each allocated once
/// and shared by every publication of its channel: one client's, or those
/// of all the clients a reader thread reads ([`Detached`]).
#[derive(Debug, Default)]
struct Names {
    /// The name handed out last: a publication most often comes from the
    /// same channel as the one before it.
    last: Option<Arc<str>>,
    all: std::collections::HashSet<Arc<str>>,
}

impl Names {
    fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(last) = self.last.as_ref().filter(|last| ***last == *name) {
            return last.clone();
        }
        let known = match self.all.get(name) {
            Some(known) => known.clone(),
            None => {
                let name: Arc<str> = name.into();
                self.all.insert(name.clone());
                name
            }
        };
        self.last = Some(known.clone());
        known
    }
}

/// What a heartbeat asks the client to send back: a text message, or a
/// binary one.
#[derive(Debug, Clone, Copy)]
struct Answer {
    binary: bool,
    payload: &'static [u8],
}

/// Reads one message of `protocol` into `messages`; returns the heartbeat
/// answer to send, if the message was a heartbeat.
fn interpret(
    protocol: Protocol,
    message: &[u8],
    names: &mut Names,
    messages: &mut Vec<Incoming>,
) -> Result<Option<Answer>, ConnectError> {
    if protocol == Protocol::CentrifugeProtobuf {
        let ping = read_protobuf(message, names, messages)?;
        return Ok(ping.then_some(Answer { binary: true, payload: protobuf::PONG }));
    }
    let text = std::str::from_utf8(message).map_err(|_| protocol_error("a text message is not valid UTF-8"))?;
    let answer = read_message(text, protocol, names, messages)?;
    Ok(answer.map(|text| Answer { binary: false, payload: text.as_bytes() }))
}

/// Moves the bench publications among `incoming` to `received`, emptying
/// it; refusals and ended subscriptions are counted, and the channels the
/// server asks to subscribe to again added to `ended`.
fn keep_publications(
    protocol: Protocol,
    incoming: &mut Vec<Incoming>,
    received: &mut Vec<Received>,
    ended: &mut Vec<String>,
) {
    received.extend(incoming.drain(..).filter_map(|message| match message {
        Incoming::Publication(publication) => Some(publication),
        Incoming::Json(reply) if reply.get("id").is_some() && reply.get("error").is_some() => {
            count_refusal(&reply);
            None
        }
        Incoming::Json(push) if push["push"]["unsubscribe"].is_object() => {
            UNSUBSCRIBED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // 2500 and up ask the client to subscribe again; below, the server meant it.
            if push["push"]["unsubscribe"]["code"].as_u64().is_some_and(|code| code >= 2500) {
                ended.extend(push["push"]["channel"].as_str().map(str::to_owned));
            }
            None
        }
        other => publication(protocol, &other),
    }));
}

/// Reads one Protobuf frame into `messages`; true if it held a ping.
fn read_protobuf(frame: &[u8], names: &mut Names, messages: &mut Vec<Incoming>) -> Result<bool, ConnectError> {
    let mut ping = false;
    for reply in protobuf::replies(frame).ok_or_else(|| protocol_error("a frame that is not Protobuf"))? {
        if reply.is_empty() {
            ping = true;
            continue;
        }
        // A bench publication, read without building a JSON tree.
        if let Some((channel, data, offset)) = protobuf::publication_parts(reply) {
            if let Some((seq, sent_at_micros, from)) = scan::bench_fields(data) {
                let channel = names.get(&String::from_utf8_lossy(channel));
                messages.push(Incoming::Publication(Received { channel, from, seq, sent_at_micros, offset }));
                continue;
            }
        }
        let message = protobuf::reply(reply).ok_or_else(|| protocol_error("a reply that is not Protobuf"))?;
        messages.push(Incoming::Json(message));
    }
    Ok(ping)
}

/// Reads one text message of `protocol` into `messages`; returns the
/// heartbeat answer to send, if the message was a heartbeat.
fn read_message(
    text: &str,
    protocol: Protocol,
    names: &mut Names,
    messages: &mut Vec<Incoming>,
) -> Result<Option<&'static str>, ConnectError> {
    match protocol {
        Protocol::Centrifuge | Protocol::CentrifugeProtobuf | Protocol::UniSse | Protocol::Sse => {
            let mut answer = None;
            for line in text.lines().filter(|l| !l.is_empty()) {
                if let Some(publication) = scan::publication(protocol, line, names) {
                    messages.push(Incoming::Publication(publication));
                    continue;
                }
                let message: Value = serde_json::from_str(line).map_err(protocol_error)?;
                if message == json!({}) {
                    answer = Some("{}");
                } else {
                    messages.push(Incoming::Json(message));
                }
            }
            Ok(answer)
        }
        Protocol::Pusher => {
            if let Some(publication) = scan::publication(protocol, text, names) {
                messages.push(Incoming::Publication(publication));
                return Ok(None);
            }
            let frame: Value = serde_json::from_str(text).map_err(protocol_error)?;
            if frame["event"] == "pusher:ping" {
                return Ok(Some(r#"{"event":"pusher:pong","data":{}}"#));
            }
            messages.push(Incoming::Json(frame));
            Ok(None)
        }
        Protocol::Socketio => match text.as_bytes().first() {
            Some(b'2') => Ok(Some("3")),
            Some(b'4') => {
                if let Some(publication) = scan::publication(protocol, text, names) {
                    messages.push(Incoming::Publication(publication));
                    return Ok(None);
                }
                let body = &text[1..];
                let split = body.find(['[', '{']).unwrap_or(body.len());
                let payload = serde_json::from_str(&body[split..]).unwrap_or(Value::Null);
                messages.push(Incoming::SocketIo(body[..split].to_owned(), payload));
                Ok(None)
            }
            _ => Ok(None),
        },
    }
}

/// A bench publication in a server message, if it is one.
fn publication(protocol: Protocol, message: &Incoming) -> Option<Received> {
    match (protocol, message) {
        (_, Incoming::Publication(publication)) => Some(publication.clone()),
        (Protocol::UniSse, Incoming::Json(m)) => {
            let publication = m.get("pub")?;
            Received::from_data(m["channel"].as_str()?, &publication["data"], publication["offset"].as_u64())
        }
        (Protocol::Centrifuge | Protocol::CentrifugeProtobuf | Protocol::Sse, Incoming::Json(m)) => {
            let push = m.get("push")?;
            let publication = push.get("pub")?;
            Received::from_data(push["channel"].as_str()?, &publication["data"], publication["offset"].as_u64())
        }
        (Protocol::Pusher, Incoming::Json(frame)) => {
            let event = frame["event"].as_str()?;
            if event.starts_with("pusher") {
                return None;
            }
            let data: Value = match &frame["data"] {
                Value::String(text) => serde_json::from_str(text).ok()?,
                other => other.clone(),
            };
            Received::from_data(frame["channel"].as_str()?, &data, None)
        }
        (Protocol::Socketio, Incoming::SocketIo(kind, payload)) if kind == "2" && payload[0] == "publication" => {
            Received::from_data(payload[1].as_str()?, &payload[2], None)
        }
        _ => None,
    }
}

/// Reading bench publications without a JSON tree: the generator shares
/// the machine with the server, so it must cost little per message. The
/// bench wrote the payload itself (`seq`, `ts`, `from`, `pad` of `x`s), so
/// its fields can be found by name; anything unexpected falls back to the
/// full JSON parse.
mod scan {
    use super::{Names, Protocol, Received};

    use memchr::memmem::Finder;
    use std::sync::LazyLock;

    /// A number field: its SIMD searchers for `"key":` and, inside a JSON
    /// string (Pusher's `data`), `\"key\":`.
    struct Field {
        plain: Finder<'static>,
        escaped: Finder<'static>,
    }

    impl Field {
        fn new(key: &str) -> Self {
            Self {
                plain: Finder::new(&format!("\"{key}\":")).into_owned(),
                escaped: Finder::new(&format!("\\\"{key}\\\":")).into_owned(),
            }
        }

        /// The unsigned number that follows the field's name in `text`.
        fn number(&self, text: &[u8]) -> Option<u64> {
            let start = match self.plain.find(text) {
                Some(at) => at + self.plain.needle().len(),
                None => self.escaped.find(text)? + self.escaped.needle().len(),
            };
            let digits = text[start..].iter().take_while(|b| b.is_ascii_digit()).count();
            std::str::from_utf8(&text[start..start + digits]).ok()?.parse().ok()
        }
    }

    /// Everything a publication is searched for, built once per process:
    /// this runs for every message the bench receives (building searchers
    /// per call had cost 7 % of the generator's time at 500,000/s, finding
    /// them per thread by name another 5 %).
    struct Searchers {
        seq: Field,
        ts: Field,
        from: Field,
        offset: Field,
        centrifuge_pub: Finder<'static>,
        pusher_internal: Finder<'static>,
        pusher_channel: Finder<'static>,
    }

    static SEARCHERS: LazyLock<Searchers> = LazyLock::new(|| Searchers {
        seq: Field::new("seq"),
        ts: Field::new("ts"),
        from: Field::new("from"),
        offset: Field::new("offset"),
        centrifuge_pub: Finder::new("\"pub\":"),
        pusher_internal: Finder::new("\"event\":\"pusher"),
        pusher_channel: Finder::new("\"channel\":\""),
    });

    const CENTRIFUGE_PUSH: &str = "{\"push\":{\"channel\":\"";
    const UNI_PUSH: &str = "{\"channel\":\"";
    const SOCKETIO_PUBLICATION: &str = "42[\"publication\",\"";

    /// The text up to the next quote.
    fn up_to_quote(text: &str) -> Option<&str> {
        Some(&text[..memchr::memchr(b'"', text.as_bytes())?])
    }

    /// The `seq`, `ts` and `from` of a bench publication's data.
    pub(super) fn bench_fields(data: &[u8]) -> Option<(u64, u64, Option<u64>)> {
        let searchers = &*SEARCHERS;
        Some((searchers.seq.number(data)?, searchers.ts.number(data)?, searchers.from.number(data)))
    }

    pub(super) fn publication(protocol: Protocol, text: &str, names: &mut Names) -> Option<Received> {
        let searchers = &*SEARCHERS;
        let bytes = text.as_bytes();
        let channel = match protocol {
            Protocol::Centrifuge | Protocol::Sse => {
                let rest = text.strip_prefix(CENTRIFUGE_PUSH)?;
                searchers.centrifuge_pub.find(bytes)?;
                up_to_quote(rest)?
            }
            Protocol::Pusher if searchers.pusher_internal.find(bytes).is_none() => {
                let at = searchers.pusher_channel.find(bytes)? + searchers.pusher_channel.needle().len();
                up_to_quote(&text[at..])?
            }
            Protocol::Socketio => up_to_quote(text.strip_prefix(SOCKETIO_PUBLICATION)?)?,
            Protocol::UniSse => {
                let rest = text.strip_prefix(UNI_PUSH)?;
                searchers.centrifuge_pub.find(bytes)?;
                up_to_quote(rest)?
            }
            _ => return None,
        };
        Some(Received {
            channel: names.get(channel),
            from: searchers.from.number(bytes),
            seq: searchers.seq.number(bytes)?,
            sent_at_micros: searchers.ts.number(bytes)?,
            offset: if matches!(protocol, Protocol::Centrifuge | Protocol::UniSse | Protocol::Sse) {
                searchers.offset.number(bytes)
            } else {
                None
            },
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn publications_of_each_protocol_are_read_without_a_json_tree() {
            let centrifuge =
                r#"{"push":{"channel":"bench0","pub":{"data":{"seq":12,"ts":1700,"pad":"xx"},"offset":40}}}"#;
            let pusher = r#"{"event":"bench","channel":"bench1","data":"{\"seq\":3,\"ts\":99,\"from\":7}"}"#;
            let socketio = r#"42["publication","room2",{"seq":5,"ts":10,"pad":"x"}]"#;
            let mut names = Names::default();
            let mut read = |p, t| {
                publication(p, t, &mut names)
                    .map(|r| (r.channel.to_string(), r.seq, r.sent_at_micros, r.from, r.offset))
            };
            assert_eq!(read(Protocol::Centrifuge, centrifuge), Some(("bench0".into(), 12, 1700, None, Some(40))));
            assert_eq!(read(Protocol::Pusher, pusher), Some(("bench1".into(), 3, 99, Some(7), None)));
            assert_eq!(read(Protocol::Socketio, socketio), Some(("room2".into(), 5, 10, None, None)));
            assert_eq!(read(Protocol::Pusher, r#"{"event":"pusher:ping","data":{}}"#), None);
            assert_eq!(read(Protocol::Centrifuge, r#"{"id":3,"subscribe":{}}"#), None);
        }

        #[test]
        fn each_channel_name_is_one_allocation_whichever_was_asked_for_last() {
            let mut names = Names::default();
            let a = names.get("bench0");
            let b = names.get("bench1");
            assert!(std::sync::Arc::ptr_eq(&a, &names.get("bench0")), "asked for again after another");
            assert!(std::sync::Arc::ptr_eq(&a, &names.get("bench0")), "asked for twice in a row");
            assert!(std::sync::Arc::ptr_eq(&b, &names.get("bench1")));
            assert_eq!((&*a, &*b), ("bench0", "bench1"));
        }
    }
}
