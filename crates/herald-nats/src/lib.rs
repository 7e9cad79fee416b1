//! # herald-nats
//!
//! Herald over NATS: the `nats` engine. Publications, joins and leaves,
//! and control commands travel over core NATS subjects, with interest
//! routing (a node subscribes to a channel's subject only while it has
//! local subscribers) and the same message format as the Redis engine
//! (`herald_engine::wire`). Everything the cluster must agree on lives in
//! JetStream: history and stream positions, idempotency keys, presence,
//! occupancy and the node registry.
//!
//! Plain streams only (no key-value or object store API, which
//! nats-server 2.9 does not serve to this client): state that changes is
//! a *record*, the one message of its subject, changed by compare-and-set
//! on the subject's last sequence (`records`).
//!
//! # Layout
//!
//! - [`NatsEngine`]: connects and assembles the five parts.
//! - [`NatsBroker`] (`broker`): the `Broker` part.
//! - [`NatsHistory`] (`history`): history streams, and the appends that
//!   assign offsets.
//! - [`NatsPresence`] (`presence`), [`NatsOccupancy`] (`occupancy`),
//!   [`NatsNodeRegistry`] (`nodes`): records.
//! - `records`: compare-and-set records in a stream.
//! - `reorder`: a channel's republished publications back in offset order.
//! - `subjects`: subject names, with channel names encoded into one valid
//!   token each.
//! - [`testing`] (feature `testing`): a real `nats-server` for tests.

#![forbid(unsafe_code)]
// What the backplane sends is input: outside tests, no unwrap, expect,
// indexing or unchecked arithmetic.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::arithmetic_side_effects)
)]

mod broker;
mod history;
mod nodes;
mod occupancy;
mod presence;
mod records;
mod reorder;
mod subjects;
#[cfg(feature = "testing")]
pub mod testing;

use std::sync::Arc;

pub use broker::{NatsBroker, NatsSettings};
pub use history::{NatsHistory, StreamSettings};
pub use nodes::NatsNodeRegistry;
pub use occupancy::NatsOccupancy;
pub use presence::NatsPresence;
pub use subjects::Subjects;

use herald_engine::{Engine, EngineError};

/// Whether `address` is a NATS server URL this engine can connect to
/// (`nats://host:port` or `tls://host:port`).
pub fn valid_address(address: &str) -> bool {
    (address.starts_with("nats://") || address.starts_with("tls://"))
        && address.parse::<async_nats::ServerAddr>().is_ok()
}

/// The `nats` engine's parts, on one connection.
#[derive(Debug)]
pub struct NatsEngine {
    /// Publications, joins and leaves, control.
    pub broker: Arc<NatsBroker>,
    /// History streams (appended to by the broker).
    pub history: Arc<NatsHistory>,
    /// Presence records.
    pub presence: Arc<NatsPresence>,
    /// Occupancy records.
    pub occupancy: Arc<NatsOccupancy>,
    /// The node registry.
    pub nodes: Arc<NatsNodeRegistry>,
}

impl NatsEngine {
    /// Connects to NATS. Fails if no server of `settings.addresses` answers.
    pub async fn connect(settings: &NatsSettings) -> Result<Self, EngineError> {
        let broker = Arc::new(NatsBroker::connect(settings).await?);
        let (client, prefix, streams, timeout) =
            (broker.client(), settings.prefix.as_str(), settings.streams, settings.command_timeout);
        Ok(Self {
            history: broker.history(),
            presence: Arc::new(NatsPresence::new(client.clone(), prefix, streams, timeout)),
            occupancy: Arc::new(NatsOccupancy::new(client.clone(), prefix, streams, timeout)),
            nodes: Arc::new(NatsNodeRegistry::new(client, prefix, streams, timeout)),
            broker,
        })
    }

    /// The whole engine, every part on NATS.
    pub fn into_engine(self) -> Engine {
        Engine::from_parts("nats", self.broker, self.history, self.presence, self.occupancy, self.nodes)
    }
}
