//! The whole sandbox as a newcomer uses it: the seed application applied with the real
//! kubectl, served by simulated pods through the Envoy gateway, then a WasmPlugin with the
//! repository's plugin sending 30% of the traffic to a canary Ingress.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::{kubectl_bin, scenario};
use sandbox::cluster::{Cluster, ClusterConfig};
use sandbox::gateway::http::{self, Client as HttpClient};
use tempfile::TempDir;
use tokio::process::Command;

const DEADLINE: Duration = Duration::from_secs(30);

fn plugin_wasm() -> Result<PathBuf> {
    let path = Cluster::local_plugin_wasm();
    ensure!(
        path.is_file(),
        "no plugin at {}: run `cargo xtask wasm`",
        path.display()
    );
    Ok(path)
}

struct Kubectl {
    bin: PathBuf,
    dir: TempDir,
}

impl Kubectl {
    fn new(cluster: &Cluster) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        cluster
            .api
            .write_kubeconfig(&dir.path().join("kubeconfig"))?;
        Ok(Self {
            bin: kubectl_bin()?,
            dir,
        })
    }

    /// `kubectl apply -f -` with `manifest` on stdin, default flags.
    async fn apply(&self, manifest: &str) -> Result<String> {
        let file = self.dir.path().join("manifest.yaml");
        std::fs::write(&file, manifest)?;
        let out = Command::new(&self.bin)
            .arg("--kubeconfig")
            .arg(self.dir.path().join("kubeconfig"))
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .arg("apply")
            .arg("-f")
            .arg(&file)
            .output()
            .await
            .context("running kubectl")?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(
            out.status.success(),
            "kubectl apply failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(stdout)
    }
}

async fn until_version(cluster: &Cluster, want: &str) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let reply = http::get(cluster.gateway.listener_addr(), "/version", &[]).await;
        match reply {
            Ok(r) if r.status == 200 && r.text() == want => return Ok(start.elapsed()),
            Ok(_) | Err(_) if start.elapsed() < DEADLINE => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Ok(r) => bail!(
                "gateway still answers {} {:?}, not {want:?}",
                r.status,
                r.text()
            ),
            Err(e) => bail!("gateway unreachable: {e}"),
        }
    }
}

const CANARY: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: demo-canary}
spec:
  replicas: 1
  selector: {matchLabels: {app: demo-canary}}
  template:
    metadata: {labels: {app: demo-canary}}
    spec:
      containers:
      - {name: main, image: "registry.cn-hangzhou.aliyuncs.com/mse-ingress/version:v2", ports: [{containerPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: demo-canary}
spec:
  ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
  # Not `app: demo`: the stable Service would then send some of its share to the canary pod.
  selector: {app: demo-canary}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: demo-canary
  annotations:
    kubernetes.io/ingress.class: nginx
    higress.io/canary: "true"
    higress.io/canary-by-header: x-higress-canary
    higress.io/canary-by-header-value: rollouts-demo
spec:
  rules:
  - http:
      paths:
      - {path: /version, pathType: Exact, backend: {service: {name: demo-canary, port: {number: 80}}}}
"#;

fn wasm_plugin(wasm: &Path, weight: u32) -> String {
    format!(
        r#"
apiVersion: extensions.higress.io/v1alpha1
kind: WasmPlugin
metadata: {{name: higress-canary, namespace: higress-system}}
spec:
  url: file://{}
  failStrategy: FAIL_OPEN
  defaultConfig: {{}}
  matchRules:
  - ingress: [default/demo, default/demo-canary]
    config: {{rollout: default/rollouts-demo, tagValue: rollouts-demo, weight: {weight}}}
"#,
        wasm.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_app_applied_with_kubectl_is_served_and_a_wasm_plugin_splits_it() -> Result<()> {
    let wasm = plugin_wasm()?;
    let cluster = Cluster::start(ClusterConfig::default()).await?;
    let kubectl = Kubectl::new(&cluster)?;

    let seed = scenario("demo-app.yaml")?;
    kubectl.apply(&seed).await?;
    let took = until_version(&cluster, "v1").await?;
    eprintln!("seed applied -> gateway answers v1 after {took:?}");

    kubectl.apply(CANARY).await?;
    kubectl.apply(&wasm_plugin(&wasm, 0)).await?;
    let acks = cluster.gateway.synced().await?;
    ensure!(acks.rejected.is_empty(), "Envoy rejected {acks:?}");
    // The canary route exists, but without the tag only stable pods answer.
    let mut client = HttpClient::connect(cluster.gateway.listener_addr()).await?;
    let tagged = http::get(
        cluster.gateway.listener_addr(),
        "/version",
        &[("x-higress-canary", "rollouts-demo")],
    )
    .await?;
    ensure!(
        tagged.text() == "v1",
        "a forged tag reached {:?}",
        tagged.text()
    );

    kubectl.apply(&wasm_plugin(&wasm, 30)).await?;
    let acks = cluster.gateway.synced().await?;
    ensure!(acks.rejected.is_empty(), "Envoy rejected {acks:?}");
    // Wait until this connection's worker runs the new config, then count.
    let start = Instant::now();
    loop {
        if client.get("/version", &[]).await?.text() == "v2" {
            break;
        }
        ensure!(
            start.elapsed() < DEADLINE,
            "the 30% config never took effect"
        );
    }
    let n = 4000u32;
    let mut canary = 0u32;
    for _ in 0..n {
        let reply = client.get("/version", &[]).await?;
        match (reply.status, reply.text().as_str()) {
            (200, "v2") => canary += 1,
            (200, "v1") => {}
            (status, body) => bail!("unexpected answer {status} {body:?}"),
        }
    }
    // 99.9% two-sided binomial bound around 30%.
    let (p, n) = (0.3, f64::from(n));
    let bound = 3.29 * (n * p * (1.0 - p)).sqrt();
    let observed = f64::from(canary);
    ensure!(
        (observed - p * n).abs() <= bound,
        "{canary} of {n} requests reached the canary, expected {} ± {bound:.0}",
        p * n
    );
    Ok(())
}
