//! Nodes on a Redis master behind Sentinel: when the master dies
//! mid-stream, the sentinels promote its replica, the nodes follow it,
//! publishes are refused clearly while there is no master, and every
//! subscriber sees each publication once, in order, or is told
//! `recovered: false` — never a silent gap.

use crate::support;

use std::time::Duration;

use crate::support::follower::Follower;
use crate::support::TestServer;
use serde_json::json;

use herald_redis::testing::RedisSentinel;
use herald_server::config::{EngineConfig, RedisEngineConfig};

async fn nodes_on(sentinel: &RedisSentinel, n: usize) -> Vec<TestServer> {
    let mut nodes = Vec::new();
    for _ in 0..n {
        let engine = RedisEngineConfig {
            sentinels: sentinel.sentinel_urls(),
            master_name: Some(RedisSentinel::MASTER_NAME.into()),
            prefix: format!("sentinel{}", std::process::id()),
            command_timeout: Duration::from_secs(1),
            ..Default::default()
        };
        nodes.push(TestServer::with(|c| c.engine = EngineConfig::Redis(engine)).await);
    }
    nodes
}

#[tokio::test]
async fn when_the_master_fails_over_mid_stream_the_nodes_follow_the_new_one_and_nothing_is_lost_silently() {
    let mut redis = RedisSentinel::start();
    let replica = redis.replica.url();
    let nodes = nodes_on(&redis, 2).await;
    let followers = [
        Follower::subscribe(&nodes[0], "first", "feed:stream").await,
        Follower::subscribe(&nodes[1], "second", "feed:stream").await,
    ];
    let following: Vec<_> = followers.into_iter().map(|f| tokio::spawn(f.follow_to_the_end())).collect();

    let (mut accepted, mut refused) = (0, 0);
    let deadline = tokio::time::Instant::now() + support::PATIENCE * 3;
    for n in 0.. {
        if n >= 60 && accepted >= 40 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "accepted {accepted}, refused {refused}");
        if n == 20 {
            redis.master.kill();
        }
        let (status, reply) = nodes[n % 2].api("publish", json!({"channel": "feed:stream", "data": n})).await;
        match status {
            200 => accepted += 1,
            503 => {
                assert_eq!(reply["error"]["code"], 100, "a temporary error: {reply}");
                refused += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("a publish is accepted or refused clearly, not {other}: {reply}"),
        }
    }
    assert!(refused >= 1, "publishes were refused while there was no master");
    assert_eq!(redis.current_master(), Some(replica), "the sentinels promoted the replica");
    nodes[0].publish("feed:stream", json!("end")).await;

    for follower in following {
        let follower =
            tokio::time::timeout(support::PATIENCE * 3, follower).await.expect("followed to the end").unwrap();
        assert_eq!(
            follower.told_unrecoverable, 1,
            "the failover may have lost the old master's last writes: the stream restarted and the client was told once"
        );
    }
    for node in &nodes {
        assert_eq!(support::http_get(node.addr, "/ready").await.0, 200, "ready on the new master");
    }
}
