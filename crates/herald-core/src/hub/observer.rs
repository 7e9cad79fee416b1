//! Who hears the cluster-wide transitions this node decides: a channel
//! becoming occupied or vacated, a user arriving in or departing from a
//! presence channel. Each transition is decided by exactly one node of the
//! cluster (see `occupancy.rs` and the engine's presence contract), so an
//! observer that sends webhooks sends each once per cluster.

use herald_engine::{ChannelName, ClientInfo};

/// Hears the transitions this node decided for the cluster.
pub trait HubObserver: Send + Sync + std::fmt::Debug + 'static {
    /// The channel had no subscriber on any node, and now has one.
    fn channel_occupied(&self, channel: &ChannelName);
    /// The channel's last subscriber in the cluster left.
    fn channel_vacated(&self, channel: &ChannelName);
    /// A user's first connection joined a presence channel (any
    /// anonymous connection: each is its own arrival).
    fn user_joined(&self, channel: &ChannelName, info: &ClientInfo);
    /// A user's last connection left a presence channel (any anonymous
    /// connection: each is its own departure).
    fn user_left(&self, channel: &ChannelName, info: &ClientInfo);
    /// The channel gained or lost a subscriber on this node (its count in
    /// the cluster may have changed). Called on every such change, under
    /// the channel's interest lock: an observer only takes note.
    fn subscribers_changed(&self, _channel: &ChannelName) {}
}

/// The hub's observer, once installed; shared by the parts that decide
/// transitions. Until one is installed, transitions are not reported.
pub(super) type Observer = super::installed::Installed<dyn HubObserver>;

/// Takes client commands relayed from another node (see
/// `Control::Relay`) to the session this node holds.
pub trait SessionRelay: Send + Sync + std::fmt::Debug + 'static {
    /// Hands `data` to the session with key `session`, if this node holds it.
    fn deliver(&self, session: String, data: String);

    /// The public key the node's session keys are signed with, published
    /// in the node registry (`NodeInfo::relay_key`).
    fn relay_key(&self) -> Option<String> {
        None
    }
}

/// The hub's relay target, once installed.
pub(super) type Relay = super::installed::Installed<dyn SessionRelay>;
