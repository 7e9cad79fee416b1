//! Replies and pushes of the Centrifuge protocol v2, JSON encoding.
//!
//! Frames join messages with `\n`, so every message is written compactly:
//! payloads that arrive with line breaks between tokens are compacted once
//! when accepted ([`compact_json`]), never per subscriber.

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;

use herald_core::{PushEncoder, SubscribeOutcome};
use herald_engine::{ChannelName, ClientInfo, HistoryResult, PresenceEvent, Publication};

use super::codes::ClientError;

/// Encodes publications for every Centrifuge connection of a node.
#[derive(Debug, Default)]
pub struct CentrifugeEncoder;

impl PushEncoder for CentrifugeEncoder {
    fn encode_publication(&self, channel: &ChannelName, publication: &Publication) -> Bytes {
        let mut out = BytesMut::with_capacity(64 + channel.as_str().len() + publication.data.len());
        out.put_slice(b"{\"push\":{\"channel\":");
        put_json_str(&mut out, channel.as_str());
        out.put_slice(b",\"pub\":");
        put_publication(&mut out, publication);
        out.put_slice(b"}}");
        out.freeze()
    }

    /// Centrifuge announces every connection's join and leave, to everyone.
    fn encode_presence(&self, channel: &ChannelName, event: &PresenceEvent, _to_own_user: bool) -> Option<Bytes> {
        Some(presence_push(channel, if event.is_join() { "join" } else { "leave" }, event.info()))
    }
}

/// `{"push":{"channel":…,"join":{"info":{…}}}}` (or `leave`).
fn presence_push(channel: &ChannelName, kind: &str, info: &ClientInfo) -> Bytes {
    let mut out = BytesMut::with_capacity(128);
    out.put_slice(b"{\"push\":{\"channel\":");
    put_json_str(&mut out, channel.as_str());
    out.put_slice(format!(",\"{kind}\":{{\"info\":").as_bytes());
    put_client_info(&mut out, info);
    out.put_slice(b"}}}");
    out.freeze()
}

/// A JSON array of publications.
pub fn put_publications(out: &mut BytesMut, publications: &[std::sync::Arc<Publication>]) {
    out.put_u8(b'[');
    for (i, publication) in publications.iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        put_publication(out, publication);
    }
    out.put_u8(b']');
}

/// Serializes `value` (an object) and appends `"name":<raw>` inside it.
pub fn object_with_raw(value: &impl Serialize, name: &str, raw: &[u8]) -> Bytes {
    let mut out = BytesMut::from(&serde_json::to_vec(value).expect("an object serializes")[..]);
    debug_assert_eq!(out.last(), Some(&b'}'));
    out.truncate(out.len() - 1);
    if out.len() > 1 {
        out.put_u8(b',');
    }
    put_json_str(&mut out, name);
    out.put_u8(b':');
    out.put_slice(raw);
    out.put_u8(b'}');
    out.freeze()
}

/// `{"id":N,"<method>":<raw result>}`.
pub fn raw_reply(id: u32, method: &str, result: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(32 + result.len());
    out.put_slice(format!("{{\"id\":{id},").as_bytes());
    put_json_str(&mut out, method);
    out.put_u8(b':');
    out.put_slice(result);
    out.put_u8(b'}');
    out.freeze()
}

/// A `SubscribeResult` object: expiry, positions, recovery, publications.
pub fn subscribe_result(outcome: &SubscribeOutcome, expiry: &super::session::ExpiryResult) -> Bytes {
    #[derive(Serialize)]
    struct Result<'a> {
        #[serde(flatten)]
        expiry: &'a super::session::ExpiryResult,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        recoverable: bool,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        positioned: bool,
        #[serde(skip_serializing_if = "str::is_empty")]
        epoch: &'a str,
        #[serde(skip_serializing_if = "is_zero")]
        offset: u64,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        was_recovering: bool,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        recovered: bool,
    }
    let result = Result {
        expiry,
        recoverable: outcome.recoverable,
        positioned: outcome.positioned,
        epoch: if outcome.positioned { outcome.position.epoch.as_str() } else { "" },
        offset: if outcome.positioned { outcome.position.offset.get() } else { 0 },
        was_recovering: outcome.was_recovering,
        recovered: outcome.recovered,
    };
    if outcome.publications.is_empty() {
        return Bytes::from(serde_json::to_vec(&result).expect("a subscribe result serializes"));
    }
    let mut publications = BytesMut::new();
    put_publications(&mut publications, &outcome.publications);
    object_with_raw(&result, "publications", &publications)
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A `HistoryResult` object.
pub fn history_result(history: &HistoryResult) -> Bytes {
    #[derive(Serialize)]
    struct Position<'a> {
        epoch: &'a str,
        offset: u64,
    }
    let position = Position { epoch: history.position.epoch.as_str(), offset: history.position.offset.get() };
    let mut publications = BytesMut::new();
    put_publications(&mut publications, &history.publications);
    object_with_raw(&position, "publications", &publications)
}

/// A `PresenceResult` object: `{"presence":{"<client>":{…}}}`.
pub fn presence_result(present: &[ClientInfo]) -> Bytes {
    let mut out = BytesMut::from(&b"{\"presence\":{"[..]);
    for (i, info) in present.iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        put_json_str(&mut out, info.client.as_str());
        out.put_u8(b':');
        put_client_info(&mut out, info);
    }
    out.put_slice(b"}}");
    out.freeze()
}

/// A `ClientInfo` object.
pub fn client_info_json(info: &ClientInfo) -> Bytes {
    let mut out = BytesMut::with_capacity(96);
    put_client_info(&mut out, info);
    out.freeze()
}

/// Writes a `Publication` object: `{"data":…,"info":…,"offset":…,"tags":…}`.
pub fn put_publication(out: &mut BytesMut, publication: &Publication) {
    out.put_slice(b"{\"data\":");
    out.put_slice(&publication.data);
    if let Some(info) = &publication.info {
        out.put_slice(b",\"info\":");
        put_client_info(out, info);
    }
    if publication.offset.get() > 0 {
        out.put_slice(format!(",\"offset\":{}", publication.offset).as_bytes());
    }
    if !publication.tags.is_empty() {
        out.put_slice(b",\"tags\":");
        out.put_slice(&serde_json::to_vec(&publication.tags).expect("string map serializes"));
    }
    out.put_u8(b'}');
}

fn put_client_info(out: &mut BytesMut, info: &ClientInfo) {
    out.put_slice(b"{\"user\":");
    put_json_str(out, info.user.as_str());
    out.put_slice(b",\"client\":");
    put_json_str(out, info.client.as_str());
    if let Some(conn_info) = &info.conn_info {
        out.put_slice(b",\"conn_info\":");
        out.put_slice(conn_info);
    }
    if let Some(chan_info) = &info.chan_info {
        out.put_slice(b",\"chan_info\":");
        out.put_slice(chan_info);
    }
    out.put_u8(b'}');
}

fn put_json_str(out: &mut BytesMut, s: &str) {
    out.put_slice(&serde_json::to_vec(s).expect("a string serializes"));
}

/// `{"id":N,"<method>":<result>}`.
pub fn reply<T: Serialize>(id: u32, method: &str, result: &T) -> Bytes {
    let mut out = BytesMut::with_capacity(64);
    out.put_slice(format!("{{\"id\":{id},").as_bytes());
    put_json_str(&mut out, method);
    out.put_u8(b':');
    out.put_slice(&serde_json::to_vec(result).expect("a reply serializes"));
    out.put_u8(b'}');
    out.freeze()
}

/// `{"id":N,"error":{"code":…,"message":…,"temporary":…}}`.
pub fn error_reply(id: u32, error: &ClientError) -> Bytes {
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
    Bytes::from(serde_json::to_vec(&body).expect("an error reply serializes"))
}

/// `{"push":{"channel":…,"<kind>":<body>}}`; the channel is omitted when empty.
pub fn push<T: Serialize>(channel: Option<&ChannelName>, kind: &str, body: &T) -> Bytes {
    let mut out = BytesMut::with_capacity(64);
    out.put_slice(b"{\"push\":{");
    if let Some(channel) = channel {
        out.put_slice(b"\"channel\":");
        put_json_str(&mut out, channel.as_str());
        out.put_u8(b',');
    }
    put_json_str(&mut out, kind);
    out.put_u8(b':');
    out.put_slice(&serde_json::to_vec(body).expect("a push serializes"));
    out.put_slice(b"}}");
    out.freeze()
}

/// The server's ping: an empty object.
pub const PING: &[u8] = b"{}";

/// Removes whitespace between JSON tokens of an already valid document,
/// keeping strings (and their escapes) untouched.
pub fn compact_json(raw: &str) -> Bytes {
    if !raw.bytes().any(|b| matches!(b, b'\n' | b'\r' | b'\t' | b' ')) {
        return Bytes::copy_from_slice(raw.as_bytes());
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut in_string = false;
    let mut escaped = false;
    for b in raw.bytes() {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
            out.push(b);
        } else if !matches!(b, b'\n' | b'\r' | b'\t' | b' ') {
            out.push(b);
        }
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use herald_engine::{ClientId, Offset, UserId};

    use super::*;

    #[test]
    fn publications_encode_as_push_frames() {
        let mut publication = Publication::from_data(Bytes::from_static(br#"{"text":"hi"}"#));
        let frame = CentrifugeEncoder.encode_publication(&ChannelName::new("chat:a").unwrap(), &publication);
        assert_eq!(frame, r#"{"push":{"channel":"chat:a","pub":{"data":{"text":"hi"}}}}"#);

        publication.offset = Offset::new(7);
        publication.tags = BTreeMap::from([("k".to_owned(), "v".to_owned())]);
        publication.info = Some(ClientInfo {
            user: UserId::new("42").unwrap(),
            client: ClientId::new("c1"),
            conn_info: Some(Bytes::from_static(br#"{"n":1}"#)),
            chan_info: None,
        });
        let frame = CentrifugeEncoder.encode_publication(&ChannelName::new("q\"").unwrap(), &publication);
        let parsed: serde_json::Value = serde_json::from_slice(&frame).unwrap();
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
    fn compacting_keeps_strings_and_drops_token_whitespace() {
        let cases = [
            ("{\n  \"a\": [1, 2],\n  \"b\": \"x y\\\" \\n z\"\n}", "{\"a\":[1,2],\"b\":\"x y\\\" \\n z\"}"),
            ("\"already\"", "\"already\""),
            ("[ \"\\\\\" , 1 ]", "[\"\\\\\",1]"),
        ];
        for (raw, compact) in cases {
            assert_eq!(compact_json(raw), compact.as_bytes(), "{raw}");
            let a: serde_json::Value = serde_json::from_str(raw).unwrap();
            let b: serde_json::Value = serde_json::from_slice(&compact_json(raw)).unwrap();
            assert_eq!(a, b);
        }
    }

    proptest::proptest! {
        #[test]
        fn compacting_any_json_keeps_its_value(value in arbitrary_json()) {
            let pretty = serde_json::to_string_pretty(&value).unwrap();
            let compact = compact_json(&pretty);
            proptest::prop_assert!(!compact.contains(&b'\n'));
            let back: serde_json::Value = serde_json::from_slice(&compact).unwrap();
            proptest::prop_assert_eq!(back, value);
        }
    }

    fn arbitrary_json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            ".{0,12}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(".{0,6}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
