//! The hub's events webhooks (`[[webhooks]]`), for both protocols: a
//! channel occupied or vacated, a user joining or leaving a presence
//! channel, a connection opened or closed (with its close code and
//! reason). Each is reported once per cluster: transitions are decided by
//! one node (see `herald_core::hub::occupancy` and the engine's presence
//! contract), and a connection opens and closes on one node.
//!
//! Requests are `{"time_ms", "events": [{"name", …}]}`, signed with the
//! target's secret as the hex HMAC-SHA256 of the body in
//! `X-Herald-Signature`, and sent by the node's webhook sender
//! (`crate::webhook`: bounded queue, batching, retries with backoff).

use std::sync::Arc;

use serde::Serialize;

use herald_core::{Connection, HubObserver};
use herald_engine::{ChannelName, ClientInfo};

use crate::config::HubWebhookConfig;
use crate::metrics::Metrics;
use crate::webhook::{Named, Signing, Target};

/// Every event name a target may ask for.
pub(crate) const EVENT_NAMES: [&str; 6] =
    ["channel_occupied", "channel_vacated", "user_joined", "user_left", "connected", "disconnected"];

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub(crate) enum Event {
    ChannelOccupied {
        channel: String,
    },
    ChannelVacated {
        channel: String,
    },
    UserJoined {
        channel: String,
        user: String,
        client: String,
    },
    UserLeft {
        channel: String,
        user: String,
        client: String,
    },
    Connected {
        client: String,
        user: String,
        protocol: &'static str,
    },
    Disconnected {
        client: String,
        user: String,
        protocol: &'static str,
        /// The close code the server sent; `None` when the client left or
        /// its network broke.
        #[serde(skip_serializing_if = "Option::is_none")]
        code: Option<u16>,
        reason: String,
    },
}

impl Named for Event {
    fn name(&self) -> &'static str {
        match self {
            Event::ChannelOccupied { .. } => "channel_occupied",
            Event::ChannelVacated { .. } => "channel_vacated",
            Event::UserJoined { .. } => "user_joined",
            Event::UserLeft { .. } => "user_left",
            Event::Connected { .. } => "connected",
            Event::Disconnected { .. } => "disconnected",
        }
    }
}

/// The node's events webhook targets.
pub(crate) struct HubWebhooks {
    targets: Vec<Target<Event>>,
}

impl std::fmt::Debug for HubWebhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubWebhooks").field("targets", &self.targets.len()).finish()
    }
}

impl HubWebhooks {
    /// Starts a worker per configured target; `None` without any. Call
    /// inside the runtime.
    pub(crate) fn start(
        configs: &[HubWebhookConfig],
        tls: Option<&tokio_rustls::TlsConnector>,
        metrics: &Arc<Metrics>,
    ) -> Option<Arc<Self>> {
        let targets: Vec<Target<Event>> = configs
            .iter()
            .filter_map(|config| {
                let signing =
                    Signing { key: None, signature: "X-Herald-Signature", secret: config.secret.expose().to_owned() };
                let target = Target::start(&config.url, config.events.clone(), config.batch, signing, tls, metrics);
                if target.is_none() {
                    let url = crate::config::endpoint::for_logs(&config.url);
                    tracing::error!(%url, "an events webhook target cannot be reached (an https:// URL without TLS set up?)");
                }
                target
            })
            .collect();
        (!targets.is_empty()).then(|| Arc::new(Self { targets }))
    }

    /// Whether some target wants channel occupancy (the hub must track it).
    pub(crate) fn wants_occupancy(configs: &[HubWebhookConfig]) -> bool {
        configs
            .iter()
            .any(|c| c.events.is_empty() || c.events.iter().any(|e| e == "channel_occupied" || e == "channel_vacated"))
    }

    fn send(&self, event: Event) {
        for target in &self.targets {
            target.send(&event);
        }
    }

    /// A connection authenticated on this node.
    pub(crate) fn connected(&self, conn: &Connection, protocol: &'static str) {
        let (client, user) = (conn.client().as_str().to_owned(), conn.user().as_str().to_owned());
        self.send(Event::Connected { client, user, protocol });
    }

    /// A connection of this node closed: with `code` when the server closed
    /// it.
    pub(crate) fn disconnected(&self, conn: &Connection, protocol: &'static str, code: Option<u16>, reason: &str) {
        let (client, user) = (conn.client().as_str().to_owned(), conn.user().as_str().to_owned());
        self.send(Event::Disconnected { client, user, protocol, code, reason: reason.to_owned() });
    }
}

impl HubObserver for HubWebhooks {
    fn channel_occupied(&self, channel: &ChannelName) {
        self.send(Event::ChannelOccupied { channel: channel.as_str().to_owned() });
    }

    fn channel_vacated(&self, channel: &ChannelName) {
        self.send(Event::ChannelVacated { channel: channel.as_str().to_owned() });
    }

    fn user_joined(&self, channel: &ChannelName, info: &ClientInfo) {
        let (user, client) = (info.user.as_str().to_owned(), info.client.as_str().to_owned());
        self.send(Event::UserJoined { channel: channel.as_str().to_owned(), user, client });
    }

    fn user_left(&self, channel: &ChannelName, info: &ClientInfo) {
        let (user, client) = (info.user.as_str().to_owned(), info.client.as_str().to_owned());
        self.send(Event::UserLeft { channel: channel.as_str().to_owned(), user, client });
    }
}

/// Hands the hub's transitions to each of several observers (the Pusher
/// apps' webhooks and the events webhooks).
#[derive(Debug)]
pub(crate) struct Observers(pub(crate) Vec<Arc<dyn HubObserver>>);

impl HubObserver for Observers {
    fn channel_occupied(&self, channel: &ChannelName) {
        self.0.iter().for_each(|o| o.channel_occupied(channel));
    }

    fn channel_vacated(&self, channel: &ChannelName) {
        self.0.iter().for_each(|o| o.channel_vacated(channel));
    }

    fn user_joined(&self, channel: &ChannelName, info: &ClientInfo) {
        self.0.iter().for_each(|o| o.user_joined(channel, info));
    }

    fn user_left(&self, channel: &ChannelName, info: &ClientInfo) {
        self.0.iter().for_each(|o| o.user_left(channel, info));
    }

    fn subscribers_changed(&self, channel: &ChannelName) {
        self.0.iter().for_each(|o| o.subscribers_changed(channel));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_named_and_carry_their_fields() {
        let event = Event::Disconnected {
            client: "c1".into(),
            user: "42".into(),
            protocol: "centrifuge",
            code: Some(3008),
            reason: "slow".into(),
        };
        assert_eq!(
            serde_json::to_value(&event).unwrap(),
            serde_json::json!({"name": "disconnected", "client": "c1", "user": "42", "protocol": "centrifuge",
                               "code": 3008, "reason": "slow"})
        );
        let every_kind = [
            Event::ChannelOccupied { channel: "a".into() },
            Event::ChannelVacated { channel: "a".into() },
            Event::UserJoined { channel: "a".into(), user: "u".into(), client: "c".into() },
            Event::UserLeft { channel: "a".into(), user: "u".into(), client: "c".into() },
            Event::Connected { client: "c".into(), user: "u".into(), protocol: "pusher" },
            event,
        ];
        let names: Vec<&str> = every_kind.iter().map(Named::name).collect();
        assert_eq!(names, EVENT_NAMES, "the names a target may ask for are the names events carry");
        for event in &every_kind {
            assert_eq!(serde_json::to_value(event).unwrap()["name"], event.name());
        }
    }
}
