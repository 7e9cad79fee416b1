//! The Redis engine's occupancy and node registry.
//!
//! Per channel, a hash of serving nodes (node -> subscribers) and a sorted
//! set of their expiries, changed by scripts; the cluster-wide index of
//! occupied channels is a sorted set scored by expiry, on a route of its
//! own. A node's entry and the index live in different slots of a Redis
//! Cluster, so they are updated one after the other: the index may lag a
//! channel's entries by one command, and heals at the next heartbeat.

use std::time::Duration;

use async_trait::async_trait;

use herald_engine::{
    ChannelName, EngineError, NodeId, NodeInfo, NodeRegistry, NodeSubscribers, Occupancy, OccupancyChange,
};

use crate::backplane::Backplane;
use crate::{millis, unavailable, RedisEngine, NODES_ROUTE, OCCUPIED_ROUTE};

#[async_trait]
impl<B: Backplane> Occupancy for RedisEngine<B> {
    async fn occupy(
        &self,
        channel: &ChannelName,
        node: &NodeId,
        subscribers: usize,
        ttl: Duration,
    ) -> Result<OccupancyChange, EngineError> {
        let (entries, expiries) = self.keys.occupancy(channel);
        let first: i64 = self
            .scripts
            .occupy
            .key(entries)
            .key(expiries)
            .arg(node.as_str())
            .arg(subscribers)
            .arg(millis(ttl))
            .invoke_async(&mut self.connection(channel.as_str()))
            .await
            .map_err(unavailable)?;
        let _: i64 = self
            .scripts
            .add_member
            .key(self.keys.occupied())
            .arg(channel.as_str())
            .arg(millis(ttl))
            .invoke_async(&mut self.connection(OCCUPIED_ROUTE))
            .await
            .map_err(unavailable)?;
        Ok(if first == 1 { OccupancyChange::Occupied } else { OccupancyChange::Unchanged })
    }

    async fn vacate(&self, channel: &ChannelName, node: &NodeId) -> Result<OccupancyChange, EngineError> {
        let (entries, expiries) = self.keys.occupancy(channel);
        let vacated: i64 = self
            .scripts
            .vacate
            .key(entries)
            .key(expiries)
            .arg(node.as_str())
            .invoke_async(&mut self.connection(channel.as_str()))
            .await
            .map_err(unavailable)?;
        if vacated != 1 {
            return Ok(OccupancyChange::Unchanged);
        }
        let _: i64 = redis::cmd("ZREM")
            .arg(self.keys.occupied())
            .arg(channel.as_str())
            .query_async(&mut self.connection(OCCUPIED_ROUTE))
            .await
            .map_err(unavailable)?;
        Ok(OccupancyChange::Vacated)
    }

    async fn subscribers(&self, channel: &ChannelName) -> Result<Vec<NodeSubscribers>, EngineError> {
        let raw = self.read_expiring(channel.as_str(), self.keys.occupancy(channel)).await?;
        let mut live: Vec<NodeSubscribers> = raw
            .into_iter()
            .filter_map(|(node, count)| {
                let subscribers = std::str::from_utf8(&count).ok()?.parse().ok()?;
                Some(NodeSubscribers { node: NodeId::from(node), subscribers })
            })
            .collect();
        live.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(live)
    }

    async fn occupied_channels(&self) -> Result<Vec<ChannelName>, EngineError> {
        let names: Vec<String> = self
            .scripts
            .live_members
            .key(self.keys.occupied())
            .invoke_async(&mut self.connection(OCCUPIED_ROUTE))
            .await
            .map_err(unavailable)?;
        let mut channels: Vec<ChannelName> = names.iter().filter_map(|n| ChannelName::new(n).ok()).collect();
        channels.sort();
        Ok(channels)
    }

    async fn expire_vacated(&self) -> Result<Vec<ChannelName>, EngineError> {
        let names: Vec<String> = self
            .scripts
            .expire_members
            .key(self.keys.occupied())
            .invoke_async(&mut self.connection(OCCUPIED_ROUTE))
            .await
            .map_err(unavailable)?;
        Ok(names.iter().filter_map(|n| ChannelName::new(n).ok()).collect())
    }
}

#[async_trait]
impl<B: Backplane> NodeRegistry for RedisEngine<B> {
    async fn register_node(&self, info: &NodeInfo, ttl: Duration) -> Result<(), EngineError> {
        let json = serde_json::to_vec(info).map_err(|e| EngineError::Unavailable(e.to_string()))?;
        self.add_expiring(NODES_ROUTE, self.keys.nodes(), info.id.as_str(), json, ttl).await
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, EngineError> {
        let raw = self.read_expiring(NODES_ROUTE, self.keys.nodes()).await?;
        let mut nodes: Vec<NodeInfo> = raw.iter().filter_map(|(_, json)| serde_json::from_slice(json).ok()).collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(nodes)
    }
}
