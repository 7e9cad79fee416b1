//! Presence as the hub keeps it: each connection's entry in the channels
//! it subscribed to (where the namespace keeps presence), joins and leaves
//! broadcast through the engine, and the leave of clients that vanished
//! without leaving (their connection or node died), announced once their
//! entry expires.

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

    /// Refreshes the entries of live connections, so they outlive their ttl.
    pub(super) async fn refresh(&self, entries: Vec<(ChannelName, ClientInfo)>) {
        for (channel, info) in entries {
            if let Err(error) = self.engine.presence().add_presence(&channel, &info, self.ttl).await {
                tracing::warn!(%channel, %error, "presence refresh failed");
            }
        }
    }

    /// Announces the leave of every client whose entry in `channel`
    /// expired (each expired entry goes to one node only).
    pub(super) async fn sweep_expired(&self, channel: &ChannelName, join_leave: bool) {
        let expired = match self.engine.presence().expire_presence(channel).await {
            Ok(expired) => expired,
            Err(error) => {
                tracing::warn!(%channel, %error, "presence expiry sweep failed");
                return;
            }
        };
        for entry in expired {
            let user_departed = entry.departure == Departure::UserDeparted;
            if user_departed {
                if let Some(observer) = self.observer.get() {
                    observer.user_left(channel, &entry.info);
                }
            }
            if !join_leave {
                continue;
            }
            let event = PresenceEvent::Leave { info: entry.info, user_departed };
            if let Err(error) = self.engine.broker().publish_presence(channel, event).await {
                tracing::warn!(%channel, %error, "leave of an expired presence entry not sent");
            }
        }
    }
}
