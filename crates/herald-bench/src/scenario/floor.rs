//! `floor`: what a delivery costs on this machine with no server in the
//! way — the floor under every `fanout` figure measured here.
//!
//! A child process (`floor-writer`) plays an ideal server. It holds N
//! loopback TCP connections and, for each publication, writes one
//! ready-made frame to every one of them from plain threads, with blocking
//! writes and nothing else to do. When it falls behind, each write carries
//! every publication that is due, as a server that coalesces its writes
//! would. This process plays the subscribers: it reads with epoll (`mio`)
//! and records the latency from each publication's *scheduled* time, as
//! `fanout` does.
//!
//! Neither side has WebSocket framing, JSON, a hub or an async runtime.
//! What is left is the kernel's loopback TCP and the two processes'
//! wake-ups, on the same cores, as in a `fanout` run with the generator on
//! this machine. No server delivers with less work than this one, so a
//! latency this floor cannot reach is out of reach for any server here.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use mio::{Events, Interest, Poll, Token};
use serde::Serialize;

use super::{progress, Latency};
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
}

/// The smallest frame: a sequence number and the scheduled time.
const HEADER_BYTES: usize = 16;

/// How long subscribers wait for the last frames after the schedule ends.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// When each publication is due, shared by the writer's threads.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    start: Instant,
    start_unix_nanos: u64,
    rate: f64,
    total: u64,
}

impl Schedule {
    fn new(rate: f64, length: Duration) -> Self {
        let start = Instant::now() + Duration::from_millis(50);
        let start_unix_nanos = unix_nanos() + 50_000_000;
        Self { start, start_unix_nanos, rate, total: (rate * length.as_secs_f64()).round() as u64 }
    }

    fn offset(&self, publication: u64) -> Duration {
        Duration::from_secs_f64(publication as f64 / self.rate)
    }

    /// How many publications are due at `now`.
    fn due(&self, now: Instant) -> u64 {
        match now.checked_duration_since(self.start) {
            None => 0,
            Some(elapsed) => ((elapsed.as_secs_f64() * self.rate) as u64 + 1).min(self.total),
        }
    }

    /// Appends publication `n`'s frame: its number, its scheduled time,
    /// then padding.
    fn frame(&self, n: u64, frame_bytes: usize, out: &mut Vec<u8>) {
        let scheduled = self.start_unix_nanos + self.offset(n).as_nanos() as u64;
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&scheduled.to_le_bytes());
        out.resize(out.len() + frame_bytes - HEADER_BYTES, b'x');
    }
}

/// Says what to do when a process runs out of files (each side holds one
/// per subscriber).
fn with_file_hint(error: io::Error, held: usize) -> anyhow::Error {
    match error.raw_os_error() {
        Some(23 | 24) => anyhow::anyhow!(
            "out of file descriptors after {held} connections ({error}): raise `ulimit -n`, or ask for fewer --subscribers"
        ),
        _ => error.into(),
    }
}

fn unix_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// The writer's side (`floor-writer`): listens, prints `port P`, accepts
/// `subscribers` connections, prints `start T` (Unix nanoseconds), writes
/// every publication to every connection on schedule, prints
/// `cpu USER SYSTEM` (cores over the schedule), and closes them all.
pub fn write(
    subscribers: usize,
    rate: f64,
    length: Duration,
    frame_bytes: usize,
    threads: usize,
) -> anyhow::Result<()> {
    anyhow::ensure!(frame_bytes >= HEADER_BYTES, "--frame-bytes must be at least {HEADER_BYTES}");
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mut out = io::stdout();
    writeln!(out, "port {}", listener.local_addr()?.port())?;
    out.flush()?;
    let mut shares: Vec<Vec<TcpStream>> = (0..threads.max(1)).map(|_| Vec::new()).collect();
    for i in 0..subscribers {
        let (stream, _) = listener.accept().map_err(|e| with_file_hint(e, i))?;
        stream.set_nodelay(true)?;
        let share = i % shares.len();
        shares[share].push(stream);
    }
    let schedule = Schedule::new(rate, length);
    let frames = (0..schedule.total).fold(Vec::new(), |mut frames, n| {
        schedule.frame(n, frame_bytes, &mut frames);
        frames
    });
    writeln!(out, "start {}", schedule.start_unix_nanos)?;
    out.flush()?;
    let before = ProcessSample::read(std::process::id())?;
    std::thread::scope(|scope| {
        let writers: Vec<_> =
            shares.into_iter().map(|share| scope.spawn(|| write_share(share, schedule, &frames))).collect();
        writers.into_iter().try_for_each(|w| w.join().unwrap_or_else(|_| Err(io::Error::other("a writer panicked"))))
    })?;
    let (user, system) = ProcessSample::read(std::process::id())?.cores_since(&before);
    writeln!(out, "cpu {user} {system}")?;
    out.flush()?;
    Ok(())
}

/// One writer thread. It goes round its connections and gives each, in
/// one write, every publication due by then that it has not had yet — so
/// when it falls behind, a publication waits at most one round.
fn write_share(mut sockets: Vec<TcpStream>, schedule: Schedule, frames: &[u8]) -> io::Result<()> {
    let frame_bytes = frames.len() / schedule.total.max(1) as usize;
    let mut sent = vec![0; sockets.len()];
    loop {
        let mut behind = false;
        for (socket, sent) in sockets.iter_mut().zip(&mut sent) {
            let due = schedule.due(Instant::now());
            if due > *sent {
                socket.write_all(&frames[*sent as usize * frame_bytes..due as usize * frame_bytes])?;
                *sent = due;
                behind = true;
            }
        }
        let least = sent.iter().copied().min().unwrap_or(schedule.total);
        if least >= schedule.total {
            return Ok(());
        }
        if !behind {
            let next = schedule.start + schedule.offset(least);
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
    }
}

/// The subscribers' side: starts the writer, connects, reads until every
/// connection is closed, and reports.
pub fn run(args: &FloorArgs, herald_bench: &Path) -> anyhow::Result<FloorResult> {
    anyhow::ensure!(args.frame_bytes >= HEADER_BYTES, "--frame-bytes must be at least {HEADER_BYTES}");
    let length = args.warmup + args.duration;
    let mut writer = Command::new(herald_bench)
        .arg("floor-writer")
        .args(["--subscribers", &args.subscribers.to_string()])
        .args(["--rate", &args.rate.to_string()])
        .args(["--length", &humantime::format_duration(length).to_string()])
        .args(["--frame-bytes", &args.frame_bytes.to_string()])
        .args(["--writer-threads", &args.writer_threads.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(writer.stdout.take().expect("stdout is piped")).lines();
    let mut expect = |key: &str| -> anyhow::Result<String> {
        let line = lines.next().transpose()?.unwrap_or_default();
        line.strip_prefix(key)
            .map(|rest| rest.trim().to_owned())
            .ok_or_else(|| anyhow::anyhow!("the floor writer said {line:?}, expected `{key} …` (see its error above)"))
    };
    let port: u16 = expect("port")?.parse()?;
    let mut shares: Vec<Vec<mio::net::TcpStream>> = (0..args.reader_threads.max(1)).map(|_| Vec::new()).collect();
    for i in 0..args.subscribers {
        let stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| with_file_hint(e, i))?;
        stream.set_nonblocking(true)?;
        let share = i % shares.len();
        shares[share].push(mio::net::TcpStream::from_std(stream));
    }
    progress(&format!("connected {} subscribers to the floor writer", args.subscribers));
    let start: u64 = expect("start")?.parse()?;
    let measure_from = start + args.warmup.as_nanos() as u64;
    let deadline = Instant::now() + length + DRAIN_LIMIT;
    let before = ProcessSample::read(std::process::id())?;
    let frame_bytes = args.frame_bytes;
    let tallies = std::thread::scope(|scope| {
        let readers: Vec<_> = shares
            .into_iter()
            .map(|share| scope.spawn(move || read_share(share, frame_bytes, measure_from, deadline)))
            .collect();
        readers
            .into_iter()
            .map(|r| r.join().unwrap_or_else(|_| Err(io::Error::other("a reader panicked"))))
            .collect::<io::Result<Vec<Tally>>>()
    })?;
    let (reader_user_cores, reader_system_cores) = ProcessSample::read(std::process::id())?.cores_since(&before);
    let cpu = expect("cpu")?;
    let mut cores = cpu.split_whitespace().map(str::parse::<f64>);
    let (Some(Ok(writer_user_cores)), Some(Ok(writer_system_cores))) = (cores.next(), cores.next()) else {
        anyhow::bail!("the floor writer reported its CPU as {cpu:?}");
    };
    writer.wait()?;

    let mut all = Tally::new();
    for tally in &tallies {
        all.add(tally);
    }
    let published = (args.rate * length.as_secs_f64()).round() as u64;
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
    })
}

/// What one reader thread counted.
#[derive(Debug)]
struct Tally {
    /// Microseconds from a publication's scheduled time to its reading.
    latencies: Histogram<u64>,
    delivered: u64,
    out_of_order: u64,
}

impl Tally {
    fn new() -> Self {
        let latencies = Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
        Self { latencies, delivered: 0, out_of_order: 0 }
    }

    fn add(&mut self, other: &Tally) {
        self.latencies.add(&other.latencies).expect("tallies share their bounds");
        self.delivered += other.delivered;
        self.out_of_order += other.out_of_order;
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
    /// Measure the latency of publications scheduled from this time on.
    measure_from: u64,
    partial: Vec<u8>,
    next: u64,
}

impl FrameReader {
    fn new(frame_bytes: usize, measure_from: u64) -> Self {
        Self { frame_bytes, measure_from, partial: Vec::new(), next: 0 }
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
        let (number, scheduled) = (field(0), field(8));
        if number != self.next {
            tally.out_of_order += 1;
        }
        self.next = number + 1;
        tally.delivered += 1;
        if scheduled >= self.measure_from {
            let _ = tally.latencies.record((now.saturating_sub(scheduled) / 1000).max(1));
        }
    }
}

/// One reader thread: reads its connections until each is closed (or the
/// deadline passes).
fn read_share(
    streams: Vec<mio::net::TcpStream>,
    frame_bytes: usize,
    measure_from: u64,
    deadline: Instant,
) -> io::Result<Tally> {
    let mut poll = Poll::new()?;
    let mut subscribers: Vec<Subscriber> = streams
        .into_iter()
        .map(|stream| Subscriber { stream, frames: FrameReader::new(frame_bytes, measure_from), open: true })
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
            while subscriber.open {
                match subscriber.stream.read(&mut buffer) {
                    Ok(0) => {
                        subscriber.open = false;
                        open -= 1;
                        poll.registry().deregister(&mut subscriber.stream)?;
                    }
                    Ok(n) => subscriber.frames.take(&buffer[..n], unix_nanos(), &mut tally),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(schedule: &Schedule, numbers: std::ops::Range<u64>, frame_bytes: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for n in numbers {
            schedule.frame(n, frame_bytes, &mut out);
        }
        out
    }

    #[test]
    fn frames_split_anywhere_across_reads_are_each_counted_once_in_order() {
        let schedule = Schedule::new(1000.0, Duration::from_secs(1));
        let bytes = frames(&schedule, 0..10, 40);
        for split in [1, 7, 39, 40, 41, 133] {
            let mut reader = FrameReader::new(40, 0);
            let mut tally = Tally::new();
            for chunk in bytes.chunks(split) {
                reader.take(chunk, schedule.start_unix_nanos + 20_000_000, &mut tally);
            }
            assert_eq!((tally.delivered, tally.out_of_order), (10, 0), "reads of {split} bytes");
            assert_eq!(tally.latencies.len(), 10);
        }
    }

    #[test]
    fn a_missing_frame_shows_as_out_of_order_and_the_warm_up_is_not_measured() {
        let schedule = Schedule::new(100.0, Duration::from_secs(1));
        let mut bytes = frames(&schedule, 0..3, 16);
        bytes.extend(frames(&schedule, 4..6, 16));
        let measure_from = schedule.start_unix_nanos + schedule.offset(2).as_nanos() as u64;
        let mut reader = FrameReader::new(16, measure_from);
        let mut tally = Tally::new();
        reader.take(&bytes, schedule.start_unix_nanos + 100_000_000, &mut tally);
        assert_eq!((tally.delivered, tally.out_of_order), (5, 1));
        assert_eq!(tally.latencies.len(), 3, "publications 2, 4 and 5 are after the warm-up");
    }

    #[test]
    fn the_schedule_never_runs_ahead_and_never_past_its_end() {
        let schedule = Schedule::new(100.0, Duration::from_secs(2));
        assert_eq!(schedule.total, 200);
        assert_eq!(schedule.due(schedule.start - Duration::from_millis(1)), 0);
        assert_eq!(schedule.due(schedule.start), 1);
        assert_eq!(schedule.due(schedule.start + Duration::from_millis(25)), 3);
        assert_eq!(schedule.due(schedule.start + Duration::from_secs(60)), 200);
    }
}
