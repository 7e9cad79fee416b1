//! The server HTTP API: every method, against real connections.

use crate::support;

use crate::support::TestServer;
use serde_json::{json, Value};

#[tokio::test]
async fn broadcast_publishes_into_every_listed_channel_and_reports_each() {
    let server = TestServer::start().await;
    let mut a = server.connected("a").await;
    let mut b = server.connected("b").await;
    a.subscribe("room1").await;
    b.subscribe("room2").await;
    let (status, reply) =
        server.api("broadcast", json!({"channels": ["room1", "room2", "nope:x"], "data": {"all": true}})).await;
    assert_eq!(status, 200);
    assert_eq!(
        reply["result"]["responses"],
        json!([{"result": {}}, {"result": {}}, {"error": {"code": 102, "message": "unknown channel"}}])
    );
    assert_eq!(a.next_push().await["pub"]["data"], json!({"all": true}));
    assert_eq!(b.next_push().await["pub"]["data"], json!({"all": true}));
}

#[tokio::test]
async fn a_batch_refuses_the_channel_list_which_asks_every_node() {
    let server = TestServer::start().await;
    let (status, reply) = server.api("batch", json!({"commands": [{"channels": {}}, {"info": {}}]})).await;
    assert_eq!(status, 200);
    let replies = reply["replies"].as_array().unwrap_or_else(|| panic!("{reply}"));
    assert!(replies[0]["error"]["message"].as_str().unwrap().contains("on its own"), "{reply}");
    assert!(replies[1]["info"]["nodes"].is_array(), "{reply}");
}

#[tokio::test]
async fn batch_runs_each_command_and_replies_in_order() {
    let server = TestServer::start().await;
    let mut client = server.connected("a").await;
    client.subscribe("news").await;
    let (status, reply) = server
        .api(
            "batch",
            json!({"commands": [
                {"publish": {"channel": "news", "data": 1}},
                {"publish": {"channel": "games:1", "data": 2}},
                {"publish": {"channel": "news", "data": 3}},
            ]}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(reply["replies"][0], json!({"publish": {}}));
    assert_eq!(reply["replies"][1]["error"]["code"], 102);
    assert_eq!(reply["replies"][2], json!({"publish": {}}));
    assert_eq!(client.next_push().await["pub"]["data"], 1);
    assert_eq!(client.next_push().await["pub"]["data"], 3);
}

#[tokio::test]
async fn pretty_printed_data_is_delivered_compact() {
    let server = TestServer::start().await;
    let mut client = server.connected("a").await;
    client.subscribe("news").await;
    let body = "{\"channel\":\"news\",\"data\":{\n  \"text\": \"line one\\nline two\",\n  \"n\": [1,\n 2]\n}}";
    let (status, _) = support::http_post(server.addr, "/api/publish", &[("X-API-Key", support::API_KEY)], body).await;
    assert_eq!(status, 200);
    let frame = client.next_frame().await.expect("a publication frame");
    assert_eq!(frame, r#"{"push":{"channel":"news","pub":{"data":{"text":"line one\nline two","n":[1,2]}}}}"#);
}

#[tokio::test]
async fn channels_and_info_report_this_nodes_connections() {
    let server = TestServer::start().await;
    let mut a = server.connected("a").await;
    let mut a2 = server.connected("a").await;
    let mut b = server.connected("b").await;
    a.subscribe("chat:1").await;
    a2.subscribe("chat:1").await;
    b.subscribe("news").await;

    let (_, reply) = server.api("channels", json!({})).await;
    assert_eq!(reply["result"]["channels"], json!({"chat:1": {"num_clients": 2}, "news": {"num_clients": 1}}));
    let (_, reply) = server.api("channels", json!({"pattern": "chat:*"})).await;
    assert_eq!(reply["result"]["channels"], json!({"chat:1": {"num_clients": 2}}));

    let (_, reply) = server.api("info", json!({})).await;
    let node = &reply["result"]["nodes"][0];
    assert!(node["name"].as_str().is_some_and(|name| !name.is_empty()), "named after the host: {node}");
    assert!(node["age_ms"].as_u64().is_some_and(|age| age < 1000), "{node}");
    assert_eq!((node["num_clients"].as_u64(), node["num_users"].as_u64()), (Some(3), Some(2)), "{node}");
    assert_eq!((node["num_channels"].as_u64(), node["num_subs"].as_u64()), (Some(2), Some(3)), "{node}");
}

#[tokio::test]
async fn server_side_subscribe_and_unsubscribe_reach_every_connection_of_the_user() {
    let server = TestServer::start().await;
    let mut tab1 = server.connected("42").await;
    let mut tab2 = server.connected("42").await;
    let mut other = server.connected("43").await;
    other.subscribe("sport").await;

    let (status, _) = server.api("subscribe", json!({"user": "42", "channel": "chat:vip"})).await;
    assert_eq!(status, 200);
    for tab in [&mut tab1, &mut tab2] {
        assert_eq!(tab.next_push().await, json!({"channel": "chat:vip", "subscribe": {}}));
    }
    server.publish("chat:vip", json!("for 42")).await;
    for tab in [&mut tab1, &mut tab2] {
        assert_eq!(tab.next_push().await["pub"]["data"], "for 42");
    }

    server.api("unsubscribe", json!({"user": "42", "channel": "chat:vip"})).await;
    for tab in [&mut tab1, &mut tab2] {
        assert_eq!(
            tab.next_push().await,
            json!({"channel": "chat:vip", "unsubscribe": {"code": 2000, "reason": "server unsubscribe"}})
        );
    }
    server.publish("sport", json!("marker")).await;
    assert_eq!(other.next_push().await["pub"]["data"], "marker", "user 43 saw none of it");

    let (_, reply) = server.api("subscribe", json!({"user": "42", "channel": "games:1"})).await;
    assert_eq!(reply["error"]["code"], 102);
}

#[tokio::test]
async fn a_server_side_subscription_to_a_stream_tells_the_client_where_it_starts() {
    let server = TestServer::start().await;
    let mut client = server.connected("42").await;
    server.publish("feed:scores", json!(1)).await;
    server.publish("feed:scores", json!(2)).await;
    let (_, position) = server.api("history", json!({"channel": "feed:scores", "limit": 0})).await;
    let epoch = position["result"]["epoch"].as_str().unwrap().to_owned();

    server.api("subscribe", json!({"user": "42", "channel": "feed:scores"})).await;
    let push = client.next_push().await;
    assert_eq!(
        push,
        json!({"channel": "feed:scores", "subscribe":
            {"recoverable": true, "positioned": true, "epoch": epoch, "offset": 2}}),
        "the position a client names to recover, as a subscribe reply gives it"
    );
    server.publish("feed:scores", json!(3)).await;
    assert_eq!(client.next_push().await["pub"]["offset"], 3, "and it follows on from there");
}

#[tokio::test]
async fn a_server_side_subscription_carries_the_channel_info_and_data_the_api_gave() {
    let server = TestServer::start().await;
    let mut client = server.connected("42").await;
    let subscribe = json!({"user": "42", "channel": "room:lobby", "info": {"seat": 7}, "data": {"welcome": "in"}});
    let (status, reply) = server.api("subscribe", subscribe).await;
    assert_eq!((status, reply.get("error")), (200, None), "{reply}");
    assert_eq!(
        client.next_push().await,
        json!({"channel": "room:lobby", "subscribe": {"data": {"welcome": "in"}}}),
        "the data goes to the client with the subscription"
    );
    let (_, presence) = server.api("presence", json!({"channel": "room:lobby"})).await;
    let entries: Vec<_> = presence["result"]["presence"].as_object().unwrap().values().cloned().collect();
    assert_eq!(entries.len(), 1, "{presence}");
    assert_eq!(entries[0]["chan_info"], json!({"seat": 7}), "the info is the subscription's channel info");

    let too_large = json!({"user": "42", "channel": "news", "data": "x".repeat(70 * 1024)});
    let (status, reply) = server.api("subscribe", too_large).await;
    assert_eq!((status, reply["error"]["code"].as_u64()), (413, Some(106)), "past max_message_size: {reply}");
}

/// As in Centrifugo: a server-side subscription given an `expire_at` ends
/// then with 2501 (no sub_refresh proxy being set to extend it).
#[tokio::test]
async fn a_server_side_subscription_with_expire_at_ends_when_it_expires() {
    let server = TestServer::with(|c| c.client.expired_sub_close_delay = std::time::Duration::ZERO).await;
    let mut client = server.connected("42").await;
    let now = herald_server::auth::unix_now();

    let (status, reply) = server.api("subscribe", json!({"user": "42", "channel": "news", "expire_at": now - 1})).await;
    assert_eq!((status, reply["error"]["code"].as_u64()), (200, Some(107)), "an expiry already past: {reply}");
    let forever = json!({"user": "42", "channel": "sport", "expire_at": 0});
    assert_eq!(server.api("subscribe", forever).await.0, 200);
    assert_eq!(client.next_push().await, json!({"channel": "sport", "subscribe": {}}), "0: it never expires");
    let (_, reply) = server.api("subscribe", json!({"user": "42", "channel": "chat:x", "expire_at": null})).await;
    assert!(reply.get("error").is_none(), "null, as SDKs may send it, is none: {reply}");
    assert_eq!(client.next_push().await, json!({"channel": "chat:x", "subscribe": {}}));

    let (status, _) = server.api("subscribe", json!({"user": "42", "channel": "news", "expire_at": now + 1})).await;
    assert_eq!(status, 200);
    assert_eq!(client.next_push().await, json!({"channel": "news", "subscribe": {}}));
    server.publish("news", json!("before")).await;
    assert_eq!(client.next_push().await["pub"]["data"], "before");
    assert_eq!(
        client.next_push().await,
        json!({"channel": "news", "unsubscribe": {"code": 2501, "reason": "subscription expired"}}),
        "ended when it expired"
    );
    server.publish("news", json!("after")).await;
    server.publish("sport", json!("still here")).await;
    assert_eq!(client.next_push().await, json!({"channel": "sport", "pub": {"data": "still here"}}), "nothing of news");

    // The server's to extend, as in Centrifugo: not the client's.
    let token = server.channel_token("42", "sport", json!({"exp": now + 600}));
    client.send(json!({"id": 9, "sub_refresh": {"channel": "sport", "token": token}})).await;
    assert_eq!(
        client.closed().await,
        (3501, "bad request".to_owned()),
        "a client's sub_refresh of a server-side subscription"
    );
}

/// As in Centrifugo: a refresh's new token, or the server API's refresh,
/// gives the connection new info, which its publications carry from then on.
#[tokio::test]
async fn a_refresh_with_new_info_changes_what_the_connections_publications_carry() {
    let server = TestServer::start().await;
    let mut ann = server.client().await;
    let token = server.token_with("ann", json!({"info": {"name": "ann"}}));
    ann.command(json!({"id": 1, "connect": {"token": token}})).await;
    ann.subscribe("chat:room").await;
    let mut bob = server.connected("bob").await;
    bob.subscribe("chat:room").await;
    /// Ann publishes `n`; what bob is told of her connection's info.
    async fn conn_info_seen_by_bob(ann: &mut support::Client, bob: &mut support::Client, n: u32) -> Value {
        let reply = ann.command(json!({"id": 10 + n, "publish": {"channel": "chat:room", "data": {"n": n}}})).await;
        assert!(reply.get("error").is_none(), "{reply}");
        let pushed = bob.next_push().await;
        assert_eq!(pushed["pub"]["data"]["n"], n, "{pushed}");
        pushed["pub"]["info"]["conn_info"].clone()
    }
    assert_eq!(conn_info_seen_by_bob(&mut ann, &mut bob, 1).await, json!({"name": "ann"}));

    let renamed = server.token_with("ann", json!({"info": {"name": "Ann B."}}));
    let reply = ann.command(json!({"id": 2, "refresh": {"token": renamed}})).await;
    assert!(reply.get("error").is_none(), "{reply}");
    assert_eq!(conn_info_seen_by_bob(&mut ann, &mut bob, 2).await, json!({"name": "Ann B."}), "the token's new info");

    let plain = server.token("ann");
    ann.command(json!({"id": 3, "refresh": {"token": plain}})).await;
    assert_eq!(
        conn_info_seen_by_bob(&mut ann, &mut bob, 3).await,
        json!({"name": "Ann B."}),
        "a token without info keeps it"
    );

    let (status, reply) = server.api("refresh", json!({"user": "ann", "info": {"name": "A."}})).await;
    assert_eq!((status, reply.get("error")), (200, None), "{reply}");
    // Ann hears her own publications too; the refresh push comes after them.
    let mut pushes = Vec::new();
    while pushes.last().is_none_or(|push: &Value| push.get("refresh").is_none()) {
        assert!(pushes.len() < 4, "ann is told of the refresh: {pushes:?}");
        pushes.push(ann.next_push().await);
    }
    assert_eq!(conn_info_seen_by_bob(&mut ann, &mut bob, 4).await, json!({"name": "A."}), "the server API's new info");
}

#[tokio::test]
async fn disconnect_closes_the_users_connections_with_the_given_or_default_code() {
    let server = TestServer::start().await;
    let mut first = server.connected("42").await;
    let mut second = server.connected("42").await;
    let mut bystander = server.connected("43").await;

    let client_id = {
        let reply = second.command(json!({"id": 7, "refresh": {"token": server.token("42")}})).await;
        reply["refresh"]["client"].as_str().unwrap().to_owned()
    };
    let (status, _) = server
        .api("disconnect", json!({"user": "42", "client": client_id, "disconnect": {"code": 4000, "reason": "custom"}}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(second.closed().await, (4000, "custom".to_owned()));
    first.assert_alive().await;

    server.api("disconnect", json!({"user": "42"})).await;
    assert_eq!(first.closed().await.0, 3503);
    bystander.assert_alive().await;
}

#[tokio::test]
async fn refresh_through_the_api_expires_or_extends_connections() {
    let server = TestServer::start().await;
    let mut client = server.connected("42").await;
    let expire_at = herald_server::auth::unix_now() + 3600;
    server.api("refresh", json!({"user": "42", "expire_at": expire_at})).await;
    let push = client.next_push().await;
    assert_eq!(push["refresh"]["expires"], true, "{push}");

    server.api("refresh", json!({"user": "42", "expired": true})).await;
    assert_eq!(client.closed().await.0, 3005);
}

#[tokio::test]
async fn health_reports_alive_and_ready_reports_ready() {
    let server = TestServer::start().await;
    let (status, _, body) = support::http_get(server.addr, "/ready").await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
}

#[tokio::test]
async fn health_reports_alive() {
    let server = TestServer::start().await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with(r#"{"engine":"ready","status":"ok"}"#), "{response}");
}

#[tokio::test]
async fn a_disconnect_reason_longer_than_a_close_frame_allows_is_cut_and_the_code_arrives() {
    let server = TestServer::start().await;
    let mut client = server.connected("42").await;
    let long = "why ".repeat(100);
    let (status, _) =
        server.api("disconnect", json!({"user": "42", "disconnect": {"code": 4000, "reason": long}})).await;
    assert_eq!(status, 200);
    let (code, reason) = client.closed().await;
    assert_eq!(code, 4000);
    assert_eq!(reason, &long[..123], "the first 123 bytes of the reason");
}

#[tokio::test]
async fn a_batch_or_broadcast_above_api_max_batch_is_refused_whole() {
    let server = TestServer::with(|config| config.api.max_batch = 3).await;
    let info = || json!({"info": {}});
    let (status, reply) = server.api("batch", json!({"commands": [info(), info(), info(), info()]})).await;
    assert_eq!((status, reply["error"]["code"].as_u64()), (200, Some(107)), "{reply}");
    assert!(reply.get("replies").is_none(), "refused whole: {reply}");
    let (status, reply) = server.api("batch", json!({"commands": [info(), info(), info()]})).await;
    assert_eq!((status, reply["replies"].as_array().map(Vec::len)), (200, Some(3)));
    let channels = json!(["a", "b", "c", "d"]);
    let (status, reply) = server.api("broadcast", json!({"channels": channels, "data": {}})).await;
    assert_eq!((status, reply["error"]["code"].as_u64()), (200, Some(107)), "{reply}");
}

#[tokio::test]
async fn a_channels_call_with_an_empty_pattern_lists_every_channel_as_centrifugo_does() {
    let server = TestServer::start().await;
    let mut client = server.connected("42").await;
    client.subscribe("news").await;
    let (status, reply) = server.api("channels", json!({"pattern": ""})).await;
    assert_eq!(status, 200);
    assert_eq!(reply["result"]["channels"]["news"]["num_clients"], 1, "{reply}");
}

#[tokio::test]
async fn presence_where_the_namespace_keeps_none_is_error_108_in_a_200_answer() {
    let server = TestServer::start().await;
    let (status, reply) = server.api("presence", json!({"channel": "news"})).await;
    assert_eq!((status, reply["error"]["code"].as_u64()), (200, Some(108)), "{reply}");
}

/// The samples of an OpenMetrics exposition, by series as written
/// (`name{label="value",…}`), after checking its shape: every sample's
/// family is declared with `# TYPE`, and the exposition ends with `# EOF`.
fn scrape(text: &str) -> std::collections::HashMap<String, f64> {
    assert!(text.trim_end().ends_with("# EOF"), "not an OpenMetrics exposition:\n{text}");
    let declared: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
    let mut samples = std::collections::HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (series, value) = line.rsplit_once(' ').expect("a sample is a series and a value");
        let name = series.split('{').next().unwrap_or(series);
        assert!(declared.iter().any(|family| name.starts_with(family)), "{name} has no # TYPE line:\n{text}");
        samples.insert(series.to_owned(), value.parse::<f64>().expect("a numeric value"));
    }
    samples
}

async fn metrics_of(addr: std::net::SocketAddr) -> std::collections::HashMap<String, f64> {
    let (status, content_type, body) = support::http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    scrape(&body)
}

#[tokio::test]
async fn metrics_count_connections_publications_deliveries_api_calls_recoveries_and_disconnects() {
    let server = TestServer::start().await;
    let mut reader = server.connected("reader").await;
    let reply = reader.subscribe("feed:scores").await;
    let epoch = reply["subscribe"]["epoch"].as_str().unwrap().to_owned();
    server.publish("feed:scores", json!(1)).await;
    server.publish("feed:scores", json!(2)).await;
    reader.next_push().await;
    reader.next_push().await;
    let (status, _) = server.api("no_such_method", json!({})).await;
    assert_eq!(status, 404);
    let mut recovering = server.connected("late").await;
    let subscribe = json!({"channel": "feed:scores", "recover": true, "offset": 1, "epoch": epoch});
    let reply = recovering.command(json!({"id": 9, "subscribe": subscribe})).await;
    assert_eq!(reply["subscribe"]["recovered"], true, "{reply}");

    let seen = metrics_of(server.addr).await;

    let value = |series: &str| seen.get(series).copied().unwrap_or_else(|| panic!("no {series} in {seen:#?}"));
    assert_eq!(value(r#"herald_build_info{version="0.1.0"}"#), 1.0);
    assert_eq!(value(r#"herald_connections{protocol="centrifuge"}"#), 2.0);
    assert_eq!(value(r#"herald_connections{protocol="pusher"}"#), 0.0);
    assert_eq!(value(r#"herald_sessions{protocol="centrifuge",transport="websocket"}"#), 2.0);
    assert_eq!(value(r#"herald_subscriptions{protocol="centrifuge"}"#), 2.0);
    assert_eq!(value("herald_users"), 2.0);
    assert_eq!(value("herald_queued_bytes"), 0.0, "both clients have read everything");
    assert_eq!(value("herald_engine_dropped_messages_total"), 0.0, "the memory engine drops nothing");
    assert_eq!(value(r#"herald_publications_total{source="api"}"#), 2.0);
    assert_eq!(value("herald_deliveries_total"), 2.0);
    assert_eq!(value("herald_fanout_seconds_count"), 2.0);
    assert_eq!(value(r#"herald_api_requests_total{api="server",method="publish",status="200"}"#), 2.0);
    assert_eq!(value(r#"herald_api_requests_total{api="server",method="unknown",status="404"}"#), 1.0);
    assert_eq!(value(r#"herald_recoveries_total{outcome="recovered"}"#), 1.0);
    assert_eq!(value(r#"herald_engine_call_seconds_count{call="publish"}"#), 2.0);
    assert!(value(r#"herald_engine_call_seconds_count{call="history"}"#) >= 1.0, "the recovery read history");

    server.api("disconnect", json!({"user": "late"})).await;
    assert_eq!(recovering.closed().await.0, 3503);
    drop(reader);
    support::eventually_async("both disconnects are counted", || async {
        let seen = metrics_of(server.addr).await;
        seen.get(r#"herald_disconnects_total{protocol="centrifuge",code="3503"}"#) == Some(&1.0)
            && seen.get(r#"herald_disconnects_total{protocol="centrifuge",code="none"}"#) == Some(&1.0)
    })
    .await;
}

#[tokio::test]
async fn with_an_internal_port_metrics_are_served_there_and_not_on_the_public_port() {
    let public = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let internal = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (public_addr, internal_addr) = (public.local_addr().unwrap(), internal.local_addr().unwrap());
    let node = herald_server::Node::build(support::test_config()).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(node.run_with_internal(public, Some(internal), async move {
        let _ = stopped.await;
    }));

    let on_internal = metrics_of(internal_addr).await;
    let (on_public, _, _) = support::http_get(public_addr, "/metrics").await;
    let (health, _, _) = support::http_get(internal_addr, "/health").await;

    assert!(on_internal.contains_key(r#"herald_connections{protocol="centrifuge"}"#));
    assert_eq!(on_public, 404);
    assert_eq!(health, 200);
    let _ = stop.send(());
    served.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_drain_turns_ready_to_503_refuses_new_clients_and_closes_the_open_ones_with_3001_over_its_window() {
    let mut config = support::test_config();
    config.http.drain_window = std::time::Duration::from_secs(1);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let node = herald_server::Node::build(config).await.unwrap();
    let served = tokio::spawn(node.run(listener, std::future::pending()));
    let server = TestServer::at(addr);
    let mut clients = Vec::new();
    for n in 0..20 {
        clients.push(server.connected(&format!("u{n}")).await);
    }

    let asked = std::time::Instant::now();
    let (status, _) = server.api("drain", json!({})).await;
    assert_eq!(status, 200);
    let (ready, _, _) = support::http_get(addr, "/ready").await;
    assert_eq!(ready, 503, "a draining node is not ready the moment it is asked");
    let url = format!("ws://{addr}/connection/websocket");
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!("a draining node took a new client: {other:?}"),
    }

    let closes = clients.iter_mut().map(|client| async move {
        let code = client.closed().await.0;
        (code, asked.elapsed())
    });
    let closes = futures_util::future::join_all(closes).await;
    served.await.unwrap().unwrap();

    assert!(closes.iter().all(|(code, _)| *code == 3001), "{closes:?}");
    let mut closed_after: Vec<_> = closes.into_iter().map(|(_, after)| after).collect();

    closed_after.sort();
    let (first, last) = (closed_after[0], closed_after[19]);
    assert!(first < std::time::Duration::from_millis(400), "the first closed after {first:?}");
    assert!(last > std::time::Duration::from_millis(700), "all closed at once, by {last:?}: not spread");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "a drained node accepts nothing");
}

#[tokio::test]
async fn a_missing_and_a_wrong_key_are_told_apart_and_a_get_is_told_to_post() {
    let server = TestServer::start().await;
    let body = r#"{"channel": "news", "data": 1}"#;
    let (status, missing) = support::http_post(server.addr, "/api/publish", &[], body).await;
    assert_eq!(status, 401);
    let message = missing["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("no API key") && message.contains("X-API-Key"), "{missing}");
    let (status, wrong) = support::http_post(server.addr, "/api/publish", &[("X-API-Key", "not-the-key")], body).await;
    assert_eq!(status, 401);
    assert!(wrong["error"]["message"].as_str().unwrap_or_default().contains("wrong API key"), "{wrong}");
    // `Authorization: apikey <key>`, its scheme in any case and any blanks after it (as Centrifugo).
    for header in
        ["apikey integration-test-api-key", "ApiKey  integration-test-api-key", "APIKEY\tintegration-test-api-key"]
    {
        let (status, reply) = support::http_post(server.addr, "/api/publish", &[("Authorization", header)], body).await;
        assert_eq!(status, 200, "{header:?}: {reply}");
    }
    let bearer = [("Authorization", "Bearer integration-test-api-key")];
    assert_eq!(support::http_post(server.addr, "/api/publish", &bearer, body).await.0, 401, "another scheme");

    let (status, content_type, answer) = support::http_get(server.addr, "/api/publish").await;
    assert_eq!(status, 405);
    assert!(content_type.starts_with("application/json"), "{content_type}");
    assert!(answer.contains("POST /api/publish"), "{answer}");
}

/// Log lines the node writes while a test runs (on the test's thread,
/// where an in-process node's tasks run).
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_refused_call_whose_path_holds_a_line_break_cannot_forge_a_log_line() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let server = TestServer::with(|config| {
        config
            .pusher
            .apps
            .push(serde_json::from_value(json!({"id": "app", "key": "k", "secret": "s3cr3t-s3cr3t"})).unwrap())
    })
    .await;
    let forged = "%0A2026-01-01T00:00:00Z%20INFO%20herald:%20FORGED";
    let (status, _) = support::http_post(server.addr, &format!("/api/x{forged}"), &[], "{}").await;
    assert_eq!(status, 401);
    let (status, _) = support::http_post(server.addr, &format!("/apps/a{forged}/events"), &[], "{}").await;
    assert_eq!(status, 404);
    // A Pusher client's app key, from the WebSocket's path.
    let url = format!("ws://{}/app/x{forged}?protocol=7", server.addr);
    let (mut refused, _) = tokio_tungstenite::connect_async(url).await.expect("upgraded, then refused");
    while let Some(Ok(_)) = futures_util::StreamExt::next(&mut refused).await {}

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("API call refused") && text.contains("pusher API call refused"), "both logged:\n{text}");
    assert!(text.contains("pusher connection refused"), "the WebSocket too:\n{text}");
    assert!(text.contains("FORGED"), "the path is in the log:\n{text}");
    for line in text.lines() {
        assert!(!line.starts_with("2026-01-01T00:00:00Z"), "a line the caller wrote: {line:?}\n{text}");
    }
}

/// Centrifugo's older format at `POST /api`, as gocent and older cent and
/// phpcent send it: commands a line each, methods named or numbered,
/// answers a line each in order, with the ids given.
#[tokio::test]
async fn the_older_format_at_post_api_runs_each_command_and_answers_each_in_order() {
    let server = TestServer::start().await;
    let mut client = server.connected("42").await;
    client.subscribe("feed:legacy").await;
    let body = [
        r#"{"method":"publish","params":{"channel":"feed:legacy","data":{"n":1}}}"#,
        r#"{"id":7,"method":0,"params":{"channel":"feed:legacy","data":{"n":2}}}"#,
        r#"{"method":"presence_stats","params":{"channel":"feed:legacy"}}"#,
        r#"{"id":8,"method":"teleport","params":{}}"#,
        r#"{"method":9}"#,
    ]
    .join("\n");
    let auth = [("Authorization", "apikey integration-test-api-key")];
    let (status, text) = support::http_post_raw(server.addr, "/api", &auth, &body).await;
    assert_eq!(status, 200, "{text}");
    let answers: Vec<serde_json::Value> = text.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(answers.len(), 5, "{text}");
    assert_eq!(answers[0]["result"]["offset"], 1);
    assert_eq!((&answers[1]["id"], &answers[1]["result"]["offset"]), (&json!(7), &json!(2)), "numbered 0: publish");
    assert_eq!(answers[2]["error"]["code"], 108, "this namespace keeps no presence");
    assert_eq!((&answers[3]["id"], &answers[3]["error"]["code"]), (&json!(8), &json!(104)));
    assert!(answers[4]["result"]["nodes"].is_array(), "numbered 9: info");
    for n in [1, 2] {
        assert_eq!(client.next_push().await["pub"]["data"]["n"], n);
    }

    let (status, _) = support::http_post_raw(server.addr, "/api", &[], &body).await;
    assert_eq!(status, 401, "the key first");
    let (status, text) = support::http_post_raw(server.addr, "/api", &auth, "not json").await;
    assert_eq!((status, text.lines().count()), (200, 1), "a line that is not JSON is answered in its place: {text}");

    // A command written over several lines (pretty-printed), then another.
    let pretty = "{\n  \"method\": \"publish\",\n  \"params\": {\"channel\": \"feed:legacy\", \"data\": {\"n\": 3}}\n}\n{\"method\": \"info\"}";
    let (status, text) = support::http_post_raw(server.addr, "/api", &auth, pretty).await;
    let answers: Vec<serde_json::Value> = text.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(status, 200, "{text}");
    assert_eq!(answers.len(), 2, "{text}");
    assert_eq!((&answers[0]["result"]["offset"], answers[1]["result"]["nodes"].is_array()), (&json!(3), true));
}

/// Centrifugo's options Herald does not offer are refused by name, not
/// dropped: a `session` or `whitelist` ignored would reach more
/// connections than asked. Their empty values, which SDKs send by
/// default, pass.
#[tokio::test]
async fn options_herald_does_not_offer_are_refused_by_name_and_their_empty_values_pass() {
    let server = TestServer::start().await;
    let refused = [
        ("publish", json!({"channel": "news", "data": {}, "b64data": "AQI="})),
        ("publish", json!({"channel": "news", "data": {}, "version": 3})),
        ("broadcast", json!({"channels": ["news"], "data": {}, "b64data": "AQI="})),
        ("subscribe", json!({"user": "42", "channel": "news", "recover_since": {"offset": 3, "epoch": "e"}})),
        ("unsubscribe", json!({"user": "42", "channel": "news", "session": "s1"})),
        ("disconnect", json!({"user": "42", "whitelist": ["c1"]})),
        ("refresh", json!({"user": "42", "session": "s1"})),
    ];
    for (method, params) in refused {
        let (status, reply) = server.api(method, params.clone()).await;
        assert_eq!((status, reply["error"]["code"].as_u64()), (200, Some(107)), "{method} {params}: {reply}");
        let named = params.as_object().unwrap().keys().any(|k| reply["error"]["message"].as_str().unwrap().contains(k));
        assert!(named, "the option is named: {reply}");
    }
    let defaults = json!({"channel": "news", "data": {}, "b64data": "", "version": 0, "version_epoch": ""});
    assert_eq!(server.api("publish", defaults).await.0, 200);
    let (_, reply) = server.api("disconnect", json!({"user": "42", "whitelist": [], "session": ""})).await;
    assert!(reply.get("error").is_none(), "{reply}");
}

#[tokio::test]
async fn a_broadcast_takes_publish_s_idempotency_key_and_skip_history_for_each_channel() {
    let server = TestServer::start().await;
    let broadcast = json!({"channels": ["feed:a", "feed:b"], "data": {"n": 1}, "idempotency_key": "k1"});
    let (_, first) = server.api("broadcast", broadcast.clone()).await;
    let (_, again) = server.api("broadcast", broadcast).await;
    assert_eq!(first["result"]["responses"], again["result"]["responses"], "a repeat lands where the first did");
    let (_, history) = server.api("history", json!({"channel": "feed:a", "limit": -1})).await;
    assert_eq!(history["result"]["publications"].as_array().map(Vec::len), Some(1), "published once: {history}");

    let skipping = json!({"channels": ["feed:a"], "data": {"n": 2}, "skip_history": true});
    assert_eq!(server.api("broadcast", skipping).await.0, 200);
    let (_, history) = server.api("history", json!({"channel": "feed:a", "limit": -1})).await;
    assert_eq!(history["result"]["publications"].as_array().map(Vec::len), Some(1), "not kept: {history}");
}

#[tokio::test]
async fn a_batch_entry_herald_cannot_read_is_answered_in_its_place_and_the_others_run() {
    let server = TestServer::start().await;
    let commands = json!({"commands": [
        {"rpc": {"method": "x"}},
        {"publish": {"channel": "feed:b"}},
        {"publish": {"channel": "feed:b", "data": {"n": 1}}},
        {"info": {}, "publish": {}},
    ]});
    let (status, reply) = server.api("batch", commands).await;
    assert_eq!(status, 200, "{reply}");
    let codes: Vec<Option<u64>> =
        reply["replies"].as_array().unwrap().iter().map(|r| r["error"]["code"].as_u64()).collect();
    assert_eq!(codes, [Some(104), Some(107), None, Some(107)], "{reply}");
    assert_eq!(reply["replies"][2]["publish"]["offset"], 1, "{reply}");
}

/// Centrifugo's transport error mode, which apps that check only the HTTP
/// status ask for: a refused call answers with a status for its code and
/// the error alone as the body.
#[tokio::test]
async fn a_call_asking_for_transport_errors_gets_an_http_status_for_its_error() {
    let server = TestServer::start().await;
    let transport = [("X-API-Key", support::API_KEY), ("X-Centrifugo-Error-Mode", "transport")];
    let call = |method: &str, params: Value| {
        let path = format!("/api/{method}");
        async move { support::http_post(server.addr, &path, &transport, &params.to_string()).await }
    };
    let cases = [
        ("publish", json!({"channel": "nowhere:x", "data": {}}), 404, 102),
        ("publish", json!({"data": {}}), 400, 107),
        ("history", json!({"channel": "news"}), 400, 108),
        ("history", json!({"channel": "feed:t", "since": {"offset": 9, "epoch": "gone"}}), 416, 112),
        ("batch", json!({"commands": "not a list"}), 400, 107),
    ];
    for (method, params, status, code) in cases {
        let (got, body) = call(method, params.clone()).await;
        assert_eq!((got, &body["code"]), (status, &json!(code)), "{method} {params}: {body}");
        assert!(body["message"].is_string() && body.get("error").is_none(), "the error alone: {body}");
    }
    let (got, body) = call("publish", json!({"channel": "news", "data": {}})).await;
    assert_eq!((got, &body["error"]), (200, &Value::Null), "a call that works answers as ever: {body}");
    let batch = json!({"commands": [{"publish": {"channel": "nowhere:x", "data": {}}}]});
    let (got, body) = call("batch", batch).await;
    assert_eq!((got, &body["replies"][0]["error"]["code"]), (200, &json!(102)), "its entries' are theirs: {body}");

    let (got, body) = server.api("publish", json!({"channel": "nowhere:x", "data": {}})).await;
    assert_eq!((got, &body["error"]["code"]), (200, &json!(102)), "without the header, in a 200 answer");
}

#[tokio::test]
async fn api_error_mode_transport_answers_every_call_so() {
    let server = TestServer::with(|c| c.api.error_mode = herald_server::config::ApiErrorMode::Transport).await;
    let (got, body) = server.api("publish", json!({"channel": "nowhere:x", "data": {}})).await;
    assert_eq!((got, &body["code"]), (404, &json!(102)), "{body}");
}
