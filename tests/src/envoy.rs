use std::fs::{self, File};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::http::{get_text, percent_encode, Client};
use crate::paths;

/// The ECDS filter name, `<namespace>.<WasmPlugin name>` as Higress names it.
pub const FILTER_NAME: &str = "higress-system.higress-canary";
/// Cluster of the stable deployment, as Istio/Higress names it.
pub const STABLE_CLUSTER: &str = "outbound|80||demo.default.svc.cluster.local";
/// Cluster of the canary deployment.
pub const CANARY_CLUSTER: &str = "outbound|80||demo-canary.default.svc.cluster.local";
/// Cluster of a service no rule is about.
pub const OTHER_CLUSTER: &str = "outbound|80||other.default.svc.cluster.local";
/// Route name of the base Ingress.
pub const BASE_ROUTE: &str = "default/demo";
/// Route name of the canary Ingress (header-matched, inserted before the base route).
pub const CANARY_ROUTE: &str = "default/demo-canary";
/// Route name of an Ingress no rule is about.
pub const OTHER_ROUTE: &str = "default/other";
/// Host of the demo virtual host.
pub const DEMO_HOST: &str = "demo.example.com";
/// Host of the other virtual host.
pub const OTHER_HOST: &str = "other.example.com";

const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
const UPDATE_DEADLINE: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(5);
const LOG_TAIL_LINES: usize = 40;
/// One access log line: what a routing failure needs to be understood.
const ACCESS_LOG_FORMAT: &str = "%START_TIME% %REQ(:AUTHORITY)% %REQ(:PATH)% route=%ROUTE_NAME% \
    cluster=%UPSTREAM_CLUSTER% status=%RESPONSE_CODE% flags=%RESPONSE_FLAGS% \
    tag=%REQ(X-HIGRESS-CANARY)%\n";
/// Set to keep every Envoy's temp dir after the test.
const KEEP_DIRS_ENV: &str = "E2E_KEEP_ENVOY_DIRS";

// === route table ===

/// One Envoy route: a path prefix, optional header regexes, and a target cluster.
#[derive(Debug, Clone)]
pub struct Route {
    /// Route name; the plugin's `_match_route_` compares against it.
    pub name: String,
    /// Path prefix to match.
    pub prefix: String,
    /// `(header, RE2 regex)` pairs that must all match (Envoy regexes match the whole value).
    pub header_regexes: Vec<(String, String)>,
    /// Destination cluster.
    pub cluster: String,
}

impl Route {
    /// A route for every path (`/`) to `cluster`.
    pub fn new(name: &str, cluster: &str) -> Self {
        Self {
            name: name.to_string(),
            prefix: "/".to_string(),
            header_regexes: Vec::new(),
            cluster: cluster.to_string(),
        }
    }

    /// Also require header `name` to match `regex`.
    pub fn when_header_matches(mut self, name: &str, regex: &str) -> Self {
        self.header_regexes
            .push((name.to_string(), regex.to_string()));
        self
    }

    /// The canary route Higress builds for a `canary-by-header` Ingress with a header value:
    /// `<tag_header>` matching `always|<tag_value>`, to the canary cluster.
    pub fn canary(tag_header: &str, tag_value: &str) -> Self {
        Self::new(CANARY_ROUTE, CANARY_CLUSTER)
            .when_header_matches(tag_header, &format!("always|{tag_value}"))
    }

    fn to_json(&self) -> Value {
        let headers: Vec<Value> = self
            .header_regexes
            .iter()
            .map(|(name, regex)| {
                json!({"name": name, "string_match": {"safe_regex": {"regex": regex}}})
            })
            .collect();
        let mut matcher = json!({"prefix": self.prefix});
        if !headers.is_empty() {
            matcher["headers"] = Value::Array(headers);
        }
        json!({"name": self.name, "match": matcher, "route": {"cluster": self.cluster}})
    }
}

/// One virtual host: domains and routes, first matching route wins.
#[derive(Debug, Clone)]
pub struct VirtualHost {
    /// Virtual host name.
    pub name: String,
    /// Domains (Host values) it answers.
    pub domains: Vec<String>,
    /// Routes in match order.
    pub routes: Vec<Route>,
}

impl VirtualHost {
    /// An empty virtual host.
    pub fn new(name: &str, domains: &[&str]) -> Self {
        Self {
            name: name.to_string(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            routes: Vec::new(),
        }
    }

    /// Appends a route.
    pub fn route(mut self, route: Route) -> Self {
        self.routes.push(route);
        self
    }

    /// The demo host as Higress builds it from a base Ingress and a header canary Ingress:
    /// canary route `default/demo-canary` first, then base route `default/demo`.
    pub fn demo(tag_header: &str, tag_value: &str) -> Self {
        Self::new("demo", &[DEMO_HOST])
            .route(Route::canary(tag_header, tag_value))
            .route(Route::new(BASE_ROUTE, STABLE_CLUSTER))
    }

    /// A host whose only route, `default/other`, has no canary and is in no rule.
    pub fn other() -> Self {
        Self::new("other", &[OTHER_HOST]).route(Route::new(OTHER_ROUTE, OTHER_CLUSTER))
    }

    fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "domains": self.domains,
            "routes": self.routes.iter().map(Route::to_json).collect::<Vec<_>>(),
        })
    }
}

// === configuration ===

/// The HTTP filter placed before the router.
#[derive(Debug, Clone)]
pub enum Filter {
    /// Only the router.
    None,
    /// A proxy-wasm module delivered by ECDS from a watched file under [`FILTER_NAME`], with
    /// `configuration` passed verbatim as its StringValue (what `on_configure` reads).
    Wasm {
        /// The `.wasm` file.
        wasm: PathBuf,
        /// Plugin configuration (JSON for the canary plugin).
        configuration: String,
    },
    /// An Envoy Lua filter with inline source code.
    Lua {
        /// Lua source, e.g. defining `envoy_on_request`.
        code: String,
    },
}

impl Filter {
    /// The canary plugin (see [`paths::plugin_wasm`]) with `config` as its JSON.
    pub fn canary(config: &str) -> Result<Self> {
        Ok(Self::Wasm {
            wasm: paths::plugin_wasm()?,
            configuration: config.to_string(),
        })
    }

    /// The no-op filter (see [`paths::noop_wasm`]); it accepts any configuration.
    pub fn noop(configuration: &str) -> Result<Self> {
        Ok(Self::Wasm {
            wasm: paths::noop_wasm()?,
            configuration: configuration.to_string(),
        })
    }

    /// An inline Lua filter.
    pub fn lua(code: &str) -> Self {
        Self::Lua {
            code: code.to_string(),
        }
    }
}

/// Everything that varies between test Envoys.
#[derive(Debug, Clone)]
pub struct EnvoyConfig {
    /// Worker threads (`--concurrency`), 2 by default.
    pub concurrency: u32,
    /// Virtual hosts of the one listener's route table.
    pub virtual_hosts: Vec<VirtualHost>,
    /// `(cluster name, endpoint)` pairs.
    pub clusters: Vec<(String, SocketAddr)>,
    /// The HTTP filter before the router.
    pub filter: Filter,
    /// Envoy `-l` log level, "info" by default.
    pub log_level: String,
    /// Write an access log (route, cluster, status, tag header) to `access.log` in the temp
    /// dir. Off by default; also on when `E2E_KEEP_ENVOY_DIRS` is set.
    pub access_log: bool,
}

impl EnvoyConfig {
    /// No routes, no clusters, `filter` before the router, two workers.
    pub fn new(filter: Filter) -> Self {
        Self {
            concurrency: 2,
            virtual_hosts: Vec::new(),
            clusters: Vec::new(),
            filter,
            log_level: "info".to_string(),
            access_log: false,
        }
    }

    /// Sets `--concurrency`.
    pub fn concurrency(mut self, workers: u32) -> Self {
        self.concurrency = workers;
        self
    }

    /// Adds a virtual host.
    pub fn virtual_host(mut self, host: VirtualHost) -> Self {
        self.virtual_hosts.push(host);
        self
    }

    /// Adds a single-endpoint static cluster.
    pub fn cluster(mut self, name: &str, endpoint: SocketAddr) -> Self {
        self.clusters.push((name.to_string(), endpoint));
        self
    }

    /// Turns the access log on or off.
    pub fn access_log(mut self, on: bool) -> Self {
        self.access_log = on;
        self
    }

    /// Sets Envoy's log level.
    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = level.to_string();
        self
    }

    fn bootstrap(&self, dir: &Path, ecds_file: &Path, ecds_dir: &Path) -> Value {
        let filter = match &self.filter {
            Filter::None => None,
            Filter::Wasm { .. } => Some(json!({
                "name": FILTER_NAME,
                "config_discovery": {
                    "config_source": {
                        "resource_api_version": "V3",
                        "path_config_source": {
                            "path": ecds_file,
                            "watched_directory": {"path": ecds_dir},
                        },
                    },
                    "type_urls": ["type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"],
                },
            })),
            Filter::Lua { code } => Some(json!({
                "name": "envoy.filters.http.lua",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                    "default_source_code": {"inline_string": code},
                },
            })),
        };
        let mut http_filters: Vec<Value> = filter.into_iter().collect();
        http_filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
        }));
        let clusters: Vec<Value> = self
            .clusters
            .iter()
            .map(|(name, addr)| {
                json!({
                    "name": name,
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": name,
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket_address(*addr)}}]}],
                    },
                })
            })
            .collect();
        let mut hcm = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "ingress",
            "route_config": {
                "name": "e2e",
                "virtual_hosts": self.virtual_hosts.iter().map(VirtualHost::to_json).collect::<Vec<_>>(),
            },
            "http_filters": http_filters,
        });
        if self.access_log || std::env::var_os(KEEP_DIRS_ENV).is_some() {
            hcm["access_log"] = json!([{
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": dir.join("access.log"),
                    "log_format": {"text_format_source": {"inline_string": ACCESS_LOG_FORMAT}},
                },
            }]);
        }
        json!({
            "node": {"id": "e2e", "cluster": "e2e"},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "stats_config": stats_config(),
            "stats_flush_interval": "1s",
            "static_resources": {
                "listeners": [{
                    "name": "http",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [{"filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": hcm,
                    }]}],
                }],
                "clusters": clusters,
            },
        })
    }
}

/// The documented `stats_config` (docs/plugin-config.md): turns the plugin's `;key=value`
/// metric names into Prometheus labels.
fn stats_config() -> Value {
    let tag = |name: &str| json!({"tag_name": name, "regex": format!(r"^wasmcustom\.higress_canary\..*?(;{name}=([^;]*))")});
    json!({
        "use_all_default_tags": true,
        "stats_tags": [tag("rollout"), tag("version"), tag("code"), tag("le")],
    })
}

fn socket_address(addr: SocketAddr) -> Value {
    json!({"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}})
}

/// The ECDS DiscoveryResponse carrying one Wasm filter config.
fn ecds_response(wasm: &Path, configuration: &str, version: u64) -> Value {
    json!({
        "version_info": version.to_string(),
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": FILTER_NAME,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": FILTER_NAME,
                    "vm_config": {
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": {"local": {"filename": wasm}},
                    },
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": configuration,
                    },
                },
            },
        }],
    })
}

// === errors ===

/// Envoy refused a plugin config (the plugin's `on_configure` returned false); the previous
/// config stays in force.
#[derive(Debug, thiserror::Error)]
#[error("Envoy rejected ECDS version {version} of {FILTER_NAME} (update_rejected went up); log:\n{log_tail}")]
pub struct ConfigRejected {
    /// The `version_info` that was rejected.
    pub version: u64,
    /// Envoy's recent warnings and errors, which name the reason (see [`Envoy::log_tail`]).
    pub log_tail: String,
}

// === Envoy ===

/// A running Envoy with a generated bootstrap, killed on `Drop`.
///
/// Admin and listener bind port 0 and are read back from Envoy, so parallel tests never race
/// for ports. Files (bootstrap, ECDS resource, `envoy.log`) live in a temp dir that is kept,
/// and printed, when the owning test panics.
pub struct Envoy {
    child: Child,
    dir: Option<TempDir>,
    admin: SocketAddr,
    listener: SocketAddr,
    ecds: Option<Ecds>,
}

struct Ecds {
    wasm: PathBuf,
    /// Where new versions are written before the rename: outside the watched directory, so
    /// Envoy sees only complete files.
    staging_dir: PathBuf,
    file: PathBuf,
    /// Last written `version_info`; the lock also serializes updates.
    version: Mutex<u64>,
}

/// ECDS subscription counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EcdsCounters {
    success: u64,
    rejected: u64,
    failure: u64,
}

impl Envoy {
    /// Writes the bootstrap, starts Envoy and waits until it is ready (and, with a Wasm
    /// filter, until the first ECDS config is accepted; a rejection is a [`ConfigRejected`]).
    pub fn start(config: &EnvoyConfig) -> Result<Self> {
        let bin = paths::envoy_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("e2e-envoy-")
            .tempdir()
            .context("creating Envoy's temp dir")?;
        let root = dir.path().to_path_buf();
        let ecds_dir = root.join("ecds");
        let ecds_file = ecds_dir.join("filter.json");

        let ecds = match &config.filter {
            Filter::Wasm {
                wasm,
                configuration,
            } => {
                fs::create_dir(&ecds_dir)?;
                let ecds = Ecds {
                    wasm: wasm.clone(),
                    staging_dir: root.clone(),
                    file: ecds_file.clone(),
                    version: Mutex::new(1),
                };
                ecds.write(configuration, 1)?;
                Some(ecds)
            }
            _ => None,
        };

        let bootstrap = root.join("envoy.json");
        fs::write(
            &bootstrap,
            serde_json::to_string_pretty(&config.bootstrap(&root, &ecds_file, &ecds_dir))?,
        )?;
        let log_path = root.join("envoy.log");
        let log = File::create(&log_path)?;
        let admin_path = root.join("admin-address");
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&bootstrap)
            .arg("--concurrency")
            .arg(config.concurrency.to_string())
            .arg("--disable-hot-restart")
            .arg("--use-dynamic-base-id")
            // Access log lines show up within a poll, not after the 10 s default.
            .arg("--file-flush-interval-msec")
            .arg("200")
            .arg("--admin-address-path")
            .arg(&admin_path)
            .arg("-l")
            .arg(&config.log_level)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;

        let mut envoy = Self {
            child,
            dir: Some(dir),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            listener: SocketAddr::from(([127, 0, 0, 1], 0)),
            ecds,
        };
        match envoy.wait_ready(&admin_path) {
            Ok(()) => Ok(envoy),
            Err(err) if err.is::<ConfigRejected>() => {
                // An expected outcome for tests of bad configs; the error carries the log tail.
                Err(err.context("Envoy rejected the first plugin config"))
            }
            Err(err) => {
                // Keep the files: the log is the only explanation of a failed start.
                let tail = envoy.log_tail();
                let _ = envoy.child.kill();
                let _ = envoy.child.wait();
                if let Some(dir) = envoy.dir.take() {
                    let _ = dir.keep();
                }
                Err(err.context(format!(
                    "Envoy did not start (files kept in {}); log tail:\n{tail}",
                    root.display()
                )))
            }
        }
    }

    fn wait_ready(&mut self, admin_path: &Path) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("Envoy exited with {status}");
            }
            if start.elapsed() > STARTUP_DEADLINE {
                bail!("Envoy not ready after {STARTUP_DEADLINE:?}");
            }
            if self.admin.port() == 0 {
                if let Ok(text) = fs::read_to_string(admin_path) {
                    if let Ok(addr) = text.trim().parse() {
                        self.admin = addr;
                    }
                }
            }
            if self.admin.port() != 0 && matches!(get_text(self.admin, "/ready"), Ok((200, _))) {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.listener = self.read_listener_addr()?;
        if self.ecds.is_some() {
            let zero = EcdsCounters {
                success: 0,
                rejected: 0,
                failure: 0,
            };
            self.await_ecds(zero, 1)?;
        }
        Ok(())
    }

    fn read_listener_addr(&self) -> Result<SocketAddr> {
        let (_, text) = get_text(self.admin, "/listeners?format=json")?;
        let json: Value = serde_json::from_str(&text).context("parsing /listeners")?;
        let socket = json["listener_statuses"]
            .as_array()
            .and_then(|all| all.iter().find(|l| l["name"] == "http"))
            .map(|l| &l["local_address"]["socket_address"])
            .ok_or_else(|| anyhow!("listener `http` missing from /listeners: {text}"))?;
        let port = socket["port_value"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| anyhow!("listener `http` has no port: {text}"))?;
        Ok(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// The listener's address.
    pub fn listener_addr(&self) -> SocketAddr {
        self.listener
    }

    /// `http://127.0.0.1:<port>` of the listener.
    pub fn listener_url(&self) -> String {
        format!("http://{}", self.listener)
    }

    /// The admin interface's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// A new keep-alive client for the listener, sending `Host: demo.example.com`.
    pub fn client(&self) -> Client {
        Client::new(self.listener)
    }

    /// The temp dir with the bootstrap, the ECDS file and `envoy.log`.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new(""), |d| d.path())
    }

    /// Envoy's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last warnings and errors of `envoy.log`, or its last lines if it has none: Envoy
    /// logs dozens of info lines at startup that would bury the one line that matters.
    pub fn log_tail(&self) -> String {
        tail_of(&self.dir().join("envoy.log"))
    }

    /// Admin `/stats/prometheus`.
    pub fn stats_prometheus(&self) -> Result<String> {
        let (status, text) = get_text(self.admin, "/stats/prometheus")?;
        if status != 200 {
            bail!("/stats/prometheus answered {status}: {text}");
        }
        Ok(text)
    }

    /// A counter or gauge from admin `/stats`; `None` if absent (or admin unreachable).
    pub fn stat(&self, name: &str) -> Option<u64> {
        self.stats_matching(&format!("^{}$", regex_escape(name)))
            .ok()?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    /// Every counter and gauge whose name matches the RE2 `filter`.
    pub fn stats_matching(&self, filter: &str) -> Result<Vec<(String, u64)>> {
        let path = format!("/stats?filter={}", percent_encode(filter));
        let (status, text) = get_text(self.admin, &path)?;
        if status != 200 {
            bail!("{path} answered {status}: {text}");
        }
        Ok(text
            .lines()
            .filter_map(|line| {
                let (name, value) = line.rsplit_once(": ")?;
                Some((name.to_string(), value.trim().parse().ok()?))
            })
            .collect())
    }

    fn ecds_counters(&self) -> Result<EcdsCounters> {
        let prefix = format!("extension_config_discovery.http_filter.{FILTER_NAME}.");
        let stats = self.stats_matching(&format!("^{}", regex_escape(&prefix)))?;
        let get = |suffix: &str| {
            stats
                .iter()
                .find(|(n, _)| n.strip_prefix(&prefix) == Some(suffix))
                .map_or(0, |(_, v)| *v)
        };
        Ok(EcdsCounters {
            success: get("update_success"),
            rejected: get("update_rejected"),
            failure: get("update_failure"),
        })
    }

    /// Hot-updates the plugin's configuration through ECDS and waits for Envoy's verdict.
    ///
    /// Writes a DiscoveryResponse with the next `version_info` to a sibling temp file and
    /// renames it into the watched directory, then waits until `update_success` or
    /// `update_rejected` goes up. A rejection is a [`ConfigRejected`] (downcast it to tell it
    /// apart). Success means the main thread accepted it; workers apply it a few ms later, so
    /// tests poll for its effect.
    pub fn set_plugin_config(&self, config: &str) -> Result<()> {
        let ecds = self
            .ecds
            .as_ref()
            .ok_or_else(|| anyhow!("this Envoy has no ECDS-delivered Wasm filter"))?;
        let mut version = ecds.version.lock().unwrap_or_else(PoisonError::into_inner);
        let before = self.ecds_counters()?;
        *version += 1;
        ecds.write(config, *version)?;
        self.await_ecds(before, *version)
    }

    fn await_ecds(&self, before: EcdsCounters, version: u64) -> Result<()> {
        let start = Instant::now();
        loop {
            let now = self.ecds_counters()?;
            if now.rejected > before.rejected {
                return Err(ConfigRejected {
                    version,
                    log_tail: self.log_tail(),
                }
                .into());
            }
            if now.failure > before.failure {
                bail!(
                    "ECDS version {version} could not be read (update_failure went up); files in {}; log tail:\n{}",
                    self.dir().display(),
                    self.log_tail()
                );
            }
            if now.success > before.success {
                return Ok(());
            }
            if start.elapsed() > UPDATE_DEADLINE {
                bail!(
                    "no ECDS verdict for version {version} after {UPDATE_DEADLINE:?} \
                     (counters {now:?}); files in {}; log tail:\n{}",
                    self.dir().display(),
                    self.log_tail()
                );
            }
            thread::sleep(POLL);
        }
    }
}

impl Ecds {
    /// Atomically replaces the watched file: write a sibling outside the watched directory,
    /// then `rename()` it in, so Envoy never reads a half-written resource.
    fn write(&self, configuration: &str, version: u64) -> Result<()> {
        let body =
            serde_json::to_string_pretty(&ecds_response(&self.wasm, configuration, version))?;
        let tmp = self.staging_dir.join(format!("filter.json.{version}.tmp"));
        fs::write(&tmp, body).with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &self.file)
            .with_context(|| format!("renaming {} to {}", tmp.display(), self.file.display()))
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() || std::env::var_os(KEEP_DIRS_ENV).is_some() {
            if let Some(dir) = self.dir.take() {
                let path = dir.keep();
                eprintln!(
                    "Envoy files kept in {}; log tail:\n{}",
                    path.display(),
                    tail_of(&path.join("envoy.log"))
                );
            }
        }
    }
}

fn tail_of(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
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

fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for c in text.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
