//! The real `herald` binary: its commands, signals and resource limits.

use crate::support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

const HERALD: &str = env!("CARGO_BIN_EXE_herald");

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("herald-binary-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn herald(args: &[&str], dir: &Scratch) -> std::process::Output {
    herald_with(args, dir, &[])
}

/// `herald` with `env` set besides.
fn herald_with(args: &[&str], dir: &Scratch, env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(HERALD);
    command.args(args).current_dir(&dir.0).env("NO_COLOR", "1");
    command.envs(env.iter().copied());
    command.output().expect("run herald")
}

/// `out` is a refusal with exit code 2 naming each of `expected`.
fn assert_problems(out: &std::process::Output, expected: &[&str]) {
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in expected {
        assert!(stderr.contains(expected), "{expected} missing from:\n{stderr}");
    }
}

/// A running `herald serve` and the address it announced.
struct Served {
    child: Child,
    addr: std::net::SocketAddr,
    /// What it has written to stderr so far.
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Served {
    /// Starts `sh -c "<prefix> exec herald serve …"` and waits for the
    /// listening line on stderr.
    fn start(dir: &Scratch, shell_prefix: &str) -> Self {
        let script = format!("{shell_prefix} exec '{HERALD}' serve --address 127.0.0.1 --port 0");
        let mut child = Command::new("sh")
            .args(["-c", &script])
            .current_dir(&dir.0)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn herald");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("ws://") {
                    let addr = line[at + 5..].split('/').next().unwrap().to_owned();
                    let _ = tx.send(addr);
                }
                kept.lock().unwrap().push(line);
            }
        });
        let addr = rx.recv_timeout(support::PATIENCE).expect("herald announces where it listens");
        Served { child, addr: addr.parse().unwrap(), log }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill").args([&format!("-{name}"), &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + support::PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "herald did not exit in time");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn api_key(config: &str) -> String {
    config.lines().find_map(|l| l.strip_prefix("key = \"")).unwrap().trim_end_matches('"').to_owned()
}

#[test]
fn config_init_writes_a_config_that_check_accepts_and_refuses_to_overwrite() {
    let dir = Scratch::new("init");
    let out = herald(&["config", "init"], &dir);
    assert!(out.status.success(), "{out:?}");
    assert!(dir.path("herald.toml").exists());
    let again = herald(&["config", "init"], &dir);
    assert_eq!(again.status.code(), Some(2), "an existing config is not overwritten");

    let check = herald(&["config", "check", "herald.toml"], &dir);
    assert!(check.status.success(), "{check:?}");
    let by_default = herald(&["config", "check"], &dir);
    assert!(by_default.status.success(), "check reads ./herald.toml, as serve does: {by_default:?}");

    let first = std::fs::read_to_string(dir.path("herald.toml")).unwrap();
    herald(&["config", "init", "--force", "second.toml"], &dir);
    let second = std::fs::read_to_string(dir.path("second.toml")).unwrap();
    assert_ne!(api_key(&first), api_key(&second), "every init generates fresh secrets");
}

/// `serve` with a file and `config check` of it see the same problems,
/// all at once: a bad setting and the secrets the file lacks.
#[test]
fn serve_with_a_file_lists_its_problems_and_the_secrets_it_lacks_together() {
    let dir = Scratch::new("serve-problems");
    std::fs::write(dir.path("d.toml"), "[client]\nallow_anonymous = true\nmax_message_size = 10\n").unwrap();
    let out = herald(&["serve", "--config", "d.toml"], &dir);
    assert_problems(&out, &["client.max_message_size", "api.key"]);
}

/// `config check` reads the file as `serve` would run it: with the
/// HERALD_* variables (HERALD_CONFIG naming the file) and `--set` flags.
#[test]
fn config_check_reads_the_variables_and_flags_serve_would() {
    let dir = Scratch::new("check-env");
    std::fs::write(dir.path("partial.toml"), "[client]\nallow_anonymous = true\n").unwrap();
    let bare = herald(&["config", "check", "partial.toml"], &dir);
    assert_eq!(bare.status.code(), Some(2), "no API key: {bare:?}");
    let check = |args: &[&str], env: &[(&str, &str)]| herald_with(args, &dir, env);
    let key = ("HERALD_API__KEY", "a-key-from-the-environment-0123");
    let with_env = check(&["config", "check", "partial.toml"], &[key]);
    assert!(with_env.status.success(), "{with_env:?}");
    let with_flag = check(&["config", "check", "partial.toml", "--set", "api.key=a-key-from-a-flag-0123456"], &[]);
    assert!(with_flag.status.success(), "{with_flag:?}");
    let named = dir.path("partial.toml");
    let by_variable = check(&["config", "check"], &[key, ("HERALD_CONFIG", named.to_str().unwrap())]);
    assert!(by_variable.status.success(), "HERALD_CONFIG names the file: {by_variable:?}");
}

#[test]
fn config_check_lists_every_problem_and_exits_2() {
    let dir = Scratch::new("check");
    std::fs::write(
        dir.path("bad.toml"),
        "[http]\nport = -1\n[client]\nping_interval = \"never\"\nmax_message_size = 10\n[surprise]\n",
    )
    .unwrap();
    let out = herald(&["config", "check", "bad.toml"], &dir);
    assert_problems(&out, &["http.port", "client.ping_interval", "surprise", "token_hmac_secret", "api.key"]);
}

#[test]
fn token_mints_connection_and_subscription_tokens_that_verify() {
    let dir = Scratch::new("token");
    herald(&["config", "init"], &dir);
    let out = herald(
        &[
            "token",
            "--user",
            "42",
            "--ttl",
            "1h",
            "--subscribe",
            "news",
            "--info",
            r#"{"n":1}"#,
            "--meta",
            r#"{"t":2}"#,
        ],
        &dir,
    );
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    let config = herald_server::config::load(&herald_server::config::Sources {
        file: Some(dir.path("herald.toml")),
        ..Default::default()
    })
    .unwrap();
    let verifier = herald_server::auth::TokenVerifier::from_config(&config.client).unwrap();
    let claims = verifier.connection(&token).unwrap();
    assert_eq!((claims.sub.as_str(), claims.channels.as_slice()), ("42", &["news".to_owned()][..]));
    assert_eq!(claims.meta, Some(serde_json::json!({"t": 2})));
    assert!(claims.exp.unwrap() > herald_server::auth::unix_now() + 3000);

    let out = herald(&["token", "--user", "42", "--channel", "private:x"], &dir);
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(verifier.subscription(&token).unwrap().channel, "private:x");

    let elsewhere = Scratch::new("token-none");
    let out = herald(&["token", "--user", "42"], &elsewhere);
    assert_eq!(out.status.code(), Some(2), "no secret, no token");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--secret"));
}

#[tokio::test]
async fn sigterm_closes_clients_with_3001_and_exits_0() {
    let dir = Scratch::new("sigterm");
    herald(&["config", "init"], &dir);
    let mut served = Served::start(&dir, "");
    let token = String::from_utf8(herald(&["token", "--user", "7"], &dir).stdout).unwrap();

    let url = format!("ws://{}/connection/websocket", served.addr);
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut client = support::Client::from_stream(ws);
    let reply = client.command(json!({"id": 1, "connect": {"token": token.trim()}})).await;
    assert!(reply["connect"]["client"].is_string(), "{reply}");

    served.signal("TERM");
    assert_eq!(client.closed().await.0, 3001);
    let status = tokio::task::spawn_blocking(move || served.wait()).await.unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn without_a_config_file_serve_runs_on_generated_secrets() {
    let dir = Scratch::new("zero-config");
    let served = Served::start(&dir, "");
    let url = format!("ws://{}/connection/websocket", served.addr);
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut client = support::Client::from_stream(ws);
    client.send(json!({"id": 1, "connect": {"token": "made-up"}})).await;
    assert_eq!(client.closed().await.0, 3500, "a node with generated secrets still refuses bad tokens");

    // The starter config's namespaces, so the quickstart's `chat:lobby` exists.
    let (status, _, body) = support::http_get(served.addr, "/").await;
    assert_eq!(status, 200, "/ says what the node serves");
    assert!(body.contains("/connection/websocket") && body.contains("/api/<method>"), "{body}");
    // Its output is a pipe, not a terminal: the secrets it made up are
    // named, and shown nowhere.
    let log = served.log.lock().unwrap().join("\n");
    assert!(log.contains("not shown") && log.contains("client.token_hmac_secret"), "{log}");
    assert!(!log.contains("--secret") && !log.contains(" = "), "a generated secret in the log: {log}");
    let with_secret = Served::start(&dir, "HERALD_CLIENT__TOKEN_HMAC_SECRET=zero-config-secret");
    let url = format!("ws://{}/connection/websocket", with_secret.addr);
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut client = support::Client::from_stream(ws);
    let token = herald_server::auth::TokenMinter::hmac("zero-config-secret").sign(&json!({"sub": "42"}));
    let connected = client.command(json!({"id": 1, "connect": {"token": token}})).await;
    assert!(connected.get("connect").is_some(), "{connected}");
    let subscribed = client.command(json!({"id": 2, "subscribe": {"channel": "chat:lobby"}})).await;
    assert!(subscribed.get("subscribe").is_some(), "the chat namespace exists without a config: {subscribed}");
    // 18 bytes: guessable from one token, which the node says (without the secret).
    let log = with_secret.log.lock().unwrap().join("\n");
    assert!(log.contains("client.token_hmac_secret is short") && log.contains("bytes=18"), "{log}");
    assert!(!log.contains("zero-config-secret"), "the secret in the log: {log}");
    assert!(!served.log.lock().unwrap().iter().any(|l| l.contains("is short")), "a generated secret is long enough");
}

#[tokio::test]
async fn a_mistake_in_the_file_hidden_by_a_flag_is_still_told() {
    let dir = Scratch::new("hidden");
    herald(&["config", "init"], &dir);
    let text = std::fs::read_to_string(dir.path("herald.toml")).unwrap().replacen("port = 8000", "port = 99999", 1);
    std::fs::write(dir.path("herald.toml"), text).unwrap();
    let served = Served::start(&dir, "");
    support::eventually("the hidden mistake is logged", || {
        served.log.lock().unwrap().iter().any(|line| line.contains("http.port") && line.contains("fix the file"))
    })
    .await;
}

/// Out of file descriptors, the accept loop backs off instead of spinning,
/// and accepts again once descriptors are free.
#[tokio::test]
async fn running_out_of_file_descriptors_backs_off_and_recovers() {
    let dir = Scratch::new("emfile");
    herald(&["config", "init"], &dir);
    let served = Served::start(&dir, "ulimit -n 64;");
    let addr = served.addr;

    // Hold connections until the server can no longer accept: a WebSocket
    // handshake then gets no answer.
    let mut held = Vec::new();
    let mut exhausted = false;
    for _ in 0..200 {
        let attempt = tokio::time::timeout(
            Duration::from_millis(500),
            tokio_tungstenite::connect_async(format!("ws://{addr}/connection/websocket")),
        )
        .await;
        match attempt {
            Ok(Ok((ws, _))) => held.push(ws),
            _ => {
                exhausted = true;
                break;
            }
        }
    }
    assert!(exhausted, "64 descriptors should run out before 200 connections");

    let cpu_before = cpu_ticks(served.child.id());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let spent = cpu_ticks(served.child.id()) - cpu_before;
    assert!(spent < 50, "the accept loop spun for {spent} ticks in one second");

    held.clear();
    let again = tokio::time::timeout(
        support::PATIENCE,
        tokio_tungstenite::connect_async(format!("ws://{addr}/connection/websocket")),
    )
    .await;
    assert!(matches!(again, Ok(Ok(_))), "a connection is accepted once descriptors are free");
}

/// User plus system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// A config for a node of a cluster on `redis_url`, with fast presence.
fn cluster_config(redis_url: &str, prefix: &str) -> String {
    format!(
        r#"
[engine]
type = "redis"
address = "{redis_url}"
prefix = "{prefix}"

[client]
token_hmac_secret = "cluster-secret"
presence_update_interval = "500ms"
presence_ttl = "2s"

[api]
key = "cluster-key"

[channel.namespaces.feed]
history_size = 100
force_recovery = true

[channel.namespaces.room]
presence = true
join_leave = true
"#
    )
}

async fn connect_as(addr: std::net::SocketAddr, user: &str) -> support::Client {
    let token = herald_server::auth::TokenMinter::hmac("cluster-secret").sign(&json!({"sub": user}));
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/connection/websocket")).await.unwrap();
    let mut client = support::Client::from_stream(ws);
    let reply = client.command(json!({"id": 1, "connect": {"token": token}})).await;
    assert!(reply["connect"]["client"].is_string(), "{reply}");
    client
}

/// A node killed with SIGKILL: its clients' presence expires within
/// `presence_ttl`, a leave is announced, and its subscribers recover their
/// missed publications on another node.
#[tokio::test]
async fn when_a_node_is_killed_its_clients_leave_presence_and_recover_elsewhere() {
    let redis = herald_redis::testing::RedisServer::start();
    let dir = Scratch::new("sigkill-cluster");
    std::fs::write(dir.path("herald.toml"), cluster_config(&redis.url(), "sigkill")).unwrap();
    let survivor = Served::start(&dir, "");
    let mut victim = Served::start(&dir, "");

    let mut watcher = connect_as(survivor.addr, "watcher").await;
    watcher.command(json!({"id": 2, "subscribe": {"channel": "room:x", "join_leave": true}})).await;
    assert_eq!(watcher.next_push().await["join"]["info"]["user"], "watcher");

    let mut doomed = connect_as(victim.addr, "doomed").await;
    doomed.subscribe("room:x").await;
    let epoch = doomed.subscribe("feed:x").await["subscribe"]["epoch"].as_str().unwrap().to_owned();
    assert_eq!(watcher.next_push().await["join"]["info"]["user"], "doomed");

    let api = |addr| {
        move |method: &'static str, params: serde_json::Value| async move {
            support::http_post(addr, &format!("/api/{method}"), &[("X-API-Key", "cluster-key")], &params.to_string())
                .await
        }
    };
    let survivor_api = api(survivor.addr);
    survivor_api("publish", json!({"channel": "feed:x", "data": 1})).await;
    assert_eq!(doomed.next_push().await["pub"]["offset"], 1);

    victim.signal("KILL");
    victim.wait();
    for n in 2..=4 {
        let (status, _) = survivor_api("publish", json!({"channel": "feed:x", "data": n})).await;
        assert_eq!(status, 200);
    }

    let leave = watcher.next_push().await;
    assert_eq!(leave["leave"]["info"]["user"], "doomed", "the dead node's client leaves: {leave}");
    support::eventually_async("the dead node drops out of the registry", || async {
        let (_, info) = survivor_api("info", json!({})).await;
        info["result"]["nodes"].as_array().map(Vec::len) == Some(1)
    })
    .await;
    let (_, stats) = survivor_api("presence_stats", json!({"channel": "room:x"})).await;
    assert_eq!(stats["result"], json!({"num_clients": 1, "num_users": 1}), "no drift");

    let mut moved = connect_as(survivor.addr, "doomed").await;
    let reply = moved
        .command(json!({"id": 3, "subscribe": {"channel": "feed:x", "recover": true, "offset": 1, "epoch": epoch}}))
        .await;
    assert_eq!(reply["subscribe"]["recovered"], true, "{reply}");
    let replayed: Vec<u64> =
        reply["subscribe"]["publications"].as_array().unwrap().iter().map(|p| p["offset"].as_u64().unwrap()).collect();
    assert_eq!(replayed, [2, 3, 4], "exactly the missed publications, in order, once");
}
