//! The soak's checker: what each client saw of each channel, held to the
//! rule Herald promises. Within one subscription, publications continue
//! the channel's stream one offset at a time; a recovery either replays
//! exactly what was missed (`recovered: true`) or says it cannot
//! (`recovered: false`), and only then may the client skip ahead. Anything
//! else is an anomaly, and a clean soak has none.
//!
//! Content is checked too: every client, and the publisher from the API's
//! reply, agree on which publication sits at each place of each stream
//! (see [`Truth`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::Value;

/// What the soak found wrong, by kind. A clean soak has none of any kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Anomalies {
    /// Offsets skipped within a stream the client was told it follows
    /// without a break (live, or after `recovered: true`).
    pub lost: u64,
    /// An offset delivered twice, or one publication at two offsets of
    /// one stream.
    pub duplicated: u64,
    /// An offset delivered after a later one.
    pub reordered: u64,
    /// A publication that differs from what another client, or the
    /// publisher, saw at the same place of the same stream.
    pub mismatched: u64,
    /// A publication (or unsubscribe) of a channel the client was not
    /// subscribed to at that moment: before the subscribe reply, after the
    /// subscription ended.
    pub stray: u64,
    /// A recovery that said `recovered: true` though the stream had
    /// changed under the client (another epoch, or an earlier offset).
    pub silently_reset: u64,
    /// Subscriptions not caught up with their channel's last publication
    /// when the soak ended.
    pub behind: u64,
}

impl Anomalies {
    pub fn add(&mut self, other: &Anomalies) {
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.reordered += other.reordered;
        self.mismatched += other.mismatched;
        self.stray += other.stray;
        self.silently_reset += other.silently_reset;
        self.behind += other.behind;
    }

    pub fn total(&self) -> u64 {
        self.lost + self.duplicated + self.reordered + self.mismatched + self.stray + self.silently_reset + self.behind
    }
}

/// A stream's epoch, and the sequence number of a publication in it.
type EpochSeq = (Arc<str>, u64);

/// Which publication (its per-channel sequence number) sits at each place
/// of each stream, as the first client or publisher to see it said. Those
/// that come after compare.
#[derive(Debug, Default)]
pub struct Truth {
    /// By (channel, offset): the sequence number in each epoch seen there.
    places: Mutex<HashMap<(u32, u64), Vec<EpochSeq>>>,
}

impl Truth {
    /// Whether `seq` at `offset` of `channel`'s stream `epoch` agrees with
    /// everything seen there before.
    pub fn agree(&self, channel: u32, epoch: &Arc<str>, offset: u64, seq: u64) -> bool {
        let mut places = self.places.lock().unwrap_or_else(|e| e.into_inner());
        let seen = places.entry((channel, offset)).or_default();
        match seen.iter().find(|(e, _)| e == epoch) {
            Some((_, known)) => *known == seq,
            None => {
                seen.push((epoch.clone(), seq));
                true
            }
        }
    }
}

/// Where a client is in one stream.
#[derive(Debug, Clone)]
struct Stream {
    epoch: Arc<str>,
    /// The last offset taken.
    last: u64,
    /// The sequence number of the publication at `last`, once one came.
    last_seq: Option<u64>,
    /// Offsets skipped over that may still arrive (then: reordered).
    missing: BTreeSet<u64>,
}

impl Stream {
    fn at(epoch: Arc<str>, last: u64) -> Self {
        Self { epoch, last, last_seq: None, missing: BTreeSet::new() }
    }
}

#[derive(Debug, Clone)]
enum State {
    /// Never subscribed.
    New,
    /// Subscribe sent, reply awaited; the position it recovers from.
    Subscribing(Option<Stream>),
    /// Subscribed: publications must continue the stream.
    Live(Stream),
    /// The subscription ended (unsubscribed, connection lost); the position
    /// to recover from.
    Ended(Stream),
}

/// How a subscribe reply came out, for the tallies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscribed {
    /// A first subscription: nothing to recover.
    Fresh,
    /// The missed publications came with the reply.
    Recovered,
    /// The server said it could not recover: a gap the client knows of.
    NotRecovered,
}

/// One client's view of one channel.
#[derive(Debug, Clone)]
pub struct Follow {
    /// The channel's number, for [`Truth`].
    channel: u32,
    state: State,
    /// The last few subscription events, to explain an anomaly.
    recent: std::collections::VecDeque<String>,
}

/// How many subscription events a [`Follow`] remembers.
const RECENT: usize = 6;

/// A description of an anomaly, for the soak's report.
pub type Note = String;

impl Follow {
    pub fn new(channel: u32) -> Self {
        Self { channel, state: State::New, recent: Default::default() }
    }

    /// A subscribe is being sent: the position to recover from, if any.
    pub fn subscribing(&mut self) -> Option<(u64, Arc<str>)> {
        let from = match std::mem::replace(&mut self.state, State::New) {
            State::Ended(stream) | State::Live(stream) | State::Subscribing(Some(stream)) => Some(stream),
            State::New | State::Subscribing(None) => None,
        };
        let position = from.as_ref().map(|s| (s.last, s.epoch.clone()));
        self.remember(match &position {
            Some((offset, epoch)) => format!("subscribe from {offset}@{epoch}"),
            None => "subscribe".into(),
        });
        self.state = State::Subscribing(from);
        position
    }

    /// The subscribe was refused (a temporary error): back to where it was.
    pub fn refused(&mut self) {
        if let State::Subscribing(from) = std::mem::replace(&mut self.state, State::New) {
            self.state = from.map_or(State::New, State::Ended);
        }
    }

    /// Whether a subscribe is awaiting its reply.
    pub fn is_subscribing(&self) -> bool {
        matches!(self.state, State::Subscribing(_))
    }

    /// Whether the subscription is live.
    pub fn is_live(&self) -> bool {
        matches!(self.state, State::Live(_))
    }

    /// The subscription ended: by an unsubscribe push, or with the
    /// connection. An unsubscribe of a channel that was not live is stray.
    pub fn ended(&mut self, by_push: bool, anomalies: &mut Anomalies, notes: &mut Vec<Note>) {
        let noted = notes.len();
        if by_push || !matches!(self.state, State::Ended(_) | State::New) {
            self.remember(format!("ended by {} when {}", if by_push { "push" } else { "disconnect" }, self.describe()));
        }
        self.state = match std::mem::replace(&mut self.state, State::New) {
            State::Live(stream) => State::Ended(stream),
            State::Subscribing(from) => {
                if by_push {
                    anomalies.stray += 1;
                    notes.push(format!("channel {}: unsubscribed before its subscribe reply", self.channel));
                }
                from.map_or(State::New, State::Ended)
            }
            other => {
                if by_push {
                    anomalies.stray += 1;
                    notes.push(format!("channel {}: unsubscribed while not subscribed", self.channel));
                }
                other
            }
        };
        self.explain(notes, noted);
    }

    /// The subscribe reply (its `subscribe` object).
    pub fn subscribed(
        &mut self,
        reply: &Value,
        truth: &Truth,
        anomalies: &mut Anomalies,
        notes: &mut Vec<Note>,
    ) -> Subscribed {
        let noted = notes.len();
        let epoch: Arc<str> = reply["epoch"].as_str().unwrap_or("").into();
        let top = reply["offset"].as_u64().unwrap_or(0);
        let publications: Vec<(u64, u64)> = reply["publications"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p["offset"].as_u64()?, p["data"]["seq"].as_u64()?)))
            .collect();
        let from = match std::mem::replace(&mut self.state, State::New) {
            State::Subscribing(from) => from,
            other => {
                anomalies.stray += 1;
                notes.push(format!("channel {}: a subscribe reply nobody waited for", self.channel));
                match other {
                    State::Live(s) | State::Ended(s) => Some(s),
                    _ => None,
                }
            }
        };
        let recovering = reply["was_recovering"] == true;
        let outcome = match from {
            Some(mut stream) if recovering && reply["recovered"] == true => {
                if stream.epoch != epoch || stream.last > top {
                    anomalies.silently_reset += 1;
                    notes.push(format!(
                        "channel {}: recovered: true from {}@{} into {top}@{epoch}",
                        self.channel, stream.last, stream.epoch
                    ));
                    stream = Stream::at(epoch.clone(), top);
                }
                for (offset, seq) in publications {
                    take(self.channel, &mut stream, offset, seq, truth, anomalies, notes);
                }
                if stream.last < top {
                    anomalies.lost += top - stream.last;
                    notes.push(format!(
                        "channel {}: recovered: true, yet the reply stopped at {} below its top {top}",
                        self.channel, stream.last
                    ));
                    stream.last = top;
                    stream.last_seq = None;
                }
                self.state = State::Live(stream);
                Subscribed::Recovered
            }
            from => {
                // Fresh, or told it cannot recover: the client starts again
                // at the top. What it skipped inside its earlier stream is
                // still lost.
                if let Some(stream) = from {
                    anomalies.lost += stream.missing.len() as u64;
                }
                for (offset, seq) in publications {
                    if !truth.agree(self.channel, &epoch, offset, seq) {
                        anomalies.mismatched += 1;
                    }
                }
                self.state = State::Live(Stream::at(epoch, top));
                if recovering {
                    Subscribed::NotRecovered
                } else {
                    Subscribed::Fresh
                }
            }
        };
        self.remember(format!("{outcome:?} to {}", self.describe()));
        self.explain(notes, noted);
        outcome
    }

    /// A publication of this channel arrived, at `offset` with `seq`.
    pub fn publication(
        &mut self,
        offset: Option<u64>,
        seq: u64,
        truth: &Truth,
        anomalies: &mut Anomalies,
        notes: &mut Vec<Note>,
    ) {
        let (channel, noted) = (self.channel, notes.len());
        let State::Live(stream) = &mut self.state else {
            anomalies.stray += 1;
            notes.push(format!("channel {channel}: publication seq {seq} while not subscribed"));
            self.explain(notes, noted);
            return;
        };
        let Some(offset) = offset else {
            anomalies.mismatched += 1;
            notes.push(format!("channel {channel}: publication seq {seq} without an offset"));
            return;
        };
        take(channel, stream, offset, seq, truth, anomalies, notes);
        self.explain(notes, noted);
    }

    fn remember(&mut self, event: String) {
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(event);
    }

    /// Adds what came before to the notes from `noted` on.
    fn explain(&self, notes: &mut [Note], noted: usize) {
        let Some(new) = notes.get_mut(noted..) else { return };
        for note in new {
            let recent: Vec<&str> = self.recent.iter().map(String::as_str).collect();
            note.push_str(&format!(" [after: {}]", recent.join("; ")));
        }
    }

    /// Whether the client is live at `top` of stream `epoch`, nothing missing.
    pub fn caught_up(&self, epoch: &str, top: u64) -> bool {
        matches!(&self.state, State::Live(s) if &*s.epoch == epoch && s.last == top && s.missing.is_empty())
    }

    /// Where the client is, for a report: `offset@epoch`, or its state.
    pub fn describe(&self) -> String {
        match &self.state {
            State::New => "never subscribed".into(),
            State::Subscribing(_) => "subscribing".into(),
            State::Live(s) => format!("live at {}@{}", s.last, s.epoch),
            State::Ended(s) => format!("unsubscribed at {}@{}", s.last, s.epoch),
        }
    }

    /// Ends the check: offsets skipped and never delivered are lost.
    pub fn finish(&self, anomalies: &mut Anomalies) {
        if let State::Live(s) | State::Ended(s) | State::Subscribing(Some(s)) = &self.state {
            anomalies.lost += s.missing.len() as u64;
        }
    }
}

/// Takes the publication at `offset` (sequence number `seq`) into `stream`.
fn take(
    channel: u32,
    stream: &mut Stream,
    offset: u64,
    seq: u64,
    truth: &Truth,
    anomalies: &mut Anomalies,
    notes: &mut Vec<Note>,
) {
    if !truth.agree(channel, &stream.epoch, offset, seq) {
        anomalies.mismatched += 1;
        notes.push(format!("channel {channel}: seq {seq} at offset {offset}@{} differs", stream.epoch));
    }
    let next = stream.last.saturating_add(1);
    if offset == next {
        if stream.last_seq.is_some_and(|last| seq <= last) {
            anomalies.duplicated += 1;
            notes.push(format!("channel {channel}: seq {seq} again at offset {offset}@{}", stream.epoch));
        }
        stream.last = offset;
        stream.last_seq = Some(seq);
    } else if offset > next {
        notes.push(format!("channel {channel}: offset {offset} after {}@{}", stream.last, stream.epoch));
        // A runaway offset counts as one loss, not a huge set.
        match offset - next {
            gap if gap <= 100_000 => stream.missing.extend(next..offset),
            _ => anomalies.lost += 1,
        }
        stream.last = offset;
        stream.last_seq = Some(seq);
    } else if stream.missing.remove(&offset) {
        anomalies.reordered += 1;
        notes.push(format!("channel {channel}: offset {offset} after {}@{}", stream.last, stream.epoch));
    } else {
        anomalies.duplicated += 1;
        notes.push(format!("channel {channel}: offset {offset} again (at {}@{})", stream.last, stream.epoch));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A client following channel 0 from a fresh subscription at `top`.
    fn live(truth: &Truth, top: u64) -> (Follow, Anomalies, Vec<Note>) {
        let (mut follow, mut anomalies, mut notes) = (Follow::new(0), Anomalies::default(), Vec::new());
        follow.subscribing();
        let reply = json!({"epoch": "e1", "offset": top});
        assert_eq!(follow.subscribed(&reply, truth, &mut anomalies, &mut notes), Subscribed::Fresh);
        (follow, anomalies, notes)
    }

    fn feed(follow: &mut Follow, truth: &Truth, offsets: &[u64]) -> Anomalies {
        let (mut anomalies, mut notes) = (Anomalies::default(), Vec::new());
        for offset in offsets {
            follow.publication(Some(*offset), *offset * 10, truth, &mut anomalies, &mut notes);
        }
        follow.finish(&mut anomalies);
        anomalies
    }

    #[test]
    fn a_stream_that_continues_one_offset_at_a_time_is_clean() {
        let truth = Truth::default();
        let (mut follow, ..) = live(&truth, 3);
        assert_eq!(feed(&mut follow, &truth, &[4, 5, 6]), Anomalies::default());
        assert!(follow.caught_up("e1", 6));
    }

    #[test]
    fn gaps_repeats_and_reorderings_are_each_found() {
        let cases: [(&str, &[u64], Anomalies); 4] = [
            ("a gap", &[1, 3], Anomalies { lost: 1, ..Default::default() }),
            ("a repeat", &[1, 2, 2], Anomalies { duplicated: 1, ..Default::default() }),
            ("a late one", &[1, 3, 2], Anomalies { reordered: 1, ..Default::default() }),
            ("an old one", &[1, 2, 3, 1], Anomalies { duplicated: 1, ..Default::default() }),
        ];
        for (name, offsets, expected) in cases {
            let truth = Truth::default();
            let (mut follow, ..) = live(&truth, 0);
            assert_eq!(feed(&mut follow, &truth, offsets), expected, "{name}");
        }
    }

    #[test]
    fn the_same_publication_at_two_offsets_is_a_duplicate() {
        let truth = Truth::default();
        let (mut follow, mut anomalies, mut notes) = live(&truth, 0);
        follow.publication(Some(1), 7, &truth, &mut anomalies, &mut notes);
        follow.publication(Some(2), 7, &truth, &mut anomalies, &mut notes);
        assert_eq!(anomalies.duplicated, 1);
    }

    #[test]
    fn clients_that_disagree_on_a_place_in_a_stream_are_found() {
        let truth = Truth::default();
        let (mut first, ..) = live(&truth, 0);
        let (mut second, ..) = live(&truth, 0);
        assert_eq!(feed(&mut first, &truth, &[1]), Anomalies::default());
        let (mut anomalies, mut notes) = (Anomalies::default(), Vec::new());
        second.publication(Some(1), 11, &truth, &mut anomalies, &mut notes);
        assert_eq!(anomalies.mismatched, 1);
    }

    #[test]
    fn a_recovery_must_replay_exactly_what_was_missed() {
        let truth = Truth::default();
        let (mut follow, ..) = live(&truth, 0);
        feed(&mut follow, &truth, &[1, 2]);
        let (mut anomalies, mut notes) = (Anomalies::default(), Vec::new());
        follow.ended(false, &mut anomalies, &mut notes);
        assert_eq!(follow.subscribing(), Some((2, "e1".into())));
        let reply = json!({"epoch": "e1", "offset": 5, "was_recovering": true, "recovered": true,
            "publications": [{"offset": 3, "data": {"seq": 30}}, {"offset": 4, "data": {"seq": 40}}]});
        assert_eq!(follow.subscribed(&reply, &truth, &mut anomalies, &mut notes), Subscribed::Recovered);
        assert_eq!(anomalies, Anomalies { lost: 1, ..Default::default() }, "offset 5 never came");
    }

    #[test]
    fn only_recovered_false_lets_a_client_skip_ahead() {
        let truth = Truth::default();
        let (mut follow, mut anomalies, mut notes) = live(&truth, 0);
        follow.ended(false, &mut anomalies, &mut notes);
        follow.subscribing();
        let unrecovered = json!({"epoch": "e2", "offset": 9, "was_recovering": true});
        assert_eq!(follow.subscribed(&unrecovered, &truth, &mut anomalies, &mut notes), Subscribed::NotRecovered);
        assert_eq!(anomalies, Anomalies::default());

        follow.ended(false, &mut anomalies, &mut notes);
        follow.subscribing();
        let reset = json!({"epoch": "e3", "offset": 1, "was_recovering": true, "recovered": true});
        follow.subscribed(&reset, &truth, &mut anomalies, &mut notes);
        assert_eq!(anomalies.silently_reset, 1, "an epoch change must say recovered: false");
    }

    #[test]
    fn publications_outside_a_subscription_are_stray() {
        let truth = Truth::default();
        let (mut follow, mut anomalies, mut notes) = live(&truth, 0);
        follow.ended(true, &mut anomalies, &mut notes);
        follow.publication(Some(1), 10, &truth, &mut anomalies, &mut notes);
        follow.ended(true, &mut anomalies, &mut notes);
        assert_eq!(anomalies.stray, 2);
    }
}
