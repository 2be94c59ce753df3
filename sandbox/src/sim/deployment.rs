//! The deployment controller of kube-controller-manager, as a pure function.
//!
//! [`sync`] is one `syncDeployment` pass (`pkg/controller/deployment`): given a Deployment,
//! the ReplicaSets and Pods observed in its namespace and the time, it returns the writes the
//! real controller would issue, in order. Function names follow the Go code so the two can
//! be read side by side. Within a pass, planned writes are applied to local copies, exactly
//! as the Go code keeps working on the objects the API returned; the Deployment status
//! updates one pass would make are folded into one final `UpdateStatus`.
//!
//! Not modelled: adoption and release of ReplicaSets by selector (only ReplicaSets whose
//! controller reference names the Deployment are considered), the deprecated rollback
//! annotation, and `ReplicaFailure` conditions (the simulated ReplicaSet controller never
//! fails to create pods).

use std::{cmp::Ordering, collections::BTreeMap, time::Duration};

use jiff::Timestamp;
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec},
        core::v1::Pod,
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};

use super::{
    hash::{equal_ignore_hash, pod_template_hash, POD_TEMPLATE_HASH},
    util::{
        annotation, api_time, controller_of, controller_ref, created, is_controlled_by, nz,
        scaled_value, selector_is_empty,
    },
};

/// Revision of a Deployment's ReplicaSet (and of the Deployment, copied from its newest RS).
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// Earlier revisions a ReplicaSet had, when an old template came back.
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
/// The Deployment's `spec.replicas` when the controller last sized this ReplicaSet.
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
/// `spec.replicas + maxSurge` when the controller last sized this ReplicaSet.
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";

/// Annotations never copied from a Deployment to its ReplicaSets (`annotationsToSkip`).
const ANNOTATIONS_TO_SKIP: [&str; 6] = [
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];

/// `maxRevHistoryLengthInChars`.
const MAX_REV_HISTORY_CHARS: usize = 2000;

/// Condition types and reasons, with the real controller's strings.
pub mod reason {
    pub const AVAILABLE: &str = "Available";
    pub const PROGRESSING: &str = "Progressing";
    pub const REPLICA_FAILURE: &str = "ReplicaFailure";
    pub const MIN_AVAILABLE: &str = "MinimumReplicasAvailable";
    pub const MIN_UNAVAILABLE: &str = "MinimumReplicasUnavailable";
    pub const NEW_RS_CREATED: &str = "NewReplicaSetCreated";
    pub const FOUND_NEW_RS: &str = "FoundNewReplicaSet";
    pub const RS_UPDATED: &str = "ReplicaSetUpdated";
    pub const NEW_RS_AVAILABLE: &str = "NewReplicaSetAvailable";
    pub const TIMED_OUT: &str = "ProgressDeadlineExceeded";
    pub const PAUSED: &str = "DeploymentPaused";
    pub const RESUMED: &str = "DeploymentResumed";
}

/// One write to the API, in the order the controller issues them.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// `POST` a new ReplicaSet.
    CreateReplicaSet(ReplicaSet),
    /// `PUT` a ReplicaSet (carries the observed `resourceVersion`).
    UpdateReplicaSet(ReplicaSet),
    /// `DELETE` an old ReplicaSet beyond `revisionHistoryLimit`.
    DeleteReplicaSet { name: String, uid: Option<String> },
    /// `PUT …/status` with the whole Deployment, as `UpdateStatus` does. Its
    /// `deployment.kubernetes.io/revision` annotation rides along, as with the real
    /// controller (the status strategy resets only spec and labels).
    UpdateStatus(Box<Deployment>),
}

/// A Kubernetes event the controller records on the Deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub type_: &'static str,
    pub reason: &'static str,
    pub message: String,
}

/// What one pass decided.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub writes: Vec<Write>,
    pub events: Vec<Note>,
    /// When to look again even if nothing changes (progress-deadline checks).
    pub requeue_at: Option<Timestamp>,
}

// === Defaulted spec ===

/// Deployment update strategy, with API defaults applied.
#[derive(Clone, Debug, PartialEq)]
pub enum Strategy {
    Recreate,
    RollingUpdate {
        max_surge: IntOrString,
        max_unavailable: IntOrString,
    },
}

/// The fields of `DeploymentSpec` the controller reads, with the API server's defaults
/// applied where absent (a real cluster never shows the controller an undefaulted object).
#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    pub replicas: i32,
    pub strategy: Strategy,
    pub min_ready_seconds: i32,
    /// `None`: no deadline (`progressDeadlineSeconds: 2147483647`).
    pub progress_deadline_seconds: Option<i32>,
    /// `None`: keep every old ReplicaSet (`revisionHistoryLimit: 2147483647`).
    pub revision_history_limit: Option<i32>,
    pub paused: bool,
}

impl Spec {
    pub fn of(d: &Deployment) -> Self {
        let s = &d.spec;
        let pct25 = || IntOrString::String("25%".into());
        let strategy = match s.strategy.as_ref().and_then(|st| st.type_.as_deref()) {
            Some("Recreate") => Strategy::Recreate,
            _ => {
                let ru = s
                    .strategy
                    .as_ref()
                    .and_then(|st| st.rolling_update.as_ref());
                Strategy::RollingUpdate {
                    max_surge: ru.and_then(|r| r.max_surge.clone()).unwrap_or_else(pct25),
                    max_unavailable: ru
                        .and_then(|r| r.max_unavailable.clone())
                        .unwrap_or_else(pct25),
                }
            }
        };
        let unlimited = |v: i32| (v != i32::MAX).then_some(v);
        Self {
            replicas: s.replicas.unwrap_or(1),
            strategy,
            min_ready_seconds: s.min_ready_seconds.unwrap_or(0),
            progress_deadline_seconds: unlimited(s.progress_deadline_seconds.unwrap_or(600)),
            revision_history_limit: unlimited(s.revision_history_limit.unwrap_or(10)),
            paused: s.paused.unwrap_or(false),
        }
    }

    /// `ResolveFenceposts`: surge rounds up, unavailable rounds down, and both resolving to
    /// zero means one unavailable pod is allowed.
    pub fn fenceposts(&self) -> (i32, i32) {
        let Strategy::RollingUpdate {
            max_surge,
            max_unavailable,
        } = &self.strategy
        else {
            return (0, 0);
        };
        // Validation rejects malformed values; the real controller would error out.
        let surge = scaled_value(max_surge, self.replicas, true).unwrap_or(0);
        let mut unavailable = scaled_value(max_unavailable, self.replicas, false).unwrap_or(0);
        if surge == 0 && unavailable == 0 {
            unavailable = 1;
        }
        (surge, unavailable)
    }

    /// `deploymentutil.MaxSurge`.
    pub fn max_surge(&self) -> i32 {
        self.fenceposts().0
    }

    /// `deploymentutil.MaxUnavailable`.
    pub fn max_unavailable(&self) -> i32 {
        if !self.is_rolling_update() || self.replicas == 0 {
            return 0;
        }
        self.fenceposts().1.min(self.replicas)
    }

    pub fn is_rolling_update(&self) -> bool {
        matches!(self.strategy, Strategy::RollingUpdate { .. })
    }
}

// === ReplicaSet accessors (nil-safe, as the Go helpers) ===

fn name(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or_default()
}

/// `*rs.Spec.Replicas` (the API defaults it to 1).
pub fn rs_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.replicas.unwrap_or(1)
}

fn rs_status_replicas(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().map_or(0, |s| s.replicas)
}

fn rs_available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

fn rs_ready(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
}

fn revision_of(rs: &ReplicaSet) -> Result<i64, ()> {
    match annotation(&rs.metadata, REVISION) {
        None => Ok(0),
        Some(v) => v.parse().map_err(|_| ()),
    }
}

/// `ReplicaSetsByCreationTimestamp`: older first, then by name.
fn by_creation(a: &ReplicaSet, b: &ReplicaSet, now: Timestamp) -> Ordering {
    created(&a.metadata, now)
        .cmp(&created(&b.metadata, now))
        .then_with(|| name(&a.metadata).cmp(name(&b.metadata)))
}

fn by_revision(a: &ReplicaSet, b: &ReplicaSet, now: Timestamp) -> Ordering {
    match (revision_of(a), revision_of(b)) {
        (Ok(x), Ok(y)) if x != y => x.cmp(&y),
        _ => by_creation(a, b, now),
    }
}

// === Conditions ===

pub fn condition<'a>(status: &'a DeploymentStatus, type_: &str) -> Option<&'a DeploymentCondition> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_.as_deref() == Some(type_))
}

fn new_condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    now: Timestamp,
) -> DeploymentCondition {
    DeploymentCondition {
        type_: Some(type_.to_owned()),
        status: Some(status.to_owned()),
        reason: Some(reason.to_owned()),
        message: Some(message),
        last_update_time: Some(api_time(now)),
        last_transition_time: Some(api_time(now)),
    }
}

/// `SetDeploymentCondition`: same status and reason → unchanged; same status → keep the
/// transition time; the condition moves to the end of the list.
fn set_condition(status: &mut DeploymentStatus, mut c: DeploymentCondition) {
    let type_ = c.type_.clone().unwrap_or_default();
    if let Some(cur) = condition(status, &type_) {
        if cur.status == c.status && cur.reason == c.reason {
            return;
        }
        if cur.status == c.status {
            c.last_transition_time = cur.last_transition_time.clone();
        }
    }
    remove_condition(status, &type_);
    status.conditions.get_or_insert_with(Vec::new).push(c);
}

fn remove_condition(status: &mut DeploymentStatus, type_: &str) {
    if let Some(conds) = status.conditions.as_mut() {
        conds.retain(|c| c.type_.as_deref() != Some(type_));
    }
}

/// A status with Go's zero values made explicit, for `reflect.DeepEqual`-like comparison of
/// a computed status with one read back from the API.
fn comparable(status: Option<&DeploymentStatus>) -> DeploymentStatus {
    let mut s = status.cloned().unwrap_or_default();
    for field in [
        &mut s.replicas,
        &mut s.updated_replicas,
        &mut s.ready_replicas,
        &mut s.available_replicas,
        &mut s.unavailable_replicas,
    ] {
        *field = field.filter(|v| *v != 0);
    }
    s.observed_generation = s.observed_generation.filter(|v| *v != 0);
    if s.conditions.as_ref().is_some_and(Vec::is_empty) {
        s.conditions = None;
    }
    s
}

/// `DeploymentComplete`.
pub fn deployment_complete(d: &Deployment, replicas: i32, status: &DeploymentStatus) -> bool {
    status.updated_replicas.unwrap_or(0) == replicas
        && status.replicas.unwrap_or(0) == replicas
        && status.available_replicas.unwrap_or(0) == replicas
        && status.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
}

/// `DeploymentProgressing`: anything moved forward since the last status.
fn deployment_progressing(old: &DeploymentStatus, new: &DeploymentStatus) -> bool {
    let get = |v: Option<i32>| v.unwrap_or(0);
    let old_old = get(old.replicas) - get(old.updated_replicas);
    let new_old = get(new.replicas) - get(new.updated_replicas);
    get(new.updated_replicas) > get(old.updated_replicas)
        || new_old < old_old
        || get(new.ready_replicas) > get(old.ready_replicas)
        || get(new.available_replicas) > get(old.available_replicas)
}

// === The pass ===

/// One `syncDeployment` pass. `replica_sets` and `pods` may hold anything in the namespace;
/// only those the Deployment controls (directly or through its ReplicaSets) are used.
pub fn sync(d: &Deployment, replica_sets: &[ReplicaSet], pods: &[Pod], now: Timestamp) -> Plan {
    let Some(uid) = d.metadata.uid.as_deref() else {
        return Plan::default();
    };
    let rss: Vec<ReplicaSet> = replica_sets
        .iter()
        .filter(|rs| is_controlled_by(&rs.metadata, "Deployment", uid))
        .cloned()
        .collect();
    let mut pass = Pass {
        orig: d,
        d: d.clone(),
        spec: Spec::of(d),
        rss,
        pods,
        now,
        created: None,
        updated: Vec::new(),
        deleted: Vec::new(),
        plan: Plan::default(),
    };
    // An `Err` is the Go code's early `return err`: whatever was planned so far still goes
    // out, and the next pass retries.
    let _ = pass.sync_deployment();
    pass.finish()
}

/// The Go code's `return err`.
struct Abort;

struct Pass<'a> {
    orig: &'a Deployment,
    /// The Deployment as this pass has modified it (status, revision annotation).
    d: Deployment,
    spec: Spec,
    /// The Deployment's ReplicaSets as this pass has modified them.
    rss: Vec<ReplicaSet>,
    pods: &'a [Pod],
    now: Timestamp,
    /// Index in `rss` of a ReplicaSet to create.
    created: Option<usize>,
    /// Indexes in `rss` of ReplicaSets to update, in first-write order.
    updated: Vec<usize>,
    deleted: Vec<usize>,
    plan: Plan,
}

impl Pass<'_> {
    fn status(&self) -> &DeploymentStatus {
        static EMPTY: DeploymentStatus = DeploymentStatus {
            available_replicas: None,
            collision_count: None,
            conditions: None,
            observed_generation: None,
            ready_replicas: None,
            replicas: None,
            terminating_replicas: None,
            unavailable_replicas: None,
            updated_replicas: None,
        };
        self.d.status.as_ref().unwrap_or(&EMPTY)
    }

    fn status_mut(&mut self) -> &mut DeploymentStatus {
        self.d.status.get_or_insert_with(Default::default)
    }

    fn has_progress_deadline(&self) -> bool {
        self.spec.progress_deadline_seconds.is_some()
    }

    fn event(&mut self, reason: &'static str, message: String) {
        self.plan.events.push(Note {
            type_: "Normal",
            reason,
            message,
        });
    }

    /// Record that `rss[i]` was written (create or update).
    fn mark_written(&mut self, i: usize) {
        if self.created != Some(i) && !self.updated.contains(&i) {
            self.updated.push(i);
        }
    }

    fn finish(mut self) -> Plan {
        let mut writes = Vec::new();
        if let Some(i) = self.created {
            writes.push(Write::CreateReplicaSet(self.rss[i].clone()));
        }
        for &i in &self.updated {
            writes.push(Write::UpdateReplicaSet(self.rss[i].clone()));
        }
        for &i in &self.deleted {
            let meta = &self.rss[i].metadata;
            writes.push(Write::DeleteReplicaSet {
                name: name(meta).to_owned(),
                uid: meta.uid.clone(),
            });
        }
        let status_changed =
            comparable(self.d.status.as_ref()) != comparable(self.orig.status.as_ref());
        let revision_changed =
            annotation(&self.d.metadata, REVISION) != annotation(&self.orig.metadata, REVISION);
        if status_changed || revision_changed {
            writes.push(Write::UpdateStatus(Box::new(self.d.clone())));
        }
        self.plan.writes = writes;
        self.plan
    }

    /// `syncDeployment`, after the listers.
    fn sync_deployment(&mut self) -> Result<(), Abort> {
        if selector_is_empty(&self.d.spec.selector) {
            // "This deployment will select all pods": the controller only records that it
            // saw this generation.
            let generation = self.d.metadata.generation;
            if self.status().observed_generation < generation {
                self.status_mut().observed_generation = generation;
            }
            return Ok(());
        }
        if self.d.metadata.deletion_timestamp.is_some() {
            return self.sync_status_only();
        }
        self.check_paused_conditions();
        if self.spec.paused {
            return self.sync();
        }
        if self.is_scaling_event()? {
            return self.sync();
        }
        match self.spec.strategy {
            Strategy::Recreate => self.rollout_recreate(),
            Strategy::RollingUpdate { .. } => self.rollout_rolling(),
        }
    }

    fn sync_status_only(&mut self) -> Result<(), Abort> {
        let (new, old) = self.get_all_replica_sets_and_sync_revision(false)?;
        let all = with_new(&old, new);
        self.sync_deployment_status(&all, new);
        Ok(())
    }

    /// `sync`: scaling events and paused Deployments.
    fn sync(&mut self) -> Result<(), Abort> {
        let (new, old) = self.get_all_replica_sets_and_sync_revision(false)?;
        self.scale(new, &old);
        if self.spec.paused {
            self.cleanup_deployment(&old);
        }
        let all = with_new(&old, new);
        self.sync_deployment_status(&all, new);
        Ok(())
    }

    /// `checkPausedConditions`.
    fn check_paused_conditions(&mut self) {
        if !self.has_progress_deadline() {
            return;
        }
        let cond = condition(self.status(), reason::PROGRESSING);
        let cond_reason = cond.and_then(|c| c.reason.as_deref());
        if cond_reason == Some(reason::TIMED_OUT) {
            return;
        }
        let paused_cond_exists = cond_reason == Some(reason::PAUSED);
        let now = self.now;
        if self.spec.paused && !paused_cond_exists {
            let c = new_condition(
                reason::PROGRESSING,
                "Unknown",
                reason::PAUSED,
                "Deployment is paused".into(),
                now,
            );
            set_condition(self.status_mut(), c);
        } else if !self.spec.paused && paused_cond_exists {
            let c = new_condition(
                reason::PROGRESSING,
                "Unknown",
                reason::RESUMED,
                "Deployment is resumed".into(),
                now,
            );
            set_condition(self.status_mut(), c);
        }
    }

    /// `isScalingEvent`: an active ReplicaSet was sized for another `spec.replicas`.
    fn is_scaling_event(&mut self) -> Result<bool, Abort> {
        let (new, old) = self.get_all_replica_sets_and_sync_revision(false)?;
        let replicas = self.spec.replicas;
        Ok(with_new(&old, new)
            .into_iter()
            .filter(|&i| rs_replicas(&self.rss[i]) > 0)
            .filter_map(|i| annotation(&self.rss[i].metadata, DESIRED_REPLICAS))
            .filter_map(|v| v.parse::<i32>().ok())
            .any(|desired| desired != replicas))
    }

    // --- finding ReplicaSets ---

    /// `FindNewReplicaSet`: the oldest ReplicaSet whose template equals the Deployment's.
    fn find_new_replica_set(&self) -> Option<usize> {
        let mut idx: Vec<usize> = (0..self.rss.len()).collect();
        idx.sort_by(|&a, &b| by_creation(&self.rss[a], &self.rss[b], self.now));
        idx.into_iter().find(|&i| {
            self.rss[i]
                .spec
                .template
                .as_ref()
                .is_some_and(|t| equal_ignore_hash(t, &self.d.spec.template))
        })
    }

    /// `getAllReplicaSetsAndSyncRevision`: (new, all old).
    fn get_all_replica_sets_and_sync_revision(
        &mut self,
        create: bool,
    ) -> Result<(Option<usize>, Vec<usize>), Abort> {
        let existing = self.find_new_replica_set();
        let old: Vec<usize> = (0..self.rss.len())
            .filter(|i| Some(*i) != existing && !self.deleted.contains(i))
            .collect();
        let new = self.get_new_replica_set(existing, &old, create)?;
        Ok((new, old))
    }

    /// `getNewReplicaSet`.
    fn get_new_replica_set(
        &mut self,
        existing: Option<usize>,
        old: &[usize],
        create: bool,
    ) -> Result<Option<usize>, Abort> {
        let max_old_revision = old
            .iter()
            .filter_map(|&i| revision_of(&self.rss[i]).ok())
            .max()
            .unwrap_or(0);
        let new_revision = max_old_revision + 1;

        if let Some(i) = existing {
            let mut rs = self.rss[i].clone();
            let annotations_updated =
                self.set_new_replica_set_annotations(&mut rs, new_revision, true);
            let min_ready_needs_update =
                rs.spec.min_ready_seconds.unwrap_or(0) != self.spec.min_ready_seconds;
            if annotations_updated || min_ready_needs_update {
                rs.spec.min_ready_seconds = nz(self.spec.min_ready_seconds);
                self.rss[i] = rs;
                self.mark_written(i);
                return Ok(Some(i));
            }
            let rs_revision = annotation(&rs.metadata, REVISION)
                .unwrap_or_default()
                .to_owned();
            self.set_deployment_revision(&rs_revision);
            if self.has_progress_deadline()
                && condition(self.status(), reason::PROGRESSING).is_none()
            {
                let c = new_condition(
                    reason::PROGRESSING,
                    "True",
                    reason::FOUND_NEW_RS,
                    format!("Found new replica set {:?}", name(&rs.metadata)),
                    self.now,
                );
                set_condition(self.status_mut(), c);
            }
            return Ok(Some(i));
        }
        if !create {
            return Ok(None);
        }

        let collision_count = self.status().collision_count;
        let hash = pod_template_hash(&self.d.spec.template, collision_count);
        let rs_name = format!("{}-{hash}", name(&self.d.metadata));
        if self.rss.iter().any(|rs| name(&rs.metadata) == rs_name) {
            // A ReplicaSet of ours has this name but not this template: a hash collision.
            // Bump the count so the next pass computes another name.
            let status = self.status_mut();
            status.collision_count = Some(status.collision_count.unwrap_or(0) + 1);
            return Err(Abort);
        }
        let mut template = self.d.spec.template.clone();
        let meta = template.metadata.get_or_insert_with(Default::default);
        meta.labels
            .get_or_insert_with(BTreeMap::new)
            .insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let labels = meta.labels.clone();
        let mut selector = self.d.spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_with(BTreeMap::new)
            .insert(POD_TEMPLATE_HASH.into(), hash);
        let mut rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(rs_name.clone()),
                namespace: self.d.metadata.namespace.clone(),
                owner_references: Some(vec![controller_ref(
                    "apps/v1",
                    "Deployment",
                    &self.d.metadata,
                )]),
                labels,
                ..Default::default()
            },
            spec: ReplicaSetSpec {
                replicas: Some(0),
                min_ready_seconds: nz(self.spec.min_ready_seconds),
                selector,
                template: Some(template),
            },
            status: None,
        };
        self.rss.push(rs.clone());
        let i = self.rss.len() - 1;
        let all = with_new(old, Some(i));
        let new_replicas = self.new_rs_new_replicas(&all, i);
        rs.spec.replicas = Some(new_replicas);
        self.set_new_replica_set_annotations(&mut rs, new_revision, false);
        self.rss[i] = rs;
        self.created = Some(i);
        if new_replicas > 0 {
            self.event(
                "ScalingReplicaSet",
                format!("Scaled up replica set {rs_name} from 0 to {new_replicas}"),
            );
        }
        self.set_deployment_revision(&new_revision.to_string());
        if self.has_progress_deadline() {
            let c = new_condition(
                reason::PROGRESSING,
                "True",
                reason::NEW_RS_CREATED,
                format!("Created new replica set {rs_name:?}"),
                self.now,
            );
            set_condition(self.status_mut(), c);
        }
        Ok(Some(i))
    }

    /// `SetNewReplicaSetAnnotations`: copy the Deployment's annotations, raise the revision
    /// (keeping the history when an old template came back), and size annotations on
    /// create. Returns whether anything changed.
    fn set_new_replica_set_annotations(
        &self,
        rs: &mut ReplicaSet,
        new_revision: i64,
        exists: bool,
    ) -> bool {
        let annotations = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
        let mut changed = false;
        for (k, v) in self.d.metadata.annotations.iter().flatten() {
            if ANNOTATIONS_TO_SKIP.contains(&k.as_str()) || annotations.get(k) == Some(v) {
                continue;
            }
            annotations.insert(k.clone(), v.clone());
            changed = true;
        }
        let old_revision = annotations.get(REVISION).cloned();
        let old_revision_int = match old_revision.as_deref() {
            None | Some("") => 0,
            Some(v) => match v.parse::<i64>() {
                Ok(n) => n,
                Err(_) => return false,
            },
        };
        if old_revision_int < new_revision {
            annotations.insert(REVISION.into(), new_revision.to_string());
            changed = true;
            if let Some(old) = old_revision.filter(|o| !o.is_empty()) {
                let history = annotations
                    .get(REVISION_HISTORY)
                    .cloned()
                    .unwrap_or_default();
                if history.is_empty() {
                    annotations.insert(REVISION_HISTORY.into(), old);
                } else {
                    let mut revisions: Vec<&str> = history.split(',').collect();
                    let mut total = history.len() + old.len() + 1;
                    let mut start = 0;
                    while total > MAX_REV_HISTORY_CHARS && start < revisions.len() {
                        total -= revisions[start].len() + 1;
                        start += 1;
                    }
                    if total <= MAX_REV_HISTORY_CHARS {
                        revisions = revisions.split_off(start);
                        revisions.push(&old);
                        annotations.insert(REVISION_HISTORY.into(), revisions.join(","));
                    }
                }
            }
        }
        if !exists {
            let (desired, max) = self.replicas_annotation_values();
            changed |= set_replicas_annotations(rs, desired, max);
        }
        changed
    }

    fn replicas_annotation_values(&self) -> (i32, i32) {
        (
            self.spec.replicas,
            self.spec.replicas + self.spec.max_surge(),
        )
    }

    /// `SetDeploymentRevision`.
    fn set_deployment_revision(&mut self, revision: &str) {
        let annotations = self
            .d
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new);
        if annotations.get(REVISION).map(String::as_str) != Some(revision) {
            annotations.insert(REVISION.into(), revision.to_owned());
        }
    }

    /// `NewRSNewReplicas`.
    fn new_rs_new_replicas(&self, all: &[usize], new: usize) -> i32 {
        let new_replicas = rs_replicas(&self.rss[new]);
        match &self.spec.strategy {
            Strategy::Recreate => self.spec.replicas,
            Strategy::RollingUpdate { max_surge, .. } => {
                let surge = scaled_value(max_surge, self.spec.replicas, true).unwrap_or(0);
                let current: i32 = all.iter().map(|&i| rs_replicas(&self.rss[i])).sum();
                let max_total = self.spec.replicas + surge;
                if current >= max_total {
                    return new_replicas;
                }
                let scale_up = (max_total - current).min(self.spec.replicas - new_replicas);
                new_replicas + scale_up
            }
        }
    }

    // --- scaling ---

    /// `scaleReplicaSetAndRecordEvent`.
    fn scale_replica_set_and_record_event(&mut self, i: usize, new_scale: i32) -> bool {
        if rs_replicas(&self.rss[i]) == new_scale {
            return false;
        }
        self.scale_replica_set(i, new_scale)
    }

    /// `scaleReplicaSet`: size and the desired/max annotations in one update.
    fn scale_replica_set(&mut self, i: usize, new_scale: i32) -> bool {
        let (desired, max) = self.replicas_annotation_values();
        let old_scale = rs_replicas(&self.rss[i]);
        let size_needs_update = old_scale != new_scale;
        let annotations_need_update = replicas_annotations_need_update(&self.rss[i], desired, max);
        if !(size_needs_update || annotations_need_update) {
            return false;
        }
        let rs = &mut self.rss[i];
        rs.spec.replicas = Some(new_scale);
        set_replicas_annotations(rs, desired, max);
        let rs_name = name(&rs.metadata).to_owned();
        self.mark_written(i);
        if size_needs_update {
            let op = if old_scale < new_scale { "up" } else { "down" };
            self.event(
                "ScalingReplicaSet",
                format!("Scaled {op} replica set {rs_name} from {old_scale} to {new_scale}"),
            );
        }
        size_needs_update
    }

    /// `scale`: a scaling event (or a paused Deployment) resizes ReplicaSets, proportionally
    /// when a rolling update is in flight.
    fn scale(&mut self, new: Option<usize>, old: &[usize]) {
        let replicas = self.spec.replicas;
        if let Some(i) = self.find_active_or_latest(new, old) {
            if rs_replicas(&self.rss[i]) != replicas {
                self.scale_replica_set_and_record_event(i, replicas);
            }
            return;
        }
        if self.is_saturated(new) {
            for &i in old {
                if rs_replicas(&self.rss[i]) > 0 {
                    self.scale_replica_set_and_record_event(i, 0);
                }
            }
            return;
        }
        if !self.spec.is_rolling_update() {
            return;
        }
        let mut all: Vec<usize> = with_new(old, new)
            .into_iter()
            .filter(|&i| rs_replicas(&self.rss[i]) > 0)
            .collect();
        let all_replicas: i32 = all.iter().map(|&i| rs_replicas(&self.rss[i])).sum();
        let allowed_size = if replicas > 0 {
            replicas + self.spec.max_surge()
        } else {
            0
        };
        let to_add = allowed_size - all_replicas;
        let now = self.now;
        match to_add.cmp(&0) {
            // ReplicaSetsBySizeNewer: bigger first, then newer first.
            Ordering::Greater => all.sort_by(|&a, &b| {
                let (a, b) = (&self.rss[a], &self.rss[b]);
                rs_replicas(b)
                    .cmp(&rs_replicas(a))
                    .then_with(|| by_creation(b, a, now))
            }),
            // ReplicaSetsBySizeOlder: bigger first, then older first.
            Ordering::Less => all.sort_by(|&a, &b| {
                let (a, b) = (&self.rss[a], &self.rss[b]);
                rs_replicas(b)
                    .cmp(&rs_replicas(a))
                    .then_with(|| by_creation(a, b, now))
            }),
            Ordering::Equal => {}
        }
        let mut added = 0;
        let mut sizes: Vec<i32> = Vec::with_capacity(all.len());
        for &i in &all {
            let current = rs_replicas(&self.rss[i]);
            if to_add != 0 {
                let proportion = self.get_proportion(i, to_add, added);
                sizes.push(current + proportion);
                added += proportion;
            } else {
                sizes.push(current);
            }
        }
        for (n, &i) in all.iter().enumerate() {
            if n == 0 && to_add != 0 {
                sizes[0] = (sizes[0] + to_add - added).max(0);
            }
            self.scale_replica_set(i, sizes[n]);
        }
    }

    /// `FindActiveOrLatest`: the only active ReplicaSet, or the newest when none is active.
    fn find_active_or_latest(&self, new: Option<usize>, old: &[usize]) -> Option<usize> {
        if new.is_none() && old.is_empty() {
            return None;
        }
        let mut old_sorted = old.to_vec();
        old_sorted.sort_by(|&a, &b| by_creation(&self.rss[b], &self.rss[a], self.now));
        let active: Vec<usize> = with_new(&old_sorted, new)
            .into_iter()
            .filter(|&i| rs_replicas(&self.rss[i]) > 0)
            .collect();
        match active.len() {
            0 => new.or(old_sorted.first().copied()),
            1 => Some(active[0]),
            _ => None,
        }
    }

    /// `IsSaturated`.
    fn is_saturated(&self, new: Option<usize>) -> bool {
        let Some(i) = new else { return false };
        let rs = &self.rss[i];
        let Some(desired) =
            annotation(&rs.metadata, DESIRED_REPLICAS).and_then(|v| v.parse::<i32>().ok())
        else {
            return false;
        };
        let replicas = self.spec.replicas;
        rs_replicas(rs) == replicas && desired == replicas && rs_available(rs) == replicas
    }

    /// `GetProportion`.
    fn get_proportion(&self, i: usize, to_add: i32, added: i32) -> i32 {
        let rs = &self.rss[i];
        if rs_replicas(rs) == 0 || to_add == 0 || to_add == added {
            return 0;
        }
        let fraction = self.get_replica_set_fraction(rs);
        let allowed = to_add - added;
        if to_add > 0 {
            fraction.min(allowed)
        } else {
            fraction.max(allowed)
        }
    }

    /// `getReplicaSetFraction`.
    fn get_replica_set_fraction(&self, rs: &ReplicaSet) -> i32 {
        if self.spec.replicas == 0 {
            return -rs_replicas(rs);
        }
        let max_now = self.spec.replicas + self.spec.max_surge();
        let mut before = annotation(&rs.metadata, MAX_REPLICAS)
            .and_then(|v| v.parse::<i32>().ok())
            .unwrap_or(0);
        if before == 0 {
            before = self.status().replicas.unwrap_or(0);
            if before == 0 {
                before = rs_replicas(rs);
            }
        }
        let size = f64::from(rs_replicas(rs)) * f64::from(max_now) / f64::from(before);
        size.round() as i32 - rs_replicas(rs)
    }

    // --- rolling update ---

    /// `rolloutRolling`.
    fn rollout_rolling(&mut self) -> Result<(), Abort> {
        let (new, old) = self.get_all_replica_sets_and_sync_revision(true)?;
        let new = new.ok_or(Abort)?;
        let all = with_new(&old, Some(new));
        if self.reconcile_new_replica_set(&all, new) {
            self.sync_rollout_status(&all, Some(new));
            return Ok(());
        }
        let active_old: Vec<usize> = old
            .iter()
            .copied()
            .filter(|&i| rs_replicas(&self.rss[i]) > 0)
            .collect();
        if self.reconcile_old_replica_sets(&all, &active_old, new) {
            self.sync_rollout_status(&all, Some(new));
            return Ok(());
        }
        if deployment_complete(&self.d, self.spec.replicas, self.status()) {
            self.cleanup_deployment(&old);
        }
        self.sync_rollout_status(&all, Some(new));
        Ok(())
    }

    /// `reconcileNewReplicaSet`.
    fn reconcile_new_replica_set(&mut self, all: &[usize], new: usize) -> bool {
        let current = rs_replicas(&self.rss[new]);
        let replicas = self.spec.replicas;
        if current == replicas {
            return false;
        }
        if current > replicas {
            return self.scale_replica_set_and_record_event(new, replicas);
        }
        let count = self.new_rs_new_replicas(all, new);
        self.scale_replica_set_and_record_event(new, count)
    }

    /// `reconcileOldReplicaSets`.
    fn reconcile_old_replica_sets(&mut self, all: &[usize], old: &[usize], new: usize) -> bool {
        let old_pods: i32 = old.iter().map(|&i| rs_replicas(&self.rss[i])).sum();
        if old_pods == 0 {
            return false;
        }
        let all_pods: i32 = all.iter().map(|&i| rs_replicas(&self.rss[i])).sum();
        let min_available = self.spec.replicas - self.spec.max_unavailable();
        let new_unavailable = rs_replicas(&self.rss[new]) - rs_available(&self.rss[new]);
        let max_scaled_down = all_pods - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return false;
        }
        let Ok(cleaned) = self.cleanup_unhealthy_replicas(old, max_scaled_down) else {
            return false;
        };
        let Ok(scaled_down) = self.scale_down_old_replica_sets_for_rolling_update(all, old) else {
            return false;
        };
        cleaned + scaled_down > 0
    }

    /// `cleanupUnhealthyReplicas`: drop old pods that are not available first; that cannot
    /// make availability worse.
    fn cleanup_unhealthy_replicas(
        &mut self,
        old: &[usize],
        max_cleanup: i32,
    ) -> Result<i32, Abort> {
        let mut old = old.to_vec();
        old.sort_by(|&a, &b| by_creation(&self.rss[a], &self.rss[b], self.now));
        let mut total = 0;
        for i in old {
            if total >= max_cleanup {
                break;
            }
            let replicas = rs_replicas(&self.rss[i]);
            let available = rs_available(&self.rss[i]);
            if replicas == 0 || replicas == available {
                continue;
            }
            let count = (max_cleanup - total).min(replicas - available);
            if count < 0 {
                // The Go code errors out here ("invalid request to scale down").
                return Err(Abort);
            }
            self.scale_replica_set_and_record_event(i, replicas - count);
            total += count;
        }
        Ok(total)
    }

    /// `scaleDownOldReplicaSetsForRollingUpdate`.
    fn scale_down_old_replica_sets_for_rolling_update(
        &mut self,
        all: &[usize],
        old: &[usize],
    ) -> Result<i32, Abort> {
        let min_available = self.spec.replicas - self.spec.max_unavailable();
        let available: i32 = all.iter().map(|&i| rs_available(&self.rss[i])).sum();
        if available <= min_available {
            return Ok(0);
        }
        let mut old = old.to_vec();
        old.sort_by(|&a, &b| by_creation(&self.rss[a], &self.rss[b], self.now));
        let target = available - min_available;
        let mut total = 0;
        for i in old {
            if total >= target {
                break;
            }
            let replicas = rs_replicas(&self.rss[i]);
            if replicas == 0 {
                continue;
            }
            let count = replicas.min(target - total);
            self.scale_replica_set_and_record_event(i, replicas - count);
            total += count;
        }
        Ok(total)
    }

    // --- recreate ---

    /// `rolloutRecreate`: old ReplicaSets to zero, wait for their pods to go, then the new one
    /// to full size.
    fn rollout_recreate(&mut self) -> Result<(), Abort> {
        let (mut new, mut old) = self.get_all_replica_sets_and_sync_revision(false)?;
        let mut all = with_new(&old, new);
        let active_old: Vec<usize> = old
            .iter()
            .copied()
            .filter(|&i| rs_replicas(&self.rss[i]) > 0)
            .collect();
        let mut scaled_down = false;
        for i in active_old {
            scaled_down |= self.scale_replica_set_and_record_event(i, 0);
        }
        if scaled_down || self.old_pods_running(new, &old) {
            self.sync_rollout_status(&all, new);
            return Ok(());
        }
        if new.is_none() {
            (new, old) = self.get_all_replica_sets_and_sync_revision(true)?;
            all = with_new(&old, new);
        }
        if let Some(i) = new {
            let replicas = self.spec.replicas;
            self.scale_replica_set_and_record_event(i, replicas);
        }
        if deployment_complete(&self.d, self.spec.replicas, self.status()) {
            self.cleanup_deployment(&old);
        }
        self.sync_rollout_status(&all, new);
        Ok(())
    }

    /// `oldPodsRunning`.
    fn old_pods_running(&self, new: Option<usize>, old: &[usize]) -> bool {
        if old
            .iter()
            .map(|&i| rs_status_replicas(&self.rss[i]))
            .sum::<i32>()
            > 0
        {
            return true;
        }
        let new_uid = new.and_then(|i| self.rss[i].metadata.uid.as_deref());
        let rs_uids: Vec<&str> = self
            .rss
            .iter()
            .filter_map(|rs| rs.metadata.uid.as_deref())
            .collect();
        self.pods.iter().any(|pod| {
            let Some(owner) = controller_of(&pod.metadata) else {
                return false;
            };
            if owner.kind != "ReplicaSet" || !rs_uids.contains(&owner.uid.as_str()) {
                return false;
            }
            if Some(owner.uid.as_str()) == new_uid {
                return false;
            }
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            !matches!(phase, Some("Failed" | "Succeeded"))
        })
    }

    // --- cleanup and status ---

    /// `cleanupDeployment`: delete the oldest empty ReplicaSets beyond the history limit.
    fn cleanup_deployment(&mut self, old: &[usize]) {
        let Some(limit) = self.spec.revision_history_limit else {
            return;
        };
        let mut cleanable: Vec<usize> = old
            .iter()
            .copied()
            .filter(|&i| self.rss[i].metadata.deletion_timestamp.is_none())
            .filter(|i| !self.deleted.contains(i))
            .collect();
        let diff = cleanable.len() as i64 - i64::from(limit);
        if diff <= 0 {
            return;
        }
        cleanable.sort_by(|&a, &b| by_revision(&self.rss[a], &self.rss[b], self.now));
        for &i in cleanable.iter().take(diff as usize) {
            let rs = &self.rss[i];
            let observed = rs
                .status
                .as_ref()
                .and_then(|s| s.observed_generation)
                .unwrap_or(0);
            if rs_status_replicas(rs) != 0
                || rs_replicas(rs) != 0
                || rs.metadata.generation.unwrap_or(0) > observed
                || rs.metadata.deletion_timestamp.is_some()
            {
                continue;
            }
            self.deleted.push(i);
        }
    }

    /// `calculateStatus`.
    fn calculate_status(&self, all: &[usize], new: Option<usize>) -> DeploymentStatus {
        let sum = |f: fn(&ReplicaSet) -> i32| all.iter().map(|&i| f(&self.rss[i])).sum::<i32>();
        let available = sum(rs_available);
        let unavailable = (sum(rs_replicas) - available).max(0);
        let mut status = DeploymentStatus {
            observed_generation: self.d.metadata.generation,
            replicas: nz(sum(rs_status_replicas)),
            updated_replicas: nz(new.map_or(0, |i| rs_status_replicas(&self.rss[i]))),
            ready_replicas: nz(sum(rs_ready)),
            available_replicas: nz(available),
            unavailable_replicas: nz(unavailable),
            collision_count: self.status().collision_count,
            terminating_replicas: self.terminating_replicas(all),
            conditions: self.status().conditions.clone(),
        };
        let c = if available >= self.spec.replicas - self.spec.max_unavailable() {
            new_condition(
                reason::AVAILABLE,
                "True",
                reason::MIN_AVAILABLE,
                "Deployment has minimum availability.".into(),
                self.now,
            )
        } else {
            new_condition(
                reason::AVAILABLE,
                "False",
                reason::MIN_UNAVAILABLE,
                "Deployment does not have minimum availability.".into(),
                self.now,
            )
        };
        set_condition(&mut status, c);
        status
    }

    /// `GetTerminatingReplicaCountForReplicaSets`.
    fn terminating_replicas(&self, all: &[usize]) -> Option<i32> {
        let mut total = 0;
        for &i in all {
            let status = self.rss[i].status.as_ref();
            let terminating = status.and_then(|s| s.terminating_replicas);
            let observed = status.and_then(|s| s.observed_generation).unwrap_or(0);
            match terminating {
                None if observed == 0 => {}
                None => return None,
                Some(n) => total += n,
            }
        }
        Some(total)
    }

    /// `syncDeploymentStatus`.
    fn sync_deployment_status(&mut self, all: &[usize], new: Option<usize>) {
        let status = self.calculate_status(all, new);
        self.d.status = Some(status);
    }

    /// `syncRolloutStatus`: counts plus the Progressing condition and deadline.
    fn sync_rollout_status(&mut self, all: &[usize], new: Option<usize>) {
        let mut status = self.calculate_status(all, new);
        if !self.has_progress_deadline() {
            remove_condition(&mut status, reason::PROGRESSING);
        }
        let current = condition(self.status(), reason::PROGRESSING).cloned();
        let is_complete = status.replicas == status.updated_replicas
            && current.as_ref().and_then(|c| c.reason.as_deref()) == Some(reason::NEW_RS_AVAILABLE);
        let new_name = new.map(|i| name(&self.rss[i].metadata).to_owned());
        let subject = match &new_name {
            Some(n) => format!("ReplicaSet {n:?}"),
            None => format!("Deployment {:?}", name(&self.d.metadata)),
        };
        if self.has_progress_deadline() && !is_complete {
            if deployment_complete(&self.d, self.spec.replicas, &status) {
                let c = new_condition(
                    reason::PROGRESSING,
                    "True",
                    reason::NEW_RS_AVAILABLE,
                    format!("{subject} has successfully progressed."),
                    self.now,
                );
                set_condition(&mut status, c);
            } else if deployment_progressing(self.status(), &status) {
                let mut c = new_condition(
                    reason::PROGRESSING,
                    "True",
                    reason::RS_UPDATED,
                    format!("{subject} is progressing."),
                    self.now,
                );
                if let Some(cur) = &current {
                    if cur.status.as_deref() == Some("True") {
                        c.last_transition_time = cur.last_transition_time.clone();
                    }
                    remove_condition(&mut status, reason::PROGRESSING);
                }
                set_condition(&mut status, c);
            } else if self.deployment_timed_out(&status) {
                let c = new_condition(
                    reason::PROGRESSING,
                    "False",
                    reason::TIMED_OUT,
                    format!("{subject} has timed out progressing."),
                    self.now,
                );
                set_condition(&mut status, c);
            }
        }
        // The simulated ReplicaSet controller never reports ReplicaFailure.
        remove_condition(&mut status, reason::REPLICA_FAILURE);
        self.requeue_stuck_deployment(&status);
        self.d.status = Some(status);
    }

    /// `DeploymentTimedOut`.
    fn deployment_timed_out(&self, status: &DeploymentStatus) -> bool {
        let Some(deadline) = self.spec.progress_deadline_seconds else {
            return false;
        };
        let Some(c) = condition(status, reason::PROGRESSING) else {
            return false;
        };
        match c.reason.as_deref() {
            Some(reason::NEW_RS_AVAILABLE) => false,
            Some(reason::TIMED_OUT) => true,
            _ => c.last_update_time.as_ref().is_some_and(|from| {
                let until = from.0 + Duration::from_secs(u64::try_from(deadline).unwrap_or(0));
                until < self.now
            }),
        }
    }

    /// `requeueStuckDeployment`: when to check the deadline again.
    fn requeue_stuck_deployment(&mut self, new_status: &DeploymentStatus) {
        let Some(deadline) = self.spec.progress_deadline_seconds else {
            return;
        };
        let Some(c) = condition(self.status(), reason::PROGRESSING) else {
            return;
        };
        if deployment_complete(&self.d, self.spec.replicas, new_status)
            || c.reason.as_deref() == Some(reason::TIMED_OUT)
        {
            return;
        }
        let Some(from) = &c.last_update_time else {
            return;
        };
        let until = from.0 + Duration::from_secs(u64::try_from(deadline).unwrap_or(0));
        let wake = if until <= self.now + Duration::from_secs(1) {
            self.now + Duration::from_millis(100)
        } else {
            until + Duration::from_secs(1)
        };
        self.plan.requeue_at = Some(self.plan.requeue_at.map_or(wake, |w| w.min(wake)));
    }
}

/// `append(oldRSs, newRS)` without the nil.
fn with_new(old: &[usize], new: Option<usize>) -> Vec<usize> {
    old.iter().copied().chain(new).collect()
}

/// `SetReplicasAnnotations`.
fn set_replicas_annotations(rs: &mut ReplicaSet, desired: i32, max: i32) -> bool {
    let annotations = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let mut updated = false;
    for (key, value) in [(DESIRED_REPLICAS, desired), (MAX_REPLICAS, max)] {
        let value = value.to_string();
        if annotations.get(key) != Some(&value) {
            annotations.insert(key.into(), value);
            updated = true;
        }
    }
    updated
}

/// `ReplicasAnnotationsNeedUpdate`.
fn replicas_annotations_need_update(rs: &ReplicaSet, desired: i32, max: i32) -> bool {
    annotation(&rs.metadata, DESIRED_REPLICAS) != Some(desired.to_string().as_str())
        || annotation(&rs.metadata, MAX_REPLICAS) != Some(max.to_string().as_str())
}

#[cfg(test)]
mod tests;
