//! One Centrifuge protocol session: a connection's state machine, run by
//! the session driver (`driver.rs`).
//!
//! The session decodes the client's frames into commands and handles them
//! (in `commands`), encodes server-side events, and keeps its timers:
//! connect timeout, ping/pong, connection and subscription token expiry.
//! Replies and pings go through the outbox, so a frame of several commands
//! is answered by one frame of several replies.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::time::Instant;

use herald_core::{
    ChannelRules, ConnEvent, Connection, Frame, Hub, HubError, Outbox, Outgoing, SubscriptionSerial, UnsubscribeReason,
};
use herald_engine::{ChannelName, ClientId, DisconnectReason, StreamPosition};

use super::codes::{self, ClientError};
use super::command::{self, Command, Method};
use super::encode::{self, CentrifugeEncoder, UniEncoder};
use super::protobuf::{self, ProtobufEncoder};
use crate::auth::{self, TokenVerifier};
use crate::driver::{self, DriverSettings, Framing, Parts, Protocol};
use crate::proxy::{ClientContext, Proxies};
use crate::rate::{ConnectionRates, RateLimit, RateLimits, UserRates, Verdict};
use crate::transport::{Inbound, Transport};

/// Session settings, taken from `[client]`.
#[derive(Debug, Clone)]
pub(crate) struct SessionSettings {
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    pub connect_timeout: Duration,
    pub expired_close_delay: Duration,
    pub expired_sub_close_delay: Duration,
    pub queue_max_bytes: usize,
    pub allow_anonymous: bool,
    /// The rates each connection is held to.
    pub rates: RateLimits,
    /// The node's per-user buckets.
    pub users: Arc<UserRates>,
}

/// What every session of a node shares.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The hub, the write timeout and the shutdown signal.
    pub driver: DriverSettings,
    /// Rotated by a reload that changes the token keys.
    pub verifier: crate::rotating::Rotating<TokenVerifier>,
    pub settings: SessionSettings,
    pub encoder: Arc<CentrifugeEncoder>,
    /// The encoder of uni-directional connections (bare pushes).
    pub uni_encoder: Arc<UniEncoder>,
    /// The encoder of Protobuf connections.
    pub protobuf_encoder: Arc<ProtobufEncoder>,
    /// The application's proxies, if any are configured.
    pub proxies: Arc<Proxies>,
    /// The node's Pusher apps, if it serves any: the channels they
    /// authorize themselves are not the Centrifuge clients' to take.
    pub pusher: Option<Arc<crate::pusher::Frontend>>,
}

impl Shared {
    fn hub(&self) -> &Arc<Hub> {
        &self.driver.hub
    }
}

/// What a client speaks over its transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Commands and replies, both over the transport (WebSocket).
    Bidirectional,
    /// Commands and replies, the commands posted to `/emulation` by key
    /// (the context's `emulation_key`, which the connect reply names).
    Emulated,
    /// Server to client only: the client's one message is a connect
    /// request; then it gets bare pushes and pings it need not answer.
    Unidirectional,
}

/// How a client's messages are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    /// JSON text, messages a line each.
    Json,
    /// Protobuf, length-delimited messages in binary frames
    /// (the `centrifuge-protobuf` subprotocol).
    Protobuf,
}

/// `json` (a reply or push the session wrote) as a client speaking
/// `encoding` reads it; empty (and so not sent) if it cannot be, which
/// would be a bug, logged.
pub(crate) fn encoded(encoding: Encoding, json: Bytes) -> Frame {
    match encoding {
        Encoding::Json => Frame::Text(crate::json::text(json)),
        // The commonest message of all.
        Encoding::Protobuf if json == encode::PING => Frame::Binary(Bytes::from_static(protobuf::PING)),
        Encoding::Protobuf => Frame::Binary(protobuf::transcode(&json).unwrap_or_else(|error| {
            tracing::error!(%error, "a reply could not be put in Protobuf (a bug); not sent");
            Bytes::new()
        })),
    }
}

/// How a command can fail: with an error reply, or by ending the session.
enum Failure {
    Reply(ClientError),
    Disconnect(DisconnectReason),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure::Reply(e)
    }
}

impl From<HubError> for Failure {
    fn from(e: HubError) -> Self {
        Failure::Reply(ClientError::Hub(e))
    }
}

/// Runs a session on `transport` to its end. `context` is what the
/// proxies pass on of the client's HTTP request, when any is configured.
pub(crate) fn run<T: Transport>(
    transport: T,
    shared: Arc<Shared>,
    context: Option<Arc<ClientContext>>,
    mode: Mode,
    encoding: Encoding,
) -> impl Future<Output = ()> + Send {
    let outbox = Arc::new(Outbox::new(shared.settings.queue_max_bytes));
    driver::run(transport, Session::new(shared, outbox, context, mode, encoding))
}

struct Session {
    shared: Arc<Shared>,
    outbox: Arc<Outbox>,
    conn: Option<Arc<Connection>>,
    next_ping: Instant,
    pong_deadline: Option<Instant>,
    /// Before the connect command: when the connection is closed for not
    /// sending it. After: when it is closed for an expired token (expiry +
    /// grace), or refreshed through the proxy. (One field for both: every
    /// idle connection holds a session.)
    expire_deadline: Option<Instant>,
    /// When each expiring subscription ends (expiry + grace).
    sub_deadlines: SubDeadlines,
    /// The server-side subscriptions (the token's or the connect proxy's
    /// channels, the server API's subscribes).
    server_side: ServerSide,
    /// The client's command and subscription rates.
    rates: ConnectionRates,
    /// The client's request headers and address, for the proxies.
    context: Option<Arc<ClientContext>>,
    /// At `expire_deadline` the refresh proxy is asked to extend the
    /// connection, instead of closing it.
    refresh_by_proxy: bool,
    mode: Mode,
    encoding: Encoding,
}

/// When an expiring subscription ends, or (`by_proxy`) is to be extended
/// by the namespace's sub_refresh proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SubDeadline {
    channel: ChannelName,
    at: Instant,
    by_proxy: bool,
    /// The subscription it is for. The server may have unsubscribed the
    /// connection and subscribed it again (through the API) before the
    /// session has read the events that say so: that subscription is not
    /// this deadline's to end.
    serial: SubscriptionSerial,
}

/// The deadlines of a connection's expiring subscriptions, one a channel.
/// A plain list: a connection has a handful of expiring subscriptions at
/// most, and every connection's session holds one (a hash map would cost
/// each of them 24 bytes more).
#[derive(Debug, Default)]
struct SubDeadlines(Vec<SubDeadline>);

impl SubDeadlines {
    /// Sets the deadline of its channel's subscription, replacing any.
    fn set(&mut self, deadline: SubDeadline) {
        match self.0.iter_mut().find(|known| known.channel == deadline.channel) {
            Some(entry) => *entry = deadline,
            None => self.0.push(deadline),
        }
    }

    fn remove(&mut self, channel: &ChannelName) {
        self.0.retain(|known| known.channel != *channel);
    }

    fn earliest(&self) -> Option<Instant> {
        self.0.iter().map(|deadline| deadline.at).min()
    }

    /// The deadlines that have come, taken out of the list.
    fn take_due(&mut self, now: Instant) -> Vec<SubDeadline> {
        let (due, kept) = std::mem::take(&mut self.0).into_iter().partition(|deadline| now >= deadline.at);
        self.0 = kept;
        due
    }

    /// Whether the sub_refresh proxy extends `channel`'s subscription.
    fn by_proxy(&self, channel: &ChannelName) -> bool {
        self.0.iter().any(|known| known.channel == *channel && known.by_proxy)
    }
}

/// The channels the server subscribed the connection to. A client cannot
/// resubscribe to one of them to recover (centrifuge-js forgets a
/// server-side subscription it is unsubscribed from): it reconnects, as
/// Centrifugo has it. A boxed slice, rewritten on the rare change: every
/// connection's session holds this, most of them empty.
#[derive(Debug, Default)]
struct ServerSide(Box<[ChannelName]>);

impl ServerSide {
    fn insert(&mut self, channel: ChannelName) {
        if !self.contains(&channel) {
            let mut channels = std::mem::take(&mut self.0).into_vec();
            channels.push(channel);
            self.0 = channels.into_boxed_slice();
        }
    }

    fn remove(&mut self, channel: &ChannelName) {
        if self.contains(channel) {
            self.0 = self.0.iter().filter(|known| *known != channel).cloned().collect();
        }
    }

    fn contains(&self, channel: &ChannelName) -> bool {
        self.0.contains(channel)
    }
}

#[derive(Serialize)]
struct ConnectResult<'a> {
    client: &'a str,
    version: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    expires: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl: Option<u32>,
    ping: u64,
    pong: bool,
    node: &'a str,
    /// The key of an emulated session, which the client's commands carry.
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<&'a str>,
    /// The connect proxy's data for the client.
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
}

/// Whether a connection or subscription expires, and in how many seconds.
#[derive(Debug, Serialize, Default)]
pub(crate) struct ExpiryResult {
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub expires: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u32>,
}

impl ExpiryResult {
    /// For a token expiring at the unix time `exp`. The protocol's ttl is
    /// a 32-bit count of seconds: a token that expires later than that
    /// (`exp: 9999999999`, "never") is told the most it can hold, 136
    /// years, where a wider one could not be put in Protobuf at all.
    fn at(exp: Option<u64>) -> Self {
        match exp {
            Some(exp) => {
                let ttl = u32::try_from(exp.saturating_sub(auth::unix_now())).unwrap_or(u32::MAX);
                Self { expires: true, ttl: Some(ttl) }
            }
            None => Self::default(),
        }
    }
}

/// A `refresh` command's result.
#[derive(Serialize)]
struct RefreshResult<'a> {
    client: &'a str,
    version: &'static str,
    #[serde(flatten)]
    expiry: ExpiryResult,
}

#[derive(Serialize)]
struct Empty {}

/// A `subscribe` push's body: where a server-side subscription starts in
/// its channel's stream, for the client to follow and to name when it
/// comes back, and the data the server sends with it (Centrifuge's
/// `Subscribe` push).
#[derive(Serialize)]
struct SubscribePush {
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    recoverable: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    positioned: bool,
    #[serde(skip_serializing_if = "str::is_empty")]
    epoch: String,
    #[serde(skip_serializing_if = "is_zero")]
    offset: u64,
}

impl SubscribePush {
    fn new(position: Option<StreamPosition>, recoverable: bool, data: Option<Bytes>) -> Self {
        let positioned = position.is_some();
        let (epoch, offset) = position.map_or((String::new(), 0), |p| (p.epoch.as_str().to_owned(), p.offset.get()));
        // JSON the server API checked; anything else is left out.
        let data = data.and_then(|data| {
            let raw = String::from_utf8(data.to_vec()).ok().and_then(|text| RawValue::from_string(text).ok());
            if raw.is_none() {
                tracing::debug!("a server-side subscription's data is not JSON; sent without it");
            }
            raw
        });
        Self { data, recoverable, positioned, epoch, offset }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Session {
    /// Sets when `channel`'s subscription expires (`exp`, unix seconds):
    /// the sub_refresh proxy is asked then (`by_proxy`), or it ends once
    /// `client.expired_sub_close_delay` has passed too.
    /// `serial` names the subscription.
    fn subscription_expires(&mut self, channel: ChannelName, exp: u64, by_proxy: bool, serial: SubscriptionSerial) {
        let grace = if by_proxy { Duration::ZERO } else { self.shared.settings.expired_sub_close_delay };
        self.sub_deadlines.set(SubDeadline { channel, at: deadline_after(exp, grace), by_proxy, serial });
    }
}

/// The instant `grace` after the unix time `exp` (which a token or the API
/// gave, so it may be anything).
fn deadline_after(exp: u64, grace: Duration) -> Instant {
    let wait = Duration::from_secs(exp.saturating_sub(auth::unix_now())).saturating_add(grace);
    driver::after(Instant::now(), wait)
}

impl Session {
    fn new(
        shared: Arc<Shared>,
        outbox: Arc<Outbox>,
        context: Option<Arc<ClientContext>>,
        mode: Mode,
        encoding: Encoding,
    ) -> Self {
        let now = Instant::now();
        let settings = &shared.settings;
        Self {
            outbox,
            next_ping: driver::after(now, settings.ping_interval),
            pong_deadline: None,
            expire_deadline: Some(driver::after(now, settings.connect_timeout)),
            sub_deadlines: SubDeadlines::default(),
            server_side: ServerSide::default(),
            rates: ConnectionRates::new(settings.rates, now),
            conn: None,
            shared,
            context,
            refresh_by_proxy: false,
            mode,
            encoding,
        }
    }

    /// Whether the client gets bare pushes and nothing else.
    fn unidirectional(&self) -> bool {
        self.mode == Mode::Unidirectional
    }

    /// A push in the client's framing.
    fn push<T: Serialize>(&self, channel: Option<&ChannelName>, kind: &str, body: &T) -> Bytes {
        encode::push(channel, kind, body, !self.unidirectional())
    }

    /// The push that tells the client the server ended its subscription.
    fn unsubscribe_push(&self, channel: &ChannelName, reason: UnsubscribeReason) -> Bytes {
        let (code, reason) = codes::unsubscribe_code(reason);
        self.push(Some(channel), "unsubscribe", &serde_json::json!({"code": code, "reason": reason}))
    }

    /// A uni-directional client's one message: its connect request. What
    /// it sends after that is ignored. A refused connect ends the session,
    /// as the client cannot be sent an error reply.
    async fn on_uni_message(&mut self, frame: Bytes) -> Result<(), DisconnectReason> {
        if self.conn.is_some() {
            tracing::debug!(client = ?self.client(), bytes = frame.len(), "message on a uni-directional connection ignored");
            return Ok(());
        }
        let text = if frame.iter().all(u8::is_ascii_whitespace) { &b"{}"[..] } else { &frame[..] };
        let request = serde_json::from_slice(text).map_err(|error| {
            tracing::debug!(column = error.column(), "malformed uni-directional connect request");
            DisconnectReason::BadRequest
        })?;
        match self.on_connect(0, request).await {
            Ok(()) => Ok(()),
            Err(Failure::Disconnect(reason)) => Err(reason),
            Err(Failure::Reply(error)) => {
                tracing::info!(%error, "uni-directional connect refused");
                Err(super::codes::uni_connect_refusal(&error))
            }
        }
    }

    fn client(&self) -> Option<ClientId> {
        self.conn.as_ref().map(|c| c.client().clone())
    }

    /// Logs why a client's frame ends its connection: never the frame
    /// itself, which may carry a token.
    fn log_refusal(&self, reason: &DisconnectReason, frame: &[u8]) {
        tracing::info!(client = ?self.client(), ?reason, bytes = frame.len(), "closing connection after bad input");
    }

    fn reply(&self, message: Bytes) {
        // A full outbox closes itself as slow; the loop then ends the session.
        let _ = self.outbox.push(Outgoing::Frame(encoded(self.encoding, message)));
    }

    /// Takes the next command off the front of a frame: a line of JSON, or
    /// a length-delimited Protobuf message. `None` once it is empty.
    fn next_command(&self, rest: &mut Bytes) -> Option<Result<Command, DisconnectReason>> {
        Some(match self.encoding {
            Encoding::Json => Command::decode(&command::next_line(rest)?).map_err(|error| {
                // Where and how it is malformed; serde's message may quote the input.
                tracing::debug!(client = ?self.client(), kind = ?error.classify(), column = error.column(), "malformed command");
                DisconnectReason::BadRequest
            }),
            Encoding::Protobuf => protobuf::next_command(rest)?.map_err(|error| {
                tracing::debug!(client = ?self.client(), %error, "malformed Protobuf command");
                DisconnectReason::BadRequest
            }),
        })
    }

    /// Handles a frame's commands in order. Once their replies fill half
    /// the outbox, what is left of the frame is returned, to be handled
    /// after the driver has written the replies: a reconnecting client
    /// that recovers many channels at once gets them one after another
    /// instead of being closed as slow.
    async fn on_frame(&mut self, mut rest: Bytes) -> Result<Option<Bytes>, DisconnectReason> {
        while let Some(command) = self.next_command(&mut rest) {
            self.on_command(command?).await?;
            if !rest.is_empty() && self.outbox.past_half() {
                return Ok(Some(rest));
            }
        }
        Ok(None)
    }

    /// Counts a command against every rate it falls under: the
    /// connection's, its user's, its channel's namespace's, and for a
    /// subscribe the connection's subscription rate. The worst verdict wins.
    fn rate_of(&mut self, method: &Method) -> Verdict {
        let now = Instant::now();
        let settings = &self.shared.settings;
        let mut verdict = self.rates.command(settings.rates, now);
        if let Some(conn) = &self.conn {
            verdict = verdict.max(settings.users.take(&conn.user(), now));
        }
        let channel = method.channel().and_then(|name| ChannelName::new(name).ok());
        if let Some(channel) = &channel {
            let rules = self.shared.hub().rules();
            if let (Some(namespace), Ok(options)) = (ChannelRules::namespace_of(channel), rules.resolve(channel)) {
                let limit = RateLimit { rate: options.command_rate, burst: options.command_burst };
                verdict = verdict.max(self.rates.in_namespace(namespace, limit, now));
            }
        }
        if matches!(method, Method::Subscribe(_)) {
            verdict = verdict.max(self.rates.subscription(settings.rates, now));
        }
        verdict
    }

    async fn on_command(&mut self, command: Command) -> Result<(), DisconnectReason> {
        let id = command.id;
        let Some(method) = command.method else {
            self.pong_deadline = None;
            return Ok(());
        };
        match self.rate_of(&method) {
            Verdict::Allowed => {}
            Verdict::Refused if id > 0 => {
                self.reply(encode::error_reply(id, &ClientError::TooManyRequests));
                return Ok(());
            }
            Verdict::Refused => return Ok(()),
            Verdict::Abuse => {
                tracing::info!(client = ?self.client(), "far over a command rate; disconnecting");
                return Err(DisconnectReason::TooManyRequests);
            }
        }
        let expects_reply = !matches!(method, Method::Send(_));
        if expects_reply == (id == 0) {
            return Err(DisconnectReason::BadRequest);
        }
        if self.conn.is_none() != matches!(method, Method::Connect(_)) {
            return Err(DisconnectReason::BadRequest);
        }
        let outcome = match method {
            Method::Connect(req) => self.on_connect(id, req).await,
            Method::Subscribe(req) => self.on_subscribe(id, req).await,
            Method::Unsubscribe(req) => self.on_unsubscribe(id, &req.channel).await,
            Method::Publish(req) => self.on_publish(id, &req.channel, &req.data).await,
            Method::Presence(req) => self.on_presence(id, &req.channel, false).await,
            Method::PresenceStats(req) => self.on_presence(id, &req.channel, true).await,
            Method::History(req) => self.on_history(id, req).await,
            Method::Ping => {
                self.reply(encode::reply(id, "ping", &Empty {}));
                Ok(())
            }
            Method::Send(req) => {
                self.on_send(req.data.as_deref());
                Ok(())
            }
            Method::Rpc(req) => self.on_rpc(id, &req.method, req.data.as_deref()).await,
            Method::Unknown(name) => {
                tracing::debug!(client = ?self.client(), method = ?name, "unknown command");
                Err(ClientError::MethodNotFound.into())
            }
            Method::Refresh(req) => self.on_refresh(id, &req.token).await,
            Method::SubRefresh(req) => self.on_sub_refresh(id, &req.channel, &req.token).await,
        };
        match outcome {
            Ok(()) => Ok(()),
            Err(Failure::Reply(error)) => {
                match &error {
                    // Not the client's doing: the operator must see it.
                    ClientError::Hub(HubError::EngineUnavailable(_)) => tracing::warn!(
                        client = ?self.client(), id, %error,
                        "command failed: the engine did not answer in time; the client was told to retry (check the backplane's load and its command_timeout)"
                    ),
                    _ => tracing::debug!(client = ?self.client(), id, %error, "command refused"),
                }
                self.reply(encode::error_reply(id, &error));
                Ok(())
            }
            Err(Failure::Disconnect(reason)) => Err(reason),
        }
    }
}

impl Protocol for Session {
    const NAME: &'static str = "centrifuge";

    /// Replies and pushes share a frame, a line each; a uni-directional
    /// client, which has no SDK to split lines, gets one push per message.
    fn framing(&self) -> Framing {
        match (self.encoding, self.mode) {
            (Encoding::Protobuf, _) => Framing::Binary,
            (Encoding::Json, Mode::Unidirectional) => Framing::Messages,
            (Encoding::Json, Mode::Bidirectional | Mode::Emulated) => Framing::Lines,
        }
    }

    fn parts(&self) -> Parts<'_> {
        Parts { settings: &self.shared.driver, outbox: &self.outbox, connection: self.conn.as_ref() }
    }

    fn next_deadline(&self) -> Instant {
        if self.conn.is_none() {
            return self.expire_deadline.unwrap_or(self.next_ping);
        }
        let mut next = self.next_ping;
        for candidate in [self.pong_deadline, self.expire_deadline].into_iter().flatten() {
            next = next.min(candidate);
        }
        match self.sub_deadlines.earliest() {
            Some(deadline) => next.min(deadline),
            None => next,
        }
    }

    async fn on_message(&mut self, message: Inbound) -> Result<Option<Inbound>, DisconnectReason> {
        let frame = match self.encoding {
            Encoding::Json => driver::text_only(message, &self.client())?,
            Encoding::Protobuf => match message {
                Inbound::Binary(frame) => frame,
                Inbound::Text(_) => {
                    tracing::info!(client = ?self.client(), "text message on a Protobuf connection; closing");
                    return Err(DisconnectReason::BadRequest);
                }
            },
        };
        if self.unidirectional() {
            return self.on_uni_message(frame).await.map(|()| None);
        }
        let handled = self.on_frame(frame.clone()).await;
        if let Err(reason) = &handled {
            self.log_refusal(reason, &frame);
        }
        let rest = match self.encoding {
            Encoding::Json => Inbound::Text,
            Encoding::Protobuf => Inbound::Binary,
        };
        handled.map(|left| left.map(rest))
    }

    async fn on_timer(&mut self) -> Result<(), DisconnectReason> {
        let now = Instant::now();
        let Some(conn) = self.conn.clone() else {
            let connect_timed_out = self.expire_deadline.is_some_and(|deadline| now >= deadline);
            return if connect_timed_out { Err(DisconnectReason::Stale) } else { Ok(()) };
        };
        if self.pong_deadline.is_some_and(|d| now >= d) {
            return Err(DisconnectReason::NoPong);
        }
        if self.expire_deadline.is_some_and(|d| now >= d) {
            if !self.refresh_by_proxy {
                return Err(DisconnectReason::ConnectionExpired);
            }
            self.refresh_through_proxy(&conn).await?;
        }
        // One backend call per pass: others due wait for the next pass (at
        // once, after the driver has written and read), so a slow backend
        // never holds the connection for more than one timeout.
        let mut asked = false;
        for due in self.sub_deadlines.take_due(now) {
            if due.by_proxy && asked {
                self.sub_deadlines.set(SubDeadline { at: now, ..due });
                continue;
            }
            if due.by_proxy {
                asked = true;
                self.sub_refresh_through_proxy(&conn, due).await?;
                continue;
            }
            self.end_expired_subscription(&conn, due.channel, due.serial).await;
        }
        if now >= self.next_ping {
            self.next_ping = driver::after(now, self.shared.settings.ping_interval);
            // A uni-directional client cannot answer.
            if self.pong_deadline.is_none() && !self.unidirectional() {
                self.pong_deadline = Some(driver::after(now, self.shared.settings.pong_timeout));
            }
            self.reply(Bytes::from_static(encode::PING));
        }
        Ok(())
    }

    /// Encodes a server-side event, updating session state on the way.
    fn on_event(&mut self, event: ConnEvent) -> Result<Option<Frame>, DisconnectReason> {
        let json = self.event_push(event)?;
        Ok(Some(encoded(self.encoding, json)))
    }

    fn close_code(&self, reason: &DisconnectReason) -> (u16, String) {
        codes::disconnect_code(reason)
    }
}

impl Session {
    /// The push (JSON) that tells the client of a server-side event.
    fn event_push(&mut self, event: ConnEvent) -> Result<Bytes, DisconnectReason> {
        Ok(match event {
            ConnEvent::Subscribed { channel, position, recoverable, data, expire_at, serial } => {
                let push = self.push(Some(&channel), "subscribe", &SubscribePush::new(position, recoverable, data));
                // As Centrifugo: at its expiry the namespace's sub_refresh
                // proxy is asked to extend it, or it ends (2501) once the
                // grace a client's subscription gets has passed too.
                match expire_at {
                    Some(exp) => {
                        let rules = self.shared.hub().rules();
                        let by_proxy = rules.resolve(&channel).is_ok_and(|o| o.sub_refresh_proxy.is_some());
                        self.subscription_expires(channel.clone(), exp, by_proxy, serial);
                    }
                    None => self.sub_deadlines.remove(&channel),
                }
                self.server_side.insert(channel);
                push
            }
            // A uni-directional client, or any client for a server-side
            // subscription, cannot resubscribe to recover: it reconnects,
            // naming its positions.
            ConnEvent::Unsubscribed { channel, reason: UnsubscribeReason::InsufficientState }
                if self.unidirectional() || self.server_side.contains(&channel) =>
            {
                return Err(DisconnectReason::Custom {
                    code: codes::INSUFFICIENT_STATE,
                    reason: "insufficient state".to_owned(),
                    reconnect: true,
                })
            }
            ConnEvent::Unsubscribed { channel, reason } => {
                self.sub_deadlines.remove(&channel);
                self.server_side.remove(&channel);
                self.unsubscribe_push(&channel, reason)
            }
            ConnEvent::Refresh { expired: true, .. } => return Err(DisconnectReason::ConnectionExpired),
            ConnEvent::Refresh { expire_at, expired: false } => {
                let grace = self.shared.settings.expired_close_delay;
                self.expire_deadline = expire_at.map(|exp| deadline_after(exp, grace));
                self.push(None, "refresh", &ExpiryResult::at(expire_at))
            }
        })
    }
}

mod commands;
mod proxied;

#[cfg(test)]
mod sub_deadline_tests {
    use super::*;

    fn channel(name: &str) -> ChannelName {
        ChannelName::new(name).unwrap()
    }

    #[test]
    fn a_channel_keeps_one_deadline_and_the_due_ones_are_taken_out() {
        let now = Instant::now();
        let deadline = |name: &str, secs: u64, by_proxy: bool| SubDeadline {
            channel: channel(name),
            at: now + Duration::from_secs(secs),
            by_proxy,
            serial: SubscriptionSerial::default(),
        };
        let mut deadlines = SubDeadlines::default();
        assert_eq!(deadlines.earliest(), None);
        deadlines.set(deadline("a", 5, false));
        deadlines.set(deadline("b", 9, false));
        deadlines.set(deadline("a", 1, true));
        assert_eq!(deadlines.0.len(), 2, "a refreshed channel replaces its deadline");
        assert_eq!(deadlines.earliest(), Some(now + Duration::from_secs(1)));
        assert_eq!(deadlines.take_due(now + Duration::from_secs(2)), vec![deadline("a", 1, true)]);
        assert_eq!(deadlines.earliest(), Some(now + Duration::from_secs(9)));
        deadlines.remove(&channel("b"));
        assert_eq!(deadlines.earliest(), None);
    }
}
