//! # herald-redis
//!
//! The Redis engine: nodes that share one Redis form a cluster. History,
//! stream positions, presence and the node registry live in Redis; Redis
//! pub/sub carries publications, joins/leaves and control commands between
//! nodes.
//!
//! # Layout
//!
//! - [`RedisEngine`] (here): the `Engine` implementation, over a
//!   [`backplane::Backplane`]: one Redis, or a Redis Cluster.
//! - `scripts`: the Lua scripts that make each multi-key step atomic.
//! - `wire`: the message format shared by pub/sub and history.
//! - `keys`: key and pub/sub channel names.
//!
//! Interest-based routing: a node subscribes to a channel's pub/sub channel
//! only while it has local subscribers. Subscriptions run on their own
//! connections, which reconnect by themselves and resubscribe everything; a
//! lost subscription connection is reported as `EngineEvent::Interrupted`,
//! so positioned subscribers recover from history.

#![forbid(unsafe_code)]

pub mod backplane;
mod keys;
mod scripts;
#[cfg(feature = "testing")]
pub mod testing;
pub mod wire;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc;

use herald_engine::{
    ChannelName, ClientInfo, Control, Engine, EngineError, EngineEvent, Epoch, EventHandler, Health, HistoryOptions,
    HistoryQuery, HistoryResult, NodeInfo, Offset, PresenceStats, Publication, PublishOptions, PublishResult,
    StreamPosition,
};

pub use backplane::{Backplane, Cluster, Sharded, Single};
pub use keys::Keys;

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
    pushes: Mutex<Option<mpsc::UnboundedReceiver<PushInfo>>>,
    handler: OnceLock<Arc<dyn EventHandler>>,
    scripts: Scripts,
}

struct Scripts {
    publish: redis::Script,
    history: redis::Script,
    presence: redis::Script,
    expire_presence: redis::Script,
    add_presence: redis::Script,
    remove_presence: redis::Script,
    add_expiring: redis::Script,
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
        let address = settings.addresses.first().ok_or_else(|| EngineError::Unavailable("no redis address".into()))?;
        let (tx, rx) = mpsc::unbounded_channel();
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
        let (tx, rx) = mpsc::unbounded_channel();
        let backplane =
            Sharded::connect(&settings.addresses, settings.command_timeout, settings.subscriber_connections, tx)
                .await
                .map_err(unavailable)?;
        Ok(Self::with(backplane, rx, settings))
    }
}

impl RedisEngine<Cluster> {
    /// Connects to a Redis Cluster through any of its nodes.
    pub async fn cluster(settings: &RedisSettings) -> Result<Self, EngineError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let backplane =
            Cluster::connect(&settings.addresses, settings.command_timeout, tx).await.map_err(unavailable)?;
        Ok(Self::with(backplane, rx, settings))
    }
}

impl<B: Backplane> RedisEngine<B> {
    fn with(backplane: B, pushes: mpsc::UnboundedReceiver<PushInfo>, settings: &RedisSettings) -> Self {
        Self {
            keys: Keys::new(&settings.prefix),
            backplane,
            pushes: Mutex::new(Some(pushes)),
            handler: OnceLock::new(),
            scripts: Scripts {
                publish: scripts::publish(),
                history: scripts::history(),
                presence: scripts::presence(),
                expire_presence: scripts::expire_presence(),
                add_presence: scripts::add_presence(),
                remove_presence: scripts::remove_presence(),
                add_expiring: scripts::add_expiring(),
            },
        }
    }

    /// The connection for keys of `route` (a channel name, or one of the
    /// fixed routes).
    fn connection(&self, route: &str) -> B::Connection {
        self.backplane.commands(route)
    }

    /// Hands pub/sub messages to the handler, in arrival order.
    fn dispatch(&self, mut pushes: mpsc::UnboundedReceiver<PushInfo>, handler: Arc<dyn EventHandler>) {
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
                _ => None,
            })
            .collect();
        query.select(position, publications)
    }
}

/// A fresh epoch candidate; the scripts keep the first one a stream gets.
fn epoch_candidate() -> String {
    use std::hash::{BuildHasher, RandomState};
    use std::sync::atomic::{AtomicU64, Ordering};
    static MINTED: AtomicU64 = AtomicU64::new(0);
    let seed = MINTED.fetch_add(1, Ordering::Relaxed);
    format!("{:08x}", RandomState::new().hash_one(seed) as u32)
}

/// Where the control pub/sub channel lives (with several shards, on one).
const CONTROL_ROUTE: &str = "\0control";
/// Where the node registry lives.
const NODES_ROUTE: &str = "\0nodes";

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[async_trait]
impl<B: Backplane> Engine for RedisEngine<B> {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn start(&self, handler: Arc<dyn EventHandler>) -> Result<(), EngineError> {
        let pushes = self.pushes.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(pushes) = pushes else { return Ok(()) };
        let _ = self.handler.set(handler.clone());
        self.dispatch(pushes, handler);
        self.backplane.subscribe_control(CONTROL_ROUTE, &self.keys.control_channel()).await.map_err(unavailable)
    }

    async fn publish(
        &self,
        channel: &ChannelName,
        publication: Publication,
        options: &PublishOptions,
    ) -> Result<PublishResult, EngineError> {
        let history =
            options.history.unwrap_or(HistoryOptions { size: 0, ttl: Duration::ZERO, meta_ttl: Duration::ZERO });
        let idempotency_ttl = match &options.idempotency_key {
            Some(_) => millis(options.idempotency_window),
            None => 0,
        };
        let key = options.idempotency_key.as_deref().unwrap_or("");
        let (duplicate, result): (u8, String) = self
            .scripts
            .publish
            .key(self.keys.meta(channel))
            .key(self.keys.history(channel))
            .key(self.keys.idempotency(channel, key))
            .arg(wire::publication_body(&publication))
            .arg(history.size)
            .arg(millis(history.ttl))
            .arg(millis(history.meta_ttl.max(history.ttl)))
            .arg(idempotency_ttl)
            .arg(self.keys.pubsub(channel))
            .arg(epoch_candidate())
            .arg(B::PUBLISH)
            .invoke_async(&mut self.connection(channel.as_str()))
            .await
            .map_err(unavailable)?;
        let (offset, epoch) = result.split_once('\n').unwrap_or(("0", ""));
        let position = StreamPosition { offset: Offset::new(offset.parse().unwrap_or(0)), epoch: Epoch::new(epoch) };
        Ok(PublishResult { position, duplicate: duplicate == 1 })
    }

    async fn publish_presence_event(&self, event: EngineEvent) -> Result<(), EngineError> {
        let (channel, message) = match &event {
            EngineEvent::Join { channel, info, user_first } => {
                (channel, wire::presence_message(true, *user_first, info))
            }
            EngineEvent::Leave { channel, info, user_last } => {
                (channel, wire::presence_message(false, *user_last, info))
            }
            EngineEvent::Publication { .. } | EngineEvent::Control(_) | EngineEvent::Interrupted => {
                return Err(EngineError::Unavailable("not a presence event".into()))
            }
        };
        let _: i64 = redis::cmd(B::PUBLISH)
            .arg(self.keys.pubsub(channel))
            .arg(message)
            .query_async(&mut self.connection(channel.as_str()))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn subscribe(&self, channel: &ChannelName) -> Result<(), EngineError> {
        self.backplane.subscribe(channel.as_str(), &self.keys.pubsub(channel)).await.map_err(unavailable)
    }

    async fn unsubscribe(&self, channel: &ChannelName) -> Result<(), EngineError> {
        self.backplane.unsubscribe(channel.as_str(), &self.keys.pubsub(channel)).await.map_err(unavailable)
    }

    async fn history(
        &self,
        channel: &ChannelName,
        query: &HistoryQuery,
        options: &HistoryOptions,
    ) -> Result<HistoryResult, EngineError> {
        let result: (u64, String, Vec<Vec<u8>>) = self
            .scripts
            .history
            .key(self.keys.meta(channel))
            .key(self.keys.history(channel))
            .arg(millis(options.meta_ttl.max(options.ttl)))
            .arg(epoch_candidate())
            .invoke_async(&mut self.connection(channel.as_str()))
            .await
            .map_err(unavailable)?;
        Ok(Self::decode_history(result, query))
    }

    async fn remove_history(&self, channel: &ChannelName) -> Result<(), EngineError> {
        let _: i64 = redis::cmd("DEL")
            .arg(self.keys.meta(channel))
            .arg(self.keys.history(channel))
            .query_async(&mut self.connection(channel.as_str()))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn add_presence(&self, channel: &ChannelName, info: &ClientInfo, ttl: Duration) -> Result<bool, EngineError> {
        let json = serde_json::to_vec(info).expect("client info serializes");
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
        Ok(arrived == 1)
    }

    async fn remove_presence(&self, channel: &ChannelName, info: &ClientInfo) -> Result<bool, EngineError> {
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
        Ok(left == 1)
    }

    async fn presence(&self, channel: &ChannelName) -> Result<Vec<ClientInfo>, EngineError> {
        let (entries, expiries) = self.keys.presence(channel);
        let raw = self.read_expiring(channel.as_str(), entries, expiries).await?;
        Ok(raw.iter().filter_map(|json| serde_json::from_slice(json).ok()).collect())
    }

    async fn presence_stats(&self, channel: &ChannelName) -> Result<PresenceStats, EngineError> {
        let present = self.presence(channel).await?;
        let users: HashSet<&str> = present.iter().map(|i| i.user.as_str()).collect();
        Ok(PresenceStats { num_clients: present.len(), num_users: users.len() })
    }

    async fn expire_presence(&self, channel: &ChannelName) -> Result<Vec<(ClientInfo, bool)>, EngineError> {
        let (entries, expiries) = self.keys.presence(channel);
        let raw: Vec<Vec<u8>> = self
            .scripts
            .expire_presence
            .key(entries)
            .key(expiries)
            .key(self.keys.presence_users(channel))
            .invoke_async(&mut self.connection(channel.as_str()))
            .await
            .map_err(unavailable)?;
        Ok(raw
            .chunks_exact(2)
            .filter_map(|pair| Some((serde_json::from_slice(&pair[0]).ok()?, pair[1] == b"1")))
            .collect())
    }

    async fn register_node(&self, info: &NodeInfo, ttl: Duration) -> Result<(), EngineError> {
        let json = serde_json::to_vec(info).expect("node info serializes");
        let (entries, expiries) = self.keys.nodes();
        self.add_expiring(NODES_ROUTE, entries, expiries, info.id.as_str(), json, ttl).await
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, EngineError> {
        let (entries, expiries) = self.keys.nodes();
        let raw = self.read_expiring(NODES_ROUTE, entries, expiries).await?;
        let mut nodes: Vec<NodeInfo> = raw.iter().filter_map(|json| serde_json::from_slice(json).ok()).collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(nodes)
    }

    async fn send_control(&self, command: Control) -> Result<(), EngineError> {
        let json = serde_json::to_vec(&command).expect("control serializes");
        let _: i64 = redis::cmd("PUBLISH")
            .arg(self.keys.control_channel())
            .arg(json)
            .query_async(&mut self.connection(CONTROL_ROUTE))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn health(&self) -> Health {
        match self.backplane.ping().await {
            Ok(()) => Health::Ready,
            Err(e) => Health::NotReady { reason: format!("redis: {e}") },
        }
    }
}

impl<B: Backplane> RedisEngine<B> {
    async fn add_expiring(
        &self,
        route: &str,
        entries: String,
        expiries: String,
        id: &str,
        json: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), EngineError> {
        let _: i64 = self
            .scripts
            .add_expiring
            .key(entries)
            .key(expiries)
            .arg(id)
            .arg(json)
            .arg(millis(ttl))
            .invoke_async(&mut self.connection(route))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn read_expiring(&self, route: &str, entries: String, expiries: String) -> Result<Vec<Vec<u8>>, EngineError> {
        let raw: Vec<Option<Vec<u8>>> = self
            .scripts
            .presence
            .key(entries)
            .key(expiries)
            .invoke_async(&mut self.connection(route))
            .await
            .map_err(unavailable)?;
        Ok(raw.into_iter().flatten().collect())
    }
}
