//! The controller's behaviour beyond the seed releases, end to end on the sandbox (the real
//! controller loop in-process with kube's real client, the fake API server, simulated
//! workloads and the real Envoy gateway): timed pauses, step jumps through `nextStepIndex`,
//! `spec.disabled`, invalid input, the `status` command (also `-w`) and `/metrics`.
//!
//! Most Rollouts here are the seed's with a 1 s grace period instead of 3 s, to keep the tests
//! short; the grace period itself is checked in `sandbox_release.rs` and the unit tests.

mod common;

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use anyhow::{ensure, Context as _, Result};
use canary_core::config::RuleConfig;
use common::{
    controller_writes, demo_rollout as rollout, event_reasons, events, expect_cleaned_up,
    expect_order, phase, run_test, stable_pin, status_writes, step_state, Harness, Traffic, NS,
    PATIENCE,
};
use higress_canary::{
    crd::{Rollout, StepState},
    observe::wasm_plugin_api,
    render,
};
use kube::api::{DeleteParams, Patch, PatchParams};
use sandbox::gateway::http;
use serde_json::{json, Value};

const NAME: &str = "rollouts-demo";

/// The seed's canary steps (10% with 1 pod, then 30% with 2 pods, each waiting for approval).
fn seed_steps() -> Value {
    json!([
        {"weight": 10, "replicas": 1, "pause": {}},
        {"weight": 30, "replicas": 2, "pause": {}},
    ])
}

/// `Harness::create_yaml` takes YAML; JSON is YAML.
fn yaml(rollout: &Value) -> String {
    rollout.to_string()
}

async fn patch_spec(h: &Harness, name: &str, spec: Value) -> Result<()> {
    h.rollouts()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "spec": spec })),
        )
        .await?;
    Ok(())
}

/// `kubectl rollout pause|resume deployment/demo`, by hand (not the controller).
async fn pause_deployment_by_hand(h: &Harness, paused: bool) -> Result<()> {
    h.deployments()
        .patch(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"paused": paused}})),
        )
        .await?;
    Ok(())
}

async fn demo_paused(h: &Harness) -> Result<bool> {
    Ok(h.deployments().get("demo").await?.spec.paused == Some(true))
}

/// The controller's writes to one object (`deployments/demo`, ...).
fn writes_to(h: &Harness, object: &str) -> Vec<String> {
    controller_writes(h)
        .into_iter()
        .filter(|w| w.split_whitespace().nth(1) == Some(object))
        .collect()
}

/// The rule the shared WasmPlugin carries for a Rollout (none if the WasmPlugin does not
/// exist).
async fn gateway_rule(h: &Harness, rollout: &str) -> Result<Option<RuleConfig>> {
    let Some(plugin) = wasm_plugin_api(&h.client, &h.settings.plugin)
        .get_opt(&h.settings.plugin.name)
        .await?
    else {
        return Ok(None);
    };
    let config = render::parse_spec(&plugin.data["spec"])?;
    let key = format!("{NS}/{rollout}");
    Ok(config.rules.into_iter().find(|r| r.rollout == key))
}

/// Nothing of a release exists: no canary Deployment, Service or Ingress, the stable Service
/// is not pinned, the gateway has no rule for `rollout`.
async fn expect_no_release_objects(h: &Harness, rollout: &str) -> Result<()> {
    ensure!(
        h.deployments().get_opt("demo-canary").await?.is_none(),
        "canary Deployment exists"
    );
    ensure!(
        h.services().get_opt("demo-canary").await?.is_none(),
        "canary Service exists"
    );
    ensure!(
        h.ingresses().get_opt("demo-canary").await?.is_none(),
        "canary Ingress exists"
    );
    let pin = stable_pin(&h.services().get("demo").await?);
    ensure!(pin.is_none(), "Service demo is pinned to {pin:?}");
    let rule = gateway_rule(h, rollout).await?;
    ensure!(
        rule.is_none(),
        "the gateway has a rule for {rollout}: {rule:?}"
    );
    Ok(())
}

async fn wait_gone(h: &Harness, name: &str) -> Result<()> {
    let start = std::time::Instant::now();
    while h.rollouts().get_opt(name).await?.is_some() {
        ensure!(
            start.elapsed() < PATIENCE,
            "Rollout {name} was never released by the controller"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Waits for a Warning Event `reason` on a Rollout whose note is `note`.
async fn wait_warning(h: &Harness, rollout: &str, reason: &str, note: &str) -> Result<()> {
    let start = std::time::Instant::now();
    loop {
        let all = events(h, rollout).await?;
        if all.iter().any(|e| {
            e.type_.as_deref() == Some("Warning")
                && e.reason.as_deref() == Some(reason)
                && e.note.as_deref() == Some(note)
        }) {
            return Ok(());
        }
        ensure!(
            start.elapsed() < Duration::from_secs(10),
            "no Warning {reason} event saying {note:?} on {rollout}; events: {:?}",
            all.iter()
                .map(|e| (&e.type_, &e.reason, &e.note))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn accepted(r: &Rollout) -> Option<(String, String, String)> {
    r.status
        .as_ref()
        .and_then(|s| s.condition("Accepted"))
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn message(r: &Rollout) -> String {
    r.status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_default()
}

// === timed pauses and step jumps ===

#[test]
fn a_timed_pause_advances_by_itself_after_its_duration_and_not_before() -> Result<()> {
    const PAUSE_SECONDS: i64 = 3;
    run_test(|| async {
        let timed = rollout(
            NAME,
            json!([
                {"weight": 10, "replicas": 1, "pause": {"duration": PAUSE_SECONDS}},
                {"weight": 30, "replicas": 2, "pause": {}},
            ]),
        );
        let mut h = Harness::with_rollout(&yaml(&timed), NAME).await?;
        h.set_image("v2").await?;
        let paused = h.wait_paused_at(NAME, 1).await?;
        ensure!(
            message(&paused).contains(&format!("paused for {PAUSE_SECONDS}s")),
            "message while paused: {:?}",
            message(&paused)
        );
        // Nobody approves: step 2 comes by itself, and its 30% reach the gateway.
        h.wait_paused_at(NAME, 2).await?;
        h.expect_share(2000, 0.30).await?;

        // By the status the controller wrote: step 1 left StepPaused no earlier than
        // `lastUpdateTime + duration` of its StepPaused.
        let writes = status_writes(&h, NAME)?;
        let paused_at = writes
            .iter()
            .position(|w| (w.step, w.state) == (1, StepState::StepPaused))
            .context("no status write of step 1 StepPaused")?;
        let since = writes[paused_at]
            .last_update_time
            .context("StepPaused without lastUpdateTime")?;
        let left = writes[paused_at..]
            .iter()
            .find(|w| (w.step, w.state) != (1, StepState::StepPaused))
            .context("no status write after step 1's pause")?;
        let left_at = left
            .last_update_time
            .context("a status write without lastUpdateTime")?;
        let paused_for = left_at.duration_since(since);
        ensure!(
            paused_for >= jiff::SignedDuration::from_secs(PAUSE_SECONDS),
            "step 1 left its {PAUSE_SECONDS}s pause after {paused_for:?} ({left:?}); writes: \
             {writes:?}"
        );
        // Only step 2 asked for approval.
        let asked = event_reasons(&h, NAME)
            .await?
            .into_iter()
            .filter(|(_, r)| r == "StepPaused")
            .count();
        ensure!(asked == 1, "{asked} StepPaused events, expected 1 (step 2)");
        h.stop_controller().await?;
        Ok(())
    })
}

#[test]
fn patching_next_step_index_as_kubectl_kruise_users_do_jumps_from_step_1_to_step_3() -> Result<()> {
    run_test(|| async {
        let three = rollout(
            NAME,
            json!([
                {"weight": 10, "replicas": 1, "pause": {}},
                {"weight": 30, "replicas": 2, "pause": {}},
                {"weight": 60, "replicas": 3, "pause": {}},
            ]),
        );
        let (mut h, r) = Harness::released_to_step_1(&yaml(&three), NAME).await?;
        ensure!(
            r.canary_status().map(|c| c.next_step_index) == Some(2),
            "nextStepIndex at step 1: {:?}",
            r.canary_status().map(|c| c.next_step_index)
        );

        let jump = json!({"status": {"canaryStatus": {"nextStepIndex": 3, "currentStepState": "StepReady"}}});
        h.rollouts()
            .patch_status(NAME, &PatchParams::default(), &Patch::Merge(&jump))
            .await?;
        let r = h.wait_paused_at(NAME, 3).await?;
        ensure!(r.canary_status().map(|c| c.next_step_index) == Some(-1));
        ensure!(
            h.pods("demo-canary").await? == (3, 3),
            "step 3 wants 3 canary pods"
        );
        h.expect_share(2000, 0.60).await?;
        let steps: Vec<i32> = status_writes(&h, NAME)?.iter().map(|w| w.step).collect();
        ensure!(
            !steps.contains(&2),
            "step 2 ran: status writes of steps {steps:?}"
        );
        let reasons = event_reasons(&h, NAME).await?;
        ensure!(
            reasons.iter().any(|(_, r)| r == "StepJumped"),
            "no StepJumped event: {reasons:?}"
        );

        // The last step approved as kubectl-kruise does: the release completes.
        h.approve_like_kruise(NAME).await?;
        h.wait_finished(NAME, "True").await?;
        h.until_all(&[], "v2").await?;
        expect_cleaned_up(&h).await?;
        h.stop_controller().await?;
        Ok(())
    })
}

// === spec.disabled ===

#[test]
fn a_disabled_rollout_leaves_the_deployment_alone_and_disabling_mid_release_hands_it_back(
) -> Result<()> {
    run_test(|| async {
        let mut h = Harness::start().await?;
        h.start_controller();
        h.wait_ready().await?;

        // A Rollout created disabled does nothing, not even undo a pause made by hand
        // (Kruise: phase Disabled at once, the workload untouched).
        pause_deployment_by_hand(&h, true).await?;
        let mut disabled = rollout(NAME, seed_steps());
        disabled["spec"]["disabled"] = json!(true);
        h.create_yaml(&yaml(&disabled)).await?;
        let r = h
            .wait_rollout(NAME, "phase Disabled", |r| phase(r) == "Disabled")
            .await?;
        ensure!(
            r.canary_status().is_none(),
            "a disabled Rollout has a release"
        );
        ensure!(
            demo_paused(&h).await?,
            "the disabled Rollout unpaused Deployment demo"
        );
        let touched = writes_to(&h, "deployments/demo");
        ensure!(touched.is_empty(), "the disabled Rollout wrote {touched:?}");
        // Resumed by hand, the Deployment rolls natively to a new template.
        pause_deployment_by_hand(&h, false).await?;
        h.set_image("v2").await?;
        h.until_all(&[], "v2").await?;
        expect_no_release_objects(&h, NAME).await?;
        ensure!(phase(&h.rollouts().get(NAME).await?) == "Disabled");
        ensure!(writes_to(&h, "deployments/demo").is_empty());

        // Enabled: it takes control (pauses demo) and releases the next template.
        patch_spec(&h, NAME, json!({"disabled": false})).await?;
        h.wait_rollout(NAME, "phase Healthy", |r| phase(r) == "Healthy")
            .await?;
        ensure!(demo_paused(&h).await?, "enabled, demo is not paused");
        h.set_image("v3").await?;
        h.wait_paused_at(NAME, 1).await?;
        h.expect_split("v2", "v3", 2000, 0.10).await?;

        // Disabled mid-release (Kruise: Disabling, finalise, Disabled): traffic to stable
        // first, the canary goes, the Deployment is handed back and rolls natively.
        let before = controller_writes(&h).len();
        let traffic = Traffic::start(h.gateway(), 2);
        patch_spec(&h, NAME, json!({"disabled": true})).await?;
        h.until_all(&[], "v2").await?;
        let r = h
            .wait_rollout(NAME, "phase Disabled", |r| phase(r) == "Disabled")
            .await?;
        ensure!(r.canary_status().is_none(), "the release is still recorded");
        ensure!(!demo_paused(&h).await?, "demo is still paused");
        h.until_all(&[], "v3").await?;
        expect_no_release_objects(&h, NAME).await?;
        let report = traffic.stop().await;
        ensure!(
            report.failures.is_empty(),
            "{} of {} requests failed: {:?}",
            report.failures.len(),
            report.total,
            &report.failures[..report.failures.len().min(10)]
        );
        expect_order(
            &controller_writes(&h)[before..],
            &[
                "patch wasmplugins/higress-canary",
                "delete deployments/demo-canary",
                "patch services/demo -pin",
                "patch deployments/demo -paused",
            ],
        )?;
        let reasons = event_reasons(&h, NAME).await?;
        ensure!(
            reasons.iter().any(|(_, r)| r == "RolloutDisabled"),
            "no RolloutDisabled event: {reasons:?}"
        );
        h.stop_controller().await?;
        Ok(())
    })
}

// === invalid input ===

struct InvalidCase {
    what: &'static str,
    edit: fn(&mut Value),
    reason: &'static str,
    /// Part of the message, saying what to fix.
    says: &'static str,
}

const INVALID: &[InvalidCase] = &[
    InvalidCase {
        what: "missing Deployment",
        edit: |r| r["spec"]["objectRef"]["workloadRef"]["name"] = json!("nope"),
        reason: "WorkloadNotFound",
        says: "Deployment nope not found in namespace default; create it or fix \
               spec.objectRef.workloadRef.name",
    },
    InvalidCase {
        what: "missing Service",
        edit: |r| r["spec"]["strategy"]["canary"]["trafficRoutings"][0]["service"] = json!("nope"),
        reason: "ServiceNotFound",
        says: "Service nope not found in namespace default; create it or fix",
    },
    InvalidCase {
        what: "missing Ingress",
        edit: |r| {
            r["spec"]["strategy"]["canary"]["trafficRoutings"][0]["ingress"]["name"] = json!("nope")
        },
        reason: "IngressNotFound",
        says: "Ingress nope not found in namespace default; create it or fix",
    },
    InvalidCase {
        what: "decreasing replicas",
        edit: |r| {
            r["spec"]["strategy"]["canary"]["steps"][0]["replicas"] = json!(3);
        },
        reason: "InvalidSpec",
        says: "steps[1].replicas (2) is less than steps[0].replicas (3); the canary may only grow",
    },
    InvalidCase {
        what: "weight over 100",
        edit: |r| r["spec"]["strategy"]["canary"]["steps"][1]["weight"] = json!(130),
        reason: "InvalidSpec",
        says: "steps[1].weight must be between 0 and 100, got 130",
    },
    InvalidCase {
        what: "bad regex",
        edit: |r| {
            r["spec"]["strategy"]["canary"]["steps"][0]["matches"] = json!([
                {"headers": [{"name": "user-agent", "type": "RegularExpression", "value": "(android"}]}
            ])
        },
        reason: "InvalidSpec",
        says: "invalid regular expression",
    },
];

#[test]
fn invalid_input_changes_nothing_and_says_what_to_fix() -> Result<()> {
    run_test(|| async {
        let mut h = Harness::start().await?;
        h.start_controller();
        h.wait_ready().await?;

        // Created invalid: reported, and the app is left as it is.
        for (i, case) in INVALID.iter().enumerate() {
            let name = format!("invalid-{i}");
            let mut bad = rollout(&name, seed_steps());
            (case.edit)(&mut bad);
            h.create_yaml(&yaml(&bad)).await?;
            let r = h
                .wait_rollout(&name, "Accepted=False", |r| {
                    accepted(r).is_some_and(|(status, _, _)| status == "False")
                })
                .await
                .with_context(|| case.what)?;
            let (_, reason, said) = accepted(&r).context("Accepted")?;
            ensure!(
                reason == case.reason && said.contains(case.says),
                "{}: Accepted=False {reason}: {said:?}; expected {} saying {:?}",
                case.what,
                case.reason,
                case.says
            );
            ensure!(
                message(&r) == said,
                "{}: status message {:?}",
                case.what,
                message(&r)
            );
            ensure!(phase(&r) == "Initial", "{}: phase {}", case.what, phase(&r));
            wait_warning(&h, &name, "InvalidRollout", &said)
                .await
                .with_context(|| case.what)?;
            ensure!(!demo_paused(&h).await?, "{}: demo was paused", case.what);
            expect_no_release_objects(&h, &name)
                .await
                .with_context(|| case.what)?;
            h.rollouts().delete(&name, &DeleteParams::default()).await?;
            wait_gone(&h, &name).await.with_context(|| case.what)?;
        }
        ensure!(!demo_paused(&h).await?, "demo was paused");
        for object in ["deployments/demo", "services/demo", "ingresses/demo"] {
            let touched = writes_to(&h, object);
            ensure!(touched.is_empty(), "invalid Rollouts wrote {touched:?}");
        }
        h.until_all(&[], "v1").await?;

        // A second Rollout for a Deployment already released by one: reported; it stays out
        // of the release, also when deleted.
        h.adopt(&yaml(&rollout(NAME, seed_steps())), NAME).await?;
        h.set_image("v2").await?;
        h.wait_paused_at(NAME, 1).await?;
        h.create_yaml(&yaml(&rollout("second", seed_steps())))
            .await?;
        let r = h
            .wait_rollout("second", "Accepted=False", |r| {
                accepted(r).is_some_and(|(status, _, _)| status == "False")
            })
            .await?;
        let (_, reason, said) = accepted(&r).context("Accepted")?;
        ensure!(
            reason == "WorkloadConflict"
                && said.contains(&format!("already released by Rollout {NAME}"))
                && said.contains("delete one of them"),
            "Accepted=False {reason}: {said:?}"
        );
        wait_warning(&h, "second", "InvalidRollout", &said).await?;
        h.rollouts()
            .delete("second", &DeleteParams::default())
            .await?;
        wait_gone(&h, "second").await?;
        ensure!(
            demo_paused(&h).await?,
            "deleting the second Rollout unpaused demo"
        );
        ensure!(
            step_state(&h.rollouts().get(NAME).await?) == Some((1, StepState::StepPaused)),
            "the release moved"
        );
        h.expect_share(2000, 0.10).await?;

        // Made invalid mid-release (and approved): nothing moves until it is fixed.
        patch_spec(
            &h,
            NAME,
            json!({"strategy": {"canary": {"steps": [
                {"weight": 10, "replicas": 1, "pause": {}},
                {"weight": 130, "replicas": 2, "pause": {}},
            ]}}}),
        )
        .await?;
        h.approve_like_kruise(NAME).await?;
        let r = h
            .wait_rollout(NAME, "Accepted=False", |r| {
                accepted(r).is_some_and(|(status, _, _)| status == "False")
            })
            .await?;
        let (_, _, said) = accepted(&r).context("Accepted")?;
        ensure!(
            said.contains("steps[1].weight must be between 0 and 100, got 130"),
            "{said:?}"
        );
        wait_warning(&h, NAME, "InvalidRollout", &said).await?;
        ensure!(
            step_state(&r) == Some((1, StepState::StepReady)),
            "{:?}",
            step_state(&r)
        );
        ensure!(
            h.pods("demo-canary").await? == (1, 1),
            "the canary was scaled"
        );
        h.expect_share(2000, 0.10).await?;
        ensure!(
            status_writes(&h, NAME)?.iter().all(|w| w.step == 1),
            "a step 2 status was written"
        );
        patch_spec(
            &h,
            NAME,
            json!({"strategy": {"canary": {"steps": seed_steps()}}}),
        )
        .await?;
        h.wait_paused_at(NAME, 2).await?;
        h.expect_share(2000, 0.30).await?;

        // The first Rollout deleted mid-release hands the Deployment back; the second one,
        // no longer in conflict, takes control of it.
        h.create_yaml(&yaml(&rollout("second", seed_steps())))
            .await?;
        h.wait_rollout("second", "Accepted=False", |r| {
            accepted(r).is_some_and(|(status, _, _)| status == "False")
        })
        .await?;
        h.rollouts().delete(NAME, &DeleteParams::default()).await?;
        wait_gone(&h, NAME).await?;
        h.wait_rollout("second", "phase Healthy", |r| phase(r) == "Healthy")
            .await?;
        ensure!(
            demo_paused(&h).await?,
            "the second Rollout did not take control"
        );
        h.until_all(&[], "v2").await?;
        h.stop_controller().await?;
        Ok(())
    })
}

// === the status command and /metrics ===

/// The cells of the table rows of `name` in `status` output, in order.
fn status_rows(output: &str, name: &str) -> Vec<Vec<String>> {
    output
        .lines()
        .filter(|l| l.split_whitespace().next() == Some(name))
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

/// `/metrics` as series → value.
async fn scrape(addr: SocketAddr) -> Result<BTreeMap<String, f64>> {
    let reply = http::get(addr, "/metrics", &[]).await?;
    ensure!(reply.status == 200, "/metrics answered {}", reply.status);
    let mut series = BTreeMap::new();
    for line in reply.text().lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = line.rsplit_once(' ').context("a sample line")?;
        series.insert(name.to_owned(), value.parse::<f64>()?);
    }
    Ok(series)
}

/// Scrapes until `pred` holds (the gauges follow each reconcile's end).
async fn scrape_until(
    addr: SocketAddr,
    what: &str,
    pred: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> Result<BTreeMap<String, f64>> {
    let start = std::time::Instant::now();
    loop {
        let series = scrape(addr).await?;
        if pred(&series) {
            return Ok(series);
        }
        ensure!(
            start.elapsed() < Duration::from_secs(10),
            "/metrics never showed {what}: {series:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn status_follows_the_release_live_and_metrics_and_health_report_it() -> Result<()> {
    run_test(|| async {
        let mut h = Harness::start().await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(higress_canary::metrics::serve(
            listener,
            h.metrics.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        // /healthz answers while the process runs; /readyz once the controller's cache synced.
        let start = std::time::Instant::now();
        loop {
            match http::get(addr, "/healthz", &[]).await {
                Ok(r) if r.status == 200 => break,
                other => ensure!(
                    start.elapsed() < Duration::from_secs(10),
                    "/healthz: {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let readyz = http::get(addr, "/readyz", &[]).await?;
        ensure!(
            readyz.status == 503,
            "/readyz before the controller ran: {}",
            readyz.status
        );
        h.start_controller();
        h.wait_ready().await?;
        let readyz = http::get(addr, "/readyz", &[]).await?;
        ensure!(
            readyz.status == 200,
            "/readyz of a synced controller: {}",
            readyz.status
        );

        h.adopt(&yaml(&rollout(NAME, seed_steps())), NAME).await?;
        h.set_image("v2").await?;
        h.wait_paused_at(NAME, 1).await?;

        // `status`: the columns.
        let out = h.cli(&["status", NAME]).await?;
        let table = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let header: Vec<&str> = table
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        ensure!(
            header == ["NAME", "PHASE", "STEP", "STATE", "WEIGHT", "MATCHES", "CANARY", "STABLE"],
            "header {header:?}:\n{table}"
        );
        let rows = status_rows(&table, NAME);
        ensure!(
            rows == [[
                NAME,
                "Progressing",
                "1/2",
                "StepPaused",
                "10%",
                "-",
                "1/1",
                "5/5"
            ]],
            "rows {rows:?}:\n{table}"
        );

        let key = format!("{NS}/{NAME}");
        let progressing =
            format!("higress_canary_rollout_phase{{rollout=\"{key}\",phase=\"Progressing\"}}");
        let step = format!("higress_canary_rollout_step{{rollout=\"{key}\"}}");
        let weight = format!("higress_canary_rollout_weight_percent{{rollout=\"{key}\"}}");
        let at_step = |n: f64, w: f64| {
            let (progressing, step, weight) = (progressing.clone(), step.clone(), weight.clone());
            move |s: &BTreeMap<String, f64>| {
                s.get(&progressing) == Some(&1.0)
                    && s.get(&step) == Some(&n)
                    && s.get(&weight) == Some(&w)
            }
        };
        let series = scrape_until(addr, "step 1 at 10%", at_step(1.0, 10.0)).await?;
        let reconciles = series
            .get("higress_canary_reconciles_total")
            .copied()
            .unwrap_or(0.0);
        ensure!(reconciles >= 1.0, "{reconciles} reconciles counted");
        ensure!(
            series.get("higress_canary_reconcile_duration_seconds_count") >= Some(&reconciles),
            "reconcile durations: {series:#?}"
        );

        // `status -w` follows: approving shows step 2 without running it again.
        let watch = h.spawn_cli(&["status", NAME, "-w"])?;
        watch
            .wait_output(
                "step 1 waiting for approval",
                Duration::from_secs(10),
                |o| {
                    status_rows(o, NAME)
                        .iter()
                        .any(|r| r[2] == "1/2" && r[3] == "StepPaused")
                },
            )
            .await?;
        let approve = h.cli(&["approve", NAME]).await?;
        ensure!(
            approve.status.success(),
            "approve failed: {}",
            String::from_utf8_lossy(&approve.stderr)
        );
        watch
            .wait_output("step 2 waiting for approval", PATIENCE, |o| {
                status_rows(o, NAME)
                    .iter()
                    .any(|r| r[2] == "2/2" && r[3] == "StepPaused" && r[4] == "30%")
            })
            .await?;
        let output = watch.kill().await?;
        let first = status_rows(&output, NAME)
            .first()
            .map(|r| (r[2].clone(), r[3].clone()));
        ensure!(
            first == Some(("1/2".to_owned(), "StepPaused".to_owned())),
            "status -w began with {first:?}:\n{output}"
        );

        let series = scrape_until(addr, "step 2 at 30%", at_step(2.0, 30.0)).await?;
        ensure!(
            series.get("higress_canary_reconciles_total") > Some(&reconciles),
            "the reconcile counter did not grow"
        );
        let _ = stop_server.send(());
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .context("the metrics server did not stop")???;
        h.stop_controller().await?;
        Ok(())
    })
}
