//! Records kept in a JetStream stream, one per subject, changed by
//! compare-and-set: the state behind presence and occupancy.
//!
//! A record is the one message of its subject (the stream keeps at most
//! one per subject). Writing it names the sequence of the message it
//! replaces (`Nats-Expected-Last-Subject-Sequence`, 0 for none), so of two
//! writers that read the same record exactly one succeeds and the other
//! reads again; deleting it names its sequence too, which fails once a
//! newer write replaced it. Every change is therefore atomic per record,
//! which is what makes "exactly one caller sees the first arrival / the
//! last departure" hold across nodes.
//!
//! A batch of changes (the presence heartbeat's) reads the records it
//! needs by [`Records::scan`]: one short-lived consumer hands out the
//! stream's records a few hundred to a reply, where reading each is a
//! request and reply of its own. That pays while the stream is not much
//! larger than the batch ([`scan_pays`]); a node that needs a few records
//! of a large stream reads them one by one.
//!
//! The stream's `max_age` only collects records nobody has touched for a
//! long time (their every node died and nobody swept them); live records
//! are rewritten far more often.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::consumer::{pull, AckPolicy, Consumer, DeliverPolicy};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage as Publish;
use async_nats::jetstream::stream::{self, DeleteMessageErrorKind, DirectGetErrorKind};
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::{self, Context};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Mutex;

use herald_engine::EngineError;

use crate::history::StreamSettings;

/// How many times a compare-and-set change is tried before giving up.
pub(crate) const ATTEMPTS: usize = 32;

/// How many records are read at once when listing.
const READS_IN_FLIGHT: usize = 16;

/// How many records one reply of a scan holds at most.
const SCAN_BATCH: usize = 256;

/// A scan reads the whole stream while it holds at most this many
/// records per record (or channel) the batch needs: a scanned record
/// costs the server a share of one reply, a record read alone a request
/// and a reply.
const SCAN_RATIO: u64 = 16;

/// How long the server keeps a scan's consumer that its scan left
/// behind (the node died mid-scan, or the delete failed).
const SCAN_LEFT_BEHIND: Duration = Duration::from_secs(30);

/// Whether reading every one of a stream's `records` is cheaper than
/// reading what a batch of `needed` records (or channels) needs alone.
pub(crate) fn scan_pays(records: u64, needed: usize) -> bool {
    records <= u64::try_from(needed).unwrap_or(u64::MAX).saturating_mul(SCAN_RATIO)
}

pub(crate) fn unavailable(error: impl std::fmt::Display) -> EngineError {
    EngineError::Unavailable(format!("nats: {error}"))
}

/// Runs `work`, failing with `Unavailable` after `timeout`.
pub(crate) async fn within<T>(
    timeout: Duration,
    work: impl std::future::Future<Output = Result<T, EngineError>>,
) -> Result<T, EngineError> {
    tokio::time::timeout(timeout, work).await.map_err(|_| unavailable("no answer within the command timeout"))?
}

/// `duration` in whole milliseconds, saturating.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Milliseconds since the Unix epoch, by this node's clock.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(millis).unwrap_or(0)
}

/// `now_ms() + ttl`, saturating.
pub(crate) fn expiry(ttl: Duration) -> u64 {
    now_ms().saturating_add(millis(ttl))
}

/// How long records that expire after `ttl` stay in their stream untouched
/// before it collects them: ten ttls (at least a minute), since every node
/// rewrites its live ones well within one.
pub(crate) fn collect_after(ttl: Duration) -> Duration {
    ttl.saturating_mul(10).max(Duration::from_secs(60))
}

/// A record that kept changing under every one of [`ATTEMPTS`] tries.
pub(crate) fn contended(what: &str) -> EngineError {
    EngineError::Unavailable(format!("nats: {what} changed {ATTEMPTS} times while being written"))
}

/// A stream name from the subject prefix: letters, digits and `-`, the
/// rest `_`.
pub(crate) fn stream_name(prefix: &str, part: &str) -> String {
    let safe: String = prefix.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    format!("{safe}_{part}")
}

/// A record as read: its value and the sequence a change must name.
#[derive(Debug)]
pub(crate) struct Read<T> {
    pub(crate) subject: String,
    pub(crate) sequence: u64,
    pub(crate) value: T,
}

/// One stream of records under `<subjects>` (a filter such as
/// `herald.pr.*.*`), made on first use.
pub(crate) struct Records {
    jetstream: Context,
    name: String,
    subjects: String,
    settings: StreamSettings,
    made: Mutex<Option<(stream::Stream, Duration)>>,
    pub(crate) timeout: Duration,
}

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records").field("stream", &self.name).finish_non_exhaustive()
    }
}

impl Records {
    pub(crate) fn new(
        client: async_nats::Client,
        name: String,
        subjects: String,
        settings: StreamSettings,
        timeout: Duration,
    ) -> Self {
        Self { jetstream: jetstream::new(client), name, subjects, settings, made: Mutex::new(None), timeout }
    }

    /// The stream, made (or its age updated) to collect untouched records
    /// after `max_age`; with `None`, the stream as it is, if any node made it.
    pub(crate) async fn stream(&self, max_age: Option<Duration>) -> Result<Option<stream::Stream>, EngineError> {
        let mut made = self.made.lock().await;
        match (&*made, max_age) {
            (Some((stream, age)), Some(wanted)) if *age == wanted => return Ok(Some(stream.clone())),
            (Some((stream, _)), None) => return Ok(Some(stream.clone())),
            _ => {}
        }
        let Some(max_age) = max_age else {
            return Ok(self.jetstream.get_stream(&self.name).await.ok());
        };
        let config = stream::Config {
            name: self.name.clone(),
            subjects: vec![self.subjects.clone()],
            max_messages_per_subject: 1,
            max_age,
            allow_direct: true,
            num_replicas: self.settings.replicas.max(1),
            storage: match self.settings.memory {
                true => stream::StorageType::Memory,
                false => stream::StorageType::File,
            },
            ..stream::Config::default()
        };
        let stream = match self.jetstream.get_stream(&self.name).await {
            Ok(found) if found.cached_info().config.max_age == max_age => found,
            Ok(_) => {
                self.jetstream.update_stream(config).await.map_err(unavailable)?;
                self.jetstream.get_stream(&self.name).await.map_err(unavailable)?
            }
            Err(_) => self.jetstream.get_or_create_stream(config).await.map_err(unavailable)?,
        };
        *made = Some((stream.clone(), max_age));
        Ok(Some(stream))
    }

    /// The stream, made for `max_age` if it was not.
    pub(crate) async fn made(&self, max_age: Duration) -> Result<stream::Stream, EngineError> {
        self.stream(Some(max_age)).await?.ok_or_else(|| unavailable(format!("stream {} was not made", self.name)))
    }

    /// The record at `subject`, if there is one.
    pub(crate) async fn read<T: DeserializeOwned>(
        &self,
        stream: &stream::Stream,
        subject: &str,
    ) -> Result<Option<Read<T>>, EngineError> {
        match stream.direct_get_last_for_subject(subject).await {
            Ok(message) => match serde_json::from_slice(&message.payload) {
                Ok(value) => Ok(Some(Read { subject: subject.to_owned(), sequence: message.sequence, value })),
                Err(error) => {
                    // Not written by Herald: it must not block the subject for good.
                    tracing::warn!(subject, %error, "an unreadable record in nats; deleted");
                    self.delete(stream, message.sequence).await?;
                    Ok(None)
                }
            },
            Err(error) if error.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Err(error) => Err(unavailable(error)),
        }
    }

    /// Writes `value` at `subject` if its record is still the one at
    /// `expected` (0: none): the written record's sequence, or `None` when
    /// another writer came first.
    pub(crate) async fn write<T: Serialize>(
        &self,
        subject: &str,
        value: &T,
        expected: u64,
    ) -> Result<Option<u64>, EngineError> {
        let payload = serde_json::to_vec(value).map_err(unavailable)?;
        let publish = Publish::build().payload(Bytes::from(payload)).expected_last_subject_sequence(expected);
        let ack = self.jetstream.send_publish(subject.to_owned(), publish).await.map_err(unavailable)?;
        match ack.await {
            Ok(ack) => Ok(Some(ack.sequence)),
            Err(error) if error.kind() == PublishErrorKind::WrongLastSequence => Ok(None),
            Err(error) => Err(unavailable(error)),
        }
    }

    /// Writes `value` at `subject`, whatever was there.
    pub(crate) async fn put<T: Serialize>(&self, subject: &str, value: &T) -> Result<(), EngineError> {
        let payload = serde_json::to_vec(value).map_err(unavailable)?;
        let ack = self.jetstream.publish(subject.to_owned(), Bytes::from(payload)).await.map_err(unavailable)?;
        ack.await.map_err(unavailable)?;
        Ok(())
    }

    /// Deletes the record at `sequence`. False when a newer write replaced
    /// it (or another caller deleted it) first.
    pub(crate) async fn delete(&self, stream: &stream::Stream, sequence: u64) -> Result<bool, EngineError> {
        match stream.delete_message(sequence).await {
            Ok(_) => Ok(true),
            Err(error) => match error.kind() {
                DeleteMessageErrorKind::JetStream(e)
                    if e.error_code() == ErrorCode::NO_MESSAGE_FOUND
                        || e.error_code() == ErrorCode::SEQUENCE_NOT_FOUND
                        || e.error_code() == ErrorCode::STREAM_MESSAGE_DELETE_FAILED =>
                {
                    Ok(false)
                }
                _ => Err(unavailable(error)),
            },
        }
    }

    /// Replaces the record at `sequence` with `value`, or deletes it when
    /// `value` is `None`. False when another writer came first.
    pub(crate) async fn replace<T: Serialize>(
        &self,
        stream: &stream::Stream,
        subject: &str,
        sequence: u64,
        value: Option<&T>,
    ) -> Result<bool, EngineError> {
        match value {
            Some(value) => Ok(self.write(subject, value, sequence).await?.is_some()),
            None => self.delete(stream, sequence).await,
        }
    }

    /// Every record whose subject matches `filter`. A record deleted
    /// between the listing and its read is left out.
    pub(crate) async fn read_all<T: DeserializeOwned>(
        &self,
        stream: &stream::Stream,
        filter: &str,
    ) -> Result<Vec<Read<T>>, EngineError> {
        let subjects: Vec<(String, usize)> =
            stream.info_with_subjects(filter).await.map_err(unavailable)?.try_collect().await.map_err(unavailable)?;
        let reads = futures_util::stream::iter(subjects)
            .map(|(subject, _)| async move { self.read::<T>(stream, &subject).await })
            .buffer_unordered(READS_IN_FLIGHT);
        let found: Vec<Option<Read<T>>> = reads.try_collect().await?;
        Ok(found.into_iter().flatten().collect())
    }

    /// How many records the stream holds.
    pub(crate) async fn count(&self, stream: &stream::Stream) -> Result<u64, EngineError> {
        Ok(stream.get_info().await.map_err(unavailable)?.state.messages)
    }

    /// Every record whose subject matches `filter`, handed out by one
    /// consumer [`SCAN_BATCH`] at a time, deleted after. Unreadable
    /// records are left out (a read of their own deletes them). Records
    /// written during the scan may or may not be in it.
    pub(crate) async fn scan<T: DeserializeOwned>(
        &self,
        stream: &stream::Stream,
        filter: &str,
    ) -> Result<Vec<Read<T>>, EngineError> {
        let consumer = stream
            .create_consumer(pull::Config {
                filter_subject: filter.to_owned(),
                deliver_policy: DeliverPolicy::LastPerSubject,
                ack_policy: AckPolicy::None,
                inactive_threshold: SCAN_LEFT_BEHIND,
                memory_storage: true,
                num_replicas: 1,
                ..pull::Config::default()
            })
            .await
            .map_err(unavailable)?;
        let name = consumer.cached_info().name.clone();
        let found = Self::drain(&consumer, consumer.cached_info().num_pending).await;
        if let Err(error) = stream.delete_consumer(&name).await {
            tracing::debug!(consumer = name, %error, "a scan's consumer not deleted; the server drops it when idle");
        }
        found
    }

    /// The records `consumer` has, `pending` of them when it was made.
    async fn drain<T: DeserializeOwned>(
        consumer: &Consumer<pull::Config>,
        mut pending: u64,
    ) -> Result<Vec<Read<T>>, EngineError> {
        let mut found = Vec::with_capacity(usize::try_from(pending).unwrap_or(0).min(SCAN_BATCH * 64));
        while pending > 0 {
            // `fetch` asks for what is there now and waits for nothing: a
            // reply that brings no record ends the scan even if records it
            // counted were deleted meanwhile.
            let mut batch = consumer.fetch().max_messages(SCAN_BATCH).messages().await.map_err(unavailable)?;
            let mut brought = false;
            while let Some(message) = batch.next().await {
                let message = message.map_err(unavailable)?;
                let info = message.info().map_err(unavailable)?;
                pending = info.pending;
                brought = true;
                let sequence = info.stream_sequence;
                match serde_json::from_slice(&message.payload) {
                    Ok(value) => found.push(Read { subject: message.subject.to_string(), sequence, value }),
                    Err(error) => tracing::debug!(subject = %message.subject, %error, "an unreadable record skipped"),
                }
            }
            if !brought {
                break;
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used, clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use crate::testing::NatsServer;

    async fn records(server: &NatsServer) -> Records {
        let client = async_nats::connect(server.url()).await.expect("connects");
        let settings = StreamSettings { replicas: 1, memory: true };
        Records::new(client, "scan-test".into(), "scan.*.*".into(), settings, Duration::from_secs(5))
    }

    #[test]
    fn a_scan_pays_while_the_stream_is_at_most_sixteen_times_what_the_batch_needs() {
        assert!(scan_pays(0, 0), "an empty stream costs one reply");
        assert!(scan_pays(8_000, 2_000), "a node of three in the chat benchmark");
        assert!(scan_pays(160, 10));
        assert!(!scan_pays(161, 10));
        assert!(!scan_pays(1_000_000, 4), "a few records of a large stream are read one by one");
    }

    #[tokio::test]
    async fn deleting_a_record_that_a_newer_write_replaced_is_a_lost_race_not_an_error() {
        let server = NatsServer::start();
        let records = records(&server).await;
        let stream = records.made(Duration::from_secs(60)).await.expect("stream");
        records.put("scan.room.ann", &1_u32).await.expect("write");
        let first = records.read::<u32>(&stream, "scan.room.ann").await.expect("read").expect("there");
        records.put("scan.room.ann", &2_u32).await.expect("a newer write");
        assert!(!records.delete(&stream, first.sequence).await.expect("no error"), "the newer write came first");
        let newer = records.read::<u32>(&stream, "scan.room.ann").await.expect("read").expect("still there");
        assert_eq!(newer.value, 2, "and stays");
        assert!(records.delete(&stream, newer.sequence).await.expect("no error"), "deleting what is there works");
        assert!(!records.delete(&stream, newer.sequence).await.expect("no error"), "and twice is a lost race too");
    }

    #[tokio::test]
    async fn a_scan_hands_out_the_last_record_of_every_subject_across_replies() {
        let server = NatsServer::start();
        let records = records(&server).await;
        let stream = records.made(Duration::from_secs(60)).await.expect("stream");
        assert!(records.scan::<u32>(&stream, "scan.*.*").await.expect("scan").is_empty(), "nothing to hand out");

        // More subjects than one reply holds, each written twice: only the
        // second write of each is its record.
        let subjects: Vec<String> = (0..SCAN_BATCH + 44).map(|n| format!("scan.room-{}.user-{n}", n % 7)).collect();
        for (n, subject) in subjects.iter().enumerate() {
            records.put(subject, &0_u32).await.expect("first write");
            records.put(subject, &u32::try_from(n).unwrap()).await.expect("second write");
        }
        assert_eq!(records.count(&stream).await.expect("count"), 300, "one record per subject");

        let mut scanned = records.scan::<u32>(&stream, "scan.*.*").await.expect("scan");
        scanned.sort_by_key(|read| read.value);
        assert_eq!(scanned.len(), subjects.len(), "every subject once");
        for (n, read) in scanned.iter().enumerate() {
            assert_eq!(read.subject, subjects[n]);
            assert_eq!(read.value, u32::try_from(n).unwrap(), "the last write of {}", read.subject);
            let alone = records.read::<u32>(&stream, &read.subject).await.expect("read").expect("there");
            assert_eq!(read.sequence, alone.sequence, "the sequence a change of {} must name", read.subject);
        }

        let room = records.scan::<u32>(&stream, "scan.room-3.*").await.expect("scan one room");
        assert!(
            !room.is_empty() && room.iter().all(|read| read.subject.starts_with("scan.room-3.")),
            "the filter holds"
        );
        let consumers = stream.get_info().await.expect("info").state.consumer_count;
        assert_eq!(consumers, 0, "every scan deleted its consumer");
    }
}
