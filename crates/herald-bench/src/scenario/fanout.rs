//! `fanout`: N subscribers over M channels, P publications per second
//! through the server's HTTP API; reports deliveries per second, publish→deliver
//! latency percentiles, and loss, duplicates and reordering; given the
//! server's pid, its CPU per delivery too (see `server_cpu.rs`).

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;

use super::{connect_all, histogram_counts, progress, ConnectArgs, Latency};
use crate::publisher::{Alone, ApiClient, PublishVia, Schedule};
use crate::sequence::Anomalies;

mod listening;
mod server_cpu;
pub use listening::{Heard, Listening};
pub use server_cpu::{ServerCpu, ServerMeter};

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
    /// The server's process, to read its CPU from `/proc` (on this machine).
    pub server_pid: Option<u32>,
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
    /// The server's CPU while publishing and delivering, when its pid was given.
    pub server_cpu: Option<ServerCpu>,
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
    let listening = Listening::start(connected, channels, args.connect.first_client)?;
    let (published, sent, server_cpu) = publish_measured(args, || listening.delivered()).await?;
    let report = listening.finish(&sent).await?;
    Ok(FanoutResult {
        connected: report.connected,
        connect_failures,
        published,
        publish_failures: 0,
        expected_deliveries: expected_deliveries(&sent, report.connected, channels),
        delivered: report.delivered,
        deliveries_per_second: report.delivered as f64 / args.duration.as_secs_f64(),
        latency: Latency::from_histogram(&report.latencies),
        anomalies: report.anomalies,
        server_cpu,
    })
}

/// Publications sent to each channel.
pub type SentPerChannel = HashMap<String, u64>;

/// What `subscribers` clients spread round-robin over `channels` should
/// receive in all.
pub fn expected_deliveries(sent: &SentPerChannel, subscribers: usize, channels: usize) -> u64 {
    (0..channels)
        .map(|c| {
            let here = (0..subscribers).filter(|i| i % channels == c).count() as u64;
            sent.get(&channel_name(c)).copied().unwrap_or(0) * here
        })
        .sum()
}

/// Publishes on schedule ([`publish_all`]) and lets the deliveries arrive
/// ([`drain`]), reading the server's CPU over both when its pid is known.
/// Returns how many were published, to which channel, and that CPU.
pub async fn publish_measured(
    args: &FanoutArgs,
    delivered: impl Fn() -> u64,
) -> anyhow::Result<(u64, SentPerChannel, Option<ServerCpu>)> {
    let meter = ServerMeter::start(args.server_pid, delivered())?;
    let (published, sent) = publish_all(args, &delivered).await?;
    drain(expected_deliveries(&sent, args.subscribers, args.channels.max(1)), &delivered).await;
    let server_cpu = meter.map(|meter| meter.finish(delivered())).transpose()?.flatten();
    Ok((published, sent, server_cpu))
}

/// Sends `rate × duration` publications on schedule, round-robin over the
/// channels; `delivered` feeds the progress line. Returns how many were
/// published and to which channel.
async fn publish_all(args: &FanoutArgs, delivered: impl Fn() -> u64) -> anyhow::Result<(u64, SentPerChannel)> {
    let channels = args.channels.max(1);
    let total = (args.rate * args.duration.as_secs_f64()).round() as u64;
    let schedule = Schedule::new(args.rate);
    // One publisher per group of channels, so a channel's publications
    // leave in order while several channels publish in parallel. Each runs
    // on a thread of its own: on the readers' runtime they would queue
    // behind thousands of reader tasks and leave late, which the latency
    // figures would then count against the server; alone on its thread, a
    // publisher ends each wait with the system's timer on it (`Alone::Yes`).
    let publishers = channels.min(MAX_PUBLISHERS);
    let own_threads = (0..publishers).map(|_| OwnThread::start("publisher")).collect::<anyhow::Result<Vec<_>>>()?;
    let mut sending = tokio::task::JoinSet::new();
    for (k, own_thread) in own_threads.iter().enumerate() {
        let (via, pad) = (args.publish.clone(), "x".repeat(args.payload_bytes));
        sending.spawn_on(
            async move {
                let mut api = ApiClient::new(via);
                let mut published = 0u64;
                for i in (0..total).filter(|i| (*i as usize % channels) % publishers == k) {
                    let due_micros = schedule.wait(i, Alone::Yes).await;
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
            },
            own_thread.handle(),
        );
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
            progress(&format!("fanout: delivered {}", delivered()));
        }
    }
    let sent =
        (0..channels).map(|c| (channel_name(c), (total + (channels - c) as u64 - 1) / channels as u64)).collect();
    Ok((published, sent))
}

/// A current-thread runtime on a thread of its own, until dropped.
struct OwnThread {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl OwnThread {
    fn start(name: &str) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new().name(name.to_owned()).spawn(move || {
            runtime.block_on(async {
                let _ = stopped.await;
            })
        })?;
        Ok(Self { handle, stop: Some(stop) })
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

impl Drop for OwnThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Lets the last publications arrive: waits until `delivered` reaches
/// `expected`, for at most five seconds.
async fn drain(expected: u64, delivered: impl Fn() -> u64) {
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    while delivered() < expected && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a fanout worker process reports when told to stop: one JSON line
/// on its stdout.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct WorkerReport {
    pub connected: usize,
    pub connect_failures: usize,
    pub delivered: u64,
    pub anomalies: Anomalies,
    /// Latency in microseconds, as (value, count) pairs.
    pub latency_counts: Vec<(u64, u64)>,
}

/// The worker side of `fanout --workers`: subscribes its share, says
/// `subscribed`, reports `delivered N` on stderr five times a second, and
/// at `stop <sent per channel as JSON>` on stdin prints its report.
pub async fn work(connect: &ConnectArgs, subscribers: usize, channels: usize) -> anyhow::Result<()> {
    use tokio::io::AsyncBufReadExt;
    let channels = channels.max(1);
    let (connected, connect_failures) = connect_all(connect, subscribers, |i| vec![channel_name(i % channels)]).await?;
    progress(&format!("subscribed {}", connected.len()));
    let listening = Listening::start(connected, channels, connect.first_client)?;
    let mut commands = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let sent: SentPerChannel = loop {
        tokio::select! {
            line = commands.next_line() => {
                let line = line?.ok_or_else(|| anyhow::anyhow!("the parent went away"))?;
                let sent = line.strip_prefix("stop ").ok_or_else(|| anyhow::anyhow!("unexpected command {line:?}"))?;
                break serde_json::from_str(sent)?;
            }
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                progress(&format!("delivered {}", listening.delivered()));
            }
        }
    };
    let heard = listening.finish(&sent).await?;
    let report = WorkerReport {
        connected: heard.connected,
        connect_failures,
        delivered: heard.delivered,
        anomalies: heard.anomalies,
        latency_counts: histogram_counts(&heard.latencies),
    };
    let mut stdout = std::io::stdout().lock();
    std::io::Write::write_all(&mut stdout, format!("{}\n", serde_json::to_string(&report)?).as_bytes())?;
    std::io::Write::flush(&mut stdout)?;
    Ok(())
}
