//! `sandbox`: runs a local stand-in for a Kubernetes cluster with Higress, for people to try
//! higress-canary on one machine. See the README's "Sandbox" section for what it does not model.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use sandbox::cluster::{Cluster, ClusterConfig};

#[derive(Parser)]
#[command(about = "A local stand-in for Kubernetes with Higress (a test double, not a cluster)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the API server, workload simulator and gateway, and run until interrupted.
    Up {
        /// Where to write the kubeconfig for kubectl and the controller.
        #[arg(long, default_value = "target/sandbox/kubeconfig")]
        kubeconfig: PathBuf,
        /// API server port on 127.0.0.1 (0: any free port).
        #[arg(long, default_value_t = 0)]
        api_port: u16,
        /// Gateway (Envoy listener) port on 127.0.0.1 (0: any free port).
        #[arg(long, default_value_t = 0)]
        gateway_port: u16,
        /// The plugin served for `oci://` WasmPlugin URLs (default: dist/plugin.wasm).
        #[arg(long)]
        plugin: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,sandbox=info".into()),
        )
        .init();
    match Cli::parse().command {
        Command::Up {
            kubeconfig,
            api_port,
            gateway_port,
            plugin,
        } => up(kubeconfig, api_port, gateway_port, plugin).await,
    }
}

async fn up(
    kubeconfig: PathBuf,
    api_port: u16,
    gateway_port: u16,
    plugin: Option<PathBuf>,
) -> Result<()> {
    let mut config = ClusterConfig::default();
    config.api.port = api_port;
    config.gateway.listen_port = (gateway_port != 0).then_some(gateway_port);
    config.gateway.oci_wasm = Some(plugin.unwrap_or_else(Cluster::local_plugin_wasm));
    let mut cluster = Cluster::start(config)
        .await
        .context("starting the sandbox")?;

    if let Some(dir) = kubeconfig.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    cluster
        .api
        .write_kubeconfig(&kubeconfig)
        .with_context(|| format!("writing {}", kubeconfig.display()))?;
    let kubeconfig = std::fs::canonicalize(&kubeconfig).unwrap_or(kubeconfig);
    let gateway = cluster.gateway.listener_addr();
    println!(
        "sandbox is up (a test double of Kubernetes with Higress; Ctrl-C or SIGTERM stops it)"
    );
    println!("  API server   {}", cluster.api.url());
    println!("  kubeconfig   {}", kubeconfig.display());
    println!("  gateway      http://{gateway}");
    println!("  envoy admin  http://{}", cluster.gateway.admin_addr());
    println!();
    println!("try:");
    println!("  export KUBECONFIG={}", kubeconfig.display());
    println!("  kubectl apply -f ../shared/scenarios/demo-app.yaml");
    println!("  curl http://{gateway}/version");

    shutdown_signal().await?;
    println!("stopping: Envoy, pod servers, API server");
    cluster.gateway.shutdown();
    cluster.sim.shutdown().await;
    cluster.api.shutdown();
    Ok(())
}

/// Ctrl-C, or SIGTERM from a process manager: either way Envoy and the pod servers must stop.
async fn shutdown_signal() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("waiting for Ctrl-C"),
        _ = term.recv() => Ok(()),
    }
}
