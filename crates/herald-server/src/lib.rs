//! # herald-server
//!
//! The `herald` binary's library: configuration, the listener, the
//! Centrifuge and Pusher front-ends and the server APIs, wired around the
//! hub from `herald-core` and an engine from `herald-engine`. Only what the
//! binary and the integration tests use is public: the [`Node`], the
//! configuration, tokens, the command line and Pusher's signatures.
//!
//! # Layout
//!
//! - [`config`]: the typed configuration tree, layered loading, validation.
//! - [`auth`]: connection and subscription tokens (JWT).
//! - `transport`: the seam between sockets and protocol sessions.
//! - `driver`: the one session loop every connection runs on, generic
//!   over the protocol and the transport.
//! - `centrifuge`: the Centrifuge client protocol v2 (JSON).
//! - `streams`: its endpoints besides the WebSocket: HTTP-streaming and
//!   SSE with emulation, and the uni-directional transports.
//! - `api`: the server HTTP API.
//! - `proxy`: client events proxied to the application's backend.
//! - `events`: the hub's events webhooks; `webhook`: the sender they and
//!   the Pusher webhooks share.
//! - `admin`: the admin web UI (`/admin`), over the server API.
//! - [`pusher`]: the Pusher protocol 7 front-end, its HTTP API and webhooks.
//! - `codes`: the error codes, and the one table from hub errors to what
//!   each front-end reports.
//! - `json`: JSON as every front-end and the API write it.
//! - `rate`: a connection's command rate (token bucket).
//! - `http`: serving HTTP: the accept loop, connection caps, header and
//!   body deadlines.
//! - `server`: assembling a [`Node`] and running it.
//! - [`cli`]: the command line (`herald serve | config | token | demo`).
//! - `demo`: what `herald demo` adds to a node: the demo pages and feeds.

#![forbid(unsafe_code)]
// No input may reach a panic: outside tests, no unwrap, expect, indexing or
// unchecked arithmetic; each exception is allowed where it stands, with why.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::arithmetic_side_effects)
)]

mod admin;
mod api;
pub mod auth;
mod centrifuge;
pub mod cli;
mod codes;
pub mod config;
#[cfg(feature = "conformance")]
pub mod conformance;
mod demo;
mod driver;
mod engines;
mod events;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod http;
mod json;
mod metrics;
mod proxy;
pub mod pusher;
mod rate;
mod rotating;
mod server;
mod streams;
mod transport;
mod webhook;

pub use server::Node;
