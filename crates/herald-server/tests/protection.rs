//! A hostile client cannot hold the node's resources: each attack runs at
//! small scale against a node with short deadlines, and a bystander
//! connection must be unaffected.
//!
//! - Slowloris: headers that never finish, and idle keep-alive
//!   connections, are closed after `http.handshake_timeout`.
//! - Unauthenticated memory: an API call or a Pusher API call without valid
//!   credentials is refused before its body is read; a body above
//!   `http.max_body_size` is refused from its `Content-Length`, and one
//!   sent too slowly is cut off after `http.body_timeout`.
//! - Caps: the node's and each address's open connections, and the rate of
//!   new connections per address.
//! - Slow reads: a client that stops reading cannot make the kernel hold
//!   its publications (`http.max_unsent_bytes`); its blocked writes close
//!   it as slow.

use crate::support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Client, TestServer, API_KEY, PATIENCE};
use herald_server::config::{Config, PusherApp, Secret};

const SHORT: Duration = Duration::from_secs(1);

/// A node whose handshake and body deadlines are one second.
async fn strict(tweak: impl FnOnce(&mut Config)) -> TestServer {
    TestServer::with(|config| {
        config.http.handshake_timeout = SHORT;
        config.http.body_timeout = SHORT;
        tweak(config);
    })
    .await
}

async fn bystander(server: &TestServer) -> Client {
    let mut client = server.connected("bystander").await;
    client.subscribe("news").await;
    client
}

async fn assert_unaffected(server: &TestServer, bystander: &mut Client, n: u32) {
    server.publish("news", json!({"n": n})).await;
    assert_eq!(bystander.next_push().await["pub"]["data"]["n"], n, "the bystander still gets publications");
}

/// Sends `bytes` and returns what the server answers until it closes the
/// connection; fails if it does not close it within `PATIENCE`.
async fn answer_then_close(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("send");
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection in time")
        .ok();
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status of an HTTP answer, 0 for none.
fn status(answer: &str) -> u16 {
    answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[tokio::test]
async fn headers_that_never_finish_are_cut_off_after_the_handshake_timeout() {
    let server = strict(|_| {}).await;
    let mut watcher = bystander(&server).await;
    let half_sent = b"GET /connection/websocket HTTP/1.1\r\nHost: herald\r\nUpgrade: websocket\r\n";
    let started = tokio::time::Instant::now();
    let answers = futures_util::future::join_all((0..20).map(|_| answer_then_close(server.addr, half_sent))).await;
    assert!(started.elapsed() >= SHORT, "not before the timeout");
    assert!(answers.iter().all(|a| !a.contains("101")), "no half-sent upgrade is accepted: {answers:?}");
    assert_unaffected(&server, &mut watcher, 1).await;
}

#[tokio::test]
async fn tls_handshakes_that_never_finish_are_cut_off_after_the_handshake_timeout() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let server = strict(|c| {
        c.http.tls_cert = Some(format!("{fixtures}/tls-server.pem"));
        c.http.tls_key = Some(herald_server::config::Secret::new(format!("{fixtures}/tls-server.key.pem")));
    })
    .await;
    // Nothing, and the first bytes of a ClientHello that never goes on.
    let started = tokio::time::Instant::now();
    let silent = (0..10).map(|_| answer_then_close(server.addr, b""));
    let stalled = (0..10).map(|_| answer_then_close(server.addr, &[0x16, 0x03, 0x01, 0x02, 0x00]));
    let answers = futures_util::future::join_all(silent.chain(stalled)).await;
    assert!(started.elapsed() >= SHORT, "not before the timeout");
    assert!(answers.iter().all(String::is_empty), "{answers:?}");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_handshake_timeout() {
    let server = strict(|_| {}).await;
    let answer = answer_then_close(server.addr, b"GET /health HTTP/1.1\r\nHost: herald\r\n\r\n").await;
    assert_eq!(status(&answer), 200, "the request is answered, then the idle connection closed: {answer}");
}

#[tokio::test]
async fn an_api_call_without_the_key_is_refused_before_its_body_is_read() {
    let server = strict(|_| {}).await;
    let mut watcher = bystander(&server).await;
    // A body announced but never sent: only a refusal made from the
    // headers can answer it.
    for key in ["", "X-API-Key: wrong\r\n"] {
        let request = format!("POST /api/publish HTTP/1.1\r\nHost: herald\r\n{key}Content-Length: 1000000\r\n\r\n");
        let answer = answer_then_close(server.addr, request.as_bytes()).await;
        assert_eq!(status(&answer), 401, "{answer}");
    }
    assert_unaffected(&server, &mut watcher, 1).await;
}

#[tokio::test]
async fn a_pusher_api_call_with_a_bad_signature_is_refused_before_its_body_is_read() {
    let server = strict(|config| {
        let app =
            PusherApp { id: "1".into(), key: "key".into(), secret: Secret::new("secret-123"), ..PusherApp::default() };
        config.pusher.apps.push(app);
    })
    .await;
    let now = herald_server::auth::unix_now();
    let target =
        format!("/apps/1/events?auth_key=key&auth_timestamp={now}&auth_version=1.0&body_md5=x&auth_signature=00");
    let request = format!("POST {target} HTTP/1.1\r\nHost: herald\r\nContent-Length: 1000000\r\n\r\n");
    assert_eq!(status(&answer_then_close(server.addr, request.as_bytes()).await), 401);
    let unknown = "POST /apps/nope/events HTTP/1.1\r\nHost: herald\r\nContent-Length: 1000000\r\n\r\n";
    assert_eq!(status(&answer_then_close(server.addr, unknown.as_bytes()).await), 404, "an unknown app, likewise");
}

#[tokio::test]
async fn a_body_above_the_limit_is_refused_and_one_sent_too_slowly_is_cut_off() {
    let server = strict(|config| config.http.max_body_size = 4096).await;
    let too_large =
        format!("POST /api/info HTTP/1.1\r\nHost: herald\r\nX-API-Key: {API_KEY}\r\nContent-Length: 5000\r\n\r\n");
    assert_eq!(status(&answer_then_close(server.addr, too_large.as_bytes()).await), 413);

    let chunked = format!(
        "POST /api/info HTTP/1.1\r\nHost: herald\r\nX-API-Key: {API_KEY}\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n{}\r\n1000\r\n{}\r\n0\r\n\r\n",
        "x".repeat(4096),
        "x".repeat(4096)
    );
    assert_eq!(
        status(&answer_then_close(server.addr, chunked.as_bytes()).await),
        413,
        "a body without a length, counted as it comes"
    );

    let slow =
        format!("POST /api/info HTTP/1.1\r\nHost: herald\r\nX-API-Key: {API_KEY}\r\nContent-Length: 100\r\n\r\n{{");
    let started = tokio::time::Instant::now();
    assert_eq!(status(&answer_then_close(server.addr, slow.as_bytes()).await), 408);
    assert!(started.elapsed() >= SHORT);

    let (code, _) = server.api("info", json!({})).await;
    assert_eq!(code, 200, "a proper call is served");
}

#[tokio::test]
async fn an_address_holds_only_its_share_of_connections() {
    let server = TestServer::with(|config| config.http.max_connections_per_ip = 3).await;
    let mut held = vec![server.connected("a").await, server.connected("b").await, server.connected("c").await];
    let refused = answer_then_close(server.addr, b"GET /health HTTP/1.1\r\nHost: herald\r\n\r\n").await;
    assert_eq!(status(&refused), 429, "{refused}");
    held.pop();
    support::eventually_async("the closed connection's place is free again", || async {
        let answer =
            answer_then_close(server.addr, b"GET /health HTTP/1.1\r\nHost: herald\r\nConnection: close\r\n\r\n").await;
        status(&answer) == 200
    })
    .await;
    for client in &mut held {
        client.assert_alive().await;
    }
}

#[tokio::test]
async fn the_node_refuses_connections_above_its_cap_with_503() {
    let server = TestServer::with(|config| config.http.max_connections = 2).await;
    let mut held = vec![server.connected("a").await, server.connected("b").await];
    let refused = answer_then_close(server.addr, b"GET /health HTTP/1.1\r\nHost: herald\r\n\r\n").await;
    assert_eq!(status(&refused), 503, "{refused}");
    for client in &mut held {
        client.assert_alive().await;
    }
}

#[tokio::test]
async fn an_address_opening_connections_too_fast_is_refused_with_429() {
    let server = TestServer::with(|config| config.http.connection_rate_per_ip = 5).await;
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let answer =
            answer_then_close(server.addr, b"GET /health HTTP/1.1\r\nHost: herald\r\nConnection: close\r\n\r\n").await;
        statuses.push(status(&answer));
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 5, "the burst is the rate: {statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429), "{statuses:?}");
}

/// A WebSocket handshake to `path` with this `Origin`; the HTTP status it
/// got (101 when it was upgraded).
async fn handshake_status(server: &TestServer, path: &str, origin: Option<&str>) -> u16 {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{}{path}", server.addr).into_client_request().expect("a request");
    if let Some(origin) = origin {
        request.headers_mut().insert("Origin", origin.parse().expect("a header value"));
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((_, response)) => response.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("handshake failed otherwise: {other}"),
    }
}

#[tokio::test]
async fn only_allowed_web_pages_may_open_websockets_on_either_protocol() {
    let server = TestServer::with(|config| {
        config.http.allowed_origins = vec!["https://app.example.com".into()];
        let app =
            PusherApp { id: "1".into(), key: "key".into(), secret: Secret::new("secret-123"), ..PusherApp::default() };
        config.pusher.apps.push(app);
    })
    .await;
    let mut watcher = bystander(&server).await;
    for path in ["/connection/websocket", "/app/key?protocol=7"] {
        assert_eq!(handshake_status(&server, path, Some("https://evil.example")).await, 403, "{path}");
        assert_eq!(handshake_status(&server, path, Some("https://app.example.com")).await, 101, "{path}");
        assert_eq!(handshake_status(&server, path, None).await, 101, "{path}: not a browser");
    }
    assert_unaffected(&server, &mut watcher, 1).await;
}

/// Opens a WebSocket whose socket takes only a few kilobytes before the
/// server's writes to it block (a small receive buffer), connected as `user`.
async fn tight_client(server: &TestServer, user: &str) -> Client {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(server.ws_url(), tokio_tungstenite::MaybeTlsStream::Plain(stream))
        .await
        .unwrap();
    let mut client = Client::from_stream(ws);
    let token = server.token(user);
    let reply = client.command(json!({"id": 1, "connect": {"token": token}})).await;
    assert!(reply.get("connect").is_some(), "{reply}");
    client
}

#[tokio::test]
async fn a_client_that_stops_reading_a_trickle_is_closed_as_slow_after_the_write_timeout() {
    // Far less than the outbox holds arrives, slowly: only the blocked
    // write can tell that the client stopped reading.
    let server = TestServer::with(|c| c.client.write_timeout = SHORT).await;
    let mut stalled = tight_client(&server, "stalled").await;
    stalled.subscribe("trickle").await;
    let mut bystander = server.connected("bystander").await;
    bystander.subscribe("trickle").await;
    let pad = "x".repeat(1000);
    let started = tokio::time::Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(6) {
        server.publish("trickle", json!({"n": sent, "pad": pad})).await;
        assert_eq!(bystander.next_push().await["pub"]["data"]["n"], sent);
        sent += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, info) = server.api("info", json!({})).await;
    assert_eq!(info["result"]["nodes"][0]["num_clients"], 1, "only the bystander is left after {sent} publications");
    // What the stalled client finds once it reads again: what was sent
    // before the close, then the close (3008), or just the end of the
    // connection when its socket had no room left for the close frame.
    loop {
        match stalled.next().await {
            support::Seen::Json(_) => continue,
            support::Seen::Closed(code, _) => break assert_eq!(code, 3008),
            support::Seen::Gone => break,
        }
    }
}

#[tokio::test]
async fn a_user_is_held_to_one_rate_across_its_connections_and_others_are_not() {
    let server = TestServer::with(|c| {
        c.client.user_command_rate = 1;
        c.client.user_command_burst = 2;
    })
    .await;
    // Commands count once the connection has a user (after its connect).
    let mut first = server.connected("alice").await;
    let mut second = server.connected("alice").await;
    let mut bystander = server.connected("bob").await;
    let mut codes = Vec::new();
    for n in 0..3 {
        let client = if n == 1 { &mut second } else { &mut first };
        let id = client.id();
        let reply = client.command(json!({"id": id, "ping": {}})).await;
        codes.push(reply["error"]["code"].as_u64().unwrap_or(0));
    }
    assert_eq!(codes, [0, 0, 111], "the third command of the user is over its rate");
    bystander.assert_alive().await;
}

#[tokio::test]
async fn a_namespace_rate_holds_commands_about_its_channels_only() {
    let server = TestServer::with(|c| {
        let feed = herald_core::NamespaceOptions {
            command_rate: 1,
            command_burst: 2,
            history_size: 10,
            allow_history_for_subscriber: true,
            ..Default::default()
        };
        c.channel.namespaces.insert("feed".into(), feed);
    })
    .await;
    let mut client = server.connected("42").await;
    client.subscribe("feed:a").await;
    let mut codes = Vec::new();
    for _ in 0..2 {
        let id = client.id();
        let reply = client.command(json!({"id": id, "history": {"channel": "feed:a", "limit": 1}})).await;
        codes.push(reply["error"]["code"].as_u64().unwrap_or(0));
    }
    assert_eq!(codes, [0, 111], "the subscribe and one history read make the burst of feed:*");
    client.subscribe("news").await;
    client.assert_alive().await;
}
