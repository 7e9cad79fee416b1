//! Test harness: a Herald node in this process on an ephemeral port, and
//! clients that speak to it over real WebSockets and real HTTP.
//!
//! ```ignore
//! let server = TestServer::start().await;
//! let mut alice = server.connected("alice").await;
//! alice.subscribe(1, "news").await;
//! server.publish("news", json!({"text": "hi"})).await;
//! assert_eq!(alice.next_push().await["push"]["pub"]["data"]["text"], "hi");
//! ```
//!
//! Waits are bounded by [`PATIENCE`] and end as soon as the awaited thing
//! happens; nothing sleeps for a fixed time.

pub(crate) mod follower;
pub(crate) mod scenarios;
pub(crate) mod stream;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use herald_server::auth::TokenMinter;
use herald_server::config::{Config, Secret};
use herald_server::Node;

/// How long anything a test waits for may take.
pub(crate) const PATIENCE: Duration = Duration::from_secs(10);

/// Sends the logs of the nodes this test runs (at `info`) where the test
/// harness captures a test's output, which it shows only when the test
/// fails: a failure then says what each node did. Nodes run on the test's
/// own thread (`#[tokio::test]`'s runtime), which is what the returned
/// guard covers; keep it for the whole test.
pub(crate) fn keep_node_logs() -> tracing::subscriber::DefaultGuard {
    let subscriber =
        tracing_subscriber::fmt().with_max_level(tracing::Level::INFO).with_ansi(false).with_test_writer().finish();
    tracing::subscriber::set_default(subscriber)
}

pub(crate) const SECRET: &str = "integration-test-secret";
pub(crate) const API_KEY: &str = "integration-test-api-key";

/// The configuration tests start from: the starter config's namespaces,
/// known secrets, and otherwise defaults.
pub(crate) fn test_config() -> Config {
    let mut config = Config::default();
    config.client.token_hmac_secret = Some(Secret::new(SECRET));
    config.api.key = Some(Secret::new(API_KEY));
    let chat = herald_core::NamespaceOptions { publish: herald_core::PublishPolicy::Subscribers, ..Default::default() };
    let private = herald_core::NamespaceOptions {
        subscribe: herald_core::SubscribePolicy::Token,
        publish: herald_core::PublishPolicy::Subscribers,
        ..Default::default()
    };
    let feed = herald_core::NamespaceOptions {
        publish: herald_core::PublishPolicy::Subscribers,
        history_size: 10,
        history_ttl: Duration::from_secs(300),
        force_recovery: true,
        recovery_max_publications: 5,
        allow_history_for_subscriber: true,
        ..Default::default()
    };
    let room = herald_core::NamespaceOptions {
        publish: herald_core::PublishPolicy::Subscribers,
        presence: true,
        join_leave: true,
        allow_presence_for_subscriber: true,
        ..Default::default()
    };
    config.channel.namespaces.insert("chat".into(), chat);
    config.channel.namespaces.insert("private".into(), private);
    config.channel.namespaces.insert("feed".into(), feed);
    config.channel.namespaces.insert("room".into(), room);
    config
}

/// A node serving on 127.0.0.1 with an ephemeral port.
pub(crate) struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    pub(crate) async fn start() -> Self {
        Self::with_config(test_config()).await
    }

    pub(crate) async fn with(tweak: impl FnOnce(&mut Config)) -> Self {
        let mut config = test_config();
        tweak(&mut config);
        Self::with_config(config).await
    }

    /// A handle on a node the test runs itself, serving at `addr`.
    pub(crate) fn at(addr: SocketAddr) -> Self {
        Self { addr, stop: None, task: None }
    }

    pub(crate) async fn with_config(config: Config) -> Self {
        let problems = config.validate();
        assert!(problems.is_empty(), "test config is invalid: {problems:#?}");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind an ephemeral port");
        let addr = listener.local_addr().unwrap();
        let node = Node::build(config).await.expect("node builds");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(node.run(listener, async move {
            let _ = stopped.await;
        }));
        Self { addr, stop: Some(stop), task: Some(task) }
    }

    pub(crate) fn ws_url(&self) -> String {
        format!("ws://{}/connection/websocket", self.addr)
    }

    /// A connection token for `user`, with extra claims merged in.
    pub(crate) fn token_with(&self, user: &str, extra: Value) -> String {
        let mut claims = json!({"sub": user});
        if let (Some(claims), Value::Object(extra)) = (claims.as_object_mut(), extra) {
            claims.extend(extra);
        }
        TokenMinter::hmac(SECRET).sign(&claims)
    }

    pub(crate) fn token(&self, user: &str) -> String {
        self.token_with(user, json!({}))
    }

    /// A subscription token for `user` in `channel`.
    pub(crate) fn channel_token(&self, user: &str, channel: &str, extra: Value) -> String {
        let mut claims = json!({"sub": user, "channel": channel});
        if let (Some(claims), Value::Object(extra)) = (claims.as_object_mut(), extra) {
            claims.extend(extra);
        }
        TokenMinter::hmac(SECRET).sign(&claims)
    }

    /// A WebSocket to the Centrifuge endpoint, before any command.
    pub(crate) async fn client(&self) -> Client {
        let (ws, _) = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(self.ws_url()))
            .await
            .expect("WebSocket handshake in time")
            .expect("WebSocket handshake succeeds");
        Client { ws, next_id: 100, pending: Default::default(), held_pushes: Default::default() }
    }

    /// A WebSocket to the Centrifuge endpoint whose handshake carries
    /// `headers` (a cookie, for example), before any command.
    pub(crate) async fn client_with_headers(&self, headers: &[(&str, &str)]) -> Client {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = self.ws_url().into_client_request().expect("a WebSocket request");
        for (name, value) in headers {
            let name = tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap();
            request.headers_mut().insert(name, value.parse().unwrap());
        }
        let (ws, _) = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(request))
            .await
            .expect("WebSocket handshake in time")
            .expect("WebSocket handshake succeeds");
        Client { ws, next_id: 100, pending: Default::default(), held_pushes: Default::default() }
    }

    /// A client that has connected as `user`.
    pub(crate) async fn connected(&self, user: &str) -> Client {
        let mut client = self.client().await;
        let reply = client.command(json!({"id": 1, "connect": {"token": self.token(user)}})).await;
        assert!(reply["connect"]["client"].is_string(), "connect failed: {reply}");
        client
    }

    /// Calls the server API with the right key.
    pub(crate) async fn api(&self, method: &str, params: Value) -> (u16, Value) {
        http_post(self.addr, &format!("/api/{method}"), &[("X-API-Key", API_KEY)], &params.to_string()).await
    }

    /// Publishes through the API and asserts it was accepted.
    pub(crate) async fn publish(&self, channel: &str, data: Value) {
        let (status, body) = self.api("publish", json!({"channel": channel, "data": data})).await;
        assert_eq!((status, &body["error"]), (200, &Value::Null), "publish failed: {body}");
    }

    /// Triggers shutdown and waits for the node to finish draining.
    pub(crate) async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(PATIENCE, task)
                .await
                .expect("node stops in time")
                .expect("node task does not panic")
                .expect("node stops cleanly");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A raw Centrifuge protocol client over a real WebSocket.
pub(crate) struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u32,
    /// Messages of a batched frame not yet returned by `next`.
    pending: std::collections::VecDeque<Value>,
    /// Pushes that arrived while `command` waited for its reply.
    held_pushes: std::collections::VecDeque<Value>,
}

/// What a client saw next.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Seen {
    /// One JSON message (a frame with several is split).
    Json(Value),
    /// The server closed the connection with this code and reason.
    Closed(u16, String),
    /// The connection ended without a close frame.
    Gone,
}

impl Client {
    /// Wraps a WebSocket opened elsewhere (for example to a spawned binary).
    pub(crate) fn from_stream(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Self {
        Client { ws, next_id: 100, pending: Default::default(), held_pushes: Default::default() }
    }

    pub(crate) async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    pub(crate) async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.ws.send(Message::binary(bytes)).await.expect("send");
    }

    pub(crate) async fn send(&mut self, command: Value) {
        self.send_text(&command.to_string()).await;
    }

    /// The next whole frame as text (pings answered by the caller).
    pub(crate) async fn next_frame(&mut self) -> Result<String, (u16, String)> {
        loop {
            let message = tokio::time::timeout(PATIENCE, self.ws.next()).await.expect("a message in time");
            match message {
                Some(Ok(Message::Text(text))) => return Ok(text.to_string()),
                Some(Ok(Message::Close(Some(frame)))) => return Err((u16::from(frame.code), frame.reason.to_string())),
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return Err((0, String::new())),
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next binary message (a Protobuf frame).
    pub(crate) async fn next_binary(&mut self) -> Vec<u8> {
        loop {
            let message = tokio::time::timeout(PATIENCE, self.ws.next()).await.expect("a message in time");
            match message {
                Some(Ok(Message::Binary(bytes))) => return bytes.to_vec(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a binary message, got {other:?}"),
            }
        }
    }

    /// The next message; a frame of several messages yields them one by one.
    pub(crate) async fn next(&mut self) -> Seen {
        if let Some(message) = self.pending.pop_front() {
            return Seen::Json(message);
        }
        match self.next_frame().await {
            Ok(frame) => {
                self.pending = frame.lines().map(|l| serde_json::from_str::<Value>(l).expect("JSON message")).collect();
                Seen::Json(self.pending.pop_front().expect("non-empty frame"))
            }
            Err((0, _)) => Seen::Gone,
            Err((code, reason)) => Seen::Closed(code, reason),
        }
    }

    /// Sends a command and returns the reply with its id, answering pings
    /// and keeping pushes for `next_push`; fails on anything else.
    pub(crate) async fn command(&mut self, command: Value) -> Value {
        let id = command["id"].clone();
        self.send(command).await;
        loop {
            match self.next().await {
                Seen::Json(v) if v == json!({}) => self.send_text("{}").await,
                Seen::Json(v) if v["id"] == id => return v,
                Seen::Json(v) if v.get("push").is_some() => self.held_pushes.push_back(v["push"].clone()),
                other => panic!("expected the reply to command {id}, got {other:?}"),
            }
        }
    }

    /// Subscribes and asserts success.
    pub(crate) async fn subscribe(&mut self, channel: &str) -> Value {
        self.next_id += 1;
        let reply = self.command(json!({"id": self.next_id, "subscribe": {"channel": channel}})).await;
        assert!(reply.get("error").is_none(), "subscribe to {channel} failed: {reply}");
        reply
    }

    /// A command's reply id for tests that send their own.
    pub(crate) fn id(&mut self) -> u32 {
        self.next_id += 1;
        self.next_id
    }

    /// The next push, answering pings on the way.
    pub(crate) async fn next_push(&mut self) -> Value {
        if let Some(push) = self.held_pushes.pop_front() {
            return push;
        }
        loop {
            match self.next().await {
                Seen::Json(v) if v == json!({}) => self.send_text("{}").await,
                Seen::Json(v) if v.get("push").is_some() => return v["push"].clone(),
                other => panic!("expected a push, got {other:?}"),
            }
        }
    }

    /// Waits for the server to close the connection; pushes and pings on
    /// the way are skipped. Returns the close code and reason.
    pub(crate) async fn closed(&mut self) -> (u16, String) {
        loop {
            match self.next().await {
                Seen::Json(_) => continue,
                Seen::Closed(code, reason) => return (code, reason),
                Seen::Gone => panic!("connection ended without a close frame"),
            }
        }
    }

    /// Starts the closing handshake with `code`.
    pub(crate) async fn send_close(&mut self, code: u16) {
        let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame { code: code.into(), reason: "bye".into() };
        self.ws.send(Message::Close(Some(frame))).await.expect("send the close frame");
    }

    /// Asserts the connection still works: a ping command gets its reply.
    pub(crate) async fn assert_alive(&mut self) {
        let id = self.id();
        let reply = self.command(json!({"id": id, "ping": {}})).await;
        assert_eq!(reply, json!({"id": id, "ping": {}}));
    }
}

/// A minimal HTTP/1.1 POST; returns the status and the JSON body (or
/// `Value::Null` when the body is not JSON).
pub(crate) async fn http_post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, Value) {
    let (status, body) = http_post_raw(addr, path, headers, body).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// A minimal HTTP/1.1 POST; returns the status and the body as text.
pub(crate) async fn http_post_raw(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    let (status, _, body) = exchange(addr, &request).await;
    (status, body)
}

/// Sends a whole HTTP/1.1 request and reads the response to its end: the
/// status, the head and the body.
pub(crate) async fn exchange(addr: SocketAddr, request: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect for HTTP");
    stream.write_all(request.as_bytes()).await.expect("write HTTP request");
    let mut response = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut response))
        .await
        .expect("HTTP response in time")
        .expect("read HTTP response");
    let text = String::from_utf8_lossy(&response);
    let status: u16 = text.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("HTTP status line");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_owned(), body.to_owned())
}

/// A minimal HTTP/1.1 GET; returns the status, the content type and the body.
pub(crate) async fn http_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let (status, head, body) = exchange(addr, &request).await;
    let content_type = head
        .lines()
        .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-type: ").map(str::to_owned))
        .unwrap_or_default();
    (status, content_type, body)
}

/// Polls `condition` until it holds, failing after [`PATIENCE`].
pub(crate) async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls an async `condition` until it holds, failing after [`PATIENCE`].
pub(crate) async fn eventually_async<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
