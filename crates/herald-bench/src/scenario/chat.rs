//! `chat`: many small rooms where every member publishes (as a client) and
//! receives everything said in its room. Needs a namespace whose
//! subscribers may publish (`publish = "subscribers"`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::json;

use super::{connect_all, progress, ConnectArgs, Latency, LatencyRecorder};
use crate::publisher::{unix_micros, Schedule};
use crate::sequence::{Anomalies, SequenceChecker};

#[derive(Debug, Clone, Serialize)]
pub struct ChatArgs {
    #[serde(flatten)]
    pub connect: ConnectArgs,
    /// The namespace of the rooms: channels are `<namespace>:room<i>`.
    pub namespace: String,
    /// This process's rooms are `first_room..first_room + rooms`.
    pub first_room: usize,
    pub rooms: usize,
    pub members_per_room: usize,
    /// Messages each member sends per second.
    pub rate_per_member: f64,
    #[serde(with = "super::as_text")]
    pub duration: Duration,
    /// Report the latency histogram as (µs, count) pairs too.
    pub latency_counts: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatResult {
    pub connected: usize,
    pub connect_failures: usize,
    /// Subscriptions asked for again after a temporary error (the server's
    /// engine did not answer in time).
    pub subscribe_retries: usize,
    /// Publications the server refused (each counts as lost by every
    /// member), and the first refusal.
    pub publish_refused: usize,
    pub first_refusal: Option<String>,
    /// Subscriptions the server ended during the run (such as 2500
    /// "insufficient state"). A member subscribes again at once,
    /// recovering from its last position, as SDKs do.
    pub unsubscribed: usize,
    /// Of those, the ones that could not recover (what was missed counts
    /// as lost) or could not subscribe again.
    pub not_recovered: usize,
    pub sent: u64,
    pub expected_deliveries: u64,
    pub delivered: u64,
    pub deliveries_per_second: f64,
    pub latency: Latency,
    pub anomalies: Anomalies,
    /// The latency histogram as (µs, count) pairs, when asked for.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub latency_counts: Vec<(u64, u64)>,
}

pub async fn run(args: &ChatArgs) -> anyhow::Result<ChatResult> {
    let members = args.rooms * args.members_per_room;
    let room_of = |i: usize| args.first_room + i / args.members_per_room.max(1);
    let room_name = |room: usize| format!("{}:room{room}", args.namespace);
    // Clients are numbered across processes (their tokens' users differ);
    // `i` below is this process's own count.
    let first_client = args.first_room * args.members_per_room;
    let connect = ConnectArgs { first_client, ..args.connect.clone() };
    let (connected, failures) =
        connect_all(&connect, members, |client| vec![room_name(room_of(client - first_client))]).await?;
    anyhow::ensure!(failures == 0, "{failures} members could not join; every room must be complete");

    let delivered = Arc::new(AtomicU64::new(0));
    let not_recovered = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(LatencyRecorder::new());
    let schedule = Schedule::new(args.rate_per_member);
    let per_member = (args.rate_per_member * args.duration.as_secs_f64()).round() as u64;
    // Each member's schedule is shifted by up to one interval (below), so
    // its last message may be due up to an interval after the duration.
    let deadline = schedule.start + args.duration + schedule.interval + Duration::from_secs(5);
    let mut tasks = Vec::new();
    for (i, mut client) in connected.into_iter().enumerate() {
        let channel = room_name(room_of(i));
        // Members speak out of step: each one's schedule is shifted by its
        // share of one interval, so the load is spread, not a burst.
        let phase = schedule.interval.mul_f64(i as f64 / members.max(1) as f64);
        let schedule = Schedule { start: schedule.start + phase, start_wall: schedule.start_wall + phase, ..schedule };
        let (delivered, latencies, not_recovered) = (delivered.clone(), latencies.clone(), not_recovered.clone());
        let expected_here = per_member * args.members_per_room as u64;
        tasks.push(tokio::spawn(async move {
            let mut checker = SequenceChecker::default();
            let (mut sent, mut received) = (0u64, 0u64);
            let mut batch = Vec::new();
            while received < expected_here && tokio::time::Instant::now() < deadline {
                // Tokio's timer (up to a millisecond late, counted as latency):
                // a blocking-pool sleep per member would not scale to thousands.
                let (due, due_micros) = schedule.due(sent);
                let can_send = sent < per_member;
                tokio::select! {
                    _ = tokio::time::sleep_until(due), if can_send => {
                        let data = json!({"seq": sent, "ts": due_micros, "from": i});
                        if client.publish_nowait(&channel, &data).await.is_err() { break; }
                        sent += 1;
                    }
                    read = client.next_publications(&mut batch) => {
                        if read.is_err() { break }
                        let ended = client.take_ended();
                        if !ended.is_empty() {
                            match client.subscribe_recovering(&ended).await {
                                Ok(again) if again.recovered => batch.extend(again.publications),
                                Ok(again) => {
                                    not_recovered.fetch_add(ended.len(), Ordering::Relaxed);
                                    batch.extend(again.publications);
                                }
                                Err(_) => {
                                    not_recovered.fetch_add(ended.len(), Ordering::Relaxed);
                                    break;
                                }
                            }
                        }
                        let now = unix_micros(SystemTime::now());
                        latencies.record(i, batch.iter().map(|p| now.saturating_sub(p.sent_at_micros)));
                        for publication in &batch {
                            let key = format!("{}/{}", publication.channel, publication.from.unwrap_or(0));
                            checker.observe(&key, publication.seq);
                            received += 1;
                            delivered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
            (i, checker, sent)
        }));
    }
    let reporter = {
        let delivered = delivered.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                progress(&format!("chat: delivered {}", delivered.load(Ordering::Relaxed)));
            }
        })
    };
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await?);
    }
    reporter.abort();

    let sent_by: HashMap<usize, u64> = outcomes.iter().map(|(i, _, sent)| (*i, *sent)).collect();
    let mut anomalies = Anomalies::default();
    let mut expected = 0;
    for (i, checker, _) in outcomes {
        let room = room_of(i);
        let first = (room - args.first_room) * args.members_per_room;
        let everyone: HashMap<String, u64> = (first..first + args.members_per_room)
            .map(|j| (format!("{}/{j}", room_name(room)), sent_by.get(&j).copied().unwrap_or(0)))
            .collect();
        expected += everyone.values().sum::<u64>();
        anomalies.add(checker.finish(&everyone).0);
    }
    let delivered = delivered.load(Ordering::Relaxed);
    let (publish_refused, first_refusal) = crate::client::refused();
    let latency_counts = if args.latency_counts { latencies.counts() } else { Vec::new() };
    Ok(ChatResult {
        connected: members,
        connect_failures: failures,
        subscribe_retries: crate::client::subscribe_retries(),
        publish_refused,
        first_refusal,
        unsubscribed: crate::client::unsubscribed(),
        not_recovered: not_recovered.load(Ordering::Relaxed),
        sent: sent_by.values().sum(),
        expected_deliveries: expected,
        delivered,
        deliveries_per_second: delivered as f64 / args.duration.as_secs_f64(),
        latency: Latency::from_histogram(&latencies.merged()),
        anomalies,
        latency_counts,
    })
}
