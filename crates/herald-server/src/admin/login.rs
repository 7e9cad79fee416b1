//! Admin logins: the password check, the sessions it opens, and the brake
//! on guessing.
//!
//! A session is a random 256-bit token kept in this node's memory and in
//! the browser's `herald_admin` cookie (`HttpOnly`, `SameSite=Strict`,
//! `Secure` over TLS, path `/admin`). Sessions are node-local: behind a
//! load balancer, log in on the node the UI is served from (usually the
//! internal port). At most [`MAX_SESSIONS`] are open; a new login past
//! that ends the one closest to expiry.
//!
//! Each address (an IPv6 address by its /64 network, which one host
//! usually holds whole) may fail [`FAILURES_ALLOWED`] times per
//! [`FAILURE_WINDOW`]; past that its attempts get 429 without the password
//! being looked at, until the window ends. Many addresses do not earn more
//! guesses: past [`FAILURES_ALLOWED_IN_ALL`] failures in a window, or when
//! the bounded table of addresses is full, every address is braked. An
//! attack can then keep operators out for a while, but never gets far
//! with guessing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use crate::api::constant_time_eq;
use crate::config::Secret;

/// The most sessions open at once on a node.
pub(crate) const MAX_SESSIONS: usize = 64;
/// Wrong passwords an address may send per window.
pub(crate) const FAILURES_ALLOWED: u32 = 5;
/// The window wrong passwords are counted in.
pub(crate) const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Wrong passwords from all addresses together per window.
pub(crate) const FAILURES_ALLOWED_IN_ALL: u32 = 100;
/// Addresses whose failures are remembered at once.
const MAX_TRACKED_ADDRESSES: usize = 10_000;

/// The session cookie's name.
pub(crate) const COOKIE: &str = "herald_admin";

/// How a login attempt came out.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Login {
    /// The password matched: the new session's token.
    Opened(String),
    /// Wrong password.
    Refused,
    /// Too many wrong passwords from this address (or everywhere): try
    /// again after this long.
    Braked(Duration),
}

/// The password, the open sessions and the failures by address.
#[derive(Debug)]
pub(crate) struct Gate {
    password: Secret,
    ttl: Duration,
    sessions: Mutex<HashMap<String, Instant>>,
    /// By address: when its window began, and its failures in it.
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
    /// The same, for all addresses together.
    all_failures: Mutex<(Instant, u32)>,
}

impl Gate {
    pub(crate) fn new(password: Secret, ttl: Duration) -> Self {
        let all_failures = Mutex::new((Instant::now(), 0));
        Self { password, ttl, sessions: Mutex::default(), failures: Mutex::default(), all_failures }
    }

    /// How long a session lasts.
    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Checks `password` from `peer`, unless `peer` is braked.
    pub(crate) fn log_in(&self, peer: IpAddr, password: &str) -> Login {
        let now = Instant::now();
        if let Some(wait) = self.braked(peer, now) {
            return Login::Braked(wait);
        }
        if !constant_time_eq(password.as_bytes(), self.password.expose().as_bytes()) {
            self.count_failure(peer, now);
            return Login::Refused;
        }
        Login::Opened(self.open_session(now))
    }

    /// How long `peer` must wait before trying again, if it is braked.
    pub(crate) fn braked_for(&self, peer: IpAddr) -> Option<Duration> {
        self.braked(peer, Instant::now())
    }

    /// Whether `token` names a live session.
    pub(crate) fn is_open(&self, token: &str) -> bool {
        let now = Instant::now();
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        // Looked up by comparing every live token in constant time, so a
        // guess learns nothing from how long the answer took.
        sessions.iter().any(|(open, expires)| *expires > now && constant_time_eq(open.as_bytes(), token.as_bytes()))
    }

    /// Ends the session named by `token`, if any.
    pub(crate) fn close(&self, token: &str) {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).remove(token);
    }

    fn open_session(&self, now: Instant) -> String {
        let bytes: [u8; 32] = rand::rng().random();
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let expires = now.checked_add(self.ttl).unwrap_or(now);
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|_, expires| *expires > now);
        if sessions.len() >= MAX_SESSIONS {
            let soonest = sessions.iter().min_by_key(|(_, expires)| **expires).map(|(token, _)| token.clone());
            if let Some(soonest) = soonest {
                sessions.remove(&soonest);
            }
        }
        sessions.insert(token.clone(), expires);
        token
    }

    /// How long `peer` must wait, if it is braked.
    fn braked(&self, peer: IpAddr, now: Instant) -> Option<Duration> {
        let within = |since: Instant| now.saturating_duration_since(since) < FAILURE_WINDOW;
        let wait = |since: Instant| FAILURE_WINDOW.saturating_sub(now.saturating_duration_since(since));
        let (since, count) = *self.all_failures.lock().unwrap_or_else(|e| e.into_inner());
        if within(since) && count >= FAILURES_ALLOWED_IN_ALL {
            return Some(wait(since));
        }
        let peer = network_of(peer);
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if failures.len() >= MAX_TRACKED_ADDRESSES {
            failures.retain(|_, (since, _)| within(*since));
            if failures.len() >= MAX_TRACKED_ADDRESSES {
                let oldest = failures.values().map(|(since, _)| *since).min().unwrap_or(now);
                return Some(wait(oldest));
            }
        }
        match failures.get(&peer) {
            Some((since, count)) if within(*since) && *count >= FAILURES_ALLOWED => Some(wait(*since)),
            _ => None,
        }
    }

    fn count_failure(&self, peer: IpAddr, now: Instant) {
        let count = |entry: &mut (Instant, u32)| {
            if now.saturating_duration_since(entry.0) >= FAILURE_WINDOW {
                *entry = (now, 0);
            }
            entry.1 = entry.1.saturating_add(1);
        };
        count(&mut self.all_failures.lock().unwrap_or_else(|e| e.into_inner()));
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        count(failures.entry(network_of(peer)).or_insert((now, 0)));
    }
}

/// Whom failures are counted against: as connections are
/// ([`crate::http::admission::source`]), an IPv4 address or an IPv6 /64.
fn network_of(peer: IpAddr) -> IpAddr {
    crate::http::admission::source(peer)
}

/// The session token in a request's `Cookie` headers, if any.
pub(crate) fn session_cookie(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .filter(|token| !token.is_empty())
}

/// The `Set-Cookie` value that opens a session (`max_age` 0 ends it).
pub(crate) fn set_cookie(token: &str, max_age: Duration, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={token}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={}{secure}", max_age.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWORD: &str = "correct horse battery";

    fn gate() -> Gate {
        Gate::new(Secret::new(PASSWORD), Duration::from_secs(3600))
    }

    fn peer(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[tokio::test(start_paused = true)]
    async fn the_right_password_opens_a_session_that_expires() {
        let gate = gate();
        let Login::Opened(token) = gate.log_in(peer(1), PASSWORD) else { panic!("the password is right") };
        assert_eq!(token.len(), 64, "256 random bits, in hex");
        assert!(gate.is_open(&token));
        assert!(!gate.is_open("0000"), "a made-up token opens nothing");

        tokio::time::advance(Duration::from_secs(3601)).await;
        assert!(!gate.is_open(&token), "sessions end after admin.session_ttl");
    }

    #[tokio::test(start_paused = true)]
    async fn logging_out_ends_the_session() {
        let gate = gate();
        let Login::Opened(token) = gate.log_in(peer(1), PASSWORD) else { panic!() };
        gate.close(&token);
        assert!(!gate.is_open(&token));
    }

    #[tokio::test(start_paused = true)]
    async fn wrong_passwords_brake_the_address_for_the_rest_of_the_window() {
        let gate = gate();
        for _ in 0..FAILURES_ALLOWED {
            assert_eq!(gate.log_in(peer(1), "guess"), Login::Refused);
        }
        assert!(
            matches!(gate.log_in(peer(1), PASSWORD), Login::Braked(_)),
            "once braked, not even the right password is looked at"
        );
        assert!(matches!(gate.log_in(peer(2), PASSWORD), Login::Opened(_)), "other addresses are not braked");

        tokio::time::advance(FAILURE_WINDOW).await;
        assert!(matches!(gate.log_in(peer(1), PASSWORD), Login::Opened(_)), "the brake ends with its window");
    }

    #[tokio::test(start_paused = true)]
    async fn an_ipv6_network_is_braked_as_one_and_many_addresses_earn_no_more_guesses() {
        let gate = gate();
        let host = |n: u16| IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, n]);
        for n in 0..u16::try_from(FAILURES_ALLOWED).unwrap() {
            assert_eq!(gate.log_in(host(n), "guess"), Login::Refused);
        }
        assert!(matches!(gate.log_in(host(999), PASSWORD), Login::Braked(_)), "the same /64");

        let gate = gate_with_failures_from_many_addresses();
        assert!(matches!(gate.log_in(peer(250), PASSWORD), Login::Braked(_)), "past the budget of all addresses");
        tokio::time::advance(FAILURE_WINDOW).await;
        assert!(matches!(gate.log_in(peer(250), PASSWORD), Login::Opened(_)));
    }

    fn gate_with_failures_from_many_addresses() -> Gate {
        let gate = gate();
        for n in 0..FAILURES_ALLOWED_IN_ALL {
            let address = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n));
            assert_eq!(gate.log_in(address, "guess"), Login::Refused);
        }
        gate
    }

    #[tokio::test(start_paused = true)]
    async fn sessions_are_bounded_and_the_oldest_goes_first() {
        let gate = gate();
        let Login::Opened(first) = gate.log_in(peer(1), PASSWORD) else { panic!() };
        for _ in 0..MAX_SESSIONS {
            tokio::time::advance(Duration::from_millis(1)).await;
            assert!(matches!(gate.log_in(peer(1), PASSWORD), Login::Opened(_)));
        }
        assert!(!gate.is_open(&first));
        assert_eq!(gate.sessions.lock().unwrap().len(), MAX_SESSIONS);
    }

    #[test]
    fn the_cookie_is_found_among_others_and_set_with_its_protections() {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(axum::http::header::COOKIE, "theme=dark; herald_admin=abc123; x=y".parse().unwrap());
        assert_eq!(session_cookie(&headers), Some("abc123"));
        let cookie = set_cookie("abc123", Duration::from_secs(60), true);
        assert_eq!(cookie, "herald_admin=abc123; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=60; Secure");
    }
}
