//! Herald's configuration: one typed tree, loaded from a TOML file, then
//! `HERALD_*` environment variables, then command-line flags, each layer
//! overriding the one before (see [`load`]).
//!
//! The doc comments on these structs are the user documentation of each
//! setting; `herald config init` writes a commented starter file.

pub(crate) mod endpoint;
mod keys;
mod load;
pub mod template;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use herald_core::NamespaceOptions;

pub use endpoint::HttpEndpoint;
pub(crate) use keys::pem_text;
pub use keys::TokenKeys;
pub(crate) use load::type_toml;
pub use load::{load, load_for_serving, ConfigErrors, Sources};
pub use template::starter_config;

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where Herald listens.
    pub http: HttpConfig,
    /// Where cross-node state and broadcast live.
    pub engine: EngineConfig,
    /// Client connections: authentication, heartbeats, limits.
    pub client: ClientConfig,
    /// The server HTTP API.
    pub api: ApiConfig,
    /// Channel namespaces and their permissions.
    pub channel: ChannelConfig,
    /// The Pusher protocol front-end and its apps.
    pub pusher: PusherConfig,
    /// Logging.
    pub log: LogConfig,
    /// This node.
    pub node: NodeConfig,
    /// The admin web UI (`/admin`); off unless a password is set.
    pub admin: AdminConfig,
    /// The application's HTTP endpoints that client events are proxied to,
    /// by name (`[proxies.<name>]`); see `client.connect_proxy` and the
    /// namespaces' `subscribe_proxy`, `publish_proxy`, `sub_refresh_proxy`.
    pub proxies: BTreeMap<String, ProxyConfig>,
    /// Where the hub's events (occupancy, presence, connections) are
    /// POSTed, for both protocols (`[[webhooks]]`).
    pub webhooks: Vec<HubWebhookConfig>,
}

/// One target of the hub's events webhooks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubWebhookConfig {
    /// The `http(s)://host[:port]/path` events are POSTed to.
    pub url: String,
    /// Signs each request: the hex HMAC-SHA256 of its body, in
    /// `X-Herald-Signature`.
    pub secret: Secret,
    /// The events it wants (`channel_occupied`, `channel_vacated`,
    /// `user_joined`, `user_left`, `connected`, `disconnected`); empty for
    /// all.
    #[serde(default)]
    pub events: Vec<String>,
    /// Gather the events of up to 50 ms into one request.
    #[serde(default)]
    pub batch: bool,
}

/// One backend endpoint events are proxied to (Centrifugo's proxy format).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// The `http(s)://host[:port]/path` every event is POSTed to.
    pub endpoint: String,
    /// How long the backend has to answer.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Headers of the client's HTTP request passed on (for example
    /// `Cookie`, `Authorization`, `Origin`); no other header is.
    pub http_headers: Vec<String>,
    /// Headers added to every request (for example a shared secret).
    pub static_headers: BTreeMap<String, Secret>,
    /// Requests carry the connection's `meta` (its connection token's, or
    /// the connect proxy's), as Centrifugo's option of that name.
    pub include_connection_meta: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            timeout: Duration::from_secs(1),
            http_headers: Vec::new(),
            static_headers: BTreeMap::new(),
            include_connection_meta: false,
        }
    }
}

/// The admin web UI at `/admin`: served only when `password` is set, on
/// `http.internal_port` when there is one, else on the public port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// What an operator types to log in (at least 12 characters).
    pub password: Option<Secret>,
    /// How long a login lasts.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { password: None, session_ttl: Duration::from_secs(8 * 3600) }
    }
}

/// This node, as operators know it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Its name in `/api/info` (default: the host name).
    pub name: Option<String>,
    /// After a reload (SIGHUP) replaces `api.key` or the client token keys,
    /// how long the previous ones are still accepted.
    #[serde(with = "humantime_serde")]
    pub key_overlap: Duration,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self { name: None, key_overlap: Duration::from_secs(600) }
    }
}

impl NodeConfig {
    /// The configured name, else the host name, else `fallback`.
    pub fn name_or(&self, fallback: &str) -> String {
        self.name.clone().or_else(host_name).unwrap_or_else(|| fallback.to_owned())
    }
}

/// The machine's host name, as Linux tells it (or `$HOSTNAME`).
fn host_name() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|path| std::fs::read_to_string(path).ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
}

/// The HTTP listener (WebSocket endpoint, server API, health).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// The address to bind, `0.0.0.0` for every interface.
    pub address: IpAddr,
    /// The TCP port; 0 picks a free one.
    pub port: u16,
    /// After the drain window, how long a shutdown waits for what is left
    /// to close.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// How long a client may take to send a request's headers (a WebSocket
    /// upgrade's included), how long an idle keep-alive connection may wait
    /// for its next request, and how long an HTTP response may wait for its
    /// client to read it, before the connection is closed.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// How long a client may take to send a request's body (read only
    /// after the request is authenticated).
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// The largest request body accepted, in bytes (else 413).
    pub max_body_size: usize,
    /// Open connections this node accepts in all, WebSockets and HTTP
    /// (0 = no limit); above it new ones get 503.
    pub max_connections: usize,
    /// Open connections one source address may hold (0 = no limit); above it
    /// new ones get 429. An IPv6 /64 counts as one address. Behind a proxy
    /// every client shares its address.
    pub max_connections_per_ip: usize,
    /// New connections per second one source address may open, as a token
    /// bucket with as much burst (0 = no limit); above it they get 429.
    pub connection_rate_per_ip: u32,
    /// The web pages that may open WebSockets (both protocols), as origins
    /// such as `https://app.example.com`; `*` stands for any run of
    /// characters (`https://*.example.com`). Empty: any page. Handshakes
    /// without an Origin (not from a browser) and from the node's own pages
    /// are always allowed. Others get 403.
    pub allowed_origins: Vec<String>,
    /// The most unsent bytes the kernel keeps for one connection (Linux's
    /// `TCP_NOTSENT_LOWAT`; 0 leaves the kernel's default, which lets a
    /// client that stops reading make it hold megabytes). With it, such a
    /// client's writes block soon, and `client.write_timeout` and
    /// `client.queue_max_bytes` govern it.
    pub max_unsent_bytes: u32,
    /// On Linux, a fanout's writes to its subscribers' sockets go to the
    /// kernel in batches, one system call each, through io_uring (where
    /// the kernel allows it; else one `write` each, as with `false`).
    pub io_uring: bool,
    /// A second port for operators: `/metrics`, `/health`, `/ready` and
    /// the admin UI are served there (and `/metrics` and the admin UI no
    /// longer on `port`), to be kept off the public network.
    pub internal_port: Option<u16>,
    /// On SIGTERM (or the API's `drain`), how long the node takes to close
    /// its connections: evenly over this window, so that their clients
    /// reconnect to other nodes a few at a time rather than all at once.
    #[serde(with = "humantime_serde")]
    pub drain_window: Duration,
    /// The certificate chain (PEM text, or a path to a PEM file) to serve
    /// `https://` and `wss://` with; set with `tls_key`.
    pub tls_cert: Option<String>,
    /// The certificate's private key (PEM text, or a path).
    pub tls_key: Option<Secret>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            address: IpAddr::from([0, 0, 0, 0]),
            port: 8000,
            shutdown_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_body_size: 1024 * 1024,
            max_connections: 0,
            max_connections_per_ip: 0,
            connection_rate_per_ip: 0,
            allowed_origins: Vec::new(),
            max_unsent_bytes: 128 * 1024,
            io_uring: true,
            internal_port: None,
            drain_window: Duration::from_secs(5),
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// The engine: `type = "memory"` (one node, the default), `"redis"`,
/// `"redis_cluster"` or `"nats"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum EngineConfig {
    /// Everything in this process; a single node.
    Memory(MemoryEngineConfig),
    /// Nodes sharing one Redis form a cluster.
    Redis(RedisEngineConfig),
    /// Nodes sharing a Redis Cluster (Redis 7+, sharded pub/sub) form a cluster.
    RedisCluster(RedisClusterEngineConfig),
    /// Nodes sharing a NATS server or cluster (with JetStream) form a cluster.
    Nats(NatsEngineConfig),
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig::Memory(MemoryEngineConfig::default())
    }
}

/// `[engine] type = "memory"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryEngineConfig {
    /// History streams kept at most. A client can make the node keep one
    /// for a channel just by reading its position; past this, the streams
    /// of channels nobody on the node is subscribed to are evicted, the
    /// longest untouched first (their readers then get `recovered: false`).
    pub max_streams: usize,
}

impl Default for MemoryEngineConfig {
    fn default() -> Self {
        Self { max_streams: 100_000 }
    }
}

/// `[engine] type = "redis"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisEngineConfig {
    /// `redis://host:port[/db]` (or `rediss://` for TLS; credentials as
    /// `redis://:password@host:port`).
    pub address: String,
    /// Several independent Redis instances instead of `address`: each
    /// channel lives on one of them, chosen by consistent (rendezvous)
    /// hashing of its name. Every node must list the same instances.
    pub shards: Vec<String>,
    /// Prefix of every key and pub/sub channel, so several Herald clusters
    /// can share one Redis.
    pub prefix: String,
    /// How long one Redis command may take before it fails.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Pub/sub connections each node spreads its channels over, so one hot
    /// channel does not hold up the others.
    pub subscriber_connections: usize,
    /// Find the master through these Redis Sentinels (`redis://host:port`)
    /// instead of `address`, and follow it when it fails over.
    pub sentinels: Vec<String>,
    /// The name the sentinels monitor the master under.
    pub master_name: Option<String>,
}

impl Default for RedisEngineConfig {
    fn default() -> Self {
        Self {
            address: "redis://127.0.0.1:6379".into(),
            sentinels: Vec::new(),
            master_name: None,
            shards: Vec::new(),
            prefix: "herald".into(),
            command_timeout: Duration::from_secs(5),
            subscriber_connections: 4,
        }
    }
}

/// `[engine] type = "redis_cluster"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisClusterEngineConfig {
    /// Some of the cluster's nodes, `redis://host:port`; the rest are discovered.
    pub addresses: Vec<String>,
    /// Prefix of every key and pub/sub channel.
    pub prefix: String,
    /// How long one Redis command may take before it fails.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
}

impl Default for RedisClusterEngineConfig {
    fn default() -> Self {
        Self {
            addresses: vec!["redis://127.0.0.1:7000".into()],
            prefix: "herald".into(),
            command_timeout: Duration::from_secs(5),
        }
    }
}

/// `[engine] type = "nats"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsEngineConfig {
    /// Servers of the NATS cluster, `nats://host:port` (`tls://` for TLS;
    /// credentials as `nats://user:password@host:port`).
    pub addresses: Vec<String>,
    /// First tokens of every subject and of the JetStream streams' names,
    /// so several Herald clusters can share one NATS.
    pub prefix: String,
    /// How long one request to NATS may take before it fails.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Copies JetStream keeps of each of Herald's streams: 1 on a single
    /// server, 3 on a three-server cluster to survive losing one.
    pub replicas: usize,
    /// `"file"` (survives a NATS restart) or `"memory"` (faster; history,
    /// presence and positions are lost when NATS restarts).
    pub storage: NatsStorage,
    /// Keep presence, occupancy and the node registry in this Redis
    /// (`redis://host:port`) instead of JetStream; publications and history
    /// stay on NATS.
    pub redis_address: Option<String>,
}

/// Where JetStream keeps Herald's streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NatsStorage {
    /// On disk.
    File,
    /// In memory.
    Memory,
}

impl Default for NatsEngineConfig {
    fn default() -> Self {
        Self {
            addresses: vec!["nats://127.0.0.1:4222".into()],
            prefix: "herald".into(),
            command_timeout: Duration::from_secs(5),
            replicas: 1,
            storage: NatsStorage::File,
            redis_address: None,
        }
    }
}

/// Client connections.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    /// The proxy (`[proxies.<name>]`) that authenticates connections made
    /// without a token.
    pub connect_proxy: Option<String>,
    /// The proxy asked to extend connections the connect proxy made
    /// expiring.
    pub refresh_proxy: Option<String>,
    /// The proxy that answers clients' RPC calls.
    pub rpc_proxy: Option<String>,
    /// The proxy that receives clients' `send` messages.
    pub send_proxy: Option<String>,
    /// Secret for HS256/HS384/HS512 connection and subscription tokens.
    pub token_hmac_secret: Option<Secret>,
    /// Public key (PEM text, or a path to a PEM file) for RS256/RS384/RS512 tokens.
    pub token_rsa_public_key: Option<String>,
    /// Public key (PEM text, or a path to a PEM file) for ES256/ES384 tokens.
    pub token_ecdsa_public_key: Option<String>,
    /// Public key (PEM text, or a path to a PEM file) for EdDSA (Ed25519) tokens.
    pub token_ed25519_public_key: Option<String>,
    /// A JWKS URL (`https://…/.well-known/jwks.json`): tokens whose header
    /// names a `kid` are verified with that key of the set. Keys are
    /// fetched at start, every `token_jwks_refresh`, and again (at most once
    /// every 10 s) when a token names a key not in the set.
    pub token_jwks_url: Option<String>,
    /// How often the JWKS is fetched again (a key removed from it stops
    /// being accepted then).
    #[serde(with = "humantime_serde")]
    pub token_jwks_refresh: Duration,
    /// A CA certificate (PEM text, or a path to a PEM file) to trust for
    /// the JWKS URL, besides the system's.
    pub token_jwks_ca: Option<String>,
    /// When set, tokens must carry this `aud` claim.
    pub token_audience: Option<String>,
    /// When set, tokens must carry this `iss` claim.
    pub token_issuer: Option<String>,
    /// Accept connections without a token, as anonymous users.
    pub allow_anonymous: bool,
    /// How often the server pings each connection.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// How long a client may take to answer a ping before it is disconnected (3012).
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// How long a new connection may take to send its connect command (else 3502).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Grace after a connection token expires before the connection is closed (3005).
    #[serde(with = "humantime_serde")]
    pub expired_close_delay: Duration,
    /// Grace after a subscription token expires before the subscription ends (2501).
    #[serde(with = "humantime_serde")]
    pub expired_sub_close_delay: Duration,
    /// The largest WebSocket message a client may send, in bytes (else close 1009).
    pub max_message_size: usize,
    /// Bytes that may wait in one connection's outbound queue before it is
    /// disconnected as slow (3008).
    pub queue_max_bytes: usize,
    /// How long one write to a client may block before the client is
    /// disconnected as slow (3008).
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// How many channels one connection may be subscribed to (0 = no limit).
    pub max_channels: usize,
    /// Commands per second one connection may send (pings and pongs aside;
    /// 0 = no limit). Over it a command is refused (Centrifuge error 111,
    /// Pusher `pusher:error` 4301); a client that keeps sending is
    /// disconnected (3013, Pusher 4301).
    pub command_rate: u32,
    /// Commands one connection may send at once after a pause (the burst of
    /// `command_rate`); a reconnecting client resubscribes in one burst.
    pub command_burst: u32,
    /// Commands per second one user may send, all its connections on this
    /// node together (0 = no limit). Anonymous connections are not counted.
    pub user_command_rate: u32,
    /// Commands one user may send at once after a pause.
    pub user_command_burst: u32,
    /// Subscriptions per second one connection may make (0 = no limit):
    /// how fast it may make the node take up channels.
    pub subscribe_rate: u32,
    /// Subscriptions one connection may make at once (a reconnecting client
    /// subscribes to all its channels at once).
    pub subscribe_burst: u32,
    /// How often a node refreshes the presence entries of its connections.
    #[serde(with = "humantime_serde")]
    pub presence_update_interval: Duration,
    /// How long a presence entry outlives its last refresh: the bound on how
    /// long a client whose node died still shows as present.
    #[serde(with = "humantime_serde")]
    pub presence_ttl: Duration,
    /// How often a node checks its positioned subscriptions against their
    /// streams: one that missed publications (and saw nothing after them
    /// to show it) is ended with 2500 and recovers. "0s" never checks.
    #[serde(with = "humantime_serde")]
    pub position_check_interval: Duration,
    /// The Centrifuge transports served (all by default): `websocket`,
    /// `http_stream` and `sse` (with `/emulation`, centrifuge-js's
    /// fallbacks), and the uni-directional `uni_websocket`, `uni_sse` and
    /// `uni_http_stream`.
    pub transports: Vec<TransportName>,
}

/// A Centrifuge transport, by its endpoint's name (`/connection/<name>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransportName {
    /// `/connection/websocket`.
    Websocket,
    /// `/connection/http_stream`, commands through `/emulation`.
    HttpStream,
    /// `/connection/sse`, commands through `/emulation`.
    Sse,
    /// `/connection/uni_websocket`.
    UniWebsocket,
    /// `/connection/uni_sse`.
    UniSse,
    /// `/connection/uni_http_stream`.
    UniHttpStream,
}

impl TransportName {
    /// Every transport, as served by default.
    pub const ALL: [TransportName; 6] = [
        TransportName::Websocket,
        TransportName::HttpStream,
        TransportName::Sse,
        TransportName::UniWebsocket,
        TransportName::UniSse,
        TransportName::UniHttpStream,
    ];
}

impl ClientConfig {
    /// Whether connection tokens can be verified: an HMAC secret, a
    /// public key, or a JWKS to fetch keys from.
    pub fn has_token_key(&self) -> bool {
        self.token_hmac_secret.is_some()
            || self.token_rsa_public_key.is_some()
            || self.token_ecdsa_public_key.is_some()
            || self.token_ed25519_public_key.is_some()
            || self.token_jwks_url.is_some()
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connect_proxy: None,
            refresh_proxy: None,
            rpc_proxy: None,
            send_proxy: None,
            token_hmac_secret: None,
            token_rsa_public_key: None,
            token_ecdsa_public_key: None,
            token_ed25519_public_key: None,
            token_jwks_url: None,
            token_jwks_refresh: Duration::from_secs(600),
            token_jwks_ca: None,
            token_audience: None,
            token_issuer: None,
            allow_anonymous: false,
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(8),
            connect_timeout: Duration::from_secs(10),
            expired_close_delay: Duration::from_secs(25),
            expired_sub_close_delay: Duration::from_secs(25),
            max_message_size: 64 * 1024,
            queue_max_bytes: 1024 * 1024,
            write_timeout: Duration::from_secs(10),
            max_channels: 128,
            command_rate: 100,
            command_burst: 500,
            user_command_rate: 0,
            user_command_burst: 0,
            subscribe_rate: 10,
            subscribe_burst: 128,
            presence_update_interval: Duration::from_secs(25),
            presence_ttl: Duration::from_secs(60),
            position_check_interval: Duration::from_secs(30),
            transports: TransportName::ALL.to_vec(),
        }
    }
}

/// The server HTTP API (`POST /api/<method>`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// The key callers send in `X-API-Key` (or `Authorization: apikey <key>`).
    pub key: Option<Secret>,
    /// Serve the API without a key. Only behind a trusted network boundary.
    pub insecure: bool,
    /// How long a publish's `idempotency_key` is remembered: a repeat inside
    /// this window returns the first result and publishes nothing.
    #[serde(with = "humantime_serde")]
    pub idempotency_window: Duration,
    /// The most commands one `batch` carries, and the most channels one
    /// `broadcast` publishes into (else error 107, in a 200 answer).
    pub max_batch: usize,
    /// How a refused call answers: `default`, with its error in a 200
    /// answer's body, or `transport`, with an HTTP status for its code
    /// (Centrifugo's `http_api.error_mode`; a call may ask for it alone
    /// with `X-Centrifugo-Error-Mode: transport`).
    pub error_mode: ApiErrorMode,
}

/// How the server API answers a call it refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiErrorMode {
    /// HTTP 200, the error in the body, as Centrifugo's API by default.
    #[default]
    Default,
    /// An HTTP status for the error's code, the error as the body.
    Transport,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            key: None,
            insecure: false,
            idempotency_window: Duration::from_secs(300),
            max_batch: 1000,
            error_mode: ApiErrorMode::Default,
        }
    }
}

/// Channel namespaces.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelConfig {
    /// Options for channels without a namespace (`news`).
    pub without_namespace: NamespaceOptions,
    /// Options per namespace: `[channel.namespaces.chat]` governs `chat:*`.
    /// A channel whose namespace is not listed here is unknown (error 102).
    pub namespaces: BTreeMap<String, NamespaceOptions>,
}

/// The Pusher Channels protocol (pusher-js, Laravel Echo, the Pusher server
/// SDKs): served at `/app/{key}` and `/apps/{id}/…` for each app listed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PusherConfig {
    /// How long a Pusher client may stay silent before it pings (sent to
    /// clients as `activity_timeout`); the server closes a connection silent
    /// for this long plus `pong_timeout` (4201).
    #[serde(with = "humantime_serde")]
    pub activity_timeout: Duration,
    /// How long the server waits for a pong after its own ping.
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// The apps: `[[pusher.apps]]` tables.
    pub apps: Vec<PusherApp>,
    /// A CA certificate (PEM text, or a path) to trust for `https://`
    /// webhook targets, besides the system's.
    pub webhook_ca: Option<String>,
}

impl Default for PusherConfig {
    fn default() -> Self {
        Self {
            activity_timeout: Duration::from_secs(120),
            pong_timeout: Duration::from_secs(30),
            apps: Vec::new(),
            webhook_ca: None,
        }
    }
}

impl PusherConfig {
    /// The TLS client for `https://` webhook targets; or what is wrong with
    /// `webhook_ca`.
    pub(crate) fn webhook_tls(&self) -> Result<tokio_rustls::TlsConnector, String> {
        let ca = self.webhook_ca.as_deref().map(|value| keys::pem_text("pusher.webhook_ca", value)).transpose()?;
        crate::http::client::connector(ca.as_deref()).map_err(|e| format!("pusher.webhook_ca: {e}"))
    }

    /// What is wrong with `webhook_ca`, if anything (without reading the
    /// system's CAs, as [`webhook_tls`](Self::webhook_tls) does).
    pub(crate) fn check_webhook_ca(&self) -> Result<(), String> {
        let Some(value) = self.webhook_ca.as_deref() else { return Ok(()) };
        let pem = keys::pem_text("pusher.webhook_ca", value)?;
        crate::http::client::check_ca(&pem).map_err(|e| format!("pusher.webhook_ca: {e}"))
    }
}

/// One Pusher app, with the credentials its clients and server SDK use.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PusherApp {
    /// The app id in HTTP API paths (`/apps/{id}/events`).
    pub id: String,
    /// The public key clients connect with (`/app/{key}`).
    pub key: String,
    /// The secret that signs channel authorizations, API calls and webhooks.
    pub secret: Secret,
    /// Clients may send `client-` events on private and presence channels.
    pub client_events: bool,
    /// Client events one connection may send per second (else error 4301).
    pub client_event_rate: u32,
    /// Concurrent connections of this app on one node (0 = no limit; over it, close 4004).
    pub max_connections: usize,
    /// The largest event `data`, in bytes, from clients and the HTTP API (else 413).
    pub max_event_size: usize,
    /// Members one presence channel may hold (else the subscription is refused).
    pub max_presence_members: usize,
    /// Puts this app's channels in a namespace (`shop` makes `orders` the
    /// hub channel `shop:orders`), so several apps do not share channels.
    /// Empty: the app's channels are the hub's channels without namespace,
    /// shared with Centrifuge clients. At most one app may leave it empty.
    pub namespace: String,
    /// Where this app's webhooks go: `[[pusher.apps.webhooks]]` tables.
    pub webhooks: Vec<WebhookTarget>,
    /// Tell subscribers of each non-presence channel how many subscribers
    /// it has (`pusher:subscription_count` in pusher-js) when that changes,
    /// and send the `subscription_count` webhook.
    pub subscription_count: bool,
}

impl Default for PusherApp {
    fn default() -> Self {
        Self {
            id: String::new(),
            key: String::new(),
            secret: Secret::new(""),
            client_events: false,
            client_event_rate: 10,
            max_connections: 0,
            max_event_size: 10 * 1024,
            max_presence_members: 100,
            namespace: String::new(),
            webhooks: Vec::new(),
            subscription_count: false,
        }
    }
}

/// A webhook endpoint of a Pusher app.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookTarget {
    /// An `http://` or `https://` URL that receives signed POSTs.
    pub url: String,
    /// Which events it receives: `channel_occupied`, `channel_vacated`,
    /// `member_added`, `member_removed`, `client_event`, `cache_miss`.
    /// Empty: all of them.
    pub events: Vec<String>,
    /// Several events per request (up to 100, gathered for up to 50 ms)
    /// instead of one.
    pub batch: bool,
}

/// The webhook events a target may ask for.
pub const WEBHOOK_EVENTS: [&str; 6] =
    ["channel_occupied", "channel_vacated", "member_added", "member_removed", "client_event", "cache_miss"];

/// Logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter, such as `info` or `herald_server=debug,info`.
    pub level: String,
    /// `text` for people, `json` for log pipelines.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { level: "info".into(), format: LogFormat::Text }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// A secret string: never printed by `Debug`, accepted from TOML strings or
/// numbers (an env var `HERALD_API__KEY=1234` is still a key).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Integer(i64),
        }
        Ok(match Raw::deserialize(deserializer)? {
            Raw::Text(s) => Secret(s),
            Raw::Integer(n) => Secret(n.to_string()),
        })
    }
}

/// `url` with whatever may be a credential hidden, for messages and logs:
/// backplane, webhook and proxy URLs may carry a password, and one that
/// is mistyped (the reason it is shown) still may. Everything up to the
/// last `@` after the scheme goes, and the whole query.
pub(crate) fn redacted(url: &str) -> String {
    let (url, query) = match url.split_once('?') {
        Some((url, _)) => (url, "?***"),
        None => (url, ""),
    };
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    match rest.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}***@{host}{query}"),
        None => format!("{scheme}{rest}{query}"),
    }
}

#[cfg(test)]
mod redaction_tests {
    #[test]
    fn credentials_in_backplane_urls_are_hidden() {
        assert_eq!(super::redacted("redis://:hunter2@10.0.0.1:6379/2"), "redis://***@10.0.0.1:6379/2");
        assert_eq!(super::redacted("nats://user:pw@nats:4222"), "nats://***@nats:4222");
        assert_eq!(super::redacted("nats://nats:4222"), "nats://nats:4222");
        assert_eq!(super::redacted("not a url"), "not a url");
    }

    #[test]
    fn credentials_in_mistyped_urls_and_queries_are_hidden_too() {
        assert_eq!(super::redacted("admin:s3cret@nats:4222"), "***@nats:4222");
        assert_eq!(super::redacted("redis//:pa/ss#w0rd@10.0.0.1:6379"), "***@10.0.0.1:6379");
        assert_eq!(super::redacted("10.0.0.1:6379?password=hunter2"), "10.0.0.1:6379?***");
        assert_eq!(super::redacted("htps://user:whpass@hooks.example/in"), "htps://***@hooks.example/in");
        assert_eq!(super::redacted("https://app.internal/hook?token=abc"), "https://app.internal/hook?***");
    }
}
