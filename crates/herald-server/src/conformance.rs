//! A WebSocket echo endpoint on the node's own stack, for the Autobahn
//! conformance suite (`tests/autobahn.rs`): the same accept loop and HTTP
//! server (`http::serve`, with its deadlines), the same upgrade settings
//! and buffers as `/connection/websocket` and `/app/{key}`, and an echo of
//! every text and binary message. `herald` never serves it. (Compiled with
//! the `conformance` feature only.)

use std::future::Future;
use std::time::Duration;

use axum::extract::ws::Message;
use axum::extract::WebSocketUpgrade;
use axum::response::Response;
use axum::routing::any;
use axum::Router;
use tokio::net::TcpListener;

use crate::config::HttpConfig;
use crate::http::admission::Limits;
use crate::http::{self, ServeSettings};

/// Serves the echo on every path of `listener` until `shutdown`, with
/// messages up to `max_message_size` bytes (the suite sends up to 16 MiB).
pub async fn serve_echo(listener: TcpListener, max_message_size: usize, shutdown: impl Future<Output = ()>) {
    let defaults = HttpConfig::default();
    let settings = ServeSettings {
        tls: None,
        handshake_timeout: defaults.handshake_timeout,
        drain_timeout: Duration::from_secs(1),
        limits: Limits::default(),
        max_unsent_bytes: defaults.max_unsent_bytes,
    };
    let echo = move |upgrade: WebSocketUpgrade| async move { echo(upgrade, max_message_size) };
    let router = Router::new().route("/", any(echo)).route("/{*path}", any(echo));
    http::serve(listener, router, settings, shutdown).await;
}

fn echo(upgrade: WebSocketUpgrade, max_message_size: usize) -> Response {
    crate::server::with_limits(upgrade, max_message_size).on_upgrade(|mut socket| async move {
        while let Some(Ok(message)) = socket.recv().await {
            let reply = match message {
                Message::Text(_) | Message::Binary(_) => message,
                // Pings are answered by the stack; after a close, the next
                // read writes the close reply and ends the loop.
                Message::Ping(_) | Message::Pong(_) | Message::Close(_) => continue,
            };
            if socket.send(reply).await.is_err() {
                break;
            }
        }
    })
}
