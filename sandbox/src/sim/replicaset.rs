//! The ReplicaSet controller of kube-controller-manager, as a pure function.
//!
//! [`sync`] is one `syncReplicaSet` pass (`pkg/controller/replicaset`): it creates pods from
//! the template up to `spec.replicas`, deletes the least valuable ones above it, and reports
//! `status` (replicas, fullyLabeled, ready, available after `minReadySeconds`, terminating,
//! observedGeneration) through `UpdateStatus`. Pods are matched by their controller
//! reference; orphan adoption is not modelled. Created pods carry `generateName:
//! <rs>-` and no name: the caller picks the 5-character suffix, as the API server would.
//!
//! One addition of the sandbox: the failure-knob annotations of the ReplicaSet (copied there
//! from the Deployment by the deployment controller) are copied onto the pods it creates, so a
//! knob applies to the pods created after it was set.

use std::{cmp::Ordering, collections::BTreeMap, time::Duration};

use jiff::Timestamp;
use k8s_openapi::{
    api::{
        apps::v1::{ReplicaSet, ReplicaSetStatus},
        core::v1::Pod,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use super::{
    util::{controller_ref, created, is_controlled_by, nz},
    ERROR_RATE_ANNOTATION, NEVER_READY_ANNOTATION,
};

/// `burstReplicas`: at most this many creations or deletions per pass.
const BURST_REPLICAS: usize = 500;

/// Lower cost pods are deleted first (`controller.kubernetes.io/pod-deletion-cost`).
pub const POD_DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// One write to the API.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// `POST` a pod built from the template (`generateName` set, `name` left to the caller).
    CreatePod(Box<Pod>),
    /// `DELETE` a pod, scaling down.
    DeletePod { name: String, uid: Option<String> },
    /// `PUT …/status` with the whole ReplicaSet.
    UpdateStatus(Box<ReplicaSet>),
}

/// What one pass decided.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub writes: Vec<Write>,
    /// When a ready pod becomes available (`minReadySeconds`).
    pub requeue_at: Option<Timestamp>,
}

/// `podutil.IsPodReady`.
pub fn is_pod_ready(pod: &Pod) -> bool {
    ready_condition(pod).is_some_and(|c| c.status == "True")
}

fn ready_condition(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

/// `IsPodTerminal`.
pub fn is_pod_terminal(pod: &Pod) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

/// `controller.IsPodActive`: not terminal and not being deleted.
pub fn is_pod_active(pod: &Pod) -> bool {
    !is_pod_terminal(pod) && pod.metadata.deletion_timestamp.is_none()
}

/// When a ready pod counts as available (`podutil.IsPodAvailable`): ready for longer than
/// `min_ready_seconds`. `None` for pods that are not ready.
fn available_at(pod: &Pod, min_ready_seconds: i32) -> Option<Timestamp> {
    let c = ready_condition(pod).filter(|c| c.status == "True")?;
    if min_ready_seconds <= 0 {
        return Some(Timestamp::MIN);
    }
    let since = c.last_transition_time.as_ref()?.0;
    Some(since + Duration::from_secs(u64::try_from(min_ready_seconds).unwrap_or(0)))
}

/// One `syncReplicaSet` pass over the pods in the ReplicaSet's namespace.
pub fn sync(rs: &ReplicaSet, pods: &[Pod], now: Timestamp) -> Plan {
    let Some(uid) = rs.metadata.uid.as_deref() else {
        return Plan::default();
    };
    let owned: Vec<&Pod> = pods
        .iter()
        .filter(|p| is_controlled_by(&p.metadata, "ReplicaSet", uid))
        .collect();
    let active: Vec<&Pod> = owned.iter().copied().filter(|p| is_pod_active(p)).collect();
    let terminating = owned
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_some() && !is_pod_terminal(p))
        .count();

    let mut plan = Plan::default();
    if rs.metadata.deletion_timestamp.is_none() {
        manage_replicas(rs, &active, now, &mut plan);
    }

    let min_ready = rs.spec.min_ready_seconds.unwrap_or(0);
    let template_labels = rs
        .spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let empty = BTreeMap::new();
    let mut fully_labeled = 0;
    let mut ready = 0;
    let mut available = 0;
    for pod in &active {
        let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
        if template_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
        {
            fully_labeled += 1;
        }
        if is_pod_ready(pod) {
            ready += 1;
            match available_at(pod, min_ready) {
                Some(t) if t < now || min_ready <= 0 => available += 1,
                Some(t) => {
                    let wake = t + Duration::from_millis(10);
                    plan.requeue_at = Some(plan.requeue_at.map_or(wake, |w| w.min(wake)));
                }
                None => {}
            }
        }
    }
    let old = rs.status.clone().unwrap_or_default();
    let status = ReplicaSetStatus {
        replicas: active.len() as i32,
        fully_labeled_replicas: nz(fully_labeled),
        ready_replicas: nz(ready),
        available_replicas: nz(available),
        observed_generation: rs.metadata.generation,
        terminating_replicas: Some(terminating as i32),
        conditions: old.conditions.clone().filter(|c| !c.is_empty()),
    };
    if comparable(&old) != comparable(&status) {
        let mut updated = rs.clone();
        updated.status = Some(status);
        plan.writes.push(Write::UpdateStatus(Box::new(updated)));
    }
    plan
}

fn comparable(s: &ReplicaSetStatus) -> ReplicaSetStatus {
    let mut s = s.clone();
    for field in [
        &mut s.fully_labeled_replicas,
        &mut s.ready_replicas,
        &mut s.available_replicas,
    ] {
        *field = field.filter(|v| *v != 0);
    }
    s.observed_generation = s.observed_generation.filter(|v| *v != 0);
    if s.conditions.as_ref().is_some_and(Vec::is_empty) {
        s.conditions = None;
    }
    s
}

/// `manageReplicas`.
fn manage_replicas(rs: &ReplicaSet, active: &[&Pod], now: Timestamp, plan: &mut Plan) {
    let want = usize::try_from(rs.spec.replicas.unwrap_or(1)).unwrap_or(0);
    match active.len().cmp(&want) {
        Ordering::Less => {
            let n = (want - active.len()).min(BURST_REPLICAS);
            for _ in 0..n {
                plan.writes
                    .push(Write::CreatePod(Box::new(pod_from_template(rs))));
            }
        }
        Ordering::Greater => {
            let n = (active.len() - want).min(BURST_REPLICAS);
            let mut ranked = active.to_vec();
            ranked.sort_by(|a, b| deletion_order(a, b, now));
            for pod in ranked.into_iter().take(n) {
                plan.writes.push(Write::DeletePod {
                    name: pod.metadata.name.clone().unwrap_or_default(),
                    uid: pod.metadata.uid.clone(),
                });
            }
        }
        Ordering::Equal => {}
    }
}

/// `controller.GetPodFromTemplate` with the ReplicaSet as controller, plus the ReplicaSet's
/// failure knobs.
pub fn pod_from_template(rs: &ReplicaSet) -> Pod {
    let template = rs.spec.template.clone().unwrap_or_default();
    let tmeta = template.metadata.unwrap_or_default();
    let mut annotations = tmeta.annotations.unwrap_or_default();
    for knob in [NEVER_READY_ANNOTATION, ERROR_RATE_ANNOTATION] {
        if let Some(v) = rs.metadata.annotations.as_ref().and_then(|a| a.get(knob)) {
            annotations.insert(knob.to_owned(), v.clone());
        }
    }
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!(
                "{}-",
                rs.metadata.name.as_deref().unwrap_or_default()
            )),
            namespace: rs.metadata.namespace.clone(),
            labels: tmeta.labels,
            annotations: (!annotations.is_empty()).then_some(annotations),
            finalizers: tmeta.finalizers,
            owner_references: Some(vec![controller_ref("apps/v1", "ReplicaSet", &rs.metadata)]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// Which pod goes first when scaling down (`ActivePodsWithRanks.Less`, without node
/// co-location and logarithmic age buckets): unscheduled, then pending before running, not
/// ready before ready, lower deletion cost, more recently ready, newer.
fn deletion_order(a: &Pod, b: &Pod, now: Timestamp) -> Ordering {
    fn node(p: &Pod) -> &str {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .unwrap_or_default()
    }
    let phase_rank = |p: &Pod| match phase(p) {
        "Running" => 2,
        "Unknown" => 1,
        _ => 0,
    };
    let cost = |p: &Pod| {
        p.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(POD_DELETION_COST))
            .and_then(|v| v.parse::<i32>().ok())
            .unwrap_or(0)
    };
    let ready_since = |p: &Pod| {
        ready_condition(p)
            .filter(|c| c.status == "True")
            .and_then(|c| c.last_transition_time.as_ref())
            .map(|t| t.0)
    };
    (!node(a).is_empty())
        .cmp(&!node(b).is_empty())
        .then_with(|| phase_rank(a).cmp(&phase_rank(b)))
        .then_with(|| is_pod_ready(a).cmp(&is_pod_ready(b)))
        .then_with(|| cost(a).cmp(&cost(b)))
        .then_with(|| match (ready_since(a), ready_since(b)) {
            (Some(x), Some(y)) => y.cmp(&x),
            _ => Ordering::Equal,
        })
        .then_with(|| created(&b.metadata, now).cmp(&created(&a.metadata, now)))
        .then_with(|| a.metadata.name.cmp(&b.metadata.name))
}

#[cfg(test)]
mod tests;
