//! A real `nats-server` for tests, with JetStream and its own store
//! directory, on an ephemeral port, killed when dropped. Tests can stop and
//! restart it. A missing `nats-server` binary is a test failure, never a
//! skip.
//!
//! As with the Redis harness, the server runs under a small watchdog shell
//! that kills it as soon as the test process lets go of the shell's stdin,
//! so it dies with the test however the test ends.

// A test harness: failing the test loudly is its job.
#![allow(clippy::expect_used, clippy::arithmetic_side_effects)]

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
    child: Option<Child>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

impl NatsServer {
    /// Starts a server on a free port.
    pub fn start() -> Self {
        if let Err(e) = Command::new("nats-server").arg("--version").stdout(Stdio::null()).status() {
            panic!("cannot run nats-server ({e}); install it (Debian: apt-get install nats-server)");
        }
        let name = format!("herald-test-{}-{}", std::process::id(), free_port());
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir).expect("a store directory for nats-server");
        for _ in 0..5 {
            let mut server = Self { port: free_port(), name: name.clone(), dir: dir.clone(), child: None };
            server.spawn();
            if server.answers() {
                return server;
            }
            server.stop();
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
        ];
        let child = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("nats-watchdog")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run sh to start nats-server: {e}"));
        self.child = Some(child);
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

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
