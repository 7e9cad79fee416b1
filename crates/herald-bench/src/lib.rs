//! # herald-bench
//!
//! Herald's load generator. Every performance figure Herald states comes
//! from it. It speaks the Centrifuge protocol (JSON), the Pusher protocol
//! and Socket.IO over real WebSockets, so the same scenario runs against
//! Herald and its peers, and publishes through the server's HTTP API.
//!
//! # Layout
//!
//! - [`client`]: the bench's minimal client for the three protocols, with
//!   source-address binding; once subscribed, a client can be detached to
//!   be read from a plain thread (`fanout` reads its subscribers so).
//! - [`ws`]: the WebSocket underneath it, made to cost little per message
//!   (the generator shares the machine with the server it measures).
//! - [`publisher`]: scheduled publishing through an HTTP API, with latency
//!   measured from the scheduled send time (no coordinated omission).
//! - [`sequence`]: per-channel loss, duplicate and reordering detection.
//! - [`scenario`]: `connections`, `fanout`, `chat` and `reconnect-storm`,
//!   and `floor`, the same measure of latency with no server in the way.
//! - [`workers`]: `connections` and `fanout` over several processes, past
//!   one process's open-files limit.
//! - [`procfs`]: server RSS and CPU from `/proc`.

#![deny(unsafe_code)]

pub mod client;
pub mod procfs;
mod protobuf;
pub mod publisher;
pub mod scenario;
pub mod sequence;
mod sse;
pub mod workers;
pub mod ws;
