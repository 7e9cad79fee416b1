//! RFC 6455 frames, as a server reads and writes them: headers parsed from
//! whatever bytes have arrived, client payloads unmasked, server frames
//! written unmasked, and the close frame's payload checked.

/// A frame's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Opcode {
    /// The rest of a fragmented message.
    Continuation,
    /// A text message (or its first fragment).
    Text,
    /// A binary message (or its first fragment).
    Binary,
    /// The closing handshake.
    Close,
    /// A ping, answered with a pong carrying its payload.
    Ping,
    /// A pong.
    Pong,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    /// Close, ping and pong: short, never fragmented, and allowed between
    /// the fragments of a message.
    pub(crate) fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// What a client did wrong, with the close code that says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Violation {
    /// Against the protocol (1002).
    Protocol(&'static str),
    /// A message larger than the server takes (1009).
    TooLarge,
    /// Text that is not UTF-8 (1007).
    NotUtf8,
    /// A message begun and not finished in time (1008).
    Unfinished,
}

impl Violation {
    /// The close code that tells the client.
    pub(crate) fn code(self) -> u16 {
        match self {
            Violation::Protocol(_) => 1002,
            Violation::TooLarge => 1009,
            Violation::NotUtf8 => 1007,
            Violation::Unfinished => 1008,
        }
    }

    /// What went wrong, for the close frame and the log.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Violation::Protocol(what) => what,
            Violation::TooLarge => "message too large",
            Violation::NotUtf8 => "text is not UTF-8",
            Violation::Unfinished => "message not finished in time",
        }
    }
}

/// A client frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// The last frame of its message.
    pub(crate) fin: bool,
    /// The frame's kind.
    pub(crate) opcode: Opcode,
    /// The key the payload is masked with.
    pub(crate) mask: [u8; 4],
    /// Payload bytes.
    pub(crate) len: usize,
    /// Header bytes, before the payload.
    pub(crate) header_len: usize,
}

/// The header at the start of `bytes`: `Ok(None)` until all of it has
/// arrived. A frame whose payload would pass `max_payload` is refused from
/// its header, before its payload is read.
pub(crate) fn parse_header(bytes: &[u8], max_payload: usize) -> Result<Option<Header>, Violation> {
    let (first, second) = match bytes {
        [first, second, ..] => (*first, *second),
        _ => return Ok(None),
    };
    if first & 0x70 != 0 {
        return Err(Violation::Protocol("reserved bits set without an extension"));
    }
    let fin = first & 0x80 != 0;
    let opcode = Opcode::from_bits(first & 0x0F).ok_or(Violation::Protocol("unknown opcode"))?;
    if second & 0x80 == 0 {
        return Err(Violation::Protocol("client frames must be masked"));
    }
    let rest = bytes.get(2..).unwrap_or_default();
    // The length, where the mask starts, and where the payload starts.
    let (len, mask_at, header_len) = match second & 0x7F {
        126 => match rest {
            [a, b, ..] => (u64::from(u16::from_be_bytes([*a, *b])), 4, 8),
            _ => return Ok(None),
        },
        127 => match rest.get(..8) {
            Some(eight) => {
                let mut be = [0u8; 8];
                be.copy_from_slice(eight);
                let len = u64::from_be_bytes(be);
                if len >> 63 != 0 {
                    return Err(Violation::Protocol("payload length with its top bit set"));
                }
                (len, 10, 14)
            }
            None => return Ok(None),
        },
        short => (u64::from(short), 2, 6),
    };
    if opcode.is_control() && (!fin || len > 125) {
        return Err(Violation::Protocol("control frames must be whole and at most 125 bytes"));
    }
    let len = usize::try_from(len).ok().filter(|len| *len <= max_payload).ok_or(Violation::TooLarge)?;
    let Some(mask) = bytes.get(mask_at..header_len) else {
        return Ok(None);
    };
    let mut key = [0u8; 4];
    key.copy_from_slice(mask);
    Ok(Some(Header { fin, opcode, mask: key, len, header_len }))
}

/// Unmasks a payload in place.
pub(crate) fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut words = payload.chunks_exact_mut(4);
    for chunk in &mut words {
        let mut four = [0u8; 4];
        four.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u32::from_ne_bytes(four) ^ word).to_ne_bytes());
    }
    for (byte, key) in words.into_remainder().iter_mut().zip(mask) {
        *byte ^= key;
    }
}

/// Appends a whole, unmasked frame (as a server sends) to `out`.
pub(crate) fn write_frame(out: &mut Vec<u8>, opcode: Opcode, payload: &[u8]) {
    let (header, header_len) = header(opcode, payload.len());
    out.extend_from_slice(header.get(..header_len).unwrap_or_default());
    out.extend_from_slice(payload);
}

/// Writes a server frame (unmasked, final) into the start of `out` and
/// returns its length, or `None` when it does not fit there.
pub(crate) fn write_frame_into(out: &mut [u8], opcode: Opcode, payload: &[u8]) -> Option<usize> {
    let (header, header_len) = header(opcode, payload.len());
    let frame = out.get_mut(..header_len.checked_add(payload.len())?)?;
    let (head, body) = frame.split_at_mut_checked(header_len)?;
    head.copy_from_slice(header.get(..header_len)?);
    body.copy_from_slice(payload);
    Some(header_len.saturating_add(payload.len()))
}

/// The header of a server frame of `payload_len` bytes, and its length.
pub(crate) fn header(opcode: Opcode, payload_len: usize) -> ([u8; 10], usize) {
    let first = 0x80 | opcode.bits();
    let mut header = [0u8; 10];
    let len = match payload_len {
        short @ 0..=125 => {
            header[..2].copy_from_slice(&[first, short as u8]);
            2
        }
        medium @ 126..=0xFFFF => {
            header[..2].copy_from_slice(&[first, 126]);
            header[2..4].copy_from_slice(&(medium as u16).to_be_bytes());
            4
        }
        long => {
            header[..2].copy_from_slice(&[first, 127]);
            header[2..10].copy_from_slice(&(long as u64).to_be_bytes());
            10
        }
    };
    (header, len)
}

/// How many bytes [`write_frame`] writes for `payload_len`.
pub(crate) fn frame_len(payload_len: usize) -> usize {
    let header = match payload_len {
        0..=125 => 2,
        126..=0xFFFF => 4,
        _ => 10,
    };
    payload_len.saturating_add(header)
}

/// The payload of a close frame with `code` and `reason` (cut at a
/// character boundary to fit a control frame).
pub(crate) fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    const MAX_REASON: usize = 123;
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    let mut payload = Vec::with_capacity(end.saturating_add(2));
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason.as_bytes().get(..end).unwrap_or_default());
    payload
}

/// The code of a client's close frame (`None` when it gave none), or why
/// the frame is invalid: a one-byte payload, a code no endpoint may send,
/// or a reason that is not UTF-8.
pub(crate) fn close_code(payload: &[u8]) -> Result<Option<u16>, Violation> {
    let (code, reason) = match payload {
        [] => return Ok(None),
        [_] => return Err(Violation::Protocol("a close frame's code must be two bytes")),
        [high, low, reason @ ..] => (u16::from_be_bytes([*high, *low]), reason),
    };
    let sendable = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
    if !sendable {
        return Err(Violation::Protocol("a close code no endpoint may send"));
    }
    std::str::from_utf8(reason).map_err(|_| Violation::NotUtf8)?;
    Ok(Some(code))
}

/// A client frame: masked with `mask`, as a client sends it (for the
/// tests of this module and of the WebSocket). Any `opcode`, valid or not.
#[cfg(test)]
pub(super) fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    // The server's frame, then the first byte, the mask bit and the mask.
    let mut out = Vec::new();
    write_frame(&mut out, Opcode::Binary, payload);
    let header = out.len() - payload.len();
    out[0] = if fin { 0x80 } else { 0 } | opcode;
    out[1] |= 0x80;
    unmask(&mut out[header..], mask);
    out.splice(header..header, mask);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_is_read_once_it_has_all_arrived_whatever_its_length_field() {
        for len in [0usize, 5, 125, 126, 300, 0xFFFF, 70_000] {
            let payload = vec![b'x'; len];
            let frame = client_frame(true, 0x1, &payload, [1, 2, 3, 4]);
            let header_len = frame.len() - len;
            for cut in 0..header_len {
                assert_eq!(parse_header(&frame[..cut], 1 << 20), Ok(None), "len {len}, {cut} bytes");
            }
            let header = parse_header(&frame, 1 << 20).unwrap().unwrap();
            assert_eq!(header, Header { fin: true, opcode: Opcode::Text, mask: [1, 2, 3, 4], len, header_len });
        }
    }

    #[test]
    fn a_payload_masked_by_the_client_unmasks_to_what_it_sent() {
        let sent = b"hello, herald: an odd length".to_vec();
        let frame = client_frame(true, 0x2, &sent, [0xA1, 0x02, 0xF3, 0x44]);
        let header = parse_header(&frame, 100).unwrap().unwrap();
        let mut payload = frame[header.header_len..].to_vec();
        unmask(&mut payload, header.mask);
        assert_eq!(payload, sent);
    }

    #[test]
    fn frames_against_the_protocol_are_refused_from_their_header() {
        let refused = |bytes: &[u8]| parse_header(bytes, 1000).unwrap_err();
        let masked_text = client_frame(true, 0x1, b"hi", [0; 4]);
        let mut reserved = masked_text.clone();
        reserved[0] |= 0x40;
        assert!(matches!(refused(&reserved), Violation::Protocol(_)));
        let mut unmasked = masked_text.clone();
        unmasked[1] &= 0x7F;
        assert!(matches!(refused(&unmasked), Violation::Protocol(_)));
        assert!(matches!(refused(&client_frame(true, 0x3, b"", [0; 4])), Violation::Protocol(_)));
        assert!(matches!(refused(&client_frame(false, 0x9, b"", [0; 4])), Violation::Protocol(_)));
        assert!(matches!(refused(&client_frame(true, 0x9, &[0; 126], [0; 4])), Violation::Protocol(_)));
        let mut top_bit = vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 1];
        top_bit.extend_from_slice(&[0; 4]);
        assert!(matches!(refused(&top_bit), Violation::Protocol(_)));
    }

    #[test]
    fn a_frame_above_the_limit_is_refused_before_its_payload_arrives() {
        let frame = client_frame(true, 0x2, &[0; 1001], [0; 4]);
        assert_eq!(parse_header(&frame[..8], 1000), Err(Violation::TooLarge));
        assert!(parse_header(&frame, 1001).unwrap().is_some());
    }

    #[test]
    fn a_frame_written_into_a_slice_is_the_frame_written_into_a_vec() {
        let mut buffer = vec![0u8; 70_100];
        for len in [0usize, 1, 125, 126, 300, 0xFFFF, 0x10000, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut expected = Vec::new();
            write_frame(&mut expected, Opcode::Text, &payload);
            let written = write_frame_into(&mut buffer, Opcode::Text, &payload);
            assert_eq!(written, Some(expected.len()), "{len}");
            assert_eq!(&buffer[..expected.len()], &expected[..], "{len}");
        }
        assert_eq!(write_frame_into(&mut [0u8; 10], Opcode::Text, b"twelve bytes"), None, "does not fit");
    }

    #[test]
    fn a_header_alone_is_the_start_of_the_whole_frame() {
        for len in [0, 1, 125, 126, 65535, 65536, 100_000] {
            let payload = vec![b'x'; len];
            let mut whole = Vec::new();
            write_frame(&mut whole, Opcode::Binary, &payload);
            let (header, header_len) = header(Opcode::Binary, len);
            assert_eq!(&header[..header_len], &whole[..whole.len() - len], "payload of {len}");
        }
    }

    #[test]
    fn server_frames_are_whole_unmasked_and_sized_as_announced() {
        for len in [0usize, 125, 126, 0xFFFF, 0x10000] {
            let mut out = Vec::new();
            write_frame(&mut out, Opcode::Text, &vec![b'a'; len]);
            assert_eq!(out.len(), frame_len(len));
            assert_eq!(out[0], 0x81);
            assert_eq!(out[1] & 0x80, 0, "not masked");
            assert!(out.ends_with(&vec![b'a'; len]));
        }
    }

    #[test]
    fn close_frames_carry_a_sendable_code_and_a_text_reason() {
        assert_eq!(close_code(&[]), Ok(None));
        assert_eq!(close_code(&close_payload(1000, "bye")), Ok(Some(1000)));
        assert_eq!(close_code(&close_payload(4001, "")), Ok(Some(4001)));
        assert!(matches!(close_code(&[0x03]), Err(Violation::Protocol(_))));
        for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            assert!(matches!(close_code(&close_payload(code, "")), Err(Violation::Protocol(_))), "{code}");
        }
        let mut bad_text = close_payload(1000, "");
        bad_text.extend_from_slice(&[0xCE, 0xBA, 0xE1, 0xBD]);
        assert_eq!(close_code(&bad_text), Err(Violation::NotUtf8));
    }

    #[test]
    fn a_long_close_reason_is_cut_at_a_character_boundary_to_fit() {
        let payload = close_payload(3000, &"é".repeat(100));
        assert_eq!(payload.len(), 2 + 122);
        assert!(std::str::from_utf8(&payload[2..]).is_ok());
    }
}
