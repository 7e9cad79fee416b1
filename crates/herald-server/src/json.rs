//! JSON as Herald writes it, for every front-end and the server API.
//!
//! Payloads and info claims are JSON kept as the bytes they arrived as:
//! compacted once when accepted ([`compact`]), never parsed back, and
//! spliced into what is written around them. So replies are written here
//! directly, field by field, instead of through a JSON tree.
//!
//! What is written is sent as text, which must be UTF-8: [`text`] checks a
//! frame once, where it is made, so the frames fanout shares are not
//! checked again per subscriber on their way out.
//!
//! The shapes of a publication, a client's info, a history read and a
//! presence list are the same in the Centrifuge client protocol and the
//! server API (both follow Centrifugo's), so they are written here once.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use herald_core::Text;
use herald_engine::{ClientInfo, HistoryResult, Publication};

/// Removes whitespace between JSON tokens of an already valid document,
/// keeping strings (and their escapes) untouched, so a payload can sit on
/// one line of a newline-separated frame.
pub(crate) fn compact(raw: &str) -> Bytes {
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

/// Serializes one of Herald's own reply types. They hold strings, numbers
/// and string-keyed maps, which always serialize; were one ever to fail (a
/// bug), the error is logged and `null` written instead of a panic.
pub(crate) fn to_vec<T: serde::Serialize + ?Sized>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|error| {
        tracing::error!(%error, "a reply did not serialize (a bug): null written instead");
        b"null".to_vec()
    })
}

/// [`to_vec`], as text.
pub(crate) fn to_text<T: serde::Serialize + ?Sized>(value: &T) -> Text {
    Text::from(serde_json::to_string(value).unwrap_or_else(|error| {
        tracing::error!(%error, "a reply did not serialize (a bug): null written instead");
        "null".to_owned()
    }))
}

/// A frame written here, as text. Everything Herald writes is UTF-8, and
/// so is every payload and info it accepts (JSON); only bytes another
/// program put into the backplane (a publication's data in a Redis or NATS
/// record) could not be. Such bytes are sent as U+FFFD, logged, rather
/// than as a text frame no client could read or no frame at all (which
/// would leave a gap in the channel's stream).
pub(crate) fn text(frame: Bytes) -> Text {
    Text::new(frame.clone()).unwrap_or_else(|_| {
        tracing::warn!(
            bytes = frame.len(),
            "a frame holds bytes that are not UTF-8 (publication data or info another program wrote into \
             the backplane?); sent with U+FFFD in their place"
        );
        Text::from(String::from_utf8_lossy(&frame).into_owned())
    })
}

/// Writes `s` as a JSON string, escaped as serde_json escapes it.
pub(crate) fn put_str(out: &mut BytesMut, s: &str) {
    out.put_u8(b'"');
    let mut start = 0;
    for (at, byte) in s.bytes().enumerate() {
        let escape: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.put_slice(s.get(start..at).unwrap_or_default().as_bytes());
        if escape.is_empty() {
            out.put_slice(format!("\\u{byte:04x}").as_bytes());
        } else {
            out.put_slice(escape);
        }
        start = at.saturating_add(1);
    }
    out.put_slice(s.get(start..).unwrap_or_default().as_bytes());
    out.put_u8(b'"');
}

/// Writes a JSON object field by field.
#[derive(Debug)]
pub(crate) struct Object<'a> {
    out: &'a mut BytesMut,
    empty: bool,
}

impl<'a> Object<'a> {
    /// Opens an object at the end of `out`.
    pub(crate) fn begin(out: &'a mut BytesMut) -> Self {
        out.put_u8(b'{');
        Self { out, empty: true }
    }

    /// Starts the field `name`; its value is written next into the buffer
    /// this returns.
    pub(crate) fn key(&mut self, name: &str) -> &mut BytesMut {
        if !std::mem::take(&mut self.empty) {
            self.out.put_u8(b',');
        }
        put_str(self.out, name);
        self.out.put_u8(b':');
        self.out
    }

    /// `"name":<raw JSON>`.
    pub(crate) fn raw(&mut self, name: &str, raw: &[u8]) -> &mut Self {
        self.key(name).put_slice(raw);
        self
    }

    /// `"name":"value"`.
    pub(crate) fn str(&mut self, name: &str, value: &str) -> &mut Self {
        put_str(self.key(name), value);
        self
    }

    /// `"name":<number>`.
    pub(crate) fn u64(&mut self, name: &str, value: u64) -> &mut Self {
        self.key(name).put_slice(value.to_string().as_bytes());
        self
    }

    /// `"name":true` or `false`.
    pub(crate) fn bool(&mut self, name: &str, value: bool) -> &mut Self {
        self.key(name).put_slice(if value { b"true" } else { b"false" });
        self
    }

    /// Closes the object.
    pub(crate) fn end(self) {
        self.out.put_u8(b'}');
    }
}

/// Writes a JSON array, one item per `write` call.
pub(crate) fn put_array<T>(out: &mut BytesMut, items: &[T], mut write: impl FnMut(&mut BytesMut, &T)) {
    out.put_u8(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        write(out, item);
    }
    out.put_u8(b']');
}

/// How a publication's `data` is written.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Data<'a> {
    /// As the JSON it is.
    Raw,
    /// As a string holding its JSON text: what a subscriber that takes
    /// fossil deltas is sent (centrifuge-js reads it so).
    Text,
    /// As a string holding this fossil delta of it, with `"delta":true`.
    Delta(&'a str),
}

/// A `Publication` object, its `data` written as `data` says.
pub(crate) fn put_publication_as(out: &mut BytesMut, publication: &Publication, data: Data<'_>) {
    let mut object = Object::begin(out);
    match data {
        Data::Raw => drop(object.raw("data", &publication.data)),
        // Publication data is JSON, which is UTF-8.
        Data::Text => drop(object.str("data", &String::from_utf8_lossy(&publication.data))),
        Data::Delta(delta) => drop(object.str("data", delta).bool("delta", true)),
    }
    if let Some(info) = &publication.info {
        put_client_info(object.key("info"), info);
    }
    if publication.offset.get() > 0 {
        object.u64("offset", publication.offset.get());
    }
    if !publication.tags.is_empty() {
        let tags = object.key("tags");
        let mut map = Object::begin(tags);
        for (name, value) in &publication.tags {
            map.str(name, value);
        }
        map.end();
    }
    object.end();
}

/// A JSON array of publications.
pub(crate) fn put_publications(out: &mut BytesMut, publications: &[Arc<Publication>]) {
    put_publications_as(out, publications, Data::Raw);
}

/// A JSON array of publications, their data written as `data` says.
pub(crate) fn put_publications_as(out: &mut BytesMut, publications: &[Arc<Publication>], data: Data<'_>) {
    put_array(out, publications, |out, publication| put_publication_as(out, publication, data));
}

/// A `ClientInfo` object: `{"user":…,"client":…,"conn_info":…,"chan_info":…}`.
pub(crate) fn put_client_info(out: &mut BytesMut, info: &ClientInfo) {
    let mut object = Object::begin(out);
    object.str("user", info.user.as_str()).str("client", info.client.as_str());
    if let Some(conn_info) = &info.conn_info {
        object.raw("conn_info", conn_info);
    }
    if let Some(chan_info) = &info.chan_info {
        object.raw("chan_info", chan_info);
    }
    object.end();
}

/// A history read: `{"epoch":…,"offset":…,"publications":[…]}`.
pub(crate) fn put_history(out: &mut BytesMut, history: &HistoryResult) {
    let mut object = Object::begin(out);
    object.str("epoch", history.position.epoch.as_str()).u64("offset", history.position.offset.get());
    put_publications(object.key("publications"), &history.publications);
    object.end();
}

/// A presence list: `{"presence":{"<client>":{…ClientInfo}}}`.
pub(crate) fn put_presence(out: &mut BytesMut, present: &[ClientInfo]) {
    let mut object = Object::begin(out);
    let mut clients = Object::begin(object.key("presence"));
    for info in present {
        put_client_info(clients.key(info.client.as_str()), info);
    }
    clients.end();
    object.end();
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use herald_engine::{ClientId, Epoch, Offset, StreamPosition, UserId};

    use super::*;

    fn written(write: impl FnOnce(&mut BytesMut)) -> serde_json::Value {
        let mut out = BytesMut::new();
        write(&mut out);
        serde_json::from_slice(&out).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)))
    }

    #[test]
    fn a_frame_is_text_as_it_is_and_bytes_that_are_not_utf8_become_replacement_characters() {
        let frame = Bytes::from_static("{\"data\":\"café\"}".as_bytes());
        let taken = text(frame.clone());
        assert_eq!(taken.as_bytes().as_ptr(), frame.as_ptr(), "UTF-8 is taken as it is, not copied");
        let foreign = text(Bytes::from_static(b"{\"data\":\"caf\xff\"}"));
        assert_eq!(foreign, Text::from("{\"data\":\"caf\u{fffd}\"}"));
    }

    fn info() -> ClientInfo {
        ClientInfo {
            user: UserId::new("4\"2").unwrap(),
            client: ClientId::new("c1"),
            conn_info: Some(Bytes::from_static(br#"{"n":1}"#)),
            chan_info: None,
        }
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        for s in ["plain", "quote \" and \\ back", "lines\n\r\t", "\u{1}\u{8}\u{c}\u{1f}", "ünï©ode ✓", ""] {
            let mut out = BytesMut::new();
            put_str(&mut out, s);
            assert_eq!(&out[..], serde_json::to_vec(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn histories_and_presence_lists_have_the_shapes_clients_read() {
        let mut publication = Publication::from_data(Bytes::from_static(br#"{"text":"hi"}"#));
        publication.offset = Offset::new(7);
        publication.info = Some(info());
        publication.tags = BTreeMap::from([("k".to_owned(), "v".to_owned())]);
        let history = HistoryResult {
            position: StreamPosition { offset: Offset::new(7), epoch: Epoch::new("e1") },
            publications: vec![Arc::new(publication)],
        };
        assert_eq!(
            written(|out| put_history(out, &history)),
            serde_json::json!({"epoch": "e1", "offset": 7, "publications": [{
                "data": {"text": "hi"},
                "info": {"user": "4\"2", "client": "c1", "conn_info": {"n": 1}},
                "offset": 7,
                "tags": {"k": "v"}
            }]})
        );
        assert_eq!(
            written(|out| put_presence(out, &[info()])),
            serde_json::json!({"presence": {"c1": {"user": "4\"2", "client": "c1", "conn_info": {"n": 1}}}})
        );
        assert_eq!(written(|out| put_presence(out, &[])), serde_json::json!({"presence": {}}));
    }

    #[test]
    fn compacting_keeps_strings_and_drops_token_whitespace() {
        let cases = [
            ("{\n  \"a\": [1, 2],\n  \"b\": \"x y\\\" \\n z\"\n}", "{\"a\":[1,2],\"b\":\"x y\\\" \\n z\"}"),
            ("\"already\"", "\"already\""),
            ("[ \"\\\\\" , 1 ]", "[\"\\\\\",1]"),
        ];
        for (raw, compacted) in cases {
            assert_eq!(compact(raw), compacted.as_bytes(), "{raw}");
            let a: serde_json::Value = serde_json::from_str(raw).unwrap();
            let b: serde_json::Value = serde_json::from_slice(&compact(raw)).unwrap();
            assert_eq!(a, b);
        }
    }

    proptest::proptest! {
        #[test]
        fn compacting_any_json_keeps_its_value(value in arbitrary_json()) {
            let pretty = serde_json::to_string_pretty(&value).unwrap();
            let compacted = compact(&pretty);
            proptest::prop_assert!(!compacted.contains(&b'\n'));
            let back: serde_json::Value = serde_json::from_slice(&compacted).unwrap();
            proptest::prop_assert_eq!(back, value);
        }

        #[test]
        fn any_string_written_reads_back_as_itself(s in ".{0,24}") {
            let mut out = BytesMut::new();
            put_str(&mut out, &s);
            let back: String = serde_json::from_slice(&out).unwrap();
            proptest::prop_assert_eq!(back, s);
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
