//! The session driver: one loop that runs every client connection,
//! whatever its protocol and transport.
//!
//! A session is one task that always listens to three things at once: the
//! connection's outbox (replies, publications, server-side events, pings,
//! and its closing, by the hub or by the node's shutdown: see
//! [`Sessions`]), the client's messages and the protocol's timers. It holds
//! no buffer while idle. The protocol ([`Protocol`])
//! decodes and handles what the client sends, encodes server-side events,
//! keeps its timers and names its close codes; the transport
//! ([`Transport`]) moves messages. Neither brings a loop of its own.
//! The client's side is read, and the timer polled, only when the socket
//! or the timer has woken the session: the wake-ups of the outbox (one
//! per delivery the session writes) poll neither again (`NextTurn`).
//!
//! At the top of its loop, once its connection is connected, the session
//! lends its socket to the fanout ([`Transport::lend`]; see
//! `herald_core::Direct`), which then writes a publication's lone frame
//! itself, without waking the session, until a drain or the transport's
//! next write takes the socket back (a turn that handles a message or the
//! timer, and writes nothing, leaves it lent, unless its protocol takes it
//! back to put a reply ahead of what the fanout queues meanwhile:
//! `Outbox::reclaim`).
//!
//! Everything a session sends goes through the outbox, pings and replies
//! included, so it is bounded. The session writes it by one guarded write:
//! a write that blocks is abandoned when the outbox overflows behind it or
//! after `write_timeout`, and the client is closed as slow. (The fanout's
//! own writes never block: a frame the socket does not take at once is
//! left to the session.) A write takes
//! everything queued; the protocol's [`Framing`] says how several messages
//! share it.
//!
//! When the session ends because of what the client sent, what is queued
//! (an error that explains the close) is written first; then the transport
//! is closed with the protocol's code for the reason, and the connection
//! leaves the hub. That cleanup runs even if handling the connection
//! panicked: the client is closed as after an internal error (it
//! reconnects), and no connection is left counted in the hub.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::FutureExt;
use tokio::time::Instant;

use herald_core::{Alarms, ConnEvent, Connection, Drained, Frame, Hub, Outbox, Outgoing, Queued, Text, Waiting};
use herald_engine::DisconnectReason;

use crate::transport::{Inbound, Started, Transport, TransportError};

#[cfg(test)]
mod lending_tests;
mod sessions;
pub(crate) use sessions::Sessions;

/// Deadlines further ahead than this are as good as never (and an instant
/// that far ahead may not exist).
const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The instant `wait` after `from`, for timers whose length comes from the
/// configuration, a token or the API: one too far ahead to be an instant
/// is as good as never.
pub(crate) fn after(from: Instant, wait: Duration) -> Instant {
    from.checked_add(wait.min(NEVER)).unwrap_or(from)
}

/// How several messages queued at once share a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// Joined by newlines into one transport message (Centrifuge JSON).
    Lines,
    /// One transport message each, all in one write (Pusher).
    Messages,
    /// Concatenated into one binary transport message (Centrifuge
    /// Protobuf, whose messages are length-delimited).
    Binary,
}

/// One client protocol, as the driver runs it. (`Sync`: the session's
/// timer reads the protocol's deadline while its next turn is awaited.)
pub(crate) trait Protocol: Send + Sync {
    /// How messages queued together are written.
    fn framing(&self) -> Framing;
    /// The protocol's name in metrics.
    const NAME: &'static str;

    /// What the driver reads of the session.
    fn parts(&self) -> Parts<'_>;

    /// When [`Protocol::on_timer`] is next due.
    fn next_deadline(&self) -> Instant;

    /// Handles a message from the client. Replies go into the outbox.
    /// `Ok(Some(rest))` when the replies filled the outbox before the
    /// message was done: the driver writes what is queued, then hands
    /// `rest` back, before it reads another message (so a client's own
    /// requests never overflow its outbox, and the client waits instead).
    /// An error ends the session with that reason.
    fn on_message(
        &mut self,
        message: Inbound,
    ) -> impl Future<Output = Result<Option<Inbound>, DisconnectReason>> + Send;

    /// Handles a due timer (pings, expiries). An error ends the session.
    fn on_timer(&mut self) -> impl Future<Output = Result<(), DisconnectReason>> + Send;

    /// Encodes a server-side event, or `None` when the protocol has no
    /// message for it. An error ends the session.
    fn on_event(&mut self, event: ConnEvent) -> Result<Option<Frame>, DisconnectReason>;

    /// The close code and reason the client is told for `reason`.
    fn close_code(&self, reason: &DisconnectReason) -> (u16, String);
}

/// What the driver reads of a session.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Parts<'a> {
    /// What every session of the node shares with the driver.
    pub(crate) settings: &'a DriverSettings,
    /// The connection's outbox: everything the session sends goes through it.
    pub(crate) outbox: &'a Arc<Outbox>,
    /// The connection this session registered with the hub, once it has one.
    pub(crate) connection: Option<&'a Arc<Connection>>,
}

/// What every session of a node shares with the driver.
#[derive(Debug, Clone)]
pub(crate) struct DriverSettings {
    /// The node's hub, which a connection leaves when its session ends.
    pub(crate) hub: Arc<Hub>,
    /// How long one write may block before the client is closed as slow.
    pub(crate) write_timeout: Duration,
    /// The node's running sessions, which it closes when it shuts down.
    pub(crate) sessions: Arc<Sessions>,
    /// The node's metrics: the driver counts how sessions end.
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    /// The events webhooks, told of connections opened and closed.
    pub(crate) events: Option<Arc<crate::events::HubWebhooks>>,
    /// The node's one timer, which keeps every session's deadline.
    pub(crate) alarms: Alarms,
}

/// Runs a session to its end, then closes the transport and takes the
/// connection out of the hub.
///
/// Not an `async fn`: that would keep the transport and the protocol in the
/// future twice (as arguments and as the locals they move into), and this
/// future lives as long as the connection. The async block uses them in
/// place, and everything the node shares stays behind the protocol's
/// [`Protocol::parts`]. What follows the session's end runs in a boxed
/// future: inline, its locals would take room in every running session's
/// task.
#[allow(clippy::manual_async_fn)] // deliberately not `async fn`: see above
pub(crate) fn run<P: Protocol, T: Transport>(mut transport: T, mut protocol: P) -> impl Future<Output = ()> + Send {
    async move {
        let Parts { settings, outbox, .. } = protocol.parts();
        settings.sessions.enter(outbox);
        if let Some(socket) = transport.direct() {
            outbox.attach(socket);
        }
        settings.metrics.session_opened(P::NAME, transport.name());
        let served = AssertUnwindSafe(serve(&mut protocol, &mut transport)).catch_unwind().await;
        let reason = served.unwrap_or_else(|_| {
            let client = protocol.parts().connection.map(|c| c.client().clone());
            tracing::error!(?client, "a session failed (a bug; see the panic above); closing the connection");
            Some(DisconnectReason::Internal)
        });
        Box::pin(conclude(&mut protocol, &mut transport, reason)).await;
    }
}

/// Closes the transport (with the protocol's code for `reason`, when the
/// server ends the session) and takes the connection out of the hub.
async fn conclude<P: Protocol, T: Transport>(protocol: &mut P, transport: &mut T, reason: Option<DisconnectReason>) {
    // The outbox may outlive the session: it must not keep the socket.
    protocol.parts().outbox.detach();
    if let Some(reason) = &reason {
        let (code, text) = protocol.close_code(reason);
        let timeout = protocol.parts().settings.write_timeout;
        // A client that stopped reading may never take the close frame.
        let _ = tokio::time::timeout(timeout, transport.close(code, text)).await;
    }
    let code = reason.as_ref().map(|reason| protocol.close_code(reason).0);
    let Parts { settings, connection, outbox } = protocol.parts();
    settings.alarms.cancel(outbox);
    settings.sessions.leave(outbox);
    settings.metrics.session_closed(P::NAME, transport.name());
    settings.metrics.disconnected(P::NAME, code);
    if let (Some(events), Some(conn)) = (&settings.events, connection) {
        let text = reason.as_ref().map_or_else(|| "client left".to_owned(), |r| protocol.close_code(r).1);
        events.disconnected(conn, P::NAME, code, &text);
    }
    if let Some(conn) = connection {
        tracing::debug!(client = %conn.client(), user = %conn.user(), ?reason, "connection closed");
        settings.hub.disconnect(conn).await;
    }
}

/// Serves until the session ends; `Some(reason)` when the server ends it.
///
/// Every local of this future that lives across an await lives in every
/// connection's task, so the loop keeps one: the future that waits for
/// the session's next turn. (The session's timer is an alarm in the node's
/// [`Alarms`], found through its outbox.) What a turn does is
/// decided in plain functions or in boxed futures (they exist only while
/// they run; inline, every idle connection's task would be as large as
/// the largest handler's state). Not an `async fn`, as [`run`].
#[allow(clippy::manual_async_fn)] // deliberately not `async fn`: see `run`
fn serve<'a, P: Protocol, T: Transport>(
    protocol: &'a mut P,
    transport: &'a mut T,
) -> impl Future<Output = Option<DisconnectReason>> + Send + 'a {
    async move {
        // A protocol that authenticates at the handshake (Pusher) is
        // connected already; one that waits for a connect command is
        // reported when it comes (see `receive`).
        if let Parts { settings: DriverSettings { events: Some(events), .. }, connection: Some(conn), .. } =
            protocol.parts()
        {
            events.connected(conn, P::NAME);
        }
        loop {
            rearm(&*protocol);
            // Everything the last turn took is written (or the session has
            // ended): the fanout may write to the socket until the next.
            // Not before the connection is connected: its connect reply
            // goes ahead of what is queued for it (`Outbox::push_front`).
            if protocol.parts().connection.is_some() {
                transport.lend(protocol.framing() == Framing::Binary);
            }
            let turn =
                NextTurn { read: transport.recv(), timer: timer(&*protocol), outbox: protocol.parts().outbox }.await;
            if let Some(end) = act(protocol, transport, turn).await {
                return end;
            }
        }
    }
}

/// What a session does with a turn, as one future: handles what the
/// transport received or the due timer (each boxed: they exist only while
/// they run), or writes what the outbox holds. `Some(end)` ends the
/// session, as for [`receive`]. The turn is moved in whole: a turn kept in
/// [`serve`]'s loop while its handling waits would take room in every
/// connection's task.
fn act<'a, P: Protocol, T: Transport>(
    protocol: &'a mut P,
    transport: &'a mut T,
    turn: Turn<Result<Option<Inbound>, TransportError>>,
) -> impl Future<Output = Option<Option<DisconnectReason>>> + Send + 'a {
    use futures_util::future::Either;
    match turn {
        Turn::Read(received) => Either::Left(Box::pin(receive(protocol, transport, received))),
        Turn::Timer => Either::Right(Either::Left(Box::pin(async move { protocol.on_timer().await.err().map(Some) }))),
        Turn::Outbox => Either::Right(Either::Right(write(protocol, transport))),
    }
}

/// Writes everything the outbox holds; `Some(end)` ends the session, as
/// for [`receive`]: `end` is `Some(reason)` when the server ends it,
/// `None` when the transport broke.
#[allow(clippy::manual_async_fn)] // not `async fn`, as `run`
fn write<'a, P: Protocol, T: Transport>(
    protocol: &'a mut P,
    transport: &'a mut T,
) -> impl Future<Output = Option<Option<DisconnectReason>>> + Send + 'a {
    async move {
        // Nearly every write is taken at once and needs no future; one
        // that is not finishes in a boxed one. (Only a flag lives across
        // the boxed finish: the start's result there would sit in every
        // idle connection's task.)
        let owed = match start(protocol, transport).await {
            Ok(started) => started == Started::Owed,
            Err(end) => return Some(end),
        };
        match owed {
            true => Box::pin(finish_flush(protocol, transport)).await.err(),
            false => None,
        }
    }
}

/// The session's timer, for [`NextTurn`]: whether the protocol's deadline
/// has come; if not, the session's alarm is set to wake it by then.
fn timer<P: Protocol>(protocol: &P) -> impl FnMut() -> Poll<()> + '_ {
    move || {
        let Parts { settings, outbox, .. } = protocol.parts();
        settings.alarms.poll_due(outbox, protocol.next_deadline())
    }
}

/// Has the timer polled again if the session's alarm would fire after
/// the protocol's next deadline (it moved earlier, or the alarm fired).
/// An alarm set earlier than the deadline is left: it fires, and the
/// session, finding its deadline not yet come, sets it anew.
fn rearm<P: Protocol>(protocol: &P) {
    let Parts { settings, outbox, .. } = protocol.parts();
    if !settings.alarms.covers(outbox, protocol.next_deadline()) {
        outbox.unpark(Waiting::Timer);
    }
}

/// Hands what the transport received to the protocol. `Some(end)` ends
/// the session: `end` is `Some(reason)` when the server ends it (what is
/// queued, such as an error that explains the close, is written first),
/// `None` when the client left or the transport broke.
async fn receive<P: Protocol, T: Transport>(
    protocol: &mut P,
    transport: &mut T,
    received: Result<Option<Inbound>, TransportError>,
) -> Option<Option<DisconnectReason>> {
    let message = match received {
        Ok(Some(message)) => message,
        Ok(None) => return Some(None),
        Err(TransportError::TooLarge) => {
            let client = protocol.parts().connection.map(|c| c.client().clone());
            tracing::info!(?client, "message above client.max_message_size; closing");
            return Some(Some(DisconnectReason::MessageTooLarge));
        }
        Err(TransportError::Broken(why)) => {
            let client = protocol.parts().connection.map(|c| c.client().clone());
            tracing::debug!(?client, %why, "transport broke");
            return Some(None);
        }
    };
    let was_connected = protocol.parts().connection.is_some();
    let end = handle(protocol, transport, message).await;
    if !was_connected {
        let Parts { settings, connection, .. } = protocol.parts();
        if let (Some(events), Some(conn)) = (&settings.events, connection) {
            events.connected(conn, P::NAME);
        }
    }
    end
}

/// Hands one message (and what is left of it, after each flush) to the
/// protocol; as [`receive`].
async fn handle<P: Protocol, T: Transport>(
    protocol: &mut P,
    transport: &mut T,
    message: Inbound,
) -> Option<Option<DisconnectReason>> {
    let mut message = Some(message);
    while let Some(part) = message.take() {
        match protocol.on_message(part).await {
            Ok(None) => {}
            Ok(Some(rest)) => {
                if let Some(end) = write(protocol, transport).await {
                    return Some(end);
                }
                message = Some(rest);
            }
            Err(reason) => {
                let _ = write(protocol, transport).await;
                return Some(Some(reason));
            }
        }
    }
    None
}

pin_project_lite::pin_project! {
    /// What a session waits for: its outbox, the transport's `read` and
    /// the protocol's `timer`, in that order. The outbox is polled at
    /// every turn; the read is polled with the outbox as its waker, and
    /// the timer (whether the protocol's deadline has come, else its alarm
    /// is set to wake the outbox by then: see [`Alarms::poll_due`]) is
    /// asked as one; each only when it may have woken the session: one
    /// that finds nothing stays parked (not polled again) until a wake of
    /// that waker, so the session's wake-ups for deliveries poll neither
    /// the socket nor the timer (see `outbox.rs`). A parked one's wake-up
    /// reaches the task through the outbox's waker, which the outbox's
    /// poll registers first. All three in one future, with one reference
    /// to the outbox: it lives in every idle connection's task.
    struct NextTurn<'a, R, T> {
        #[pin]
        read: R,
        timer: T,
        outbox: &'a Arc<Outbox>,
    }
}

/// What a session's next turn is for.
enum Turn<R> {
    /// Something in the outbox is due.
    Outbox,
    /// The transport received this.
    Read(R),
    /// The protocol's timer is due.
    Timer,
}

impl<R: Future, T: FnMut() -> Poll<()>> Future for NextTurn<'_, R, T> {
    type Output = Turn<R::Output>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // A task whose budget is spent yields before it reads or writes
        // more (as a `select!` does): a client's reads alone, which take
        // no budget, must not keep its thread from the other tasks.
        if !tokio::task::coop::has_budget_remaining() {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let this = self.project();
        let outbox = *this.outbox;
        if outbox.poll_ready(cx).is_ready() {
            return Poll::Ready(Turn::Outbox);
        }
        let (read_parked, timer_parked) = (outbox.parked(Waiting::Read), outbox.parked(Waiting::Timer));
        if read_parked && timer_parked {
            return Poll::Pending;
        }
        let waker = Waker::from(Arc::clone(outbox));
        let mut cx = Context::from_waker(&waker);
        if !read_parked {
            outbox.park(Waiting::Read);
            if let Poll::Ready(received) = this.read.poll(&mut cx) {
                outbox.unpark(Waiting::Read);
                return Poll::Ready(Turn::Read(received));
            }
        }
        if !timer_parked {
            outbox.park(Waiting::Timer);
            if (this.timer)().is_ready() {
                outbox.unpark(Waiting::Timer);
                return Poll::Ready(Turn::Timer);
            }
        }
        Poll::Pending
    }
}

/// [`start_flush`] with the task's context: ready at its first poll.
fn start<'a, P: Protocol, T: Transport>(
    protocol: &'a mut P,
    transport: &'a mut T,
) -> impl Future<Output = Result<Started, Option<DisconnectReason>>> + 'a {
    std::future::poll_fn(move |cx| Poll::Ready(start_flush(protocol, transport, cx)))
}

/// Starts writing everything queued, without a future: what the socket
/// does not take at once is owed, for [`finish_flush`]. `Err` as [`flush`].
fn start_flush<P: Protocol, T: Transport>(
    protocol: &mut P,
    transport: &mut T,
    cx: &mut Context<'_>,
) -> Result<Started, Option<DisconnectReason>> {
    let items = match protocol.parts().outbox.drain() {
        Drained::Closed(reason) => return Err(Some(reason)),
        Drained::Items(items) => items,
    };
    let framing = protocol.framing();
    let started = match items {
        Queued::Empty => start_frames(framing, transport, cx, std::iter::empty()),
        // The common case (a publication reaching a connection that had
        // nothing queued), spared the queue's iterators.
        Queued::One(item) => {
            let frame = match item {
                Outgoing::Frame(frame) => Some(frame),
                Outgoing::Event(event) => protocol.on_event(event).map_err(Some)?,
            };
            start_frames(framing, transport, cx, frame.into_iter().filter(|frame| !frame.is_empty()))
        }
        Queued::Many(mut items) => {
            // Events become frames in place; an event with no message for
            // this protocol leaves an empty frame, which is skipped.
            for item in items.iter_mut().filter(|item| matches!(item, Outgoing::Event(_))) {
                let empty = Outgoing::Frame(Frame::Binary(Bytes::new()));
                let Outgoing::Event(event) = std::mem::replace(item, empty) else { continue };
                if let Some(frame) = protocol.on_event(event).map_err(Some)? {
                    *item = Outgoing::Frame(frame);
                }
            }
            let frames = items.into_iter().filter_map(|item| match item {
                Outgoing::Frame(frame) if !frame.is_empty() => Some(frame),
                Outgoing::Frame(_) | Outgoing::Event(_) => None,
            });
            start_frames(framing, transport, cx, frames)
        }
    };
    started.map_err(|_| None)
}

/// Starts writing `frames` as `framing` says.
fn start_frames<T: Transport>(
    framing: Framing,
    transport: &mut T,
    cx: &mut Context<'_>,
    frames: impl Iterator<Item = Frame>,
) -> Result<Started, TransportError> {
    match framing {
        Framing::Messages => transport.start_texts(cx, frames.filter_map(text)),
        // A lone message (the common case) is sent as it is, shared with
        // every other subscriber; only several are copied.
        // With nothing to send, what is owed is still written: the rest of
        // a frame the fanout began, for one.
        Framing::Lines => match Text::join(frames.filter_map(text), "\n") {
            Some(frame) => transport.start_texts(cx, std::iter::once(frame)),
            None => transport.start_owed(cx),
        },
        Framing::Binary => match concatenated(frames.filter_map(binary)) {
            Some(frame) => transport.start_binary(cx, frame),
            None => transport.start_owed(cx),
        },
    }
}

/// Writes what [`start_flush`] left owed, guarded as every write is.
async fn finish_flush<P: Protocol, T: Transport>(
    protocol: &mut P,
    transport: &mut T,
) -> Result<(), Option<DisconnectReason>> {
    let Parts { outbox, settings, .. } = protocol.parts();
    let finished = guarded(transport.send_owed(), outbox, settings.write_timeout).await;
    // The write waited with the task's own waker, which may have taken the
    // place of a parked read's (a read that waits to write a pong): the
    // read is polled again, and waits anew.
    outbox.unpark(Waiting::Read);
    finished
}

/// Joins binary messages end to end; a lone one is returned as it is,
/// shared with every other subscriber.
fn concatenated(mut frames: impl Iterator<Item = Bytes>) -> Option<Bytes> {
    let first = frames.next()?;
    let Some(second) = frames.next() else { return Some(first) };
    let mut joined = BytesMut::from(&first[..]);
    joined.put_slice(&second);
    frames.for_each(|frame| joined.put_slice(&frame));
    Some(joined.freeze())
}

/// A frame for a protocol that speaks text. A binary one would be a bug,
/// logged, and not sent.
fn text(frame: Frame) -> Option<Text> {
    match frame {
        Frame::Text(text) => Some(text),
        Frame::Binary(bytes) => {
            tracing::error!(bytes = bytes.len(), "a binary frame for a text protocol (a bug); not sent");
            None
        }
    }
}

/// A frame for a protocol that speaks binary. A text one would be a bug,
/// logged, and not sent.
fn binary(frame: Frame) -> Option<Bytes> {
    match frame {
        Frame::Binary(bytes) => Some(bytes),
        Frame::Text(text) => {
            tracing::error!(bytes = text.len(), "a text frame for a binary protocol (a bug); not sent");
            None
        }
    }
}

/// Runs `send` (the rest of a write the socket did not take at once),
/// giving up on a client that stopped reading: when `outbox` overflows
/// behind the blocked write (it then closes as slow), or after `timeout`.
/// `Err(None)` means the transport broke, `Err(Some(Slow))` that the
/// client was too slow. Only owed writes come here (see [`start_flush`]),
/// so the timer is armed only for a write that waits.
async fn guarded(
    send: impl Future<Output = Result<(), TransportError>> + Send,
    outbox: &Outbox,
    timeout: Duration,
) -> Result<(), Option<DisconnectReason>> {
    tokio::select! {
        sent = send => sent.map_err(|_| None),
        _ = outbox.closed() => Err(Some(DisconnectReason::Slow)),
        _ = tokio::time::sleep(timeout) => Err(Some(DisconnectReason::Slow)),
    }
}

/// Refuses a binary message on a protocol that speaks text only: the
/// session ends as a bad request.
pub(crate) fn text_only(message: Inbound, client: &dyn std::fmt::Debug) -> Result<Bytes, DisconnectReason> {
    match message {
        Inbound::Text(text) => Ok(text),
        Inbound::Binary(_) => {
            tracing::info!(?client, "binary message on a text protocol; closing");
            Err(DisconnectReason::BadRequest)
        }
    }
}

#[cfg(test)]
mod tests {
    use herald_core::{ChannelRules, ConnectionSpec, HubConfig};
    use herald_engine::{ClientId, Engine, NodeId, UserId};
    use tokio::sync::mpsc;

    use super::*;
    use crate::transport::memory::{MemoryTransport, Sent};

    /// A protocol whose message handler has a bug: it panics.
    struct Buggy {
        settings: DriverSettings,
        outbox: Arc<Outbox>,
        conn: Arc<Connection>,
    }

    impl Protocol for Buggy {
        const NAME: &'static str = "test";

        fn framing(&self) -> Framing {
            Framing::Lines
        }

        fn parts(&self) -> Parts<'_> {
            Parts { settings: &self.settings, outbox: &self.outbox, connection: Some(&self.conn) }
        }

        fn next_deadline(&self) -> Instant {
            Instant::now() + Duration::from_secs(3600)
        }

        async fn on_message(&mut self, _: Inbound) -> Result<Option<Inbound>, DisconnectReason> {
            panic!("a bug in a handler");
        }

        async fn on_timer(&mut self) -> Result<(), DisconnectReason> {
            Ok(())
        }

        fn on_event(&mut self, _: ConnEvent) -> Result<Option<Frame>, DisconnectReason> {
            Ok(None)
        }

        fn close_code(&self, reason: &DisconnectReason) -> (u16, String) {
            crate::centrifuge::codes::disconnect_code(reason)
        }
    }

    #[tokio::test]
    async fn a_session_that_panics_is_closed_for_a_reconnect_and_leaves_the_hub() {
        let hub = Hub::new(HubConfig::new(NodeId::new("n"), ChannelRules::default()), Engine::memory());
        hub.start().await.unwrap();
        let outbox = Arc::new(Outbox::new(1 << 16));
        let conn = hub
            .connect(ConnectionSpec {
                client: ClientId::new("c1"),
                user: UserId::new("42").unwrap(),
                conn_info: None,
                encoder: Arc::new(crate::centrifuge::CentrifugeEncoder),
                outbox: outbox.clone(),
            })
            .unwrap();
        let alarms = Alarms::default();
        let settings = DriverSettings {
            hub: hub.clone(),
            write_timeout: Duration::from_secs(1),
            sessions: Arc::default(),
            metrics: Default::default(),
            events: None,
            alarms: alarms.clone(),
        };
        let (to_session, inbound) = mpsc::unbounded_channel();
        let (outbound, mut from_session) = mpsc::unbounded_channel();
        let session = tokio::spawn(run(MemoryTransport { inbound, outbound }, Buggy { settings, outbox, conn }));

        to_session.send(Ok(Inbound::Text(Bytes::from_static(b"{}")))).unwrap();
        assert_eq!(from_session.recv().await, Some(Sent::Close(3004, "internal server error".into())));
        session.await.expect("the session task ends normally");
        assert_eq!(hub.stats().clients, 0, "no ghost connection is left");
        assert!(alarms.is_empty(), "and no alarm");
    }

    /// A protocol whose deadline a server-side event brings nearer, and
    /// whose timer ends the session.
    struct Clocked {
        settings: DriverSettings,
        outbox: Arc<Outbox>,
        deadline: Instant,
    }

    impl Protocol for Clocked {
        const NAME: &'static str = "test";

        fn framing(&self) -> Framing {
            Framing::Lines
        }

        fn parts(&self) -> Parts<'_> {
            Parts { settings: &self.settings, outbox: &self.outbox, connection: None }
        }

        fn next_deadline(&self) -> Instant {
            self.deadline
        }

        async fn on_message(&mut self, _: Inbound) -> Result<Option<Inbound>, DisconnectReason> {
            Ok(None)
        }

        async fn on_timer(&mut self) -> Result<(), DisconnectReason> {
            Err(DisconnectReason::NoPong)
        }

        fn on_event(&mut self, _: ConnEvent) -> Result<Option<Frame>, DisconnectReason> {
            self.deadline = Instant::now() + Duration::from_secs(1);
            Ok(None)
        }

        fn close_code(&self, reason: &DisconnectReason) -> (u16, String) {
            crate::centrifuge::codes::disconnect_code(reason)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_an_event_brings_nearer_is_kept_though_the_timer_was_parked() {
        let hub = Hub::new(HubConfig::new(NodeId::new("n"), ChannelRules::default()), Engine::memory());
        let outbox = Arc::new(Outbox::new(1 << 16));
        let alarms = Alarms::default();
        let settings = DriverSettings {
            hub,
            write_timeout: Duration::from_secs(1),
            sessions: Arc::default(),
            metrics: Default::default(),
            events: None,
            alarms: alarms.clone(),
        };
        let far = Instant::now() + Duration::from_secs(3600);
        let (_to_session, inbound) = mpsc::unbounded_channel();
        let (outbound, mut from_session) = mpsc::unbounded_channel();
        let protocol = Clocked { settings, outbox: outbox.clone(), deadline: far };
        tokio::spawn(run(MemoryTransport { inbound, outbound }, protocol));
        while alarms.is_empty() {
            tokio::task::yield_now().await;
        }

        let started = Instant::now();
        let channel = herald_engine::ChannelName::new("news").expect("a channel name");
        let subscribed = ConnEvent::Subscribed {
            channel,
            position: None,
            recoverable: false,
            data: None,
            expire_at: None,
            serial: Default::default(),
        };
        outbox.push(Outgoing::Event(subscribed)).expect("the outbox has room");
        let closed = tokio::time::timeout(Duration::from_secs(60), from_session.recv()).await;
        assert_eq!(closed, Ok(Some(Sent::Close(3012, "no pong".into()))), "closed at the nearer deadline");
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_that_is_not_due_is_not_polled_for_deliveries_and_still_fires() {
        use std::sync::atomic::{AtomicUsize, Ordering};

        let outbox = Arc::new(Outbox::new(1 << 16));
        let alarms = Alarms::default();
        let polls = AtomicUsize::new(0);
        let started = Instant::now();
        let deadline = started + Duration::from_secs(5);
        let timer = || {
            polls.fetch_add(1, Ordering::SeqCst);
            alarms.poll_due(&outbox, deadline)
        };
        let never_read = std::future::pending::<()>();
        let mut turn = std::pin::pin!(NextTurn { read: never_read, timer, outbox: &outbox });

        for n in 0..100 {
            let delivery = Outgoing::Frame(Frame::Text(Text::from(n.to_string())));
            outbox.push(delivery).expect("the outbox has room");
            assert!(matches!(turn.as_mut().now_or_never(), Some(Turn::Outbox)), "the delivery is due");
            assert!(matches!(outbox.drain(), Drained::Items(_)));
            assert!(turn.as_mut().now_or_never().is_none(), "the timer is not due");
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1, "only the first of 100 wake-ups polled the timer");
        assert_eq!(alarms.len(), 1, "which set the session's alarm");

        let woke = tokio::time::timeout(Duration::from_secs(60), turn).await;
        assert!(matches!(woke, Ok(Turn::Timer)), "the alarm's wake-up polls the parked timer");
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }
}
