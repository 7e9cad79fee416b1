//! A subscription that asks for its channel's latest publication (a Pusher
//! cache channel's last event): the read is made before it goes live, and
//! whatever reaches the node before, during or after the read, or late,
//! the client is sent its reply, then the latest publication, then only
//! what is newer, once each and in order.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use herald_engine::{ChannelName, ClientId, Engine, EngineEvent, EventHandler, MemoryEngine, NodeId, Publication};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::test_engines::{GatedHistory, WrappedBroker};
use super::tests::{connect_encoding_offsets, finished, frames, until_sent};
use super::{Hub, HubConfig, SubscribeAccess, SubscribeOutcome, SubscribeRequest};
use crate::connection::Connection;
use crate::error::HubError;
use crate::frame::Frame;
use crate::namespace::{ChannelRules, NamespaceOptions};
use crate::outbox::Outgoing;

/// Hands the memory engine's events to the node, or, while `held`, keeps
/// them until released: a publication can be in history before the node
/// receives it, as with a remote engine.
#[derive(Default)]
struct Delivery {
    node: std::sync::OnceLock<Arc<dyn EventHandler>>,
    held: Mutex<Option<Vec<EngineEvent>>>,
}

impl Delivery {
    fn hold(&self) {
        *self.held.lock().unwrap() = Some(Vec::new());
    }

    /// Hands over what was held, in order, and holds nothing more.
    fn release(&self) {
        let held = self.held.lock().unwrap().take().unwrap_or_default();
        held.into_iter().for_each(|event| self.deliver(event));
    }

    fn deliver(&self, event: EngineEvent) {
        if let Some(node) = self.node.get() {
            node.handle(event);
        }
    }
}

struct Forward(Arc<Delivery>);

impl EventHandler for Forward {
    fn handle(&self, event: EngineEvent) {
        match self.0.held.lock().unwrap().as_mut() {
            Some(held) => held.push(event),
            None => self.0.deliver(event),
        }
    }
}

struct Node {
    hub: Arc<Hub>,
    gate: Arc<Semaphore>,
    fail: Arc<AtomicBool>,
    then: Arc<Mutex<Vec<Publication>>>,
    delivery: Arc<Delivery>,
    channel: ChannelName,
}

impl Node {
    /// A node whose `cache` namespace keeps one publication, without
    /// recovery; every history read waits at the gate.
    async fn start() -> Self {
        let memory = Arc::new(MemoryEngine::new());
        let history = GatedHistory::over(&memory);
        let (gate, fail, then) = (history.gate.clone(), history.fail.clone(), history.then.clone());
        let delivery = Arc::new(Delivery::default());
        let between = delivery.clone();
        let broker = WrappedBroker::over(
            &memory,
            Box::new(move |node| {
                let _ = between.node.set(node);
                Arc::new(Forward(between.clone()))
            }),
        );
        let engine =
            Engine::from_parts("slow", Arc::new(broker), Arc::new(history), memory.clone(), memory.clone(), memory);
        let cache = NamespaceOptions { history_size: 1, ..Default::default() };
        let rules = ChannelRules::new(NamespaceOptions::default(), BTreeMap::from([("cache".to_owned(), cache)]));
        let hub = Hub::new(HubConfig::new(NodeId::new("n"), rules), engine);
        hub.start().await.unwrap();
        Self { hub, gate, fail, then, delivery, channel: ChannelName::new("cache:price").unwrap() }
    }

    /// Starts `conn`'s subscribe asking for the latest publication, and
    /// waits until its subscriber buffers (its read waits at the gate).
    async fn subscribe_latest(&self, conn: &Arc<Connection>) -> JoinHandle<Result<SubscribeOutcome, HubError>> {
        let (hub, conn, channel) = (self.hub.clone(), conn.clone(), self.channel.clone());
        let subscribed = self.hub.channels.count(&self.channel).saturating_add(1);
        let subscribing = tokio::spawn(async move {
            let reply = |_: &SubscribeOutcome| Some(Outgoing::Frame(Frame::Text("subscribed".into())));
            let request = SubscribeRequest { latest: true, ..SubscribeRequest::default() };
            hub.subscribe(&conn, &channel, SubscribeAccess::Client, request, reply).await
        });
        while self.hub.channels.count(&self.channel) < subscribed {
            tokio::task::yield_now().await;
        }
        subscribing
    }

    async fn publish(&self) {
        let publication = Publication::from_data(Bytes::from_static(b"1"));
        self.hub.publish(&self.channel, publication, None, false).await.unwrap();
    }

    /// Leaves `publications` to be published once the next read is answered.
    fn after_the_read(&self, publications: Vec<Publication>) {
        *self.then.lock().unwrap() = publications;
    }
}

fn plain() -> Publication {
    Publication::from_data(Bytes::from_static(b"1"))
}

#[tokio::test]
async fn the_latest_publication_follows_the_reply_and_then_only_what_is_newer() {
    let node = Node::start().await;
    node.publish().await;
    node.publish().await;

    // Publication 3 reaches the node once the read is answered.
    let first = connect_encoding_offsets(&node.hub, "c1", "u1");
    let subscribing = node.subscribe_latest(&first).await;
    node.after_the_read(vec![plain()]);
    node.gate.add_permits(1);
    let outcome = finished(subscribing).await.unwrap();
    assert_eq!(outcome.latest.map(|p| p.offset.get()), Some(2));
    assert!(!outcome.positioned, "asking for the latest publication is not asking for positions");
    until_sent(&first, &["subscribed", "pub 2", "pub 3"]).await;

    // Publication 4 reaches the node while the read waits: the read sees it.
    let second = connect_encoding_offsets(&node.hub, "c2", "u2");
    let subscribing = node.subscribe_latest(&second).await;
    node.publish().await;
    node.gate.add_permits(1);
    finished(subscribing).await.unwrap();
    until_sent(&second, &["subscribed", "pub 4"]).await;

    node.publish().await;
    until_sent(&first, &["pub 4", "pub 5"]).await;
    until_sent(&second, &["pub 5"]).await;
}

#[tokio::test]
async fn a_publication_the_read_saw_is_not_sent_again_when_it_reaches_the_node_late() {
    let node = Node::start().await;
    let client = connect_encoding_offsets(&node.hub, "c1", "u1");
    let subscribing = node.subscribe_latest(&client).await;
    // In history before the read, handed to the node after it went live.
    node.delivery.hold();
    node.publish().await;
    node.publish().await;
    node.gate.add_permits(1);
    finished(subscribing).await.unwrap();
    until_sent(&client, &["subscribed", "pub 2"]).await;

    node.delivery.release();
    node.publish().await;
    until_sent(&client, &["pub 3"]).await;
    assert!(frames(&client).is_empty());
}

#[tokio::test]
async fn what_came_while_the_subscription_started_skips_the_client_its_publisher_excluded() {
    let node = Node::start().await;
    let client = connect_encoding_offsets(&node.hub, "c1", "u1");
    let subscribing = node.subscribe_latest(&client).await;
    let mut excluding = plain();
    excluding.exclude = Some(ClientId::new("c1"));
    node.after_the_read(vec![excluding, plain()]);
    node.gate.add_permits(1);
    finished(subscribing).await.unwrap();
    until_sent(&client, &["subscribed", "pub 2"]).await;
}

#[tokio::test]
async fn an_empty_channel_sends_what_the_encoder_says_of_no_publication_after_the_reply() {
    let node = Node::start().await;
    let client = connect_encoding_offsets(&node.hub, "c1", "u1");
    let subscribing = node.subscribe_latest(&client).await;
    node.gate.add_permits(1);

    let outcome = finished(subscribing).await.unwrap();
    assert_eq!(outcome.latest, None);
    // The test encoder, like Centrifuge's, says nothing of a channel with
    // no publication (Pusher's says `pusher:cache_miss`).
    until_sent(&client, &["subscribed"]).await;
    node.publish().await;
    until_sent(&client, &["pub 1"]).await;
    assert!(frames(&client).is_empty());
}

#[tokio::test]
async fn a_read_that_fails_leaves_the_subscription_live_and_told_there_is_nothing() {
    let node = Node::start().await;
    node.publish().await;
    node.fail.store(true, Ordering::SeqCst);
    let client = connect_encoding_offsets(&node.hub, "c1", "u1");
    let subscribing = node.subscribe_latest(&client).await;
    node.publish().await;
    node.gate.add_permits(1);

    let outcome = finished(subscribing).await.expect("live without the latest publication");
    assert_eq!(outcome.latest, None);
    // What came while it read is sent: nothing says the client has it.
    until_sent(&client, &["subscribed", "pub 2"]).await;
    node.publish().await;
    until_sent(&client, &["pub 3"]).await;
}
