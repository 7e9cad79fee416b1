//! `fanout`: N subscribers over M channels, P publications per second
//! through the server API; reports deliveries per second, publish→deliver
//! latency percentiles, and loss, duplicates and reordering.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::watch;

use super::{connect_all, progress, ConnectArgs, Latency};
use crate::publisher::{unix_micros, ApiClient, Schedule};
use crate::sequence::{Anomalies, SequenceChecker};

/// What the scenario does.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutArgs {
    #[serde(flatten)]
    pub connect: ConnectArgs,
    /// The server API, `IP:port`.
    pub api: std::net::SocketAddr,
    #[serde(skip)]
    pub api_key: String,
    /// Subscribers in all.
    pub subscribers: usize,
    /// Channels the subscribers are spread over (round-robin).
    pub channels: usize,
    /// Publications per second, over all channels.
    pub rate: f64,
    pub duration: Duration,
    /// Padding added to each publication, in bytes.
    pub payload_bytes: usize,
}

/// What the scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutResult {
    pub connected: usize,
    pub connect_failures: usize,
    pub published: u64,
    pub publish_failures: u64,
    pub expected_deliveries: u64,
    pub delivered: u64,
    pub deliveries_per_second: f64,
    pub latency: Latency,
    pub anomalies: Anomalies,
}

fn channel_name(i: usize) -> String {
    format!("bench{i}")
}

pub async fn run(args: &FanoutArgs) -> anyhow::Result<FanoutResult> {
    let channels = args.channels.max(1);
    let (connected, connect_failures) =
        connect_all(&args.connect, args.subscribers, |i| vec![channel_name(i % channels)]).await?;
    let subscribers_per_channel: Vec<u64> =
        (0..channels).map(|c| (0..connected.len()).filter(|i| i % channels == c).count() as u64).collect();

    let delivered = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop) = watch::channel(false);
    let mut readers = Vec::new();
    for mut client in connected {
        let delivered = delivered.clone();
        let mut stop = stop.clone();
        readers.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
            let mut checker = SequenceChecker::default();
            loop {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    received = client.next_publications() => {
                        let Ok(received) = received else { break };
                        let now = unix_micros(SystemTime::now());
                        for publication in received {
                            let _ = histogram.record(now.saturating_sub(publication.sent_at_micros).max(1));
                            checker.observe(&publication.channel, publication.seq);
                            delivered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            (histogram, checker)
        }));
    }

    let total = (args.rate * args.duration.as_secs_f64()).round() as u64;
    let pad = "x".repeat(args.payload_bytes);
    let mut api = ApiClient::new(args.api, &args.api_key);
    let schedule = Schedule::new(args.rate);
    let mut sent_per_channel: HashMap<String, u64> = HashMap::new();
    let (mut published, mut failures, mut expected) = (0u64, 0u64, 0u64);
    let mut last_report = tokio::time::Instant::now();
    for i in 0..total {
        let (due, due_micros) = schedule.due(i);
        tokio::time::sleep_until(due).await;
        let channel = i as usize % channels;
        let name = channel_name(channel);
        let seq = *sent_per_channel.get(&name).unwrap_or(&0);
        let body = format!(r#"{{"channel":"{name}","data":{{"seq":{seq},"ts":{due_micros},"pad":"{pad}"}}}}"#);
        match api.call("publish", &body).await {
            Ok((200, reply)) if !reply.contains("\"error\"") => {
                published += 1;
                expected += subscribers_per_channel[channel];
                sent_per_channel.insert(name, seq + 1);
            }
            Ok(_) | Err(_) => failures += 1,
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = tokio::time::Instant::now();
            progress(&format!(
                "fanout: published {published}/{total}, delivered {}",
                delivered.load(Ordering::Relaxed)
            ));
        }
    }

    // Let the last publications arrive, then stop the readers.
    let drain_until = tokio::time::Instant::now() + Duration::from_secs(5);
    while delivered.load(Ordering::Relaxed) < expected && tokio::time::Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(true);
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    let mut anomalies = Anomalies::default();
    let mut connected_count = 0;
    for (i, reader) in readers.into_iter().enumerate() {
        let (h, checker) = reader.await?;
        connected_count += 1;
        histogram.add(&h).map_err(|e| anyhow::anyhow!("merging histograms: {e:?}"))?;
        // Each subscriber follows one channel: whatever of it never arrived is lost.
        let name = channel_name(i % channels);
        let sent = sent_per_channel.get(&name).copied().unwrap_or(0);
        let (found, _) = checker.finish(&HashMap::from([(name, sent)]));
        anomalies.add(found);
    }
    let delivered = delivered.load(Ordering::Relaxed);
    Ok(FanoutResult {
        connected: connected_count,
        connect_failures,
        published,
        publish_failures: failures,
        expected_deliveries: expected,
        delivered,
        deliveries_per_second: delivered as f64 / args.duration.as_secs_f64(),
        latency: Latency::from_histogram(&histogram),
        anomalies,
    })
}
