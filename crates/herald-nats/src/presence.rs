//! The `Presence` part on a JetStream stream of records (`records`): one
//! record per user and channel (`<prefix>.pr.<channel>.<user>`) listing
//! that user's connections with their expiry times; the anonymous user's
//! connections, each its own arrival and departure, have a record each
//! (`subjects::Subjects::presence`), so a channel of many anonymous
//! visitors never writes one record of them all.
//!
//! Keeping a user's connections in one record makes arrivals and
//! departures exact: the change that takes the record from no connection
//! to one is the arrival, the one that deletes it the departure, and the
//! compare-and-set lets exactly one writer make each. Expired connections
//! stay in the record (and keep their user present, as the contract asks)
//! until a sweep removes them and hands each out once.
//!
//! The heartbeat's batches read what they change by one scan of the
//! stream where that pays (`records::scan_pays`): a refresh of a node's
//! entries then costs one write per record (a user's connections in a
//! channel are one record, so one write; each anonymous connection is a
//! record, so a write each), and a sweep of every channel a
//! node serves costs the scan and a write per record with an expired
//! entry, not a listing per channel and a read per record. A write that
//! meets a record changed since the scan reads it again, as any change.
//! The heartbeat sweeps right after it refreshes, so the refresh's scan,
//! with what the refresh wrote, is kept for the sweep ([`Scan`]): one scan
//! a beat, not two. However old a scan, the sweep stays exact: whether an
//! entry has expired is judged when the sweep runs, and its removal is a
//! compare-and-set against the record as scanned.
//!
//! Expiry times are by the writing node's clock: nodes' clocks must agree
//! to well within the presence ttl (as NTP keeps them).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::jetstream::stream::Stream;
use async_trait::async_trait;
use futures_util::{stream, StreamExt};
use serde::{Deserialize, Serialize};

use herald_engine::{
    expire_each, Arrival, ChannelName, ClientInfo, Departure, EngineError, ExpiredEntry, Presence, PresenceStats, Swept,
};

use crate::history::StreamSettings;
use crate::records::{
    collect_after, contended, expiry, now_ms, scan_pays, stream_name, within, Read, Records, ATTEMPTS,
};
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
    /// The last refresh's scan, for the sweep that follows it.
    scan: Mutex<Option<Scan>>,
}

/// Every record of the stream as a refresh scanned and then wrote them.
#[derive(Debug)]
struct Scan {
    taken: Instant,
    records: HashMap<String, Read<UserRecord>>,
}

/// How old a refresh's scan the sweep takes instead of scanning again.
/// The sweep is exact with any scan; an older one only finds more
/// records changed since, each read again (and misses records made since,
/// whose entries have not expired yet unless their ttl is shorter).
const SCAN_KEPT: Duration = Duration::from_secs(5);

/// How many records a batch changes at once: few, so a refresh's writes
/// do not queue ahead of publications in the server (the chat benchmark
/// at 2,000 rooms: p99 23 ms at 8, 34 ms at 64, CPU alike); 8 round trips
/// at a time still refresh tens of thousands of records in seconds.
const WRITES_IN_FLIGHT: usize = 8;

/// What a change knows of its record before it starts.
enum Known {
    /// The record as a scan found it (`None`: there was none).
    Scanned(Option<Read<UserRecord>>),
    /// Nothing: the change reads it.
    Unread,
}

impl NatsPresence {
    /// Presence on `client`, under the subject prefix `prefix`.
    pub fn new(client: async_nats::Client, prefix: &str, streams: StreamSettings, timeout: Duration) -> Self {
        let subjects = Subjects::new(prefix);
        let records = Records::new(client, stream_name(prefix, "presence"), subjects.presence_all(), streams, timeout);
        Self { records, subjects, scan: Mutex::new(None) }
    }

    fn keep_scan(&self, scan: Option<Scan>) {
        *self.scan.lock().unwrap_or_else(|e| e.into_inner()) = scan;
    }

    /// The last refresh's scan, if it is recent enough to sweep with.
    fn kept_scan(&self) -> Option<HashMap<String, Read<UserRecord>>> {
        let scan = self.scan.lock().unwrap_or_else(|e| e.into_inner()).take()?;
        (scan.taken.elapsed() <= SCAN_KEPT).then_some(scan.records)
    }

    async fn users(&self, channel: &ChannelName) -> Result<Vec<Read<UserRecord>>, EngineError> {
        let Some(stream) = self.records.stream(None).await? else { return Ok(Vec::new()) };
        self.records.read_all(&stream, &self.subjects.presence_in(channel)).await
    }

    /// Every record by subject, when scanning the stream is cheaper than
    /// reading the `needed` records (or channels' records) alone.
    async fn scanned(
        &self,
        stream: &Stream,
        needed: usize,
    ) -> Result<Option<HashMap<String, Read<UserRecord>>>, EngineError> {
        if !scan_pays(self.records.count(stream).await?, needed) {
            return Ok(None);
        }
        let all = self.records.scan::<UserRecord>(stream, &self.subjects.presence_all()).await?;
        Ok(Some(all.into_iter().map(|read| (read.subject.clone(), read)).collect()))
    }

    /// Adds or refreshes the entries of `clients` (one user's, in one
    /// channel) in the record at `subject`, by compare-and-set; answers
    /// with the record as written.
    async fn upsert(
        &self,
        stream: &Stream,
        subject: &str,
        clients: &[&ClientInfo],
        ttl: Duration,
        mut known: Known,
    ) -> Result<(Arrival, Read<UserRecord>), EngineError> {
        for _ in 0..ATTEMPTS {
            let read = match std::mem::replace(&mut known, Known::Unread) {
                Known::Scanned(read) => read,
                Known::Unread => self.records.read::<UserRecord>(stream, subject).await?,
            };
            let (sequence, mut record) = read.map_or((0, UserRecord::default()), |r| (r.sequence, r.value));
            let arrival = match record.entries.is_empty() {
                true => Arrival::UserArrived,
                false => Arrival::UserWasPresent,
            };
            let expires = expiry(ttl);
            record.entries.retain(|entry| clients.iter().all(|info| info.client != entry.info.client));
            record.entries.extend(clients.iter().map(|info| Entry { info: (*info).clone(), expires }));
            if let Some(sequence) = self.records.write(subject, &record, sequence).await? {
                return Ok((arrival, Read { subject: subject.to_owned(), sequence, value: record }));
            }
        }
        Err(contended("a presence record"))
    }

    /// Removes the entries of `first` that expired by `now` and returns
    /// them, each once; re-reads the record when another writer came first.
    async fn expire_record(
        &self,
        stream: &Stream,
        first: Read<UserRecord>,
        now: u64,
    ) -> Result<Vec<ExpiredEntry>, EngineError> {
        let mut read = Some(first);
        for _ in 0..ATTEMPTS {
            let Some(Read { subject, sequence, value }) = read.take() else { return Ok(Vec::new()) };
            let (expired, live): (Vec<Entry>, Vec<Entry>) = value.entries.into_iter().partition(|e| !e.live(now));
            if expired.is_empty() {
                return Ok(Vec::new());
            }
            let departed = live.is_empty();
            let left = UserRecord { entries: live };
            if self.records.replace(stream, &subject, sequence, (!departed).then_some(&left)).await? {
                // The user departed with the last of its expired entries;
                // an anonymous connection with its own (a record of them
                // all is one an older node wrote).
                let last = expired.len();
                return Ok(expired
                    .into_iter()
                    .enumerate()
                    .map(|(i, entry)| {
                        let gone = entry.info.user.is_anonymous() || (departed && i.saturating_add(1) == last);
                        ExpiredEntry {
                            info: entry.info,
                            departure: match gone {
                                true => Departure::UserDeparted,
                                false => Departure::UserRemains,
                            },
                        }
                    })
                    .collect());
            }
            read = self.records.read::<UserRecord>(stream, &subject).await?;
        }
        Err(contended("a presence record"))
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
            let subject = self.subjects.presence(channel, info);
            Ok(self.upsert(&stream, &subject, &[info], ttl, Known::Unread).await?.0)
        })
        .await
    }

    async fn remove_presence(&self, channel: &ChannelName, info: &ClientInfo) -> Result<Departure, EngineError> {
        within(self.records.timeout, async {
            let Some(stream) = self.records.stream(None).await? else { return Ok(Departure::UserRemains) };
            let subject = self.subjects.presence(channel, info);
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
            let mut anonymous = false;
            for user in self.users(channel).await? {
                let mut live = user.value.entries.iter().filter(|e| e.live(now));
                let Some(first) = live.next() else { continue };
                stats.num_clients = stats.num_clients.saturating_add(live.count().saturating_add(1));
                // The anonymous user's connections each have a record; it
                // counts once.
                match first.info.user.is_anonymous() {
                    true => anonymous = true,
                    false => stats.num_users = stats.num_users.saturating_add(1),
                }
            }
            stats.num_users = stats.num_users.saturating_add(usize::from(anonymous));
            Ok(stats)
        })
        .await
    }

    async fn expire_presence(&self, channel: &ChannelName) -> Result<Vec<ExpiredEntry>, EngineError> {
        within(self.records.timeout, async {
            let Some(stream) = self.records.stream(None).await? else { return Ok(Vec::new()) };
            let now = now_ms();
            let mut handed_out = Vec::new();
            for user in self.users(channel).await? {
                handed_out.extend(self.expire_record(&stream, user, now).await?);
            }
            Ok(handed_out)
        })
        .await
    }

    async fn refresh_presence(&self, entries: &[(ChannelName, ClientInfo)], ttl: Duration) -> Vec<EngineError> {
        let timeout = self.records.timeout;
        let mut records: HashMap<String, Vec<&ClientInfo>> = HashMap::new();
        for (channel, info) in entries {
            records.entry(self.subjects.presence(channel, info)).or_default().push(info);
        }
        let stream = match within(timeout, self.records.made(collect_after(ttl))).await {
            Ok(stream) => stream,
            Err(error) => return vec![error],
        };
        let taken = Instant::now();
        let mut scanned = match within(timeout, self.scanned(&stream, records.len())).await {
            Ok(scanned) => scanned,
            Err(error) => {
                tracing::debug!(%error, "presence scan failed; each record is read on its own");
                None
            }
        };
        let writes: Vec<_> = records
            .into_iter()
            .map(|(subject, clients)| {
                let known = match &mut scanned {
                    Some(found) => Known::Scanned(found.remove(&subject)),
                    None => Known::Unread,
                };
                let stream = &stream;
                async move { within(timeout, self.upsert(stream, &subject, &clients, ttl, known)).await }
            })
            .collect();
        let outcomes: Vec<_> = stream::iter(writes).buffer_unordered(WRITES_IN_FLIGHT).collect().await;
        let mut failed = Vec::new();
        for outcome in outcomes {
            match (outcome, &mut scanned) {
                (Ok((_, written)), Some(scan)) => drop(scan.insert(written.subject.clone(), written)),
                (Ok(_), None) => {}
                (Err(error), _) => failed.push(error),
            }
        }
        // A record whose write failed is missing from the scan: the sweep
        // scans again rather than miss it.
        self.keep_scan(scanned.filter(|_| failed.is_empty()).map(|records| Scan { taken, records }));
        failed
    }

    async fn expire_presence_of(&self, channels: &[ChannelName]) -> Swept {
        let timeout = self.records.timeout;
        let stream = match within(timeout, self.records.stream(None)).await {
            Ok(Some(stream)) => stream,
            Ok(None) => return Swept::default(),
            Err(error) => return Swept { expired: Vec::new(), failed: vec![error] },
        };
        let scanned = match self.kept_scan() {
            Some(kept) => Ok(Some(kept)),
            None => within(timeout, self.scanned(&stream, channels.len())).await,
        };
        let scanned = match scanned {
            Ok(Some(scanned)) => scanned,
            Ok(None) => return expire_each(self, channels).await,
            Err(error) => return Swept { expired: Vec::new(), failed: vec![error] },
        };
        // A record's subject is its channel's prefix, a dot and its user's token.
        let wanted: HashMap<String, &ChannelName> = channels
            .iter()
            .map(|channel| (self.subjects.presence_in(channel).trim_end_matches(".*").to_owned(), channel))
            .collect();
        let now = now_ms();
        let sweeps: Vec<_> = scanned
            .into_values()
            .filter(|read| read.value.entries.iter().any(|entry| !entry.live(now)))
            .filter_map(|read| {
                let channel = read.subject.rsplit_once('.').and_then(|(prefix, _)| wanted.get(prefix).copied())?;
                let stream = &stream;
                Some(async move { (channel, within(timeout, self.expire_record(stream, read, now)).await) })
            })
            .collect();
        let mut swept = Swept::default();
        let mut outcomes = stream::iter(sweeps).buffer_unordered(WRITES_IN_FLIGHT);
        while let Some((channel, outcome)) = outcomes.next().await {
            match outcome {
                Ok(expired) => swept.expired.extend(expired.into_iter().map(|entry| (channel.clone(), entry))),
                Err(error) => swept.failed.push(error),
            }
        }
        swept
    }
}
