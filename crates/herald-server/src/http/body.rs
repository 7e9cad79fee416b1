//! Reading a request body, once the request is authenticated: with a size
//! limit (checked against `Content-Length` before anything is read) and a
//! deadline, so a caller can neither send a body too large nor hold a
//! connection open by sending it slowly.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};

/// Why a body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BodyError {
    /// Larger than `http.max_body_size`.
    #[error("the request body is larger than http.max_body_size ({0} bytes)")]
    TooLarge(usize),
    /// Not received within `http.body_timeout`.
    #[error("the request body did not arrive within http.body_timeout")]
    TooSlow,
    /// The connection broke while it was read.
    #[error("the request body could not be read")]
    Broken,
}

impl BodyError {
    /// The HTTP status for the refusal.
    pub(crate) fn status(self) -> StatusCode {
        match self {
            BodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::TooSlow => StatusCode::REQUEST_TIMEOUT,
            BodyError::Broken => StatusCode::BAD_REQUEST,
        }
    }
}

/// How request bodies are read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyLimits {
    pub(crate) max_size: usize,
    pub(crate) timeout: Duration,
}

/// Reads `body` whole, within the limits.
pub(crate) async fn read(headers: &HeaderMap, body: Body, limits: BodyLimits) -> Result<Bytes, BodyError> {
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limits.max_size as u64) {
        return Err(BodyError::TooLarge(limits.max_size));
    }
    let collected = tokio::time::timeout(limits.timeout, Limited::new(body, limits.max_size).collect()).await;
    match collected {
        Err(_) => Err(BodyError::TooSlow),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge(limits.max_size)),
        Ok(Err(_)) => Err(BodyError::Broken),
    }
}
