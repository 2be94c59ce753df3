//! `controller-bench`: the measurements behind `cargo xtask bench controller`, which builds
//! this binary and the controller with `--release` and writes the report into
//! `docs/benchmarks.md`.
//!
//! Two parts, each on a fresh sandbox (fake API server, workload simulator and gateway bridge
//! in this process, a real Envoy) with the controller's release binary as its own process:
//! - [`latency`]: time from `approve` to the gateway serving the next step's weight;
//! - [`scale`]: many Rollouts on as many Deployments released at once: errors, completion,
//!   the controller's memory, CPU time and API requests.
//!
//! The controller is a black box here: everything goes through the API server and the
//! gateway, as a user's would. Nothing may depend on this crate; it depends on the sandbox and
//! on the plugin's decision code (`canary_core`), never on the controller's crate.

mod apps;
mod cluster;
mod controller;
mod latency;
mod machine;
mod report;
mod requests;
mod scale;
mod watch;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{ensure, Context, Result};
use clap::{Parser, ValueEnum};

/// The shared WasmPlugin the controller writes (its default name, in `higress-system`).
pub const PLUGIN_NAME: &str = "higress-canary";

#[derive(Debug, Parser)]
#[command(
    name = "controller-bench",
    about = "Approve-to-gateway latency and many Rollouts released at once, on the sandbox"
)]
struct Args {
    /// The controller binary (`target/release/higress-canary`).
    #[arg(long)]
    controller: PathBuf,
    /// The plugin the gateway loads (`dist/plugin.wasm`).
    #[arg(long)]
    plugin: PathBuf,
    /// Releases of the latency app; each measures 8 approvals.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    releases: u32,
    /// Apps (Deployment, Service, Ingress, Rollout) released at once.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
    apps: u64,
    /// Pods per app Deployment.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..))]
    replicas: i32,
    /// Seconds the release of all apps may take before the benchmark gives up (500 apps
    /// take about 10 minutes on the sandbox; see docs/benchmarks.md).
    #[arg(long, default_value_t = 1200)]
    patience: u64,
    /// Run one part only.
    #[arg(long)]
    only: Option<Part>,
    /// Write the report section (markdown) here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// The command to name in the report.
    #[arg(long, default_value = "cargo xtask bench controller")]
    command_line: String,
    /// Which sources the binaries were built from, for the report.
    #[arg(long, default_value = "built from an unknown commit")]
    source: String,
    /// Exit with an error when a target is missed.
    #[arg(long)]
    check: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Part {
    Latency,
    Scale,
}

/// The `url` the controller writes into the WasmPlugin: the local plugin file.
pub fn plugin_url(plugin: &std::path::Path) -> String {
    format!("file://{}", plugin.display())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    let result = runtime
        .context("starting the async runtime")
        .and_then(|rt| rt.block_on(run(&args)));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Runs the parts; `Ok(false)` when `--check` is set and a target was missed.
async fn run(args: &Args) -> Result<bool> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BENCH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    ensure!(
        args.controller.is_file(),
        "no controller binary at {}",
        args.controller.display()
    );
    ensure!(
        args.plugin.is_file(),
        "no plugin at {}: run `cargo xtask wasm`",
        args.plugin.display()
    );
    let plugin = args.plugin.canonicalize()?;
    let machine = machine::Machine::read();

    let latency = if args.only != Some(Part::Scale) {
        println!(
            "bench: latency: {} releases of 9 approval steps",
            args.releases
        );
        Some(
            latency::run(&args.controller, &plugin, args.releases)
                .await
                .context("approve → gateway latency")?,
        )
    } else {
        None
    };
    let scale = if args.only != Some(Part::Latency) {
        let options = scale::Options {
            apps: usize::try_from(args.apps)?,
            replicas: args.replicas,
            patience: Duration::from_secs(args.patience),
        };
        println!("bench: scale: {} apps released at once", options.apps);
        Some(
            scale::run(&args.controller, &plugin, &options)
                .await
                .context("many Rollouts released at once")?,
        )
    } else {
        None
    };

    let report = report::Report {
        machine: &machine,
        command: &args.command_line,
        source: &args.source,
        latency: latency.as_ref(),
        scale: scale.as_ref(),
        load_at_end: machine::load_average(),
    };
    println!();
    print!("{}", report.targets_markdown());
    if let Some(path) = &args.report {
        std::fs::write(path, report.markdown())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let all_met = report.targets().iter().all(|t| t.met);
    Ok(all_met || !args.check)
}
