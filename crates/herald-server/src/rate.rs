//! A connection's command rate (`client.command_rate`, `client.command_burst`):
//! a token bucket that refills at the rate and holds at most the burst.
//!
//! A command with no token left is refused (the protocol's "too many
//! requests" error) and still costs one: a client that keeps sending sinks
//! into debt, and past a burst's worth of debt it is disconnected; a client
//! that pauses climbs back out. Heartbeats (pings and pongs) are never
//! counted.

use tokio::time::Instant;

/// The configured rate; a rate of 0 turns the limit off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RateLimit {
    /// Commands per second.
    pub(crate) rate: u32,
    /// Commands that may come at once after a pause.
    pub(crate) burst: u32,
}

/// What a command may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
}
