//! `cargo xtask wasm`: the canary plugin, built and packaged by the wasm-build library.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use wasm_build::{Artifacts, ImageRef, PackageOptions, WasmOpt};

/// The plugin crate.
pub const PLUGIN_PACKAGE: &str = "canary-filter";

#[derive(Debug, Default, clap::Args)]
pub struct Args {
    /// Image reference for the OCI layout tag and the example WasmPlugin
    /// [default: oci://registry.example.com/higress-canary/plugin:<canary-filter version>].
    #[arg(long)]
    pub image: Option<ImageRef>,
    /// Copy the module as cargo built it instead of running wasm-opt.
    #[arg(long)]
    pub no_opt: bool,
    /// Where to write the artifacts [default: <workspace>/dist].
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
}

/// Builds [`PLUGIN_PACKAGE`] for wasm32-wasip1 and packages it into `<root>/dist` (or
/// `args.out_dir`).
pub fn plugin(root: &Path, args: &Args) -> Result<Artifacts> {
    let image = match &args.image {
        Some(image) => image.clone(),
        None => ImageRef::placeholder(&wasm_build::package_version(root, PLUGIN_PACKAGE)?)?,
    };
    let wasm_opt = if args.no_opt {
        WasmOpt::Off
    } else {
        WasmOpt::Auto
    };
    let wasm = wasm_build::build_wasm(root, PLUGIN_PACKAGE)
        .with_context(|| format!("building {PLUGIN_PACKAGE} for wasm32-wasip1"))?;
    let out_dir = args.out_dir.clone().unwrap_or_else(|| dist_dir(root));
    wasm_build::package_plugin(&wasm, &out_dir, &PackageOptions { image, wasm_opt })
        .with_context(|| format!("packaging {} into {}", wasm.display(), out_dir.display()))
}

/// `<root>/dist`, where the packaged plugin goes by default.
pub fn dist_dir(root: &Path) -> PathBuf {
    root.join("dist")
}
