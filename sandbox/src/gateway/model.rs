//! The gateway's input (API objects) and the neutral routing model translated from it.
//!
//! [`Objects`] is what the watchers hold; [`Translation`] is what [`translate`](super::translate)
//! makes of it, before [`xds`](super::xds) renders it as Envoy resources.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::DynamicObject;
use kube::ResourceExt;

// === input ===

/// Every object the gateway reads, as its watchers currently see them.
///
/// Tests can build one by hand and hand it to [`Proxy::apply`](super::Proxy::apply) to drive
/// Envoy without an API server.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    /// `networking.k8s.io/v1` Ingresses, all namespaces.
    pub ingresses: Vec<Arc<Ingress>>,
    /// `v1` Services, all namespaces.
    pub services: Vec<Arc<Service>>,
    /// `v1` Endpoints, all namespaces.
    pub endpoints: Vec<Arc<Endpoints>>,
    /// `extensions.higress.io/v1alpha1` WasmPlugins of the system namespace, as untyped JSON
    /// (the stand-in does not share Higress's Go types).
    pub wasm_plugins: Vec<Arc<DynamicObject>>,
}

impl Objects {
    /// Adds an Ingress.
    pub fn with_ingress(mut self, ingress: Ingress) -> Self {
        self.ingresses.push(Arc::new(ingress));
        self
    }

    /// Adds a Service.
    pub fn with_service(mut self, service: Service) -> Self {
        self.services.push(Arc::new(service));
        self
    }

    /// Adds an Endpoints object.
    pub fn with_endpoints(mut self, endpoints: Endpoints) -> Self {
        self.endpoints.push(Arc::new(endpoints));
        self
    }

    /// Adds a WasmPlugin.
    pub fn with_wasm_plugin(mut self, plugin: DynamicObject) -> Self {
        self.wasm_plugins.push(Arc::new(plugin));
        self
    }

    /// `(kind, namespace, name, resourceVersion)` of every object: two equal fingerprints mean
    /// the same API state.
    pub fn fingerprint(&self) -> Fingerprint {
        let mut set = BTreeSet::new();
        fn add<K: ResourceExt>(
            set: &mut BTreeSet<ObjectKey>,
            kind: &'static str,
            items: &[Arc<K>],
        ) {
            for item in items {
                set.insert(ObjectKey {
                    kind,
                    namespace: item.namespace().unwrap_or_default(),
                    name: item.name_any(),
                    resource_version: item.resource_version().unwrap_or_default(),
                });
            }
        }
        add(&mut set, "Ingress", &self.ingresses);
        add(&mut set, "Service", &self.services);
        add(&mut set, "Endpoints", &self.endpoints);
        add(&mut set, "WasmPlugin", &self.wasm_plugins);
        Fingerprint(set)
    }
}

/// Identity and version of one object in a [`Fingerprint`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectKey {
    /// Kind, e.g. `Ingress`.
    pub kind: &'static str,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `metadata.resourceVersion`.
    pub resource_version: String,
}

/// The identity and version of every object in an [`Objects`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fingerprint(pub BTreeSet<ObjectKey>);

// === output ===

/// The routing model Higress would build from [`Objects`], before it becomes Envoy resources.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Translation {
    /// Virtual hosts ordered by host; `*` is the catch-all host.
    pub virtual_hosts: Vec<VirtualHost>,
    /// Clusters by name (`outbound|<port>||<svc>.<ns>.svc.cluster.local`) with their endpoints.
    pub clusters: BTreeMap<String, Vec<Endpoint>>,
    /// What became of each WasmPlugin, by filter name (`<ns>.<name>`).
    pub plugins: BTreeMap<String, PluginOutcome>,
    /// Objects (or parts of them) that were skipped, with the reason, as Higress would log them.
    pub problems: Vec<String>,
}

/// One Envoy virtual host.
#[derive(Debug, Clone, PartialEq)]
pub struct VirtualHost {
    /// The Ingress host (`*` when a rule has none).
    pub host: String,
    /// Routes in match order (first match wins).
    pub routes: Vec<Route>,
}

/// One Envoy route.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Route name, `<ns>/<ingress>` (just `<ingress>` in the system namespace).
    pub name: String,
    /// How the path is matched.
    pub path: PathMatch,
    /// Header conditions (canary routes), all required.
    pub headers: Vec<HeaderMatch>,
    /// Where matching requests go.
    pub destination: Destination,
}

/// A path condition, as Envoy's `RouteMatch` path specifiers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// `path`: the whole path (without query) equals it.
    Exact(String),
    /// `prefix`: a plain string prefix (only `/` is rendered this way).
    Prefix(String),
    /// `safe_regex`: an RE2 regex that must match the whole path.
    Regex(String),
}

/// A header condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMatch {
    /// Header name, lowercase.
    pub name: String,
    /// How its value must match.
    pub value: StringMatch,
}

/// A string condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StringMatch {
    /// Equal.
    Exact(String),
    /// An RE2 regex matching the whole value.
    Regex(String),
}

/// A route's target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// One cluster.
    Cluster(String),
    /// Weighted clusters, weights summing to 100.
    Weighted(Vec<(String, u32)>),
}

/// One upstream address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    /// IP address.
    pub ip: String,
    /// Port.
    pub port: u16,
}

/// The result of converting one WasmPlugin.
#[derive(Debug, Clone, PartialEq)]
pub enum PluginOutcome {
    /// A Wasm filter to install.
    Filter(WasmFilter),
    /// `defaultConfigDisable` and no enabled rule: Higress removes the plugin.
    Disabled,
    /// Higress refuses it (the previous conversion, if any, stays in force).
    Invalid(String),
    /// Higress accepts it but this stand-in cannot load it (`oci://`, `http://`): no filter.
    Unsupported(String),
}

/// One Wasm HTTP filter delivered by ECDS.
#[derive(Debug, Clone, PartialEq)]
pub struct WasmFilter {
    /// Filter and ECDS resource name, `<ns>.<name>`.
    pub name: String,
    /// `pluginName`, Envoy's `root_id` (empty when unset).
    pub root_id: String,
    /// The `.wasm` file.
    pub wasm: PathBuf,
    /// The JSON the plugin's `on_configure` receives; `None` when the WasmPlugin has no config.
    pub configuration: Option<String>,
    /// `failStrategy: FAIL_OPEN`.
    pub fail_open: bool,
    /// Where in the chain it runs.
    pub phase: Phase,
    /// Higher runs earlier within a phase.
    pub priority: i64,
    /// `vmConfig.env` entries.
    pub env: Vec<EnvVar>,
}

/// A WasmPlugin `phase`, in chain order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Authentication.
    Authn,
    /// Authorization.
    Authz,
    /// Stats.
    Stats,
    /// `UNSPECIFIED_PHASE` (the default): last, just before the router.
    Unspecified,
}

/// A VM environment variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvVar {
    /// `valueFrom: INLINE` (the default): a literal value.
    Inline {
        /// Name.
        name: String,
        /// Value.
        value: String,
    },
    /// `valueFrom: HOST`: copied from the gateway process's environment.
    Host {
        /// Name.
        name: String,
    },
}
