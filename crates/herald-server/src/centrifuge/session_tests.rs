//! The session's timers, driven over an in-memory transport with paused
//! time: no test here waits for a real clock.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tokio::sync::mpsc;

use herald_core::{ChannelRules, Hub, HubConfig};
use herald_engine::{Engine, NodeId};

use super::session::Mode;
use super::session::{run, SessionSettings, Shared};
use super::CentrifugeEncoder;
use crate::auth::{TokenMinter, TokenVerifier};
use crate::config::{ClientConfig, Secret};
use crate::transport::memory::{MemoryTransport, Sent};
use crate::transport::{Inbound, TransportError};

const SECRET: &str = "session-test-secret";

struct Harness {
    hub: Arc<Hub>,
    to_session: mpsc::UnboundedSender<Result<Inbound, TransportError>>,
    from_session: mpsc::UnboundedReceiver<Sent>,
    sessions: Arc<crate::driver::Sessions>,
}

/// Subscriptions as `client.subscribe_rate` and `client.subscribe_burst` default.
const SUBSCRIBE_RATE: crate::rate::RateLimit = crate::rate::RateLimit { rate: 10, burst: 128 };

async fn session() -> Harness {
    session_with(ChannelRules::default(), 1 << 20, SUBSCRIBE_RATE).await
}

async fn session_with(rules: ChannelRules, queue_max_bytes: usize, subscriptions: crate::rate::RateLimit) -> Harness {
    session_in(Mode::Bidirectional, rules, queue_max_bytes, subscriptions).await
}

async fn session_in(
    mode: Mode,
    rules: ChannelRules,
    queue_max_bytes: usize,
    subscriptions: crate::rate::RateLimit,
) -> Harness {
    session_over(mode, rules, queue_max_bytes, subscriptions, |memory| memory).await
}

/// A session whose client speaks `encoding`, over the in-memory transport.
async fn session_speaking(encoding: super::session::Encoding) -> Harness {
    let rules = ChannelRules::default();
    session_encoded(Mode::Bidirectional, rules, 1 << 20, SUBSCRIBE_RATE, encoding, |memory| memory).await
}

/// [`session_in`], over the transport `transport` makes of the in-memory one.
async fn session_over<T: crate::transport::Transport + 'static>(
    mode: Mode,
    rules: ChannelRules,
    queue_max_bytes: usize,
    subscriptions: crate::rate::RateLimit,
    transport: impl FnOnce(MemoryTransport) -> T,
) -> Harness {
    let json = super::session::Encoding::Json;
    session_encoded(mode, rules, queue_max_bytes, subscriptions, json, transport).await
}

/// [`session_over`], its client speaking `encoding`.
async fn session_encoded<T: crate::transport::Transport + 'static>(
    mode: Mode,
    rules: ChannelRules,
    queue_max_bytes: usize,
    subscriptions: crate::rate::RateLimit,
    encoding: super::session::Encoding,
    transport: impl FnOnce(MemoryTransport) -> T,
) -> Harness {
    let client = ClientConfig { token_hmac_secret: Some(Secret::new(SECRET)), ..ClientConfig::default() };
    let hub = Hub::new(HubConfig::new(NodeId::new("n"), rules), Engine::memory());
    hub.start().await.unwrap();
    let sessions = Arc::new(crate::driver::Sessions::default());
    let shared = Arc::new(Shared {
        driver: crate::driver::DriverSettings {
            hub: hub.clone(),
            write_timeout: Duration::from_secs(10),
            sessions: sessions.clone(),
            metrics: Default::default(),
            events: None,
            alarms: herald_core::Alarms::default(),
        },
        verifier: crate::rotating::Rotating::new(TokenVerifier::from_config(&client).unwrap()),
        settings: SessionSettings {
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(8),
            connect_timeout: Duration::from_secs(10),
            expired_close_delay: Duration::from_secs(25),
            expired_sub_close_delay: Duration::from_secs(25),
            queue_max_bytes,
            allow_anonymous: false,
            rates: crate::rate::RateLimits { commands: crate::rate::RateLimit { rate: 10, burst: 10 }, subscriptions },
            users: Arc::new(crate::rate::UserRates::new(crate::rate::RateLimit { rate: 0, burst: 0 })),
        },
        encoder: Arc::new(CentrifugeEncoder),
        uni_encoder: Arc::default(),
        protobuf_encoder: Arc::default(),
        proxies: Default::default(),
        pusher: None,
    });
    let (to_session, inbound) = mpsc::unbounded_channel();
    let (outbound, from_session) = mpsc::unbounded_channel();
    tokio::spawn(run(transport(MemoryTransport { inbound, outbound }), shared, None, mode, encoding));
    Harness { hub, to_session, from_session, sessions }
}

impl Harness {
    fn send(&self, value: serde_json::Value) {
        self.to_session.send(Ok(Inbound::Text(Bytes::from(value.to_string())))).unwrap();
    }

    async fn next(&mut self) -> Sent {
        self.from_session.recv().await.expect("the session sent something")
    }

    async fn connect(&mut self, claims: serde_json::Value) {
        let token = TokenMinter::hmac(SECRET).sign(&claims);
        self.send(json!({"id": 1, "connect": {"token": token}}));
        match self.next().await {
            Sent::Text(reply) => assert!(reply.contains("\"connect\""), "{reply}"),
            other => panic!("expected the connect reply, got {other:?}"),
        }
    }
}

fn ping() -> Sent {
    Sent::Text("{}".into())
}

/// A Protobuf command, length-delimited as the client frames it.
fn protobuf_command(command: &super::protobuf::wire::Command) -> Inbound {
    use prost::Message;
    Inbound::Binary(Bytes::from(command.encode_length_delimited_to_vec()))
}

/// The reply in a Protobuf frame the session sent.
fn protobuf_reply(sent: Sent) -> super::protobuf::wire::Reply {
    use prost::Message;
    match sent {
        Sent::Binary(frame) => {
            super::protobuf::wire::Reply::decode_length_delimited(frame.as_slice()).expect("a reply")
        }
        other => panic!("expected a Protobuf frame, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn protobuf_clients_get_their_replies_for_tokens_that_never_expire_or_expire_past_the_ttls_range() {
    use super::protobuf::wire::{Command, ConnectRequest, RefreshRequest};
    let mut s = session_speaking(super::session::Encoding::Protobuf).await;
    // "Never", as many backends write it: further off than a 32-bit ttl reaches.
    let token = TokenMinter::hmac(SECRET).sign(&json!({"sub": "42", "exp": 9_999_999_999u64}));
    let connect = ConnectRequest { token, ..ConnectRequest::default() };
    s.to_session.send(Ok(protobuf_command(&Command { id: 1, connect: Some(connect), ..Command::default() }))).unwrap();
    let reply = protobuf_reply(s.next().await);
    let connected = reply.connect.expect("the connect reply");
    assert!(connected.expires);
    assert_eq!(connected.ttl, u32::MAX, "the longest ttl the protocol holds");

    // Refreshed to a token with no expiry at all.
    let token = TokenMinter::hmac(SECRET).sign(&json!({"sub": "42"}));
    let refresh = RefreshRequest { token };
    s.to_session.send(Ok(protobuf_command(&Command { id: 2, refresh: Some(refresh), ..Command::default() }))).unwrap();
    let reply = protobuf_reply(s.next().await);
    assert_eq!(reply.id, 2);
    let refreshed = reply.refresh.expect("the refresh reply");
    assert_eq!((refreshed.expires, refreshed.ttl), (false, 0), "{refreshed:?}");
}

#[tokio::test(start_paused = true)]
async fn no_connect_within_the_timeout_closes_as_stale() {
    let mut s = session().await;
    assert_eq!(s.next().await, Sent::Close(3502, "stale".into()));
}

#[tokio::test(start_paused = true)]
async fn a_client_that_has_not_connected_yet_is_closed_with_3001_when_the_node_stops() {
    let mut s = session().await;
    while s.sessions.len() == 0 {
        tokio::task::yield_now().await;
    }
    let stopped = tokio::time::Instant::now();
    s.sessions.stop();
    assert_eq!(s.next().await, Sent::Close(3001, "shutdown".into()));
    assert_eq!(stopped.elapsed(), Duration::ZERO, "closed at once, not at the connect timeout");
    assert_eq!(s.from_session.recv().await, None, "the session ended");
    assert_eq!(s.sessions.len(), 0);
}

#[tokio::test(start_paused = true)]
async fn pings_come_every_interval_and_a_missing_pong_closes_with_3012() {
    let mut s = session().await;
    s.connect(json!({"sub": "42"})).await;
    let started = tokio::time::Instant::now();
    assert_eq!(s.next().await, ping());
    assert_eq!(started.elapsed(), Duration::from_secs(25));
    s.send(json!({}));
    assert_eq!(s.next().await, ping(), "an answered ping is followed by the next one");
    assert_eq!(s.next().await, Sent::Close(3012, "no pong".into()));
    assert_eq!(started.elapsed(), Duration::from_secs(58));
}

#[tokio::test(start_paused = true)]
async fn an_expired_connection_closes_with_3005_after_the_grace_delay() {
    let mut s = session().await;
    let exp = crate::auth::unix_now() + 100;
    s.connect(json!({"sub": "42", "exp": exp})).await;
    loop {
        match s.next().await {
            Sent::Text(ping) if ping == "{}" => s.send(json!({})),
            Sent::Close(code, _) => {
                assert_eq!(code, 3005);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_broken_transport_ends_the_session_quietly() {
    let mut s = session().await;
    s.connect(json!({"sub": "42"})).await;
    s.to_session.send(Err(TransportError::Broken("reset".into()))).unwrap();
    assert_eq!(s.from_session.recv().await, None, "no close frame on a broken transport");
}

#[tokio::test(start_paused = true)]
async fn an_expiry_too_far_ahead_to_be_an_instant_never_comes_and_leaves_no_ghost() {
    let mut s = session().await;
    s.connect(json!({"sub": "42", "exp": u64::MAX})).await;
    s.send(json!({"id": 2, "ping": {}}));
    assert_eq!(s.next().await, Sent::Text(r#"{"id":2,"ping":{}}"#.into()), "the connection lives");

    let user = herald_engine::UserId::new("42").unwrap();
    let refresh =
        herald_engine::Control::Refresh { user, client: None, expire_at: Some(u64::MAX), expired: false, info: None };
    s.hub.send_control(refresh).await.unwrap();
    match s.next().await {
        Sent::Text(push) => assert!(push.contains("\"refresh\""), "{push}"),
        other => panic!("expected the refresh push, got {other:?}"),
    }
    s.send(json!({"id": 3, "ping": {}}));
    assert_eq!(s.next().await, Sent::Text(r#"{"id":3,"ping":{}}"#.into()), "and lives on after the refresh");

    s.to_session.send(Err(TransportError::Broken("gone".into()))).unwrap();
    assert_eq!(s.from_session.recv().await, None);
    assert_eq!(s.hub.stats().clients, 0, "the connection left the hub");
}

/// Log lines written while a test runs, on this test's thread.
#[derive(Clone, Default)]
struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test(start_paused = true)]
async fn refused_frames_and_tokens_are_logged_without_the_token() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber =
        tracing_subscriber::fmt().with_max_level(tracing::Level::DEBUG).with_writer(move || writer.clone()).finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let secret = "eyJhbGciOiJIUzI1NiJ9.SECRET-CLAIMS.SECRET-SIGNATURE";
    let mut bad_token = session().await;
    bad_token.send(json!({"id": 1, "connect": {"token": secret}}));
    assert_eq!(bad_token.next().await, Sent::Close(3500, "invalid token".into()));
    let mut malformed = session().await;
    let frame = format!(r#"{{"id":1,"connect":{{"token":"{secret}"}},"subscribe":{{"channel":1}}}}"#);
    malformed.to_session.send(Ok(Inbound::Text(Bytes::from(frame)))).unwrap();
    assert_eq!(malformed.next().await, Sent::Close(3501, "bad request".into()));

    let logged = logs.text();
    assert!(logged.contains("connection token refused"), "the refusals were logged: {logged}");
    assert!(logged.contains("closing connection after bad input"), "{logged}");
    assert!(!logged.contains("SECRET"), "no part of the token is logged: {logged}");
}

#[tokio::test(start_paused = true)]
async fn commands_over_the_rate_are_refused_with_111_and_a_client_that_keeps_on_is_closed_with_3013() {
    // 10 commands a second, a burst of 10; the connect took one.
    let mut s = session().await;
    s.connect(json!({"sub": "42"})).await;
    let pings: Vec<String> = (2..17).map(|id| json!({"id": id, "ping": {}}).to_string()).collect();
    s.to_session.send(Ok(Inbound::Text(Bytes::from(pings.join("\n"))))).unwrap();
    let Sent::Text(frame) = s.next().await else { panic!("expected the replies") };
    let replies: Vec<serde_json::Value> = frame.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let answered = replies.iter().filter(|r| r.get("ping").is_some()).count();
    let refused: Vec<&serde_json::Value> = replies.iter().filter(|r| r["error"]["code"] == 111).collect();
    assert_eq!((answered, refused.len()), (9, 6), "{frame}");
    assert!(refused.iter().all(|r| r["error"]["temporary"] == true), "a client retries a temporary error");

    tokio::time::advance(Duration::from_secs(2)).await;
    s.send(json!({"id": 20, "ping": {}}));
    assert_eq!(s.next().await, Sent::Text(r#"{"id":20,"ping":{}}"#.into()), "after a pause the rate is back");

    let flood: Vec<String> = (100..140).map(|id| json!({"id": id, "ping": {}}).to_string()).collect();
    s.to_session.send(Ok(Inbound::Text(Bytes::from(flood.join("\n"))))).unwrap();
    loop {
        match s.next().await {
            Sent::Text(_) | Sent::Binary(_) => continue,
            Sent::Close(code, _) => {
                assert_eq!(code, 3013);
                break;
            }
        }
    }
}

#[tokio::test]
async fn recoveries_that_overflow_the_queue_together_are_written_one_after_another() {
    // Two channels, each with ~6 KB to recover; together they are more
    // than the 8 KiB queue. Sent back to back in one frame (as SDKs send
    // them after a reconnect) they must not close the client as slow: it
    // would reconnect and ask again, forever.
    let feed = herald_core::NamespaceOptions {
        history_size: 100,
        force_recovery: true,
        recovery_max_publications: 100,
        subscribe: herald_core::SubscribePolicy::Authenticated,
        ..Default::default()
    };
    let rules = ChannelRules::new(Default::default(), std::collections::BTreeMap::from([("feed".to_owned(), feed)]));
    let mut s = session_with(rules, 8 * 1024, SUBSCRIBE_RATE).await;
    s.connect(json!({"sub": "42"})).await;
    let mut epochs = Vec::new();
    for (id, channel) in [(2, "feed:a"), (3, "feed:b")] {
        s.send(json!({"id": id, "subscribe": {"channel": channel}}));
        let Sent::Text(reply) = s.next().await else { panic!("expected the subscribe reply") };
        let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
        epochs.push(reply["subscribe"]["epoch"].as_str().unwrap().to_owned());
        s.send(json!({"id": id + 10, "unsubscribe": {"channel": channel}}));
        s.next().await;
    }
    let data = format!("\"{}\"", "x".repeat(200));
    for channel in ["feed:a", "feed:b"] {
        let channel = herald_engine::ChannelName::new(channel).unwrap();
        for _ in 0..30 {
            let publication = herald_engine::Publication::from_data(Bytes::from(data.clone()));
            s.hub.publish(&channel, publication, None, false).await.unwrap();
        }
    }
    let resubscribe = [(20, "feed:a", &epochs[0]), (21, "feed:b", &epochs[1])].map(|(id, channel, epoch)| {
        json!({"id": id, "subscribe": {"channel": channel, "recover": true, "offset": 0, "epoch": epoch}}).to_string()
    });
    s.to_session.send(Ok(Inbound::Text(Bytes::from(resubscribe.join("\n"))))).unwrap();
    let mut recovered = Vec::new();
    while recovered.len() < 2 {
        match s.next().await {
            Sent::Text(frame) => {
                for line in frame.lines() {
                    let reply: serde_json::Value = serde_json::from_str(line).unwrap();
                    let publications = reply["subscribe"]["publications"].as_array().map_or(0, Vec::len);
                    assert_eq!(reply["subscribe"]["recovered"], true, "{line}");
                    recovered.push((reply["id"].as_u64().unwrap(), publications));
                }
            }
            Sent::Close(code, reason) => panic!("closed with {code} {reason} instead of recovering"),
            Sent::Binary(_) => panic!("binary on a JSON connection"),
        }
    }
    assert_eq!(recovered, [(20, 30), (21, 30)]);
}

#[tokio::test(start_paused = true)]
async fn subscriptions_over_the_subscribe_rate_are_refused_with_111() {
    // One a second, three at once; the command rate (10) is not the limit.
    let subscriptions = crate::rate::RateLimit { rate: 1, burst: 3 };
    let mut s = session_with(ChannelRules::default(), 1 << 20, subscriptions).await;
    s.connect(json!({"sub": "42"})).await;
    let subscribes: Vec<String> =
        (2..7).map(|id| json!({"id": id, "subscribe": {"channel": format!("c{id}")}}).to_string()).collect();
    s.to_session.send(Ok(Inbound::Text(Bytes::from(subscribes.join("\n"))))).unwrap();
    let Sent::Text(frame) = s.next().await else { panic!("expected the replies") };
    let replies: Vec<serde_json::Value> = frame.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let refused: Vec<u64> =
        replies.iter().filter(|r| r["error"]["code"] == 111).map(|r| r["id"].as_u64().unwrap()).collect();
    assert_eq!(refused, [5, 6], "{frame}");
    // The two refused ones cost too: three seconds pay them back and make room.
    tokio::time::advance(Duration::from_secs(3)).await;
    s.send(json!({"id": 7, "subscribe": {"channel": "c7"}}));
    let Sent::Text(reply) = s.next().await else { panic!("expected the reply") };
    assert!(reply.contains("\"subscribe\""), "room again: {reply}");
}

#[tokio::test(start_paused = true)]
async fn a_uni_directional_client_gets_a_connect_push_and_pings_it_need_not_answer() {
    let mut s = session_in(Mode::Unidirectional, ChannelRules::default(), 1 << 20, SUBSCRIBE_RATE).await;
    let token = TokenMinter::hmac(SECRET).sign(&json!({"sub": "42"}));
    s.send(json!({"token": token, "name": "curl"}));
    let Sent::Text(connect) = s.next().await else { panic!("expected the connect push") };
    let connect: serde_json::Value = serde_json::from_str(&connect).unwrap();
    assert!(connect["connect"]["client"].is_string(), "{connect}");
    assert_eq!(connect["connect"]["pong"], false, "{connect}");
    assert!(connect.get("id").is_none(), "a push, not a reply: {connect}");
    for _ in 0..3 {
        assert_eq!(s.next().await, ping(), "pinged, and never closed for not answering");
    }
    s.send(json!({"id": 2, "subscribe": {"channel": "news"}}));
    assert_eq!(s.next().await, ping(), "whatever it sends later is ignored");
}

#[tokio::test]
async fn a_uni_directional_connect_that_is_not_json_ends_as_a_bad_request() {
    let mut s = session_in(Mode::Unidirectional, ChannelRules::default(), 1 << 20, SUBSCRIBE_RATE).await;
    s.to_session.send(Ok(Inbound::Text(Bytes::from_static(b"token=abc")))).unwrap();
    assert_eq!(s.next().await, Sent::Close(3501, "bad request".into()));
}

/// A memory transport that counts how often the session polls its read.
struct Counted {
    inner: MemoryTransport,
    read_polls: Arc<std::sync::atomic::AtomicUsize>,
}

impl crate::transport::Transport for Counted {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn start_texts<I>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        texts: I,
    ) -> Result<crate::transport::Started, TransportError>
    where
        I: IntoIterator<Item = herald_core::Text>,
    {
        self.inner.start_texts(cx, texts)
    }

    fn start_binary(
        &mut self,
        cx: &mut std::task::Context<'_>,
        bytes: Bytes,
    ) -> Result<crate::transport::Started, TransportError> {
        self.inner.start_binary(cx, bytes)
    }

    fn start_owed(&mut self, cx: &mut std::task::Context<'_>) -> Result<crate::transport::Started, TransportError> {
        self.inner.start_owed(cx)
    }

    async fn send_owed(&mut self) -> Result<(), TransportError> {
        self.inner.send_owed().await
    }

    async fn recv(&mut self) -> Result<Option<Inbound>, TransportError> {
        use std::future::Future;
        let mut recv = std::pin::pin!(self.inner.recv());
        std::future::poll_fn(|cx| {
            self.read_polls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            recv.as_mut().poll(cx)
        })
        .await
    }

    async fn close(&mut self, code: u16, reason: String) {
        self.inner.close(code, reason).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_ping_comes_on_time_after_deliveries_left_the_timer_parked() {
    let mut s = session().await;
    s.connect(json!({"sub": "42"})).await;
    let connected = tokio::time::Instant::now();
    s.send(json!({"id": 2, "subscribe": {"channel": "news"}}));
    assert!(matches!(s.next().await, Sent::Text(reply) if reply.contains("\"id\":2")));

    let channel = herald_engine::ChannelName::new("news").unwrap();
    for n in 0..100 {
        let publication = herald_engine::Publication::from_data(Bytes::from(n.to_string()));
        s.hub.publish(&channel, publication, None, false).await.unwrap();
        assert!(matches!(s.next().await, Sent::Text(push) if push.contains("\"pub\"")));
    }
    let next = tokio::time::timeout(Duration::from_secs(60), s.next()).await;
    assert_eq!(next.ok(), Some(ping()), "the ping timer still fires");
    assert_eq!(connected.elapsed(), Duration::from_secs(25));
}

#[tokio::test(start_paused = true)]
async fn deliveries_do_not_poll_the_socket_and_what_the_client_sends_next_is_read() {
    let read_polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let polls = read_polls.clone();
    let counted = move |inner| Counted { inner, read_polls: polls };
    let mut s = session_over(Mode::Bidirectional, ChannelRules::default(), 1 << 20, SUBSCRIBE_RATE, counted).await;
    s.connect(json!({"sub": "42"})).await;
    s.send(json!({"id": 2, "subscribe": {"channel": "news"}}));
    assert!(matches!(s.next().await, Sent::Text(reply) if reply.contains("\"id\":2")));
    let before = read_polls.load(std::sync::atomic::Ordering::SeqCst);

    let channel = herald_engine::ChannelName::new("news").unwrap();
    for n in 0..100 {
        let publication = herald_engine::Publication::from_data(Bytes::from(n.to_string()));
        s.hub.publish(&channel, publication, None, false).await.unwrap();
        assert!(matches!(s.next().await, Sent::Text(push) if push.contains("\"pub\"")));
    }
    let during = read_polls.load(std::sync::atomic::Ordering::SeqCst) - before;
    assert!(during <= 2, "100 deliveries polled the socket {during} times");

    s.send(json!({"id": 3, "ping": {}}));
    assert_eq!(s.next().await, Sent::Text(r#"{"id":3,"ping":{}}"#.into()), "a parked read still reads");
}
