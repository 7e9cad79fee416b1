//! The socket under a transport once hyper is out of the way: a WebSocket
//! after its upgrade, a streamed response after it took its connection over
//! (`crate::http::takeover`).

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::websocket::SharedTcp;

/// Any byte stream a transport can run over.
pub(crate) trait Socket: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Socket for T {}

/// A client's connection: plain TCP, or anything else (TLS, a connection
/// hyper could not hand back as TCP) boxed, so that it does not make every
/// plain connection larger. A WebSocket's plain TCP is shared with the
/// fanout, which writes to it while the session lends it
/// (`websocket::direct`): the session then reads and writes it through
/// `&`, as the fanout does.
pub(crate) enum Io {
    Tcp(TcpStream),
    Shared(Arc<SharedTcp>),
    Boxed(Box<dyn Socket>),
}

impl fmt::Debug for Io {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Io::Tcp(tcp) => f.debug_tuple("Tcp").field(tcp).finish(),
            Io::Shared(shared) => f.debug_tuple("Shared").field(&shared.stream).finish(),
            Io::Boxed(_) => f.write_str("Boxed"),
        }
    }
}

/// What a connection's stream becomes once a transport takes it.
pub(crate) trait IntoIo: Socket {
    fn into_io(self) -> Io;
}

impl IntoIo for TcpStream {
    fn into_io(self) -> Io {
        Io::Tcp(self)
    }
}

impl IntoIo for tokio_rustls::server::TlsStream<TcpStream> {
    fn into_io(self) -> Io {
        Io::Boxed(Box::new(self))
    }
}

impl Io {
    pub(crate) fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self {
            Io::Tcp(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Io::Shared(shared) => loop {
                ready!(shared.stream.poll_read_ready(cx))?;
                match shared.stream.try_read_buf(buf) {
                    // The readiness was stale: the next poll waits anew.
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                    read => return Poll::Ready(read.map(|_| ())),
                }
            },
            Io::Boxed(other) => Pin::new(other.as_mut()).poll_read(cx, buf),
        }
    }

    /// Over TCP, the write is tried first (`try_write`: the readiness flags
    /// looked at, then the system call). Nearly every write is taken at
    /// once; only one that would block goes through `poll_write`, which
    /// registers the task's waker for when the socket has room. That skips
    /// `poll_write`'s cooperative budget and readiness poll, about 80 of
    /// the 2,500 instructions a delivery costs in user space.
    pub(crate) fn poll_write(&mut self, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        match self {
            Io::Tcp(tcp) => match tcp.try_write(bytes) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => Pin::new(tcp).poll_write(cx, bytes),
                written => Poll::Ready(written),
            },
            Io::Shared(shared) => loop {
                match shared.stream.try_write(bytes) {
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                        ready!(shared.stream.poll_write_ready(cx))?
                    }
                    written => return Poll::Ready(written),
                }
            },
            Io::Boxed(other) => Pin::new(other.as_mut()).poll_write(cx, bytes),
        }
    }

    /// Writes `output` from `written` on, then flushes: what a transport
    /// owes its client. `output` is let go once all of it is written.
    pub(crate) fn poll_write_out(
        &mut self,
        cx: &mut Context<'_>,
        output: &mut Vec<u8>,
        written: &mut usize,
    ) -> Poll<io::Result<()>> {
        while let Some(rest) = output.get(*written..).filter(|rest| !rest.is_empty()) {
            let wrote = ready!(self.poll_write(cx, rest))?;
            if wrote == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written = written.saturating_add(wrote);
        }
        ready!(self.poll_flush(cx))?;
        *output = Vec::new();
        *written = 0;
        Poll::Ready(Ok(()))
    }

    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Io::Tcp(_) | Io::Shared(_) => Poll::Ready(Ok(())),
            Io::Boxed(other) => Pin::new(other.as_mut()).poll_flush(cx),
        }
    }

    /// Ends the sending side (over TLS, with its close notification).
    pub(crate) fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Io::Tcp(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Io::Shared(shared) => {
                Poll::Ready(socket2::SockRef::from(&shared.stream).shutdown(std::net::Shutdown::Write))
            }
            Io::Boxed(other) => Pin::new(other.as_mut()).poll_shutdown(cx),
        }
    }
}
