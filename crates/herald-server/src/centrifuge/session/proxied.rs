//! The session's side of the proxy (`crate::proxy`): the events it sends to
//! the application's backend and what it does with each answer.
//!
//! A backend's result goes ahead; its error reaches the client as sent
//! (code, message, temporary); its disconnect closes the connection with
//! its code and reason. A call without a usable answer is a temporary
//! error 100, so the client retries: never a hang, never an accepted
//! request. A proxied command holds the connection's next commands until
//! it is answered, at most the proxy's `timeout`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::time::Instant;

use herald_core::{Connection, HubError, SubscriptionSerial};
use herald_engine::{ChannelName, ClientId, DisconnectReason, Publication};

use super::{deadline_after, Encoding, Failure, Session, SubDeadline};
use crate::auth::ConnectClaims;
use crate::centrifuge::codes::ClientError;
use crate::centrifuge::command::ConnectRequest;
use crate::centrifuge::encode;
use crate::proxy::events::{self, Client};
use crate::proxy::{Answer, ClientContext, Failed, Proxy};

/// When a refresh proxy gave no usable answer, it is asked again this much
/// later (the connection or subscription lives on meanwhile).
const RETRY_REFRESH: Duration = Duration::from_secs(60);

/// What a session without a client context passes on: nothing.
static NO_CONTEXT: ClientContext = ClientContext::EMPTY;

/// A backend's answer as the session's failure, if it is not a result.
fn refused<R>(answer: Result<Answer<R>, Failed>) -> Result<R, Failure> {
    match answer {
        Ok(Answer::Result(result)) => Ok(result),
        Ok(Answer::Error { code, message, temporary }) => {
            Err(Failure::Reply(ClientError::Backend { code, message, temporary }))
        }
        Ok(Answer::Disconnect { code, reason }) => Err(Failure::Disconnect(backend_disconnect(code, reason))),
        Err(Failed) => Err(Failure::Reply(ClientError::BackendUnavailable)),
    }
}

/// Whether an expiry a backend gave (unix seconds, 0 for never) has come
/// already: extending to it would ask again at once.
fn already_past(expire_at: i64) -> bool {
    events::expiry(expire_at).is_some_and(|exp| exp <= crate::auth::unix_now())
}

/// The close a backend asked for. Codes outside 3000–4999 cannot be sent
/// to a WebSocket client: those close as an internal error (3004).
fn backend_disconnect(code: u16, mut reason: String) -> DisconnectReason {
    if !(3000..5000).contains(&code) {
        tracing::warn!(code, "a backend asked for a disconnect code outside 3000-4999; closing with 3004");
        return DisconnectReason::Internal;
    }
    // A close frame's reason is at most 123 bytes.
    while reason.len() > 123 {
        reason.pop();
    }
    let reconnect = !((3500..4000).contains(&code) || (4500..5000).contains(&code));
    DisconnectReason::Custom { code, reason, reconnect }
}

impl Session {
    /// How a request to `proxy` names this client: its id, transport and
    /// protocol (payloads are JSON in both protocols), and the connection's
    /// `meta` if the proxy asks for it.
    fn proxy_client<'a>(&'a self, client: &'a str, proxy: &Proxy) -> Client<'a> {
        let protocol = match self.encoding {
            Encoding::Json => "json",
            Encoding::Protobuf => "protobuf",
        };
        let context = self.context();
        let meta = context.meta.as_deref().filter(|_| proxy.includes_meta());
        Client { client, transport: context.transport, protocol, encoding: "json", meta }
    }

    /// Keeps the connection's `meta`, replacing any, where some proxy's
    /// requests carry it (the context is kept only where there are proxies).
    pub(super) fn keep_meta(&mut self, meta: Option<Box<RawValue>>) {
        let Some(meta) = meta.filter(|_| self.shared.proxies.any_includes_meta()) else { return };
        if let Some(context) = self.context.as_mut() {
            Arc::make_mut(context).meta = Some(meta);
        }
    }

    fn context(&self) -> &ClientContext {
        self.context.as_deref().unwrap_or(&NO_CONTEXT)
    }

    /// Asks the connect proxy who a client without a token is.
    pub(super) async fn connect_through_proxy(
        &self,
        client: &ClientId,
        req: &ConnectRequest,
    ) -> Result<(ConnectClaims, events::ConnectResult), Failure> {
        let proxy = self.shared.proxies.connect.clone().ok_or(Failure::Disconnect(DisconnectReason::Internal))?;
        let request = events::Connect {
            client: self.proxy_client(client.as_str(), &proxy),
            name: &req.name,
            version: &req.version,
            data: req.data.as_deref(),
        };
        let result =
            refused(proxy.call::<events::ConnectResult>("connect", self.context(), events::body(&request)).await)?;
        let info = match &result.info {
            Some(info) => {
                Some(serde_json::from_str(info.get()).map_err(|_| Failure::Reply(ClientError::BackendUnavailable))?)
            }
            None => None,
        };
        // Each once, in the answer's order; a set, as an answer may list many.
        let mut listed = std::collections::HashSet::new();
        let channels: Vec<String> = result
            .channels
            .iter()
            .chain(result.subs.keys())
            .filter(|name| listed.insert(name.as_str()))
            .cloned()
            .collect();
        let claims = ConnectClaims {
            sub: result.user.clone(),
            exp: events::expiry(result.expire_at),
            info,
            channels,
            ..ConnectClaims::default()
        };
        Ok((claims, result))
    }

    /// Asks the refresh proxy to extend the connection, now due to expire.
    pub(super) async fn refresh_through_proxy(&mut self, conn: &Arc<Connection>) -> Result<(), DisconnectReason> {
        let Some(proxy) = self.shared.proxies.refresh.clone() else {
            return Err(DisconnectReason::ConnectionExpired);
        };
        let user = conn.user();
        let request = events::Refresh {
            client: self.proxy_client(conn.client().as_str(), &proxy),
            user: user.as_str(),
            channel: None,
        };
        let answer = proxy.call::<events::RefreshResult>("refresh", self.context(), events::body(&request)).await;
        match answer {
            Ok(Answer::Result(result)) if result.expired || already_past(result.expire_at) => {
                Err(DisconnectReason::ConnectionExpired)
            }
            Ok(Answer::Result(result)) => {
                self.expire_deadline = events::expiry(result.expire_at).map(|exp| deadline_after(exp, Duration::ZERO));
                if let Some(info) = crate::auth::info_bytes(&result.info) {
                    conn.set_info(info);
                }
                self.keep_meta(result.meta);
                Ok(())
            }
            Ok(Answer::Disconnect { code, reason }) => Err(backend_disconnect(code, reason)),
            Ok(Answer::Error { .. }) | Err(Failed) => {
                tracing::info!(client = %conn.client(), "connection not refreshed; asking the refresh proxy again later");
                self.expire_deadline = Some(crate::driver::after(Instant::now(), RETRY_REFRESH));
                Ok(())
            }
        }
    }

    /// Asks the namespace's sub_refresh proxy to extend a subscription, now
    /// due to expire; ends it if the backend says so (and the connection,
    /// if the backend asks for a disconnect).
    pub(super) async fn sub_refresh_through_proxy(
        &mut self,
        conn: &Arc<Connection>,
        due: SubDeadline,
    ) -> Result<(), DisconnectReason> {
        let channel = &due.channel;
        let rules = self.shared.hub().rules();
        let named = rules.resolve(channel).ok().map(|o| self.shared.proxies.named(o.sub_refresh_proxy.as_ref()));
        let Some(Ok(Some(proxy))) = named.map(|named| named.map(Option::<&Arc<Proxy>>::cloned)) else {
            self.end_expired_subscription(conn, due.channel, due.serial).await;
            return Ok(());
        };
        let user = conn.user();
        let request = events::Refresh {
            client: self.proxy_client(conn.client().as_str(), &proxy),
            user: user.as_str(),
            channel: Some(channel.as_str()),
        };
        let answer = proxy.call::<events::RefreshResult>("sub_refresh", self.context(), events::body(&request)).await;
        match answer {
            Ok(Answer::Result(result)) if !result.expired && !already_past(result.expire_at) => {
                if let Some(exp) = events::expiry(result.expire_at) {
                    self.sub_deadlines.set(SubDeadline { at: deadline_after(exp, Duration::ZERO), ..due });
                }
            }
            Ok(Answer::Result(_)) => self.end_expired_subscription(conn, due.channel, due.serial).await,
            Ok(Answer::Disconnect { code, reason }) => return Err(backend_disconnect(code, reason)),
            Ok(Answer::Error { .. }) | Err(Failed) => {
                let retry = crate::driver::after(Instant::now(), RETRY_REFRESH);
                self.sub_deadlines.set(SubDeadline { at: retry, ..due });
            }
        }
        Ok(())
    }

    /// Ends an expired subscription (2501), client's or server's, if it is
    /// still the one `serial` names: while the session waited on the proxy,
    /// or before it read its events, the server may have unsubscribed the
    /// connection and subscribed it again, and the events that tell of
    /// that (queued for the session) set the new subscription's deadline.
    pub(super) async fn end_expired_subscription(
        &mut self,
        conn: &Arc<Connection>,
        channel: ChannelName,
        serial: SubscriptionSerial,
    ) {
        if self.shared.hub().unsubscribe_subscription(conn, &channel, serial).await {
            self.server_side.remove(&channel);
            self.reply(self.unsubscribe_push(&channel, herald_core::UnsubscribeReason::Expired));
        }
    }

    /// Asks a namespace's subscribe proxy whether the connection may
    /// subscribe; its result's info, data and expiry.
    pub(super) async fn subscribe_through_proxy(
        &self,
        proxy: &Proxy,
        conn: &Arc<Connection>,
        channel: &ChannelName,
        data: Option<&RawValue>,
    ) -> Result<events::SubscribeResult, Failure> {
        let user = conn.user();
        let request = events::Subscribe {
            client: self.proxy_client(conn.client().as_str(), proxy),
            user: user.as_str(),
            channel: channel.as_str(),
            data,
        };
        refused(proxy.call("subscribe", self.context(), events::body(&request)).await)
    }

    /// Asks a namespace's publish proxy, then publishes what it allows:
    /// the client's data or the backend's replacement.
    pub(super) async fn publish_through_proxy(
        &self,
        proxy: &Proxy,
        conn: &Arc<Connection>,
        channel: &ChannelName,
        data: &RawValue,
    ) -> Result<(), Failure> {
        let user = conn.user();
        let request = events::Publish {
            client: self.proxy_client(conn.client().as_str(), proxy),
            user: user.as_str(),
            channel: channel.as_str(),
            data,
        };
        let result: events::PublishResult =
            refused(proxy.call("publish", self.context(), events::body(&request)).await)?;
        let published = result.data.as_deref().unwrap_or(data);
        let mut publication = Publication::from_data(crate::json::compact(published.get()));
        publication.info = Some(conn.info_in(channel));
        self.shared.hub().publish(channel, publication, None, result.skip_history).await?;
        Ok(())
    }

    /// Answers an RPC through the RPC proxy (108, not available, without
    /// one, as Centrifugo answers).
    pub(super) async fn on_rpc(&mut self, id: u32, method: &str, data: Option<&RawValue>) -> Result<(), Failure> {
        let conn = self.connection()?;
        let Some(proxy) = self.shared.proxies.rpc.clone() else {
            tracing::debug!(client = %conn.client(), method = ?method, "rpc refused: no client.rpc_proxy to answer it");
            return Err(ClientError::Hub(HubError::NotAvailable("no client.rpc_proxy answers RPCs".into())).into());
        };
        let user = conn.user();
        let request = events::Rpc {
            client: self.proxy_client(conn.client().as_str(), &proxy),
            user: user.as_str(),
            method,
            data,
        };
        let result: events::RpcResult = refused(proxy.call("rpc", self.context(), events::body(&request)).await)?;
        let data = result.data.as_deref().map_or(b"null".as_slice(), |data| data.get().as_bytes());
        let mut body = bytes::BytesMut::from(&b"{\"data\":"[..]);
        body.extend_from_slice(data);
        body.extend_from_slice(b"}");
        self.reply(encode::raw_reply(id, "rpc", &body));
        Ok(())
    }

    /// Hands a `send` message to the send proxy, without waiting for it.
    pub(super) fn on_send(&self, data: Option<&RawValue>) {
        let Some(conn) = &self.conn else { return };
        let Some(proxy) = &self.shared.proxies.send else {
            tracing::debug!(client = %conn.client(), "send dropped: no client.send_proxy to deliver it to");
            return;
        };
        let user = conn.user();
        let request =
            events::Send { client: self.proxy_client(conn.client().as_str(), proxy), user: user.as_str(), data };
        let context = self.context.clone().unwrap_or_default();
        self.shared.proxies.send(context, events::body(&request));
    }
}

impl From<Failed> for Failure {
    /// A proxy that could not be asked: the client tries again.
    fn from(_: Failed) -> Self {
        Failure::Reply(ClientError::BackendUnavailable)
    }
}
