use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{json, Value};

use super::*;
use crate::gateway::model::{
    Destination, Endpoint, EnvVar, HeaderMatch, PathMatch, Phase, Route, StringMatch, VirtualHost,
    WasmFilter,
};

fn layout() -> Layout {
    Layout::new("/xds")
}

fn parse(s: &str) -> Value {
    serde_json::from_str(s).expect("valid JSON")
}

fn wasm_filter(fail_open: bool) -> WasmFilter {
    WasmFilter {
        name: "higress-system.canary".into(),
        root_id: String::new(),
        wasm: PathBuf::from("/ws/dist/plugin.wasm"),
        configuration: Some(r#"{"_rules_":[]}"#.into()),
        fail_open,
        phase: Phase::Unspecified,
        priority: 0,
        env: Vec::new(),
    }
}

#[test]
fn routes_render_as_envoy_route_matches() {
    let r = Route {
        name: "default/demo-canary".into(),
        path: PathMatch::Regex(r"/api((\/).*)?".into()),
        headers: vec![HeaderMatch {
            name: "x-canary".into(),
            value: StringMatch::Regex("always|v2".into()),
        }],
        destination: Destination::Cluster("c2".into()),
    };
    assert_eq!(
        route(&r),
        json!({
            "name": "default/demo-canary",
            "match": {
                "safe_regex": {"regex": r"/api((\/).*)?"},
                "headers": [{"name": "x-canary", "string_match": {"safe_regex": {"regex": "always|v2"}}}],
            },
            "route": {"cluster": "c2", "timeout": "0s"},
        })
    );
    let weighted = Route {
        name: "default/demo".into(),
        path: PathMatch::Exact("/version".into()),
        headers: vec![HeaderMatch {
            name: "x-canary".into(),
            value: StringMatch::Exact("always".into()),
        }],
        destination: Destination::Weighted(vec![("c1".into(), 70), ("c2".into(), 30)]),
    };
    assert_eq!(
        route(&weighted),
        json!({
            "name": "default/demo",
            "match": {"path": "/version", "headers": [{"name": "x-canary", "string_match": {"exact": "always"}}]},
            "route": {"weighted_clusters": {"clusters": [{"name": "c1", "weight": 70}, {"name": "c2", "weight": 30}]},
                      "timeout": "0s"},
        })
    );
    let prefix = Route {
        name: "n".into(),
        path: PathMatch::Prefix("/".into()),
        headers: Vec::new(),
        destination: Destination::Cluster("c".into()),
    };
    assert_eq!(route(&prefix)["match"], json!({"prefix": "/"}));
}

#[test]
fn virtual_hosts_answer_the_host_with_any_port() {
    let vhs = vec![
        VirtualHost {
            host: "*".into(),
            routes: vec![],
        },
        VirtualHost {
            host: "*.example.com".into(),
            routes: vec![],
        },
        VirtualHost {
            host: "demo.example.com".into(),
            routes: vec![],
        },
    ];
    let rc = route_configuration(&vhs);
    assert_eq!(rc["name"], ROUTE_CONFIG_NAME);
    let domains: Vec<Value> = rc["virtual_hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["domains"].clone())
        .collect();
    assert_eq!(
        domains,
        vec![
            json!(["*"]),
            json!(["*.example.com"]),
            json!(["demo.example.com", "demo.example.com:*"])
        ]
    );
}

#[test]
fn each_cluster_gets_its_own_eds_file() {
    let name = "outbound|80||demo.default.svc.cluster.local";
    let path = layout().path(&ResourceKey::Endpoints(name.into()));
    assert_eq!(
        path,
        PathBuf::from("/xds/eds/outbound_80__demo.default.svc.cluster.local.json")
    );
    assert_eq!(
        cluster(name, &path),
        json!({
            "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            "name": name,
            "type": "EDS",
            "eds_cluster_config": {"eds_config": {"resource_api_version": "V3",
                "path_config_source": {"path": "/xds/eds/outbound_80__demo.default.svc.cluster.local.json"}}},
            "connect_timeout": "2s",
        })
    );
    let eps = [Endpoint {
        ip: "127.0.0.1".into(),
        port: 40001,
    }];
    assert_eq!(
        load_assignment(name, &eps)["endpoints"],
        json!([{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 40001}}}}]}])
    );
    assert_eq!(load_assignment(name, &[])["endpoints"], json!([]));
}

#[test]
fn wasm_filters_are_ecds_filters_before_the_router() {
    let l = listener(8080, &[wasm_filter(false)], &layout());
    assert_eq!(l["address"]["socket_address"]["port_value"], 8080);
    let hcm = &l["filter_chains"][0]["filters"][0]["typed_config"];
    assert_eq!(hcm["rds"]["route_config_name"], ROUTE_CONFIG_NAME);
    let filters = hcm["http_filters"].as_array().unwrap();
    assert_eq!(filters.len(), 2);
    assert_eq!(
        filters[0],
        json!({"name": "higress-system.canary", "config_discovery": {
            "config_source": {"resource_api_version": "V3",
                              "path_config_source": {"path": "/xds/ecds/higress-system.canary.json"}},
            "type_urls": ["type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"],
        }})
    );
    assert_eq!(filters[1]["name"], "envoy.filters.http.router");

    // FAIL_OPEN: a no-op composite default until a config is accepted.
    let open = listener(8080, &[wasm_filter(true)], &layout());
    let discovery = &open["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]
        ["config_discovery"];
    assert_eq!(discovery["default_config"]["@type"], COMPOSITE_TYPE);
    assert_eq!(discovery["type_urls"], json!([WASM_TYPE, COMPOSITE_TYPE]));
}

#[test]
fn the_ecds_resource_carries_the_plugin_json_verbatim() {
    let mut f = wasm_filter(true);
    f.root_id = "root".into();
    f.env = vec![
        EnvVar::Inline {
            name: "A".into(),
            value: "1".into(),
        },
        EnvVar::Host {
            name: "HOME".into(),
        },
    ];
    assert_eq!(
        extension_config(&f),
        json!({
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": "higress-system.canary",
            "typed_config": {
                "@type": WASM_TYPE,
                "config": {
                    "name": "higress-system.canary",
                    "root_id": "root",
                    "fail_open": true,
                    "vm_config": {
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": {"local": {"filename": "/ws/dist/plugin.wasm"}},
                        "environment_variables": {"host_env_keys": ["HOME"], "key_values": {"A": "1"}},
                    },
                    "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                      "value": r#"{"_rules_":[]}"#},
                },
            },
        })
    );
    let mut bare = wasm_filter(false);
    bare.configuration = None;
    let config = &extension_config(&bare)["typed_config"]["config"];
    assert!(config.get("configuration").is_none());
    assert!(config.get("fail_open").is_none());
}

#[test]
fn render_makes_one_resource_per_subscription() {
    let mut clusters = BTreeMap::new();
    clusters.insert(
        "c1".to_string(),
        vec![Endpoint {
            ip: "127.0.0.1".into(),
            port: 1,
        }],
    );
    clusters.insert("c2".to_string(), vec![]);
    let filters = [wasm_filter(false)];
    let out = render(
        Input {
            port: 8080,
            virtual_hosts: &[],
            clusters: &clusters,
            filters: &filters,
        },
        &layout(),
    );
    let keys: Vec<ResourceKey> = out.keys().cloned().collect();
    assert_eq!(
        keys,
        vec![
            ResourceKey::Listeners,
            ResourceKey::Routes,
            ResourceKey::Clusters,
            ResourceKey::Endpoints("c1".into()),
            ResourceKey::Endpoints("c2".into()),
            ResourceKey::Extension("higress-system.canary".into()),
        ]
    );
    assert_eq!(
        parse(&out[&ResourceKey::Clusters])
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let body = parse(&file_body(7, &out[&ResourceKey::Routes]));
    assert_eq!(body["version_info"], "7");
    assert_eq!(
        body["resources"][0]["@type"],
        "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
    );
}

#[test]
fn bootstrap_reads_lds_and_cds_from_files_and_tags_plugin_metrics() {
    let b = bootstrap(&layout());
    assert_eq!(
        b["dynamic_resources"]["lds_config"]["path_config_source"]["path"],
        "/xds/lds.json"
    );
    assert_eq!(
        b["dynamic_resources"]["cds_config"]["path_config_source"]["path"],
        "/xds/cds.json"
    );
    let tags: Vec<&str> = b["stats_config"]["stats_tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tag_name"].as_str().unwrap())
        .collect();
    assert_eq!(tags, vec!["rollout", "version", "code", "le"]);
    assert_eq!(b["stats_flush_interval"], "1s");
}
