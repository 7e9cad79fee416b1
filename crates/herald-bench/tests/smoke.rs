//! Smoke runs of each scenario against a Herald node in this process: the
//! tool works end to end and finds nothing wrong where nothing is. These
//! assert correctness, never speed.

use std::time::Duration;

use herald_bench::client::Protocol;
use herald_bench::publisher::PublishVia;
use herald_bench::scenario::chat::{self, ChatArgs};
use herald_bench::scenario::connections::{self, ConnectionsArgs};
use herald_bench::scenario::deltas::{self, DeltasArgs};
use herald_bench::scenario::fanout::{self, FanoutArgs};
use herald_bench::scenario::storm::{self, StormArgs};
use herald_bench::scenario::ConnectArgs;
use herald_server::config::{Config, Secret};
use herald_server::Node;

const SECRET: &str = "bench-secret";
const KEY: &str = "bench-key";

async fn herald() -> std::net::SocketAddr {
    herald_with(|_| {}).await
}

/// A node with the configuration below, changed by `change`.
async fn herald_with(change: impl FnOnce(&mut Config)) -> std::net::SocketAddr {
    let mut config = Config::default();
    let chat = herald_core::NamespaceOptions { publish: herald_core::PublishPolicy::Subscribers, ..Default::default() };
    config.channel.namespaces.insert("chat".into(), chat);
    let feed = herald_core::NamespaceOptions {
        history_size: 1000,
        history_ttl: Duration::from_secs(300),
        force_recovery: true,
        recovery_max_publications: 1000,
        ..Default::default()
    };
    config.channel.namespaces.insert("feed".into(), feed);
    let dashboard = herald_core::NamespaceOptions {
        allowed_delta_types: vec![herald_core::DeltaType::Fossil],
        ..Default::default()
    };
    config.channel.namespaces.insert("dashboard".into(), dashboard);
    config.client.token_hmac_secret = Some(Secret::new(SECRET));
    config.api.key = Some(Secret::new(KEY));
    config.pusher.apps.push(herald_server::config::PusherApp {
        id: "bench-app".into(),
        key: "bench-app-key".into(),
        secret: Secret::new("bench-app-secret"),
        ..Default::default()
    });
    change(&mut config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let node = Node::build(config).await.unwrap();
    tokio::spawn(node.run(listener, std::future::pending()));
    addr
}

/// Runs the herald-bench binary with these groups of arguments; its JSON report.
async fn herald_bench(args: &[&[&str]]) -> serde_json::Value {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald-bench"))
        .args(args.concat())
        .output()
        .await
        .expect("herald-bench runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("a JSON result")
}

fn connect_args(addr: std::net::SocketAddr) -> ConnectArgs {
    ConnectArgs {
        protocol: Protocol::Centrifuge,
        urls: vec![format!("ws://{addr}/connection/websocket")],
        token_secret: SECRET.into(),
        without_token: false,
        cookie: None,
        connect_rate: 500.0,
        source_addresses: 4,
        first_client: 0,
    }
}

/// How clients of `protocol` reach the node: Centrifuge over a WebSocket,
/// or over SSE with its commands posted to `/emulation`.
fn bidirectional(protocol: Protocol, addr: std::net::SocketAddr) -> ConnectArgs {
    let url = match protocol {
        Protocol::Sse => format!("http://{addr}/connection/sse"),
        _ => format!("ws://{addr}/connection/websocket"),
    };
    ConnectArgs { protocol, urls: vec![url], ..connect_args(addr) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_delivers_every_publication_to_every_subscriber_of_its_channel() {
    let addr = herald().await;
    let args = FanoutArgs {
        connect: connect_args(addr),
        publish: PublishVia::Herald { addr, key: KEY.into() },
        subscribers: 20,
        channels: 2,
        rate: 200.0,
        duration: Duration::from_secs(1),
        payload_bytes: 32,
        // The node runs in this process.
        server_pid: Some(std::process::id()),
    };
    let result = fanout::run(&args).await.expect("the scenario runs");
    assert_eq!((result.connected, result.connect_failures), (20, 0));
    assert_eq!((result.published, result.publish_failures), (200, 0));
    assert_eq!(result.expected_deliveries, 200 * 10, "each channel has 10 subscribers");
    assert_eq!(result.delivered, result.expected_deliveries);
    assert!(result.anomalies.is_clean(), "{:?}", result.anomalies);
    assert_eq!(result.latency.samples, result.delivered);
    let cpu = result.server_cpu.expect("the server's pid was given");
    assert_eq!(cpu.deliveries, result.delivered, "every delivery falls in the window read");
    assert!(cpu.seconds >= 0.9, "the window spans the second of publishing: {cpu:?}");
    assert!(cpu.us_per_delivery >= cpu.user_us_per_delivery && cpu.user_us_per_delivery >= 0.0, "{cpu:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_speaks_protobuf_and_uni_directional_sse_too() {
    let addr = herald().await;
    for (protocol, url) in [
        (Protocol::CentrifugeProtobuf, format!("ws://{addr}/connection/websocket")),
        (Protocol::UniSse, format!("http://{addr}/connection/uni_sse")),
    ] {
        let args = FanoutArgs {
            connect: ConnectArgs { protocol, urls: vec![url], ..connect_args(addr) },
            publish: PublishVia::Herald { addr, key: KEY.into() },
            subscribers: 10,
            channels: 2,
            rate: 100.0,
            duration: Duration::from_secs(1),
            payload_bytes: 16,
            server_pid: None,
        };
        let result = fanout::run(&args).await.expect("the scenario runs");
        assert_eq!((result.connected, result.published), (10, 100), "{protocol:?}");
        assert_eq!(result.delivered, 100 * 5, "{protocol:?}: each channel has 5 subscribers");
        assert!(result.anomalies.is_clean(), "{protocol:?}: {:?}", result.anomalies);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deltas_rebuild_every_state_and_weigh_far_less_than_the_full_ones() {
    let addr = herald().await;
    let mut weights = Vec::new();
    for delta in [false, true] {
        let args = DeltasArgs {
            connect: connect_args(addr),
            publish: PublishVia::Herald { addr, key: KEY.into() },
            channel: format!("dashboard:smoke-{delta}"),
            subscribers: 5,
            delta,
            publications: 20,
            rate: 100.0,
            state_bytes: 4096,
        };
        let result = deltas::run(&args).await.expect("the scenario runs");
        assert_eq!((result.delivered, result.mismatched), (100, 0), "delta {delta}");
        assert_eq!(result.as_deltas, if delta { 95 } else { 0 });
        weights.push(result.bytes_per_delivery);
    }
    assert!(weights[1] * 4.0 < weights[0], "{weights:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_speaks_the_pusher_protocol_and_signs_its_api_calls() {
    let addr = herald().await;
    let args = FanoutArgs {
        connect: ConnectArgs {
            protocol: Protocol::Pusher,
            urls: vec![format!("ws://{addr}/app/bench-app-key?protocol=7")],
            ..connect_args(addr)
        },
        publish: PublishVia::Pusher {
            addr,
            app_id: "bench-app".into(),
            key: "bench-app-key".into(),
            secret: "bench-app-secret".into(),
        },
        subscribers: 10,
        channels: 2,
        rate: 100.0,
        duration: Duration::from_secs(1),
        payload_bytes: 16,
        server_pid: None,
    };
    let result = fanout::run(&args).await.expect("the scenario runs");
    assert_eq!((result.connected, result.published), (10, 100));
    assert_eq!(result.delivered, 100 * 5, "each channel has 5 subscribers");
    assert!(result.anomalies.is_clean(), "{:?}", result.anomalies);
    assert_eq!(result.server_cpu, None, "no server pid was given");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_subscribers_answer_every_protocols_heartbeats_and_miss_nothing() {
    // The node pings each second and disconnects a client that has not
    // answered within half a second: a subscriber that did not answer
    // would be gone within the run, and what it then missed would be lost.
    let addr = herald_with(|config| {
        config.client.ping_interval = Duration::from_secs(1);
        config.client.pong_timeout = Duration::from_millis(500);
        config.pusher.activity_timeout = Duration::from_secs(1);
        config.pusher.pong_timeout = Duration::from_millis(500);
    })
    .await;
    let pusher = PublishVia::Pusher {
        addr,
        app_id: "bench-app".into(),
        key: "bench-app-key".into(),
        secret: "bench-app-secret".into(),
    };
    for (protocol, url, publish) in [
        (
            Protocol::Centrifuge,
            format!("ws://{addr}/connection/websocket"),
            PublishVia::Herald { addr, key: KEY.into() },
        ),
        (
            Protocol::CentrifugeProtobuf,
            format!("ws://{addr}/connection/websocket"),
            PublishVia::Herald { addr, key: KEY.into() },
        ),
        (Protocol::Pusher, format!("ws://{addr}/app/bench-app-key?protocol=7"), pusher),
    ] {
        let args = FanoutArgs {
            connect: ConnectArgs { protocol, urls: vec![url], ..connect_args(addr) },
            publish,
            subscribers: 6,
            channels: 2,
            rate: 20.0,
            duration: Duration::from_millis(3500),
            payload_bytes: 16,
            server_pid: None,
        };
        let result = fanout::run(&args).await.expect("the scenario runs");
        assert_eq!((result.connected, result.published), (6, 70), "{protocol:?}");
        assert_eq!(result.delivered, 70 * 3, "{protocol:?}: each channel has 3 subscribers");
        assert!(result.anomalies.is_clean(), "{protocol:?}: {:?}", result.anomalies);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_members_each_receive_everything_said_in_their_room() {
    for protocol in [Protocol::Centrifuge, Protocol::Sse] {
        let addr = herald().await;
        let args = ChatArgs {
            connect: bidirectional(protocol, addr),
            namespace: "chat".into(),
            first_room: 0,
            rooms: 5,
            members_per_room: 4,
            rate_per_member: 10.0,
            duration: Duration::from_secs(1),
            latency_counts: false,
        };
        let result = chat::run(&args).await.expect("the scenario runs");
        assert_eq!(result.sent, 20 * 10, "{protocol:?}");
        assert_eq!(result.expected_deliveries, 20 * 10 * 4, "each message reaches the 4 members of its room");
        assert_eq!(result.delivered, result.expected_deliveries, "{protocol:?}");
        assert!(result.anomalies.is_clean(), "{protocol:?}: {:?}", result.anomalies);
        assert!(result.latency_counts.is_empty(), "the histogram only when asked for");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_chats_with_disjoint_rooms_share_one_server_and_report_their_histograms() {
    let addr = herald().await;
    let share = |first_room| ChatArgs {
        connect: connect_args(addr),
        namespace: "chat".into(),
        first_room,
        rooms: 3,
        members_per_room: 4,
        rate_per_member: 10.0,
        duration: Duration::from_secs(1),
        latency_counts: true,
    };
    let (first, second) = (share(0), share(3));
    let (first, second) = tokio::join!(chat::run(&first), chat::run(&second));
    for result in [first.expect("the first share runs"), second.expect("the second share runs")] {
        assert_eq!(result.delivered, 12 * 10 * 4, "each message reaches the 4 members of its room, no one else");
        assert!(result.anomalies.is_clean(), "{:?}", result.anomalies);
        let counted: u64 = result.latency_counts.iter().map(|(_, count)| count).sum();
        assert_eq!(counted, result.delivered, "every delivery is in the histogram");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_holds_its_connections_and_reads_the_server_process() {
    let addr = herald().await;
    let args = ConnectionsArgs {
        connect: connect_args(addr),
        count: 50,
        hold: Duration::from_millis(300),
        server_pid: Some(std::process::id()),
    };
    let result = connections::run(&args).await.expect("the scenario runs");
    assert_eq!((result.connected, result.connect_failures), (50, 0));
    assert!(result.server_rss_kib_per_connection.is_some());
    assert!(result.server_idle_cpu_percent.is_some());
    assert_eq!(result.lost_during_hold, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulated_sse_clients_subscribe_and_answer_their_heartbeats_by_posting() {
    // Pings every 100 ms, to be answered within 300: a client that did not
    // post its answers would be closed well within the hold.
    let addr = herald_with(|config| {
        config.client.ping_interval = Duration::from_millis(100);
        config.client.pong_timeout = Duration::from_millis(300);
    })
    .await;
    let args = ConnectionsArgs {
        connect: ConnectArgs {
            protocol: Protocol::Sse,
            urls: vec![format!("http://{addr}/connection/sse")],
            ..connect_args(addr)
        },
        count: 20,
        hold: Duration::from_millis(1500),
        server_pid: None,
    };
    let result = connections::run(&args).await.expect("the scenario runs");
    assert_eq!((result.connected, result.connect_failures), (20, 0));
    assert_eq!(result.lost_during_hold, Some(0), "every connection is still open after the hold");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_brings_every_client_back_with_nothing_lost() {
    for protocol in [Protocol::Centrifuge, Protocol::Sse] {
        let addr = herald().await;
        let args = StormArgs {
            connect: bidirectional(protocol, addr),
            publish: PublishVia::Herald { addr, key: KEY.into() },
            namespace: "feed".into(),
            clients: 20,
            channels: 2,
            rate: 100.0,
            storm_after: Duration::from_millis(500),
            publish_for: Duration::from_secs(1),
            kill_pid: None,
            drain_pid: None,
            failover_urls: Vec::new(),
        };
        let result = storm::run(&args).await.expect("the scenario runs");
        assert_eq!((result.dropped, result.reconnected, result.not_recovered), (20, 20, 0), "{protocol:?}");
        assert_eq!(result.published, 150);
        assert_eq!(
            result.delivered, result.expected_deliveries,
            "{protocol:?}: every client got every publication of its channel: {result:?}"
        );
        assert!(result.anomalies.is_clean(), "{protocol:?}: {:?}", result.anomalies);
        let spread = [
            result.seconds_to_half_back,
            result.seconds_to_90_percent_back,
            result.seconds_to_99_percent_back,
            result.seconds_to_all_reconnected,
        ];
        assert!(spread.iter().all(|seconds| seconds.is_finite() && *seconds > 0.0), "{protocol:?}: {spread:?}");
        assert!(spread.windows(2).all(|pair| pair[0] <= pair[1] + 0.01), "{protocol:?}: in order: {spread:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_spread_over_worker_processes_add_up() {
    let addr = herald().await;
    let url = format!("ws://{addr}/connection/websocket");
    let pid = std::process::id().to_string();
    let report = herald_bench(&[
        &["connections", "--url", &url, "--token-secret", SECRET],
        &["--count", "30", "--workers", "3", "--hold", "300ms", "--server-pid", &pid],
    ])
    .await;
    assert_eq!(report["result"]["connected"], 30, "{report}");
    assert_eq!(report["result"]["connect_failures"], 0);
    assert!(report["result"]["server_rss_kib_per_connection"].is_number());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_over_worker_processes_merges_every_workers_deliveries_and_checks() {
    let addr = herald().await;
    let (url, api) = (format!("ws://{addr}/connection/websocket"), addr.to_string());
    let report = herald_bench(&[
        &["fanout", "--url", &url, "--token-secret", SECRET, "--api", &api, "--api-key", KEY],
        &["--subscribers", "31", "--channels", "2", "--rate", "40", "--duration", "1s", "--workers", "3"],
        // The node runs in this process.
        &["--server-pid", &std::process::id().to_string()],
    ])
    .await;
    let result = &report["result"];
    assert_eq!(result["connected"], 31, "{report}");
    // 40 publications alternate over 2 channels; 16 subscribers follow one, 15 the other.
    assert_eq!(result["expected_deliveries"], 20 * 16 + 20 * 15, "{report}");
    assert_eq!(result["delivered"], result["expected_deliveries"], "{report}");
    assert_eq!(result["latency"]["samples"], result["delivered"], "every worker's latencies merged: {report}");
    assert_eq!(result["anomalies"], serde_json::json!({"lost": 0, "duplicated": 0, "reordered": 0}));
    assert_eq!(
        result["server_cpu"]["deliveries"], result["delivered"],
        "the window read holds every delivery: {report}"
    );
    assert!(result["server_cpu"]["us_per_delivery"].as_f64().is_some_and(|us| us >= 0.0), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_floor_delivers_every_frame_to_every_subscriber_in_order_and_measures_after_the_warm_up() {
    let (load, length) = (["--subscribers", "40", "--rate", "200"], ["--duration", "1s", "--warmup", "500ms"]);
    let report = herald_bench(&[&["floor"], &load, &length]).await;
    let result = &report["result"];
    assert_eq!(result["published"], 300, "1.5 s at 200/s: {report}");
    assert_eq!(result["expected_deliveries"], 300 * 40);
    assert_eq!(result["delivered"], result["expected_deliveries"], "{report}");
    assert_eq!(result["out_of_order"], 0, "{report}");
    assert_eq!(result["latency"]["samples"], 200 * 40, "only the 200 publications after the warm-up: {report}");
    assert!(result["writer_system_cores"].is_number() && result["reader_system_cores"].is_number());
}
