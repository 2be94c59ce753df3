use std::sync::Arc;

use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::networking::v1::Ingress;
use serde_json::{json, Value};

use super::*;
use crate::gateway::model::{Destination, HeaderMatch, PathMatch, StringMatch, VirtualHost};
use crate::gateway::TranslateConfig;

const BASE: &str = "outbound|80||demo.default.svc.cluster.local";
const CANARY: &str = "outbound|80||demo-canary.default.svc.cluster.local";

fn config() -> TranslateConfig {
    TranslateConfig::default()
}

/// An Ingress of class nginx with one rule.
fn ingress(
    name: &str,
    annotations: &[(&str, &str)],
    host: Option<&str>,
    paths: Value,
) -> Arc<Ingress> {
    ingress_in("default", name, annotations, host, paths)
}

fn ingress_in(
    ns: &str,
    name: &str,
    annotations: &[(&str, &str)],
    host: Option<&str>,
    paths: Value,
) -> Arc<Ingress> {
    let mut ann: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    ann.entry(CLASS_ANNOTATION.to_string())
        .or_insert(json!("nginx"));
    let mut rule = json!({"http": {"paths": paths}});
    if let Some(host) = host {
        rule["host"] = json!(host);
    }
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {"name": name, "namespace": ns, "annotations": ann},
            "spec": {"rules": [rule]},
        }))
        .expect("valid ingress"),
    )
}

fn created(ingress: Arc<Ingress>, at: &str) -> Arc<Ingress> {
    let mut ingress = (*ingress).clone();
    ingress.metadata.creation_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at.parse().expect("timestamp")),
    );
    Arc::new(ingress)
}

fn path(path: &str, path_type: &str, service: &str) -> Value {
    json!({"path": path, "pathType": path_type,
           "backend": {"service": {"name": service, "port": {"number": 80}}}})
}

fn service(ns: &str, name: &str, ports: Value) -> Arc<Service> {
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"ports": ports},
        }))
        .expect("valid service"),
    )
}

fn hosts(ingresses: &[Arc<Ingress>]) -> (Vec<VirtualHost>, Vec<String>) {
    let mut problems = Vec::new();
    let services = vec![
        service("default", "demo", json!([{"name": "http", "port": 80}])),
        service(
            "default",
            "demo-canary",
            json!([{"name": "http", "port": 80}]),
        ),
    ];
    let vhs = virtual_hosts(ingresses, &services, &config(), &mut problems);
    (vhs, problems)
}

/// `(route name, destination)` of every route of host `*`.
fn star_routes(ingresses: &[Arc<Ingress>]) -> Vec<(String, Destination)> {
    let (vhs, _) = hosts(ingresses);
    vhs.into_iter()
        .find(|vh| vh.host == "*")
        .map(|vh| {
            vh.routes
                .into_iter()
                .map(|r| (r.name, r.destination))
                .collect()
        })
        .unwrap_or_default()
}

fn cluster(name: &str) -> Destination {
    Destination::Cluster(name.to_string())
}

fn weighted(list: &[(&str, u32)]) -> Destination {
    Destination::Weighted(list.iter().map(|(c, w)| (c.to_string(), *w)).collect())
}

// === classes ===

#[test]
fn ingress_classes_come_from_the_annotation_first_then_the_spec() {
    fn with(annotation: Option<&str>, spec: Option<&str>) -> Ingress {
        let mut metadata = json!({"name": "x", "namespace": "default"});
        if let Some(class) = annotation {
            metadata["annotations"] = json!({CLASS_ANNOTATION: class});
        }
        let mut spec_json = json!({});
        if let Some(class) = spec {
            spec_json["ingressClassName"] = json!(class);
        }
        serde_json::from_value(json!({"metadata": metadata, "spec": spec_json})).unwrap()
    }
    let cases = [
        (Some("higress"), None, true),
        (Some("nginx"), None, true),
        (Some("traefik"), None, false),
        (None, Some("higress"), true),
        (None, Some("nginx"), true),
        (None, Some("traefik"), false),
        // The annotation wins over the spec, both ways.
        (Some("traefik"), Some("higress"), false),
        (Some("higress"), Some("traefik"), true),
        // No class at all (or an empty one) is not served by default.
        (None, None, false),
        (Some(""), Some("higress"), false),
    ];
    for (annotation, spec, want) in cases {
        assert_eq!(
            serves_class(&with(annotation, spec), &config()),
            want,
            "annotation {annotation:?}, spec {spec:?}"
        );
    }
    let classless = TranslateConfig {
        accept_classless: true,
        ..config()
    };
    assert!(serves_class(&with(None, None), &classless));
    assert!(!serves_class(&with(None, Some("traefik")), &classless));
}

#[test]
fn ingresses_of_other_classes_make_no_routes() {
    let ing = ingress(
        "demo",
        &[(CLASS_ANNOTATION, "traefik")],
        None,
        json!([path("/", "Prefix", "demo")]),
    );
    let (vhs, _) = hosts(&[ing]);
    assert!(vhs.is_empty());
}

// === paths ===

#[test]
fn path_types_match_as_higress_converts_them() {
    let cases: &[(Option<&str>, &str, bool, PathMatch, &str)] = &[
        (
            Some("/version"),
            "Exact",
            false,
            PathMatch::Exact("/version".into()),
            "/version",
        ),
        (
            Some("/"),
            "Prefix",
            false,
            PathMatch::Prefix("/".into()),
            "/",
        ),
        (
            Some("/api"),
            "Prefix",
            false,
            PathMatch::Regex(r"/api((\/).*)?".into()),
            "/api",
        ),
        // A trailing slash is dropped, so `/api/` and `/api` are the same prefix.
        (
            Some("/api/"),
            "Prefix",
            false,
            PathMatch::Regex(r"/api((\/).*)?".into()),
            "/api",
        ),
        // ImplementationSpecific is Prefix.
        (
            Some("/api"),
            "ImplementationSpecific",
            false,
            PathMatch::Regex(r"/api((\/).*)?".into()),
            "/api",
        ),
        // Regex metacharacters in a prefix are quoted.
        (
            Some("/a.b+c"),
            "Prefix",
            false,
            PathMatch::Regex(r"/a\.b\+c((\/).*)?".into()),
            "/a.b+c",
        ),
        // No path is `/`.
        (None, "Prefix", false, PathMatch::Prefix("/".into()), "/"),
        (Some(""), "Exact", false, PathMatch::Exact("/".into()), "/"),
        // An unset pathType is Prefix, and old-style `/*` and `.*` suffixes are dropped.
        (
            Some("/old/*"),
            "",
            false,
            PathMatch::Regex(r"/old((\/).*)?".into()),
            "/old",
        ),
        (
            Some("/old.*"),
            "",
            false,
            PathMatch::Regex(r"/old((\/).*)?".into()),
            "/old",
        ),
        // use-regex: the path plus `.*`, whatever the pathType.
        (
            Some("/v[0-9]+"),
            "Exact",
            true,
            PathMatch::Regex("/v[0-9]+.*".into()),
            "/v[0-9]+",
        ),
    ];
    for (p, t, regex, matcher, origin) in cases {
        let rule = path_rule(*p, t, *regex);
        assert_eq!(
            &rule.matcher, matcher,
            "path {p:?} type {t:?} regex {regex}"
        );
        assert_eq!(rule.origin, *origin, "path {p:?} type {t:?}");
    }
}

#[test]
fn routes_are_ordered_exact_then_longer_prefixes_then_catch_all() {
    let ing = ingress(
        "demo",
        &[],
        None,
        json!([
            path("/", "Prefix", "demo"),
            path("/a", "Prefix", "demo"),
            path("/abc", "Prefix", "demo"),
            path("/x", "Exact", "demo"),
            path("/longer-exact", "Exact", "demo"),
        ]),
    );
    let (vhs, _) = hosts(&[ing]);
    let paths: Vec<PathMatch> = vhs[0].routes.iter().map(|r| r.path.clone()).collect();
    assert_eq!(
        paths,
        vec![
            PathMatch::Exact("/longer-exact".into()),
            PathMatch::Exact("/x".into()),
            PathMatch::Regex(r"/abc((\/).*)?".into()),
            PathMatch::Regex(r"/a((\/).*)?".into()),
            PathMatch::Prefix("/".into()),
        ]
    );
}

// === names and hosts ===

#[test]
fn routes_are_named_after_the_ingress_and_share_the_name() {
    let ing = ingress(
        "demo",
        &[],
        None,
        json!([path("/a", "Exact", "demo"), path("/b", "Exact", "demo")]),
    );
    let routes = star_routes(&[ing]);
    assert_eq!(routes.len(), 2);
    assert!(routes.iter().all(|(name, _)| name == "default/demo"));

    // In the system namespace Higress uses the bare name.
    let sys = ingress_in(
        "higress-system",
        "console",
        &[],
        None,
        json!([path("/", "Prefix", "demo")]),
    );
    let mut problems = Vec::new();
    let vhs = virtual_hosts(&[sys], &[], &config(), &mut problems);
    assert_eq!(vhs[0].routes[0].name, "console");
}

#[test]
fn each_host_is_a_virtual_host_and_no_host_is_star() {
    let a = ingress(
        "a",
        &[],
        Some("a.example.com"),
        json!([path("/", "Prefix", "demo")]),
    );
    let b = ingress("b", &[], None, json!([path("/", "Prefix", "demo")]));
    let (vhs, _) = hosts(&[a, b]);
    let names: Vec<&str> = vhs.iter().map(|vh| vh.host.as_str()).collect();
    assert_eq!(names, vec!["*", "a.example.com"]);
}

#[test]
fn the_older_ingress_keeps_a_host_and_path_both_claim() {
    let old = created(
        ingress("zzz-old", &[], None, json!([path("/", "Prefix", "demo")])),
        "2024-01-01T00:00:00Z",
    );
    let new = created(
        ingress(
            "aaa-new",
            &[],
            None,
            json!([path("/", "Exact", "demo-canary")]),
        ),
        "2025-01-01T00:00:00Z",
    );
    let (vhs, problems) = hosts(&[new, old]);
    assert_eq!(vhs[0].routes.len(), 1);
    assert_eq!(vhs[0].routes[0].name, "default/zzz-old");
    assert!(problems
        .iter()
        .any(|p| p.contains("default/aaa-new") && p.contains("already routed")));
}

#[test]
fn named_service_ports_resolve_through_the_service() {
    let by_name = json!([{"path": "/", "pathType": "Prefix",
        "backend": {"service": {"name": "multi", "port": {"name": "admin"}}}}]);
    let ing = ingress("demo", &[], None, by_name);
    let services = vec![service(
        "default",
        "multi",
        json!([{"name": "http", "port": 80}, {"name": "admin", "port": 9000}]),
    )];
    let mut problems = Vec::new();
    let vhs = virtual_hosts(
        std::slice::from_ref(&ing),
        &services,
        &config(),
        &mut problems,
    );
    assert_eq!(
        vhs[0].routes[0].destination,
        cluster("outbound|9000||multi.default.svc.cluster.local")
    );

    // Without the Service the name cannot be resolved: the path is skipped.
    let mut problems = Vec::new();
    let vhs = virtual_hosts(&[ing], &[], &config(), &mut problems);
    assert!(vhs.is_empty());
    assert!(problems[0].contains("not found"), "{problems:?}");
}

// === header and cookie canaries ===

fn base() -> Arc<Ingress> {
    ingress("demo", &[], None, json!([path("/", "Prefix", "demo")]))
}

fn canary(annotations: &[(&str, &str)]) -> Arc<Ingress> {
    ingress(
        "demo-canary",
        annotations,
        None,
        json!([path("/", "Prefix", "demo-canary")]),
    )
}

#[test]
fn header_canaries_are_inserted_before_the_base_route_with_higress_matching() {
    let h = |v: StringMatch| {
        Some(HeaderMatch {
            name: "x-canary".into(),
            value: v,
        })
    };
    type Case = (Vec<(&'static str, &'static str)>, Option<HeaderMatch>);
    let cases: Vec<Case> = vec![
        (
            vec![
                ("higress.io/canary", "true"),
                ("higress.io/canary-by-header", "x-canary"),
            ],
            h(StringMatch::Exact("always".into())),
        ),
        (
            vec![
                ("higress.io/canary", "true"),
                ("higress.io/canary-by-header", "X-Canary"),
                ("higress.io/canary-by-header-value", "v2"),
            ],
            h(StringMatch::Regex("always|v2".into())),
        ),
        (
            vec![
                ("nginx.ingress.kubernetes.io/canary", "true"),
                ("nginx.ingress.kubernetes.io/canary-by-header", "x-canary"),
                (
                    "nginx.ingress.kubernetes.io/canary-by-header-pattern",
                    "beta",
                ),
            ],
            h(StringMatch::Regex(".*beta.*".into())),
        ),
        (
            vec![
                ("higress.io/canary", "true"),
                ("higress.io/canary-by-cookie", "tester"),
            ],
            Some(HeaderMatch {
                name: "cookie".into(),
                value: StringMatch::Regex(r"^(.*?;\s*)?(tester=always)(;.*)?$".into()),
            }),
        ),
        // The value wins over the pattern (it is read first and short-circuits).
        (
            vec![
                ("higress.io/canary", "true"),
                ("higress.io/canary-by-header", "x-canary"),
                ("higress.io/canary-by-header-value", "v2"),
                ("higress.io/canary-by-header-pattern", "beta"),
            ],
            h(StringMatch::Regex("always|v2".into())),
        ),
        // The nginx prefix is read first ...
        (
            vec![
                ("nginx.ingress.kubernetes.io/canary", "true"),
                ("nginx.ingress.kubernetes.io/canary-by-header", "x-canary"),
                ("higress.io/canary-by-header", "x-other"),
            ],
            h(StringMatch::Exact("always".into())),
        ),
        // ... but an empty nginx value falls back to the higress one.
        (
            vec![
                ("higress.io/canary", "true"),
                ("nginx.ingress.kubernetes.io/canary-by-header", " "),
                ("higress.io/canary-by-header", "x-canary"),
            ],
            h(StringMatch::Exact("always".into())),
        ),
    ];
    for (annotations, want) in cases {
        let (vhs, problems) = hosts(&[base(), canary(&annotations)]);
        let routes = &vhs[0].routes;
        assert_eq!(routes.len(), 2, "{annotations:?}: {problems:?}");
        assert_eq!(routes[0].name, "default/demo-canary", "{annotations:?}");
        assert_eq!(routes[0].headers.first().cloned(), want, "{annotations:?}");
        assert_eq!(routes[0].destination, cluster(CANARY));
        assert_eq!(routes[0].path, PathMatch::Prefix("/".into()));
        assert_eq!(routes[1].name, "default/demo");
        assert!(routes[1].headers.is_empty());
        assert_eq!(routes[1].destination, cluster(BASE));
    }
}

#[test]
fn a_header_canary_ignores_its_weight() {
    let c = canary(&[
        ("higress.io/canary", "true"),
        ("higress.io/canary-by-header", "x-canary"),
        ("higress.io/canary-weight", "50"),
    ]);
    let routes = star_routes(&[base(), c]);
    assert_eq!(
        routes,
        vec![
            ("default/demo-canary".to_string(), cluster(CANARY)),
            ("default/demo".to_string(), cluster(BASE)),
        ]
    );
}

#[test]
fn a_canary_needs_the_same_host_path_and_path_type_as_its_base() {
    let header = [
        ("higress.io/canary", "true"),
        ("higress.io/canary-by-header", "x-canary"),
    ];
    let other_type = ingress(
        "demo-canary",
        &header,
        None,
        json!([path("/", "Exact", "demo-canary")]),
    );
    let other_host = ingress(
        "demo-canary",
        &header,
        Some("x.example.com"),
        json!([path("/", "Prefix", "demo-canary")]),
    );
    for c in [other_type, other_host] {
        let (vhs, problems) = hosts(&[base(), c]);
        assert_eq!(vhs.len(), 1);
        assert_eq!(vhs[0].routes.len(), 1);
        assert_eq!(vhs[0].routes[0].name, "default/demo");
        assert_eq!(problems.len(), 1, "{problems:?}");
    }
}

#[test]
fn canary_false_is_an_ordinary_ingress_that_loses_to_the_older_one() {
    let c = canary(&[
        ("higress.io/canary", "false"),
        ("higress.io/canary-by-header", "x-canary"),
    ]);
    let (vhs, problems) = hosts(&[
        created(c, "2025-01-01T00:00:00Z"),
        created(base(), "2024-01-01T00:00:00Z"),
    ]);
    assert_eq!(vhs[0].routes.len(), 1);
    assert_eq!(vhs[0].routes[0].name, "default/demo");
    assert!(problems[0].contains("already routed"), "{problems:?}");
}

// === weight canaries ===

#[test]
fn weight_canaries_split_the_base_route_with_higress_normalisation() {
    let cases: Vec<(Vec<(&str, &str)>, Destination)> = vec![
        (
            vec![("canary-weight", "30")],
            weighted(&[(BASE, 70), (CANARY, 30)]),
        ),
        // Go float32 arithmetic: int(float32(53)/100*100) is 52.
        (
            vec![("canary-weight", "53")],
            weighted(&[(BASE, 48), (CANARY, 52)]),
        ),
        (
            vec![("canary-weight", "50"), ("canary-weight-total", "200")],
            weighted(&[(BASE, 75), (CANARY, 25)]),
        ),
        (
            vec![("canary-weight", "1"), ("canary-weight-total", "3")],
            weighted(&[(BASE, 67), (CANARY, 33)]),
        ),
        // A total of 0 or less means the default 100.
        (
            vec![("canary-weight", "30"), ("canary-weight-total", "0")],
            weighted(&[(BASE, 70), (CANARY, 30)]),
        ),
        // Zero weights are dropped; one cluster left is a plain cluster.
        (vec![("canary-weight", "0")], cluster(BASE)),
        (vec![("canary-weight", "100")], cluster(CANARY)),
        // Weights above the total are scaled by their sum.
        (vec![("canary-weight", "150")], cluster(CANARY)),
        // No weight at all: weight 0.
        (vec![], cluster(BASE)),
    ];
    for (extra, want) in cases {
        let mut annotations = vec![("higress.io/canary".to_string(), "true".to_string())];
        annotations.extend(
            extra
                .iter()
                .map(|(k, v)| (format!("higress.io/{k}"), v.to_string())),
        );
        let refs: Vec<(&str, &str)> = annotations
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let routes = star_routes(&[base(), canary(&refs)]);
        assert_eq!(
            routes,
            vec![("default/demo".to_string(), want)],
            "{extra:?}"
        );
    }
}

#[test]
fn several_weight_canaries_share_the_total() {
    let services = [
        service("default", "demo", json!([{"port": 80}])),
        service("default", "v2", json!([{"port": 80}])),
        service("default", "v3", json!([{"port": 80}])),
    ];
    let w = |name: &str, weight: &str| {
        ingress(
            name,
            &[
                ("nginx.ingress.kubernetes.io/canary", "true"),
                ("nginx.ingress.kubernetes.io/canary-weight", weight),
            ],
            None,
            json!([path("/", "Prefix", name)]),
        )
    };
    let mut problems = Vec::new();
    let vhs = virtual_hosts(
        &[base(), w("v2", "60"), w("v3", "60")],
        &services,
        &config(),
        &mut problems,
    );
    assert_eq!(
        vhs[0].routes[0].destination,
        weighted(&[
            ("outbound|80||v2.default.svc.cluster.local", 50),
            ("outbound|80||v3.default.svc.cluster.local", 50),
        ])
    );
    let mut problems = Vec::new();
    let vhs = virtual_hosts(
        &[base(), w("v2", "20"), w("v3", "10")],
        &services,
        &config(),
        &mut problems,
    );
    assert_eq!(
        vhs[0].routes[0].destination,
        weighted(&[
            (BASE, 70),
            ("outbound|80||v2.default.svc.cluster.local", 20),
            ("outbound|80||v3.default.svc.cluster.local", 10),
        ])
    );
}

#[test]
fn a_header_value_without_a_header_is_a_weight_canary_of_weight_zero() {
    // Higress reads the value, returns early (weight unread), and the kind is by-weight.
    let c = canary(&[
        ("higress.io/canary", "true"),
        ("higress.io/canary-by-header-value", "v2"),
        ("higress.io/canary-weight", "40"),
    ]);
    assert_eq!(
        star_routes(&[base(), c]),
        vec![("default/demo".to_string(), cluster(BASE))]
    );
}

// === clusters ===

#[test]
fn clusters_take_ready_addresses_on_the_endpoints_port_of_the_same_name() {
    let services = vec![
        service(
            "default",
            "demo",
            json!([{"name": "http", "port": 80}, {"name": "metrics", "port": 9090}]),
        ),
        service("default", "empty", json!([{"port": 8080}])),
        Arc::new(
            serde_json::from_value::<Service>(json!({
                "metadata": {"name": "ext", "namespace": "default"},
                "spec": {"type": "ExternalName", "externalName": "example.com"},
            }))
            .unwrap(),
        ),
    ];
    let endpoints: Vec<Arc<Endpoints>> = vec![Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": "demo", "namespace": "default"},
            "subsets": [
                {"addresses": [{"ip": "127.0.0.1"}],
                 "notReadyAddresses": [{"ip": "127.0.0.9"}],
                 "ports": [{"name": "http", "port": 40001}, {"name": "metrics", "port": 40002}]},
                {"addresses": [{"ip": "127.0.0.1"}],
                 "ports": [{"name": "http", "port": 40003}]},
            ],
        }))
        .unwrap(),
    )];
    let got = clusters(&services, &endpoints);
    let ep = |port| Endpoint {
        ip: "127.0.0.1".into(),
        port,
    };
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(
        got["outbound|80||demo.default.svc.cluster.local"],
        vec![ep(40001), ep(40003)]
    );
    assert_eq!(
        got["outbound|9090||demo.default.svc.cluster.local"],
        vec![ep(40002)]
    );
    assert_eq!(
        got["outbound|8080||empty.default.svc.cluster.local"],
        Vec::<Endpoint>::new()
    );
}
