//! The conformance suite: what every engine must do, checked the same way.
//!
//! Each engine's own tests call [`run_all`] with a factory that returns a
//! fresh, not yet started engine (on its own backplane where it has one) and
//! a function that lets time pass: `tokio::time::advance` for engines on
//! tokio time, a real sleep for engines whose clock is a server's. Durations
//! here are short so a real clock costs seconds, not minutes. Cases wait on
//! conditions with a deadline, never on fixed sleeps.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::engine::{Engine, EventHandler, Health, HistoryOptions, HistoryQuery, PublishOptions, PublishResult};
use crate::ids::{ChannelName, ClientId, Epoch, NodeId, Offset, UserId};
use crate::message::{
    ClientInfo, Control, DisconnectReason, EngineEvent, NodeInfo, PresenceStats, Publication, StreamPosition,
};

/// How long a case waits for something that should happen.
const EVENTUALLY: Duration = Duration::from_secs(5);

/// History options used by the cases.
pub const HISTORY: HistoryOptions =
    HistoryOptions { size: 5, ttl: Duration::from_secs(2), meta_ttl: Duration::from_secs(4) };

/// Runs every case, each on a fresh engine from `make`.
pub async fn run_all<F, Fut, A, AFut>(make: F, advance: A)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Engine>>,
    A: Fn(Duration) -> AFut,
    AFut: Future<Output = ()>,
{
    publications_reach_a_subscribed_node_in_order(make().await).await;
    publications_skip_channels_the_node_is_not_subscribed_to(make().await).await;
    unsubscribe_stops_delivery(make().await).await;
    offsets_grow_by_one_and_history_reads_back_in_order(make().await).await;
    history_is_trimmed_to_its_size(make().await).await;
    publications_expire_but_the_position_survives(make().await, &advance).await;
    an_expired_stream_starts_again_under_a_new_epoch(make().await, &advance).await;
    removing_history_starts_a_new_epoch(make().await).await;
    channels_without_history_have_no_positions(make().await).await;
    a_repeated_idempotency_key_publishes_once(make().await, &advance).await;
    presence_counts_users_once_and_expires(make().await, &advance).await;
    a_users_arrival_and_departure_are_reported_once(make().await).await;
    joins_and_leaves_reach_subscribed_nodes(make().await).await;
    the_node_registry_forgets_silent_nodes(make().await, &advance).await;
    control_commands_reach_the_sending_node(make().await).await;
    a_started_engine_is_ready(make().await).await;
}

/// Collects what an engine delivers, for assertions.
#[derive(Debug)]
pub struct Recorder {
    rx: mpsc::UnboundedReceiver<EngineEvent>,
}

struct RecordingHandler(mpsc::UnboundedSender<EngineEvent>);

impl EventHandler for RecordingHandler {
    fn handle(&self, event: EngineEvent) {
        let _ = self.0.send(event);
    }
}

impl Recorder {
    /// Starts `engine` with a handler that records into the returned recorder.
    pub async fn start(engine: &dyn Engine) -> Recorder {
        let (tx, rx) = mpsc::unbounded_channel();
        engine.start(Arc::new(RecordingHandler(tx))).await.expect("engine starts");
        Recorder { rx }
    }

    /// The next event, or a panic naming what was awaited.
    pub async fn next(&mut self, waiting_for: &str) -> EngineEvent {
        match tokio::time::timeout(EVENTUALLY, self.rx.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => panic!("engine dropped its handler while waiting for {waiting_for}"),
            Err(_) => panic!("timed out waiting for {waiting_for}"),
        }
    }

    /// The next publication's channel and the publication.
    pub async fn next_publication(&mut self, waiting_for: &str) -> (ChannelName, Arc<Publication>) {
        match self.next(waiting_for).await {
            EngineEvent::Publication { channel, publication } => (channel, publication),
            other => panic!("expected a publication ({waiting_for}), got {other:?}"),
        }
    }
}

fn channel(name: &str) -> ChannelName {
    ChannelName::new(name).expect("valid channel")
}

fn data(text: &str) -> Publication {
    Publication::from_data(Bytes::from(text.to_owned()))
}

fn with_history() -> PublishOptions {
    PublishOptions { history: Some(HISTORY), ..Default::default() }
}

async fn publish(engine: &dyn Engine, ch: &ChannelName, text: &str, options: &PublishOptions) -> PublishResult {
    engine.publish(ch, data(text), options).await.expect("publish succeeds")
}

async fn read(engine: &dyn Engine, ch: &ChannelName, query: HistoryQuery) -> (StreamPosition, Vec<u64>) {
    let result = engine.history(ch, &query, &HISTORY).await.expect("history read succeeds");
    (result.position, result.publications.iter().map(|p| p.offset.get()).collect())
}

fn all() -> HistoryQuery {
    HistoryQuery { limit: usize::MAX, ..Default::default() }
}

fn info(user: &str, client: &str) -> ClientInfo {
    ClientInfo {
        user: UserId::new(user).expect("valid user"),
        client: ClientId::new(client),
        conn_info: None,
        chan_info: None,
    }
}

/// Guarantee 1: per-channel order, with offsets assigned as delivered.
pub async fn publications_reach_a_subscribed_node_in_order(engine: Arc<dyn Engine>) {
    let mut events = Recorder::start(&*engine).await;
    let news = channel("conformance:order");
    engine.subscribe(&news).await.expect("subscribe");

    for i in 0..100 {
        publish(&*engine, &news, &i.to_string(), &with_history()).await;
    }
    for i in 0..100u64 {
        let (ch, publication) = events.next_publication(&format!("publication {i}")).await;
        assert_eq!(ch, news);
        assert_eq!(publication.data, Bytes::from(i.to_string()), "publications arrive in publish order");
        assert_eq!(publication.offset, Offset::new(i + 1), "offsets are assigned in delivery order");
    }
}

/// Interest-based routing: a node gets only channels it asked for.
pub async fn publications_skip_channels_the_node_is_not_subscribed_to(engine: Arc<dyn Engine>) {
    let mut events = Recorder::start(&*engine).await;
    let wanted = channel("conformance:wanted");
    let other = channel("conformance:other");
    engine.subscribe(&wanted).await.expect("subscribe");

    publish(&*engine, &other, "not for us", &PublishOptions::default()).await;
    publish(&*engine, &wanted, "for us", &PublishOptions::default()).await;

    let (ch, publication) = events.next_publication("the wanted channel's publication").await;
    assert_eq!((ch, publication.data.clone()), (wanted, Bytes::from("for us")));
}

pub async fn unsubscribe_stops_delivery(engine: Arc<dyn Engine>) {
    let mut events = Recorder::start(&*engine).await;
    let gone = channel("conformance:gone");
    let marker = channel("conformance:marker");
    engine.subscribe(&gone).await.expect("subscribe");
    engine.subscribe(&marker).await.expect("subscribe");

    publish(&*engine, &gone, "before", &PublishOptions::default()).await;
    assert_eq!(events.next_publication("before unsubscribe").await.1.data, Bytes::from("before"));

    engine.unsubscribe(&gone).await.expect("unsubscribe");
    publish(&*engine, &gone, "after", &PublishOptions::default()).await;
    publish(&*engine, &marker, "marker", &PublishOptions::default()).await;
    let (ch, _) = events.next_publication("the marker").await;
    assert_eq!(ch, marker, "nothing from an unsubscribed channel arrives before the marker");
}

pub async fn offsets_grow_by_one_and_history_reads_back_in_order(engine: Arc<dyn Engine>) {
    let _events = Recorder::start(&*engine).await;
    let ch = channel("conformance:history");
    let mut epoch = None;
    for i in 1..=4u64 {
        let result = publish(&*engine, &ch, &i.to_string(), &with_history()).await;
        assert_eq!(result.position.offset, Offset::new(i));
        assert!(!result.position.epoch.is_empty(), "a stream has an epoch");
        assert_eq!(*epoch.get_or_insert(result.position.epoch.clone()), result.position.epoch);
    }
    let epoch = epoch.expect("an epoch");
    let top = StreamPosition { offset: Offset::new(4), epoch: epoch.clone() };

    assert_eq!(read(&*engine, &ch, all()).await, (top.clone(), vec![1, 2, 3, 4]));
    let position_only = HistoryQuery { limit: 0, ..Default::default() };
    assert_eq!(read(&*engine, &ch, position_only).await, (top.clone(), vec![]));
    let since_two =
        HistoryQuery { since: Some(StreamPosition { offset: Offset::new(2), epoch: epoch.clone() }), ..all() };
    assert_eq!(read(&*engine, &ch, since_two).await.1, vec![3, 4], "since is exclusive");
    let since_top = HistoryQuery { since: Some(top.clone()), ..all() };
    assert_eq!(read(&*engine, &ch, since_top).await.1, Vec::<u64>::new(), "nothing after the top");
    let newest_two = HistoryQuery { limit: 2, reverse: true, ..Default::default() };
    assert_eq!(read(&*engine, &ch, newest_two).await.1, vec![4, 3]);
    let oldest_two = HistoryQuery { limit: 2, ..Default::default() };
    assert_eq!(read(&*engine, &ch, oldest_two).await.1, vec![1, 2]);
    let other_epoch = StreamPosition { offset: Offset::new(1), epoch: Epoch::new("not-this-one") };
    let (position, offsets) = read(&*engine, &ch, HistoryQuery { since: Some(other_epoch), ..all() }).await;
    assert_eq!((position, offsets), (top, vec![]), "a position from another epoch recovers nothing");
    let any_epoch = StreamPosition { offset: Offset::new(3), epoch: Epoch::default() };
    let (_, offsets) = read(&*engine, &ch, HistoryQuery { since: Some(any_epoch), ..all() }).await;
    assert_eq!(offsets, vec![4], "an empty epoch matches any epoch");
}

pub async fn history_is_trimmed_to_its_size(engine: Arc<dyn Engine>) {
    let _events = Recorder::start(&*engine).await;
    let ch = channel("conformance:trim");
    for i in 1..=8 {
        publish(&*engine, &ch, &i.to_string(), &with_history()).await;
    }
    let (position, offsets) = read(&*engine, &ch, all()).await;
    assert_eq!(position.offset, Offset::new(8));
    assert_eq!(offsets, vec![4, 5, 6, 7, 8], "only the last {} are kept", HISTORY.size);
}

pub async fn publications_expire_but_the_position_survives<A, AFut>(engine: Arc<dyn Engine>, advance: &A)
where
    A: Fn(Duration) -> AFut,
    AFut: Future<Output = ()>,
{
    let _events = Recorder::start(&*engine).await;
    let ch = channel("conformance:ttl");
    publish(&*engine, &ch, "1", &with_history()).await;
    let before = publish(&*engine, &ch, "2", &with_history()).await.position;
    advance(HISTORY.ttl + Duration::from_millis(500)).await;

    assert_eq!(read(&*engine, &ch, all()).await, (before.clone(), vec![]), "publications expired, position kept");
    let next = publish(&*engine, &ch, "3", &with_history()).await.position;
    assert_eq!((next.offset, next.epoch), (Offset::new(3), before.epoch), "the stream continues");
}

pub async fn an_expired_stream_starts_again_under_a_new_epoch<A, AFut>(engine: Arc<dyn Engine>, advance: &A)
where
    A: Fn(Duration) -> AFut,
    AFut: Future<Output = ()>,
{
    let _events = Recorder::start(&*engine).await;
    let ch = channel("conformance:epoch");
    let before = publish(&*engine, &ch, "1", &with_history()).await.position;
    advance(HISTORY.meta_ttl + Duration::from_millis(500)).await;

    let after = publish(&*engine, &ch, "again", &with_history()).await.position;
    assert_eq!(after.offset, Offset::new(1), "a new stream starts at 1");
    assert_ne!(after.epoch, before.epoch, "a new stream has a new epoch");
}

pub async fn removing_history_starts_a_new_epoch(engine: Arc<dyn Engine>) {
    let _events = Recorder::start(&*engine).await;
    let ch = channel("conformance:remove");
    let before = publish(&*engine, &ch, "1", &with_history()).await.position;
    engine.remove_history(&ch).await.expect("remove history");
    let (position, offsets) = read(&*engine, &ch, all()).await;
    assert_eq!((position.offset, offsets), (Offset::ZERO, vec![]));
    assert_ne!(position.epoch, before.epoch);
}

pub async fn channels_without_history_have_no_positions(engine: Arc<dyn Engine>) {
    let mut events = Recorder::start(&*engine).await;
    let ch = channel("conformance:plain");
    engine.subscribe(&ch).await.expect("subscribe");
    let result = publish(&*engine, &ch, "x", &PublishOptions::default()).await;
    assert_eq!(result.position.offset, Offset::ZERO);
    assert_eq!(events.next_publication("the plain publication").await.1.offset, Offset::ZERO);
}

pub async fn a_repeated_idempotency_key_publishes_once<A, AFut>(engine: Arc<dyn Engine>, advance: &A)
where
    A: Fn(Duration) -> AFut,
    AFut: Future<Output = ()>,
{
    let mut events = Recorder::start(&*engine).await;
    let ch = channel("conformance:idempotent");
    engine.subscribe(&ch).await.expect("subscribe");
    let window = Duration::from_secs(2);
    let keyed = |key: &str| PublishOptions {
        history: Some(HISTORY),
        idempotency_key: Some(key.to_owned()),
        idempotency_window: window,
    };

    let first = publish(&*engine, &ch, "once", &keyed("k1")).await;
    let again = publish(&*engine, &ch, "once", &keyed("k1")).await;
    assert!(!first.duplicate);
    assert!(again.duplicate, "the repeat is recognised");
    assert_eq!(again.position, first.position, "the repeat returns the first result");
    publish(&*engine, &ch, "other key", &keyed("k2")).await;

    assert_eq!(events.next_publication("the first publish").await.1.data, Bytes::from("once"));
    let (_, next) = events.next_publication("the second key's publish").await;
    assert_eq!(next.data, Bytes::from("other key"), "the repeat was not delivered");

    advance(window + Duration::from_millis(500)).await;
    let later = publish(&*engine, &ch, "once", &keyed("k1")).await;
    assert!(!later.duplicate, "after the window the key is free again");
    assert_eq!(later.position.offset, Offset::new(3));
}

pub async fn presence_counts_users_once_and_expires<A, AFut>(engine: Arc<dyn Engine>, advance: &A)
where
    A: Fn(Duration) -> AFut,
    AFut: Future<Output = ()>,
{
    let _events = Recorder::start(&*engine).await;
    let ch = channel("conformance:presence");
    let ttl = Duration::from_secs(2);
    for (user, client, arrives) in [("ann", "c1", true), ("ann", "c2", false), ("bob", "c3", true)] {
        let user_first = engine.add_presence(&ch, &info(user, client), ttl).await.expect("add presence");
        assert_eq!(user_first, arrives, "{client} is {user}'s first entry: {arrives}");
    }
    let mut present: Vec<String> =
        engine.presence(&ch).await.expect("presence").into_iter().map(|i| i.client.to_string()).collect();
    present.sort();
    assert_eq!(present, ["c1", "c2", "c3"]);
    let stats = engine.presence_stats(&ch).await.expect("stats");
    assert_eq!(stats, PresenceStats { num_clients: 3, num_users: 2 }, "a user with two connections counts once");

    let user_last = engine.remove_presence(&ch, &info("ann", "c2")).await.expect("remove presence");
    assert!(!user_last, "ann is still there with c1");
    assert_eq!(engine.presence_stats(&ch).await.expect("stats"), PresenceStats { num_clients: 2, num_users: 2 });

    advance(ttl / 2).await;
    let user_first = engine.add_presence(&ch, &info("bob", "c3"), ttl).await.expect("refresh presence");
    assert!(!user_first, "a refresh is no arrival");
    advance(ttl / 2 + Duration::from_millis(500)).await;
    let present = engine.presence(&ch).await.expect("presence");
    assert_eq!(present.len(), 1, "only the refreshed entry outlives its ttl: {present:?}");
    assert_eq!(present[0].client, ClientId::new("c3"));
    assert_eq!(engine.presence_stats(&ch).await.expect("stats"), PresenceStats { num_clients: 1, num_users: 1 });

    let expired: Vec<(String, bool)> = engine
        .expire_presence(&ch)
        .await
        .expect("expire")
        .into_iter()
        .map(|(i, user_last)| (i.client.to_string(), user_last))
        .collect();
    assert_eq!(expired, [("c1".to_owned(), true)], "the entry that expired is handed out for its leave, ann's last");
    assert!(engine.expire_presence(&ch).await.expect("expire").is_empty(), "and only once");
}

pub async fn a_users_arrival_and_departure_are_reported_once(engine: Arc<dyn Engine>) {
    let _events = Recorder::start(&*engine).await;
    let ch = channel("conformance:users");
    let ttl = Duration::from_secs(60);
    let (tab1, tab2) = (info("ann", "t1"), info("ann", "t2"));
    let (first1, first2) = tokio::join!(engine.add_presence(&ch, &tab1, ttl), engine.add_presence(&ch, &tab2, ttl));
    let arrivals = [first1.expect("add"), first2.expect("add")];
    assert_eq!(arrivals.iter().filter(|a| **a).count(), 1, "one of two concurrent tabs is the arrival: {arrivals:?}");
    let (last1, last2) = tokio::join!(engine.remove_presence(&ch, &tab1), engine.remove_presence(&ch, &tab2));
    let departures = [last1.expect("remove"), last2.expect("remove")];
    assert_eq!(departures.iter().filter(|d| **d).count(), 1, "one of two tabs is the departure: {departures:?}");
    assert!(!engine.remove_presence(&ch, &tab2).await.expect("remove"), "removing a missing entry is no departure");
    assert!(engine.add_presence(&ch, &tab2, ttl).await.expect("add"), "after leaving, ann arrives again");
}

pub async fn joins_and_leaves_reach_subscribed_nodes(engine: Arc<dyn Engine>) {
    let mut events = Recorder::start(&*engine).await;
    let ch = channel("conformance:joins");
    engine.subscribe(&ch).await.expect("subscribe");
    let ann = info("ann", "c1");
    let join = EngineEvent::Join { channel: ch.clone(), info: ann.clone(), user_first: true };
    engine.publish_presence_event(join).await.expect("join");
    let leave = EngineEvent::Leave { channel: ch.clone(), info: ann.clone(), user_last: false };
    engine.publish_presence_event(leave).await.expect("leave");
    match events.next("the join").await {
        EngineEvent::Join { channel, info, user_first } => {
            assert_eq!((channel, info, user_first), (ch.clone(), ann.clone(), true))
        }
        other => panic!("expected a join, got {other:?}"),
    }
    match events.next("the leave").await {
        EngineEvent::Leave { channel, info, user_last } => assert_eq!((channel, info, user_last), (ch, ann, false)),
        other => panic!("expected a leave, got {other:?}"),
    }
}

pub async fn the_node_registry_forgets_silent_nodes<A, AFut>(engine: Arc<dyn Engine>, advance: &A)
where
    A: Fn(Duration) -> AFut,
    AFut: Future<Output = ()>,
{
    let _events = Recorder::start(&*engine).await;
    let node = |id: &str, clients: usize| NodeInfo {
        id: NodeId::new(id),
        version: "test".into(),
        num_clients: clients,
        num_users: clients,
        num_channels: 0,
        num_subscriptions: 0,
        uptime: 0,
    };
    let ttl = Duration::from_secs(2);
    engine.register_node(&node("a", 1), ttl).await.expect("register a");
    engine.register_node(&node("b", 2), ttl).await.expect("register b");
    assert_eq!(engine.nodes().await.expect("nodes").len(), 2);

    advance(ttl / 2).await;
    engine.register_node(&node("a", 3), ttl).await.expect("heartbeat a");
    advance(ttl / 2 + Duration::from_millis(500)).await;
    let live = engine.nodes().await.expect("nodes");
    assert_eq!(live, vec![node("a", 3)], "b stopped heartbeating and dropped out");
}

pub async fn control_commands_reach_the_sending_node(engine: Arc<dyn Engine>) {
    let mut events = Recorder::start(&*engine).await;
    let command = Control::Disconnect {
        user: UserId::new("42").expect("valid user"),
        client: None,
        reason: DisconnectReason::ForceDisconnect,
    };
    engine.send_control(command.clone()).await.expect("send control");
    match events.next("the control command").await {
        EngineEvent::Control(got) => assert_eq!(got, command),
        other => panic!("expected a control command, got {other:?}"),
    }
}

pub async fn a_started_engine_is_ready(engine: Arc<dyn Engine>) {
    let _events = Recorder::start(&*engine).await;
    assert_eq!(engine.health().await, Health::Ready);
}
