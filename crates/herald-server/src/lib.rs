//! # herald-server
//!
//! The `herald` binary's library: configuration, the listener, the
//! Centrifuge protocol front-end and the server API, wired around the hub
//! from `herald-core` and an engine from `herald-engine`.
//!
//! # Layout
//!
//! - [`config`]: the typed configuration tree, layered loading, validation.
//! - [`auth`]: connection and subscription tokens (JWT).
//! - [`transport`]: the seam between sockets and protocol sessions.
//! - [`driver`]: the one session loop every connection runs on, generic
//!   over the protocol and the transport.
//! - [`centrifuge`]: the Centrifuge client protocol v2 (JSON).
//! - [`api`]: the server HTTP API.
//! - [`pusher`]: the Pusher protocol 7 front-end, its HTTP API and webhooks.
//! - [`listener`]: the accept loop with backoff.
//! - [`server`]: assembling a [`server::Node`] and running it.
//! - [`cli`]: the command line (`herald serve | config | token`).

#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod centrifuge;
pub mod cli;
pub mod config;
pub mod driver;
pub mod listener;
pub mod pusher;
pub mod server;
pub mod transport;

pub use server::Node;
