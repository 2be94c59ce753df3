//! The controller's Prometheus metrics, rendered in the text exposition format, and the small
//! HTTP server of `higress-canary run` (`/metrics`, `/healthz`, `/readyz`).
//!
//! - `higress_canary_reconciles_total`: reconciles that completed;
//! - `higress_canary_reconcile_errors_total{error}`: failed reconciles, by
//!   [`crate::Error::metric_label`];
//! - `higress_canary_reconcile_duration_seconds`: a histogram of reconcile durations;
//! - `higress_canary_rollout_phase{rollout,phase}`: 1 for the Rollout's current phase;
//! - `higress_canary_rollout_step{rollout}`, `higress_canary_rollout_steps{rollout}` (from the
//!   status; 0 before any release) and `higress_canary_rollout_weight_percent{rollout}` (the
//!   share the plugin rule sends to the canary now);
//! - `higress_canary_leader`: 1 while this replica leads (holds the Lease and runs the loop).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    future::Future,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use axum::{extract::State, http::StatusCode, routing::get, Router};

use crate::crd::{Rollout, RolloutPhase};

const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The metrics registry, shared by the controller loop and the HTTP server.
#[derive(Debug, Default)]
pub struct Metrics {
    reconciles: AtomicU64,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    /// Cumulative counts per bucket of [`BUCKETS`].
    buckets: [AtomicU64; BUCKETS.len()],
    duration_count: AtomicU64,
    duration_sum_micros: AtomicU64,
    rollouts: Mutex<BTreeMap<String, RolloutGauges>>,
    ready: AtomicBool,
    leader: AtomicBool,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct RolloutGauges {
    phase: Option<RolloutPhase>,
    step: i32,
    weight: f64,
}

impl Metrics {
    /// A reconcile completed in `took`.
    pub fn reconciled(&self, took: Duration) {
        self.reconciles.fetch_add(1, Ordering::Relaxed);
        self.observe(took);
    }

    /// A reconcile failed after `took`.
    pub fn failed(&self, label: &'static str, took: Duration) {
        *lock(&self.errors).entry(label).or_default() += 1;
        self.observe(took);
    }

    fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        for (bucket, bound) in self.buckets.iter().zip(BUCKETS) {
            if secs <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.duration_count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.duration_sum_micros
            .fetch_add(micros, Ordering::Relaxed);
    }

    /// Records a Rollout's state (`key` = `<namespace>/<name>`).
    pub fn rollout(&self, key: &str, rollout_status: Option<&crate::crd::RolloutStatus>) {
        let cs = rollout_status.and_then(|s| s.canary_status.as_ref());
        let gauges = RolloutGauges {
            phase: rollout_status.and_then(|s| s.phase),
            step: cs.map_or(0, |c| c.current_step_index),
            weight: cs
                .and_then(|c| c.higress.as_ref())
                .and_then(|h| h.rule.as_ref())
                .map_or(0.0, |r| r.weight.percent()),
        };
        lock(&self.rollouts).insert(key.to_owned(), gauges);
    }

    /// A Rollout is gone.
    pub fn forget(&self, key: &str) {
        lock(&self.rollouts).remove(key);
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
        self.leader.store(leader, Ordering::SeqCst);
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::SeqCst)
    }

    /// Reconciles completed so far.
    pub fn reconciles(&self) -> u64 {
        self.reconciles.load(Ordering::Relaxed)
    }

    /// Failed reconciles so far, all kinds.
    pub fn errors(&self) -> u64 {
        lock(&self.errors).values().sum()
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP higress_canary_reconciles_total Reconciles that completed.\n\
             # TYPE higress_canary_reconciles_total counter\n\
             higress_canary_reconciles_total {}",
            self.reconciles()
        );
        let _ = writeln!(
            out,
            "# HELP higress_canary_leader 1 while this replica leads (holds the Lease), else 0.\n\
             # TYPE higress_canary_leader gauge\n\
             higress_canary_leader {}",
            u8::from(self.is_leader())
        );
        let _ = writeln!(
            out,
            "# HELP higress_canary_reconcile_errors_total Reconciles that failed, by error kind.\n\
             # TYPE higress_canary_reconcile_errors_total counter"
        );
        for (label, n) in lock(&self.errors).iter() {
            let _ = writeln!(
                out,
                "higress_canary_reconcile_errors_total{{error=\"{label}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP higress_canary_reconcile_duration_seconds How long reconciles took.\n\
             # TYPE higress_canary_reconcile_duration_seconds histogram"
        );
        for (bucket, bound) in self.buckets.iter().zip(BUCKETS) {
            let _ = writeln!(
                out,
                "higress_canary_reconcile_duration_seconds_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.duration_count.load(Ordering::Relaxed);
        let sum = self.duration_sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "higress_canary_reconcile_duration_seconds_bucket{{le=\"+Inf\"}} {count}\n\
             higress_canary_reconcile_duration_seconds_sum {sum}\n\
             higress_canary_reconcile_duration_seconds_count {count}"
        );

        let rollouts = lock(&self.rollouts).clone();
        let _ = writeln!(
            out,
            "# HELP higress_canary_rollout_phase The Rollout's phase (1 for the current one).\n\
             # TYPE higress_canary_rollout_phase gauge"
        );
        for (key, g) in &rollouts {
            if let Some(phase) = g.phase {
                let _ = writeln!(
                    out,
                    "higress_canary_rollout_phase{{rollout=\"{}\",phase=\"{phase:?}\"}} 1",
                    escape(key)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP higress_canary_rollout_step The current step of the Rollout's release (from 1; 0 before any).\n\
             # TYPE higress_canary_rollout_step gauge"
        );
        for (key, g) in &rollouts {
            let _ = writeln!(
                out,
                "higress_canary_rollout_step{{rollout=\"{}\"}} {}",
                escape(key),
                g.step
            );
        }
        let _ = writeln!(
            out,
            "# HELP higress_canary_rollout_weight_percent Share of traffic the Rollout's plugin rule sends to the canary.\n\
             # TYPE higress_canary_rollout_weight_percent gauge"
        );
        for (key, g) in &rollouts {
            let _ = writeln!(
                out,
                "higress_canary_rollout_weight_percent{{rollout=\"{}\"}} {}",
                escape(key),
                g.weight
            );
        }
        out
    }
}

/// Key of a Rollout in metrics and logs: `<namespace>/<name>`.
pub fn rollout_key(rollout: &Rollout) -> String {
    crate::validate::Names::of(rollout).key
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain counters behind; keep serving them.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Serves `/metrics`, `/healthz` (always 200 while the process runs) and `/readyz` (200 once
/// the controller's caches are synced) until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
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

async fn render_metrics(State(metrics): State<Arc<Metrics>>) -> String {
    metrics.render()
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

    #[test]
    fn the_exposition_has_counters_histogram_and_rollout_gauges() {
        let m = Metrics::default();
        m.reconciled(Duration::from_millis(20));
        m.failed("conflict", Duration::from_millis(3));
        m.rollout(
            "default/demo",
            Some(&crate::crd::RolloutStatus {
                phase: Some(RolloutPhase::Progressing),
                ..Default::default()
            }),
        );
        let text = m.render();
        for line in [
            "higress_canary_reconciles_total 1",
            "higress_canary_leader 0",
            "higress_canary_reconcile_errors_total{error=\"conflict\"} 1",
            "higress_canary_reconcile_duration_seconds_bucket{le=\"0.005\"} 1",
            "higress_canary_reconcile_duration_seconds_bucket{le=\"0.025\"} 2",
            "higress_canary_reconcile_duration_seconds_count 2",
            "higress_canary_rollout_phase{rollout=\"default/demo\",phase=\"Progressing\"} 1",
            "higress_canary_rollout_step{rollout=\"default/demo\"} 0",
            "higress_canary_rollout_weight_percent{rollout=\"default/demo\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
