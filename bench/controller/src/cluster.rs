//! The sandbox the benchmark runs on, started part by part (as `sandbox::cluster::Cluster`
//! does) so that each of its own clients carries a `User-Agent` of its own. Every other
//! request in the API server's log is the controller's, whatever agent it sends (none, or its
//! own).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use hyper::header::{HeaderValue, USER_AGENT};
use kube::{
    api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams},
    Client,
};
use sandbox::{
    api::{ApiConfig, ApiServer, RequestRecord},
    cluster::{HIGRESS_SYSTEM_NAMESPACE, ROLLOUT_CRD_YAML},
    gateway::{self, http, Gateway, GatewayConfig},
    sim::{SimConfig, Simulator},
};
use serde_json::Value;

/// The namespace every benchmark object lives in.
pub const NS: &str = "default";
const SIMULATOR_AGENT: &str = "sandbox-simulator";
const GATEWAY_AGENT: &str = "sandbox-gateway";
const BENCH_AGENT: &str = "controller-bench";
/// Every agent of the sandbox's and the benchmark's clients.
const OWN_AGENTS: [&str; 3] = [SIMULATOR_AGENT, GATEWAY_AGENT, BENCH_AGENT];

/// A running sandbox; dropping it stops Envoy, every pod server and the API server.
pub struct Sandbox {
    // Field order is drop order: the gateway and simulator watch the API server.
    gateway: Option<Gateway>,
    /// Never read, only kept: dropping it stops the pods.
    _sim: Simulator,
    pub api: ApiServer,
    /// The benchmark's own client.
    pub client: Client,
    /// Holds the kubeconfig and the controller's log.
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    /// API server (with `higress-system`, the Rollout CRD and Higress's WasmPlugin CRD), then
    /// the workload simulator and, with `gateway`, the gateway, which serves `plugin` for the
    /// WasmPlugin.
    pub async fn start(plugin: &Path, gateway: bool) -> Result<Self> {
        let mut config = ApiConfig::default();
        config.namespaces.push(HIGRESS_SYSTEM_NAMESPACE.to_owned());
        config
            .crds
            .push(sandbox::api::crds::higress_wasmplugin_crd_yaml().to_owned());
        config.crds.push(ROLLOUT_CRD_YAML.to_owned());
        let api = ApiServer::start(config)
            .await
            .context("starting the API server")?;
        let sim = Simulator::start(tagged_client(&api, SIMULATOR_AGENT)?, SimConfig::default())
            .await
            .context("starting the workload simulator")?;
        let gateway_config = GatewayConfig {
            oci_wasm: Some(plugin.to_path_buf()),
            envoy_log_level: "warning".to_owned(),
            ..GatewayConfig::default()
        };
        let gateway = if gateway {
            Some(
                Gateway::start(tagged_client(&api, GATEWAY_AGENT)?, gateway_config)
                    .await
                    .context("starting the gateway (Envoy)")?,
            )
        } else {
            None
        };
        let client = tagged_client(&api, BENCH_AGENT)?;
        let dir = tempfile::Builder::new()
            .prefix("controller-bench-")
            .tempdir()
            .context("creating a temp dir")?;
        api.write_kubeconfig(&dir.path().join("kubeconfig"))
            .context("writing the kubeconfig")?;
        Ok(Self {
            gateway,
            _sim: sim,
            api,
            client,
            dir,
        })
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    pub fn gateway(&self) -> Result<&Gateway> {
        self.gateway
            .as_ref()
            .context("this sandbox runs without the gateway")
    }

    pub fn listener(&self) -> Result<SocketAddr> {
        Ok(self.gateway()?.listener_addr())
    }

    /// Where the gateway writes the plugin's ECDS file (one per WasmPlugin).
    pub fn ecds_dir(&self) -> Result<PathBuf> {
        Ok(self.gateway()?.proxy().dir().join("ecds"))
    }

    pub fn rollouts(&self) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), NS, &rollout_resource())
    }

    pub fn wasm_plugins(&self) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.client.clone(),
            HIGRESS_SYSTEM_NAMESPACE,
            &gateway::wasm_plugin_resource(),
        )
    }

    /// Every request the API server answered that came from the controller, from the
    /// `from`th request on.
    pub fn controller_requests(&self, from: usize) -> Vec<RequestRecord> {
        self.api
            .requests()
            .into_iter()
            .skip(from)
            .filter(|r| client_of(r) == CONTROLLER)
            .collect()
    }

    /// How many requests the API server has logged (an index for [`Self::controller_requests`]).
    pub fn request_count(&self) -> usize {
        self.api.requests().len()
    }

    /// Creates any object from its JSON (a Deployment, Service, Ingress or Rollout).
    pub async fn create(&self, object: &Value) -> Result<()> {
        let kind = object["kind"].as_str().unwrap_or_default();
        let resource = match kind {
            "Deployment" => ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("apps", "v1", "Deployment"),
                "deployments",
            ),
            "Service" => ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("", "v1", "Service"),
                "services",
            ),
            "Ingress" => ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("networking.k8s.io", "v1", "Ingress"),
                "ingresses",
            ),
            "Rollout" => rollout_resource(),
            other => anyhow::bail!("the benchmark creates no {other:?}"),
        };
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), NS, &resource);
        let object: DynamicObject = serde_json::from_value(object.clone())?;
        api.create(&PostParams::default(), &object)
            .await
            .with_context(|| {
                format!(
                    "creating {kind} {}",
                    object.metadata.name.as_deref().unwrap_or("?")
                )
            })?;
        Ok(())
    }

    /// `kubectl set image deployment/<name> main=<image>`; returns the Deployment's new
    /// `metadata.generation`.
    pub async fn set_image(&self, name: &str, image: &str) -> Result<i64> {
        let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
            Api::namespaced(self.client.clone(), NS);
        let patch = serde_json::json!({"spec": {"template": {"spec": {"containers": [
            {"name": "main", "image": image}
        ]}}}});
        let updated = deployments
            .patch(name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
            .with_context(|| format!("setting the image of Deployment {name}"))?;
        Ok(updated.metadata.generation.unwrap_or_default())
    }

    /// Approves as `kubectl-kruise rollout approve` does: a JSON merge patch on `/status`.
    pub async fn approve(&self, rollout: &str) -> Result<()> {
        let patch =
            serde_json::json!({"status": {"canaryStatus": {"currentStepState": "StepReady"}}});
        self.rollouts()
            .patch_status(rollout, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .with_context(|| format!("approving Rollout {rollout}"))?;
        Ok(())
    }

    /// Waits until `host` answers `version` to `streak` requests in a row.
    pub async fn until_serving(&self, host: &str, version: &str, patience: Duration) -> Result<()> {
        let start = Instant::now();
        let mut streak = 0;
        let mut last = String::new();
        while streak < 20 {
            match http::get(self.listener()?, "/", &[("host", host)]).await {
                Ok(r) if r.status == 200 && r.text() == version => streak += 1,
                Ok(r) => {
                    streak = 0;
                    last = format!("{} {:?}", r.status, r.text());
                }
                Err(e) => {
                    streak = 0;
                    last = e.to_string();
                }
            }
            ensure!(
                start.elapsed() < patience,
                "the gateway does not serve {version:?} for {host} after {patience:?} (last answer: {last})"
            );
            if streak == 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }
}

/// How [`client_of`] names the controller.
pub const CONTROLLER: &str = "the controller";

/// Which client sent a request: one of the sandbox's or the benchmark's, else the controller.
pub fn client_of(request: &RequestRecord) -> &str {
    match request.user_agent.as_deref() {
        Some(agent) if OWN_AGENTS.contains(&agent) => agent,
        _ => CONTROLLER,
    }
}

/// `rollouts.kruise.io/v1alpha1`, as a user without the controller's types sees it.
pub fn rollout_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("rollouts.kruise.io", "v1alpha1", "Rollout"),
        "rollouts",
    )
}

/// kube's real client for `api`, sending `User-Agent: <agent>`.
fn tagged_client(api: &ApiServer, agent: &'static str) -> Result<Client> {
    let mut config = api.kube_config();
    config
        .headers
        .push((USER_AGENT, HeaderValue::from_static(agent)));
    Client::try_from(config).context("building a kube client")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::requests::tests::record;

    #[test]
    fn requests_without_one_of_our_agents_are_the_controllers() {
        let mut r = record("get", "rollouts", "", 200);
        assert_eq!(client_of(&r), CONTROLLER);
        r.user_agent = Some("higress-canary/0.1.0 (controller)".into());
        assert_eq!(client_of(&r), CONTROLLER);
        r.user_agent = Some(SIMULATOR_AGENT.into());
        assert_eq!(client_of(&r), SIMULATOR_AGENT);
        r.user_agent = Some(BENCH_AGENT.into());
        assert_eq!(client_of(&r), BENCH_AGENT);
    }
}
