//! The TCP accept loop, with backoff when the process runs out of file
//! descriptors (or memory) instead of spinning on a failing `accept`.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// The first pause after a resource error; doubled per consecutive error.
const FIRST_BACKOFF: Duration = Duration::from_millis(5);
/// The longest pause between accept attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// A listener that survives resource exhaustion.
#[derive(Debug)]
pub(crate) struct BackoffListener {
    inner: TcpListener,
    /// Unsent bytes the kernel may keep per connection (0: its default).
    max_unsent_bytes: u32,
}

impl BackoffListener {
    pub(crate) fn new(inner: TcpListener, max_unsent_bytes: u32) -> Self {
        Self { inner, max_unsent_bytes }
    }

    /// Bounds what the kernel buffers for a client that stops reading. By
    /// default Linux grows a socket's send buffer to megabytes; past this
    /// many unsent bytes, writes wait instead, and the session's write
    /// timeout and outbox limit see a slow client for what it is.
    fn bound_unsent(&self, stream: &TcpStream) {
        #[cfg(target_os = "linux")]
        if self.max_unsent_bytes > 0 {
            if let Err(error) = socket2::SockRef::from(stream).set_tcp_notsent_lowat(self.max_unsent_bytes) {
                tracing::debug!(%error, "cannot set TCP_NOTSENT_LOWAT");
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = stream;
    }
}

/// Errors that concern one connection only; the next accept may succeed at once.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

impl BackoffListener {
    /// The next connection, however long it takes: errors that concern one
    /// connection are skipped, running out of resources is waited out.
    pub(crate) async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        let mut backoff = FIRST_BACKOFF;
        let mut failures: u64 = 0;
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    if failures > 0 {
                        tracing::info!(failures, "accepting connections again");
                    }
                    let _ = stream.set_nodelay(true);
                    self.bound_unsent(&stream);
                    return (stream, addr);
                }
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    // Log the first failure and then every hundredth, not each one.
                    if failures == 1 || failures % 100 == 0 {
                        tracing::warn!(
                            error = %e,
                            failures,
                            "cannot accept connections (out of file descriptors? raise `ulimit -n`); backing off"
                        );
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2).min(MAX_BACKOFF);
                }
            }
        }
    }
}
