//! The memory engine: one node, no setup, nothing shared.
//!
//! Broadcast is a direct call into the node's handler. Publications to one
//! channel are delivered under that channel's lock, so concurrent publishers
//! cannot reorder a channel's stream.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use async_trait::async_trait;

use crate::engine::{Engine, EngineError, EventHandler, Health, PublishOptions};
use crate::ids::ChannelName;
use crate::message::{Control, EngineEvent, Publication, StreamPosition};

/// How many locks serialize publishing; channels hash onto them.
const PUBLISH_LOCK_SHARDS: usize = 64;

/// The embedded single-node engine.
pub struct MemoryEngine {
    handler: OnceLock<Arc<dyn EventHandler>>,
    subscribed: RwLock<HashSet<ChannelName>>,
    publish_locks: Box<[Mutex<()>]>,
}

impl std::fmt::Debug for MemoryEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryEngine").finish_non_exhaustive()
    }
}

impl Default for MemoryEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryEngine {
    pub fn new() -> Self {
        Self {
            handler: OnceLock::new(),
            subscribed: RwLock::new(HashSet::new()),
            publish_locks: (0..PUBLISH_LOCK_SHARDS).map(|_| Mutex::new(())).collect(),
        }
    }

    fn handler(&self) -> Result<&Arc<dyn EventHandler>, EngineError> {
        self.handler.get().ok_or(EngineError::NotStarted)
    }

    fn publish_lock(&self, channel: &ChannelName) -> &Mutex<()> {
        use std::hash::{BuildHasher, RandomState};
        static HASHER: OnceLock<RandomState> = OnceLock::new();
        let hash = HASHER.get_or_init(RandomState::new).hash_one(channel);
        &self.publish_locks[hash as usize % self.publish_locks.len()]
    }
}

#[async_trait]
impl Engine for MemoryEngine {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn start(&self, handler: Arc<dyn EventHandler>) -> Result<(), EngineError> {
        // A second start keeps the first handler: one node owns the engine.
        let _ = self.handler.set(handler);
        Ok(())
    }

    async fn publish(
        &self,
        channel: &ChannelName,
        publication: Publication,
        _options: &PublishOptions,
    ) -> Result<StreamPosition, EngineError> {
        let handler = self.handler()?;
        let _order = self
            .publish_lock(channel)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let interested = self
            .subscribed
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(channel);
        if interested {
            handler.handle(EngineEvent::Publication {
                channel: channel.clone(),
                publication: Arc::new(publication),
            });
        }
        Ok(StreamPosition::default())
    }

    async fn subscribe(&self, channel: &ChannelName) -> Result<(), EngineError> {
        self.subscribed
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(channel.clone());
        Ok(())
    }

    async fn unsubscribe(&self, channel: &ChannelName) -> Result<(), EngineError> {
        self.subscribed
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(channel);
        Ok(())
    }

    async fn send_control(&self, command: Control) -> Result<(), EngineError> {
        self.handler()?.handle(EngineEvent::Control(command));
        Ok(())
    }

    async fn health(&self) -> Health {
        match self.handler.get() {
            Some(_) => Health::Ready,
            None => Health::NotReady {
                reason: "engine not started".into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_memory_engine_passes_the_conformance_suite() {
        crate::conformance::run_all(|| async { Arc::new(MemoryEngine::new()) as Arc<dyn Engine> })
            .await;
    }
}
