//! `floor`: what a delivery costs on this machine with no server in the
//! way — the floor under every `fanout` figure measured here.
//!
//! A child process (`floor-writer`) plays an ideal server. It holds N
//! loopback TCP connections and writes ready-made frames to them from
//! plain threads, with blocking writes and nothing else to do. Each thread
//! goes round its connections and gives each, in one write, every
//! publication due by then, as a server that coalesces its writes would.
//! This process plays the subscribers: it reads with epoll (`mio`) and
//! records the latency from each publication's *scheduled* time, as
//! `fanout` does. Both sides' CPU, the writes and reads made, and how long
//! a writer's round took are reported with it.
//!
//! Neither side has WebSocket framing, JSON, a hub or an async runtime.
//! What is left is the kernel's loopback TCP and the two processes'
//! wake-ups, on the same cores, as in a `fanout` run with the generator on
//! this machine. A server that makes a system call per connection to write
//! (as Herald and its peers do) cannot do less work than this writer, so a
//! latency the floor does not reach is one no such server reaches here.
//!
//! With `--writes uring` the writer submits each round's sends through
//! io_uring in batches ([`uring`]), to show what a server that batched its
//! system calls would save.

mod uring;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::ops::Range;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use mio::{Events, Interest, Poll, Token};
use serde::Serialize;

use super::{latency_histogram, progress, Latency};
use crate::procfs::ProcessSample;

/// What the scenario does.
#[derive(Debug, Clone, Serialize)]
pub struct FloorArgs {
    pub subscribers: usize,
    /// Publications per second; each goes to every subscriber.
    pub rate: f64,
    /// How long latency is measured, after the warm-up.
    #[serde(with = "super::as_text")]
    pub duration: Duration,
    /// Publications before the measurement starts (their deliveries are
    /// counted, their latency is not).
    #[serde(with = "super::as_text")]
    pub warmup: Duration,
    /// Bytes per delivered frame (a Herald publication frame of `fanout`
    /// is about 150).
    pub frame_bytes: usize,
    pub writer_threads: usize,
    pub reader_threads: usize,
    pub writes: Writes,
}

/// How the writer hands its sends to the kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Writes {
    /// A blocking `write` system call per connection per round.
    #[default]
    Blocking,
    /// A round's sends queued to io_uring, up to 1,024 per system call.
    Uring,
}

impl Writes {
    fn name(self) -> &'static str {
        match self {
            Writes::Blocking => "blocking",
            Writes::Uring => "uring",
        }
    }
}

/// What the scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct FloorResult {
    pub published: u64,
    pub expected_deliveries: u64,
    pub delivered: u64,
    /// Frames that did not arrive in the order they were written.
    pub out_of_order: u64,
    pub deliveries_per_second: f64,
    /// Over publications scheduled after the warm-up.
    pub latency: Latency,
    pub writer_user_cores: f64,
    pub writer_system_cores: f64,
    pub reader_user_cores: f64,
    pub reader_system_cores: f64,
    /// Writes the writer made (one per connection per round it had
    /// something for), and reads the subscribers made.
    pub writes: u64,
    pub reads: u64,
    /// How long a writer thread's round over its connections took, on
    /// average, counting only rounds that wrote.
    pub mean_round_ms: f64,
}

/// The smallest frame: a sequence number and the scheduled time.
const HEADER_BYTES: usize = 16;

/// The writer keeps every frame of the run ready; this bounds them.
const MAX_FRAME_BYTES_IN_ALL: u64 = 64 << 20;

/// From the moment the writer says `start` to its first publication: time
/// for the subscribers to start reading.
const HEAD_START: Duration = Duration::from_millis(50);

/// How long subscribers wait for the last frames after the schedule ends.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// `errno` when this process (EMFILE) or the whole system (ENFILE) has no
/// file descriptor left.
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

/// Publications in a run of `length` at `rate` per second.
fn publications(rate: f64, length: Duration) -> u64 {
    (rate * length.as_secs_f64()).round() as u64
}

/// Nanoseconds from the start of the schedule to publication `n`.
fn offset_nanos(n: u64, rate: f64) -> u64 {
    (n as f64 / rate * 1e9) as u64
}

/// The frames of publications `numbers`, one after another: each is its
/// number, its scheduled time (from the start of the schedule), then
/// padding.
fn frames(numbers: std::ops::Range<u64>, rate: f64, frame_bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity((numbers.end - numbers.start) as usize * frame_bytes);
    for n in numbers {
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&offset_nanos(n, rate).to_le_bytes());
        out.resize(out.len() + frame_bytes - HEADER_BYTES, b'x');
    }
    out
}

/// Deals `items` round-robin into `hands` lists (at least one).
fn deal<T>(items: impl IntoIterator<Item = T>, hands: usize) -> Vec<Vec<T>> {
    let mut dealt: Vec<Vec<T>> = (0..hands.max(1)).map(|_| Vec::new()).collect();
    let count = dealt.len();
    for (i, item) in items.into_iter().enumerate() {
        dealt[i % count].push(item);
    }
    dealt
}

/// When each publication is due, shared by the writer's threads.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    start: Instant,
    rate: f64,
    total: u64,
}

impl Schedule {
    fn offset(&self, publication: u64) -> Duration {
        Duration::from_nanos(offset_nanos(publication, self.rate))
    }

    /// How many publications are due at `now`.
    fn due(&self, now: Instant) -> u64 {
        match now.checked_duration_since(self.start) {
            None => 0,
            Some(elapsed) => ((elapsed.as_secs_f64() * self.rate) as u64 + 1).min(self.total),
        }
    }
}

fn check_size(rate: f64, length: Duration, frame_bytes: usize) -> anyhow::Result<()> {
    anyhow::ensure!(frame_bytes >= HEADER_BYTES, "--frame-bytes must be at least {HEADER_BYTES}");
    anyhow::ensure!(rate > 0.0, "--rate must be above 0");
    let in_all = publications(rate, length) * frame_bytes as u64;
    anyhow::ensure!(
        in_all <= MAX_FRAME_BYTES_IN_ALL,
        "the writer keeps every frame ready, and this run's would take {} MiB (at most {} MiB): \
         shorten --duration or --warmup, or lower --rate or --frame-bytes",
        in_all >> 20,
        MAX_FRAME_BYTES_IN_ALL >> 20
    );
    Ok(())
}

/// Says what to do when no file descriptor is left (each side holds one
/// per subscriber).
fn with_file_hint(error: io::Error, held: usize) -> anyhow::Error {
    match error.raw_os_error() {
        Some(EMFILE) => anyhow::anyhow!(
            "out of file descriptors after {held} connections ({error}): raise `ulimit -n`, or ask for fewer --subscribers"
        ),
        Some(ENFILE) => anyhow::anyhow!(
            "the system ran out of file descriptors after {held} connections ({error}): raise fs.file-max, or ask for fewer --subscribers"
        ),
        _ => error.into(),
    }
}

fn unix_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// What the writer process (`floor-writer`) does.
#[derive(Debug, Clone, Copy)]
pub struct WriterArgs {
    pub subscribers: usize,
    pub rate: f64,
    /// How long to publish: the warm-up and the measurement.
    pub length: Duration,
    pub frame_bytes: usize,
    pub threads: usize,
    pub writes: Writes,
}

/// The writer's side (`floor-writer`): listens, prints `port P`, accepts
/// the subscribers' connections, prints `start T` (Unix nanoseconds, when
/// the schedule starts), writes every publication to every connection on
/// schedule, prints `done USER SYSTEM WRITES ROUNDS BUSY` (cores over the
/// schedule; writes, rounds and seconds spent in them over all threads),
/// and closes them all.
pub fn write(args: WriterArgs) -> anyhow::Result<()> {
    let WriterArgs { subscribers, rate, length, frame_bytes, threads, writes } = args;
    check_size(rate, length, frame_bytes)?;
    let total = publications(rate, length);
    let frames = frames(0..total, rate, frame_bytes);
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mut out = io::stdout();
    writeln!(out, "port {}", listener.local_addr()?.port())?;
    out.flush()?;
    let accepted = (0..subscribers)
        .map(|i| {
            let (stream, _) = listener.accept().map_err(|e| with_file_hint(e, i))?;
            stream.set_nodelay(true)?;
            Ok(stream)
        })
        .collect::<anyhow::Result<Vec<TcpStream>>>()?;
    let shares = deal(accepted, threads);
    let schedule = Schedule { start: Instant::now() + HEAD_START, rate, total };
    writeln!(out, "start {}", unix_nanos() + HEAD_START.as_nanos() as u64)?;
    out.flush()?;
    let before = ProcessSample::read(std::process::id())?;
    let done = std::thread::scope(|scope| {
        let writers: Vec<_> = shares
            .into_iter()
            .map(|share| {
                scope.spawn(|| match writes {
                    Writes::Blocking => write_share(share, schedule, &frames, frame_bytes),
                    Writes::Uring => uring::write_share(share, schedule, &frames, frame_bytes),
                })
            })
            .collect();
        writers.into_iter().try_fold(Rounds::default(), |all, w| {
            Ok::<_, io::Error>(all.add(w.join().unwrap_or_else(|_| Err(io::Error::other("a writer panicked")))?))
        })
    })?;
    let (user, system) = ProcessSample::read(std::process::id())?.cores_since(&before);
    writeln!(out, "done {user} {system} {} {} {}", done.writes, done.rounds, done.busy.as_secs_f64())?;
    out.flush()?;
    Ok(())
}

/// What a writer thread did.
#[derive(Debug, Default, Clone, Copy)]
struct Rounds {
    writes: u64,
    /// Rounds that wrote something, and the time they took in all.
    rounds: u64,
    busy: Duration,
}

impl Rounds {
    fn add(self, other: Rounds) -> Rounds {
        Rounds { writes: self.writes + other.writes, rounds: self.rounds + other.rounds, busy: self.busy + other.busy }
    }
}

/// How a writer thread hands a round's writes to the kernel.
trait RoundWriter {
    /// Writes `bytes` of the frames to connection `connection` (or queues
    /// them, to be written by [`RoundWriter::end_round`]).
    fn write(&mut self, connection: usize, bytes: Range<usize>) -> io::Result<()>;

    /// Ends a round that wrote: everything written or queued has gone.
    fn end_round(&mut self) -> io::Result<()>;
}

/// One writer thread. It goes round its `connections` and gives each, in
/// one write, every publication due by then that it has not had yet — so
/// when it falls behind, a publication waits at most one round.
fn go_round(
    connections: usize,
    schedule: Schedule,
    frame_bytes: usize,
    writer: &mut impl RoundWriter,
) -> io::Result<Rounds> {
    let mut sent = vec![0; connections];
    let mut done = Rounds::default();
    loop {
        let round = Instant::now();
        let mut behind = false;
        for (connection, sent) in sent.iter_mut().enumerate() {
            let due = schedule.due(Instant::now());
            if due > *sent {
                writer.write(connection, *sent as usize * frame_bytes..due as usize * frame_bytes)?;
                *sent = due;
                behind = true;
                done.writes += 1;
            }
        }
        if behind {
            writer.end_round()?;
            done.rounds += 1;
            done.busy += round.elapsed();
        }
        let least = sent.iter().copied().min().unwrap_or(schedule.total);
        if least >= schedule.total {
            return Ok(done);
        }
        if !behind {
            let next = schedule.start + schedule.offset(least);
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
    }
}

/// The blocking writer: a `write` system call per connection per round.
struct Blocking<'a> {
    sockets: Vec<TcpStream>,
    frames: &'a [u8],
}

impl RoundWriter for Blocking<'_> {
    fn write(&mut self, connection: usize, bytes: Range<usize>) -> io::Result<()> {
        match (self.sockets.get_mut(connection), self.frames.get(bytes)) {
            (Some(socket), Some(bytes)) => socket.write_all(bytes),
            _ => Err(io::Error::other("a write outside the writer's sockets or frames")),
        }
    }

    fn end_round(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One blocking writer thread.
fn write_share(sockets: Vec<TcpStream>, schedule: Schedule, frames: &[u8], frame_bytes: usize) -> io::Result<Rounds> {
    let connections = sockets.len();
    go_round(connections, schedule, frame_bytes, &mut Blocking { sockets, frames })
}

/// The writer process, killed and reaped if the subscribers' side gives up
/// before it is done.
struct WriterProcess(Child);

impl Drop for WriterProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The subscribers' side: starts the writer, connects, reads until every
/// connection is closed, and reports.
pub fn run(args: &FloorArgs, herald_bench: &Path) -> anyhow::Result<FloorResult> {
    let length = args.warmup + args.duration;
    check_size(args.rate, length, args.frame_bytes)?;
    let mut writer = WriterProcess(
        Command::new(herald_bench)
            .arg("floor-writer")
            .args(["--subscribers", &args.subscribers.to_string()])
            .args(["--rate", &args.rate.to_string()])
            .args(["--length", &humantime::format_duration(length).to_string()])
            .args(["--frame-bytes", &args.frame_bytes.to_string()])
            .args(["--writer-threads", &args.writer_threads.to_string()])
            .args(["--writes", args.writes.name()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()?,
    );
    let mut lines = BufReader::new(writer.0.stdout.take().expect("stdout is piped")).lines();
    let mut expect = |key: &str| -> anyhow::Result<String> {
        let line = lines.next().transpose()?.unwrap_or_default();
        line.strip_prefix(key)
            .map(|rest| rest.trim().to_owned())
            .ok_or_else(|| anyhow::anyhow!("the floor writer said {line:?}, expected `{key} …` (see its error above)"))
    };
    let port: u16 = expect("port")?.parse()?;
    let connected = (0..args.subscribers)
        .map(|i| {
            let stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| with_file_hint(e, i))?;
            stream.set_nonblocking(true)?;
            Ok(mio::net::TcpStream::from_std(stream))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let shares = deal(connected, args.reader_threads);
    progress(&format!("connected {} subscribers to the floor writer", args.subscribers));
    let start: u64 = expect("start")?.parse()?;
    let clock = Clock { start, warmup: args.warmup.as_nanos() as u64 };
    let deadline = Instant::now() + length + DRAIN_LIMIT;
    let before = ProcessSample::read(std::process::id())?;
    let frame_bytes = args.frame_bytes;
    let tallies = std::thread::scope(|scope| {
        let readers: Vec<_> = shares
            .into_iter()
            .map(|share| scope.spawn(move || read_share(share, frame_bytes, clock, deadline)))
            .collect();
        readers
            .into_iter()
            .map(|r| r.join().unwrap_or_else(|_| Err(io::Error::other("a reader panicked"))))
            .collect::<io::Result<Vec<Tally>>>()
    })?;
    let (reader_user_cores, reader_system_cores) = ProcessSample::read(std::process::id())?.cores_since(&before);
    let done = expect("done")?;
    let figures: Vec<f64> = done.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    let &[writer_user_cores, writer_system_cores, writes, rounds, busy] = figures.as_slice() else {
        anyhow::bail!("the floor writer reported {done:?}, expected five figures");
    };
    writer.0.wait()?;

    let mut all = Tally::new();
    for tally in &tallies {
        all.add(tally);
    }
    let published = publications(args.rate, length);
    Ok(FloorResult {
        published,
        expected_deliveries: published * args.subscribers as u64,
        delivered: all.delivered,
        out_of_order: all.out_of_order,
        deliveries_per_second: all.delivered as f64 / length.as_secs_f64(),
        latency: Latency::from_histogram(&all.latencies),
        writer_user_cores,
        writer_system_cores,
        reader_user_cores,
        reader_system_cores,
        writes: writes as u64,
        reads: all.reads,
        mean_round_ms: busy / rounds.max(1.0) * 1000.0,
    })
}

/// When the schedule started (Unix nanoseconds), and how long its warm-up
/// lasts: frames carry their time from the start.
#[derive(Debug, Clone, Copy)]
struct Clock {
    start: u64,
    warmup: u64,
}

/// What one reader thread counted.
#[derive(Debug)]
struct Tally {
    /// Microseconds from a publication's scheduled time to its reading.
    latencies: Histogram<u64>,
    delivered: u64,
    out_of_order: u64,
    reads: u64,
}

impl Tally {
    fn new() -> Self {
        Self { latencies: latency_histogram(), delivered: 0, out_of_order: 0, reads: 0 }
    }

    fn add(&mut self, other: &Tally) {
        self.latencies.add(&other.latencies).expect("tallies share their bounds");
        self.delivered += other.delivered;
        self.out_of_order += other.out_of_order;
        self.reads += other.reads;
    }
}

/// One subscriber connection and the part of a frame it has read so far.
#[derive(Debug)]
struct Subscriber {
    stream: mio::net::TcpStream,
    frames: FrameReader,
    open: bool,
}

/// Cuts a byte stream into fixed-size frames and counts them.
#[derive(Debug)]
struct FrameReader {
    frame_bytes: usize,
    clock: Clock,
    partial: Vec<u8>,
    next: u64,
}

impl FrameReader {
    fn new(frame_bytes: usize, clock: Clock) -> Self {
        Self { frame_bytes, clock, partial: Vec::new(), next: 0 }
    }

    /// Takes bytes read at `now` (Unix nanoseconds).
    fn take(&mut self, mut bytes: &[u8], now: u64, tally: &mut Tally) {
        if !self.partial.is_empty() {
            let wanted = (self.frame_bytes - self.partial.len()).min(bytes.len());
            self.partial.extend_from_slice(&bytes[..wanted]);
            bytes = &bytes[wanted..];
            if self.partial.len() < self.frame_bytes {
                return;
            }
            let frame = std::mem::take(&mut self.partial);
            self.count(&frame, now, tally);
            self.partial = frame;
            self.partial.clear();
        }
        let mut frames = bytes.chunks_exact(self.frame_bytes);
        for frame in &mut frames {
            self.count(frame, now, tally);
        }
        self.partial.extend_from_slice(frames.remainder());
    }

    fn count(&mut self, frame: &[u8], now: u64, tally: &mut Tally) {
        let field = |at: usize| u64::from_le_bytes(frame[at..at + 8].try_into().expect("eight bytes"));
        let (number, offset) = (field(0), field(8));
        if number != self.next {
            tally.out_of_order += 1;
        }
        self.next = number + 1;
        tally.delivered += 1;
        if offset >= self.clock.warmup {
            let scheduled = self.clock.start + offset;
            tally.latencies.saturating_record((now.saturating_sub(scheduled) / 1000).max(1));
        }
    }
}

/// One reader thread: reads its connections until each is closed; an
/// error if some are still open at the deadline.
fn read_share(
    streams: Vec<mio::net::TcpStream>,
    frame_bytes: usize,
    clock: Clock,
    deadline: Instant,
) -> io::Result<Tally> {
    let mut poll = Poll::new()?;
    let mut subscribers: Vec<Subscriber> = streams
        .into_iter()
        .map(|stream| Subscriber { stream, frames: FrameReader::new(frame_bytes, clock), open: true })
        .collect();
    for (i, subscriber) in subscribers.iter_mut().enumerate() {
        poll.registry().register(&mut subscriber.stream, Token(i), Interest::READABLE)?;
    }
    let mut events = Events::with_capacity(1024);
    let mut buffer = vec![0; 64 * 1024];
    let mut tally = Tally::new();
    let mut open = subscribers.len();
    while open > 0 && Instant::now() < deadline {
        match poll.poll(&mut events, Some(Duration::from_millis(200))) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => other?,
        }
        for event in &events {
            let subscriber = &mut subscribers[event.token().0];
            // A short read empties the socket, and epoll (edge-triggered)
            // tells when more comes, so no read is spent to find out; but
            // once the writer has closed, read on to the end.
            let closing = event.is_read_closed();
            while subscriber.open {
                match subscriber.stream.read(&mut buffer) {
                    Ok(0) => {
                        subscriber.open = false;
                        open -= 1;
                        poll.registry().deregister(&mut subscriber.stream)?;
                    }
                    Ok(n) => {
                        tally.reads += 1;
                        subscriber.frames.take(&buffer[..n], unix_nanos(), &mut tally);
                        if n < buffer.len() && !closing {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    if open > 0 {
        return Err(io::Error::other(format!(
            "{open} connections still open {DRAIN_LIMIT:?} after the schedule ended: the writer stalled"
        )));
    }
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_anywhere_across_reads_are_each_counted_once_in_order() {
        let bytes = frames(0..10, 1000.0, 40);
        let clock = Clock { start: 1_000_000_000, warmup: 0 };
        for split in [1, 7, 39, 40, 41, 133] {
            let mut reader = FrameReader::new(40, clock);
            let mut tally = Tally::new();
            for chunk in bytes.chunks(split) {
                reader.take(chunk, clock.start + 20_000_000, &mut tally);
            }
            assert_eq!((tally.delivered, tally.out_of_order), (10, 0), "reads of {split} bytes");
            assert_eq!(tally.latencies.len(), 10);
        }
    }

    #[test]
    fn a_missing_frame_shows_as_out_of_order_and_the_warm_up_is_not_measured() {
        let mut bytes = frames(0..3, 100.0, 16);
        bytes.extend(frames(4..6, 100.0, 16));
        let clock = Clock { start: 1_000_000_000, warmup: offset_nanos(2, 100.0) };
        let mut reader = FrameReader::new(16, clock);
        let mut tally = Tally::new();
        reader.take(&bytes, clock.start + 100_000_000, &mut tally);
        assert_eq!((tally.delivered, tally.out_of_order), (5, 1));
        assert_eq!(tally.latencies.len(), 3, "publications 2, 4 and 5 are after the warm-up");
    }

    #[test]
    fn the_schedule_never_runs_ahead_and_never_past_its_end() {
        let schedule =
            Schedule { start: Instant::now(), rate: 100.0, total: publications(100.0, Duration::from_secs(2)) };
        assert_eq!(schedule.total, 200);
        assert_eq!(schedule.due(schedule.start - Duration::from_millis(1)), 0);
        assert_eq!(schedule.due(schedule.start), 1);
        assert_eq!(schedule.due(schedule.start + Duration::from_millis(25)), 3);
        assert_eq!(schedule.due(schedule.start + Duration::from_secs(60)), 200);
    }

    /// `count` connected loopback pairs: (reader, writer) sockets.
    pub(super) fn loopback_pairs(count: usize) -> (Vec<TcpStream>, Vec<TcpStream>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let addr = listener.local_addr().expect("bound");
        // One at a time: the listener's queue may hold fewer.
        (0..count)
            .map(|_| {
                let reader = TcpStream::connect(addr).expect("connects");
                (reader, listener.accept().expect("accepts").0)
            })
            .unzip()
    }

    type WriteShare = fn(Vec<TcpStream>, Schedule, &[u8], usize) -> io::Result<Rounds>;

    #[test]
    fn a_writer_that_is_behind_gives_every_connection_everything_due_in_order() {
        let writers: [(Writes, WriteShare); 2] = [(Writes::Blocking, write_share), (Writes::Uring, uring::write_share)];
        for (writes, write_share) in writers {
            let (readers, sockets) = loopback_pairs(3);
            let (rate, frame_bytes) = (50.0, 20);
            let total = publications(rate, Duration::from_secs(1));
            let all = frames(0..total, rate, frame_bytes);
            // Started two seconds ago: every publication is already due.
            let schedule = Schedule { start: Instant::now() - Duration::from_secs(2), rate, total };
            let done = write_share(sockets, schedule, &all, frame_bytes).expect("writes");
            assert_eq!((done.writes, done.rounds), (3, 1), "{writes:?}: one round, one write per connection");
            for mut reader in readers {
                let mut got = Vec::new();
                reader.read_to_end(&mut got).expect("reads to the end");
                assert_eq!(got, all, "{writes:?}");
            }
        }
    }
}
