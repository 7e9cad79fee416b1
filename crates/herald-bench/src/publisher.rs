//! Publishing over one keep-alive HTTP/1.1 connection, on a fixed
//! schedule: through Herald's server API, a Pusher HTTP API (signed as the
//! Pusher SDKs sign), or the Socket.IO peer's `/publish`.
//!
//! Latency is measured without coordinated omission: each publication
//! carries the time it was *scheduled* to be sent, so when the publisher
//! (or the server) falls behind, the waiting counts as latency too. So
//! the publisher must not be late itself: tokio's timer fires on whole
//! milliseconds, up to two after the deadline, which would add about a
//! millisecond to every figure (the floor's writer sleeps with the
//! system's timer). [`Schedule::wait`] ends the wait on the system's timer.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Unix time in microseconds.
pub fn unix_micros(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// Where and how publications are sent.
#[derive(Debug, Clone)]
pub enum PublishVia {
    /// Herald's server API, `POST /api/publish` with `X-API-Key`.
    Herald { addr: SocketAddr, key: String },
    /// A Pusher HTTP API, `POST /apps/{id}/events`, signed.
    Pusher { addr: SocketAddr, app_id: String, key: String, secret: String },
    /// A plain `POST {path}` of `{"channel", "data"}` (the Socket.IO peer).
    Plain { addr: SocketAddr, path: String },
}

impl PublishVia {
    /// Parses `http://IP:port/path` for `Plain`.
    pub fn plain(url: &str) -> anyhow::Result<Self> {
        let rest = url.strip_prefix("http://").ok_or_else(|| anyhow::anyhow!("{url}: only http:// URLs"))?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let addr = authority.parse().map_err(|_| anyhow::anyhow!("{url}: the host must be IP:port"))?;
        Ok(Self::Plain { addr, path: if path.is_empty() { "/".into() } else { path.into() } })
    }

    fn addr(&self) -> SocketAddr {
        match self {
            Self::Herald { addr, .. } | Self::Pusher { addr, .. } | Self::Plain { addr, .. } => *addr,
        }
    }

    /// The request target, extra headers and body that publish `data`
    /// (JSON text) into `channel`.
    fn request(&self, channel: &str, data: &str) -> (String, String, String) {
        match self {
            Self::Herald { key, .. } => (
                "/api/publish".into(),
                format!("X-API-Key: {key}\r\n"),
                format!(r#"{{"channel":"{channel}","data":{data}}}"#),
            ),
            Self::Plain { path, .. } => {
                (path.clone(), String::new(), format!(r#"{{"channel":"{channel}","data":{data}}}"#))
            }
            Self::Pusher { app_id, key, secret, .. } => {
                let body = serde_json::json!({"name": "bench", "channel": channel, "data": data}).to_string();
                let path = format!("/apps/{app_id}/events");
                let timestamp = unix_micros(SystemTime::now()) / 1_000_000;
                let md5 = hex::encode(<md5::Md5 as md5::Digest>::digest(body.as_bytes()));
                let query = format!("auth_key={key}&auth_timestamp={timestamp}&auth_version=1.0&body_md5={md5}");
                let mut mac = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(secret.as_bytes())
                    .expect("HMAC takes any key length");
                hmac::Mac::update(&mut mac, format!("POST\n{path}\n{query}").as_bytes());
                let signature = hex::encode(hmac::Mac::finalize(mac).into_bytes());
                (format!("{path}?{query}&auth_signature={signature}"), String::new(), body)
            }
        }
    }

    /// Whether a reply means the publication was accepted.
    fn accepted(&self, status: u16, body: &str) -> bool {
        status == 200 && !(matches!(self, Self::Herald { .. }) && body.contains("\"error\""))
    }
}

/// A keep-alive connection that publishes.
#[derive(Debug)]
pub struct ApiClient {
    via: PublishVia,
    stream: Option<BufReader<TcpStream>>,
}

impl ApiClient {
    pub fn new(via: PublishVia) -> Self {
        Self { via, stream: None }
    }

    pub fn via(&self) -> &PublishVia {
        &self.via
    }

    /// Publishes `data` (JSON text) into `channel`; true when accepted.
    pub async fn publish(&mut self, channel: &str, data: &str) -> anyhow::Result<bool> {
        let (target, headers, body) = self.via.request(channel, data);
        let (status, reply) = self.post(&target, &headers, &body).await?;
        Ok(self.via.accepted(status, &reply))
    }

    /// `POST target`; returns the status and body. A connection the server
    /// closed, or asked to close, is opened again for the next request.
    pub async fn post(&mut self, target: &str, headers: &str, body: &str) -> anyhow::Result<(u16, String)> {
        let outcome = self.exchange(target, headers, body).await;
        if !matches!(outcome, Ok((_, _, true))) {
            self.stream = None;
        }
        outcome.map(|(status, body, _)| (status, body))
    }

    /// One request and response; the flag says whether the connection may be reused.
    async fn exchange(&mut self, target: &str, headers: &str, body: &str) -> anyhow::Result<(u16, String, bool)> {
        let addr = self.via.addr();
        if self.stream.is_none() {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            self.stream = Some(BufReader::new(stream));
        }
        let stream = self.stream.as_mut().expect("connected above");
        let request = format!(
            "POST {target} HTTP/1.1\r\nHost: {addr}\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.get_mut().write_all(request.as_bytes()).await?;
        let mut status_line = String::new();
        if stream.read_line(&mut status_line).await? == 0 {
            anyhow::bail!("the server closed the API connection");
        }
        let status: u16 = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let (mut length, mut chunked, mut reusable) = (None, false, true);
        loop {
            let mut header = String::new();
            if stream.read_line(&mut header).await? == 0 {
                anyhow::bail!("the server closed the API connection");
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            let Some((name, value)) = header.split_once(':') else { continue };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().ok();
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                reusable = !value.eq_ignore_ascii_case("close");
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                let mut size = String::new();
                stream.read_line(&mut size).await?;
                let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)?;
                let mut chunk = vec![0; size + 2];
                stream.read_exact(&mut chunk).await?;
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        } else if let Some(length) = length {
            body.resize(length, 0);
            stream.read_exact(&mut body).await?;
        } else {
            stream.read_to_end(&mut body).await?;
            reusable = false;
        }
        Ok((status, String::from_utf8_lossy(&body).into_owned(), reusable))
    }
}

/// The schedule: publication `i` is due at `start + i / rate`.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub start: tokio::time::Instant,
    pub start_wall: SystemTime,
    pub interval: Duration,
}

impl Schedule {
    pub fn new(rate_per_second: f64) -> Self {
        Self {
            start: tokio::time::Instant::now(),
            start_wall: SystemTime::now(),
            interval: Duration::from_secs_f64(1.0 / rate_per_second.max(0.001)),
        }
    }

    pub fn due(&self, i: u64) -> (tokio::time::Instant, u64) {
        let offset = self.interval.mul_f64(i as f64);
        (self.start + offset, unix_micros(self.start_wall + offset))
    }

    /// Waits until publication `i` is due, to within the system timer's
    /// precision (plus a thread hand-off, about a tenth of a millisecond,
    /// unless the task is `alone` on its thread), and answers the Unix time
    /// in microseconds it was due at, for its payload.
    pub async fn wait(&self, i: u64, alone: Alone) -> u64 {
        let (due, due_micros) = self.due(i);
        sleep_until_precisely(due, alone).await;
        due_micros
    }
}

/// Whether the waiting task is the only one on its thread: then the last
/// stretch of a wait blocks that thread; else it holds a blocking-pool
/// thread, which suits a few publishers, not thousands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alone {
    Yes,
    No,
}

/// How late tokio's timer may fire: it rounds a deadline up to its next
/// millisecond tick, and the wait for that tick is rounded up again.
const TOKIO_TIMER_SLACK: Duration = Duration::from_millis(2);

/// Sleeps until `due`, never before it: tokio's timer until shortly
/// before, then a sleep on the system's timer for the rest — on this
/// thread if the task is `alone` on it, else on the blocking pool.
pub async fn sleep_until_precisely(due: tokio::time::Instant, alone: Alone) {
    if let Some(early) = due.checked_sub(TOKIO_TIMER_SLACK) {
        tokio::time::sleep_until(early).await;
    }
    let rest = due.saturating_duration_since(tokio::time::Instant::now());
    match alone {
        _ if rest.is_zero() => {}
        Alone::Yes => std::thread::sleep(rest),
        // Only a panic in `sleep` could fail it; the deadline has passed either way.
        Alone::No => {
            let _ = tokio::task::spawn_blocking(move || std::thread::sleep(rest)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How late each of `waits` deadlines, a few milliseconds apart and off
    /// tokio's millisecond ticks, was met.
    async fn lateness(waits: u32, wait: impl AsyncFn(tokio::time::Instant)) -> Vec<Duration> {
        let mut late = Vec::new();
        for i in 0..waits {
            let due = tokio::time::Instant::now() + Duration::from_micros(3_300 + u64::from(i) * 37);
            wait(due).await;
            late.push(tokio::time::Instant::now().checked_duration_since(due).expect("woke before the deadline"));
        }
        late.sort();
        late
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_scheduled_publication_leaves_on_time_where_tokios_timer_would_be_a_millisecond_late() {
        let tokio_late = lateness(21, async |due| tokio::time::sleep_until(due).await).await;
        // The premise: tokio's timer alone leaves late by a large part of a millisecond.
        assert!(tokio_late[10] >= Duration::from_micros(400), "tokio's timer was late by only {:?}", tokio_late[10]);
        // A busy machine (other tests, other builds) can delay any thread's
        // wake-up: one attempt of three on time shows the wait can be.
        for alone in [Alone::No, Alone::Yes] {
            let mut attempts = Vec::new();
            for _ in 0..3 {
                let late = lateness(21, async |due| sleep_until_precisely(due, alone).await).await;
                attempts.push(late[10]);
                if late[10] < Duration::from_micros(300) {
                    break;
                }
            }
            assert!(
                attempts.iter().any(|median| *median < Duration::from_micros(300)),
                "the wait (alone on its thread: {alone:?}) was late by medians of {attempts:?}"
            );
        }
    }
}
