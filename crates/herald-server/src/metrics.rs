//! The node's Prometheus metrics, served at `GET /metrics` in the
//! OpenMetrics text format (which Prometheus reads).
//!
//! Labels are few and bounded: a protocol, a transport, a close code, an API
//! method from the known list, an HTTP status, a source. A channel or user name is never
//! a label, so a client cannot grow the series.
//!
//! Counters are kept here as things happen; the hub's counts (connections,
//! subscriptions, users, channels) and the engine's dropped messages are
//! read from them at each scrape; the hub
//! reports each fanout and recovery through [`HubMeter`].

mod engine;

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use herald_core::{Hub, HubMeter};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

pub(crate) use engine::Metering;

/// The content type of [`Metrics::render`]'s output.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Fanout times, in seconds: 10 µs to 1 s.
const FANOUT_BUCKETS: [f64; 12] =
    [0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0];

/// Engine call times, in seconds: 50 µs to 5 s.
const ENGINE_BUCKETS: [f64; 12] = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0, 5.0];

/// The server API's methods; anything else is counted as `unknown`.
/// The server API's methods, as metrics name them (`legacy`: a request in
/// Centrifugo's older format, at `POST /api`).
const API_METHODS: [&str; 15] = [
    "publish",
    "broadcast",
    "subscribe",
    "unsubscribe",
    "disconnect",
    "refresh",
    "channels",
    "info",
    "history",
    "history_remove",
    "presence",
    "presence_stats",
    "batch",
    "drain",
    "legacy",
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Disconnect {
    protocol: &'static str,
    /// The close code the server sent, or `none` when the client left or
    /// its connection broke.
    code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SessionKind {
    protocol: &'static str,
    /// `websocket`, `http_stream`, `sse`, `uni_websocket`, `uni_http_stream`
    /// or `uni_sse`.
    transport: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiRequest {
    /// `server` (the server API) or `pusher` (the Pusher HTTP API).
    api: &'static str,
    method: &'static str,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Source {
    /// `api` (the server API or the Pusher HTTP API) or `client`.
    source: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EngineCall {
    /// The engine trait method (`publish`, `history`, `add_presence`, …).
    call: &'static str,
}

/// A histogram with the engine's buckets.
fn engine_histogram() -> Histogram {
    Histogram::new(ENGINE_BUCKETS)
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Webhook {
    /// `delivered`, `retried` (an attempt failed), `given_up` (after five
    /// minutes of retries), `queue_full` (the event was dropped) or
    /// `discarded` (queued for a target a reload removed or changed).
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProxyCall {
    /// The event: `connect`, `refresh`, `subscribe`, `sub_refresh`,
    /// `publish`, `rpc` or `send`.
    kind: &'static str,
    /// `result`, `error` or `disconnect` (what the backend answered), or
    /// `failed` (no usable answer: unreachable, timed out, not 200, not
    /// JSON), or `dropped` (a `send` over the node's limit of calls in
    /// flight).
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProxyKind {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    /// `recovered`, or `not_recovered` (the client was told `recovered: false`).
    outcome: &'static str,
}

/// Everything the node counts, and the registry that renders it.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    sessions: Family<SessionKind, Gauge>,
    disconnects: Family<Disconnect, Counter>,
    api_requests: Family<ApiRequest, Counter>,
    published: Family<Source, Counter>,
    deliveries: Counter,
    fanout_seconds: Histogram,
    recoveries: Family<Outcome, Counter>,
    webhooks: Family<Webhook, Counter>,
    engine_seconds: Family<EngineCall, Histogram, fn() -> Histogram>,
    engine_errors: Family<EngineCall, Counter>,
    engine_interruptions: Counter,
    proxy_calls: Family<ProxyCall, Counter>,
    proxy_seconds: Family<ProxyKind, Histogram, fn() -> Histogram>,
    /// The hub whose counts are read at each scrape, once attached.
    hub: Arc<OnceLock<Weak<Hub>>>,
    /// The last exposition and when it was made: a scrape walks every
    /// connection and channel, so scrapes closer than [`RENDER_EVERY`] get
    /// the same text.
    rendered: std::sync::Mutex<Option<(tokio::time::Instant, Arc<str>)>>,
}

/// The least time between two walks of the node for `/metrics`.
const RENDER_EVERY: Duration = Duration::from_secs(1);

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The metrics of a node that reads no hub (in tests); see [`Metrics::of`].
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("herald");
        let metrics = Self {
            sessions: Family::default(),
            disconnects: Family::default(),
            api_requests: Family::default(),
            published: Family::default(),
            deliveries: Counter::default(),
            fanout_seconds: Histogram::new(FANOUT_BUCKETS),
            recoveries: Family::default(),
            webhooks: Family::default(),
            engine_seconds: Family::new_with_constructor(engine_histogram),
            engine_errors: Family::default(),
            engine_interruptions: Counter::default(),
            proxy_calls: Family::default(),
            proxy_seconds: Family::new_with_constructor(engine_histogram),
            hub: Arc::default(),
            rendered: std::sync::Mutex::new(None),
            registry: Registry::default(),
        };
        registry.register("build", "The running build", Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]));
        registry.register(
            "sessions",
            "Open client sessions on this node, by protocol and transport (websocket, http_stream, sse, \
             uni_websocket, uni_http_stream, uni_sse); a session counts from its handshake, before its client has connected",
            metrics.sessions.clone(),
        );
        registry.register(
            "disconnects",
            "Connections ended, by protocol and the close code the server sent (none: the client left); \
             3008 and 4100 are slow consumers",
            metrics.disconnects.clone(),
        );
        registry.register(
            "api_requests",
            "Server API and Pusher HTTP API requests, by method and HTTP status",
            metrics.api_requests.clone(),
        );
        registry.register(
            "publications",
            "Publications accepted on this node, by source (api or client)",
            metrics.published.clone(),
        );
        registry.register(
            "deliveries",
            "Publications queued for local subscribers (one per subscriber)",
            metrics.deliveries.clone(),
        );
        registry.register(
            "fanout_seconds",
            "Time to queue one publication for every local subscriber of its channel",
            metrics.fanout_seconds.clone(),
        );
        registry.register("recoveries", "Subscriptions that asked to recover, by outcome", metrics.recoveries.clone());
        registry.register(
            "webhooks",
            "Webhook requests (Pusher apps' and the events webhooks), by outcome: delivered, retried, given_up, queue_full, discarded",
            metrics.webhooks.clone(),
        );
        registry.register(
            "engine_call_seconds",
            "Engine calls (Redis commands and scripts, or the memory engine's), by call",
            metrics.engine_seconds.clone(),
        );
        registry.register("engine_errors", "Engine calls that failed, by call", metrics.engine_errors.clone());
        registry.register(
            "engine_interruptions",
            "Times the engine lost its subscription to the backplane (each makes positioned subscribers recover)",
            metrics.engine_interruptions.clone(),
        );
        registry.register(
            "proxy_calls",
            "Calls to the application's proxy endpoints, by event and outcome",
            metrics.proxy_calls.clone(),
        );
        registry.register(
            "proxy_call_seconds",
            "Time the application's proxy endpoints took to answer, by event",
            metrics.proxy_seconds.clone(),
        );
        registry.register_collector(Box::new(HubCounts(metrics.hub.clone())));
        Self { registry, ..metrics }
    }

    /// Reads `hub`'s counts at each scrape, and has it report fanouts,
    /// recoveries and interruptions here.
    pub(crate) fn attach(self: &Arc<Self>, hub: &Arc<Hub>) {
        let _ = self.hub.set(Arc::downgrade(hub));
        hub.measure(Arc::new(Meter(self.clone())));
    }

    /// A proxy call for `kind` ended with `outcome` after `took`.
    pub(crate) fn proxy_call(&self, kind: &'static str, outcome: &'static str, took: Duration) {
        self.proxy_calls.get_or_create(&ProxyCall { kind, outcome }).inc();
        self.proxy_seconds.get_or_create(&ProxyKind { kind }).observe(took.as_secs_f64());
    }

    /// An engine call named `call` took `took`, and failed or not.
    pub(crate) fn engine_call(&self, call: &'static str, took: Duration, failed: bool) {
        let label = EngineCall { call };
        self.engine_seconds.get_or_create(&label).observe(took.as_secs_f64());
        if failed {
            self.engine_errors.get_or_create(&label).inc();
        }
    }

    /// The exposition text.
    pub(crate) fn render(&self) -> Arc<str> {
        let mut rendered = self.rendered.lock().unwrap_or_else(|e| e.into_inner());
        let now = tokio::time::Instant::now();
        if let Some((at, text)) = rendered.as_ref() {
            if now.saturating_duration_since(*at) < RENDER_EVERY {
                return text.clone();
            }
        }
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::warn!(%error, "metrics could not be rendered");
        }
        let text: Arc<str> = text.into();
        *rendered = Some((now, text.clone()));
        text
    }

    /// A session of `protocol` started on `transport`.
    pub(crate) fn session_opened(&self, protocol: &'static str, transport: &'static str) {
        self.sessions.get_or_create(&SessionKind { protocol, transport }).inc();
    }

    /// A session of `protocol` on `transport` ended.
    pub(crate) fn session_closed(&self, protocol: &'static str, transport: &'static str) {
        self.sessions.get_or_create(&SessionKind { protocol, transport }).dec();
    }

    /// A connection ended; `code` is what the server closed it with.
    pub(crate) fn disconnected(&self, protocol: &'static str, code: Option<u16>) {
        let code = code.map_or_else(|| "none".to_owned(), |c| c.to_string());
        self.disconnects.get_or_create(&Disconnect { protocol, code }).inc();
    }

    /// A server API (`api = "server"`) or Pusher HTTP API call was answered.
    pub(crate) fn api_request(&self, api: &'static str, method: &str, status: u16) {
        let method = API_METHODS.iter().find(|known| **known == method).copied().unwrap_or("unknown");
        self.api_requests.get_or_create(&ApiRequest { api, method, status }).inc();
    }

    /// A Pusher HTTP API call, its method named by the caller.
    pub(crate) fn pusher_request(&self, method: &'static str, status: u16) {
        self.api_requests.get_or_create(&ApiRequest { api: "pusher", method, status }).inc();
    }

    /// A webhook request ended with `outcome` (see [`Webhook`]).
    pub(crate) fn webhook(&self, outcome: &'static str) {
        self.webhooks.get_or_create(&Webhook { outcome }).inc();
    }

    /// `count` publications were accepted from `source` (`api` or `client`).
    pub(crate) fn published(&self, source: &'static str, count: u64) {
        self.published.get_or_create(&Source { source }).inc_by(count);
    }
}

/// Reports the hub's measurements into the metrics.
#[derive(Debug)]
struct Meter(Arc<Metrics>);

impl HubMeter for Meter {
    fn fanned_out(&self, queued: usize, took: Duration) {
        self.0.deliveries.inc_by(u64::try_from(queued).unwrap_or(u64::MAX));
        self.0.fanout_seconds.observe(took.as_secs_f64());
    }

    fn recovery(&self, recovered: bool) {
        let outcome = if recovered { "recovered" } else { "not_recovered" };
        self.0.recoveries.get_or_create(&Outcome { outcome }).inc();
    }

    fn engine_interrupted(&self) {
        self.0.engine_interruptions.inc();
    }
}

/// The hub's counts, read at each scrape. Holds the hub weakly: the
/// metrics must not keep a stopped node's hub alive.
#[derive(Debug)]
struct HubCounts(Arc<OnceLock<Weak<Hub>>>);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Protocol {
    protocol: &'static str,
}

impl Collector for HubCounts {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(hub) = self.0.get().and_then(Weak::upgrade) else { return Ok(()) };
        let by_protocol = hub.counts_by_protocol();
        let stats = hub.stats();
        let connections = |counts: &(usize, usize)| counts.0;
        let subscriptions = |counts: &(usize, usize)| counts.1;
        for (name, help, pick) in [
            (
                "connections",
                "Connections on this node, by protocol.",
                &connections as &dyn Fn(&(usize, usize)) -> usize,
            ),
            ("subscriptions", "Subscriptions on this node, by protocol.", &subscriptions),
        ] {
            let gauge = ConstGauge::new(0i64);
            let mut family = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            for protocol in ["centrifuge", "pusher"] {
                let value = by_protocol.get(protocol).map_or(0, pick);
                let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
                gauge.encode(family.encode_family(&Protocol { protocol })?)?;
            }
        }
        for (name, help, value) in [
            ("users", "Distinct users connected to this node.", stats.users),
            ("channels", "Channels with a subscriber on this node.", stats.channels),
            ("queued_bytes", "Bytes waiting in connections' outboxes to be written.", hub.queued_bytes()),
        ] {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        let dropped = ConstCounter::new(hub.engine().broker().dropped());
        let help = "Messages for this node the engine dropped because the node did not take them in time \
                    (positioned subscribers recover them; others lose them).";
        dropped.encode(encoder.encode_descriptor("engine_dropped_messages", help, None, dropped.metric_type())?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn scrapes_closer_than_a_second_share_one_walk_of_the_node() {
        let metrics = Metrics::new();
        let first = metrics.render();
        metrics.published("api", 1);

        let soon = metrics.render();
        tokio::time::advance(RENDER_EVERY).await;
        let later = metrics.render();

        assert_eq!(soon, first, "within a second: the same exposition");
        assert!(later.contains(r#"herald_publications_total{source="api"} 1"#), "{later}");
    }
}
