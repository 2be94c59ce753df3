//! `wasm-build`: builds a proxy-wasm package for wasm32-wasip1 (by default the canary plugin,
//! `canary-filter`) and packages it into `dist/` as the library docs describe.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use wasm_build::{ImageRef, PackageOptions, WasmOpt};

/// Build the canary plugin and package it for Higress.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Where to write the artifacts [default: <workspace>/dist].
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Image reference for the OCI layout tag and the example WasmPlugin
    /// [default: oci://registry.example.com/higress-canary/plugin:<package version>].
    #[arg(long)]
    image: Option<ImageRef>,
    /// Copy the module as cargo built it instead of running wasm-opt.
    #[arg(long)]
    no_opt: bool,
    /// The workspace package to build.
    #[arg(long, short, default_value = "canary-filter")]
    package: String,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let root = wasm_build::workspace_root().context("finding the cargo workspace")?;
    let out_dir = args.out_dir.unwrap_or_else(|| root.join("dist"));
    let image = match args.image {
        Some(image) => image,
        None => ImageRef::placeholder(&wasm_build::package_version(&root, &args.package)?)?,
    };
    let wasm_opt = if args.no_opt {
        WasmOpt::Off
    } else {
        WasmOpt::Auto
    };

    let wasm = wasm_build::build_wasm(&root, &args.package)
        .with_context(|| format!("building {} for wasm32-wasip1", args.package))?;
    let artifacts =
        wasm_build::package_plugin(&wasm, &out_dir, &PackageOptions { image, wasm_opt })
            .with_context(|| format!("packaging {}", wasm.display()))?;
    println!("{artifacts}");
    Ok(())
}
