//! The two shapes of Redis a cluster of nodes can share.
//!
//! - [`Single`]: one Redis. Commands go over one reconnecting connection;
//!   pub/sub subscriptions are spread over several reconnecting
//!   connections by channel hash, so one hot channel does not stall the
//!   others, and each channel's messages keep their order on its connection.
//! - [`Sharded`]: several independent Redis instances; each channel lives
//!   on one of them, chosen by rendezvous hashing of its name.
//! - [`Cluster`]: a Redis Cluster. Keys of one channel share a hash slot,
//!   publications use sharded pub/sub (`SPUBLISH` / `SSUBSCRIBE`), so each
//!   message travels only within the shard that owns its channel.
//!
//! - [`Sentinel`](crate::Sentinel) (in `sentinel`): one Redis master
//!   found through Sentinel, followed when it fails over.
//!
//! All hand every pub/sub message to one bounded queue, [`Pushes`].

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::RedisResult;

use crate::pushes::Pushes;

/// What the engine needs from a Redis deployment.
#[async_trait]
pub trait Backplane: Send + Sync + 'static {
    type Connection: ConnectionLike + Clone + Send + Sync + 'static;

    /// The command that broadcasts a channel's messages from a script.
    const PUBLISH: &'static str;

    /// A handle for commands on the keys of `route` (a channel name, or a
    /// fixed route for cluster-wide keys); cheap to clone.
    fn commands(&self, route: &str) -> Self::Connection;

    /// Subscribes to the pub/sub channel `name` of `route`.
    async fn subscribe(&self, route: &str, name: &str) -> RedisResult<()>;

    async fn unsubscribe(&self, route: &str, name: &str) -> RedisResult<()>;

    /// Subscribes to the cluster-wide control channel (plain pub/sub).
    async fn subscribe_control(&self, route: &str, name: &str) -> RedisResult<()>;

    /// Checks that every Redis behind the backplane answers.
    async fn ping(&self) -> RedisResult<()>;

    /// Which Redis the keys of `route` live on, where one script may take
    /// the keys of several routes that live on the same one (the
    /// heartbeat's batches); `None` where each route's keys must stay in a
    /// script of their own (a Redis Cluster's hash slots).
    fn batch_group(&self, _route: &str) -> Option<usize> {
        Some(0)
    }

    /// Which Redis master the streams are written on, when that can change
    /// under the node (Sentinel): a stream written under another one starts
    /// again under a new epoch. Empty: it never changes.
    fn generation(&self) -> String {
        String::new()
    }
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
        pushes: Pushes,
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

    fn commands(&self, _route: &str) -> ConnectionManager {
        self.commands.clone()
    }

    async fn subscribe(&self, _route: &str, name: &str) -> RedisResult<()> {
        self.subscriber(name).subscribe(name).await
    }

    async fn unsubscribe(&self, _route: &str, name: &str) -> RedisResult<()> {
        self.subscriber(name).unsubscribe(name).await
    }

    async fn subscribe_control(&self, _route: &str, name: &str) -> RedisResult<()> {
        self.subscriber(name).subscribe(name).await
    }

    async fn ping(&self) -> RedisResult<()> {
        redis::cmd("PING").query_async::<String>(&mut self.commands.clone()).await.map(|_| ())
    }
}

/// Several independent Redis instances: each channel lives on one of them,
/// chosen by rendezvous hashing, so adding an instance moves only the
/// channels that now hash to it.
pub struct Sharded {
    shards: Vec<(String, Single)>,
}

impl std::fmt::Debug for Sharded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sharded").field("shards", &self.shards.iter().map(|(a, _)| a).collect::<Vec<_>>()).finish()
    }
}

/// FNV-1a: a hash every node computes the same, whatever its build.
fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in *part {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The index of the shard that owns `route`: the one with the highest
/// score for it (rendezvous hashing).
pub fn shard_for(addresses: &[&str], route: &str) -> usize {
    addresses
        .iter()
        .enumerate()
        .max_by_key(|(_, address)| stable_hash(&[route.as_bytes(), address.as_bytes()]))
        .map(|(index, _)| index)
        .unwrap_or(0)
}

impl Sharded {
    pub async fn connect(
        addresses: &[String],
        timeout: Duration,
        subscriber_connections: usize,
        pushes: Pushes,
    ) -> RedisResult<Self> {
        let mut shards = Vec::new();
        for address in addresses {
            let single = Single::connect(address, timeout, subscriber_connections, pushes.clone()).await?;
            shards.push((address.clone(), single));
        }
        Ok(Self { shards })
    }

    fn shard(&self, route: &str) -> &Single {
        let addresses: Vec<&str> = self.shards.iter().map(|(a, _)| a.as_str()).collect();
        &self.shards[shard_for(&addresses, route)].1
    }
}

#[async_trait]
impl Backplane for Sharded {
    type Connection = ConnectionManager;
    const PUBLISH: &'static str = "publish";

    fn commands(&self, route: &str) -> ConnectionManager {
        self.shard(route).commands(route)
    }

    fn batch_group(&self, route: &str) -> Option<usize> {
        let addresses: Vec<&str> = self.shards.iter().map(|(a, _)| a.as_str()).collect();
        Some(shard_for(&addresses, route))
    }

    async fn subscribe(&self, route: &str, name: &str) -> RedisResult<()> {
        self.shard(route).subscribe(route, name).await
    }

    async fn unsubscribe(&self, route: &str, name: &str) -> RedisResult<()> {
        self.shard(route).unsubscribe(route, name).await
    }

    async fn subscribe_control(&self, route: &str, name: &str) -> RedisResult<()> {
        self.shard(route).subscribe_control(route, name).await
    }

    async fn ping(&self) -> RedisResult<()> {
        for (_, shard) in &self.shards {
            shard.ping().await?;
        }
        Ok(())
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
    pub async fn connect(addresses: &[String], timeout: Duration, pushes: Pushes) -> RedisResult<Self> {
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

    fn commands(&self, _route: &str) -> ClusterConnection {
        self.connection.clone()
    }

    fn batch_group(&self, _route: &str) -> Option<usize> {
        None
    }

    async fn subscribe(&self, _route: &str, name: &str) -> RedisResult<()> {
        self.connection.clone().ssubscribe(name).await
    }

    async fn unsubscribe(&self, _route: &str, name: &str) -> RedisResult<()> {
        self.connection.clone().sunsubscribe(name).await
    }

    async fn subscribe_control(&self, _route: &str, name: &str) -> RedisResult<()> {
        self.connection.clone().subscribe(name).await
    }

    async fn ping(&self) -> RedisResult<()> {
        let pong: RedisResult<String> = redis::cmd("PING").query_async(&mut self.connection.clone()).await;
        pong.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_hashing_spreads_channels_and_moves_few_when_a_shard_joins() {
        let three = ["redis://a:6379", "redis://b:6379", "redis://c:6379"];
        let four = ["redis://a:6379", "redis://b:6379", "redis://c:6379", "redis://d:6379"];
        let channels: Vec<String> = (0..3000).map(|i| format!("chat:{i}")).collect();
        let mut counts = [0usize; 3];
        let mut moved = 0;
        for channel in &channels {
            let before = shard_for(&three, channel);
            counts[before] += 1;
            let after = shard_for(&four, channel);
            if after != before {
                assert_eq!(after, 3, "a channel only ever moves to the new shard");
                moved += 1;
            }
        }
        assert!(counts.iter().all(|&n| n > 800), "spread evenly: {counts:?}");
        assert!((600..900).contains(&moved), "about a quarter moves: {moved}");
    }
}
