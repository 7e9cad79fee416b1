//! A request that becomes a long-lived stream takes its connection away
//! from hyper.
//!
//! hyper keeps two 8 KiB buffers for every HTTP/1 connection it serves (the
//! one it reads requests into and the one it writes response heads from),
//! for as long as the connection lives. A WebSocket leaves hyper at its
//! upgrade; an HTTP-streaming or SSE response used to stay, and an idle SSE
//! client cost about ten times what an idle WebSocket client costs. A
//! handler that opens such a stream now asks for the connection instead
//! ([`Takeover::take`]) with what to run on it: the connection's socket
//! ([`Takeable`]) stops serving hyper, hyper ends, and the connection's
//! task hands the bare socket to the stream ([`Slot::taken`]).
//!
//! A handler takes its connection over once it has read the request's body
//! whole (the stream handlers read a POST's). A GET's body, which no client
//! sends, is left unread: what hyper had read of it is dropped, and the
//! stream ends on any byte that comes after. Bytes hyper read past
//! the request go with hyper, and so would an earlier response of the
//! connection that hyper had not finished writing: only a client that
//! pipelines requests (which no browser does) could send either.
//!
//! While hyper serves the connection, its socket also keeps the deadline
//! of hyper's writes: a response that cannot be written for
//! `http.handshake_timeout` (its client stopped reading, its window shut)
//! ends the connection, which would otherwise hold its place, buffers and
//! unsent bytes for as long as the client keeps the window closed.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::transport::io::{IntoIo, Io};

/// What to run on a connection once it is taken over.
pub(crate) type Then = Box<dyn FnOnce(Io) + Send>;

/// A connection's takeover, shared by its socket (inside hyper), its
/// requests (as an extension) and its task.
#[derive(Default)]
pub(crate) struct Slot {
    /// Set once a handler asked for the connection: from then on the
    /// socket refuses hyper every read and write.
    requested: AtomicBool,
    handed: Mutex<Handed>,
}

#[derive(Default)]
struct Handed {
    then: Option<Then>,
    io: Option<Io>,
}

impl Slot {
    fn requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    fn handed(&self) -> std::sync::MutexGuard<'_, Handed> {
        self.handed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The socket and what to run on it, once hyper is done with a
    /// connection a handler took over; `None` for every other connection.
    pub(crate) fn taken(&self) -> Option<(Io, Then)> {
        if !self.requested() {
            return None;
        }
        let mut handed = self.handed();
        Some((handed.io.take()?, handed.then.take()?))
    }
}

/// A request's way to take its connection over (a request extension).
#[derive(Clone)]
pub(crate) struct Takeover(pub(crate) Arc<Slot>);

impl Takeover {
    /// Asks for the connection, to run `then` on its socket once hyper has
    /// let it go. The response the handler then returns is never written:
    /// `then` writes its own.
    pub(crate) fn take(&self, then: Then) {
        self.0.handed().then = Some(then);
        self.0.requested.store(true, Ordering::Release);
    }
}

/// A connection's socket as hyper sees it, which a takeover takes back.
pub(crate) struct Takeable<IO: IntoIo> {
    io: Option<IO>,
    slot: Arc<Slot>,
    /// How long a write may wait for the client to read.
    write_timeout: Duration,
    /// When the write waiting since then gives up; none while writes go.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<IO: IntoIo> Takeable<IO> {
    pub(crate) fn new(io: IO, slot: Arc<Slot>, write_timeout: Duration) -> Self {
        Takeable { io: Some(io), slot, write_timeout, stalled: None }
    }

    /// `polled`, a write's (or flush's) outcome, with the deadline kept: a
    /// write that has to wait starts it, one that goes clears it, and one
    /// still waiting when it passes fails.
    fn deadline<T>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let timeout = self.write_timeout;
        let stalled = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stalled.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                let why = "the client did not read the response within http.handshake_timeout";
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why)))
            }
        }
    }

    /// The socket itself, while hyper may still use it; an error once it
    /// is taken over, which ends hyper's connection.
    fn io(&mut self) -> io::Result<Pin<&mut IO>> {
        match self.io.as_mut() {
            Some(io) if !self.slot.requested() => Ok(Pin::new(io)),
            _ => Err(io::Error::other("the connection was taken over by a stream")),
        }
    }
}

impl<IO: IntoIo> Drop for Takeable<IO> {
    fn drop(&mut self) {
        if self.slot.requested() {
            if let Some(io) = self.io.take() {
                self.slot.handed().io = Some(io.into_io());
            }
        }
    }
}

impl<IO: IntoIo> AsyncRead for Takeable<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.io()?.poll_read(cx, buf)
    }
}

impl<IO: IntoIo> AsyncWrite for Takeable<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = self.io()?.poll_write(cx, buf);
        self.deadline(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = self.io()?.poll_write_vectored(cx, bufs);
        self.deadline(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(IO::is_write_vectored)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = self.io()?.poll_flush(cx);
        self.deadline(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = self.io()?.poll_shutdown(cx);
        self.deadline(cx, polled)
    }
}

/// The socket under a connection hyper upgraded (a WebSocket), and the
/// bytes hyper had read past the handshake: the bare TCP or TLS stream
/// when the connection is one of the node's, else hyper's upgraded one.
pub(crate) fn upgraded_io(upgraded: Upgraded) -> (Io, Bytes) {
    let upgraded = match upgraded.downcast::<TokioIo<Takeable<TcpStream>>>() {
        Ok(parts) => return bare(parts.io.into_inner(), parts.read_buf, Io::Tcp),
        Err(upgraded) => upgraded,
    };
    type Tls = tokio_rustls::server::TlsStream<TcpStream>;
    match upgraded.downcast::<TokioIo<Takeable<Tls>>>() {
        Ok(parts) => bare(parts.io.into_inner(), parts.read_buf, |tls| Io::Boxed(Box::new(tls))),
        Err(upgraded) => (Io::Boxed(Box::new(TokioIo::new(upgraded))), Bytes::new()),
    }
}

fn bare<IO: IntoIo>(mut socket: Takeable<IO>, read_ahead: Bytes, io: impl FnOnce(IO) -> Io) -> (Io, Bytes) {
    match socket.io.take() {
        Some(inner) => (io(inner), read_ahead),
        // Never so: only a takeover's drop takes the socket out. A socket
        // at its end, should it be.
        None => (Io::Boxed(Box::new(tokio::io::duplex(1).0)), Bytes::new()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::routing::get;
    use axum::{Extension, Router};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::oneshot;

    use super::*;
    use crate::http::ServeSettings;

    /// A node's HTTP serving with one route that takes its connection over
    /// and writes `taken:` and then what it reads, and one plain route.
    async fn serving() -> (std::net::SocketAddr, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let take = |Extension(takeover): Extension<Takeover>| async move {
            takeover.take(Box::new(|mut io| {
                tokio::spawn(async move {
                    write_all(&mut io, b"taken:".to_vec()).await.unwrap();
                    let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 16];
                    let mut buf = ReadBuf::uninit(&mut byte);
                    std::future::poll_fn(|cx| io.poll_read(cx, &mut buf)).await.unwrap();
                    write_all(&mut io, buf.filled().to_vec()).await.unwrap();
                });
            }));
            "never written"
        };
        let router = Router::new().route("/take", get(take)).route("/plain", get(|| async { "plain" }));
        // A connection hyper still held would keep the drain waiting 5 s.
        let settings = ServeSettings::plain(Duration::from_secs(5));
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = tokio::spawn(async move {
            crate::http::serve(listener, router, settings, async move { drop(stopped.await) }).await;
        });
        (addr, stop, serving)
    }

    /// The size of `/large`'s answer: far more than the socket buffers
    /// between a client that does not read and the node hold.
    const LARGE: usize = 32 << 20;

    #[tokio::test]
    async fn a_client_that_stops_reading_a_response_loses_its_connection_after_the_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route("/large", get(|| async { vec![b'x'; LARGE] }));
        let mut settings = ServeSettings::plain(Duration::from_secs(5));
        settings.handshake_timeout = Duration::from_millis(300);
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = tokio::spawn(async move {
            crate::http::serve(listener, router, settings, async move { drop(stopped.await) }).await;
        });
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut client = socket.connect(addr).await.unwrap();
        client.write_all(b"GET /large HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        // Not reading, for longer than the deadline: only the clock itself to wait for.
        tokio::time::sleep(Duration::from_millis(1500)).await;

        let mut received = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut received)).await;
        assert!(read.is_ok(), "the node closed the connection: reading it came to an end");
        assert!(received.len() < LARGE, "the response was cut off, not written whole: {} bytes", received.len());
        drop(stop);
        serving.abort();
    }

    async fn write_all(io: &mut Io, mut bytes: Vec<u8>) -> io::Result<()> {
        let mut written = 0;
        std::future::poll_fn(|cx| io.poll_write_out(cx, &mut bytes, &mut written)).await
    }

    #[tokio::test]
    async fn a_request_that_takes_its_connection_over_gets_the_bare_socket_and_hyper_writes_nothing() {
        let (addr, stop, serving) = serving().await;
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        client.write_all(b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut plain = vec![0; 512];
        let read = client.read(&mut plain).await.unwrap();
        assert!(String::from_utf8_lossy(&plain[..read]).ends_with("\r\n\r\nplain"), "served by hyper as before");

        client.write_all(b"GET /take HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut taken = [0; 6];
        client.read_exact(&mut taken).await.unwrap();
        assert_eq!(&taken, b"taken:", "the handler's response is never written: the socket's new owner writes");

        // hyper has let the connection go: the node's HTTP connections
        // drain at once on shutdown while the taken one stays open.
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(2), serving).await.expect("no HTTP connection left").unwrap();
        client.write_all(b"ping").await.unwrap();
        let mut echoed = [0; 4];
        client.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b"ping");
    }
}
