//! The outbound queue of one connection, bounded by bytes.
//!
//! # Backpressure
//!
//! Fanout never waits for a connection: it pushes pre-encoded frames into the
//! connection's outbox and moves on. The outbox holds at most `max_bytes` of
//! frames. A push that would exceed that closes the outbox with
//! [`DisconnectReason::Slow`] and drops what was queued: the connection is
//! then closed with the protocol's "slow" code (3008 in Centrifuge), which
//! advises a reconnect, and the client recovers from its last position. A
//! slow consumer is never silently skipped.
//!
//! The connection's writer takes everything queued in one call
//! ([`Outbox::drain`]) and writes it together, so a backlog costs one write,
//! not one per frame. An empty outbox holds no allocation, and neither does
//! one holding a lone item (a publication reaching a connection that had
//! nothing queued, the common case): only a second item makes a queue.
//!
//! # Write delay
//!
//! An item pushed with [`Outbox::push_delayed`] may wait until a given
//! instant: everything pushed in between leaves in the same write. A
//! namespace's `write_delay` uses this to trade a few milliseconds of
//! latency for far fewer writes (and system calls) per message at high
//! rates. The writer is not woken by such a push; whoever pushes wakes it
//! at the due time ([`Outbox::wake`]), so one timer serves every subscriber
//! of a publication instead of one timer per connection. An item pushed
//! without a delay makes everything queued ready at once, so replies are
//! never held back by a delayed publication.
//!
//! # Written by the fanout
//!
//! Where the transport allows it, a session lends its socket while it is
//! idle, and a fanout writes a lone frame it queued itself
//! ([`Outbox::flush`]) instead of waking the session for it: see
//! `direct.rs`. On Linux a fanout's batch of such writes goes to the
//! kernel in one system call: see `uring.rs`.
//!
//! # What else the session waits on
//!
//! The session waits on its outbox, its socket and its timer together, and
//! is woken by the outbox for each delivery it writes itself. Polling the socket and the
//! timer again at each of those wake-ups would find nothing, at a cost
//! comparable to the delivery's write. So an outbox is also a waker for
//! them ([`Outbox::parked`]): the session polls its read with it, and its
//! timer is an alarm in the node's [`crate::Alarms`] that wakes it (the
//! outbox keeps the alarm's key). One that found nothing stays parked,
//! not polled again, until a wake of the outbox as a waker (which wakes
//! the session through the outbox's one waker). The wake does not say
//! whether the socket or the alarm sent it, so it unparks both: the other
//! is looked at once more.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use tokio::time::Instant;

use herald_engine::{ChannelName, DisconnectReason, StreamPosition};

use crate::connection::SubscriptionSerial;
use crate::frame::Frame;

mod direct;
#[cfg(target_os = "linux")]
pub(crate) mod uring;
pub use direct::{Direct, Sent, PREFETCHED_SOCKET_BYTES};
#[cfg(target_os = "linux")]
pub use uring::write_batches_with_io_uring;

/// What a non-frame item counts for against the byte limit.
const EVENT_COST: usize = 64;

/// One thing to send to a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// A message already encoded for this connection's protocol.
    Frame(Frame),
    /// Something the connection's front-end encodes itself.
    Event(ConnEvent),
}

impl Outgoing {
    fn cost(&self) -> usize {
        match self {
            Outgoing::Frame(frame) => frame.len(),
            // A server-side subscription's data is the API caller's, up to
            // the namespace's message size: it counts as a frame would.
            Outgoing::Event(ConnEvent::Subscribed { data: Some(data), .. }) => EVENT_COST.saturating_add(data.len()),
            Outgoing::Event(_) => EVENT_COST,
        }
    }
}

/// A change the server makes to a connection outside of any request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnEvent {
    /// The server subscribed the connection to a channel.
    Subscribed {
        /// The channel.
        channel: ChannelName,
        /// Where the subscription starts in the channel's stream, when
        /// the namespace keeps positions (the client follows it from there
        /// and names it when it comes back).
        position: Option<StreamPosition>,
        /// The subscription recovers what a reconnect missed.
        recoverable: bool,
        /// What the server sends the client with it, as JSON.
        data: Option<Bytes>,
        /// When the subscription expires, in unix seconds (the protocol's
        /// session ends it then, unless a proxy extends it).
        expire_at: Option<u64>,
        /// Names the subscription, for ending it at `expire_at` only if it
        /// is still the one.
        serial: SubscriptionSerial,
    },
    /// The server unsubscribed the connection from a channel.
    Unsubscribed {
        /// The channel.
        channel: ChannelName,
        /// Why.
        reason: UnsubscribeReason,
    },
    /// The server moved the connection's expiry, or expired it.
    Refresh {
        /// The new expiry, unix seconds; `None` for none.
        expire_at: Option<u64>,
        /// Expire now.
        expired: bool,
    },
}

/// Why the server ended a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnsubscribeReason {
    /// Through the server API.
    Server,
    /// The subscription's token expired and was not refreshed.
    Expired,
    /// The node may have missed publications; resubscribe and recover.
    InsufficientState,
}

/// Items in order: none or one without an allocation, more in a queue.
#[derive(Debug, Default)]
pub enum Queued {
    /// Nothing.
    #[default]
    Empty,
    /// A lone item.
    One(Outgoing),
    /// Two or more.
    Many(VecDeque<Outgoing>),
}

impl Queued {
    fn push_back(&mut self, item: Outgoing) {
        *self = match std::mem::take(self) {
            Queued::Empty => Queued::One(item),
            Queued::One(first) => Queued::Many(VecDeque::from([first, item])),
            Queued::Many(mut items) => {
                items.push_back(item);
                Queued::Many(items)
            }
        };
    }

    fn push_front(&mut self, item: Outgoing) {
        *self = match std::mem::take(self) {
            Queued::Empty => Queued::One(item),
            Queued::One(second) => Queued::Many(VecDeque::from([item, second])),
            Queued::Many(mut items) => {
                items.push_front(item);
                Queued::Many(items)
            }
        };
    }

    /// Keeps the items `keep` accepts, each asked once, in order; returns
    /// the cost of those it dropped.
    fn retain(&mut self, mut keep: impl FnMut(&Outgoing) -> bool) -> usize {
        let mut dropped = 0usize;
        let mut keep = |item: &Outgoing| {
            let kept = keep(item);
            if !kept {
                dropped = dropped.saturating_add(item.cost());
            }
            kept
        };
        match self {
            Queued::Empty => {}
            Queued::One(item) => {
                if !keep(item) {
                    *self = Queued::Empty;
                }
            }
            Queued::Many(items) => items.retain(|item| keep(item)),
        }
        dropped
    }

    /// How many items.
    pub fn len(&self) -> usize {
        match self {
            Queued::Empty => 0,
            Queued::One(_) => 1,
            Queued::Many(items) => items.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The items, in order, to change in place.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Outgoing> {
        let (one, many) = match self {
            Queued::Empty => (None, None),
            Queued::One(item) => (Some(item), None),
            Queued::Many(items) => (None, Some(items.iter_mut())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

impl IntoIterator for Queued {
    type Item = Outgoing;
    type IntoIter = std::iter::Chain<
        std::option::IntoIter<Outgoing>,
        std::iter::Flatten<std::option::IntoIter<VecDeque<Outgoing>>>,
    >;

    fn into_iter(self) -> Self::IntoIter {
        let (one, many) = match self {
            Queued::Empty => (None, None),
            Queued::One(item) => (Some(item), None),
            Queued::Many(items) => (None, Some(items)),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

/// The session's socket or timer woke it: both are polled again at the
/// session's next turn, to which the outbox's waker wakes it.
impl std::task::Wake for Outbox {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.unpark(Waiting::Read);
        self.unpark(Waiting::Timer);
        self.reader.wake();
    }
}

/// What a session waits on beside its outbox, which wakes the outbox as a
/// waker (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// The client's next message, from the socket.
    Read,
    /// The protocol's next deadline.
    Timer,
}

/// The result of taking what an outbox holds.
#[derive(Debug)]
pub enum Drained {
    /// Items to send, in order (possibly none).
    Items(Queued),
    /// The connection must be closed for this reason.
    Closed(DisconnectReason),
}

/// The push failed because the outbox is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the connection is closed")]
pub struct OutboxClosed;

/// When queued items must be written. `Now` sorts before every instant,
/// and costs no clock read: most pushes are immediate, and fanout makes one
/// per subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    Now,
    At(Instant),
}

/// Whether a push wakes the writer, or leaves that to its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waking {
    Now,
    ByCaller,
}

impl Due {
    fn has_come(self) -> bool {
        match self {
            Due::Now => true,
            Due::At(at) => at <= Instant::now(),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    items: Queued,
    bytes: usize,
    /// When what is queued must be written; `None` while empty.
    due: Option<Due>,
    closed: Option<DisconnectReason>,
    /// The session's socket, for [`Outbox::flush`] to write to while the
    /// session lends it (see `direct.rs`).
    direct: Option<Arc<dyn Direct>>,
}

/// A bounded, byte-accounted queue with a wake-up for its single reader.
///
/// One task reads an outbox (its connection's session): the wake-up is
/// one waker, not a list of waiters, which keeps every connection's outbox
/// and the future its session waits on small.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    reader: AtomicWaker,
    max_bytes: usize,
    /// The session's read found nothing and waits for the socket's wake.
    read_parked: AtomicBool,
    /// The session's timer is not due and waits for its own wake.
    timer_parked: AtomicBool,
    /// The key of the session's alarm in the node's [`crate::Alarms`], 0
    /// when it has none. Written only under the alarms' lock.
    alarm: AtomicU64,
    /// Where the lent socket's record is, as a hint to the processor's
    /// cache and nothing else (see `prefetch.rs`): never read through,
    /// so it may point where the socket was.
    socket_at: AtomicPtr<u8>,
}

impl Outbox {
    /// An empty outbox that holds at most `max_bytes` of frames.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            reader: AtomicWaker::new(),
            max_bytes,
            read_parked: false.into(),
            timer_parked: false.into(),
            alarm: 0.into(),
            socket_at: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// The key of the session's alarm, 0 if none is set.
    pub(crate) fn alarm(&self) -> u64 {
        self.alarm.load(Ordering::SeqCst)
    }

    /// Records the key of the session's alarm.
    pub(crate) fn set_alarm(&self, key: u64) {
        self.alarm.store(key, Ordering::SeqCst);
    }

    /// Forgets the session's alarm, returning its key.
    pub(crate) fn take_alarm(&self) -> u64 {
        self.alarm.swap(0, Ordering::SeqCst)
    }

    /// The alarm with `key` fired: the session has none until it sets
    /// another (unless it set another already).
    pub(crate) fn alarm_fired(&self, key: u64) {
        let _ = self.alarm.compare_exchange(key, 0, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Whether the session's read or timer is parked: it found nothing, and
    /// nothing has woken this outbox (as a [`std::task::Wake`]) since.
    pub fn parked(&self, what: Waiting) -> bool {
        self.parking(what).load(Ordering::SeqCst)
    }

    /// Marks `what` parked, before it is polled with this outbox as its
    /// waker: a wake during the poll unparks it again, so none is lost.
    pub fn park(&self, what: Waiting) {
        self.parking(what).store(true, Ordering::SeqCst);
    }

    /// Marks `what` as one to poll: it found something, or may now wake
    /// someone else than this outbox.
    pub fn unpark(&self, what: Waiting) {
        self.parking(what).store(false, Ordering::SeqCst);
    }

    fn parking(&self, what: Waiting) -> &AtomicBool {
        match what {
            Waiting::Read => &self.read_parked,
            Waiting::Timer => &self.timer_parked,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an item to be written now. If it would overflow the byte
    /// limit, the outbox closes as slow instead. One item always fits into an
    /// empty outbox.
    pub fn push(&self, item: Outgoing) -> Result<(), OutboxClosed> {
        self.push_due(item, Due::Now, Waking::Now).map(|_| ())
    }

    /// [`Outbox::push`] without waking the writer: the caller must call
    /// [`Outbox::flush`] (or [`Outbox::wake`]) soon after, once it has
    /// pushed to a few other outboxes too. A fanout writes or wakes its
    /// subscribers in batches, so that their writes come together rather
    /// than one by one with a park in between.
    pub fn push_unwoken(&self, item: Outgoing) -> Result<(), OutboxClosed> {
        self.push_due(item, Due::Now, Waking::ByCaller).map(|_| ())
    }

    /// Queues an item that may wait until `due` (see the module docs). The
    /// writer is not woken: when this returns `Ok(true)`, the caller must
    /// call [`Outbox::wake`] at `due`. `Ok(false)` means a wake is already
    /// due no later than that.
    pub fn push_delayed(&self, item: Outgoing, due: Instant) -> Result<bool, OutboxClosed> {
        // If what is queued is due already, whoever made it due has woken
        // the writer; else the caller wakes it at `due`.
        self.push_due(item, Due::At(due), Waking::ByCaller)
    }

    /// Tells the writer to look again (for items pushed with a delay).
    pub fn wake(&self) {
        self.reader.wake();
    }

    /// Queues `item`, to be written by `due`, and wakes the writer if
    /// `waking` says so. Returns whether this made the queue due sooner
    /// than it was.
    fn push_due(&self, item: Outgoing, due: Due, waking: Waking) -> Result<bool, OutboxClosed> {
        let mut state = self.admit(item.cost())?;
        state.items.push_back(item);
        let sooner = state.due.is_none_or(|queued| due < queued);
        if sooner {
            state.due = Some(due);
        }
        drop(state);
        if waking == Waking::Now {
            self.reader.wake();
        }
        Ok(sooner)
    }

    /// Queues an item ahead of everything queued, bypassing the limit. Only
    /// for the reply that must precede all else (the connect reply).
    pub fn push_front(&self, item: Outgoing) {
        let mut state = self.state();
        if state.closed.is_some() {
            return;
        }
        state.bytes = state.bytes.saturating_add(item.cost());
        state.items.push_front(item);
        state.due = Some(Due::Now);
        drop(state);
        self.reader.wake();
    }

    /// Queues an item ahead of everything queued, within the byte limit as
    /// [`Outbox::push`] is: a reply that must precede what the channel it
    /// answers for sent while it was being made (Pusher's presence
    /// confirmation, see `Outbox::reclaim`).
    pub fn push_ahead(&self, item: Outgoing) -> Result<(), OutboxClosed> {
        self.push_ahead_superseding(item, |_| false)
    }

    /// [`Outbox::push_ahead`], first dropping what is queued that the
    /// item makes stale: the queued items `superseded` says so of, asked
    /// once each, in order, under the same lock as the item is queued
    /// (Pusher's member list, and the joins and leaves it already tells).
    pub fn push_ahead_superseding(
        &self,
        item: Outgoing,
        mut superseded: impl FnMut(&Outgoing) -> bool,
    ) -> Result<(), OutboxClosed> {
        let mut state = self.state();
        let dropped = state.items.retain(|queued| !superseded(queued));
        state.bytes = state.bytes.saturating_sub(dropped);
        let mut state = self.admit_locked(state, item.cost())?;
        state.items.push_front(item);
        state.due = Some(Due::Now);
        drop(state);
        self.reader.wake();
        Ok(())
    }

    /// Takes the lock to queue an item of `cost` bytes and counts them;
    /// `Err` if the outbox is closed, or if the item would overflow the
    /// byte limit, which closes it as slow (one item always fits into an
    /// empty outbox).
    fn admit(&self, cost: usize) -> Result<std::sync::MutexGuard<'_, State>, OutboxClosed> {
        self.admit_locked(self.state(), cost)
    }

    /// [`Outbox::admit`], with the lock already taken.
    fn admit_locked<'a>(
        &'a self,
        mut state: std::sync::MutexGuard<'a, State>,
        cost: usize,
    ) -> Result<std::sync::MutexGuard<'a, State>, OutboxClosed> {
        if state.closed.is_some() {
            return Err(OutboxClosed);
        }
        if state.bytes > 0 && state.bytes.saturating_add(cost) > self.max_bytes {
            Self::close_locked(&mut state, DisconnectReason::Slow);
            drop(state);
            self.reader.wake();
            return Err(OutboxClosed);
        }
        state.bytes = state.bytes.saturating_add(cost);
        Ok(state)
    }

    /// Closes the outbox; the first reason given wins.
    pub fn close(&self, reason: DisconnectReason) {
        let mut state = self.state();
        if state.closed.is_none() {
            Self::close_locked(&mut state, reason);
        }
        drop(state);
        self.reader.wake();
    }

    fn close_locked(state: &mut State, reason: DisconnectReason) {
        state.closed = Some(reason);
        state.items = Queued::Empty;
        state.bytes = 0;
        state.due = None;
    }

    /// Asks the processor for the outbox (see `prefetch.rs`), a few
    /// subscribers before a fanout queues into it or a batch writes it.
    pub(crate) fn prefetch(&self) {
        crate::prefetch::prefetch(self);
    }

    /// Asks the processor for the lent socket's record, a few subscribers
    /// before a batch writes to it.
    pub(crate) fn prefetch_socket(&self) {
        let socket = self.socket_at.load(Ordering::Relaxed);
        if !socket.is_null() {
            crate::prefetch::prefetch_lines(socket, PREFETCHED_SOCKET_BYTES);
        }
    }

    /// The most bytes of frames it holds.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Whether the outbox was closed.
    pub fn is_closed(&self) -> bool {
        self.state().closed.is_some()
    }

    /// Bytes currently queued.
    pub fn queued_bytes(&self) -> usize {
        self.state().bytes
    }

    /// Whether more than half the byte limit is queued: a session then
    /// lets it drain before it answers more of the client's commands.
    pub fn past_half(&self) -> bool {
        self.state().bytes > self.max_bytes / 2
    }

    /// Waits until there is something due to drain (items or a close).
    /// Delayed items are found when their pusher wakes the outbox. Only
    /// the outbox's one reader task may wait on it.
    ///
    /// What the session takes counts against its task's budget, as a
    /// message taken from one of tokio's channels does: a session whose
    /// outbox is refilled as fast as it writes still yields to the other
    /// tasks of its thread every so often (nothing else it polls between
    /// deliveries takes from the budget: its read and timer are parked, and
    /// its writes are tried without `poll_write`).
    pub fn ready(&self) -> impl Future<Output = ()> + Send + '_ {
        poll_fn(move |cx| self.poll_ready(cx))
    }

    /// One poll of [`Outbox::ready`], for a future that waits on the
    /// outbox beside other things.
    pub fn poll_ready(&self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        std::task::ready!(self.poll_until(cx, |state| state.closed.is_some() || state.due.is_some_and(Due::has_come)));
        // Only a take is counted: the wait costs nothing.
        std::task::ready!(tokio::task::coop::poll_proceed(cx)).made_progress();
        Poll::Ready(())
    }

    /// Waits until the outbox is closed. Used to abandon a write that a
    /// client stopped reading once the backlog behind it overflows. Only
    /// the outbox's one reader task may wait on it.
    pub fn closed(&self) -> impl Future<Output = ()> + Send + '_ {
        self.wait_until(|state| state.closed.is_some())
    }

    /// Resolves once `condition` holds. The waker is registered before the
    /// state is looked at, so a change made in between wakes the reader.
    fn wait_until(&self, condition: fn(&State) -> bool) -> impl Future<Output = ()> + Send + '_ {
        poll_fn(move |cx| self.poll_until(cx, condition))
    }

    /// One poll of [`Outbox::wait_until`].
    fn poll_until(&self, cx: &mut std::task::Context<'_>, condition: fn(&State) -> bool) -> Poll<()> {
        self.reader.register(cx.waker());
        match condition(&self.state()) {
            true => Poll::Ready(()),
            false => Poll::Pending,
        }
    }

    /// Takes everything queued, leaving an empty outbox without allocation.
    pub fn drain(&self) -> Drained {
        let mut state = self.state();
        if let Some(reason) = &state.closed {
            return Drained::Closed(reason.clone());
        }
        state.bytes = 0;
        state.due = None;
        // Nothing pushed from now on is written before what this takes.
        if let Some(socket) = &state.direct {
            socket.reclaim();
        }
        Drained::Items(std::mem::take(&mut state.items))
    }
}

/// A waker that counts its wake-ups, for tests of who wakes a session.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct CountedWaker(std::sync::atomic::AtomicUsize);

#[cfg(test)]
impl CountedWaker {
    pub(crate) fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
impl std::task::Wake for CountedWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Text;
    use std::sync::Arc;

    fn frame(n: usize) -> Outgoing {
        Outgoing::Frame(Frame::Text(Text::from("x".repeat(n))))
    }

    #[test]
    fn a_server_side_subscriptions_data_counts_against_the_limit_as_a_frame_would() {
        let outbox = Outbox::new(100 * 1024);
        let channel = ChannelName::new("news").unwrap();
        let subscribed = |data: Option<Bytes>| {
            Outgoing::Event(ConnEvent::Subscribed {
                channel: channel.clone(),
                position: None,
                recoverable: false,
                data,
                expire_at: None,
                serial: Default::default(),
            })
        };
        outbox.push(subscribed(None)).unwrap();
        assert_eq!(outbox.queued_bytes(), EVENT_COST, "an event without data costs what any event does");
        outbox.push(subscribed(Some(Bytes::from(vec![b'1'; 60 * 1024])))).unwrap();
        assert_eq!(outbox.queued_bytes(), 2 * EVENT_COST + 60 * 1024);
        assert!(
            outbox.push(subscribed(Some(Bytes::from(vec![b'1'; 60 * 1024])))).is_err(),
            "a second one is over the limit"
        );
    }

    fn items(drained: Drained) -> Vec<Outgoing> {
        match drained {
            Drained::Items(items) => items.into_iter().collect(),
            Drained::Closed(reason) => panic!("outbox closed: {reason:?}"),
        }
    }

    #[test]
    fn a_drain_takes_everything_in_order() {
        let outbox = Outbox::new(1000);
        outbox.push(frame(1)).unwrap();
        outbox.push(frame(2)).unwrap();
        assert_eq!(outbox.queued_bytes(), 3);
        assert_eq!(items(outbox.drain()), vec![frame(1), frame(2)]);
        assert_eq!(outbox.queued_bytes(), 0);
        assert!(items(outbox.drain()).is_empty());
    }

    #[test]
    fn overflowing_the_byte_limit_closes_the_outbox_as_slow() {
        let outbox = Outbox::new(100);
        outbox.push(frame(60)).unwrap();
        assert_eq!(outbox.push(frame(60)), Err(OutboxClosed));
        assert!(matches!(outbox.drain(), Drained::Closed(DisconnectReason::Slow)));
        assert_eq!(outbox.push(frame(1)), Err(OutboxClosed), "a closed outbox stays closed");
    }

    #[test]
    fn one_frame_always_fits_into_an_empty_outbox() {
        let outbox = Outbox::new(10);
        outbox.push(frame(50)).unwrap();
        assert_eq!(items(outbox.drain()).len(), 1);
    }

    #[test]
    fn the_first_close_reason_wins() {
        let outbox = Outbox::new(10);
        outbox.close(DisconnectReason::Shutdown);
        outbox.close(DisconnectReason::Slow);
        assert!(matches!(outbox.drain(), Drained::Closed(DisconnectReason::Shutdown)));
    }

    #[test]
    fn a_lone_item_is_held_without_a_queue_and_a_second_makes_one_in_order() {
        let outbox = Outbox::new(1000);
        outbox.push(frame(1)).unwrap();
        assert!(matches!(outbox.drain(), Drained::Items(Queued::One(item)) if item == frame(1)));
        for n in 1..=3 {
            outbox.push(frame(n)).unwrap();
        }
        let Drained::Items(mut queued) = outbox.drain() else { panic!("closed") };
        assert!(matches!(queued, Queued::Many(_)));
        assert_eq!(queued.len(), 3);
        assert_eq!(queued.iter_mut().map(|item| item.clone()).collect::<Vec<_>>(), vec![frame(1), frame(2), frame(3)]);
        assert_eq!(queued.into_iter().collect::<Vec<_>>(), vec![frame(1), frame(2), frame(3)]);
    }

    #[test]
    fn push_front_on_an_empty_outbox_holds_the_item_alone() {
        let outbox = Outbox::new(100);
        outbox.push_front(frame(2));
        outbox.push(frame(1)).unwrap();
        outbox.push_front(frame(3));
        assert_eq!(items(outbox.drain()), vec![frame(3), frame(2), frame(1)]);
    }

    #[test]
    fn push_front_puts_the_item_before_everything_queued() {
        let outbox = Outbox::new(100);
        outbox.push(frame(1)).unwrap();
        outbox.push_front(frame(2));
        assert_eq!(items(outbox.drain()), vec![frame(2), frame(1)]);
    }

    #[test]
    fn push_ahead_puts_the_item_first_but_within_the_byte_limit() {
        let outbox = Outbox::new(100);
        outbox.push(frame(1)).unwrap();
        outbox.push_ahead(frame(2)).unwrap();
        assert_eq!(items(outbox.drain()), vec![frame(2), frame(1)]);

        outbox.push(frame(60)).unwrap();
        assert_eq!(outbox.push_ahead(frame(60)), Err(OutboxClosed));
        assert!(matches!(outbox.drain(), Drained::Closed(DisconnectReason::Slow)));
    }

    #[test]
    fn push_ahead_superseding_drops_what_the_item_makes_stale_and_gives_its_bytes_back() {
        let outbox = Outbox::new(200);
        for cost in [10, 40, 11, 40] {
            outbox.push(frame(cost)).unwrap();
        }
        let mut asked = Vec::new();
        let stale = |item: &Outgoing| {
            asked.push(item.cost());
            item.cost() == 40
        };
        outbox.push_ahead_superseding(frame(12), stale).unwrap();
        assert_eq!(asked, [10, 40, 11, 40], "each queued item asked once, in order");
        assert_eq!(outbox.queued_bytes(), 33);
        outbox.push(frame(60)).unwrap();
        assert_eq!(items(outbox.drain()), vec![frame(12), frame(10), frame(11), frame(60)]);

        outbox.push(frame(40)).unwrap();
        outbox.push_ahead_superseding(frame(5), |_| true).unwrap();
        assert_eq!(items(outbox.drain()), vec![frame(5)], "a lone item dropped too");
    }

    #[test]
    fn a_wake_of_the_outbox_as_a_waker_unparks_the_read_and_the_timer_and_wakes_the_session() {
        use std::future::Future;
        use std::task::{Context, Waker};

        let session = Arc::new(CountedWaker::default());
        let outbox = Arc::new(Outbox::new(1024));
        let mut ready = std::pin::pin!(outbox.ready());
        let waker = Waker::from(session.clone());
        assert!(ready.as_mut().poll(&mut Context::from_waker(&waker)).is_pending());
        outbox.park(Waiting::Read);
        outbox.park(Waiting::Timer);
        assert!(outbox.parked(Waiting::Read) && outbox.parked(Waiting::Timer));

        Waker::from(outbox.clone()).wake_by_ref();
        assert!(!outbox.parked(Waiting::Read), "the read is polled again");
        assert!(!outbox.parked(Waiting::Timer), "the timer is polled again");
        assert_eq!(session.count(), 1, "the session was woken");
    }

    #[test]
    fn the_read_and_the_timer_park_apart() {
        let outbox = Outbox::new(1024);
        outbox.park(Waiting::Timer);
        assert!(outbox.parked(Waiting::Timer));
        assert!(!outbox.parked(Waiting::Read), "parking the timer leaves the read to be polled");
        outbox.unpark(Waiting::Timer);
        outbox.park(Waiting::Read);
        assert!(!outbox.parked(Waiting::Timer));
        assert!(outbox.parked(Waiting::Read));
    }

    #[tokio::test]
    async fn a_session_whose_outbox_stays_full_still_yields_to_other_tasks() {
        use std::future::Future;

        let outbox = Outbox::new(1 << 20);
        let taken_in_one_turn = poll_fn(|cx| {
            let mut taken = 0usize;
            while taken < 10_000 {
                outbox.push(frame(1)).expect("the outbox has room");
                if std::pin::pin!(outbox.ready()).poll(cx).is_pending() {
                    break;
                }
                assert!(matches!(outbox.drain(), Drained::Items(_)));
                taken += 1;
            }
            Poll::Ready(taken)
        })
        .await;
        assert!(taken_in_one_turn <= 128, "{taken_in_one_turn} takes in one turn of the task: it never yields");
        assert!(taken_in_one_turn > 0);
    }

    #[tokio::test]
    async fn ready_wakes_for_a_push_made_before_waiting() {
        let outbox = Outbox::new(100);
        outbox.push(frame(1)).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), outbox.ready()).await.expect("ready resolves");
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_items_wait_for_the_wake_at_their_due_time() {
        let outbox = Arc::new(Outbox::new(100));
        let due = Instant::now() + std::time::Duration::from_millis(10);
        assert_eq!(outbox.push_delayed(frame(1), due), Ok(true), "the first delayed item needs a wake");
        assert_eq!(outbox.push_delayed(frame(2), due), Ok(false), "a wake is already due");
        let waiter = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.ready().await }
        });
        tokio::task::yield_now().await;
        outbox.wake();
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "a wake before the due time finds nothing due");
        tokio::time::sleep_until(due).await;
        outbox.wake();
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter).await.expect("ready at due").unwrap();
        assert_eq!(items(outbox.drain()), vec![frame(1), frame(2)]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_immediate_push_makes_delayed_items_ready_at_once() {
        let outbox = Arc::new(Outbox::new(100));
        outbox.push_delayed(frame(1), Instant::now() + std::time::Duration::from_secs(60)).unwrap();
        let waiter = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.ready().await }
        });
        tokio::task::yield_now().await;
        outbox.push(frame(2)).unwrap();
        tokio::time::timeout(std::time::Duration::from_millis(1), waiter).await.expect("woken at once").unwrap();
        assert_eq!(items(outbox.drain()), vec![frame(1), frame(2)]);
    }
}
