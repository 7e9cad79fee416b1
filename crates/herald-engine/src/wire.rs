//! How publications and presence events travel through a backplane (Redis
//! pub/sub and history entries, NATS subjects).
//!
//! A message (and a history entry) is text lines followed by the raw
//! payload, so the payload is never re-encoded:
//!
//! ```text
//! <offset>\n<epoch>\n<kind>\n<meta JSON>\n<data bytes…>
//! ```
//!
//! `kind` is `p` (publication), `j` (join) or `l` (leave); `J` and `L` are
//! a join that is its user's arrival and a leave that is its user's
//! departure. The publish
//! script prepends offset and epoch, so what is broadcast is exactly what
//! history keeps.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::ids::{ChannelName, ClientId, Epoch, Offset};
use crate::message::{ClientInfo, EngineEvent, PresenceEvent, Publication};

/// Why a message from the backplane could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed message from the backplane: {0}")]
pub struct WireError(pub &'static str);

#[derive(Debug, Default, Serialize, Deserialize)]
struct Meta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    info: Option<ClientInfo>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    tags: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exclude: Option<ClientId>,
}

/// The part of a publication message the node writes: kind, meta, data.
pub fn publication_body(publication: &Publication) -> Vec<u8> {
    let meta =
        Meta { info: publication.info.clone(), tags: publication.tags.clone(), exclude: publication.exclude.clone() };
    body(b'p', &meta, &publication.data)
}

/// A whole publication message, its offset and epoch lines included (for
/// a backplane that broadcasts what the node encodes, as is).
pub fn publication_message(publication: &Publication) -> Vec<u8> {
    let mut message = format!("{}\n{}\n", publication.offset.get(), publication.epoch.as_str()).into_bytes();
    message.extend_from_slice(&publication_body(publication));
    message
}

/// A join or leave, with the offset and epoch lines a publish would add.
pub fn presence_message(event: &PresenceEvent) -> Vec<u8> {
    let meta = Meta { info: Some(event.info().clone()), ..Meta::default() };
    let kind = match (event.is_join(), event.user_changed()) {
        (true, false) => b'j',
        (true, true) => b'J',
        (false, false) => b'l',
        (false, true) => b'L',
    };
    let mut out = b"0\n\n".to_vec();
    out.extend(body(kind, &meta, b""));
    out
}

fn body(kind: u8, meta: &Meta, data: &[u8]) -> Vec<u8> {
    let meta = serde_json::to_vec(meta).expect("meta serializes");
    let mut out = Vec::with_capacity(meta.len() + data.len() + 4);
    out.push(kind);
    out.push(b'\n');
    out.extend_from_slice(&meta);
    out.push(b'\n');
    out.extend_from_slice(data);
    out
}

/// A decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Its offset in the channel's stream (0 without history).
    pub offset: Offset,
    /// The epoch of that stream (empty without history).
    pub epoch: Epoch,
    /// What it carries.
    pub kind: Kind,
}

/// What a message carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A publication.
    Publication(Publication),
    /// A join or a leave.
    Presence(PresenceEvent),
}

impl Message {
    /// The engine event this message is, in `channel`.
    pub fn into_event(self, channel: ChannelName) -> EngineEvent {
        match self.kind {
            Kind::Publication(publication) => {
                EngineEvent::Publication { channel, publication: std::sync::Arc::new(publication) }
            }
            Kind::Presence(event) => EngineEvent::Presence { channel, event },
        }
    }
}

fn line(rest: &mut Bytes, what: &'static str) -> Result<Bytes, WireError> {
    let at = rest.iter().position(|b| *b == b'\n').ok_or(WireError(what))?;
    let head = rest.split_to(at);
    let _ = rest.split_to(1);
    Ok(head)
}

/// Whether `message` is a publication (its kind line is `p`), read
/// without decoding it: a presence event, or anything else, is not.
pub fn is_publication(message: &[u8]) -> bool {
    let mut lines = message.splitn(4, |byte| *byte == b'\n');
    lines.nth(2) == Some(b"p".as_slice()) && lines.next().is_some()
}

/// Decodes a message as broadcast or as kept in history.
pub fn decode(message: Bytes) -> Result<Message, WireError> {
    let mut rest = message;
    let offset = line(&mut rest, "offset")?;
    let offset: u64 = std::str::from_utf8(&offset).ok().and_then(|s| s.parse().ok()).ok_or(WireError("offset"))?;
    let epoch = line(&mut rest, "epoch")?;
    let epoch = Epoch::new(std::str::from_utf8(&epoch).map_err(|_| WireError("epoch"))?);
    let kind = line(&mut rest, "kind")?;
    let meta = line(&mut rest, "meta")?;
    let meta: Meta = serde_json::from_slice(&meta).map_err(|_| WireError("meta"))?;
    let kind = match &kind[..] {
        b"p" => Kind::Publication(Publication {
            data: rest,
            info: meta.info,
            offset: Offset::new(offset),
            epoch: epoch.clone(),
            tags: meta.tags,
            exclude: meta.exclude,
        }),
        b"j" | b"J" => Kind::Presence(PresenceEvent::Join {
            info: meta.info.ok_or(WireError("join without info"))?,
            user_arrived: kind[..] == *b"J",
        }),
        b"l" | b"L" => Kind::Presence(PresenceEvent::Leave {
            info: meta.info.ok_or(WireError("leave without info"))?,
            user_departed: kind[..] == *b"L",
        }),
        _ => return Err(WireError("kind")),
    };
    Ok(Message { offset: Offset::new(offset), epoch, kind })
}

#[cfg(test)]
mod tests {
    use crate::ids::UserId;

    use super::*;

    fn info() -> ClientInfo {
        ClientInfo {
            user: UserId::new("42").unwrap(),
            client: ClientId::new("c1"),
            conn_info: Some(Bytes::from_static(br#"{"n":1}"#)),
            chan_info: None,
        }
    }

    #[test]
    fn publications_round_trip_with_the_offset_and_epoch_the_script_adds() {
        let publication = Publication {
            data: Bytes::from_static(b"{\"text\":\"line\\none\"}\nraw tail"),
            info: Some(info()),
            offset: Offset::ZERO,
            epoch: Epoch::default(),
            tags: BTreeMap::from([("k".into(), "v".into())]),
            exclude: Some(ClientId::new("c9")),
        };
        let mut message = b"7\nabc\n".to_vec();
        message.extend(publication_body(&publication));
        let decoded = decode(Bytes::from(message)).unwrap();
        assert_eq!(decoded.offset, Offset::new(7));
        assert_eq!(decoded.epoch, Epoch::new("abc"));
        let expected = Publication { offset: Offset::new(7), epoch: Epoch::new("abc"), ..publication };
        assert_eq!(decoded.kind, Kind::Publication(expected));
    }

    #[test]
    fn publications_are_told_from_presence_events_and_other_text_without_decoding() {
        let publication = Publication::from_data(Bytes::from_static(b"{}"));
        assert!(is_publication(&publication_message(&publication)));
        let join = PresenceEvent::Join { info: info(), user_arrived: true };
        assert!(!is_publication(&presence_message(&join)));
        for other in [&b"{\"op\":\"disconnect\"}"[..], b"", b"1\ne\np", b"1\ne\npx\n{}\n"] {
            assert!(!is_publication(other), "{:?}", String::from_utf8_lossy(other));
        }
    }

    #[test]
    fn joins_and_leaves_round_trip() {
        for user_changed in [false, true] {
            let join = PresenceEvent::Join { info: info(), user_arrived: user_changed };
            assert_eq!(decode(Bytes::from(presence_message(&join))).unwrap().kind, Kind::Presence(join));
            let leave = PresenceEvent::Leave { info: info(), user_departed: user_changed };
            assert_eq!(decode(Bytes::from(presence_message(&leave))).unwrap().kind, Kind::Presence(leave));
        }
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        for bad in [&b""[..], b"x\n", b"1\ne\n", b"1\ne\nq\n{}\n", b"1\ne\np\nnot json\n", b"1\ne\nj\n{}\n"] {
            assert!(decode(Bytes::copy_from_slice(bad)).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
