//! The gateway driven through the fake API server: objects written with kube's client, traffic
//! through a real Envoy to small HTTP backends started here.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::Backend;
use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::Client;
use sandbox::api::{crds, ApiConfig, ApiServer};
use sandbox::gateway::http::{self, Client as HttpClient};
use sandbox::gateway::{wasm_plugin_resource, Gateway, GatewayConfig};
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(20);

// === the cluster ===

struct Cluster {
    // Field order is drop order: the gateway stops before the API server.
    gateway: Gateway,
    client: Client,
    api: ApiServer,
}

impl Cluster {
    /// An API server with `higress-system` and the WasmPlugin CRD, and a gateway on it.
    async fn start() -> Result<Self> {
        let mut config = ApiConfig::default();
        config.namespaces.push("higress-system".to_string());
        config
            .crds
            .push(crds::higress_wasmplugin_crd_yaml().to_string());
        let api = ApiServer::start(config)
            .await
            .context("starting the API server")?;
        let client = api.client();
        let gateway = Gateway::start(client.clone(), GatewayConfig::default())
            .await
            .context("starting the gateway")?;
        Ok(Self {
            gateway,
            client,
            api,
        })
    }

    fn ingresses(&self) -> Api<Ingress> {
        Api::namespaced(self.client.clone(), "default")
    }

    fn plugins(&self) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.client.clone(),
            "higress-system",
            &wasm_plugin_resource(),
        )
    }

    /// A Service and its Endpoints (as the endpoints controller would write them).
    async fn service(&self, name: &str, backends: &[&Backend]) -> Result<()> {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}], "selector": {"app": name}},
        }))?;
        Api::<Service>::namespaced(self.client.clone(), "default")
            .create(&PostParams::default(), &svc)
            .await?;
        Api::<Endpoints>::namespaced(self.client.clone(), "default")
            .create(&PostParams::default(), &endpoints(name, backends))
            .await?;
        Ok(())
    }

    async fn move_endpoints(&self, name: &str, backends: &[&Backend]) -> Result<()> {
        let eps = endpoints(name, backends);
        Api::<Endpoints>::namespaced(self.client.clone(), "default")
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"subsets": eps.subsets})),
            )
            .await?;
        Ok(())
    }

    async fn get(&self, headers: &[(&str, &str)]) -> Result<(u16, String)> {
        let r = http::get(self.gateway.listener_addr(), "/version", headers).await?;
        Ok((r.status, r.text()))
    }

    /// Share of `n` requests on one keep-alive connection answered `v2`.
    async fn canary_share(&self, n: usize) -> Result<f64> {
        let mut client = HttpClient::connect(self.gateway.listener_addr()).await?;
        let mut canary = 0;
        for _ in 0..n {
            let r = client.get("/version", &[]).await?;
            match (r.status, r.text().as_str()) {
                (200, "v2") => canary += 1,
                (200, "v1") => {}
                (status, body) => bail!("unexpected answer {status} {body:?}"),
            }
        }
        Ok(canary as f64 / n as f64)
    }

    /// Polls until `headers` get `want`; the time from `since` to the first such answer.
    async fn until(
        &self,
        headers: &[(&str, &str)],
        want: &str,
        since: Instant,
    ) -> Result<Duration> {
        loop {
            let (status, body) = self.get(headers).await?;
            if status == 200 && body == want {
                return Ok(since.elapsed());
            }
            if since.elapsed() > DEADLINE {
                bail!(
                    "still {status} {body:?} instead of {want:?} after {DEADLINE:?}; Envoy log:\n{}",
                    self.gateway.proxy().log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

fn endpoints(name: &str, backends: &[&Backend]) -> Endpoints {
    let subsets: Vec<Value> = backends
        .iter()
        .map(|b| {
            json!({"addresses": [{"ip": "127.0.0.1"}],
                   "ports": [{"name": "http", "port": b.addr.port(), "protocol": "TCP"}]})
        })
        .collect();
    serde_json::from_value(json!({"metadata": {"name": name}, "subsets": subsets}))
        .expect("endpoints")
}

/// The seed's Ingress: class nginx, no host, `/version` Exact.
fn ingress(name: &str, service: &str, annotations: Value) -> Ingress {
    let mut ann = annotations;
    ann["kubernetes.io/ingress.class"] = json!("nginx");
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": ann},
        "spec": {"rules": [{"http": {"paths": [{
            "path": "/version", "pathType": "Exact",
            "backend": {"service": {"name": service, "port": {"number": 80}}}}]}}]},
    }))
    .expect("ingress")
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

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingresses_and_canaries_written_through_the_api_route_through_envoy() -> Result<()> {
    let v1 = Backend::start("v1").await?;
    let v2 = Backend::start("v2").await?;
    let v1b = Backend::start("v1b").await?;
    let c = Cluster::start().await?;
    c.service("demo", &[&v1]).await?;
    c.service("demo-canary", &[&v2]).await?;
    let ingresses = c.ingresses();
    ingresses
        .create(&PostParams::default(), &ingress("demo", "demo", json!({})))
        .await?;
    c.gateway.synced().await?;
    assert_eq!(c.get(&[]).await?, (200, "v1".to_string()));

    // A header canary Ingress: a route before the base route.
    let start = Instant::now();
    let header = json!({"higress.io/canary": "true", "higress.io/canary-by-header": "x-canary",
                        "higress.io/canary-by-header-value": "v2"});
    ingresses
        .create(
            &PostParams::default(),
            &ingress("demo-canary", "demo-canary", header),
        )
        .await?;
    let took = c.until(&[("x-canary", "v2")], "v2", start).await?;
    eprintln!("header canary Ingress created -> routed by Envoy after {took:?}");
    assert_eq!(c.get(&[]).await?, (200, "v1".to_string()));
    assert_eq!(
        c.get(&[("x-canary", "always")]).await?,
        (200, "v2".to_string())
    );

    // The same Ingress as a weight canary.
    ingresses
        .replace("demo-canary", &PostParams::default(), &{
            let mut ing = ingresses.get("demo-canary").await?;
            ing.metadata.annotations = Some(serde_json::from_value(json!({
                "kubernetes.io/ingress.class": "nginx",
                "nginx.ingress.kubernetes.io/canary": "true",
                "nginx.ingress.kubernetes.io/canary-weight": "30",
            }))?);
            ing
        })
        .await?;
    c.gateway.synced().await?;
    let share = c.canary_share(400).await?;
    assert!(
        (0.2..0.4).contains(&share),
        "canary share {share} at canary-weight 30"
    );

    // Endpoints move, after every watch was cut and the history compacted (the watchers
    // re-watch, or re-list after a 410).
    ingresses
        .delete("demo-canary", &DeleteParams::default())
        .await?;
    c.gateway.synced().await?;
    c.api.compact();
    c.api.close_watches();
    let start = Instant::now();
    c.move_endpoints("demo", &[&v1b]).await?;
    let took = c.until(&[], "v1b", start).await?;
    eprintln!("Endpoints patched (watches just cut) -> new backend served after {took:?}");
    c.gateway.synced().await?;
    for _ in 0..20 {
        assert_eq!(
            c.get(&[]).await?,
            (200, "v1b".to_string()),
            "the deleted canary stays deleted"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasm_plugin_routes_thirty_percent_to_the_canary_ingress() -> Result<()> {
    let wasm = plugin_wasm()?;
    let v1 = Backend::start("v1").await?;
    let v2 = Backend::start("v2").await?;
    let c = Cluster::start().await?;
    c.service("demo", &[&v1]).await?;
    c.service("demo-canary", &[&v2]).await?;
    let ingresses = c.ingresses();
    ingresses
        .create(&PostParams::default(), &ingress("demo", "demo", json!({})))
        .await?;
    let header = json!({"higress.io/canary": "true", "higress.io/canary-by-header": "x-higress-canary",
                        "higress.io/canary-by-header-value": "rollouts-demo"});
    ingresses
        .create(
            &PostParams::default(),
            &ingress("demo-canary", "demo-canary", header),
        )
        .await?;

    let plugin: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "extensions.higress.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"name": "higress-canary", "namespace": "higress-system"},
        "spec": {
            "url": format!("file://{}", wasm.display()),
            "failStrategy": "FAIL_OPEN",
            "phase": "UNSPECIFIED_PHASE",
            "priority": 100,
            "defaultConfig": {},
            "matchRules": [{
                "ingress": ["default/demo", "default/demo-canary"],
                "config": {"rollout": "default/rollouts-demo", "tagValue": "rollouts-demo", "weight": 0},
            }],
        },
    }))?;
    c.plugins().create(&PostParams::default(), &plugin).await?;
    c.gateway.synced().await?;
    assert_eq!(c.canary_share(50).await?, 0.0);
    // Adding the plugin changed the filter chain; edits of its config must not.
    let listener_modified = || async {
        let stats = c
            .gateway
            .proxy()
            .stats("^listener_manager\\.listener_modified$")
            .await?;
        anyhow::Ok(stats.get("listener_manager.listener_modified").cloned())
    };
    let modified_before = listener_modified().await?;

    // A config edit reaches Envoy by ECDS alone.
    let set_weight = |weight: u32| {
        Patch::Merge(json!({"spec": {"matchRules": [{
            "ingress": ["default/demo", "default/demo-canary"],
            "config": {"rollout": "default/rollouts-demo", "tagValue": "rollouts-demo", "weight": weight},
        }]}}))
    };
    let start = Instant::now();
    c.plugins()
        .patch("higress-canary", &PatchParams::default(), &set_weight(100))
        .await?;
    let took = c.until(&[], "v2", start).await?;
    eprintln!("WasmPlugin weight 0 -> 100 patched -> first canary answer after {took:?}");

    c.plugins()
        .patch("higress-canary", &PatchParams::default(), &set_weight(30))
        .await?;
    let acks = c.gateway.synced().await?;
    assert!(acks.rejected.is_empty(), "{acks:?}");
    let share = c.canary_share(400).await?;
    assert!(
        (0.2..0.4).contains(&share),
        "canary share {share} at plugin weight 30"
    );
    assert_eq!(
        listener_modified().await?,
        modified_before,
        "plugin config edits must not touch the listener"
    );
    Ok(())
}
