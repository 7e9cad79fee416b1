//! Watching a channel's publications from inside the node (the admin UI's
//! live tail) without being one of its subscribers: a watcher is not in
//! the channel's presence, occupancy or subscriber counts, so looking at a
//! channel changes nothing the application sees.
//!
//! The node stays subscribed to the channel on the engine while it has a
//! subscriber or a watcher (under the channel's interest lock, as for
//! subscribers). A watcher gets publications through a bounded queue; one
//! that falls [`WATCH_QUEUE`] behind is dropped (its [`Watch`] ends), never
//! waited for. At most [`MAX_WATCHES`] watches exist on a node at once,
//! counted until each [`Watch`] is dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use herald_engine::{ChannelName, Publication};
use tokio::sync::mpsc;

use super::Hub;
use crate::error::HubError;

/// The most watches open at once on a node.
pub const MAX_WATCHES: usize = 32;

/// Publications a watcher may be behind before it is dropped.
pub const WATCH_QUEUE: usize = 256;

/// One channel's watchers: each watch's id and where its publications go.
type ChannelWatchers = Vec<(u64, mpsc::Sender<Arc<Publication>>)>;

/// The node's watchers, by channel.
#[derive(Debug, Default)]
pub(super) struct Watchers {
    by_channel: Mutex<HashMap<ChannelName, ChannelWatchers>>,
    /// Open watches; fanout looks here first and skips the lock when zero.
    open: AtomicUsize,
    next_id: AtomicU64,
}

impl Watchers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ChannelName, ChannelWatchers>> {
        self.by_channel.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `channel` has a watcher.
    pub(super) fn watching(&self, channel: &ChannelName) -> bool {
        self.open.load(Ordering::Acquire) > 0 && self.lock().contains_key(channel)
    }

    /// Hands `publication` to the channel's watchers; drops those that
    /// fell behind (their watch ends once it has read what it was given).
    /// True if that left the channel without a watcher: the node may no
    /// longer need it.
    pub(super) fn deliver(&self, channel: &ChannelName, publication: &Arc<Publication>) -> bool {
        if self.open.load(Ordering::Acquire) == 0 {
            return false;
        }
        let mut by_channel = self.lock();
        let Some(watchers) = by_channel.get_mut(channel) else { return false };
        let before = watchers.len();
        watchers.retain(|(_, sender)| sender.try_send(publication.clone()).is_ok());
        let dropped = before.saturating_sub(watchers.len());
        if dropped > 0 {
            tracing::info!(%channel, dropped, "a watcher fell behind and was dropped");
        }
        if watchers.is_empty() {
            by_channel.remove(channel);
            return true;
        }
        false
    }

    fn add(&self, channel: &ChannelName) -> Result<(u64, mpsc::Receiver<Arc<Publication>>), HubError> {
        let mut by_channel = self.lock();
        let open = self.open.load(Ordering::Acquire);
        if open >= MAX_WATCHES {
            return Err(HubError::LimitExceeded("watches open on this node"));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = mpsc::channel(WATCH_QUEUE);
        by_channel.entry(channel.clone()).or_default().push((id, sender));
        self.open.fetch_add(1, Ordering::AcqRel);
        Ok((id, receiver))
    }

    /// Removes watch `id` (which stops counting against [`MAX_WATCHES`]);
    /// true if the channel has no watcher left.
    fn remove(&self, channel: &ChannelName, id: u64) -> bool {
        let mut by_channel = self.lock();
        // A watch counts until it is dropped, even one that fell behind:
        // the publications it holds are memory too.
        self.open.fetch_sub(1, Ordering::AcqRel);
        let Some(watchers) = by_channel.get_mut(channel) else { return true };
        watchers.retain(|(watcher, _)| *watcher != id);
        if watchers.is_empty() {
            by_channel.remove(channel);
            return true;
        }
        false
    }
}

/// An open watch on one channel: its publications as they reach the node.
/// Dropping it stops watching.
#[derive(Debug)]
pub struct Watch {
    hub: Weak<Hub>,
    channel: ChannelName,
    id: u64,
    publications: mpsc::Receiver<Arc<Publication>>,
}

impl Watch {
    /// The next publication, or `None` once the watch was dropped for
    /// falling behind (or the node is gone).
    pub async fn next(&mut self) -> Option<Arc<Publication>> {
        self.publications.recv().await
    }

    /// The channel watched.
    pub fn channel(&self) -> &ChannelName {
        &self.channel
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let Some(hub) = self.hub.upgrade() else { return };
        if !hub.watchers.remove(&self.channel, self.id) {
            return;
        }
        // The last watcher left: the node may no longer need the channel.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let channel = self.channel.clone();
        runtime.spawn(async move { hub.drop_interest_if_unused(&channel).await });
    }
}

impl Hub {
    /// Starts watching `channel`'s publications on this node (see the
    /// module documentation). The channel must belong to a namespace.
    pub async fn watch(self: &Arc<Self>, channel: &ChannelName) -> Result<Watch, HubError> {
        self.rules().resolve(channel)?;
        let _interest = self.channels.lock_interest(channel).await;
        if !self.channels.contains(channel) && !self.watchers.watching(channel) {
            self.engine.broker().subscribe(channel).await?;
        }
        let (id, publications) = match self.watchers.add(channel) {
            Ok(added) => added,
            Err(error) => {
                if !self.channels.contains(channel) && !self.watchers.watching(channel) {
                    let _ = self.engine.broker().unsubscribe(channel).await;
                }
                return Err(error);
            }
        };
        Ok(Watch { hub: Arc::downgrade(self), channel: channel.clone(), id, publications })
    }

    /// Unsubscribes the node from `channel` on the engine if nothing here
    /// needs it any more.
    pub(super) async fn drop_interest_if_unused(&self, channel: &ChannelName) {
        let _interest = self.channels.lock_interest(channel).await;
        if self.channels.contains(channel) || self.watchers.watching(channel) {
            return;
        }
        if let Err(error) = self.engine.broker().unsubscribe(channel).await {
            tracing::warn!(%channel, %error, "engine unsubscribe failed; the node may receive publications it drops");
        }
    }
}
