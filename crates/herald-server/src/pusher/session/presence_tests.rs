//! A presence subscription's member list and the joins and leaves around
//! it: the list is read while members come and go, and what the client is
//! told after it is only what the list does not already tell.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::Semaphore;

use herald_core::{ChannelRules, Hub};
use herald_engine::{
    Arrival, ChannelName, ClientInfo, Departure, Engine, EngineError, ExpiredEntry, MemoryEngine, Presence,
    PresenceStats,
};

use super::tests::{connected_on, node_over, Harness};
use crate::config::ClientConfig;

/// The memory engine's presence, but while `holding`, each read of a
/// channel's members waits at a gate the test opens.
#[derive(Debug)]
struct HeldReads {
    memory: Arc<MemoryEngine>,
    holding: Arc<AtomicBool>,
    held: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
}

#[async_trait::async_trait]
impl Presence for HeldReads {
    async fn add_presence(&self, c: &ChannelName, i: &ClientInfo, ttl: Duration) -> Result<Arrival, EngineError> {
        self.memory.add_presence(c, i, ttl).await
    }
    async fn remove_presence(&self, c: &ChannelName, i: &ClientInfo) -> Result<Departure, EngineError> {
        self.memory.remove_presence(c, i).await
    }
    async fn presence(&self, c: &ChannelName) -> Result<Vec<ClientInfo>, EngineError> {
        if self.holding.load(Ordering::SeqCst) {
            self.held.fetch_add(1, Ordering::SeqCst);
            self.gate.acquire().await.expect("the gate stays open").forget();
        }
        self.memory.presence(c).await
    }
    async fn presence_stats(&self, c: &ChannelName) -> Result<PresenceStats, EngineError> {
        self.memory.presence_stats(c).await
    }
    async fn expire_presence(&self, c: &ChannelName) -> Result<Vec<ExpiredEntry>, EngineError> {
        self.memory.expire_presence(c).await
    }
}

struct Reads {
    holding: Arc<AtomicBool>,
    held: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
}

impl Reads {
    /// Waits until `reads` member reads wait at the gate.
    async fn waiting(&self, reads: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.held.load(Ordering::SeqCst) < reads {
            assert!(tokio::time::Instant::now() < deadline, "{} member reads held", self.held.load(Ordering::SeqCst));
            tokio::task::yield_now().await;
        }
    }
}

async fn node() -> ((Arc<Hub>, Arc<super::super::Frontend>, Arc<crate::driver::Sessions>), Reads) {
    let memory = Arc::new(MemoryEngine::new());
    let reads = Reads { holding: Arc::default(), held: Arc::default(), gate: Arc::new(Semaphore::new(0)) };
    let presence = HeldReads {
        memory: memory.clone(),
        holding: reads.holding.clone(),
        held: reads.held.clone(),
        gate: reads.gate.clone(),
    };
    let engine = Engine::from_parts("held", memory.clone(), memory.clone(), Arc::new(presence), memory.clone(), memory);
    (node_over(engine, ChannelRules::default(), ClientConfig::default()).await, reads)
}

/// Joins `room` as `user` and waits for the member list.
async fn member(node: &(Arc<Hub>, Arc<super::super::Frontend>, Arc<crate::driver::Sessions>), user: &str) -> Harness {
    let (mut s, socket_id) = connected_on(node.clone()).await;
    s.join(&socket_id, "presence-room", user);
    assert_eq!(s.next_json().await["event"], "pusher_internal:subscription_succeeded");
    s
}

fn ids(listed: &Value) -> Vec<String> {
    let data: Value = serde_json::from_str(listed["data"].as_str().unwrap()).unwrap();
    let ids = data["presence"]["ids"].as_array().unwrap().iter();
    let mut ids: Vec<String> = ids.map(|id| id.as_str().unwrap().to_owned()).collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn joins_and_leaves_the_member_list_already_tells_are_not_told_again_after_it() {
    let (node, reads) = node().await;
    let mut leaving = member(&node, "ann").await;

    // The watcher's subscription is live; its member list is being read.
    reads.holding.store(true, Ordering::SeqCst);
    let (mut watcher, socket_id) = connected_on(node.clone()).await;
    watcher.join(&socket_id, "presence-room", "watcher");
    reads.waiting(1).await;
    reads.gate.add_permits(1); // the member limit's read, before the subscription
    reads.waiting(2).await;
    reads.holding.store(false, Ordering::SeqCst);

    // Meanwhile bob joins and ann leaves: both are queued for the watcher.
    let _bob = member(&node, "bob").await;
    leaving.send(json!({"event": "pusher:unsubscribe", "data": {"channel": "presence-room"}}));
    leaving.send(json!({"event": "pusher:ping", "data": {}}));
    // Its pong follows the unsubscribe, done (it was told of the others
    // joining before).
    while leaving.next_json().await["event"] != "pusher:pong" {}

    reads.gate.add_permits(1);
    let listed = watcher.next_json().await;
    assert_eq!(listed["event"], "pusher_internal:subscription_succeeded");
    assert_eq!(ids(&listed), ["bob", "watcher"]);

    // Told next: cara's arrival, not bob's again nor ann's departure.
    let _cara = member(&node, "cara").await;
    let told = watcher.next_json().await;
    assert_eq!(told["event"], "pusher_internal:member_added", "{told}");
    assert_eq!(told["data"], json!({"user_id": "cara", "user_info": {}}).to_string());
}
