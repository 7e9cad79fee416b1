//! Presence: who is in each channel, kept by every node for its own
//! connections and shared by all.
//!
//! Contract (checked by `conformance::presence`):
//! - an entry vanishes `ttl` after it was last added or refreshed; reads
//!   skip expired entries, and [`Presence::expire_presence`] hands each
//!   expired entry to exactly one caller, so a leave can be announced for
//!   a connection whose node died;
//! - of concurrent adds of one user's entries, exactly one reports the
//!   user's arrival; of their removals (or expiries), exactly one reports
//!   the departure. Expired entries not yet handed out still count;
//! - a user with several connections counts once in `num_users`.

use std::time::Duration;

use async_trait::async_trait;

use crate::engine::EngineError;
use crate::ids::ChannelName;
use crate::message::{ClientInfo, PresenceStats};

/// Whether adding a presence entry brought its user into the channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// The entry is new and its user had no other: the user arrived.
    UserArrived,
    /// The user was present already: through another entry, or this one
    /// (a refresh).
    UserWasPresent,
}

/// Whether removing a presence entry took its user out of the channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Departure {
    /// The entry existed and was its user's last: the user departed.
    UserDeparted,
    /// The user is still present through another entry, or the entry was
    /// not there.
    UserRemains,
}

/// An entry that expired, handed out once for its leave to be announced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpiredEntry {
    /// The connection whose entry expired.
    pub info: ClientInfo,
    /// Whether it was its user's last entry.
    pub departure: Departure,
}

/// Keeps who is present in each channel. See the module documentation for
/// its contract.
#[async_trait]
pub trait Presence: Send + Sync + std::fmt::Debug + 'static {
    /// Adds or refreshes the entry of `info.client`, which expires after `ttl`.
    async fn add_presence(
        &self,
        channel: &ChannelName,
        info: &ClientInfo,
        ttl: Duration,
    ) -> Result<Arrival, EngineError>;

    /// Removes the entry of `info.client`.
    async fn remove_presence(&self, channel: &ChannelName, info: &ClientInfo) -> Result<Departure, EngineError>;

    /// Who is present in a channel (live entries only).
    async fn presence(&self, channel: &ChannelName) -> Result<Vec<ClientInfo>, EngineError>;

    /// How many connections and distinct users are present in a channel.
    async fn presence_stats(&self, channel: &ChannelName) -> Result<PresenceStats, EngineError>;

    /// Removes the channel's expired entries and returns them, each to
    /// exactly one caller.
    async fn expire_presence(&self, channel: &ChannelName) -> Result<Vec<ExpiredEntry>, EngineError>;
}
