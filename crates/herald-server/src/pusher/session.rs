//! One Pusher protocol 7 connection at `/app/{key}`.
//!
//! Like the Centrifuge session, it is one task listening to the client, the
//! connection's outbox and its timers at once. Pusher frames are one JSON
//! message per WebSocket message, so a backlog is written message by
//! message (in one go, without waiting between them).
//!
//! Refusals follow the protocol: an unknown key, an unsupported protocol
//! version or a full app gets `pusher:error` and a 4000-range close code
//! (do not reconnect unchanged); a refused subscription gets
//! `pusher:subscription_error` on its channel; a refused client event gets
//! `pusher:error` 4301 and the connection stays open.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;
use tokio::time::Instant;

use herald_core::{
    ChannelKind, ConnEvent, Connection, ConnectionSpec, Drained, HubError, Outbox, Outgoing, SubscribeAccess,
    SubscribeRequest, Subscription,
};
use herald_engine::{ChannelName, ClientId, DisconnectReason, HistoryQuery, Publication, UserId};

use super::webhooks::Event as Hook;
use super::{error_frame, object_frame, sign, App, AppSlot, Frame, Frontend, EVENT_TAG, MAX_EVENT_NAME};
use crate::transport::{Inbound, Transport, TransportError};

/// The protocol versions served; pusher-js 8 speaks 7.
const PROTOCOLS: std::ops::RangeInclusive<u32> = 5..=7;

/// Close codes of the Pusher protocol.
pub mod close {
    pub const APP_NOT_FOUND: u16 = 4001;
    pub const OVER_QUOTA: u16 = 4004;
    pub const UNSUPPORTED_PROTOCOL: u16 = 4007;
    pub const NO_PROTOCOL: u16 = 4008;
    pub const UNAUTHORIZED: u16 = 4009;
    pub const OVER_CAPACITY: u16 = 4100;
    pub const RECONNECT: u16 = 4200;
    pub const NO_PONG: u16 = 4201;
    pub const INACTIVE: u16 = 4202;
    pub const CLIENT_EVENT_REJECTED: u16 = 4301;
}

/// The close code and reason for why the server ends a connection.
pub fn disconnect_code(reason: &DisconnectReason) -> (u16, String) {
    let (code, text) = match reason {
        DisconnectReason::Shutdown => (close::RECONNECT, "server shutting down; reconnect"),
        DisconnectReason::ConnectionExpired => (close::RECONNECT, "connection expired"),
        DisconnectReason::ForceReconnect => (close::RECONNECT, "reconnect requested"),
        DisconnectReason::Slow => (close::OVER_CAPACITY, "client too slow to read its messages"),
        DisconnectReason::NoPong => (close::NO_PONG, "pong reply not received"),
        DisconnectReason::Stale => (close::INACTIVE, "closed after inactivity"),
        DisconnectReason::ForceDisconnect => (close::UNAUTHORIZED, "You got disconnected by the app."),
        DisconnectReason::InvalidToken => (close::UNAUTHORIZED, "connection not authorized"),
        DisconnectReason::BadRequest => (close::UNSUPPORTED_PROTOCOL, "malformed frames"),
        DisconnectReason::MessageTooLarge => (1009, "message too big"),
        DisconnectReason::Custom { code, reason, .. } => return (*code, reason.clone()),
    };
    (code, text.to_owned())
}

/// What the connection URL asked for.
#[derive(Debug, Deserialize, Default)]
pub struct ConnectQuery {
    pub protocol: Option<String>,
}

/// Serves a connection to the app with `key`, or refuses it the Pusher way.
pub async fn run<T: Transport>(mut transport: T, frontend: Arc<Frontend>, key: String, query: ConnectQuery) {
    let refusal = |code: u16, message: String| (code, message);
    let admitted = match frontend.apps.by_key(&key) {
        None => Err(refusal(close::APP_NOT_FOUND, format!("App key {key} does not exist"))),
        Some(app) => match query.protocol.as_deref().map(str::parse::<u32>) {
            None => Err(refusal(close::NO_PROTOCOL, "No protocol version given".into())),
            Some(Ok(version)) if PROTOCOLS.contains(&version) => match app.admit() {
                Some(slot) => Ok((app.clone(), slot)),
                None => Err(refusal(close::OVER_QUOTA, "Application is over connection quota".into())),
            },
            Some(_) => Err(refusal(close::UNSUPPORTED_PROTOCOL, "Unsupported protocol version".into())),
        },
    };
    let (app, slot) = match admitted {
        Ok(admitted) => admitted,
        Err((code, message)) => {
            tracing::info!(%key, code, %message, "pusher connection refused");
            let timeout = frontend.settings.write_timeout;
            let _ = tokio::time::timeout(timeout, async {
                let _ = transport.send_text(error_frame(Some(code), &message, None)).await;
                transport.close(code, message).await;
            })
            .await;
            return;
        }
    };
    let mut session = match Session::open(frontend.clone(), app, slot) {
        Ok(session) => session,
        Err(error) => {
            tracing::info!(%error, "pusher connection refused by the hub");
            transport.close(close::RECONNECT, error.to_string()).await;
            return;
        }
    };
    let reason = session.serve(&mut transport).await;
    if let Some(reason) = &reason {
        let (code, text) = disconnect_code(reason);
        let _ = tokio::time::timeout(frontend.settings.write_timeout, transport.close(code, text)).await;
    }
    tracing::debug!(socket_id = %session.conn.client(), ?reason, "pusher connection closed");
    frontend.hub.disconnect(&session.conn).await;
}

struct Session {
    frontend: Arc<Frontend>,
    app: Arc<App>,
    _slot: AppSlot,
    conn: Arc<Connection>,
    outbox: Arc<Outbox>,
    socket_id: String,
    /// When the client last sent anything.
    last_heard: Instant,
    /// When the server pinged and still waits for a sign of life.
    pinged: Option<Instant>,
    /// Client events in the current one-second window.
    rate_window: (Instant, u32),
    signed_in: bool,
}

/// A frame from the client: `data` may be an object or a JSON string.
#[derive(Debug, Deserialize)]
struct ClientFrame {
    event: String,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    data: Value,
}

#[derive(Debug, Deserialize)]
struct SubscribeData {
    channel: String,
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    channel_data: Option<String>,
}

#[derive(Debug, Deserialize)]
struct SigninData {
    auth: String,
    user_data: String,
}

/// A refused subscription: `pusher:subscription_error` on its channel.
struct Refusal {
    kind: &'static str,
    error: String,
    status: u16,
}

impl Refusal {
    fn auth(error: impl Into<String>) -> Self {
        Self { kind: "AuthError", error: error.into(), status: 401 }
    }

    fn bad(error: impl Into<String>) -> Self {
        Self { kind: "InvalidRequest", error: error.into(), status: 400 }
    }
}

impl From<HubError> for Refusal {
    fn from(error: HubError) -> Self {
        let status = match &error {
            HubError::LimitExceeded(_) => 4100,
            HubError::EngineUnavailable(_) | HubError::NotAvailable(_) => 503,
            _ => 400,
        };
        Self { kind: "ServerError", error: error.to_string(), status }
    }
}

/// Reads `data` that may arrive as an object or as a JSON string of one.
fn data_as<T: for<'de> Deserialize<'de>>(data: &Value) -> Option<T> {
    match data {
        Value::String(text) => serde_json::from_str(text).ok(),
        other => T::deserialize(other).ok(),
    }
}

/// The text of a client event's `data`: a string as it is, anything else as JSON.
fn data_text(data: &Value) -> String {
    match data {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

fn new_socket_id() -> String {
    format!("{}.{}", rand::random::<u32>(), rand::random::<u32>())
}

impl Session {
    fn open(frontend: Arc<Frontend>, app: Arc<App>, slot: AppSlot) -> Result<Self, HubError> {
        let socket_id = new_socket_id();
        let outbox = Arc::new(Outbox::new(frontend.settings.queue_max_bytes));
        let conn = frontend.hub.connect(ConnectionSpec {
            client: ClientId::new(&socket_id),
            user: UserId::anonymous(),
            conn_info: None,
            encoder: app.encoder.clone(),
            outbox: outbox.clone(),
        })?;
        let timeout = frontend.settings.activity_timeout.as_secs();
        let established = serde_json::json!({ "socket_id": socket_id, "activity_timeout": timeout }).to_string();
        let _ = outbox.push(Outgoing::Frame(
            Frame { event: "pusher:connection_established", channel: None, data: &established, user_id: None }.encode(),
        ));
        let now = Instant::now();
        Ok(Self {
            frontend,
            app,
            _slot: slot,
            conn,
            outbox,
            socket_id,
            last_heard: now,
            pinged: None,
            rate_window: (now, 0),
            signed_in: false,
        })
    }

    async fn serve<T: Transport>(&mut self, transport: &mut T) -> Option<DisconnectReason> {
        let mut shutdown = self.frontend.shutdown.clone();
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                biased;
                _ = closing(&mut shutdown) => return Some(DisconnectReason::Shutdown),
                _ = self.outbox.ready() => {
                    if let Err(end) = self.flush(transport).await {
                        return end;
                    }
                }
                inbound = transport.recv() => {
                    self.last_heard = Instant::now();
                    self.pinged = None;
                    match inbound {
                        Ok(Some(Inbound::Text(frame))) => {
                            if let Err(reason) = self.on_frame(&frame).await {
                                // The `pusher:error` that explains the close goes first.
                                let _ = self.flush(transport).await;
                                return Some(reason);
                            }
                        }
                        Ok(Some(Inbound::Binary(_))) => {
                            tracing::info!(socket_id = %self.socket_id, "binary frame on the Pusher protocol; closing");
                            return Some(DisconnectReason::BadRequest);
                        }
                        Ok(None) => return None,
                        Err(TransportError::TooLarge) => {
                            tracing::info!(socket_id = %self.socket_id, "message above client.max_message_size; closing");
                            return Some(DisconnectReason::MessageTooLarge);
                        }
                        Err(TransportError::Broken(why)) => {
                            tracing::debug!(socket_id = %self.socket_id, %why, "transport broke");
                            return None;
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    if self.pinged.is_some() {
                        return Some(DisconnectReason::NoPong);
                    }
                    self.pinged = Some(Instant::now());
                    self.send(object_frame("pusher:ping", None, &serde_json::json!({})));
                }
            }
        }
    }

    fn next_deadline(&self) -> Instant {
        match self.pinged {
            Some(at) => at + self.frontend.settings.pong_timeout,
            None => self.last_heard + self.frontend.settings.activity_timeout,
        }
    }

    fn send(&self, frame: Bytes) {
        // A full outbox closes itself as slow; the loop then ends the session.
        let _ = self.outbox.push(Outgoing::Frame(frame));
    }

    /// Writes everything queued. `Err` ends the session.
    async fn flush<T: Transport>(&mut self, transport: &mut T) -> Result<(), Option<DisconnectReason>> {
        let items = match self.outbox.drain() {
            Drained::Closed(reason) => return Err(Some(reason)),
            Drained::Items(items) => items,
        };
        for item in items {
            let frame = match item {
                Outgoing::Frame(bytes) => bytes,
                Outgoing::Event(event) => match self.on_event(event) {
                    Some(bytes) => bytes,
                    None => continue,
                },
            };
            tokio::select! {
                sent = transport.send_text(frame) => sent.map_err(|_| None)?,
                _ = self.outbox.closed() => return Err(Some(DisconnectReason::Slow)),
                _ = tokio::time::sleep(self.frontend.settings.write_timeout) => {
                    return Err(Some(DisconnectReason::Slow))
                }
            }
        }
        Ok(())
    }

    /// Server-side subscription changes, as Pusher frames.
    fn on_event(&self, event: ConnEvent) -> Option<Bytes> {
        match event {
            ConnEvent::Subscribed { channel } => {
                let name = self.app.name_of(&channel)?;
                Some(
                    Frame {
                        event: "pusher_internal:subscription_succeeded",
                        channel: Some(name),
                        data: "{}",
                        user_id: None,
                    }
                    .encode(),
                )
            }
            // Pusher has no server-side unsubscribe push; the client simply
            // stops receiving the channel.
            ConnEvent::Unsubscribed { .. } | ConnEvent::Refresh { .. } => None,
        }
    }

    async fn on_frame(&mut self, frame: &[u8]) -> Result<(), DisconnectReason> {
        let message: ClientFrame = match serde_json::from_slice(frame) {
            Ok(message) => message,
            Err(error) => {
                let preview = String::from_utf8_lossy(&frame[..frame.len().min(128)]).into_owned();
                tracing::info!(socket_id = %self.socket_id, %error, frame = %preview, "malformed pusher frame");
                self.send(error_frame(None, &format!("Invalid message: {error}"), None));
                return Ok(());
            }
        };
        match message.event.as_str() {
            "pusher:ping" => self.send(object_frame("pusher:pong", None, &serde_json::json!({}))),
            "pusher:pong" => {}
            "pusher:subscribe" => self.on_subscribe(&message.data).await,
            "pusher:unsubscribe" => {
                let channel = data_as::<SubscribeData>(&message.data).and_then(|d| self.app.channel(&d.channel));
                if let Some(channel) = channel {
                    self.frontend.hub.unsubscribe(&self.conn, &channel).await;
                }
            }
            "pusher:signin" => return self.on_signin(&message.data),
            name if name.starts_with("client-") => {
                self.on_client_event(name, message.channel.as_deref(), &message.data).await
            }
            other => {
                tracing::debug!(socket_id = %self.socket_id, event = other, "unsupported pusher event ignored");
                self.send(error_frame(None, &format!("Unsupported event: {other}"), None));
            }
        }
        Ok(())
    }

    async fn on_subscribe(&mut self, data: &Value) {
        let Some(request) = data_as::<SubscribeData>(data) else {
            self.send(error_frame(None, "pusher:subscribe needs data with a channel", None));
            return;
        };
        let name = request.channel.clone();
        if let Err(refusal) = self.subscribe(request).await {
            tracing::debug!(socket_id = %self.socket_id, channel = %name, error = %refusal.error, "subscription refused");
            let data = serde_json::json!({ "type": refusal.kind, "error": refusal.error, "status": refusal.status });
            self.send(object_frame("pusher:subscription_error", Some(&name), &data));
        }
    }

    async fn subscribe(&mut self, request: SubscribeData) -> Result<(), Refusal> {
        let name = request.channel.as_str();
        let channel = self.app.channel(name).ok_or_else(|| Refusal::bad("The channel name is not allowed"))?;
        let kind = ChannelKind::of(name);
        let mut subscription = Subscription::default();
        if let Some(user) = name.strip_prefix(super::USER_CHANNEL_PREFIX) {
            if !self.signed_in || self.conn.user().as_str() != user {
                return Err(Refusal::auth("Only the signed-in user may subscribe to its channel"));
            }
        } else if super::is_private(name) {
            let channel_data = request.channel_data.as_deref().filter(|_| kind.is_presence());
            let message = sign::channel_message(&self.socket_id, name, channel_data);
            let auth = request.auth.as_deref().unwrap_or("");
            if !sign::verify_auth(&self.app.config.key, self.app.config.secret.expose(), &message, auth) {
                return Err(Refusal::auth(
                    "Invalid signature: the authorization does not match this socket and channel",
                ));
            }
            if kind.is_presence() {
                let member = channel_data.ok_or_else(|| Refusal::bad("Presence channels need channel_data"))?;
                let (user, info) = presence_member(member)?;
                subscription.user = Some(user);
                subscription.chan_info = info;
                subscription.join_leave = true;
            }
        }
        if self.conn.is_subscribed(&channel) {
            // pusher-js resubscribes after a reconnect of its own; confirm again.
            self.confirm(&channel, name, kind).await?;
            return Ok(());
        }
        if kind.is_presence() {
            self.check_presence_room(&channel, subscription.user.as_ref()).await?;
        }
        let reply = (!kind.is_presence()).then(|| {
            Outgoing::Frame(
                Frame {
                    event: "pusher_internal:subscription_succeeded",
                    channel: Some(name),
                    data: "{}",
                    user_id: None,
                }
                .encode(),
            )
        });
        let request = SubscribeRequest { subscription, ..SubscribeRequest::default() };
        self.frontend.hub.subscribe(&self.conn, &channel, SubscribeAccess::Token, request, |_| reply).await?;
        if kind.is_presence() {
            self.confirm(&channel, name, kind).await?;
        } else if kind.is_cache() {
            self.send_cached(&channel, name).await;
        }
        Ok(())
    }

    /// Refuses a presence subscription that would exceed the app's member limit.
    async fn check_presence_room(&self, channel: &ChannelName, user: Option<&UserId>) -> Result<(), Refusal> {
        let present = self.frontend.hub.presence(channel).await?;
        let already = user.is_some_and(|u| present.iter().any(|p| &p.user == u));
        let mut users: Vec<&UserId> = present.iter().map(|p| &p.user).collect();
        users.sort();
        users.dedup();
        if !already && users.len() >= self.app.config.max_presence_members {
            return Err(Refusal {
                kind: "LimitReached",
                error: "The maximum members per presence channel limit was reached".into(),
                status: 4100,
            });
        }
        Ok(())
    }

    /// Sends `subscription_succeeded`: for presence with the member list
    /// (one entry per user), else with empty data; then a cache channel's
    /// last event.
    async fn confirm(&self, channel: &ChannelName, name: &str, kind: ChannelKind) -> Result<(), Refusal> {
        let data = match kind.is_presence() {
            false => "{}".to_owned(),
            true => {
                let present = self.frontend.hub.presence(channel).await?;
                let mut hash = serde_json::Map::new();
                for info in &present {
                    let user_info = info
                        .chan_info
                        .as_deref()
                        .and_then(|raw| serde_json::from_slice::<Value>(raw).ok())
                        .unwrap_or_else(|| serde_json::json!({}));
                    hash.insert(info.user.as_str().to_owned(), user_info);
                }
                let ids: Vec<&String> = hash.keys().collect();
                serde_json::json!({ "presence": { "ids": ids, "hash": hash, "count": hash.len() } }).to_string()
            }
        };
        self.send(
            Frame { event: "pusher_internal:subscription_succeeded", channel: Some(name), data: &data, user_id: None }
                .encode(),
        );
        if kind.is_cache() && kind.is_presence() {
            self.send_cached(channel, name).await;
        }
        Ok(())
    }

    /// A cache channel's last event, or `pusher:cache_miss` (and its webhook).
    async fn send_cached(&self, channel: &ChannelName, name: &str) {
        use herald_core::PushEncoder;
        let query = HistoryQuery { since: None, limit: 1, reverse: true };
        match self.frontend.hub.history(channel, query).await {
            Ok(history) if !history.publications.is_empty() => {
                self.send(self.app.encoder.encode_publication(channel, &history.publications[0]));
            }
            Ok(_) => {
                self.send(object_frame("pusher:cache_miss", Some(name), &serde_json::json!({})));
                self.frontend.webhooks.send(&self.app, Hook::CacheMiss { channel: name.to_owned() });
            }
            Err(error) => tracing::warn!(channel = %name, %error, "cache channel read failed"),
        }
    }

    fn on_signin(&mut self, data: &Value) -> Result<(), DisconnectReason> {
        let refuse = |session: &Self, why: &str| {
            tracing::info!(socket_id = %session.socket_id, why, "pusher sign-in refused");
            session.send(error_frame(Some(close::UNAUTHORIZED), &format!("Connection not authorized: {why}"), None));
            Err(DisconnectReason::InvalidToken)
        };
        let Some(request) = data_as::<SigninData>(data) else {
            return refuse(self, "pusher:signin needs auth and user_data");
        };
        let message = sign::signin_message(&self.socket_id, &request.user_data);
        if !sign::verify_auth(&self.app.config.key, self.app.config.secret.expose(), &message, &request.auth) {
            return refuse(self, "invalid signature");
        }
        let id = serde_json::from_str::<Value>(&request.user_data)
            .ok()
            .and_then(|user| user.get("id").and_then(Value::as_str).map(str::to_owned))
            .filter(|id| !id.is_empty());
        let Some(user) = id.and_then(|id| UserId::new(&id).ok()) else {
            return refuse(self, "user_data needs a non-empty string id");
        };
        if self.signed_in && self.conn.user() != user {
            return refuse(self, "the connection is signed in as another user");
        }
        self.frontend.hub.sign_in(&self.conn, user);
        self.signed_in = true;
        self.send(object_frame("pusher:signin_success", None, &serde_json::json!({ "user_data": request.user_data })));
        Ok(())
    }

    async fn on_client_event(&mut self, event: &str, name: Option<&str>, data: &Value) {
        let name = name.unwrap_or("");
        if let Err(why) = self.client_event(event, name, data).await {
            tracing::debug!(socket_id = %self.socket_id, channel = name, event, why = %why, "client event rejected");
            self.send(error_frame(Some(close::CLIENT_EVENT_REJECTED), &why, Some(name)));
        }
    }

    async fn client_event(&mut self, event: &str, name: &str, data: &Value) -> Result<(), String> {
        let config = &self.app.config;
        if !config.client_events {
            return Err("Client events are not enabled for this app".into());
        }
        if !super::is_private(name) {
            return Err("Client events are only allowed on private and presence channels".into());
        }
        let channel = self.app.channel(name).filter(|c| self.conn.is_subscribed(c));
        let Some(channel) = channel else { return Err(format!("Not subscribed to channel {name}")) };
        if event.len() > MAX_EVENT_NAME {
            return Err(format!("Event name is longer than {MAX_EVENT_NAME} characters"));
        }
        let text = data_text(data);
        if text.len() > config.max_event_size {
            return Err(format!("Event data is larger than {} bytes", config.max_event_size));
        }
        let now = Instant::now();
        if now.duration_since(self.rate_window.0) >= Duration::from_secs(1) {
            self.rate_window = (now, 0);
        }
        if self.rate_window.1 >= config.client_event_rate {
            return Err("Client event rejected due to rate limit".into());
        }
        self.rate_window.1 += 1;
        let info = self.conn.info_in(&channel);
        let mut publication = Publication::from_data(super::publication_data(&text));
        publication.tags.insert(EVENT_TAG.to_owned(), event.to_owned());
        publication.exclude = Some(self.conn.client().clone());
        let user_id = ChannelKind::of(name).is_presence().then(|| info.user.as_str().to_owned());
        publication.info = Some(info);
        // Client events are not cached: they skip history.
        self.frontend.hub.publish(&channel, publication, None, true).await.map_err(|e| e.to_string())?;
        let hook = Hook::ClientEvent {
            channel: name.to_owned(),
            event: event.to_owned(),
            data: text,
            socket_id: self.socket_id.clone(),
            user_id,
        };
        self.frontend.webhooks.send(&self.app, hook);
        Ok(())
    }
}

/// Resolves once the node starts shutting down.
async fn closing(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    // An error means the node is gone, which is a shutdown too.
    let _ = shutdown.wait_for(|closing| *closing).await;
}

/// The member a presence authorization's `channel_data` names.
fn presence_member(channel_data: &str) -> Result<(UserId, Option<Bytes>), Refusal> {
    let member: Value = serde_json::from_str(channel_data).map_err(|_| Refusal::bad("channel_data is not JSON"))?;
    let id = match member.get("user_id") {
        Some(Value::String(id)) if !id.is_empty() => id.clone(),
        Some(Value::Number(id)) => id.to_string(),
        _ => return Err(Refusal::bad("channel_data needs a user_id")),
    };
    let user = UserId::new(&id).map_err(|e| Refusal::bad(e.to_string()))?;
    let info = member.get("user_info").map(|info| Bytes::from(info.to_string()));
    Ok((user, info))
}
