//! The Redis engine passes the shared engine conformance suite, on a single
//! redis-server and on a 3-master Redis Cluster, both started by the test
//! on ephemeral ports.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herald_engine::Engine;
use herald_redis::testing::{RedisCluster, RedisServer};
use herald_redis::{RedisEngine, RedisSettings};

/// Settings with a fresh prefix: each case sees an empty cluster.
fn settings(addresses: Vec<String>) -> RedisSettings {
    static CASE: AtomicU32 = AtomicU32::new(0);
    RedisSettings {
        addresses,
        prefix: format!("conformance{}", CASE.fetch_add(1, Ordering::Relaxed)),
        command_timeout: Duration::from_secs(5),
        subscriber_connections: 2,
    }
}

#[tokio::test]
async fn the_redis_engine_passes_the_conformance_suite_on_a_single_redis() {
    let server = RedisServer::start();
    let url = server.url();
    herald_engine::conformance::run_all(
        || {
            let settings = settings(vec![url.clone()]);
            async move { Arc::new(RedisEngine::single(&settings).await.expect("connects")) as Arc<dyn Engine> }
        },
        tokio::time::sleep,
    )
    .await;
}

#[tokio::test]
async fn the_redis_engine_passes_the_conformance_suite_sharded_over_two_redis_instances() {
    let (first, second) = (RedisServer::start(), RedisServer::start());
    let urls = vec![first.url(), second.url()];
    herald_engine::conformance::run_all(
        || {
            let settings = settings(urls.clone());
            async move { Arc::new(RedisEngine::sharded(&settings).await.expect("connects")) as Arc<dyn Engine> }
        },
        tokio::time::sleep,
    )
    .await;
}

#[tokio::test]
async fn the_redis_engine_passes_the_conformance_suite_on_a_redis_cluster() {
    let cluster = RedisCluster::start(3);
    let urls = cluster.urls();
    herald_engine::conformance::run_all(
        || {
            let settings = settings(urls.clone());
            async move { Arc::new(RedisEngine::cluster(&settings).await.expect("connects")) as Arc<dyn Engine> }
        },
        tokio::time::sleep,
    )
    .await;
}
