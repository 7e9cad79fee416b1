//! The Centrifuge client protocol v2 (JSON) front-end, served at
//! `/connection/websocket`, so centrifuge-js, centrifuge-python and the other
//! Centrifugo SDKs work against Herald unchanged.
//!
//! # Layout
//!
//! - [`command`]: decoding client commands.
//! - [`encode`]: encoding replies, pushes and publications.
//! - [`codes`]: error, unsubscribe and disconnect codes.
//! - [`session`]: the per-connection state machine.

pub mod codes;
pub mod command;
pub mod encode;
pub mod session;

pub use encode::CentrifugeEncoder;
pub use session::{SessionSettings, Shared};

#[cfg(test)]
mod session_tests;
