//! Cluster-wide occupancy: which channels have subscribers anywhere in the
//! cluster, how many, and the transitions webhooks report (a channel
//! becoming occupied or vacated; a user arriving in or departing from a
//! presence channel).
//!
//! Each transition is decided by exactly one node. User arrivals and
//! departures come from the engine's presence entries (the engine reports
//! which add was a user's first and which removal its last). Occupancy uses
//! the same mechanism one level up: each node with local subscribers keeps
//! an entry for itself, carrying its subscriber count, in the channel's
//! occupancy set (presence of a companion channel). The node whose entry is
//! the set's first saw the channel become occupied; the node whose removal
//! empties it saw it vacated. Occupied channels are also listed in one
//! index set, so any node can list the cluster's channels.
//!
//! Entries are refreshed with the node's heartbeat. A dead node's entries
//! expire and are swept by the survivors; a channel whose every node died
//! drops out of the index, and the node that sweeps it reports it vacated.
//!
//! Occupancy is tracked only when `HubConfig::track_occupancy` is on (the
//! Pusher front-end needs it); otherwise queries answer for this node.

use std::sync::Arc;

use bytes::Bytes;
use herald_engine::{ChannelName, ClientId, ClientInfo, UserId};

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

/// The set of nodes with subscribers to `channel`. Names too long for a
/// companion are not tracked cluster-wide.
fn occupancy_set(channel: &ChannelName) -> Option<ChannelName> {
    ChannelName::new(&format!("$occupancy:{channel}")).ok()
}

/// The set of occupied channels.
fn index() -> ChannelName {
    ChannelName::new("$occupied").expect("a valid channel name")
}

fn index_entry(channel: &ChannelName) -> ClientInfo {
    ClientInfo { user: UserId::anonymous(), client: ClientId::new(channel.as_str()), conn_info: None, chan_info: None }
}

impl Hub {
    /// Installs the observer; only the first call takes effect.
    pub fn observe(&self, observer: Arc<dyn HubObserver>) {
        let _ = self.observer.set(observer);
    }

    /// This node's entry in an occupancy set. Every node is the same "user",
    /// so the engine's first/last-of-user answer is first/last node.
    fn occupancy_entry(&self, subscribers: usize) -> ClientInfo {
        ClientInfo {
            user: UserId::anonymous(),
            client: ClientId::new(self.config.node.as_str()),
            conn_info: Some(Bytes::from(subscribers.to_string())),
            chan_info: None,
        }
    }

    /// Records this node's subscriber count of `channel` after a change,
    /// and reports a cluster-wide transition if this node decided it.
    /// Called under the channel's interest lock.
    pub(super) async fn occupy(&self, channel: &ChannelName, subscribers: usize) {
        if !self.config.track_occupancy {
            return;
        }
        let Some(set) = occupancy_set(channel) else { return };
        let entry = self.occupancy_entry(subscribers);
        let engine = &self.engine;
        let changed = match subscribers {
            0 => engine.remove_presence(&set, &entry).await,
            _ => engine.add_presence(&set, &entry, self.config.presence_ttl).await,
        };
        match changed {
            Ok(true) if subscribers > 0 => {
                self.index(channel, true).await;
                if let Some(observer) = self.observer.get() {
                    observer.channel_occupied(channel);
                }
            }
            Ok(true) => {
                self.index(channel, false).await;
                if let Some(observer) = self.observer.get() {
                    observer.channel_vacated(channel);
                }
            }
            Ok(false) => {}
            Err(error) => tracing::warn!(%channel, %error, "occupancy update failed; counts may lag a heartbeat"),
        }
    }

    async fn index(&self, channel: &ChannelName, occupied: bool) {
        let entry = index_entry(channel);
        let result = match occupied {
            true => self.engine.add_presence(&index(), &entry, self.config.presence_ttl).await.map(drop),
            false => self.engine.remove_presence(&index(), &entry).await.map(drop),
        };
        if let Err(error) = result {
            tracing::warn!(%channel, %error, "channel index update failed; it heals on the next heartbeat");
        }
    }

    /// Refreshes this node's entries for the channels it serves, sweeps the
    /// entries of dead nodes, and reports channels left by dead nodes only.
    pub(super) async fn refresh_occupancy(&self, channels: &[(ChannelName, usize)]) {
        if !self.config.track_occupancy {
            return;
        }
        let ttl = self.config.presence_ttl;
        for (channel, subscribers) in channels {
            let Some(set) = occupancy_set(channel) else { continue };
            let refreshed = async {
                self.engine.add_presence(&set, &self.occupancy_entry(*subscribers), ttl).await?;
                // This node's entry is live, so a sweep never empties the set.
                self.engine.expire_presence(&set).await?;
                self.engine.add_presence(&index(), &index_entry(channel), ttl).await
            };
            if let Err(error) = refreshed.await {
                tracing::warn!(%channel, %error, "occupancy refresh failed");
            }
        }
        match self.engine.expire_presence(&index()).await {
            Ok(abandoned) => {
                for (entry, _) in abandoned {
                    let Ok(channel) = ChannelName::new(entry.client.as_str()) else { continue };
                    tracing::info!(%channel, "every node serving the channel is gone: vacated");
                    if let Some(observer) = self.observer.get() {
                        observer.channel_vacated(&channel);
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "channel index sweep failed"),
        }
    }

    /// How many subscribers `channel` has in the whole cluster.
    pub async fn subscription_count(&self, channel: &ChannelName) -> Result<usize, HubError> {
        let local = self.channels.read(channel).get(channel).map_or(0, |s| s.len());
        let Some(set) = occupancy_set(channel).filter(|_| self.config.track_occupancy) else { return Ok(local) };
        let me = self.config.node.as_str();
        let remote: usize = self
            .engine
            .presence(&set)
            .await?
            .iter()
            .filter(|entry| entry.client.as_str() != me)
            .filter_map(|entry| std::str::from_utf8(entry.conn_info.as_deref()?).ok()?.parse::<usize>().ok())
            .sum();
        Ok(local + remote)
    }

    /// The channels with subscribers anywhere in the cluster, sorted.
    pub async fn occupied_channels(&self) -> Result<Vec<ChannelName>, HubError> {
        let mut channels: Vec<ChannelName> = self.channels(None).into_iter().map(|(name, _)| name).collect();
        if self.config.track_occupancy {
            let listed = self.engine.presence(&index()).await?;
            channels.extend(listed.iter().filter_map(|entry| ChannelName::new(entry.client.as_str()).ok()));
            channels.sort();
            channels.dedup();
        }
        Ok(channels)
    }
}
