//! Metric analysis end to end: the sandbox (fake API server, simulated workloads, the real
//! Envoy gateway with the plugin), a real Prometheus scraping the gateway's
//! `/stats/prometheus` every second (`sandbox::prometheus`), and the real controller loop
//! querying it (`--prometheus-url`). A healthy canary is promoted without anyone approving;
//! a canary answering 500 to 20% of its requests is rolled back within three analysis
//! intervals, failing only the share of requests its weight and exposure allow; an idle
//! canary is never promoted.

mod common;

use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use common::{
    demo_rollout, event_reasons, events, expect_order, phase, run_test, Harness, Traffic,
};
use higress_canary::{
    analysis::Answer,
    crd::{AnalysisPhase, AnalysisStatus, CheckVerdict, Rollout, StepState},
    prometheus::{Endpoint, Prometheus as PrometheusClient},
};
use kube::api::{Patch, PatchParams};
use sandbox::{
    gateway::http,
    prometheus::{Prometheus, Tls},
};
use serde_json::{json, Value};

const NAME: &str = "rollouts-demo";
/// Seconds between analysis runs.
const INTERVAL: i64 = 2;
/// The seed app's Rollout ([`demo_rollout`]) with these steps and this analysis.
fn rollout(steps: Value, analysis: Value) -> String {
    let mut rollout = demo_rollout(NAME, steps);
    rollout["spec"]["strategy"]["canary"]["analysis"] = analysis;
    rollout.to_string()
}

/// Success rate at least 95%, p99 at most 1 s, a 10 s window, 20 requests, 2 failures abort.
fn standard_analysis() -> Value {
    json!({
        "intervalSeconds": INTERVAL,
        "windowSeconds": 10,
        "minRequests": 20,
        "failureLimit": 2,
        "successRate": {"minPercent": 95},
        "latency": {"percentile": 99, "maxMs": 1000},
    })
}

/// The sandbox with the seed app, a Prometheus scraping its gateway (scraped at least once)
/// and the controller pointed at it, in control of `demo` through `rollout_yaml`.
async fn start(rollout_yaml: &str) -> Result<(Harness, Prometheus)> {
    let mut h = Harness::start().await?;
    let prometheus = Prometheus::start(&[h.cluster.gateway.admin_addr()]).await?;
    prometheus.wait_scraped(Duration::from_secs(30)).await?;
    h.settings.prometheus = Some(Endpoint::url(prometheus.url()));
    h.start_controller();
    h.adopt(rollout_yaml, NAME).await?;
    Ok((h, prometheus))
}

/// `demo` gets image `tag`; `error_rate` of its new pods' requests are answered with 500 (the
/// simulator's knob, in the pod template so the canary Deployment's pods have it too).
async fn release(h: &Harness, tag: &str, error_rate: &str) -> Result<()> {
    let patch = json!({"spec": {"template": {
        "metadata": {"annotations": {"sandbox.higress-canary.io/error-rate": error_rate}},
        "spec": {"containers": [{"name": "main", "image": format!("registry.cn-hangzhou.aliyuncs.com/mse-ingress/version:{tag}")}]},
    }}});
    h.deployments()
        .patch("demo", &PatchParams::default(), &Patch::Strategic(&patch))
        .await?;
    Ok(())
}

fn analysis(r: &Rollout) -> Option<&AnalysisStatus> {
    r.canary_status().and_then(|c| c.analysis.as_ref())
}

fn condition(r: &Rollout, r#type: &str) -> Option<(String, String, String)> {
    r.status
        .as_ref()
        .and_then(|s| s.condition(r#type))
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn condition_time(r: &Rollout, r#type: &str) -> Option<jiff::Timestamp> {
    r.status
        .as_ref()
        .and_then(|s| s.condition(r#type))
        .and_then(|c| c.last_update_time.as_ref())
        .map(|t| t.0)
}

/// The analysis states of the controller's accepted status writes, in order.
fn analysis_writes(h: &Harness) -> Result<Vec<(i32, StepState, AnalysisStatus)>> {
    let mut out = Vec::new();
    for r in h.cluster.api.requests().iter().filter(|r| {
        r.resource == "rollouts"
            && r.subresource == "status"
            && r.status == 200
            && r.param("fieldManager") == Some("higress-canary")
    }) {
        let written: Rollout = serde_json::from_str(&r.body).context("a status write")?;
        if let Some(c) = written.canary_status() {
            if let Some(a) = &c.analysis {
                out.push((c.current_step_index, c.current_step_state, a.clone()));
            }
        }
    }
    Ok(out)
}

fn check_value(a: &AnalysisStatus, name: &str) -> Option<(CheckVerdict, Option<f64>)> {
    a.checks
        .iter()
        .find(|c| c.name == name)
        .map(|c| (c.verdict, c.value))
}

#[test]
fn a_healthy_canary_is_promoted_by_its_analysis_without_approval() -> Result<()> {
    const HOLD: i64 = 4;
    run_test(|| async {
        let yaml = rollout(
            json!([
                {"weight": 20, "replicas": 1, "pause": {"duration": HOLD}},
                {"weight": 50, "replicas": 2, "pause": {"duration": HOLD}},
            ]),
            standard_analysis(),
        );
        let (mut h, prometheus) = start(&yaml).await?;
        let traffic = Traffic::start(h.gateway(), 2);
        release(&h, "v2", "0").await?;

        // While step 1 holds, `status` shows each check's latest value.
        h.wait_rollout(NAME, "a passing analysis run at step 1", |r| {
            analysis(r).is_some_and(|a| a.step_index == 1 && a.phase == AnalysisPhase::Passing)
        })
        .await?;
        let out = h.cli(&["status", NAME]).await?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(out.status.success(), "status failed: {text}");
        ensure!(
            text.contains("analysis (step 1)")
                && text
                    .lines()
                    .any(|l| l.trim_start().starts_with("success-rate")
                        && l.contains("Pass")
                        && l.contains("%"))
                && text
                    .lines()
                    .any(|l| l.trim_start().starts_with("latency-p99") && l.contains("ms")),
            "status does not show the checks' values:\n{text}"
        );

        let done = h.wait_finished(NAME, "True").await?;
        h.until_all(&[], "v2").await?;
        let report = traffic.stop().await;
        ensure!(
            report.failures.is_empty(),
            "{} of {} requests failed: {:?}",
            report.failures.len(),
            report.total,
            &report.failures[..report.failures.len().min(5)]
        );
        ensure!(report.by_version.get("v2").copied().unwrap_or(0) > 0);

        // Each step passed by its checks (real values from Prometheus), held them for its
        // duration, and advanced without an approval.
        let writes = analysis_writes(&h)?;
        for step in [1, 2] {
            // The last write of the step's analysis: the run that let it advance (written
            // with the next step's state).
            let passing = writes
                .iter()
                .filter(|(_, _, a)| a.step_index == step)
                .map(|(_, _, a)| a)
                .rfind(|a| a.phase == AnalysisPhase::Passing)
                .with_context(|| format!("no passing analysis written at step {step}"))?;
            let (verdict, value) =
                check_value(passing, "success-rate").context("no success-rate check")?;
            ensure!(
                verdict == CheckVerdict::Pass && value.is_some_and(|v| v >= 99.0),
                "step {step}: success-rate {verdict:?} {value:?}"
            );
            let (verdict, value) =
                check_value(passing, "latency-p99").context("no latency check")?;
            ensure!(
                verdict == CheckVerdict::Pass && value.is_some_and(|v| v > 0.0 && v <= 1000.0),
                "step {step}: latency-p99 {verdict:?} {value:?}"
            );
            ensure!(
                passing.canary_requests.is_some_and(|n| n >= 20.0),
                "step {step}: {:?} canary requests",
                passing.canary_requests
            );
            let since = passing.passing_since.as_ref().context("passingSince")?.0;
            let ran = passing.last_run_time.as_ref().context("lastRunTime")?.0;
            ensure!(
                ran.duration_since(since) >= jiff::SignedDuration::from_secs(HOLD),
                "step {step} advanced after its checks held {:?}, not {HOLD}s",
                ran.duration_since(since)
            );
        }
        let reasons: Vec<String> = event_reasons(&h, NAME)
            .await?
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        // kube's Recorder folds repeated reasons into one Event with a series count.
        expect_order(
            &reasons,
            &[
                "AnalysisPassed",
                "StepAdvanced",
                "Promoting",
                "RolloutSucceeded",
            ],
        )?;
        let passed = events(&h, NAME)
            .await?
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("AnalysisPassed"))
            .context("no AnalysisPassed event")?;
        ensure!(
            passed.series.as_ref().map(|s| s.count) == Some(2),
            "AnalysisPassed {:?} times, expected once per step",
            passed.series.as_ref().map(|s| s.count)
        );
        ensure!(
            !reasons
                .iter()
                .any(|r| r == "StepPaused" || r.starts_with("AnalysisCheck")),
            "events: {reasons:?}"
        );
        ensure!(
            condition(&done, "Analysis").map(|c| (c.0, c.1))
                == Some(("True".into(), "ChecksPassing".into())),
            "Analysis condition: {:?}",
            condition(&done, "Analysis")
        );
        drop(prometheus);
        h.stop_controller().await?;
        Ok(())
    })
}

#[test]
fn a_canary_failing_20_percent_is_rolled_back_within_three_intervals() -> Result<()> {
    const WEIGHT: f64 = 0.2;
    const ERROR_RATE: f64 = 0.2;
    run_test(|| async {
        let yaml = rollout(
            json!([
                {"weight": 20, "replicas": 1, "pause": {"duration": 60}},
                {"weight": 50, "replicas": 2, "pause": {"duration": 60}},
            ]),
            standard_analysis(),
        );
        let (mut h, prometheus) = start(&yaml).await?;
        let traffic = Traffic::start(h.gateway(), 2);
        let started = Instant::now();
        release(&h, "v2", &ERROR_RATE.to_string()).await?;

        let done = h.wait_finished(NAME, "False").await?;
        h.until_all(&[], "v1").await?;
        let release_duration = started.elapsed();
        let report = traffic.stop().await;

        // Rolled back by the analysis of step 1, naming the check, value and threshold.
        let a = analysis(&done).context("no analysis in the status")?;
        ensure!(
            a.phase == AnalysisPhase::Failed && a.step_index == 1,
            "{a:?}"
        );
        let (status, reason, message) =
            condition(&done, "Analysis").context("no Analysis condition")?;
        ensure!(
            status == "False"
                && reason == "CheckFailed"
                && message.contains("success-rate")
                && message.contains("(threshold >= 95%)"),
            "Analysis condition: {status} {reason} {message:?}"
        );
        let (verdict, value) = check_value(a, "success-rate").context("no success-rate")?;
        ensure!(
            verdict == CheckVerdict::Fail && value.is_some_and(|v| v < 95.0),
            "success-rate {verdict:?} {value:?}"
        );
        // The controller's /metrics say the same: the failing verdict, the value, the runs.
        let exposition = h.metrics.render();
        let rollout = format!("rollout=\"{}/{NAME}\"", common::NS);
        for expected in [
            format!(
                "higress_canary_analysis_check_verdict{{{rollout},check=\"success-rate\",verdict=\"Fail\"}} 1"
            ),
            format!("higress_canary_analysis_consecutive_failures{{{rollout}}} 2"),
        ] {
            ensure!(
                exposition.lines().any(|l| l == expected),
                "/metrics lacks {expected:?}:\n{exposition}"
            );
        }
        let value_line =
            format!("higress_canary_analysis_check_value{{{rollout},check=\"success-rate\"}} ");
        ensure!(
            exposition
                .lines()
                .filter_map(|l| l.strip_prefix(&value_line))
                .any(|v| v.parse::<f64>().is_ok_and(|v| v < 95.0)),
            "/metrics lacks the failing success rate:\n{exposition}"
        );
        ensure!(
            exposition
                .lines()
                .any(|l| l.starts_with("higress_canary_analysis_queries_total{outcome=\"ok\"}")),
            "no answered analysis query counted:\n{exposition}"
        );
        let reasons = event_reasons(&h, NAME).await?;
        ensure!(
            reasons
                .iter()
                .any(|(t, r)| t == "Warning" && r == "AnalysisFailed"),
            "no Warning AnalysisFailed event: {reasons:?}"
        );
        ensure!(
            done.canary_status().map(|c| c.current_step_index) == Some(1),
            "the release got past step 1"
        );

        // Within three intervals of the first run that saw the canary's responses (the
        // metrics reach Prometheus a few seconds after the routing: the plugin hands its
        // counts to Envoy every second, Prometheus scrapes every second); the status times
        // have whole seconds, so one more.
        let writes = analysis_writes(&h)?;
        let first_data = writes
            .iter()
            .map(|(_, _, a)| a)
            .find(|a| a.canary_requests.is_some_and(|n| n > 0.0))
            .and_then(|a| a.last_run_time.clone())
            .context("no analysis run saw the canary's responses")?
            .0;
        let aborted = condition_time(&done, "Analysis").context("condition time")?;
        let took = aborted.duration_since(first_data);
        let runs: Vec<_> = writes
            .iter()
            .map(|(_, _, a)| (a.last_run_time.clone(), a.phase, a.message.clone()))
            .collect();
        ensure!(
            took <= jiff::SignedDuration::from_secs(3 * INTERVAL + 1),
            "rolled back {took:?} after the first run with data, more than three {INTERVAL}s \
             intervals; the runs: {runs:#?}"
        );

        // Failed requests: only the canary's share while it was exposed: from its routing
        // (the analysis' trafficSince) until the abort, which routes to stable in the same
        // reconcile (plus 2 s for the gateway to apply the config and the times' rounding).
        let since = a.traffic_since.as_ref().context("trafficSince")?.0;
        let exposure = aborted.duration_since(since).as_secs_f64() + 2.0;
        let share = WEIGHT * ERROR_RATE * exposure / release_duration.as_secs_f64();
        let n = report.total as f64;
        let bound = n * share + 3.29 * (n * share * (1.0 - share)).sqrt();
        let failed = report.failures.len() as f64;
        eprintln!(
            "rolled back {took:?} after the first run with data, {exposure}s of exposure; \
             {failed} of {n} requests failed in {release_duration:?} (bound {bound:.0})"
        );
        ensure!(
            failed > 0.0,
            "no request failed: the canary never answered 500 (test setup?)"
        );
        ensure!(
            failed <= bound,
            "{failed} of {n} requests failed in a {release_duration:?} release; at most \
             {bound:.0} expected ({WEIGHT} weight x {ERROR_RATE} errors x {exposure}s \
             exposure)"
        );
        ensure!(
            report.failures.iter().all(|f| f.starts_with("500")),
            "failures other than the canary's 500s: {:?}",
            report
                .failures
                .iter()
                .filter(|f| !f.starts_with("500"))
                .take(5)
                .collect::<Vec<_>>()
        );

        // Not released again by a resync: the Deployment keeps v2, the stable pods serve.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let r = h.rollouts().get(NAME).await?;
        ensure!(phase(&r) == "Healthy", "phase {}", phase(&r));
        ensure!(
            r.status
                .as_ref()
                .and_then(|s| s.message.as_deref())
                .is_some_and(|m| m.contains("rolled back by its analysis")),
            "message: {:?}",
            r.status.as_ref().and_then(|s| s.message.clone())
        );
        ensure!(h.deployments().get_opt("demo-canary").await?.is_none());
        let reply = http::get(h.gateway(), "/version", &[]).await?;
        ensure!(
            reply.text() == "v1",
            "the gateway answered {:?}",
            reply.text()
        );
        drop(prometheus);
        h.stop_controller().await?;
        Ok(())
    })
}

#[test]
fn an_idle_canary_is_not_promoted() -> Result<()> {
    const MIN_REQUESTS: i64 = 50;
    run_test(|| async {
        let mut spec = standard_analysis();
        spec["minRequests"] = json!(MIN_REQUESTS);
        let yaml = rollout(
            json!([
                {"weight": 10, "replicas": 1, "pause": {"duration": INTERVAL}},
                {"weight": 50, "replicas": 2, "pause": {"duration": INTERVAL}},
            ]),
            spec,
        );
        let (mut h, prometheus) = start(&yaml).await?;
        release(&h, "v2", "0").await?;
        // A trickle: ~5 requests/s, ~0.5/s for the canary.
        let gateway = h.gateway();
        let trickle = tokio::spawn(async move {
            loop {
                let _ = http::get(gateway, "/version", &[]).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });

        let r = h
            .wait_rollout(NAME, "step 1 analysing", |r| {
                analysis(r).is_some_and(|a| a.step_index == 1)
            })
            .await?;
        let began = analysis(&r)
            .and_then(|a| a.start_time.clone())
            .context("start")?
            .0;
        // Many intervals later it still holds at step 1, with too few requests for a verdict.
        let r = h
            .wait_rollout(NAME, "five analysis runs", |r| {
                analysis(r)
                    .and_then(|a| a.last_run_time.as_ref())
                    .is_some_and(|t| {
                        t.0.duration_since(began) >= jiff::SignedDuration::from_secs(5 * INTERVAL)
                    })
            })
            .await?;
        ensure!(
            r.canary_status()
                .map(|c| (c.current_step_index, c.current_step_state))
                == Some((1, StepState::StepMetricsAnalysis)),
            "the idle canary moved on: {:?}",
            r.canary_status()
                .map(|c| (c.current_step_index, c.current_step_state))
        );
        let a = analysis(&r).context("analysis")?;
        ensure!(
            a.phase == AnalysisPhase::NoVerdict
                && a.canary_requests.is_some_and(|n| n < MIN_REQUESTS as f64)
                && a.checks
                    .iter()
                    .all(|c| c.verdict == CheckVerdict::TooFewRequests
                        || c.verdict == CheckVerdict::NoData),
            "{a:?}"
        );
        ensure!(
            condition(&r, "Analysis").map(|c| (c.0, c.1))
                == Some(("Unknown".into(), "TooFewRequests".into())),
            "{:?}",
            condition(&r, "Analysis")
        );
        let out = h.cli(&["status", NAME]).await?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(
            text.contains("NoVerdict") && text.contains("TooFewRequests"),
            "status:\n{text}"
        );
        ensure!(h.pods("demo").await? == (5, 5));
        ensure!(
            h.deployments().get("demo").await?.spec.paused == Some(true),
            "the stable Deployment was unpaused (promotion)"
        );

        // With `noData: Fail`, the same idle canary is rolled back after the timeout.
        let patch = json!({"spec": {"strategy": {"canary": {"analysis": {
            "noData": {"action": "Fail", "timeoutSeconds": 2 * INTERVAL}
        }}}}});
        h.rollouts()
            .patch(NAME, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        let done = h.wait_finished(NAME, "False").await?;
        let (_, reason, message) = condition(&done, "Analysis").context("condition")?;
        ensure!(
            reason == "CheckFailed" && message.contains("no verdict for"),
            "{reason}: {message}"
        );
        trickle.abort();
        let _ = trickle.await;
        h.until_all(&[], "v1").await?;
        drop(prometheus);
        h.stop_controller().await?;
        Ok(())
    })
}

/// A CA and a certificate it signed for 127.0.0.1, written as PEM files into `dir`: the CA
/// file and the server's [`Tls`].
fn certificates(dir: &std::path::Path) -> Result<(std::path::PathBuf, Tls)> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "higress-canary test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let server_key = KeyPair::generate()?;
    let server =
        CertificateParams::new(vec!["127.0.0.1".to_owned()])?.signed_by(&server_key, &ca)?;
    let ca_file = dir.join("ca.pem");
    let tls = Tls {
        cert_file: dir.join("server.pem"),
        key_file: dir.join("server-key.pem"),
    };
    std::fs::write(&ca_file, ca.pem())?;
    std::fs::write(&tls.cert_file, server.pem())?;
    std::fs::write(&tls.key_file, server_key.serialize_pem())?;
    Ok((ca_file, tls))
}

/// A Prometheus serving https only: the controller's client reaches it with the CA given by
/// `--prometheus-ca-file`, and refuses it without (the certificate's CA is not the system's).
#[test]
fn an_https_prometheus_is_queried_with_the_ca_file_and_refused_without() -> Result<()> {
    run_test(|| async {
        let dir = tempfile::tempdir()?;
        let (ca_file, tls) = certificates(dir.path())?;
        // Nothing to scrape: the test asks for a constant.
        let prometheus = Prometheus::start_tls(&[], &tls).await?;
        let url = prometheus.url();
        ensure!(url.starts_with("https://"), "{url}");

        let trusting = PrometheusClient::new(&Endpoint {
            ca_file: Some(ca_file.clone()),
            ..Endpoint::url(&url)
        })?;
        // Until Prometheus is ready it answers 503 (an error, retried); then the value.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match trusting.query("vector(42)").await {
                Answer::Values(values) => {
                    ensure!(values == [42.0], "{values:?}");
                    break;
                }
                Answer::Error(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "Prometheus not ready yet");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Answer::Error(e) => anyhow::bail!("no answer over https: {e}"),
            }
        }

        let distrusting = PrometheusClient::new(&Endpoint::url(&url))?.with_retries(
            Duration::from_secs(2),
            1,
            Duration::from_millis(10),
        );
        let Answer::Error(message) = distrusting.query("vector(42)").await else {
            anyhow::bail!("an untrusted certificate was accepted");
        };
        ensure!(
            message.contains("certificate") && message.contains("UnknownIssuer"),
            "{message}"
        );

        // A CA file that is not one is refused at the start, naming the flag.
        let not_pem = dir.path().join("not-a-ca.pem");
        std::fs::write(&not_pem, "hello")?;
        let refused = PrometheusClient::new(&Endpoint {
            ca_file: Some(not_pem),
            ..Endpoint::url(&url)
        })
        .expect_err("a file without certificates was accepted");
        ensure!(
            refused.to_string().starts_with("--prometheus-ca-file ")
                && refused.to_string().contains("no certificate in it"),
            "{refused}"
        );
        Ok(())
    })
}
