//! The Redis engine's presence: per channel, a hash of entries, a sorted
//! set of their expiries and a count of entries per user, changed only by
//! scripts so arrivals and departures are decided atomically.
//!
//! The heartbeat's refresh and sweep go in batches: one script call takes
//! up to [`BATCH_ENTRIES`] entries (or [`BATCH_CHANNELS`] channels) of
//! channels on the same Redis, one call at a time. A node with 20,000
//! entries makes about 600 calls a heartbeat, not 20,000. On a Redis Cluster each channel's keys hash to a
//! slot of their own, so there a batch holds one channel.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{stream, StreamExt};

use herald_engine::{
    Arrival, ChannelName, ClientInfo, Departure, EngineError, ExpiredEntry, Presence, PresenceStats, Swept,
};

use crate::backplane::Backplane;
use crate::{millis, unavailable, RedisEngine};

/// The most entries one refresh call carries. Redis runs one script at a
/// time, and publications wait behind it: small calls, one at a time,
/// keep the heartbeat from delaying them (BENCHMARKS.md, "Presence at
/// scale": at 500 entries a call and 8 in flight, chat's p99 went from
/// 6 ms to 30 ms; at 64 and 2, to 7.5 ms; at 32 and 1 it stays within
/// the runs' noise).
const BATCH_ENTRIES: usize = 32;
/// The most channels one sweep call looks at.
const BATCH_CHANNELS: usize = 32;
/// Batch calls of one heartbeat in flight at once.
const IN_FLIGHT: usize = 1;

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
        let swept = self.sweep_batch(vec![(channel, ())]).await?;
        Ok(swept.into_iter().map(|(_, entry)| entry).collect())
    }

    async fn refresh_presence(&self, entries: &[(ChannelName, ClientInfo)], ttl: Duration) -> Vec<EngineError> {
        let mut by_channel: BTreeMap<&ChannelName, Vec<&ClientInfo>> = BTreeMap::new();
        for (channel, info) in entries {
            by_channel.entry(channel).or_default().push(info);
        }
        // A channel with more entries than a batch takes goes in pieces.
        let pieces: Vec<(&ChannelName, &[&ClientInfo])> = by_channel
            .iter()
            .flat_map(|(channel, infos)| infos.chunks(BATCH_ENTRIES).map(move |piece| (*channel, piece)))
            .collect();
        let calls: Vec<_> = self
            .batches(pieces, |piece| piece.len(), BATCH_ENTRIES)
            .into_iter()
            .map(|batch| self.refresh_batch(batch, ttl))
            .collect();
        let outcomes: Vec<_> = stream::iter(calls).buffer_unordered(IN_FLIGHT).collect().await;
        outcomes.into_iter().filter_map(Result::err).collect()
    }

    async fn expire_presence_of(&self, channels: &[ChannelName]) -> Swept {
        let calls: Vec<_> = self
            .batches(channels.iter().map(|channel| (channel, ())).collect(), |()| 1, BATCH_CHANNELS)
            .into_iter()
            .map(|batch| self.sweep_batch(batch))
            .collect();
        let outcomes: Vec<_> = stream::iter(calls).buffer_unordered(IN_FLIGHT).collect().await;
        let mut swept = Swept::default();
        for outcome in outcomes {
            match outcome {
                Ok(expired) => swept.expired.extend(expired),
                Err(error) => swept.failed.push(error),
            }
        }
        swept
    }
}

/// Channels, each with what goes with it, for one script call.
type Batch<'a, T> = Vec<(&'a ChannelName, T)>;

impl<B: Backplane> RedisEngine<B> {
    /// Cuts `items` (each a channel and what goes with it, of `weight`)
    /// into batches of at most `limit` weight whose channels live on the
    /// same Redis.
    fn batches<'a, T>(&self, items: Batch<'a, T>, weight: impl Fn(&T) -> usize, limit: usize) -> Vec<Batch<'a, T>> {
        let mut done = Vec::new();
        // Per Redis, the batch being filled and its weight so far.
        let mut open: HashMap<usize, (usize, Batch<'a, T>)> = HashMap::new();
        for (channel, item) in items {
            let Some(group) = self.backplane.batch_group(channel.as_str()) else {
                done.push(vec![(channel, item)]);
                continue;
            };
            let size = weight(&item);
            let (load, batch) = open.entry(group).or_default();
            if !batch.is_empty() && load.saturating_add(size) > limit {
                done.push(std::mem::take(batch));
                *load = 0;
            }
            *load = load.saturating_add(size);
            batch.push((channel, item));
        }
        done.extend(open.into_values().map(|(_, batch)| batch).filter(|batch| !batch.is_empty()));
        done
    }

    async fn refresh_batch(&self, batch: Batch<'_, &[&ClientInfo]>, ttl: Duration) -> Result<(), EngineError> {
        let Some((route, _)) = batch.first() else { return Ok(()) };
        let mut call = self.scripts.refresh_presence.prepare_invoke();
        call.arg(millis(ttl));
        for (channel, infos) in &batch {
            let (entries, expiries) = self.keys.presence(channel);
            call.key(entries).key(expiries).key(self.keys.presence_users(channel)).arg(infos.len());
            for info in *infos {
                let json = serde_json::to_vec(info).map_err(|e| EngineError::Unavailable(e.to_string()))?;
                call.arg(info.client.as_str()).arg(json).arg(info.user.as_str());
            }
        }
        let _: i64 = call.invoke_async(&mut self.connection(route.as_str())).await.map_err(unavailable)?;
        Ok(())
    }

    async fn sweep_batch(&self, batch: Batch<'_, ()>) -> Result<Vec<(ChannelName, ExpiredEntry)>, EngineError> {
        let Some((route, _)) = batch.first() else { return Ok(Vec::new()) };
        let mut call = self.scripts.expire_presence_of.prepare_invoke();
        for (channel, ()) in &batch {
            let (entries, expiries) = self.keys.presence(channel);
            call.key(entries).key(expiries).key(self.keys.presence_users(channel));
        }
        let raw: Vec<(usize, Vec<u8>, String)> =
            call.invoke_async(&mut self.connection(route.as_str())).await.map_err(unavailable)?;
        Ok(raw
            .into_iter()
            .filter_map(|(at, json, last)| {
                let (channel, ()) = batch.get(at)?;
                let info = serde_json::from_slice(&json).ok()?;
                Some(((*channel).clone(), ExpiredEntry { info, departure: departure(last == "1") }))
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
