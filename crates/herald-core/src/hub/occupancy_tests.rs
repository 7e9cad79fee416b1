//! Occupancy writes are made after the channel's interest lock is let go:
//! the subscribes of one channel do not wait for each other's writes, the
//! changes noted while a write is under way are written after it (only the
//! latest count), and a write its subscribe abandoned is still made. The
//! heartbeat's refresh of a channel is one of its writes, with the count
//! of its turn: it never writes back a count older than one written.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_engine::{
    ChannelName, Engine, EngineError, MemoryEngine, NodeId, NodeSubscribers, Occupancy, OccupancyChange,
};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::tests::{connect_encoding_offsets, finished};
use super::{Hub, HubConfig, HubObserver, SubscribeAccess, SubscribeOutcome, SubscribeRequest};
use crate::connection::Connection;
use crate::error::HubError;
use crate::namespace::{ChannelRules, NamespaceOptions};

/// The memory engine's occupancy, but each write waits at a gate the test
/// opens one write at a time, in the order they arrived; what reached the
/// engine is written down in order.
#[derive(Debug)]
struct GatedOccupancy {
    memory: Arc<MemoryEngine>,
    gate: Arc<Semaphore>,
    log: Arc<Mutex<Vec<String>>>,
}

impl GatedOccupancy {
    fn note(&self, line: String) {
        self.log.lock().unwrap().push(line);
    }
}

#[async_trait::async_trait]
impl Occupancy for GatedOccupancy {
    async fn occupy(
        &self,
        channel: &ChannelName,
        node: &NodeId,
        subscribers: usize,
        ttl: Duration,
    ) -> Result<OccupancyChange, EngineError> {
        self.note(format!("writing {subscribers}"));
        self.gate.acquire().await.expect("the gate stays open").forget();
        self.note(format!("wrote {subscribers}"));
        self.memory.occupy(channel, node, subscribers, ttl).await
    }
    async fn vacate(&self, channel: &ChannelName, node: &NodeId) -> Result<OccupancyChange, EngineError> {
        self.note("writing 0".to_owned());
        self.gate.acquire().await.expect("the gate stays open").forget();
        self.note("wrote 0".to_owned());
        self.memory.vacate(channel, node).await
    }
    async fn subscribers(&self, channel: &ChannelName) -> Result<Vec<NodeSubscribers>, EngineError> {
        self.memory.subscribers(channel).await
    }
    async fn occupied_channels(&self) -> Result<Vec<ChannelName>, EngineError> {
        self.memory.occupied_channels().await
    }
    async fn expire_vacated(&self) -> Result<Vec<ChannelName>, EngineError> {
        self.memory.expire_vacated().await
    }
}

/// Records the transitions the hub reports.
#[derive(Debug, Default)]
struct Transitions(Mutex<Vec<String>>);

impl HubObserver for Transitions {
    fn channel_occupied(&self, channel: &ChannelName) {
        self.0.lock().unwrap().push(format!("occupied {channel}"));
    }
    fn channel_vacated(&self, channel: &ChannelName) {
        self.0.lock().unwrap().push(format!("vacated {channel}"));
    }
    fn user_joined(&self, _: &ChannelName, _: &herald_engine::ClientInfo) {}
    fn user_left(&self, _: &ChannelName, _: &herald_engine::ClientInfo) {}
}

struct Node {
    hub: Arc<Hub>,
    memory: Arc<MemoryEngine>,
    gate: Arc<Semaphore>,
    log: Arc<Mutex<Vec<String>>>,
    seen: Arc<Transitions>,
    channel: ChannelName,
}

impl Node {
    /// A node that tracks occupancy, every write of it held at the gate.
    async fn start() -> Self {
        let memory = Arc::new(MemoryEngine::new());
        let (gate, log) = (Arc::new(Semaphore::new(0)), Arc::default());
        let occupancy = GatedOccupancy { memory: memory.clone(), gate: gate.clone(), log: Arc::clone(&log) };
        let engine = Engine::from_parts(
            "gated",
            memory.clone(),
            memory.clone(),
            memory.clone(),
            Arc::new(occupancy),
            memory.clone(),
        );
        let rules = ChannelRules::new(NamespaceOptions::default(), BTreeMap::new());
        let config = HubConfig { track_occupancy: true, ..HubConfig::new(NodeId::new("n"), rules) };
        let hub = Hub::new(config, engine);
        hub.start().await.unwrap();
        let seen = Arc::new(Transitions::default());
        hub.observe(seen.clone());
        Self { hub, memory, gate, log, seen, channel: ChannelName::new("news").unwrap() }
    }

    fn connect(&self, client: &str) -> Arc<Connection> {
        connect_encoding_offsets(&self.hub, client, client)
    }

    fn subscribe(&self, conn: &Arc<Connection>) -> JoinHandle<Result<SubscribeOutcome, HubError>> {
        self.subscribe_to(conn, &self.channel)
    }

    fn subscribe_to(
        &self,
        conn: &Arc<Connection>,
        channel: &ChannelName,
    ) -> JoinHandle<Result<SubscribeOutcome, HubError>> {
        let (hub, conn, channel) = (self.hub.clone(), conn.clone(), channel.clone());
        tokio::spawn(async move {
            hub.subscribe(&conn, &channel, SubscribeAccess::Client, SubscribeRequest::default(), |_| None).await
        })
    }

    fn unsubscribe(&self, conn: &Arc<Connection>) -> JoinHandle<bool> {
        self.unsubscribe_from(conn, &self.channel)
    }

    fn unsubscribe_from(&self, conn: &Arc<Connection>, channel: &ChannelName) -> JoinHandle<bool> {
        let (hub, conn, channel) = (self.hub.clone(), conn.clone(), channel.clone());
        tokio::spawn(async move { hub.unsubscribe(&conn, &channel).await })
    }

    /// Refreshes the node's entries as its heartbeat does, in a task.
    fn heartbeat(&self) -> JoinHandle<()> {
        let hub = self.hub.clone();
        tokio::spawn(async move {
            let channels: Vec<ChannelName> = hub.channels.list(None).into_iter().map(|(channel, _)| channel).collect();
            hub.occupancy.refresh(&channels, |channel| hub.channels.count(channel)).await
        })
    }

    /// Waits until the engine holds `expected` as the node's count of `channel`.
    async fn holds(&self, channel: &ChannelName, expected: &[usize]) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let held: Vec<usize> =
                self.memory.subscribers(channel).await.unwrap().into_iter().map(|e| e.subscribers).collect();
            if held == expected {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the engine holds {held:?} for {channel}; {:?}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the engine has been asked for `writes` writes in all.
    async fn writes_asked(&self, writes: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.log().iter().filter(|line| line.starts_with("writing")).count() < writes {
            assert!(tokio::time::Instant::now() < deadline, "the writes asked so far: {:?}", self.log());
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Lets the next `writes` writes through, in the order they came.
    fn open(&self, writes: usize) {
        self.gate.add_permits(writes);
    }

    /// The node's count of the channel, as the engine holds it.
    async fn written(&self) -> Vec<usize> {
        self.memory.subscribers(&self.channel).await.unwrap().into_iter().map(|entry| entry.subscribers).collect()
    }

    fn transitions(&self) -> Vec<String> {
        self.seen.0.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn subscribes_to_one_channel_do_not_wait_for_each_others_occupancy_writes() {
    let node = Node::start().await;
    let first = node.connect("c1");
    let subscribing = node.subscribe(&first);
    node.writes_asked(1).await;

    let (second, third) = (node.connect("c2"), node.connect("c3"));
    finished(node.subscribe(&second)).await.unwrap();
    finished(node.subscribe(&third)).await.unwrap();
    assert_eq!(node.log(), ["writing 1"], "the others' counts wait for the write under way, not their subscribes");

    node.open(2);
    finished(subscribing).await.unwrap();
    node.writes_asked(2).await;
    // What was noted while the first write was under way is written
    // after it, once: the latest count.
    assert_eq!(node.log(), ["writing 1", "wrote 1", "writing 3", "wrote 3"]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while node.written().await != [3] {
        assert!(tokio::time::Instant::now() < deadline, "the engine holds {:?}", node.written().await);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(node.transitions(), ["occupied news"]);
}

#[tokio::test]
async fn a_channel_emptied_while_its_count_is_written_ends_vacated() {
    let node = Node::start().await;
    let (first, second) = (node.connect("c1"), node.connect("c2"));
    let subscribing = node.subscribe(&first);
    node.writes_asked(1).await;
    finished(node.subscribe(&second)).await.unwrap();
    assert!(finished(node.unsubscribe(&second)).await);
    assert!(finished(node.unsubscribe(&first)).await);

    node.open(2);
    finished(subscribing).await.unwrap();
    node.writes_asked(2).await;
    assert_eq!(node.log(), ["writing 1", "wrote 1", "writing 0", "wrote 0"]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while node.transitions().len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "transitions so far: {:?}", node.transitions());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(node.transitions(), ["occupied news", "vacated news"]);
    assert!(node.written().await.is_empty());
}

#[tokio::test]
async fn an_occupancy_write_its_subscribe_abandoned_is_still_made() {
    let node = Node::start().await;
    let first = node.connect("c1");
    let subscribing = node.subscribe(&first);
    node.writes_asked(1).await;
    // The connection's task ends while its subscribe waits for the write.
    subscribing.abort();
    assert!(subscribing.await.unwrap_err().is_cancelled());

    node.open(1);
    node.writes_asked(2).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while node.written().await != [1] {
        assert!(tokio::time::Instant::now() < deadline, "the engine holds {:?}", node.written().await);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(node.log(), ["writing 1", "writing 1", "wrote 1"]);

    // And the channel's writes go on.
    let second = node.connect("c2");
    let subscribing = node.subscribe(&second);
    node.writes_asked(3).await;
    node.open(1);
    finished(subscribing).await.unwrap();
    assert_eq!(node.log()[3..], ["writing 2", "wrote 2"]);
}

#[tokio::test]
async fn a_heartbeat_never_occupies_again_a_channel_emptied_while_it_refreshed_another() {
    let node = Node::start().await;
    let sports = ChannelName::new("sports").unwrap();
    let (first, second) = (node.connect("c1"), node.connect("c2"));
    let subscribing = node.subscribe(&first);
    node.writes_asked(1).await;
    node.open(1);
    finished(subscribing).await.unwrap();
    let subscribing = node.subscribe_to(&second, &sports);
    node.writes_asked(2).await;
    node.open(1);
    finished(subscribing).await.unwrap();

    // The heartbeat's refresh of news waits at the gate while sports's
    // last subscriber leaves.
    let beating = node.heartbeat();
    node.writes_asked(3).await;
    let leaving = node.unsubscribe_from(&second, &sports);
    node.writes_asked(4).await;
    node.open(2);
    assert!(finished(leaving).await);
    // Whatever else the heartbeat has to write, it may.
    node.open(2);
    finished(beating).await;

    node.holds(&sports, &[]).await;
    node.holds(&node.channel, &[1]).await;
    assert_eq!(node.transitions(), ["occupied news", "occupied sports", "vacated sports"]);
}

#[tokio::test]
async fn a_count_changed_while_the_heartbeat_writes_it_is_written_after_its_refresh() {
    let node = Node::start().await;
    let first = node.connect("c1");
    let subscribing = node.subscribe(&first);
    node.writes_asked(1).await;
    node.open(1);
    finished(subscribing).await.unwrap();

    let beating = node.heartbeat();
    node.writes_asked(2).await;
    // The refresh is the channel's write under way: the new count waits
    // for it, and the subscribe does not.
    finished(node.subscribe(&node.connect("c2"))).await.unwrap();
    node.open(2);
    finished(beating).await;
    node.holds(&node.channel, &[2]).await;
    assert_eq!(node.log(), ["writing 1", "wrote 1", "writing 1", "wrote 1", "writing 2", "wrote 2"]);
    assert_eq!(node.transitions(), ["occupied news"]);
}

#[tokio::test]
async fn a_heartbeat_writes_back_an_entry_the_engine_lost_without_telling_the_channel_occupied_again() {
    let node = Node::start().await;
    let subscribing = node.subscribe(&node.connect("c1"));
    node.writes_asked(1).await;
    node.open(1);
    finished(subscribing).await.unwrap();
    // The backplane lost the node's entry (a restart without persistence).
    node.memory.vacate(&node.channel, &NodeId::new("n")).await.unwrap();

    let beating = node.heartbeat();
    node.writes_asked(2).await;
    node.open(1);
    finished(beating).await;
    node.holds(&node.channel, &[1]).await;
    assert_eq!(node.transitions(), ["occupied news"], "told once: its clients never left");
}
