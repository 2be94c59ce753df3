//! Workload simulator: plays kube-controller-manager (deployment, ReplicaSet and endpoints
//! controllers, plus a fallback garbage collector) and a kubelet, against any API server,
//! through [`kube::Client`] only.
//!
//! Like the real components it watches the API (reflectors over Deployments, ReplicaSets,
//! Pods, Services and Endpoints) and writes back with ordinary requests: ReplicaSets named
//! `<deployment>-<pod-template-hash>` with revision annotations, pods named
//! `<replicaset>-<5 chars>`, statuses through `/status`, core/v1 Events. Every running pod
//! is a real HTTP server on `127.0.0.1` (see [`server`]); its port is in the pod annotation
//! [`PORT_ANNOTATION`] and in the Service's Endpoints.
//!
//! The decisions are pure functions with table tests ([`deployment::sync`],
//! [`replicaset::sync`], [`kubelet`], [`endpoints::desired`]); the loop in `runner` only
//! reads the caches, calls them and performs the writes. It runs in rounds: after a round's
//! writes it waits until the caches show them (read-your-writes, like the controllers'
//! expectations) before deciding again, so it never acts twice on a stale view.
//!
//! Failure knobs are annotations on the Deployment. The deployment controller copies them to
//! its current ReplicaSet (as a real one does with every Deployment annotation), the
//! simulated ReplicaSet controller copies them onto the pods it creates, and the kubelet
//! reads them from the pod. So a knob applies to the pods created after it was set (set it
//! with, or before, the image change of the "bad version"); pods already running keep their
//! behaviour unless their own annotation is changed, which takes effect at once:
//! - [`NEVER_READY_ANNOTATION`] `"true"`: the readiness probe never passes, so a rollout
//!   stalls and ends in `ProgressDeadlineExceeded`;
//! - [`ERROR_RATE_ANNOTATION`] `"0.2"`: that fraction of requests gets `500`.
//!
//! Copied annotations are never removed (real behaviour); set `"false"` / `"0"` to undo.
//!
//! What it does not model: scheduling and nodes (every pod runs at once on "127.0.0.1"),
//! image pulls, probes other than the readiness delay, container restarts, adoption of
//! orphaned ReplicaSets or pods by selector, EndpointSlices, `ReplicaFailure` conditions and
//! other workload kinds (StatefulSets, Jobs…).

pub mod deployment;
pub mod endpoints;
pub mod hash;
pub mod kubelet;
pub mod replicaset;
mod runner;
pub mod server;
pub mod util;

use std::time::Duration;

use kube::Client;
use tokio::{sync::watch, task::JoinHandle};

/// Pod annotation with the port of the pod's HTTP server (set by the simulated kubelet).
pub const PORT_ANNOTATION: &str = "sandbox.higress-canary.io/port";
/// Deployment (or pod template) annotation: `"true"` makes new pods never become ready.
pub const NEVER_READY_ANNOTATION: &str = "sandbox.higress-canary.io/never-ready";
/// Deployment (or pod template) annotation: fraction of requests its pods answer with 500.
pub const ERROR_RATE_ANNOTATION: &str = "sandbox.higress-canary.io/error-rate";

/// Simulator settings.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// How long a started pod takes to pass its readiness probe. Default 500 ms.
    pub readiness_delay: Duration,
    /// How long a deleted pod's server keeps serving (a `preStop` sleep) before it closes
    /// its connections gracefully. Default 1 s.
    pub termination_grace: Duration,
    /// Look at everything again at least this often, even without watch events. Default 1 s.
    pub resync: Duration,
    /// How long to wait for writes to show up in the watch caches before deciding anyway.
    /// Default 3 s.
    pub settle_timeout: Duration,
    /// How long [`Simulator::start`] waits for the initial lists. Default 10 s.
    pub sync_timeout: Duration,
    /// Record core/v1 Events (`ScalingReplicaSet`), as the deployment controller does.
    /// Default true.
    pub events: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            readiness_delay: Duration::from_millis(500),
            termination_grace: Duration::from_secs(1),
            resync: Duration::from_secs(1),
            settle_timeout: Duration::from_secs(3),
            sync_timeout: Duration::from_secs(10),
            events: true,
        }
    }
}

/// Simulator errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The initial list of some kinds did not complete (API server unreachable, or a kind
    /// it does not serve).
    #[error("the simulator's watches did not sync within {timeout:?}: {kinds} still listing")]
    NotSynced { timeout: Duration, kinds: String },
}

/// A running simulator. Dropping it stops the loop, the watches and every pod server.
pub struct Simulator {
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    watches: Vec<JoinHandle<()>>,
}

impl Simulator {
    /// Starts watching through `client` and acting on what it sees, on the current tokio
    /// runtime. Returns once the initial lists are in.
    pub async fn start(client: Client, config: SimConfig) -> Result<Self, Error> {
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (task, watches) = runner::start(client, config, shutdown_rx).await?;
        Ok(Self {
            shutdown,
            task: Some(task),
            watches,
        })
    }

    /// Stops the loop and waits for it; every pod server is killed.
    pub async fn shutdown(mut self) {
        self.shutdown.send_replace(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        for w in self.watches.drain(..) {
            w.abort();
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
        for w in self.watches.drain(..) {
            w.abort();
        }
    }
}
