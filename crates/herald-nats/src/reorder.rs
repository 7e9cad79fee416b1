//! Puts a channel's republished publications back in offset order.
//!
//! JetStream stores a channel's publications in offset order (each append
//! names the one before it), but nats-server republishes a stored message
//! after releasing the stream's lock, so two publications appended at the
//! same moment through different connections can reach subscribers
//! swapped (offset 3 before 2). A node must deliver them in order: a
//! positioned subscriber that is sent 3 after 1 takes it for a gap and
//! ends with "insufficient state".
//!
//! So each channel's reader holds a publication that arrives ahead of its
//! turn until the ones before it arrive, for at most [`WAIT`]. What is
//! still missing then was lost on the way (the connection dropped): the
//! held publications go out in order, and the node's gap detection ends
//! the subscriptions that missed something, which then recover.
//!
//! A reader starts where this node last read the stream while the reader
//! listened (a subscriber's position; see `history`), so the stream's
//! first two publications are put in order too. Without such a read, the
//! first publication it sees sets where the stream is; one that overtook
//! it then counts as already past, and the hub decides: a subscriber still
//! reading its position gets both in order (the hub sorts what it buffered
//! meanwhile), any other is ended to recover (an extra recovery at worst,
//! never a silent gap).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use herald_engine::wire::Message;
use herald_engine::{Epoch, StreamPosition};

/// How long a publication that arrived ahead of its turn waits.
pub(crate) const WAIT: Duration = Duration::from_millis(250);

/// Publications held at most per channel; past this they go out at once.
const MAX_HELD: usize = 1024;

/// One channel's ordering state.
#[derive(Debug, Default)]
pub(crate) struct Reorder {
    /// The stream the channel is in, and the offset due next.
    next: Option<(Epoch, u64)>,
    /// Publications ahead of their turn, by offset (all of `next`'s epoch).
    held: BTreeMap<u64, Message>,
    /// When the oldest held publication arrived.
    since: Option<Instant>,
}

impl Reorder {
    /// Whether the reader knows where the stream is.
    pub(crate) fn started(&self) -> bool {
        self.next.is_some()
    }

    /// The stream was at `position` while the reader listened: what comes
    /// next is the publication after it. Ignored once started.
    pub(crate) fn start_at(&mut self, position: StreamPosition) {
        if self.next.is_none() {
            self.next = Some((position.epoch, position.offset.get().saturating_add(1)));
        }
    }

    /// Takes one message; returns what can be delivered now, in order.
    pub(crate) fn take(&mut self, message: Message, now: Instant) -> Vec<Message> {
        let offset = message.offset.get();
        if offset == 0 {
            // Not part of a stream: a publication without history, a join, a leave.
            return vec![message];
        }
        let Some((epoch, next)) = &self.next else {
            self.next = Some((message.epoch.clone(), offset.saturating_add(1)));
            return vec![message];
        };
        if message.epoch != *epoch {
            let mut out = self.release();
            self.next = Some((message.epoch.clone(), offset.saturating_add(1)));
            out.push(message);
            return out;
        }
        let next = *next;
        if offset < next {
            return vec![message];
        }
        if offset > next {
            self.held.insert(offset, message);
            self.since.get_or_insert(now);
            return match self.held.len() > MAX_HELD {
                true => self.release(),
                false => Vec::new(),
            };
        }
        let mut out = vec![message];
        let mut due = next.saturating_add(1);
        while let Some(held) = self.held.remove(&due) {
            out.push(held);
            due = due.saturating_add(1);
        }
        if let Some((_, next)) = &mut self.next {
            *next = due;
        }
        if self.held.is_empty() {
            self.since = None;
        }
        out
    }

    /// When the held publications must go out, if any are held.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.since.and_then(|since| since.checked_add(WAIT))
    }

    /// Gives up waiting: every held publication, in order.
    pub(crate) fn release(&mut self) -> Vec<Message> {
        self.since = None;
        let held = std::mem::take(&mut self.held);
        if let (Some((_, next)), Some(last)) = (&mut self.next, held.keys().next_back()) {
            *next = last.saturating_add(1);
        }
        held.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use herald_engine::{Offset, Publication};

    use super::*;

    fn message(offset: u64, epoch: &str) -> Message {
        let publication = Publication::from_data(Bytes::new());
        Message {
            offset: Offset::new(offset),
            epoch: Epoch::new(epoch),
            kind: herald_engine::wire::Kind::Publication(publication),
        }
    }

    fn offsets(messages: &[Message]) -> Vec<u64> {
        messages.iter().map(|m| m.offset.get()).collect()
    }

    #[test]
    fn a_publication_ahead_of_its_turn_waits_for_the_one_before_it() {
        let mut reorder = Reorder::default();
        let now = Instant::now();
        assert_eq!(offsets(&reorder.take(message(1, "e"), now)), [1]);
        assert!(reorder.take(message(3, "e"), now).is_empty(), "3 waits for 2");
        assert!(reorder.take(message(4, "e"), now).is_empty());
        assert_eq!(reorder.deadline(), Some(now + WAIT));
        assert_eq!(offsets(&reorder.take(message(2, "e"), now)), [2, 3, 4], "then all go, in order");
        assert_eq!(reorder.deadline(), None);
        assert_eq!(offsets(&reorder.take(message(5, "e"), now)), [5]);
    }

    #[test]
    fn a_reader_started_at_a_read_position_puts_the_streams_first_publications_in_order() {
        let mut reorder = Reorder::default();
        let now = Instant::now();
        assert!(!reorder.started());
        reorder.start_at(StreamPosition { offset: Offset::new(0), epoch: Epoch::new("e") });
        assert!(reorder.take(message(2, "e"), now).is_empty(), "2 overtook 1: it waits");
        assert_eq!(offsets(&reorder.take(message(1, "e"), now)), [1, 2]);
        reorder.start_at(StreamPosition { offset: Offset::new(9), epoch: Epoch::new("e") });
        assert_eq!(offsets(&reorder.take(message(3, "e"), now)), [3], "a later start changes nothing");
    }

    #[test]
    fn a_reader_started_before_a_new_epoch_follows_the_new_one() {
        let mut reorder = Reorder::default();
        let now = Instant::now();
        reorder.start_at(StreamPosition { offset: Offset::new(5), epoch: Epoch::new("old") });
        assert_eq!(offsets(&reorder.take(message(1, "new"), now)), [1]);
        assert_eq!(offsets(&reorder.take(message(2, "new"), now)), [2]);
    }

    #[test]
    fn what_never_arrives_is_given_up_on_and_the_rest_goes_in_order() {
        let mut reorder = Reorder::default();
        let now = Instant::now();
        reorder.take(message(7, "e"), now);
        reorder.take(message(10, "e"), now);
        reorder.take(message(9, "e"), now);
        assert_eq!(offsets(&reorder.release()), [9, 10], "8 was lost: the hub sees the gap");
        assert_eq!(offsets(&reorder.take(message(11, "e"), now)), [11], "and the stream goes on");
        assert_eq!(offsets(&reorder.take(message(8, "e"), now)), [8], "a straggler is the hub's to skip");
    }

    #[test]
    fn a_new_epoch_or_a_message_outside_any_stream_is_not_held() {
        let mut reorder = Reorder::default();
        let now = Instant::now();
        reorder.take(message(1, "old"), now);
        assert!(reorder.take(message(3, "old"), now).is_empty());
        assert_eq!(offsets(&reorder.take(message(0, ""), now)), [0], "no offset: delivered at once");
        assert_eq!(offsets(&reorder.take(message(1, "new"), now)), [3, 1], "the old stream's rest, then the new one");
        assert_eq!(offsets(&reorder.take(message(2, "new"), now)), [2]);
    }

    #[test]
    fn holding_is_bounded() {
        let mut reorder = Reorder::default();
        let now = Instant::now();
        reorder.take(message(1, "e"), now);
        let mut released = Vec::new();
        for offset in 3..(3 + MAX_HELD as u64 + 1) {
            released.extend(offsets(&reorder.take(message(offset, "e"), now)));
        }
        assert_eq!(released.len(), MAX_HELD + 1, "past the bound everything held goes out");
        assert_eq!(reorder.deadline(), None);
    }
}
