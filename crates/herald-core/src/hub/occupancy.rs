//! Cluster-wide occupancy: which channels have subscribers anywhere in the
//! cluster, how many, and the transitions webhooks report (a channel
//! becoming occupied or vacated; a user arriving in or departing from a
//! presence channel).
//!
//! Each transition is decided by exactly one node. User arrivals and
//! departures come from the engine's presence (it reports which add was a
//! user's first and which removal its last). Occupancy comes from the
//! engine's occupancy part: each node with local subscribers keeps an
//! entry with its count; the engine reports which entry made the channel
//! occupied and which removal vacated it.
//!
//! Entries are refreshed with the node's heartbeat. A dead node's entries
//! expire; a channel whose every node died drops out of the engine's index,
//! and the node whose sweep finds it reports it vacated.
//!
//! Occupancy is tracked only when `HubConfig::track_occupancy` is on (the
//! Pusher front-end needs it); otherwise queries answer for this node.

use std::sync::Arc;

use herald_engine::{ChannelName, ClientInfo, OccupancyChange};

use super::Hub;
use crate::error::HubError;

/// Hears the transitions this node decided for the cluster.
pub trait HubObserver: Send + Sync + std::fmt::Debug + 'static {
    /// The channel had no subscriber on any node, and now has one.
    fn channel_occupied(&self, channel: &ChannelName);
    /// The channel's last subscriber in the cluster left.
    fn channel_vacated(&self, channel: &ChannelName);
    /// A user's first connection joined a presence channel.
    fn user_joined(&self, channel: &ChannelName, info: &ClientInfo);
    /// A user's last connection left a presence channel.
    fn user_left(&self, channel: &ChannelName, info: &ClientInfo);
}

impl Hub {
    /// Installs the observer; only the first call takes effect.
    pub fn observe(&self, observer: Arc<dyn HubObserver>) {
        let _ = self.observer.set(observer);
    }

    /// Records this node's subscriber count of `channel` after a change,
    /// and reports a cluster-wide transition if this node decided it.
    /// Called under the channel's interest lock.
    pub(super) async fn occupy(&self, channel: &ChannelName, subscribers: usize) {
        if !self.config.track_occupancy {
            return;
        }
        let occupancy = self.engine.occupancy();
        let node = &self.config.node;
        let changed = match subscribers {
            0 => occupancy.vacate(channel, node).await,
            _ => occupancy.occupy(channel, node, subscribers, self.config.presence_ttl).await,
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
    pub(super) async fn refresh_occupancy(&self, channels: &[(ChannelName, usize)]) {
        if !self.config.track_occupancy {
            return;
        }
        let occupancy = self.engine.occupancy();
        for (channel, subscribers) in channels {
            let refreshed = occupancy.occupy(channel, &self.config.node, *subscribers, self.config.presence_ttl);
            if let Err(error) = refreshed.await {
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

    /// How many subscribers `channel` has in the whole cluster.
    pub async fn subscription_count(&self, channel: &ChannelName) -> Result<usize, HubError> {
        let local = self.channels.read(channel).get(channel).map_or(0, |s| s.len());
        if !self.config.track_occupancy {
            return Ok(local);
        }
        let me = &self.config.node;
        let entries = self.engine.occupancy().subscribers(channel).await?;
        let remote: usize = entries.iter().filter(|e| &e.node != me).map(|e| e.subscribers).sum();
        Ok(local + remote)
    }

    /// The channels with subscribers anywhere in the cluster, sorted.
    pub async fn occupied_channels(&self) -> Result<Vec<ChannelName>, HubError> {
        let mut channels: Vec<ChannelName> = self.channels(None).into_iter().map(|(name, _)| name).collect();
        if self.config.track_occupancy {
            channels.extend(self.engine.occupancy().occupied_channels().await?);
            channels.sort();
            channels.dedup();
        }
        Ok(channels)
    }
}
