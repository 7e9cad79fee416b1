//! Joins under way. A subscription's join (its presence entry added, its
//! join published) is announced after the channel's interest lock is let
//! go, so that the clients joining one channel do so side by side rather
//! than one engine round trip after another. A leave must not overtake a
//! join it could be told out of order with: it waits here until every
//! join of the same user in the channel that is under way has been told.
//!
//! The same user, not only the same connection: the engine decides "the
//! user arrived" and "the user departed" with each write, and a tab that
//! reloads (one connection joining while another of the user leaves)
//! could otherwise have the leave written first and told last, "arrived"
//! then "departed" while the user is there. Anonymous connections are
//! each their own member (the engines tell each one's arrival and
//! departure), so each waits only for its own joins.
//!
//! A join is registered under the interest lock, as its subscription goes
//! live, and a leave is announced under that lock; so a leave finds every
//! such join still under way, and a join that goes live after the leave
//! began waits for the lock, so for the leave. Only joins under way are
//! kept: an entry lives from a subscription's going live to the end of
//! its join.
//!
//! The subscriptions whose join is yet to be told, from their adding on,
//! are kept too (by channel and connection): a presence refresh leaves
//! their entries alone (it asks while it lists a connection's
//! subscriptions). A refresh that wrote one first would have its join
//! find the user there already, and tell no "the user arrived".

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use herald_engine::{ChannelName, ClientId, ClientInfo, UserId};
use tokio::sync::watch;

/// Whose joins and leaves are told in order of one another: a user's
/// connections', or one anonymous connection's alone (anonymous
/// connections arrive and depart each on their own, as
/// `herald_engine::Presence` has it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Member {
    User(UserId),
    Anonymous(ClientId),
}

impl Member {
    pub(super) fn of(info: &ClientInfo) -> Self {
        match info.user.is_anonymous() {
            true => Member::Anonymous(info.client.clone()),
            false => Member::User(info.user.clone()),
        }
    }
}

type Key = (ChannelName, Member);

#[derive(Debug, Default)]
pub(super) struct Joins {
    /// The joins under way, by channel and member: for each, the receiving
    /// end of a channel its announcer closes once the join is told.
    under_way: Mutex<HashMap<Key, Vec<watch::Receiver<()>>>>,
    /// The subscriptions whose join is yet to be told, by channel and
    /// connection, each with how many subscribes of it there are (one
    /// that ended may not be done yet when the next is added).
    unannounced: Mutex<HashMap<(ChannelName, ClientId), usize>>,
}

/// A subscription whose join is yet to be told; dropping it (the join
/// told, or the subscribe over) lets presence refreshes write its entry.
#[derive(Debug)]
pub(super) struct Unannounced<'a> {
    joins: &'a Joins,
    key: (ChannelName, ClientId),
}

/// A join being announced; dropping it (told, failed or abandoned) lets
/// the leaves that wait for it go ahead.
#[derive(Debug)]
pub(super) struct JoinUnderWay<'a> {
    joins: &'a Joins,
    key: Key,
    // Dropped after `Drop::drop` has taken the entry out of the map, so
    // a leave that waits for it finds no entry left when it wakes.
    told: watch::Sender<()>,
}

impl Joins {
    fn under_way(&self) -> MutexGuard<'_, HashMap<Key, Vec<watch::Receiver<()>>>> {
        self.under_way.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn unannounced(&self) -> MutexGuard<'_, HashMap<(ChannelName, ClientId), usize>> {
        self.unannounced.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes a subscription of `client` to `channel` just added, whose
    /// join is yet to be told. The caller holds the channel's interest lock.
    pub(super) fn expect(&self, channel: &ChannelName, client: &ClientId) -> Unannounced<'_> {
        let key = (channel.clone(), client.clone());
        let mut unannounced = self.unannounced();
        let count = unannounced.entry(key.clone()).or_default();
        *count = count.saturating_add(1);
        drop(unannounced);
        Unannounced { joins: self, key }
    }

    /// Whether a subscription of `client` to `channel` has its join yet
    /// to be told.
    pub(super) fn is_unannounced(&self, channel: &ChannelName, client: &ClientId) -> bool {
        let unannounced = self.unannounced();
        !unannounced.is_empty() && unannounced.contains_key(&(channel.clone(), client.clone()))
    }

    /// Registers a join of `info`'s member in `channel`, about to be
    /// announced. The caller holds the channel's interest lock.
    pub(super) fn begin(&self, channel: &ChannelName, info: &ClientInfo) -> JoinUnderWay<'_> {
        let (told, waiting) = watch::channel(());
        let key = (channel.clone(), Member::of(info));
        self.under_way().entry(key.clone()).or_default().push(waiting);
        JoinUnderWay { joins: self, key, told }
    }

    /// Waits until every join of `info`'s member in `channel` under way
    /// now has been told. The caller holds the channel's interest lock.
    pub(super) async fn told(&self, channel: &ChannelName, info: &ClientInfo) {
        let waiting = self.under_way().get(&(channel.clone(), Member::of(info))).cloned().unwrap_or_default();
        for mut join in waiting {
            // Nothing is ever sent: the channel closes when the join is told.
            while join.changed().await.is_ok() {}
        }
    }
}

impl Drop for JoinUnderWay<'_> {
    fn drop(&mut self) {
        let mut under_way = self.joins.under_way();
        let Some(joins) = under_way.get_mut(&self.key) else { return };
        let ours = self.told.subscribe();
        joins.retain(|join| !join.same_channel(&ours));
        if joins.is_empty() {
            under_way.remove(&self.key);
        }
    }
}

impl Drop for Unannounced<'_> {
    fn drop(&mut self) {
        let mut unannounced = self.joins.unannounced();
        if let Some(count) = unannounced.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                unannounced.remove(&self.key);
            }
        }
    }
}
