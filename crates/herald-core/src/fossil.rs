//! Fossil deltas: the difference between two versions of a publication's
//! data, as the Centrifuge protocol's delta compression carries it
//! (`delta: "fossil"`), which centrifuge-js and centrifuge-python apply.
//!
//! A delta is text: the target's length, then commands — copy `n` bytes
//! from the source at `offset` (`n@offset,`) or insert `n` bytes given
//! inline (`n:bytes`) — and a checksum of the target (`sum;`). Numbers are
//! written in base 64 with the digits `0-9A-Z_a-z~`.
//!
//! The encoder indexes the source in blocks of [`BLOCK`] bytes, walks the
//! target looking each window up, and extends every match both ways; what
//! no match covers is inserted. A dashboard that republishes a large state
//! with a few fields changed gets a delta of a few dozen bytes. [`apply`]
//! rebuilds a target, for checks (the clients bring their own).

use std::collections::HashMap;

/// The size of the source blocks matches start from: shorter runs are
/// cheaper inserted than copied.
const BLOCK: usize = 16;

const DIGITS: &[u8; 64] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~";

/// Appends `value` in the delta's base-64 digits.
fn put_int(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 11];
    let mut at = digits.len();
    loop {
        at = at.saturating_sub(1);
        if let (Some(slot), Some(digit)) = (digits.get_mut(at), DIGITS.get((value & 63) as usize)) {
            *slot = *digit;
        }
        value >>= 6;
        if value == 0 || at == 0 {
            break;
        }
    }
    out.extend_from_slice(digits.get(at..).unwrap_or_default());
}

/// The format's checksum of `bytes`: four running byte sums, combined as
/// one 32-bit big-endian word sum, plus the tail.
pub fn checksum(bytes: &[u8]) -> u32 {
    let mut sums = [0u32; 4];
    let words = bytes.chunks_exact(4);
    let tail = words.remainder();
    for word in words {
        for (sum, byte) in sums.iter_mut().zip(word) {
            *sum = sum.wrapping_add(u32::from(*byte));
        }
    }
    let [s0, s1, s2, s3] = sums;
    let mut total = s3.wrapping_add(s2 << 8).wrapping_add(s1 << 16).wrapping_add(s0 << 24);
    for (byte, shift) in tail.iter().zip([24u32, 16, 8]) {
        total = total.wrapping_add(u32::from(*byte) << shift);
    }
    total
}

/// Whether `byte` continues a UTF-8 character rather than starting one.
fn is_continuation(byte: u8) -> bool {
    byte & 0xC0 == 0x80
}

/// Appends an insert of `bytes` (nothing when empty).
fn put_insert(out: &mut Vec<u8>, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    put_int(out, bytes.len() as u64);
    out.push(b':');
    out.extend_from_slice(bytes);
}

/// The delta that turns `source` into `target`.
pub fn delta(source: &[u8], target: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    put_int(&mut out, target.len() as u64);
    out.push(b'\n');
    // Where each block of the source starts, by its contents (the first
    // block with given contents wins).
    let mut blocks: HashMap<&[u8], usize> = HashMap::new();
    for (index, block) in source.chunks_exact(BLOCK).enumerate() {
        blocks.entry(block).or_insert(index.saturating_mul(BLOCK));
    }
    let mut literal: usize = 0; // where the target's bytes not yet covered start
    let mut at: usize = 0;
    while let Some(window) = target.get(at..at.saturating_add(BLOCK)) {
        let Some(&from) = blocks.get(window) else {
            at = at.saturating_add(1);
            continue;
        };
        // Extend the match backwards into the pending literal, then forwards.
        let mut start = (at, from);
        while start.0 > literal
            && start.1 > 0
            && target.get(start.0.saturating_sub(1)) == source.get(start.1.saturating_sub(1))
        {
            start = (start.0.saturating_sub(1), start.1.saturating_sub(1));
        }
        let mut end = (at.saturating_add(BLOCK), from.saturating_add(BLOCK));
        while end.0 < target.len() && end.1 < source.len() && target.get(end.0) == source.get(end.1) {
            end = (end.0.saturating_add(1), end.1.saturating_add(1));
        }
        // Cut where characters begin, so that every insert is whole
        // characters: a delta of UTF-8 text is UTF-8 text (the JSON
        // protocol carries it as a string).
        while start.0 < end.0 && target.get(start.0).is_some_and(|b| is_continuation(*b)) {
            start = (start.0.saturating_add(1), start.1.saturating_add(1));
        }
        while end.0 > start.0 && target.get(end.0).is_some_and(|b| is_continuation(*b)) {
            end = (end.0.saturating_sub(1), end.1.saturating_sub(1));
        }
        if end.0 == start.0 {
            at = at.saturating_add(1);
            continue;
        }
        put_insert(&mut out, target.get(literal..start.0).unwrap_or_default());
        put_int(&mut out, end.0.saturating_sub(start.0) as u64);
        out.push(b'@');
        put_int(&mut out, start.1 as u64);
        out.push(b',');
        literal = end.0;
        at = end.0;
    }
    put_insert(&mut out, target.get(literal..).unwrap_or_default());
    put_int(&mut out, u64::from(checksum(target)));
    out.push(b';');
    out
}

/// Why a delta could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a fossil delta of this source: {0}")]
pub struct BadDelta(&'static str);

/// Reads a base-64 number off the front of `rest`.
fn take_int(rest: &mut &[u8]) -> Result<usize, BadDelta> {
    let mut value: usize = 0;
    while let Some(digit) = rest.first().and_then(|byte| DIGITS.iter().position(|d| d == byte)) {
        value = value.checked_mul(64).and_then(|v| v.checked_add(digit)).ok_or(BadDelta("a number too large"))?;
        *rest = rest.get(1..).unwrap_or_default();
    }
    Ok(value)
}

fn take_byte(rest: &mut &[u8]) -> Result<u8, BadDelta> {
    let (&byte, tail) = rest.split_first().ok_or(BadDelta("it ends early"))?;
    *rest = tail;
    Ok(byte)
}

/// Applies `delta` to `source`, checking what a client checks: sizes,
/// bounds and the checksum. (Herald only makes deltas; this rebuilds them
/// where a check needs to, as the load generator does.)
pub fn apply(source: &[u8], delta: &[u8]) -> Result<Vec<u8>, BadDelta> {
    let mut rest = delta;
    let limit = take_int(&mut rest)?;
    if take_byte(&mut rest)? != b'\n' {
        return Err(BadDelta("no newline after the size"));
    }
    let mut out = Vec::with_capacity(limit.min(1 << 24));
    loop {
        let count = take_int(&mut rest)?;
        match take_byte(&mut rest)? {
            b'@' => {
                let offset = take_int(&mut rest)?;
                if take_byte(&mut rest)? != b',' {
                    return Err(BadDelta("a copy not ended by a comma"));
                }
                let end = offset.checked_add(count).ok_or(BadDelta("a copy too long"))?;
                out.extend_from_slice(source.get(offset..end).ok_or(BadDelta("a copy past the source"))?);
            }
            b':' => {
                out.extend_from_slice(rest.get(..count).ok_or(BadDelta("an insert past the delta"))?);
                rest = rest.get(count..).unwrap_or_default();
            }
            b';' => {
                if out.len() != limit || u32::try_from(count).ok() != Some(checksum(&out)) {
                    return Err(BadDelta("the size or checksum differs"));
                }
                return Ok(out);
            }
            _ => return Err(BadDelta("an unknown command")),
        }
        if out.len() > limit {
            return Err(BadDelta("more than the size it gives"));
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_state_with_a_few_fields_changed_gives_a_small_delta() {
        let state = |visitors: u32, load: f32| {
            let rows: Vec<String> = (0..60).map(|i| format!("{{\"host\":\"web-{i:02}\",\"up\":true}}")).collect();
            format!("{{\"visitors\":{visitors},\"load\":{load},\"hosts\":[{}]}}", rows.join(","))
        };
        let (before, after) = (state(1200, 0.5), state(1213, 0.75));
        let delta = delta(before.as_bytes(), after.as_bytes());
        assert!(before.len() > 1500);
        assert!(delta.len() < 60, "{} bytes: {}", delta.len(), String::from_utf8_lossy(&delta));
        assert_eq!(apply(before.as_bytes(), &delta).unwrap(), after.as_bytes());
    }

    #[test]
    fn numbers_use_the_formats_digits_and_the_checksum_matches_its_definition() {
        let mut out = Vec::new();
        for value in [0, 9, 10, 63, 64, 4096, u64::from(u32::MAX)] {
            put_int(&mut out, value);
            out.push(b' ');
        }
        assert_eq!(String::from_utf8(out).unwrap(), "0 9 A ~ 10 100 3~~~~~ ");
        assert_eq!(checksum(b""), 0);
        assert_eq!(checksum(b"abcd"), u32::from_be_bytes(*b"abcd"));
        assert_eq!(checksum(b"abcdab"), u32::from_be_bytes(*b"abcd").wrapping_add(u32::from_be_bytes(*b"ab\0\0")));
    }

    #[test]
    fn a_delta_of_text_is_text_even_where_characters_change_inside() {
        let before = "température: 21°C, humidité: 40 %, état: «calme», ".repeat(8);
        let after = before.replacen("21°C", "22°C", 1).replacen("«calme»", "«agité»", 1).replace("é", "è");
        let delta = delta(before.as_bytes(), after.as_bytes());
        assert!(std::str::from_utf8(&delta).is_ok(), "{delta:?}");
        assert_eq!(apply(before.as_bytes(), &delta).unwrap(), after.as_bytes());
    }

    #[test]
    fn unrelated_or_empty_versions_still_round_trip() {
        for (source, target) in
            [("", ""), ("", "new"), ("old", ""), ("short", "other"), ("same same same same", "same same same same")]
        {
            let delta = delta(source.as_bytes(), target.as_bytes());
            assert_eq!(apply(source.as_bytes(), &delta).unwrap(), target.as_bytes(), "{source:?} -> {target:?}");
        }
    }

    proptest! {
        #[test]
        fn garbage_is_refused_not_panicked_on(source in proptest::collection::vec(any::<u8>(), 0..64), delta in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = apply(&source, &delta);
        }

        #[test]
        fn any_target_is_rebuilt_from_any_source(
            source in proptest::collection::vec(any::<u8>(), 0..600),
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
            tail in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let mut target = source.clone();
            for (at, byte) in edits {
                if !target.is_empty() {
                    let at = at % target.len();
                    target[at] = byte;
                }
            }
            target.extend(tail);
            let delta = delta(&source, &target);
            prop_assert_eq!(apply(&source, &delta).unwrap(), target);
        }

        #[test]
        fn a_delta_between_texts_is_text(source in "\\PC{0,300}", edit in "\\PC{0,20}", at in any::<usize>()) {
            let mut target = source.clone();
            let mut cut = at % (target.len() + 1);
            while !target.is_char_boundary(cut) {
                cut -= 1;
            }
            target.insert_str(cut, &edit);
            let delta = delta(source.as_bytes(), target.as_bytes());
            prop_assert!(std::str::from_utf8(&delta).is_ok());
            prop_assert_eq!(apply(source.as_bytes(), &delta).unwrap(), target.as_bytes());
        }
    }
}
