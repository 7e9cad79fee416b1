//! The broker's cases: delivery, order, interest routing, idempotency,
//! joins and leaves, control commands.

use bytes::Bytes;

use super::{channel, info, publish, with_history, Clock, Recorder, HISTORY};
use crate::broker::PublishOptions;
use crate::engine::{Engine, Health};
use crate::ids::{Offset, UserId};
use crate::message::{Control, DisconnectReason, EngineEvent, PresenceEvent};

/// Guarantee 1: per-channel order, with offsets assigned as delivered.
pub async fn publications_reach_a_subscribed_node_in_order(engine: Engine, _: Clock) {
    let mut events = Recorder::start(&engine).await;
    let news = channel("conformance:order");
    engine.broker().subscribe(&news).await.expect("subscribe");

    for i in 0..100 {
        publish(&engine, &news, &i.to_string(), &with_history()).await;
    }
    for i in 0..100u64 {
        let (ch, publication) = events.next_publication(&format!("publication {i}")).await;
        assert_eq!(ch, news);
        assert_eq!(publication.data, Bytes::from(i.to_string()), "publications arrive in publish order");
        assert_eq!(publication.offset, Offset::new(i + 1), "offsets are assigned in delivery order");
    }
}

/// Interest-based routing: a node gets only channels it asked for.
pub async fn publications_skip_channels_the_node_is_not_subscribed_to(engine: Engine, _: Clock) {
    let mut events = Recorder::start(&engine).await;
    let wanted = channel("conformance:wanted");
    let other = channel("conformance:other");
    engine.broker().subscribe(&wanted).await.expect("subscribe");

    publish(&engine, &other, "not for us", &PublishOptions::default()).await;
    publish(&engine, &wanted, "for us", &PublishOptions::default()).await;

    let (ch, publication) = events.next_publication("the wanted channel's publication").await;
    assert_eq!((ch, publication.data.clone()), (wanted, Bytes::from("for us")));
}

/// After an unsubscribe, nothing more of the channel arrives.
pub async fn unsubscribe_stops_delivery(engine: Engine, _: Clock) {
    let mut events = Recorder::start(&engine).await;
    let gone = channel("conformance:gone");
    let marker = channel("conformance:marker");
    engine.broker().subscribe(&gone).await.expect("subscribe");
    engine.broker().subscribe(&marker).await.expect("subscribe");

    publish(&engine, &gone, "before", &PublishOptions::default()).await;
    assert_eq!(events.next_publication("before unsubscribe").await.1.data, Bytes::from("before"));

    engine.broker().unsubscribe(&gone).await.expect("unsubscribe");
    publish(&engine, &gone, "after", &PublishOptions::default()).await;
    publish(&engine, &marker, "marker", &PublishOptions::default()).await;
    let (ch, _) = events.next_publication("the marker").await;
    assert_eq!(ch, marker, "nothing from an unsubscribed channel arrives before the marker");
}

/// A publish without history has no offset, and is still delivered.
pub async fn channels_without_history_have_no_positions(engine: Engine, _: Clock) {
    let mut events = Recorder::start(&engine).await;
    let ch = channel("conformance:plain");
    engine.broker().subscribe(&ch).await.expect("subscribe");
    let result = publish(&engine, &ch, "x", &PublishOptions::default()).await;
    assert_eq!(result.position.offset, Offset::ZERO);
    assert_eq!(events.next_publication("the plain publication").await.1.offset, Offset::ZERO);
}

/// A repeat inside the idempotency window returns the first result and
/// delivers nothing; after the window the key is free again.
pub async fn a_repeated_idempotency_key_publishes_once(engine: Engine, clock: Clock) {
    let mut events = Recorder::start(&engine).await;
    let ch = channel("conformance:idempotent");
    engine.broker().subscribe(&ch).await.expect("subscribe");
    let window = std::time::Duration::from_secs(2);
    let keyed = |key: &str| PublishOptions {
        history: Some(HISTORY),
        idempotency_key: Some(key.to_owned()),
        idempotency_window: window,
    };

    let first = publish(&engine, &ch, "once", &keyed("k1")).await;
    let again = publish(&engine, &ch, "once", &keyed("k1")).await;
    assert!(!first.duplicate);
    assert!(again.duplicate, "the repeat is recognised");
    assert_eq!(again.position, first.position, "the repeat returns the first result");
    publish(&engine, &ch, "other key", &keyed("k2")).await;

    assert_eq!(events.next_publication("the first publish").await.1.data, Bytes::from("once"));
    let (_, next) = events.next_publication("the second key's publish").await;
    assert_eq!(next.data, Bytes::from("other key"), "the repeat was not delivered");

    clock.advance(window + std::time::Duration::from_millis(500)).await;
    let later = publish(&engine, &ch, "once", &keyed("k1")).await;
    assert!(!later.duplicate, "after the window the key is free again");
    assert_eq!(later.position.offset, Offset::new(3));
}

/// Joins and leaves travel like publications, to subscribed nodes.
pub async fn joins_and_leaves_reach_subscribed_nodes(engine: Engine, _: Clock) {
    let mut events = Recorder::start(&engine).await;
    let ch = channel("conformance:joins");
    engine.broker().subscribe(&ch).await.expect("subscribe");
    let ann = info("ann", "c1");
    let join = PresenceEvent::Join { info: ann.clone(), user_arrived: true };
    engine.broker().publish_presence(&ch, join.clone()).await.expect("join");
    let leave = PresenceEvent::Leave { info: ann.clone(), user_departed: false };
    engine.broker().publish_presence(&ch, leave.clone()).await.expect("leave");
    for (expected, what) in [(join, "the join"), (leave, "the leave")] {
        match events.next(what).await {
            EngineEvent::Presence { channel, event } => assert_eq!((channel, event), (ch.clone(), expected)),
            other => panic!("expected {what}, got {other:?}"),
        }
    }
}

/// A control command reaches every node, the one that sent it included.
pub async fn control_commands_reach_the_sending_node(engine: Engine, _: Clock) {
    let mut events = Recorder::start(&engine).await;
    let command = Control::Disconnect {
        user: UserId::new("42").expect("valid user"),
        client: None,
        reason: DisconnectReason::ForceDisconnect,
        app: Some("app-1".to_owned()),
    };
    engine.broker().send_control(command.clone()).await.expect("send control");
    match events.next("the control command").await {
        EngineEvent::Control(got) => assert_eq!(got, command),
        other => panic!("expected a control command, got {other:?}"),
    }
}

/// Once started, an engine whose backplane answers is ready.
pub async fn a_started_engine_is_ready(engine: Engine, _: Clock) {
    let _events = Recorder::start(&engine).await;
    assert_eq!(engine.health().await, Health::Ready);
}
