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
}

impl BackoffListener {
    pub(crate) fn new(inner: TcpListener) -> Self {
        Self { inner }
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
