//! The state machine, driven through whole releases on the fake cluster in [`super::sim`], and
//! table tests of single decisions.

use std::time::Duration;

use canary_core::config::{MatchType as WireMatchType, Weight};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::sim::{pod_hash, Sim, Traffic, ROLLOUT_AB, ROLLOUT_CANARY};
use super::*;
use crate::crd::{
    CanaryStep, GatewayTrafficRouting, HigressRouting, HttpHeader, HttpHeaderFilter,
    HttpRouteMatch, MatchType, NameValueMatch, Override, PathMatch, RolloutPause, Sticky,
};
use crate::keys::{
    ABORT_ANNOTATION, CANARY_DEPLOYMENT_LABEL, HIGRESS_CANARY_BY_HEADER,
    HIGRESS_CANARY_BY_HEADER_VALUE, POD_TEMPLATE_HASH, ROLLING_STYLE_ANNOTATION,
};
use crate::validate::reason as invalid;

// === helpers ===

/// Adopted, then `v2` set on the Deployment and run to the first step's approval.
fn at_first_pause(mut sim: Sim) -> Sim {
    sim.run();
    assert_eq!(phase(&sim), Some(RolloutPhase::Healthy));
    sim.world.set_image("v2");
    sim.run();
    assert_eq!(sim.step(), (1, StepState::StepPaused));
    sim
}

fn phase(sim: &Sim) -> Option<RolloutPhase> {
    sim.rollout.status.as_ref().and_then(|s| s.phase)
}

fn condition(sim: &Sim, r#type: &str) -> Option<(String, String)> {
    sim.rollout
        .status
        .as_ref()
        .and_then(|s| s.condition(r#type))
        .map(|c| (c.status.clone(), c.reason.clone()))
}

fn message(sim: &Sim) -> String {
    sim.rollout
        .status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_default()
}

fn canary_spec(sim: &mut Sim) -> &mut crate::crd::CanaryStrategy {
    sim.rollout
        .spec
        .strategy
        .canary
        .as_mut()
        .expect("fixture has a canary strategy")
}

fn canary_pods(sim: &Sim) -> i32 {
    sim.world
        .canary
        .as_ref()
        .and_then(|c| c.spec.replicas)
        .unwrap_or(0)
}

fn stable_pin(sim: &Sim) -> Option<String> {
    sim.world
        .service
        .as_ref()
        .and_then(|s| crate::observed::service_pin(s).map(str::to_owned))
}

fn traffic(sim: &Sim) -> Traffic {
    sim.world.traffic(&sim.key())
}

fn approve_and_run(sim: &mut Sim) -> Vec<Plan> {
    sim.approve();
    sim.run()
}

fn released_cleanly(sim: &Sim) {
    assert_eq!(phase(sim), Some(RolloutPhase::Healthy));
    assert_eq!(
        condition(sim, condition::SUCCEEDED),
        Some((condition::TRUE.into(), condition::COMPLETED.into()))
    );
    assert!(sim.world.canary.is_none(), "canary Deployment left behind");
    assert!(
        sim.world.canary_service.is_none(),
        "canary Service left behind"
    );
    assert!(
        sim.world.canary_ingress.is_none(),
        "canary Ingress left behind"
    );
    assert_eq!(stable_pin(sim), None, "stable Service still pinned");
    assert_eq!(sim.weight_percent(), None, "plugin rule left behind");
    assert!(sim.world.paused(), "Deployment must be paused again");
    assert_eq!(
        sim.world.pods(),
        vec![("v2".into(), pod_hash(&sim.world.revision()), 5)]
    );
    assert_eq!(traffic(sim).share("v2"), 1.0);
}

fn all_changes(plans: &[Plan]) -> Vec<&Change> {
    plans.iter().flat_map(|p| p.changes.iter()).collect()
}

fn position(changes: &[&Change], want: impl Fn(&Change) -> bool) -> Option<usize> {
    changes.iter().position(|c| want(c))
}

/// Only the Rollout's own finalizer may be written.
fn touches_nothing(plan: &Plan) -> bool {
    plan.changes.iter().all(|c| *c == Change::AddFinalizer)
}

// === whole releases ===

#[test]
fn adopting_a_settled_deployment_pauses_it_and_reports_healthy() {
    let mut sim = Sim::canary();
    let plans = sim.run();
    assert_eq!(
        plans[0].changes,
        [
            Change::AddFinalizer,
            Change::PauseDeployment {
                name: "demo".into(),
                paused: true
            }
        ]
    );
    assert_eq!(phase(&sim), Some(RolloutPhase::Healthy));
    assert_eq!(message(&sim), "Rollout is healthy");
    assert!(sim.event_reasons().contains(&reasons::WORKLOAD_ADOPTED));
    assert_eq!(
        condition(&sim, condition::ACCEPTED),
        Some((condition::TRUE.into(), "Accepted".into()))
    );
}

#[test]
fn a_healthy_rollout_with_an_unchanged_template_plans_nothing() {
    let mut sim = Sim::canary();
    sim.run();
    let plan = sim.plan();
    assert!(plan.changes.is_empty());
    assert!(plan.events.is_empty());
    assert_eq!(Some(&plan.status), sim.rollout.status.as_ref());
    assert_eq!(plan.requeue, None);
}

#[test]
fn a_deployment_in_the_middle_of_a_native_rollout_is_adopted_only_when_it_finishes() {
    let mut sim = Sim::canary();
    sim.world.set_image("v2");
    sim.world.tick();
    let plan = sim.reconcile();
    assert!(touches_nothing(&plan), "{:?}", plan.changes);
    assert!(
        message(&sim).contains("to finish its rolling update"),
        "{}",
        message(&sim)
    );
    sim.world.settle();
    let plan = sim.reconcile();
    assert!(plan.changes.contains(&Change::PauseDeployment {
        name: "demo".into(),
        paused: true
    }));
    assert_eq!(phase(&sim), Some(RolloutPhase::Healthy));
}

#[test]
fn the_canary_scenario_routes_10_then_30_percent_then_promotes() {
    let mut sim = at_first_pause(Sim::canary());
    assert_eq!(sim.weight_percent(), Some(10.0));
    assert_eq!(canary_pods(&sim), 1);
    assert_eq!(
        stable_pin(&sim),
        Some(pod_hash(&sim.world.replica_sets[0].revision))
    );
    let t = traffic(&sim);
    assert!((t.share("v2") - 0.1).abs() < 1e-9, "{t:?}");
    assert!(
        message(&sim).contains("waiting for approval"),
        "{}",
        message(&sim)
    );
    assert_eq!(
        sim.rollout.canary_status().map(|c| c.next_step_index),
        Some(2)
    );

    approve_and_run(&mut sim);
    assert_eq!(sim.step(), (2, StepState::StepPaused));
    assert_eq!(sim.weight_percent(), Some(30.0));
    assert_eq!(canary_pods(&sim), 2);
    assert_eq!(
        sim.rollout.canary_status().map(|c| c.next_step_index),
        Some(-1)
    );
    assert!((traffic(&sim).share("v2") - 0.3).abs() < 1e-9);

    approve_and_run(&mut sim);
    released_cleanly(&sim);
    let reasons = sim.event_reasons();
    for reason in [
        reasons::RELEASE_STARTED,
        reasons::SERVICE_PINNED,
        reasons::CANARY_SCALED,
        reasons::TRAFFIC_ROUTED,
        reasons::STEP_PAUSED,
        reasons::STEP_ADVANCED,
        reasons::PROMOTING,
        reasons::ROLLOUT_SUCCEEDED,
    ] {
        assert!(
            reasons.contains(&reason),
            "no {reason} event in {reasons:?}"
        );
    }
}

#[test]
fn the_ab_scenario_sends_only_android_requests_to_one_canary_pod() {
    let mut sim = at_first_pause(Sim::ab());
    let rule = sim.rollout.plugin_rule().cloned().expect("a rule");
    assert_eq!(rule.weight, Weight::ZERO);
    assert_eq!(rule.matches.len(), 1);
    assert_eq!(rule.matches[0].headers[0].name, "user-agent");
    assert_eq!(rule.matches[0].headers[0].value, "android");
    assert_eq!(rule.matches[0].headers[0].r#type, WireMatchType::Exact);
    assert_eq!(canary_pods(&sim), 1);
    // Unmatched traffic stays on v1: the new pod is kept out of the stable Service.
    assert_eq!(traffic(&sim).share("v1"), 1.0);
    approve_and_run(&mut sim);
    released_cleanly(&sim);
}

#[test]
fn the_plugin_rule_names_both_routes_the_rollout_and_a_literal_tag_value() {
    let sim = at_first_pause(Sim::canary());
    let rule = sim.rollout.plugin_rule().cloned().expect("a rule");
    assert_eq!(rule.match_route, ["default/demo", "default/demo-canary"]);
    assert_eq!(rule.rollout, "default/rollouts-demo");
    assert_eq!(rule.tag_header, "x-higress-canary");
    assert_eq!(rule.tag_value, "rollouts-demo");
    let ingress = sim.world.canary_ingress.as_ref().expect("canary Ingress");
    assert_eq!(
        ingress
            .annotations()
            .get(HIGRESS_CANARY_BY_HEADER)
            .map(String::as_str),
        Some("x-higress-canary")
    );
    assert_eq!(
        ingress
            .annotations()
            .get(HIGRESS_CANARY_BY_HEADER_VALUE)
            .map(String::as_str),
        Some("rollouts-demo")
    );
    // The stable Ingress's class annotation comes along, so the same controller serves it.
    assert_eq!(
        ingress
            .annotations()
            .get("kubernetes.io/ingress.class")
            .map(String::as_str),
        Some("nginx")
    );
}

#[test]
fn canary_objects_are_owned_by_the_rollout_and_select_the_canary_pods() {
    let sim = at_first_pause(Sim::canary());
    let canary = sim.world.canary.as_ref().expect("canary Deployment");
    assert_eq!(canary.name_any(), "demo-canary");
    assert_eq!(
        canary
            .labels()
            .get(CANARY_DEPLOYMENT_LABEL)
            .map(String::as_str),
        Some("demo")
    );
    assert_eq!(canary.spec.paused, Some(false));
    for owners in [
        canary.owner_references(),
        sim.world
            .canary_service
            .as_ref()
            .expect("svc")
            .owner_references(),
        sim.world
            .canary_ingress
            .as_ref()
            .expect("ing")
            .owner_references(),
    ] {
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].kind, "Rollout");
        assert_eq!(owners[0].uid, super::sim::ROLLOUT_UID);
        assert_eq!(owners[0].controller, Some(true));
    }
    let selector = sim
        .world
        .canary_service
        .as_ref()
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.selector.clone())
        .expect("selector");
    assert_eq!(
        selector.get(POD_TEMPLATE_HASH),
        Some(&pod_hash(&sim.world.revision()))
    );
    assert_eq!(selector.get("app").map(String::as_str), Some("demo"));
}

#[test]
fn the_stable_service_is_pinned_before_any_canary_pod_exists() {
    let mut sim = Sim::canary();
    sim.run();
    sim.world.set_image("v2");
    let plans = sim.run();
    let changes = all_changes(&plans);
    let pinned = position(&changes, |c| matches!(c, Change::PinService { .. }))
        .expect("the stable Service is pinned");
    let created = position(&changes, |c| matches!(c, Change::ApplyDeployment(_)))
        .expect("the canary is created");
    assert!(pinned < created, "{changes:#?}");
    // ... and in an earlier reconcile, at least a grace period before.
    let plan_of = |i: usize| {
        let mut seen = 0;
        plans
            .iter()
            .position(|p| {
                seen += p.changes.len();
                seen > i
            })
            .expect("in some plan")
    };
    assert!(plan_of(pinned) < plan_of(created));
}

#[test]
fn traffic_reaches_the_canary_only_once_its_pods_are_available() {
    let mut sim = Sim::canary();
    sim.run();
    sim.world.set_image("v2");
    sim.world.pods_become_ready = false;
    sim.run_until(
        |s| {
            s.rollout
                .canary_status()
                .is_some_and(|c| c.canary_replicas == 1)
        },
        |_| {},
    );
    for _ in 0..5 {
        sim.advance(30);
        sim.reconcile();
        sim.world.settle();
    }
    assert_eq!(sim.step(), (1, StepState::StepUpgrade));
    assert_eq!(sim.weight_percent(), None);
    assert!(sim.world.canary_ingress.is_none());
    assert!(message(&sim).contains("0/1 available"), "{}", message(&sim));
    sim.world.pods_become_ready = true;
    sim.run();
    assert_eq!(sim.step(), (1, StepState::StepPaused));
    assert_eq!(sim.weight_percent(), Some(10.0));
}

#[test]
fn the_old_version_share_never_rises_and_nothing_fails_during_a_release() {
    let mut sim = Sim::canary();
    sim.run();
    sim.world.set_image("v2");
    let mut worst: Vec<String> = Vec::new();
    let mut last_old = 1.0_f64;
    let mut promoting = false;
    let mut check = |s: &Sim| {
        let t = s.world.traffic(&s.key());
        if t.failing > 0.0 {
            worst.push(format!("requests failing: {t:?}"));
        }
        let finalising = s
            .rollout
            .canary_status()
            .is_some_and(|c| c.current_step_state == StepState::Completed);
        if finalising || promoting {
            promoting = true;
            if t.share("v1") > last_old + 1e-9 {
                worst.push(format!(
                    "old share rose from {last_old} to {} during promotion",
                    t.share("v1")
                ));
            }
        }
        last_old = t.share("v1");
    };
    sim.run_with(&mut check);
    sim.approve();
    sim.run_with(&mut check);
    sim.approve();
    sim.run_with(&mut check);
    assert!(worst.is_empty(), "{worst:#?}");
    released_cleanly(&sim);
}

#[test]
fn promotion_rolls_the_stable_deployment_before_taking_traffic_from_the_canary() {
    let mut sim = at_first_pause(Sim::canary());
    approve_and_run(&mut sim);
    sim.approve();
    let plans = sim.run();
    let changes = all_changes(&plans);
    let unpin = position(&changes, |c| {
        matches!(
            c,
            Change::PinService {
                pod_template_hash: None,
                ..
            }
        )
    })
    .expect("unpin");
    let unpause = position(&changes, |c| {
        matches!(c, Change::PauseDeployment { paused: false, .. })
    })
    .expect("unpause");
    let rule_off = position(&changes, |c| matches!(c, Change::SetPluginRule(None))).expect("off");
    let delete = position(&changes, |c| matches!(c, Change::DeleteDeployment { .. })).expect("rm");
    let pause = position(&changes, |c| {
        matches!(c, Change::PauseDeployment { paused: true, .. })
    })
    .expect("pause");
    assert!(unpin < unpause && unpause < rule_off && rule_off < delete && delete < pause);
    released_cleanly(&sim);
}

#[test]
fn a_timed_pause_moves_on_after_its_duration_without_approval() {
    let mut sim = Sim::canary();
    canary_spec(&mut sim).steps[0].pause = RolloutPause { duration: Some(60) };
    sim.run();
    sim.world.set_image("v2");
    let plans = sim.run_until(|s| s.step() == (1, StepState::StepPaused), |_| {});
    let last = plans.last().expect("a plan");
    assert_eq!(last.requeue, Some(Duration::from_secs(60)));
    sim.advance(30);
    let plan = sim.reconcile();
    assert_eq!(sim.step(), (1, StepState::StepPaused));
    assert_eq!(plan.requeue, Some(Duration::from_secs(30)));
    sim.advance(30);
    sim.run();
    assert_eq!(sim.step(), (2, StepState::StepPaused));
    assert_eq!(sim.weight_percent(), Some(30.0));
}

#[test]
fn a_zero_pause_duration_continues_at_once() {
    let mut sim = Sim::canary();
    canary_spec(&mut sim).steps[0].pause = RolloutPause { duration: Some(0) };
    sim.run();
    sim.world.set_image("v2");
    sim.run();
    assert_eq!(sim.step(), (2, StepState::StepPaused));
}

#[test]
fn the_grace_period_separates_a_routing_change_from_the_next_stage() {
    let mut sim = Sim::canary();
    canary_spec(&mut sim).traffic_routings[0].grace_period_seconds = 10;
    sim.run();
    sim.world.set_image("v2");
    let plans = sim.run_until(|s| s.weight_percent() == Some(10.0), |_| {});
    assert_eq!(
        plans.last().and_then(|p| p.requeue),
        Some(Duration::from_secs(10))
    );
    sim.advance(4);
    let plan = sim.reconcile();
    assert_eq!(sim.step(), (1, StepState::StepTrafficRouting));
    assert_eq!(plan.requeue, Some(Duration::from_secs(6)));
    assert!(plan.changes.is_empty());
    sim.advance(6);
    sim.reconcile();
    assert_eq!(sim.step(), (1, StepState::StepPaused));
}

#[test]
fn approval_reaches_the_gateway_in_the_first_reconcile_when_pods_are_ready() {
    let mut sim = Sim::canary();
    // Both steps run 2 pods: approving step 1 needs no new pod.
    canary_spec(&mut sim).steps[0].replicas = Some(IntOrString::Int(2));
    let mut sim = at_first_pause(sim);
    sim.approve();
    let plan = sim.reconcile();
    assert!(
        plan.changes
            .iter()
            .any(|c| matches!(c, Change::SetPluginRule(Some(r)) if r.weight.percent() == 30.0)),
        "{:#?}",
        plan.changes
    );
}

#[test]
fn the_last_step_at_100_percent_passes_without_approval() {
    let mut sim = Sim::canary();
    let steps = &mut canary_spec(&mut sim).steps;
    steps[1].weight = Some(100);
    steps[1].replicas = Some(IntOrString::String("100%".into()));
    let mut sim = at_first_pause(sim);
    approve_and_run(&mut sim);
    released_cleanly(&sim);
    let paused_events = sim
        .events
        .iter()
        .filter(|e| e.reason == reasons::STEP_PAUSED)
        .count();
    assert_eq!(paused_events, 1, "only step 1 waited");
}

#[test]
fn a_step_without_weight_or_matches_lets_traffic_follow_the_pods() {
    let mut sim = Sim::canary();
    let steps = &mut canary_spec(&mut sim).steps;
    steps[0].weight = None;
    steps[0].replicas = Some(IntOrString::Int(1));
    let mut sim = at_first_pause(sim);
    assert_eq!(sim.weight_percent(), None);
    assert_eq!(stable_pin(&sim), None);
    assert!((traffic(&sim).share("v2") - 1.0 / 6.0).abs() < 1e-9);
    approve_and_run(&mut sim);
    assert_eq!(sim.weight_percent(), Some(30.0));
    assert!(stable_pin(&sim).is_some());
    assert!((traffic(&sim).share("v2") - 0.3).abs() < 1e-9);
}

#[test]
fn a_failure_threshold_lets_a_batch_pass_with_unavailable_pods() {
    let mut sim = Sim::canary();
    canary_spec(&mut sim).failure_threshold = Some(IntOrString::Int(1));
    canary_spec(&mut sim).steps[0].replicas = Some(IntOrString::Int(2));
    sim.world.canary_max_ready = Some(1);
    let sim = at_first_pause(sim);
    assert_eq!(
        sim.rollout.canary_status().map(|c| c.canary_ready_replicas),
        Some(1)
    );
}

// === rollback, abort, continuous release ===

#[test]
fn reverting_the_template_routes_to_stable_in_the_first_reconcile_then_cleans_up() {
    let mut sim = at_first_pause(Sim::canary());
    sim.world.set_image("v1");
    let first = sim.reconcile();
    assert!(
        first.changes.contains(&Change::SetPluginRule(None)),
        "{:?}",
        first.changes
    );
    assert_eq!(traffic(&sim).share("v1"), 1.0);
    assert!(first
        .events
        .iter()
        .any(|e| e.reason == reasons::ROLLBACK_DETECTED && e.kind == EventKind::Warning));
    sim.run();
    assert_eq!(phase(&sim), Some(RolloutPhase::Healthy));
    assert_eq!(
        condition(&sim, condition::SUCCEEDED),
        Some((condition::FALSE.into(), condition::COMPLETED.into()))
    );
    assert!(sim.world.canary.is_none() && sim.world.canary_service.is_none());
    assert!(sim.world.canary_ingress.is_none());
    assert_eq!(stable_pin(&sim), None);
    assert!(sim.world.paused());
    assert!(sim.event_reasons().contains(&reasons::ROLLOUT_CANCELLED));
}

#[test]
fn the_abort_annotation_cancels_the_release_and_keeps_the_revision_unreleased() {
    let mut sim = at_first_pause(Sim::canary());
    let revision = sim.world.revision();
    sim.rollout
        .annotations_mut()
        .insert(ABORT_ANNOTATION.into(), revision.clone());
    let first = sim.reconcile();
    assert!(first.changes.contains(&Change::SetPluginRule(None)));
    assert!(first
        .events
        .iter()
        .any(|e| e.reason == reasons::ROLLOUT_ABORTED));
    sim.run();
    assert_eq!(phase(&sim), Some(RolloutPhase::Healthy));
    assert_eq!(
        condition(&sim, condition::SUCCEEDED).map(|c| c.0),
        Some(condition::FALSE.into())
    );
    assert!(sim.world.canary.is_none());
    // The Deployment still asks for v2, paused; its pods stay v1 and no release restarts.
    assert!(sim.world.paused());
    assert_eq!(sim.world.pods()[0].0, "v1");
    assert!(message(&sim).contains("was aborted"), "{}", message(&sim));
    assert!(sim.plan().changes.is_empty());
    // Removing the annotation releases it again.
    sim.rollout.annotations_mut().remove(ABORT_ANNOTATION);
    sim.run();
    assert_eq!(sim.step(), (1, StepState::StepPaused));
}

#[test]
fn a_stale_abort_annotation_for_another_revision_does_nothing() {
    let mut sim = at_first_pause(Sim::canary());
    sim.rollout
        .annotations_mut()
        .insert(ABORT_ANNOTATION.into(), "0123456789abcdef".into());
    let plan = sim.reconcile();
    assert!(plan.changes.is_empty());
    assert_eq!(sim.step(), (1, StepState::StepPaused));
}

#[test]
fn a_newer_template_mid_release_restarts_at_step_one_and_never_serves_the_intermediate() {
    let mut sim = at_first_pause(Sim::canary());
    approve_and_run(&mut sim);
    assert_eq!(sim.step(), (2, StepState::StepPaused));
    sim.world.set_image("v3");
    let mut leaks = Vec::new();
    let first = sim.reconcile();
    assert!(first.changes.contains(&Change::SetPluginRule(None)));
    if traffic(&sim).share("v2") > 0.0 {
        leaks.push(traffic(&sim));
    }
    sim.run_with(|s| {
        let t = s.world.traffic(&s.key());
        if t.share("v2") > 0.0 || t.failing > 0.0 {
            leaks.push(t);
        }
    });
    assert!(leaks.is_empty(), "{leaks:?}");
    assert_eq!(sim.step(), (1, StepState::StepPaused));
    assert_eq!(
        sim.rollout
            .canary_status()
            .map(|c| c.canary_revision.clone()),
        Some(sim.world.revision())
    );
    assert!((traffic(&sim).share("v3") - 0.1).abs() < 1e-9);
    assert!(sim.event_reasons().contains(&reasons::CONTINUOUS_RELEASE));
    approve_and_run(&mut sim);
    approve_and_run(&mut sim);
    assert_eq!(sim.world.pods()[0].0, "v3");
    assert_eq!(phase(&sim), Some(RolloutPhase::Healthy));
}

#[test]
fn reverting_during_promotion_waits_for_the_native_rollback_then_pauses() {
    let mut sim = at_first_pause(Sim::canary());
    approve_and_run(&mut sim);
    sim.approve();
    // Run until the stable Deployment has started rolling to v2.
    sim.run_until(|s| !s.world.paused(), |_| {});
    sim.world.tick();
    sim.world.tick();
    sim.world.set_image("v1");
    sim.run();
    assert_eq!(phase(&sim), Some(RolloutPhase::Healthy));
    assert_eq!(
        condition(&sim, condition::SUCCEEDED).map(|c| c.0),
        Some(condition::FALSE.into())
    );
    assert!(sim.world.paused());
    assert!(sim.world.canary.is_none());
    assert_eq!(sim.world.pods().iter().map(|p| p.2).sum::<i32>(), 5);
    assert!(sim.world.pods().iter().all(|p| p.0 == "v1"));
}

// === pause, jump, plan change ===

#[test]
fn strategy_paused_freezes_the_release_and_resuming_continues() {
    let mut sim = at_first_pause(Sim::canary());
    sim.approve();
    sim.rollout.spec.strategy.paused = true;
    let plan = sim.reconcile();
    assert!(plan.changes.is_empty());
    assert_eq!(
        condition(&sim, condition::PROGRESSING).map(|c| c.1),
        Some(condition::PAUSED.into())
    );
    assert!(plan
        .events
        .iter()
        .any(|e| e.reason == reasons::ROLLOUT_PAUSED));
    let again = sim.reconcile();
    assert!(again.events.is_empty() && again.changes.is_empty());
    assert_eq!(sim.weight_percent(), Some(10.0));
    sim.rollout.spec.strategy.paused = false;
    let plans = sim.run();
    assert!(plans[0]
        .events
        .iter()
        .any(|e| e.reason == reasons::ROLLOUT_RESUMED));
    assert_eq!(sim.step(), (2, StepState::StepPaused));
}

#[test]
fn patching_next_step_index_jumps_to_that_step() {
    let mut sim = at_first_pause(Sim::canary());
    approve_and_run(&mut sim);
    assert_eq!(sim.step(), (2, StepState::StepPaused));
    // Redo step 1, as `kubectl-kruise` users do by patching nextStepIndex.
    sim.rollout
        .status
        .as_mut()
        .and_then(|s| s.canary_status.as_mut())
        .expect("canary status")
        .next_step_index = 1;
    sim.run();
    assert_eq!(sim.step(), (1, StepState::StepPaused));
    assert_eq!(sim.weight_percent(), Some(10.0));
    assert_eq!(canary_pods(&sim), 1);
    assert!(sim.event_reasons().contains(&reasons::STEP_JUMPED));
}

#[test]
fn editing_the_steps_mid_release_recomputes_the_step_and_routes_it_again() {
    let mut sim = at_first_pause(Sim::canary());
    canary_spec(&mut sim).steps[0].weight = Some(20);
    sim.run();
    assert_eq!(sim.step(), (1, StepState::StepPaused));
    assert_eq!(sim.weight_percent(), Some(20.0));
    assert!(sim.event_reasons().contains(&reasons::PLAN_CHANGED));
}

#[test]
fn changing_only_a_pause_does_not_recompute_the_step() {
    let mut sim = at_first_pause(Sim::canary());
    canary_spec(&mut sim).steps[0].pause = RolloutPause {
        duration: Some(600),
    };
    sim.reconcile();
    assert!(!sim.event_reasons().contains(&reasons::PLAN_CHANGED));
}

#[test]
fn a_rule_lost_by_the_gateway_is_written_again() {
    let mut sim = at_first_pause(Sim::canary());
    sim.world.plugin = Some(Default::default());
    let plan = sim.reconcile();
    assert!(
        matches!(plan.changes.as_slice(), [Change::SetPluginRule(Some(r))] if r.weight.percent() == 10.0),
        "{:?}",
        plan.changes
    );
    assert_eq!(sim.weight_percent(), Some(10.0));
}

// === deletion and disabling ===

#[test]
fn deleting_the_rollout_mid_release_routes_to_stable_cleans_up_and_unpauses() {
    let mut sim = at_first_pause(Sim::canary());
    sim.delete();
    let first = sim.reconcile();
    assert!(first.changes.contains(&Change::SetPluginRule(None)));
    assert_eq!(phase(&sim), Some(RolloutPhase::Terminating));
    assert_eq!(traffic(&sim).share("v1"), 1.0);
    sim.run();
    assert!(sim.gone, "the finalizer was not removed");
    assert!(sim.world.canary.is_none() && sim.world.canary_service.is_none());
    assert!(sim.world.canary_ingress.is_none());
    assert_eq!(stable_pin(&sim), None);
    assert!(!sim.world.paused(), "the Deployment must be released");
    assert_eq!(sim.weight_percent(), None);
}

#[test]
fn deleting_a_healthy_rollout_only_unpauses_and_removes_the_finalizer() {
    let mut sim = Sim::canary();
    sim.run();
    sim.delete();
    let plan = sim.reconcile();
    assert_eq!(
        plan.changes,
        [
            Change::PauseDeployment {
                name: "demo".into(),
                paused: false
            },
            Change::RemoveFinalizer
        ]
    );
    assert!(sim.gone);
}

#[test]
fn deleting_the_losing_rollout_of_a_conflict_leaves_the_deployment_alone() {
    let mut sim = Sim::canary();
    sim.world.conflicts = vec!["other".into()];
    sim.rollout
        .metadata
        .finalizers
        .get_or_insert_with(Vec::new)
        .push(crate::keys::ROLLOUT_FINALIZER.into());
    sim.delete();
    let plan = sim.reconcile();
    assert_eq!(plan.changes, [Change::RemoveFinalizer]);
}

#[test]
fn disabling_mid_release_cleans_up_and_releases_the_deployment() {
    let mut sim = at_first_pause(Sim::canary());
    sim.rollout.spec.disabled = true;
    let first = sim.reconcile();
    assert!(first.changes.contains(&Change::SetPluginRule(None)));
    assert_eq!(phase(&sim), Some(RolloutPhase::Disabling));
    sim.run();
    assert_eq!(phase(&sim), Some(RolloutPhase::Disabled));
    assert!(sim.world.canary.is_none());
    assert!(!sim.world.paused());
    assert!(sim.rollout.canary_status().is_none());
    assert!(sim.plan().changes.is_empty());
    // Enabled again: it takes control once the native rollout finished.
    sim.rollout.spec.disabled = false;
    sim.world.settle();
    sim.run();
    assert_eq!(phase(&sim), Some(RolloutPhase::Healthy));
    assert!(sim.world.paused());
}

/// `kubectl rollout pause deployment/demo`, by hand.
fn pause_by_hand(sim: &mut Sim) {
    sim.world.deployment.as_mut().expect("demo").spec.paused = Some(true);
}

#[test]
fn a_rollout_created_disabled_leaves_a_deployment_paused_by_hand_alone() {
    let mut sim = Sim::canary();
    pause_by_hand(&mut sim);
    sim.rollout.spec.disabled = true;
    let plans = sim.run();
    assert!(plans.iter().all(touches_nothing), "{plans:?}");
    assert_eq!(phase(&sim), Some(RolloutPhase::Disabled));
    assert!(sim.world.paused(), "the disabled Rollout unpaused demo");
    assert!(sim.event_reasons().contains(&reasons::ROLLOUT_DISABLED));
}

#[test]
fn deleting_a_rollout_that_never_took_control_leaves_the_deployment_alone() {
    let mut sim = Sim::canary();
    pause_by_hand(&mut sim);
    canary_spec(&mut sim).steps[0].weight = Some(130);
    sim.run();
    assert_eq!(phase(&sim), Some(RolloutPhase::Initial));
    sim.delete();
    let plan = sim.reconcile();
    assert_eq!(plan.changes, [Change::RemoveFinalizer]);
    assert!(sim.gone);
    assert!(sim.world.paused(), "deleting the Rollout unpaused demo");
}

// === restart safety ===

/// Releases the canary scenario to the end, approving every pause; the controller dies in
/// reconcile `crash_at`, after the object changes and before the status write (or, with
/// `before_plugin`, after the status write and before the WasmPlugin write). Returns the
/// reconciles it took.
fn release_with_crash(crash_at: usize, before_plugin: bool) -> (Sim, usize) {
    let mut sim = Sim::canary();
    sim.run();
    sim.world.set_image("v2");
    let mut last_old = 1.0_f64;
    for count in 0..400 {
        let done = phase(&sim) == Some(RolloutPhase::Healthy)
            && condition(&sim, condition::SUCCEEDED).is_some()
            && sim.world.canary.is_none();
        if done {
            return (sim, count);
        }
        if sim
            .rollout
            .canary_status()
            .is_some_and(|c| c.current_step_state == StepState::StepPaused)
        {
            sim.approve();
        }
        let plan = if count == crash_at && before_plugin {
            sim.reconcile_then_crash_before_plugin()
        } else if count == crash_at {
            sim.reconcile_then_crash()
        } else {
            sim.reconcile()
        };
        sim.world.settle();
        let t = traffic(&sim);
        assert_eq!(t.failing, 0.0, "crash at {crash_at}: requests fail: {t:?}");
        let promoting = sim
            .rollout
            .canary_status()
            .is_some_and(|c| c.current_step_state == StepState::Completed);
        assert!(
            !promoting || t.share("v1") <= last_old + 1e-9,
            "crash at {crash_at}: old share rose to {t:?}"
        );
        last_old = t.share("v1");
        let secs = plan.requeue.map_or(1, |d| d.as_secs().max(1));
        sim.advance(i64::try_from(secs).unwrap_or(1));
    }
    panic!("crash at {crash_at}: never finished: {}", message(&sim));
}

#[test]
fn a_crash_between_changes_and_status_write_converges_at_every_stage() {
    let (baseline, reconciles) = release_with_crash(usize::MAX, false);
    released_cleanly(&baseline);
    assert!(
        reconciles > 10,
        "the release took only {reconciles} reconciles"
    );
    for crash_at in 0..reconciles {
        for before_plugin in [false, true] {
            let (sim, _) = release_with_crash(crash_at, before_plugin);
            released_cleanly(&sim);
        }
    }
}

// === invalid input ===

struct Case {
    what: &'static str,
    edit: fn(&mut Sim),
    reason: &'static str,
    says: &'static str,
}

fn step0(sim: &mut Sim) -> &mut CanaryStep {
    &mut canary_spec(sim).steps[0]
}

const INVALID: &[Case] = &[
    Case {
        what: "a weight over 100",
        edit: |s| step0(s).weight = Some(150),
        reason: invalid::INVALID_SPEC,
        says: "steps[0].weight must be between 0 and 100, got 150",
    },
    Case {
        what: "replicas that decrease from one step to the next",
        edit: |s| step0(s).replicas = Some(IntOrString::Int(3)),
        reason: invalid::INVALID_SPEC,
        says: "steps[1].replicas (2) is less than steps[0].replicas (3)",
    },
    Case {
        what: "a percentage that scales to more pods than the next step's count",
        edit: |s| step0(s).replicas = Some(IntOrString::String("60%".into())),
        reason: invalid::INVALID_SPEC,
        says: "the canary may only grow",
    },
    Case {
        what: "a header regex that does not compile",
        edit: |s| {
            step0(s).matches = vec![HttpRouteMatch {
                headers: vec![NameValueMatch {
                    r#type: Some(MatchType::RegularExpression),
                    name: "user-agent".into(),
                    value: "(android".into(),
                }],
                ..Default::default()
            }]
        },
        reason: invalid::INVALID_SPEC,
        says: "steps[0]: the plugin would reject this step's rule: _rules_[0].matches[0].headers[0].value",
    },
    Case {
        what: "a tag header HTTP reserves",
        edit: |s| {
            canary_spec(s).higress = Some(HigressRouting {
                tag_header: Some("content-length".into()),
                ..Default::default()
            })
        },
        reason: invalid::INVALID_SPEC,
        says: "tagHeader",
    },
    Case {
        what: "a step with neither replicas nor weight",
        edit: |s| {
            step0(s).replicas = None;
            step0(s).weight = None;
        },
        reason: invalid::INVALID_SPEC,
        says: "steps[0].replicas is required",
    },
    Case {
        what: "replicas over 100%",
        edit: |s| step0(s).replicas = Some(IntOrString::String("150%".into())),
        reason: invalid::INVALID_SPEC,
        says: "steps[0].replicas must be a positive count or a percentage",
    },
    Case {
        what: "a negative pause",
        edit: |s| step0(s).pause = RolloutPause { duration: Some(-1) },
        reason: invalid::INVALID_SPEC,
        says: "pause.duration must not be negative",
    },
    Case {
        what: "no steps",
        edit: |s| canary_spec(s).steps.clear(),
        reason: invalid::INVALID_SPEC,
        says: "between 1 and 50 steps are required",
    },
    Case {
        what: "a missing Deployment",
        edit: |s| s.world.deployment = None,
        reason: invalid::WORKLOAD_NOT_FOUND,
        says: "Deployment demo not found in namespace default",
    },
    Case {
        what: "a missing Service",
        edit: |s| s.world.service = None,
        reason: invalid::SERVICE_NOT_FOUND,
        says: "Service demo not found",
    },
    Case {
        what: "a missing Ingress",
        edit: |s| s.world.ingress = None,
        reason: invalid::INGRESS_NOT_FOUND,
        says: "Ingress demo not found",
    },
    Case {
        what: "an Ingress that does not lead to the Service",
        edit: |s| canary_spec(s).traffic_routings[0].service = "other".into(),
        reason: invalid::INVALID_SPEC,
        says: "Ingress demo has no path with backend Service other",
    },
    Case {
        what: "a second Rollout for the same Deployment",
        edit: |s| s.world.conflicts = vec!["rollouts-header".into()],
        reason: invalid::WORKLOAD_CONFLICT,
        says: "already released by Rollout rollouts-header",
    },
    Case {
        what: "a route another Rollout's rule already claims",
        edit: |s| {
            s.world.plugin = Some(canary_core::PluginConfig {
                global: None,
                rules: vec![canary_core::config::RuleConfig {
                    match_route: vec!["default/demo".into()],
                    rollout: "default/older".into(),
                    tag_header: "x-higress-canary".into(),
                    tag_value: "older".into(),
                    ..Default::default()
                }],
            })
        },
        reason: invalid::ROUTE_CONFLICT,
        says: "already routed by Rollout default/older",
    },
    Case {
        what: "a canary Deployment name taken by an object it does not own",
        edit: |s| {
            let mut d = s.world.deployment.clone().expect("demo");
            d.metadata.name = Some("demo-canary".into());
            s.world.canary = Some(d);
        },
        reason: invalid::OBJECT_CONFLICT,
        says: "Deployment demo-canary exists and is not owned by this Rollout",
    },
    Case {
        what: "the partition rolling style",
        edit: |s| {
            s.rollout
                .annotations_mut()
                .insert(ROLLING_STYLE_ANNOTATION.into(), "partition".into());
        },
        reason: invalid::UNSUPPORTED,
        says: "only the canary style",
    },
    Case {
        what: "Gateway API routing",
        edit: |s| {
            canary_spec(s).traffic_routings[0].gateway = Some(GatewayTrafficRouting {
                http_route_name: Some("demo".into()),
            })
        },
        reason: invalid::UNSUPPORTED,
        says: "gateway and customNetworkRefs are not supported",
    },
    Case {
        what: "an ingress class Higress does not serve",
        edit: |s| canary_spec(s).traffic_routings[0].r#type = Some("aliyun-alb".into()),
        reason: invalid::UNSUPPORTED,
        says: "\"aliyun-alb\" is not served by Higress",
    },
    Case {
        what: "a request header modifier",
        edit: |s| {
            step0(s).request_header_modifier = Some(HttpHeaderFilter {
                set: vec![HttpHeader {
                    name: "x-env".into(),
                    value: "canary".into(),
                }],
                ..Default::default()
            })
        },
        reason: invalid::UNSUPPORTED,
        says: "requestHeaderModifier is not supported",
    },
    Case {
        what: "a StatefulSet workload",
        edit: |s| {
            if let Some(w) = s.rollout.spec.object_ref.workload_ref.as_mut() {
                w.kind = "StatefulSet".into();
            }
        },
        reason: invalid::UNSUPPORTED,
        says: "only apps/v1 Deployment is supported",
    },
];

#[test]
fn invalid_rollouts_change_nothing_and_say_what_to_fix() {
    for case in INVALID {
        let mut sim = Sim::canary();
        sim.run();
        sim.world.set_image("v2");
        (case.edit)(&mut sim);
        let plan = sim.reconcile();
        assert!(touches_nothing(&plan), "{}: {:?}", case.what, plan.changes);
        let accepted = plan
            .status
            .condition(condition::ACCEPTED)
            .unwrap_or_else(|| panic!("{}: no Accepted condition", case.what));
        assert_eq!(accepted.status, condition::FALSE, "{}", case.what);
        assert_eq!(
            accepted.reason, case.reason,
            "{}: {}",
            case.what, accepted.message
        );
        assert!(
            accepted.message.contains(case.says),
            "{}: {:?} does not say {:?}",
            case.what,
            accepted.message,
            case.says
        );
        assert_eq!(
            plan.status.message.as_deref(),
            Some(accepted.message.as_str())
        );
        assert!(
            plan.events
                .iter()
                .any(|e| e.kind == EventKind::Warning && e.reason == reasons::INVALID_ROLLOUT),
            "{}: no Warning event",
            case.what
        );
        let again = sim.reconcile();
        assert!(
            again.events.is_empty(),
            "{}: the Warning repeats",
            case.what
        );
    }
}

#[test]
fn an_invalid_edit_mid_release_freezes_workload_and_gateway() {
    let mut sim = at_first_pause(Sim::canary());
    canary_spec(&mut sim).steps[1].weight = Some(130);
    sim.approve();
    let plan = sim.reconcile();
    assert!(plan.changes.is_empty(), "{:?}", plan.changes);
    assert_eq!(sim.weight_percent(), Some(10.0));
    assert_eq!(canary_pods(&sim), 1);
    // Fixed: the release carries on from where it was.
    canary_spec(&mut sim).steps[1].weight = Some(30);
    sim.run();
    assert_eq!(sim.step(), (2, StepState::StepPaused));
    assert_eq!(
        condition(&sim, condition::ACCEPTED).map(|c| c.0),
        Some(condition::TRUE.into())
    );
}

// === what the steps turn into ===

#[test]
fn kruise_canary_by_cookie_header_becomes_a_cookie_match() {
    let mut sim = Sim::ab();
    step0(&mut sim).matches = vec![HttpRouteMatch {
        headers: vec![NameValueMatch {
            r#type: None,
            name: "canary-by-cookie".into(),
            value: "beta".into(),
        }],
        ..Default::default()
    }];
    let sim = at_first_pause(sim);
    let rule = sim.rollout.plugin_rule().cloned().expect("rule");
    assert!(rule.matches[0].headers.is_empty());
    assert_eq!(rule.matches[0].cookies[0].name, "beta");
    assert_eq!(rule.matches[0].cookies[0].value, "always");
}

#[test]
fn extension_matches_and_higress_settings_reach_the_plugin_rule_and_ingress() {
    let mut sim = Sim::canary();
    step0(&mut sim).matches = vec![HttpRouteMatch {
        headers: vec![],
        cookies: vec![NameValueMatch {
            r#type: None,
            name: "beta".into(),
            value: "1".into(),
        }],
        query_params: vec![NameValueMatch {
            r#type: Some(MatchType::RegularExpression),
            name: "canary".into(),
            value: "true|yes".into(),
        }],
        path: Some(PathMatch {
            r#type: Some(MatchType::Prefix),
            value: "/api/".into(),
        }),
    }];
    canary_spec(&mut sim).higress = Some(HigressRouting {
        tag_header: Some("x-demo-canary".into()),
        sticky: Some(Sticky {
            header: Some("x-user-id".into()),
            ..Default::default()
        }),
        r#override: Some(Override {
            secret: Some("s3cret".into()),
            ..Default::default()
        }),
        version_header: Some("x-canary-version".into()),
    });
    let sim = at_first_pause(sim);
    let rule = sim.rollout.plugin_rule().cloned().expect("rule");
    assert_eq!(rule.tag_header, "x-demo-canary");
    assert_eq!(rule.weight.percent(), 10.0);
    let group = &rule.matches[0];
    assert_eq!(group.cookies[0].name, "beta");
    assert_eq!(
        group.query_params[0].r#type,
        WireMatchType::RegularExpression
    );
    assert_eq!(
        group.path.as_ref().map(|p| p.r#type),
        Some(WireMatchType::Prefix)
    );
    assert_eq!(
        rule.sticky.as_ref().and_then(|s| s.header.as_deref()),
        Some("x-user-id")
    );
    let over = rule.r#override.as_ref().expect("override");
    assert_eq!(over.header, "x-canary-override");
    assert_eq!(over.secret.as_deref(), Some("s3cret"));
    assert_eq!(rule.version_header.as_deref(), Some("x-canary-version"));
    let ingress = sim.world.canary_ingress.as_ref().expect("canary Ingress");
    assert_eq!(
        ingress
            .annotations()
            .get(HIGRESS_CANARY_BY_HEADER)
            .map(String::as_str),
        Some("x-demo-canary")
    );
}

#[test]
fn canary_pods_per_step_round_percentages_up_and_never_exceed_the_deployment() {
    let cases = [
        (IntOrString::String("10%".into()), 5, 1),
        (IntOrString::String("30%".into()), 5, 2),
        (IntOrString::String("20%".into()), 5, 1),
        (IntOrString::String("21%".into()), 5, 2),
        (IntOrString::String("100%".into()), 5, 5),
        (IntOrString::Int(2), 5, 2),
        (IntOrString::Int(7), 5, 5),
        (IntOrString::String("50%".into()), 0, 0),
    ];
    for (replicas, total, want) in cases {
        let step = crate::validate::Step {
            replicas: replicas.clone(),
            rule: None,
            pause_seconds: None,
            analysis: None,
        };
        assert_eq!(step.canary_replicas(total), want, "{replicas:?} of {total}");
    }
}

#[test]
fn a_weight_without_replicas_uses_the_weight_as_the_pod_percentage() {
    let mut sim = Sim::canary();
    step0(&mut sim).replicas = None;
    step0(&mut sim).weight = Some(40);
    canary_spec(&mut sim).steps[1].replicas = Some(IntOrString::Int(3));
    let sim = at_first_pause(sim);
    assert_eq!(canary_pods(&sim), 2);
}

#[test]
fn the_tag_value_is_the_rollout_name_unless_the_plugin_reserves_it() {
    assert_eq!(crate::validate::tag_value("rollouts-demo"), "rollouts-demo");
    assert_eq!(crate::validate::tag_value("web.v2"), "web.v2");
    assert_eq!(crate::validate::tag_value("always"), "always-rollout");
    let mut sim = Sim::canary();
    sim.rollout.metadata.name = Some("always".into());
    let sim = at_first_pause(sim);
    assert_eq!(
        sim.rollout.plugin_rule().map(|r| r.tag_value.clone()),
        Some("always-rollout".into())
    );
}

#[test]
fn finished_rollouts_have_no_rule_in_the_rendered_wasmplugin() {
    let mut sim = at_first_pause(Sim::canary());
    let other = {
        let mut other = Sim::ab();
        other.rollout.metadata.namespace = Some("shop".into());
        at_first_pause(other).rollout
    };
    let during = crate::render::plugin_config(&[sim.rollout.clone(), other.clone()]);
    assert_eq!(during.config.rules.len(), 2);
    approve_and_run(&mut sim);
    approve_and_run(&mut sim);
    let after = crate::render::plugin_config(&[sim.rollout.clone(), other]);
    let names: Vec<_> = after
        .config
        .rules
        .iter()
        .map(|r| r.rollout.as_str())
        .collect();
    assert_eq!(names, ["shop/rollouts-header"]);
}

#[test]
fn the_status_speaks_kruise_for_kubectl_kruise() {
    let sim = at_first_pause(Sim::canary());
    let status =
        serde_json::to_value(sim.rollout.status.as_ref().expect("status")).expect("serializes");
    assert_eq!(status["phase"], "Progressing");
    assert_eq!(status["canaryStatus"]["currentStepIndex"], 1);
    assert_eq!(status["canaryStatus"]["currentStepState"], "StepPaused");
    assert_eq!(status["canaryStatus"]["canaryReplicas"], 1);
    assert_eq!(status["canaryStatus"]["canaryReadyReplicas"], 1);
    assert_eq!(
        status["canaryStatus"]["podTemplateHash"],
        pod_hash(&sim.world.revision()).as_str()
    );
    assert_eq!(
        status["canaryStatus"]["stableRevision"],
        pod_hash(&sim.world.replica_sets[0].revision).as_str()
    );
    assert_eq!(status["observedGeneration"], 1);
    let progressing = sim
        .rollout
        .status
        .as_ref()
        .and_then(|s| s.condition(condition::PROGRESSING))
        .expect("Progressing");
    assert_eq!(progressing.reason, condition::IN_ROLLING);
    assert_eq!(progressing.status, condition::TRUE);
}

#[test]
fn kruise_fixtures_parse_into_the_expected_steps() {
    let ab = super::sim::parse_rollout(ROLLOUT_AB);
    let release = crate::validate::Release::from_rollout(&ab).expect("valid");
    assert_eq!(release.steps.len(), 1);
    assert_eq!(release.steps[0].pause_seconds, None);
    assert_eq!(release.grace_period_seconds, 3);
    let canary = super::sim::parse_rollout(ROLLOUT_CANARY);
    let release = crate::validate::Release::from_rollout(&canary).expect("valid");
    let weights: Vec<_> = release.steps.iter().map(|s| s.weight().percent()).collect();
    assert_eq!(weights, [10.0, 30.0]);
}
