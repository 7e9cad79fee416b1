//! A node that misses publications never shows its subscribers a hole:
//! a gap or a new epoch in what reaches it, or a stream that moved on
//! without it, ends the positioned subscriptions with "insufficient
//! state" so that their clients recover; publications handed over
//! swapped while a subscriber recovers are put back in order.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use herald_engine::{
    ChannelName, ClientId, Engine, EngineError, EngineEvent, EventHandler, History, HistoryOptions, HistoryQuery,
    HistoryResult, MemoryEngine, NodeId, Publication, StreamPosition, UserId,
};

use super::channels::{in_stream_order, Followed, Next};
use super::test_engines::{Between, WrappedBroker};
use super::tests::OffsetEncoder;
use super::{Hub, HubConfig, SubscribeAccess, SubscribeOutcome, SubscribeRequest};
use crate::connection::{Connection, ConnectionSpec};
use crate::frame::Frame;
use crate::namespace::{ChannelRules, NamespaceOptions};
use crate::outbox::{ConnEvent, Drained, Outbox, Outgoing, UnsubscribeReason};

/// The node's handler, once its broker starts (for `OvertakenOnRead`).
#[derive(Default, Clone)]
struct Handler(Arc<Mutex<Option<Arc<dyn EventHandler>>>>);

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Handler")
    }
}

/// The memory engine's history, except that a read first hands the node
/// the stream's next publications at the offsets in `overtaking`, in that
/// order, as an engine may while a subscriber recovers.
#[derive(Debug, Default)]
struct OvertakenOnRead {
    memory: Arc<MemoryEngine>,
    handler: Handler,
    overtaking: Arc<Mutex<Vec<u64>>>,
}

#[async_trait::async_trait]
impl History for OvertakenOnRead {
    async fn history(
        &self,
        channel: &ChannelName,
        query: &HistoryQuery,
        options: &HistoryOptions,
    ) -> Result<HistoryResult, EngineError> {
        let read = self.memory.history(channel, query, options).await?;
        let handler = self.handler.0.lock().unwrap().clone();
        for offset in std::mem::take(&mut *self.overtaking.lock().unwrap()) {
            let publication = publication(offset, read.position.epoch.as_str());
            let event = EngineEvent::Publication { channel: channel.clone(), publication: Arc::new(publication) };
            handler.as_ref().expect("the broker started").handle(event);
        }
        Ok(read)
    }
    async fn remove_history(&self, channel: &ChannelName) -> Result<(), EngineError> {
        self.memory.remove_history(channel).await
    }
}

/// Between the memory engine and the node: the node never receives the
/// publications whose offsets are in `lost`, as if its link to the
/// backplane dropped them.
struct DropLost {
    handler: Arc<dyn EventHandler>,
    lost: Arc<Mutex<BTreeSet<u64>>>,
}

impl EventHandler for DropLost {
    fn handle(&self, event: EngineEvent) {
        if let EngineEvent::Publication { publication, .. } = &event {
            if self.lost.lock().unwrap().contains(&publication.offset.get()) {
                return;
            }
        }
        self.handler.handle(event);
    }
}

struct Node {
    hub: Arc<Hub>,
    lost: Arc<Mutex<BTreeSet<u64>>>,
    overtaking: Arc<Mutex<Vec<u64>>>,
    channel: ChannelName,
}

impl Node {
    async fn start(position_check_interval: Duration) -> Self {
        let memory = Arc::new(MemoryEngine::new());
        let (lost, handler) = (Arc::<Mutex<BTreeSet<u64>>>::default(), Handler::default());
        let between: Between = Box::new({
            let (lost, kept) = (lost.clone(), handler.clone());
            move |node| {
                *kept.0.lock().unwrap() = Some(node.clone());
                Arc::new(DropLost { handler: node, lost: lost.clone() })
            }
        });
        let broker = WrappedBroker::over(&memory, between);
        let history = OvertakenOnRead { memory: memory.clone(), handler, ..Default::default() };
        let overtaking = history.overtaking.clone();
        let engine =
            Engine::from_parts("lossy", Arc::new(broker), Arc::new(history), memory.clone(), memory.clone(), memory);
        let feed = NamespaceOptions { history_size: 100, force_recovery: true, ..Default::default() };
        let rules = ChannelRules::new(NamespaceOptions::default(), BTreeMap::from([("feed".to_owned(), feed)]));
        let config = HubConfig { position_check_interval, ..HubConfig::new(NodeId::new("n"), rules) };
        let hub = Hub::new(config, engine);
        hub.start().await.unwrap();
        Self { hub, lost, overtaking, channel: ChannelName::new("feed:x").unwrap() }
    }

    async fn subscriber(&self) -> Arc<Connection> {
        let conn = self
            .hub
            .connect(ConnectionSpec {
                client: ClientId::new("c1"),
                user: UserId::new("u").unwrap(),
                conn_info: None,
                encoder: Arc::new(OffsetEncoder),
                outbox: Arc::new(Outbox::new(1 << 20)),
            })
            .unwrap();
        let reply =
            |o: &SubscribeOutcome| Some(Outgoing::Frame(Frame::Text(format!("sub {}", o.position.offset).into())));
        let request = SubscribeRequest::default();
        self.hub.subscribe(&conn, &self.channel, SubscribeAccess::Client, request, reply).await.unwrap();
        conn
    }

    async fn publish(&self) {
        let publication = Publication::from_data(Bytes::from_static(b"1"));
        self.hub.publish(&self.channel, publication, None, false).await.unwrap();
    }

    /// The node will never receive the publication at `offset`.
    fn will_miss(&self, offset: u64) {
        self.lost.lock().unwrap().insert(offset);
    }
}

/// What the connection was sent, in order, as short lines.
fn sent(conn: &Connection) -> Vec<String> {
    match conn.outbox().drain() {
        Drained::Items(items) => items
            .into_iter()
            .map(|item| match item {
                Outgoing::Frame(frame) => String::from_utf8(frame.as_bytes().to_vec()).unwrap(),
                Outgoing::Event(ConnEvent::Unsubscribed { reason: UnsubscribeReason::InsufficientState, .. }) => {
                    "recover".to_owned()
                }
                Outgoing::Event(other) => format!("{other:?}"),
            })
            .collect(),
        Drained::Closed(reason) => vec![format!("closed: {reason:?}")],
    }
}

/// Waits until the connection has been sent something, and returns it.
async fn next_sent(conn: &Connection) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let lines = sent(conn);
        if !lines.is_empty() || tokio::time::Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_subscriber_is_told_to_recover_instead_of_being_shown_a_gap() {
    let node = Node::start(Duration::ZERO).await;
    let conn = node.subscriber().await;
    node.will_miss(2);
    for _ in 0..4 {
        node.publish().await;
    }
    assert_eq!(next_sent(&conn).await, ["sub 0", "pub 1"]);
    assert_eq!(next_sent(&conn).await, ["recover"], "offset 3 after 1 is a gap: nothing after it is sent");
    assert!(!conn.subscriptions().contains_key(&node.channel), "the subscription ended");
}

#[tokio::test]
async fn publications_handed_over_swapped_while_a_subscriber_recovers_reach_it_in_order() {
    let node = Node::start(Duration::ZERO).await;
    node.overtaking.lock().unwrap().extend([2, 1]);
    let conn = node.subscriber().await;
    assert_eq!(next_sent(&conn).await, ["sub 0", "pub 1", "pub 2"]);
    assert!(conn.subscriptions().contains_key(&node.channel), "nothing was missed");
}

#[test]
fn a_recovering_subscribers_buffer_is_put_in_stream_order_around_what_is_not_of_the_stream() {
    let mut buffered: Vec<Arc<Publication>> =
        [publication(3, "e"), publication(0, ""), publication(1, "e"), publication(9, "old"), publication(2, "e")]
            .into_iter()
            .map(Arc::new)
            .collect();
    in_stream_order(&mut buffered, &herald_engine::Epoch::new("e"));
    let order: Vec<(u64, &str)> = buffered.iter().map(|p| (p.offset.get(), p.epoch.as_str())).collect();
    assert_eq!(order, [(1, "e"), (0, ""), (2, "e"), (9, "old"), (3, "e")]);
}

#[tokio::test]
async fn a_publication_of_a_new_epoch_ends_the_subscription() {
    let node = Node::start(Duration::ZERO).await;
    let conn = node.subscriber().await;
    node.publish().await;
    assert_eq!(next_sent(&conn).await, ["sub 0", "pub 1"]);
    // The stream is lost (as when Redis restarts empty) and starts again.
    node.hub.remove_history(&node.channel).await.unwrap();
    node.publish().await;
    assert_eq!(next_sent(&conn).await, ["recover"], "offset 1 of another epoch is not the next one");
}

#[tokio::test]
async fn the_position_check_catches_the_last_publications_missed() {
    let node = Node::start(Duration::from_millis(50)).await;
    let conn = node.subscriber().await;
    node.publish().await;
    node.will_miss(2);
    node.publish().await;
    assert_eq!(next_sent(&conn).await, ["sub 0", "pub 1"]);
    assert_eq!(next_sent(&conn).await, ["recover"], "nothing came after offset 2 to show the gap");
}

#[tokio::test]
async fn a_subscription_made_since_a_stale_one_was_found_is_not_ended_in_its_place() {
    let node = Node::start(Duration::ZERO).await;
    let conn = node.subscriber().await;
    assert_eq!(next_sent(&conn).await, ["sub 0"]);
    let found_stale = node.hub.subscription_serial(&conn, &node.channel).expect("subscribed");
    // Before the stale subscription is ended, it ends and another is made.
    assert!(node.hub.unsubscribe(&conn, &node.channel).await);
    let request = SubscribeRequest::default();
    node.hub.subscribe(&conn, &node.channel, SubscribeAccess::Client, request, |_| None).await.unwrap();

    node.hub.end_stale_one(&conn, &node.channel, found_stale).await;
    assert!(conn.subscriptions().contains_key(&node.channel), "the new subscription stays");
    assert_eq!(sent(&conn), Vec::<String>::new(), "and its client is not told to recover");
    let current = node.hub.subscription_serial(&conn, &node.channel).expect("subscribed");
    node.hub.end_stale_one(&conn, &node.channel, current).await;
    assert_eq!(sent(&conn), ["recover"]);
}

#[tokio::test]
async fn the_position_check_leaves_subscribers_that_are_up_to_date_alone() {
    let node = Node::start(Duration::from_millis(20)).await;
    let conn = node.subscriber().await;
    for _ in 0..3 {
        node.publish().await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sent(&conn), ["sub 0", "pub 1", "pub 2", "pub 3"]);
    assert!(conn.subscriptions().contains_key(&node.channel));
}

fn publication(offset: u64, epoch: &str) -> Publication {
    let mut publication = Publication::from_data(Bytes::from_static(b"1"));
    publication.offset = herald_engine::Offset::new(offset);
    publication.epoch = herald_engine::Epoch::new(epoch);
    publication
}

#[test]
fn a_followed_stream_takes_each_offset_once_in_order_and_goes_stale_once() {
    let at = StreamPosition { offset: herald_engine::Offset::new(5), epoch: herald_engine::Epoch::new("e") };
    let followed = Followed::at(&at);
    let decisions: Vec<Next> = [
        publication(4, "e"),
        publication(5, "e"),
        publication(0, ""),
        publication(6, "e"),
        publication(8, "e"),
        publication(9, "e"),
        publication(7, "e"),
    ]
    .iter()
    .map(|p| followed.next(p))
    .collect();
    use Next::{Send, Skip, Stale};
    assert_eq!(decisions, [Skip, Skip, Send, Send, Stale, Skip, Skip]);
    let other_epoch = Followed::at(&at);
    assert_eq!(other_epoch.next(&publication(6, "f")), Stale);
}

#[test]
fn a_followed_stream_falls_behind_by_epoch_or_by_a_whole_check() {
    let position = |offset, epoch| StreamPosition {
        offset: herald_engine::Offset::new(offset),
        epoch: herald_engine::Epoch::new(epoch),
    };
    let followed = Followed::at(&position(5, "e"));
    assert!(!followed.fell_behind(&position(9, "e"), None), "publications may still be on their way");
    assert!(!followed.fell_behind(&position(9, "e"), Some(&position(5, "e"))));
    assert!(followed.fell_behind(&position(9, "e"), Some(&position(6, "e"))), "6 was there a check ago");
    assert!(!followed.fell_behind(&position(9, "e"), Some(&position(6, "e"))), "stale once");
    assert!(Followed::at(&position(5, "e")).fell_behind(&position(1, "f"), None), "another epoch");
}
