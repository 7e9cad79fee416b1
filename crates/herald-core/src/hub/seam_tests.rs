//! Subscribers recovering in one channel read its history side by side:
//! the channel's interest lock is not held across the read. What may
//! happen meanwhile (the subscription ended, or ended and made again)
//! leaves every subscription whole and every client told the truth.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_engine::{ChannelName, Engine, MemoryEngine, NodeId, Publication};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::test_engines::GatedHistory;
use super::tests::{connect_encoding_offsets, finished, frames, until_sent};
use super::{Hub, HubConfig, SubscribeAccess, SubscribeOutcome, SubscribeRequest};
use crate::connection::Connection;
use crate::error::HubError;
use crate::frame::Frame;
use crate::namespace::{ChannelRules, NamespaceOptions};
use crate::outbox::Outgoing;

struct Node {
    hub: Arc<Hub>,
    gate: Arc<Semaphore>,
    arrived: Arc<AtomicUsize>,
    fail: Arc<AtomicBool>,
    channel: ChannelName,
}

impl Node {
    /// A node whose `feed` namespace keeps history, recovers, and has
    /// presence with joins and leaves; every history read is held at the gate.
    async fn start() -> Self {
        let memory = Arc::new(MemoryEngine::new());
        let history = GatedHistory::over(&memory);
        let (gate, arrived, fail) = (history.gate.clone(), history.arrived.clone(), history.fail.clone());
        let engine = Engine::from_parts(
            "gated",
            memory.clone(),
            Arc::new(history),
            memory.clone(),
            memory.clone(),
            memory.clone(),
        );
        let feed = NamespaceOptions {
            history_size: 100,
            force_recovery: true,
            presence: true,
            join_leave: true,
            ..Default::default()
        };
        let rules = ChannelRules::new(NamespaceOptions::default(), BTreeMap::from([("feed".to_owned(), feed)]));
        let hub = Hub::new(HubConfig::new(NodeId::new("n"), rules), engine);
        hub.start().await.unwrap();
        Self { hub, gate, arrived, fail, channel: ChannelName::new("feed:x").unwrap() }
    }

    fn connect(&self, client: &str) -> Arc<Connection> {
        connect_encoding_offsets(&self.hub, client, client)
    }

    /// Starts `conn`'s subscribe, hearing joins and leaves if `join_leave`;
    /// it reaches the gate and waits there.
    fn subscribe(&self, conn: &Arc<Connection>, join_leave: bool) -> JoinHandle<Result<SubscribeOutcome, HubError>> {
        let (hub, conn, channel) = (self.hub.clone(), conn.clone(), self.channel.clone());
        tokio::spawn(async move {
            let reply =
                |o: &SubscribeOutcome| Some(Outgoing::Frame(Frame::Text(format!("sub {}", o.position.offset).into())));
            let mut request = SubscribeRequest::default();
            request.subscription.join_leave = join_leave;
            hub.subscribe(&conn, &channel, SubscribeAccess::Client, request, reply).await
        })
    }

    /// Waits until `reads` history reads have reached the gate.
    async fn reads_waiting(&self, reads: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.arrived.load(Ordering::SeqCst) < reads {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {reads} history reads began: one waits for another",
                self.arrived.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Unsubscribes `conn` at once, not after a history read; whether
    /// its client is to be told (see [`Hub::unsubscribe`]).
    async fn unsubscribe_now(&self, conn: &Arc<Connection>) -> bool {
        let unsubscribed = tokio::time::timeout(Duration::from_secs(5), self.hub.unsubscribe(conn, &self.channel));
        unsubscribed.await.expect("an unsubscribe does not wait for a history read")
    }

    /// Lets the next `reads` history reads through, in the order they came.
    fn open(&self, reads: usize) {
        self.gate.add_permits(reads);
    }

    async fn publish(&self) {
        let publication = Publication::from_data(Bytes::from_static(b"1"));
        self.hub.publish(&self.channel, publication, None, false).await.unwrap();
    }

    async fn present(&self) -> Vec<String> {
        let mut clients: Vec<String> =
            self.hub.presence(&self.channel).await.unwrap().into_iter().map(|info| info.client.to_string()).collect();
        clients.sort();
        clients
    }
}

#[tokio::test]
async fn clients_recovering_in_one_channel_read_its_history_side_by_side() {
    let node = Node::start().await;
    let (first, second) = (node.connect("c1"), node.connect("c2"));
    let subscribing = [node.subscribe(&first, false), node.subscribe(&second, false)];
    node.reads_waiting(2).await;

    node.publish().await;
    node.open(2);
    for task in subscribing {
        finished(task).await.unwrap();
    }
    // The reads came after the publication: it is in each reply's
    // position, and not sent again though it reached both while they read.
    until_sent(&first, &["sub 1"]).await;
    until_sent(&second, &["sub 1"]).await;
    assert_eq!(node.present().await, ["c1", "c2"]);

    node.publish().await;
    until_sent(&first, &["pub 2"]).await;
    until_sent(&second, &["pub 2"]).await;
}

#[tokio::test]
async fn a_subscription_ended_while_its_history_is_read_fails_its_subscribe_with_a_retry() {
    let node = Node::start().await;
    let watcher = node.connect("watcher");
    let watching = node.subscribe(&watcher, true);
    node.open(1);
    finished(watching).await.unwrap();
    until_sent(&watcher, &["sub 0", "join watcher"]).await;

    let client = node.connect("c1");
    let subscribing = node.subscribe(&client, true);
    node.reads_waiting(2).await;
    // A heartbeat lists its subscription while its history is read; the
    // refresh leaves its entry to its join.
    node.hub.presence.refresh(|| node.hub.present_entries()).await;
    assert_eq!(node.present().await, ["watcher"]);
    let told = node.unsubscribe_now(&client).await;
    assert!(!told, "no unsubscribe push for a subscription the client was not told of: its subscribe fails instead");

    node.open(1);
    let refused = finished(subscribing).await.unwrap_err();
    assert_eq!(refused, HubError::Interrupted);
    assert!(frames(&client).is_empty(), "no reply of its own: the front-end replies with the error");
    assert!(!client.subscriptions().contains_key(&node.channel));
    assert_eq!(node.hub.subscription_count(&node.channel).await.unwrap(), 1, "the watcher alone");
    assert_eq!(node.present().await, ["watcher"], "it never had an entry");

    node.publish().await;
    // No leave before it: the client never joined.
    until_sent(&watcher, &["pub 1"]).await;
    assert!(frames(&client).is_empty());
}

#[tokio::test]
async fn a_subscribe_that_outlived_its_subscription_leaves_the_next_one_alone() {
    let node = Node::start().await;
    let client = node.connect("c1");
    let outlived = node.subscribe(&client, true);
    node.reads_waiting(1).await;
    assert!(!node.unsubscribe_now(&client).await, "the subscription was still being made");
    assert!(!client.subscriptions().contains_key(&node.channel));
    let again = node.subscribe(&client, true);
    node.reads_waiting(2).await;

    node.open(1);
    assert_eq!(finished(outlived).await.unwrap_err(), HubError::Interrupted);
    assert!(client.subscriptions().contains_key(&node.channel), "the second subscription is still being made");
    node.publish().await;

    node.open(1);
    finished(again).await.unwrap();
    until_sent(&client, &["sub 1", "join c1"]).await;
    assert_eq!(node.present().await, ["c1"]);
    node.publish().await;
    until_sent(&client, &["pub 2"]).await;
}

#[tokio::test]
async fn a_history_read_that_fails_leaves_no_subscription_behind() {
    let node = Node::start().await;
    let client = node.connect("c1");
    node.fail.store(true, Ordering::SeqCst);
    let subscribing = node.subscribe(&client, true);
    node.open(1);
    assert!(matches!(finished(subscribing).await, Err(HubError::EngineUnavailable(_))));
    assert!(!client.subscriptions().contains_key(&node.channel));
    assert_eq!(node.hub.subscription_count(&node.channel).await.unwrap(), 0);
    assert!(node.present().await.is_empty(), "it never joined");

    node.fail.store(false, Ordering::SeqCst);
    let subscribing = node.subscribe(&client, true);
    node.open(1);
    finished(subscribing).await.unwrap();
    until_sent(&client, &["sub 0", "join c1"]).await;
}

#[tokio::test]
async fn a_recovering_subscription_the_engine_interruption_ends_is_told_only_by_its_subscribes_error() {
    let node = Node::start().await;
    let client = node.connect("c1");
    let subscribing = node.subscribe(&client, true);
    node.reads_waiting(1).await;
    // As when the engine's link breaks: every positioned subscription ends.
    let serial = node.hub.subscription_serial(&client, &node.channel).expect("subscribing");
    node.hub.clone().end_stale(vec![super::channels::Stale {
        conn: client.clone(),
        channel: node.channel.clone(),
        serial,
    }]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while client.subscriptions().contains_key(&node.channel) {
        assert!(tokio::time::Instant::now() < deadline, "the subscription was not ended");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    node.open(1);
    assert_eq!(finished(subscribing).await.unwrap_err(), HubError::Interrupted);
    assert!(frames(&client).is_empty(), "no unsubscribe for a subscription it was never told of");
    assert_eq!(node.hub.subscription_count(&node.channel).await.unwrap(), 0);
}

#[tokio::test]
async fn a_connection_gone_while_its_subscription_recovers_leaves_nothing_behind() {
    let node = Node::start().await;
    let client = node.connect("c1");
    let subscribing = node.subscribe(&client, true);
    node.reads_waiting(1).await;
    tokio::time::timeout(Duration::from_secs(5), node.hub.disconnect(&client))
        .await
        .expect("a disconnect does not wait for a history read");

    node.open(1);
    assert_eq!(finished(subscribing).await.unwrap_err(), HubError::Interrupted);
    assert_eq!(node.hub.subscription_count(&node.channel).await.unwrap(), 0);
    assert!(node.present().await.is_empty());
}

#[tokio::test]
async fn a_client_sent_more_while_it_recovers_than_its_outbox_holds_is_closed_as_slow_at_once() {
    let node = Node::start().await;
    let small = node
        .hub
        .connect(crate::connection::ConnectionSpec {
            client: herald_engine::ClientId::new("small"),
            user: herald_engine::UserId::new("small").unwrap(),
            conn_info: None,
            encoder: Arc::new(super::tests::OffsetEncoder),
            outbox: Arc::new(crate::outbox::Outbox::new(1000)),
        })
        .unwrap();
    let roomy = node.connect("roomy");
    let subscribing = [node.subscribe(&small, false), node.subscribe(&roomy, false)];
    node.reads_waiting(2).await;

    // While both read, more than the small outbox holds reaches them: 20
    // publications of 100 bytes.
    for _ in 0..20 {
        let publication = Publication::from_data(Bytes::from(vec![b'x'; 100]));
        node.hub.publish(&node.channel, publication, None, false).await.unwrap();
    }
    assert!(small.outbox.is_closed(), "closed as soon as its buffer passed what it could take, not at the seam");
    assert!(matches!(small.outbox.drain(), crate::outbox::Drained::Closed(herald_engine::DisconnectReason::Slow)));
    assert!(!roomy.outbox.is_closed());

    node.open(2);
    for task in subscribing {
        let _ = finished(task).await;
    }
    until_sent(&roomy, &["sub 20"]).await;
}
