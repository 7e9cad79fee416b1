//! A socket the fanout writes to itself while its session lends it.
//!
//! Waking a session for each delivery costs a task wake-up and poll on
//! top of the write, and spreads a publication's writes out in time:
//! subscribers that read on the same machine then find their sockets empty
//! between two writes and sleep, and each write pays to wake its reader.
//! So where the transport allows it (a WebSocket over plain TCP), the
//! session lends its socket at the top of its loop, with nothing half
//! written, until it next drains its outbox or writes (or takes it back
//! to queue a reply ahead: [`Outbox::reclaim`]); a fanout that finds
//! a lone frame queued in an outbox meanwhile writes it itself
//! ([`Outbox::flush`]), in a burst with the other subscribers of its batch. The session is woken only when that cannot be done: the
//! socket is not lent, the frame is not alone, or the socket did not take
//! all of it (the rest is then the session's to write, before anything
//! else).
//!
//! # Order
//!
//! Frames leave in the order they were queued: a fanout writes only the
//! one item queued, under the outbox's lock; a drain takes the socket back
//! under the same lock ([`Direct::reclaim`]), so nothing pushed after a
//! drain overtakes what the drain took; the session lends the socket
//! again only once everything it took is written. The transport keeps a
//! frame the socket took in part, and writes its rest before anything of
//! its own. A batched write (`uring.rs`) takes its frame out of the queue
//! under the lock and sends it after: until it ends, the transport lets
//! nothing else write to the socket, and the session's own writes wait
//! for it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Due, Outbox, Outgoing, Queued, State};
use crate::frame::Frame;

/// A connection's socket as its session lends it to the fanout.
pub trait Direct: Send + Sync {
    /// Writes `frame` as one message if the socket is lent; [`Sent::Not`]
    /// leaves it to the session.
    fn try_send(&self, frame: &Frame) -> Sent;

    /// Takes the socket back: nothing is written through
    /// [`Direct::try_send`] or begun in a batch until the session lends it
    /// again (a batched send begun before may still be under way: the
    /// transport has the session's writes wait for it).
    fn reclaim(&self);

    /// Begins a write the fanout makes in a batch with other sockets'
    /// (`uring.rs`): where the socket is lent for frames like `frame`,
    /// appends the bytes it would write to `wire` and returns its
    /// descriptor. The socket is then the batch's: nothing else is
    /// written to it, by the fanout or its session, until
    /// [`Direct::end_batched`]. `None` (the default) leaves the frame to
    /// [`Direct::try_send`] or the session.
    #[cfg(target_os = "linux")]
    fn begin_batched(&self, frame: &Frame, wire: &mut Vec<u8>) -> Option<std::os::fd::RawFd> {
        let _ = (frame, wire);
        None
    }

    /// Ends a write begun with [`Direct::begin_batched`]: `unsent` is what
    /// the socket did not take of it (all of it, if the send failed),
    /// which the transport keeps as the rest its session writes first
    /// ([`Sent::Begun`]). Only called after a `Some` from `begin_batched`.
    #[cfg(target_os = "linux")]
    fn end_batched(&self, unsent: &[u8]) -> Sent {
        match unsent.is_empty() {
            true => Sent::Whole,
            false => Sent::Begun,
        }
    }

    /// Ends a write begun with [`Direct::begin_batched`] whose fate is not
    /// known (the ring failed after the kernel took it): the stream may
    /// hold any part of the frame, so nothing more may be written to it,
    /// not even a close frame, which the client would read as the frame's
    /// rest; the connection is dropped instead. A transport that begins
    /// batched writes overrides this (the default only ends the send).
    /// Only called after a `Some` from `begin_batched`.
    #[cfg(target_os = "linux")]
    fn end_batched_lost(&self) {
        let _ = self.end_batched(&[]);
    }
}

/// How much of a lent socket's record a batch asks the processor for
/// ahead of writing to it (see `prefetch.rs`): its first two cache lines,
/// which hold all of a WebSocket's (a test in `herald-server` checks it).
pub const PREFETCHED_SOCKET_BYTES: usize = 128;

/// What [`Direct::try_send`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// All of it is written.
    Whole,
    /// Part of it is written; the transport keeps the rest, which its
    /// session must write next (the socket is no longer lent).
    Begun,
    /// Nothing is written: the socket is not lent, did not take any of
    /// it, or the frame is not one it writes.
    Not,
}

impl std::fmt::Debug for dyn Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Direct")
    }
}

impl Outbox {
    /// Lets the fanout write to `socket` while the session lends it (see
    /// the module docs).
    pub fn attach(&self, socket: Arc<dyn Direct>) {
        let mut state = self.state();
        self.socket_at.store(Arc::as_ptr(&socket).cast::<u8>().cast_mut(), Ordering::Relaxed);
        state.direct = Some(socket);
    }

    /// Takes the socket back for good (at the session's end: the outbox
    /// may outlive it, and must not keep its socket open; a batched send
    /// under way keeps it until the send ends).
    pub fn detach(&self) {
        let taken = self.state().direct.take();
        self.socket_at.store(std::ptr::null_mut(), Ordering::Relaxed);
        if let Some(socket) = taken {
            socket.reclaim();
        }
    }

    /// Takes the socket back until the session lends it again (at the top
    /// of its next turn): what is pushed meanwhile stays queued for the
    /// session, so a reply the session puts ahead of it with
    /// [`Outbox::push_ahead`] reaches the client first.
    pub fn reclaim(&self) {
        if let Some(socket) = &self.state().direct {
            socket.reclaim();
        }
    }

    /// Writes what a fanout queued with [`Outbox::push_unwoken`]: itself,
    /// when it is a lone frame due now and the session lends its socket;
    /// otherwise it wakes the session to write it.
    pub fn flush(&self) {
        let mut state = self.state();
        // The session is woken for what is left: a frame not written, the
        // rest of one begun, or a close.
        let wake = match state.write_directly() {
            Some(Sent::Whole) => false,
            Some(Sent::Begun) => true,
            Some(Sent::Not) | None => !state.items.is_empty() || state.closed.is_some(),
        };
        drop(state);
        if wake {
            self.reader.wake();
        }
    }
}

#[cfg(target_os = "linux")]
impl Outbox {
    /// Begins a batched write of what a fanout queued (see `uring.rs`):
    /// where [`Outbox::flush`] would write a lone frame itself and the
    /// socket begins a batched write of it, the frame leaves the queue (it
    /// is the socket's now) and the socket is returned, with its
    /// descriptor; `None` leaves everything as it was.
    pub(super) fn begin_batched(&self, wire: &mut Vec<u8>) -> Option<(Arc<dyn Direct>, std::os::fd::RawFd)> {
        let mut state = self.state();
        let (socket, frame) = state.lone_frame_to_write()?;
        let fd = socket.begin_batched(frame, wire)?;
        let socket = socket.clone();
        state.take_all();
        Some((socket, fd))
    }

    /// Ends a batched write begun by [`Outbox::begin_batched`]: what the
    /// socket did not take is its transport's to keep, and the session is
    /// woken to write it.
    pub(super) fn end_batched(&self, socket: &dyn Direct, unsent: &[u8]) {
        if socket.end_batched(unsent) == Sent::Whole {
            return;
        }
        // Nothing may be queued, but the session must run to write the rest.
        self.state().due = Some(Due::Now);
        self.reader.wake();
    }
}

impl State {
    /// [`Outbox::flush`]'s write, under the outbox's lock: `None` where it
    /// was not tried. What the socket took leaves the queue; a frame it
    /// took in part leaves it too (its transport owes the rest), but its
    /// session must be woken to write that.
    fn write_directly(&mut self) -> Option<Sent> {
        let (socket, frame) = self.lone_frame_to_write()?;
        let sent = socket.try_send(frame);
        match sent {
            Sent::Whole => self.take_all(),
            Sent::Begun => {
                self.take_all();
                // Nothing queued, but the session must run to write the rest.
                self.due = Some(Due::Now);
            }
            Sent::Not => {}
        }
        Some(sent)
    }

    /// The socket lent and the one frame queued, where the fanout may
    /// write it: a lone frame due now, the outbox open.
    fn lone_frame_to_write(&self) -> Option<(&Arc<dyn Direct>, &Frame)> {
        match (&self.direct, &self.items, self.due, &self.closed) {
            (Some(socket), Queued::One(Outgoing::Frame(frame)), Some(Due::Now), None) => Some((socket, frame)),
            _ => None,
        }
    }

    fn take_all(&mut self) {
        self.items = Queued::Empty;
        self.bytes = 0;
        self.due = None;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::task::{Context, Poll, Waker};

    use super::*;
    use crate::frame::Text;
    use crate::outbox::{CountedWaker, Drained};
    use herald_engine::DisconnectReason;

    /// A socket that records what it was given, lent or not, taking
    /// frames whole, in part or not at all as the test says.
    #[derive(Default)]
    struct Socket {
        lent: Mutex<bool>,
        takes: Mutex<Option<Sent>>,
        written: Mutex<Vec<Frame>>,
    }

    impl Socket {
        fn lend(&self) {
            *self.lent.lock().unwrap() = true;
        }

        fn is_lent(&self) -> bool {
            *self.lent.lock().unwrap()
        }

        fn taking(&self, sent: Sent) {
            *self.takes.lock().unwrap() = Some(sent);
        }

        fn written(&self) -> Vec<Frame> {
            self.written.lock().unwrap().clone()
        }
    }

    impl Direct for Socket {
        fn try_send(&self, frame: &Frame) -> Sent {
            let mut lent = self.lent.lock().unwrap();
            if !*lent {
                return Sent::Not;
            }
            let sent = self.takes.lock().unwrap().unwrap_or(Sent::Whole);
            if sent != Sent::Not {
                self.written.lock().unwrap().push(frame.clone());
            }
            if sent == Sent::Begun {
                *lent = false;
            }
            sent
        }

        fn reclaim(&self) {
            *self.lent.lock().unwrap() = false;
        }
    }

    fn frame(text: &'static str) -> Frame {
        Frame::Text(Text::from(text))
    }

    /// An outbox with `socket` attached, and the count of its session's
    /// wake-ups.
    fn outbox_lending(socket: &Arc<Socket>) -> (Outbox, Arc<CountedWaker>) {
        let outbox = Outbox::new(1000);
        outbox.attach(socket.clone());
        let wakes = Arc::new(CountedWaker::default());
        let waker = Waker::from(wakes.clone());
        assert_eq!(outbox.poll_ready(&mut Context::from_waker(&waker)), Poll::Pending);
        (outbox, wakes)
    }

    fn drained(outbox: &Outbox) -> Vec<Outgoing> {
        match outbox.drain() {
            Drained::Items(items) => items.into_iter().collect(),
            Drained::Closed(reason) => panic!("closed: {reason:?}"),
        }
    }

    #[test]
    fn a_lone_frame_goes_straight_to_a_lent_socket_and_the_session_sleeps_on() {
        let socket = Arc::new(Socket::default());
        let (outbox, wakes) = outbox_lending(&socket);
        socket.lend();

        outbox.push_unwoken(Outgoing::Frame(frame("a"))).unwrap();
        outbox.flush();

        assert_eq!(socket.written(), vec![frame("a")]);
        assert_eq!(wakes.count(), 0, "the session was woken for a frame written for it");
        assert_eq!(outbox.queued_bytes(), 0);
        assert!(drained(&outbox).is_empty());
    }

    #[test]
    fn a_socket_not_lent_leaves_the_frame_to_the_session() {
        let socket = Arc::new(Socket::default());
        let (outbox, wakes) = outbox_lending(&socket);

        outbox.push_unwoken(Outgoing::Frame(frame("a"))).unwrap();
        outbox.flush();

        assert!(socket.written().is_empty());
        assert_eq!(wakes.count(), 1);
        assert_eq!(drained(&outbox), vec![Outgoing::Frame(frame("a"))]);
    }

    #[test]
    fn a_frame_behind_another_waits_for_the_session_in_its_place() {
        let socket = Arc::new(Socket::default());
        let (outbox, wakes) = outbox_lending(&socket);
        outbox.push_unwoken(Outgoing::Frame(frame("a"))).unwrap();
        socket.lend();

        outbox.push_unwoken(Outgoing::Frame(frame("b"))).unwrap();
        outbox.flush();

        assert!(socket.written().is_empty(), "b would have overtaken a");
        assert_eq!(wakes.count(), 1);
        assert_eq!(drained(&outbox), vec![Outgoing::Frame(frame("a")), Outgoing::Frame(frame("b"))]);
    }

    #[test]
    fn a_drain_takes_the_socket_back_so_nothing_overtakes_what_it_took() {
        let socket = Arc::new(Socket::default());
        let (outbox, _) = outbox_lending(&socket);
        outbox.push(Outgoing::Frame(frame("a"))).unwrap();
        socket.lend();

        let took = drained(&outbox);
        outbox.push_unwoken(Outgoing::Frame(frame("b"))).unwrap();
        outbox.flush();

        assert_eq!(took, vec![Outgoing::Frame(frame("a"))]);
        assert!(!socket.is_lent());
        assert!(socket.written().is_empty(), "b went out before the session wrote a");
        assert_eq!(drained(&outbox), vec![Outgoing::Frame(frame("b"))]);
    }

    #[test]
    fn a_frame_the_socket_took_in_part_wakes_the_session_for_the_rest() {
        let socket = Arc::new(Socket::default());
        let (outbox, wakes) = outbox_lending(&socket);
        socket.lend();
        socket.taking(Sent::Begun);

        outbox.push_unwoken(Outgoing::Frame(frame("a"))).unwrap();
        outbox.flush();

        assert_eq!(socket.written(), vec![frame("a")]);
        assert_eq!(wakes.count(), 1, "the rest is the session's to write");
        let waker = Waker::from(wakes.clone());
        assert!(outbox.poll_ready(&mut Context::from_waker(&waker)).is_ready());
        assert!(drained(&outbox).is_empty(), "the frame is not written twice");
    }

    #[test]
    fn a_socket_that_takes_nothing_leaves_the_frame_queued_for_the_session() {
        let socket = Arc::new(Socket::default());
        let (outbox, wakes) = outbox_lending(&socket);
        socket.lend();
        socket.taking(Sent::Not);

        outbox.push_unwoken(Outgoing::Frame(frame("a"))).unwrap();
        outbox.flush();

        assert_eq!(wakes.count(), 1);
        assert_eq!(drained(&outbox), vec![Outgoing::Frame(frame("a"))]);
    }

    #[test]
    fn a_reply_put_ahead_after_a_reclaim_goes_before_what_came_meanwhile() {
        let socket = Arc::new(Socket::default());
        let (outbox, _) = outbox_lending(&socket);
        socket.lend();

        outbox.reclaim();
        outbox.push_unwoken(Outgoing::Frame(frame("event"))).unwrap();
        outbox.flush();
        outbox.push_ahead(Outgoing::Frame(frame("reply"))).unwrap();

        assert!(socket.written().is_empty(), "the event went out ahead of the reply");
        assert_eq!(drained(&outbox), vec![Outgoing::Frame(frame("reply")), Outgoing::Frame(frame("event"))]);
    }

    #[test]
    fn delayed_frames_and_events_are_never_written_directly() {
        let socket = Arc::new(Socket::default());
        let (outbox, _) = outbox_lending(&socket);
        socket.lend();

        let later = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        outbox.push_delayed(Outgoing::Frame(frame("a")), later).unwrap();
        outbox.flush();
        let _ = drained(&outbox);
        let event = Outgoing::Event(crate::outbox::ConnEvent::Refresh { expire_at: None, expired: false });
        outbox.push_unwoken(event.clone()).unwrap();
        outbox.flush();

        assert!(socket.written().is_empty());
        assert_eq!(drained(&outbox), vec![event]);
    }

    #[test]
    fn a_closed_or_detached_outbox_writes_nothing() {
        let socket = Arc::new(Socket::default());
        let (outbox, _) = outbox_lending(&socket);
        socket.lend();
        outbox.close(DisconnectReason::Slow);
        outbox.flush();
        assert!(socket.written().is_empty());

        let (outbox, wakes) = outbox_lending(&socket);
        socket.lend();
        outbox.detach();
        assert!(!socket.is_lent(), "a detached socket is taken back");
        socket.lend();
        outbox.push_unwoken(Outgoing::Frame(frame("a"))).unwrap();
        outbox.flush();
        assert!(socket.written().is_empty());
        assert_eq!(wakes.count(), 1, "the session writes what a detached outbox holds");
    }
}
