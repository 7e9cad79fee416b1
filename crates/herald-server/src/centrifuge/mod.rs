//! The Centrifuge client protocol v2 (JSON and Protobuf) front-end, served at
//! `/connection/websocket` (and the streams of `crate::streams`), so centrifuge-js, centrifuge-python and the other
//! Centrifugo SDKs work against Herald unchanged.
//!
//! # Layout
//!
//! - [`command`]: decoding client commands.
//! - [`encode`]: encoding replies, pushes and publications.
//! - [`codes`]: error, unsubscribe and disconnect codes.
//! - [`session`]: the per-connection state machine.
//! - [`emulation`]: commands posted by clients on HTTP streams, routed to
//!   their session's node; [`session_keys`]: those sessions' signed keys.
//! - [`positions`]: a uni-directional SSE client's positions, as event ids.
//! - [`protobuf`]: the Protobuf encoding, at the session's edge.

pub(crate) mod codes;
pub(crate) mod command;
pub(crate) mod emulation;
pub(crate) mod encode;
pub(crate) mod positions;
pub(crate) mod protobuf;
pub(crate) mod session;
pub(crate) mod session_keys;

pub(crate) use encode::{CentrifugeEncoder, UniEncoder};
pub(crate) use session::{SessionSettings, Shared};

#[cfg(test)]
mod session_tests;
