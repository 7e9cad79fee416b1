//! The opening handshake: a handler takes [`WsUpgrade`] as an extractor,
//! which checks the request is a WebSocket handshake (RFC 6455 section
//! 4.2.1), and answers with [`WsUpgrade::on_upgrade`], which switches
//! protocols and runs the session on the connection once hyper hands it
//! over.

use std::future::Future;

use axum::extract::FromRequestParts;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use hyper::upgrade::OnUpgrade;
use sha1::{Digest, Sha1};

use super::WebSocket;

/// The GUID RFC 6455 appends to the client's key.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A checked WebSocket handshake, not yet answered.
#[derive(Debug)]
pub(crate) struct WsUpgrade {
    key: HeaderValue,
    /// The subprotocols the client offered, as sent.
    offered: Option<HeaderValue>,
    /// The one chosen by [`WsUpgrade::protocols`].
    selected: Option<&'static str>,
    on_upgrade: OnUpgrade,
}

impl<S: Send + Sync> FromRequestParts<S> for WsUpgrade {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<WsUpgrade, Response> {
        if parts.method != Method::GET {
            return Err(refuse(StatusCode::METHOD_NOT_ALLOWED, "a WebSocket handshake is a GET request"));
        }
        let headers = &parts.headers;
        if !has_token(headers, &header::CONNECTION, "upgrade") || !has_token(headers, &header::UPGRADE, "websocket") {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "this endpoint takes WebSocket connections (Connection: upgrade, Upgrade: websocket)",
            ));
        }
        if headers.get(header::SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) != Some(b"13") {
            let mut refused = refuse(StatusCode::UPGRADE_REQUIRED, "only WebSocket version 13 is served");
            refused.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
            return Err(refused);
        }
        let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
            return Err(refuse(StatusCode::BAD_REQUEST, "a WebSocket handshake needs a Sec-WebSocket-Key"));
        };
        let offered = headers.get(header::SEC_WEBSOCKET_PROTOCOL).cloned();
        let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
            return Err(refuse(StatusCode::UPGRADE_REQUIRED, "this connection cannot be upgraded"));
        };
        Ok(WsUpgrade { key, offered, selected: None, on_upgrade })
    }
}

impl WsUpgrade {
    /// Chooses the first of the client's subprotocols that is in
    /// `supported`; none when it offered none of them.
    pub(crate) fn protocols(mut self, supported: impl IntoIterator<Item = &'static str>) -> WsUpgrade {
        let supported: Vec<&'static str> = supported.into_iter().collect();
        let offered = self.offered.as_ref().and_then(|value| value.to_str().ok()).unwrap_or_default();
        self.selected =
            offered.split(',').map(str::trim).find_map(|name| supported.iter().copied().find(|known| *known == name));
        self
    }

    /// The subprotocol chosen, if any.
    pub(crate) fn selected_protocol(&self) -> Option<&'static str> {
        self.selected
    }

    /// Switches protocols and, once hyper hands the connection over, runs
    /// `session` on it as a WebSocket taking messages of up to
    /// `max_message_size` bytes, as a task of its own.
    ///
    /// The session's task is the session's future alone: a task that
    /// awaited the upgrade first would also keep, for the connection's
    /// life, the upgrade's and the session's arguments (the task's size is
    /// the idle connection's largest cost).
    pub(crate) fn on_upgrade<F, Fut>(self, max_message_size: usize, session: F) -> Response
    where
        F: FnOnce(WebSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let WsUpgrade { key, selected, on_upgrade, .. } = self;
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => drop(tokio::spawn(session(WebSocket::new(upgraded, max_message_size)))),
                Err(error) => tracing::debug!(%error, "the WebSocket upgrade did not complete"),
            }
        });
        let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&accept_key(key.as_bytes())) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        if let Some(protocol) = selected {
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(protocol));
        }
        response
    }
}

/// `Sec-WebSocket-Accept` for a client's key.
fn accept_key(key: &[u8]) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(ACCEPT_GUID);
    base64::engine::general_purpose::STANDARD.encode(sha1.finalize())
}

/// Whether header `name` lists `token` (comma-separated, any case).
fn has_token(headers: &HeaderMap, name: &header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| item.trim().eq_ignore_ascii_case(token))
}

fn refuse(status: StatusCode, why: &'static str) -> Response {
    (status, why).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_key_is_the_one_rfc_6455_gives_for_its_example() {
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn connection_and_upgrade_tokens_are_found_in_lists_in_any_case() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        assert!(has_token(&headers, &header::CONNECTION, "upgrade"));
        assert!(has_token(&headers, &header::UPGRADE, "websocket"));
        assert!(!has_token(&headers, &header::CONNECTION, "close"));
    }
}
