//! `fanout`: N subscribers over M channels, P publications per second
//! through the server's HTTP API; reports deliveries per second, publish→deliver
//! latency percentiles, and loss, duplicates and reordering.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::watch;

use super::{connect_all, progress, ConnectArgs, Latency, LatencyRecorder};
use crate::publisher::{unix_micros, ApiClient, PublishVia, Schedule};
use crate::sequence::{Anomalies, SequenceChecker};

/// What the scenario does.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutArgs {
    #[serde(flatten)]
    pub connect: ConnectArgs,
    /// How publications are sent (Herald's API, a Pusher API, a plain POST).
    #[serde(skip)]
    pub publish: PublishVia,
    /// Subscribers in all.
    pub subscribers: usize,
    /// Channels the subscribers are spread over (round-robin).
    pub channels: usize,
    /// Publications per second, over all channels.
    pub rate: f64,
    #[serde(with = "super::as_text")]
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
    /// Publishes that failed even after retries (the run then fails).
    pub publish_failures: u64,
    pub expected_deliveries: u64,
    pub delivered: u64,
    pub deliveries_per_second: f64,
    pub latency: Latency,
    pub anomalies: Anomalies,
}

/// Concurrent API connections publishing.
const MAX_PUBLISHERS: usize = 8;

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
    let latencies = Arc::new(LatencyRecorder::new());
    let (stop_tx, stop) = watch::channel(false);
    let mut readers = Vec::new();
    for (i, mut client) in connected.into_iter().enumerate() {
        let (delivered, latencies) = (delivered.clone(), latencies.clone());
        let mut stop = stop.clone();
        readers.push(tokio::spawn(async move {
            let mut checker = SequenceChecker::default();
            loop {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    received = client.next_publications() => {
                        let Ok(received) = received else { break };
                        let now = unix_micros(SystemTime::now());
                        latencies.record(i, received.iter().map(|p| now.saturating_sub(p.sent_at_micros)));
                        for publication in &received {
                            checker.observe(&publication.channel, publication.seq);
                        }
                        delivered.fetch_add(received.len() as u64, Ordering::Relaxed);
                    }
                }
            }
            checker
        }));
    }

    let total = (args.rate * args.duration.as_secs_f64()).round() as u64;
    let schedule = Schedule::new(args.rate);
    // One publisher per group of channels, so a channel's publications
    // leave in order while several channels publish in parallel.
    let publishers = channels.min(MAX_PUBLISHERS);
    let mut sending = tokio::task::JoinSet::new();
    for k in 0..publishers {
        let (via, pad) = (args.publish.clone(), "x".repeat(args.payload_bytes));
        sending.spawn(async move {
            let mut api = ApiClient::new(via);
            let mut published = 0u64;
            for i in (0..total).filter(|i| (*i as usize % channels) % publishers == k) {
                let (due, due_micros) = schedule.due(i);
                tokio::time::sleep_until(due).await;
                let name = channel_name(i as usize % channels);
                let seq = i / channels as u64;
                let data = format!(r#"{{"seq":{seq},"ts":{due_micros},"pad":"{pad}"}}"#);
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    match api.publish(&name, &data).await {
                        Ok(true) => break,
                        outcome if attempts >= 3 => {
                            anyhow::bail!(
                                "publish {i} to {name} failed three times: {outcome:?}; results would be meaningless"
                            )
                        }
                        _ => continue,
                    }
                }
                published += 1;
            }
            Ok(published)
        });
    }
    let mut published = 0u64;
    let mut last_report = tokio::time::Instant::now();
    while !sending.is_empty() {
        tokio::select! {
            joined = sending.join_next() => {
                if let Some(joined) = joined {
                    published += joined??;
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = tokio::time::Instant::now();
            progress(&format!("fanout: delivered {}", delivered.load(Ordering::Relaxed)));
        }
    }
    let sent_per_channel: HashMap<String, u64> =
        (0..channels).map(|c| (channel_name(c), (total + (channels - c) as u64 - 1) / channels as u64)).collect();
    let expected: u64 = (0..channels).map(|c| sent_per_channel[&channel_name(c)] * subscribers_per_channel[c]).sum();

    // Let the last publications arrive, then stop the readers.
    let drain_until = tokio::time::Instant::now() + Duration::from_secs(5);
    while delivered.load(Ordering::Relaxed) < expected && tokio::time::Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(true);
    let mut anomalies = Anomalies::default();
    let mut connected_count = 0;
    for (i, reader) in readers.into_iter().enumerate() {
        let checker = reader.await?;
        connected_count += 1;
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
        publish_failures: 0,
        expected_deliveries: expected,
        delivered,
        deliveries_per_second: delivered as f64 / args.duration.as_secs_f64(),
        latency: Latency::from_histogram(&latencies.merged()),
        anomalies,
    })
}
