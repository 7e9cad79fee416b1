//! `connections`: ramp to N subscribed, mostly idle connections, hold them,
//! and read the server's memory and CPU from `/proc/<pid>` when given.

use std::time::Duration;

use serde::Serialize;

use super::{connect_all, progress, ConnectArgs};
use crate::procfs::ProcessSample;

#[derive(Debug, Clone, Serialize)]
pub struct ConnectionsArgs {
    #[serde(flatten)]
    pub connect: ConnectArgs,
    pub count: usize,
    /// How long to hold the connections idle (pings still flow).
    #[serde(with = "super::as_text")]
    pub hold: Duration,
    /// The server's process id, to read its RSS and CPU.
    pub server_pid: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnectionsResult {
    pub connected: usize,
    pub connect_failures: usize,
    pub connect_seconds: f64,
    pub connects_per_second: f64,
    /// Server RSS growth per held connection, in KiB.
    pub server_rss_kib_per_connection: Option<f64>,
    /// Server CPU while idle, in percent of one core.
    pub server_idle_cpu_percent: Option<f64>,
    /// Connections that stopped being held during the hold: the server
    /// closed them or they broke (the memory figure is then for fewer
    /// connections than it divides by), or, for an emulated client, a
    /// heartbeat answer it had to post failed. `None` when the connections
    /// were held by worker processes.
    pub lost_during_hold: Option<usize>,
}

pub async fn run(args: &ConnectionsArgs) -> anyhow::Result<ConnectionsResult> {
    let before = args.server_pid.map(ProcessSample::read).transpose()?;
    let started = std::time::Instant::now();
    let (mut clients, failures) = connect_all(&args.connect, args.count, |_| vec!["idle".to_owned()]).await?;
    let connect_seconds = started.elapsed().as_secs_f64();

    let held_from = args.server_pid.map(ProcessSample::read).transpose()?;
    progress(&format!("holding {} connections for {}", clients.len(), humantime::format_duration(args.hold)));
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut holders = Vec::new();
    for mut client in clients.drain(..) {
        let mut stop = stop.clone();
        holders.push(tokio::spawn(async move {
            let held = client
                .hold(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
            (client, held.is_ok())
        }));
    }
    tokio::time::sleep(args.hold).await;
    let held_until = args.server_pid.map(ProcessSample::read).transpose()?;
    let _ = stop_tx.send(true);
    let connected = holders.len();
    let mut lost = 0;
    for holder in holders {
        let (client, held) = holder.await?;
        lost += usize::from(!held);
        drop(client);
    }
    if lost > 0 {
        progress(&format!("{lost} of {connected} connections ended during the hold"));
    }

    let per_connection = match (&before, &held_until) {
        (Some(b), Some(h)) if connected > 0 => Some((h.rss_kib as f64 - b.rss_kib as f64) / connected as f64),
        _ => None,
    };
    let idle_cpu = match (&held_from, &held_until) {
        (Some(a), Some(b)) => Some(b.cpu_percent_since(a)),
        _ => None,
    };
    Ok(ConnectionsResult {
        connected,
        connect_failures: failures,
        connect_seconds,
        connects_per_second: connected as f64 / connect_seconds.max(f64::EPSILON),
        server_rss_kib_per_connection: per_connection,
        server_idle_cpu_percent: idle_cpu,
        lost_during_hold: Some(lost),
    })
}
