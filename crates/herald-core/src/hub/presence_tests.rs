//! The heartbeat refreshes each presence entry every few beats, as seldom
//! as keeps it alive, a like share of them at each beat; after a refresh
//! fails or the engine's link breaks, the next beat refreshes them all; a
//! leave while a refresh writes stays a leave.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use herald_engine::{
    Arrival, ChannelName, ClientId, ClientInfo, Departure, Engine, EngineError, EngineEvent, ExpiredEntry,
    MemoryEngine, NodeId, Presence, PresenceEvent, PresenceStats, Publication, Swept, UserId,
};

use super::presence::beats_between_refreshes;
use super::{Hub, HubConfig, SubscribeAccess, SubscribeRequest};
use crate::connection::{Connection, ConnectionSpec, PushEncoder};
use crate::frame::Frame;
use crate::namespace::{ChannelRules, NamespaceOptions};
use crate::outbox::Outbox;

const INTERVAL: Duration = Duration::from_secs(10);
/// Six intervals: an entry is refreshed every fourth beat.
const TTL: Duration = Duration::from_secs(60);
const USERS: usize = 40;

#[derive(Debug)]
struct Silent;

impl PushEncoder for Silent {
    fn protocol(&self) -> &'static str {
        "test"
    }
    fn encode_publication(&self, _: &ChannelName, _: &Publication) -> Frame {
        Frame::Binary(Bytes::new())
    }
    fn encode_presence(&self, _: &ChannelName, _: &PresenceEvent, _: bool) -> Option<Frame> {
        None
    }
}

/// The memory engine's presence, recording what each refresh was asked
/// to write and counting the sweeps (one per beat while anyone is present);
/// a refresh can be made to fail.
#[derive(Debug)]
struct Recorded {
    memory: Arc<MemoryEngine>,
    /// Each refresh's (channel, user) pairs, in call order.
    refreshes: Mutex<Vec<Vec<(String, String)>>>,
    fail_next_refresh: Mutex<bool>,
    sweeps: tokio::sync::watch::Sender<usize>,
    /// The next refresh waits for this before it writes, saying so in `held`.
    hold_next_refresh: Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
    held: tokio::sync::watch::Sender<bool>,
}

#[async_trait::async_trait]
impl Presence for Recorded {
    async fn add_presence(
        &self,
        channel: &ChannelName,
        info: &ClientInfo,
        ttl: Duration,
    ) -> Result<Arrival, EngineError> {
        self.memory.add_presence(channel, info, ttl).await
    }
    async fn remove_presence(&self, channel: &ChannelName, info: &ClientInfo) -> Result<Departure, EngineError> {
        self.memory.remove_presence(channel, info).await
    }
    async fn presence(&self, channel: &ChannelName) -> Result<Vec<ClientInfo>, EngineError> {
        self.memory.presence(channel).await
    }
    async fn presence_stats(&self, channel: &ChannelName) -> Result<PresenceStats, EngineError> {
        self.memory.presence_stats(channel).await
    }
    async fn expire_presence(&self, channel: &ChannelName) -> Result<Vec<ExpiredEntry>, EngineError> {
        self.memory.expire_presence(channel).await
    }
    async fn refresh_presence(&self, entries: &[(ChannelName, ClientInfo)], ttl: Duration) -> Vec<EngineError> {
        if std::mem::take(&mut *self.fail_next_refresh.lock().unwrap()) {
            return vec![EngineError::Unavailable("the backplane did not answer".into())];
        }
        let pairs = entries.iter().map(|(channel, info)| (channel.to_string(), info.user.to_string())).collect();
        self.refreshes.lock().unwrap().push(pairs);
        let hold = self.hold_next_refresh.lock().unwrap().take();
        if let Some(hold) = hold {
            self.held.send_replace(true);
            hold.await.unwrap();
        }
        self.memory.refresh_presence(entries, ttl).await
    }
    async fn expire_presence_of(&self, channels: &[ChannelName]) -> Swept {
        let swept = self.memory.expire_presence_of(channels).await;
        self.sweeps.send_modify(|sweeps| *sweeps += 1);
        swept
    }
}

impl Recorded {
    fn take_refreshes(&self) -> Vec<Vec<(String, String)>> {
        std::mem::take(&mut *self.refreshes.lock().unwrap())
    }
}

/// A started hub whose `room:*` channels keep presence, beating every
/// [`INTERVAL`] with entries that live [`TTL`], and its recorded presence.
async fn hub() -> (Arc<Hub>, Arc<Recorded>) {
    let room = NamespaceOptions { presence: true, ..Default::default() };
    let rules = ChannelRules::new(NamespaceOptions::default(), BTreeMap::from([("room".to_string(), room)]));
    let mut config = HubConfig::new(NodeId::new("test"), rules);
    config.presence_update_interval = INTERVAL;
    config.presence_ttl = TTL;
    let memory = Arc::new(MemoryEngine::default());
    let recorded = Arc::new(Recorded {
        memory: memory.clone(),
        refreshes: Mutex::default(),
        fail_next_refresh: Mutex::default(),
        sweeps: tokio::sync::watch::channel(0).0,
        hold_next_refresh: Mutex::default(),
        held: tokio::sync::watch::channel(false).0,
    });
    let engine =
        Engine::from_parts("recorded", memory.clone(), memory.clone(), recorded.clone(), memory.clone(), memory);
    let hub = Hub::new(config, engine);
    hub.start().await.unwrap();
    (hub, recorded)
}

async fn join(hub: &Arc<Hub>, user: &str, channel: &str) -> Arc<Connection> {
    let conn = hub
        .connect(ConnectionSpec {
            client: ClientId::new(&format!("{user}-{channel}-{}", hub.stats().clients)),
            user: UserId::new(user).unwrap(),
            conn_info: None,
            encoder: Arc::new(Silent),
            outbox: Arc::new(Outbox::new(1 << 16)),
        })
        .unwrap();
    let channel = ChannelName::new(channel).unwrap();
    hub.subscribe(&conn, &channel, SubscribeAccess::Client, SubscribeRequest::default(), |_| None).await.unwrap();
    conn
}

/// Users `u0`… each in a room of their own, and `u0` in its room twice.
async fn users_in_rooms(hub: &Arc<Hub>) -> Vec<Arc<Connection>> {
    let mut conns = Vec::new();
    for n in 0..USERS {
        conns.push(join(hub, &format!("u{n}"), &format!("room:{n}")).await);
    }
    conns.push(join(hub, "u0", "room:0").await);
    conns
}

/// Lets one interval pass and waits for the beat it brings to finish.
async fn next_beat(recorded: &Recorded) {
    let before = *recorded.sweeps.borrow();
    tokio::time::sleep(INTERVAL).await;
    recorded.sweeps.subscribe().wait_for(|sweeps| *sweeps > before).await.unwrap();
}

async fn everyone_present(hub: &Hub) -> bool {
    for n in 0..USERS {
        let expected = if n == 0 { 2 } else { 1 };
        let room = ChannelName::new(&format!("room:{n}")).unwrap();
        if hub.presence_stats(&room).await.unwrap().num_clients != expected {
            return false;
        }
    }
    true
}

#[test]
fn an_entry_is_refreshed_as_seldom_as_leaves_two_beats_before_it_expires() {
    let s = Duration::from_secs;
    assert_eq!(beats_between_refreshes(s(25), s(60)), 1, "the defaults: every beat");
    assert_eq!(beats_between_refreshes(s(10), s(60)), 4);
    assert_eq!(beats_between_refreshes(s(10), s(65)), 4);
    assert_eq!(beats_between_refreshes(s(1), s(60)), 58);
    assert_eq!(beats_between_refreshes(s(5), s(12)), 1);
    assert_eq!(beats_between_refreshes(s(60), s(10)), 1, "a ttl shorter than the interval");
    assert_eq!(beats_between_refreshes(Duration::ZERO, s(10)), 1, "no interval");
}

#[tokio::test(start_paused = true)]
async fn each_entry_is_refreshed_every_fourth_beat_and_stays_present() {
    let (hub, recorded) = hub().await;
    let _conns = users_in_rooms(&hub).await;
    recorded.take_refreshes();

    let mut per_pair: HashMap<(String, String), usize> = HashMap::new();
    let mut per_beat = Vec::new();
    for _ in 0..12 {
        next_beat(&recorded).await;
        assert!(everyone_present(&hub).await, "no entry expires between its refreshes");
        let written: Vec<_> = recorded.take_refreshes().into_iter().flatten().collect();
        per_beat.push(written.len());
        for pair in written {
            *per_pair.entry(pair).or_default() += 1;
        }
    }
    assert_eq!(per_pair.len(), USERS, "every (channel, user) was refreshed");
    let u0 = (String::from("room:0"), String::from("u0"));
    for (pair, times) in &per_pair {
        let connections = if *pair == u0 { 2 } else { 1 };
        assert_eq!(*times, 3 * connections, "{pair:?}: once every four beats, with all of its user's connections");
    }
    assert_eq!(per_beat.iter().sum::<usize>(), 3 * (USERS + 1));
    assert!(per_beat.iter().all(|&n| n < USERS / 2), "each beat writes a share, not all: {per_beat:?}");
}

#[tokio::test(start_paused = true)]
async fn after_a_failed_refresh_the_next_beat_refreshes_every_entry() {
    let (hub, recorded) = hub().await;
    let _conns = users_in_rooms(&hub).await;
    next_beat(&recorded).await;
    recorded.take_refreshes();

    *recorded.fail_next_refresh.lock().unwrap() = true;
    next_beat(&recorded).await;
    assert!(recorded.take_refreshes().is_empty(), "the refresh failed");
    next_beat(&recorded).await;
    let again = recorded.take_refreshes();
    assert_eq!(again.len(), 1, "one batch");
    assert_eq!(again[0].len(), USERS + 1, "every entry, due or not");
    next_beat(&recorded).await;
    let after = recorded.take_refreshes().concat();
    assert!(after.len() < USERS / 2, "then a share again: {}", after.len());
    assert!(everyone_present(&hub).await);
}

#[tokio::test(start_paused = true)]
async fn after_a_break_in_the_engines_link_the_next_beat_refreshes_every_entry() {
    let (hub, recorded) = hub().await;
    let _conns = users_in_rooms(&hub).await;
    next_beat(&recorded).await;
    recorded.take_refreshes();

    hub.clone().on_engine_event(EngineEvent::Interrupted);
    next_beat(&recorded).await;
    assert_eq!(recorded.take_refreshes().concat().len(), USERS + 1, "the backplane may have lost them: all again");
    next_beat(&recorded).await;
    assert!(recorded.take_refreshes().concat().len() < USERS / 2, "then a share again");
}

/// Brings the next beat, one that refreshes every entry (after a break in
/// the engine's link), and holds its refresh before it writes. The beat
/// goes on when the returned sender is used; `finish_beat` waits for it.
async fn hold_next_refresh(hub: &Arc<Hub>, recorded: &Recorded) -> (tokio::sync::oneshot::Sender<()>, usize) {
    hub.clone().on_engine_event(EngineEvent::Interrupted);
    recorded.take_refreshes();
    let (release, hold) = tokio::sync::oneshot::channel();
    *recorded.hold_next_refresh.lock().unwrap() = Some(hold);
    let sweeps = *recorded.sweeps.borrow();
    tokio::time::sleep(INTERVAL).await;
    recorded.held.subscribe().wait_for(|held| *held).await.unwrap();
    (release, sweeps)
}

async fn finish_beat(recorded: &Recorded, (release, sweeps): (tokio::sync::oneshot::Sender<()>, usize)) {
    release.send(()).unwrap();
    recorded.sweeps.subscribe().wait_for(|done| *done > sweeps).await.unwrap();
}

async fn present(hub: &Hub, channel: &str) -> usize {
    hub.presence_stats(&ChannelName::new(channel).unwrap()).await.unwrap().num_clients
}

#[tokio::test(start_paused = true)]
async fn a_leave_while_a_refresh_is_writing_is_not_undone_by_it() {
    let (hub, recorded) = hub().await;
    let ann = join(&hub, "ann", "room:0").await;
    let _bob = join(&hub, "bob", "room:1").await;
    next_beat(&recorded).await;

    // The refresh lists ann's entry before she leaves and writes it after.
    let held = hold_next_refresh(&hub, &recorded).await;
    assert!(hub.unsubscribe(&ann, &ChannelName::new("room:0").unwrap()).await, "ann leaves");
    assert_eq!(present(&hub, "room:0").await, 0, "her entry is gone");
    finish_beat(&recorded, held).await;

    assert_eq!(recorded.take_refreshes().concat().len(), 2, "the refresh wrote both entries");
    assert_eq!(present(&hub, "room:0").await, 0, "the refresh that listed her before she left did not bring her back");
    assert_eq!(present(&hub, "room:1").await, 1, "bob's entry stays");
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_leaves_and_comes_back_while_a_refresh_is_writing_stays_present() {
    let (hub, recorded) = hub().await;
    let ann = join(&hub, "ann", "room:0").await;
    next_beat(&recorded).await;

    let held = hold_next_refresh(&hub, &recorded).await;
    let room = ChannelName::new("room:0").unwrap();
    assert!(hub.unsubscribe(&ann, &room).await, "ann leaves");
    // Her join waits for the refresh, which may write her entry back.
    let (again, ann_again) = (hub.clone(), ann.clone());
    let back = tokio::spawn(async move {
        again.subscribe(&ann_again, &room, SubscribeAccess::Client, SubscribeRequest::default(), |_| None).await
    });
    finish_beat(&recorded, held).await;
    back.await.unwrap().unwrap();

    assert_eq!(present(&hub, "room:0").await, 1, "she came back: her entry stays");
}
