//! Fanout to subscribers that take fossil deltas: the first publication in
//! full, then deltas, one computed and encoded per base and protocol.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use herald_engine::{ChannelName, ClientId, Engine, NodeId, PresenceEvent, Publication, UserId};

use super::*;
use crate::connection::{ConnectionSpec, PushEncoder};
use crate::frame::Frame;
use crate::namespace::{ChannelRules, DeltaType, NamespaceOptions, SubscribePolicy};
use crate::outbox::{Drained, Outbox, Outgoing};

/// `plain|data` to anyone, `full|data` and `delta|<delta>` to delta
/// subscribers; counts the deltas it encodes.
#[derive(Debug, Default)]
struct DeltaEncoder {
    deltas: AtomicUsize,
}

impl PushEncoder for DeltaEncoder {
    fn protocol(&self) -> &'static str {
        "test"
    }

    fn encode_publication(&self, _: &ChannelName, publication: &Publication) -> Frame {
        Frame::Binary(Bytes::from([&b"plain|"[..], &publication.data].concat()))
    }

    fn encode_delta_publication(&self, _: &ChannelName, publication: &Publication, delta: Option<&[u8]>) -> Frame {
        Frame::Binary(match delta {
            None => Bytes::from([&b"full|"[..], &publication.data].concat()),
            Some(delta) => {
                self.deltas.fetch_add(1, Ordering::Relaxed);
                Bytes::from([&b"delta|"[..], delta].concat())
            }
        })
    }

    fn encode_presence(&self, _: &ChannelName, _: &PresenceEvent, _: bool) -> Option<Frame> {
        None
    }
}

async fn hub() -> Arc<Hub> {
    let dash = NamespaceOptions {
        subscribe: SubscribePolicy::Anyone,
        allowed_delta_types: vec![DeltaType::Fossil],
        ..Default::default()
    };
    let plain = NamespaceOptions { subscribe: SubscribePolicy::Anyone, ..Default::default() };
    let namespaces = BTreeMap::from([("dash".to_owned(), dash), ("plain".to_owned(), plain)]);
    let hub = Hub::new(
        HubConfig::new(NodeId::new("n"), ChannelRules::new(NamespaceOptions::default(), namespaces)),
        Engine::memory(),
    );
    hub.start().await.unwrap();
    hub
}

async fn subscriber(
    hub: &Arc<Hub>,
    encoder: &Arc<DeltaEncoder>,
    name: &str,
    channel: &str,
    delta: bool,
) -> (Arc<Connection>, bool) {
    let conn = hub
        .connect(ConnectionSpec {
            client: ClientId::new(name),
            user: UserId::new(name).unwrap(),
            conn_info: None,
            encoder: encoder.clone(),
            outbox: Arc::new(Outbox::new(1 << 20)),
        })
        .unwrap();
    let request = SubscribeRequest { delta, ..Default::default() };
    let channel = ChannelName::new(channel).unwrap();
    let outcome = hub.subscribe(&conn, &channel, SubscribeAccess::Client, request, |_| None).await.unwrap();
    (conn, outcome.delta)
}

/// A state of about 2 KB, `tick` changing a little of it.
fn state(tick: u32) -> String {
    let rows: Vec<String> = (0..40).map(|i| format!("{{\"host\":\"web-{i}\",\"up\":{}}}", i != tick)).collect();
    format!("{{\"tick\":{tick},\"hosts\":[{}]}}", rows.join(","))
}

async fn publish(hub: &Hub, channel: &str, tick: u32) {
    let publication = Publication::from_data(Bytes::from(state(tick)));
    hub.publish(&ChannelName::new(channel).unwrap(), publication, None, false).await.unwrap();
}

fn frames(conn: &Connection) -> Vec<Bytes> {
    match conn.outbox().drain() {
        Drained::Items(items) => items
            .into_iter()
            .filter_map(|item| match item {
                Outgoing::Frame(frame) => Some(Bytes::copy_from_slice(frame.as_bytes())),
                Outgoing::Event(_) => None,
            })
            .collect(),
        Drained::Closed(reason) => panic!("closed: {reason:?}"),
    }
}

/// What a delta subscriber's client rebuilds from its frames.
fn rebuild(frames: &[Bytes], mut previous: Vec<u8>) -> Vec<String> {
    frames
        .iter()
        .map(|frame| {
            previous = match (frame.strip_prefix(b"full|"), frame.strip_prefix(b"delta|")) {
                (Some(full), _) => full.to_vec(),
                (_, Some(delta)) => crate::fossil::apply(&previous, delta).expect("a delta that applies"),
                _ => panic!("a delta subscriber got {frame:?}"),
            };
            String::from_utf8(previous.clone()).unwrap()
        })
        .collect()
}

#[tokio::test]
async fn delta_subscribers_get_the_first_publication_in_full_then_one_shared_delta_each() {
    let hub = hub().await;
    let encoder = Arc::new(DeltaEncoder::default());
    let (alice, granted) = subscriber(&hub, &encoder, "alice", "dash:ops", true).await;
    assert!(granted, "the namespace allows fossil deltas");
    let (bob, _) = subscriber(&hub, &encoder, "bob", "dash:ops", true).await;
    let (carol, _) = subscriber(&hub, &encoder, "carol", "dash:ops", false).await;

    for tick in 1..=3 {
        publish(&hub, "dash:ops", tick).await;
    }
    let (alice_frames, bob_frames) = (frames(&alice), frames(&bob));
    assert_eq!(alice_frames, bob_frames, "both in the same state: the same frames");
    assert!(alice_frames[0].starts_with(b"full|"));
    assert!(alice_frames[1..].iter().all(|f| f.starts_with(b"delta|") && f.len() < 100), "{alice_frames:?}");
    assert_eq!(encoder.deltas.load(Ordering::Relaxed), 2, "one delta per publication, shared");
    assert_eq!(rebuild(&alice_frames, Vec::new()), vec![state(1), state(2), state(3)]);
    let plain: Vec<Bytes> = (1..=3).map(|t| Bytes::from(format!("plain|{}", state(t)))).collect();
    assert_eq!(frames(&carol), plain, "a subscriber that did not ask gets plain publications");

    // A late subscriber starts in full; the others go on with deltas.
    let (dave, _) = subscriber(&hub, &encoder, "dave", "dash:ops", true).await;
    publish(&hub, "dash:ops", 4).await;
    assert!(frames(&dave)[0].starts_with(b"full|"));
    let alice_next = frames(&alice);
    assert_eq!(rebuild(&alice_next, state(3).into_bytes()), vec![state(4)]);
}

#[tokio::test]
async fn a_namespace_without_deltas_refuses_them_quietly() {
    let hub = hub().await;
    let encoder = Arc::new(DeltaEncoder::default());
    let (conn, granted) = subscriber(&hub, &encoder, "eve", "plain:status", true).await;
    assert!(!granted);
    publish(&hub, "plain:status", 1).await;
    publish(&hub, "plain:status", 2).await;
    assert!(frames(&conn).iter().all(|f| f.starts_with(b"plain|")));
}

#[tokio::test]
async fn a_delta_no_smaller_than_the_data_is_not_sent() {
    let hub = hub().await;
    let encoder = Arc::new(DeltaEncoder::default());
    let (conn, _) = subscriber(&hub, &encoder, "fay", "dash:tiny", true).await;
    for data in ["{\"a\":1}", "{\"b\":2}"] {
        hub.publish(&ChannelName::new("dash:tiny").unwrap(), Publication::from_data(Bytes::from(data)), None, false)
            .await
            .unwrap();
    }
    let sent = frames(&conn);
    assert_eq!(sent, vec![Bytes::from("full|{\"a\":1}"), Bytes::from("full|{\"b\":2}")]);
}
