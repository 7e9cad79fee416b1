//! Property: whatever the interleaving of publishes, disconnects,
//! reconnects and reads, a client never sees a gap, a duplicate or a
//! reordering in a channel's stream, unless the hub told it
//! `recovered: false` (after which it continues from the position it was
//! given).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use herald_engine::{
    ChannelName, ClientId, Engine, EngineError, EngineEvent, Epoch, EventHandler, History, HistoryOptions,
    HistoryQuery, HistoryResult, MemoryEngine, NodeId, Offset, PresenceEvent, Publication, StreamPosition, UserId,
};
use proptest::prelude::*;

use super::test_engines::WrappedBroker;
use super::{Hub, HubConfig, SubscribeAccess, SubscribeOutcome, SubscribeRequest};
use crate::connection::{Connection, ConnectionSpec, PushEncoder};
use crate::frame::{Frame, Text};
use crate::namespace::{ChannelRules, NamespaceOptions};
use crate::outbox::{Drained, Outbox, Outgoing};

const HISTORY_SIZE: usize = 8;
const RECOVERY_LIMIT: usize = 5;

#[derive(Debug)]
struct OffsetEncoder;

impl PushEncoder for OffsetEncoder {
    fn protocol(&self) -> &'static str {
        "test"
    }

    fn encode_publication(&self, _: &ChannelName, publication: &Publication) -> Frame {
        Frame::Text(format!("pub {}", publication.offset).into())
    }
    fn encode_presence(&self, _: &ChannelName, _: &PresenceEvent, _: bool) -> Option<Frame> {
        Some(Frame::Text("presence".into()))
    }
}

fn reply(outcome: &SubscribeOutcome) -> Option<Outgoing> {
    let offsets: Vec<String> = outcome.publications.iter().map(|p| p.offset.to_string()).collect();
    Some(Outgoing::Frame(Frame::Text(Text::from(format!(
        "sub {} {} {} {} {}",
        outcome.was_recovering,
        outcome.recovered,
        outcome.position.epoch,
        outcome.position.offset,
        offsets.join(",")
    )))))
}

/// Hands events to a forwarding task.
struct Forward(tokio::sync::mpsc::UnboundedSender<EngineEvent>);

impl EventHandler for Forward {
    fn handle(&self, event: EngineEvent) {
        let _ = self.0.send(event);
    }
}

/// The memory engine, but delivery lags behind publishing as with a remote
/// engine, so history can include a publication the node has not received
/// yet (handed over in order, by a task that lets others run first)...
fn late(node: Arc<dyn EventHandler>) -> Arc<dyn EventHandler> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<EngineEvent>();
    tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            tokio::task::yield_now().await;
            node.handle(event);
        }
    });
    Arc::new(Forward(tx))
}

/// ...and a history read lets other tasks run before and after it, so
/// publications race the recovery read at the seam from both sides.
#[derive(Debug)]
struct RacyHistory(Arc<MemoryEngine>);

#[async_trait::async_trait]
impl History for RacyHistory {
    async fn history(
        &self,
        c: &ChannelName,
        q: &HistoryQuery,
        o: &HistoryOptions,
    ) -> Result<HistoryResult, EngineError> {
        tokio::task::yield_now().await;
        let result = self.0.history(c, q, o).await;
        tokio::task::yield_now().await;
        result
    }
    async fn remove_history(&self, c: &ChannelName) -> Result<(), EngineError> {
        self.0.remove_history(c).await
    }
}

fn racy_engine() -> Engine {
    let memory = Arc::new(MemoryEngine::new());
    Engine::from_parts(
        "racy",
        Arc::new(WrappedBroker::over(&memory, Box::new(late))),
        Arc::new(RacyHistory(memory.clone())),
        memory.clone(),
        memory.clone(),
        memory,
    )
}

#[derive(Clone, Debug)]
enum Op {
    Publish,
    Disconnect,
    /// Reconnects and resubscribes while this many publications race the
    /// recovery read.
    Reconnect(u8),
    Read,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Publish),
        1 => Just(Op::Disconnect),
        2 => (0u8..4).prop_map(Op::Reconnect),
        2 => Just(Op::Read),
    ]
}

/// The client's side: what it has seen, checked as it reads.
struct Client {
    conn: Option<Arc<Connection>>,
    position: Option<(String, u64)>,
    told_unrecoverable: usize,
}

impl Client {
    fn read(&mut self) -> Result<(), TestCaseError> {
        let Some(conn) = &self.conn else { return Ok(()) };
        let items = match conn.outbox().drain() {
            Drained::Items(items) => items,
            Drained::Closed(reason) => return Err(TestCaseError::fail(format!("closed: {reason:?}"))),
        };
        for item in items {
            let Outgoing::Frame(frame) = item else { continue };
            let text = String::from_utf8(frame.as_bytes().to_vec()).unwrap();
            let words: Vec<&str> = text.split(' ').collect();
            match words[0] {
                "pub" => {
                    let offset: u64 = words[1].parse().unwrap();
                    let (_, last) = self.position.as_mut().ok_or_else(|| TestCaseError::fail("pub before sub"))?;
                    prop_assert_eq!(offset, *last + 1, "live publications continue the stream");
                    *last = offset;
                }
                "sub" => {
                    let (was_recovering, recovered) = (words[1] == "true", words[2] == "true");
                    let (epoch, top): (String, u64) = (words[3].to_owned(), words[4].parse().unwrap());
                    let replayed: Vec<u64> = words
                        .get(5)
                        .filter(|w| !w.is_empty())
                        .map(|w| w.split(',').map(|o| o.parse().unwrap()).collect())
                        .unwrap_or_default();
                    match (was_recovering, recovered) {
                        (true, true) => {
                            let (old_epoch, last) = self.position.clone().unwrap();
                            prop_assert_eq!(&old_epoch, &epoch);
                            let expected: Vec<u64> = (last + 1..=top).collect();
                            prop_assert_eq!(replayed, expected, "recovery replays exactly what was missed");
                            self.position = Some((epoch, top));
                        }
                        (true, false) => {
                            prop_assert!(replayed.is_empty(), "no partial replay");
                            self.told_unrecoverable += 1;
                            self.position = Some((epoch, top));
                        }
                        _ => self.position = Some((epoch, top)),
                    }
                }
                other => return Err(TestCaseError::fail(format!("unexpected frame {other}"))),
            }
        }
        Ok(())
    }
}

async fn connect(hub: &Arc<Hub>, n: u32) -> Arc<Connection> {
    hub.connect(ConnectionSpec {
        client: ClientId::new(&format!("c{n}")),
        user: UserId::new("u").unwrap(),
        conn_info: None,
        encoder: Arc::new(OffsetEncoder),
        outbox: Arc::new(Outbox::new(1 << 20)),
    })
    .unwrap()
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let feed = NamespaceOptions {
        history_size: HISTORY_SIZE,
        recovery_max_publications: RECOVERY_LIMIT,
        force_recovery: true,
        ..Default::default()
    };
    let rules = ChannelRules::new(NamespaceOptions::default(), BTreeMap::from([("feed".to_owned(), feed)]));
    let hub = Hub::new(HubConfig::new(NodeId::new("n"), rules), racy_engine());
    hub.start().await.unwrap();
    let channel = ChannelName::new("feed:x").unwrap();
    let mut client = Client { conn: None, position: None, told_unrecoverable: 0 };
    let mut connections = 0;
    let mut published = 0u64;

    let mut ops = ops;
    ops.extend([Op::Reconnect(0), Op::Read]);
    for op in ops {
        match op {
            Op::Publish => {
                published += 1;
                hub.publish(&channel, Publication::from_data(Bytes::from_static(b"1")), None, false).await.unwrap();
            }
            Op::Disconnect => {
                // Whatever the connection had not read yet is lost with it.
                if let Some(conn) = client.conn.take() {
                    hub.disconnect(&conn).await;
                }
            }
            Op::Reconnect(racing) => {
                if client.conn.is_some() {
                    continue;
                }
                connections += 1;
                let conn = connect(&hub, connections).await;
                let recover_since = client
                    .position
                    .as_ref()
                    .map(|(epoch, offset)| StreamPosition { offset: Offset::new(*offset), epoch: Epoch::new(epoch) });
                let request = SubscribeRequest { recover_since, ..Default::default() };
                let subscribing = hub.subscribe(&conn, &channel, SubscribeAccess::Server, request, reply);
                let racing_publishes = async {
                    for _ in 0..racing {
                        hub.publish(&channel, Publication::from_data(Bytes::from_static(b"1")), None, false)
                            .await
                            .unwrap();
                        tokio::task::yield_now().await;
                    }
                };
                let (subscribed, ()) = tokio::join!(subscribing, racing_publishes);
                subscribed.unwrap();
                published += u64::from(racing);
                client.conn = Some(conn);
            }
            Op::Read => client.read()?,
        }
    }
    // Delivery lags behind publishing: let what is in flight arrive.
    for _ in 0..1000 {
        if client.position.as_ref().is_some_and(|(_, last)| *last == published) {
            break;
        }
        tokio::task::yield_now().await;
        client.read()?;
    }
    let (_, last) = client.position.clone().expect("subscribed at the end");
    prop_assert_eq!(last, published, "the client ends at the stream's top");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn a_client_never_sees_a_gap_duplicate_or_reordering_unless_told(ops in proptest::collection::vec(op(), 0..60)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(run(ops))?;
    }
}
