//! `cargo xtask demo`: installs what the demo needs (Rust targets, Envoy, kubectl, wasm-opt,
//! Prometheus for the story the metric analysis rolls back), builds the plugin into `dist/`
//! and the `higress-canary` CLI, then runs the demo binary (`demo/`, package `canary-demo`)
//! with the given arguments.

use std::path::Path;

use anyhow::{bail, Result};

use crate::{
    cmd::{self, cargo, describe},
    setup::{self, AptPackage},
    wasm,
};

const DEMO_PACKAGE: &str = "canary-demo";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Arguments for the demo: --interactive, --keep, --step-seconds N, --out-dir DIR
    /// (`cargo xtask demo -- --help` lists them).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn run(root: &Path, args: &Args) -> Result<()> {
    setup::rust_targets(root)?;
    let envoy = setup::envoy(root)?;
    let kubectl = setup::kubectl(root)?;
    // wasm-opt for the plugin; Prometheus for the story the metric analysis rolls back.
    let apt: Vec<AptPackage> = setup::APT_PACKAGES
        .iter()
        .filter(|p| p.binary == "wasm-opt" || p.binary == "prometheus")
        .copied()
        .collect();
    setup::apt_packages(&apt)?;
    let plugin = wasm::plugin(root, &wasm::Args::default())?;
    println!("{plugin}");

    // The CLI next to the demo binary, for the commands `--keep` prints.
    let mut build = cargo(root);
    build.args([
        "build",
        "-p",
        DEMO_PACKAGE,
        "-p",
        "higress-canary",
        "--bins",
    ]);
    println!("$ {}", describe(&build));
    cmd::run(&mut build)?;

    let mut demo = cargo(root);
    demo.args(["run", "--quiet", "-p", DEMO_PACKAGE, "--"])
        .args(&args.args)
        .env("CANARY_PLUGIN_WASM", &plugin.wasm)
        .env("ENVOY_BIN", &envoy)
        .env("KUBECTL_BIN", &kubectl);
    // Wherever apt put it (the demo looks in /usr/bin otherwise).
    if let Some(prometheus) = cmd::which("prometheus") {
        demo.env("PROMETHEUS_BIN", prometheus);
    }
    println!("$ {}", describe(&demo));
    // Not `cmd::run`: the demo reads Enter from stdin with --interactive.
    let status = demo.status()?;
    match status.code() {
        Some(0) => Ok(()),
        Some(1) => {
            bail!(
                "a step did not match its configuration, a release did not end as required, or \
                 a request failed (see the summary)"
            )
        }
        _ => bail!("the demo failed ({status})"),
    }
}
