//! The plugin's metrics as Prometheus scrapes them from Envoy's admin `/stats/prometheus`.

use std::collections::BTreeMap;

use anyhow::{ensure, Context, Result};
use e2e::fixture::{
    demo_rule, plugin_config, run_load, Tally, APPLY_POLL, CANARY, ROLLOUT, STABLE,
};
use e2e::prometheus::{self, Sample};
use e2e::{eventually, Deployment, Envoy};
use std::time::Duration;

/// Stats reach `/stats/prometheus` at once for counters and after a flush (1 s) for
/// histograms; allow several flushes.
const METRICS_DEADLINE: Duration = Duration::from_secs(15);

/// The spec's histogram buckets, as Envoy prints them in `le`.
const BUCKETS: [&str; 22] = [
    "1", "2", "5", "10", "15", "20", "25", "30", "40", "50", "60", "75", "100", "150", "200",
    "300", "500", "1000", "2500", "5000", "10000", "+Inf",
];

fn scrape(envoy: &Envoy) -> Result<Vec<Sample>> {
    prometheus::parse(&envoy.stats_prometheus()?)
}

/// The plugin's samples only.
fn plugin_samples(envoy: &Envoy) -> Result<Vec<Sample>> {
    Ok(scrape(envoy)?
        .into_iter()
        .filter(|s| s.name.starts_with("higress_canary"))
        .collect())
}

fn get(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Result<f64> {
    prometheus::value(samples, name, labels).with_context(|| {
        let near: Vec<String> = samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| format!("{}{:?} {}", s.name, s.labels, s.value))
            .collect();
        format!("no sample {name}{labels:?}; samples of that name: {near:#?}")
    })
}

fn expect(samples: &[Sample], name: &str, labels: &[(&str, &str)], want: u64) -> Result<()> {
    let got = get(samples, name, labels)?;
    ensure!(
        got == want as f64,
        "{name}{labels:?} = {got}, expected {want}"
    );
    Ok(())
}

/// Every count the plugin reports must equal what the client saw.
fn expect_counts(samples: &[Sample], tally: &Tally) -> Result<()> {
    for (version, label) in [(CANARY, "canary"), (STABLE, "stable")] {
        let labels = [("rollout", ROLLOUT), ("version", label)];
        let total = tally.from(version);
        expect(samples, "higress_canary_requests", &labels, total)?;
        for (code, status_range) in [("2xx", 200..300), ("5xx", 500..600)] {
            let n = tally
                .replies
                .iter()
                .filter(|((v, s), _)| v == version && status_range.contains(s))
                .map(|(_, n)| n)
                .sum();
            let labels = [("rollout", ROLLOUT), ("version", label), ("code", code)];
            expect(samples, "higress_canary_responses", &labels, n)?;
        }
        expect(samples, "higress_canary_latency_ms_count", &labels, total)?;
        let mut previous = 0.0;
        for le in BUCKETS {
            let labels = [("rollout", ROLLOUT), ("version", label), ("le", le)];
            let count = get(samples, "higress_canary_latency_ms_bucket", &labels)?;
            ensure!(
                count >= previous,
                "bucket le={le} of {label} decreases: {count} < {previous}"
            );
            previous = count;
        }
        ensure!(
            previous == total as f64,
            "{label} +Inf bucket {previous}, expected {total}"
        );
    }
    Ok(())
}

/// No two samples share a name and label set, and every plugin sample carries its rollout.
fn expect_unique_labelled_series(samples: &[Sample]) -> Result<()> {
    let mut seen: BTreeMap<(String, Vec<(String, String)>), usize> = BTreeMap::new();
    for s in samples {
        ensure!(
            s.labels.get("rollout").map(String::as_str) == Some(ROLLOUT),
            "sample without the rollout label (stats_tags did not apply?): {s:?}"
        );
        let key = (
            s.name.clone(),
            s.labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        );
        *seen.entry(key).or_default() += 1;
    }
    let duplicated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    ensure!(duplicated.is_empty(), "duplicated series: {duplicated:?}");
    Ok(())
}

#[test]
fn zero_valued_5xx_series_and_the_weight_exist_before_any_traffic() -> Result<()> {
    let d = Deployment::start(&plugin_config(&[demo_rule(30.0)]))?;
    let samples = eventually(METRICS_DEADLINE, APPLY_POLL, || {
        let samples = plugin_samples(&d.envoy)?;
        for version in ["stable", "canary"] {
            let labels = [("rollout", ROLLOUT), ("version", version), ("code", "5xx")];
            expect(&samples, "higress_canary_responses", &labels, 0)?;
        }
        expect(
            &samples,
            "higress_canary_weight_basis_points",
            &[("rollout", ROLLOUT)],
            3000,
        )?;
        Ok(samples)
    })?;
    expect_unique_labelled_series(&samples)?;
    ensure!(d.stable.requests() == 0 && d.canary.requests() == 0);
    Ok(())
}

#[test]
fn request_response_and_latency_metrics_match_what_clients_saw_across_a_reload() -> Result<()> {
    let d = Deployment::start(&plugin_config(&[demo_rule(30.0)]))?;
    d.canary.fail_fraction(500, 0.1);
    let mut clients = d.clients(4);

    let mut tally = run_load(&mut clients, 500)?;
    ensure!(
        tally.count(CANARY, 500) > 0,
        "no canary failures: {:?}",
        tally.replies
    );
    let samples = eventually(METRICS_DEADLINE, Duration::from_millis(100), || {
        let samples = plugin_samples(&d.envoy)?;
        expect_counts(&samples, &tally)?;
        Ok(samples)
    })?;
    expect_unique_labelled_series(&samples)?;

    // A reload keeps the counters and adds no second copy of any series.
    d.envoy
        .set_plugin_config(&plugin_config(&[demo_rule(40.0)]))?;
    let after_reload = eventually(METRICS_DEADLINE, APPLY_POLL, || {
        let samples = plugin_samples(&d.envoy)?;
        expect(
            &samples,
            "higress_canary_weight_basis_points",
            &[("rollout", ROLLOUT)],
            4000,
        )?;
        Ok(samples)
    })?;
    expect_unique_labelled_series(&after_reload)?;
    expect_counts(&after_reload, &tally)?;

    let more = run_load(&mut clients, 100)?;
    for (key, n) in more.replies {
        *tally.replies.entry(key).or_default() += n;
    }
    let samples = eventually(METRICS_DEADLINE, Duration::from_millis(100), || {
        let samples = plugin_samples(&d.envoy)?;
        expect_counts(&samples, &tally)?;
        Ok(samples)
    })?;
    expect_unique_labelled_series(&samples)?;
    Ok(())
}

#[test]
fn rollout_names_with_dots_survive_as_label_values() -> Result<()> {
    const DOTTED: &str = "default/shop.v1.2-beta";
    let other_rule = serde_json::json!({
        "_match_route_": ["default/other"], "rollout": DOTTED, "tagValue": "shop", "weight": 0,
    });
    let d = Deployment::start(&plugin_config(&[demo_rule(0.0), other_rule]))?;
    let mut client = e2e::Client::new(d.envoy.listener_addr()).with_host(e2e::envoy::OTHER_HOST);
    for _ in 0..3 {
        ensure!(client.get("/", &[])?.status == 200);
    }
    eventually(METRICS_DEADLINE, APPLY_POLL, || {
        let samples = plugin_samples(&d.envoy)?;
        let labels = [("rollout", DOTTED), ("version", "stable")];
        expect(&samples, "higress_canary_requests", &labels, 3)?;
        expect(
            &samples,
            "higress_canary_weight_basis_points",
            &[("rollout", DOTTED)],
            0,
        )
    })
}
