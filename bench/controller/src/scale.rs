//! Part 2: many Rollouts released at once.
//!
//! `apps` Deployments (each with its Service, Ingress and pods) are created and served first;
//! then the controller starts and adopts a Rollout per Deployment (two weight steps that pass
//! on their own, `pause: {duration: 0}`, Kruise's default grace period); then every image
//! changes at once and the benchmark waits until every Rollout reports the release succeeded.
//! It reads the controller's /metrics, its memory and CPU time, and its requests from the
//! API server's log, and checks the end state (no canary Deployment left, every Deployment on
//! the new image and paused again, no rule left in the WasmPlugin).

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{ensure, Result};
use futures::{stream, StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, ListParams};
use serde_json::Value;

use crate::{
    apps::{self, Step},
    cluster::{Sandbox, NS},
    controller::{process_cpu, Controller, Memory, Metrics},
    machine::CpuAccount,
    requests::RequestStats,
};

/// Label the controller puts on canary Deployments.
const CANARY_LABEL: &str = "rollouts.kruise.io/canary-deployment";
/// Writes in flight at once while setting up and changing images.
pub const PARALLEL_WRITES: usize = 16;
const SETUP_PATIENCE: Duration = Duration::from_secs(300);
/// How often progress is polled (one list of Rollouts).
const POLL: Duration = Duration::from_secs(1);

/// Every app's Rollout: 20% with one canary pod, then 50%, each passing at once.
pub fn steps() -> Vec<Step> {
    [20, 50]
        .into_iter()
        .map(|weight| Step {
            weight,
            replicas: 1,
            pause_seconds: Some(0),
        })
        .collect()
}

pub struct Options {
    pub apps: usize,
    pub replicas: i32,
    /// How long the release may take before the benchmark gives up.
    pub patience: Duration,
}

/// One phase (adoption or release) as the controller lived it.
#[derive(Debug, Clone, Default)]
pub struct Phase {
    pub wall: Duration,
    pub metrics: Metrics,
    pub requests: RequestStats,
    pub cpu: Duration,
    pub memory: Memory,
    pub other_cpu_share: f64,
    /// CPU time of the benchmark's process: the API server, the simulator and its pod
    /// servers, the gateway bridge, and the benchmark's own polling.
    pub sandbox_cpu: Duration,
    /// Every request the API server answered, by client.
    pub requests_by_client: BTreeMap<String, usize>,
}

pub struct Outcome {
    pub apps: usize,
    pub replicas: i32,
    /// Creating the apps and waiting for their pods and routes.
    pub setup: Duration,
    pub adoption: Phase,
    pub release: Phase,
    /// Time from the first image change until the first, half and all Rollouts succeeded.
    pub first_done: Option<Duration>,
    pub half_done: Option<Duration>,
    /// Time to change every image (the release clock starts before the first change).
    pub images_changed: Duration,
    pub succeeded: usize,
    /// Rollouts that did not succeed, with their state (at most a few).
    pub unfinished: Vec<String>,
    /// End-state checks that failed.
    pub check_failures: Vec<String>,
    pub controller_warnings: Vec<String>,
    pub gave_up: bool,
    /// Why the sandbox ran without its gateway, if it did.
    pub without_gateway: Option<String>,
}

pub async fn run(controller_bin: &Path, plugin: &Path, options: &Options) -> Result<Outcome> {
    check_file_limit(options)?;
    let without_gateway = gateway_misfit(options.apps);
    if let Some(why) = &without_gateway {
        println!("bench: scale: without the gateway: {why}");
    }
    let sandbox = Sandbox::start(plugin, without_gateway.is_none()).await?;
    let names: Vec<String> = (0..options.apps).map(|i| format!("app-{i}")).collect();

    let setup_start = Instant::now();
    let objects: Vec<Value> = names
        .iter()
        .flat_map(|n| apps::app(n, options.replicas, "v1"))
        .collect();
    create_all(&sandbox, objects).await?;
    until_pods(&sandbox, options, "v1", SETUP_PATIENCE).await?;
    // Let the gateway catch up with every route before the controller starts.
    if let Ok(gateway) = sandbox.gateway() {
        if let Err(e) = gateway.synced().await {
            println!("bench: scale: the gateway did not settle: {e}");
        }
    }
    let setup = setup_start.elapsed();
    println!(
        "bench: scale: {} apps with {} pod(s) each served after {:.1} s",
        options.apps,
        options.replicas,
        setup.as_secs_f64()
    );

    let mut controller = Controller::start(
        controller_bin,
        &sandbox.kubeconfig(),
        &crate::plugin_url(plugin),
        &sandbox.dir.path().join("controller.log"),
    )
    .await?;
    let requests_from = sandbox.request_count();
    let metrics_before = controller.metrics().await?;
    let cpu_before = controller.cpu()?;
    let sandbox_cpu_before = process_cpu(std::process::id())?;
    let account = CpuAccount::now()?;
    let adoption_start = Instant::now();
    let steps = steps();
    create_all(
        &sandbox,
        names
            .iter()
            .map(|n| apps::rollout(n, &steps, None, false))
            .collect(),
    )
    .await?;
    let rollouts = sandbox.rollouts();
    loop {
        let list = rollouts.list(&ListParams::default()).await?;
        let healthy = list
            .items
            .iter()
            .filter(|r| apps::phase(&as_value(r)) == "Healthy")
            .count();
        if healthy == options.apps {
            break;
        }
        controller.check_alive()?;
        ensure!(
            adoption_start.elapsed() < SETUP_PATIENCE,
            "only {healthy} of {} Rollouts became Healthy within {SETUP_PATIENCE:?}",
            options.apps
        );
        tokio::time::sleep(POLL).await;
    }
    for r in rollouts.list(&ListParams::default()).await?.items {
        ensure!(
            apps::condition(&as_value(&r), "Succeeded").is_none(),
            "Rollout {} already has a Succeeded condition before any release",
            r.metadata.name.as_deref().unwrap_or("?")
        );
    }
    let adoption = phase(
        &sandbox,
        &controller,
        adoption_start,
        &account,
        (cpu_before, sandbox_cpu_before),
        &metrics_before,
        requests_from,
    )
    .await?;
    println!(
        "bench: scale: {} Rollouts adopted in {:.1} s",
        options.apps,
        adoption.wall.as_secs_f64()
    );

    // The release: every image at once.
    let requests_from = sandbox.request_count();
    let metrics_before = controller.metrics().await?;
    let cpu_before = controller.cpu()?;
    let sandbox_cpu_before = process_cpu(std::process::id())?;
    let account = CpuAccount::now()?;
    let release_start = Instant::now();
    let image = apps::image("v2");
    stream::iter(names.iter())
        .map(|n| sandbox.set_image(n, &image))
        .buffer_unordered(PARALLEL_WRITES)
        .try_collect::<Vec<_>>()
        .await?;
    let images_changed = release_start.elapsed();
    println!(
        "bench: scale: {} images changed in {:.1} s",
        options.apps,
        images_changed.as_secs_f64()
    );
    let (mut first_done, mut half_done) = (None, None);
    let mut last_report = Instant::now();
    let (succeeded, unfinished, gave_up) = loop {
        let list = rollouts.list(&ListParams::default()).await?;
        let values: Vec<Value> = list.items.iter().map(as_value).collect();
        let done = values.iter().filter(|r| apps::succeeded(r)).count();
        let failed: Vec<&Value> = values
            .iter()
            .filter(|r| apps::condition(r, "Succeeded") == Some("False"))
            .collect();
        if done > 0 && first_done.is_none() {
            first_done = Some(release_start.elapsed());
        }
        if done * 2 >= options.apps && half_done.is_none() {
            half_done = Some(release_start.elapsed());
        }
        let all_settled = done + failed.len() == options.apps;
        let timed_out = release_start.elapsed() > options.patience;
        if all_settled || timed_out {
            let unfinished = values
                .iter()
                .filter(|r| !apps::succeeded(r))
                .take(5)
                .map(describe)
                .collect();
            break (done, unfinished, timed_out && !all_settled);
        }
        controller.check_alive()?;
        if last_report.elapsed() >= Duration::from_secs(5) {
            println!(
                "bench: scale: {:.0} s: {done} of {} released; {}",
                release_start.elapsed().as_secs_f64(),
                options.apps,
                states(&values)
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(POLL).await;
    };
    let release = phase(
        &sandbox,
        &controller,
        release_start,
        &account,
        (cpu_before, sandbox_cpu_before),
        &metrics_before,
        requests_from,
    )
    .await?;
    println!(
        "bench: scale: {succeeded} of {} Rollouts released in {:.1} s",
        options.apps,
        release.wall.as_secs_f64()
    );
    let check_failures = if gave_up {
        Vec::new()
    } else {
        end_state(&sandbox, &names, &image).await?
    };
    let controller_warnings = controller.warnings();
    controller.stop().await?;
    Ok(Outcome {
        apps: options.apps,
        replicas: options.replicas,
        setup,
        adoption,
        release,
        first_done,
        half_done,
        images_changed,
        succeeded,
        unfinished,
        check_failures,
        controller_warnings,
        gave_up,
        without_gateway,
    })
}

/// Why the gateway cannot run with `apps` apps, if it cannot. Envoy's file-based xDS, which
/// the sandbox gateway drives, opens an inotify instance per subscription: one per cluster (a
/// stable and a canary Service per app) and a few more; the kernel caps the instances of one
/// user (`fs.inotify.max_user_instances`, 128 by default), and Envoy aborts when it cannot get
/// one.
fn gateway_misfit(apps: usize) -> Option<String> {
    const LIMIT_FILE: &str = "/proc/sys/fs/inotify/max_user_instances";
    let limit: usize = std::fs::read_to_string(LIMIT_FILE)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let in_use = inotify_instances_in_use();
    let needed = 2 * apps + 16;
    (in_use + needed > limit).then(|| {
        format!(
            "Envoy's file-based xDS needs an inotify instance per cluster, about {needed} for \
             {apps} apps, but `fs.inotify.max_user_instances` is {limit} ({in_use} in use); \
             `sysctl -w fs.inotify.max_user_instances={}` lets it run",
            (in_use + needed).next_power_of_two()
        )
    })
}

/// inotify instances open in the processes we can see.
fn inotify_instances_in_use() -> usize {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    procs
        .flatten()
        .filter(|p| {
            p.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .filter_map(|p| std::fs::read_dir(p.path().join("fd")).ok())
        .flat_map(|fds| fds.flatten())
        .filter(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| target.to_string_lossy() == "anon_inode:inotify")
        })
        .count()
}

/// The simulator runs a real HTTP server per pod, Envoy holds connections to them: make sure
/// the file-descriptor limit leaves room.
fn check_file_limit(options: &Options) -> Result<()> {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<usize>().ok());
    // Stable, canary and surge pods, each a listener plus a connection or two from Envoy.
    let needed = options.apps * (options.replicas as usize + 2) * 3 + 1_000;
    if let Some(soft) = soft {
        ensure!(
            soft >= needed,
            "the open-file limit is {soft}, but {} apps need about {needed}: raise it \
             (`ulimit -n {needed}`) or use fewer apps (--apps)",
            options.apps
        );
    }
    Ok(())
}

async fn create_all(sandbox: &Sandbox, objects: Vec<Value>) -> Result<()> {
    stream::iter(objects.iter())
        .map(|o| sandbox.create(o))
        .buffer_unordered(PARALLEL_WRITES)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

/// Waits until every app Deployment has all its pods available.
async fn until_pods(
    sandbox: &Sandbox,
    options: &Options,
    tag: &str,
    patience: Duration,
) -> Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(sandbox.client.clone(), NS);
    let start = Instant::now();
    loop {
        let list = deployments.list(&ListParams::default()).await?;
        let ready = list
            .items
            .iter()
            .filter(|d| {
                d.status
                    .as_ref()
                    .and_then(|s| s.available_replicas)
                    .unwrap_or(0)
                    == options.replicas
            })
            .count();
        if ready >= options.apps {
            return Ok(());
        }
        ensure!(
            start.elapsed() < patience,
            "only {ready} of {} Deployments had their {tag} pods within {patience:?}",
            options.apps
        );
        tokio::time::sleep(POLL).await;
    }
}

/// What the controller did since `start`; `cpu_before`: the controller's and this process's
/// CPU time then.
async fn phase(
    sandbox: &Sandbox,
    controller: &Controller,
    start: Instant,
    account: &CpuAccount,
    cpu_before: (Duration, Duration),
    metrics_before: &Metrics,
    requests_from: usize,
) -> Result<Phase> {
    let wall = start.elapsed();
    let sandbox_cpu = process_cpu(std::process::id())?.saturating_sub(cpu_before.1);
    let mut requests_by_client = BTreeMap::new();
    for r in sandbox.api.requests().iter().skip(requests_from) {
        *requests_by_client
            .entry(crate::cluster::client_of(r).to_owned())
            .or_default() += 1;
    }
    Ok(Phase {
        wall,
        other_cpu_share: CpuAccount::now()?.other_share_since(account),
        metrics: controller.metrics().await?.since(metrics_before),
        requests: RequestStats::of(&sandbox.controller_requests(requests_from)),
        cpu: controller.cpu()?.saturating_sub(cpu_before.0),
        memory: controller.memory()?,
        sandbox_cpu,
        requests_by_client,
    })
}

/// After the release: no canary Deployment, every app Deployment paused on the new image
/// with its pods updated and available, no rule left in the WasmPlugin.
async fn end_state(sandbox: &Sandbox, names: &[String], image: &str) -> Result<Vec<String>> {
    let mut failures = Vec::new();
    let deployments: Api<Deployment> = Api::namespaced(sandbox.client.clone(), NS);
    let canaries = deployments
        .list(&ListParams::default().labels(CANARY_LABEL))
        .await?;
    if !canaries.items.is_empty() {
        failures.push(format!("{} canary Deployments left", canaries.items.len()));
    }
    let list = deployments.list(&ListParams::default()).await?;
    let by_name: BTreeMap<&str, &Deployment> = list
        .items
        .iter()
        .filter_map(|d| Some((d.metadata.name.as_deref()?, d)))
        .collect();
    for name in names {
        let Some(d) = by_name.get(name.as_str()) else {
            failures.push(format!("Deployment {name} is gone"));
            continue;
        };
        let spec = &d.spec;
        let template_image = spec
            .template
            .spec
            .as_ref()
            .and_then(|p| p.containers.first())
            .and_then(|c| c.image.as_deref());
        let replicas = spec.replicas.unwrap_or(1);
        let status = d.status.as_ref();
        let updated = status.and_then(|s| s.updated_replicas).unwrap_or(0);
        let available = status.and_then(|s| s.available_replicas).unwrap_or(0);
        let paused = spec.paused.unwrap_or(false);
        if template_image != Some(image) || updated != replicas || available != replicas || !paused
        {
            failures.push(format!(
                "Deployment {name}: image {template_image:?}, {updated} updated and \
                 {available} available of {replicas}, paused {paused}"
            ));
        }
    }
    match sandbox.wasm_plugins().get_opt(crate::PLUGIN_NAME).await? {
        Some(plugin) => {
            let rules = apps::rule_count(&as_value(&plugin));
            if rules > 0 {
                failures.push(format!("the WasmPlugin still has {rules} rules"));
            }
        }
        None => failures.push("the WasmPlugin is missing".to_owned()),
    }
    if failures.len() > 5 {
        let more = failures.len() - 5;
        failures.truncate(5);
        failures.push(format!("… and {more} more"));
    }
    Ok(failures)
}

fn as_value(object: &kube::api::DynamicObject) -> Value {
    serde_json::to_value(object).unwrap_or_default()
}

fn describe(rollout: &Value) -> String {
    format!(
        "{}: phase {}, step {} {}, Succeeded {}",
        rollout
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("?"),
        apps::phase(rollout),
        apps::step_index(rollout),
        apps::step_state(rollout),
        apps::condition(rollout, "Succeeded").unwrap_or("unset")
    )
}

/// `StepUpgrade 120, StepTrafficRouting 80, …` over the Rollouts not yet released.
fn states(rollouts: &[Value]) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for r in rollouts.iter().filter(|r| !apps::succeeded(r)) {
        let state = match apps::step_state(r) {
            "" => apps::phase(r).to_owned(),
            s => s.to_owned(),
        };
        *counts.entry(state).or_default() += 1;
    }
    counts
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_passes_on_its_own() {
        let steps = steps();
        assert!(steps.iter().all(|s| s.pause_seconds == Some(0)));
        assert!(steps.windows(2).all(|w| w[0].weight < w[1].weight));
    }
}
