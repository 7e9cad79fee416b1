//! The subscribers of a fanout, reading: their connections
//! [`Detached`] and shared among plain threads, one per core, each waiting
//! on epoll for its share as `floor`'s readers do. The generator shares
//! the two cores with the server, so what a delivery costs it is CPU the
//! server does not get: read as one tokio task per client, a delivery cost
//! the generator 0.9–1.5 µs of user time, against 0.1–0.25 for the floor's
//! readers and about 0.6 read here (BENCHMARKS.md, "The generator's own
//! cost").

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use hdrhistogram::Histogram;
use mio::{Events, Interest, Poll, Token};

use super::{channel_name, SentPerChannel};
use crate::client::{BenchClient, Detached, Received};
use crate::publisher::unix_micros;
use crate::scenario::latency_histogram;
use crate::sequence::{Anomalies, Sequence};

/// How long a reader waits on epoll before it looks whether to stop.
const STOP_CHECK: Duration = Duration::from_millis(50);

/// Subscribers reading, recording latency and checking sequence numbers.
#[derive(Debug)]
pub struct Listening {
    delivered: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    readers: Vec<JoinHandle<io::Result<Share>>>,
}

/// One subscriber, on its reader's thread: all it keeps between reads is
/// in this record (and its socket's), so a delivery fetches no other.
#[derive(Debug)]
struct Subscriber {
    /// The channel it follows, as its reader's clients name it
    /// ([`Detached::channel_named`]).
    channel: Arc<str>,
    client: Detached,
    /// Its channel's publications, in order. A publication of another
    /// channel (none is sent to it) is counted as delivered, not checked.
    sequence: Sequence,
    /// Until the connection fails or ends; what it then misses is lost.
    open: bool,
}

/// What one reader thread saw.
#[derive(Debug)]
struct Share {
    heard: Vec<(Arc<str>, Sequence)>,
    latencies: Histogram<u64>,
}

/// What the subscribers of one process saw.
#[derive(Debug)]
pub struct Heard {
    pub connected: usize,
    pub delivered: u64,
    pub anomalies: Anomalies,
    /// Publish-to-read latency, in microseconds.
    pub latencies: Histogram<u64>,
}

impl Listening {
    /// Starts reading; client `k` is subscriber `first + k`.
    pub fn start(clients: Vec<BenchClient>, channels: usize, first: usize) -> anyhow::Result<Self> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(clients.len()).max(1);
        let mut shares: Vec<Vec<(String, Detached)>> = (0..threads).map(|_| Vec::new()).collect();
        for (k, client) in clients.into_iter().enumerate() {
            shares[k % threads].push((channel_name((first + k) % channels), client.detach()?));
        }
        let delivered = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut readers = Vec::new();
        for share in shares {
            let (delivered, stop) = (delivered.clone(), stop.clone());
            let reader = std::thread::Builder::new()
                .name("reader".to_owned())
                .spawn(move || read_share(share, &delivered, &stop))?;
            readers.push(reader);
        }
        Ok(Self { delivered, stop, readers })
    }

    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Stops the readers; whatever of `sent` a subscriber's channel never
    /// brought it is lost.
    pub async fn finish(self, sent: &SentPerChannel) -> anyhow::Result<Heard> {
        self.stop.store(true, Ordering::Relaxed);
        let readers = self.readers;
        // Each reader sees the stop within `STOP_CHECK`.
        let shares = tokio::task::spawn_blocking(move || {
            readers
                .into_iter()
                .map(|reader| reader.join().map_err(|_| anyhow::anyhow!("a reader panicked")))
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .await??;
        let mut heard = Heard {
            connected: 0,
            delivered: self.delivered.load(Ordering::Relaxed),
            anomalies: Anomalies::default(),
            latencies: latency_histogram(),
        };
        for share in shares {
            let share = share?;
            heard.latencies.add(&share.latencies).expect("histograms share their bounds");
            for (channel, sequence) in share.heard {
                heard.anomalies.add(sequence.finish(sent.get(&*channel).copied().unwrap_or(0)));
                heard.connected += 1;
            }
        }
        Ok(heard)
    }
}

/// One reader thread: reads its subscribers until told to stop.
fn read_share(share: Vec<(String, Detached)>, delivered: &AtomicU64, stop: &AtomicBool) -> io::Result<Share> {
    let mut share: Vec<Subscriber> = share
        .into_iter()
        .map(|(channel, client)| Subscriber {
            channel: Detached::channel_named(&channel),
            client,
            sequence: Sequence::default(),
            open: true,
        })
        .collect();
    let mut poll = Poll::new()?;
    let mut latencies = latency_histogram();
    let mut received = Vec::new();
    // Counted here and added to the shared count once per wake-up, not
    // per read: the readers' threads would otherwise contend for it.
    let mut heard_here = 0;
    for (i, subscriber) in share.iter_mut().enumerate() {
        poll.registry().register(subscriber.client.stream(), Token(i), Interest::READABLE)?;
        let taken = subscriber.client.take_messages(&mut received);
        subscriber.heard(taken.map(|()| false), &mut received, &mut latencies, &mut heard_here);
    }
    delivered.fetch_add(std::mem::take(&mut heard_here), Ordering::Relaxed);
    let mut events = Events::with_capacity(1024);
    while !stop.load(Ordering::Relaxed) {
        match poll.poll(&mut events, Some(STOP_CHECK)) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => other?,
        }
        for event in &events {
            let Some(subscriber) = share.get_mut(event.token().0) else { continue };
            while subscriber.open {
                let read = subscriber.client.read(&mut received);
                if !subscriber.heard(read, &mut received, &mut latencies, &mut heard_here) {
                    break;
                }
            }
            if !subscriber.open {
                poll.registry().deregister(subscriber.client.stream())?;
            }
        }
        delivered.fetch_add(std::mem::take(&mut heard_here), Ordering::Relaxed);
    }
    let heard = share.into_iter().map(|subscriber| (subscriber.channel, subscriber.sequence)).collect();
    Ok(Share { heard, latencies })
}

impl Subscriber {
    /// Takes in what a read brought (`received`, emptied, its count added
    /// to `heard`); true if the socket may hold more.
    fn heard(
        &mut self,
        read: Result<bool, crate::client::ConnectError>,
        received: &mut Vec<Received>,
        latencies: &mut Histogram<u64>,
        heard: &mut u64,
    ) -> bool {
        if !received.is_empty() {
            let now = unix_micros(SystemTime::now());
            for publication in received.iter() {
                latencies.saturating_record(now.saturating_sub(publication.sent_at_micros).max(1));
                // Two `Arc<str>`s compare their pointers first: one name's
                // allocation shared, this reads neither name.
                if publication.channel == self.channel {
                    self.sequence.observe(publication.seq);
                }
            }
            *heard = heard.saturating_add(received.len() as u64);
            received.clear();
        }
        match read {
            Ok(more) => more,
            Err(_) => {
                self.open = false;
                false
            }
        }
    }
}
