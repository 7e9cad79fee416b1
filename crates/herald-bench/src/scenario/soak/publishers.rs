//! The soak's publishers: each owns some channels and publishes into them
//! in turn through the nodes' APIs, one publication at a time per channel,
//! so a channel's sequence numbers rise with its offsets. A publication
//! that fails (its node was killed, Redis is away) is retried on the next
//! node with the same `idempotency_key`, as a careful backend would, until
//! it is accepted: so none is published twice within one stream.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use tokio::sync::watch;

use super::cluster::API_KEY;
use super::follower::Shared;
use crate::publisher::{unix_micros, ApiClient, PublishVia};

/// What the publishers did.
#[derive(Debug, Default)]
pub struct Published {
    /// Publications accepted.
    pub accepted: AtomicU64,
    /// Attempts refused or unanswered, then retried.
    pub retries: AtomicU64,
    /// Accepted publications whose place in the stream disagreed with what
    /// clients saw there.
    pub mismatched: AtomicU64,
}

/// How long one attempt may take.
const ATTEMPT: Duration = Duration::from_secs(3);
/// How long one publication may keep failing before the soak gives up.
const GIVE_UP: Duration = Duration::from_secs(120);

/// Publishes into `channels` ((number, name)), `rate` publications a
/// second in all, each with `padding` bytes of padding, through the nodes
/// in `apis`, until `stop`.
pub async fn publish(
    id: usize,
    channels: Vec<(u32, String)>,
    (rate, padding): (f64, usize),
    apis: Vec<PublishVia>,
    shared: Arc<Shared>,
    published: Arc<Published>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut clients: Vec<ApiClient> = apis.into_iter().map(ApiClient::new).collect();
    let mut node = id;
    let mut seqs = vec![0u64; channels.len()];
    let pad = "x".repeat(padding);
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.001)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut turn = 0usize;
    loop {
        ticks.tick().await;
        if *stop.borrow() {
            return Ok(());
        }
        let at = turn % channels.len().max(1);
        let (Some((number, name)), Some(seq)) = (channels.get(at), seqs.get_mut(at)) else { return Ok(()) };
        let body = json!({
            "channel": name,
            "data": {"seq": *seq, "ts": unix_micros(SystemTime::now()), "pad": pad},
            "idempotency_key": format!("{name}-{seq}"),
        })
        .to_string();
        let given_up = tokio::time::Instant::now() + GIVE_UP;
        let reply = loop {
            let count = clients.len();
            let Some(client) = clients.get_mut(node % count) else { anyhow::bail!("no node to publish through") };
            match tokio::time::timeout(ATTEMPT, attempt(client, &body)).await {
                Ok(Some(result)) => break result,
                Ok(None) => {}
                // An unanswered request leaves the connection unusable.
                Err(_) => *client = ApiClient::new(client.via().clone()),
            }
            published.retries.fetch_add(1, Ordering::Relaxed);
            anyhow::ensure!(
                tokio::time::Instant::now() < given_up,
                "publishing into {name} failed on every node for {GIVE_UP:?}; see the node logs"
            );
            node += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        published.accepted.fetch_add(1, Ordering::Relaxed);
        if let (Some(offset), Some(epoch)) = (reply["offset"].as_u64(), reply["epoch"].as_str()) {
            if !shared.truth.agree(*number, &epoch.into(), offset, *seq) {
                published.mismatched.fetch_add(1, Ordering::Relaxed);
            }
        }
        *seq += 1;
        turn = turn.wrapping_add(1);
    }
}

/// One attempt: the reply's `result` if the publication was accepted.
async fn attempt(client: &mut ApiClient, body: &str) -> Option<Value> {
    let headers = format!("X-API-Key: {API_KEY}\r\n");
    match client.post("/api/publish", &headers, body).await {
        Ok((200, reply)) => serde_json::from_str::<Value>(&reply).ok()?.get("result").cloned(),
        _ => None,
    }
}
