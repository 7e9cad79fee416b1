//! The node registry's case: nodes that stop heartbeating drop out.

use std::time::Duration;

use super::{Clock, Recorder};
use crate::engine::Engine;
use crate::ids::NodeId;
use crate::message::NodeInfo;

/// A node is listed while its last registration lives, with its last counts.
pub async fn the_node_registry_forgets_silent_nodes(engine: Engine, clock: Clock) {
    let _events = Recorder::start(&engine).await;
    let registry = engine.nodes();
    let node = |id: &str, clients: usize| NodeInfo {
        id: NodeId::new(id),
        name: format!("host-{id}"),
        updated_at_ms: 1_700_000_000_000,
        version: "test".into(),
        num_clients: clients,
        num_users: clients,
        num_channels: 0,
        num_subscriptions: 0,
        uptime: 0,
        num_publications: 7,
        num_deliveries: 70,
        relay_key: Some("ab".repeat(32)),
    };
    let ttl = Duration::from_secs(2);
    registry.register_node(&node("a", 1), ttl).await.expect("register a");
    registry.register_node(&node("b", 2), ttl).await.expect("register b");
    assert_eq!(registry.nodes().await.expect("nodes").len(), 2);

    clock.advance(ttl / 2).await;
    registry.register_node(&node("a", 3), ttl).await.expect("heartbeat a");
    clock.advance(ttl / 2 + Duration::from_millis(500)).await;
    let live = registry.nodes().await.expect("nodes");
    assert_eq!(live, vec![node("a", 3)], "b stopped heartbeating and dropped out");
}
