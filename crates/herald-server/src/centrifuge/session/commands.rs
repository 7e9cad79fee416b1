//! The session's command handlers: one method per client command, each
//! returning the reply it queued or the failure to report.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use herald_core::{
    ConnectionSpec, HubError, Outgoing, SubscribeAccess, SubscribeRequest as HubSubscribeRequest, Subscription,
};
use herald_engine::{ChannelName, ClientId, DisconnectReason, Epoch, HistoryQuery, Offset, StreamPosition, UserId};
use tokio::time::Instant;

use super::{deadline_after, ConnectResult, Empty, Encoding, ExpiryResult, Failure, Mode, RefreshResult, Session};
use crate::auth::{self, ConnectClaims, TokenError};
use crate::centrifuge::codes::ClientError;
use crate::centrifuge::command::{ConnectRequest, HistoryRequest, SubscribeRequest, REJECT_UNRECOVERED};
use crate::centrifuge::encode;
use herald_core::Connection;

impl Session {
    pub(super) fn connection(&self) -> Result<Arc<Connection>, Failure> {
        self.conn.clone().ok_or(Failure::Disconnect(DisconnectReason::BadRequest))
    }

    pub(super) async fn on_connect(&mut self, id: u32, req: ConnectRequest) -> Result<(), Failure> {
        let client = ClientId::from(uuid::Uuid::new_v4().to_string());
        let mut backend = None;
        let claims = if req.token.is_empty() && self.shared.proxies.connect.is_some() {
            let (claims, result) = self.connect_through_proxy(&client, &req).await?;
            backend = Some(result);
            claims
        } else if req.token.is_empty() {
            if !self.shared.settings.allow_anonymous {
                // As Centrifugo ("client credentials not found"): a bad
                // request, there being no token to call invalid.
                tracing::info!("connect without a token refused: client.allow_anonymous is off");
                return Err(Failure::Disconnect(DisconnectReason::BadRequest));
            }
            ConnectClaims::default()
        } else {
            match self.shared.verifier.connection_now(&req.token).await {
                Ok(claims) => claims,
                Err(TokenError::Expired) => return Err(ClientError::TokenExpired.into()),
                Err(TokenError::Invalid(why) | TokenError::UnknownKey(why)) => {
                    tracing::info!(%why, "connection token refused");
                    return Err(Failure::Disconnect(DisconnectReason::InvalidToken));
                }
                // Not known to be invalid: the client tries again later.
                Err(unavailable @ TokenError::KeysUnavailable(_)) => {
                    tracing::info!(error = %unavailable, "connection token not checked: the JWKS cannot be fetched");
                    return Err(ClientError::BackendUnavailable.into());
                }
            }
        };
        let user = UserId::new(&claims.sub).map_err(|_| Failure::Disconnect(DisconnectReason::InvalidToken))?;
        let hub = self.shared.hub().clone();
        let conn = hub
            .connect(ConnectionSpec {
                client,
                user,
                conn_info: auth::info_bytes(&claims.info),
                encoder: match (self.encoding, self.mode) {
                    (Encoding::Protobuf, _) => self.shared.protobuf_encoder.clone(),
                    (Encoding::Json, Mode::Unidirectional) => self.shared.uni_encoder.clone(),
                    (Encoding::Json, Mode::Bidirectional | Mode::Emulated) => self.shared.encoder.clone(),
                },
                outbox: self.outbox.clone(),
            })
            .map_err(|_| Failure::Disconnect(DisconnectReason::Shutdown))?;

        let mut subs = BytesMut::new();
        for name in claims.server_side() {
            let recover_since = req.subs.get(name).filter(|r| r.recover).map(|r| position(r.offset, &r.epoch));
            let from_backend = backend.as_ref().and_then(|b| b.subs.get(name));
            let from_token = claims.subs.get(name);
            let chan_info = match (from_backend, from_token) {
                (Some(sub), _) => sub.info.as_ref().map(|info| Bytes::from(info.get().to_owned())),
                (None, Some(sub)) => auth::info_bytes(&sub.info),
                (None, None) => None,
            };
            let subscription = Subscription { chan_info, ..Subscription::default() };
            let request = HubSubscribeRequest { recover_since, subscription, ..Default::default() };
            let token_data = from_token
                .and_then(|sub| sub.data.as_ref())
                .and_then(|data| serde_json::value::to_raw_value(data).ok());
            let data = from_backend.and_then(|sub| sub.data.as_deref()).or(token_data.as_deref());
            let subscribed = match ChannelName::new(name) {
                Ok(channel) => hub
                    .subscribe(&conn, &channel, SubscribeAccess::Server, request, |_| None)
                    .await
                    .map(|outcome| (outcome, channel))
                    .map_err(ClientError::Hub),
                Err(e) => Err(ClientError::BadRequest(format!("channel {name:?} in token: {e}"))),
            };
            match subscribed {
                Ok((outcome, channel)) => {
                    self.server_side.insert(channel);
                    subs.put_u8(if subs.is_empty() { b'{' } else { b',' });
                    crate::json::put_str(&mut subs, name);
                    subs.put_u8(b':');
                    subs.put_slice(&encode::subscribe_result(&outcome, &ExpiryResult::default(), data, false));
                }
                Err(error) => {
                    tracing::warn!(user = %conn.user(), channel = %name, %error, "server-side subscription (from the token or the connect proxy) failed");
                    hub.disconnect(&conn).await;
                    return Err(error.into());
                }
            }
        }

        // Connections the refresh proxy extends do not expire for the
        // client: the node asks the backend when the time comes.
        self.refresh_by_proxy = backend.is_some() && self.shared.proxies.refresh.is_some();
        let expiry = if self.refresh_by_proxy { ExpiryResult::default() } else { ExpiryResult::at(claims.expiry()) };
        let result = ConnectResult {
            client: conn.client().as_str(),
            version: env!("CARGO_PKG_VERSION"),
            expires: expiry.expires,
            ttl: expiry.ttl,
            ping: self.shared.settings.ping_interval.as_secs(),
            pong: self.mode != Mode::Unidirectional,
            node: hub.node().as_str(),
            session: match self.mode {
                Mode::Emulated => self.context.as_ref().and_then(|context| context.emulation_key.as_deref()),
                Mode::Bidirectional | Mode::Unidirectional => None,
            },
            data: backend.as_ref().and_then(|b| b.data.as_deref()),
        };
        let result = if subs.is_empty() {
            Bytes::from(crate::json::to_vec(&result))
        } else {
            subs.put_u8(b'}');
            encode::object_with_raw(&result, "subs", &subs)
        };
        // Ahead of any publication already queued for server-side channels.
        let frame = match self.mode {
            Mode::Unidirectional => encode::bare_push("connect", &result),
            Mode::Bidirectional | Mode::Emulated => encode::raw_reply(id, "connect", &result),
        };
        self.outbox.push_front(Outgoing::Frame(super::encoded(self.encoding, frame)));
        if !self.shared.proxies.any() {
            // Without proxies the context only carried an emulated
            // session's key to this reply: an idle connection need not
            // keep it.
            self.context = None;
        }
        // The connect proxy's, else the token's.
        let meta = backend.as_mut().and_then(|b| b.meta.take());
        self.keep_meta(meta.or_else(|| claims.meta_json()));
        let grace =
            if self.refresh_by_proxy { std::time::Duration::ZERO } else { self.shared.settings.expired_close_delay };
        self.expire_deadline = claims.expiry().map(|exp| deadline_after(exp, grace));
        self.next_ping = crate::driver::after(Instant::now(), self.shared.settings.ping_interval);
        tracing::debug!(client = %conn.client(), user = %conn.user(), sdk = %req.name, sdk_version = %req.version, "connected");
        self.conn = Some(conn);
        Ok(())
    }

    pub(super) async fn on_subscribe(&mut self, id: u32, req: SubscribeRequest) -> Result<(), Failure> {
        let conn = self.connection()?;
        let channel = parse_channel(&req.channel)?;
        let mut subscription = Subscription { join_leave: req.join_leave, ..Subscription::default() };
        let rules = self.shared.hub().rules();
        let options = rules.resolve(&channel).ok();
        let proxy = match &options {
            Some(o) => self.shared.proxies.named(o.subscribe_proxy.as_ref())?,
            None => None,
        };
        let mut backend_data = None;
        let mut by_proxy = false;
        let (access, exp) = if let (true, Some(proxy)) = (req.token.is_empty(), proxy.cloned()) {
            let result = self.subscribe_through_proxy(&proxy, &conn, &channel, req.data.as_deref()).await?;
            subscription.chan_info = result.info.as_ref().map(|info| Bytes::from(info.get().to_owned()));
            backend_data = result.data;
            let exp = crate::proxy::events::expiry(result.expire_at);
            by_proxy = exp.is_some() && options.as_ref().is_some_and(|o| o.sub_refresh_proxy.is_some());
            (SubscribeAccess::Server, exp)
        } else if req.token.is_empty() {
            self.refuse_pusher_owned(&conn, &channel)?;
            (SubscribeAccess::Client, None)
        } else {
            let claims = self.verify_subscription(&conn, &channel, &req.token).await?;
            subscription.chan_info = auth::info_bytes(&claims.info);
            backend_data = claims.data.as_ref().and_then(|data| serde_json::value::to_raw_value(data).ok());
            (SubscribeAccess::Token, claims.expiry())
        };
        let request = HubSubscribeRequest {
            subscription,
            positioned: req.positioned,
            recoverable: req.recoverable,
            recover_since: req.position.recover.then(|| position(req.position.offset, &req.position.epoch)),
            // Uni-directional clients never subscribe; others may take deltas.
            delta: req.delta == "fossil",
            latest: false,
            reject_unrecovered: req.flag & REJECT_UNRECOVERED != 0,
        };
        let expiry = if by_proxy { ExpiryResult::default() } else { ExpiryResult::at(exp) };
        let encoding = self.encoding;
        let reply = |outcome: &herald_core::SubscribeOutcome| {
            // Protobuf carries data as bytes either way.
            let text_data = outcome.delta && encoding == Encoding::Json;
            let result = encode::subscribe_result(outcome, &expiry, backend_data.as_deref(), text_data);
            Some(Outgoing::Frame(super::encoded(encoding, encode::raw_reply(id, "subscribe", &result))))
        };
        let outcome = self.shared.hub().subscribe(&conn, &channel, access, request, reply).await?;
        if outcome.was_recovering {
            tracing::debug!(client = %conn.client(), %channel, recovered = outcome.recovered, replayed = outcome.publications.len(), "subscription recovery");
        }
        if let Some(exp) = exp {
            self.subscription_expires(channel, exp, by_proxy, outcome.serial);
        }
        Ok(())
    }

    pub(super) async fn on_history(&mut self, id: u32, req: HistoryRequest) -> Result<(), Failure> {
        let conn = self.connection()?;
        let channel = parse_channel(&req.channel)?;
        self.refuse_pusher_owned(&conn, &channel)?;
        self.shared.hub().authorize_read(&conn, &channel, false)?;
        let query = HistoryQuery {
            since: req.since.map(|s| position(s.offset, &s.epoch)),
            limit: usize::try_from(req.limit).unwrap_or(usize::MAX),
            reverse: req.reverse,
        };
        let history = self.shared.hub().history(&channel, query).await?;
        self.reply(encode::raw_reply(id, "history", &encode::history_result(&history)));
        Ok(())
    }

    pub(super) async fn on_presence(&mut self, id: u32, channel: &str, stats_only: bool) -> Result<(), Failure> {
        let conn = self.connection()?;
        let channel = parse_channel(channel)?;
        self.refuse_pusher_owned(&conn, &channel)?;
        self.shared.hub().authorize_read(&conn, &channel, true)?;
        if stats_only {
            let stats = self.shared.hub().presence_stats(&channel).await?;
            self.reply(encode::reply(id, "presence_stats", &stats));
        } else {
            let present = self.shared.hub().presence(&channel).await?;
            self.reply(encode::raw_reply(id, "presence", &encode::presence_result(&present)));
        }
        Ok(())
    }

    async fn verify_subscription(
        &self,
        conn: &Connection,
        channel: &ChannelName,
        token: &str,
    ) -> Result<auth::SubscribeClaims, Failure> {
        let claims = self.shared.verifier.subscription_now(token).await.map_err(|e| match e {
            TokenError::Expired => Failure::Reply(ClientError::TokenExpired),
            TokenError::Invalid(why) | TokenError::UnknownKey(why) => {
                tracing::info!(client = %conn.client(), %channel, %why, "subscription token refused");
                Failure::Reply(ClientError::Hub(HubError::PermissionDenied))
            }
            unavailable @ TokenError::KeysUnavailable(_) => {
                tracing::info!(client = %conn.client(), %channel, error = %unavailable, "subscription token not checked: the JWKS cannot be fetched");
                Failure::Reply(ClientError::BackendUnavailable)
            }
        })?;
        let other_client = claims.client.as_deref().is_some_and(|client| client != conn.client().as_str());
        if claims.channel != channel.as_str() || claims.sub != conn.user().as_str() || other_client {
            // As Centrifugo: a valid token given where it does not belong
            // is the application's mistake, not the user's; the
            // connection closes (3500) rather than retry with it.
            tracing::info!(client = %conn.client(), %channel, "subscription token is for another channel, user or connection; closing the connection");
            return Err(Failure::Disconnect(DisconnectReason::InvalidToken));
        }
        Ok(claims)
    }

    pub(super) async fn on_unsubscribe(&mut self, id: u32, channel: &str) -> Result<(), Failure> {
        let conn = self.connection()?;
        let channel = parse_channel(channel)?;
        self.shared.hub().unsubscribe(&conn, &channel).await;
        self.sub_deadlines.remove(&channel);
        self.server_side.remove(&channel);
        self.reply(encode::reply(id, "unsubscribe", &Empty {}));
        Ok(())
    }

    pub(super) async fn on_publish(
        &mut self,
        id: u32,
        channel: &str,
        data: &serde_json::value::RawValue,
    ) -> Result<(), Failure> {
        let conn = self.connection()?;
        let channel = parse_channel(channel)?;
        self.refuse_pusher_owned(&conn, &channel)?;
        let rules = self.shared.hub().rules();
        let proxy = match rules.resolve(&channel) {
            Ok(options) => self.shared.proxies.named(options.publish_proxy.as_ref())?,
            Err(_) => None,
        };
        match proxy.cloned() {
            Some(proxy) => self.publish_through_proxy(&proxy, &conn, &channel, data).await?,
            None => {
                self.shared.hub().client_publish(&conn, &channel, crate::json::compact(data.get())).await?;
            }
        }
        self.shared.driver.metrics.published("client", 1);
        self.reply(encode::reply(id, "publish", &Empty {}));
        Ok(())
    }

    pub(super) async fn on_refresh(&mut self, id: u32, token: &str) -> Result<(), Failure> {
        let conn = self.connection()?;
        let claims = match self.shared.verifier.connection_now(token).await {
            Ok(claims) => claims,
            // As Centrifugo: closed as expired, so the client reconnects
            // and asks for a new token (an error reply to a refresh ends
            // centrifuge-js for good).
            Err(TokenError::Expired) => {
                tracing::info!(client = %conn.client(), "refresh token expired; closing the connection as expired");
                return Err(Failure::Disconnect(DisconnectReason::ConnectionExpired));
            }
            Err(TokenError::Invalid(why) | TokenError::UnknownKey(why)) => {
                tracing::info!(client = %conn.client(), %why, "refresh token refused");
                return Err(Failure::Disconnect(DisconnectReason::InvalidToken));
            }
            // Closed so that the client comes back (3004) and connects
            // again once the keys can be fetched.
            Err(unavailable @ TokenError::KeysUnavailable(_)) => {
                tracing::info!(client = %conn.client(), error = %unavailable, "refresh token not checked: the JWKS cannot be fetched");
                return Err(Failure::Disconnect(DisconnectReason::Internal));
            }
        };
        if claims.sub != conn.user().as_str() {
            tracing::info!(client = %conn.client(), "refresh token is for another user");
            return Err(Failure::Disconnect(DisconnectReason::InvalidToken));
        }
        // As Centrifugo: a new token's info replaces the connection's; one
        // without keeps it.
        if let Some(info) = auth::info_bytes(&claims.info) {
            conn.set_info(info);
        }
        // Its meta too, as Centrifugo's.
        self.keep_meta(claims.meta_json());
        let expiry = claims.expiry();
        self.expire_deadline = expiry.map(|exp| deadline_after(exp, self.shared.settings.expired_close_delay));
        let result = RefreshResult {
            client: conn.client().as_str(),
            version: env!("CARGO_PKG_VERSION"),
            expiry: ExpiryResult::at(expiry),
        };
        self.reply(encode::reply(id, "refresh", &result));
        Ok(())
    }

    pub(super) async fn on_sub_refresh(&mut self, id: u32, channel: &str, token: &str) -> Result<(), Failure> {
        let conn = self.connection()?;
        let channel = parse_channel(channel)?;
        // In Centrifugo's order: a channel not subscribed (it may have just
        // ended) is answered 103, a subscription the server extends closes
        // the connection (3501) and an empty token is answered 107, before
        // the token is read; one that does not verify then closes the
        // connection (3500), and an expired one is answered 109.
        let Some(serial) = self.shared.hub().subscription_serial(&conn, &channel) else {
            return Err(HubError::PermissionDenied.into());
        };
        // The server's to extend, not the client's: a server-side
        // subscription, or one the sub_refresh proxy extends (centrifuge:
        // "server-side sub refresh expected").
        if self.server_side.contains(&channel) || self.sub_deadlines.by_proxy(&channel) {
            tracing::info!(client = %conn.client(), %channel, "sub_refresh for a subscription the server extends; closing the connection");
            return Err(Failure::Disconnect(DisconnectReason::BadRequest));
        }
        if token.is_empty() {
            return Err(ClientError::BadRequest("sub_refresh needs a token".to_owned()).into());
        }
        let claims = self.verify_subscription(&conn, &channel, token).await.map_err(|failure| match failure {
            Failure::Reply(ClientError::Hub(HubError::PermissionDenied)) => {
                Failure::Disconnect(DisconnectReason::InvalidToken)
            }
            other => other,
        })?;
        match claims.expiry() {
            Some(exp) => self.subscription_expires(channel, exp, false, serial),
            None => self.sub_deadlines.remove(&channel),
        }
        self.reply(encode::reply(id, "sub_refresh", &ExpiryResult::at(claims.expiry())));
        Ok(())
    }
}

/// A stream position as a client reports it.
fn position(offset: u64, epoch: &str) -> StreamPosition {
    StreamPosition { offset: Offset::new(offset), epoch: Epoch::new(epoch) }
}

impl Session {
    /// Refuses a command about a channel a Pusher app of the node
    /// authorizes itself (`private-`, `presence-`, a user's own) from a
    /// connection the server has not subscribed to it (by a subscription
    /// token, the connection token or the server API): a Centrifuge client
    /// would otherwise read, join or publish into it without the app's
    /// signature.
    fn refuse_pusher_owned(&self, conn: &Connection, channel: &ChannelName) -> Result<(), Failure> {
        match &self.shared.pusher {
            Some(pusher) if pusher.authorizes(channel) && !conn.is_subscribed(channel) => {
                Err(HubError::PermissionDenied.into())
            }
            _ => Ok(()),
        }
    }
}

fn parse_channel(name: &str) -> Result<ChannelName, Failure> {
    ChannelName::new(name).map_err(|e| Failure::Reply(ClientError::BadRequest(e.to_string())))
}
