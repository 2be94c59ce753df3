//! `higress-canary`: the Rollout controller's command line.
//!
//! Implemented so far: `crd` and `render` (both offline). The controller loop (`run`) and the
//! cluster commands (`status`, `approve`, `pause`, `resume`, `abort`, `undo`) come with the
//! controller's I/O layer and are not offered until they work.

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use higress_canary::{
    offline::{render, RenderOptions},
    render::{PluginRef, DEFAULT_PLUGIN_NAME, DEFAULT_PLUGIN_NAMESPACE},
};

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
    /// Print the Rollout CRD (rollouts.kruise.io/v1alpha1) as YAML.
    Crd,
    /// Print, offline, the WasmPlugin and canary Ingress each step of a Rollout would apply.
    Render(RenderArgs),
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
    match run(cli.command) {
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

fn run(command: Command) -> Result<()> {
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
