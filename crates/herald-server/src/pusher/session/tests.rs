//! The Pusher session over an in-memory transport, with paused time: the
//! handshake and its refusals, heartbeats, subscriptions, client frames
//! the protocol refuses, and shutdown. No test here waits for a real clock
//! but the last, which races clients' subscriptions against a publisher
//! on two workers.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use herald_core::{ChannelRules, Hub, HubConfig, NamespaceOptions};
use herald_engine::{ChannelName, Control, Engine, NodeId, Publication, UserId};

use super::{run, ConnectQuery};
use crate::config::{ClientConfig, PusherApp, PusherConfig, Secret};
use crate::driver::Sessions;
use crate::pusher::conventions::PusherConventions;
use crate::pusher::{sign, Frontend, EVENT_TAG};
use crate::transport::memory::{MemoryTransport, Sent};
use crate::transport::{Inbound, TransportError};

const KEY: &str = "app-key";
const SECRET: &str = "app-secret-123";

pub(super) struct Harness {
    pub(super) hub: Arc<Hub>,
    to_session: mpsc::UnboundedSender<Result<Inbound, TransportError>>,
    from_session: mpsc::UnboundedReceiver<Sent>,
    shutdown: Arc<Sessions>,
}

/// A node with one Pusher app (activity timeout 120 s, pong timeout 30 s).
async fn node() -> (Arc<Hub>, Arc<Frontend>, Arc<Sessions>) {
    node_with(ClientConfig { command_rate: 10, command_burst: 10, ..ClientConfig::default() }).await
}

/// The same, with these client settings.
async fn node_with(client: ClientConfig) -> (Arc<Hub>, Arc<Frontend>, Arc<Sessions>) {
    node_on(ChannelRules::default(), client).await
}

/// The same, with these channel rules (and Pusher's conventions).
async fn node_on(rules: ChannelRules, client: ClientConfig) -> (Arc<Hub>, Arc<Frontend>, Arc<Sessions>) {
    node_over(Engine::memory(), rules, client).await
}

/// The same, over this engine.
pub(super) async fn node_over(
    engine: Engine,
    rules: ChannelRules,
    client: ClientConfig,
) -> (Arc<Hub>, Arc<Frontend>, Arc<Sessions>) {
    let rules = rules.with_conventions(Arc::new(PusherConventions));
    let config = HubConfig { track_occupancy: true, ..HubConfig::new(NodeId::new("n"), rules) };
    let hub = Hub::new(config, engine);
    hub.start().await.unwrap();
    let app = PusherApp { id: "1".into(), key: KEY.into(), secret: Secret::new(SECRET), ..PusherApp::default() };
    let pusher = PusherConfig { apps: vec![app], ..PusherConfig::default() };
    let sessions = Arc::new(Sessions::default());
    let body = crate::http::body::BodyLimits { max_size: 1 << 20, timeout: Duration::from_secs(10) };
    let users = Arc::new(crate::rate::UserRates::of(&client));
    let driver = crate::driver::DriverSettings {
        hub: hub.clone(),
        write_timeout: client.write_timeout,
        sessions: sessions.clone(),
        metrics: Default::default(),
        events: None,
        alarms: herald_core::Alarms::default(),
    };
    let frontend = Frontend::new(&pusher, &client, (body, users), driver);
    hub.observe(frontend.observer());
    (hub, frontend, sessions)
}

/// A session of a client that connected to `key` with `protocol`.
async fn session_with(key: &str, protocol: Option<&str>) -> Harness {
    session_on(node().await, key, protocol)
}

/// The same, on this node.
fn session_on(
    (hub, frontend, shutdown): (Arc<Hub>, Arc<Frontend>, Arc<Sessions>),
    key: &str,
    protocol: Option<&str>,
) -> Harness {
    let (to_session, inbound) = mpsc::unbounded_channel();
    let (outbound, from_session) = mpsc::unbounded_channel();
    let query = ConnectQuery { protocol: protocol.map(str::to_owned) };
    tokio::spawn(run(MemoryTransport { inbound, outbound }, frontend, key.to_owned(), query));
    Harness { hub, to_session, from_session, shutdown }
}

/// A connected session, past its `pusher:connection_established`; returns
/// the harness and the socket id.
async fn connected() -> (Harness, String) {
    connected_on(node().await).await
}

/// The same, on this node.
pub(super) async fn connected_on(node: (Arc<Hub>, Arc<Frontend>, Arc<Sessions>)) -> (Harness, String) {
    let mut s = session_on(node, KEY, Some("7"));
    let established = s.next_json().await;
    assert_eq!(established["event"], "pusher:connection_established");
    let data: Value = serde_json::from_str(established["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["activity_timeout"], 120);
    let socket_id = data["socket_id"].as_str().unwrap().to_owned();
    (s, socket_id)
}

impl Harness {
    pub(super) fn send(&self, frame: Value) {
        self.to_session.send(Ok(Inbound::Text(Bytes::from(frame.to_string())))).unwrap();
    }

    async fn next(&mut self) -> Sent {
        self.from_session.recv().await.expect("the session sent something")
    }

    pub(super) async fn next_json(&mut self) -> Value {
        match self.next().await {
            Sent::Text(text) => serde_json::from_str(&text).unwrap(),
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    async fn subscribe(&mut self, channel: &str) -> Value {
        self.send(json!({"event": "pusher:subscribe", "data": {"channel": channel}}));
        self.next_json().await
    }

    /// Signs in as `user`, signed for `socket_id`.
    async fn sign_in(&mut self, socket_id: &str, user: &str) {
        let signin = json!({ "id": user }).to_string();
        let auth = format!("{KEY}:{}", sign::hmac_hex(SECRET, sign::signin_message(socket_id, &signin).as_bytes()));
        self.send(json!({"event": "pusher:signin", "data": {"auth": auth, "user_data": signin}}));
        assert_eq!(self.next_json().await["event"], "pusher:signin_success");
    }

    /// Asks to join a presence `channel` as `user`, signed for `socket_id`.
    pub(super) fn join(&self, socket_id: &str, channel: &str, user: &str) {
        let member = json!({ "user_id": user }).to_string();
        let message = sign::channel_message(socket_id, channel, Some(&member));
        let auth = format!("{KEY}:{}", sign::hmac_hex(SECRET, message.as_bytes()));
        self.send(
            json!({"event": "pusher:subscribe", "data": {"channel": channel, "auth": auth, "channel_data": member}}),
        );
    }
}

#[tokio::test(start_paused = true)]
async fn an_unknown_app_or_protocol_is_refused_with_an_error_and_its_close_code() {
    for (key, protocol, code) in [("nope", Some("7"), 4001), (KEY, None, 4008), (KEY, Some("2"), 4007)] {
        let mut s = session_with(key, protocol).await;
        let error = s.next_json().await;
        assert_eq!(
            (error["event"].as_str(), error["data"]["code"].as_u64()),
            (Some("pusher:error"), Some(code.into()))
        );
        assert!(matches!(s.next().await, Sent::Close(c, _) if c == code), "{key} {protocol:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_silent_client_is_pinged_after_the_activity_timeout_and_closed_with_4201_without_a_pong() {
    let (mut s, _) = connected().await;
    let started = Instant::now();
    assert_eq!(s.next_json().await["event"], "pusher:ping");
    assert_eq!(started.elapsed(), Duration::from_secs(120));
    assert!(matches!(s.next().await, Sent::Close(4201, _)));
    assert_eq!(started.elapsed(), Duration::from_secs(150), "the pong timeout after the ping");
}

#[tokio::test(start_paused = true)]
async fn any_message_is_a_sign_of_life_and_a_client_ping_gets_a_pong() {
    let (mut s, _) = connected().await;
    let started = Instant::now();
    assert_eq!(s.next_json().await["event"], "pusher:ping");
    s.send(json!({"event": "pusher:ping", "data": {}}));
    assert_eq!(s.next_json().await["event"], "pusher:pong");
    assert_eq!(s.next_json().await["event"], "pusher:ping", "the client spoke: pinged again, not closed");
    assert_eq!(started.elapsed(), Duration::from_secs(240));
}

#[tokio::test(start_paused = true)]
async fn malformed_frames_get_errors_and_a_binary_frame_closes_with_4007() {
    let (mut s, _) = connected().await;
    for garbage in ["not json", "{\"no_event\":1}", "[]"] {
        s.to_session.send(Ok(Inbound::Text(Bytes::from(garbage)))).unwrap();
        assert_eq!(s.next_json().await["event"], "pusher:error", "{garbage}");
    }
    s.send(json!({"event": "pusher:teleport", "data": {}}));
    assert_eq!(s.next_json().await["event"], "pusher:error", "an unknown event");
    s.to_session.send(Ok(Inbound::Binary(Bytes::from_static(&[0, 1])))).unwrap();
    assert!(matches!(s.next().await, Sent::Close(4007, _)));
}

#[tokio::test(start_paused = true)]
async fn a_public_subscription_is_confirmed_and_its_events_arrive_as_pusher_frames() {
    let (mut s, _) = connected().await;
    let confirmed = s.subscribe("news").await;
    assert_eq!(
        (confirmed["event"].as_str(), confirmed["channel"].as_str()),
        (Some("pusher_internal:subscription_succeeded"), Some("news"))
    );
    let mut publication = Publication::from_data(Bytes::from_static(br#"{"headline":"hi"}"#));
    publication.tags.insert(EVENT_TAG.to_owned(), "breaking".to_owned());
    s.hub.publish(&ChannelName::new("news").unwrap(), publication, None, false).await.unwrap();
    let event = s.next_json().await;
    assert_eq!(event, json!({"event": "breaking", "channel": "news", "data": "{\"headline\":\"hi\"}"}));
}

#[tokio::test(start_paused = true)]
async fn a_private_channel_needs_this_sockets_signature() {
    let (mut s, socket_id) = connected().await;
    let refusal = s.subscribe("private-orders").await;
    assert_eq!(
        (refusal["event"].as_str(), refusal["data"]["status"].as_u64()),
        (Some("pusher:subscription_error"), Some(401))
    );
    let signature = sign::hmac_hex(SECRET, sign::channel_message(&socket_id, "private-orders", None).as_bytes());
    let auth = format!("{KEY}:{signature}");
    s.send(json!({"event": "pusher:subscribe", "data": {"channel": "private-orders", "auth": auth}}));
    assert_eq!(s.next_json().await["event"], "pusher_internal:subscription_succeeded");
}

#[tokio::test(start_paused = true)]
async fn a_presence_cache_channel_sends_its_member_list_then_its_last_event_or_a_cache_miss() {
    let node = node().await;
    let (mut first, socket_id) = connected_on(node.clone()).await;
    first.join(&socket_id, "presence-cache-room", "u1");
    let listed = first.next_json().await;
    assert_eq!(listed["event"], "pusher_internal:subscription_succeeded");
    assert_eq!(
        first.next_json().await,
        json!({"event": "pusher:cache_miss", "channel": "presence-cache-room", "data": {}})
    );

    let mut publication = Publication::from_data(Bytes::from_static(br#"{"n":1}"#));
    publication.tags.insert(EVENT_TAG.to_owned(), "score".to_owned());
    node.0.publish(&ChannelName::new("presence-cache-room").unwrap(), publication, None, false).await.unwrap();
    let (mut second, socket_id) = connected_on(node).await;
    second.join(&socket_id, "presence-cache-room", "u2");
    let listed = second.next_json().await;
    assert_eq!(listed["event"], "pusher_internal:subscription_succeeded");
    let members: Value = serde_json::from_str(listed["data"].as_str().unwrap()).unwrap();
    assert_eq!(members["presence"]["count"], 2, "{members}");
    assert_eq!(
        second.next_json().await,
        json!({"event": "score", "channel": "presence-cache-room", "data": "{\"n\":1}"})
    );
}

#[tokio::test(start_paused = true)]
async fn a_server_side_subscription_is_announced_and_a_disconnect_closes_with_4009() {
    let (mut s, socket_id) = connected().await;
    s.sign_in(&socket_id, "ann").await;

    let ann = UserId::new("ann").unwrap();
    let news = ChannelName::new("news").unwrap();
    s.hub.send_control(server_subscribes(&ann, news)).await.unwrap();
    let confirmed = s.next_json().await;
    assert_eq!(
        (confirmed["event"].as_str(), confirmed["channel"].as_str()),
        (Some("pusher_internal:subscription_succeeded"), Some("news"))
    );

    let reason = herald_engine::DisconnectReason::ForceDisconnect;
    s.hub.send_control(Control::Disconnect { user: ann, client: None, reason, app: None }).await.unwrap();
    assert!(matches!(s.next().await, Sent::Close(4009, _)));
}

#[tokio::test(start_paused = true)]
async fn the_server_subscribes_a_pusher_connection_to_its_apps_channels_but_not_to_presence_ones() {
    // A `chat` namespace, so that `chat:x` is a channel the node serves,
    // only not one of this app's (whose channels have no namespace).
    let chat = std::collections::BTreeMap::from([("chat".to_owned(), NamespaceOptions::default())]);
    let rules = ChannelRules::new(NamespaceOptions::default(), chat);
    let (mut s, socket_id) = connected_on(node_on(rules, ClientConfig::default()).await).await;
    s.sign_in(&socket_id, "ann").await;
    let ann = UserId::new("ann").unwrap();
    // pusher-js takes a presence subscription only with its member list.
    for name in ["presence-room", "chat:x", "sports"] {
        let channel = ChannelName::new(name).unwrap();
        s.hub.send_control(server_subscribes(&ann, channel)).await.unwrap();
    }
    let confirmed = s.next_json().await;
    assert_eq!(
        (confirmed["event"].as_str(), confirmed["channel"].as_str()),
        (Some("pusher_internal:subscription_succeeded"), Some("sports")),
        "the first thing it hears of is sports"
    );
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(s.hub.stats().subscriptions, 1, "subscribed to sports alone");
}

#[tokio::test(start_paused = true)]
async fn a_namespace_forcing_recovery_leaves_pusher_subscriptions_unpositioned_and_delivering() {
    // Centrifuge subscriptions here would be ended when the stream starts
    // again under a new epoch, for their clients to recover; a Pusher
    // client cannot, and is not told of an end: it keeps receiving, on a
    // channel it subscribed to as on one the server subscribed it to.
    let recovering = NamespaceOptions { history_size: 10, force_recovery: true, ..NamespaceOptions::default() };
    let rules = ChannelRules::new(recovering, std::collections::BTreeMap::new());
    let (mut s, socket_id) = connected_on(node_on(rules, ClientConfig::default()).await).await;
    assert_eq!(s.subscribe("news").await["event"], "pusher_internal:subscription_succeeded");
    s.sign_in(&socket_id, "ann").await;
    let (ann, sports) = (UserId::new("ann").unwrap(), ChannelName::new("sports").unwrap());
    s.hub.send_control(server_subscribes(&ann, sports.clone())).await.unwrap();
    assert_eq!(s.next_json().await["event"], "pusher_internal:subscription_succeeded");

    for channel in [ChannelName::new("news").unwrap(), sports] {
        s.hub.engine().history().remove_history(&channel).await.unwrap();
        s.hub.publish(&channel, Publication::from_data(Bytes::from_static(br#"{"n":1}"#)), None, false).await.unwrap();
        let event = s.next_json().await;
        assert_eq!((event["channel"].as_str(), event["data"].as_str()), (Some(channel.as_str()), Some("{\"n\":1}")));
    }
    assert_eq!(s.hub.stats().subscriptions, 2, "still subscribed to both");
}

#[tokio::test(start_paused = true)]
async fn a_server_side_subscription_to_a_cache_channel_is_sent_its_last_event_after_the_confirmation() {
    let (mut s, socket_id) = connected().await;
    s.sign_in(&socket_id, "ann").await;
    let price = ChannelName::new("cache-price").unwrap();
    let mut publication = Publication::from_data(Bytes::from_static(br#"{"n":1}"#));
    publication.tags.insert(EVENT_TAG.to_owned(), "price".to_owned());
    s.hub.publish(&price, publication, None, false).await.unwrap();

    let ann = UserId::new("ann").unwrap();
    s.hub.send_control(server_subscribes(&ann, price)).await.unwrap();
    assert_eq!(s.next_json().await["event"], "pusher_internal:subscription_succeeded");
    assert_eq!(s.next_json().await, json!({"event": "price", "channel": "cache-price", "data": "{\"n\":1}"}));
}

#[tokio::test(start_paused = true)]
async fn shutdown_closes_with_4200_and_the_connection_leaves_the_hub() {
    let (mut s, _) = connected().await;
    s.subscribe("news").await;
    assert_eq!(s.hub.stats().subscriptions, 1);
    s.shutdown.stop();
    assert!(matches!(s.next().await, Sent::Close(4200, _)));
    assert_eq!(s.from_session.recv().await, None, "the session ended");
    assert_eq!(s.hub.stats().clients, 0);
    assert_eq!(s.hub.stats().subscriptions, 0);
}

#[tokio::test(start_paused = true)]
async fn a_broken_transport_ends_the_session_quietly() {
    let (mut s, _) = connected().await;
    s.to_session.send(Err(TransportError::Broken("reset".into()))).unwrap();
    assert_eq!(s.from_session.recv().await, None, "no close frame on a broken transport");
    assert_eq!(s.hub.stats().clients, 0);
}

#[tokio::test(start_paused = true)]
async fn messages_over_the_rate_get_4301_and_a_client_that_keeps_on_is_closed_but_pings_never_count() {
    // 10 messages a second, a burst of 10.
    let (mut s, _) = connected().await;
    for _ in 0..30 {
        s.send(json!({"event": "pusher:ping", "data": {}}));
        assert_eq!(s.next_json().await["event"], "pusher:pong", "heartbeats are never counted");
    }
    for n in 0..10 {
        s.send(json!({"event": "pusher:teleport", "data": {}}));
        assert_eq!(s.next_json().await["data"]["code"], Value::Null, "message {n} is within the rate");
    }
    s.send(json!({"event": "pusher:teleport", "data": {}}));
    let refused = s.next_json().await;
    assert_eq!((refused["event"].as_str(), refused["data"]["code"].as_u64()), (Some("pusher:error"), Some(4301)));
    loop {
        s.send(json!({"event": "pusher:teleport", "data": {}}));
        match s.next().await {
            Sent::Text(_) | Sent::Binary(_) => continue,
            Sent::Close(code, _) => {
                assert_eq!(code, 4301);
                break;
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn subscriptions_over_the_subscribe_rate_get_a_429_subscription_error_and_a_flood_closes_with_4301() {
    let client = ClientConfig { subscribe_rate: 1, subscribe_burst: 2, ..ClientConfig::default() };
    let (mut s, _) = connected_on(node_with(client).await).await;
    for n in 0..2 {
        assert_eq!(s.subscribe(&format!("c{n}")).await["event"], "pusher_internal:subscription_succeeded");
    }
    let refusal = s.subscribe("c2").await;
    assert_eq!(
        (refusal["event"].as_str(), refusal["data"]["status"].as_u64(), refusal["data"]["type"].as_str()),
        (Some("pusher:subscription_error"), Some(429), Some("LimitReached"))
    );
    // The refused one cost too: two seconds pay it back and make room.
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(s.subscribe("c3").await["event"], "pusher_internal:subscription_succeeded", "room again");
    for n in 4..10 {
        s.send(json!({"event": "pusher:subscribe", "data": {"channel": format!("c{n}")}}));
    }
    loop {
        match s.next().await {
            Sent::Text(_) | Sent::Binary(_) => continue,
            Sent::Close(code, _) => break assert_eq!(code, 4301),
        }
    }
}

/// Two workers: a publisher loops on the channel while clients join it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_presence_subscription_is_confirmed_ahead_of_every_event_of_a_busy_channel() {
    let node = node().await;
    let room = ChannelName::new("presence-room").unwrap();
    let published = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let publishing = tokio::spawn({
        let (hub, published) = (node.0.clone(), published.clone());
        async move {
            loop {
                let mut publication = Publication::from_data(Bytes::from_static(b"{}"));
                publication.tags.insert(EVENT_TAG.to_owned(), "busy".to_owned());
                hub.publish(&room, publication, None, false).await.expect("the memory engine publishes");
                published.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        }
    });
    let joining = async {
        for n in 0..500 {
            let (mut s, socket_id) = connected_on(node.clone()).await;
            s.join(&socket_id, "presence-room", &format!("u{n}"));
            let first = loop {
                let frame = s.next_json().await;
                if frame["channel"] == "presence-room" {
                    break frame;
                }
            };
            assert_eq!(first["event"], "pusher_internal:subscription_succeeded", "client {n}: {first}");
        }
    };
    let finished = tokio::time::timeout(Duration::from_secs(60), joining).await;
    assert!(!publishing.is_finished(), "the publisher stopped: {:?}", publishing.await);
    publishing.abort();
    finished.expect("500 presence subscriptions in a minute");
    assert!(
        published.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the channel was published to while clients joined"
    );
}

/// Two workers: a publisher loops on a cache channel while clients
/// subscribe to it. Each client's first event is the channel's last one,
/// and what follows is newer: never an older event after a newer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_channels_last_event_reaches_a_subscriber_ahead_of_every_newer_one() {
    let node = node().await;
    let price = ChannelName::new("cache-price").unwrap();
    let published = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let publishing = tokio::spawn({
        let (hub, published) = (node.0.clone(), published.clone());
        async move {
            for n in 1u64.. {
                let mut publication = Publication::from_data(Bytes::from(json!({ "n": n }).to_string()));
                publication.tags.insert(EVENT_TAG.to_owned(), "price".to_owned());
                hub.publish(&price, publication, None, false).await.expect("the memory engine publishes");
                published.store(n, std::sync::atomic::Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        }
    });
    while published.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        tokio::task::yield_now().await;
    }
    let subscribing = async {
        for client in 0..300 {
            let (mut s, _) = connected_on(node.clone()).await;
            s.send(json!({"event": "pusher:subscribe", "data": {"channel": "cache-price"}}));
            let confirmed = s.next_json().await;
            assert_eq!(confirmed["event"], "pusher_internal:subscription_succeeded", "client {client}: {confirmed}");
            let mut seen = Vec::new();
            while seen.len() < 3 {
                let event = s.next_json().await;
                assert_eq!(event["event"], "price", "client {client}, after {seen:?}: {event}");
                let data: Value = serde_json::from_str(event["data"].as_str().unwrap()).unwrap();
                seen.push(data["n"].as_u64().unwrap());
            }
            assert!(
                seen.is_sorted_by(|a, b| a < b),
                "client {client} was sent {seen:?}: an event repeated, or an older one after a newer"
            );
        }
    };
    let finished = tokio::time::timeout(Duration::from_secs(60), subscribing).await;
    assert!(!publishing.is_finished(), "the publisher stopped: {:?}", publishing.await);
    publishing.abort();
    finished.expect("300 cache subscriptions in a minute");
}

/// The server API's `subscribe` of `user` to `channel`, plainly.
fn server_subscribes(user: &UserId, channel: ChannelName) -> Control {
    Control::Subscribe { user: user.clone(), channel, client: None, info: None, data: None, expire_at: None }
}
