//! The Rollout controller and CLI for higress-canary.
//!
//! Kruise-compatible `Rollout`s (`rollouts.kruise.io/v1alpha1`) step a Deployment through canary
//! batches; every step's routing is a rule of the higress-canary Wasm plugin in one shared
//! Higress `WasmPlugin`. The plugin's config is written with `canary_core::config`'s own types,
//! so the wire schema has one definition. Nothing here depends on proxy-wasm.
//!
//! The decision logic is pure and separate from I/O, so it is unit-tested without a cluster:
//! [`validate`] checks a Rollout, [`step::plan`] decides the next writes from what was
//! [`observed`], [`resources`] builds the canary objects, [`render`] the shared WasmPlugin and
//! [`analysis`] judges the canary's metrics. The I/O layer around it: [`observe`] reads,
//! [`prometheus`] queries the metrics, [`apply`] writes, [`reconcile`] runs the loop,
//! [`commands`] are the CLI's cluster commands.
#![forbid(unsafe_code)]

pub use canary_core::config;

/// Metric analysis (pure): the queries a step's checks need, their verdicts, the step's
/// analysis state.
pub mod analysis;
/// Writing a plan: object changes, the status, Events, then the shared WasmPlugin.
pub mod apply;
/// The CLI's cluster commands: approve, pause, resume, abort, undo, status.
pub mod commands;
/// The `Rollout` custom resource and its status.
pub mod crd;
/// Label, annotation and finalizer names.
pub mod keys;
/// Leader election through a Lease: `run_as_leader` runs the loop while this replica leads.
pub mod leader;
/// Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` endpoints.
pub mod metrics;
/// Reading what one Rollout's plan depends on, fresh from the API.
pub mod observe;
/// What the controller reads from the cluster for one Rollout.
pub mod observed;
/// `higress-canary render`: each step's WasmPlugin and canary Ingress, offline.
pub mod offline;
/// The Prometheus HTTP API client of the metric analysis.
pub mod prometheus;
/// The controller loop: `Context`, `reconcile`, `error_policy`, `run`.
pub mod reconcile;
/// The shared WasmPlugin as a pure function of all Rollouts.
pub mod render;
/// The canary Deployment, Service and Ingress, built from the stable ones.
pub mod resources;
/// Hashes identifying pod templates and release plans.
pub mod revision;
/// The release state machine (pure).
pub mod step;
/// Checking a Rollout and deriving names, steps and plugin rules from it.
pub mod validate;

use std::time::Duration;

use kube::CustomResourceExt;

pub use reconcile::{run, Settings};

/// What can go wrong talking to the cluster. Invalid Rollouts are not errors: the planner
/// reports them in the Rollout's status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A write lost a race (409 Conflict): something changed since it was read; plan again.
    #[error("{what}: the object changed since it was read (conflict)")]
    Conflict { what: String },
    /// Any other API failure.
    #[error("{what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    /// An object could not be encoded (a bug; retried slowly).
    #[error("encoding {what}: {source}")]
    Encode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// The controller's settings cannot be used (returned by `run` before it starts).
    #[error(transparent)]
    Prometheus(#[from] prometheus::ConfigError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps a kube error, telling conflicts apart.
    pub fn kube(what: impl Into<String>, source: kube::Error) -> Self {
        let what = what.into();
        match &source {
            kube::Error::Api(status) if status.code == 409 => Error::Conflict { what },
            _ => Error::Kube { what, source },
        }
    }

    /// A short, stable label for the `errors` metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Conflict { .. } => "conflict",
            Error::Kube {
                source: kube::Error::Api(status),
                ..
            } if status.code == 404 => "not_found",
            Error::Kube {
                source: kube::Error::Api(status),
                ..
            } if status.code >= 500 => "server_error",
            Error::Kube {
                source: kube::Error::Api(_),
                ..
            } => "api_error",
            Error::Kube { .. } => "transport",
            Error::Encode { .. } => "encode",
            Error::Prometheus(_) => "config",
        }
    }

    /// How long to wait before the `failures`-th consecutive retry (from 1): conflicts are
    /// retried almost at once (the watch event usually comes first), API and transport
    /// errors back off exponentially, encoding bugs slowly.
    pub fn backoff(&self, failures: u32) -> Duration {
        let exp = |base_ms: u64, cap_ms: u64| {
            let factor = 1u64 << failures.saturating_sub(1).min(16);
            Duration::from_millis(base_ms.saturating_mul(factor).min(cap_ms))
        };
        match self {
            Error::Conflict { .. } => exp(50, 2_000),
            Error::Kube { .. } => exp(500, 60_000),
            Error::Encode { .. } | Error::Prometheus(_) => Duration::from_secs(300),
        }
    }
}

/// The CRD YAML `higress-canary crd` prints and `deploy/crds/rollouts.kruise.io.yaml` holds.
pub fn crd_yaml() -> String {
    // A CRD built from our own types always serializes.
    let body = serde_yaml::to_string(&crd::Rollout::crd()).unwrap_or_default();
    format!(
        "# Generated by `higress-canary crd` from controller/src/crd.rs; do not edit by hand.\n\
         # OpenKruise Rollout v1alpha1, served by higress-canary: do not install it next to\n\
         # Kruise Rollout, which owns the same CRD name.\n{body}"
    )
}
