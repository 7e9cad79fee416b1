//! # herald-engine
//!
//! The layer where cross-node state and broadcast live. A node talks to its
//! cluster only through an [`Engine`]; which engine runs is decided once at
//! start-up.
//!
//! # Layout
//!
//! - [`ids`]: typed ids (`ChannelName`, `ClientId`, `UserId`, `NodeId`,
//!   `Offset`, `Epoch`) used by every layer.
//! - [`message`]: publications, joins and leaves, control commands and the
//!   events an engine delivers.
//! - The engine's parts, one small trait each with its contract:
//!   [`Broker`] (`broker.rs`), [`History`] (`history.rs`), [`Presence`]
//!   (`presence.rs`), [`Occupancy`] (`occupancy.rs`) and [`NodeRegistry`]
//!   (`nodes.rs`); [`Engine`] (`engine.rs`) bundles them.
//! - [`memory`]: the embedded single-node engine, the zero-setup default.
//! - [`conformance`] (feature `conformance`): the suite every engine
//!   passes, and the [`engine_conformance!`] macro that makes each of its
//!   cases a test of the engine's own.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod broker;
mod engine;
mod history;
pub mod ids;
pub mod memory;
pub mod message;
mod nodes;
mod occupancy;
mod presence;
pub mod wire;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

pub use broker::{Broker, EventHandler, HistoryOptions, PublishOptions, PublishResult};
pub use engine::{Engine, EngineError, Health, PartWrapper, WholeEngine};
pub use history::{History, HistoryQuery, HistoryResult};
pub use ids::{ChannelName, ClientId, Epoch, IdError, NodeId, Offset, UserId};
pub use memory::{MemoryEngine, MemoryLimits};
pub use message::{
    ClientInfo, Control, DisconnectReason, EngineEvent, NodeInfo, PresenceEvent, PresenceStats, Publication,
    StreamPosition,
};
pub use nodes::NodeRegistry;
pub use occupancy::{NodeSubscribers, Occupancy, OccupancyChange};
pub use presence::{expire_each, refresh_each, Arrival, Departure, ExpiredEntry, Presence, Swept};
