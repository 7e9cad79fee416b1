//! Bidirectional emulation: a client whose server-to-client direction is
//! an HTTP stream (HTTP-streaming or SSE) posts its commands to
//! `/emulation`, naming its session's key and node (both from its connect
//! reply). The POST may reach any node behind a load balancer: the node
//! holding the session takes the commands into it; any other relays them
//! through the engine (`Control::Relay`) and only the named node acts.
//!
//! A Protobuf client posts an `EmulationRequest` message
//! (`Content-Type: application/octet-stream`); its commands cross the
//! engine as base64.
//!
//! A session's key is 128 random bits, known only to its client, so no
//! one else can post commands into it (client ids are not secret: presence
//! shows them), signed by its node (`session_keys`). The table of keys
//! holds one entry per open emulated stream, so the node's connection caps
//! bound it. A request whose key is not one the named node gave (checked
//! against the public key the node registry lists for it) is refused
//! before it is relayed: a relay is a message to every node; and a signed
//! key's relays are held to [`RELAY_RATE`]. On the named
//! node, a relayed batch its session has no room for waits for room (as a
//! local POST does) only while fewer than [`RELAYS_WAITING`] do; beyond
//! that it is dropped, logged, so that a client posting faster than its
//! session reads cannot pile up waiting batches on the node.
//!
//! Answers: 204 once the commands are handed over (replies come on the
//! stream), also when the session has just ended (its stream ends too);
//! 404 for a node the cluster does not know (the client reconnects at
//! once); 503 when the session does not take commands in time, the
//! engine cannot relay, or the cluster's node list cannot be read (a relay
//! reaches every node, so none is sent for a node not known to be there);
//! 400 for a malformed request (a malformed session
//! key included), 413 for one above `client.max_message_size`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;
use tokio::time::Instant;

use herald_core::{Hub, SessionRelay};
use herald_engine::{Control, NodeId};

use super::session_keys::{RelayKey, SessionKey, Signer};
use crate::http::body::{self, BodyLimits};
use crate::rate::{KeyedRates, RateLimit, Verdict};
use crate::transport::posted::{inbox, Key, NotTaken, Posted, Poster};

/// How long a POST waits for its session to take the commands.
const DELIVERY_WAIT: Duration = Duration::from_secs(2);

/// How often, at most, the cluster's node list is read again to check a
/// node the node does not know yet.
const NODES_REREAD: Duration = Duration::from_secs(1);

/// Relayed batches that may wait at once, node-wide, for their sessions
/// to make room (each up to [`DELIVERY_WAIT`]).
pub(crate) const RELAYS_WAITING: usize = 1024;

/// How many posts a node relays for one session of another node: a
/// second's worth and a burst. A client posts a request per batch of
/// commands, a few a second; one that posts far more (a real key taken
/// for a flood: each relay is a message to every node) is answered 429.
const RELAY_RATE: RateLimit = RateLimit { rate: 50, burst: 100 };

/// The node's emulated sessions: each one's inbox, found by its key (the
/// number: its text is the client's, in its connect reply).
#[derive(Debug)]
pub(crate) struct Emulation {
    sessions: Mutex<HashSet<Poster>>,
    known_nodes: Mutex<KnownNodes>,
    /// Places for relayed batches waiting for room (see [`RELAYS_WAITING`]).
    relays_waiting: Arc<tokio::sync::Semaphore>,
    /// Signs the keys of this node's sessions (see `session_keys`).
    signer: Signer,
    /// Relays made for each signed session key of another node (unsigned
    /// ones, an older node's, are any number anyone makes up: not kept).
    relays: KeyedRates<Key>,
}

/// The cluster's nodes as last read: each one's id and the public key its
/// session keys are signed with, read once (none from an older node).
#[derive(Debug, Default)]
struct KnownNodes {
    keys: HashMap<String, Option<RelayKey>>,
    read_at: Option<Instant>,
}

/// What the cluster's node list says of the node a POST names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Listed {
    /// A live node, with the public key its session keys are signed with.
    Yes {
        relay_key: Option<RelayKey>,
    },
    No,
    /// The list cannot be read.
    Unknown,
}

/// What happened to commands for a session of this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    Taken,
    /// No such session (any more).
    Gone,
    /// The session did not take them in time.
    Busy,
}

/// The body of a POST to `/emulation`: JSON, or Protobuf from a Protobuf
/// client (`Content-Type: application/octet-stream`).
#[derive(Debug, Deserialize)]
struct EmulationRequest {
    session: String,
    node: String,
    /// The client's commands, as it would write them to a WebSocket.
    #[serde(deserialize_with = "text_bytes")]
    data: Bytes,
}

fn text_bytes<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
    String::deserialize(deserializer).map(Bytes::from)
}

impl EmulationRequest {
    fn parse(headers: &HeaderMap, body: &[u8]) -> Result<(Self, bool), &'static str> {
        match super::protobuf::posted(headers) {
            true => match super::protobuf::emulation_request(body) {
                Ok((session, node, data)) => Ok((Self { session, node, data }, true)),
                Err(_) => Err("a Protobuf emulation request is an EmulationRequest message"),
            },
            false => match serde_json::from_slice(body) {
                Ok(request) => Ok((request, false)),
                Err(_) => Err("an emulation request is JSON: {\"session\": …, \"node\": …, \"data\": …}"),
            },
        }
    }
}

impl Emulation {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            sessions: Mutex::default(),
            known_nodes: Mutex::default(),
            relays_waiting: Arc::new(tokio::sync::Semaphore::new(RELAYS_WAITING)),
            signer: Signer::new(),
            relays: KeyedRates::new(RELAY_RATE),
        })
    }

    /// The text of a session's key, as its connect reply gives it.
    pub(crate) fn key_text(&self, key: &Key) -> String {
        self.signer.text(key)
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashSet<Poster>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new session's key and its inbound commands, starting with
    /// `first` (what opened the stream). The session is listed until its
    /// end of the inbox is dropped.
    pub(crate) fn open(self: &Arc<Self>, first: Bytes, protobuf: bool) -> (Key, Posted) {
        let key = Key::from(rand::random::<u128>());
        let (poster, inbound) = inbox(self.clone(), key, protobuf);
        // The inbox is new and empty: the first batch always fits.
        let _ = poster.try_post(first);
        self.table().insert(poster);
        (key, inbound)
    }

    /// Unlists the session of `key` (its stream ended).
    pub(crate) fn forget(&self, key: &Key) {
        self.table().remove(key);
    }

    /// How many emulated sessions the node holds.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.table().len()
    }

    /// The inbox of the session whose key is `text`, if the node has it.
    fn inbox(&self, text: &str) -> Option<Poster> {
        let key = SessionKey::parse(text)?.key;
        self.table().get(&key).cloned()
    }

    async fn deliver(&self, key: &str, data: Bytes) -> Delivery {
        let Some(inbox) = self.inbox(key) else { return Delivery::Gone };
        match inbox.post(data, DELIVERY_WAIT).await {
            Ok(()) => Delivery::Taken,
            Err(NotTaken::Ended) => Delivery::Gone,
            Err(NotTaken::Busy) => Delivery::Busy,
        }
    }

    /// Whether `node` is a live node of the cluster, as last read, and
    /// with which public key; a node not in the list has the list read
    /// again (at most every [`NODES_REREAD`]). A list that cannot be read
    /// says nothing: a relay is a message to every node, not to be sent on
    /// a guess.
    async fn listed(&self, hub: &Hub, node: &str) -> Listed {
        {
            let mut known = self.known_nodes.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(relay_key) = known.keys.get(node) {
                return Listed::Yes { relay_key: relay_key.clone() };
            }
            if known.read_at.is_some_and(|at| at.elapsed() < NODES_REREAD) {
                return Listed::No;
            }
            known.read_at = Some(Instant::now());
        }
        let Ok(nodes) = hub.registered_nodes().await else { return Listed::Unknown };
        let keys: HashMap<String, Option<RelayKey>> = nodes
            .into_iter()
            .map(|node| (node.id.as_str().to_owned(), node.relay_key.as_deref().map(RelayKey::parse)))
            .collect();
        let listed = match keys.get(node) {
            Some(relay_key) => Listed::Yes { relay_key: relay_key.clone() },
            None => Listed::No,
        };
        self.known_nodes.lock().unwrap_or_else(|e| e.into_inner()).keys = keys;
        listed
    }

    /// Answers a POST to `/emulation`.
    pub(crate) async fn handle(
        &self,
        hub: &Hub,
        headers: &HeaderMap,
        body: axum::body::Body,
        limits: BodyLimits,
    ) -> Response {
        let bytes = match body::read(headers, body, limits).await {
            Ok(bytes) => bytes,
            Err(error) => return (error.status(), error.to_string()).into_response(),
        };
        let (request, protobuf) = match EmulationRequest::parse(headers, &bytes) {
            Ok(parsed) => parsed,
            Err(message) => {
                tracing::debug!("malformed emulation request");
                return (StatusCode::BAD_REQUEST, message).into_response();
            }
        };
        let Some(session) = SessionKey::parse(&request.session) else {
            tracing::debug!("emulation request with a malformed session key");
            return (StatusCode::BAD_REQUEST, "the session key is not one a connect reply gave").into_response();
        };
        let data = request.data;
        if request.node == hub.node().as_str() {
            return match self.deliver(&request.session, data).await {
                Delivery::Taken | Delivery::Gone => StatusCode::NO_CONTENT.into_response(),
                Delivery::Busy => {
                    tracing::info!("an emulated session did not take its commands in time");
                    (StatusCode::SERVICE_UNAVAILABLE, "the session is not taking commands; reconnect").into_response()
                }
            };
        }
        match self.listed(hub, &request.node).await {
            Listed::Yes { relay_key: Some(public) } if session.given_by(&public) => {
                if self.relays.take(&session.key, Instant::now()) != Verdict::Allowed {
                    tracing::debug!("emulated commands not relayed: their session posts faster than relays are made");
                    let message = "too many requests relayed for this session; slow down";
                    return (StatusCode::TOO_MANY_REQUESTS, message).into_response();
                }
            }
            Listed::Yes { relay_key: None } => {}
            Listed::Yes { .. } => {
                tracing::debug!("emulated commands not relayed: the session key is not one the named node gave");
                return (StatusCode::BAD_REQUEST, "the session key is not one that node gave").into_response();
            }
            Listed::No => return (StatusCode::NOT_FOUND, "no such node in the cluster; reconnect").into_response(),
            Listed::Unknown => {
                tracing::warn!("emulated commands not relayed: the cluster's nodes cannot be read");
                let message = "the cluster's nodes cannot be read to relay the commands; retry";
                return (StatusCode::SERVICE_UNAVAILABLE, message).into_response();
            }
        }
        let data = match protobuf {
            true => base64::engine::general_purpose::STANDARD.encode(&data),
            false => match String::from_utf8(data.to_vec()) {
                Ok(text) => text,
                Err(_) => return (StatusCode::BAD_REQUEST, "emulation data must be text").into_response(),
            },
        };
        let relay = Control::Relay { to: NodeId::new(&request.node), session: request.session, data };
        match hub.send_control(relay).await {
            Ok(()) => StatusCode::NO_CONTENT.into_response(),
            Err(error) => {
                tracing::warn!(%error, "could not relay emulated commands to their node");
                (StatusCode::SERVICE_UNAVAILABLE, "the engine cannot reach the session's node; retry").into_response()
            }
        }
    }
}

impl SessionRelay for Emulation {
    fn relay_key(&self) -> Option<String> {
        Some(self.signer.public())
    }

    fn deliver(&self, session: String, data: String) {
        let Some(inbox) = self.inbox(&session) else { return };
        let data = match inbox.protobuf() {
            true => match base64::engine::general_purpose::STANDARD.decode(&data) {
                Ok(bytes) => Bytes::from(bytes),
                Err(_) => return tracing::info!("relayed Protobuf commands that are not base64; dropped"),
            },
            false => Bytes::from(data),
        };
        match inbox.try_post(data.clone()) {
            Ok(()) => return,
            Err(NotTaken::Ended) => return tracing::debug!("relayed commands for an emulated session that has ended"),
            Err(NotTaken::Busy) => {}
        }
        let Ok(place) = self.relays_waiting.clone().try_acquire_owned() else {
            return tracing::warn!(
                waiting = RELAYS_WAITING,
                "relayed commands for an emulated session dropped: its session has no room and too many relays wait"
            );
        };
        tokio::spawn(async move {
            match inbox.post(data, DELIVERY_WAIT).await {
                Ok(()) => {}
                Err(NotTaken::Busy) => {
                    tracing::info!("relayed commands for an emulated session were not taken in time; dropped")
                }
                Err(NotTaken::Ended) => tracing::debug!("relayed commands for an emulated session that has ended"),
            }
            drop(place);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::task::Poll;

    use herald_core::{ChannelRules, HubConfig};
    use herald_engine::{Engine, EngineError};

    use super::*;

    #[tokio::test]
    async fn commands_reach_the_session_with_the_key_and_the_key_is_gone_with_the_session() {
        let emulation = Emulation::new();
        let (key, mut inbound) = emulation.open(Bytes::from_static(b"connect"), false);
        let key = key.to_string();
        assert_eq!(key.len(), 32);
        assert_eq!(inbound.recv().await, "connect");
        assert_eq!(emulation.deliver(&key, Bytes::from_static(b"ping")).await, Delivery::Taken);
        assert_eq!(inbound.recv().await, "ping");
        assert_eq!(emulation.deliver("0123", Bytes::new()).await, Delivery::Gone, "a guessed key reaches nothing");
        drop(inbound);
        assert_eq!(emulation.len(), 0);
        assert_eq!(emulation.deliver(&key, Bytes::new()).await, Delivery::Gone);
    }

    #[test]
    fn a_key_is_taken_only_as_the_connect_reply_spells_it() {
        let parse = |text: &str| SessionKey::parse(text).map(|session| session.key);
        let key = 0x1f1f_1f1f_1f1f_1f1f_1f1f_1f1f_1f1f_1f1f;
        assert_eq!(parse(&"1f".repeat(16)), Some(Key::from(key)));
        assert_eq!(Key::from(key).to_string(), format!("{key:032x}"), "its text is the number's");
        assert_eq!(Key::from(5).to_string(), format!("{:032x}", 5), "with its leading zeros");
        assert_eq!(parse(&"1F".repeat(16)), None, "upper case");
        assert_eq!(parse(&format!("+{}", "1".repeat(31))), None, "a sign");
        assert_eq!(parse("1f1f"), None, "short");
        assert_eq!(parse(&"1".repeat(33)), None, "long");
        assert_eq!(parse(""), None);
        let signed = Emulation::new().key_text(&Key::from(key));
        assert_eq!(parse(&signed), Some(Key::from(key)), "a signed key files under its number");
    }

    #[tokio::test]
    async fn keys_differ_between_sessions() {
        let emulation = Emulation::new();
        let (a, _held_a) = emulation.open(Bytes::new(), false);
        let (b, _held_b) = emulation.open(Bytes::new(), false);
        assert_ne!(a, b);
        assert_eq!(emulation.len(), 2);
    }

    #[tokio::test]
    async fn relayed_batches_a_session_has_no_room_for_wait_only_while_few_do() {
        let emulation = Emulation::new();
        let (key, mut inbound) = emulation.open(Bytes::from_static(b"0"), false);
        let posted = crate::transport::posted::CAPACITY + RELAYS_WAITING + 10;
        for n in 1..posted {
            SessionRelay::deliver(&*emulation, key.to_string(), n.to_string());
        }
        assert_eq!(emulation.relays_waiting.available_permits(), 0, "every place taken");
        let mut taken = Vec::new();
        while taken.len() < crate::transport::posted::CAPACITY + RELAYS_WAITING {
            taken.push(String::from_utf8(inbound.recv().await.to_vec()).unwrap());
        }
        while emulation.relays_waiting.available_permits() < RELAYS_WAITING {
            tokio::task::yield_now().await;
        }
        let more = std::future::poll_fn(|cx| Poll::Ready(inbound.poll_recv(cx).is_ready())).await;
        assert!(!more, "the batches beyond the places were dropped, not queued");
        let first: Vec<String> = (0..crate::transport::posted::CAPACITY).map(|n| n.to_string()).collect();
        assert_eq!(taken[..first.len()], first[..], "the queue's, in order");
    }

    #[tokio::test]
    async fn a_request_with_a_key_no_node_could_have_made_is_refused_before_it_is_relayed() {
        let hub = Hub::new(HubConfig::new(NodeId::new("n1"), ChannelRules::default()), Engine::memory());
        hub.start().await.unwrap();
        let emulation = Emulation::new();
        let limits = BodyLimits { max_size: 65536, timeout: Duration::from_secs(5) };
        for (session, node, status) in [
            ("x", "n2", StatusCode::BAD_REQUEST),
            ("x", "n1", StatusCode::BAD_REQUEST),
            (&*"1f".repeat(16), "n2", StatusCode::NOT_FOUND),
        ] {
            let body = serde_json::json!({"session": session, "node": node, "data": "{}"}).to_string();
            let answer = emulation.handle(&hub, &HeaderMap::new(), axum::body::Body::from(body), limits).await;
            assert_eq!(answer.status(), status, "{session} on {node}");
        }
    }

    #[tokio::test]
    async fn a_node_the_cluster_does_not_know_is_not_known() {
        let hub = Hub::new(HubConfig::new(NodeId::new("n1"), ChannelRules::default()), Engine::memory());
        hub.start().await.unwrap();
        let emulation = Emulation::new();
        assert_eq!(emulation.listed(&hub, "elsewhere").await, Listed::No);
        assert_eq!(emulation.listed(&hub, "n1-twin").await, Listed::No, "not read again within a second");
    }

    /// A node of the cluster, registered with the public key `relay_key`.
    async fn register(hub: &Hub, id: &str, relay_key: Option<String>) {
        let info = herald_engine::NodeInfo {
            id: NodeId::new(id),
            name: id.to_owned(),
            updated_at_ms: 0,
            version: "test".into(),
            num_clients: 0,
            num_users: 0,
            num_channels: 0,
            num_subscriptions: 0,
            uptime: 0,
            num_publications: 0,
            num_deliveries: 0,
            relay_key,
        };
        hub.engine().nodes().register_node(&info, Duration::from_secs(60)).await.unwrap();
    }

    #[tokio::test]
    async fn commands_are_relayed_only_with_a_key_the_named_node_signed() {
        let hub = Hub::new(HubConfig::new(NodeId::new("n1"), ChannelRules::default()), Engine::memory());
        hub.start().await.unwrap();
        let (here, there) = (Emulation::new(), Emulation::new());
        register(&hub, "n2", there.relay_key()).await;
        register(&hub, "n3-older", None).await;
        let limits = BodyLimits { max_size: 65536, timeout: Duration::from_secs(5) };
        let unsigned = Key::from(9).to_string();
        for (session, node, status, why) in [
            (there.key_text(&Key::from(9)), "n2", StatusCode::NO_CONTENT, "n2's own key: relayed"),
            (here.key_text(&Key::from(9)), "n2", StatusCode::BAD_REQUEST, "signed by another node"),
            (unsigned.clone(), "n2", StatusCode::BAD_REQUEST, "unsigned, for a node that signs"),
            (unsigned, "n3-older", StatusCode::NO_CONTENT, "unsigned, for a node older than signed keys"),
        ] {
            let body = serde_json::json!({"session": session, "node": node, "data": "{}"}).to_string();
            let answer = here.handle(&hub, &HeaderMap::new(), axum::body::Body::from(body), limits).await;
            assert_eq!(answer.status(), status, "{why}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_posting_far_faster_than_a_client_does_has_its_relays_refused() {
        let hub = Hub::new(HubConfig::new(NodeId::new("n1"), ChannelRules::default()), Engine::memory());
        hub.start().await.unwrap();
        let (here, there) = (Emulation::new(), Emulation::new());
        register(&hub, "n2", there.relay_key()).await;
        let limits = BodyLimits { max_size: 65536, timeout: Duration::from_secs(5) };
        let headers = HeaderMap::new();
        let post = |session: String| {
            let body = serde_json::json!({"session": session, "node": "n2", "data": "{}"}).to_string();
            here.handle(&hub, &headers, axum::body::Body::from(body), limits)
        };
        let mut statuses = Vec::new();
        for _ in 0..=RELAY_RATE.burst {
            statuses.push(post(there.key_text(&Key::from(1))).await.status());
        }
        let relayed = statuses.iter().filter(|s| **s == StatusCode::NO_CONTENT).count();
        assert_eq!(relayed, usize::try_from(RELAY_RATE.burst).unwrap(), "a burst's worth");
        assert_eq!(statuses.last(), Some(&StatusCode::TOO_MANY_REQUESTS), "then refused");
        assert_eq!(
            post(there.key_text(&Key::from(2))).await.status(),
            StatusCode::NO_CONTENT,
            "another session is not"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            post(there.key_text(&Key::from(1))).await.status(),
            StatusCode::NO_CONTENT,
            "a pause brings it back"
        );
    }

    /// A node registry that cannot be read.
    #[derive(Debug)]
    struct Unreadable;

    #[async_trait::async_trait]
    impl herald_engine::NodeRegistry for Unreadable {
        async fn register_node(&self, _: &herald_engine::NodeInfo, _: Duration) -> Result<(), EngineError> {
            Ok(())
        }
        async fn nodes(&self) -> Result<Vec<herald_engine::NodeInfo>, EngineError> {
            Err(EngineError::Unavailable("the registry is away".into()))
        }
    }

    #[tokio::test]
    async fn commands_for_another_node_are_not_relayed_while_the_cluster_cannot_be_read() {
        let memory = Arc::new(herald_engine::MemoryEngine::new());
        let engine = Engine::from_parts(
            "unreadable",
            memory.clone(),
            memory.clone(),
            memory.clone(),
            memory,
            Arc::new(Unreadable),
        );
        let hub = Hub::new(HubConfig::new(NodeId::new("n1"), ChannelRules::default()), engine);
        hub.start().await.unwrap();
        let emulation = Emulation::new();
        let limits = BodyLimits { max_size: 1 << 16, timeout: Duration::from_secs(5) };
        let body = serde_json::json!({"session": "1f".repeat(16), "node": "n2", "data": "{}"}).to_string();
        let answer = emulation.handle(&hub, &HeaderMap::new(), axum::body::Body::from(body), limits).await;
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE, "not relayed to every node on a guess");
    }
}
