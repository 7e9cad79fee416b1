//! `herald-bench`: run a scenario, print a summary, write a JSON result.

#![forbid(unsafe_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use herald_bench::client::Protocol;
use herald_bench::procfs::{Machine, Steal};
use herald_bench::publisher::PublishVia;
use herald_bench::scenario::chat::{self, ChatArgs};
use herald_bench::scenario::connections::{self, ConnectionsArgs};
use herald_bench::scenario::deltas::{self, DeltasArgs};
use herald_bench::scenario::fanout::{self, FanoutArgs};
use herald_bench::scenario::floor::{self, FloorArgs};
use herald_bench::scenario::soak::{self, SoakArgs};
use herald_bench::scenario::storm::{self, StormArgs};
use herald_bench::scenario::ConnectArgs;

#[derive(Debug, Parser)]
#[command(
    name = "herald-bench",
    version,
    about = "Load generator for Herald and its peers (Centrifuge, Pusher and Socket.IO protocols)."
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Ramp to N subscribed idle connections, hold them, measure the server.
    Connections {
        #[command(flatten)]
        common: Common,
        /// Connections to open.
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// How long to hold them.
        #[arg(long, default_value = "10s")]
        hold: humantime::Duration,
        /// The server's pid, to read its RSS and CPU from /proc.
        #[arg(long)]
        server_pid: Option<u32>,
        /// Spread the connections over this many worker processes (each
        /// process may hold only so many open files).
        #[arg(long, default_value_t = 1)]
        workers: usize,
    },
    /// What fossil deltas save: subscribers of one channel (asking for
    /// deltas or not) rebuild a large state the API republishes with a few
    /// fields changed; reports payload bytes per delivery.
    Deltas {
        #[command(flatten)]
        common: Common,
        /// Herald's server API address, IP:port.
        #[arg(long)]
        api: SocketAddr,
        /// Herald's server API key.
        #[arg(long, env = "HERALD_BENCH_API_KEY")]
        api_key: String,
        /// The channel; its namespace must allow fossil deltas.
        #[arg(long, default_value = "dashboard:ops")]
        channel: String,
        #[arg(long, default_value_t = 100)]
        subscribers: usize,
        /// Subscribe asking for fossil deltas.
        #[arg(long)]
        delta: bool,
        #[arg(long, default_value_t = 200)]
        publications: u64,
        /// Publications per second.
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        /// About how large the state is, in bytes of JSON.
        #[arg(long, default_value_t = 4096)]
        state_bytes: usize,
    },
    /// N subscribers over M channels, P publications/s through the API.
    Fanout {
        #[command(flatten)]
        common: Common,
        /// The HTTP API address, IP:port: Herald's server API (centrifuge),
        /// or the Pusher HTTP API (pusher).
        #[arg(long)]
        api: Option<SocketAddr>,
        /// Herald's server API key (centrifuge).
        #[arg(long, env = "HERALD_BENCH_API_KEY")]
        api_key: Option<String>,
        /// Where to POST `{"channel", "data"}` (socketio), e.g. http://127.0.0.1:9100/publish.
        #[arg(long)]
        publish_url: Option<String>,
        /// The Pusher app id, key and secret (pusher).
        #[arg(long)]
        pusher_app_id: Option<String>,
        #[arg(long)]
        pusher_key: Option<String>,
        #[arg(long, env = "HERALD_BENCH_PUSHER_SECRET")]
        pusher_secret: Option<String>,
        #[arg(long, default_value_t = 100)]
        subscribers: usize,
        #[arg(long, default_value_t = 1)]
        channels: usize,
        /// Publications per second, over all channels.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        #[arg(long, default_value = "10s")]
        duration: humantime::Duration,
        /// Padding per publication, in bytes.
        #[arg(long, default_value_t = 64)]
        payload_bytes: usize,
        /// Spread the subscribers over this many worker processes (each
        /// process may hold only so many open files); this one publishes.
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// The server's pid (on this machine): reports its CPU per delivery
        /// from /proc, over the publications and their delivery only.
        #[arg(long)]
        server_pid: Option<u32>,
    },
    /// One worker process of `fanout --workers` (not for direct use).
    #[command(hide = true)]
    FanoutWorker {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        subscribers: usize,
        #[arg(long)]
        channels: usize,
        /// The number of this worker's first subscriber.
        #[arg(long)]
        first_client: usize,
    },
    /// Drop every connection at once (or kill a node): time until every
    /// client is back and recovered, and what was lost.
    ReconnectStorm {
        #[command(flatten)]
        common: Common,
        /// Herald's server API address, IP:port (a node that survives).
        #[arg(long)]
        api: SocketAddr,
        #[arg(long, env = "HERALD_BENCH_API_KEY")]
        api_key: String,
        /// A namespace with history and recovery (history_size, force_recovery or recoverable subscriptions).
        #[arg(long, default_value = "feed")]
        namespace: String,
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        #[arg(long, default_value_t = 10)]
        channels: usize,
        /// Publications per second, over all channels.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// When the storm starts, after everyone is connected.
        #[arg(long, default_value = "5s")]
        storm_after: humantime::Duration,
        /// How long publications continue after the storm starts.
        #[arg(long, default_value = "10s")]
        publish_for: humantime::Duration,
        /// Kill this process (a Herald node) with SIGKILL instead of cutting connections.
        #[arg(long)]
        kill_pid: Option<u32>,
        /// Send this process (a Herald node) SIGTERM instead: it drains,
        /// closing its clients over its http.drain_window.
        #[arg(long, conflicts_with = "kill_pid")]
        drain_pid: Option<u32>,
        /// Where clients reconnect after the storm, instead of the next --url
        /// (repeat for several). With these, every client can start on the
        /// node that is killed.
        #[arg(long = "failover-url")]
        failover_urls: Vec<String>,
    },
    /// The floor under `fanout` on this machine: an ideal server (plain
    /// threads writing ready-made frames to loopback TCP, no WebSocket, no
    /// JSON) and the least a subscriber can do, with the same latency
    /// measure and no server in the way.
    Floor {
        #[command(flatten)]
        output: Output,
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        /// Publications per second; each goes to every subscriber.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        #[arg(long, default_value = "10s")]
        duration: humantime::Duration,
        /// Publications before latency is measured.
        #[arg(long, default_value = "2s")]
        warmup: humantime::Duration,
        /// Bytes per delivered frame (a `fanout` publication frame from
        /// Herald is about 150).
        #[arg(long, default_value_t = 150)]
        frame_bytes: usize,
        /// Threads writing in the ideal server.
        #[arg(long, default_value_t = 2)]
        writer_threads: usize,
        /// Threads reading for the subscribers.
        #[arg(long, default_value_t = 2)]
        reader_threads: usize,
        /// How the ideal server hands its writes to the kernel: a
        /// `write` call each, or batched through io_uring.
        #[arg(long, value_enum, default_value_t)]
        writes: floor::Writes,
    },
    /// The writer process of `floor` (not for direct use).
    #[command(hide = true)]
    FloorWriter {
        #[arg(long)]
        subscribers: usize,
        #[arg(long)]
        rate: f64,
        /// How long to publish.
        #[arg(long)]
        length: humantime::Duration,
        #[arg(long)]
        frame_bytes: usize,
        #[arg(long)]
        writer_threads: usize,
        #[arg(long, value_enum)]
        writes: floor::Writes,
    },
    /// A chaos soak: starts redis-server and Herald nodes of its own, has
    /// clients follow channels while nodes and Redis are killed and
    /// restarted and clients are cut and stalled, and checks that every
    /// publication reached every client once and in order, or the client
    /// was told `recovered: false`. Exits non-zero on any anomaly.
    Soak {
        #[command(flatten)]
        output: Output,
        /// The herald binary (default: `herald` beside this one).
        #[arg(long)]
        herald: Option<PathBuf>,
        /// Where node configs and logs and Redis's data go (default: a new
        /// directory under the system's temporary one, kept).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        #[arg(long, default_value_t = 60)]
        clients: usize,
        #[arg(long, default_value_t = 12)]
        channels: usize,
        #[arg(long, default_value_t = 3)]
        channels_per_client: usize,
        /// Publications per second, over all channels.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        #[arg(long, default_value = "60s")]
        duration: humantime::Duration,
        /// How often a fault is injected.
        #[arg(long, default_value = "5s")]
        fault_every: humantime::Duration,
        /// The share of clients with a small receive buffer, which faults stall.
        #[arg(long, default_value_t = 0.2)]
        stallable_share: f64,
        /// Padding in each publication, in bytes.
        #[arg(long, default_value_t = 300)]
        payload_bytes: usize,
        /// Seeds the choice of clients to cut and stall.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Many small rooms; every member publishes and receives.
    Chat {
        #[command(flatten)]
        common: Common,
        /// A namespace whose subscribers may publish.
        #[arg(long, default_value = "chat")]
        namespace: String,
        #[arg(long, default_value_t = 100)]
        rooms: usize,
        #[arg(long, default_value_t = 5)]
        members_per_room: usize,
        /// Messages each member sends per second.
        #[arg(long, default_value_t = 1.0)]
        rate_per_member: f64,
        #[arg(long, default_value = "10s")]
        duration: humantime::Duration,
        /// The first room's number: several processes (one holds at most
        /// ~19,500 connections) share a larger chat by taking disjoint rooms.
        #[arg(long, default_value_t = 0)]
        first_room: usize,
        /// Put the latency histogram in the result as (µs, count) pairs, so
        /// that the results of several processes can be merged.
        #[arg(long)]
        latency_counts: bool,
    },
}

#[derive(Debug, Args)]
struct Common {
    /// WebSocket endpoint(s), e.g. ws://127.0.0.1:8000/connection/websocket; repeat for a cluster.
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    /// The protocol clients speak.
    #[arg(long, value_enum, default_value_t = Protocol::Centrifuge)]
    protocol: Protocol,
    /// The server's client.token_hmac_secret, to mint connection tokens (centrifuge).
    #[arg(long, env = "HERALD_BENCH_TOKEN_SECRET", default_value = "")]
    token_secret: String,
    #[command(flatten)]
    output: Output,
    /// Connections opened per second.
    #[arg(long, default_value_t = 1000.0)]
    connect_rate: f64,
    /// Spread connections over this many loopback source addresses (127.0.0.2, …).
    #[arg(long, default_value_t = 8)]
    source_addresses: u8,
    /// Connect without a token (centrifuge): the server's connect proxy
    /// (or `client.allow_anonymous`) decides who each client is.
    #[arg(long)]
    without_token: bool,
    /// Send this as the `Cookie` header of every WebSocket handshake, e.g.
    /// a session cookie the connect proxy's backend checks.
    #[arg(long)]
    cookie: Option<String>,
}

/// Where a result goes.
#[derive(Debug, Args)]
struct Output {
    /// A name for this run in reports ("herald 1 node", "socket.io + redis").
    #[arg(long)]
    label: Option<String>,
    /// Write the JSON result here.
    #[arg(long)]
    out: Option<PathBuf>,
}

impl Common {
    fn connect(&self) -> anyhow::Result<ConnectArgs> {
        anyhow::ensure!(
            !(self.protocol.centrifuge() || self.protocol == Protocol::UniSse)
                || self.without_token
                || !self.token_secret.is_empty(),
            "the centrifuge protocol needs --token-secret (the server's client.token_hmac_secret)"
        );
        Ok(ConnectArgs {
            protocol: self.protocol,
            urls: self.urls.clone(),
            token_secret: self.token_secret.clone(),
            without_token: self.without_token,
            cookie: self.cookie.clone(),
            connect_rate: self.connect_rate,
            source_addresses: self.source_addresses,
            first_client: 0,
        })
    }
}

impl Common {
    /// The flags a worker process needs to connect as this one would.
    fn worker_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        for url in &self.urls {
            args.extend(["--url".to_owned(), url.clone()]);
        }
        args.extend([
            "--protocol".to_owned(),
            format!("{:?}", self.protocol).to_lowercase(),
            "--token-secret".to_owned(),
            self.token_secret.clone(),
            "--connect-rate".to_owned(),
            self.connect_rate.to_string(),
            "--source-addresses".to_owned(),
            self.source_addresses.to_string(),
        ]);
        args
    }
}

/// How `fanout` publishes, from its flags.
fn publish_via(
    protocol: Protocol,
    api: Option<SocketAddr>,
    api_key: Option<String>,
    publish_url: Option<String>,
    pusher: (Option<String>, Option<String>, Option<String>),
) -> anyhow::Result<PublishVia> {
    let need = |what: &str| anyhow::anyhow!("--protocol {protocol:?} needs {what}");
    Ok(match protocol {
        Protocol::Centrifuge | Protocol::CentrifugeProtobuf | Protocol::UniSse | Protocol::Sse => PublishVia::Herald {
            addr: api.ok_or_else(|| need("--api"))?,
            key: api_key.ok_or_else(|| need("--api-key"))?,
        },
        Protocol::Pusher => PublishVia::Pusher {
            addr: api.ok_or_else(|| need("--api (the Pusher HTTP API address)"))?,
            app_id: pusher.0.ok_or_else(|| need("--pusher-app-id"))?,
            key: pusher.1.ok_or_else(|| need("--pusher-key"))?,
            secret: pusher.2.ok_or_else(|| need("--pusher-secret"))?,
        },
        Protocol::Socketio => PublishVia::plain(&publish_url.ok_or_else(|| need("--publish-url"))?)?,
    })
}

#[derive(Serialize)]
struct Report<A: Serialize, R: Serialize> {
    scenario: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<String>,
    version: &'static str,
    /// Kept beside `machine` for the result files written before it.
    cores: usize,
    machine: Machine,
    /// Seconds of CPU the hypervisor gave to other guests while this ran
    /// (steal time, all CPUs); `None` where `/proc/stat` does not say. Not
    /// zero: the run competed with another VM for its cores.
    steal_seconds: Option<f64>,
    args: A,
    result: R,
}

fn finish<A: Serialize, R: Serialize>(
    started: Option<Steal>,
    scenario: &'static str,
    output: Output,
    args: A,
    result: R,
) -> anyhow::Result<()> {
    let machine = Machine::this();
    let steal_seconds = started.zip(Steal::now()).map(|(started, now)| now.seconds_since(&started));
    let Output { label, out } = output;
    let version = env!("CARGO_PKG_VERSION");
    let report = Report { scenario, label, version, cores: machine.cores, machine, steal_seconds, args, result };
    let json = serde_json::to_string_pretty(&report)?;
    writeln!(std::io::stderr(), "{}", summary(scenario, &serde_json::to_value(&report.result)?))?;
    writeln!(std::io::stderr(), "  measured on {}", report.machine)?;
    if let Some(stolen) = steal_seconds.filter(|s| *s > 0.0) {
        writeln!(
            std::io::stderr(),
            "  the hypervisor took {stolen:.2} s of CPU from this VM during the run (steal time): \
             its latencies and CPU figures include another guest's load; compare with a run that had none"
        )?;
    }
    writeln!(std::io::stdout(), "{json}")?;
    if let Some(path) = out {
        std::fs::write(&path, &json)?;
        writeln!(std::io::stderr(), "result written to {}", path.display())?;
    }
    Ok(())
}

/// The result for people: one line per field, latency and anomalies first.
fn summary(scenario: &str, result: &serde_json::Value) -> String {
    let mut lines = vec![format!("{scenario} result:")];
    if let Some(latency) = result.get("latency") {
        let ms = |key: &str| latency[key].as_f64().map_or("-".to_owned(), |v| format!("{v:.1} ms"));
        lines.push(format!(
            "  latency   p50 {}   p90 {}   p99 {}   p99.9 {}   max {}",
            ms("p50_ms"),
            ms("p90_ms"),
            ms("p99_ms"),
            ms("p999_ms"),
            ms("max_ms")
        ));
    }
    if let Some(anomalies) = result.get("anomalies") {
        let n = |key: &str| anomalies[key].as_u64().unwrap_or(0);
        lines.push(format!(
            "  anomalies lost {}   duplicated {}   reordered {}",
            n("lost"),
            n("duplicated"),
            n("reordered")
        ));
    }
    if let Some(cpu) = result.get("server_cpu").filter(|cpu| cpu.is_object()) {
        let us = |key: &str| cpu[key].as_f64().map_or("-".to_owned(), |v| format!("{v:.2} µs"));
        lines.push(format!(
            "  server    {} a delivery, {} of it user time, over {:.1} s of publishing",
            us("us_per_delivery"),
            us("user_us_per_delivery"),
            cpu["seconds"].as_f64().unwrap_or(0.0)
        ));
    }
    for (key, value) in result.as_object().into_iter().flatten() {
        if value.is_number() || value.is_null() || value.is_string() {
            let shown = match (value.as_f64(), value.as_str()) {
                (Some(v), _) if v.fract() != 0.0 => format!("{v:.2}"),
                (Some(v), _) => format!("{v}"),
                (None, Some(text)) => text.to_owned(),
                (None, None) => "-".to_owned(),
            };
            lines.push(format!("  {key:<32} {shown}"));
        }
    }
    lines.join("\n")
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // Steal time when the scenario started (see `Report::steal_seconds`).
    let started = Steal::now();
    match cli.scenario {
        Scenario::Connections { common, count, hold, server_pid, workers } => {
            let args = ConnectionsArgs { connect: common.connect()?, count, hold: hold.into(), server_pid };
            let result = match workers {
                0 | 1 => connections::run(&args).await?,
                n => {
                    herald_bench::workers::connections(n, count, hold.into(), server_pid, &common.worker_args()).await?
                }
            };
            finish(started, "connections", common.output, args, result)
        }
        Scenario::Fanout {
            common,
            api,
            api_key,
            publish_url,
            pusher_app_id,
            pusher_key,
            pusher_secret,
            subscribers,
            channels,
            rate,
            duration,
            payload_bytes,
            workers,
            server_pid,
        } => {
            anyhow::ensure!(
                common.protocol != Protocol::Sse,
                "fanout reads its subscribers on plain threads, which do not post heartbeat answers: measure \
                 emulated SSE with connections, or use uni-sse"
            );
            let pusher = (pusher_app_id, pusher_key, pusher_secret);
            let args = FanoutArgs {
                connect: common.connect()?,
                publish: publish_via(common.protocol, api, api_key, publish_url, pusher)?,
                subscribers,
                channels,
                rate,
                duration: duration.into(),
                payload_bytes,
                server_pid,
            };
            let result = match workers {
                0 | 1 => fanout::run(&args).await?,
                n => herald_bench::workers::fanout(n, &args, &common.worker_args()).await?,
            };
            finish(started, "fanout", common.output, args, result)
        }
        Scenario::Deltas { common, api, api_key, channel, subscribers, delta, publications, rate, state_bytes } => {
            anyhow::ensure!(
                common.protocol != Protocol::Sse,
                "deltas reads its subscribers' messages over a WebSocket: use --protocol centrifuge"
            );
            let args = DeltasArgs {
                connect: common.connect()?,
                publish: PublishVia::Herald { addr: api, key: api_key },
                channel,
                subscribers,
                delta,
                publications,
                rate,
                state_bytes,
            };
            let result = deltas::run(&args).await?;
            anyhow::ensure!(result.mismatched == 0, "{} states were rebuilt wrong", result.mismatched);
            finish(started, "deltas", common.output, args, result)
        }
        Scenario::FanoutWorker { common, subscribers, channels, first_client } => {
            let connect = ConnectArgs { first_client, ..common.connect()? };
            fanout::work(&connect, subscribers, channels).await
        }
        Scenario::ReconnectStorm {
            common,
            api,
            api_key,
            namespace,
            clients,
            channels,
            rate,
            storm_after,
            publish_for,
            kill_pid,
            drain_pid,
            failover_urls,
        } => {
            let args = StormArgs {
                connect: common.connect()?,
                publish: PublishVia::Herald { addr: api, key: api_key },
                namespace,
                clients,
                channels,
                rate,
                storm_after: storm_after.into(),
                publish_for: publish_for.into(),
                kill_pid,
                drain_pid,
                failover_urls,
            };
            let result = storm::run(&args).await?;
            finish(started, "reconnect-storm", common.output, args, result)
        }
        Scenario::Floor {
            output,
            subscribers,
            rate,
            duration,
            warmup,
            frame_bytes,
            writer_threads,
            reader_threads,
            writes,
        } => {
            let args = FloorArgs {
                subscribers,
                rate,
                duration: duration.into(),
                warmup: warmup.into(),
                frame_bytes,
                writer_threads,
                reader_threads,
                writes,
            };
            let herald_bench = std::env::current_exe()?;
            let result = {
                let args = args.clone();
                tokio::task::spawn_blocking(move || floor::run(&args, &herald_bench)).await??
            };
            finish(started, "floor", output, args, result)
        }
        Scenario::FloorWriter { subscribers, rate, length, frame_bytes, writer_threads, writes } => {
            let args = floor::WriterArgs {
                subscribers,
                rate,
                length: length.into(),
                frame_bytes,
                threads: writer_threads,
                writes,
            };
            tokio::task::spawn_blocking(move || floor::write(args)).await?
        }
        Scenario::Soak {
            output,
            herald,
            dir,
            nodes,
            clients,
            channels,
            channels_per_client,
            rate,
            duration,
            fault_every,
            stallable_share,
            payload_bytes,
            seed,
        } => {
            let herald = match herald {
                Some(path) => path,
                None => std::env::current_exe()?.with_file_name("herald"),
            };
            let dir = dir.unwrap_or_else(|| std::env::temp_dir().join(format!("herald-soak-{}", std::process::id())));
            let args = SoakArgs {
                herald,
                dir,
                nodes,
                clients,
                channels,
                channels_per_client,
                rate,
                duration: duration.into(),
                fault_every: fault_every.into(),
                stallable_share,
                payload_bytes,
                seed,
            };
            let result = soak::run(&args).await?;
            let (anomalies, dir) = (result.anomaly_count, args.dir.clone());
            for note in &result.notes {
                writeln!(std::io::stderr(), "  anomaly: {note}")?;
            }
            finish(started, "soak", output, args, result)?;
            anyhow::ensure!(anomalies == 0, "{anomalies} anomalies; the nodes' logs are in {}", dir.display());
            Ok(())
        }
        Scenario::Chat {
            common,
            namespace,
            rooms,
            members_per_room,
            rate_per_member,
            duration,
            first_room,
            latency_counts,
        } => {
            anyhow::ensure!(
                !matches!(common.protocol, Protocol::Pusher | Protocol::UniSse),
                "chat publishes as clients; Pusher clients publish only signed client events, and uni-sse clients \
                 send nothing: use centrifuge or socketio"
            );
            let args = ChatArgs {
                connect: common.connect()?,
                namespace,
                first_room,
                rooms,
                members_per_room,
                rate_per_member,
                duration: duration.into(),
                latency_counts,
            };
            let result = chat::run(&args).await?;
            finish(started, "chat", common.output, args, result)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "herald-bench: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "herald-bench: {e:#}");
            ExitCode::from(1)
        }
    }
}
