//! Subscribing a Pusher connection: channel names, authorizations,
//! presence members and their limit, cache channels.

use std::collections::HashSet;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use herald_core::{ChannelRules, HubError, Outgoing, SubscribeAccess, SubscribeRequest, Subscription};
use herald_engine::{ChannelName, DisconnectReason, UserId};
use tokio::time::Instant;

use super::super::conventions::ChannelKind;
use super::super::webhooks::Event as Hook;
use super::super::{error_frame, member_change, object_frame, sign, subscription_succeeded};
use super::{data_as, Session};
use crate::rate::{RateLimit, Verdict};

#[derive(Debug, Deserialize)]
pub(super) struct SubscribeData {
    pub(super) channel: String,
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    channel_data: Option<String>,
}

impl SubscribeData {
    /// The presence member an authorization names, as the client sent it.
    #[cfg(feature = "fuzzing")]
    pub(super) fn channel_data(&self) -> Option<&str> {
        self.channel_data.as_deref()
    }
}

/// A refused subscription: `pusher:subscription_error` on its channel.
pub(super) struct Refusal {
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

    fn too_fast() -> Self {
        let error = "Too many subscriptions: slow down (client.subscribe_rate)".to_owned();
        Self { kind: "LimitReached", error, status: 429 }
    }
}

impl From<HubError> for Refusal {
    fn from(error: HubError) -> Self {
        let status = crate::codes::hub_error(&error).pusher_subscription_status;
        Self { kind: "ServerError", error: error.to_string(), status }
    }
}

impl Session {
    /// Subscribes, or tells the client why not on the channel. `Err` when
    /// the client keeps subscribing far over its rate.
    pub(super) async fn on_subscribe(&mut self, data: Option<&RawValue>) -> Result<(), DisconnectReason> {
        let Some(request) = data_as::<SubscribeData>(data) else {
            self.send(error_frame(None, "pusher:subscribe needs data with a channel", None));
            return Ok(());
        };
        let name = request.channel.clone();
        let outcome = match self.subscription_rate(&name) {
            Verdict::Allowed => self.subscribe(request).await,
            Verdict::Refused => Err(Refusal::too_fast()),
            Verdict::Abuse => {
                tracing::info!(socket_id = %self.socket_id(), "far over client.subscribe_rate; disconnecting");
                return Err(DisconnectReason::TooManyRequests);
            }
        };
        if let Err(refusal) = outcome {
            match refusal.status >= 500 {
                // Not the client's doing (the engine did not answer): the operator must see it.
                true => {
                    tracing::warn!(socket_id = %self.socket_id(), channel = ?name, error = %refusal.error, "subscription failed on the server's side; the client may retry (check the backplane's load and its command_timeout)")
                }
                false => {
                    tracing::debug!(socket_id = %self.socket_id(), channel = ?name, error = %refusal.error, "subscription refused")
                }
            }
            let data = serde_json::json!({ "type": refusal.kind, "error": refusal.error, "status": refusal.status });
            self.send(object_frame("pusher:subscription_error", Some(&name), &data));
        }
        Ok(())
    }

    /// Counts a subscription against the connection's subscription rate
    /// and, when its channel's namespace has one, that namespace's rate.
    fn subscription_rate(&mut self, name: &str) -> Verdict {
        let (settings, now) = (&self.frontend.settings, Instant::now());
        let mut verdict = self.rates.subscription(settings.rates, now);
        if let Some(channel) = self.app.channel(name) {
            let rules = self.frontend.hub().rules();
            if let (Some(namespace), Ok(options)) = (ChannelRules::namespace_of(&channel), rules.resolve(&channel)) {
                let limit = RateLimit { rate: options.command_rate, burst: options.command_burst };
                verdict = verdict.max(self.rates.in_namespace(namespace, limit, now));
            }
        }
        verdict
    }

    async fn subscribe(&mut self, request: SubscribeData) -> Result<(), Refusal> {
        let name = request.channel.as_str();
        let channel = self.app.channel(name).ok_or_else(|| Refusal::bad("The channel name is not allowed"))?;
        let kind = ChannelKind::of(name);
        let mut subscription = Subscription::default();
        if let Some(user) = name.strip_prefix(super::super::USER_CHANNEL_PREFIX) {
            if self.signed_in.is_none() || self.conn.user().as_str() != user {
                return Err(Refusal::auth("Only the signed-in user may subscribe to its channel"));
            }
        } else if super::super::is_private(name) {
            let channel_data = request.channel_data.as_deref().filter(|_| kind.is_presence());
            let message = sign::channel_message(self.socket_id(), name, channel_data);
            let auth = request.auth.as_deref().unwrap_or("");
            if !sign::verify_auth(&self.app.config.key, self.app.config.secret.expose(), &message, auth) {
                return Err(Refusal::auth(
                    "Invalid signature: the authorization does not match this socket and channel",
                ));
            }
            if kind.is_presence() {
                let (user, info) = match (channel_data, &self.signed_in) {
                    (Some(member), _) => presence_member(member)?,
                    // As Pusher: a signed-in user is the member its
                    // sign-in named, unless the authorization names one.
                    (None, Some(signed_in)) => (self.conn.user(), checked_info(signed_in.user_info.clone())?),
                    (None, None) => {
                        return Err(Refusal::bad("Presence channels need channel_data, or a signed-in user"));
                    }
                };
                subscription.user = Some(user);
                subscription.chan_info = info;
                subscription.join_leave = true;
            }
        }
        if kind.is_presence() {
            // The member list is read with the socket taken back from the
            // fanout, until the confirmation is queued (see `confirm`).
            self.outbox.reclaim();
        }
        if self.conn.is_subscribed(&channel) {
            // pusher-js resubscribes after a reconnect of its own; confirm again.
            self.confirm(&channel, name, kind).await?;
            return Ok(());
        }
        if kind.is_presence() {
            self.check_presence_room(&channel, subscription.user.as_ref()).await?;
        }
        let reply = (!kind.is_presence()).then(|| Outgoing::Frame(subscription_succeeded(name, "{}").into()));
        // A cache channel's last event is read before the subscription
        // goes live, and queued after the reply ahead of anything newer
        // (`PusherEncoder::wants_latest`, `encode_latest`).
        let request = SubscribeRequest { subscription, ..SubscribeRequest::default() };
        let hub = self.frontend.hub();
        let outcome = hub.subscribe(&self.conn, &channel, SubscribeAccess::Token, request, |_| reply).await?;
        if kind.is_cache() && outcome.latest.is_none() {
            self.frontend.webhooks().send(&self.app, Hook::CacheMiss { channel: name.to_owned() });
        }
        if kind.is_presence() {
            self.confirm(&channel, name, kind).await?;
        }
        Ok(())
    }

    /// Refuses a presence subscription that would exceed the app's member limit.
    async fn check_presence_room(&self, channel: &ChannelName, user: Option<&UserId>) -> Result<(), Refusal> {
        let present = self.frontend.hub().presence(channel).await?;
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
    /// (one entry per user), else with empty data.
    ///
    /// The confirmation goes ahead of everything queued, and for presence
    /// the caller has taken the socket back from the fanout before the
    /// subscription went live (`Outbox::reclaim`), so that no event of the
    /// channel reaches the client between the list's read and the list:
    /// pusher-js takes the list as the whole truth, and a member who joined
    /// in between would be lost from it. An event queued meanwhile comes
    /// after the list, but for the joins and leaves the list already tells
    /// (see `told_by_the_list`), which are dropped: pusher-js would tell
    /// the app `pusher:member_added` again for a member it lists. (A join
    /// written before the read whose event reaches the node after the
    /// confirmation is still told twice: one engine round trip's window.)
    async fn confirm(&self, channel: &ChannelName, name: &str, kind: ChannelKind) -> Result<(), Refusal> {
        let (data, listed) = match kind.is_presence() {
            false => ("{}".to_owned(), None),
            true => {
                let present = self.frontend.hub().presence(channel).await?;
                // One entry per user, each member's info as it was written.
                let members: std::collections::BTreeMap<&str, Option<&[u8]>> =
                    present.iter().map(|info| (info.user.as_str(), info.chan_info.as_deref())).collect();
                let data = member_list(&members);
                (data, Some(members.keys().map(|user| (*user).to_owned()).collect::<HashSet<String>>()))
            }
        };
        let confirmation = Outgoing::Frame(subscription_succeeded(name, &data).into());
        // A full outbox closes itself as slow; the loop then ends the session.
        let _ = match listed {
            None => self.outbox.push_ahead(confirmation),
            Some(listed) => {
                let mut seen = HashSet::new();
                let told = |queued: &Outgoing| told_by_the_list(queued, name, &listed, &mut seen);
                self.outbox.push_ahead_superseding(confirmation, told)
            }
        };
        Ok(())
    }
}

/// Whether `queued`, about to follow a member list of `channel` that
/// holds `listed`, is a join or leave the list already tells: the first
/// one queued of its member (`seen` notes them), a join of a member
/// listed or a leave of one not. Changes are told in order, so a member's
/// first change that agrees with the list came before it was read. One
/// dropped agrees with what the list gives the client, so the members it
/// ends with are the same; what is kept may still be older than the list
/// (a member who left and came back before the read is told both).
fn told_by_the_list(queued: &Outgoing, channel: &str, listed: &HashSet<String>, seen: &mut HashSet<String>) -> bool {
    let Outgoing::Frame(frame) = queued else { return false };
    let Some((added, user)) = member_change(frame.as_bytes(), channel) else { return false };
    let listed = listed.contains(&user);
    seen.insert(user) && added == listed
}

/// A presence channel's member list, `{"presence": {"ids", "hash",
/// "count"}}`, each member's info written as it is kept (`{}` for none,
/// or for any that is not JSON).
fn member_list(members: &std::collections::BTreeMap<&str, Option<&[u8]>>) -> String {
    let mut out = bytes::BytesMut::with_capacity(64);
    let mut data = crate::json::Object::begin(&mut out);
    let mut presence = crate::json::Object::begin(data.key("presence"));
    let ids: Vec<&str> = members.keys().copied().collect();
    crate::json::put_array(presence.key("ids"), &ids, |out, id| crate::json::put_str(out, id));
    let mut hash = crate::json::Object::begin(presence.key("hash"));
    for (user, info) in members {
        let info = info.filter(|raw| serde_json::from_slice::<&RawValue>(raw).is_ok());
        hash.raw(user, info.unwrap_or(b"{}"));
    }
    hash.end();
    presence.u64("count", u64::try_from(members.len()).unwrap_or(u64::MAX));
    presence.end();
    data.end();
    String::from_utf8_lossy(&out).into_owned()
}

/// A presence authorization's member: `user_info` as the backend wrote it
/// (its keys in their order).
#[derive(Deserialize)]
struct Member {
    #[serde(default)]
    user_id: Value,
    #[serde(default, deserialize_with = "present")]
    user_info: Option<Box<RawValue>>,
}

/// A field that is there, `null` included: `None` only when it is missing.
pub(super) fn present<'de, D: serde::Deserializer<'de>>(field: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(field).map(Some)
}

/// The member a presence authorization's `channel_data` names.
pub(super) fn presence_member(channel_data: &str) -> Result<(UserId, Option<Bytes>), Refusal> {
    let member: Member = serde_json::from_str(channel_data).map_err(|_| Refusal::bad("channel_data is not JSON"))?;
    let id = match member.user_id {
        Value::String(id) if !id.is_empty() => id,
        Value::Number(id) => id.to_string(),
        _ => return Err(Refusal::bad("channel_data needs a user_id")),
    };
    if id.len() > MAX_USER_ID {
        return Err(Refusal::bad(format!("user_id is longer than {MAX_USER_ID} characters")));
    }
    let user = UserId::new(&id).map_err(|e| Refusal::bad(e.to_string()))?;
    let info = member.user_info.map(|info| crate::json::compact(info.get()));
    Ok((user, checked_info(info)?))
}

/// A member's `user_info`, within Pusher's bound.
fn checked_info(info: Option<Bytes>) -> Result<Option<Bytes>, Refusal> {
    if info.as_ref().is_some_and(|info| info.len() > MAX_USER_INFO) {
        return Err(Refusal::bad(format!("user_info is larger than {MAX_USER_INFO} bytes")));
    }
    Ok(info)
}

/// Pusher's bounds on a presence member: its id, and its `user_info`
/// (which every member list carries, once per member, and every join
/// sends to every member).
const MAX_USER_ID: usize = 128;
const MAX_USER_INFO: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_list_carries_each_members_info_as_written_one_entry_a_user() {
        let members = std::collections::BTreeMap::from([
            ("7", Some(&br#"{"z":1,"a":2}"#[..])),
            ("8", None),
            ("9", Some(&b"not json"[..])),
        ]);
        assert_eq!(
            member_list(&members),
            r#"{"presence":{"ids":["7","8","9"],"hash":{"7":{"z":1,"a":2},"8":{},"9":{}},"count":3}}"#
        );
    }

    #[test]
    fn a_members_info_is_kept_as_the_backend_wrote_it_keys_in_order() {
        let (user, info) = presence_member(r#"{"user_id": 7, "user_info": {"name": "Ann", "age": 3}}"#).ok().unwrap();
        assert_eq!(user.as_str(), "7");
        assert_eq!(info.as_deref(), Some(&br#"{"name":"Ann","age":3}"#[..]), "compacted, not reordered");
        assert!(presence_member(r#"{"user_info": {}}"#).is_err(), "no user_id");
        let (_, info) = presence_member(r#"{"user_id": "7", "user_info": null}"#).ok().unwrap();
        assert_eq!(info.as_deref(), Some(&b"null"[..]), "a null info is kept, as before");
        assert!(presence_member("not json").is_err());
    }
}
