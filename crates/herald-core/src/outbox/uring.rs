//! A fanout's direct writes in one system call, through Linux's io_uring.
//!
//! A direct write ([`Outbox::flush`]) costs a `write` system call per
//! subscriber, and on a busy node the call's own entry and exit is a
//! fifth of a delivery's kernel time (BENCHMARKS.md). So a batch of a
//! fanout's outboxes is written together: each outbox whose lone frame its
//! lent socket takes in a batch is begun ([`Outbox::begin_batched`]: the
//! frame leaves the queue, its bytes go into the batch's buffer, and the
//! socket is the batch's until its send ends), then every send goes to
//! the kernel in one `io_uring_enter` (another only if a signal interrupts
//! it). The sends carry `MSG_DONTWAIT`, so a socket that is full answers at
//! once instead of waiting, and the call returns with every send done.
//! What a socket did not take is handed back to its transport as the rest
//! of a begun frame, and its session woken to write it
//! ([`Outbox::end_batched`]), as for a direct write taken in part. An
//! outbox not begun is flushed as before, one write or a wake-up.
//!
//! Each thread that flushes has a ring of its own, made on its first batch.
//! Where io_uring cannot be had (an old kernel, a container's seccomp
//! profile, `kernel.io_uring_disabled`) or is turned off
//! ([`write_batches_with_io_uring`]), every outbox is flushed one write each.
//!
//! # Failure
//!
//! Every send begun is ended, whatever happens, so that no session waits
//! on its socket for ever. Should the ring itself fail, or anything panic
//! during a batch, a send whose fate is not known (the kernel took it, and
//! did not say how much it wrote) cannot be handed back without risking
//! bytes written twice: its connection is closed instead, with nothing
//! more written to it, not even a close frame the client would read as the
//! frame's rest ([`Direct::end_batched_lost`]; its client reconnects and
//! recovers), the ring and its buffer are leaked rather
//! than freed under the kernel, and the thread writes one socket at a time
//! from then on.
//!
//! This module has `unsafe` code (as has `prefetch.rs`, for a hint): the
//! kernel reads a send's bytes after the call that queued it returns, so
//! queuing one is unsafe in every binding. [`Batch::send`] keeps what
//! makes it sound.

#![allow(unsafe_code)]

use std::cell::RefCell;
use std::ops::Range;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use herald_engine::DisconnectReason;
use io_uring::{opcode, types, IoUring};

use super::{Direct, Outbox};

/// Sends per ring: as many as a fanout flushes at once.
const RING_ENTRIES: u32 = crate::hub::FLUSH_IN_BATCHES_OF as u32;

/// A batch's buffer larger than this after a batch is let go, so that a
/// burst of large frames does not pin memory on the thread.
const WIRE_KEPT: usize = 64 * 1024;

/// Calls that only ask to be made again (a signal, the kernel short of
/// memory for a moment) made in a row before the ring counts as failed.
const RETRIES: u32 = 64;

/// `send` flags: a full socket answers `EAGAIN` at once (and io_uring
/// then completes the send instead of waiting on the socket); a closed
/// peer gives `EPIPE`, not a signal.
const MSG_DONTWAIT: i32 = 0x40;
const MSG_NOSIGNAL: i32 = 0x4000;

/// `errno` values that only ask for the call to be made again.
const EINTR: i32 = 4;
const EAGAIN: i32 = 11;
const EBUSY: i32 = 16;

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Whether fanouts write their batches through io_uring where the kernel
/// offers it (the default), or one `write` per subscriber. For the whole
/// process: the server sets it from its config at start.
pub fn write_batches_with_io_uring(enabled: bool) {
    ENABLED.store(enabled, Ordering::Relaxed);
}

thread_local! {
    static RING: RefCell<Ring> = const { RefCell::new(Ring::Untried) };
}

enum Ring {
    Untried,
    Ready(Box<Batch>),
    Unavailable,
}

/// The node says once that it has no io_uring, not once per thread.
static UNAVAILABLE_TOLD: std::sync::Once = std::sync::Once::new();

/// Flushes `outboxes` (see [`Outbox::flush`]) with their direct writes in
/// one system call. `false` where that cannot be done on this thread: the
/// caller flushes them one by one.
pub(crate) fn flush(outboxes: &[Arc<Outbox>]) -> bool {
    // One write gains nothing from a ring.
    if outboxes.len() < 2 || !ENABLED.load(Ordering::Relaxed) {
        return false;
    }
    // Not while the thread's locals are torn down.
    RING.try_with(|ring| {
        // Never re-entered (a flush wakes tasks, it does not run them),
        // but if it were, the inner flush would go one write each.
        let Ok(mut ring) = ring.try_borrow_mut() else { return false };
        match &*ring {
            Ring::Untried => *ring = make_ring(),
            // A batch that panicked: its ring may hold sends not reaped.
            Ring::Ready(batch) if batch.poisoned => give_up(&mut ring),
            _ => {}
        }
        let Ring::Ready(batch) = &mut *ring else { return false };
        let mut chunks = outboxes.chunks(RING_ENTRIES as usize);
        let failed = chunks.by_ref().find_map(|chunk| batch.flush(chunk).err());
        if let Some(error) = failed {
            tracing::warn!(%error, "io_uring failed: fanouts on this thread write to each socket in turn");
            give_up(&mut ring);
            chunks.flatten().for_each(|outbox| outbox.flush());
        }
        true
    })
    .unwrap_or(false)
}

fn make_ring() -> Ring {
    match IoUring::new(RING_ENTRIES) {
        Ok(uring) => Ring::Ready(Box::new(Batch::new(uring))),
        Err(error) => {
            UNAVAILABLE_TOLD.call_once(
                || tracing::info!(%error, "io_uring is not available: fanouts write to each socket in turn"),
            );
            Ring::Unavailable
        }
    }
}

/// Stops using the thread's ring, and leaks it with its buffer: the kernel
/// may still hold sends that point into it.
fn give_up(ring: &mut Ring) {
    if let Ring::Ready(batch) = std::mem::replace(ring, Ring::Unavailable) {
        let _ = Box::leak(batch);
    }
}

/// A thread's ring, with the buffers of the batch it writes.
struct Batch {
    uring: IoUring,
    /// The bytes of every send of the batch, one after another.
    wire: Vec<u8>,
    /// The sends begun and not yet ended: empty between batches.
    sends: Vec<Send>,
    /// A batch panicked: the ring is not used again.
    poisoned: bool,
}

/// Ends a batch's sends when dropped, even as a panic unwinds; a panic
/// that began during the batch poisons its ring.
struct Ending<'a> {
    batch: &'a mut Batch,
    /// Already unwinding when the batch began (a fanout's last batch is
    /// flushed as its guard drops): not the batch's doing.
    unwinding_before: bool,
}

impl Drop for Ending<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.unwinding_before {
            self.batch.poisoned = true;
        }
        self.batch.end_sends();
    }
}

/// One socket's send in a batch.
struct Send {
    outbox: Arc<Outbox>,
    /// Kept until the send has ended, so that its descriptor stays open.
    socket: Arc<dyn Direct>,
    fd: RawFd,
    /// Its bytes in the batch's `wire`.
    bytes: Range<usize>,
    fate: Fate,
    /// Ended: its socket is no longer the batch's.
    ended: bool,
}

/// A send dropped before it was ended (a panic while ending another) is
/// ended as one whose fate is not known, so that no session waits on its
/// socket for ever.
impl Drop for Send {
    fn drop(&mut self) {
        if !self.ended {
            self.end_lost();
        }
    }
}

impl Send {
    /// Ends a send that may have been written in part: its connection is
    /// closed first, and its transport told that nothing more may be
    /// written to the socket after the unknown bytes, not even a close.
    fn end_lost(&mut self) {
        self.ended = true;
        self.outbox.close(DisconnectReason::Internal);
        self.socket.end_batched_lost();
    }
}

/// What became of a send.
#[derive(Clone, Copy)]
enum Fate {
    /// Never given to the kernel: all of it is still to write.
    Kept,
    /// Given to the kernel, which has not said what it wrote.
    Unknown,
    /// The socket took this many bytes (none if the send failed: the
    /// session's own write meets the error, or the full socket, and deals
    /// with it).
    Took(usize),
}

impl Batch {
    fn new(uring: IoUring) -> Self {
        Self { uring, wire: Vec::new(), sends: Vec::new(), poisoned: false }
    }

    /// Flushes at most [`RING_ENTRIES`] outboxes; an error is the ring's own.
    fn flush(&mut self, outboxes: &[Arc<Outbox>]) -> std::io::Result<()> {
        self.wire.clear();
        let ending = Ending { batch: self, unwinding_before: std::thread::panicking() };
        // The fanout filled these outboxes, often on the other core: each
        // is asked for a few ahead (see `prefetch.rs`), and its socket
        // (whose address is in the outbox) half as far.
        for outbox in crate::prefetch::ahead(outboxes.iter(), |far| far.prefetch(), |near| near.prefetch_socket()) {
            if !ending.batch.begin(outbox) {
                outbox.flush();
            }
        }
        let sent = match ending.batch.sends.is_empty() {
            true => Ok(()),
            false => ending.batch.send(),
        };
        drop(ending);
        // Not after an error: the ring and its buffer are leaked then.
        if sent.is_ok() && self.wire.capacity() > WIRE_KEPT {
            self.wire = Vec::new();
        }
        sent
    }

    /// Begins `outbox`'s send in this batch ([`Outbox::begin_batched`]);
    /// `false` where its frame is not one to batch.
    fn begin(&mut self, outbox: &Arc<Outbox>) -> bool {
        let start = self.wire.len();
        let Some((socket, fd)) = outbox.begin_batched(&mut self.wire) else { return false };
        let bytes = start..self.wire.len();
        self.sends.push(Send { outbox: outbox.clone(), socket, fd, bytes, fate: Fate::Kept, ended: false });
        true
    }

    /// Ends every send begun (see [`Outbox::end_batched`]); one whose fate
    /// is unknown closes its connection.
    fn end_sends(&mut self) {
        for mut send in self.sends.drain(..) {
            let bytes = self.wire.get(send.bytes.clone());
            let unsent = match send.fate {
                Fate::Kept => bytes,
                Fate::Took(taken) => bytes.and_then(|bytes| bytes.get(taken..)),
                Fate::Unknown => None,
            };
            match unsent {
                Some(unsent) => {
                    send.ended = true;
                    send.outbox.end_batched(&*send.socket, unsent);
                }
                None => send.end_lost(),
            }
        }
    }

    /// Sends every begun send once, in one system call (more only if
    /// interrupted), and notes what each socket took.
    ///
    /// Soundness: each send points into `wire`, which is not touched until
    /// this returns, and at a descriptor its `socket` keeps open. This
    /// returns once every send given to the kernel has completed, or with
    /// the ring's error; the ring and `wire` are then leaked ([`give_up`]),
    /// never freed while the kernel might still read them.
    fn send(&mut self) -> std::io::Result<()> {
        let queued = self.queue();
        let (mut reaped, mut retries) = (0usize, 0u32);
        while reaped < queued {
            match self.uring.submit_and_wait(queued.saturating_sub(reaped)) {
                Ok(_) => retries = 0,
                Err(e) if matches!(e.raw_os_error(), Some(EINTR | EAGAIN | EBUSY)) && retries < RETRIES => {
                    retries = retries.saturating_add(1)
                }
                Err(e) => {
                    self.reap_after_failure(&mut reaped);
                    return Err(e);
                }
            }
            self.note_completions(&mut reaped);
        }
        Ok(())
    }

    /// Puts every send not yet given to the kernel in the submission
    /// queue; returns how many it put there.
    fn queue(&mut self) -> usize {
        let mut queued = 0usize;
        for (tag, send) in self.sends.iter_mut().enumerate() {
            if !matches!(send.fate, Fate::Kept) {
                continue;
            }
            let Some(bytes) = self.wire.get(send.bytes.clone()) else { continue };
            let length = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
            let entry = opcode::Send::new(types::Fd(send.fd), bytes.as_ptr(), length)
                .flags(MSG_DONTWAIT | MSG_NOSIGNAL)
                .build()
                .user_data(tag as u64);
            // SAFETY: see `send`'s doc. The queue has room: a batch is at
            // most RING_ENTRIES long and the last one was reaped whole.
            if unsafe { self.uring.submission().push(&entry) }.is_err() {
                break;
            }
            send.fate = Fate::Unknown;
            queued = queued.saturating_add(1);
        }
        queued
    }

    /// After the ring failed: notes what the sends it completed took, and
    /// hands back whole those it never took.
    fn reap_after_failure(&mut self, reaped: &mut usize) {
        self.note_completions(reaped);
        self.unqueue_not_taken();
    }

    /// Notes what each completed send took.
    fn note_completions(&mut self, reaped: &mut usize) {
        for completion in self.uring.completion() {
            *reaped = reaped.saturating_add(1);
            if let Some(send) = self.sends.get_mut(completion.user_data() as usize) {
                send.fate = Fate::Took(usize::try_from(completion.result()).unwrap_or(0));
            }
        }
    }

    /// After the ring failed: the sends still in its submission queue were
    /// never taken by the kernel (the last ones queued), and will not be,
    /// since the ring is not entered again. Their bytes are all still to
    /// write.
    fn unqueue_not_taken(&mut self) {
        let not_taken = self.uring.submission().len();
        let queued = self.sends.iter_mut().rev().filter(|send| matches!(send.fate, Fate::Unknown));
        queued.take(not_taken).for_each(|send| send.fate = Fate::Kept);
    }
}

#[cfg(test)]
mod tests {
    use std::io::{ErrorKind, Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use std::sync::Mutex;
    use std::task::{Context, Poll, Waker};

    use super::*;
    use crate::frame::{Frame, Text};
    use crate::outbox::{CountedWaker, Drained, Outgoing, Sent};

    /// A lent socket that writes only in batches, and keeps what a batch's
    /// send did not take, as a transport does. A Unix stream socket: one
    /// whose peer reads nothing stays full, as loopback TCP (with its
    /// acknowledgements and buffer tuning) need not.
    struct Socket {
        stream: UnixStream,
        lent: Mutex<bool>,
        rest: Mutex<Option<Vec<u8>>>,
        /// Batched sends ended.
        ended: Mutex<usize>,
        /// A batched send was ended as one whose fate is not known.
        lost: Mutex<bool>,
        /// Begins a batched send by panicking, for the tests of a batch
        /// that fails half way.
        panics: bool,
    }

    impl Direct for Socket {
        fn try_send(&self, _: &Frame) -> Sent {
            Sent::Not
        }

        fn reclaim(&self) {
            *self.lent.lock().unwrap() = false;
        }

        fn begin_batched(&self, frame: &Frame, wire: &mut Vec<u8>) -> Option<RawFd> {
            assert!(!self.panics, "a transport's bug");
            if !*self.lent.lock().unwrap() {
                return None;
            }
            wire.extend_from_slice(match frame {
                Frame::Text(text) => text.as_bytes(),
                Frame::Binary(bytes) => bytes,
            });
            Some(self.stream.as_raw_fd())
        }

        fn end_batched(&self, unsent: &[u8]) -> Sent {
            *self.ended.lock().unwrap() += 1;
            if unsent.is_empty() {
                return Sent::Whole;
            }
            *self.lent.lock().unwrap() = false;
            *self.rest.lock().unwrap() = Some(unsent.to_vec());
            Sent::Begun
        }

        fn end_batched_lost(&self) {
            *self.ended.lock().unwrap() += 1;
            *self.lent.lock().unwrap() = false;
            *self.lost.lock().unwrap() = true;
        }
    }

    /// A connection: its outbox, lending its socket or not, the count of
    /// its session's wake-ups, and the client's end of the socket.
    struct Connection {
        outbox: Arc<Outbox>,
        socket: Arc<Socket>,
        wakes: Arc<CountedWaker>,
        client: UnixStream,
    }

    /// Whether the kernel gives this process a ring; under `CI=true` it
    /// must.
    fn io_uring_here() -> bool {
        match IoUring::new(2) {
            Ok(_) => true,
            Err(error) if std::env::var("CI").as_deref() != Ok("true") => {
                eprintln!("skipped: io_uring is not available here ({error})");
                false
            }
            Err(error) => panic!("io_uring is not available here: {error}"),
        }
    }

    fn connection(lent: bool) -> Connection {
        connection_with(lent, false)
    }

    fn connection_with(lent: bool, panics: bool) -> Connection {
        let (stream, client) = UnixStream::pair().unwrap();
        stream.set_nonblocking(true).unwrap();
        let socket = Arc::new(Socket {
            stream,
            lent: Mutex::new(lent),
            rest: Mutex::new(None),
            ended: Mutex::new(0),
            lost: Mutex::new(false),
            panics,
        });
        let outbox = Arc::new(Outbox::new(1 << 20));
        outbox.attach(socket.clone());
        let wakes = Arc::new(CountedWaker::default());
        let waker = Waker::from(wakes.clone());
        assert_eq!(outbox.poll_ready(&mut Context::from_waker(&waker)), Poll::Pending);
        Connection { outbox, socket, wakes, client }
    }

    fn text(text: String) -> Outgoing {
        Outgoing::Frame(Frame::Text(Text::from(text)))
    }

    fn read_exactly(client: &mut UnixStream, len: usize) -> Vec<u8> {
        let mut got = vec![0; len];
        client.read_exact(&mut got).unwrap();
        got
    }

    /// Fills `socket` until it takes not one byte more; returns how many
    /// it took.
    fn stuff(socket: &Socket) -> usize {
        let mut stuffed = 0;
        for chunk in [vec![b'x'; 1 << 16], vec![b'x'; 1]] {
            loop {
                match (&socket.stream).write(&chunk) {
                    Ok(n) => stuffed += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("{e}"),
                }
            }
        }
        stuffed
    }

    fn outboxes(connections: &[Connection]) -> Vec<Arc<Outbox>> {
        connections.iter().map(|c| c.outbox.clone()).collect()
    }

    #[test]
    fn a_fanouts_lone_frames_reach_every_lent_socket_whole_without_waking_a_session() {
        if !io_uring_here() {
            return;
        }
        // More than one ring's worth: two system calls.
        let mut connections: Vec<_> = (0..RING_ENTRIES + 6).map(|_| connection(true)).collect();
        for (n, connection) in connections.iter().enumerate() {
            connection.outbox.push_unwoken(text(format!("publication for {n}"))).unwrap();
        }

        assert!(flush(&outboxes(&connections)));

        for (n, connection) in connections.iter_mut().enumerate() {
            let expected = format!("publication for {n}");
            assert_eq!(read_exactly(&mut connection.client, expected.len()), expected.as_bytes());
            assert_eq!(connection.wakes.count(), 0, "connection {n}'s session was woken for a frame written for it");
            assert_eq!(connection.outbox.queued_bytes(), 0);
            assert_eq!(*connection.socket.ended.lock().unwrap(), 1);
        }
    }

    #[test]
    fn what_a_full_socket_did_not_take_is_its_sessions_to_write_first() {
        if !io_uring_here() {
            return;
        }
        let mut full = connection(true);
        let mut taking = connection(true);
        let stuffed = stuff(&full.socket);
        full.outbox.push_unwoken(text("behind the backlog".into())).unwrap();
        taking.outbox.push_unwoken(text("straight through".into())).unwrap();

        assert!(flush(&[full.outbox.clone(), taking.outbox.clone()]));

        assert_eq!(read_exactly(&mut taking.client, 16), b"straight through");
        assert_eq!(taking.wakes.count(), 0);
        let rest = full.socket.rest.lock().unwrap().clone();
        assert_eq!(rest.as_deref(), Some(&b"behind the backlog"[..]), "the transport keeps all of it");
        assert_eq!(full.wakes.count(), 1, "the session is woken to write it");
        let waker = Waker::from(full.wakes.clone());
        assert!(full.outbox.poll_ready(&mut Context::from_waker(&waker)).is_ready());
        assert!(matches!(full.outbox.drain(), Drained::Items(items) if items.is_empty()), "not written twice");
        assert_eq!(read_exactly(&mut full.client, stuffed).len(), stuffed);
        full.client.set_nonblocking(true).unwrap();
        assert_eq!(full.client.read(&mut [0; 64]).map_err(|e| e.kind()), Err(ErrorKind::WouldBlock));
    }

    #[test]
    fn an_outbox_whose_socket_is_not_lent_is_left_to_its_session() {
        if !io_uring_here() {
            return;
        }
        let mut lent = connection(true);
        let held = connection(false);
        lent.outbox.push_unwoken(text("written".into())).unwrap();
        held.outbox.push_unwoken(text("queued".into())).unwrap();

        assert!(flush(&[lent.outbox.clone(), held.outbox.clone()]));

        assert_eq!(read_exactly(&mut lent.client, 7), b"written");
        assert_eq!(held.wakes.count(), 1);
        assert_eq!(*held.socket.ended.lock().unwrap(), 0, "never begun");
        assert!(matches!(held.outbox.drain(), Drained::Items(items) if items.len() == 1));
    }

    #[test]
    fn a_batch_that_panics_half_way_ends_what_it_began_and_its_ring_is_not_used_again() {
        if !io_uring_here() {
            return;
        }
        let begun = connection(true);
        let failing = connection_with(true, true);
        begun.outbox.push_unwoken(text("never sent".into())).unwrap();
        failing.outbox.push_unwoken(text("never begun".into())).unwrap();

        let batch = [begun.outbox.clone(), failing.outbox.clone()];
        assert!(std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| flush(&batch))).is_err());

        // Not given to the kernel: the session writes it, and is not left
        // waiting for a send that will never end.
        assert_eq!(begun.socket.rest.lock().unwrap().as_deref(), Some(&b"never sent"[..]));
        assert_eq!(begun.wakes.count(), 1);
        let later = [begun.outbox.clone(), failing.outbox.clone()];
        assert!(!flush(&later), "the ring of a batch that panicked was used again");
    }

    #[test]
    fn when_the_ring_fails_what_the_kernel_sent_stays_sent_and_what_it_never_took_is_handed_back_whole() {
        if !io_uring_here() {
            return;
        }
        let mut sent: Vec<_> = (0..2).map(|_| connection(true)).collect();
        let never_taken = connection(true);
        for (n, connection) in sent.iter().enumerate() {
            connection.outbox.push_unwoken(text(format!("sent {n}"))).unwrap();
        }
        never_taken.outbox.push_unwoken(text("never taken".into())).unwrap();
        let mut batch = Batch::new(IoUring::new(4).unwrap());
        // No reallocation under the kernel's first two sends.
        batch.wire.reserve(1024);
        sent.iter().for_each(|connection| assert!(batch.begin(&connection.outbox)));
        // The kernel takes and completes the first two sends; the third
        // is queued after them, and the ring fails before it is entered.
        assert_eq!(batch.queue(), 2);
        assert_eq!(batch.uring.submit_and_wait(2).unwrap(), 2);
        assert!(batch.begin(&never_taken.outbox));
        assert_eq!(batch.queue(), 1);

        let mut reaped = 0;
        batch.reap_after_failure(&mut reaped);
        batch.end_sends();

        assert_eq!(reaped, 2);
        for (n, connection) in sent.iter_mut().enumerate() {
            let expected = format!("sent {n}");
            assert_eq!(read_exactly(&mut connection.client, expected.len()), expected.as_bytes());
            connection.client.set_nonblocking(true).unwrap();
            assert_eq!(connection.client.read(&mut [0; 64]).map_err(|e| e.kind()), Err(ErrorKind::WouldBlock));
            assert_eq!(
                connection.socket.rest.lock().unwrap().as_deref(),
                None,
                "sent {n} handed back to be written again"
            );
            assert_eq!(connection.wakes.count(), 0);
            assert!(matches!(connection.outbox.drain(), Drained::Items(items) if items.is_empty()), "sent {n} closed");
        }
        assert_eq!(never_taken.socket.rest.lock().unwrap().as_deref(), Some(&b"never taken"[..]));
        assert_eq!(never_taken.wakes.count(), 1, "its session is woken to write it");
        assert!(matches!(never_taken.outbox.drain(), Drained::Items(_)), "its connection stays open");
        assert!(batch.sends.is_empty());
    }

    #[test]
    fn a_send_whose_fate_is_not_known_closes_its_connection_and_hands_nothing_back() {
        if !io_uring_here() {
            return;
        }
        let lost = connection(true);
        lost.outbox.push_unwoken(text("perhaps written".into())).unwrap();
        let mut batch = Batch::new(IoUring::new(2).unwrap());
        assert!(batch.begin(&lost.outbox));
        batch.sends.iter_mut().for_each(|send| send.fate = Fate::Unknown);

        batch.end_sends();

        assert_eq!(*lost.socket.ended.lock().unwrap(), 1, "ended, so that its session does not wait for it");
        assert!(*lost.socket.lost.lock().unwrap(), "its transport told to write nothing more to the socket");
        assert_eq!(lost.socket.rest.lock().unwrap().as_deref(), None, "bytes perhaps written handed back");
        assert!(matches!(lost.outbox.drain(), Drained::Closed(DisconnectReason::Internal)));
    }
}
