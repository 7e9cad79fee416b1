//! # herald-bench
//!
//! Herald's load generator. Every performance figure Herald states comes
//! from it. It speaks the Centrifuge protocol (JSON) over real WebSockets
//! and publishes through the server API.
//!
//! # Layout
//!
//! - [`client`]: the bench's minimal Centrifuge client, with source-address
//!   binding.
//! - [`publisher`]: scheduled publishing through the server API, with
//!   latency measured from the scheduled send time (no coordinated omission).
//! - [`sequence`]: per-channel loss, duplicate and reordering detection.
//! - [`scenario`]: `connections` and `fanout`.
//! - [`procfs`]: server RSS and CPU from `/proc`.

#![forbid(unsafe_code)]

pub mod client;
pub mod procfs;
pub mod publisher;
pub mod scenario;
pub mod sequence;
