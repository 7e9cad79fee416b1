//! Fanout: a publication, join or leave the engine delivered for a
//! channel, pushed into the outboxes of the channel's local subscribers.
//! It never waits for a connection (see `outbox.rs`) and encodes once per
//! protocol: the bytes are shared by every subscriber speaking it. A
//! subscriber that takes fossil deltas gets the difference from the
//! publication it received before, computed once for all those that
//! received the same one.

use std::sync::Arc;
use std::time::Duration;

use herald_engine::{ChannelName, PresenceEvent, Publication};
use tokio::time::Instant;

use super::channels::{Channels, Next, Stale};
use crate::connection::Connection;
use crate::frame::Frame;
use crate::outbox::{Outbox, Outgoing};

/// One encoding per protocol (and audience), shared by every subscriber
/// it fits.
#[derive(Default)]
struct SharedFrames(Vec<((*const (), bool), Option<Frame>)>);

impl SharedFrames {
    fn get(&mut self, conn: &Connection, audience: bool, encode: impl FnOnce() -> Option<Frame>) -> Option<Frame> {
        let key = (Arc::as_ptr(&conn.encoder) as *const (), audience);
        if let Some((_, bytes)) = self.0.iter().find(|(k, _)| *k == key) {
            return bytes.clone();
        }
        let bytes = encode();
        self.0.push((key, bytes.clone()));
        bytes
    }
}

/// The frames of one publication for the subscribers that take deltas:
/// in full, and as the delta from each base they are at (computed once per
/// base, and encoded once per protocol and base). Subscribers that
/// received the same previous publication share everything.
#[derive(Default)]
struct DeltaFrames {
    /// The delta from each base, or `None` where it is no smaller than the
    /// data itself (the publication then goes in full).
    diffs: Vec<(*const Publication, Option<Vec<u8>>)>,
    /// By protocol and base; the base is null for the publication in full.
    frames: Vec<((*const (), *const Publication), Frame)>,
}

impl DeltaFrames {
    fn get(
        &mut self,
        conn: &Connection,
        channel: &ChannelName,
        publication: &Publication,
        base: Option<&Arc<Publication>>,
    ) -> Frame {
        let key = base.map_or(std::ptr::null(), Arc::as_ptr);
        if let Some(base) = base.filter(|_| !self.diffs.iter().any(|(known, _)| *known == key)) {
            let diff = crate::fossil::delta(&base.data, &publication.data);
            self.diffs.push((key, (diff.len() < publication.data.len()).then_some(diff)));
        }
        let diff = self.diffs.iter().find(|(known, _)| *known == key).and_then(|(_, diff)| diff.as_deref());
        // Sent in full, whatever the base: one frame per protocol.
        let base_key = if diff.is_some() { key } else { std::ptr::null() };
        let frame_key = (Arc::as_ptr(&conn.encoder) as *const (), base_key);
        if let Some((_, frame)) = self.frames.iter().find(|(known, _)| *known == frame_key) {
            return frame.clone();
        }
        let frame = conn.encoder.encode_delta_publication(channel, publication, diff);
        self.frames.push((frame_key, frame.clone()));
        frame
    }
}

/// A fanout writes to its subscribers (or wakes their sessions: see
/// [`Outbox::flush`]) in batches of this many. A full batch is handed to a
/// task of its own, which any worker thread may take: a large fanout's
/// writes are shared by the node's cores, each batch's made in a burst,
/// and its last batch is written in place (see [`Flush`]). A fanout no
/// larger than one batch (a chat room) is handed to a task whole, so the
/// task that delivers publications (for Redis or NATS, one per
/// subscription to the backplane) does not write every small channel's
/// frames itself.
pub(crate) const FLUSH_IN_BATCHES_OF: usize = 64;

/// Outboxes queued for and not flushed yet.
#[derive(Default)]
struct FlushBatches {
    batch: Vec<Arc<Outbox>>,
    /// Where batches run; `None` outside a runtime (never in the server),
    /// where every batch is flushed in place.
    runtime: Option<tokio::runtime::Handle>,
    /// A full batch was handed over.
    handed_over: bool,
}

impl FlushBatches {
    fn for_subscribers(subscribers: usize) -> Self {
        let runtime = tokio::runtime::Handle::try_current().ok();
        Self { batch: Vec::with_capacity(subscribers.min(FLUSH_IN_BATCHES_OF)), runtime, handed_over: false }
    }

    fn add(&mut self, outbox: &Arc<Outbox>) {
        self.batch.push(outbox.clone());
        if self.batch.len() >= FLUSH_IN_BATCHES_OF {
            let full = std::mem::replace(&mut self.batch, Vec::with_capacity(FLUSH_IN_BATCHES_OF));
            self.hand_over(full);
            self.handed_over = true;
        }
    }

    fn hand_over(&self, batch: Vec<Arc<Outbox>>) {
        match &self.runtime {
            Some(runtime) => drop(runtime.spawn(async move { flush(batch) })),
            None => flush(batch),
        }
    }
}

/// The last batch of a fanout, flushed when this is dropped: its caller
/// lets the channel go and measures how long queueing took first, and it
/// is flushed even if the caller forgets to. After full batches it is
/// written in place (a task of its own cost the tail at a thousand
/// subscribers a publication: BENCHMARKS.md); alone, it is handed over.
#[must_use = "the last batch is flushed when this is dropped"]
pub(super) struct Flush(FlushBatches);

impl Drop for Flush {
    fn drop(&mut self) {
        let last = std::mem::take(&mut self.0.batch);
        match (last.is_empty(), self.0.handed_over) {
            (true, _) => {}
            (false, true) => flush(last),
            (false, false) => self.0.hand_over(last),
        }
    }
}

/// Writes what a batch queued (see [`Outbox::flush`]); on Linux, the
/// direct writes in one system call where io_uring allows (`uring.rs`).
fn flush(outboxes: Vec<Arc<Outbox>>) {
    #[cfg(target_os = "linux")]
    if crate::outbox::uring::flush(&outboxes) {
        return;
    }
    outboxes.iter().for_each(|outbox| outbox.flush());
}

/// Wakes `outboxes` at `due`: one timer for every subscriber a delayed
/// publication reached.
fn wake_at(runtime: &tokio::runtime::Handle, due: Instant, outboxes: Vec<Arc<Outbox>>) {
    runtime.spawn(async move {
        tokio::time::sleep_until(due).await;
        outboxes.iter().for_each(|outbox| outbox.wake());
    });
}

impl Channels {
    /// Delivers one publication to every local subscriber of its channel,
    /// written (or their sessions woken) in batches of [`FLUSH_IN_BATCHES_OF`].
    /// With a `write_delay`, it may wait that long in each outbox so that
    /// what follows leaves in the same write. Returns the positioned
    /// subscribers it found stale (see `channels::Followed`): the hub ends their
    /// subscriptions so that they recover; how many it queued it for; and
    /// the last batch, written when dropped.
    pub(super) fn deliver(
        &self,
        channel: &ChannelName,
        publication: &Arc<Publication>,
        write_delay: Duration,
    ) -> (Vec<Stale>, usize, Flush) {
        let mut stale = Vec::new();
        let mut queued_for = 0usize;
        let shard = self.read(channel);
        let Some(subscribers) = shard.get(channel) else {
            return (stale, queued_for, Flush(FlushBatches::default()));
        };
        let mut flush_now = FlushBatches::for_subscribers(subscribers.len());
        // Outside a runtime (never in the server) nothing could wait: no delay.
        let delayed = match write_delay.is_zero() {
            true => None,
            false => tokio::runtime::Handle::try_current()
                .ok()
                .and_then(|runtime| Some((runtime, Instant::now().checked_add(write_delay)?))),
        };
        let mut to_wake = Vec::new();
        let mut frames = SharedFrames::default();
        let mut deltas = DeltaFrames::default();
        // Their connection and subscription asked for a few subscribers
        // ahead, their outbox (whose address is in the connection) nearer.
        let each =
            crate::prefetch::ahead(subscribers.values(), |far| far.prefetch(), |near| near.conn.outbox.prefetch());
        for subscriber in each {
            if let Some(buffer) = subscriber.recovering() {
                // Merged with history once the recovery read is done.
                let max_bytes = subscriber.conn.outbox.max_bytes();
                if buffer.lock().unwrap_or_else(|e| e.into_inner()).overflows(publication, max_bytes) {
                    subscriber.conn.outbox.close(herald_engine::DisconnectReason::Slow);
                }
                continue;
            }
            let conn = &subscriber.conn;
            match subscriber.followed().map(|f| f.next(publication)) {
                None | Some(Next::Send) => {}
                Some(Next::Skip) => continue,
                Some(Next::Stale) => {
                    stale.push(subscriber.stale_in(channel));
                    continue;
                }
            }
            if publication.exclude.as_ref() == Some(&conn.client) {
                continue;
            }
            let frame = match subscriber.delta() {
                Some(base) => {
                    let base = base.advance(publication);
                    deltas.get(conn, channel, publication, base.as_ref())
                }
                None => {
                    let encode = || Some(conn.encoder.encode_publication(channel, publication));
                    let Some(frame) = frames.get(conn, false, encode) else { continue };
                    frame
                }
            };
            let queued = match &delayed {
                None => {
                    let queued = conn.outbox.push_unwoken(Outgoing::Frame(frame));
                    if queued.is_ok() {
                        flush_now.add(&conn.outbox);
                    }
                    queued.map(|_| false)
                }
                Some((_, due)) => conn.outbox.push_delayed(Outgoing::Frame(frame), *due),
            };
            if queued.is_ok() {
                queued_for = queued_for.saturating_add(1);
            }
            match queued {
                Ok(true) => to_wake.push(conn.outbox.clone()),
                Ok(false) => {}
                Err(_) => {
                    tracing::debug!(client = %conn.client, %channel, "publication not queued: connection closing")
                }
            }
        }
        if let Some((runtime, due)) = delayed.filter(|_| !to_wake.is_empty()) {
            wake_at(&runtime, due, to_wake);
        }
        (stale, queued_for, Flush(flush_now))
    }

    /// Delivers a join or leave to the local subscribers that hear them:
    /// those that asked, or all when `to_everyone`.
    pub(super) fn deliver_presence(&self, channel: &ChannelName, event: &PresenceEvent, to_everyone: bool) {
        let shard = self.read(channel);
        let Some(subscribers) = shard.get(channel) else { return };
        let mut frames = SharedFrames::default();
        for subscriber in subscribers.values() {
            if subscriber.recovering().is_some() || !(to_everyone || subscriber.join_leave) {
                continue;
            }
            let conn = &subscriber.conn;
            let own = subscriber.is_user(&event.info().user);
            if let Some(frame) = frames.get(conn, own, || conn.encoder.encode_presence(channel, event, own)) {
                let _ = conn.outbox.push(Outgoing::Frame(frame));
            }
        }
    }
}
