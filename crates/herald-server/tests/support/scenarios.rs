//! Cluster scenarios every backplane must pass the same way: the tests of
//! each backplane build their nodes and call these.

use serde_json::json;

use super::{Client, TestServer};

/// A client of `node` for `user`, subscribed to `channel`.
pub(crate) async fn subscribed(node: &TestServer, user: &str, channel: &str) -> Client {
    let mut client = node.connected(user).await;
    client.subscribe(channel).await;
    client
}

/// Publications through the nodes in turn reach a reader on every node
/// once each, in offset order.
pub(crate) async fn a_publication_reaches_every_node_once_and_in_order(nodes: &[TestServer]) {
    let mut readers = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        readers.push(subscribed(node, &format!("reader{i}"), "feed:news").await);
    }
    for n in 1..=50 {
        nodes[n % nodes.len()].publish("feed:news", json!({"n": n})).await;
    }
    for reader in &mut readers {
        for n in 1..=50u64 {
            let push = reader.next_push().await;
            assert_eq!(
                (push["pub"]["data"]["n"].as_u64(), push["pub"]["offset"].as_u64()),
                (Some(n), Some(n)),
                "{push}"
            );
        }
    }
    nodes[1].publish("feed:news", json!({"n": "marker"})).await;
    for reader in &mut readers {
        assert_eq!(reader.next_push().await["pub"]["data"]["n"], "marker", "nothing was delivered twice");
    }
}

/// A reader on the last node, which then dies, recovers on the first
/// exactly what it missed.
pub(crate) async fn a_subscriber_whose_node_dies_recovers_on_another(mut nodes: Vec<TestServer>) {
    let mut reader = subscribed(nodes.last().expect("nodes"), "reader", "feed:live").await;
    nodes[0].publish("feed:live", json!(1)).await;
    assert_eq!(reader.next_push().await["pub"]["offset"], 1);
    let (_, position) = nodes[0].api("history", json!({"channel": "feed:live", "limit": 0})).await;
    let epoch = position["result"]["epoch"].as_str().unwrap().to_owned();

    drop(nodes.pop()); // the reader's node is gone
    for n in 2..=4 {
        nodes[0].publish("feed:live", json!(n)).await;
    }
    let mut moved = nodes[0].connected("reader").await;
    let reply = moved
        .command(json!({"id": 5, "subscribe": {"channel": "feed:live", "recover": true, "offset": 1, "epoch": epoch}}))
        .await;
    assert_eq!(reply["subscribe"]["recovered"], true, "{reply}");
    let replayed: Vec<u64> =
        reply["subscribe"]["publications"].as_array().unwrap().iter().map(|p| p["offset"].as_u64().unwrap()).collect();
    assert_eq!(replayed, [2, 3, 4], "exactly what was missed, in order");
}

/// Presence, the channel list, the node list and control commands answer
/// for the cluster on any node; `engine` names the engine.
pub(crate) async fn the_cluster_answers_as_one(nodes: &[TestServer], engine: &str) {
    let _ann_a = subscribed(&nodes[0], "ann", "room:x").await;
    let _ann_b = subscribed(&nodes[1], "ann", "room:x").await;
    let _bob_b = subscribed(&nodes[1], "bob", "room:x").await;
    for node in nodes {
        let (_, stats) = node.api("presence_stats", json!({"channel": "room:x"})).await;
        assert_eq!(stats["result"], json!({"num_clients": 3, "num_users": 2}), "on {}", node.addr);
        let (_, presence) = node.api("presence", json!({"channel": "room:x"})).await;
        assert_eq!(presence["result"]["presence"].as_object().map(|p| p.len()), Some(3));
        let (_, channels) = node.api("channels", json!({})).await;
        assert_eq!(channels["result"]["channels"], json!({"room:x": {"num_clients": 3}}), "on {}", node.addr);
    }
    let (_, info) = nodes[0].api("info", json!({})).await;
    assert_eq!(info["result"]["engine"], engine);
    assert_eq!(info["result"]["nodes"].as_array().map(Vec::len), Some(nodes.len()), "{info}");

    let mut on_b = nodes[1].connected("42").await;
    let mut bystander = nodes[1].connected("43").await;
    nodes[0].api("subscribe", json!({"user": "42", "channel": "chat:vip"})).await;
    assert_eq!(on_b.next_push().await, json!({"channel": "chat:vip", "subscribe": {}}));
    nodes[0].publish("chat:vip", json!("hello")).await;
    assert_eq!(on_b.next_push().await["pub"]["data"], "hello");
    nodes[0].api("disconnect", json!({"user": "42"})).await;
    assert_eq!(on_b.closed().await.0, 3503);
    bystander.assert_alive().await;
}
