//! The gateway's Envoy side without an API server: objects handed to `Proxy::apply` directly,
//! a real Envoy, and small HTTP backends started here.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::Backend;
use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::DynamicObject;
use sandbox::gateway::http::{self, Client};
use sandbox::gateway::{GatewayConfig, Objects, Proxy, ResourceKey};
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(20);
const HOST: &str = "demo.example.com";
const BASE_CLUSTER: &str = "outbound|80||demo.default.svc.cluster.local";
const CANARY_CLUSTER: &str = "outbound|80||demo-canary.default.svc.cluster.local";

// === objects ===

fn service(name: &str) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "resourceVersion": "1"},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}], "selector": {"app": name}},
    }))
    .expect("service")
}

fn endpoints(name: &str, backends: &[&Backend]) -> Endpoints {
    let subsets: Vec<Value> = backends
        .iter()
        .map(|b| {
            json!({"addresses": [{"ip": "127.0.0.1"}],
                   "ports": [{"name": "http", "port": b.addr.port(), "protocol": "TCP"}]})
        })
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": name, "namespace": "default"},
        "subsets": subsets,
    }))
    .expect("endpoints")
}

fn ingress(name: &str, service: &str, annotations: Value) -> Ingress {
    let mut ann = annotations;
    ann["kubernetes.io/ingress.class"] = json!("higress");
    serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "namespace": "default", "annotations": ann},
        "spec": {"rules": [{"host": HOST, "http": {"paths": [
            {"path": "/", "pathType": "Prefix",
             "backend": {"service": {"name": service, "port": {"number": 80}}}}]}}]},
    }))
    .expect("ingress")
}

fn header_canary(header: &str, value: &str) -> Ingress {
    ingress(
        "demo-canary",
        "demo-canary",
        json!({"higress.io/canary": "true",
               "higress.io/canary-by-header": header,
               "higress.io/canary-by-header-value": value}),
    )
}

fn weight_canary(weight: u32) -> Ingress {
    ingress(
        "demo-canary",
        "demo-canary",
        json!({"nginx.ingress.kubernetes.io/canary": "true",
               "nginx.ingress.kubernetes.io/canary-weight": weight.to_string()}),
    )
}

fn plugin_wasm() -> Result<PathBuf> {
    let path = std::env::var_os("CANARY_PLUGIN_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| sandbox::gateway::workspace_root().join("dist/plugin.wasm"));
    if !path.is_file() {
        bail!("{} not found: run `cargo xtask wasm`", path.display());
    }
    Ok(path)
}

fn wasm_plugin(wasm: &std::path::Path, weight: f64, fail_open: bool) -> DynamicObject {
    let mut spec = json!({
        "url": format!("file://{}", wasm.display()),
        "phase": "UNSPECIFIED_PHASE",
        "priority": 100,
        "defaultConfig": {},
        "matchRules": [{
            "ingress": ["default/demo", "default/demo-canary"],
            "config": {"rollout": "default/demo", "tagValue": "rollouts-demo", "weight": weight},
        }],
    });
    if fail_open {
        spec["failStrategy"] = json!("FAIL_OPEN");
    }
    serde_json::from_value(json!({
        "apiVersion": "extensions.higress.io/v1alpha1", "kind": "WasmPlugin",
        "metadata": {"name": "higress-canary", "namespace": "higress-system"},
        "spec": spec,
    }))
    .expect("wasm plugin")
}

/// The demo app: Services, Endpoints, the base Ingress and `canary` (if any).
fn demo(stable: &Backend, canary_backend: &Backend, canary: Option<Ingress>) -> Objects {
    let mut objects = Objects::default()
        .with_service(service("demo"))
        .with_service(service("demo-canary"))
        .with_endpoints(endpoints("demo", &[stable]))
        .with_endpoints(endpoints("demo-canary", &[canary_backend]))
        .with_ingress(ingress("demo", "demo", json!({})));
    if let Some(c) = canary {
        objects = objects.with_ingress(c);
    }
    objects
}

// === requests ===

async fn get(proxy: &Proxy, headers: &[(&str, &str)]) -> Result<(u16, String)> {
    let mut all = vec![("host", HOST)];
    all.extend_from_slice(headers);
    let r = http::get(proxy.listener_addr(), "/version", &all).await?;
    Ok((r.status, r.text()))
}

/// Share of `n` requests on one keep-alive connection answered `v2`.
async fn canary_share(proxy: &Proxy, n: usize) -> Result<f64> {
    let mut client = Client::connect(proxy.listener_addr()).await?;
    let mut canary = 0;
    for _ in 0..n {
        let r = client.get("/version", &[("host", HOST)]).await?;
        match (r.status, r.text().as_str()) {
            (200, "v2") => canary += 1,
            (200, "v1") => {}
            (status, body) => bail!("unexpected answer {status} {body:?}"),
        }
    }
    Ok(canary as f64 / n as f64)
}

/// Polls until a request with `headers` answers `want`; returns how long that took.
async fn until_body(proxy: &Proxy, headers: &[(&str, &str)], want: &str) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let (status, body) = get(proxy, headers).await?;
        if status == 200 && body == want {
            return Ok(start.elapsed());
        }
        if start.elapsed() > DEADLINE {
            bail!(
                "still {status} {body:?} instead of {want:?} after {DEADLINE:?}; Envoy log:\n{}",
                proxy.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Polls until 20 requests in a row answer `want`; the time is measured from `start` to the
/// first of them.
async fn until_all(proxy: &Proxy, want: &str, start: Instant) -> Result<Duration> {
    let mut streak = 0;
    let mut first = start.elapsed();
    while streak < 20 {
        let (_, body) = get(proxy, &[]).await?;
        if body == want {
            if streak == 0 {
                first = start.elapsed();
            }
            streak += 1;
        } else {
            streak = 0;
        }
        if start.elapsed() > DEADLINE {
            bail!(
                "{want:?} not in force after {DEADLINE:?}; Envoy log:\n{}",
                proxy.log_tail()
            );
        }
    }
    Ok(first)
}

fn config() -> GatewayConfig {
    GatewayConfig::default()
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingresses_and_header_canaries_route_through_envoy() -> Result<()> {
    let v1 = Backend::start("v1").await?;
    let v2 = Backend::start("v2").await?;
    let proxy = Proxy::start(
        &config(),
        &demo(&v1, &v2, Some(header_canary("x-canary", "v2"))),
    )
    .await
    .context("starting the proxy")?;

    assert_eq!(get(&proxy, &[]).await?, (200, "v1".to_string()));
    assert_eq!(
        get(&proxy, &[("x-canary", "v2")]).await?,
        (200, "v2".to_string())
    );
    assert_eq!(
        get(&proxy, &[("x-canary", "always")]).await?,
        (200, "v2".to_string())
    );
    assert_eq!(
        get(&proxy, &[("x-canary", "v3")]).await?,
        (200, "v1".to_string())
    );
    // Another host has no routes.
    let other = http::get(
        proxy.listener_addr(),
        "/version",
        &[("host", "other.example.com")],
    )
    .await?;
    assert_eq!(other.status, 404);

    // A cookie canary, and a Prefix path with Higress's segment semantics, on another host.
    let cookie_host = "cookie.example.com";
    let on_host = |mut ing: Ingress, path: &str| {
        let rule = &mut ing.spec.as_mut().unwrap().rules.as_mut().unwrap()[0];
        rule.host = Some(cookie_host.to_string());
        rule.http.as_mut().unwrap().paths[0].path = Some(path.to_string());
        ing
    };
    let api = on_host(ingress("api", "demo-canary", json!({})), "/api");
    let objects = demo(&v1, &v2, Some(header_canary("x-canary", "v2")))
        .with_ingress(on_host(ingress("cookie-base", "demo", json!({})), "/"))
        .with_ingress(on_host(
            ingress(
                "cookie-canary",
                "demo-canary",
                json!({"higress.io/canary": "true", "higress.io/canary-by-cookie": "beta"}),
            ),
            "/",
        ))
        .with_ingress(api);
    proxy.apply(&objects).await?;
    proxy.wait_acked(DEADLINE).await?;
    let at = |path: &'static str, cookie: Option<&'static str>| {
        let addr = proxy.listener_addr();
        async move {
            let mut headers = vec![("host", cookie_host)];
            if let Some(c) = cookie {
                headers.push(("cookie", c));
            }
            let r = http::get(addr, path, &headers).await?;
            anyhow::Ok(r.text())
        }
    };
    assert_eq!(at("/", None).await?, "v1");
    assert_eq!(at("/", Some("beta=always")).await?, "v2");
    assert_eq!(at("/", Some("a=1; beta=always; b=2")).await?, "v2");
    assert_eq!(at("/", Some("beta=never")).await?, "v1");
    assert_eq!(at("/", Some("xbeta=always")).await?, "v1");
    assert_eq!(at("/api", None).await?, "v2");
    assert_eq!(at("/api/x", None).await?, "v2");
    assert_eq!(
        at("/apix", None).await?,
        "v1",
        "a prefix matches whole segments"
    );

    // The route names are what the plugin matches on.
    let dump = proxy
        .admin_get("/config_dump?resource=dynamic_route_configs")
        .await?;
    assert!(
        dump.contains("\"default/demo-canary\"") && dump.contains("\"default/demo\""),
        "{dump}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weight_canary_splits_traffic_and_an_edit_rewrites_only_the_routes() -> Result<()> {
    let v1 = Backend::start("v1").await?;
    let v2 = Backend::start("v2").await?;
    let proxy = Proxy::start(&config(), &demo(&v1, &v2, Some(weight_canary(30)))).await?;

    let share = canary_share(&proxy, 400).await?;
    assert!(
        (0.2..0.4).contains(&share),
        "canary share {share} at weight 30"
    );

    // Same objects again: nothing is written.
    let report = proxy
        .apply(&demo(&v1, &v2, Some(weight_canary(30))))
        .await?;
    assert!(
        report.written.is_empty() && report.removed.is_empty(),
        "{report:?}"
    );

    // A weight edit is one RDS write, seen on a connection that stays open.
    let mut client = Client::connect(proxy.listener_addr()).await?;
    assert_eq!(client.get("/version", &[("host", HOST)]).await?.status, 200);
    let start = Instant::now();
    let report = proxy
        .apply(&demo(&v1, &v2, Some(weight_canary(100))))
        .await?;
    assert_eq!(report.written, vec![ResourceKey::Routes]);
    let took = until_all(&proxy, "v2", start).await?;
    eprintln!("canary-weight 30 -> 100: all traffic on v2 {took:?} after the apply started");
    let r = client.get("/version", &[("host", HOST)]).await?;
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "v2"),
        "same keep-alive connection after RDS update"
    );
    assert_eq!(canary_share(&proxy, 50).await?, 1.0);

    let acks = proxy.wait_acked(DEADLINE).await?;
    assert!(acks.rejected.is_empty(), "{acks:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_changes_rewrite_one_eds_file() -> Result<()> {
    let v1 = Backend::start("v1").await?;
    let v2 = Backend::start("v2").await?;
    let v1b = Backend::start("v1b").await?;
    let proxy = Proxy::start(&config(), &demo(&v1, &v2, None)).await?;
    let mut client = Client::connect(proxy.listener_addr()).await?;
    assert_eq!(
        client.get("/version", &[("host", HOST)]).await?.text(),
        "v1"
    );

    let moved = Objects::default()
        .with_service(service("demo"))
        .with_service(service("demo-canary"))
        .with_endpoints(endpoints("demo", &[&v1b]))
        .with_endpoints(endpoints("demo-canary", &[&v2]))
        .with_ingress(ingress("demo", "demo", json!({})));
    let report = proxy.apply(&moved).await?;
    assert_eq!(
        report.written,
        vec![ResourceKey::Endpoints(BASE_CLUSTER.to_string())]
    );
    let took = until_body(&proxy, &[], "v1b").await?;
    eprintln!("endpoint move served after {took:?}");
    let r = client.get("/version", &[("host", HOST)]).await?;
    assert_eq!(
        r.text(),
        "v1b",
        "same keep-alive connection after EDS update"
    );

    // No endpoints: 503, and the cluster stays.
    let empty = Objects::default()
        .with_service(service("demo"))
        .with_service(service("demo-canary"))
        .with_endpoints(endpoints("demo", &[]))
        .with_ingress(ingress("demo", "demo", json!({})));
    let report = proxy.apply(&empty).await?;
    assert_eq!(
        report.written,
        // Keys sort by cluster name: `demo-canary` before `demo.default`.
        vec![
            ResourceKey::Endpoints(CANARY_CLUSTER.to_string()),
            ResourceKey::Endpoints(BASE_CLUSTER.to_string()),
        ]
    );
    proxy.wait_acked(DEADLINE).await?;
    let start = Instant::now();
    loop {
        let (status, _) = get(&proxy, &[]).await?;
        if status == 503 {
            break;
        }
        if start.elapsed() > DEADLINE {
            bail!("still {status} with no endpoints");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_canary_plugin_routes_a_share_to_the_canary_ingress() -> Result<()> {
    let wasm = plugin_wasm()?;
    let v1 = Backend::start("v1").await?;
    let v2 = Backend::start("v2").await?;
    let canary = || Some(header_canary("x-higress-canary", "rollouts-demo"));
    let with_plugin =
        |weight: f64| demo(&v1, &v2, canary()).with_wasm_plugin(wasm_plugin(&wasm, weight, true));

    let proxy = Proxy::start(&config(), &with_plugin(30.0)).await?;
    let share = canary_share(&proxy, 400).await?;
    assert!(
        (0.2..0.4).contains(&share),
        "canary share {share} at plugin weight 30"
    );

    // A config edit is one ECDS write; the listener is untouched.
    let start = Instant::now();
    let report = proxy.apply(&with_plugin(100.0)).await?;
    assert_eq!(
        report.written,
        vec![ResourceKey::Extension(
            "higress-system.higress-canary".into()
        )]
    );
    let took = until_all(&proxy, "v2", start).await?;
    eprintln!("plugin weight 30 -> 100: all traffic on v2 {took:?} after the apply started");
    let listener_updates = proxy
        .stats("^listener_manager\\.listener_modified$")
        .await?;
    assert_eq!(
        listener_updates
            .get("listener_manager.listener_modified")
            .map(String::as_str),
        Some("0")
    );

    // A config the plugin refuses: Envoy keeps the previous one.
    let report = proxy.apply(&with_plugin(150.0)).await?;
    assert_eq!(report.written.len(), 1, "{report:?}");
    let acks = proxy.wait_acked(DEADLINE).await?;
    assert!(
        acks.rejected.contains_key(&ResourceKey::Extension(
            "higress-system.higress-canary".into()
        )),
        "{acks:?}"
    );
    assert_eq!(canary_share(&proxy, 50).await?, 1.0);

    // Removing the plugin rewrites the listener and drops the ECDS file.
    let report = proxy.apply(&demo(&v1, &v2, canary())).await?;
    assert_eq!(report.written, vec![ResourceKey::Listeners]);
    assert_eq!(
        report.removed,
        vec![ResourceKey::Extension(
            "higress-system.higress-canary".into()
        )]
    );
    proxy.wait_acked(DEADLINE).await?;
    until_body(&proxy, &[], "v1").await?;
    let mut fresh = 0;
    for _ in 0..50 {
        if get(&proxy, &[]).await?.1 == "v2" {
            fresh += 1;
        }
    }
    assert_eq!(fresh, 0, "requests reached the canary without the plugin");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_wasm_plugin_keeps_its_previous_conversion() -> Result<()> {
    let wasm = plugin_wasm()?;
    let v1 = Backend::start("v1").await?;
    let v2 = Backend::start("v2").await?;
    let canary = || Some(header_canary("x-higress-canary", "rollouts-demo"));
    let good = demo(&v1, &v2, canary()).with_wasm_plugin(wasm_plugin(&wasm, 100.0, false));
    let proxy = Proxy::start(&config(), &good).await?;
    until_body(&proxy, &[], "v2").await?;

    // A match rule without a match list: Higress refuses the edit, the old filter stays.
    let mut bad = wasm_plugin(&wasm, 0.0, false);
    bad.data["spec"]["matchRules"][0]["ingress"] = json!([]);
    let report = proxy
        .apply(&demo(&v1, &v2, canary()).with_wasm_plugin(bad))
        .await?;
    assert!(report.written.is_empty(), "{report:?}");
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("no match condition")),
        "{report:?}"
    );
    assert_eq!(canary_share(&proxy, 20).await?, 1.0);

    // An oci:// url cannot be loaded here: no filter, with a clear problem.
    let mut oci = wasm_plugin(&wasm, 0.0, false);
    oci.data["spec"]["url"] = json!("oci://registry.example.com/higress-canary/plugin:0.1.0");
    let report = proxy
        .apply(&demo(&v1, &v2, canary()).with_wasm_plugin(oci))
        .await?;
    assert_eq!(report.written, vec![ResourceKey::Listeners]);
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("oci:// is not supported")),
        "{report:?}"
    );
    Ok(())
}
