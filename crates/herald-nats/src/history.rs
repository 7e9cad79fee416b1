//! History and stream positions in JetStream, and the publishes that
//! append to them.
//!
//! # Layout
//!
//! Channels with the same `history_size` and `history_meta_ttl` share a
//! stream (a *set*, `<prefix>_h_s<size>m<meta ms>`); each channel is one
//! subject of it, `<prefix>.h.<set>.<channel>`. The stream keeps the last
//! `size + 1` messages of each subject for `meta_ttl`. Every message
//! carries its offset and epoch (the wire format's first lines), so the
//! subject's last message is the channel's stream position, and it
//! survives as long as the position must.
//!
//! # Appending
//!
//! A publish reads the subject's last message and writes the next offset
//! with `Nats-Expected-Last-Subject-Sequence` set to that message's
//! sequence. Of two publishers that read the same top, JetStream stores
//! exactly one; the other reads again. Offsets are therefore contiguous
//! and assigned atomically with the append. Within a node, appends to one
//! channel take turns, so only nodes race (and back off by a random
//! moment when they lose). A node remembers the top of each channel it
//! appended to or receives (republished messages name their stream
//! sequence) and first tries to append after that without reading: when
//! another node wrote since, the compare-and-set fails and it reads. An empty subject starts a new
//! epoch at offset 1; a read of an empty subject writes a *marker* (an
//! empty message whose `Herald-Epoch` header names a new epoch at offset 0)
//! so that every node reads the same epoch.
//!
//! A history read takes the subject's last message first, then walks the
//! older ones. The last one is answered as it was read: a publication that
//! trims it from a short history during the walk (a Pusher cache channel
//! keeps one) cannot leave the answer without the newest publication.
//!
//! # Delivery
//!
//! The stream republishes every stored message to the channel's core
//! subject (`<prefix>.ch.<channel>`), where the nodes' brokers listen: a
//! publication is broadcast only once JetStream stored it. (Publishing on
//! the core subject directly would deliver a publication whose append then
//! failed.) The server may republish two appends made at the same moment
//! in swapped order; the readers put them back in offset order (see
//! `reorder`). A reader that has not yet seen a publication of its
//! channel's stream starts from the lowest position this node read for the
//! channel since the reader listened (`reader_listens`, `reader_starts`):
//! a subscriber that read the stream's top is then never sent the second
//! publication after it before the first. Markers are republished too and
//! ignored by the readers.
//!
//! # Expiry and idempotency
//!
//! `history_ttl` drops all of a channel's publications `ttl` after its last
//! one, as on the other engines: a read returns none once the newest is
//! older than that. Idempotency keys are JetStream message ids
//! (`<channel>|<key>`), de-duplicated for the stream's duplicate window,
//! which is the publish's idempotency window (at most `meta_ttl`). A keyed
//! publish without history goes through a stream of its own
//! (`<prefix>_once`), republished the same way.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage as Publish;
use async_nats::jetstream::stream::{self, DirectGetErrorKind, StorageType};
use async_nats::jetstream::{self, Context};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::TryStreamExt;
use tokio::sync::Mutex;

use herald_engine::wire;
use herald_engine::{
    ChannelName, EngineError, Epoch, History, HistoryOptions, HistoryQuery, HistoryResult, Offset, Publication,
    PublishOptions, PublishResult, StreamPosition,
};

use crate::records::{millis, now_ms, stream_name, unavailable, within, ATTEMPTS};
use crate::subjects::{token, Subjects};

/// The header naming a marker's epoch.
const EPOCH_HEADER: &str = "Herald-Epoch";

/// The duplicate window when a publish names none (JetStream's default).
const DEFAULT_WINDOW: Duration = Duration::from_secs(120);

/// How the streams are stored and replicated.
#[derive(Debug, Clone, Copy)]
pub struct StreamSettings {
    /// Copies of each stream in a NATS cluster (1 on a single server).
    pub replicas: usize,
    /// Keep streams in memory rather than on disk (faster; lost when the
    /// NATS server restarts).
    pub memory: bool,
}

/// The top of a channel's stream: its last message.
#[derive(Debug, Clone)]
struct Top {
    sequence: u64,
    position: StreamPosition,
    /// Milliseconds since the Unix epoch at which JetStream stored it.
    stored_ms: u64,
    /// An empty stream's marker, not a publication.
    marker: bool,
    /// The publication it is, read with it.
    publication: Option<Arc<Publication>>,
}

/// Channels' history streams in JetStream.
pub struct NatsHistory {
    jetstream: Context,
    subjects: Subjects,
    settings: StreamSettings,
    /// The stream of each history set made so far, with its duplicate window.
    sets: Mutex<HashMap<String, (stream::Stream, Duration)>>,
    once: Mutex<Option<(stream::Stream, Duration)>>,
    /// Appends to one channel from this node take turns (a channel uses
    /// the stripe its name hashes to), so only nodes race for an offset.
    stripes: Box<[Mutex<()>]>,
    hasher: std::collections::hash_map::RandomState,
    /// What this node appended last to each subject (its sequence and
    /// position), so that its next append there can skip reading the top.
    appended: std::sync::Mutex<HashMap<String, (u64, StreamPosition)>>,
    /// Channels whose reader listens and has not yet seen a publication of
    /// the stream, with the lowest position read since it listened.
    starts: std::sync::Mutex<HashMap<ChannelName, Option<StreamPosition>>>,
    /// `<prefix>.h.`: the subjects `appended` may learn from republished messages.
    history_prefix: String,
    timeout: Duration,
}

/// Stripes of the per-channel append turn.
const STRIPES: usize = 256;

/// Subjects whose last append a node remembers; past this it forgets all.
const MAX_REMEMBERED: usize = 16_384;

impl std::fmt::Debug for NatsHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsHistory").field("subjects", &self.subjects).finish_non_exhaustive()
    }
}

/// The set a channel's history options put it in.
fn set_of(options: &HistoryOptions) -> String {
    format!("s{}m{}", options.size, millis(options.meta_ttl))
}

impl NatsHistory {
    pub(crate) fn new(client: async_nats::Client, prefix: &str, settings: StreamSettings, timeout: Duration) -> Self {
        Self {
            jetstream: jetstream::new(client),
            subjects: Subjects::new(prefix),
            settings,
            sets: Mutex::default(),
            once: Mutex::default(),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            appended: std::sync::Mutex::default(),
            starts: std::sync::Mutex::default(),
            history_prefix: format!("{prefix}.h."),
            timeout,
        }
    }

    fn config(&self, name: String, subjects: String, window: Duration) -> stream::Config {
        stream::Config {
            name,
            subjects: vec![subjects.clone()],
            duplicate_window: window,
            allow_direct: true,
            num_replicas: self.settings.replicas.max(1),
            storage: match self.settings.memory {
                true => StorageType::Memory,
                false => StorageType::File,
            },
            republish: Some(stream::Republish {
                source: subjects,
                destination: self.subjects.channels_mapped(),
                headers_only: false,
            }),
            ..stream::Config::default()
        }
    }

    /// Gets or makes a stream, updating it when its duplicate window or
    /// age is not `config`'s.
    async fn ensure(&self, config: stream::Config) -> Result<stream::Stream, EngineError> {
        match self.jetstream.get_stream(&config.name).await {
            Ok(found) => {
                let have = &found.cached_info().config;
                if have.duplicate_window == config.duplicate_window && have.max_age == config.max_age {
                    return Ok(found);
                }
                let name = config.name.clone();
                self.jetstream.update_stream(config).await.map_err(unavailable)?;
                self.jetstream.get_stream(&name).await.map_err(unavailable)
            }
            Err(_) => self.jetstream.get_or_create_stream(config).await.map_err(unavailable),
        }
    }

    /// The stream of `options`' set, with a duplicate window of `window`
    /// when given (a read leaves the window as it is).
    async fn set(
        &self,
        options: &HistoryOptions,
        window: Option<Duration>,
    ) -> Result<(stream::Stream, String), EngineError> {
        let set = set_of(options);
        let mut sets = self.sets.lock().await;
        let wanted = window.map(|w| if w.is_zero() { DEFAULT_WINDOW } else { w }.min(options.meta_ttl));
        if let Some((stream, have)) = sets.get(&set) {
            if wanted.is_none_or(|w| w == *have) {
                return Ok((stream.clone(), set));
            }
        }
        let window = wanted.unwrap_or(DEFAULT_WINDOW.min(options.meta_ttl));
        let mut config = self.config(
            stream_name(self.subjects.prefix(), &format!("h_{set}")),
            self.subjects.history_set(&set),
            window,
        );
        config.max_messages_per_subject = i64::try_from(options.size.saturating_add(1)).unwrap_or(i64::MAX);
        config.max_age = options.meta_ttl;
        let stream = self.ensure(config).await?;
        sets.insert(set.clone(), (stream.clone(), window));
        Ok((stream, set))
    }

    /// The stream for keyed publishes without history, with `window`.
    async fn once(&self, window: Duration) -> Result<stream::Stream, EngineError> {
        let window = if window.is_zero() { DEFAULT_WINDOW } else { window };
        let mut once = self.once.lock().await;
        if let Some((stream, have)) = &*once {
            if *have == window {
                return Ok(stream.clone());
            }
        }
        let mut config = self.config(stream_name(self.subjects.prefix(), "once"), self.subjects.once_all(), window);
        config.max_age = window;
        let stream = self.ensure(config).await?;
        *once = Some((stream.clone(), window));
        Ok(stream)
    }

    /// The last message of `subject`, read as a stream top. One that
    /// cannot be read (written by another writer, or another version) is
    /// followed by a marker of a new epoch, which becomes the top: the
    /// channel's history starts again rather than failing every read and
    /// publish until the message expires.
    async fn top(&self, stream: &stream::Stream, subject: &str) -> Result<Option<Top>, EngineError> {
        for _ in 0..ATTEMPTS {
            let message = match stream.direct_get_last_for_subject(subject).await {
                Ok(message) => message,
                Err(error) if error.kind() == DirectGetErrorKind::NotFound => return Ok(None),
                Err(error) => return Err(unavailable(error)),
            };
            let (sequence, stored_ms) =
                (message.sequence, u64::try_from(message.time.unix_timestamp_nanos() / 1_000_000).unwrap_or(0));
            if message.payload.is_empty() {
                let epoch = message.headers.get(EPOCH_HEADER).map(|v| v.as_str().to_owned()).unwrap_or_default();
                let position = StreamPosition { offset: Offset::ZERO, epoch: Epoch::new(&epoch) };
                return Ok(Some(Top { sequence, position, stored_ms, marker: true, publication: None }));
            }
            let decoded = match wire::decode(message.payload) {
                Ok(decoded) => decoded,
                Err(error) => {
                    tracing::warn!(%subject, %error, "a channel's last history message is unreadable (another writer or version?); its history starts again under a new epoch");
                    self.mark_new_epoch(subject, sequence).await?;
                    continue;
                }
            };
            let position = StreamPosition { offset: decoded.offset, epoch: decoded.epoch };
            let publication = match decoded.kind {
                wire::Kind::Publication(publication) => Some(Arc::new(publication)),
                wire::Kind::Presence(_) => None,
            };
            return Ok(Some(Top { sequence, position, stored_ms, marker: false, publication }));
        }
        Err(unavailable(format!("{subject} changed {ATTEMPTS} times while its top was read")))
    }

    /// Appends a marker of a fresh epoch to `subject` if its last message
    /// is still the one at `after` (or, with 0, if it has none); another
    /// node that got there first is as good.
    async fn mark_new_epoch(&self, subject: &str, after: u64) -> Result<(), EngineError> {
        let epoch = Epoch::fresh();
        let marker = Publish::build().header(EPOCH_HEADER, epoch.as_str()).expected_last_subject_sequence(after);
        let ack = self.jetstream.send_publish(subject.to_owned(), marker).await.map_err(unavailable)?;
        match ack.await {
            Ok(_) => Ok(()),
            Err(error) if error.kind() == PublishErrorKind::WrongLastSequence => Ok(()),
            Err(error) => Err(unavailable(error)),
        }
    }

    /// The top of `subject`, starting the stream with a marker if it is empty.
    async fn top_or_start(&self, stream: &stream::Stream, subject: &str) -> Result<Top, EngineError> {
        for _ in 0..ATTEMPTS {
            if let Some(top) = self.top(stream, subject).await? {
                return Ok(top);
            }
            self.mark_new_epoch(subject, 0).await?;
        }
        Err(unavailable(format!("{subject} changed {ATTEMPTS} times while its stream was started")))
    }

    /// Appends `publication` to `channel`'s history and broadcasts it.
    pub(crate) async fn append(
        &self,
        channel: &ChannelName,
        mut publication: Publication,
        history: &HistoryOptions,
        options: &PublishOptions,
    ) -> Result<PublishResult, EngineError> {
        within(self.timeout, async {
            let window = options.idempotency_key.as_ref().map(|_| options.idempotency_window);
            let (stream, set) = self.set(history, window).await?;
            let subject = self.subjects.history(&set, channel);
            let stripes = u64::try_from(STRIPES).unwrap_or(1);
            let stripe = usize::try_from(self.hasher.hash_one(channel).checked_rem(stripes).unwrap_or(0)).unwrap_or(0);
            let _turn = match self.stripes.get(stripe) {
                Some(turn) => Some(turn.lock().await),
                None => None, // cannot happen: the stripe is taken modulo their number
            };
            let mut raced = false;
            for attempt in 0..ATTEMPTS as u32 {
                if raced {
                    // Another node won the offset: back off a random moment,
                    // up to twice as long each time (at most 50 ms), so the
                    // nodes fall out of step.
                    let ceiling = 250u64.checked_shl(attempt.min(8)).unwrap_or(50_000).min(50_000);
                    let jitter = self.hasher.hash_one((channel, attempt, now_ms())).checked_rem(ceiling).unwrap_or(0);
                    tokio::time::sleep(Duration::from_micros(jitter)).await;
                }
                // The first try trusts what this node appended last; a
                // wrong guess only fails the compare-and-set.
                let remembered = match attempt {
                    0 => self.last_appended(&subject),
                    _ => None,
                };
                // A failure after a fresh read is a race with another node
                // (back off before the next try); after a guess, it is not.
                raced = remembered.is_none();
                let top = match remembered {
                    Some(top) => Some(top),
                    None => self.top(&stream, &subject).await?.map(|t| (t.sequence, t.position)),
                };
                let (expected, position) = match &top {
                    Some((sequence, at)) => {
                        (*sequence, StreamPosition { offset: at.offset.next(), epoch: at.epoch.clone() })
                    }
                    None => (0, StreamPosition { offset: Offset::new(1), epoch: Epoch::fresh() }),
                };
                publication.offset = position.offset;
                publication.epoch = position.epoch.clone();
                let mut publish = Publish::build()
                    .payload(Bytes::from(wire::publication_message(&publication)))
                    .expected_last_subject_sequence(expected);
                if let Some(key) = &options.idempotency_key {
                    publish = publish.message_id(format!("{}|{key}", token(channel.as_str())));
                }
                self.forget_appended(&subject);
                let ack = self.jetstream.send_publish(subject.clone(), publish).await.map_err(unavailable)?;
                match ack.await {
                    Ok(ack) if ack.duplicate => {
                        let earlier = self.position_at(&stream, ack.sequence).await;
                        let position = earlier.or(top.map(|(_, at)| at)).unwrap_or_default();
                        return Ok(PublishResult { position, duplicate: true });
                    }
                    Ok(ack) => {
                        self.remember_appended(&subject, ack.sequence, &position);
                        return Ok(PublishResult { position, duplicate: false });
                    }
                    Err(error) if error.kind() == PublishErrorKind::WrongLastSequence => continue,
                    Err(error) => return Err(unavailable(error)),
                }
            }
            Err(unavailable(format!("{ATTEMPTS} publishers raced for {channel}'s next offset; try again")))
        })
        .await
    }

    /// What this node appended last to `subject`, if it remembers.
    fn last_appended(&self, subject: &str) -> Option<(u64, StreamPosition)> {
        self.appended.lock().unwrap_or_else(|e| e.into_inner()).get(subject).cloned()
    }

    fn forget_appended(&self, subject: &str) {
        self.appended.lock().unwrap_or_else(|e| e.into_inner()).remove(subject);
    }

    fn remember_appended(&self, subject: &str, sequence: u64, position: &StreamPosition) {
        let mut appended = self.appended.lock().unwrap_or_else(|e| e.into_inner());
        if appended.len() >= MAX_REMEMBERED {
            appended.clear();
        }
        match appended.get_mut(subject) {
            Some(known) if known.0 >= sequence => {}
            Some(known) => *known = (sequence, position.clone()),
            None => {
                appended.insert(subject.to_owned(), (sequence, position.clone()));
            }
        }
    }

    /// Learns a channel's top from a publication the stream republished
    /// (`Nats-Subject` and `Nats-Sequence` name where it is stored), so
    /// that appends after other nodes' need not read it either.
    pub(crate) fn observed(&self, headers: &async_nats::HeaderMap, position: &StreamPosition) {
        let stored_in = headers.get(async_nats::header::NATS_SUBJECT).map(|v| v.as_str());
        let sequence = headers.get(async_nats::header::NATS_SEQUENCE).and_then(|v| v.as_str().parse().ok());
        if let (Some(subject), Some(sequence)) = (stored_in, sequence) {
            if subject.starts_with(&self.history_prefix) {
                self.remember_appended(subject, sequence, position);
            }
        }
    }

    /// `channel`'s reader listens (its subscription is live): reads of the
    /// channel from now on are where its stream may start.
    pub(crate) fn reader_listens(&self, channel: &ChannelName) {
        self.starts.lock().unwrap_or_else(|e| e.into_inner()).insert(channel.clone(), None);
    }

    /// `channel`'s reader stopped listening.
    pub(crate) fn reader_stops(&self, channel: &ChannelName) {
        self.starts.lock().unwrap_or_else(|e| e.into_inner()).remove(channel);
    }

    /// `channel`'s reader sees the stream's first publication: the lowest
    /// position read since it listened, if any. Every publication stored
    /// after it reaches the reader, so the reader waits for the next one.
    pub(crate) fn reader_starts(&self, channel: &ChannelName) -> Option<StreamPosition> {
        self.starts.lock().unwrap_or_else(|e| e.into_inner()).remove(channel).flatten()
    }

    /// Keeps `position` as where `channel`'s reader starts, if it listens
    /// and no lower position of the same stream was read.
    fn read_at(&self, channel: &ChannelName, position: &StreamPosition) {
        let mut starts = self.starts.lock().unwrap_or_else(|e| e.into_inner());
        let Some(start) = starts.get_mut(channel) else { return };
        let lower = match start {
            Some(earlier) => earlier.epoch != position.epoch || position.offset < earlier.offset,
            None => true,
        };
        if lower {
            *start = Some(position.clone());
        }
    }

    /// Where the stored message at `sequence` landed, if it is still kept.
    async fn position_at(&self, stream: &stream::Stream, sequence: u64) -> Option<StreamPosition> {
        let message = stream.direct_get(sequence).await.ok()?;
        let decoded = wire::decode(message.payload).ok()?;
        Some(StreamPosition { offset: decoded.offset, epoch: decoded.epoch })
    }

    /// Broadcasts a keyed publication without history, once per key.
    pub(crate) async fn publish_once(
        &self,
        channel: &ChannelName,
        publication: &Publication,
        key: &str,
        window: Duration,
    ) -> Result<PublishResult, EngineError> {
        within(self.timeout, async {
            self.once(window).await?;
            let publish = Publish::build()
                .payload(Bytes::from(wire::publication_message(publication)))
                .message_id(format!("{}|{key}", token(channel.as_str())));
            let ack = self.jetstream.send_publish(self.subjects.once(channel), publish).await.map_err(unavailable)?;
            let ack = ack.await.map_err(unavailable)?;
            Ok(PublishResult { position: StreamPosition::default(), duplicate: ack.duplicate })
        })
        .await
    }

    /// Every publication of `subject`'s stream, oldest first, below the
    /// sequence `top`: those after its last marker (a marker starts a
    /// stream under a new epoch; what came before is another's).
    async fn read_subject(
        &self,
        stream: &stream::Stream,
        subject: &str,
        top: u64,
    ) -> Result<Vec<Arc<Publication>>, EngineError> {
        let mut publications = Vec::new();
        let mut next = None;
        loop {
            let message = match stream.direct_get_next_for_subject(subject, next).await {
                Ok(message) => message,
                Err(error) if error.kind() == DirectGetErrorKind::NotFound => break,
                Err(error) => return Err(unavailable(error)),
            };
            if message.sequence >= top {
                break;
            }
            next = Some(message.sequence.saturating_add(1));
            if message.payload.is_empty() {
                publications.clear();
                continue;
            }
            match wire::decode(message.payload) {
                Ok(wire::Message { kind: wire::Kind::Publication(publication), .. }) => {
                    publications.push(Arc::new(publication))
                }
                Ok(_) => tracing::warn!(subject, "a join or leave in a history stream; skipped"),
                Err(error) => tracing::warn!(subject, %error, "an unreadable history entry; skipped"),
            }
        }
        Ok(publications)
    }
}

#[async_trait]
impl History for NatsHistory {
    async fn history(
        &self,
        channel: &ChannelName,
        query: &HistoryQuery,
        options: &HistoryOptions,
    ) -> Result<HistoryResult, EngineError> {
        within(self.timeout, async {
            let (stream, set) = self.set(options, None).await?;
            let subject = self.subjects.history(&set, channel);
            let top = self.top_or_start(&stream, &subject).await?;
            self.read_at(channel, &top.position);
            let expired = top.stored_ms.saturating_add(millis(options.ttl)) <= now_ms();
            if query.limit == 0 || top.marker || expired {
                return Ok(HistoryResult { position: top.position, publications: Vec::new() });
            }
            // The top was read first: should publications trim it from a
            // short history while the rest is read (a cache channel keeps
            // one), the answer still ends with it. Where the top alone is
            // the answer, nothing older is read.
            let top_alone = options.size <= 1 || (query.reverse && query.limit == 1 && query.since.is_none());
            let mut publications = match top_alone {
                true => Vec::new(),
                false => self.read_subject(&stream, &subject, top.sequence).await?,
            };
            publications.extend(top.publication);
            let surplus = publications.len().saturating_sub(options.size);
            publications.drain(..surplus);
            Ok(query.select(top.position, publications))
        })
        .await
    }

    async fn remove_history(&self, channel: &ChannelName) -> Result<(), EngineError> {
        within(self.timeout, async {
            let sets = format!("{}h_", stream_name(self.subjects.prefix(), ""));
            let names: Vec<String> = self.jetstream.stream_names().try_collect().await.map_err(unavailable)?;
            for name in names {
                let Some(set) = name.strip_prefix(&sets) else { continue };
                let stream = self.jetstream.get_stream(&name).await.map_err(unavailable)?;
                stream.purge().filter(self.subjects.history(set, channel)).await.map_err(unavailable)?;
            }
            Ok(())
        })
        .await
    }
}
