//! The NATS broker against a real `nats-server`, beyond the conformance
//! suite: two nodes hearing each other whatever the channel's name, and a
//! restarted server reported as an interruption.

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
