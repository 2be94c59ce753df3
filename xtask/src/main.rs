//! Project automation, run as `cargo xtask <command>` (the alias lives in `.cargo/config.toml`).
//!
//! - `setup`: installs what the tests need (Rust targets, Envoy, wasm-bindgen-cli, Debian
//!   packages), idempotently and quickly when everything is already there;
//! - `demo`: plays the seed's canary and A/B releases on the sandbox, with a live view and a
//!   report (`target/demo/report.html`);
//! - `test`: everything CI checks, in order, failing fast (`.ci/run` is just this);
//! - `wasm`: builds the canary plugin and packages it into `dist/`;
//! - `image`: the controller's OCI image layout (static binary, non-root), next to the plugin's;
//! - `bench plugin`: measures the plugin's Envoy CPU cost per request against no filter, a
//!   no-op Wasm filter and Lua, and writes `docs/benchmarks.md`;
//! - `bench controller`: approve-to-gateway latency and 500 Rollouts released at once, on the
//!   sandbox with the release controller, also into `docs/benchmarks.md`.
//!
//! Tools go into the workspace (`.venv/`, `.tools/`), into the rustup toolchain (targets) or
//! through apt, never into the user's cargo home. Only build-time tooling belongs here: nothing
//! may depend on this crate.

mod bench;
mod bench_controller;
mod bench_report;
mod cmd;
mod demo;
mod image;
mod setup;
mod test;
mod wasm;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "Project automation for higress-canary"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install everything the tests need (safe to run again; fast when nothing is missing).
    Setup,
    /// Play the seed's canary and A/B releases on a local sandbox, with a live view and a report.
    Demo(demo::Args),
    /// Run setup, lints, the wasm builds and every test suite, as CI does.
    Test,
    /// Build the canary plugin for wasm32-wasip1 and package it into <workspace>/dist.
    Wasm(wasm::Args),
    /// Build the controller's container image as an OCI image layout in <workspace>/dist (no
    /// Docker needed) and check it and the plugin's.
    Image(image::Args),
    /// Measure performance against the targets in docs/benchmarks.md (needs two free CPUs).
    Bench(bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command, &workspace_root()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // The context chain says which step failed and why; a backtrace of xtask itself
            // (printed by anyhow's Debug when RUST_BACKTRACE is set) would only bury that.
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command, root: &Path) -> Result<()> {
    match command {
        Command::Setup => setup::all(root).map(drop),
        Command::Test => test::run(root),
        Command::Demo(args) => demo::run(root, &args),
        Command::Wasm(args) => {
            let artifacts = wasm::plugin(root, &args)?;
            println!("{artifacts}");
            Ok(())
        }
        Command::Bench(args) => bench::run(root, &args),
        Command::Image(args) => image::run(root, &args),
    }
}

/// The workspace root: xtask lives in `<root>/xtask`.
fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}
