//! The memory engine: one node, no setup, nothing shared.
//!
//! Broadcast is a direct call into the node's handler. A channel's history
//! append and its delivery happen under that channel's shard lock, so offset
//! order is delivery order and a history read never sees half a publish.
//! Everything is lost when the process exits; a restarted node's streams
//! start under new epochs, so clients learn that recovery is impossible.
//! Time is `tokio::time`, so tests can pause and advance it.
//!
//! Memory is bounded by a budget of streams (`MemoryLimits::max_streams`):
//! a client can make the node keep a stream for a channel nobody publishes
//! to, just by reading its position. When a new stream would exceed its
//! shard's share of the budget, expired streams go first, then the stream
//! of a channel with no subscriber on this node that was created or
//! written longest ago. Its readers lose nothing they could recover: its
//! epoch is gone, so a position in it is refused (`recovered: false`).
//! Streams of channels this node's clients are subscribed to are never
//! evicted: those are bounded by the clients' own subscription limits, and
//! may take a shard past its share.
//!
//! Once started, the engine sweeps every shard each [`SWEEP_EVERY`]:
//! expired publications, streams and idempotency records go, and
//! maps that shrank give their space back, so a node that falls quiet
//! returns the memory its history held without waiting for more traffic.
//!
//! - here: the state, the [`Broker`] and the [`History`];
//! - `stream`: one channel's history stream;
//! - `presence`: the [`crate::Presence`] part;
//! - `occupancy`: the [`crate::Occupancy`] and [`crate::NodeRegistry`] parts.

mod occupancy;
mod presence;
mod stream;

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::broker::{Broker, EventHandler, HistoryOptions, PublishOptions, PublishResult};
use crate::engine::{EngineError, Health};
use crate::history::{History, HistoryQuery, HistoryResult};
use crate::ids::{ChannelName, ClientId, NodeId};
use crate::message::{ClientInfo, Control, EngineEvent, NodeInfo, PresenceEvent, Publication};
use stream::Stream;

/// How many locks the channel state is split over.
const SHARDS: usize = 64;

/// Expired streams of a shard are swept every this many history operations.
const STREAM_SWEEP_EVERY: u64 = 1024;

/// Idempotency records are swept once the map holds this many.
const IDEMPOTENCY_SWEEP_AT: usize = 10_000;

/// How often a started engine drops what expired in every shard.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The state of the channels that hash to one lock.
#[derive(Debug, Default)]
struct Shard {
    subscribed: HashSet<ChannelName>,
    streams: HashMap<ChannelName, Stream>,
    idempotency: HashMap<(ChannelName, String), (PublishResult, Instant)>,
    presence: HashMap<ChannelName, HashMap<ClientId, (ClientInfo, Instant)>>,
    /// Each channel's serving nodes: their subscriber counts and expiry.
    occupancy: HashMap<ChannelName, HashMap<NodeId, (usize, Instant)>>,
    operations: u64,
}

/// What the memory engine may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryLimits {
    /// History streams kept at most (spread evenly over the shards).
    pub max_streams: usize,
}

impl Default for MemoryLimits {
    fn default() -> Self {
        Self { max_streams: 100_000 }
    }
}

/// The embedded single-node engine.
pub struct MemoryEngine {
    /// Streams one shard may hold before it evicts.
    streams_per_shard: usize,
    handler: OnceLock<Arc<dyn EventHandler>>,
    hasher: RandomState,
    /// Shared with the sweeper, which holds it weakly.
    shards: Arc<[Mutex<Shard>]>,
    /// The occupied channels, each until its entry expires.
    occupied: Mutex<HashMap<ChannelName, Instant>>,
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

/// Takes a lock even if a panic poisoned it: the maps stay consistent, as
/// no operation panics halfway through an update.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl MemoryEngine {
    /// An engine with nothing in it, not yet started, with the default limits.
    pub fn new() -> Self {
        Self::with_limits(MemoryLimits::default())
    }

    /// An engine with nothing in it, not yet started.
    pub fn with_limits(limits: MemoryLimits) -> Self {
        Self {
            streams_per_shard: limits.max_streams.div_ceil(SHARDS).max(1),
            handler: OnceLock::new(),
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            occupied: Mutex::new(HashMap::new()),
            nodes: Mutex::new(HashMap::new()),
        }
    }

    /// Sweeps every shard each [`SWEEP_EVERY`], until the engine is dropped.
    fn start_sweeping(&self) {
        let shards = Arc::downgrade(&self.shards);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(SWEEP_EVERY);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(shards) = shards.upgrade() else { return };
                let now = Instant::now();
                for shard in shards.iter() {
                    sweep(&mut lock(shard), now);
                }
            }
        });
    }

    fn handler(&self) -> Result<&Arc<dyn EventHandler>, EngineError> {
        self.handler.get().ok_or(EngineError::NotStarted)
    }

    fn shard(&self, channel: &ChannelName) -> MutexGuard<'_, Shard> {
        // The modulo keeps the index in range.
        lock(&self.shards[self.hasher.hash_one(channel) as usize % self.shards.len()])
    }
}

/// The live stream of a channel, replacing an expired one, and making room
/// under the shard's budget for a new one.
fn live_stream<'a>(
    shard: &'a mut Shard,
    budget: usize,
    channel: &ChannelName,
    options: &HistoryOptions,
    now: Instant,
) -> &'a mut Stream {
    shard.operations = shard.operations.wrapping_add(1);
    if shard.operations % STREAM_SWEEP_EVERY == 0 {
        shard.streams.retain(|_, stream| !stream.is_expired(now));
    }
    if shard.streams.len() >= budget && !shard.streams.contains_key(channel) {
        make_room(shard, now);
    }
    let stream = shard.streams.entry(channel.clone()).or_insert_with(|| Stream::new(now, options));
    if stream.is_expired(now) {
        *stream = Stream::new(now, options);
    }
    stream.expire_publications(now);
    stream
}

/// Drops a shard's expired streams, publications and idempotency records,
/// and gives back the space of maps that are mostly empty.
fn sweep(shard: &mut Shard, now: Instant) {
    shard.streams.retain(|_, stream| !stream.is_expired(now));
    for stream in shard.streams.values_mut() {
        stream.expire_publications(now);
    }
    shard.idempotency.retain(|_, (_, until)| now < *until);
    shrink_if_sparse(&mut shard.streams);
    shrink_if_sparse(&mut shard.idempotency);
}

/// Halves a map's table when it holds under a quarter of its capacity.
fn shrink_if_sparse<K: Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>) {
    if map.len() < map.capacity() / 4 {
        map.shrink_to(map.len().saturating_mul(2));
    }
}

/// Frees a place in a full shard: expired streams first, else the
/// longest-untouched stream of a channel without local subscribers.
fn make_room(shard: &mut Shard, now: Instant) {
    let before = shard.streams.len();
    shard.streams.retain(|_, stream| !stream.is_expired(now));
    if shard.streams.len() < before {
        return;
    }
    let subscribed = &shard.subscribed;
    let oldest = shard
        .streams
        .iter()
        .filter(|(channel, _)| !subscribed.contains(*channel))
        .min_by_key(|(_, stream)| stream.expires_at())
        .map(|(channel, _)| channel.clone());
    if let Some(channel) = oldest {
        shard.streams.remove(&channel);
    }
}

#[async_trait]
impl Broker for MemoryEngine {
    async fn start(&self, handler: Arc<dyn EventHandler>) -> Result<(), EngineError> {
        // A second start keeps the first handler and sweeper: one node owns the engine.
        if self.handler.set(handler).is_ok() {
            self.start_sweeping();
        }
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
                let stream = live_stream(&mut shard, self.streams_per_shard, channel, history, now);
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

    async fn publish_presence(&self, channel: &ChannelName, event: PresenceEvent) -> Result<(), EngineError> {
        let handler = self.handler()?;
        if self.shard(channel).subscribed.contains(channel) {
            handler.handle(EngineEvent::Presence { channel: channel.clone(), event });
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

    /// Publications go straight to the node's handler: none is dropped.
    fn dropped(&self) -> u64 {
        0
    }
}

#[async_trait]
impl History for MemoryEngine {
    async fn history(
        &self,
        channel: &ChannelName,
        query: &HistoryQuery,
        options: &HistoryOptions,
    ) -> Result<HistoryResult, EngineError> {
        let now = Instant::now();
        let mut shard = self.shard(channel);
        Ok(live_stream(&mut shard, self.streams_per_shard, channel, options, now).read(query))
    }

    async fn remove_history(&self, channel: &ChannelName) -> Result<(), EngineError> {
        self.shard(channel).streams.remove(channel);
        Ok(())
    }
}

#[cfg(test)]
mod budget {
    use super::*;
    use crate::broker::EventHandler;
    use crate::message::EngineEvent;

    struct Ignore;
    impl EventHandler for Ignore {
        fn handle(&self, _: EngineEvent) {}
    }

    const HISTORY: HistoryOptions = HistoryOptions {
        size: 10,
        ttl: std::time::Duration::from_secs(60),
        meta_ttl: std::time::Duration::from_secs(3600),
    };

    fn channel(name: &str) -> ChannelName {
        ChannelName::new(name).unwrap()
    }

    impl MemoryEngine {
        fn streams(&self) -> usize {
            self.shards.iter().map(|shard| lock(shard).streams.len()).sum()
        }

        /// Publications held, whether or not they expired.
        fn publications_held(&self) -> usize {
            self.shards.iter().map(|shard| lock(shard).streams.values().map(Stream::held).sum::<usize>()).sum()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_node_drops_expired_history_without_being_asked() {
        let engine = MemoryEngine::new();
        engine.start(Arc::new(Ignore)).await.unwrap();
        let with_history = PublishOptions { history: Some(HISTORY), ..PublishOptions::default() };
        for n in 0..500 {
            let data = Publication::from_data(bytes::Bytes::from(n.to_string()));
            engine.publish(&channel(&format!("quiet-{}", n % 50)), data, &with_history).await.unwrap();
        }
        assert_eq!((engine.streams(), engine.publications_held()), (50, 500));

        tokio::time::sleep(HISTORY.ttl + SWEEP_EVERY * 2).await;
        assert_eq!((engine.streams(), engine.publications_held()), (50, 0), "the publications' ttl passed");

        tokio::time::sleep(HISTORY.meta_ttl).await;
        assert_eq!(engine.streams(), 0, "the positions' ttl passed");
    }

    #[tokio::test(start_paused = true)]
    async fn positions_read_for_many_channels_stay_within_the_budget_and_subscribed_streams_stay() {
        let engine = MemoryEngine::with_limits(MemoryLimits { max_streams: 128 });
        engine.start(Arc::new(Ignore)).await.unwrap();
        let kept = channel("kept");
        engine.subscribe(&kept).await.unwrap();
        let with_history = PublishOptions { history: Some(HISTORY), ..PublishOptions::default() };
        let mut top = None;
        for n in 0..3 {
            let data = Publication::from_data(bytes::Bytes::from(n.to_string()));
            top = Some(engine.publish(&kept, data, &with_history).await.unwrap().position);
        }
        let position_only = HistoryQuery::default();
        let first = engine.history(&channel("probe-0"), &position_only, &HISTORY).await.unwrap().position;
        for n in 0..10_000 {
            tokio::time::advance(std::time::Duration::from_millis(1)).await;
            engine.history(&channel(&format!("probe-{n}")), &position_only, &HISTORY).await.unwrap();
        }
        assert!(engine.streams() <= 128 + 1, "{} streams for a budget of 128", engine.streams());
        let read = engine.history(&kept, &HistoryQuery { limit: 10, ..Default::default() }, &HISTORY).await.unwrap();
        assert_eq!(Some(read.position), top, "the subscribed channel's stream is intact");
        assert_eq!(read.publications.len(), 3);
        let again = engine.history(&channel("probe-0"), &position_only, &HISTORY).await.unwrap().position;
        assert_ne!(again.epoch, first.epoch, "an evicted stream comes back under a new epoch: nothing to recover");
    }
}

#[cfg(test)]
mod conformance {
    crate::engine_conformance! {
        #[tokio::test(start_paused = true)]
        make: || async { crate::Engine::memory() },
        clock: crate::conformance::Clock::Paused,
    }
}
