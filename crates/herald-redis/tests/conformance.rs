//! The Redis engine passes the shared engine conformance suite on a single
//! redis-server, sharded over two, on a 3-master Redis Cluster, and behind
//! Sentinel (a master, a replica and three sentinels). Each
//! shape's servers are started once per test binary, on ephemeral ports,
//! and die with it; every case runs on a fresh key prefix, so it sees an
//! empty cluster.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use herald_engine::conformance::Clock;
use herald_redis::testing::{RedisCluster, RedisServer};
use herald_redis::RedisSettings;

/// Settings with a fresh prefix.
fn settings(addresses: Vec<String>) -> RedisSettings {
    static CASE: AtomicU32 = AtomicU32::new(0);
    RedisSettings {
        addresses,
        prefix: format!("conformance{}", CASE.fetch_add(1, Ordering::Relaxed)),
        command_timeout: Duration::from_secs(5),
        subscriber_connections: 2,
    }
}

mod single {
    use super::*;

    fn server() -> &'static RedisServer {
        static SERVER: OnceLock<RedisServer> = OnceLock::new();
        SERVER.get_or_init(RedisServer::start)
    }

    herald_engine::engine_conformance! {
        #[tokio::test]
        make: || async {
            let settings = settings(vec![server().url()]);
            herald_redis::RedisEngine::single(&settings).await.expect("connects").into_engine()
        },
        clock: Clock::Real,
    }
}

mod sharded {
    use super::*;

    fn servers() -> &'static (RedisServer, RedisServer) {
        static SERVERS: OnceLock<(RedisServer, RedisServer)> = OnceLock::new();
        SERVERS.get_or_init(|| (RedisServer::start(), RedisServer::start()))
    }

    herald_engine::engine_conformance! {
        #[tokio::test]
        make: || async {
            let (first, second) = servers();
            let settings = settings(vec![first.url(), second.url()]);
            herald_redis::RedisEngine::sharded(&settings).await.expect("connects").into_engine()
        },
        clock: Clock::Real,
    }
}

mod cluster {
    use super::*;

    fn cluster() -> &'static RedisCluster {
        static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
        CLUSTER.get_or_init(|| RedisCluster::start(3))
    }

    herald_engine::engine_conformance! {
        #[tokio::test]
        make: || async {
            let settings = settings(cluster().urls());
            herald_redis::RedisEngine::cluster(&settings).await.expect("connects").into_engine()
        },
        clock: Clock::Real,
    }
}

mod sentinel {
    use super::*;
    use herald_redis::testing::RedisSentinel;
    use herald_redis::SentinelSettings;

    fn servers() -> &'static RedisSentinel {
        static SERVERS: OnceLock<RedisSentinel> = OnceLock::new();
        SERVERS.get_or_init(RedisSentinel::start)
    }

    herald_engine::engine_conformance! {
        #[tokio::test]
        make: || async {
            let servers = servers();
            let sentinel = SentinelSettings {
                sentinels: servers.sentinel_urls(),
                master_name: RedisSentinel::MASTER_NAME.into(),
            };
            let settings = settings(Vec::new());
            herald_redis::RedisEngine::sentinel(&settings, sentinel).await.expect("connects").into_engine()
        },
        clock: Clock::Real,
    }
}
