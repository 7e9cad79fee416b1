//! The `Occupancy` part on a JetStream stream of records (`records`): one
//! record per channel (`<prefix>.oc.<channel>`) holding each serving
//! node's subscriber count and expiry, and until when the channel is
//! listed in the index.
//!
//! The write that creates a channel's record is the channel becoming
//! occupied, the delete that removes it the channel being vacated; the
//! compare-and-set lets exactly one node make each. A record whose index
//! time passed (every node serving it died) is deleted by one sweeper,
//! which reports it vacated.
//!
//! Listing the index reads every record by one scan of the stream
//! (`Records::scan`: a few hundred records a reply), so `occupied_channels`
//! and the heartbeat's sweep cost grows with the number of occupied
//! channels, in replies rather than in requests.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use herald_engine::{ChannelName, EngineError, NodeId, NodeSubscribers, Occupancy, OccupancyChange};

use crate::history::StreamSettings;
use crate::records::{collect_after, contended, expiry, now_ms, stream_name, within, Read, Records, ATTEMPTS};
use crate::subjects::Subjects;

/// A channel's serving nodes.
#[derive(Debug, Serialize, Deserialize)]
struct ChannelRecord {
    channel: ChannelName,
    /// Node id → (local subscribers, expiry in ms since the Unix epoch).
    nodes: BTreeMap<String, (usize, u64)>,
    /// The channel is listed until then (ms since the Unix epoch).
    listed_until: u64,
}

/// Which nodes serve which channels, in JetStream.
#[derive(Debug)]
pub struct NatsOccupancy {
    records: Records,
    subjects: Subjects,
}

impl NatsOccupancy {
    /// Occupancy on `client`, under the subject prefix `prefix`.
    pub fn new(client: async_nats::Client, prefix: &str, streams: StreamSettings, timeout: Duration) -> Self {
        let subjects = Subjects::new(prefix);
        let records =
            Records::new(client, stream_name(prefix, "occupancy"), subjects.occupancy_all(), streams, timeout);
        Self { records, subjects }
    }

    async fn all(&self) -> Result<Vec<Read<ChannelRecord>>, EngineError> {
        let Some(stream) = self.records.stream(None).await? else { return Ok(Vec::new()) };
        self.records.scan(&stream, &self.subjects.occupancy_all()).await
    }
}

#[async_trait]
impl Occupancy for NatsOccupancy {
    async fn occupy(
        &self,
        channel: &ChannelName,
        node: &NodeId,
        subscribers: usize,
        ttl: Duration,
    ) -> Result<OccupancyChange, EngineError> {
        within(self.records.timeout, async {
            let stream = self.records.made(collect_after(ttl)).await?;
            let subject = self.subjects.occupancy(channel);
            for _ in 0..ATTEMPTS {
                let now = now_ms();
                let until = expiry(ttl);
                let (sequence, record, change) = match self.records.read::<ChannelRecord>(&stream, &subject).await? {
                    Some(Read { sequence, mut value, .. }) => {
                        value.nodes.retain(|_, (_, expires)| *expires > now);
                        value.listed_until = value.listed_until.max(until);
                        (sequence, value, OccupancyChange::Unchanged)
                    }
                    None => {
                        let fresh =
                            ChannelRecord { channel: channel.clone(), nodes: BTreeMap::new(), listed_until: until };
                        (0, fresh, OccupancyChange::Occupied)
                    }
                };
                let mut record = record;
                record.nodes.insert(node.as_str().to_owned(), (subscribers.max(1), until));
                if self.records.write(&subject, &record, sequence).await?.is_some() {
                    return Ok(change);
                }
            }
            Err(contended("an occupancy record"))
        })
        .await
    }

    async fn vacate(&self, channel: &ChannelName, node: &NodeId) -> Result<OccupancyChange, EngineError> {
        within(self.records.timeout, async {
            let Some(stream) = self.records.stream(None).await? else { return Ok(OccupancyChange::Unchanged) };
            let subject = self.subjects.occupancy(channel);
            for _ in 0..ATTEMPTS {
                let Some(Read { sequence, mut value, .. }) =
                    self.records.read::<ChannelRecord>(&stream, &subject).await?
                else {
                    return Ok(OccupancyChange::Unchanged);
                };
                if value.nodes.remove(node.as_str()).is_none() {
                    return Ok(OccupancyChange::Unchanged);
                }
                let now = now_ms();
                value.nodes.retain(|_, (_, expires)| *expires > now);
                let vacated = value.nodes.is_empty();
                let left = (!vacated).then_some(&value);
                if self.records.replace(&stream, &subject, sequence, left).await? {
                    return Ok(match vacated {
                        true => OccupancyChange::Vacated,
                        false => OccupancyChange::Unchanged,
                    });
                }
            }
            Err(contended("an occupancy record"))
        })
        .await
    }

    async fn subscribers(&self, channel: &ChannelName) -> Result<Vec<NodeSubscribers>, EngineError> {
        within(self.records.timeout, async {
            let Some(stream) = self.records.stream(None).await? else { return Ok(Vec::new()) };
            let read = self.records.read::<ChannelRecord>(&stream, &self.subjects.occupancy(channel)).await?;
            let now = now_ms();
            let live = read.map(|r| r.value.nodes).unwrap_or_default().into_iter().filter(|(_, (_, e))| *e > now);
            Ok(live.map(|(node, (subscribers, _))| NodeSubscribers { node: NodeId::new(&node), subscribers }).collect())
        })
        .await
    }

    async fn occupied_channels(&self) -> Result<Vec<ChannelName>, EngineError> {
        within(self.records.timeout, async {
            let now = now_ms();
            let mut channels: Vec<ChannelName> =
                self.all().await?.into_iter().filter(|r| r.value.listed_until > now).map(|r| r.value.channel).collect();
            channels.sort();
            Ok(channels)
        })
        .await
    }

    async fn expire_vacated(&self) -> Result<Vec<ChannelName>, EngineError> {
        within(self.records.timeout, async {
            let Some(stream) = self.records.stream(None).await? else { return Ok(Vec::new()) };
            let now = now_ms();
            let mut vacated = Vec::new();
            for record in self.all().await? {
                // A refresh in between makes the delete fail: the channel is served again.
                if record.value.listed_until <= now && self.records.delete(&stream, record.sequence).await? {
                    vacated.push(record.value.channel);
                }
            }
            vacated.sort();
            Ok(vacated)
        })
        .await
    }
}
