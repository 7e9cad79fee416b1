//! A subscribed client read on a plain thread, with no async runtime.
//!
//! The generator shares the machine with the server it measures. Read as
//! a tokio task, every delivery costs the reader a task wake-up and a
//! poll and the runtime's workers park and wake each other; read from a
//! thread that waits on epoll (`mio`) for many sockets, as `floor`'s
//! readers do, a delivery costs a `recv` and the parse. The client is
//! connected and subscribed as usual ([`BenchClient`](super::BenchClient)),
//! then [`detach`](super::BenchClient::detach)ed: its socket and the bytes
//! it read but did not hand out move here, and the same code as before
//! turns messages into publications and answers heartbeats.
//!
//! What a client needs only while its read is taken in lives with its
//! reader thread, not with the client: the buffer it reads into, the
//! messages of one read, and the channels' names its publications carry.
//! With 1,000 subscribers a client's own records are cold by its next
//! delivery, and each one more to fetch cost the generator a cache miss
//! per delivery.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::sync::Arc;

use super::{interpret, keep_publications, network, ws_error, ConnectError, Incoming, Link, Names, Protocol, Received};
use crate::sse::Events;
use crate::ws::{encode_message, Frames, WsError};

/// A client's connection, read with [`read`](Self::read) when epoll says
/// its socket is readable.
#[derive(Debug)]
pub struct Detached {
    stream: mio::net::TcpStream,
    decoder: Decoder,
    protocol: Protocol,
    /// Heartbeat answers the socket has not taken yet.
    owed: Vec<u8>,
}

/// What cuts a connection's bytes into messages.
#[derive(Debug)]
enum Decoder {
    Ws(Frames),
    Sse(Events),
}

/// Bytes asked of the kernel per read of an event stream.
const SSE_READ: usize = 4 * 1024;

thread_local! {
    /// What a reader thread's WebSocket clients read into while no part
    /// of a message waits in their own buffers ([`Frames::borrow`]).
    static READ_BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0; 64 * 1024]);

    /// What a reader thread's clients parse their messages into.
    static PARSED: RefCell<Parsed> = RefCell::default();
}

/// A reader thread's clients' messages, as they are parsed.
#[derive(Debug, Default)]
struct Parsed {
    /// The names of the channels their publications come from, one
    /// allocation per channel for them all.
    names: Names,
    /// The messages of the read being taken in.
    incoming: Vec<Incoming>,
}

impl Detached {
    pub(super) fn new(link: Link, protocol: Protocol) -> Result<Self, ConnectError> {
        let (stream, decoder) = match link {
            Link::Ws(ws) => {
                let (stream, frames) = ws.into_std().map_err(network)?;
                (stream, Decoder::Ws(frames))
            }
            Link::Sse(sse) => {
                let (stream, events) = sse.into_std().map_err(network)?;
                (stream, Decoder::Sse(events))
            }
        };
        Ok(Self { stream: mio::net::TcpStream::from_std(stream), decoder, protocol, owed: Vec::new() })
    }

    /// The channel named `name` as the publications this thread's clients
    /// read name it: the same allocation, so that comparing the two finds
    /// them equal by their pointers without reading the name.
    pub fn channel_named(name: &str) -> Arc<str> {
        PARSED.with_borrow_mut(|parsed| parsed.names.get(name))
    }

    /// The socket, to register with a `mio::Poll` (readable, edge-triggered).
    pub fn stream(&mut self) -> &mut mio::net::TcpStream {
        &mut self.stream
    }

    /// Makes one read from the socket and appends the bench publications
    /// of every whole message now read to `received`, answering heartbeats.
    /// True if the socket may hold more (the read filled the space given
    /// it); false once it is drained, when epoll tells of the next bytes.
    /// An error, the end of the stream included, ends the connection. A
    /// WebSocket client reads into its thread's [`READ_BUFFER`] when no
    /// part of a message waits in its own.
    pub fn read(&mut self, received: &mut Vec<Received>) -> Result<bool, ConnectError> {
        READ_BUFFER.with_borrow_mut(|shared| {
            let lent = match &mut self.decoder {
                Decoder::Ws(frames) => frames.borrow(shared),
                Decoder::Sse(_) => false,
            };
            let read = self.read_once(received);
            if let (true, Decoder::Ws(frames)) = (lent, &mut self.decoder) {
                frames.give_back(shared);
            }
            read
        })
    }

    fn read_once(&mut self, received: &mut Vec<Received>) -> Result<bool, ConnectError> {
        let filled = loop {
            let outcome = match &mut self.decoder {
                Decoder::Ws(frames) => {
                    let room = frames.room();
                    let space = room.len();
                    self.stream.read(room).map(|n| {
                        frames.filled(n);
                        (n, space)
                    })
                }
                Decoder::Sse(events) => {
                    let mut chunk = [0u8; SSE_READ];
                    self.stream.read(&mut chunk).map(|n| {
                        events.take(&chunk[..n]);
                        (n, SSE_READ)
                    })
                }
            };
            match outcome {
                Ok((0, _)) => return Err(ws_error(WsError::Closed("the connection ended".into()))),
                Ok((n, space)) => break n == space,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(network(e)),
            }
        };
        self.take_messages(received)?;
        Ok(filled)
    }

    /// Appends the publications of the whole messages already read (the
    /// bytes the client read before it was detached may hold some).
    pub fn take_messages(&mut self, received: &mut Vec<Received>) -> Result<(), ConnectError> {
        PARSED.with_borrow_mut(|Parsed { names, incoming }| {
            // What another client's failed message left is not this one's.
            incoming.clear();
            loop {
                let message = match &mut self.decoder {
                    Decoder::Ws(frames) => match frames.next(&mut self.owed).map_err(ws_error)? {
                        Some(place) => frames.message(place),
                        None => break,
                    },
                    Decoder::Sse(events) => match events.next().map_err(ws_error)? {
                        true => events.event(),
                        false => break,
                    },
                };
                if let Some(answer) = interpret(self.protocol, message, names, incoming)? {
                    encode_message(&mut self.owed, answer.binary, answer.payload);
                }
                // A detached client does not subscribe again to a channel the
                // server ended (nothing is allocated unless one was).
                keep_publications(self.protocol, incoming, received, &mut Vec::new());
            }
            Ok(())
        })?;
        self.write_owed()
    }

    /// Writes what the socket takes of the answers owed; the rest waits
    /// for the next read (heartbeats come seconds apart, and a socket
    /// that takes no 10-byte answer is one the server has stopped reading).
    fn write_owed(&mut self) -> Result<(), ConnectError> {
        while !self.owed.is_empty() {
            match self.stream.write(&self.owed) {
                Ok(n) => {
                    self.owed.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(network(e)),
            }
        }
        Ok(())
    }
}
