//! Cluster-wide occupancy: which channels have subscribers anywhere in the
//! cluster, how many, and which node saw a channel become occupied or
//! vacated.
//!
//! Each node with local subscribers to a channel keeps an entry with its
//! count in the engine's occupancy, and the engine reports which change
//! made the channel occupied and which vacated it, each to exactly one
//! node. Entries are refreshed with the node's heartbeat, each refresh one
//! of its channel's writes (below), with the count of its turn. A dead node's
//! entries expire; a channel whose every node died drops out of the
//! engine's index, and the node whose sweep finds it reports it vacated.
//!
//! A change of a channel's local count is noted under its interest lock,
//! in the order of the changes, and written after the lock is let go: by
//! the subscribe or unsubscribe that made it if no write for the channel
//! is under way, or else by the write under way, which writes the latest
//! count noted when it is done (a task of its own carries on once the
//! first write is made). So a storm of subscribes to one channel does not
//! wait for one engine write after another, a node's writes for a channel
//! never overtake each other, and the last one is its latest count. A
//! vacancy that comes and goes while a write is under way is never
//! written, so never told: only the counts that reach the engine are.
//!
//! Occupancy is tracked only when `HubConfig::track_occupancy` is on (the
//! webhooks of occupied and vacated channels need it); otherwise queries
//! answer for this node.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use herald_engine::{ChannelName, Engine, EngineError, NodeId, OccupancyChange};

use super::observer::Observer;
use super::HubConfig;

#[derive(Debug)]
pub(super) struct OccupancyTracker {
    enabled: bool,
    /// The node's engine, id and entry ttl, and the observer, shared with
    /// the writes made in tasks of their own.
    writer: Arc<Writer>,
}

/// Writes each channel's latest local count, one write at a time per
/// channel.
#[derive(Debug)]
struct Writer {
    engine: Engine,
    node: NodeId,
    ttl: Duration,
    observer: Observer,
    /// The channels a write is under way for (or about to be), each with
    /// the latest count noted and not yet taken by a write.
    pending: Mutex<HashMap<ChannelName, Option<usize>>>,
}

/// The write of a channel's count that a change noted, to be made after
/// the interest lock is let go. Dropped unmade (an early return, or the
/// caller's future dropped), it is made by a task of its own.
#[derive(Debug)]
pub(super) struct OccupancyWrite {
    writer: Arc<Writer>,
    channel: ChannelName,
    /// The count being written, put back if the write is abandoned.
    writing: Option<usize>,
    made: bool,
    /// Reports the transition its own write makes. A heartbeat's refresh
    /// does not, as before it was one of the channel's writes: the engine
    /// says occupied when this node's entry was lost with it (telling it
    /// would tell it twice) or expired, in which case a sweep may have
    /// told the channel vacated, and it stays so for the cluster until
    /// its count next changes.
    reports: bool,
}

impl OccupancyTracker {
    pub(super) fn new(config: &HubConfig, engine: Engine, observer: Observer) -> Self {
        let writer = Arc::new(Writer {
            engine,
            node: config.node.clone(),
            ttl: config.presence_ttl,
            observer,
            pending: Mutex::default(),
        });
        Self { enabled: config.track_occupancy, writer }
    }

    /// Notes that `channel` has `subscribers` local subscribers after a
    /// change. Called under the channel's interest lock. Returns the write
    /// to make once the lock is let go, or `None` if occupancy is not
    /// tracked or a write for the channel is under way (it writes this
    /// count after its own).
    pub(super) fn changed(&self, channel: &ChannelName, subscribers: usize) -> Option<OccupancyWrite> {
        if let Some(observer) = self.writer.observer.get() {
            observer.subscribers_changed(channel);
        }
        if !self.enabled {
            return None;
        }
        match self.writer.pending().entry(channel.clone()) {
            Entry::Occupied(mut under_way) => {
                under_way.insert(Some(subscribers));
                None
            }
            Entry::Vacant(free) => {
                free.insert(Some(subscribers));
                Some(OccupancyWrite::new(&self.writer, channel, true))
            }
        }
    }

    /// Refreshes this node's entries for `channels` (which sweeps dead
    /// nodes' entries), and reports channels left by dead nodes. Each is
    /// written as one of the channel's writes, with its count as `count`
    /// says when its turn comes: a channel whose count is being written is
    /// left to that write, and one emptied meanwhile is left alone, so a
    /// refresh never writes a count older than one already written. A
    /// refresh tells no transition of its own; changes noted while it
    /// writes are written, and told, after it.
    pub(super) async fn refresh(&self, channels: &[ChannelName], count: impl Fn(&ChannelName) -> usize) {
        if !self.enabled {
            return;
        }
        for channel in channels {
            let write = match self.writer.pending().entry(channel.clone()) {
                Entry::Occupied(_) => continue,
                // Read under the lock changes are noted under: a change
                // it does not see yet is noted after, and written after it.
                Entry::Vacant(free) => match count(channel) {
                    0 => continue,
                    subscribers => {
                        free.insert(Some(subscribers));
                        OccupancyWrite::new(&self.writer, channel, false)
                    }
                },
            };
            write.make().await;
        }
        match self.writer.engine.occupancy().expire_vacated().await {
            Ok(abandoned) => {
                for channel in abandoned {
                    tracing::info!(%channel, "every node serving the channel is gone: vacated");
                    if let Some(observer) = self.writer.observer.get() {
                        observer.channel_vacated(&channel);
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "occupied channels sweep failed"),
        }
    }

    /// How many subscribers `channel` has on other nodes (none counted
    /// when occupancy is not tracked).
    pub(super) async fn remote_subscribers(&self, channel: &ChannelName) -> Result<usize, EngineError> {
        if !self.enabled {
            return Ok(0);
        }
        let entries = self.writer.engine.occupancy().subscribers(channel).await?;
        Ok(entries.iter().filter(|e| e.node != self.writer.node).map(|e| e.subscribers).sum())
    }

    /// The subscribers of `channel` on every node, this one's as last
    /// written (not as they are now); `None` unless occupancy is tracked.
    pub(super) async fn written_subscribers(&self, channel: &ChannelName) -> Result<Option<usize>, EngineError> {
        if !self.enabled {
            return Ok(None);
        }
        let entries = self.writer.engine.occupancy().subscribers(channel).await?;
        Ok(Some(entries.iter().map(|e| e.subscribers).fold(0, usize::saturating_add)))
    }

    /// The channels occupied anywhere in the cluster, with `local` (this
    /// node's), sorted.
    pub(super) async fn occupied(&self, mut local: Vec<ChannelName>) -> Result<Vec<ChannelName>, EngineError> {
        if self.enabled {
            local.extend(self.writer.engine.occupancy().occupied_channels().await?);
            local.sort();
            local.dedup();
        }
        Ok(local)
    }
}

impl OccupancyWrite {
    fn new(writer: &Arc<Writer>, channel: &ChannelName, reports: bool) -> Self {
        Self { writer: writer.clone(), channel: channel.clone(), writing: None, made: false, reports }
    }

    /// Writes the channel's latest count, and leaves any count noted
    /// meanwhile to a task of its own.
    pub(super) async fn make(mut self) {
        if let Some(subscribers) = self.writer.next(&self.channel) {
            self.writing = Some(subscribers);
            self.writer.write(&self.channel, subscribers, self.reports).await;
            self.writing = None;
        }
        self.made = true;
        if let Some(subscribers) = self.writer.next(&self.channel) {
            self.writer.clone().carry_on(self.channel.clone(), Some(subscribers));
        }
    }
}

impl Drop for OccupancyWrite {
    fn drop(&mut self) {
        if self.made {
            return;
        }
        if let Some(abandoned) = self.writing.take() {
            if let Some(latest @ None) = self.writer.pending().get_mut(&self.channel) {
                *latest = Some(abandoned);
            }
        }
        self.writer.clone().carry_on(self.channel.clone(), None);
    }
}

/// A task writing a channel's counts. Should it end without finishing
/// (a panic in a write or an observer), the channel's writes are not
/// left marked under way: the next change starts them again.
struct Draining {
    writer: Arc<Writer>,
    channel: ChannelName,
    done: bool,
}

impl Draining {
    fn finish(mut self) {
        self.done = true;
    }
}

impl Drop for Draining {
    fn drop(&mut self) {
        if !self.done {
            self.writer.pending().remove(&self.channel);
        }
    }
}

impl Writer {
    fn pending(&self) -> MutexGuard<'_, HashMap<ChannelName, Option<usize>>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the latest count noted for `channel`, or, if there is none,
    /// ends the channel's writes (the next change starts them again).
    fn next(&self, channel: &ChannelName) -> Option<usize> {
        let mut pending = self.pending();
        let latest = pending.get_mut(channel).and_then(Option::take);
        if latest.is_none() {
            pending.remove(channel);
        }
        latest
    }

    /// Writes `first`, if any, then whatever is noted after it, in a task
    /// of its own.
    fn carry_on(self: Arc<Self>, channel: ChannelName, first: Option<usize>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime left to write in: the node is shutting down.
            self.pending().remove(&channel);
            return;
        };
        runtime.spawn(async move {
            let draining = Draining { writer: self, channel, done: false };
            if let Some(subscribers) = first {
                draining.writer.write(&draining.channel, subscribers, true).await;
            }
            while let Some(subscribers) = draining.writer.next(&draining.channel) {
                draining.writer.write(&draining.channel, subscribers, true).await;
            }
            draining.finish();
        });
    }

    /// Records this node's count of `channel`, and reports a cluster-wide
    /// transition if this node decided it and `reports`.
    async fn write(&self, channel: &ChannelName, subscribers: usize, reports: bool) {
        let occupancy = self.engine.occupancy();
        let changed = match subscribers {
            0 => occupancy.vacate(channel, &self.node).await,
            _ => occupancy.occupy(channel, &self.node, subscribers, self.ttl).await,
        };
        match changed {
            Ok(OccupancyChange::Occupied | OccupancyChange::Vacated) if !reports => {}
            Ok(OccupancyChange::Occupied) => {
                if let Some(observer) = self.observer.get() {
                    observer.channel_occupied(channel);
                }
            }
            Ok(OccupancyChange::Vacated) => {
                if let Some(observer) = self.observer.get() {
                    observer.channel_vacated(channel);
                }
            }
            Ok(OccupancyChange::Unchanged) => {}
            Err(error) => tracing::warn!(%channel, %error, "occupancy update failed; counts may lag a heartbeat"),
        }
    }
}
