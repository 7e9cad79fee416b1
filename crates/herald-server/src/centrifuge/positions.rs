//! Where a uni-directional SSE client is in each of its channels, carried
//! as the events' ids, so that `EventSource`'s own reconnect recovers what
//! it missed: the browser sends the last id it saw as `Last-Event-ID`, and
//! the node turns it into the connect request's recovery positions.
//!
//! The stream reads each push it sends: the connect push gives each
//! positioned channel's epoch and offset, every publication moves its
//! channel's offset, an unsubscribe forgets the channel. An event that
//! moved a position carries the positions of every channel, as compact
//! JSON: `{"feed:scores":["<epoch>",42]}`. Only uni-directional SSE streams
//! pay for this (a parse of each push they are sent), and only while they
//! have a position to follow: positions come only with the connect push (a
//! server-side subscribe pushed later names none, so such a channel is not
//! named in ids and is not recovered by `EventSource`), and a stream left
//! with none stops reading its pushes.

use std::collections::BTreeMap;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize, Serializer};

/// The most channels an id names (and that a `Last-Event-ID` may name).
const MAX_CHANNELS: usize = 1024;

/// A client's positions: for each channel, the epoch and the last offset
/// seen. A sorted list, not a map: a connection has a few channels, and a
/// map's first node alone is larger than a list of ten.
#[derive(Debug, Default)]
pub(crate) struct Positions {
    /// Sorted by channel name, the order ids name them in.
    channels: Vec<Followed>,
    /// The connect push has been read: no position is added after it.
    connected: bool,
}

#[derive(Debug)]
struct Followed {
    channel: Box<str>,
    epoch: Box<str>,
    offset: u64,
}

/// The positions as an id names them: `{"<channel>":["<epoch>",<offset>],…}`.
struct Named<'a>(&'a [Followed]);

impl Serialize for Named<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|followed| (&*followed.channel, (&*followed.epoch, followed.offset))))
    }
}

#[derive(Deserialize)]
struct Push {
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    connect: Option<Connect>,
    #[serde(rename = "pub", default)]
    publication: Option<Offset>,
    #[serde(default)]
    unsubscribe: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct Connect {
    #[serde(default)]
    subs: BTreeMap<String, Subscribed>,
}

#[derive(Deserialize)]
struct Subscribed {
    #[serde(default)]
    epoch: String,
    #[serde(default)]
    offset: u64,
}

#[derive(Deserialize)]
struct Offset {
    #[serde(default)]
    offset: u64,
}

impl Positions {
    /// Takes note of `push`; the event id to send with it when it moved a
    /// position.
    pub(crate) fn observe(&mut self, push: &[u8]) -> Option<String> {
        let push: Push = serde_json::from_slice(push).ok()?;
        if let Some(connect) = push.connect {
            self.connected = true;
            for (channel, sub) in connect.subs.into_iter().filter(|(_, sub)| !sub.epoch.is_empty()) {
                let (epoch, offset) = (sub.epoch.into_boxed_str(), sub.offset);
                match self.find(&channel) {
                    Ok(at) => {
                        if let Some(followed) = self.channels.get_mut(at) {
                            (followed.epoch, followed.offset) = (epoch, offset);
                        }
                    }
                    Err(at) if self.channels.len() < MAX_CHANNELS => {
                        self.channels.insert(at, Followed { channel: channel.into_boxed_str(), epoch, offset });
                    }
                    Err(_) => {}
                }
            }
            self.channels.shrink_to_fit();
            return self.id();
        }
        let channel = push.channel?;
        if push.unsubscribe.is_some() {
            if let Ok(at) = self.find(&channel) {
                self.channels.remove(at);
            }
            return None;
        }
        let offset = push.publication?.offset;
        let at = self.find(&channel).ok()?;
        let followed = self.channels.get_mut(at)?;
        if offset <= followed.offset {
            return None;
        }
        followed.offset = offset;
        self.id()
    }

    /// Where `channel` is in the list, or where it would go.
    fn find(&self, channel: &str) -> Result<usize, usize> {
        self.channels.binary_search_by(|followed| (*followed.channel).cmp(channel))
    }

    fn id(&self) -> Option<String> {
        if self.channels.is_empty() {
            return None;
        }
        serde_json::to_string(&Named(&self.channels)).ok()
    }

    /// Connected, with no position left to follow: no push can move one
    /// any more (positions come only with the connect push), so the stream
    /// need not read its pushes.
    pub(crate) fn follows_nothing(&self) -> bool {
        self.connected && self.channels.is_empty()
    }

    /// The positions a `Last-Event-ID` names (none when it is not one of
    /// ours).
    pub(crate) fn from_id(id: &str) -> Vec<(String, String, u64)> {
        let Ok(named) = serde_json::from_str::<BTreeMap<String, (String, u64)>>(id) else { return Vec::new() };
        named.into_iter().take(MAX_CHANNELS).map(|(channel, (epoch, offset))| (channel, epoch, offset)).collect()
    }
}

/// The connect request `request` (JSON), asking to recover each channel
/// `last_event_id` names that it does not name itself. A request that is
/// not a JSON object is left as it is (the session refuses it).
pub(crate) fn with_recovery(request: &[u8], last_event_id: &str) -> Option<Vec<u8>> {
    let named = Positions::from_id(last_event_id);
    if named.is_empty() {
        return None;
    }
    let text = if request.iter().all(u8::is_ascii_whitespace) { &b"{}"[..] } else { request };
    let mut request: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(text).ok()?;
    let subs = request.entry("subs").or_insert_with(|| serde_json::Value::Object(Default::default()));
    let subs = subs.as_object_mut()?;
    for (channel, epoch, offset) in named {
        subs.entry(channel).or_insert_with(|| serde_json::json!({"recover": true, "epoch": epoch, "offset": offset}));
    }
    serde_json::to_vec(&request).ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_connect_push_and_each_publication_move_the_id_and_an_unsubscribe_forgets_the_channel() {
        let mut positions = Positions::default();
        let connect = json!({"connect": {"client": "c", "subs": {"a": {"epoch": "e1", "offset": 4}, "b": {}}}});
        assert_eq!(positions.observe(connect.to_string().as_bytes()).as_deref(), Some(r#"{"a":["e1",4]}"#));
        let publication = json!({"channel": "a", "pub": {"data": {"offset": 99}, "offset": 5}});
        assert_eq!(positions.observe(publication.to_string().as_bytes()).as_deref(), Some(r#"{"a":["e1",5]}"#));
        assert_eq!(positions.observe(publication.to_string().as_bytes()), None, "an offset seen already moves nothing");
        assert_eq!(positions.observe(br#"{"channel":"b","pub":{"data":1}}"#), None, "b has no position");
        assert_eq!(positions.observe(b"{}"), None, "a ping");
        assert!(!positions.follows_nothing(), "b is gone, a is followed");
        assert_eq!(positions.observe(br#"{"channel":"a","unsubscribe":{"code":2000}}"#), None);
        assert_eq!(positions.id(), None);
        assert!(positions.follows_nothing(), "nothing left to follow, and nothing can be added");
    }

    #[test]
    fn an_id_names_every_followed_channel_in_name_order_and_a_publication_moves_only_its_own() {
        let mut positions = Positions::default();
        let connect = json!({"connect": {"subs": {
            "feed:b": {"epoch": "eb", "offset": 7},
            "feed:a": {"epoch": "ea", "offset": 3},
            "feed:c": {"epoch": "ec"},
        }}});
        let id = positions.observe(connect.to_string().as_bytes());
        assert_eq!(id.as_deref(), Some(r#"{"feed:a":["ea",3],"feed:b":["eb",7],"feed:c":["ec",0]}"#));
        let publication = json!({"channel": "feed:b", "pub": {"offset": 8}});
        let id = positions.observe(publication.to_string().as_bytes());
        assert_eq!(id.as_deref(), Some(r#"{"feed:a":["ea",3],"feed:b":["eb",8],"feed:c":["ec",0]}"#));
        assert_eq!(positions.observe(br#"{"channel":"feed:a","unsubscribe":{}}"#), None);
        let id = positions.observe(json!({"channel": "feed:c", "pub": {"offset": 1}}).to_string().as_bytes());
        assert_eq!(id.as_deref(), Some(r#"{"feed:b":["eb",8],"feed:c":["ec",1]}"#));
        let named = Positions::from_id(id.as_deref().unwrap_or_default());
        assert_eq!(
            named,
            [("feed:b".into(), "eb".into(), 8), ("feed:c".into(), "ec".into(), 1)],
            "read back as written"
        );
    }

    #[test]
    fn a_connect_that_names_no_position_leaves_nothing_to_follow() {
        let mut positions = Positions::default();
        assert!(!positions.follows_nothing(), "not before the connect push");
        assert_eq!(positions.observe(b"{}"), None);
        assert!(!positions.follows_nothing(), "a push before the connect's changes nothing");
        let connect = json!({"connect": {"client": "c", "subs": {"news": {}}}});
        assert_eq!(positions.observe(connect.to_string().as_bytes()), None);
        assert!(positions.follows_nothing());
    }

    #[test]
    fn a_last_event_id_adds_recovery_for_the_channels_the_request_does_not_name() {
        let id = r#"{"a":["e1",5],"b":["e2",7]}"#;
        let request = json!({"token": "t", "subs": {"b": {"recover": true, "epoch": "e2", "offset": 9}}});
        let merged: serde_json::Value =
            serde_json::from_slice(&with_recovery(request.to_string().as_bytes(), id).unwrap()).unwrap();
        assert_eq!(merged["subs"]["a"], json!({"recover": true, "epoch": "e1", "offset": 5}));
        assert_eq!(merged["subs"]["b"]["offset"], 9, "the request's own position wins");
        assert_eq!(merged["token"], "t");
        assert!(with_recovery(b"", id).is_some(), "an empty request is an empty object");
        assert_eq!(with_recovery(b"{}", "not ours"), None);
        assert_eq!(with_recovery(b"[1]", id), None);
    }
}
