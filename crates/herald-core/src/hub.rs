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
//! - Fanout never blocks: it encodes a publication once per protocol and
//!   pushes the shared bytes into bounded outboxes (see `outbox.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use herald_engine::{
    ChannelName, ClientId, Control, DisconnectReason, Engine, EngineEvent, EventHandler, NodeId,
    Publication, PublishOptions, StreamPosition, UserId,
};

use crate::connection::{Connection, ConnectionSpec, Subscription};
use crate::error::HubError;
use crate::namespace::{ChannelRules, NamespaceOptions, PublishPolicy, SubscribePolicy};
use crate::outbox::{ConnEvent, Outgoing, UnsubscribeReason};
use crate::shard::{ShardedMap, SHARDS};

/// Hub-wide settings.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub node: NodeId,
    pub rules: ChannelRules,
    /// How many channels one connection may hold in all (0 = no limit).
    pub max_channels_per_connection: usize,
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

/// Counts for `/api/info` and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HubStats {
    pub clients: usize,
    pub users: usize,
    pub channels: usize,
    pub subscriptions: usize,
}

type Subscribers = HashMap<ClientId, Arc<Connection>>;

/// The node's hub. Cheap to share: hold it in an `Arc`.
#[derive(Debug)]
pub struct Hub {
    config: HubConfig,
    engine: Arc<dyn Engine>,
    connections: ShardedMap<ClientId, Arc<Connection>>,
    users: ShardedMap<UserId, HashMap<ClientId, Arc<Connection>>>,
    channels: ShardedMap<ChannelName, Subscribers>,
    interest_locks: Box<[tokio::sync::Mutex<()>]>,
    closing: AtomicBool,
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
    pub fn new(config: HubConfig, engine: Arc<dyn Engine>) -> Arc<Self> {
        Arc::new(Self {
            config,
            engine,
            connections: ShardedMap::new(),
            users: ShardedMap::new(),
            channels: ShardedMap::new(),
            interest_locks: (0..SHARDS).map(|_| tokio::sync::Mutex::new(())).collect(),
            closing: AtomicBool::new(false),
        })
    }

    /// Connects the hub to its engine; call once before serving.
    pub async fn start(self: &Arc<Self>) -> Result<(), HubError> {
        self.engine
            .start(Arc::new(HubEvents(Arc::downgrade(self))))
            .await?;
        Ok(())
    }

    pub fn node(&self) -> &NodeId {
        &self.config.node
    }

    pub fn engine(&self) -> &Arc<dyn Engine> {
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
        self.connections
            .write(&conn.client)
            .insert(conn.client.clone(), conn.clone());
        self.users
            .write(&conn.user)
            .entry(conn.user.clone())
            .or_default()
            .insert(conn.client.clone(), conn.clone());
        Ok(conn)
    }

    /// Removes a connection and all its subscriptions. Call when its socket
    /// is gone.
    pub async fn disconnect(&self, conn: &Arc<Connection>) {
        self.connections.write(&conn.client).remove(&conn.client);
        {
            let mut users = self.users.write(&conn.user);
            if let Some(conns) = users.get_mut(&conn.user) {
                conns.remove(&conn.client);
                if conns.is_empty() {
                    users.remove(&conn.user);
                }
            }
        }
        for channel in conn.channels() {
            self.unsubscribe(conn, &channel).await;
        }
    }

    /// Checks whether `conn` may subscribe to `channel` on these grounds.
    pub fn authorize_subscribe(
        &self,
        conn: &Connection,
        channel: &ChannelName,
        access: SubscribeAccess,
    ) -> Result<&NamespaceOptions, HubError> {
        let options = self.config.rules.resolve(channel)?;
        if access == SubscribeAccess::Client {
            let allowed = match options.subscribe {
                SubscribePolicy::Anyone => true,
                SubscribePolicy::Authenticated => !conn.user.is_anonymous(),
                SubscribePolicy::Token => false,
            };
            if !allowed {
                return Err(HubError::PermissionDenied);
            }
            if options.user_limited && !ChannelRules::user_admitted(channel, &conn.user) {
                return Err(HubError::PermissionDenied);
            }
        }
        Ok(options)
    }

    /// Subscribes `conn` to `channel` and queues `reply` ahead of the
    /// channel's next publication.
    pub async fn subscribe(
        &self,
        conn: &Arc<Connection>,
        channel: &ChannelName,
        access: SubscribeAccess,
        subscription: Subscription,
        reply: Option<Outgoing>,
    ) -> Result<(), HubError> {
        let options = self.authorize_subscribe(conn, channel, access)?;
        let _interest = self.interest_lock(channel).lock().await;
        self.check_subscription_limits(conn, channel, options)?;

        let known = self.channels.read(channel).contains_key(channel);
        if !known {
            self.engine.subscribe(channel).await?;
        }
        let mut shard = self.channels.write(channel);
        shard
            .entry(channel.clone())
            .or_default()
            .insert(conn.client.clone(), conn.clone());
        conn.subscriptions().insert(channel.clone(), subscription);
        if let Some(reply) = reply {
            // A full outbox closes itself as slow; the session ends and
            // cleans up this subscription with the rest.
            let _ = conn.outbox.push(reply);
        }
        Ok(())
    }

    fn check_subscription_limits(
        &self,
        conn: &Connection,
        channel: &ChannelName,
        options: &NamespaceOptions,
    ) -> Result<(), HubError> {
        let subscriptions = conn.subscriptions();
        if subscriptions.contains_key(channel) {
            return Err(HubError::AlreadySubscribed);
        }
        let total_limit = self.config.max_channels_per_connection;
        if total_limit > 0 && subscriptions.len() >= total_limit {
            return Err(HubError::LimitExceeded(
                "too many channels for this connection",
            ));
        }
        let ns_limit = options.max_channels_per_connection;
        if ns_limit > 0 {
            let namespace = ChannelRules::namespace_of(channel);
            let in_namespace = subscriptions
                .keys()
                .filter(|c| ChannelRules::namespace_of(c) == namespace)
                .count();
            if in_namespace >= ns_limit {
                return Err(HubError::LimitExceeded(
                    "too many channels in this namespace",
                ));
            }
        }
        Ok(())
    }

    /// Unsubscribes `conn` from `channel`; false if it was not subscribed.
    pub async fn unsubscribe(&self, conn: &Arc<Connection>, channel: &ChannelName) -> bool {
        let _interest = self.interest_lock(channel).lock().await;
        if conn.subscriptions().remove(channel).is_none() {
            return false;
        }
        let now_empty = {
            let mut shard = self.channels.write(channel);
            match shard.get_mut(channel) {
                Some(subscribers) => {
                    subscribers.remove(&conn.client);
                    let empty = subscribers.is_empty();
                    if empty {
                        shard.remove(channel);
                    }
                    empty
                }
                None => false,
            }
        };
        if now_empty {
            if let Err(error) = self.engine.unsubscribe(channel).await {
                tracing::warn!(%channel, %error, "engine unsubscribe failed; the node may receive publications it drops");
            }
        }
        true
    }

    /// Publishes through the engine, as the server API does.
    pub async fn publish(
        &self,
        channel: &ChannelName,
        publication: Publication,
    ) -> Result<StreamPosition, HubError> {
        let options = self.config.rules.resolve(channel)?;
        let size = publication.data.len();
        if size > options.max_message_size {
            return Err(HubError::MessageTooLarge {
                size,
                limit: options.max_message_size,
            });
        }
        Ok(self
            .engine
            .publish(channel, publication, &PublishOptions::default())
            .await?)
    }

    /// Publishes on behalf of a client connection, if its namespace allows.
    pub async fn client_publish(
        &self,
        conn: &Arc<Connection>,
        channel: &ChannelName,
        data: Bytes,
    ) -> Result<StreamPosition, HubError> {
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
        self.publish(channel, publication).await
    }

    /// Sends a control command to every node of the cluster.
    pub async fn send_control(&self, command: Control) -> Result<(), HubError> {
        Ok(self.engine.send_control(command).await?)
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
        self.connections
            .for_each_shard(|s| stats.clients += s.len());
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

    fn on_engine_event(self: Arc<Self>, event: EngineEvent) {
        match event {
            EngineEvent::Publication {
                channel,
                publication,
            } => self.fanout(&channel, &publication),
            EngineEvent::Control(command) => self.on_control(command),
        }
    }

    /// Delivers one publication to every local subscriber of its channel.
    fn fanout(&self, channel: &ChannelName, publication: &Publication) {
        let shard = self.channels.read(channel);
        let Some(subscribers) = shard.get(channel) else {
            return;
        };
        // One encoding per protocol, shared by every subscriber speaking it.
        let mut encoded: Vec<(*const (), Bytes)> = Vec::with_capacity(2);
        for conn in subscribers.values() {
            let key = Arc::as_ptr(&conn.encoder) as *const ();
            let frame = match encoded.iter().find(|(k, _)| *k == key) {
                Some((_, bytes)) => bytes.clone(),
                None => {
                    let bytes = conn.encoder.encode_publication(channel, publication);
                    encoded.push((key, bytes.clone()));
                    bytes
                }
            };
            if conn.outbox.push(Outgoing::Frame(frame)).is_err() {
                tracing::debug!(client = %conn.client, %channel, "publication not queued: connection closing");
            }
        }
    }

    fn local_connections(&self, user: &UserId, client: Option<&ClientId>) -> Vec<Arc<Connection>> {
        let users = self.users.read(user);
        let Some(conns) = users.get(user) else {
            return Vec::new();
        };
        conns
            .values()
            .filter(|c| client.is_none_or(|id| *id == c.client))
            .cloned()
            .collect()
    }

    fn on_control(self: Arc<Self>, command: Control) {
        match command {
            Control::Disconnect {
                user,
                client,
                reason,
            } => {
                for conn in self.local_connections(&user, client.as_ref()) {
                    conn.outbox.close(reason.clone());
                }
            }
            Control::Subscribe {
                user,
                channel,
                client,
            } => {
                let conns = self.local_connections(&user, client.as_ref());
                if conns.is_empty() {
                    return;
                }
                tokio::spawn(async move {
                    for conn in conns {
                        let event = Outgoing::Event(ConnEvent::Subscribed {
                            channel: channel.clone(),
                        });
                        let result = self
                            .subscribe(
                                &conn,
                                &channel,
                                SubscribeAccess::Server,
                                Subscription::default(),
                                Some(event),
                            )
                            .await;
                        match result {
                            Ok(()) | Err(HubError::AlreadySubscribed) => {}
                            Err(error) => {
                                tracing::warn!(client = %conn.client, %channel, %error, "server-side subscribe failed")
                            }
                        }
                    }
                });
            }
            Control::Unsubscribe {
                user,
                channel,
                client,
            } => {
                let conns = self.local_connections(&user, client.as_ref());
                if conns.is_empty() {
                    return;
                }
                tokio::spawn(async move {
                    for conn in conns {
                        if self.unsubscribe(&conn, &channel).await {
                            let reason = UnsubscribeReason::Server;
                            let event = ConnEvent::Unsubscribed {
                                channel: channel.clone(),
                                reason,
                            };
                            let _ = conn.outbox.push(Outgoing::Event(event));
                        }
                    }
                });
            }
            Control::Refresh {
                user,
                client,
                expire_at,
                expired,
            } => {
                for conn in self.local_connections(&user, client.as_ref()) {
                    let _ = conn
                        .outbox
                        .push(Outgoing::Event(ConnEvent::Refresh { expire_at, expired }));
                }
            }
        }
    }
}

/// Matches `text` against a pattern where `*` stands for any run of
/// characters (including none) and everything else matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
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
