//! A WebSocket's TCP socket, shared with the fanout: while the session
//! lends it, a publication's frame is written to it by whoever delivers
//! the publication, without waking the session (see `herald_core::Direct`).
//!
//! The session lends the socket only with nothing half written, and takes
//! it back before it writes anything itself (`WebSocket::reclaim`). A
//! frame the socket took only part of is kept here; the session writes its
//! rest before anything of its own, so frames are never interleaved.

use std::io;
use std::sync::{Mutex, MutexGuard, PoisonError};

use herald_core::{Direct, Frame, Sent};
use tokio::net::TcpStream;

use super::frame::{self, Opcode};
use super::{LONE_FRAME, SMALL_FRAME};

/// A plain TCP socket under a WebSocket.
#[derive(Debug)]
pub(crate) struct SharedTcp {
    pub(crate) stream: TcpStream,
    lending: Mutex<Lending>,
}

#[derive(Debug, Default)]
struct Lending {
    /// The kind of message the fanout may write while the socket is lent
    /// (text or binary, as the session's protocol speaks); `None` while the
    /// session holds it.
    lent: Option<Opcode>,
    /// The rest of a frame the socket took only part of.
    rest: Option<Box<[u8]>>,
}

impl SharedTcp {
    pub(crate) fn new(stream: TcpStream) -> Self {
        Self { stream, lending: Mutex::default() }
    }

    fn lending(&self) -> MutexGuard<'_, Lending> {
        self.lending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Lends the socket for messages of `kind`.
    pub(crate) fn lend(&self, kind: Opcode) {
        let mut lending = self.lending();
        if lending.rest.is_none() {
            lending.lent = Some(kind);
        }
    }

    /// Takes the socket back, with the rest of a frame begun while it was
    /// lent, which must be written before anything else.
    pub(crate) fn take_back(&self) -> Option<Box<[u8]>> {
        let mut lending = self.lending();
        lending.lent = None;
        lending.rest.take()
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
}

impl Direct for SharedTcp {
    fn try_send(&self, frame: &Frame) -> Sent {
        let mut lending = self.lending();
        let (opcode, payload) = match frame {
            Frame::Text(text) => (Opcode::Text, text.as_bytes()),
            Frame::Binary(bytes) => (Opcode::Binary, &bytes[..]),
        };
        // A frame of the other kind is a bug the session logs; an empty
        // one, a message it skips.
        if lending.lent != Some(opcode) || payload.is_empty() {
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
}
