//! The `Engine` trait: the seam between a node and its cluster.
//!
//! An engine broadcasts publications, presence events and control commands
//! between nodes, and keeps the state every node must agree on: each
//! channel's history and stream position, presence, and the node registry.
//! A node subscribes to a channel on its engine only while it has local
//! subscribers to that channel (interest-based routing).
//!
//! Contract every implementation keeps (checked by [`crate::conformance`]):
//! - a publication into a channel with history gets the next offset of the
//!   channel's stream atomically with its broadcast, so offset order is
//!   delivery order on every node;
//! - a publication reaches a node only while that node is subscribed to its
//!   channel, in offset order;
//! - history keeps at most `size` publications, drops them all `ttl` after
//!   the last publication, and keeps the stream position for `meta_ttl`;
//!   a stream whose position expired starts again under a new epoch;
//! - a publish repeated with the same idempotency key inside its window
//!   returns the first result and delivers nothing;
//! - presence entries vanish `presence_ttl` after their last refresh, and
//!   each expired entry is handed to exactly one `expire_presence` caller;
//! - exactly one of the concurrent adds of a user's entries reports the
//!   user's arrival, and exactly one removal (or expiry) its departure;
//! - a control command reaches every node, the sender included.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::ids::ChannelName;
use crate::message::{ClientInfo, Control, EngineEvent, NodeInfo, PresenceStats, Publication, StreamPosition};

/// Receives what the engine delivers. Implementations must not block: they
/// hand work off (the hub pushes into bounded per-connection queues).
pub trait EventHandler: Send + Sync + 'static {
    fn handle(&self, event: EngineEvent);
}

/// Why an engine operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("engine is not started")]
    NotStarted,
    #[error("engine is unavailable: {0}")]
    Unavailable(String),
}

/// How a channel keeps history; given with every publish and history read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryOptions {
    /// Publications kept; 0 means the channel has no history.
    pub size: usize,
    /// How long publications are kept after the last publication.
    pub ttl: Duration,
    /// How long the stream's position (offset and epoch) outlives its last
    /// publication; after that the stream starts again under a new epoch.
    pub meta_ttl: Duration,
}

/// Options that shape one publish.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublishOptions {
    /// Keep the publication in history (and give it an offset).
    pub history: Option<HistoryOptions>,
    /// A repeat of the same key inside `idempotency_window` is not published again.
    pub idempotency_key: Option<String>,
    pub idempotency_window: Duration,
}

/// What a publish did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublishResult {
    /// Where the publication landed (zero offset without history).
    pub position: StreamPosition,
    /// True when the idempotency key matched an earlier publish: nothing was
    /// published now, and `position` is the earlier one's.
    pub duplicate: bool,
}

/// Which publications a history read returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Only publications after this position. Its epoch must match (or be
    /// empty, meaning any epoch); otherwise the result is empty and carries
    /// the current epoch.
    pub since: Option<StreamPosition>,
    /// At most this many; 0 returns only the stream position.
    pub limit: usize,
    /// Newest first.
    pub reverse: bool,
}

impl HistoryQuery {
    /// Applies the query to a stream at `position` holding `publications`
    /// (oldest first): every engine answers a history read this way.
    pub fn select(&self, position: StreamPosition, publications: Vec<Arc<Publication>>) -> HistoryResult {
        if self.limit == 0 {
            return HistoryResult { position, publications: Vec::new() };
        }
        let after = match &self.since {
            // An empty epoch means "any epoch".
            Some(since) if !since.epoch.is_empty() && since.epoch != position.epoch => {
                return HistoryResult { position, publications: Vec::new() };
            }
            Some(since) => since.offset.get(),
            None => 0,
        };
        let newer = publications.into_iter().filter(|p| p.offset.get() > after);
        let publications =
            if self.reverse { newer.rev().take(self.limit).collect() } else { newer.take(self.limit).collect() };
        HistoryResult { position, publications }
    }
}

/// A history read's result.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryResult {
    /// The stream's top: the last offset given out, and the epoch.
    pub position: StreamPosition,
    pub publications: Vec<Arc<Publication>>,
}

/// Health as reported by `/health` and the node registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    Ready,
    NotReady { reason: String },
}

/// The engine a node runs on. Exactly one per node, picked at start-up.
#[async_trait]
pub trait Engine: Send + Sync + std::fmt::Debug + 'static {
    /// A short name for logs (`memory`, `redis`, …).
    fn name(&self) -> &'static str;

    /// Connects the engine to its node. Called once, before anything else.
    async fn start(&self, handler: Arc<dyn EventHandler>) -> Result<(), EngineError>;

    /// Publishes into a channel: appends to its history when asked, assigns
    /// the offset and broadcasts, as one step.
    async fn publish(
        &self,
        channel: &ChannelName,
        publication: Publication,
        options: &PublishOptions,
    ) -> Result<PublishResult, EngineError>;

    /// Broadcasts a join or leave to the channel's subscribers on every node.
    async fn publish_presence_event(&self, event: EngineEvent) -> Result<(), EngineError>;

    /// Starts delivering this channel's publications to this node.
    async fn subscribe(&self, channel: &ChannelName) -> Result<(), EngineError>;

    /// Stops delivering this channel's publications to this node.
    async fn unsubscribe(&self, channel: &ChannelName) -> Result<(), EngineError>;

    /// Reads a channel's history and stream position.
    async fn history(
        &self,
        channel: &ChannelName,
        query: &HistoryQuery,
        options: &HistoryOptions,
    ) -> Result<HistoryResult, EngineError>;

    /// Drops a channel's history; its stream continues under a new epoch.
    async fn remove_history(&self, channel: &ChannelName) -> Result<(), EngineError>;

    /// Adds or refreshes a presence entry, which expires after `ttl`.
    /// True when the entry is new and its user had no other entry: the
    /// user, not only the client, arrived.
    async fn add_presence(&self, channel: &ChannelName, info: &ClientInfo, ttl: Duration) -> Result<bool, EngineError>;

    /// Removes a presence entry. True when it existed and was its user's
    /// last entry: the user, not only the client, left.
    async fn remove_presence(&self, channel: &ChannelName, info: &ClientInfo) -> Result<bool, EngineError>;

    /// Who is present in a channel.
    async fn presence(&self, channel: &ChannelName) -> Result<Vec<ClientInfo>, EngineError>;

    /// How many clients and distinct users are present in a channel.
    async fn presence_stats(&self, channel: &ChannelName) -> Result<PresenceStats, EngineError>;

    /// Removes the channel's expired presence entries and returns them,
    /// each to exactly one caller, so a leave can be announced for every
    /// client that vanished without leaving (its connection or node died).
    /// Reads (`presence`, `presence_stats`) skip expired entries but leave
    /// them for this. Each entry comes with whether it was its user's last.
    async fn expire_presence(&self, channel: &ChannelName) -> Result<Vec<(ClientInfo, bool)>, EngineError>;

    /// Records this node as alive with its current counts, for `ttl`.
    async fn register_node(&self, info: &NodeInfo, ttl: Duration) -> Result<(), EngineError>;

    /// Every live node of the cluster.
    async fn nodes(&self) -> Result<Vec<NodeInfo>, EngineError>;

    /// Sends a control command to every node, this one included.
    async fn send_control(&self, command: Control) -> Result<(), EngineError>;

    /// Whether the engine can currently serve.
    async fn health(&self) -> Health;
}
