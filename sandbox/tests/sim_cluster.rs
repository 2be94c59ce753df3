//! The workload simulator against the fake API server, through kube's real client only:
//! the seed Deployment comes up as real HTTP servers behind Endpoints, image changes roll
//! out the way `kubectl rollout status` follows them, paused Deployments scale without a new
//! ReplicaSet, and the failure knobs fail the way they should.

use std::{
    future::Future,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{bail, ensure, Context, Result};
use futures::StreamExt;
use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    core::v1::{Endpoints, Pod, Service},
};
use kube::{
    api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams},
    runtime::{watcher, WatchStreamExt},
    Client,
};
use sandbox::{
    api::{ApiConfig, ApiServer},
    sim::{
        deployment::{rs_replicas, REVISION, REVISION_HISTORY},
        hash::{pod_template_hash, POD_TEMPLATE_HASH},
        SimConfig, Simulator, ERROR_RATE_ANNOTATION, NEVER_READY_ANNOTATION, PORT_ANNOTATION,
    },
};
use serde::Deserialize;
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::Instant,
};

const PATIENCE: Duration = Duration::from_secs(30);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

struct Cluster {
    _api: ApiServer,
    sim: Option<Simulator>,
    client: Client,
}

impl Cluster {
    async fn start(readiness_delay: Duration) -> Result<Self> {
        init_tracing();
        let api = ApiServer::start(ApiConfig::default()).await?;
        let client = api.client();
        let config = SimConfig {
            readiness_delay,
            termination_grace: Duration::ZERO,
            ..SimConfig::default()
        };
        let sim = Simulator::start(client.clone(), config).await?;
        Ok(Self {
            _api: api,
            sim: Some(sim),
            client,
        })
    }

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), "default")
    }

    fn replicasets(&self) -> Api<ReplicaSet> {
        Api::namespaced(self.client.clone(), "default")
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), "default")
    }

    fn endpoints(&self) -> Api<Endpoints> {
        Api::namespaced(self.client.clone(), "default")
    }

    /// Creates the seed's Deployment and Service, after `edit` on the Deployment.
    async fn apply_seed(&self, edit: impl FnOnce(&mut Deployment)) -> Result<Deployment> {
        let (mut d, svc) = seed()?;
        edit(&mut d);
        let pp = PostParams::default();
        Api::<Service>::namespaced(self.client.clone(), "default")
            .create(&pp, &svc)
            .await?;
        Ok(self.deployments().create(&pp, &d).await?)
    }

    async fn deployment(&self) -> Result<Deployment> {
        Ok(self.deployments().get("demo").await?)
    }

    async fn set_image(&self, tag: &str) -> Result<()> {
        let mut d = self.deployment().await?;
        let spec = d.spec.template.spec.as_mut().context("pod spec")?;
        let image = spec.containers[0].image.clone().unwrap_or_default();
        let repo = image
            .rsplit_once(':')
            .map_or(image.as_str(), |(repo, _)| repo);
        spec.containers[0].image = Some(format!("{repo}:{tag}"));
        self.deployments()
            .replace("demo", &PostParams::default(), &d)
            .await?;
        Ok(())
    }

    async fn merge_patch(&self, patch: serde_json::Value) -> Result<()> {
        self.deployments()
            .patch("demo", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    async fn demo_pods(&self) -> Result<Vec<Pod>> {
        Ok(self
            .pods()
            .list(&ListParams::default().labels("app=demo"))
            .await?
            .items)
    }

    async fn demo_replicasets(&self) -> Result<Vec<ReplicaSet>> {
        Ok(self
            .replicasets()
            .list(&ListParams::default().labels("app=demo"))
            .await?
            .items)
    }

    /// Waits until `kubectl rollout status` would say the rollout is done.
    async fn rolled_out(&self) -> Result<Deployment> {
        eventually("the rollout to finish", || async {
            let d = self.deployment().await?;
            Ok(rollout_status(&d)?.1.then_some(d))
        })
        .await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        drop(self.sim.take());
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("invariant: the sandbox crate lives in the workspace")
        .to_path_buf()
}

/// The seed's Deployment and Service (`shared/scenarios/demo-app.yaml`, or the controller's
/// byte-identical copy of it).
fn seed() -> Result<(Deployment, Service)> {
    let root = workspace();
    let candidates = [
        root.join("../shared/scenarios/demo-app.yaml"),
        root.join("controller/tests/fixtures/demo-app.yaml"),
    ];
    let path = candidates
        .iter()
        .find(|p| p.is_file())
        .context("demo-app.yaml not found")?;
    let text = std::fs::read_to_string(path)?;
    let mut deployment = None;
    let mut service = None;
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_json::to_value(serde_yaml::Value::deserialize(doc)?)?;
        match value.get("kind").and_then(|k| k.as_str()) {
            Some("Deployment") => deployment = Some(serde_json::from_value(value)?),
            Some("Service") => service = Some(serde_json::from_value(value)?),
            _ => {}
        }
    }
    Ok((
        deployment.context("no Deployment")?,
        service.context("no Service")?,
    ))
}

/// Polls `f` until it returns `Some`, for at most [`PATIENCE`].
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + PATIENCE;
    let mut last_err = None;
    loop {
        match f().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what} (last error: {last_err:?})");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// kubectl's `DeploymentStatusViewer`: (message, done), or an error for a deadline exceeded.
fn rollout_status(d: &Deployment) -> Result<(String, bool)> {
    let s = d.status.clone().unwrap_or_default();
    let get = |v: Option<i32>| v.unwrap_or(0);
    if d.metadata.generation.unwrap_or(0) > s.observed_generation.unwrap_or(0) {
        return Ok((
            "Waiting for deployment spec update to be observed...".into(),
            false,
        ));
    }
    let progressing = s
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_.as_deref() == Some("Progressing"));
    if progressing.and_then(|c| c.reason.as_deref()) == Some("ProgressDeadlineExceeded") {
        bail!("deployment \"demo\" exceeded its progress deadline");
    }
    let replicas = d.spec.replicas.unwrap_or(1);
    let (updated, total, available) = (
        get(s.updated_replicas),
        get(s.replicas),
        get(s.available_replicas),
    );
    let msg = if updated < replicas {
        format!("{updated} out of {replicas} new replicas have been updated...")
    } else if total > updated {
        format!(
            "{} old replicas are pending termination...",
            total - updated
        )
    } else if available < updated {
        format!("{available} of {updated} updated replicas are available...")
    } else {
        return Ok(("deployment \"demo\" successfully rolled out".into(), true));
    };
    Ok((
        format!("Waiting for deployment \"demo\" rollout to finish: {msg}"),
        false,
    ))
}

fn condition(d: &Deployment, type_: &str) -> Option<(String, String, String)> {
    let c = d
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_.as_deref() == Some(type_))?;
    Some((
        c.status.clone().unwrap_or_default(),
        c.reason.clone().unwrap_or_default(),
        c.message.clone().unwrap_or_default(),
    ))
}

fn port(pod: &Pod) -> Result<u16> {
    let value = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PORT_ANNOTATION))
        .context("pod has no port annotation")?;
    Ok(value.parse()?)
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// One HTTP/1.1 request on a fresh connection: (status, x-pod-name, body).
async fn http_get(port: u16, path: &str) -> Result<(u16, String, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    let req = format!("GET {path} HTTP/1.1\r\nhost: demo\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).await?;
    let (head, body) = raw.split_once("\r\n\r\n").context("no response head")?;
    let status = head.get(9..12).context("short status line")?.parse()?;
    let pod = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-pod-name: ")
                .map(str::to_owned)
        })
        .unwrap_or_default();
    Ok((status, pod, body.to_owned()))
}

/// Ready demo pods, with the tag their server answers.
async fn ready_tags(c: &Cluster) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for pod in c.demo_pods().await? {
        if !is_ready(&pod) || pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let name = pod.metadata.name.clone().unwrap_or_default();
        let (status, header, body) = http_get(port(&pod)?, "/version").await?;
        ensure!(status == 200, "{name} answered {status}");
        ensure!(header == name, "{name} answered as {header:?}");
        out.push((name, body));
    }
    out.sort();
    Ok(out)
}

/// Ready addresses in the demo Endpoints, as (pod name, port).
async fn endpoint_targets(c: &Cluster) -> Result<Vec<(String, u16)>> {
    let Some(eps) = c.endpoints().get_opt("demo").await? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for subset in eps.subsets.iter().flatten() {
        let port = subset
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some("http"));
        for addr in subset.addresses.iter().flatten() {
            ensure!(addr.ip == "127.0.0.1", "address {}", addr.ip);
            let target = addr.target_ref.as_ref().context("targetRef")?;
            ensure!(target.kind.as_deref() == Some("Pod"));
            ensure!(target.uid.is_some() && target.namespace.as_deref() == Some("default"));
            let port = port.context("no http port")?.port;
            out.push((
                target.name.clone().unwrap_or_default(),
                u16::try_from(port)?,
            ));
        }
    }
    out.sort();
    Ok(out)
}

/// Records every status the Deployment goes through.
fn record_statuses(c: &Cluster) -> Arc<Mutex<Vec<Deployment>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let cfg = watcher::Config::default().fields("metadata.name=demo");
    let stream = watcher(c.deployments(), cfg)
        .default_backoff()
        .applied_objects();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(Ok(d)) = stream.next().await {
            sink.lock().expect("not poisoned").push(d);
        }
    });
    seen
}

#[tokio::test]
async fn the_seed_deployment_runs_five_pods_answering_v1_behind_endpoints() -> Result<()> {
    let c = Cluster::start(Duration::from_millis(100)).await?;
    let created = c.apply_seed(|_| {}).await?;
    let d = c.rolled_out().await?;
    let s = d.status.clone().context("status")?;
    assert_eq!(s.observed_generation, created.metadata.generation);
    assert_eq!(
        (
            s.replicas,
            s.updated_replicas,
            s.ready_replicas,
            s.available_replicas
        ),
        (Some(5), Some(5), Some(5), Some(5))
    );
    let (status, reason, _) = condition(&d, "Available").context("Available")?;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "MinimumReplicasAvailable")
    );
    let (status, reason, message) = condition(&d, "Progressing").context("Progressing")?;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "NewReplicaSetAvailable")
    );

    // One ReplicaSet, named after the template hash, owned by the Deployment.
    let hash = pod_template_hash(&d.spec.template, None);
    let rs_name = format!("demo-{hash}");
    assert_eq!(
        message,
        format!("ReplicaSet \"{rs_name}\" has successfully progressed.")
    );
    let rss = c.demo_replicasets().await?;
    assert_eq!(rss.len(), 1);
    let rs = &rss[0];
    assert_eq!(rs.metadata.name.as_deref(), Some(rs_name.as_str()));
    let owner = &rs.metadata.owner_references.as_ref().context("owner")?[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("Deployment", Some(true))
    );
    assert_eq!(Some(owner.uid.as_str()), d.metadata.uid.as_deref());
    let annotations = rs.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(annotations.get(REVISION).map(String::as_str), Some("1"));
    let d_annotations = d.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(d_annotations.get(REVISION).map(String::as_str), Some("1"));
    let rs_status = rs.status.clone().context("RS status")?;
    assert_eq!(
        (rs_status.replicas, rs_status.available_replicas),
        (5, Some(5))
    );

    // Five pods named after it, each a server answering v1 with its own name.
    let pods = c.demo_pods().await?;
    assert_eq!(pods.len(), 5);
    for pod in &pods {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let suffix = name
            .strip_prefix(&format!("{rs_name}-"))
            .context("pod name")?;
        assert_eq!(suffix.len(), 5, "{name}");
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get(POD_TEMPLATE_HASH), Some(&hash));
        let status = pod.status.as_ref().context("pod status")?;
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.pod_ip.as_deref(), Some("127.0.0.1"));
        assert!(is_ready(pod));
    }
    let tags = ready_tags(&c).await?;
    assert_eq!(tags.len(), 5);
    assert!(tags.iter().all(|(_, tag)| tag == "v1"), "{tags:?}");

    // Endpoints list exactly those pods, each on its server port.
    let expected: Vec<(String, u16)> = {
        let mut v = pods
            .iter()
            .map(|p| Ok((p.metadata.name.clone().unwrap_or_default(), port(p)?)))
            .collect::<Result<Vec<_>>>()?;
        v.sort();
        v
    };
    let targets = eventually("Endpoints with all five pods", || async {
        let t = endpoint_targets(&c).await?;
        Ok((t.len() == 5).then_some(t))
    })
    .await?;
    assert_eq!(targets, expected);
    Ok(())
}

#[tokio::test]
async fn an_image_change_rolls_out_step_by_step_as_kubectl_follows_it() -> Result<()> {
    let c = Cluster::start(Duration::from_millis(150)).await?;
    c.apply_seed(|_| {}).await?;
    let before = c.rolled_out().await?;
    let statuses = record_statuses(&c);
    // Let the recorder list first, so it sees every later status.
    eventually("the status recorder", || async {
        Ok((!statuses.lock().expect("not poisoned").is_empty()).then_some(()))
    })
    .await?;

    c.set_image("v2").await?;
    let after = c.rolled_out().await?;
    assert!(after.metadata.generation > before.metadata.generation);
    let annotations = after.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(annotations.get(REVISION).map(String::as_str), Some("2"));

    // Within maxSurge (25% of 5 → 2) and maxUnavailable (25% of 5 → 1) all along, and the
    // stepwise messages kubectl prints.
    let seen = statuses.lock().expect("not poisoned").clone();
    let mut messages: Vec<String> = Vec::new();
    for d in &seen {
        let s = d.status.clone().unwrap_or_default();
        assert!(s.replicas.unwrap_or(0) <= 7, "surge exceeded: {s:?}");
        if d.metadata.generation == after.metadata.generation
            && s.observed_generation == after.metadata.generation
        {
            assert!(
                s.available_replicas.unwrap_or(0) >= 4,
                "too many unavailable: {s:?}"
            );
        }
        let (msg, _) = rollout_status(d)?;
        if messages.last() != Some(&msg) {
            messages.push(msg);
        }
    }
    assert!(
        messages
            .iter()
            .any(|m| m.contains("new replicas have been updated")),
        "{messages:#?}"
    );
    assert_eq!(
        messages.last().map(String::as_str),
        Some("deployment \"demo\" successfully rolled out")
    );

    // The old ReplicaSet is scaled to zero and kept; every ready pod answers v2.
    let rss = c.demo_replicasets().await?;
    assert_eq!(rss.len(), 2);
    let new_name = format!("demo-{}", pod_template_hash(&after.spec.template, None));
    for rs in &rss {
        let expect = if rs.metadata.name.as_deref() == Some(new_name.as_str()) {
            5
        } else {
            0
        };
        assert_eq!(rs_replicas(rs), expect, "{:?}", rs.metadata.name);
    }
    let tags = eventually("only v2 pods", || async {
        let t = ready_tags(&c).await?;
        let pods = c.demo_pods().await?;
        Ok((pods.len() == 5 && t.len() == 5 && t.iter().all(|(_, tag)| tag == "v2")).then_some(t))
    })
    .await?;
    let targets = eventually("Endpoints with the new pods", || async {
        let t = endpoint_targets(&c).await?;
        let names: Vec<&String> = t.iter().map(|(n, _)| n).collect();
        let want: Vec<&String> = tags.iter().map(|(n, _)| n).collect();
        Ok((names == want).then_some(t))
    })
    .await?;
    assert_eq!(targets.len(), 5);

    // Back to v1: its old ReplicaSet comes back with the next revision, and no third one.
    c.set_image("v1").await?;
    let back = c.rolled_out().await?;
    let annotations = back.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(annotations.get(REVISION).map(String::as_str), Some("3"));
    let rss = c.demo_replicasets().await?;
    assert_eq!(rss.len(), 2);
    let v1 = rss
        .iter()
        .find(|rs| rs.metadata.name.as_deref() != Some(new_name.as_str()))
        .context("the v1 ReplicaSet")?;
    let annotations = v1.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(annotations.get(REVISION).map(String::as_str), Some("3"));
    assert_eq!(
        annotations.get(REVISION_HISTORY).map(String::as_str),
        Some("1")
    );
    assert_eq!(rs_replicas(v1), 5);
    Ok(())
}

#[tokio::test]
async fn a_paused_deployment_scales_without_a_new_replica_set() -> Result<()> {
    let c = Cluster::start(Duration::from_millis(50)).await?;
    c.apply_seed(|d| d.spec.replicas = Some(3)).await?;
    c.rolled_out().await?;
    c.merge_patch(json!({"spec": {"paused": true}})).await?;
    c.set_image("v2").await?;
    c.merge_patch(json!({"spec": {"replicas": 5}})).await?;
    let d = eventually("the paused generation to be observed", || async {
        let d = c.deployment().await?;
        let observed = d.status.as_ref().and_then(|s| s.observed_generation);
        Ok((observed == d.metadata.generation).then_some(d))
    })
    .await?;
    let (status, reason, message) = condition(&d, "Progressing").context("Progressing")?;
    assert_eq!(
        (status.as_str(), reason.as_str(), message.as_str()),
        ("Unknown", "DeploymentPaused", "Deployment is paused")
    );
    let tags = eventually("five v1 pods", || async {
        let t = ready_tags(&c).await?;
        Ok((t.len() == 5).then_some(t))
    })
    .await?;
    assert!(tags.iter().all(|(_, tag)| tag == "v1"), "{tags:?}");
    let rss = c.demo_replicasets().await?;
    assert_eq!(rss.len(), 1, "no new ReplicaSet while paused");
    assert_eq!(rs_replicas(&rss[0]), 5);
    let d = c.deployment().await?;
    let s = d.status.clone().context("status")?;
    assert_eq!(s.updated_replicas, None, "the v2 template has no pods");
    assert!(!rollout_status(&d)?.1);

    c.merge_patch(json!({"spec": {"paused": false}})).await?;
    let d = c.rolled_out().await?;
    assert_eq!(d.status.and_then(|s| s.updated_replicas), Some(5));
    eventually("five v2 pods", || async {
        let t = ready_tags(&c).await?;
        Ok((t.len() == 5 && t.iter().all(|(_, tag)| tag == "v2")).then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn never_ready_pods_end_in_progress_deadline_exceeded() -> Result<()> {
    let c = Cluster::start(Duration::from_millis(50)).await?;
    c.apply_seed(|d| {
        d.spec.replicas = Some(2);
        d.spec.progress_deadline_seconds = Some(2);
    })
    .await?;
    c.rolled_out().await?;
    let v1 = ready_tags(&c).await?;

    // A bad version: its pods never pass the readiness probe.
    c.merge_patch(json!({"metadata": {"annotations": {NEVER_READY_ANNOTATION: "true"}}}))
        .await?;
    c.set_image("v2").await?;
    let d = eventually("ProgressDeadlineExceeded", || async {
        let d = c.deployment().await?;
        let timed_out = condition(&d, "Progressing")
            .is_some_and(|(s, r, _)| s == "False" && r == "ProgressDeadlineExceeded");
        Ok(timed_out.then_some(d))
    })
    .await?;
    let err = rollout_status(&d).expect_err("kubectl reports the deadline");
    assert!(err.to_string().contains("exceeded its progress deadline"));
    let (_, _, message) = condition(&d, "Progressing").context("Progressing")?;
    let new_name = format!("demo-{}", pod_template_hash(&d.spec.template, None));
    assert_eq!(
        message,
        format!("ReplicaSet \"{new_name}\" has timed out progressing.")
    );

    // The new pods run but are not ready; the old ones keep serving behind the Service.
    let pods = c.demo_pods().await?;
    let new_pods: Vec<&Pod> = pods
        .iter()
        .filter(|p| {
            p.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with(&new_name))
        })
        .collect();
    assert!(!new_pods.is_empty());
    assert!(new_pods.iter().all(|p| !is_ready(p)));
    assert_eq!(ready_tags(&c).await?, v1, "the old pods still serve v1");
    let targets = endpoint_targets(&c).await?;
    let names: Vec<String> = targets.into_iter().map(|(n, _)| n).collect();
    let v1_names: Vec<String> = v1.into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, v1_names);
    Ok(())
}

#[tokio::test]
async fn the_error_rate_knob_fails_that_share_of_requests() -> Result<()> {
    let c = Cluster::start(Duration::from_millis(50)).await?;
    c.apply_seed(|d| {
        d.spec.replicas = Some(2);
        d.metadata.annotations =
            Some([(ERROR_RATE_ANNOTATION.to_owned(), "0.25".to_owned())].into());
    })
    .await?;
    c.rolled_out().await?;
    let pods = c.demo_pods().await?;
    assert_eq!(pods.len(), 2);
    let mut errors = 0;
    for pod in &pods {
        for _ in 0..40 {
            let (status, name, body) = http_get(port(pod)?, "/").await?;
            assert_eq!(Some(name.as_str()), pod.metadata.name.as_deref());
            match status {
                200 => assert_eq!(body, "v1"),
                500 => errors += 1,
                other => bail!("unexpected status {other}"),
            }
        }
    }
    assert_eq!(errors, 20, "a quarter of 80 requests");

    // A running pod's own annotation takes effect at once.
    let first = &pods[0];
    let name = first.metadata.name.as_deref().context("name")?;
    let patch = json!({"metadata": {"annotations": {ERROR_RATE_ANNOTATION: "1"}}});
    c.pods()
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    eventually("the pod to fail every request", || async {
        let mut all_failed = true;
        for _ in 0..4 {
            all_failed &= http_get(port(first)?, "/").await?.0 == 500;
        }
        Ok(all_failed.then_some(()))
    })
    .await?;

    // On the Deployment, the knob applies to the pods created after it: a new version
    // without errors replaces these.
    c.merge_patch(json!({"metadata": {"annotations": {ERROR_RATE_ANNOTATION: "0"}}}))
        .await?;
    c.set_image("v2").await?;
    c.rolled_out().await?;
    let fresh = eventually("two v2 pods", || async {
        let pods = c.demo_pods().await?;
        let t = ready_tags(&c).await?;
        Ok(
            (pods.len() == 2 && t.len() == 2 && t.iter().all(|(_, tag)| tag == "v2"))
                .then_some(pods),
        )
    })
    .await?;
    for pod in &fresh {
        for _ in 0..8 {
            assert_eq!(
                http_get(port(pod)?, "/").await?,
                (
                    200,
                    pod.metadata.name.clone().unwrap_or_default(),
                    "v2".into()
                )
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn deleting_the_deployment_removes_pods_servers_and_endpoints() -> Result<()> {
    let c = Cluster::start(Duration::from_millis(50)).await?;
    c.apply_seed(|d| d.spec.replicas = Some(2)).await?;
    c.rolled_out().await?;
    let ports: Vec<u16> = c
        .demo_pods()
        .await?
        .iter()
        .map(port)
        .collect::<Result<_>>()?;
    eventually("Endpoints", || async {
        Ok((endpoint_targets(&c).await?.len() == 2).then_some(()))
    })
    .await?;

    c.deployments()
        .delete("demo", &DeleteParams::background())
        .await?;
    eventually("ReplicaSets and pods to go", || async {
        let gone = c.demo_replicasets().await?.is_empty() && c.demo_pods().await?.is_empty();
        Ok(gone.then_some(()))
    })
    .await?;
    eventually("the pod servers to stop", || async {
        let mut any_open = false;
        for port in &ports {
            any_open |= TcpStream::connect(("127.0.0.1", *port)).await.is_ok();
        }
        Ok((!any_open).then_some(()))
    })
    .await?;
    eventually("empty Endpoints", || async {
        Ok(endpoint_targets(&c).await?.is_empty().then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn scaling_down_removes_pods_from_endpoints_and_recreate_replaces_all_at_once() -> Result<()>
{
    let c = Cluster::start(Duration::from_millis(50)).await?;
    c.apply_seed(|d| {
        d.spec.replicas = Some(4);
        d.spec.strategy = Some(k8s_openapi::api::apps::v1::DeploymentStrategy {
            type_: Some("Recreate".into()),
            rolling_update: None,
        });
    })
    .await?;
    c.rolled_out().await?;
    c.deployments()
        .patch_scale(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 2}})),
        )
        .await?;
    eventually("two pods in the Endpoints", || async {
        let t = endpoint_targets(&c).await?;
        let pods = c.demo_pods().await?;
        Ok((t.len() == 2 && pods.len() == 2).then_some(()))
    })
    .await?;

    let statuses = record_statuses(&c);
    eventually("the status recorder", || async {
        Ok((!statuses.lock().expect("not poisoned").is_empty()).then_some(()))
    })
    .await?;
    c.set_image("v2").await?;
    c.rolled_out().await?;
    eventually("two v2 pods", || async {
        let t = ready_tags(&c).await?;
        Ok((t.len() == 2 && t.iter().all(|(_, tag)| tag == "v2")).then_some(()))
    })
    .await?;
    // Recreate: the old pods went before any new one was counted.
    let seen = statuses.lock().expect("not poisoned").clone();
    assert!(
        seen.iter().any(|d| d
            .status
            .as_ref()
            .is_some_and(|s| s.replicas.unwrap_or(0) == 0)),
        "no moment without pods"
    );
    for d in &seen {
        let s = d.status.clone().unwrap_or_default();
        let updated = s.updated_replicas.unwrap_or(0);
        assert!(
            updated == 0 || updated == s.replicas.unwrap_or(0),
            "versions overlapped: {s:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn min_ready_seconds_holds_back_availability() -> Result<()> {
    let c = Cluster::start(Duration::ZERO).await?;
    c.apply_seed(|d| {
        d.spec.replicas = Some(2);
        d.spec.min_ready_seconds = Some(2);
    })
    .await?;
    // Ready at once, available only after two seconds.
    let d = eventually("ready but not yet available", || async {
        let d = c.deployment().await?;
        let s = d.status.clone().unwrap_or_default();
        Ok((s.ready_replicas == Some(2)).then_some(d))
    })
    .await?;
    let s = d.status.clone().context("status")?;
    assert!(s.available_replicas.unwrap_or(0) < 2, "{s:?}");
    assert!(!rollout_status(&d)?.1);
    let rs = &c.demo_replicasets().await?[0];
    assert_eq!(rs.spec.min_ready_seconds, Some(2));
    let d = c.rolled_out().await?;
    assert_eq!(d.status.and_then(|s| s.available_replicas), Some(2));
    Ok(())
}

#[tokio::test]
async fn a_restarted_simulator_resumes_the_running_pods() -> Result<()> {
    let mut c = Cluster::start(Duration::from_millis(50)).await?;
    c.apply_seed(|d| d.spec.replicas = Some(2)).await?;
    c.rolled_out().await?;
    let before = ready_tags(&c).await?;
    let ports: Vec<u16> = c
        .demo_pods()
        .await?
        .iter()
        .map(port)
        .collect::<Result<_>>()?;
    if let Some(sim) = c.sim.take() {
        sim.shutdown().await;
    }
    for port in &ports {
        ensure!(
            TcpStream::connect(("127.0.0.1", *port)).await.is_err(),
            "port {port} still served after shutdown"
        );
    }
    let config = SimConfig {
        readiness_delay: Duration::from_secs(60),
        ..SimConfig::default()
    };
    c.sim = Some(Simulator::start(c.client.clone(), config).await?);
    // The same pods, on the same ports, still ready (no new readiness delay).
    let after = eventually("the pods to serve again", || async {
        Ok(ready_tags(&c).await.ok().filter(|t| t.len() == 2))
    })
    .await?;
    assert_eq!(after, before);
    let now: Vec<u16> = c
        .demo_pods()
        .await?
        .iter()
        .map(port)
        .collect::<Result<_>>()?;
    assert_eq!(now, ports);
    assert!(rollout_status(&c.deployment().await?)?.1);
    Ok(())
}
