//! The Centrifuge transports besides the WebSocket, spoken over real HTTP:
//! HTTP-streaming and SSE with commands posted to `/emulation` (also to
//! another node of a cluster), and the uni-directional WebSocket, SSE and
//! HTTP-streaming endpoints, with recovery, bad input and shutdown.

use crate::support;

use crate::support::stream::StreamClient;
use crate::support::{http_post_raw, TestServer};
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use herald_redis::testing::RedisServer;
use herald_server::config::{EngineConfig, RedisEngineConfig, TransportName};

/// Posts `commands` (newline-separated JSON) for the session `connected`
/// names, to the node at `via`; returns the status.
async fn emulate(via: &TestServer, connected: &Value, commands: &[Value]) -> u16 {
    let data = commands.iter().map(Value::to_string).collect::<Vec<_>>().join("\n");
    let body = json!({"session": connected["session"], "node": connected["node"], "data": data});
    http_post_raw(via.addr, "/emulation", &[], &body.to_string()).await.0
}

/// The connect command for `user`, as centrifuge-js writes it.
fn connect_command(server: &TestServer, user: &str) -> Value {
    json!({"id": 1, "connect": {"token": server.token(user), "name": "test"}})
}

/// The reply with `id`, skipping pings and pushes.
async fn reply(stream: &mut StreamClient, id: u64) -> Value {
    loop {
        let message = stream.next_not_ping().await;
        if message["id"] == id {
            return message;
        }
    }
}

/// The next publication push.
async fn publication(stream: &mut StreamClient) -> Value {
    loop {
        let message = stream.next_not_ping().await;
        if message["push"]["pub"].is_object() {
            return message["push"].clone();
        }
    }
}

#[tokio::test]
async fn over_http_streaming_a_client_connects_subscribes_by_emulation_and_receives_publications() {
    let server = TestServer::start().await;
    let mut stream =
        StreamClient::post(server.addr, "/connection/http_stream", &connect_command(&server, "ann").to_string()).await;
    assert_eq!(stream.status, 200);
    let connected = reply(&mut stream, 1).await["connect"].clone();
    assert_eq!(connected["session"].as_str().map(str::len), Some(160), "the emulation key, signed: {connected}");
    assert!(connected["node"].is_string());

    let subscribe = json!({"id": 2, "subscribe": {"channel": "feed:scores"}});
    assert_eq!(emulate(&server, &connected, &[subscribe]).await, 204);
    let subscribed = reply(&mut stream, 2).await;
    assert_eq!(subscribed["subscribe"]["recoverable"], true, "{subscribed}");

    server.publish("feed:scores", json!({"home": 1})).await;
    let push = publication(&mut stream).await;
    assert_eq!(push["channel"], "feed:scores");
    assert_eq!(push["pub"]["data"], json!({"home": 1}));

    let publish = json!({"id": 3, "publish": {"channel": "feed:scores", "data": {"home": 2}}});
    assert_eq!(emulate(&server, &connected, &[publish]).await, 204);
    // The reply and the publication, in either order.
    let mut seen = [stream.next_not_ping().await, stream.next_not_ping().await];
    seen.sort_by_key(|message| message.get("id").is_none());
    assert_eq!(seen[0], json!({"id": 3, "publish": {}}));
    assert_eq!(seen[1]["push"]["pub"]["data"], json!({"home": 2}));
}

#[tokio::test]
async fn over_sse_the_connect_command_travels_in_the_url_and_presence_works_by_emulation() {
    let server = TestServer::start().await;
    let query = form_encoded(&connect_command(&server, "bob").to_string());
    let mut stream = StreamClient::get(server.addr, &format!("/connection/sse?cf_connect={query}")).await;
    assert_eq!(stream.status, 200);
    assert!(stream.head.to_ascii_lowercase().contains("text/event-stream"), "{}", stream.head);
    let connected = reply(&mut stream, 1).await["connect"].clone();

    let subscribe = json!({"id": 2, "subscribe": {"channel": "room:lobby"}});
    let presence = json!({"id": 3, "presence": {"channel": "room:lobby"}});
    assert_eq!(emulate(&server, &connected, &[subscribe, presence]).await, 204, "two commands in one request");
    reply(&mut stream, 2).await;
    let present = reply(&mut stream, 3).await;
    let users: Vec<&Value> =
        present["presence"]["presence"].as_object().unwrap().values().map(|info| &info["user"]).collect();
    assert_eq!(users, vec!["bob"]);
}

/// The value of `series` in the node's `/metrics`, if it has one.
async fn metric(server: &TestServer, series: &str) -> Option<f64> {
    let (_, _, body) = support::http_get(server.addr, "/metrics").await;
    body.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn the_node_counts_its_sessions_by_protocol_and_transport() {
    let server = TestServer::start().await;
    let mut http =
        StreamClient::post(server.addr, "/connection/http_stream", &connect_command(&server, "ann").to_string()).await;
    reply(&mut http, 1).await;
    let query = form_encoded(&connect_command(&server, "bob").to_string());
    let mut sse = StreamClient::get(server.addr, &format!("/connection/sse?cf_connect={query}")).await;
    reply(&mut sse, 1).await;
    let mut uni = StreamClient::get(server.addr, &uni_sse_path(&server, "fay", &["room:uni"])).await;
    uni.next_not_ping().await;
    let websocket = server.connected("cy").await;
    let url = format!("ws://{}/connection/uni_websocket", server.addr);
    let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("uni WebSocket");
    let mut listener = support::Client::from_stream(ws);
    listener.send_text(&json!({"token": server.token("gus")}).to_string()).await;
    listener.next_frame().await.expect("the uni WebSocket's connect reply");

    let series = |transport: &str| format!(r#"herald_sessions{{protocol="centrifuge",transport="{transport}"}}"#);
    for transport in ["http_stream", "sse", "uni_sse", "uni_websocket", "websocket"] {
        assert_eq!(metric(&server, &series(transport)).await, Some(1.0), "{transport}");
    }
    drop(websocket);
    support::eventually_async("the closed WebSocket's session is no longer counted", || async {
        metric(&server, &series("websocket")).await == Some(0.0)
    })
    .await;
    assert_eq!(metric(&server, &series("http_stream")).await, Some(1.0), "the other sessions are still counted");
}

#[tokio::test]
async fn commands_posted_to_another_node_reach_the_session_through_the_engine() {
    let redis = RedisServer::start();
    let prefix = format!("emulation{}", std::process::id());
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let engine = RedisEngineConfig { address: redis.url(), prefix: prefix.clone(), ..Default::default() };
        nodes.push(TestServer::with(|c| c.engine = EngineConfig::Redis(engine)).await);
    }
    let (holder, other) = (&nodes[0], &nodes[1]);
    let mut stream =
        StreamClient::post(holder.addr, "/connection/http_stream", &connect_command(holder, "cy").to_string()).await;
    let connected = reply(&mut stream, 1).await["connect"].clone();

    let subscribe = json!({"id": 2, "subscribe": {"channel": "feed:relayed"}});
    support::eventually_async("the other node knows the session's node and relays", || async {
        emulate(other, &connected, std::slice::from_ref(&subscribe)).await == 204
    })
    .await;
    assert_eq!(reply(&mut stream, 2).await["subscribe"]["recoverable"], true);
    other.publish("feed:relayed", json!({"n": 1})).await;
    assert_eq!(publication(&mut stream).await["pub"]["data"], json!({"n": 1}));
}

#[tokio::test]
async fn bad_emulation_requests_get_clear_answers_and_harm_no_session() {
    let server = TestServer::start().await;
    let mut stream =
        StreamClient::post(server.addr, "/connection/http_stream", &connect_command(&server, "dee").to_string()).await;
    let connected = reply(&mut stream, 1).await["connect"].clone();

    let (status, body) = http_post_raw(server.addr, "/emulation", &[], "{not json").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("session"), "the answer says what is expected: {body}");
    let garbage = "\u{7f}\u{1}garbage";
    let protobuf = format!(
        "POST /emulation HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{garbage}",
        server.addr,
        garbage.len()
    );
    let (status, _, body) = support::exchange(server.addr, &protobuf).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("EmulationRequest"), "{body}");
    let unknown_node = json!({"session": connected["session"], "node": "no-such-node", "data": "{}"});
    assert_eq!(http_post_raw(server.addr, "/emulation", &[], &unknown_node.to_string()).await.0, 404);
    let guessed = json!({"session": "0".repeat(32), "node": connected["node"], "data": "{\"id\":9,\"ping\":{}}"});
    assert_eq!(http_post_raw(server.addr, "/emulation", &[], &guessed.to_string()).await.0, 204);
    let huge = json!({"session": connected["session"], "node": connected["node"], "data": "x".repeat(70_000)});
    assert_eq!(http_post_raw(server.addr, "/emulation", &[], &huge.to_string()).await.0, 413);

    // Garbage commands for the real session end it as a bad request, on its own stream.
    let garbage = json!({"session": connected["session"], "node": connected["node"], "data": "{garbage"});
    assert_eq!(http_post_raw(server.addr, "/emulation", &[], &garbage.to_string()).await.0, 204);
    assert_eq!(stream.rest().await, vec![json!({"push": {"disconnect": {"code": 3501, "reason": "bad request"}}})]);
}

#[tokio::test]
async fn a_uni_directional_stream_gets_its_token_channels_and_recovers_what_it_missed() {
    let server = TestServer::start().await;
    let token = server.token_with("eve", json!({"channels": ["feed:uni"]}));
    server.publish("feed:uni", json!({"n": 0})).await;
    let mut stream =
        StreamClient::post(server.addr, "/connection/uni_http_stream", &json!({"token": token}).to_string()).await;
    let connect = stream.next_not_ping().await;
    let sub = &connect["connect"]["subs"]["feed:uni"];
    assert_eq!(sub["recoverable"], true, "{connect}");
    let epoch = sub["epoch"].as_str().expect("an epoch").to_owned();
    assert_eq!(sub["offset"], 1);

    server.publish("feed:uni", json!({"n": 1})).await;
    assert_eq!(stream.next_not_ping().await, json!({"channel": "feed:uni", "pub": {"data": {"n": 1}, "offset": 2}}));
    drop(stream);

    server.publish("feed:uni", json!({"n": 2})).await;
    server.publish("feed:uni", json!({"n": 3})).await;
    let again = json!({"token": token, "subs": {"feed:uni": {"recover": true, "epoch": epoch, "offset": 2}}});
    let mut stream = StreamClient::post(server.addr, "/connection/uni_http_stream", &again.to_string()).await;
    let sub = stream.next_not_ping().await["connect"]["subs"]["feed:uni"].clone();
    assert_eq!(sub["recovered"], true, "{sub}");
    let missed: Vec<&Value> = sub["publications"].as_array().unwrap().iter().map(|p| &p["data"]["n"]).collect();
    assert_eq!(missed, vec![2, 3]);
}

#[tokio::test]
async fn uni_directional_sse_takes_the_connect_request_in_the_url_and_sends_bare_pushes() {
    let server = TestServer::start().await;
    let mut stream = StreamClient::get(server.addr, &uni_sse_path(&server, "fay", &["room:uni"])).await;
    let connect = stream.next_not_ping().await;
    assert!(connect["connect"]["client"].is_string(), "{connect}");
    assert!(connect["connect"].get("session").is_none(), "no emulation key for a stream that only listens");

    server.publish("room:uni", json!({"text": "<b>hi</b>"})).await;
    let push = loop {
        let message = stream.next_not_ping().await;
        if message.get("pub").is_some() {
            break message;
        }
    };
    assert_eq!(push, json!({"channel": "room:uni", "pub": {"data": {"text": "<b>hi</b>"}}}));
}

#[tokio::test]
async fn a_stream_answers_as_http_1_1_with_a_date_and_closes_when_it_ends() {
    let server = TestServer::start().await;
    let mut stream = StreamClient::get(server.addr, &uni_sse_path(&server, "ned", &["room:head"])).await;
    let head = stream.head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    for line in ["content-type: text/event-stream", "transfer-encoding: chunked", "connection: close", "date: "] {
        assert!(head.contains(line), "{line} in {head}");
    }
    assert!(stream.next_not_ping().await["connect"]["client"].is_string());
}

#[tokio::test]
async fn a_head_of_an_event_stream_is_refused_and_opens_no_session() {
    let server = TestServer::start().await;
    let token = server.token_with("hal", json!({"channels": ["room:head"]}));
    let query = form_encoded(&json!({"token": token}).to_string());
    let refusals = [("/connection/uni_sse", "allow: GET, POST, OPTIONS"), ("/connection/sse", "allow: GET")];
    for (path, allowed) in refusals {
        let request = format!("HEAD {path}?cf_connect={query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let (status, head, body) = support::exchange(server.addr, &request).await;
        assert_eq!(status, 405, "{head}");
        assert!(head.to_ascii_lowercase().contains(&allowed.to_ascii_lowercase()), "{allowed} in {head}");
        assert_eq!(body, "", "a HEAD has no body");
    }
    let info = server.api("info", json!({})).await.1;
    assert_eq!(info["result"]["nodes"][0]["num_clients"], 0, "{info}");
}

#[tokio::test]
async fn an_http_1_0_client_gets_its_stream_unchunked_and_the_connection_closing_ends_it() {
    let server = TestServer::start().await;
    let path = uni_sse_path(&server, "old", &["room:old"]);
    let mut stream = StreamClient::open_as(server.addr, "HTTP/1.0", "GET", &path, &[], "").await;
    assert!(!stream.head.to_ascii_lowercase().contains("transfer-encoding"), "{}", stream.head);
    assert!(stream.next_not_ping().await["connect"]["client"].is_string());
    server.publish("room:old", json!({"n": 1})).await;
    assert_eq!(stream.next_not_ping().await, json!({"channel": "room:old", "pub": {"data": {"n": 1}}}));

    server.shutdown().await;
    assert_eq!(stream.rest().await, vec![json!({"disconnect": {"code": 3001, "reason": "shutdown"}})]);
}

#[tokio::test]
async fn an_event_source_reconnecting_with_its_last_event_id_recovers_what_it_missed() {
    let server = TestServer::start().await;
    let path = uni_sse_path(&server, "liv", &["feed:ids", "feed:quiet"]);
    let mut stream = StreamClient::get(server.addr, &path).await;
    stream.next_not_ping().await;
    server.publish("feed:ids", json!({"n": 1})).await;
    assert_eq!(stream.next_not_ping().await["pub"]["data"], json!({"n": 1}));
    let id = stream.last_event_id.clone().expect("events that move a position carry an id");
    let named: Value = serde_json::from_str(&id).unwrap();
    assert_eq!(named["feed:ids"][1], 1, "{id}");
    assert_eq!(named["feed:quiet"][1], 0, "{id}");
    drop(stream);

    server.publish("feed:ids", json!({"n": 2})).await;
    server.publish("feed:quiet", json!({"n": 3})).await;
    // What `EventSource` does by itself: the same URL, and the last id it saw.
    let headers = [("Accept", "text/event-stream"), ("Last-Event-ID", id.as_str())];
    let mut again = StreamClient::open(server.addr, "GET", &path, &headers, "").await;
    let subs = again.next_not_ping().await["connect"]["subs"].clone();
    for (channel, n) in [("feed:ids", 2), ("feed:quiet", 3)] {
        assert_eq!(subs[channel]["recovered"], true, "{subs}");
        assert_eq!(subs[channel]["publications"][0]["data"]["n"], n, "{subs}");
    }
}

#[tokio::test]
async fn a_uni_directional_client_that_may_have_missed_publications_is_told_to_reconnect_and_recover() {
    let mut redis = RedisServer::start();
    let engine =
        RedisEngineConfig { address: redis.url(), prefix: format!("uni{}", std::process::id()), ..Default::default() };
    let server = TestServer::with(|c| c.engine = EngineConfig::Redis(engine)).await;
    let token = server.token_with("max", json!({"channels": ["feed:gone"]}));
    let mut stream =
        StreamClient::post(server.addr, "/connection/uni_http_stream", &json!({"token": token}).to_string()).await;
    assert!(stream.next_not_ping().await["connect"]["subs"]["feed:gone"]["recoverable"] == true);

    // The node's link to the backplane breaks: it may miss publications.
    redis.restart();
    let disconnect = json!({"disconnect": {"code": 3010, "reason": "insufficient state"}});
    assert_eq!(stream.rest().await, vec![disconnect], "not a silent gap: the client reconnects with its positions");
}

/// As Centrifugo: centrifuge-js forgets a server-side subscription it is
/// unsubscribed from, so one that may have missed publications reconnects.
#[tokio::test]
async fn a_websocket_client_whose_server_side_subscription_may_have_missed_publications_reconnects() {
    let mut redis = RedisServer::start();
    let engine =
        RedisEngineConfig { address: redis.url(), prefix: format!("bidi{}", std::process::id()), ..Default::default() };
    let server = TestServer::with(|c| c.engine = EngineConfig::Redis(engine)).await;
    let token = server.token_with("max", json!({"channels": ["feed:gone"]}));
    let mut client = server.client().await;
    let reply = client.command(json!({"id": 1, "connect": {"token": token}})).await;
    assert_eq!(reply["connect"]["subs"]["feed:gone"]["recoverable"], true, "{reply}");

    redis.restart();
    assert_eq!(client.closed().await.0, 3010, "not an unsubscribe the client would never undo");
}

#[tokio::test]
async fn a_uni_directional_websocket_connects_with_its_first_message_and_ignores_the_rest() {
    let server = TestServer::start().await;
    let url = format!("ws://{}/connection/uni_websocket", server.addr);
    let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("uni WebSocket");
    let mut client = support::Client::from_stream(ws);
    let token = server.token_with("gus", json!({"channels": ["feed:ws"]}));
    client.send_text(&json!({"token": token}).to_string()).await;
    let connect: Value = serde_json::from_str(&client.next_frame().await.unwrap()).unwrap();
    assert!(connect["connect"]["subs"]["feed:ws"].is_object(), "{connect}");
    client.send_text("anything at all").await;
    server.publish("feed:ws", json!({"n": 1})).await;
    let push: Value = serde_json::from_str(&client.next_frame().await.unwrap()).unwrap();
    assert_eq!(push["pub"]["data"], json!({"n": 1}));
}

#[tokio::test]
async fn a_uni_directional_client_with_a_bad_token_is_told_why_and_the_stream_ends() {
    let server = TestServer::start().await;
    let mut stream =
        StreamClient::post(server.addr, "/connection/uni_http_stream", &json!({"token": "not-a-jwt"}).to_string())
            .await;
    assert_eq!(stream.rest().await, vec![json!({"disconnect": {"code": 3500, "reason": "invalid token"}})]);
    let mut garbage = StreamClient::post(server.addr, "/connection/uni_http_stream", "[1, 2").await;
    assert_eq!(garbage.rest().await, vec![json!({"disconnect": {"code": 3501, "reason": "bad request"}})]);
}

#[tokio::test]
async fn a_stream_larger_than_the_message_limit_is_refused_before_any_session() {
    let server = TestServer::start().await;
    let (status, body) =
        http_post_raw(server.addr, "/connection/http_stream", &[], &format!("{{\"x\":\"{}\"}}", "y".repeat(70_000)))
            .await;
    assert_eq!(status, 413, "{body}");
    // In a GET's query too, where an `EventSource` puts it (hyper takes
    // no URI over 64 KiB: a node with a lower limit checks its own).
    let server = TestServer::with(|config| config.client.max_message_size = 4096).await;
    let large = form_encoded(&format!("{{\"x\":\"{}\"}}", "y".repeat(5_000)));
    for path in ["/connection/sse", "/connection/uni_sse"] {
        let (status, _, body) = support::http_get(server.addr, &format!("{path}?cf_connect={large}")).await;
        assert_eq!(status, 413, "{path}: {body}");
        assert!(body.contains("client.max_message_size"), "{path}: {body}");
    }
    assert_eq!(server.api("info", json!({})).await.1["result"]["nodes"][0]["num_clients"], 0, "no session opened");
}

#[tokio::test]
async fn on_shutdown_every_stream_is_told_to_reconnect_and_ends() {
    let server = TestServer::start().await;
    let mut bidirectional =
        StreamClient::post(server.addr, "/connection/http_stream", &connect_command(&server, "hal").to_string()).await;
    reply(&mut bidirectional, 1).await;
    let token = server.token_with("ida", json!({"channels": ["feed:bye"]}));
    let mut listening =
        StreamClient::post(server.addr, "/connection/uni_http_stream", &json!({"token": token}).to_string()).await;
    listening.next_not_ping().await;

    server.shutdown().await;
    assert_eq!(bidirectional.rest().await, vec![json!({"push": {"disconnect": {"code": 3001, "reason": "shutdown"}}})]);
    assert_eq!(listening.rest().await, vec![json!({"disconnect": {"code": 3001, "reason": "shutdown"}})]);
}

#[tokio::test]
async fn a_stream_client_that_stops_reading_is_closed_as_slow_and_harms_no_one() {
    let server = TestServer::with(|c| {
        c.client.queue_max_bytes = 64 * 1024;
        c.client.write_timeout = std::time::Duration::from_secs(1);
    })
    .await;
    let token = server.token_with("sam", json!({"channels": ["feed:flood"]}));
    let mut stalled =
        StreamClient::post(server.addr, "/connection/uni_http_stream", &json!({"token": token}).to_string()).await;
    stalled.next_not_ping().await;
    let mut watcher = server.connected("watcher").await;
    watcher.subscribe("news").await;

    // Far more than the socket buffers and the 64 KiB queue hold, while the
    // stalled client reads nothing.
    let big = "x".repeat(60 * 1024);
    for n in 0..300 {
        server.publish("feed:flood", json!({"n": n, "pad": big})).await;
        if server.api("info", json!({})).await.1["result"]["nodes"][0]["num_clients"] == 1 {
            break;
        }
    }
    support::eventually_async("the stalled stream is closed", || async {
        server.api("info", json!({})).await.1["result"]["nodes"][0]["num_clients"] == 1
    })
    .await;
    server.publish("news", json!({"still": "here"})).await;
    assert_eq!(watcher.next_push().await["pub"]["data"]["still"], "here", "the other connection is unaffected");
}

#[tokio::test]
async fn transports_left_out_of_the_config_are_not_served() {
    let server = TestServer::with(|c| c.client.transports = vec![TransportName::Websocket]).await;
    for path in ["/connection/http_stream", "/connection/uni_http_stream", "/emulation"] {
        assert_eq!(http_post_raw(server.addr, path, &[], "{}").await.0, 404, "{path}");
    }
    let only_streams = TestServer::with(|c| c.client.transports = vec![TransportName::UniSse]).await;
    let refused = tokio_tungstenite::connect_async(only_streams.ws_url()).await;
    assert!(refused.is_err(), "no WebSocket endpoint when it is left out");
}

#[tokio::test]
async fn a_page_on_an_allowed_origin_may_read_the_streams_and_others_may_not() {
    let server = TestServer::with(|c| c.http.allowed_origins = vec!["https://app.example.com".into()]).await;
    let preflight = format!(
        "OPTIONS /emulation HTTP/1.1\r\nHost: {}\r\nOrigin: https://app.example.com\r\n\
         Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type\r\nConnection: close\r\n\r\n",
        server.addr
    );
    let (status, head, _) = support::exchange(server.addr, &preflight).await;
    assert_eq!(status, 204);
    let head = head.to_ascii_lowercase();
    assert!(head.contains("access-control-allow-origin: https://app.example.com"), "{head}");
    assert!(head.contains("access-control-allow-headers: content-type"), "{head}");

    let foreign = [("Origin", "https://evil.example.net")];
    let body = connect_command(&server, "jo").to_string();
    assert_eq!(http_post_raw(server.addr, "/connection/http_stream", &foreign, &body).await.0, 403);

    let allowed = [("Origin", "https://app.example.com"), ("Content-Type", "application/json")];
    let mut stream = StreamClient::open(server.addr, "POST", "/connection/http_stream", &allowed, &body).await;
    assert!(stream.head.to_ascii_lowercase().contains("access-control-allow-origin: https://app.example.com"));
    reply(&mut stream, 1).await;
}

/// Keeps a WebSocket import honest: the uni WebSocket takes text only as
/// its connect request, and a close from the client ends it.
#[tokio::test]
async fn a_uni_directional_websocket_closed_by_its_client_leaves_the_node() {
    let server = TestServer::start().await;
    let url = format!("ws://{}/connection/uni_websocket", server.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("uni WebSocket");
    let token = server.token("kim");
    ws.send(Message::text(json!({"token": token}).to_string())).await.unwrap();
    ws.close(None).await.unwrap();
    support::eventually_async("the connection left", || async {
        server.api("info", json!({})).await.1["result"]["nodes"][0]["num_clients"] == 0
    })
    .await;
}

/// The path of a uni-directional event stream for `user`, whose token
/// lists `channels`.
fn uni_sse_path(server: &TestServer, user: &str, channels: &[&str]) -> String {
    let token = server.token_with(user, json!({ "channels": channels }));
    format!("/connection/uni_sse?cf_connect={}", form_encoded(&json!({"token": token}).to_string()))
}

/// `text` as one `application/x-www-form-urlencoded` value.
fn form_encoded(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (byte as char).to_string(),
            _ => format!("%{byte:02X}"),
        })
        .collect()
}
