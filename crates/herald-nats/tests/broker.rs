//! The NATS broker against a real `nats-server`, beyond the conformance
//! suite: two nodes hearing each other whatever the channel's name, and a
//! restarted server reported as an interruption, and republished
//! publications put back in offset order.

use std::time::Duration;

use bytes::Bytes;
use herald_engine::conformance::Recorder;
use herald_engine::{ChannelName, Engine, EngineEvent, Publication, PublishOptions};
use herald_nats::testing::NatsServer;
use herald_nats::{NatsSettings, StreamSettings};

fn settings(server: &NatsServer) -> NatsSettings {
    NatsSettings {
        addresses: vec![server.url()],
        prefix: "herald-test".into(),
        command_timeout: Duration::from_secs(5),
        streams: StreamSettings { replicas: 1, memory: false },
    }
}

/// An engine whose broker is NATS; the other parts (unused by these cases)
/// are the memory engine's.
async fn engine(server: &NatsServer) -> Engine {
    herald_nats::NatsEngine::connect(&settings(server)).await.expect("connect to nats-server").into_engine()
}

fn channel(name: &str) -> ChannelName {
    ChannelName::new(name).unwrap()
}

#[tokio::test]
async fn a_publication_on_one_node_reaches_the_other_in_order_whatever_its_channels_name() {
    let server = NatsServer::start();
    let (a, b) = (engine(&server).await, engine(&server).await);
    let _on_a = Recorder::start(&a).await;
    let mut on_b = Recorder::start(&b).await;
    let odd = channel("scores.live*>");
    b.broker().subscribe(&odd).await.unwrap();

    for n in 0..50 {
        let publication = Publication::from_data(Bytes::from(n.to_string()));
        a.broker().publish(&odd, publication, &PublishOptions::default()).await.unwrap();
    }
    for n in 0..50 {
        let (ch, publication) = on_b.next_publication(&format!("publication {n} on the other node")).await;
        assert_eq!((ch, publication.data.clone()), (odd.clone(), Bytes::from(n.to_string())));
    }
}

#[tokio::test]
async fn a_restarted_server_is_reported_as_an_interruption_and_delivery_resumes() {
    let mut server = NatsServer::start();
    let engine = engine(&server).await;
    let mut events = Recorder::start(&engine).await;
    let ch = channel("resumes");
    engine.broker().subscribe(&ch).await.unwrap();

    server.restart();
    loop {
        if matches!(events.next("an interruption").await, EngineEvent::Interrupted) {
            break;
        }
    }
    // Resubscribed by the client: publications flow again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let publication = Publication::from_data(Bytes::from("again"));
        let _ = engine.broker().publish(&ch, publication, &PublishOptions::default()).await;
        let next =
            tokio::time::timeout(Duration::from_millis(200), events.next("a publication after the restart")).await;
        if let Ok(EngineEvent::Publication { publication, .. }) = next {
            assert_eq!(publication.data, Bytes::from("again"));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no publication after the server came back");
    }
}

/// Collects each channel's publications as (offset, epoch), per node.
#[derive(Default)]
struct Streams(std::sync::Mutex<std::collections::HashMap<ChannelName, Vec<(u64, String)>>>);

impl herald_engine::EventHandler for Streams {
    fn handle(&self, event: EngineEvent) {
        if let EngineEvent::Publication { channel, publication } = event {
            let mut streams = self.0.lock().unwrap();
            streams.entry(channel).or_default().push((publication.offset.get(), publication.epoch.to_string()));
        }
    }
}

const PER_PUBLISHER: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_racing_on_four_nodes_are_delivered_in_offset_order_on_each() {
    let server = NatsServer::start();
    let history =
        herald_engine::HistoryOptions { size: 100, ttl: Duration::from_secs(300), meta_ttl: Duration::from_secs(3600) };
    let with_history = PublishOptions { history: Some(history), ..PublishOptions::default() };
    let channels: Vec<ChannelName> = (0..20).map(|i| channel(&format!("race:{i}"))).collect();
    let mut nodes = Vec::new();
    for _ in 0..4 {
        let node = std::sync::Arc::new(engine(&server).await);
        let seen = std::sync::Arc::new(Streams::default());
        node.start(seen.clone()).await.unwrap();
        for ch in &channels {
            node.broker().subscribe(ch).await.unwrap();
        }
        nodes.push((node, seen));
    }
    // A publisher per channel on every node, all at once: the nodes'
    // appends interleave, and nats-server may republish two of them swapped.
    let mut publishers = Vec::new();
    for ch in &channels {
        for (p, (node, _)) in nodes.iter().enumerate() {
            let (node, ch, with_history) = (node.clone(), ch.clone(), with_history.clone());
            publishers.push(tokio::spawn(async move {
                for n in 0..PER_PUBLISHER {
                    // A temporary error is retried, as clients do (on a
                    // starved machine an answer can come too late; the
                    // publication may then be in the stream twice).
                    let publication = Publication::from_data(Bytes::from(format!("{p}/{n}")));
                    while let Err(error) = node.broker().publish(&ch, publication.clone(), &with_history).await {
                        assert!(matches!(error, herald_engine::EngineError::Unavailable(_)), "{error}");
                    }
                }
            }));
        }
    }
    for publisher in publishers {
        publisher.await.unwrap();
    }
    let mut tops = std::collections::HashMap::new();
    for ch in &channels {
        let query = herald_engine::HistoryQuery::default();
        let read = nodes[0].0.history().history(ch, &query, &history).await.unwrap();
        tops.insert(ch.clone(), read.position.offset.get());
    }
    for (i, (_, seen)) in nodes.iter().enumerate() {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let all_in = |ch: &ChannelName| {
            let read = tops.get(ch).copied().unwrap_or(0);
            seen.0.lock().unwrap().get(ch).map_or(0, Vec::len) as u64 >= read
        };
        while !channels.iter().all(all_in) {
            assert!(tokio::time::Instant::now() < deadline, "node {i} did not receive every publication");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for (ch, stream) in seen.0.lock().unwrap().iter() {
            let offsets: Vec<u64> = stream.iter().map(|(offset, _)| *offset).collect();
            let top = tops[ch];
            assert!(top >= 4 * PER_PUBLISHER as u64, "{ch}: every publish landed");
            assert_eq!(offsets, (1..=top).collect::<Vec<_>>(), "node {i}, {ch}: offsets in order, once each");
            assert!(stream.iter().all(|(_, epoch)| *epoch == stream[0].1), "node {i}, {ch}: one epoch");
        }
    }
}

/// Sends on `ch`'s subject, in the order given, what its stream would
/// republish for each of `offsets` in `epoch`; returns the offsets of the
/// first `count` publications the node then delivers.
async fn republish(
    server: &NatsServer,
    events: &mut Recorder,
    ch: &ChannelName,
    epoch: &herald_engine::Epoch,
    offsets: &[u64],
    count: usize,
) -> Vec<u64> {
    let raw = async_nats::connect(server.url()).await.unwrap();
    let subject = herald_nats::Subjects::new("herald-test").channel(ch);
    for &offset in offsets {
        let mut publication = Publication::from_data(Bytes::from(offset.to_string()));
        publication.offset = herald_engine::Offset::new(offset);
        publication.epoch = epoch.clone();
        raw.publish(subject.clone(), Bytes::from(herald_engine::wire::publication_message(&publication)))
            .await
            .unwrap();
    }
    raw.flush().await.unwrap();
    let mut delivered = Vec::new();
    for _ in 0..count {
        delivered.push(events.next_publication("a republished publication").await.1.offset.get());
    }
    delivered
}

#[tokio::test]
async fn republished_publications_that_arrive_swapped_are_delivered_in_offset_order() {
    let server = NatsServer::start();
    let node = engine(&server).await;
    let mut events = Recorder::start(&node).await;
    let ch = channel("swapped");
    node.broker().subscribe(&ch).await.unwrap();
    // What nats-server does under load: republish two appends swapped.
    let epoch = herald_engine::Epoch::new("e");
    let delivered = republish(&server, &mut events, &ch, &epoch, &[1, 3, 2, 4, 5, 7], 6).await;
    assert_eq!(delivered, [1, 2, 3, 4, 5, 7], "3 waited for 2; 7 waited for a 6 that never came, then went");
}

#[tokio::test]
async fn a_streams_first_two_publications_arriving_swapped_reach_a_subscriber_that_read_its_start_in_order() {
    let server = NatsServer::start();
    let node = engine(&server).await;
    let mut events = Recorder::start(&node).await;
    let ch = channel("first-two");
    node.broker().subscribe(&ch).await.unwrap();
    // A subscriber reads where the (new, empty) stream is: offset 0.
    let history =
        herald_engine::HistoryOptions { size: 10, ttl: Duration::from_secs(60), meta_ttl: Duration::from_secs(600) };
    let read = node.history().history(&ch, &herald_engine::HistoryQuery::default(), &history).await.unwrap();
    assert_eq!(read.position.offset.get(), 0);
    // Then the stream's first two appends are republished swapped.
    let delivered = republish(&server, &mut events, &ch, &read.position.epoch, &[2, 1], 2).await;
    assert_eq!(delivered, [1, 2], "the reader started where the subscriber read, so 2 waited for 1");
}

#[tokio::test]
async fn a_history_whose_last_message_is_unreadable_starts_again_under_a_new_epoch() {
    let server = NatsServer::start();
    let node = engine(&server).await;
    let ch = channel("unreadable");
    let history =
        herald_engine::HistoryOptions { size: 10, ttl: Duration::from_secs(60), meta_ttl: Duration::from_secs(600) };
    let options = PublishOptions { history: Some(history), ..Default::default() };
    let first = node.broker().publish(&ch, Publication::from_data(Bytes::from_static(b"1")), &options).await.unwrap();

    // Another writer on the same NATS (or another version) leaves a message
    // Herald cannot read on the channel's history subject
    // (`<prefix>.h.s<size>m<meta ttl ms>.<channel>`).
    let raw = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
    raw.publish("herald-test.h.s10m600000.unreadable", Bytes::from_static(b"\x00 not a herald message"))
        .await
        .unwrap()
        .await
        .expect("the stream takes it");

    let all = herald_engine::HistoryQuery { limit: usize::MAX, ..Default::default() };
    let read = node.history().history(&ch, &all, &history).await.expect("a read still answers");
    assert_ne!(read.position.epoch, first.position.epoch, "under a new epoch");
    assert_eq!((read.position.offset.get(), read.publications.len()), (0, 0));
    let next = node.broker().publish(&ch, Publication::from_data(Bytes::from_static(b"2")), &options).await.unwrap();
    assert_eq!((next.position.offset.get(), &next.position.epoch), (1, &read.position.epoch), "publishing goes on");
    let read = node.history().history(&ch, &all, &history).await.unwrap();
    let data: Vec<&[u8]> = read.publications.iter().map(|p| &p.data[..]).collect();
    assert_eq!(data, [b"2"]);
}
