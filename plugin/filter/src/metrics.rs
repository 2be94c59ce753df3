//! The plugin's per-rule, per-version metrics.
//!
//! Names carry their labels after `;` (`higress_canary.requests;rollout=ns/r;version=canary`)
//! so that rollout names with dots survive; Envoy `stats_tags` rules turn them into Prometheus
//! labels (see docs/plugin-config.md). Envoy never deletes a stat and a repeated
//! `define_metric` leaks a little host memory, so each name is defined once per VM and cached
//! across config reloads. All series of a rule are defined at config load, so a success-rate
//! query finds its 5xx series (at 0) before the first failure.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::SystemTime;

use canary_core::{Rule, Version};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{MetricType, Status};

thread_local! {
    static DEFINED: RefCell<HashMap<String, u32>> = RefCell::new(HashMap::new());
}

const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

fn metric(kind: MetricType, name: String) -> Result<u32, Status> {
    if let Some(id) = DEFINED.with(|d| d.borrow().get(&name).copied()) {
        return Ok(id);
    }
    let id = hostcalls::define_metric(kind, &name)?;
    DEFINED.with(|d| d.borrow_mut().insert(name, id));
    Ok(id)
}

/// Metric ids of one rule, indexed by `version_index`.
pub(crate) struct RuleMetrics {
    requests: [u32; 2],
    responses: [[u32; STATUS_CLASSES.len()]; 2],
    latency_ms: [u32; 2],
}

fn version_index(version: Version) -> usize {
    match version {
        Version::Stable => 0,
        Version::Canary => 1,
    }
}

fn status_class_index(status: Option<u32>) -> usize {
    match status {
        Some(s @ 100..=599) => (s / 100 - 1) as usize,
        _ => STATUS_CLASSES.len() - 1,
    }
}

impl RuleMetrics {
    pub(crate) fn define(rule: &Rule) -> Result<Self, Status> {
        let rollout = rule.rollout();
        let mut requests = [0; 2];
        let mut responses = [[0; STATUS_CLASSES.len()]; 2];
        let mut latency_ms = [0; 2];
        for version in Version::ALL {
            let v = version_index(version);
            let labels = format!("rollout={rollout};version={version}");
            requests[v] = metric(
                MetricType::Counter,
                format!("higress_canary.requests;{labels}"),
            )?;
            for (c, class) in STATUS_CLASSES.iter().enumerate() {
                responses[v][c] = metric(
                    MetricType::Counter,
                    format!("higress_canary.responses;{labels};code={class}"),
                )?;
            }
            latency_ms[v] = metric(
                MetricType::Histogram,
                format!("higress_canary.latency_ms;{labels}"),
            )?;
        }
        let weight = metric(
            MetricType::Gauge,
            format!("higress_canary.weight_basis_points;rollout={rollout}"),
        )?;
        hostcalls::record_metric(weight, u64::from(rule.weight().basis_points()))?;
        Ok(Self {
            requests,
            responses,
            latency_ms,
        })
    }

    pub(crate) fn count_request(&self, version: Version) {
        // A failed metric update must never fail the request.
        let _ = hostcalls::increment_metric(self.requests[version_index(version)], 1);
    }

    pub(crate) fn count_response(
        &self,
        version: Version,
        status: Option<u32>,
        started: Option<SystemTime>,
    ) {
        let v = version_index(version);
        let _ = hostcalls::increment_metric(self.responses[v][status_class_index(status)], 1);
        let elapsed = started.and_then(|start| {
            let now = hostcalls::get_current_time().ok()?;
            now.duration_since(start).ok()
        });
        if let Some(elapsed) = elapsed {
            let ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
            let _ = hostcalls::record_metric(self.latency_ms[v], ms);
        }
    }
}
