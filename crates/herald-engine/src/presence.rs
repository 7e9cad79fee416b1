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
//! - a user with several connections counts once in `num_users`;
//! - the anonymous user (the empty id) stands for many people: each of
//!   its entries arrives and departs on its own (adding one is an
//!   arrival, removing or expiring one a departure), so no engine keeps
//!   all of a channel's anonymous entries in one place; it counts once in
//!   `num_users`, as in Centrifugo;
//! - [`Presence::refresh_presence`] and [`Presence::expire_presence_of`]
//!   do for many channels at once what `add_presence` and
//!   `expire_presence` do for one: a node's heartbeat refreshes every
//!   entry of its connections and sweeps every channel it serves, and an
//!   engine answers that in a few round trips (Redis: one script call per
//!   Redis and a few hundred entries), not one per entry.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::{stream, StreamExt};

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

    /// Refreshes many entries, as [`add_presence`](Self::add_presence)
    /// each (an entry that expired meanwhile is added again), without
    /// telling arrivals. Returns what failed; the rest is refreshed. This
    /// default adds them one by one, sixteen at a time; engines that
    /// can batch them do.
    async fn refresh_presence(&self, entries: &[(ChannelName, ClientInfo)], ttl: Duration) -> Vec<EngineError> {
        refresh_each(self, entries, ttl).await
    }

    /// Sweeps many channels, as [`expire_presence`](Self::expire_presence)
    /// each: every expired entry with its channel, handed out once, and
    /// what failed. This default sweeps them one by one, sixteen at a
    /// time; engines that can batch them do.
    async fn expire_presence_of(&self, channels: &[ChannelName]) -> Swept {
        expire_each(self, channels).await
    }
}

/// [`Presence::refresh_presence`] by one [`Presence::add_presence`] per
/// entry, sixteen at a time: the default, and the way an engine that
/// batches only some refreshes does the rest.
pub async fn refresh_each<P: Presence + ?Sized>(
    presence: &P,
    entries: &[(ChannelName, ClientInfo)],
    ttl: Duration,
) -> Vec<EngineError> {
    let adds: Vec<_> = entries.iter().map(|(channel, info)| presence.add_presence(channel, info, ttl)).collect();
    let outcomes: Vec<_> = stream::iter(adds).buffer_unordered(IN_FLIGHT).collect().await;
    outcomes.into_iter().filter_map(Result::err).collect()
}

/// [`Presence::expire_presence_of`] by one [`Presence::expire_presence`]
/// per channel, sixteen at a time: the default, and the way an engine
/// that batches only some sweeps does the rest.
pub async fn expire_each<P: Presence + ?Sized>(presence: &P, channels: &[ChannelName]) -> Swept {
    let sweeps: Vec<_> =
        channels.iter().map(|channel| async move { (channel, presence.expire_presence(channel).await) }).collect();
    let outcomes: Vec<_> = stream::iter(sweeps).buffer_unordered(IN_FLIGHT).collect().await;
    let mut swept = Swept::default();
    for (channel, outcome) in outcomes {
        match outcome {
            Ok(entries) => swept.expired.extend(entries.into_iter().map(|entry| (channel.clone(), entry))),
            Err(error) => swept.failed.push(error),
        }
    }
    swept
}

/// How many calls the default batch methods keep in flight.
const IN_FLIGHT: usize = 16;

/// What a sweep of many channels found.
#[derive(Debug, Default)]
pub struct Swept {
    /// Each expired entry, with its channel.
    pub expired: Vec<(ChannelName, ExpiredEntry)>,
    /// Batches that could not be swept (their entries are swept next time).
    pub failed: Vec<EngineError>,
}
