//! The Redis engine passes the shared engine conformance suite against a
//! redis-server this test starts on an ephemeral port.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herald_engine::Engine;
use herald_redis::testing::RedisServer;
use herald_redis::{RedisEngine, RedisSettings};

#[tokio::test]
async fn the_redis_engine_passes_the_conformance_suite() {
    let server = RedisServer::start();
    let url = server.url();
    static CASE: AtomicU32 = AtomicU32::new(0);
    herald_engine::conformance::run_all(
        || {
            let url = url.clone();
            async move {
                // A fresh prefix per case: each case sees an empty cluster.
                let settings = RedisSettings {
                    address: url,
                    prefix: format!("conformance{}", CASE.fetch_add(1, Ordering::Relaxed)),
                    command_timeout: Duration::from_secs(5),
                };
                Arc::new(RedisEngine::connect(&settings).await.expect("connects")) as Arc<dyn Engine>
            }
        },
        tokio::time::sleep,
    )
    .await;
}
