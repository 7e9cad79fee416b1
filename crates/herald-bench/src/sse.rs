//! A client of a Server-Sent Events stream (Herald's uni-directional SSE),
//! as cheap per message as the WebSocket client: one GET, then the chunked
//! body is read into one buffer and each event's data is handed out in
//! place.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::ws::WsError;

const INITIAL_BUFFER: usize = 4 * 1024;
const MAX_EVENT: usize = 64 * 1024 * 1024;

/// An open event stream.
#[derive(Debug)]
pub(crate) struct SseClient {
    stream: TcpStream,
    events: Events,
}

/// The reading side of an event stream, without its socket: the bytes
/// read and not yet handed out, cut into events. [`SseClient`] fills it
/// from its async stream; a caller holding the plain socket
/// ([`SseClient::into_std`]) gives it what it reads with
/// [`take`](Self::take).
#[derive(Debug)]
pub(crate) struct Events {
    /// Raw bytes read and not yet de-chunked: `raw[start..]`.
    raw: Vec<u8>,
    start: usize,
    /// The body, de-chunked, not yet cut into events: `body[body_start..]`.
    body: Vec<u8>,
    body_start: usize,
    /// The last event's data (its `data:` lines joined).
    event: Vec<u8>,
}

fn protocol(what: impl Into<String>) -> WsError {
    WsError::Protocol(what.into())
}

impl SseClient {
    /// Sends `GET path_and_query` to `host` and reads the response head.
    pub(crate) async fn open(mut stream: TcpStream, host: &str, path_and_query: &str) -> Result<Self, WsError> {
        let request = format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let events = Events {
            raw: Vec::with_capacity(INITIAL_BUFFER),
            start: 0,
            body: Vec::new(),
            body_start: 0,
            event: Vec::new(),
        };
        let mut client = Self { stream, events };
        let head_end = loop {
            if let Some(at) = memchr::memmem::find(&client.events.raw, b"\r\n\r\n") {
                break at + 4;
            }
            if client.events.raw.len() > 16 * 1024 {
                return Err(protocol("the response head is longer than 16 KiB"));
            }
            client.read_more().await?;
        };
        let head = String::from_utf8_lossy(&client.events.raw[..head_end]).to_ascii_lowercase();
        let status = head.split(' ').nth(1).unwrap_or_default().to_owned();
        if status != "200" {
            return Err(protocol(format!("the server answered {status}, not an event stream")));
        }
        if !head.contains("transfer-encoding: chunked") {
            return Err(protocol("the event stream is not chunked"));
        }
        client.events.start = head_end;
        Ok(client)
    }

    async fn read_more(&mut self) -> Result<(), WsError> {
        let mut chunk = [0u8; INITIAL_BUFFER];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(WsError::Closed("the stream ended".into()));
        }
        self.events.take(&chunk[..n]);
        Ok(())
    }

    /// The next event's data, valid until the next call.
    pub(crate) async fn next_event(&mut self) -> Result<&[u8], WsError> {
        while !self.events.next()? {
            self.read_more().await?;
        }
        Ok(self.events.event())
    }

    /// The plain socket (still non-blocking) and what was read from it but
    /// not yet handed out, for a caller that reads on a thread of its own.
    pub(crate) fn into_std(self) -> std::io::Result<(std::net::TcpStream, Events)> {
        Ok((self.stream.into_std()?, self.events))
    }
}

impl Events {
    /// Adds bytes read from the stream.
    pub(crate) fn take(&mut self, bytes: &[u8]) {
        self.raw.extend_from_slice(bytes);
    }

    /// Cuts the next event out of the bytes taken: true if there was a
    /// whole one, now in [`event`](Self::event).
    pub(crate) fn next(&mut self) -> Result<bool, WsError> {
        self.dechunk()?;
        let pending = &self.body[self.body_start..];
        let Some(end) = memchr::memmem::find(pending, b"\n\n") else { return Ok(false) };
        self.event.clear();
        for line in pending[..end].split(|b| *b == b'\n') {
            if let Some(data) = line.strip_prefix(b"data: ") {
                if !self.event.is_empty() {
                    self.event.push(b'\n');
                }
                self.event.extend_from_slice(data);
            }
        }
        self.body_start += end + 2;
        Ok(true)
    }

    /// The data of the event [`next`](Self::next) found.
    pub(crate) fn event(&self) -> &[u8] {
        &self.event
    }

    /// Moves the whole chunks of `raw` into `body`.
    fn dechunk(&mut self) -> Result<(), WsError> {
        loop {
            let rest = &self.raw[self.start..];
            let Some(line_end) = memchr::memmem::find(rest, b"\r\n") else { break };
            let size = std::str::from_utf8(&rest[..line_end])
                .ok()
                .and_then(|text| usize::from_str_radix(text.trim(), 16).ok())
                .ok_or_else(|| protocol("a chunk size that is not hex"))?;
            if size == 0 {
                return Err(WsError::Closed("the stream ended".into()));
            }
            if size > MAX_EVENT {
                return Err(protocol("a chunk over 64 MiB"));
            }
            let data = line_end + 2;
            if rest.len() < data + size + 2 {
                break;
            }
            if self.body_start > 0 && self.body_start == self.body.len() {
                self.body.clear();
                self.body_start = 0;
            }
            self.body.extend_from_slice(&rest[data..data + size]);
            self.start += data + size + 2;
        }
        if self.start == self.raw.len() {
            self.raw.clear();
            self.start = 0;
        }
        Ok(())
    }
}
