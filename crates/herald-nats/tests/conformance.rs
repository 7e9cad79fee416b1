//! The `nats` engine passes the shared engine conformance suite on a real
//! `nats-server` with JetStream, and so does the mixed engine: the NATS
//! broker and history with presence, occupancy and the node registry on
//! Redis. The servers are started once per test binary, on ephemeral
//! ports, and die with it; every case runs under a fresh subject and key
//! prefix, so it sees an empty cluster.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use herald_engine::conformance::Clock;
use herald_engine::Engine;
use herald_nats::testing::NatsServer;
use herald_nats::{NatsEngine, NatsSettings, StreamSettings};

fn fresh_prefix() -> String {
    static CASE: AtomicU32 = AtomicU32::new(0);
    format!("conformance{}", CASE.fetch_add(1, Ordering::Relaxed))
}

fn nats() -> &'static NatsServer {
    static SERVER: OnceLock<NatsServer> = OnceLock::new();
    SERVER.get_or_init(NatsServer::start)
}

fn settings(prefix: &str) -> NatsSettings {
    NatsSettings {
        addresses: vec![nats().url()],
        prefix: prefix.to_owned(),
        command_timeout: Duration::from_secs(5),
        streams: StreamSettings { replicas: 1, memory: false },
    }
}

mod nats {
    use super::*;

    herald_engine::engine_conformance! {
        #[tokio::test]
        make: || async {
            NatsEngine::connect(&settings(&fresh_prefix())).await.expect("connects").into_engine()
        },
        clock: Clock::Real,
    }
}

mod mixed {
    use super::*;
    use herald_redis::testing::RedisServer;
    use herald_redis::{RedisEngine, RedisSettings};

    fn redis() -> &'static RedisServer {
        static SERVER: OnceLock<RedisServer> = OnceLock::new();
        SERVER.get_or_init(RedisServer::start)
    }

    async fn engine() -> Engine {
        let prefix = fresh_prefix();
        let nats = NatsEngine::connect(&settings(&prefix)).await.expect("connects to nats");
        let redis_settings = RedisSettings {
            addresses: vec![redis().url()],
            prefix,
            command_timeout: Duration::from_secs(5),
            subscriber_connections: 1,
        };
        let redis = Arc::new(RedisEngine::single(&redis_settings).await.expect("connects to redis"));
        Engine::from_parts("nats+redis", nats.broker, nats.history, redis.clone(), redis.clone(), redis)
    }

    herald_engine::engine_conformance! {
        #[tokio::test]
        make: engine,
        clock: Clock::Real,
    }
}
