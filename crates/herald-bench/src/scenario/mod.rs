//! Scenarios and what they share: connecting many clients at a given
//! rate over several source addresses, progress lines, latency summaries.

pub mod chat;
pub mod connections;
pub mod deltas;
pub mod fanout;
pub mod floor;
pub mod soak;
pub mod storm;

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::client::{BenchClient, ConnectError, Protocol, Target};

/// How clients connect.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectArgs {
    /// The protocol clients speak.
    pub protocol: Protocol,
    /// WebSocket endpoints; clients are spread over them round-robin.
    pub urls: Vec<String>,
    /// Secret to mint HS256 connection tokens with.
    #[serde(skip)]
    pub token_secret: String,
    /// Connect with an empty token (a connect proxy, or anonymous
    /// connections, decide who the client is).
    pub without_token: bool,
    /// A `Cookie` header sent with every handshake.
    #[serde(skip)]
    pub cookie: Option<String>,
    /// Connections opened per second.
    pub connect_rate: f64,
    /// Loopback source addresses to spread connections over (127.0.0.2, …);
    /// 0 lets the OS pick.
    pub source_addresses: u8,
    /// The number of this process's first client: a worker process holds
    /// clients `first_client..`, named and spread as one process would.
    #[serde(skip)]
    pub first_client: usize,
}

/// Durations in results as people write them (`10s`).
pub(crate) mod as_text {
    pub(crate) fn serialize<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub samples: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// From a histogram of microseconds.
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        let ms = |micros: u64| micros as f64 / 1000.0;
        Self {
            samples: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// An empty histogram of latencies in microseconds, from 1 µs to a minute.
pub(crate) fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// Every value `histogram` recorded, with its count.
pub(crate) fn histogram_counts(histogram: &Histogram<u64>) -> Vec<(u64, u64)> {
    histogram.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect()
}

/// Latencies recorded by many client tasks into a few shared histograms.
///
/// One histogram per client would cost about 150 KB each and, with
/// thousands of clients, turn every record into a cache miss; the shards
/// stay hot, and a client records a whole frame's worth under one lock.
#[derive(Debug)]
pub struct LatencyRecorder {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl LatencyRecorder {
    const SHARDS: usize = 16;

    pub fn new() -> Self {
        Self { shards: (0..Self::SHARDS).map(|_| Mutex::new(latency_histogram())).collect() }
    }

    /// Adds latencies counted elsewhere (a worker process's report).
    pub fn add_counts(&self, counts: &[(u64, u64)]) {
        let mut shard = self.shards[0].lock().unwrap_or_else(|e| e.into_inner());
        for (value, count) in counts {
            let _ = shard.record_n(*value, *count);
        }
    }

    /// Every recorded value with its count, for a worker's report.
    pub fn counts(&self) -> Vec<(u64, u64)> {
        histogram_counts(&self.merged())
    }

    /// Records latencies in microseconds; `client` picks the shard.
    pub fn record(&self, client: usize, micros: impl IntoIterator<Item = u64>) {
        let mut shard = self.shards[client % Self::SHARDS].lock().unwrap_or_else(|e| e.into_inner());
        for value in micros {
            let _ = shard.record(value.max(1));
        }
    }

    /// All shards merged.
    pub fn merged(&self) -> Histogram<u64> {
        let mut all = latency_histogram();
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            all.add(&*shard).expect("shards share their bounds");
        }
        all
    }
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        Self::new()
    }
}

/// A live progress line on stderr.
pub fn progress(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

pub(crate) fn token(secret: &str, user: &str) -> String {
    token_with(secret, user, &[])
}

/// A connection token for `user`, subscribing it to `channels` on the
/// server's side (the `channels` claim).
pub(crate) fn token_with(secret: &str, user: &str, channels: &[String]) -> String {
    let claims = match channels {
        [] => serde_json::json!({"sub": user}),
        _ => serde_json::json!({"sub": user, "channels": channels}),
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing cannot fail")
}

/// The loopback source address client `i` connects from (none: the
/// kernel's choice). Reconnects must use it too: from one address, the
/// kernel's search for a free port to one server port grows with every
/// connection already open, and a storm of 19,000 spent most of the
/// generator's CPU in it.
pub fn source_address(args: &ConnectArgs, i: usize) -> Option<IpAddr> {
    let spread = usize::from(args.source_addresses);
    let offset = u8::try_from(i.checked_rem(spread)?).ok()?;
    Some(IpAddr::from([127, 0, 0, offset.checked_add(2)?]))
}

/// Connects `count` clients at `connect_rate`, each subscribed to the
/// channels `channels_of(i)` returns (`i` counts from `first_client`). Stops at the first sign of the
/// open-files limit and says so, instead of reporting nonsense.
pub async fn connect_all(
    args: &ConnectArgs,
    count: usize,
    channels_of: impl Fn(usize) -> Vec<String>,
) -> anyhow::Result<(Vec<BenchClient>, usize)> {
    let mut targets: Vec<Target> = args.urls.iter().map(|u| Target::parse(u)).collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(!targets.is_empty(), "give at least one --url");
    for target in &mut targets {
        target.cookie.clone_from(&args.cookie);
    }
    let interval = Duration::from_secs_f64(1.0 / args.connect_rate.max(1.0));
    let mut pending = tokio::task::JoinSet::new();
    let start = tokio::time::Instant::now();
    for n in 0..count {
        tokio::time::sleep_until(start + interval.mul_f64(n as f64)).await;
        let i = args.first_client + n;
        let target = targets[i % targets.len()].clone();
        let source = source_address(args, i);
        let token = match args.protocol {
            Protocol::Centrifuge | Protocol::CentrifugeProtobuf | Protocol::Sse if args.without_token => String::new(),
            Protocol::Centrifuge | Protocol::CentrifugeProtobuf | Protocol::Sse => {
                token(&args.token_secret, &format!("bench-{i}"))
            }
            Protocol::Pusher | Protocol::Socketio => String::new(),
            // A uni-directional client's channels come with its token.
            Protocol::UniSse => token_with(&args.token_secret, &format!("bench-{i}"), &channels_of(i)),
        };
        let channels = channels_of(i);
        let protocol = args.protocol;
        pending.spawn(async move {
            let mut client = BenchClient::connect(&target, source, protocol, &token).await?;
            client.subscribe(&channels).await?;
            Ok::<_, ConnectError>((i, client))
        });
    }
    let mut clients = Vec::with_capacity(count);
    let mut failures = 0;
    let mut file_limit = false;
    while let Some(joined) = pending.join_next().await {
        match joined? {
            Ok(client) => clients.push(client),
            Err(ConnectError::FileLimit) => {
                failures += 1;
                file_limit = true;
            }
            Err(error) => {
                failures += 1;
                if failures <= 3 {
                    progress(&format!("connect failed: {error}"));
                }
            }
        }
    }
    if file_limit {
        anyhow::bail!(
            "this process ran out of file descriptors after {} connections (raise `ulimit -n`, or ask for fewer connections)",
            clients.len()
        );
    }
    clients.sort_by_key(|(i, _)| *i);
    progress(&format!(
        "connected {}/{count} ({failures} failed) in {:.1}s",
        clients.len(),
        start.elapsed().as_secs_f64()
    ));
    Ok((clients.into_iter().map(|(_, c)| c).collect(), failures))
}
