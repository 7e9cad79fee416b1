//! The server HTTP API, shaped like Centrifugo's: `POST /api/<method>` with
//! the method's parameters as the JSON body and the key in `X-API-Key` (or
//! `Authorization: apikey <key>`). Replies are `{"result": …}` or
//! `{"error": {"code", "message"}}`.
//!
//! Methods that act on users (subscribe, unsubscribe, disconnect, refresh)
//! travel through the engine as control commands, so they reach the user's
//! connections on every node.

pub(crate) mod legacy;
mod methods;
mod reply;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;

use herald_core::{Hub, HubError};

use crate::codes;
use crate::config::Secret;
use crate::http;
pub(crate) use methods::ApiCommand;
use reply::Response as Reply;

/// What the API handlers share.
#[derive(Debug)]
pub(crate) struct ApiState {
    pub hub: Arc<Hub>,
    /// `None` only when the API is explicitly insecure; a reload rotates it.
    pub key: crate::rotating::Rotating<Option<Secret>>,
    /// How request bodies are read.
    pub body: http::body::BodyLimits,
    /// The most commands a batch, or channels a broadcast, may carry.
    pub max_batch: usize,
    /// Refused calls answer with an HTTP status for their error
    /// (`api.error_mode = "transport"`), not in a 200 answer.
    pub transport_errors: bool,
    /// The node's metrics: calls by method and status, publications.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Set to drain the node (`drain`), as SIGTERM does.
    pub drain: tokio::sync::watch::Sender<bool>,
}

/// Why an API call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("unauthorized: no API key; send api.key in the X-API-Key header (or Authorization: apikey <key>)")]
    MissingKey,
    #[error("unauthorized: wrong API key; it must be api.key of this node's configuration")]
    WrongKey,
    #[error("method not found: {0}")]
    MethodNotFound(String),
    /// A body that is not JSON at all.
    #[error("bad request: {0}")]
    Undecodable(String),
    /// JSON whose parameters are wrong.
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("{0}")]
    Body(http::body::BodyError),
    #[error("{0}")]
    Hub(#[from] HubError),
}

impl ApiError {
    /// The HTTP status and the protocol error code. As Centrifugo's API,
    /// a request it could read and refused answers 200 with the error in
    /// its body (the server SDKs read the code there, and take any other
    /// status for a transport failure): only a missing or wrong key, an
    /// unknown method, a body that is not JSON, too large or too slow, and
    /// an engine that did not answer have statuses of their own.
    pub(crate) fn status_and_code(&self) -> (StatusCode, u32) {
        match self {
            ApiError::MissingKey | ApiError::WrongKey => (StatusCode::UNAUTHORIZED, codes::UNAUTHORIZED),
            ApiError::MethodNotFound(_) => (StatusCode::NOT_FOUND, codes::METHOD_NOT_FOUND),
            ApiError::Undecodable(_) => (StatusCode::BAD_REQUEST, codes::BAD_REQUEST),
            ApiError::BadRequest(_) => (StatusCode::OK, codes::BAD_REQUEST),
            ApiError::Body(error @ http::body::BodyError::TooLarge(_)) => (error.status(), codes::LIMIT_EXCEEDED),
            ApiError::Body(error @ (http::body::BodyError::TooSlow | http::body::BodyError::Broken)) => {
                (error.status(), codes::BAD_REQUEST)
            }
            ApiError::Hub(hub) => {
                let reported = codes::hub_error(hub);
                (reported.api_status, reported.code)
            }
        }
    }

    /// The protocol error code.
    pub(crate) fn code(&self) -> u32 {
        self.status_and_code().1
    }

    /// The answer in Centrifugo's transport error mode: an error answered
    /// 200 gets the HTTP status Centrifugo gives its code, and the error
    /// alone as the body (`{"code", "message"}`); others answer as ever.
    fn into_transport_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status != StatusCode::OK {
            return self.into_response();
        }
        let status = match code {
            codes::UNKNOWN_CHANNEL | codes::METHOD_NOT_FOUND => StatusCode::NOT_FOUND,
            codes::BAD_REQUEST | codes::NOT_AVAILABLE => StatusCode::BAD_REQUEST,
            codes::UNRECOVERABLE_POSITION => StatusCode::RANGE_NOT_SATISFIABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut body = BytesMut::new();
        self.write(&mut body);
        (status, [(header::CONTENT_TYPE, "application/json")], body.freeze()).into_response()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _) = self.status_and_code();
        let mut body = BytesMut::from(&b"{\"error\":"[..]);
        self.write(&mut body);
        body.extend_from_slice(b"}");
        (status, [(header::CONTENT_TYPE, "application/json")], body.freeze()).into_response()
    }
}

/// `POST /api/{method}`.
///
/// The caller is authenticated by its key before anything of the body is
/// read; the body is then read within `http.max_body_size` and
/// `http.body_timeout`.
pub(crate) async fn handle(
    State(api): State<Arc<ApiState>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let response = respond(&api, &method, headers, body).await;
    api.metrics.api_request("server", &method, response.status().as_u16());
    response
}

async fn respond(api: &ApiState, method: &str, headers: HeaderMap, body: Body) -> Response {
    if let Err(error) = api.authorize(&headers) {
        // `?`: the path's text is the caller's, escaped so it cannot forge log lines.
        tracing::info!(method = ?method, %error, "API call refused");
        return error.into_response();
    }
    call(api, method, &headers, body, Errors::AsAsked).await
}

/// Any other HTTP method on `/api/{method}`: 405, saying what to send.
pub(crate) async fn wrong_method(Path(method): Path<String>) -> Response {
    let message = format!("method not allowed: API calls are POST /api/{method} with a JSON body");
    let body = serde_json::json!({"error": {"code": codes::BAD_REQUEST, "message": message}});
    (StatusCode::METHOD_NOT_ALLOWED, [(header::ALLOW, "POST")], axum::Json(body)).into_response()
}

/// Runs `method` for a caller already authenticated (by its API key, or
/// by an admin UI session): reads the body within the limits, runs the
/// command and encodes the reply.
pub(crate) async fn call(api: &ApiState, method: &str, headers: &HeaderMap, body: Body, errors: Errors) -> Response {
    let body = match http::body::read(headers, body, api.body).await {
        Ok(body) => body,
        Err(error) => {
            // `?`: the path's text is the caller's, escaped so it cannot forge log lines.
            tracing::info!(method = ?method, %error, "API call refused");
            return ApiError::Body(error).into_response();
        }
    };
    let outcome = match ApiCommand::parse(method, &body) {
        Ok(command) => api.execute(command).await,
        Err(error) => Err(error),
    };
    match outcome {
        Ok(reply) => ([(header::CONTENT_TYPE, "application/json")], Reply::to_json(&reply)).into_response(),
        Err(error) => {
            tracing::debug!(method = ?method, %error, "API call failed");
            if errors == Errors::AsAsked && (api.transport_errors || asks_for_transport_errors(headers)) {
                error.into_transport_response()
            } else {
                error.into_response()
            }
        }
    }
}

/// How a refused call answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Errors {
    /// In Centrifugo's transport error mode where the call or
    /// `api.error_mode` asks for it (a batch's entries still answer in
    /// its body; a batch refused whole answers so too).
    AsAsked,
    /// Always in the body (the admin UI reads them there).
    InBody,
}

/// Whether the call asked for its error as an HTTP status
/// (`X-Centrifugo-Error-Mode: transport`).
fn asks_for_transport_errors(headers: &HeaderMap) -> bool {
    headers.get("x-centrifugo-error-mode").is_some_and(|mode| mode.as_bytes() == b"transport")
}

impl ApiState {
    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let (current, previous) = self.key.accepted();
        let Some(expected) = current.as_ref() else {
            return Ok(());
        };
        let given = headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .or_else(|| headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(api_key_of))
            .ok_or(ApiError::MissingKey)?;
        let matches = |key: &Secret| constant_time_eq(given.as_bytes(), key.expose().as_bytes());
        if matches(expected) || previous.as_deref().and_then(Option::as_ref).is_some_and(matches) {
            Ok(())
        } else {
            Err(ApiError::WrongKey)
        }
    }
}

/// The key in an `Authorization` header's value, `apikey <key>`: the
/// scheme in any case, the space after it any run of blanks (as Centrifugo).
fn api_key_of(value: &str) -> Option<&str> {
    let (scheme, key) = value.trim().split_once([' ', '\t'])?;
    scheme.eq_ignore_ascii_case("apikey").then(|| key.trim_start()).filter(|key| !key.is_empty())
}

/// Compares without revealing, through timing, where the inputs differ or
/// how long the expected one is: their SHA-256 digests are compared, every
/// byte of them.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let (a, b) = (Sha256::digest(a), Sha256::digest(b));
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
