//! A real `redis-server` for tests, on an ephemeral port, in its own
//! scratch directory, killed when dropped. Tests can stop and restart it.
//! A missing `redis-server` binary is a test failure, never a skip.
//!
//! Each server runs under a small watchdog shell that kills it as soon as
//! the test process lets go of the shell's stdin: when the server is
//! dropped or killed, and when the test process exits however it exits.
//! So a server held for a whole test binary (in a `static`, never
//! dropped) still dies with the binary.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Starts `redis-server "$@"` in the background, waits for stdin to close,
/// then kills the server and waits for it to be gone.
const WATCHDOG: &str = r#"redis-server "$@" </dev/null >/dev/null 2>&1 &
server=$!
cat >/dev/null
kill -9 "$server" 2>/dev/null
wait "$server" 2>/dev/null
exit 0"#;

/// Fails the test, saying what to install, when `redis-server` is missing.
fn require_redis_server() {
    if let Err(e) = Command::new("redis-server").arg("--version").stdout(Stdio::null()).status() {
        panic!("cannot run redis-server ({e}); install it (Debian: apt-get install redis-server)");
    }
}

/// Runs a redis-server with `args` under the watchdog.
fn spawn_server(args: &[String], dir: &Path) -> Child {
    require_redis_server();
    Command::new("sh")
        .arg("-c")
        .arg(WATCHDOG)
        .arg("redis-watchdog")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run sh to start redis-server: {e}"))
}

/// Kills a server started by [`spawn_server`] and waits until it is gone.
fn stop_server(mut child: Child) {
    drop(child.stdin.take());
    let _ = child.wait();
}

/// Waits until the redis-server on `port` answers and is the one working
/// in `dir` (another test's server may have taken a port found free).
fn wait_for_server(port: u16, dir: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    let url = format!("redis://127.0.0.1:{port}");
    let expected = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    while Instant::now() < deadline {
        let working_in = redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection())
            .and_then(|mut c| redis::cmd("CONFIG").arg("GET").arg("dir").query::<Vec<String>>(&mut c));
        if let Ok(reply) = working_in {
            return reply.get(1).is_some_and(|d| Path::new(d) == expected);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn base_args(port: u16) -> Vec<String> {
    ["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"].map(str::to_owned).to_vec()
}

/// A redis-server owned by a test.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    /// Arguments beyond the base ones (a replica's `--replicaof`).
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a fresh server and waits until it answers.
    pub fn start() -> Self {
        Self::start_with(Vec::new())
    }

    /// Starts a fresh server with `extra` arguments.
    fn start_with(extra: Vec<String>) -> Self {
        let dir = std::env::temp_dir().join(format!("herald-redis-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let mut server = Self { child: None, port: free_port(), dir, extra };
        server.spawn();
        server
    }

    /// Starts the server on its port (again, after a restart), or on
    /// another if that one is taken.
    fn spawn(&mut self) {
        let (first_port, extra, dir) = (self.port, &self.extra, &self.dir);
        let started = until_ours(|attempt| {
            let port = if attempt == 0 { first_port } else { free_port() };
            let mut args = base_args(port);
            args.extend(extra.iter().cloned());
            (spawn_server(&args, dir), port, dir.clone())
        });
        let (child, port) = started.unwrap_or_else(|| panic!("could not start redis-server on a free port"));
        (self.child, self.port) = (Some(child), port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL): everything in it is lost.
    pub fn kill(&mut self) {
        if let Some(child) = self.child.take() {
            stop_server(child);
        }
    }

    /// Starts it again, empty, on the same port (unless another process
    /// took the port meanwhile).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of `masters` redis-servers (no replicas), formed with
/// `redis-cli --cluster create`, killed when dropped.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<(Child, u16)>,
    dir: PathBuf,
}

impl RedisCluster {
    pub fn start(masters: usize) -> Self {
        let dir = std::env::temp_dir().join(format!("herald-redis-cluster-{}-{}", std::process::id(), free_port()));
        let nodes = (0..masters).map(|_| start_cluster_node(&dir)).collect();
        let cluster = Self { nodes, dir };
        let addresses: Vec<String> = cluster.nodes.iter().map(|(_, p)| format!("127.0.0.1:{p}")).collect();
        let status = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}); install it (Debian: apt-get install redis-tools)"));
        assert!(status.success(), "redis-cli --cluster create failed");
        cluster.wait_ok();
        cluster
    }

    fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for url in self.urls() {
            loop {
                let info = redis::Client::open(url.as_str())
                    .and_then(|c| c.get_connection())
                    .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut c))
                    .unwrap_or_default();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "the redis cluster did not come up");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|(_, port)| format!("redis://127.0.0.1:{port}")).collect()
    }
}

/// One cluster node, under `dir`, on ports found free.
fn start_cluster_node(dir: &Path) -> (Child, u16) {
    let started = until_ours(|_| {
        let (port, bus) = (free_port(), free_port());
        let node_dir = dir.join(port.to_string());
        std::fs::create_dir_all(&node_dir).expect("scratch dir");
        let mut args = base_args(port);
        args.extend(["--cluster-enabled", "yes", "--cluster-port", &bus.to_string()].map(str::to_owned));
        args.extend(["--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"].map(str::to_owned));
        (spawn_server(&args, &node_dir), port, node_dir)
    });
    started.unwrap_or_else(|| panic!("could not start a redis cluster node on free ports"))
}

/// Starts a server with `attempt` (told which try it is: 0, 1, …) until
/// the one answering on its port is ours, five tries at most. A port found
/// free may be taken by another test's server before ours binds it.
fn until_ours(mut attempt: impl FnMut(usize) -> (Child, u16, PathBuf)) -> Option<(Child, u16)> {
    for n in 0..5 {
        let (child, port, dir) = attempt(n);
        if wait_for_server(port, &dir) {
            return Some((child, port));
        }
        stop_server(child);
    }
    None
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for (child, _) in std::mem::take(&mut self.nodes) {
            stop_server(child);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A master, one replica and three sentinels monitoring the master as
/// [`RedisSentinel::MASTER_NAME`], quick to fail over (the master is
/// judged down after one second). Killed when dropped.
#[derive(Debug)]
pub struct RedisSentinel {
    /// The master at start.
    pub master: RedisServer,
    /// Its replica, promoted when the master dies.
    pub replica: RedisServer,
    sentinels: Vec<(Child, u16)>,
    dir: PathBuf,
}

impl RedisSentinel {
    /// The name the sentinels monitor the master under.
    pub const MASTER_NAME: &'static str = "herald-test";

    /// Starts the master, the replica and the sentinels, and waits until
    /// the replica is in sync and the sentinels know each other.
    pub fn start() -> Self {
        let master = RedisServer::start();
        let replica = RedisServer::start_with(vec!["--replicaof".into(), "127.0.0.1".into(), master.port.to_string()]);
        let dir = std::env::temp_dir().join(format!("herald-sentinel-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let port = free_port();
            let conf = dir.join(format!("sentinel-{i}.conf"));
            let text = format!(
                "port {port}\nbind 127.0.0.1\nsentinel monitor {name} 127.0.0.1 {master} 2\n\
                 sentinel down-after-milliseconds {name} 1000\nsentinel failover-timeout {name} 5000\n\
                 sentinel parallel-syncs {name} 1\n",
                name = Self::MASTER_NAME,
                master = master.port,
            );
            std::fs::write(&conf, text).expect("a sentinel config");
            let child = spawn_server(&[conf.display().to_string(), "--sentinel".into()], &dir);
            sentinels.push((child, port));
        }
        let cluster = Self { master, replica, sentinels, dir };
        cluster.wait_until_formed();
        cluster
    }

    fn wait_until_formed(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let query = |url: &str, cmd: &mut redis::Cmd| -> Option<redis::Value> {
            let mut connection = redis::Client::open(url).ok()?.get_connection().ok()?;
            cmd.query::<redis::Value>(&mut connection).ok()
        };
        loop {
            let synced = query(&self.master.url(), redis::cmd("INFO").arg("replication"))
                .and_then(|v| redis::from_redis_value::<String>(v).ok())
                .is_some_and(|info| info.contains("connected_slaves:1") && info.contains("state=online"));
            let known = self.sentinel_urls().iter().all(|url| {
                query(url, redis::cmd("SENTINEL").arg("sentinels").arg(Self::MASTER_NAME))
                    .and_then(|v| redis::from_redis_value::<Vec<redis::Value>>(v).ok())
                    .is_some_and(|others| others.len() == 2)
            });
            if synced && known {
                return;
            }
            assert!(Instant::now() < deadline, "the sentinels did not form (synced {synced}, known {known})");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `redis://127.0.0.1:<port>` of each sentinel.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(|(_, port)| format!("redis://127.0.0.1:{port}")).collect()
    }

    /// The master's address as the sentinels give it now.
    pub fn current_master(&self) -> Option<String> {
        let url = self.sentinel_urls().into_iter().next()?;
        let mut connection = redis::Client::open(url).ok()?.get_connection().ok()?;
        let (host, port): (String, u16) =
            redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg(Self::MASTER_NAME).query(&mut connection).ok()?;
        Some(format!("redis://{host}:{port}"))
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        for (child, _) in self.sentinels.drain(..) {
            stop_server(child);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
