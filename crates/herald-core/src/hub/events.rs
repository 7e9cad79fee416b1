//! What the engine delivers, applied to local connections: publications and
//! joins/leaves fanned out to subscribers, control commands applied to the
//! named users' connections.

use std::sync::Arc;

use bytes::Bytes;
use herald_engine::{ChannelName, ClientId, Control, EngineEvent, Publication, UserId};
use tokio::time::Instant;

use super::{Hub, SubscribeRequest, Subscriber};
use crate::connection::{Connection, PresenceChange};
use crate::error::HubError;
use crate::hub::SubscribeAccess;
use crate::outbox::{ConnEvent, Outbox, Outgoing, UnsubscribeReason};

/// One encoding per protocol, shared by every subscriber speaking it.
#[derive(Default)]
struct SharedFrames(Vec<(*const (), Option<Bytes>)>);

impl SharedFrames {
    fn get(&mut self, conn: &Connection, encode: impl FnOnce() -> Option<Bytes>) -> Option<Bytes> {
        let key = Arc::as_ptr(&conn.encoder) as *const ();
        if let Some((_, bytes)) = self.0.iter().find(|(k, _)| *k == key) {
            return bytes.clone();
        }
        let bytes = encode();
        self.0.push((key, bytes.clone()));
        bytes
    }
}

/// Wakes `outboxes` at `due`: one timer for every subscriber a delayed
/// publication reached.
fn wake_at(runtime: &tokio::runtime::Handle, due: Instant, outboxes: Vec<Arc<Outbox>>) {
    runtime.spawn(async move {
        tokio::time::sleep_until(due).await;
        outboxes.iter().for_each(|outbox| outbox.wake());
    });
}

impl Hub {
    pub(super) fn on_engine_event(self: Arc<Self>, event: EngineEvent) {
        match event {
            EngineEvent::Publication { channel, publication } => self.fanout(&channel, &publication),
            EngineEvent::Presence { channel, event } => self.fanout_presence(
                &channel,
                PresenceChange { info: event.info(), joined: event.is_join(), user_changed: event.user_changed() },
            ),
            EngineEvent::Control(command) => self.on_control(command),
            EngineEvent::Interrupted => self.on_interrupted(),
        }
    }

    /// Publications may have been missed: every positioned subscription is
    /// ended with "insufficient state", and its client resubscribes and
    /// recovers from history (or learns it cannot). Others are at-most-once.
    fn on_interrupted(self: Arc<Self>) {
        let mut affected = Vec::new();
        self.channels.for_each_shard(|shard| {
            for (channel, subscribers) in shard {
                for subscriber in subscribers.values().filter(|s| s.positioned) {
                    affected.push((subscriber.conn.clone(), channel.clone()));
                }
            }
        });
        if affected.is_empty() {
            return;
        }
        tracing::info!(subscriptions = affected.len(), "engine interrupted: positioned subscriptions will recover");
        tokio::spawn(async move {
            for (conn, channel) in affected {
                if self.unsubscribe(&conn, &channel).await {
                    let reason = UnsubscribeReason::InsufficientState;
                    let _ = conn.outbox.push(Outgoing::Event(ConnEvent::Unsubscribed { channel, reason }));
                }
            }
        });
    }

    /// Delivers one publication to every local subscriber of its channel.
    fn fanout(&self, channel: &ChannelName, publication: &Arc<Publication>) {
        let shard = self.channels.read(channel);
        let Some(subscribers) = shard.get(channel) else { return };
        let delay = self.config.rules.resolve(channel).map(|o| o.write_delay).unwrap_or_default();
        // Outside a runtime (never in the server) nothing could wait: no delay.
        let delayed = match delay.is_zero() {
            true => None,
            false => tokio::runtime::Handle::try_current().ok().map(|runtime| (runtime, Instant::now() + delay)),
        };
        let mut to_wake = Vec::new();
        let mut frames = SharedFrames::default();
        for subscriber in subscribers.values() {
            if let Some(buffer) = &subscriber.recovering {
                // Merged with history once the recovery read is done.
                buffer.lock().unwrap_or_else(|e| e.into_inner()).push(publication.clone());
                continue;
            }
            if subscriber.live_after.as_ref().is_some_and(|after| {
                publication.offset.get() != 0 && publication.offset <= after.offset && publication.epoch == after.epoch
            }) {
                // Already sent with the subscribe reply.
                continue;
            }
            let conn = &subscriber.conn;
            if publication.exclude.as_ref() == Some(&conn.client) {
                continue;
            }
            let Some(frame) = frames.get(conn, || Some(conn.encoder.encode_publication(channel, publication))) else {
                continue;
            };
            let queued = match &delayed {
                None => conn.outbox.push(Outgoing::Frame(frame)).map(|_| false),
                Some((_, due)) => conn.outbox.push_delayed(Outgoing::Frame(frame), *due),
            };
            match queued {
                Ok(true) => to_wake.push(conn.outbox.clone()),
                Ok(false) => {}
                Err(_) => {
                    tracing::debug!(client = %conn.client, %channel, "publication not queued: connection closing")
                }
            }
        }
        if let Some((runtime, due)) = delayed.filter(|_| !to_wake.is_empty()) {
            wake_at(&runtime, due, to_wake);
        }
    }

    fn fanout_presence(&self, channel: &ChannelName, change: PresenceChange<'_>) {
        let force = self.config.rules.resolve(channel).is_ok_and(|o| o.force_push_join_leave);
        let shard = self.channels.read(channel);
        let Some(subscribers) = shard.get(channel) else { return };
        let mut frames = SharedFrames::default();
        for subscriber in subscribers.values() {
            if subscriber.recovering.is_some() || !(force || subscriber.join_leave) {
                continue;
            }
            let conn = &subscriber.conn;
            if subscriber.user == change.info.user && !conn.encoder.presence_to_own_user() {
                continue;
            }
            if let Some(frame) = frames.get(conn, || conn.encoder.encode_presence(channel, change)) {
                let _ = conn.outbox.push(Outgoing::Frame(frame));
            }
        }
    }

    fn local_connections(&self, user: &UserId, client: Option<&ClientId>) -> Vec<Arc<Connection>> {
        let users = self.users.read(user);
        let Some(conns) = users.get(user) else { return Vec::new() };
        conns.iter().filter(|c| client.is_none_or(|id| *id == c.client)).cloned().collect()
    }

    fn on_control(self: Arc<Self>, command: Control) {
        match command {
            Control::Disconnect { user, client, reason } => {
                for conn in self.local_connections(&user, client.as_ref()) {
                    conn.outbox.close(reason.clone());
                }
            }
            Control::Subscribe { user, channel, client } => {
                let conns = self.local_connections(&user, client.as_ref());
                if conns.is_empty() {
                    return;
                }
                tokio::spawn(async move {
                    for conn in conns {
                        let event = Outgoing::Event(ConnEvent::Subscribed { channel: channel.clone() });
                        let request = SubscribeRequest::default();
                        let result =
                            self.subscribe(&conn, &channel, SubscribeAccess::Server, request, |_| Some(event)).await;
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
                let conns = self.local_connections(&user, client.as_ref());
                if conns.is_empty() {
                    return;
                }
                tokio::spawn(async move {
                    for conn in conns {
                        if self.unsubscribe(&conn, &channel).await {
                            let reason = UnsubscribeReason::Server;
                            let event = ConnEvent::Unsubscribed { channel: channel.clone(), reason };
                            let _ = conn.outbox.push(Outgoing::Event(event));
                        }
                    }
                });
            }
            Control::Refresh { user, client, expire_at, expired } => {
                for conn in self.local_connections(&user, client.as_ref()) {
                    let _ = conn.outbox.push(Outgoing::Event(ConnEvent::Refresh { expire_at, expired }));
                }
            }
        }
    }

    /// Switches a recovering subscriber to live delivery, returning what it
    /// buffered meanwhile.
    pub(super) fn go_live(subscriber: &mut Subscriber) -> Vec<Arc<Publication>> {
        match subscriber.recovering.take() {
            Some(buffer) => buffer.into_inner().unwrap_or_else(|e| e.into_inner()),
            None => Vec::new(),
        }
    }
}
