//! The transport seam: what the session driver needs from a socket.
//!
//! The driver (`driver.rs`) is generic over [`Transport`], so protocol
//! state machines are tested over in-memory channels and served over
//! WebSockets and HTTP response streams (`stream`: HTTP-streaming and
//! Server-Sent Events) by the same code. A transport moves whole messages; which
//! messages a protocol accepts is the protocol's business. WebSocket pings
//! and pongs are answered below this seam.

use std::future::Future;

pub(crate) mod stream;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::Bytes;

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

/// A bidirectional message transport.
pub(crate) trait Transport: Send {
    /// The next message, or `None` once the client closed. Cancel-safe.
    fn recv(&mut self) -> impl Future<Output = Result<Option<Inbound>, TransportError>> + Send;

    /// Sends one text message.
    fn send_text(&mut self, text: Bytes) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// Sends text messages in order, in as few writes as the transport can.
    fn send_texts<I>(&mut self, texts: I) -> impl Future<Output = Result<(), TransportError>> + Send
    where
        I: IntoIterator<Item = Bytes> + Send,
        I::IntoIter: Send,
    {
        async move {
            for text in texts {
                self.send_text(text).await?;
            }
            Ok(())
        }
    }

    /// Sends one binary message.
    fn send_binary(&mut self, bytes: Bytes) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// Closes with a code and reason; errors are moot at this point.
    fn close(&mut self, code: u16, reason: String) -> impl Future<Output = ()> + Send;
}

/// How long the reply to a client's close frame may take to write.
const CLOSE_REPLY: std::time::Duration = std::time::Duration::from_secs(1);

/// A WebSocket accepted by axum.
#[derive(Debug)]
pub(crate) struct WsTransport(pub WebSocket);

impl Transport for WsTransport {
    async fn recv(&mut self) -> Result<Option<Inbound>, TransportError> {
        loop {
            return match self.0.recv().await {
                None => Ok(None),
                Some(Ok(Message::Close(_))) => {
                    // The stack has queued the close reply; the next read
                    // writes it and ends, completing the closing handshake
                    // (else the client sees an unclean close, 1006). A
                    // client that stopped reading is not waited for long.
                    // Boxed: inline, its timer would sit in every idle
                    // connection's task.
                    let _ = Box::pin(tokio::time::timeout(CLOSE_REPLY, self.0.recv())).await;
                    Ok(None)
                }
                Some(Ok(Message::Text(text))) => Ok(Some(Inbound::Text(Bytes::from(text)))),
                Some(Ok(Message::Binary(bytes))) => Ok(Some(Inbound::Binary(bytes))),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Err(e)) => Err(classify(e)),
            };
        }
    }

    async fn send_text(&mut self, text: Bytes) -> Result<(), TransportError> {
        self.0.send(text_message(text)?).await.map_err(classify)
    }

    async fn send_binary(&mut self, bytes: Bytes) -> Result<(), TransportError> {
        self.0.send(Message::Binary(bytes)).await.map_err(classify)
    }

    async fn send_texts<I>(&mut self, texts: I) -> Result<(), TransportError>
    where
        I: IntoIterator<Item = Bytes> + Send,
        I::IntoIter: Send,
    {
        use futures_util::SinkExt;
        // Frames gather in the write buffer (see `WRITE_BUFFER` in server.rs)
        // and leave together at the flush.
        for text in texts {
            self.0.feed(text_message(text)?).await.map_err(classify)?;
        }
        self.0.flush().await.map_err(classify)
    }

    async fn close(&mut self, code: u16, reason: String) {
        let frame = CloseFrame { code, reason: close_reason(reason).into() };
        let _ = self.0.send(Message::Close(Some(frame))).await;
    }
}

/// The most bytes a close frame's reason may have (RFC 6455: 125 bytes of
/// payload, two of them the code). A longer reason makes clients fail the
/// connection with 1002 and never see the code.
const MAX_CLOSE_REASON: usize = 123;

/// `reason`, cut at a character boundary to fit a close frame.
fn close_reason(mut reason: String) -> String {
    if reason.len() > MAX_CLOSE_REASON {
        let fits = (0..=MAX_CLOSE_REASON).rev().find(|at| reason.is_char_boundary(*at)).unwrap_or(0);
        reason.truncate(fits);
    }
    reason
}

fn text_message(text: Bytes) -> Result<Message, TransportError> {
    let text = axum::extract::ws::Utf8Bytes::try_from(text)
        .map_err(|_| TransportError::Broken("outgoing frame is not UTF-8".into()))?;
    Ok(Message::Text(text))
}

fn classify(error: axum::Error) -> TransportError {
    let inner = error.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => TransportError::TooLarge,
        _ => TransportError::Broken(inner.to_string()),
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
        async fn recv(&mut self) -> Result<Option<Inbound>, TransportError> {
            self.inbound.recv().await.transpose()
        }

        async fn send_text(&mut self, text: Bytes) -> Result<(), TransportError> {
            let text = String::from_utf8(text.to_vec()).expect("frames are UTF-8");
            self.outbound.send(Sent::Text(text)).map_err(|_| TransportError::Broken("closed".into()))
        }

        async fn send_binary(&mut self, bytes: Bytes) -> Result<(), TransportError> {
            self.outbound.send(Sent::Binary(bytes.to_vec())).map_err(|_| TransportError::Broken("closed".into()))
        }

        async fn close(&mut self, code: u16, reason: String) {
            let _ = self.outbound.send(Sent::Close(code, reason));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_are_cut_to_fit_a_close_frame_at_a_character_boundary() {
        assert_eq!(close_reason("short".into()), "short");
        assert_eq!(close_reason("x".repeat(123)), "x".repeat(123));
        assert_eq!(close_reason("x".repeat(500)).len(), 123);
        let accents = "é".repeat(100);
        let cut = close_reason(accents);
        assert_eq!(cut.len(), 122, "61 two-byte characters");
        assert!(cut.chars().all(|c| c == 'é'));
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
    /// BENCHMARKS.md). A budget that a change goes past should be raised
    /// only with a measurement that says the bytes are worth it.
    #[test]
    fn an_idle_connections_task_stays_within_its_budget() {
        let receive = size_of_output(|transport: &'static mut WsTransport| transport.recv());
        let centrifuge = size_of_output(|(transport, shared): (WsTransport, Arc<Shared>)| {
            session::run(transport, shared, None, session::Mode::Bidirectional, session::Encoding::Json)
        });

        assert!(receive <= 96, "a WebSocket receive is {receive} bytes");
        assert!(centrifuge <= 1200, "a Centrifuge session over a WebSocket is {centrifuge} bytes");
    }
}
