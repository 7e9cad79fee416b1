//! The bench's own Centrifuge protocol (JSON) client: just what load needs,
//! connect, subscribe, receive publications, answer pings. Each connection
//! may bind its own loopback source address, so one machine can open more
//! connections to one server port than one source address has ports.

use std::net::{IpAddr, SocketAddr};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Where a WebSocket endpoint lives.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub addr: SocketAddr,
}

impl Target {
    /// Parses `ws://host:port/path`; the host must be an IP address.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let rest = url.strip_prefix("ws://").ok_or_else(|| anyhow::anyhow!("{url}: only ws:// URLs are supported"))?;
        let authority = rest.split('/').next().unwrap_or(rest);
        let addr: SocketAddr = authority
            .parse()
            .map_err(|_| anyhow::anyhow!("{url}: the host must be IP:port, e.g. ws://127.0.0.1:8000/…"))?;
        Ok(Self { url: url.to_owned(), addr })
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
    /// The server answered, but not as a Centrifuge server would.
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

/// A publication as the bench sends it: `{"seq": n, "ts": micros, "pad": …}`,
/// with `"from": member` when a client published it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub channel: String,
    pub from: Option<u64>,
    pub seq: u64,
    /// When the publication was meant to be sent, unix microseconds.
    pub sent_at_micros: u64,
}

/// One connected client.
#[derive(Debug)]
pub struct BenchClient {
    ws: WebSocketStream<TcpStream>,
    next_id: u32,
}

impl BenchClient {
    /// Opens a WebSocket from `source` (if given) and sends `connect`.
    pub async fn connect(target: &Target, source: Option<IpAddr>, token: &str) -> Result<Self, ConnectError> {
        let socket = TcpSocket::new_v4().map_err(network)?;
        if let Some(ip) = source {
            socket.bind(SocketAddr::new(ip, 0)).map_err(network)?;
        }
        let stream = socket.connect(target.addr).await.map_err(network)?;
        let _ = stream.set_nodelay(true);
        let (ws, _) = tokio_tungstenite::client_async(target.url.as_str(), stream)
            .await
            .map_err(|e| ConnectError::Protocol(e.to_string()))?;
        let mut client = Self { ws, next_id: 1 };
        let reply = client.command(json!({"connect": {"token": token, "name": "herald-bench"}})).await?;
        if reply.get("connect").is_none() {
            return Err(ConnectError::Protocol(format!("connect refused: {reply}")));
        }
        Ok(client)
    }

    async fn send(&mut self, text: String) -> Result<(), ConnectError> {
        self.ws.send(Message::text(text)).await.map_err(|e| ConnectError::Protocol(e.to_string()))
    }

    /// Sends a command and waits for its reply, answering pings meanwhile.
    async fn command(&mut self, mut command: Value) -> Result<Value, ConnectError> {
        let id = self.next_id;
        self.next_id += 1;
        command["id"] = json!(id);
        self.send(command.to_string()).await?;
        loop {
            for message in self.next_messages().await? {
                if message["id"] == id {
                    return Ok(message);
                }
            }
        }
    }

    /// Subscribes to every channel, all commands in one frame.
    pub async fn subscribe(&mut self, channels: &[String]) -> Result<(), ConnectError> {
        let first = self.next_id;
        let frame: Vec<String> = channels
            .iter()
            .enumerate()
            .map(|(i, channel)| json!({"id": first + i as u32, "subscribe": {"channel": channel}}).to_string())
            .collect();
        self.next_id += channels.len() as u32;
        self.send(frame.join("\n")).await?;
        let mut pending = channels.len();
        while pending > 0 {
            for message in self.next_messages().await? {
                let id = message["id"].as_u64().unwrap_or(0) as u32;
                if id >= first && id < first + channels.len() as u32 {
                    if message.get("error").is_some() {
                        return Err(ConnectError::Protocol(format!("subscribe refused: {message}")));
                    }
                    pending -= 1;
                }
            }
        }
        Ok(())
    }

    /// The messages of the next frame; pings are answered on the way.
    async fn next_messages(&mut self) -> Result<Vec<Value>, ConnectError> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    let mut messages = Vec::new();
                    for line in text.lines().filter(|l| !l.is_empty()) {
                        let message: Value =
                            serde_json::from_str(line).map_err(|e| ConnectError::Protocol(e.to_string()))?;
                        if message == json!({}) {
                            self.send("{}".to_owned()).await?;
                        } else {
                            messages.push(message);
                        }
                    }
                    return Ok(messages);
                }
                Some(Ok(Message::Close(frame))) => {
                    let why = frame.map(|f| format!("{} {}", f.code, f.reason)).unwrap_or_default();
                    return Err(ConnectError::Protocol(format!("closed by the server: {why}")));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(ConnectError::Protocol(e.to_string())),
                None => return Err(ConnectError::Protocol("connection ended".into())),
            }
        }
    }

    /// Publishes from this client without waiting for the reply (the reply
    /// is skipped by the readers).
    pub async fn publish_nowait(&mut self, channel: &str, data: &serde_json::Value) -> Result<(), ConnectError> {
        let id = self.next_id;
        self.next_id += 1;
        self.send(json!({"id": id, "publish": {"channel": channel, "data": data}}).to_string()).await
    }

    /// The publications of the next frame.
    pub async fn next_publications(&mut self) -> Result<Vec<Received>, ConnectError> {
        let messages = self.next_messages().await?;
        Ok(messages
            .iter()
            .filter_map(|m| {
                let push = m.get("push")?;
                let data = &push.get("pub")?["data"];
                Some(Received {
                    channel: push["channel"].as_str()?.to_owned(),
                    from: data["from"].as_u64(),
                    seq: data["seq"].as_u64()?,
                    sent_at_micros: data["ts"].as_u64()?,
                })
            })
            .collect())
    }

    /// Keeps the connection alive (answering pings) until `stop` resolves.
    pub async fn hold(&mut self, stop: impl std::future::Future<Output = ()>) -> Result<(), ConnectError> {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return Ok(()),
                messages = self.next_messages() => { messages?; }
            }
        }
    }
}
