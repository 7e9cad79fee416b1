//! The `Broker` part over core NATS.
//!
//! Publications without history travel on the channel's core subject.
//! Those with history (or an idempotency key) are appended to a JetStream
//! stream, which republishes them to the same subject (see `history`); a
//! channel's reader puts republished publications back in offset order
//! (see `reorder`).
//!
//! Each channel a node has subscribers for is one NATS subscription, read
//! by a task of its own in delivery order; unsubscribing ends it. Control
//! commands travel on one subject every node subscribes to at start (NATS
//! delivers a client's own messages to its subscriptions, so the sender
//! gets its command too). When the connection to NATS drops, the client
//! reconnects and resubscribes by itself; messages sent meanwhile are
//! lost, so the node is told with `EngineEvent::Interrupted` when the
//! connection drops (its positioned subscribers are ended, to recover) and
//! again when it comes back (for any that subscribed in between).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::task::JoinHandle;

use herald_engine::wire;
use herald_engine::{
    Broker, ChannelName, Control, EngineError, EngineEvent, EventHandler, Health, PresenceEvent, Publication,
    PublishOptions, PublishResult, StreamPosition,
};

use crate::history::{NatsHistory, StreamSettings};
use crate::records::{unavailable, within};
use crate::reorder::Reorder;
use crate::subjects::Subjects;

/// How to reach NATS.
#[derive(Debug, Clone)]
pub struct NatsSettings {
    /// `nats://host:port` addresses of the cluster's servers.
    pub addresses: Vec<String>,
    /// The first tokens of every subject (`herald`).
    pub prefix: String,
    /// How long one request to NATS (a publish, a read) may take.
    pub command_timeout: Duration,
    /// How JetStream keeps history streams.
    pub streams: StreamSettings,
}

/// The node's handler, once the hub starts the broker.
type Handler = Arc<OnceLock<Arc<dyn EventHandler>>>;

/// Publications, joins and leaves, and control commands over core NATS.
pub struct NatsBroker {
    client: async_nats::Client,
    subjects: Subjects,
    history: Arc<NatsHistory>,
    handler: Handler,
    timeout: Duration,
    /// The reading task of each channel the node is subscribed to.
    channels: Mutex<HashMap<ChannelName, JoinHandle<()>>>,
    control: Mutex<Option<JoinHandle<()>>>,
    /// What the client dropped for subscriptions read too slowly.
    dropped: Arc<Dropped>,
}

impl std::fmt::Debug for NatsBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBroker").field("subjects", &self.subjects).finish_non_exhaustive()
    }
}

impl NatsBroker {
    /// Connects to NATS. Fails if no server of `settings.addresses` answers.
    pub async fn connect(settings: &NatsSettings) -> Result<Self, EngineError> {
        let handler: Handler = Arc::default();
        let on_event = handler.clone();
        let lost = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(Dropped::default());
        let counted = dropped.clone();
        let options = async_nats::ConnectOptions::new()
            .name("herald")
            .connection_timeout(settings.command_timeout)
            .event_callback(move |event| {
                let (handler, lost, dropped) = (on_event.clone(), lost.clone(), counted.clone());
                async move { on_connection_event(&event, &handler, &lost, &dropped) }
            });
        let addresses: Vec<async_nats::ServerAddr> = settings
            .addresses
            .iter()
            .map(|address| address.parse().map_err(|e| unavailable(format!("{address}: {e}"))))
            .collect::<Result<_, _>>()?;
        let client = options.connect(addresses).await.map_err(unavailable)?;
        let history =
            Arc::new(NatsHistory::new(client.clone(), &settings.prefix, settings.streams, settings.command_timeout));
        Ok(Self {
            client,
            history,
            subjects: Subjects::new(&settings.prefix),
            handler,
            timeout: settings.command_timeout,
            channels: Mutex::default(),
            control: Mutex::default(),
            dropped,
        })
    }

    /// The connection, for the other parts on the same NATS.
    pub fn client(&self) -> async_nats::Client {
        self.client.clone()
    }

    /// The history the broker appends to (the engine's `History` part).
    pub fn history(&self) -> Arc<NatsHistory> {
        self.history.clone()
    }

    /// Fails at once while the connection is down, rather than queueing
    /// until the command timeout: a publish then gets its error in time to
    /// be retried elsewhere.
    fn connected(&self) -> Result<(), EngineError> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            _ => Err(unavailable("not connected to any server (reconnecting)")),
        }
    }

    fn handler(&self) -> Result<Arc<dyn EventHandler>, EngineError> {
        self.handler.get().cloned().ok_or(EngineError::NotStarted)
    }

    /// Publishes `payload` on `subject` and waits until it reached the
    /// server (or the timeout passed).
    async fn send(&self, subject: String, payload: Vec<u8>) -> Result<(), EngineError> {
        let sent = async {
            self.client.publish(subject, Bytes::from(payload)).await.map_err(unavailable)?;
            self.client.flush().await.map_err(unavailable)
        };
        within(self.timeout, sent).await
    }
}

impl NatsBroker {
    /// Waits until the server has handled everything this node sent so
    /// far: a message to a fresh inbox comes back through the server only
    /// after the commands before it. (A flush only empties the client's
    /// buffer; a subscription is live, and a publish from another node
    /// reaches it, once the server has it.)
    async fn round_trip(&self) -> Result<(), EngineError> {
        let inbox = self.client.new_inbox();
        let mut echo = self.client.subscribe(inbox.clone()).await.map_err(unavailable)?;
        let came_back = async {
            self.client.publish(inbox, Bytes::new()).await.map_err(unavailable)?;
            echo.next().await.ok_or_else(|| unavailable("the connection closed"))?;
            Ok(())
        };
        within(self.timeout, came_back).await
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Messages the NATS client dropped for subscriptions this node read too
/// slowly: since the last warning, and when that was, and in all.
#[derive(Default)]
struct Dropped {
    warned: std::sync::Mutex<(u64, Option<tokio::time::Instant>)>,
    total: AtomicU64,
}

/// The least time between two warnings of dropped messages.
const DROPPED_WARNING_EVERY: Duration = Duration::from_secs(10);

impl Dropped {
    /// Counts one drop, and warns (at most every [`DROPPED_WARNING_EVERY`])
    /// with how many there were: the client reports each one.
    fn one(&self) {
        self.total.fetch_add(1, Ordering::Relaxed);
        let mut state = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        state.0 = state.0.saturating_add(1);
        if state.1.is_none_or(|at| at.elapsed() >= DROPPED_WARNING_EVERY) {
            tracing::warn!(
                dropped = state.0,
                "nats dropped messages for subscriptions this node read too slowly: the node is overloaded \
                 (positioned subscribers see the gap and recover, others lose them)"
            );
            *state = (0, Some(tokio::time::Instant::now()));
        }
    }
}

/// Reports a lost connection, and again the connection coming back: what
/// was sent meanwhile never reached this node. Warns of dropped messages.
fn on_connection_event(event: &async_nats::Event, handler: &Handler, lost: &AtomicBool, dropped: &Dropped) {
    match event {
        async_nats::Event::Disconnected => {
            // Positioned subscribers stop now (to recover once NATS is back)
            // rather than wait on a stream that has stopped.
            if !lost.swap(true, Ordering::Relaxed) {
                tracing::warn!("lost the connection to nats; reconnecting");
                if let Some(handler) = handler.get() {
                    handler.handle(EngineEvent::Interrupted);
                }
            }
        }
        async_nats::Event::Connected => {
            if lost.swap(false, Ordering::Relaxed) {
                tracing::warn!("reconnected to nats; asking positioned subscribers to recover");
                if let Some(handler) = handler.get() {
                    handler.handle(EngineEvent::Interrupted);
                }
            }
        }
        async_nats::Event::SlowConsumer(_) => dropped.one(),
        other => tracing::debug!(event = %other, "nats connection event"),
    }
}

#[async_trait]
impl Broker for NatsBroker {
    async fn start(&self, handler: Arc<dyn EventHandler>) -> Result<(), EngineError> {
        if self.handler.set(handler.clone()).is_err() {
            return Ok(());
        }
        let mut commands = self.client.subscribe(self.subjects.control()).await.map_err(unavailable)?;
        self.round_trip().await?;
        let task = tokio::spawn(async move {
            while let Some(message) = commands.next().await {
                match serde_json::from_slice::<Control>(&message.payload) {
                    Ok(command) => handler.handle(EngineEvent::Control(command)),
                    Err(error) => tracing::warn!(%error, "unreadable control command from nats"),
                }
            }
        });
        *self.control.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        Ok(())
    }

    async fn publish(
        &self,
        channel: &ChannelName,
        publication: Publication,
        options: &PublishOptions,
    ) -> Result<PublishResult, EngineError> {
        self.connected()?;
        if let Some(history) = &options.history {
            return self.history.append(channel, publication, history, options).await;
        }
        if let Some(key) = &options.idempotency_key {
            return self.history.publish_once(channel, &publication, key, options.idempotency_window).await;
        }
        self.send(self.subjects.channel(channel), wire::publication_message(&publication)).await?;
        Ok(PublishResult::default())
    }

    async fn publish_presence(&self, channel: &ChannelName, event: PresenceEvent) -> Result<(), EngineError> {
        self.connected()?;
        self.send(self.subjects.channel(channel), wire::presence_message(&event)).await
    }

    async fn subscribe(&self, channel: &ChannelName) -> Result<(), EngineError> {
        let handler = self.handler()?;
        if self.channels.lock().unwrap_or_else(|e| e.into_inner()).contains_key(channel) {
            return Ok(());
        }
        let mut messages = self.client.subscribe(self.subjects.channel(channel)).await.map_err(unavailable)?;
        self.round_trip().await?;
        self.history.reader_listens(channel);
        let (name, history) = (channel.clone(), self.history.clone());
        let task = tokio::spawn(async move {
            let mut order = Reorder::default();
            loop {
                let deadline = order.deadline();
                let ready = tokio::select! {
                    message = messages.next() => {
                        let Some(message) = message else { break };
                        if message.payload.is_empty() {
                            // A history stream's marker, republished: not a message.
                            continue;
                        }
                        match wire::decode(message.payload) {
                            Ok(decoded) => {
                                if let Some(headers) = &message.headers {
                                    let at = StreamPosition { offset: decoded.offset, epoch: decoded.epoch.clone() };
                                    history.observed(headers, &at);
                                }
                                if decoded.offset.get() > 0 && !order.started() {
                                    if let Some(start) = history.reader_starts(&name) {
                                        order.start_at(start);
                                    }
                                }
                                order.take(decoded, tokio::time::Instant::now())
                            }
                            Err(error) => {
                                tracing::warn!(channel = %name, %error, "dropped an unreadable message");
                                continue;
                            }
                        }
                    }
                    _ = sleep_until_some(deadline) => order.release(),
                };
                for message in ready {
                    handler.handle(message.into_event(name.clone()));
                }
            }
        });
        let replaced = self.channels.lock().unwrap_or_else(|e| e.into_inner()).insert(channel.clone(), task);
        if let Some(earlier) = replaced {
            earlier.abort();
        }
        Ok(())
    }

    async fn unsubscribe(&self, channel: &ChannelName) -> Result<(), EngineError> {
        // Ending the reading task drops the subscription, which unsubscribes.
        if let Some(task) = self.channels.lock().unwrap_or_else(|e| e.into_inner()).remove(channel) {
            task.abort();
        }
        self.history.reader_stops(channel);
        Ok(())
    }

    async fn send_control(&self, command: Control) -> Result<(), EngineError> {
        let payload = serde_json::to_vec(&command).map_err(unavailable)?;
        self.send(self.subjects.control(), payload).await
    }

    async fn health(&self) -> Health {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Health::Ready,
            state => Health::NotReady { reason: format!("nats connection is {state:?}") },
        }
    }

    /// As the client reports them: a lower bound, for in a burst of drops
    /// its event queue (128 events) overflows and some go unreported.
    fn dropped(&self) -> u64 {
        self.dropped.total.load(Ordering::Relaxed)
    }
}

impl Drop for NatsBroker {
    fn drop(&mut self) {
        for (_, task) in self.channels.lock().unwrap_or_else(|e| e.into_inner()).drain() {
            task.abort();
        }
        if let Some(task) = self.control.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod dropped_tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn dropped_messages_are_warned_of_at_once_then_counted_until_the_next_warning() {
        let dropped = Dropped::default();
        let state = |d: &Dropped| *d.warned.lock().unwrap();
        dropped.one();
        let warned_at = state(&dropped).1.expect("the first drop is warned of");
        assert_eq!(state(&dropped).0, 0, "and counted in that warning");
        dropped.one();
        dropped.one();
        assert_eq!(state(&dropped), (2, Some(warned_at)), "within the interval: counted, not warned");
        tokio::time::advance(DROPPED_WARNING_EVERY).await;
        dropped.one();
        assert_eq!(state(&dropped).0, 0, "the next warning tells the three");
        assert!(state(&dropped).1 > Some(warned_at));
        assert_eq!(dropped.total.load(Ordering::Relaxed), 4, "the total, for the metrics, counts every one");
    }
}
