//! Bad input of every kind gets the protocol's error or close code, and
//! nothing else is affected: after each case a bystander connection still
//! receives publications.

use crate::support::{http_post, http_post_raw, Client, TestServer, API_KEY};
use serde_json::json;

use herald_server::auth::unix_now;

/// A connected client subscribed to `news` that must stay unaffected.
async fn bystander(server: &TestServer) -> Client {
    let mut client = server.connected("bystander").await;
    client.subscribe("news").await;
    client
}

async fn assert_unaffected(server: &TestServer, bystander: &mut Client, n: u32) {
    server.publish("news", json!({"n": n})).await;
    assert_eq!(bystander.next_push().await["pub"]["data"]["n"], n, "the bystander still gets publications");
}

#[tokio::test]
async fn malformed_frames_close_the_sender_with_3501() {
    let server = TestServer::start().await;
    let mut watcher = bystander(&server).await;
    let cases = [
        "not json",
        "{\"id\":1,",
        "[1,2,3]",
        "{\"id\":\"x\",\"ping\":{}}",
        "{\"id\":1,\"subscribe\":{\"channel\":1}}",
        "{\"id\":1,\"ping\":{},\"rpc\":{}}",
        "{\"id\":0,\"subscribe\":{\"channel\":\"a\"}}",
        "{\"id\":2,\"connect\":{}}",
    ];
    for (n, case) in cases.into_iter().enumerate() {
        let mut client = server.connected("42").await;
        client.send_text(case).await;
        assert_eq!(client.closed().await.0, 3501, "{case}");
        assert_unaffected(&server, &mut watcher, n as u32).await;
    }
}

#[tokio::test]
async fn commands_before_connect_close_with_3501() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client.send(json!({"id": 1, "subscribe": {"channel": "news"}})).await;
    assert_eq!(client.closed().await.0, 3501);
}

#[tokio::test]
async fn binary_frames_on_the_json_protocol_close_with_3501() {
    let server = TestServer::start().await;
    let mut watcher = bystander(&server).await;
    let mut client = server.connected("42").await;
    client.send_binary(vec![0, 159, 146, 150]).await;
    assert_eq!(client.closed().await.0, 3501);
    assert_unaffected(&server, &mut watcher, 1).await;
}

#[tokio::test]
async fn oversized_messages_close_with_1009() {
    let server = TestServer::with(|c| c.client.max_message_size = 4096).await;
    let mut watcher = bystander(&server).await;
    let mut client = server.connected("42").await;
    let big = json!({"id": 9, "publish": {"channel": "chat:a", "data": "x".repeat(10_000)}});
    client.send(big).await;
    assert_eq!(client.closed().await.0, 1009);
    assert_unaffected(&server, &mut watcher, 1).await;
}

#[tokio::test]
async fn oversized_publications_are_refused_with_106() {
    let server = TestServer::with(|c| {
        let chat = c.channel.namespaces.get_mut("chat").unwrap();
        chat.max_message_size = 100;
    })
    .await;
    let mut client = server.connected("42").await;
    client.subscribe("chat:a").await;
    let id = client.id();
    let reply = client.command(json!({"id": id, "publish": {"channel": "chat:a", "data": "y".repeat(200)}})).await;
    assert_eq!(reply["error"]["code"], 106, "{reply}");
    let (status, body) = server.api("publish", json!({"channel": "chat:a", "data": "y".repeat(200)})).await;
    assert_eq!((status, &body["error"]["code"]), (413, &json!(106)), "{body}");
    client.assert_alive().await;
}

#[tokio::test]
async fn bad_connection_tokens_close_with_3500_and_expired_ones_get_109() {
    let server = TestServer::start().await;
    let mut watcher = bystander(&server).await;
    let header = |alg: &str| base64url(format!("{{\"alg\":\"{alg}\",\"typ\":\"JWT\"}}").as_bytes());
    let body = base64url(b"{\"sub\":\"42\"}");
    let rsa_key = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt-rsa.key.pem")).unwrap();
    let rs256 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &json!({"sub": "42"}),
        &jsonwebtoken::EncodingKey::from_rsa_pem(&rsa_key).unwrap(),
    )
    .unwrap();
    let wrong_secret = herald_server::auth::TokenMinter::hmac("not-the-secret").sign(&json!({"sub": "42"}));
    let cases = [
        ("garbage", "not-a-jwt".to_owned()),
        ("alg none", format!("{}.{body}.", header("none"))),
        ("alg none, uppercase", format!("{}.{body}.", header("NONE"))),
        ("RS256 with no RSA key configured", rs256),
        ("wrong secret", wrong_secret),
        ("tampered payload", {
            let good = server.token("42");
            let parts: Vec<&str> = good.split('.').collect();
            format!("{}.{}.{}", parts[0], base64url(b"{\"sub\":\"1\"}"), parts[2])
        }),
    ];
    for (n, (name, token)) in cases.into_iter().enumerate() {
        let mut client = server.client().await;
        client.send(json!({"id": 1, "connect": {"token": token}})).await;
        assert_eq!(client.closed().await.0, 3500, "{name}");
        assert_unaffected(&server, &mut watcher, n as u32).await;
    }

    let mut client = server.client().await;
    let expired = server.token_with("42", json!({"exp": unix_now() - 60}));
    let reply = client.command(json!({"id": 1, "connect": {"token": expired}})).await;
    assert_eq!(reply["error"]["code"], 109);
}

#[tokio::test]
async fn api_calls_without_or_with_a_wrong_key_get_401() {
    let server = TestServer::start().await;
    let mut watcher = bystander(&server).await;
    let body = r#"{"channel":"news","data":{"n":99}}"#;
    let cases: [&[(&str, &str)]; 4] = [
        &[],
        &[("X-API-Key", "wrong")],
        &[("Authorization", "apikey wrong")],
        &[("Authorization", "Bearer integration-test-api-key")],
    ];
    for headers in cases {
        let (status, reply) = http_post(server.addr, "/api/publish", headers, body).await;
        assert_eq!((status, &reply["error"]["code"]), (401, &json!(101)), "{headers:?}");
    }
    let (status, _) = http_post(
        server.addr,
        "/api/publish",
        &[("Authorization", &format!("apikey {API_KEY}"))],
        r#"{"channel":"news","data":{"n":1}}"#,
    )
    .await;
    assert_eq!(status, 200, "the apikey authorization scheme works");
    assert_eq!(watcher.next_push().await["pub"]["data"]["n"], 1, "only the authorized publish got through");
}

#[tokio::test]
async fn undecodable_api_calls_get_400_refused_ones_their_code_and_unknown_methods_404() {
    let server = TestServer::start().await;
    let key = [("X-API-Key", API_KEY)];
    // As Centrifugo: 400 only for a body that is not JSON; parameters it
    // refuses answer 200 with the code, where the server SDKs read it.
    let cases = [
        ("/api/publish", "not json", 400, 107),
        ("/api/publish", r#"{"channel":"news""#, 400, 107),
        ("/api/publish", r#"{"channel":"news"}"#, 200, 107),
        ("/api/publish", r#"{"channel":"","data":1}"#, 200, 107),
        ("/api/publish", r#"{"channel":"nope:x","data":1}"#, 200, 102),
        ("/api/teleport", "{}", 404, 104),
        ("/api/disconnect", r#"{"user":"1","disconnect":{"code":1000}}"#, 200, 107),
        ("/api/batch", r#"{"commands":[{"batch":{"commands":[]}}]}"#, 200, 0),
    ];
    for (path, body, status, code) in cases {
        let (got_status, reply) = http_post(server.addr, path, &key, body).await;
        assert_eq!(got_status, status, "{path} {body}: {reply}");
        if code > 0 {
            assert_eq!(reply["error"]["code"], code, "{path} {body}: {reply}");
        } else {
            assert_eq!(reply["replies"][0]["error"]["code"], 107, "nested batch refused: {reply}");
        }
    }
}

fn base64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// JSON nested deeper than serde's recursion limit is still valid JSON, and
/// is accepted as a payload or as token info: reading it back through the
/// server API must not fail (it once panicked, re-parsing its own reply).
#[tokio::test]
async fn deeply_nested_payloads_and_infos_read_back_through_the_api() {
    let server = TestServer::start().await;
    let mut watcher = bystander(&server).await;
    let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));

    let deep = nested(300);
    let publish = format!(r#"{{"channel":"feed:deep","data":{deep}}}"#);
    let (status, body) = http_post_raw(server.addr, "/api/publish", &[("X-API-Key", API_KEY)], &publish).await;
    assert_eq!(status, 200, "the payload is valid JSON: {body}");
    let history = r#"{"channel":"feed:deep","limit":-1}"#;
    let (status, body) = http_post_raw(server.addr, "/api/history", &[("X-API-Key", API_KEY)], history).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&format!(r#""data":{deep}"#)), "the payload reads back as it was published");

    let info: serde_json::Value = serde_json::from_str(&nested(126)).unwrap();
    let token = server.token_with("ann", json!({ "info": info }));
    let mut ann = server.client().await;
    let reply = ann.command(json!({"id": 1, "connect": {"token": token}})).await;
    assert!(reply["connect"]["client"].is_string(), "{reply}");
    ann.subscribe("room:deep").await;
    let (status, body) =
        http_post_raw(server.addr, "/api/presence", &[("X-API-Key", API_KEY)], r#"{"channel":"room:deep"}"#).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&format!(r#""conn_info":{}"#, nested(126))), "{body}");
    assert_unaffected(&server, &mut watcher, 1).await;
}

#[tokio::test]
async fn a_command_with_a_top_level_field_this_server_does_not_know_is_answered() {
    let server = TestServer::start().await;
    let mut client = server.connected("42").await;
    let reply = client.command(json!({"id": 5, "ping": {}, "trace": {"id": "abc"}})).await;
    assert_eq!(reply, json!({"id": 5, "ping": {}}), "the field is ignored, the connection stays");
    let reply = client.command(json!({"id": 6, "teleport": {}})).await;
    assert_eq!(reply["error"]["code"], 104, "a command with no known method is an unknown method");
    client.assert_alive().await;
}

/// Length-delimited Protobuf commands, as centrifuge-js's Protobuf build
/// frames them: `connect` with `token` (command id 1).
fn protobuf_connect(token: &str) -> Vec<u8> {
    let token = token.as_bytes();
    let mut request = vec![0x0a, token.len() as u8];
    if token.len() >= 0x80 {
        request = vec![0x0a, (token.len() as u8 & 0x7f) | 0x80, (token.len() >> 7) as u8];
    }
    request.extend_from_slice(token);
    let mut command = vec![0x08, 0x01, 0x22];
    command.extend(varint(request.len()));
    command.extend(request);
    let mut frame = varint(command.len());
    frame.extend(command);
    frame
}

fn varint(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out
}

#[tokio::test]
async fn garbage_protobuf_truncated_varints_text_and_oversized_frames_close_a_protobuf_client() {
    let server = TestServer::start().await;
    let mut watcher = bystander(&server).await;
    let protocol = [("Sec-WebSocket-Protocol", "centrifuge-protobuf")];
    let cases: [(&str, Vec<u8>, u16); 4] = [
        ("garbage", b"\xff\xfe\xfd not protobuf".to_vec(), 3501),
        ("a truncated varint", vec![0x80, 0x80], 3501),
        ("a length past the end", vec![0x7f, 0x08], 3501),
        ("oversized", vec![0u8; 70_000], 1009),
    ];
    for (n, (what, frame, code)) in cases.into_iter().enumerate() {
        let mut client = server.client_with_headers(&protocol).await;
        client.send_binary(protobuf_connect(&server.token("pb"))).await;
        assert!(!client.next_binary().await.is_empty(), "{what}: the connect reply first");
        client.send_binary(frame).await;
        assert_eq!(client.closed().await.0, code, "{what}");
        assert_unaffected(&server, &mut watcher, n as u32).await;
    }
    let mut text = server.client_with_headers(&protocol).await;
    text.send_text("{\"id\":1,\"connect\":{}}").await;
    assert_eq!(text.closed().await.0, 3501, "JSON text on a Protobuf connection");
}
