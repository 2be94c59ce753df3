//! The whole sandbox in one value: API server, workload simulator and gateway, set up the way a
//! cluster with Higress and higress-canary's CRD installed looks.

use std::path::PathBuf;

use crate::api::{self, ApiConfig, ApiServer};
use crate::gateway::{self, Gateway, GatewayConfig};
use crate::sim::{self, SimConfig, Simulator};

/// The project's Rollout CRD, generated from the controller's types (`higress-canary crd`).
pub const ROLLOUT_CRD_YAML: &str = include_str!("../../deploy/crds/rollouts.kruise.io.yaml");

/// Where the Higress system namespace lives, as in a default Higress install.
pub const HIGRESS_SYSTEM_NAMESPACE: &str = gateway::DEFAULT_SYSTEM_NAMESPACE;

/// Settings of a whole sandbox.
#[derive(Debug, Clone, Default)]
pub struct ClusterConfig {
    pub api: ApiConfig,
    pub sim: SimConfig,
    pub gateway: GatewayConfig,
}

/// Why a sandbox did not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("API server: {0}")]
    Api(#[from] api::Error),
    #[error("workload simulator: {0}")]
    Sim(#[from] sim::Error),
    #[error("gateway: {0}")]
    Gateway(#[from] gateway::Error),
}

/// A running sandbox. Dropping it stops Envoy, every pod server and the API server.
pub struct Cluster {
    // Field order is drop order: the gateway and simulator watch the API server.
    pub gateway: Gateway,
    pub sim: Simulator,
    pub api: ApiServer,
}

impl Cluster {
    /// Starts the API server (with the `default` and `higress-system` namespaces, the Rollout
    /// CRD and Higress's WasmPlugin CRD), then the simulator and the gateway, all on the current
    /// tokio runtime.
    pub async fn start(mut config: ClusterConfig) -> Result<Self, Error> {
        let namespaces = &mut config.api.namespaces;
        if !namespaces.iter().any(|n| n == HIGRESS_SYSTEM_NAMESPACE) {
            namespaces.push(HIGRESS_SYSTEM_NAMESPACE.to_owned());
        }
        config
            .api
            .crds
            .push(api::crds::higress_wasmplugin_crd_yaml().to_owned());
        config.api.crds.push(ROLLOUT_CRD_YAML.to_owned());
        let api = ApiServer::start(config.api).await?;
        let sim = Simulator::start(api.client(), config.sim).await?;
        let gateway = Gateway::start(api.client(), config.gateway).await?;
        Ok(Self { gateway, sim, api })
    }

    /// The plugin the repository builds (`cargo xtask wasm`), which `oci://` WasmPlugin URLs
    /// resolve to in the sandbox since no registry is reachable.
    pub fn local_plugin_wasm() -> PathBuf {
        std::env::var_os("CANARY_PLUGIN_WASM")
            .map(PathBuf::from)
            .unwrap_or_else(|| gateway::workspace_root().join("dist/plugin.wasm"))
    }
}
