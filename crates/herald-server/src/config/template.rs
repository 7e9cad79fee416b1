//! The starter configuration `herald config init` writes.

use rand::Rng;

/// A commented configuration with freshly generated secrets.
pub fn starter_config() -> String {
    TEMPLATE
        .replace("{token_secret}", &random_secret())
        .replace("{api_key}", &random_secret())
        .replace("{pusher_secret}", &random_secret())
        .replace("{admin_password}", &random_secret())
        .replace("{webhook_secret}", &random_secret())
}

/// 32 random bytes, hex-encoded.
pub fn random_secret() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const TEMPLATE: &str = r#"# Herald configuration. Every setting can also be given as an environment
# variable (HERALD_<SECTION>__<KEY>, e.g. HERALD_HTTP__PORT=9000) or a flag
# (herald serve --set http.port=9000); flags win over variables, which win
# over this file. `herald config check herald.toml` lists every problem.

[http]
# Address and port for WebSockets (/connection/websocket), the server API
# (/api/<method>), /health, /ready and /metrics.
address = "0.0.0.0"
port = 8000
# On SIGTERM (or the API's `drain`), how long the node takes to close its
# connections, evenly, so that clients move to other nodes a few at a time.
drain_window = "5s"
# After that, how long shutdown waits for what is left to close.
shutdown_timeout = "10s"
# How long a client may take to send a request's headers (WebSocket upgrades
# included), an idle keep-alive connection may wait for its next request, and
# an HTTP response may wait for its client to read it.
handshake_timeout = "10s"
# How long a request body may take (read only once the request is
# authenticated), and how large it may be.
body_timeout = "10s"
max_body_size = 1048576
# Caps on connections (0 = none): in all, per source address, and new ones
# per second per source address. Behind a load balancer every client shares
# its address, so set the per-address ones only where clients connect directly.
# An IPv6 /64 counts as one address.
max_connections = 0
max_connections_per_ip = 0
connection_rate_per_ip = 0
# The web pages that may open WebSockets, e.g. ["https://app.example.com",
# "https://*.example.com"]. Empty allows any page: set it in production, or a
# page on another site can open connections from your users' browsers.
allowed_origins = []
# The most unsent bytes the kernel keeps for one connection (Linux; 0 = the
# kernel's default, which lets a client that stops reading pin megabytes).
max_unsent_bytes = 131072
# Write a publication's deliveries to sockets in batches, one system call
# each, through io_uring (Linux; used only where the kernel allows it).
io_uring = true
# Serve /metrics, /health, /ready and the admin UI on a port of their own,
# kept off the public network (else they are served on `port`).
# internal_port = 9000
# Serve https:// and wss:// with this certificate chain and key (PEM).
# tls_cert = "/etc/herald/fullchain.pem"
# tls_key = "/etc/herald/privkey.pem"

[engine]
# "memory": a single node, nothing to set up; optionally
#   max_streams = 100000           # history streams kept; past it, those of
#                                  # channels nobody here subscribes to go
# "redis": nodes sharing one Redis form a cluster; then also set
#   address = "redis://127.0.0.1:6379"
#   prefix = "herald"              # keys and pub/sub channels start with this
#   command_timeout = "5s"
#   subscriber_connections = 4     # pub/sub connections channels spread over
#   shards = ["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"]
#                                  # instead of address: channels spread over
#                                  # several Redis by consistent hashing
#   sentinels = ["redis://10.0.0.1:26379", "redis://10.0.0.2:26379"]
#   master_name = "mymaster"       # instead of address: the master Sentinel
#                                  # names, followed when it fails over
# "redis_cluster": nodes sharing a Redis Cluster (Redis 7+); then set
#   addresses = ["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"]
#   prefix = "herald"
#   command_timeout = "5s"
# "nats": nodes sharing a NATS server or cluster with JetStream (-js); then set
#   addresses = ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"]
#   prefix = "herald"              # subjects and stream names start with this
#   command_timeout = "5s"
#   replicas = 1                   # 3 on a three-server NATS cluster
#   storage = "file"               # or "memory": faster, lost on NATS restart
#   redis_address = "redis://127.0.0.1:6379"
#                                  # optional: presence, occupancy and the node
#                                  # registry in Redis instead of JetStream
type = "memory"

[client]
# Connection and subscription tokens are JWTs signed with this secret
# (HS256). Mint one for testing with `herald token --user 42`.
token_hmac_secret = "{token_secret}"
# Or verify RS256 / ES256 / EdDSA tokens with a public key (PEM text or file path):
# token_rsa_public_key = "/etc/herald/jwt-rsa.pem"
# token_ecdsa_public_key = "/etc/herald/jwt-ec.pem"
# token_ed25519_public_key = "/etc/herald/jwt-ed25519.pem"
# Or follow an identity provider's key set (tokens naming a `kid`):
# token_jwks_url = "https://auth.example.com/.well-known/jwks.json"
# token_jwks_refresh = "10m"
# token_audience = "my-app"
# token_issuer = "https://auth.example.com"
# Accept connections without a token, as anonymous users.
allow_anonymous = false
# Commands per second one connection may send, and at once after a pause
# (pings and pongs aside; 0 = no limit). Over it a command is refused (111);
# a client that keeps sending is disconnected (3013).
command_rate = 100
command_burst = 500
# Commands per second one user may send, all its connections on a node
# together (anonymous ones aside; 0 = no limit), and at once after a pause.
user_command_rate = 0
user_command_burst = 0
# Subscriptions per second one connection may make, and at once (a client
# that reconnects subscribes to all its channels at once). Over it a
# subscribe is refused (111, Pusher pusher:subscription_error 429).
subscribe_rate = 10
subscribe_burst = 128
# Server pings every ping_interval; a client that does not answer within
# pong_timeout is disconnected (code 3012).
ping_interval = "25s"
pong_timeout = "8s"
# A connection must send its connect command within this time (code 3502).
connect_timeout = "10s"
# Grace after a token expires before the connection (3005) or the
# subscription (2501) is ended.
expired_close_delay = "25s"
expired_sub_close_delay = "25s"
# Largest message a client may send, in bytes (larger: close code 1009).
max_message_size = 65536
# Outbound bytes that may queue for one connection before it is
# disconnected as slow (code 3008) and told to reconnect and recover.
queue_max_bytes = 1048576
# A write that blocks this long (the client stopped reading) disconnects the
# client as slow (code 3008).
write_timeout = "10s"
# Channels per connection (0 = no limit).
max_channels = 128
# Presence entries are refreshed every presence_update_interval and vanish
# presence_ttl after the last refresh (a client whose node died leaves
# presence within presence_ttl).
presence_update_interval = "25s"
presence_ttl = "60s"
# How often a node checks positioned subscriptions against their streams: one
# that missed publications (its node lost Redis for a moment) is ended with
# 2500 and its client recovers. "0s" never checks.
position_check_interval = "30s"
# Centrifuge transports served: WebSocket; HTTP-streaming and SSE with
# commands POSTed to /emulation (centrifuge-js's fallbacks where WebSocket
# is blocked); and uni-directional ones for clients that only listen.
transports = ["websocket", "http_stream", "sse", "uni_websocket", "uni_sse", "uni_http_stream"]

[api]
# Send as `X-API-Key: <key>` or `Authorization: apikey <key>`.
key = "{api_key}"
# A publish repeated with the same idempotency_key within this window
# returns the first result and is not delivered again.
idempotency_window = "5m"
# The most commands one batch, and channels one broadcast, may carry.
max_batch = 1000

# Channels without a namespace, such as "news".
[channel.without_namespace]
# Who may subscribe without a subscription token:
# "token" (private), "authenticated" (any connection with a token), "anyone".
subscribe = "authenticated"
# Who may publish from a client: "api" (nobody), "subscribers", "clients".
publish = "api"
# "dialog#42,43" is open only to users 42 and 43.
user_limited = true
# Largest publication accepted, in bytes.
max_message_size = 65536
# Let publications wait up to this long so several leave in one write:
# "0s" (the default) sends each at once; "5ms"-"20ms" saves most system
# calls when subscribers get hundreds of messages a second.
write_delay = "0s"
# Delta compressions subscribers may ask for: ["fossil"] sends each
# publication after the first as the difference from the previous one
# (for large states that change a little, such as dashboards).
allowed_delta_types = []

# A namespace: these options govern every channel "chat:<anything>".
[channel.namespaces.chat]
subscribe = "authenticated"
publish = "subscribers"
max_channels_per_connection = 16
# Keep the last 100 publications for 10 minutes after the last one, so a
# client that reconnects within that time recovers what it missed.
history_size = 100
history_ttl = "10m"
# How long the stream position (offset, epoch) outlives the last publication.
history_meta_ttl = "24h"
# Make every subscription recoverable, whatever the client asked.
force_recovery = true
# A client that missed more than this is told recovered: false.
recovery_max_publications = 300
# Who is in each room, and join/leave events for those who ask.
presence = true
join_leave = true
force_push_join_leave = false
allow_presence_for_subscriber = true
# Commands per second one connection may send about this namespace's
# channels, beside client.command_rate (0 = no limit of its own).
command_rate = 0
command_burst = 0
allow_history_for_subscriber = true

# Pusher Channels protocol (pusher-js, Laravel Echo, Pusher server SDKs).
# Uncomment to serve an app: clients connect to ws://host:8000/app/<key>,
# server SDKs call http://host:8000/apps/<id>/events.
# [pusher]
# activity_timeout = "120s"
# pong_timeout = "30s"
# [[pusher.apps]]
# id = "my-app"
# key = "my-app-key"
# secret = "{pusher_secret}"
# client_events = true          # client-* events on private/presence channels
# client_event_rate = 10        # per connection per second (else error 4301)
# max_connections = 0           # per node; 0 = no limit (else close 4004)
# max_event_size = 10240        # bytes of event data (else 413 / 4301)
# max_presence_members = 100
# subscription_count = false    # pusher:subscription_count to subscribers
# [[pusher.apps.webhooks]]
# url = "http://127.0.0.1:3000/pusher/webhooks"
# events = ["channel_occupied", "channel_vacated", "member_added",
#           "member_removed", "client_event", "cache_miss"]
# batch = false

[node]
# This node's name in /api/info (default: the host name).
# name = "herald-1"
# After a reload (SIGHUP) replaces api.key or the token keys, how long the
# previous ones are still accepted.
key_overlap = "10m"

# Proxy client events to your application's HTTP backend (Centrifugo's
# proxy format): connections without a token are authenticated by it, and
# namespaces may let it decide subscriptions and publications. Name a
# [proxies.<name>] in client.connect_proxy / refresh_proxy / rpc_proxy /
# send_proxy and in a namespace's subscribe_proxy / publish_proxy /
# sub_refresh_proxy.
# [proxies.connect]
# endpoint = "http://127.0.0.1:3000/centrifugo/connect"
# timeout = "1s"
# http_headers = ["Cookie"]
# include_connection_meta = false   # true: later requests carry the connection's meta

# The hub's events, for clients of both protocols, POSTed to your app and
# signed (X-Herald-Signature: hex HMAC-SHA256 of the body).
# [[webhooks]]
# url = "http://127.0.0.1:3000/herald/events"
# secret = "{webhook_secret}"
# events = ["channel_occupied", "channel_vacated", "user_joined", "user_left",
#           "connected", "disconnected"]
# batch = true

# The admin web UI at /admin: nodes, charts, channels, a channel inspector
# with a live tail, publish and disconnect. Off unless a password is set
# (at least 12 characters); served on http.internal_port when there is one.
# [admin]
# password = "{admin_password}"
# session_ttl = "8h"

[log]
# A tracing filter: "info", "debug", "herald_server=debug,info", ...
level = "info"
# "text" or "json".
format = "text"
"#;
