//! Presence as the hub keeps it: each connection's entry in the channels
//! it subscribed to (where the namespace keeps presence), joins and leaves
//! broadcast through the engine, and the leave of clients that vanished
//! without leaving (their connection or node died), announced once their
//! entry expires.

use std::collections::HashSet;
use std::time::Duration;

use herald_engine::{Arrival, ChannelName, ClientInfo, Departure, Engine, PresenceEvent};

use super::observer::Observer;
use crate::namespace::NamespaceOptions;

#[derive(Debug)]
pub(super) struct PresenceKeeper {
    engine: Engine,
    ttl: Duration,
    observer: Observer,
}

impl PresenceKeeper {
    pub(super) fn new(engine: Engine, ttl: Duration, observer: Observer) -> Self {
        Self { engine, ttl, observer }
    }

    /// Adds the connection's entry and announces its join (`joined`), or
    /// removes it and announces its leave, where the namespace keeps
    /// presence or pushes joins and leaves.
    pub(super) async fn announce(
        &self,
        info: ClientInfo,
        channel: &ChannelName,
        options: &NamespaceOptions,
        joined: bool,
    ) {
        if !options.presence && !options.join_leave {
            return;
        }
        let presence = self.engine.presence();
        let result = match (options.presence, joined) {
            (false, _) => Ok(false),
            (true, true) => {
                presence.add_presence(channel, &info, self.ttl).await.map(|arrival| arrival == Arrival::UserArrived)
            }
            (true, false) => {
                presence.remove_presence(channel, &info).await.map(|departure| departure == Departure::UserDeparted)
            }
        };
        let user_changed = result.unwrap_or_else(|error| {
            tracing::warn!(%channel, %error, "presence update failed");
            false
        });
        if user_changed {
            if let Some(observer) = self.observer.get() {
                match joined {
                    true => observer.user_joined(channel, &info),
                    false => observer.user_left(channel, &info),
                }
            }
        }
        if options.join_leave {
            let event = match joined {
                true => PresenceEvent::Join { info, user_arrived: user_changed },
                false => PresenceEvent::Leave { info, user_departed: user_changed },
            };
            if let Err(error) = self.engine.broker().publish_presence(channel, event).await {
                tracing::warn!(%channel, %error, "join/leave event not sent");
            }
        }
    }

    /// Refreshes the entries of live connections, so they outlive their
    /// ttl: all in one call, which the engine batches.
    pub(super) async fn refresh(&self, entries: Vec<(ChannelName, ClientInfo)>) {
        if entries.is_empty() {
            return;
        }
        for error in self.engine.presence().refresh_presence(&entries, self.ttl).await {
            tracing::warn!(%error, "presence refresh failed for some entries; the next heartbeat tries again");
        }
    }

    /// Announces the leave of every client whose entry expired in one of
    /// `channels` (each expired entry goes to one node only). Each channel
    /// comes with whether its namespace tells joins and leaves.
    pub(super) async fn sweep_expired(&self, channels: Vec<(ChannelName, bool)>) {
        if channels.is_empty() {
            return;
        }
        let told: HashSet<ChannelName> =
            channels.iter().filter(|(_, join_leave)| *join_leave).map(|(channel, _)| channel.clone()).collect();
        let names: Vec<ChannelName> = channels.into_iter().map(|(channel, _)| channel).collect();
        let swept = self.engine.presence().expire_presence_of(&names).await;
        for error in swept.failed {
            tracing::warn!(%error, "presence expiry sweep failed for some channels; the next heartbeat tries again");
        }
        for (channel, entry) in swept.expired {
            let user_departed = entry.departure == Departure::UserDeparted;
            if user_departed {
                if let Some(observer) = self.observer.get() {
                    observer.user_left(&channel, &entry.info);
                }
            }
            if !told.contains(&channel) {
                continue;
            }
            let event = PresenceEvent::Leave { info: entry.info, user_departed };
            if let Err(error) = self.engine.broker().publish_presence(&channel, event).await {
                tracing::warn!(%channel, %error, "leave of an expired presence entry not sent");
            }
        }
    }
}
