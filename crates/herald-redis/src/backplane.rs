//! The two shapes of Redis a cluster of nodes can share.
//!
//! - [`Single`]: one Redis. Commands go over one reconnecting connection;
//!   pub/sub subscriptions are spread over several reconnecting
//!   connections by channel hash, so one hot channel does not stall the
//!   others, and each channel's messages keep their order on its connection.
//! - [`Cluster`]: a Redis Cluster. Keys of one channel share a hash slot,
//!   publications use sharded pub/sub (`SPUBLISH` / `SSUBSCRIBE`), so each
//!   message travels only within the shard that owns its channel.
//!
//! Both hand every pub/sub message to one `mpsc` receiver as `PushInfo`.

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, RedisResult};
use tokio::sync::mpsc;

/// What the engine needs from a Redis deployment.
#[async_trait]
pub trait Backplane: Send + Sync + 'static {
    type Connection: ConnectionLike + Clone + Send + Sync + 'static;

    /// The command that broadcasts a channel's messages from a script.
    const PUBLISH: &'static str;

    /// A handle for commands; cheap to clone.
    fn commands(&self) -> Self::Connection;

    /// Subscribes to a channel's pub/sub channel.
    async fn subscribe(&self, name: &str) -> RedisResult<()>;

    async fn unsubscribe(&self, name: &str) -> RedisResult<()>;

    /// Subscribes to the cluster-wide control channel (plain pub/sub).
    async fn subscribe_control(&self, name: &str) -> RedisResult<()>;
}

/// Asks for RESP3, which carries pub/sub pushes on a regular connection.
fn with_resp3(address: &str) -> String {
    if address.contains("protocol=") {
        address.to_owned()
    } else if address.contains('?') {
        format!("{address}&protocol=resp3")
    } else {
        format!("{address}?protocol=resp3")
    }
}

/// One Redis.
pub struct Single {
    commands: ConnectionManager,
    subscribers: Vec<ConnectionManager>,
    hasher: RandomState,
}

impl std::fmt::Debug for Single {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Single").field("subscriber_connections", &self.subscribers.len()).finish()
    }
}

impl Single {
    /// Connects `subscriber_connections` pub/sub connections and one for
    /// commands; every pub/sub message goes to `pushes`.
    pub async fn connect(
        address: &str,
        timeout: Duration,
        subscriber_connections: usize,
        pushes: mpsc::UnboundedSender<PushInfo>,
    ) -> RedisResult<Self> {
        let client = redis::Client::open(with_resp3(address).as_str())?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(timeout))
            .set_max_delay(Duration::from_secs(2));
        let commands = ConnectionManager::new_with_config(client.clone(), config.clone()).await?;
        let mut subscribers = Vec::new();
        for _ in 0..subscriber_connections.max(1) {
            let config = config.clone().set_push_sender(pushes.clone()).set_automatic_resubscription();
            subscribers.push(ConnectionManager::new_with_config(client.clone(), config).await?);
        }
        Ok(Self { commands, subscribers, hasher: RandomState::new() })
    }

    fn subscriber(&self, name: &str) -> ConnectionManager {
        let index = self.hasher.hash_one(name) as usize % self.subscribers.len();
        self.subscribers[index].clone()
    }
}

#[async_trait]
impl Backplane for Single {
    type Connection = ConnectionManager;
    const PUBLISH: &'static str = "publish";

    fn commands(&self) -> ConnectionManager {
        self.commands.clone()
    }

    async fn subscribe(&self, name: &str) -> RedisResult<()> {
        self.subscriber(name).subscribe(name).await
    }

    async fn unsubscribe(&self, name: &str) -> RedisResult<()> {
        self.subscriber(name).unsubscribe(name).await
    }

    async fn subscribe_control(&self, name: &str) -> RedisResult<()> {
        self.subscriber(name).subscribe(name).await
    }
}

/// A Redis Cluster (Redis 7 or newer, for sharded pub/sub).
pub struct Cluster {
    connection: ClusterConnection,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cluster")
    }
}

impl Cluster {
    /// Connects to the cluster through any of `addresses`.
    pub async fn connect(
        addresses: &[String],
        timeout: Duration,
        pushes: mpsc::UnboundedSender<PushInfo>,
    ) -> RedisResult<Self> {
        let client = ClusterClientBuilder::new(addresses.iter().map(String::as_str))
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(pushes)
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .build()?;
        Ok(Self { connection: client.get_async_connection().await? })
    }
}

#[async_trait]
impl Backplane for Cluster {
    type Connection = ClusterConnection;
    const PUBLISH: &'static str = "spublish";

    fn commands(&self) -> ClusterConnection {
        self.connection.clone()
    }

    async fn subscribe(&self, name: &str) -> RedisResult<()> {
        self.connection.clone().ssubscribe(name).await
    }

    async fn unsubscribe(&self, name: &str) -> RedisResult<()> {
        self.connection.clone().sunsubscribe(name).await
    }

    async fn subscribe_control(&self, name: &str) -> RedisResult<()> {
        self.connection.clone().subscribe(name).await
    }
}
