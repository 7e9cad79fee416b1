//! Who may open a connection: a cap on the node's open connections, a cap
//! on each source's, and a rate of new connections per source (a token
//! bucket with as much burst as its rate). A source is an IPv4 address,
//! also when a dual-stack listener sees it IPv4-mapped, or an IPv6
//! address's /64 network, which one host can hold whole ([`source`]).
//!
//! A [`Permit`] holds a connection's place and gives it back when dropped.
//! It travels with the connection's requests, so a WebSocket keeps its
//! place for as long as its session runs, long after the HTTP request that
//! opened it.
//!
//! The per-address table holds only addresses with open connections or a
//! bucket still refilling, so it is bounded by recent connections; it is
//! not kept at all when no per-address limit is set.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::time::Instant;

/// Whom per-address limits count a peer against: an IPv4 address (as
/// such when it arrives IPv4-mapped), or an IPv6 address's /64 network.
pub(crate) fn source(peer: IpAddr) -> IpAddr {
    match peer.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX))),
        v4 => v4,
    }
}

/// Addresses are swept from the table every this many admissions.
const SWEEP_EVERY: u64 = 1024;

/// The caps, from `[http]`; 0 turns one off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) max_connections: usize,
    pub(crate) max_connections_per_ip: usize,
    pub(crate) connection_rate_per_ip: u32,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The node holds `max_connections`.
    NodeFull,
    /// The address holds `max_connections_per_ip`.
    AddressFull,
    /// The address opened connections faster than `connection_rate_per_ip`.
    AddressTooFast,
}

impl Refusal {
    /// The HTTP status line the refused client gets.
    pub(crate) fn status_line(self) -> &'static str {
        match self {
            Refusal::NodeFull => "503 Service Unavailable",
            Refusal::AddressFull | Refusal::AddressTooFast => "429 Too Many Requests",
        }
    }
}

#[derive(Debug)]
struct Address {
    open: usize,
    tokens: f64,
    refilled: Instant,
}

#[derive(Debug, Default)]
struct Table {
    addresses: HashMap<IpAddr, Address>,
    admissions: u64,
}

/// The node's connection accounting.
#[derive(Debug)]
pub(crate) struct Admission {
    limits: Limits,
    open: AtomicUsize,
    table: Mutex<Table>,
}

/// A connection's place; given back when dropped.
#[derive(Debug)]
pub(crate) struct Permit {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Admission {
    pub(crate) fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self { limits, open: AtomicUsize::new(0), table: Mutex::new(Table::default()) })
    }

    fn per_address(&self) -> bool {
        self.limits.max_connections_per_ip > 0 || self.limits.connection_rate_per_ip > 0
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Open connections on the node.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Admits a connection from `ip`, or says why not. Without any cap
    /// there is nothing to count, and no permit.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Option<Permit>, Refusal> {
        if self.limits == Limits::default() {
            return Ok(None);
        }
        let ip = source(ip);
        let max = self.limits.max_connections;
        let counted = self.open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
            (max == 0 || open < max).then(|| open.saturating_add(1))
        });
        if counted.is_err() {
            return Err(Refusal::NodeFull);
        }
        if self.per_address() {
            if let Err(refusal) = self.admit_address(ip, Instant::now()) {
                self.open.fetch_sub(1, Ordering::AcqRel);
                return Err(refusal);
            }
        }
        Ok(Some(Permit { admission: self.clone(), ip }))
    }

    fn admit_address(&self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        debug_assert_eq!(ip, source(ip), "counted by source");
        let rate = f64::from(self.limits.connection_rate_per_ip);
        let mut table = self.table();
        table.admissions = table.admissions.wrapping_add(1);
        if table.admissions % SWEEP_EVERY == 0 {
            table.addresses.retain(|_, address| address.open > 0 || !refilled(address, rate, now));
        }
        let address = table.addresses.entry(ip).or_insert(Address { open: 0, tokens: rate, refilled: now });
        if self.limits.max_connections_per_ip > 0 && address.open >= self.limits.max_connections_per_ip {
            return Err(Refusal::AddressFull);
        }
        if rate > 0.0 {
            let elapsed = now.saturating_duration_since(address.refilled).as_secs_f64();
            address.tokens = (address.tokens + elapsed * rate).min(rate);
            address.refilled = now;
            if address.tokens < 1.0 {
                return Err(Refusal::AddressTooFast);
            }
            address.tokens -= 1.0;
        }
        address.open = address.open.saturating_add(1);
        Ok(())
    }

    fn release(&self, ip: IpAddr) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        if !self.per_address() {
            return;
        }
        let rate = f64::from(self.limits.connection_rate_per_ip);
        let mut table = self.table();
        let Some(address) = table.addresses.get_mut(&ip) else { return };
        address.open = address.open.saturating_sub(1);
        if address.open == 0 && refilled(address, rate, Instant::now()) {
            table.addresses.remove(&ip);
        }
    }

    /// Addresses the table remembers.
    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.table().addresses.len()
    }
}

/// Whether `address`'s bucket is full again, so forgetting it loses nothing.
fn refilled(address: &Address, rate: f64, now: Instant) -> bool {
    rate == 0.0 || address.tokens + now.saturating_duration_since(address.refilled).as_secs_f64() * rate >= rate
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.admission.release(self.ip);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn the_node_cap_refuses_the_connection_over_it_and_a_closed_one_frees_its_place() {
        let admission = Admission::new(Limits { max_connections: 2, ..Limits::default() });
        let first = admission.admit(ip(1)).unwrap().unwrap();
        let _second = admission.admit(ip(2)).unwrap();
        assert_eq!(admission.admit(ip(3)).unwrap_err(), Refusal::NodeFull);
        drop(first);
        assert!(admission.admit(ip(3)).is_ok());
        assert_eq!(admission.remembered(), 0, "no per-address limit, no table");
    }

    #[test]
    fn an_ipv4_peer_counts_as_itself_however_it_arrives_and_an_ipv6_one_as_its_64() {
        let admission = Admission::new(Limits { max_connections_per_ip: 1, ..Limits::default() });
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let _held = admission.admit(v4).unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(admission.admit(mapped).unwrap_err(), Refusal::AddressFull, "the same host, mapped");
        let other: IpAddr = "::ffff:192.0.2.8".parse().unwrap();
        assert!(admission.admit(other).is_ok(), "another IPv4 host is not the one mapped before it");

        let _v6 = admission.admit("2001:db8:1:2::1".parse().unwrap()).unwrap();
        let same_64 = admission.admit("2001:db8:1:2:ffff::9".parse().unwrap());
        assert_eq!(same_64.unwrap_err(), Refusal::AddressFull, "one /64 is one source");
        assert!(admission.admit("2001:db8:1:3::1".parse().unwrap()).is_ok(), "the next /64 is another");
    }

    #[test]
    fn an_address_may_hold_only_its_share_while_others_connect() {
        let admission = Admission::new(Limits { max_connections_per_ip: 2, ..Limits::default() });
        let held: Vec<Option<Permit>> = (0..2).map(|_| admission.admit(ip(1)).unwrap()).collect();
        assert_eq!(admission.admit(ip(1)).unwrap_err(), Refusal::AddressFull);
        let bystander = admission.admit(ip(2)).expect("another address is unaffected");
        drop(held);
        drop(bystander);
        assert_eq!(admission.open(), 0);
        assert_eq!(admission.remembered(), 0, "addresses without connections are forgotten");
    }

    #[tokio::test(start_paused = true)]
    async fn an_address_may_open_connections_at_its_rate_with_as_much_burst() {
        let admission = Admission::new(Limits { connection_rate_per_ip: 5, ..Limits::default() });
        let burst: Vec<Option<Permit>> = (0..5).map(|_| admission.admit(ip(1)).unwrap()).collect();
        assert_eq!(admission.admit(ip(1)).unwrap_err(), Refusal::AddressTooFast);
        assert!(admission.admit(ip(2)).is_ok(), "another address has its own bucket");
        tokio::time::advance(Duration::from_millis(200)).await;
        assert!(admission.admit(ip(1)).is_ok(), "one more after a fifth of a second");
        assert_eq!(admission.admit(ip(1)).unwrap_err(), Refusal::AddressTooFast);
        drop(burst);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(admission.admit(ip(1)).is_ok());
    }
}
