//! The figures behind the admin UI's charts: every [`SAMPLE_EVERY`] the
//! node reads the cluster's nodes as the `info` API does, and keeps the
//! last [`SAMPLES`] totals (connections, subscriptions, publications and
//! deliveries per second), so a page opened now shows the last minutes.
//!
//! Rates come from each node's own counters and the time it took them
//! (`num_publications` and `num_deliveries` at `updated_at`): a node's
//! rate is its counters' change over its own clock, and a node whose
//! figures did not move since the last sample keeps its last rate.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use herald_core::Hub;
use herald_engine::{NodeId, NodeInfo};

/// How often the cluster is sampled.
pub(crate) const SAMPLE_EVERY: Duration = herald_core::NODE_INFO_EVERY;
/// Samples kept: ten minutes' worth.
pub(crate) const SAMPLES: usize = 120;

/// The cluster at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub(crate) struct Sample {
    /// Unix milliseconds.
    pub(crate) t: u64,
    pub(crate) connections: u64,
    pub(crate) subscriptions: u64,
    /// Publications accepted per second, over every node.
    pub(crate) published: f64,
    /// Publications queued to clients per second, over every node.
    pub(crate) delivered: f64,
}

/// One node's counters when last seen, and the rates they gave.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub(crate) struct NodeRates {
    #[serde(skip)]
    updated_at_ms: u64,
    #[serde(skip)]
    publications: u64,
    #[serde(skip)]
    deliveries: u64,
    pub(crate) published: f64,
    pub(crate) delivered: f64,
}

/// The samples, and each live node's rates.
#[derive(Debug, Default)]
pub(crate) struct Series {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    samples: VecDeque<Sample>,
    nodes: HashMap<NodeId, NodeRates>,
}

/// What `GET /admin/series` answers.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Snapshot {
    pub(crate) every_ms: u64,
    pub(crate) samples: Vec<Sample>,
    /// By node id.
    pub(crate) nodes: HashMap<String, NodeRates>,
}

impl Series {
    /// Samples `hub`'s cluster now and then every [`SAMPLE_EVERY`], for as
    /// long as `series` is alive.
    pub(crate) fn start(series: &Arc<Series>, hub: &Arc<Hub>) {
        let weak: Weak<Series> = Arc::downgrade(series);
        let hub = Arc::downgrade(hub);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(SAMPLE_EVERY);
            loop {
                ticks.tick().await;
                let (Some(series), Some(hub)) = (weak.upgrade(), hub.upgrade()) else { return };
                // As registered: each node renews its entry every SAMPLE_EVERY.
                match hub.registered_nodes().await {
                    Ok(nodes) => series.record(&nodes, now_ms()),
                    Err(error) => tracing::debug!(%error, "admin chart: the cluster's nodes could not be read"),
                }
            }
        });
    }

    /// Adds a sample of `nodes`, taken at `t` (unix milliseconds).
    pub(crate) fn record(&self, nodes: &[NodeInfo], t: u64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut sample = Sample { t, ..Sample::default() };
        let mut rates = HashMap::with_capacity(nodes.len());
        for node in nodes {
            let previous = state.nodes.get(&node.id).copied();
            let now = rates_of(previous, node);
            sample.connections = sample.connections.saturating_add(node.num_clients as u64);
            sample.subscriptions = sample.subscriptions.saturating_add(node.num_subscriptions as u64);
            sample.published += now.published;
            sample.delivered += now.delivered;
            rates.insert(node.id.clone(), now);
        }
        // Nodes that left are forgotten: the map holds the live ones only.
        state.nodes = rates;
        if state.samples.len() >= SAMPLES {
            state.samples.pop_front();
        }
        state.samples.push_back(sample);
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        Snapshot {
            every_ms: u64::try_from(SAMPLE_EVERY.as_millis()).unwrap_or(u64::MAX),
            samples: state.samples.iter().copied().collect(),
            nodes: state.nodes.iter().map(|(id, rates)| (id.as_str().to_owned(), *rates)).collect(),
        }
    }
}

/// `node`'s rates given what was seen of it before.
fn rates_of(previous: Option<NodeRates>, node: &NodeInfo) -> NodeRates {
    let mut now = NodeRates {
        updated_at_ms: node.updated_at_ms,
        publications: node.num_publications,
        deliveries: node.num_deliveries,
        ..NodeRates::default()
    };
    let Some(previous) = previous else { return now };
    let elapsed_ms = node.updated_at_ms.saturating_sub(previous.updated_at_ms);
    if elapsed_ms == 0 {
        // Not renewed since: its last rates still stand.
        now.published = previous.published;
        now.delivered = previous.delivered;
        return now;
    }
    let per_second = |later: u64, earlier: u64| later.saturating_sub(earlier) as f64 * 1000.0 / elapsed_ms as f64;
    now.published = per_second(node.num_publications, previous.publications);
    now.delivered = per_second(node.num_deliveries, previous.deliveries);
    now
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, at_ms: u64, clients: usize, publications: u64, deliveries: u64) -> NodeInfo {
        NodeInfo {
            id: NodeId::new(id),
            name: id.to_owned(),
            updated_at_ms: at_ms,
            version: "test".into(),
            num_clients: clients,
            num_users: clients,
            num_channels: 1,
            num_subscriptions: clients,
            uptime: 1,
            num_publications: publications,
            num_deliveries: deliveries,
            relay_key: None,
        }
    }

    #[test]
    fn rates_are_each_nodes_counters_over_its_own_clock_summed_over_the_cluster() {
        let series = Series::default();
        series.record(&[node("a", 10_000, 3, 100, 1_000), node("b", 12_000, 4, 0, 0)], 20_000);
        // a: 50 publications over 5 s; b: 30 over 2 s.
        series.record(&[node("a", 15_000, 5, 150, 1_500), node("b", 14_000, 4, 30, 300)], 25_000);

        let snapshot = series.snapshot();
        let last = snapshot.samples.last().copied().unwrap();
        assert_eq!((last.connections, last.subscriptions), (9, 9));
        assert_eq!((last.published, last.delivered), (10.0 + 15.0, 100.0 + 150.0));
        assert_eq!(snapshot.nodes["b"].published, 15.0);
        assert_eq!(snapshot.samples.first().unwrap().published, 0.0, "the first sight of a node has no rate yet");
    }

    #[test]
    fn a_node_not_renewed_since_keeps_its_rate_and_one_that_left_is_forgotten() {
        let series = Series::default();
        series.record(&[node("a", 10_000, 1, 0, 0), node("b", 10_000, 1, 0, 0)], 10_000);
        series.record(&[node("a", 12_000, 1, 20, 0), node("b", 10_000, 1, 0, 0)], 15_000);
        series.record(&[node("a", 12_000, 1, 20, 0)], 20_000);

        let snapshot = series.snapshot();
        assert_eq!(snapshot.samples.last().unwrap().published, 10.0);
        assert!(!snapshot.nodes.contains_key("b"));
    }

    #[test]
    fn only_the_last_ten_minutes_are_kept() {
        let series = Series::default();
        for n in 0..(SAMPLES as u64 + 5) {
            series.record(&[node("a", n * 5_000, 1, n, n)], n * 5_000);
        }
        let samples = series.snapshot().samples;
        assert_eq!(samples.len(), SAMPLES);
        assert_eq!(samples.first().unwrap().t, 5 * 5_000);
    }
}
