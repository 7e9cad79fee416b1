//! The Pusher Channels protocol 7 front-end, its HTTP API and webhooks, so
//! pusher-js, Laravel Echo and the Pusher server SDKs work unchanged.
//!
//! Pusher clients share the hub with Centrifuge clients: an app's channel
//! `news` is the hub channel `news` (or `<namespace>:news` when the app has
//! a namespace), so a publication reaches subscribers whichever protocol
//! they speak. A Pusher event is a publication whose `event` tag names it;
//! a publication without that tag reaches Pusher clients as `message`.
//!
//! - [`conventions`]: what `presence-` and `cache-` channel names mean.
//! - [`session`]: one WebSocket connection at `/app/{key}`.
//! - [`rest`]: the HTTP API at `/apps/{id}/…`, with signature checks.
//! - [`webhooks`]: signed, batched, retried webhooks.
//! - [`sign`]: the HMAC signatures all of them use.

pub(crate) mod conventions;
mod counts;
pub(crate) mod rest;
pub(crate) mod session;
pub mod sign;
pub(crate) mod webhooks;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use herald_core::{Hub, PushEncoder, Text};

use crate::driver::DriverSettings;
use herald_engine::{ChannelName, PresenceEvent, Publication};

use conventions::ChannelKind;

use crate::config::{PusherApp, PusherConfig};
use webhooks::Webhooks;

/// The tag that carries a publication's Pusher event name.
pub(crate) const EVENT_TAG: &str = "event";
/// The event name Pusher clients see for a publication without one.
pub(crate) const DEFAULT_EVENT: &str = "message";
/// The longest channel name Pusher clients may use.
pub(crate) const MAX_CHANNEL_NAME: usize = 200;
/// The longest event name.
pub(crate) const MAX_EVENT_NAME: usize = 200;
/// Where a signed-in user's messages go.
pub(crate) const USER_CHANNEL_PREFIX: &str = "#server-to-user-";

/// One configured app and what its connections share.
#[derive(Debug)]
pub(crate) struct App {
    pub(crate) config: PusherApp,
    pub(crate) encoder: Arc<PusherEncoder>,
    /// This node's open connections of the app.
    connections: AtomicUsize,
}

impl App {
    fn new(config: PusherApp) -> Self {
        let encoder = Arc::new(PusherEncoder { namespace: config.namespace.clone(), app: config.id.clone() });
        Self { config, encoder, connections: AtomicUsize::new(0) }
    }

    /// The hub channel for one of the app's channel names, if the name is
    /// one Pusher allows.
    pub(crate) fn channel(&self, name: &str) -> Option<ChannelName> {
        if !valid_channel_name(name) {
            return None;
        }
        match self.config.namespace.as_str() {
            "" => ChannelName::new(name).ok(),
            ns => ChannelName::new(&format!("{ns}:{name}")).ok(),
        }
    }

    /// The app's name for a hub channel, if the channel is the app's.
    pub(crate) fn name_of<'a>(&self, channel: &'a ChannelName) -> Option<&'a str> {
        self.encoder.name_of(channel)
    }

    /// Counts a new connection unless the app is at `max_connections`.
    pub(crate) fn admit(self: &Arc<Self>) -> Option<AppSlot> {
        let limit = self.config.max_connections;
        let previous = self.connections.fetch_add(1, Ordering::AcqRel);
        if limit > 0 && previous >= limit {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(AppSlot(self.clone()))
    }
}

/// A connection's place in its app's count; released on drop.
#[derive(Debug)]
pub(crate) struct AppSlot(Arc<App>);

impl Drop for AppSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether Pusher clients may use `name`: `[A-Za-z0-9_\-=@,.;]`, at most
/// 200 characters, or a signed-in user's `#server-to-user-<id>` channel.
pub(crate) fn valid_channel_name(name: &str) -> bool {
    let body = name.strip_prefix('#').filter(|_| name.starts_with(USER_CHANNEL_PREFIX)).unwrap_or(name);
    !body.is_empty()
        && name.len() <= MAX_CHANNEL_NAME
        && body.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-=@,.;".contains(&b))
}

/// Whether a channel needs a signed authorization to subscribe.
pub fn is_private(name: &str) -> bool {
    name.starts_with("private-") || name.starts_with("presence-")
}

/// The apps by key and by id.
#[derive(Debug, Default)]
pub(crate) struct Apps {
    by_key: HashMap<String, Arc<App>>,
    by_id: HashMap<String, Arc<App>>,
}

impl Apps {
    pub(crate) fn new(apps: &[PusherApp]) -> Self {
        let mut out = Self::default();
        for config in apps {
            let app = Arc::new(App::new(config.clone()));
            out.by_key.insert(config.key.clone(), app.clone());
            out.by_id.insert(config.id.clone(), app);
        }
        out
    }

    pub(crate) fn by_key(&self, key: &str) -> Option<&Arc<App>> {
        self.by_key.get(key)
    }

    pub(crate) fn by_id(&self, id: &str) -> Option<&Arc<App>> {
        self.by_id.get(id)
    }

    /// The app whose channel `channel` is.
    pub(crate) fn owner(&self, channel: &ChannelName) -> Option<&Arc<App>> {
        let namespace = herald_core::ChannelRules::namespace_of(channel).unwrap_or("");
        self.by_id.values().find(|app| app.config.namespace == namespace)
    }
}

/// Session timers, from `[pusher]` and `[client]`.
#[derive(Debug, Clone)]
pub(crate) struct PusherSettings {
    pub(crate) activity_timeout: Duration,
    pub(crate) pong_timeout: Duration,
    pub(crate) queue_max_bytes: usize,
    /// How the HTTP API's request bodies are read.
    pub(crate) body: crate::http::body::BodyLimits,
    /// The rates each connection is held to.
    pub(crate) rates: crate::rate::RateLimits,
    /// The node's per-user buckets.
    pub(crate) users: Arc<crate::rate::UserRates>,
}

/// What every Pusher session and API call of a node shares.
pub(crate) struct Frontend {
    /// The hub, the write timeout and the shutdown signal.
    pub(crate) driver: DriverSettings,
    /// Replaced by a reload; the previous apps' secrets still sign HTTP API
    /// calls during `node.key_overlap`.
    pub(crate) apps: crate::rotating::Rotating<Apps>,
    pub(crate) settings: PusherSettings,
    webhooks: std::sync::RwLock<Arc<Webhooks>>,
    /// What starting webhook workers needs again on a reload.
    webhook_tls: Option<tokio_rustls::TlsConnector>,
    /// Subscription counts about to be sent.
    counts: counts::Counts,
    /// Departure webhooks waiting out their grace.
    departures: Arc<webhooks::Departures>,
}

impl std::fmt::Debug for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frontend").field("apps", &self.apps).field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl Frontend {
    pub(crate) fn new(
        config: &PusherConfig,
        client: &crate::config::ClientConfig,
        (body, users): (crate::http::body::BodyLimits, Arc<crate::rate::UserRates>),
        driver: DriverSettings,
    ) -> Arc<Self> {
        let apps = Apps::new(&config.apps);
        // The configuration's check has read webhook_ca already.
        let tls = config
            .webhook_tls()
            .map_err(|problem| tracing::error!(%problem, "https:// webhook targets will not be reached"))
            .ok();
        let webhooks = Webhooks::start(&config.apps, None, tls.as_ref(), &driver.metrics);
        let settings = PusherSettings {
            activity_timeout: config.activity_timeout,
            pong_timeout: config.pong_timeout,
            queue_max_bytes: client.queue_max_bytes,
            body,
            rates: crate::rate::RateLimits::of(client),
            users,
        };
        let (apps, webhooks) = (crate::rotating::Rotating::new(apps), std::sync::RwLock::new(webhooks));
        let (counts, departures) = (counts::Counts::default(), Arc::default());
        Arc::new(Self { driver, apps, settings, webhooks, webhook_tls: tls, counts, departures })
    }

    /// What turns the hub's transitions into the apps' webhooks; the node
    /// installs it in the hub (with the events webhooks, if any).
    pub(crate) fn observer(self: &Arc<Self>) -> Arc<dyn herald_core::HubObserver> {
        Arc::new(webhooks::Observer::new(Arc::downgrade(self), self.departures.clone()))
    }

    /// The webhook targets of the apps as they are now.
    pub(crate) fn webhooks(&self) -> Arc<Webhooks> {
        self.webhooks.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the apps (a reload): connections keep the app they opened
    /// with; new connections and API calls use the new apps, and API calls
    /// signed with a replaced secret are accepted for `overlap`. Webhook
    /// targets the reload left as they were keep their workers and queues;
    /// workers start for new or changed ones, and those of removed or
    /// changed ones stop, their queues discarded.
    pub(crate) fn reload_apps(&self, config: &PusherConfig, overlap: std::time::Duration) {
        self.apps.rotate(Apps::new(&config.apps), overlap);
        let mut webhooks = self.webhooks.write().unwrap_or_else(|e| e.into_inner());
        let fresh = Webhooks::start(&config.apps, Some(&webhooks), self.webhook_tls.as_ref(), &self.driver.metrics);
        *webhooks = fresh;
    }

    /// The node's hub.
    pub(crate) fn hub(&self) -> &Arc<Hub> {
        &self.driver.hub
    }

    /// Whether `channel` is one an app authorizes itself: a private or
    /// presence channel (its subscribers signed by the app's backend) or a
    /// user's own channel (for the signed-in user alone). Clients of the
    /// node's other protocol reach it only as the server lets them.
    pub(crate) fn authorizes(&self, channel: &ChannelName) -> bool {
        let (apps, _) = self.apps.accepted();
        let name = apps.owner(channel).and_then(|app| app.name_of(channel));
        name.is_some_and(|name| is_private(name) || name.starts_with(USER_CHANNEL_PREFIX))
    }
}

/// Encodes pushes for one app's Pusher connections.
#[derive(Debug)]
pub(crate) struct PusherEncoder {
    namespace: String,
    /// The app's id.
    app: String,
}

/// A Pusher frame: `data` is a string (JSON inside, for pusher-js to parse).
#[derive(Debug, Serialize)]
pub(crate) struct Frame<'a> {
    pub(crate) event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) channel: Option<&'a str>,
    pub(crate) data: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) user_id: Option<&'a str>,
}

impl Frame<'_> {
    pub(crate) fn encode(&self) -> Text {
        crate::json::to_text(self)
    }
}

/// `pusher_internal:subscription_succeeded` with `data` (a JSON string).
pub(crate) fn subscription_succeeded(channel: &str, data: &str) -> Text {
    Frame { event: "pusher_internal:subscription_succeeded", channel: Some(channel), data, user_id: None }.encode()
}

/// The member a `pusher_internal:member_added` (`true`) or
/// `pusher_internal:member_removed` (`false`) frame of `channel` tells of,
/// read back from the frame [`PusherEncoder`] encoded; `None` for any
/// other frame.
pub(crate) fn member_change(frame: &[u8], channel: &str) -> Option<(bool, String)> {
    #[derive(Deserialize)]
    struct Told<'a> {
        event: &'a str,
        channel: Option<&'a str>,
        data: String,
    }
    #[derive(Deserialize)]
    struct Member {
        user_id: String,
    }
    if !frame.starts_with(br#"{"event":"pusher_internal:member_"#) {
        return None;
    }
    let told: Told<'_> = serde_json::from_slice(frame).ok()?;
    let added = match told.event {
        "pusher_internal:member_added" => true,
        "pusher_internal:member_removed" => false,
        _ => return None,
    };
    if told.channel != Some(channel) {
        return None;
    }
    let member: Member = serde_json::from_str(&told.data).ok()?;
    Some((added, member.user_id))
}

/// A frame whose `data` is an object (`pusher:error`, `pusher:pong`, …).
pub(crate) fn object_frame(event: &str, channel: Option<&str>, data: &serde_json::Value) -> Text {
    let mut out = bytes::BytesMut::with_capacity(64);
    let mut frame = crate::json::Object::begin(&mut out);
    frame.str("event", event);
    if let Some(channel) = channel {
        frame.str("channel", channel);
    }
    frame.raw("data", &crate::json::to_vec(data));
    frame.end();
    crate::json::text(out.freeze())
}

/// `pusher:error` with a code and message.
pub(crate) fn error_frame(code: Option<u16>, message: &str, channel: Option<&str>) -> Text {
    object_frame("pusher:error", channel, &serde_json::json!({ "code": code, "message": message }))
}

/// A publication's payload as the string a Pusher event carries, which
/// pusher-js parses as JSON where it can: JSON is passed as its text; a
/// JSON string is unwrapped when its text is not JSON itself (the event's
/// data was plain text, stored quoted by [`publication_data`]), and kept
/// quoted when it is (`"42"`, or an encoded object as PHP's SDK sends a
/// string: the client must get that string, not the number or object).
pub(crate) fn event_data(data: &[u8]) -> std::borrow::Cow<'_, str> {
    if data.first() == Some(&b'"') {
        if let Ok(text) = serde_json::from_slice::<String>(data) {
            if serde_json::from_str::<&serde_json::value::RawValue>(&text).is_err() {
                return text.into();
            }
        }
    }
    String::from_utf8_lossy(data)
}

/// An event's `data` string as a publication payload: JSON text is kept
/// (compacted, as every payload is), anything else becomes a JSON string.
pub(crate) fn publication_data(data: &str) -> Bytes {
    match serde_json::from_str::<&serde_json::value::RawValue>(data) {
        Ok(_) => crate::json::compact(data),
        Err(_) => {
            let mut quoted = bytes::BytesMut::with_capacity(data.len().saturating_add(2));
            crate::json::put_str(&mut quoted, data);
            quoted.freeze()
        }
    }
}

impl PusherEncoder {
    fn name_of<'a>(&self, channel: &'a ChannelName) -> Option<&'a str> {
        match self.namespace.as_str() {
            "" => (!channel.as_str().contains(':')).then_some(channel.as_str()),
            ns => channel.as_str().strip_prefix(ns)?.strip_prefix(':'),
        }
    }
}

impl PushEncoder for PusherEncoder {
    fn protocol(&self) -> &'static str {
        "pusher"
    }

    fn app(&self) -> Option<&str> {
        Some(&self.app)
    }

    fn encode_publication(&self, channel: &ChannelName, publication: &Publication) -> herald_core::Frame {
        let name = self.name_of(channel).unwrap_or(channel.as_str());
        let event = publication.tags.get(EVENT_TAG).map_or(DEFAULT_EVENT, String::as_str);
        // Presence members see who sent a client event.
        let user_id = match (&publication.info, ChannelKind::of(name).is_presence()) {
            (Some(info), true) if event.starts_with("client-") => Some(info.user.as_str()),
            _ => None,
        };
        Frame { event, channel: Some(name), data: &event_data(&publication.data), user_id }.encode().into()
    }

    /// Pusher has no stream positions, and its clients no recovery.
    fn has_positions(&self) -> bool {
        false
    }

    /// The app's channels, but not presence ones: pusher-js takes a
    /// presence subscription only with its member list, and a member is
    /// named by the client's authorization, not by the server API.
    fn takes_server_subscription(&self, channel: &ChannelName) -> bool {
        self.name_of(channel).is_some_and(|name| !ChannelKind::of(name).is_presence())
    }

    /// A cache channel's subscribers are sent its last event, however
    /// subscribed (by the client, or by the server API).
    fn wants_latest(&self, channel: &ChannelName) -> bool {
        self.name_of(channel).is_some_and(|name| ChannelKind::of(name).is_cache())
    }

    /// A cache channel's last event, or `pusher:cache_miss` when it has none.
    fn encode_latest(&self, channel: &ChannelName, latest: Option<&Publication>) -> Option<herald_core::Frame> {
        if let Some(publication) = latest {
            return Some(self.encode_publication(channel, publication));
        }
        let name = self.name_of(channel).unwrap_or(channel.as_str());
        Some(object_frame("pusher:cache_miss", Some(name), &serde_json::json!({})).into())
    }

    /// Pusher announces users, not connections, and not to themselves.
    fn encode_presence(
        &self,
        channel: &ChannelName,
        event: &PresenceEvent,
        to_own_user: bool,
    ) -> Option<herald_core::Frame> {
        if !event.user_changed() || to_own_user {
            return None;
        }
        let name = self.name_of(channel).unwrap_or(channel.as_str());
        let member = event.info();
        let user_id = member.user.as_str();
        let mut data = bytes::BytesMut::with_capacity(64);
        let mut fields = crate::json::Object::begin(&mut data);
        fields.str("user_id", user_id);
        let event = match event.is_join() {
            true => {
                // Channel info is JSON the node wrote itself (from a token or
                // an authorization's channel_data).
                fields.raw("user_info", member.chan_info.as_deref().unwrap_or(b"{}"));
                "pusher_internal:member_added"
            }
            false => "pusher_internal:member_removed",
        };
        fields.end();
        let data = String::from_utf8_lossy(&data);
        Some(Frame { event, channel: Some(name), data: &data, user_id: None }.encode().into())
    }
}

#[cfg(test)]
mod tests {
    use herald_engine::{ClientId, ClientInfo, UserId};

    use super::*;

    /// What `encode_presence` writes, `member_change` reads back.
    #[test]
    fn a_join_or_leave_frame_reads_back_as_the_member_it_tells_of() {
        let encoder = PusherEncoder { namespace: String::new(), app: "app".into() };
        let channel = ChannelName::new("presence-room").unwrap();
        let info = ClientInfo {
            user: UserId::new("u \"1\"").unwrap(),
            client: ClientId::new("c1"),
            conn_info: None,
            chan_info: Some(Bytes::from_static(br#"{"name":"Ann"}"#)),
        };
        let join = PresenceEvent::Join { info: info.clone(), user_arrived: true };
        let leave = PresenceEvent::Leave { info, user_departed: true };
        for (event, added) in [(join, true), (leave, false)] {
            let frame = encoder.encode_presence(&channel, &event, false).unwrap();
            assert_eq!(member_change(frame.as_bytes(), "presence-room"), Some((added, "u \"1\"".to_owned())));
            assert_eq!(member_change(frame.as_bytes(), "presence-other"), None, "another channel's");
        }
        let event = Frame { event: "news", channel: Some("presence-room"), data: "{}", user_id: None }.encode();
        assert_eq!(member_change(event.as_bytes(), "presence-room"), None);
    }

    /// What pusher-js makes of the data Herald sends is what it makes of
    /// the data the app triggered: plain text as sent, JSON parsed once.
    #[test]
    fn an_event_carries_its_data_as_the_app_triggered_it() {
        let cases = [
            ("plain words", "plain words", "plain text is stored quoted, sent as it came"),
            (r#"{"a":1}"#, r#"{"a":1}"#, "an object"),
            ("42", "42", "a number"),
            (r#""42""#, r#""42""#, "a string whose text is a number stays a string"),
            (r#""{\"a\":1}""#, r#""{\"a\":1}""#, "PHP's SDK's encoding of a string holding JSON"),
            (r#""hello""#, "hello", "a string of plain text: pusher-js gets the same text either way"),
        ];
        for (triggered, sent, why) in cases {
            let stored = publication_data(triggered);
            assert_eq!(event_data(&stored), sent, "{why}");
        }
    }
}
