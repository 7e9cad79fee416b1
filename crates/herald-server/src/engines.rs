//! Builds the engine a node runs on from `[engine]`: memory, Redis (one,
//! sharded, behind Sentinel, or a Redis Cluster), or NATS (alone, or with presence,
//! occupancy and the node registry on Redis). Fails loudly, saying what to
//! check; never falls back to another engine.

use std::sync::Arc;

use herald_engine::{
    Broker, ChannelName, Control, Engine, EngineError, EventHandler, Health, MemoryLimits, PresenceEvent, Publication,
    PublishOptions, PublishResult,
};
use herald_nats::{NatsBroker, NatsEngine, NatsSettings, StreamSettings};
use herald_redis::{RedisEngine, RedisSettings, SentinelSettings, Single};

use crate::config::{redacted, EngineConfig, NatsEngineConfig, NatsStorage};

/// Addresses as they may appear in a message: without credentials.
fn shown(addresses: &[String]) -> Vec<String> {
    addresses.iter().map(|a| redacted(a)).collect()
}

/// The engine `config` describes, connected.
pub(crate) async fn build(config: &EngineConfig) -> anyhow::Result<Engine> {
    let engine = match config {
        EngineConfig::Memory(memory) => Engine::memory_with(MemoryLimits { max_streams: memory.max_streams }),
        EngineConfig::Redis(redis) => {
            let sharded = !redis.shards.is_empty();
            let settings = RedisSettings {
                addresses: if sharded { redis.shards.clone() } else { vec![redis.address.clone()] },
                prefix: redis.prefix.clone(),
                command_timeout: redis.command_timeout,
                subscriber_connections: redis.subscriber_connections,
            };
            let unreachable = |e| {
                anyhow::anyhow!(
                    "cannot reach Redis at {:?}: {e}; is it running? check engine.address / engine.shards",
                    shown(&settings.addresses)
                )
            };
            if !redis.sentinels.is_empty() {
                let sentinel = SentinelSettings {
                    sentinels: redis.sentinels.clone(),
                    master_name: redis.master_name.clone().unwrap_or_default(),
                };
                RedisEngine::sentinel(&settings, sentinel)
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "cannot reach the Redis master through the sentinels {:?}: {e}; check engine.sentinels and engine.master_name",
                            shown(&redis.sentinels)
                        )
                    })?
                    .into_engine()
            } else if sharded {
                RedisEngine::sharded(&settings).await.map_err(unreachable)?.into_engine()
            } else {
                RedisEngine::single(&settings).await.map_err(unreachable)?.into_engine()
            }
        }
        EngineConfig::RedisCluster(cluster) => {
            let settings = RedisSettings {
                addresses: cluster.addresses.clone(),
                prefix: cluster.prefix.clone(),
                command_timeout: cluster.command_timeout,
                subscriber_connections: 1,
            };
            let engine = RedisEngine::cluster(&settings).await.map_err(|e| {
                anyhow::anyhow!(
                    "cannot reach the Redis Cluster at {:?}: {e}; is it running and formed? check engine.addresses",
                    shown(&cluster.addresses)
                )
            })?;
            engine.into_engine()
        }
        EngineConfig::Nats(nats) => nats_engine(nats).await?,
    };
    Ok(engine)
}

/// The `nats` engine, with presence, occupancy and the registry on Redis
/// when `redis_address` is set.
async fn nats_engine(nats: &NatsEngineConfig) -> anyhow::Result<Engine> {
    let settings = NatsSettings {
        addresses: nats.addresses.clone(),
        prefix: nats.prefix.clone(),
        command_timeout: nats.command_timeout,
        streams: StreamSettings { replicas: nats.replicas, memory: nats.storage == NatsStorage::Memory },
    };
    let parts = NatsEngine::connect(&settings).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot reach NATS at {:?}: {e}; is it running, with JetStream (-js)? check engine.addresses",
            shown(&nats.addresses)
        )
    })?;
    let Some(address) = &nats.redis_address else { return Ok(parts.into_engine()) };
    let redis_settings = RedisSettings {
        addresses: vec![address.clone()],
        prefix: nats.prefix.clone(),
        command_timeout: nats.command_timeout,
        subscriber_connections: 1,
    };
    let redis = RedisEngine::single(&redis_settings).await.map_err(|e| {
        anyhow::anyhow!("cannot reach Redis at {}: {e}; is it running? check engine.redis_address", redacted(address))
    })?;
    let redis = Arc::new(redis);
    let broker = Arc::new(MixedBroker { nats: parts.broker, redis: redis.clone() });
    Ok(Engine::from_parts("nats+redis", broker, parts.history, redis.clone(), redis.clone(), redis))
}

/// The mixed engine's broker: NATS's, healthy only while Redis (which
/// holds presence, occupancy and the registry) answers too.
#[derive(Debug)]
struct MixedBroker {
    nats: Arc<NatsBroker>,
    redis: Arc<RedisEngine<Single>>,
}

#[async_trait::async_trait]
impl Broker for MixedBroker {
    async fn start(&self, handler: Arc<dyn EventHandler>) -> Result<(), EngineError> {
        self.nats.start(handler).await
    }

    async fn publish(
        &self,
        channel: &ChannelName,
        publication: Publication,
        options: &PublishOptions,
    ) -> Result<PublishResult, EngineError> {
        self.nats.publish(channel, publication, options).await
    }

    async fn publish_presence(&self, channel: &ChannelName, event: PresenceEvent) -> Result<(), EngineError> {
        self.nats.publish_presence(channel, event).await
    }

    async fn subscribe(&self, channel: &ChannelName) -> Result<(), EngineError> {
        self.nats.subscribe(channel).await
    }

    async fn unsubscribe(&self, channel: &ChannelName) -> Result<(), EngineError> {
        self.nats.unsubscribe(channel).await
    }

    async fn send_control(&self, command: Control) -> Result<(), EngineError> {
        self.nats.send_control(command).await
    }

    async fn health(&self) -> Health {
        match self.nats.health().await {
            Health::Ready => self.redis.health().await,
            not_ready => not_ready,
        }
    }

    fn dropped(&self) -> u64 {
        self.nats.dropped()
    }
}
