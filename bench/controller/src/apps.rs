//! The benchmark's applications: a Deployment served through a Service and an Ingress (as
//! in the seed scenario `demo-app.yaml`, one host per app), and a Rollout for it.

use serde_json::{json, Value};

/// Header carrying the user id in the latency Rollout's sticky setting.
pub const STICKY_HEADER: &str = "x-user-id";

/// The image of version `tag`; the simulator's pods answer every request with the tag.
pub fn image(tag: &str) -> String {
    format!("bench.local/app:{tag}")
}

/// The host the app's Ingress routes.
pub fn host(name: &str) -> String {
    format!("{name}.bench.local")
}

/// Deployment, Service and Ingress of app `name` at version `tag`.
pub fn app(name: &str, replicas: i32, tag: &str) -> [Value; 3] {
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{
                    "name": "main",
                    "image": image(tag),
                    "ports": [{"containerPort": 8080}],
                }]},
            },
        },
    });
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "selector": {"app": name},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
        },
    });
    let ingress = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name, "annotations": {"kubernetes.io/ingress.class": "nginx"}},
        "spec": {"rules": [{
            "host": host(name),
            "http": {"paths": [{
                "path": "/",
                "pathType": "Prefix",
                "backend": {"service": {"name": name, "port": {"number": 80}}},
            }]},
        }]},
    });
    [deployment, service, ingress]
}

/// One canary step: `weight` percent of traffic to `replicas` canary pods; `pause_seconds`
/// `None` waits for approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub weight: u8,
    pub replicas: i32,
    pub pause_seconds: Option<u32>,
}

/// A Rollout of app `name` (Deployment, Service and Ingress of that name).
/// `grace_seconds`: `gracePeriodSeconds` (`None`: Kruise's default, 3 s); `sticky`: the
/// extension `higress.sticky.header`.
pub fn rollout(name: &str, steps: &[Step], grace_seconds: Option<u32>, sticky: bool) -> Value {
    let steps: Vec<Value> = steps
        .iter()
        .map(|s| {
            json!({
                "weight": s.weight,
                "replicas": s.replicas,
                "pause": match s.pause_seconds {
                    Some(seconds) => json!({"duration": seconds}),
                    None => json!({}),
                },
            })
        })
        .collect();
    let mut routing = json!({"service": name, "ingress": {"name": name, "classType": "nginx"}});
    if let Some(grace) = grace_seconds {
        routing["gracePeriodSeconds"] = json!(grace);
    }
    let mut canary = json!({"steps": steps, "trafficRoutings": [routing]});
    if sticky {
        canary["higress"] = json!({"sticky": {"header": STICKY_HEADER}});
    }
    json!({
        "apiVersion": "rollouts.kruise.io/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": name},
        "spec": {
            "objectRef": {"workloadRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}},
            "strategy": {"canary": canary},
        },
    })
}

// === reading a Rollout as JSON, as kubectl would ===

pub fn phase(rollout: &Value) -> &str {
    rollout
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("")
}

pub fn step_index(rollout: &Value) -> i64 {
    rollout
        .pointer("/status/canaryStatus/currentStepIndex")
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

pub fn step_state(rollout: &Value) -> &str {
    rollout
        .pointer("/status/canaryStatus/currentStepState")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// The `status` of a condition, e.g. `"True"` for `Succeeded`.
pub fn condition<'a>(rollout: &'a Value, kind: &str) -> Option<&'a str> {
    rollout
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)?
        .get("status")?
        .as_str()
}

/// A release is over and succeeded.
pub fn succeeded(rollout: &Value) -> bool {
    phase(rollout) == "Healthy" && condition(rollout, "Succeeded") == Some("True")
}

pub fn paused_at(rollout: &Value, step: i64) -> bool {
    step_index(rollout) == step && step_state(rollout) == "StepPaused"
}

/// The config the plugin receives for a WasmPlugin, converted from `defaultConfig` and
/// `matchRules` as Higress converts it (by the sandbox gateway's code).
pub fn plugin_config(wasm_plugin: &Value) -> Option<Value> {
    let spec = wasm_plugin.get("spec")?;
    let json = sandbox::gateway::wasm::plugin_config(spec).ok()??;
    serde_json::from_str(&json?).ok()
}

fn rules(wasm_plugin: &Value) -> Vec<Value> {
    plugin_config(wasm_plugin)
        .and_then(|c| c.get("_rules_")?.as_array().cloned())
        .unwrap_or_default()
}

/// The weight (percent) of `<namespace>/<name>`'s rule in a WasmPlugin, if it has one.
pub fn rule_weight(wasm_plugin: &Value, rollout: &str) -> Option<f64> {
    let rule = rules(wasm_plugin)
        .into_iter()
        .find(|r| r["rollout"] == rollout)?;
    Some(rule.get("weight").and_then(Value::as_f64).unwrap_or(0.0))
}

/// How many rules a WasmPlugin carries.
pub fn rule_count(wasm_plugin: &Value) -> usize {
    rules(wasm_plugin).len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollout_json_has_kruise_fields_and_the_extension() {
        let steps = [
            Step {
                weight: 10,
                replicas: 1,
                pause_seconds: None,
            },
            Step {
                weight: 50,
                replicas: 2,
                pause_seconds: Some(0),
            },
        ];
        let r = rollout("app-1", &steps, Some(1), true);
        let canary = &r["spec"]["strategy"]["canary"];
        assert_eq!(canary["steps"][0]["pause"], json!({}));
        assert_eq!(canary["steps"][1]["pause"], json!({"duration": 0}));
        assert_eq!(canary["trafficRoutings"][0]["gracePeriodSeconds"], 1);
        assert_eq!(canary["higress"]["sticky"]["header"], STICKY_HEADER);
        let plain = rollout("app-1", &steps, None, false);
        assert!(plain["spec"]["strategy"]["canary"]["trafficRoutings"][0]
            .get("gracePeriodSeconds")
            .is_none());
        assert!(plain["spec"]["strategy"]["canary"].get("higress").is_none());
    }

    #[test]
    fn status_fields_are_read() {
        let r = json!({"status": {
            "phase": "Healthy",
            "canaryStatus": {"currentStepIndex": 2, "currentStepState": "StepPaused"},
            "conditions": [{"type": "Progressing", "status": "False"}, {"type": "Succeeded", "status": "True"}],
        }});
        assert!(succeeded(&r));
        assert!(paused_at(&r, 2));
        assert!(!paused_at(&r, 1));
        assert_eq!(condition(&r, "Progressing"), Some("False"));
        assert!(!succeeded(&json!({})));
    }

    #[test]
    fn rule_weights_are_found_by_rollout() {
        let plugin = json!({"spec": {"defaultConfig": {}, "matchRules": [
            {"ingress": ["default/a"], "config": {"rollout": "default/a", "weight": 30}},
            {"ingress": ["default/b"], "config": {"rollout": "default/b"}},
        ]}});
        assert_eq!(rule_weight(&plugin, "default/a"), Some(30.0));
        assert_eq!(rule_weight(&plugin, "default/b"), Some(0.0));
        assert_eq!(rule_weight(&plugin, "default/c"), None);
        assert_eq!(rule_count(&plugin), 2);
        let config = plugin_config(&plugin).unwrap();
        assert_eq!(config["_rules_"][0]["_match_route_"], json!(["default/a"]));
        let empty = json!({"spec": {"defaultConfig": {}, "matchRules": []}});
        assert_eq!(rule_count(&empty), 0);
    }
}
