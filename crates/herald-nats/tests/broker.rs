//! The NATS broker against a real `nats-server`: the engine conformance
//! suite's broker cases that need no history or idempotency, two nodes
//! hearing each other, refusal of what it cannot keep, and a restarted
//! server reported as an interruption.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_engine::conformance::{self, Clock, Recorder};
use herald_engine::{ChannelName, Engine, EngineError, EngineEvent, MemoryEngine, Publication, PublishOptions};
use herald_nats::testing::NatsServer;
use herald_nats::{NatsBroker, NatsSettings};

fn settings(server: &NatsServer) -> NatsSettings {
    NatsSettings {
        addresses: vec![server.url()],
        prefix: "herald-test".into(),
        command_timeout: Duration::from_secs(5),
    }
}

/// An engine whose broker is NATS; the other parts (unused by these cases)
/// are the memory engine's.
async fn engine(server: &NatsServer) -> Engine {
    let broker = Arc::new(NatsBroker::connect(&settings(server)).await.expect("connect to nats-server"));
    let memory = Arc::new(MemoryEngine::default());
    Engine::from_parts("nats", broker, memory.clone(), memory.clone(), memory.clone(), memory)
}

macro_rules! conformance_case {
    ($($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let server = NatsServer::start();
                conformance::broker::$case(engine(&server).await, Clock::Real).await;
            }
        )*
    };
}

conformance_case!(
    publications_skip_channels_the_node_is_not_subscribed_to,
    unsubscribe_stops_delivery,
    channels_without_history_have_no_positions,
    joins_and_leaves_reach_subscribed_nodes,
    control_commands_reach_the_sending_node,
    a_started_engine_is_ready,
);

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
async fn what_the_broker_cannot_keep_is_refused_not_dropped() {
    let server = NatsServer::start();
    let engine = engine(&server).await;
    let _events = Recorder::start(&engine).await;
    let with_history = PublishOptions { history: Some(conformance::HISTORY), ..PublishOptions::default() };
    let refused = engine.broker().publish(&channel("a"), Publication::from_data(Bytes::from("x")), &with_history).await;
    assert!(matches!(refused, Err(EngineError::Unavailable(_))), "{refused:?}");
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
