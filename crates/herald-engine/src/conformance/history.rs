//! History's cases: offsets, reads, trimming, expiry and epochs.

use std::time::Duration;

use super::{channel, publish, with_history, Clock, Recorder, HISTORY};
use crate::engine::Engine;
use crate::history::HistoryQuery;
use crate::ids::{ChannelName, Epoch, Offset};
use crate::message::StreamPosition;

async fn read(engine: &Engine, ch: &ChannelName, query: HistoryQuery) -> (StreamPosition, Vec<u64>) {
    let result = engine.history().history(ch, &query, &HISTORY).await.expect("history read succeeds");
    (result.position, result.publications.iter().map(|p| p.offset.get()).collect())
}

fn all() -> HistoryQuery {
    HistoryQuery { limit: usize::MAX, ..Default::default() }
}

/// Offsets start at 1 and grow by one; every kind of query reads back
/// what it asks for.
pub async fn offsets_grow_by_one_and_history_reads_back_in_order(engine: Engine, _: Clock) {
    let _events = Recorder::start(&engine).await;
    let ch = channel("conformance:history");
    let mut epoch = None;
    for i in 1..=4u64 {
        let result = publish(&engine, &ch, &i.to_string(), &with_history()).await;
        assert_eq!(result.position.offset, Offset::new(i));
        assert!(!result.position.epoch.is_empty(), "a stream has an epoch");
        assert_eq!(*epoch.get_or_insert(result.position.epoch.clone()), result.position.epoch);
    }
    let epoch = epoch.expect("an epoch");
    let top = StreamPosition { offset: Offset::new(4), epoch: epoch.clone() };

    assert_eq!(read(&engine, &ch, all()).await, (top.clone(), vec![1, 2, 3, 4]));
    let position_only = HistoryQuery { limit: 0, ..Default::default() };
    assert_eq!(read(&engine, &ch, position_only).await, (top.clone(), vec![]));
    let since_two =
        HistoryQuery { since: Some(StreamPosition { offset: Offset::new(2), epoch: epoch.clone() }), ..all() };
    assert_eq!(read(&engine, &ch, since_two).await.1, vec![3, 4], "since is exclusive");
    let since_top = HistoryQuery { since: Some(top.clone()), ..all() };
    assert_eq!(read(&engine, &ch, since_top).await.1, Vec::<u64>::new(), "nothing after the top");
    let newest_two = HistoryQuery { limit: 2, reverse: true, ..Default::default() };
    assert_eq!(read(&engine, &ch, newest_two).await.1, vec![4, 3]);
    let oldest_two = HistoryQuery { limit: 2, ..Default::default() };
    assert_eq!(read(&engine, &ch, oldest_two).await.1, vec![1, 2]);
    let other_epoch = StreamPosition { offset: Offset::new(1), epoch: Epoch::new("not-this-one") };
    let (position, offsets) = read(&engine, &ch, HistoryQuery { since: Some(other_epoch), ..all() }).await;
    assert_eq!((position, offsets), (top, vec![]), "a position from another epoch recovers nothing");
    let any_epoch = StreamPosition { offset: Offset::new(3), epoch: Epoch::default() };
    let (_, offsets) = read(&engine, &ch, HistoryQuery { since: Some(any_epoch), ..all() }).await;
    assert_eq!(offsets, vec![4], "an empty epoch matches any epoch");
}

/// A stream keeps only its last `size` publications.
pub async fn history_is_trimmed_to_its_size(engine: Engine, _: Clock) {
    let _events = Recorder::start(&engine).await;
    let ch = channel("conformance:trim");
    for i in 1..=8 {
        publish(&engine, &ch, &i.to_string(), &with_history()).await;
    }
    let (position, offsets) = read(&engine, &ch, all()).await;
    assert_eq!(position.offset, Offset::new(8));
    assert_eq!(offsets, vec![4, 5, 6, 7, 8], "only the last {} are kept", HISTORY.size);
}

/// Reads of part of a trimmed stream get exactly their part: newest
/// first after a position, oldest first after one, from before what is
/// kept, from past the top.
pub async fn reads_of_part_of_a_trimmed_stream_get_exactly_their_part(engine: Engine, _: Clock) {
    let _events = Recorder::start(&engine).await;
    let ch = channel("conformance:parts");
    for i in 1..=8 {
        publish(&engine, &ch, &i.to_string(), &with_history()).await;
    }
    let (top, kept) = read(&engine, &ch, all()).await;
    assert_eq!(kept, vec![4, 5, 6, 7, 8]);
    let at = |offset: u64| Some(StreamPosition { offset: Offset::new(offset), epoch: top.epoch.clone() });
    let any_epoch = |offset: u64| Some(StreamPosition { offset: Offset::new(offset), epoch: Epoch::default() });
    let cases: [(&str, HistoryQuery, Vec<u64>); 9] = [
        ("newest two after 5", HistoryQuery { since: at(5), limit: 2, reverse: true }, vec![8, 7]),
        ("newest five after 7", HistoryQuery { since: at(7), limit: 5, reverse: true }, vec![8]),
        ("oldest two after 5", HistoryQuery { since: at(5), limit: 2, reverse: false }, vec![6, 7]),
        ("all after 1, of which 4 on are kept", HistoryQuery { since: at(1), ..all() }, vec![4, 5, 6, 7, 8]),
        ("newest ten", HistoryQuery { limit: 10, reverse: true, ..Default::default() }, vec![8, 7, 6, 5, 4]),
        ("after the top", HistoryQuery { since: at(100), ..all() }, vec![]),
        ("after the largest offset", HistoryQuery { since: at(u64::MAX), limit: 3, reverse: true }, vec![]),
        ("any epoch, newest one after 6", HistoryQuery { since: any_epoch(6), limit: 1, reverse: true }, vec![8]),
        ("any epoch, after 6", HistoryQuery { since: any_epoch(6), ..all() }, vec![7, 8]),
    ];
    for (what, query, expected) in cases {
        let (position, offsets) = read(&engine, &ch, query).await;
        assert_eq!((position, offsets), (top.clone(), expected), "{what}");
    }
}

/// A history of one, read while it is published to: every read answers
/// with the publication at the position it reports (a Pusher cache
/// channel's last event is never missing because another came meanwhile).
/// An engine that publishes without waiting (memory) takes the reads and
/// publishes in turn; a remote one has them cross.
pub async fn a_history_of_one_read_while_published_to_answers_with_its_newest(engine: Engine, _: Clock) {
    let _events = Recorder::start(&engine).await;
    let ch = channel("conformance:one");
    // Kept long enough that a slow machine's read never finds it expired.
    let one = crate::HistoryOptions { size: 1, ttl: Duration::from_secs(60), meta_ttl: Duration::from_secs(120) };
    let options = crate::PublishOptions { history: Some(one), ..Default::default() };
    publish(&engine, &ch, "1", &options).await;
    let publisher = tokio::spawn({
        let (engine, ch) = (engine.clone(), ch.clone());
        async move {
            for i in 2..=300u64 {
                publish(&engine, &ch, &i.to_string(), &options).await;
            }
        }
    });
    let newest = HistoryQuery { limit: 1, reverse: true, ..Default::default() };
    let mut reads = 0usize;
    while !publisher.is_finished() {
        let read = engine.history().history(&ch, &newest, &one).await.expect("history read succeeds");
        let offsets: Vec<u64> = read.publications.iter().map(|p| p.offset.get()).collect();
        assert_eq!(offsets, [read.position.offset.get()], "read {reads} answered without its newest publication");
        reads = reads.saturating_add(1);
        tokio::task::yield_now().await;
    }
    publisher.await.expect("the publisher finished");
    assert!(reads > 0, "reads were made while it published");
}

/// Past `ttl`, publications are gone but the position stays.
pub async fn publications_expire_but_the_position_survives(engine: Engine, clock: Clock) {
    let _events = Recorder::start(&engine).await;
    let ch = channel("conformance:ttl");
    publish(&engine, &ch, "1", &with_history()).await;
    let before = publish(&engine, &ch, "2", &with_history()).await.position;
    clock.advance(HISTORY.ttl + Duration::from_millis(500)).await;

    assert_eq!(read(&engine, &ch, all()).await, (before.clone(), vec![]), "publications expired, position kept");
    let next = publish(&engine, &ch, "3", &with_history()).await.position;
    assert_eq!((next.offset, next.epoch), (Offset::new(3), before.epoch), "the stream continues");
}

/// Past `meta_ttl`, the stream starts over under a new epoch.
pub async fn an_expired_stream_starts_again_under_a_new_epoch(engine: Engine, clock: Clock) {
    let _events = Recorder::start(&engine).await;
    let ch = channel("conformance:epoch");
    let before = publish(&engine, &ch, "1", &with_history()).await.position;
    clock.advance(HISTORY.meta_ttl + Duration::from_millis(500)).await;

    let after = publish(&engine, &ch, "again", &with_history()).await.position;
    assert_eq!(after.offset, Offset::new(1), "a new stream starts at 1");
    assert_ne!(after.epoch, before.epoch, "a new stream has a new epoch");
}

/// Removing history resets the stream under a new epoch.
pub async fn removing_history_starts_a_new_epoch(engine: Engine, _: Clock) {
    let _events = Recorder::start(&engine).await;
    let ch = channel("conformance:remove");
    let before = publish(&engine, &ch, "1", &with_history()).await.position;
    engine.history().remove_history(&ch).await.expect("remove history");
    let (position, offsets) = read(&engine, &ch, all()).await;
    assert_eq!((position.offset, offsets), (Offset::ZERO, vec![]));
    assert_ne!(position.epoch, before.epoch);
}
