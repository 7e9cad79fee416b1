//! The broker: how publications, joins and leaves, and control commands
//! travel between nodes.
//!
//! Contract (checked by `conformance::broker`):
//! - a publication into a channel with history gets the next offset of
//!   the channel's stream atomically with its broadcast, so offset order
//!   is delivery order on every node;
//! - a publication (or join, or leave) reaches a node only while that node
//!   is subscribed to its channel (interest-based routing), in publish
//!   order;
//! - a publish repeated with the same idempotency key inside its window
//!   returns the first result and delivers nothing;
//! - a control command reaches every node, the sender included;
//! - a broker that loses its link to the backplane, and so may have missed
//!   broadcasts, tells its node with [`EngineEvent::Interrupted`].

use std::time::Duration;

use async_trait::async_trait;

use crate::engine::{EngineError, Health};
use crate::ids::ChannelName;
use crate::message::{Control, EngineEvent, PresenceEvent, Publication, StreamPosition};

/// Receives what the engine delivers. Implementations must not block: they
/// hand work off (the hub pushes into bounded per-connection queues).
pub trait EventHandler: Send + Sync + 'static {
    /// Takes one event; called in delivery order.
    fn handle(&self, event: EngineEvent);
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
    /// How long an idempotency key is remembered.
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

/// Moves publications, joins and leaves, and control commands between
/// nodes. See the module documentation for its contract.
#[async_trait]
pub trait Broker: Send + Sync + std::fmt::Debug + 'static {
    /// Connects the broker to its node: from now on it delivers to
    /// `handler`. Called once, before anything else; a second call keeps
    /// the first handler.
    async fn start(&self, handler: std::sync::Arc<dyn EventHandler>) -> Result<(), EngineError>;

    /// Publishes into a channel: appends to its history when asked,
    /// assigns the offset and broadcasts, as one step.
    async fn publish(
        &self,
        channel: &ChannelName,
        publication: Publication,
        options: &PublishOptions,
    ) -> Result<PublishResult, EngineError>;

    /// Broadcasts a join or leave to the channel's subscribers on every node.
    async fn publish_presence(&self, channel: &ChannelName, event: PresenceEvent) -> Result<(), EngineError>;

    /// Starts delivering this channel's publications, joins and leaves to
    /// this node.
    async fn subscribe(&self, channel: &ChannelName) -> Result<(), EngineError>;

    /// Stops delivering this channel's publications to this node.
    async fn unsubscribe(&self, channel: &ChannelName) -> Result<(), EngineError>;

    /// Sends a control command to every node, this one included.
    async fn send_control(&self, command: Control) -> Result<(), EngineError>;

    /// Whether the broker can currently serve.
    async fn health(&self) -> Health;

    /// Messages for this node the broker has dropped since it started,
    /// because the node did not take them in time (positioned subscribers
    /// see the gap and recover; others lose them). No default: a wrapper
    /// that forgot to pass it on would report none.
    fn dropped(&self) -> u64;
}
