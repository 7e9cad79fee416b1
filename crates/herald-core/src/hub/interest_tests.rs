//! A channel whose engine subscription is slow holds up its own
//! subscribers only: every other channel's subscribes go ahead, whichever
//! lock shard they would once have shared with it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use herald_engine::{ChannelName, Engine, MemoryEngine, NodeId, Publication};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::test_engines::{Stalled, WrappedBroker};
use super::tests::{connect_encoding_offsets, finished, frames, sent};
use super::{Hub, HubConfig, SubscribeAccess, SubscribeOutcome, SubscribeRequest};
use crate::connection::Connection;
use crate::error::HubError;
use crate::frame::Frame;
use crate::namespace::{ChannelRules, NamespaceOptions};
use crate::outbox::Outgoing;

struct Node {
    hub: Arc<Hub>,
    gate: Arc<Semaphore>,
    arrived: Arc<AtomicBool>,
    slow: ChannelName,
}

impl Node {
    async fn start() -> Self {
        let memory = Arc::new(MemoryEngine::new());
        let slow = ChannelName::new("room:slow").unwrap();
        let (gate, arrived) = (Arc::new(Semaphore::new(0)), Arc::new(AtomicBool::new(false)));
        let stalled = Stalled { channel: slow.clone(), gate: gate.clone(), arrived: arrived.clone() };
        let broker = WrappedBroker::over(&memory, Box::new(|node| node)).stalling(stalled);
        let engine =
            Engine::from_parts("stalled", Arc::new(broker), memory.clone(), memory.clone(), memory.clone(), memory);
        let rules =
            ChannelRules::new(NamespaceOptions::default(), BTreeMap::from([("room".to_owned(), Default::default())]));
        let hub = Hub::new(HubConfig::new(NodeId::new("n"), rules), engine);
        hub.start().await.unwrap();
        Self { hub, gate, arrived, slow }
    }

    /// Connects `client` and starts its subscribe to `channel`.
    fn subscribe(&self, client: &str, channel: &ChannelName) -> (Arc<Connection>, SubscribeTask) {
        let conn = connect_encoding_offsets(&self.hub, client, client);
        let (hub, subscriber, channel) = (self.hub.clone(), conn.clone(), channel.clone());
        let task = tokio::spawn(async move {
            let reply = |_: &SubscribeOutcome| Some(Outgoing::Frame(Frame::Text("sub".into())));
            hub.subscribe(&subscriber, &channel, SubscribeAccess::Client, SubscribeRequest::default(), reply).await
        });
        (conn, task)
    }
}

type SubscribeTask = JoinHandle<Result<SubscribeOutcome, HubError>>;

#[tokio::test]
async fn a_channel_whose_engine_subscription_is_slow_holds_up_no_other_channel() {
    let node = Node::start().await;
    let (first, first_subscribe) = node.subscribe("first", &node.slow);
    while !node.arrived.load(Ordering::SeqCst) {
        tokio::task::yield_now().await;
    }
    let (second, second_subscribe) = node.subscribe("second", &node.slow);

    // A thousand other channels: whatever shard of a fixed pool of locks
    // `room:slow` fell on, some of them would fall on it too.
    let others: Vec<_> =
        (0..1000).map(|n| node.subscribe(&format!("c{n}"), &ChannelName::new(&format!("room:{n}")).unwrap())).collect();
    for (n, (conn, subscribe)) in others.into_iter().enumerate() {
        finished(subscribe).await.unwrap_or_else(|e| panic!("room:{n}'s subscribe failed: {e}"));
        assert_eq!(frames(&conn), ["sub"], "room:{n}'s subscriber was answered as it subscribed");
    }
    assert!(!first_subscribe.is_finished(), "room:slow's first subscribe waits for its engine subscription");
    assert!(!second_subscribe.is_finished(), "and so does its second, behind the first");

    node.gate.add_permits(1);
    finished(first_subscribe).await.unwrap();
    finished(second_subscribe).await.unwrap();
    let publication = Publication::from_data(Bytes::from_static(b"1"));
    node.hub.publish(&node.slow, publication, None, false).await.unwrap();
    for conn in [&first, &second] {
        let lines = sent(conn, 2).await;
        assert_eq!(lines[0], "sub");
        assert!(lines[1].starts_with("pub "), "both subscribers are live once the node is subscribed: {lines:?}");
    }
    assert_eq!(node.hub.channels.interest_locks_in_use(), 0, "no lock is left behind once nothing waits");
}
