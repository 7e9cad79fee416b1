//! Publishing through the server API over one keep-alive HTTP/1.1
//! connection, on a fixed schedule.
//!
//! Latency is measured without coordinated omission: each publication
//! carries the time it was *scheduled* to be sent, so when the publisher
//! (or the server) falls behind, the waiting counts as latency too.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Unix time in microseconds.
pub fn unix_micros(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// A keep-alive connection to the server API.
#[derive(Debug)]
pub struct ApiClient {
    addr: SocketAddr,
    key: String,
    stream: Option<BufReader<TcpStream>>,
}

impl ApiClient {
    pub fn new(addr: SocketAddr, key: &str) -> Self {
        Self { addr, key: key.to_owned(), stream: None }
    }

    /// `POST /api/<method>`; returns the status and body.
    pub async fn call(&mut self, method: &str, body: &str) -> anyhow::Result<(u16, String)> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(self.addr).await?;
            stream.set_nodelay(true)?;
            self.stream = Some(BufReader::new(stream));
        }
        let stream = self.stream.as_mut().expect("connected above");
        let request = format!(
            "POST /api/{method} HTTP/1.1\r\nHost: {}\r\nX-API-Key: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            self.key,
            body.len()
        );
        stream.get_mut().write_all(request.as_bytes()).await?;
        let mut status_line = String::new();
        stream.read_line(&mut status_line).await?;
        let status: u16 = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if stream.read_line(&mut header).await? == 0 {
                anyhow::bail!("the server closed the API connection");
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        stream.read_exact(&mut body).await?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
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
}
