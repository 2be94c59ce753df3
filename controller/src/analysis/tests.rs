//! Table tests of the pure analysis: placeholders, the queries, verdicts, the step's state, and
//! the validation of analysis specs (in [`crate::validate`]).

use serde_json::json;

use super::*;
use crate::{
    crd::{AnalysisPhase, CheckVerdict},
    step::sim::{parse_rollout, ROLLOUT_CANARY},
    validate::Release,
};

fn ctx() -> QueryContext {
    QueryContext {
        namespace: "shop".into(),
        name: "web".into(),
        rollout: "shop/web".into(),
        pod_template_hash: "6f9c".into(),
        stable_pod_template_hash: "5d8b".into(),
        window_seconds: 45,
    }
}

fn analysis(checks: Vec<Check>) -> Analysis {
    Analysis {
        interval_seconds: 10,
        window_seconds: 60,
        min_requests: 50,
        failure_limit: 2,
        no_data: NoDataPolicy::Wait,
        checks,
    }
}

fn check(name: &str, kind: CheckKind) -> Check {
    Check {
        name: name.into(),
        kind,
    }
}

fn success_rate(min_percent: f64) -> Check {
    check("success-rate", CheckKind::SuccessRate { min_percent })
}

fn answers(pairs: &[(&str, Answer)]) -> BTreeMap<String, Answer> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn v(x: f64) -> Answer {
    Answer::Values(vec![x])
}

fn empty() -> Answer {
    Answer::Values(Vec::new())
}

fn at(second: i64) -> Timestamp {
    Timestamp::from_second(1_767_225_600 + second).expect("a valid time")
}

// === placeholders and queries ===

#[test]
fn placeholders_are_found_and_unknown_or_unclosed_ones_are_errors() {
    let q =
        "sum(rate(http_errors{namespace=\"{{namespace}}\",pod=~\"{{ name }}-.*\"}[{{window}}]))";
    assert_eq!(placeholders_in(q), Ok(vec!["namespace", "name", "window"]));
    assert_eq!(placeholders_in("up"), Ok(vec![]));
    let unknown = placeholders_in("x{a=\"{{canary}}\"}").expect_err("unknown placeholder");
    assert!(
        unknown.starts_with("unknown placeholder {{canary}}; use one of {{namespace}}"),
        "{unknown}"
    );
    let open = placeholders_in("x{a=\"{{rollout\"}").expect_err("unclosed");
    assert!(open.contains("never closed"), "{open}");
}

#[test]
fn placeholders_expand_to_the_run_context() {
    let q = "a{ns=\"{{namespace}}\",n=\"{{name}}\",r=\"{{rollout}}\",v=\"{{version}}\",\
             h=\"{{podTemplateHash}}\",s=\"{{stablePodTemplateHash}}\"}[{{ window }}]";
    assert_eq!(
        expand(q, &ctx()),
        "a{ns=\"shop\",n=\"web\",r=\"shop/web\",v=\"canary\",h=\"6f9c\",s=\"5d8b\"}[45s]"
    );
}

#[test]
fn the_built_in_checks_query_the_plugin_metrics_of_this_rollout() {
    let a = analysis(vec![
        success_rate(99.0),
        check(
            "success-rate-vs-stable",
            CheckKind::SuccessRateVsStable { max_drop: 1.0 },
        ),
        check(
            "latency-p99.9",
            CheckKind::Latency {
                percentile: 99.9,
                max_ms: 300.0,
            },
        ),
        check(
            "errors",
            CheckKind::Query {
                template: "sum(rate(errors{ns=\"{{namespace}}\"}[{{window}}]))".into(),
                min: None,
                max: Some(1.0),
            },
        ),
    ]);
    let queries: Vec<(String, String)> = queries(&a, &ctx())
        .into_iter()
        .map(|q| (q.id, q.promql))
        .collect();
    let sel = |v: &str| format!("rollout=\"shop/web\",version=\"{v}\"");
    let rate = |v: &str| {
        format!(
            "sum(rate(higress_canary_responses{{{},code=~\"[1-4]xx\"}}[45s])) / \
             sum(rate(higress_canary_responses{{{},code=~\"[1-5]xx\"}}[45s]))",
            sel(v),
            sel(v)
        )
    };
    assert_eq!(
        queries,
        vec![
            (
                "requests".to_owned(),
                format!(
                    "sum(increase(higress_canary_responses{{{}}}[45s]))",
                    sel("canary")
                )
            ),
            ("success-rate:canary".to_owned(), rate("canary")),
            ("success-rate:stable".to_owned(), rate("stable")),
            (
                "latency-p99.9:canary".to_owned(),
                format!(
                    "histogram_quantile(0.9990000000000001, sum by (le) \
                     (rate(higress_canary_latency_ms_bucket{{{}}}[45s])))",
                    sel("canary")
                )
            ),
            (
                "check:errors".to_owned(),
                "sum(rate(errors{ns=\"shop\"}[45s]))".to_owned()
            ),
        ]
    );
}

// === verdicts ===

/// (name, analysis, answers, run verdict, first check's verdict, part of the summary)
type Case = (
    &'static str,
    Analysis,
    Vec<(&'static str, Answer)>,
    Verdict,
    CheckVerdict,
    &'static str,
);

#[test]
fn verdicts_of_single_runs() {
    let sr = || analysis(vec![success_rate(99.0)]);
    let latency_vs_stable = || {
        analysis(vec![check(
            "latency-p99-vs-stable",
            CheckKind::LatencyVsStable {
                percentile: 99.0,
                max_ratio: 1.5,
            },
        )])
    };
    let custom = |min, max| {
        analysis(vec![check(
            "errors",
            CheckKind::Query {
                template: "x".into(),
                min,
                max,
            },
        )])
    };
    let err = |m: &str| Answer::Error(m.into());
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("pass", sr(), vec![("requests", v(100.0)), ("success-rate:canary", v(0.995))],
            Verdict::Pass, CheckVerdict::Pass, "all 1 checks pass (100 canary responses): success-rate 99.5% (threshold >= 99%)"),
        ("exactly at the bound", sr(), vec![("requests", v(100.0)), ("success-rate:canary", v(0.99))],
            Verdict::Pass, CheckVerdict::Pass, "all 1 checks pass"),
        ("fail", sr(), vec![("requests", v(100.0)), ("success-rate:canary", v(0.8))],
            Verdict::Fail, CheckVerdict::Fail, "failed: success-rate 80% (threshold >= 99%)"),
        ("too few requests hide a failure", sr(), vec![("requests", v(49.0)), ("success-rate:canary", v(0.5))],
            Verdict::NoVerdict(NoVerdict::TooFewRequests), CheckVerdict::TooFewRequests,
            "no verdict: 49 canary responses in the window, 50 needed"),
        ("no series for the request count is zero requests", sr(), vec![("requests", empty()), ("success-rate:canary", empty())],
            Verdict::NoVerdict(NoVerdict::TooFewRequests), CheckVerdict::NoData, "no verdict: 0 canary responses"),
        ("NaN (no traffic in the window) is no data", sr(), vec![("requests", v(100.0)), ("success-rate:canary", v(f64::NAN))],
            Verdict::NoVerdict(NoVerdict::NoData), CheckVerdict::NoData, "no verdict: success-rate: no data"),
        ("Prometheus down", sr(), vec![("requests", err("connection refused")), ("success-rate:canary", err("connection refused"))],
            Verdict::NoVerdict(NoVerdict::Error), CheckVerdict::Error, "no verdict: querying Prometheus failed: connection refused"),
        ("one query failing", sr(), vec![("requests", v(100.0)), ("success-rate:canary", err("HTTP 422: timeout"))],
            Verdict::NoVerdict(NoVerdict::Error), CheckVerdict::Error, "no verdict: success-rate: HTTP 422: timeout"),
        ("relative latency within", latency_vs_stable(), vec![("requests", v(100.0)), ("latency-p99:canary", v(29.0)), ("latency-p99:stable", v(20.0))],
            Verdict::Pass, CheckVerdict::Pass, "latency-p99-vs-stable 29ms (threshold <= 30ms (1.5 x stable 20ms))"),
        ("relative latency above", latency_vs_stable(), vec![("requests", v(100.0)), ("latency-p99:canary", v(31.0)), ("latency-p99:stable", v(20.0))],
            Verdict::Fail, CheckVerdict::Fail, "failed: latency-p99-vs-stable 31ms"),
        ("relative latency never tighter than 1 ms", latency_vs_stable(), vec![("requests", v(100.0)), ("latency-p99:canary", v(0.9)), ("latency-p99:stable", v(0.2))],
            Verdict::Pass, CheckVerdict::Pass, "(threshold <= 1ms (1.5 x stable 0.2ms))"),
        ("relative without stable traffic", latency_vs_stable(), vec![("requests", v(100.0)), ("latency-p99:canary", v(31.0)), ("latency-p99:stable", v(f64::NAN))],
            Verdict::NoVerdict(NoVerdict::NoData), CheckVerdict::NoData, "no data for the stable version"),
        ("custom within a range", custom(Some(1.0), Some(5.0)), vec![("requests", v(100.0)), ("check:errors", v(5.0))],
            Verdict::Pass, CheckVerdict::Pass, "errors 5 (threshold between 1 and 5)"),
        ("custom below its min", custom(Some(1.0), None), vec![("requests", v(100.0)), ("check:errors", v(0.5))],
            Verdict::Fail, CheckVerdict::Fail, "errors 0.5 (threshold >= 1)"),
        ("custom with several series", custom(None, Some(1.0)), vec![("requests", v(100.0)), ("check:errors", Answer::Values(vec![0.1, 0.2]))],
            Verdict::NoVerdict(NoVerdict::Error), CheckVerdict::Error, "returned 2 series; aggregate them"),
    ];
    for (name, a, given, verdict, check_verdict, summary) in cases {
        let run = evaluate(&a, &answers(&given));
        assert_eq!(run.verdict, verdict, "{name}: {run:?}");
        assert_eq!(run.checks[0].verdict, check_verdict, "{name}: {run:?}");
        assert!(
            run.summary.contains(summary),
            "{name}: {:?} does not contain {summary:?}",
            run.summary
        );
    }
}

#[test]
fn relative_success_rate_compares_with_stable_in_points() {
    let a = analysis(vec![check(
        "success-rate-vs-stable",
        CheckKind::SuccessRateVsStable { max_drop: 1.0 },
    )]);
    let run = |canary: f64| {
        evaluate(
            &a,
            &answers(&[
                ("requests", v(100.0)),
                ("success-rate:canary", v(canary)),
                ("success-rate:stable", v(0.995)),
            ]),
        )
    };
    assert_eq!(run(0.986).verdict, Verdict::Pass);
    let failed = run(0.98);
    assert_eq!(failed.verdict, Verdict::Fail);
    assert_eq!(failed.checks[0].stable_value, Some(99.5));
    assert_eq!(failed.checks[0].threshold, ">= 98.5% (stable 99.5% - 1)");
}

// === the step's state ===

fn run_of(verdict: Verdict) -> Run {
    Run {
        verdict,
        requests: Some(100.0),
        checks: Vec::new(),
        summary: match verdict {
            Verdict::Fail => "failed: success-rate 80% (threshold >= 99%)".into(),
            _ => "no verdict: 3 canary responses in the window, 50 needed".into(),
        },
    }
}

#[test]
fn runs_move_the_state_streaks_failures_and_no_verdict_time() {
    let a = analysis(vec![success_rate(99.0)]);
    let mut s = start(1, Some(Time(at(-3))), at(0));
    assert_eq!(s.traffic_since, Some(Time(at(-3))));
    assert_eq!(next_run_at(&s, &a, 0, at(0)), at(10));

    assert_eq!(
        record(&mut s, &a, &run_of(Verdict::Pass), at(10)),
        Outcome::Continue
    );
    assert_eq!(s.phase, AnalysisPhase::Passing);
    // A pass vouches for the time since the previous run (here the start).
    assert_eq!(s.passing_since, Some(Time(at(0))));
    assert!(held_for(&s, 10, at(10)));
    assert!(!held_for(&s, 30, at(10)));
    // A timed step runs again when the hold ends, if that comes before the interval.
    assert_eq!(next_run_at(&s, &a, 15, at(10)), at(15));
    assert_eq!(next_run_at(&s, &a, 0, at(10)), at(20));

    record(&mut s, &a, &run_of(Verdict::Pass), at(20));
    assert_eq!(s.passing_since, Some(Time(at(0))));
    assert!(held_for(&s, 20, at(20)));

    assert_eq!(
        record(&mut s, &a, &run_of(Verdict::Fail), at(30)),
        Outcome::Continue
    );
    assert_eq!(
        (s.phase, s.consecutive_failures, s.passing_since.clone()),
        (AnalysisPhase::Failing, 1, None)
    );
    record(
        &mut s,
        &a,
        &run_of(Verdict::NoVerdict(NoVerdict::TooFewRequests)),
        at(40),
    );
    assert_eq!(
        (s.phase, s.consecutive_failures),
        (AnalysisPhase::NoVerdict, 1)
    );
    assert_eq!(s.no_verdict_since, Some(Time(at(30))));
    let Outcome::Abort(why) = record(&mut s, &a, &run_of(Verdict::Fail), at(50)) else {
        panic!("the second failure must abort");
    };
    assert_eq!(
        why,
        "success-rate 80% (threshold >= 99%) (2 failed runs in a row, limit 2)"
    );
    assert_eq!(s.phase, AnalysisPhase::Failed);
}

#[test]
fn no_verdict_waits_or_fails_after_its_timeout() {
    let mut wait = analysis(vec![success_rate(99.0)]);
    let mut s = start(1, None, at(0));
    for t in 1..=100 {
        assert_eq!(
            record(
                &mut s,
                &wait,
                &run_of(Verdict::NoVerdict(NoVerdict::Error)),
                at(10 * t)
            ),
            Outcome::Continue
        );
    }
    wait.no_data = NoDataPolicy::FailAfter { seconds: 25 };
    let mut s = start(1, None, at(0));
    record(&mut s, &wait, &run_of(Verdict::Pass), at(10));
    assert_eq!(
        record(
            &mut s,
            &wait,
            &run_of(Verdict::NoVerdict(NoVerdict::NoData)),
            at(20)
        ),
        Outcome::Continue
    );
    assert_eq!(
        record(
            &mut s,
            &wait,
            &run_of(Verdict::NoVerdict(NoVerdict::NoData)),
            at(30)
        ),
        Outcome::Continue
    );
    let Outcome::Abort(why) = record(
        &mut s,
        &wait,
        &run_of(Verdict::NoVerdict(NoVerdict::NoData)),
        at(40),
    ) else {
        panic!("30 s without a verdict must abort");
    };
    assert!(
        why.starts_with("no verdict for 25s (noData action Fail): 3 canary responses"),
        "{why}"
    );
}

#[test]
fn runs_keep_to_the_interval_grid_of_whole_seconds() {
    let a = analysis(vec![success_rate(99.0)]);
    let late = |t: Timestamp, ms: i64| {
        t.checked_add(SignedDuration::from_millis(ms))
            .expect("valid")
    };
    // Times are stored in whole seconds (as metav1.Time writes them).
    let mut s = start(1, None, late(at(0), 300));
    assert_eq!(s.start_time, Some(Time(at(0))));
    // A late run does not push the ones after it.
    record(&mut s, &a, &run_of(Verdict::Pass), late(at(10), 900));
    assert_eq!(s.last_run_time, Some(Time(at(10))));
    assert_eq!(next_run_at(&s, &a, 0, at(11)), at(20));
    // A run that came very late (a Prometheus timeout) skips the missed points.
    record(&mut s, &a, &run_of(Verdict::Pass), at(34));
    assert_eq!(next_run_at(&s, &a, 0, at(34)), at(40));
}

#[test]
fn numbers_are_shown_with_at_most_two_decimals() {
    for (x, shown) in [
        (99.0, "99"),
        (99.5, "99.5"),
        (80.123, "80.12"),
        (0.004, "0"),
        (-0.001, "0"),
        (1234.5, "1234.5"),
    ] {
        assert_eq!(number(x), shown);
    }
    assert_eq!(latency_name(99.9), "latency-p99.9");
}

// === validation (validate.rs) ===

/// The seed Rollout with this rollout-level analysis and, on step 1, this step analysis.
fn validated(
    rollout_level: serde_json::Value,
    step: Option<serde_json::Value>,
) -> Result<Release, String> {
    let mut rollout = parse_rollout(ROLLOUT_CANARY);
    let canary = rollout.spec.strategy.canary.as_mut().expect("canary");
    canary.analysis = serde_json::from_value(rollout_level).expect("analysis");
    if let Some(step) = step {
        canary.steps[0].analysis = Some(serde_json::from_value(step).expect("analysis"));
    }
    Release::from_rollout(&rollout).map_err(|e| e.message)
}

#[test]
fn analysis_specs_resolve_with_defaults_and_step_overrides() {
    let release = validated(
        json!({"successRate": {"minPercent": 99, "maxDropFromStable": 0.5}, "latency": {"maxRatioToStable": 2}}),
        Some(json!({"intervalSeconds": 5, "checks": [{"name": "errors", "query": "sum(x)", "max": 0}]})),
    )
    .expect("valid");
    let first = release.steps[0].analysis.clone().expect("analysis");
    assert_eq!(
        (
            first.interval_seconds,
            first.window_seconds,
            first.min_requests,
            first.failure_limit,
            first.no_data
        ),
        (5, 60, 50, 2, NoDataPolicy::Wait)
    );
    assert_eq!(
        first
            .checks
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        [
            "success-rate",
            "success-rate-vs-stable",
            "latency-p99-vs-stable",
            "errors"
        ]
    );
    let second = release.steps[1].analysis.clone().expect("analysis");
    assert_eq!(second.interval_seconds, 30);
    assert_eq!(second.checks.len(), 3);

    let fail = validated(
        json!({"failureLimit": 3, "intervalSeconds": 20, "noData": {"action": "Fail"}, "successRate": {"minPercent": 99}}),
        Some(json!({"enabled": false})),
    )
    .expect("valid");
    assert_eq!(fail.steps[0].analysis, None);
    assert_eq!(
        fail.steps[1].analysis.as_ref().map(|a| a.no_data),
        Some(NoDataPolicy::FailAfter { seconds: 60 })
    );
    assert_eq!(
        validated(json!(null), None).map(|r| r.steps[0].analysis.clone()),
        Ok(None)
    );
}

#[test]
fn invalid_analysis_specs_name_the_field_and_say_what_to_fix() {
    let a = "spec.strategy.canary.analysis";
    let s = "spec.strategy.canary.steps[0].analysis";
    #[rustfmt::skip]
    let cases: Vec<(serde_json::Value, Option<serde_json::Value>, String)> = vec![
        (json!({"intervalSeconds": 0, "successRate": {"minPercent": 99}}), None,
            format!("{a}.intervalSeconds must be between 1 and 86400, got 0")),
        (json!({"failureLimit": 0, "successRate": {"minPercent": 99}}), None,
            format!("{a}.failureLimit must be between 1 and 1000, got 0")),
        (json!({"minRequests": -1, "successRate": {"minPercent": 99}}), None,
            format!("{a}.minRequests must be between 0 and")),
        (json!({"successRate": {"minPercent": 101}}), None,
            format!("{a}.successRate.minPercent must be a percentage between 0 and 100, got 101")),
        (json!({"successRate": {}}), None,
            format!("{a}.successRate: set minPercent, maxDropFromStable or both")),
        (json!({"latency": {"percentile": 100, "maxMs": 10}}), None,
            format!("{a}.latency.percentile must be above 0 and below 100")),
        (json!({"latency": {"maxMs": 0}}), None,
            format!("{a}.latency.maxMs must be a positive number of milliseconds, got 0")),
        (json!({"noData": {"action": "Wait", "timeoutSeconds": 5}, "successRate": {"minPercent": 99}}), None,
            format!("{a}.noData.timeoutSeconds applies only with action: Fail")),
        (json!({"checks": [{"name": "e", "query": "x{a=\"{{pod}}\"}", "max": 1}]}), None,
            format!("{a}.checks[0].query: unknown placeholder {{{{pod}}}}")),
        (json!({"checks": [{"name": "e", "query": "x", "min": 2, "max": 1}]}), None,
            format!("{a}.checks[0]: min (2) is greater than max (1)")),
        (json!({"checks": [{"name": "e", "query": "x"}]}), None,
            format!("{a}.checks[0]: set min, max or both")),
        (json!({"checks": [{"name": "Bad_Name", "query": "x", "max": 1}]}), None,
            format!("{a}.checks[0].name \"Bad_Name\" must be 1-63 lowercase letters")),
        (json!({"checks": [{"name": "e", "query": "x", "max": 1}, {"name": "e", "query": "y", "max": 1}]}), None,
            format!("{a}.checks[1].name \"e\" is used twice")),
        (json!({"checks": [{"name": "success-rate", "query": "x", "max": 1}], "successRate": {"minPercent": 99}}), None,
            format!("{a}.checks: the name \"success-rate\" is a built-in check's")),
        (json!({"intervalSeconds": 10}), None,
            format!("{a} has no checks: set successRate, latency or checks")),
        (json!({"successRate": {"minPercent": 99}}), Some(json!({"windowSeconds": 0})),
            format!("{s}.windowSeconds must be between 1 and 604800, got 0")),
        (json!(null), Some(json!({"failureLimit": 2})),
            format!("{s} has no checks")),
    ];
    for (rollout_level, step, want) in cases {
        let got = validated(rollout_level.clone(), step.clone()).expect_err(&want);
        assert!(
            got.starts_with(&want),
            "{rollout_level} / {step:?}:\n  got  {got}\n  want {want}"
        );
    }
}

#[test]
fn built_in_checks_need_a_step_with_a_plugin_rule() {
    let mut rollout = parse_rollout(ROLLOUT_CANARY);
    let canary = rollout.spec.strategy.canary.as_mut().expect("canary");
    canary.analysis = serde_json::from_value(json!({"successRate": {"minPercent": 99}})).ok();
    canary.steps[1].weight = None;
    let err = Release::from_rollout(&rollout).expect_err("no rule, no plugin metrics");
    assert!(
        err.message.starts_with(
            "spec.strategy.canary.steps[1]: successRate and latency read the plugin's metrics"
        ),
        "{}",
        err.message
    );
    // Custom checks are fine there.
    canary_checks_only(&mut rollout);
    assert!(Release::from_rollout(&rollout).is_ok());
}

fn canary_checks_only(rollout: &mut crate::crd::Rollout) {
    let canary = rollout.spec.strategy.canary.as_mut().expect("canary");
    canary.analysis = serde_json::from_value(
        json!({"checks": [{"name": "restarts", "query": "sum(kube_pod_container_status_restarts_total{namespace=\"{{namespace}}\"})", "max": 0}]}),
    )
    .ok();
}

#[test]
fn the_status_command_lists_each_check_with_its_value_and_threshold() {
    let a = analysis(vec![
        success_rate(99.0),
        check(
            "latency-p99",
            CheckKind::Latency {
                percentile: 99.0,
                max_ms: 500.0,
            },
        ),
    ]);
    let mut s = start(2, None, at(0));
    let run = evaluate(
        &a,
        &answers(&[
            ("requests", v(412.0)),
            ("success-rate:canary", v(0.9976)),
            (
                "latency-p99:canary",
                Answer::Error("HTTP 422: timeout".into()),
            ),
        ]),
    );
    record(&mut s, &a, &run, at(10));
    assert_eq!(
        describe_status(&s),
        "analysis (step 2): NoVerdict, 0 failed runs in a row, 412 canary responses in the window\n\
         \x20 success-rate             Pass            99.76%       >= 99%\n\
         \x20 latency-p99              Error           -            <= 500ms (HTTP 422: timeout)\n"
    );
}
