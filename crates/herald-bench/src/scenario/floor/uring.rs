//! The floor's writer over io_uring (`--writes uring`): the same rounds as
//! the blocking writer, but a round's sends go to the kernel in batches —
//! one `io_uring_enter` for up to [`RING_ENTRIES`] sends — instead of one
//! `write` system call each. It answers one question: how much of a
//! delivery's system time is the system call itself, which batched
//! submission saves, and how much is loopback TCP's work, which it cannot.
//!
//! This is the one module of the crate with `unsafe` code: io_uring reads
//! a send's bytes after the call that queued it returns, so queuing one is
//! unsafe in every Rust binding. [`send_all`] keeps the invariant that
//! makes it sound (below) and the tests check its results byte for byte.

#![allow(unsafe_code)]

use std::io;
use std::net::TcpStream;
use std::ops::Range;
use std::os::fd::AsRawFd;

use io_uring::{opcode, types, IoUring};

use super::{go_round, RoundWriter, Rounds, Schedule};

/// Sends queued per `io_uring_enter`.
const RING_ENTRIES: u32 = 1024;

/// `errno` for a call interrupted by a signal, and for a send to retry.
const EINTR: i32 = 4;
const EAGAIN: i32 = 11;

/// The batched writer: a round's sends queued, then sent by [`send_all`].
struct Batched<'a> {
    ring: IoUring,
    sockets: Vec<TcpStream>,
    frames: &'a [u8],
    round: Vec<Pending>,
}

impl RoundWriter for Batched<'_> {
    fn write(&mut self, connection: usize, bytes: Range<usize>) -> io::Result<()> {
        self.round.push(Pending { socket: connection, bytes });
        Ok(())
    }

    fn end_round(&mut self) -> io::Result<()> {
        send_all(&mut self.ring, &self.sockets, self.frames, &mut self.round)
    }
}

/// One writer thread, as [`super::write_share`], its sends batched.
pub(super) fn write_share(
    sockets: Vec<TcpStream>,
    schedule: Schedule,
    frames: &[u8],
    frame_bytes: usize,
) -> io::Result<Rounds> {
    let connections = sockets.len();
    let mut writer = Batched { ring: IoUring::new(RING_ENTRIES)?, sockets, frames, round: Vec::new() };
    go_round(connections, schedule, frame_bytes, &mut writer)
}

/// Bytes of `frames` still to go to a socket.
#[derive(Debug)]
struct Pending {
    socket: usize,
    bytes: Range<usize>,
}

/// Sends every `sends` whole, a batch of at most [`RING_ENTRIES`] per
/// system call; what a socket did not take goes in the next batch, so a
/// socket's bytes leave in order (each socket has one send per round).
///
/// Soundness: every queued send points into `frames` and at a socket of
/// `sockets`, both borrowed for the whole call, and a batch is not left
/// until all of its completions are reaped — on error too — so the kernel
/// never reads a buffer or uses a descriptor that has gone.
fn send_all(ring: &mut IoUring, sockets: &[TcpStream], frames: &[u8], sends: &mut Vec<Pending>) -> io::Result<()> {
    let mut batch = Vec::with_capacity(sends.len().min(RING_ENTRIES as usize));
    while !sends.is_empty() {
        let take = sends.len().min(RING_ENTRIES as usize);
        batch.clear();
        batch.extend(sends.drain(..take));
        let mut queued = 0;
        for (tag, send) in batch.iter().enumerate() {
            let (Some(socket), Some(bytes)) = (sockets.get(send.socket), frames.get(send.bytes.clone())) else {
                return Err(io::Error::other("a send outside the writer's sockets or frames"));
            };
            let length = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
            let entry =
                opcode::Send::new(types::Fd(socket.as_raw_fd()), bytes.as_ptr(), length).build().user_data(tag as u64);
            // SAFETY: see the function's doc: `bytes` and `socket` outlive
            // the batch, which is reaped whole before this call returns.
            // The queue has room: a batch is at most RING_ENTRIES long.
            if unsafe { ring.submission().push(&entry) }.is_err() {
                break;
            }
            queued += 1;
        }
        let mut first_error = None;
        let mut reaped = 0;
        while reaped < queued {
            match ring.submit_and_wait(queued - reaped) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(EINTR) => continue,
                // Nothing more can be reaped: the ring goes with the
                // thread, and the kernel cancels what it still holds.
                Err(e) => return Err(e),
            }
            for completion in ring.completion() {
                reaped += 1;
                let Some(send) = batch.get_mut(completion.user_data() as usize) else { continue };
                match completion.result() {
                    taken if taken >= 0 => send.bytes.start += taken as usize,
                    e if e == -EINTR || e == -EAGAIN => {}
                    e => {
                        first_error.get_or_insert(io::Error::from_raw_os_error(-e));
                    }
                }
            }
        }
        if let Some(error) = first_error {
            return Err(error);
        }
        // What was not queued, or not taken whole, goes again.
        sends.splice(0..0, batch.drain(..).filter(|send| !send.bytes.is_empty()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::super::tests::loopback_pairs;
    use super::*;

    #[test]
    fn more_sends_than_the_ring_holds_and_more_bytes_than_a_socket_takes_all_arrive_whole() {
        let count = RING_ENTRIES as usize + 5;
        let (readers, sockets) = loopback_pairs(count);
        // Larger than a loopback socket's buffers, so sends come back short
        // or wait for the reader.
        let bytes: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
        let mut readers = readers;
        let _quiet = readers.split_off(2);
        let reading: Vec<_> = readers
            .into_iter()
            .map(|mut reader| {
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    reader.read_to_end(&mut got).map(|_| got)
                })
            })
            .collect();
        let mut ring = IoUring::new(RING_ENTRIES).expect("io_uring is available");
        // Two sockets get the large buffer, the rest a few bytes each.
        let mut sends: Vec<Pending> = (0..count)
            .map(|socket| Pending { socket, bytes: if socket < 2 { 0..bytes.len() } else { 0..7 } })
            .collect();
        send_all(&mut ring, &sockets, &bytes, &mut sends).expect("sends");
        assert!(sends.is_empty());
        drop(sockets);
        for reader in reading {
            assert!(reader.join().expect("reader").expect("reads") == bytes, "the large buffer arrives whole");
        }
    }
}
