//! Deciding a recovery: given the position a client last saw and what the
//! engine's history holds, either exactly the missed publications, in
//! order, or an explicit "cannot".

use std::sync::Arc;

use herald_engine::{HistoryResult, Publication, StreamPosition};

/// The outcome of a recovery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// These are exactly the publications after the client's position.
    Recovered(Vec<Arc<Publication>>),
    /// The client's position cannot be continued: another epoch, trimmed
    /// or expired publications, a position from the future, or more missed
    /// than `max` allows.
    Impossible,
}

/// Decides a recovery from `since` against a history read made with
/// `since` and a limit above `max`.
pub fn decide(since: &StreamPosition, history: HistoryResult, max: usize) -> Recovery {
    let top = &history.position;
    // An empty epoch means "any epoch", as Centrifugo's clients expect.
    let other_epoch = !since.epoch.is_empty() && since.epoch != top.epoch;
    if other_epoch || since.offset > top.offset {
        return Recovery::Impossible;
    }
    let Some(missed) = top.offset.get().checked_sub(since.offset.get()) else { return Recovery::Impossible };
    if missed == 0 {
        return Recovery::Recovered(Vec::new());
    }
    if missed > max as u64 || history.publications.len() as u64 != missed {
        return Recovery::Impossible;
    }
    let contiguous = history
        .publications
        .iter()
        .zip(since.offset.get().saturating_add(1)..)
        .all(|(publication, expected)| publication.offset.get() == expected);
    if contiguous {
        Recovery::Recovered(history.publications)
    } else {
        Recovery::Impossible
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use herald_engine::{Epoch, Offset};

    use super::*;

    fn position(offset: u64, epoch: &str) -> StreamPosition {
        StreamPosition { offset: Offset::new(offset), epoch: Epoch::new(epoch) }
    }

    fn history(top: u64, offsets: &[u64]) -> HistoryResult {
        let publications = offsets
            .iter()
            .map(|o| {
                let mut p = Publication::from_data(Bytes::from_static(b"1"));
                p.offset = Offset::new(*o);
                Arc::new(p)
            })
            .collect();
        HistoryResult { position: position(top, "e"), publications }
    }

    fn recovered(offsets: &[u64]) -> Recovery {
        Recovery::Recovered(history(0, offsets).publications)
    }

    #[test]
    fn recovery_is_exact_or_impossible_at_every_boundary() {
        let cases = [
            ("nothing missed", position(5, "e"), history(5, &[]), recovered(&[])),
            ("one missed", position(4, "e"), history(5, &[5]), recovered(&[5])),
            ("all of the limit", position(2, "e"), history(5, &[3, 4, 5]), recovered(&[3, 4, 5])),
            ("over the limit", position(1, "e"), history(5, &[2, 3, 4, 5]), Recovery::Impossible),
            ("trimmed", position(1, "e"), history(4, &[3, 4]), Recovery::Impossible),
            ("expired", position(3, "e"), history(5, &[]), Recovery::Impossible),
            ("another epoch", position(5, "old"), history(5, &[]), Recovery::Impossible),
            ("any epoch", position(4, ""), history(5, &[5]), recovered(&[5])),
            ("from the future", position(9, "e"), history(5, &[]), Recovery::Impossible),
            ("a gap in history", position(2, "e"), history(5, &[3, 5, 5]), Recovery::Impossible),
        ];
        for (name, since, history, expected) in cases {
            assert_eq!(decide(&since, history, 3), expected, "{name}");
        }
    }
}
