//! The API methods: their parameters, and what each does.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use herald_engine::{
    ChannelName, ClientId, Control, DisconnectReason, Epoch, HistoryQuery, Offset, Publication, StreamPosition, UserId,
};

use herald_core::HubError;

use super::reply::{Reply, Response};
use super::{ApiError, ApiState};

/// One API call. As a batch entry it is written `{"<method>": {params}}`.
#[derive(Debug)]
pub(crate) enum ApiCommand {
    Publish(PublishParams),
    Broadcast(BroadcastParams),
    Subscribe(SubscribeParams),
    Unsubscribe(UserChannelParams),
    Disconnect(DisconnectParams),
    Refresh(RefreshParams),
    Channels(ChannelsParams),
    Info(Empty),
    History(HistoryParams),
    HistoryRemove(ChannelParams),
    Presence(ChannelParams),
    PresenceStats(ChannelParams),
    Batch(BatchParams),
    /// Drains this node: see `http.drain_window`.
    Drain(Empty),
}

#[derive(Debug, Deserialize)]
pub(crate) struct PublishParams {
    pub channel: String,
    pub data: Box<RawValue>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// A repeat with the same key inside `api.idempotency_window` returns the
    /// first result and publishes nothing.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Deliver without keeping the publication in history.
    #[serde(default)]
    pub skip_history: bool,
    /// Centrifugo's options Herald does not offer (see [`refuse`]).
    #[serde(default)]
    b64data: Option<Value>,
    #[serde(default)]
    version: Option<Value>,
    #[serde(default)]
    version_epoch: Option<Value>,
}

impl PublishParams {
    /// The first option Herald does not offer that the call set.
    fn unsupported(&self) -> Option<&'static str> {
        given([("b64data", &self.b64data), ("version", &self.version), ("version_epoch", &self.version_epoch)])
    }
}

/// Options of Centrifugo's API that Herald does not offer: one a caller
/// set is refused (107, naming it), for ignored it would widen what a call
/// does (`session`, `whitelist`) or quietly drop what it asks for. Their
/// empty values (`null`, `false`, `0`, `""`, `[]`, `{}`), which SDKs send
/// by default, pass.
fn refuse(method: &str, unsupported: Option<&'static str>) -> Result<(), ApiError> {
    match unsupported {
        Some(name) => Err(ApiError::BadRequest(format!("{method}: `{name}` is not supported by Herald"))),
        None => Ok(()),
    }
}

/// The first of `options` given a value that asks for something.
fn given<const N: usize>(options: [(&'static str, &Option<Value>); N]) -> Option<&'static str> {
    options.into_iter().find(|(_, value)| value.as_ref().is_some_and(meaningful)).map(|(name, _)| name)
}

/// Whether an option's value asks for something (SDKs send the empty ones
/// by default).
fn meaningful(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(set) => *set,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(text) => !text.is_empty(),
        Value::Array(items) => !items.is_empty(),
        Value::Object(fields) => !fields.is_empty(),
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct ChannelParams {
    pub channel: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct HistoryParams {
    pub channel: String,
    /// 0 (the default) returns only the stream position; negative means all.
    #[serde(default)]
    pub limit: i64,
    #[serde(default)]
    pub since: Option<PositionParams>,
    #[serde(default)]
    pub reverse: bool,
}

#[derive(Debug, Deserialize)]
pub(crate) struct PositionParams {
    pub offset: u64,
    /// Empty (or absent) means any epoch.
    #[serde(default)]
    pub epoch: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct BroadcastParams {
    pub channels: Vec<String>,
    pub data: Box<RawValue>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// As publish's, for each channel.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    #[serde(default)]
    pub skip_history: bool,
    /// Centrifugo's options Herald does not offer (see [`refuse`]).
    #[serde(default)]
    b64data: Option<Value>,
}

impl BroadcastParams {
    /// The first option Herald does not offer that the call set.
    fn unsupported(&self) -> Option<&'static str> {
        given([("b64data", &self.b64data)])
    }
}

/// A server-side subscription: whose connections, to which channel, and
/// what it carries.
#[derive(Debug, Deserialize)]
pub(crate) struct SubscribeParams {
    pub user: String,
    pub channel: String,
    #[serde(default)]
    pub client: Option<String>,
    /// The subscription's channel info, as a subscription token's `info`:
    /// in presence, joins and leaves, and the client's publications.
    #[serde(default)]
    pub info: Option<Box<RawValue>>,
    /// Sent to the client with the subscription (the `subscribe` push).
    #[serde(default)]
    pub data: Option<Box<RawValue>>,
    /// When the subscription expires, in unix seconds (0 or none: never).
    #[serde(default)]
    pub expire_at: Option<u64>,
    /// Centrifugo's options Herald does not offer (see [`refuse`]).
    #[serde(default)]
    session: Option<Value>,
    #[serde(default)]
    b64info: Option<Value>,
    #[serde(default)]
    b64data: Option<Value>,
    #[serde(default)]
    recover_since: Option<Value>,
    #[serde(default, rename = "override")]
    overrides: Option<Value>,
}

impl SubscribeParams {
    /// The first option Herald does not offer that the call set.
    fn unsupported(&self) -> Option<&'static str> {
        given([
            ("session", &self.session),
            ("b64info", &self.b64info),
            ("b64data", &self.b64data),
            ("recover_since", &self.recover_since),
            ("override", &self.overrides),
        ])
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct UserChannelParams {
    pub user: String,
    pub channel: String,
    #[serde(default)]
    pub client: Option<String>,
    #[serde(flatten)]
    pub others: Others,
}

/// The fields of a call besides those its method reads: some of them
/// options of Centrifugo's API that Herald does not offer.
#[derive(Debug, Default, Deserialize)]
#[serde(transparent)]
pub(crate) struct Others(BTreeMap<String, Value>);

impl Others {
    /// The first of `names` the call set (see [`refuse`]).
    fn unsupported(&self, names: &[&'static str]) -> Option<&'static str> {
        names.iter().copied().find(|name| self.0.get(*name).is_some_and(meaningful))
    }
}

/// Centrifugo's unsubscribe option Herald does not offer.
const UNSUBSCRIBE_UNSUPPORTED: [&str; 1] = ["session"];

/// Centrifugo's disconnect options Herald does not offer.
const DISCONNECT_UNSUPPORTED: [&str; 4] = ["session", "whitelist", "info", "b64info"];

#[derive(Debug, Deserialize)]
pub(crate) struct DisconnectParams {
    pub user: String,
    #[serde(default)]
    pub client: Option<String>,
    #[serde(default)]
    pub disconnect: Option<CustomDisconnect>,
    #[serde(flatten)]
    pub others: Others,
}

#[derive(Debug, Deserialize)]
pub(crate) struct CustomDisconnect {
    pub code: u16,
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RefreshParams {
    pub user: String,
    #[serde(default)]
    pub client: Option<String>,
    #[serde(default)]
    pub expired: bool,
    #[serde(default)]
    pub expire_at: Option<u64>,
    /// The connections' new info, as a refresh token's `info`.
    #[serde(default)]
    pub info: Option<Box<RawValue>>,
    /// Centrifugo's options Herald does not offer (see [`refuse`]).
    #[serde(default)]
    session: Option<Value>,
    #[serde(default)]
    whitelist: Option<Value>,
    #[serde(default)]
    b64info: Option<Value>,
}

impl RefreshParams {
    /// The first option Herald does not offer that the call set.
    fn unsupported(&self) -> Option<&'static str> {
        given([("session", &self.session), ("whitelist", &self.whitelist), ("b64info", &self.b64info)])
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ChannelsParams {
    #[serde(default)]
    pub pattern: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Empty {}

/// A batch's commands, each `{"<method>": {params}}`, read one by one
/// when it runs: an entry Herald cannot read is answered in its place,
/// the others run (as Centrifugo).
#[derive(Debug, Deserialize)]
pub(crate) struct BatchParams {
    pub commands: Vec<BTreeMap<String, Box<RawValue>>>,
}

/// A batch entry as a command.
fn batch_entry(entry: BTreeMap<String, Box<RawValue>>) -> Result<ApiCommand, ApiError> {
    let mut methods = entry.into_iter();
    match (methods.next(), methods.next()) {
        (Some((method, params)), None) => ApiCommand::parse(&method, params.get().as_bytes()),
        _ => Err(ApiError::BadRequest("a batch entry is one {\"<method>\": {params}}".into())),
    }
}

impl ApiCommand {
    /// Reads a command from `/api/<method>` and its body.
    pub(crate) fn parse(method: &str, body: &[u8]) -> Result<ApiCommand, ApiError> {
        fn params<'a, T: Deserialize<'a> + Default>(body: &'a [u8]) -> Result<T, ApiError> {
            if body.iter().all(u8::is_ascii_whitespace) {
                return Ok(T::default());
            }
            serde_json::from_slice(body).map_err(refused)
        }
        fn required<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
            serde_json::from_slice(body).map_err(refused)
        }
        Ok(match method {
            "publish" => ApiCommand::Publish(required(body)?),
            "broadcast" => ApiCommand::Broadcast(required(body)?),
            "subscribe" => ApiCommand::Subscribe(required(body)?),
            "unsubscribe" => ApiCommand::Unsubscribe(required(body)?),
            "disconnect" => ApiCommand::Disconnect(required(body)?),
            "refresh" => ApiCommand::Refresh(required(body)?),
            "channels" => ApiCommand::Channels(params(body)?),
            "info" => ApiCommand::Info(params(body)?),
            "history" => ApiCommand::History(required(body)?),
            "history_remove" => ApiCommand::HistoryRemove(required(body)?),
            "presence" => ApiCommand::Presence(required(body)?),
            "presence_stats" => ApiCommand::PresenceStats(required(body)?),
            "batch" => ApiCommand::Batch(required(body)?),
            "drain" => ApiCommand::Drain(params(body)?),
            other => return Err(ApiError::MethodNotFound(other.to_owned())),
        })
    }
}

/// Why parameters were refused: JSON of the wrong shape (a missing
/// field, a wrong type) is a bad request; text that is not JSON cannot be
/// decoded at all.
pub(crate) fn refused(error: serde_json::Error) -> ApiError {
    match error.classify() {
        serde_json::error::Category::Data => ApiError::BadRequest(error.to_string()),
        _ => ApiError::Undecodable(error.to_string()),
    }
}

fn channel(name: &str) -> Result<ChannelName, ApiError> {
    ChannelName::new(name).map_err(|e| ApiError::BadRequest(format!("channel {name:?}: {e}")))
}

fn user(id: &str) -> Result<UserId, ApiError> {
    UserId::new(id).map_err(|e| ApiError::BadRequest(format!("user: {e}")))
}

fn client(id: Option<String>) -> Option<ClientId> {
    id.filter(|c| !c.is_empty()).map(ClientId::from)
}

/// `raw`, compacted, as text.
fn compact_text(raw: &RawValue) -> String {
    let compact = crate::json::compact(raw.get());
    // Compacting removes ASCII whitespace from valid text: it stays text.
    String::from_utf8_lossy(&compact).into_owned()
}

fn publication(data: &RawValue, tags: BTreeMap<String, String>) -> Publication {
    let mut publication = Publication::from_data(crate::json::compact(data.get()));
    publication.tags = tags;
    publication
}

impl ApiState {
    /// Runs a command; the reply is `{"result": …}` (`{"replies": […]}` for a batch).
    pub(crate) async fn execute(&self, command: ApiCommand) -> Result<Response, ApiError> {
        match command {
            ApiCommand::Batch(batch) => {
                self.within_batch_limit(batch.commands.len(), "commands in a batch")?;
                let mut replies = Vec::with_capacity(batch.commands.len());
                for entry in batch.commands {
                    let command = match batch_entry(entry) {
                        Ok(command) => command,
                        // Written as `{"error": …}`: the name is not used.
                        Err(error) => {
                            replies.push(("error", Err(error)));
                            continue;
                        }
                    };
                    let name = command.name();
                    // It asks every node and may wait for them: a batch of
                    // them would have no deadline worth the name.
                    if matches!(command, ApiCommand::Channels(_)) {
                        let refusal = "call channels on its own, not in a batch: it asks every node";
                        replies.push((name, Err(ApiError::BadRequest(refusal.into()))));
                        continue;
                    }
                    replies.push((name, Box::pin(self.run(command)).await));
                }
                Ok(Response::Batch(replies))
            }
            command => Ok(Response::Result(self.run(command).await?)),
        }
    }

    pub(super) fn within_batch_limit(&self, count: usize, what: &str) -> Result<(), ApiError> {
        match count <= self.max_batch {
            true => Ok(()),
            false => Err(ApiError::BadRequest(format!("{count} {what}; at most {} (api.max_batch)", self.max_batch))),
        }
    }

    async fn run(&self, command: ApiCommand) -> Result<Reply, ApiError> {
        let hub = &self.hub;
        match command {
            ApiCommand::Publish(p) => {
                refuse("publish", p.unsupported())?;
                let ch = channel(&p.channel)?;
                let result = hub.publish(&ch, publication(&p.data, p.tags), p.idempotency_key, p.skip_history).await?;
                self.metrics.published("api", 1);
                Ok(Reply::Published(result.position))
            }
            ApiCommand::Broadcast(p) => {
                refuse("broadcast", p.unsupported())?;
                self.within_batch_limit(p.channels.len(), "channels in a broadcast")?;
                let mut responses = Vec::with_capacity(p.channels.len());
                for name in &p.channels {
                    let outcome = match channel(name) {
                        Ok(ch) => hub
                            .publish(
                                &ch,
                                publication(&p.data, p.tags.clone()),
                                p.idempotency_key.clone(),
                                p.skip_history,
                            )
                            .await
                            .map(|r| {
                                self.metrics.published("api", 1);
                                r.position
                            })
                            .map_err(ApiError::from),
                        Err(e) => Err(e),
                    };
                    responses.push(outcome);
                }
                Ok(Reply::Broadcast(responses))
            }
            ApiCommand::Subscribe(p) => {
                refuse("subscribe", p.unsupported())?;
                let ch = channel(&p.channel)?;
                let limit = hub.rules().resolve(&ch)?.max_message_size;
                let json = |raw: Option<Box<RawValue>>| raw.map(|raw| compact_text(&raw));
                let (info, data) = (json(p.info), json(p.data));
                // What a client is sent, held to what it could be published.
                let size = [&info, &data].into_iter().flatten().map(String::len).fold(0, usize::saturating_add);
                if size > limit {
                    return Err(HubError::MessageTooLarge { size, limit }.into());
                }
                let expire_at = match p.expire_at.unwrap_or(0) {
                    0 => None,
                    past if past <= crate::auth::unix_now() => {
                        return Err(ApiError::BadRequest(format!(
                            "subscribe: expire_at {past} has passed; give a unix time in the future, or 0 for none"
                        )))
                    }
                    at => Some(at),
                };
                let (user, client) = (user(&p.user)?, client(p.client));
                let command = Control::Subscribe { user, channel: ch, client, info, data, expire_at };
                hub.send_control(command).await?;
                Ok(Reply::Done)
            }
            ApiCommand::Unsubscribe(p) => {
                refuse("unsubscribe", p.others.unsupported(&UNSUBSCRIBE_UNSUPPORTED))?;
                let command = Control::Unsubscribe {
                    user: user(&p.user)?,
                    channel: channel(&p.channel)?,
                    client: client(p.client),
                };
                hub.send_control(command).await?;
                Ok(Reply::Done)
            }
            ApiCommand::Disconnect(p) => {
                refuse("disconnect", p.others.unsupported(&DISCONNECT_UNSUPPORTED))?;
                let reason = match p.disconnect {
                    None => DisconnectReason::ForceDisconnect,
                    Some(custom) if (3000..=4999).contains(&custom.code) => DisconnectReason::Custom {
                        code: custom.code,
                        reconnect: !((3500..4000).contains(&custom.code) || custom.code >= 4500),
                        reason: custom.reason,
                    },
                    Some(custom) => {
                        return Err(ApiError::BadRequest(format!(
                            "disconnect code {} is outside 3000..=4999",
                            custom.code
                        )))
                    }
                };
                hub.send_control(Control::Disconnect {
                    user: user(&p.user)?,
                    client: client(p.client),
                    reason,
                    app: None,
                })
                .await?;
                Ok(Reply::Done)
            }
            ApiCommand::Refresh(p) => {
                refuse("refresh", p.unsupported())?;
                let command = Control::Refresh {
                    user: user(&p.user)?,
                    client: client(p.client),
                    expire_at: p.expire_at,
                    expired: p.expired,
                    info: p.info.map(|raw| compact_text(&raw)),
                };
                hub.send_control(command).await?;
                Ok(Reply::Done)
            }
            // An empty pattern, as SDKs send by default, is every channel (as Centrifugo).
            ApiCommand::Channels(p) => {
                let pattern = p.pattern.as_deref().filter(|pattern| !pattern.is_empty());
                Ok(Reply::Channels(hub.cluster_channels(pattern).await?))
            }
            ApiCommand::Info(_) => Ok(Reply::Info { nodes: hub.nodes().await?, engine: hub.engine().name() }),
            ApiCommand::History(p) => {
                let query = HistoryQuery {
                    since: p
                        .since
                        .map(|s| StreamPosition { offset: Offset::new(s.offset), epoch: Epoch::new(&s.epoch) }),
                    limit: usize::try_from(p.limit).unwrap_or(usize::MAX),
                    reverse: p.reverse,
                };
                Ok(Reply::History(hub.history(&channel(&p.channel)?, query).await?))
            }
            ApiCommand::HistoryRemove(p) => {
                hub.remove_history(&channel(&p.channel)?).await?;
                Ok(Reply::Done)
            }
            ApiCommand::Presence(p) => Ok(Reply::Presence(hub.presence(&channel(&p.channel)?).await?)),
            ApiCommand::PresenceStats(p) => Ok(Reply::PresenceStats(hub.presence_stats(&channel(&p.channel)?).await?)),
            ApiCommand::Batch(_) => Err(ApiError::BadRequest("a batch cannot contain a batch".into())),
            ApiCommand::Drain(_) => {
                tracing::info!("drain asked for through the API");
                self.drain.send_replace(true);
                Ok(Reply::Done)
            }
        }
    }
}

impl ApiCommand {
    fn name(&self) -> &'static str {
        match self {
            ApiCommand::Publish(_) => "publish",
            ApiCommand::Broadcast(_) => "broadcast",
            ApiCommand::Subscribe(_) => "subscribe",
            ApiCommand::Unsubscribe(_) => "unsubscribe",
            ApiCommand::Disconnect(_) => "disconnect",
            ApiCommand::Refresh(_) => "refresh",
            ApiCommand::Channels(_) => "channels",
            ApiCommand::Info(_) => "info",
            ApiCommand::History(_) => "history",
            ApiCommand::HistoryRemove(_) => "history_remove",
            ApiCommand::Presence(_) => "presence",
            ApiCommand::PresenceStats(_) => "presence_stats",
            ApiCommand::Batch(_) => "batch",
            ApiCommand::Drain(_) => "drain",
        }
    }
}
