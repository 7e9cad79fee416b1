//! # herald-core
//!
//! The hub: connections, channels, subscriptions, fanout and permissions.
//! It knows nothing of sockets, HTTP, JSON or Redis; front-ends translate
//! their protocol into calls on [`Hub`], and the hub talks to the cluster
//! only through the [`herald_engine::Engine`] it is given.
//!
//! # Layout
//!
//! - [`hub`]: [`Hub`], a façade over the node's parts: its connections,
//!   channels, fanout, subscriptions, presence, occupancy, engine events and
//!   heartbeat (one file each under `hub/`).
//! - [`connection`]: a connection as the hub sees it, and the
//!   [`PushEncoder`] each front-end supplies.
//! - [`outbox`]: the bounded per-connection queue; owns backpressure.
//! - [`alarms`]: one timer for every session of a node ([`Alarms`]).
//! - [`frame`]: what it holds for a socket: [`Frame`]s, text ([`Text`],
//!   checked to be UTF-8 once) or binary.
//! - [`namespace`]: namespaces, their options and permission rules, and the
//!   [`ChannelConventions`] interface through which a protocol gives
//!   channel names a meaning of its own (Pusher's `presence-`, `cache-`).
//! - [`error`]: [`HubError`], mapped to codes by each front-end.
//! - [`fossil`]: fossil deltas, which fanout sends to subscribers that ask
//!   for delta compression.
//! - `prefetch`: the fanout's hint to the processor's cache, for the
//!   records of the subscribers it comes to next.

// Denied, not forbidden: the fanout's batched writes (`outbox::uring`)
// and its hint to the cache (`prefetch`) are the modules allowed it.
#![deny(unsafe_code)]
// No input may reach a panic: outside tests, no unwrap, expect, indexing or
// unchecked arithmetic; each exception is allowed where it stands, with why.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::arithmetic_side_effects)
)]
#![warn(missing_docs)]

pub mod alarms;
pub mod connection;
pub mod error;
pub mod fossil;
pub mod frame;
pub mod hub;
pub mod namespace;
pub mod outbox;
mod prefetch;
mod shard;

pub use alarms::Alarms;
pub use connection::{Connection, ConnectionSpec, PushEncoder, Subscription, SubscriptionSerial};
pub use error::HubError;
pub use frame::{Frame, NotUtf8, Text};
pub use hub::{
    Hub, HubConfig, HubMeter, HubObserver, HubStats, Recovery, SessionRelay, SubscribeAccess, SubscribeOutcome,
    SubscribeRequest, Watch, MAX_WATCHES, NODE_INFO_EVERY, WATCH_QUEUE,
};
pub use namespace::{ChannelConventions, ChannelRules, DeltaType, NamespaceOptions, PublishPolicy, SubscribePolicy};
pub use outbox::{
    ConnEvent, Direct, Drained, Outbox, OutboxClosed, Outgoing, Queued, Sent, UnsubscribeReason, Waiting,
};

pub use herald_engine as engine;
