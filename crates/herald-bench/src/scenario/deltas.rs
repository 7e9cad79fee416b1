//! `deltas`: what fossil delta compression saves on a dashboard-like stream.
//! Subscribers (Centrifuge JSON) follow one channel, asking for
//! `delta: "fossil"` or not; the API publishes a JSON state of about
//! `state_bytes` with a few fields changed each time. Every subscriber
//! rebuilds each state as a client does (applying deltas to the previous
//! one) and checks it against what was published; the result is the bytes
//! of WebSocket payload per delivery.

use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};

use super::{connect_all, progress, ConnectArgs};
use crate::client::{BenchClient, Event};
use crate::publisher::{Alone, ApiClient, PublishVia, Schedule};

/// What the scenario does.
#[derive(Debug, Clone, Serialize)]
pub struct DeltasArgs {
    #[serde(flatten)]
    pub connect: ConnectArgs,
    #[serde(skip)]
    pub publish: PublishVia,
    /// The channel, in a namespace with `allowed_delta_types = ["fossil"]`.
    pub channel: String,
    pub subscribers: usize,
    /// Subscribers ask for fossil deltas.
    pub delta: bool,
    pub publications: u64,
    /// Publications per second.
    pub rate: f64,
    /// The size of the published state, about.
    pub state_bytes: usize,
}

/// What it measured.
#[derive(Debug, Clone, Serialize)]
pub struct DeltasResult {
    pub connected: usize,
    pub delivered: u64,
    /// States a subscriber rebuilt that differ from what was published (must be 0).
    pub mismatched: u64,
    /// Deliveries that came as deltas.
    pub as_deltas: u64,
    /// WebSocket payload bytes of the publications received, per delivery.
    pub bytes_per_delivery: f64,
    /// The size of one published state's JSON.
    pub state_bytes: usize,
}

/// The published state for `tick`: `rows` rows, a few of them changing.
pub fn state(tick: u64, rows: usize) -> Value {
    let hosts: Vec<Value> = (0..rows as u64)
        .map(|i| {
            let busy = (i + tick) % 17 == 0;
            json!({"host": format!("web-{i:03}"), "region": "eu-west-1", "up": true, "busy": busy, "rps": if busy { 900 + tick % 50 } else { 120 }})
        })
        .collect();
    json!({"tick": tick, "visitors": 10_000 + tick * 13, "load": [0.5, 0.25, 0.125], "hosts": hosts})
}

/// Rows that make a state of about `bytes`.
fn rows_for(bytes: usize) -> usize {
    let one = state(0, 1).to_string().len();
    let row = state(0, 2).to_string().len() - one;
    (bytes.saturating_sub(one) / row.max(1)).max(1) + 1
}

pub async fn run(args: &DeltasArgs) -> anyhow::Result<DeltasResult> {
    let rows = rows_for(args.state_bytes);
    let channels = [args.channel.clone()];
    let (clients, _) = connect_all(&args.connect, args.subscribers, |_| Vec::new()).await?;
    let mut subscribed = Vec::with_capacity(clients.len());
    for mut client in clients {
        let mut subscribe = json!({"channel": args.channel});
        if args.delta {
            subscribe["delta"] = json!("fossil");
        }
        let id = client.send_commands(vec![json!({ "subscribe": subscribe })]).await?;
        let mut events = Vec::new();
        'reply: loop {
            client.next_raw(&mut events).await?;
            for (_, event) in &events {
                if let Event::Message(message) = event {
                    if message["id"] == id {
                        anyhow::ensure!(message.get("error").is_none(), "subscribe refused: {message}");
                        break 'reply;
                    }
                }
            }
        }
        subscribed.push(client);
    }
    let _ = channels;
    progress(&format!("{} subscribers on {}, deltas {}", subscribed.len(), args.channel, args.delta));

    let readers: Vec<_> =
        subscribed.into_iter().map(|client| tokio::spawn(follow(client, args.publications, rows))).collect();
    let mut api = ApiClient::new(args.publish.clone());
    let schedule = Schedule::new(args.rate);
    for tick in 1..=args.publications {
        schedule.wait(tick - 1, Alone::No).await;
        anyhow::ensure!(api.publish(&args.channel, &state(tick, rows).to_string()).await?, "publish {tick} refused");
    }
    let (mut delivered, mut mismatched, mut as_deltas, mut bytes) = (0, 0, 0, 0u64);
    let connected = readers.len();
    for reader in readers {
        let seen = tokio::time::timeout(Duration::from_secs(30), reader).await??;
        delivered += seen.delivered;
        mismatched += seen.mismatched;
        as_deltas += seen.as_deltas;
        bytes += seen.bytes;
    }
    Ok(DeltasResult {
        connected,
        delivered,
        mismatched,
        as_deltas,
        bytes_per_delivery: bytes as f64 / delivered.max(1) as f64,
        state_bytes: state(1, rows).to_string().len(),
    })
}

#[derive(Debug, Default)]
struct Seen {
    delivered: u64,
    mismatched: u64,
    as_deltas: u64,
    bytes: u64,
}

/// Reads publications until `count` arrived, rebuilding each state.
async fn follow(mut client: BenchClient, count: u64, rows: usize) -> Seen {
    let mut seen = Seen::default();
    let mut previous: Vec<u8> = Vec::new();
    let mut events = Vec::new();
    while seen.delivered < count {
        if client.next_raw(&mut events).await.is_err() {
            break;
        }
        for (size, event) in &events {
            let Event::Message(message) = event else { continue };
            let Some(publication) = message["push"].get("pub") else { continue };
            seen.delivered += 1;
            seen.bytes += *size as u64;
            let data = &publication["data"];
            let current: Option<Vec<u8>> = match (publication["delta"] == true, data) {
                (true, Value::String(delta)) => {
                    seen.as_deltas += 1;
                    herald_core::fossil::apply(&previous, delta.as_bytes()).ok()
                }
                (false, Value::String(text)) => Some(text.clone().into_bytes()),
                (false, other) => Some(other.to_string().into_bytes()),
                (true, _) => None,
            };
            let tick = seen.delivered;
            let matches = current
                .as_deref()
                .and_then(|bytes| serde_json::from_slice::<Value>(bytes).ok())
                .is_some_and(|value| value == state(tick, rows));
            if !matches {
                seen.mismatched += 1;
            }
            previous = current.unwrap_or_default();
        }
    }
    seen
}
