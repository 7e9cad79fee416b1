//! The node's heartbeat: every `presence_update_interval` it refreshes the
//! presence entries of its connections (each every few beats, as
//! `presence` decides) and its occupancy entries and sweeps what dead
//! nodes and connections left behind. Its entry in the
//! node registry is renewed on its own, every `presence_update_interval`
//! or [`NODE_INFO_EVERY`], whichever is sooner: operators watch its counts
//! and rates, and one small write every few seconds costs the engine
//! nothing. Both hold the hub weakly and end with it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use herald_engine::{ChannelName, NodeInfo};

use super::Hub;

/// How often, at most, the node's registry entry is renewed.
pub const NODE_INFO_EVERY: Duration = Duration::from_secs(5);

/// Beats and registers once now, then each every interval in a task of
/// its own: the registry entry every [`NODE_INFO_EVERY`] at most.
pub(super) async fn start(hub: &Arc<Hub>) {
    hub.beat().await;
    hub.register_node().await;
    let every = hub.config.presence_update_interval;
    repeat(hub, every, |hub| async move { hub.beat().await });
    repeat(hub, every.min(NODE_INFO_EVERY), |hub| async move { hub.register_node().await });
}

/// Runs `act` every `every` (the first time one interval from now) in a
/// task of its own, for as long as the hub lives.
fn repeat<F, Fut>(hub: &Arc<Hub>, every: Duration, act: F)
where
    F: Fn(Arc<Hub>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let weak = Arc::downgrade(hub);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let Some(hub) = weak.upgrade() else { return };
            act(hub).await;
        }
    });
}

impl Hub {
    async fn beat(&self) {
        self.presence.refresh(|| self.present_entries()).await;
        let local: Vec<ChannelName> = self.channels.list(None).into_iter().map(|(channel, _)| channel).collect();
        self.occupancy.refresh(&local, |channel| self.channels.count(channel)).await;
        let rules = self.rules();
        let present = local
            .into_iter()
            .filter_map(|channel| {
                let options = rules.resolve(&channel).ok()?;
                options.presence.then_some((channel, options.join_leave))
            })
            .collect();
        self.presence.sweep_expired(present).await;
    }

    /// Every local connection's presence entry whose join was told:
    /// (channel, who it is there).
    pub(super) fn present_entries(&self) -> Vec<(ChannelName, herald_engine::ClientInfo)> {
        let mut entries = Vec::new();
        let rules = self.rules();
        self.registry.for_each(|conn| {
            // Collected first: `info_in` takes the subscriptions lock itself.
            let present: Vec<ChannelName> = conn
                .subscriptions()
                .keys()
                .filter(|channel| rules.resolve(channel).is_ok_and(|o| o.presence))
                .filter(|channel| self.presence.announced(channel, &conn.client))
                .cloned()
                .collect();
            for channel in present {
                let info = conn.info_in(&channel);
                entries.push((channel, info));
            }
        });
        entries
    }

    /// Renews this node's registry entry with its current counts.
    pub(super) async fn register_node(&self) {
        let stats = self.stats();
        let updated_at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX));
        let info = NodeInfo {
            id: self.config.node.clone(),
            name: self.config.node_name.clone(),
            updated_at_ms,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            num_clients: stats.clients,
            num_users: stats.users,
            num_channels: stats.channels,
            num_subscriptions: stats.subscriptions,
            uptime: self.started.elapsed().as_secs(),
            num_publications: self.counters.published.load(Ordering::Relaxed),
            num_deliveries: self.counters.delivered.load(Ordering::Relaxed),
            relay_key: self.relay.get().and_then(|relay| relay.relay_key()),
        };
        let ttl = self.config.presence_update_interval.saturating_mul(3);
        if let Err(error) = self.engine.nodes().register_node(&info, ttl).await {
            tracing::warn!(%error, "node registry heartbeat failed");
        }
    }
}
