//! A soak client: follows its channels through every fault as a Centrifuge
//! SDK would. It reconnects to another node when its connection drops,
//! resubscribes with its last position (recovering what it missed),
//! resubscribes when the server ends a subscription with a code that asks
//! for it (2500 "insufficient state"), and retries temporary errors. What
//! it receives goes through its [`Follow`] checkers.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::checker::{Anomalies, Follow, Note, Subscribed, Truth};
use super::cluster::TOKEN_SECRET;
use crate::client::{BenchClient, ConnectError, Event, Protocol, Target};
use crate::scenario::token;

/// What the fault injector tells a client to do.
#[derive(Debug, Clone, Copy)]
pub enum Order {
    /// Drop the connection without a goodbye, as a network failure would.
    Cut,
    /// Stop reading for this long, as a stalled client would.
    Stall(Duration),
}

/// Counters every client adds to, read for progress lines.
#[derive(Debug, Default)]
pub struct Counters {
    pub deliveries: AtomicU64,
    pub connects: AtomicU64,
    pub recovered: AtomicU64,
    pub not_recovered: AtomicU64,
    pub resubscribes: AtomicU64,
    pub temporary_errors: AtomicU64,
}

/// What one client has seen, shared with the soak for its final check.
#[derive(Debug)]
pub struct Seen {
    /// One per channel the client follows, in its channel list's order.
    pub follows: Vec<Follow>,
    pub anomalies: Anomalies,
    /// The first few anomalies, described.
    pub notes: Vec<Note>,
    /// How this client's connections ended, by reason.
    pub ended: BTreeMap<String, u64>,
}

/// The most notes a client keeps.
const NOTES: usize = 5;

/// Everything clients share.
#[derive(Debug)]
pub struct Shared {
    pub targets: Vec<Target>,
    pub truth: Truth,
    pub counters: Counters,
}

/// One client of the soak.
#[derive(Debug)]
pub struct Follower {
    pub id: usize,
    /// Its channels: (number, name).
    pub channels: Vec<(u32, String)>,
    /// A small socket receive buffer, so that stalling soon holds up the server.
    pub receive_buffer: Option<u32>,
    pub seen: Arc<Mutex<Seen>>,
}

impl Follower {
    pub fn new(id: usize, channels: Vec<(u32, String)>, receive_buffer: Option<u32>) -> Self {
        let follows = channels.iter().map(|(number, _)| Follow::new(*number)).collect();
        let seen = Seen { follows, anomalies: Anomalies::default(), notes: Vec::new(), ended: BTreeMap::new() };
        Self { id, channels, receive_buffer, seen: Arc::new(Mutex::new(seen)) }
    }

    /// Follows the channels until `stop`, obeying `orders`.
    pub async fn run(
        self,
        shared: Arc<Shared>,
        mut orders: mpsc::UnboundedReceiver<Order>,
        stop: watch::Receiver<bool>,
    ) {
        let mut attempt = self.id;
        while !*stop.borrow() {
            let Some(client) = self.connect(&shared, &mut attempt, &stop).await else { break };
            shared.counters.connects.fetch_add(1, Ordering::Relaxed);
            let end = Session { follower: &self, shared: &shared, client, pending: HashMap::new(), retry: Vec::new() }
                .run(&mut orders, stop.clone())
                .await;
            let mut seen = self.lock();
            let Seen { follows, anomalies, notes, ended } = &mut *seen;
            for follow in follows.iter_mut() {
                follow.ended(false, anomalies, notes);
            }
            *ended.entry(end).or_default() += 1;
            notes.truncate(NOTES);
            attempt += 1;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connects to some node, trying each in turn with a growing, jittered
    /// pause between rounds, as client SDKs back off.
    async fn connect(&self, shared: &Shared, attempt: &mut usize, stop: &watch::Receiver<bool>) -> Option<BenchClient> {
        let mut pause = Duration::from_millis(50 + (self.id % 50) as u64);
        let token = token(TOKEN_SECRET, &format!("soak-{}", self.id));
        loop {
            if *stop.borrow() {
                return None;
            }
            let target = &shared.targets[*attempt % shared.targets.len()];
            let connecting = BenchClient::connect_with(target, None, Protocol::Centrifuge, &token, self.receive_buffer);
            if let Ok(Ok(client)) = tokio::time::timeout(Duration::from_secs(5), connecting).await {
                return Some(client);
            }
            *attempt += 1;
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }
}

/// One connection of a follower.
struct Session<'a> {
    follower: &'a Follower,
    shared: &'a Shared,
    client: BenchClient,
    /// Subscribe commands awaiting replies: id → the channel's index.
    pending: HashMap<u32, usize>,
    /// Channels to subscribe again, and when.
    retry: Vec<(Instant, usize)>,
}

impl Session<'_> {
    /// Runs until the connection ends, the client is cut, or `stop`; says
    /// which.
    async fn run(mut self, orders: &mut mpsc::UnboundedReceiver<Order>, mut stop: watch::Receiver<bool>) -> String {
        let all: Vec<usize> = (0..self.follower.channels.len()).collect();
        if let Err(error) = self.subscribe(&all).await {
            return ending(&error);
        }
        let mut events = Vec::new();
        let mut stalled_until: Option<Instant> = None;
        loop {
            let next_retry = self.retry.iter().map(|(at, _)| *at).min();
            tokio::select! {
                () = stopped(&mut stop) => return "the soak ended".into(),
                order = orders.recv(), if !orders.is_closed() => match order {
                    Some(Order::Cut) => {
                        self.client.abort();
                        return "cut by the soak".into();
                    }
                    Some(Order::Stall(length)) => stalled_until = Some(Instant::now() + length),
                    // The faults are over.
                    None => {}
                },
                _ = sleep_until_some(stalled_until), if stalled_until.is_some() => stalled_until = None,
                _ = sleep_until_some(next_retry), if next_retry.is_some() && stalled_until.is_none() => {
                    let now = Instant::now();
                    let due: Vec<usize> = self.retry.iter().filter(|(at, _)| *at <= now).map(|(_, i)| *i).collect();
                    self.retry.retain(|(at, _)| *at > now);
                    if let Err(error) = self.subscribe(&due).await {
                        return ending(&error);
                    }
                }
                read = self.client.next_events(&mut events), if stalled_until.is_none() => match read {
                    Ok(()) => {
                        if let Err(code) = self.take(&events) {
                            return format!("disconnect push {code:?}");
                        }
                    }
                    Err(error) => return ending(&error),
                },
            }
        }
    }

    /// Sends subscribe commands for the channels at `indices`, each from
    /// its last position.
    async fn subscribe(&mut self, indices: &[usize]) -> Result<(), ConnectError> {
        if indices.is_empty() {
            return Ok(());
        }
        let commands: Vec<Value> = {
            let mut seen = self.follower.lock();
            indices
                .iter()
                .filter_map(|i| {
                    let (_, name) = self.follower.channels.get(*i)?;
                    let mut subscribe = json!({"channel": name, "recoverable": true});
                    if let Some((offset, epoch)) = seen.follows.get_mut(*i)?.subscribing() {
                        subscribe["recover"] = json!(true);
                        subscribe["offset"] = json!(offset);
                        subscribe["epoch"] = json!(&*epoch);
                    }
                    Some(json!({"subscribe": subscribe}))
                })
                .collect()
        };
        let first = self.client.send_commands(commands).await?;
        for (n, i) in indices.iter().enumerate() {
            self.pending.insert(first + n as u32, *i);
        }
        Ok(())
    }

    /// Takes what one message brought. `Err` ends the session (with the
    /// close code of a disconnect push).
    fn take(&mut self, events: &[Event]) -> Result<(), Option<u16>> {
        let (shared, follower) = (self.shared, self.follower);
        let mut seen = follower.lock();
        let Seen { follows, anomalies, notes, .. } = &mut *seen;
        for event in events {
            match event {
                Event::Publication(publication) => {
                    shared.counters.deliveries.fetch_add(1, Ordering::Relaxed);
                    match follower.index_of(&publication.channel) {
                        Some(i) => {
                            follows[i].publication(publication.offset, publication.seq, &shared.truth, anomalies, notes)
                        }
                        None => {
                            anomalies.stray += 1;
                            notes.push(format!(
                                "a publication of {}, which it never subscribed to",
                                publication.channel
                            ));
                        }
                    }
                }
                Event::Message(message) => {
                    if let Some(i) = message["id"].as_u64().and_then(|id| self.pending.remove(&(id as u32))) {
                        let Some(follow) = follows.get_mut(i) else { continue };
                        if message.get("error").is_some() {
                            // A temporary error (Redis is away): try again soon.
                            shared.counters.temporary_errors.fetch_add(1, Ordering::Relaxed);
                            follow.refused();
                            self.retry.push((Instant::now() + Duration::from_millis(200), i));
                            continue;
                        }
                        match follow.subscribed(&message["subscribe"], &shared.truth, anomalies, notes) {
                            Subscribed::Fresh => {}
                            Subscribed::Recovered => {
                                shared.counters.recovered.fetch_add(1, Ordering::Relaxed);
                            }
                            Subscribed::NotRecovered => {
                                shared.counters.not_recovered.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    } else if let Some(push) = message.get("push") {
                        if let Some(unsubscribe) = push.get("unsubscribe") {
                            let Some(i) = push["channel"].as_str().and_then(|c| follower.index_of(c)) else {
                                continue;
                            };
                            follows[i].ended(true, anomalies, notes);
                            // 2500-2999 ask the client to subscribe again.
                            let code = unsubscribe["code"].as_u64().unwrap_or(0);
                            if (2500..3000).contains(&code) {
                                shared.counters.resubscribes.fetch_add(1, Ordering::Relaxed);
                                self.retry.push((Instant::now(), i));
                            } else {
                                anomalies.stray += 1;
                                notes.push(format!("unsubscribed from channel {i} with code {code}"));
                            }
                        } else if let Some(disconnect) = push.get("disconnect") {
                            return Err(disconnect["code"].as_u64().and_then(|c| u16::try_from(c).ok()));
                        }
                    }
                }
            }
        }
        notes.truncate(NOTES);
        Ok(())
    }
}

impl Follower {
    fn index_of(&self, channel: &str) -> Option<usize> {
        self.channels.iter().position(|(_, name)| name == channel)
    }
}

/// Resolves once `stop` says so (its guard not held across awaits).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Why a connection ended, in few words: the server's close code, or
/// the kind of failure.
fn ending(error: &ConnectError) -> String {
    let text = error.to_string();
    match text.split("closed by the server: ").nth(1) {
        Some(why) if !why.starts_with("the connection ended") => {
            format!("closed by the server: {}", why.split(' ').next().unwrap_or(why))
        }
        Some(_) => "connection lost".into(),
        None => match error {
            ConnectError::Network(_) | ConnectError::FileLimit => "connection lost".into(),
            ConnectError::Protocol(what) => format!("protocol: {what}"),
        },
    }
}
