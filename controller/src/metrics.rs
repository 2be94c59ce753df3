//! The controller's Prometheus metrics (a `prometheus-client` registry, served in the text
//! format 0.0.4) and the small HTTP server of `higress-canary run` (`/metrics`, `/healthz`,
//! `/readyz`).
//!
//! - `higress_canary_reconciles_total`: reconciles that completed;
//! - `higress_canary_reconcile_errors_total{error}`: failed reconciles, by
//!   [`crate::Error::metric_label`];
//! - `higress_canary_reconcile_duration_seconds`: a histogram of reconcile durations;
//! - `higress_canary_rollout_phase{rollout,phase}`: 1 for the Rollout's current phase;
//! - `higress_canary_rollout_step{rollout}` (from the status; 0 before any release),
//!   `higress_canary_rollout_steps{rollout}` (steps in the spec) and
//!   `higress_canary_rollout_weight_percent{rollout}` (the share the plugin rule sends to the
//!   canary now);
//! - `higress_canary_analysis_check_value{rollout,check}`: a check's latest canary value
//!   (percent for success rates, milliseconds for latency), while the step's analysis has one;
//! - `higress_canary_analysis_check_verdict{rollout,check,verdict}`: 1 for the check's latest
//!   verdict (`Pass`, `Fail`, `NoData`, `TooFewRequests`, `Error`);
//! - `higress_canary_analysis_consecutive_failures{rollout}`: failed analysis runs in a row
//!   (the release is aborted at the analysis' `failureLimit`);
//! - `higress_canary_analysis_queries_total{outcome}`: Prometheus queries of the analysis,
//!   `ok` or `error` (Prometheus down, not configured, or refusing the query);
//! - `higress_canary_leader`: 1 while this replica leads (holds the Lease and runs the loop).
//!
//! Series of a Rollout disappear with it (and a check's with the check).

use std::{
    collections::BTreeMap,
    fmt,
    future::Future,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::IntoResponse,
    routing::get,
    Router,
};
use prometheus_client::{
    encoding::{prometheus_text, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

use crate::crd::{Rollout, RolloutStatus};

/// Reconcile duration buckets, in seconds: most reconciles take milliseconds, a slow API
/// server seconds.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

type FloatGauge = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct RolloutLabels {
    rollout: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    rollout: String,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    rollout: String,
    check: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    rollout: String,
    check: String,
    verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// The label sets a Rollout's series were last written with, to remove the ones its next
/// state no longer has (an old phase, a check that is gone).
#[derive(Debug, Default)]
struct RolloutSeries {
    phase: Option<PhaseLabels>,
    check_values: Vec<CheckLabels>,
    verdicts: Vec<VerdictLabels>,
}

/// The metrics registry, shared by the controller loop and the HTTP server.
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    errors: Family<ErrorLabels, Counter>,
    durations: Histogram,
    phase: Family<PhaseLabels, Gauge>,
    step: Family<RolloutLabels, Gauge>,
    steps: Family<RolloutLabels, Gauge>,
    weight: Family<RolloutLabels, FloatGauge>,
    check_value: Family<CheckLabels, FloatGauge>,
    check_verdict: Family<VerdictLabels, Gauge>,
    analysis_failures: Family<RolloutLabels, Gauge>,
    analysis_queries: Family<OutcomeLabels, Counter>,
    leader: Gauge,
    /// All of `errors`, for [`Metrics::errors`] (a family cannot be summed).
    errors_total: AtomicU64,
    rollouts: Mutex<BTreeMap<String, RolloutSeries>>,
    ready: AtomicBool,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("reconciles", &self.reconciles())
            .field("errors", &self.errors())
            .field("ready", &self.is_ready())
            .field("leader", &self.is_leader())
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("higress_canary");
        let reconciles = Counter::default();
        registry.register(
            "reconciles",
            "Reconciles that completed",
            reconciles.clone(),
        );
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by error kind",
            errors.clone(),
        );
        let durations = Histogram::new(BUCKETS);
        registry.register_with_unit(
            "reconcile_duration",
            "How long reconciles took",
            Unit::Seconds,
            durations.clone(),
        );
        let phase = Family::<PhaseLabels, Gauge>::default();
        registry.register(
            "rollout_phase",
            "The Rollout's phase (1 for the current one)",
            phase.clone(),
        );
        let step = Family::<RolloutLabels, Gauge>::default();
        registry.register(
            "rollout_step",
            "The current step of the Rollout's release (from 1; 0 before any)",
            step.clone(),
        );
        let steps = Family::<RolloutLabels, Gauge>::default();
        registry.register(
            "rollout_steps",
            "Steps in the Rollout's canary strategy",
            steps.clone(),
        );
        let weight = Family::<RolloutLabels, FloatGauge>::default();
        registry.register(
            "rollout_weight_percent",
            "Share of traffic the Rollout's plugin rule sends to the canary",
            weight.clone(),
        );
        let check_value = Family::<CheckLabels, FloatGauge>::default();
        registry.register(
            "analysis_check_value",
            "Latest canary value of a metric analysis check (percent for success rates, \
             milliseconds for latency)",
            check_value.clone(),
        );
        let check_verdict = Family::<VerdictLabels, Gauge>::default();
        registry.register(
            "analysis_check_verdict",
            "Latest verdict of a metric analysis check (1 for the current one)",
            check_verdict.clone(),
        );
        let analysis_failures = Family::<RolloutLabels, Gauge>::default();
        registry.register(
            "analysis_consecutive_failures",
            "Failed metric analysis runs in a row of the Rollout's current step",
            analysis_failures.clone(),
        );
        let analysis_queries = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "analysis_queries",
            "Prometheus queries of the metric analysis, by outcome (ok or error)",
            analysis_queries.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica leads (holds the Lease), else 0",
            leader.clone(),
        );
        Self {
            registry,
            reconciles,
            errors,
            durations,
            phase,
            step,
            steps,
            weight,
            check_value,
            check_verdict,
            analysis_failures,
            analysis_queries,
            leader,
            errors_total: AtomicU64::new(0),
            rollouts: Mutex::default(),
            ready: AtomicBool::new(false),
        }
    }
}

impl Metrics {
    /// A reconcile completed in `took`.
    pub fn reconciled(&self, took: Duration) {
        self.reconciles.inc();
        self.durations.observe(took.as_secs_f64());
    }

    /// A reconcile failed after `took`.
    pub fn failed(&self, label: &'static str, took: Duration) {
        self.errors
            .get_or_create(&ErrorLabels { error: label })
            .inc();
        self.errors_total.fetch_add(1, Ordering::Relaxed);
        self.durations.observe(took.as_secs_f64());
    }

    /// Prometheus answered an analysis query (`ok`) or did not.
    pub fn analysis_query(&self, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.analysis_queries
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Records a Rollout's state as `status` describes it.
    pub fn rollout(&self, rollout: &Rollout, status: &RolloutStatus) {
        let key = rollout_key(rollout);
        let labels = RolloutLabels {
            rollout: key.clone(),
        };
        let canary = status.canary_status.as_ref();
        self.step
            .get_or_create(&labels)
            .set(canary.map_or(0, |c| i64::from(c.current_step_index)));
        self.steps
            .get_or_create(&labels)
            .set(i64::try_from(rollout.step_count()).unwrap_or(i64::MAX));
        self.weight.get_or_create(&labels).set(
            canary
                .and_then(|c| c.higress.as_ref())
                .and_then(|h| h.rule.as_ref())
                .map_or(0.0, |r| r.weight.percent()),
        );

        let mut next = RolloutSeries {
            phase: status.phase.map(|phase| PhaseLabels {
                rollout: key.clone(),
                phase: format!("{phase:?}"),
            }),
            ..RolloutSeries::default()
        };
        if let Some(phase) = &next.phase {
            self.phase.get_or_create(phase).set(1);
        }
        let analysis = canary.and_then(|c| c.analysis.as_ref());
        self.analysis_failures
            .get_or_create(&labels)
            .set(analysis.map_or(0, |a| i64::from(a.consecutive_failures)));
        for check in analysis.map_or(&[][..], |a| &a.checks) {
            let id = CheckLabels {
                rollout: key.clone(),
                check: check.name.clone(),
            };
            if let Some(value) = check.value {
                self.check_value.get_or_create(&id).set(value);
                next.check_values.push(id.clone());
            }
            let verdict = VerdictLabels {
                rollout: key.clone(),
                check: check.name.clone(),
                verdict: format!("{:?}", check.verdict),
            };
            self.check_verdict.get_or_create(&verdict).set(1);
            next.verdicts.push(verdict);
        }

        let mut all = lock(&self.rollouts);
        if let Some(previous) = all.insert(key.clone(), next) {
            self.remove_stale(previous, all.get(&key));
        }
    }

    /// A Rollout is gone: its series with it.
    pub fn forget(&self, key: &str) {
        let labels = RolloutLabels {
            rollout: key.to_owned(),
        };
        self.step.remove(&labels);
        self.steps.remove(&labels);
        self.weight.remove(&labels);
        self.analysis_failures.remove(&labels);
        if let Some(previous) = lock(&self.rollouts).remove(key) {
            self.remove_stale(previous, None);
        }
    }

    /// Removes the label sets of `previous` that `now` does not have.
    fn remove_stale(&self, previous: RolloutSeries, now: Option<&RolloutSeries>) {
        let empty = RolloutSeries::default();
        let now = now.unwrap_or(&empty);
        if let Some(phase) = previous.phase.filter(|p| now.phase.as_ref() != Some(p)) {
            self.phase.remove(&phase);
        }
        for id in previous.check_values {
            if !now.check_values.contains(&id) {
                self.check_value.remove(&id);
            }
        }
        for verdict in previous.verdicts {
            if !now.verdicts.contains(&verdict) {
                self.check_verdict.remove(&verdict);
            }
        }
    }

    /// Marks the controller ready (its caches are synced) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Marks this replica the leader (it runs the controller loop) or a follower.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    pub fn is_leader(&self) -> bool {
        self.leader.get() == 1
    }

    /// Reconciles completed so far.
    pub fn reconciles(&self) -> u64 {
        self.reconciles.get()
    }

    /// Failed reconciles so far, all kinds.
    pub fn errors(&self) -> u64 {
        self.errors_total.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// Key of a Rollout in metrics and logs: `<namespace>/<name>`.
pub fn rollout_key(rollout: &Rollout) -> String {
    crate::validate::Names::of(rollout).key
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain counters behind; keep serving them.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Serves `/metrics`, `/healthz` (always 200 while the process runs) and `/readyz` (200 once
/// the controller's caches are synced) on `listener` until `shutdown` resolves. The caller
/// binds, so a taken port fails at the start and tests know the port they got.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(metrics);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn render_metrics(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)],
        metrics.render(),
    )
}

async fn ready(State(metrics): State<Arc<Metrics>>) -> (StatusCode, &'static str) {
    if metrics.is_ready() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced yet")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{AnalysisStatus, CanaryStatus, CheckStatus, CheckVerdict, RolloutPhase};

    fn demo() -> Rollout {
        serde_yaml::from_str(
            "apiVersion: rollouts.kruise.io/v1alpha1
kind: Rollout
metadata: {name: demo, namespace: default}
spec:
  objectRef: {workloadRef: {apiVersion: apps/v1, kind: Deployment, name: demo}}
  strategy:
    canary:
      steps: [{weight: 10}, {weight: 50}, {weight: 100}]
      trafficRoutings: [{service: demo, ingress: {name: demo}}]
",
        )
        .expect("test Rollout")
    }

    fn status(
        phase: RolloutPhase,
        step: i32,
        checks: &[(&str, CheckVerdict, Option<f64>)],
    ) -> RolloutStatus {
        RolloutStatus {
            phase: Some(phase),
            canary_status: Some(CanaryStatus {
                current_step_index: step,
                analysis: (!checks.is_empty()).then(|| AnalysisStatus {
                    consecutive_failures: 2,
                    checks: checks
                        .iter()
                        .map(|(name, verdict, value)| CheckStatus {
                            name: (*name).to_owned(),
                            verdict: *verdict,
                            value: *value,
                            ..CheckStatus::default()
                        })
                        .collect(),
                    ..AnalysisStatus::default()
                }),
                ..CanaryStatus::default()
            }),
            ..RolloutStatus::default()
        }
    }

    fn lines(m: &Metrics) -> Vec<String> {
        m.render().lines().map(str::to_owned).collect()
    }

    fn assert_has(m: &Metrics, expected: &[&str]) {
        let text = lines(m);
        for line in expected {
            assert!(
                text.iter().any(|l| l == line),
                "missing {line:?} in\n{text:#?}"
            );
        }
    }

    fn assert_lacks(m: &Metrics, prefixes: &[&str]) {
        let text = lines(m);
        for prefix in prefixes {
            assert!(
                !text.iter().any(|l| l.starts_with(prefix)),
                "unexpected {prefix:?} in\n{text:#?}"
            );
        }
    }

    #[test]
    fn the_exposition_has_counters_histogram_and_rollout_gauges() {
        let m = Metrics::default();
        m.reconciled(Duration::from_millis(20));
        m.failed("conflict", Duration::from_millis(3));
        m.analysis_query(true);
        m.analysis_query(false);
        m.rollout(&demo(), &status(RolloutPhase::Progressing, 1, &[]));
        assert_has(
            &m,
            &[
                "# TYPE higress_canary_reconciles_total counter",
                "higress_canary_reconciles_total 1",
                "higress_canary_leader 0",
                "higress_canary_reconcile_errors_total{error=\"conflict\"} 1",
                "# TYPE higress_canary_reconcile_duration_seconds histogram",
                "higress_canary_reconcile_duration_seconds_bucket{le=\"0.005\"} 1",
                "higress_canary_reconcile_duration_seconds_bucket{le=\"0.025\"} 2",
                "higress_canary_reconcile_duration_seconds_bucket{le=\"+Inf\"} 2",
                "higress_canary_reconcile_duration_seconds_count 2",
                "higress_canary_rollout_phase{rollout=\"default/demo\",phase=\"Progressing\"} 1",
                "higress_canary_rollout_step{rollout=\"default/demo\"} 1",
                "higress_canary_rollout_steps{rollout=\"default/demo\"} 3",
                "higress_canary_rollout_weight_percent{rollout=\"default/demo\"} 0.0",
                "higress_canary_analysis_queries_total{outcome=\"ok\"} 1",
                "higress_canary_analysis_queries_total{outcome=\"error\"} 1",
            ],
        );
        assert_eq!((m.reconciles(), m.errors()), (1, 1));
        m.set_leader(true);
        assert!(m.is_leader());
        assert_has(&m, &["higress_canary_leader 1"]);
    }

    #[test]
    fn analysis_checks_are_exported_and_stale_series_removed() {
        let m = Metrics::default();
        let rollout = demo();
        m.rollout(
            &rollout,
            &status(
                RolloutPhase::Progressing,
                2,
                &[
                    ("success-rate", CheckVerdict::Pass, Some(99.5)),
                    ("latency-p99", CheckVerdict::NoData, None),
                ],
            ),
        );
        let rate = "{rollout=\"default/demo\",check=\"success-rate\"}";
        assert_has(
            &m,
            &[
                &format!("higress_canary_analysis_check_value{rate} 99.5"),
                "higress_canary_analysis_check_verdict{rollout=\"default/demo\",check=\"success-rate\",verdict=\"Pass\"} 1",
                "higress_canary_analysis_check_verdict{rollout=\"default/demo\",check=\"latency-p99\",verdict=\"NoData\"} 1",
                "higress_canary_analysis_consecutive_failures{rollout=\"default/demo\"} 2",
            ],
        );
        assert_lacks(&m, &["higress_canary_analysis_check_value{rollout=\"default/demo\",check=\"latency-p99\""]);

        // The next run: one check gone, the other's verdict changed; the phase too.
        m.rollout(
            &rollout,
            &status(
                RolloutPhase::Healthy,
                3,
                &[("success-rate", CheckVerdict::Fail, Some(80.0))],
            ),
        );
        assert_has(
            &m,
            &[
                &format!("higress_canary_analysis_check_value{rate} 80.0"),
                "higress_canary_analysis_check_verdict{rollout=\"default/demo\",check=\"success-rate\",verdict=\"Fail\"} 1",
                "higress_canary_rollout_phase{rollout=\"default/demo\",phase=\"Healthy\"} 1",
            ],
        );
        assert_lacks(
            &m,
            &[
                "higress_canary_analysis_check_verdict{rollout=\"default/demo\",check=\"success-rate\",verdict=\"Pass\"}",
                "higress_canary_analysis_check_verdict{rollout=\"default/demo\",check=\"latency-p99\"",
                "higress_canary_rollout_phase{rollout=\"default/demo\",phase=\"Progressing\"}",
            ],
        );

        m.forget("default/demo");
        assert_lacks(
            &m,
            &["higress_canary_rollout_", "higress_canary_analysis_check"],
        );
        assert_lacks(&m, &["higress_canary_analysis_consecutive_failures{"]);
    }
}
