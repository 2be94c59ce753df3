//! The controller under test: `higress-canary run` as its own process (the release binary),
//! with its /metrics, its memory (`/proc/<pid>/status`) and its CPU time (`/proc/<pid>/stat`).

use std::{
    collections::BTreeMap,
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use sandbox::gateway::http;
use tokio::process::{Child, Command};

/// How long the controller may take to start serving /metrics and to report ready.
const START_PATIENCE: Duration = Duration::from_secs(30);

pub struct Controller {
    child: Child,
    pid: u32,
    metrics_addr: SocketAddr,
    log: PathBuf,
    /// The flags it was started with, for the report.
    pub command: String,
}

impl Controller {
    /// Starts `bin run` against `kubeconfig`, logging to `log`, with /metrics on a free
    /// loopback port (read back from its log). Leader election is turned off when the binary
    /// has the flag: a single replica is measured.
    pub async fn start(
        bin: &Path,
        kubeconfig: &Path,
        plugin_url: &str,
        log: &Path,
    ) -> Result<Self> {
        let mut args: Vec<String> = vec![
            "run".into(),
            "--kubeconfig".into(),
            kubeconfig.display().to_string(),
            "--metrics-addr".into(),
            "127.0.0.1:0".into(),
            "--plugin-url".into(),
            plugin_url.into(),
        ];
        let leader_election_flag = has_flag(bin, "--leader-elect").await?;
        if leader_election_flag {
            args.push("--leader-elect=false".into());
        }
        let log_file =
            fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = Command::new(bin)
            .args(&args)
            // Plain text, so the metrics address can be read from the log.
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("the controller exited at once")?;
        let start = Instant::now();
        let metrics_addr = loop {
            if let Some(addr) = metrics_addr_in(&fs::read_to_string(log).unwrap_or_default()) {
                break addr;
            }
            if let Some(status) = child.try_wait()? {
                bail!("the controller exited ({status}); its log:\n{}", tail(log));
            }
            ensure!(
                start.elapsed() < START_PATIENCE,
                "the controller logged no metrics address within {START_PATIENCE:?}; its log:\n{}",
                tail(log)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let command = format!(
            "higress-canary run --kubeconfig <sandbox> --metrics-addr 127.0.0.1:0 \
             --plugin-url file://<dist/plugin.wasm>{}",
            if leader_election_flag {
                " --leader-elect=false"
            } else {
                ""
            }
        );
        let controller = Self {
            child,
            pid,
            metrics_addr,
            log: log.to_path_buf(),
            command,
        };
        controller.until_ready().await?;
        Ok(controller)
    }

    async fn until_ready(&self) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Ok(r) = http::get(self.metrics_addr, "/readyz", &[]).await {
                if r.status == 200 {
                    return Ok(());
                }
            }
            ensure!(
                start.elapsed() < START_PATIENCE,
                "the controller was not ready within {START_PATIENCE:?}; its log:\n{}",
                tail(&self.log)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Fails when the controller has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "the controller exited ({status}); its log:\n{}",
                tail(&self.log)
            );
        }
        Ok(())
    }

    pub async fn metrics(&self) -> Result<Metrics> {
        let reply = http::get(self.metrics_addr, "/metrics", &[])
            .await
            .context("reading the controller's /metrics")?;
        ensure!(reply.status == 200, "/metrics answered {}", reply.status);
        Ok(Metrics::parse(&reply.text()))
    }

    pub fn memory(&self) -> Result<Memory> {
        Memory::of(self.pid)
    }

    pub fn cpu(&self) -> Result<Duration> {
        process_cpu(self.pid)
    }

    /// Lines of the log at WARN or ERROR level.
    pub fn warnings(&self) -> Vec<String> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .map(str::to_owned)
            .collect()
    }

    /// SIGTERM, then SIGKILL if it has not stopped within 10 s.
    pub async fn stop(mut self) -> Result<()> {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(status) => {
                status?;
            }
            Err(_) => {
                self.child.kill().await?;
                bail!("the controller did not stop within 10 s of SIGTERM");
            }
        }
        Ok(())
    }
}

/// Whether `bin run --help` lists `flag`.
async fn has_flag(bin: &Path, flag: &str) -> Result<bool> {
    let out = Command::new(bin)
        .args(["run", "--help"])
        .output()
        .await
        .with_context(|| format!("running {} run --help", bin.display()))?;
    Ok(String::from_utf8_lossy(&out.stdout).contains(flag))
}

/// `… serving /metrics, /healthz and /readyz addr=127.0.0.1:PORT`.
fn metrics_addr_in(log: &str) -> Option<SocketAddr> {
    log.lines()
        .filter(|l| l.contains("serving /metrics"))
        .find_map(|l| {
            let (_, rest) = l.split_once("addr=")?;
            rest.split_whitespace().next()?.parse().ok()
        })
}

fn tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// What the controller's /metrics said.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    pub reconciles: u64,
    /// `higress_canary_reconcile_errors_total` by its `error` label.
    pub errors: BTreeMap<String, u64>,
    pub duration_sum_seconds: f64,
    pub duration_count: u64,
}

impl Metrics {
    pub fn parse(text: &str) -> Self {
        let mut metrics = Metrics::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let number: f64 = value.parse().unwrap_or(0.0);
            if name == "higress_canary_reconciles_total" {
                metrics.reconciles = number as u64;
            } else if let Some(labels) = name.strip_prefix("higress_canary_reconcile_errors_total{")
            {
                let label = labels
                    .trim_end_matches('}')
                    .strip_prefix("error=\"")
                    .map_or(labels, |l| l.trim_end_matches('"'));
                metrics.errors.insert(label.to_owned(), number as u64);
            } else if name == "higress_canary_reconcile_duration_seconds_sum" {
                metrics.duration_sum_seconds = number;
            } else if name == "higress_canary_reconcile_duration_seconds_count" {
                metrics.duration_count = number as u64;
            }
        }
        metrics
    }

    pub fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Metrics) -> Metrics {
        Metrics {
            reconciles: self.reconciles.saturating_sub(earlier.reconciles),
            errors: self
                .errors
                .iter()
                .map(|(k, v)| {
                    let before = earlier.errors.get(k).copied().unwrap_or(0);
                    (k.clone(), v.saturating_sub(before))
                })
                .filter(|(_, v)| *v > 0)
                .collect(),
            duration_sum_seconds: self.duration_sum_seconds - earlier.duration_sum_seconds,
            duration_count: self.duration_count.saturating_sub(earlier.duration_count),
        }
    }
}

/// Resident memory of a process, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Memory {
    /// `VmRSS`: resident now, in KiB.
    pub rss_kib: u64,
    /// `VmHWM`: the peak resident size since the process started, in KiB.
    pub hwm_kib: u64,
}

impl Memory {
    pub fn of(pid: u32) -> Result<Self> {
        let path = format!("/proc/{pid}/status");
        let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        Self::parse(&text).with_context(|| format!("no VmRSS/VmHWM in {path}"))
    }

    fn parse(status: &str) -> Option<Self> {
        let field = |key: &str| {
            status.lines().find_map(|l| {
                let rest = l.strip_prefix(key)?.strip_prefix(':')?;
                rest.split_whitespace().next()?.parse::<u64>().ok()
            })
        };
        Some(Self {
            rss_kib: field("VmRSS")?,
            hwm_kib: field("VmHWM")?,
        })
    }
}

/// `utime + stime` of a process.
pub fn process_cpu(pid: u32) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let ticks = stat_cpu_ticks(&stat).with_context(|| format!("parsing {path}"))?;
    Ok(ticks_to_duration(ticks))
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line.
pub fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name may contain spaces and parentheses: fields count from the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state), so field n is rest[n - 3].
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The parent pid (field 4) of a `/proc/<pid>/stat` line.
pub fn stat_parent(stat: &str) -> Option<u32> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Clock ticks as time; Linux reports `USER_HZ` = 100 on every architecture we run on.
pub fn ticks_to_duration(ticks: u64) -> Duration {
    Duration::from_millis(ticks * 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_text_is_parsed() {
        let text = "# HELP higress_canary_reconciles_total Reconciles that completed.\n\
                    # TYPE higress_canary_reconciles_total counter\n\
                    higress_canary_reconciles_total 1234\n\
                    higress_canary_reconcile_errors_total{error=\"conflict\"} 3\n\
                    higress_canary_reconcile_errors_total{error=\"api\"} 1\n\
                    higress_canary_reconcile_duration_seconds_bucket{le=\"0.01\"} 9\n\
                    higress_canary_reconcile_duration_seconds_sum 12.5\n\
                    higress_canary_reconcile_duration_seconds_count 1238\n";
        let m = Metrics::parse(text);
        assert_eq!(m.reconciles, 1234);
        assert_eq!(m.errors.get("conflict"), Some(&3));
        assert_eq!(m.errors.get("api"), Some(&1));
        assert_eq!(m.error_total(), 4);
        assert_eq!(m.duration_count, 1238);
        assert!((m.duration_sum_seconds - 12.5).abs() < 1e-9);
        let later = Metrics::parse(&text.replace("} 3", "} 5").replace(" 1234", " 1300"));
        let delta = later.since(&m);
        assert_eq!(delta.reconciles, 66);
        assert_eq!(delta.errors, BTreeMap::from([("conflict".to_owned(), 2)]));
    }

    #[test]
    fn the_metrics_address_is_read_from_the_log() {
        let log = "2026-11-26T18:00:00Z  INFO higress_canary::metrics: serving /metrics, /healthz and /readyz addr=127.0.0.1:41234\n";
        assert_eq!(
            metrics_addr_in(log),
            Some("127.0.0.1:41234".parse().unwrap())
        );
        assert_eq!(metrics_addr_in("nothing yet"), None);
    }

    #[test]
    fn proc_status_and_stat_are_parsed() {
        let status = "Name:\thigress-canary\nVmHWM:\t   51234 kB\nVmRSS:\t   40000 kB\n";
        assert_eq!(
            Memory::parse(status),
            Some(Memory {
                rss_kib: 40_000,
                hwm_kib: 51_234
            })
        );
        let stat =
            "4242 (tokio (rt) x) S 4000 4242 4000 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 8 0";
        assert_eq!(stat_cpu_ticks(stat), Some(325));
        assert_eq!(stat_parent(stat), Some(4000));
    }
}
