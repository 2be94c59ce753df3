//! Rendering the routing model as Envoy v3 resources, one file-based xDS subscription each.
//!
//! Pure: the model and file layout in, JSON out. One listener (LDS), one route configuration
//! (RDS), all clusters (CDS), one ClusterLoadAssignment file per cluster (EDS) and one
//! TypedExtensionConfig file per Wasm filter (ECDS), so that each kind of change touches only
//! its own subscription.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::model::{
    Destination, Endpoint, EnvVar, HeaderMatch, PathMatch, Route, StringMatch, VirtualHost,
    WasmFilter,
};

#[cfg(test)]
mod tests;

/// The listener's name.
pub const LISTENER_NAME: &str = "http";
/// The route configuration's name (Istio names it after the port).
pub const ROUTE_CONFIG_NAME: &str = "http.80";
/// The HTTP connection manager's stat prefix.
pub const STAT_PREFIX: &str = "gateway";

const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const COMPOSITE_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.composite.v3.Composite";
/// One access log line per request: what a routing failure needs to be understood.
const ACCESS_LOG_FORMAT: &str =
    "[%START_TIME%] \"%REQ(:METHOD)% %REQ(:PATH)%\" host=%REQ(:AUTHORITY)% \
route=%ROUTE_NAME% cluster=%UPSTREAM_CLUSTER% upstream=%UPSTREAM_HOST% status=%RESPONSE_CODE% \
flags=%RESPONSE_FLAGS% ms=%DURATION%\n";

// === layout ===

/// Where the xDS files live.
#[derive(Debug, Clone)]
pub struct Layout {
    dir: PathBuf,
}

impl Layout {
    /// Files under `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where new file versions are written before being renamed into place.
    pub fn staging_dir(&self) -> PathBuf {
        self.dir.join("staging")
    }

    /// The Envoy bootstrap.
    pub fn bootstrap(&self) -> PathBuf {
        self.dir.join("envoy.json")
    }

    /// Envoy's access log.
    pub fn access_log(&self) -> PathBuf {
        self.dir.join("access.log")
    }

    /// The file a resource lives in.
    pub fn path(&self, key: &ResourceKey) -> PathBuf {
        match key {
            ResourceKey::Listeners => self.dir.join("lds.json"),
            ResourceKey::Routes => self.dir.join("rds.json"),
            ResourceKey::Clusters => self.dir.join("cds.json"),
            ResourceKey::Endpoints(cluster) => self
                .dir
                .join("eds")
                .join(format!("{}.json", file_stem(cluster))),
            ResourceKey::Extension(filter) => self
                .dir
                .join("ecds")
                .join(format!("{}.json", file_stem(filter))),
        }
    }
}

/// A file name for a resource name (cluster names contain `|`).
fn file_stem(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// One xDS subscription, i.e. one file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceKey {
    /// LDS: the listener.
    Listeners,
    /// RDS: the route configuration.
    Routes,
    /// CDS: every cluster.
    Clusters,
    /// EDS: the endpoints of one cluster.
    Endpoints(String),
    /// ECDS: one Wasm filter's config.
    Extension(String),
}

impl ResourceKey {
    /// The stats prefix of the subscription (`<prefix>version_text`, `<prefix>update_rejected`).
    pub fn stats_prefix(&self) -> String {
        match self {
            ResourceKey::Listeners => "listener_manager.lds.".to_string(),
            ResourceKey::Routes => format!("http.{STAT_PREFIX}.rds.{ROUTE_CONFIG_NAME}."),
            ResourceKey::Clusters => "cluster_manager.cds.".to_string(),
            ResourceKey::Endpoints(cluster) => format!("cluster.{cluster}."),
            ResourceKey::Extension(filter) => {
                format!("extension_config_discovery.http_filter.{filter}.")
            }
        }
    }
}

/// Every resource file's `resources` array, serialized; see [`file_body`].
pub type Resources = BTreeMap<ResourceKey, String>;

/// The DiscoveryResponse written to a file.
pub fn file_body(version: u64, resources: &str) -> String {
    format!("{{\"version_info\":\"{version}\",\"resources\":{resources}}}\n")
}

/// What the files are rendered from.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// Listener port.
    pub port: u16,
    /// Virtual hosts, in order.
    pub virtual_hosts: &'a [VirtualHost],
    /// Clusters and their endpoints.
    pub clusters: &'a BTreeMap<String, Vec<Endpoint>>,
    /// Wasm filters in chain order.
    pub filters: &'a [WasmFilter],
}

/// All resources for `input`.
pub fn render(input: Input<'_>, layout: &Layout) -> Resources {
    let mut out = Resources::new();
    out.insert(
        ResourceKey::Listeners,
        Value::Array(vec![listener(input.port, input.filters, layout)]).to_string(),
    );
    out.insert(
        ResourceKey::Routes,
        Value::Array(vec![route_configuration(input.virtual_hosts)]).to_string(),
    );
    let clusters: Vec<Value> = input
        .clusters
        .keys()
        .map(|name| cluster(name, &layout.path(&ResourceKey::Endpoints(name.clone()))))
        .collect();
    out.insert(ResourceKey::Clusters, Value::Array(clusters).to_string());
    for (name, endpoints) in input.clusters {
        out.insert(
            ResourceKey::Endpoints(name.clone()),
            Value::Array(vec![load_assignment(name, endpoints)]).to_string(),
        );
    }
    for filter in input.filters {
        out.insert(
            ResourceKey::Extension(filter.name.clone()),
            Value::Array(vec![extension_config(filter)]).to_string(),
        );
    }
    out
}

fn path_source(path: &Path) -> Value {
    json!({"resource_api_version": "V3", "path_config_source": {"path": path}})
}

// === LDS ===

/// The one listener: an HTTP connection manager with the Wasm filters (ECDS) and the router.
pub fn listener(port: u16, filters: &[WasmFilter], layout: &Layout) -> Value {
    let mut http_filters: Vec<Value> = filters
        .iter()
        .map(|f| {
            let mut discovery = json!({
                "config_source": path_source(&layout.path(&ResourceKey::Extension(f.name.clone()))),
                "type_urls": [WASM_TYPE],
            });
            if f.fail_open {
                // As Istio does for FAIL_OPEN: a no-op default until a config is accepted.
                discovery["type_urls"] = json!([WASM_TYPE, COMPOSITE_TYPE]);
                discovery["default_config"] = json!({"@type": COMPOSITE_TYPE});
            }
            json!({"name": f.name, "config_discovery": discovery})
        })
        .collect();
    http_filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    }));
    json!({
        "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
        "name": LISTENER_NAME,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{
            "filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": STAT_PREFIX,
                    "rds": {
                        "route_config_name": ROUTE_CONFIG_NAME,
                        "config_source": path_source(&layout.path(&ResourceKey::Routes)),
                    },
                    "http_filters": http_filters,
                    "access_log": [{
                        "name": "envoy.access_loggers.file",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                            "path": layout.access_log(),
                            "log_format": {"text_format_source": {"inline_string": ACCESS_LOG_FORMAT}},
                        },
                    }],
                },
            }],
        }],
    })
}

// === RDS ===

/// The route configuration: one virtual host per Ingress host.
pub fn route_configuration(virtual_hosts: &[VirtualHost]) -> Value {
    json!({
        "@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        "name": ROUTE_CONFIG_NAME,
        "virtual_hosts": virtual_hosts.iter().map(virtual_host).collect::<Vec<_>>(),
    })
}

fn virtual_host(vh: &VirtualHost) -> Value {
    // Istio's gateway domains: the host, and the host with any port.
    let domains = if vh.host == "*" || vh.host.starts_with('*') {
        vec![vh.host.clone()]
    } else {
        vec![vh.host.clone(), format!("{}:*", vh.host)]
    };
    json!({
        "name": vh.host,
        "domains": domains,
        "routes": vh.routes.iter().map(route).collect::<Vec<_>>(),
    })
}

/// One route.
pub fn route(r: &Route) -> Value {
    let mut matcher = match &r.path {
        PathMatch::Exact(p) => json!({"path": p}),
        PathMatch::Prefix(p) => json!({"prefix": p}),
        PathMatch::Regex(re) => json!({"safe_regex": {"regex": re}}),
    };
    if !r.headers.is_empty() {
        matcher["headers"] = Value::Array(r.headers.iter().map(header_matcher).collect());
    }
    let mut action = match &r.destination {
        Destination::Cluster(c) => json!({"cluster": c}),
        Destination::Weighted(list) => json!({"weighted_clusters": {
            "clusters": list.iter().map(|(c, w)| json!({"name": c, "weight": w})).collect::<Vec<_>>(),
        }}),
    };
    // Istio disables the 15 s default route timeout.
    action["timeout"] = json!("0s");
    json!({"name": r.name, "match": matcher, "route": action})
}

fn header_matcher(h: &HeaderMatch) -> Value {
    let string_match = match &h.value {
        StringMatch::Exact(v) => json!({"exact": v}),
        StringMatch::Regex(re) => json!({"safe_regex": {"regex": re}}),
    };
    json!({"name": h.name, "string_match": string_match})
}

// === CDS / EDS ===

/// One EDS cluster whose endpoints come from its own file.
pub fn cluster(name: &str, eds_path: &Path) -> Value {
    json!({
        "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        "name": name,
        "type": "EDS",
        "eds_cluster_config": {"eds_config": path_source(eds_path)},
        "connect_timeout": "2s",
    })
}

/// The endpoints of one cluster.
pub fn load_assignment(cluster: &str, endpoints: &[Endpoint]) -> Value {
    let lb_endpoints: Vec<Value> = endpoints
        .iter()
        .map(|e| {
            json!({"endpoint": {"address": {"socket_address": {"address": e.ip, "port_value": e.port}}}})
        })
        .collect();
    let localities = if lb_endpoints.is_empty() {
        Vec::new()
    } else {
        vec![json!({"lb_endpoints": lb_endpoints})]
    };
    json!({
        "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
        "cluster_name": cluster,
        "endpoints": localities,
    })
}

// === ECDS ===

/// The ECDS resource of a Wasm filter, as Istio's agent hands it to Envoy (local file, v8).
pub fn extension_config(f: &WasmFilter) -> Value {
    let mut vm_config = json!({
        "runtime": "envoy.wasm.runtime.v8",
        "code": {"local": {"filename": f.wasm}},
    });
    if !f.env.is_empty() {
        let mut host_keys = Vec::new();
        let mut key_values = serde_json::Map::new();
        for var in &f.env {
            match var {
                EnvVar::Host { name } => host_keys.push(Value::String(name.clone())),
                EnvVar::Inline { name, value } => {
                    key_values.insert(name.clone(), Value::String(value.clone()));
                }
            }
        }
        let mut env = serde_json::Map::new();
        if !host_keys.is_empty() {
            env.insert("host_env_keys".to_string(), Value::Array(host_keys));
        }
        if !key_values.is_empty() {
            env.insert("key_values".to_string(), Value::Object(key_values));
        }
        vm_config["environment_variables"] = Value::Object(env);
    }
    let mut config = json!({
        "name": f.name,
        "root_id": f.root_id,
        "vm_config": vm_config,
    });
    if f.fail_open {
        config["fail_open"] = json!(true);
    }
    if let Some(configuration) = &f.configuration {
        config["configuration"] = json!({
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": configuration,
        });
    }
    json!({
        "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
        "name": f.name,
        "typed_config": {"@type": WASM_TYPE, "config": config},
    })
}

// === bootstrap ===

/// The bootstrap: admin on an ephemeral loopback port, LDS and CDS from files, and the stats
/// tags of the canary plugin's metrics (docs/plugin-config.md, "Metrics").
pub fn bootstrap(layout: &Layout) -> Value {
    json!({
        "node": {"id": "sandbox-gateway", "cluster": "higress-gateway"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "dynamic_resources": {
            "lds_config": path_source(&layout.path(&ResourceKey::Listeners)),
            "cds_config": path_source(&layout.path(&ResourceKey::Clusters)),
        },
        "stats_config": stats_config(),
        "stats_flush_interval": "1s",
    })
}

/// `stats_config` turning the plugin's `;key=value` metric names into labels.
pub fn stats_config() -> Value {
    json!({
        "use_all_default_tags": true,
        "stats_tags": [
            {"tag_name": "rollout", "regex": r"^wasmcustom\.higress_canary\..*?(;rollout=([^;]*))"},
            {"tag_name": "version", "regex": r"^wasmcustom\.higress_canary\..*?(;version=([^;]*))"},
            {"tag_name": "code", "regex": r"^wasmcustom\.higress_canary\..*?(;code=([^;]*))"},
            {"tag_name": "le", "regex": r"^wasmcustom\.higress_canary\..*?(;le=([^;]*))"},
        ],
        "histogram_bucket_settings": [{
            "match": {"prefix": "wasmcustom.higress_canary"},
            "buckets": [1, 2, 5, 10, 15, 20, 25, 30, 40, 50, 60, 75, 100, 150, 200, 300, 500, 1000, 2500, 5000, 10000],
        }],
    })
}
