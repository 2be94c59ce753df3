//! The shared WasmPlugin, as a pure function of all Rollouts.
//!
//! Each Rollout records in its status the plugin rule it currently asks for
//! (`status.canaryStatus.higress.rule`, written by the planner). The plugin's config is those
//! rules, ordered by Rollout, and nothing else: a finished, disabled or deleted Rollout has no
//! rule, so its routing disappears with the next render. The config is then written in
//! Higress's WasmPlugin shape, where each `_rules_` entry's match list becomes a `matchRules[]`
//! entry's `ingress`/`domain`/`service` and the rest its `config` (higress-wasm.md §2).

use canary_core::{config::RuleConfig, ConfigError, PluginConfig, Router};
use serde_json::{json, Map, Value};

use crate::crd::Rollout;

pub const WASMPLUGIN_API_VERSION: &str = "extensions.higress.io/v1alpha1";
pub const WASMPLUGIN_KIND: &str = "WasmPlugin";
/// Default name and namespace of the shared WasmPlugin (Higress only reads WasmPlugins in its
/// own namespace).
pub const DEFAULT_PLUGIN_NAME: &str = "higress-canary";
pub const DEFAULT_PLUGIN_NAMESPACE: &str = "higress-system";

const MATCH_KEYS: [(&str, &str); 3] = [
    ("_match_route_", "ingress"),
    ("_match_domain_", "domain"),
    ("_match_service_", "service"),
];

/// The plugin config for a set of Rollouts, and the rules left out of it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rendered {
    pub config: PluginConfig,
    /// Rules the plugin would reject next to the others (for example a route already claimed
    /// by an earlier Rollout), with the reason. The planner refuses such rules, so this stays
    /// empty unless someone edited a status by hand.
    pub skipped: Vec<(String, ConfigError)>,
}

/// Renders the plugin config from every Rollout's current rule, ordered by rollout
/// (`<namespace>/<name>`) so the output does not depend on list order.
pub fn plugin_config(rollouts: &[Rollout]) -> Rendered {
    let mut rules: Vec<&RuleConfig> = rollouts.iter().filter_map(Rollout::plugin_rule).collect();
    rules.sort_by(|a, b| a.rollout.cmp(&b.rollout));
    rules_config(rules.into_iter().cloned())
}

/// Builds a valid config from rules in order, leaving out any rule the plugin would reject
/// (alone or next to the ones before it).
pub fn rules_config(rules: impl IntoIterator<Item = RuleConfig>) -> Rendered {
    let mut rendered = Rendered::default();
    let candidates: Vec<RuleConfig> = rules.into_iter().collect();
    // Fast path: the whole set is valid, one compile.
    let all = PluginConfig {
        global: None,
        rules: candidates.clone(),
    };
    if Router::new(&all).is_ok() {
        rendered.config = all;
        return rendered;
    }
    for rule in candidates {
        rendered.config.rules.push(rule);
        if let Err(e) = Router::new(&rendered.config) {
            // Just pushed, so `pop` returns it.
            if let Some(rule) = rendered.config.rules.pop() {
                rendered.skipped.push((rule.rollout, e));
            }
        }
    }
    rendered
}

/// The `defaultConfig` and `matchRules` of a WasmPlugin spec for a config.
pub fn spec_fields(config: &PluginConfig) -> (Value, Vec<Value>) {
    let default_config = match &config.global {
        Some(global) => serde_json::to_value(global).unwrap_or_else(|_| json!({})),
        None => json!({}),
    };
    let match_rules = config.rules.iter().map(match_rule).collect();
    (default_config, match_rules)
}

fn match_rule(rule: &RuleConfig) -> Value {
    // RuleConfig is plain data; serializing it to a Value cannot fail.
    let mut config = match serde_json::to_value(rule) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    let mut entry = Map::new();
    for (wire_key, higress_key) in MATCH_KEYS {
        if let Some(list) = config.remove(wire_key) {
            entry.insert(higress_key.to_owned(), list);
        }
    }
    entry.insert("config".to_owned(), Value::Object(config));
    Value::Object(entry)
}

/// Reads the plugin config back from a WasmPlugin's `spec`, the way Higress converts it for
/// the plugin.
pub fn parse_spec(spec: &Value) -> Result<PluginConfig, ConfigError> {
    let mut top = match spec.get("defaultConfig") {
        Some(Value::Object(map)) if !disabled(spec, "defaultConfigDisable") => map.clone(),
        _ => Map::new(),
    };
    let rules: Vec<Value> = spec
        .get("matchRules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|r| !disabled(r, "configDisable"))
        .map(|r| {
            let mut rule = match r.get("config") {
                Some(Value::Object(map)) => map.clone(),
                _ => Map::new(),
            };
            for (wire_key, higress_key) in MATCH_KEYS {
                if let Some(list) = r.get(higress_key) {
                    rule.insert(wire_key.to_owned(), list.clone());
                }
            }
            Value::Object(rule)
        })
        .collect();
    if !rules.is_empty() {
        top.insert("_rules_".to_owned(), Value::Array(rules));
    }
    let bytes = serde_json::to_vec(&Value::Object(top)).unwrap_or_default();
    PluginConfig::from_json(&bytes)
}

fn disabled(v: &Value, key: &str) -> bool {
    v.get(key).and_then(Value::as_bool).unwrap_or(false)
}

/// Where the shared WasmPlugin lives and what it loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginRef {
    pub name: String,
    pub namespace: String,
    /// The plugin's `url` (`oci://…`, `file://…`, `https://…`).
    pub url: String,
}

impl Default for PluginRef {
    fn default() -> Self {
        Self {
            name: DEFAULT_PLUGIN_NAME.to_owned(),
            namespace: DEFAULT_PLUGIN_NAMESPACE.to_owned(),
            url: "oci://registry.example.com/higress-canary/plugin:0.1.0".to_owned(),
        }
    }
}

/// A whole WasmPlugin object for a config, as the controller creates it when missing. A
/// routing plugin fails open: a broken plugin should send traffic to stable, not fail it.
pub fn wasm_plugin(plugin: &PluginRef, config: &PluginConfig) -> Value {
    let (default_config, match_rules) = spec_fields(config);
    json!({
        "apiVersion": WASMPLUGIN_API_VERSION,
        "kind": WASMPLUGIN_KIND,
        "metadata": {"name": plugin.name, "namespace": plugin.namespace},
        "spec": {
            "url": plugin.url,
            "imagePullPolicy": "IfNotPresent",
            "failStrategy": "FAIL_OPEN",
            "defaultConfig": default_config,
            "matchRules": match_rules,
        },
    })
}

#[cfg(test)]
mod tests {
    use canary_core::config::Weight;

    use super::*;
    use crate::crd::{CanaryStatus, HigressStatus, RolloutStatus};

    fn rule(ns: &str, name: &str, ingress: &str, weight: u8) -> RuleConfig {
        RuleConfig {
            match_route: vec![format!("{ns}/{ingress}"), format!("{ns}/{ingress}-canary")],
            rollout: format!("{ns}/{name}"),
            tag_header: "x-higress-canary".into(),
            tag_value: name.into(),
            weight: Weight::from_percent(weight).expect("test weights are percentages"),
            ..Default::default()
        }
    }

    fn rollout_with(rule: Option<RuleConfig>) -> Rollout {
        Rollout {
            status: Some(RolloutStatus {
                canary_status: Some(CanaryStatus {
                    higress: Some(HigressStatus {
                        rule,
                        routing_update_time: None,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn rules_come_from_rollout_statuses_in_rollout_order() {
        let rollouts = [
            rollout_with(Some(rule("shop", "web", "web", 30))),
            rollout_with(None),
            rollout_with(Some(rule("default", "rollouts-demo", "demo", 10))),
            Rollout::default(),
        ];
        let rendered = plugin_config(&rollouts);
        let names: Vec<_> = rendered.config.rules.iter().map(|r| &r.rollout).collect();
        assert_eq!(names, ["default/rollouts-demo", "shop/web"]);
        assert!(rendered.skipped.is_empty());
    }

    #[test]
    fn no_active_rollout_renders_an_empty_config() {
        let rendered = plugin_config(&[rollout_with(None)]);
        assert_eq!(rendered.config, PluginConfig::default());
        let (default_config, match_rules) = spec_fields(&rendered.config);
        assert_eq!(default_config, json!({}));
        assert!(match_rules.is_empty());
    }

    #[test]
    fn match_routes_become_the_ingress_list_and_the_rest_the_config() {
        let config = PluginConfig {
            global: None,
            rules: vec![rule("default", "rollouts-demo", "demo", 10)],
        };
        let (_, match_rules) = spec_fields(&config);
        assert_eq!(
            match_rules,
            [json!({
                "ingress": ["default/demo", "default/demo-canary"],
                "config": {
                    "rollout": "default/rollouts-demo",
                    "tagHeader": "x-higress-canary",
                    "tagValue": "rollouts-demo",
                    "weight": 10,
                },
            })]
        );
    }

    #[test]
    fn a_rendered_spec_parses_back_to_the_same_config() {
        let config = PluginConfig {
            global: None,
            rules: vec![
                rule("default", "rollouts-demo", "demo", 10),
                rule("shop", "web", "web", 0),
            ],
        };
        let object = wasm_plugin(&PluginRef::default(), &config);
        assert_eq!(parse_spec(&object["spec"]), Ok(config));
    }

    #[test]
    fn disabled_match_rules_are_not_seen_by_the_plugin() {
        let spec = json!({"matchRules": [
            {"ingress": ["default/demo"], "configDisable": true,
             "config": {"rollout": "default/a", "tagValue": "a"}},
        ]});
        assert_eq!(parse_spec(&spec), Ok(PluginConfig::default()));
    }

    #[test]
    fn a_rule_claiming_a_route_already_taken_is_skipped_not_fatal() {
        let rendered = rules_config([
            rule("default", "first", "demo", 10),
            rule("default", "second", "demo", 20),
            rule("default", "third", "other", 30),
        ]);
        let kept: Vec<_> = rendered.config.rules.iter().map(|r| &r.rollout).collect();
        assert_eq!(kept, ["default/first", "default/third"]);
        assert_eq!(rendered.skipped.len(), 1);
        assert_eq!(rendered.skipped[0].0, "default/second");
    }
}
