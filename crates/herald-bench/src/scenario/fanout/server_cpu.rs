//! The server's CPU per delivery, read from `/proc/<pid>/stat` over the
//! publications' schedule and the drain of their deliveries: the window
//! `floor`'s writer reports of itself, so that the two compare. Connecting
//! and subscribing the clients, and their goodbyes at the end, are costs
//! per connection, not per delivery, and are not in it.

use serde::Serialize;

use crate::procfs::ProcessSample;

/// What the server spent while the publications were sent and delivered.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ServerCpu {
    /// How long the window was.
    pub seconds: f64,
    /// Deliveries counted in it.
    pub deliveries: u64,
    /// User time, in cores (1.0 is one core busy the whole window).
    pub user_cores: f64,
    /// System time, in cores.
    pub system_cores: f64,
    /// User time per delivery, in microseconds.
    pub user_us_per_delivery: f64,
    /// User and system time per delivery, in microseconds.
    pub us_per_delivery: f64,
}

impl ServerCpu {
    /// The CPU between two readings of the server, over the deliveries
    /// counted between them; `None` if there were none.
    pub fn between(before: &ProcessSample, after: &ProcessSample, deliveries: u64) -> Option<Self> {
        if deliveries == 0 {
            return None;
        }
        let seconds = after.at.duration_since(before.at).as_secs_f64();
        let (user_cores, system_cores) = after.cores_since(before);
        let per_delivery = |cores: f64| cores * seconds / deliveries as f64 * 1e6;
        Some(Self {
            seconds,
            deliveries,
            user_cores,
            system_cores,
            user_us_per_delivery: per_delivery(user_cores),
            us_per_delivery: per_delivery(user_cores + system_cores),
        })
    }
}

/// Reads the server before the publications start; [`finish`](Self::finish)
/// reads it again once they are delivered.
#[derive(Debug)]
pub struct ServerMeter {
    pid: u32,
    before: ProcessSample,
    delivered_before: u64,
}

impl ServerMeter {
    /// Starts reading `pid`, if given, with `delivered` deliveries so far.
    pub fn start(pid: Option<u32>, delivered: u64) -> anyhow::Result<Option<Self>> {
        pid.map(|pid| Ok(Self { pid, before: ProcessSample::read(pid)?, delivered_before: delivered })).transpose()
    }

    /// The server's CPU since the start, with `delivered` deliveries now.
    pub fn finish(self, delivered: u64) -> anyhow::Result<Option<ServerCpu>> {
        let after = ProcessSample::read(self.pid)?;
        Ok(ServerCpu::between(&self.before, &after, delivered.saturating_sub(self.delivered_before)))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn reading(at: Instant, user_ticks: u64, system_ticks: u64) -> ProcessSample {
        ProcessSample { rss_kib: 0, cpu_ticks: user_ticks + system_ticks, system_ticks, at }
    }

    #[test]
    fn the_cpu_of_the_window_is_shared_among_its_deliveries() {
        let start = Instant::now();
        let before = reading(start, 1_000, 5_000);
        // Two seconds later: 0.5 s of user time and 1.5 s of system time.
        let after = reading(start + Duration::from_secs(2), 1_050, 5_150);
        let cpu = ServerCpu::between(&before, &after, 100_000).expect("deliveries were counted");
        assert_eq!(cpu.deliveries, 100_000);
        assert!((cpu.seconds - 2.0).abs() < 1e-9);
        assert!((cpu.user_cores - 0.25).abs() < 1e-9, "{cpu:?}");
        assert!((cpu.system_cores - 0.75).abs() < 1e-9, "{cpu:?}");
        assert!((cpu.user_us_per_delivery - 5.0).abs() < 1e-9, "{cpu:?}");
        assert!((cpu.us_per_delivery - 20.0).abs() < 1e-9, "{cpu:?}");
    }

    #[test]
    fn the_meter_reads_a_live_process_and_counts_the_deliveries_since_it_started() {
        let meter = ServerMeter::start(Some(std::process::id()), 1_000).unwrap().expect("a pid was given");
        let cpu = meter.finish(1_250).unwrap().expect("deliveries were counted");
        assert_eq!(cpu.deliveries, 250);
        assert!(cpu.us_per_delivery >= cpu.user_us_per_delivery && cpu.user_us_per_delivery >= 0.0, "{cpu:?}");
    }

    #[test]
    fn without_a_pid_nothing_is_read() {
        assert!(ServerMeter::start(None, 0).unwrap().is_none());
    }

    #[test]
    fn a_window_without_deliveries_has_no_cost_per_delivery() {
        let start = Instant::now();
        let before = reading(start, 0, 0);
        let after = reading(start + Duration::from_secs(1), 10, 10);
        assert_eq!(ServerCpu::between(&before, &after, 0), None);
    }
}
