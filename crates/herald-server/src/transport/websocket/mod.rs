//! Herald's own server side of RFC 6455, under the [`Transport`] seam.
//!
//! Every client connection of a node is a WebSocket that idles far more
//! than it talks, so this one holds nothing between messages: bytes read
//! land in a buffer on the stack and are kept on the heap only while a
//! frame or message is unfinished, and frames to send are kept only while
//! a write is unfinished. Writes go straight to the socket: one system call
//! for everything the session drained at once.
//!
//! What it does for the client: answers pings, completes the closing
//! handshake (echoing the client's code), and fails the connection with
//! 1002 (protocol), 1007 (text that is not UTF-8), 1008 (a message not
//! whole within [`MESSAGE_DEADLINE`] of its first byte: a client cannot
//! keep a half-sent message's buffers, pinging between its fragments) or
//! 1009 (too large) when the client breaks the rules. A message or frame
//! above the limit is refused from its header, before its payload is
//! read. No extension is
//! negotiated (so no compression). `tests/autobahn.rs` holds it to the
//! Autobahn suite.
//!
//! Over plain TCP the socket is shared with the fanout, which writes a
//! publication's frame to it itself while the session lends it (`direct`):
//! the session lends it at the top of its loop with nothing half written,
//! and takes it back before it writes (`reclaim`).
//!
//! Every state survives a cancelled call: what is half read stays in
//! `input`, what is half written in `output` (written first by the next
//! call), so the session driver may drop a receive whenever something else
//! is ready.

mod direct;
mod frame;
#[cfg(test)]
mod tests;
mod upgrade;

use std::future::{poll_fn, Future};
use std::io;
use std::mem::MaybeUninit;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use herald_core::{Direct, Text};
use hyper::upgrade::Upgraded;
use tokio::io::ReadBuf;

use super::io::Io;
use super::{Inbound, Started, Transport, TransportError};
use frame::{Opcode, Violation};

pub(crate) use direct::SharedTcp;
pub(crate) use upgrade::WsUpgrade;

/// How long the reply to a client's close frame, or the client's reply to
/// ours, may take.
const CLOSE_REPLY: Duration = Duration::from_secs(1);

/// Bytes read at a time, into a buffer on the stack.
const READ_CHUNK: usize = 4096;

/// The largest frame written from the stack (`poll_write_lone`): a
/// publication's frame is usually a few hundred bytes.
const LONE_FRAME: usize = 512;

/// Frames up to this size are written from a smaller buffer: zeroing the
/// buffer costs about as much as writing the frame into it.
const SMALL_FRAME: usize = 256;

/// How long a message (a frame, or a fragmented message's frames) may
/// take to arrive whole, from its first byte.
pub(crate) const MESSAGE_DEADLINE: Duration = Duration::from_secs(30);

/// Pongs owed past this many unwritten bytes stop the reading: a client
/// that pings without reading the answers does not make the server queue
/// them without end.
const MAX_OWED: usize = 64 * 1024;

/// One client's WebSocket.
#[derive(Debug)]
pub(crate) struct WebSocket {
    io: Io,
    /// Bytes read and not yet taken as frames; empty, and unallocated,
    /// between frames.
    input: Vec<u8>,
    /// A fragmented message whose last frame has not come.
    partial: Option<Box<Partial>>,
    /// While a message is unfinished (bytes in `input`, or `partial`):
    /// when it must be whole.
    unfinished: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// Frames to send, written up to `written`; empty, and unallocated,
    /// when all is written.
    output: Vec<u8>,
    written: usize,
    max_message_size: usize,
    /// A close frame has been sent: nothing more may be.
    close_sent: bool,
    /// The client only listens (`/connection/uni_websocket`): only the
    /// transport's name in metrics tells the two apart.
    listen_only: bool,
    /// The socket may be lent to the fanout (`direct`): it is taken back
    /// before anything is written.
    lent: bool,
    /// The fanout's batched send to the socket may have been written in
    /// part ([`direct::Lost`]): nothing more is written, and the
    /// connection goes with the session.
    lost: bool,
}

#[derive(Debug)]
struct Partial {
    binary: bool,
    bytes: Vec<u8>,
    /// How much of a text message's bytes are known to be UTF-8.
    checked: usize,
}

impl Partial {
    /// Adds a fragment. A text message fails as soon as its bytes so far
    /// cannot begin UTF-8 text, not only once it is whole.
    fn extend(&mut self, fragment: &[u8]) -> Result<(), Violation> {
        self.bytes.extend_from_slice(fragment);
        if self.binary {
            return Ok(());
        }
        let unchecked = self.bytes.get(self.checked..).unwrap_or_default();
        let valid = match std::str::from_utf8(unchecked) {
            Ok(text) => text.len(),
            // A character cut by the end of the fragment may go on in the next.
            Err(error) if error.error_len().is_none() => error.valid_up_to(),
            Err(_) => return Err(Violation::NotUtf8),
        };
        self.checked = self.checked.saturating_add(valid);
        Ok(())
    }
}

/// What reading frames came to.
#[derive(Debug)]
enum Read {
    Message(Inbound),
    Ping(Vec<u8>),
    Close(Option<u16>),
    /// The client closed the connection without a close frame.
    Eof,
}

#[derive(Debug)]
enum ReadError {
    Violation(Violation),
    Io(io::Error),
}

impl WebSocket {
    /// The WebSocket on a connection hyper has upgraded, taking messages up
    /// to `max_message_size` bytes.
    pub(crate) fn new(upgraded: Upgraded, max_message_size: usize) -> WebSocket {
        let (io, read_ahead) = crate::http::takeover::upgraded_io(upgraded);
        WebSocket::over(io, read_ahead.to_vec(), max_message_size)
    }

    pub(crate) fn over(io: Io, read_ahead: Vec<u8>, max_message_size: usize) -> WebSocket {
        let io = match io {
            Io::Tcp(tcp) => Io::Shared(Arc::new(SharedTcp::new(tcp))),
            other => other,
        };
        WebSocket {
            io,
            input: read_ahead,
            partial: None,
            unfinished: None,
            output: Vec::new(),
            written: 0,
            max_message_size,
            close_sent: false,
            listen_only: false,
            lent: false,
            lost: false,
        }
    }

    /// The same WebSocket, named `uni_websocket`: its client only listens.
    pub(crate) fn listen_only(self) -> WebSocket {
        WebSocket { listen_only: true, ..self }
    }

    /// The next frame that means something to the caller, reading as
    /// needed; pongs are skipped and fragments gathered.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Result<Read, ReadError>> {
        // A pong owed from before goes out as soon as the socket takes it;
        // past `MAX_OWED` nothing more is read until it has.
        if self.written < self.output.len() {
            let owed = self.poll_write_owed(cx);
            if owed.is_pending() && self.output.len().saturating_sub(self.written) > MAX_OWED {
                return Poll::Pending;
            }
        }
        loop {
            if let Some(read) = self.next_frame().map_err(ReadError::Violation)? {
                if matches!(read, Read::Message(_)) {
                    // What follows in `input` begins a message of its own.
                    self.unfinished = None;
                }
                return Poll::Ready(Ok(read));
            }
            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut buf = ReadBuf::uninit(&mut chunk);
            if self.io.poll_read(cx, &mut buf).map_err(ReadError::Io)?.is_pending() {
                // Nothing more to read: an unfinished message is held to its
                // deadline (not before what already arrived is read).
                return match self.input.is_empty() && self.partial.is_none() {
                    true => {
                        self.unfinished = None;
                        Poll::Pending
                    }
                    false => {
                        let deadline =
                            self.unfinished.get_or_insert_with(|| Box::pin(tokio::time::sleep(MESSAGE_DEADLINE)));
                        match deadline.as_mut().poll(cx) {
                            Poll::Ready(()) => Poll::Ready(Err(ReadError::Violation(Violation::Unfinished))),
                            Poll::Pending => Poll::Pending,
                        }
                    }
                };
            }
            if buf.filled().is_empty() {
                return Poll::Ready(Ok(Read::Eof));
            }
            self.input.extend_from_slice(buf.filled());
        }
    }

    /// Takes whole frames from `input` until one means something to the
    /// caller; `None` when the next frame has not all arrived.
    fn next_frame(&mut self) -> Result<Option<Read>, Violation> {
        loop {
            let Some(header) = frame::parse_header(&self.input, self.max_message_size)? else {
                return Ok(None);
            };
            let end = header.header_len.checked_add(header.len).ok_or(Violation::TooLarge)?;
            let Some(masked) = self.input.get(header.header_len..end) else {
                return Ok(None);
            };
            let mut payload = masked.to_vec();
            if self.input.len() == end {
                self.input = Vec::new();
            } else {
                self.input.drain(..end);
            }
            frame::unmask(&mut payload, header.mask);
            let binary = match header.opcode {
                Opcode::Pong => continue,
                Opcode::Ping => return Ok(Some(Read::Ping(payload))),
                Opcode::Close => return Ok(Some(Read::Close(frame::close_code(&payload)?))),
                Opcode::Continuation => {
                    let partial = self
                        .partial
                        .as_mut()
                        .ok_or(Violation::Protocol("a continuation with no message to continue"))?;
                    let total = partial.bytes.len().saturating_add(payload.len());
                    if total > self.max_message_size {
                        return Err(Violation::TooLarge);
                    }
                    partial.extend(&payload)?;
                    if !header.fin {
                        continue;
                    }
                    let Some(whole) = self.partial.take() else { continue };
                    return message(whole.binary, whole.bytes).map(|m| Some(Read::Message(m)));
                }
                Opcode::Text => false,
                Opcode::Binary => true,
            };
            if self.partial.is_some() {
                return Err(Violation::Protocol("a new message began before the last one ended"));
            }
            if header.fin {
                return message(binary, payload).map(|m| Some(Read::Message(m)));
            }
            let mut partial = Box::new(Partial { binary, bytes: Vec::new(), checked: 0 });
            partial.extend(&payload)?;
            self.partial = Some(partial);
        }
    }

    /// Writes what is owed; `output` is let go once all of it is written.
    fn poll_write_owed(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Err(error) = self.reclaim() {
            return Poll::Ready(Err(error));
        }
        self.io.poll_write_out(cx, &mut self.output, &mut self.written)
    }

    /// Takes the socket back from the fanout, before anything is written:
    /// the rest of a frame the fanout began is owed ahead of everything
    /// not yet written. An error once the stream can take nothing more.
    fn reclaim(&mut self) -> io::Result<()> {
        if std::mem::replace(&mut self.lent, false) {
            if let Io::Shared(socket) = &self.io {
                match socket.take_back() {
                    Ok(Some(rest)) => {
                        let at = self.written.min(self.output.len());
                        self.output.splice(at..at, rest.iter().copied());
                    }
                    Ok(None) => {}
                    Err(direct::Lost) => self.lost = true,
                }
            }
        }
        match self.lost {
            true => Err(io::Error::other("a send to this connection failed part way: it closes without a close frame")),
            false => Ok(()),
        }
    }

    /// Writes one frame when nothing is owed, from the stack: header and
    /// payload in one buffer for one write, with no allocation. What the
    /// socket does not take at once becomes owed, for `poll_write_owed`.
    /// A frame too large for the buffer, or behind owed bytes, is queued.
    fn poll_write_lone(&mut self, cx: &mut Context<'_>, opcode: Opcode, payload: &[u8]) -> Poll<io::Result<()>> {
        if let Err(error) = self.reclaim() {
            return Poll::Ready(Err(error));
        }
        match frame::frame_len(payload.len()) <= SMALL_FRAME {
            true => self.poll_write_lone_in::<SMALL_FRAME>(cx, opcode, payload),
            false => self.poll_write_lone_in::<LONE_FRAME>(cx, opcode, payload),
        }
    }

    /// [`Self::poll_write_lone`] from a buffer of `N` bytes.
    fn poll_write_lone_in<const N: usize>(
        &mut self,
        cx: &mut Context<'_>,
        opcode: Opcode,
        payload: &[u8],
    ) -> Poll<io::Result<()>> {
        let mut buffer = [0u8; N];
        let written = match self.output.is_empty() {
            true => frame::write_frame_into(&mut buffer, opcode, payload),
            false => None,
        };
        let Some(frame) = written.and_then(|len| buffer.get(..len)) else {
            self.queue(opcode, payload);
            return self.poll_write_owed(cx);
        };
        let taken = match self.io.poll_write(cx, frame) {
            Poll::Ready(Ok(taken)) => taken,
            Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
            Poll::Pending => 0,
        };
        self.output.extend_from_slice(frame.get(taken..).unwrap_or_default());
        self.poll_write_owed(cx)
    }

    /// Starts sending one message (a text one is UTF-8: [`Text`]), written
    /// at once where the socket takes it (`poll_write_lone`).
    fn start_lone(&mut self, cx: &mut Context<'_>, opcode: Opcode, payload: &[u8]) -> Result<Started, TransportError> {
        if self.close_sent {
            return Err(TransportError::Broken("the WebSocket is closing".into()));
        }
        started(self.poll_write_lone(cx, opcode, payload))
    }

    /// Sends one binary message (the conformance echo and tests; sessions
    /// send through the driver's `start_binary`).
    #[cfg(any(test, feature = "conformance"))]
    pub(crate) async fn send_binary(&mut self, bytes: Bytes) -> Result<(), TransportError> {
        super::send_started(self, |socket, cx| socket.start_binary(cx, bytes)).await
    }

    /// Queues a frame behind what is owed.
    fn queue(&mut self, opcode: Opcode, payload: &[u8]) {
        self.output.reserve(frame::frame_len(payload.len()));
        frame::write_frame(&mut self.output, opcode, payload);
    }

    /// Sends a close frame with `payload` (once), then, when
    /// `wait_for_reply`, waits for the client's, so the client reads ours
    /// before the connection goes; all of it within `CLOSE_REPLY`.
    async fn send_close(&mut self, payload: &[u8], wait_for_reply: bool) {
        if std::mem::replace(&mut self.close_sent, true) {
            return;
        }
        self.queue(Opcode::Close, payload);
        let exchange = async {
            if poll_fn(|cx| self.poll_write_owed(cx)).await.is_err() || !wait_for_reply {
                return;
            }
            while let Ok(Read::Message(_) | Read::Ping(_)) = poll_fn(|cx| self.poll_read(cx)).await {}
        };
        let _ = tokio::time::timeout(CLOSE_REPLY, exchange).await;
    }

    /// What ends reading: the client's close (answered), the connection
    /// lost, or the client's mistake (told with its code, unless it is one
    /// the session answers in its own protocol's terms).
    async fn end_reading(&mut self, ending: Result<Read, ReadError>) -> Result<Option<Inbound>, TransportError> {
        match ending {
            Ok(Read::Message(message)) => Ok(Some(message)),
            Ok(Read::Close(code)) => {
                // The closing handshake: the client's code echoed.
                let payload = code.map(u16::to_be_bytes);
                self.send_close(payload.as_ref().map_or(&[][..], |code| &code[..]), false).await;
                Ok(None)
            }
            Ok(Read::Ping(_) | Read::Eof) => Ok(None),
            Err(ReadError::Violation(Violation::TooLarge)) => Err(TransportError::TooLarge),
            Err(ReadError::Violation(violation)) => {
                self.send_close(&frame::close_payload(violation.code(), violation.reason()), false).await;
                Err(TransportError::Broken(violation.reason().to_owned()))
            }
            Err(ReadError::Io(error)) => Err(TransportError::Broken(error.to_string())),
        }
    }
}

/// What a write that may be owed came to, as a start.
fn started(written: Poll<io::Result<()>>) -> Result<Started, TransportError> {
    match written {
        Poll::Ready(Ok(())) => Ok(Started::Written),
        Poll::Ready(Err(error)) => Err(broken(error)),
        Poll::Pending => Ok(Started::Owed),
    }
}

/// A whole message: text must be UTF-8.
fn message(binary: bool, bytes: Vec<u8>) -> Result<Inbound, Violation> {
    if binary {
        return Ok(Inbound::Binary(Bytes::from(bytes)));
    }
    match String::from_utf8(bytes) {
        Ok(text) => Ok(Inbound::Text(Bytes::from(text))),
        Err(_) => Err(Violation::NotUtf8),
    }
}

impl Transport for WebSocket {
    fn name(&self) -> &'static str {
        match self.listen_only {
            true => "uni_websocket",
            false => "websocket",
        }
    }

    async fn recv(&mut self) -> Result<Option<Inbound>, TransportError> {
        loop {
            match poll_fn(|cx| self.poll_read(cx)).await {
                Ok(Read::Message(message)) => return Ok(Some(message)),
                // Written by the next read, first thing, or before
                // whatever is sent next.
                Ok(Read::Ping(payload)) => self.queue(Opcode::Pong, &payload),
                // Boxed: inline, the end's futures would sit in every idle
                // connection's task.
                ending => return Box::pin(self.end_reading(ending)).await,
            }
        }
    }

    fn start_texts<I>(&mut self, cx: &mut Context<'_>, texts: I) -> Result<Started, TransportError>
    where
        I: IntoIterator<Item = Text>,
    {
        if self.close_sent {
            return Err(TransportError::Broken("the WebSocket is closing".into()));
        }
        let mut texts = texts.into_iter();
        let Some(first) = texts.next() else { return started(self.poll_write_owed(cx)) };
        let Some(second) = texts.next() else { return self.start_lone(cx, Opcode::Text, first.as_bytes()) };
        for text in [first, second].into_iter().chain(texts) {
            self.queue(Opcode::Text, text.as_bytes());
        }
        started(self.poll_write_owed(cx))
    }

    fn start_binary(&mut self, cx: &mut Context<'_>, bytes: Bytes) -> Result<Started, TransportError> {
        self.start_lone(cx, Opcode::Binary, &bytes)
    }

    fn start_owed(&mut self, cx: &mut Context<'_>) -> Result<Started, TransportError> {
        started(self.poll_write_owed(cx))
    }

    async fn send_owed(&mut self) -> Result<(), TransportError> {
        poll_fn(|cx| self.poll_write_owed(cx)).await.map_err(broken)
    }

    async fn close(&mut self, code: u16, reason: String) {
        self.send_close(&frame::close_payload(code, &reason), true).await;
    }

    fn direct(&self) -> Option<Arc<dyn Direct>> {
        match &self.io {
            Io::Shared(socket) => Some(socket.clone()),
            Io::Tcp(_) | Io::Boxed(_) => None,
        }
    }

    fn lend(&mut self, binary: bool) {
        let Io::Shared(socket) = &self.io else { return };
        if self.output.is_empty() && !self.close_sent && !self.lost {
            socket.lend(if binary { Opcode::Binary } else { Opcode::Text });
            self.lent = true;
        }
    }
}

fn broken(error: io::Error) -> TransportError {
    TransportError::Broken(error.to_string())
}
