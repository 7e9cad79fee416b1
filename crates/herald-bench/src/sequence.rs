//! Per-channel sequence checking: every publication the bench sends carries
//! a sequence number per channel; every subscriber checks what it receives
//! against the next number it expects.

use std::collections::HashMap;

/// What one subscriber found wrong, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Anomalies {
    /// Sequence numbers skipped over (later ones arrived first or never).
    pub lost: u64,
    /// Sequence numbers received more than once.
    pub duplicated: u64,
    /// Sequence numbers received after a later one.
    pub reordered: u64,
}

impl Anomalies {
    pub fn add(&mut self, other: Anomalies) {
        self.lost = self.lost.saturating_add(other.lost);
        self.duplicated = self.duplicated.saturating_add(other.duplicated);
        self.reordered = self.reordered.saturating_add(other.reordered);
    }

    pub fn is_clean(&self) -> bool {
        *self == Anomalies::default()
    }
}

/// The most skipped numbers one channel's check remembers, to tell them
/// reordered if they arrive late. A gap that would take it past this (a
/// corrupt number, or a server that lost that many) is counted lost at
/// once, and any of its numbers that arrives later counts as duplicated:
/// no number received makes the checker allocate without bound.
const MOST_SKIPPED: u64 = 1 << 16;

/// One channel's check: the next number expected, the numbers skipped so
/// far (which turn into reorderings if they arrive late), and what was
/// found wrong.
#[derive(Debug, Default)]
pub struct Sequence {
    next: u64,
    skipped: Vec<u64>,
    anomalies: Anomalies,
}

impl Sequence {
    /// Records the arrival of `seq` (numbers start at 0).
    pub fn observe(&mut self, seq: u64) {
        if seq == self.next {
            self.next = self.next.saturating_add(1);
        } else if seq > self.next {
            let gap = seq - self.next;
            if (self.skipped.len() as u64).saturating_add(gap) <= MOST_SKIPPED {
                self.skipped.extend(self.next..seq);
            } else {
                self.anomalies.lost = self.anomalies.lost.saturating_add(gap);
            }
            self.next = seq.saturating_add(1);
        } else if let Some(at) = self.skipped.iter().position(|s| *s == seq) {
            self.skipped.swap_remove(at);
            self.anomalies.reordered += 1;
        } else {
            self.anomalies.duplicated += 1;
        }
    }

    /// Ends the check: numbers up to `sent` never received are lost.
    pub fn finish(self, sent: u64) -> Anomalies {
        let lost = (self.skipped.len() as u64).saturating_add(sent.saturating_sub(self.next));
        Anomalies { lost: self.anomalies.lost.saturating_add(lost), ..self.anomalies }
    }
}

/// Checks the sequence of each channel a client hears from.
#[derive(Debug, Default)]
pub struct SequenceChecker {
    channels: HashMap<String, Sequence>,
    received: u64,
}

impl SequenceChecker {
    /// Records the arrival of `seq` (numbers start at 0) in `channel`.
    pub fn observe(&mut self, channel: &str, seq: u64) {
        self.received += 1;
        // One lookup per message; the channel's name is copied only once.
        let sequence = match self.channels.get_mut(channel) {
            Some(sequence) => sequence,
            None => self.channels.entry(channel.to_owned()).or_default(),
        };
        sequence.observe(seq);
    }

    /// Ends the check: numbers never received up to `sent` per channel are
    /// lost; in a channel not named there, only what arrived is judged.
    pub fn finish(mut self, sent_per_channel: &HashMap<String, u64>) -> (Anomalies, u64) {
        let mut anomalies = Anomalies::default();
        for (channel, sent) in sent_per_channel {
            anomalies.add(self.channels.remove(channel).unwrap_or_default().finish(*sent));
        }
        for unnamed in self.channels.into_values() {
            anomalies.add(unnamed.anomalies);
        }
        (anomalies, self.received)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same arrivals judged by a lone [`Sequence`] and by a
    /// [`SequenceChecker`] hearing one channel: the two must agree.
    fn check(arrivals: &[u64], sent: u64) -> Anomalies {
        let (mut sequence, mut checker) = (Sequence::default(), SequenceChecker::default());
        for seq in arrivals {
            sequence.observe(*seq);
            checker.observe("c", *seq);
        }
        let (by_checker, received) = checker.finish(&HashMap::from([("c".to_owned(), sent)]));
        assert_eq!(received, arrivals.len() as u64);
        let alone = sequence.finish(sent);
        assert_eq!(alone, by_checker, "a lone sequence and the checker disagree on {arrivals:?}");
        alone
    }

    #[test]
    fn injected_faults_are_each_detected() {
        let cases = [
            ("clean", vec![0, 1, 2, 3], 4, Anomalies::default()),
            ("lost in the middle", vec![0, 1, 3], 4, Anomalies { lost: 1, ..Default::default() }),
            ("lost at the end", vec![0, 1], 4, Anomalies { lost: 2, ..Default::default() }),
            ("duplicated", vec![0, 1, 1, 2], 3, Anomalies { duplicated: 1, ..Default::default() }),
            ("reordered", vec![0, 2, 1, 3], 4, Anomalies { reordered: 1, ..Default::default() }),
            ("stale repeat", vec![0, 1, 2, 0], 3, Anomalies { duplicated: 1, ..Default::default() }),
            (
                "a gap too wide to remember, then one of it",
                vec![0, MOST_SKIPPED + 2, 1],
                MOST_SKIPPED + 3,
                Anomalies { lost: MOST_SKIPPED + 1, duplicated: 1, ..Default::default() },
            ),
            (
                "gaps that together pass what is remembered",
                vec![0, MOST_SKIPPED / 2 + 1, MOST_SKIPPED + 3],
                MOST_SKIPPED + 4,
                Anomalies { lost: MOST_SKIPPED + 1, ..Default::default() },
            ),
            ("the largest number", vec![0, u64::MAX], 2, Anomalies { lost: u64::MAX - 1, ..Default::default() }),
        ];
        for (name, arrivals, sent, expected) in cases {
            assert_eq!(check(&arrivals, sent), expected, "{name}");
        }
    }

    #[test]
    fn channels_are_checked_apart_and_one_not_sent_to_is_judged_on_what_arrived() {
        let mut checker = SequenceChecker::default();
        for (channel, seq) in [("a", 0), ("b", 0), ("a", 1), ("b", 2), ("stray", 1), ("stray", 1)] {
            checker.observe(channel, seq);
        }
        let sent = HashMap::from([("a".to_owned(), 2), ("b".to_owned(), 3)]);
        let (anomalies, received) = checker.finish(&sent);
        // b lost 1; the stray channel's repeat is a duplicate, but what it
        // skipped is not lost: nothing says it was sent.
        assert_eq!(anomalies, Anomalies { lost: 1, duplicated: 1, reordered: 0 });
        assert_eq!(received, 6);
    }
}
