//! Engine parts for the hub's tests: the memory engine's, with a history
//! read the test holds at a gate, and a broker whose deliveries go
//! through a handler the test puts between the engine and the node (and
//! whose subscription to one channel may wait at a gate).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use herald_engine::{
    Broker, ChannelName, Control, EngineError, EventHandler, Health, History, HistoryOptions, HistoryQuery,
    HistoryResult, MemoryEngine, PresenceEvent, Publication, PublishOptions, PublishResult,
};
use tokio::sync::Semaphore;

/// The memory engine's history, but each read waits at a gate the test
/// opens one read at a time, in the order the reads arrived; a read may
/// be made to fail, and once answered, it first publishes what the test
/// left in `then` (which reaches the node between the read and whatever
/// the read's caller does next).
#[derive(Debug)]
pub(super) struct GatedHistory {
    memory: Arc<MemoryEngine>,
    pub(super) gate: Arc<Semaphore>,
    pub(super) arrived: Arc<AtomicUsize>,
    pub(super) fail: Arc<AtomicBool>,
    pub(super) then: Arc<Mutex<Vec<Publication>>>,
}

impl GatedHistory {
    pub(super) fn over(memory: &Arc<MemoryEngine>) -> Self {
        Self {
            memory: memory.clone(),
            gate: Arc::new(Semaphore::new(0)),
            arrived: Arc::default(),
            fail: Arc::default(),
            then: Arc::default(),
        }
    }
}

#[async_trait::async_trait]
impl History for GatedHistory {
    async fn history(
        &self,
        channel: &ChannelName,
        query: &HistoryQuery,
        options: &HistoryOptions,
    ) -> Result<HistoryResult, EngineError> {
        self.arrived.fetch_add(1, Ordering::SeqCst);
        self.gate.acquire().await.expect("the gate stays open").forget();
        if self.fail.load(Ordering::SeqCst) {
            return Err(EngineError::Unavailable("the history read failed".into()));
        }
        let read = self.memory.history(channel, query, options).await;
        let then = std::mem::take(&mut *self.then.lock().unwrap_or_else(|e| e.into_inner()));
        for publication in then {
            let options = PublishOptions { history: Some(*options), ..PublishOptions::default() };
            self.memory.publish(channel, publication, &options).await?;
        }
        read
    }
    async fn remove_history(&self, channel: &ChannelName) -> Result<(), EngineError> {
        self.memory.remove_history(channel).await
    }
}

/// Puts a handler of the test's between the engine and the node: given
/// the node's, it returns the one the engine delivers to.
pub(super) type Between = Box<dyn Fn(Arc<dyn EventHandler>) -> Arc<dyn EventHandler> + Send + Sync>;

/// The memory engine's broker, its deliveries going through [`Between`];
/// the node's subscription to one channel may be made to wait at a gate
/// (a backplane slow to answer it: see [`WrappedBroker::stalling`]).
pub(super) struct WrappedBroker {
    memory: Arc<MemoryEngine>,
    between: Between,
    stalled: Option<Stalled>,
}

/// A channel whose engine subscription waits at `gate`; `arrived` is set
/// when it does.
pub(super) struct Stalled {
    pub(super) channel: ChannelName,
    pub(super) gate: Arc<Semaphore>,
    pub(super) arrived: Arc<AtomicBool>,
}

impl WrappedBroker {
    pub(super) fn over(memory: &Arc<MemoryEngine>, between: Between) -> Self {
        Self { memory: memory.clone(), between, stalled: None }
    }

    /// Makes the node's subscription to `stalled.channel` wait at its gate.
    pub(super) fn stalling(self, stalled: Stalled) -> Self {
        Self { stalled: Some(stalled), ..self }
    }
}

impl std::fmt::Debug for WrappedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WrappedBroker").finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl Broker for WrappedBroker {
    async fn start(&self, handler: Arc<dyn EventHandler>) -> Result<(), EngineError> {
        self.memory.start((self.between)(handler)).await
    }
    async fn publish(&self, c: &ChannelName, p: Publication, o: &PublishOptions) -> Result<PublishResult, EngineError> {
        self.memory.publish(c, p, o).await
    }
    async fn publish_presence(&self, c: &ChannelName, e: PresenceEvent) -> Result<(), EngineError> {
        self.memory.publish_presence(c, e).await
    }
    async fn subscribe(&self, c: &ChannelName) -> Result<(), EngineError> {
        if let Some(stalled) = self.stalled.as_ref().filter(|stalled| stalled.channel == *c) {
            stalled.arrived.store(true, Ordering::SeqCst);
            stalled.gate.acquire().await.expect("the gate stays open").forget();
        }
        Broker::subscribe(&*self.memory, c).await
    }
    async fn unsubscribe(&self, c: &ChannelName) -> Result<(), EngineError> {
        Broker::unsubscribe(&*self.memory, c).await
    }
    async fn send_control(&self, c: Control) -> Result<(), EngineError> {
        self.memory.send_control(c).await
    }
    async fn health(&self) -> Health {
        self.memory.health().await
    }
    fn dropped(&self) -> u64 {
        self.memory.dropped()
    }
}
