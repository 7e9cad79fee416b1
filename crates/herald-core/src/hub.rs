//! The hub: the node's registry of connections and subscriptions, and the
//! fanout from engine to connections. `Hub` is a façade over parts with
//! one job each:
//!
//! - `registry`: the node's connections, by client and by user;
//! - `channels`: each channel's local subscribers and its interest lock;
//! - `fanout`: what the engine delivers, pushed into subscribers' outboxes;
//! - `subscriptions`: subscribing and unsubscribing (permissions, limits,
//!   engine interest, the recovery seam);
//! - `recovery`: deciding a recovery from a history read;
//! - `presence`: presence entries, joins and leaves;
//! - `joins`: joins under way, which leaves wait for;
//! - `occupancy`: cluster-wide occupancy and its transitions;
//! - `observer`: who hears the transitions this node decides;
//! - `meter`: who hears what the hub measures (fanouts, recoveries);
//! - `survey`: questions every node answers (the cluster's channel list);
//! - `events`: engine events and control commands applied to connections;
//! - `heartbeat`: the periodic refresh of presence, occupancy and this
//!   node's registry entry;
//! - `position_check`: the periodic check of positioned subscriptions
//!   against their streams;
//! - `reads`: history and presence reads.
//!
//! Invariants:
//! - The node is subscribed to a channel on its engine exactly while at
//!   least one local connection is subscribed to it. Changes of that interest
//!   are serialized per channel by the channel's interest lock, so "first
//!   subscriber" and "last unsubscriber" cannot race.
//! - A subscription is added to the channel map and its reply queued in the
//!   connection's outbox under the same shard lock that fanout reads under,
//!   so a subscriber sees its subscribe reply before any publication of the
//!   channel, and every publication accepted after it.
//! - A positioned subscription (history on) is first added as *recovering*:
//!   fanout buffers its publications while the hub reads history. Then,
//!   under the shard lock, the reply carries the history up to the stream
//!   top, the buffered publications above the top follow it, and the
//!   subscriber goes live. Nothing is lost or repeated at that seam. The
//!   interest lock is not held during the read, so that the subscribers
//!   of one channel read side by side; a subscription that ends meanwhile
//!   was never live, its client is told only by its subscribe's temporary
//!   error, and it announces no join or leave. A subscription that asks
//!   for its channel's latest publication (a Pusher cache channel's) waits
//!   the same way without a position: its reply and that publication are
//!   followed only by what is newer than what it was sent, even when a
//!   publication the read saw reaches the node after it went live.
//! - A subscription's join is announced after the interest lock is let go,
//!   beside the channel's other joins; a leave, announced under the lock,
//!   waits for the joins of its user under way. So a leave never precedes
//!   its join (nor another join of its user it could be told out of order
//!   with), and a later subscription of the same client joins after the
//!   earlier one left. A presence refresh leaves a subscription's entry
//!   alone until its join is told, so that the join finds no entry of its
//!   own written before it.
//! - Where occupancy is tracked, a change of a channel's local count is
//!   noted under the interest lock and written after it is let go, one
//!   write at a time per channel, the last one the latest count (see
//!   `occupancy`).
//! - A live positioned subscriber is sent each offset of its stream once,
//!   in order, and nothing else of the stream: a gap or another epoch (the
//!   node missed publications) ends the subscription with "insufficient
//!   state" instead, and so does falling behind the stream by a whole
//!   position check. Its client then recovers, or learns it cannot.
//! - Fanout never blocks: it encodes a publication once per protocol and
//!   pushes the shared bytes into bounded outboxes (see `outbox.rs`), then
//!   hands them to tasks in batches that write a lone frame straight to a
//!   socket its session lends, in the outbox's order, and wake the session
//!   otherwise (`outbox/direct.rs`).

mod channels;
mod events;
mod fanout;
pub(crate) use fanout::FLUSH_IN_BATCHES_OF;
mod heartbeat;
mod installed;
mod interest;
mod joins;
mod meter;
mod observer;
mod occupancy;
mod position_check;
mod presence;
mod reads;
mod recovery;
mod registry;
mod subscriptions;
mod survey;
mod watch;

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_engine::{
    ChannelName, Control, DisconnectReason, Engine, EngineEvent, EventHandler, NodeId, NodeInfo, Publication,
    PublishOptions, PublishResult, StreamPosition, UserId,
};

use crate::connection::{Connection, ConnectionSpec, Subscription, SubscriptionSerial};
use crate::error::HubError;
use crate::namespace::{ChannelRules, PublishPolicy};
use channels::Channels;
use meter::Meter;
use observer::{Observer, Relay};
use occupancy::OccupancyTracker;
use presence::PresenceKeeper;
use registry::Registry;

pub use channels::glob_match;
pub use heartbeat::NODE_INFO_EVERY;
pub use meter::HubMeter;
pub use observer::{HubObserver, SessionRelay};
pub use recovery::{decide as decide_recovery, Recovery};
pub use survey::{ClusterChannels, SURVEY_TIMEOUT};
pub use watch::{Watch, MAX_WATCHES, WATCH_QUEUE};

/// Hub-wide settings.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// This node's id in the cluster.
    pub node: NodeId,
    /// What operators call this node (in `/api/info`).
    pub node_name: String,
    /// Namespaces and their options.
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
    /// write per change of a channel's local count, fewer when changes come
    /// faster than the writes.
    pub track_occupancy: bool,
    /// How often positioned subscriptions are checked against their
    /// streams (see `hub/position_check.rs`); zero never.
    pub position_check_interval: Duration,
}

impl HubConfig {
    /// Defaults for everything but the node id and rules.
    pub fn new(node: NodeId, rules: ChannelRules) -> Self {
        Self {
            node_name: node.as_str().to_owned(),
            node,
            rules,
            max_channels_per_connection: 0,
            presence_update_interval: Duration::from_secs(25),
            presence_ttl: Duration::from_secs(60),
            idempotency_window: Duration::from_secs(300),
            track_occupancy: false,
            position_check_interval: Duration::from_secs(30),
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
    /// Per-subscription state kept with the connection.
    pub subscription: Subscription,
    /// Wants stream positions.
    pub positioned: bool,
    /// Wants positions and recovery on resubscribe.
    pub recoverable: bool,
    /// Resubscribing after this position: recover what came after it.
    pub recover_since: Option<StreamPosition>,
    /// Asks for fossil deltas (granted where the namespace allows them).
    pub delta: bool,
    /// Asks for the channel's latest publication (a Pusher cache channel's
    /// last event): read before the subscription goes live, queued right
    /// after its reply (see [`crate::PushEncoder::encode_latest`]), and
    /// followed only by what is newer. Not read when recovering (the reply
    /// carries what was missed). Should the read fail, the subscription
    /// goes live without it, told there is none, and a warning is logged.
    /// The connection's encoder may ask for it too
    /// ([`crate::PushEncoder::wants_latest`]), for every subscription.
    pub latest: bool,
    /// Refuses the subscription with [`HubError::UnrecoverablePosition`]
    /// when it cannot recover, instead of making it `recovered: false`.
    pub reject_unrecovered: bool,
}

/// How a subscription came out; front-ends encode their reply from it.
#[derive(Debug, Clone, Default)]
pub struct SubscribeOutcome {
    /// Positions are tracked (the namespace has history).
    pub positioned: bool,
    /// The subscription recovers on resubscribe.
    pub recoverable: bool,
    /// The stream position the subscriber continues from.
    pub position: StreamPosition,
    /// The subscriber asked to recover.
    pub was_recovering: bool,
    /// Recovery succeeded; `publications` are exactly what was missed.
    pub recovered: bool,
    /// What the subscriber missed, when it recovered.
    pub publications: Vec<Arc<Publication>>,
    /// Publications after the first go to it as fossil deltas.
    pub delta: bool,
    /// The channel's latest publication, when the subscriber asked for it
    /// and the channel holds one.
    pub latest: Option<Arc<Publication>>,
    /// Names this subscription, for ending it later only if it is still
    /// the one (see [`Hub::unsubscribe_subscription`]).
    pub serial: SubscriptionSerial,
}

/// The shortest pause between two steps of [`Hub::close_spread`].
pub const DRAIN_STEP: Duration = Duration::from_millis(20);

/// Counts for `/api/info` and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HubStats {
    /// Connections on this node.
    pub clients: usize,
    /// Distinct users of those connections.
    pub users: usize,
    /// Channels with a local subscriber.
    pub channels: usize,
    /// Local subscriptions.
    pub subscriptions: usize,
}

/// The node's hub. Cheap to share: hold it in an `Arc`.
#[derive(Debug)]
pub struct Hub {
    config: HubConfig,
    engine: Engine,
    registry: Registry,
    channels: Channels,
    presence: PresenceKeeper,
    occupancy: OccupancyTracker,
    observer: Observer,
    meter: Meter,
    relay: Relay,
    surveys: survey::Surveys,
    /// The namespaces' rules: `config.rules` at start, replaced on reload.
    rules: std::sync::RwLock<Arc<ChannelRules>>,
    started: Instant,
    watchers: watch::Watchers,
    counters: Counters,
}

/// What the node counts since it started, for the rates operators watch.
#[derive(Debug, Default)]
struct Counters {
    /// Publications accepted here (server API and clients).
    published: std::sync::atomic::AtomicU64,
    /// Publications queued to local subscribers.
    delivered: std::sync::atomic::AtomicU64,
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
    /// A hub over `engine`; call [`Hub::start`] before serving.
    pub fn new(config: HubConfig, engine: Engine) -> Arc<Self> {
        let observer = Observer::default();
        Arc::new(Self {
            presence: PresenceKeeper::new(
                engine.clone(),
                config.presence_update_interval,
                config.presence_ttl,
                observer.clone(),
            ),
            occupancy: OccupancyTracker::new(&config, engine.clone(), observer.clone()),
            observer,
            meter: Meter::default(),
            relay: Relay::default(),
            surveys: survey::Surveys::default(),
            rules: std::sync::RwLock::new(Arc::new(config.rules.clone())),
            config,
            engine,
            registry: Registry::new(),
            channels: Channels::new(),
            started: Instant::now(),
            watchers: watch::Watchers::default(),
            counters: Counters::default(),
        })
    }

    /// Connects the hub to its engine and starts the heartbeat that
    /// refreshes presence, occupancy and this node's registry entry; call
    /// once before serving.
    pub async fn start(self: &Arc<Self>) -> Result<(), HubError> {
        self.engine.start(Arc::new(HubEvents(Arc::downgrade(self)))).await?;
        heartbeat::start(self).await;
        position_check::start(self);
        Ok(())
    }

    /// This node's id.
    pub fn node(&self) -> &NodeId {
        &self.config.node
    }

    /// The engine this hub runs on.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The namespaces' rules, as they are now.
    pub fn rules(&self) -> Arc<ChannelRules> {
        self.rules.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the namespaces' rules (a configuration reload). What a
    /// connection was already granted stays; every later command, publication
    /// and subscription is judged by the new rules.
    pub fn set_rules(&self, rules: ChannelRules) {
        *self.rules.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(rules);
    }

    /// Installs what hears the hub's measurements; only the first call
    /// takes effect.
    pub fn measure(&self, meter: Arc<dyn HubMeter>) {
        self.meter.install(meter);
    }

    /// Installs the observer of cluster-wide transitions; only the first
    /// call takes effect.
    pub fn observe(&self, observer: Arc<dyn HubObserver>) {
        self.observer.install(observer);
    }

    /// Installs where client commands relayed from other nodes go (see
    /// [`Control::Relay`]); only the first call takes effect. Until then
    /// they are dropped.
    pub fn relay_to(&self, relay: Arc<dyn SessionRelay>) {
        self.relay.install(relay);
    }

    /// Registers an authenticated connection.
    pub fn connect(&self, spec: ConnectionSpec) -> Result<Arc<Connection>, HubError> {
        let conn = Arc::new(Connection::new(spec));
        self.registry.add(conn.clone())?;
        Ok(conn)
    }

    /// Makes `user` the connection's user, for a connection that
    /// authenticates after it connected, so commands addressed to that
    /// user reach it.
    pub fn set_user(&self, conn: &Arc<Connection>, user: UserId) {
        self.registry.set_user(conn, user);
    }

    /// Removes a connection and all its subscriptions. Call when its socket
    /// is gone.
    pub async fn disconnect(&self, conn: &Arc<Connection>) {
        self.registry.remove(conn);
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
        let rules = self.rules();
        let options = rules.resolve(channel)?;
        let size = publication.data.len();
        if size > options.max_message_size {
            return Err(HubError::MessageTooLarge { size, limit: options.max_message_size });
        }
        let publish = PublishOptions {
            history: options.history().filter(|_| !skip_history),
            idempotency_key,
            idempotency_window: self.config.idempotency_window,
        };
        let published = self.engine.broker().publish(channel, publication, &publish).await?;
        self.counters.published.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(published)
    }

    /// Publishes on behalf of a client connection, if its namespace allows.
    pub async fn client_publish(
        &self,
        conn: &Arc<Connection>,
        channel: &ChannelName,
        data: Bytes,
    ) -> Result<PublishResult, HubError> {
        let rules = self.rules();
        let options = rules.resolve(channel)?;
        let allowed = match options.publish {
            PublishPolicy::Api => false,
            PublishPolicy::Subscribers => conn.is_subscribed(channel),
            // A private channel's publishers are its subscribers: they
            // needed a token (or the server) to be there.
            PublishPolicy::Clients if ChannelRules::is_private(channel) => conn.is_subscribed(channel),
            PublishPolicy::Clients => true,
        };
        if !allowed {
            return Err(HubError::PermissionDenied);
        }
        let mut publication = Publication::from_data(data);
        publication.info = Some(conn.info_in(channel));
        self.publish(channel, publication, None, false).await
    }

    /// Sends a control command to every node of the cluster.
    pub async fn send_control(&self, command: Control) -> Result<(), HubError> {
        Ok(self.engine.broker().send_control(command).await?)
    }

    /// Every live node of the cluster, this one's counts fresh.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, HubError> {
        self.register_node().await;
        self.registered_nodes().await
    }

    /// Every live node of the cluster as last registered (this one's
    /// figures up to [`NODE_INFO_EVERY`] old), without writing anything.
    pub async fn registered_nodes(&self) -> Result<Vec<NodeInfo>, HubError> {
        Ok(self.engine.nodes().nodes().await?)
    }

    /// Local channels with their local subscriber counts, optionally only
    /// those whose name matches `pattern` (`*` matches any run of characters).
    pub fn channels(&self, pattern: Option<&str>) -> Vec<(ChannelName, usize)> {
        self.channels.list(pattern)
    }

    /// This node's connections and subscriptions by protocol (as the
    /// connections' encoders name it), for metrics.
    pub fn counts_by_protocol(&self) -> std::collections::BTreeMap<&'static str, (usize, usize)> {
        let mut counts: std::collections::BTreeMap<&'static str, (usize, usize)> = Default::default();
        self.registry.for_each(|conn| {
            let entry = counts.entry(conn.encoder.protocol()).or_default();
            entry.0 = entry.0.saturating_add(1);
        });
        self.channels.for_each_subscriber(|conn| {
            let entry = counts.entry(conn.encoder.protocol()).or_default();
            entry.1 = entry.1.saturating_add(1);
        });
        counts
    }

    /// Bytes waiting in this node's connections' outboxes.
    pub fn queued_bytes(&self) -> usize {
        let mut bytes = 0usize;
        self.registry.for_each(|conn| bytes = bytes.saturating_add(conn.outbox.queued_bytes()));
        bytes
    }

    /// This node's counts.
    pub fn stats(&self) -> HubStats {
        let (clients, users) = self.registry.counts();
        let (channels, subscriptions) = self.channels.counts();
        HubStats { clients, users, channels, subscriptions }
    }

    /// Stops accepting connections and closes every open one with `reason`.
    pub fn close_all(&self, reason: DisconnectReason) {
        self.registry.close_all(reason);
    }

    /// Stops accepting connections and closes the open ones with `reason`
    /// in even steps over `window` (one every [`DRAIN_STEP`] at most), so
    /// that their clients do not all reconnect elsewhere in the same
    /// instant; returns once every one is closed.
    pub async fn close_spread(&self, reason: DisconnectReason, window: Duration) {
        self.registry.refuse_new();
        let open = self.registry.snapshot();
        let most_steps = window.as_millis().checked_div(DRAIN_STEP.as_millis()).unwrap_or(1);
        let most_steps = usize::try_from(most_steps).unwrap_or(usize::MAX).max(1);
        let per_step = open.len().div_ceil(most_steps).max(1);
        let steps = open.len().div_ceil(per_step).max(1);
        // Steps at 0, pause, 2 pauses, …: the last just before the window ends.
        let pause = window.checked_div(u32::try_from(steps).unwrap_or(u32::MAX)).unwrap_or_default();
        for (n, step) in open.chunks(per_step).enumerate() {
            if n > 0 {
                tokio::time::sleep(pause).await;
            }
            for conn in step {
                conn.outbox.close(reason.clone());
            }
        }
        self.registry.close_all(reason);
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod recovery_properties;

#[cfg(test)]
mod stale_tests;

#[cfg(test)]
mod delta_tests;

#[cfg(test)]
mod presence_tests;

#[cfg(test)]
mod seam_tests;

#[cfg(test)]
mod latest_tests;

#[cfg(test)]
mod test_engines;

#[cfg(test)]
mod join_tests;

#[cfg(test)]
mod interest_tests;

#[cfg(test)]
mod occupancy_tests;
