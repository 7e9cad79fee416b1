//! A WebSocket's TCP socket, shared with the fanout: while the session
//! lends it, a publication's frame is written to it by whoever delivers
//! the publication, without waking the session (see `herald_core::Direct`).
//!
//! The session lends the socket only with nothing half written, and takes
//! it back before it writes anything itself (`WebSocket::reclaim`). A
//! frame the socket took only part of is kept here; the session writes its
//! rest before anything of its own, so frames are never interleaved.
//!
//! A fanout may also write to the socket in a batch with other sockets
//! (`herald_core`'s `uring.rs`): from `begin_batched` to `end_batched` the
//! socket is the batch's, and a session taking it back waits for the
//! batch's send to end, so that what it writes comes after. That is the
//! length of one batch (up to 64 sockets' frames copied, sent in one
//! system call, and ended), and rare: only a session that writes while a
//! publication is written to it waits. Should the ring fail after the
//! kernel took a send and before it said how much it wrote, the socket is
//! nobody's from then on ([`Lost`]): its session writes nothing more, not
//! even a close frame the client would read as the frame's rest, and the
//! connection is dropped with the session.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use herald_core::{Direct, Frame, Sent};
use tokio::net::TcpStream;

use super::frame::{self, Opcode};
use super::{LONE_FRAME, SMALL_FRAME};

/// A batched send to the socket may have been written in part, and how
/// much is not known: the WebSocket's stream cannot go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lost;

/// A plain TCP socket under a WebSocket.
#[derive(Debug)]
pub(crate) struct SharedTcp {
    pub(crate) stream: TcpStream,
    lending: Mutex<Lending>,
    /// Told when a batched send ends, if the session waits for it.
    batch_ended: Condvar,
}

#[derive(Debug, Default)]
struct Lending {
    /// The kind of message the fanout may write while the socket is lent
    /// (text or binary, as the session's protocol speaks); `None` while the
    /// session holds it.
    lent: Option<Opcode>,
    /// The rest of a frame the socket took only part of.
    rest: Option<Box<[u8]>>,
    /// A batch is sending to the socket: nothing else may write to it.
    batched: bool,
    /// The session waits for the batch's send to end.
    waited_for: bool,
    /// A batched send's fate is not known: the stream may hold any part of
    /// its frame, and nothing more may be written to it.
    lost: bool,
}

impl Lending {
    /// Whether the fanout may write a message of `opcode` with `payload`
    /// now: the socket is lent for that kind and no batch is sending. A
    /// frame of the other kind is a bug the session logs; an empty one, a
    /// message it skips.
    fn takes(&self, opcode: Opcode, payload: &[u8]) -> bool {
        self.lent == Some(opcode) && !self.batched && !payload.is_empty()
    }
}

/// A frame's WebSocket opcode and payload.
fn message(frame: &Frame) -> (Opcode, &[u8]) {
    match frame {
        Frame::Text(text) => (Opcode::Text, text.as_bytes()),
        Frame::Binary(bytes) => (Opcode::Binary, &bytes[..]),
    }
}

impl SharedTcp {
    pub(crate) fn new(stream: TcpStream) -> Self {
        Self { stream, lending: Mutex::default(), batch_ended: Condvar::new() }
    }

    fn lending(&self) -> MutexGuard<'_, Lending> {
        self.lending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Lends the socket for messages of `kind`.
    pub(crate) fn lend(&self, kind: Opcode) {
        let mut lending = self.lending();
        if lending.rest.is_none() && !lending.lost {
            lending.lent = Some(kind);
        }
    }

    /// Takes the socket back, with the rest of a frame begun while it was
    /// lent, which must be written before anything else; [`Lost`] if the
    /// stream can take nothing more. Waits for a batched send to end first
    /// (and lets no other begin).
    pub(crate) fn take_back(&self) -> Result<Option<Box<[u8]>>, Lost> {
        let mut lending = self.lending();
        lending.lent = None;
        while lending.batched {
            lending.waited_for = true;
            lending = self.batch_ended.wait(lending).unwrap_or_else(PoisonError::into_inner);
        }
        lending.lent = None;
        match lending.lost {
            true => Err(Lost),
            false => Ok(lending.rest.take()),
        }
    }

    /// Writes `payload` as one frame from a buffer of `N` bytes on the
    /// stack; returns what the socket did not take.
    fn send_frame<const N: usize>(&self, opcode: Opcode, payload: &[u8]) -> io::Result<Option<Box<[u8]>>> {
        let mut buffer = [0u8; N];
        let Some(wire) = frame::write_frame_into(&mut buffer, opcode, payload).and_then(|len| buffer.get(..len)) else {
            return self.send_frame_vectored(opcode, payload);
        };
        let taken = self.stream.try_write(wire)?;
        Ok(wire.get(taken..).filter(|rest| !rest.is_empty()).map(Box::from))
    }

    /// Writes a frame too large for the stack as its header and the shared
    /// payload, uncopied; only what the socket did not take is copied.
    fn send_frame_vectored(&self, opcode: Opcode, payload: &[u8]) -> io::Result<Option<Box<[u8]>>> {
        let (header, header_len) = frame::header(opcode, payload.len());
        let header = header.get(..header_len).unwrap_or_default();
        let taken = self.stream.try_write_vectored(&[io::IoSlice::new(header), io::IoSlice::new(payload)])?;
        let rest: Vec<u8> = match taken.checked_sub(header.len()) {
            Some(of_payload) => payload.get(of_payload..).unwrap_or_default().to_vec(),
            None => [header.get(taken..).unwrap_or_default(), payload].concat(),
        };
        Ok((!rest.is_empty()).then(|| rest.into_boxed_slice()))
    }

    /// The socket is no longer a batch's: a session waiting to take it
    /// back is told.
    fn batch_over(&self, lending: &mut Lending) {
        lending.batched = false;
        if std::mem::take(&mut lending.waited_for) {
            self.batch_ended.notify_all();
        }
    }
}

impl Direct for SharedTcp {
    fn try_send(&self, frame: &Frame) -> Sent {
        let mut lending = self.lending();
        let (opcode, payload) = message(frame);
        if !lending.takes(opcode, payload) {
            return Sent::Not;
        }
        let sent = match frame::frame_len(payload.len()) {
            len if len <= SMALL_FRAME => self.send_frame::<SMALL_FRAME>(opcode, payload),
            len if len <= LONE_FRAME => self.send_frame::<LONE_FRAME>(opcode, payload),
            _ => self.send_frame_vectored(opcode, payload),
        };
        match sent {
            Ok(None) => Sent::Whole,
            Ok(Some(rest)) => {
                lending.lent = None;
                lending.rest = Some(rest);
                Sent::Begun
            }
            // Full, or broken: the session's own write finds out which.
            Err(_) => {
                lending.lent = None;
                Sent::Not
            }
        }
    }

    fn reclaim(&self) {
        self.lending().lent = None;
    }

    fn begin_batched(&self, frame: &Frame, wire: &mut Vec<u8>) -> Option<RawFd> {
        let mut lending = self.lending();
        let (opcode, payload) = message(frame);
        // A large frame is written by `try_send`, its payload uncopied.
        if !lending.takes(opcode, payload) || frame::frame_len(payload.len()) > LONE_FRAME {
            return None;
        }
        let (header, header_len) = frame::header(opcode, payload.len());
        wire.extend_from_slice(header.get(..header_len).unwrap_or_default());
        wire.extend_from_slice(payload);
        lending.batched = true;
        Some(self.stream.as_raw_fd())
    }

    fn end_batched(&self, unsent: &[u8]) -> Sent {
        let mut lending = self.lending();
        let sent = match unsent.is_empty() {
            true => Sent::Whole,
            false => {
                lending.lent = None;
                lending.rest = Some(Box::from(unsent));
                Sent::Begun
            }
        };
        self.batch_over(&mut lending);
        sent
    }

    fn end_batched_lost(&self) {
        let mut lending = self.lending();
        lending.lent = None;
        lending.lost = true;
        self.batch_over(&mut lending);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use herald_core::Text;

    use super::*;

    async fn shared_socket() -> (Arc<SharedTcp>, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        (Arc::new(SharedTcp::new(stream)), client)
    }

    #[test]
    fn the_whole_socket_record_is_what_a_batch_fetches_ahead() {
        // A batch asks the processor for this much of a socket before it
        // writes to it; a larger record would miss the cache past it.
        let record = std::mem::size_of::<SharedTcp>();
        assert!(
            record <= herald_core::outbox::PREFETCHED_SOCKET_BYTES,
            "SharedTcp is {record} bytes: raise PREFETCHED_SOCKET_BYTES"
        );
    }

    /// A session taking the socket back during a batch's send, on a thread
    /// of its own: it waits for the send to end.
    fn a_session_waiting_for_the_batch(
        socket: &Arc<SharedTcp>,
    ) -> std::thread::JoinHandle<Result<Option<Box<[u8]>>, Lost>> {
        let session = std::thread::spawn({
            let socket = socket.clone();
            move || socket.take_back()
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.lending().waited_for {
            assert!(Instant::now() < deadline, "the session never waited for the batch");
            std::thread::yield_now();
        }
        session
    }

    #[tokio::test]
    async fn a_batched_send_has_the_socket_to_itself_and_the_session_waits_for_its_rest() {
        let (socket, _client) = shared_socket().await;
        socket.lend(Opcode::Text);
        let frame = Frame::Text(Text::from("hello"));

        let mut wire = Vec::new();
        assert_eq!(socket.begin_batched(&frame, &mut wire), Some(socket.stream.as_raw_fd()));
        assert_eq!(wire, b"\x81\x05hello", "one unmasked text frame");
        assert_eq!(socket.try_send(&frame), Sent::Not, "a second writer while the batch sends");
        assert_eq!(socket.begin_batched(&frame, &mut wire), None, "a second batch while the first sends");

        let session = a_session_waiting_for_the_batch(&socket);
        assert!(!session.is_finished(), "the session took the socket back during the batch's send");
        assert_eq!(socket.lending().lent, None, "another batch could begin before the session has its socket");

        assert_eq!(socket.end_batched(b"llo"), Sent::Begun);
        assert_eq!(
            session.join().unwrap().unwrap().as_deref(),
            Some(&b"llo"[..]),
            "the rest is the session's to write first"
        );
        assert_eq!(socket.try_send(&frame), Sent::Not, "the socket is the session's until it lends it again");
    }

    #[tokio::test]
    async fn a_batched_send_taken_whole_leaves_the_socket_lent() {
        let (socket, _client) = shared_socket().await;
        socket.lend(Opcode::Binary);
        let mut wire = Vec::new();

        assert_eq!(socket.begin_batched(&Frame::Text(Text::from("text")), &mut wire), None, "not the lent kind");
        assert!(socket.begin_batched(&Frame::Binary(vec![7; 200].into()), &mut wire).is_some());
        assert_eq!(wire.get(..4), Some(&[0x82, 126, 0, 200][..]), "a two-byte length");
        assert_eq!(wire.len(), 204);
        assert_eq!(socket.end_batched(&[]), Sent::Whole);
        assert_eq!(socket.lending().lent, Some(Opcode::Binary), "still lent");

        // The largest frame batched is LONE_FRAME bytes with its 4-byte header.
        let mut wire = Vec::new();
        assert!(socket.begin_batched(&Frame::Binary(vec![7; LONE_FRAME - 4].into()), &mut wire).is_some());
        assert_eq!(wire.len(), LONE_FRAME);
        assert_eq!(socket.end_batched(&[]), Sent::Whole);
        assert_eq!(
            socket.begin_batched(&Frame::Binary(vec![7; LONE_FRAME - 3].into()), &mut wire),
            None,
            "a larger frame is written without a copy"
        );

        assert_eq!(socket.take_back(), Ok(None));
    }

    #[tokio::test]
    async fn a_batched_send_whose_fate_is_not_known_leaves_the_socket_to_nobody() {
        let (socket, _client) = shared_socket().await;
        socket.lend(Opcode::Text);
        let frame = Frame::Text(Text::from("perhaps written in part"));
        assert!(socket.begin_batched(&frame, &mut Vec::new()).is_some());
        let session = a_session_waiting_for_the_batch(&socket);

        socket.end_batched_lost();

        assert_eq!(session.join().unwrap(), Err(Lost), "the session learns that it may write nothing");
        socket.lend(Opcode::Text);
        assert_eq!(socket.try_send(&frame), Sent::Not, "nor may the fanout, lent again or not");
        assert_eq!(socket.begin_batched(&frame, &mut Vec::new()), None);
    }
}
