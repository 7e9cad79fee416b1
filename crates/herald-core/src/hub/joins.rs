//! Joins under way. A subscription's join (its presence entry added, its
//! join published) is announced after the channel's interest lock is let
//! go, so that the clients joining one channel do so side by side rather
//! than one engine round trip after another. Its leave must not overtake
//! it: the leave waits here until the join is told.
//!
//! A join is registered under the interest lock, as its subscription goes
//! live, and a leave is announced under that lock; so a leave finds the
//! join of its own subscription if that is still under way, and a later
//! subscription of the same client cannot begin its join before the
//! earlier one's leave is told. Only joins under way are kept: an entry
//! lives from a subscription's going live to the end of its join.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use herald_engine::{ChannelName, ClientId};
use tokio::sync::watch;

type Key = (ChannelName, ClientId);

#[derive(Debug, Default)]
pub(super) struct Joins {
    /// Each join under way, by channel and client: the receiving end of
    /// a channel its announcer closes once the join is told.
    under_way: Mutex<HashMap<Key, watch::Receiver<()>>>,
}

/// A join being announced; dropping it (told, failed or abandoned) lets
/// its leave go ahead.
#[derive(Debug)]
pub(super) struct JoinUnderWay<'a> {
    joins: &'a Joins,
    key: Key,
    // Dropped after `Drop::drop` has taken the entry out of the map, so
    // a leave that waits for it finds no entry left when it wakes.
    told: watch::Sender<()>,
}

impl Joins {
    fn under_way(&self) -> MutexGuard<'_, HashMap<Key, watch::Receiver<()>>> {
        self.under_way.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers the join of `client` in `channel`, about to be announced.
    /// The caller holds the channel's interest lock.
    pub(super) fn begin(&self, channel: &ChannelName, client: &ClientId) -> JoinUnderWay<'_> {
        let (told, waiting) = watch::channel(());
        let key = (channel.clone(), client.clone());
        self.under_way().insert(key.clone(), waiting);
        JoinUnderWay { joins: self, key, told }
    }

    /// Waits until the join of `client` in `channel`, if one is under
    /// way, has been told. The caller holds the channel's interest lock.
    pub(super) async fn told(&self, channel: &ChannelName, client: &ClientId) {
        let waiting = self.under_way().get(&(channel.clone(), client.clone())).cloned();
        if let Some(mut waiting) = waiting {
            // Nothing is ever sent: the channel closes when the join is told.
            while waiting.changed().await.is_ok() {}
        }
    }
}

impl Drop for JoinUnderWay<'_> {
    fn drop(&mut self) {
        let mut under_way = self.joins.under_way();
        // A later join of the same client in the channel would have a
        // channel of its own; leave that one alone.
        if under_way.get(&self.key).is_some_and(|waiting| waiting.same_channel(&self.told.subscribe())) {
            under_way.remove(&self.key);
        }
    }
}
