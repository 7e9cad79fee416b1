//! The queue between the Redis connections and the engine's dispatch task.
//!
//! A connection's reader hands each pub/sub message to [`Pushes`] and goes
//! back to reading: it must not wait. When the node cannot keep up (its
//! cores busy with fanout), messages wait here, and past [`Limits`] they
//! are dropped rather than held until the node runs out of memory: the
//! same as the NATS client does for a subscription read too slowly.
//! Positioned subscribers see the gap in offsets (or the periodic position
//! check does) and recover from history; others lose what was dropped, as
//! at-most-once delivery allows. Drops are counted and warned of, at most
//! every ten seconds.
//!
//! Only publications are bounded, the one kind whose loss is repaired:
//! control commands (disconnects, relayed commands of HTTP-streaming
//! clients, channel surveys), joins and leaves, and notices of a lost
//! connection carry no offset, and always wait their turn. (They come at
//! the rate of commands and connection churn, which the node's own
//! limits bound, not of publications.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use redis::aio::{AsyncPushSender, SendError};
use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How much may wait for the dispatch task.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Messages waiting.
    pub messages: usize,
    /// Bytes of their names and payloads.
    pub bytes: usize,
}

impl Default for Limits {
    /// 65,536 messages (the NATS client's bound for one subscription) or
    /// 64 MiB, whichever comes first.
    fn default() -> Self {
        Self { messages: 65_536, bytes: 64 << 20 }
    }
}

/// The sending side, given to every connection; cheap to clone.
#[derive(Clone)]
pub struct Pushes {
    queue: Arc<Queue>,
    tx: mpsc::UnboundedSender<Queued>,
}

/// A message, with the bytes of room it took (`None`: it took none, not
/// being a publication), given back as it is read.
type Queued = (PushInfo, Option<usize>);

/// The receiving side, read by the dispatch task.
pub struct Received {
    queue: Arc<Queue>,
    rx: mpsc::UnboundedReceiver<Queued>,
}

struct Queue {
    limits: Limits,
    messages: AtomicUsize,
    bytes: AtomicUsize,
    dropped: Dropped,
}

/// A queue bounded by `limits`.
pub fn channel(limits: Limits) -> (Pushes, Received) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queue = Arc::new(Queue {
        limits,
        messages: AtomicUsize::new(0),
        bytes: AtomicUsize::new(0),
        dropped: Dropped::default(),
    });
    (Pushes { queue: queue.clone(), tx }, Received { queue, rx })
}

impl std::fmt::Debug for Pushes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pushes").field("waiting", &self.queue.messages.load(Ordering::Relaxed)).finish()
    }
}

impl std::fmt::Debug for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Received").field("dropped", &self.queue.dropped.total()).finish()
    }
}

/// The bytes a message holds: the sizes of its strings.
fn size_of(push: &PushInfo) -> usize {
    push.data
        .iter()
        .map(|value| match value {
            Value::BulkString(bytes) => bytes.len(),
            _ => 0,
        })
        .fold(0, usize::saturating_add)
}

/// A publication, read from its kind line without decoding it.
fn is_publication(push: &PushInfo) -> bool {
    matches!(push.kind, PushKind::Message | PushKind::SMessage)
        && matches!(push.data.get(1), Some(Value::BulkString(payload)) if herald_engine::wire::is_publication(payload))
}

impl Pushes {
    /// Queues `push`, or drops it (counted) when the queue is full.
    /// Refused only once the dispatch task is gone.
    pub fn send(&self, push: PushInfo) -> Result<(), SendError> {
        if !is_publication(&push) {
            return self.tx.send((push, None)).map_err(|_| SendError);
        }
        let size = size_of(&push);
        let limits = self.queue.limits;
        // One reader per connection sends; several connections may at
        // once, so the room is taken by compare-and-swap, never overshot.
        let took = self
            .queue
            .messages
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limits.messages).then(|| n.saturating_add(1)));
        if took.is_err() {
            self.queue.dropped.one();
            return Ok(());
        }
        let took = self.queue.bytes.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            // A message larger than the whole bound still passes alone.
            (n == 0 || n.saturating_add(size) <= limits.bytes).then(|| n.saturating_add(size))
        });
        if took.is_err() {
            self.queue.messages.fetch_sub(1, Ordering::AcqRel);
            self.queue.dropped.one();
            return Ok(());
        }
        self.tx.send((push, Some(size))).map_err(|_| SendError)
    }
}

impl AsyncPushSender for Pushes {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        Pushes::send(self, info)
    }
}

impl Received {
    /// The next message, in arrival order; `None` once every sender is gone.
    pub async fn recv(&mut self) -> Option<PushInfo> {
        let (push, room) = self.rx.recv().await?;
        self.taken(room);
        Some(push)
    }

    /// Gives back the room a message took, if it took any.
    fn taken(&self, room: Option<usize>) {
        if let Some(bytes) = room {
            self.queue.messages.fetch_sub(1, Ordering::AcqRel);
            self.queue.bytes.fetch_sub(bytes, Ordering::AcqRel);
        }
    }

    /// The queue's drop count, readable after the receiver is handed to
    /// the dispatch task.
    pub fn drop_count(&self) -> DropCounter {
        DropCounter(self.queue.clone())
    }
}

/// Reads how many messages a queue dropped (see [`Received::drop_count`]).
#[derive(Clone)]
pub struct DropCounter(Arc<Queue>);

impl DropCounter {
    /// Messages dropped since the queue was made.
    pub fn total(&self) -> u64 {
        self.0.dropped.total()
    }
}

impl std::fmt::Debug for DropCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("DropCounter").field(&self.total()).finish()
    }
}

/// Drops since the last warning, all of them, and when it was.
#[derive(Default)]
struct Dropped(Mutex<DropCount>);

#[derive(Default)]
struct DropCount {
    since_warning: u64,
    total: u64,
    warned: Option<Instant>,
}

/// The least time between two warnings of dropped messages.
const WARN_EVERY: Duration = Duration::from_secs(10);

impl Dropped {
    fn one(&self) {
        let mut count = self.0.lock().unwrap_or_else(|e| e.into_inner());
        count.since_warning = count.since_warning.saturating_add(1);
        count.total = count.total.saturating_add(1);
        if count.warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            tracing::warn!(
                dropped = count.since_warning,
                "dropped messages from redis this node could not handle in time: it is overloaded \
                 (positioned subscribers see the gap and recover, others lose them); add nodes or cores"
            );
            count.since_warning = 0;
            count.warned = Some(Instant::now());
        }
    }

    fn total(&self) -> u64 {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use herald_engine::Publication;

    use super::*;

    /// A publication carrying `payload`, as the publish script broadcasts it.
    fn message(payload: &[u8]) -> PushInfo {
        let publication = Publication::from_data(Bytes::copy_from_slice(payload));
        pushed(herald_engine::wire::publication_message(&publication))
    }

    fn pushed(payload: Vec<u8>) -> PushInfo {
        PushInfo { kind: PushKind::Message, data: vec![Value::BulkString(b"ch".to_vec()), Value::BulkString(payload)] }
    }

    /// What a publication's payload was.
    fn payload_of(push: &PushInfo) -> Option<Vec<u8>> {
        let Some(Value::BulkString(message)) = push.data.get(1) else { return None };
        match herald_engine::wire::decode(Bytes::copy_from_slice(message)).ok()?.kind {
            herald_engine::wire::Kind::Publication(publication) => Some(publication.data.to_vec()),
            herald_engine::wire::Kind::Presence(_) => None,
        }
    }

    fn payloads(received: &mut Received) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Ok((push, room)) = received.rx.try_recv() {
            received.taken(room);
            out.extend(payload_of(&push));
        }
        out
    }

    #[test]
    fn past_its_message_bound_the_queue_drops_and_counts_until_the_reader_catches_up() {
        let (pushes, mut received) = channel(Limits { messages: 2, bytes: 1 << 20 });
        for payload in [b"1", b"2", b"3"] {
            pushes.send(message(payload)).unwrap();
        }
        assert_eq!(received.drop_count().total(), 1, "the third did not fit");
        assert_eq!(payloads(&mut received), [b"1".to_vec(), b"2".to_vec()]);

        pushes.send(message(b"4")).unwrap();
        assert_eq!(payloads(&mut received), [b"4".to_vec()], "room again once read");
        assert_eq!(received.drop_count().total(), 1);
    }

    #[test]
    fn past_its_byte_bound_the_queue_drops_but_a_single_large_message_still_passes() {
        let small = size_of(&message(b"abc"));
        let (pushes, mut received) = channel(Limits { messages: 100, bytes: 2 * small + 1 });
        pushes.send(message(&[b'x'; 500])).unwrap();
        pushes.send(message(b"x")).unwrap();
        assert_eq!(received.drop_count().total(), 1, "nothing fits beside a message over the bound");
        assert_eq!(payloads(&mut received).len(), 1);

        pushes.send(message(b"abc")).unwrap();
        pushes.send(message(b"def")).unwrap();
        pushes.send(message(b"ghi")).unwrap();
        assert_eq!(received.drop_count().total(), 2, "two fit, the third does not");
        assert_eq!(payloads(&mut received), [b"abc".to_vec(), b"def".to_vec()]);
    }

    #[test]
    fn control_commands_presence_events_and_a_lost_connection_are_never_dropped() {
        let (pushes, mut received) = channel(Limits { messages: 1, bytes: 1 << 20 });
        pushes.send(message(b"1")).unwrap();
        let join = herald_engine::PresenceEvent::Join {
            info: herald_engine::ClientInfo {
                user: herald_engine::UserId::new("7").unwrap(),
                client: herald_engine::ClientId::new("c"),
                conn_info: None,
                chan_info: None,
            },
            user_arrived: true,
        };
        pushes.send(pushed(herald_engine::wire::presence_message(&join))).unwrap();
        pushes
            .send(pushed(br#"{"op":"disconnect","user":"7","client":null,"reason":"force_disconnect"}"#.to_vec()))
            .unwrap();
        pushes.send(PushInfo { kind: PushKind::Disconnection, data: Vec::new() }).unwrap();
        assert_eq!(received.drop_count().total(), 0, "only the publication counts against the bound of one");
        let kinds: Vec<PushKind> = std::iter::from_fn(|| received.rx.try_recv().ok()).map(|(p, _)| p.kind).collect();
        assert_eq!(kinds, [PushKind::Message, PushKind::Message, PushKind::Message, PushKind::Disconnection]);
        pushes.send(message(b"2")).unwrap();
        assert_eq!(received.drop_count().total(), 1, "the publication still waiting fills it");
    }

    #[test]
    fn once_the_dispatch_task_is_gone_sends_are_refused() {
        let (pushes, received) = channel(Limits::default());
        drop(received);
        assert!(pushes.send(message(b"1")).is_err());
    }
}
