//! Herald's integration tests: real nodes, real clients, real backplanes.
//! One test binary holds them all, so the suite links once and the slow
//! cases of one area run beside those of another.
//!
//! # Layout
//!
//! - `support`: the harness (a node in this process on an ephemeral port,
//!   WebSocket and HTTP clients, followers that check ordering, scenarios
//!   shared by the backplanes).
//! - `centrifuge`, `streams`, `history_presence`: the Centrifuge protocol
//!   over each transport; history, recovery and presence.
//! - `pusher`, `events_webhooks`: the Pusher front-end and the hub's
//!   webhooks.
//! - `api`, `admin`, `proxy`: the server API, the admin UI's server side
//!   and the backend proxy.
//! - `cluster`, `nats`, `sentinel`: several nodes over Redis, over NATS,
//!   and behind Sentinel.
//! - `bad_input`, `protection`, `fuzz_corpus`, `autobahn`: hostile input,
//!   resource limits, the fuzzers' corpora and RFC 6455 conformance.
//! - `binary`, `cli`: the `herald` binary itself (its commands, signals
//!   and resource limits).
//! - `protobuf_schema`: the Protobuf wire types are what the schema
//!   generates.

mod support;

mod admin;
mod api;
mod autobahn;
mod bad_input;
mod binary;
mod centrifuge;
mod cli;
mod cluster;
mod events_webhooks;
mod fuzz_corpus;
mod history_presence;
mod nats;
mod protection;
mod protobuf_schema;
mod proxy;
mod pusher;
mod sentinel;
mod streams;
