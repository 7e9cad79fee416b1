//! The memory engine's occupancy and node registry: each channel's serving
//! nodes in its shard, the index of occupied channels and the registry in
//! maps of their own, every entry with its expiry.

use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::{lock, MemoryEngine};
use crate::engine::EngineError;
use crate::ids::{ChannelName, NodeId};
use crate::message::NodeInfo;
use crate::nodes::NodeRegistry;
use crate::occupancy::{NodeSubscribers, Occupancy, OccupancyChange};

#[async_trait]
impl Occupancy for MemoryEngine {
    async fn occupy(
        &self,
        channel: &ChannelName,
        node: &NodeId,
        subscribers: usize,
        ttl: Duration,
    ) -> Result<OccupancyChange, EngineError> {
        let now = Instant::now();
        let change = {
            let mut shard = self.shard(channel);
            let entries = shard.occupancy.entry(channel.clone()).or_default();
            entries.retain(|_, (_, until)| now < *until);
            let first = entries.is_empty();
            entries.insert(node.clone(), (subscribers, now + ttl));
            if first {
                OccupancyChange::Occupied
            } else {
                OccupancyChange::Unchanged
            }
        };
        lock(&self.occupied).insert(channel.clone(), now + ttl);
        Ok(change)
    }

    async fn vacate(&self, channel: &ChannelName, node: &NodeId) -> Result<OccupancyChange, EngineError> {
        let now = Instant::now();
        let vacated = {
            let mut shard = self.shard(channel);
            let Some(entries) = shard.occupancy.get_mut(channel) else { return Ok(OccupancyChange::Unchanged) };
            let removed = entries.remove(node).is_some();
            entries.retain(|_, (_, until)| now < *until);
            let empty = entries.is_empty();
            if empty {
                shard.occupancy.remove(channel);
            }
            removed && empty
        };
        if !vacated {
            return Ok(OccupancyChange::Unchanged);
        }
        lock(&self.occupied).remove(channel);
        Ok(OccupancyChange::Vacated)
    }

    async fn subscribers(&self, channel: &ChannelName) -> Result<Vec<NodeSubscribers>, EngineError> {
        let now = Instant::now();
        let shard = self.shard(channel);
        let Some(entries) = shard.occupancy.get(channel) else { return Ok(Vec::new()) };
        let mut live: Vec<NodeSubscribers> = entries
            .iter()
            .filter(|(_, (_, until))| now < *until)
            .map(|(node, (subscribers, _))| NodeSubscribers { node: node.clone(), subscribers: *subscribers })
            .collect();
        live.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(live)
    }

    async fn occupied_channels(&self) -> Result<Vec<ChannelName>, EngineError> {
        let now = Instant::now();
        let mut channels: Vec<ChannelName> =
            lock(&self.occupied).iter().filter(|(_, until)| now < **until).map(|(c, _)| c.clone()).collect();
        channels.sort();
        Ok(channels)
    }

    async fn expire_vacated(&self) -> Result<Vec<ChannelName>, EngineError> {
        let now = Instant::now();
        let mut occupied = lock(&self.occupied);
        let expired: Vec<ChannelName> =
            occupied.iter().filter(|(_, until)| now >= **until).map(|(c, _)| c.clone()).collect();
        for channel in &expired {
            occupied.remove(channel);
        }
        Ok(expired)
    }
}

#[async_trait]
impl NodeRegistry for MemoryEngine {
    async fn register_node(&self, info: &NodeInfo, ttl: Duration) -> Result<(), EngineError> {
        let until = Instant::now() + ttl;
        lock(&self.nodes).insert(info.id.clone(), (info.clone(), until));
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, EngineError> {
        let now = Instant::now();
        let mut nodes = lock(&self.nodes);
        nodes.retain(|_, (_, until)| now < *until);
        let mut live: Vec<NodeInfo> = nodes.values().map(|(info, _)| info.clone()).collect();
        live.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(live)
    }
}
