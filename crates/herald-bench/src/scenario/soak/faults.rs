//! The faults a soak injects, one every `fault_every`, in a fixed cycle so
//! that even a short run meets each kind: a node SIGKILLed and started
//! again, clients cut in a burst, clients stalled, Redis SIGKILLed and
//! started again with its data, and Redis replaced by an empty one.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::IteratorRandom;
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use super::cluster::Cluster;
use super::follower::Order;
use crate::scenario::progress;

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    KillNode,
    CutClients,
    StallClients,
    RestartRedis,
    WipeRedis,
}

/// The faults in turn. A Redis fault ends every subscription (2500), so a
/// stall comes right after one: the stalled clients' subscriptions then
/// live on through the next faults, and the server finds them too slow.
const CYCLE: [Fault; 8] = [
    Fault::KillNode,
    Fault::RestartRedis,
    Fault::StallClients,
    Fault::CutClients,
    Fault::KillNode,
    Fault::WipeRedis,
    Fault::StallClients,
    Fault::CutClients,
];

/// How faults are injected.
#[derive(Debug, Clone)]
pub struct FaultPlan {
    pub every: Duration,
    /// How long a killed node stays down, and Redis between kill and start.
    pub node_down: Duration,
    pub redis_down: Duration,
    /// The share of clients one burst cuts.
    pub cut_share: f64,
    /// How many stallable clients one stall picks, and for how long.
    pub stall_share: f64,
    pub stall_for: Duration,
}

/// The faults injected, by kind.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FaultsInjected {
    pub node_kills: u64,
    pub redis_restarts: u64,
    /// Restarts with Redis's data gone: every stream starts a new epoch.
    pub redis_wipes: u64,
    pub cut_bursts: u64,
    pub clients_cut: u64,
    pub stalls: u64,
    pub clients_stalled: u64,
}

impl FaultsInjected {
    pub fn total(&self) -> u64 {
        self.node_kills + self.redis_restarts + self.redis_wipes + self.cut_bursts + self.stalls
    }
}

/// The clients faults reach: each one's orders, and whether it can stall
/// (a small receive buffer).
#[derive(Debug)]
pub struct Clients {
    pub orders: Vec<mpsc::UnboundedSender<Order>>,
    pub stallable: Vec<usize>,
}

/// Injects faults until `stop`, then brings every process back; hands the
/// cluster back with what was injected. `injected` is kept current for
/// progress lines.
pub async fn inject(
    mut cluster: Cluster,
    plan: FaultPlan,
    clients: Clients,
    mut rng: StdRng,
    mut stop: watch::Receiver<bool>,
    injected: watch::Sender<FaultsInjected>,
) -> anyhow::Result<Cluster> {
    let mut next_node = 0;
    for fault in CYCLE.iter().cycle() {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            _ = tokio::time::sleep(plan.every) => {}
        }
        match fault {
            Fault::KillNode => {
                let node = next_node % cluster.len().max(1);
                next_node += 1;
                progress(&format!("soak: SIGKILL node {node}"));
                cluster.kill_node(node);
                injected.send_modify(|f| f.node_kills += 1);
                tokio::time::sleep(plan.node_down).await;
                cluster.revive_node(node).await?;
            }
            Fault::RestartRedis | Fault::WipeRedis => {
                let wipe = *fault == Fault::WipeRedis;
                progress(&format!("soak: SIGKILL redis{}", if wipe { ", and start it empty" } else { "" }));
                cluster.stop_redis();
                injected.send_modify(|f| match wipe {
                    true => f.redis_wipes += 1,
                    false => f.redis_restarts += 1,
                });
                tokio::time::sleep(plan.redis_down).await;
                cluster.start_redis_again(wipe).await?;
            }
            Fault::CutClients => {
                let count = share(clients.orders.len(), plan.cut_share);
                let chosen = (0..clients.orders.len()).choose_multiple(&mut rng, count);
                progress(&format!("soak: cutting {count} clients"));
                for i in &chosen {
                    let _ = clients.orders[*i].send(Order::Cut);
                }
                injected.send_modify(|f| {
                    f.cut_bursts += 1;
                    f.clients_cut += count as u64;
                });
            }
            Fault::StallClients => {
                let count = share(clients.stallable.len(), plan.stall_share);
                let chosen = clients.stallable.iter().choose_multiple(&mut rng, count);
                progress(&format!("soak: stalling {count} clients for {:?}", plan.stall_for));
                for i in chosen {
                    let _ = clients.orders[*i].send(Order::Stall(plan.stall_for));
                }
                injected.send_modify(|f| {
                    f.stalls += 1;
                    f.clients_stalled += count as u64;
                });
            }
        }
    }
    for node in 0..cluster.len() {
        cluster.revive_node(node).await?;
    }
    Ok(cluster)
}

/// `share` of `n`, at least one when there is any.
fn share(n: usize, share: f64) -> usize {
    ((n as f64 * share).round() as usize).clamp(n.min(1), n)
}
