//! Reads the cluster a few times a second for the live view and the chart: the current
//! story's Rollout (phase, step, state, the rule it asks of the gateway) and the pods per
//! version. Read-only; the director never relies on it.

use std::{collections::BTreeMap, time::Duration};

use higress_canary::{
    analysis::describe_check,
    crd::{Rollout, StepState},
};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    api::{Api, ListParams},
    Client,
};
use tokio::{sync::watch, task::JoinHandle};

use crate::{
    board::{AnalysisView, Board, RolloutView, World},
    story::{describe_rule, expected_shares, Client as TrafficClient},
};

const EVERY: Duration = Duration::from_millis(200);

/// Starts polling; stop it by sending `true` on the returned sender.
pub fn start(
    client: Client,
    namespace: &str,
    board: Board,
    clients: &'static [TrafficClient],
) -> (watch::Sender<bool>, JoinHandle<()>) {
    let (stop, mut stopped) = watch::channel(false);
    let rollouts: Api<Rollout> = Api::namespaced(client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(client, namespace);
    let task = tokio::spawn(async move {
        while !*stopped.borrow() {
            let story = board.lock().story.clone();
            let mut world = World::default();
            let mut configured = None;
            if let Some(story) = &story {
                // The time of the read, not of the end of the loop, for the chart.
                let at = board.elapsed();
                match rollouts.get_opt(&story.rollout).await {
                    Ok(Some(rollout)) => {
                        world.rollout = Some(view(&rollout));
                        configured = Some((at, configured_shares(&rollout, clients)));
                    }
                    Ok(None) => {}
                    Err(e) => world.error = Some(format!("reading the Rollout: {e}")),
                }
            }
            let mut names = Vec::new();
            match pods.list(&ListParams::default()).await {
                Ok(list) => {
                    world.pods = pods_per_version(&list.items);
                    names = list.items.iter().filter_map(pod_version).collect();
                }
                Err(e) => world.error = Some(format!("listing pods: {e}")),
            }
            board.set_world(world, names);
            if let (Some(story), Some((at, shares))) = (story, configured) {
                board.configured(at, story.index, shares);
            }
            let _ = tokio::time::timeout(EVERY, stopped.changed()).await;
        }
    });
    (stop, task)
}

/// The image tag of a pod's first container.
fn tag_of(pod: &Pod) -> &str {
    let image = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.as_deref())
        .unwrap_or_default();
    image.rsplit_once(':').map_or(image, |(_, tag)| tag)
}

/// A pod's name and image tag.
fn pod_version(pod: &Pod) -> Option<(String, String)> {
    Some((pod.metadata.name.clone()?, tag_of(pod).to_owned()))
}

/// Ready and all pods per image tag.
pub fn pods_per_version(pods: &[Pod]) -> BTreeMap<String, (u32, u32)> {
    let mut out: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    for pod in pods {
        let tag = tag_of(pod);
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let entry = out.entry(tag.to_owned()).or_default();
        entry.0 += u32::from(ready);
        entry.1 += 1;
    }
    out
}

fn view(rollout: &Rollout) -> RolloutView {
    let status = rollout.status.as_ref();
    let steps = rollout.step_count();
    let canary = rollout.canary_status();
    RolloutView {
        name: rollout.metadata.name.clone().unwrap_or_default(),
        phase: status
            .and_then(|s| s.phase)
            .map_or("-".to_owned(), |p| format!("{p:?}")),
        step: canary.map(|c| (c.current_step_index, steps)),
        state: canary.map_or("-".to_owned(), |c| format!("{:?}", c.current_step_state)),
        config: rollout.plugin_rule().map_or("-".to_owned(), describe_rule),
        analysis: describe_analysis(rollout),
    }
}

/// The latest analysis run: its phase, failures in a row, the canary responses it saw, and
/// each check's value against its threshold with its verdict.
pub fn describe_analysis(rollout: &Rollout) -> Option<AnalysisView> {
    let a = rollout.canary_status()?.analysis.as_ref()?;
    let mut summary = format!(
        "step {} {:?}, {} failed run{} in a row",
        a.step_index,
        a.phase,
        a.consecutive_failures,
        if a.consecutive_failures == 1 { "" } else { "s" }
    );
    if let Some(n) = a.canary_requests {
        // An estimate from counter rates, fractional: whole responses read better.
        summary.push_str(&format!("; {n:.0} canary responses"));
    }
    Some(AnalysisView {
        summary,
        checks: a
            .checks
            .iter()
            .map(|c| format!("{} {:?}", describe_check(c), c.verdict))
            .collect(),
    })
}

/// What the Rollout's status says the gateway does: its rule's shares; once the release is
/// completed and the rule gone, everything on the new version; before, nothing.
pub fn configured_shares(rollout: &Rollout, clients: &[TrafficClient]) -> Vec<f64> {
    if let Some(rule) = rollout.plugin_rule() {
        if let Ok(shares) = expected_shares(rule, clients) {
            return shares;
        }
    }
    let completed = rollout
        .canary_status()
        .is_some_and(|c| c.current_step_state == StepState::Completed);
    vec![if completed { 1.0 } else { 0.0 }; clients.len()]
}
