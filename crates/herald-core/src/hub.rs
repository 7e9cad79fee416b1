//! The hub: the node's registry of connections and subscriptions, and the
//! fanout from engine to connections.
//!
//! Invariants:
//! - The node is subscribed to a channel on its engine exactly while at
//!   least one local connection is subscribed to it. Changes of that interest
//!   are serialized per channel by `interest_locks`, so "first subscriber"
//!   and "last unsubscriber" cannot race.
//! - A subscription is added to the channel map and its reply queued in the
//!   connection's outbox under the same shard lock that fanout reads under,
//!   so a subscriber sees its subscribe reply before any publication of the
//!   channel, and every publication accepted after it.
//! - A positioned subscription (history on) is first added as *recovering*:
//!   fanout buffers its publications while the hub reads history. Then,
//!   under the shard lock, the reply carries the history up to the stream
//!   top, the buffered publications above the top follow it, and the
//!   subscriber goes live. Nothing is lost or repeated at that seam.
//! - Fanout never blocks: it encodes a publication once per protocol and
//!   pushes the shared bytes into bounded outboxes (see `outbox.rs`).

mod events;
mod occupancy;
mod recovery;
mod subscriptions;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_engine::{
    ChannelName, ClientId, ClientInfo, Control, Departure, DisconnectReason, Engine, EngineEvent, EventHandler,
    HistoryQuery, HistoryResult, NodeId, NodeInfo, PresenceStats, Publication, PublishOptions, PublishResult,
    StreamPosition, UserId,
};

use crate::connection::{push_exact, remove_first, Connection, ConnectionSpec, Subscription};
use crate::error::HubError;
use crate::namespace::{ChannelRules, PublishPolicy};
use crate::shard::{ShardedMap, SHARDS};
pub use occupancy::HubObserver;
pub use recovery::{decide as decide_recovery, Recovery};

/// Hub-wide settings.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub node: NodeId,
    pub rules: ChannelRules,
    /// How many channels one connection may hold in all (0 = no limit).
    pub max_channels_per_connection: usize,
    /// How often presence entries and this node's registry entry are refreshed.
    pub presence_update_interval: Duration,
    /// How long a presence entry lives without a refresh.
    pub presence_ttl: Duration,
    /// How long a repeated idempotency key is recognised.
    pub idempotency_window: Duration,
    /// Keep cluster-wide occupancy (see `hub/occupancy.rs`): costs an engine
    /// write per subscribe and unsubscribe.
    pub track_occupancy: bool,
}

impl HubConfig {
    /// Defaults for everything but the node id and rules.
    pub fn new(node: NodeId, rules: ChannelRules) -> Self {
        Self {
            node,
            rules,
            max_channels_per_connection: 0,
            presence_update_interval: Duration::from_secs(25),
            presence_ttl: Duration::from_secs(60),
            idempotency_window: Duration::from_secs(300),
            track_occupancy: false,
        }
    }
}

/// On what grounds a subscription is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeAccess {
    /// The client asked, without a subscription token: namespace rules apply.
    Client,
    /// The client presented a valid subscription token for the channel.
    Token,
    /// The server subscribed the connection (token claim or server API).
    Server,
}

/// What a subscriber asks for besides the channel.
#[derive(Debug, Clone, Default)]
pub struct SubscribeRequest {
    pub subscription: Subscription,
    /// Wants stream positions.
    pub positioned: bool,
    /// Wants positions and recovery on resubscribe.
    pub recoverable: bool,
    /// Resubscribing after this position: recover what came after it.
    pub recover_since: Option<StreamPosition>,
}

/// How a subscription came out; front-ends encode their reply from it.
#[derive(Debug, Clone, Default)]
pub struct SubscribeOutcome {
    /// Positions are tracked (the namespace has history).
    pub positioned: bool,
    pub recoverable: bool,
    /// The stream position the subscriber continues from.
    pub position: StreamPosition,
    /// The subscriber asked to recover.
    pub was_recovering: bool,
    /// Recovery succeeded; `publications` are exactly what was missed.
    pub recovered: bool,
    pub publications: Vec<Arc<Publication>>,
}

/// Counts for `/api/info` and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HubStats {
    pub clients: usize,
    pub users: usize,
    pub channels: usize,
    pub subscriptions: usize,
}

/// A connection's place in a channel.
#[derive(Debug)]
struct Subscriber {
    conn: Arc<Connection>,
    join_leave: bool,
    /// Tracks stream positions: must recover when the engine was interrupted.
    positioned: bool,
    /// Who the connection is in this channel.
    user: UserId,
    /// For a positioned subscriber: the position its reply (or recovery)
    /// already covered. With a remote engine a publication can reach the
    /// node after the history read that included it; it is not sent twice.
    live_after: Option<StreamPosition>,
    /// Present while the subscription recovers: publications wait here.
    /// (Boxed: most subscribers never recover, and every one pays for the
    /// inline size.)
    recovering: Option<Box<Mutex<Vec<Arc<Publication>>>>>,
}

type Subscribers = HashMap<ClientId, Subscriber>;

/// The node's hub. Cheap to share: hold it in an `Arc`.
#[derive(Debug)]
pub struct Hub {
    config: HubConfig,
    engine: Engine,
    connections: ShardedMap<ClientId, Arc<Connection>>,
    /// Each user's connections, as a list kept exactly as long as it is:
    /// most users have one or two, and a hash map per user cost more than
    /// the rest of an idle connection's hub records.
    users: ShardedMap<UserId, Vec<Arc<Connection>>>,
    channels: ShardedMap<ChannelName, Subscribers>,
    interest_locks: Box<[tokio::sync::Mutex<()>]>,
    closing: AtomicBool,
    started: Instant,
    observer: OnceLock<Arc<dyn HubObserver>>,
}

/// Hands engine events to the hub without keeping it alive.
struct HubEvents(Weak<Hub>);

impl EventHandler for HubEvents {
    fn handle(&self, event: EngineEvent) {
        if let Some(hub) = self.0.upgrade() {
            hub.on_engine_event(event);
        }
    }
}

impl Hub {
    pub fn new(config: HubConfig, engine: Engine) -> Arc<Self> {
        Arc::new(Self {
            config,
            engine,
            connections: ShardedMap::new(),
            users: ShardedMap::new(),
            channels: ShardedMap::new(),
            interest_locks: (0..SHARDS).map(|_| tokio::sync::Mutex::new(())).collect(),
            closing: AtomicBool::new(false),
            started: Instant::now(),
            observer: OnceLock::new(),
        })
    }

    /// Connects the hub to its engine and starts refreshing presence and
    /// this node's registry entry; call once before serving.
    pub async fn start(self: &Arc<Self>) -> Result<(), HubError> {
        self.engine.start(Arc::new(HubEvents(Arc::downgrade(self)))).await?;
        self.heartbeat().await;
        let hub = Arc::downgrade(self);
        let every = self.config.presence_update_interval;
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Some(hub) = hub.upgrade() else { return };
                hub.heartbeat().await;
            }
        });
        Ok(())
    }

    /// Refreshes this node's presence entries and registry entry, and
    /// announces the leave of clients whose presence expired.
    async fn heartbeat(&self) {
        self.refresh_presence().await;
        self.announce_expired_presence().await;
        self.register_node().await;
    }

    /// Clients whose connection or node died never sent a leave; their
    /// entries expire, and a node with subscribers in the channel announces
    /// the leave (each expired entry goes to one node only).
    async fn announce_expired_presence(&self) {
        let local = self.channels(None);
        self.refresh_occupancy(&local).await;
        let channels =
            local.into_iter().map(|(c, _)| c).filter(|c| self.config.rules.resolve(c).is_ok_and(|o| o.presence));
        for channel in channels {
            let expired = match self.engine.presence().expire_presence(&channel).await {
                Ok(expired) => expired,
                Err(error) => {
                    tracing::warn!(%channel, %error, "presence expiry sweep failed");
                    continue;
                }
            };
            let join_leave = self.config.rules.resolve(&channel).is_ok_and(|o| o.join_leave);
            for entry in expired {
                let user_departed = entry.departure == Departure::UserDeparted;
                if user_departed {
                    if let Some(observer) = self.observer.get() {
                        observer.user_left(&channel, &entry.info);
                    }
                }
                if !join_leave {
                    continue;
                }
                let event = herald_engine::PresenceEvent::Leave { info: entry.info, user_departed };
                if let Err(error) = self.engine.broker().publish_presence(&channel, event).await {
                    tracing::warn!(%channel, %error, "leave of an expired presence entry not sent");
                }
            }
        }
    }

    async fn refresh_presence(&self) {
        let mut refresh = Vec::new();
        self.connections.for_each_shard(|shard| {
            for conn in shard.values() {
                // Collected first: `info_in` takes the subscriptions lock itself.
                let present: Vec<ChannelName> = conn
                    .subscriptions()
                    .keys()
                    .filter(|channel| self.config.rules.resolve(channel).is_ok_and(|o| o.presence))
                    .cloned()
                    .collect();
                for channel in present {
                    let info = conn.info_in(&channel);
                    refresh.push((channel, info));
                }
            }
        });
        for (channel, info) in refresh {
            if let Err(error) = self.engine.presence().add_presence(&channel, &info, self.config.presence_ttl).await {
                tracing::warn!(%channel, %error, "presence refresh failed");
            }
        }
    }

    async fn register_node(&self) {
        let stats = self.stats();
        let info = NodeInfo {
            id: self.config.node.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            num_clients: stats.clients,
            num_users: stats.users,
            num_channels: stats.channels,
            num_subscriptions: stats.subscriptions,
            uptime: self.started.elapsed().as_secs(),
        };
        let ttl = self.config.presence_update_interval * 3;
        if let Err(error) = self.engine.nodes().register_node(&info, ttl).await {
            tracing::warn!(%error, "node registry heartbeat failed");
        }
    }

    pub fn node(&self) -> &NodeId {
        &self.config.node
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn rules(&self) -> &ChannelRules {
        &self.config.rules
    }

    /// Registers an authenticated connection.
    pub fn connect(&self, spec: ConnectionSpec) -> Result<Arc<Connection>, HubError> {
        if self.closing.load(Ordering::Acquire) {
            return Err(HubError::NotAvailable("node is shutting down".into()));
        }
        let conn = Arc::new(Connection::new(spec));
        self.connections.write(&conn.client).insert(conn.client.clone(), conn.clone());
        let user = conn.user();
        self.remember_user(&conn, user);
        Ok(conn)
    }

    /// Makes `user` the connection's user (a Pusher sign-in), so commands
    /// addressed to that user reach it.
    pub fn sign_in(&self, conn: &Arc<Connection>, user: UserId) {
        let previous = std::mem::replace(&mut *conn.user.lock().unwrap_or_else(|e| e.into_inner()), user.clone());
        self.forget_user(conn, &previous);
        self.remember_user(conn, user);
    }

    fn remember_user(&self, conn: &Arc<Connection>, user: UserId) {
        push_exact(self.users.write(&user).entry(user).or_default(), conn.clone());
    }

    fn forget_user(&self, conn: &Connection, user: &UserId) {
        let mut users = self.users.write(user);
        let Some(conns) = users.get_mut(user) else { return };
        remove_first(conns, |c| c.client == conn.client);
        if conns.is_empty() {
            users.remove(user);
        }
    }

    /// Removes a connection and all its subscriptions. Call when its socket
    /// is gone.
    pub async fn disconnect(&self, conn: &Arc<Connection>) {
        self.connections.write(&conn.client).remove(&conn.client);
        self.forget_user(conn, &conn.user());
        for channel in conn.channels() {
            self.unsubscribe(conn, &channel).await;
        }
    }

    /// Publishes through the engine, as the server API does.
    pub async fn publish(
        &self,
        channel: &ChannelName,
        publication: Publication,
        idempotency_key: Option<String>,
        skip_history: bool,
    ) -> Result<PublishResult, HubError> {
        let options = self.config.rules.resolve(channel)?;
        let size = publication.data.len();
        if size > options.max_message_size {
            return Err(HubError::MessageTooLarge { size, limit: options.max_message_size });
        }
        let publish = PublishOptions {
            history: options.history().filter(|_| !skip_history),
            idempotency_key,
            idempotency_window: self.config.idempotency_window,
        };
        Ok(self.engine.broker().publish(channel, publication, &publish).await?)
    }

    /// Publishes on behalf of a client connection, if its namespace allows.
    pub async fn client_publish(
        &self,
        conn: &Arc<Connection>,
        channel: &ChannelName,
        data: Bytes,
    ) -> Result<PublishResult, HubError> {
        let options = self.config.rules.resolve(channel)?;
        let allowed = match options.publish {
            PublishPolicy::Api => false,
            PublishPolicy::Subscribers => conn.is_subscribed(channel),
            PublishPolicy::Clients => true,
        };
        if !allowed {
            return Err(HubError::PermissionDenied);
        }
        let mut publication = Publication::from_data(data);
        publication.info = Some(conn.info_in(channel));
        self.publish(channel, publication, None, false).await
    }

    /// A channel's history. `since` from another epoch, or already
    /// trimmed, is an unrecoverable position.
    pub async fn history(&self, channel: &ChannelName, query: HistoryQuery) -> Result<HistoryResult, HubError> {
        let options = self.config.rules.resolve(channel)?;
        let history =
            options.history().ok_or_else(|| HubError::NotAvailable("history is off in this namespace".into()))?;
        let result = self.engine.history().history(channel, &query, &history).await?;
        if let Some(since) = &query.since {
            let same_epoch = since.epoch.is_empty() || since.epoch == result.position.epoch;
            let continues = same_epoch
                && since.offset <= result.position.offset
                && (query.reverse
                    || since.offset == result.position.offset
                    || result.publications.first().is_some_and(|p| p.offset.get() == since.offset.get() + 1));
            if !continues {
                return Err(HubError::UnrecoverablePosition);
            }
        }
        Ok(result)
    }

    /// Drops a channel's history (its epoch changes).
    pub async fn remove_history(&self, channel: &ChannelName) -> Result<(), HubError> {
        self.config.rules.resolve(channel)?;
        Ok(self.engine.history().remove_history(channel).await?)
    }

    /// Who is in a channel with presence.
    pub async fn presence(&self, channel: &ChannelName) -> Result<Vec<ClientInfo>, HubError> {
        self.require_presence(channel)?;
        Ok(self.engine.presence().presence(channel).await?)
    }

    pub async fn presence_stats(&self, channel: &ChannelName) -> Result<PresenceStats, HubError> {
        self.require_presence(channel)?;
        Ok(self.engine.presence().presence_stats(channel).await?)
    }

    fn require_presence(&self, channel: &ChannelName) -> Result<(), HubError> {
        match self.config.rules.resolve(channel)?.presence {
            true => Ok(()),
            false => Err(HubError::NotAvailable("presence is off in this namespace".into())),
        }
    }

    /// Whether `conn` may read history (`presence: false`) or presence
    /// (`presence: true`) of `channel` as a subscriber.
    pub fn authorize_read(&self, conn: &Connection, channel: &ChannelName, presence: bool) -> Result<(), HubError> {
        let options = self.config.rules.resolve(channel)?;
        let allowed = match presence {
            true => options.allow_presence_for_subscriber,
            false => options.allow_history_for_subscriber,
        };
        if allowed && conn.is_subscribed(channel) {
            Ok(())
        } else {
            Err(HubError::PermissionDenied)
        }
    }

    /// Sends a control command to every node of the cluster.
    pub async fn send_control(&self, command: Control) -> Result<(), HubError> {
        Ok(self.engine.broker().send_control(command).await?)
    }

    /// Every live node of the cluster, this one's counts fresh.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, HubError> {
        self.register_node().await;
        Ok(self.engine.nodes().nodes().await?)
    }

    /// Local channels with their local subscriber counts, optionally only
    /// those whose name matches `pattern` (`*` matches any run of characters).
    pub fn channels(&self, pattern: Option<&str>) -> Vec<(ChannelName, usize)> {
        let mut out = Vec::new();
        self.channels.for_each_shard(|shard| {
            for (name, subscribers) in shard {
                if pattern.is_none_or(|p| glob_match(p, name.as_str())) {
                    out.push((name.clone(), subscribers.len()));
                }
            }
        });
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    pub fn stats(&self) -> HubStats {
        let mut stats = HubStats::default();
        self.connections.for_each_shard(|s| stats.clients += s.len());
        self.users.for_each_shard(|s| stats.users += s.len());
        self.channels.for_each_shard(|s| {
            stats.channels += s.len();
            stats.subscriptions += s.values().map(HashMap::len).sum::<usize>();
        });
        stats
    }

    /// Stops accepting connections and closes every open one with `reason`.
    pub fn close_all(&self, reason: DisconnectReason) {
        self.closing.store(true, Ordering::Release);
        self.connections.for_each_shard(|shard| {
            for conn in shard.values() {
                conn.outbox.close(reason.clone());
            }
        });
    }

    fn interest_lock(&self, channel: &ChannelName) -> &tokio::sync::Mutex<()> {
        &self.interest_locks[self.channels.shard_index(channel) % self.interest_locks.len()]
    }
}

/// Matches `text` against a pattern where `*` stands for any run of
/// characters (including none) and everything else matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else { return false };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else { return rest.is_empty() };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod recovery_properties;
