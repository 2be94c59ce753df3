//! Hot config changes through ECDS: under load, and when the new config is bad.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread;

use anyhow::{anyhow, ensure, Context, Result};
use e2e::fixture::{
    await_version, demo_rule, plugin_config, APPLY_DEADLINE, APPLY_POLL, CANARY, ROLLOUT, STABLE,
    TAG_VALUE,
};
use e2e::{eventually, ConfigRejected, Deployment};
use serde_json::json;

const LOAD_THREADS: usize = 4;
const FLIPS: usize = 3;

/// What one load thread last saw: the config epoch when it sent the request, and the version.
#[derive(Debug, Clone, Default)]
struct Latest {
    epoch: u64,
    version: Option<String>,
    requests: u64,
}

#[test]
fn weight_flips_under_keep_alive_load_lose_no_request_and_reach_every_connection() -> Result<()> {
    let d = Deployment::start(&plugin_config(&[demo_rule(0.0)]))?;
    let addr = d.envoy.listener_addr();
    let stop = AtomicBool::new(false);
    let epoch = AtomicU64::new(0);
    let latest: Vec<Mutex<Latest>> = (0..LOAD_THREADS).map(|_| Mutex::default()).collect();
    let failures = Mutex::new(Vec::<String>::new());

    let connections = thread::scope(|scope| -> Result<Vec<u64>> {
        let workers: Vec<_> = latest
            .iter()
            .map(|slot| {
                let (stop, epoch, failures) = (&stop, &epoch, &failures);
                scope.spawn(move || {
                    let mut client = e2e::Client::new(addr);
                    while !stop.load(Ordering::SeqCst) {
                        let sent_in = epoch.load(Ordering::SeqCst);
                        let outcome = client.get("/", &[]);
                        let mut latest = slot.lock().unwrap_or_else(PoisonError::into_inner);
                        latest.requests += 1;
                        match outcome {
                            Ok(reply) if reply.status == 200 => {
                                latest.epoch = sent_in;
                                latest.version = reply.version;
                            }
                            Ok(reply) => failures
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .push(format!("status {}: {}", reply.status, reply.text())),
                            Err(err) => failures
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .push(format!("{err:#}")),
                        }
                    }
                    client.connections_opened()
                })
            })
            .collect();

        let result = (|| -> Result<()> {
            for flip in 0..FLIPS * 2 {
                let (weight, want) = if flip % 2 == 0 {
                    (100.0, CANARY)
                } else {
                    (0.0, STABLE)
                };
                d.envoy
                    .set_plugin_config(&plugin_config(&[demo_rule(weight)]))
                    .with_context(|| format!("flip {flip} to {weight}%"))?;
                let now = epoch.fetch_add(1, Ordering::SeqCst) + 1;
                eventually(APPLY_DEADLINE, APPLY_POLL, || {
                    for (i, slot) in latest.iter().enumerate() {
                        let seen = slot.lock().unwrap_or_else(PoisonError::into_inner).clone();
                        ensure!(
                            seen.epoch == now && seen.version.as_deref() == Some(want),
                            "flip {flip} to {weight}%: load thread {i} last saw {seen:?}"
                        );
                    }
                    Ok(())
                })?;
            }
            Ok(())
        })();
        stop.store(true, Ordering::SeqCst);
        let connections = workers
            .into_iter()
            .map(|w| w.join().map_err(|_| anyhow!("load thread panicked")))
            .collect::<Result<Vec<u64>>>()?;
        result.map(|()| connections)
    })?;

    let failures = failures
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    let requests: u64 = latest
        .iter()
        .map(|slot| slot.lock().unwrap_or_else(PoisonError::into_inner).requests)
        .sum();
    ensure!(
        failures.is_empty(),
        "{} of {requests} requests failed during config flips; first: {}",
        failures.len(),
        failures[0]
    );
    ensure!(
        connections.iter().all(|&n| n == 1),
        "keep-alive connections were replaced during the flips: {connections:?}"
    );
    ensure!(d.canary.requests() > 0 && d.stable.requests() > 0);
    Ok(())
}

#[test]
fn bad_configs_are_rejected_and_the_old_config_keeps_serving() -> Result<()> {
    let good = demo_rule(100.0);
    let good_config = plugin_config(std::slice::from_ref(&good));
    let d = Deployment::start(&good_config)?;
    let mut client = d.client();
    await_version(&mut client, "/", &[], CANARY)?;

    let mut unknown_field = good.clone();
    unknown_field["wieght"] = json!(5);
    let mut duplicate_rollout = demo_rule(0.0);
    duplicate_rollout["_match_route_"] = json!(["default/other"]);
    let bad_configs = [
        ("weight above 100", plugin_config(&[demo_rule(150.0)])),
        ("negative weight", plugin_config(&[demo_rule(-1.0)])),
        (
            "invalid regex",
            plugin_config(&[{
                let mut rule = demo_rule(0.0);
                rule["matches"] = json!([{"headers": [
                    {"name": "x-device", "type": "RegularExpression", "value": "ip(hone"}
                ]}]);
                rule
            }]),
        ),
        ("unknown rule field", plugin_config(&[unknown_field])),
        (
            "unknown top-level field",
            json!({"_rules_": [good.clone()], "bogus": true}).to_string(),
        ),
        (
            "missing tagValue",
            plugin_config(&[json!({"_match_route_": ["default/demo"], "rollout": ROLLOUT})]),
        ),
        (
            "duplicate rollout",
            plugin_config(&[good.clone(), duplicate_rollout]),
        ),
        ("not JSON", "{\"_rules_\": [".to_string()),
    ];
    let mut accepted = Vec::new();
    for (what, config) in &bad_configs {
        match d.envoy.set_plugin_config(config) {
            Err(err) if err.downcast_ref::<ConfigRejected>().is_some() => {}
            Err(err) => return Err(err.context(format!("{what}: not a clean rejection"))),
            Ok(()) => {
                // Reported below; restore the good config so the next case starts from it.
                accepted.push(format!("{what}: {config}"));
                d.envoy.set_plugin_config(&good_config)?;
                await_version(&mut client, "/", &[], CANARY)?;
                continue;
            }
        }
        for _ in 0..10 {
            let reply = client.get("/", &[])?;
            ensure!(
                reply.version.as_deref() == Some(CANARY)
                    && reply.saw("x-higress-canary") == Some(TAG_VALUE),
                "after the rejected {what} config the old config (100% canary) stopped serving: \
                 {reply:?}"
            );
        }
    }
    ensure!(
        accepted.is_empty(),
        "bad configs were accepted:\n{}",
        accepted.join("\n")
    );

    d.envoy
        .set_plugin_config(&plugin_config(&[demo_rule(0.0)]))?;
    await_version(&mut client, "/", &[], STABLE)?;
    Ok(())
}

#[test]
fn a_bad_first_config_fails_startup_as_a_rejection() -> Result<()> {
    let err = match Deployment::start(&plugin_config(&[demo_rule(150.0)])) {
        Ok(_) => anyhow::bail!("Envoy started with weight 150"),
        Err(err) => err,
    };
    ensure!(
        err.downcast_ref::<ConfigRejected>().is_some(),
        "expected ConfigRejected, got {err:#}"
    );
    // A module that cannot load at all is rejected the same way; make sure this one can.
    Deployment::start(&plugin_config(&[demo_rule(15.0)]))
        .context("the same module with a good first config")?;
    Ok(())
}
