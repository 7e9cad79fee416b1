//! Command rates, each a token bucket that refills at its rate and holds at
//! most its burst:
//!
//! - every command of a connection (`client.command_rate`);
//! - every command of a user, all its connections on this node together
//!   (`client.user_command_rate`; anonymous connections share no identity
//!   and are bounded by the others);
//! - a connection's commands about one namespace's channels (a namespace's
//!   `command_rate`);
//! - a connection's subscriptions (`client.subscribe_rate`): how fast it
//!   may make the node take up channels;
//! - the commands a node relays for one emulated session of another node
//!   (`centrifuge::emulation`).
//!
//! A command with no token left is refused (the protocol's "too many
//! requests" error) and still costs one: a client that keeps sending sinks
//! into debt, and past a burst's worth of debt it is disconnected; a client
//! that pauses climbs back out. Heartbeats (pings and pongs) are never
//! counted.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

use herald_engine::UserId;
use tokio::time::Instant;

/// The configured rate; a rate of 0 turns the limit off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RateLimit {
    /// Commands per second.
    pub(crate) rate: u32,
    /// Commands that may come at once after a pause.
    pub(crate) burst: u32,
}

/// What a command may do; a command counted by several buckets gets the
/// worst of their verdicts (the greatest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Verdict {
    /// Within the rate.
    Allowed,
    /// Over it: refuse this command.
    Refused,
    /// So far over it, for so long, that the connection must end.
    Abuse,
}

/// One connection's bucket.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    tokens: f32,
    refilled: Instant,
}

impl Bucket {
    /// A full bucket.
    pub(crate) fn full(limit: RateLimit, now: Instant) -> Self {
        Self { tokens: limit.burst as f32, refilled: now }
    }

    /// Counts one command at `now`.
    pub(crate) fn take(&mut self, limit: RateLimit, now: Instant) -> Verdict {
        if limit.rate == 0 {
            return Verdict::Allowed;
        }
        let burst = limit.burst as f32;
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f32();
        self.tokens = (self.tokens + elapsed * limit.rate as f32).min(burst);
        self.refilled = now;
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Verdict::Allowed
        } else if self.tokens >= -burst {
            Verdict::Refused
        } else {
            // No deeper than this: a pause of a burst's worth of time
            // always brings a client back.
            self.tokens = -burst;
            Verdict::Abuse
        }
    }

    /// Whether the bucket has refilled to its burst by `now`: it is then
    /// no different from a new one.
    fn is_full(&self, limit: RateLimit, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f32();
        self.tokens + elapsed * limit.rate as f32 >= limit.burst as f32
    }
}

/// The limits every connection of a node is held to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RateLimits {
    /// All of a connection's commands.
    pub(crate) commands: RateLimit,
    /// A connection's subscriptions.
    pub(crate) subscriptions: RateLimit,
}

impl RateLimits {
    /// From `[client]`.
    pub(crate) fn of(client: &crate::config::ClientConfig) -> Self {
        Self {
            commands: RateLimit { rate: client.command_rate, burst: client.command_burst },
            subscriptions: RateLimit { rate: client.subscribe_rate, burst: client.subscribe_burst },
        }
    }
}

/// One connection's buckets.
#[derive(Debug)]
pub(crate) struct ConnectionRates {
    commands: Bucket,
    subscriptions: Bucket,
    /// One per namespace with a `command_rate`, made on first use: at most
    /// as many as the configuration has namespaces. Boxed: most
    /// connections never have one, and every idle connection pays for the
    /// inline size.
    namespaces: Option<Box<NamespaceBuckets>>,
}

/// A connection's buckets for namespaces, by name.
#[derive(Debug, Default)]
struct NamespaceBuckets(Vec<(String, Bucket)>);

impl ConnectionRates {
    /// Full buckets.
    pub(crate) fn new(limits: RateLimits, now: Instant) -> Self {
        Self {
            commands: Bucket::full(limits.commands, now),
            subscriptions: Bucket::full(limits.subscriptions, now),
            namespaces: None,
        }
    }

    /// Counts one command.
    pub(crate) fn command(&mut self, limits: RateLimits, now: Instant) -> Verdict {
        self.commands.take(limits.commands, now)
    }

    /// Counts one subscription.
    pub(crate) fn subscription(&mut self, limits: RateLimits, now: Instant) -> Verdict {
        self.subscriptions.take(limits.subscriptions, now)
    }

    /// Counts one command about a channel of `namespace`, whose limit is `limit`.
    pub(crate) fn in_namespace(&mut self, namespace: &str, limit: RateLimit, now: Instant) -> Verdict {
        if limit.rate == 0 {
            return Verdict::Allowed;
        }
        let buckets = &mut self.namespaces.get_or_insert_with(Default::default).0;
        if let Some((_, bucket)) = buckets.iter_mut().find(|(name, _)| name == namespace) {
            return bucket.take(limit, now);
        }
        let mut bucket = Bucket::full(limit, now);
        let verdict = bucket.take(limit, now);
        buckets.push((namespace.to_owned(), bucket));
        verdict
    }
}

/// Keys are swept of refilled buckets once a shard holds this many.
const SWEEP_AT: usize = 4096;
const SHARDS: usize = 16;

/// A bucket per key (a user, a session), shared by whatever draws on the
/// key. Bounded: a shard that reaches [`SWEEP_AT`] keys drops the buckets
/// that have refilled, which only keys that spent a burst within the last
/// few seconds keep.
#[derive(Debug)]
pub(crate) struct KeyedRates<K> {
    limit: RateLimit,
    hasher: RandomState,
    shards: Box<[Mutex<HashMap<K, Bucket>>]>,
}

impl<K: std::hash::Hash + Eq + Clone> KeyedRates<K> {
    pub(crate) fn new(limit: RateLimit) -> Self {
        let shards = (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect();
        Self { limit, hasher: RandomState::new(), shards }
    }

    /// Counts one use of `key`.
    pub(crate) fn take(&self, key: &K, now: Instant) -> Verdict {
        let limit = self.limit;
        if limit.rate == 0 {
            return Verdict::Allowed;
        }
        let hash = self.hasher.hash_one(key).checked_rem(SHARDS as u64).unwrap_or(0);
        let at = usize::try_from(hash).unwrap_or(0);
        let Some(shard) = self.shards.get(at) else { return Verdict::Allowed };
        let mut keys = shard.lock().unwrap_or_else(|e| e.into_inner());
        if keys.len() >= SWEEP_AT && !keys.contains_key(key) {
            keys.retain(|_, bucket| !bucket.is_full(limit, now));
        }
        keys.entry(key.clone()).or_insert_with(|| Bucket::full(limit, now)).take(limit, now)
    }

    /// Keys with a bucket, for tests.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map_or(0, |m| m.len())).sum()
    }
}

/// A node's per-user buckets: every connection of a user on this node
/// draws from one.
#[derive(Debug)]
pub(crate) struct UserRates(KeyedRates<UserId>);

impl UserRates {
    /// From `[client]`.
    pub(crate) fn of(client: &crate::config::ClientConfig) -> Self {
        Self::new(RateLimit { rate: client.user_command_rate, burst: client.user_command_burst })
    }

    pub(crate) fn new(limit: RateLimit) -> Self {
        Self(KeyedRates::new(limit))
    }

    /// Counts one command of `user`. Anonymous users are not counted here.
    pub(crate) fn take(&self, user: &UserId, now: Instant) -> Verdict {
        match user.is_anonymous() {
            true => Verdict::Allowed,
            false => self.0.take(user, now),
        }
    }

    /// Users with a bucket, for tests.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_passes_then_commands_are_refused_then_abuse_ends_the_connection() {
        let limit = RateLimit { rate: 10, burst: 5 };
        let start = Instant::now();
        let mut bucket = Bucket::full(limit, start);
        let verdicts: Vec<Verdict> = (0..11).map(|_| bucket.take(limit, start)).collect();
        assert_eq!(&verdicts[..5], &[Verdict::Allowed; 5], "the burst");
        assert_eq!(&verdicts[5..10], &[Verdict::Refused; 5], "then refusals, a burst's worth");
        assert_eq!(verdicts[10], Verdict::Abuse, "then the connection ends");
    }

    #[test]
    fn a_pause_refills_the_bucket_at_the_rate() {
        let limit = RateLimit { rate: 10, burst: 5 };
        let start = Instant::now();
        let mut bucket = Bucket::full(limit, start);
        for _ in 0..8 {
            bucket.take(limit, start);
        }
        assert_eq!(bucket.take(limit, start + Duration::from_millis(100)), Verdict::Refused, "still in debt");
        assert_eq!(bucket.take(limit, start + Duration::from_secs(1)), Verdict::Allowed, "a second later: back");
        let off = RateLimit { rate: 0, burst: 0 };
        assert!((0..1000).all(|_| bucket.take(off, start) == Verdict::Allowed), "rate 0: no limit");
    }

    #[test]
    fn a_users_connections_draw_from_one_bucket_and_anonymous_ones_from_none() {
        let users = UserRates::new(RateLimit { rate: 10, burst: 3 });
        let now = Instant::now();
        let alice = UserId::new("alice").unwrap();
        let verdicts: Vec<Verdict> = (0..4).map(|_| users.take(&alice, now)).collect();
        assert_eq!(verdicts, [Verdict::Allowed, Verdict::Allowed, Verdict::Allowed, Verdict::Refused]);
        assert_eq!(users.take(&UserId::new("bob").unwrap(), now), Verdict::Allowed, "another user: their own");
        let anonymous = UserId::anonymous();
        assert!((0..100).all(|_| users.take(&anonymous, now) == Verdict::Allowed));
    }

    #[test]
    fn the_user_table_sheds_refilled_buckets_when_it_grows() {
        let users = UserRates::new(RateLimit { rate: 100, burst: 1 });
        let start = Instant::now();
        for n in 0..(SWEEP_AT * SHARDS * 2) {
            users.take(&UserId::new(&format!("u{n}")).unwrap(), start + Duration::from_millis(n as u64));
        }
        assert!(users.len() <= SWEEP_AT * SHARDS, "{} users kept", users.len());
    }

    #[test]
    fn a_namespace_has_its_own_bucket_beside_the_connections() {
        let limits = RateLimits {
            commands: RateLimit { rate: 100, burst: 100 },
            subscriptions: RateLimit { rate: 1, burst: 2 },
        };
        let now = Instant::now();
        let mut rates = ConnectionRates::new(limits, now);
        let chat = RateLimit { rate: 1, burst: 2 };
        let verdicts: Vec<Verdict> = (0..3).map(|_| rates.in_namespace("chat", chat, now)).collect();
        assert_eq!(verdicts, [Verdict::Allowed, Verdict::Allowed, Verdict::Refused]);
        assert_eq!(rates.in_namespace("news", chat, now), Verdict::Allowed, "another namespace");
        assert_eq!(rates.command(limits, now), Verdict::Allowed, "the connection's own bucket is apart");
        let subscriptions: Vec<Verdict> = (0..3).map(|_| rates.subscription(limits, now)).collect();
        assert_eq!(subscriptions, [Verdict::Allowed, Verdict::Allowed, Verdict::Refused]);
        assert!(Verdict::Abuse > Verdict::Refused && Verdict::Refused > Verdict::Allowed, "the worst wins");
    }
}
