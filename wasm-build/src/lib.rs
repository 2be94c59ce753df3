//! Builds the canary plugin for `wasm32-wasip1` and packages it the way Higress consumes it.
//!
//! [`build_wasm`] runs cargo; [`package_plugin`] turns the module into `dist/`:
//! - `plugin.wasm`, optimised with binaryen's `wasm-opt -O3` when it is installed;
//! - `plugin.wasm.sha256`, in `sha256sum` format;
//! - `oci/`, an OCI image layout following Higress's plugin image spec (the last layer is a
//!   tar+gzip holding `plugin.wasm`), byte-for-byte reproducible so its digest can be pinned;
//! - `wasmplugin.yaml`, an example `extensions.higress.io/v1alpha1` WasmPlugin for the image.
//!
//! It only runs local tools (`cargo`, `wasm-opt`) and never talks to a registry: pushing the
//! layout is left to oras, skopeo or crane. It must not depend on the plugin crates, so a broken
//! plugin cannot break the tool that reports the breakage.
#![forbid(unsafe_code)]

/// Running cargo: building a wasm package, finding the workspace, target dir and versions.
mod cargo;
/// The one error type of this crate.
mod error;
/// Writing and checking the OCI image layout, and image references.
pub mod oci;
/// Optimising with `wasm-opt`, with the feature set the module was compiled for.
mod opt;
/// Just enough of the wasm binary format to read sections, features and exports.
pub mod wasm;
/// The example WasmPlugin manifest.
mod wasmplugin;

use std::{
    fs,
    path::{Path, PathBuf},
};

use sha2::{Digest, Sha256};

pub use cargo::{build_wasm, package_version, target_dir, workspace_root, WASM_TARGET};
pub use error::{Error, Result};
pub use oci::ImageRef;
pub use opt::{Optimisation, WasmOpt};

/// File name of the module inside `out_dir` and inside the image layer (fixed by Higress's spec).
pub const PLUGIN_FILE: &str = "plugin.wasm";
/// File name of the checksum file inside `out_dir`.
pub const SHA256_FILE: &str = "plugin.wasm.sha256";
/// Directory name of the OCI image layout inside `out_dir`.
pub const OCI_DIR: &str = "oci";
/// File name of the example WasmPlugin inside `out_dir`.
pub const WASMPLUGIN_FILE: &str = "wasmplugin.yaml";

/// How to package a module.
#[derive(Debug, Clone)]
pub struct PackageOptions {
    /// Image reference written into `index.json` (its tag) and into `wasmplugin.yaml`.
    pub image: ImageRef,
    /// Whether and with which binary to run `wasm-opt`.
    pub wasm_opt: WasmOpt,
}

impl PackageOptions {
    /// Packages for `image`, optimising with `wasm-opt` from `PATH` if it is there.
    pub fn new(image: ImageRef) -> Self {
        Self {
            image,
            wasm_opt: WasmOpt::Auto,
        }
    }
}

/// What [`package_plugin`] wrote, with the numbers worth printing.
#[derive(Debug, Clone)]
pub struct Artifacts {
    /// The module given to [`package_plugin`].
    pub input: PathBuf,
    /// `out_dir/plugin.wasm`.
    pub wasm: PathBuf,
    /// `out_dir/plugin.wasm.sha256`.
    pub sha256_file: PathBuf,
    /// `out_dir/oci`, the OCI image layout.
    pub oci_dir: PathBuf,
    /// `out_dir/wasmplugin.yaml`.
    pub wasmplugin: PathBuf,
    /// Lowercase hex sha256 of `plugin.wasm`.
    pub wasm_sha256: String,
    /// The image written into the layout and the manifest.
    pub image: ImageRef,
    /// The image's descriptors; `image_digests.manifest.digest` is what a registry reports.
    pub image_digests: oci::ImageDescriptors,
    /// Size of the module given to [`package_plugin`], in bytes.
    pub input_size: u64,
    /// Size of `plugin.wasm`, in bytes.
    pub output_size: u64,
    /// Whether `wasm-opt` ran, and if not, why.
    pub optimisation: Optimisation,
}

/// Optimises `wasm` (see [`WasmOpt`]) and writes the artifacts listed in the crate docs into
/// `out_dir`, replacing earlier ones.
pub fn package_plugin(wasm: &Path, out_dir: &Path, opts: &PackageOptions) -> Result<Artifacts> {
    let input = fs::read(wasm).map_err(|e| Error::io(wasm, e))?;
    wasm::check_header(&input).map_err(|reason| Error::NotWasm {
        path: wasm.to_path_buf(),
        reason,
    })?;
    fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;

    let wasm_out = out_dir.join(PLUGIN_FILE);
    let optimisation = opt::optimise_into(wasm, &input, &wasm_out, &opts.wasm_opt)?;
    let module = fs::read(&wasm_out).map_err(|e| Error::io(&wasm_out, e))?;

    let wasm_sha256 = sha256_hex(&module);
    let sha256_file = out_dir.join(SHA256_FILE);
    write(
        &sha256_file,
        format!("{wasm_sha256}  {PLUGIN_FILE}\n").as_bytes(),
    )?;

    let oci_dir = out_dir.join(OCI_DIR);
    let image_digests = oci::write_layout(&oci_dir, &module, opts.image.tag())?;

    let wasmplugin = out_dir.join(WASMPLUGIN_FILE);
    let yaml = wasmplugin::render(&wasmplugin::Inputs {
        image: &opts.image,
        manifest_digest: &image_digests.manifest.digest,
        wasm_sha256: &wasm_sha256,
    });
    write(&wasmplugin, yaml.as_bytes())?;

    Ok(Artifacts {
        input: wasm.to_path_buf(),
        wasm: wasm_out,
        sha256_file,
        oci_dir,
        wasmplugin,
        wasm_sha256,
        image: opts.image.clone(),
        image_digests,
        input_size: input.len() as u64,
        output_size: module.len() as u64,
        optimisation,
    })
}

/// A summary for build logs: paths, sizes before and after `wasm-opt`, digests.
impl std::fmt::Display for Artifacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let opt = match &self.optimisation {
            Optimisation::Optimised { feature_flags, .. } => format!(
                "wasm-opt -O3 {}: {} -> {} bytes ({:+.1}%)",
                feature_flags.join(" "),
                self.input_size,
                self.output_size,
                (self.output_size as f64 / self.input_size.max(1) as f64 - 1.0) * 100.0
            ),
            Optimisation::Skipped { reason } => format!("skipped: {reason}"),
        };
        writeln!(
            f,
            "input        {} ({} bytes)",
            self.input.display(),
            self.input_size
        )?;
        writeln!(f, "optimise     {opt}")?;
        writeln!(
            f,
            "plugin.wasm  {} ({} bytes)",
            self.wasm.display(),
            self.output_size
        )?;
        writeln!(
            f,
            "sha256       {}  {}",
            self.wasm_sha256,
            self.sha256_file.display()
        )?;
        let d = &self.image_digests;
        writeln!(
            f,
            "oci layout   {} (tag {})",
            self.oci_dir.display(),
            self.image.tag()
        )?;
        writeln!(
            f,
            "  manifest   {} ({} bytes)",
            d.manifest.digest, d.manifest.size
        )?;
        writeln!(
            f,
            "  layer      {} ({} bytes)",
            d.layer.digest, d.layer.size
        )?;
        write!(
            f,
            "wasmplugin   {} (url {})",
            self.wasmplugin.display(),
            self.image
        )
    }
}

/// Lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests;
