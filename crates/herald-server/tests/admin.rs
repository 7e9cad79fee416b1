//! The admin UI's server side: served only when configured, a password
//! login with a protected session cookie, wrong passwords braked, the
//! server API behind the session, and a channel's live tail.
//! (The pages themselves are driven in a real browser by
//! `tests/compat/admin.test.mjs`.)

use crate::support;

use std::net::SocketAddr;

use crate::support::{TestServer, PATIENCE};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PASSWORD: &str = "admin-password-for-tests";

async fn with_admin() -> TestServer {
    TestServer::with(|config| config.admin.password = Some(herald_server::config::Secret::new(PASSWORD))).await
}

/// A POST from the admin page: JSON, the admin header, and the cookie if any.
async fn post(addr: SocketAddr, path: &str, cookie: Option<&str>, body: Value) -> (u16, String, Value) {
    let body = body.to_string();
    let cookie = cookie.map(|c| format!("Cookie: herald_admin={c}\r\n")).unwrap_or_default();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nX-Herald-Admin: 1\r\n{cookie}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, head, body) = support::exchange(addr, &request).await;
    (status, head, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// Logs in and returns the session token from the cookie.
async fn log_in(addr: SocketAddr) -> String {
    let (status, head, _) = post(addr, "/admin/login", None, json!({"password": PASSWORD})).await;
    assert_eq!(status, 204, "{head}");
    let cookie = head
        .lines()
        .find_map(|line| line.strip_prefix("set-cookie: "))
        .unwrap_or_else(|| panic!("a session cookie in {head}"));
    for protection in ["HttpOnly", "SameSite=Strict", "Path=/admin"] {
        assert!(cookie.contains(protection), "{protection} in {cookie}");
    }
    let token = cookie.strip_prefix("herald_admin=").and_then(|rest| rest.split(';').next()).unwrap();
    token.to_owned()
}

#[tokio::test]
async fn without_a_password_in_the_config_there_is_no_admin_ui() {
    let server = TestServer::start().await;
    for path in ["/admin", "/admin/admin.js", "/admin/session"] {
        let (status, _, _) = support::http_get(server.addr, path).await;
        assert_eq!(status, 404, "{path}");
    }
    let (status, _, _) = post(server.addr, "/admin/login", None, json!({"password": PASSWORD})).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_page_is_served_with_a_strict_content_security_policy() {
    let server = with_admin().await;
    let request = format!("GET /admin HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", server.addr);
    let (status, head, body) = support::exchange(server.addr, &request).await;
    assert_eq!(status, 200);
    assert!(body.contains("<title>Herald admin</title>"));
    assert!(head.contains("content-security-policy: default-src 'none'; script-src 'self'"), "{head}");
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
}

#[tokio::test]
async fn the_server_api_answers_a_logged_in_operator_and_no_one_else() {
    let server = with_admin().await;
    let mut alice = server.connected("alice").await;
    alice.subscribe("chat:lobby").await;

    let (status, _, refused) = post(server.addr, "/admin/api/info", None, json!({})).await;
    assert_eq!((status, refused["error"]["code"].clone()), (401, json!(101)), "no session: {refused}");
    let (status, _, _) = post(server.addr, "/admin/api/info", Some("not-a-session"), json!({})).await;
    assert_eq!(status, 401, "a made-up session");

    let session = log_in(server.addr).await;
    let (status, _, info) = post(server.addr, "/admin/api/info", Some(&session), json!({})).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["result"]["nodes"][0]["num_clients"], 1);

    let published = json!({"channel": "chat:lobby", "data": {"text": "from the admin"}});
    let (status, _, _) = post(server.addr, "/admin/api/publish", Some(&session), published).await;
    assert_eq!(status, 200);
    assert_eq!(alice.next_push().await["pub"]["data"]["text"], "from the admin");

    // A form on another site cannot add the header.
    let request = format!(
        "POST /admin/api/info HTTP/1.1\r\nHost: {}\r\nCookie: herald_admin={session}\r\nContent-Length: 2\r\n\
         Connection: close\r\n\r\n{{}}",
        server.addr
    );
    let (status, _, _) = support::exchange(server.addr, &request).await;
    assert_eq!(status, 403, "a POST without X-Herald-Admin");

    let (status, _, _) = post(server.addr, "/admin/logout", Some(&session), json!({})).await;
    assert_eq!(status, 204);
    let (status, _, _) = post(server.addr, "/admin/api/info", Some(&session), json!({})).await;
    assert_eq!(status, 401, "the session ended with the logout");
}

#[tokio::test]
async fn wrong_passwords_get_401_and_then_429_for_the_rest_of_the_window() {
    let server = with_admin().await;
    for _ in 0..5 {
        let (status, _, body) = post(server.addr, "/admin/login", None, json!({"password": "guess"})).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"]["message"], "wrong password");
    }
    let (status, head, body) = post(server.addr, "/admin/login", None, json!({"password": PASSWORD})).await;
    assert_eq!(status, 429, "braked, even with the right password: {body}");
    assert!(head.contains("retry-after: "), "{head}");
}

#[tokio::test]
async fn the_live_tail_streams_publications_without_joining_the_channel() {
    let server = with_admin().await;
    let session = log_in(server.addr).await;
    let mut bob = server.connected("bob").await;
    bob.subscribe("room:1").await;

    let mut tail = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "GET /admin/tail?channel=room:1 HTTP/1.1\r\nHost: {}\r\nCookie: herald_admin={session}\r\n\r\n",
        server.addr
    );
    tail.write_all(request.as_bytes()).await.unwrap();
    let mut seen = String::new();
    read_until(&mut tail, &mut seen, "text/event-stream").await;

    // The tail is open once the watch is: publish until it shows.
    let mut n = 0;
    while !seen.contains("event: publication") {
        n += 1;
        server.publish("room:1", json!({"n": n})).await;
        let _ = tokio::time::timeout(std::time::Duration::from_millis(200), read_some(&mut tail, &mut seen)).await;
        assert!(n < 50, "no publication on the tail: {seen}");
    }
    assert!(seen.contains(r#""data":{"n":"#), "{seen}");

    let (_, presence) = server.api("presence", json!({"channel": "room:1"})).await;
    let present: Vec<&String> = presence["result"]["presence"].as_object().unwrap().keys().collect();
    assert_eq!(present.len(), 1, "only bob is present; the operator is not: {presence}");
    let (_, channels) = server.api("channels", json!({})).await;
    assert_eq!(channels["result"]["channels"]["room:1"]["num_clients"], 1, "{channels}");

    // A log-out ends the tail: the next publication is not shown.
    let (status, _, _) = post(server.addr, "/admin/logout", Some(&session), json!({})).await;
    assert_eq!(status, 204);
    let before = seen.len();
    server.publish("room:1", json!({"after": "logout"})).await;
    read_until(&mut tail, &mut seen, "event: end").await;
    assert!(!seen[before..].contains("logout"), "nothing published after the log-out is shown: {seen}");
}

#[tokio::test]
async fn with_an_internal_port_the_ui_is_served_there_and_not_on_the_public_port() {
    let public = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let internal = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (public_addr, internal_addr) = (public.local_addr().unwrap(), internal.local_addr().unwrap());
    let mut config = support::test_config();
    config.admin.password = Some(herald_server::config::Secret::new(PASSWORD));
    let node = herald_server::Node::build(config).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(node.run_with_internal(public, Some(internal), async move {
        let _ = stopped.await;
    }));

    let (on_internal, _, _) = support::http_get(internal_addr, "/admin").await;
    let (on_public, _, _) = support::http_get(public_addr, "/admin").await;
    assert_eq!((on_internal, on_public), (200, 404));
    log_in(internal_addr).await;

    let _ = stop.send(());
    served.await.unwrap().unwrap();
}

async fn read_some(stream: &mut tokio::net::TcpStream, into: &mut String) {
    let mut buffer = [0u8; 4096];
    let read = stream.read(&mut buffer).await.unwrap();
    into.push_str(&String::from_utf8_lossy(&buffer[..read]));
}

async fn read_until(stream: &mut tokio::net::TcpStream, into: &mut String, wanted: &str) {
    tokio::time::timeout(PATIENCE, async {
        while !into.contains(wanted) {
            read_some(stream, into).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{wanted:?} in time: {into}"));
}

#[tokio::test]
async fn a_tail_of_a_channel_outside_every_namespace_is_refused_with_400() {
    let server = with_admin().await;
    let session = log_in(server.addr).await;
    let request = format!(
        "GET /admin/tail?channel=nope:x HTTP/1.1\r\nHost: {}\r\nCookie: herald_admin={session}\r\nConnection: close\r\n\r\n",
        server.addr
    );
    let (status, _, body) = support::exchange(server.addr, &request).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("unknown channel"), "{body}");
}
