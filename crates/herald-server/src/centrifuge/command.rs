//! Client commands of the Centrifuge protocol v2, JSON encoding.
//!
//! A command is an object with an `id` and exactly one method key:
//! `{"id":1,"subscribe":{"channel":"news"}}`. The empty object `{}` is the
//! client's pong. A frame may hold several commands separated by newlines.
//! Request fields Herald does not use are ignored, as clients add fields
//! over time, and so are top-level fields beside a known method; a command
//! with two known methods is malformed, and one with only unknown keys asks
//! for a method Herald does not have (error 104).

use std::collections::HashMap;
use std::fmt;

use bytes::{Buf, Bytes};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

/// One decoded command.
#[derive(Debug)]
pub(crate) struct Command {
    /// Zero for commands that expect no reply (`send`, the pong).
    pub id: u32,
    /// `None` for the empty command, the client's pong.
    pub method: Option<Method>,
}

/// What the client asks for.
#[derive(Debug)]
pub(crate) enum Method {
    Connect(ConnectRequest),
    Subscribe(SubscribeRequest),
    Unsubscribe(ChannelRequest),
    Publish(PublishRequest),
    Presence(ChannelRequest),
    PresenceStats(ChannelRequest),
    History(HistoryRequest),
    Ping,
    Send(SendRequest),
    Rpc(RpcRequest),
    Refresh(RefreshRequest),
    SubRefresh(SubRefreshRequest),
    /// A method this server does not know; answered with error 104.
    Unknown(String),
}

impl Method {
    /// The channel the command is about, if it is about one.
    pub(crate) fn channel(&self) -> Option<&str> {
        match self {
            Method::Subscribe(r) => Some(&r.channel),
            Method::Unsubscribe(r) | Method::Presence(r) | Method::PresenceStats(r) => Some(&r.channel),
            Method::Publish(r) => Some(&r.channel),
            Method::History(r) => Some(&r.channel),
            Method::SubRefresh(r) => Some(&r.channel),
            _ => None,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ConnectRequest {
    #[serde(default)]
    pub token: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub version: String,
    /// Server-side subscriptions the client asks to recover.
    #[serde(default)]
    pub subs: HashMap<String, RecoverRequest>,
    /// Data for the connect proxy.
    #[serde(default)]
    pub data: Option<Box<RawValue>>,
}

/// Where a client left a subscription, and whether it asks to recover.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RecoverRequest {
    #[serde(default)]
    pub recover: bool,
    #[serde(default)]
    pub epoch: String,
    #[serde(default)]
    pub offset: u64,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct SubscribeRequest {
    pub channel: String,
    #[serde(default)]
    pub token: String,
    /// Where the client left off, when it asks to recover.
    #[serde(flatten)]
    pub position: RecoverRequest,
    #[serde(default)]
    pub positioned: bool,
    #[serde(default)]
    pub recoverable: bool,
    #[serde(default)]
    pub join_leave: bool,
    /// The delta compression asked for: `fossil`, or none.
    #[serde(default)]
    pub delta: String,
    /// Data for the subscribe proxy.
    #[serde(default)]
    pub data: Option<Box<RawValue>>,
    /// Features asked for, as bits (see [`REJECT_UNRECOVERED`]; others
    /// Herald does not offer are ignored, as the protocol has it).
    #[serde(default)]
    pub flag: i64,
}

/// The subscribe flag asking for error 112, instead of `recovered: false`,
/// when recovery is impossible (centrifuge-js sets it with `getState`,
/// to load the state again).
pub(crate) const REJECT_UNRECOVERED: i64 = 2;

#[derive(Debug, Default, Deserialize)]
pub(crate) struct StreamPositionRequest {
    #[serde(default)]
    pub offset: u64,
    #[serde(default)]
    pub epoch: String,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct HistoryRequest {
    pub channel: String,
    /// 0 returns only the stream position; negative means all.
    #[serde(default)]
    pub limit: i64,
    #[serde(default)]
    pub since: Option<StreamPositionRequest>,
    #[serde(default)]
    pub reverse: bool,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ChannelRequest {
    pub channel: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct PublishRequest {
    pub channel: String,
    pub data: Box<RawValue>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct SendRequest {
    #[serde(default)]
    pub data: Option<Box<RawValue>>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RpcRequest {
    #[serde(default)]
    pub method: String,
    #[serde(default)]
    pub data: Option<Box<RawValue>>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RefreshRequest {
    pub token: String,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct SubRefreshRequest {
    pub channel: String,
    pub token: String,
}

impl Command {
    /// Decodes one command from one line of a frame.
    pub(crate) fn decode(line: &[u8]) -> Result<Command, serde_json::Error> {
        serde_json::from_slice(line)
    }
}

/// Splits a frame into its non-empty lines.
/// Takes the first command line (blank lines skipped) off the front of
/// `rest`, sharing its bytes: what is left can wait for later.
pub(crate) fn next_line(rest: &mut Bytes) -> Option<Bytes> {
    while !rest.is_empty() {
        let end = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
        let mut line = rest.split_to(end);
        if !rest.is_empty() {
            rest.advance(1);
        }
        if line.last() == Some(&b'\r') {
            line.truncate(line.len().saturating_sub(1));
        }
        if line.iter().any(|b| !b.is_ascii_whitespace()) {
            return Some(line);
        }
    }
    None
}

impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(CommandVisitor)
    }
}

struct CommandVisitor;

impl<'de> Visitor<'de> for CommandVisitor {
    type Value = Command;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a command object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Command, A::Error> {
        let mut id = None;
        let mut method = None;
        // A field no method has: a method this server does not know, unless
        // the command carries a known method too (then a newer client's
        // field, ignored).
        let mut unknown = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "id" {
                if id.replace(map.next_value::<u32>()?).is_some() {
                    return Err(de::Error::duplicate_field("id"));
                }
                continue;
            }
            let next = match &*key {
                "connect" => Method::Connect(map.next_value()?),
                "subscribe" => Method::Subscribe(map.next_value()?),
                "unsubscribe" => Method::Unsubscribe(map.next_value()?),
                "publish" => Method::Publish(map.next_value()?),
                "presence" => Method::Presence(map.next_value()?),
                "presence_stats" => Method::PresenceStats(map.next_value()?),
                "history" => Method::History(map.next_value()?),
                "ping" => {
                    map.next_value::<IgnoredAny>()?;
                    Method::Ping
                }
                "send" => Method::Send(map.next_value()?),
                "rpc" => Method::Rpc(map.next_value()?),
                "refresh" => Method::Refresh(map.next_value()?),
                "sub_refresh" => Method::SubRefresh(map.next_value()?),
                other => {
                    map.next_value::<IgnoredAny>()?;
                    unknown.get_or_insert_with(|| other.to_owned());
                    continue;
                }
            };
            if method.replace(next).is_some() {
                return Err(de::Error::custom("a command carries exactly one method"));
            }
        }
        Ok(Command { id: id.unwrap_or(0), method: method.or(unknown.map(Method::Unknown)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_decode_by_their_method_key() {
        let cmd = Command::decode(br#"{"id":3,"subscribe":{"channel":"news","token":"t"}}"#).unwrap();
        assert_eq!(cmd.id, 3);
        match cmd.method {
            Some(Method::Subscribe(req)) => {
                assert_eq!((req.channel.as_str(), req.token.as_str()), ("news", "t"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_empty_command_is_a_pong() {
        let cmd = Command::decode(b"{}").unwrap();
        assert_eq!(cmd.id, 0);
        assert!(cmd.method.is_none());
    }

    #[test]
    fn publish_data_is_kept_verbatim() {
        let cmd = Command::decode(br#"{"id":1,"publish":{"channel":"c","data":{"a":[1, 2]}}}"#).unwrap();
        match cmd.method {
            Some(Method::Publish(req)) => assert_eq!(req.data.get(), r#"{"a":[1, 2]}"#),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_methods_are_named_and_unknown_fields_ignored() {
        let cmd = Command::decode(br#"{"id":1,"teleport":{"to":"mars"}}"#).unwrap();
        assert!(matches!(cmd.method, Some(Method::Unknown(m)) if m == "teleport"));
        let cmd = Command::decode(br#"{"id":2,"connect":{"token":"t","future_field":1}}"#).unwrap();
        assert!(matches!(cmd.method, Some(Method::Connect(_))));
    }

    #[test]
    fn unknown_top_level_fields_beside_a_method_are_ignored() {
        let cmd = Command::decode(br#"{"id":1,"ping":{},"trace_id":"x","future":{"a":1}}"#).unwrap();
        assert!(matches!(cmd.method, Some(Method::Ping)));
        let cmd = Command::decode(br#"{"id":2,"future":{},"teleport":{}}"#).unwrap();
        assert!(matches!(cmd.method, Some(Method::Unknown(m)) if m == "future"), "only unknown keys: 104");
    }

    #[test]
    fn malformed_commands_are_refused() {
        let cases: &[&[u8]] = &[
            b"",
            b"[]",
            b"{",
            b"null",
            br#"{"id":"one","ping":{}}"#,
            br#"{"id":-1,"ping":{}}"#,
            br#"{"id":1,"ping":{},"rpc":{}}"#,
            br#"{"id":1,"subscribe":{}}"#,
            br#"{"id":1,"publish":{"channel":"c"}}"#,
            br#"{"id":1,"id":2}"#,
        ];
        for case in cases {
            assert!(Command::decode(case).is_err(), "{}", String::from_utf8_lossy(case));
        }
    }

    #[test]
    fn frames_split_into_non_empty_lines() {
        let mut rest = Bytes::from_static(b"{\"id\":1,\"ping\":{}}\n\n{}\r\n  \n");
        let mut lines = Vec::new();
        while let Some(line) = next_line(&mut rest) {
            lines.push(line);
        }
        assert_eq!(lines, [&b"{\"id\":1,\"ping\":{}}"[..], &b"{}"[..]]);
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = Command::decode(&bytes);
        }

        #[test]
        fn decoding_json_shaped_text_never_panics(text in r#"\{("[a-z_]{1,12}":(\{\}|[0-9]{1,3}|"[a-z]*"|\[\]|null),?){0,4}\}"#) {
            let _ = Command::decode(text.as_bytes());
        }
    }
}
