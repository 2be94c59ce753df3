//! The plugin's per-rule, per-version metrics.
//!
//! Names carry their labels after `;` (`higress_canary.requests;rollout=ns/r;version=canary`)
//! so that rollout names with dots survive; Envoy `stats_tags` rules turn them into Prometheus
//! labels (see docs/plugin-config.md).
//!
//! Crossing into the host costs more than everything else the plugin does per request, so
//! requests only bump counters in this VM's memory, and the root context's timer adds the
//! deltas to Envoy's stats once a second ([`flush`]). Latency is kept the same way, as the
//! cumulative `le` buckets, `_sum` and `_count` of a Prometheus histogram, because a host
//! histogram would need one host call per sample.
//!
//! Envoy never deletes a stat and a repeated `define_metric` leaks a little host memory, so each
//! name is defined once per VM and its slot survives config reloads. All series of a rule are
//! defined at config load, so a success-rate query finds its 5xx series (at 0) before the first
//! failure.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use canary_core::{Rule, Version};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{MetricType, Status};

/// How often pending counts reach Envoy's stats.
pub(crate) const FLUSH_PERIOD: Duration = Duration::from_secs(1);

const MICROS_PER_MILLI: u64 = 1000;

const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

/// Upper bounds of the latency buckets, in milliseconds; a last `+Inf` bucket follows.
const LATENCY_BUCKETS_MS: [u64; 21] = [
    1, 2, 5, 10, 15, 20, 25, 30, 40, 50, 60, 75, 100, 150, 200, 300, 500, 1000, 2500, 5000, 10000,
];

thread_local! {
    static COUNTERS: RefCell<Counters> = RefCell::new(Counters::default());
}

/// This VM's counters: a slot per defined name, with the count not yet added to Envoy's stat.
#[derive(Default)]
struct Counters {
    slots: HashMap<String, Slot>,
    metric_ids: Vec<u32>,
    /// Units of `pending` per unit of the stat (1000 for a millisecond stat kept in µs).
    scale: Vec<u64>,
    pending: Vec<u64>,
    /// Slots with a non-zero pending count, so a flush touches only what changed.
    dirty: Vec<Slot>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot(usize);

impl Counters {
    fn define(&mut self, name: String, scale: u64) -> Result<Slot, Status> {
        if let Some(slot) = self.slots.get(&name) {
            return Ok(*slot);
        }
        let id = hostcalls::define_metric(MetricType::Counter, &name)?;
        let slot = Slot(self.metric_ids.len());
        self.metric_ids.push(id);
        self.scale.push(scale.max(1));
        self.pending.push(0);
        self.slots.insert(name, slot);
        Ok(slot)
    }

    fn add(&mut self, slot: Slot, delta: u64) {
        if delta == 0 {
            return;
        }
        if self.pending[slot.0] == 0 {
            self.dirty.push(slot);
        }
        self.pending[slot.0] += delta;
    }
}

fn define(name: String) -> Result<Slot, Status> {
    COUNTERS.with(|c| c.borrow_mut().define(name, 1))
}

/// A counter whose pending count is kept in `scale` finer units; flushes carry the remainder.
fn define_scaled(name: String, scale: u64) -> Result<Slot, Status> {
    COUNTERS.with(|c| c.borrow_mut().define(name, scale))
}

/// Adds every pending count to Envoy's stats. Called by the root context's timer.
pub(crate) fn flush() {
    COUNTERS.with(|c| {
        let mut counters = c.borrow_mut();
        let counters = &mut *counters;
        let mut carried = Vec::new();
        for slot in counters.dirty.drain(..) {
            let scale = counters.scale[slot.0];
            let pending = &mut counters.pending[slot.0];
            let delta = *pending / scale;
            *pending %= scale;
            if *pending > 0 {
                carried.push(slot);
            }
            if delta > 0 {
                let delta = i64::try_from(delta).unwrap_or(i64::MAX);
                // A failed stat update must never fail anything else; the count is dropped.
                let _ = hostcalls::increment_metric(counters.metric_ids[slot.0], delta);
            }
        }
        counters.dirty = carried;
    });
}

/// Counter slots of one version of one rule.
struct VersionMetrics {
    requests: Slot,
    responses: [Slot; STATUS_CLASSES.len()],
    latency_buckets: [Slot; LATENCY_BUCKETS_MS.len() + 1],
    /// Kept in µs, flushed in ms.
    latency_sum_ms: Slot,
    latency_count: Slot,
}

/// Metric slots of one rule, indexed by `version_index`.
pub(crate) struct RuleMetrics {
    versions: [VersionMetrics; 2],
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

impl VersionMetrics {
    fn define(rollout: &str, version: Version) -> Result<Self, Status> {
        let labels = format!("rollout={rollout};version={version}");
        let latency = |suffix: &str| define(format!("higress_canary.latency_ms_{suffix};{labels}"));

        let mut responses = [Slot(0); STATUS_CLASSES.len()];
        for (slot, class) in responses.iter_mut().zip(STATUS_CLASSES) {
            *slot = define(format!("higress_canary.responses;{labels};code={class}"))?;
        }
        let mut latency_buckets = [Slot(0); LATENCY_BUCKETS_MS.len() + 1];
        let bounds = LATENCY_BUCKETS_MS
            .iter()
            .map(u64::to_string)
            .chain(["+Inf".to_owned()]);
        for (slot, le) in latency_buckets.iter_mut().zip(bounds) {
            *slot = latency(&format!("bucket;le={le}"))?;
        }
        Ok(Self {
            requests: define(format!("higress_canary.requests;{labels}"))?,
            responses,
            latency_buckets,
            latency_sum_ms: define_scaled(
                format!("higress_canary.latency_ms_sum;{labels}"),
                MICROS_PER_MILLI,
            )?,
            latency_count: latency("count")?,
        })
    }
}

impl RuleMetrics {
    pub(crate) fn define(rule: &Rule) -> Result<Self, Status> {
        let rollout = rule.rollout();
        let versions = [
            VersionMetrics::define(rollout, Version::Stable)?,
            VersionMetrics::define(rollout, Version::Canary)?,
        ];
        // The weight is set once per config, so it goes to the host directly.
        let weight = hostcalls::define_metric(
            MetricType::Gauge,
            &format!("higress_canary.weight_basis_points;rollout={rollout}"),
        )?;
        hostcalls::record_metric(weight, u64::from(rule.weight().basis_points()))?;
        Ok(Self { versions })
    }

    pub(crate) fn count_request(&self, version: Version) {
        let m = &self.versions[version_index(version)];
        COUNTERS.with(|c| c.borrow_mut().add(m.requests, 1));
    }

    /// Counts a finished stream: its status class and, if known, its latency.
    pub(crate) fn count_response(
        &self,
        version: Version,
        status: Option<u32>,
        latency: Option<Duration>,
    ) {
        let m = &self.versions[version_index(version)];
        COUNTERS.with(|c| {
            let mut counters = c.borrow_mut();
            counters.add(m.responses[status_class_index(status)], 1);
            let Some(latency) = latency else { return };
            let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
            // Cumulative buckets: a sample counts in every bucket whose bound it does not exceed.
            let first = LATENCY_BUCKETS_MS
                .iter()
                .position(|ms| us <= ms * MICROS_PER_MILLI);
            let first = first.unwrap_or(LATENCY_BUCKETS_MS.len());
            for slot in &m.latency_buckets[first..] {
                counters.add(*slot, 1);
            }
            counters.add(m.latency_sum_ms, us);
            counters.add(m.latency_count, 1);
        });
    }
}
