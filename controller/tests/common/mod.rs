//! The harness of the sandbox integration tests: a sandbox cluster (fake API server, workload
//! simulator, real Envoy gateway with the repository's plugin), the seed application, and the
//! real controller loop running in-process through `higress_canary::run` with kube's real
//! client. Everything the tests check goes through the API or the gateway, as a user would.

#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use higress_canary::{
    crd::{Rollout, StepState},
    keys::POD_TEMPLATE_HASH,
    metrics::Metrics,
    observe::wasm_plugin_api,
    render::PluginRef,
    Settings,
};
use k8s_openapi::api::{
    apps::v1::Deployment, core::v1::Service, events::v1::Event, networking::v1::Ingress,
};
use kube::{
    api::{Api, ListParams, Patch, PatchParams, PostParams},
    Client,
};
use sandbox::{
    cluster::{Cluster, ClusterConfig},
    gateway::http,
};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::{sync::oneshot, task::JoinHandle};

pub const NS: &str = "default";
/// How long anything may take before a test fails (a release of the seed app takes ~30 s).
pub const PATIENCE: Duration = Duration::from_secs(90);

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("invariant: the controller crate lives in the workspace")
        .to_path_buf()
}

/// A Rollout of the seed app's Deployment `demo` through Service and Ingress `demo`, with
/// these steps and a 1 s grace period.
pub fn demo_rollout(name: &str, steps: Value) -> Value {
    json!({
        "apiVersion": "rollouts.kruise.io/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": name},
        "spec": {
            "objectRef": {"workloadRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "demo"}},
            "strategy": {"canary": {
                "steps": steps,
                "trafficRoutings": [{"service": "demo", "gracePeriodSeconds": 1, "ingress": {"name": "demo"}}],
            }},
        },
    })
}

/// A seed scenario file, unchanged.
pub fn scenario(name: &str) -> String {
    let path = workspace().join("../shared/scenarios").join(name);
    std::fs::read_to_string(&path)
        .or_else(|_| {
            std::fs::read_to_string(workspace().join("controller/tests/fixtures").join(name))
        })
        .unwrap_or_else(|e| panic!("reading scenario {}: {e}", path.display()))
}

/// The sandbox tests start a cluster with an Envoy each; under plain `cargo test` (one process
/// per test binary) they run one at a time. `cargo xtask test` runs every test in its own
/// process under nextest, where this lock is per test and `.config/nextest.toml` sets how
/// many run at once.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs a test body on its own multi-threaded runtime, one test at a time.
pub fn run_test<F, Fut>(body: F) -> Result<()>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let _serial = serial();
    init_tracing();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()?
        .block_on(body())
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TEST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

pub fn plugin_wasm() -> Result<PathBuf> {
    let path = Cluster::local_plugin_wasm();
    ensure!(
        path.is_file(),
        "no plugin at {}: run `cargo xtask wasm`",
        path.display()
    );
    Ok(path)
}

struct RunningController {
    stop: oneshot::Sender<()>,
    task: JoinHandle<higress_canary::Result<()>>,
}

/// A sandbox with the seed app and (optionally) the controller running.
pub struct Harness {
    pub cluster: Cluster,
    pub client: Client,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    controller: Option<RunningController>,
    kubeconfig: tempfile::TempDir,
}

impl Harness {
    /// Starts the sandbox, applies the seed app (demo-app.yaml) and waits until the gateway
    /// serves it. The controller is not started.
    pub async fn start() -> Result<Self> {
        let wasm = plugin_wasm()?;
        let cluster = Cluster::start(ClusterConfig::default()).await?;
        let client = cluster.api.client();
        let metrics = Arc::new(Metrics::default());
        let settings = Settings {
            plugin: PluginRef {
                url: format!("file://{}", wasm.display()),
                ..PluginRef::default()
            },
            metrics: metrics.clone(),
            ..Settings::default()
        };
        let kubeconfig = tempfile::tempdir()?;
        cluster
            .api
            .write_kubeconfig(&kubeconfig.path().join("kubeconfig"))?;
        let harness = Harness {
            cluster,
            client,
            metrics,
            settings,
            controller: None,
            kubeconfig,
        };
        harness.create_yaml(&scenario("demo-app.yaml")).await?;
        harness.until_all(&[], "v1").await?;
        Ok(harness)
    }

    /// A sandbox with the seed app, the controller running and `rollout_yaml` (a Rollout
    /// named `name`) in control of `demo`.
    pub async fn with_rollout(rollout_yaml: &str, name: &str) -> Result<Self> {
        let mut harness = Self::start().await?;
        harness.start_controller();
        harness.adopt(rollout_yaml, name).await?;
        Ok(harness)
    }

    /// [`Harness::with_rollout`], then `demo` gets image `v2` and the release waits for
    /// approval at step 1. Returns the Rollout as it is then.
    pub async fn released_to_step_1(rollout_yaml: &str, name: &str) -> Result<(Self, Rollout)> {
        let harness = Self::with_rollout(rollout_yaml, name).await?;
        harness.set_image("v2").await?;
        let rollout = harness.wait_paused_at(name, 1).await?;
        Ok((harness, rollout))
    }

    /// Starts the controller loop in-process (as `higress-canary run` would).
    pub fn start_controller(&mut self) {
        assert!(
            self.controller.is_none(),
            "the controller is already running"
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(higress_canary::run(
            self.client.clone(),
            self.settings.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        self.controller = Some(RunningController { stop, task });
    }

    /// Stops the controller gracefully (running reconciles finish).
    pub async fn stop_controller(&mut self) -> Result<()> {
        let Some(running) = self.controller.take() else {
            return Ok(());
        };
        let _ = running.stop.send(());
        tokio::time::timeout(Duration::from_secs(30), running.task)
            .await
            .context("the controller did not stop")???;
        Ok(())
    }

    /// Kills the controller at once, wherever its reconciles are (a crash).
    pub async fn kill_controller(&mut self) {
        if let Some(running) = self.controller.take() {
            running.task.abort();
            let _ = running.task.await;
        }
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.kubeconfig.path().join("kubeconfig")
    }

    pub fn gateway(&self) -> SocketAddr {
        self.cluster.gateway.listener_addr()
    }

    /// Creates every document of a YAML stream (Deployments, Services, Ingresses, Rollouts)
    /// in the test namespace.
    pub async fn create_yaml(&self, yaml: &str) -> Result<()> {
        let pp = PostParams::default();
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            let value = serde_json::Value::deserialize(doc)?;
            if value.is_null() {
                continue;
            }
            let kind = value["kind"].as_str().unwrap_or_default().to_owned();
            match kind.as_str() {
                "Deployment" => {
                    Api::<Deployment>::namespaced(self.client.clone(), NS)
                        .create(&pp, &serde_json::from_value(value)?)
                        .await?;
                }
                "Service" => {
                    Api::<Service>::namespaced(self.client.clone(), NS)
                        .create(&pp, &serde_json::from_value(value)?)
                        .await?;
                }
                "Ingress" => {
                    Api::<Ingress>::namespaced(self.client.clone(), NS)
                        .create(&pp, &serde_json::from_value(value)?)
                        .await?;
                }
                "Rollout" => {
                    self.rollouts()
                        .create(&pp, &serde_json::from_value(value)?)
                        .await?;
                }
                other => bail!("unexpected kind {other:?} in a scenario"),
            }
        }
        Ok(())
    }

    pub fn rollouts(&self) -> Api<Rollout> {
        Api::namespaced(self.client.clone(), NS)
    }

    pub fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), NS)
    }

    pub fn services(&self) -> Api<Service> {
        Api::namespaced(self.client.clone(), NS)
    }

    pub fn ingresses(&self) -> Api<Ingress> {
        Api::namespaced(self.client.clone(), NS)
    }

    /// Creates a seed Rollout and waits until the controller took control of `demo`
    /// (paused, phase Healthy).
    pub async fn adopt(&self, rollout_yaml: &str, name: &str) -> Result<()> {
        self.wait_ready().await?;
        self.create_yaml(rollout_yaml).await?;
        self.wait_rollout(name, "phase Healthy", |r| phase(r) == "Healthy")
            .await?;
        let d = self.deployments().get("demo").await?;
        ensure!(
            d.spec.paused == Some(true),
            "demo is not paused after adoption"
        );
        Ok(())
    }

    /// Waits until the controller's Rollout cache is synced (what `/readyz` reports), so a
    /// Rollout created now is seen.
    pub async fn wait_ready(&self) -> Result<()> {
        let start = Instant::now();
        while !self.metrics.is_ready() {
            ensure!(
                start.elapsed() < Duration::from_secs(10),
                "the controller never reported ready"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// `kubectl set image deployment/demo main=...:<tag>`.
    pub async fn set_image(&self, tag: &str) -> Result<()> {
        let patch = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "main", "image": format!("registry.cn-hangzhou.aliyuncs.com/mse-ingress/version:{tag}")}
        ]}}}});
        self.deployments()
            .patch("demo", &PatchParams::default(), &Patch::Strategic(&patch))
            .await?;
        Ok(())
    }

    /// Polls the Rollout until `pred` holds.
    pub async fn wait_rollout(
        &self,
        name: &str,
        what: &str,
        pred: impl Fn(&Rollout) -> bool,
    ) -> Result<Rollout> {
        let start = Instant::now();
        loop {
            let r = self.rollouts().get(name).await?;
            if pred(&r) {
                return Ok(r);
            }
            if start.elapsed() > PATIENCE {
                bail!(
                    "Rollout {name}: no {what} after {PATIENCE:?}; status: {}",
                    serde_json::to_string_pretty(&r.status).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the Rollout waits for approval at `step`.
    pub async fn wait_paused_at(&self, name: &str, step: i32) -> Result<Rollout> {
        self.wait_rollout(name, &format!("StepPaused at step {step}"), |r| {
            r.canary_status().is_some_and(|c| {
                c.current_step_index == step && c.current_step_state == StepState::StepPaused
            })
        })
        .await
    }

    /// Waits until a release is over (phase Healthy, `Succeeded` as given).
    pub async fn wait_finished(&self, name: &str, succeeded: &str) -> Result<Rollout> {
        self.wait_rollout(name, &format!("Healthy with Succeeded={succeeded}"), |r| {
            phase(r) == "Healthy"
                && r.status
                    .as_ref()
                    .and_then(|s| s.condition("Succeeded"))
                    .is_some_and(|c| c.status == succeeded)
        })
        .await
    }

    /// Approves as `kubectl-kruise rollout approve` does: a JSON merge patch on `/status`.
    pub async fn approve_like_kruise(&self, name: &str) -> Result<()> {
        let patch = json!({"status": {"canaryStatus": {"currentStepState": "StepReady"}}});
        self.rollouts()
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    /// Runs the `higress-canary` binary against the sandbox.
    pub async fn cli(&self, args: &[&str]) -> Result<std::process::Output> {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_higress-canary"))
            .args(args)
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .output()
            .await
            .context("running higress-canary")?;
        Ok(output)
    }

    /// Starts the `higress-canary` binary against the sandbox and collects its standard
    /// output as it comes (for commands that keep running, like `status -w`).
    pub fn spawn_cli(&self, args: &[&str]) -> Result<RunningCli> {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_higress-canary"))
            .args(args)
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting higress-canary")?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let output = Arc::new(Mutex::new(String::new()));
        let collected = output.clone();
        let reader = tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt as _;
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut out = collected
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                out.push_str(&line);
                out.push('\n');
            }
        });
        Ok(RunningCli {
            child,
            output,
            reader,
        })
    }

    /// Available and desired pods of a Deployment (0/0 if it does not exist).
    pub async fn pods(&self, name: &str) -> Result<(i32, i32)> {
        Ok(match self.deployments().get_opt(name).await? {
            Some(d) => (
                d.status
                    .as_ref()
                    .and_then(|s| s.available_replicas)
                    .unwrap_or(0),
                d.spec.replicas.unwrap_or(1),
            ),
            None => (0, 0),
        })
    }

    /// Waits until the gateway answers every request on a fresh connection with `version`.
    pub async fn until_all(&self, headers: &[(&str, &str)], version: &str) -> Result<()> {
        let start = Instant::now();
        let mut streak = 0;
        loop {
            match http::get(self.gateway(), "/version", headers).await {
                Ok(r) if r.status == 200 && r.text() == version => {
                    streak += 1;
                    if streak >= 100 {
                        return Ok(());
                    }
                    continue;
                }
                _ => streak = 0,
            }
            ensure!(
                start.elapsed() < PATIENCE,
                "the gateway does not answer only {version:?} to {headers:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `n` requests on one keep-alive connection and counts the answers by body.
    pub async fn sample(&self, n: u32, headers: &[(&str, &str)]) -> Result<BTreeMap<String, u32>> {
        let mut client = http::Client::connect(self.gateway()).await?;
        let mut counts = BTreeMap::new();
        for _ in 0..n {
            let reply = client.get("/version", headers).await?;
            ensure!(
                reply.status == 200,
                "gateway answered {} {:?}",
                reply.status,
                reply.text()
            );
            *counts.entry(reply.text()).or_insert(0) += 1;
        }
        Ok(counts)
    }

    /// Checks that `share` of `n` requests reach `v2` (the rest `v1`) within a 99.9%
    /// two-sided binomial bound.
    pub async fn expect_share(&self, n: u32, share: f64) -> Result<()> {
        self.expect_share_of("v2", n, share).await
    }

    /// Checks that `share` of `n` requests reach `canary` (the rest `v1`) within a 99.9%
    /// two-sided binomial bound.
    pub async fn expect_share_of(&self, canary: &str, n: u32, share: f64) -> Result<()> {
        self.expect_split("v1", canary, n, share).await
    }

    /// Checks that `share` of `n` requests reach `canary` and the rest `stable`, within a
    /// 99.9% two-sided binomial bound.
    pub async fn expect_split(&self, stable: &str, canary: &str, n: u32, share: f64) -> Result<()> {
        // Let every Envoy worker run the latest config first.
        self.cluster.gateway.synced().await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let counts = self.sample(n, &[]).await?;
        let v2 = f64::from(counts.get(canary).copied().unwrap_or(0));
        let other: u32 = counts
            .iter()
            .filter(|(k, _)| k.as_str() != stable && k.as_str() != canary)
            .map(|(_, n)| n)
            .sum();
        ensure!(other == 0, "unexpected answers: {counts:?}");
        let n = f64::from(n);
        let bound = 3.29 * (n * share * (1.0 - share)).sqrt();
        ensure!(
            (v2 - share * n).abs() <= bound.max(0.5),
            "{v2} of {n} requests reached {canary}, expected {} ± {bound:.0} ({counts:?})",
            share * n
        );
        Ok(())
    }
}

/// A `higress-canary` process started by [`Harness::spawn_cli`]; killed when dropped.
pub struct RunningCli {
    child: tokio::process::Child,
    output: Arc<Mutex<String>>,
    reader: JoinHandle<()>,
}

impl RunningCli {
    /// Everything it printed so far.
    pub fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Waits until its output (so far) satisfies `pred`, failing after `deadline`.
    pub async fn wait_output(
        &self,
        what: &str,
        deadline: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let start = Instant::now();
        loop {
            let output = self.output();
            if pred(&output) {
                return Ok(output);
            }
            ensure!(
                start.elapsed() < deadline,
                "no {what} in the output after {deadline:?}:\n{output}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the process and waits for it and for its output to end.
    pub async fn kill(mut self) -> Result<String> {
        self.child.kill().await.context("killing higress-canary")?;
        tokio::time::timeout(Duration::from_secs(10), &mut self.reader)
            .await
            .context("its output did not end")?
            .context("the output reader failed")?;
        Ok(self.output())
    }
}

/// A status write of the controller, as the API server received it.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusWrite {
    pub step: i32,
    pub state: StepState,
    pub last_update_time: Option<jiff::Timestamp>,
}

/// The controller's accepted status writes of a Rollout's release, in order.
pub fn status_writes(h: &Harness, rollout: &str) -> Result<Vec<StatusWrite>> {
    let mut writes = Vec::new();
    for r in h.cluster.api.requests().iter().filter(|r| {
        r.resource == "rollouts"
            && r.subresource == "status"
            && r.name.as_deref() == Some(rollout)
            && r.status == 200
            && r.param("fieldManager") == Some("higress-canary")
    }) {
        let written: Rollout = serde_json::from_str(&r.body).context("a status write's body")?;
        if let Some(c) = written.canary_status() {
            writes.push(StatusWrite {
                step: c.current_step_index,
                state: c.current_step_state,
                last_update_time: c.last_update_time.as_ref().map(|t| t.0),
            });
        }
    }
    Ok(writes)
}

pub fn phase(r: &Rollout) -> String {
    r.status
        .as_ref()
        .and_then(|s| s.phase)
        .map(|p| format!("{p:?}"))
        .unwrap_or_default()
}

/// One answer of [`Traffic`]: when, and the body or what went wrong.
pub type Answer = (Instant, Result<String, String>);

/// Continuous traffic through the gateway on a few keep-alive connections, recording every
/// answer, for "zero failed requests" and "the old version's share never rises" checks.
pub struct Traffic {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    log: Arc<Mutex<Vec<Answer>>>,
    closes: Arc<std::sync::atomic::AtomicUsize>,
}

/// What [`Traffic`] saw.
#[derive(Debug, Default)]
pub struct TrafficReport {
    pub total: usize,
    /// Responses with `Connection: close` (the connection was then replaced).
    pub connection_closes: usize,
    pub failures: Vec<String>,
    pub by_version: BTreeMap<String, usize>,
    /// Answers in time order.
    pub answers: Vec<Answer>,
}

impl Traffic {
    pub fn start(gateway: SocketAddr, connections: usize) -> Self {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let log = Arc::new(Mutex::new(Vec::new()));
        let closes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks = (0..connections)
            .map(|_| {
                let log = log.clone();
                let stopped = stopped.clone();
                let closes = closes.clone();
                tokio::spawn(async move {
                    let mut client = None;
                    while !*stopped.borrow() {
                        if client.is_none() {
                            match http::Client::connect(gateway).await {
                                Ok(c) => client = Some(c),
                                Err(e) => {
                                    push(&log, Err(format!("connect: {e}")));
                                    tokio::time::sleep(Duration::from_millis(10)).await;
                                    continue;
                                }
                            }
                        }
                        let Some(c) = client.as_mut() else { continue };
                        let answer = match c.get("/version", &[]).await {
                            Ok(r) => {
                                // The sandbox's client does not honour `Connection: close`
                                // (Envoy sends it while draining a replaced listener); a real
                                // client opens a new connection.
                                if r.header("connection")
                                    .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                                {
                                    closes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                    client = None;
                                }
                                if r.status == 200 {
                                    Ok(r.text())
                                } else {
                                    Err(format!("{} {:?}", r.status, r.text()))
                                }
                            }
                            Err(e) => {
                                client = None;
                                Err(format!("request: {e}"))
                            }
                        };
                        push(&log, answer);
                        // ~200 requests/s per connection: plenty for the checks, light on 2 cores.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
            })
            .collect();
        Traffic {
            stop,
            tasks,
            log,
            closes,
        }
    }

    pub async fn stop(self) -> TrafficReport {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        let answers = std::mem::take(
            &mut *self
                .log
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let mut report = TrafficReport {
            total: answers.len(),
            connection_closes: self.closes.load(std::sync::atomic::Ordering::Relaxed),
            ..Default::default()
        };
        for (_, answer) in &answers {
            match answer {
                Ok(v) => *report.by_version.entry(v.clone()).or_default() += 1,
                Err(e) => report.failures.push(e.clone()),
            }
        }
        report.answers = answers;
        report
    }
}

fn push(log: &Mutex<Vec<Answer>>, answer: Result<String, String>) {
    log.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push((Instant::now(), answer));
}

// === checks shared by the test files ===

pub fn stable_pin(service: &Service) -> Option<String> {
    service
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .and_then(|s| s.get(POD_TEMPLATE_HASH).cloned())
}

/// The Events published on a Rollout, oldest first.
pub async fn events(h: &Harness, rollout: &str) -> Result<Vec<Event>> {
    let events: Api<Event> = Api::namespaced(h.client.clone(), NS);
    let mut list: Vec<Event> = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().is_some_and(|r| {
                r.kind.as_deref() == Some("Rollout") && r.name.as_deref() == Some(rollout)
            })
        })
        .collect();
    list.sort_by_key(|e| e.event_time.clone().map(|t| t.0));
    Ok(list)
}

/// `(type, reason)` of the Events published on a Rollout, oldest first.
pub async fn event_reasons(h: &Harness, rollout: &str) -> Result<Vec<(String, String)>> {
    Ok(events(h, rollout)
        .await?
        .into_iter()
        .map(|e| (e.type_.unwrap_or_default(), e.reason.unwrap_or_default()))
        .collect())
}

/// After a release: the canary objects are gone, the stable Service is unpinned, the
/// Deployment is paused again and the shared WasmPlugin has no rule left.
pub async fn expect_cleaned_up(h: &Harness) -> Result<()> {
    ensure!(
        h.deployments().get_opt("demo-canary").await?.is_none(),
        "canary Deployment left"
    );
    ensure!(
        h.services().get_opt("demo-canary").await?.is_none(),
        "canary Service left"
    );
    ensure!(
        h.ingresses().get_opt("demo-canary").await?.is_none(),
        "canary Ingress left"
    );
    let svc = h.services().get("demo").await?;
    ensure!(
        stable_pin(&svc).is_none(),
        "Service demo still pinned: {:?}",
        stable_pin(&svc)
    );
    let d = h.deployments().get("demo").await?;
    ensure!(
        d.spec.paused == Some(true),
        "Deployment demo is not paused again"
    );
    let plugin = wasm_plugin_api(&h.client, &h.settings.plugin)
        .get(&h.settings.plugin.name)
        .await?;
    let rules = plugin.data["spec"]["matchRules"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure!(rules.is_empty(), "rules left in the WasmPlugin: {rules:?}");
    Ok(())
}

/// The controller's writes (every write it makes carries its field manager), as
/// `verb resource/name[/subresource]`, with `+paused`/`-paused` on Deployment pause patches
/// and `+pin`/`-pin` on stable Service pins.
pub fn controller_writes(h: &Harness) -> Vec<String> {
    h.cluster
        .api
        .requests()
        .iter()
        // Deletes carry no field manager; the tests delete nothing while this is used.
        .filter(|r| {
            r.verb == "delete"
                || (r.method != "GET" && r.param("fieldManager") == Some("higress-canary"))
        })
        .map(|r| {
            let name = r.name.as_deref().unwrap_or("");
            let mut label = format!("{} {}/{name}", r.verb, r.resource);
            if !r.subresource.is_empty() {
                label.push('/');
                label.push_str(&r.subresource);
            }
            match (r.resource.as_str(), name) {
                ("deployments", "demo") if r.body.contains("\"paused\":true") => {
                    label.push_str(" +paused")
                }
                ("deployments", "demo") if r.body.contains("\"paused\":false") => {
                    label.push_str(" -paused")
                }
                ("services", "demo") if r.body.contains("\"pod-template-hash\":null") => {
                    label.push_str(" -pin")
                }
                ("services", "demo") if r.body.contains("\"pod-template-hash\":\"") => {
                    label.push_str(" +pin")
                }
                _ => {}
            }
            label
        })
        .collect()
}

/// Checks that `expected` occur in `writes` in this order (other writes may come between).
pub fn expect_order(writes: &[String], expected: &[&str]) -> Result<()> {
    let mut at = 0;
    for want in expected {
        match writes[at..].iter().position(|w| w == want) {
            Some(i) => at += i + 1,
            None => bail!(
                "expected {want:?} after position {at} in the controller's writes:\n{}",
                writes.join("\n")
            ),
        }
    }
    Ok(())
}

pub fn step_state(r: &Rollout) -> Option<(i32, StepState)> {
    r.canary_status()
        .map(|c| (c.current_step_index, c.current_step_state))
}
