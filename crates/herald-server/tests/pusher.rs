//! The Pusher front-end over real WebSockets and HTTP: bad input of every
//! kind gets the Pusher error code or HTTP status it should, and never
//! affects a bystander connection. (The npm clients prove compatibility in
//! `tests/compat`; these tests pin the refusals.)

use crate::support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::{eventually, Client, Seen, TestServer, PATIENCE};
use herald_server::config::{Config, PusherApp, Secret, WebhookTarget};
use herald_server::pusher::sign;

const APP_ID: &str = "app-1";
const KEY: &str = "app-key";
const SECRET: &str = "app-secret-for-tests";

pub(crate) fn with_app(config: &mut Config, tweak: impl FnOnce(&mut PusherApp)) {
    let mut app = PusherApp {
        id: APP_ID.into(),
        key: KEY.into(),
        secret: Secret::new(SECRET),
        client_events: true,
        ..PusherApp::default()
    };
    tweak(&mut app);
    config.pusher.apps.push(app);
}

async fn server() -> TestServer {
    TestServer::with(|c| with_app(c, |_| {})).await
}

/// A raw Pusher protocol client.
struct Pusher {
    client: Client,
    socket_id: String,
}

impl Pusher {
    async fn open(server: &TestServer, path: &str) -> Client {
        let url = format!("ws://{}{path}", server.addr);
        let (ws, _) = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(url))
            .await
            .expect("handshake in time")
            .expect("handshake succeeds");
        Client::from_stream(ws)
    }

    async fn connect(server: &TestServer) -> Self {
        Self::connect_to(server, KEY).await
    }

    /// Connects to the app whose key is `key`.
    async fn connect_to(server: &TestServer, key: &str) -> Self {
        let mut client = Self::open(server, &format!("/app/{key}?protocol=7&client=js&version=8.4.0")).await;
        let established = next_json(&mut client).await;
        assert_eq!(established["event"], "pusher:connection_established");
        let data: Value = serde_json::from_str(established["data"].as_str().unwrap()).unwrap();
        assert_eq!(data["activity_timeout"], 120);
        let socket_id = data["socket_id"].as_str().unwrap().to_owned();
        Self { client, socket_id }
    }

    async fn send(&mut self, frame: Value) {
        self.client.send(frame).await;
    }

    async fn next(&mut self) -> Value {
        next_json(&mut self.client).await
    }

    fn auth(&self, channel: &str, channel_data: Option<&str>) -> String {
        let message = sign::channel_message(&self.socket_id, channel, channel_data);
        format!("{KEY}:{}", sign::hmac_hex(SECRET, message.as_bytes()))
    }

    async fn subscribe(&mut self, channel: &str) -> Value {
        let auth = herald_server::pusher::is_private(channel).then(|| self.auth(channel, None));
        self.send(json!({"event": "pusher:subscribe", "data": {"channel": channel, "auth": auth}})).await;
        let reply = self.next().await;
        assert_eq!(reply["event"], "pusher_internal:subscription_succeeded", "subscribe to {channel}: {reply}");
        reply
    }

    /// Joins the presence channel `channel` as the member `user_id`.
    async fn join_presence(&mut self, channel: &str, user_id: &str) {
        let data = json!({ "user_id": user_id }).to_string();
        let auth = self.auth(channel, Some(&data));
        self.send(
            json!({"event": "pusher:subscribe", "data": {"channel": channel, "auth": auth, "channel_data": data}}),
        )
        .await;
        let reply = self.next().await;
        assert_eq!(reply["event"], "pusher_internal:subscription_succeeded", "join {channel}: {reply}");
    }

    /// Signs in as `id` to the app of `key` and `secret`.
    async fn sign_in(&mut self, id: &str, key: &str, secret: &str) {
        self.sign_in_as(json!({ "id": id }), key, secret).await;
    }

    /// Signs in with `user_data` to the app of `key` and `secret`.
    async fn sign_in_as(&mut self, user_data: Value, key: &str, secret: &str) {
        let user_data = user_data.to_string();
        let message = sign::signin_message(&self.socket_id, &user_data);
        let auth = format!("{key}:{}", sign::hmac_hex(secret, message.as_bytes()));
        self.send(json!({"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}})).await;
        assert_eq!(self.next().await["event"], "pusher:signin_success");
    }

    /// Asserts the connection still answers a ping.
    async fn assert_alive(&mut self) {
        self.send(json!({"event": "pusher:ping", "data": {}})).await;
        assert_eq!(self.next().await["event"], "pusher:pong");
    }
}

async fn next_json(client: &mut Client) -> Value {
    match client.next().await {
        Seen::Json(value) => value,
        other => panic!("expected a frame, got {other:?}"),
    }
}

/// Signs an HTTP API request as the Pusher SDKs do and sends it.
async fn api(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    tweak: impl FnOnce(&mut Vec<(String, String)>),
) -> (u16, Value) {
    let mut params = vec![
        ("auth_key".to_owned(), KEY.to_owned()),
        ("auth_timestamp".to_owned(), herald_server::auth::unix_now().to_string()),
        ("auth_version".to_owned(), "1.0".to_owned()),
    ];
    if !body.is_empty() {
        params.push(("body_md5".to_owned(), sign::body_md5(body.as_bytes())));
    }
    let (path, extra) = path.split_once('?').unwrap_or((path, ""));
    for pair in extra.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap();
        params.push((k.to_owned(), v.to_owned()));
    }
    tweak(&mut params);
    let signature = sign::hmac_hex(SECRET, sign::request_message(method, path, &params).as_bytes());
    if !params.iter().any(|(k, _)| k == "auth_signature") {
        params.push(("auth_signature".to_owned(), signature));
    }
    let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    http(addr, method, &format!("{path}?{}", query.join("&")), body).await
}

async fn http(addr: SocketAddr, method: &str, target: &str, body: &str) -> (u16, Value) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut response)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&response);
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap();
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

async fn trigger(addr: SocketAddr, body: Value) -> (u16, Value) {
    api(addr, "POST", &format!("/apps/{APP_ID}/events"), &body.to_string(), |_| {}).await
}

#[tokio::test]
async fn connections_to_an_unknown_app_or_protocol_are_refused_with_pusher_codes() {
    let server = server().await;
    let mut bystander = Pusher::connect(&server).await;
    for (path, code) in [
        ("/app/nope?protocol=7", 4001),
        (&format!("/app/{KEY}")[..], 4008),
        (&format!("/app/{KEY}?protocol=3")[..], 4007),
        (&format!("/app/{KEY}?protocol=x")[..], 4007),
    ] {
        let mut client = Pusher::open(&server, path).await;
        let error = next_json(&mut client).await;
        assert_eq!(
            (error["event"].as_str(), error["data"]["code"].as_u64()),
            (Some("pusher:error"), Some(code)),
            "{path}"
        );
        assert_eq!(u64::from(client.closed().await.0), code, "{path}");
    }
    bystander.assert_alive().await;
}

#[tokio::test]
async fn an_app_over_its_connection_quota_refuses_with_4004() {
    let server = TestServer::with(|c| with_app(c, |app| app.max_connections = 1)).await;
    let mut first = Pusher::connect(&server).await;
    let mut second = Pusher::open(&server, &format!("/app/{KEY}?protocol=7")).await;
    assert_eq!(next_json(&mut second).await["data"]["code"], 4004);
    assert_eq!(second.closed().await.0, 4004);
    first.assert_alive().await;
}

#[tokio::test]
async fn bad_authorizations_refuse_the_subscription_not_the_connection() {
    let server = server().await;
    let mut client = Pusher::connect(&server).await;
    let other_socket = sign::channel_message("1.1", "private-a", None);
    let stolen = format!("{KEY}:{}", sign::hmac_hex(SECRET, other_socket.as_bytes()));
    let cases = [
        json!({"channel": "private-a"}),
        json!({"channel": "private-a", "auth": "app-key:00ff"}),
        json!({"channel": "private-a", "auth": stolen}),
        json!({"channel": "presence-a", "auth": client.auth("presence-a", None)}),
        json!({"channel": "private-encrypted-a", "auth": "other-key:00"}),
    ];
    for data in cases {
        client.send(json!({"event": "pusher:subscribe", "data": data})).await;
        let refusal = client.next().await;
        assert_eq!(refusal["event"], "pusher:subscription_error", "{data}");
        assert_eq!(refusal["channel"], data["channel"]);
        let status = if data["channel"] == "presence-a" { 400 } else { 401 }; // presence needs channel_data
        assert_eq!(refusal["data"]["status"], status, "{data}");
    }
    client.send(json!({"event": "pusher:subscribe", "data": {"channel": "bad name!"}})).await;
    assert_eq!(client.next().await["data"]["status"], 400);
    // Signed, and still past Pusher's bounds on a member: a 129-character
    // id, or user_info over 1 KiB (every member list and join carries it).
    let long_id = json!({"user_id": "u".repeat(129)}).to_string();
    let large_info = json!({"user_id": "7", "user_info": {"bio": "b".repeat(1024)}}).to_string();
    for member in [long_id, large_info] {
        let auth = client.auth("presence-a", Some(&member));
        let data = json!({"channel": "presence-a", "auth": auth, "channel_data": member});
        client.send(json!({"event": "pusher:subscribe", "data": data})).await;
        let refusal = client.next().await;
        assert_eq!(
            (refusal["event"].as_str(), refusal["data"]["status"].as_u64()),
            (Some("pusher:subscription_error"), Some(400)),
            "{refusal}"
        );
    }
    client.assert_alive().await;
}

#[tokio::test]
async fn malformed_and_binary_frames_get_errors_and_closes_without_harming_others() {
    let server = server().await;
    let mut bystander = Pusher::connect(&server).await;
    bystander.subscribe("news").await;
    let mut client = Pusher::connect(&server).await;
    for garbage in ["not json", "{\"no_event\":1}", "[]", "{\"event\":\"pusher:subscribe\"}"] {
        client.client.send_text(garbage).await;
        assert_eq!(client.next().await["event"], "pusher:error", "{garbage}");
    }
    client.assert_alive().await;
    client.client.send_binary(vec![0, 1, 2]).await;
    assert_eq!(client.client.closed().await.0, 4007);

    let mut huge = Pusher::connect(&server).await;
    huge.client.send_text(&"x".repeat(128 * 1024)).await;
    assert_eq!(huge.client.closed().await.0, 1009);

    trigger(server.addr, json!({"name": "still", "channel": "news", "data": "{}"})).await;
    assert_eq!(bystander.next().await["event"], "still");
}

#[tokio::test]
async fn client_events_are_refused_where_pusher_refuses_them() {
    let server = TestServer::with(|c| with_app(c, |app| app.max_event_size = 100)).await;
    let mut alice = Pusher::connect(&server).await;
    let mut bob = Pusher::connect(&server).await;
    for client in [&mut alice, &mut bob] {
        client.subscribe("news").await;
        client.subscribe("private-chat").await;
        client.subscribe("private-encrypted-vault").await;
    }
    let sealed = json!({"ciphertext": "c2VhbGVkIGJ5IG5vIGtleQ==", "nonce": "bm9uY2Ugb2YgMjQgYnl0ZXMgZXhhY3RseQ=="});
    let refusals = [
        json!({"event": "client-x", "channel": "news", "data": {}}),
        json!({"event": "client-x", "channel": "private-elsewhere", "data": {}}),
        json!({"event": "client-x", "channel": "private-chat", "data": {"text": "y".repeat(200)}}),
        json!({"event": "client-x", "channel": "private-encrypted-vault", "data": sealed}),
    ];
    for frame in refusals {
        alice.send(frame.clone()).await;
        let error = alice.next().await;
        assert_eq!(
            (error["event"].as_str(), error["data"]["code"].as_u64()),
            (Some("pusher:error"), Some(4301)),
            "{frame}"
        );
    }
    alice.send(json!({"event": "client-typing", "channel": "private-chat", "data": {"on": true}})).await;
    let delivered = bob.next().await;
    assert_eq!(
        (delivered["event"].as_str(), delivered["channel"].as_str()),
        (Some("client-typing"), Some("private-chat"))
    );
    assert_eq!(serde_json::from_str::<Value>(delivered["data"].as_str().unwrap()).unwrap(), json!({"on": true}));
    alice.assert_alive().await; // nothing was echoed to the sender, and it is still connected

    // Written by hand: json! would sort the keys before they left.
    let frame = r#"{"event":"client-typing","channel":"private-chat","data":{"z":1,"a":{"y":2,"b":3}}}"#;
    alice.client.send_text(frame).await;
    let delivered = bob.next().await;
    assert_eq!(delivered["data"], r#"{"z":1,"a":{"y":2,"b":3}}"#, "the data as the client wrote it, keys in order");

    // Half an emoji: JSON's grammar allows the escape, but it is no text.
    alice.client.send_text(r#"{"event":"client-typing","channel":"private-chat","data":"\ud83d"}"#).await;
    assert_eq!(alice.next().await["event"], "pusher:error", "refused, not sent on as empty data");
    bob.assert_alive().await;
}

#[tokio::test]
async fn client_events_beyond_the_rate_limit_are_refused() {
    let server = TestServer::with(|c| with_app(c, |app| app.client_event_rate = 3)).await;
    let mut alice = Pusher::connect(&server).await;
    alice.subscribe("private-chat").await;
    for n in 0..4 {
        alice.send(json!({"event": "client-n", "channel": "private-chat", "data": {"n": n}})).await;
    }
    let error = alice.next().await;
    assert_eq!(error["data"]["code"], 4301, "the fourth event in a second: {error}");
    assert!(error["data"]["message"].as_str().unwrap().contains("rate limit"));
}

#[tokio::test]
async fn client_events_are_refused_when_the_app_does_not_enable_them() {
    let server = TestServer::with(|c| with_app(c, |app| app.client_events = false)).await;
    let mut alice = Pusher::connect(&server).await;
    alice.subscribe("private-chat").await;
    alice.send(json!({"event": "client-x", "channel": "private-chat", "data": {}})).await;
    assert_eq!(alice.next().await["data"]["code"], 4301);
}

#[tokio::test]
async fn a_bad_sign_in_is_refused_with_4009() {
    let server = server().await;
    let mut bystander = Pusher::connect(&server).await;
    let mut client = Pusher::connect(&server).await;
    client.send(json!({"event": "pusher:signin", "data": {"auth": "app-key:00", "user_data": "{\"id\":\"7\"}"}})).await;
    assert_eq!(client.next().await["data"]["code"], 4009);
    assert_eq!(client.client.closed().await.0, 4009);
    bystander.assert_alive().await;
}

#[tokio::test]
async fn terminating_a_users_connections_closes_them_in_that_app_only() {
    const OTHER_SECRET: &str = "the-other-apps-secret";
    let server = TestServer::with(|c| {
        with_app(c, |_| {});
        with_app(c, |app| {
            app.id = "app-2".into();
            app.key = "other-key".into();
            app.secret = Secret::new(OTHER_SECRET);
            app.namespace = "room".into();
        });
    })
    .await;
    let mut here = Pusher::connect(&server).await;
    here.sign_in("7", KEY, SECRET).await;
    let mut in_the_other_app = Pusher::connect_to(&server, "other-key").await;
    in_the_other_app.sign_in("7", "other-key", OTHER_SECRET).await;
    let mut centrifuge_user = server.connected("7").await;

    let path = format!("/apps/{APP_ID}/users/7/terminate_connections");
    let (status, reply) = api(server.addr, "POST", &path, "{}", |_| {}).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(here.client.closed().await.0, 4009);
    in_the_other_app.assert_alive().await;
    centrifuge_user.assert_alive().await;
}

/// As Pusher: a presence authorization without channel_data makes a
/// signed-in connection the member its sign-in named.
#[tokio::test]
async fn a_signed_in_user_joins_a_presence_channel_as_itself_when_its_authorization_names_no_member() {
    let server = server().await;
    let mut ann = Pusher::connect(&server).await;
    ann.sign_in_as(json!({"id": "7", "user_info": {"name": "Ann"}}), KEY, SECRET).await;
    let auth = ann.auth("presence-room", None);
    ann.send(json!({"event": "pusher:subscribe", "data": {"channel": "presence-room", "auth": auth}})).await;
    let joined = ann.next().await;
    assert_eq!(joined["event"], "pusher_internal:subscription_succeeded", "{joined}");
    let data: Value = serde_json::from_str(joined["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["presence"]["hash"], json!({"7": {"name": "Ann"}}), "{data}");

    let mut stranger = Pusher::connect(&server).await;
    let auth = stranger.auth("presence-room", None);
    stranger.send(json!({"event": "pusher:subscribe", "data": {"channel": "presence-room", "auth": auth}})).await;
    let refused = stranger.next().await;
    assert_eq!(refused["event"], "pusher:subscription_error", "not signed in, no member named: {refused}");
}

#[tokio::test]
async fn api_requests_are_authenticated_as_pusher_signs_them() {
    let server = server().await;
    let addr = server.addr;
    let body = json!({"name": "e", "channel": "news", "data": "{}"}).to_string();
    let path = format!("/apps/{APP_ID}/events");
    let set = |name: &'static str, value: String| {
        move |params: &mut Vec<(String, String)>| {
            params.retain(|(k, _)| k != name);
            params.push((name.to_owned(), value));
        }
    };
    let stale = (herald_server::auth::unix_now() - 601).to_string();
    let cases: Vec<(&str, (u16, Value))> = vec![
        ("valid", api(addr, "POST", &path, &body, |_| {}).await),
        ("bad signature", api(addr, "POST", &path, &body, set("auth_signature", "00".repeat(32))).await),
        ("stale timestamp", api(addr, "POST", &path, &body, set("auth_timestamp", stale)).await),
        ("other key", api(addr, "POST", &path, &body, set("auth_key", "other".into())).await),
        ("wrong body_md5", api(addr, "POST", &path, &body, set("body_md5", sign::body_md5(b"other"))).await),
        ("no body_md5", api(addr, "POST", &path, &body, |p| p.retain(|(k, _)| k != "body_md5")).await),
        ("unknown app", api(addr, "POST", "/apps/nope/events", &body, |_| {}).await),
        ("unsigned", http(addr, "POST", &path, &body).await),
        ("a name twice", api(addr, "POST", &path, &body, |p| p.push(("auth_key".into(), KEY.into()))).await),
    ];
    let statuses: Vec<(&str, u16)> = cases.iter().map(|(what, (status, _))| (*what, *status)).collect();
    assert_eq!(
        statuses,
        [
            ("valid", 200),
            ("bad signature", 401),
            ("stale timestamp", 401),
            ("other key", 401),
            ("wrong body_md5", 401),
            ("no body_md5", 401),
            ("unknown app", 404),
            ("unsigned", 401),
            ("a name twice", 400),
        ]
    );
    for (what, (_, reply)) in &cases[1..] {
        assert!(reply["error"].is_string(), "{what} says why: {reply}");
    }
}

#[tokio::test]
async fn api_triggers_validate_their_events() {
    let server = TestServer::with(|c| with_app(c, |app| app.max_event_size = 1000)).await;
    let addr = server.addr;
    let many: Vec<String> = (0..101).map(|n| format!("c{n}")).collect();
    let cases = [
        (json!({"name": "e", "channel": "news", "data": "x".repeat(1001)}), 413),
        (json!({"name": "e", "channels": many, "data": "{}"}), 400),
        (json!({"name": "e", "channel": "bad name", "data": "{}"}), 400),
        (json!({"name": "", "channel": "news", "data": "{}"}), 400),
        (json!({"name": "e", "data": "{}"}), 400),
        (json!({"name": "e", "channel": "news", "data": "{}", "socket_id": "nope"}), 400),
        (json!({"not": "an event"}), 400),
    ];
    for (body, status) in cases {
        let (got, reply) = trigger(addr, body.clone()).await;
        assert_eq!(got, status, "{body}: {reply}");
    }
    let batch: Vec<Value> = (0..11).map(|_| json!({"name": "e", "channel": "news", "data": "{}"})).collect();
    let (status, _) =
        api(addr, "POST", &format!("/apps/{APP_ID}/batch_events"), &json!({"batch": batch}).to_string(), |_| {}).await;
    assert_eq!(status, 400, "a batch carries at most 10 events");
    let (status, _) = api(addr, "GET", &format!("/apps/{APP_ID}/channels?info=user_count"), "", |_| {}).await;
    assert_eq!(status, 400, "user_count needs the presence- prefix");
    // The signature reads names in lower case; so does the call.
    let (status, _) = api(addr, "GET", &format!("/apps/{APP_ID}/channels?INFO=user_count"), "", |_| {}).await;
    assert_eq!(status, 400, "a name in capitals is the same, signed parameter");
    let (status, _) = api(addr, "GET", &format!("/apps/{APP_ID}/channels/news/users"), "", |_| {}).await;
    assert_eq!(status, 400, "users are listed for presence channels only");
}

#[tokio::test]
async fn a_batch_with_a_bad_event_publishes_none_of_its_events() {
    let server = server().await;
    let mut reader = Pusher::connect(&server).await;
    reader.subscribe("news").await;
    let batch = json!({"batch": [
        {"name": "first", "channel": "news", "data": "{}"},
        {"name": "second", "channel": "bad name", "data": "{}"},
    ]});
    let path = format!("/apps/{APP_ID}/batch_events");
    let (status, reply) = api(server.addr, "POST", &path, &batch.to_string(), |_| {}).await;
    assert_eq!(status, 400, "{reply}");

    let (status, _) = trigger(server.addr, json!({"name": "after", "channel": "news", "data": "{}"})).await;
    assert_eq!(status, 200);
    assert_eq!(reader.next().await["event"], "after", "nothing of the refused batch came before it");
}

#[tokio::test]
async fn a_trigger_skips_the_excluded_socket_and_reports_counts() {
    let server = server().await;
    let mut alice = Pusher::connect(&server).await;
    let mut bob = Pusher::connect(&server).await;
    alice.subscribe("news").await;
    bob.subscribe("news").await;
    let body = json!({"name": "e", "channels": ["news"], "data": "{\"n\":1}", "socket_id": alice.socket_id, "info": "subscription_count"});
    let (status, reply) = trigger(server.addr, body).await;
    assert_eq!((status, reply), (200, json!({"channels": {"news": {"subscription_count": 2}}})));
    assert_eq!(bob.next().await["data"], "{\"n\":1}");
    alice.assert_alive().await; // the pong is the next thing alice sees: the event skipped her
}

#[tokio::test]
async fn a_trigger_asking_user_count_of_a_public_channel_beside_a_presence_one_is_answered_for_each() {
    let server = server().await;
    let mut member = Pusher::connect(&server).await;
    member.join_presence("presence-room", "7").await;
    member.subscribe("news").await;

    let body = json!({"name": "e", "channels": ["presence-room", "news"], "data": "{}", "info": "user_count,subscription_count"});
    let (status, reply) = trigger(server.addr, body).await;
    let counts = json!({"channels": {
        "presence-room": {"user_count": 1, "subscription_count": 1},
        "news": {"subscription_count": 1},
    }});
    assert_eq!((status, reply), (200, counts), "as Pusher: user_count where there is one");
    for _ in 0..2 {
        assert_eq!(member.next().await["event"], "e", "the event went out on both channels");
    }
}

/// Over a real WebSocket, where the fanout writes to an idle socket itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_presence_subscription_is_confirmed_ahead_of_every_event_of_a_busy_channel() {
    let server = server().await;
    let addr = server.addr;
    let published = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let publishers: Vec<_> = (0..4)
        .map(|_| {
            let published = published.clone();
            tokio::spawn(async move {
                loop {
                    let body = json!({"name": "busy", "channels": ["presence-room"], "data": "{}"});
                    let (status, _) = trigger(addr, body).await;
                    assert_eq!(status, 200, "the trigger is accepted");
                    published.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
        })
        .collect();
    let joining = async {
        for n in 0..300 {
            let mut client = Pusher::connect(&server).await;
            let member = json!({ "user_id": format!("u{n}") }).to_string();
            let auth = client.auth("presence-room", Some(&member));
            let subscribe = json!({"channel": "presence-room", "auth": auth, "channel_data": member});
            client.send(json!({"event": "pusher:subscribe", "data": subscribe})).await;
            let first = client.next().await;
            assert_eq!(first["event"], "pusher_internal:subscription_succeeded", "client {n}: {first}");
        }
    };
    let finished = tokio::time::timeout(std::time::Duration::from_secs(120), joining).await;
    for publisher in publishers {
        assert!(!publisher.is_finished(), "a publisher stopped: {:?}", publisher.await);
        publisher.abort();
    }
    finished.expect("300 presence subscriptions in two minutes");
    assert!(
        published.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the channel was published to while clients joined"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_redis_a_cache_channels_last_event_reaches_a_subscriber_ahead_of_every_newer_one() {
    let redis = herald_redis::testing::RedisServer::start();
    let engine = herald_server::config::RedisEngineConfig { address: redis.url(), ..Default::default() };
    let server = TestServer::with(|c| {
        c.engine = herald_server::config::EngineConfig::Redis(engine);
        with_app(c, |_| {});
    })
    .await;
    a_cache_channels_last_event_reaches_each_subscriber_ahead_of_every_newer_one(&server).await;
}

/// On a node whose engine may hand it a publication after a history read
/// that saw it (Redis reads and delivers on two connections, NATS may
/// hold one back to put it in order): one publisher triggers rising
/// numbers into a cache channel while clients subscribe. Each client's
/// first event is the cached one and every later one is newer: none
/// twice, none older. The node has the Pusher app of [`with_app`].
pub(crate) async fn a_cache_channels_last_event_reaches_each_subscriber_ahead_of_every_newer_one(server: &TestServer) {
    let addr = server.addr;
    let published = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let publisher = tokio::spawn({
        let published = published.clone();
        async move {
            for n in 1u64.. {
                let body = json!({"name": "price", "channels": ["cache-price"], "data": json!({"n": n}).to_string()});
                let (status, _) = trigger(addr, body).await;
                assert_eq!(status, 200, "the trigger is accepted");
                published.store(n, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    eventually("the first trigger", || published.load(std::sync::atomic::Ordering::Relaxed) > 0).await;
    let subscribing = async {
        for client in 0..200 {
            let mut pusher = Pusher::connect(server).await;
            pusher.send(json!({"event": "pusher:subscribe", "data": {"channel": "cache-price"}})).await;
            let confirmed = pusher.next().await;
            assert_eq!(confirmed["event"], "pusher_internal:subscription_succeeded", "client {client}: {confirmed}");
            let mut seen = Vec::new();
            while seen.len() < 3 {
                let event = pusher.next().await;
                assert_eq!(event["event"], "price", "client {client}, after {seen:?}: {event}");
                let data: Value = serde_json::from_str(event["data"].as_str().unwrap()).unwrap();
                seen.push(data["n"].as_u64().unwrap());
            }
            let rising = seen.is_sorted_by(|a, b| a < b);
            assert!(rising, "client {client} was sent {seen:?}: an event repeated, or an older one after a newer");
        }
    };
    let finished = tokio::time::timeout(std::time::Duration::from_secs(120), subscribing).await;
    assert!(!publisher.is_finished(), "the publisher stopped: {:?}", publisher.await);
    publisher.abort();
    finished.expect("200 cache subscriptions in two minutes");
}

#[tokio::test]
async fn metrics_count_pusher_connections_and_http_api_calls_by_endpoint() {
    let server = server().await;
    let mut reader = Pusher::connect(&server).await;
    reader.subscribe("news").await;
    let (status, _) = trigger(server.addr, json!({"name": "e", "channel": "news", "data": "{}"})).await;
    assert_eq!(status, 200);
    reader.next().await;

    let (status, _, text) = support::http_get(server.addr, "/metrics").await;

    assert_eq!(status, 200);
    for line in [
        r#"herald_connections{protocol="pusher"} 1"#,
        r#"herald_subscriptions{protocol="pusher"} 1"#,
        r#"herald_sessions{protocol="pusher",transport="websocket"} 1"#,
        r#"herald_api_requests_total{api="pusher",method="events",status="200"} 1"#,
        r#"herald_publications_total{source="api"} 1"#,
        "herald_deliveries_total 1",
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
    }
}

/// A webhook receiver that checks signatures and answers 500 to the first
/// `fail_first` requests.
struct Hooks {
    addr: SocketAddr,
    events: Arc<Mutex<Vec<Value>>>,
    requests: Arc<Mutex<usize>>,
    /// How many events each accepted request carried.
    batches: Arc<Mutex<Vec<usize>>>,
}

impl Hooks {
    async fn start(fail_first: usize) -> Self {
        Self::serving(fail_first, None).await
    }

    /// A receiver at `https://localhost:port`, with the test CA's certificate.
    async fn start_over_tls(fail_first: usize) -> Self {
        use rustls::pki_types::pem::PemObject;
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
        let chain = std::fs::read(format!("{fixtures}/tls-server.pem")).unwrap();
        let chain = rustls::pki_types::CertificateDer::pem_slice_iter(&chain).map(Result::unwrap).collect();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(format!("{fixtures}/tls-server.key.pem")).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        Self::serving(fail_first, Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn serving(fail_first: usize, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hooks = Self {
            addr,
            events: Arc::new(Mutex::new(Vec::new())),
            requests: Arc::new(Mutex::new(0)),
            batches: Arc::new(Mutex::new(Vec::new())),
        };
        let seen = hooks.shared();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                match &tls {
                    None => seen.answer(tcp, fail_first).await,
                    Some(tls) => match tls.accept(tcp).await {
                        Ok(stream) => seen.answer(stream, fail_first).await,
                        Err(_) => continue,
                    },
                }
            }
        });
        hooks
    }

    /// Another handle on the same records.
    fn shared(&self) -> Self {
        Self {
            addr: self.addr,
            events: self.events.clone(),
            requests: self.requests.clone(),
            batches: self.batches.clone(),
        }
    }

    /// Reads one request, checks its signature, records its events and
    /// answers (500 to the first `fail_first` requests).
    async fn answer<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(&self, mut stream: S, fail_first: usize) {
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        let (head, body) = loop {
            let n = stream.read(&mut buf).await.unwrap();
            raw.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&raw).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if body.len() >= length {
                    break (head.to_owned(), body.to_owned());
                }
            }
        };
        let header = |name: &str| {
            head.lines().find_map(|l| {
                l.split_once(": ").filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.to_owned())
            })
        };
        let signed = header("X-Pusher-Signature") == Some(sign::hmac_hex(SECRET, body.as_bytes()))
            && header("X-Pusher-Key").as_deref() == Some(KEY)
            && header("Content-Type").as_deref() == Some("application/json");
        let n = {
            let mut count = self.requests.lock().unwrap();
            *count += 1;
            *count
        };
        let status = if !signed {
            "401 Unauthorized"
        } else if n <= fail_first {
            "500 Internal Server Error"
        } else {
            let body: Value = serde_json::from_str(&body).unwrap();
            let events = body["events"].as_array().unwrap();
            self.batches.lock().unwrap().push(events.len());
            self.events.lock().unwrap().extend(events.iter().cloned());
            "200 OK"
        };
        let response = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    }

    fn names(&self) -> Vec<String> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .map(|e| format!("{} {}", e["name"].as_str().unwrap(), e["channel"].as_str().unwrap()))
            .collect()
    }
}

/// As Pusher: a departure waits three seconds for a return (a page reload).
#[tokio::test]
async fn a_member_back_within_the_grace_sends_no_webhook_and_one_gone_for_good_sends_both_departures_after_it() {
    let hooks = Hooks::start(0).await;
    let url = format!("http://{}/hooks", hooks.addr);
    let server = TestServer::with(|c| {
        with_app(c, |app| app.webhooks.push(WebhookTarget { url, events: Vec::new(), batch: false }))
    })
    .await;
    let member = || async {
        let mut client = Pusher::connect(&server).await;
        client.join_presence("presence-room", "7").await;
        client
    };
    let arrived = ["channel_occupied presence-room", "member_added presence-room"];
    let tab = member().await;
    eventually("the arrival's webhooks", || hooks.names() == arrived).await;

    drop(tab);
    let users = format!("/apps/{APP_ID}/channels/presence-room/users");
    support::eventually_async("the node saw the tab close", || async {
        api(server.addr, "GET", &users, "", |_| {}).await.1 == json!({"users": []})
    })
    .await;
    let mut reloaded = member().await;
    // Nothing to wait on: what is checked is that nothing comes in the
    // grace, so the test waits it out.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    assert_eq!(hooks.names(), arrived, "back within the grace: neither departure nor arrival again");

    reloaded.send(json!({"event": "pusher:unsubscribe", "data": {"channel": "presence-room"}})).await;
    let left = std::time::Instant::now();
    eventually("both departures", || hooks.names().len() == 4).await;
    assert!(left.elapsed() >= std::time::Duration::from_millis(2900), "sent once the grace ended");
    let mut departed = hooks.names().split_off(2);
    departed.sort();
    assert_eq!(departed, ["channel_vacated presence-room", "member_removed presence-room"]);

    // Gone, back, and gone again: the second departure waits its own grace.
    let tab = member().await;
    eventually("the second arrival's webhooks", || hooks.names().len() == 6).await;
    drop(tab);
    support::eventually_async("the node saw the tab close", || async {
        api(server.addr, "GET", &users, "", |_| {}).await.1 == json!({"users": []})
    })
    .await;
    // A second between leaving and coming back, as a slow reload takes:
    // the first leave's grace then ends a second before the second's.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let mut back = member().await;
    back.send(json!({"event": "pusher:unsubscribe", "data": {"channel": "presence-room"}})).await;
    let left_again = std::time::Instant::now();
    eventually("the last departures", || hooks.names().len() == 8).await;
    assert!(
        left_again.elapsed() >= std::time::Duration::from_millis(2900),
        "the first leave's timer did not send them"
    );
}

#[tokio::test]
async fn webhooks_are_signed_and_retried_until_delivered() {
    let hooks = Hooks::start(1).await;
    let url = format!("http://{}/hooks", hooks.addr);
    let server = TestServer::with(|c| {
        with_app(c, |app| {
            app.webhooks.push(WebhookTarget {
                url,
                events: vec!["channel_occupied".into(), "channel_vacated".into()],
                batch: false,
            })
        })
    })
    .await;
    let mut alice = Pusher::connect(&server).await;
    alice.subscribe("news").await;
    alice.send(json!({"event": "pusher:unsubscribe", "data": {"channel": "news"}})).await;
    eventually("both webhooks arrive after a retry", || {
        hooks.names() == ["channel_occupied news", "channel_vacated news"]
    })
    .await;
    assert_eq!(*hooks.requests.lock().unwrap(), 3, "the first request failed and was sent again");
    let (_, _, metrics) = support::http_get(server.addr, "/metrics").await;
    for line in [r#"herald_webhooks_total{outcome="delivered"} 2"#, r#"herald_webhooks_total{outcome="retried"} 1"#] {
        assert!(metrics.lines().any(|l| l == line), "no `{line}` in\n{metrics}");
    }
}

#[tokio::test]
async fn webhooks_reach_an_https_target_whose_ca_is_configured() {
    let hooks = Hooks::start_over_tls(0).await;
    let url = format!("https://localhost:{}/hooks", hooks.addr.port());
    let server = TestServer::with(|c| {
        c.pusher.webhook_ca = Some(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls-ca.pem").to_owned());
        with_app(c, |app| {
            app.webhooks.push(WebhookTarget { url, events: vec!["channel_occupied".into()], batch: false })
        })
    })
    .await;
    let mut alice = Pusher::connect(&server).await;
    alice.subscribe("news").await;
    eventually("the webhook arrives over TLS", || hooks.names() == ["channel_occupied news"]).await;
}

#[tokio::test]
async fn a_batching_target_gets_events_together_and_only_those_it_asked_for() {
    let hooks = Hooks::start(0).await;
    let url = format!("http://{}/hooks", hooks.addr);
    let events = vec!["channel_occupied".into()];
    let server =
        TestServer::with(|c| with_app(c, |app| app.webhooks.push(WebhookTarget { url, events, batch: true }))).await;
    let mut alice = Pusher::connect(&server).await;
    for n in 0..5 {
        alice.send(json!({"event": "pusher:subscribe", "data": {"channel": format!("room-{n}")}})).await;
    }
    for _ in 0..5 {
        assert_eq!(alice.next().await["event"], "pusher_internal:subscription_succeeded");
    }
    alice.send(json!({"event": "pusher:unsubscribe", "data": {"channel": "room-0"}})).await;
    eventually("five occupied events arrive", || hooks.names().len() == 5).await;
    let names = hooks.names();
    assert!(names.iter().all(|n| n.starts_with("channel_occupied room-")), "vacated was not asked for: {names:?}");
    let batches = hooks.batches.lock().unwrap().clone();
    assert!(batches.len() < 5, "events gathered into fewer requests: {batches:?}");
}

#[tokio::test]
async fn with_subscription_counting_subscribers_hear_the_channels_count_as_it_changes() {
    let server = TestServer::with(|c| with_app(c, |app| app.subscription_count = true)).await;
    let mut first = Pusher::connect(&server).await;
    first.subscribe("scores").await;
    let count = first.next().await;
    assert_eq!(count["event"], "pusher_internal:subscription_count");
    assert_eq!(count["channel"], "scores");
    let data: Value = serde_json::from_str(count["data"].as_str().unwrap()).unwrap();
    assert_eq!(data, json!({"subscription_count": 1}));

    // Two more at once: one event, with the new count.
    let mut second = Pusher::connect(&server).await;
    let mut third = Pusher::connect(&server).await;
    second.subscribe("scores").await;
    third.subscribe("scores").await;
    let count = first.next().await;
    let data: Value = serde_json::from_str(count["data"].as_str().unwrap()).unwrap();
    assert_eq!(data, json!({"subscription_count": 3}), "gathered: {count}");

    drop(third);
    let data: Value = serde_json::from_str(first.next().await["data"].as_str().unwrap()).unwrap();
    assert_eq!(data, json!({"subscription_count": 2}), "a subscriber that left is counted out");
}

#[tokio::test]
async fn without_subscription_counting_no_count_is_sent() {
    let server = server().await;
    let mut first = Pusher::connect(&server).await;
    first.subscribe("scores").await;
    let mut second = Pusher::connect(&server).await;
    second.subscribe("scores").await;
    // Proving an absence takes waiting: longer than a count would be
    // gathered (250 ms), then the next thing the first subscriber gets is
    // the pong, not a count.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    first.assert_alive().await;
}

/// A node serving both protocols in one namespace: what the app signs for
/// its own clients, a Centrifuge client does not get by asking.
#[tokio::test]
async fn a_centrifuge_client_reaches_the_apps_private_presence_and_user_channels_only_as_the_server_lets_it() {
    let server = server().await;
    let mut client = server.connected("mallory").await;
    let denied = json!({"code": 103, "message": "permission denied"});
    for (n, channel) in
        ["private-orders", "private-encrypted-vault", "presence-room", "#server-to-user-bob"].iter().enumerate()
    {
        let id = 10 + n as u32;
        let reply = client.command(json!({"id": id, "subscribe": {"channel": channel}})).await;
        assert_eq!(reply["error"], denied, "subscribe to {channel}: {reply}");
    }
    let reads = [
        json!({"id": 20, "publish": {"channel": "private-orders", "data": {"forged": true}}}),
        json!({"id": 21, "presence": {"channel": "presence-room"}}),
        json!({"id": 22, "presence_stats": {"channel": "presence-room"}}),
        json!({"id": 23, "history": {"channel": "private-orders", "limit": 10}}),
    ];
    for command in reads {
        let reply = client.command(command.clone()).await;
        assert_eq!(reply["error"], denied, "{command}: {reply}");
    }

    // A public channel is everyone's, and a subscription token is the server's word.
    assert!(client.subscribe("news").await.get("subscribe").is_some());
    let token = server.channel_token("mallory", "private-orders", json!({}));
    let reply = client.command(json!({"id": 30, "subscribe": {"channel": "private-orders", "token": token}})).await;
    assert!(reply.get("subscribe").is_some(), "{reply}");
    let (status, _) =
        trigger(server.addr, json!({"name": "e", "channel": "private-orders", "data": "{\"n\":1}"})).await;
    assert_eq!(status, 200);
    assert_eq!(client.next_push().await["pub"]["data"]["n"], 1, "the app's event reaches the subscriber it let in");
}
