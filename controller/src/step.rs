//! The release state machine, sans I/O: [`plan`] maps a Rollout, what was observed around it
//! and the time to a [`Plan`] — the status to write, the changes to make, the events to
//! publish and when to look again. No async, no client, no clock: the reconcile loop observes,
//! calls [`plan`], applies the plan; tests call [`plan`] directly.
//!
//! It follows Kruise's canary state machine (kruise-rollout.md §2.5–2.8) with the per-step
//! states `StepUpgrade → StepTrafficRouting → StepMetricsAnalysis → StepPaused → StepReady`,
//! then `Completed`, and these orderings, each stage waiting to see the previous one in the
//! cluster before the next:
//! - a routed step pins the stable Service to the stable `pod-template-hash` *before* canary
//!   pods exist, and routes to the canary only once its pods are available;
//! - within a step: Services, then the canary Ingress, then the plugin rule, with
//!   `gracePeriodSeconds` after each routing change;
//! - promotion never raises the old version's share: the stable Service is unpinned (old and
//!   canary pods behind it), the stable Deployment is unpaused and rolls natively while the
//!   canary keeps its share, and only when it is fully updated and available does the rule
//!   go away, then the canary objects, then the Deployment is paused again;
//! - rollback, abort, deletion and disabling route all traffic to stable first, in the same
//!   reconcile that notices them, then remove the canary.
//!
//! The plugin rule this Rollout wants lives in its status (`canaryStatus.higress.rule`), so the
//! shared WasmPlugin is a pure function of all Rollouts ([`crate::render`]).
//!
//! A step with metric analysis ([`crate::analysis`]) stays in `StepMetricsAnalysis` after its
//! traffic is in place, consuming the Prometheus answers the I/O layer fetched when a run was
//! due ([`Observed::measurement`]), until its checks pass: with `pause.duration` it advances
//! once they held that long, otherwise it asks for approval and keeps running the checks while
//! it waits. `failureLimit` failed runs in a row abort the release like the abort annotation
//! does (traffic to stable in the same reconcile), and the aborted revision is not released
//! again until the Deployment's template changes.

use std::time::Duration;

use canary_core::config::RuleConfig;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::{
    api::{apps::v1::Deployment, core::v1::Service, networking::v1::Ingress},
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::ResourceExt;

use crate::{
    analysis::{self, Analysis, Outcome, Verdict},
    crd::{
        condition, AnalysisPhase, CanaryStatus, HigressStatus, Rollout, RolloutCondition,
        RolloutPhase, RolloutStatus, StepState, DEFAULT_GRACE_PERIOD_SECONDS,
    },
    keys::{ABORT_ANNOTATION, REVISION_ANNOTATION, ROLLOUT_FINALIZER, ROLLOUT_ID_LABEL},
    observed::{owned_by, service_pin, Observed, Workload},
    resources,
    validate::{scaled, Invalid, Names, Release, Step},
};

/// How long to wait before looking again at something another controller is doing (pods
/// becoming available, a Deployment rolling). Watches usually wake the controller sooner.
pub const POLL: Duration = Duration::from_secs(5);
/// A guard against a transition loop: no reconcile needs more transitions than this.
const MAX_TRANSITIONS: usize = 32;

/// What one reconcile should do.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The whole status to write (unchanged if nothing happened; compare before writing).
    pub status: RolloutStatus,
    /// Writes, in order. Apply them in order and stop at the first error; then write
    /// `status`; then, if there is a [`Change::SetPluginRule`], render and write the shared
    /// WasmPlugin. The status goes first because the WasmPlugin is rendered from all
    /// Rollouts' statuses: written the other way round, a failed status write would let the
    /// next render undo the rule.
    ///
    /// Write the status with the resourceVersion it was planned from (a conflict means
    /// "plan again"), not with a forced server-side apply: `kubectl-kruise rollout approve`
    /// patches the same status, and a blind write would undo the approval.
    pub changes: Vec<Change>,
    /// Kubernetes Events to publish on the Rollout.
    pub events: Vec<Event>,
    /// Look again after this long even without a watch event.
    pub requeue: Option<Duration>,
}

/// One write.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Add [`ROLLOUT_FINALIZER`] to the Rollout.
    AddFinalizer,
    /// Remove [`ROLLOUT_FINALIZER`]: cleanup is done.
    RemoveFinalizer,
    /// Set a Deployment's `spec.paused`.
    PauseDeployment {
        name: String,
        paused: bool,
    },
    /// Create or update (server-side apply) the canary Deployment.
    ApplyDeployment(Box<Deployment>),
    DeleteDeployment {
        name: String,
    },
    /// Create or update the canary Service.
    ApplyService(Box<Service>),
    /// Set (`Some`) or remove (`None`) `pod-template-hash` in a Service's selector (a merge
    /// patch of `spec.selector`).
    PinService {
        name: String,
        pod_template_hash: Option<String>,
    },
    DeleteService {
        name: String,
    },
    /// Create or update the canary Ingress.
    ApplyIngress(Box<Ingress>),
    DeleteIngress {
        name: String,
    },
    /// This Rollout's rule in the shared WasmPlugin becomes this (`None`: no rule, all
    /// traffic to stable). Already recorded in the plan's status.
    SetPluginRule(Option<Box<RuleConfig>>),
}

/// A Kubernetes Event about the Rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// PascalCase, one of [`reasons`].
    pub reason: &'static str,
    pub note: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Normal,
    Warning,
}

/// Event reasons.
pub mod reasons {
    /// The controller paused the Deployment and now releases its template changes.
    pub const WORKLOAD_ADOPTED: &str = "WorkloadAdopted";
    pub const RELEASE_STARTED: &str = "ReleaseStarted";
    pub const SERVICE_PINNED: &str = "StableServicePinned";
    pub const CANARY_SCALED: &str = "CanaryScaled";
    pub const TRAFFIC_ROUTED: &str = "TrafficRouted";
    pub const STEP_PAUSED: &str = "StepPaused";
    pub const STEP_ADVANCED: &str = "StepAdvanced";
    pub const STEP_JUMPED: &str = "StepJumped";
    pub const PLAN_CHANGED: &str = "PlanChanged";
    pub const ROLLOUT_PAUSED: &str = "RolloutPaused";
    pub const ROLLOUT_RESUMED: &str = "RolloutResumed";
    pub const CONTINUOUS_RELEASE: &str = "ContinuousRelease";
    pub const PROMOTING: &str = "Promoting";
    pub const ROLLOUT_SUCCEEDED: &str = "RolloutSucceeded";
    /// Warning: the template went back to the stable revision mid-release.
    pub const ROLLBACK_DETECTED: &str = "RollbackDetected";
    /// Warning: the abort annotation names the current release.
    pub const ROLLOUT_ABORTED: &str = "RolloutAborted";
    /// Warning: a cancelled release finished cleaning up.
    pub const ROLLOUT_CANCELLED: &str = "RolloutCancelled";
    pub const ROLLOUT_DISABLED: &str = "RolloutDisabled";
    pub const ROLLOUT_TERMINATED: &str = "RolloutTerminated";
    /// Warning; the condition `Accepted=False` carries the specific reason.
    pub const INVALID_ROLLOUT: &str = "InvalidRollout";
    /// A step's checks passed (and held for its `pause.duration`).
    pub const ANALYSIS_PASSED: &str = "AnalysisPassed";
    /// Warning: a run failed, fewer times in a row than `failureLimit`.
    pub const ANALYSIS_CHECK_FAILED: &str = "AnalysisCheckFailed";
    /// Warning: the analysis aborted the release.
    pub const ANALYSIS_FAILED: &str = "AnalysisFailed";
    /// Warning: Prometheus could not be queried (reported once per outage).
    pub const ANALYSIS_ERROR: &str = "AnalysisError";
}

/// Computes what to do next. See the module docs.
pub fn plan(rollout: &Rollout, observed: &Observed, now: Timestamp) -> Plan {
    let mut planner = Planner {
        rollout,
        observed,
        names: Names::of(rollout),
        now,
        status: rollout.status.clone().unwrap_or_default(),
        changes: Vec::new(),
        events: Vec::new(),
        requeue: None,
    };
    planner.run();
    Plan {
        status: planner.status,
        changes: planner.changes,
        events: planner.events,
        requeue: planner.requeue,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// The status moved on; evaluate again in this reconcile.
    Continue,
    /// Nothing more to do until something changes (or `requeue`).
    Wait,
}

struct Planner<'a> {
    rollout: &'a Rollout,
    observed: &'a Observed,
    names: Names,
    now: Timestamp,
    status: RolloutStatus,
    changes: Vec<Change>,
    events: Vec<Event>,
    requeue: Option<Duration>,
}

// === the top level ===

impl Planner<'_> {
    fn run(&mut self) {
        if self.rollout.metadata.deletion_timestamp.is_some() {
            self.terminate();
            return;
        }
        if !self.has_finalizer() {
            self.changes.push(Change::AddFinalizer);
        }
        if self.rollout.spec.disabled {
            self.disable();
            return;
        }
        let release = match Release::from_rollout(self.rollout).and_then(|release| {
            release.check_world(self.rollout, self.observed)?;
            Ok(release)
        }) {
            Ok(release) => release,
            Err(invalid) => {
                self.reject(invalid);
                return;
            }
        };
        self.accept();
        // Checked by `check_world`.
        let Some(workload) = self.observed.workload.as_ref() else {
            return;
        };
        for _ in 0..MAX_TRANSITIONS {
            let flow = match self.status.phase {
                None | Some(RolloutPhase::Initial) => self.initial(workload),
                Some(RolloutPhase::Healthy) => self.healthy(&release, workload),
                Some(RolloutPhase::Progressing) => self.progressing(&release, workload),
                // Re-enabled, or a deletion that was undone: take control again.
                Some(
                    RolloutPhase::Disabled | RolloutPhase::Disabling | RolloutPhase::Terminating,
                ) => {
                    self.status.phase = Some(RolloutPhase::Initial);
                    Flow::Continue
                }
            };
            if flow == Flow::Wait {
                return;
            }
        }
        self.requeue_after(Duration::from_secs(1));
    }

    /// Phase Initial: take control of the Deployment once it is not mid-rollout.
    fn initial(&mut self, workload: &Workload) -> Flow {
        if workload.stable.is_none() || !workload.observed_latest() {
            self.say(format!(
                "Waiting for Deployment {} to create its ReplicaSet",
                workload.name()
            ));
            return self.wait(POLL);
        }
        if !workload.paused() && !workload.rolled_out() {
            self.say(format!(
                "Waiting for Deployment {} to finish its rolling update ({}) before taking \
                 control",
                workload.name(),
                workload.progress()
            ));
            return self.wait(POLL);
        }
        if self.ensure_paused(workload, true) {
            self.event(
                EventKind::Normal,
                reasons::WORKLOAD_ADOPTED,
                format!(
                    "Paused Deployment {}: its template changes are now released step by step",
                    workload.name()
                ),
            );
        }
        self.status.phase = Some(RolloutPhase::Healthy);
        Flow::Continue
    }

    /// Phase Healthy: keep the Deployment paused; start a release when its template changes.
    fn healthy(&mut self, release: &Release, workload: &Workload) -> Flow {
        self.ensure_paused(workload, true);
        let Some(stable) = workload.stable.clone() else {
            return self.initial(workload);
        };
        if workload.in_sync() {
            // Back on the stable template: a revision its analysis rolled back may be released
            // again.
            if let Some(cs) = self.status.canary_status.as_mut() {
                if cs
                    .analysis
                    .as_ref()
                    .is_some_and(|a| a.phase == AnalysisPhase::Failed)
                {
                    cs.analysis = None;
                }
            }
            self.say("Rollout is healthy".to_owned());
            return Flow::Wait;
        }
        if self.rolled_back_by_analysis(&workload.revision) {
            self.say(format!(
                "The release of revision {} was rolled back by its analysis; change the \
                 Deployment's template to release a new revision, or revert it (higress-canary \
                 undo) and apply it again to retry",
                workload.revision
            ));
            return Flow::Wait;
        }
        if self.abort_requested(&workload.revision) {
            self.say(format!(
                "The release of revision {} was aborted; revert the Deployment (higress-canary \
                 undo) or remove the annotation {ABORT_ANNOTATION} to release it again",
                workload.revision
            ));
            return Flow::Wait;
        }
        if !workload.observed_latest() {
            return self.wait(POLL);
        }
        self.start_release(release, workload, &stable.pod_template_hash);
        self.event(
            EventKind::Normal,
            reasons::RELEASE_STARTED,
            format!(
                "Deployment {} has a new revision {}; releasing it in {} steps",
                workload.name(),
                workload.revision,
                release.steps.len()
            ),
        );
        Flow::Continue
    }

    fn start_release(&mut self, release: &Release, workload: &Workload, stable_hash: &str) {
        let previous = self.status.canary_status.take();
        let rollout_id = workload
            .deployment
            .labels()
            .get(ROLLOUT_ID_LABEL)
            .cloned()
            .unwrap_or_else(|| workload.revision.clone());
        self.status.canary_status = Some(CanaryStatus {
            observed_workload_generation: workload.deployment.metadata.generation.unwrap_or(0),
            observed_rollout_id: Some(rollout_id),
            rollout_hash: Some(release.strategy_hash.clone()),
            stable_revision: Some(stable_hash.to_owned()),
            canary_revision: workload.revision.clone(),
            current_step_index: 1,
            next_step_index: release.next_index(1),
            current_step_state: StepState::StepUpgrade,
            last_update_time: Some(Time(self.now)),
            // Keeps the last routing change time, so a restart still honours its grace period.
            higress: previous
                .and_then(|p| p.higress)
                .map(|h| HigressStatus { rule: None, ..h }),
            ..Default::default()
        });
        self.status.phase = Some(RolloutPhase::Progressing);
        self.status
            .conditions
            .retain(|c| c.r#type != condition::SUCCEEDED && c.r#type != condition::ANALYSIS);
        self.set_progressing(condition::INITIALIZING, "Rollout is in Progressing");
    }

    /// Phase Progressing: Kruise's precedence, rollback > abort > paused > continuous release
    /// > plan changed > step jump > the current step.
    fn progressing(&mut self, release: &Release, workload: &Workload) -> Flow {
        let Some(cs) = self.status.canary_status.clone() else {
            self.status.phase = Some(RolloutPhase::Healthy);
            return Flow::Continue;
        };
        self.refresh(workload);
        let reason = self.progressing_reason().unwrap_or_default().to_owned();
        if reason == condition::CANCELLING {
            return self.cancel(release, workload);
        }
        let finalising =
            reason == condition::FINALISING || cs.current_step_state == StepState::Completed;

        let reverted = workload
            .stable
            .as_ref()
            .is_some_and(|s| s.revision == workload.revision);
        if reverted && workload.revision != cs.canary_revision {
            self.event(
                EventKind::Warning,
                reasons::ROLLBACK_DETECTED,
                format!(
                    "Deployment {} went back to the stable revision {}; routing all traffic to \
                     stable and removing the canary",
                    workload.name(),
                    workload.revision
                ),
            );
            self.set_progressing(condition::CANCELLING, "Rollout is in cancelling");
            return Flow::Continue;
        }
        if !finalising && self.abort_requested(&cs.canary_revision) {
            self.event(
                EventKind::Warning,
                reasons::ROLLOUT_ABORTED,
                format!(
                    "Release of revision {} aborted; routing all traffic to stable and \
                     removing the canary",
                    cs.canary_revision
                ),
            );
            self.set_progressing(condition::CANCELLING, "Rollout is in cancelling");
            return Flow::Continue;
        }
        if !finalising && self.rollout.spec.strategy.paused {
            if reason != condition::PAUSED {
                self.event(
                    EventKind::Normal,
                    reasons::ROLLOUT_PAUSED,
                    "Rollout paused (spec.strategy.paused); routing stays as it is".to_owned(),
                );
                self.set_progressing(condition::PAUSED, "Rollout is paused");
            }
            self.say(format!(
                "Rollout is paused at step {}/{}; resume it with kubectl-kruise rollout resume",
                cs.current_step_index,
                release.step_count()
            ));
            return Flow::Wait;
        }
        if reason == condition::PAUSED {
            self.event(
                EventKind::Normal,
                reasons::ROLLOUT_RESUMED,
                "Rollout resumed".to_owned(),
            );
            self.set_progressing(condition::IN_ROLLING, "Rollout is in Progressing");
        }
        if workload.revision != cs.canary_revision {
            return self.restart(release, workload);
        }
        if finalising {
            return self.promote(release, workload);
        }
        if let Some(flow) = self.resync_rule() {
            return flow;
        }
        if cs.rollout_hash.as_deref() != Some(&release.strategy_hash) {
            return self.replan(release, workload);
        }
        if let Some(flow) = self.jump(release) {
            return flow;
        }
        self.run_step(release, workload)
    }

    /// Keeps status numbers current.
    fn refresh(&mut self, workload: &Workload) {
        let generation = workload.deployment.metadata.generation.unwrap_or(0);
        let available = self.observed.canary.as_ref().map(|c| c.available());
        let cs = self.canary_status();
        cs.observed_workload_generation = generation;
        if let Some(available) = available {
            cs.canary_ready_replicas = available;
        }
    }
}

// === the steps ===

impl Planner<'_> {
    fn run_step(&mut self, release: &Release, workload: &Workload) -> Flow {
        let cs = self.canary_status().clone();
        let n = release.step_count();
        let Some(step) = release.step(cs.current_step_index) else {
            // Steps were removed under the release, or the index was patched out of range.
            let index = cs.current_step_index.clamp(1, n);
            let cs = self.canary_status();
            cs.current_step_index = index;
            cs.next_step_index = release.next_index(index);
            self.transition(StepState::StepUpgrade);
            return Flow::Continue;
        };
        match cs.current_step_state {
            StepState::StepUpgrade => self.upgrade(release, workload, step),
            StepState::StepTrafficRouting => self.route(release, step),
            StepState::StepMetricsAnalysis if step.analysis.is_some() => {
                self.analyse(release, step)
            }
            StepState::StepMetricsAnalysis => {
                // No analysis, as in Kruise: the state passes at once.
                self.transition(StepState::StepPaused);
                if step.pause_seconds.is_none() && !self.auto_passes(release, step) {
                    self.event(
                        EventKind::Normal,
                        reasons::STEP_PAUSED,
                        format!(
                            "Step {}/{n} ({}) is waiting for approval",
                            cs.current_step_index,
                            step.describe(Some(workload.replicas()))
                        ),
                    );
                }
                Flow::Continue
            }
            StepState::StepPaused => {
                // Checks keep running while a step waits for approval.
                if let Some(analysis) = &step.analysis {
                    if let Some(flow) = self.run_analysis(release, analysis, 0) {
                        return flow;
                    }
                    if let Some(state) = self.canary_status().analysis.clone() {
                        let next = analysis::next_run_at(&state, analysis, 0, self.now);
                        self.requeue_after(analysis::until(next, self.now));
                    }
                }
                self.pause(release, step)
            }
            StepState::StepReady => self.advance(release, workload),
            StepState::Completed => {
                self.set_progressing(condition::FINALISING, "Rollout is in finalising");
                Flow::Continue
            }
        }
    }

    /// StepUpgrade: scale the canary to this step's size and wait for its pods.
    fn upgrade(&mut self, release: &Release, workload: &Workload, step: &Step) -> Flow {
        let cs = self.canary_status().clone();
        let (k, n) = (cs.current_step_index, release.step_count());
        // A routed step keeps new pods out of the stable Service before they exist, so only
        // the rule decides who reaches them.
        if step.rule.is_some() {
            if let Some(stable_hash) = cs.stable_revision.as_deref() {
                if self.pin(&release.service, Some(stable_hash)) {
                    self.event(
                        EventKind::Normal,
                        reasons::SERVICE_PINNED,
                        format!(
                            "Service {} now selects only the stable pods \
                             (pod-template-hash={stable_hash})",
                            release.service
                        ),
                    );
                    self.say(format!(
                        "Step {k}/{n}: pinning Service {} to the stable pods",
                        release.service
                    ));
                    return self.wait_grace(release.grace_period_seconds);
                }
            }
        }
        if let Some(flow) = self.grace(release.grace_period_seconds) {
            return flow;
        }
        if self.progressing_reason() == Some(condition::INITIALIZING) {
            self.set_progressing(condition::IN_ROLLING, "Rollout is in Progressing");
        }

        let total = workload.replicas();
        let desired = step.canary_replicas(total);
        self.canary_status().canary_replicas = desired;
        let current = self.observed.canary.as_ref().filter(|c| {
            c.deployment.annotations().get(REVISION_ANNOTATION) == Some(&cs.canary_revision)
                && c.replicas() == desired
                && c.deployment.metadata.deletion_timestamp.is_none()
        });
        let Some(canary) = current else {
            if self
                .observed
                .canary
                .as_ref()
                .is_some_and(|c| c.deployment.metadata.deletion_timestamp.is_some())
            {
                self.say(format!(
                    "Step {k}/{n}: waiting for the old canary Deployment {} to go away",
                    release.canary_deployment
                ));
                return self.wait(POLL);
            }
            let deployment = resources::canary_deployment(
                self.rollout,
                release,
                &workload.deployment,
                &cs.canary_revision,
                desired,
            );
            self.changes
                .push(Change::ApplyDeployment(Box::new(deployment)));
            self.event(
                EventKind::Normal,
                reasons::CANARY_SCALED,
                format!(
                    "Step {k}/{n}: canary Deployment {} scaled to {desired} pod{}",
                    release.canary_deployment,
                    plural(desired)
                ),
            );
            self.say(format!(
                "Step {k}/{n}: scaling canary Deployment {} to {desired} pod{}",
                release.canary_deployment,
                plural(desired)
            ));
            return self.wait(POLL);
        };

        let tolerated = release
            .failure_threshold
            .as_ref()
            .map_or(0, |t| scaled(t, total));
        let available = canary.available();
        let ready = canary.observed_latest()
            && canary.updated() >= desired
            && available + tolerated >= desired
            && (desired == 0 || available > 0);
        let hash = canary.pod_template_hash.clone().filter(|h| !h.is_empty());
        let (true, Some(hash)) = (ready, hash) else {
            self.say(format!(
                "Step {k}/{n}: waiting for canary pods, {available}/{desired} available"
            ));
            return self.wait(POLL);
        };
        self.canary_status().pod_template_hash = hash;
        self.transition(StepState::StepTrafficRouting);
        Flow::Continue
    }

    /// StepTrafficRouting: Services, then the canary Ingress, then the plugin rule, waiting
    /// the grace period after each change.
    fn route(&mut self, release: &Release, step: &Step) -> Flow {
        let cs = self.canary_status().clone();
        let (k, n) = (cs.current_step_index, release.step_count());
        let Some(stable_service) = self.observed.service.as_ref() else {
            return Flow::Wait;
        };
        if cs.pod_template_hash.is_empty() {
            // The canary pods are unknown (a hand-edited state): find them first.
            self.transition(StepState::StepUpgrade);
            return Flow::Continue;
        }

        let mut changed = false;
        let desired =
            resources::canary_service(self.rollout, release, stable_service, &cs.pod_template_hash);
        let current_selector = self
            .observed
            .canary_service
            .as_ref()
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.selector.as_ref());
        if current_selector != desired.spec.as_ref().and_then(|s| s.selector.as_ref()) {
            self.changes.push(Change::ApplyService(Box::new(desired)));
            changed = true;
        }
        // Without a rule, traffic follows the pods: stable and canary behind one Service.
        let pin = step.rule.as_ref().and(cs.stable_revision.as_deref());
        changed |= self.pin(&release.service, pin);
        if changed {
            self.routing_changed();
            self.say(format!("Step {k}/{n}: updating the Services"));
            return self.wait_grace(release.grace_period_seconds);
        }
        if let Some(flow) = self.grace(release.grace_period_seconds) {
            return flow;
        }

        if step.rule.is_some() {
            if let Some(stable_ingress) = self.observed.ingress.as_ref() {
                let desired = resources::canary_ingress(self.rollout, release, stable_ingress);
                if !ingress_matches(self.observed.canary_ingress.as_ref(), &desired) {
                    self.changes.push(Change::ApplyIngress(Box::new(desired)));
                    self.routing_changed();
                    self.say(format!(
                        "Step {k}/{n}: creating the canary route (Ingress {})",
                        release.canary_ingress
                    ));
                    return self.wait_grace(release.grace_period_seconds);
                }
            }
        }

        if self.ensure_rule(step.rule.as_ref()) {
            self.event(
                EventKind::Normal,
                reasons::TRAFFIC_ROUTED,
                format!(
                    "Step {k}/{n}: {}",
                    step.describe(self.observed.workload.as_ref().map(Workload::replicas))
                ),
            );
            self.say(format!("Step {k}/{n}: routing traffic"));
            return self.wait_grace(release.grace_period_seconds);
        }
        if let Some(flow) = self.grace(release.grace_period_seconds) {
            return flow;
        }
        self.transition(StepState::StepMetricsAnalysis);
        if let Some(analysis) = &step.analysis {
            self.start_analysis(k, analysis);
        }
        Flow::Continue
    }

    /// StepMetricsAnalysis of a step with analysis: run the checks every interval until they
    /// pass (and held for `pause.duration`, if set); then ask for approval, or advance.
    fn analyse(&mut self, release: &Release, step: &Step) -> Flow {
        let Some(analysis) = step.analysis.as_ref() else {
            return Flow::Continue;
        };
        let hold = step.pause_seconds.unwrap_or(0);
        if let Some(flow) = self.run_analysis(release, analysis, hold) {
            return flow;
        }
        let cs = self.canary_status().clone();
        let (k, n) = (cs.current_step_index, release.step_count());
        let Some(state) = cs.analysis else {
            return Flow::Continue;
        };
        let total = self.observed.workload.as_ref().map(Workload::replicas);
        let summary = state.message.clone().unwrap_or_default();
        if analysis::held_for(&state, hold, self.now) {
            let held = if hold > 0 {
                format!(" and held for {hold}s")
            } else {
                String::new()
            };
            self.event(
                EventKind::Normal,
                reasons::ANALYSIS_PASSED,
                format!("Step {k}/{n}: the checks passed{held}: {summary}"),
            );
            if step.pause_seconds.is_none() && !self.auto_passes(release, step) {
                self.transition(StepState::StepPaused);
                self.event(
                    EventKind::Normal,
                    reasons::STEP_PAUSED,
                    format!(
                        "Step {k}/{n} ({}) passed its analysis and is waiting for approval",
                        step.describe(total)
                    ),
                );
            } else {
                self.transition(StepState::StepReady);
            }
            return Flow::Continue;
        }
        let next = analysis::next_run_at(&state, analysis, hold, self.now);
        let progress = match (state.phase, state.passing_since.as_ref()) {
            (AnalysisPhase::Passing, Some(since)) if hold > 0 => {
                let held = (self.now.as_millisecond() - since.0.as_millisecond()) / 1000;
                format!(" (held {held}s of {hold}s)")
            }
            _ => String::new(),
        };
        self.say(format!(
            "Step {k}/{n} ({}): analysing the canary{progress}: {summary}",
            step.describe(total)
        ));
        self.wait(analysis::until(next, self.now))
    }

    /// Begins step `k`'s analysis now (its traffic is in place).
    fn start_analysis(&mut self, k: i32, analysis: &Analysis) {
        let now = self.now;
        let cs = self.canary_status();
        // The release's first analysed step starts the window at its routing change (when
        // the canary got traffic); later steps keep that start.
        let traffic_since = cs
            .analysis
            .as_ref()
            .and_then(|a| a.traffic_since.clone())
            .or_else(|| {
                cs.higress
                    .as_ref()
                    .and_then(|h| h.routing_update_time.clone())
            });
        cs.analysis = Some(analysis::start(k, traffic_since, now));
        self.set_condition(
            condition::ANALYSIS,
            condition::UNKNOWN,
            "Pending",
            &format!(
                "Step {k}: analysis started; the first run is in {}s",
                analysis.interval_seconds
            ),
        );
    }

    /// Consumes a due run's answers for the current step: records it, reports it and aborts
    /// the release after `failureLimit` failures (`Some` then). `hold`: the step's
    /// `pause.duration` while it is in StepMetricsAnalysis.
    fn run_analysis(&mut self, release: &Release, analysis: &Analysis, hold: i64) -> Option<Flow> {
        let now = self.now;
        let cs = self.canary_status().clone();
        let (k, n) = (cs.current_step_index, release.step_count());
        if cs.analysis.as_ref().is_none_or(|a| a.step_index != k) {
            // A controller that did not record the start (a hand-edited state): start now.
            self.start_analysis(k, analysis);
            return None;
        }
        let mut state = cs.analysis?;
        let measurement = self
            .observed
            .measurement
            .as_ref()
            .filter(|m| m.step_index == k && m.canary_revision == cs.canary_revision)?;
        if now < analysis::next_run_at(&state, analysis, hold, now) {
            return None;
        }
        let run = analysis::evaluate(analysis, &measurement.answers);
        let outcome = analysis::record(&mut state, analysis, &run, now);
        self.canary_status().analysis = Some(state.clone());
        let previous_reason = self
            .status
            .condition(condition::ANALYSIS)
            .map(|c| c.reason.clone());
        let reason = analysis::condition_reason(run.verdict);
        let message = format!("Step {k}/{n}: {}", run.summary);
        if let Outcome::Abort(why) = outcome {
            self.abort_by_analysis(k, n, &why);
            return Some(Flow::Continue);
        }
        match run.verdict {
            Verdict::Pass => {
                self.set_condition(condition::ANALYSIS, condition::TRUE, reason, &message)
            }
            Verdict::Fail => {
                self.set_condition(condition::ANALYSIS, condition::FALSE, reason, &message);
                self.event(
                    EventKind::Warning,
                    reasons::ANALYSIS_CHECK_FAILED,
                    format!(
                        "{message} ({} of {} failed runs in a row before the release is \
                         aborted)",
                        state.consecutive_failures, analysis.failure_limit
                    ),
                );
            }
            Verdict::NoVerdict(why) => {
                self.set_condition(condition::ANALYSIS, condition::UNKNOWN, reason, &message);
                if why == analysis::NoVerdict::Error && previous_reason.as_deref() != Some(reason) {
                    self.event(EventKind::Warning, reasons::ANALYSIS_ERROR, message);
                }
            }
        }
        None
    }

    /// The analysis failed: abort as the abort annotation does.
    fn abort_by_analysis(&mut self, k: i32, n: i32, why: &str) {
        let message = format!("Step {k}/{n}: analysis failed: {why}");
        self.event(
            EventKind::Warning,
            reasons::ANALYSIS_FAILED,
            format!("{message}; routing all traffic to stable and removing the canary"),
        );
        self.set_condition(
            condition::ANALYSIS,
            condition::FALSE,
            "CheckFailed",
            &message,
        );
        self.set_progressing(condition::CANCELLING, "Rollout is in cancelling");
        self.say(message);
    }

    /// Whether the release of `revision` was aborted by its analysis (and not retried since).
    fn rolled_back_by_analysis(&self, revision: &str) -> bool {
        self.status.canary_status.as_ref().is_some_and(|cs| {
            cs.canary_revision == revision
                && cs
                    .analysis
                    .as_ref()
                    .is_some_and(|a| a.phase == AnalysisPhase::Failed)
        })
    }

    /// StepPaused: wait for approval or for `pause.duration`.
    fn pause(&mut self, release: &Release, step: &Step) -> Flow {
        let cs = self.canary_status().clone();
        let (k, n) = (cs.current_step_index, release.step_count());
        if self.auto_passes(release, step) {
            self.transition(StepState::StepReady);
            return Flow::Continue;
        }
        let total = self.observed.workload.as_ref().map(Workload::replicas);
        match step.pause_seconds {
            None => {
                self.say(format!(
                    "Step {k}/{n} ({}) is waiting for approval: kubectl-kruise rollout approve \
                     rollout/{} -n {}",
                    step.describe(total),
                    self.names.rollout,
                    self.names.namespace
                ));
                Flow::Wait
            }
            Some(seconds) => {
                let since = cs.last_update_time.map_or(self.now, |t| t.0);
                match remaining(self.now, since, seconds) {
                    None => {
                        self.transition(StepState::StepReady);
                        Flow::Continue
                    }
                    Some(left) => {
                        self.say(format!(
                            "Step {k}/{n} ({}) is paused for {seconds}s",
                            step.describe(total)
                        ));
                        self.wait(left)
                    }
                }
            }
        }
    }

    /// Kruise lets a last step at 100% pass without a pause.
    fn auto_passes(&self, release: &Release, step: &Step) -> bool {
        let index = self
            .status
            .canary_status
            .as_ref()
            .map_or(0, |c| c.current_step_index);
        index == release.step_count() && step.is_full()
    }

    /// StepReady: the next step, or promotion after the last.
    fn advance(&mut self, release: &Release, workload: &Workload) -> Flow {
        let cs = self.canary_status().clone();
        let (k, n) = (cs.current_step_index, release.step_count());
        if k < n {
            let cs = self.canary_status();
            cs.current_step_index = k + 1;
            cs.next_step_index = release.next_index(k + 1);
            self.transition(StepState::StepUpgrade);
            self.event(
                EventKind::Normal,
                reasons::STEP_ADVANCED,
                format!("Step {k}/{n} done; starting step {}/{n}", k + 1),
            );
            return Flow::Continue;
        }
        self.transition(StepState::Completed);
        self.set_progressing(condition::FINALISING, "Rollout is in finalising");
        self.event(
            EventKind::Normal,
            reasons::PROMOTING,
            format!(
                "All {n} steps done; promoting revision {}: Deployment {} rolls to it while the \
                 canary keeps its share",
                cs.canary_revision,
                workload.name()
            ),
        );
        Flow::Continue
    }

    /// The strategy changed mid-release: continue from the first step that keeps at least
    /// the current canary pods, and route it anew (Kruise's "plan changed").
    fn replan(&mut self, release: &Release, workload: &Workload) -> Flow {
        let total = workload.replicas();
        let current = self.canary_status().canary_replicas;
        let index = release
            .steps
            .iter()
            .position(|s| s.canary_replicas(total) >= current)
            // At most MAX_STEPS steps, so the index fits.
            .map_or(release.step_count(), |i| {
                i32::try_from(i + 1).unwrap_or(i32::MAX)
            });
        let cs = self.canary_status();
        cs.rollout_hash = Some(release.strategy_hash.clone());
        cs.current_step_index = index;
        cs.next_step_index = release.next_index(index);
        self.transition(StepState::StepUpgrade);
        self.event(
            EventKind::Normal,
            reasons::PLAN_CHANGED,
            format!(
                "The release plan changed; continuing at step {index}/{}",
                release.step_count()
            ),
        );
        Flow::Continue
    }

    /// A user patched `nextStepIndex` to another step: go there (Kruise's step jump).
    fn jump(&mut self, release: &Release) -> Option<Flow> {
        let cs = self.status.canary_status.clone()?;
        let (k, target) = (cs.current_step_index, cs.next_step_index);
        let n = release.step_count();
        if target == release.next_index(k) || !(1..=n).contains(&target) {
            return None;
        }
        let total = self
            .observed
            .workload
            .as_ref()
            .map_or(0, Workload::replicas);
        let same_pods = release.step(k).map(|s| s.canary_replicas(total))
            == release.step(target).map(|s| s.canary_replicas(total));
        let cs = self.canary_status();
        cs.current_step_index = target;
        cs.next_step_index = release.next_index(target);
        self.transition(if same_pods {
            StepState::StepTrafficRouting
        } else {
            StepState::StepUpgrade
        });
        self.event(
            EventKind::Normal,
            reasons::STEP_JUMPED,
            format!("Jumped from step {k}/{n} to step {target}/{n}"),
        );
        Some(Flow::Continue)
    }
}

// === ending a release ===

impl Planner<'_> {
    /// Promotion (Finalising). See the module docs for why in this order.
    fn promote(&mut self, release: &Release, workload: &Workload) -> Flow {
        if self.progressing_reason() != Some(condition::FINALISING) {
            self.set_progressing(condition::FINALISING, "Rollout is in finalising");
        }
        let revision = self.canary_status().canary_revision.clone();
        if let Some(flow) = self.resync_rule() {
            return flow;
        }
        // 1. Old, canary and soon new stable pods all behind the stable Service: the old
        //    version's share can only fall from here.
        if self.pin(&release.service, None) {
            self.say(format!(
                "Promoting: Service {} selects all pods again",
                release.service
            ));
            return self.wait_grace(release.grace_period_seconds);
        }
        if let Some(flow) = self.grace(release.grace_period_seconds) {
            return flow;
        }
        // 2. The stable Deployment rolls natively; the canary keeps its share meanwhile.
        if !workload.rolled_out() {
            self.ensure_paused(workload, false);
            self.say(format!(
                "Promoting: Deployment {} is rolling out revision {revision} ({})",
                workload.name(),
                workload.progress()
            ));
            return self.wait(POLL);
        }
        // 3. Only a fully updated stable Deployment takes the canary's share back.
        if self.ensure_rule(None) {
            self.say("Promoting: moving traffic back from the canary route".to_owned());
            return self.wait_grace(release.grace_period_seconds);
        }
        if let Some(flow) = self.grace(release.grace_period_seconds) {
            return flow;
        }
        // 4. The canary objects go.
        if self.delete_canary(true, true, true) {
            self.say("Promoting: removing the canary Deployment, Service and Ingress".to_owned());
            return self.wait(POLL);
        }
        // 5. The next template change must not roll natively.
        self.ensure_paused(workload, true);
        self.finish(
            condition::TRUE,
            "Rollout progressing has been completed",
            format!("Rollout completed: revision {revision} is stable"),
        );
        self.event(
            EventKind::Normal,
            reasons::ROLLOUT_SUCCEEDED,
            format!(
                "Revision {revision} is released: Deployment {} runs it on all pods",
                workload.name()
            ),
        );
        Flow::Wait
    }

    /// Rollback or abort (Cancelling): all traffic to stable first, then the canary goes.
    fn cancel(&mut self, release: &Release, workload: &Workload) -> Flow {
        if let Some(flow) = self.route_to_stable(release.grace_period_seconds) {
            return flow;
        }
        if self.delete_canary(true, false, true) {
            self.say("Cancelling: removing the canary Deployment and Ingress".to_owned());
            return self.wait(POLL);
        }
        let unpinned = self.pin(&release.service, None);
        if unpinned | self.delete_canary(false, true, false) {
            self.say("Cancelling: restoring the stable Service".to_owned());
            return self.wait(POLL);
        }
        // A rollback during promotion: the Deployment rolls back natively; wait for it.
        if !workload.paused() {
            if !workload.rolled_out() {
                self.say(format!(
                    "Cancelling: waiting for Deployment {} to roll back ({})",
                    workload.name(),
                    workload.progress()
                ));
                return self.wait(POLL);
            }
            self.ensure_paused(workload, true);
        }
        let revision = self.canary_status().canary_revision.clone();
        let how = if self.rolled_back_by_analysis(&revision) {
            "rolled back by its analysis"
        } else {
            "cancelled"
        };
        self.finish(
            condition::FALSE,
            "Rollout progressing has been cancelled",
            format!("Rollout {how}: revision {revision} was not released"),
        );
        self.event(
            EventKind::Warning,
            reasons::ROLLOUT_CANCELLED,
            format!(
                "Release of revision {revision} cancelled; the stable version serves all traffic"
            ),
        );
        Flow::Wait
    }

    /// Continuous release: a newer template mid-release. Traffic back to stable, the canary
    /// of the intermediate revision goes, and the release starts over at step 1.
    fn restart(&mut self, release: &Release, workload: &Workload) -> Flow {
        if let Some(flow) = self.route_to_stable(release.grace_period_seconds) {
            return flow;
        }
        if self.delete_canary(true, false, false) {
            self.say(format!(
                "Deployment {} changed again: removing the canary of the previous revision",
                workload.name()
            ));
            return self.wait(POLL);
        }
        // During promotion the Deployment was unpaused: stop it rolling the newer template.
        self.ensure_paused(workload, true);
        let Some(stable) = workload.stable.clone() else {
            return self.wait(POLL);
        };
        let previous = self.canary_status().canary_revision.clone();
        self.start_release(release, workload, &stable.pod_template_hash);
        self.event(
            EventKind::Normal,
            reasons::CONTINUOUS_RELEASE,
            format!(
                "Deployment {} has revision {} while {previous} was being released; starting \
                 over at step 1",
                workload.name(),
                workload.revision
            ),
        );
        Flow::Continue
    }

    /// Rollout deletion: finalizer cleanup, then the Deployment is released (unpaused).
    fn terminate(&mut self) {
        self.status.phase = Some(RolloutPhase::Terminating);
        self.set_condition(
            condition::TERMINATING,
            condition::TRUE,
            condition::IN_TERMINATING,
            "Rollout is in terminating",
        );
        if !self.has_finalizer() {
            return;
        }
        if self.release_workload() == Flow::Wait {
            return;
        }
        self.set_condition(
            condition::TERMINATING,
            condition::FALSE,
            condition::COMPLETED,
            "Rollout is deleted",
        );
        self.changes.push(Change::RemoveFinalizer);
        self.event(
            EventKind::Normal,
            reasons::ROLLOUT_TERMINATED,
            "Canary resources removed and the Deployment released".to_owned(),
        );
    }

    /// `spec.disabled`: like deletion, but the Rollout stays. As in Kruise, a Rollout that
    /// holds nothing (never took control of its Deployment) is Disabled at once and leaves the
    /// Deployment as it is.
    fn disable(&mut self) {
        if self.status.phase == Some(RolloutPhase::Disabled) {
            return;
        }
        if !self.controls_workload() {
            self.status.phase = Some(RolloutPhase::Disabled);
            self.status.canary_status = None;
            self.say("Rollout is disabled".to_owned());
            self.event(
                EventKind::Normal,
                reasons::ROLLOUT_DISABLED,
                format!(
                    "Rollout disabled before it took control of Deployment {}; the Deployment \
                     is left as it is",
                    self.names.deployment.as_deref().unwrap_or("(none)")
                ),
            );
            return;
        }
        self.status.phase = Some(RolloutPhase::Disabling);
        self.say("Rollout is disabling".to_owned());
        if self.release_workload() == Flow::Wait {
            return;
        }
        self.status.phase = Some(RolloutPhase::Disabled);
        self.status.canary_status = None;
        self.say("Rollout is disabled".to_owned());
        self.event(
            EventKind::Normal,
            reasons::ROLLOUT_DISABLED,
            "Canary resources removed and the Deployment released".to_owned(),
        );
    }

    /// Route to stable, remove every canary object, restore the stable Service, unpause the
    /// Deployment. Leaves objects of another Rollout alone.
    fn release_workload(&mut self) -> Flow {
        if !self.observed.conflicts.is_empty() {
            // Another Rollout governs this Deployment; this one never touched anything.
            return Flow::Continue;
        }
        let grace = grace_period_seconds(self.rollout);
        if let Some(flow) = self.route_to_stable(grace) {
            return flow;
        }
        if self.delete_canary(true, false, true) {
            self.say("Removing the canary Deployment and Ingress".to_owned());
            return self.wait(POLL);
        }
        let unpinned = match self.names.service.clone() {
            Some(service) => self.pin(&service, None),
            None => false,
        };
        if unpinned | self.delete_canary(false, true, false) {
            self.say("Restoring the stable Service".to_owned());
            return self.wait(POLL);
        }
        // Only a pause this Rollout made is undone; one made by hand before it took control
        // stays.
        if let Some(workload) = self
            .observed
            .workload
            .as_ref()
            .filter(|_| self.controls_workload())
        {
            self.ensure_paused(workload, false);
        }
        Flow::Continue
    }

    /// Whether this Rollout paused its Deployment and has not handed it back, by the phase it
    /// had when read: Healthy and Progressing hold the Deployment, and Disabling and
    /// Terminating are written only while handing it back. A Rollout that never left Initial
    /// (invalid, waiting for a native rollout to finish, created disabled) never paused it; a
    /// Disabled one already handed it back.
    fn controls_workload(&self) -> bool {
        matches!(
            self.rollout.status.as_ref().and_then(|s| s.phase),
            Some(
                RolloutPhase::Healthy
                    | RolloutPhase::Progressing
                    | RolloutPhase::Disabling
                    | RolloutPhase::Terminating
            )
        )
    }

    /// Takes this Rollout's rule off the gateway and, while canary pods still exist behind an
    /// unpinned stable Service, pins it to the stable pods. `Some` while that is in progress.
    fn route_to_stable(&mut self, grace: i64) -> Option<Flow> {
        let mut changed = false;
        let stable_hash = self
            .status
            .canary_status
            .as_ref()
            .and_then(|c| c.stable_revision.clone());
        let canary_exists = self
            .observed
            .canary
            .as_ref()
            .is_some_and(|c| owned_by(&c.deployment, self.rollout));
        let paused = self
            .observed
            .workload
            .as_ref()
            .is_some_and(Workload::paused);
        let unpinned = self
            .observed
            .service
            .as_ref()
            .is_some_and(|s| service_pin(s).is_none());
        if let (true, true, true, Some(hash), Some(service)) = (
            canary_exists,
            paused,
            unpinned,
            stable_hash.as_deref(),
            self.names.service.clone(),
        ) {
            changed |= self.pin(&service, Some(hash));
        }
        changed |= self.ensure_rule(None);
        if changed {
            self.say("Routing all traffic to the stable pods".to_owned());
            return Some(self.wait_grace(grace));
        }
        self.grace(grace)
    }

    /// Deletes the canary objects chosen that exist and are owned by this Rollout; true if
    /// any is still there (deleted now or on its way out).
    fn delete_canary(&mut self, deployment: bool, service: bool, ingress: bool) -> bool {
        let mut pending = false;
        if deployment {
            if let (Some(c), Some(name)) = (&self.observed.canary, &self.names.canary_deployment) {
                if owned_by(&c.deployment, self.rollout) {
                    pending = true;
                    if c.deployment.metadata.deletion_timestamp.is_none() {
                        self.changes
                            .push(Change::DeleteDeployment { name: name.clone() });
                    }
                }
            }
        }
        if service {
            if let (Some(s), Some(name)) =
                (&self.observed.canary_service, &self.names.canary_service)
            {
                if owned_by(s, self.rollout) {
                    pending = true;
                    if s.metadata.deletion_timestamp.is_none() {
                        self.changes
                            .push(Change::DeleteService { name: name.clone() });
                    }
                }
            }
        }
        if ingress {
            if let (Some(i), Some(name)) =
                (&self.observed.canary_ingress, &self.names.canary_ingress)
            {
                if owned_by(i, self.rollout) {
                    pending = true;
                    if i.metadata.deletion_timestamp.is_none() {
                        self.changes
                            .push(Change::DeleteIngress { name: name.clone() });
                    }
                }
            }
        }
        pending
    }

    /// The release is over: phase Healthy, `Progressing=False/Completed`, `Succeeded`.
    fn finish(&mut self, succeeded: &str, progressing_message: &str, message: String) {
        self.status.phase = Some(RolloutPhase::Healthy);
        self.set_condition(
            condition::PROGRESSING,
            condition::FALSE,
            condition::COMPLETED,
            progressing_message,
        );
        self.set_condition(
            condition::SUCCEEDED,
            succeeded,
            condition::COMPLETED,
            &message,
        );
        if self.canary_status().current_step_state != StepState::Completed {
            self.transition(StepState::Completed);
        }
        self.say(message);
    }
}

// === validation outcome ===

impl Planner<'_> {
    fn reject(&mut self, invalid: Invalid) {
        let already = self.status.condition(condition::ACCEPTED).is_some_and(|c| {
            c.status == condition::FALSE
                && c.reason == invalid.reason
                && c.message == invalid.message
        });
        if !already {
            self.event(
                EventKind::Warning,
                reasons::INVALID_ROLLOUT,
                invalid.message.clone(),
            );
        }
        self.set_condition(
            condition::ACCEPTED,
            condition::FALSE,
            invalid.reason,
            &invalid.message,
        );
        if self.status.phase.is_none() {
            self.status.phase = Some(RolloutPhase::Initial);
        }
        self.status.message = Some(invalid.message);
    }

    fn accept(&mut self) {
        self.set_condition(
            condition::ACCEPTED,
            condition::TRUE,
            "Accepted",
            "The Rollout and the objects it names are valid",
        );
        self.status.observed_generation = self.rollout.metadata.generation;
    }
}

// === routing and workload helpers ===

impl Planner<'_> {
    /// Sets the stable Service's pin; true if a change was needed.
    fn pin(&mut self, service: &str, hash: Option<&str>) -> bool {
        let Some(current) = self.observed.service.as_ref() else {
            return false;
        };
        if service_pin(current) == hash {
            return false;
        }
        self.changes.push(Change::PinService {
            name: service.to_owned(),
            pod_template_hash: hash.map(str::to_owned),
        });
        self.routing_changed();
        true
    }

    /// Makes the status and the gateway carry `rule`; true if either did not.
    fn ensure_rule(&mut self, rule: Option<&RuleConfig>) -> bool {
        let recorded = self
            .status
            .canary_status
            .as_ref()
            .and_then(|c| c.higress.as_ref())
            .and_then(|h| h.rule.as_ref());
        let live = self.observed.rule(&self.names.key);
        if recorded == rule && live == rule {
            return false;
        }
        self.set_rule(rule.cloned());
        true
    }

    fn set_rule(&mut self, rule: Option<RuleConfig>) {
        if self.status.canary_status.is_none() && rule.is_none() {
            // Nothing recorded; only the gateway has a stale rule.
            self.changes.push(Change::SetPluginRule(None));
            return;
        }
        self.higress_status().rule = rule.clone();
        self.changes.push(Change::SetPluginRule(rule.map(Box::new)));
        self.routing_changed();
    }

    /// The gateway lost or changed this Rollout's rule (a failed write, a hand edit): write it
    /// again and let it settle.
    fn resync_rule(&mut self) -> Option<Flow> {
        let recorded = self
            .status
            .canary_status
            .as_ref()
            .and_then(|c| c.higress.as_ref())
            .and_then(|h| h.rule.clone());
        if self.observed.rule(&self.names.key) == recorded.as_ref() {
            return None;
        }
        self.changes
            .push(Change::SetPluginRule(recorded.map(Box::new)));
        Some(self.wait(POLL.min(Duration::from_secs(1))))
    }

    fn routing_changed(&mut self) {
        if self.status.canary_status.is_some() {
            self.higress_status().routing_update_time = Some(Time(self.now));
        }
    }

    /// `Some(wait)` while the last routing change is younger than the grace period.
    fn grace(&mut self, grace_seconds: i64) -> Option<Flow> {
        let since = self
            .status
            .canary_status
            .as_ref()
            .and_then(|c| c.higress.as_ref())
            .and_then(|h| h.routing_update_time.as_ref())?
            .0;
        let left = remaining(self.now, since, grace_seconds)?;
        Some(self.wait(left))
    }

    fn wait_grace(&mut self, grace_seconds: i64) -> Flow {
        if grace_seconds > 0 {
            self.wait(Duration::from_secs(grace_seconds.unsigned_abs()))
        } else {
            // Still a separate reconcile: the next stage must see this one applied.
            self.wait(Duration::from_millis(100))
        }
    }

    /// Sets `spec.paused`; true if a change was needed.
    fn ensure_paused(&mut self, workload: &Workload, paused: bool) -> bool {
        let already_planned = self
            .changes
            .iter()
            .any(|c| matches!(c, Change::PauseDeployment { paused: p, .. } if *p == paused));
        if workload.paused() == paused || already_planned {
            return false;
        }
        self.changes.push(Change::PauseDeployment {
            name: workload.name(),
            paused,
        });
        true
    }

    fn abort_requested(&self, revision: &str) -> bool {
        self.rollout
            .annotations()
            .get(ABORT_ANNOTATION)
            .is_some_and(|r| !r.is_empty() && r == revision)
    }

    fn has_finalizer(&self) -> bool {
        self.rollout
            .finalizers()
            .iter()
            .any(|f| f == ROLLOUT_FINALIZER)
    }
}

// === status helpers ===

impl Planner<'_> {
    fn canary_status(&mut self) -> &mut CanaryStatus {
        self.status
            .canary_status
            .get_or_insert_with(Default::default)
    }

    fn higress_status(&mut self) -> &mut HigressStatus {
        self.canary_status()
            .higress
            .get_or_insert_with(Default::default)
    }

    fn transition(&mut self, state: StepState) {
        let now = self.now;
        let cs = self.canary_status();
        cs.current_step_state = state;
        cs.last_update_time = Some(Time(now));
    }

    fn progressing_reason(&self) -> Option<&str> {
        self.status
            .condition(condition::PROGRESSING)
            .map(|c| c.reason.as_str())
    }

    fn set_progressing(&mut self, reason: &str, message: &str) {
        self.set_condition(condition::PROGRESSING, condition::TRUE, reason, message);
    }

    /// Sets a condition; its times move only when something about it changes.
    fn set_condition(&mut self, r#type: &str, status: &str, reason: &str, message: &str) {
        let now = Some(Time(self.now));
        let conditions = &mut self.status.conditions;
        match conditions.iter_mut().find(|c| c.r#type == r#type) {
            Some(c) if c.status == status && c.reason == reason && c.message == message => {}
            Some(c) => {
                if c.status != status {
                    c.last_transition_time = now.clone();
                }
                c.status = status.to_owned();
                c.reason = reason.to_owned();
                c.message = message.to_owned();
                c.last_update_time = now;
            }
            None => conditions.push(RolloutCondition {
                r#type: r#type.to_owned(),
                status: status.to_owned(),
                last_update_time: now.clone(),
                last_transition_time: now,
                reason: reason.to_owned(),
                message: message.to_owned(),
            }),
        }
    }

    /// The human-readable summary, on the Rollout and on the release.
    fn say(&mut self, message: String) {
        if let Some(cs) = self.status.canary_status.as_mut() {
            cs.message = Some(message.clone());
        }
        self.status.message = Some(message);
    }

    fn event(&mut self, kind: EventKind, reason: &'static str, note: String) {
        self.events.push(Event { kind, reason, note });
    }

    fn wait(&mut self, after: Duration) -> Flow {
        self.requeue_after(after);
        Flow::Wait
    }

    fn requeue_after(&mut self, after: Duration) {
        self.requeue = Some(self.requeue.map_or(after, |r| r.min(after)));
    }
}

// === free helpers ===

/// How long until `since + seconds`, or `None` if that has passed.
fn remaining(now: Timestamp, since: Timestamp, seconds: i64) -> Option<Duration> {
    let due = since.checked_add(SignedDuration::from_secs(seconds)).ok()?;
    let left_ms = due.as_millisecond() - now.as_millisecond();
    (left_ms > 0).then(|| Duration::from_millis(left_ms.unsigned_abs()))
}

fn grace_period_seconds(rollout: &Rollout) -> i64 {
    rollout
        .spec
        .strategy
        .canary
        .as_ref()
        .and_then(|c| c.traffic_routings.first())
        .map_or(DEFAULT_GRACE_PERIOD_SECONDS, |r| r.grace_period_seconds)
        .max(0)
        .into()
}

/// Whether the canary Ingress has the annotations and rules it should. Only what the
/// controller sets is compared, so other writers' additions do not cause endless updates.
fn ingress_matches(current: Option<&Ingress>, desired: &Ingress) -> bool {
    let Some(current) = current else {
        return false;
    };
    let annotations_ok = desired
        .annotations()
        .iter()
        .all(|(k, v)| current.annotations().get(k) == Some(v));
    let spec = |i: &Ingress| {
        i.spec
            .as_ref()
            .map(|s| (s.rules.clone(), s.ingress_class_name.clone()))
    };
    annotations_ok && spec(current) == spec(desired)
}

fn plural(n: i32) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[cfg(test)]
mod analysis_tests;
#[cfg(test)]
pub(crate) mod sim;
#[cfg(test)]
mod tests;
