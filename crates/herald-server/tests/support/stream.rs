//! A client of the node's HTTP streams (HTTP-streaming and Server-Sent
//! Events) over a plain TCP connection: it sends one request, then reads
//! the response as it arrives (chunked, or bare to an HTTP/1.0 request),
//! message by message.

use std::collections::VecDeque;
use std::net::SocketAddr;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::PATIENCE;

/// How the response frames its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// One JSON message per line.
    Lines,
    /// `data:` lines, events ended by a blank line.
    Events,
}

/// An open stream.
pub(crate) struct StreamClient {
    socket: TcpStream,
    framing: Framing,
    /// Response body bytes not yet cut into messages.
    body: Vec<u8>,
    /// Raw bytes read, not yet de-chunked.
    raw: Vec<u8>,
    /// Whether the response is chunked (else its bytes are the body).
    chunked: bool,
    ended: bool,
    messages: VecDeque<Value>,
    /// The last event id the stream sent (SSE).
    pub last_event_id: Option<String>,
    /// The response's status and head.
    pub status: u16,
    pub head: String,
}

impl StreamClient {
    /// Sends `method path` with `body` and reads the response head.
    pub(crate) async fn open(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Self {
        Self::open_as(addr, "HTTP/1.1", method, path, headers, body).await
    }

    /// [`StreamClient::open`] with the request's HTTP `version`.
    pub(crate) async fn open_as(
        addr: SocketAddr,
        version: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Self {
        let mut socket = TcpStream::connect(addr).await.expect("connect for a stream");
        let mut request = format!("{method} {path} {version}\r\nHost: {addr}\r\nContent-Length: {}\r\n", body.len());
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(body);
        socket.write_all(request.as_bytes()).await.expect("write the request");
        let mut client = Self {
            socket,
            framing: Framing::Lines,
            body: Vec::new(),
            raw: Vec::new(),
            chunked: true,
            ended: false,
            messages: VecDeque::new(),
            last_event_id: None,
            status: 0,
            head: String::new(),
        };
        loop {
            if let Some(end) = find(&client.raw, b"\r\n\r\n") {
                client.head = String::from_utf8_lossy(&client.raw[..end]).into_owned();
                client.raw.drain(..end + 4);
                break;
            }
            assert!(client.read_more().await, "the connection closed before the response head");
        }
        client.status = client.head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
        let lower = client.head.to_ascii_lowercase();
        if lower.contains("content-type: text/event-stream") {
            client.framing = Framing::Events;
        }
        client.chunked = lower.contains("transfer-encoding: chunked");
        client
    }

    /// An HTTP-streaming POST to `path` with `body`.
    pub(crate) async fn post(addr: SocketAddr, path: &str, body: &str) -> Self {
        Self::open(addr, "POST", path, &[("Content-Type", "application/json")], body).await
    }

    /// A GET of `path` (an event stream).
    pub(crate) async fn get(addr: SocketAddr, path: &str) -> Self {
        Self::open(addr, "GET", path, &[("Accept", "text/event-stream")], "").await
    }

    async fn read_more(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        let read = tokio::time::timeout(PATIENCE, self.socket.read(&mut chunk))
            .await
            .expect("the stream sent nothing in time")
            .expect("read the stream");
        self.raw.extend_from_slice(&chunk[..read]);
        read > 0
    }

    /// Moves whole chunks from `raw` to `body`.
    fn dechunk(&mut self) {
        if !self.chunked {
            self.body.append(&mut self.raw);
            return;
        }
        while let Some(line_end) = find(&self.raw, b"\r\n") {
            let size_text = String::from_utf8_lossy(&self.raw[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.trim(), 16).expect("a chunk size");
            if size == 0 {
                self.ended = true;
                self.raw.clear();
                return;
            }
            let start = line_end + 2;
            if self.raw.len() < start + size + 2 {
                return;
            }
            self.body.extend_from_slice(&self.raw[start..start + size]);
            self.raw.drain(..start + size + 2);
        }
    }

    /// Cuts whole messages out of `body`.
    fn cut(&mut self) {
        let separator: &[u8] = match self.framing {
            Framing::Lines => b"\n",
            Framing::Events => b"\n\n",
        };
        while let Some(end) = find(&self.body, separator) {
            let unit = String::from_utf8(self.body[..end].to_vec()).expect("UTF-8");
            self.body.drain(..end + separator.len());
            let text = match self.framing {
                Framing::Lines => unit,
                Framing::Events => {
                    let mut data = Vec::new();
                    for line in unit.lines() {
                        match line.strip_prefix("id: ") {
                            Some(id) => self.last_event_id = Some(id.to_owned()),
                            None => data.push(line.strip_prefix("data: ").expect("only id and data fields")),
                        }
                    }
                    data.join("\n")
                }
            };
            for line in text.lines().filter(|line| !line.trim().is_empty()) {
                self.messages.push_back(serde_json::from_str(line).expect("JSON messages"));
            }
        }
    }

    /// The next message, or `None` once the stream ended.
    pub(crate) async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(message) = self.messages.pop_front() {
                return Some(message);
            }
            if self.ended {
                return None;
            }
            self.dechunk();
            self.cut();
            if self.messages.is_empty() && !self.ended && !self.read_more().await {
                self.ended = true;
            }
        }
    }

    /// The next message that is not a ping (`{}`).
    pub(crate) async fn next_not_ping(&mut self) -> Value {
        loop {
            let message = self.next().await.expect("a message before the stream ended");
            if message != serde_json::json!({}) {
                return message;
            }
        }
    }

    /// The messages left until the stream ends, pings skipped.
    pub(crate) async fn rest(&mut self) -> Vec<Value> {
        let mut rest = Vec::new();
        while let Some(message) = self.next().await {
            if message != serde_json::json!({}) {
                rest.push(message);
            }
        }
        rest
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}
