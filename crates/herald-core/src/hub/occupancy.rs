//! Cluster-wide occupancy: which channels have subscribers anywhere in the
//! cluster, how many, and which node saw a channel become occupied or
//! vacated.
//!
//! Each node with local subscribers to a channel keeps an entry with its
//! count in the engine's occupancy, and the engine reports which change
//! made the channel occupied and which vacated it, each to exactly one
//! node. Entries are refreshed with the node's heartbeat. A dead node's
//! entries expire; a channel whose every node died drops out of the
//! engine's index, and the node whose sweep finds it reports it vacated.
//!
//! Occupancy is tracked only when `HubConfig::track_occupancy` is on (the
//! webhooks of occupied and vacated channels need it); otherwise queries
//! answer for this node.

use std::time::Duration;

use herald_engine::{ChannelName, Engine, EngineError, NodeId, OccupancyChange};

use super::observer::Observer;
use super::HubConfig;

#[derive(Debug)]
pub(super) struct OccupancyTracker {
    engine: Engine,
    node: NodeId,
    ttl: Duration,
    enabled: bool,
    observer: Observer,
}

impl OccupancyTracker {
    pub(super) fn new(config: &HubConfig, engine: Engine, observer: Observer) -> Self {
        Self { engine, node: config.node.clone(), ttl: config.presence_ttl, enabled: config.track_occupancy, observer }
    }

    /// Records this node's subscriber count of `channel` after a change,
    /// and reports a cluster-wide transition if this node decided it.
    /// Called under the channel's interest lock.
    pub(super) async fn update(&self, channel: &ChannelName, subscribers: usize) {
        if let Some(observer) = self.observer.get() {
            observer.subscribers_changed(channel);
        }
        if !self.enabled {
            return;
        }
        let occupancy = self.engine.occupancy();
        let changed = match subscribers {
            0 => occupancy.vacate(channel, &self.node).await,
            _ => occupancy.occupy(channel, &self.node, subscribers, self.ttl).await,
        };
        match changed {
            Ok(OccupancyChange::Occupied) => {
                if let Some(observer) = self.observer.get() {
                    observer.channel_occupied(channel);
                }
            }
            Ok(OccupancyChange::Vacated) => {
                if let Some(observer) = self.observer.get() {
                    observer.channel_vacated(channel);
                }
            }
            Ok(OccupancyChange::Unchanged) => {}
            Err(error) => tracing::warn!(%channel, %error, "occupancy update failed; counts may lag a heartbeat"),
        }
    }

    /// Refreshes this node's entries for the channels it serves (which
    /// sweeps dead nodes' entries), and reports channels left by dead nodes.
    pub(super) async fn refresh(&self, channels: &[(ChannelName, usize)]) {
        if !self.enabled {
            return;
        }
        let occupancy = self.engine.occupancy();
        for (channel, subscribers) in channels {
            if let Err(error) = occupancy.occupy(channel, &self.node, *subscribers, self.ttl).await {
                tracing::warn!(%channel, %error, "occupancy refresh failed");
            }
        }
        match occupancy.expire_vacated().await {
            Ok(abandoned) => {
                for channel in abandoned {
                    tracing::info!(%channel, "every node serving the channel is gone: vacated");
                    if let Some(observer) = self.observer.get() {
                        observer.channel_vacated(&channel);
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "occupied channels sweep failed"),
        }
    }

    /// How many subscribers `channel` has on other nodes (none counted
    /// when occupancy is not tracked).
    pub(super) async fn remote_subscribers(&self, channel: &ChannelName) -> Result<usize, EngineError> {
        if !self.enabled {
            return Ok(0);
        }
        let entries = self.engine.occupancy().subscribers(channel).await?;
        Ok(entries.iter().filter(|e| e.node != self.node).map(|e| e.subscribers).sum())
    }

    /// The channels occupied anywhere in the cluster, with `local` (this
    /// node's), sorted.
    pub(super) async fn occupied(&self, mut local: Vec<ChannelName>) -> Result<Vec<ChannelName>, EngineError> {
        if self.enabled {
            local.extend(self.engine.occupancy().occupied_channels().await?);
            local.sort();
            local.dedup();
        }
        Ok(local)
    }
}
