//! The controller end to end on the sandbox: the real controller loop (`higress_canary::run`,
//! in-process, kube's real client) against the fake API server, the simulated workloads and the
//! real Envoy gateway running the repository's plugin. The seed scenarios are used unchanged;
//! traffic shares are measured at the gateway.
//!
//! The tests run one at a time (each starts an Envoy); a release of the seed app takes
//! ~30 s because of the default 3 s grace period after every routing change.

mod common;

use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use common::{
    controller_writes, event_reasons, expect_cleaned_up, expect_order, phase, run_test, scenario,
    stable_pin, step_state, Harness, Traffic, NS,
};
use higress_canary::{crd::StepState, keys::ABORT_ANNOTATION, observe::wasm_plugin_api};
use kube::api::ListParams;

const CANARY: &str = "rollouts-demo";
const AB: &str = "rollouts-header";

#[test]
fn seed_canary_release_10_then_30_percent_then_full_with_no_failed_request() -> Result<()> {
    run_test(|| async {
        let start = Instant::now();
        let mut h = Harness::with_rollout(&scenario("rollout-canary.yaml"), CANARY).await?;
        let traffic = Traffic::start(h.gateway(), 2);

        h.set_image("v2").await?;
        let r = h.wait_paused_at(CANARY, 1).await?;
        eprintln!("[{:?}] step 1 waiting for approval", start.elapsed());
        ensure!(
            h.pods("demo-canary").await? == (1, 1),
            "step 1 wants 1 canary pod"
        );
        ensure!(
            h.pods("demo").await? == (5, 5),
            "the stable Deployment keeps its 5 pods"
        );
        let rule = r.plugin_rule().context("step 1 has a plugin rule")?;
        ensure!(
            rule.weight.percent() == 10.0,
            "step 1 rule weight {}",
            rule.weight
        );
        let stable_hash = r
            .canary_status()
            .and_then(|c| c.stable_revision.clone())
            .context("stable revision")?;
        ensure!(stable_pin(&h.services().get("demo").await?) == Some(stable_hash));
        h.expect_share(2000, 0.10).await?;

        h.approve_like_kruise(CANARY).await?;
        h.wait_paused_at(CANARY, 2).await?;
        eprintln!("[{:?}] step 2 waiting for approval", start.elapsed());
        ensure!(
            h.pods("demo-canary").await? == (2, 2),
            "step 2 wants 2 canary pods"
        );
        h.expect_share(2000, 0.30).await?;

        let promoted = Instant::now();
        h.approve_like_kruise(CANARY).await?;
        let r = h.wait_finished(CANARY, "True").await?;
        eprintln!("[{:?}] release completed", start.elapsed());
        ensure!(r.canary_status().map(|c| c.current_step_state) == Some(StepState::Completed));
        h.until_all(&[], "v2").await?;
        expect_cleaned_up(&h).await?;
        ensure!(h.pods("demo").await? == (5, 5));

        let report = traffic.stop().await;
        for (t, a) in &report.answers {
            if let Err(e) = a {
                eprintln!("failure at {:?}: {e}", t.duration_since(start));
            }
        }
        ensure!(
            report.failures.is_empty(),
            "{} of {} requests failed during the release: {:?}",
            report.failures.len(),
            report.total,
            &report.failures[..report.failures.len().min(10)]
        );
        // During promotion the old version's share never rises above the 70% of step 2
        // (checked per window of 200 answers, with a 99.9% binomial margin).
        let after: Vec<bool> = report
            .answers
            .iter()
            .filter(|(t, _)| *t >= promoted)
            .map(|(_, a)| a.as_deref() == Ok("v1"))
            .collect();
        let margin = 3.29 * (0.7f64 * 0.3 / 200.0).sqrt();
        for (i, window) in after.chunks(200).filter(|w| w.len() == 200).enumerate() {
            let v1 = window.iter().filter(|v| **v).count() as f64 / 200.0;
            ensure!(
                v1 <= 0.7 + margin,
                "old version share {v1:.2} in promotion window {i} rose above step 2's 70%"
            );
        }
        eprintln!(
            "traffic during the release: {:?}, {} connections closed by the gateway",
            report.by_version, report.connection_closes
        );

        // The documented orders, as the API server saw them: a step pins the stable Service
        // before canary pods exist and routes last; promotion unpins, rolls the Deployment,
        // only then takes the rule away, deletes the canary and pauses again.
        let writes = controller_writes(&h);
        expect_order(
            &writes,
            &[
                "patch rollouts/rollouts-demo",
                "patch deployments/demo +paused",
                "patch services/demo +pin",
                "patch deployments/demo-canary",
                "patch services/demo-canary",
                "patch ingresses/demo-canary",
                "create wasmplugins/",
                "update rollouts/rollouts-demo/status",
                "patch services/demo -pin",
                "patch deployments/demo -paused",
                "patch wasmplugins/higress-canary",
                "delete deployments/demo-canary",
                "delete services/demo-canary",
                "patch deployments/demo +paused",
            ],
        )?;
        // Status writes are conditional (resourceVersion), never forced applies.
        for r in h.cluster.api.requests().iter().filter(|r| {
            r.subresource == "status"
                && r.resource == "rollouts"
                && r.param("fieldManager") == Some("higress-canary")
        }) {
            ensure!(r.verb == "update", "status written with {}", r.verb);
            let body: serde_json::Value = serde_json::from_str(&r.body)?;
            ensure!(
                body["metadata"]["resourceVersion"].is_string(),
                "status write without resourceVersion"
            );
        }

        let reasons = event_reasons(&h, CANARY).await?;
        for want in [
            "WorkloadAdopted",
            "ReleaseStarted",
            "StepPaused",
            "Promoting",
            "RolloutSucceeded",
        ] {
            ensure!(
                reasons.iter().any(|(_, r)| r == want),
                "no {want} event; events: {reasons:?}"
            );
        }
        ensure!(h.metrics.reconciles() > 0);
        h.stop_controller().await?;
        Ok(())
    })
}

#[test]
fn ab_release_sends_only_android_to_v2_and_the_cli_approves_it() -> Result<()> {
    run_test(|| async {
        let (mut h, _) = Harness::released_to_step_1(&scenario("rollout-ab.yaml"), AB).await?;
        h.cluster.gateway.synced().await?;
        let android = h.sample(200, &[("user-agent", "android")]).await?;
        ensure!(
            android.keys().eq(["v2"]),
            "android requests reached {android:?}"
        );
        let others = h.sample(500, &[("user-agent", "iphone")]).await?;
        ensure!(
            others.keys().eq(["v1"]),
            "other requests reached {others:?}"
        );
        let plain = h.sample(500, &[]).await?;
        ensure!(
            plain.keys().eq(["v1"]),
            "requests without user-agent reached {plain:?}"
        );

        let status = h.cli(&["status", AB]).await?;
        let table = String::from_utf8_lossy(&status.stdout);
        ensure!(
            status.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        for want in [
            "Progressing",
            "1/1",
            "StepPaused",
            "user-agent=android",
            "5/5",
        ] {
            ensure!(table.contains(want), "status lacks {want:?}:\n{table}");
        }

        let approve = h.cli(&["approve", &format!("rollout/{AB}")]).await?;
        ensure!(
            approve.status.success(),
            "approve failed: {}",
            String::from_utf8_lossy(&approve.stderr)
        );
        // Approving again is refused with a clear error: nothing waits for approval.
        h.wait_rollout(AB, "leaving StepPaused", |r| {
            step_state(r) != Some((1, StepState::StepPaused))
        })
        .await?;
        let again = h.cli(&["approve", AB]).await?;
        ensure!(!again.status.success(), "a second approve succeeded");
        let stderr = String::from_utf8_lossy(&again.stderr);
        ensure!(
            stderr.contains("not waiting for approval") || stderr.contains("no release"),
            "{stderr}"
        );

        h.wait_finished(AB, "True").await?;
        h.until_all(&[], "v2").await?;
        h.until_all(&[("user-agent", "android")], "v2").await?;
        expect_cleaned_up(&h).await?;

        let missing = h.cli(&["approve", "nope"]).await?;
        ensure!(!missing.status.success());
        ensure!(String::from_utf8_lossy(&missing.stderr).contains("not found"));
        h.stop_controller().await?;
        Ok(())
    })
}

#[test]
fn abort_sends_all_traffic_to_stable_at_once_then_removes_the_canary() -> Result<()> {
    run_test(|| async {
        let (mut h, _) =
            Harness::released_to_step_1(&scenario("rollout-canary.yaml"), CANARY).await?;
        h.expect_share(2000, 0.10).await?;

        let traffic = Traffic::start(h.gateway(), 2);
        let aborted = Instant::now();
        let out = h.cli(&["abort", CANARY]).await?;
        ensure!(
            out.status.success(),
            "abort failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        h.until_all(&[], "v1").await?;
        let took = aborted.elapsed();
        eprintln!("all traffic on v1 {took:?} after abort");
        ensure!(
            took < Duration::from_secs(3),
            "traffic took {took:?} to go back to stable"
        );
        // Routing went first: the canary pods were still there when traffic was all v1.
        let r = h.wait_finished(CANARY, "False").await?;
        ensure!(r
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(ABORT_ANNOTATION)));
        expect_cleaned_up(&h).await?;
        let report = traffic.stop().await;
        for (t, a) in &report.answers {
            if let Err(e) = a {
                eprintln!("failure at {:?}: {e}", t.duration_since(aborted));
            }
        }
        ensure!(
            report.failures.is_empty(),
            "failed requests: {:?}",
            report.failures
        );
        let reasons = event_reasons(&h, CANARY).await?;
        ensure!(
            reasons
                .iter()
                .any(|(t, r)| t == "Warning" && r == "RolloutAborted"),
            "no Warning RolloutAborted event: {reasons:?}"
        );
        ensure!(reasons
            .iter()
            .any(|(t, r)| t == "Warning" && r == "RolloutCancelled"));
        // Traffic to stable first (the rule goes), then the canary goes, then the pin.
        expect_order(
            &controller_writes(&h),
            &[
                "create wasmplugins/",
                "patch wasmplugins/higress-canary",
                "delete deployments/demo-canary",
                "delete ingresses/demo-canary",
                "patch services/demo -pin",
                "delete services/demo-canary",
            ],
        )?;

        // The aborted template stays in the Deployment but is not released again; `undo`
        // reverts it and the Rollout is healthy.
        let out = h.cli(&["undo", CANARY]).await?;
        ensure!(
            out.status.success(),
            "undo failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        h.wait_rollout(CANARY, "healthy message", |r| {
            r.status.as_ref().and_then(|s| s.message.as_deref()) == Some("Rollout is healthy")
        })
        .await?;
        ensure!(phase(&h.rollouts().get(CANARY).await?) == "Healthy");
        h.until_all(&[], "v1").await?;
        h.stop_controller().await?;
        Ok(())
    })
}

#[test]
fn reverting_the_template_mid_release_rolls_back_to_stable() -> Result<()> {
    run_test(|| async {
        let (mut h, _) =
            Harness::released_to_step_1(&scenario("rollout-canary.yaml"), CANARY).await?;
        h.approve_like_kruise(CANARY).await?;
        h.wait_paused_at(CANARY, 2).await?;
        h.expect_share(2000, 0.30).await?;

        let traffic = Traffic::start(h.gateway(), 2);
        // `higress-canary undo` puts the stable ReplicaSet's template back, as
        // `kubectl-kruise rollout undo` does during a canary.
        let out = h.cli(&["undo", CANARY, "-n", NS]).await?;
        ensure!(
            out.status.success(),
            "undo failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let reverted = Instant::now();
        h.until_all(&[], "v1").await?;
        eprintln!("all traffic on v1 {:?} after undo", reverted.elapsed());
        let r = h.wait_finished(CANARY, "False").await?;
        ensure!(
            r.status.as_ref().and_then(|s| s.message.as_deref()) == Some("Rollout is healthy")
                || r.status
                    .as_ref()
                    .and_then(|s| s.message.as_deref())
                    .is_some_and(|m| m.contains("cancelled")),
            "unexpected message {:?}",
            r.status.as_ref().and_then(|s| s.message.clone())
        );
        expect_cleaned_up(&h).await?;
        h.until_all(&[], "v1").await?;
        let report = traffic.stop().await;
        ensure!(
            report.failures.is_empty(),
            "failed requests: {:?}",
            report.failures
        );
        let reasons = event_reasons(&h, CANARY).await?;
        ensure!(
            reasons
                .iter()
                .any(|(t, r)| t == "Warning" && r == "RollbackDetected"),
            "no Warning RollbackDetected event: {reasons:?}"
        );
        // The next template change is a new release from step 1.
        h.set_image("v3").await?;
        h.wait_paused_at(CANARY, 1).await?;
        let counts = h.sample(1000, &[]).await?;
        ensure!(
            counts.keys().all(|v| v == "v1" || v == "v3"),
            "unexpected versions {counts:?}"
        );
        h.stop_controller().await?;
        Ok(())
    })
}

#[test]
fn pause_holds_the_release_where_it_is_and_resume_continues_it() -> Result<()> {
    run_test(|| async {
        let mut h = Harness::with_rollout(&scenario("rollout-canary.yaml"), CANARY).await?;
        let out = h.cli(&["pause", CANARY]).await?;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        h.set_image("v2").await?;
        let r = h
            .wait_rollout(CANARY, "Progressing reason Paused", |r| {
                r.status
                    .as_ref()
                    .and_then(|s| s.condition("Progressing"))
                    .is_some_and(|c| c.reason == "Paused")
            })
            .await?;
        let held = step_state(&r);
        tokio::time::sleep(Duration::from_secs(4)).await;
        let r = h.rollouts().get(CANARY).await?;
        ensure!(
            step_state(&r) == held,
            "the paused release moved from {held:?} to {:?}",
            step_state(&r)
        );
        ensure!(
            h.pods("demo-canary").await?.1 == 0,
            "a paused release created canary pods"
        );
        h.until_all(&[], "v1").await?;

        let out = h.cli(&["resume", CANARY]).await?;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        h.wait_paused_at(CANARY, 1).await?;
        h.expect_share(2000, 0.10).await?;

        // Paused at a step: approving changes the state, but nothing moves until resumed.
        let out = h.cli(&["pause", CANARY]).await?;
        ensure!(out.status.success());
        h.approve_like_kruise(CANARY).await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let r = h.rollouts().get(CANARY).await?;
        ensure!(
            step_state(&r) == Some((1, StepState::StepReady)),
            "moved while paused: {:?}",
            step_state(&r)
        );
        h.expect_share(1000, 0.10).await?;
        let out = h.cli(&["resume", CANARY]).await?;
        ensure!(out.status.success());
        h.wait_paused_at(CANARY, 2).await?;
        h.expect_share(2000, 0.30).await?;
        h.stop_controller().await?;
        Ok(())
    })
}

#[test]
fn a_controller_killed_in_every_step_state_converges_after_restart() -> Result<()> {
    run_test(|| async {
        let mut h = Harness::with_rollout(&scenario("rollout-canary.yaml"), CANARY).await?;
        let traffic = Traffic::start(h.gateway(), 2);
        h.set_image("v2").await?;

        // Kill the controller as soon as each state shows up, start it again, go on.
        let mut kills = Vec::new();
        for (step, state) in [
            (1, StepState::StepUpgrade),
            (1, StepState::StepTrafficRouting),
            (1, StepState::StepPaused),
        ] {
            h.wait_rollout(CANARY, &format!("{state:?} at step {step}"), |r| {
                step_state(r) == Some((step, state))
            })
            .await?;
            h.kill_controller().await;
            kills.push(format!("{state:?}@{step}"));
            tokio::time::sleep(Duration::from_millis(300)).await;
            h.start_controller();
        }
        h.wait_paused_at(CANARY, 1).await?;
        h.expect_share(2000, 0.10).await?;
        let canaries = h
            .deployments()
            .list(&ListParams::default().labels("rollouts.kruise.io/canary-deployment=demo"))
            .await?;
        ensure!(
            canaries.items.len() == 1,
            "{} canary Deployments",
            canaries.items.len()
        );

        h.approve_like_kruise(CANARY).await?;
        h.wait_rollout(CANARY, "StepTrafficRouting at step 2", |r| {
            step_state(r) == Some((2, StepState::StepTrafficRouting))
        })
        .await?;
        h.kill_controller().await;
        kills.push("StepTrafficRouting@2".into());
        h.start_controller();
        h.wait_paused_at(CANARY, 2).await?;
        h.expect_share(2000, 0.30).await?;

        h.approve_like_kruise(CANARY).await?;
        h.wait_rollout(CANARY, "promotion", |r| {
            step_state(r).is_some_and(|(_, s)| s == StepState::Completed)
        })
        .await?;
        h.kill_controller().await;
        kills.push("Completed".into());
        tokio::time::sleep(Duration::from_millis(300)).await;
        h.start_controller();
        h.wait_finished(CANARY, "True").await?;
        h.until_all(&[], "v2").await?;
        expect_cleaned_up(&h).await?;
        let report = traffic.stop().await;
        ensure!(
            report.failures.is_empty(),
            "failed requests: {:?}",
            report.failures
        );
        eprintln!("killed in {kills:?}; traffic {:?}", report.by_version);
        h.stop_controller().await?;
        Ok(())
    })
}

#[test]
fn a_newer_template_mid_release_restarts_at_step_1_without_serving_the_intermediate_one(
) -> Result<()> {
    run_test(|| async {
        let (mut h, _) =
            Harness::released_to_step_1(&scenario("rollout-canary.yaml"), CANARY).await?;
        let v2 = h.rollouts().get(CANARY).await?;
        let v2_revision = v2.canary_status().map(|c| c.canary_revision.clone());

        let traffic = Traffic::start(h.gateway(), 2);
        h.set_image("v3").await?;
        let switched = Instant::now();
        let r = h
            .wait_rollout(
                CANARY,
                "a release of the newer revision paused at step 1",
                |r| {
                    r.canary_status().is_some_and(|c| {
                        Some(&c.canary_revision) != v2_revision.as_ref()
                            && c.current_step_index == 1
                            && c.current_step_state == StepState::StepPaused
                    })
                },
            )
            .await?;
        let reasons = event_reasons(&h, CANARY).await?;
        ensure!(
            reasons.iter().any(|(_, r)| r == "ContinuousRelease"),
            "no ContinuousRelease event: {reasons:?}"
        );
        ensure!(r
            .plugin_rule()
            .is_some_and(|rule| rule.weight.percent() == 10.0));
        h.expect_share_of("v3", 2000, 0.10).await?;
        let counts = h.sample(1000, &[]).await?;
        ensure!(counts.keys().all(|v| v == "v1" || v == "v3"), "{counts:?}");

        h.approve_like_kruise(CANARY).await?;
        h.wait_paused_at(CANARY, 2).await?;
        h.approve_like_kruise(CANARY).await?;
        h.wait_finished(CANARY, "True").await?;
        h.until_all(&[], "v3").await?;
        expect_cleaned_up(&h).await?;
        let report = traffic.stop().await;
        ensure!(
            report.failures.is_empty(),
            "failed requests: {:?}",
            report.failures
        );
        // Once the newer release routed its step, v2 is gone for good.
        let late_v2 = report
            .answers
            .iter()
            .filter(|(t, a)| *t > switched + Duration::from_secs(15) && a.as_deref() == Ok("v2"))
            .count();
        ensure!(
            late_v2 == 0,
            "{late_v2} requests reached v2 after the newer release started"
        );
        h.stop_controller().await?;
        Ok(())
    })
}

#[test]
fn deleting_the_rollout_mid_release_routes_to_stable_cleans_up_and_releases_the_deployment(
) -> Result<()> {
    run_test(|| async {
        let (mut h, r) =
            Harness::released_to_step_1(&scenario("rollout-canary.yaml"), CANARY).await?;
        ensure!(
            r.metadata
                .finalizers
                .as_ref()
                .is_some_and(|f| f.iter().any(|f| f == "rollouts.kruise.io/rollout")),
            "no finalizer on the Rollout"
        );
        let traffic = Traffic::start(h.gateway(), 2);
        h.rollouts()
            .delete(CANARY, &kube::api::DeleteParams::default())
            .await?;
        let start = Instant::now();
        loop {
            if h.rollouts().get_opt(CANARY).await?.is_none() {
                break;
            }
            ensure!(
                start.elapsed() < common::PATIENCE,
                "the Rollout was never released"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ensure!(h.deployments().get_opt("demo-canary").await?.is_none());
        ensure!(h.services().get_opt("demo-canary").await?.is_none());
        ensure!(h.ingresses().get_opt("demo-canary").await?.is_none());
        ensure!(stable_pin(&h.services().get("demo").await?).is_none());
        // Released: the Deployment rolls natively to its template.
        let d = h.deployments().get("demo").await?;
        ensure!(
            d.spec.paused != Some(true),
            "Deployment demo is still paused"
        );
        h.until_all(&[], "v2").await?;
        let plugin = wasm_plugin_api(&h.client, &h.settings.plugin)
            .get(&h.settings.plugin.name)
            .await?;
        ensure!(plugin.data["spec"]["matchRules"]
            .as_array()
            .is_some_and(Vec::is_empty));
        let report = traffic.stop().await;
        ensure!(
            report.failures.is_empty(),
            "failed requests: {:?}",
            report.failures
        );
        h.stop_controller().await?;
        Ok(())
    })
}

#[test]
fn api_errors_conflicts_dropped_watches_and_relists_do_not_stop_a_release() -> Result<()> {
    use sandbox::api::{Fault, Matcher};
    run_test(|| async {
        let mut h = Harness::with_rollout(&scenario("rollout-canary.yaml"), CANARY).await?;
        h.set_image("v2").await?;
        let api = &h.cluster.api;
        api.inject(
            Fault::status(
                Matcher::verb("update")
                    .resource("rollouts")
                    .subresource("status"),
                500,
            )
            .times(2),
        );
        api.inject(
            Fault::status(
                Matcher::verb("patch")
                    .resource("deployments")
                    .name("demo-canary"),
                409,
            )
            .times(2),
        );
        api.inject(Fault::status(Matcher::verb("create").resource("wasmplugins"), 500).times(1));
        api.inject(Fault::drop_connection(Matcher::verb("get").resource("services")).times(2));
        h.wait_paused_at(CANARY, 1).await?;
        h.expect_share(2000, 0.10).await?;
        ensure!(
            h.metrics.errors() >= 4,
            "only {} failed reconciles",
            h.metrics.errors()
        );

        api.close_watches();
        api.inject(Fault::status(Matcher::verb("patch").resource("wasmplugins"), 500).times(2));
        h.approve_like_kruise(CANARY).await?;
        h.wait_paused_at(CANARY, 2).await?;
        h.expect_share(2000, 0.30).await?;

        api.compact();
        api.close_watches();
        h.approve_like_kruise(CANARY).await?;
        h.wait_finished(CANARY, "True").await?;
        h.until_all(&[], "v2").await?;
        expect_cleaned_up(&h).await?;
        h.stop_controller().await?;
        Ok(())
    })
}
