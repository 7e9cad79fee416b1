//! Which local connections are subscribed to each channel, and the
//! per-channel interest locks that serialize the first subscription and
//! the last unsubscription with the node's own engine subscription.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLockReadGuard, RwLockWriteGuard};

use herald_engine::{ChannelName, ClientId, Publication, StreamPosition, UserId};

use crate::connection::Connection;
use crate::shard::{pick, ShardedMap, SHARDS};

/// A connection's place in a channel.
#[derive(Debug)]
pub(super) struct Subscriber {
    pub(super) conn: Arc<Connection>,
    pub(super) join_leave: bool,
    /// Tracks stream positions: must recover when the engine was interrupted.
    pub(super) positioned: bool,
    /// Who the connection is in this channel.
    pub(super) user: UserId,
    /// For a positioned subscriber: the position its reply (or recovery)
    /// already covered. With a remote engine a publication can reach the
    /// node after the history read that included it; it is not sent twice.
    pub(super) live_after: Option<StreamPosition>,
    /// Present while the subscription recovers: publications wait here.
    /// (Boxed: most subscribers never recover, and every one pays for the
    /// inline size.)
    pub(super) recovering: Option<Box<Mutex<Vec<Arc<Publication>>>>>,
}

impl Subscriber {
    /// Switches a recovering subscriber to live delivery, returning what it
    /// buffered meanwhile.
    pub(super) fn go_live(&mut self) -> Vec<Arc<Publication>> {
        match self.recovering.take() {
            Some(buffer) => buffer.into_inner().unwrap_or_else(|e| e.into_inner()),
            None => Vec::new(),
        }
    }
}

/// One channel's local subscribers, by client.
pub(super) type Subscribers = HashMap<ClientId, Subscriber>;

/// Every channel with a local subscriber.
#[derive(Debug)]
pub(super) struct Channels {
    map: ShardedMap<ChannelName, Subscribers>,
    interest_locks: Box<[tokio::sync::Mutex<()>]>,
}

impl Channels {
    pub(super) fn new() -> Self {
        Self { map: ShardedMap::new(), interest_locks: (0..SHARDS).map(|_| tokio::sync::Mutex::new(())).collect() }
    }

    /// The lock that serializes changes of the node's interest in `channel`.
    pub(super) fn interest_lock(&self, channel: &ChannelName) -> &tokio::sync::Mutex<()> {
        pick(&self.interest_locks, self.map.hash(channel))
    }

    /// The shard holding `channel`, for reading (fanout).
    pub(super) fn read(&self, channel: &ChannelName) -> RwLockReadGuard<'_, HashMap<ChannelName, Subscribers>> {
        self.map.read(channel)
    }

    /// The shard holding `channel`, for changing its subscribers.
    pub(super) fn write(&self, channel: &ChannelName) -> RwLockWriteGuard<'_, HashMap<ChannelName, Subscribers>> {
        self.map.write(channel)
    }

    /// Whether `channel` has a local subscriber.
    pub(super) fn contains(&self, channel: &ChannelName) -> bool {
        self.read(channel).contains_key(channel)
    }

    /// How many local subscribers `channel` has.
    pub(super) fn count(&self, channel: &ChannelName) -> usize {
        self.read(channel).get(channel).map_or(0, HashMap::len)
    }

    /// Adds the subscriber; returns how many the channel now has here.
    pub(super) fn add(&self, channel: &ChannelName, subscriber: Subscriber) -> usize {
        let mut shard = self.write(channel);
        let subscribers = shard.entry(channel.clone()).or_default();
        subscribers.insert(subscriber.conn.client.clone(), subscriber);
        subscribers.len()
    }

    /// Removes `client`'s subscription, dropping the channel when it was
    /// the last; returns how many subscribers are left, or `None` if the
    /// channel had none.
    pub(super) fn remove(&self, channel: &ChannelName, client: &ClientId) -> Option<usize> {
        let mut shard = self.write(channel);
        let subscribers = shard.get_mut(channel)?;
        subscribers.remove(client);
        let left = subscribers.len();
        if left == 0 {
            shard.remove(channel);
        }
        Some(left)
    }

    /// Channels with their local subscriber counts, optionally only those
    /// whose name matches `pattern`, sorted by name.
    pub(super) fn list(&self, pattern: Option<&str>) -> Vec<(ChannelName, usize)> {
        let mut out = Vec::new();
        self.map.for_each_shard(|shard| {
            for (name, subscribers) in shard {
                if pattern.is_none_or(|p| glob_match(p, name.as_str())) {
                    out.push((name.clone(), subscribers.len()));
                }
            }
        });
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Channels and subscriptions.
    pub(super) fn counts(&self) -> (usize, usize) {
        let (mut channels, mut subscriptions) = (0, 0);
        self.map.for_each_shard(|s| {
            channels = s.len().saturating_add(channels);
            subscriptions = s.values().map(HashMap::len).fold(subscriptions, usize::saturating_add);
        });
        (channels, subscriptions)
    }

    /// Every positioned subscription, as (connection, channel).
    pub(super) fn positioned(&self) -> Vec<(Arc<Connection>, ChannelName)> {
        let mut out = Vec::new();
        self.map.for_each_shard(|shard| {
            for (channel, subscribers) in shard {
                for subscriber in subscribers.values().filter(|s| s.positioned) {
                    out.push((subscriber.conn.clone(), channel.clone()));
                }
            }
        });
        out
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
        match rest.split_once(part) {
            Some((_, after)) => rest = after,
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}
