use std::collections::BTreeMap;

use super::*;
use crate::gateway::xds::ResourceKey;

use ResourceKey::{Clusters, Endpoints, Extension, Listeners, Routes};

fn state(entries: &[(ResourceKey, &str)]) -> BTreeMap<ResourceKey, String> {
    entries
        .iter()
        .map(|(k, v)| (k.clone(), v.to_string()))
        .collect()
}

fn eds(name: &str) -> ResourceKey {
    Endpoints(name.to_string())
}

fn ecds(name: &str) -> ResourceKey {
    Extension(name.to_string())
}

fn base() -> BTreeMap<ResourceKey, String> {
    state(&[
        (Listeners, "l1"),
        (Routes, "r1"),
        (Clusters, "c1"),
        (eds("a"), "a1"),
        (ecds("p"), "p1"),
    ])
}

#[test]
fn identical_content_writes_nothing() {
    assert_eq!(plan(&base(), &base()), vec![]);
}

#[test]
fn each_kind_of_change_touches_only_its_own_file() {
    let with = |key: ResourceKey, content: &str| {
        let mut s = base();
        s.insert(key, content.to_string());
        s
    };
    let cases = [
        (
            "plugin config edit",
            with(ecds("p"), "p2"),
            vec![Step::Write(ecds("p"))],
        ),
        (
            "endpoint change",
            with(eds("a"), "a2"),
            vec![Step::Write(eds("a"))],
        ),
        (
            "route change",
            with(Routes, "r2"),
            vec![Step::Write(Routes)],
        ),
        (
            "cluster change",
            with(Clusters, "c2"),
            vec![Step::Write(Clusters)],
        ),
        (
            "filter chain change",
            with(Listeners, "l2"),
            vec![Step::Write(Listeners)],
        ),
    ];
    for (name, new, want) in cases {
        assert_eq!(plan(&base(), &new), want, "{name}");
    }
}

#[test]
fn new_clusters_reach_envoy_before_routes_that_use_them() {
    let mut new = base();
    new.insert(eds("b"), "b1".into());
    new.insert(Clusters, "c2".into());
    new.insert(Routes, "r2".into());
    assert_eq!(
        plan(&base(), &new),
        vec![
            Step::Write(eds("b")),
            Step::Write(Clusters),
            Step::AwaitAck(Clusters),
            Step::Write(Routes),
        ]
    );
}

#[test]
fn routes_leave_a_cluster_before_it_is_removed() {
    let mut new = base();
    new.remove(&eds("a"));
    new.insert(Clusters, "c2".into());
    new.insert(Routes, "r2".into());
    assert_eq!(
        plan(&base(), &new),
        vec![
            Step::Write(Routes),
            Step::AwaitAck(Routes),
            Step::Write(Clusters),
            Step::Remove(eds("a")),
        ]
    );
}

#[test]
fn a_new_filter_gets_its_ecds_file_before_the_listener_names_it() {
    let mut new = base();
    new.insert(ecds("q"), "q1".into());
    new.insert(Listeners, "l2".into());
    assert_eq!(
        plan(&base(), &new),
        vec![Step::Write(ecds("q")), Step::Write(Listeners)]
    );

    let mut gone = base();
    gone.remove(&ecds("p"));
    gone.insert(Listeners, "l2".into());
    assert_eq!(
        plan(&base(), &gone),
        vec![Step::Write(Listeners), Step::Remove(ecds("p"))]
    );
}

#[test]
fn the_first_apply_writes_everything_in_dependency_order() {
    let empty = state(&[(Listeners, "[]"), (Clusters, "[]")]);
    assert_eq!(
        plan(&empty, &base()),
        vec![
            Step::Write(eds("a")),
            Step::Write(ecds("p")),
            Step::Write(Clusters),
            Step::AwaitAck(Clusters),
            Step::Write(Routes),
            Step::Write(Listeners),
        ]
    );
}
