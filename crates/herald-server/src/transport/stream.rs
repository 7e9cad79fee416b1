//! An HTTP response that stays open as a transport: HTTP-streaming (one
//! message per line) and Server-Sent Events (one message per event).
//!
//! The request that opens a stream takes its connection from hyper
//! (`crate::http::takeover`), so the stream holds what a WebSocket holds:
//! the socket, and bytes to write only while a write is unfinished. The
//! response's head goes out first; each write of the session's (everything
//! it had queued) is then one chunk of the chunked transfer coding (an
//! HTTP/1.0 client gets the bytes bare, and the end of the connection ends
//! the response). A client that stops reading makes the writes owed, and
//! the session driver closes it as slow, as it would a WebSocket.
//!
//! What the client sends arrives apart from the socket: the request that
//! opened the stream (its connect command) and, for bidirectional
//! emulation, the commands it posts to `/emulation` afterwards, through
//! its inbox (`transport::posted`). The socket itself only says when the
//! client has gone; a client that sends anything more on it is cut off.
//!
//! A Protobuf stream carries length-delimited messages as they are, in
//! both directions.
//!
//! A stream has no close frame: the session's close code goes out as a
//! Centrifuge disconnect push, and then the response ends. A
//! uni-directional event stream also names, in its events' ids, where the
//! client is in each channel (`centrifuge::positions`), for `EventSource`
//! to send back when it reconnects.

use std::future::poll_fn;
use std::io::{self, Write};
use std::mem::MaybeUninit;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use herald_core::Text;
use tokio::io::ReadBuf;

use super::io::Io;
use super::posted::Posted;
use super::{Inbound, Started, Transport, TransportError};
use crate::centrifuge::positions::Positions;

/// Room left before a chunk's bytes for its size line: up to 16 hex digits
/// and a line end.
const CHUNK_ROOM: usize = 18;

/// The chunk that ends a chunked response.
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// How long the session's last words and the response's end may take to
/// leave.
const CLOSE_WRITE: Duration = Duration::from_secs(1);

/// How messages are written into the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// HTTP-streaming: each message ends with a newline.
    Lines,
    /// Server-Sent Events: each line of a message is a `data:` field, and
    /// a blank line ends the event.
    Events,
    /// Protobuf HTTP-streaming: length-delimited messages end to end, in
    /// and out.
    Binary,
}

/// How the session's close is told to the client before the stream ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closing {
    /// As a push, for a client speaking the bidirectional protocol.
    Push,
    /// As a bare disconnect object, for a uni-directional client.
    Bare,
}

/// Where a session's messages come from.
#[derive(Debug)]
pub(crate) enum Commands {
    /// Only the request that opened the stream (uni-directional).
    First(Bytes),
    /// The opening command and the ones posted to `/emulation` after it.
    Posted(Posted),
    /// A uni-directional session's request, once taken: nothing more
    /// comes.
    Taken,
}

/// How the stream's response is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Coding {
    /// HTTP/1.1: each write one chunk, and a last chunk at the end.
    Chunked,
    /// HTTP/1.0: the bytes as they are, ended by closing the connection.
    Bare,
}

/// A session's stream, on the connection it took over.
#[derive(Debug)]
pub(crate) struct StreamTransport<Held: Send = ()> {
    io: Io,
    coding: Coding,
    /// Bytes to write, written up to `written`; empty, and unallocated,
    /// when all is written.
    output: Vec<u8>,
    written: usize,
    /// Where the session's messages come from; the opening request is
    /// taken once.
    commands: Commands,
    format: Format,
    closing: Closing,
    /// For a uni-directional event stream: its positions, sent as event
    /// ids, until none is left to follow.
    positions: Option<Box<Positions>>,
    /// The response has ended: nothing more may be written.
    ended: bool,
    /// Kept for as long as the session runs (its place in the node's count
    /// of live sessions and under the node's caps).
    _held: Held,
}

/// What the stream's response needs besides the socket.
#[derive(Debug)]
pub(crate) struct Opening<Held> {
    /// The response's status line and headers, ending with the blank line.
    pub(crate) head: Vec<u8>,
    pub(crate) coding: Coding,
    pub(crate) format: Format,
    pub(crate) closing: Closing,
    pub(crate) commands: Commands,
    pub(crate) held: Held,
}

impl<Held: Send> StreamTransport<Held> {
    /// The stream over `io`, its response's head written at once where the
    /// socket takes it (else owed, ahead of everything else).
    pub(crate) fn over(io: Io, opening: Opening<Held>) -> Self {
        let Opening { head, coding, format, closing, commands, held } = opening;
        // A uni-directional event stream's ids let `EventSource` recover.
        let positions = (format == Format::Events && closing == Closing::Bare).then(Box::default);
        let mut stream = StreamTransport {
            io,
            coding,
            output: head,
            written: 0,
            commands,
            format,
            closing,
            positions,
            ended: false,
            _held: held,
        };
        stream.try_write_owed();
        stream
    }

    /// Writes what is owed as far as the socket takes it now, with no task
    /// to wake yet: the next send writes the rest (and over TLS flushes
    /// what the TLS layer kept).
    fn try_write_owed(&mut self) {
        let _ = self.poll_write_owed(&mut Context::from_waker(std::task::Waker::noop()));
    }

    /// Appends `message` to `out` as this stream writes it.
    fn put_frame(&mut self, out: &mut Vec<u8>, message: &[u8]) {
        if let Some(positions) = self.positions.as_mut() {
            if let Some(id) = positions.observe(message) {
                out.extend_from_slice(b"id: ");
                out.extend_from_slice(id.as_bytes());
                out.push(b'\n');
            }
            if positions.follows_nothing() {
                // No event will carry an id: its pushes are not read again.
                self.positions = None;
            }
        }
        match self.format {
            Format::Lines => {
                out.extend_from_slice(message);
                out.push(b'\n');
            }
            Format::Binary => out.extend_from_slice(message),
            Format::Events => {
                for line in message.split(|byte| *byte == b'\n') {
                    out.extend_from_slice(b"data: ");
                    out.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
                    out.push(b'\n');
                }
                out.push(b'\n');
            }
        }
    }

    /// Queues `chunk` (its bytes after [`CHUNK_ROOM`]) behind what is
    /// owed, as one chunk of the response. Nothing owed, it becomes the
    /// output as it is, its size line written into the room before it.
    fn queue(&mut self, mut chunk: Vec<u8>) {
        let size = chunk.len().saturating_sub(CHUNK_ROOM);
        if size == 0 {
            return;
        }
        let start = match self.coding {
            Coding::Bare => CHUNK_ROOM,
            Coding::Chunked => {
                let (line, len) = size_line(size);
                let start = CHUNK_ROOM.saturating_sub(len);
                if let (Some(room), Some(line)) = (chunk.get_mut(start..CHUNK_ROOM), line.get(..len)) {
                    room.copy_from_slice(line);
                }
                chunk.extend_from_slice(b"\r\n");
                start
            }
        };
        if self.output.is_empty() {
            self.output = chunk;
            self.written = start;
        } else {
            self.output.extend_from_slice(chunk.get(start..).unwrap_or_default());
        }
    }

    /// Writes what is owed; `output` is let go once all of it is written.
    fn poll_write_owed(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io.poll_write_out(cx, &mut self.output, &mut self.written)
    }

    /// Queues one chunk made by `frame` and writes what the socket takes.
    fn start(
        &mut self,
        cx: &mut Context<'_>,
        frame: impl FnOnce(&mut Self, &mut Vec<u8>),
    ) -> Result<Started, TransportError> {
        if self.ended {
            return Err(TransportError::Broken("the stream has ended".into()));
        }
        let mut chunk = vec![0; CHUNK_ROOM];
        frame(self, &mut chunk);
        self.queue(chunk);
        self.start_owed(cx)
    }

    /// A message from the client, as the session takes it.
    fn inbound(&self, message: Bytes) -> Inbound {
        match self.format {
            Format::Binary => Inbound::Binary(message),
            Format::Lines | Format::Events => Inbound::Text(message),
        }
    }
}

/// A chunk's size line, `size` in hex then a line end, and its length:
/// on the stack, as it is made for every write.
fn size_line(size: usize) -> ([u8; CHUNK_ROOM], usize) {
    let mut line = [0u8; CHUNK_ROOM];
    let mut rest = &mut line[..];
    // Sixteen hex digits and a line end always fit.
    let _ = write!(rest, "{size:x}\r\n");
    let len = CHUNK_ROOM.saturating_sub(rest.len());
    (line, len)
}

/// Resolves once the client has gone: its end of the connection closed, or
/// reset (as a client does that closes with bytes unread). A client has
/// nothing to send on a stream's connection after the request that opened
/// it; anything it does send ends the stream.
fn poll_gone(io: &mut Io, cx: &mut Context<'_>) -> Poll<Result<Option<Inbound>, TransportError>> {
    let mut byte = [MaybeUninit::<u8>::uninit(); 1];
    let mut buf = ReadBuf::uninit(&mut byte);
    match ready!(io.poll_read(cx, &mut buf)) {
        Ok(()) if buf.filled().is_empty() => Poll::Ready(Ok(None)),
        Err(error) if error.kind() == io::ErrorKind::ConnectionReset => Poll::Ready(Ok(None)),
        Ok(()) => Poll::Ready(Err(TransportError::Broken(
            "the client sent bytes after the request that opened its stream".into(),
        ))),
        Err(error) => Poll::Ready(Err(broken(error))),
    }
}

fn broken(error: io::Error) -> TransportError {
    TransportError::Broken(error.to_string())
}

impl<Held: Send> Transport for StreamTransport<Held> {
    fn name(&self) -> &'static str {
        match (self.format, self.closing) {
            (Format::Lines | Format::Binary, Closing::Push) => "http_stream",
            (Format::Events, Closing::Push) => "sse",
            (Format::Lines | Format::Binary, Closing::Bare) => "uni_http_stream",
            (Format::Events, Closing::Bare) => "uni_sse",
        }
    }

    /// What the client sent next, else the client's end. One poll
    /// function, not a `select!` of two futures: the future is kept in
    /// every idle session's (see `size_tests`).
    async fn recv(&mut self) -> Result<Option<Inbound>, TransportError> {
        poll_fn(|cx| {
            let message = match &mut self.commands {
                Commands::First(first) => {
                    let first = std::mem::take(first);
                    self.commands = Commands::Taken;
                    Some(first)
                }
                Commands::Posted(posted) => match posted.poll_recv(cx) {
                    Poll::Ready(message) => Some(message),
                    Poll::Pending => None,
                },
                Commands::Taken => None,
            };
            match message {
                Some(message) => Poll::Ready(Ok(Some(self.inbound(message)))),
                None => poll_gone(&mut self.io, cx),
            }
        })
        .await
    }

    fn start_texts<I>(&mut self, cx: &mut Context<'_>, texts: I) -> Result<Started, TransportError>
    where
        I: IntoIterator<Item = Text>,
    {
        self.start(cx, |stream, chunk| {
            for text in texts {
                stream.put_frame(chunk, text.as_bytes());
            }
        })
    }

    /// Binary messages (Protobuf) are length-delimited already: they go
    /// into the stream as they are.
    fn start_binary(&mut self, cx: &mut Context<'_>, bytes: Bytes) -> Result<Started, TransportError> {
        self.start(cx, |_, chunk| chunk.extend_from_slice(&bytes))
    }

    fn start_owed(&mut self, cx: &mut Context<'_>) -> Result<Started, TransportError> {
        match self.poll_write_owed(cx) {
            Poll::Ready(Ok(())) => Ok(Started::Written),
            Poll::Ready(Err(error)) => Err(broken(error)),
            Poll::Pending => Ok(Started::Owed),
        }
    }

    async fn send_owed(&mut self) -> Result<(), TransportError> {
        poll_fn(|cx| self.poll_write_owed(cx)).await.map_err(broken)
    }

    async fn close(&mut self, code: u16, reason: String) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        let disconnect = serde_json::json!({ "code": code, "reason": reason });
        let message = match self.closing {
            Closing::Push => serde_json::json!({ "push": { "disconnect": disconnect } }),
            Closing::Bare => serde_json::json!({ "disconnect": disconnect }),
        };
        let mut chunk = vec![0; CHUNK_ROOM];
        match self.format {
            Format::Binary => chunk.extend_from_slice(
                &crate::centrifuge::protobuf::transcode(message.to_string().as_bytes()).unwrap_or_default(),
            ),
            Format::Lines | Format::Events => self.put_frame(&mut chunk, message.to_string().as_bytes()),
        }
        self.queue(chunk);
        if self.coding == Coding::Chunked {
            self.output.extend_from_slice(LAST_CHUNK);
        }
        let ending = async {
            if poll_fn(|cx| self.poll_write_owed(cx)).await.is_ok() {
                let _ = poll_fn(|cx| self.io.poll_shutdown(cx)).await;
            }
        };
        let _ = tokio::time::timeout(CLOSE_WRITE, ending).await;
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\n\r\n";

    /// A stream over a real socket, and the client's end of it.
    async fn open(
        format: Format,
        closing: Closing,
        coding: Coding,
        commands: Commands,
    ) -> (StreamTransport, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let opening = Opening { head: HEAD.to_vec(), coding, format, closing, commands, held: () };
        (StreamTransport::over(Io::Tcp(server), opening), client)
    }

    async fn uni(format: Format, coding: Coding) -> (StreamTransport, TcpStream) {
        open(format, Closing::Bare, coding, Commands::First(Bytes::from_static(b"{}"))).await
    }

    /// Exactly the next `expected.len()` bytes the client reads.
    async fn read_exactly(client: &mut TcpStream, expected: &str) {
        let mut read = vec![0; expected.len()];
        client.read_exact(&mut read).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&read), expected);
    }

    /// One chunk of the chunked coding, as the client reads it.
    fn chunk(bytes: &str) -> String {
        format!("{:x}\r\n{bytes}\r\n", bytes.len())
    }

    #[tokio::test]
    async fn the_head_goes_out_at_once_and_each_send_is_one_chunk() {
        let (mut stream, mut client) = uni(Format::Lines, Coding::Chunked).await;
        read_exactly(&mut client, "HTTP/1.1 200 OK\r\n\r\n").await;
        stream.send_texts([Text::from("{\"a\":1}"), Text::from("{\"b\":2}")]).await.unwrap();
        read_exactly(&mut client, &chunk("{\"a\":1}\n{\"b\":2}\n")).await;
        assert!(stream.output.capacity() == 0, "nothing is kept once written");
    }

    #[tokio::test]
    async fn events_put_every_line_in_a_data_field_and_end_with_a_blank_line() {
        let (mut stream, mut client) =
            open(Format::Events, Closing::Push, Coding::Chunked, Commands::First(Bytes::new())).await;
        stream.send_text(Text::from("{\"id\":1}\n{\"push\":{}}")).await.unwrap();
        read_exactly(&mut client, "HTTP/1.1 200 OK\r\n\r\n").await;
        read_exactly(&mut client, &chunk("data: {\"id\":1}\ndata: {\"push\":{}}\n\n")).await;
    }

    #[tokio::test]
    async fn a_close_is_a_disconnect_push_then_the_last_chunk_then_the_end() {
        let (mut stream, mut client) =
            open(Format::Lines, Closing::Push, Coding::Chunked, Commands::First(Bytes::new())).await;
        stream.close(3001, "shutdown".into()).await;
        let mut all = String::new();
        client.read_to_string(&mut all).await.unwrap();
        let disconnect = chunk("{\"push\":{\"disconnect\":{\"code\":3001,\"reason\":\"shutdown\"}}}\n");
        assert_eq!(all, format!("HTTP/1.1 200 OK\r\n\r\n{disconnect}0\r\n\r\n"));
        let after = stream.send_text(Text::from("{}")).await;
        assert!(after.is_err(), "nothing is sent after the end");
    }

    #[tokio::test]
    async fn an_http_1_0_client_gets_the_bytes_bare_and_a_close_ends_them() {
        let (mut stream, mut client) = uni(Format::Events, Coding::Bare).await;
        stream.close(3501, "bad request".into()).await;
        let mut all = String::new();
        client.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "HTTP/1.1 200 OK\r\n\r\ndata: {\"disconnect\":{\"code\":3501,\"reason\":\"bad request\"}}\n\n");
    }

    #[tokio::test]
    async fn a_uni_directional_event_stream_names_its_positions_in_event_ids() {
        let (mut stream, mut client) = uni(Format::Events, Coding::Chunked).await;
        let connect = r#"{"connect":{"subs":{"a":{"epoch":"e","offset":1}}}}"#;
        let publication = r#"{"channel":"a","pub":{"data":{},"offset":2}}"#;
        stream.send_texts([Text::from(connect), Text::from("{}"), Text::from(publication)]).await.unwrap();
        let events = [
            format!("id: {{\"a\":[\"e\",1]}}\ndata: {connect}\n\n"),
            "data: {}\n\n".to_owned(),
            format!("id: {{\"a\":[\"e\",2]}}\ndata: {publication}\n\n"),
        ];
        read_exactly(&mut client, "HTTP/1.1 200 OK\r\n\r\n").await;
        read_exactly(&mut client, &chunk(&events.concat())).await;
        assert!(stream.positions.is_some(), "a is still followed");
    }

    #[tokio::test]
    async fn a_uni_directional_event_stream_with_no_position_to_follow_stops_reading_its_pushes() {
        let (mut stream, mut client) = uni(Format::Events, Coding::Chunked).await;
        let connect = r#"{"connect":{"subs":{"news":{}}}}"#;
        stream.send_texts([Text::from(connect)]).await.unwrap();
        assert!(stream.positions.is_none(), "nothing to follow: no push is parsed for an id again");
        let publication = r#"{"channel":"news","pub":{"data":{},"offset":2}}"#;
        stream.send_texts([Text::from(publication)]).await.unwrap();
        read_exactly(&mut client, "HTTP/1.1 200 OK\r\n\r\n").await;
        read_exactly(&mut client, &chunk(&format!("data: {connect}\n\n"))).await;
        read_exactly(&mut client, &chunk(&format!("data: {publication}\n\n"))).await;
    }

    #[tokio::test]
    async fn a_uni_directional_session_receives_its_request_then_learns_the_client_left() {
        let (mut stream, client) = uni(Format::Lines, Coding::Chunked).await;
        assert_eq!(stream.recv().await, Ok(Some(Inbound::Text(Bytes::from_static(b"{}")))));
        drop(client);
        assert_eq!(stream.recv().await, Ok(None));
    }

    #[tokio::test]
    async fn an_emulated_session_receives_what_was_posted_until_the_client_leaves() {
        let emulation = crate::centrifuge::emulation::Emulation::new();
        let (posting, posted) = crate::transport::posted::inbox(emulation, 7.into(), true);
        let (mut stream, client) = open(Format::Binary, Closing::Push, Coding::Chunked, Commands::Posted(posted)).await;
        posting.try_post(Bytes::from_static(b"\x01\x02")).unwrap();
        assert_eq!(stream.recv().await, Ok(Some(Inbound::Binary(Bytes::from_static(b"\x01\x02")))));
        drop(client);
        assert_eq!(stream.recv().await, Ok(None), "the client's leaving is learnt from its socket");
    }

    #[tokio::test]
    async fn an_emulated_session_waiting_for_its_client_is_woken_by_a_post() {
        let emulation = crate::centrifuge::emulation::Emulation::new();
        let (posting, posted) = crate::transport::posted::inbox(emulation, 7.into(), false);
        let (mut stream, _client) = open(Format::Lines, Closing::Push, Coding::Chunked, Commands::Posted(posted)).await;
        let waiting = tokio::spawn(async move { stream.recv().await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "nothing posted yet, and the client is still there");
        posting.try_post(Bytes::from_static(b"{\"id\":1}")).unwrap();
        let received = tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await;
        assert_eq!(received.unwrap().unwrap(), Ok(Some(Inbound::Text(Bytes::from_static(b"{\"id\":1}")))));
    }

    #[tokio::test]
    async fn a_client_that_sends_more_on_its_streams_connection_is_cut_off() {
        let (mut stream, mut client) = uni(Format::Lines, Coding::Chunked).await;
        stream.recv().await.unwrap();
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(matches!(stream.recv().await, Err(TransportError::Broken(_))));
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_leaves_the_writes_owed_in_order() {
        let (mut stream, mut client) = uni(Format::Lines, Coding::Chunked).await;
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let big = "x".repeat(64 * 1024);
        let mut sent = 0;
        while stream.start_texts(&mut cx, [Text::from(big.clone())]) == Ok(Started::Written) {
            sent += 1;
        }
        assert_eq!(stream.start_texts(&mut cx, [Text::from("{\"last\":1}")]), Ok(Started::Owed), "kept behind");
        let blocked = tokio::time::timeout(Duration::from_millis(50), stream.send_owed()).await;
        assert!(blocked.is_err(), "the write waits for the client (and the driver's timeout)");

        let reading = tokio::spawn(async move {
            read_exactly(&mut client, "HTTP/1.1 200 OK\r\n\r\n").await;
            for _ in 0..=sent {
                read_exactly(&mut client, &chunk(&format!("{big}\n"))).await;
            }
            read_exactly(&mut client, &chunk("{\"last\":1}\n")).await;
        });
        stream.send_owed().await.unwrap();
        reading.await.unwrap();
    }
}
