//! The conformance suite: what every engine must do, checked the same way.
//!
//! Each engine's own tests call [`run_all`] with a factory that returns a
//! fresh, not yet started engine (on its own backplane where it has one).
//! Cases wait on conditions with a deadline, never on fixed sleeps.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::engine::{Engine, EventHandler, Health, PublishOptions};
use crate::ids::{ChannelName, UserId};
use crate::message::{Control, DisconnectReason, EngineEvent, Publication};

/// How long a case waits for something that should happen.
const EVENTUALLY: Duration = Duration::from_secs(5);

/// Runs every case, each on a fresh engine from `make`.
pub async fn run_all<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Engine>>,
{
    publications_reach_a_subscribed_node_in_order(make().await).await;
    publications_skip_channels_the_node_is_not_subscribed_to(make().await).await;
    unsubscribe_stops_delivery(make().await).await;
    control_commands_reach_the_sending_node(make().await).await;
    a_started_engine_is_ready(make().await).await;
}

/// Collects what an engine delivers, for assertions.
#[derive(Debug)]
pub struct Recorder {
    rx: mpsc::UnboundedReceiver<EngineEvent>,
}

struct RecordingHandler(mpsc::UnboundedSender<EngineEvent>);

impl EventHandler for RecordingHandler {
    fn handle(&self, event: EngineEvent) {
        let _ = self.0.send(event);
    }
}

impl Recorder {
    /// Starts `engine` with a handler that records into the returned recorder.
    pub async fn start(engine: &dyn Engine) -> Recorder {
        let (tx, rx) = mpsc::unbounded_channel();
        engine
            .start(Arc::new(RecordingHandler(tx)))
            .await
            .expect("engine starts");
        Recorder { rx }
    }

    /// The next event, or a panic naming what was awaited.
    pub async fn next(&mut self, waiting_for: &str) -> EngineEvent {
        match tokio::time::timeout(EVENTUALLY, self.rx.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => panic!("engine dropped its handler while waiting for {waiting_for}"),
            Err(_) => panic!("timed out waiting for {waiting_for}"),
        }
    }

    /// The next publication's channel and data.
    pub async fn next_publication(&mut self, waiting_for: &str) -> (ChannelName, Bytes) {
        match self.next(waiting_for).await {
            EngineEvent::Publication {
                channel,
                publication,
            } => (channel, publication.data.clone()),
            other => panic!("expected a publication ({waiting_for}), got {other:?}"),
        }
    }
}

fn channel(name: &str) -> ChannelName {
    ChannelName::new(name).expect("valid channel")
}

async fn publish(engine: &dyn Engine, ch: &ChannelName, data: &str) {
    engine
        .publish(
            ch,
            Publication::from_data(Bytes::from(data.to_owned())),
            &PublishOptions::default(),
        )
        .await
        .expect("publish succeeds");
}

/// Guarantee 1: per-channel order.
pub async fn publications_reach_a_subscribed_node_in_order(engine: Arc<dyn Engine>) {
    let mut events = Recorder::start(&*engine).await;
    let news = channel("conformance:order");
    engine.subscribe(&news).await.expect("subscribe");

    for i in 0..100 {
        publish(&*engine, &news, &i.to_string()).await;
    }
    for i in 0..100 {
        let (ch, data) = events.next_publication(&format!("publication {i}")).await;
        assert_eq!(ch, news);
        assert_eq!(
            data,
            Bytes::from(i.to_string()),
            "publications arrive in publish order"
        );
    }
}

/// Interest-based routing: a node gets only channels it asked for.
pub async fn publications_skip_channels_the_node_is_not_subscribed_to(engine: Arc<dyn Engine>) {
    let mut events = Recorder::start(&*engine).await;
    let wanted = channel("conformance:wanted");
    let other = channel("conformance:other");
    engine.subscribe(&wanted).await.expect("subscribe");

    publish(&*engine, &other, "not for us").await;
    publish(&*engine, &wanted, "for us").await;

    let (ch, data) = events
        .next_publication("the wanted channel's publication")
        .await;
    assert_eq!((ch, data), (wanted, Bytes::from("for us")));
}

pub async fn unsubscribe_stops_delivery(engine: Arc<dyn Engine>) {
    let mut events = Recorder::start(&*engine).await;
    let gone = channel("conformance:gone");
    let marker = channel("conformance:marker");
    engine.subscribe(&gone).await.expect("subscribe");
    engine.subscribe(&marker).await.expect("subscribe");

    publish(&*engine, &gone, "before").await;
    assert_eq!(
        events.next_publication("before unsubscribe").await.1,
        Bytes::from("before")
    );

    engine.unsubscribe(&gone).await.expect("unsubscribe");
    publish(&*engine, &gone, "after").await;
    publish(&*engine, &marker, "marker").await;
    let (ch, _) = events.next_publication("the marker").await;
    assert_eq!(
        ch, marker,
        "nothing from an unsubscribed channel arrives before the marker"
    );
}

pub async fn control_commands_reach_the_sending_node(engine: Arc<dyn Engine>) {
    let mut events = Recorder::start(&*engine).await;
    let command = Control::Disconnect {
        user: UserId::new("42").expect("valid user"),
        client: None,
        reason: DisconnectReason::ForceDisconnect,
    };
    engine
        .send_control(command.clone())
        .await
        .expect("send control");
    match events.next("the control command").await {
        EngineEvent::Control(got) => assert_eq!(got, command),
        other => panic!("expected a control command, got {other:?}"),
    }
}

pub async fn a_started_engine_is_ready(engine: Arc<dyn Engine>) {
    let _events = Recorder::start(&*engine).await;
    assert_eq!(engine.health().await, Health::Ready);
}
