//! Project automation, run as `cargo xtask <command>` (the alias lives in `.cargo/config.toml`).
//!
//! - `setup`: installs what the tests need (Rust targets, Envoy, wasm-bindgen-cli, Debian
//!   packages), idempotently and quickly when everything is already there;
//! - `test`: everything CI checks, in order, failing fast (`.ci/run` is just this);
//! - `wasm`: builds the canary plugin and packages it into `dist/`;
//! - `bench plugin`: measures the plugin's Envoy CPU cost per request against no filter, a
//!   no-op Wasm filter and Lua, and writes `docs/benchmarks.md`.
//!
//! Tools go into the workspace (`.venv/`, `.tools/`), into the rustup toolchain (targets) or
//! through apt, never into the user's cargo home. Only build-time tooling belongs here: nothing
//! may depend on this crate.

mod bench;
mod cmd;
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
    /// Run setup, lints, the wasm builds and every test suite, as CI does.
    Test,
    /// Build the canary plugin for wasm32-wasip1 and package it into <workspace>/dist.
    Wasm(wasm::Args),
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
        Command::Wasm(args) => {
            let artifacts = wasm::plugin(root, &args)?;
            println!("{artifacts}");
            Ok(())
        }
        Command::Bench(args) => bench::run(root, &args),
    }
}

/// The workspace root: xtask lives in `<root>/xtask`.
fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}
