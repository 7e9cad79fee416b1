//! The server HTTP API, shaped like Centrifugo's: `POST /api/<method>` with
//! the method's parameters as the JSON body and the key in `X-API-Key` (or
//! `Authorization: apikey <key>`). Replies are `{"result": …}` or
//! `{"error": {"code", "message"}}`.
//!
//! Methods that act on users (subscribe, unsubscribe, disconnect, refresh)
//! travel through the engine as control commands, so they reach the user's
//! connections on every node.

mod methods;

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde_json::json;

use herald_core::{Hub, HubError};

use crate::config::Secret;
pub use methods::ApiCommand;

/// What the API handlers share.
#[derive(Debug)]
pub struct ApiState {
    pub hub: Arc<Hub>,
    /// `None` only when the API is explicitly insecure.
    pub key: Option<Secret>,
    pub started: std::time::Instant,
}

/// Why an API call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("unauthorized: send the API key in X-API-Key")]
    Unauthorized,
    #[error("method not found: {0}")]
    MethodNotFound(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("{0}")]
    Hub(#[from] HubError),
}

impl ApiError {
    /// The HTTP status and the protocol error code.
    pub fn status_and_code(&self) -> (StatusCode, u32) {
        match self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, 101),
            ApiError::MethodNotFound(_) => (StatusCode::NOT_FOUND, 104),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, 107),
            ApiError::Hub(hub) => match hub {
                HubError::UnknownChannel => (StatusCode::OK, 102),
                HubError::PermissionDenied => (StatusCode::OK, 103),
                HubError::AlreadySubscribed => (StatusCode::OK, 105),
                HubError::LimitExceeded(_) => (StatusCode::OK, 106),
                HubError::MessageTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, 106),
                HubError::BadRequest(_) => (StatusCode::OK, 107),
                HubError::NotAvailable(_) => (StatusCode::SERVICE_UNAVAILABLE, 108),
                HubError::EngineUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, 100),
                HubError::UnrecoverablePosition => (StatusCode::OK, 112),
            },
        }
    }

    /// The `{"code","message"}` object.
    pub fn body(&self) -> serde_json::Value {
        let (_, code) = self.status_and_code();
        json!({"code": code, "message": self.to_string()})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _) = self.status_and_code();
        (status, Json(json!({"error": self.body()}))).into_response()
    }
}

/// `POST /api/{method}`.
pub async fn handle(
    State(api): State<Arc<ApiState>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(error) = api.authorize(&headers) {
        tracing::info!(%method, "API call refused: missing or wrong key");
        return error.into_response();
    }
    let outcome = match ApiCommand::parse(&method, &body) {
        Ok(command) => api.execute(command).await,
        Err(error) => Err(error),
    };
    match outcome {
        Ok(reply) => Json(reply).into_response(),
        Err(error) => {
            tracing::debug!(%method, %error, "API call failed");
            error.into_response()
        }
    }
}

impl ApiState {
    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(expected) = &self.key else {
            return Ok(());
        };
        let given = headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .or_else(|| {
                headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("apikey "))
            })
            .ok_or(ApiError::Unauthorized)?;
        if constant_time_eq(given.as_bytes(), expected.expose().as_bytes()) {
            Ok(())
        } else {
            Err(ApiError::Unauthorized)
        }
    }
}

/// Compares without revealing, through timing, where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
