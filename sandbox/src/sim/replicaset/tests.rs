use super::*;
use k8s_openapi::{
    api::{
        apps::v1::ReplicaSetSpec,
        core::v1::{Container, PodCondition, PodSpec, PodStatus, PodTemplateSpec},
    },
    apimachinery::pkg::apis::meta::v1::{OwnerReference, Time},
};

const T0: i64 = 1_700_000_000;

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(T0 + secs).expect("valid time")
}

fn replica_set(replicas: i32, min_ready: i32) -> ReplicaSet {
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some("demo-abc".into()),
            namespace: Some("default".into()),
            uid: Some("rs-uid".into()),
            generation: Some(2),
            ..Default::default()
        },
        spec: ReplicaSetSpec {
            replicas: Some(replicas),
            min_ready_seconds: nz(min_ready),
            template: Some(PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some([("app".to_owned(), "demo".to_owned())].into()),
                    annotations: Some([("team".to_owned(), "a".to_owned())].into()),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "main".into(),
                        image: Some("registry.example/version:v1".into()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            }),
            ..Default::default()
        },
        status: None,
    }
}

/// A pod of `demo-abc`, created at `created`, ready since `ready` (if any).
fn pod(name: &str, created: i64, ready: Option<i64>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            uid: Some(format!("{name}-uid")),
            creation_timestamp: Some(Time(at(created))),
            labels: Some([("app".to_owned(), "demo".to_owned())].into()),
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                name: "demo-abc".into(),
                uid: "rs-uid".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        spec: Some(PodSpec::default()),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready.is_some() { "True" } else { "False" }.into(),
                last_transition_time: Some(Time(at(ready.unwrap_or(created)))),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

fn deleted(plan: &Plan) -> Vec<String> {
    plan.writes
        .iter()
        .filter_map(|w| match w {
            Write::DeletePod { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect()
}

fn status(plan: &Plan) -> Option<ReplicaSetStatus> {
    plan.writes.iter().find_map(|w| match w {
        Write::UpdateStatus(rs) => rs.status.clone(),
        _ => None,
    })
}

#[test]
fn missing_pods_are_created_from_the_template() {
    let plan = sync(
        &replica_set(3, 0),
        &[pod("demo-abc-aaaaa", 0, Some(1))],
        at(10),
    );
    let created: Vec<&Pod> = plan
        .writes
        .iter()
        .filter_map(|w| match w {
            Write::CreatePod(p) => Some(p.as_ref()),
            _ => None,
        })
        .collect();
    assert_eq!(created.len(), 2);
    let p = created[0];
    assert_eq!(p.metadata.generate_name.as_deref(), Some("demo-abc-"));
    assert_eq!(p.metadata.name, None, "the caller picks the suffix");
    assert_eq!(p.metadata.namespace.as_deref(), Some("default"));
    assert_eq!(
        p.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("app"))
            .map(String::as_str),
        Some("demo")
    );
    assert_eq!(
        p.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("team"))
            .map(String::as_str),
        Some("a")
    );
    let owner = &p.metadata.owner_references.as_ref().expect("owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
        ("ReplicaSet", "demo-abc", "rs-uid")
    );
    assert_eq!(owner.controller, Some(true));
    assert_eq!(
        p.spec.as_ref().map(|s| s.containers[0].name.as_str()),
        Some("main")
    );
}

#[test]
fn failure_knobs_of_the_replica_set_reach_new_pods() {
    let mut rs = replica_set(1, 0);
    rs.metadata.annotations = Some(
        [
            (NEVER_READY_ANNOTATION.to_owned(), "true".to_owned()),
            (ERROR_RATE_ANNOTATION.to_owned(), "0.2".to_owned()),
            (
                "deployment.kubernetes.io/revision".to_owned(),
                "3".to_owned(),
            ),
        ]
        .into(),
    );
    let pod = pod_from_template(&rs);
    let annotations = pod.metadata.annotations.expect("annotations");
    assert_eq!(
        annotations.get(NEVER_READY_ANNOTATION).map(String::as_str),
        Some("true")
    );
    assert_eq!(
        annotations.get(ERROR_RATE_ANNOTATION).map(String::as_str),
        Some("0.2")
    );
    assert_eq!(
        annotations.get("team").map(String::as_str),
        Some("a"),
        "template annotations too"
    );
    assert!(!annotations.contains_key("deployment.kubernetes.io/revision"));
}

#[test]
fn scale_down_deletes_unready_then_most_recently_ready_then_newest() {
    // (pods as (name, created, ready since), replicas, expected deletions in order)
    type Row = (
        Vec<(&'static str, i64, Option<i64>)>,
        i32,
        Vec<&'static str>,
    );
    let cases: [Row; 4] = [
        (
            vec![("old-ready", 0, Some(1)), ("new-unready", 5, None)],
            1,
            vec!["new-unready"],
        ),
        (
            vec![("a", 0, Some(10)), ("b", 1, Some(3)), ("c", 2, Some(5))],
            1,
            vec!["a", "c"],
        ),
        (
            vec![("a", 0, None), ("b", 3, None), ("c", 1, None)],
            2,
            vec!["b"],
        ),
        (
            vec![("a", 0, Some(1)), ("b", 0, Some(1))],
            0,
            vec!["a", "b"],
        ),
    ];
    for (pods, replicas, expect) in cases {
        let pods: Vec<Pod> = pods.iter().map(|&(n, c, r)| pod(n, c, r)).collect();
        let plan = sync(&replica_set(replicas, 0), &pods, at(20));
        assert_eq!(deleted(&plan), expect, "replicas {replicas}");
    }
}

#[test]
fn deletion_cost_protects_pods() {
    let mut cheap = pod("cheap", 0, Some(1));
    cheap.metadata.annotations = Some([(POD_DELETION_COST.to_owned(), "-5".to_owned())].into());
    let plan = sync(
        &replica_set(1, 0),
        &[pod("recent", 9, Some(10)), cheap],
        at(20),
    );
    assert_eq!(deleted(&plan), ["cheap"]);
}

#[test]
fn status_counts_ready_available_labeled_and_terminating_pods() {
    let mut stray = pod("relabeled", 0, Some(1));
    stray.metadata.labels = None;
    let mut going = pod("going", 0, Some(1));
    going.metadata.deletion_timestamp = Some(Time(at(15)));
    let mut failed = pod("failed", 0, None);
    if let Some(s) = failed.status.as_mut() {
        s.phase = Some("Failed".into());
    }
    let pods = [
        pod("a", 0, Some(1)),
        pod("b", 0, None),
        stray,
        going,
        failed,
    ];
    let plan = sync(&replica_set(3, 0), &pods, at(20));
    assert!(deleted(&plan).is_empty() && plan.writes.len() == 1);
    let s = status(&plan).expect("status write");
    assert_eq!(s.replicas, 3, "terminating and failed pods are not counted");
    assert_eq!(s.fully_labeled_replicas, Some(2));
    assert_eq!(s.ready_replicas, Some(2));
    assert_eq!(s.available_replicas, Some(2));
    assert_eq!(s.terminating_replicas, Some(1));
    assert_eq!(s.observed_generation, Some(2));
}

#[test]
fn min_ready_seconds_delays_availability_and_asks_for_a_wake_up() {
    let pods = [pod("a", 0, Some(1)), pod("b", 0, Some(18))];
    let plan = sync(&replica_set(2, 5), &pods, at(20));
    let s = status(&plan).expect("status");
    assert_eq!((s.ready_replicas, s.available_replicas), (Some(2), Some(1)));
    assert_eq!(plan.requeue_at, Some(at(23) + Duration::from_millis(10)));
    let later = sync(&replica_set(2, 5), &pods, at(24));
    assert_eq!(status(&later).and_then(|s| s.available_replicas), Some(2));
}

#[test]
fn a_settled_replica_set_needs_no_writes() {
    let pods = [pod("a", 0, Some(1)), pod("b", 0, Some(1))];
    let mut rs = replica_set(2, 0);
    rs.status = status(&sync(&rs, &pods, at(20)));
    assert_eq!(sync(&rs, &pods, at(21)), Plan::default());
}

#[test]
fn pods_of_other_owners_are_ignored_and_deleting_sets_create_nothing() {
    let mut foreign = pod("foreign", 0, Some(1));
    if let Some(refs) = foreign.metadata.owner_references.as_mut() {
        refs[0].uid = "other".into();
    }
    let plan = sync(&replica_set(1, 0), &[foreign.clone()], at(5));
    assert!(matches!(plan.writes.first(), Some(Write::CreatePod(_))));
    let mut rs = replica_set(1, 0);
    rs.metadata.deletion_timestamp = Some(Time(at(4)));
    let plan = sync(&rs, &[foreign], at(5));
    assert!(!plan.writes.iter().any(|w| matches!(w, Write::CreatePod(_))));
}
