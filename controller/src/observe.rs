//! Reads everything [`crate::step::plan`] needs for one Rollout: the Deployment and its
//! ReplicaSets, the canary Deployment and its newest ReplicaSet, the four Services and
//! Ingresses, and the shared WasmPlugin.
//!
//! Deployments, Services, Ingresses and the shared WasmPlugin come from the controller's watch
//! caches ([`Caches`]); the ReplicaSets fresh from the API, listed after the cached Deployment
//! was read, so a Deployment that reports its new pods always finds their ReplicaSet. A cache
//! may lag behind the API by an event, so a view in which a stable object is missing, the
//! Deployment's template differs from the release recorded in the status, the WasmPlugin does
//! not carry the recorded rule, or another Rollout's rule holds one of this Rollout's routes is
//! confirmed by reading everything fresh ([`needs_confirmation`]): a lagging cache must not
//! read as "template reverted", "Deployment deleted", "rule lost" or "route taken". Other
//! Rollouts (for conflicts) come from the controller's Rollout cache.
//!
//! Missing objects are `None`, never errors: the planner reports them in the status.

use futures::FutureExt as _;
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, ReplicaSet},
        core::v1::Service,
        networking::v1::Ingress,
    },
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{
    api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams},
    runtime::reflector::{ObjectRef, Store},
    Client, ResourceExt,
};
use tracing::warn;

use crate::{
    crd::Rollout,
    keys::POD_TEMPLATE_HASH,
    observed::{CanaryWorkload, Observed, StableReplicaSet, Workload},
    render::{self, PluginRef, WASMPLUGIN_KIND},
    revision::template_hash,
    validate::Names,
    Error, Result,
};

/// `deployment.kubernetes.io/revision`, the Deployment controller's revision counter on
/// ReplicaSets.
const RS_REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";

/// The API resource of Higress's `WasmPlugin`.
pub fn wasm_plugin_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("extensions.higress.io", "v1alpha1", WASMPLUGIN_KIND),
        "wasmplugins",
    )
}

/// The shared WasmPlugin's namespace as an `Api`.
pub fn wasm_plugin_api(client: &Client, plugin: &PluginRef) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), &plugin.namespace, &wasm_plugin_resource())
}

/// The controller's watch caches of the kinds Rollouts name (all namespaces).
#[derive(Clone)]
pub struct Caches {
    pub deployments: Store<Deployment>,
    pub services: Store<Service>,
    pub ingresses: Store<Ingress>,
    /// The shared WasmPlugin (its watch selects it by name).
    pub plugin: Store<DynamicObject>,
}

impl Caches {
    /// Whether every cache holds its first complete list (before that, an object missing from
    /// a cache may well exist).
    pub fn ready(&self) -> bool {
        fn listed<K>(store: &Store<K>) -> bool
        where
            K: kube::Resource + Clone + 'static,
            K::DynamicType: Eq + std::hash::Hash + Clone,
        {
            matches!(store.wait_until_ready().now_or_never(), Some(Ok(())))
        }
        listed(&self.deployments)
            && listed(&self.services)
            && listed(&self.ingresses)
            && listed(&self.plugin)
    }
}

/// Where [`observe`] reads Deployments, Services and Ingresses.
#[derive(Clone, Copy)]
pub enum Source<'a> {
    /// The watch caches (planning as usual).
    Cache(&'a Caches),
    /// The API (confirming a view the caches gave, or without caches).
    Api,
}

/// Whether a view read from the caches must be confirmed by fresh reads before planning: a
/// stable object it names is missing (it would be reported as deleted), or the Deployment's
/// template would start, restart or roll back a release (during a release: it is not the
/// revision in the status; otherwise: it is not what the stable pods run). These are the
/// decisions a cache one event behind must not take; a missing canary object is simply
/// applied again.
pub fn needs_confirmation(rollout: &Rollout, observed: &Observed) -> bool {
    let names = Names::of(rollout);
    let missing = |name: &Option<String>, found: bool| name.is_some() && !found;
    let releasing = rollout
        .status
        .as_ref()
        .and_then(|s| s.canary_status.as_ref())
        .map(|c| c.canary_revision.as_str());
    let recorded_rule = rollout.plugin_rule();
    // Another Rollout's rule on one of these is a RouteConflict.
    let routes = names.routes();
    let route_taken = observed.plugin.as_ref().is_some_and(|p| {
        p.rules
            .iter()
            .filter(|r| r.rollout != names.key)
            .any(|r| r.match_route.iter().any(|route| routes.contains(route)))
    });
    missing(&names.deployment, observed.workload.is_some())
        || missing(&names.service, observed.service.is_some())
        || missing(&names.ingress, observed.ingress.is_some())
        || observed.workload.as_ref().is_some_and(|w| match releasing {
            Some(revision) => w.revision != revision,
            None => !w.in_sync(),
        })
        // The gateway seems not to carry the recorded rule: the planner would write it again
        // and restart the grace period, not on a cache one event behind.
        || observed.rule(&names.key) != recorded_rule
        || route_taken
}

/// Reads the world around `rollout`: Deployments, Services and Ingresses from `source`, the
/// rest from the API. `others` are the Rollouts the controller knows of (its cache), used to
/// find older Rollouts releasing the same Deployment.
pub async fn observe(
    client: &Client,
    source: Source<'_>,
    plugin: &PluginRef,
    rollout: &Rollout,
    others: &[std::sync::Arc<Rollout>],
) -> Result<Observed> {
    let names = Names::of(rollout);
    let ns = names.namespace.as_str();
    let (deployment, canary, service, canary_service, ingress, canary_ingress, plugin_obj) =
        match source {
            Source::Cache(caches) => {
                let (deployments, services, ingresses) =
                    (&caches.deployments, &caches.services, &caches.ingresses);
                (
                    cached(deployments, ns, names.deployment.as_deref()),
                    cached(deployments, ns, names.canary_deployment.as_deref()),
                    cached(services, ns, names.service.as_deref()),
                    cached(services, ns, names.canary_service.as_deref()),
                    cached(ingresses, ns, names.ingress.as_deref()),
                    cached(ingresses, ns, names.canary_ingress.as_deref()),
                    caches
                        .plugin
                        .get(
                            &ObjectRef::new_with(&plugin.name, wasm_plugin_resource())
                                .within(&plugin.namespace),
                        )
                        .map(|obj| obj.as_ref().clone()),
                )
            }
            Source::Api => {
                let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
                let services: Api<Service> = Api::namespaced(client.clone(), ns);
                let ingresses: Api<Ingress> = Api::namespaced(client.clone(), ns);
                let plugins = wasm_plugin_api(client, plugin);
                let plugin_obj = get_opt(&plugins, Some(plugin.name.as_str()), "WasmPlugin");
                futures::try_join!(
                    get_opt(&deployments, names.deployment.as_deref(), "Deployment"),
                    get_opt(
                        &deployments,
                        names.canary_deployment.as_deref(),
                        "Deployment"
                    ),
                    get_opt(&services, names.service.as_deref(), "Service"),
                    get_opt(&services, names.canary_service.as_deref(), "Service"),
                    get_opt(&ingresses, names.ingress.as_deref(), "Ingress"),
                    get_opt(&ingresses, names.canary_ingress.as_deref(), "Ingress"),
                    plugin_obj,
                )?
            }
        };

    // ReplicaSets of both Deployments share labels (same selector); one list serves both.
    let replica_sets = match deployment.as_ref().or(canary.as_ref()) {
        Some(d) => list_replica_sets(client, ns, d).await?,
        None => Vec::new(),
    };
    let workload = deployment.map(|d| {
        let stable = stable_replica_set(&owned_by(&replica_sets, &d));
        Workload {
            revision: template_hash(&d.spec.template),
            stable,
            deployment: d,
        }
    });
    let canary = canary.map(|c| {
        let pod_template_hash = canary_pod_hash(&c, &owned_by(&replica_sets, &c));
        CanaryWorkload {
            deployment: c,
            pod_template_hash,
        }
    });
    let plugin = plugin_obj.map(|obj| {
        let spec = obj.data.get("spec").cloned().unwrap_or_default();
        render::parse_spec(&spec).unwrap_or_else(|e| {
            // Rewritten from the Rollouts' statuses on the next plugin write.
            warn!(error = %e, "the shared WasmPlugin's config does not parse");
            Default::default()
        })
    });
    Ok(Observed {
        workload,
        canary,
        service,
        canary_service,
        ingress,
        canary_ingress,
        plugin,
        conflicts: conflicts(rollout, &names, others),
        measurement: None,
    })
}

/// `ns/name` from a cache, as an owned object like a GET returns.
fn cached<K>(store: &Store<K>, ns: &str, name: Option<&str>) -> Option<K>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let name = name?;
    store
        .get(&ObjectRef::new(name).within(ns))
        .map(|obj| obj.as_ref().clone())
}

async fn get_opt<K>(api: &Api<K>, name: Option<&str>, kind: &str) -> Result<Option<K>>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let Some(name) = name else {
        return Ok(None);
    };
    api.get_opt(name)
        .await
        .map_err(|e| Error::kube(format!("reading {kind} {name}"), e))
}

/// The ReplicaSets in `ns` that `deployment`'s selector matches (by its `matchLabels`).
async fn list_replica_sets(
    client: &Client,
    ns: &str,
    deployment: &Deployment,
) -> Result<Vec<ReplicaSet>> {
    let selector = deployment
        .spec
        .selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let params = if selector.is_empty() {
        ListParams::default()
    } else {
        ListParams::default().labels(&selector)
    };
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
    api.list(&params)
        .await
        .map(|l| l.items)
        .map_err(|e| Error::kube("listing ReplicaSets", e))
}

/// The ReplicaSets controlled by `owner`.
fn owned_by(all: &[ReplicaSet], owner: &Deployment) -> Vec<ReplicaSet> {
    let uid = owner.metadata.uid.as_deref();
    all.iter()
        .filter(|rs| {
            rs.owner_references()
                .iter()
                .any(|o: &OwnerReference| o.controller == Some(true) && Some(o.uid.as_str()) == uid)
        })
        .cloned()
        .collect()
}

fn rs_revision(rs: &ReplicaSet) -> i64 {
    rs.annotations()
        .get(RS_REVISION_ANNOTATION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn rs_replicas(rs: &ReplicaSet) -> i32 {
    let spec = rs.spec.replicas.unwrap_or(0);
    let status = rs.status.as_ref().map_or(0, |s| s.replicas);
    spec.max(status)
}

fn pod_hash(rs: &ReplicaSet) -> Option<String> {
    rs.labels()
        .get(POD_TEMPLATE_HASH)
        .filter(|h| !h.is_empty())
        .cloned()
}

/// Kruise's stable revision: the oldest ReplicaSet that still has pods (spec or status), else
/// the newest one.
pub fn stable_replica_set(replica_sets: &[ReplicaSet]) -> Option<StableReplicaSet> {
    let mut sets: Vec<&ReplicaSet> = replica_sets
        .iter()
        .filter(|rs| rs.metadata.deletion_timestamp.is_none() && pod_hash(rs).is_some())
        .collect();
    sets.sort_by_key(|rs| {
        (
            rs.metadata.creation_timestamp.clone().map(|t| t.0),
            rs_revision(rs),
        )
    });
    let chosen = sets
        .iter()
        .find(|rs| rs_replicas(rs) > 0)
        .or_else(|| sets.iter().max_by_key(|rs| rs_revision(rs)))?;
    Some(StableReplicaSet {
        pod_template_hash: pod_hash(chosen)?,
        revision: chosen
            .spec
            .template
            .as_ref()
            .map(template_hash)
            .unwrap_or_default(),
    })
}

/// The `pod-template-hash` of the canary Deployment's ReplicaSet for its current template
/// (the newest one if none matches yet).
fn canary_pod_hash(canary: &Deployment, replica_sets: &[ReplicaSet]) -> Option<String> {
    let revision = template_hash(&canary.spec.template);
    let current = replica_sets.iter().find(|rs| {
        rs.spec
            .template
            .as_ref()
            .is_some_and(|t| template_hash(t) == revision)
    });
    current
        .or_else(|| replica_sets.iter().max_by_key(|rs| rs_revision(rs)))
        .and_then(pod_hash)
}

/// Rollouts in the same namespace releasing the same Deployment that came first (older
/// creationTimestamp, then name).
fn conflicts(rollout: &Rollout, names: &Names, others: &[std::sync::Arc<Rollout>]) -> Vec<String> {
    let Some(deployment) = names.deployment.as_deref() else {
        return Vec::new();
    };
    let key = |r: &Rollout| {
        (
            r.metadata.creation_timestamp.clone().map(|t| t.0),
            r.name_any(),
        )
    };
    let mine = key(rollout);
    let mut found: Vec<String> = others
        .iter()
        .filter(|o| o.namespace().as_deref() == Some(names.namespace.as_str()))
        .filter(|o| o.name_any() != names.rollout)
        .filter(|o| Names::of(o).deployment.as_deref() == Some(deployment))
        .filter(|o| key(o) < mine)
        .map(|o| o.name_any())
        .collect();
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::{
        api::{
            apps::v1::{ReplicaSetSpec, ReplicaSetStatus},
            core::v1::{Container, PodSpec, PodTemplateSpec},
        },
        apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    };

    use super::*;

    fn rs(hash: &str, revision: i64, created: i64, replicas: i32, image: &str) -> ReplicaSet {
        ReplicaSet {
            metadata: ObjectMeta {
                name: Some(format!("demo-{hash}")),
                labels: Some(BTreeMap::from([(
                    POD_TEMPLATE_HASH.to_owned(),
                    hash.to_owned(),
                )])),
                annotations: Some(BTreeMap::from([(
                    RS_REVISION_ANNOTATION.to_owned(),
                    revision.to_string(),
                )])),
                creation_timestamp: Some(Time(
                    jiff::Timestamp::from_second(1_767_225_600 + created).expect("valid time"),
                )),
                ..Default::default()
            },
            spec: ReplicaSetSpec {
                replicas: Some(replicas),
                template: Some(PodTemplateSpec {
                    metadata: None,
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "main".into(),
                            image: Some(image.into()),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            },
            status: Some(ReplicaSetStatus {
                replicas,
                ..Default::default()
            }),
        }
    }

    #[test]
    fn the_stable_replica_set_is_the_oldest_that_still_has_pods() {
        let sets = [
            rs("new", 3, 30, 2, "v3"),
            rs("gone", 1, 10, 0, "v1"),
            rs("old", 2, 20, 3, "v2"),
        ];
        let stable = stable_replica_set(&sets).expect("a stable ReplicaSet");
        assert_eq!(stable.pod_template_hash, "old");
        assert_eq!(
            stable.revision,
            template_hash(sets[2].spec.template.as_ref().expect("template"))
        );
    }

    #[test]
    fn without_pods_the_newest_replica_set_is_stable() {
        let sets = [rs("a", 1, 10, 0, "v1"), rs("b", 2, 20, 0, "v2")];
        assert_eq!(
            stable_replica_set(&sets).map(|s| s.pod_template_hash),
            Some("b".to_owned())
        );
        assert_eq!(stable_replica_set(&[]), None);
    }

    #[test]
    fn a_cached_view_is_confirmed_when_it_would_start_restart_or_roll_back_a_release() {
        use crate::observed::{Observed, StableReplicaSet, Workload};
        use k8s_openapi::api::{core::v1::Service, networking::v1::Ingress};

        let rollout = |releasing: Option<&str>| -> Rollout {
            let mut r: Rollout = serde_json::from_value(serde_json::json!({
                "apiVersion": "rollouts.kruise.io/v1alpha1",
                "kind": "Rollout",
                "metadata": {"name": "demo", "namespace": "default"},
                "spec": {
                    "objectRef": {"workloadRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "demo"}},
                    "strategy": {"canary": {
                        "steps": [{"weight": 10}],
                        "trafficRoutings": [{"service": "demo", "ingress": {"name": "demo"}}],
                    }},
                },
            }))
            .expect("a Rollout");
            if let Some(revision) = releasing {
                r.status = serde_json::from_value(serde_json::json!({
                    "canaryStatus": {"canaryRevision": revision, "podTemplateHash": "h",
                                     "currentStepIndex": 1},
                }))
                .expect("a status");
            }
            r
        };
        // The Deployment asks for `template`; its stable pods run `stable`.
        let world = |template: &str, stable: &str| Observed {
            workload: Some(Workload {
                revision: template.to_owned(),
                stable: Some(StableReplicaSet {
                    pod_template_hash: "h".to_owned(),
                    revision: stable.to_owned(),
                }),
                ..Workload::default()
            }),
            service: Some(Service::default()),
            ingress: Some(Ingress::default()),
            ..Observed::default()
        };
        let cases = [
            (
                "healthy, template = stable pods",
                rollout(None),
                world("r1", "r1"),
                false,
            ),
            (
                "healthy, a new template: a release would start",
                rollout(None),
                world("r2", "r1"),
                true,
            ),
            (
                "releasing r2, template r2",
                rollout(Some("r2")),
                world("r2", "r1"),
                false,
            ),
            (
                "releasing r2, template r3: a restart",
                rollout(Some("r2")),
                world("r3", "r1"),
                true,
            ),
            (
                "releasing r2, template r1: a rollback",
                rollout(Some("r2")),
                world("r1", "r1"),
                true,
            ),
            (
                "the Deployment missing",
                rollout(Some("r2")),
                Observed {
                    workload: None,
                    ..world("r2", "r1")
                },
                true,
            ),
            (
                "the stable Service missing",
                rollout(Some("r2")),
                Observed {
                    service: None,
                    ..world("r2", "r1")
                },
                true,
            ),
            (
                "the stable Ingress missing",
                rollout(None),
                Observed {
                    ingress: None,
                    ..world("r1", "r1")
                },
                true,
            ),
            (
                // Applied again if it is really missing: no need to ask.
                "the canary Deployment missing",
                rollout(Some("r2")),
                Observed {
                    canary: None,
                    ..world("r2", "r1")
                },
                false,
            ),
        ];
        for (what, rollout, observed, confirm) in cases {
            assert_eq!(needs_confirmation(&rollout, &observed), confirm, "{what}");
        }

        // The WasmPlugin: a rule of this Rollout the status does not record (or the other way
        // round), or another Rollout's rule on one of its routes.
        let rule = |rollout: &str, route: &str| canary_core::config::RuleConfig {
            match_route: vec![route.to_owned()],
            rollout: rollout.to_owned(),
            tag_header: "x-higress-canary".to_owned(),
            tag_value: "t".to_owned(),
            ..Default::default()
        };
        let with_rules = |rules: Vec<canary_core::config::RuleConfig>| Observed {
            plugin: Some(canary_core::PluginConfig {
                global: None,
                rules,
            }),
            ..world("r1", "r1")
        };
        let mut recorded = rollout(Some("r1"));
        let mine = rule("default/demo", "default/demo");
        recorded.status = serde_json::from_value(serde_json::json!({
            "canaryStatus": {"canaryRevision": "r1", "podTemplateHash": "h",
                             "currentStepIndex": 1,
                             "higress": {"rule": serde_json::to_value(&mine).expect("a rule")}},
        }))
        .expect("a status");
        let plugin_cases = [
            (
                "the recorded rule on the gateway",
                &recorded,
                with_rules(vec![mine.clone()]),
                false,
            ),
            (
                "the recorded rule not on the gateway",
                &recorded,
                with_rules(vec![]),
                true,
            ),
            (
                "a rule on the gateway, none recorded",
                &rollout(None),
                with_rules(vec![mine.clone()]),
                true,
            ),
            (
                "another Rollout on the canary Ingress' route",
                &rollout(None),
                with_rules(vec![rule("default/other", "default/demo-canary")]),
                true,
            ),
            (
                "another Rollout on another route",
                &rollout(None),
                with_rules(vec![rule("default/other", "default/api")]),
                false,
            ),
        ];
        for (what, rollout, observed, confirm) in plugin_cases {
            assert_eq!(needs_confirmation(rollout, &observed), confirm, "{what}");
        }
    }

    #[test]
    fn only_older_rollouts_of_the_same_deployment_conflict() {
        let rollout = |name: &str, created: i64, deployment: &str| {
            let mut r: Rollout = serde_json::from_value(serde_json::json!({
                "apiVersion": "rollouts.kruise.io/v1alpha1",
                "kind": "Rollout",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {
                    "objectRef": {"workloadRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment}},
                    "strategy": {},
                },
            }))
            .expect("a Rollout");
            r.metadata.creation_timestamp = Some(Time(
                jiff::Timestamp::from_second(1_767_225_600 + created).expect("valid time"),
            ));
            std::sync::Arc::new(r)
        };
        let me = rollout("b", 20, "demo");
        let others = [
            rollout("a", 10, "demo"),
            rollout("c", 30, "demo"),
            rollout("d", 5, "other"),
            rollout("a2", 20, "demo"),
            me.clone(),
        ];
        assert_eq!(
            conflicts(&me, &Names::of(&me), &others),
            ["a".to_owned(), "a2".to_owned()]
        );
    }
}
