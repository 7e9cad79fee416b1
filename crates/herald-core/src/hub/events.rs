//! What the engine delivers, applied to local connections: publications
//! and joins/leaves handed to fanout, control commands applied to the named
//! users' connections, and an interrupted engine turned into recoveries.

use std::sync::Arc;

use bytes::Bytes;
use herald_engine::{Control, EngineEvent};

use super::channels::Stale;
use super::{Hub, SubscribeAccess, SubscribeOutcome, SubscribeRequest};
use crate::error::HubError;
use crate::outbox::{ConnEvent, Outgoing, UnsubscribeReason};

impl Hub {
    pub(super) fn on_engine_event(self: Arc<Self>, event: EngineEvent) {
        match event {
            EngineEvent::Publication { channel, publication } => {
                let rules = self.rules();
                let delay = rules.resolve(&channel).map(|o| o.write_delay).unwrap_or_default();
                let started = std::time::Instant::now();
                let (stale, queued, last_batch) = self.channels.deliver(&channel, &publication, delay);
                if let Some(meter) = self.meter.get() {
                    meter.fanned_out(queued, started.elapsed());
                }
                drop(last_batch);
                let queued_count = u64::try_from(queued).unwrap_or(u64::MAX);
                self.counters.delivered.fetch_add(queued_count, std::sync::atomic::Ordering::Relaxed);
                if self.watchers.deliver(&channel, &publication) {
                    let (hub, channel) = (self.clone(), channel.clone());
                    tokio::spawn(async move { hub.drop_interest_if_unused(&channel).await });
                }
                if !stale.is_empty() {
                    tracing::warn!(
                        %channel,
                        subscriptions = stale.len(),
                        "publications missed here (a gap or a new epoch): those subscriptions will recover"
                    );
                    self.end_stale(stale);
                }
            }
            EngineEvent::Presence { channel, event } => {
                let rules = self.rules();
                let to_everyone = rules.resolve(&channel).is_ok_and(|o| o.force_push_join_leave);
                self.channels.deliver_presence(&channel, &event, to_everyone);
            }
            EngineEvent::Control(command) => self.on_control(command),
            EngineEvent::Interrupted => self.on_interrupted(),
        }
    }

    /// Publications may have been missed: every positioned subscription is
    /// ended with "insufficient state", and its client resubscribes and
    /// recovers from history (or learns it cannot). Others are at-most-once.
    fn on_interrupted(self: Arc<Self>) {
        if let Some(meter) = self.meter.get() {
            meter.engine_interrupted();
        }
        self.presence.link_broke();
        let affected = self.channels.positioned();
        if affected.is_empty() {
            return;
        }
        tracing::warn!(subscriptions = affected.len(), "engine interrupted: positioned subscriptions will recover");
        self.end_stale(affected);
    }

    /// Ends each subscription with "insufficient state": its client
    /// resubscribes and recovers from history (or learns it cannot).
    pub(super) fn end_stale(self: Arc<Self>, subscriptions: Vec<Stale>) {
        tokio::spawn(async move {
            for Stale { conn, channel, serial } in subscriptions {
                self.end_stale_one(&conn, &channel, serial).await;
            }
        });
    }

    fn on_control(self: Arc<Self>, command: Control) {
        match command {
            Control::ChannelsAsked { survey, from, pattern } => self.answer_channels(survey, from, pattern),
            Control::ChannelsAnswered { survey, to, node, channels, truncated } => {
                if to == self.config.node {
                    self.channels_answered(survey, node, channels, truncated);
                }
            }
            Control::Relay { to, session, data } => {
                if to == self.config.node {
                    if let Some(relay) = self.relay.get() {
                        relay.deliver(session, data);
                    }
                }
            }
            Control::Disconnect { user, client, reason, app } => {
                for conn in self.registry.of_user(&user, client.as_ref()) {
                    if app.is_none() || conn.encoder.app() == app.as_deref() {
                        conn.outbox.close(reason.clone());
                    }
                }
            }
            Control::Subscribe { user, channel, client, info, data, expire_at } => {
                let conns = self.registry.of_user(&user, client.as_ref());
                if conns.is_empty() {
                    return;
                }
                let (info, data) = (info.map(Bytes::from), data.map(Bytes::from));
                tokio::spawn(async move {
                    for conn in conns {
                        if !conn.encoder.takes_server_subscription(&channel) {
                            tracing::debug!(client = %conn.client, %channel, "not a channel its protocol can be subscribed to by the server");
                            continue;
                        }
                        let mut request = SubscribeRequest::default();
                        request.subscription.chan_info = info.clone();
                        let event = |outcome: &SubscribeOutcome| {
                            Some(Outgoing::Event(ConnEvent::Subscribed {
                                channel: channel.clone(),
                                position: outcome.positioned.then(|| outcome.position.clone()),
                                recoverable: outcome.recoverable,
                                data: data.clone(),
                                expire_at,
                                serial: outcome.serial,
                            }))
                        };
                        let result = self.subscribe(&conn, &channel, SubscribeAccess::Server, request, event).await;
                        match result {
                            Ok(_) | Err(HubError::AlreadySubscribed) => {}
                            Err(error) => {
                                tracing::warn!(client = %conn.client, %channel, %error, "server-side subscribe failed")
                            }
                        }
                    }
                });
            }
            Control::Unsubscribe { user, channel, client } => {
                let conns = self.registry.of_user(&user, client.as_ref());
                if conns.is_empty() {
                    return;
                }
                tokio::spawn(async move {
                    for conn in conns {
                        self.unsubscribe_telling(&conn, &channel, UnsubscribeReason::Server).await;
                    }
                });
            }
            Control::Refresh { user, client, expire_at, expired, info } => {
                let info = info.map(Bytes::from);
                for conn in self.registry.of_user(&user, client.as_ref()) {
                    if let Some(info) = &info {
                        conn.set_info(info.clone());
                    }
                    let _ = conn.outbox.push(Outgoing::Event(ConnEvent::Refresh { expire_at, expired }));
                }
            }
        }
    }
}
