//! Several nodes on one Redis: a cluster. Publications, presence, control
//! and recovery work across nodes.

use crate::support;

use std::sync::atomic::{AtomicU32, Ordering};

use crate::support::follower::Follower;
use crate::support::scenarios::{self, subscribed};
use crate::support::TestServer;
use serde_json::json;

use herald_redis::testing::{RedisCluster, RedisServer};
use herald_server::config::{EngineConfig, RedisClusterEngineConfig, RedisEngineConfig};

fn fresh_prefix() -> String {
    static CLUSTER: AtomicU32 = AtomicU32::new(0);
    format!("cluster{}-{}", std::process::id(), CLUSTER.fetch_add(1, Ordering::Relaxed))
}

/// `n` nodes sharing `redis` under a prefix of their own, named `node-0`, ….
async fn cluster(redis: &RedisServer, n: usize) -> Vec<TestServer> {
    cluster_under(redis, n, &fresh_prefix()).await
}

/// [`cluster`], under `prefix`.
async fn cluster_under(redis: &RedisServer, n: usize, prefix: &str) -> Vec<TestServer> {
    let mut nodes = Vec::new();
    for i in 0..n {
        let engine = RedisEngineConfig {
            address: redis.url(),
            prefix: prefix.to_owned(),
            command_timeout: std::time::Duration::from_secs(2),
            ..Default::default()
        };
        nodes.push(
            TestServer::with(|c| {
                c.engine = EngineConfig::Redis(engine);
                c.node.name = Some(format!("node-{i}"));
            })
            .await,
        );
    }
    nodes
}

/// `n` nodes sharing a Redis Cluster.
async fn cluster_on(redis: &RedisCluster, n: usize) -> Vec<TestServer> {
    let prefix = fresh_prefix();
    let mut nodes = Vec::new();
    for _ in 0..n {
        let engine = RedisClusterEngineConfig { addresses: redis.urls(), prefix: prefix.clone(), ..Default::default() };
        nodes.push(TestServer::with(|c| c.engine = EngineConfig::RedisCluster(engine)).await);
    }
    nodes
}

#[tokio::test]
async fn over_a_redis_cluster_publications_presence_and_control_cross_nodes() {
    let redis = RedisCluster::start(3);
    let nodes = cluster_on(&redis, 3).await;
    let mut readers = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        // Channels land on different shards; each reader follows several.
        let mut reader = subscribed(node, &format!("reader{i}"), "feed:a").await;
        reader.subscribe("feed:b").await;
        reader.subscribe("room:c").await;
        readers.push(reader);
    }
    for n in 1..=20u64 {
        nodes[(n % 3) as usize].publish("feed:a", json!(n)).await;
        nodes[((n + 1) % 3) as usize].publish("feed:b", json!(n)).await;
    }
    for reader in &mut readers {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        while a.len() < 20 || b.len() < 20 {
            let push = reader.next_push().await;
            let offset = push["pub"]["offset"].as_u64().expect("a publication");
            match push["channel"].as_str() {
                Some("feed:a") => a.push(offset),
                Some("feed:b") => b.push(offset),
                other => panic!("unexpected push in {other:?}: {push}"),
            }
        }
        let expected: Vec<u64> = (1..=20).collect();
        assert_eq!((a, b), (expected.clone(), expected), "each channel in order, once");
    }
    let (_, stats) = nodes[2].api("presence_stats", json!({"channel": "room:c"})).await;
    assert_eq!(stats["result"], json!({"num_clients": 3, "num_users": 3}));
    nodes[0].api("disconnect", json!({"user": "reader2"})).await;
    assert_eq!(readers[2].closed().await.0, 3503);
}

/// The status of `GET /ready` (whether the node should be sent traffic).
async fn ready(node: &TestServer) -> u16 {
    support::http_get(node.addr, "/ready").await.0
}

#[tokio::test]
async fn a_publication_through_one_node_reaches_every_node_once_and_in_order() {
    let redis = RedisServer::start();
    scenarios::a_publication_reaches_every_node_once_and_in_order(&cluster(&redis, 3).await).await;
}

#[tokio::test]
async fn channels_spread_over_several_redis_instances_still_reach_every_node() {
    let shards = [RedisServer::start(), RedisServer::start()];
    let prefix = fresh_prefix();
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let engine = RedisEngineConfig {
            shards: shards.iter().map(RedisServer::url).collect(),
            prefix: prefix.clone(),
            ..Default::default()
        };
        nodes.push(TestServer::with(|c| c.engine = EngineConfig::Redis(engine)).await);
    }
    let channels: Vec<String> = (0..8).map(|i| format!("feed:spread{i}")).collect();
    let mut reader = nodes[1].connected("reader").await;
    for channel in &channels {
        reader.subscribe(channel).await;
    }
    for channel in &channels {
        nodes[0].publish(channel, json!(channel)).await;
    }
    let mut seen: Vec<String> = Vec::new();
    for _ in &channels {
        seen.push(reader.next_push().await["pub"]["data"].as_str().unwrap().to_owned());
    }
    seen.sort();
    let mut expected = channels.clone();
    expected.sort();
    assert_eq!(seen, expected, "every channel, whichever Redis owns it");

    let mut used = 0;
    for shard in &shards {
        let keys: Vec<String> = redis::Client::open(shard.url())
            .and_then(|c| c.get_connection())
            .and_then(|mut c| redis::cmd("KEYS").arg(format!("{prefix}:*:history")).query(&mut c))
            .unwrap();
        used += usize::from(!keys.is_empty());
    }
    assert_eq!(used, 2, "both instances hold some channels");
}

#[tokio::test]
async fn a_publication_another_program_put_into_redis_with_data_that_is_not_utf8_reaches_json_clients_readably() {
    // Only a program other than Herald could publish such bytes (Herald
    // takes JSON); a text frame must be UTF-8, and a subscriber cut off
    // for it would reconnect, recover it and be cut off again.
    let redis = RedisServer::start();
    let prefix = fresh_prefix();
    let node = cluster_under(&redis, 1, &prefix).await.remove(0);
    let mut reader = subscribed(&node, "reader", "chat:lobby").await;
    let foreign = b"0\n\np\n{}\n\"caf\xff\"".to_vec();
    let _: i64 = redis::Client::open(redis.url())
        .and_then(|c| c.get_connection())
        .and_then(|mut c| redis::cmd("PUBLISH").arg(format!("{prefix}:{{chat:lobby}}:pub")).arg(foreign).query(&mut c))
        .unwrap();
    assert_eq!(reader.next_push().await["pub"]["data"], "caf\u{fffd}", "the bytes that are not UTF-8 as U+FFFD");
    reader.assert_alive().await;
    node.publish("chat:lobby", json!("after")).await;
    assert_eq!(reader.next_push().await["pub"]["data"], "after");
}

#[tokio::test]
async fn presence_channels_nodes_and_control_are_the_clusters_on_every_node() {
    let redis = RedisServer::start();
    scenarios::the_cluster_answers_as_one(&cluster(&redis, 2).await, "redis").await;
}

#[tokio::test]
async fn the_channel_list_is_the_clusters_whichever_node_is_asked() {
    let redis = RedisServer::start();
    let nodes = cluster(&redis, 3).await;
    let _a = subscribed(&nodes[1], "a", "news").await;
    let _b = subscribed(&nodes[2], "b", "news").await;
    let _c = subscribed(&nodes[2], "c", "chat:lobby").await;

    for node in &nodes {
        let (status, reply) = node.api("channels", json!({})).await;
        assert_eq!(status, 200);
        assert_eq!(
            reply["result"]["channels"],
            json!({"chat:lobby": {"num_clients": 1}, "news": {"num_clients": 2}}),
            "asked on one node, it answers for the cluster"
        );
    }
    let (_, reply) = nodes[0].api("channels", json!({"pattern": "chat:*"})).await;
    assert_eq!(reply["result"]["channels"], json!({"chat:lobby": {"num_clients": 1}}));
}

#[tokio::test]
async fn info_lists_every_live_node() {
    let redis = RedisServer::start();
    let nodes = cluster(&redis, 3).await;
    let _a = nodes[0].connected("a").await;
    let _b = subscribed(&nodes[2], "b", "news").await;
    let (_, info) = nodes[1].api("info", json!({})).await;
    let listed = info["result"]["nodes"].as_array().expect("nodes");
    assert_eq!(listed.len(), 3, "{info}");
    assert_eq!(info["result"]["engine"], "redis");
    let mut names: Vec<&str> = listed.iter().map(|n| n["name"].as_str().unwrap()).collect();
    names.sort_unstable();
    assert_eq!(names, ["node-0", "node-1", "node-2"]);
    let asked = listed.iter().find(|n| n["name"] == "node-1").unwrap();
    assert!(asked["age_ms"].as_u64().unwrap() < 1000, "the asked node's figures are fresh: {asked}");
    for node in listed {
        let heartbeat = 3 * 25_000; // at most the registry entry's life
        assert!(node["age_ms"].as_u64().unwrap() <= heartbeat, "{node}");
        assert!(node["updated_at"].as_u64().unwrap() > 1_700_000_000_000, "{node}");
    }
}

#[tokio::test]
async fn a_subscriber_whose_node_dies_recovers_on_another_node() {
    let redis = RedisServer::start();
    scenarios::a_subscriber_whose_node_dies_recovers_on_another(cluster(&redis, 2).await).await;
}

#[tokio::test]
async fn when_redis_restarts_positioned_subscribers_are_told_to_recover_and_publishes_fail_clearly_meanwhile() {
    let mut redis = RedisServer::start();
    let nodes = cluster(&redis, 2).await;
    let mut reader = subscribed(&nodes[1], "reader", "feed:r").await;
    nodes[0].publish("feed:r", json!(1)).await;
    assert_eq!(reader.next_push().await["pub"]["offset"], 1);

    redis.kill();
    let push = reader.next_push().await;
    assert_eq!(push, json!({"channel": "feed:r", "unsubscribe": {"code": 2500, "reason": "insufficient state"}}));
    let (status, reply) = nodes[0].api("publish", json!({"channel": "feed:r", "data": 2})).await;
    assert_eq!((status, &reply["error"]["code"]), (503, &json!(100)), "{reply}");
    assert_eq!(ready(&nodes[0]).await, 503, "the node reports not ready while Redis is down");
    assert_eq!(support::http_get(nodes[0].addr, "/health").await.0, 200, "but alive");
    reader.assert_alive().await;

    redis.restart();
    support::eventually_async("the node reaches Redis again", || async {
        nodes[0].api("publish", json!({"channel": "feed:r", "data": "after"})).await.0 == 200
    })
    .await;
    // As a client does on a temporary error (100), retry until the node's
    // own subscription connection is back.
    let deadline = tokio::time::Instant::now() + support::PATIENCE;
    assert_eq!(ready(&nodes[0]).await, 200, "ready again");
    let reply = loop {
        let id = reader.id();
        let subscribe = json!({"channel": "feed:r", "recover": true, "offset": 1, "epoch": "before-restart"});
        let reply = reader.command(json!({"id": id, "subscribe": subscribe})).await;
        if reply["error"]["temporary"] != true || tokio::time::Instant::now() > deadline {
            break reply;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(reply["subscribe"]["was_recovering"], true, "{reply}");
    assert!(
        reply["subscribe"].get("recovered").is_none(),
        "the restarted Redis lost history: recovered false: {reply}"
    );

    let (_, _, metrics) = support::http_get(nodes[1].addr, "/metrics").await;
    let value = |series: &str| -> f64 {
        let line =
            metrics.lines().find(|l| l.starts_with(&format!("{series} "))).unwrap_or_else(|| panic!("no {series}"));
        line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap()
    };
    assert!(value("herald_engine_interruptions_total") >= 1.0, "the lost subscription is counted");
    assert_eq!(value(r#"herald_recoveries_total{outcome="not_recovered"}"#), 1.0);
    let (_, _, metrics) = support::http_get(nodes[0].addr, "/metrics").await;
    let failed = metrics.lines().find(|l| l.starts_with(r#"herald_engine_errors_total{call="publish"} "#));
    assert!(failed.is_some(), "the publish refused while Redis was down is counted:\n{metrics}");
}

#[tokio::test]
async fn redis_restarting_in_the_middle_of_a_stream_loses_nothing_silently() {
    let mut redis = RedisServer::start();
    let nodes = cluster(&redis, 2).await;
    let followers = [
        Follower::subscribe(&nodes[0], "first", "feed:stream").await,
        Follower::subscribe(&nodes[1], "second", "feed:stream").await,
    ];
    let following: Vec<_> = followers.into_iter().map(|f| tokio::spawn(f.follow_to_the_end())).collect();

    let mut accepted = 0;
    let mut refused = 0;
    for n in 0..60 {
        if n == 20 {
            redis.kill();
        }
        if n == 25 {
            redis.restart();
        }
        let (status, _) = nodes[n % 2].api("publish", json!({"channel": "feed:stream", "data": n})).await;
        match status {
            200 => accepted += 1,
            503 => refused += 1,
            other => panic!("a publish is accepted or refused clearly, not {other}"),
        }
    }
    support::eventually_async("Redis serves publishes again", || async {
        nodes[0].api("publish", json!({"channel": "feed:stream", "data": "end"})).await.0 == 200
    })
    .await;
    assert!(accepted >= 40 && refused >= 1, "accepted {accepted}, refused {refused}");

    for follower in following {
        let follower =
            tokio::time::timeout(support::PATIENCE * 3, follower).await.expect("followed to the end").unwrap();
        assert_eq!(follower.told_unrecoverable, 1, "the restart lost history, and the client was told so once");
    }
}
