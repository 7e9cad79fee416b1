//! The hub's events webhooks, received by a real HTTP server started by
//! the test: connections of both protocols opened and closed, a channel
//! occupied and vacated, a user joining and leaving a presence channel,
//! each signed with the target's secret.

use crate::support;

use std::sync::{Arc, Mutex};

use crate::support::TestServer;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::Router;
use futures_util::StreamExt;
use herald_server::config::{HubWebhookConfig, PusherApp, Secret};
use serde_json::{json, Value};

const SECRET: &str = "events-webhook-secret";

#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<Value>>>);

impl Received {
    fn events(&self) -> Vec<Value> {
        self.0.lock().unwrap().clone()
    }

    fn named(&self, name: &str) -> Vec<Value> {
        self.events().into_iter().filter(|e| e["name"] == name).collect()
    }
}

/// Checks the signature, then keeps the events.
async fn receive(State(received): State<Received>, headers: HeaderMap, body: Bytes) -> &'static str {
    let signature = headers.get("x-herald-signature").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert_eq!(signature, herald_server::pusher::sign::hmac_hex(SECRET, &body), "the body is signed with the secret");
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert!(body["time_ms"].as_u64().is_some());
    received.0.lock().unwrap().extend(body["events"].as_array().unwrap().iter().cloned());
    "ok"
}

async fn receiver() -> (String, Received) {
    let received = Received::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/herald/events", listener.local_addr().unwrap());
    let router = Router::new().route("/herald/events", post(receive)).with_state(received.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, received)
}

#[tokio::test]
async fn connections_occupancy_and_presence_are_reported_once_each_and_signed() {
    let (url, received) = receiver().await;
    let server = TestServer::with(|config| {
        config.webhooks.push(HubWebhookConfig { url, secret: Secret::new(SECRET), events: vec![], batch: true });
        config.pusher.apps.push(PusherApp {
            id: "1".into(),
            key: "key".into(),
            secret: Secret::new("pusher-secret"),
            ..PusherApp::default()
        });
    })
    .await;

    let mut ada = server.connected("ada").await;
    ada.subscribe("room:1").await;
    support::eventually("ada's arrival is reported", || received.named("user_joined").len() == 1).await;
    let joined = &received.named("user_joined")[0];
    assert_eq!((joined["channel"].as_str(), joined["user"].as_str()), (Some("room:1"), Some("ada")));
    assert_eq!(received.named("channel_occupied"), vec![json!({"name": "channel_occupied", "channel": "room:1"})]);
    let connected = &received.named("connected")[0];
    assert_eq!((connected["user"].as_str(), connected["protocol"].as_str()), (Some("ada"), Some("centrifuge")));

    // A Pusher client is reported too.
    let url = format!("ws://{}/app/key?protocol=7&client=js&version=8.4.0", server.addr);
    let (mut pusher, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let _established = pusher.next().await;
    support::eventually("the Pusher connection is reported", || {
        received.named("connected").iter().any(|e| e["protocol"] == "pusher")
    })
    .await;
    drop(pusher);

    // The server closes ada's connection: left, vacated, disconnected with its code.
    let (status, _) = server.api("disconnect", json!({"user": "ada"})).await;
    assert_eq!(status, 200);
    support::eventually("ada's departure is reported", || {
        received.named("disconnected").iter().any(|e| e["user"] == "ada")
            && received.named("user_left").len() == 1
            && received.named("channel_vacated").len() == 1
    })
    .await;
    let disconnected = received.named("disconnected").into_iter().find(|e| e["user"] == "ada").unwrap();
    assert_eq!(
        (disconnected["code"].as_u64(), disconnected["reason"].as_str()),
        (Some(3503), Some("force disconnect"))
    );
    assert_eq!(received.named("user_joined").len(), 1, "each transition once");
}

#[tokio::test]
async fn a_bad_webhook_target_is_a_config_problem() {
    let mut config = support::test_config();
    config.webhooks.push(HubWebhookConfig {
        url: "ftp://nope".into(),
        secret: Secret::new("short"),
        events: vec!["joined".into()],
        batch: false,
    });
    let problems = config.validate().join("\n");
    assert!(problems.contains("webhooks[0].url"), "{problems}");
    assert!(problems.contains("webhooks[0].secret"), "{problems}");
    assert!(problems.contains("\"joined\" is not one of"), "{problems}");
}
