//! A hint that a record is about to be used, so that the processor brings
//! it into its cache ahead of time.
//!
//! A fanout reads a few records of every subscriber: its subscription,
//! its connection, its outbox and its socket. Between two publications
//! the kernel's work for a thousand sends pushes them out of the cache, so
//! each is a miss, and a miss before a lock's atomic instruction cannot
//! overlap the next subscriber's: a fanout waited for them one after
//! another, most of Herald's own time a delivery (BENCHMARKS.md). Asked
//! for a few subscribers ahead, the fetches run while the fanout works.
//!
//! The hint changes nothing the program can see and cannot fault, whatever
//! the address. On processors other than x86-64 it is nothing at all.

// The one instruction below, which only hints.
#![allow(unsafe_code)]

/// How many items ahead [`ahead`] gives its far hint; the near one is
/// given half as far, so that each fetch has had a few items' work to
/// arrive in.
const AHEAD: usize = 8;

/// The cache's line, on every x86-64 processor.
const LINE: usize = 64;

/// The bits of an address within its line.
const WITHIN_LINE: usize = LINE - 1;

/// `items`, in order, with `far` called on the item [`AHEAD`] after each
/// as it is yielded and `near` on the one half as far: a loop asks for one
/// record of the items it comes to next, then for a record whose address
/// is in the first once that has had time to arrive.
pub(crate) fn ahead<I, F, N>(items: I, mut far: F, mut near: N) -> impl Iterator<Item = I::Item>
where
    I: Iterator + Clone,
    F: FnMut(&I::Item),
    N: FnMut(&I::Item),
{
    let mut far_ahead = items.clone().skip(AHEAD);
    let mut near_ahead = items.clone().skip(AHEAD / 2);
    items.inspect(move |_| {
        if let Some(item) = far_ahead.next() {
            far(&item);
        }
        if let Some(item) = near_ahead.next() {
            near(&item);
        }
    })
}

/// Asks for every cache line of `record`.
#[inline(always)]
pub(crate) fn prefetch<T: ?Sized>(record: &T) {
    let start = std::ptr::from_ref(record).cast::<u8>();
    prefetch_lines(start, std::mem::size_of_val(record));
}

/// Asks for the cache lines of `bytes` bytes from `start`, which need not
/// point at anything live: a hint about memory that has gone is harmless.
#[inline(always)]
pub(crate) fn prefetch_lines(start: *const u8, bytes: usize) {
    lines(start, bytes).for_each(prefetch_line);
}

/// The start of each cache line that `bytes` bytes from `start` touch:
/// from the line `start` is in to the line of the last byte.
fn lines(start: *const u8, bytes: usize) -> impl Iterator<Item = *const u8> {
    let into_line = start.addr() & WITHIN_LINE;
    let first_line = start.wrapping_sub(into_line);
    (0..bytes.saturating_add(into_line)).step_by(LINE).map(move |offset| first_line.wrapping_add(offset))
}

#[inline(always)]
fn prefetch_line(address: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetcht0` reads nothing into the program and never
    // faults, whatever the address.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(address.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    #[repr(align(64))]
    struct Lines([u8; 256]);

    fn offsets(lines: &Lines, from: usize, bytes: usize) -> Vec<usize> {
        let start = lines.0.as_ptr().wrapping_add(from);
        super::lines(start, bytes).map(|line| line.addr() - lines.0.as_ptr().addr()).collect()
    }

    #[test]
    fn a_record_is_fetched_from_the_line_it_starts_in_to_the_line_it_ends_in() {
        let memory = Lines([0; 256]);
        assert_eq!(offsets(&memory, 0, 128), [0, 64], "two whole lines");
        assert_eq!(offsets(&memory, 16, 128), [0, 64, 128], "128 bytes off a line's start touch three");
        assert_eq!(offsets(&memory, 63, 2), [0, 64], "two bytes astride a boundary");
        assert_eq!(offsets(&memory, 70, 8), [64], "a small record within one line");
    }

    #[test]
    fn each_item_comes_in_order_with_the_hints_given_ahead_of_it() {
        let (far, near) = (RefCell::new(Vec::new()), RefCell::new(Vec::new()));
        let mut seen = Vec::new();
        for item in ahead(0..12, |i| far.borrow_mut().push(*i), |i| near.borrow_mut().push(*i)) {
            seen.push((item, far.borrow().last().copied(), near.borrow().last().copied()));
        }
        assert_eq!(seen.iter().map(|(item, ..)| *item).collect::<Vec<_>>(), (0..12).collect::<Vec<_>>());
        assert_eq!(seen[0], (0, Some(AHEAD), Some(AHEAD / 2)), "hinted before the first item");
        assert_eq!(seen[3], (3, Some(AHEAD + 3), Some(AHEAD / 2 + 3)));
        assert_eq!(far.into_inner(), (AHEAD..12).collect::<Vec<_>>(), "each item hinted once, none past the end");
        assert_eq!(near.into_inner(), (AHEAD / 2..12).collect::<Vec<_>>());
    }

    #[test]
    fn a_hint_for_any_address_is_harmless() {
        prefetch_lines(std::ptr::null(), 128);
        prefetch_lines(std::ptr::without_provenance(usize::MAX), 128);
        prefetch(&Lines([1; 256]));
    }
}
