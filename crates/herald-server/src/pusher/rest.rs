//! The Pusher HTTP API at `/apps/{app_id}/…`, as the Pusher server SDKs
//! call it: trigger events (one or many channels, batches, `socket_id`
//! exclusion, `info`), query channels and presence users, send to a
//! signed-in user, and terminate a user's connections.
//!
//! Every request is signed: `auth_key` must be the app's key,
//! `auth_timestamp` within 600 s of now, `body_md5` the MD5 of a non-empty
//! body, and `auth_signature` the HMAC of method, path and sorted query.
//! Failures answer with the status Pusher uses (401 for authentication,
//! 404 for an unknown app, 400 for bad requests, 413 for data above
//! `max_event_size`) and a JSON `{"error": …}` that says what is wrong.
//! Counts are cluster-wide.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use herald_core::HubError;
use herald_engine::{ChannelName, Control, DisconnectReason, Publication, UserId};

use super::conventions::ChannelKind;
use super::{sign, App, Frontend, EVENT_TAG, MAX_EVENT_NAME};

/// How far `auth_timestamp` may be from now.
const TIMESTAMP_WINDOW_SECS: u64 = 600;
/// The most channels one trigger may name.
const MAX_CHANNELS: usize = 100;
/// The most events one batch may carry.
const MAX_BATCH: usize = 10;

/// A refused request: status and message.
#[derive(Debug)]
pub(crate) struct Failure(StatusCode, String);

impl Failure {
    fn bad(message: impl Into<String>) -> Self {
        Self(StatusCode::BAD_REQUEST, message.into())
    }

    fn unauthorized(message: impl Into<String>) -> Self {
        Self(StatusCode::UNAUTHORIZED, message.into())
    }
}

impl From<HubError> for Failure {
    fn from(error: HubError) -> Self {
        Self(crate::codes::hub_error(&error).pusher_status, error.to_string())
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

/// Serves every `/apps/{app_id}/{*rest}` request. The signature (which
/// covers `body_md5`) is checked before anything of the body is read; the
/// body is then read within `http.max_body_size` and `http.body_timeout`,
/// and must match its digest.
pub(crate) async fn handle(
    State(frontend): State<Arc<Frontend>>,
    Path((app_id, rest)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let endpoint = endpoint(&method, &rest);
    let outcome = async {
        let (apps, previous) = frontend.apps.accepted();
        let app = apps
            .by_id(&app_id)
            .ok_or_else(|| Failure(StatusCode::NOT_FOUND, format!("app {app_id} does not exist")))?;
        let query = query_pairs(&uri)?;
        // A call signed with the secret a reload replaced is accepted
        // during the overlap.
        authenticate(app, &method, uri.path(), &query).or_else(|refused| {
            match previous.as_deref().and_then(|previous| previous.by_id(&app_id)) {
                Some(before) => authenticate(before, &method, uri.path(), &query).map_err(|_| refused),
                None => Err(refused),
            }
        })?;
        let body = crate::http::body::read(&headers, body, frontend.settings.body)
            .await
            .map_err(|error| Failure(error.status(), error.to_string()))?;
        check_digest(&query, &body)?;
        let api = Api { frontend: &frontend, app };
        let segments: Vec<&str> = rest.split('/').collect();
        match (&method, segments.as_slice()) {
            (&Method::POST, ["events"]) => api.trigger(&body).await,
            (&Method::POST, ["batch_events"]) => api.batch(&body).await,
            (&Method::GET, ["channels"]) => api.channels(&query).await,
            (&Method::GET, ["channels", name]) => api.channel(name, &query).await,
            (&Method::GET, ["channels", name, "users"]) => api.users(name).await,
            (&Method::POST, ["users", user, "terminate_connections"]) => api.terminate(user).await,
            (&Method::POST, ["users", user, "events"]) => api.to_user(user, &body).await,
            _ => Err(Failure(StatusCode::NOT_FOUND, format!("no such endpoint: {method} {}", uri.path()))),
        }
    }
    .await;
    let response = match outcome {
        Ok(reply) => Json(reply).into_response(),
        Err(failure) => {
            // `?`: the app id and the error (which may repeat it) are the
            // caller's text, escaped so they cannot forge log lines.
            tracing::info!(app = ?app_id, path = %uri.path(), status = failure.0.as_u16(), error = ?failure.1, "pusher API call refused");
            failure.into_response()
        }
    };
    frontend.driver.metrics.pusher_request(endpoint, response.status().as_u16());
    response
}

/// The endpoint a Pusher API path names, for metrics: a fixed set of names.
fn endpoint(method: &Method, rest: &str) -> &'static str {
    let segments: Vec<&str> = rest.split('/').collect();
    match (method, segments.as_slice()) {
        (&Method::POST, ["events"]) => "events",
        (&Method::POST, ["batch_events"]) => "batch_events",
        (&Method::GET, ["channels"]) => "channels",
        (&Method::GET, ["channels", _]) => "channel",
        (&Method::GET, ["channels", _, "users"]) => "channel_users",
        (&Method::POST, ["users", _, "terminate_connections"]) => "terminate_connections",
        (&Method::POST, ["users", _, "events"]) => "user_events",
        _ => "unknown",
    }
}

/// The query's parameters, their names in lower case as the signature
/// reads them (so a name in other letters is the same, signed parameter),
/// each at most once: a second one, which the signature would cover but
/// the call not read, is refused.
fn query_pairs(uri: &Uri) -> Result<Vec<(String, String)>, Failure> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(uri.query().unwrap_or(""))
        .map_err(|_| Failure::bad("the query string is not form-encoded"))?;
    let mut named = std::collections::HashSet::new();
    let mut lowered = Vec::with_capacity(pairs.len());
    for (name, value) in pairs {
        let name = name.to_ascii_lowercase();
        if !named.insert(name.clone()) {
            return Err(Failure::bad(format!("the query names `{name}` more than once")));
        }
        lowered.push((name, value));
    }
    Ok(lowered)
}

fn param<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
    query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Checks the request's key, timestamp and signature: everything but the
/// body, whose digest the signature covers.
fn authenticate(app: &App, method: &Method, path: &str, query: &[(String, String)]) -> Result<(), Failure> {
    let get = |name| param(query, name);
    if get("auth_key") != Some(app.config.key.as_str()) {
        return Err(Failure::unauthorized("auth_key is missing or not this app's key"));
    }
    let timestamp: u64 = get("auth_timestamp")
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| Failure::unauthorized("auth_timestamp is missing"))?;
    if crate::auth::unix_now().abs_diff(timestamp) > TIMESTAMP_WINDOW_SECS {
        return Err(Failure::unauthorized(format!(
            "auth_timestamp is more than {TIMESTAMP_WINDOW_SECS} s from the server's clock; check the caller's clock"
        )));
    }
    let signature = get("auth_signature").ok_or_else(|| Failure::unauthorized("auth_signature is missing"))?;
    let message = sign::request_message(method.as_str(), path, query);
    if !sign::verify_hex(app.config.secret.expose(), message.as_bytes(), signature) {
        return Err(Failure::unauthorized("Invalid signature: check the app secret and how the request is signed"));
    }
    Ok(())
}

/// Checks that a body, once read, is the one the signed `body_md5` names.
fn check_digest(query: &[(String, String)], body: &[u8]) -> Result<(), Failure> {
    match (body.is_empty(), param(query, "body_md5")) {
        (false, None) => Err(Failure::unauthorized("body_md5 is missing")),
        (_, Some(md5)) if md5 != sign::body_md5(body) => Err(Failure::unauthorized("body_md5 does not match the body")),
        _ => Ok(()),
    }
}

/// One event to trigger, as `events` and `batch_events` carry them.
#[derive(Debug, Deserialize)]
struct Trigger {
    name: String,
    data: Value,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    socket_id: Option<String>,
    #[serde(default)]
    info: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Batch {
    batch: Vec<Trigger>,
}

/// A trigger that passed every check, ready to publish.
struct Checked {
    event: String,
    /// The channels as the caller named them, and as the hub knows them.
    names: Vec<String>,
    channels: Vec<ChannelName>,
    payload: bytes::Bytes,
    exclude: Option<herald_engine::ClientId>,
    info: Info,
}

/// Which counts a reply includes.
#[derive(Debug, Default, Clone, Copy)]
struct Info {
    user_count: bool,
    subscription_count: bool,
    cache: bool,
}

impl Info {
    fn parse(text: Option<&str>) -> Result<Self, Failure> {
        let mut info = Info::default();
        for attribute in text.unwrap_or("").split(',').map(str::trim).filter(|a| !a.is_empty()) {
            match attribute {
                "user_count" => info.user_count = true,
                "subscription_count" => info.subscription_count = true,
                "cache" => info.cache = true,
                other => return Err(Failure::bad(format!("unknown info attribute `{other}`"))),
            }
        }
        Ok(info)
    }
}

struct Api<'a> {
    frontend: &'a Frontend,
    app: &'a Arc<App>,
}

fn valid_socket_id(id: &str) -> bool {
    id.split_once('.').is_some_and(|(a, b)| {
        !a.is_empty() && !b.is_empty() && a.bytes().all(|c| c.is_ascii_digit()) && b.bytes().all(|c| c.is_ascii_digit())
    })
}

impl Api<'_> {
    fn channel_of(&self, name: &str) -> Result<ChannelName, Failure> {
        self.app.channel(name).ok_or_else(|| Failure::bad(format!("`{name}` is not a valid channel name")))
    }

    fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Failure> {
        serde_json::from_slice(body).map_err(|e| Failure::bad(format!("the body is not valid: {e}")))
    }

    async fn trigger(&self, body: &[u8]) -> Result<Value, Failure> {
        let trigger: Trigger = Self::parse(body)?;
        let counts = self.publish(self.check(trigger)?).await?;
        Ok(counts.map_or_else(|| json!({}), |channels| json!({ "channels": channels })))
    }

    /// Publishes a batch's events once every one of them is checked: a
    /// batch with a bad event publishes none (a retry would repeat those
    /// published before it).
    async fn batch(&self, body: &[u8]) -> Result<Value, Failure> {
        let batch: Batch = Self::parse(body)?;
        if batch.batch.len() > MAX_BATCH {
            return Err(Failure::bad(format!("a batch carries at most {MAX_BATCH} events")));
        }
        let checked = batch.batch.into_iter().map(|trigger| self.check(trigger)).collect::<Result<Vec<_>, _>>()?;
        let mut replies = Vec::with_capacity(checked.len());
        let mut any_info = false;
        for trigger in checked {
            let counts = self.publish(trigger).await?;
            any_info |= counts.is_some();
            // A batch item names one channel: its counts, not keyed by name.
            replies.push(counts.and_then(|c| c.into_iter().next().map(|(_, v)| v)).unwrap_or_else(|| json!({})));
        }
        Ok(if any_info { json!({ "batch": replies }) } else { json!({}) })
    }

    /// Checks one trigger: everything that can refuse it before it is published.
    fn check(&self, trigger: Trigger) -> Result<Checked, Failure> {
        if trigger.name.is_empty() || trigger.name.len() > MAX_EVENT_NAME {
            return Err(Failure::bad(format!("the event name must be 1 to {MAX_EVENT_NAME} characters")));
        }
        let names: Vec<String> = match (trigger.channels, trigger.channel) {
            (Some(channels), _) => channels,
            (None, Some(channel)) => vec![channel],
            (None, None) => return Err(Failure::bad("name the channels (or channel) to trigger on")),
        };
        if names.is_empty() || names.len() > MAX_CHANNELS {
            return Err(Failure::bad(format!("trigger on 1 to {MAX_CHANNELS} channels")));
        }
        let channels = names.iter().map(|n| self.channel_of(n)).collect::<Result<Vec<_>, _>>()?;
        let data = match trigger.data {
            Value::String(text) => text,
            other => other.to_string(),
        };
        let limit = self.app.config.max_event_size;
        if data.len() > limit {
            return Err(Failure(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("event data is {} bytes; the limit is {limit} (pusher.apps.max_event_size)", data.len()),
            ));
        }
        let exclude = match trigger.socket_id {
            Some(id) if valid_socket_id(&id) => Some(herald_engine::ClientId::new(&id)),
            Some(id) => return Err(Failure::bad(format!("`{id}` is not a socket_id"))),
            None => None,
        };
        let info = Info::parse(trigger.info.as_deref())?;
        let payload = super::publication_data(&data);
        Ok(Checked { event: trigger.name, names, channels, payload, exclude, info })
    }

    /// Publishes one checked trigger; returns the counts `info` asked for.
    async fn publish(&self, trigger: Checked) -> Result<Option<Map<String, Value>>, Failure> {
        for channel in &trigger.channels {
            let mut publication = Publication::from_data(trigger.payload.clone());
            publication.tags.insert(EVENT_TAG.to_owned(), trigger.event.clone());
            publication.exclude = trigger.exclude.clone();
            self.frontend.hub().publish(channel, publication, None, false).await?;
            self.frontend.driver.metrics.published("api", 1);
        }
        let info = trigger.info;
        if !(info.user_count || info.subscription_count) {
            return Ok(None);
        }
        let mut counts = Map::new();
        for (name, channel) in trigger.names.iter().zip(&trigger.channels) {
            // As Pusher: a channel that is not presence answers what it has
            // (the event is out; refusing the call now would only hide that).
            let info = Info { user_count: info.user_count && ChannelKind::of(name).is_presence(), ..info };
            counts.insert(name.clone(), self.counts(name, channel, info).await?);
        }
        Ok(Some(counts))
    }

    /// The requested counts of one channel.
    async fn counts(&self, name: &str, channel: &ChannelName, info: Info) -> Result<Value, Failure> {
        let mut out = Map::new();
        if info.user_count {
            if !ChannelKind::of(name).is_presence() {
                return Err(Failure::bad("user_count is only available for presence channels"));
            }
            out.insert("user_count".into(), self.frontend.hub().presence_stats(channel).await?.num_users.into());
        }
        if info.subscription_count {
            out.insert("subscription_count".into(), self.frontend.hub().subscription_count(channel).await?.into());
        }
        Ok(Value::Object(out))
    }

    async fn channels(&self, query: &[(String, String)]) -> Result<Value, Failure> {
        let prefix = param(query, "filter_by_prefix").unwrap_or("");
        let info = Info::parse(param(query, "info"))?;
        if info.user_count && !prefix.starts_with("presence-") {
            return Err(Failure::bad("info=user_count needs filter_by_prefix=presence-"));
        }
        let mut channels = Map::new();
        for channel in self.frontend.hub().occupied_channels().await? {
            let Some(name) = self.app.name_of(&channel) else { continue };
            if name.starts_with('#') || !name.starts_with(prefix) || !super::valid_channel_name(name) {
                continue;
            }
            channels.insert(name.to_owned(), self.counts(name, &channel, info).await?);
        }
        Ok(json!({ "channels": channels }))
    }

    async fn channel(&self, name: &str, query: &[(String, String)]) -> Result<Value, Failure> {
        let channel = self.channel_of(name)?;
        let info = Info::parse(param(query, "info"))?;
        let subscriptions = self.frontend.hub().subscription_count(&channel).await?;
        let mut out = match self.counts(name, &channel, Info { cache: false, ..info }).await? {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        out.insert("occupied".into(), (subscriptions > 0).into());
        if info.cache {
            out.insert("cache".into(), self.cached(name, &channel).await?);
        }
        Ok(Value::Object(out))
    }

    async fn cached(&self, name: &str, channel: &ChannelName) -> Result<Value, Failure> {
        if !ChannelKind::of(name).is_cache() {
            return Err(Failure::bad("cache is only available for cache channels"));
        }
        let query = herald_engine::HistoryQuery { since: None, limit: 1, reverse: true };
        let history = self.frontend.hub().history(channel, query).await?;
        Ok(match history.publications.first() {
            Some(last) => json!({
                "event": last.tags.get(EVENT_TAG).map_or(super::DEFAULT_EVENT, String::as_str),
                "data": super::event_data(&last.data),
            }),
            None => Value::Null,
        })
    }

    async fn users(&self, name: &str) -> Result<Value, Failure> {
        let channel = self.channel_of(name)?;
        if !ChannelKind::of(name).is_presence() {
            return Err(Failure::bad("users are only listed for presence channels"));
        }
        let present = self.frontend.hub().presence(&channel).await?;
        let ids: std::collections::BTreeSet<&str> = present.iter().map(|p| p.user.as_str()).collect();
        let users: Vec<Value> = ids.into_iter().map(|id| json!({ "id": id })).collect();
        Ok(json!({ "users": users }))
    }

    /// `{name, data}` to every connection signed in as `user` (what the
    /// SDKs' `sendToUser` does through `/events` and `#server-to-user-<id>`).
    async fn to_user(&self, user: &str, body: &[u8]) -> Result<Value, Failure> {
        let mut event: Map<String, Value> = Self::parse(body)?;
        event.insert("channel".into(), format!("{}{user}", super::USER_CHANNEL_PREFIX).into());
        event.remove("channels");
        let trigger: Trigger = serde_json::from_value(Value::Object(event)).map_err(|e| Failure::bad(e.to_string()))?;
        self.publish(self.check(trigger)?).await?;
        Ok(json!({}))
    }

    async fn terminate(&self, user: &str) -> Result<Value, Failure> {
        let user = UserId::new(user).map_err(|e| Failure::bad(e.to_string()))?;
        let reason = DisconnectReason::ForceDisconnect;
        let app = Some(self.app.config.id.clone());
        self.frontend.hub().send_control(Control::Disconnect { user, client: None, reason, app }).await?;
        Ok(json!({}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_ids_are_two_numbers() {
        for good in ["1.2", "123456.654321"] {
            assert!(valid_socket_id(good), "{good}");
        }
        for bad in ["", "1", "1.", ".2", "a.b", "1.2.3", "1 .2"] {
            assert!(!valid_socket_id(bad), "{bad}");
        }
    }

    #[test]
    fn info_lists_known_attributes_only() {
        let info = Info::parse(Some("user_count,subscription_count")).unwrap();
        assert!(info.user_count && info.subscription_count && !info.cache);
        assert!(Info::parse(Some("members")).is_err());
        assert!(Info::parse(None).is_ok());
    }
}
