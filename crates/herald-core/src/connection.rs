//! A connection as the hub sees it: who it is, where its frames go, and
//! which channels it is subscribed to. Front-ends own the socket; the hub
//! owns this record.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

use herald_engine::{ChannelName, ClientId, ClientInfo, PresenceEvent, Publication, UserId};

use crate::frame::Frame;
use crate::outbox::Outbox;

/// Encodes pushes for one front-end's protocol. The hub calls it once per
/// publication and protocol, and shares the bytes among all subscribers.
pub trait PushEncoder: Send + Sync + std::fmt::Debug + 'static {
    /// The protocol's name, for metrics (`centrifuge`, `pusher`).
    fn protocol(&self) -> &'static str;

    /// The Pusher app its connections belong to, if any: a command for
    /// one app's users (`Control::Disconnect`'s `app`) reaches only them.
    fn app(&self) -> Option<&str> {
        None
    }

    /// A publication push for every subscriber of `channel`.
    fn encode_publication(&self, channel: &ChannelName, publication: &Publication) -> Frame;

    /// A publication push for the subscribers that take fossil deltas: in
    /// full (`delta` is `None`), or as `delta`, the difference from the
    /// previous publication they received. Called once per publication,
    /// protocol and base, shared like [`Self::encode_publication`]. A
    /// protocol without delta compression sends it in full.
    fn encode_delta_publication(
        &self,
        channel: &ChannelName,
        publication: &Publication,
        delta: Option<&[u8]>,
    ) -> Frame {
        let _ = delta;
        self.encode_publication(channel, publication)
    }

    /// A join or leave push, or `None` when the protocol does not announce
    /// this change to these subscribers. `to_own_user` tells whether they
    /// are connections of the user that joined or left (a protocol may
    /// announce users, and not a user to itself).
    fn encode_presence(&self, channel: &ChannelName, event: &PresenceEvent, to_own_user: bool) -> Option<Frame>;

    /// Whether the protocol has stream positions. One without (Pusher)
    /// has its subscriptions never positioned, whatever the namespace
    /// forces and whoever subscribed the connection: its clients could not
    /// recover what they missed, so they are never ended for it.
    fn has_positions(&self) -> bool {
        true
    }

    /// Whether the server may subscribe a connection to `channel`
    /// (`Control::Subscribe`): a protocol's client can be told of it only
    /// for some channels (Pusher: its app's, and not presence channels,
    /// whose subscriptions name a member).
    fn takes_server_subscription(&self, channel: &ChannelName) -> bool {
        let _ = channel;
        true
    }

    /// Whether every subscription to `channel` asks for its latest
    /// publication (`SubscribeRequest::latest`), whoever made it: a
    /// protocol's convention (Pusher's cache channels).
    fn wants_latest(&self, channel: &ChannelName) -> bool {
        let _ = channel;
        false
    }

    /// What a subscription that asked for its channel's latest publication
    /// (`SubscribeRequest::latest`) is sent right after its reply: that
    /// publication, or, when the channel holds none, what the protocol says
    /// then (Pusher's `pusher:cache_miss`); `None` sends nothing.
    fn encode_latest(&self, channel: &ChannelName, latest: Option<&Publication>) -> Option<Frame> {
        latest.map(|publication| self.encode_publication(channel, publication))
    }
}

/// What a front-end tells the hub about a connection it authenticated.
#[derive(Debug)]
pub struct ConnectionSpec {
    /// The connection's id, unique in the cluster.
    pub client: ClientId,
    /// Who it authenticated as.
    pub user: UserId,
    /// Connection info from the token's `info` claim, as JSON.
    pub conn_info: Option<Bytes>,
    /// Encodes what fanout pushes to it, in its protocol.
    pub encoder: Arc<dyn PushEncoder>,
    /// Where everything it is sent waits to be written.
    pub outbox: Arc<Outbox>,
}

/// Names one subscription of a connection to a channel, apart from any
/// earlier or later one to the same channel. A session that ends a
/// subscription at its deadline names it by this, so that a subscription
/// the server made in its place meanwhile (unsubscribed and subscribed
/// again through the API) is left alone. Given out from one counter of the
/// node's hub, which wraps: two subscriptions of one connection to one
/// channel share a serial only if exactly a multiple of 2^32 subscribes
/// were made on the node between them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubscriptionSerial(pub(crate) u32);

/// Per-subscription state.
#[derive(Debug, Clone, Default)]
pub struct Subscription {
    /// Channel info, as JSON: a subscription token's, a proxy's, or the
    /// server API's.
    pub chan_info: Option<Bytes>,
    /// The subscriber asked for join and leave events.
    pub join_leave: bool,
    /// Who the connection is in this channel, when not its connection's
    /// user (a subscription that names its own member, as Pusher's
    /// presence channels do).
    pub user: Option<UserId>,
}

/// A connection's subscriptions: a short list kept exactly as long as it
/// is. Most connections hold a handful of channels, where a scan is as fast
/// as hashing; an idle connection's one-entry hash map cost about 300 bytes,
/// this costs the entry: 24 bytes, since most subscriptions have no
/// channel info and no member id of their own (see [`Seen`]).
#[derive(Debug, Default)]
pub(crate) struct Subscriptions(Vec<(ChannelName, Option<Box<Seen>>)>);

/// How a subscriber appears to its channel, when not simply as its
/// connection's user: its channel info, and its own member id.
#[derive(Debug)]
pub(crate) struct Seen {
    chan_info: Option<Bytes>,
    user: Option<UserId>,
}

impl Seen {
    fn of(subscription: Subscription) -> Option<Box<Self>> {
        let Subscription { chan_info, user, join_leave: _ } = subscription;
        (chan_info.is_some() || user.is_some()).then(|| Box::new(Self { chan_info, user }))
    }
}

impl Subscriptions {
    fn position(&self, channel: &ChannelName) -> Option<usize> {
        self.0.iter().position(|(c, _)| c == channel)
    }

    /// How the subscriber appears in `channel` (`Some(None)`: as its
    /// connection's user, with no channel info); `None` if not subscribed.
    pub(crate) fn seen(&self, channel: &ChannelName) -> Option<Option<&Seen>> {
        self.0.iter().find(|(c, _)| c == channel).map(|(_, seen)| seen.as_deref())
    }

    pub(crate) fn contains_key(&self, channel: &ChannelName) -> bool {
        self.position(channel).is_some()
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &ChannelName> {
        self.0.iter().map(|(c, _)| c)
    }

    /// Adds or replaces the subscription to `channel`.
    pub(crate) fn insert(&mut self, channel: ChannelName, subscription: Subscription) {
        let seen = Seen::of(subscription);
        match self.0.iter_mut().find(|(c, _)| *c == channel) {
            Some(entry) => entry.1 = seen,
            None => push_exact(&mut self.0, (channel, seen)),
        }
    }

    /// Removes the subscription to `channel`; false if there was none.
    pub(crate) fn remove(&mut self, channel: &ChannelName) -> bool {
        remove_first(&mut self.0, |(c, _)| c == channel).is_some()
    }
}

/// Appends without the spare room a growing `Vec` leaves: for the short
/// per-connection lists idle connections keep.
pub(crate) fn push_exact<T>(list: &mut Vec<T>, item: T) {
    list.reserve_exact(1);
    list.push(item);
}

/// Removes the first item that matches (order is not kept), and gives back
/// room the list no longer needs.
pub(crate) fn remove_first<T>(list: &mut Vec<T>, matches: impl Fn(&T) -> bool) -> Option<T> {
    let removed = list.swap_remove(list.iter().position(matches)?);
    if list.capacity() > list.len().saturating_mul(2) {
        list.shrink_to_fit();
    }
    Some(removed)
}

/// A registered connection.
#[derive(Debug)]
pub struct Connection {
    pub(crate) client: ClientId,
    /// Changes only when the connection authenticates after it connected
    /// (see `Hub::set_user`).
    pub(crate) user: Mutex<UserId>,
    /// Changes when a refresh brings new info (see [`Connection::set_info`]).
    pub(crate) conn_info: Mutex<Option<Bytes>>,
    pub(crate) encoder: Arc<dyn PushEncoder>,
    pub(crate) outbox: Arc<Outbox>,
    pub(crate) subscriptions: Mutex<Subscriptions>,
}

impl Connection {
    pub(crate) fn new(spec: ConnectionSpec) -> Self {
        Self {
            client: spec.client,
            user: Mutex::new(spec.user),
            conn_info: Mutex::new(spec.conn_info),
            encoder: spec.encoder,
            outbox: spec.outbox,
            subscriptions: Mutex::new(Subscriptions::default()),
        }
    }

    /// The connection's id.
    pub fn client(&self) -> &ClientId {
        &self.client
    }

    /// Its user.
    pub fn user(&self) -> UserId {
        self.user.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether its user is `user` (without a copy of the id).
    pub fn is_user(&self, user: &UserId) -> bool {
        *self.user.lock().unwrap_or_else(|e| e.into_inner()) == *user
    }

    /// Replaces its connection info (a refresh's token or proxy gave a new
    /// one): its publications carry it from now on, and its presence
    /// entries from their next refresh (`Hub`'s heartbeat), as in
    /// Centrifugo.
    pub fn set_info(&self, info: Bytes) {
        *self.conn_info.lock().unwrap_or_else(|e| e.into_inner()) = Some(info);
    }

    /// Its outbox.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    pub(crate) fn subscriptions(&self) -> std::sync::MutexGuard<'_, Subscriptions> {
        self.subscriptions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether it is subscribed to `channel`.
    pub fn is_subscribed(&self, channel: &ChannelName) -> bool {
        self.subscriptions().contains_key(channel)
    }

    /// The channels this connection is subscribed to.
    pub fn channels(&self) -> Vec<ChannelName> {
        self.subscriptions().keys().cloned().collect()
    }

    /// How this connection appears as a publisher in `channel`.
    pub fn info_in(&self, channel: &ChannelName) -> ClientInfo {
        let (chan_info, user) = match self.subscriptions().seen(channel).flatten() {
            Some(seen) => (seen.chan_info.clone(), seen.user.clone()),
            None => (None, None),
        };
        ClientInfo {
            user: user.unwrap_or_else(|| self.user()),
            client: self.client.clone(),
            conn_info: self.conn_info.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            chan_info,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every subscription of every connection holds one: a few bytes more
    /// here are a few bytes more per idle connection.
    #[test]
    fn a_subscription_entry_stays_within_its_budget() {
        assert!(std::mem::size_of::<(ChannelName, Option<Box<Seen>>)>() <= 24);
    }

    #[test]
    fn only_a_subscription_with_channel_info_or_its_own_member_keeps_them() {
        assert!(Seen::of(Subscription { join_leave: true, ..Subscription::default() }).is_none());
        let member = UserId::new("member-7").unwrap();
        let seen = Seen::of(Subscription { user: Some(member.clone()), ..Subscription::default() }).unwrap();
        assert_eq!(seen.user, Some(member));
        let info = Bytes::from_static(br#"{"role":"host"}"#);
        let seen = Seen::of(Subscription { chan_info: Some(info.clone()), ..Subscription::default() }).unwrap();
        assert_eq!(seen.chan_info, Some(info));
    }
}
