//! The clients joining one channel announce their joins side by side: the
//! channel's interest lock is not held while a join is told. A leave
//! still never comes before its join, nor a later subscription's join
//! before the earlier one's leave.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_engine::{
    Arrival, ChannelName, ClientInfo, Departure, Engine, EngineError, ExpiredEntry, MemoryEngine, NodeId, Presence,
    PresenceStats,
};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::tests::{connect_encoding_offsets, finished, frames, sent, until_sent};
use super::{Hub, HubConfig, HubObserver, SubscribeAccess, SubscribeOutcome, SubscribeRequest};
use crate::connection::Connection;
use crate::error::HubError;
use crate::frame::Frame;
use crate::namespace::{ChannelRules, NamespaceOptions};
use crate::outbox::Outgoing;

/// The memory engine's presence, but each entry added waits at a gate the
/// test opens one addition at a time, in the order they arrived (a
/// refresh does not); what reached the engine is written down in order.
#[derive(Debug)]
struct GatedPresence {
    memory: Arc<MemoryEngine>,
    gate: Arc<Semaphore>,
    log: Arc<Mutex<Vec<String>>>,
    /// When set, a refresh waits at `refresh_gate` before it writes.
    hold_refreshes: Arc<AtomicBool>,
    refresh_gate: Arc<Semaphore>,
}

impl GatedPresence {
    fn note(&self, line: String) {
        self.log.lock().unwrap().push(line);
    }
}

#[async_trait::async_trait]
impl Presence for GatedPresence {
    async fn add_presence(
        &self,
        channel: &ChannelName,
        info: &ClientInfo,
        ttl: Duration,
    ) -> Result<Arrival, EngineError> {
        self.note(format!("adding {}", info.client));
        self.gate.acquire().await.expect("the gate stays open").forget();
        let added = self.memory.add_presence(channel, info, ttl).await;
        self.note(format!("added {}", info.client));
        added
    }
    async fn remove_presence(&self, channel: &ChannelName, info: &ClientInfo) -> Result<Departure, EngineError> {
        self.note(format!("removed {}", info.client));
        self.memory.remove_presence(channel, info).await
    }
    async fn presence(&self, channel: &ChannelName) -> Result<Vec<ClientInfo>, EngineError> {
        self.memory.presence(channel).await
    }
    async fn refresh_presence(&self, entries: &[(ChannelName, ClientInfo)], ttl: Duration) -> Vec<EngineError> {
        if self.hold_refreshes.load(Ordering::SeqCst) {
            for (_, info) in entries {
                self.note(format!("refreshing {}", info.client));
            }
            self.refresh_gate.acquire().await.expect("the gate stays open").forget();
        }
        for (_, info) in entries {
            self.note(format!("refreshed {}", info.client));
        }
        self.memory.refresh_presence(entries, ttl).await
    }
    async fn presence_stats(&self, channel: &ChannelName) -> Result<PresenceStats, EngineError> {
        self.memory.presence_stats(channel).await
    }
    async fn expire_presence(&self, channel: &ChannelName) -> Result<Vec<ExpiredEntry>, EngineError> {
        self.memory.expire_presence(channel).await
    }
}

/// Records the users arriving and departing that the hub reports.
#[derive(Debug, Default)]
struct Users(Mutex<Vec<String>>);

impl HubObserver for Users {
    fn channel_occupied(&self, _: &ChannelName) {}
    fn channel_vacated(&self, _: &ChannelName) {}
    fn user_joined(&self, _: &ChannelName, info: &ClientInfo) {
        self.0.lock().unwrap().push(format!("arrived {}", info.user));
    }
    fn user_left(&self, _: &ChannelName, info: &ClientInfo) {
        self.0.lock().unwrap().push(format!("departed {}", info.user));
    }
}

struct Node {
    hub: Arc<Hub>,
    gate: Arc<Semaphore>,
    log: Arc<Mutex<Vec<String>>>,
    hold_refreshes: Arc<AtomicBool>,
    refresh_gate: Arc<Semaphore>,
    users: Arc<Users>,
    channel: ChannelName,
}

impl Node {
    /// A node whose `room` namespace has presence with joins and leaves
    /// (and no history); every entry added is held at the gate.
    async fn start() -> Self {
        let memory = Arc::new(MemoryEngine::new());
        let (gate, log) = (Arc::new(Semaphore::new(0)), Arc::default());
        let (hold_refreshes, refresh_gate) = (Arc::new(AtomicBool::new(false)), Arc::new(Semaphore::new(0)));
        let presence = GatedPresence {
            memory: memory.clone(),
            gate: gate.clone(),
            log: Arc::clone(&log),
            hold_refreshes: hold_refreshes.clone(),
            refresh_gate: refresh_gate.clone(),
        };
        let engine = Engine::from_parts(
            "gated",
            memory.clone(),
            memory.clone(),
            Arc::new(presence),
            memory.clone(),
            memory.clone(),
        );
        let room = NamespaceOptions { presence: true, join_leave: true, ..Default::default() };
        let rules = ChannelRules::new(NamespaceOptions::default(), BTreeMap::from([("room".to_owned(), room)]));
        let hub = Hub::new(HubConfig::new(NodeId::new("n"), rules), engine);
        hub.start().await.unwrap();
        let users = Arc::new(Users::default());
        hub.observe(users.clone());
        Self { hub, gate, log, hold_refreshes, refresh_gate, users, channel: ChannelName::new("room:x").unwrap() }
    }

    fn connect(&self, client: &str) -> Arc<Connection> {
        self.connect_as(client, client)
    }

    fn connect_as(&self, client: &str, user: &str) -> Arc<Connection> {
        connect_encoding_offsets(&self.hub, client, user)
    }

    /// Starts `conn`'s subscribe, hearing joins and leaves; its entry's
    /// addition reaches the gate and waits there.
    fn subscribe(&self, conn: &Arc<Connection>) -> JoinHandle<Result<SubscribeOutcome, HubError>> {
        let (hub, conn, channel) = (self.hub.clone(), conn.clone(), self.channel.clone());
        tokio::spawn(async move {
            let reply = |_: &SubscribeOutcome| Some(Outgoing::Frame(Frame::Text("sub".into())));
            let mut request = SubscribeRequest::default();
            request.subscription.join_leave = true;
            hub.subscribe(&conn, &channel, SubscribeAccess::Client, request, reply).await
        })
    }

    /// Connects `client` and has it join, its entry let through the gate;
    /// it hears joins and leaves from then on.
    async fn joined(&self, client: &str) -> Arc<Connection> {
        let conn = self.connect(client);
        let subscribing = self.subscribe(&conn);
        self.open(1);
        finished(subscribing).await.unwrap();
        until_sent(&conn, &["sub", &format!("join {client}")]).await;
        conn
    }

    fn unsubscribe(&self, conn: &Arc<Connection>) -> JoinHandle<bool> {
        let (hub, conn, channel) = (self.hub.clone(), conn.clone(), self.channel.clone());
        tokio::spawn(async move { hub.unsubscribe(&conn, &channel).await })
    }

    /// Waits until `additions` entries have reached the gate.
    async fn additions_waiting(&self, additions: usize) {
        self.reaching("adding", additions).await;
    }

    /// Waits until `step` has been reached `times` times (five seconds at
    /// most).
    async fn reaching(&self, step: &str, times: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.reached(step) < times {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{step}: {} of {times} reached, one waits for another: {:?}",
                self.reached(step),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The clients present in the channel, sorted.
    async fn present(&self) -> Vec<String> {
        let mut clients: Vec<String> =
            self.hub.presence(&self.channel).await.unwrap().into_iter().map(|info| info.client.to_string()).collect();
        clients.sort();
        clients
    }

    fn reached(&self, step: &str) -> usize {
        self.log.lock().unwrap().iter().filter(|line| line.starts_with(step)).count()
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Lets the next `additions` entries through, in the order they came.
    fn open(&self, additions: usize) {
        self.gate.add_permits(additions);
    }
}

/// Lets every other task run as far as it can without the gate: the
/// engine here is in memory, so nothing else holds them up.
async fn settle() {
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn clients_joining_one_channel_announce_their_joins_side_by_side() {
    let node = Node::start().await;
    let clients: Vec<_> = (1..=3).map(|n| node.connect(&format!("c{n}"))).collect();
    let subscribing: Vec<_> = clients.iter().map(|client| node.subscribe(client)).collect();
    node.additions_waiting(3).await;

    node.open(3);
    for task in subscribing {
        finished(task).await.unwrap();
    }
    assert_eq!(node.present().await, ["c1", "c2", "c3"]);
    // Each was subscribed before any join was told: it hears all three.
    for client in &clients {
        let mut heard = sent(client, 4).await;
        assert_eq!(heard.remove(0), "sub");
        heard.sort();
        assert_eq!(heard, ["join c1", "join c2", "join c3"]);
    }
}

#[tokio::test]
async fn a_leave_waits_for_its_join_to_be_told() {
    let node = Node::start().await;
    let watcher = node.joined("watcher").await;

    let client = node.connect("c1");
    let subscribing = node.subscribe(&client);
    node.additions_waiting(2).await;
    let unsubscribing = node.unsubscribe(&client);
    settle().await;
    assert!(!node.log().contains(&"removed c1".to_owned()), "the entry is not removed before it was added");
    assert!(frames(&watcher).is_empty(), "no leave before the join");

    node.open(1);
    finished(subscribing).await.unwrap();
    assert!(finished(unsubscribing).await, "the client was told of its subscription, so of its end too");
    assert_eq!(node.log()[2..], ["adding c1", "added c1", "removed c1"]);
    until_sent(&watcher, &["join c1", "leave c1"]).await;
    assert_eq!(node.present().await, ["watcher"]);
}

#[tokio::test]
async fn a_subscription_made_again_joins_after_the_earlier_one_left() {
    let node = Node::start().await;
    let watcher = node.joined("watcher").await;

    let client = node.connect("c1");
    let first = node.subscribe(&client);
    node.additions_waiting(2).await;
    let unsubscribing = node.unsubscribe(&client);
    settle().await;
    let again = node.subscribe(&client);
    settle().await;
    assert_eq!(node.reached("adding"), 2, "the second join waits for the first one's leave");

    node.open(2);
    finished(first).await.unwrap();
    assert!(finished(unsubscribing).await);
    finished(again).await.unwrap();
    assert_eq!(node.log()[2..], ["adding c1", "added c1", "removed c1", "adding c1", "added c1"]);
    until_sent(&watcher, &["join c1", "leave c1", "join c1"]).await;
    // Its first join was told after it had left the channel (the
    // front-end tells it of the end; the hub sends nothing).
    until_sent(&client, &["sub", "sub", "join c1"]).await;
}

#[tokio::test]
async fn a_users_leave_from_one_tab_waits_for_its_join_from_another() {
    let node = Node::start().await;
    let old_tab = node.connect_as("tab1", "ann");
    let subscribing = node.subscribe(&old_tab);
    node.open(1);
    finished(subscribing).await.unwrap();

    // The page reloads: the new tab joins while the old one leaves.
    let new_tab = node.connect_as("tab2", "ann");
    let subscribing = node.subscribe(&new_tab);
    node.additions_waiting(2).await;
    let leaving = node.unsubscribe(&old_tab);
    settle().await;
    assert!(
        !node.log().contains(&"removed tab1".to_owned()),
        "the old tab's entry stays until the new one's is written"
    );

    node.open(1);
    finished(subscribing).await.unwrap();
    assert!(finished(leaving).await);
    assert_eq!(node.log()[2..], ["adding tab2", "added tab2", "removed tab1"]);
    // So ann never departed, and arrived once.
    assert_eq!(*node.users.0.lock().unwrap(), ["arrived ann"]);
}

#[tokio::test]
async fn a_presence_refresh_leaves_the_entry_of_a_join_under_way_to_it() {
    let node = Node::start().await;
    let (settled, joining) = (node.connect("c1"), node.connect("c2"));
    let subscribing = node.subscribe(&settled);
    node.open(1);
    finished(subscribing).await.unwrap();
    let subscribing = node.subscribe(&joining);
    node.additions_waiting(2).await;

    // A heartbeat lists both subscriptions while c2's entry is being added.
    node.hub.presence.refresh(|| node.hub.present_entries()).await;
    assert_eq!(node.log()[2..], ["adding c2", "refreshed c1"], "c2's entry is its join's to write");

    node.open(1);
    finished(subscribing).await.unwrap();
    // So its join finds c2 absent, and tells of its arrival.
    assert_eq!(*node.users.0.lock().unwrap(), ["arrived c1", "arrived c2"]);
}

#[tokio::test]
async fn a_connection_that_leaves_and_joins_again_while_a_refresh_writes_is_told_arriving() {
    let node = Node::start().await;
    let client = node.joined("c1").await;
    node.hold_refreshes.store(true, Ordering::SeqCst);
    let hub = node.hub.clone();
    let refreshing = tokio::spawn(async move { hub.presence.refresh(|| hub.present_entries()).await });
    node.reaching("refreshing c1", 1).await;

    // It leaves and joins again while the refresh, which listed it, has
    // yet to write its entry back.
    assert!(finished(node.unsubscribe(&client)).await);
    let rejoining = node.subscribe(&client);
    settle().await;
    node.refresh_gate.add_permits(1);
    finished(refreshing).await;
    node.open(1);
    finished(rejoining).await.unwrap();

    assert_eq!(*node.users.0.lock().unwrap(), ["arrived c1", "departed c1", "arrived c1"]);
    assert_eq!(node.present().await, ["c1"]);
}
