//! Interest locks: one per channel, serializing what changes the node's
//! interest in it (its first subscriber and the engine subscription, its
//! last unsubscriber and the engine unsubscription, watches) with the
//! channel's presence and occupancy bookkeeping.
//!
//! A lock exists only while someone holds or awaits it: a channel's entry
//! is made by its first locker and removed by the last to leave, so the
//! table holds no more entries than there are subscribes, unsubscribes and
//! watches under way. Each channel has its own: an engine call held up
//! under one channel's lock (a backplane that is slow to answer a
//! SUBSCRIBE) holds up that channel alone, never the subscribes of other
//! channels, already live here, that need no engine call at all.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};

use herald_engine::ChannelName;
use tokio::sync::OwnedMutexGuard;

use crate::shard::{pick, SHARDS};

type Lock = Arc<tokio::sync::Mutex<()>>;

/// Every channel's interest lock that is held or awaited.
#[derive(Debug)]
pub(super) struct InterestLocks {
    hasher: RandomState,
    /// The table, in shards: taking a lock touches only its shard, and only
    /// for as long as it takes to find or make the entry.
    shards: Box<[Mutex<HashMap<ChannelName, Lock>>]>,
}

/// A channel's interest lock, held until dropped.
#[must_use = "the lock is let go when this is dropped"]
#[derive(Debug)]
pub(super) struct Interest<'a> {
    /// Declared first: let go before the entry is looked at.
    _held: OwnedMutexGuard<()>,
    _entry: Entry<'a>,
}

/// A locker's share of a channel's entry. Dropped (the lock let go, or
/// the wait for it abandoned), it removes the entry if nobody else holds
/// or awaits the lock.
#[derive(Debug)]
struct Entry<'a> {
    locks: &'a InterestLocks,
    channel: ChannelName,
    lock: Option<Lock>,
}

impl InterestLocks {
    pub(super) fn new() -> Self {
        Self { hasher: RandomState::new(), shards: (0..SHARDS).map(|_| Mutex::default()).collect() }
    }

    /// Waits for `channel`'s interest lock and holds it. Cancelling the
    /// wait leaves nothing behind.
    pub(super) async fn lock(&self, channel: &ChannelName) -> Interest<'_> {
        let lock = {
            let mut shard = self.shard(channel);
            shard.entry(channel.clone()).or_default().clone()
        };
        let entry = Entry { locks: self, channel: channel.clone(), lock: Some(lock.clone()) };
        // Should this wait be dropped, `lock` (owned by the wait) goes
        // before `entry`, which then sees whether anybody else needs it.
        let held = lock.lock_owned().await;
        Interest { _held: held, _entry: entry }
    }

    fn shard(&self, channel: &ChannelName) -> std::sync::MutexGuard<'_, HashMap<ChannelName, Lock>> {
        pick(&self.shards, self.hasher.hash_one(channel)).lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many channels' locks are held or awaited.
    #[cfg(test)]
    pub(super) fn in_use(&self) -> usize {
        self.shards.iter().map(|shard| shard.lock().unwrap_or_else(|e| e.into_inner()).len()).sum()
    }
}

impl Drop for Entry<'_> {
    fn drop(&mut self) {
        drop(self.lock.take());
        let mut shard = self.locks.shard(&self.channel);
        // Every other share is taken under this shard's lock: with none
        // left but the table's own, no one holds or awaits the lock, and
        // no one can start to before the entry is gone.
        if shard.get(&self.channel).is_some_and(|lock| Arc::strong_count(lock) == 1) {
            shard.remove(&self.channel);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use super::*;

    fn channel(name: &str) -> ChannelName {
        ChannelName::new(name).unwrap()
    }

    /// A lock nobody else holds, taken.
    fn held<'a>(locks: &'a InterestLocks, channel: &ChannelName) -> Interest<'a> {
        match poll_once(pin!(locks.lock(channel))) {
            Poll::Ready(interest) => interest,
            Poll::Pending => panic!("{channel}'s lock should be free"),
        }
    }

    /// Polls `future` once. Outside a runtime: tokio's budget for a task
    /// never makes a poll pending.
    fn poll_once<F: Future>(future: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        future.poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn a_channel_held_up_holds_up_no_other_channel() {
        let locks = InterestLocks::new();
        let _slow = held(&locks, &channel("room:slow"));
        // Whichever shard the other channels fall on, each is free.
        for n in 0..(4 * SHARDS) {
            let room = channel(&format!("room:{n}"));
            let other = locks.lock(&room);
            assert!(poll_once(pin!(other)).is_ready(), "room:{n} waited for room:slow");
        }
    }

    #[test]
    fn the_same_channel_waits_for_its_holder() {
        let locks = InterestLocks::new();
        let room = channel("room:1");
        let first = held(&locks, &room);
        let mut second = pin!(locks.lock(&room));
        assert!(poll_once(second.as_mut()).is_pending(), "the second locker must wait");
        drop(first);
        assert!(poll_once(second.as_mut()).is_ready(), "and has it once the first lets go");
    }

    #[test]
    fn the_table_forgets_a_channel_once_nobody_holds_or_awaits_its_lock() {
        let locks = InterestLocks::new();
        let room = channel("room:1");
        let first = held(&locks, &room);
        let mut waiting = pin!(locks.lock(&room));
        assert!(poll_once(waiting.as_mut()).is_pending());
        drop(first);
        assert_eq!(locks.in_use(), 1, "the entry stays while the next locker awaits it");
        let Poll::Ready(second) = poll_once(waiting.as_mut()) else { panic!("the waiter should have the lock") };
        assert_eq!(locks.in_use(), 1, "and while it holds it");
        drop(second);
        assert_eq!(locks.in_use(), 0);
    }

    #[test]
    fn a_wait_abandoned_leaves_nothing_behind() {
        let locks = InterestLocks::new();
        let room = channel("room:1");
        let first = held(&locks, &room);
        {
            // A subscribe whose connection went while it waited.
            let mut abandoned = pin!(locks.lock(&room));
            assert!(poll_once(abandoned.as_mut()).is_pending());
            drop(first);
        }
        assert_eq!(locks.in_use(), 0, "the abandoned wait was the last to need the lock");
    }
}
