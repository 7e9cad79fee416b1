//! The cluster a soak runs against: one `redis-server` and several
//! `herald serve` nodes over it, each a child process on a port of its own
//! in the soak's scratch directory, which the soak kills and restarts.
//!
//! Every process runs under a small watchdog shell that kills it (SIGKILL)
//! as soon as the soak lets go of the shell's stdin: that is how a fault
//! kills a node, and it also means no process outlives the soak however
//! the soak ends.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::publisher::{ApiClient, PublishVia};

/// Runs `"$@"` with its output appended to `$LOG`, until stdin closes.
const WATCHDOG: &str = r#""$@" </dev/null >>"$LOG" 2>&1 &
child=$!
cat >/dev/null
kill -9 "$child" 2>/dev/null
wait "$child" 2>/dev/null
exit 0"#;

/// The secret the soak's connection tokens are signed with.
pub const TOKEN_SECRET: &str = "soak-token-secret";
/// The soak nodes' API key.
pub const API_KEY: &str = "soak-api-key";
/// The namespace of the soak's channels: history, and recovery forced.
pub const NAMESPACE: &str = "soak";

/// A process under the watchdog.
#[derive(Debug)]
struct Supervised(Child);

impl Supervised {
    fn spawn(program: &Path, args: &[String], log: &Path) -> anyhow::Result<Self> {
        let child = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("soak-watchdog")
            .arg(program)
            .args(args)
            .env("LOG", log)
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot run sh to start {}: {e}", program.display()))?;
        Ok(Self(child))
    }

    /// SIGKILLs the process and waits until it is gone.
    fn kill(mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// How the nodes are configured: small outboxes and a short write
/// timeout, so that a slowed client is disconnected soon, and history deep
/// enough that every client that is behind can recover.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub queue_max_bytes: usize,
    pub write_timeout: Duration,
    pub history_size: usize,
}

/// One redis-server and the nodes over it.
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    herald: PathBuf,
    redis_port: u16,
    redis: Option<Supervised>,
    nodes: Vec<Node>,
}

#[derive(Debug)]
struct Node {
    port: u16,
    config: PathBuf,
    process: Option<Supervised>,
}

impl Cluster {
    /// Starts redis-server and `nodes` herald nodes, and waits until every
    /// node answers its API.
    pub async fn start(herald: &Path, dir: &Path, nodes: usize, settings: &NodeSettings) -> anyhow::Result<Self> {
        require(Path::new("redis-server"), "install redis-server (Debian: apt-get install redis-server)")?;
        require(herald, "build it first: cargo build --release -p herald-server --bin herald")?;
        std::fs::create_dir_all(dir.join("redis"))?;
        let mut cluster = Self {
            dir: dir.to_owned(),
            herald: herald.to_owned(),
            redis_port: free_port()?,
            redis: None,
            nodes: Vec::new(),
        };
        cluster.start_redis().await?;
        for i in 0..nodes {
            let port = free_port()?;
            let config = dir.join(format!("node{i}.toml"));
            std::fs::write(&config, node_config(port, cluster.redis_port, settings))?;
            cluster.nodes.push(Node { port, config, process: None });
        }
        for i in 0..nodes {
            cluster.start_node(i).await?;
        }
        Ok(cluster)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i`'s address (WebSockets and API).
    pub fn addr(&self, i: usize) -> SocketAddr {
        let port = self.nodes.get(i).map_or(0, |n| n.port);
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Node `i`'s Centrifuge WebSocket URL.
    pub fn url(&self, i: usize) -> String {
        format!("ws://{}/connection/websocket", self.addr(i))
    }

    /// How to publish through node `i`'s API.
    pub fn api(&self, i: usize) -> PublishVia {
        PublishVia::Herald { addr: self.addr(i), key: API_KEY.to_owned() }
    }

    async fn start_redis(&mut self) -> anyhow::Result<()> {
        let redis_dir = self.dir.join("redis");
        let args: Vec<String> = [
            "--port",
            &self.redis_port.to_string(),
            "--bind",
            "127.0.0.1",
            "--dir",
            &redis_dir.display().to_string(),
            "--save",
            "",
            // Every write reaches the disk before Redis answers it: a killed
            // Redis comes back with everything it acknowledged.
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ]
        .map(str::to_owned)
        .to_vec();
        let log = self.dir.join("redis.log");
        self.redis = Some(Supervised::spawn(Path::new("redis-server"), &args, &log)?);
        wait_until(Duration::from_secs(30), || redis_answers(self.redis_port)).await.map_err(|_| {
            anyhow::anyhow!(
                "redis-server did not answer on port {}; the end of {}:\n{}",
                self.redis_port,
                log.display(),
                tail(&log)
            )
        })
    }

    /// SIGKILLs Redis.
    pub fn stop_redis(&mut self) {
        if let Some(redis) = self.redis.take() {
            redis.kill();
        }
    }

    /// Starts Redis again on its port: with the data it had, or with
    /// `wipe` none of it, as if a replica without it had taken over.
    pub async fn start_redis_again(&mut self, wipe: bool) -> anyhow::Result<()> {
        self.stop_redis();
        if wipe {
            let dir = self.dir.join("redis");
            std::fs::remove_dir_all(&dir)?;
            std::fs::create_dir_all(&dir)?;
        }
        self.start_redis().await
    }

    async fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        let log = self.dir.join(format!("node{i}.log"));
        let node = self.nodes.get_mut(i).ok_or_else(|| anyhow::anyhow!("no node {i}"))?;
        let args = vec!["serve".to_owned(), "--config".to_owned(), node.config.display().to_string()];
        node.process = Some(Supervised::spawn(&self.herald, &args, &log)?);
        let via = self.api(i);
        wait_until(Duration::from_secs(30), || node_answers(via.clone())).await.map_err(|_| {
            anyhow::anyhow!(
                "node {i} did not answer on {}; the end of {}:\n{}",
                self.addr(i),
                log.display(),
                tail(&log)
            )
        })
    }

    /// SIGKILLs node `i`.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(process) = self.nodes.get_mut(i).and_then(|n| n.process.take()) {
            process.kill();
        }
    }

    /// Starts node `i` again on its port, if it is down.
    pub async fn revive_node(&mut self, i: usize) -> anyhow::Result<()> {
        match self.nodes.get(i).is_some_and(|n| n.process.is_none()) {
            true => self.start_node(i).await,
            false => Ok(()),
        }
    }

    /// Whether every node and Redis are up and each node answers its API.
    pub async fn all_ready(&self) -> bool {
        for i in 0..self.nodes.len() {
            if !node_answers(self.api(i)).await {
                return false;
            }
        }
        true
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(process) = node.process.take() {
                process.kill();
            }
        }
        if let Some(redis) = self.redis.take() {
            redis.kill();
        }
    }
}

/// The last lines of a log, for an error message.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

/// Fails with what to do when `program` cannot be run.
fn require(program: &Path, remedy: &str) -> anyhow::Result<()> {
    match Command::new(program).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Ok(_) => Ok(()),
        Err(e) => anyhow::bail!("cannot run {} ({e}): {remedy}", program.display()),
    }
}

async fn wait_until<F, Fut>(patience: Duration, mut ready: F) -> Result<(), ()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + patience;
    while Instant::now() < deadline {
        if ready().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(())
}

/// Whether Redis on `port` answers PING (not while it loads its data).
async fn redis_answers(port: u16) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut reply = [0u8; 7];
        stream.read_exact(&mut reply).await?;
        Ok::<_, std::io::Error>(&reply == b"+PONG\r\n")
    };
    tokio::time::timeout(Duration::from_secs(1), attempt).await.is_ok_and(|r| r.unwrap_or(false))
}

/// Whether a node answers its API (it does once Redis is reachable).
async fn node_answers(via: PublishVia) -> bool {
    let headers = format!("X-API-Key: {API_KEY}\r\n");
    let attempt = async { ApiClient::new(via).post("/api/info", &headers, "{}").await };
    matches!(tokio::time::timeout(Duration::from_secs(2), attempt).await, Ok(Ok((200, _))))
}

fn node_config(port: u16, redis_port: u16, settings: &NodeSettings) -> String {
    let NodeSettings { queue_max_bytes, write_timeout, history_size } = settings;
    let write_timeout = humantime::format_duration(*write_timeout);
    format!(
        r#"# A soak node: written by herald-bench soak.
[http]
address = "127.0.0.1"
port = {port}
shutdown_timeout = "1s"

[engine]
type = "redis"
address = "redis://127.0.0.1:{redis_port}"
prefix = "soak"
command_timeout = "2s"

[client]
token_hmac_secret = "{TOKEN_SECRET}"
command_rate = 0
queue_max_bytes = {queue_max_bytes}
write_timeout = "{write_timeout}"
position_check_interval = "2s"

[api]
key = "{API_KEY}"

[channel.namespaces.{NAMESPACE}]
subscribe = "authenticated"
history_size = {history_size}
history_ttl = "1h"
force_recovery = true
recovery_max_publications = {history_size}

[log]
level = "info,herald_server::driver=debug"
"#
    )
}
