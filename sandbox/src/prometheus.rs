//! A real Prometheus next to the sandbox, for tests and demos of the controller's metric
//! analysis: [`Prometheus::start`] runs the `prometheus` binary (Debian package `prometheus`,
//! installed by `cargo xtask setup`) on a free `127.0.0.1` port with a generated config that
//! scrapes Envoy admin `/stats/prometheus` endpoints (the sandbox gateway's
//! `cluster.gateway.admin_addr()`) every second, storing into a temporary directory. The
//! process is killed, and the directory removed, when the value is dropped.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use crate::{gateway::http, process::ChildProcess};

/// Where the binary is unless `PROMETHEUS_BIN` says otherwise.
pub const DEFAULT_BIN: &str = "/usr/bin/prometheus";
/// The scrape job of the Envoy targets.
pub const JOB: &str = "gateway";
/// How long Prometheus may take to answer `/-/ready`.
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
/// Attempts with a fresh port when the chosen one was taken meanwhile.
const PORT_ATTEMPTS: usize = 3;
const LOG_TAIL_LINES: usize = 20;

/// What can go wrong running Prometheus.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "Prometheus binary not found at {path}: run `cargo xtask setup` (Debian package \
             `prometheus`) or set PROMETHEUS_BIN"
    )]
    NotFound { path: PathBuf },
    #[error("Prometheus did not start: {reason}; log tail:\n{log_tail}")]
    Start { reason: String, log_tail: String },
    #[error("timed out waiting for {what}; Prometheus log tail:\n{log_tail}")]
    Timeout { what: String, log_tail: String },
    #[error("Prometheus query {query:?}: {reason}")]
    Query { query: String, reason: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// `PROMETHEUS_BIN`, else [`DEFAULT_BIN`].
pub fn default_bin() -> PathBuf {
    std::env::var_os("PROMETHEUS_BIN").map_or_else(|| PathBuf::from(DEFAULT_BIN), PathBuf::from)
}

/// The config scraping each Envoy admin address' `/stats/prometheus` every second (JSON is
/// YAML, which Prometheus reads).
pub fn config(envoy_admins: &[SocketAddr]) -> Value {
    let targets: Vec<String> = envoy_admins.iter().map(ToString::to_string).collect();
    json!({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{
            "job_name": JOB,
            "metrics_path": "/stats/prometheus",
            "static_configs": [{"targets": targets}],
        }],
    })
}

/// A certificate and key (PEM files) for Prometheus to serve https with.
#[derive(Debug, Clone)]
pub struct Tls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// A running Prometheus, killed on drop.
pub struct Prometheus {
    process: ChildProcess,
    addr: SocketAddr,
    tls: bool,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus scraping `envoy_admins` and waits until it is ready (not until the
    /// first scrape: see [`Prometheus::wait_scraped`]).
    pub async fn start(envoy_admins: &[SocketAddr]) -> Result<Self, Error> {
        Self::start_with(envoy_admins, None).await
    }

    /// Starts Prometheus serving https only (its `--web.config.file` `tls_server_config`),
    /// for tests of clients that reach it over TLS. Returns once it listens; this harness
    /// has no TLS client, so until Prometheus is ready its API answers 503. [`Self::query`]
    /// and friends speak plain http and do not work on it.
    pub async fn start_tls(envoy_admins: &[SocketAddr], tls: &Tls) -> Result<Self, Error> {
        Self::start_with(envoy_admins, Some(tls)).await
    }

    async fn start_with(envoy_admins: &[SocketAddr], tls: Option<&Tls>) -> Result<Self, Error> {
        let bin = default_bin();
        if !bin.is_file() {
            return Err(Error::NotFound { path: bin });
        }
        let config = config(envoy_admins).to_string();
        let mut attempt = 1;
        loop {
            match Self::spawn(&bin, &config, tls).await {
                // The port was taken between choosing and binding it: try another.
                Err(Error::Start { log_tail, .. })
                    if attempt < PORT_ATTEMPTS && log_tail.contains("address already in use") =>
                {
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    /// One attempt, in a fresh directory (removed when the returned value, or the failed
    /// attempt, is dropped).
    async fn spawn(bin: &Path, config: &str, tls: Option<&Tls>) -> Result<Self, Error> {
        let dir = std::env::temp_dir().join(format!("sandbox-prometheus-{}", uuid::Uuid::new_v4()));
        fs::create_dir_all(dir.join("data")).map_err(io(format!("creating {}", dir.display())))?;
        let config_path = dir.join("prometheus.yml");
        let port = std::net::TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr())
            .map_err(io("choosing a free port"))?
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let web_config_path = dir.join("web.yml");
        let web_config = tls.map(|tls| {
            json!({"tls_server_config": {"cert_file": tls.cert_file, "key_file": tls.key_file}})
        });
        let mut command = Command::new(bin);
        command
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn");
        if web_config.is_some() {
            command.arg(format!("--web.config.file={}", web_config_path.display()));
        }
        let started = fs::write(&config_path, config)
            .map_err(io("writing prometheus.yml"))
            .and_then(|()| match &web_config {
                Some(web) => {
                    fs::write(&web_config_path, web.to_string()).map_err(io("writing web.yml"))
                }
                None => Ok(()),
            })
            .and_then(|()| {
                let log = dir.join("prometheus.log");
                ChildProcess::spawn(&mut command, log, |context, source| Error::Io {
                    context,
                    source,
                })
            });
        let process = match started {
            Ok(process) => process,
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let prometheus = Self {
            process,
            addr,
            tls: tls.is_some(),
            dir,
        };
        prometheus
            .process
            .wait_ready(STARTUP_DEADLINE, Duration::from_millis(20), async || {
                // Over TLS, plain http gets Go's "client sent an HTTP request to an HTTPS
                // server" 400: it listens.
                http::get(addr, "/-/ready", &[])
                    .await
                    .is_ok_and(|r| r.status == 200 || (tls.is_some() && r.status == 400))
            })
            .await
            .map_err(|reason| Error::Start {
                reason,
                log_tail: prometheus.log_tail(),
            })?;
        Ok(prometheus)
    }

    /// `http(s)://127.0.0.1:<port>`: the controller's `--prometheus-url`.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Prometheus's process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// `Some(status)` once Prometheus has exited.
    pub fn exit_status(&self) -> Option<std::process::ExitStatus> {
        self.process.exit_status()
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        self.process.log_tail(LOG_TAIL_LINES, |_| true)
    }

    /// An instant query; the `data` of a successful answer.
    pub async fn query(&self, promql: &str) -> Result<Value, Error> {
        let failed = |reason: String| Error::Query {
            query: promql.to_owned(),
            reason,
        };
        let encoded: String = form_urlencoded::byte_serialize(promql.as_bytes()).collect();
        let response = http::get(self.addr, &format!("/api/v1/query?query={encoded}"), &[])
            .await
            .map_err(|e| failed(e.to_string()))?;
        let body: Value =
            serde_json::from_str(&response.text()).map_err(|e| failed(format!("{e}")))?;
        if response.status != 200 || body["status"] != "success" {
            return Err(failed(format!("HTTP {}: {body}", response.status)));
        }
        Ok(body["data"].clone())
    }

    /// The values of an instant query's result vector (NaN for "NaN").
    pub async fn values(&self, promql: &str) -> Result<Vec<f64>, Error> {
        let data = self.query(promql).await?;
        Ok(data["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["value"][1].as_str())
            .filter_map(|v| v.parse().ok())
            .collect())
    }

    /// Waits until every target was scraped successfully (`up == 1`): the first scrape
    /// comes a few seconds after the start.
    pub async fn wait_scraped(&self, deadline: Duration) -> Result<(), Error> {
        let start = Instant::now();
        let query = format!("up{{job=\"{JOB}\"}}");
        loop {
            if let Ok(up) = self.values(&query).await {
                if !up.is_empty() && up.iter().all(|v| *v == 1.0) {
                    return Ok(());
                }
            }
            if start.elapsed() > deadline {
                return Err(Error::Timeout {
                    what: format!("a successful scrape of every target ({query})"),
                    log_tail: self.log_tail(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills Prometheus and waits for it.
    pub fn kill(&self) {
        self.process.kill();
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // Kill before removing the directory: `process` itself drops only after this.
        self.kill();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_scrapes_envoy_stats_every_second() {
        let admin: SocketAddr = "127.0.0.1:27901".parse().expect("an address");
        assert_eq!(
            config(&[admin]),
            json!({
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [{
                    "job_name": "gateway",
                    "metrics_path": "/stats/prometheus",
                    "static_configs": [{"targets": ["127.0.0.1:27901"]}],
                }],
            })
        );
    }
}
