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
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.reordered += other.reordered;
    }

    pub fn is_clean(&self) -> bool {
        *self == Anomalies::default()
    }
}

/// Tracks the next expected sequence number of each channel.
#[derive(Debug, Default)]
pub struct SequenceChecker {
    /// Per channel: the next expected number, and numbers skipped so far
    /// (which turn into reorderings if they arrive late).
    channels: HashMap<String, (u64, Vec<u64>)>,
    anomalies: Anomalies,
    received: u64,
}

impl SequenceChecker {
    /// Records the arrival of `seq` (numbers start at 0) in `channel`.
    pub fn observe(&mut self, channel: &str, seq: u64) {
        self.received += 1;
        // One lookup per message; the channel's name is copied only once.
        let (next, skipped) = match self.channels.get_mut(channel) {
            Some(entry) => entry,
            None => self.channels.entry(channel.to_owned()).or_default(),
        };
        if seq == *next {
            *next += 1;
        } else if seq > *next {
            skipped.extend(*next..seq);
            *next = seq + 1;
        } else if let Some(at) = skipped.iter().position(|s| *s == seq) {
            skipped.swap_remove(at);
            self.anomalies.reordered += 1;
        } else {
            self.anomalies.duplicated += 1;
        }
    }

    /// Ends the check: numbers never received up to `sent` per channel are lost.
    pub fn finish(mut self, sent_per_channel: &HashMap<String, u64>) -> (Anomalies, u64) {
        for (channel, sent) in sent_per_channel {
            let (next, skipped) = self.channels.remove(channel).unwrap_or((0, Vec::new()));
            self.anomalies.lost += skipped.len() as u64 + sent.saturating_sub(next);
        }
        (self.anomalies, self.received)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(arrivals: &[u64], sent: u64) -> Anomalies {
        let mut checker = SequenceChecker::default();
        for seq in arrivals {
            checker.observe("c", *seq);
        }
        checker.finish(&HashMap::from([("c".to_owned(), sent)])).0
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
        ];
        for (name, arrivals, sent, expected) in cases {
            assert_eq!(check(&arrivals, sent), expected, "{name}");
        }
    }
}
