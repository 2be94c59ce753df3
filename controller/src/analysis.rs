//! Metric analysis, sans I/O: which PromQL queries a step's checks need ([`pending_queries`]),
//! what their answers mean ([`evaluate`]) and how a run moves the step's analysis state
//! ([`record`]). The reconcile loop asks Prometheus ([`crate::prometheus`]) for the queries
//! [`pending_queries`] names and hands the answers to the planner as
//! [`crate::observed::Observed::measurement`]; [`crate::step`] calls [`evaluate`] and
//! [`record`] and decides whether the step advances, waits or aborts.
//!
//! The built-in checks read the Wasm plugin's own metrics for this Rollout's rule
//! (`higress_canary_responses{rollout, version, code}` and
//! `higress_canary_latency_ms_bucket{rollout, version, le}`, docs/plugin-config.md). A run
//! gives a verdict only once the canary served `minRequests` responses in the window; runs
//! without a verdict (no data, too few requests, Prometheus unreachable) are never a pass.

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::{
    crd::{
        condition, AnalysisPhase, AnalysisStatus, CheckStatus, CheckVerdict, Rollout, RolloutPhase,
        StepState,
    },
    validate::{Names, Release},
};

/// Default `intervalSeconds`.
pub const DEFAULT_INTERVAL_SECONDS: i64 = 30;
/// Default `windowSeconds`.
pub const DEFAULT_WINDOW_SECONDS: i64 = 60;
/// Default `minRequests`.
pub const DEFAULT_MIN_REQUESTS: u64 = 50;
/// Default `failureLimit`.
pub const DEFAULT_FAILURE_LIMIT: u32 = 2;
/// Default latency percentile.
pub const DEFAULT_PERCENTILE: f64 = 99.0;
/// The plugin's finest latency bucket: a relative latency bound is never tighter.
pub const FINEST_LATENCY_BUCKET_MS: f64 = 1.0;

/// The placeholders of custom queries.
pub const PLACEHOLDERS: &[&str] = &[
    "namespace",
    "name",
    "rollout",
    "version",
    "podTemplateHash",
    "stablePodTemplateHash",
    "window",
];

/// The query id of the canary's response count, asked with every run.
pub const REQUESTS_QUERY: &str = "requests";

/// A step's analysis, validated, with defaults applied ([`crate::validate`] builds it).
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    pub interval_seconds: i64,
    pub window_seconds: i64,
    pub min_requests: u64,
    pub failure_limit: u32,
    pub no_data: NoDataPolicy,
    pub checks: Vec<Check>,
}

/// What runs without a verdict do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoDataPolicy {
    /// Hold the step.
    Wait,
    /// Abort once there was no verdict for this long.
    FailAfter { seconds: i64 },
}

/// One check.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// Unique within the analysis; shown in the status and events.
    pub name: String,
    pub kind: CheckKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CheckKind {
    /// Canary success rate (percent) at least this.
    SuccessRate { min_percent: f64 },
    /// Canary success rate at most this many percentage points below stable's.
    SuccessRateVsStable { max_drop: f64 },
    /// Canary latency at `percentile` at most this many ms.
    Latency { percentile: f64, max_ms: f64 },
    /// Canary latency at `percentile` at most `max_ratio` × stable's.
    LatencyVsStable { percentile: f64, max_ratio: f64 },
    /// A custom query (with placeholders) whose value must be within `[min, max]`.
    Query {
        template: String,
        min: Option<f64>,
        max: Option<f64>,
    },
}

/// The names of the built-in checks.
pub fn success_rate_name() -> String {
    "success-rate".to_owned()
}

pub fn success_rate_vs_stable_name() -> String {
    "success-rate-vs-stable".to_owned()
}

pub fn latency_name(percentile: f64) -> String {
    format!("latency-p{}", number(percentile))
}

pub fn latency_vs_stable_name(percentile: f64) -> String {
    format!("latency-p{}-vs-stable", number(percentile))
}

// === placeholders ===

/// The placeholders a custom query uses, in order; an error names the first problem.
pub fn placeholders_in(query: &str) -> Result<Vec<&str>, String> {
    let mut found = Vec::new();
    let mut rest = query;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            return Err(format!(
                "\"{{{{\" at byte {} is never closed with \"}}}}\"",
                query.len() - rest.len() + open
            ));
        };
        let name = after[..close].trim();
        if !PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "unknown placeholder {{{{{name}}}}}; use one of {}",
                PLACEHOLDERS
                    .iter()
                    .map(|p| format!("{{{{{p}}}}}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        found.push(name);
        rest = &after[close + 2..];
    }
    Ok(found)
}

/// What placeholders stand for in one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryContext {
    pub namespace: String,
    pub name: String,
    /// `<namespace>/<name>`: the plugin metrics' `rollout` label.
    pub rollout: String,
    pub pod_template_hash: String,
    pub stable_pod_template_hash: String,
    /// The range, in seconds.
    pub window_seconds: i64,
}

impl QueryContext {
    fn value(&self, placeholder: &str) -> String {
        match placeholder {
            "namespace" => self.namespace.clone(),
            "name" => self.name.clone(),
            "rollout" => self.rollout.clone(),
            "version" => "canary".to_owned(),
            "podTemplateHash" => self.pod_template_hash.clone(),
            "stablePodTemplateHash" => self.stable_pod_template_hash.clone(),
            "window" => format!("{}s", self.window_seconds),
            // Validation admits only the placeholders above.
            _ => String::new(),
        }
    }
}

/// A custom query with its placeholders replaced. Unknown ones (rejected by validation) are
/// left as they are.
pub fn expand(template: &str, ctx: &QueryContext) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            break;
        };
        let name = after[..close].trim();
        out.push_str(&rest[..open]);
        if PLACEHOLDERS.contains(&name) {
            out.push_str(&ctx.value(name));
        } else {
            out.push_str(&rest[open..open + 2 + close + 2]);
        }
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    out
}

// === queries ===

/// One instant query of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Which answer this is ([`REQUESTS_QUERY`], `success-rate:canary`, `check:<name>`, ...).
    pub id: String,
    pub promql: String,
}

/// The queries of one run of the current step, from [`pending_queries`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryPlan {
    pub step_index: i32,
    pub canary_revision: String,
    pub queries: Vec<Query>,
}

/// The answers to a [`QueryPlan`], for the planner.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    pub step_index: i32,
    pub canary_revision: String,
    /// By [`Query::id`].
    pub answers: BTreeMap<String, Answer>,
}

/// Prometheus's answer to one instant query.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The values of the result vector (or the scalar); `NaN` for a ratio without traffic.
    Values(Vec<f64>),
    /// Prometheus could not be asked, or answered with an error.
    Error(String),
}

fn quote(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

fn selector(rollout: &str, version: &str) -> String {
    format!("rollout=\"{}\",version=\"{version}\"", quote(rollout))
}

fn success_rate_query(rollout: &str, version: &str, window: i64) -> String {
    let sel = selector(rollout, version);
    format!(
        "sum(rate(higress_canary_responses{{{sel},code=~\"[1-4]xx\"}}[{window}s])) / \
         sum(rate(higress_canary_responses{{{sel},code=~\"[1-5]xx\"}}[{window}s]))"
    )
}

fn latency_query(rollout: &str, version: &str, percentile: f64, window: i64) -> String {
    let sel = selector(rollout, version);
    format!(
        "histogram_quantile({}, sum by (le) (rate(higress_canary_latency_ms_bucket{{{sel}}}[{window}s])))",
        number_exact(percentile / 100.0)
    )
}

fn success_rate_id(version: &str) -> String {
    format!("success-rate:{version}")
}

fn latency_id(percentile: f64, version: &str) -> String {
    format!("latency-p{}:{version}", number(percentile))
}

fn custom_id(name: &str) -> String {
    format!("check:{name}")
}

/// The queries of one run: the canary's response count, then each check's.
pub fn queries(analysis: &Analysis, ctx: &QueryContext) -> Vec<Query> {
    let (rollout, window) = (ctx.rollout.as_str(), ctx.window_seconds);
    let mut out = vec![Query {
        id: REQUESTS_QUERY.to_owned(),
        promql: format!(
            "sum(increase(higress_canary_responses{{{}}}[{window}s]))",
            selector(rollout, "canary")
        ),
    }];
    let mut add = |id: String, promql: String| {
        if !out.iter().any(|q| q.id == id) {
            out.push(Query { id, promql });
        }
    };
    for check in &analysis.checks {
        match &check.kind {
            CheckKind::SuccessRate { .. } => add(
                success_rate_id("canary"),
                success_rate_query(rollout, "canary", window),
            ),
            CheckKind::SuccessRateVsStable { .. } => {
                for version in ["canary", "stable"] {
                    add(
                        success_rate_id(version),
                        success_rate_query(rollout, version, window),
                    );
                }
            }
            CheckKind::Latency { percentile, .. } => add(
                latency_id(*percentile, "canary"),
                latency_query(rollout, "canary", *percentile, window),
            ),
            CheckKind::LatencyVsStable { percentile, .. } => {
                for version in ["canary", "stable"] {
                    add(
                        latency_id(*percentile, version),
                        latency_query(rollout, version, *percentile, window),
                    );
                }
            }
            CheckKind::Query { template, .. } => add(custom_id(&check.name), expand(template, ctx)),
        }
    }
    out
}

/// The queries of the run that is due now for `rollout`'s current step, if one is: the step
/// runs analysis, its analysis has started (the planner records that) and the next run's
/// time has come. The reconcile loop asks Prometheus for them before planning.
pub fn pending_queries(rollout: &Rollout, now: Timestamp) -> Option<QueryPlan> {
    let status = rollout.status.as_ref()?;
    if status.phase != Some(RolloutPhase::Progressing) || rollout.spec.strategy.paused {
        return None;
    }
    let reason = status
        .condition(condition::PROGRESSING)
        .map(|c| c.reason.as_str());
    if matches!(reason, Some(condition::CANCELLING | condition::FINALISING)) {
        return None;
    }
    let cs = status.canary_status.as_ref()?;
    let hold = match cs.current_step_state {
        StepState::StepMetricsAnalysis => true,
        StepState::StepPaused => false,
        _ => return None,
    };
    let release = Release::from_rollout(rollout).ok()?;
    let step = release.step(cs.current_step_index)?;
    let analysis = step.analysis.as_ref()?;
    let state = cs
        .analysis
        .as_ref()
        .filter(|a| a.step_index == cs.current_step_index && a.phase != AnalysisPhase::Failed)?;
    let hold_seconds = if hold {
        step.pause_seconds.unwrap_or(0)
    } else {
        0
    };
    if now < next_run_at(state, analysis, hold_seconds, now) {
        return None;
    }
    let ctx = query_context(&release.names, cs, state, analysis, now);
    Some(QueryPlan {
        step_index: cs.current_step_index,
        canary_revision: cs.canary_revision.clone(),
        queries: queries(analysis, &ctx),
    })
}

fn query_context(
    names: &Names,
    cs: &crate::crd::CanaryStatus,
    state: &AnalysisStatus,
    analysis: &Analysis,
    now: Timestamp,
) -> QueryContext {
    QueryContext {
        namespace: names.namespace.clone(),
        name: names.rollout.clone(),
        rollout: names.key.clone(),
        pod_template_hash: cs.pod_template_hash.clone(),
        stable_pod_template_hash: cs.stable_revision.clone().unwrap_or_default(),
        window_seconds: effective_window(state, analysis, now),
    }
}

/// `windowSeconds`, shortened so the window starts no earlier than this release's canary
/// traffic.
pub fn effective_window(state: &AnalysisStatus, analysis: &Analysis, now: Timestamp) -> i64 {
    let since = state
        .traffic_since
        .as_ref()
        .or(state.start_time.as_ref())
        .map(|t| t.0);
    let elapsed = since.map_or(analysis.window_seconds, |s| {
        let ms = now.as_millisecond() - s.as_millisecond();
        // Whole seconds, rounded up, at least 1.
        (ms + 999).div_euclid(1000).max(1)
    });
    analysis.window_seconds.min(elapsed)
}

/// When the next run is due: runs keep to a grid of intervals from the step's analysis
/// start (so a late reconcile does not delay the ones after it), the next point after the
/// last run; or sooner, when the checks will have held for `hold_seconds` then.
pub fn next_run_at(
    state: &AnalysisStatus,
    analysis: &Analysis,
    hold_seconds: i64,
    now: Timestamp,
) -> Timestamp {
    let start = state.start_time.as_ref().map_or(now, |t| t.0);
    let interval = analysis.interval_seconds.max(1);
    // The first grid point after the last run.
    let point = state.last_run_time.as_ref().map_or(1, |last| {
        (last.0.as_second() - start.as_second())
            .div_euclid(interval)
            .max(0)
            + 1
    });
    let mut next = add_seconds(start, interval.saturating_mul(point));
    if let (AnalysisPhase::Passing, Some(since), true) =
        (state.phase, state.passing_since.as_ref(), hold_seconds > 0)
    {
        next = next.min(add_seconds(since.0, hold_seconds));
    }
    next
}

fn add_seconds(t: Timestamp, seconds: i64) -> Timestamp {
    t.checked_add(SignedDuration::from_secs(seconds))
        .unwrap_or(Timestamp::MAX)
}

/// How long until `at`, at least 100 ms (a requeue).
pub fn until(at: Timestamp, now: Timestamp) -> Duration {
    let ms = at.as_millisecond() - now.as_millisecond();
    Duration::from_millis(ms.max(100).unsigned_abs())
}

// === evaluating a run ===

/// Why a run gave no verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoVerdict {
    /// A query failed (Prometheus unreachable, an error answer).
    Error,
    /// The canary served fewer than `minRequests` responses in the window.
    TooFewRequests,
    /// A check's query returned nothing.
    NoData,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    NoVerdict(NoVerdict),
}

/// One run's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub verdict: Verdict,
    /// Canary responses in the window, if known.
    pub requests: Option<f64>,
    pub checks: Vec<CheckStatus>,
    /// The run in words.
    pub summary: String,
}

/// A query's single value: `Ok(None)` for no data (no series, or NaN).
fn single(answers: &BTreeMap<String, Answer>, id: &str) -> Result<Option<f64>, String> {
    match answers.get(id) {
        None => Err(format!("query {id} was not run")),
        Some(Answer::Error(e)) => Err(e.clone()),
        Some(Answer::Values(values)) => match values.as_slice() {
            [] => Ok(None),
            [v] if v.is_nan() => Ok(None),
            [v] => Ok(Some(*v)),
            many => Err(format!(
                "the query returned {} series; aggregate them to one value (e.g. sum(...))",
                many.len()
            )),
        },
    }
}

/// Judges a run's answers.
pub fn evaluate(analysis: &Analysis, answers: &BTreeMap<String, Answer>) -> Run {
    let requests = single(answers, REQUESTS_QUERY);
    let checks: Vec<CheckStatus> = analysis
        .checks
        .iter()
        .map(|check| judge(check, answers))
        .collect();
    let known_requests = requests.as_ref().ok().map(|r| r.unwrap_or(0.0));
    let enough = known_requests.is_some_and(|r| r >= analysis.min_requests as f64);

    let any_failed = checks.iter().any(|c| c.verdict == CheckVerdict::Fail);
    let (verdict, checks) = if !enough {
        // No verdict before minRequests: failing values are shown, not counted.
        let checks = checks
            .into_iter()
            .map(|mut c| {
                if matches!(c.verdict, CheckVerdict::Pass | CheckVerdict::Fail) {
                    c.verdict = CheckVerdict::TooFewRequests;
                }
                c
            })
            .collect();
        let why = if requests.is_err() {
            NoVerdict::Error
        } else {
            NoVerdict::TooFewRequests
        };
        (Verdict::NoVerdict(why), checks)
    } else if any_failed {
        (Verdict::Fail, checks)
    } else if checks.iter().any(|c| c.verdict == CheckVerdict::Error) {
        (Verdict::NoVerdict(NoVerdict::Error), checks)
    } else if checks.iter().any(|c| c.verdict != CheckVerdict::Pass) {
        (Verdict::NoVerdict(NoVerdict::NoData), checks)
    } else {
        (Verdict::Pass, checks)
    };

    let summary = summarize(analysis, verdict, &requests, known_requests, &checks);
    Run {
        verdict,
        requests: known_requests,
        checks,
        summary,
    }
}

fn summarize(
    analysis: &Analysis,
    verdict: Verdict,
    requests: &Result<Option<f64>, String>,
    known_requests: Option<f64>,
    checks: &[CheckStatus],
) -> String {
    let listed = |filter: &dyn Fn(&CheckStatus) -> bool| {
        checks
            .iter()
            .filter(|c| filter(c))
            .map(describe_check)
            .collect::<Vec<_>>()
            .join("; ")
    };
    match verdict {
        Verdict::Pass => format!(
            "all {} checks pass ({} canary responses): {}",
            checks.len(),
            number(known_requests.unwrap_or(0.0)),
            listed(&|_| true)
        ),
        Verdict::Fail => format!("failed: {}", listed(&|c| c.verdict == CheckVerdict::Fail)),
        Verdict::NoVerdict(NoVerdict::TooFewRequests) => format!(
            "no verdict: {} canary responses in the window, {} needed",
            number(known_requests.unwrap_or(0.0)),
            analysis.min_requests
        ),
        Verdict::NoVerdict(NoVerdict::Error) => match requests {
            Err(e) => format!("no verdict: querying Prometheus failed: {e}"),
            Ok(_) => format!(
                "no verdict: {}",
                listed(&|c| c.verdict == CheckVerdict::Error)
            ),
        },
        Verdict::NoVerdict(NoVerdict::NoData) => format!(
            "no verdict: {}",
            listed(&|c| c.verdict == CheckVerdict::NoData)
        ),
    }
}

/// `success-rate 80.2% (threshold >= 99%)`, `latency-p99: no data (...)`.
pub fn describe_check(c: &CheckStatus) -> String {
    match (c.value, &c.message) {
        (Some(v), Some(m)) => format!("{} {}{}: {m}", c.name, number(v), unit_of(&c.name)),
        (Some(v), None) => format!(
            "{} {}{} (threshold {})",
            c.name,
            number(v),
            unit_of(&c.name),
            c.threshold
        ),
        (None, Some(m)) => format!("{}: {m}", c.name),
        (None, None) => format!("{}: no data", c.name),
    }
}

fn unit_of(name: &str) -> &'static str {
    if name.starts_with("success-rate") {
        "%"
    } else if name.starts_with("latency-p") {
        "ms"
    } else {
        ""
    }
}

fn judge(check: &Check, answers: &BTreeMap<String, Answer>) -> CheckStatus {
    let mut status = CheckStatus {
        name: check.name.clone(),
        ..Default::default()
    };
    // (canary value, stable value, limit) or why there is none.
    let outcome: Result<(Option<f64>, Option<f64>, Bound), String> = match &check.kind {
        CheckKind::SuccessRate { min_percent } => {
            status.threshold = format!(">= {}%", number(*min_percent));
            single(answers, &success_rate_id("canary"))
                .map(|v| (v.map(|r| r * 100.0), None, Bound::min(*min_percent)))
        }
        CheckKind::SuccessRateVsStable { max_drop } => {
            status.threshold = format!("stable - {} points", number(*max_drop));
            pair(
                answers,
                &success_rate_id("canary"),
                &success_rate_id("stable"),
            )
            .map(|(canary, stable)| {
                let (canary, stable) = (canary.map(|r| r * 100.0), stable.map(|r| r * 100.0));
                let limit = stable.map(|s| s - max_drop);
                if let Some(limit) = limit {
                    status.threshold = format!(
                        ">= {}% (stable {}% - {})",
                        number(limit),
                        number(stable.unwrap_or_default()),
                        number(*max_drop)
                    );
                }
                (canary, stable, limit.map_or(Bound::Unknown, Bound::min))
            })
        }
        CheckKind::Latency { percentile, max_ms } => {
            status.threshold = format!("<= {}ms", number(*max_ms));
            single(answers, &latency_id(*percentile, "canary"))
                .map(|v| (v, None, Bound::max(*max_ms)))
        }
        CheckKind::LatencyVsStable {
            percentile,
            max_ratio,
        } => {
            status.threshold = format!("<= {} x stable", number(*max_ratio));
            pair(
                answers,
                &latency_id(*percentile, "canary"),
                &latency_id(*percentile, "stable"),
            )
            .map(|(canary, stable)| {
                let limit = stable.map(|s| (s * max_ratio).max(FINEST_LATENCY_BUCKET_MS));
                if let (Some(limit), Some(stable)) = (limit, stable) {
                    status.threshold = format!(
                        "<= {}ms ({} x stable {}ms)",
                        number(limit),
                        number(*max_ratio),
                        number(stable)
                    );
                }
                (canary, stable, limit.map_or(Bound::Unknown, Bound::max))
            })
        }
        CheckKind::Query { min, max, .. } => {
            let bound = Bound::Range {
                min: *min,
                max: *max,
            };
            status.threshold = bound.describe();
            single(answers, &custom_id(&check.name)).map(|v| (v, None, bound))
        }
    };
    match outcome {
        Err(e) => {
            status.verdict = CheckVerdict::Error;
            status.message = Some(e);
        }
        Ok((value, stable, bound)) => {
            status.value = value;
            status.stable_value = stable;
            status.verdict = match (value, bound.holds(value)) {
                (None, _) | (_, None) => {
                    status.message = Some(if value.is_none() {
                        "no data (no canary traffic in the window?)".to_owned()
                    } else {
                        "no data for the stable version in the window".to_owned()
                    });
                    CheckVerdict::NoData
                }
                (Some(_), Some(true)) => CheckVerdict::Pass,
                (Some(_), Some(false)) => CheckVerdict::Fail,
            };
        }
    }
    status
}

fn pair(
    answers: &BTreeMap<String, Answer>,
    canary: &str,
    stable: &str,
) -> Result<(Option<f64>, Option<f64>), String> {
    Ok((single(answers, canary)?, single(answers, stable)?))
}

/// What a value must satisfy.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Bound {
    Range {
        min: Option<f64>,
        max: Option<f64>,
    },
    /// Relative to a stable value that is missing.
    Unknown,
}

impl Bound {
    fn min(min: f64) -> Self {
        Bound::Range {
            min: Some(min),
            max: None,
        }
    }

    fn max(max: f64) -> Self {
        Bound::Range {
            min: None,
            max: Some(max),
        }
    }

    /// `None` when it cannot be told.
    fn holds(&self, value: Option<f64>) -> Option<bool> {
        match (self, value) {
            (Bound::Unknown, _) | (_, None) => None,
            (Bound::Range { min, max }, Some(v)) => {
                Some(min.is_none_or(|m| v >= m) && max.is_none_or(|m| v <= m))
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Bound::Range {
                min: Some(a),
                max: Some(b),
            } => format!("between {} and {}", number(*a), number(*b)),
            Bound::Range {
                min: Some(a),
                max: None,
            } => format!(">= {}", number(*a)),
            Bound::Range {
                min: None,
                max: Some(b),
            } => format!("<= {}", number(*b)),
            Bound::Range {
                min: None,
                max: None,
            }
            | Bound::Unknown => "-".to_owned(),
        }
    }
}

/// A value for people: at most two decimals, no trailing zeros.
pub fn number(x: f64) -> String {
    if !x.is_finite() {
        return format!("{x}");
    }
    let mut s = format!("{x:.2}");
    if s.contains('.') {
        while s.ends_with('0') {
            s.pop();
        }
        if s.ends_with('.') {
            s.pop();
        }
    }
    if s == "-0" {
        s = "0".to_owned();
    }
    s
}

/// A value for PromQL: as precise as needed (0.999, not 1).
fn number_exact(x: f64) -> String {
    let mut s = format!("{x}");
    if !s.contains('.') && !s.contains('e') {
        s.push_str(".0");
    }
    s
}

// === the state of a step's analysis ===

/// What a run means for the release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Keep going (the step may advance if the checks held long enough).
    Continue,
    /// Abort the release; the message names the checks, values and thresholds.
    Abort(String),
}

/// A fresh analysis state for step `step_index`, begun `now`. `traffic_since` carries over
/// from the release's earlier steps.
pub fn start(step_index: i32, traffic_since: Option<Time>, now: Timestamp) -> AnalysisStatus {
    let now = whole_second(now);
    AnalysisStatus {
        step_index,
        phase: AnalysisPhase::Pending,
        traffic_since: traffic_since.or(Some(Time(now))),
        start_time: Some(Time(now)),
        message: Some("waiting for the first run".to_owned()),
        ..Default::default()
    }
}

/// Status times have whole seconds (`metav1.Time` drops the rest when written); analysis
/// times are cut the same way at once, so a plan computes with what is stored.
fn whole_second(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

/// Records a run in the step's analysis state (times in whole seconds).
pub fn record(
    state: &mut AnalysisStatus,
    analysis: &Analysis,
    run: &Run,
    now: Timestamp,
) -> Outcome {
    let now = whole_second(now);
    let previous = state
        .last_run_time
        .clone()
        .or_else(|| state.start_time.clone())
        .unwrap_or(Time(now));
    state.last_run_time = Some(Time(now));
    state.canary_requests = run.requests;
    state.checks = run.checks.clone();
    state.message = Some(run.summary.clone());
    match run.verdict {
        Verdict::Pass => {
            state.phase = AnalysisPhase::Passing;
            state.consecutive_failures = 0;
            state.no_verdict_since = None;
            // A passing run vouches for the time since the previous run.
            state.passing_since.get_or_insert(previous);
            Outcome::Continue
        }
        Verdict::Fail => {
            state.passing_since = None;
            state.no_verdict_since = None;
            state.consecutive_failures = state.consecutive_failures.saturating_add(1);
            let failures = u32::try_from(state.consecutive_failures).unwrap_or(0);
            if failures >= analysis.failure_limit {
                state.phase = AnalysisPhase::Failed;
                Outcome::Abort(format!(
                    "{} ({failures} failed run{} in a row, limit {})",
                    run.summary.trim_start_matches("failed: "),
                    if failures == 1 { "" } else { "s" },
                    analysis.failure_limit
                ))
            } else {
                state.phase = AnalysisPhase::Failing;
                Outcome::Continue
            }
        }
        Verdict::NoVerdict(_) => {
            state.passing_since = None;
            let since = state.no_verdict_since.get_or_insert(previous).0;
            match analysis.no_data {
                NoDataPolicy::FailAfter { seconds }
                    if now.as_millisecond() - since.as_millisecond() >= seconds * 1000 =>
                {
                    state.phase = AnalysisPhase::Failed;
                    Outcome::Abort(format!(
                        "no verdict for {seconds}s (noData action Fail): {}",
                        run.summary.trim_start_matches("no verdict: ")
                    ))
                }
                _ => {
                    state.phase = AnalysisPhase::NoVerdict;
                    Outcome::Continue
                }
            }
        }
    }
}

/// Whether the checks have held for `hold_seconds` (a passing last run included).
pub fn held_for(state: &AnalysisStatus, hold_seconds: i64, now: Timestamp) -> bool {
    state.phase == AnalysisPhase::Passing
        && state.passing_since.as_ref().is_some_and(|since| {
            now.as_millisecond() - since.0.as_millisecond() >= hold_seconds * 1000
        })
}

/// The `Analysis` condition's reason for a run.
pub fn condition_reason(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Pass => "ChecksPassing",
        Verdict::Fail => "CheckFailing",
        Verdict::NoVerdict(NoVerdict::Error) => "PrometheusError",
        Verdict::NoVerdict(NoVerdict::TooFewRequests) => "TooFewRequests",
        Verdict::NoVerdict(NoVerdict::NoData) => "NoData",
    }
}

/// A short table of the checks, for `higress-canary status`.
pub fn describe_status(state: &AnalysisStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "analysis (step {}): {:?}, {} failed run{} in a row{}",
        state.step_index,
        state.phase,
        state.consecutive_failures,
        if state.consecutive_failures == 1 {
            ""
        } else {
            "s"
        },
        state
            .canary_requests
            .map(|r| format!(", {} canary responses in the window", number(r)))
            .unwrap_or_default()
    );
    for c in &state.checks {
        let value = c
            .value
            .map(|v| format!("{}{}", number(v), unit_of(&c.name)))
            .unwrap_or_else(|| "-".to_owned());
        let _ = writeln!(
            out,
            "  {:<24} {:<15} {:<12} {}{}",
            c.name,
            format!("{:?}", c.verdict),
            value,
            c.threshold,
            c.message
                .as_ref()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default()
        );
    }
    out
}

#[cfg(test)]
mod tests;
