//! A connection as the hub sees it: who it is, where its frames go, and
//! which channels it is subscribed to. Front-ends own the socket; the hub
//! owns this record.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use herald_engine::{ChannelName, ClientId, ClientInfo, Publication, UserId};

use crate::outbox::Outbox;

/// Encodes pushes for one front-end's protocol. The hub calls it once per
/// publication and protocol, and shares the bytes among all subscribers.
pub trait PushEncoder: Send + Sync + std::fmt::Debug + 'static {
    fn encode_publication(&self, channel: &ChannelName, publication: &Publication) -> Bytes;
    fn encode_join(&self, channel: &ChannelName, info: &ClientInfo) -> Bytes;
    fn encode_leave(&self, channel: &ChannelName, info: &ClientInfo) -> Bytes;
}

/// What a front-end tells the hub about a connection it authenticated.
#[derive(Debug)]
pub struct ConnectionSpec {
    pub client: ClientId,
    pub user: UserId,
    /// Connection info from the token's `info` claim, as JSON.
    pub conn_info: Option<Bytes>,
    pub encoder: Arc<dyn PushEncoder>,
    pub outbox: Arc<Outbox>,
}

/// Per-subscription state.
#[derive(Debug, Clone, Default)]
pub struct Subscription {
    /// Channel info from the subscription token, as JSON.
    pub chan_info: Option<Bytes>,
    /// The subscriber asked for join and leave events.
    pub join_leave: bool,
}

/// A registered connection.
#[derive(Debug)]
pub struct Connection {
    pub(crate) client: ClientId,
    pub(crate) user: UserId,
    pub(crate) conn_info: Option<Bytes>,
    pub(crate) encoder: Arc<dyn PushEncoder>,
    pub(crate) outbox: Arc<Outbox>,
    pub(crate) subscriptions: Mutex<HashMap<ChannelName, Subscription>>,
}

impl Connection {
    pub(crate) fn new(spec: ConnectionSpec) -> Self {
        Self {
            client: spec.client,
            user: spec.user,
            conn_info: spec.conn_info,
            encoder: spec.encoder,
            outbox: spec.outbox,
            subscriptions: Mutex::new(HashMap::new()),
        }
    }

    pub fn client(&self) -> &ClientId {
        &self.client
    }

    pub fn user(&self) -> &UserId {
        &self.user
    }

    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    pub(crate) fn subscriptions(&self) -> std::sync::MutexGuard<'_, HashMap<ChannelName, Subscription>> {
        self.subscriptions.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_subscribed(&self, channel: &ChannelName) -> bool {
        self.subscriptions().contains_key(channel)
    }

    /// The channels this connection is subscribed to.
    pub fn channels(&self) -> Vec<ChannelName> {
        self.subscriptions().keys().cloned().collect()
    }

    /// How this connection appears as a publisher in `channel`.
    pub fn info_in(&self, channel: &ChannelName) -> ClientInfo {
        ClientInfo {
            user: self.user.clone(),
            client: self.client.clone(),
            conn_info: self.conn_info.clone(),
            chan_info: self.subscriptions().get(channel).and_then(|s| s.chan_info.clone()),
        }
    }
}
