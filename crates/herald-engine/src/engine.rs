//! The engine: the seam between a node and its cluster.
//!
//! An engine broadcasts publications, joins and leaves and control
//! commands between nodes, and keeps the state every node must agree on:
//! each channel's history and stream position, presence, which nodes
//! serve which channels (occupancy), and the node registry. It is made of
//! five parts, each a small trait with its own contract:
//!
//! - [`Broker`](crate::Broker): publish (with the history append and the
//!   offset, as one step), joins and leaves, interest-based subscriptions,
//!   control commands;
//! - [`History`](crate::History): reading and dropping a channel's stream;
//! - [`Presence`](crate::Presence): who is in a channel, with expiry, and
//!   which change was a user's arrival or departure;
//! - [`Occupancy`](crate::Occupancy): which nodes have subscribers to a
//!   channel, and which change made it occupied or vacated cluster-wide;
//! - [`NodeRegistry`](crate::NodeRegistry): the live nodes and their counts.
//!
//! [`Engine`] bundles one implementation of each. The memory and Redis
//! engines implement all five on one type; an engine made of parts from
//! two engines is built with [`Engine::from_parts`].
//!
//! Writing an engine: implement the five traits, following the contract
//! each trait's documentation states, and call the conformance suite
//! (`herald_engine::engine_conformance!`, feature `conformance`) from the
//! engine's tests. The suite is grouped like the traits, one test per case.

use std::sync::Arc;

use crate::broker::{Broker, EventHandler};
use crate::history::History;
use crate::nodes::NodeRegistry;
use crate::occupancy::Occupancy;
use crate::presence::Presence;

/// Why an engine operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The engine was used before [`Engine::start`].
    #[error("engine is not started")]
    NotStarted,
    /// The backplane cannot be reached or refused the operation; retry.
    #[error("engine is unavailable: {0}")]
    Unavailable(String),
}

/// Health as reported by `/health`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// The engine can serve.
    Ready,
    /// The engine cannot serve, for this reason.
    NotReady {
        /// What is wrong, for operators.
        reason: String,
    },
}

/// Everything that implements all five parts can serve as a whole engine.
pub trait WholeEngine: Broker + History + Presence + Occupancy + NodeRegistry {}

impl<T: Broker + History + Presence + Occupancy + NodeRegistry> WholeEngine for T {}

/// Wraps each part of an engine in another implementation of its trait
/// (see [`Engine::wrapped`]).
pub trait PartWrapper {
    /// The broker to use instead of `part`.
    fn broker(&self, part: Arc<dyn Broker>) -> Arc<dyn Broker>;
    /// The history to use instead of `part`.
    fn history(&self, part: Arc<dyn History>) -> Arc<dyn History>;
    /// The presence to use instead of `part`.
    fn presence(&self, part: Arc<dyn Presence>) -> Arc<dyn Presence>;
    /// The occupancy to use instead of `part`.
    fn occupancy(&self, part: Arc<dyn Occupancy>) -> Arc<dyn Occupancy>;
    /// The node registry to use instead of `part`.
    fn nodes(&self, part: Arc<dyn NodeRegistry>) -> Arc<dyn NodeRegistry>;
}

/// The engine a node runs on: one implementation of each part. Exactly one
/// per node, picked at start-up. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Engine {
    name: &'static str,
    broker: Arc<dyn Broker>,
    history: Arc<dyn History>,
    presence: Arc<dyn Presence>,
    occupancy: Arc<dyn Occupancy>,
    nodes: Arc<dyn NodeRegistry>,
}

impl Engine {
    /// An engine whose every part is `engine`; `name` is for logs and
    /// `/api/info` (`memory`, `redis`, …).
    pub fn new<E: WholeEngine>(name: &'static str, engine: Arc<E>) -> Self {
        Self::from_parts(name, engine.clone(), engine.clone(), engine.clone(), engine.clone(), engine)
    }

    /// An engine assembled from parts of different engines. History must
    /// come with the broker that appends to it (publish writes history).
    pub fn from_parts(
        name: &'static str,
        broker: Arc<dyn Broker>,
        history: Arc<dyn History>,
        presence: Arc<dyn Presence>,
        occupancy: Arc<dyn Occupancy>,
        nodes: Arc<dyn NodeRegistry>,
    ) -> Self {
        Self { name, broker, history, presence, occupancy, nodes }
    }

    /// The embedded single-node engine, with the default limits.
    pub fn memory() -> Self {
        Self::memory_with(crate::MemoryLimits::default())
    }

    /// The embedded single-node engine, with these limits.
    pub fn memory_with(limits: crate::MemoryLimits) -> Self {
        Self::new("memory", Arc::new(crate::MemoryEngine::with_limits(limits)))
    }

    /// This engine with another history reader (for tests that need to
    /// interpose on history reads).
    pub fn with_history(self, history: Arc<dyn History>) -> Self {
        Self { history, ..self }
    }

    /// This engine with every part passed through `wrap` (for decorators
    /// that see every call, such as the server's metrics).
    pub fn wrapped(self, wrap: &impl PartWrapper) -> Self {
        Self {
            name: self.name,
            broker: wrap.broker(self.broker),
            history: wrap.history(self.history),
            presence: wrap.presence(self.presence),
            occupancy: wrap.occupancy(self.occupancy),
            nodes: wrap.nodes(self.nodes),
        }
    }

    /// A short name for logs (`memory`, `redis`, …).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Connects the engine to its node. Call once, before anything else.
    pub async fn start(&self, handler: Arc<dyn EventHandler>) -> Result<(), EngineError> {
        self.broker.start(handler).await
    }

    /// Whether the engine can currently serve.
    pub async fn health(&self) -> Health {
        self.broker.health().await
    }

    /// Publications, joins and leaves, subscriptions and control.
    pub fn broker(&self) -> &dyn Broker {
        &*self.broker
    }

    /// Channels' history streams.
    pub fn history(&self) -> &dyn History {
        &*self.history
    }

    /// Who is present in each channel.
    pub fn presence(&self) -> &dyn Presence {
        &*self.presence
    }

    /// Which nodes serve each channel.
    pub fn occupancy(&self) -> &dyn Occupancy {
        &*self.occupancy
    }

    /// The live nodes of the cluster.
    pub fn nodes(&self) -> &dyn NodeRegistry {
        &*self.nodes
    }
}
