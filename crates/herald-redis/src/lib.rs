//! # herald-redis
//!
//! The Redis engine: nodes that share one Redis form a cluster. History,
//! stream positions, presence and the node registry live in Redis; Redis
//! pub/sub carries publications, joins/leaves and control commands between
//! nodes.
//!
//! # Layout
//!
//! - [`RedisEngine`] (here): the engine over a [`backplane::Backplane`]
//!   (one Redis, several sharded ones, a Redis Cluster, or a master
//!   behind Sentinel), its
//!   connections and the dispatch of what pub/sub delivers.
//! - `broker`: the `Broker` and `History` parts.
//! - `presence`: the `Presence` part.
//! - `occupancy`: the `Occupancy` and `NodeRegistry` parts.
//! - `scripts`: the Lua scripts that make each multi-key step atomic.
//! - `sentinel`: the master found through Sentinel, followed on failover.
//! - `wire`: the message format shared by pub/sub and history.
//! - `keys`: key and pub/sub channel names.
//! - [`pushes`]: the bounded queue from the pub/sub connections to the
//!   dispatch task.
//!
//! Interest-based routing: a node subscribes to a channel's pub/sub channel
//! only while it has local subscribers. Subscriptions run on their own
//! connections, which reconnect by themselves and resubscribe everything; a
//! lost subscription connection is reported as `EngineEvent::Interrupted`,
//! so positioned subscribers recover from history.

#![forbid(unsafe_code)]

pub mod backplane;
mod broker;
mod keys;
mod occupancy;
mod presence;
pub mod pushes;
mod scripts;
mod sentinel;
#[cfg(feature = "testing")]
pub mod testing;
/// The message format, shared with the other backplanes.
pub use herald_engine::wire;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use redis::{PushKind, Value};

use herald_engine::{
    Control, Engine, EngineError, EngineEvent, Epoch, EventHandler, HistoryQuery, HistoryResult, Offset, StreamPosition,
};

pub use backplane::{Backplane, Cluster, Sharded, Single};
pub use keys::Keys;
pub use sentinel::{Sentinel, SentinelSettings};

/// Where the engine finds Redis.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://host:port[/db]`, or `rediss://` for TLS. One address for a
    /// single Redis; any number of a Redis Cluster's nodes for a cluster.
    pub addresses: Vec<String>,
    /// Prefix of every key and pub/sub channel, so several Herald clusters
    /// can share one Redis.
    pub prefix: String,
    /// How long a command may take before it fails.
    pub command_timeout: Duration,
    /// Pub/sub connections to one Redis that channels are spread over.
    pub subscriber_connections: usize,
}

/// The Redis engine.
pub struct RedisEngine<B: Backplane> {
    keys: Keys,
    backplane: B,
    pushes: Mutex<Option<pushes::Received>>,
    /// What the queue of pub/sub messages dropped (see `pushes`).
    dropped: pushes::DropCounter,
    handler: OnceLock<Arc<dyn EventHandler>>,
    scripts: Scripts,
}

struct Scripts {
    publish: redis::Script,
    history: redis::Script,
    live_entries: redis::Script,
    expire_presence_of: redis::Script,
    add_presence: redis::Script,
    refresh_presence: redis::Script,
    remove_presence: redis::Script,
    add_expiring: redis::Script,
    occupy: redis::Script,
    vacate: redis::Script,
    add_member: redis::Script,
    live_members: redis::Script,
    expire_members: redis::Script,
}

impl<B: Backplane> std::fmt::Debug for RedisEngine<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEngine").field("prefix", &self.keys.prefix()).finish_non_exhaustive()
    }
}

fn unavailable(error: redis::RedisError) -> EngineError {
    EngineError::Unavailable(format!("redis: {error}"))
}

impl RedisEngine<Single> {
    /// Connects to one Redis.
    pub async fn single(settings: &RedisSettings) -> Result<Self, EngineError> {
        Self::single_bounded(settings, pushes::Limits::default()).await
    }

    /// Connects to one Redis, its queue of pub/sub messages bounded by
    /// `limits`.
    async fn single_bounded(settings: &RedisSettings, limits: pushes::Limits) -> Result<Self, EngineError> {
        let address = settings.addresses.first().ok_or_else(|| EngineError::Unavailable("no redis address".into()))?;
        let (tx, rx) = pushes::channel(limits);
        let backplane = Single::connect(address, settings.command_timeout, settings.subscriber_connections, tx)
            .await
            .map_err(unavailable)?;
        Ok(Self::with(backplane, rx, settings))
    }
}

impl RedisEngine<Sharded> {
    /// Connects to several independent Redis instances; channels are spread
    /// over them by rendezvous hashing of the channel name.
    pub async fn sharded(settings: &RedisSettings) -> Result<Self, EngineError> {
        let (tx, rx) = pushes::channel(pushes::Limits::default());
        let backplane =
            Sharded::connect(&settings.addresses, settings.command_timeout, settings.subscriber_connections, tx)
                .await
                .map_err(unavailable)?;
        Ok(Self::with(backplane, rx, settings))
    }
}

impl RedisEngine<Sentinel> {
    /// Connects to the master the sentinels name, and follows it through
    /// failovers (`settings.addresses` is not used).
    pub async fn sentinel(settings: &RedisSettings, sentinel: SentinelSettings) -> Result<Self, EngineError> {
        let (tx, rx) = pushes::channel(pushes::Limits::default());
        let backplane = Sentinel::connect(sentinel, settings.command_timeout, settings.subscriber_connections, tx)
            .await
            .map_err(unavailable)?;
        Ok(Self::with(backplane, rx, settings))
    }
}

impl RedisEngine<Cluster> {
    /// Connects to a Redis Cluster through any of its nodes.
    pub async fn cluster(settings: &RedisSettings) -> Result<Self, EngineError> {
        let (tx, rx) = pushes::channel(pushes::Limits::default());
        let backplane =
            Cluster::connect(&settings.addresses, settings.command_timeout, tx).await.map_err(unavailable)?;
        Ok(Self::with(backplane, rx, settings))
    }
}

impl<B: Backplane> RedisEngine<B> {
    /// This engine as a node's [`Engine`].
    pub fn into_engine(self) -> Engine {
        Engine::new("redis", Arc::new(self))
    }

    fn with(backplane: B, pushes: pushes::Received, settings: &RedisSettings) -> Self {
        Self {
            keys: Keys::new(&settings.prefix),
            backplane,
            dropped: pushes.drop_count(),
            pushes: Mutex::new(Some(pushes)),
            handler: OnceLock::new(),
            scripts: Scripts {
                publish: scripts::publish(),
                history: scripts::history(),
                live_entries: scripts::live_entries(),
                expire_presence_of: scripts::expire_presence_of(),
                add_presence: scripts::add_presence(),
                refresh_presence: scripts::refresh_presence(),
                remove_presence: scripts::remove_presence(),
                add_expiring: scripts::add_expiring(),
                occupy: scripts::occupy(),
                vacate: scripts::vacate(),
                add_member: scripts::add_member(),
                live_members: scripts::live_members(),
                expire_members: scripts::expire_members(),
            },
        }
    }

    /// The connection for keys of `route` (a channel name, or one of the
    /// fixed routes).
    fn connection(&self, route: &str) -> B::Connection {
        self.backplane.commands(route)
    }

    /// Hands pub/sub messages to the handler, in arrival order.
    fn dispatch(&self, mut pushes: pushes::Received, handler: Arc<dyn EventHandler>) {
        let keys = self.keys.clone();
        tokio::spawn(async move {
            while let Some(push) = pushes.recv().await {
                match push.kind {
                    PushKind::Message | PushKind::SMessage => {}
                    PushKind::Disconnection => {
                        tracing::warn!(
                            "lost the redis subscription connection; reconnecting, and asking positioned subscribers to recover"
                        );
                        handler.handle(EngineEvent::Interrupted);
                        continue;
                    }
                    _ => continue,
                }
                let (Some(Value::BulkString(name)), Some(Value::BulkString(payload))) =
                    (push.data.first(), push.data.get(1))
                else {
                    continue;
                };
                if name.as_slice() == keys.control_channel().as_bytes() {
                    match serde_json::from_slice::<Control>(payload) {
                        Ok(command) => handler.handle(EngineEvent::Control(command)),
                        Err(error) => tracing::warn!(%error, "unreadable control command from redis"),
                    }
                    continue;
                }
                let Some(channel) = keys.channel_of(name) else { continue };
                match wire::decode(Bytes::copy_from_slice(payload)) {
                    Ok(message) => handler.handle(message.into_event(channel)),
                    Err(error) => tracing::warn!(%channel, %error, "dropped an unreadable message"),
                }
            }
        });
    }

    fn decode_history(result: (u64, String, Vec<Vec<u8>>), query: &HistoryQuery) -> HistoryResult {
        let (top, epoch, messages) = result;
        let position = StreamPosition { offset: Offset::new(top), epoch: Epoch::new(&epoch) };
        let publications = messages
            .into_iter()
            .filter_map(|m| match wire::decode(Bytes::from(m)) {
                Ok(wire::Message { kind: wire::Kind::Publication(p), .. }) => Some(Arc::new(p)),
                Ok(wire::Message { kind: wire::Kind::Presence(_), .. }) => None,
                Err(error) => {
                    tracing::warn!(%error, "an unreadable history entry; skipped");
                    None
                }
            })
            .collect();
        query.select(position, publications)
    }
}

/// Where the control pub/sub channel lives (with several shards, on one).
const CONTROL_ROUTE: &str = "\0control";
/// Where the node registry lives.
const NODES_ROUTE: &str = "\0nodes";
/// Where the index of occupied channels lives.
const OCCUPIED_ROUTE: &str = "\0occupied";

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl<B: Backplane> RedisEngine<B> {
    /// Sets an entry of an expiring hash (entries hash + expiry sorted set)
    /// until now + `ttl`.
    async fn add_expiring(
        &self,
        route: &str,
        (entries, expiries): (String, String),
        id: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), EngineError> {
        let _: i64 = self
            .scripts
            .add_expiring
            .key(entries)
            .key(expiries)
            .arg(id)
            .arg(value)
            .arg(millis(ttl))
            .invoke_async(&mut self.connection(route))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// The live entries of an expiring hash, as (id, value) pairs.
    async fn read_expiring(
        &self,
        route: &str,
        (entries, expiries): (String, String),
    ) -> Result<Vec<(String, Vec<u8>)>, EngineError> {
        let raw: Vec<(String, Vec<u8>)> = self
            .scripts
            .live_entries
            .key(entries)
            .key(expiries)
            .invoke_async(&mut self.connection(route))
            .await
            .map_err(unavailable)?;
        Ok(raw)
    }
}

/// What of a stream `query` can use, for the history script: the
/// offset it wants publications after (-1: from the oldest kept), and
/// how many of the newest at most (-1: no bound). A position read
/// fetches none, a newest-first read its limit, a recovery what came
/// after its offset; the query then selects from those as from all.
fn history_needed(query: &HistoryQuery) -> (i64, i64) {
    // Bounded so that Lua's numbers hold them exactly.
    const MOST: u64 = 1 << 40;
    let bounded = |n: u64| i64::try_from(n.min(MOST)).unwrap_or(0);
    let after = query.since.as_ref().map_or(-1, |since| bounded(since.offset.get()));
    let newest = match (query.limit, query.reverse) {
        (0, _) => 0,
        (limit, true) => bounded(u64::try_from(limit).unwrap_or(MOST)),
        (_, false) => -1,
    };
    (after, newest)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use herald_engine::{Broker, ChannelName, Epoch, Offset, Publication, PublishOptions, StreamPosition};

    use super::*;
    use crate::testing::RedisServer;

    /// Counts the publications it takes; blocks the dispatch task on the
    /// first until the sender of `release` is dropped. It blocks in
    /// `block_in_place`, which hands the worker's other tasks to another
    /// thread first: a task left in the blocked worker's LIFO slot (which no
    /// other worker steals from) could be the one a publish or a timer of
    /// the test's waits on, and the test would hang.
    struct Stalled {
        release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
        taken: Arc<AtomicUsize>,
    }

    impl EventHandler for Stalled {
        fn handle(&self, event: EngineEvent) {
            if let EngineEvent::Publication { .. } = event {
                let _released =
                    tokio::task::block_in_place(|| self.release.lock().unwrap_or_else(|e| e.into_inner()).recv());
                self.taken.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    async fn wait_until(what: &str, done: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn messages_a_stalled_node_could_not_take_are_counted_where_the_metrics_read_them() {
        let redis = RedisServer::start();
        let settings = RedisSettings {
            addresses: vec![redis.url()],
            prefix: "drops".into(),
            command_timeout: Duration::from_secs(5),
            subscriber_connections: 1,
        };
        let one_waiting = pushes::Limits { messages: 1, bytes: 1 << 20 };
        let node = RedisEngine::single_bounded(&settings, one_waiting).await.expect("node");
        let (held, release) = std::sync::mpsc::channel::<()>();
        let taken = Arc::new(AtomicUsize::new(0));
        node.start(Arc::new(Stalled { release: release.into(), taken: taken.clone() })).await.expect("started");
        let channel = ChannelName::new("news").unwrap();
        Broker::subscribe(&node, &channel).await.expect("subscribed");
        let publisher = RedisEngine::single(&settings).await.expect("publisher");

        for n in 0..5u8 {
            let publication = Publication::from_data(Bytes::from(vec![n]));
            publisher.publish(&channel, publication, &PublishOptions::default()).await.expect("published");
        }
        // One in the stalled handler, one waiting in the queue, three dropped.
        wait_until("three are dropped", || node.dropped() == 3).await;
        drop(held);
        wait_until("the two kept are taken", || taken.load(Ordering::SeqCst) == 2).await;
        assert_eq!(node.dropped(), 3, "nothing else was dropped");
        assert_eq!(publisher.dropped(), 0, "a node that kept up dropped none");
    }

    #[test]
    fn a_history_read_fetches_only_what_its_query_can_use() {
        let since = |offset| Some(StreamPosition { offset: Offset::new(offset), epoch: Epoch::default() });
        let cases = [
            (HistoryQuery { limit: 0, ..Default::default() }, (-1, 0), "a position read: none"),
            (HistoryQuery { limit: 1, reverse: true, ..Default::default() }, (-1, 1), "the newest"),
            (HistoryQuery { limit: 5, ..Default::default() }, (-1, -1), "the oldest five: from the oldest kept"),
            (HistoryQuery { since: since(7), limit: usize::MAX, reverse: false }, (7, -1), "after 7"),
            (HistoryQuery { since: since(7), limit: 2, reverse: true }, (7, 2), "the newest two after 7"),
            (HistoryQuery { since: since(u64::MAX), limit: usize::MAX, reverse: true }, (1 << 40, 1 << 40), "bounded"),
        ];
        for (query, expected, what) in cases {
            assert_eq!(history_needed(&query), expected, "{what}");
        }
    }
}
