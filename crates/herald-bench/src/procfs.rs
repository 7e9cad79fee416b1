//! Reading a server's memory and CPU from `/proc/<pid>`, and what machine
//! a run is on and what the hypervisor took from it, from `/proc` (Linux).

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

/// What a result was measured on: the same VM can land on hosts whose
/// kernels spend several times as long on a socket write, so a figure is
/// comparable only with figures from the same CPU.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Machine {
    /// The first `model name` of `/proc/cpuinfo`; `None` where there is none.
    pub cpu: Option<String>,
    /// `/proc/sys/kernel/osrelease`.
    pub kernel: Option<String>,
    pub cores: usize,
}

impl Machine {
    /// This machine; fields that cannot be read are `None`.
    pub fn this() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).ok();
        Self {
            cpu: read("/proc/cpuinfo").as_deref().and_then(cpu_model),
            kernel: read("/proc/sys/kernel/osrelease").map(|release| release.trim().to_owned()),
            cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        }
    }
}

impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unknown = "unknown";
        let (cpu, kernel) = (self.cpu.as_deref().unwrap_or(unknown), self.kernel.as_deref().unwrap_or(unknown));
        write!(f, "{} cores of {cpu}, Linux {kernel}", self.cores)
    }
}

/// The time the hypervisor gave this VM's CPUs to others so far (steal
/// time, all CPUs together), from `/proc/stat`; `None` where it cannot be
/// read. A run during which it grew competed with another guest for its
/// cores, which no figure of the run says otherwise.
#[derive(Debug, Clone, Copy)]
pub struct Steal(u64);

impl Steal {
    pub fn now() -> Option<Self> {
        std::fs::read_to_string("/proc/stat").ok().as_deref().and_then(steal_ticks).map(Self)
    }

    /// Seconds of CPU stolen since `earlier`.
    pub fn seconds_since(&self, earlier: &Steal) -> f64 {
        self.0.saturating_sub(earlier.0) as f64 / TICKS_PER_SECOND
    }
}

/// The `steal` field of the `cpu` line of `/proc/stat`'s text, in ticks.
fn steal_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    // cpu user nice system idle iowait irq softirq steal ...
    line.split_whitespace().nth(8)?.parse().ok()
}

/// The CPU's model name in `/proc/cpuinfo`'s text.
fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name" && !value.trim().is_empty()).then(|| value.trim().to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_is_the_first_model_name_in_cpuinfo() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel\t\t: 1\nmodel name\t: AMD EPYC\n\n\
                       processor\t: 1\nmodel name\t: AMD EPYC\n";
        assert_eq!(cpu_model(cpuinfo).as_deref(), Some("AMD EPYC"));
    }

    #[test]
    fn steal_is_the_eighth_figure_of_the_cpu_line() {
        let stat = "cpu  333278 2177 83192 383881 2601 0 38186 2086 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(steal_ticks(stat), Some(2086));
        assert_eq!(steal_ticks("cpu0 1 2 3 4 5 6 7 8\n"), None, "only the line for all CPUs counts");
        assert_eq!(steal_ticks("cpu  1 2 3\n"), None, "a kernel too old to count steal");
        let (before, after) = (Steal(2086), Steal(2095));
        assert!((after.seconds_since(&before) - 0.09).abs() < 1e-9);
        assert_eq!(before.seconds_since(&after), 0.0);
    }

    #[test]
    fn cpuinfo_without_a_model_name_names_no_cpu() {
        assert_eq!(cpu_model("processor\t: 0\nmodel\t\t: 1\nmodel name\t:   \n"), None);
    }

    #[test]
    fn this_machine_has_at_least_one_core_and_a_kernel() {
        let machine = Machine::this();
        assert!(machine.cores >= 1);
        assert!(machine.kernel.is_some_and(|release| !release.is_empty()));
    }
}
