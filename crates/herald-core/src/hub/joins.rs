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
//! then "departed" while the user is there.
//!
//! A join is registered under the interest lock, as its subscription goes
//! live, and a leave is announced under that lock; so a leave finds every
//! such join still under way, and a join that goes live after the leave
//! began waits for the lock, so for the leave. Only joins under way are
//! kept: an entry lives from a subscription's going live to the end of
//! its join.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use herald_engine::{ChannelName, UserId};
use tokio::sync::watch;

type Key = (ChannelName, UserId);

#[derive(Debug, Default)]
pub(super) struct Joins {
    /// The joins under way, by channel and user: for each, the receiving
    /// end of a channel its announcer closes once the join is told.
    under_way: Mutex<HashMap<Key, Vec<watch::Receiver<()>>>>,
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

    /// Registers a join of `user` in `channel`, about to be announced.
    /// The caller holds the channel's interest lock.
    pub(super) fn begin(&self, channel: &ChannelName, user: &UserId) -> JoinUnderWay<'_> {
        let (told, waiting) = watch::channel(());
        let key = (channel.clone(), user.clone());
        self.under_way().entry(key.clone()).or_default().push(waiting);
        JoinUnderWay { joins: self, key, told }
    }

    /// Waits until every join of `user` in `channel` under way now has
    /// been told. The caller holds the channel's interest lock.
    pub(super) async fn told(&self, channel: &ChannelName, user: &UserId) {
        let waiting = self.under_way().get(&(channel.clone(), user.clone())).cloned().unwrap_or_default();
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
