//! The Centrifuge protocol over real WebSockets: connecting, subscribing,
//! publishing, permissions, batching, heartbeats, expiry and backpressure.

use crate::support;

use std::time::Duration;

use crate::support::{Seen, TestServer};
use serde_json::{json, Value};

use herald_server::auth::unix_now;

#[tokio::test]
async fn a_valid_token_connects_and_the_reply_carries_the_client_id_and_ping_settings() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let reply = client.command(json!({"id": 1, "connect": {"token": server.token("42"), "name": "test"}})).await;
    let connect = &reply["connect"];
    assert_eq!(connect["client"].as_str().map(str::len), Some(36), "a UUID client id: {reply}");
    assert_eq!(connect["ping"], 25);
    assert_eq!(connect["pong"], true);
    assert!(connect.get("expires").is_none(), "a token without exp does not expire");
}

#[tokio::test]
async fn an_api_publication_reaches_subscribers_of_its_channel_only() {
    let server = TestServer::start().await;
    let mut news_reader = server.connected("1").await;
    let mut sport_reader = server.connected("2").await;
    news_reader.subscribe("news").await;
    sport_reader.subscribe("sport").await;

    server.publish("news", json!({"headline": "hello"})).await;
    server.publish("sport", json!({"score": 1})).await;

    let push = news_reader.next_push().await;
    assert_eq!(push, json!({"channel": "news", "pub": {"data": {"headline": "hello"}}}));
    let push = sport_reader.next_push().await;
    assert_eq!(push["pub"]["data"], json!({"score": 1}), "sport got only its own: {push}");
}

#[tokio::test]
async fn clients_publish_where_the_namespace_allows_and_get_103_where_not() {
    let server = TestServer::start().await;
    let mut alice = server.connected("alice").await;
    let mut bob = server.connected("bob").await;
    alice.subscribe("chat:room").await;
    bob.subscribe("chat:room").await;

    let id = alice.id();
    let reply = alice.command(json!({"id": id, "publish": {"channel": "chat:room", "data": {"text": "hi"}}})).await;
    assert_eq!(reply, json!({"id": id, "publish": {}}));
    let push = bob.next_push().await;
    assert_eq!(push["pub"]["data"], json!({"text": "hi"}));
    assert_eq!(push["pub"]["info"]["user"], "alice", "the publisher is named: {push}");
    assert_eq!(alice.next_push().await, push, "the publisher receives its own publication too");

    let id = alice.id();
    let reply = alice.command(json!({"id": id, "publish": {"channel": "news", "data": 1}})).await;
    assert_eq!(reply["error"]["code"], 103, "news is API-only: {reply}");
}

#[tokio::test]
async fn subscribe_errors_carry_the_protocol_codes() {
    let server = TestServer::start().await;
    let mut client = server.connected("42").await;
    client.subscribe("news").await;
    let cases = [
        ("news", 105),        // already subscribed
        ("games:1", 102),     // unknown namespace
        ("private:doc", 103), // token required
        ("dialog#7,8", 103),  // user-limited, 42 not listed
    ];
    for (channel, code) in cases {
        let id = client.id();
        let reply = client.command(json!({"id": id, "subscribe": {"channel": channel}})).await;
        assert_eq!(reply["error"]["code"], code, "{channel}: {reply}");
    }
    let id = client.id();
    let reply = client.command(json!({"id": id, "subscribe": {"channel": ""}})).await;
    assert_eq!(reply["error"]["code"], 107, "an empty channel name is a bad request: {reply}");
    client.subscribe("dialog#42,43").await;
}

#[tokio::test]
async fn private_channels_need_a_valid_subscription_token() {
    let server = TestServer::start().await;
    let mut client = server.connected("42").await;
    let cases = [
        (server.channel_token("42", "private:doc", json!({"exp": unix_now() - 5})), Some(109u64)),
        ("garbage".to_owned(), Some(103u64)),
        (server.channel_token("42", "private:doc", json!({"info": {"role": "editor"}})), None),
    ];
    for (token, error) in cases {
        let id = client.id();
        let reply = client.command(json!({"id": id, "subscribe": {"channel": "private:doc", "token": token}})).await;
        assert_eq!(reply["error"]["code"].as_u64(), error, "{reply}");
    }
    server.publish("private:doc", json!("secret")).await;
    assert_eq!(client.next_push().await["pub"]["data"], "secret");
}

#[tokio::test]
async fn a_subscription_token_for_another_channel_user_or_connection_closes_the_connection_with_3500_as_in_centrifugo()
{
    let server = TestServer::start().await;
    let misplaced = [
        ("another channel", server.channel_token("42", "private:other", json!({}))),
        ("another user", server.channel_token("43", "private:doc", json!({}))),
        ("another connection", server.channel_token("42", "private:doc", json!({"client": "someone-else"}))),
    ];
    for (whose, token) in misplaced {
        let mut client = server.connected("42").await;
        client.send(json!({"id": 2, "subscribe": {"channel": "private:doc", "token": token}})).await;
        assert_eq!(client.closed().await, (3500, "invalid token".to_owned()), "a token for {whose}");
    }
}

#[tokio::test]
async fn a_subscription_refresh_with_a_token_that_does_not_verify_closes_the_connection_with_3500() {
    let server = TestServer::start().await;
    let refreshes = [
        ("garbage", "garbage".to_owned()),
        ("a token for another user", server.channel_token("43", "private:doc", json!({"exp": unix_now() + 600}))),
    ];
    for (what, token) in refreshes {
        let mut client = server.connected("42").await;
        let first = server.channel_token("42", "private:doc", json!({"exp": unix_now() + 60}));
        let reply = client.command(json!({"id": 2, "subscribe": {"channel": "private:doc", "token": first}})).await;
        assert_eq!(reply["subscribe"]["expires"], true, "{reply}");
        client.send(json!({"id": 3, "sub_refresh": {"channel": "private:doc", "token": token}})).await;
        assert_eq!(client.closed().await, (3500, "invalid token".to_owned()), "a refresh with {what}");
    }

    // As Centrifugo, what it can answer without the token is answered first.
    let mut client = server.connected("42").await;
    let refresh =
        |id: u32, channel: &str, token: &str| json!({"id": id, "sub_refresh": {"channel": channel, "token": token}});
    let reply = client.command(refresh(2, "private:gone", "garbage")).await;
    assert_eq!(
        reply["error"]["code"], 103,
        "a channel it is not subscribed to (its subscription may just have ended): {reply}"
    );
    let first = server.channel_token("42", "private:doc", json!({"exp": unix_now() + 60}));
    client.command(json!({"id": 3, "subscribe": {"channel": "private:doc", "token": first}})).await;
    let reply = client.command(refresh(4, "private:doc", "")).await;
    assert_eq!(reply["error"]["code"], 107, "no token: {reply}");
    client.assert_alive().await;
}

#[tokio::test]
async fn a_channel_named_with_a_dollar_is_private_in_any_namespace_as_in_centrifugo() {
    let server = TestServer::start().await;
    let mut client = server.connected("42").await;
    for channel in ["$secret", "$chat:room"] {
        let id = client.id();
        let reply = client.command(json!({"id": id, "subscribe": {"channel": channel}})).await;
        assert_eq!(reply["error"]["code"], 103, "{channel} without a token: {reply}");

        let token = server.channel_token("42", channel, json!({}));
        let id = client.id();
        let reply = client.command(json!({"id": id, "subscribe": {"channel": channel, "token": token}})).await;
        assert!(reply.get("error").is_none(), "{channel} with a token, in its namespace: {reply}");
    }
}

#[tokio::test]
async fn commands_sent_in_one_frame_are_answered_in_one_frame() {
    let server = TestServer::start().await;
    let mut client = server.connected("42").await;
    client
        .send_text("{\"id\":10,\"subscribe\":{\"channel\":\"a\"}}\n{\"id\":11,\"subscribe\":{\"channel\":\"b\"}}\n{\"id\":12,\"ping\":{}}")
        .await;
    let frame = client.next_frame().await.expect("a reply frame");
    let replies: Vec<Value> = frame.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(
        replies,
        [json!({"id": 10, "subscribe": {}}), json!({"id": 11, "subscribe": {}}), json!({"id": 12, "ping": {}})]
    );
}

#[tokio::test]
async fn unknown_methods_get_104_and_rpc_without_a_proxy_108_as_in_centrifugo() {
    let server = TestServer::start().await;
    let mut client = server.connected("42").await;
    let reply = client.command(json!({"id": 5, "teleport": {}})).await;
    assert_eq!(reply["error"]["code"], 104);
    let reply = client.command(json!({"id": 6, "rpc": {"method": "sum", "data": [1, 2]}})).await;
    assert_eq!(reply["error"]["code"], 108, "not available: {reply}");
    client.assert_alive().await;
}

#[tokio::test]
async fn the_server_pings_and_a_client_that_never_pongs_is_closed_with_3012() {
    let server = TestServer::with(|c| {
        c.client.ping_interval = Duration::from_secs(1);
        c.client.pong_timeout = Duration::from_millis(300);
    })
    .await;
    let mut silent = server.connected("silent").await;
    let mut polite = server.connected("polite").await;

    // The polite client answers each ping as it comes; the silent one's
    // messages wait in its socket until it is read afterwards.
    for _ in 0..2 {
        assert_eq!(polite.next().await, Seen::Json(json!({})), "the server pings");
        polite.send_text("{}").await;
    }
    polite.assert_alive().await;

    assert_eq!(silent.next().await, Seen::Json(json!({})), "the silent client was pinged too");
    assert_eq!(silent.closed().await.0, 3012);
}

#[tokio::test]
async fn a_connection_that_never_sends_connect_is_closed_as_stale() {
    let server = TestServer::with(|c| c.client.connect_timeout = Duration::from_millis(200)).await;
    let mut client = server.client().await;
    assert_eq!(client.closed().await.0, 3502);
}

#[tokio::test]
async fn an_expired_connection_token_gets_109_and_an_unrefreshed_connection_is_closed_with_3005() {
    let server = TestServer::with(|c| c.client.expired_close_delay = Duration::ZERO).await;
    let mut client = server.client().await;
    let expired = server.token_with("42", json!({"exp": unix_now() - 1}));
    let reply = client.command(json!({"id": 1, "connect": {"token": expired}})).await;
    assert_eq!(reply["error"]["code"], 109);

    let mut client = server.client().await;
    let soon = server.token_with("42", json!({"exp": unix_now() + 1}));
    let reply = client.command(json!({"id": 1, "connect": {"token": soon}})).await;
    assert_eq!(reply["connect"]["expires"], true, "{reply}");
    assert_eq!(client.closed().await.0, 3005);
}

#[tokio::test]
async fn refreshing_the_token_keeps_the_connection_past_its_first_expiry() {
    let server = TestServer::with(|c| c.client.expired_close_delay = Duration::ZERO).await;
    let mut client = server.client().await;
    let first_exp = unix_now() + 1;
    let token = server.token_with("42", json!({"exp": first_exp}));
    client.command(json!({"id": 1, "connect": {"token": token}})).await;

    let fresh = server.token_with("42", json!({"exp": unix_now() + 600}));
    let reply = client.command(json!({"id": 2, "refresh": {"token": fresh}})).await;
    assert_eq!(reply["refresh"]["expires"], true, "{reply}");
    assert!(reply["refresh"]["ttl"].as_u64().unwrap() > 500);

    support::eventually("the first token's expiry has passed", || unix_now() > first_exp + 1).await;
    client.assert_alive().await;

    let stranger = server.token_with("43", json!({"exp": unix_now() + 600}));
    client.send(json!({"id": 3, "refresh": {"token": stranger}})).await;
    assert_eq!(client.closed().await.0, 3500, "a token for another user is refused");
}

#[tokio::test]
async fn a_refresh_with_an_expired_token_closes_the_connection_as_expired_so_the_client_comes_back() {
    let server = TestServer::with(|c| c.client.expired_close_delay = Duration::ZERO).await;
    let mut client = server.client().await;
    let token = server.token_with("42", json!({"exp": unix_now() + 600}));
    client.command(json!({"id": 1, "connect": {"token": token}})).await;

    let expired = server.token_with("42", json!({"exp": unix_now() - 1}));
    client.send(json!({"id": 2, "refresh": {"token": expired}})).await;
    assert_eq!(client.closed().await.0, 3005, "3005 reconnects; an error reply would end centrifuge-js");
}

#[tokio::test]
async fn a_token_not_valid_yet_is_answered_as_expired_so_the_client_asks_for_another() {
    let server = TestServer::start().await;
    let ahead = unix_now() + 30;
    let mut client = server.client().await;
    let early = server.token_with("42", json!({"nbf": ahead}));
    let reply = client.command(json!({"id": 1, "connect": {"token": early}})).await;
    assert_eq!(reply["error"]["code"], 109, "{reply}");

    let mut client = server.connected("42").await;
    let early = server.token_with("42", json!({"channel": "news", "nbf": ahead}));
    let reply = client.command(json!({"id": 2, "subscribe": {"channel": "news", "token": early}})).await;
    assert_eq!(reply["error"]["code"], 109, "{reply}");
}

#[tokio::test]
async fn expire_at_sets_the_connections_expiry_apart_from_the_tokens_as_in_centrifugo() {
    let server = TestServer::with(|c| c.client.expired_close_delay = Duration::ZERO).await;
    let token_exp = unix_now() + 1;
    let never = server.token_with("42", json!({"exp": token_exp, "expire_at": 0}));
    let mut lasting = server.client().await;
    let reply = lasting.command(json!({"id": 1, "connect": {"token": never}})).await;
    assert!(reply["connect"].get("expires").is_none(), "expire_at 0: the connection never expires: {reply}");

    let later = server.token_with("43", json!({"expire_at": unix_now() + 600}));
    let mut expiring = server.client().await;
    let reply = expiring.command(json!({"id": 1, "connect": {"token": later}})).await;
    assert_eq!(reply["connect"]["expires"], true, "{reply}");
    assert!(reply["connect"]["ttl"].as_u64().unwrap() > 500, "{reply}");

    let past = server.token_with("44", json!({"expire_at": unix_now() - 1}));
    let mut late = server.client().await;
    let reply = late.command(json!({"id": 1, "connect": {"token": past}})).await;
    assert_eq!(reply["error"]["code"], 109, "an expire_at already past is an expired token: {reply}");

    support::eventually("the token's own exp has passed", || unix_now() > token_exp + 1).await;
    lasting.assert_alive().await;
}

#[tokio::test]
async fn a_connection_tokens_subs_subscribe_it_with_their_data_and_a_subscription_token_may_name_its_connection() {
    let server = TestServer::start().await;
    let token =
        server.token_with("42", json!({"subs": {"chat:news": {"info": {"role": "reader"}, "data": {"welcome": 1}}}}));
    let mut client = server.client().await;
    let reply = client.command(json!({"id": 1, "connect": {"token": token}})).await;
    assert_eq!(reply["connect"]["subs"]["chat:news"]["data"], json!({"welcome": 1}), "{reply}");
    server.publish("chat:news", json!("hello")).await;
    assert_eq!(client.next_push().await["pub"]["data"], "hello", "subscribed by the server");

    let me = reply["connect"]["client"].as_str().unwrap().to_owned();
    let for_me = server.channel_token("42", "private:doc", json!({"client": me, "data": {"doc": "v1"}}));
    let reply = client.command(json!({"id": 3, "subscribe": {"channel": "private:doc", "token": for_me}})).await;
    assert_eq!(reply["subscribe"]["data"], json!({"doc": "v1"}), "the token's data, in the reply: {reply}");
}

/// An identity provider's key set on a local port: the fixture keys `rsa-1`,
/// `ec-1` and `ed-1`.
async fn serve_key_set() -> String {
    let set = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwks.json")).unwrap();
    let app = axum::Router::new().route("/.well-known/jwks.json", axum::routing::get(move || async move { set }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/.well-known/jwks.json", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn signed_by_the_set(kid: &str, user: &str) -> String {
    let pem = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt-ed25519.key.pem")).unwrap();
    let header =
        jsonwebtoken::Header { kid: Some(kid.to_owned()), ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA) };
    let key = jsonwebtoken::EncodingKey::from_ed_pem(&pem).unwrap();
    jsonwebtoken::encode(&header, &json!({"sub": user}), &key).unwrap()
}

#[tokio::test]
async fn a_token_naming_a_key_of_the_jwks_connects_and_one_naming_an_unknown_key_is_refused() {
    let url = serve_key_set().await;
    let server = TestServer::with(|c| c.client.token_jwks_url = Some(url)).await;

    let mut client = server.client().await;
    let reply = client.command(json!({"id": 1, "connect": {"token": signed_by_the_set("ed-1", "42")}})).await;
    assert!(reply["connect"]["client"].is_string(), "{reply}");

    let mut forger = server.client().await;
    forger.send(json!({"id": 1, "connect": {"token": signed_by_the_set("made-up", "42")}})).await;
    assert_eq!(forger.closed().await.0, 3500);
    let mut hmac_user = server.connected("7").await;
    hmac_user.assert_alive().await;
}

/// A token whose key cannot be looked up, the JWKS being unreachable, is
/// not known to be invalid: the client is told to try again (100,
/// temporary), not closed for good with 3500.
#[tokio::test]
async fn a_token_whose_key_cannot_be_looked_up_while_the_jwks_is_down_is_answered_as_temporary() {
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{closed_port}/.well-known/jwks.json");
    let server = TestServer::with(|c| c.client.token_jwks_url = Some(url)).await;

    let mut client = server.client().await;
    let reply = client.command(json!({"id": 1, "connect": {"token": signed_by_the_set("ed-1", "42")}})).await;
    assert_eq!(reply["error"]["code"], 100, "{reply}");
    assert_eq!(reply["error"]["temporary"], true, "an error reply, not a close with 3500: {reply}");
}

#[tokio::test]
async fn an_expiring_subscription_ends_with_2501_unless_refreshed() {
    let server = TestServer::with(|c| c.client.expired_sub_close_delay = Duration::ZERO).await;
    let mut client = server.connected("42").await;
    let soon = |channel: &str| server.channel_token("42", channel, json!({"exp": unix_now() + 1}));

    let id = client.id();
    client.command(json!({"id": id, "subscribe": {"channel": "private:a", "token": soon("private:a")}})).await;
    let id = client.id();
    let reply =
        client.command(json!({"id": id, "subscribe": {"channel": "private:b", "token": soon("private:b")}})).await;
    assert_eq!(reply["subscribe"]["expires"], true, "{reply}");
    let later = server.channel_token("42", "private:b", json!({"exp": unix_now() + 600}));
    let id = client.id();
    let reply = client.command(json!({"id": id, "sub_refresh": {"channel": "private:b", "token": later}})).await;
    assert_eq!(reply["sub_refresh"]["expires"], true, "{reply}");

    let push = client.next_push().await;
    assert_eq!(push, json!({"channel": "private:a", "unsubscribe": {"code": 2501, "reason": "subscription expired"}}));
    server.publish("private:b", json!("still here")).await;
    assert_eq!(client.next_push().await["pub"]["data"], "still here");
}

#[tokio::test]
async fn server_side_subscriptions_come_from_the_token_channels_claim() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let token = server.token_with("42", json!({"channels": ["news", "chat:lobby"]}));
    let reply = client.command(json!({"id": 1, "connect": {"token": token}})).await;
    assert_eq!(reply["connect"]["subs"], json!({"news": {}, "chat:lobby": {}}));
    server.publish("chat:lobby", json!("welcome")).await;
    assert_eq!(client.next_push().await, json!({"channel": "chat:lobby", "pub": {"data": "welcome"}}));

    let mut refused = server.client().await;
    let token = server.token_with("42", json!({"channels": ["games:1"]}));
    let reply = refused.command(json!({"id": 1, "connect": {"token": token}})).await;
    assert_eq!(reply["error"]["code"], 102, "an unknown channel in the claim fails the connect: {reply}");
}

#[tokio::test]
async fn anonymous_connections_only_where_the_config_allows() {
    let strict = TestServer::start().await;
    let mut client = strict.client().await;
    client.send(json!({"id": 1, "connect": {}})).await;
    assert_eq!(client.closed().await, (3501, "bad request".to_owned()), "no token, as Centrifugo closes it");

    let open = TestServer::with(|c| {
        c.client.allow_anonymous = true;
        c.channel.without_namespace.subscribe = herald_core::SubscribePolicy::Anyone;
    })
    .await;
    let mut client = open.client().await;
    let reply = client.command(json!({"id": 1, "connect": {}})).await;
    assert!(reply["connect"]["client"].is_string(), "{reply}");
    client.subscribe("news").await;
    let id = client.id();
    let reply = client.command(json!({"id": id, "subscribe": {"channel": "chat:x"}})).await;
    assert_eq!(reply["error"]["code"], 103, "chat wants authenticated users: {reply}");
}

#[tokio::test]
async fn a_slow_consumer_is_disconnected_with_3008_and_others_get_everything() {
    let server = TestServer::with(|c| {
        c.client.queue_max_bytes = 64 * 1024;
        c.client.write_timeout = Duration::from_secs(5);
    })
    .await;
    let mut slow = server.connected("slow").await;
    let mut fast = server.connected("fast").await;
    slow.subscribe("firehose").await;
    fast.subscribe("firehose").await;

    // The slow client reads nothing while far more than its socket buffers
    // and outbox can hold is published; the fast one reads as it goes.
    let payload = "x".repeat(32 * 1024);
    let total = 400;
    let reader = tokio::spawn(async move {
        let mut received = 0;
        while received < total {
            let push = fast.next_push().await;
            assert_eq!(push["pub"]["data"]["n"], received, "in order, nothing skipped");
            received += 1;
        }
        fast
    });
    for n in 0..total {
        server.publish("firehose", json!({"n": n, "pad": payload})).await;
    }
    let mut fast = reader.await.expect("the fast reader got everything");
    fast.assert_alive().await;
    assert_eq!(slow.closed().await.0, 3008);
}

#[tokio::test]
async fn a_client_that_closes_gets_the_close_frame_back_and_leaves_the_node() {
    let server = TestServer::start().await;
    let mut client = server.connected("42").await;
    client.subscribe("news").await;
    client.send_close(1000).await;
    // The closing handshake completes: the server answers with its own
    // close frame (else browsers report an unclean close, 1006).
    assert_eq!(client.closed().await.0, 1000);
    support::eventually_async("the connection left the node", || async {
        let (_, info) = server.api("info", json!({})).await;
        info["result"]["nodes"][0]["num_clients"] == 0
    })
    .await;
}

#[tokio::test]
async fn unsubscribing_stops_delivery() {
    let server = TestServer::start().await;
    let mut client = server.connected("42").await;
    client.subscribe("news").await;
    client.subscribe("sport").await;
    let id = client.id();
    assert_eq!(
        client.command(json!({"id": id, "unsubscribe": {"channel": "news"}})).await,
        json!({"id": id, "unsubscribe": {}})
    );
    server.publish("news", json!("missed")).await;
    server.publish("sport", json!("seen")).await;
    assert_eq!(client.next_push().await["channel"], "sport");
}

#[tokio::test]
async fn shutdown_tells_clients_to_reconnect_with_3001() {
    let server = TestServer::start().await;
    let mut connected = server.connected("42").await;
    let mut connecting = server.client().await;
    server.shutdown().await;
    assert_eq!(connected.closed().await.0, 3001);
    assert_eq!(connecting.closed().await.0, 3001);
}

#[tokio::test]
async fn a_namespace_write_delay_sends_what_arrived_meanwhile_in_one_frame_and_never_delays_replies() {
    let delay = Duration::from_millis(300);
    let server = TestServer::with(|config| {
        let ticks = herald_core::NamespaceOptions { write_delay: delay, ..Default::default() };
        config.channel.namespaces.insert("ticks".into(), ticks);
    })
    .await;
    let mut client = server.connected("1").await;
    client.subscribe("ticks:eur").await;

    let published = std::time::Instant::now();
    for price in [1, 2, 3] {
        server.publish("ticks:eur", json!({"price": price})).await;
    }
    let frame = client.next_frame().await.expect("a frame");
    assert!(published.elapsed() >= delay - Duration::from_millis(20), "held for the delay");
    let prices: Vec<Value> = frame
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap()["push"]["pub"]["data"]["price"].clone())
        .collect();
    assert_eq!(prices, [json!(1), json!(2), json!(3)], "the three publications, in order, in one frame: {frame}");

    // A reply is not held back, and takes a queued publication with it.
    server.publish("ticks:eur", json!({"price": 4})).await;
    let asked = std::time::Instant::now();
    client.send(json!({"id": 7, "presence_stats": {"channel": "ticks:eur"}})).await;
    let frame = client.next_frame().await.expect("a frame");
    assert!(asked.elapsed() < delay, "the reply came at once: {frame}");
    assert!(frame.contains(r#""price":4"#) && frame.contains(r#""id":7"#), "publication and reply together: {frame}");
}

/// A TLS connection to `addr` that trusts only the test CA, as `localhost`.
async fn tls_to(addr: std::net::SocketAddr) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let ca = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls-ca.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&ca) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp).await.unwrap()
}

type TlsSocket = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

async fn tls_send(ws: &mut TlsSocket, command: Value) {
    use futures_util::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::text(command.to_string())).await.unwrap();
}

async fn tls_next(ws: &mut TlsSocket) -> Value {
    use futures_util::StreamExt;
    let message = tokio::time::timeout(support::PATIENCE, ws.next()).await.unwrap().unwrap().unwrap();
    serde_json::from_str(message.to_text().unwrap()).unwrap()
}

/// A node serving HTTPS with the test certificate.
async fn tls_server() -> TestServer {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    TestServer::with(|c| {
        c.http.tls_cert = Some(format!("{fixtures}/tls-server.pem"));
        c.http.tls_key = Some(herald_server::config::Secret::new(format!("{fixtures}/tls-server.key.pem")));
    })
    .await
}

/// Publishes `body` through the server API over HTTPS.
async fn tls_publish(addr: std::net::SocketAddr, body: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut https = tls_to(addr).await;
    let request = format!(
        "POST /api/publish HTTP/1.1\r\nHost: localhost\r\nAuthorization: apikey {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        support::API_KEY,
        body.len()
    );
    https.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = https.read_to_end(&mut response).await;
    assert!(response.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&response));
}

#[tokio::test]
async fn with_a_certificate_clients_connect_over_wss_and_the_api_answers_over_https() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = tls_server().await;
    let url = format!("wss://localhost:{}/connection/websocket", server.addr.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls_to(server.addr).await).await.unwrap();
    tls_send(&mut ws, json!({"id": 1, "connect": {"token": server.token("42")}})).await;
    let reply = tls_next(&mut ws).await;
    assert!(reply["connect"]["client"].is_string(), "{reply}");
    tls_send(&mut ws, json!({"id": 2, "subscribe": {"channel": "news"}})).await;
    assert_eq!(tls_next(&mut ws).await["id"], 2);

    let mut plain = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    plain.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(support::PATIENCE, plain.read_to_end(&mut answer)).await;
    assert!(!answer.starts_with(b"HTTP/1.1 200"), "plain HTTP was served on the TLS port");

    tls_publish(server.addr, r#"{"channel": "news", "data": "over tls"}"#).await;
    let push = tls_next(&mut ws).await;
    assert_eq!(push["push"]["pub"]["data"], "over tls", "{push}");
}

#[tokio::test]
async fn over_tls_a_stream_takes_its_connection_and_delivers_on_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = tls_server().await;
    let body = json!({"token": server.token_with("tia", json!({"channels": ["room:tls"]}))}).to_string();
    let mut stream = tls_to(server.addr).await;
    let request = format!(
        "POST /connection/uni_http_stream HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut seen = String::new();
    let mut read_until = async |what: &str| {
        while !seen.contains(what) {
            let mut chunk = [0u8; 4096];
            let read = tokio::time::timeout(support::PATIENCE, stream.read(&mut chunk)).await.unwrap().unwrap();
            assert!(read > 0, "the stream ended before {what}: {seen}");
            seen.push_str(&String::from_utf8_lossy(&chunk[..read]));
        }
        seen.clone()
    };
    let head = read_until("\"connect\"").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    tls_publish(server.addr, r#"{"channel": "room:tls", "data": {"over": "tls"}}"#).await;
    read_until(r#"{"channel":"room:tls","pub":{"data":{"over":"tls"}}}"#).await;
}
