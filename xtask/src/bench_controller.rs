//! `cargo xtask bench controller`: the controller end to end on the sandbox.
//!
//! The measuring lives in the `controller-bench` crate (`bench/controller`), which needs the
//! sandbox and kube; keeping it out of xtask keeps every other `cargo xtask` command quick to
//! build. Here: install Envoy, build the plugin and both binaries with `--release` (the
//! controller as it ships; the sandbox optimized, so it is not what limits 500 Rollouts), run
//! the benchmark, and write its section of `docs/benchmarks.md`.

use std::{path::Path, process::Command, time::Instant};

use anyhow::{bail, Context, Result};

use crate::{
    bench::{command_line, source_state_of},
    bench_report::{self, REPORT_FILE},
    cmd::{self, describe},
    setup, wasm,
};

const CONTROLLER_PACKAGE: &str = "higress-canary";
const BENCH_PACKAGE: &str = "controller-bench";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Releases of the latency app; each measures 8 approvals.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub releases: u32,
    /// Apps (Deployment, Service, Ingress, Rollout) released at once.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    pub apps: u32,
    /// Pods per app Deployment in the release of many apps.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub replicas: u32,
    /// Run one part only.
    #[arg(long, value_parser = ["latency", "scale"])]
    pub only: Option<String>,
    /// Print the results without rewriting docs/benchmarks.md.
    #[arg(long)]
    pub no_write: bool,
    /// Exit with an error when a target is missed.
    #[arg(long)]
    pub check: bool,
}

pub fn run(root: &Path, args: &Args) -> Result<()> {
    let start = Instant::now();
    let envoy = setup::envoy(root)?;
    let plugin = wasm::plugin(root, &wasm::Args::default())?.wasm;
    for package in [CONTROLLER_PACKAGE, BENCH_PACKAGE] {
        // One package per build: each binary gets the features it asks for, as when built
        // on its own.
        cmd::run(cmd::cargo(root).args(["build", "--release", "--package", package]))?;
    }
    let release_dir = wasm_build::target_dir(root).join("release");
    let report = tempfile::NamedTempFile::new().context("creating a temp file")?;
    let source = source_state_of(
        root,
        &[
            "controller",
            "sandbox",
            "plugin",
            "bench/controller",
            "Cargo.toml",
            "Cargo.lock",
        ],
    );
    let mut bench = Command::new(release_dir.join(BENCH_PACKAGE));
    bench
        .current_dir(root)
        .env("ENVOY_BIN", &envoy)
        .arg("--controller")
        .arg(release_dir.join(CONTROLLER_PACKAGE))
        .arg("--plugin")
        .arg(&plugin)
        .arg("--report")
        .arg(report.path())
        .args(["--releases", &args.releases.to_string()])
        .args(["--apps", &args.apps.to_string()])
        .args(["--replicas", &args.replicas.to_string()])
        .args(["--command-line", &command_line()])
        .args(["--source", &source]);
    if let Some(part) = &args.only {
        bench.args(["--only", part]);
    }
    // With --check the benchmark exits 2 when it measured but a target was missed.
    bench.arg("--check");
    println!("bench: {}", describe(&bench));
    let status = bench
        .status()
        .with_context(|| format!("could not run `{}`", describe(&bench)))?;
    let missed = match status.code() {
        Some(0) => false,
        Some(2) => true,
        _ => bail!("`{}` failed ({status})", describe(&bench)),
    };
    let markdown = std::fs::read_to_string(report.path()).context("reading the report")?;
    if !args.no_write {
        let path = root.join(REPORT_FILE);
        bench_report::write_section(&path, "controller", &markdown)?;
        println!("bench: wrote {}", path.display());
    }
    println!("bench: done in {}", cmd::elapsed(start));
    if args.check && missed {
        bail!("missed target(s): see the table above");
    }
    Ok(())
}
