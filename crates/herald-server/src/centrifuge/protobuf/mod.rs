//! The Centrifuge protocol v2 in Protobuf (the `centrifuge-protobuf`
//! WebSocket subprotocol): frames of varint-length-delimited `Command`s
//! in, of `Reply`s out.
//!
//! The session speaks JSON inside; this module is its edge:
//! - commands are decoded ([`decode_frame`]) into the session's command
//!   type, so every command is handled by the same code in both encodings;
//! - publications, joins and leaves are encoded once per publication by
//!   [`ProtobufEncoder`], straight from the hub's values, and shared by
//!   every Protobuf subscriber (the fanout path never sees JSON);
//! - the session's own replies and pushes, one connection's at a time, are
//!   turned from the JSON the session wrote into a `Reply` ([`transcode`]).
//!
//! Payloads (`data`, `conn_info`, `chan_info`) travel as the bytes of a
//! JSON value, in both directions: data a Protobuf client publishes must
//! be JSON, so that every JSON subscriber of the channel can read it. A
//! frame that is not Protobuf, a truncated varint, or data that is not
//! JSON ends the session as a bad request.
//!
//! `wire` is generated from `proto/centrifuge.proto` (see
//! `tests/protobuf_schema.rs`).

// As generated: formatting it would make it differ from what the schema
// generates.
#[rustfmt::skip]
#[allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub, dead_code)]
pub(crate) mod wire;

use bytes::{Buf, Bytes, BytesMut};
use prost::Message as _;
use serde::Deserialize;
use serde_json::value::RawValue;

use herald_core::{Frame, PushEncoder};
use herald_engine::{ChannelName, ClientInfo, PresenceEvent, Publication};

use super::command::{self, Command, Method};

/// The WebSocket subprotocol that selects this encoding.
pub(crate) const SUBPROTOCOL: &str = "centrifuge-protobuf";

/// A ping: an empty `Reply`, length-delimited.
pub(crate) const PING: &[u8] = &[0];

/// Deserializes a payload field of the JSON the session wrote (any JSON
/// value) as the bytes of that value.
pub(crate) fn json_bytes<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
    let raw = <&RawValue>::deserialize(deserializer)?;
    Ok(Bytes::copy_from_slice(raw.get().as_bytes()))
}

/// `reply`, length-delimited.
fn delimited(reply: &wire::Reply) -> Bytes {
    let mut out = BytesMut::with_capacity(reply.encoded_len().saturating_add(10));
    // Encoding into a growable buffer cannot run out of room.
    let _ = reply.encode_length_delimited(&mut out);
    out.freeze()
}

/// A JSON reply or push of the session's, as a length-delimited `Reply`.
pub(crate) fn transcode(json: &[u8]) -> Result<Bytes, serde_json::Error> {
    let reply: wire::Reply = serde_json::from_slice(json)?;
    Ok(delimited(&reply))
}

fn client_info(info: &ClientInfo) -> wire::ClientInfo {
    wire::ClientInfo {
        user: info.user.as_str().to_owned(),
        client: info.client.as_str().to_owned(),
        conn_info: info.conn_info.clone().unwrap_or_default(),
        chan_info: info.chan_info.clone().unwrap_or_default(),
    }
}

fn publication(publication: &Publication) -> wire::Publication {
    wire::Publication {
        data: publication.data.clone(),
        info: publication.info.as_ref().map(client_info),
        offset: publication.offset.get(),
        tags: publication.tags.clone(),
        delta: false,
    }
}

fn push(channel: &ChannelName, push: wire::Push) -> Bytes {
    let push = wire::Push { channel: channel.as_str().to_owned(), ..push };
    delimited(&wire::Reply { push: Some(push), ..Default::default() })
}

/// Encodes publications, joins and leaves for every Protobuf connection
/// of a node.
#[derive(Debug, Default)]
pub(crate) struct ProtobufEncoder;

impl PushEncoder for ProtobufEncoder {
    fn protocol(&self) -> &'static str {
        "centrifuge"
    }

    fn encode_publication(&self, channel: &ChannelName, published: &Publication) -> Frame {
        Frame::Binary(push(channel, wire::Push { r#pub: Some(publication(published)), ..Default::default() }))
    }

    /// Data is bytes in Protobuf: a full publication is as to anyone, a
    /// delta goes in its place with `delta` set.
    fn encode_delta_publication(&self, channel: &ChannelName, published: &Publication, delta: Option<&[u8]>) -> Frame {
        let mut publication = publication(published);
        if let Some(delta) = delta {
            publication.data = Bytes::copy_from_slice(delta);
            publication.delta = true;
        }
        Frame::Binary(push(channel, wire::Push { r#pub: Some(publication), ..Default::default() }))
    }

    fn encode_presence(&self, channel: &ChannelName, event: &PresenceEvent, _to_own_user: bool) -> Option<Frame> {
        let info = Some(client_info(event.info()));
        Some(Frame::Binary(match event.is_join() {
            true => push(channel, wire::Push { join: Some(wire::Join { info }), ..Default::default() }),
            false => push(channel, wire::Push { leave: Some(wire::Leave { info }), ..Default::default() }),
        }))
    }
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Malformed {
    #[error("not a length-delimited Protobuf command: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("{0} is not JSON")]
    NotJson(&'static str),
}

/// Decodes the next command off the front of `rest`: `None` once it is
/// empty.
pub(crate) fn next_command(rest: &mut Bytes) -> Option<Result<Command, Malformed>> {
    if !rest.has_remaining() {
        return None;
    }
    Some(wire::Command::decode_length_delimited(&mut *rest).map_err(Malformed::from).and_then(command))
}

/// A payload: `None` when empty, else the JSON it must be.
fn json(bytes: Bytes, what: &'static str) -> Result<Option<Box<RawValue>>, Malformed> {
    if bytes.is_empty() {
        return Ok(None);
    }
    serde_json::from_slice(&bytes).map(Some).map_err(|_| Malformed::NotJson(what))
}

/// The session's command for a decoded one. A command names one request;
/// should it name several, the first (in field order) is taken.
fn command(wire: wire::Command) -> Result<Command, Malformed> {
    let wire::Command {
        id,
        connect,
        subscribe,
        unsubscribe,
        publish,
        presence,
        presence_stats,
        history,
        ping,
        send,
        rpc,
        refresh,
        sub_refresh,
    } = wire;
    let method = if let Some(r) = connect {
        let mut subs = std::collections::HashMap::new();
        for (channel, sub) in r.subs {
            let position = command::RecoverRequest { recover: sub.recover, epoch: sub.epoch, offset: sub.offset };
            subs.insert(channel, position);
        }
        let data = json(r.data, "connect data")?;
        Method::Connect(command::ConnectRequest { token: r.token, name: r.name, version: r.version, subs, data })
    } else if let Some(r) = subscribe {
        Method::Subscribe(command::SubscribeRequest {
            channel: r.channel,
            token: r.token,
            position: command::RecoverRequest { recover: r.recover, epoch: r.epoch, offset: r.offset },
            positioned: r.positioned,
            recoverable: r.recoverable,
            join_leave: r.join_leave,
            delta: r.delta,
            data: json(r.data, "subscribe data")?,
            flag: r.flag,
        })
    } else if let Some(r) = unsubscribe {
        Method::Unsubscribe(command::ChannelRequest { channel: r.channel })
    } else if let Some(r) = publish {
        let data = json(r.data, "publication data")?.ok_or(Malformed::NotJson("empty publication data"))?;
        Method::Publish(command::PublishRequest { channel: r.channel, data })
    } else if let Some(r) = presence {
        Method::Presence(command::ChannelRequest { channel: r.channel })
    } else if let Some(r) = presence_stats {
        Method::PresenceStats(command::ChannelRequest { channel: r.channel })
    } else if let Some(r) = history {
        let since = r.since.map(|since| command::StreamPositionRequest { offset: since.offset, epoch: since.epoch });
        Method::History(command::HistoryRequest {
            channel: r.channel,
            limit: r.limit.into(),
            since,
            reverse: r.reverse,
        })
    } else if ping.is_some() {
        Method::Ping
    } else if let Some(r) = send {
        Method::Send(command::SendRequest { data: json(r.data, "send data")? })
    } else if let Some(r) = rpc {
        Method::Rpc(command::RpcRequest { method: r.method, data: json(r.data, "rpc data")? })
    } else if let Some(r) = refresh {
        Method::Refresh(command::RefreshRequest { token: r.token })
    } else if let Some(r) = sub_refresh {
        Method::SubRefresh(command::SubRefreshRequest { channel: r.channel, token: r.token })
    } else if id > 0 {
        // Only fields this server does not know: a method it does not have.
        Method::Unknown("(unknown Protobuf request)".to_owned())
    } else {
        // The empty command: the client's pong.
        return Ok(Command { id, method: None });
    };
    Ok(Command { id, method: Some(method) })
}

/// Whether a request's body is Protobuf (`Content-Type:
/// application/octet-stream`, as centrifuge-js's Protobuf build posts).
pub(crate) fn posted(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/octet-stream"))
}

/// An emulation request's session, node and commands, from its body.
pub(crate) fn emulation_request(body: &[u8]) -> Result<(String, String, Bytes), prost::DecodeError> {
    let request = wire::EmulationRequest::decode(body)?;
    Ok((request.session, request.node, request.data))
}

#[cfg(test)]
mod tests;
