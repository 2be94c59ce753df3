//! A tiny, deterministic stand-in for a cluster, for driving [`plan`] through whole releases in
//! unit tests: it applies plans' changes, plays the Deployment controller (ReplicaSets, rolling
//! updates with maxSurge 1 / maxUnavailable 0, instantly ready pods unless told otherwise) and
//! computes which version a request would reach at the gateway.

use std::collections::BTreeMap;

use canary_core::{config::RuleConfig, PluginConfig};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentStatus},
        core::v1::Service,
        networking::v1::Ingress,
    },
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::ResourceExt;
use serde::Deserialize;

use super::{plan, Change, Event, Plan};
use crate::{
    analysis::{pending_queries, Answer, Measurement},
    crd::{Rollout, StepState},
    keys::{POD_TEMPLATE_HASH, ROLLOUT_FINALIZER},
    observed::{CanaryWorkload, Observed, StableReplicaSet, Workload},
    render,
    revision::template_hash,
};

pub const NAMESPACE: &str = "default";
pub const ROLLOUT_UID: &str = "7f0c5c1e-rollout";
pub const DEMO_APP: &str = include_str!("../../tests/fixtures/demo-app.yaml");
pub const ROLLOUT_CANARY: &str = include_str!("../../tests/fixtures/rollout-canary.yaml");
pub const ROLLOUT_AB: &str = include_str!("../../tests/fixtures/rollout-ab.yaml");

/// A ReplicaSet of the stable Deployment.
#[derive(Debug, Clone)]
pub struct ReplicaSet {
    pub revision: String,
    pub image: String,
    pub replicas: i32,
}

/// Where weighted requests end up: the fraction per image tag, and the fraction that reaches
/// a Service without endpoints.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Traffic {
    pub by_tag: BTreeMap<String, f64>,
    pub failing: f64,
}

impl Traffic {
    pub fn share(&self, tag: &str) -> f64 {
        self.by_tag.get(tag).copied().unwrap_or(0.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Crash {
    Never,
    BeforeStatus,
    BeforePlugin,
}

/// The fake cluster.
#[derive(Debug, Clone)]
pub struct World {
    pub deployment: Option<Deployment>,
    /// The stable Deployment's ReplicaSets, oldest first.
    pub replica_sets: Vec<ReplicaSet>,
    pub canary: Option<Deployment>,
    pub service: Option<Service>,
    pub canary_service: Option<Service>,
    pub ingress: Option<Ingress>,
    pub canary_ingress: Option<Ingress>,
    pub plugin: Option<PluginConfig>,
    pub conflicts: Vec<String>,
    /// Whether new pods become available.
    pub pods_become_ready: bool,
    /// At most this many canary pods become available.
    pub canary_max_ready: Option<i32>,
    /// What the analysis' queries get.
    pub prometheus: FakePrometheus,
}

/// A stand-in for Prometheus: answers by query id ([`crate::analysis::Query::id`]); an id it
/// has no answer for gets an empty result (no data).
#[derive(Debug, Clone, Default)]
pub struct FakePrometheus {
    pub answers: BTreeMap<String, Answer>,
    /// Every query fails, as with Prometheus unreachable.
    pub down: bool,
}

impl FakePrometheus {
    pub fn set(&mut self, id: &str, value: f64) {
        self.answers
            .insert(id.to_owned(), Answer::Values(vec![value]));
    }

    /// A canary as good as stable: 1000 responses, 99.9% success, p99 20 ms (stable 18 ms).
    pub fn healthy() -> Self {
        let mut p = Self::default();
        p.set("requests", 1000.0);
        p.set("success-rate:canary", 0.999);
        p.set("success-rate:stable", 0.999);
        p.set("latency-p99:canary", 20.0);
        p.set("latency-p99:stable", 18.0);
        p
    }

    /// What the reconcile loop would measure for `rollout` at `now`.
    pub fn measure(&self, rollout: &Rollout, now: Timestamp) -> Option<Measurement> {
        let plan = pending_queries(rollout, now)?;
        let answers = plan
            .queries
            .iter()
            .map(|q| {
                let answer = if self.down {
                    Answer::Error("Prometheus at http://prometheus:9090: connection refused".into())
                } else {
                    self.answers
                        .get(&q.id)
                        .cloned()
                        .unwrap_or(Answer::Values(Vec::new()))
                };
                (q.id.clone(), answer)
            })
            .collect();
        Some(Measurement {
            step_index: plan.step_index,
            canary_revision: plan.canary_revision,
            answers,
        })
    }
}

/// A Rollout, its world and a clock.
#[derive(Debug, Clone)]
pub struct Sim {
    pub rollout: Rollout,
    pub world: World,
    pub now: Timestamp,
    /// Every event published so far.
    pub events: Vec<Event>,
    /// Set when the finalizer was removed from a deleted Rollout.
    pub gone: bool,
}

pub fn image(tag: &str) -> String {
    format!("registry.cn-hangzhou.aliyuncs.com/mse-ingress/version:{tag}")
}

/// The pod-template-hash the fake Deployment controller gives a revision.
pub fn pod_hash(revision: &str) -> String {
    format!("p{}", &revision[..8])
}

fn tag_of(image: &str) -> String {
    image.rsplit(':').next().unwrap_or(image).to_owned()
}

pub fn parse_rollout(yaml: &str) -> Rollout {
    let mut rollout: Rollout = serde_yaml::from_str(yaml).expect("fixture is a Rollout");
    rollout.metadata.namespace = Some(NAMESPACE.into());
    rollout.metadata.uid = Some(ROLLOUT_UID.into());
    rollout.metadata.generation = Some(1);
    rollout
}

// === impl World ===

impl World {
    /// The seed's demo app: Deployment `demo` (5 × v1, settled), Service and Ingress `demo`.
    pub fn demo() -> Self {
        let mut world = World {
            deployment: None,
            replica_sets: Vec::new(),
            canary: None,
            service: None,
            canary_service: None,
            ingress: None,
            canary_ingress: None,
            plugin: None,
            conflicts: Vec::new(),
            pods_become_ready: true,
            canary_max_ready: None,
            prometheus: FakePrometheus::default(),
        };
        for doc in serde_yaml::Deserializer::from_str(DEMO_APP) {
            let value = serde_yaml::Value::deserialize(doc).expect("fixture YAML");
            let kind = value["kind"].as_str().unwrap_or_default().to_owned();
            match kind.as_str() {
                "Deployment" => {
                    let mut d: Deployment = serde_yaml::from_value(value).expect("Deployment");
                    d.metadata.namespace = Some(NAMESPACE.into());
                    d.metadata.generation = Some(1);
                    world.deployment = Some(d);
                }
                "Service" => {
                    let mut s: Service = serde_yaml::from_value(value).expect("Service");
                    s.metadata.namespace = Some(NAMESPACE.into());
                    world.service = Some(s);
                }
                "Ingress" => {
                    let mut i: Ingress = serde_yaml::from_value(value).expect("Ingress");
                    i.metadata.namespace = Some(NAMESPACE.into());
                    world.ingress = Some(i);
                }
                other => panic!("unexpected kind {other} in demo-app.yaml"),
            }
        }
        let d = world.deployment.as_ref().expect("demo has a Deployment");
        let template = d.spec.template.clone();
        world.replica_sets.push(ReplicaSet {
            revision: template_hash(&template),
            image: image("v1"),
            replicas: 5,
        });
        world.refresh_status();
        world
    }

    fn d(&self) -> &Deployment {
        self.deployment
            .as_ref()
            .expect("the stable Deployment exists")
    }

    fn d_mut(&mut self) -> &mut Deployment {
        self.deployment
            .as_mut()
            .expect("the stable Deployment exists")
    }

    pub fn desired_replicas(&self) -> i32 {
        self.d().spec.replicas.unwrap_or(1)
    }

    pub fn paused(&self) -> bool {
        self.d().spec.paused.unwrap_or(false)
    }

    pub fn template_image(&self) -> String {
        self.d()
            .spec
            .template
            .spec
            .as_ref()
            .expect("pod spec")
            .containers[0]
            .image
            .clone()
            .unwrap_or_default()
    }

    pub fn revision(&self) -> String {
        template_hash(&self.d().spec.template)
    }

    /// `kubectl set image`: a template change.
    pub fn set_image(&mut self, tag: &str) {
        let d = self.d_mut();
        let spec = &mut d.spec;
        spec.template.spec.as_mut().expect("pod spec").containers[0].image = Some(image(tag));
        d.metadata.generation = Some(d.metadata.generation.unwrap_or(0) + 1);
        self.refresh_status();
    }

    fn bump(d: &mut Deployment) {
        d.metadata.generation = Some(d.metadata.generation.unwrap_or(0) + 1);
    }

    /// Applies one change, as the API server would.
    pub fn apply(&mut self, change: &Change, rollout: &mut Rollout, gone: &mut bool) {
        match change {
            Change::AddFinalizer => rollout
                .metadata
                .finalizers
                .get_or_insert_with(Vec::new)
                .push(ROLLOUT_FINALIZER.into()),
            Change::RemoveFinalizer => {
                rollout
                    .metadata
                    .finalizers
                    .get_or_insert_with(Vec::new)
                    .retain(|f| f != ROLLOUT_FINALIZER);
                if rollout.metadata.deletion_timestamp.is_some() {
                    *gone = true;
                }
            }
            Change::PauseDeployment { name, paused } => {
                assert_eq!(name, &self.d().name_any());
                let d = self.d_mut();
                d.spec.paused = Some(*paused);
                Self::bump(d);
            }
            Change::ApplyDeployment(d) => {
                let mut d = (**d).clone();
                let generation = self
                    .canary
                    .as_ref()
                    .and_then(|c| c.metadata.generation)
                    .unwrap_or(0);
                d.metadata.generation = Some(generation + 1);
                d.status = self.canary.as_ref().and_then(|c| c.status.clone());
                self.canary = Some(d);
            }
            Change::DeleteDeployment { name } => {
                assert_eq!(
                    Some(name),
                    self.canary.as_ref().map(|c| c.name_any()).as_ref()
                );
                self.canary = None;
            }
            Change::ApplyService(s) => self.canary_service = Some((**s).clone()),
            Change::PinService {
                name,
                pod_template_hash,
            } => {
                let svc = self.service.as_mut().expect("stable Service");
                assert_eq!(name, &svc.name_any());
                let selector = svc
                    .spec
                    .as_mut()
                    .expect("spec")
                    .selector
                    .get_or_insert_with(BTreeMap::new);
                match pod_template_hash {
                    Some(h) => selector.insert(POD_TEMPLATE_HASH.into(), h.clone()),
                    None => selector.remove(POD_TEMPLATE_HASH),
                };
            }
            Change::DeleteService { .. } => self.canary_service = None,
            Change::ApplyIngress(i) => self.canary_ingress = Some((**i).clone()),
            Change::DeleteIngress { .. } => self.canary_ingress = None,
            Change::SetPluginRule(rule) => {
                let key = format!(
                    "{}/{}",
                    rollout.namespace().unwrap_or_default(),
                    rollout.name_any()
                );
                let mut rules: Vec<RuleConfig> = self
                    .plugin
                    .take()
                    .map(|p| p.rules)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|r| r.rollout != key)
                    .collect();
                rules.extend(rule.as_deref().cloned());
                let rendered = render::rules_config(rules);
                assert!(rendered.skipped.is_empty(), "{:?}", rendered.skipped);
                // Through the WasmPlugin's shape and back, as the gateway would read it.
                let object = render::wasm_plugin(&Default::default(), &rendered.config);
                self.plugin =
                    Some(render::parse_spec(&object["spec"]).expect("rendered spec parses"));
            }
        }
    }

    /// One tick of the Deployment controller. Returns whether anything moved.
    pub fn tick(&mut self) -> bool {
        let mut moved = false;
        if self.deployment.is_some() && !self.paused() {
            let revision = self.revision();
            let want = self.desired_replicas();
            if !self.replica_sets.iter().any(|rs| rs.revision == revision) {
                let image = self.template_image();
                self.replica_sets.push(ReplicaSet {
                    revision: revision.clone(),
                    image,
                    replicas: 0,
                });
            }
            let total: i32 = self.replica_sets.iter().map(|rs| rs.replicas).sum();
            let new = self
                .replica_sets
                .iter()
                .find(|rs| rs.revision == revision)
                .map_or(0, |rs| rs.replicas);
            if new < want && total < want + 1 && self.pods_become_ready {
                if let Some(rs) = self
                    .replica_sets
                    .iter_mut()
                    .find(|rs| rs.revision == revision)
                {
                    rs.replicas += 1;
                    moved = true;
                }
            } else if let Some(old) = self
                .replica_sets
                .iter_mut()
                .find(|rs| rs.revision != revision && rs.replicas > 0)
            {
                if total > want || new >= want {
                    old.replicas -= 1;
                    moved = true;
                }
            }
        }
        if let Some(canary) = self.canary.as_mut() {
            let want = canary.spec.replicas.unwrap_or(1);
            let status = canary.status.get_or_insert_with(Default::default);
            let ready = if self.pods_become_ready { want } else { 0 };
            let ready = self.canary_max_ready.map_or(ready, |max| ready.min(max));
            let before = status.clone();
            status.replicas = Some(want);
            status.updated_replicas = Some(want);
            status.ready_replicas = Some(ready);
            status.available_replicas = Some(ready);
            status.observed_generation = canary.metadata.generation;
            moved |= *status != before;
        }
        self.refresh_status();
        moved
    }

    /// Ticks until nothing moves.
    pub fn settle(&mut self) {
        for _ in 0..100 {
            if !self.tick() {
                return;
            }
        }
        panic!("the fake Deployment controller did not settle");
    }

    fn refresh_status(&mut self) {
        let Some(d) = self.deployment.as_ref() else {
            return;
        };
        let revision = template_hash(&d.spec.template);
        let total: i32 = self.replica_sets.iter().map(|rs| rs.replicas).sum();
        let updated = self
            .replica_sets
            .iter()
            .find(|rs| rs.revision == revision)
            .map_or(0, |rs| rs.replicas);
        let generation = d.metadata.generation;
        let ready = if self.pods_become_ready { total } else { 0 };
        let d = self.d_mut();
        d.status = Some(DeploymentStatus {
            observed_generation: generation,
            replicas: Some(total),
            updated_replicas: Some(updated),
            ready_replicas: Some(ready),
            available_replicas: Some(ready),
            ..Default::default()
        });
    }

    /// What the controller would read.
    pub fn observe(&self) -> Observed {
        let workload = self.deployment.as_ref().map(|d| {
            let stable = self
                .replica_sets
                .iter()
                .find(|rs| rs.replicas > 0)
                .or(self.replica_sets.last())
                .map(|rs| StableReplicaSet {
                    pod_template_hash: pod_hash(&rs.revision),
                    revision: rs.revision.clone(),
                });
            Workload {
                deployment: d.clone(),
                revision: template_hash(&d.spec.template),
                stable,
            }
        });
        let canary = self.canary.as_ref().map(|c| CanaryWorkload {
            deployment: c.clone(),
            pod_template_hash: Some(pod_hash(&template_hash(&c.spec.template))),
        });
        Observed {
            workload,
            canary,
            service: self.service.clone(),
            canary_service: self.canary_service.clone(),
            ingress: self.ingress.clone(),
            canary_ingress: self.canary_ingress.clone(),
            plugin: self.plugin.clone(),
            conflicts: self.conflicts.clone(),
            measurement: None,
        }
    }

    /// Every pod: (image tag, pod-template-hash, count).
    pub fn pods(&self) -> Vec<(String, String, i32)> {
        let mut pods: Vec<_> = self
            .replica_sets
            .iter()
            .filter(|rs| rs.replicas > 0)
            .map(|rs| (tag_of(&rs.image), pod_hash(&rs.revision), rs.replicas))
            .collect();
        if let Some(c) = &self.canary {
            let ready = c
                .status
                .as_ref()
                .and_then(|s| s.available_replicas)
                .unwrap_or(0);
            let template = &c.spec.template;
            let image = template.spec.as_ref().expect("pod spec").containers[0]
                .image
                .clone()
                .unwrap_or_default();
            if ready > 0 {
                pods.push((tag_of(&image), pod_hash(&template_hash(template)), ready));
            }
        }
        pods
    }

    /// Endpoints of a Service: pods matching its `pod-template-hash` pin, if any (every
    /// pod of the app shares the other labels).
    fn endpoints(&self, service: &Service) -> Vec<(String, i32)> {
        let pin = crate::observed::service_pin(service).map(str::to_owned);
        self.pods()
            .into_iter()
            .filter(|(_, hash, _)| pin.as_ref().is_none_or(|p| p == hash))
            .map(|(tag, _, n)| (tag, n))
            .collect()
    }

    /// Where weighted traffic goes, given the plugin rule of `rollout_key`.
    pub fn traffic(&self, rollout_key: &str) -> Traffic {
        let weight = self
            .plugin
            .as_ref()
            .and_then(|p| p.rules.iter().find(|r| r.rollout == rollout_key))
            .map_or(0.0, |r| r.weight.percent() / 100.0);
        // Tagged requests take the canary route only if Higress has it.
        let weight = if self.canary_ingress.is_some() {
            weight
        } else {
            0.0
        };
        let mut traffic = Traffic::default();
        let stable = self.service.as_ref().map(|s| self.endpoints(s));
        let canary = self.canary_service.as_ref().map(|s| self.endpoints(s));
        for (fraction, endpoints) in [(1.0 - weight, stable), (weight, canary)] {
            if fraction == 0.0 {
                continue;
            }
            let endpoints = endpoints.unwrap_or_default();
            let total: i32 = endpoints.iter().map(|(_, n)| n).sum();
            if total == 0 {
                traffic.failing += fraction;
                continue;
            }
            for (tag, n) in endpoints {
                *traffic.by_tag.entry(tag).or_default() +=
                    fraction * f64::from(n) / f64::from(total);
            }
        }
        traffic
    }
}

// === impl Sim ===

impl Sim {
    pub fn new(rollout_yaml: &str) -> Self {
        Sim {
            rollout: parse_rollout(rollout_yaml),
            world: World::demo(),
            now: Timestamp::from_second(1_767_225_600).expect("2026-01-01 is a valid time"),
            events: Vec::new(),
            gone: false,
        }
    }

    pub fn canary() -> Self {
        Self::new(ROLLOUT_CANARY)
    }

    pub fn ab() -> Self {
        Self::new(ROLLOUT_AB)
    }

    pub fn key(&self) -> String {
        format!(
            "{}/{}",
            self.rollout.namespace().unwrap_or_default(),
            self.rollout.name_any()
        )
    }

    /// Plans once without applying anything (with Prometheus's answers if an analysis run is
    /// due, as the reconcile loop does).
    pub fn plan(&self) -> Plan {
        let mut observed = self.world.observe();
        observed.measurement = self.world.prometheus.measure(&self.rollout, self.now);
        plan(&self.rollout, &observed, self.now)
    }

    /// One reconcile, in the order [`Plan::changes`] prescribes: the object changes, then the
    /// status, then the shared WasmPlugin.
    pub fn reconcile(&mut self) -> Plan {
        self.reconcile_until(Crash::Never)
    }

    /// A reconcile whose process dies after the object changes, before the status write (so
    /// the WasmPlugin is not written either).
    pub fn reconcile_then_crash(&mut self) -> Plan {
        self.reconcile_until(Crash::BeforeStatus)
    }

    /// A reconcile whose process dies after the status write, before the WasmPlugin write.
    pub fn reconcile_then_crash_before_plugin(&mut self) -> Plan {
        self.reconcile_until(Crash::BeforePlugin)
    }

    fn reconcile_until(&mut self, crash: Crash) -> Plan {
        let plan = self.plan();
        let (plugin, objects): (Vec<&Change>, Vec<&Change>) = plan
            .changes
            .iter()
            .partition(|c| matches!(c, Change::SetPluginRule(_)));
        for change in objects {
            self.world.apply(change, &mut self.rollout, &mut self.gone);
        }
        if crash == Crash::BeforeStatus {
            return plan;
        }
        self.rollout.status = Some(plan.status.clone());
        self.events.extend(plan.events.iter().cloned());
        if crash == Crash::BeforePlugin {
            return plan;
        }
        for change in plugin {
            self.world.apply(change, &mut self.rollout, &mut self.gone);
        }
        plan
    }

    pub fn advance(&mut self, seconds: i64) {
        self.now = self
            .now
            .checked_add(SignedDuration::from_secs(seconds))
            .expect("test clock stays in range");
    }

    /// Reconciles, lets the world settle and time pass as requeued, until the Rollout waits
    /// for a person (approval, or nothing left to do). Returns the plans made.
    pub fn run(&mut self) -> Vec<Plan> {
        self.run_until(|_| false, |_| {})
    }

    /// [`Sim::run`], calling `check` after every reconcile and every Deployment-controller
    /// tick.
    pub fn run_with(&mut self, check: impl FnMut(&Sim)) -> Vec<Plan> {
        self.run_until(|_| false, check)
    }

    /// [`Sim::run`] that also stops as soon as `stop` holds after a reconcile.
    pub fn run_until(
        &mut self,
        mut stop: impl FnMut(&Sim) -> bool,
        mut check: impl FnMut(&Sim),
    ) -> Vec<Plan> {
        let mut plans = Vec::new();
        for _ in 0..200 {
            if self.gone {
                return plans;
            }
            let before = self.rollout.status.clone();
            let plan = self.reconcile();
            check(self);
            if stop(self) {
                plans.push(plan);
                return plans;
            }
            let mut moved = false;
            for _ in 0..100 {
                if !self.world.tick() {
                    break;
                }
                moved = true;
                check(self);
            }
            let idle = plan.changes.is_empty() && !moved && before.as_ref() == Some(&plan.status);
            let requeue = plan.requeue;
            plans.push(plan);
            match requeue {
                _ if self.gone => return plans,
                Some(after) => self.advance(i64::try_from(after.as_secs()).unwrap_or(0).max(1)),
                None if idle => return plans,
                None => {}
            }
        }
        panic!(
            "the release did not come to rest: {:?}",
            self.rollout.status.as_ref().and_then(|s| s.message.clone())
        );
    }

    pub fn step(&self) -> (i32, StepState) {
        let cs = self.rollout.canary_status().expect("a release started");
        (cs.current_step_index, cs.current_step_state)
    }

    pub fn weight_percent(&self) -> Option<f64> {
        self.world
            .plugin
            .as_ref()
            .and_then(|p| p.rules.iter().find(|r| r.rollout == self.key()))
            .map(|r| r.weight.percent())
    }

    /// `kubectl-kruise rollout approve`: only from StepPaused, a status merge patch.
    pub fn approve(&mut self) {
        let cs = self
            .rollout
            .status
            .as_mut()
            .and_then(|s| s.canary_status.as_mut())
            .expect("a release to approve");
        assert_eq!(
            cs.current_step_state,
            StepState::StepPaused,
            "kubectl-kruise only approves a paused step"
        );
        cs.current_step_state = StepState::StepReady;
    }

    /// `kubectl delete rollout`: the API server sets the deletion timestamp.
    pub fn delete(&mut self) {
        self.rollout.metadata.deletion_timestamp = Some(Time(self.now));
    }

    pub fn event_reasons(&self) -> Vec<&'static str> {
        self.events.iter().map(|e| e.reason).collect()
    }
}
