//! The Redis engine's presence: per channel, a hash of entries, a sorted
//! set of their expiries and a count of entries per user, changed only by
//! scripts so arrivals and departures are decided atomically.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;

use herald_engine::{Arrival, ChannelName, ClientInfo, Departure, EngineError, ExpiredEntry, Presence, PresenceStats};

use crate::backplane::Backplane;
use crate::{millis, unavailable, RedisEngine};

#[async_trait]
impl<B: Backplane> Presence for RedisEngine<B> {
    async fn add_presence(
        &self,
        channel: &ChannelName,
        info: &ClientInfo,
        ttl: Duration,
    ) -> Result<Arrival, EngineError> {
        let json = serde_json::to_vec(info).map_err(|e| EngineError::Unavailable(e.to_string()))?;
        let (entries, expiries) = self.keys.presence(channel);
        let arrived: i64 = self
            .scripts
            .add_presence
            .key(entries)
            .key(expiries)
            .key(self.keys.presence_users(channel))
            .arg(info.client.as_str())
            .arg(json)
            .arg(millis(ttl))
            .arg(info.user.as_str())
            .invoke_async(&mut self.connection(channel.as_str()))
            .await
            .map_err(unavailable)?;
        Ok(if arrived == 1 { Arrival::UserArrived } else { Arrival::UserWasPresent })
    }

    async fn remove_presence(&self, channel: &ChannelName, info: &ClientInfo) -> Result<Departure, EngineError> {
        let (entries, expiries) = self.keys.presence(channel);
        let left: i64 = self
            .scripts
            .remove_presence
            .key(entries)
            .key(expiries)
            .key(self.keys.presence_users(channel))
            .arg(info.client.as_str())
            .arg(info.user.as_str())
            .invoke_async(&mut self.connection(channel.as_str()))
            .await
            .map_err(unavailable)?;
        Ok(departure(left == 1))
    }

    async fn presence(&self, channel: &ChannelName) -> Result<Vec<ClientInfo>, EngineError> {
        let raw = self.read_expiring(channel.as_str(), self.keys.presence(channel)).await?;
        Ok(raw.iter().filter_map(|(_, json)| serde_json::from_slice(json).ok()).collect())
    }

    async fn presence_stats(&self, channel: &ChannelName) -> Result<PresenceStats, EngineError> {
        let present = self.presence(channel).await?;
        let users: HashSet<&str> = present.iter().map(|i| i.user.as_str()).collect();
        Ok(PresenceStats { num_clients: present.len(), num_users: users.len() })
    }

    async fn expire_presence(&self, channel: &ChannelName) -> Result<Vec<ExpiredEntry>, EngineError> {
        let (entries, expiries) = self.keys.presence(channel);
        let raw: Vec<(Vec<u8>, String)> = self
            .scripts
            .expire_presence
            .key(entries)
            .key(expiries)
            .key(self.keys.presence_users(channel))
            .invoke_async(&mut self.connection(channel.as_str()))
            .await
            .map_err(unavailable)?;
        Ok(raw
            .into_iter()
            .filter_map(|(json, last)| {
                Some(ExpiredEntry { info: serde_json::from_slice(&json).ok()?, departure: departure(last == "1") })
            })
            .collect())
    }
}

fn departure(last: bool) -> Departure {
    if last {
        Departure::UserDeparted
    } else {
        Departure::UserRemains
    }
}
