//! The Redis engine's broker and history: publishing runs one script that
//! assigns the offset, appends to history and broadcasts; pub/sub carries
//! joins, leaves and control commands.

use std::time::Duration;

use async_trait::async_trait;

use herald_engine::{
    Broker, ChannelName, Control, EngineError, Epoch, EventHandler, Health, History, HistoryOptions, HistoryQuery,
    HistoryResult, Offset, PresenceEvent, Publication, PublishOptions, PublishResult, StreamPosition,
};

use crate::backplane::Backplane;
use crate::{millis, unavailable, wire, RedisEngine, CONTROL_ROUTE};

#[async_trait]
impl<B: Backplane> Broker for RedisEngine<B> {
    async fn start(&self, handler: std::sync::Arc<dyn EventHandler>) -> Result<(), EngineError> {
        let pushes = self.pushes.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(pushes) = pushes else { return Ok(()) };
        let _ = self.handler.set(handler.clone());
        self.dispatch(pushes, handler);
        self.backplane.subscribe_control(CONTROL_ROUTE, &self.keys.control_channel()).await.map_err(unavailable)
    }

    async fn publish(
        &self,
        channel: &ChannelName,
        publication: Publication,
        options: &PublishOptions,
    ) -> Result<PublishResult, EngineError> {
        let history =
            options.history.unwrap_or(HistoryOptions { size: 0, ttl: Duration::ZERO, meta_ttl: Duration::ZERO });
        let idempotency_ttl = match &options.idempotency_key {
            Some(_) => millis(options.idempotency_window),
            None => 0,
        };
        let key = options.idempotency_key.as_deref().unwrap_or("");
        let (duplicate, result): (u8, String) = self
            .scripts
            .publish
            .key(self.keys.meta(channel))
            .key(self.keys.history(channel))
            .key(self.keys.idempotency(channel, key))
            .arg(wire::publication_body(&publication))
            .arg(history.size)
            .arg(millis(history.ttl))
            .arg(millis(history.meta_ttl.max(history.ttl)))
            .arg(idempotency_ttl)
            .arg(self.keys.pubsub(channel))
            .arg(Epoch::fresh().as_str())
            .arg(B::PUBLISH)
            .arg(self.backplane.generation())
            .invoke_async(&mut self.connection(channel.as_str()))
            .await
            .map_err(unavailable)?;
        let (offset, epoch) = result.split_once('\n').unwrap_or(("0", ""));
        let position = StreamPosition { offset: Offset::new(offset.parse().unwrap_or(0)), epoch: Epoch::new(epoch) };
        Ok(PublishResult { position, duplicate: duplicate == 1 })
    }

    async fn publish_presence(&self, channel: &ChannelName, event: PresenceEvent) -> Result<(), EngineError> {
        let _: i64 = redis::cmd(B::PUBLISH)
            .arg(self.keys.pubsub(channel))
            .arg(wire::presence_message(&event))
            .query_async(&mut self.connection(channel.as_str()))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn subscribe(&self, channel: &ChannelName) -> Result<(), EngineError> {
        self.backplane.subscribe(channel.as_str(), &self.keys.pubsub(channel)).await.map_err(unavailable)
    }

    async fn unsubscribe(&self, channel: &ChannelName) -> Result<(), EngineError> {
        self.backplane.unsubscribe(channel.as_str(), &self.keys.pubsub(channel)).await.map_err(unavailable)
    }

    async fn send_control(&self, command: Control) -> Result<(), EngineError> {
        let json = serde_json::to_vec(&command).map_err(|e| EngineError::Unavailable(e.to_string()))?;
        let _: i64 = redis::cmd("PUBLISH")
            .arg(self.keys.control_channel())
            .arg(json)
            .query_async(&mut self.connection(CONTROL_ROUTE))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn health(&self) -> Health {
        match self.backplane.ping().await {
            Ok(()) => Health::Ready,
            Err(e) => Health::NotReady { reason: format!("redis: {e}") },
        }
    }

    fn dropped(&self) -> u64 {
        self.dropped.total()
    }
}

#[async_trait]
impl<B: Backplane> History for RedisEngine<B> {
    async fn history(
        &self,
        channel: &ChannelName,
        query: &HistoryQuery,
        options: &HistoryOptions,
    ) -> Result<HistoryResult, EngineError> {
        let (after, newest) = crate::history_needed(query);
        let result: (u64, String, Vec<Vec<u8>>) = self
            .scripts
            .history
            .key(self.keys.meta(channel))
            .key(self.keys.history(channel))
            .arg(millis(options.meta_ttl.max(options.ttl)))
            .arg(Epoch::fresh().as_str())
            .arg(self.backplane.generation())
            .arg(after)
            .arg(newest)
            .invoke_async(&mut self.connection(channel.as_str()))
            .await
            .map_err(unavailable)?;
        Ok(Self::decode_history(result, query))
    }

    async fn remove_history(&self, channel: &ChannelName) -> Result<(), EngineError> {
        let _: i64 = redis::cmd("DEL")
            .arg(self.keys.meta(channel))
            .arg(self.keys.history(channel))
            .query_async(&mut self.connection(channel.as_str()))
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
