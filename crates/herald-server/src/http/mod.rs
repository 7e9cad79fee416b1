//! Serving HTTP: the accept loop and each connection's deadlines and caps.
//!
//! Every stage of a connection has a deadline or a bound:
//! - accepting backs off when the process runs out of files (`listener`);
//! - with TLS (`tls`), the handshake must finish within
//!   `http.handshake_timeout`;
//! - a connection is admitted only under the node's and its address's caps
//!   (`admission`); a refused one gets a 503 or 429 and is closed (over
//!   TLS, just closed);
//! - a request's headers, a WebSocket upgrade's included, must arrive within
//!   `http.handshake_timeout`, and so must the next request of an idle
//!   keep-alive connection (hyper's header timer, which restarts whenever a
//!   connection waits for a request);
//! - a response that cannot be written (its client stopped reading) for
//!   `http.handshake_timeout` ends the connection (`takeover`'s socket);
//! - a body is read only by a handler that authenticated the request, with
//!   a size limit and a deadline (`body`);
//! - a WebSocket handshake from a web page is accepted only from an
//!   allowed origin (`origin`);
//! - after an upgrade, the session's own timers take over (connect timeout,
//!   pings, activity timeout);
//! - a request that opens an HTTP-streaming or SSE session takes its
//!   connection from hyper (`takeover`), and the session's timers take
//!   over as after an upgrade.
//!
//! On shutdown the loop stops accepting and every HTTP connection finishes
//! its request in flight and closes; sessions (WebSockets, and streams that
//! took their connections over) are closed by the node (see `server.rs`).

pub(crate) mod admission;
pub(crate) mod body;
pub(crate) mod client;
mod listener;
pub(crate) mod origin;
pub(crate) mod takeover;
pub(crate) mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tower_service::Service;

use crate::transport::io::IntoIo;
use admission::{Admission, Limits, Permit, Refusal};
pub(crate) use listener::BackoffListener;
use takeover::{Slot, Takeable, Takeover};

/// How long a refused client has to take its 503 or 429.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// What serving HTTP needs from `[http]`.
#[derive(Clone)]
pub(crate) struct ServeSettings {
    /// Serve HTTPS and `wss://` with this, when set.
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
    pub(crate) handshake_timeout: Duration,
    /// How long, once shutdown begins, HTTP connections may take to finish.
    pub(crate) drain_timeout: Duration,
    pub(crate) limits: Limits,
    /// Unsent bytes the kernel may keep per connection (0: its default).
    pub(crate) max_unsent_bytes: u32,
}

impl ServeSettings {
    /// Plain HTTP with `[http]`'s default deadlines, no caps, and
    /// `drain_timeout`: the conformance echo server's, and the tests'.
    #[cfg(any(test, feature = "conformance"))]
    pub(crate) fn plain(drain_timeout: Duration) -> Self {
        let defaults = crate::config::HttpConfig::default();
        ServeSettings {
            tls: None,
            handshake_timeout: defaults.handshake_timeout,
            drain_timeout,
            limits: Limits::default(),
            max_unsent_bytes: defaults.max_unsent_bytes,
        }
    }
}

/// Counts live tasks (HTTP connections, or sessions) so shutdown can wait
/// for them.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    live: AtomicUsize,
    idle: Notify,
}

/// A live task's place in its [`Tracker`]; given back when dropped.
#[derive(Debug)]
pub(crate) struct Tracked(Arc<Tracker>);

impl Tracker {
    pub(crate) fn enter(self: &Arc<Self>) -> Tracked {
        self.live.fetch_add(1, Ordering::AcqRel);
        Tracked(self.clone())
    }

    /// How many are live.
    pub(crate) fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Waits until none is live.
    pub(crate) async fn wait_idle(&self) {
        loop {
            let idle = self.idle.notified();
            if self.live() == 0 {
                return;
            }
            idle.await;
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets every
/// HTTP connection finish its request in flight and waits for them, at most
/// `drain_timeout`. Returns when shutdown began.
/// Requests carry the peer's address (`ConnectInfo<SocketAddr>`) and, when
/// a cap is set, the connection's [`Permit`] (`Arc<Permit>`), which a
/// WebSocket session keeps.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    settings: ServeSettings,
    shutdown: impl Future<Output = ()>,
) -> Instant {
    let mut listener = BackoffListener::new(listener, settings.max_unsent_bytes);
    let admission = Admission::new(settings.limits);
    let connections = Arc::new(Tracker::default());
    let (closing, closing_rx) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        match admission.admit(peer.ip()) {
            Ok(permit) => {
                let tracked = connections.enter();
                let (router, closing, tls) = (router.clone(), closing_rx.clone(), settings.tls.clone());
                let deadline = settings.handshake_timeout;
                tokio::spawn(async move {
                    match tls {
                        None => serve_connection(stream, peer, permit, router, deadline, closing).await,
                        Some(tls) => match tokio::time::timeout(deadline, tls.accept(stream)).await {
                            Ok(Ok(stream)) => serve_connection(stream, peer, permit, router, deadline, closing).await,
                            Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                            Err(_) => tracing::debug!(%peer, "TLS handshake not done within http.handshake_timeout"),
                        },
                    }
                    drop(tracked);
                });
            }
            Err(refusal) => {
                tracing::debug!(%peer, ?refusal, open = admission.open(), "connection refused");
                // Over TLS a plain-text answer would only be a TLS error:
                // the refused client is just closed.
                if settings.tls.is_none() {
                    tokio::spawn(refuse(stream, refusal));
                }
            }
        }
    }
    let stopping = Instant::now();
    let _ = closing.send(true);
    if tokio::time::timeout(settings.drain_timeout, connections.wait_idle()).await.is_err() {
        tracing::warn!(open = connections.live(), "HTTP connections still open after http.shutdown_timeout");
    }
    stopping
}

/// Serves one connection's requests, with the header timeout, until it
/// closes or the node shuts down (then after its request in flight), or
/// until a request takes it over: then runs what that request asked for on
/// the bare socket.
async fn serve_connection<IO: IntoIo>(
    stream: IO,
    peer: SocketAddr,
    permit: Option<Permit>,
    router: Router,
    handshake_timeout: Duration,
    closing: watch::Receiver<bool>,
) {
    let slot = Arc::new(Slot::default());
    let socket = Takeable::new(stream, slot.clone(), handshake_timeout);
    // hyper is gone once this returns: a socket taken over is in the slot.
    let served = serve_http(socket, Takeover(slot.clone()), peer, permit, router, handshake_timeout, closing).await;
    match (slot.taken(), served) {
        (Some((socket, then)), _) => then(socket),
        (None, Ok(())) => {}
        // Timeouts and clients that left: the connection's own business.
        (None, Err(error)) => tracing::debug!(%peer, %error, "HTTP connection ended"),
    }
}

/// hyper's part of [`serve_connection`], over `socket`.
async fn serve_http<IO: IntoIo>(
    socket: Takeable<IO>,
    takeover: Takeover,
    peer: SocketAddr,
    permit: Option<Permit>,
    router: Router,
    handshake_timeout: Duration,
    mut closing: watch::Receiver<bool>,
) -> hyper::Result<()> {
    let permit = permit.map(Arc::new);
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        request.extensions_mut().insert(takeover.clone());
        if let Some(permit) = &permit {
            request.extensions_mut().insert(permit.clone());
        }
        let mut router = router.clone();
        async move {
            let response: Result<_, Infallible> = Service::call(&mut router, request).await;
            response
        }
    });
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(handshake_timeout);
    let connection = builder.serve_connection(TokioIo::new(socket), service).with_upgrades();
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        served = connection.as_mut() => served,
        _ = shutting_down(&mut closing) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    }
}

/// Resolves once the node starts shutting down.
async fn shutting_down(closing: &mut watch::Receiver<bool>) {
    // An error means the node is gone, which is a shutdown too.
    let _ = closing.wait_for(|closing| *closing).await;
}

/// Tells a refused client why, briefly, and closes.
async fn refuse(mut stream: TcpStream, refusal: Refusal) {
    let response = format!("HTTP/1.1 {}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n", refusal.status_line());
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, stream.write_all(response.as_bytes())).await;
}
