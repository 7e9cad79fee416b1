//! The memory engine: one node, no setup, nothing shared.
//!
//! Broadcast is a direct call into the node's handler. A channel's history
//! append and its delivery happen under that channel's shard lock, so offset
//! order is delivery order and a history read never sees half a publish.
//! Everything is lost when the process exits; a restarted node's streams
//! start under new epochs, so clients learn that recovery is impossible.
//! Time is `tokio::time`, so tests can pause and advance it.

mod stream;

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::engine::{
    Engine, EngineError, EventHandler, Health, HistoryOptions, HistoryQuery, HistoryResult, PublishOptions,
    PublishResult,
};
use crate::ids::{ChannelName, ClientId, NodeId};
use crate::message::{ClientInfo, Control, EngineEvent, NodeInfo, PresenceStats, Publication};
use stream::Stream;

/// How many locks the channel state is split over.
const SHARDS: usize = 64;

/// Expired streams of a shard are swept every this many history operations.
const STREAM_SWEEP_EVERY: u64 = 1024;

/// Idempotency records are swept once the map holds this many.
const IDEMPOTENCY_SWEEP_AT: usize = 10_000;

#[derive(Debug, Default)]
struct Shard {
    subscribed: std::collections::HashSet<ChannelName>,
    streams: HashMap<ChannelName, Stream>,
    idempotency: HashMap<(ChannelName, String), (PublishResult, Instant)>,
    presence: HashMap<ChannelName, HashMap<ClientId, (ClientInfo, Instant)>>,
    operations: u64,
}

/// The embedded single-node engine.
pub struct MemoryEngine {
    handler: OnceLock<Arc<dyn EventHandler>>,
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
    nodes: Mutex<HashMap<NodeId, (NodeInfo, Instant)>>,
}

impl std::fmt::Debug for MemoryEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryEngine").finish_non_exhaustive()
    }
}

impl Default for MemoryEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryEngine {
    pub fn new() -> Self {
        Self {
            handler: OnceLock::new(),
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            nodes: Mutex::new(HashMap::new()),
        }
    }

    fn handler(&self) -> Result<&Arc<dyn EventHandler>, EngineError> {
        self.handler.get().ok_or(EngineError::NotStarted)
    }

    fn shard(&self, channel: &ChannelName) -> MutexGuard<'_, Shard> {
        let index = self.hasher.hash_one(channel) as usize % self.shards.len();
        self.shards[index].lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The live stream of a channel, replacing an expired one.
fn live_stream<'a>(
    shard: &'a mut Shard,
    channel: &ChannelName,
    options: &HistoryOptions,
    now: Instant,
) -> &'a mut Stream {
    shard.operations += 1;
    if shard.operations % STREAM_SWEEP_EVERY == 0 {
        shard.streams.retain(|_, stream| !stream.is_expired(now));
    }
    let stream = shard.streams.entry(channel.clone()).or_insert_with(|| Stream::new(now, options));
    if stream.is_expired(now) {
        *stream = Stream::new(now, options);
    }
    stream.expire_publications(now);
    stream
}

#[async_trait]
impl Engine for MemoryEngine {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn start(&self, handler: Arc<dyn EventHandler>) -> Result<(), EngineError> {
        // A second start keeps the first handler: one node owns the engine.
        let _ = self.handler.set(handler);
        Ok(())
    }

    async fn publish(
        &self,
        channel: &ChannelName,
        publication: Publication,
        options: &PublishOptions,
    ) -> Result<PublishResult, EngineError> {
        let handler = self.handler()?;
        let now = Instant::now();
        let mut shard = self.shard(channel);
        let key = options.idempotency_key.as_ref().map(|k| (channel.clone(), k.clone()));
        if let Some(key) = &key {
            if let Some((earlier, until)) = shard.idempotency.get(key) {
                if now < *until {
                    return Ok(PublishResult { position: earlier.position.clone(), duplicate: true });
                }
            }
        }
        let (publication, position) = match &options.history {
            Some(history) if history.size > 0 => {
                let stream = live_stream(&mut shard, channel, history, now);
                let publication = stream.append(publication, history, now);
                (publication, stream.position())
            }
            _ => (Arc::new(publication), Default::default()),
        };
        let result = PublishResult { position, duplicate: false };
        if let Some(key) = key {
            if shard.idempotency.len() >= IDEMPOTENCY_SWEEP_AT {
                shard.idempotency.retain(|_, (_, until)| now < *until);
            }
            shard.idempotency.insert(key, (result.clone(), now + options.idempotency_window));
        }
        if shard.subscribed.contains(channel) {
            handler.handle(EngineEvent::Publication { channel: channel.clone(), publication });
        }
        Ok(result)
    }

    async fn publish_presence_event(&self, event: EngineEvent) -> Result<(), EngineError> {
        let handler = self.handler()?;
        let channel = match &event {
            EngineEvent::Join { channel, .. } | EngineEvent::Leave { channel, .. } => channel,
            EngineEvent::Publication { .. } | EngineEvent::Control(_) | EngineEvent::Interrupted => {
                return Err(EngineError::Unavailable("not a presence event".into()))
            }
        };
        if self.shard(channel).subscribed.contains(channel) {
            handler.handle(event);
        }
        Ok(())
    }

    async fn subscribe(&self, channel: &ChannelName) -> Result<(), EngineError> {
        self.shard(channel).subscribed.insert(channel.clone());
        Ok(())
    }

    async fn unsubscribe(&self, channel: &ChannelName) -> Result<(), EngineError> {
        self.shard(channel).subscribed.remove(channel);
        Ok(())
    }

    async fn history(
        &self,
        channel: &ChannelName,
        query: &HistoryQuery,
        options: &HistoryOptions,
    ) -> Result<HistoryResult, EngineError> {
        let now = Instant::now();
        let mut shard = self.shard(channel);
        Ok(live_stream(&mut shard, channel, options, now).read(query))
    }

    async fn remove_history(&self, channel: &ChannelName) -> Result<(), EngineError> {
        self.shard(channel).streams.remove(channel);
        Ok(())
    }

    async fn add_presence(&self, channel: &ChannelName, info: &ClientInfo, ttl: Duration) -> Result<bool, EngineError> {
        let until = Instant::now() + ttl;
        let mut shard = self.shard(channel);
        let entries = shard.presence.entry(channel.clone()).or_default();
        let new = entries.insert(info.client.clone(), (info.clone(), until)).is_none();
        // Expired entries not yet swept still count, as in the Redis engine:
        // their user's departure is announced by the sweep.
        Ok(new && entries.values().filter(|(other, _)| other.user == info.user).count() == 1)
    }

    async fn remove_presence(&self, channel: &ChannelName, info: &ClientInfo) -> Result<bool, EngineError> {
        let mut shard = self.shard(channel);
        let Some(entries) = shard.presence.get_mut(channel) else { return Ok(false) };
        let removed = entries.remove(&info.client).is_some();
        let user_left = removed && !entries.values().any(|(other, _)| other.user == info.user);
        if entries.is_empty() {
            shard.presence.remove(channel);
        }
        Ok(user_left)
    }

    async fn presence(&self, channel: &ChannelName) -> Result<Vec<ClientInfo>, EngineError> {
        let now = Instant::now();
        let mut shard = self.shard(channel);
        let Some(entries) = shard.presence.get_mut(channel) else { return Ok(Vec::new()) };
        Ok(entries.values().filter(|(_, until)| now < *until).map(|(info, _)| info.clone()).collect())
    }

    async fn expire_presence(&self, channel: &ChannelName) -> Result<Vec<(ClientInfo, bool)>, EngineError> {
        let now = Instant::now();
        let mut shard = self.shard(channel);
        let Some(entries) = shard.presence.get_mut(channel) else { return Ok(Vec::new()) };
        let expired: Vec<ClientId> =
            entries.iter().filter(|(_, (_, until))| now >= *until).map(|(c, _)| c.clone()).collect();
        let mut gone = Vec::with_capacity(expired.len());
        for client in expired {
            if let Some((info, _)) = entries.remove(&client) {
                let user_last = !entries.values().any(|(other, _)| other.user == info.user);
                gone.push((info, user_last));
            }
        }
        if entries.is_empty() {
            shard.presence.remove(channel);
        }
        Ok(gone)
    }

    async fn presence_stats(&self, channel: &ChannelName) -> Result<PresenceStats, EngineError> {
        let present = self.presence(channel).await?;
        let users: std::collections::HashSet<&str> = present.iter().map(|i| i.user.as_str()).collect();
        Ok(PresenceStats { num_clients: present.len(), num_users: users.len() })
    }

    async fn register_node(&self, info: &NodeInfo, ttl: Duration) -> Result<(), EngineError> {
        let until = Instant::now() + ttl;
        self.nodes.lock().unwrap_or_else(|e| e.into_inner()).insert(info.id.clone(), (info.clone(), until));
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, EngineError> {
        let now = Instant::now();
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes.retain(|_, (_, until)| now < *until);
        let mut live: Vec<NodeInfo> = nodes.values().map(|(info, _)| info.clone()).collect();
        live.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(live)
    }

    async fn send_control(&self, command: Control) -> Result<(), EngineError> {
        self.handler()?.handle(EngineEvent::Control(command));
        Ok(())
    }

    async fn health(&self) -> Health {
        match self.handler.get() {
            Some(_) => Health::Ready,
            None => Health::NotReady { reason: "engine not started".into() },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_memory_engine_passes_the_conformance_suite() {
        crate::conformance::run_all(
            || async { Arc::new(MemoryEngine::new()) as Arc<dyn Engine> },
            tokio::time::advance,
        )
        .await;
    }
}
