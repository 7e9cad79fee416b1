//! The `herald` binary itself: what it does on SIGHUP.

use crate::support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A `herald serve` process and the lines it has logged so far.
struct Herald {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    port: u16,
}

impl Herald {
    fn serve(config: &std::path::Path, port: u16) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["serve", "--config"])
            .arg(config)
            .env("NO_COLOR", "1")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("herald starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let seen = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                seen.lock().unwrap().push(line);
            }
        });
        let herald = Self { child, lines, port };
        herald.wait_for("it listens", |l| l.contains("herald listening"));
        herald
    }

    /// Waits (up to the tests' patience) for a logged line that `matches`.
    fn wait_for(&self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + support::PATIENCE;
        loop {
            if let Some(line) = self.lines.lock().unwrap().iter().find(|l| matches(l)) {
                return line.clone();
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting until {what}; logged:\n{:#?}",
                self.lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn hang_up(&self) {
        let status = Command::new("kill").args(["-HUP", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const OLD_SECRET: &str = "a-test-secret-long-enough";
const NEW_SECRET: &str = "another-test-secret-long-enough";

fn config_text(port: u16, level: &str, api_key: &str, secret: &str, more: &str) -> String {
    format!(
        "[http]\nport = {port}\naddress = \"127.0.0.1\"\n[api]\nkey = \"{api_key}\"\n\
         [client]\ntoken_hmac_secret = \"{secret}\"\n[log]\nlevel = \"{level}\"\n{more}"
    )
}

/// The reply to a connect with a token signed with `secret`, and then to a
/// subscription to `channel`.
async fn connect_and_subscribe(port: u16, secret: &str, channel: &str) -> (serde_json::Value, serde_json::Value) {
    let url = format!("ws://127.0.0.1:{port}/connection/websocket");
    let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("WebSocket handshake");
    let mut client = support::Client::from_stream(ws);
    let token = herald_server::auth::TokenMinter::hmac(secret).sign(&serde_json::json!({"sub": "42"}));
    let connected = client.command(serde_json::json!({"id": 1, "connect": {"token": token}})).await;
    let subscribed = client.command(serde_json::json!({"id": 2, "subscribe": {"channel": channel}})).await;
    (connected, subscribed)
}

/// The status of a Pusher HTTP API call to app 1, signed with `secret`.
async fn pusher_status(port: u16, secret: &str) -> u16 {
    use herald_server::pusher::sign;
    let params = vec![
        ("auth_key".to_owned(), "app-key".to_owned()),
        ("auth_timestamp".to_owned(), herald_server::auth::unix_now().to_string()),
        ("auth_version".to_owned(), "1.0".to_owned()),
    ];
    let path = "/apps/1/channels";
    let signature = sign::hmac_hex(secret, sign::request_message("GET", path, &params).as_bytes());
    let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let target = format!("{path}?{}&auth_signature={signature}", query.join("&"));
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    support::http_get(addr, &target).await.0
}

fn pusher_app(secret: &str) -> String {
    format!("[[pusher.apps]]\nid = \"1\"\nkey = \"app-key\"\nsecret = \"{secret}\"\n")
}

async fn api_status(port: u16, key: &str) -> u16 {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    support::http_post(addr, "/api/info", &[("X-API-Key", key)], "{}").await.0
}

#[tokio::test]
async fn sighup_applies_levels_namespaces_and_keys_names_what_needs_a_restart_and_refuses_a_bad_file() {
    let dir = std::env::temp_dir().join(format!("herald-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("herald.toml");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let first = pusher_app("first-app-secret");
    std::fs::write(&file, config_text(port, "info", "first-key-0123456789", OLD_SECRET, &first)).unwrap();
    let herald = Herald::serve(&file, port);
    let (_, before) = connect_and_subscribe(port, OLD_SECRET, "games:1").await;
    assert_eq!(before["error"]["code"], 102, "no games namespace yet: {before}");

    let more = format!(
        "[channel.namespaces.games]\nsubscribe = \"anyone\"\n[pusher]\nactivity_timeout = \"60s\"\n{}",
        pusher_app("second-app-secret")
    );
    std::fs::write(&file, config_text(port, "debug", "second-key-0123456789", NEW_SECRET, &more)).unwrap();
    herald.hang_up();

    let read = herald.wait_for("the file is read again", |l| l.contains("configuration read again"));
    for applied in ["log.level = \\\"debug\\\"", "channel namespaces", "api.key", "client token keys", "pusher apps"] {
        assert!(read.contains(applied), "{applied} not applied: {read}");
    }
    let restart = herald.wait_for("what needs a restart is named", |l| l.contains("only after a restart"));
    assert!(restart.contains("pusher") && !restart.contains("api"), "{restart}");
    let (_, after) = connect_and_subscribe(port, NEW_SECRET, "games:1").await;
    assert!(after["subscribe"].is_object(), "the new namespace and secret serve at once: {after}");
    let (old_token, _) = connect_and_subscribe(port, OLD_SECRET, "games:1").await;
    assert!(old_token["connect"].is_object(), "the old secret is still accepted during the overlap: {old_token}");
    assert_eq!(
        (api_status(port, "first-key-0123456789").await, api_status(port, "second-key-0123456789").await),
        (200, 200)
    );
    assert_eq!(api_status(port, "no-such-key-0123456789").await, 401);
    let signed = (pusher_status(port, "first-app-secret").await, pusher_status(port, "second-app-secret").await);
    assert_eq!(signed, (200, 200), "the replaced app secret still signs during the overlap");
    assert_eq!(pusher_status(port, "not-the-app-secret").await, 401);

    std::fs::write(&file, "[http]\nport = \"eighty\"\n").unwrap();
    herald.hang_up();
    let refused = herald.wait_for("the bad file is refused", |l| l.contains("configuration refused"));
    assert!(refused.contains("http.port"), "{refused}");
    // Every problem at once: the secrets the file lacks are named with its bad setting.
    herald
        .wait_for("the missing API key is named too", |l| l.contains("configuration refused") && l.contains("api.key"));
    let kept = herald.wait_for("the running config is kept", |l| l.contains("running configuration is kept"));
    assert!(kept.contains("count=3"), "a bad port, no token key, no API key: {kept}");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], herald.port));
    assert_eq!(support::http_get(addr, "/health").await.0, 200, "still serving");
    let _ = std::fs::remove_dir_all(&dir);
}
