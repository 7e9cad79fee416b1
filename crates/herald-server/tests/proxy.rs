//! Client events proxied to the application's backend: a real HTTP server
//! started by each test plays the backend (written as a Centrifugo proxy
//! backend would be), and real WebSocket clients speak to a node.

use crate::support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::TestServer;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use herald_server::config::{Config, ProxyConfig, Secret};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// How the backend behaves.
const ANSWERS: u8 = 0;
const SLOW: u8 = 1;
const GARBAGE: u8 = 2;
/// Acts on the call, then dies before answering: its connection drops.
const DIES: u8 = 3;

/// What the backend saw of one call: the event, its body, its headers.
type Seen = (String, Value, HeaderMap);

#[derive(Clone, Default)]
struct Backend {
    mode: Arc<AtomicU8>,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Holds the answer to the sub_refresh of `chat:short-held` until
    /// the test lets it go.
    held: Arc<tokio::sync::Notify>,
}

/// The backend's answer to each event, as an application would write it.
async fn answer(
    State(backend): State<Backend>,
    Path(event): Path<String>,
    headers: HeaderMap,
    body: Json<Value>,
) -> String {
    let Json(body) = body;
    backend.seen.lock().unwrap().push((event.clone(), body.clone(), headers.clone()));
    match backend.mode.load(Ordering::Relaxed) {
        SLOW => tokio::time::sleep(Duration::from_secs(3)).await,
        GARBAGE => return "<html>oops</html>".to_owned(),
        DIES => panic!("the backend dies after acting on a call (as this test means it to)"),
        _ => {}
    }
    let cookie = headers.get("cookie").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let reply = match event.as_str() {
        "connect" => match cookie.strip_prefix("session=") {
            Some(user) => json!({"result": {
                "user": user,
                "info": {"name": user.to_uppercase()},
                "data": {"welcome": user},
                "expire_at": body["data"]["expire_in"].as_i64().map_or(0, |s| unix_now() + s),
                "channels": ["personal:".to_owned() + user],
                "meta": {"tenant": format!("t-{user}")},
            }}),
            None => json!({"disconnect": {"code": 4501, "reason": "no session"}}),
        },
        "refresh" => json!({"result": {
            "expire_at": unix_now() + 2,
            "info": {"name": "ADA, refreshed"},
            "meta": {"tenant": "t-refreshed"},
        }}),
        "subscribe" if body["channel"] == "chat:secret" => json!({"error": {"code": 1403, "message": "not for you"}}),
        "subscribe" if body["channel"].as_str().is_some_and(|c| c.starts_with("chat:short")) => {
            json!({"result": {"expire_at": unix_now() + 1}})
        }
        "sub_refresh" if body["channel"] == "chat:short-ending" => json!({"result": {"expired": true}}),
        "sub_refresh" if body["channel"] == "chat:short-held" => {
            backend.held.notified().await;
            json!({"result": {"expired": true}})
        }
        "sub_refresh" => json!({"result": {"expire_at": unix_now() + 1}}),
        "subscribe" => json!({"result": {"info": {"role": "member"}, "data": {"motd": "be nice"}}}),
        "publish" => match body["data"]["text"].as_str() {
            Some(text) if text.contains("darn") => {
                json!({"result": {"data": {"text": text.replace("darn", "****"), "moderated": true}}})
            }
            _ => json!({"result": {}}),
        },
        "rpc" => match body["method"].as_str() {
            Some("add") => {
                json!({"result": {"data": {"sum": body["data"]["a"].as_i64().unwrap_or(0) + body["data"]["b"].as_i64().unwrap_or(0)}}})
            }
            _ => json!({"error": {"code": 1404, "message": "no such method"}}),
        },
        "send" => json!({"result": {}}),
        _ => json!({"error": {"code": 1000, "message": "unknown event"}}),
    };
    // Pretty-printed, as some frameworks answer: Herald must not pass the
    // line breaks on into its one-line frames.
    serde_json::to_string_pretty(&reply).unwrap()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// The backend, served on `addr` until killed: every connection is its
/// own task, so a kill ends them all, as a crashed process would.
struct Running {
    tasks: JoinSet<()>,
}

impl Backend {
    async fn serve(&self, addr: SocketAddr) -> Running {
        let listener = TcpListener::bind(addr).await.expect("bind the backend");
        let router = Router::new().route("/centrifugo/{event}", post(answer)).with_state(self.clone());
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let router = router.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let mut router = router.clone();
                        async move { tower_service::Service::call(&mut router, request).await }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
            }
        });
        Running { tasks }
    }

    fn events(&self, event: &str) -> Vec<(Value, HeaderMap)> {
        let seen = self.seen.lock().unwrap();
        seen.iter().filter(|(e, _, _)| e == event).map(|(_, body, headers)| (body.clone(), headers.clone())).collect()
    }
}

impl Running {
    async fn kill(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// A node whose every event goes to the backend at `backend`.
fn proxied(config: &mut Config, backend: SocketAddr, timeout: Duration) {
    let proxy = ProxyConfig {
        endpoint: format!("http://{backend}/centrifugo/EVENT"),
        timeout,
        http_headers: vec!["Cookie".into(), "Origin".into()],
        static_headers: [("X-Backend-Secret".to_owned(), Secret::new("s3cret"))].into(),
        include_connection_meta: true,
    };
    for event in ["connect", "refresh", "subscribe", "sub_refresh", "publish", "rpc", "send"] {
        let mut proxy = proxy.clone();
        proxy.endpoint = proxy.endpoint.replace("EVENT", event);
        // One backend that does not ask for the connection's meta.
        proxy.include_connection_meta = event != "publish";
        config.proxies.insert(event.to_owned(), proxy);
    }
    config.client.connect_proxy = Some("connect".into());
    config.client.refresh_proxy = Some("refresh".into());
    config.client.rpc_proxy = Some("rpc".into());
    config.client.send_proxy = Some("send".into());
    let chat = config.channel.namespaces.get_mut("chat").unwrap();
    chat.subscribe_proxy = Some("subscribe".into());
    chat.publish_proxy = Some("publish".into());
    chat.sub_refresh_proxy = Some("sub_refresh".into());
    config.channel.namespaces.insert("personal".into(), herald_core::NamespaceOptions::default());
}

async fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap()
}

struct Setup {
    server: TestServer,
    backend: Backend,
    running: Option<Running>,
    backend_addr: SocketAddr,
}

async fn setup(timeout: Duration) -> Setup {
    let backend = Backend::default();
    let backend_addr = free_addr().await;
    let running = Some(backend.serve(backend_addr).await);
    let server = TestServer::with(|config| proxied(config, backend_addr, timeout)).await;
    Setup { server, backend, running, backend_addr }
}

/// A client whose browser holds the session cookie of `user`, connected
/// without a token.
async fn connect_as(setup: &Setup, user: &str, data: Value) -> (support::Client, Value) {
    let cookie = format!("session={user}");
    let mut client = setup.server.client_with_headers(&[("Cookie", &cookie), ("Origin", "http://localhost")]).await;
    let reply = client.command(json!({"id": 1, "connect": {"name": "test", "data": data}})).await;
    (client, reply)
}

#[tokio::test]
async fn a_client_without_a_token_is_authenticated_by_the_backend_from_its_cookie() {
    let setup = setup(Duration::from_secs(2)).await;
    let (mut client, reply) = connect_as(&setup, "ada", json!({})).await;

    assert_eq!(reply["connect"]["data"], json!({"welcome": "ada"}), "{reply}");
    assert!(reply["connect"]["subs"]["personal:ada"].is_object(), "server-side channels from the result: {reply}");
    let (body, headers) = setup.backend.events("connect").pop().unwrap();
    assert_eq!(body["transport"], "websocket");
    assert_eq!(body["protocol"], "json");
    assert_eq!(body["name"], "test");
    assert_eq!(body["client"], reply["connect"]["client"]);
    assert_eq!(headers["cookie"], "session=ada", "the allow-listed cookie is passed on");
    assert_eq!(headers["x-backend-secret"], "s3cret", "static headers are added");
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1", "the client's address is forwarded");

    // The backend's user is the connection's.
    client.subscribe("chat:lobby").await;
    let (_, info) = setup.server.api("info", json!({})).await;
    assert_eq!(info["result"]["nodes"][0]["num_users"], 1);
}

#[tokio::test]
async fn the_backends_disconnect_closes_the_connection_with_its_code() {
    let setup = setup(Duration::from_secs(2)).await;
    let mut client = setup.server.client().await;
    client.send(json!({"id": 1, "connect": {}})).await;
    assert_eq!(client.closed().await, (4501, "no session".to_owned()));
}

#[tokio::test]
async fn a_refused_subscription_gets_the_backends_code_and_an_accepted_one_its_data() {
    let setup = setup(Duration::from_secs(2)).await;
    let (mut client, _) = connect_as(&setup, "ada", json!({})).await;

    let refused = client.command(json!({"id": 2, "subscribe": {"channel": "chat:secret"}})).await;
    assert_eq!(refused["error"], json!({"code": 1403, "message": "not for you"}));
    let accepted = client.command(json!({"id": 3, "subscribe": {"channel": "chat:lobby", "data": {"hello": 1}}})).await;
    assert_eq!(accepted["subscribe"]["data"], json!({"motd": "be nice"}), "{accepted}");
    let (body, _) = setup.backend.events("subscribe").pop().unwrap();
    assert_eq!((body["user"].as_str(), body["data"].clone()), (Some("ada"), json!({"hello": 1})));
}

#[tokio::test]
async fn a_publication_rewritten_by_the_backend_is_what_every_subscriber_sees() {
    let setup = setup(Duration::from_secs(2)).await;
    let (mut ada, _) = connect_as(&setup, "ada", json!({})).await;
    let (mut bob, _) = connect_as(&setup, "bob", json!({})).await;
    ada.subscribe("chat:lobby").await;
    bob.subscribe("chat:lobby").await;

    let published =
        ada.command(json!({"id": 5, "publish": {"channel": "chat:lobby", "data": {"text": "darn it"}}})).await;
    assert!(published.get("error").is_none(), "{published}");
    for client in [&mut ada, &mut bob] {
        let push = client.next_push().await;
        assert_eq!(push["pub"]["data"], json!({"text": "**** it", "moderated": true}));
        assert_eq!(push["pub"]["info"]["user"], "ada");
        assert_eq!(push["pub"]["info"]["chan_info"], json!({"role": "member"}), "chan info from the subscribe result");
    }
}

#[tokio::test]
async fn an_rpc_is_answered_by_the_backend_and_a_send_reaches_it() {
    let setup = setup(Duration::from_secs(2)).await;
    let (mut client, _) = connect_as(&setup, "ada", json!({})).await;

    let sum = client.command(json!({"id": 7, "rpc": {"method": "add", "data": {"a": 2, "b": 3}}})).await;
    assert_eq!(sum, json!({"id": 7, "rpc": {"data": {"sum": 5}}}));
    let unknown = client.command(json!({"id": 8, "rpc": {"method": "nope"}})).await;
    assert_eq!(unknown["error"]["code"], 1404);

    client.send(json!({"send": {"data": {"typing": true}}})).await;
    support::eventually("the backend got the send", || !setup.backend.events("send").is_empty()).await;
    let (body, _) = setup.backend.events("send").pop().unwrap();
    assert_eq!((body["user"].as_str(), body["data"].clone()), (Some("ada"), json!({"typing": true})));
}

#[tokio::test]
async fn a_connections_meta_goes_to_the_backends_that_ask_for_it_and_never_to_a_client() {
    let setup = setup(Duration::from_secs(2)).await;
    let (mut client, reply) = connect_as(&setup, "ada", json!({"expire_in": 1})).await;
    assert!(!reply.to_string().contains("t-ada"), "{reply}");
    client.command(json!({"id": 2, "subscribe": {"channel": "chat:room"}})).await;
    let reply = client.command(json!({"id": 3, "publish": {"channel": "chat:room", "data": {"text": "hi"}}})).await;
    assert!(reply.get("error").is_none(), "{reply}");
    let own = client.next_push().await;
    assert!(!own.to_string().contains("t-ada"), "nor to its subscribers: {own}");
    support::eventually("a refresh", || !setup.backend.events("refresh").is_empty()).await;
    client.command(json!({"id": 4, "rpc": {"method": "add", "data": {"a": 1, "b": 2}}})).await;

    // In the order the backend was called: none at the connect, nor for the
    // publish proxy, which does not ask for it; the connect proxy's until
    // the refresh proxy's answer replaced it.
    let calls: Vec<(String, Value)> = setup
        .backend
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|(event, body, _)| (event.clone(), body["meta"].clone()))
        .collect();
    let refreshed = calls.iter().position(|(event, _)| event == "refresh").expect("a refresh");
    for (at, (event, meta)) in calls.iter().enumerate() {
        let expected = match event.as_str() {
            "connect" | "publish" => Value::Null,
            _ if at <= refreshed => json!({"tenant": "t-ada"}),
            _ => json!({"tenant": "t-refreshed"}),
        };
        assert_eq!(meta, &expected, "{event} (call {at} of {calls:?})");
    }
    for event in ["subscribe", "publish", "rpc"] {
        assert!(calls.iter().any(|(called, _)| called == event), "no {event} in {calls:?}");
    }

    // A connection token's meta, and a refresh token's in its place.
    let token = |tenant: &str| setup.server.token_with("bob", json!({"meta": {"tenant": tenant}}));
    let mut bob = setup.server.client().await;
    bob.command(json!({"id": 1, "connect": {"token": token("t-bob")}})).await;
    bob.command(json!({"id": 2, "subscribe": {"channel": "chat:bob"}})).await;
    let asked = setup.backend.events("subscribe").into_iter().find(|(body, _)| body["channel"] == "chat:bob");
    assert_eq!(asked.map(|(body, _)| body["meta"].clone()), Some(json!({"tenant": "t-bob"})));
    let refreshed = bob.command(json!({"id": 3, "refresh": {"token": token("t-bob-2")}})).await;
    assert!(refreshed.get("error").is_none(), "{refreshed}");
    bob.command(json!({"id": 4, "rpc": {"method": "add", "data": {"a": 1, "b": 2}}})).await;
    let rpc = setup.backend.events("rpc").pop().map(|(body, _)| (body["user"].clone(), body["meta"].clone()));
    assert_eq!(rpc, Some((json!("bob"), json!({"tenant": "t-bob-2"}))));
}

#[tokio::test]
async fn the_refresh_proxy_extends_a_session_the_connect_proxy_made_expiring() {
    let setup = setup(Duration::from_secs(2)).await;
    let (mut client, reply) = connect_as(&setup, "ada", json!({"expire_in": 1})).await;
    assert!(reply["connect"].get("expires").is_none(), "the node refreshes it, not the client: {reply}");

    // Expiring every second or two, it is refreshed again and again and stays open.
    support::eventually_async("two refreshes", || {
        let backend = setup.backend.clone();
        async move { backend.events("refresh").len() >= 2 }
    })
    .await;
    client.assert_alive().await;
    let (body, _) = setup.backend.events("refresh").pop().unwrap();
    assert_eq!(body["user"], "ada");

    // The refresh's info replaced the connect's: her publications carry it.
    client.subscribe("chat:lobby").await;
    let reply = client.command(json!({"id": 7, "publish": {"channel": "chat:lobby", "data": {"text": "hi"}}})).await;
    assert!(reply.get("error").is_none(), "{reply}");
    let own = client.next_push().await;
    assert_eq!(own["pub"]["info"]["conn_info"], json!({"name": "ADA, refreshed"}), "{own}");
}

#[tokio::test]
async fn a_backend_that_is_down_slow_or_garbled_gives_temporary_errors_and_nothing_is_accepted() {
    let mut setup = setup(Duration::from_millis(300)).await;
    let (mut client, _) = connect_as(&setup, "ada", json!({})).await;
    client.subscribe("chat:lobby").await;
    async fn publish(client: &mut support::Client, id: u32) -> Value {
        client.command(json!({"id": id, "publish": {"channel": "chat:lobby", "data": {"text": "hi"}}})).await
    }
    let temporary = json!({"code": 100, "message": "internal server error", "temporary": true});

    setup.backend.mode.store(SLOW, Ordering::Relaxed);
    assert_eq!(publish(&mut client, 11).await["error"], temporary, "slower than the proxy's timeout");
    setup.backend.mode.store(GARBAGE, Ordering::Relaxed);
    assert_eq!(publish(&mut client, 12).await["error"], temporary, "an answer that is not a proxy reply");
    setup.backend.mode.store(ANSWERS, Ordering::Relaxed);

    setup.running.take().unwrap().kill().await;
    assert_eq!(publish(&mut client, 13).await["error"], temporary, "the backend is down");
    let mut newcomer = setup.server.client_with_headers(&[("Cookie", "session=bob")]).await;
    let refused = newcomer.command(json!({"id": 1, "connect": {}})).await;
    assert_eq!(refused["error"], temporary, "a connect while the backend is down: the client retries");

    // Nothing of the refused publications went out.
    setup.server.publish("chat:lobby", json!({"from": "api"})).await;
    assert_eq!(client.next_push().await["pub"]["data"], json!({"from": "api"}));

    // Back up: everything works again, on new connections to it.
    setup.running = Some(setup.backend.serve(setup.backend_addr).await);
    assert!(publish(&mut client, 14).await.get("error").is_none());
    assert!(newcomer.command(json!({"id": 2, "connect": {}})).await["connect"]["client"].is_string());
}

#[tokio::test]
async fn a_call_the_backend_may_have_acted_on_is_made_again_only_if_it_asks_for_an_answer() {
    let setup = setup(Duration::from_secs(2)).await;
    let (mut client, _) = connect_as(&setup, "cy", json!({})).await;
    client.subscribe("chat:first").await;
    let publish = json!({"id": 5, "publish": {"channel": "chat:first", "data": {"text": "one"}}});
    assert!(client.command(publish).await.get("error").is_none(), "each proxy's connection is open and kept");

    // The backend acts on the next call of each, and its connection drops unanswered.
    setup.backend.mode.store(DIES, Ordering::Relaxed);
    let publish = json!({"id": 6, "publish": {"channel": "chat:first", "data": {"text": "two"}}});
    assert_eq!(client.command(publish).await["error"]["temporary"], true);
    assert_eq!(
        setup.backend.events("publish").len(),
        2,
        "a publication the backend may have acted on is not made again"
    );
    let subscribe = json!({"id": 7, "subscribe": {"channel": "chat:second"}});
    assert_eq!(client.command(subscribe).await["error"]["temporary"], true);
    let asked: Vec<Value> =
        setup.backend.events("subscribe").into_iter().map(|(body, _)| body["channel"].clone()).collect();
    assert_eq!(asked, ["chat:first", "chat:second", "chat:second"], "a subscribe asks again, on a new connection");
}

#[tokio::test]
async fn the_sub_refresh_proxy_extends_subscriptions_or_ends_them_when_the_backend_says_so() {
    let setup = setup(Duration::from_secs(2)).await;
    let (mut client, _) = connect_as(&setup, "ada", json!({})).await;
    let kept = client.command(json!({"id": 2, "subscribe": {"channel": "chat:short"}})).await;
    assert!(kept["subscribe"].get("expires").is_none(), "the node refreshes it, not the client: {kept}");
    client.command(json!({"id": 3, "subscribe": {"channel": "chat:short-ending"}})).await;

    // The backend ends one at its first refresh: unsubscribed with 2501.
    let push = client.next_push().await;
    assert_eq!(push["channel"], "chat:short-ending", "{push}");
    assert_eq!(push["unsubscribe"]["code"], 2501, "{push}");

    // The other is refreshed again and again, and still delivers.
    support::eventually_async("two refreshes of chat:short", || {
        let backend = setup.backend.clone();
        async move { backend.events("sub_refresh").iter().filter(|(b, _)| b["channel"] == "chat:short").count() >= 2 }
    })
    .await;
    setup.server.publish("chat:short", json!({"still": "here"})).await;
    assert_eq!(client.next_push().await["pub"]["data"], json!({"still": "here"}));
}

#[tokio::test]
async fn a_subscription_the_server_made_while_the_backend_was_asked_outlives_the_backends_answer() {
    let setup = setup(Duration::from_secs(10)).await;
    let (mut client, _) = connect_as(&setup, "ada", json!({})).await;
    let subscribed = client.command(json!({"id": 2, "subscribe": {"channel": "chat:short-held"}})).await;
    assert!(subscribed.get("subscribe").is_some(), "{subscribed}");
    let subscribers = || async {
        let (_, reply) = setup.server.api("channels", json!({})).await;
        reply["result"]["channels"]["chat:short-held"]["num_clients"].as_u64().unwrap_or(0)
    };

    // At its expiry the backend is asked to extend it, and takes its time.
    support::eventually_async("the backend asked to extend chat:short-held", || {
        let backend = setup.backend.clone();
        async move { backend.events("sub_refresh").iter().any(|(body, _)| body["channel"] == "chat:short-held") }
    })
    .await;
    // Meanwhile the server unsubscribes the connection and subscribes it
    // again, this time for good.
    setup.server.api("unsubscribe", json!({"user": "ada", "channel": "chat:short-held"})).await;
    support::eventually_async("the subscription ended", || async { subscribers().await == 0 }).await;
    setup.server.api("subscribe", json!({"user": "ada", "channel": "chat:short-held"})).await;
    support::eventually_async("the new subscription made", || async { subscribers().await == 1 }).await;

    // The backend's answer ends the subscription it was asked about, which
    // is gone: the new one stays, and delivers.
    setup.backend.held.notify_one();
    let ended = client.next_push().await;
    assert_eq!(
        (&ended["channel"], &ended["unsubscribe"]["code"]),
        (&json!("chat:short-held"), &json!(2000)),
        "{ended}"
    );
    let subscribed = client.next_push().await;
    assert_eq!(subscribed["channel"], "chat:short-held", "{subscribed}");
    assert!(subscribed.get("subscribe").is_some(), "{subscribed}");
    setup.server.publish("chat:short-held", json!({"still": "here"})).await;
    assert_eq!(client.next_push().await["pub"]["data"], json!({"still": "here"}));
    assert_eq!(subscribers().await, 1, "the node still holds the subscription the client was told of");
}

#[test]
fn headers_that_frame_the_request_cannot_be_passed_on() {
    let mut config = support::test_config();
    let proxy = ProxyConfig {
        endpoint: "http://127.0.0.1:9/x".into(),
        http_headers: vec!["Cookie".into(), "Content-Length".into(), "Transfer-Encoding".into()],
        ..ProxyConfig::default()
    };
    config.proxies.insert("p".into(), proxy);
    config.client.connect_proxy = Some("p".into());
    config.channel.namespaces.get_mut("chat").unwrap().publish_proxy = Some("nope".into());
    let problems = config.validate().join("\n");
    assert!(problems.contains("\"Content-Length\" belongs to the request"), "{problems}");
    assert!(problems.contains("\"Transfer-Encoding\" belongs to the request"), "{problems}");
    assert!(!problems.contains("\"Cookie\""), "{problems}");
    assert!(problems.contains("channel.namespaces.chat.publish_proxy: no [proxies.nope]"), "{problems}");
}
