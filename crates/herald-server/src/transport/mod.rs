//! The transport seam: what the session driver needs from a socket.
//!
//! The driver (`driver.rs`) is generic over [`Transport`], so protocol
//! state machines are tested over in-memory channels and served over
//! WebSockets and HTTP response streams (`stream`: HTTP-streaming and
//! Server-Sent Events) by the same code. A transport moves whole messages; which
//! messages a protocol accepts is the protocol's business. WebSocket pings,
//! pongs and the closing handshake are handled below this seam, by
//! Herald's own WebSocket (`websocket`).

use std::future::{poll_fn, Future};
use std::sync::Arc;
use std::task::{Context, Poll};

pub(crate) mod io;
pub(crate) mod posted;
pub(crate) mod stream;
pub(crate) mod websocket;

use bytes::Bytes;
use herald_core::{Direct, Text};

pub(crate) use websocket::{WebSocket, WsUpgrade};

/// Something a client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Inbound {
    /// A text message (a whole message, however it was fragmented).
    Text(Bytes),
    /// A binary message.
    Binary(Bytes),
}

/// Why a transport stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TransportError {
    /// The client sent a message above the configured size limit.
    #[error("message too large")]
    TooLarge,
    /// The connection broke.
    #[error("transport failed: {0}")]
    Broken(String),
}

/// What starting a send did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Started {
    /// Everything is written.
    Written,
    /// The socket did not take all of it: the rest is owed, and
    /// [`Transport::send_owed`] writes it.
    Owed,
}

/// A bidirectional message transport.
pub(crate) trait Transport: Send {
    /// What the transport is called in the metrics: `websocket`,
    /// `http_stream`, `sse`, `uni_http_stream` or `uni_sse`.
    fn name(&self) -> &'static str;

    /// Starts sending text messages, in order, without a future: writes
    /// what the socket takes now and keeps the rest owed. The text was
    /// checked to be UTF-8 where it was made (once for a frame fanout
    /// shares), so it is not checked here. The driver's
    /// common case, a write the socket takes at once, then costs nothing
    /// more; only what is owed needs [`Transport::send_owed`].
    fn start_texts<I>(&mut self, cx: &mut Context<'_>, texts: I) -> Result<Started, TransportError>
    where
        I: IntoIterator<Item = Text>;

    /// Starts sending one binary message, as [`Transport::start_texts`].
    fn start_binary(&mut self, cx: &mut Context<'_>, bytes: Bytes) -> Result<Started, TransportError>;

    /// Starts writing what is owed (a start's rest, or the rest of a frame
    /// the fanout began on a socket the session lent), as a start.
    fn start_owed(&mut self, cx: &mut Context<'_>) -> Result<Started, TransportError>;

    /// Writes what a start left owed (nothing: at once).
    fn send_owed(&mut self) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// The next message, or `None` once the client closed. Cancel-safe.
    fn recv(&mut self) -> impl Future<Output = Result<Option<Inbound>, TransportError>> + Send;

    /// Sends one text message.
    fn send_text(&mut self, text: Text) -> impl Future<Output = Result<(), TransportError>> + Send
    where
        Self: Sized,
    {
        self.send_texts(std::iter::once(text))
    }

    /// Sends text messages in order, in as few writes as the transport
    /// can: started, then what is owed.
    fn send_texts<I>(&mut self, texts: I) -> impl Future<Output = Result<(), TransportError>> + Send
    where
        Self: Sized,
        I: IntoIterator<Item = Text> + Send,
    {
        send_started(self, |transport, cx| transport.start_texts(cx, texts))
    }

    /// Closes with a code and reason; errors are moot at this point.
    fn close(&mut self, code: u16, reason: String) -> impl Future<Output = ()> + Send;

    /// The socket the fanout may write to while the session lends it (see
    /// `herald_core::Direct`), where the transport has one.
    fn direct(&self) -> Option<Arc<dyn Direct>> {
        None
    }

    /// Lends the socket to the fanout, for messages that are binary ones
    /// when `binary`, until the transport next writes; not while something
    /// is half written.
    fn lend(&mut self, _binary: bool) {}
}

/// Runs `start` with the task's context, then writes what it left owed.
pub(crate) async fn send_started<T, F>(transport: &mut T, start: F) -> Result<(), TransportError>
where
    T: Transport,
    F: FnOnce(&mut T, &mut Context<'_>) -> Result<Started, TransportError> + Send,
{
    let mut start = Some(start);
    let started = poll_fn(|cx| Poll::Ready(start.take().map_or(Ok(Started::Written), |start| start(transport, cx))));
    match started.await? {
        Started::Written => Ok(()),
        Started::Owed => transport.send_owed().await,
    }
}

/// An in-memory transport for tests: what the "client" sends arrives through
/// `inbound`, what the session sends leaves through `outbound`.
#[cfg(test)]
pub(crate) mod memory {
    use super::*;
    use tokio::sync::mpsc;

    /// What the session did, as seen by the test's client.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) enum Sent {
        Text(String),
        Binary(Vec<u8>),
        Close(u16, String),
    }

    #[derive(Debug)]
    pub(crate) struct MemoryTransport {
        pub inbound: mpsc::UnboundedReceiver<Result<Inbound, TransportError>>,
        pub outbound: mpsc::UnboundedSender<Sent>,
    }

    impl Transport for MemoryTransport {
        fn name(&self) -> &'static str {
            "memory"
        }

        fn start_texts<I>(&mut self, _: &mut Context<'_>, texts: I) -> Result<Started, TransportError>
        where
            I: IntoIterator<Item = Text>,
        {
            for text in texts {
                let text = String::from_utf8(text.as_bytes().to_vec()).expect("frames are UTF-8");
                self.outbound.send(Sent::Text(text)).map_err(|_| TransportError::Broken("closed".into()))?;
            }
            Ok(Started::Written)
        }

        fn start_binary(&mut self, _: &mut Context<'_>, bytes: Bytes) -> Result<Started, TransportError> {
            self.outbound.send(Sent::Binary(bytes.to_vec())).map_err(|_| TransportError::Broken("closed".into()))?;
            Ok(Started::Written)
        }

        fn start_owed(&mut self, _: &mut Context<'_>) -> Result<Started, TransportError> {
            Ok(Started::Written)
        }

        async fn send_owed(&mut self) -> Result<(), TransportError> {
            Ok(())
        }

        async fn recv(&mut self) -> Result<Option<Inbound>, TransportError> {
            self.inbound.recv().await.transpose()
        }

        async fn close(&mut self, code: u16, reason: String) {
            let _ = self.outbound.send(Sent::Close(code, reason));
        }
    }
}

#[cfg(test)]
mod size_tests {
    use std::sync::Arc;

    use super::*;
    use crate::centrifuge::session::{self, Shared};

    /// The size of what `f` returns, without calling it.
    fn size_of_output<A, Fut, F: FnOnce(A) -> Fut>(_: F) -> usize {
        std::mem::size_of::<Fut>()
    }

    /// Every idle connection holds its session's future: a few bytes more
    /// there is a few bytes more per connection (the idle-memory figure in
    /// BENCHMARKS.md). tokio allocates a task in steps of 128 bytes and
    /// adds 96 bytes of its own to the future: at up to 392 bytes this
    /// future (with the guard and permit the server maps onto it, 24
    /// bytes) keeps its task at 512. A budget that a change goes
    /// past should be raised only with a measurement that says the bytes
    /// are worth it.
    #[test]
    fn an_idle_connections_task_stays_within_its_budget() {
        let receive = size_of_output(|transport: &'static mut WebSocket| transport.recv());
        let centrifuge = size_of_output(|(transport, shared): (WebSocket, Arc<Shared>)| {
            session::run(transport, shared, None, session::Mode::Bidirectional, session::Encoding::Json)
        });
        type Pushers = (WebSocket, Arc<crate::pusher::Frontend>, String, crate::pusher::session::ConnectQuery);
        let pusher = size_of_output(|(transport, frontend, key, query): Pushers| {
            crate::pusher::session::run(transport, frontend, key, query)
        });

        assert!(receive <= 48, "a WebSocket receive is {receive} bytes");
        assert!(centrifuge <= 392, "a Centrifuge session over a WebSocket is {centrifuge} bytes");
        assert!(pusher <= 392, "a Pusher session over a WebSocket is {pusher} bytes");
    }

    /// A stream's session holds its guard and permit in its transport, and
    /// stays in the same task step as a WebSocket's: at most the
    /// WebSocket's budget and the 24 bytes mapped onto it (one step up
    /// is 128 bytes more for every SSE client).
    #[test]
    fn an_idle_streams_task_stays_within_a_websockets_budget() {
        type Held = (crate::http::Tracked, Option<axum::Extension<Arc<crate::http::admission::Permit>>>);
        type Stream = stream::StreamTransport<Held>;
        let receive = size_of_output(|transport: &'static mut Stream| transport.recv());
        let session = |mode| {
            move |(transport, shared): (Stream, Arc<Shared>)| {
                session::run(transport, shared, None, mode, session::Encoding::Json)
            }
        };
        let unidirectional = size_of_output(session(session::Mode::Unidirectional));
        let emulated = size_of_output(session(session::Mode::Emulated));

        assert!(receive <= 48, "a stream's receive is {receive} bytes");
        assert!(unidirectional <= 416, "a uni-directional stream's session is {unidirectional} bytes");
        assert!(emulated <= 416, "an emulated stream's session is {emulated} bytes");
    }
}
