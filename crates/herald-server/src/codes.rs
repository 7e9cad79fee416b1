//! How the front-ends report refusals: the error codes of the Centrifuge
//! protocol and the server API (Centrifugo's codes, shared by both), and
//! one table that says, for each hub error, what every front-end tells its
//! client. Each front-end's close codes stay with the front-end.

use axum::http::StatusCode;
use herald_core::HubError;

/// Something went wrong on the server (or the engine); retry.
pub(crate) const INTERNAL: u32 = 100;
/// Authentication is missing or wrong.
pub(crate) const UNAUTHORIZED: u32 = 101;
/// The channel's namespace is not configured.
pub(crate) const UNKNOWN_CHANNEL: u32 = 102;
/// Not allowed in this channel.
pub(crate) const PERMISSION_DENIED: u32 = 103;
/// No such method.
pub(crate) const METHOD_NOT_FOUND: u32 = 104;
/// Already subscribed to the channel.
pub(crate) const ALREADY_SUBSCRIBED: u32 = 105;
/// A limit (channels, message size) would be exceeded.
pub(crate) const LIMIT_EXCEEDED: u32 = 106;
/// The request is malformed.
pub(crate) const BAD_REQUEST: u32 = 107;
/// The feature is off, or the node is shutting down.
pub(crate) const NOT_AVAILABLE: u32 = 108;
/// The token expired: get a new one.
pub(crate) const TOKEN_EXPIRED: u32 = 109;
/// Over the connection's command rate; retry later.
pub(crate) const TOO_MANY_REQUESTS: u32 = 111;
/// A history position that cannot be continued.
pub(crate) const UNRECOVERABLE_POSITION: u32 = 112;

/// What the front-ends say for one hub error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reported {
    /// The Centrifuge protocol's and server API's error code.
    pub(crate) code: u32,
    /// Whether a Centrifuge client should retry (`temporary` in the reply).
    pub(crate) temporary: bool,
    /// The server API's HTTP status. Refusals by channel rules answer 200
    /// with an error body, as Centrifugo's API does.
    pub(crate) api_status: StatusCode,
    /// The Pusher HTTP API's status.
    pub(crate) pusher_status: StatusCode,
    /// The `status` of a Pusher `pusher:subscription_error`.
    pub(crate) pusher_subscription_status: u16,
}

/// The one table from hub errors to what each front-end reports.
pub(crate) fn hub_error(error: &HubError) -> Reported {
    use StatusCode as S;
    let (code, temporary, api_status, pusher_status, pusher_subscription_status) = match error {
        HubError::UnknownChannel => (UNKNOWN_CHANNEL, false, S::OK, S::BAD_REQUEST, 400),
        HubError::PermissionDenied => (PERMISSION_DENIED, false, S::OK, S::BAD_REQUEST, 400),
        HubError::AlreadySubscribed => (ALREADY_SUBSCRIBED, false, S::OK, S::BAD_REQUEST, 400),
        HubError::LimitExceeded(_) => (LIMIT_EXCEEDED, false, S::OK, S::BAD_REQUEST, 4100),
        HubError::MessageTooLarge { .. } => (LIMIT_EXCEEDED, false, S::PAYLOAD_TOO_LARGE, S::PAYLOAD_TOO_LARGE, 400),
        HubError::BadRequest(_) => (BAD_REQUEST, false, S::OK, S::BAD_REQUEST, 400),
        HubError::UnrecoverablePosition => (UNRECOVERABLE_POSITION, false, S::OK, S::BAD_REQUEST, 400),
        HubError::NotAvailable(_) => (NOT_AVAILABLE, false, S::OK, S::SERVICE_UNAVAILABLE, 503),
        HubError::EngineUnavailable(_) => (INTERNAL, true, S::SERVICE_UNAVAILABLE, S::SERVICE_UNAVAILABLE, 503),
        HubError::Interrupted => (INTERNAL, true, S::SERVICE_UNAVAILABLE, S::SERVICE_UNAVAILABLE, 503),
    };
    Reported { code, temporary, api_status, pusher_status, pusher_subscription_status }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_hub_error_has_centrifugos_code_and_only_an_engine_outage_or_an_interrupted_subscribe_is_temporary() {
        let cases = [
            (HubError::UnknownChannel, 102),
            (HubError::PermissionDenied, 103),
            (HubError::AlreadySubscribed, 105),
            (HubError::LimitExceeded("channels"), 106),
            (HubError::MessageTooLarge { size: 2, limit: 1 }, 106),
            (HubError::BadRequest("x".into()), 107),
            (HubError::NotAvailable("off".into()), 108),
            (HubError::UnrecoverablePosition, 112),
            (HubError::EngineUnavailable("down".into()), 100),
            (HubError::Interrupted, 100),
        ];
        for (error, code) in cases {
            let reported = hub_error(&error);
            assert_eq!(reported.code, code, "{error:?}");
            let retry = matches!(error, HubError::EngineUnavailable(_) | HubError::Interrupted);
            assert_eq!(reported.temporary, retry, "{error:?}");
            // The server API answers 503 only while the engine does not
            // (a namespace without presence is 108 in a 200, as Centrifugo).
            assert_eq!(reported.api_status == StatusCode::SERVICE_UNAVAILABLE, retry, "{error:?}");
            let unavailable = retry || matches!(error, HubError::NotAvailable(_));
            assert_eq!(reported.pusher_status == StatusCode::SERVICE_UNAVAILABLE, unavailable, "{error:?}");
        }
    }
}
