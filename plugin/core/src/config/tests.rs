use wasm_bindgen_test::wasm_bindgen_test;

use super::*;
use crate::config::{BucketCookie, MatchType, PathMatch};

/// The exact JSON the controller writes for a full rule; pins the wire shape.
const FULL_RULE_JSON: &str = concat!(
    r#"{"_rules_":[{"_match_route_":["default/demo","default/demo-canary"],"#,
    r#""rollout":"default/rollouts-demo","tagHeader":"x-higress-canary","tagValue":"demo-v2","#,
    r#""weight":12.5,"matches":[{"headers":[{"name":"user-agent","value":"android"}],"#,
    r#""cookies":[{"name":"beta","type":"Prefix","value":"1"}],"#,
    r#""queryParams":[{"name":"canary","type":"RegularExpression","value":"true|yes"}],"#,
    r#""path":{"type":"Prefix","value":"/api"}}],"#,
    r#""sticky":{"header":"x-user-id","cookie":"uid","#,
    r#""bucketCookie":{"name":"canary-bucket","maxAgeSeconds":3600}},"#,
    r#""override":{"header":"x-canary-override","secret":"s3cret","#,
    r#""secretHeader":"x-canary-override-secret"},"versionHeader":"x-canary-version"}]}"#
);

fn full_rule() -> RuleConfig {
    RuleConfig {
        match_route: vec!["default/demo".into(), "default/demo-canary".into()],
        rollout: "default/rollouts-demo".into(),
        tag_header: "x-higress-canary".into(),
        tag_value: "demo-v2".into(),
        weight: Weight::from_basis_points(1250).unwrap(),
        matches: vec![MatchGroup {
            headers: vec![ValueMatch {
                name: "user-agent".into(),
                r#type: MatchType::Exact,
                value: "android".into(),
            }],
            cookies: vec![ValueMatch {
                name: "beta".into(),
                r#type: MatchType::Prefix,
                value: "1".into(),
            }],
            query_params: vec![ValueMatch {
                name: "canary".into(),
                r#type: MatchType::RegularExpression,
                value: "true|yes".into(),
            }],
            path: Some(PathMatch {
                r#type: MatchType::Prefix,
                value: "/api".into(),
            }),
        }],
        sticky: Some(Sticky {
            header: Some("x-user-id".into()),
            cookie: Some("uid".into()),
            bucket_cookie: Some(BucketCookie {
                name: "canary-bucket".into(),
                max_age_seconds: 3600,
            }),
        }),
        r#override: Some(Override {
            header: "x-canary-override".into(),
            secret: Some("s3cret".into()),
            secret_header: "x-canary-override-secret".into(),
        }),
        version_header: Some("x-canary-version".into()),
        ..RuleConfig::default()
    }
}

#[wasm_bindgen_test(unsupported = test)]
fn full_rule_serializes_to_the_pinned_json() {
    let config = PluginConfig {
        global: None,
        rules: vec![full_rule()],
    };
    assert_eq!(config.to_json(), FULL_RULE_JSON);
}

#[wasm_bindgen_test(unsupported = test)]
fn pinned_json_parses_back_to_the_same_config() {
    let parsed = PluginConfig::from_json(FULL_RULE_JSON.as_bytes()).unwrap();
    assert_eq!(
        parsed,
        PluginConfig {
            global: None,
            rules: vec![full_rule()]
        }
    );
}

#[wasm_bindgen_test(unsupported = test)]
fn minimal_rule_gets_documented_defaults() {
    let json =
        r#"{"_rules_":[{"_match_route_":["default/demo"],"rollout":"default/r","tagValue":"v2"}]}"#;
    let rule = &PluginConfig::from_json(json.as_bytes()).unwrap().rules[0];
    assert_eq!(rule.tag_header, "x-higress-canary");
    assert_eq!(rule.weight, Weight::ZERO);
    assert!(rule.matches.is_empty() && rule.sticky.is_none() && rule.r#override.is_none());
    assert_eq!(rule.version_header, None);
    // And the minimal rule writes back without any defaulted field except the tag header.
    assert_eq!(
        PluginConfig::from_json(json.as_bytes()).unwrap().to_json(),
        r#"{"_rules_":[{"_match_route_":["default/demo"],"rollout":"default/r","tagHeader":"x-higress-canary","tagValue":"v2"}]}"#
    );
}

#[wasm_bindgen_test(unsupported = test)]
fn override_defaults_fill_in_header_names() {
    let json =
        r#"{"_rules_":[{"_match_route_":["a"],"rollout":"r","tagValue":"v","override":{}}]}"#;
    let rule = &PluginConfig::from_json(json.as_bytes()).unwrap().rules[0];
    assert_eq!(rule.r#override, Some(Override::default()));
    assert_eq!(Override::default().header, "x-canary-override");
    assert_eq!(
        Override::default().secret_header,
        "x-canary-override-secret"
    );
}

#[wasm_bindgen_test(unsupported = test)]
fn empty_and_blank_configs_are_empty() {
    for json in ["", "  \n", "{}", r#"{"_rules_":[]}"#, r#"{"_rules_":null}"#] {
        assert_eq!(
            PluginConfig::from_json(json.as_bytes()).unwrap(),
            PluginConfig::default(),
            "{json:?}"
        );
    }
}

#[wasm_bindgen_test(unsupported = test)]
fn top_level_rule_fields_form_the_global_rule() {
    let json = r#"{"rollout":"default/all","tagValue":"v2","weight":5,"_rules_":[]}"#;
    let config = PluginConfig::from_json(json.as_bytes()).unwrap();
    let global = config.global.as_ref().unwrap();
    assert_eq!(global.rollout, "default/all");
    assert_eq!(global.weight, Weight::from_percent(5).unwrap());
    assert_eq!(
        config.to_json(),
        r#"{"rollout":"default/all","tagHeader":"x-higress-canary","tagValue":"v2","weight":5}"#
    );
}

#[wasm_bindgen_test(unsupported = test)]
fn weights_accept_integers_doubles_and_basis_points() {
    let cases: &[(&str, u16)] = &[
        ("0", 0),
        ("10", 1000),
        ("10.0", 1000),
        ("0.01", 1),
        ("12.5", 1250),
        ("33.33", 3333),
        ("99.99", 9999),
        ("100", 10_000),
        ("1e1", 1000),
    ];
    for (raw, bp) in cases {
        let json = format!(
            r#"{{"_rules_":[{{"_match_route_":["a"],"rollout":"r","tagValue":"v","weight":{raw}}}]}}"#
        );
        let config = PluginConfig::from_json(json.as_bytes()).unwrap();
        assert_eq!(config.rules[0].weight.basis_points(), *bp, "weight {raw}");
    }
}

#[wasm_bindgen_test(unsupported = test)]
fn weights_out_of_range_or_too_fine_are_rejected_with_their_path() {
    for raw in ["150", "-1", "100.01", "10.001", "0.005", "\"10\"", "true"] {
        let json = format!(
            r#"{{"_rules_":[{{"_match_route_":["a"],"rollout":"r","tagValue":"v","weight":{raw}}}]}}"#
        );
        let err = PluginConfig::from_json(json.as_bytes()).unwrap_err();
        assert_eq!(err.path(), "_rules_[0].weight", "weight {raw}: {err}");
    }
    let err = PluginConfig::from_json(
        br#"{"_rules_":[{"_match_route_":["a"],"rollout":"r","tagValue":"v","weight":150}]}"#,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "_rules_[0].weight: weight must be a percentage between 0 and 100, got 150"
    );
}

#[wasm_bindgen_test(unsupported = test)]
fn weight_serializes_whole_percent_as_integer_and_fractions_as_decimals() {
    let json = |bp| serde_json::to_string(&Weight::from_basis_points(bp).unwrap()).unwrap();
    assert_eq!(json(1000), "10");
    assert_eq!(json(1), "0.01");
    assert_eq!(json(3333), "33.33");
    assert_eq!(json(10_000), "100");
    assert_eq!(Weight::from_basis_points(10_001), None);
    assert_eq!(Weight::from_percent(101), None);
}

#[wasm_bindgen_test(unsupported = test)]
fn unknown_fields_are_rejected_with_their_path() {
    let cases = [
        (
            r#"{"_rules_":[{"_match_route_":["a"],"rollout":"r","tagValue":"v","weigth":10}]}"#,
            "_rules_[0].weigth",
        ),
        (
            r#"{"_rules_":[{"_match_route_":["a"],"rollout":"r","tagValue":"v"},{"_match_route_":["b"],"rollout":"s","tagValue":"v","matches":[{"header":[]}]}]}"#,
            "_rules_[1].matches[0].header",
        ),
        (
            r#"{"_rules_":[{"_match_route_":["a"],"rollout":"r","tagValue":"v","sticky":{"cookei":"uid"}}]}"#,
            "_rules_[0].sticky.cookei",
        ),
        (
            r#"{"_rules_":[{"_match_ingress_":["a"],"rollout":"r","tagValue":"v"}]}"#,
            "_rules_[0]._match_ingress_",
        ),
        (r#"{"tagValeu":"v","rollout":"r"}"#, "tagValeu"),
    ];
    for (json, path) in cases {
        let err = PluginConfig::from_json(json.as_bytes()).unwrap_err();
        assert!(matches!(err, ConfigError::Shape { .. }), "{err:?}");
        assert_eq!(err.path(), path, "{err}");
        assert!(err.to_string().contains("unknown field"), "{err}");
    }
}

#[wasm_bindgen_test(unsupported = test)]
fn missing_required_fields_and_wrong_types_name_their_rule() {
    let err = PluginConfig::from_json(br#"{"_rules_":[{"_match_route_":["a"],"tagValue":"v"}]}"#)
        .unwrap_err();
    assert_eq!(err.path(), "_rules_[0]");
    assert!(err.to_string().contains("missing field `rollout`"), "{err}");

    let err = PluginConfig::from_json(
        br#"{"_rules_":[{"_match_route_":"a","rollout":"r","tagValue":"v"}]}"#,
    )
    .unwrap_err();
    assert_eq!(err.path(), "_rules_[0]._match_route_");

    let err = PluginConfig::from_json(br#"{"_rules_":{}}"#).unwrap_err();
    assert_eq!(err.path(), "_rules_");

    let err = PluginConfig::from_json(br#"{"_rules_":[] "#).unwrap_err();
    assert!(matches!(err, ConfigError::Shape { .. }));

    let err = PluginConfig::from_json(b"[1]").unwrap_err();
    assert_eq!(err.path(), ".");
}

#[wasm_bindgen_test(unsupported = test)]
fn higress_converted_config_with_doubles_is_read() {
    // What Higress's protobuf Struct conversion produces: numbers as doubles, match key inside.
    let json = r#"{"_rules_":[{"_match_domain_":["*.example.com"],"rollout":"ns/r","tagValue":"v2",
        "weight":30.0,"sticky":{"bucketCookie":{"name":"b","maxAgeSeconds":600.0}}}]}"#;
    let config = PluginConfig::from_json(json.as_bytes());
    // maxAgeSeconds is an integer field: a double with no fraction must still be accepted.
    let config = config.unwrap();
    assert_eq!(config.rules[0].weight.basis_points(), 3000);
    assert_eq!(
        config.rules[0]
            .sticky
            .as_ref()
            .unwrap()
            .bucket_cookie
            .as_ref()
            .unwrap()
            .max_age_seconds,
        600
    );
}
