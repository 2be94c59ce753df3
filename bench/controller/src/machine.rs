//! The machine the benchmark runs on, and how busy other processes kept it.

use std::{collections::HashMap, fs, process::Command, time::Instant};

use anyhow::{Context, Result};

use crate::controller::{stat_cpu_ticks, stat_parent, ticks_to_duration};

/// What the report says about the machine.
#[derive(Debug, Clone)]
pub struct Machine {
    pub date: String,
    pub cpu_model: String,
    pub cpus: usize,
    pub kernel: String,
    /// `/proc/loadavg`'s 1-minute average when the benchmark started.
    pub load_at_start: String,
}

impl Machine {
    pub fn read() -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                let (key, value) = l.split_once(':')?;
                (key.trim() == "model name").then(|| value.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown CPU".to_owned());
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|k| k.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        let date = Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| "on an unknown date".to_owned());
        Self {
            date,
            cpu_model,
            cpus,
            kernel,
            load_at_start: load_average(),
        }
    }
}

/// The 1-minute load average.
pub fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

/// CPU time of the whole machine and of this process with its children (the controller,
/// Envoy), to tell how much other processes took while the benchmark ran.
#[derive(Debug, Clone, Copy)]
pub struct CpuAccount {
    at: Instant,
    machine_busy_ticks: u64,
    ours_ticks: u64,
}

impl CpuAccount {
    pub fn now() -> Result<Self> {
        let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        Ok(Self {
            at: Instant::now(),
            machine_busy_ticks: machine_busy_ticks(&stat).context("parsing /proc/stat")?,
            ours_ticks: tree_ticks(std::process::id()),
        })
    }

    /// Other processes' share of all CPUs' time since `earlier` (0.5 on a 2-CPU machine: one
    /// CPU's worth). Processes of ours that ended in between are not counted as ours, so this
    /// errs towards more other work.
    pub fn other_share_since(&self, earlier: &CpuAccount) -> f64 {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let wall = self.at.duration_since(earlier.at).as_secs_f64() * cpus as f64;
        let busy = ticks_to_duration(
            self.machine_busy_ticks
                .saturating_sub(earlier.machine_busy_ticks),
        );
        let ours = ticks_to_duration(self.ours_ticks.saturating_sub(earlier.ours_ticks));
        if wall <= 0.0 {
            return 0.0;
        }
        (busy.saturating_sub(ours).as_secs_f64() / wall).clamp(0.0, 1.0)
    }
}

/// user + nice + system + irq + softirq + steal of the `cpu` line.
fn machine_busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    Some(
        [0, 1, 2, 5, 6, 7]
            .iter()
            .filter_map(|&i| fields.get(i))
            .sum(),
    )
}

/// CPU ticks of `root` and every live descendant.
fn tree_ticks(root: u32) -> u64 {
    let mut parent = HashMap::new();
    let mut ticks = HashMap::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let (Some(p), Some(t)) = (stat_parent(&stat), stat_cpu_ticks(&stat)) {
            parent.insert(pid, p);
            ticks.insert(pid, t);
        }
    }
    ticks
        .iter()
        .filter(|(pid, _)| {
            let mut pid = **pid;
            // Walk up to init; a cycle cannot happen in /proc, but bound the walk anyway.
            for _ in 0..64 {
                if pid == root {
                    return true;
                }
                match parent.get(&pid) {
                    Some(&p) if p != 0 => pid = p,
                    _ => return false,
                }
            }
            false
        })
        .map(|(_, t)| t)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_time_leaves_out_idle_and_iowait() {
        let stat = "cpu  100 5 50 1000 40 3 2 1 0 0\ncpu0 50 2 25 500 20 1 1 0 0 0\n";
        assert_eq!(machine_busy_ticks(stat), Some(100 + 5 + 50 + 3 + 2 + 1));
    }

    #[test]
    fn our_process_tree_includes_ourselves() {
        // Burn a little CPU so the count is surely above zero.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = std::hint::black_box(x.wrapping_add(i.wrapping_mul(i)));
        }
        assert!(x > 0);
        assert!(tree_ticks(std::process::id()) > 0);
    }
}
