//! Replies and pushes of the Centrifuge protocol v2, JSON encoding.
//!
//! Frames join messages with `\n`, so every message is written compactly:
//! payloads that arrive with line breaks between tokens are compacted once
//! when accepted (`json::compact`), never per subscriber. The shapes the
//! server API shares (publications, client infos, history, presence) are
//! written by `crate::json`.

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;

use herald_core::{Frame, PushEncoder, SubscribeOutcome};
use herald_engine::{ChannelName, ClientInfo, HistoryResult, PresenceEvent, Publication};

use super::codes::ClientError;
use crate::json::{self, put_client_info, put_publication_as, put_str, Data, Object};

/// Encodes publications for every Centrifuge connection of a node.
#[derive(Debug, Default)]
pub(crate) struct CentrifugeEncoder;

impl PushEncoder for CentrifugeEncoder {
    fn protocol(&self) -> &'static str {
        "centrifuge"
    }

    fn encode_publication(&self, channel: &ChannelName, publication: &Publication) -> Frame {
        Frame::Text(json::text(publication_push(channel, publication, true, Data::Raw)))
    }

    /// Data as a string, a delta's with `"delta":true`. A delta that is not
    /// text cannot be a JSON string: the publication then goes in full,
    /// which is as good for the client.
    fn encode_delta_publication(
        &self,
        channel: &ChannelName,
        publication: &Publication,
        delta: Option<&[u8]>,
    ) -> Frame {
        let data = match delta.map(std::str::from_utf8) {
            Some(Ok(delta)) => Data::Delta(delta),
            Some(Err(_)) | None => Data::Text,
        };
        Frame::Text(json::text(publication_push(channel, publication, true, data)))
    }

    /// Centrifuge announces every connection's join and leave, to everyone.
    fn encode_presence(&self, channel: &ChannelName, event: &PresenceEvent, _to_own_user: bool) -> Option<Frame> {
        let push = presence_push(channel, if event.is_join() { "join" } else { "leave" }, event.info(), true);
        Some(Frame::Text(json::text(push)))
    }
}

/// Encodes publications for the node's uni-directional Centrifuge
/// connections: the same pushes, without the `{"push":…}` envelope (a
/// uni-directional client gets nothing but pushes).
#[derive(Debug, Default)]
pub(crate) struct UniEncoder;

impl PushEncoder for UniEncoder {
    fn protocol(&self) -> &'static str {
        "centrifuge"
    }

    fn encode_publication(&self, channel: &ChannelName, publication: &Publication) -> Frame {
        Frame::Text(json::text(publication_push(channel, publication, false, Data::Raw)))
    }

    fn encode_presence(&self, channel: &ChannelName, event: &PresenceEvent, _to_own_user: bool) -> Option<Frame> {
        let push = presence_push(channel, if event.is_join() { "join" } else { "leave" }, event.info(), false);
        Some(Frame::Text(json::text(push)))
    }
}

/// `{"push":{"channel":…,"pub":{…}}}`, or without the envelope.
fn publication_push(channel: &ChannelName, publication: &Publication, envelope: bool, data: Data<'_>) -> Bytes {
    let capacity = channel.as_str().len().saturating_add(publication.data.len()).saturating_add(64);
    push_with(Some(channel), "pub", envelope, capacity, |out| put_publication_as(out, publication, data))
}

/// `{"push":{"channel":…,"join":{"info":{…}}}}` (or `leave`), or without
/// the envelope.
fn presence_push(channel: &ChannelName, kind: &str, info: &ClientInfo, envelope: bool) -> Bytes {
    push_with(Some(channel), kind, envelope, 128, |out| {
        out.put_slice(b"{\"info\":");
        put_client_info(out, info);
        out.put_u8(b'}');
    })
}

/// A push whose body `body` writes: `{"push":{"channel":…,"<kind>":<body>}}`
/// when `envelope`, else bare `{…}` (what a uni-directional client gets);
/// the channel is left out when there is none.
fn push_with(
    channel: Option<&ChannelName>,
    kind: &str,
    envelope: bool,
    capacity: usize,
    body: impl FnOnce(&mut BytesMut),
) -> Bytes {
    let mut out = BytesMut::with_capacity(capacity);
    if envelope {
        out.put_slice(b"{\"push\":");
    }
    out.put_u8(b'{');
    if let Some(channel) = channel {
        out.put_slice(b"\"channel\":");
        put_str(&mut out, channel.as_str());
        out.put_u8(b',');
    }
    put_str(&mut out, kind);
    out.put_u8(b':');
    body(&mut out);
    out.put_u8(b'}');
    if envelope {
        out.put_u8(b'}');
    }
    out.freeze()
}

/// Serializes `value` (an object) and appends `"name":<raw>` inside it.
pub(crate) fn object_with_raw(value: &impl Serialize, name: &str, raw: &[u8]) -> Bytes {
    let mut out = BytesMut::from(&json::to_vec(value)[..]);
    debug_assert_eq!(out.last(), Some(&b'}'));
    out.truncate(out.len().saturating_sub(1));
    if out.len() > 1 {
        out.put_u8(b',');
    }
    put_str(&mut out, name);
    out.put_u8(b':');
    out.put_slice(raw);
    out.put_u8(b'}');
    out.freeze()
}

/// `{"id":N,"<method>":<raw result>}`.
pub(crate) fn raw_reply(id: u32, method: &str, result: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(result.len().saturating_add(32));
    out.put_slice(format!("{{\"id\":{id},").as_bytes());
    put_str(&mut out, method);
    out.put_u8(b':');
    out.put_slice(result);
    out.put_u8(b'}');
    out.freeze()
}

/// `{"<kind>":<raw>}`: a push for a uni-directional client, whose body
/// is already encoded.
pub(crate) fn bare_push(kind: &str, raw: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(raw.len().saturating_add(16));
    out.put_u8(b'{');
    put_str(&mut out, kind);
    out.put_u8(b':');
    out.put_slice(raw);
    out.put_u8(b'}');
    out.freeze()
}

/// A `SubscribeResult` object: expiry, positions, recovery, publications.
/// `text_data`: publications' data as strings (a JSON subscriber that
/// takes deltas).
pub(crate) fn subscribe_result(
    outcome: &SubscribeOutcome,
    expiry: &super::session::ExpiryResult,
    data: Option<&serde_json::value::RawValue>,
    text_data: bool,
) -> Bytes {
    let mut out = BytesMut::with_capacity(64);
    let mut result = Object::begin(&mut out);
    if let Some(data) = data {
        result.raw("data", data.get().as_bytes());
    }
    if expiry.expires {
        result.bool("expires", true);
    }
    if let Some(ttl) = expiry.ttl {
        result.u64("ttl", u64::from(ttl));
    }
    if outcome.recoverable {
        result.bool("recoverable", true);
    }
    if outcome.positioned {
        result.bool("positioned", true);
        if !outcome.position.epoch.is_empty() {
            result.str("epoch", outcome.position.epoch.as_str());
        }
        if outcome.position.offset.get() > 0 {
            result.u64("offset", outcome.position.offset.get());
        }
    }
    if outcome.was_recovering {
        result.bool("was_recovering", true);
    }
    if outcome.recovered {
        result.bool("recovered", true);
    }
    if outcome.delta {
        result.bool("delta", true);
    }
    if !outcome.publications.is_empty() {
        let data = if text_data { Data::Text } else { Data::Raw };
        json::put_publications_as(result.key("publications"), &outcome.publications, data);
    }
    result.end();
    out.freeze()
}

/// A `HistoryResult` object.
pub(crate) fn history_result(history: &HistoryResult) -> Bytes {
    let mut out = BytesMut::new();
    json::put_history(&mut out, history);
    out.freeze()
}

/// A `PresenceResult` object: `{"presence":{"<client>":{…}}}`.
pub(crate) fn presence_result(present: &[ClientInfo]) -> Bytes {
    let mut out = BytesMut::new();
    json::put_presence(&mut out, present);
    out.freeze()
}

/// `{"id":N,"<method>":<result>}`.
pub(crate) fn reply<T: Serialize>(id: u32, method: &str, result: &T) -> Bytes {
    let mut out = BytesMut::with_capacity(64);
    out.put_slice(format!("{{\"id\":{id},").as_bytes());
    put_str(&mut out, method);
    out.put_u8(b':');
    out.put_slice(&json::to_vec(result));
    out.put_u8(b'}');
    out.freeze()
}

/// `{"id":N,"error":{"code":…,"message":…,"temporary":…}}`.
pub(crate) fn error_reply(id: u32, error: &ClientError) -> Bytes {
    #[derive(Serialize)]
    struct Wire<'a> {
        code: u32,
        message: &'a str,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        temporary: bool,
    }
    #[derive(Serialize)]
    struct Reply<'a> {
        id: u32,
        error: Wire<'a>,
    }
    let (code, temporary) = error.code();
    let message = error.to_string();
    let body = Reply { id, error: Wire { code, message: &message, temporary } };
    Bytes::from(json::to_vec(&body))
}

/// A push, `{"push":{…}}` when `envelope`, else bare `{…}` (what a
/// uni-directional client gets).
pub(crate) fn push<T: Serialize>(channel: Option<&ChannelName>, kind: &str, body: &T, envelope: bool) -> Bytes {
    push_with(channel, kind, envelope, 64, |out| out.put_slice(&json::to_vec(body)))
}

pub(crate) const PING: &[u8] = b"{}";

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use herald_engine::{ClientId, Offset, UserId};

    use super::*;

    fn text(json: &'static str) -> Frame {
        Frame::Text(json.into())
    }

    #[test]
    fn publications_encode_as_push_frames() {
        let mut publication = Publication::from_data(Bytes::from_static(br#"{"text":"hi"}"#));
        let frame = CentrifugeEncoder.encode_publication(&ChannelName::new("chat:a").unwrap(), &publication);
        assert_eq!(frame, text(r#"{"push":{"channel":"chat:a","pub":{"data":{"text":"hi"}}}}"#));

        publication.offset = Offset::new(7);
        publication.tags = BTreeMap::from([("k".to_owned(), "v".to_owned())]);
        publication.info = Some(ClientInfo {
            user: UserId::new("42").unwrap(),
            client: ClientId::new("c1"),
            conn_info: Some(Bytes::from_static(br#"{"n":1}"#)),
            chan_info: None,
        });
        let frame = CentrifugeEncoder.encode_publication(&ChannelName::new("q\"").unwrap(), &publication);
        let parsed: serde_json::Value = serde_json::from_slice(frame.as_bytes()).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({"push": {"channel": "q\"", "pub": {
                "data": {"text": "hi"},
                "info": {"user": "42", "client": "c1", "conn_info": {"n": 1}},
                "offset": 7,
                "tags": {"k": "v"}
            }}})
        );
    }

    #[test]
    fn uni_directional_clients_get_the_same_pushes_without_the_envelope() {
        let channel = ChannelName::new("scores").unwrap();
        let publication = Publication::from_data(Bytes::from_static(br#"{"goal":1}"#));
        assert_eq!(
            UniEncoder.encode_publication(&channel, &publication),
            text(r#"{"channel":"scores","pub":{"data":{"goal":1}}}"#)
        );
        let info = ClientInfo {
            user: UserId::new("7").unwrap(),
            client: ClientId::new("c"),
            conn_info: None,
            chan_info: None,
        };
        let join = PresenceEvent::Join { info, user_arrived: true };
        assert_eq!(
            UniEncoder.encode_presence(&channel, &join, false).unwrap(),
            text(r#"{"channel":"scores","join":{"info":{"user":"7","client":"c"}}}"#)
        );
        assert_eq!(push(None, "refresh", &serde_json::json!({}), false), r#"{"refresh":{}}"#);
        assert_eq!(
            push(Some(&channel), "subscribe", &serde_json::json!({}), true),
            r#"{"push":{"channel":"scores","subscribe":{}}}"#
        );
    }
}
