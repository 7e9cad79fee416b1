//! `soak`: a chaos soak. The soak starts its own cluster (one
//! `redis-server`, several `herald serve` nodes over it, see [`cluster`]),
//! connects clients that follow channels recoverably (see [`follower`]),
//! publishes through the nodes' APIs (see [`publishers`]), and injects
//! faults all along (see [`faults`]): nodes SIGKILLed and restarted, Redis
//! SIGKILLed and restarted with or without its data, clients cut in
//! bursts, clients stalled until the server gives up on them.
//!
//! Then the faults stop, and every client must catch up with the last
//! publication of each of its channels. The checker (see [`checker`])
//! holds every client to Herald's promise: every publication delivered
//! once and in order, or the client told `recovered: false`. A clean soak
//! reports no anomaly of any kind.

pub mod checker;
pub mod cluster;
pub mod faults;
pub mod follower;
pub mod publishers;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use serde::Serialize;
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::client::Target;
use crate::publisher::ApiClient;
use crate::scenario::progress;
use checker::{Anomalies, Truth};
use cluster::{Cluster, NodeSettings, API_KEY, NAMESPACE};
use faults::{Clients, FaultPlan, FaultsInjected};
use follower::{Follower, Shared};
use publishers::Published;

#[derive(Debug, Clone, Serialize)]
pub struct SoakArgs {
    /// The `herald` binary the nodes run.
    pub herald: PathBuf,
    /// Where the nodes' configs and logs, and Redis's data, go.
    pub dir: PathBuf,
    pub nodes: usize,
    pub clients: usize,
    pub channels: usize,
    pub channels_per_client: usize,
    /// Publications per second, over all channels.
    pub rate: f64,
    #[serde(with = "crate::scenario::as_text")]
    pub duration: Duration,
    /// How often a fault is injected.
    #[serde(with = "crate::scenario::as_text")]
    pub fault_every: Duration,
    /// The share of clients with a small receive buffer, which faults stall.
    pub stallable_share: f64,
    /// Padding in each publication, in bytes.
    pub payload_bytes: usize,
    pub seed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SoakResult {
    pub seconds: f64,
    /// Publications the API accepted.
    pub published: u64,
    /// Publish attempts refused or unanswered (a node or Redis away) and retried.
    pub publish_retries: u64,
    /// Publications clients received, live or in recovery replies.
    pub deliveries: u64,
    pub faults: FaultsInjected,
    pub faults_injected: u64,
    pub connects: u64,
    /// Subscriptions that recovered what they missed.
    pub recovered: u64,
    /// Subscriptions told `recovered: false` (Redis lost the stream).
    pub not_recovered: u64,
    /// Subscriptions the server ended with 2500 (insufficient state), resubscribed.
    pub resubscribes: u64,
    /// Subscribe attempts refused with a temporary error (Redis away), retried.
    pub temporary_errors: u64,
    /// How client connections ended, by reason (the server's close code
    /// 3008: too slow).
    pub connections_ended: BTreeMap<String, u64>,
    /// From the end of the faults until every client had caught up.
    pub seconds_to_catch_up: f64,
    pub anomalies: Anomalies,
    pub anomaly_count: u64,
    /// The first few anomalies, described.
    pub notes: Vec<String>,
}

/// How long clients may take to catch up once the faults stop.
const CATCH_UP: Duration = Duration::from_secs(60);

pub async fn run(args: &SoakArgs) -> anyhow::Result<SoakResult> {
    anyhow::ensure!(args.nodes >= 1 && args.clients >= 1 && args.channels >= 1, "nodes, clients and channels ≥ 1");
    anyhow::ensure!(
        args.channels_per_client >= 1 && args.channels_per_client <= args.channels,
        "--channels-per-client must be between 1 and --channels"
    );
    let settings =
        NodeSettings { queue_max_bytes: 128 * 1024, write_timeout: Duration::from_secs(2), history_size: 1_000_000 };
    progress(&format!("soak: starting redis and {} nodes in {}", args.nodes, args.dir.display()));
    let cluster = Cluster::start(&args.herald, &args.dir, args.nodes, &settings).await?;
    let names: Vec<(u32, String)> = (0..args.channels).map(|c| (c as u32, format!("{NAMESPACE}:ch{c}"))).collect();
    let shared = Arc::new(Shared {
        targets: (0..args.nodes).map(|i| Target::parse(&cluster.url(i))).collect::<anyhow::Result<_>>()?,
        truth: Truth::default(),
        counters: Default::default(),
    });
    let apis: Vec<_> = (0..args.nodes).map(|i| cluster.api(i)).collect();

    // Clients, each on its channels; every so many has a small receive buffer.
    let (stop_clients, clients_stopped) = watch::channel(false);
    let stallable_every = (1.0 / args.stallable_share.max(0.0001)).round().max(1.0) as usize;
    let (mut orders, mut stallable, mut seen, mut tasks) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..args.clients {
        let channels =
            (0..args.channels_per_client).filter_map(|j| names.get((i + j) % args.channels).cloned()).collect();
        let stalls = i % stallable_every == 0;
        if stalls {
            stallable.push(i);
        }
        let follower = Follower::new(i, channels, stalls.then_some(4096));
        let (order_tx, order_rx) = mpsc::unbounded_channel();
        orders.push(order_tx);
        seen.push((follower.channels.clone(), follower.seen.clone()));
        tasks.push(tokio::spawn(follower.run(shared.clone(), order_rx, clients_stopped.clone())));
    }
    wait_for("every client to subscribe", Duration::from_secs(60), || all_live(&seen)).await?;
    progress(&format!("soak: {} clients following {} channels", args.clients, args.channels));

    // Publishers, each with its share of the channels.
    let started = Instant::now();
    let (stop_publishing, publishing_stopped) = watch::channel(false);
    let published = Arc::new(Published::default());
    let publishers_count = args.channels.min(4);
    let mut publishers = Vec::new();
    for p in 0..publishers_count {
        let own: Vec<_> = names.iter().filter(|(c, _)| *c as usize % publishers_count == p).cloned().collect();
        let rate = args.rate / publishers_count as f64;
        let task = publishers::publish(
            p,
            own,
            (rate, args.payload_bytes),
            apis.clone(),
            shared.clone(),
            published.clone(),
            publishing_stopped.clone(),
        );
        publishers.push(tokio::spawn(task));
    }

    // Faults, until the run's time is up.
    let (stop_faults, faults_stopped) = watch::channel(false);
    let (injected_tx, injected) = watch::channel(FaultsInjected::default());
    let plan = FaultPlan {
        every: args.fault_every,
        node_down: Duration::from_secs(2),
        redis_down: Duration::from_secs(1),
        cut_share: 0.25,
        stall_share: 0.5,
        stall_for: settings.write_timeout * 8,
    };
    let clients = Clients { orders, stallable };
    let rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let faults = tokio::spawn(faults::inject(cluster, plan, clients, rng, faults_stopped, injected_tx));

    let mut report_at = Instant::now();
    while started.elapsed() < args.duration {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if report_at.elapsed() >= Duration::from_secs(5) {
            report_at = Instant::now();
            progress(&progress_line(started, &published, &shared, &injected.borrow(), &seen));
        }
        if faults.is_finished() {
            break;
        }
    }
    let _ = stop_faults.send(true);
    let cluster = faults.await??;
    let _ = stop_publishing.send(true);
    for publisher in publishers {
        publisher.await??;
    }
    let settle_started = Instant::now();
    progress("soak: faults stopped; waiting for every client to catch up");
    let tops = tops(&cluster, &names).await?;
    let caught_up = wait_for("every client to catch up", CATCH_UP, || all_caught_up(&seen, &tops)).await.is_ok();
    let seconds_to_catch_up = if caught_up { settle_started.elapsed().as_secs_f64() } else { f64::NAN };
    let behind = behind(&seen, &tops);
    let _ = stop_clients.send(true);
    for task in tasks {
        task.await?;
    }
    drop(cluster);

    let mut anomalies = Anomalies { mismatched: published.mismatched.load(Ordering::Relaxed), ..Default::default() };
    let mut notes = Vec::new();
    let mut connections_ended = BTreeMap::new();
    for (i, (_, seen)) in seen.iter().enumerate() {
        let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
        anomalies.add(&seen.anomalies);
        notes.extend(seen.notes.iter().map(|n| format!("client {i}: {n}")));
        for follow in &seen.follows {
            follow.finish(&mut anomalies);
        }
        for (why, count) in &seen.ended {
            *connections_ended.entry(why.clone()).or_default() += count;
        }
    }
    notes.truncate(15);
    anomalies.behind = behind.len() as u64;
    notes.extend(behind.into_iter().take(5));
    let counters = &shared.counters;
    let faults = injected.borrow().clone();
    Ok(SoakResult {
        seconds: started.elapsed().as_secs_f64(),
        published: published.accepted.load(Ordering::Relaxed),
        publish_retries: published.retries.load(Ordering::Relaxed),
        deliveries: counters.deliveries.load(Ordering::Relaxed),
        faults_injected: faults.total(),
        faults,
        connects: counters.connects.load(Ordering::Relaxed),
        recovered: counters.recovered.load(Ordering::Relaxed),
        not_recovered: counters.not_recovered.load(Ordering::Relaxed),
        resubscribes: counters.resubscribes.load(Ordering::Relaxed),
        temporary_errors: counters.temporary_errors.load(Ordering::Relaxed),
        connections_ended,
        seconds_to_catch_up,
        anomaly_count: anomalies.total(),
        anomalies,
        notes,
    })
}

type SeenList = Vec<(Vec<(u32, String)>, Arc<std::sync::Mutex<follower::Seen>>)>;

fn all_live(seen: &SeenList) -> bool {
    seen.iter().all(|(_, s)| s.lock().unwrap_or_else(|e| e.into_inner()).follows.iter().all(|f| f.is_live()))
}

fn all_caught_up(seen: &SeenList, tops: &HashMap<String, (String, u64)>) -> bool {
    seen.iter().all(|(channels, s)| {
        let s = s.lock().unwrap_or_else(|e| e.into_inner());
        channels
            .iter()
            .zip(&s.follows)
            .all(|((_, name), follow)| tops.get(name).is_some_and(|(epoch, offset)| follow.caught_up(epoch, *offset)))
    })
}

/// Every subscription not caught up with its channel, described.
fn behind(seen: &SeenList, tops: &HashMap<String, (String, u64)>) -> Vec<String> {
    let mut behind = Vec::new();
    for (i, (channels, s)) in seen.iter().enumerate() {
        let s = s.lock().unwrap_or_else(|e| e.into_inner());
        for ((_, name), follow) in channels.iter().zip(&s.follows) {
            let top = tops.get(name);
            if !top.is_some_and(|(epoch, offset)| follow.caught_up(epoch, *offset)) {
                let top = top.map_or("unknown".to_owned(), |(e, o)| format!("{o}@{e}"));
                behind.push(format!("client {i}, {name}: {} while the channel is at {top}", follow.describe()));
            }
        }
    }
    behind
}

async fn wait_for(what: &str, patience: Duration, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + patience;
    while !done() {
        anyhow::ensure!(Instant::now() < deadline, "timed out after {patience:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Each channel's stream position once publishing has stopped.
async fn tops(cluster: &Cluster, names: &[(u32, String)]) -> anyhow::Result<HashMap<String, (String, u64)>> {
    let headers = format!("X-API-Key: {API_KEY}\r\n");
    let mut tops = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    for (c, name) in names {
        let body = json!({"channel": name, "limit": 0}).to_string();
        loop {
            let mut api = ApiClient::new(cluster.api(*c as usize % cluster.len()));
            if let Ok((200, reply)) = api.post("/api/history", &headers, &body).await {
                let result = serde_json::from_str::<serde_json::Value>(&reply)?["result"].clone();
                let epoch = result["epoch"].as_str().unwrap_or("").to_owned();
                tops.insert(name.clone(), (epoch, result["offset"].as_u64().unwrap_or(0)));
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "the API would not say where {name} ends");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(tops)
}

fn progress_line(
    started: Instant,
    published: &Published,
    shared: &Shared,
    faults: &FaultsInjected,
    seen: &SeenList,
) -> String {
    let anomalies: u64 =
        seen.iter().map(|(_, s)| s.lock().unwrap_or_else(|e| e.into_inner()).anomalies.total()).sum::<u64>()
            + published.mismatched.load(Ordering::Relaxed);
    let counters = &shared.counters;
    format!(
        "soak {:>5.0}s: {} published, {} delivered, {} faults, {} recovered, {} told recovered: false, {} anomalies",
        started.elapsed().as_secs_f64(),
        published.accepted.load(Ordering::Relaxed),
        counters.deliveries.load(Ordering::Relaxed),
        faults.total(),
        counters.recovered.load(Ordering::Relaxed),
        counters.not_recovered.load(Ordering::Relaxed),
        anomalies,
    )
}
