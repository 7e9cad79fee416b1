//! Assembling and running a node: engine, hub, front-end, API, listener.
//!
//! [`run`] takes a bound listener and a shutdown future, so the caller owns
//! the socket and the trigger (tests bind `127.0.0.1:0`; the binary binds the
//! configured address and waits for SIGINT/SIGTERM). On shutdown the node
//! stops accepting, tells every client to reconnect elsewhere (3001), waits
//! for the connections to close (bounded by `http.shutdown_timeout`) and
//! returns.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Extension, Json, Router};
use tokio::net::TcpListener;
use tokio::sync::watch;

use herald_core::{ChannelRules, Hub, HubConfig};
use herald_engine::{DisconnectReason, Health, NodeId};

use crate::api::{self, ApiState};
use crate::auth::TokenVerifier;
use crate::centrifuge::emulation::Emulation;
use crate::centrifuge::session::{Encoding, Mode};
use crate::centrifuge::{self, CentrifugeEncoder, SessionSettings, Shared, UniEncoder};
use crate::config::{Config, TransportName};
use crate::driver::DriverSettings;
use crate::http::admission::{Limits, Permit};
use crate::http::body::BodyLimits;
use crate::http::origin::OriginPolicy;
use crate::http::{self, ServeSettings, Tracker};
use crate::metrics::{self, Metrics};
use crate::pusher::{self, Frontend};
use crate::rate::{RateLimits, UserRates};
use crate::transport::{WebSocket, WsUpgrade};

/// The WebSocket endpoint of the Centrifuge protocol.
pub(crate) const CENTRIFUGE_PATH: &str = "/connection/websocket";

/// What the connection endpoints share.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) shared: Arc<Shared>,
    pusher: Option<Arc<Frontend>>,
    pub(crate) tracker: Arc<Tracker>,
    pub(crate) max_message_size: usize,
    /// How long the body that opens a stream, or an emulation request's,
    /// may take to arrive.
    pub(crate) body_timeout: std::time::Duration,
    origins: Arc<OriginPolicy>,
    /// True once the node drains: `/ready` answers 503.
    draining: watch::Receiver<bool>,
    /// The Centrifuge transports served.
    pub(crate) transports: Vec<TransportName>,
    /// The node's emulated sessions (HTTP-streaming and SSE).
    pub(crate) emulation: Arc<Emulation>,
}

/// A node assembled from its configuration, not yet serving.
#[derive(Debug)]
pub struct Node {
    pub hub: Arc<Hub>,
    shared: Arc<Shared>,
    api: Arc<ApiState>,
    pusher: Option<Arc<Frontend>>,
    /// Set once the node has stopped: ends the operators' port (sessions
    /// are ended through `driver::Sessions`).
    shutdown: watch::Sender<bool>,
    /// Set (by SIGTERM, or the API's `drain`) to drain the node.
    drain: watch::Sender<bool>,
    /// The admin UI, when `admin.password` is set.
    admin: Option<Arc<crate::admin::Admin>>,
    /// The emulated sessions, which relayed commands reach.
    emulation: Arc<Emulation>,
    /// Routes served beside the node's own (`herald demo`'s pages).
    also: Option<Router>,
    config: Config,
}

impl Node {
    /// Builds the engine, hub and front-ends. Fails loudly; never falls back.
    pub async fn build(config: Config) -> anyhow::Result<Node> {
        let engine = crate::engines::build(&config.engine).await?;
        let metrics = Arc::new(Metrics::new());
        let engine = engine.wrapped(&metrics::Metering(metrics.clone()));
        let node_id = NodeId::from(uuid::Uuid::new_v4().to_string());
        let serves_pusher = !config.pusher.apps.is_empty();
        let wants_occupancy = crate::events::HubWebhooks::wants_occupancy(&config.webhooks);
        let rules = channel_rules(&config, serves_pusher);
        let hub = Hub::new(
            HubConfig {
                max_channels_per_connection: config.client.max_channels,
                presence_update_interval: config.client.presence_update_interval,
                presence_ttl: config.client.presence_ttl,
                idempotency_window: config.api.idempotency_window,
                track_occupancy: serves_pusher || wants_occupancy,
                position_check_interval: config.client.position_check_interval,
                node_name: config.node.name_or(node_id.as_str()),
                ..HubConfig::new(node_id, rules)
            },
            engine,
        );
        // Installed before the hub starts: its first registration in the
        // node registry carries the key its emulated sessions' keys are
        // signed with (a node listed without one has its unsigned keys
        // relayed, as an older node's).
        let emulation = Emulation::new();
        hub.relay_to(emulation.clone());
        hub.start().await.context("starting the engine")?;

        let verifier =
            TokenVerifier::from_config(&config.client).map_err(|problems| anyhow::anyhow!(problems.join("; ")))?;
        verifier.start(config.client.token_jwks_refresh);
        let client = &config.client;
        // One table of users for both protocols: a user's every connection counts.
        let users = Arc::new(UserRates::of(client));
        let settings = SessionSettings {
            ping_interval: client.ping_interval,
            pong_timeout: client.pong_timeout,
            connect_timeout: client.connect_timeout,
            expired_close_delay: client.expired_close_delay,
            expired_sub_close_delay: client.expired_sub_close_delay,
            queue_max_bytes: client.queue_max_bytes,
            allow_anonymous: client.allow_anonymous,
            rates: RateLimits::of(client),
            users: users.clone(),
        };
        let (shutdown, _) = watch::channel(false);
        let body = BodyLimits { max_size: config.http.max_body_size, timeout: config.http.body_timeout };
        metrics.attach(&hub);
        let events = match config.webhooks.is_empty() {
            true => None,
            false => {
                let tls = config.pusher.webhook_tls().map_err(anyhow::Error::msg)?;
                crate::events::HubWebhooks::start(&config.webhooks, Some(&tls), &metrics)
            }
        };
        let driver = DriverSettings {
            hub: hub.clone(),
            write_timeout: client.write_timeout,
            sessions: Arc::default(),
            metrics,
            events: events.clone(),
            alarms: herald_core::Alarms::default(),
        };
        let pusher =
            serves_pusher.then(|| Frontend::new(&config.pusher, &config.client, (body, users), driver.clone()));
        let mut observers: Vec<Arc<dyn herald_core::HubObserver>> = Vec::new();
        observers.extend(pusher.as_ref().map(Frontend::observer));
        observers.extend(events.map(|events| events as Arc<dyn herald_core::HubObserver>));
        match observers.len() {
            0 => {}
            1 => observers.into_iter().for_each(|observer| hub.observe(observer)),
            _ => hub.observe(Arc::new(crate::events::Observers(observers))),
        }
        let verifier = crate::rotating::Rotating::new(verifier);
        let proxies =
            Arc::new(crate::proxy::Proxies::from_config(&config, &driver.metrics).map_err(anyhow::Error::msg)?);
        let shared = Arc::new(Shared {
            driver,
            verifier,
            settings,
            encoder: Arc::new(CentrifugeEncoder),
            uni_encoder: Arc::new(UniEncoder),
            protobuf_encoder: Arc::default(),
            proxies,
            pusher: pusher.clone(),
        });
        let api_key = if config.api.insecure { None } else { config.api.key.clone() };
        let metrics = shared.driver.metrics.clone();
        let (drain, _) = watch::channel(false);
        let max_batch = config.api.max_batch;
        let key = crate::rotating::Rotating::new(api_key);
        let transport_errors = config.api.error_mode == crate::config::ApiErrorMode::Transport;
        let api = Arc::new(ApiState {
            hub: hub.clone(),
            key,
            body,
            max_batch,
            transport_errors,
            metrics,
            drain: drain.clone(),
        });
        let node_name = config.node.name_or(hub.node().as_str());
        let admin = crate::admin::Admin::start(&config.admin, api.clone(), node_name, body.timeout, drain.subscribe());
        Ok(Node { hub, shared, api, pusher, shutdown, drain, admin, emulation, also: None, config })
    }

    /// Serves `routes` too, on the node's port, beside its own.
    pub(crate) fn also_serve(&mut self, routes: Router) {
        self.also = Some(match self.also.take() {
            Some(also) => also.merge(routes),
            None => routes,
        });
    }

    /// Serves on `listener` until `shutdown` resolves, then drains.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        self.run_with_internal(listener, None, shutdown).await
    }

    /// Serves on `listener`, and `/metrics` and `/health` on `internal`
    /// (see `http.internal_port`), until `shutdown` resolves, then drains.
    pub async fn run_with_internal(
        self,
        listener: TcpListener,
        internal: Option<TcpListener>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        #[cfg(target_os = "linux")]
        herald_core::outbox::write_batches_with_io_uring(self.config.http.io_uring);
        let tracker = Arc::new(Tracker::default());
        let state = AppState {
            shared: self.shared.clone(),
            pusher: self.pusher.clone(),
            tracker: tracker.clone(),
            max_message_size: self.config.client.max_message_size,
            body_timeout: self.config.http.body_timeout,
            origins: Arc::new(OriginPolicy::new(&self.config.http.allowed_origins)),
            draining: self.drain.subscribe(),
            transports: self.config.client.transports.clone(),
            emulation: self.emulation.clone(),
        };
        let mut app = router(state.clone(), self.api.clone(), internal.is_none());
        if let Some(also) = self.also {
            app = app.merge(also);
        }
        let http = &self.config.http;
        let window = http.drain_window;
        let (draining, mut asked) = (self.drain.clone(), self.drain.subscribe());
        let hub = self.hub.clone();
        // While connections close, the node still answers HTTP: `/ready`
        // (503), the API, metrics; WebSocket handshakes get 503. Then it
        // stops accepting.
        let graceful = async move {
            tokio::select! {
                () = shutdown => {}
                _ = asked.wait_for(|asked| *asked) => {}
            }
            draining.send_replace(true);
            tracing::info!(
                ?window,
                "draining: /ready answers 503, new connections are refused, and open ones are closed with 3001 \
                 (Pusher 4200: reconnect elsewhere) spread over http.drain_window"
            );
            hub.close_spread(DisconnectReason::Shutdown, window).await;
        };
        let limits = Limits {
            max_connections: http.max_connections,
            max_connections_per_ip: http.max_connections_per_ip,
            connection_rate_per_ip: http.connection_rate_per_ip,
        };
        let tls = self.config.tls_acceptor().map_err(|problem| anyhow::anyhow!(problem))?;
        let internal_settings = ServeSettings {
            tls: None,
            handshake_timeout: http.handshake_timeout,
            drain_timeout: http.shutdown_timeout,
            limits,
            max_unsent_bytes: http.max_unsent_bytes,
        };
        let settings = ServeSettings {
            tls,
            handshake_timeout: http.handshake_timeout,
            drain_timeout: http.shutdown_timeout,
            limits,
            max_unsent_bytes: http.max_unsent_bytes,
        };
        // The admin UI goes with the operators' endpoints: on the internal
        // port when there is one.
        if let Some(internal) = internal {
            let mut stopped = self.shutdown.subscribe();
            let until_stopped = async move {
                let _ = stopped.wait_for(|stopped| *stopped).await;
            };
            let mut operators = internal_router(state);
            if let Some(admin) = &self.admin {
                operators = operators.merge(crate::admin::router(admin.clone(), false));
            }
            tokio::spawn(http::serve(internal, operators, internal_settings, until_stopped));
        } else if let Some(admin) = &self.admin {
            app = app.merge(crate::admin::router(admin.clone(), settings.tls.is_some()));
        }
        // Returns once the drain began and HTTP requests in flight ended (bounded).
        let stopping = http::serve(listener, app, settings, graceful).await;
        // Sessions that never connected, and the operators' port.
        self.shared.driver.sessions.stop();
        let _ = self.shutdown.send(true);
        let left = http.shutdown_timeout.saturating_sub(stopping.elapsed());
        if tokio::time::timeout(left, tracker.wait_idle()).await.is_err() {
            tracing::warn!(
                sessions = tracker.live(),
                "connections still open after http.shutdown_timeout; exiting anyway"
            );
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// What a configuration reload can change in a running node.
#[derive(Clone)]
pub struct Reloadable {
    hub: Arc<Hub>,
    api: Arc<ApiState>,
    shared: Arc<Shared>,
    pusher: Option<Arc<Frontend>>,
    serves_pusher: bool,
}

impl std::fmt::Debug for Reloadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloadable").field("serves_pusher", &self.serves_pusher).finish_non_exhaustive()
    }
}

impl Node {
    /// A handle on what a reload can change, for as long as the node runs.
    pub fn reloadable(&self) -> Reloadable {
        Reloadable {
            hub: self.hub.clone(),
            api: self.api.clone(),
            shared: self.shared.clone(),
            pusher: self.pusher.clone(),
            serves_pusher: self.pusher.is_some(),
        }
    }
}

impl Reloadable {
    /// Applies `config`'s channel namespaces.
    pub fn set_namespaces(&self, config: &Config) {
        self.hub.set_rules(channel_rules(config, self.serves_pusher));
    }

    /// Makes `config`'s API key current; the previous one is accepted for `overlap`.
    pub fn rotate_api_key(&self, config: &Config, overlap: std::time::Duration) {
        let key = if config.api.insecure { None } else { config.api.key.clone() };
        self.api.key.rotate(key, overlap);
    }

    /// Makes `config`'s Pusher apps current: see `Frontend::reload_apps`.
    /// A node started without Pusher apps needs a restart to serve them.
    pub fn reload_pusher_apps(&self, config: &Config, overlap: std::time::Duration) -> Result<(), String> {
        match &self.pusher {
            Some(frontend) => {
                frontend.reload_apps(&config.pusher, overlap);
                Ok(())
            }
            None => Err("the node started without Pusher apps: serving them needs a restart".to_owned()),
        }
    }

    /// Makes `config`'s token keys current; the previous ones are accepted
    /// for `overlap`. Fails, changing nothing, if a key cannot be used.
    pub fn rotate_token_keys(&self, config: &Config, overlap: std::time::Duration) -> Result<(), String> {
        let verifier = TokenVerifier::from_config(&config.client).map_err(|problems| problems.join("; "))?;
        verifier.start(config.client.token_jwks_refresh);
        self.shared.verifier.rotate(verifier, overlap);
        Ok(())
    }
}

/// The namespaces' rules of `config`; with Pusher's channel conventions
/// when the node serves Pusher apps.
pub(crate) fn channel_rules(config: &Config, serves_pusher: bool) -> ChannelRules {
    let rules = ChannelRules::new(config.channel.without_namespace.clone(), config.channel.namespaces.clone());
    match serves_pusher {
        true => rules.with_conventions(Arc::new(pusher::conventions::PusherConventions)),
        false => rules,
    }
}

fn router(state: AppState, api: Arc<ApiState>, with_metrics: bool) -> Router {
    let api_routes = Router::new()
        .route("/api/{method}", post(api::handle).fallback(api::wrong_method))
        .route("/api", post(api::legacy::handle).fallback(api::legacy::wrong_method))
        .with_state(api);
    let mut routes = crate::streams::routes(&state)
        .route("/", get(index))
        .route("/app/{key}", get(pusher_websocket))
        .route("/health", get(health))
        .route("/ready", get(ready));
    if state.transports.contains(&TransportName::Websocket) {
        routes = routes.route(CENTRIFUGE_PATH, get(centrifuge_websocket));
    }
    if with_metrics {
        routes = routes.route("/metrics", get(metrics_text));
    }
    let mut router = routes.with_state(state.clone()).merge(api_routes);
    if let Some(frontend) = state.pusher {
        router =
            router.merge(Router::new().route("/apps/{app_id}/{*rest}", any(pusher::rest::handle)).with_state(frontend));
    }
    router
}

/// What a person who opens the node's address in a browser is told: what
/// it serves, and where.
async fn index(State(state): State<AppState>) -> Response {
    let mut text =
        format!("Herald {}: a realtime messaging server.\n\nClients connect to:\n", env!("CARGO_PKG_VERSION"));
    for name in &state.transports {
        let path = match name {
            TransportName::Websocket => {
                "/connection/websocket        Centrifuge protocol (centrifuge-js, the Centrifugo SDKs)"
            }
            TransportName::HttpStream => {
                "/connection/http_stream      HTTP-streaming fallback (commands: POST /emulation)"
            }
            TransportName::Sse => "/connection/sse              SSE fallback (commands: POST /emulation)",
            TransportName::UniWebsocket => "/connection/uni_websocket    listen only, over WebSocket",
            TransportName::UniSse => "/connection/uni_sse          listen only, with EventSource",
            TransportName::UniHttpStream => "/connection/uni_http_stream  listen only, over HTTP-streaming",
        };
        text.push_str(&format!("  {path}\n"));
    }
    if state.pusher.is_some() {
        text.push_str("  /app/<key>                   Pusher protocol (pusher-js, Laravel Echo)\n");
    }
    text.push_str(
        "\nBackends publish with POST /api/<method> and the X-API-Key header (the README's Server API).\n\
         Health: /health and /ready.\n",
    );
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
}

async fn pusher_websocket(
    State(state): State<AppState>,
    Path(key): Path<String>,
    Query(query): Query<pusher::session::ConnectQuery>,
    permit: Option<Extension<Arc<Permit>>>,
    headers: HeaderMap,
    upgrade: WsUpgrade,
) -> Response {
    if let Some(refused) = refuse_draining(&state).or_else(|| refuse_origin(&state, &headers)) {
        return refused;
    }
    let Some(frontend) = state.pusher.clone() else {
        return (StatusCode::NOT_FOUND, "the Pusher protocol is not configured: add a [[pusher.apps]] table")
            .into_response();
    };
    serve_websocket(&state, upgrade, permit, move |transport| pusher::session::run(transport, frontend, key, query))
}

async fn centrifuge_websocket(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    permit: Option<Extension<Arc<Permit>>>,
    headers: HeaderMap,
    upgrade: WsUpgrade,
) -> Response {
    centrifuge_upgrade(&state, peer, permit, &headers, upgrade, Mode::Bidirectional)
}

/// Runs a Centrifuge session in `mode` on the WebSocket of `upgrade`,
/// unless the node drains or the page's origin is not allowed.
pub(crate) fn centrifuge_upgrade(
    state: &AppState,
    peer: std::net::SocketAddr,
    permit: Option<Extension<Arc<Permit>>>,
    headers: &HeaderMap,
    upgrade: WsUpgrade,
    mode: Mode,
) -> Response {
    if let Some(refused) = refuse_draining(state).or_else(|| refuse_origin(state, headers)) {
        return refused;
    }
    let shared = state.shared.clone();
    // What the proxies pass on of the handshake, kept only when there are any.
    let proxies = &shared.proxies;
    let transport = if mode == Mode::Unidirectional { "uni_websocket" } else { "websocket" };
    let context =
        proxies.any().then(|| Arc::new(crate::proxy::ClientContext::capture(proxies, headers, peer.ip(), transport)));
    // A client that asks for `centrifuge-protobuf` speaks Protobuf (both ways only).
    let upgrade = match mode {
        Mode::Bidirectional => upgrade.protocols([centrifuge::protobuf::SUBPROTOCOL]),
        Mode::Emulated | Mode::Unidirectional => upgrade,
    };
    let encoding = match upgrade.selected_protocol() {
        Some(_) => Encoding::Protobuf,
        None => Encoding::Json,
    };
    serve_websocket(state, upgrade, permit, move |socket| {
        let transport = match mode {
            Mode::Unidirectional => socket.listen_only(),
            Mode::Bidirectional | Mode::Emulated => socket,
        };
        centrifuge::session::run(transport, shared, context, mode, encoding)
    })
}

/// A 503 for a handshake while the node drains: the client should connect
/// to another node.
pub(crate) fn refuse_draining(state: &AppState) -> Option<Response> {
    if !*state.draining.borrow() {
        return None;
    }
    Some((StatusCode::SERVICE_UNAVAILABLE, "this node is draining; connect to another one").into_response())
}

/// A 403 for a handshake from a page whose origin is not allowed.
pub(crate) fn refuse_origin(state: &AppState, headers: &HeaderMap) -> Option<Response> {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let origin = header(header::ORIGIN);
    if state.origins.allows(origin, header(header::HOST)) {
        return None;
    }
    tracing::info!(origin = origin.unwrap_or(""), "WebSocket refused: origin not in http.allowed_origins");
    Some((StatusCode::FORBIDDEN, "this origin may not open connections: see http.allowed_origins").into_response())
}

/// Upgrades with the node's WebSocket limits and runs `session` on the
/// socket, counted by the tracker so shutdown waits for it, and holding
/// the connection's place under the node's caps while it runs.
fn serve_websocket<F>(
    state: &AppState,
    upgrade: WsUpgrade,
    permit: Option<Extension<Arc<Permit>>>,
    session: impl FnOnce(WebSocket) -> F + Send + 'static,
) -> Response
where
    F: Future<Output = ()> + Send + 'static,
{
    use futures_util::FutureExt;
    let guard = state.tracker.enter();
    // The session's future, with what it holds let go when it ends: not an
    // async block, which would keep the session's arguments beside it for
    // every connection's life.
    upgrade.on_upgrade(state.max_message_size, move |socket| session(socket).map(move |()| drop((guard, permit))))
}

/// What `http.internal_port` serves: metrics and health, for operators
/// (and the admin UI, when it is on).
fn internal_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .with_state(state)
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], state.shared.driver.metrics.render().to_string()).into_response()
}

/// Alive: the process serves. (Whether it should be sent traffic is `/ready`.)
/// Alive: 200 while the process serves, saying whether its engine can
/// reach the backplane (readiness, and draining, are `/ready`'s).
async fn health(State(state): State<AppState>) -> Response {
    let body = match state.shared.driver.hub.engine().health().await {
        Health::Ready => serde_json::json!({"status": "ok", "engine": "ready"}),
        Health::NotReady { reason } => serde_json::json!({"status": "ok", "engine": "unavailable", "reason": reason}),
    };
    Json(body).into_response()
}

/// Ready for traffic: not draining, and the engine can serve.
async fn ready(State(state): State<AppState>) -> Response {
    if *state.draining.borrow() {
        let body = serde_json::json!({"status": "draining"});
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    match state.shared.driver.hub.engine().health().await {
        Health::Ready => Json(serde_json::json!({"status": "ok"})).into_response(),
        Health::NotReady { reason } => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({"status": "not ready", "reason": reason})))
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node's first entry in the node registry already carries the key
    /// its emulated sessions' keys are signed with: listed without one, it
    /// would pass for an older node whose unsigned keys are relayed.
    #[tokio::test]
    async fn a_node_is_registered_with_its_relay_key_from_the_start() {
        let mut config = Config::default();
        config.api.key = Some(crate::config::Secret::new("a-key-for-the-test-0123456789"));
        config.client.allow_anonymous = true;
        let node = Node::build(config).await.expect("a node");
        let nodes = node.hub.registered_nodes().await.expect("the registry");
        assert_eq!(nodes.len(), 1);
        assert!(nodes.iter().all(|node| node.relay_key.is_some()), "{nodes:?}");
    }
}
