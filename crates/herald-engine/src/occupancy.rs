//! Occupancy: which nodes have subscribers to each channel, so the cluster
//! can count a channel's subscribers, list its occupied channels, and
//! report each channel becoming occupied or vacated exactly once.
//!
//! Each node keeps an entry per channel it serves, with its local
//! subscriber count, and refreshes it with its heartbeat. A channel with
//! an entry is also listed in a cluster-wide index.
//!
//! Contract (checked by `conformance::occupancy`):
//! - an entry counts while it lives: `ttl` after it was last set;
//! - of concurrent first entries of a channel, exactly one reports
//!   [`OccupancyChange::Occupied`]; of the removals that leave a channel
//!   without a live entry, exactly one reports [`OccupancyChange::Vacated`],
//!   and the channel leaves the index;
//! - a refresh sweeps the expired entries of other (dead) nodes;
//! - a channel whose every node died drops out of the index when its index
//!   entry expires, and [`Occupancy::expire_vacated`] hands it to exactly
//!   one caller, which reports it vacated.

use std::time::Duration;

use async_trait::async_trait;

use crate::engine::EngineError;
use crate::ids::{ChannelName, NodeId};

/// What a change of a node's entry did to the channel, cluster-wide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OccupancyChange {
    /// The channel had no subscriber on any node, and now has.
    Occupied,
    /// The channel's last subscriber in the cluster left.
    Vacated,
    /// Other nodes still serve (or already served) the channel.
    Unchanged,
}

/// One node's subscriber count of a channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSubscribers {
    /// The node.
    pub node: NodeId,
    /// Its local subscribers to the channel.
    pub subscribers: usize,
}

/// Tracks which nodes serve which channels. See the module documentation
/// for its contract.
#[async_trait]
pub trait Occupancy: Send + Sync + std::fmt::Debug + 'static {
    /// Sets (or refreshes) `node`'s entry for `channel` to `subscribers`
    /// (at least 1), living `ttl`, sweeps other nodes' expired entries, and
    /// lists the channel in the index for `ttl`.
    async fn occupy(
        &self,
        channel: &ChannelName,
        node: &NodeId,
        subscribers: usize,
        ttl: Duration,
    ) -> Result<OccupancyChange, EngineError>;

    /// Removes `node`'s entry for `channel`.
    async fn vacate(&self, channel: &ChannelName, node: &NodeId) -> Result<OccupancyChange, EngineError>;

    /// The live entries of `channel`.
    async fn subscribers(&self, channel: &ChannelName) -> Result<Vec<NodeSubscribers>, EngineError>;

    /// Every channel listed in the index, sorted.
    async fn occupied_channels(&self) -> Result<Vec<ChannelName>, EngineError>;

    /// Removes index entries that nobody refreshed within their ttl and
    /// returns their channels, each to exactly one caller.
    async fn expire_vacated(&self) -> Result<Vec<ChannelName>, EngineError>;
}
