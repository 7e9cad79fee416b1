//! The one error type of the hub. Front-ends map every variant to their
//! protocol's error code in a single exhaustive `match`.

use herald_engine::EngineError;

/// Why the hub refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    /// The channel's namespace is not configured.
    #[error("unknown channel")]
    UnknownChannel,
    /// The connection may not do this in this channel.
    #[error("permission denied")]
    PermissionDenied,
    /// The connection is already subscribed to the channel.
    #[error("already subscribed")]
    AlreadySubscribed,
    /// A configured limit would be exceeded.
    #[error("limit exceeded: {0}")]
    LimitExceeded(&'static str),
    /// The payload is larger than the namespace allows.
    #[error("message too large: {size} bytes, the limit is {limit}")]
    MessageTooLarge {
        /// The payload's size, in bytes.
        size: usize,
        /// The namespace's `max_message_size`.
        limit: usize,
    },
    /// The request is malformed.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A history position from another epoch, or one already trimmed.
    #[error("unrecoverable position")]
    UnrecoverablePosition,
    /// The feature is off, or the node is shutting down.
    #[error("not available: {0}")]
    NotAvailable(String),
    /// The engine cannot serve right now (for example Redis is down); retry.
    #[error("engine unavailable: {0}")]
    EngineUnavailable(String),
    /// The subscription ended (a server-side unsubscribe, or the engine
    /// interrupted) while its history was read; subscribe again.
    #[error("the subscription ended while it was being made; subscribe again")]
    Interrupted,
}

impl From<EngineError> for HubError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::NotStarted => HubError::EngineUnavailable("engine is not started".into()),
            EngineError::Unavailable(why) => HubError::EngineUnavailable(why),
        }
    }
}
