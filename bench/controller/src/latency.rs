//! Part 1: the time from `approve` to the gateway serving the next step's weight.
//!
//! One app (4 pods) with a Rollout of nine approval steps, 10% to 90%, sticky on a user-id
//! header. At each pause the benchmark reads the WasmPlugin the controller wrote, and with the
//! plugin's own decision code (`canary_core`) picks user ids whose bucket lies between this
//! step's weight and the next one's: they reach the stable version now and the canary as soon
//! as the gateway routes with the next weight. It checks that through the gateway, approves
//! with the status merge patch `kubectl-kruise rollout approve` sends, and polls the gateway
//! with those ids until one reaches the canary. Most steps keep the canary's pod count, so the
//! time is the routing path alone; two steps per release add a canary pod first.

use std::{
    fs,
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, ensure, Context, Result};
use canary_core::{PluginConfig, Request, RouteKeys, Router, Version, Weight};
use sandbox::gateway::http;
use serde_json::Value;

use crate::{
    apps::{self, Step, STICKY_HEADER},
    cluster::{Sandbox, NS},
    controller::{Controller, Memory, Metrics},
    machine::CpuAccount,
    requests::RequestStats,
    watch::Watched,
};

pub const APP: &str = "latency";
/// Pods of the app's Deployment.
pub const REPLICAS: i32 = 4;
/// `gracePeriodSeconds` of the Rollout. The grace period runs after a routing change, before
/// the step pauses, so it lengthens a release but not the measured time; 1 s instead of
/// Kruise's 3 s keeps the benchmark short.
pub const GRACE_SECONDS: u32 = 1;
/// User ids between two weights polled after an approval.
pub const MOVING_KEYS: usize = 8;
/// Pause between two polls of the gateway (the measurement's resolution, with one request's
/// round trip).
pub const POLL_GAP: Duration = Duration::from_millis(1);
const PATIENCE: Duration = Duration::from_secs(60);
/// How long the gateway may take to show a state the controller already reported (before an
/// approval, and to confirm that every moving id has moved after it).
const CONFIRM_PATIENCE: Duration = Duration::from_secs(5);

/// The Rollout's steps: weight every 10%, canary pods 1, 1, 1, 2, 2, 2, 3, 3, 3.
pub fn steps() -> Vec<Step> {
    (1..=9)
        .map(|i| Step {
            weight: i * 10,
            replicas: i32::from(i - 1) / 3 + 1,
            pause_seconds: None,
        })
        .collect()
}

/// One approval.
#[derive(Debug, Clone)]
pub struct Sample {
    pub from_weight: u8,
    pub to_weight: u8,
    /// The next step has more canary pods, so they start before its weight is routed.
    pub adds_pods: bool,
    /// Approve sent → first request served by the canary at the new weight.
    pub served: Duration,
    /// Approve sent → the controller's status write for the next step, as the benchmark's
    /// watch saw it.
    pub status: Option<Duration>,
    /// Approve sent → the WasmPlugin with the new weight, as the watch saw it.
    pub plugin: Option<Duration>,
    /// Approve sent → the gateway wrote the plugin's ECDS file (its mtime).
    pub ecds_file: Option<Duration>,
}

pub struct Outcome {
    pub samples: Vec<Sample>,
    pub releases: u32,
    /// The controller's /metrics over the measured releases.
    pub metrics: Metrics,
    pub requests: RequestStats,
    pub memory: Memory,
    pub wall: Duration,
    /// Share of the machine's CPU time used by other processes meanwhile.
    pub other_cpu_share: f64,
    pub controller_command: String,
}

pub async fn run(controller_bin: &Path, plugin: &Path, releases: u32) -> Result<Outcome> {
    let sandbox = Sandbox::start(plugin, true).await?;
    for object in apps::app(APP, REPLICAS, "v1") {
        sandbox.create(&object).await?;
    }
    let host = apps::host(APP);
    sandbox.until_serving(&host, "v1", PATIENCE).await?;

    let rollout = Watched::start(sandbox.rollouts(), APP);
    let wasm_plugin = Watched::start(sandbox.wasm_plugins(), crate::PLUGIN_NAME);
    let mut controller = Controller::start(
        controller_bin,
        &sandbox.kubeconfig(),
        &crate::plugin_url(plugin),
        &sandbox.dir.path().join("controller.log"),
    )
    .await?;
    let steps = steps();
    sandbox
        .create(&apps::rollout(APP, &steps, Some(GRACE_SECONDS), true))
        .await?;
    rollout
        .until("phase Healthy (adopted)", PATIENCE, |r| {
            apps::phase(r) == "Healthy"
        })
        .await?;

    let metrics_before = controller.metrics().await?;
    let requests_from = sandbox.request_count();
    let cpu_before = CpuAccount::now()?;
    let start = Instant::now();
    let mut samples = Vec::new();
    for release in 0..releases {
        let old = format!("v{}", release + 1);
        let new = format!("v{}", release + 2);
        sandbox.set_image(APP, &apps::image(&new)).await?;
        for k in 1..=steps.len() {
            rollout
                .until(&format!("StepPaused at step {k}"), PATIENCE, |r| {
                    apps::paused_at(r, k as i64)
                })
                .await?;
            controller.check_alive()?;
            if k == steps.len() {
                sandbox.approve(APP).await?;
                continue;
            }
            let ctx = StepContext {
                sandbox: &sandbox,
                rollout: &rollout,
                wasm_plugin: &wasm_plugin,
                host: &host,
                old: &old,
                new: &new,
            };
            let sample = measure(&ctx, k, steps[k - 1], steps[k])
                .await
                .with_context(|| format!("release {} step {k}", release + 1))?;
            println!(
                "bench: latency: release {} step {k} → {} ({}% → {}%{}): served after {:.1} ms",
                release + 1,
                k + 1,
                sample.from_weight,
                sample.to_weight,
                if sample.adds_pods { ", adds a pod" } else { "" },
                ms(sample.served)
            );
            samples.push(sample);
        }
        rollout
            .until(
                "a finished release (Succeeded=True)",
                PATIENCE,
                apps::succeeded,
            )
            .await?;
        sandbox.until_serving(&host, &new, PATIENCE).await?;
    }
    let wall = start.elapsed();
    let other_cpu_share = CpuAccount::now()?.other_share_since(&cpu_before);
    let metrics = controller.metrics().await?.since(&metrics_before);
    let memory = controller.memory()?;
    let requests = RequestStats::of(&sandbox.controller_requests(requests_from));
    let controller_command = controller.command.clone();
    controller.stop().await?;
    Ok(Outcome {
        samples,
        releases,
        metrics,
        requests,
        memory,
        wall,
        other_cpu_share,
        controller_command,
    })
}

struct StepContext<'a> {
    sandbox: &'a Sandbox,
    rollout: &'a Watched,
    wasm_plugin: &'a Watched,
    host: &'a str,
    /// The stable version's answer.
    old: &'a str,
    /// The canary's answer.
    new: &'a str,
}

async fn measure(ctx: &StepContext<'_>, k: usize, from: Step, to: Step) -> Result<Sample> {
    let rollout_key = format!("{NS}/{APP}");
    let plugin = ctx
        .wasm_plugin
        .until(
            &format!("rule at {}%", from.weight),
            CONFIRM_PATIENCE,
            |p| apps::rule_weight(p, &rollout_key) == Some(f64::from(from.weight)),
        )
        .await?;
    let config = apps::plugin_config(&plugin).context("the WasmPlugin converts to no config")?;
    let keys = Keys::between(&config, &rollout_key, &format!("{NS}/{APP}"), to.weight)?;

    // The gateway must route with this step's weight before the approval, or the time
    // measured would include the previous step's propagation.
    let mut client = http::Client::connect(ctx.sandbox.listener()?).await?;
    let expected: Vec<(&str, &str)> = keys
        .moving
        .iter()
        .map(|k| (k.as_str(), ctx.old))
        .chain([
            (keys.canary_already.as_str(), ctx.new),
            (keys.stays_stable.as_str(), ctx.old),
        ])
        .collect();
    confirm(&mut client, ctx.host, &expected, "before the approval").await?;

    let approved_at = Instant::now();
    let approved_wall = SystemTime::now();
    ctx.sandbox.approve(APP).await?;
    let mut polls = 0u32;
    let served_at = loop {
        let key = &keys.moving[polls as usize % keys.moving.len()];
        polls += 1;
        let reply = client
            .get("/", &[("host", ctx.host), (STICKY_HEADER, key)])
            .await
            .context("polling the gateway")?;
        let text = reply.text();
        ensure!(
            reply.status == 200 && (text == ctx.old || text == ctx.new),
            "the gateway answered {} {text:?} while the weight moved",
            reply.status
        );
        if text == ctx.new {
            break Instant::now();
        }
        if approved_at.elapsed() > PATIENCE {
            bail!(
                "{}% → {}%: no moving user id reached the canary within {PATIENCE:?}",
                from.weight,
                to.weight
            );
        }
        tokio::time::sleep(POLL_GAP).await;
    };
    let served = served_at - approved_at;

    // Every moving id, not only the first, must now reach the canary; the rest stays put.
    let after: Vec<(&str, &str)> = keys
        .moving
        .iter()
        .map(|k| (k.as_str(), ctx.new))
        .chain([(keys.stays_stable.as_str(), ctx.old)])
        .collect();
    confirm(&mut client, ctx.host, &after, "after the approval").await?;

    let since = |at: Option<Instant>| at.map(|at| at.saturating_duration_since(approved_at));
    let status = since(
        ctx.rollout
            .first_after(approved_at, |r| apps::step_index(r) == k as i64 + 1),
    );
    let plugin = since(ctx.wasm_plugin.first_after(approved_at, |p| {
        apps::rule_weight(p, &rollout_key) == Some(f64::from(to.weight))
    }));
    let ecds_file = newest_mtime(&ctx.sandbox.ecds_dir()?)
        .and_then(|mtime| mtime.duration_since(approved_wall).ok());
    Ok(Sample {
        from_weight: from.weight,
        to_weight: to.weight,
        adds_pods: to.replicas > from.replicas,
        served,
        status,
        plugin,
        ecds_file,
    })
}

/// Polls until every `(user id, answer)` pair holds at once, or fails after
/// [`CONFIRM_PATIENCE`].
async fn confirm(
    client: &mut http::Client,
    host: &str,
    expected: &[(&str, &str)],
    when: &str,
) -> Result<()> {
    let start = Instant::now();
    loop {
        let mut wrong = Vec::new();
        for (key, want) in expected {
            let reply = client
                .get("/", &[("host", host), (STICKY_HEADER, key)])
                .await?;
            if reply.status != 200 || reply.text() != *want {
                wrong.push(format!(
                    "{key}: {} {:?} (want {want})",
                    reply.status,
                    reply.text()
                ));
            }
        }
        if wrong.is_empty() {
            return Ok(());
        }
        ensure!(
            start.elapsed() < CONFIRM_PATIENCE,
            "{when}, the gateway routes sticky users against the plugin's own decision: {}",
            wrong.join("; ")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The latest modification time of the files in `dir` (the gateway's ECDS files; they are
/// written to a staging file and renamed into place, so the mtime is the write).
fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok()?.metadata().ok()?.modified().ok())
        .max()
}

/// User ids chosen with the plugin's decision code for one step change.
#[derive(Debug)]
struct Keys {
    /// Stable at the current weight, canary at the next.
    moving: Vec<String>,
    /// Canary at both weights: shows the rule applies before the approval.
    canary_already: String,
    /// Stable at both weights.
    stays_stable: String,
}

impl Keys {
    /// From the plugin's current config (as the gateway hands it to the plugin), and the same
    /// config with `rollout`'s rule at `next_weight`, for requests on route `route`.
    fn between(config: &Value, rollout: &str, route: &str, next_weight: u8) -> Result<Self> {
        let bytes = serde_json::to_vec(config)?;
        let current = PluginConfig::from_json(&bytes)
            .context("the WasmPlugin's config does not parse as the plugin's")?;
        let mut next = current.clone();
        let rule = next
            .rules
            .iter_mut()
            .find(|r| r.rollout == rollout)
            .with_context(|| format!("the WasmPlugin has no rule for {rollout}"))?;
        rule.weight = Weight::from_percent(next_weight).context("a step weight is at most 100%")?;
        let now = Router::new(&current)?;
        let then = Router::new(&next)?;
        let decide = |router: &Router, key: &str| -> Result<Version> {
            let id = router
                .select(RouteKeys {
                    route_name: Some(route),
                    ..RouteKeys::default()
                })
                .with_context(|| format!("no rule applies to route {route}"))?;
            Ok(router.rule(id).decide(&StickyRequest(key), 0).version)
        };
        let (mut moving, mut canary_already, mut stays_stable) = (Vec::new(), None, None);
        for n in 0..1_000_000 {
            let key = format!("user-{n}");
            match (decide(&now, &key)?, decide(&then, &key)?) {
                (Version::Stable, Version::Canary) if moving.len() < MOVING_KEYS => {
                    moving.push(key)
                }
                (Version::Canary, Version::Canary) if canary_already.is_none() => {
                    canary_already = Some(key)
                }
                (Version::Stable, Version::Stable) if stays_stable.is_none() => {
                    stays_stable = Some(key)
                }
                (Version::Canary, Version::Stable) => {
                    bail!("user id {key} would move from the canary back to stable")
                }
                _ => {}
            }
            if moving.len() == MOVING_KEYS && canary_already.is_some() && stays_stable.is_some() {
                break;
            }
        }
        match (canary_already, stays_stable) {
            (Some(canary_already), Some(stays_stable)) if moving.len() == MOVING_KEYS => Ok(Self {
                moving,
                canary_already,
                stays_stable,
            }),
            _ => bail!("no user ids found between the two weights"),
        }
    }
}

/// A request carrying only the sticky header.
struct StickyRequest<'a>(&'a str);

impl Request for StickyRequest<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        (name == STICKY_HEADER).then_some(self.0)
    }

    fn path(&self) -> Option<&str> {
        None
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn steps_go_up_by_ten_and_add_a_pod_every_third() {
        let steps = steps();
        assert_eq!(steps.len(), 9);
        assert_eq!(steps[0].weight, 10);
        assert_eq!(steps[8].weight, 90);
        let pods: Vec<i32> = steps.iter().map(|s| s.replicas).collect();
        assert_eq!(pods, [1, 1, 1, 2, 2, 2, 3, 3, 3]);
        assert!(steps.iter().all(|s| s.replicas < REPLICAS));
    }

    #[test]
    fn moving_keys_are_stable_now_and_canary_next() {
        let config = json!({"_rules_": [{
            "_match_route_": ["default/latency", "default/latency-canary"],
            "rollout": "default/latency",
            "tagValue": "latency",
            "weight": 30,
            "sticky": {"header": STICKY_HEADER},
        }]});
        let keys = Keys::between(&config, "default/latency", "default/latency", 40).unwrap();
        assert_eq!(keys.moving.len(), MOVING_KEYS);
        let router = |weight: u8| {
            let mut c = config.clone();
            c["_rules_"][0]["weight"] = json!(weight);
            Router::from_json(&serde_json::to_vec(&c).unwrap()).unwrap()
        };
        let version = |router: &Router, key: &str| {
            let id = router
                .select(RouteKeys {
                    route_name: Some("default/latency"),
                    ..RouteKeys::default()
                })
                .unwrap();
            router.rule(id).decide(&StickyRequest(key), 0).version
        };
        let (at30, at40) = (router(30), router(40));
        for key in &keys.moving {
            assert_eq!(version(&at30, key), Version::Stable, "{key}");
            assert_eq!(version(&at40, key), Version::Canary, "{key}");
        }
        assert_eq!(version(&at30, &keys.canary_already), Version::Canary);
        assert_eq!(version(&at40, &keys.stays_stable), Version::Stable);
        // Without the sticky setting no id is stable: the bench must refuse.
        let mut unsticky = config.clone();
        unsticky["_rules_"][0]
            .as_object_mut()
            .unwrap()
            .remove("sticky");
        assert!(Keys::between(&unsticky, "default/latency", "default/latency", 40).is_err());
    }
}
