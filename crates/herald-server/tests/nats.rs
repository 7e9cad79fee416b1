//! Several nodes on NATS: publications, presence, control and recovery
//! across nodes on a single `nats-server` with JetStream, on the mixed
//! engine (NATS with presence on Redis), and on a three-server NATS
//! cluster with replicated streams that loses a server under load.

use crate::support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::support::follower::Follower;
use crate::support::scenarios::{self, subscribed};
use crate::support::{Client, TestServer};
use serde_json::{json, Value};

use herald_nats::testing::{NatsCluster, NatsServer};
use herald_redis::testing::RedisServer;
use herald_server::config::{Config, EngineConfig, NatsEngineConfig};

fn fresh_prefix() -> String {
    static CLUSTER: AtomicU32 = AtomicU32::new(0);
    format!("nats{}-{}", std::process::id(), CLUSTER.fetch_add(1, Ordering::Relaxed))
}

/// Room for a follower to recover everything it could miss in these tests.
fn deep_feed(config: &mut Config) {
    if let Some(feed) = config.channel.namespaces.get_mut("feed") {
        feed.history_size = 500;
        feed.recovery_max_publications = 500;
    }
}

/// `n` nodes on the NATS servers at `addresses`, named `node-0`, …, with
/// presence on the Redis at `redis` if given.
async fn nodes_on(addresses: Vec<String>, n: usize, replicas: usize, redis: Option<String>) -> Vec<TestServer> {
    let prefix = fresh_prefix();
    let mut nodes = Vec::new();
    for i in 0..n {
        let engine = NatsEngineConfig {
            addresses: addresses.clone(),
            prefix: prefix.clone(),
            command_timeout: Duration::from_secs(2),
            replicas,
            redis_address: redis.clone(),
            ..Default::default()
        };
        nodes.push(
            TestServer::with(|c| {
                c.engine = EngineConfig::Nats(engine);
                c.node.name = Some(format!("node-{i}"));
                deep_feed(c);
            })
            .await,
        );
    }
    nodes
}

async fn cluster(nats: &NatsServer, n: usize) -> Vec<TestServer> {
    nodes_on(vec![nats.url()], n, 1, None).await
}

async fn ready(node: &TestServer) -> u16 {
    support::http_get(node.addr, "/ready").await.0
}

#[tokio::test]
async fn a_publication_through_any_node_reaches_every_node_once_and_in_order() {
    let nats = NatsServer::start();
    scenarios::a_publication_reaches_every_node_once_and_in_order(&cluster(&nats, 3).await).await;
}

#[tokio::test]
async fn presence_channels_nodes_and_control_are_the_clusters_on_every_node() {
    let nats = NatsServer::start();
    let nodes = cluster(&nats, 2).await;
    scenarios::the_cluster_answers_as_one(&nodes, "nats").await;
}

#[tokio::test]
async fn on_the_mixed_engine_presence_lives_in_redis_and_the_cluster_still_answers_as_one() {
    let (nats, mut redis) = (NatsServer::start(), RedisServer::start());
    let nodes = nodes_on(vec![nats.url()], 2, 1, Some(redis.url())).await;
    scenarios::the_cluster_answers_as_one(&nodes, "nats+redis").await;
    let mut connection = redis::Client::open(redis.url()).unwrap().get_connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut connection).unwrap();
    assert!(keys.iter().any(|k| k.contains("room:x")), "presence is kept in Redis: {keys:?}");

    redis.kill();
    let (status, _, body) = support::http_get(nodes[0].addr, "/ready").await;
    assert_eq!(status, 503, "without its Redis the node is not ready: {body}");
    assert!(body.contains("redis"), "and says which part is missing: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_channels_last_event_reaches_a_subscriber_ahead_of_every_newer_one() {
    let nats = NatsServer::start();
    let engine = NatsEngineConfig { addresses: vec![nats.url()], prefix: fresh_prefix(), ..Default::default() };
    let server = TestServer::with(|c| {
        c.engine = EngineConfig::Nats(engine);
        crate::pusher::with_app(c, |_| {});
    })
    .await;
    crate::pusher::a_cache_channels_last_event_reaches_each_subscriber_ahead_of_every_newer_one(&server).await;
}

#[tokio::test]
async fn a_subscriber_whose_node_dies_recovers_on_another_node() {
    let nats = NatsServer::start();
    scenarios::a_subscriber_whose_node_dies_recovers_on_another(cluster(&nats, 2).await).await;
}

#[tokio::test]
async fn when_nats_restarts_subscribers_recover_from_its_stored_history_and_publishes_fail_clearly_meanwhile() {
    let mut nats = NatsServer::start();
    let nodes = cluster(&nats, 2).await;
    let mut reader = subscribed(&nodes[1], "reader", "feed:r").await;
    nodes[0].publish("feed:r", json!(1)).await;
    let first = reader.next_push().await;
    assert_eq!(first["pub"]["offset"], 1);
    let (_, position) = nodes[0].api("history", json!({"channel": "feed:r", "limit": 0})).await;
    let epoch = position["result"]["epoch"].as_str().unwrap().to_owned();

    nats.stop();
    let push = reader.next_push().await;
    assert_eq!(push, json!({"channel": "feed:r", "unsubscribe": {"code": 2500, "reason": "insufficient state"}}));
    let (status, reply) = nodes[0].api("publish", json!({"channel": "feed:r", "data": 2})).await;
    assert_eq!((status, &reply["error"]["code"]), (503, &json!(100)), "{reply}");
    support::eventually_async("the node reports not ready while NATS is down", || async {
        ready(&nodes[0]).await == 503
    })
    .await;
    let (status, _, health) = support::http_get(nodes[0].addr, "/health").await;
    assert_eq!(status, 200, "but alive");
    assert!(health.contains(r#""engine":"unavailable""#), "and saying why: {health}");
    reader.assert_alive().await;

    nats.restart();
    support::eventually_async("the node reaches NATS again", || async {
        nodes[0].api("publish", json!({"channel": "feed:r", "data": "after"})).await.0 == 200
    })
    .await;
    assert_eq!(ready(&nodes[0]).await, 200, "ready again");
    let reply = recover(&mut reader, "feed:r", 1, &epoch).await;
    assert_eq!(reply["subscribe"]["recovered"], true, "JetStream kept the stream across the restart: {reply}");
    let data: Vec<&Value> = reply["subscribe"]["publications"].as_array().unwrap().iter().map(|p| &p["data"]).collect();
    assert_eq!(data, [&json!("after")], "exactly what was missed");
}

/// Resubscribes with recovery from `offset`, retrying temporary errors as
/// clients do.
async fn recover(client: &mut Client, channel: &str, offset: u64, epoch: &str) -> Value {
    let deadline = tokio::time::Instant::now() + support::PATIENCE;
    loop {
        let id = client.id();
        let subscribe = json!({"channel": channel, "recover": true, "offset": offset, "epoch": epoch});
        let reply = client.command(json!({"id": id, "subscribe": subscribe})).await;
        if reply["error"]["temporary"] != true || tokio::time::Instant::now() > deadline {
            return reply;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Publishes 0, 1, … through `nodes` in turn, calling `disrupt(n)` before
/// each, until 60 were tried and 20 accepted from the 30th on (a refused
/// publish is retried after a pause, as a client would); then `"end"`.
/// Every follower must reach the end having seen every accepted
/// publication once, in order, without being told `recovered: false`, and
/// every accepted publication must be in history.
async fn publish_through_a_disruption(nodes: &[TestServer], followers: Vec<Follower>, mut disrupt: impl FnMut(usize)) {
    let following: Vec<_> = followers.into_iter().map(|f| tokio::spawn(f.follow_to_the_end())).collect();
    let (mut accepted, mut refused) = (Vec::new(), 0);
    let deadline = tokio::time::Instant::now() + support::PATIENCE * 3;
    for n in 0.. {
        if n >= 60 && accepted.iter().filter(|a| **a >= 30).count() >= 20 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "accepted {accepted:?}, refused {refused}");
        disrupt(n);
        let (status, _) = nodes[n % nodes.len()].api("publish", json!({"channel": "feed:stream", "data": n})).await;
        match status {
            200 => accepted.push(n),
            503 => {
                refused += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("a publish is accepted or refused clearly, not {other}"),
        }
    }
    let deadline = tokio::time::Instant::now() + support::PATIENCE * 3;
    while nodes[0].api("publish", json!({"channel": "feed:stream", "data": "end"})).await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "NATS never served publishes again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for follower in following {
        let follower =
            tokio::time::timeout(support::PATIENCE * 3, follower).await.expect("followed to the end").unwrap();
        assert_eq!(follower.told_unrecoverable, 0, "nothing acknowledged was lost, so every gap was recovered");
    }
    let (_, history) = nodes[0].api("history", json!({"channel": "feed:stream", "limit": 500})).await;
    let kept: Vec<&Value> = history["result"]["publications"].as_array().unwrap().iter().map(|p| &p["data"]).collect();
    for n in accepted {
        assert!(kept.contains(&&json!(n)), "acknowledged publication {n} is in history: {kept:?}");
    }
}

#[tokio::test]
async fn nats_restarting_in_the_middle_of_a_stream_loses_nothing() {
    let _logs = support::keep_node_logs();
    let mut nats = NatsServer::start();
    let nodes = cluster(&nats, 2).await;
    let followers = vec![
        Follower::subscribe(&nodes[0], "first", "feed:stream").await,
        Follower::subscribe(&nodes[1], "second", "feed:stream").await,
    ];
    publish_through_a_disruption(&nodes, followers, |n| match n {
        20 => nats.stop(),
        25 => nats.restart(),
        _ => {}
    })
    .await;
}

#[tokio::test]
async fn a_nats_server_killed_under_load_in_a_three_server_cluster_loses_nothing_acknowledged() {
    let _logs = support::keep_node_logs();
    let mut nats = NatsCluster::start(3);
    nats.ready().await;
    let nodes = nodes_on(nats.urls(), 3, 3, None).await;
    support::eventually_async("the replicated streams are made", || async {
        nodes[0].api("publish", json!({"channel": "feed:stream", "data": "start"})).await.0 == 200
    })
    .await;
    let mut followers = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        followers.push(Follower::subscribe(node, &format!("follower{i}"), "feed:stream").await);
    }
    publish_through_a_disruption(&nodes, followers, |n| {
        if n == 20 {
            nats.server(0).stop();
        }
    })
    .await;
}
