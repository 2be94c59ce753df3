//! Ingresses, Services and Endpoints to virtual hosts, routes and clusters, as Higress does it.
//!
//! Pure: objects in, model out. Follows alibaba/higress `pkg/ingress/kube/ingressv1/controller.go`
//! (`ConvertHTTPRoute`, `ApplyCanaryIngress`, `setDefaultMSEIngressOptionalField`),
//! `pkg/ingress/kube/annotations/{canary,parser}.go`, `pkg/ingress/kube/common/tool.go`
//! (`SortHTTPRoutes`, `GenerateUniqueRouteName`) and `pkg/ingress/config/ingress_config.go`
//! (`normalizeWeightedCluster`), plus Istio's rendering of weighted destinations.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};
use kube::ResourceExt;

use super::model::{
    Destination, Endpoint, HeaderMatch, PathMatch, Route, StringMatch, VirtualHost,
};
use super::TranslateConfig;

#[cfg(test)]
mod tests;

const NGINX_PREFIX: &str = "nginx.ingress.kubernetes.io/";
const HIGRESS_PREFIX: &str = "higress.io/";
/// The legacy class annotation; when present it wins over `spec.ingressClassName`.
pub const CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
/// Higress's `PrefixMatchRegex`: optionally `/...` after a prefix.
const PREFIX_MATCH_REGEX: &str = r"((\/).*)?";
const DEFAULT_CANARY_WEIGHT_TOTAL: i64 = 100;

/// The cluster Istio/Higress names for a Service port.
pub fn cluster_name(namespace: &str, service: &str, port: i32) -> String {
    format!("outbound|{port}||{service}.{namespace}.svc.cluster.local")
}

// === annotations ===

/// Annotation lookup with Higress's "ASAP" rule: the `nginx.ingress.kubernetes.io/` key is read
/// first and, when missing or invalid, the `higress.io/` key.
struct Annotations<'a>(Option<&'a BTreeMap<String, String>>);

impl Annotations<'_> {
    fn raw(&self, prefix: &str, key: &str) -> Option<&str> {
        self.0?.get(&format!("{prefix}{key}")).map(String::as_str)
    }

    fn has(&self, key: &str) -> bool {
        self.raw(NGINX_PREFIX, key).is_some() || self.raw(HIGRESS_PREFIX, key).is_some()
    }

    fn parse<T>(&self, key: &str, parse: impl Fn(&str) -> Option<T>) -> Option<T> {
        [NGINX_PREFIX, HIGRESS_PREFIX]
            .iter()
            .find_map(|prefix| self.raw(prefix, key).and_then(&parse))
    }

    /// A non-empty string, each line trimmed (Go's `normalizeString`).
    fn string(&self, key: &str) -> Option<String> {
        self.parse(key, |raw| {
            let s = raw
                .split('\n')
                .map(str::trim)
                .collect::<Vec<_>>()
                .join("\n");
            (!s.is_empty()).then_some(s)
        })
    }

    fn bool(&self, key: &str) -> Option<bool> {
        self.parse(key, go_parse_bool)
    }

    fn int(&self, key: &str) -> Option<i64> {
        // Go's strconv.Atoi: optional sign, decimal digits, nothing else.
        self.parse(key, |raw| raw.parse::<i64>().ok())
    }
}

/// Go's `strconv.ParseBool`.
fn go_parse_bool(raw: &str) -> Option<bool> {
    match raw {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// The canary annotations of one Ingress (`canary.go` `Parse`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Canary {
    /// `canary: "true"`.
    pub enabled: bool,
    /// `canary-by-header`.
    pub header: String,
    /// `canary-by-header-value`.
    pub header_value: String,
    /// `canary-by-header-pattern`.
    pub header_pattern: String,
    /// `canary-by-cookie`.
    pub cookie: String,
    /// `canary-weight` (only read when no header/value/pattern/cookie short-circuits).
    pub weight: i64,
    /// `canary-weight-total`, default 100.
    pub weight_total: i64,
}

impl Canary {
    /// Parses the annotations; `None` when the Ingress has no `canary` annotation at all.
    pub fn parse(annotations: Option<&BTreeMap<String, String>>) -> Option<Canary> {
        let a = Annotations(annotations);
        if !a.has("canary") {
            return None;
        }
        let mut c = Canary {
            weight_total: DEFAULT_CANARY_WEIGHT_TOTAL,
            ..Canary::default()
        };
        c.enabled = a.bool("canary").unwrap_or(false);
        if !c.enabled {
            return Some(c);
        }
        if let Some(header) = a.string("canary-by-header") {
            c.header = header;
        }
        // Each of these short-circuits the rest, weight included.
        if let Some(value) = a.string("canary-by-header-value") {
            c.header_value = value;
            return Some(c);
        }
        if let Some(pattern) = a.string("canary-by-header-pattern") {
            c.header_pattern = pattern;
            return Some(c);
        }
        if let Some(cookie) = a.string("canary-by-cookie") {
            c.cookie = cookie;
            return Some(c);
        }
        c.weight = a.int("canary-weight").unwrap_or(0);
        if let Some(total) = a.int("canary-weight-total").filter(|t| *t > 0) {
            c.weight_total = total;
        }
        Some(c)
    }

    /// `CanaryKind`: by header (or cookie), otherwise by weight.
    fn by_header(&self) -> bool {
        !self.header.is_empty() || !self.cookie.is_empty()
    }

    /// The header condition of a header/cookie canary route (`ApplyByHeader`).
    fn header_match(&self) -> Option<HeaderMatch> {
        if !self.header.is_empty() {
            let value = if !self.header_value.is_empty() {
                StringMatch::Regex(format!("always|{}", self.header_value))
            } else if !self.header_pattern.is_empty() {
                StringMatch::Regex(format!(".*{}.*", self.header_pattern))
            } else {
                StringMatch::Exact("always".to_string())
            };
            Some(HeaderMatch {
                name: self.header.to_ascii_lowercase(),
                value,
            })
        } else if !self.cookie.is_empty() {
            Some(HeaderMatch {
                name: "cookie".to_string(),
                value: StringMatch::Regex(format!(r"^(.*?;\s*)?({}=always)(;.*)?$", self.cookie)),
            })
        } else {
            None
        }
    }
}

// === classes ===

/// Whether the gateway serves this Ingress: the class annotation when present, else
/// `spec.ingressClassName`.
pub fn serves_class(ingress: &Ingress, config: &TranslateConfig) -> bool {
    let annotation = ingress
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CLASS_ANNOTATION));
    let class = match annotation {
        Some(class) => Some(class.as_str()),
        None => ingress
            .spec
            .as_ref()
            .and_then(|s| s.ingress_class_name.as_deref()),
    };
    match class {
        None | Some("") => config.accept_classless,
        Some(class) => config.ingress_classes.iter().any(|c| c == class),
    }
}

// === paths ===

/// Path kinds in Higress's sort order (`SortHTTPRoutes`: exact, then prefix, then regex).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum PathKind {
    Exact,
    Prefix,
    Regex,
}

/// The match of one Ingress path after Higress's defaulting.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PathRule {
    kind: PathKind,
    /// `OriginPath`: what canaries and duplicates are compared on.
    origin: String,
    matcher: PathMatch,
}

fn path_rule(path: Option<&str>, path_type: &str, use_regex: bool) -> PathRule {
    let mut path = match path {
        None | Some("") => "/".to_string(),
        Some(p) => p.to_string(),
    };
    // An unset pathType defaults to Prefix, dropping a trailing `.*` or `/*` (old-style paths).
    if path_type.is_empty() && !use_regex {
        if let Some(p) = path.strip_suffix(".*") {
            path = p.to_string();
        }
        if let Some(p) = path.strip_suffix("/*") {
            path = p.to_string();
        }
    }
    if use_regex {
        return PathRule {
            kind: PathKind::Regex,
            matcher: PathMatch::Regex(format!("{path}.*")),
            origin: path,
        };
    }
    if path_type == "Exact" {
        return PathRule {
            kind: PathKind::Exact,
            matcher: PathMatch::Exact(path.clone()),
            origin: path,
        };
    }
    // Prefix, ImplementationSpecific and unset are all Prefix.
    if path == "/" {
        return PathRule {
            kind: PathKind::Prefix,
            matcher: PathMatch::Prefix(path.clone()),
            origin: path,
        };
    }
    let trimmed = path.strip_suffix('/').unwrap_or(&path).to_string();
    PathRule {
        kind: PathKind::Prefix,
        matcher: PathMatch::Regex(format!("{}{PREFIX_MATCH_REGEX}", quote_meta(&trimmed))),
        origin: trimmed,
    }
}

/// Go's `regexp.QuoteMeta`.
pub fn quote_meta(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for c in text.chars() {
        if r"\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

// === routes ===

/// A route while it is being built (Higress's `WrapperHTTPRoute`).
#[derive(Debug, Clone)]
struct Draft {
    name: String,
    path: PathRule,
    headers: Vec<HeaderMatch>,
    /// `(cluster, weight)`; the first is the base destination.
    destinations: Vec<(String, i64)>,
    /// `WeightTotal`, set by the first weight canary merged in.
    weight_total: i64,
}

impl Draft {
    fn is_catch_all(&self) -> bool {
        self.path.kind == PathKind::Prefix && self.path.origin == "/"
    }

    /// `SortHTTPRoutes`: the catch-all `/` last, same kind by longer path first, exact before
    /// prefix before regex. Used with a stable sort.
    fn sorts_before(&self, other: &Draft) -> bool {
        if self.is_catch_all() {
            return false;
        }
        if other.is_catch_all() {
            return true;
        }
        if self.path.kind == other.path.kind {
            return self.path.origin.len() > other.path.origin.len();
        }
        matches!(
            (self.path.kind, other.path.kind),
            (PathKind::Exact, _) | (PathKind::Prefix, PathKind::Regex)
        )
    }

    /// `normalizeWeightedCluster`, with Go's float32 arithmetic, then Istio's rendering (zero
    /// weights dropped, a single remaining destination becomes a plain cluster).
    fn destination(&self) -> Destination {
        if self.destinations.len() == 1 {
            return Destination::Cluster(self.destinations[0].0.clone());
        }
        let mut total: i64 = self.destinations[1..].iter().map(|(_, w)| *w).sum();
        if total < self.weight_total {
            total = self.weight_total;
        }
        let mut weights = Vec::with_capacity(self.destinations.len());
        let mut sum = 0i64;
        for (_, w) in &self.destinations[1..] {
            let share = ((*w as f32 / total as f32) * 100f32) as i32 as i64;
            sum += share;
            weights.push(share);
        }
        weights.insert(0, 100 - sum);
        let weighted: Vec<(String, u32)> = self
            .destinations
            .iter()
            .zip(weights)
            .filter(|(_, w)| *w > 0)
            .map(|((cluster, _), w)| (cluster.clone(), u32::try_from(w).unwrap_or(0)))
            .collect();
        match weighted.len() {
            0 => Destination::Cluster(self.destinations[0].0.clone()),
            1 => Destination::Cluster(weighted[0].0.clone()),
            _ => Destination::Weighted(weighted),
        }
    }

    fn finish(self) -> Route {
        let destination = self.destination();
        Route {
            name: self.name,
            path: self.path.matcher,
            headers: self.headers,
            destination,
        }
    }
}

/// `GenerateUniqueRouteName`: the Ingress name in the system namespace, `<ns>/<name>` elsewhere.
pub fn route_name(ingress: &Ingress, system_namespace: &str) -> String {
    let ns = ingress.namespace().unwrap_or_default();
    if ns == system_namespace {
        ingress.name_any()
    } else {
        format!("{ns}/{}", ingress.name_any())
    }
}

/// `backendToRouteDestination`: the cluster of a service backend, the port given by number or
/// resolved by name through the Service.
fn backend_cluster(
    backend: &IngressBackend,
    namespace: &str,
    services: &BTreeMap<(String, String), Arc<Service>>,
) -> Result<String, String> {
    let Some(service) = &backend.service else {
        return Err("only service backends are supported".to_string());
    };
    let port = service.port.as_ref();
    let number = port.and_then(|p| p.number).unwrap_or(0);
    if number > 0 {
        return Ok(cluster_name(namespace, &service.name, number));
    }
    let wanted = port.and_then(|p| p.name.as_deref()).unwrap_or("");
    let svc = services
        .get(&(namespace.to_string(), service.name.clone()))
        .ok_or_else(|| {
            format!(
                "service {namespace}/{} not found to resolve port {wanted:?}",
                service.name
            )
        })?;
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .and_then(|ports| {
            ports
                .iter()
                .find(|p| p.name.as_deref().unwrap_or("") == wanted)
        })
        .map(|p| cluster_name(namespace, &service.name, p.port))
        .ok_or_else(|| {
            format!(
                "service {namespace}/{} has no port named {wanted:?}",
                service.name
            )
        })
}

fn use_regex(ingress: &Ingress) -> bool {
    Annotations(ingress.metadata.annotations.as_ref())
        .bool("use-regex")
        .unwrap_or(false)
}

fn key(ingress: &Ingress) -> String {
    format!(
        "{}/{}",
        ingress.namespace().unwrap_or_default(),
        ingress.name_any()
    )
}

/// Virtual hosts from the Ingresses the gateway serves.
pub fn virtual_hosts(
    ingresses: &[Arc<Ingress>],
    services: &[Arc<Service>],
    config: &TranslateConfig,
    problems: &mut Vec<String>,
) -> Vec<VirtualHost> {
    let services: BTreeMap<(String, String), Arc<Service>> = services
        .iter()
        .map(|s| ((s.namespace().unwrap_or_default(), s.name_any()), s.clone()))
        .collect();

    // `SortIngressByCreationTime`: oldest first, ties by "<name>.<namespace>".
    let mut sorted: Vec<&Arc<Ingress>> = ingresses
        .iter()
        .filter(|i| serves_class(i, config))
        .collect();
    sorted.sort_by(|a, b| {
        let ta = a.metadata.creation_timestamp.as_ref();
        let tb = b.metadata.creation_timestamp.as_ref();
        ta.cmp(&tb).then_with(|| {
            let na = format!("{}.{}", a.name_any(), a.namespace().unwrap_or_default());
            let nb = format!("{}.{}", b.name_any(), b.namespace().unwrap_or_default());
            na.cmp(&nb)
        })
    });

    let mut hosts: BTreeMap<String, Vec<Draft>> = BTreeMap::new();
    // `HostAndPath2Ingress`: host and origin path already taken by an earlier Ingress.
    let mut taken: HashSet<(String, String)> = HashSet::new();
    let mut canaries: Vec<(&Arc<Ingress>, Canary)> = Vec::new();

    for ingress in sorted {
        let canary = Canary::parse(ingress.metadata.annotations.as_ref());
        if let Some(canary) = canary.filter(|c| c.enabled) {
            canaries.push((ingress, canary));
            continue;
        }
        let Some(spec) = ingress.spec.as_ref() else {
            problems.push(format!("ingress {}: no spec", key(ingress)));
            continue;
        };
        let rules = spec.rules.as_deref().unwrap_or_default();
        if rules.is_empty() {
            problems.push(format!(
                "ingress {}: no rules (defaultBackend is not supported by this stand-in)",
                key(ingress)
            ));
            continue;
        }
        let namespace = ingress.namespace().unwrap_or_default();
        let name = route_name(ingress, &config.system_namespace);
        let regex = use_regex(ingress);
        let mut defined: HashSet<(String, PathKind, String)> = HashSet::new();
        let mut recorded: Vec<(String, String)> = Vec::new();
        for rule in rules {
            let host = rule
                .host
                .clone()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "*".into());
            let paths = rule
                .http
                .as_ref()
                .map(|h| h.paths.as_slice())
                .unwrap_or_default();
            if paths.is_empty() {
                problems.push(format!(
                    "ingress {}: host {host:?} has no paths",
                    key(ingress)
                ));
                continue;
            }
            for p in paths {
                let path = path_rule(p.path.as_deref(), &p.path_type, regex);
                let mut duplicate = taken.contains(&(host.clone(), path.origin.clone()));
                recorded.push((host.clone(), path.origin.clone()));
                if !duplicate {
                    duplicate = !defined.insert((host.clone(), path.kind, path.origin.clone()));
                }
                let cluster = match backend_cluster(&p.backend, &namespace, &services) {
                    Ok(cluster) => cluster,
                    Err(reason) => {
                        problems.push(format!("ingress {}: {reason}", key(ingress)));
                        continue;
                    }
                };
                if duplicate {
                    problems.push(format!(
                        "ingress {}: host {host:?} path {:?} is already routed",
                        key(ingress),
                        path.origin
                    ));
                    continue;
                }
                hosts.entry(host.clone()).or_default().push(Draft {
                    name: name.clone(),
                    path,
                    headers: Vec::new(),
                    destinations: vec![(cluster, 100)],
                    weight_total: 0,
                });
            }
            taken.extend(recorded.drain(..));
        }
    }

    for routes in hosts.values_mut() {
        stable_sort_by(routes, Draft::sorts_before);
    }

    for (ingress, canary) in canaries {
        apply_canary(ingress, &canary, &mut hosts, &services, config, problems);
    }

    hosts
        .into_iter()
        .map(|(host, routes)| VirtualHost {
            host,
            routes: routes.into_iter().map(Draft::finish).collect(),
        })
        .collect()
}

/// `ApplyCanaryIngress`: header/cookie canaries become a route inserted just before the base
/// route of the same host, path and path type; weight canaries join the base route's clusters.
fn apply_canary(
    ingress: &Ingress,
    canary: &Canary,
    hosts: &mut BTreeMap<String, Vec<Draft>>,
    services: &BTreeMap<(String, String), Arc<Service>>,
    config: &TranslateConfig,
    problems: &mut Vec<String>,
) {
    let Some(rules) = ingress.spec.as_ref().and_then(|s| s.rules.as_deref()) else {
        problems.push(format!("canary ingress {}: no rules", key(ingress)));
        return;
    };
    let namespace = ingress.namespace().unwrap_or_default();
    let name = route_name(ingress, &config.system_namespace);
    let regex = use_regex(ingress);
    for rule in rules {
        let host = rule
            .host
            .clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "*".into());
        let paths = rule
            .http
            .as_ref()
            .map(|h| h.paths.as_slice())
            .unwrap_or_default();
        let Some(routes) = hosts.get_mut(&host) else {
            problems.push(format!(
                "canary ingress {}: no base routes for host {host:?}",
                key(ingress)
            ));
            continue;
        };
        for p in paths {
            let path = path_rule(p.path.as_deref(), &p.path_type, regex);
            let cluster = match backend_cluster(&p.backend, &namespace, services) {
                Ok(cluster) => cluster,
                Err(reason) => {
                    problems.push(format!("canary ingress {}: {reason}", key(ingress)));
                    continue;
                }
            };
            // `isCanaryRoute`: routes named `*-canary` are never a base.
            let Some(pos) = routes.iter().position(|r| {
                !r.name.ends_with("-canary")
                    && r.path.origin == path.origin
                    && r.path.kind == path.kind
            }) else {
                problems.push(format!(
                    "canary ingress {}: no base route for host {host:?} path {:?}",
                    key(ingress),
                    path.origin
                ));
                continue;
            };
            if canary.by_header() {
                let route = Draft {
                    name: name.clone(),
                    path,
                    headers: canary.header_match().into_iter().collect(),
                    destinations: vec![(cluster, 100)],
                    weight_total: 0,
                };
                routes.insert(pos, route);
            } else {
                let base = &mut routes[pos];
                if base.weight_total == 0 {
                    base.weight_total = canary.weight_total;
                }
                base.destinations.push((cluster, canary.weight));
            }
        }
    }
}

/// A stable insertion sort with a "less than" predicate (Go's `sort.SliceStable`).
fn stable_sort_by<T>(items: &mut [T], less: impl Fn(&T, &T) -> bool) {
    for i in 1..items.len() {
        let mut j = i;
        while j > 0 && less(&items[j], &items[j - 1]) {
            items.swap(j, j - 1);
            j -= 1;
        }
    }
}

// === clusters ===

/// One cluster per Service port, with the ready addresses of the Service's Endpoints on the
/// Endpoints port of the same name.
pub fn clusters(
    services: &[Arc<Service>],
    endpoints: &[Arc<Endpoints>],
) -> BTreeMap<String, Vec<Endpoint>> {
    let by_key: BTreeMap<(String, String), &Arc<Endpoints>> = endpoints
        .iter()
        .map(|e| ((e.namespace().unwrap_or_default(), e.name_any()), e))
        .collect();
    let mut out = BTreeMap::new();
    for service in services {
        let Some(spec) = service.spec.as_ref() else {
            continue;
        };
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        let namespace = service.namespace().unwrap_or_default();
        let name = service.name_any();
        let ports = spec.ports.as_deref().unwrap_or_default();
        let eps = by_key.get(&(namespace.clone(), name.clone()));
        for port in ports {
            let wanted = port.name.as_deref().unwrap_or("");
            let mut list: Vec<Endpoint> = Vec::new();
            for subset in eps.and_then(|e| e.subsets.as_deref()).unwrap_or_default() {
                let subset_ports = subset.ports.as_deref().unwrap_or_default();
                let matching = subset_ports.iter().find(|p| {
                    p.name.as_deref().unwrap_or("") == wanted
                        || (ports.len() == 1 && subset_ports.len() == 1)
                });
                let Some(target) = matching.and_then(|p| u16::try_from(p.port).ok()) else {
                    continue;
                };
                for address in subset.addresses.as_deref().unwrap_or_default() {
                    list.push(Endpoint {
                        ip: address.ip.clone(),
                        port: target,
                    });
                }
            }
            list.sort();
            list.dedup();
            out.insert(cluster_name(&namespace, &name, port.port), list);
        }
    }
    out
}
