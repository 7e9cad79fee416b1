//! The generator's own WebSocket client (RFC 6455), made to cost little per
//! message: the generator shares the machine with the server it measures,
//! so every microsecond it spends is one the server cannot use.
//!
//! - One read buffer per connection, reused: a frame is handed out as a
//!   slice of it, with no copy, allocation or zeroing per message.
//! - Pings are answered and pongs ignored on the way; a fragmented message
//!   is joined in a second buffer (servers rarely fragment).
//! - Client frames are masked as the RFC requires; server frames are not.
//!
//! It sends text messages, and binary ones for the Centrifuge protocol's
//! Protobuf encoding.

use std::io;

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The first read buffer; it grows to fit a larger frame.
const INITIAL_BUFFER: usize = 4 * 1024;
/// The largest message accepted, and the largest handshake response.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;
const MAX_HANDSHAKE: usize = 16 * 1024;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// What went wrong on a WebSocket.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The server closed the connection, with its code and reason if it gave them.
    #[error("closed by the server: {0}")]
    Closed(String),
    /// The server broke the protocol (or refused the upgrade).
    #[error("{0}")]
    Protocol(String),
}

fn protocol(what: impl Into<String>) -> WsError {
    WsError::Protocol(what.into())
}

/// A client WebSocket over one TCP stream.
#[derive(Debug)]
pub struct WsClient {
    stream: TcpStream,
    frames: Frames,
    /// Frames about to be written.
    out: Vec<u8>,
}

/// The reading side of a client WebSocket, without its socket: the bytes
/// read and not yet consumed, cut into messages. [`WsClient`] fills it from
/// its async stream; a caller holding the plain socket
/// ([`WsClient::into_std`]) fills it with [`room`](Self::room) and
/// [`filled`](Self::filled).
#[derive(Debug)]
pub struct Frames {
    /// Bytes read and not yet consumed are `buf[start..end]`.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// A fragmented message being joined.
    fragments: Vec<u8>,
    /// Whether `fragments` holds the start of a message.
    in_message: bool,
    /// How many unconsumed bytes the next message needs at least, once
    /// [`next`](Self::next) found too few.
    needed: usize,
}

/// Where a message lies: in the read buffer or the fragment buffer.
#[derive(Debug, Clone, Copy)]
pub enum Place {
    Buffer(usize, usize),
    Fragments,
}

impl WsClient {
    /// Upgrades `stream` to a WebSocket at `url` (`ws://host:port/path?query`),
    /// sending `cookie` as the `Cookie` header when given.
    pub async fn handshake(stream: TcpStream, url: &str, cookie: Option<&str>) -> Result<Self, WsError> {
        Self::handshake_with(stream, url, cookie, None).await
    }

    /// [`handshake`](Self::handshake), asking for `subprotocol` too.
    pub async fn handshake_with(
        mut stream: TcpStream,
        url: &str,
        cookie: Option<&str>,
        subprotocol: Option<&str>,
    ) -> Result<Self, WsError> {
        let rest = url.strip_prefix("ws://").ok_or_else(|| protocol(format!("{url}: not a ws:// URL")))?;
        let (host, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
        let cookie = cookie.map(|value| format!("Cookie: {value}\r\n")).unwrap_or_default();
        let subprotocol = subprotocol.map(|name| format!("Sec-WebSocket-Protocol: {name}\r\n")).unwrap_or_default();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{cookie}{subprotocol}\r\n"
        );
        stream.write_all(request.as_bytes()).await?;

        let mut buf = vec![0; MAX_HANDSHAKE];
        let mut end = 0;
        let head_len = loop {
            if let Some(at) = memchr::memmem::find(&buf[..end], b"\r\n\r\n") {
                break at + 4;
            }
            if end == buf.len() {
                return Err(protocol("the upgrade response is longer than 16 KiB"));
            }
            let n = stream.read(&mut buf[end..]).await?;
            if n == 0 {
                return Err(protocol("the server closed the connection during the upgrade"));
            }
            end += n;
        };
        let head = std::str::from_utf8(&buf[..head_len]).map_err(|_| protocol("the upgrade response is not text"))?;
        check_upgrade(head, &key)?;
        buf.truncate(INITIAL_BUFFER.max(end));
        let frames = Frames { buf, start: head_len, end, fragments: Vec::new(), in_message: false, needed: 1 };
        Ok(Self { stream, frames, out: Vec::new() })
    }

    /// Sends one text message.
    pub async fn send_text(&mut self, text: &str) -> Result<(), WsError> {
        self.send_message(false, text.as_bytes()).await
    }

    /// Sends one binary message.
    pub async fn send_binary(&mut self, bytes: &[u8]) -> Result<(), WsError> {
        self.send_message(true, bytes).await
    }

    /// Sends one message: text, or with `binary` binary.
    pub async fn send_message(&mut self, binary: bool, payload: &[u8]) -> Result<(), WsError> {
        self.out.clear();
        encode_message(&mut self.out, binary, payload);
        self.stream.write_all(&self.out).await?;
        Ok(())
    }

    /// The next message, text or binary, as bytes; valid until the next call.
    pub async fn next_bytes(&mut self) -> Result<&[u8], WsError> {
        let place = self.next_message().await?;
        Ok(self.frames.message(place))
    }

    /// The next text message; pings are answered on the way. The text is
    /// valid until the next call.
    pub async fn next_text(&mut self) -> Result<&str, WsError> {
        let place = self.next_message().await?;
        std::str::from_utf8(self.frames.message(place)).map_err(|_| protocol("a text message is not valid UTF-8"))
    }

    async fn next_message(&mut self) -> Result<Place, WsError> {
        loop {
            self.out.clear();
            let next = self.frames.next(&mut self.out)?;
            if !self.out.is_empty() {
                self.stream.write_all(&self.out).await?;
            }
            if let Some(place) = next {
                return Ok(place);
            }
            let n = self.stream.read(self.frames.room()).await?;
            if n == 0 {
                return Err(WsError::Closed("the connection ended".into()));
            }
            self.frames.filled(n);
        }
    }

    /// The plain socket (still non-blocking) and what was read from it but
    /// not yet handed out, for a caller that reads on a thread of its own.
    pub fn into_std(self) -> io::Result<(std::net::TcpStream, Frames)> {
        Ok((self.stream.into_std()?, self.frames))
    }
}

impl Frames {
    /// The next whole message among the bytes read, or `None` if more are
    /// needed. A ping on the way appends its pong, a masked client frame,
    /// to `pongs`, for the caller to send.
    pub fn next(&mut self, pongs: &mut Vec<u8>) -> Result<Option<Place>, WsError> {
        loop {
            let Some(header) = parse_header(&self.buf[self.start..self.end])? else {
                self.needed = self.end - self.start + 1;
                return Ok(None);
            };
            if header.payload_len > MAX_MESSAGE {
                return Err(protocol(format!("a {} byte frame is over the 64 MiB limit", header.payload_len)));
            }
            let frame_len = header.len + header.payload_len;
            if self.end - self.start < frame_len {
                self.needed = frame_len;
                return Ok(None);
            }
            let from = self.start + header.len;
            let to = from + header.payload_len;
            self.start = to;
            if let Some(mask) = header.mask {
                unmask(&mut self.buf[from..to], mask);
            }
            match header.opcode {
                OP_TEXT | OP_BINARY if header.fin && !self.in_message => return Ok(Some(Place::Buffer(from, to))),
                OP_TEXT | OP_BINARY if !self.in_message => {
                    self.fragments.clear();
                    self.fragments.extend_from_slice(&self.buf[from..to]);
                    self.in_message = true;
                }
                OP_CONTINUATION if self.in_message => {
                    if self.fragments.len() + (to - from) > MAX_MESSAGE {
                        return Err(protocol("a fragmented message is over the 64 MiB limit"));
                    }
                    self.fragments.extend_from_slice(&self.buf[from..to]);
                    if header.fin {
                        self.in_message = false;
                        return Ok(Some(Place::Fragments));
                    }
                }
                OP_PING => encode_frame(pongs, OP_PONG, &self.buf[from..to]),
                OP_PONG => {}
                OP_CLOSE => {
                    let payload = &self.buf[from..to];
                    let why = match payload {
                        [hi, lo, reason @ ..] => {
                            format!("{} {}", u16::from_be_bytes([*hi, *lo]), String::from_utf8_lossy(reason))
                        }
                        _ => "no code".to_owned(),
                    };
                    return Err(WsError::Closed(why));
                }
                other => return Err(protocol(format!("unexpected frame (opcode {other:#x})"))),
            }
        }
    }

    /// The message at `place`, as [`next`](Self::next) gave it; valid until
    /// the buffer is next filled.
    pub fn message(&self, place: Place) -> &[u8] {
        match place {
            Place::Buffer(from, to) => &self.buf[from..to],
            Place::Fragments => &self.fragments,
        }
    }

    /// Free space to read into after the unconsumed bytes, enough at least
    /// for the message [`next`](Self::next) last found incomplete: those
    /// bytes move to the front of the buffer first, and it grows if need be.
    pub fn room(&mut self) -> &mut [u8] {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < self.needed {
            self.buf.resize(self.needed.next_power_of_two(), 0);
        }
        &mut self.buf[self.end..]
    }

    /// Counts `n` bytes read into [`room`](Self::room).
    pub fn filled(&mut self, n: usize) {
        self.end += n;
    }

    /// Takes `shared` as the buffer to read into, if no bytes wait in this
    /// connection's own (the usual case, a message arriving whole) and
    /// `shared` is no smaller. A reader of many connections then fills one
    /// buffer that stays in its cache, not a cold one per connection: the
    /// kernel's copy into a cold buffer costs more than the parse. Swaps
    /// the two, so `shared` holds the connection's own buffer until
    /// [`give_back`](Self::give_back). True if it did.
    pub fn borrow(&mut self, shared: &mut Vec<u8>) -> bool {
        if self.start != self.end || shared.len() < self.buf.len() {
            return false;
        }
        std::mem::swap(&mut self.buf, shared);
        (self.start, self.end) = (0, 0);
        true
    }

    /// Ends a [`borrow`](Self::borrow): the bytes not consumed yet (the
    /// start of a message that is still arriving) move to the connection's
    /// own buffer, which `shared` holds, and `shared` gets its buffer back.
    pub fn give_back(&mut self, shared: &mut Vec<u8>) {
        let rest = self.end - self.start;
        if shared.len() < rest {
            shared.resize(rest.next_power_of_two(), 0);
        }
        shared[..rest].copy_from_slice(&self.buf[self.start..self.end]);
        std::mem::swap(&mut self.buf, shared);
        (self.start, self.end) = (0, rest);
    }
}

/// Checks the status line and the server's proof that it read our key.
fn check_upgrade(head: &str, key: &str) -> Result<(), WsError> {
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if status.split(' ').nth(1) != Some("101") {
        return Err(protocol(format!("the server refused the upgrade: {status}")));
    }
    let accept = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("sec-websocket-accept"))
        .map(|(_, value)| value.trim());
    let expected = tungstenite::handshake::derive_accept_key(key.as_bytes());
    if accept != Some(expected.as_str()) {
        return Err(protocol("the server's Sec-WebSocket-Accept does not match the key"));
    }
    Ok(())
}

/// A frame header: what it says and how long it is.
#[derive(Debug, PartialEq, Eq)]
struct Header {
    fin: bool,
    opcode: u8,
    mask: Option<[u8; 4]>,
    payload_len: usize,
    /// Bytes of the header itself.
    len: usize,
}

/// The header at the start of `bytes`, or `None` if it is not all there.
fn parse_header(bytes: &[u8]) -> Result<Option<Header>, WsError> {
    let [first, second, rest @ ..] = bytes else { return Ok(None) };
    if first & 0x70 != 0 {
        return Err(protocol("a frame has reserved bits set (no extension was negotiated)"));
    }
    let (payload_len, mut len) = match second & 0x7F {
        126 => match rest {
            [a, b, ..] => (u16::from_be_bytes([*a, *b]) as usize, 4),
            _ => return Ok(None),
        },
        127 => match rest.get(..8) {
            Some(bytes) => {
                let long = u64::from_be_bytes(bytes.try_into().expect("eight bytes"));
                (usize::try_from(long).unwrap_or(usize::MAX), 10)
            }
            None => return Ok(None),
        },
        short => (short as usize, 2),
    };
    let mask = if second & 0x80 != 0 {
        let Some(key) = bytes.get(len..len + 4) else { return Ok(None) };
        len += 4;
        Some(key.try_into().expect("four bytes"))
    } else {
        None
    };
    Ok(Some(Header { fin: first & 0x80 != 0, opcode: first & 0x0F, mask, payload_len, len }))
}

/// Appends one masked client message: a text frame, or with `binary` a
/// binary one, as [`WsClient::send_text`] and `send_binary` write it.
pub fn encode_message(out: &mut Vec<u8>, binary: bool, payload: &[u8]) {
    encode_frame(out, if binary { OP_BINARY } else { OP_TEXT }, payload);
}

/// Appends one masked client frame.
fn encode_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    match payload.len() {
        len @ 0..=125 => out.push(0x80 | len as u8),
        len @ 126..=0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    let mask: [u8; 4] = rand::random();
    out.extend_from_slice(&mask);
    let at = out.len();
    out.extend_from_slice(payload);
    unmask(&mut out[at..], mask);
}

/// Masking and unmasking are the same XOR.
fn unmask(bytes: &mut [u8], mask: [u8; 4]) {
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte ^= mask[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_of_each_length_form_are_read_once_complete() {
        assert_eq!(parse_header(&[0x81]).unwrap(), None);
        let short = parse_header(&[0x81, 5, b'h']).unwrap().unwrap();
        assert_eq!((short.fin, short.opcode, short.payload_len, short.len), (true, OP_TEXT, 5, 2));
        assert_eq!(parse_header(&[0x01, 126, 1]).unwrap(), None);
        let medium = parse_header(&[0x01, 126, 1, 0]).unwrap().unwrap();
        assert_eq!((medium.fin, medium.payload_len, medium.len), (false, 256, 4));
        let long = parse_header(&[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]).unwrap().unwrap();
        assert_eq!((long.opcode, long.payload_len, long.len), (OP_BINARY, 65536, 10));
        let masked = parse_header(&[0x81, 0x83, 1, 2, 3, 4]).unwrap().unwrap();
        assert_eq!((masked.mask, masked.len), (Some([1, 2, 3, 4]), 6));
        assert!(parse_header(&[0xC1, 0]).is_err(), "a compressed frame without the extension is refused");
    }

    #[test]
    fn messages_fed_a_byte_at_a_time_come_out_once_whole_and_pings_leave_their_pong() {
        let mut stream = vec![0x89, 2, b'h', b'i', 0x81, 5];
        stream.extend_from_slice(b"hello");
        stream.extend_from_slice(&[0x01, 2, b'a', b'b', 0x80, 1, b'c']);
        let mut frames =
            Frames { buf: vec![0; 2], start: 0, end: 0, fragments: Vec::new(), in_message: false, needed: 1 };
        let (mut messages, mut pongs) = (Vec::new(), Vec::new());
        for byte in stream {
            frames.room()[0] = byte;
            frames.filled(1);
            while let Some(place) = frames.next(&mut pongs).unwrap() {
                messages.push(String::from_utf8(frames.message(place).to_vec()).unwrap());
            }
        }
        assert_eq!(messages, ["hello", "abc"], "a fragmented message is joined");
        let pong = parse_header(&pongs).unwrap().unwrap();
        assert_eq!((pong.opcode, pong.payload_len, pongs.len()), (OP_PONG, 2, pong.len + 2));
        let mut payload = pongs[pong.len..].to_vec();
        unmask(&mut payload, pong.mask.expect("a client's pong is masked"));
        assert_eq!(payload, b"hi");
    }

    #[test]
    fn reads_into_a_shared_buffer_keep_a_message_split_across_them_and_leave_each_buffer_its_owner() {
        let mut stream = Vec::new();
        encode_frame(&mut stream, OP_TEXT, b"first");
        encode_frame(&mut stream, OP_TEXT, b"second, split between two reads");
        let split = stream.len() - 10;
        let mut frames =
            Frames { buf: vec![0; 4], start: 0, end: 0, fragments: Vec::new(), in_message: false, needed: 1 };
        let mut shared = vec![0; 64];
        let mut messages = Vec::new();
        for chunk in [&stream[..split], &stream[split..]] {
            let lent = frames.borrow(&mut shared);
            let room = frames.room();
            room[..chunk.len()].copy_from_slice(chunk);
            frames.filled(chunk.len());
            while let Some(place) = frames.next(&mut Vec::new()).unwrap() {
                messages.push(String::from_utf8(frames.message(place).to_vec()).unwrap());
            }
            if lent {
                frames.give_back(&mut shared);
            }
            assert_eq!(shared.len(), 64, "the shared buffer comes back after every read");
        }
        assert_eq!(messages, ["first", "second, split between two reads"]);
        assert!(!frames.borrow(&mut vec![0; 2]), "a buffer smaller than the connection's own is not taken");
    }

    #[test]
    fn a_client_frame_is_masked_and_unmasks_to_its_payload() {
        for len in [0, 3, 125, 126, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut frame = Vec::new();
            encode_frame(&mut frame, OP_TEXT, &payload);
            let header = parse_header(&frame).unwrap().unwrap();
            assert_eq!((header.fin, header.opcode, header.payload_len), (true, OP_TEXT, len));
            let mut body = frame[header.len..].to_vec();
            assert_eq!(body.len(), len);
            unmask(&mut body, header.mask.expect("client frames are masked"));
            assert_eq!(body, payload);
        }
    }

    #[test]
    fn an_upgrade_is_accepted_only_with_101_and_the_matching_key_proof() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let good = "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\
                    Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        assert!(check_upgrade(good, key).is_ok());
        let wrong = good.replace("s3pP", "AAAA");
        assert!(check_upgrade(&wrong, key).is_err());
        assert!(check_upgrade("HTTP/1.1 404 Not Found\r\n\r\n", key).is_err());
    }
}
