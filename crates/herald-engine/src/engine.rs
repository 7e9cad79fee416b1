//! The `Engine` trait: the seam between a node and its cluster.
//!
//! An engine broadcasts publications and control commands between nodes and
//! (later) keeps the state every node must agree on. A node subscribes to a
//! channel on its engine only while it has local subscribers to that channel
//! (interest-based routing), so a node receives only what it can deliver.
//!
//! Contract every implementation keeps (checked by [`crate::conformance`]):
//! - events reach the handler given to [`Engine::start`];
//! - a publication reaches a node only while that node is subscribed to its
//!   channel, and publications to one channel arrive in the order they were
//!   accepted;
//! - a control command reaches every node, the sender included.

use std::sync::Arc;

use async_trait::async_trait;

use crate::ids::ChannelName;
use crate::message::{Control, EngineEvent, Publication, StreamPosition};

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

/// Options that shape one publish.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublishOptions {}

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

    /// Publishes into a channel and returns where the publication landed.
    async fn publish(
        &self,
        channel: &ChannelName,
        publication: Publication,
        options: &PublishOptions,
    ) -> Result<StreamPosition, EngineError>;

    /// Starts delivering this channel's publications to this node.
    async fn subscribe(&self, channel: &ChannelName) -> Result<(), EngineError>;

    /// Stops delivering this channel's publications to this node.
    async fn unsubscribe(&self, channel: &ChannelName) -> Result<(), EngineError>;

    /// Sends a control command to every node, this one included.
    async fn send_control(&self, command: Control) -> Result<(), EngineError>;

    /// Whether the engine can currently serve.
    async fn health(&self) -> Health;
}
