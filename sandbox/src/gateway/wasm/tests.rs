use std::path::Path;

use kube::api::DynamicObject;
use serde_json::{json, Value};

use super::*;
use crate::gateway::model::{EnvVar, Phase, PluginOutcome, WasmFilter};
use crate::gateway::TranslateConfig;

fn plugin(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "extensions.higress.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"name": name, "namespace": "higress-system"},
        "spec": spec,
    }))
    .expect("valid WasmPlugin")
}

fn config() -> TranslateConfig {
    TranslateConfig {
        plugin_root: "/ws".into(),
        ..TranslateConfig::default()
    }
}

fn filter(spec: Value) -> WasmFilter {
    match convert(&plugin("canary", spec), &config()) {
        PluginOutcome::Filter(f) => f,
        other => panic!("expected a filter, got {other:?}"),
    }
}

fn config_of(spec: Value) -> Option<String> {
    filter(spec).configuration
}

#[test]
fn the_reference_example_converts_to_the_documented_json() {
    // higress-wasm.md §2: defaultConfig at the top, each rule in `_rules_` with its match key
    // inside; keys come out sorted, as protobuf Struct marshalling writes them.
    let spec = json!({
        "url": "file:///opt/plugins/canary.wasm",
        "defaultConfig": {"overrideHeader": "x-canary-override"},
        "matchRules": [
            {"ingress": ["default/shop"],
             "config": {"routeHeader": "x-canary", "stable": "v1", "canary": "v2", "weight": 10,
                        "headerMatch": {"x-beta": "true"}, "cookieMatch": {"beta": "1"}}},
            {"domain": ["*.example.com", "api.example.org"],
             "config": {"routeHeader": "x-canary", "stable": "v1", "canary": "v2", "weight": 0}},
            {"service": ["shop.default.svc.cluster.local:80"], "configDisable": false, "routeType": "HTTP",
             "config": {"routeHeader": "x-canary", "stable": "v1", "canary": "v2", "weight": 50}},
        ],
    });
    let want = json!({
        "overrideHeader": "x-canary-override",
        "_rules_": [
            {"_match_route_": ["default/shop"], "routeHeader": "x-canary", "stable": "v1", "canary": "v2",
             "weight": 10, "headerMatch": {"x-beta": "true"}, "cookieMatch": {"beta": "1"}},
            {"_match_domain_": ["*.example.com", "api.example.org"], "routeHeader": "x-canary",
             "stable": "v1", "canary": "v2", "weight": 0},
            {"_match_service_": ["shop.default.svc.cluster.local:80"], "routeHeader": "x-canary",
             "stable": "v1", "canary": "v2", "weight": 50},
        ],
    });
    let got = config_of(spec).expect("configuration");
    assert_eq!(serde_json::from_str::<Value>(&got).unwrap(), want);
    assert!(
        got.starts_with(r#"{"_rules_":[{"_match_route_":["default/shop"],"canary":"v2","#),
        "{got}"
    );
}

#[test]
fn plugin_configs_follow_higress_rules() {
    let rule = |extra: Value| {
        let mut r = json!({"ingress": ["default/demo"], "config": {"weight": 10}});
        for (k, v) in extra.as_object().unwrap() {
            r[k] = v.clone();
        }
        r
    };
    let cases: Vec<(&str, Value, Option<&str>)> = vec![
        ("no config at all", json!({}), None),
        (
            "empty defaultConfig",
            json!({"defaultConfig": {}}),
            Some("{}"),
        ),
        (
            "defaultConfig only",
            json!({"defaultConfig": {"a": 1}}),
            Some(r#"{"a":1}"#),
        ),
        (
            "defaultConfigDisable drops the global config",
            json!({"defaultConfigDisable": true, "defaultConfig": {"a": 1}, "matchRules": [rule(json!({}))]}),
            Some(r#"{"_rules_":[{"_match_route_":["default/demo"],"weight":10}]}"#),
        ),
        (
            "disabled rules are skipped",
            json!({"defaultConfig": {"a": 1},
                   "matchRules": [rule(json!({"configDisable": true})), rule(json!({"ingress": ["default/other"]}))]}),
            Some(r#"{"_rules_":[{"_match_route_":["default/other"],"weight":10}],"a":1}"#),
        ),
        (
            "all rules disabled leave the global config",
            json!({"defaultConfig": {"a": 1}, "matchRules": [rule(json!({"configDisable": true}))]}),
            Some(r#"{"a":1}"#),
        ),
        (
            "all rules disabled and no global config leave an empty document",
            json!({"matchRules": [rule(json!({"configDisable": true}))]}),
            Some("{}"),
        ),
        (
            "a rule without config matches with an empty config",
            json!({"matchRules": [{"ingress": ["default/demo"]}]}),
            Some(r#"{"_rules_":[{"_match_route_":["default/demo"]}]}"#),
        ),
        (
            "several match kinds in one rule are all kept",
            json!({"matchRules": [{"ingress": ["default/demo"], "domain": ["a.example.com"], "config": {}}]}),
            Some(
                r#"{"_rules_":[{"_match_domain_":["a.example.com"],"_match_route_":["default/demo"]}]}"#,
            ),
        ),
        (
            "pluginConfig is passed through and wins",
            json!({"pluginConfig": {"x": [1, 2]}, "defaultConfig": {"a": 1},
                   "matchRules": [{"config": {}}]}),
            Some(r#"{"x":[1,2]}"#),
        ),
        (
            "numbers are doubles: integral ones print without a fraction",
            json!({"defaultConfig": {"weight": 10.0, "half": 12.5, "big": 1e15}}),
            Some(r#"{"big":1000000000000000,"half":12.5,"weight":10}"#),
        ),
    ];
    for (name, spec, want) in cases {
        let mut spec = spec;
        spec["url"] = json!("dist/plugin.wasm");
        assert_eq!(config_of(spec).as_deref(), want, "{name}");
    }
}

#[test]
fn a_rule_without_a_match_list_invalidates_the_plugin() {
    let spec = json!({"url": "dist/plugin.wasm",
                      "matchRules": [{"ingress": ["default/demo"], "config": {}}, {"ingress": [], "config": {"w": 1}}]});
    match convert(&plugin("canary", spec), &config()) {
        PluginOutcome::Invalid(reason) => {
            assert!(reason.contains("higress-system.canary"), "{reason}");
            assert!(reason.contains("matchRules[1]"), "{reason}");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn a_disabled_global_config_without_enabled_rules_removes_the_plugin() {
    for spec in [
        json!({"url": "dist/plugin.wasm", "defaultConfigDisable": true, "defaultConfig": {"a": 1}}),
        json!({"url": "dist/plugin.wasm", "defaultConfigDisable": true,
               "matchRules": [{"ingress": ["default/demo"], "configDisable": true}]}),
    ] {
        assert_eq!(
            convert(&plugin("canary", spec), &config()),
            PluginOutcome::Disabled
        );
    }
}

#[test]
fn urls_name_local_files_only() {
    let root = Path::new("/ws");
    let cases: &[(&str, Result<&str, &str>)] = &[
        ("file:///opt/plugins/p.wasm", Ok("/opt/plugins/p.wasm")),
        ("/abs/p.wasm", Ok("/abs/p.wasm")),
        ("dist/plugin.wasm", Ok("/ws/dist/plugin.wasm")),
        ("file://dist/plugin.wasm", Ok("/ws/dist/plugin.wasm")),
        ("oci://registry.example.com/p:1.0", Err("oci://")),
        ("https://example.com/p.wasm", Err("https://")),
        ("", Err("empty")),
    ];
    for (url, want) in cases {
        match (wasm_path(url, root, None), want) {
            (Ok(got), Ok(want)) => assert_eq!(got, Path::new(want), "{url}"),
            (Err(got), Err(want)) => assert!(got.contains(want), "{url}: {got}"),
            (got, want) => panic!("{url}: got {got:?}, want {want:?}"),
        }
    }
    match convert(
        &plugin("canary", json!({"url": "oci://registry.example.com/p:1.0"})),
        &config(),
    ) {
        PluginOutcome::Unsupported(reason) => assert!(reason.contains("not supported"), "{reason}"),
        other => panic!("expected Unsupported, got {other:?}"),
    }
}

#[test]
fn filter_fields_come_from_the_spec() {
    let f = filter(json!({
        "url": "dist/plugin.wasm",
        "pluginName": "canary-root",
        "phase": "AUTHZ",
        "priority": 900,
        "failStrategy": "FAIL_OPEN",
        "vmConfig": {"env": [{"name": "A", "value": "1"}, {"name": "POD", "valueFrom": "HOST"}]},
    }));
    assert_eq!(f.name, "higress-system.canary");
    assert_eq!(f.root_id, "canary-root");
    assert_eq!(f.wasm, Path::new("/ws/dist/plugin.wasm"));
    assert_eq!(f.phase, Phase::Authz);
    assert_eq!(f.priority, 900);
    assert!(f.fail_open);
    assert_eq!(
        f.env,
        vec![
            EnvVar::Inline {
                name: "A".into(),
                value: "1".into()
            },
            EnvVar::Host { name: "POD".into() },
        ]
    );
    let d = filter(json!({"url": "dist/plugin.wasm"}));
    assert_eq!(
        (d.phase, d.priority, d.fail_open, d.root_id.as_str()),
        (Phase::Unspecified, 0, false, "")
    );
    assert!(!filter(json!({"url": "x.wasm", "failStrategy": "FAIL_CLOSE"})).fail_open);
}

#[test]
fn filters_are_ordered_by_phase_then_priority_then_name() {
    let f = |name: &str, phase: &str, priority: Option<i64>| {
        let mut spec = json!({"url": "x.wasm", "phase": phase});
        if let Some(p) = priority {
            spec["priority"] = json!(p);
        }
        match convert(&plugin(name, spec), &config()) {
            PluginOutcome::Filter(f) => f,
            other => panic!("{other:?}"),
        }
    };
    let mut filters = vec![
        f("z-unspecified", "UNSPECIFIED_PHASE", Some(1000)),
        f("stats", "STATS", None),
        f("authz-low", "AUTHZ", Some(1)),
        f("authz-high", "AUTHZ", Some(10)),
        f("b-authn", "AUTHN", Some(5)),
        f("a-authn", "AUTHN", Some(5)),
        f("a-unspecified", "", None),
    ];
    order(&mut filters);
    let names: Vec<&str> = filters
        .iter()
        .map(|f| f.name.trim_start_matches("higress-system."))
        .collect();
    assert_eq!(
        names,
        vec![
            "a-authn",
            "b-authn",
            "authz-high",
            "authz-low",
            "stats",
            "z-unspecified",
            "a-unspecified"
        ]
    );
}

#[test]
fn oci_urls_can_be_served_from_a_local_file() {
    let local = Path::new("/ws/dist/plugin.wasm");
    let oci = "oci://registry.example.com/higress-canary/plugin:0.1.0";
    assert_eq!(
        wasm_path(oci, Path::new("/ws"), Some(local)),
        Ok(local.to_path_buf())
    );
    // Only oci://: other schemes stay unsupported.
    assert!(wasm_path("https://example.com/p.wasm", Path::new("/ws"), Some(local)).is_err());
    let with_oci = TranslateConfig {
        oci_wasm: Some(local.to_path_buf()),
        ..config()
    };
    match convert(&plugin("canary", json!({"url": oci})), &with_oci) {
        PluginOutcome::Filter(f) => assert_eq!(f.wasm, local),
        other => panic!("expected a filter, got {other:?}"),
    }
}
