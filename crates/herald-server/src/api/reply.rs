//! What the API answers, typed, and written as JSON field by field:
//! publications and presence infos keep their payloads as the bytes they
//! are, so nothing is encoded, parsed back and encoded again.

use bytes::{BufMut, Bytes, BytesMut};
use herald_engine::{ClientInfo, HistoryResult, NodeInfo, PresenceStats, StreamPosition};

use super::ApiError;
use crate::json::{self, Object};

/// The result of one method.
#[derive(Debug)]
pub(crate) enum Reply {
    /// `{}`: the method did what it was asked.
    Done,
    /// Where a publication landed: `{"offset","epoch"}`, or `{}` without history.
    Published(StreamPosition),
    /// One outcome per channel of a broadcast, in order.
    Broadcast(Vec<Result<StreamPosition, ApiError>>),
    /// Channels with their subscriber counts.
    Channels(herald_core::hub::ClusterChannels),
    /// The live nodes of the cluster, and the engine's name.
    Info { nodes: Vec<NodeInfo>, engine: &'static str },
    /// A history read.
    History(HistoryResult),
    /// Who is present.
    Presence(Vec<ClientInfo>),
    /// How many are present.
    PresenceStats(PresenceStats),
}

/// A whole response body.
#[derive(Debug)]
pub(crate) enum Response {
    /// `{"result": …}`.
    Result(Reply),
    /// `{"replies": [{"<method>": …} | {"error": …}, …]}`, in order.
    Batch(Vec<(&'static str, Result<Reply, ApiError>)>),
}

impl Response {
    /// The response as JSON.
    pub(crate) fn to_json(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(128);
        let mut body = Object::begin(&mut out);
        match self {
            Response::Result(reply) => reply.write(body.key("result")),
            Response::Batch(replies) => json::put_array(body.key("replies"), replies, |out, (method, outcome)| {
                let mut entry = Object::begin(out);
                match outcome {
                    Ok(reply) => reply.write(entry.key(method)),
                    Err(error) => error.write(entry.key("error")),
                }
                entry.end();
            }),
        }
        body.end();
        out.freeze()
    }
}

impl Reply {
    fn write(&self, out: &mut BytesMut) {
        match self {
            Reply::Done => out.put_slice(b"{}"),
            Reply::Published(position) => put_position(out, position),
            Reply::Broadcast(outcomes) => {
                let mut body = Object::begin(out);
                json::put_array(body.key("responses"), outcomes, |out, outcome| {
                    let mut response = Object::begin(out);
                    match outcome {
                        Ok(position) => put_position(response.key("result"), position),
                        Err(error) => error.write(response.key("error")),
                    }
                    response.end();
                });
                body.end();
            }
            Reply::Channels(listed) => {
                let mut body = Object::begin(out);
                let mut map = Object::begin(body.key("channels"));
                for (name, clients) in &listed.channels {
                    let mut channel = Object::begin(map.key(name.as_str()));
                    channel.u64("num_clients", count(*clients));
                    channel.end();
                }
                map.end();
                if listed.incomplete {
                    body.bool("incomplete", true);
                }
                body.end();
            }
            Reply::Info { nodes, engine } => {
                let mut body = Object::begin(out);
                json::put_array(body.key("nodes"), nodes, put_node);
                body.str("engine", engine);
                body.end();
            }
            Reply::History(history) => json::put_history(out, history),
            Reply::Presence(present) => json::put_presence(out, present),
            Reply::PresenceStats(stats) => {
                let mut body = Object::begin(out);
                body.u64("num_clients", count(stats.num_clients)).u64("num_users", count(stats.num_users));
                body.end();
            }
        }
    }
}

impl ApiError {
    /// The `{"code","message"}` object.
    pub(crate) fn write(&self, out: &mut BytesMut) {
        let mut error = Object::begin(out);
        error.u64("code", u64::from(self.code())).str("message", &self.to_string());
        error.end();
    }
}

fn put_position(out: &mut BytesMut, position: &StreamPosition) {
    let mut body = Object::begin(out);
    if position.offset.get() > 0 {
        body.u64("offset", position.offset.get()).str("epoch", position.epoch.as_str());
    }
    body.end();
}

/// A node's entry: its counts, when they were taken (`updated_at`, unix
/// ms) and how old they are now (`age_ms`: the asked node's are fresh,
/// others' up to `NODE_INFO_EVERY` (5 s) old), with the publications it accepted and
/// delivered since it started (for rates).
fn put_node(out: &mut BytesMut, node: &NodeInfo) {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX));
    let name = if node.name.is_empty() { node.id.as_str() } else { node.name.as_str() };
    let mut body = Object::begin(out);
    body.str("uid", node.id.as_str())
        .str("name", name)
        .u64("updated_at", node.updated_at_ms)
        .u64("age_ms", now_ms.saturating_sub(node.updated_at_ms))
        .str("version", &node.version)
        .u64("num_clients", count(node.num_clients))
        .u64("num_users", count(node.num_users))
        .u64("num_channels", count(node.num_channels))
        .u64("num_subs", count(node.num_subscriptions))
        .u64("uptime", node.uptime)
        .u64("num_publications", node.num_publications)
        .u64("num_deliveries", node.num_deliveries);
    body.end();
}

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use herald_core::HubError;
    use herald_engine::{ChannelName, Epoch, Offset};
    use serde_json::json;

    use super::*;

    fn parsed(response: Response) -> serde_json::Value {
        serde_json::from_slice(&response.to_json()).unwrap()
    }

    #[test]
    fn replies_and_batches_have_the_centrifugo_shapes() {
        let position = StreamPosition { offset: Offset::new(3), epoch: Epoch::new("e") };
        assert_eq!(parsed(Response::Result(Reply::Done)), json!({"result": {}}));
        assert_eq!(
            parsed(Response::Result(Reply::Published(position.clone()))),
            json!({"result": {"offset": 3, "epoch": "e"}})
        );
        assert_eq!(parsed(Response::Result(Reply::Published(StreamPosition::default()))), json!({"result": {}}));
        let broadcast = Reply::Broadcast(vec![Ok(position), Err(ApiError::Hub(HubError::UnknownChannel))]);
        assert_eq!(
            parsed(Response::Result(broadcast)),
            json!({"result": {"responses": [
                {"result": {"offset": 3, "epoch": "e"}},
                {"error": {"code": 102, "message": "unknown channel"}}
            ]}})
        );
        let listed = vec![(ChannelName::new("chat:1").unwrap(), 2)];
        let channels = Reply::Channels(herald_core::hub::ClusterChannels { channels: listed, incomplete: false });
        assert_eq!(parsed(Response::Result(channels)), json!({"result": {"channels": {"chat:1": {"num_clients": 2}}}}));
        let stats = Reply::PresenceStats(PresenceStats { num_clients: 3, num_users: 2 });
        let batch = Response::Batch(vec![
            ("presence_stats", Ok(stats)),
            ("publish", Err(ApiError::MethodNotFound("x".into()))),
        ]);
        assert_eq!(
            parsed(batch),
            json!({"replies": [
                {"presence_stats": {"num_clients": 3, "num_users": 2}},
                {"error": {"code": 104, "message": "method not found: x"}}
            ]})
        );
    }
}
