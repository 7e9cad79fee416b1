//! Centrifuge protocol codes: command errors (100–112, numbered in
//! `crate::codes`, which also maps hub errors), unsubscribe codes
//! (2000–2999) and disconnect (close) codes (3000–4999), each decided in one
//! exhaustive `match`.
//!
//! Close codes below 3500 (and 4000–4499) advise the client to reconnect;
//! 3500–3999 (and 4500–4999) tell it not to reconnect unchanged.

use herald_core::{HubError, UnsubscribeReason};
use herald_engine::DisconnectReason;

use crate::codes;

/// An error returned in reply to a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ClientError {
    #[error("{0}")]
    Hub(HubError),
    #[error("method not found")]
    MethodNotFound,
    #[error("token expired")]
    TokenExpired,
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("too many requests")]
    TooManyRequests,
    /// The application's backend refused, with its own code.
    #[error("{message}")]
    Backend { code: u32, message: String, temporary: bool },
    /// The application's backend (a proxy, or the JWKS a token's key is
    /// looked up in) gave no usable answer: try again.
    #[error("internal server error")]
    BackendUnavailable,
}

impl From<HubError> for ClientError {
    fn from(e: HubError) -> Self {
        ClientError::Hub(e)
    }
}

impl ClientError {
    /// The protocol code and whether the error is temporary.
    pub(crate) fn code(&self) -> (u32, bool) {
        match self {
            ClientError::MethodNotFound => (codes::METHOD_NOT_FOUND, false),
            ClientError::BadRequest(_) => (codes::BAD_REQUEST, false),
            ClientError::TokenExpired => (codes::TOKEN_EXPIRED, false),
            ClientError::TooManyRequests => (codes::TOO_MANY_REQUESTS, true),
            ClientError::Backend { code, temporary, .. } => (*code, *temporary),
            ClientError::BackendUnavailable => (codes::INTERNAL, true),
            ClientError::Hub(hub) => {
                let reported = codes::hub_error(hub);
                (reported.code, reported.temporary)
            }
        }
    }
}

/// The close code, reason and reconnect advice for a disconnect.
/// The close code that tells a uni-directional client it may have missed
/// publications: it reconnects with its positions and recovers.
pub(crate) const INSUFFICIENT_STATE: u16 = 3010;

pub(crate) fn disconnect_code(reason: &DisconnectReason) -> (u16, String) {
    let (code, text) = match reason {
        DisconnectReason::Shutdown => (3001, "shutdown"),
        DisconnectReason::ConnectionExpired => (3005, "connection expired"),
        DisconnectReason::Slow => (3008, "slow"),
        DisconnectReason::ForceReconnect => (3011, "force reconnect"),
        DisconnectReason::NoPong => (3012, "no pong"),
        DisconnectReason::InvalidToken => (3500, "invalid token"),
        DisconnectReason::BadRequest => (3501, "bad request"),
        DisconnectReason::Stale => (3502, "stale"),
        DisconnectReason::ForceDisconnect => (3503, "force disconnect"),
        DisconnectReason::MessageTooLarge => (1009, "message too big"),
        DisconnectReason::Internal => (3004, "internal server error"),
        DisconnectReason::TooManyRequests => (3013, "too many requests"),
        DisconnectReason::Custom { code, reason, .. } => return (*code, reason.clone()),
    };
    (code, text.to_owned())
}

/// How a refused uni-directional connect ends: such a client cannot be
/// sent an error reply, only a close code, which must still say whether
/// to come back.
pub(crate) fn uni_connect_refusal(error: &ClientError) -> DisconnectReason {
    match error {
        ClientError::TokenExpired => DisconnectReason::ConnectionExpired,
        ClientError::TooManyRequests => DisconnectReason::TooManyRequests,
        // Centrifugo's code for 103, Herald's or a connect proxy's
        // (centrifuge's DisconnectPermissionDenied).
        refused if refused.code() == (codes::PERMISSION_DENIED, false) => {
            DisconnectReason::Custom { code: 3507, reason: "permission denied".to_owned(), reconnect: false }
        }
        // The engine did not answer, a backend was away, a subscription
        // was interrupted: the next attempt may well work.
        temporary if temporary.code().1 => DisconnectReason::Internal,
        _ => DisconnectReason::BadRequest,
    }
}

/// The code and reason of an unsubscribe push.
pub(crate) fn unsubscribe_code(reason: UnsubscribeReason) -> (u32, &'static str) {
    match reason {
        UnsubscribeReason::Server => (2000, "server unsubscribe"),
        UnsubscribeReason::InsufficientState => (2500, "insufficient state"),
        UnsubscribeReason::Expired => (2501, "subscription expired"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_uni_directional_connect_is_told_to_come_back_only_when_the_refusal_may_pass() {
        let cases = [
            (ClientError::TokenExpired, 3005),
            (ClientError::TooManyRequests, 3013),
            (ClientError::Hub(HubError::EngineUnavailable("down".into())), 3004),
            (ClientError::Hub(HubError::Interrupted), 3004),
            (ClientError::BackendUnavailable, 3004),
            (ClientError::Backend { code: 4000, message: "later".into(), temporary: true }, 3004),
            (ClientError::Backend { code: 4001, message: "no".into(), temporary: false }, 3501),
            (ClientError::Hub(HubError::PermissionDenied), 3507),
            (ClientError::Backend { code: 103, message: "not you".into(), temporary: false }, 3507),
            (ClientError::BadRequest("x".into()), 3501),
        ];
        for (error, expected) in cases {
            assert_eq!(disconnect_code(&uni_connect_refusal(&error)).0, expected, "{error:?}");
        }
    }

    #[test]
    fn reconnect_advice_follows_the_code_ranges() {
        let reconnects = |code: u16| !((3500..4000).contains(&code) || (4500..5000).contains(&code));
        let cases = [
            (DisconnectReason::Shutdown, true),
            (DisconnectReason::Slow, true),
            (DisconnectReason::ConnectionExpired, true),
            (DisconnectReason::NoPong, true),
            (DisconnectReason::ForceReconnect, true),
            (DisconnectReason::Internal, true),
            (DisconnectReason::TooManyRequests, true),
            (DisconnectReason::InvalidToken, false),
            (DisconnectReason::BadRequest, false),
            (DisconnectReason::ForceDisconnect, false),
            (DisconnectReason::Stale, false),
        ];
        for (reason, expected) in cases {
            let (code, _) = disconnect_code(&reason);
            assert_eq!(reconnects(code), expected, "{reason:?} -> {code}");
        }
    }
}
