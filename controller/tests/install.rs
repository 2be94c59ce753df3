//! The installation manifests (`deploy/`) against the sandbox: kustomize renders them, the API
//! server accepts them (dry run, then for real), and the RBAC they grant is exactly what the
//! real controller binary uses through whole releases, proven from the API server's request log.

mod common;

use std::{
    collections::BTreeSet,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use common::{phase, run_test, scenario, workspace, Harness, NS, PATIENCE};
use higress_canary::{commands::Commands, crd::StepState, observe::wasm_plugin_api};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, PostParams};
use serde::Deserialize;
use serde_json::Value;

/// The namespace deploy/ runs the controller (and its Lease) in.
const CONTROLLER_NS: &str = "higress-canary-system";
const SERVICE_ACCOUNT: &str = "higress-canary-controller";

fn kubectl() -> PathBuf {
    std::env::var_os("KUBECTL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".venv/bin/kubectl"))
}

/// `kubectl <args>` with the sandbox's kubeconfig; fails with kubectl's stderr.
fn kubectl_run(kubeconfig: Option<&Path>, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut cmd = Command::new(kubectl());
    if let Some(kubeconfig) = kubeconfig {
        cmd.arg("--kubeconfig").arg(kubeconfig);
    }
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("running {} (run `cargo xtask setup`)", kubectl().display()))?;
    if let Some(input) = stdin {
        use std::io::Write as _;
        child
            .stdin
            .take()
            .context("kubectl stdin")?
            .write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "kubectl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

fn documents(yaml: &str) -> Result<Vec<Value>> {
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = Value::deserialize(doc)?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// `value` with every number as a float: kustomize writes the CRD's `minimum: 0.0` as `0`.
fn numbers_as_f64(value: &Value) -> Value {
    match value {
        Value::Number(n) => n.as_f64().map_or(Value::Null, Value::from),
        Value::Array(items) => items.iter().map(numbers_as_f64).collect(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| (k.clone(), numbers_as_f64(v)))
            .collect(),
        other => other.clone(),
    }
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Result<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .with_context(|| format!("the rendered manifests have no {kind} {name}"))
}

#[test]
fn the_kustomize_base_renders_and_the_api_server_accepts_it() -> Result<()> {
    let deploy = workspace().join("deploy");
    let base = kubectl_run(None, &["kustomize", &deploy.to_string_lossy()], None)?;
    let docs = documents(&base)?;
    let kinds: BTreeSet<String> = docs
        .iter()
        .map(|d| d["kind"].as_str().unwrap_or_default().to_owned())
        .collect();
    for kind in [
        "CustomResourceDefinition",
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "WasmPlugin",
    ] {
        ensure!(kinds.contains(kind), "deploy/ renders no {kind}: {kinds:?}");
    }
    // The CRD in the base is the generated one.
    let crd = find(
        &docs,
        "CustomResourceDefinition",
        "rollouts.rollouts.kruise.io",
    )?;
    let generated = documents(&higress_canary::crd_yaml())?;
    ensure!(
        numbers_as_f64(&crd["spec"]) == numbers_as_f64(&generated[0]["spec"]),
        "deploy/ renders a CRD other than the generated one"
    );

    // The controller Deployment: what the issue requires of it.
    let deployment = find(&docs, "Deployment", "higress-canary-controller")?;
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    ensure!(deployment["spec"]["replicas"] == 2, "2 replicas");
    ensure!(
        container["args"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "--leader-elect=true")),
        "leader election on"
    );
    ensure!(container["livenessProbe"]["httpGet"]["path"] == "/healthz");
    ensure!(container["readinessProbe"]["httpGet"]["path"] == "/readyz");
    ensure!(container["resources"]["requests"]["memory"].is_string());
    ensure!(container["resources"]["limits"]["memory"].is_string());
    ensure!(pod["securityContext"]["runAsNonRoot"] == true);
    let security = &container["securityContext"];
    ensure!(security["readOnlyRootFilesystem"] == true);
    ensure!(security["allowPrivilegeEscalation"] == false);
    ensure!(security["capabilities"]["drop"] == serde_json::json!(["ALL"]));
    ensure!(pod["serviceAccountName"] == SERVICE_ACCOUNT);

    // The example overlay sets both image references.
    let overlay = kubectl_run(
        None,
        &[
            "kustomize",
            &deploy.join("overlays/example").to_string_lossy(),
        ],
        None,
    )?;
    let overlay = documents(&overlay)?;
    let image = &find(&overlay, "Deployment", "higress-canary-controller")?["spec"]["template"]
        ["spec"]["containers"][0]["image"];
    ensure!(
        image == "registry.example.com/higress-canary/controller:0.1.0",
        "overlay image {image}"
    );
    let url = &find(&overlay, "WasmPlugin", "higress-canary")?["spec"]["url"];
    ensure!(
        url == "oci://registry.example.com/higress-canary/plugin:0.1.0",
        "overlay url {url}"
    );

    run_test(|| async move {
        let h = Harness::start().await?;
        let kubeconfig = h.kubeconfig();
        // As on a real cluster, a server-side dry run cannot place objects in a namespace that
        // only the same apply would create: the namespace goes first, for real.
        let namespace = find(&docs, "Namespace", CONTROLLER_NS)?;
        kubectl_run(
            Some(&kubeconfig),
            &["apply", "-f", "-"],
            Some(&serde_json::to_string(namespace)?),
        )?;
        let dry = kubectl_run(
            Some(&kubeconfig),
            &["apply", "--dry-run=server", "-f", "-"],
            Some(&base),
        )?;
        ensure!(dry.contains("(server dry run)"), "dry run output: {dry}");
        ensure!(
            kubectl_run(
                Some(&kubeconfig),
                &[
                    "get",
                    "deployment",
                    "-n",
                    CONTROLLER_NS,
                    "higress-canary-controller",
                    "--ignore-not-found"
                ],
                None
            )?
            .trim()
            .is_empty(),
            "a server dry run created the controller Deployment"
        );
        let applied = kubectl_run(Some(&kubeconfig), &["apply", "-f", "-"], Some(&base))?;
        ensure!(
            applied.lines().count() == docs.len(),
            "kubectl apply printed {} lines for {} objects:\n{applied}",
            applied.lines().count(),
            docs.len()
        );
        // Everything is there, and a second apply changes nothing. (kubectl reports the PDB
        // "configured" every time: its selector's patch strategy is `replace`, so the patch is
        // never empty; the object stays the same.)
        let versions = || -> Result<Vec<(String, String)>> {
            let listed: Value = serde_json::from_str(&kubectl_run(
                Some(&kubeconfig),
                &["get", "-f", "-", "-o", "json"],
                Some(&base),
            )?)?;
            Ok(listed["items"]
                .as_array()
                .context("kubectl get -o json lists items")?
                .iter()
                .map(|o| {
                    (
                        format!("{}/{}", o["kind"], o["metadata"]["name"]),
                        o["metadata"]["resourceVersion"].to_string(),
                    )
                })
                .collect())
        };
        let before = versions()?;
        ensure!(
            before.len() == docs.len(),
            "kubectl get -f found {before:?}"
        );
        kubectl_run(Some(&kubeconfig), &["apply", "-f", "-"], Some(&base))?;
        let after = versions()?;
        ensure!(
            before == after,
            "a second apply changed objects:\n{before:?}\n{after:?}"
        );
        Ok(())
    })
}

/// One RBAC rule, as rendered.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PolicyRule {
    #[serde(default)]
    api_groups: Vec<String>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    verbs: Vec<String>,
    #[serde(default)]
    resource_names: Vec<String>,
}

/// What the controller's ServiceAccount is granted: cluster-wide rules and rules per namespace.
struct Grants {
    cluster: Vec<PolicyRule>,
    namespaced: Vec<(String, PolicyRule)>,
}

impl Grants {
    fn of_service_account(docs: &[Value]) -> Result<Self> {
        let bound = |binding: &Value| {
            binding["subjects"].as_array().is_some_and(|subjects| {
                subjects.iter().any(|s| {
                    s["kind"] == "ServiceAccount"
                        && s["name"] == SERVICE_ACCOUNT
                        && s["namespace"] == CONTROLLER_NS
                })
            })
        };
        let rules = |kind: &str, name: &Value, ns: Option<&Value>| -> Result<Vec<PolicyRule>> {
            let role = docs
                .iter()
                .find(|d| {
                    d["kind"] == kind
                        && &d["metadata"]["name"] == name
                        && ns.is_none_or(|ns| &d["metadata"]["namespace"] == ns)
                })
                .with_context(|| format!("a binding refers to a missing {kind} {name}"))?;
            Ok(serde_json::from_value(role["rules"].clone())?)
        };
        let mut grants = Grants {
            cluster: Vec::new(),
            namespaced: Vec::new(),
        };
        for doc in docs {
            match doc["kind"].as_str() {
                Some("ClusterRoleBinding") if bound(doc) => {
                    ensure!(doc["roleRef"]["kind"] == "ClusterRole");
                    grants
                        .cluster
                        .extend(rules("ClusterRole", &doc["roleRef"]["name"], None)?);
                }
                Some("RoleBinding") if bound(doc) => {
                    let ns = &doc["metadata"]["namespace"];
                    ensure!(
                        doc["roleRef"]["kind"] == "Role",
                        "RoleBindings bind Roles here"
                    );
                    for rule in rules("Role", &doc["roleRef"]["name"], Some(ns))? {
                        grants
                            .namespaced
                            .push((ns.as_str().unwrap_or_default().to_owned(), rule));
                    }
                }
                _ => {}
            }
        }
        Ok(grants)
    }

    /// Every (scope, verb, group, resource) the grants allow; `scope` is `*` for cluster-wide.
    fn expanded(&self) -> BTreeSet<Access> {
        let mut out = BTreeSet::new();
        let rules = self
            .cluster
            .iter()
            .map(|r| ("*".to_owned(), r))
            .chain(self.namespaced.iter().map(|(ns, r)| (ns.clone(), r)));
        for (scope, rule) in rules {
            for group in &rule.api_groups {
                for resource in &rule.resources {
                    for verb in &rule.verbs {
                        out.insert(Access {
                            scope: scope.clone(),
                            verb: verb.clone(),
                            group: group.clone(),
                            resource: resource.clone(),
                        });
                    }
                }
            }
        }
        out
    }

    fn allows(&self, used: &Access) -> bool {
        self.expanded().iter().any(|granted| {
            granted.verb == used.verb
                && granted.group == used.group
                && granted.resource == used.resource
                && (granted.scope == "*" || granted.scope == used.scope)
        })
    }
}

/// One kind of request: in namespace `scope` (`*` for a request across all namespaces), `verb`
/// on `group`/`resource` (with `/subresource`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Access {
    scope: String,
    verb: String,
    group: String,
    resource: String,
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        write!(
            f,
            "{} {group}/{} in {}",
            self.verb, self.resource, self.scope
        )
    }
}

/// The real controller binary, as deploy/ runs it, against the sandbox.
struct ControllerProcess(std::process::Child);

impl ControllerProcess {
    fn start(h: &Harness) -> Result<Self> {
        let metrics_port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = std::fs::File::create(
            std::env::temp_dir().join(format!("rbac-controller-{}.log", std::process::id())),
        )?;
        let child = Command::new(env!("CARGO_BIN_EXE_higress-canary"))
            .args(["run", "--kubeconfig"])
            .arg(h.kubeconfig())
            .arg(format!("--metrics-addr=127.0.0.1:{metrics_port}"))
            .args(["--leader-elect=true", "--lease-duration=15"])
            .arg(format!("--plugin-url={}", h.settings.plugin.url))
            .env("POD_NAME", "higress-canary-controller-0")
            .env("POD_NAMESPACE", CONTROLLER_NS)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting higress-canary run")?;
        Ok(Self(child))
    }

    /// SIGTERM, as the kubelet stops a pod; the controller releases its Lease.
    fn terminate(mut self) -> Result<()> {
        let pid = self.0.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let start = Instant::now();
        while self.0.try_wait()?.is_none() {
            ensure!(
                start.elapsed() < Duration::from_secs(30),
                "the controller did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Creates a seed Rollout and waits until the (out-of-process) controller adopted `demo`.
async fn adopt(h: &Harness, name: &str) -> Result<()> {
    h.create_yaml(&scenario("rollout-canary.yaml")).await?;
    h.wait_rollout(name, "phase Healthy", |r| phase(r) == "Healthy")
        .await?;
    Ok(())
}

#[test]
fn rbac_grants_exactly_what_the_controller_uses_through_whole_releases() -> Result<()> {
    let rendered = kubectl_run(
        None,
        &["kustomize", &workspace().join("deploy").to_string_lossy()],
        None,
    )?;
    let docs = documents(&rendered)?;
    let grants = Grants::of_service_account(&docs)?;
    for (_, rule) in grants
        .cluster
        .iter()
        .map(|r| ("", r))
        .chain(grants.namespaced.iter().map(|(ns, r)| (ns.as_str(), r)))
    {
        for list in [&rule.api_groups, &rule.resources, &rule.verbs] {
            ensure!(
                !list.iter().any(|x| x.contains('*')),
                "a wildcard in {rule:?}"
            );
        }
        ensure!(
            rule.resource_names.is_empty(),
            "resourceNames are not modelled by this test: {rule:?}"
        );
    }

    run_test(|| async move {
        let h = Harness::start().await?;
        let namespace = serde_json::json!({"metadata": {"name": CONTROLLER_NS}});
        Api::<Namespace>::all(h.client.clone())
            .create(&PostParams::default(), &serde_json::from_value(namespace)?)
            .await?;
        let controller = ControllerProcess::start(&h)?;
        let rollout = "rollouts-demo";

        // A whole release, approved step by step as kubectl-kruise does.
        adopt(&h, rollout).await?;
        h.set_image("v2").await?;
        for step in 1..=2 {
            h.wait_paused_at(rollout, step).await?;
            h.approve_like_kruise(rollout).await?;
        }
        h.wait_finished(rollout, "True").await?;
        h.until_all(&[], "v2").await?;

        // Someone deletes the shared WasmPlugin; the next release recreates it. Then abort.
        wasm_plugin_api(&h.client, &h.settings.plugin)
            .delete(&h.settings.plugin.name, &DeleteParams::default())
            .await?;
        h.set_image("v3").await?;
        let aborted = h.wait_paused_at(rollout, 1).await?;
        let aborted_revision = aborted
            .canary_status()
            .map(|c| c.canary_revision.clone())
            .unwrap_or_default();
        wasm_plugin_api(&h.client, &h.settings.plugin)
            .get(&h.settings.plugin.name)
            .await
            .context("the controller did not recreate the WasmPlugin")?;
        Commands::new(h.client.clone(), NS.to_owned())
            .abort(rollout)
            .await?;
        h.wait_finished(rollout, "False").await?;

        // A release cut short by deleting the Rollout (the finalizer's cleanup).
        h.set_image("v4").await?;
        h.wait_rollout(rollout, "the v4 release paused at step 1", |r| {
            r.canary_status().is_some_and(|c| {
                c.current_step_index == 1
                    && c.current_step_state == StepState::StepPaused
                    && c.canary_revision != aborted_revision
            })
        })
        .await?;
        h.rollouts()
            .delete(rollout, &DeleteParams::default())
            .await?;
        let start = Instant::now();
        while h.rollouts().get_opt(rollout).await?.is_some() {
            ensure!(start.elapsed() < PATIENCE, "the Rollout was never released");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Released, the Deployment rolls natively to the template it has.
        h.until_all(&[], "v4").await?;
        controller.terminate()?;

        let used: BTreeSet<Access> = h
            .cluster
            .api
            .requests()
            .iter()
            .filter(|r| {
                r.user_agent.as_deref().is_some_and(|ua| {
                    ua.starts_with("higress-canary/") && ua.ends_with("(controller)")
                })
            })
            .map(|r| Access {
                scope: r.namespace.clone().unwrap_or_else(|| "*".to_owned()),
                verb: r.verb.clone(),
                group: r.group.clone(),
                resource: if r.subresource.is_empty() {
                    r.resource.clone()
                } else {
                    format!("{}/{}", r.resource, r.subresource)
                },
            })
            .collect();
        ensure!(
            used.len() > 5,
            "the request log has almost no requests from the controller binary (User-Agent \
             higress-canary/…): {used:?}"
        );
        let denied: Vec<String> = used
            .iter()
            .filter(|u| !grants.allows(u))
            .map(ToString::to_string)
            .collect();
        let unused: Vec<String> = grants
            .expanded()
            .into_iter()
            .filter(|g| {
                !used.iter().any(|u| {
                    u.verb == g.verb
                        && u.group == g.group
                        && u.resource == g.resource
                        && (g.scope == "*" || g.scope == u.scope)
                })
            })
            .map(|g| g.to_string())
            .collect();
        let used_lines: Vec<String> = used.iter().map(ToString::to_string).collect();
        if !denied.is_empty() || !unused.is_empty() {
            bail!(
                "deploy/base/rbac.yaml does not match what the controller does.\n\
                 used but not granted: {denied:#?}\n\
                 granted but never used: {unused:#?}\n\
                 all used: {used_lines:#?}"
            );
        }
        Ok(())
    })
}
