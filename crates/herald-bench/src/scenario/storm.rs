//! `reconnect-storm`: N clients subscribed recoverably while publications
//! flow; then every connection drops at once (the bench cuts them, or a
//! node is killed with `--kill-pid`, or drained with `--drain-pid`: sent
//! SIGTERM, it closes its clients over its `http.drain_window`). Each
//! client reconnects, to the next
//! URL when there are several (or to a `--failover-url`), and resubscribes from its last position, as
//! the Centrifuge SDKs do. Reports how long until every client was back and
//! recovered, what was lost, duplicated or reordered across the storm, and
//! the latency of live deliveries during it (publications due after the
//! storm began, received live: on the nodes still serving).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use super::{connect_all, progress, token, ConnectArgs, Latency, LatencyRecorder};
use crate::client::{BenchClient, Target};
use crate::publisher::{unix_micros, Alone, ApiClient, PublishVia, Schedule};
use crate::sequence::{Anomalies, SequenceChecker};

#[derive(Debug, Clone, Serialize)]
pub struct StormArgs {
    #[serde(flatten)]
    pub connect: ConnectArgs,
    #[serde(skip)]
    pub publish: PublishVia,
    /// A namespace with history and recovery: channels are `<ns>:storm<i>`.
    pub namespace: String,
    pub clients: usize,
    pub channels: usize,
    /// Publications per second, over all channels, before, during and after the storm.
    pub rate: f64,
    /// When the storm starts, after everyone is connected.
    #[serde(with = "super::as_text")]
    pub storm_after: Duration,
    /// How long publications continue after the storm starts.
    #[serde(with = "super::as_text")]
    pub publish_for: Duration,
    /// Kill this process (a node) instead of cutting connections.
    pub kill_pid: Option<u32>,
    /// Or send it SIGTERM: a Herald node drains.
    pub drain_pid: Option<u32>,
    /// Where clients reconnect; empty: the next of `connect.urls`.
    pub failover_urls: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StormResult {
    pub clients: usize,
    pub published: u64,
    /// Clients whose connection dropped.
    pub dropped: usize,
    /// Dropped clients back, subscribed and recovered.
    pub reconnected: usize,
    /// From the storm until the last client was back.
    pub seconds_to_all_reconnected: f64,
    /// From the storm until half, nine in ten and 99 in 100 of the
    /// dropped clients were back: how the storm's time is spread.
    pub seconds_to_half_back: f64,
    pub seconds_to_90_percent_back: f64,
    pub seconds_to_99_percent_back: f64,
    /// Clients told `recovered: false` (their losses are then expected).
    pub not_recovered: usize,
    pub expected_deliveries: u64,
    pub delivered: u64,
    pub anomalies: Anomalies,
    /// Publications due after the storm began and received live (not in a
    /// recovery reply): what clients of the serving nodes saw meanwhile.
    pub latency_during_storm: Latency,
}

fn channel_name(namespace: &str, i: usize) -> String {
    format!("{namespace}:storm{i}")
}

/// Reconnects until it works: each attempt goes to the next URL, after a
/// short, growing, jittered pause, as client SDKs back off.
async fn reconnect(args: &ConnectArgs, targets: &[Target], i: usize, attempt_base: usize) -> BenchClient {
    let mut delay = Duration::from_millis(50 + (i % 200) as u64);
    for attempt in attempt_base.. {
        let target = &targets[attempt % targets.len()];
        let token = token(&args.token_secret, &format!("bench-{i}"));
        let source = super::source_address(args, i);
        if let Ok(client) = BenchClient::connect(target, source, args.protocol, &token).await {
            return client;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
    unreachable!("the loop only ends by returning")
}

pub async fn run(args: &StormArgs) -> anyhow::Result<StormResult> {
    anyhow::ensure!(
        args.connect.protocol.centrifuge(),
        "reconnect-storm measures recovery, which the centrifuge protocol has"
    );
    let channels = args.channels.max(1);
    let names: Vec<String> = (0..channels).map(|c| channel_name(&args.namespace, c)).collect();
    let reconnect_urls = if args.failover_urls.is_empty() { &args.connect.urls } else { &args.failover_urls };
    let targets: Vec<Target> = reconnect_urls.iter().map(|u| Target::parse(u)).collect::<anyhow::Result<_>>()?;
    let (clients, failures) = connect_all(&args.connect, args.clients, |_| Vec::new()).await?;
    anyhow::ensure!(failures == 0, "{failures} clients could not connect before the storm");

    let (storm_tx, storm) = watch::channel(false);
    let (stop_tx, stop) = watch::channel(false);
    let back = Arc::new(AtomicUsize::new(0));
    let not_recovered = Arc::new(AtomicUsize::new(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let dropped = Arc::new(AtomicUsize::new(0));
    let subscribed = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(LatencyRecorder::new());
    // Unix microseconds at which the storm began; 0 until then.
    let storm_began = Arc::new(AtomicU64::new(0));
    let node_stopped = args.kill_pid.or(args.drain_pid).is_some();
    // When each client was back.
    let back_at = Arc::new(std::sync::Mutex::new(Vec::with_capacity(args.clients)));
    let mut tasks = Vec::new();
    for (i, mut client) in clients.into_iter().enumerate() {
        let channel = vec![names[i % channels].clone()];
        let (mut storm, mut stop) = (storm.clone(), stop.clone());
        let (back, not_recovered, delivered, dropped_count, subscribed) =
            (back.clone(), not_recovered.clone(), delivered.clone(), dropped.clone(), subscribed.clone());
        let (connect, targets, kill) = (args.connect.clone(), targets.clone(), node_stopped);
        let (latencies, storm_began, back_at) = (latencies.clone(), storm_began.clone(), back_at.clone());
        tasks.push(tokio::spawn(async move {
            let mut checker = SequenceChecker::default();
            let observe = |checker: &mut SequenceChecker, received: &[crate::client::Received]| {
                for publication in received {
                    checker.observe(&publication.channel, publication.seq);
                    delivered.fetch_add(1, Ordering::Relaxed);
                }
            };
            let first = client.subscribe_recovering(&channel).await?;
            observe(&mut checker, &first.publications);
            subscribed.fetch_add(1, Ordering::Relaxed);
            let mut stormed = false;
            let mut received = Vec::new();
            loop {
                let dropped = tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    _ = storm.wait_for(|s| *s), if !stormed && !kill => {
                        stormed = true;
                        true
                    }
                    read = client.next_publications(&mut received) => match read {
                        Ok(()) => {
                            let began = storm_began.load(Ordering::Relaxed);
                            if began > 0 {
                                let now = unix_micros(std::time::SystemTime::now());
                                let during = received.iter().filter(|p| p.sent_at_micros >= began);
                                latencies.record(i, during.map(|p| now.saturating_sub(p.sent_at_micros)));
                            }
                            observe(&mut checker, &received);
                            false
                        }
                        Err(_) => true,
                    },
                };
                if !dropped {
                    continue;
                }
                dropped_count.fetch_add(1, Ordering::Relaxed);
                let positions = client.positions().clone();
                client.abort();
                let mut fresh = reconnect(&connect, &targets, i, i + 1).await;
                fresh.set_positions(positions);
                let outcome = loop {
                    match fresh.subscribe_recovering(&channel).await {
                        Ok(outcome) => break outcome,
                        Err(_) => {
                            let positions = fresh.positions().clone();
                            fresh = reconnect(&connect, &targets, i, i + 2).await;
                            fresh.set_positions(positions);
                        }
                    }
                };
                if !outcome.recovered {
                    not_recovered.fetch_add(1, Ordering::Relaxed);
                }
                observe(&mut checker, &outcome.publications);
                client = fresh;
                back.fetch_add(1, Ordering::Relaxed);
                back_at.lock().unwrap_or_else(|e| e.into_inner()).push(Instant::now());
            }
            Ok::<_, anyhow::Error>((i, checker))
        }));
    }

    // Every client is subscribed before the first publication, so all of
    // them must receive every one.
    let ready_by = Instant::now() + Duration::from_secs(60);
    while subscribed.load(Ordering::Relaxed) < args.clients {
        anyhow::ensure!(Instant::now() < ready_by, "clients did not all subscribe within 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total_until_storm = (args.rate * args.storm_after.as_secs_f64()).round() as u64;
    let total = total_until_storm + (args.rate * args.publish_for.as_secs_f64()).round() as u64;
    let schedule = Schedule::new(args.rate);
    let publisher = {
        let (via, names) = (args.publish.clone(), names.clone());
        tokio::spawn(async move {
            let mut api = ApiClient::new(via);
            for i in 0..total {
                let due_micros = schedule.wait(i, Alone::No).await;
                let name = &names[i as usize % names.len()];
                let data = format!(r#"{{"seq":{},"ts":{due_micros}}}"#, i / names.len() as u64);
                let mut attempts = 0;
                while !matches!(api.publish(name, &data).await, Ok(true)) {
                    attempts += 1;
                    anyhow::ensure!(attempts < 50, "publication {i} to {name} kept failing; is the API node alive?");
                    api = ApiClient::new(api_via(&api));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            Ok::<_, anyhow::Error>(total)
        })
    };

    tokio::time::sleep_until(schedule.start + args.storm_after).await;
    let started = Instant::now();
    storm_began.store(unix_micros(std::time::SystemTime::now()), Ordering::Relaxed);
    match (args.kill_pid, args.drain_pid) {
        (Some(pid), _) => {
            progress(&format!("reconnect-storm: killing process {pid}"));
            let status = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status()?;
            anyhow::ensure!(status.success(), "could not kill process {pid}");
        }
        (None, Some(pid)) => {
            progress(&format!("reconnect-storm: sending process {pid} SIGTERM (a node drains)"));
            let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status()?;
            anyhow::ensure!(status.success(), "could not signal process {pid}");
        }
        (None, None) => {
            progress(&format!("reconnect-storm: dropping all {} connections", args.clients));
            let _ = storm_tx.send(true);
        }
    }
    // Cut connections all drop; a killed node drops only its own clients,
    // which the bench learns as they notice.
    let deadline = started + args.publish_for + Duration::from_secs(60);
    // A stopped node's clients notice one by one (a drained node closes
    // them over its window): "all back" is final once no client has
    // dropped for a while.
    let mut last_count = (0, Instant::now());
    let mut settled = |dropped: usize, back: usize| {
        if dropped != last_count.0 {
            last_count = (dropped, Instant::now());
        }
        match node_stopped {
            false => back == args.clients,
            true => dropped > 0 && back == dropped && last_count.1.elapsed() > Duration::from_secs(2),
        }
    };
    while !settled(dropped.load(Ordering::Relaxed), back.load(Ordering::Relaxed)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (down, up) = (dropped.load(Ordering::Relaxed), back.load(Ordering::Relaxed));
        progress(&format!("reconnect-storm: {up} of {down} dropped clients back"));
    }
    let reconnected = back.load(Ordering::Relaxed);
    let dropped = dropped.load(Ordering::Relaxed);
    let published = publisher.await??;
    let sent_per_channel: HashMap<String, u64> =
        (0..channels).map(|c| (names[c].clone(), (total + (channels - c) as u64 - 1) / channels as u64)).collect();
    let expected: u64 = (0..args.clients).map(|i| sent_per_channel[&names[i % channels]]).sum();
    let drain_until = Instant::now() + Duration::from_secs(5);
    while delivered.load(Ordering::Relaxed) < expected && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_tx.send(true);
    let mut anomalies = Anomalies::default();
    for task in tasks {
        let (i, checker) = task.await??;
        let name = &names[i % channels];
        anomalies.add(checker.finish(&HashMap::from([(name.clone(), sent_per_channel[name])])).0);
    }
    // Seconds from the storm until each client was back, in order.
    let mut back_after: Vec<f64> = back_at
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|at| at.saturating_duration_since(started).as_secs_f64())
        .collect();
    back_after.sort_unstable_by(f64::total_cmp);
    let seconds_to_all = back_after.last().copied().unwrap_or(0.0);
    // The time by which `share` of the dropped clients were back; NaN when
    // fewer came back.
    let back_by = |share: f64| {
        let needed = ((dropped as f64 * share).ceil() as usize).max(1);
        back_after.get(needed - 1).copied().unwrap_or(f64::NAN)
    };
    Ok(StormResult {
        clients: args.clients,
        published,
        reconnected,
        dropped,
        seconds_to_all_reconnected: if reconnected == dropped { seconds_to_all } else { f64::NAN },
        seconds_to_half_back: back_by(0.5),
        seconds_to_90_percent_back: back_by(0.9),
        seconds_to_99_percent_back: back_by(0.99),
        not_recovered: not_recovered.load(Ordering::Relaxed),
        expected_deliveries: expected,
        delivered: delivered.load(Ordering::Relaxed),
        anomalies,
        latency_during_storm: Latency::from_histogram(&latencies.merged()),
    })
}

/// A fresh connection's settings, after the old one broke.
fn api_via(api: &ApiClient) -> PublishVia {
    api.via().clone()
}
