//! A WebSocket echo endpoint on the node's own stack, for the Autobahn
//! conformance suite (`tests/autobahn.rs`): the same accept loop and HTTP
//! server (`http::serve`, with its deadlines), the same handshake and
//! WebSocket as `/connection/websocket` and `/app/{key}`, and an echo of
//! every text and binary message. `herald` never serves it. (Compiled with
//! the `conformance` feature only.)

use std::future::Future;
use std::time::Duration;

use axum::response::Response;
use axum::routing::any;
use axum::Router;
use tokio::net::TcpListener;

use herald_core::Text;

use crate::http::{self, ServeSettings};
use crate::transport::{Inbound, Transport, TransportError, WsUpgrade};

/// Serves the echo on every path of `listener` until `shutdown`, with
/// messages up to `max_message_size` bytes (the suite sends up to 16 MiB).
pub async fn serve_echo(listener: TcpListener, max_message_size: usize, shutdown: impl Future<Output = ()>) {
    let settings = ServeSettings::plain(Duration::from_secs(1));
    let echo = move |upgrade: WsUpgrade| async move { echo(upgrade, max_message_size) };
    let router = Router::new().route("/", any(echo)).route("/{*path}", any(echo));
    http::serve(listener, router, settings, shutdown).await;
}

fn echo(upgrade: WsUpgrade, max_message_size: usize) -> Response {
    // Pings and the closing handshake are the WebSocket's own business.
    upgrade.on_upgrade(max_message_size, |mut socket| async move {
        loop {
            let message = match socket.recv().await {
                Ok(Some(message)) => message,
                Err(TransportError::TooLarge) => break socket.close(1009, "message too large".into()).await,
                Ok(None) | Err(TransportError::Broken(_)) => break,
            };
            let sent = match message {
                // The WebSocket took it as text: it is UTF-8.
                Inbound::Text(text) => match Text::new(text) {
                    Ok(text) => socket.send_text(text).await,
                    Err(_) => break,
                },
                Inbound::Binary(bytes) => socket.send_binary(bytes).await,
            };
            if sent.is_err() {
                break;
            }
        }
    })
}
