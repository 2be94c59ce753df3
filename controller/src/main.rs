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
    leader::{
        run_as_leader, unique_identity, Election, DEFAULT_LEASE_DURATION_SECS, DEFAULT_LEASE_NAME,
    },
    metrics::Metrics,
    offline::{render, RenderOptions},
    prometheus::Endpoint,
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
    /// The Prometheus that Rollouts with `analysis` are checked against
    /// (`http(s)://host:port[/prefix]`, e.g. http://prometheus-server.monitoring). Without
    /// it, steps with analysis never pass (their status says why).
    #[arg(long)]
    prometheus_url: Option<String>,
    /// PEM file of the CA(s) that signed an https Prometheus's certificate, trusted besides
    /// the system's CAs (the controller image has none).
    #[arg(long, requires = "prometheus_url")]
    prometheus_ca_file: Option<PathBuf>,
    /// File holding a bearer token for Prometheus (e.g. a projected ServiceAccount token);
    /// read at every query, so a rotated token is picked up.
    #[arg(long, requires = "prometheus_url")]
    prometheus_bearer_token_file: Option<PathBuf>,
    /// Extra header on Prometheus queries, `Name: value` (e.g. `X-Scope-OrgID: team-a` for
    /// Mimir, Cortex or Thanos tenants); repeatable.
    #[arg(long = "prometheus-header", requires = "prometheus_url")]
    prometheus_headers: Vec<String>,
    /// This replica's name in Events (default: the POD_NAME environment variable) and, with a
    /// random suffix, its leader-election identity (default: POD_NAME, else the host name).
    #[arg(long)]
    instance: Option<String>,
    /// Elect one leader among the replicas through a coordination.k8s.io Lease; only the
    /// leader reconciles. `--leader-elect=false` runs without a Lease (one replica only, e.g.
    /// locally).
    #[arg(
        long,
        default_value_t = true,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    leader_elect: bool,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = DEFAULT_LEASE_NAME)]
    lease_name: String,
    /// Namespace of the Lease (default: the POD_NAMESPACE environment variable, else
    /// higress-system).
    #[arg(long)]
    lease_namespace: Option<String>,
    /// Seconds the leader's Lease stays valid after its last renewal: how long the other
    /// replicas wait before replacing a leader that died without releasing it (it is renewed
    /// a third of this before it expires).
    #[arg(
        long,
        default_value_t = DEFAULT_LEASE_DURATION_SECS,
        value_parser = clap::value_parser!(u64).range(2..=3600)
    )]
    lease_duration: u64,
}

impl RunArgs {
    /// The election this replica joins; `pod_name`, `pod_namespace` and `hostname` come from
    /// the environment.
    fn election(
        &self,
        pod_name: Option<String>,
        pod_namespace: Option<String>,
        hostname: Option<String>,
    ) -> Election {
        let base = [self.instance.clone(), pod_name, hostname]
            .into_iter()
            .flatten()
            .find(|name| !name.is_empty())
            .unwrap_or_else(|| DEFAULT_LEASE_NAME.to_owned());
        let namespace = self
            .lease_namespace
            .clone()
            .or(pod_namespace.filter(|ns| !ns.is_empty()))
            .unwrap_or_else(|| DEFAULT_PLUGIN_NAMESPACE.to_owned());
        Election::new(
            &self.lease_name,
            namespace,
            unique_identity(&base),
            self.lease_duration,
        )
    }
}

/// The host name (Kubernetes sets `HOSTNAME` to the pod name), if known.
fn hostname() -> Option<String> {
    std::env::var("HOSTNAME").ok().or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|name| name.trim().to_owned())
    })
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

/// Who is calling, in every request's User-Agent (audit logs, API server metrics, the sandbox's
/// request log that tests the RBAC in deploy/ against what the controller really calls).
#[derive(Debug, Clone, Copy)]
enum Role {
    Controller,
    Cli,
}

async fn client(kubeconfig: Option<&Path>, role: Role) -> Result<kube::Client> {
    let mut config = match kubeconfig {
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
    let role = match role {
        Role::Controller => "controller",
        Role::Cli => "cli",
    };
    let user_agent = format!("higress-canary/{} ({role})", env!("CARGO_PKG_VERSION"));
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_str(&user_agent).context("the User-Agent header")?,
    ));
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
                client(cluster.kubeconfig.as_deref(), Role::Cli).await?,
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
    let client = client(args.cluster.kubeconfig.as_deref(), Role::Cli).await?;
    Ok((
        Commands::new(client, args.cluster.namespace.clone()),
        rollout_name(&args.name).to_owned(),
    ))
}

async fn run_controller(args: RunArgs) -> Result<()> {
    init_tracing();
    let election = args.leader_elect.then(|| {
        args.election(
            std::env::var("POD_NAME").ok(),
            std::env::var("POD_NAMESPACE").ok(),
            hostname(),
        )
    });
    let prometheus = args.prometheus_url.clone().map(|url| Endpoint {
        url,
        ca_file: args.prometheus_ca_file.clone(),
        bearer_token_file: args.prometheus_bearer_token_file.clone(),
        headers: args.prometheus_headers.clone(),
    });
    if let Some(endpoint) = &prometheus {
        // Checked before anything starts; `run` would report it only after connecting.
        higress_canary::prometheus::Prometheus::new(endpoint)?;
    }
    let client = client(args.kubeconfig.as_deref(), Role::Controller).await?;
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
        prometheus,
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
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("--metrics-addr {addr}: cannot listen there"))?;
        Some(tokio::spawn(higress_canary::metrics::serve(
            listener,
            metrics.clone(),
            server_stopped.map(|_| ()),
        )))
    };
    let signals = tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: letting running reconciles finish");
        let _ = stop_controller.send(());
        let _ = stop_server.send(());
    });
    let shutdown = controller_stopped.map(|_| ());
    let result = match election {
        // Lost leadership is an error: the process exits non-zero and restarts as a follower.
        Some(election) => run_as_leader(client, settings, election, shutdown)
            .await
            .map_err(anyhow::Error::from),
        None => {
            metrics.set_leader(true);
            higress_canary::run(client, settings, shutdown)
                .await
                .map_err(anyhow::Error::from)
        }
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(args: &[&str]) -> RunArgs {
        let cli = Cli::try_parse_from(["higress-canary", "run"].iter().chain(args))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        match cli.command {
            Command::Run(run) => run,
            other => panic!("parsed {other:?}"),
        }
    }

    #[test]
    fn leader_election_is_on_by_default_with_a_15_second_lease() {
        let args = run_args(&[]);
        assert!(args.leader_elect);
        assert_eq!(args.lease_name, "higress-canary");
        assert_eq!(args.lease_duration, 15);
        let election = args.election(None, None, Some("node-1".into()));
        assert_eq!(election.lease(), "higress-system/higress-canary");
        assert_eq!(election.lease_duration_secs, 15);
        assert_eq!(election.renew_grace_secs, 5);
        assert!(election.identity.starts_with("node-1-"), "{election:?}");
        assert!(run_args(&["--leader-elect"]).leader_elect);
        assert!(run_args(&["--leader-elect=true"]).leader_elect);
        assert!(!run_args(&["--leader-elect=false"]).leader_elect);
        assert!(Cli::try_parse_from(["higress-canary", "run", "--lease-duration=1"]).is_err());
    }

    #[test]
    fn the_prometheus_url_is_optional() {
        assert_eq!(run_args(&[]).prometheus_url, None);
        assert_eq!(
            run_args(&["--prometheus-url", "http://prometheus:9090"])
                .prometheus_url
                .as_deref(),
            Some("http://prometheus:9090")
        );
        let args = run_args(&[
            "--prometheus-url",
            "https://thanos-querier.monitoring:9091",
            "--prometheus-ca-file",
            "/etc/prometheus-ca/ca.crt",
            "--prometheus-bearer-token-file",
            "/var/run/secrets/tokens/prometheus",
            "--prometheus-header",
            "X-Scope-OrgID: team-a",
            "--prometheus-header",
            "X-Other: b",
        ]);
        assert_eq!(
            args.prometheus_ca_file.as_deref(),
            Some(Path::new("/etc/prometheus-ca/ca.crt"))
        );
        assert_eq!(
            args.prometheus_bearer_token_file.as_deref(),
            Some(Path::new("/var/run/secrets/tokens/prometheus"))
        );
        assert_eq!(
            args.prometheus_headers,
            ["X-Scope-OrgID: team-a", "X-Other: b"]
        );
        // Credentials without a URL are a mistake, not something to ignore.
        assert!(Cli::try_parse_from([
            "higress-canary",
            "run",
            "--prometheus-bearer-token-file",
            "/t"
        ])
        .is_err());
    }

    #[test]
    fn the_identity_and_namespace_come_from_flags_then_the_pod() {
        let pod = |args: &RunArgs| {
            args.election(
                Some("canary-7d9f8-x2k4p".into()),
                Some("ops".into()),
                Some("node-1".into()),
            )
        };
        let election = pod(&run_args(&[]));
        assert!(election.identity.starts_with("canary-7d9f8-x2k4p-"));
        assert_eq!(election.lease_namespace, "ops");
        let election = pod(&run_args(&[
            "--instance=replica-a",
            "--lease-namespace=elsewhere",
            "--lease-name=mine",
        ]));
        assert!(election.identity.starts_with("replica-a-"));
        assert_eq!(election.lease(), "elsewhere/mine");
        let election = run_args(&[]).election(None, Some(String::new()), None);
        assert!(election.identity.starts_with("higress-canary-"));
        assert_eq!(election.lease_namespace, "higress-system");
    }
}
