//! The memory engine's presence: each channel's entries in its shard,
//! with their expiry.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::MemoryEngine;
use crate::engine::EngineError;
use crate::ids::{ChannelName, ClientId};
use crate::message::{ClientInfo, PresenceStats};
use crate::presence::{Arrival, Departure, ExpiredEntry, Presence};

#[async_trait]
impl Presence for MemoryEngine {
    async fn add_presence(
        &self,
        channel: &ChannelName,
        info: &ClientInfo,
        ttl: Duration,
    ) -> Result<Arrival, EngineError> {
        let until = Instant::now() + ttl;
        let mut shard = self.shard(channel);
        let entries = shard.presence.entry(channel.clone()).or_default();
        let new = entries.insert(info.client.clone(), (info.clone(), until)).is_none();
        // Expired entries not yet swept still count, as in the Redis engine:
        // their user's departure is announced by the sweep.
        let alone =
            info.user.is_anonymous() || entries.values().filter(|(other, _)| other.user == info.user).count() == 1;
        Ok(if new && alone { Arrival::UserArrived } else { Arrival::UserWasPresent })
    }

    async fn remove_presence(&self, channel: &ChannelName, info: &ClientInfo) -> Result<Departure, EngineError> {
        let mut shard = self.shard(channel);
        let Some(entries) = shard.presence.get_mut(channel) else { return Ok(Departure::UserRemains) };
        let removed = entries.remove(&info.client).is_some();
        let user_left = removed && last_of_user(entries.values().map(|(other, _)| other), info);
        if entries.is_empty() {
            shard.presence.remove(channel);
        }
        Ok(if user_left { Departure::UserDeparted } else { Departure::UserRemains })
    }

    async fn presence(&self, channel: &ChannelName) -> Result<Vec<ClientInfo>, EngineError> {
        let now = Instant::now();
        let shard = self.shard(channel);
        let Some(entries) = shard.presence.get(channel) else { return Ok(Vec::new()) };
        Ok(entries.values().filter(|(_, until)| now < *until).map(|(info, _)| info.clone()).collect())
    }

    async fn presence_stats(&self, channel: &ChannelName) -> Result<PresenceStats, EngineError> {
        let present = self.presence(channel).await?;
        let users: HashSet<&str> = present.iter().map(|i| i.user.as_str()).collect();
        Ok(PresenceStats { num_clients: present.len(), num_users: users.len() })
    }

    async fn expire_presence(&self, channel: &ChannelName) -> Result<Vec<ExpiredEntry>, EngineError> {
        let now = Instant::now();
        let mut shard = self.shard(channel);
        let Some(entries) = shard.presence.get_mut(channel) else { return Ok(Vec::new()) };
        let expired: Vec<ClientId> =
            entries.iter().filter(|(_, (_, until))| now >= *until).map(|(c, _)| c.clone()).collect();
        let mut gone = Vec::with_capacity(expired.len());
        for client in expired {
            if let Some((info, _)) = entries.remove(&client) {
                let last = last_of_user(entries.values().map(|(other, _)| other), &info);
                let departure = if last { Departure::UserDeparted } else { Departure::UserRemains };
                gone.push(ExpiredEntry { info, departure });
            }
        }
        if entries.is_empty() {
            shard.presence.remove(channel);
        }
        Ok(gone)
    }
}

/// Whether `gone`'s entry, now removed, was its user's last among `left`
/// (the anonymous user's entries each depart on their own).
fn last_of_user<'a>(mut left: impl Iterator<Item = &'a ClientInfo>, gone: &ClientInfo) -> bool {
    gone.user.is_anonymous() || !left.any(|other| other.user == gone.user)
}
