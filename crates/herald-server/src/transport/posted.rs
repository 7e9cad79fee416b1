//! The commands posted for an emulated stream's session (`/emulation`),
//! waiting for the session to take them.
//!
//! Every bidirectional HTTP-streaming or SSE session has one inbox for its
//! whole life, so an idle one must cost little: the queue holds no
//! allocation while it is empty (a tokio channel allocates a block of 32
//! slots up front, over a kilobyte per connection), and the inbox is also
//! the session's entry in the node's table (`centrifuge::emulation`): the
//! table is a set of inboxes found by the key each keeps, and the
//! session's end of the inbox takes it out of the table when dropped, so
//! the session itself holds nothing for its listing. At most [`CAPACITY`]
//! batches wait; a poster then waits for room, up to its deadline, and is
//! told the session is busy if none comes. Room is not handed to posters
//! in the order they came (a tokio channel did that): a poster arriving
//! as room is made may take it before one that was waiting, which then
//! waits on, at most until its deadline. Posts on separate HTTP requests
//! have no order between them anyway.

use std::borrow::Borrow;
use std::collections::VecDeque;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;

use crate::centrifuge::emulation::Emulation;

/// Batches of commands one session may have waiting before a poster waits.
pub(crate) const CAPACITY: usize = 16;

/// What posters name an inbox by: 128 random bits, as two words (a `u128`
/// would align every inbox to 16 bytes and make it larger). Its text is
/// the 32 lower-case hex digits of the number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Key([u64; 2]);

impl From<u128> for Key {
    fn from(number: u128) -> Self {
        // Splits the number into its high and low words; nothing is lost.
        Key([(number >> 64) as u64, number as u64])
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [high, low] = self.0;
        write!(f, "{high:016x}{low:016x}")
    }
}

/// A new inbox for an emulated session, listed in `table` under `key`
/// until the session's end is dropped: the posters' end and the
/// session's. `protobuf` says what the session speaks (its relayed
/// commands cross the engine as base64).
pub(crate) fn inbox(table: Arc<Emulation>, key: Key, protobuf: bool) -> (Poster, Posted) {
    let state = Mutex::new(State { protobuf, ..State::default() });
    let shared = Arc::new(Shared { key, table, state, room: Notify::new() });
    (Poster(shared.clone()), Posted(shared))
}

/// One inbox. The table holds it (as a [`Poster`]) by its key, so it
/// keeps the key itself, and an idle one holds no allocation besides.
struct Shared {
    key: Key,
    table: Arc<Emulation>,
    state: Mutex<State>,
    /// Posters waiting for room, or to learn that the session ended.
    room: Notify,
}

#[derive(Debug, Default)]
struct State {
    /// Unallocated while empty.
    queue: VecDeque<Bytes>,
    /// The session, waiting for a batch.
    session: Option<Waker>,
    /// The session's end is gone: nothing more will be taken.
    ended: bool,
    /// Whether the session speaks Protobuf. (Here, in the state's
    /// padding, rather than beside it: a flag there would make every
    /// inbox's allocation a 16-byte step larger.)
    protobuf: bool,
}

/// The key alone: the table, which lists every inbox, is left out.
impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbox").field("key", &self.key).finish_non_exhaustive()
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Where posted batches go; clones post into the same inbox. The node's
/// table of emulated sessions holds one per session, found by its key.
#[derive(Debug, Clone)]
pub(crate) struct Poster(Arc<Shared>);

impl PartialEq for Poster {
    fn eq(&self, other: &Self) -> bool {
        self.0.key == other.0.key
    }
}

impl Eq for Poster {}

/// Hashed as its key, so that the table finds it by the key alone.
impl Hash for Poster {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.key.hash(state);
    }
}

impl Borrow<Key> for Poster {
    fn borrow(&self) -> &Key {
        &self.0.key
    }
}

/// The session's end: batches in the order they were posted.
#[derive(Debug)]
pub(crate) struct Posted(Arc<Shared>);

/// Why a batch was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotTaken {
    /// The session has ended.
    Ended,
    /// The session had no room for it within the wait.
    Busy,
}

impl Poster {
    /// Whether the session speaks Protobuf.
    pub(crate) fn protobuf(&self) -> bool {
        self.0.state().protobuf
    }

    /// Queues `batch` if there is room now.
    pub(crate) fn try_post(&self, batch: Bytes) -> Result<(), NotTaken> {
        let mut state = self.0.state();
        if state.ended {
            return Err(NotTaken::Ended);
        }
        if state.queue.len() >= CAPACITY {
            return Err(NotTaken::Busy);
        }
        state.queue.push_back(batch);
        let session = state.session.take();
        drop(state);
        if let Some(session) = session {
            session.wake();
        }
        Ok(())
    }

    /// Queues `batch`, waiting up to `wait` for room.
    pub(crate) async fn post(&self, batch: Bytes, wait: Duration) -> Result<(), NotTaken> {
        let deadline = crate::driver::after(tokio::time::Instant::now(), wait);
        loop {
            // Registered before looking, so that room made after the look
            // is not missed.
            let room = self.0.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.try_post(batch.clone()) {
                Err(NotTaken::Busy) => {}
                done => return done,
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                return Err(NotTaken::Busy);
            }
        }
    }
}

impl Posted {
    /// The next batch, if one is waiting; else the session is woken when
    /// one is posted.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Bytes> {
        let mut state = self.0.state();
        let Some(batch) = state.queue.pop_front() else {
            if !state.session.as_ref().is_some_and(|waker| waker.will_wake(cx.waker())) {
                state.session = Some(cx.waker().clone());
            }
            return Poll::Pending;
        };
        if state.queue.is_empty() {
            // Give the queue's memory back: most of a session's life
            // nothing waits in it.
            state.queue = VecDeque::new();
        }
        drop(state);
        self.0.room.notify_one();
        Poll::Ready(batch)
    }

    /// The next batch; waits until one is posted.
    #[cfg(test)]
    pub(crate) async fn recv(&mut self) -> Bytes {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }
}

/// The session's end gone, the inbox takes nothing more, lets its waiting
/// posters go, and leaves the table.
impl Drop for Posted {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.ended = true;
        state.queue = VecDeque::new();
        state.session = None;
        drop(state);
        self.0.room.notify_waiters();
        self.0.table.forget(&self.0.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inbox() -> (Poster, Posted) {
        super::inbox(Emulation::new(), Key::from(7), false)
    }

    fn batch(text: &'static str) -> Bytes {
        Bytes::from_static(text.as_bytes())
    }

    /// Every emulated session keeps its inbox for life. glibc's
    /// allocations come in 16-byte steps, 8 bytes of each its own: at up to
    /// 120 bytes (136 with the `Arc`'s counts) an inbox takes 144 bytes,
    /// one step more takes 160.
    #[test]
    fn an_inbox_stays_within_its_allocation_step() {
        let size = std::mem::size_of::<Shared>();
        assert!(size <= 120, "an inbox is {size} bytes");
    }

    #[tokio::test]
    async fn batches_reach_the_session_in_the_order_they_were_posted() {
        let (poster, mut posted) = inbox();
        poster.try_post(batch("connect")).unwrap();
        poster.post(batch("subscribe"), Duration::from_secs(1)).await.unwrap();
        assert_eq!(posted.recv().await, "connect");
        assert_eq!(posted.recv().await, "subscribe");
    }

    #[tokio::test]
    async fn a_session_waiting_for_a_batch_is_woken_by_its_posting() {
        let (poster, mut posted) = inbox();
        let waiting = tokio::spawn(async move { posted.recv().await });
        tokio::task::yield_now().await;
        poster.post(batch("ping"), Duration::from_secs(1)).await.unwrap();
        assert_eq!(waiting.await.unwrap(), "ping");
    }

    #[tokio::test]
    async fn an_idle_inbox_holds_no_memory_for_its_queue() {
        let (poster, mut posted) = inbox();
        assert_eq!(posted.0.state().queue.capacity(), 0, "nothing allocated before the first batch");
        poster.try_post(batch("a")).unwrap();
        poster.try_post(batch("b")).unwrap();
        posted.recv().await;
        posted.recv().await;
        assert_eq!(posted.0.state().queue.capacity(), 0, "given back once emptied");
    }

    #[tokio::test]
    async fn a_full_inbox_makes_a_poster_wait_for_room_and_then_takes_its_batch() {
        let (poster, mut posted) = inbox();
        for _ in 0..CAPACITY {
            poster.try_post(batch("early")).unwrap();
        }
        assert_eq!(poster.try_post(batch("late")), Err(NotTaken::Busy));
        let late = {
            let poster = poster.clone();
            tokio::spawn(async move { poster.post(batch("late"), Duration::from_secs(10)).await })
        };
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!late.is_finished(), "no room yet");
        assert_eq!(posted.0.state().queue.len(), CAPACITY, "the late batch is not in");
        assert_eq!(posted.recv().await, "early");
        assert_eq!(late.await.unwrap(), Ok(()));
        for _ in 1..CAPACITY {
            assert_eq!(posted.recv().await, "early");
        }
        assert_eq!(posted.recv().await, "late", "behind what was queued before it");
    }

    #[tokio::test(start_paused = true)]
    async fn a_poster_that_finds_no_room_in_time_is_told_the_session_is_busy_and_queues_nothing() {
        let (poster, mut posted) = inbox();
        for _ in 0..CAPACITY {
            poster.try_post(batch("early")).unwrap();
        }
        assert_eq!(poster.post(batch("late"), Duration::from_secs(2)).await, Err(NotTaken::Busy));
        for _ in 0..CAPACITY {
            assert_eq!(posted.recv().await, "early");
        }
        assert_eq!(posted.0.state().queue.len(), 0, "the late batch was not queued");
    }

    #[tokio::test(start_paused = true)]
    async fn once_the_session_ends_posting_says_so_and_a_waiting_poster_is_let_go() {
        let (poster, posted) = inbox();
        for _ in 0..CAPACITY {
            poster.try_post(batch("early")).unwrap();
        }
        let waiting = {
            let poster = poster.clone();
            tokio::spawn(async move { poster.post(batch("late"), Duration::from_secs(3600)).await })
        };
        tokio::task::yield_now().await;
        drop(posted);
        // Time stands still but for timers: a poster left waiting would be
        // told `Busy` at its hour's end, not `Ended`.
        assert_eq!(waiting.await.unwrap(), Err(NotTaken::Ended));
        assert_eq!(poster.try_post(batch("after")), Err(NotTaken::Ended));
    }
}
