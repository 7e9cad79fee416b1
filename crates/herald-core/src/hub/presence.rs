//! Presence as the hub keeps it: each connection's entry in the channels
//! it subscribed to (where the namespace keeps presence), joins and leaves
//! broadcast through the engine, and the leave of clients that vanished
//! without leaving (their connection or node died), announced once their
//! entry expires.
//!
//! An entry is refreshed every few beats rather than at each: as seldom as
//! keeps it alive with two beats to spare ([`beats_between_refreshes`]),
//! each (channel, user) on a beat of its own so that every beat writes a
//! like share. A beat whose refresh failed, or that follows a break in
//! the engine's link (the backplane may have lost its data), is followed
//! by one that refreshes every entry.
//!
//! A refresh writes entries it listed before its first write, so a leave
//! in between would be undone: the entry written back, shown until its
//! ttl, and its leave told twice. Leaves made while a refresh is under way
//! are noted, and the refresh removes those of its entries again after it
//! has written. A connection that left so and joins again waits for the
//! refresh to be over before it adds its entry, or its join could find the
//! refresh's write there and tell no arrival.
//!
//! A join is announced outside its channel's interest lock, side by side
//! with the others of the channel; a leave waits for the joins of its
//! user under way (see `joins`).

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use herald_engine::{Arrival, ChannelName, ClientId, ClientInfo, Departure, Engine, PresenceEvent};
use tokio::sync::watch;

use super::joins::{JoinUnderWay, Joins, Member, Unannounced};
use super::observer::Observer;
use crate::namespace::NamespaceOptions;

#[derive(Debug)]
pub(super) struct PresenceKeeper {
    engine: Engine,
    ttl: Duration,
    observer: Observer,
    /// Beats from one refresh of an entry to its next.
    every: u64,
    /// Beats so far.
    beats: AtomicU64,
    /// The next beat refreshes every entry.
    refresh_all: AtomicBool,
    /// While a refresh is under way, the entries removed since it began;
    /// `None` when none is. A watch, so that a join can wait for the
    /// refresh to be over (see [`PresenceKeeper::announce`]).
    left_while_refreshing: watch::Sender<Option<HashSet<(ChannelName, ClientId)>>>,
    /// Joins being announced, which their leaves wait for.
    joins: Joins,
}

/// How many beats apart an entry is refreshed, for beats `interval` apart
/// and entries that live `ttl` after a write: as many as leave two beats
/// before the entry expires, one for a beat that runs late and one for a
/// refresh that fails and is made again at the next beat; at least one.
/// (The defaults, 25 s and 60 s, give one: every beat.)
pub(super) fn beats_between_refreshes(interval: Duration, ttl: Duration) -> u64 {
    let whole = ttl.as_nanos().checked_div(interval.as_nanos()).unwrap_or(0);
    u64::try_from(whole.saturating_sub(2)).unwrap_or(u64::MAX).max(1)
}

/// How an entry is known while a refresh is under way.
fn key(channel: &ChannelName, client: &ClientId) -> (ChannelName, ClientId) {
    (channel.clone(), client.clone())
}

/// Which of `every` beats refreshes `info`'s entry in `channel`: one
/// user's connections in a channel together (an engine may keep them in
/// one record), an anonymous connection on its own (whose entry is its
/// own record), spread evenly over the beats.
fn refresh_beat(channel: &ChannelName, info: &ClientInfo, every: u64) -> u64 {
    let mut hasher = DefaultHasher::new();
    channel.as_str().hash(&mut hasher);
    Member::of(info).hash(&mut hasher);
    hasher.finish().checked_rem(every).unwrap_or(0)
}

impl PresenceKeeper {
    pub(super) fn new(engine: Engine, interval: Duration, ttl: Duration, observer: Observer) -> Self {
        Self {
            engine,
            ttl,
            observer,
            every: beats_between_refreshes(interval, ttl),
            beats: AtomicU64::new(0),
            refresh_all: AtomicBool::new(false),
            left_while_refreshing: watch::Sender::new(None),
            joins: Joins::default(),
        }
    }

    /// Whether `client` left `channel` while the refresh under way (if
    /// any) was writing.
    fn left_while_refreshing(&self, channel: &ChannelName, client: &ClientId) -> bool {
        self.left_while_refreshing.borrow().as_ref().is_some_and(|left| left.contains(&key(channel, client)))
    }

    /// Notes that the entry of `client` in `channel` is being added
    /// (`joined`) or removed, for a refresh under way.
    fn note_change(&self, channel: &ChannelName, client: &ClientId, joined: bool) {
        // Not a change joins wait for: they wait for the refresh's end.
        self.left_while_refreshing.send_if_modified(|left| {
            if let Some(left) = left.as_mut() {
                let key = key(channel, client);
                match joined {
                    true => drop(left.remove(&key)),
                    false => drop(left.insert(key)),
                }
            }
            false
        });
    }

    /// The engine's link broke: the backplane may have lost entries, so
    /// the next beat writes them all again.
    pub(super) fn link_broke(&self) {
        self.refresh_all.store(true, Ordering::Relaxed);
    }

    /// Notes a subscription of `client` to `channel` just added, where the
    /// namespace keeps presence: refreshes leave its entry alone until
    /// what this returns is dropped, once its join is told (or the
    /// subscribe is over). Called under the channel's interest lock.
    pub(super) fn expect_join(
        &self,
        channel: &ChannelName,
        client: &ClientId,
        options: &NamespaceOptions,
    ) -> Option<Unannounced<'_>> {
        options.presence.then(|| self.joins.expect(channel, client))
    }

    /// Removes the entry of a connection whose subscription ended before
    /// it went live, which a refresh wrote if the subscribe that made it
    /// was dropped (its connection's task ended) before the subscription
    /// went. Nothing is told: its join never was.
    pub(super) async fn withdraw(&self, info: &ClientInfo, channel: &ChannelName, options: &NamespaceOptions) {
        if !options.presence {
            return;
        }
        self.note_change(channel, &info.client, false);
        // Most often there is no such entry; and this fails on every
        // subscribe a backplane outage ends, which the outage's own
        // warnings already tell of.
        if let Err(error) = self.engine.presence().remove_presence(channel, info).await {
            tracing::debug!(%channel, %error, "presence entry of a subscription that never went live may show until its ttl");
        }
    }

    /// Registers a join of `info` in `channel`, where the namespace keeps
    /// presence or pushes joins and leaves, so that its user's leaves wait
    /// for it; the caller then announces it, and drops what this returns
    /// when it has. Called under the channel's interest lock, as the
    /// subscription goes live.
    pub(super) fn begin_join(
        &self,
        channel: &ChannelName,
        info: &ClientInfo,
        options: &NamespaceOptions,
    ) -> Option<JoinUnderWay<'_>> {
        (options.presence || options.join_leave).then(|| self.joins.begin(channel, info))
    }

    /// Adds the connection's entry and announces its join (`joined`), or
    /// removes it and announces its leave, where the namespace keeps
    /// presence or pushes joins and leaves. A leave is announced under
    /// the channel's interest lock, after the joins of its user under way.
    pub(super) async fn announce(
        &self,
        info: ClientInfo,
        channel: &ChannelName,
        options: &NamespaceOptions,
        joined: bool,
    ) {
        if !options.presence && !options.join_leave {
            return;
        }
        if !joined {
            self.joins.told(channel, &info).await;
        }
        if joined && options.presence && self.left_while_refreshing(channel, &info.client) {
            // A refresh under way listed this connection's entry before it
            // left, and may write it back at any moment: joined now, the
            // join could find it there and tell no arrival. The refresh
            // removes it again when it is done.
            let mut refreshing = self.left_while_refreshing.subscribe();
            let _ = refreshing.wait_for(Option::is_none).await;
        }
        let presence = self.engine.presence();
        if options.presence {
            self.note_change(channel, &info.client, joined);
        }
        let result = match (options.presence, joined) {
            (false, _) => Ok(false),
            (true, true) => {
                presence.add_presence(channel, &info, self.ttl).await.map(|arrival| arrival == Arrival::UserArrived)
            }
            (true, false) => {
                presence.remove_presence(channel, &info).await.map(|departure| departure == Departure::UserDeparted)
            }
        };
        let user_changed = result.unwrap_or_else(|error| {
            tracing::warn!(%channel, %error, "presence update failed");
            false
        });
        if user_changed {
            if let Some(observer) = self.observer.get() {
                match joined {
                    true => observer.user_joined(channel, &info),
                    false => observer.user_left(channel, &info),
                }
            }
        }
        if options.join_leave {
            let event = match joined {
                true => PresenceEvent::Join { info, user_arrived: user_changed },
                false => PresenceEvent::Leave { info, user_departed: user_changed },
            };
            if let Err(error) = self.engine.broker().publish_presence(channel, event).await {
                tracing::warn!(%channel, %error, "join/leave event not sent");
            }
        }
    }

    /// Refreshes those of the live connections' entries whose beat this
    /// is (all of them after a failure or a break in the link), so they
    /// outlive their ttl: in one call, which the engine batches. `list`
    /// lists the entries (see [`PresenceKeeper::announced`]); it is called
    /// once leaves are noted for the refresh, so a leave made while or
    /// after they are listed is not undone by it.
    pub(super) async fn refresh(&self, list: impl FnOnce() -> Vec<(ChannelName, ClientInfo)>) {
        let _under_way = Refreshing::begin(self);
        let mut entries = list();
        let beat = self.beats.fetch_add(1, Ordering::Relaxed).checked_rem(self.every).unwrap_or(0);
        if !self.refresh_all.swap(false, Ordering::Relaxed) {
            entries.retain(|(channel, info)| refresh_beat(channel, info, self.every) == beat);
        }
        if !entries.is_empty() {
            let failed = self.engine.presence().refresh_presence(&entries, self.ttl).await;
            if !failed.is_empty() {
                self.refresh_all.store(true, Ordering::Relaxed);
            }
            for error in failed {
                tracing::warn!(%error, "presence refresh failed for some entries; the next heartbeat refreshes all");
            }
            self.remove_again(&entries).await;
        }
    }

    /// Whether the subscription of `client` to `channel` has had its join
    /// told, so that a refresh may write its entry: until then its entry
    /// is its join's to write first, or the join would find the user
    /// there already and tell no arrival. Ask while holding the
    /// connection's subscriptions, which is exact: a subscription is noted
    /// as unannounced before it is added to them.
    pub(super) fn announced(&self, channel: &ChannelName, client: &ClientId) -> bool {
        !self.joins.is_unannounced(channel, client)
    }

    /// Removes again those of a refresh's `entries` that left while it
    /// wrote (and did not come back), which it may have written back.
    /// Their leaves were told.
    async fn remove_again(&self, entries: &[(ChannelName, ClientInfo)]) {
        let raced: Vec<_> = {
            let left = self.left_while_refreshing.borrow();
            let Some(left) = left.as_ref().filter(|left| !left.is_empty()) else { return };
            entries.iter().filter(|(channel, info)| left.contains(&key(channel, &info.client))).collect()
        };
        let presence = self.engine.presence();
        for (channel, info) in raced {
            // Unless it came back meanwhile.
            if !self.left_while_refreshing(channel, &info.client) {
                continue;
            }
            if let Err(error) = presence.remove_presence(channel, info).await {
                tracing::warn!(%channel, %error, "an entry that left during a presence refresh may show until its ttl");
            }
        }
    }

    /// Announces the leave of every client whose entry expired in one of
    /// `channels` (each expired entry goes to one node only). Each channel
    /// comes with whether its namespace tells joins and leaves.
    pub(super) async fn sweep_expired(&self, channels: Vec<(ChannelName, bool)>) {
        if channels.is_empty() {
            return;
        }
        let told: HashSet<ChannelName> =
            channels.iter().filter(|(_, join_leave)| *join_leave).map(|(channel, _)| channel.clone()).collect();
        let names: Vec<ChannelName> = channels.into_iter().map(|(channel, _)| channel).collect();
        let swept = self.engine.presence().expire_presence_of(&names).await;
        for error in swept.failed {
            tracing::warn!(%error, "presence expiry sweep failed for some channels; the next heartbeat tries again");
        }
        for (channel, entry) in swept.expired {
            let user_departed = entry.departure == Departure::UserDeparted;
            if user_departed {
                if let Some(observer) = self.observer.get() {
                    observer.user_left(&channel, &entry.info);
                }
            }
            if !told.contains(&channel) {
                continue;
            }
            let event = PresenceEvent::Leave { info: entry.info, user_departed };
            if let Err(error) = self.engine.broker().publish_presence(&channel, event).await {
                tracing::warn!(%channel, %error, "leave of an expired presence entry not sent");
            }
        }
    }
}

/// A refresh under way: leaves are noted for it, and joins of those that
/// left wait for it. Dropped (done, or its beat abandoned), it is over.
struct Refreshing<'a>(&'a PresenceKeeper);

impl<'a> Refreshing<'a> {
    fn begin(keeper: &'a PresenceKeeper) -> Self {
        keeper.left_while_refreshing.send_replace(Some(HashSet::new()));
        Self(keeper)
    }
}

impl Drop for Refreshing<'_> {
    fn drop(&mut self) {
        self.0.left_while_refreshing.send_replace(None);
    }
}
