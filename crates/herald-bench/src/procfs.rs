//! Reading a server's memory and CPU from `/proc/<pid>` (Linux).

use std::time::Instant;

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub struct ProcessSample {
    pub rss_kib: u64,
    /// User plus system time, in clock ticks.
    pub cpu_ticks: u64,
    /// System (kernel) time alone, in clock ticks.
    pub system_ticks: u64,
    pub at: Instant,
}

/// Clock ticks per second (`getconf CLK_TCK`); 100 on Linux everywhere.
const TICKS_PER_SECOND: f64 = 100.0;

impl ProcessSample {
    pub fn read(pid: u32) -> anyhow::Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(|e| anyhow::anyhow!("cannot read /proc/{pid}/status ({e}); is --server-pid right?"))?;
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{pid}/status"))?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("").split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        Ok(Self { rss_kib, cpu_ticks: ticks(11) + ticks(12), system_ticks: ticks(12), at: Instant::now() })
    }

    /// CPU used between `earlier` and this sample, in percent of one core.
    pub fn cpu_percent_since(&self, earlier: &ProcessSample) -> f64 {
        let (user, system) = self.cores_since(earlier);
        (user + system) * 100.0
    }

    /// User and system time used between `earlier` and this sample, each
    /// in cores (1.0 is one core busy the whole time).
    pub fn cores_since(&self, earlier: &ProcessSample) -> (f64, f64) {
        let seconds = self.at.duration_since(earlier.at).as_secs_f64().max(f64::EPSILON);
        let system = self.system_ticks.saturating_sub(earlier.system_ticks);
        let user = self.cpu_ticks.saturating_sub(earlier.cpu_ticks).saturating_sub(system);
        let cores = |ticks: u64| ticks as f64 / TICKS_PER_SECOND / seconds;
        (cores(user), cores(system))
    }
}
