//! Worker processes: one process may hold only so many open files (20,000
//! here), so `connections --workers N` launches N copies of this binary,
//! each holding its share of the connections, and measures the server while
//! all of them hold.
//!
//! A worker prints `connected a/b (f failed)` and then `holding n
//! connections` on stderr once its share is up; the parent reads those
//! lines, samples the server, and stops the workers when the hold is over.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::procfs::ProcessSample;
use crate::scenario::connections::ConnectionsResult;
use crate::scenario::progress;

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
    let exe = std::env::current_exe()?;
    let before = server_pid.map(ProcessSample::read).transpose()?;
    let started = Instant::now();
    let mut children: Vec<Child> = Vec::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for w in 0..workers {
        let share = count / workers + usize::from(w < count % workers);
        let mut child = Command::new(&exe)
            .arg("connections")
            .args(worker_args)
            .args(["--count", &share.to_string(), "--hold", "24h"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send((w, line)).is_err() {
                    return;
                }
            }
            let _ = tx.send((w, "exited".to_owned()));
        });
        children.push(child);
    }
    drop(tx);
    let mut shares = vec![None; workers];
    let mut holding = 0;
    while holding < workers {
        let Some((w, line)) = rx.recv().await else { anyhow::bail!("the workers stopped before holding") };
        if let Some(share) = parse_connected(&line) {
            shares[w] = Some(share);
        } else if line.starts_with("holding ") {
            holding += 1;
        } else if line == "exited" {
            anyhow::bail!("worker {w} exited before holding its connections; run it alone to see why");
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
    })
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
