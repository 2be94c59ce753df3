//! The resource types the server knows: the built-ins it models and the custom resources
//! registered from CRDs (at start, through [`super::ApiServer::register_crd_yaml`], or by
//! creating a CustomResourceDefinition through the API, as `kubectl apply` of a CRD does).

use std::collections::BTreeMap;

use serde_json::Value;

/// Where a Scale subresource reads and writes its numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleSpec {
    /// Dotted path of the desired replicas, e.g. `spec.replicas`.
    pub spec_replicas: String,
    /// Dotted path of the observed replicas, e.g. `status.replicas`.
    pub status_replicas: String,
    /// Where the selector comes from.
    pub selector: ScaleSelector,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ScaleSelector {
    /// A `LabelSelector` object at this path, rendered to a string (built-ins: `spec.selector`).
    LabelSelector(String),
    /// A string at this path (CRDs: `labelSelectorPath`).
    Text(String),
    None,
}

/// A CRD printer column (`additionalPrinterColumns`).
#[derive(Debug, Clone, PartialEq)]
pub struct PrinterColumn {
    pub name: String,
    pub type_: String,
    pub json_path: String,
    pub priority: i64,
    pub description: String,
}

/// Built-in (Go types in the real server: strategic merge patch works) or custom.
#[derive(Debug, Clone, PartialEq)]
pub enum Class {
    Builtin,
    Custom {
        /// `metadata.name` of the CRD that registered it.
        crd: String,
        /// The version's `openAPIV3Schema`, if any.
        schema: Option<Value>,
    },
}

/// One served resource at one version.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceType {
    /// API group; empty for core.
    pub group: String,
    pub version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub list_kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Has a `/status` subresource (then the main resource ignores `.status` and vice versa).
    pub status: bool,
    pub scale: Option<ScaleSpec>,
    /// Whether `metadata.generation` is maintained.
    pub generation: bool,
    pub class: Class,
    pub printer_columns: Vec<PrinterColumn>,
}

/// Objects of all versions of one resource share storage under this key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResKey {
    pub group: String,
    pub plural: String,
}

impl ResourceType {
    pub fn key(&self) -> ResKey {
        ResKey {
            group: self.group.clone(),
            plural: self.plural.clone(),
        }
    }

    /// `apps/v1` or `v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn is_custom(&self) -> bool {
        matches!(self.class, Class::Custom { .. })
    }

    pub fn schema(&self) -> Option<&Value> {
        match &self.class {
            Class::Custom { schema, .. } => schema.as_ref(),
            Class::Builtin => None,
        }
    }

    /// `deployments.apps`, or `services` for core.
    pub fn qualified_plural(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

struct Builtin {
    group: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    all: bool,
    status: bool,
    scale: bool,
    generation: bool,
}

const fn b(
    group: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
) -> Builtin {
    Builtin {
        group,
        plural,
        kind,
        namespaced,
        short,
        all: false,
        status: false,
        scale: false,
        generation: false,
    }
}

/// The built-in resources, each at v1.
fn builtins() -> Vec<Builtin> {
    vec![
        Builtin {
            status: true,
            ..b("", "namespaces", "Namespace", false, &["ns"])
        },
        Builtin {
            all: true,
            status: true,
            ..b("", "services", "Service", true, &["svc"])
        },
        Builtin {
            all: true,
            status: true,
            generation: true,
            ..b("", "pods", "Pod", true, &["po"])
        },
        b("", "endpoints", "Endpoints", true, &["ep"]),
        b("", "events", "Event", true, &["ev"]),
        b("", "configmaps", "ConfigMap", true, &["cm"]),
        b("", "secrets", "Secret", true, &[]),
        Builtin {
            all: true,
            status: true,
            scale: true,
            generation: true,
            ..b("apps", "deployments", "Deployment", true, &["deploy"])
        },
        Builtin {
            all: true,
            status: true,
            scale: true,
            generation: true,
            ..b("apps", "replicasets", "ReplicaSet", true, &["rs"])
        },
        Builtin {
            status: true,
            generation: true,
            ..b("networking.k8s.io", "ingresses", "Ingress", true, &["ing"])
        },
        b("events.k8s.io", "events", "Event", true, &["ev"]),
        b("coordination.k8s.io", "leases", "Lease", true, &[]),
        // What installation manifests (deploy/) carry; stored, never enforced.
        b("", "serviceaccounts", "ServiceAccount", true, &["sa"]),
        b(
            "rbac.authorization.k8s.io",
            "clusterroles",
            "ClusterRole",
            false,
            &[],
        ),
        b(
            "rbac.authorization.k8s.io",
            "clusterrolebindings",
            "ClusterRoleBinding",
            false,
            &[],
        ),
        b("rbac.authorization.k8s.io", "roles", "Role", true, &[]),
        b(
            "rbac.authorization.k8s.io",
            "rolebindings",
            "RoleBinding",
            true,
            &[],
        ),
        Builtin {
            status: true,
            generation: true,
            ..b(
                "policy",
                "poddisruptionbudgets",
                "PodDisruptionBudget",
                true,
                &["pdb"],
            )
        },
        Builtin {
            status: true,
            generation: true,
            ..b(
                "apiextensions.k8s.io",
                "customresourcedefinitions",
                "CustomResourceDefinition",
                false,
                &["crd", "crds"],
            )
        },
    ]
}

/// All served resource types, keyed by `(group, version, plural)`.
#[derive(Debug, Clone)]
pub struct Registry {
    types: BTreeMap<(String, String, String), ResourceType>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// The built-ins only.
    pub fn new() -> Self {
        let mut types = BTreeMap::new();
        for bi in builtins() {
            let singular = bi.kind.to_lowercase();
            let rt = ResourceType {
                group: bi.group.to_string(),
                version: "v1".to_string(),
                plural: bi.plural.to_string(),
                singular,
                kind: bi.kind.to_string(),
                list_kind: format!("{}List", bi.kind),
                namespaced: bi.namespaced,
                short_names: bi.short.iter().map(|s| s.to_string()).collect(),
                categories: if bi.all {
                    vec!["all".to_string()]
                } else if bi.group == "apiextensions.k8s.io" {
                    vec!["api-extensions".to_string()]
                } else {
                    vec![]
                },
                status: bi.status,
                scale: bi.scale.then(|| ScaleSpec {
                    spec_replicas: "spec.replicas".to_string(),
                    status_replicas: "status.replicas".to_string(),
                    selector: ScaleSelector::LabelSelector("spec.selector".to_string()),
                }),
                generation: bi.generation,
                class: Class::Builtin,
                printer_columns: vec![],
            };
            types.insert(
                (rt.group.clone(), rt.version.clone(), rt.plural.clone()),
                rt,
            );
        }
        Registry { types }
    }

    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceType> {
        self.types
            .get(&(group.to_string(), version.to_string(), plural.to_string()))
    }

    /// Any served version of a resource (for GC and namespace cleanup, which work on keys).
    pub fn any_version(&self, key: &ResKey) -> Option<&ResourceType> {
        self.types
            .values()
            .find(|rt| rt.group == key.group && rt.plural == key.plural)
    }

    /// Finds a resource by `plural`, `plural.group`, `kind` or a short name (test controls).
    pub fn find(&self, name: &str) -> Option<&ResourceType> {
        let (first, group) = match name.split_once('.') {
            Some((first, group)) => (first, Some(group)),
            None => (name, None),
        };
        let lower = first.to_lowercase();
        let mut candidates = self.types.values().filter(|rt| {
            group.is_none_or(|g| rt.group == g)
                && (rt.plural == lower
                    || rt.singular == lower
                    || rt.kind.to_lowercase() == lower
                    || rt.short_names.contains(&lower))
        });
        let first_match = candidates.next()?;
        // Prefer the core/legacy group for ambiguous names such as `events` (like kubectl).
        Some(
            std::iter::once(first_match)
                .chain(candidates)
                .min_by_key(|rt| (!rt.group.is_empty(), rt.group.clone()))
                .expect("invariant: at least one candidate"),
        )
    }

    /// Group versions served, in discovery order: core first, then groups sorted by name.
    pub fn group_versions(&self) -> Vec<(String, String)> {
        let mut gvs: Vec<(String, String)> = Vec::new();
        for rt in self.types.values() {
            let gv = (rt.group.clone(), rt.version.clone());
            if !gvs.contains(&gv) {
                gvs.push(gv);
            }
        }
        gvs.sort_by_key(|(g, v)| (!g.is_empty(), g.clone(), std::cmp::Reverse(version_rank(v))));
        gvs
    }

    /// The resources of one group version.
    pub fn in_group_version<'a>(
        &'a self,
        group: &'a str,
        version: &'a str,
    ) -> impl Iterator<Item = &'a ResourceType> + 'a {
        self.types
            .values()
            .filter(move |rt| rt.group == group && rt.version == version)
    }

    /// Registers (or re-registers) every served version of a CRD object. Returns the types.
    pub fn register_crd(&mut self, crd: &Value) -> Result<Vec<ResourceType>, String> {
        let types = crd_types(crd)?;
        if let Some(first) = types.first() {
            self.unregister_crd_group(&first.group, &first.plural);
        }
        for rt in &types {
            self.types.insert(
                (rt.group.clone(), rt.version.clone(), rt.plural.clone()),
                rt.clone(),
            );
        }
        Ok(types)
    }

    /// Removes every version of a custom resource.
    pub fn unregister_crd_group(&mut self, group: &str, plural: &str) {
        self.types
            .retain(|_, rt| !(rt.is_custom() && rt.group == group && rt.plural == plural));
    }
}

/// Kubernetes version ordering for "preferred version": GA > beta > alpha, higher first.
fn version_rank(v: &str) -> (u8, u32, u32) {
    let rest = v.strip_prefix('v').unwrap_or(v);
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let major = digits.parse().unwrap_or(0);
    let tail = &rest[digits.len()..];
    let (stage, minor) = if tail.is_empty() {
        (3, 0)
    } else if let Some(n) = tail.strip_prefix("beta") {
        (2, n.parse().unwrap_or(0))
    } else if let Some(n) = tail.strip_prefix("alpha") {
        (1, n.parse().unwrap_or(0))
    } else {
        (0, 0)
    };
    (stage, major, minor)
}

/// The preferred of several versions.
pub fn preferred_version<'a>(versions: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    versions.into_iter().max_by_key(|v| version_rank(v))
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_str()
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The resource types a CRD object declares (served versions only).
pub fn crd_types(crd: &Value) -> Result<Vec<ResourceType>, String> {
    let name = str_at(crd, &["metadata", "name"]).unwrap_or_default();
    let spec = crd.get("spec").ok_or("spec: Required value")?;
    let group = str_at(spec, &["group"]).ok_or("spec.group: Required value")?;
    let names = spec.get("names").ok_or("spec.names: Required value")?;
    let plural = str_at(names, &["plural"]).ok_or("spec.names.plural: Required value")?;
    let kind = str_at(names, &["kind"]).ok_or("spec.names.kind: Required value")?;
    if name != format!("{plural}.{group}") {
        return Err(format!(
            "metadata.name: Invalid value: {name:?}: must be spec.names.plural+\".\"+spec.group"
        ));
    }
    let singular = str_at(names, &["singular"])
        .map(str::to_string)
        .unwrap_or_else(|| kind.to_lowercase());
    let list_kind = str_at(names, &["listKind"])
        .map(str::to_string)
        .unwrap_or_else(|| format!("{kind}List"));
    let namespaced = match str_at(spec, &["scope"]) {
        Some("Namespaced") => true,
        Some("Cluster") => false,
        other => return Err(format!("spec.scope: Unsupported value: {other:?}")),
    };
    let versions = spec
        .get("versions")
        .and_then(Value::as_array)
        .ok_or("spec.versions: Required value")?;
    let mut out = Vec::new();
    for v in versions {
        let version = v
            .get("name")
            .and_then(Value::as_str)
            .ok_or("spec.versions[].name: Required value")?;
        if v.get("served").and_then(Value::as_bool) == Some(false) {
            continue;
        }
        let sub = v.get("subresources");
        let status = sub.and_then(|s| s.get("status")).is_some();
        let scale = sub.and_then(|s| s.get("scale")).map(|s| ScaleSpec {
            spec_replicas: trim_dot(str_at(s, &["specReplicasPath"]).unwrap_or(".spec.replicas")),
            status_replicas: trim_dot(
                str_at(s, &["statusReplicasPath"]).unwrap_or(".status.replicas"),
            ),
            selector: match str_at(s, &["labelSelectorPath"]) {
                Some(p) => ScaleSelector::Text(trim_dot(p)),
                None => ScaleSelector::None,
            },
        });
        let printer_columns = v
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .map(|cols| {
                cols.iter()
                    .map(|c| PrinterColumn {
                        name: str_at(c, &["name"]).unwrap_or_default().to_string(),
                        type_: str_at(c, &["type"]).unwrap_or("string").to_string(),
                        json_path: str_at(c, &["jsonPath"]).unwrap_or_default().to_string(),
                        priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                        description: str_at(c, &["description"]).unwrap_or_default().to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(ResourceType {
            group: group.to_string(),
            version: version.to_string(),
            plural: plural.to_string(),
            singular: singular.clone(),
            kind: kind.to_string(),
            list_kind: list_kind.clone(),
            namespaced,
            short_names: strings(names.get("shortNames")),
            categories: strings(names.get("categories")),
            status,
            scale,
            generation: true,
            class: Class::Custom {
                crd: name.to_string(),
                schema: v
                    .get("schema")
                    .and_then(|s| s.get("openAPIV3Schema"))
                    .cloned(),
            },
            printer_columns,
        });
    }
    if out.is_empty() {
        return Err("spec.versions: Invalid value: no served version".to_string());
    }
    Ok(out)
}

fn trim_dot(p: &str) -> String {
    p.trim_start_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn builtins_are_found_by_plural_kind_and_short_name() {
        let r = Registry::new();
        assert_eq!(r.find("deploy").unwrap().plural, "deployments");
        assert_eq!(r.find("deployments.apps").unwrap().group, "apps");
        assert_eq!(r.find("Service").unwrap().plural, "services");
        assert_eq!(r.find("events").unwrap().group, "");
        assert_eq!(
            r.find("events.events.k8s.io").unwrap().group,
            "events.k8s.io"
        );
        assert!(r.find("rollouts").is_none());
    }

    #[test]
    fn a_crd_registers_each_served_version() {
        let mut r = Registry::new();
        let crd = json!({
            "metadata": {"name": "rollouts.rollouts.kruise.io"},
            "spec": {"group": "rollouts.kruise.io", "scope": "Namespaced",
                "names": {"plural": "rollouts", "kind": "Rollout", "shortNames": ["ro"]},
                "versions": [
                    {"name": "v1alpha1", "served": true, "storage": false,
                     "subresources": {"status": {}}},
                    {"name": "v1beta1", "served": true, "storage": true},
                    {"name": "v0", "served": false, "storage": false}]}
        });
        let types = r.register_crd(&crd).unwrap();
        assert_eq!(types.len(), 2);
        let ro = r.get("rollouts.kruise.io", "v1alpha1", "rollouts").unwrap();
        assert!(ro.status && ro.is_custom());
        assert_eq!(ro.list_kind, "RolloutList");
        assert_eq!(r.find("ro").unwrap().kind, "Rollout");
        assert_eq!(
            preferred_version(["v1alpha1", "v1beta1", "v1", "v2beta1"]),
            Some("v1")
        );
        r.unregister_crd_group("rollouts.kruise.io", "rollouts");
        assert!(r.find("ro").is_none());
    }
}
