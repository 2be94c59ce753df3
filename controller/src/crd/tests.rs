use std::path::PathBuf;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResourceExt;
use serde_json::{json, Value};

use super::*;

const CHECKED_IN_CRD: &str = "../deploy/crds/rollouts.kruise.io.yaml";
const FIXTURES: [&str; 3] = ["demo-app.yaml", "rollout-canary.yaml", "rollout-ab.yaml"];
const ROLLOUT_FIXTURES: [&str; 2] = ["rollout-canary.yaml", "rollout-ab.yaml"];
/// The line that ends a fixture's header; below it the file is the shared scenario verbatim.
const FIXTURE_MARKER: &str = "# ---8<---\n";

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fixture without its header: the shared scenario's bytes.
fn fixture(name: &str) -> String {
    let path = crate_dir().join("tests/fixtures").join(name);
    let text = std::fs::read_to_string(&path).expect("fixture exists");
    let (_, body) = text
        .split_once(FIXTURE_MARKER)
        .expect("fixture has the header marker");
    body.to_owned()
}

fn crd_json() -> Value {
    serde_json::to_value(Rollout::crd()).expect("CRD serializes")
}

fn schema() -> Value {
    crd_json()["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

#[test]
fn generated_crd_matches_the_checked_in_file() {
    let path = crate_dir().join(CHECKED_IN_CRD);
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == crate::crd_yaml(),
        "{} is stale; regenerate it with\n  cargo run -p higress-canary -- crd > deploy/crds/rollouts.kruise.io.yaml",
        path.display()
    );
}

#[test]
fn fixtures_are_byte_identical_to_the_shared_scenarios() {
    let shared = crate_dir().join("../../shared/scenarios");
    if !shared.is_dir() {
        // A checkout without the shared directory: the fixtures are the only copy.
        return;
    }
    for name in FIXTURES {
        let original = std::fs::read_to_string(shared.join(name)).expect("shared scenario");
        assert!(
            fixture(name) == original,
            "tests/fixtures/{name} differs from ../shared/scenarios/{name}"
        );
    }
}

#[test]
fn crd_is_namespaced_kruise_v1alpha1_with_a_status_subresource() {
    let crd = crd_json();
    // `<plural>.<group>`, as Kruise names it.
    assert_eq!(crd["metadata"]["name"], "rollouts.rollouts.kruise.io");
    assert_eq!(crd["spec"]["group"], "rollouts.kruise.io");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(crd["spec"]["names"]["kind"], "Rollout");
    assert_eq!(crd["spec"]["names"]["plural"], "rollouts");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert_eq!(version["subresources"]["status"], json!({}));
}

#[test]
fn printer_columns_are_kruises() {
    let columns: Vec<(String, String)> = crd_json()["spec"]["versions"][0]
        ["additionalPrinterColumns"]
        .as_array()
        .expect("printer columns")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_owned(),
                c["jsonPath"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("STATUS", ".status.phase"),
        ("CANARY_STEP", ".status.canaryStatus.currentStepIndex"),
        ("CANARY_STATE", ".status.canaryStatus.currentStepState"),
        ("MESSAGE", ".status.message"),
        ("AGE", ".metadata.creationTimestamp"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
    assert_eq!(columns, expected);
}

#[test]
fn status_enums_are_spelled_as_in_kruise() {
    let states = [
        (StepState::StepUpgrade, "StepUpgrade"),
        (StepState::StepTrafficRouting, "StepTrafficRouting"),
        (StepState::StepMetricsAnalysis, "StepMetricsAnalysis"),
        (StepState::StepPaused, "StepPaused"),
        (StepState::StepReady, "StepReady"),
        (StepState::Completed, "Completed"),
    ];
    for (state, name) in states {
        assert_eq!(
            serde_json::to_value(state).expect("serializes"),
            json!(name)
        );
    }
    let phases = [
        (RolloutPhase::Initial, "Initial"),
        (RolloutPhase::Healthy, "Healthy"),
        (RolloutPhase::Progressing, "Progressing"),
        (RolloutPhase::Terminating, "Terminating"),
        (RolloutPhase::Disabled, "Disabled"),
    ];
    for (phase, name) in phases {
        assert_eq!(
            serde_json::to_value(phase).expect("serializes"),
            json!(name)
        );
    }
    let state_enum = &schema()["properties"]["status"]["properties"]["canaryStatus"]["properties"]
        ["currentStepState"]["enum"];
    assert_eq!(
        state_enum,
        &json!([
            "StepUpgrade",
            "StepTrafficRouting",
            "StepMetricsAnalysis",
            "StepPaused",
            "StepReady",
            "Completed"
        ])
    );
}

#[test]
fn canary_status_uses_kruises_field_names() {
    let props = &schema()["properties"]["status"]["properties"]["canaryStatus"]["properties"];
    for field in [
        "observedWorkloadGeneration",
        "observedRolloutID",
        "rolloutHash",
        "stableRevision",
        "canaryRevision",
        "podTemplateHash",
        "canaryReplicas",
        "canaryReadyReplicas",
        "currentStepIndex",
        "nextStepIndex",
        "currentStepState",
        "message",
        "lastUpdateTime",
    ] {
        assert!(props.get(field).is_some(), "canaryStatus.{field} missing");
    }
    let status = &schema()["properties"]["status"]["properties"];
    for field in ["observedGeneration", "phase", "conditions", "message"] {
        assert!(status.get(field).is_some(), "status.{field} missing");
    }
}

#[test]
fn scenario_rollouts_parse_and_serialize_without_losing_a_field() {
    for name in ROLLOUT_FIXTURES {
        let original: Value = serde_yaml::from_str(&fixture(name)).expect("fixture is YAML");
        let rollout: Rollout = serde_yaml::from_str(&fixture(name)).expect("fixture is a Rollout");
        let written = serde_json::to_value(&rollout).expect("serializes");
        assert_contains(&written, &original, name);
    }
}

#[test]
fn scenario_rollouts_fit_the_crd_schema_so_nothing_is_pruned() {
    for name in ROLLOUT_FIXTURES {
        let original: Value = serde_yaml::from_str(&fixture(name)).expect("fixture is YAML");
        let mut problems = Vec::new();
        check_against_schema(&original, &schema(), "$".to_owned(), &mut problems);
        assert!(problems.is_empty(), "{name}: {problems:#?}");
    }
}

#[test]
fn the_legacy_traffic_routing_type_key_is_kept() {
    let rollout: Rollout =
        serde_yaml::from_str(&fixture("rollout-canary.yaml")).expect("fixture is a Rollout");
    let canary = rollout.spec.strategy.canary.expect("canary strategy");
    assert_eq!(canary.traffic_routings[0].r#type.as_deref(), Some("nginx"));
    assert_eq!(
        canary.traffic_routings[0].grace_period_seconds,
        DEFAULT_GRACE_PERIOD_SECONDS
    );
    assert_eq!(canary.steps[0].replicas, Some(IntOrString::Int(1)));
    assert_eq!(canary.steps[0].pause, RolloutPause { duration: None });
}

#[test]
fn kubectl_kruise_approve_is_a_status_merge_patch_we_can_read() {
    let mut status = serde_json::to_value(RolloutStatus {
        canary_status: Some(CanaryStatus {
            current_step_index: 1,
            current_step_state: StepState::StepPaused,
            ..Default::default()
        }),
        ..Default::default()
    })
    .expect("serializes");
    // What `kubectl-kruise rollout approve` sends to /status, applied as a JSON merge patch.
    let patch = json!({"canaryStatus": {"currentStepState": "StepReady"}});
    merge(&mut status, &patch);
    let status: RolloutStatus = serde_json::from_value(status).expect("patched status parses");
    let canary = status.canary_status.expect("canary status");
    assert_eq!(canary.current_step_state, StepState::StepReady);
    assert_eq!(canary.current_step_index, 1);
}

#[test]
fn a_malformed_plugin_rule_in_a_status_is_dropped_not_fatal() {
    let status = json!({"canaryStatus": {"higress": {"rule": {"weight": "lots"}}}});
    let status: RolloutStatus = serde_json::from_value(status).expect("status still parses");
    let higress = status
        .canary_status
        .and_then(|c| c.higress)
        .expect("higress");
    assert_eq!(higress.rule, None);
}

#[test]
fn extension_types_mirror_the_plugin_wire_types_field_for_field() {
    let sticky = Sticky {
        header: Some("x-user-id".into()),
        cookie: Some("uid".into()),
        bucket_cookie: Some(BucketCookie {
            name: "bucket".into(),
            max_age_seconds: Some(600),
        }),
    };
    let over = Override {
        header: Some("x-force".into()),
        secret: Some("s3cret".into()),
        secret_header: Some("x-force-secret".into()),
    };
    let group = HttpRouteMatch {
        headers: vec![NameValueMatch {
            r#type: Some(MatchType::RegularExpression),
            name: "user-agent".into(),
            value: ".*android.*".into(),
        }],
        cookies: vec![NameValueMatch {
            r#type: None,
            name: "beta".into(),
            value: "1".into(),
        }],
        query_params: vec![NameValueMatch {
            r#type: Some(MatchType::Prefix),
            name: "v".into(),
            value: "2".into(),
        }],
        path: Some(PathMatch {
            r#type: Some(MatchType::Prefix),
            value: "/api/".into(),
        }),
    };
    // The CRD's JSON reads as the plugin's JSON, and `From` agrees with it.
    let as_wire: wire::Sticky =
        serde_json::from_value(serde_json::to_value(&sticky).expect("ser")).expect("wire sticky");
    assert_eq!(as_wire, wire::Sticky::from(&sticky));
    let as_wire: wire::Override =
        serde_json::from_value(serde_json::to_value(&over).expect("ser")).expect("wire override");
    assert_eq!(as_wire, wire::Override::from(&over));
    for (crd, wire_match) in [
        (&group.headers[0], wire::ValueMatch::from(&group.headers[0])),
        (&group.cookies[0], wire::ValueMatch::from(&group.cookies[0])),
        (
            &group.query_params[0],
            wire::ValueMatch::from(&group.query_params[0]),
        ),
    ] {
        let as_wire: wire::ValueMatch =
            serde_json::from_value(serde_json::to_value(crd).expect("ser")).expect("wire match");
        assert_eq!(as_wire, wire_match);
    }
    let path = group.path.as_ref().expect("path");
    let as_wire: wire::PathMatch =
        serde_json::from_value(serde_json::to_value(path).expect("ser")).expect("wire path");
    assert_eq!(as_wire, wire::PathMatch::from(path));
}

// === helpers ===

/// Every field of `want` is in `got` with the same value (`got` may add defaults).
fn assert_contains(got: &Value, want: &Value, at: &str) {
    match (got, want) {
        (Value::Object(got), Value::Object(want)) => {
            for (k, v) in want {
                let g = got
                    .get(k)
                    .unwrap_or_else(|| panic!("{at}.{k} was lost in the round trip"));
                assert_contains(g, v, &format!("{at}.{k}"));
            }
        }
        (Value::Array(got), Value::Array(want)) => {
            assert_eq!(got.len(), want.len(), "{at}: list length changed");
            for (i, (g, w)) in got.iter().zip(want).enumerate() {
                assert_contains(g, w, &format!("{at}[{i}]"));
            }
        }
        (Value::Number(g), Value::Number(w)) => {
            assert_eq!(g.as_f64(), w.as_f64(), "{at}")
        }
        _ => assert_eq!(got, want, "{at}"),
    }
}

/// A structural check of a document against an OpenAPI v3 schema, as the API server prunes:
/// every field must be declared (or under `x-kubernetes-preserve-unknown-fields`) and have a
/// matching type.
fn check_against_schema(value: &Value, schema: &Value, at: String, problems: &mut Vec<String>) {
    if schema["x-kubernetes-preserve-unknown-fields"] == json!(true) {
        return;
    }
    if schema["x-kubernetes-int-or-string"] == json!(true) {
        if !(value.is_i64() || value.is_string()) {
            problems.push(format!("{at}: expected an int or a string"));
        }
        return;
    }
    let ty = schema["type"].as_str().unwrap_or_default();
    match value {
        Value::Object(map) => {
            if !ty.is_empty() && ty != "object" {
                problems.push(format!("{at}: object where the schema has {ty}"));
                return;
            }
            for (k, v) in map {
                if k == "metadata" && at == "$" {
                    // ObjectMeta is validated by the API server itself, never pruned.
                    continue;
                }
                let at = format!("{at}.{k}");
                if let Some(prop) = schema["properties"].get(k) {
                    check_against_schema(v, prop, at, problems);
                } else if let Some(extra) = schema.get("additionalProperties") {
                    check_against_schema(v, extra, at, problems);
                } else if !(at == "$.apiVersion" || at == "$.kind") {
                    problems.push(format!("{at}: not in the schema, would be pruned"));
                }
            }
        }
        Value::Array(items) => {
            if ty != "array" {
                problems.push(format!("{at}: array where the schema has {ty}"));
                return;
            }
            for (i, item) in items.iter().enumerate() {
                check_against_schema(item, &schema["items"], format!("{at}[{i}]"), problems);
            }
        }
        Value::String(_) if ty != "string" => problems.push(format!("{at}: string, schema {ty}")),
        Value::Number(n) if !(ty == "integer" && n.is_i64() || ty == "number") => {
            problems.push(format!("{at}: number, schema {ty}"))
        }
        Value::Bool(_) if ty != "boolean" => problems.push(format!("{at}: bool, schema {ty}")),
        _ => {}
    }
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}
