//! What travels through an engine: publications, joins and leaves, and
//! node-to-node control.
//!
//! Payloads are opaque bytes here. Front-ends validate and encode them; the
//! engine and the hub only move them, so one publication's bytes are shared
//! (`Bytes` is reference counted) by every subscriber that receives it.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::ids::{ChannelName, ClientId, Epoch, NodeId, Offset, UserId};

/// Who published, as seen by subscribers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    /// The connection's user.
    pub user: UserId,
    /// The connection.
    pub client: ClientId,
    /// Connection-level info from the connection token (`info` claim), as JSON.
    pub conn_info: Option<Bytes>,
    /// Channel-level info from the subscription token (`info` claim), as JSON.
    pub chan_info: Option<Bytes>,
}

/// One message in a channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publication {
    /// The payload, already validated by the front-end that accepted it.
    pub data: Bytes,
    /// The publishing client, when a client (not the server API) published.
    pub info: Option<ClientInfo>,
    /// Position in the channel's stream; zero for channels without history.
    pub offset: Offset,
    /// The epoch of the stream the offset belongs to; empty without history.
    pub epoch: Epoch,
    /// Application tags, delivered along with the data.
    pub tags: BTreeMap<String, String>,
    /// A connection that must not receive this publication (the sender of a
    /// Pusher client event, or the `socket_id` a trigger excludes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude: Option<ClientId>,
}

impl Publication {
    /// A publication carrying only data, as the server API makes them.
    pub fn from_data(data: Bytes) -> Self {
        Self { data, info: None, offset: Offset::ZERO, epoch: Epoch::default(), tags: BTreeMap::new(), exclude: None }
    }
}

/// Where a publication landed in its channel's stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamPosition {
    /// The publication's offset in the stream.
    pub offset: Offset,
    /// The stream's epoch.
    pub epoch: Epoch,
}

/// Why the server ends a connection. Front-ends map each reason to their
/// protocol's close code in one exhaustive `match`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DisconnectReason {
    /// The node is shutting down; reconnect (to another node).
    Shutdown,
    /// The connection could not keep up with its outbound traffic.
    Slow,
    /// The connection's credentials expired and were not refreshed.
    ConnectionExpired,
    /// The server asks the client to reconnect.
    ForceReconnect,
    /// The server asks the client to go away and not come back unchanged.
    ForceDisconnect,
    /// The client did not answer a ping in time.
    NoPong,
    /// The client did not authenticate in time.
    Stale,
    /// The client broke the protocol.
    BadRequest,
    /// The client's credentials are not valid.
    InvalidToken,
    /// The client sent a message larger than allowed.
    MessageTooLarge,
    /// The server failed while handling the connection; reconnect.
    Internal,
    /// The client kept sending far over its command rate.
    TooManyRequests,
    /// A custom code and reason given through the server API.
    Custom {
        /// The close code.
        code: u16,
        /// The close reason.
        reason: String,
        /// Whether the client should reconnect.
        reconnect: bool,
    },
}

/// A cluster-wide instruction, delivered by the engine to every node
/// (including the one that sent it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Control {
    /// Disconnect a user's connections (or one of them).
    Disconnect {
        /// Whose connections.
        user: UserId,
        /// Only this connection of the user, when given.
        client: Option<ClientId>,
        /// Why, which says which close code the client gets.
        reason: DisconnectReason,
        /// Only connections of this Pusher app, when given (user ids of
        /// different apps are different users).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        app: Option<String>,
    },
    /// Subscribe a user's connections (or one of them) to a channel.
    Subscribe {
        /// Whose connections.
        user: UserId,
        /// To which channel.
        channel: ChannelName,
        /// Only this connection of the user, when given.
        client: Option<ClientId>,
        /// The subscription's channel info, as JSON text (as a
        /// subscription token's `info`). Older nodes ignore it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        info: Option<String>,
        /// What the client is sent with the subscription, as JSON text.
        /// Older nodes ignore it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<String>,
        /// When the subscription expires, in unix seconds. Older nodes
        /// ignore it (their subscriptions do not expire).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expire_at: Option<u64>,
    },
    /// Unsubscribe a user's connections (or one of them) from a channel.
    Unsubscribe {
        /// Whose connections.
        user: UserId,
        /// From which channel.
        channel: ChannelName,
        /// Only this connection of the user, when given.
        client: Option<ClientId>,
    },
    /// Move a user's connection expiry, or expire them now.
    Refresh {
        /// Whose connections.
        user: UserId,
        /// Only this connection of the user, when given.
        client: Option<ClientId>,
        /// The new expiry, unix seconds; `None` for none.
        expire_at: Option<u64>,
        /// Expire now.
        expired: bool,
        /// The connections' new info, as JSON text. Older nodes ignore it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        info: Option<String>,
    },
    /// Every node is asked for its channels (those matching `pattern`) and
    /// their local subscriber counts, for a cluster-wide list.
    ChannelsAsked {
        /// Names this survey among the asking node's.
        survey: u64,
        /// Who asks, and is to be answered.
        from: NodeId,
        /// Only channels matching it (`*` matches any run of characters).
        pattern: Option<String>,
    },
    /// Client commands for a session another node holds: a client on a
    /// bidirectional emulation transport (HTTP-streaming, SSE) posts its
    /// commands to whichever node its load balancer picks, and that node
    /// relays them to the node that streams to it. Only `to` acts on it.
    Relay {
        /// The node holding the session.
        to: NodeId,
        /// The session's key, as the node gave it to the client.
        session: String,
        /// The client's commands, as it sent them.
        data: String,
    },
    /// One node's answer to [`Control::ChannelsAsked`].
    ChannelsAnswered {
        /// The survey answered.
        survey: u64,
        /// The node that asked.
        to: NodeId,
        /// The node that answers.
        node: NodeId,
        /// Its channels and their local subscriber counts.
        channels: Vec<(ChannelName, usize)>,
        /// Whether it had more than it could send.
        #[serde(default)]
        truncated: bool,
    },
}

/// A join or a leave, as broadcast to a channel's subscribers on every node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PresenceEvent {
    /// A connection joined.
    Join {
        /// Who joined.
        info: ClientInfo,
        /// No other connection of its user was present, so the user joined too.
        user_arrived: bool,
    },
    /// A connection left.
    Leave {
        /// Who left.
        info: ClientInfo,
        /// It was its user's last connection there, so the user left too.
        user_departed: bool,
    },
}

impl PresenceEvent {
    /// The connection that joined or left.
    pub fn info(&self) -> &ClientInfo {
        match self {
            PresenceEvent::Join { info, .. } | PresenceEvent::Leave { info, .. } => info,
        }
    }

    /// Whether this is a join.
    pub fn is_join(&self) -> bool {
        matches!(self, PresenceEvent::Join { .. })
    }

    /// Whether the user, not only the connection, arrived or departed.
    pub fn user_changed(&self) -> bool {
        match self {
            PresenceEvent::Join { user_arrived: changed, .. } | PresenceEvent::Leave { user_departed: changed, .. } => {
                *changed
            }
        }
    }
}

/// What an engine hands to its node.
#[derive(Clone, Debug)]
pub enum EngineEvent {
    /// A publication in a channel this node subscribed to.
    Publication {
        /// The channel.
        channel: ChannelName,
        /// The publication, shared by everyone it is delivered to.
        publication: std::sync::Arc<Publication>,
    },
    /// A join or leave in a channel this node subscribed to
    /// (presence-enabled namespaces).
    Presence {
        /// The channel.
        channel: ChannelName,
        /// The join or leave.
        event: PresenceEvent,
    },
    /// A control command for every node.
    Control(Control),
    /// The engine may have missed broadcasts (its link to the backplane
    /// broke): positioned subscriptions must recover from history.
    Interrupted,
}

/// Presence counts of one channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceStats {
    /// Connections present.
    pub num_clients: usize,
    /// Distinct users: one user with several connections counts once.
    pub num_users: usize,
}

/// A node as the registry knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node.
    pub id: NodeId,
    /// The name an operator knows it by (`node.name`; the host name by default).
    #[serde(default)]
    pub name: String,
    /// When the figures below were taken, in unix milliseconds.
    #[serde(default)]
    pub updated_at_ms: u64,
    /// Its Herald version.
    pub version: String,
    /// Its connections.
    pub num_clients: usize,
    /// Distinct users of those connections.
    pub num_users: usize,
    /// Channels with a subscriber on the node.
    pub num_channels: usize,
    /// Subscriptions on the node.
    pub num_subscriptions: usize,
    /// Seconds since the node started.
    pub uptime: u64,
    /// Publications the node accepted since it started (server API and
    /// clients), for rates.
    #[serde(default)]
    pub num_publications: u64,
    /// Publications queued to its clients since it started, for rates.
    #[serde(default)]
    pub num_deliveries: u64,
    /// The public key (Ed25519, hex) that signs the keys of the node's
    /// emulated sessions, so another node can check one before it relays
    /// commands to it; none from a node older than that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_key: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nodes of two versions share a cluster while it rolls onto the newer:
    /// each must read the other's control commands. `older` is read as
    /// `expected`, which is written as `older` is.
    fn read_and_written_as_older_nodes_do(older: &str, expected: Control) {
        let command: Control = serde_json::from_str(older).expect("an older node's command");
        assert_eq!(command, expected);
        assert_eq!(serde_json::to_string(&expected).unwrap(), older, "written as older nodes write it");
    }

    #[test]
    fn a_subscribe_command_reads_with_or_without_the_fields_newer_nodes_add() {
        let (user, channel) = (UserId::new("42").unwrap(), ChannelName::new("news").unwrap());
        read_and_written_as_older_nodes_do(
            r#"{"op":"subscribe","user":"42","channel":"news","client":null}"#,
            Control::Subscribe { user, channel, client: None, info: None, data: None, expire_at: None },
        );

        let newer = r#"{"op":"subscribe","user":"42","channel":"news","client":null,"info":"{\"seat\":7}","data":"{}","expire_at":1900000000,"later":1}"#;
        let command: Control =
            serde_json::from_str(newer).expect("a newer node's command, fields unknown here ignored");
        let Control::Subscribe { info, data, expire_at, .. } = command else { panic!("{command:?}") };
        assert_eq!((info.as_deref(), data.as_deref()), (Some(r#"{"seat":7}"#), Some("{}")));
        assert_eq!(expire_at, Some(1_900_000_000));
    }

    #[test]
    fn a_refresh_command_reads_with_or_without_the_info_newer_nodes_add() {
        let user = UserId::new("42").unwrap();
        read_and_written_as_older_nodes_do(
            r#"{"op":"refresh","user":"42","client":null,"expire_at":null,"expired":false}"#,
            Control::Refresh { user, client: None, expire_at: None, expired: false, info: None },
        );
        let newer = r#"{"op":"refresh","user":"42","client":null,"expire_at":null,"expired":false,"info":"{}"}"#;
        let Control::Refresh { info, .. } = serde_json::from_str(newer).expect("a newer node's") else { panic!() };
        assert_eq!(info.as_deref(), Some("{}"));
    }
}
