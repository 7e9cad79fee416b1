//! Worker processes: one process may hold only so many open files (20,000
//! here), so `connections --workers N` and `fanout --workers N` launch N
//! copies of this binary, each holding its share of the connections.
//!
//! For `connections`, a worker prints `connected a/b (f failed)` and then
//! `holding n connections` on stderr once its share is up; the parent reads
//! those lines, samples the server, and stops the workers when the hold is
//! over.
//!
//! For `fanout`, a worker (`fanout-worker`) subscribes its share and prints
//! `subscribed n`, then `delivered n` as publications arrive; the parent
//! publishes, and once everything has arrived (or five seconds passed)
//! writes `stop <sent per channel>` to each worker, which answers with its
//! latencies and anomalies as one JSON line.

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::procfs::ProcessSample;
use crate::scenario::connections::ConnectionsResult;
use crate::scenario::fanout::{self, FanoutArgs, FanoutResult, WorkerReport};
use crate::scenario::{progress, Latency, LatencyRecorder};
use crate::sequence::Anomalies;

/// What one worker reported.
#[derive(Debug, Default, Clone, Copy)]
struct Share {
    connected: usize,
    failed: usize,
}

/// Parses `connected 950/1000 (50 failed) in …`.
fn parse_connected(line: &str) -> Option<Share> {
    let rest = line.strip_prefix("connected ")?;
    let (connected, rest) = rest.split_once('/')?;
    let failed = rest.split_once('(')?.1.split_once(' ')?.0;
    Some(Share { connected: connected.parse().ok()?, failed: failed.parse().ok()? })
}

/// Runs `connections` over `workers` processes; `worker_args` are the
/// command-line arguments every worker gets besides its `--count`.
pub async fn connections(
    workers: usize,
    count: usize,
    hold: Duration,
    server_pid: Option<u32>,
    worker_args: &[String],
) -> anyhow::Result<ConnectionsResult> {
    let before = server_pid.map(ProcessSample::read).transpose()?;
    let started = Instant::now();
    let (mut children, mut lines) = spawn(workers, count, |_, share| {
        let mut args = vec!["connections".to_owned()];
        args.extend_from_slice(worker_args);
        args.extend(["--count".to_owned(), share.to_string(), "--hold".to_owned(), "24h".to_owned()]);
        args
    })?;
    let mut shares = vec![None; workers];
    let mut holding = 0;
    while holding < workers {
        let Some((w, line)) = lines.recv().await else { anyhow::bail!("the workers stopped before holding") };
        let Some(line) = line else {
            anyhow::bail!("worker {w} exited before holding its connections; run it alone to see why");
        };
        if let Some(share) = parse_connected(&line) {
            shares[w] = Some(share);
        } else if line.starts_with("holding ") {
            holding += 1;
        } else {
            progress(&format!("worker {w}: {line}"));
        }
    }
    let connect_seconds = started.elapsed().as_secs_f64();
    let total = shares
        .iter()
        .flatten()
        .fold(Share::default(), |a, s| Share { connected: a.connected + s.connected, failed: a.failed + s.failed });
    progress(&format!(
        "{workers} workers hold {} connections; measuring for {}",
        total.connected,
        humantime::format_duration(hold)
    ));
    let held_from = server_pid.map(ProcessSample::read).transpose()?;
    tokio::time::sleep(hold).await;
    let held_until = server_pid.map(ProcessSample::read).transpose()?;
    for child in &mut children {
        let _ = child.kill().await;
    }
    let per_connection = match (&before, &held_until) {
        (Some(b), Some(h)) if total.connected > 0 => {
            Some((h.rss_kib as f64 - b.rss_kib as f64) / total.connected as f64)
        }
        _ => None,
    };
    let idle_cpu = match (&held_from, &held_until) {
        (Some(a), Some(b)) => Some(b.cpu_percent_since(a)),
        _ => None,
    };
    Ok(ConnectionsResult {
        connected: total.connected,
        connect_failures: total.failed,
        connect_seconds,
        connects_per_second: total.connected as f64 / connect_seconds.max(f64::EPSILON),
        server_rss_kib_per_connection: per_connection,
        server_idle_cpu_percent: idle_cpu,
        lost_during_hold: None,
    })
}

/// Runs `fanout` with the subscribers spread over `workers` processes;
/// `worker_args` are the flags every worker gets to connect.
pub async fn fanout(workers: usize, args: &FanoutArgs, worker_args: &[String]) -> anyhow::Result<FanoutResult> {
    let channels = args.channels.max(1);
    let (mut children, mut lines) = spawn(workers, args.subscribers, |first, share| {
        let mut flags = vec!["fanout-worker".to_owned()];
        flags.extend_from_slice(worker_args);
        for (flag, value) in [("--subscribers", share), ("--channels", channels), ("--first-client", first)] {
            flags.extend([flag.to_owned(), value.to_string()]);
        }
        flags
    })?;
    let delivered: Arc<Vec<AtomicU64>> = Arc::new((0..workers).map(|_| AtomicU64::new(0)).collect());
    let (subscribed_tx, mut subscribed) = tokio::sync::mpsc::unbounded_channel();
    let counts = delivered.clone();
    tokio::spawn(async move {
        while let Some((w, line)) = lines.recv().await {
            match line {
                None => {
                    let _ = subscribed_tx.send(Err(w));
                }
                Some(line) => match line.strip_prefix("delivered ").and_then(|n| n.parse().ok()) {
                    Some(n) => counts[w].store(n, Ordering::Relaxed),
                    None if line.starts_with("subscribed ") => {
                        let _ = subscribed_tx.send(Ok(w));
                    }
                    None => progress(&format!("worker {w}: {line}")),
                },
            }
        }
    });
    for _ in 0..workers {
        match subscribed.recv().await {
            Some(Ok(_)) => {}
            Some(Err(w)) => anyhow::bail!("fanout worker {w} exited before subscribing; run it alone to see why"),
            None => anyhow::bail!("the fanout workers went away"),
        }
    }
    progress(&format!("{workers} workers hold {} subscribers; publishing", args.subscribers));
    let total_delivered = || delivered.iter().map(|d| d.load(Ordering::Relaxed)).sum::<u64>();
    let (published, sent, server_cpu) = fanout::publish_measured(args, total_delivered).await?;

    let stop = format!("stop {}\n", serde_json::to_string(&sent)?);
    let (mut connected, mut connect_failures, mut delivered_all) = (0, 0, 0);
    let mut anomalies = Anomalies::default();
    let latencies = LatencyRecorder::new();
    for (w, child) in children.iter_mut().enumerate() {
        child.stdin.as_mut().expect("stdin is piped").write_all(stop.as_bytes()).await?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let line = BufReader::new(stdout).lines().next_line().await?;
        let report: WorkerReport =
            serde_json::from_str(&line.ok_or_else(|| anyhow::anyhow!("fanout worker {w} ended without its report"))?)?;
        connected += report.connected;
        connect_failures += report.connect_failures;
        delivered_all += report.delivered;
        anomalies.add(report.anomalies);
        latencies.add_counts(&report.latency_counts);
    }
    Ok(FanoutResult {
        connected,
        connect_failures,
        published,
        publish_failures: 0,
        expected_deliveries: fanout::expected_deliveries(&sent, connected, channels),
        delivered: delivered_all,
        deliveries_per_second: delivered_all as f64 / args.duration.as_secs_f64(),
        latency: Latency::from_histogram(&latencies.merged()),
        anomalies,
        server_cpu,
    })
}

/// Starts `workers` copies of this binary splitting `total` clients; `args`
/// gives a worker's arguments from its first client's number and its share.
/// Every worker's stderr lines arrive as `(worker, Some(line))`, then
/// `(worker, None)` when it ends.
#[allow(clippy::type_complexity)]
fn spawn(
    workers: usize,
    total: usize,
    args: impl Fn(usize, usize) -> Vec<String>,
) -> anyhow::Result<(Vec<Child>, tokio::sync::mpsc::UnboundedReceiver<(usize, Option<String>)>)> {
    let exe = std::env::current_exe()?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut children = Vec::new();
    let mut first = 0;
    for w in 0..workers {
        let share = total / workers + usize::from(w < total % workers);
        let mut child = Command::new(&exe)
            .args(args(first, share))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        first += share;
        let stderr = child.stderr.take().expect("stderr is piped");
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send((w, Some(line))).is_err() {
                    return;
                }
            }
            let _ = tx.send((w, None));
        });
        children.push(child);
    }
    Ok((children, rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_progress_lines_are_read() {
        let share = parse_connected("connected 950/1000 (50 failed) in 1.2s").unwrap();
        assert_eq!((share.connected, share.failed), (950, 50));
        assert!(parse_connected("holding 950 connections for 24h").is_none());
    }
}
