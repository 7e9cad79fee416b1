//! Each proxied event's request body and the result a backend may give,
//! with Centrifugo's field names. Every request names the connection
//! (`client`), how it is connected (`transport`: `websocket`, `http_stream`,
//! `sse`, `uni_…`; `protocol`: `json` or `protobuf`; `encoding`) and, except
//! for connect, its `user` (and the connection's `meta`, for a proxy that
//! asks for it). Payloads are JSON in both protocols (`data`; the `b64data`
//! forms of Centrifugo's binary encoding are not used).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The fields every request carries, and after the connect the
/// connection's `meta`, if it has one.
#[derive(Debug, Serialize)]
pub(crate) struct Client<'a> {
    pub(crate) client: &'a str,
    pub(crate) transport: &'static str,
    pub(crate) protocol: &'static str,
    pub(crate) encoding: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) meta: Option<&'a RawValue>,
}

#[cfg(test)]
impl<'a> Client<'a> {
    /// A Centrifuge JSON client over WebSocket.
    pub(crate) fn websocket(client: &'a str) -> Self {
        Self { client, transport: "websocket", protocol: "json", encoding: "json", meta: None }
    }
}

/// `connect`: a client connected without a token.
#[derive(Debug, Serialize)]
pub(crate) struct Connect<'a> {
    #[serde(flatten)]
    pub(crate) client: Client<'a>,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub(crate) name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub(crate) version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) data: Option<&'a RawValue>,
}

/// Who the backend says a connecting client is.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ConnectResult {
    /// The user id; empty for an anonymous connection.
    #[serde(default)]
    pub(crate) user: String,
    /// Unix seconds when the connection expires; 0 for never.
    #[serde(default)]
    pub(crate) expire_at: i64,
    /// Connection info, shown to others in presence and publications.
    #[serde(default)]
    pub(crate) info: Option<Box<RawValue>>,
    /// Data for the client, in its connect reply.
    #[serde(default)]
    pub(crate) data: Option<Box<RawValue>>,
    /// Channels the connection is subscribed to by the server.
    #[serde(default)]
    pub(crate) channels: Vec<String>,
    /// The same, each with its channel info and data.
    #[serde(default)]
    pub(crate) subs: BTreeMap<String, ConnectSub>,
    /// What the backend is to be told of the connection in every proxied
    /// request after this one; never shown to clients.
    #[serde(default)]
    pub(crate) meta: Option<Box<RawValue>>,
}

/// A server-side subscription a connect result asks for.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ConnectSub {
    #[serde(default)]
    pub(crate) info: Option<Box<RawValue>>,
    #[serde(default)]
    pub(crate) data: Option<Box<RawValue>>,
}

/// `refresh` (and `sub_refresh`, with `channel`): the connection (or
/// subscription) is about to expire.
#[derive(Debug, Serialize)]
pub(crate) struct Refresh<'a> {
    #[serde(flatten)]
    pub(crate) client: Client<'a>,
    pub(crate) user: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) channel: Option<&'a str>,
}

/// Whether to extend a connection or subscription, and until when.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RefreshResult {
    /// End it now.
    #[serde(default)]
    pub(crate) expired: bool,
    /// Unix seconds of the new expiry; 0 for never.
    #[serde(default)]
    pub(crate) expire_at: i64,
    /// A `refresh`'s new connection info, replacing the connection's (a
    /// `sub_refresh`'s is not read).
    #[serde(default)]
    pub(crate) info: Option<serde_json::Value>,
    /// A `refresh`'s new connection `meta`, replacing the connection's (a
    /// `sub_refresh`'s is not read).
    #[serde(default)]
    pub(crate) meta: Option<Box<RawValue>>,
}

/// `subscribe`: a client subscribes without a subscription token.
#[derive(Debug, Serialize)]
pub(crate) struct Subscribe<'a> {
    #[serde(flatten)]
    pub(crate) client: Client<'a>,
    pub(crate) user: &'a str,
    pub(crate) channel: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) data: Option<&'a RawValue>,
}

/// What a granted subscription carries.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct SubscribeResult {
    /// Channel info, shown to others in presence and publications.
    #[serde(default)]
    pub(crate) info: Option<Box<RawValue>>,
    /// Data for the client, in its subscribe reply.
    #[serde(default)]
    pub(crate) data: Option<Box<RawValue>>,
    /// Unix seconds when the subscription expires; 0 for never.
    #[serde(default)]
    pub(crate) expire_at: i64,
}

/// `publish`: a client publishes into a channel.
#[derive(Debug, Serialize)]
pub(crate) struct Publish<'a> {
    #[serde(flatten)]
    pub(crate) client: Client<'a>,
    pub(crate) user: &'a str,
    pub(crate) channel: &'a str,
    pub(crate) data: &'a RawValue,
}

/// How a publication goes out.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct PublishResult {
    /// Published instead of what the client sent.
    #[serde(default)]
    pub(crate) data: Option<Box<RawValue>>,
    /// Not kept in the channel's history.
    #[serde(default)]
    pub(crate) skip_history: bool,
}

/// `rpc`: a client calls a method.
#[derive(Debug, Serialize)]
pub(crate) struct Rpc<'a> {
    #[serde(flatten)]
    pub(crate) client: Client<'a>,
    pub(crate) user: &'a str,
    pub(crate) method: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) data: Option<&'a RawValue>,
}

/// An RPC's answer.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RpcResult {
    #[serde(default)]
    pub(crate) data: Option<Box<RawValue>>,
}

/// `send`: a client's message, which expects no answer.
#[derive(Debug, Serialize)]
pub(crate) struct Send<'a> {
    #[serde(flatten)]
    pub(crate) client: Client<'a>,
    pub(crate) user: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) data: Option<&'a RawValue>,
}

/// Unix seconds from a backend, as an expiry: `None` for 0 or less.
pub(crate) fn expiry(expire_at: i64) -> Option<u64> {
    u64::try_from(expire_at).ok().filter(|at| *at > 0)
}

/// A request body.
pub(crate) fn body(request: &impl Serialize) -> Vec<u8> {
    crate::json::to_vec(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_centrifugos_field_names() {
        let data = RawValue::from_string(r#"{"x":1}"#.to_owned()).unwrap();
        let publish = Publish { client: Client::websocket("c1"), user: "42", channel: "chat:a", data: &data };
        let json: serde_json::Value = serde_json::from_slice(&body(&publish)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"client": "c1", "transport": "websocket", "protocol": "json", "encoding": "json",
                               "user": "42", "channel": "chat:a", "data": {"x": 1}})
        );
        let connect = Connect { client: Client::websocket("c2"), name: "js", version: "", data: None };
        let json: serde_json::Value = serde_json::from_slice(&body(&connect)).unwrap();
        assert_eq!(json["name"], "js");
        assert!(json.get("user").is_none() && json.get("version").is_none() && json.get("data").is_none());
        assert!(json.get("meta").is_none(), "no meta where the connection has none");
        let meta = RawValue::from_string(r#"{"tenant":"t1"}"#.to_owned()).unwrap();
        let client = Client { meta: Some(&meta), ..Client::websocket("c3") };
        let refresh = Refresh { client, user: "42", channel: None };
        let json: serde_json::Value = serde_json::from_slice(&body(&refresh)).unwrap();
        assert_eq!(json["meta"], serde_json::json!({"tenant": "t1"}));
    }

    #[test]
    fn results_read_what_centrifugo_backends_send_and_ignore_the_rest() {
        let result: ConnectResult = serde_json::from_str(
            r#"{"user":"56","expire_at":1700000000,"info":{"name":"Ada"},"channels":["news"],
                "subs":{"personal:56":{"data":{"hi":true}}},"meta":{"x":1},"b64data":"AA=="}"#,
        )
        .unwrap();
        assert_eq!((result.user.as_str(), expiry(result.expire_at)), ("56", Some(1_700_000_000)));
        assert_eq!(result.info.unwrap().get(), r#"{"name":"Ada"}"#);
        assert_eq!(result.subs["personal:56"].data.as_ref().unwrap().get(), r#"{"hi":true}"#);
        assert_eq!(result.meta.unwrap().get(), r#"{"x":1}"#);
        assert_eq!(expiry(0), None);
        assert_eq!(expiry(-5), None);
    }
}
