//! NATS presence beyond the conformance suite: a heartbeat that needs a
//! few records of a large presence stream reads them one by one (where
//! the conformance suite's batches scan the stream, `records::scan_pays`
//! decides), and its answers are the same; a sweep that follows a refresh
//! sweeps with the refresh's scan and misses nothing the refresh wrote.

use std::time::{Duration, Instant};

use herald_engine::conformance::info;
use herald_engine::{ChannelName, Departure, Engine, PresenceStats};
use herald_nats::testing::NatsServer;
use herald_nats::{NatsEngine, NatsSettings, StreamSettings};

async fn engine(server: &NatsServer) -> Engine {
    let settings = NatsSettings {
        addresses: vec![server.url()],
        prefix: "herald-presence".into(),
        command_timeout: Duration::from_secs(5),
        streams: StreamSettings { replicas: 1, memory: true },
    };
    NatsEngine::connect(&settings).await.expect("connects").into_engine()
}

fn channel(name: &str) -> ChannelName {
    ChannelName::new(name).expect("valid channel")
}

#[tokio::test]
async fn a_heartbeat_for_a_few_records_of_a_large_stream_answers_as_a_scan_would() {
    let server = NatsServer::start();
    let engine = engine(&server).await;
    let presence = engine.presence();
    let (lobby, quiet) = (channel("lobby"), channel("quiet"));
    let long = Duration::from_secs(60);
    // Forty records in the lobby: more than sixteen per channel swept below.
    let crowd: Vec<_> = (0..40).map(|n| (lobby.clone(), info(&format!("user-{n}"), &format!("c{n}")))).collect();
    assert!(presence.refresh_presence(&crowd, long).await.is_empty(), "the crowd is present");
    let zoe = info("zoe", "z1");
    let short = Duration::from_millis(800);
    assert!(presence.refresh_presence(&[(quiet.clone(), zoe.clone())], short).await.is_empty(), "zoe alone");
    assert_eq!(presence.presence_stats(&quiet).await.expect("stats"), PresenceStats { num_clients: 1, num_users: 1 });

    let deadline = Instant::now() + Duration::from_secs(10);
    while !presence.presence(&quiet).await.expect("presence").is_empty() {
        assert!(Instant::now() < deadline, "zoe's entry never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let swept = presence.expire_presence_of(std::slice::from_ref(&quiet)).await;
    assert!(swept.failed.is_empty(), "{:?}", swept.failed);
    let handed: Vec<_> =
        swept.expired.iter().map(|(ch, e)| (ch.as_str(), e.info.client.to_string(), e.departure)).collect();
    assert_eq!(handed, [("quiet", "z1".to_owned(), Departure::UserDeparted)], "zoe's departure, once");
    assert!(presence.expire_presence_of(&[quiet.clone(), lobby.clone()]).await.expired.is_empty(), "and only once");

    // A refresh of one of the crowd's records, among forty, reads it alone.
    let second_tab = info("user-7", "c7-b");
    assert!(presence.refresh_presence(&[(lobby.clone(), second_tab)], long).await.is_empty(), "refreshed");
    let stats = presence.presence_stats(&lobby).await.expect("stats");
    assert_eq!(stats, PresenceStats { num_clients: 41, num_users: 40 }, "user-7's second tab joins its record");
}

#[tokio::test]
async fn a_sweep_after_a_refresh_hands_out_an_expired_entry_of_a_record_the_refresh_rewrote() {
    let server = NatsServer::start();
    let engine = engine(&server).await;
    let presence = engine.presence();
    let lobby = channel("lobby");
    // Ann's first connection was on a node that died: its entry expires.
    let dead = info("ann", "a-dead");
    presence.add_presence(&lobby, &dead, Duration::from_millis(800)).await.expect("added");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !presence.presence(&lobby).await.expect("presence").is_empty() {
        assert!(Instant::now() < deadline, "the dead connection's entry never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // This node's heartbeat: a refresh that scans the stream and rewrites
    // ann's record (her live connection joins the expired entry), then the
    // sweep.
    let (live, bob) = (info("ann", "a-live"), info("bob", "b1"));
    let entries = [(lobby.clone(), live), (lobby.clone(), bob)];
    assert!(presence.refresh_presence(&entries, Duration::from_secs(60)).await.is_empty(), "refreshed");
    let swept = presence.expire_presence_of(std::slice::from_ref(&lobby)).await;
    assert!(swept.failed.is_empty(), "{:?}", swept.failed);
    let handed: Vec<_> =
        swept.expired.iter().map(|(ch, e)| (ch.as_str(), e.info.client.to_string(), e.departure)).collect();
    assert_eq!(handed, [("lobby", "a-dead".to_owned(), Departure::UserRemains)], "the dead entry, ann stays");
    assert!(presence.expire_presence_of(std::slice::from_ref(&lobby)).await.expired.is_empty(), "and only once");
    let stats = presence.presence_stats(&lobby).await.expect("stats");
    assert_eq!(stats, PresenceStats { num_clients: 2, num_users: 2 }, "ann's live entry and bob's");
}

/// An older node kept all of a channel's anonymous connections in one
/// record (`<prefix>.pr.<channel>.%`); once it dies, the node that sweeps
/// its entries tells each anonymous connection's departure, as the engine
/// contract now has it, and counts them as one user meanwhile.
#[tokio::test]
async fn an_older_nodes_record_of_anonymous_connections_departs_each_of_them() {
    let server = NatsServer::start();
    let engine = engine(&server).await;
    let presence = engine.presence();
    let hall = channel("hall");
    let long = Duration::from_secs(60);
    presence.add_presence(&hall, &info("ann", "a1"), long).await.expect("ann, on this node");

    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .saturating_add(Duration::from_millis(800))
        .as_millis();
    let entries: Vec<_> =
        ["v1", "v2"].iter().map(|client| serde_json::json!({"info": info("", client), "expires": expires})).collect();
    let record = serde_json::to_vec(&serde_json::json!({ "entries": entries })).expect("json");
    let client = async_nats::connect(server.url()).await.expect("connects");
    let jetstream = async_nats::jetstream::new(client);
    let ack = jetstream.publish("herald-presence.pr.hall.%", record.into()).await.expect("published");
    ack.await.expect("stored");
    let stats = presence.presence_stats(&hall).await.expect("stats");
    assert_eq!(stats, PresenceStats { num_clients: 3, num_users: 2 }, "the two visitors count as one user");

    let deadline = Instant::now() + Duration::from_secs(10);
    while presence.presence(&hall).await.expect("presence").len() > 1 {
        assert!(Instant::now() < deadline, "the visitors' entries never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let swept = presence.expire_presence_of(std::slice::from_ref(&hall)).await;
    assert!(swept.failed.is_empty(), "{:?}", swept.failed);
    let mut handed: Vec<_> = swept.expired.iter().map(|(_, e)| (e.info.client.to_string(), e.departure)).collect();
    handed.sort_by(|a, b| a.0.cmp(&b.0));
    let departed = |client: &str| (client.to_owned(), Departure::UserDeparted);
    assert_eq!(handed, [departed("v1"), departed("v2")], "each visitor departs on its own");
}
