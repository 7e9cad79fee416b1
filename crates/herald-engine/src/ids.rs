//! Typed identifiers shared by every layer.
//!
//! Each id is a newtype with a private field so it can only be built through
//! its validating constructor (`FromStr` / `new`). String ids are `Arc<str>`
//! underneath: they are cloned into maps and events far more often than they
//! are created, and a clone must not allocate.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The longest channel name Herald accepts, in bytes.
pub const MAX_CHANNEL_NAME_LEN: usize = 255;

/// The longest user id Herald accepts, in bytes.
pub const MAX_USER_ID_LEN: usize = 255;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// A channel name must have at least one byte.
    #[error("channel name is empty")]
    EmptyChannel,
    /// A channel name is at most [`MAX_CHANNEL_NAME_LEN`] bytes.
    #[error("channel name is longer than {MAX_CHANNEL_NAME_LEN} bytes")]
    ChannelTooLong,
    /// A channel name has no control characters.
    #[error("channel name contains a control character")]
    ChannelControlChar,
    /// A user id is at most [`MAX_USER_ID_LEN`] bytes.
    #[error("user id is longer than {MAX_USER_ID_LEN} bytes")]
    UserTooLong,
}

/// The name of a channel, for example `news` or `chat:lobby`.
///
/// Valid names are 1..=255 bytes of UTF-8 without control characters; the
/// namespace part (before `:`) is interpreted by the hub, not here.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ChannelName(Arc<str>);

impl ChannelName {
    /// Validates `name` and wraps it.
    pub fn new(name: &str) -> Result<Self, IdError> {
        if name.is_empty() {
            return Err(IdError::EmptyChannel);
        }
        if name.len() > MAX_CHANNEL_NAME_LEN {
            return Err(IdError::ChannelTooLong);
        }
        if name.chars().any(char::is_control) {
            return Err(IdError::ChannelControlChar);
        }
        Ok(Self(Arc::from(name)))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ChannelName {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for ChannelName {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl From<ChannelName> for String {
    fn from(c: ChannelName) -> String {
        c.0.to_string()
    }
}

/// The id of one connection, unique across the cluster (a UUID v4 string).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub struct ClientId(Arc<str>);

impl ClientId {
    /// Wraps an id minted elsewhere (for example by a front-end).
    pub fn new(id: &str) -> Self {
        Self(Arc::from(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for ClientId {
    fn from(s: String) -> Self {
        Self(Arc::from(s))
    }
}

impl From<ClientId> for String {
    fn from(c: ClientId) -> String {
        c.0.to_string()
    }
}

/// The id of an application user; one user may hold many connections.
///
/// The empty id is the anonymous user.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(Arc<str>);

impl UserId {
    /// Validates `id` and wraps it; the empty id is the anonymous user.
    pub fn new(id: &str) -> Result<Self, IdError> {
        if id.len() > MAX_USER_ID_LEN {
            return Err(IdError::UserTooLong);
        }
        Ok(Self(Arc::from(id)))
    }

    /// The user of connections made without credentials.
    pub fn anonymous() -> Self {
        Self(Arc::from(""))
    }

    /// Whether this is the anonymous user.
    pub fn is_anonymous(&self) -> bool {
        self.0.is_empty()
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for UserId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl From<UserId> for String {
    fn from(u: UserId) -> String {
        u.0.to_string()
    }
}

/// The id of one running `herald` process (a node).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub struct NodeId(Arc<str>);

impl NodeId {
    /// Wraps a node's id (a UUID by default).
    pub fn new(id: &str) -> Self {
        Self(Arc::from(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for NodeId {
    fn from(s: String) -> Self {
        Self(Arc::from(s))
    }
}

impl From<NodeId> for String {
    fn from(n: NodeId) -> String {
        n.0.to_string()
    }
}

/// The position of a publication within its channel's stream: 1 for the
/// first publication, +1 for each next one. 0 means "no position" (a channel
/// without history).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Offset(u64);

impl Offset {
    /// No position: a channel without history.
    pub const ZERO: Offset = Offset(0);

    /// The offset `value`.
    pub fn new(value: u64) -> Self {
        Self(value)
    }

    /// The offset as a number.
    pub fn get(self) -> u64 {
        self.0
    }

    /// The offset after this one.
    pub fn next(self) -> Self {
        Self(self.0.saturating_add(1))
    }
}

/// Identifies one life of a channel's stream; it changes whenever the stream
/// is reset, so positions from an older epoch are known to be meaningless.
#[derive(Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub struct Epoch(Arc<str>);

impl Epoch {
    /// Wraps an epoch minted by an engine (or reported by a client).
    pub fn new(value: &str) -> Self {
        Self(Arc::from(value))
    }

    /// A fresh epoch for a new stream: eight hex digits, random, unlike
    /// any this process made before.
    pub fn fresh() -> Self {
        use std::hash::{BuildHasher, RandomState};
        use std::sync::atomic::{AtomicU64, Ordering};
        static MINTED: AtomicU64 = AtomicU64::new(0);
        let seed = MINTED.fetch_add(1, Ordering::Relaxed);
        Self::new(&format!("{:08x}", RandomState::new().hash_one(seed) as u32))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the epoch is empty, which a client's position uses for
    /// "any epoch".
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Epoch {
    fn from(s: String) -> Self {
        Self(Arc::from(s))
    }
}

impl From<Epoch> for String {
    fn from(e: Epoch) -> String {
        e.0.to_string()
    }
}

macro_rules! string_id_fmt {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", &*self.0)
            }
        }
    )*};
}
string_id_fmt!(ChannelName, ClientId, UserId, NodeId, Epoch);

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_are_validated() {
        let cases: &[(&str, Result<(), IdError>)] = &[
            ("news", Ok(())),
            ("chat:lobby", Ok(())),
            ("dialog#42,43", Ok(())),
            ("", Err(IdError::EmptyChannel)),
            ("bad\nname", Err(IdError::ChannelControlChar)),
            (&"x".repeat(256), Err(IdError::ChannelTooLong)),
            (&"x".repeat(255), Ok(())),
        ];
        for (name, expected) in cases {
            assert_eq!(ChannelName::new(name).map(|_| ()), *expected, "{name:?}");
        }
    }

    #[test]
    fn the_empty_user_is_anonymous() {
        assert!(UserId::anonymous().is_anonymous());
        assert!(!UserId::new("42").unwrap().is_anonymous());
    }
}
