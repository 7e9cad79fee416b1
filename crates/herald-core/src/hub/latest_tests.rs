//! A subscription that asks for its channel's latest publication (a Pusher
//! cache channel's last event): the read is made before it goes live, and
//! whatever reaches the node before, during or after the read, the client
//! is sent its reply, then the latest publication, then only what is
//! newer, once each and in order.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use herald_engine::{
    Broker, ChannelName, Engine, EngineError, History, HistoryOptions, HistoryQuery, HistoryResult, MemoryEngine,
    NodeId, Publication, PublishOptions,
};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::tests::{connect_encoding_offsets, finished, frames, until_sent};
use super::{Hub, HubConfig, SubscribeAccess, SubscribeOutcome, SubscribeRequest};
use crate::connection::Connection;
use crate::error::HubError;
use crate::frame::Frame;
use crate::namespace::{ChannelRules, NamespaceOptions};
use crate::outbox::Outgoing;

/// The memory engine's history, but each read waits at a gate the test
/// opens, and once answered, publishes `then_publish` more into the
/// channel before handing the answer over: they reach the node between
/// the read and the subscription going live.
#[derive(Debug)]
struct SlowHistory {
    memory: Arc<MemoryEngine>,
    gate: Arc<Semaphore>,
    then_publish: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl History for SlowHistory {
    async fn history(
        &self,
        channel: &ChannelName,
        query: &HistoryQuery,
        options: &HistoryOptions,
    ) -> Result<HistoryResult, EngineError> {
        self.gate.acquire().await.expect("the gate stays open").forget();
        let read = self.memory.history(channel, query, options).await;
        for _ in 0..self.then_publish.swap(0, Ordering::SeqCst) {
            let options = PublishOptions { history: Some(*options), ..PublishOptions::default() };
            self.memory.publish(channel, Publication::from_data(Bytes::from_static(b"1")), &options).await?;
        }
        read
    }
    async fn remove_history(&self, channel: &ChannelName) -> Result<(), EngineError> {
        self.memory.remove_history(channel).await
    }
}

struct Node {
    hub: Arc<Hub>,
    gate: Arc<Semaphore>,
    then_publish: Arc<AtomicUsize>,
    channel: ChannelName,
}

impl Node {
    /// A node whose `cache` namespace keeps one publication, without
    /// recovery; every history read waits at the gate.
    async fn start() -> Self {
        let memory = Arc::new(MemoryEngine::new());
        let (gate, then_publish) = (Arc::new(Semaphore::new(0)), Arc::new(AtomicUsize::new(0)));
        let history = SlowHistory { memory: memory.clone(), gate: gate.clone(), then_publish: then_publish.clone() };
        let engine =
            Engine::from_parts("slow", memory.clone(), Arc::new(history), memory.clone(), memory.clone(), memory);
        let cache = NamespaceOptions { history_size: 1, ..Default::default() };
        let rules = ChannelRules::new(NamespaceOptions::default(), BTreeMap::from([("cache".to_owned(), cache)]));
        let hub = Hub::new(HubConfig::new(NodeId::new("n"), rules), engine);
        hub.start().await.unwrap();
        Self { hub, gate, then_publish, channel: ChannelName::new("cache:price").unwrap() }
    }

    /// Starts `conn`'s subscribe asking for the latest publication; it
    /// reaches the gate and waits there.
    fn subscribe_latest(&self, conn: &Arc<Connection>) -> JoinHandle<Result<SubscribeOutcome, HubError>> {
        let (hub, conn, channel) = (self.hub.clone(), conn.clone(), self.channel.clone());
        tokio::spawn(async move {
            let reply = |_: &SubscribeOutcome| Some(Outgoing::Frame(Frame::Text("subscribed".into())));
            let request = SubscribeRequest { latest: true, ..SubscribeRequest::default() };
            hub.subscribe(&conn, &channel, SubscribeAccess::Client, request, reply).await
        })
    }

    async fn publish(&self) {
        let publication = Publication::from_data(Bytes::from_static(b"1"));
        self.hub.publish(&self.channel, publication, None, false).await.unwrap();
    }
}

#[tokio::test]
async fn the_latest_publication_follows_the_reply_and_only_what_the_read_did_not_see_follows_it() {
    let node = Node::start().await;
    node.publish().await;
    node.publish().await;
    let client = connect_encoding_offsets(&node.hub, "c1", "u1");
    let subscribing = node.subscribe_latest(&client);
    // While the read waits, and once it is answered: both reach the
    // subscriber before it goes live.
    while node.hub.channels.count(&node.channel) == 0 {
        tokio::task::yield_now().await;
    }
    node.publish().await;
    node.then_publish.store(1, Ordering::SeqCst);
    node.gate.add_permits(1);

    let outcome = finished(subscribing).await.unwrap();
    assert_eq!(outcome.latest.map(|p| p.offset.get()), Some(3), "the read saw three publications");
    assert!(!outcome.positioned, "asking for the latest publication is not asking for positions");
    until_sent(&client, &["subscribed", "pub 3", "pub 4"]).await;

    node.publish().await;
    until_sent(&client, &["pub 5"]).await;
}

#[tokio::test]
async fn an_empty_channel_sends_what_the_encoder_says_of_no_publication_after_the_reply() {
    let node = Node::start().await;
    let client = connect_encoding_offsets(&node.hub, "c1", "u1");
    let subscribing = node.subscribe_latest(&client);
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
