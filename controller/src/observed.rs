//! What the controller read from the cluster for one Rollout, as plain data.
//!
//! The I/O layer fills this in (GETs or informer caches); [`crate::step::plan`] only reads it.
//! Tests build it by hand.

use canary_core::{config::RuleConfig, PluginConfig};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Service, networking::v1::Ingress};
use kube::ResourceExt;

use crate::{analysis::Measurement, crd::Rollout, keys::POD_TEMPLATE_HASH};

/// The world around one Rollout.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The Deployment `spec.objectRef.workloadRef` names.
    pub workload: Option<Workload>,
    /// The canary Deployment (`<deployment>-canary`).
    pub canary: Option<CanaryWorkload>,
    /// The stable Service (`trafficRoutings[0].service`).
    pub service: Option<Service>,
    /// `<service>-canary`.
    pub canary_service: Option<Service>,
    /// The stable Ingress (`trafficRoutings[0].ingress.name`).
    pub ingress: Option<Ingress>,
    /// `<ingress>-canary`.
    pub canary_ingress: Option<Ingress>,
    /// The shared WasmPlugin's config as the gateway has it; `None` if the WasmPlugin does not
    /// exist yet.
    pub plugin: Option<PluginConfig>,
    /// Other Rollouts in the namespace that govern the same Deployment and came first
    /// (older creationTimestamp, then name): this one must stand back.
    pub conflicts: Vec<String>,
    /// Prometheus's answers to the analysis run that was due
    /// ([`crate::analysis::pending_queries`]); `None` when no run was due.
    pub measurement: Option<Measurement>,
}

/// The stable Deployment plus what its ReplicaSets say.
#[derive(Debug, Clone, Default)]
pub struct Workload {
    pub deployment: Deployment,
    /// [`crate::revision::template_hash`] of `spec.template`: the revision being asked for.
    pub revision: String,
    /// The oldest ReplicaSet that still has replicas (what the stable pods run), or the newest
    /// one when none has (a Deployment scaled to zero). `None` before the Deployment controller
    /// created any.
    pub stable: Option<StableReplicaSet>,
}

/// The stable ReplicaSet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StableReplicaSet {
    /// Its `pod-template-hash` label: what the stable Service is pinned to.
    pub pod_template_hash: String,
    /// [`crate::revision::template_hash`] of its template.
    pub revision: String,
}

/// The canary Deployment plus its newest ReplicaSet's hash.
#[derive(Debug, Clone, Default)]
pub struct CanaryWorkload {
    pub deployment: Deployment,
    /// `pod-template-hash` of its newest ReplicaSet, once the Deployment controller made one.
    pub pod_template_hash: Option<String>,
}

// === impl Observed ===

impl Observed {
    /// The rule the gateway currently has for a Rollout (`<namespace>/<name>`).
    pub fn rule(&self, rollout_key: &str) -> Option<&RuleConfig> {
        self.plugin
            .as_ref()
            .and_then(|p| p.rules.iter().find(|r| r.rollout == rollout_key))
    }
}

// === impl Workload ===

impl Workload {
    pub fn name(&self) -> String {
        self.deployment.name_any()
    }

    pub fn paused(&self) -> bool {
        deployment_paused(&self.deployment)
    }

    /// `spec.replicas`, 1 when unset as in Kubernetes.
    pub fn replicas(&self) -> i32 {
        spec_replicas(&self.deployment)
    }

    /// The template equals what the stable pods run: nothing to release.
    pub fn in_sync(&self) -> bool {
        self.stable
            .as_ref()
            .is_some_and(|s| s.revision == self.revision)
    }

    /// The Deployment controller has seen the latest spec.
    pub fn observed_latest(&self) -> bool {
        observed_latest(&self.deployment)
    }

    /// Every replica runs the current template and is available, and no old pod is left:
    /// the end of a native rolling update.
    pub fn rolled_out(&self) -> bool {
        let status = self.deployment.status.clone().unwrap_or_default();
        let want = self.replicas();
        self.observed_latest()
            && self.in_sync()
            && status.updated_replicas.unwrap_or(0) >= want
            && status.replicas.unwrap_or(0) == want
            && status.available_replicas.unwrap_or(0) >= want
    }

    /// Text like "3/5 updated, 4 available" for status messages.
    pub fn progress(&self) -> String {
        let status = self.deployment.status.clone().unwrap_or_default();
        format!(
            "{}/{} updated, {} available",
            status.updated_replicas.unwrap_or(0),
            self.replicas(),
            status.available_replicas.unwrap_or(0)
        )
    }
}

// === impl CanaryWorkload ===

impl CanaryWorkload {
    pub fn replicas(&self) -> i32 {
        spec_replicas(&self.deployment)
    }

    pub fn available(&self) -> i32 {
        self.status_field(|s| s.available_replicas)
    }

    pub fn updated(&self) -> i32 {
        self.status_field(|s| s.updated_replicas)
    }

    pub fn observed_latest(&self) -> bool {
        observed_latest(&self.deployment)
    }

    fn status_field(
        &self,
        f: impl Fn(&k8s_openapi::api::apps::v1::DeploymentStatus) -> Option<i32>,
    ) -> i32 {
        self.deployment.status.as_ref().and_then(f).unwrap_or(0)
    }
}

// === helpers ===

pub(crate) fn deployment_paused(d: &Deployment) -> bool {
    d.spec.paused.unwrap_or(false)
}

pub(crate) fn spec_replicas(d: &Deployment) -> i32 {
    d.spec.replicas.unwrap_or(1)
}

fn observed_latest(d: &Deployment) -> bool {
    let observed = d.status.as_ref().and_then(|s| s.observed_generation);
    match (d.metadata.generation, observed) {
        (Some(generation), Some(observed)) => observed >= generation,
        // Objects built without generations (tests, offline) count as observed.
        (None, _) => true,
        (Some(_), None) => false,
    }
}

/// The `pod-template-hash` a Service's selector is pinned to, if any.
pub fn service_pin(service: &Service) -> Option<&str> {
    service
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .and_then(|s| s.get(POD_TEMPLATE_HASH))
        .map(String::as_str)
}

/// Whether `obj` has an owner reference to this Rollout (by uid when the Rollout has one).
pub fn owned_by<K: ResourceExt>(obj: &K, rollout: &Rollout) -> bool {
    let uid = rollout.metadata.uid.as_deref();
    obj.owner_references().iter().any(|o| {
        o.kind == "Rollout" && o.name == rollout.name_any() && uid.is_none_or(|uid| o.uid == uid)
    })
}
