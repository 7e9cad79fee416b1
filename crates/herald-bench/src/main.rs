//! `herald-bench`: run a scenario, print a summary, write a JSON result.

#![forbid(unsafe_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use herald_bench::scenario::chat::{self, ChatArgs};
use herald_bench::scenario::connections::{self, ConnectionsArgs};
use herald_bench::scenario::fanout::{self, FanoutArgs};
use herald_bench::scenario::ConnectArgs;

#[derive(Debug, Parser)]
#[command(name = "herald-bench", version, about = "Load generator for Herald (Centrifuge protocol, JSON).")]
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
    },
    /// N subscribers over M channels, P publications/s through the API.
    Fanout {
        #[command(flatten)]
        common: Common,
        /// The server API address, IP:port.
        #[arg(long)]
        api: SocketAddr,
        /// The server API key.
        #[arg(long, env = "HERALD_BENCH_API_KEY")]
        api_key: String,
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
    },
}

#[derive(Debug, Args)]
struct Common {
    /// WebSocket endpoint(s), e.g. ws://127.0.0.1:8000/connection/websocket; repeat for a cluster.
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    /// The server's client.token_hmac_secret, to mint connection tokens.
    #[arg(long, env = "HERALD_BENCH_TOKEN_SECRET")]
    token_secret: String,
    /// Connections opened per second.
    #[arg(long, default_value_t = 1000.0)]
    connect_rate: f64,
    /// Spread connections over this many loopback source addresses (127.0.0.2, …).
    #[arg(long, default_value_t = 8)]
    source_addresses: u8,
    /// Write the JSON result here.
    #[arg(long)]
    out: Option<PathBuf>,
}

impl Common {
    fn connect(&self) -> ConnectArgs {
        ConnectArgs {
            urls: self.urls.clone(),
            token_secret: self.token_secret.clone(),
            connect_rate: self.connect_rate,
            source_addresses: self.source_addresses,
        }
    }
}

#[derive(Serialize)]
struct Report<A: Serialize, R: Serialize> {
    scenario: &'static str,
    version: &'static str,
    cores: usize,
    args: A,
    result: R,
}

fn finish<A: Serialize, R: Serialize>(
    scenario: &'static str,
    args: A,
    result: R,
    out: Option<PathBuf>,
) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let report = Report { scenario, version: env!("CARGO_PKG_VERSION"), cores, args, result };
    let json = serde_json::to_string_pretty(&report)?;
    writeln!(std::io::stdout(), "{json}")?;
    if let Some(path) = out {
        std::fs::write(&path, &json)?;
        writeln!(std::io::stderr(), "result written to {}", path.display())?;
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.scenario {
        Scenario::Connections { common, count, hold, server_pid } => {
            let args = ConnectionsArgs { connect: common.connect(), count, hold: hold.into(), server_pid };
            let result = connections::run(&args).await?;
            finish("connections", args, result, common.out)
        }
        Scenario::Fanout { common, api, api_key, subscribers, channels, rate, duration, payload_bytes } => {
            let args = FanoutArgs {
                connect: common.connect(),
                api,
                api_key,
                subscribers,
                channels,
                rate,
                duration: duration.into(),
                payload_bytes,
            };
            let result = fanout::run(&args).await?;
            finish("fanout", args, result, common.out)
        }
        Scenario::Chat { common, namespace, rooms, members_per_room, rate_per_member, duration } => {
            let args = ChatArgs {
                connect: common.connect(),
                namespace,
                rooms,
                members_per_room,
                rate_per_member,
                duration: duration.into(),
            };
            let result = chat::run(&args).await?;
            finish("chat", args, result, common.out)
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
