//! Table tests for the pure deployment controller. The `upstream_*` tables are the cases of
//! `pkg/controller/deployment/{sync,rolling}_test.go`, so the arithmetic is checked against
//! the real controller's own expectations.

use super::*;
use k8s_openapi::{
    api::{
        apps::v1::{DeploymentSpec, DeploymentStrategy, ReplicaSetStatus, RollingUpdateDeployment},
        core::v1::{Container, PodSpec, PodTemplateSpec},
    },
    apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference, Time},
};

const T0: i64 = 1_700_000_000;

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(T0 + secs).expect("valid time")
}

fn int(v: i32) -> IntOrString {
    IntOrString::Int(v)
}

fn pct(v: &str) -> IntOrString {
    IntOrString::String(v.into())
}

fn template(image: &str) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some([("app".to_owned(), "demo".to_owned())].into()),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "main".into(),
                image: Some(image.into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
    }
}

/// Like upstream's `newDeployment`: rolling update, surge and unavailable 0 unless given.
fn deployment(replicas: i32, surge: IntOrString, unavailable: IntOrString) -> Deployment {
    Deployment {
        metadata: ObjectMeta {
            name: Some("demo".into()),
            namespace: Some("default".into()),
            uid: Some("d-uid".into()),
            generation: Some(1),
            ..Default::default()
        },
        spec: DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some([("app".to_owned(), "demo".to_owned())].into()),
                ..Default::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(surge),
                    max_unavailable: Some(unavailable),
                }),
            }),
            template: template("registry.example/version:v1"),
            progress_deadline_seconds: Some(600),
            revision_history_limit: Some(10),
            ..Default::default()
        },
        status: None,
    }
}

/// Like upstream's `rs`: a ReplicaSet owned by `demo`, created `created` seconds after T0.
fn rs(name: &str, replicas: i32, created: i64) -> ReplicaSet {
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            uid: Some(format!("{name}-uid")),
            creation_timestamp: Some(Time(at(created))),
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                name: "demo".into(),
                uid: "d-uid".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            generation: Some(1),
            ..Default::default()
        },
        spec: ReplicaSetSpec {
            replicas: Some(replicas),
            template: Some(template(&format!("registry.example/version:{name}"))),
            ..Default::default()
        },
        status: None,
    }
}

fn with_available(mut rs: ReplicaSet, available: i32) -> ReplicaSet {
    let status = rs.status.get_or_insert_with(Default::default);
    status.available_replicas = Some(available);
    rs
}

fn with_sized_annotations(mut rs: ReplicaSet, desired: i32, max: i32) -> ReplicaSet {
    set_replicas_annotations(&mut rs, desired, max);
    rs
}

fn pass<'a>(d: &'a Deployment, rss: Vec<ReplicaSet>) -> Pass<'a> {
    Pass {
        orig: d,
        d: d.clone(),
        spec: Spec::of(d),
        rss,
        pods: &[],
        now: at(1000),
        created: None,
        updated: Vec::new(),
        deleted: Vec::new(),
        plan: Plan::default(),
    }
}

// === spec and fenceposts ===

#[test]
fn defaults_fill_what_the_api_server_would() {
    let mut d = deployment(3, int(0), int(0));
    d.spec.strategy = None;
    d.spec.replicas = None;
    d.spec.progress_deadline_seconds = None;
    d.spec.revision_history_limit = Some(i32::MAX);
    let spec = Spec::of(&d);
    assert_eq!(spec.replicas, 1);
    assert_eq!(
        spec.strategy,
        Strategy::RollingUpdate {
            max_surge: pct("25%"),
            max_unavailable: pct("25%")
        }
    );
    assert_eq!(spec.progress_deadline_seconds, Some(600));
    assert_eq!(spec.revision_history_limit, None);
}

#[test]
fn fenceposts_round_surge_up_and_unavailable_down() {
    for (replicas, surge, unavailable, expect) in [
        (5, pct("25%"), pct("25%"), (2, 1)),
        (10, pct("25%"), pct("25%"), (3, 2)),
        (3, pct("25%"), pct("25%"), (1, 0)),
        (1, pct("0%"), pct("0%"), (0, 1)),
        (10, int(0), int(0), (0, 1)),
        (10, int(2), pct("50%"), (2, 5)),
    ] {
        let d = deployment(replicas, surge, unavailable);
        assert_eq!(Spec::of(&d).fenceposts(), expect, "replicas {replicas}");
    }
    let mut d = deployment(2, int(0), int(5));
    assert_eq!(Spec::of(&d).max_unavailable(), 2, "capped at replicas");
    d.spec.strategy = Some(DeploymentStrategy {
        type_: Some("Recreate".into()),
        ..Default::default()
    });
    assert_eq!(Spec::of(&d).max_unavailable(), 0);
    assert_eq!(Spec::of(&d).max_surge(), 0);
}

// === proportional scaling (upstream TestScale) ===

struct ScaleCase {
    name: &'static str,
    replicas: i32,
    old_replicas: i32,
    surge: Option<(i32, i32)>,
    new_rs: Option<i32>,
    old_rss: &'static [i32],
    expect_new: Option<i32>,
    expect_old: &'static [i32],
    desired_override: Option<(usize, i32)>,
    new_available: Option<i32>,
}

const SCALE: ScaleCase = ScaleCase {
    name: "",
    replicas: 0,
    old_replicas: 0,
    surge: None,
    new_rs: None,
    old_rss: &[],
    expect_new: None,
    expect_old: &[],
    desired_override: None,
    new_available: None,
};

#[test]
fn upstream_proportional_scaling_table() {
    #[rustfmt::skip]
    let cases = [
        ScaleCase { name: "normal scaling event: 10 -> 12", replicas: 12, old_replicas: 10, new_rs: Some(10), expect_new: Some(12), ..SCALE },
        ScaleCase { name: "normal scaling event: 10 -> 5", replicas: 5, old_replicas: 10, new_rs: Some(10), expect_new: Some(5), ..SCALE },
        ScaleCase { name: "proportional scaling: 5 -> 10", replicas: 10, old_replicas: 5, new_rs: Some(2), old_rss: &[3], expect_new: Some(4), expect_old: &[6], ..SCALE },
        ScaleCase { name: "proportional scaling: 5 -> 3", replicas: 3, old_replicas: 5, new_rs: Some(2), old_rss: &[3], expect_new: Some(1), expect_old: &[2], ..SCALE },
        ScaleCase { name: "proportional scaling: 9 -> 4", replicas: 4, old_replicas: 9, new_rs: Some(8), old_rss: &[1], expect_new: Some(4), expect_old: &[0], ..SCALE },
        ScaleCase { name: "proportional scaling: 7 -> 10", replicas: 10, old_replicas: 7, new_rs: Some(2), old_rss: &[3, 2], expect_new: Some(3), expect_old: &[4, 3], ..SCALE },
        ScaleCase { name: "proportional scaling: 13 -> 8", replicas: 8, old_replicas: 13, new_rs: Some(2), old_rss: &[8, 3], expect_new: Some(1), expect_old: &[5, 2], ..SCALE },
        ScaleCase { name: "leftover distribution: 3 -> 4", replicas: 4, old_replicas: 3, new_rs: Some(1), old_rss: &[1, 1], expect_new: Some(2), expect_old: &[1, 1], ..SCALE },
        ScaleCase { name: "leftover distribution: 3 -> 2", replicas: 2, old_replicas: 3, new_rs: Some(1), old_rss: &[1, 1], expect_new: Some(1), expect_old: &[1, 0], ..SCALE },
        ScaleCase { name: "proportional scaling (no new rs): 4 -> 5", replicas: 5, old_replicas: 4, old_rss: &[2, 2], expect_old: &[3, 2], ..SCALE },
        ScaleCase { name: "proportional scaling: 6 -> 0", replicas: 0, old_replicas: 6, new_rs: Some(3), old_rss: &[2, 1], expect_new: Some(0), expect_old: &[0, 0], ..SCALE },
        ScaleCase { name: "proportional scaling: 0 -> 6", replicas: 6, old_replicas: 6, new_rs: Some(0), old_rss: &[0, 0], expect_new: Some(6), expect_old: &[0, 0], ..SCALE },
        ScaleCase { name: "failed rs update", replicas: 5, old_replicas: 5, new_rs: Some(2), old_rss: &[1, 1], expect_new: Some(2), expect_old: &[2, 1], desired_override: Some((0, 3)), ..SCALE },
        ScaleCase { name: "deployment with surge pods", replicas: 20, old_replicas: 10, surge: Some((2, 2)), new_rs: Some(6), old_rss: &[6], expect_new: Some(11), expect_old: &[11], ..SCALE },
        ScaleCase { name: "change both surge and size", replicas: 50, old_replicas: 10, surge: Some((6, 3)), new_rs: Some(5), old_rss: &[8], expect_new: Some(22), expect_old: &[34], ..SCALE },
        ScaleCase { name: "saturated but broken new replica set does not affect old pods", replicas: 2, old_replicas: 2, surge: Some((1, 1)), new_rs: Some(2), old_rss: &[1], expect_new: Some(2), expect_old: &[1], new_available: Some(0), ..SCALE },
    ];
    for case in cases {
        let (surge, old_surge) = case.surge.unwrap_or((0, 0));
        let unavailable = if case.name.starts_with("saturated") {
            1
        } else {
            0
        };
        let d = deployment(case.replicas, int(surge), int(unavailable));
        let old_d = deployment(case.old_replicas, int(old_surge), int(unavailable));
        let old_max_surge = Spec::of(&old_d).max_surge();
        let sized = |rs: ReplicaSet, idx: Option<usize>| {
            let desired = match (case.desired_override, idx) {
                (Some((i, v)), Some(j)) if i == j => v,
                _ => case.old_replicas,
            };
            with_sized_annotations(rs, desired, desired + old_max_surge)
        };
        // Old sets are listed newest first, as upstream lists them.
        let mut rss: Vec<ReplicaSet> = case
            .old_rss
            .iter()
            .enumerate()
            .map(|(i, &n)| sized(rs(&format!("old{i}"), n, 100 - 10 * i as i64), Some(i)))
            .collect();
        let old: Vec<usize> = (0..rss.len()).collect();
        let new = case.new_rs.map(|n| {
            let mut new_rs = sized(rs("new", n, 200), None);
            if let Some(a) = case.new_available {
                new_rs = with_available(new_rs, a);
            }
            rss.push(new_rs);
            rss.len() - 1
        });
        let mut p = pass(&d, rss);
        p.scale(new, &old);
        if let (Some(i), Some(expect)) = (new, case.expect_new) {
            assert_eq!(rs_replicas(&p.rss[i]), expect, "{}: new", case.name);
        }
        let got: Vec<i32> = old.iter().map(|&i| rs_replicas(&p.rss[i])).collect();
        assert_eq!(got, case.expect_old, "{}: old", case.name);
    }
}

#[test]
fn scaling_writes_the_size_annotations_with_the_new_size() {
    let d = deployment(8, int(2), int(0));
    let rss = vec![with_sized_annotations(rs("v1", 5, 0), 5, 7)];
    let mut p = pass(&d, rss);
    p.scale(None, &[0]);
    assert_eq!(rs_replicas(&p.rss[0]), 8);
    assert_eq!(annotation(&p.rss[0].metadata, DESIRED_REPLICAS), Some("8"));
    assert_eq!(annotation(&p.rss[0].metadata, MAX_REPLICAS), Some("10"));
    assert_eq!(p.updated, vec![0]);
    assert_eq!(
        p.plan.events[0].message,
        "Scaled up replica set v1 from 5 to 8"
    );
}

// === rolling update steps (upstream rolling_test.go) ===

#[test]
fn upstream_reconcile_new_replica_set_table() {
    // (replicas, surge, old, new, expected new size or None for no scaling)
    for (replicas, surge, old, new, expect) in [
        (10, 0, 10, 0, None),
        (10, 2, 10, 0, Some(2)),
        (10, 2, 5, 0, Some(7)),
        (10, 2, 10, 2, None),
        (10, 2, 2, 11, Some(10)),
    ] {
        let d = deployment(replicas, int(surge), int(0));
        let mut p = pass(&d, vec![rs("new", new, 1), rs("old", old, 0)]);
        let scaled = p.reconcile_new_replica_set(&[0, 1], 0);
        assert_eq!(scaled, expect.is_some(), "{replicas}/{surge}/{old}/{new}");
        if let Some(e) = expect {
            assert_eq!(rs_replicas(&p.rss[0]), e);
        }
    }
}

#[test]
fn upstream_reconcile_old_replica_sets_table() {
    // (replicas, unavailable, old, new, ready old, ready new, expected old size or None)
    for (replicas, unavailable, old, new, ready_old, ready_new, expect) in [
        (10, 0, 10, 0, 10, 0, Some(9)),
        (10, 2, 10, 0, 10, 0, Some(8)),
        (10, 2, 10, 0, 8, 0, Some(8)),
        (10, 2, 10, 0, 9, 0, Some(8)),
        (10, 2, 8, 2, 8, 0, None),
    ] {
        let d = deployment(replicas, int(0), int(unavailable));
        let rss = vec![
            with_available(rs("old", old, 0), ready_old),
            with_available(rs("new", new, 1), ready_new),
        ];
        let mut p = pass(&d, rss);
        let scaled = p.reconcile_old_replica_sets(&[0, 1], &[0], 1);
        assert_eq!(scaled, expect.is_some(), "case old={old} ready={ready_old}");
        if let Some(e) = expect {
            assert_eq!(
                rs_replicas(&p.rss[0]),
                e,
                "case old={old} ready={ready_old}"
            );
        }
    }
}

#[test]
fn upstream_cleanup_unhealthy_replicas_table() {
    // (old, ready, max cleanup, expected cleanup)
    for (old, ready, max, expect) in [(10, 8, 1, 1), (10, 8, 3, 2), (10, 8, 0, 0), (10, 10, 3, 0)] {
        let d = deployment(10, int(2), int(2));
        let mut p = pass(&d, vec![with_available(rs("old", old, 0), ready)]);
        let cleaned = p.cleanup_unhealthy_replicas(&[0], max).ok();
        assert_eq!(cleaned, Some(expect), "old={old} ready={ready} max={max}");
        assert_eq!(rs_replicas(&p.rss[0]), old - expect);
    }
}

#[test]
fn upstream_scale_down_old_replica_sets_for_rolling_update_table() {
    // (replicas, unavailable, ready, old, expected old size or None)
    for (replicas, unavailable, ready, old, expect) in [
        (10, 0, 10, 10, Some(9)),
        (10, 2, 10, 10, Some(8)),
        (10, 2, 8, 10, None),
        (10, 2, 10, 0, None),
        (10, 2, 1, 10, None),
    ] {
        let d = deployment(replicas, int(0), int(unavailable));
        let mut p = pass(&d, vec![with_available(rs("old", old, 0), ready)]);
        let scaled = p
            .scale_down_old_replica_sets_for_rolling_update(&[0], &[0])
            .ok();
        assert_eq!(
            scaled.is_some_and(|n| n > 0),
            expect.is_some(),
            "ready={ready} old={old}"
        );
        if let Some(e) = expect {
            assert_eq!(rs_replicas(&p.rss[0]), e);
        }
    }
}

// === a small cluster: applies plans and plays the ReplicaSet controller and kubelet ===

struct Cluster {
    d: Deployment,
    rss: Vec<ReplicaSet>,
    now: i64,
    /// Pods become available this many steps after their ReplicaSet grew (None: never).
    ready_after: Option<u32>,
    pending: Vec<(String, i32, u32)>,
    log: Vec<Plan>,
}

impl Cluster {
    fn new(d: Deployment) -> Self {
        Self {
            d,
            rss: Vec::new(),
            now: 0,
            ready_after: Some(1),
            pending: Vec::new(),
            log: Vec::new(),
        }
    }

    fn apply(&mut self, plan: &Plan) {
        for w in &plan.writes {
            match w {
                Write::CreateReplicaSet(rs) => {
                    let mut rs = rs.clone();
                    rs.metadata.uid = Some(format!(
                        "uid-{}",
                        rs.metadata.name.clone().unwrap_or_default()
                    ));
                    rs.metadata.creation_timestamp = Some(Time(at(self.now)));
                    rs.metadata.generation = Some(1);
                    self.rss.push(rs);
                }
                Write::UpdateReplicaSet(new) => {
                    let cur = self
                        .rss
                        .iter_mut()
                        .find(|r| r.metadata.name == new.metadata.name)
                        .expect("updated ReplicaSet exists");
                    if cur.spec != new.spec {
                        cur.metadata.generation = Some(cur.metadata.generation.unwrap_or(0) + 1);
                    }
                    cur.spec = new.spec.clone();
                    cur.metadata.annotations = new.metadata.annotations.clone();
                }
                Write::DeleteReplicaSet { name, .. } => {
                    self.rss
                        .retain(|r| r.metadata.name.as_deref() != Some(name.as_str()));
                }
                Write::UpdateStatus(d) => {
                    self.d.status = d.status.clone();
                    self.d.metadata.annotations = d.metadata.annotations.clone();
                }
            }
        }
    }

    /// The ReplicaSet controller and kubelet: pods exist at once, become available later.
    fn run_pods(&mut self) {
        for rs in &mut self.rss {
            let name = rs.metadata.name.clone().unwrap_or_default();
            let want = rs_replicas(rs);
            let status = rs.status.get_or_insert_with(ReplicaSetStatus::default);
            let available = status.available_replicas.unwrap_or(0);
            status.replicas = want;
            status.observed_generation = rs.metadata.generation;
            status.terminating_replicas = Some(0);
            if available > want {
                status.available_replicas = nz(want);
                status.ready_replicas = nz(want);
            } else if available < want && !self.pending.iter().any(|(n, ..)| *n == name) {
                if let Some(steps) = self.ready_after {
                    self.pending.push((name.clone(), want, steps));
                }
            }
        }
        let mut done = Vec::new();
        for (i, (name, _, steps)) in self.pending.iter_mut().enumerate() {
            if *steps == 0 {
                done.push(i);
                let Some(rs) = self
                    .rss
                    .iter_mut()
                    .find(|r| r.metadata.name.as_deref() == Some(name))
                else {
                    continue;
                };
                let want = rs_replicas(rs);
                let status = rs.status.get_or_insert_with(ReplicaSetStatus::default);
                status.available_replicas = nz(want);
                status.ready_replicas = nz(want);
            } else {
                *steps -= 1;
            }
        }
        for i in done.into_iter().rev() {
            self.pending.remove(i);
        }
    }

    fn step(&mut self) -> Plan {
        self.now += 1;
        let plan = sync(&self.d, &self.rss, &[], at(self.now));
        self.apply(&plan);
        self.run_pods();
        self.log.push(plan.clone());
        plan
    }

    fn sizes(&self) -> Vec<(String, i32, i32)> {
        self.rss
            .iter()
            .map(|r| {
                (
                    r.metadata.name.clone().unwrap_or_default(),
                    rs_replicas(r),
                    rs_available(r),
                )
            })
            .collect()
    }

    fn status(&self) -> DeploymentStatus {
        self.d.status.clone().unwrap_or_default()
    }

    fn progressing(&self) -> (String, String) {
        let s = self.status();
        let c = condition(&s, reason::PROGRESSING)
            .cloned()
            .unwrap_or_default();
        (c.status.unwrap_or_default(), c.reason.unwrap_or_default())
    }

    fn run_until_quiet(&mut self, max_steps: usize) {
        for _ in 0..max_steps {
            let plan = self.step();
            if plan.writes.is_empty() && self.pending.is_empty() {
                return;
            }
        }
        panic!(
            "no steady state after {max_steps} steps: {:?}",
            self.sizes()
        );
    }

    fn new_rs_name(&self) -> String {
        format!("demo-{}", pod_template_hash(&self.d.spec.template, None))
    }
}

fn set_image(d: &mut Deployment, image: &str) {
    d.spec.template = template(image);
    d.metadata.generation = Some(d.metadata.generation.unwrap_or(0) + 1);
}

#[test]
fn a_new_deployment_gets_a_hash_named_replica_set_and_the_first_status() {
    let d = deployment(5, pct("25%"), pct("25%"));
    let plan = sync(&d, &[], &[], at(1));
    let hash = pod_template_hash(&d.spec.template, None);
    let [Write::CreateReplicaSet(rs), Write::UpdateStatus(written)] = plan.writes.as_slice() else {
        panic!("unexpected writes: {:#?}", plan.writes);
    };
    assert_eq!(
        rs.metadata.name.as_deref(),
        Some(format!("demo-{hash}").as_str())
    );
    assert_eq!(rs.spec.replicas, Some(5), "surge allows all five at once");
    for labels in [
        rs.metadata.labels.as_ref(),
        rs.spec.selector.match_labels.as_ref(),
        rs.spec
            .template
            .as_ref()
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.labels.as_ref()),
    ] {
        assert_eq!(labels.and_then(|l| l.get(POD_TEMPLATE_HASH)), Some(&hash));
    }
    let owner = &rs.metadata.owner_references.as_ref().expect("owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("Deployment", "d-uid")
    );
    assert_eq!(
        (owner.controller, owner.block_owner_deletion),
        (Some(true), Some(true))
    );
    assert_eq!(annotation(&rs.metadata, REVISION), Some("1"));
    assert_eq!(annotation(&rs.metadata, DESIRED_REPLICAS), Some("5"));
    assert_eq!(annotation(&rs.metadata, MAX_REPLICAS), Some("7"));

    assert_eq!(annotation(&written.metadata, REVISION), Some("1"));
    let status = written.status.clone().expect("status");
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(status.replicas, None, "no pods yet");
    assert_eq!(
        status.unavailable_replicas,
        Some(5),
        "counted from spec, as upstream"
    );
    let progressing = condition(&status, reason::PROGRESSING).expect("Progressing");
    assert_eq!(progressing.status.as_deref(), Some("True"));
    assert_eq!(progressing.reason.as_deref(), Some(reason::NEW_RS_CREATED));
    assert_eq!(
        progressing.message.clone(),
        Some(format!("Created new replica set \"demo-{hash}\""))
    );
    let available = condition(&status, reason::AVAILABLE).expect("Available");
    assert_eq!(available.status.as_deref(), Some("False"));
    assert_eq!(available.reason.as_deref(), Some(reason::MIN_UNAVAILABLE));
    assert_eq!(
        plan.events[0].message,
        format!("Scaled up replica set demo-{hash} from 0 to 5")
    );
}

#[test]
fn a_deployment_completes_with_new_replica_set_available() {
    let mut c = Cluster::new(deployment(5, pct("25%"), pct("25%")));
    c.run_until_quiet(20);
    let s = c.status();
    assert_eq!(
        (
            s.replicas,
            s.updated_replicas,
            s.ready_replicas,
            s.available_replicas,
            s.unavailable_replicas
        ),
        (Some(5), Some(5), Some(5), Some(5), None)
    );
    assert_eq!(
        c.progressing(),
        ("True".into(), reason::NEW_RS_AVAILABLE.into())
    );
    let p = condition(&s, reason::PROGRESSING).and_then(|c| c.message.clone());
    assert_eq!(
        p,
        Some(format!(
            "ReplicaSet \"{}\" has successfully progressed.",
            c.new_rs_name()
        ))
    );
    let a = condition(&s, reason::AVAILABLE).expect("Available");
    assert_eq!(
        (a.status.as_deref(), a.reason.as_deref()),
        (Some("True"), Some(reason::MIN_AVAILABLE))
    );
    assert!(deployment_complete(&c.d, 5, &s));
}

#[test]
fn rolling_updates_stay_within_surge_and_unavailability() {
    // (replicas, maxSurge, maxUnavailable, resolved surge, resolved unavailable)
    for (replicas, surge, unavailable, max_surge, max_unavailable) in [
        (5, pct("25%"), pct("25%"), 2, 1),
        (5, int(1), int(0), 1, 0),
        (5, int(0), int(1), 0, 1),
        (10, pct("30%"), pct("0%"), 3, 0),
        (4, pct("50%"), pct("50%"), 2, 2),
        (1, pct("25%"), pct("25%"), 1, 0),
    ] {
        let mut c = Cluster::new(deployment(replicas, surge.clone(), unavailable.clone()));
        c.run_until_quiet(30);
        set_image(&mut c.d, "registry.example/version:v2");
        let mut saw_two_active = false;
        for _ in 0..60 {
            let plan = c.step();
            let total: i32 = c.rss.iter().map(rs_replicas).sum();
            let available: i32 = c.rss.iter().map(rs_available).sum();
            assert!(
                total <= replicas + max_surge,
                "{replicas}/{surge:?}: {:?}",
                c.sizes()
            );
            assert!(
                available >= replicas - max_unavailable,
                "{replicas}/{unavailable:?}: availability dropped: {:?}",
                c.sizes()
            );
            saw_two_active |= c.rss.iter().filter(|r| rs_replicas(r) > 0).count() == 2;
            if plan.writes.is_empty() && c.pending.is_empty() {
                break;
            }
        }
        assert!(
            saw_two_active || replicas == 1,
            "a rolling update overlaps versions"
        );
        let new_name = c.new_rs_name();
        for (name, size, _) in c.sizes() {
            let expect = if name == new_name { replicas } else { 0 };
            assert_eq!(size, expect, "{replicas}/{surge:?}: {name}");
        }
        assert_eq!(
            c.progressing(),
            ("True".into(), reason::NEW_RS_AVAILABLE.into())
        );
        let s = c.status();
        assert_eq!(
            (s.updated_replicas, s.replicas),
            (Some(replicas), Some(replicas))
        );
    }
}

#[test]
fn rolling_update_statuses_pass_through_replica_set_updated() {
    let mut c = Cluster::new(deployment(5, pct("25%"), pct("25%")));
    c.run_until_quiet(20);
    set_image(&mut c.d, "registry.example/version:v2");
    let mut reasons = Vec::new();
    for _ in 0..30 {
        c.step();
        let r = c.progressing().1;
        if reasons.last() != Some(&r) {
            reasons.push(r);
        }
    }
    assert_eq!(
        reasons,
        [
            reason::NEW_RS_CREATED,
            reason::RS_UPDATED,
            reason::NEW_RS_AVAILABLE
        ]
    );
    assert_eq!(annotation(&c.d.metadata, REVISION), Some("2"));
}

#[test]
fn recreate_never_runs_two_versions_at_once() {
    let mut d = deployment(3, int(0), int(0));
    d.spec.strategy = Some(DeploymentStrategy {
        type_: Some("Recreate".into()),
        rolling_update: None,
    });
    let mut c = Cluster::new(d);
    c.run_until_quiet(20);
    set_image(&mut c.d, "registry.example/version:v2");
    let mut saw_zero = false;
    for _ in 0..30 {
        let plan = c.step();
        let active: Vec<_> = c.rss.iter().filter(|r| rs_status_replicas(r) > 0).collect();
        assert!(active.len() <= 1, "two versions running: {:?}", c.sizes());
        saw_zero |= active.is_empty();
        if plan.writes.is_empty() && c.pending.is_empty() {
            break;
        }
    }
    assert!(saw_zero, "old pods go before new ones come");
    let s = c.status();
    assert_eq!(
        (s.updated_replicas, s.available_replicas),
        (Some(3), Some(3))
    );
    assert_eq!(
        c.progressing(),
        ("True".into(), reason::NEW_RS_AVAILABLE.into())
    );
}

#[test]
fn pods_that_never_become_ready_exceed_the_progress_deadline() {
    let mut d = deployment(2, pct("25%"), pct("25%"));
    d.spec.progress_deadline_seconds = Some(5);
    let mut c = Cluster::new(d);
    c.ready_after = None;
    let mut requeues = Vec::new();
    for _ in 0..12 {
        let plan = c.step();
        requeues.extend(plan.requeue_at);
    }
    let s = c.status();
    let p = condition(&s, reason::PROGRESSING).expect("Progressing");
    assert_eq!(p.status.as_deref(), Some("False"));
    assert_eq!(p.reason.as_deref(), Some(reason::TIMED_OUT));
    assert_eq!(
        p.message.clone(),
        Some(format!(
            "ReplicaSet \"{}\" has timed out progressing.",
            c.new_rs_name()
        ))
    );
    assert!(
        !requeues.is_empty(),
        "the controller asks to look again at the deadline"
    );
    let a = condition(&s, reason::AVAILABLE).expect("Available");
    assert_eq!(a.status.as_deref(), Some("False"));
    // Once timed out, it stays timed out and asks for no more wake-ups.
    let plan = c.step();
    assert_eq!(plan.requeue_at, None);
    assert_eq!(c.progressing().1, reason::TIMED_OUT);
}

#[test]
fn a_paused_deployment_creates_no_replica_set_but_still_scales() {
    let mut c = Cluster::new(deployment(5, pct("25%"), pct("25%")));
    c.run_until_quiet(20);
    c.d.spec.paused = Some(true);
    c.d.metadata.generation = Some(2);
    c.step();
    assert_eq!(c.progressing(), ("Unknown".into(), reason::PAUSED.into()));
    let msg = condition(&c.status(), reason::PROGRESSING).and_then(|p| p.message.clone());
    assert_eq!(msg.as_deref(), Some("Deployment is paused"));

    set_image(&mut c.d, "registry.example/version:v2");
    c.d.spec.replicas = Some(8);
    c.run_until_quiet(20);
    assert_eq!(
        c.rss.len(),
        1,
        "no new ReplicaSet while paused: {:?}",
        c.sizes()
    );
    assert_eq!(
        rs_replicas(&c.rss[0]),
        8,
        "scaling applies to the existing ReplicaSet"
    );
    let s = c.status();
    assert_eq!(s.observed_generation, Some(3));
    assert_eq!(
        s.updated_replicas, None,
        "the new template has no ReplicaSet yet"
    );
    assert_eq!(c.progressing(), ("Unknown".into(), reason::PAUSED.into()));

    c.d.spec.paused = Some(false);
    c.d.metadata.generation = Some(4);
    c.step();
    assert_eq!(c.rss.len(), 2, "resuming starts the rollout");
    c.run_until_quiet(40);
    assert_eq!(
        c.progressing(),
        ("True".into(), reason::NEW_RS_AVAILABLE.into())
    );
    assert_eq!(c.status().updated_replicas, Some(8));
}

#[test]
fn pausing_mid_rollout_scales_both_replica_sets_proportionally() {
    let mut c = Cluster::new(deployment(10, int(3), int(0)));
    c.run_until_quiet(20);
    set_image(&mut c.d, "registry.example/version:v2");
    c.step(); // new RS at 3, nothing available yet
    c.d.spec.paused = Some(true);
    c.d.spec.replicas = Some(20);
    c.d.metadata.generation = Some(3);
    let plan = c.step();
    assert!(!plan
        .writes
        .iter()
        .any(|w| matches!(w, Write::CreateReplicaSet(_))));
    let sizes: BTreeMap<String, i32> = c.sizes().into_iter().map(|(n, s, _)| (n, s)).collect();
    // 13 pods sized for max 13 become 23 (20 + surge 3): 10 → 18 (rounded 17.7), 3 → 5.
    assert_eq!(sizes[&c.new_rs_name()], 5, "{sizes:?}");
    assert_eq!(sizes.values().sum::<i32>(), 23, "{sizes:?}");
}

#[test]
fn a_returning_template_bumps_the_old_replica_sets_revision() {
    let mut c = Cluster::new(deployment(2, pct("25%"), pct("25%")));
    c.run_until_quiet(20);
    let v1 = c.new_rs_name();
    set_image(&mut c.d, "registry.example/version:v2");
    c.run_until_quiet(30);
    set_image(&mut c.d, "registry.example/version:v1");
    c.run_until_quiet(30);
    assert_eq!(c.rss.len(), 2, "the v1 ReplicaSet is reused, not recreated");
    let v1_rs = c
        .rss
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some(v1.as_str()))
        .expect("v1");
    assert_eq!(annotation(&v1_rs.metadata, REVISION), Some("3"));
    assert_eq!(annotation(&v1_rs.metadata, REVISION_HISTORY), Some("1"));
    assert_eq!(rs_replicas(v1_rs), 2);
    assert_eq!(annotation(&c.d.metadata, REVISION), Some("3"));
    assert_eq!(
        c.progressing(),
        ("True".into(), reason::NEW_RS_AVAILABLE.into())
    );
}

#[test]
fn deployment_annotations_reach_the_new_replica_set_but_not_old_ones() {
    let mut c = Cluster::new(deployment(1, pct("25%"), pct("25%")));
    c.run_until_quiet(10);
    let v1 = c.new_rs_name();
    let annotations = c.d.metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(
        "sandbox.higress-canary.io/never-ready".into(),
        "true".into(),
    );
    annotations.insert(
        "kubectl.kubernetes.io/last-applied-configuration".into(),
        "{}".into(),
    );
    set_image(&mut c.d, "registry.example/version:v2");
    c.step();
    let v2 = c.new_rs_name();
    fn get(c: &Cluster, name: &str) -> Option<ReplicaSet> {
        c.rss
            .iter()
            .find(|r| r.metadata.name.as_deref() == Some(name))
            .cloned()
    }
    let new_rs = get(&c, &v2).expect("new RS");
    assert_eq!(
        annotation(&new_rs.metadata, "sandbox.higress-canary.io/never-ready"),
        Some("true")
    );
    assert_eq!(
        annotation(
            &new_rs.metadata,
            "kubectl.kubernetes.io/last-applied-configuration"
        ),
        None
    );
    let old_rs = get(&c, &v1).expect("old RS");
    assert_eq!(
        annotation(&old_rs.metadata, "sandbox.higress-canary.io/never-ready"),
        None
    );

    // Annotating later reaches the current new ReplicaSet too.
    let annotations = c.d.metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert("sandbox.higress-canary.io/error-rate".into(), "0.5".into());
    c.step();
    let new_rs = get(&c, &v2).expect("new RS");
    assert_eq!(
        annotation(&new_rs.metadata, "sandbox.higress-canary.io/error-rate"),
        Some("0.5")
    );
}

#[test]
fn old_replica_sets_beyond_the_history_limit_are_deleted() {
    // (old sets as (spec, status replicas), limit, expected deletions) from upstream.
    for (old, limit, expect) in [
        (vec![(0, 0), (0, 0), (0, 0)], 1, 2),
        (vec![(0, 0), (0, 1), (1, 0), (1, 1)], 0, 1),
        (vec![(0, 0), (0, 0)], 0, 2),
        (vec![(1, 1), (1, 1)], 0, 0),
        (vec![(0, 0), (0, 0), (0, 0)], i32::MAX, 0),
    ] {
        let mut d = deployment(1, int(1), int(0));
        d.spec.revision_history_limit = Some(limit);
        let rss: Vec<ReplicaSet> = old
            .iter()
            .enumerate()
            .map(|(i, &(spec, status))| {
                let mut r = rs(&format!("foo-{i}"), spec, i as i64);
                r.status = Some(ReplicaSetStatus {
                    replicas: status,
                    observed_generation: Some(1),
                    ..Default::default()
                });
                r
            })
            .collect();
        let idx: Vec<usize> = (0..rss.len()).collect();
        let mut p = pass(&d, rss);
        p.cleanup_deployment(&idx);
        assert_eq!(p.deleted.len(), expect, "{old:?} limit {limit}");
    }
}

#[test]
fn a_hash_collision_bumps_the_collision_count() {
    let d = deployment(2, pct("25%"), pct("25%"));
    let hash = pod_template_hash(&d.spec.template, None);
    // Ours, with the name the template hashes to, but another template.
    let squatter = rs(&format!("demo-{hash}"), 0, 0);
    let plan = sync(&d, &[squatter], &[], at(5));
    assert!(!plan
        .writes
        .iter()
        .any(|w| matches!(w, Write::CreateReplicaSet(_))));
    let Some(Write::UpdateStatus(written)) = plan.writes.last() else {
        panic!("status write expected: {:#?}", plan.writes);
    };
    assert_eq!(
        written.status.as_ref().and_then(|s| s.collision_count),
        Some(1)
    );
    let mut d = d.clone();
    d.status = written.status.clone();
    let plan = sync(&d, &[rs(&format!("demo-{hash}"), 0, 0)], &[], at(6));
    let Some(Write::CreateReplicaSet(rs)) = plan.writes.first() else {
        panic!("create expected: {:#?}", plan.writes);
    };
    assert_eq!(
        rs.metadata.name.clone(),
        Some(format!(
            "demo-{}",
            pod_template_hash(&d.spec.template, Some(1))
        ))
    );
}

#[test]
fn replica_sets_of_other_deployments_are_ignored() {
    let d = deployment(2, pct("25%"), pct("25%"));
    let mut foreign = rs("other-abc", 3, 0);
    if let Some(refs) = foreign.metadata.owner_references.as_mut() {
        refs[0].uid = "someone-else".into();
    }
    let plan = sync(&d, &[foreign], &[], at(1));
    assert!(matches!(
        plan.writes.first(),
        Some(Write::CreateReplicaSet(_))
    ));
    assert!(!plan
        .writes
        .iter()
        .any(|w| matches!(w, Write::UpdateReplicaSet(_))));
}

#[test]
fn a_steady_deployment_needs_no_writes() {
    let mut c = Cluster::new(deployment(3, pct("25%"), pct("25%")));
    c.run_until_quiet(20);
    for secs in [1, 60, 6000] {
        let plan = sync(&c.d, &c.rss, &[], at(c.now + secs));
        assert_eq!(plan, Plan::default(), "at +{secs}s");
    }
}
