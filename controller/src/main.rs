//! `higress-canary`: the Rollout controller and its command line (also usable as the kubectl
//! plugin `kubectl-canary` through a symlink).
//!
//! `run` is the controller; `status`, `approve`, `pause`, `resume`, `abort` and `undo` act on
//! a cluster (kubeconfig from `--kubeconfig`, else `KUBECONFIG`/`~/.kube/config`, else
//! in-cluster); `crd` and `render` are offline.

use std::{
    io::Read,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use futures::FutureExt;
use higress_canary::{
    commands::Commands,
    metrics::Metrics,
    offline::{render, RenderOptions},
    reconcile::{Settings, FIELD_MANAGER},
    render::{PluginRef, DEFAULT_PLUGIN_NAME, DEFAULT_PLUGIN_NAMESPACE},
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "higress-canary",
    version,
    about = "Progressive delivery for Higress: Kruise-compatible Rollouts routed by a Wasm plugin"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the controller.
    Run(RunArgs),
    /// Show Rollouts: phase, step, state, weight, matches, canary/stable ready pods.
    Status {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// One Rollout (default: all in the namespace).
        name: Option<String>,
        /// Keep watching and print the table again whenever it changes.
        #[arg(short, long)]
        watch: bool,
    },
    /// Approve the step waiting for approval (as `kubectl-kruise rollout approve`).
    Approve(NamedArgs),
    /// Hold the release at its current step (`spec.strategy.paused: true`).
    Pause(NamedArgs),
    /// Continue a paused release (`spec.strategy.paused: false`).
    Resume(NamedArgs),
    /// Cancel the release in progress: all traffic to stable, then the canary is removed.
    Abort(NamedArgs),
    /// Revert the Deployment's pod template to the stable revision (as
    /// `kubectl-kruise rollout undo`); the controller then cancels the release.
    Undo {
        #[command(flatten)]
        named: NamedArgs,
        /// A `deployment.kubernetes.io/revision` to go back to instead.
        #[arg(long)]
        to_revision: Option<i64>,
    },
    /// Print the Rollout CRD (rollouts.kruise.io/v1alpha1) as YAML.
    Crd,
    /// Print, offline, the WasmPlugin and canary Ingress each step of a Rollout would apply.
    Render(RenderArgs),
}

#[derive(Debug, clap::Args)]
struct ClusterArgs {
    /// Path to a kubeconfig (default: KUBECONFIG, ~/.kube/config, then in-cluster).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Namespace of the Rollout.
    #[arg(short, long, default_value = "default")]
    namespace: String,
}

#[derive(Debug, clap::Args)]
struct NamedArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The Rollout (`NAME` or `rollout/NAME`).
    name: String,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Path to a kubeconfig (default: KUBECONFIG, ~/.kube/config, then in-cluster).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The plugin's `url` in the shared WasmPlugin when the controller creates it.
    #[arg(long, default_value_t = PluginRef::default().url)]
    plugin_url: String,
    /// Name of the shared WasmPlugin.
    #[arg(long, default_value = DEFAULT_PLUGIN_NAME)]
    plugin_name: String,
    /// Namespace of the shared WasmPlugin (Higress's own namespace).
    #[arg(long, default_value = DEFAULT_PLUGIN_NAMESPACE)]
    plugin_namespace: String,
    /// Where to serve /metrics, /healthz and /readyz ("off" to disable).
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_addr: String,
    /// Rollouts reconciled at once.
    #[arg(long, default_value_t = 16)]
    concurrency: u16,
    /// This replica's name in Events (default: the POD_NAME environment variable).
    #[arg(long)]
    instance: Option<String>,
}

#[derive(Debug, clap::Args)]
struct RenderArgs {
    /// YAML with the Rollout, and optionally its Deployment and Ingress (`-` for stdin).
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    /// Only this step (from 1).
    #[arg(long)]
    step: Option<usize>,
    /// Namespace for a Rollout that names none.
    #[arg(short, long)]
    namespace: Option<String>,
    /// Name of the shared WasmPlugin.
    #[arg(long, default_value = DEFAULT_PLUGIN_NAME)]
    plugin_name: String,
    /// Namespace of the shared WasmPlugin (Higress's own namespace).
    #[arg(long, default_value = DEFAULT_PLUGIN_NAMESPACE)]
    plugin_namespace: String,
    /// The plugin's `url` in the WasmPlugin.
    #[arg(long, default_value_t = PluginRef::default().url)]
    plugin_url: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crd | Command::Render(_) => offline(cli.command),
        command => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")
            .and_then(|rt| rt.block_on(online(command))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("using kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no kubeconfig (KUBECONFIG, ~/.kube/config) and not in a cluster")?,
    };
    kube::Client::try_from(config).context("creating the Kubernetes client")
}

/// `rollout/NAME` and `rollouts.rollouts.kruise.io/NAME` as kubectl-kruise accepts them.
fn rollout_name(arg: &str) -> &str {
    arg.rsplit_once('/').map_or(arg, |(_, name)| name)
}

fn init_tracing() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,kube_runtime=warn,kube_client=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn online(command: Command) -> Result<()> {
    match command {
        Command::Run(args) => run_controller(args).await,
        Command::Status {
            cluster,
            name,
            watch,
        } => {
            let commands = Commands::new(
                client(cluster.kubeconfig.as_deref()).await?,
                cluster.namespace,
            );
            let name = name.as_deref().map(rollout_name);
            if !watch {
                print!("{}", commands.status(name).await?);
                return Ok(());
            }
            let mut last = String::new();
            loop {
                let table = commands.status(name).await?;
                if table != last {
                    println!("{table}");
                    last = table;
                }
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
        Command::Approve(args) => {
            let (commands, name) = named(&args).await?;
            println!("{}", commands.approve(&name).await?);
            Ok(())
        }
        Command::Pause(args) => {
            let (commands, name) = named(&args).await?;
            println!("{}", commands.set_paused(&name, true).await?);
            Ok(())
        }
        Command::Resume(args) => {
            let (commands, name) = named(&args).await?;
            println!("{}", commands.set_paused(&name, false).await?);
            Ok(())
        }
        Command::Abort(args) => {
            let (commands, name) = named(&args).await?;
            println!("{}", commands.abort(&name).await?);
            Ok(())
        }
        Command::Undo {
            named: args,
            to_revision,
        } => {
            let (commands, name) = named(&args).await?;
            println!("{}", commands.undo(&name, to_revision).await?);
            Ok(())
        }
        Command::Crd | Command::Render(_) => offline(command),
    }
}

async fn named(args: &NamedArgs) -> Result<(Commands, String)> {
    let client = client(args.cluster.kubeconfig.as_deref()).await?;
    Ok((
        Commands::new(client, args.cluster.namespace.clone()),
        rollout_name(&args.name).to_owned(),
    ))
}

async fn run_controller(args: RunArgs) -> Result<()> {
    init_tracing();
    let client = client(args.kubeconfig.as_deref()).await?;
    let metrics = Arc::new(Metrics::default());
    let settings = Settings {
        plugin: PluginRef {
            name: args.plugin_name,
            namespace: args.plugin_namespace,
            url: args.plugin_url,
        },
        field_manager: FIELD_MANAGER.to_owned(),
        concurrency: args.concurrency,
        instance: args.instance.or_else(|| std::env::var("POD_NAME").ok()),
        metrics: metrics.clone(),
        ..Settings::default()
    };
    let (stop_controller, controller_stopped) = tokio::sync::oneshot::channel::<()>();
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = if args.metrics_addr == "off" {
        None
    } else {
        let addr: SocketAddr = args
            .metrics_addr
            .parse()
            .with_context(|| format!("--metrics-addr {:?}", args.metrics_addr))?;
        Some(tokio::spawn(higress_canary::metrics::serve(
            addr,
            metrics,
            server_stopped.map(|_| ()),
        )))
    };
    let signals = tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: letting running reconciles finish");
        let _ = stop_controller.send(());
        let _ = stop_server.send(());
    });
    let result = higress_canary::run(client, settings, controller_stopped.map(|_| ())).await;
    signals.abort();
    if let Some(server) = server {
        server.abort();
    }
    result.context("running the controller")
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn offline(command: Command) -> Result<()> {
    match command {
        Command::Crd => {
            print!("{}", higress_canary::crd_yaml());
            Ok(())
        }
        Command::Render(args) => {
            let inputs = args
                .files
                .iter()
                .map(|path| read_input(path))
                .collect::<Result<Vec<_>>>()?;
            let options = RenderOptions {
                step: args.step,
                namespace: args.namespace,
                plugin: PluginRef {
                    name: args.plugin_name,
                    namespace: args.plugin_namespace,
                    url: args.plugin_url,
                },
            };
            print!("{}", render(&inputs, &options)?);
            Ok(())
        }
        other => anyhow::bail!("{other:?} needs a cluster"),
    }
}

fn read_input(path: &Path) -> Result<String> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading stdin")?;
        return Ok(text);
    }
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}
