//! One Pusher protocol 7 connection at `/app/{key}`: the connection's
//! state machine, run by the session driver (`driver.rs`).
//!
//! Pusher frames are one JSON message per WebSocket message, so a backlog
//! is written message by message (in one go, without waiting between
//! them). The server pings a client that stayed silent for the activity
//! timeout, and closes it if no sign of life follows.
//!
//! Refusals follow the protocol: an unknown key, an unsupported protocol
//! version or a full app gets `pusher:error` and a 4000-range close code
//! (do not reconnect unchanged); a refused subscription gets
//! `pusher:subscription_error` on its channel; a refused client event gets
//! `pusher:error` 4301 and the connection stays open.

use std::sync::Arc;

use futures_util::future::Either;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::time::Instant;

use herald_core::{ConnEvent, Connection, ConnectionSpec, HubError, Outbox, Outgoing};
use herald_engine::{ClientId, DisconnectReason, UserId};

use super::{error_frame, object_frame, App, AppSlot, Frame, Frontend};
use crate::driver::{self, Framing, Parts, Protocol};
use crate::rate::{ConnectionRates, Verdict};
use crate::transport::{Inbound, Transport};

/// The protocol versions served; pusher-js 8 speaks 7.
const PROTOCOLS: std::ops::RangeInclusive<u32> = 5..=7;

/// Close codes of the Pusher protocol.
pub(crate) mod close {
    pub(crate) const APP_NOT_FOUND: u16 = 4001;
    pub(crate) const OVER_QUOTA: u16 = 4004;
    pub(crate) const UNSUPPORTED_PROTOCOL: u16 = 4007;
    pub(crate) const NO_PROTOCOL: u16 = 4008;
    pub(crate) const UNAUTHORIZED: u16 = 4009;
    pub(crate) const OVER_CAPACITY: u16 = 4100;
    pub(crate) const RECONNECT: u16 = 4200;
    pub(crate) const NO_PONG: u16 = 4201;
    pub(crate) const INACTIVE: u16 = 4202;
    pub(crate) const CLIENT_EVENT_REJECTED: u16 = 4301;
}

/// The close code and reason for why the server ends a connection.
pub(crate) fn disconnect_code(reason: &DisconnectReason) -> (u16, String) {
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
        DisconnectReason::Internal => (close::RECONNECT, "internal server error; reconnect"),
        DisconnectReason::TooManyRequests => (close::CLIENT_EVENT_REJECTED, "too many messages; slow down"),
        DisconnectReason::Custom { code, reason, .. } => return (*code, reason.clone()),
    };
    (code, text.to_owned())
}

/// What the connection URL asked for.
#[derive(Debug, Deserialize, Default)]
pub(crate) struct ConnectQuery {
    pub protocol: Option<String>,
}

/// Serves a connection to the app with `key`, or refuses it the Pusher way.
///
/// Not an `async fn`: admission is decided before anything is awaited, so
/// the future is either the session or the refusal, and a served
/// connection's future does not also keep a slot for the transport the
/// refusal would have used. The refusal is boxed: it is larger than the
/// session, and inline it would make every served connection's task as
/// large.
pub(crate) fn run<T: Transport>(
    transport: T,
    frontend: Arc<Frontend>,
    key: String,
    query: ConnectQuery,
) -> impl std::future::Future<Output = ()> + Send {
    let write_timeout = frontend.driver.write_timeout;
    match open(&frontend, &key, &query) {
        Ok(session) => Either::Left(driver::run(transport, session)),
        Err((code, message)) => {
            // Both hold the caller's path: escaped, so no line can be forged.
            tracing::info!(key = ?shown(&key), code, ?message, "pusher connection refused");
            Either::Right(Box::pin(refuse(transport, code, message, write_timeout)))
        }
    }
}

/// An app key as the caller gave it, cut to a length worth showing.
fn shown(key: &str) -> String {
    const SHOWN: usize = 64;
    match key.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{}…", key.get(..end).unwrap_or_default()),
        None => key.to_owned(),
    }
}

/// Admits a connection to the app with `key` and opens its session, or
/// says with which code and message to refuse it.
fn open(frontend: &Arc<Frontend>, key: &str, query: &ConnectQuery) -> Result<Session, (u16, String)> {
    let (apps, _) = frontend.apps.accepted();
    let app =
        apps.by_key(key).ok_or_else(|| (close::APP_NOT_FOUND, format!("App key {} does not exist", shown(key))))?;
    match query.protocol.as_deref().map(str::parse::<u32>) {
        None => return Err((close::NO_PROTOCOL, "No protocol version given".into())),
        Some(Ok(version)) if PROTOCOLS.contains(&version) => {}
        Some(_) => return Err((close::UNSUPPORTED_PROTOCOL, "Unsupported protocol version".into())),
    }
    let slot = app.admit().ok_or_else(|| (close::OVER_QUOTA, "Application is over connection quota".to_owned()))?;
    let outbox = Arc::new(Outbox::new(frontend.settings.queue_max_bytes));
    Session::open(frontend.clone(), app.clone(), slot, outbox).map_err(|error| (close::RECONNECT, error.to_string()))
}

/// Tells a refused client why, and closes.
async fn refuse<T: Transport>(mut transport: T, code: u16, message: String, write_timeout: std::time::Duration) {
    let _ = tokio::time::timeout(write_timeout, async {
        let _ = transport.send_text(error_frame(Some(code), &message, None)).await;
        transport.close(code, message).await;
    })
    .await;
}

struct Session {
    frontend: Arc<Frontend>,
    app: Arc<App>,
    _slot: AppSlot,
    conn: Arc<Connection>,
    outbox: Arc<Outbox>,
    /// When the client last sent anything.
    last_heard: Instant,
    /// When the server pinged and still waits for a sign of life.
    pinged: Option<Instant>,
    /// Client events in the current one-second window.
    rate_window: (Instant, u32),
    /// The client's command and subscription rates.
    rates: ConnectionRates,
    /// Set once the connection signed in (boxed: most never do).
    signed_in: Option<Box<SignedIn>>,
}

/// What a sign-in told of its user, beside its id (the connection's user).
#[derive(Debug)]
struct SignedIn {
    /// `user_info` of its `user_data`: what presence channels show of the
    /// user when their authorization names no member (as Pusher does).
    user_info: Option<bytes::Bytes>,
}

/// A frame from the client: `data` may be an object or a JSON string.
#[derive(Debug, Deserialize)]
struct ClientFrame {
    event: String,
    #[serde(default)]
    channel: Option<String>,
    /// As the client wrote it: a client event's data goes on as sent, its
    /// keys in their order.
    #[serde(default)]
    data: Option<Box<RawValue>>,
}

/// Reads `data` that may arrive as an object or as a JSON string of one.
pub(crate) fn data_as<T: for<'de> Deserialize<'de>>(data: Option<&RawValue>) -> Option<T> {
    let raw = data?.get();
    match raw.starts_with('"') {
        true => serde_json::from_str(&serde_json::from_str::<String>(raw).ok()?).ok(),
        false => serde_json::from_str(raw).ok(),
    }
}

fn new_socket_id() -> String {
    format!("{}.{}", rand::random::<u32>(), rand::random::<u32>())
}

impl Session {
    fn open(frontend: Arc<Frontend>, app: Arc<App>, slot: AppSlot, outbox: Arc<Outbox>) -> Result<Self, HubError> {
        let socket_id = new_socket_id();
        let conn = frontend.hub().connect(ConnectionSpec {
            client: ClientId::new(&socket_id),
            user: UserId::anonymous(),
            conn_info: None,
            encoder: app.encoder.clone(),
            outbox: outbox.clone(),
        })?;
        let timeout = frontend.settings.activity_timeout.as_secs();
        let established = serde_json::json!({ "socket_id": socket_id, "activity_timeout": timeout }).to_string();
        let _ = outbox.push(Outgoing::Frame(
            Frame { event: "pusher:connection_established", channel: None, data: &established, user_id: None }
                .encode()
                .into(),
        ));
        let now = Instant::now();
        let rates = ConnectionRates::new(frontend.settings.rates, now);
        Ok(Self {
            frontend,
            app,
            _slot: slot,
            conn,
            outbox,
            last_heard: now,
            pinged: None,
            rate_window: (now, 0),
            rates,
            signed_in: None,
        })
    }

    /// The connection's socket id: its client id in the hub (kept once,
    /// there).
    fn socket_id(&self) -> &str {
        self.conn.client().as_str()
    }

    fn send(&self, frame: impl Into<herald_core::Frame>) {
        // A full outbox closes itself as slow; the loop then ends the session.
        let _ = self.outbox.push(Outgoing::Frame(frame.into()));
    }

    /// Counts a message against the command rate: `Ok(false)` when it is
    /// refused (the client is told), `Err` when the client keeps sending
    /// far over the rate.
    fn within_rate(&mut self) -> Result<bool, DisconnectReason> {
        let (settings, now) = (&self.frontend.settings, Instant::now());
        let verdict = self.rates.command(settings.rates, now).max(settings.users.take(&self.conn.user(), now));
        match verdict {
            Verdict::Allowed => Ok(true),
            Verdict::Refused => {
                let message = "Too many messages: slow down (client.command_rate)";
                self.send(error_frame(Some(close::CLIENT_EVENT_REJECTED), message, None));
                Ok(false)
            }
            Verdict::Abuse => {
                tracing::info!(socket_id = %self.socket_id(), "far over a command rate; disconnecting");
                Err(DisconnectReason::TooManyRequests)
            }
        }
    }

    async fn on_frame(&mut self, frame: &[u8]) -> Result<(), DisconnectReason> {
        let message: ClientFrame = match serde_json::from_slice(frame) {
            Ok(message) => message,
            Err(error) => {
                if !self.within_rate()? {
                    return Ok(());
                }
                // Never the frame, nor serde's message (which may quote it):
                // it may carry a signature.
                let (kind, column) = (error.classify(), error.column());
                tracing::info!(socket_id = %self.socket_id(), ?kind, column, bytes = frame.len(), "malformed pusher frame");
                self.send(error_frame(None, &format!("Invalid message: {error}"), None));
                return Ok(());
            }
        };
        let heartbeat = matches!(message.event.as_str(), "pusher:ping" | "pusher:pong");
        if !heartbeat && !self.within_rate()? {
            return Ok(());
        }
        match message.event.as_str() {
            "pusher:ping" => self.send(object_frame("pusher:pong", None, &serde_json::json!({}))),
            "pusher:pong" => {}
            "pusher:subscribe" => self.on_subscribe(message.data.as_deref()).await?,
            "pusher:unsubscribe" => {
                let channel = data_as::<subscribe::SubscribeData>(message.data.as_deref())
                    .and_then(|d| self.app.channel(&d.channel));
                if let Some(channel) = channel {
                    self.frontend.hub().unsubscribe(&self.conn, &channel).await;
                }
            }
            "pusher:signin" => return self.on_signin(message.data.as_deref()),
            name if name.starts_with("client-") => {
                self.on_client_event(name, message.channel.as_deref(), message.data.as_deref()).await
            }
            other => {
                tracing::debug!(socket_id = %self.socket_id(), event = other, "unsupported pusher event ignored");
                self.send(error_frame(None, &format!("Unsupported event: {other}"), None));
            }
        }
        Ok(())
    }
}

mod client_events;
mod subscribe;

/// Reads a client frame as a session does, then every kind of `data` it
/// may carry: the Pusher frame fuzz target's entry.
#[cfg(feature = "fuzzing")]
pub(crate) fn read_frame(frame: &[u8]) {
    let Ok(message) = serde_json::from_slice::<ClientFrame>(frame) else { return };
    if let Some(request) = data_as::<subscribe::SubscribeData>(message.data.as_deref()) {
        let _ = super::valid_channel_name(&request.channel);
        let _ = super::conventions::ChannelKind::of(&request.channel);
        if let Some(channel_data) = request.channel_data() {
            let _ = subscribe::presence_member(channel_data);
        }
    }
    let _ = data_as::<client_events::SigninData>(message.data.as_deref());
    if let Some(text) = client_events::data_text(message.data.as_deref()) {
        let _ = super::publication_data(&text);
    }
}

impl Protocol for Session {
    const NAME: &'static str = "pusher";

    fn framing(&self) -> Framing {
        Framing::Messages
    }

    fn parts(&self) -> Parts<'_> {
        Parts { settings: &self.frontend.driver, outbox: &self.outbox, connection: Some(&self.conn) }
    }

    fn next_deadline(&self) -> Instant {
        match self.pinged {
            Some(at) => driver::after(at, self.frontend.settings.pong_timeout),
            None => driver::after(self.last_heard, self.frontend.settings.activity_timeout),
        }
    }

    async fn on_message(&mut self, message: Inbound) -> Result<Option<Inbound>, DisconnectReason> {
        self.last_heard = Instant::now();
        self.pinged = None;
        let frame = driver::text_only(message, &self.socket_id())?;
        // One event per message: nothing is ever left for later.
        self.on_frame(&frame).await.map(|()| None)
    }

    async fn on_timer(&mut self) -> Result<(), DisconnectReason> {
        if self.pinged.is_some() {
            return Err(DisconnectReason::NoPong);
        }
        self.pinged = Some(Instant::now());
        self.send(object_frame("pusher:ping", None, &serde_json::json!({})));
        Ok(())
    }

    /// A server-side subscription change, as a Pusher frame. Pusher has no
    /// server-side unsubscribe push; the client simply stops receiving the
    /// channel. (A Pusher subscription is never positioned, so never ended
    /// for publications the node missed: see `PusherEncoder::has_positions`.)
    fn on_event(&mut self, event: ConnEvent) -> Result<Option<herald_core::Frame>, DisconnectReason> {
        Ok(match event {
            ConnEvent::Subscribed { channel, .. } => {
                self.app.name_of(&channel).map(|name| super::subscription_succeeded(name, "{}").into())
            }
            ConnEvent::Unsubscribed { .. } | ConnEvent::Refresh { .. } => None,
        })
    }

    fn close_code(&self, reason: &DisconnectReason) -> (u16, String) {
        disconnect_code(reason)
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod presence_tests;
