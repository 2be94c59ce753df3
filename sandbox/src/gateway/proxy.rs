//! One Envoy driven through xDS files: translate, render, write what changed, read back acks.
//!
//! Usable without an API server: hand [`Objects`] to [`Proxy::apply`].

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Mutex;
use tracing::{debug, error, info, warn};

use super::envoy::EnvoyProcess;
use super::files::{self, Step};
use super::model::{Objects, PluginOutcome, WasmFilter};
use super::xds::{self, Layout, ResourceKey};
use super::{translate, wasm, Error, GatewayConfig, TranslateConfig};

/// How long one make-before-break step waits for Envoy before going on anyway.
const STEP_ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long [`Proxy::start`] waits for Envoy to take the first configuration.
const START_ACK_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(2);
/// Set (to anything) to keep the gateway's files after it stops.
pub const KEEP_DIR_ENV: &str = "SANDBOX_KEEP_GATEWAY_DIR";
const ACK_STATS_FILTER: &str = "(version_text|update_rejected|total_listeners_warming)$";

/// What one [`Proxy::apply`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// The `version_info` of the files written (unchanged if nothing was written).
    pub version: u64,
    /// Resources written, in order.
    pub written: Vec<ResourceKey>,
    /// Resource files deleted.
    pub removed: Vec<ResourceKey>,
    /// What was skipped and why (see [`Translation::problems`](super::Translation::problems)).
    pub problems: Vec<String>,
}

/// Envoy's verdict on the files currently written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckReport {
    /// Resources whose latest version Envoy refused (it keeps serving the previous one), with
    /// that version.
    pub rejected: BTreeMap<ResourceKey, u64>,
}

#[derive(Debug, Clone)]
struct Written {
    content: String,
    version: u64,
    /// `update_rejected` of the subscription just before this version was written.
    rejected_before: u64,
}

struct State {
    written: BTreeMap<ResourceKey, Written>,
    version: u64,
    /// The last WasmPlugin conversions that succeeded: Higress keeps them when a later edit is
    /// invalid.
    last_good: BTreeMap<String, WasmFilter>,
    /// Problems already logged (each is logged once while it lasts).
    reported: BTreeSet<String>,
}

/// The gateway's directory: a temp dir removed on drop (kept when [`KEEP_DIR_ENV`] is set or
/// a test panics), or a given one left alone.
struct WorkDir {
    path: PathBuf,
    temporary: bool,
}

impl WorkDir {
    fn create(given: Option<&Path>) -> Result<Self, Error> {
        let (path, temporary) = match given {
            Some(path) => (path.to_path_buf(), false),
            None => (
                std::env::temp_dir().join(format!("sandbox-gateway-{}", uuid::Uuid::new_v4())),
                true,
            ),
        };
        fs::create_dir_all(&path)
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        Ok(Self { path, temporary })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.temporary {
            return;
        }
        if std::thread::panicking() || std::env::var_os(KEEP_DIR_ENV).is_some() {
            eprintln!("sandbox gateway files kept in {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// A running Envoy and the xDS files that drive it. Envoy is killed on drop.
pub struct Proxy {
    // Field order is drop order: Envoy goes before its directory.
    envoy: EnvoyProcess,
    layout: Layout,
    listener: SocketAddr,
    translate: TranslateConfig,
    state: Mutex<State>,
    _dir: WorkDir,
}

impl Proxy {
    /// Starts Envoy and applies `initial`; returns once the listener serves it.
    pub async fn start(config: &GatewayConfig, initial: &Objects) -> Result<Self, Error> {
        let dir = WorkDir::create(config.work_dir.as_deref())?;
        let layout = Layout::new(&dir.path);
        files::create_dirs(&layout)?;
        // LDS and CDS must exist when Envoy starts; they begin empty.
        files::write_atomically(&layout, &ResourceKey::Listeners, 0, "[]")?;
        files::write_atomically(&layout, &ResourceKey::Clusters, 0, "[]")?;
        let bootstrap = serde_json::to_string_pretty(&xds::bootstrap(&layout))
            .map_err(|e| Error::io("serializing the bootstrap", e.into()))?;
        fs::write(layout.bootstrap(), bootstrap)
            .map_err(|e| Error::io("writing the bootstrap", e))?;
        let port = match config.listen_port {
            Some(port) => port,
            None => free_port()?,
        };
        let envoy = EnvoyProcess::start(
            &config.envoy_bin,
            &layout.bootstrap(),
            layout.dir(),
            config.concurrency,
            &config.envoy_log_level,
        )
        .await?;
        info!(admin = %envoy.admin_addr(), pid = envoy.pid(), dir = %layout.dir().display(), "Envoy started");
        let mut written = BTreeMap::new();
        for key in [ResourceKey::Listeners, ResourceKey::Clusters] {
            written.insert(
                key,
                Written {
                    content: "[]".to_string(),
                    version: 0,
                    rejected_before: 0,
                },
            );
        }
        let proxy = Self {
            envoy,
            layout,
            listener: SocketAddr::from(([127, 0, 0, 1], port)),
            translate: config.translate_config(),
            state: Mutex::new(State {
                written,
                version: 0,
                last_good: BTreeMap::new(),
                reported: BTreeSet::new(),
            }),
            _dir: dir,
        };
        proxy.apply(initial).await?;
        proxy.wait_acked(START_ACK_TIMEOUT).await?;
        proxy.check_listener().await?;
        info!(listener = %proxy.listener, "gateway listening");
        Ok(proxy)
    }

    /// The address of the HTTP listener.
    pub fn listener_addr(&self) -> SocketAddr {
        self.listener
    }

    /// The address of Envoy's admin interface.
    pub fn admin_addr(&self) -> SocketAddr {
        self.envoy.admin_addr()
    }

    /// The directory with the bootstrap, the xDS files, `envoy.log` and `access.log`.
    pub fn dir(&self) -> &Path {
        self.layout.dir()
    }

    /// Envoy's recent warnings and errors.
    pub fn log_tail(&self) -> String {
        self.envoy.log_tail()
    }

    /// A GET on Envoy's admin API.
    pub async fn admin_get(&self, path: &str) -> Result<String, Error> {
        self.envoy.admin_get(path).await
    }

    /// Counters, gauges and text readouts matching the RE2 `filter`.
    pub async fn stats(&self, filter: &str) -> Result<BTreeMap<String, String>, Error> {
        self.envoy.stats(filter).await
    }

    /// Translates `objects` and writes the resources whose content changed (nothing at all
    /// when nothing changed), in make-before-break order. Returns without waiting for Envoy,
    /// except between dependent steps; see [`Proxy::wait_acked`].
    pub async fn apply(&self, objects: &Objects) -> Result<ApplyReport, Error> {
        if let Some(status) = self.envoy.exit_status() {
            return Err(Error::EnvoyExited {
                status: status.to_string(),
                log_tail: self.envoy.log_tail(),
            });
        }
        let translation = translate(objects, &self.translate);
        let mut state = self.state.lock().await;
        let mut problems = translation.problems.clone();
        let filters = state.resolve_filters(&translation.plugins, &mut problems);
        state.report(&problems);

        let resources = xds::render(
            xds::Input {
                port: self.listener.port(),
                virtual_hosts: &translation.virtual_hosts,
                clusters: &translation.clusters,
                filters: &filters,
            },
            &self.layout,
        );
        let old: BTreeMap<ResourceKey, String> = state
            .written
            .iter()
            .map(|(k, w)| (k.clone(), w.content.clone()))
            .collect();
        let steps = files::plan(&old, &resources);
        let mut report = ApplyReport {
            version: state.version,
            problems,
            ..ApplyReport::default()
        };
        if steps.is_empty() {
            return Ok(report);
        }
        let version = state.version + 1;
        let baseline = self
            .envoy
            .stats("update_rejected$")
            .await
            .unwrap_or_default();
        for step in steps {
            match step {
                Step::Write(key) => {
                    let content = &resources[&key];
                    files::write_atomically(&self.layout, &key, version, content)?;
                    let rejected_before = baseline
                        .get(&format!("{}update_rejected", key.stats_prefix()))
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    state.written.insert(
                        key.clone(),
                        Written {
                            content: content.clone(),
                            version,
                            rejected_before,
                        },
                    );
                    report.written.push(key);
                }
                Step::AwaitAck(key) => {
                    let expected = state.written.get(&key).map(|w| expectation(&key, w));
                    if let Some(expected) = expected {
                        if let Err(e) = self.await_acks(&[expected], STEP_ACK_TIMEOUT).await {
                            warn!(error = %e, "going on without Envoy's ack");
                        }
                    }
                }
                Step::Remove(key) => {
                    files::remove(&self.layout, &key)?;
                    state.written.remove(&key);
                    report.removed.push(key);
                }
            }
        }
        state.version = version;
        report.version = version;
        debug!(version, written = ?report.written, removed = ?report.removed, "xDS files updated");
        Ok(report)
    }

    /// Waits until Envoy has taken (or refused) the latest version of every file, and no
    /// listener is still warming.
    pub async fn wait_acked(&self, timeout: Duration) -> Result<AckReport, Error> {
        let expected: Vec<Expectation> = {
            let state = self.state.lock().await;
            state
                .written
                .iter()
                .map(|(k, w)| expectation(k, w))
                .collect()
        };
        self.await_acks(&expected, timeout).await
    }

    async fn await_acks(
        &self,
        expected: &[Expectation],
        timeout: Duration,
    ) -> Result<AckReport, Error> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.envoy.exit_status() {
                return Err(Error::EnvoyExited {
                    status: status.to_string(),
                    log_tail: self.envoy.log_tail(),
                });
            }
            let stats = self.envoy.stats(ACK_STATS_FILTER).await?;
            let mut pending = Vec::new();
            let mut report = AckReport::default();
            for e in expected {
                match e.verdict(&stats) {
                    Verdict::Taken => {}
                    Verdict::Rejected => {
                        report.rejected.insert(e.key.clone(), e.version);
                    }
                    Verdict::Pending(seen) => pending.push(format!(
                        "{:?}: want version {}, Envoy has {seen}",
                        e.key, e.version
                    )),
                }
            }
            let warming = stats
                .get("listener_manager.total_listeners_warming")
                .is_some_and(|v| v != "0");
            if pending.is_empty() && !warming {
                for (key, version) in &report.rejected {
                    warn!(resource = ?key, version, "Envoy rejected this version and keeps the previous one");
                }
                return Ok(report);
            }
            if start.elapsed() > timeout {
                if warming {
                    pending.push("a listener is still warming".to_string());
                }
                return Err(Error::Timeout {
                    what: format!("Envoy to take the xDS files: {}", pending.join("; ")),
                    log_tail: self.envoy.log_tail(),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn check_listener(&self) -> Result<(), Error> {
        let text = self.envoy.admin_get("/listeners?format=json").await?;
        let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let port = json["listener_statuses"]
            .as_array()
            .and_then(|all| all.iter().find(|l| l["name"] == xds::LISTENER_NAME))
            .and_then(|l| l["local_address"]["socket_address"]["port_value"].as_u64());
        if port != Some(u64::from(self.listener.port())) {
            return Err(Error::EnvoyStart {
                reason: format!(
                    "listener on 127.0.0.1:{} is not up (Envoy reports {text})",
                    self.listener.port()
                ),
                log_tail: self.envoy.log_tail(),
            });
        }
        Ok(())
    }

    /// Kills Envoy now (it is also killed on drop).
    pub fn stop(&self) {
        self.envoy.kill();
    }
}

impl State {
    /// The filters to install: successful conversions, the last good one of a plugin whose
    /// latest edit is invalid, none for disabled or unloadable plugins; in chain order.
    fn resolve_filters(
        &mut self,
        plugins: &BTreeMap<String, PluginOutcome>,
        problems: &mut Vec<String>,
    ) -> Vec<WasmFilter> {
        self.last_good.retain(|name, _| plugins.contains_key(name));
        let mut out = Vec::new();
        for (name, outcome) in plugins {
            match outcome {
                PluginOutcome::Filter(f) if f.wasm.is_file() => {
                    self.last_good.insert(name.clone(), f.clone());
                    out.push(f.clone());
                }
                PluginOutcome::Filter(f) => {
                    problems.push(format!(
                        "wasmPlugin {name}: {} does not exist (build it with `cargo xtask wasm`); \
                         no filter installed",
                        f.wasm.display()
                    ));
                    self.last_good.remove(name);
                }
                PluginOutcome::Disabled => {
                    self.last_good.remove(name);
                }
                PluginOutcome::Invalid(reason) => match self.last_good.get(name) {
                    Some(previous) => {
                        problems.push(format!("{reason}; keeping its previous config"));
                        out.push(previous.clone());
                    }
                    None => problems.push(reason.clone()),
                },
                PluginOutcome::Unsupported(reason) => {
                    problems.push(format!("{reason}; no filter installed"));
                    self.last_good.remove(name);
                }
            }
        }
        wasm::order(&mut out);
        out
    }

    fn report(&mut self, problems: &[String]) {
        let now: BTreeSet<String> = problems.iter().cloned().collect();
        for problem in now.difference(&self.reported) {
            if problem.contains("wasmPlugin") {
                error!("{problem}");
            } else {
                warn!("{problem}");
            }
        }
        self.reported = now;
    }
}

struct Expectation {
    key: ResourceKey,
    version: u64,
    rejected_before: u64,
}

enum Verdict {
    Taken,
    Rejected,
    Pending(String),
}

fn expectation(key: &ResourceKey, w: &Written) -> Expectation {
    Expectation {
        key: key.clone(),
        version: w.version,
        rejected_before: w.rejected_before,
    }
}

impl Expectation {
    fn verdict(&self, stats: &BTreeMap<String, String>) -> Verdict {
        let prefix = self.key.stats_prefix();
        let seen = stats.get(&format!("{prefix}version_text"));
        if seen.is_some_and(|v| *v == self.version.to_string()) {
            return Verdict::Taken;
        }
        let rejected: u64 = stats
            .get(&format!("{prefix}update_rejected"))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if rejected > self.rejected_before {
            return Verdict::Rejected;
        }
        Verdict::Pending(seen.cloned().unwrap_or_else(|| "nothing".to_string()))
    }
}

fn free_port() -> Result<u16, Error> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
        .map_err(|e| Error::io("finding a free port", e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::io("finding a free port", e))
}
