//! Occupancy's cases: the first node occupies, the last vacates, once
//! each; refreshes keep entries alive; dead nodes' channels are reported.

use std::time::Duration;

use super::{channel, Clock, Recorder};
use crate::engine::Engine;
use crate::ids::NodeId;
use crate::occupancy::{NodeSubscribers, OccupancyChange};

const TTL: Duration = Duration::from_secs(2);

fn counts(entries: &[(&str, usize)]) -> Vec<NodeSubscribers> {
    entries
        .iter()
        .map(|(node, subscribers)| NodeSubscribers { node: NodeId::new(node), subscribers: *subscribers })
        .collect()
}

/// A channel is occupied by its first node's entry and vacated by the
/// removal of its last; the counts and the index follow.
pub async fn the_first_node_occupies_and_the_last_vacates(engine: Engine, _: Clock) {
    let _events = Recorder::start(&engine).await;
    let occupancy = engine.occupancy();
    let ch = channel("conformance:occupied");
    let (a, b) = (NodeId::new("a"), NodeId::new("b"));

    assert_eq!(occupancy.occupy(&ch, &a, 2, TTL).await.expect("occupy"), OccupancyChange::Occupied);
    assert_eq!(occupancy.occupy(&ch, &b, 1, TTL).await.expect("occupy"), OccupancyChange::Unchanged);
    assert_eq!(occupancy.occupy(&ch, &a, 3, TTL).await.expect("update"), OccupancyChange::Unchanged, "an update");
    let mut live = occupancy.subscribers(&ch).await.expect("subscribers");
    live.sort_by(|x, y| x.node.cmp(&y.node));
    assert_eq!(live, counts(&[("a", 3), ("b", 1)]));
    assert_eq!(occupancy.occupied_channels().await.expect("channels"), std::slice::from_ref(&ch));

    assert_eq!(occupancy.vacate(&ch, &a).await.expect("vacate"), OccupancyChange::Unchanged, "b still serves it");
    assert_eq!(occupancy.vacate(&ch, &a).await.expect("vacate"), OccupancyChange::Unchanged, "a is gone already");
    assert_eq!(occupancy.vacate(&ch, &b).await.expect("vacate"), OccupancyChange::Vacated);
    assert!(occupancy.subscribers(&ch).await.expect("subscribers").is_empty());
    assert!(occupancy.occupied_channels().await.expect("channels").is_empty(), "a vacated channel is not listed");
    assert!(occupancy.expire_vacated().await.expect("sweep").is_empty(), "and not reported again");
}

/// Of two nodes occupying (or vacating) a channel at once, exactly one
/// reports the change.
pub async fn concurrent_first_and_last_nodes_report_once(engine: Engine, _: Clock) {
    let _events = Recorder::start(&engine).await;
    let occupancy = engine.occupancy();
    let ch = channel("conformance:race");
    let (a, b) = (NodeId::new("a"), NodeId::new("b"));
    let (first, second) = tokio::join!(occupancy.occupy(&ch, &a, 1, TTL), occupancy.occupy(&ch, &b, 1, TTL));
    let changes = [first.expect("occupy"), second.expect("occupy")];
    let occupied = changes.iter().filter(|c| **c == OccupancyChange::Occupied).count();
    assert_eq!(occupied, 1, "one node occupies: {changes:?}");
    let (first, second) = tokio::join!(occupancy.vacate(&ch, &a), occupancy.vacate(&ch, &b));
    let changes = [first.expect("vacate"), second.expect("vacate")];
    let vacated = changes.iter().filter(|c| **c == OccupancyChange::Vacated).count();
    assert_eq!(vacated, 1, "one node vacates: {changes:?}");
}

/// A node that refreshes its entry keeps it past the first ttl; a node
/// that stopped refreshing (it died) drops out, and its expired entry no
/// longer keeps the channel occupied when the live node leaves.
pub async fn a_refreshed_entry_outlives_its_ttl_and_sweeps_dead_nodes(engine: Engine, clock: Clock) {
    let _events = Recorder::start(&engine).await;
    let occupancy = engine.occupancy();
    let ch = channel("conformance:refresh");
    let (alive, dead) = (NodeId::new("alive"), NodeId::new("dead"));
    occupancy.occupy(&ch, &alive, 1, TTL).await.expect("occupy");
    occupancy.occupy(&ch, &dead, 4, TTL).await.expect("occupy");

    clock.advance(TTL / 2).await;
    assert_eq!(occupancy.occupy(&ch, &alive, 1, TTL).await.expect("refresh"), OccupancyChange::Unchanged);
    clock.advance(TTL / 2 + Duration::from_millis(500)).await;
    assert_eq!(occupancy.subscribers(&ch).await.expect("subscribers"), counts(&[("alive", 1)]));
    assert_eq!(occupancy.occupy(&ch, &alive, 2, TTL).await.expect("refresh"), OccupancyChange::Unchanged);
    assert!(occupancy.expire_vacated().await.expect("sweep").is_empty(), "the channel is still served");
    assert_eq!(occupancy.vacate(&ch, &alive).await.expect("vacate"), OccupancyChange::Vacated);
}

/// When every node serving a channel died, its index entry expires and
/// one caller learns that the channel was vacated.
pub async fn a_channel_whose_nodes_all_died_is_reported_vacated_once(engine: Engine, clock: Clock) {
    let _events = Recorder::start(&engine).await;
    let occupancy = engine.occupancy();
    let (orphan, served) = (channel("conformance:orphan"), channel("conformance:served"));
    occupancy.occupy(&orphan, &NodeId::new("dead"), 1, TTL).await.expect("occupy");
    occupancy.occupy(&served, &NodeId::new("alive"), 1, TTL).await.expect("occupy");

    clock.advance(TTL / 2).await;
    occupancy.occupy(&served, &NodeId::new("alive"), 1, TTL).await.expect("refresh");
    clock.advance(TTL / 2 + Duration::from_millis(500)).await;
    assert_eq!(
        occupancy.occupied_channels().await.expect("channels"),
        std::slice::from_ref(&served),
        "the orphan is not listed"
    );
    assert_eq!(occupancy.expire_vacated().await.expect("sweep"), [orphan], "the orphan is reported vacated");
    assert!(occupancy.expire_vacated().await.expect("sweep").is_empty(), "and only once");
    assert_eq!(occupancy.occupied_channels().await.expect("channels"), [served]);
}
