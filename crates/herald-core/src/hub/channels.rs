//! Which local connections are subscribed to each channel, and the
//! per-channel interest locks (see `interest.rs`) that serialize the first
//! subscription and the last unsubscription with the node's own engine
//! subscription.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLockReadGuard, RwLockWriteGuard};

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use herald_engine::{ChannelName, ClientId, Epoch, Publication, StreamPosition, UserId};

use super::interest::{Interest, InterestLocks};
use crate::connection::{Connection, Subscription, SubscriptionSerial};
use crate::shard::ShardedMap;

/// A connection's place in a channel. Kept small: a channel's table holds
/// one per subscriber (a 19,000-subscriber channel's table is some 32,768
/// slots), and most subscribers need none of what [`More`] holds.
#[derive(Debug)]
pub(super) struct Subscriber {
    pub(super) conn: Arc<Connection>,
    pub(super) join_leave: bool,
    /// Tracks stream positions: must recover when the engine was interrupted.
    pub(super) positioned: bool,
    /// Which of the connection's subscriptions to the channel this is
    /// (it fits in the padding the two flags leave).
    pub(super) serial: SubscriptionSerial,
    more: Option<Box<More>>,
}

/// A subscription that missed publications, to be ended so that its
/// client recovers: named by its serial, so that one the connection has
/// made since it was found is not ended in its place.
#[derive(Debug)]
pub(super) struct Stale {
    pub(super) conn: Arc<Connection>,
    pub(super) channel: ChannelName,
    pub(super) serial: SubscriptionSerial,
}

/// What only some subscribers need. A positioned subscriber (recovery
/// on), and one sent its channel's latest publication (a Pusher cache
/// channel's), holds one for its subscription's life, so the box holds
/// little more than its stream: what it needs only while recovering, and
/// what fewer subscribers still need, are boxed again.
#[derive(Debug, Default)]
struct More {
    /// For a positioned subscriber once live, or one sent the latest
    /// publication: the stream it follows and the last offset it was sent
    /// (see [`Followed`]).
    followed: Option<Followed>,
    /// Present while the subscription recovers: publications wait here.
    recovering: Option<Waiting>,
    rare: Option<Box<Rare>>,
}

/// Where a recovering subscriber's publications wait while its history
/// is read. The subscribe that reads it keeps a handle to the same buffer:
/// no lock is held during the read, so when it comes back for the seam it
/// knows its own subscriber by it (the subscription may have ended, and
/// another begun, meanwhile).
pub(super) type Waiting = Arc<Mutex<Buffered>>;

/// The publications a recovering subscriber waits with, and their bytes:
/// at most what its connection's outbox holds, which they are queued into
/// at the seam (more would close it as slow there; see [`Buffered::overflows`]).
#[derive(Debug, Default)]
pub(super) struct Buffered {
    publications: Vec<Arc<Publication>>,
    bytes: usize,
}

impl Buffered {
    /// Adds `publication`; true when it takes the buffer's data past
    /// `max_bytes`: the connection could not take them all at the seam,
    /// and is to be closed as slow at once rather than after the buffer
    /// grew with every publication of the read. The buffer is emptied
    /// then, and takes nothing more (nor says so again).
    pub(super) fn overflows(&mut self, publication: &Arc<Publication>, max_bytes: usize) -> bool {
        // Counted as no more than its frame will take: its data, and less
        // than any protocol's envelope around it.
        const ENVELOPE: usize = 32;
        if self.bytes > max_bytes {
            return false;
        }
        self.bytes = self.bytes.saturating_add(publication.data.len().saturating_add(ENVELOPE));
        if self.bytes > max_bytes {
            self.publications = Vec::new();
            return true;
        }
        self.publications.push(publication.clone());
        false
    }
}

/// What a subscriber needs that few do.
#[derive(Debug, Default)]
struct Rare {
    /// Who the connection is in this channel, when not its connection's user.
    user: Option<UserId>,
    /// For a subscriber that takes fossil deltas: the base of its next one.
    delta: Option<DeltaBase>,
}

impl Subscriber {
    /// The subscriber `subscription` of `conn` makes, named by `serial`
    /// (its `user`, when someone else in this channel than its
    /// connection's user, is kept). One that `reads` history first (a
    /// positioned subscriber, or one that asked for the channel's latest
    /// publication) starts out recovering: publications wait for the read.
    pub(super) fn new(
        conn: Arc<Connection>,
        serial: SubscriptionSerial,
        subscription: &Subscription,
        (positioned, reads): (bool, bool),
        delta: bool,
    ) -> Self {
        let join_leave = subscription.join_leave;
        let user = subscription.user.clone().filter(|user| !conn.is_user(user));
        let rare = (user.is_some() || delta).then(|| Box::new(Rare { user, delta: delta.then(DeltaBase::default) }));
        let more = (rare.is_some() || reads)
            .then(|| Box::new(More { followed: None, recovering: reads.then(Waiting::default), rare }));
        Self { conn, join_leave, positioned, serial, more }
    }

    /// This subscription, as one to end because it is stale.
    pub(super) fn stale_in(&self, channel: &ChannelName) -> Stale {
        Stale { conn: self.conn.clone(), channel: channel.clone(), serial: self.serial }
    }

    /// Asks the processor for what a fanout reads of this subscriber
    /// first (see `prefetch.rs`): its connection's encoder and outbox, and
    /// the box of one that follows its stream.
    pub(super) fn prefetch(&self) {
        crate::prefetch::prefetch(&self.conn.encoder);
        crate::prefetch::prefetch(&self.conn.outbox);
        if let Some(more) = &self.more {
            crate::prefetch::prefetch(&more.followed);
        }
    }

    /// The buffer of a subscriber that recovers.
    pub(super) fn recovering(&self) -> Option<&Mutex<Buffered>> {
        self.more.as_ref()?.recovering.as_deref()
    }

    /// A handle to the buffer of a subscriber that recovers.
    pub(super) fn waiting(&self) -> Option<Waiting> {
        self.more.as_ref()?.recovering.clone()
    }

    /// Whether the subscriber still recovers into `waiting`: it is the
    /// subscription that buffer was made for, and it is not live yet.
    pub(super) fn waits_in(&self, waiting: &Waiting) -> bool {
        self.more.as_ref().and_then(|more| more.recovering.as_ref()).is_some_and(|own| Arc::ptr_eq(own, waiting))
    }

    /// The stream a live positioned subscriber follows (strictly), or one
    /// sent its channel's latest publication (loosely).
    pub(super) fn followed(&self) -> Option<&Followed> {
        self.more.as_ref()?.followed.as_ref()
    }

    /// The base of a delta subscriber's next delta.
    pub(super) fn delta(&self) -> Option<&DeltaBase> {
        self.more.as_ref()?.rare.as_ref()?.delta.as_ref()
    }

    /// Whether the subscriber is `user` in this channel.
    pub(super) fn is_user(&self, user: &UserId) -> bool {
        match self.more.as_ref().and_then(|more| more.rare.as_ref()).and_then(|rare| rare.user.as_ref()) {
            Some(own) => own == user,
            None => self.conn.is_user(user),
        }
    }

    /// Switches a recovering subscriber to live delivery, following its
    /// stream as `followed` says when it was read; returns what it
    /// buffered meanwhile.
    pub(super) fn go_live(&mut self, followed: Option<Followed>) -> Vec<Arc<Publication>> {
        let Some(more) = self.more.as_mut() else { return Vec::new() };
        if followed.is_some() {
            more.followed = followed;
        }
        match more.recovering.take() {
            Some(buffer) => std::mem::take(&mut buffer.lock().unwrap_or_else(|e| e.into_inner()).publications),
            None => Vec::new(),
        }
    }
}

/// Puts the publications of the stream `epoch` names among `buffered` in
/// offset order, in the places they hold (the others stay where they are).
/// An engine may hand a node two publications of a stream swapped before
/// its reader knows where the stream is (see `herald-nats`'s `reorder`);
/// a recovering subscriber's buffer then holds them swapped, and taken in
/// that order they would look like a gap.
pub(super) fn in_stream_order(buffered: &mut [Arc<Publication>], epoch: &Epoch) {
    let in_stream = |publication: &&Arc<Publication>| publication.offset.get() > 0 && publication.epoch == *epoch;
    let offsets = buffered.iter().filter(in_stream).map(|publication| publication.offset.get());
    if offsets.clone().zip(offsets.skip(1)).all(|(before, after)| before <= after) {
        return;
    }
    let slots: Vec<usize> = (0..buffered.len()).filter(|&i| buffered.get(i).is_some_and(|p| in_stream(&p))).collect();
    let mut stream: Vec<Arc<Publication>> = slots.iter().filter_map(|&i| buffered.get(i).cloned()).collect();
    stream.sort_by_key(|publication| publication.offset.get());
    for (slot, publication) in slots.into_iter().zip(stream) {
        if let Some(place) = buffered.get_mut(slot) {
            *place = publication;
        }
    }
}

/// The publication a delta subscriber last received in full or as a delta:
/// the next one goes to it as the difference from this one. Subscribers
/// that received the same publication share one delta (see `fanout.rs`).
/// None yet (just subscribed or recovered): the next one goes in full.
#[derive(Debug, Default)]
pub(super) struct DeltaBase(Mutex<Option<Arc<Publication>>>);

impl DeltaBase {
    /// Takes note that `publication` is being sent; returns the base it
    /// is to be sent against.
    pub(super) fn advance(&self, publication: &Arc<Publication>) -> Option<Arc<Publication>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).replace(publication.clone())
    }
}

/// Where a positioned subscriber is in its channel's stream. Fanout sends
/// it only the next offset of that stream: one already sent (a publication
/// that reached the node after the history read that included it) is
/// skipped, and a gap or another epoch means this node missed publications
/// (its engine connection broke, or the stream was lost and started again).
/// Then the subscriber is *stale*: it is sent nothing more, and the hub ends
/// the subscription with "insufficient state" so that its client recovers
/// from history or learns it cannot. A subscriber never sees a hole.
///
/// A subscriber that asked only for its channel's latest publication
/// follows its stream loosely ([`Followed::above`]): it is sent nothing at
/// or below the newest offset it was sent or the read found (a publication
/// the read saw may reach the node after the subscriber went live, and an
/// engine may hand one over late), and it is promised nothing of gaps.
#[derive(Debug)]
pub(super) struct Followed {
    epoch: Epoch,
    sent: AtomicU64,
    stale: AtomicBool,
    /// Gaps and other epochs make it stale (a positioned subscriber's).
    strict: bool,
}

/// What to do with a publication for a subscriber that follows its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    /// The next one of its stream: send it.
    Send,
    /// Sent already, or the subscriber is stale: skip it.
    Skip,
    /// A gap, or another stream: the subscriber just became stale.
    Stale,
}

impl Followed {
    /// A positioned subscriber's, at the position its reply carried.
    pub(super) fn at(position: &StreamPosition) -> Self {
        Self {
            epoch: position.epoch.clone(),
            sent: AtomicU64::new(position.offset.get()),
            stale: AtomicBool::new(false),
            strict: true,
        }
    }

    /// A loose one, for a subscriber sent its channel's publication at
    /// `position` (the latest one a read found).
    pub(super) fn above(position: &StreamPosition) -> Self {
        Self { strict: false, ..Self::at(position) }
    }

    /// Decides on `publication`, and moves on past it when it is sent.
    /// Fanout calls this for one channel at a time, in the stream's order.
    pub(super) fn next(&self, publication: &Publication) -> Next {
        if self.stale.load(Ordering::Relaxed) {
            return Next::Skip;
        }
        let offset = publication.offset.get();
        if offset == 0 {
            // Published without history: not part of the stream.
            return Next::Send;
        }
        let sent = self.sent.load(Ordering::Relaxed);
        if publication.epoch == self.epoch && offset <= sent {
            return Next::Skip;
        }
        if !self.strict {
            if publication.epoch == self.epoch {
                self.sent.store(offset, Ordering::Relaxed);
            }
            return Next::Send;
        }
        if publication.epoch == self.epoch && Some(offset) == sent.checked_add(1) {
            self.sent.store(offset, Ordering::Relaxed);
            return Next::Send;
        }
        match self.stale.swap(true, Ordering::Relaxed) {
            true => Next::Skip,
            false => Next::Stale,
        }
    }

    /// Whether the subscriber missed publications, seen from the stream's
    /// position `now` and the one read a check `earlier`: it follows
    /// another epoch, or it was not sent what the stream already held
    /// then. Marks it stale if so (and returns false if it was already, or
    /// if it follows loosely).
    pub(super) fn fell_behind(&self, now: &StreamPosition, earlier: Option<&StreamPosition>) -> bool {
        if !self.strict {
            return false;
        }
        let sent = self.sent.load(Ordering::Relaxed);
        let behind = now.epoch != self.epoch || earlier.is_some_and(|e| e.epoch == self.epoch && sent < e.offset.get());
        behind && !self.stale.swap(true, Ordering::Relaxed)
    }
}

/// One channel's local subscribers, by client.
pub(super) type Subscribers = HashMap<ClientId, Subscriber>;

/// What removing a subscriber left.
#[derive(Debug, Clone, Copy)]
pub(super) struct Removed {
    /// How many subscribers the channel has left here.
    pub(super) left: usize,
    /// Whether the subscriber had gone live (and its join been announced).
    pub(super) joined: bool,
}

/// Every channel with a local subscriber.
#[derive(Debug)]
pub(super) struct Channels {
    map: ShardedMap<ChannelName, Subscribers>,
    interest_locks: InterestLocks,
    /// The last [`SubscriptionSerial`] given out.
    serials: AtomicU32,
}

impl Channels {
    pub(super) fn new() -> Self {
        Self { map: ShardedMap::new(), interest_locks: InterestLocks::new(), serials: AtomicU32::new(0) }
    }

    /// Waits for the lock that serializes changes of the node's interest
    /// in `channel`, and holds it until the result is dropped.
    pub(super) async fn lock_interest(&self, channel: &ChannelName) -> Interest<'_> {
        self.interest_locks.lock(channel).await
    }

    /// How many channels' interest locks are held or awaited.
    #[cfg(test)]
    pub(super) fn interest_locks_in_use(&self) -> usize {
        self.interest_locks.in_use()
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

    /// A serial for a new subscription.
    pub(super) fn next_serial(&self) -> SubscriptionSerial {
        SubscriptionSerial(self.serials.fetch_add(1, Ordering::Relaxed).wrapping_add(1))
    }

    /// Which subscription `client` has to `channel`, if any.
    pub(super) fn serial_of(&self, channel: &ChannelName, client: &ClientId) -> Option<SubscriptionSerial> {
        self.read(channel).get(channel).and_then(|s| s.get(client)).map(|s| s.serial)
    }

    /// Adds the subscriber; returns the name as the table holds it and how
    /// many subscribers the channel now has here.
    pub(super) fn add(
        &self,
        channel: &ChannelName,
        subscriber: Subscriber,
        added: impl FnOnce(),
    ) -> (ChannelName, usize) {
        let mut shard = self.write(channel);
        let entry = shard.entry(channel.clone());
        // The table's own copy of the name (the one it keeps, or is about
        // to), shared by every subscriber's connection instead of one each.
        let name = entry.key().clone();
        let subscribers = entry.or_default();
        subscribers.insert(subscriber.conn.client.clone(), subscriber);
        // Under the lock fanout reads under: nothing is delivered to the
        // subscriber before this.
        added();
        (name, subscribers.len())
    }

    /// Whether `client`'s subscriber to `channel` still recovers into
    /// `waiting` (see [`Waiting`]).
    pub(super) fn waits_in(&self, channel: &ChannelName, client: &ClientId, waiting: &Waiting) -> bool {
        self.read(channel).get(channel).and_then(|s| s.get(client)).is_some_and(|s| s.waits_in(waiting))
    }

    /// Removes `client`'s subscription, dropping the channel when it was
    /// the last; `None` if the channel had no subscriber.
    pub(super) fn remove(&self, channel: &ChannelName, client: &ClientId) -> Option<Removed> {
        let mut shard = self.write(channel);
        let subscribers = shard.get_mut(channel)?;
        let removed = subscribers.remove(client);
        let left = subscribers.len();
        if left == 0 {
            shard.remove(channel);
        }
        // One still recovering was never live, so never announced.
        let joined = removed.is_some_and(|subscriber| subscriber.recovering().is_none());
        Some(Removed { left, joined })
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

    /// Visits every subscription's connection.
    pub(super) fn for_each_subscriber(&self, mut visit: impl FnMut(&Connection)) {
        self.map.for_each_shard(|s| s.values().flat_map(HashMap::values).for_each(|sub| visit(&sub.conn)));
    }

    /// Channels with a positioned subscriber that is live.
    pub(super) fn followed(&self) -> Vec<ChannelName> {
        let mut out = Vec::new();
        self.map.for_each_shard(|shard| {
            for (channel, subscribers) in shard {
                if subscribers.values().any(|s| s.positioned && s.followed().is_some()) {
                    out.push(channel.clone());
                }
            }
        });
        out
    }

    /// The live positioned subscribers of `channel` that missed
    /// publications, seen from its stream's position `now` and `earlier`
    /// (see `Followed::fell_behind`); each is marked stale.
    pub(super) fn fell_behind(
        &self,
        channel: &ChannelName,
        now: &StreamPosition,
        earlier: Option<&StreamPosition>,
    ) -> Vec<Stale> {
        let shard = self.read(channel);
        let Some(subscribers) = shard.get(channel) else { return Vec::new() };
        subscribers
            .values()
            .filter(|s| s.followed().is_some_and(|f| f.fell_behind(now, earlier)))
            .map(|s| s.stale_in(channel))
            .collect()
    }

    /// Every positioned subscription.
    pub(super) fn positioned(&self) -> Vec<Stale> {
        let mut out = Vec::new();
        self.map.for_each_shard(|shard| {
            for (channel, subscribers) in shard {
                out.extend(subscribers.values().filter(|s| s.positioned).map(|s| s.stale_in(channel)));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A channel's table holds a slot per subscriber and more slots spare:
    /// a few bytes more here are tens more per idle connection (the
    /// idle-memory figure in BENCHMARKS.md).
    #[test]
    fn a_subscribers_slot_stays_within_its_budget() {
        assert!(std::mem::size_of::<(ClientId, Subscriber)>() <= 40);
    }

    fn position(offset: u64, epoch: &str) -> StreamPosition {
        StreamPosition { offset: herald_engine::Offset::new(offset), epoch: Epoch::new(epoch) }
    }

    fn publication(offset: u64, epoch: &str) -> Publication {
        let mut publication = Publication::from_data(bytes::Bytes::from_static(b"1"));
        (publication.offset, publication.epoch) = (herald_engine::Offset::new(offset), Epoch::new(epoch));
        publication
    }

    /// A subscriber sent a channel's latest publication at offset 5.
    #[test]
    fn a_loose_follower_is_sent_only_what_is_newer_than_what_it_was_sent_and_never_goes_stale() {
        let followed = Followed::above(&position(5, "e"));
        let decide = |offset: u64, epoch: &str| followed.next(&publication(offset, epoch));
        assert_eq!(decide(5, "e"), Next::Skip, "the read saw it; it reached the node later");
        assert_eq!(decide(7, "e"), Next::Send, "a gap is no concern of a cache channel's");
        assert_eq!(decide(6, "e"), Next::Skip, "older than one it was sent");
        assert_eq!(decide(8, "e"), Next::Send);
        assert_eq!(decide(0, "e"), Next::Send, "published without history");
        assert_eq!(decide(1, "other"), Next::Send, "another stream: nothing to compare it with");
        assert!(!followed.fell_behind(&position(20, "e"), Some(&position(19, "e"))), "no position checks");

        let strict = Followed::at(&position(5, "e"));
        assert_eq!(strict.next(&publication(7, "e")), Next::Stale, "a positioned subscriber's gap");
    }

    /// Every positioned subscriber holds its `More` for its subscription's
    /// life: its stream, and two pointers.
    #[test]
    fn a_positioned_subscribers_box_holds_its_stream_and_little_more() {
        assert!(std::mem::size_of::<More>() <= std::mem::size_of::<Followed>() + 16);
    }
}
