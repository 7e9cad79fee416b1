//! Subscribing and unsubscribing: permissions, limits, engine interest,
//! recovery at the seam between history and live delivery, presence and
//! occupancy. See the invariants in the parent module.

use std::sync::Arc;

use herald_engine::{ChannelName, HistoryOptions, HistoryQuery};

use super::channels::{in_stream_order, Followed, Next, Removed, Subscriber};
use super::recovery::{self, Recovery};
use super::{Hub, SubscribeAccess, SubscribeOutcome, SubscribeRequest};
use crate::connection::{Connection, SubscriptionSerial};
use crate::error::HubError;
use crate::namespace::{ChannelRules, DeltaType, NamespaceOptions, SubscribePolicy};
use crate::outbox::{ConnEvent, Outgoing, UnsubscribeReason};

impl Hub {
    /// Checks whether `conn` may subscribe to `channel` on these grounds.
    pub fn authorize_subscribe(
        &self,
        conn: &Connection,
        channel: &ChannelName,
        access: SubscribeAccess,
    ) -> Result<NamespaceOptions, HubError> {
        let rules = self.rules();
        let options = rules.resolve(channel)?;
        if access == SubscribeAccess::Client {
            if ChannelRules::is_private(channel) {
                return Err(HubError::PermissionDenied);
            }
            let allowed = match options.subscribe {
                SubscribePolicy::Anyone => true,
                SubscribePolicy::Authenticated => !conn.user().is_anonymous(),
                SubscribePolicy::Token => false,
            };
            if !allowed {
                return Err(HubError::PermissionDenied);
            }
            if options.user_limited && !ChannelRules::user_admitted(channel, &conn.user()) {
                return Err(HubError::PermissionDenied);
            }
        }
        Ok(options.clone())
    }

    /// Subscribes `conn` to `channel`. `reply` encodes the front-end's reply
    /// from the outcome; it is queued ahead of the channel's next
    /// publication (and of anything recovered that is not in it).
    ///
    /// The channel's interest lock is held while the subscriber is added
    /// and while it goes live, not while its history is read nor while its
    /// occupancy is written and its join announced: a thousand clients
    /// recovering in one channel read and join side by side instead of one
    /// engine round trip after another. Should the subscription end while
    /// its history is read (a server-side unsubscribe, a disconnect, the
    /// engine interrupted), the subscribe fails with
    /// [`HubError::Interrupted`], which clients retry; should it end while
    /// its join is announced, its leave is announced after the join.
    pub async fn subscribe(
        &self,
        conn: &Arc<Connection>,
        channel: &ChannelName,
        access: SubscribeAccess,
        request: SubscribeRequest,
        reply: impl FnOnce(&SubscribeOutcome) -> Option<Outgoing>,
    ) -> Result<SubscribeOutcome, HubError> {
        let options = &self.authorize_subscribe(conn, channel, access)?;
        let mut request = request;
        request.latest |= conn.encoder.wants_latest(channel);
        let interest = self.channels.lock_interest(channel).await;
        self.check_subscription_limits(conn, channel, options)?;

        let history = options.history();
        // A protocol without positions (Pusher) is never forced into them.
        let forced = |option: bool| option && conn.encoder.has_positions();
        let recoverable = history.is_some() && (request.recoverable || forced(options.force_recovery));
        let positioned =
            recoverable || (history.is_some() && (request.positioned || forced(options.force_positioning)));

        if !self.channels.contains(channel) && !self.watchers.watching(channel) {
            self.engine.broker().subscribe(channel).await?;
        }
        let delta = request.delta && options.allowed_delta_types.contains(&DeltaType::Fossil);
        let subscription = &request.subscription;
        let reads = (positioned, positioned || request.latest);
        let serial = self.channels.next_serial();
        let subscriber = Subscriber::new(conn.clone(), serial, subscription, reads, delta);
        let waiting = subscriber.waiting();
        // Until its join is told, presence refreshes leave its entry alone
        // (noted before a refresh can list the subscription).
        let _unannounced = self.presence.expect_join(channel, &conn.client, options);
        let mut outcome = SubscribeOutcome { positioned, recoverable, delta, serial, ..Default::default() };
        // A subscriber that buffers nothing is live as soon as it is added:
        // its reply is queued in the same step, ahead of the channel's next
        // publication. One that recovers queues it as it goes live.
        let mut reply = Some(reply);
        let (name, subscribers) = self.channels.add(channel, subscriber, || {
            if let Some(reply) = reply.take_if(|_| waiting.is_none()).and_then(|reply| reply(&outcome)) {
                // A full outbox closes itself as slow (see `go_live_after`).
                let _ = conn.outbox.push(reply);
            }
        });
        conn.subscriptions().insert(name, request.subscription.clone());

        let mut occupancy = self.occupancy.changed(channel, subscribers);
        let interest = match (&history, &waiting) {
            (Some(history), Some(waiting)) => {
                drop(interest);
                // Made before the read, which may be slow: the channel's
                // other counts wait for it.
                if let Some(write) = occupancy.take() {
                    write.make().await;
                }
                let read = match self.read_recovery(channel, &request, options, history, &mut outcome).await {
                    Err(error) if request.latest && !positioned => {
                        // Live without it, told there is none: the client
                        // may fetch the state elsewhere (as after a miss).
                        tracing::warn!(%channel, %error, "a channel's latest publication could not be read; the subscriber is told it has none (check the engine)");
                        Ok(())
                    }
                    read => read,
                };
                let interest = self.channels.lock_interest(channel).await;
                let ours = self.channels.waits_in(channel, &conn.client, waiting);
                if let Err(error) = read {
                    if ours {
                        self.remove_unjoined(conn, channel).await;
                    }
                    return Err(error);
                }
                if !ours {
                    return Err(HubError::Interrupted);
                }
                interest
            }
            _ => interest,
        };

        let seam = match reply {
            Some(reply) => {
                self.go_live_after(conn, channel, (&outcome, request.latest && !outcome.was_recovering), reply)
            }
            None => Seam::Live,
        };
        match seam {
            Seam::Live => {}
            Seam::Gone => return Err(HubError::Interrupted),
            Seam::Stale => {
                // What came while the subscription recovered does not
                // continue the stream it read: this node missed
                // publications. The client is told at once, after its
                // reply, and recovers again.
                self.remove_unjoined(conn, channel).await;
                let reason = UnsubscribeReason::InsufficientState;
                let _ = conn.outbox.push(Outgoing::Event(ConnEvent::Unsubscribed { channel: channel.clone(), reason }));
                return Ok(outcome);
            }
        }

        // Told outside the lock, side by side with the channel's other
        // joins; the leaves of its user wait for it.
        let info = conn.info_in(channel);
        let joining = self.presence.begin_join(channel, &info, options);
        drop(interest);
        // The count first, so that a channel is told occupied before its
        // first member is told arrived. (On an early return above, the
        // write is made in the background.)
        if let Some(write) = occupancy {
            write.make().await;
        }
        self.presence.announce(info, channel, options, true).await;
        drop(joining);
        Ok(outcome)
    }

    /// Removes a subscription whose join was never announced (its history
    /// read failed, or what it buffered was stale) and notes the count it
    /// leaves, written in the background. It has no presence entry to
    /// remove: refreshes leave a subscription's entry alone until its join
    /// is told, and the subscribe is still under way. The caller holds the
    /// channel's interest lock.
    async fn remove_unjoined(&self, conn: &Arc<Connection>, channel: &ChannelName) {
        if let Some(removed) = self.remove_subscriber(conn, channel).await {
            // Dropped at once: made by a task of its own.
            drop(self.occupancy.changed(channel, removed.left));
        }
    }

    /// Queues the reply, the channel's latest publication when the
    /// subscriber asked for it (`latest`), then what was buffered above the
    /// position the read found (in the stream's order, but for what the
    /// publisher excluded it from), and switches the subscriber to live
    /// delivery, all under the shard lock fanout takes.
    /// `Seam::Stale` if what was buffered does not continue the stream from
    /// the reply's position, `Seam::Gone` (and nothing queued) if the
    /// subscription is no longer there.
    fn go_live_after(
        &self,
        conn: &Arc<Connection>,
        channel: &ChannelName,
        (outcome, latest): (&SubscribeOutcome, bool),
        reply: impl FnOnce(&SubscribeOutcome) -> Option<Outgoing>,
    ) -> Seam {
        let mut shard = self.channels.write(channel);
        let Some(subscriber) = shard.get_mut(channel).and_then(|s| s.get_mut(&conn.client)) else { return Seam::Gone };
        let followed = match (outcome.positioned, latest) {
            (true, _) => Some(Followed::at(&outcome.position)),
            (false, true) => Some(Followed::above(&outcome.position)),
            (false, false) => None,
        };
        let mut buffered = subscriber.go_live(followed);
        in_stream_order(&mut buffered, &outcome.position.epoch);
        let (followed, delta) = (subscriber.followed(), subscriber.delta());
        if let Some(reply) = reply(outcome) {
            // A full outbox closes itself as slow; the session ends and
            // cleans up this subscription with the rest.
            let _ = conn.outbox.push(reply);
        }
        if let Some(frame) = latest.then(|| conn.encoder.encode_latest(channel, outcome.latest.as_deref())).flatten() {
            let _ = conn.outbox.push(Outgoing::Frame(frame));
        }
        for publication in &buffered {
            match followed.map_or(Next::Send, |f| f.next(publication)) {
                Next::Send if publication.exclude.as_ref() == Some(&conn.client) => {}
                Next::Send => {
                    let frame = match delta {
                        // In full; the next live one may be a delta from it.
                        Some(base) => {
                            base.advance(publication);
                            conn.encoder.encode_delta_publication(channel, publication, None)
                        }
                        None => conn.encoder.encode_publication(channel, publication),
                    };
                    let _ = conn.outbox.push(Outgoing::Frame(frame));
                }
                Next::Skip => {}
                Next::Stale => return Seam::Stale,
            }
        }
        Seam::Live
    }

    /// Reads the stream position and, when recovering, what was missed.
    async fn read_recovery(
        &self,
        channel: &ChannelName,
        request: &SubscribeRequest,
        options: &NamespaceOptions,
        history: &HistoryOptions,
        outcome: &mut SubscribeOutcome,
    ) -> Result<(), HubError> {
        let since = request.recover_since.clone().filter(|_| outcome.recoverable);
        let query = match &since {
            Some(since) => HistoryQuery {
                since: Some(since.clone()),
                limit: options.recovery_max_publications.saturating_add(1),
                reverse: false,
            },
            None if request.latest => HistoryQuery { since: None, limit: 1, reverse: true },
            None => HistoryQuery::default(),
        };
        let read = self.engine.history().history(channel, &query, history).await?;
        outcome.position = read.position.clone();
        if since.is_none() && request.latest {
            outcome.latest = read.publications.first().cloned();
        }
        if let Some(since) = since {
            outcome.was_recovering = true;
            match recovery::decide(&since, read, options.recovery_max_publications) {
                Recovery::Recovered(publications) => {
                    outcome.recovered = true;
                    outcome.publications = publications;
                }
                Recovery::Impossible => outcome.recovered = false,
            }
            if let Some(meter) = self.meter.get() {
                meter.recovery(outcome.recovered);
            }
            if !outcome.recovered && request.reject_unrecovered {
                return Err(HubError::UnrecoverablePosition);
            }
        }
        Ok(())
    }

    fn check_subscription_limits(
        &self,
        conn: &Connection,
        channel: &ChannelName,
        options: &NamespaceOptions,
    ) -> Result<(), HubError> {
        let subscriptions = conn.subscriptions();
        if subscriptions.contains_key(channel) {
            return Err(HubError::AlreadySubscribed);
        }
        let total_limit = self.config.max_channels_per_connection;
        if total_limit > 0 && subscriptions.len() >= total_limit {
            return Err(HubError::LimitExceeded("too many channels for this connection"));
        }
        let ns_limit = options.max_channels_per_connection;
        if ns_limit > 0 {
            let namespace = ChannelRules::namespace_of(channel);
            let in_namespace = subscriptions.keys().filter(|c| ChannelRules::namespace_of(c) == namespace).count();
            if in_namespace >= ns_limit {
                return Err(HubError::LimitExceeded("too many channels in this namespace"));
            }
        }
        Ok(())
    }

    /// Unsubscribes `conn` from `channel`. True if a live subscription
    /// ended, one its client was told of (the caller tells it of the end).
    /// A subscription still being made ends too, and its subscribe fails
    /// with [`HubError::Interrupted`], which tells the client instead: false
    /// then, as when `conn` was not subscribed.
    pub async fn unsubscribe(&self, conn: &Arc<Connection>, channel: &ChannelName) -> bool {
        self.unsubscribe_if(conn, channel, None, None).await
    }

    /// Unsubscribes `conn` from `channel` for its session's sake, as the
    /// server API does: if a live subscription ended, its session is told
    /// ([`ConnEvent::Unsubscribed`] with `reason`) at once, before a later
    /// subscribe of the channel can queue its own event, so that the
    /// session reads the two in the order they happened.
    pub async fn unsubscribe_telling(
        &self,
        conn: &Arc<Connection>,
        channel: &ChannelName,
        reason: UnsubscribeReason,
    ) -> bool {
        self.unsubscribe_if(conn, channel, None, Some(reason)).await
    }

    /// Unsubscribes `conn` from `channel` as [`Hub::unsubscribe`] does, but
    /// only if its subscription there is still the one `serial` names
    /// (see [`SubscribeOutcome::serial`]): a session ending a subscription
    /// at its deadline leaves alone one the server made in its place while
    /// the session was busy. False if it was another, or none.
    pub async fn unsubscribe_subscription(
        &self,
        conn: &Arc<Connection>,
        channel: &ChannelName,
        serial: SubscriptionSerial,
    ) -> bool {
        self.unsubscribe_if(conn, channel, Some(serial), None).await
    }

    /// Ends a subscription that missed publications, if it is still the
    /// one `serial` names, and tells its session (insufficient state: its
    /// client recovers).
    pub(super) async fn end_stale_one(
        &self,
        conn: &Arc<Connection>,
        channel: &ChannelName,
        serial: SubscriptionSerial,
    ) {
        self.unsubscribe_if(conn, channel, Some(serial), Some(UnsubscribeReason::InsufficientState)).await;
    }

    /// Which subscription `conn` has to `channel` (see
    /// [`SubscribeOutcome::serial`]); `None` if it has none.
    pub fn subscription_serial(&self, conn: &Connection, channel: &ChannelName) -> Option<SubscriptionSerial> {
        self.channels.serial_of(channel, &conn.client)
    }

    async fn unsubscribe_if(
        &self,
        conn: &Arc<Connection>,
        channel: &ChannelName,
        serial: Option<SubscriptionSerial>,
        tell: Option<UnsubscribeReason>,
    ) -> bool {
        let interest = self.channels.lock_interest(channel).await;
        // Under the interest lock, which every subscribe and unsubscribe
        // of the channel takes: the subscription checked is the one removed.
        if serial.is_some_and(|serial| self.channels.serial_of(channel, &conn.client) != Some(serial)) {
            return false;
        }
        // Who the connection was in the channel, read before the subscription goes.
        let info = conn.info_in(channel);
        let Some(removed) = self.remove_subscriber(conn, channel).await else { return false };
        if let Some(reason) = tell.filter(|_| removed.joined) {
            // A full outbox closes itself as slow.
            let _ = conn.outbox.push(Outgoing::Event(ConnEvent::Unsubscribed { channel: channel.clone(), reason }));
        }
        // Noted before the leave, which may wait for joins: should this
        // future be dropped there, the count is still written.
        let occupancy = self.occupancy.changed(channel, removed.left);
        if let Ok(options) = self.rules().resolve(channel) {
            match removed.joined {
                true => self.presence.announce(info, channel, options, false).await,
                // It never joined: no leave either.
                false => self.presence.withdraw(&info, channel, options).await,
            }
        }
        drop(interest);
        if let Some(write) = occupancy {
            write.make().await;
        }
        removed.joined
    }

    /// Removes the subscription and says what that left, or `None` if
    /// `conn` was not subscribed. The caller holds the channel's interest
    /// lock and updates occupancy.
    async fn remove_subscriber(&self, conn: &Arc<Connection>, channel: &ChannelName) -> Option<Removed> {
        if !conn.subscriptions().remove(channel) {
            return None;
        }
        let removed = self.channels.remove(channel, &conn.client).unwrap_or(Removed { left: 0, joined: false });
        if removed.left == 0 && !self.watchers.watching(channel) {
            if let Err(error) = self.engine.broker().unsubscribe(channel).await {
                tracing::warn!(%channel, %error, "engine unsubscribe failed; the node may receive publications it drops");
            }
        }
        Some(removed)
    }
}

/// How a subscriber's switch to live delivery came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seam {
    /// Live, its reply and what it buffered queued.
    Live,
    /// What it buffered does not continue the stream it read.
    Stale,
    /// The subscription ended while its history was read.
    Gone,
}
