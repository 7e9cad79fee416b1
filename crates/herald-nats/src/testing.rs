//! A real `nats-server` for tests, with JetStream and its own store
//! directory, on an ephemeral port, killed when dropped. Tests can stop and
//! restart it. A missing `nats-server` binary is a test failure, never a
//! skip.
//!
//! As with the Redis harness, the server runs under a small watchdog shell
//! that kills it as soon as the test process lets go of the shell's stdin,
//! so it dies with the test however the test ends.
//!
//! Each server logs to a file in its store directory (restarts append to
//! it); when a test fails, dropping the server prints the log's last lines
//! with the test's output, so the failure says what NATS did meanwhile.

// A test harness: failing the test loudly is its job.
#![allow(clippy::expect_used, clippy::arithmetic_side_effects, clippy::indexing_slicing)]

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Starts `nats-server "$@"` in the background, waits for stdin to close,
/// then kills the server and waits for it to be gone.
const WATCHDOG: &str = r#"nats-server "$@" </dev/null >/dev/null 2>&1 &
server=$!
cat >/dev/null
kill -9 "$server" 2>/dev/null
wait "$server" 2>/dev/null
exit 0"#;

/// A `nats-server` on 127.0.0.1, with JetStream.
#[derive(Debug)]
pub struct NatsServer {
    port: u16,
    name: String,
    dir: PathBuf,
    /// Arguments beyond the client port, name, JetStream and store (a
    /// cluster member's routes).
    extra: Vec<String>,
    child: Option<Child>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// `n` free ports, all different: held open together while they are
/// chosen (one at a time, a port just let go may be handed out again).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port")).collect();
    listeners.iter().map(|l| l.local_addr().expect("a bound port").port()).collect()
}

impl NatsServer {
    /// Starts a server on a free port.
    pub fn start() -> Self {
        Self::start_with(free_port(), Vec::new(), &[])
    }

    /// Starts a server on `port` (or, should it not start there, another
    /// free port that is none of `reserved`: ports its cluster's other
    /// servers are yet to listen on).
    fn start_with(port: u16, extra: Vec<String>, reserved: &[u16]) -> Self {
        if let Err(e) = Command::new("nats-server").arg("--version").stdout(Stdio::null()).status() {
            panic!("cannot run nats-server ({e}); install it (Debian: apt-get install nats-server)");
        }
        let name = format!("herald-test-{}-{}", std::process::id(), free_port());
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir).expect("a store directory for nats-server");
        let mut port = port;
        for _ in 0..5 {
            let mut server = Self { port, name: name.clone(), dir: dir.clone(), extra: extra.clone(), child: None };
            server.spawn();
            if server.answers() {
                return server;
            }
            server.stop();
            port = std::iter::repeat_with(free_port).find(|p| !reserved.contains(p)).expect("an endless supply");
        }
        panic!("nats-server did not start on a free port after 5 tries");
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, with the same store.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
        assert!(self.answers(), "nats-server did not come back on port {}", self.port);
    }

    fn spawn(&mut self) {
        // The log goes into the store directory, which a failed start took away.
        std::fs::create_dir_all(&self.dir).expect("a store directory for nats-server");
        let args = [
            "-a".to_owned(),
            "127.0.0.1".to_owned(),
            "-p".to_owned(),
            self.port.to_string(),
            "-n".to_owned(),
            self.name.clone(),
            "-js".to_owned(),
            "-sd".to_owned(),
            self.dir.display().to_string(),
            "-l".to_owned(),
            self.log_file().display().to_string(),
        ];
        let child = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("nats-watchdog")
            .args(args)
            .args(&self.extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run sh to start nats-server: {e}"));
        self.child = Some(child);
    }

    fn log_file(&self) -> PathBuf {
        self.dir.join("nats-server.log")
    }

    /// Whether the server on our port answers, and is ours (its INFO names it).
    fn answers(&self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(stream) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut info = String::new();
                if BufReader::new(stream).read_line(&mut info).is_ok() && info.starts_with("INFO ") {
                    return info.contains(&format!("\"server_name\":\"{}\"", self.name));
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

/// How much of a server's log a failed test shows.
const LOG_LINES_SHOWN: usize = 80;

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.log_file()).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let shown = lines.get(lines.len().saturating_sub(LOG_LINES_SHOWN)..).unwrap_or_default();
            eprintln!("--- the last {} lines of nats-server {} (port {}):", shown.len(), self.name, self.port);
            eprintln!("{}", shown.join("\n"));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Three (or more) `nats-server`s routed into one cluster with clustered
/// JetStream, each with its own store; any of them can be stopped and
/// restarted.
#[derive(Debug)]
pub struct NatsCluster {
    servers: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `n` servers routed to each other.
    pub fn start(n: usize) -> Self {
        // Every route and client port different: a server whose client
        // port is another's route port joins the cluster as nothing.
        let ports = free_ports(2 * n);
        let (routes, clients) = ports.split_at(n);
        let all_routes = routes.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
        let cluster_name = format!("herald-test-{}-{}", std::process::id(), free_port());
        let servers = routes
            .iter()
            .zip(clients)
            .map(|(route, client)| {
                let extra = vec![
                    "--cluster_name".to_owned(),
                    cluster_name.clone(),
                    "--cluster".to_owned(),
                    format!("nats://127.0.0.1:{route}"),
                    "--routes".to_owned(),
                    all_routes.clone(),
                ];
                NatsServer::start_with(*client, extra, &ports)
            })
            .collect();
        Self { servers }
    }

    /// Every server's `nats://127.0.0.1:<port>`.
    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(NatsServer::url).collect()
    }

    /// The `i`th server, to stop or restart.
    pub fn server(&mut self, i: usize) -> &mut NatsServer {
        &mut self.servers[i]
    }

    /// Waits until the cluster has elected its JetStream leader and serves
    /// JetStream requests.
    pub async fn ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let client = async_nats::connect(self.servers[0].url()).await.expect("connect to the nats cluster");
        // A raw request: this client cannot parse nats-server 2.9's account info.
        let answers = || async {
            let reply = client.request("$JS.API.INFO", bytes::Bytes::new()).await;
            reply.is_ok_and(|m| {
                m.payload.starts_with(b"{") && !String::from_utf8_lossy(&m.payload).contains("\"error\"")
            })
        };
        while !answers().await {
            assert!(tokio::time::Instant::now() < deadline, "the nats cluster's JetStream did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
