use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use herald_engine::{
    ChannelName, ClientId, Control, DisconnectReason, Engine, NodeId, PresenceEvent, Publication, UserId,
};

use super::*;
use crate::connection::{ConnectionSpec, PushEncoder};
use crate::frame::Frame;
use crate::namespace::ChannelConventions;
use crate::namespace::{ChannelRules, NamespaceOptions, PublishPolicy, SubscribePolicy};
use crate::outbox::{CountedWaker, Drained, Outbox, Outgoing};

/// Encodes a publication as `channel|data`, counting how often it is called.
#[derive(Debug, Default)]
struct TestEncoder {
    calls: std::sync::atomic::AtomicUsize,
}

impl PushEncoder for TestEncoder {
    fn protocol(&self) -> &'static str {
        "test"
    }

    fn encode_publication(&self, channel: &ChannelName, publication: &Publication) -> Frame {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut out = channel.as_str().as_bytes().to_vec();
        out.push(b'|');
        out.extend_from_slice(&publication.data);
        Frame::Binary(Bytes::from(out))
    }

    fn encode_presence(&self, channel: &ChannelName, event: &PresenceEvent, _: bool) -> Option<Frame> {
        let kind = if event.is_join() { "join" } else { "leave" };
        Some(Frame::Binary(Bytes::from(format!("{channel}|{kind} {}", event.info().user))))
    }
}

fn ch(name: &str) -> ChannelName {
    ChannelName::new(name).unwrap()
}

fn rules() -> ChannelRules {
    let mut namespaces = BTreeMap::new();
    namespaces
        .insert("private".to_string(), NamespaceOptions { subscribe: SubscribePolicy::Token, ..Default::default() });
    namespaces.insert(
        "public".to_string(),
        NamespaceOptions {
            subscribe: SubscribePolicy::Anyone,
            publish: PublishPolicy::Subscribers,
            max_channels_per_connection: 2,
            ..Default::default()
        },
    );
    namespaces.insert(
        "open".to_string(),
        NamespaceOptions { subscribe: SubscribePolicy::Anyone, publish: PublishPolicy::Clients, ..Default::default() },
    );
    namespaces.insert(
        "ticks".to_string(),
        NamespaceOptions {
            subscribe: SubscribePolicy::Anyone,
            write_delay: std::time::Duration::from_millis(20),
            ..Default::default()
        },
    );
    ChannelRules::new(NamespaceOptions::default(), namespaces)
}

struct Fixture {
    hub: Arc<Hub>,
    encoder: Arc<TestEncoder>,
}

impl Fixture {
    async fn new() -> Self {
        let mut config = HubConfig::new(NodeId::new("test"), rules());
        config.max_channels_per_connection = 4;
        let hub = Hub::new(config, Engine::memory());
        hub.start().await.unwrap();
        Self { hub, encoder: Arc::new(TestEncoder::default()) }
    }

    fn connect(&self, user: &str, outbox_bytes: usize) -> Arc<Connection> {
        self.hub
            .connect(ConnectionSpec {
                client: ClientId::new(&uuid_like()),
                user: UserId::new(user).unwrap(),
                conn_info: None,
                encoder: self.encoder.clone(),
                outbox: Arc::new(Outbox::new(outbox_bytes)),
            })
            .unwrap()
    }

    async fn subscribe(&self, conn: &Arc<Connection>, channel: &str) -> Result<(), HubError> {
        let reply = Outgoing::Frame(Frame::Text(format!("subscribed {channel}").into()));
        self.hub
            .subscribe(conn, &ch(channel), SubscribeAccess::Client, SubscribeRequest::default(), |_| Some(reply))
            .await
            .map(|_| ())
    }

    async fn publish(&self, channel: &str, data: &str) {
        self.hub
            .publish(&ch(channel), Publication::from_data(Bytes::from(data.to_owned())), None, false)
            .await
            .unwrap();
    }
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("client-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Encodes a publication as `pub <offset>`, a join or a leave as
/// `join <client>` or `leave <client>`.
#[derive(Debug)]
pub(super) struct OffsetEncoder;

impl PushEncoder for OffsetEncoder {
    fn protocol(&self) -> &'static str {
        "test"
    }

    fn encode_publication(&self, _: &ChannelName, publication: &Publication) -> Frame {
        Frame::Text(format!("pub {}", publication.offset).into())
    }
    fn encode_presence(&self, _: &ChannelName, event: &PresenceEvent, _: bool) -> Option<Frame> {
        let line = match event {
            PresenceEvent::Join { info, .. } => format!("join {}", info.client),
            PresenceEvent::Leave { info, .. } => format!("leave {}", info.client),
        };
        Some(Frame::Text(line.into()))
    }
}

/// Connects `client` as `user` to `hub`, its pushes encoded by
/// [`OffsetEncoder`] into an outbox of a megabyte.
pub(super) fn connect_encoding_offsets(hub: &Hub, client: &str, user: &str) -> Arc<Connection> {
    hub.connect(ConnectionSpec {
        client: ClientId::new(client),
        user: UserId::new(user).unwrap(),
        conn_info: None,
        encoder: Arc::new(OffsetEncoder),
        outbox: Arc::new(Outbox::new(1 << 20)),
    })
    .unwrap()
}

/// What `task` came to, within five seconds.
pub(super) async fn finished<T>(task: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(5), task).await.expect("it finished").expect("it did not panic")
}

/// Waits until the connection has been sent `count` frames (five seconds
/// at most), and returns what it was sent.
pub(super) async fn sent(conn: &Connection, count: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut seen = Vec::new();
    while seen.len() < count && tokio::time::Instant::now() < deadline {
        seen.extend(frames(conn));
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    seen
}

/// Waits until the connection has been sent `lines`, in order.
pub(super) async fn until_sent(conn: &Connection, lines: &[&str]) {
    assert_eq!(sent(conn, lines.len()).await, lines);
}

/// What the connection was sent so far, in order, as text.
pub(super) fn frames(conn: &Connection) -> Vec<String> {
    match conn.outbox().drain() {
        Drained::Items(items) => items
            .into_iter()
            .map(|item| match item {
                Outgoing::Frame(frame) => String::from_utf8(frame.as_bytes().to_vec()).unwrap(),
                Outgoing::Event(event) => format!("{event:?}"),
            })
            .collect(),
        Drained::Closed(reason) => vec![format!("closed: {reason:?}")],
    }
}

#[tokio::test]
async fn a_publication_reaches_every_subscriber_of_its_channel_encoded_once() {
    let f = Fixture::new().await;
    let alice = f.connect("alice", 1 << 20);
    let bob = f.connect("bob", 1 << 20);
    let carol = f.connect("carol", 1 << 20);
    f.subscribe(&alice, "news").await.unwrap();
    f.subscribe(&bob, "news").await.unwrap();
    f.subscribe(&carol, "sport").await.unwrap();

    f.publish("news", "hello").await;

    assert_eq!(frames(&alice), ["subscribed news", "news|hello"]);
    assert_eq!(frames(&bob), ["subscribed news", "news|hello"]);
    assert_eq!(frames(&carol), ["subscribed sport"]);
    assert_eq!(f.encoder.calls.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test]
async fn namespace_rules_decide_who_may_subscribe() {
    let f = Fixture::new().await;
    let user = f.connect("42", 1 << 20);
    let anonymous = f.connect("", 1 << 20);
    let cases = [
        (&user, "news", Ok(())),
        (&anonymous, "news", Err(HubError::PermissionDenied)),
        (&anonymous, "public:x", Ok(())),
        (&user, "private:x", Err(HubError::PermissionDenied)),
        (&user, "unknown:x", Err(HubError::UnknownChannel)),
        (&user, "dialog#42,43", Ok(())),
        (&user, "dialog#43", Err(HubError::PermissionDenied)),
        (&anonymous, "$public:x", Err(HubError::PermissionDenied)),
        (&user, "$news", Err(HubError::PermissionDenied)),
        (&user, "$unknown:x", Err(HubError::UnknownChannel)),
    ];
    for (conn, channel, expected) in cases {
        assert_eq!(f.subscribe(conn, channel).await, expected, "{channel}");
    }
}

#[tokio::test]
async fn a_token_or_the_server_grants_what_the_namespace_would_not() {
    let f = Fixture::new().await;
    let user = f.connect("42", 1 << 20);
    let grants = [
        ("private:a", SubscribeAccess::Token),
        ("dialog#7", SubscribeAccess::Server),
        ("$public:a", SubscribeAccess::Token),
        ("$news", SubscribeAccess::Server),
    ];
    for (channel, access) in grants {
        f.hub
            .subscribe(&user, &ch(channel), access, SubscribeRequest::default(), |_| None)
            .await
            .unwrap_or_else(|e| panic!("{channel}: {e}"));
    }
    let unknown = ch("nope:a");
    let denied = f.hub.subscribe(&user, &unknown, SubscribeAccess::Server, SubscribeRequest::default(), |_| None);
    assert_eq!(denied.await.map(|_| ()), Err(HubError::UnknownChannel), "unknown namespaces stay unknown");
}

#[tokio::test]
async fn subscription_limits_hold_per_connection_and_per_namespace() {
    let f = Fixture::new().await;
    let conn = f.connect("42", 1 << 20);
    f.subscribe(&conn, "public:1").await.unwrap();
    assert_eq!(f.subscribe(&conn, "public:1").await, Err(HubError::AlreadySubscribed));
    f.subscribe(&conn, "public:2").await.unwrap();
    assert!(matches!(f.subscribe(&conn, "public:3").await, Err(HubError::LimitExceeded(_))));
    f.subscribe(&conn, "a").await.unwrap();
    f.subscribe(&conn, "b").await.unwrap();
    assert!(matches!(f.subscribe(&conn, "c").await, Err(HubError::LimitExceeded(_))));
}

#[tokio::test]
async fn clients_publish_only_where_the_namespace_allows() {
    let f = Fixture::new().await;
    let conn = f.connect("42", 1 << 20);
    let data = || Bytes::from_static(b"1");
    assert_eq!(f.hub.client_publish(&conn, &ch("news"), data()).await, Err(HubError::PermissionDenied));
    assert_eq!(f.hub.client_publish(&conn, &ch("public:a"), data()).await, Err(HubError::PermissionDenied));
    f.subscribe(&conn, "public:a").await.unwrap();
    f.hub.client_publish(&conn, &ch("public:a"), data()).await.unwrap();
    assert_eq!(frames(&conn), ["subscribed public:a", "public:a|1"]);
}

#[tokio::test]
async fn a_private_channel_takes_publications_from_its_subscribers_only_even_where_any_client_may_publish() {
    let f = Fixture::new().await;
    let conn = f.connect("42", 1 << 20);
    let data = || Bytes::from_static(b"1");
    f.hub.client_publish(&conn, &ch("open:a"), data()).await.unwrap();
    let private = ch("$open:a");
    assert_eq!(f.hub.client_publish(&conn, &private, data()).await, Err(HubError::PermissionDenied));
    f.hub.subscribe(&conn, &private, SubscribeAccess::Token, SubscribeRequest::default(), |_| None).await.unwrap();
    f.hub.client_publish(&conn, &private, data()).await.unwrap();
}

#[tokio::test]
async fn oversized_publications_are_refused() {
    let f = Fixture::new().await;
    let big = Publication::from_data(Bytes::from(vec![b'x'; 64 * 1024 + 1]));
    assert!(matches!(
        f.hub.publish(&ch("news"), big, None, false).await,
        Err(HubError::MessageTooLarge { limit: 65536, .. })
    ));
}

#[tokio::test]
async fn a_slow_subscriber_is_closed_without_harming_the_others() {
    let f = Fixture::new().await;
    let slow = f.connect("slow", 64);
    let fast = f.connect("fast", 1 << 20);
    f.subscribe(&slow, "news").await.unwrap();
    f.subscribe(&fast, "news").await.unwrap();

    for i in 0..10 {
        f.publish("news", &format!("message number {i}")).await;
    }

    assert_eq!(frames(&slow), ["closed: Slow"]);
    assert_eq!(frames(&fast).len(), 11);
}

#[tokio::test]
async fn the_last_unsubscribe_drops_the_channel() {
    let f = Fixture::new().await;
    let a = f.connect("a", 1 << 20);
    let b = f.connect("b", 1 << 20);
    f.subscribe(&a, "news").await.unwrap();
    f.subscribe(&b, "news").await.unwrap();
    assert_eq!(f.hub.stats().channels, 1);
    assert!(f.hub.unsubscribe(&a, &ch("news")).await);
    assert!(!f.hub.unsubscribe(&a, &ch("news")).await, "a second unsubscribe is a no-op");
    assert_eq!(f.hub.stats().subscriptions, 1);
    f.hub.disconnect(&b).await;
    assert_eq!(f.hub.stats(), HubStats { clients: 1, users: 1, channels: 0, subscriptions: 0 });
}

#[tokio::test]
async fn a_subscription_named_by_its_serial_ends_only_while_it_is_still_the_one() {
    let f = Fixture::new().await;
    let a = f.connect("a", 1 << 20);
    let news = ch("news");
    let subscribe = || f.hub.subscribe(&a, &news, SubscribeAccess::Client, SubscribeRequest::default(), |_| None);
    assert_eq!(f.hub.subscription_serial(&a, &news), None);
    let first = subscribe().await.unwrap().serial;
    assert_eq!(f.hub.subscription_serial(&a, &news), Some(first), "the serial its subscribe gave");
    assert!(f.hub.unsubscribe(&a, &news).await);
    let second = subscribe().await.unwrap().serial;
    assert_ne!(first, second, "each subscription is named apart");

    assert!(!f.hub.unsubscribe_subscription(&a, &news, first).await, "the first is gone; the second is not its to end");
    assert!(a.is_subscribed(&news));
    assert!(f.hub.unsubscribe_subscription(&a, &news, second).await);
    assert!(!a.is_subscribed(&news));
    assert_eq!(f.hub.stats().channels, 0);
}

#[tokio::test]
async fn a_disconnect_command_closes_only_that_users_connections() {
    let f = Fixture::new().await;
    let target = f.connect("42", 1 << 20);
    let bystander = f.connect("43", 1 << 20);
    let reason = DisconnectReason::ForceDisconnect;
    f.hub
        .send_control(Control::Disconnect { user: UserId::new("42").unwrap(), client: None, reason, app: None })
        .await
        .unwrap();
    assert_eq!(frames(&target), ["closed: ForceDisconnect"]);
    assert!(!bystander.outbox().is_closed());
}

#[tokio::test]
async fn closing_all_refuses_new_connections() {
    let f = Fixture::new().await;
    let conn = f.connect("42", 1 << 20);
    f.hub.close_all(DisconnectReason::Shutdown);
    assert_eq!(frames(&conn), ["closed: Shutdown"]);
    let refused = f.hub.connect(ConnectionSpec {
        client: ClientId::new("late"),
        user: UserId::new("1").unwrap(),
        conn_info: None,
        encoder: f.encoder.clone(),
        outbox: Arc::new(Outbox::new(100)),
    });
    assert!(matches!(refused, Err(HubError::NotAvailable(_))));
}

#[test]
fn glob_patterns_match_like_shell_stars() {
    let cases = [
        ("*", "anything", true),
        ("chat:*", "chat:lobby", true),
        ("chat:*", "news", false),
        ("*:lobby", "chat:lobby", true),
        ("a*b*c", "aXbYc", true),
        ("a*b*c", "aXcYb", false),
        ("exact", "exact", true),
        ("exact", "exactly", false),
    ];
    for (pattern, text, expected) in cases {
        assert_eq!(glob_match(pattern, text), expected, "{pattern} vs {text}");
    }
}

#[tokio::test(start_paused = true)]
async fn presence_outlives_its_ttl_while_the_connection_lives_and_leaves_with_it() {
    let room = NamespaceOptions { presence: true, ..Default::default() };
    let rules = ChannelRules::new(NamespaceOptions::default(), BTreeMap::from([("room".to_string(), room)]));
    let mut config = HubConfig::new(NodeId::new("test"), rules);
    config.presence_update_interval = std::time::Duration::from_secs(5);
    config.presence_ttl = std::time::Duration::from_secs(12);
    let hub = Hub::new(config, Engine::memory());
    hub.start().await.unwrap();
    let f = Fixture { hub: hub.clone(), encoder: Arc::new(TestEncoder::default()) };
    let ann = f.connect("ann", 1 << 20);
    f.subscribe(&ann, "room:1").await.unwrap();

    for _ in 0..6 {
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
        let stats = hub.presence_stats(&ch("room:1")).await.unwrap();
        assert_eq!(stats.num_clients, 1, "the node keeps refreshing a live connection's entry");
    }
    hub.disconnect(&ann).await;
    assert_eq!(hub.presence_stats(&ch("room:1")).await.unwrap().num_clients, 0, "a closed connection leaves at once");
}

/// Records what the hub reports to its observer.
#[derive(Debug, Default)]
struct Transitions(std::sync::Mutex<Vec<String>>);

impl Transitions {
    fn taken(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl HubObserver for Transitions {
    fn channel_occupied(&self, channel: &ChannelName) {
        self.0.lock().unwrap().push(format!("occupied {channel}"));
    }
    fn channel_vacated(&self, channel: &ChannelName) {
        self.0.lock().unwrap().push(format!("vacated {channel}"));
    }
    fn user_joined(&self, channel: &ChannelName, info: &herald_engine::ClientInfo) {
        self.0.lock().unwrap().push(format!("joined {channel} {}", info.user));
    }
    fn user_left(&self, channel: &ChannelName, info: &herald_engine::ClientInfo) {
        self.0.lock().unwrap().push(format!("left {channel} {}", info.user));
    }
}

/// Channels named `presence-…` keep presence and push joins and leaves to
/// every subscriber.
#[derive(Debug)]
struct PresenceRooms;

impl ChannelConventions for PresenceRooms {
    fn kinds(&self, options: &NamespaceOptions) -> Vec<NamespaceOptions> {
        vec![NamespaceOptions { presence: true, join_leave: true, force_push_join_leave: true, ..options.clone() }]
    }
    fn kind_of(&self, local_name: &str) -> Option<usize> {
        local_name.starts_with("presence-").then_some(0)
    }
}

/// A hub with presence rooms and occupancy, and what it reports.
async fn observed_fixture() -> (Fixture, Arc<Transitions>) {
    let rules = rules().with_conventions(Arc::new(PresenceRooms));
    let mut config = HubConfig::new(NodeId::new("test"), rules);
    config.track_occupancy = true;
    let f = Fixture { hub: Hub::new(config, Engine::memory()), encoder: Arc::default() };
    f.hub.start().await.unwrap();
    let seen = Arc::new(Transitions::default());
    f.hub.observe(seen.clone());
    (f, seen)
}

#[tokio::test]
async fn occupancy_and_user_presence_are_reported_once_per_transition() {
    let (f, seen) = observed_fixture().await;

    let tab1 = f.connect("ann", 1 << 20);
    let tab2 = f.connect("ann", 1 << 20);
    let bob = f.connect("bob", 1 << 20);
    for conn in [&tab1, &tab2, &bob] {
        f.subscribe(conn, "presence-room").await.unwrap();
    }
    assert_eq!(seen.taken(), ["occupied presence-room", "joined presence-room ann", "joined presence-room bob"]);
    assert_eq!(f.hub.subscription_count(&ch("presence-room")).await.unwrap(), 3);
    assert_eq!(f.hub.occupied_channels().await.unwrap(), [ch("presence-room")]);

    f.hub.unsubscribe(&tab1, &ch("presence-room")).await;
    assert!(seen.taken().is_empty(), "ann is still there in her other tab");
    f.hub.disconnect(&tab2).await;
    f.hub.disconnect(&bob).await;
    assert_eq!(seen.taken(), ["left presence-room ann", "left presence-room bob", "vacated presence-room"]);
    assert_eq!(f.hub.subscription_count(&ch("presence-room")).await.unwrap(), 0);
    assert!(f.hub.occupied_channels().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_connection_that_authenticates_later_is_reached_as_its_new_user() {
    let f = Fixture::new().await;
    let conn = f.connect("", 1 << 20);
    f.hub.set_user(&conn, UserId::new("ann").unwrap());
    assert_eq!(conn.user(), UserId::new("ann").unwrap());
    let reason = DisconnectReason::ForceDisconnect;
    f.hub
        .send_control(Control::Disconnect { user: UserId::new("ann").unwrap(), client: None, reason, app: None })
        .await
        .unwrap();
    assert_eq!(frames(&conn), ["closed: ForceDisconnect"]);
    assert_eq!(f.hub.stats().users, 1, "the anonymous user it was is forgotten");
}

#[tokio::test]
async fn a_member_named_by_its_subscription_joins_and_leaves_under_that_name() {
    let (f, seen) = observed_fixture().await;

    let conn = f.connect("", 1 << 20);
    let member = UserId::new("member-7").unwrap();
    let subscription = Subscription { user: Some(member.clone()), join_leave: true, ..Subscription::default() };
    let request = SubscribeRequest { subscription, ..SubscribeRequest::default() };
    let room = ch("presence-room");
    f.hub.subscribe(&conn, &room, SubscribeAccess::Token, request, |_| None).await.unwrap();
    assert_eq!(f.hub.presence(&room).await.unwrap()[0].user, member);
    f.hub.unsubscribe(&conn, &room).await;
    assert_eq!(
        seen.taken(),
        [
            "occupied presence-room",
            "joined presence-room member-7",
            "left presence-room member-7",
            "vacated presence-room"
        ]
    );
    assert!(f.hub.presence(&room).await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn publications_of_a_namespace_with_a_write_delay_wait_for_it_and_leave_together() {
    use std::time::Duration;
    let f = Fixture::new().await;
    let (ann, bob) = (f.connect("ann", 1 << 20), f.connect("bob", 1 << 20));
    for conn in [&ann, &bob] {
        f.subscribe(conn, "ticks:eur").await.unwrap();
        assert_eq!(frames(conn), ["subscribed ticks:eur"]);
    }
    f.publish("ticks:eur", "1").await;
    f.publish("ticks:eur", "2").await;
    let early = tokio::time::timeout(Duration::from_millis(19), ann.outbox().ready()).await;
    assert!(early.is_err(), "nothing is due before the delay has passed");
    for conn in [&ann, &bob] {
        tokio::time::timeout(Duration::from_millis(2), conn.outbox().ready()).await.expect("due after 20 ms");
        assert_eq!(frames(conn), ["ticks:eur|1", "ticks:eur|2"], "both in one drain, in order");
    }
}

#[tokio::test]
async fn a_publication_to_more_subscribers_than_a_flush_batch_wakes_each_of_them_once() {
    let f = Fixture::new().await;
    let conns: Vec<_> = (0..150).map(|n| f.connect(&format!("u{n}"), 1 << 16)).collect();
    for conn in &conns {
        f.subscribe(conn, "news").await.unwrap();
        frames(conn);
    }
    let wakers: Vec<_> = conns.iter().map(|_| Arc::new(CountedWaker::default())).collect();
    let mut readies: Vec<_> = conns.iter().map(|conn| Box::pin(conn.outbox().ready())).collect();
    for (ready, waker) in readies.iter_mut().zip(&wakers) {
        let waker = std::task::Waker::from(waker.clone());
        let polled = std::future::Future::poll(ready.as_mut(), &mut std::task::Context::from_waker(&waker));
        assert!(polled.is_pending(), "nothing is queued yet");
    }

    f.publish("news", "hello").await;
    // Full batches are flushed by tasks of their own.
    let all_woken = async {
        while wakers.iter().any(|w| w.count() == 0) {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), all_woken).await.expect("every subscriber woken");

    let woken: Vec<_> = wakers.iter().map(|w| w.count()).collect();
    assert!(woken.iter().all(|times| *times == 1), "wake-ups per subscriber: {woken:?}");
    assert!(conns.iter().all(|conn| frames(conn) == ["news|hello"]));
}

#[tokio::test(start_paused = true)]
async fn a_drain_closes_connections_in_even_steps_over_its_window_and_refuses_new_ones() {
    let f = Fixture::new().await;
    let conns: Vec<_> = (0..100).map(|n| f.connect(&format!("u{n}"), 1 << 16)).collect();
    let window = Duration::from_secs(2);
    let started = tokio::time::Instant::now();
    let drain = tokio::spawn({
        let hub = f.hub.clone();
        async move { hub.close_spread(DisconnectReason::Shutdown, window).await }
    });

    let mut closed_at = Vec::new();
    while closed_at.len() < conns.len() {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = conns.iter().filter(|c| c.outbox().is_closed()).count();
        closed_at.extend(std::iter::repeat_n(started.elapsed(), now - closed_at.len()));
    }
    drain.await.unwrap();

    let closed_in_first_half = closed_at.iter().filter(|at| **at < window / 2).count();
    assert!((40..=60).contains(&closed_in_first_half), "{closed_in_first_half} of 100 closed in the first half");
    assert!(closed_at.iter().all(|at| *at <= window), "all closed within the window");
    assert!(matches!(frames(&conns[0]).as_slice(), [closed] if closed.contains("Shutdown")));
    let late = f.hub.connect(ConnectionSpec {
        client: ClientId::new("late"),
        user: UserId::new("late").unwrap(),
        conn_info: None,
        encoder: f.encoder.clone(),
        outbox: Arc::new(Outbox::new(1024)),
    });
    assert!(late.is_err(), "a draining node takes no new connection");
}

#[tokio::test(start_paused = true)]
async fn a_drain_uses_its_whole_window_whatever_the_number_of_connections() {
    let f = Fixture::new().await;
    let conns: Vec<_> = (0..1001).map(|n| f.connect(&format!("u{n}"), 1 << 16)).collect();
    let window = Duration::from_secs(20);
    let started = tokio::time::Instant::now();

    f.hub.close_spread(DisconnectReason::Shutdown, window).await;

    let took = started.elapsed();
    assert!(conns.iter().all(|c| c.outbox().is_closed()));
    assert!(took >= window * 9 / 10 && took <= window, "the last step came after {took:?} of a {window:?} window");
}

#[tokio::test]
async fn a_watcher_sees_publications_without_being_a_subscriber() {
    let f = Fixture::new().await;
    let alice = f.connect("alice", 1 << 20);
    f.subscribe(&alice, "news").await.unwrap();
    let mut watch = f.hub.watch(&ch("news")).await.unwrap();

    // The only subscriber leaves: the node must stay on the channel for the watcher.
    assert!(f.hub.unsubscribe(&alice, &ch("news")).await);
    f.publish("news", "hello").await;

    let seen = watch.next().await.expect("the watcher hears the publication");
    assert_eq!(&seen.data[..], b"hello");
    assert!(f.hub.channels(None).is_empty(), "a watcher is not counted as a subscriber");
    assert_eq!(f.hub.stats().subscriptions, 0);
    assert_eq!(f.hub.stats().clients, 1, "nor as a connection");
}

#[tokio::test]
async fn a_watcher_that_falls_behind_is_dropped_not_waited_for() {
    let f = Fixture::new().await;
    let mut watch = f.hub.watch(&ch("news")).await.unwrap();
    for n in 0..=WATCH_QUEUE {
        f.publish("news", &n.to_string()).await;
    }
    let mut seen = 0;
    while watch.next().await.is_some() {
        seen += 1;
    }
    assert_eq!(seen, WATCH_QUEUE, "the queue's worth, then the end of the watch");
    drop(watch);
    let mut again = f.hub.watch(&ch("news")).await.unwrap();
    f.publish("news", "after").await;
    assert_eq!(&again.next().await.unwrap().data[..], b"after");
}

#[tokio::test]
async fn watches_are_bounded_per_node_and_need_a_namespace() {
    let f = Fixture::new().await;
    let mut open = Vec::new();
    for _ in 0..MAX_WATCHES {
        open.push(f.hub.watch(&ch("news")).await.unwrap());
    }
    let refused = f.hub.watch(&ch("sport")).await.map(|_| ());
    assert_eq!(refused, Err(HubError::LimitExceeded("watches open on this node")));
    open.pop();
    assert!(f.hub.watch(&ch("sport")).await.is_ok(), "a closed watch frees its place");
    assert_eq!(f.hub.watch(&ch("unknown:x")).await.map(|_| ()), Err(HubError::UnknownChannel));
}

#[tokio::test]
async fn the_node_counts_what_it_published_and_delivered() {
    let f = Fixture::new().await;
    let alice = f.connect("alice", 1 << 20);
    let bob = f.connect("bob", 1 << 20);
    f.subscribe(&alice, "news").await.unwrap();
    f.subscribe(&bob, "news").await.unwrap();
    f.publish("news", "one").await;
    f.publish("news", "two").await;

    let nodes = f.hub.nodes().await.unwrap();
    let this = nodes.iter().find(|n| &n.id == f.hub.node()).unwrap();
    assert_eq!((this.num_publications, this.num_deliveries), (2, 4));
}

/// A subscription with nothing to recover is live as soon as it is added:
/// its reply must already be queued by then, or a publication fanned out
/// on another thread in between would reach the client first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_reply_goes_ahead_of_every_publication_of_a_busy_channel() {
    let f = Arc::new(Fixture::new().await);
    let publishing = tokio::spawn({
        let f = f.clone();
        async move {
            loop {
                f.publish("news", "busy").await;
                tokio::task::yield_now().await;
            }
        }
    });
    let subscribing = async {
        for n in 0..2000 {
            let conn = f.connect(&format!("u{n}"), 1 << 20);
            f.subscribe(&conn, "news").await.unwrap();
            let queued = frames(&conn);
            assert_eq!(queued.first().map(String::as_str), Some("subscribed news"), "subscription {n}: {queued:?}");
            f.hub.disconnect(&conn).await;
        }
    };
    let finished = tokio::time::timeout(Duration::from_secs(60), subscribing).await;
    publishing.abort();
    finished.expect("2,000 subscriptions in a minute");
}
