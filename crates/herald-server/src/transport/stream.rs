//! An HTTP response that stays open as a transport: HTTP-streaming (one
//! message per line) and Server-Sent Events (one message per event).
//!
//! What the session sends goes through a small bounded channel into the
//! response body, so a client that stops reading stops the body, fills the
//! channel and blocks the session's write: the driver then closes it as
//! slow, as it would a WebSocket. What the client sends arrives through
//! another channel: the request that opened the stream (its connect
//! command) and, for bidirectional emulation, the commands it posts to
//! `/emulation` afterwards. A uni-directional stream gets only the first.
//!
//! A Protobuf stream carries length-delimited messages as they are, in
//! both directions.
//!
//! A stream has no close frame: the session's close code goes out as a
//! Centrifuge disconnect push, and then the body ends. A uni-directional
//! event stream also names, in its events' ids, where the client is in
//! each channel (`centrifuge::positions`), for `EventSource` to send back
//! when it reconnects.

use std::convert::Infallible;
use std::task::Context;

use axum::body::Body;
use bytes::{BufMut, Bytes, BytesMut};
use herald_core::Text;
use tokio::sync::mpsc;

use super::{Inbound, Started, Transport, TransportError};
use crate::centrifuge::positions::Positions;

/// Body chunks waiting for the client to read them. Each is one write of
/// the session's (everything it had queued), so a few are plenty; the
/// session's outbox holds the rest and decides when the client is slow.
const BODY_CHUNKS: usize = 4;

/// How messages are written into the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// HTTP-streaming: each message ends with a newline.
    Lines,
    /// Server-Sent Events: each line of a message is a `data:` field, and
    /// a blank line ends the event.
    Events,
    /// Protobuf HTTP-streaming: length-delimited messages end to end, in
    /// and out.
    Binary,
}

/// How the session's close is told to the client before the stream ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closing {
    /// As a push, for a client speaking the bidirectional protocol.
    Push,
    /// As a bare disconnect object, for a uni-directional client.
    Bare,
}

/// The session's side of a streamed response.
#[derive(Debug)]
pub(crate) struct StreamTransport<Held: Send = ()> {
    body: mpsc::Sender<Bytes>,
    inbound: mpsc::Receiver<Bytes>,
    /// False once nothing more can arrive from the client.
    listening: bool,
    format: Format,
    closing: Closing,
    /// For a uni-directional event stream: its positions, sent as event ids.
    positions: Option<Box<Positions>>,
    /// A chunk the body had no room for when a send started.
    owed: Option<Bytes>,
    /// Kept for as long as the session runs (its emulation registration).
    _held: Held,
}

/// A transport and the response body it writes into.
pub(crate) fn open<Held: Send>(
    format: Format,
    closing: Closing,
    inbound: mpsc::Receiver<Bytes>,
    held: Held,
) -> (StreamTransport<Held>, Body) {
    let (body, mut chunks) = mpsc::channel::<Bytes>(BODY_CHUNKS);
    let stream =
        futures_util::stream::poll_fn(move |cx| chunks.poll_recv(cx).map(|chunk| chunk.map(Ok::<_, Infallible>)));
    // A uni-directional event stream's ids let `EventSource` recover.
    let positions = (format == Format::Events && closing == Closing::Bare).then(Box::default);
    let transport =
        StreamTransport { body, inbound, listening: true, format, closing, positions, owed: None, _held: held };
    (transport, Body::from_stream(stream))
}

impl<Held: Send> StreamTransport<Held> {
    /// Appends `message` to `out` as this stream writes it.
    fn put_frame(&mut self, out: &mut BytesMut, message: &[u8]) {
        if let Some(id) = self.positions.as_mut().and_then(|positions| positions.observe(message)) {
            out.put_slice(b"id: ");
            out.put_slice(id.as_bytes());
            out.put_u8(b'\n');
        }
        match self.format {
            Format::Lines => {
                out.put_slice(message);
                out.put_u8(b'\n');
            }
            Format::Binary => out.put_slice(message),
            Format::Events => {
                for line in message.split(|byte| *byte == b'\n') {
                    out.put_slice(b"data: ");
                    out.put_slice(line.strip_suffix(b"\r").unwrap_or(line));
                    out.put_u8(b'\n');
                }
                out.put_u8(b'\n');
            }
        }
    }

    /// `message` alone, as this stream writes it.
    fn frame(&mut self, message: &[u8]) -> Bytes {
        let mut out = BytesMut::with_capacity(message.len().saturating_add(16));
        self.put_frame(&mut out, message);
        out.freeze()
    }

    async fn write(&mut self, chunk: Bytes) -> Result<(), TransportError> {
        self.send_owed().await?;
        self.body.send(chunk).await.map_err(|_| gone())
    }

    /// Hands `chunk` to the body if it has room now, behind anything
    /// owed; keeps it owed if not.
    fn start(&mut self, chunk: Bytes) -> Result<Started, TransportError> {
        let chunk = match self.owed.take() {
            Some(owed) => [owed, chunk].concat().into(),
            None => chunk,
        };
        match self.body.try_send(chunk) {
            Ok(()) => Ok(Started::Written),
            Err(mpsc::error::TrySendError::Full(chunk)) => {
                self.owed = Some(chunk);
                Ok(Started::Owed)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(gone()),
        }
    }
}

fn gone() -> TransportError {
    TransportError::Broken("the client closed the stream".into())
}

impl<Held: Send> Transport for StreamTransport<Held> {
    fn name(&self) -> &'static str {
        match (self.format, self.closing) {
            (Format::Lines | Format::Binary, Closing::Push) => "http_stream",
            (Format::Events, Closing::Push) => "sse",
            (Format::Lines | Format::Binary, Closing::Bare) => "uni_http_stream",
            (Format::Events, Closing::Bare) => "uni_sse",
        }
    }

    async fn recv(&mut self) -> Result<Option<Inbound>, TransportError> {
        loop {
            tokio::select! {
                message = self.inbound.recv(), if self.listening => match message {
                    Some(message) if self.format == Format::Binary => return Ok(Some(Inbound::Binary(message))),
                    Some(message) => return Ok(Some(Inbound::Text(message))),
                    None => self.listening = false,
                },
                // The client went away: the body was dropped.
                _ = self.body.closed() => return Ok(None),
            }
        }
    }

    fn start_texts<I>(&mut self, _: &mut Context<'_>, texts: I) -> Result<Started, TransportError>
    where
        I: IntoIterator<Item = Text>,
    {
        let mut chunk = BytesMut::new();
        for text in texts {
            self.put_frame(&mut chunk, text.as_bytes());
        }
        match chunk.is_empty() && self.owed.is_none() {
            true => Ok(Started::Written),
            false => self.start(chunk.freeze()),
        }
    }

    /// Binary messages (Protobuf) are length-delimited already: they go
    /// into the stream as they are.
    fn start_binary(&mut self, _: &mut Context<'_>, bytes: Bytes) -> Result<Started, TransportError> {
        self.start(bytes)
    }

    async fn send_owed(&mut self) -> Result<(), TransportError> {
        match self.owed.take() {
            Some(chunk) => self.body.send(chunk).await.map_err(|_| gone()),
            None => Ok(()),
        }
    }

    async fn close(&mut self, code: u16, reason: String) {
        let disconnect = serde_json::json!({ "code": code, "reason": reason });
        let message = match self.closing {
            Closing::Push => serde_json::json!({ "push": { "disconnect": disconnect } }),
            Closing::Bare => serde_json::json!({ "disconnect": disconnect }),
        };
        let frame = match self.format {
            Format::Binary => {
                crate::centrifuge::protobuf::transcode(message.to_string().as_bytes()).unwrap_or_default()
            }
            Format::Lines | Format::Events => self.frame(message.to_string().as_bytes()),
        };
        let _ = self.write(frame).await;
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    async fn next_chunk(body: &mut Body) -> String {
        let frame = body.frame().await.expect("a chunk").expect("no error");
        String::from_utf8(frame.into_data().expect("data").to_vec()).expect("UTF-8")
    }

    #[tokio::test]
    async fn events_put_every_line_in_a_data_field_and_end_with_a_blank_line() {
        let (_to_session, inbound) = mpsc::channel(1);
        let (mut transport, mut body) = open(Format::Events, Closing::Push, inbound, ());
        transport.send_text(Text::from("{\"id\":1}\n{\"push\":{}}")).await.unwrap();
        assert_eq!(next_chunk(&mut body).await, "data: {\"id\":1}\ndata: {\"push\":{}}\n\n");
    }

    #[tokio::test]
    async fn lines_end_each_message_with_a_newline_and_a_close_is_a_disconnect_push() {
        let (_to_session, inbound) = mpsc::channel(1);
        let (mut transport, mut body) = open(Format::Lines, Closing::Push, inbound, ());
        transport.send_text(Text::from("{}")).await.unwrap();
        transport.close(3001, "shutdown".into()).await;
        drop(transport);
        assert_eq!(next_chunk(&mut body).await, "{}\n");
        assert_eq!(
            next_chunk(&mut body).await,
            "{\"push\":{\"disconnect\":{\"code\":3001,\"reason\":\"shutdown\"}}}\n"
        );
        assert!(body.frame().await.is_none(), "the body ends with the transport");
    }

    #[tokio::test]
    async fn a_unidirectional_close_is_a_bare_disconnect() {
        let (_to_session, inbound) = mpsc::channel(1);
        let (mut transport, mut body) = open(Format::Events, Closing::Bare, inbound, ());
        transport.close(3501, "bad request".into()).await;
        assert_eq!(
            next_chunk(&mut body).await,
            "data: {\"disconnect\":{\"code\":3501,\"reason\":\"bad request\"}}\n\n"
        );
    }

    #[tokio::test]
    async fn a_uni_directional_event_stream_names_its_positions_in_event_ids() {
        let (_to_session, inbound) = mpsc::channel(1);
        let (mut transport, mut body) = open(Format::Events, Closing::Bare, inbound, ());
        let connect = Text::from(r#"{"connect":{"subs":{"a":{"epoch":"e","offset":1}}}}"#);
        let publication = Text::from(r#"{"channel":"a","pub":{"data":{},"offset":2}}"#);
        transport.send_texts([connect.clone(), Text::from("{}"), publication.clone()]).await.unwrap();
        let expected = [
            "id: {\"a\":[\"e\",1]}\ndata: ".to_owned() + std::str::from_utf8(connect.as_bytes()).unwrap() + "\n\n",
            "data: {}\n\n".to_owned(),
            "id: {\"a\":[\"e\",2]}\ndata: ".to_owned() + std::str::from_utf8(publication.as_bytes()).unwrap() + "\n\n",
        ];
        assert_eq!(next_chunk(&mut body).await, expected.concat(), "one chunk, an event per push");
    }

    #[tokio::test]
    async fn the_client_going_away_ends_the_receive_even_after_its_last_message() {
        let (to_session, inbound) = mpsc::channel(1);
        let (mut transport, body) = open(Format::Lines, Closing::Push, inbound, ());
        to_session.send(Bytes::from_static(b"{\"id\":1,\"connect\":{}}")).await.unwrap();
        drop(to_session);
        assert_eq!(transport.recv().await, Ok(Some(Inbound::Text(Bytes::from_static(b"{\"id\":1,\"connect\":{}}")))));
        drop(body);
        assert_eq!(transport.recv().await, Ok(None));
    }

    #[tokio::test]
    async fn a_send_the_body_has_no_room_for_is_owed_and_goes_out_first_once_it_has() {
        let (_to_session, inbound) = mpsc::channel(1);
        let (mut transport, mut body) = open(Format::Lines, Closing::Push, inbound, ());
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        for n in 0..BODY_CHUNKS {
            let text = Text::from(format!("{{\"n\":{n}}}"));
            assert_eq!(transport.start_texts(&mut cx, [text]), Ok(Started::Written));
        }
        let owed = transport.start_texts(&mut cx, [Text::from("{\"owed\":1}")]);
        assert_eq!(owed, Ok(Started::Owed), "the body is full");
        let more = transport.start_texts(&mut cx, [Text::from("{\"owed\":2}")]);
        assert_eq!(more, Ok(Started::Owed), "still full: kept behind what is owed");

        for n in 0..BODY_CHUNKS {
            assert_eq!(next_chunk(&mut body).await, format!("{{\"n\":{n}}}\n"));
        }
        transport.send_owed().await.unwrap();
        assert_eq!(next_chunk(&mut body).await, "{\"owed\":1}\n{\"owed\":2}\n", "in order, whole");
        transport.send_text(Text::from("{}")).await.unwrap();
        assert_eq!(next_chunk(&mut body).await, "{}\n");
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_blocks_the_sessions_writes() {
        let (_to_session, inbound) = mpsc::channel(1);
        let (mut transport, _unread) = open(Format::Lines, Closing::Push, inbound, ());
        for _ in 0..BODY_CHUNKS {
            transport.send_text(Text::from("{}")).await.unwrap();
        }
        let blocked =
            tokio::time::timeout(std::time::Duration::from_millis(50), transport.send_text("{}".into())).await;
        assert!(blocked.is_err(), "the write waits for the client (and the driver's timeout)");
    }
}
