//! How busy the machine was while a bench measured, and how much of that
//! was the bench: from `/proc/stat` and `/proc/<pid>/stat`, so that figures
//! taken on a shared or virtual machine can be judged.
//!
//! On a virtual machine the hypervisor may run other guests on our CPUs:
//! that time is *steal* (the 8th field of `/proc/stat`). It is neither idle
//! nor anyone's work on this machine, so it is reported on its own and not
//! counted as other processes' load.

use anyhow::{Context as _, anyhow, ensure};

/// Jiffies of all CPUs together, from the first line of `/proc/stat`.
#[derive(Debug, Clone, Copy)]
struct CpuTimes {
    total: u64,
    idle: u64,
    iowait: u64,
    steal: u64,
}

fn machine_cpu() -> anyhow::Result<CpuTimes> {
    let stat = std::fs::read_to_string("/proc/stat").context("/proc/stat")?;
    let first = stat.lines().next().unwrap_or_default();
    let f: Vec<u64> = first
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("/proc/stat: {first:?}"))?;
    ensure!(f.len() >= 8, "/proc/stat: too few fields in {first:?}");
    // user nice system idle iowait irq softirq steal; guest time is already in user.
    Ok(CpuTimes {
        total: f.iter().take(8).sum(),
        idle: f[3],
        iowait: f[4],
        steal: f[7],
    })
}

/// User + system jiffies (1/100 s, Linux's fixed USER_HZ) of process `pid`
/// ("self" for this one), all threads.
pub(crate) fn process_cpu(pid: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| path.clone())?;
    // The command name is in parentheses and may hold spaces: fields start after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("{path}: no ')'"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15.
    let field = |i: usize| -> anyhow::Result<u64> {
        f.get(i - 3)
            .ok_or_else(|| anyhow!("{path}: no field {i}"))?
            .parse()
            .with_context(|| format!("{path}: field {i}"))
    };
    Ok(field(14)? + field(15)?)
}

/// CPU use of the machine while something ran, and the bench's part of it.
#[derive(Debug)]
pub(crate) struct LoadMeter {
    /// The processes that count as the bench, and their CPU time at the start.
    pids: Vec<(String, u64)>,
    machine: CpuTimes,
}

impl LoadMeter {
    /// Starts measuring (and a profile of the measured window, see
    /// `perf.rs`); `pids` are the processes that count as the bench.
    pub(crate) fn start(pids: &[&str]) -> anyhow::Result<Self> {
        let pids = pids
            .iter()
            .map(|p| Ok(((*p).to_owned(), process_cpu(p)?)))
            .collect::<anyhow::Result<_>>()?;
        crate::perf::control("enable");
        Ok(Self {
            pids,
            machine: machine_cpu()?,
        })
    }

    pub(crate) fn finish(&self) -> anyhow::Result<Load> {
        crate::perf::control("disable");
        let used = self
            .pids
            .iter()
            .map(|(p, before)| Ok(process_cpu(p)?.saturating_sub(*before)))
            .collect::<anyhow::Result<Vec<u64>>>()?;
        let m = machine_cpu()?;
        let total = m.total.saturating_sub(self.machine.total).max(1) as f64;
        let pct = |now: u64, before: u64| 100.0 * now.saturating_sub(before) as f64 / total;
        let idle_pct = pct(m.idle, self.machine.idle);
        let iowait_pct = pct(m.iowait, self.machine.iowait);
        let steal_pct = pct(m.steal, self.machine.steal);
        let busy_pct = 100.0 - idle_pct - iowait_pct - steal_pct;
        let per_process_pct: Vec<f64> = used.iter().map(|u| 100.0 * *u as f64 / total).collect();
        let bench_pct = per_process_pct.iter().sum::<f64>();
        let loadavg = std::fs::read_to_string("/proc/loadavg").context("/proc/loadavg")?;
        Ok(Load {
            busy_pct,
            iowait_pct,
            steal_pct,
            bench_pct,
            per_process_pct,
            cpu_jiffies: used.iter().sum(),
            // Process and machine times are sampled a moment apart.
            others_pct: (busy_pct - bench_pct).max(0.0),
            loadavg_1m: loadavg.split_whitespace().next().unwrap_or("?").to_owned(),
        })
    }
}

/// Percentages of all CPUs over one run.
#[derive(Debug)]
pub(crate) struct Load {
    /// Running on this machine: not idle, not waiting for I/O, not stolen.
    pub(crate) busy_pct: f64,
    pub(crate) iowait_pct: f64,
    /// Taken by the hypervisor for other guests.
    pub(crate) steal_pct: f64,
    /// The bench's processes (this one, and the NATS server in its run).
    pub(crate) bench_pct: f64,
    /// `bench_pct` per process, in the order given to [`LoadMeter::start`].
    pub(crate) per_process_pct: Vec<f64>,
    /// The bench's processes' CPU time, in jiffies (1/100 s).
    pub(crate) cpu_jiffies: u64,
    /// Everything else running on the machine.
    pub(crate) others_pct: f64,
    pub(crate) loadavg_1m: String,
}

impl Load {
    /// CPU time the bench's processes spent per message over a run of `n`
    /// messages that took `elapsed`, in µs.
    pub(crate) fn cpu_us_per_msg(&self, elapsed: std::time::Duration, n: usize) -> f64 {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get) as f64;
        self.bench_pct / 100.0 * cpus * elapsed.as_secs_f64() * 1e6 / n as f64
    }
}

impl std::fmt::Display for Load {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cpu_busy_pct={:.1} iowait_pct={:.1} steal_pct={:.1} bench_pct={:.1} others_pct={:.1} loadavg_1m={}",
            self.busy_pct, self.iowait_pct, self.steal_pct, self.bench_pct, self.others_pct, self.loadavg_1m
        )
    }
}
