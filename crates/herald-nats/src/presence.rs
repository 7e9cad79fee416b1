//! The `Presence` part on a JetStream stream of records (`records`): one
//! record per user and channel (`<prefix>.pr.<channel>.<user>`) listing
//! that user's connections with their expiry times.
//!
//! Keeping a user's connections in one record makes arrivals and
//! departures exact: the change that takes the record from no connection
//! to one is the arrival, the one that deletes it the departure, and the
//! compare-and-set lets exactly one writer make each. Expired connections
//! stay in the record (and keep their user present, as the contract asks)
//! until a sweep removes them and hands each out once.
//!
//! Expiry times are by the writing node's clock: nodes' clocks must agree
//! to well within the presence ttl (as NTP keeps them).

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use herald_engine::{Arrival, ChannelName, ClientInfo, Departure, EngineError, ExpiredEntry, Presence, PresenceStats};

use crate::history::StreamSettings;
use crate::records::{collect_after, contended, expiry, now_ms, stream_name, within, Read, Records, ATTEMPTS};
use crate::subjects::Subjects;

/// A user's connections in a channel.
#[derive(Debug, Default, Serialize, Deserialize)]
struct UserRecord {
    entries: Vec<Entry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    info: ClientInfo,
    /// Milliseconds since the Unix epoch.
    expires: u64,
}

impl Entry {
    fn live(&self, now: u64) -> bool {
        self.expires > now
    }
}

/// Who is present in each channel, in JetStream.
#[derive(Debug)]
pub struct NatsPresence {
    records: Records,
    subjects: Subjects,
}

impl NatsPresence {
    /// Presence on `client`, under the subject prefix `prefix`.
    pub fn new(client: async_nats::Client, prefix: &str, streams: StreamSettings, timeout: Duration) -> Self {
        let subjects = Subjects::new(prefix);
        let records = Records::new(client, stream_name(prefix, "presence"), subjects.presence_all(), streams, timeout);
        Self { records, subjects }
    }

    async fn users(&self, channel: &ChannelName) -> Result<Vec<Read<UserRecord>>, EngineError> {
        let Some(stream) = self.records.stream(None).await? else { return Ok(Vec::new()) };
        self.records.read_all(&stream, &self.subjects.presence_in(channel)).await
    }
}

#[async_trait]
impl Presence for NatsPresence {
    async fn add_presence(
        &self,
        channel: &ChannelName,
        info: &ClientInfo,
        ttl: Duration,
    ) -> Result<Arrival, EngineError> {
        within(self.records.timeout, async {
            let stream = self.records.made(collect_after(ttl)).await?;
            let subject = self.subjects.presence(channel, info.user.as_str());
            for _ in 0..ATTEMPTS {
                let read = self.records.read::<UserRecord>(&stream, &subject).await?;
                let (sequence, mut record) = read.map_or((0, UserRecord::default()), |r| (r.sequence, r.value));
                let arrival = match record.entries.is_empty() {
                    true => Arrival::UserArrived,
                    false => Arrival::UserWasPresent,
                };
                record.entries.retain(|entry| entry.info.client != info.client);
                record.entries.push(Entry { info: info.clone(), expires: expiry(ttl) });
                if self.records.write(&subject, &record, sequence).await? {
                    return Ok(arrival);
                }
            }
            Err(contended("a presence record"))
        })
        .await
    }

    async fn remove_presence(&self, channel: &ChannelName, info: &ClientInfo) -> Result<Departure, EngineError> {
        within(self.records.timeout, async {
            let Some(stream) = self.records.stream(None).await? else { return Ok(Departure::UserRemains) };
            let subject = self.subjects.presence(channel, info.user.as_str());
            for _ in 0..ATTEMPTS {
                let Some(Read { sequence, mut value, .. }) = self.records.read::<UserRecord>(&stream, &subject).await?
                else {
                    return Ok(Departure::UserRemains);
                };
                let before = value.entries.len();
                value.entries.retain(|entry| entry.info.client != info.client);
                if value.entries.len() == before {
                    return Ok(Departure::UserRemains);
                }
                let departed = value.entries.is_empty();
                let left = (!departed).then_some(&value);
                if self.records.replace(&stream, &subject, sequence, left).await? {
                    return Ok(match departed {
                        true => Departure::UserDeparted,
                        false => Departure::UserRemains,
                    });
                }
            }
            Err(contended("a presence record"))
        })
        .await
    }

    async fn presence(&self, channel: &ChannelName) -> Result<Vec<ClientInfo>, EngineError> {
        within(self.records.timeout, async {
            let now = now_ms();
            let users = self.users(channel).await?;
            Ok(users.into_iter().flat_map(|user| user.value.entries).filter(|e| e.live(now)).map(|e| e.info).collect())
        })
        .await
    }

    async fn presence_stats(&self, channel: &ChannelName) -> Result<PresenceStats, EngineError> {
        within(self.records.timeout, async {
            let now = now_ms();
            let mut stats = PresenceStats::default();
            for user in self.users(channel).await? {
                let live = user.value.entries.iter().filter(|e| e.live(now)).count();
                stats.num_clients = stats.num_clients.saturating_add(live);
                if live > 0 {
                    stats.num_users = stats.num_users.saturating_add(1);
                }
            }
            Ok(stats)
        })
        .await
    }

    async fn expire_presence(&self, channel: &ChannelName) -> Result<Vec<ExpiredEntry>, EngineError> {
        within(self.records.timeout, async {
            let Some(stream) = self.records.stream(None).await? else { return Ok(Vec::new()) };
            let mut handed_out = Vec::new();
            let now = now_ms();
            for user in self.users(channel).await? {
                if user.value.entries.iter().all(|e| e.live(now)) {
                    continue;
                }
                let mut read = Some(user);
                for _ in 0..ATTEMPTS {
                    let Some(Read { subject, sequence, value }) = read.take() else { break };
                    let (expired, live): (Vec<Entry>, Vec<Entry>) =
                        value.entries.into_iter().partition(|e| !e.live(now));
                    if expired.is_empty() {
                        break;
                    }
                    let departed = live.is_empty();
                    let left = UserRecord { entries: live };
                    let done = self.records.replace(&stream, &subject, sequence, (!departed).then_some(&left)).await?;
                    if done {
                        // The user departed with the last of its expired entries.
                        let last = expired.len();
                        handed_out.extend(expired.into_iter().enumerate().map(|(i, entry)| ExpiredEntry {
                            info: entry.info,
                            departure: match departed && i.saturating_add(1) == last {
                                true => Departure::UserDeparted,
                                false => Departure::UserRemains,
                            },
                        }));
                        break;
                    }
                    read = self.records.read::<UserRecord>(&stream, &subject).await?;
                }
            }
            Ok(handed_out)
        })
        .await
    }
}
