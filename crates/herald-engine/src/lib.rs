//! # herald-engine
//!
//! The layer where cross-node state and broadcast live. A node talks to its
//! cluster only through the [`Engine`] trait; which engine runs is decided
//! once at start-up.
//!
//! # Layout
//!
//! - [`ids`]: typed ids (`ChannelName`, `ClientId`, `UserId`, `NodeId`,
//!   `Offset`, `Epoch`) used by every layer.
//! - [`message`]: publications, control commands and the events an engine
//!   delivers.
//! - [`Engine`] and [`EventHandler`] (in `engine.rs`): the contract.
//! - [`memory`]: the embedded single-node engine, the zero-setup default.
//! - [`conformance`] (feature `conformance`): the suite every engine passes.

#![forbid(unsafe_code)]

mod engine;
pub mod ids;
pub mod memory;
pub mod message;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

pub use engine::{
    Engine, EngineError, EventHandler, Health, HistoryOptions, HistoryQuery, HistoryResult, PublishOptions,
    PublishResult,
};
pub use ids::{ChannelName, ClientId, Epoch, IdError, NodeId, Offset, UserId};
pub use memory::MemoryEngine;
pub use message::{
    ClientInfo, Control, DisconnectReason, EngineEvent, NodeInfo, PresenceStats, Publication, StreamPosition,
};
