//! The node registry: every live node of the cluster, with its counts.
//!
//! Contract (checked by `conformance::nodes`): a node is listed while its
//! last registration lives (`ttl`), with what it registered last.

use std::time::Duration;

use async_trait::async_trait;

use crate::engine::EngineError;
use crate::message::NodeInfo;

/// The cluster's live nodes. See the module documentation for its contract.
#[async_trait]
pub trait NodeRegistry: Send + Sync + std::fmt::Debug + 'static {
    /// Records this node as alive with its current counts, for `ttl`.
    async fn register_node(&self, info: &NodeInfo, ttl: Duration) -> Result<(), EngineError>;

    /// Every live node of the cluster, sorted by id.
    async fn nodes(&self) -> Result<Vec<NodeInfo>, EngineError>;
}
