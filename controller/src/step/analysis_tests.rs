//! The state machine with metric analysis, driven on the fake cluster with a fake Prometheus
//! ([`super::sim::FakePrometheus`]): steps advance only on passing checks, timed steps only
//! once the checks held, failures abort like the abort annotation, no verdict never passes.

use serde_json::json;

use super::sim::{FakePrometheus, Sim};
use super::*;
use crate::analysis::Answer;
use crate::crd::{AnalysisStatus, CheckVerdict};

// === helpers ===

/// The seed canary Rollout (10% then 30%, approvals) with this rollout-level analysis.
fn with_analysis(analysis: serde_json::Value) -> Sim {
    let mut sim = Sim::canary();
    canary(&mut sim).analysis = Some(serde_json::from_value(analysis).expect("an analysis"));
    sim.world.prometheus = FakePrometheus::healthy();
    sim
}

/// 10 s interval, success rate ≥ 99%, p99 ≤ 500 ms, 50 requests, 2 failures abort.
fn standard() -> serde_json::Value {
    json!({
        "intervalSeconds": 10,
        "minRequests": 50,
        "failureLimit": 2,
        "successRate": {"minPercent": 99},
        "latency": {"maxMs": 500},
    })
}

fn canary(sim: &mut Sim) -> &mut crate::crd::CanaryStrategy {
    sim.rollout
        .spec
        .strategy
        .canary
        .as_mut()
        .expect("fixture has a canary strategy")
}

/// Adopted, `v2` set, and run until step 1 is in StepMetricsAnalysis (traffic in place).
fn analysing(mut sim: Sim) -> Sim {
    sim.run();
    sim.world.set_image("v2");
    sim.run_until(|s| s.step() == (1, StepState::StepMetricsAnalysis), |_| {});
    assert_eq!(sim.step(), (1, StepState::StepMetricsAnalysis));
    sim
}

fn state(sim: &Sim) -> AnalysisStatus {
    sim.rollout
        .canary_status()
        .and_then(|c| c.analysis.clone())
        .expect("an analysis state")
}

fn condition(sim: &Sim, r#type: &str) -> Option<(String, String, String)> {
    sim.rollout
        .status
        .as_ref()
        .and_then(|s| s.condition(r#type))
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn message(sim: &Sim) -> String {
    sim.rollout
        .status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_default()
}

fn phase(sim: &Sim) -> Option<RolloutPhase> {
    sim.rollout.status.as_ref().and_then(|s| s.phase)
}

fn count(sim: &Sim, reason: &str) -> usize {
    sim.event_reasons().iter().filter(|r| **r == reason).count()
}

/// Lets `seconds` pass and reconciles (with a measurement if a run is due then).
fn after(sim: &mut Sim, seconds: i64) -> Plan {
    sim.advance(seconds);
    sim.reconcile()
}

// === passing ===

#[test]
fn a_step_with_analysis_holds_until_its_first_passing_run_then_asks_for_approval() {
    let mut sim = analysing(with_analysis(standard()));
    let s = state(&sim);
    assert_eq!((s.step_index, s.phase), (1, AnalysisPhase::Pending));
    assert_eq!(
        condition(&sim, condition::ANALYSIS).map(|c| (c.0, c.1)),
        Some(("Unknown".into(), "Pending".into()))
    );
    // Nothing is due before the interval: no queries, no progress, a requeue for the run.
    let plan = after(&mut sim, 5);
    assert_eq!(plan.requeue, Some(Duration::from_secs(5)));
    assert_eq!(sim.step(), (1, StepState::StepMetricsAnalysis));
    assert!(crate::analysis::pending_queries(&sim.rollout, sim.now).is_none());

    after(&mut sim, 5);
    assert_eq!(sim.step(), (1, StepState::StepPaused));
    let s = state(&sim);
    assert_eq!(s.phase, AnalysisPhase::Passing);
    assert_eq!(s.canary_requests, Some(1000.0));
    let checks: Vec<(&str, CheckVerdict, Option<f64>, &str)> = s
        .checks
        .iter()
        .map(|c| (c.name.as_str(), c.verdict, c.value, c.threshold.as_str()))
        .collect();
    assert_eq!(
        checks,
        [
            ("success-rate", CheckVerdict::Pass, Some(99.9), ">= 99%"),
            ("latency-p99", CheckVerdict::Pass, Some(20.0), "<= 500ms"),
        ]
    );
    assert_eq!(
        condition(&sim, condition::ANALYSIS).map(|c| (c.0, c.1)),
        Some(("True".into(), "ChecksPassing".into()))
    );
    let reasons = sim.event_reasons();
    assert!(reasons.ends_with(&[reasons::ANALYSIS_PASSED, reasons::STEP_PAUSED]));
    assert!(
        message(&sim).contains("waiting for approval"),
        "{}",
        message(&sim)
    );
}

#[test]
fn approval_cannot_come_before_the_checks_pass_and_the_release_completes_with_analysis() {
    let mut sim = analysing(with_analysis(standard()));
    // kubectl-kruise approves only StepPaused; the step is not there before a passing run.
    assert_eq!(
        sim.rollout.canary_status().map(|c| c.current_step_state),
        Some(StepState::StepMetricsAnalysis)
    );
    sim.run_until(|s| s.step() == (1, StepState::StepPaused), |_| {});
    sim.approve();
    sim.run_until(|s| s.step() == (2, StepState::StepPaused), |_| {});
    assert_eq!(state(&sim).step_index, 2);
    sim.approve();
    sim.run_until(|s| phase(s) == Some(RolloutPhase::Healthy), |_| {});
    assert_eq!(
        condition(&sim, condition::SUCCEEDED).map(|c| (c.0, c.1)),
        Some(("True".into(), condition::COMPLETED.into()))
    );
    assert!(sim.world.canary.is_none());
}

#[test]
fn a_timed_step_advances_once_the_checks_held_for_its_duration_and_not_before() {
    let mut sim = with_analysis(standard());
    for step in &mut canary(&mut sim).steps {
        step.pause.duration = Some(30);
    }
    let mut sim = analysing(sim);
    let started = state(&sim).start_time.expect("a start").0;
    for elapsed in [10, 20] {
        let at = started + SignedDuration::from_secs(elapsed);
        sim.advance((at.as_second() - sim.now.as_second()).max(0));
        sim.reconcile();
        assert_eq!(
            sim.step(),
            (1, StepState::StepMetricsAnalysis),
            "at {elapsed}s"
        );
        assert!(
            message(&sim).contains(&format!("held {elapsed}s of 30s")),
            "{}",
            message(&sim)
        );
    }
    // The run at 30 s (the hold's end) passes too: straight to the next step, no approval.
    sim.advance(10);
    sim.reconcile();
    assert_eq!(sim.step().0, 2);
    assert!(sim.event_reasons().contains(&reasons::ANALYSIS_PASSED));
    assert!(!sim.event_reasons().contains(&reasons::STEP_PAUSED));
}

#[test]
fn a_failed_run_restarts_the_hold_of_a_timed_step() {
    let mut sim = with_analysis(json!({
        "intervalSeconds": 10, "minRequests": 50, "failureLimit": 3,
        "successRate": {"minPercent": 99},
    }));
    canary(&mut sim).steps[0].pause.duration = Some(20);
    let mut sim = analysing(sim);
    after(&mut sim, 10); // pass: held since the start
    sim.world.prometheus.set("success-rate:canary", 0.5);
    after(&mut sim, 10); // fail 1
    assert_eq!(state(&sim).phase, AnalysisPhase::Failing);
    assert_eq!(state(&sim).passing_since, None);
    sim.world.prometheus = FakePrometheus::healthy();
    after(&mut sim, 10); // pass: held 10 s of 20
    assert_eq!(sim.step(), (1, StepState::StepMetricsAnalysis));
    assert_eq!(state(&sim).consecutive_failures, 0);
    after(&mut sim, 10); // held 20 s
    assert_eq!(sim.step().0, 2);
}

#[test]
fn a_last_step_at_full_size_passes_without_approval_once_its_checks_pass() {
    let mut sim = with_analysis(standard());
    canary(&mut sim).steps.push(crate::crd::CanaryStep {
        weight: Some(100),
        replicas: Some(
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("100%".into()),
        ),
        ..Default::default()
    });
    let mut sim = analysing(sim);
    for step in 1..=2 {
        sim.run_until(|s| s.step() == (step, StepState::StepPaused), |_| {});
        sim.approve();
    }
    sim.run_until(|s| s.step() == (3, StepState::StepMetricsAnalysis), |_| {});
    sim.run_until(|s| phase(s) == Some(RolloutPhase::Healthy), |_| {});
    assert_eq!(state(&sim).step_index, 3);
    assert_eq!(state(&sim).phase, AnalysisPhase::Passing);
}

// === failing ===

#[test]
fn failure_limit_failed_runs_abort_and_route_to_stable_in_the_same_reconcile() {
    let mut sim = analysing(with_analysis(standard()));
    sim.world.prometheus.set("success-rate:canary", 0.8);
    after(&mut sim, 10);
    assert_eq!(state(&sim).phase, AnalysisPhase::Failing);
    assert_eq!(state(&sim).consecutive_failures, 1);
    assert_eq!(
        sim.weight_percent(),
        Some(10.0),
        "one failure keeps the step"
    );
    assert_eq!(count(&sim, reasons::ANALYSIS_CHECK_FAILED), 1);
    let (status, reason, text) = condition(&sim, condition::ANALYSIS).expect("a condition");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "CheckFailing")
    );
    assert!(
        text.contains("success-rate 80% (threshold >= 99%)"),
        "{text}"
    );

    let plan = after(&mut sim, 10);
    assert!(
        plan.changes.contains(&Change::SetPluginRule(None)),
        "traffic must go back to stable in the reconcile that sees the second failure: {:?}",
        plan.changes
    );
    assert_eq!(sim.weight_percent(), None);
    assert_eq!(state(&sim).phase, AnalysisPhase::Failed);
    let (status, reason, text) = condition(&sim, condition::ANALYSIS).expect("a condition");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "CheckFailed"));
    assert_eq!(
        text,
        "Step 1/2: analysis failed: success-rate 80% (threshold >= 99%) (2 failed runs in a \
         row, limit 2)"
    );
    assert_eq!(
        condition(&sim, condition::PROGRESSING).map(|c| c.1),
        Some(condition::CANCELLING.into())
    );
    let failed = sim
        .events
        .iter()
        .find(|e| e.reason == reasons::ANALYSIS_FAILED)
        .expect("an AnalysisFailed event");
    assert_eq!(failed.kind, EventKind::Warning);
    assert!(failed.note.contains("success-rate 80%"), "{}", failed.note);

    // Then exactly as an abort: canary removed, Succeeded=False, the Deployment keeps v2
    // unreleased.
    sim.run();
    assert_eq!(phase(&sim), Some(RolloutPhase::Healthy));
    assert_eq!(
        condition(&sim, condition::SUCCEEDED).map(|c| (c.0, c.1)),
        Some(("False".into(), condition::COMPLETED.into()))
    );
    assert!(sim.world.canary.is_none());
    assert!(sim.world.canary_ingress.is_none());
    assert_eq!(sim.world.traffic(&sim.key()).share("v1"), 1.0);
    assert!(count(&sim, reasons::ROLLOUT_CANCELLED) == 1);
    let cancelled = sim
        .events
        .iter()
        .rev()
        .find(|e| e.reason == reasons::ROLLOUT_CANCELLED)
        .expect("cancelled");
    assert!(cancelled.note.contains("cancelled"));
    assert!(
        message(&sim).contains("rolled back by its analysis"),
        "{}",
        message(&sim)
    );
}

#[test]
fn a_revision_rolled_back_by_analysis_is_released_again_only_after_a_change() {
    let mut sim = analysing(with_analysis(standard()));
    sim.world.prometheus.set("success-rate:canary", 0.5);
    sim.run();
    assert_eq!(phase(&sim), Some(RolloutPhase::Healthy));
    // Reconciling again (a resync, a restart) does not start the same release over.
    let plan = sim.plan();
    assert!(plan.changes.is_empty(), "{:?}", plan.changes);
    assert!(message(&sim).contains("rolled back by its analysis"));

    // A new revision is released (and analysed afresh).
    sim.world.prometheus = FakePrometheus::healthy();
    sim.world.set_image("v3");
    sim.run_until(|s| s.step() == (1, StepState::StepPaused), |_| {});
    assert_eq!(state(&sim).phase, AnalysisPhase::Passing);
}

#[test]
fn after_an_undo_the_rolled_back_revision_may_be_tried_again() {
    let mut sim = analysing(with_analysis(standard()));
    sim.world.prometheus.set("success-rate:canary", 0.5);
    sim.run();
    sim.world.set_image("v1");
    sim.run();
    assert!(sim
        .rollout
        .canary_status()
        .is_some_and(|c| c.analysis.is_none()));
    sim.world.prometheus = FakePrometheus::healthy();
    sim.world.set_image("v2");
    sim.run_until(|s| s.step() == (1, StepState::StepPaused), |_| {});
}

#[test]
fn a_passing_run_between_failures_resets_the_count() {
    let mut sim = analysing(with_analysis(standard()));
    for (success, failures) in [(0.5, 1), (0.999, 0), (0.5, 1)] {
        sim.world.prometheus.set("success-rate:canary", success);
        // The pass moves the step to StepPaused, where the checks keep running.
        after(&mut sim, 10);
        assert_eq!(state(&sim).consecutive_failures, failures);
    }
    assert_eq!(phase(&sim), Some(RolloutPhase::Progressing));
    assert_eq!(sim.weight_percent(), Some(10.0));
}

#[test]
fn checks_keep_running_while_a_step_waits_for_approval_and_a_failure_aborts() {
    let mut sim = analysing(with_analysis(standard()));
    let plan = after(&mut sim, 10);
    assert_eq!(sim.step(), (1, StepState::StepPaused));
    assert_eq!(plan.requeue, Some(Duration::from_secs(10)));
    sim.world.prometheus.set("latency-p99:canary", 900.0);
    after(&mut sim, 10);
    after(&mut sim, 10);
    assert_eq!(state(&sim).phase, AnalysisPhase::Failed);
    assert_eq!(sim.weight_percent(), None);
    let (_, _, text) = condition(&sim, condition::ANALYSIS).expect("a condition");
    assert!(
        text.contains("latency-p99 900ms (threshold <= 500ms)"),
        "{text}"
    );
}

// === no verdict ===

#[test]
fn too_few_requests_hold_the_step_forever_by_default() {
    let mut sim = analysing(with_analysis(standard()));
    sim.world.prometheus.set("requests", 12.0);
    sim.world.prometheus.set("success-rate:canary", 0.5);
    for _ in 0..20 {
        after(&mut sim, 10);
    }
    assert_eq!(sim.step(), (1, StepState::StepMetricsAnalysis));
    let s = state(&sim);
    assert_eq!(s.phase, AnalysisPhase::NoVerdict);
    assert_eq!(s.consecutive_failures, 0, "no verdict is not a failure");
    assert!(s
        .checks
        .iter()
        .all(|c| c.verdict == CheckVerdict::TooFewRequests));
    assert_eq!(
        condition(&sim, condition::ANALYSIS).map(|c| (c.0, c.1)),
        Some(("Unknown".into(), "TooFewRequests".into()))
    );
    assert!(
        message(&sim).contains("12 canary responses in the window, 50 needed"),
        "{}",
        message(&sim)
    );
    assert_eq!(count(&sim, reasons::ANALYSIS_CHECK_FAILED), 0);
}

#[test]
fn with_no_data_fail_a_step_without_a_verdict_aborts_after_the_timeout() {
    let mut analysis = standard();
    analysis["noData"] = json!({"action": "Fail", "timeoutSeconds": 25});
    let mut sim = analysing(with_analysis(analysis));
    sim.world.prometheus.answers.clear();
    after(&mut sim, 10);
    after(&mut sim, 10);
    assert_eq!(state(&sim).phase, AnalysisPhase::NoVerdict);
    assert_eq!(sim.weight_percent(), Some(10.0));
    after(&mut sim, 10); // 30 s without a verdict
    assert_eq!(state(&sim).phase, AnalysisPhase::Failed);
    assert_eq!(sim.weight_percent(), None);
    let (_, _, text) = condition(&sim, condition::ANALYSIS).expect("a condition");
    assert!(text.contains("no verdict for 25s"), "{text}");
}

#[test]
fn prometheus_down_is_never_a_pass_and_is_reported_once_per_outage() {
    let mut sim = analysing(with_analysis(standard()));
    sim.world.prometheus.down = true;
    for _ in 0..5 {
        after(&mut sim, 10);
    }
    assert_eq!(sim.step(), (1, StepState::StepMetricsAnalysis));
    assert_eq!(state(&sim).phase, AnalysisPhase::NoVerdict);
    let (status, reason, text) = condition(&sim, condition::ANALYSIS).expect("a condition");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("Unknown", "PrometheusError")
    );
    assert!(text.contains("connection refused"), "{text}");
    assert_eq!(count(&sim, reasons::ANALYSIS_ERROR), 1);
    assert!(
        message(&sim).contains("querying Prometheus failed"),
        "{}",
        message(&sim)
    );

    sim.world.prometheus.down = false;
    after(&mut sim, 10);
    assert_eq!(sim.step(), (1, StepState::StepPaused));
}

#[test]
fn a_query_error_of_one_check_is_no_verdict_but_a_failing_check_still_counts() {
    let mut sim = analysing(with_analysis(standard()));
    sim.world.prometheus.answers.insert(
        "latency-p99:canary".into(),
        Answer::Error("HTTP 422: query timed out".into()),
    );
    after(&mut sim, 10);
    assert_eq!(state(&sim).phase, AnalysisPhase::NoVerdict);
    sim.world.prometheus.set("success-rate:canary", 0.2);
    after(&mut sim, 10);
    assert_eq!(state(&sim).phase, AnalysisPhase::Failing);
}

// === per step, changes, restarts ===

#[test]
fn a_step_can_turn_analysis_off_or_override_its_thresholds() {
    let mut sim = with_analysis(standard());
    canary(&mut sim).steps[0].analysis =
        Some(serde_json::from_value(json!({"enabled": false})).expect("an analysis"));
    canary(&mut sim).steps[1].analysis = Some(
        serde_json::from_value(json!({"successRate": {"minPercent": 99.95}})).expect("an analysis"),
    );
    sim.run();
    sim.world.set_image("v2");
    sim.run_until(|s| s.step() == (1, StepState::StepPaused), |_| {});
    assert!(sim
        .rollout
        .canary_status()
        .is_some_and(|c| c.analysis.is_none()));
    sim.approve();
    sim.run_until(|s| s.step() == (2, StepState::StepMetricsAnalysis), |_| {});
    for _ in 0..3 {
        after(&mut sim, 10);
    }
    // 99.9% < 99.95%: the step's own threshold; its latency check is inherited.
    let s = state(&sim);
    assert_eq!(s.phase, AnalysisPhase::Failed);
    assert_eq!(
        s.checks.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        ["success-rate", "latency-p99"]
    );
}

#[test]
fn changing_the_analysis_mid_release_keeps_the_step_and_applies_from_the_next_run() {
    let mut sim = analysing(with_analysis(standard()));
    sim.world.prometheus.set("success-rate:canary", 0.98);
    after(&mut sim, 10);
    assert_eq!(state(&sim).phase, AnalysisPhase::Failing);
    canary(&mut sim).analysis = Some(
        serde_json::from_value(json!({
            "intervalSeconds": 10, "minRequests": 50, "successRate": {"minPercent": 95},
        }))
        .expect("an analysis"),
    );
    sim.rollout.metadata.generation = Some(2);
    after(&mut sim, 10);
    assert!(!sim.event_reasons().contains(&reasons::PLAN_CHANGED));
    assert_eq!(sim.step(), (1, StepState::StepPaused));
}

#[test]
fn answers_for_another_step_or_revision_are_ignored() {
    let mut sim = analysing(with_analysis(standard()));
    sim.advance(10);
    let mut observed = sim.world.observe();
    let mut measurement = sim
        .world
        .prometheus
        .measure(&sim.rollout, sim.now)
        .expect("a run is due");
    measurement.canary_revision = "another".into();
    observed.measurement = Some(measurement);
    let plan = plan(&sim.rollout, &observed, sim.now);
    let cs = plan.status.canary_status.expect("a release");
    assert_eq!(cs.current_step_state, StepState::StepMetricsAnalysis);
    assert_eq!(cs.analysis.map(|a| a.phase), Some(AnalysisPhase::Pending));
}

#[test]
fn the_analysis_state_lives_in_the_status_so_a_restart_continues_the_count() {
    let mut sim = analysing(with_analysis(standard()));
    sim.world.prometheus.set("success-rate:canary", 0.5);
    after(&mut sim, 10);
    // A new controller process: nothing but the Rollout as stored.
    let stored: Rollout =
        serde_json::from_value(serde_json::to_value(&sim.rollout).expect("serializes"))
            .expect("deserializes");
    assert_eq!(stored, sim.rollout);
    sim.rollout = stored;
    after(&mut sim, 10);
    assert_eq!(state(&sim).phase, AnalysisPhase::Failed);
}

#[test]
fn query_windows_never_reach_back_before_the_release_traffic() {
    let mut sim = analysing(with_analysis(standard()));
    sim.advance(10);
    let plan = crate::analysis::pending_queries(&sim.rollout, sim.now).expect("a run is due");
    // Routing (+3 s grace) began the traffic; 13 s ago at most.
    let requests = &plan.queries[0];
    assert_eq!(requests.id, "requests");
    assert!(requests.promql.ends_with("[13s]))"), "{}", requests.promql);
    sim.reconcile();
    sim.advance(100);
    let plan = crate::analysis::pending_queries(&sim.rollout, sim.now).expect("a run is due");
    assert!(
        plan.queries[0].promql.ends_with("[60s]))"),
        "{}",
        plan.queries[0].promql
    );
}
