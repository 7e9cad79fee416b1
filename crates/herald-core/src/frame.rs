//! A message encoded for a connection's protocol, as its outbox holds it.
//!
//! Text is checked to be UTF-8 once, where a frame is made, and carries
//! that in its type: a WebSocket text frame must be UTF-8, and a frame
//! fanout shares among thousands of subscribers is then not checked again
//! for each of them on its way out.

use bytes::{BufMut, Bytes, BytesMut};

/// A message encoded for a connection's protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Text (JSON protocols).
    Text(Text),
    /// Bytes (Protobuf).
    Binary(Bytes),
}

impl Frame {
    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Its bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Frame::Text(text) => text.as_bytes(),
            Frame::Binary(bytes) => bytes,
        }
    }
}

impl From<Text> for Frame {
    fn from(text: Text) -> Self {
        Frame::Text(text)
    }
}

/// Bytes known to be UTF-8, shared as cheaply as [`Bytes`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Text(Bytes);

/// The bytes given as text are not UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("text that is not UTF-8")]
pub struct NotUtf8;

impl Text {
    /// `bytes` as text, once checked to be UTF-8.
    pub fn new(bytes: Bytes) -> Result<Self, NotUtf8> {
        match std::str::from_utf8(&bytes) {
            Ok(_) => Ok(Self(bytes)),
            Err(_) => Err(NotUtf8),
        }
    }

    /// A constant text, without a copy.
    pub const fn from_static(text: &'static str) -> Self {
        Self(Bytes::from_static(text.as_bytes()))
    }

    /// Its bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The texts joined by `separator` into one, `None` when there are
    /// none. A lone text is returned as it is (still shared with whoever
    /// else holds it); only several are copied.
    pub fn join(texts: impl IntoIterator<Item = Text>, separator: &str) -> Option<Text> {
        let mut texts = texts.into_iter();
        let first = texts.next()?;
        let Some(second) = texts.next() else { return Some(first) };
        let mut joined = BytesMut::from(first.as_bytes());
        for text in std::iter::once(second).chain(texts) {
            joined.put_slice(separator.as_bytes());
            joined.put_slice(text.as_bytes());
        }
        // UTF-8 texts joined by UTF-8 are UTF-8.
        Some(Text(joined.freeze()))
    }
}

impl From<String> for Text {
    fn from(text: String) -> Self {
        Self(Bytes::from(text))
    }
}

impl From<&'static str> for Text {
    fn from(text: &'static str) -> Self {
        Self::from_static(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_that_are_not_utf8_are_not_text() {
        assert_eq!(Text::new(Bytes::from_static(b"caf\xc3\xa9")), Ok(Text::from("café")));
        for bad in [&b"\xff"[..], b"ok \xc3", b"\xed\xa0\x80", b"\xc0\xaf"] {
            assert_eq!(Text::new(Bytes::copy_from_slice(bad)), Err(NotUtf8), "{bad:?}");
        }
    }

    #[test]
    fn texts_join_with_their_separator_and_a_lone_one_is_shared_not_copied() {
        assert_eq!(Text::join(Vec::new(), "\n"), None);
        let lone = Text::from(String::from("{\"a\":1}"));
        let joined = Text::join([lone.clone()], "\n").unwrap();
        assert_eq!(joined.as_bytes().as_ptr(), lone.as_bytes().as_ptr());
        let three = Text::join(["{}".into(), "é".into(), "[]".into()], "\n").unwrap();
        assert_eq!(three, Text::from("{}\né\n[]"));
    }

    #[test]
    fn a_frame_measures_the_bytes_it_holds() {
        assert_eq!(Frame::from(Text::from("né")).len(), 3);
        assert!(Frame::Binary(Bytes::new()).is_empty());
    }
}
