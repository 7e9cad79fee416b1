//! # herald-nats
//!
//! Herald over NATS. This crate holds the [`NatsBroker`]: publications,
//! joins and leaves, and control commands travelling between nodes over
//! core NATS subjects, with interest routing (a node subscribes to a
//! channel's subject only while it has local subscribers) and the same
//! message format as the Redis engine (`herald_engine::wire`).
//!
//! It also holds the [`NatsNodeRegistry`], the live nodes in a JetStream
//! stream.
//!
//! What is not here yet, and the engine built on these will have:
//! history and stream positions (JetStream), idempotent publishes
//! (JetStream de-duplication), presence and occupancy. Until then it is not an `engine.type` a node can be
//! configured with; a publish that asks for history or idempotency is
//! refused with [`EngineError::Unavailable`] rather than quietly done
//! without.
//!
//! # Layout
//!
//! - [`NatsBroker`] (`broker`): the `Broker` part.
//! - [`NatsNodeRegistry`] (`nodes`): the `NodeRegistry` part.
//! - `subjects`: subject names, with channel names encoded into one valid
//!   token each.
//! - [`testing`] (feature `testing`): a real `nats-server` for tests.
//!
//! [`EngineError::Unavailable`]: herald_engine::EngineError::Unavailable

#![forbid(unsafe_code)]
// What the backplane sends is input: outside tests, no unwrap, expect,
// indexing or unchecked arithmetic.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::arithmetic_side_effects)
)]

mod broker;
mod nodes;
mod subjects;
#[cfg(feature = "testing")]
pub mod testing;

pub use broker::{NatsBroker, NatsSettings};
pub use nodes::NatsNodeRegistry;
pub use subjects::Subjects;
