//! Every engine call timed and its failures counted, whatever the engine:
//! each part of the node's engine is wrapped in a [`Metered`] that reports
//! to the node's [`Metrics`] under the call's name (a fixed set).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use herald_engine::{
    Arrival, Broker, ChannelName, ClientInfo, Control, Departure, EngineError, EventHandler, ExpiredEntry, Health,
    History, HistoryOptions, HistoryQuery, HistoryResult, NodeId, NodeInfo, NodeRegistry, NodeSubscribers, Occupancy,
    OccupancyChange, PartWrapper, Presence, PresenceEvent, PresenceStats, Publication, PublishOptions, PublishResult,
    Swept,
};

use super::Metrics;

/// Wraps an engine's parts so that their calls are measured.
pub(crate) struct Metering(pub(crate) Arc<Metrics>);

impl PartWrapper for Metering {
    fn broker(&self, part: Arc<dyn Broker>) -> Arc<dyn Broker> {
        Arc::new(Metered { part, metrics: self.0.clone() })
    }
    fn history(&self, part: Arc<dyn History>) -> Arc<dyn History> {
        Arc::new(Metered { part, metrics: self.0.clone() })
    }
    fn presence(&self, part: Arc<dyn Presence>) -> Arc<dyn Presence> {
        Arc::new(Metered { part, metrics: self.0.clone() })
    }
    fn occupancy(&self, part: Arc<dyn Occupancy>) -> Arc<dyn Occupancy> {
        Arc::new(Metered { part, metrics: self.0.clone() })
    }
    fn nodes(&self, part: Arc<dyn NodeRegistry>) -> Arc<dyn NodeRegistry> {
        Arc::new(Metered { part, metrics: self.0.clone() })
    }
}

/// One part of an engine, measured.
#[derive(Debug)]
struct Metered<T: ?Sized> {
    part: Arc<T>,
    metrics: Arc<Metrics>,
}

impl<T: ?Sized> Metered<T> {
    async fn timed<R>(
        &self,
        call: &'static str,
        work: impl Future<Output = Result<R, EngineError>>,
    ) -> Result<R, EngineError> {
        let started = Instant::now();
        let outcome = work.await;
        self.metrics.engine_call(call, started.elapsed(), outcome.is_err());
        outcome
    }
}

#[async_trait]
impl Broker for Metered<dyn Broker> {
    async fn start(&self, handler: Arc<dyn EventHandler>) -> Result<(), EngineError> {
        self.part.start(handler).await
    }
    async fn publish(
        &self,
        channel: &ChannelName,
        publication: Publication,
        options: &PublishOptions,
    ) -> Result<PublishResult, EngineError> {
        self.timed("publish", self.part.publish(channel, publication, options)).await
    }
    async fn publish_presence(&self, channel: &ChannelName, event: PresenceEvent) -> Result<(), EngineError> {
        self.timed("publish_presence", self.part.publish_presence(channel, event)).await
    }
    async fn subscribe(&self, channel: &ChannelName) -> Result<(), EngineError> {
        self.timed("subscribe", self.part.subscribe(channel)).await
    }
    async fn unsubscribe(&self, channel: &ChannelName) -> Result<(), EngineError> {
        self.timed("unsubscribe", self.part.unsubscribe(channel)).await
    }
    async fn send_control(&self, command: Control) -> Result<(), EngineError> {
        self.timed("send_control", self.part.send_control(command)).await
    }
    async fn health(&self) -> Health {
        self.part.health().await
    }
    fn dropped(&self) -> u64 {
        self.part.dropped()
    }
}

#[async_trait]
impl History for Metered<dyn History> {
    async fn history(
        &self,
        channel: &ChannelName,
        query: &HistoryQuery,
        options: &HistoryOptions,
    ) -> Result<HistoryResult, EngineError> {
        self.timed("history", self.part.history(channel, query, options)).await
    }
    async fn remove_history(&self, channel: &ChannelName) -> Result<(), EngineError> {
        self.timed("remove_history", self.part.remove_history(channel)).await
    }
}

#[async_trait]
impl Presence for Metered<dyn Presence> {
    async fn add_presence(
        &self,
        channel: &ChannelName,
        info: &ClientInfo,
        ttl: Duration,
    ) -> Result<Arrival, EngineError> {
        self.timed("add_presence", self.part.add_presence(channel, info, ttl)).await
    }
    async fn remove_presence(&self, channel: &ChannelName, info: &ClientInfo) -> Result<Departure, EngineError> {
        self.timed("remove_presence", self.part.remove_presence(channel, info)).await
    }
    async fn presence(&self, channel: &ChannelName) -> Result<Vec<ClientInfo>, EngineError> {
        self.timed("presence", self.part.presence(channel)).await
    }
    async fn presence_stats(&self, channel: &ChannelName) -> Result<PresenceStats, EngineError> {
        self.timed("presence_stats", self.part.presence_stats(channel)).await
    }
    async fn expire_presence(&self, channel: &ChannelName) -> Result<Vec<ExpiredEntry>, EngineError> {
        self.timed("expire_presence", self.part.expire_presence(channel)).await
    }
    async fn refresh_presence(&self, entries: &[(ChannelName, ClientInfo)], ttl: Duration) -> Vec<EngineError> {
        let started = Instant::now();
        let failed = self.part.refresh_presence(entries, ttl).await;
        self.metrics.engine_call("refresh_presence", started.elapsed(), !failed.is_empty());
        failed
    }
    async fn expire_presence_of(&self, channels: &[ChannelName]) -> Swept {
        let started = Instant::now();
        let swept = self.part.expire_presence_of(channels).await;
        self.metrics.engine_call("expire_presence_of", started.elapsed(), !swept.failed.is_empty());
        swept
    }
}

#[async_trait]
impl Occupancy for Metered<dyn Occupancy> {
    async fn occupy(
        &self,
        channel: &ChannelName,
        node: &NodeId,
        subscribers: usize,
        ttl: Duration,
    ) -> Result<OccupancyChange, EngineError> {
        self.timed("occupy", self.part.occupy(channel, node, subscribers, ttl)).await
    }
    async fn vacate(&self, channel: &ChannelName, node: &NodeId) -> Result<OccupancyChange, EngineError> {
        self.timed("vacate", self.part.vacate(channel, node)).await
    }
    async fn subscribers(&self, channel: &ChannelName) -> Result<Vec<NodeSubscribers>, EngineError> {
        self.timed("subscribers", self.part.subscribers(channel)).await
    }
    async fn occupied_channels(&self) -> Result<Vec<ChannelName>, EngineError> {
        self.timed("occupied_channels", self.part.occupied_channels()).await
    }
    async fn expire_vacated(&self) -> Result<Vec<ChannelName>, EngineError> {
        self.timed("expire_vacated", self.part.expire_vacated()).await
    }
}

#[async_trait]
impl NodeRegistry for Metered<dyn NodeRegistry> {
    async fn register_node(&self, info: &NodeInfo, ttl: Duration) -> Result<(), EngineError> {
        self.timed("register_node", self.part.register_node(info, ttl)).await
    }
    async fn nodes(&self) -> Result<Vec<NodeInfo>, EngineError> {
        self.timed("nodes", self.part.nodes()).await
    }
}
