//! `cargo xtask image`: the controller's container image as an OCI image layout, without Docker.
//!
//! The binary is linked statically (glibc with `crt-static`; rustls, so no OpenSSL), so the image
//! needs nothing else: the binary, `/etc/passwd` and `/etc/group` naming the non-root user it runs
//! as, and a config with that user, the entrypoint and the metrics port. The layout is written
//! with the same reproducible writer as the plugin's (`wasm_build::oci`), and both layouts are
//! then read back and checked as a registry client would, and the binary is run from the layer.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, ensure, Context, Result};
use serde_json::json;
use wasm_build::oci::{self, Image, LayerEntry, LayoutImage};

use crate::{cmd, wasm::dist_dir};

/// The controller crate and its binary.
pub const CONTROLLER_PACKAGE: &str = "higress-canary";
/// Where the binary sits in the image.
pub const BINARY_PATH: &str = "usr/local/bin/higress-canary";
/// The layout's directory inside `dist/`, next to the plugin's `oci/`.
pub const CONTROLLER_OCI_DIR: &str = "controller-oci";
/// The user the image runs as (distroless's `nonroot`), also set in deploy/base/deployment.yaml.
pub const NONROOT: u32 = 65532;

#[derive(Debug, Default, clap::Args)]
pub struct Args {
    /// Tag written into the layout's index.json [default: the controller's crate version].
    #[arg(long)]
    pub tag: Option<String>,
    /// Where to write the layout [default: <workspace>/dist/controller-oci].
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Cargo profile of the binary. CI checks the packaging with the cheap `image-check`
    /// profile; images to ship use the default.
    #[arg(long, default_value = "release")]
    pub profile: String,
}

/// Builds the static controller, writes its image layout and checks it and the plugin's.
pub fn run(root: &Path, args: &Args) -> Result<()> {
    let out_dir = args
        .out_dir
        .clone()
        .unwrap_or_else(|| dist_dir(root).join(CONTROLLER_OCI_DIR));
    let tag = match &args.tag {
        Some(tag) => tag.clone(),
        None => wasm_build::package_version(root, CONTROLLER_PACKAGE)?,
    };
    let binary = build_static(root, &args.profile)?;
    let descriptors = write_controller_layout(root, &binary, &out_dir, &tag)?;
    println!(
        "controller image: {} (tag {tag}, manifest {})",
        out_dir.display(),
        descriptors.manifest.digest
    );
    check(root, &out_dir)?;
    let plugin_layout = dist_dir(root).join(wasm_build::OCI_DIR);
    if plugin_layout.exists() {
        let plugin = oci::read_layout(&plugin_layout)
            .with_context(|| format!("checking the plugin image {}", plugin_layout.display()))?;
        check_plugin(&plugin)?;
        println!(
            "plugin image:     {} (tag {}, manifest {}): checked",
            plugin_layout.display(),
            plugin.tag,
            plugin.manifest.digest
        );
    } else {
        println!(
            "plugin image:     {} not built (`cargo xtask wasm` writes it)",
            plugin_layout.display()
        );
    }
    println!(
        "push with e.g. `skopeo copy oci:{}:{tag} docker://<registry>/higress-canary/controller:{tag}`",
        out_dir.display()
    );
    Ok(())
}

/// The host's target triple and its OCI architecture name.
fn host() -> Result<(String, &'static str)> {
    let out = cmd::probe(Command::new("rustc").arg("-vV"))?.context("running `rustc -vV`")?;
    let triple = out
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .context("`rustc -vV` printed no host triple")?
        .trim()
        .to_owned();
    let arch = match triple.split('-').next() {
        Some("x86_64") => "amd64",
        Some("aarch64") => "arm64",
        other => bail!("no OCI architecture name for {other:?} (host {triple})"),
    };
    ensure!(
        triple.ends_with("-linux-gnu"),
        "static images are built on Linux with glibc; the host is {triple}"
    );
    Ok((triple, arch))
}

/// `cargo build --profile <profile> --target <host>` with `crt-static`: a separate target
/// directory, so the host build's artifacts keep their flags.
fn build_static(root: &Path, profile: &str) -> Result<PathBuf> {
    let (triple, _) = host()?;
    let flags_var = format!(
        "CARGO_TARGET_{}_RUSTFLAGS",
        triple.to_uppercase().replace('-', "_")
    );
    cmd::run(
        cmd::cargo(root)
            .args([
                "build",
                "--profile",
                profile,
                "--locked",
                "-p",
                CONTROLLER_PACKAGE,
            ])
            .args(["--bin", CONTROLLER_PACKAGE, "--target", &triple])
            .env(&flags_var, "-C target-feature=+crt-static"),
    )?;
    let binary = wasm_build::target_dir(root)
        .join(&triple)
        .join(profile_dir(profile))
        .join(CONTROLLER_PACKAGE);
    let bytes = fs::read(&binary).with_context(|| format!("reading {}", binary.display()))?;
    ensure!(
        !has_interpreter(&bytes)?,
        "{} is dynamically linked (it has an ELF interpreter)",
        binary.display()
    );
    Ok(binary)
}

/// Cargo's output directory name for `profile` (`dev` builds go to `debug/`).
fn profile_dir(profile: &str) -> &str {
    match profile {
        "dev" | "test" => "debug",
        "bench" => "release",
        other => other,
    }
}

/// Whether an ELF64 little-endian executable asks for a dynamic loader (`PT_INTERP`).
fn has_interpreter(elf: &[u8]) -> Result<bool> {
    const PT_INTERP: u32 = 3;
    ensure!(
        elf.len() >= 64 && elf[..4] == *b"\x7fELF" && elf[4] == 2 && elf[5] == 1,
        "not a 64-bit little-endian ELF file"
    );
    let u16_at = |at: usize| u16::from_le_bytes([elf[at], elf[at + 1]]) as usize;
    let u64_at = |at: usize| -> Result<usize> {
        let bytes = elf.get(at..at + 8).context("truncated ELF header")?;
        Ok(u64::from_le_bytes(bytes.try_into()?) as usize)
    };
    let (phoff, phentsize, phnum) = (u64_at(0x20)?, u16_at(0x36), u16_at(0x38));
    for n in 0..phnum {
        let at = phoff + n * phentsize;
        let p_type = elf.get(at..at + 4).context("truncated program header")?;
        if u32::from_le_bytes(p_type.try_into()?) == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}

fn write_controller_layout(
    root: &Path,
    binary: &Path,
    out_dir: &Path,
    tag: &str,
) -> Result<oci::ImageDescriptors> {
    let (_, arch) = host()?;
    let bytes = fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    let passwd = format!(
        "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:{NONROOT}:{NONROOT}:nonroot:/home/nonroot:/sbin/nologin\n"
    );
    let group = format!("root:x:0:\nnonroot:x:{NONROOT}:\n");
    let version = wasm_build::package_version(root, CONTROLLER_PACKAGE)?;
    let image = Image {
        architecture: arch,
        os: "linux",
        runtime: json!({
            "User": format!("{NONROOT}:{NONROOT}"),
            "Entrypoint": [format!("/{BINARY_PATH}")],
            "Cmd": ["run"],
            "Env": ["PATH=/usr/local/bin"],
            "ExposedPorts": {"8080/tcp": {}},
            "Labels": {
                "org.opencontainers.image.title": "higress-canary",
                "org.opencontainers.image.description":
                    "Rollout controller for the higress-canary Wasm plugin",
                "org.opencontainers.image.version": version,
                "org.opencontainers.image.licenses": "Apache-2.0",
            },
        }),
        layer: vec![
            LayerEntry::Dir {
                path: "etc/",
                mode: 0o755,
            },
            LayerEntry::File {
                path: "etc/passwd",
                mode: 0o644,
                bytes: passwd.as_bytes(),
            },
            LayerEntry::File {
                path: "etc/group",
                mode: 0o644,
                bytes: group.as_bytes(),
            },
            LayerEntry::Dir {
                path: "usr/",
                mode: 0o755,
            },
            LayerEntry::Dir {
                path: "usr/local/",
                mode: 0o755,
            },
            LayerEntry::Dir {
                path: "usr/local/bin/",
                mode: 0o755,
            },
            LayerEntry::File {
                path: BINARY_PATH,
                mode: 0o755,
                bytes: &bytes,
            },
        ],
    };
    oci::write_image_layout(out_dir, &image, tag)
        .with_context(|| format!("writing {}", out_dir.display()))
}

/// Reads the controller layout back, checks its config, and runs the binary from the layer:
/// `--version` must name the crate version and `crd` must print deploy/crds exactly.
pub fn check(root: &Path, layout: &Path) -> Result<()> {
    let image = oci::read_layout(layout)
        .with_context(|| format!("checking the controller image {}", layout.display()))?;
    let runtime = &image.config["config"];
    ensure!(
        runtime["User"] == format!("{NONROOT}:{NONROOT}"),
        "the image must run as {NONROOT}, not {}",
        runtime["User"]
    );
    ensure!(
        runtime["Entrypoint"] == json!([format!("/{BINARY_PATH}")]),
        "entrypoint is {}",
        runtime["Entrypoint"]
    );
    let passwd = layer_file(&image, "etc/passwd")?;
    ensure!(
        String::from_utf8_lossy(&passwd.bytes).contains(&format!(":{NONROOT}:{NONROOT}:")),
        "etc/passwd has no user {NONROOT}"
    );
    let binary = layer_file(&image, BINARY_PATH)?;
    ensure!(
        binary.mode == 0o755 && binary.uid == 0,
        "{BINARY_PATH} must be root-owned 0755, is uid {} mode {:o}",
        binary.uid,
        binary.mode
    );
    ensure!(
        !has_interpreter(&binary.bytes)?,
        "the binary in the image is dynamically linked"
    );

    let scratch = tempfile::tempdir().context("creating a temporary directory")?;
    let extracted = scratch.path().join("higress-canary");
    fs::write(&extracted, &binary.bytes)?;
    fs::set_permissions(&extracted, fs::Permissions::from_mode(0o755))?;
    let version = wasm_build::package_version(root, CONTROLLER_PACKAGE)?;
    let printed = output(Command::new(&extracted).arg("--version"))?;
    ensure!(
        printed.trim() == format!("higress-canary {version}"),
        "`higress-canary --version` from the image printed {printed:?}"
    );
    let crd = output(Command::new(&extracted).arg("crd"))?;
    let committed_path = root.join("deploy/crds/rollouts.kruise.io.yaml");
    let committed = fs::read_to_string(&committed_path)
        .with_context(|| format!("reading {}", committed_path.display()))?;
    ensure!(
        crd == committed,
        "`higress-canary crd` from the image differs from {}",
        committed_path.display()
    );
    println!(
        "controller image: checked (digests, media types, user {NONROOT}, static binary runs: {})",
        printed.trim()
    );
    Ok(())
}

/// The plugin image must hold `plugin.wasm` in its last layer, as Higress requires.
fn check_plugin(image: &LayoutImage) -> Result<()> {
    let wasm = layer_file(image, wasm_build::PLUGIN_FILE)?;
    ensure!(
        wasm.bytes.starts_with(b"\0asm"),
        "plugin.wasm in the plugin image is not a wasm module"
    );
    Ok(())
}

fn layer_file<'a>(image: &'a LayoutImage, path: &str) -> Result<&'a oci::LayerFile> {
    image
        .last_layer
        .iter()
        .find(|f| f.path == path && !f.directory)
        .with_context(|| format!("the image's layer has no {path}"))
}

fn output(command: &mut Command) -> Result<String> {
    let out = command
        .output()
        .with_context(|| format!("running `{}`", cmd::describe(command)))?;
    ensure!(
        out.status.success(),
        "`{}` failed ({}): {}",
        cmd::describe(command),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_test_binary_is_dynamically_linked_and_that_is_detected() {
        // cargo's test binaries on linux-gnu are dynamic executables.
        let me = fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(has_interpreter(&me).unwrap());
    }

    #[test]
    fn a_file_that_is_not_elf_is_an_error() {
        assert!(has_interpreter(b"#!/bin/sh\n").is_err());
        assert!(has_interpreter(&[0u8; 80]).is_err());
    }
}
