//! `cargo xtask test`: what CI runs. Each step prints its command and duration; the first
//! failure stops the run with an error naming the step.

use std::{path::Path, process::Command, time::Instant};

use anyhow::{Context, Result};

use crate::{
    cmd::{self, cargo, describe},
    image, setup, wasm,
};

/// Runs every step in order.
pub fn run(root: &Path) -> Result<()> {
    let start = Instant::now();
    let mut steps = Steps { done: 0 };

    let tools = steps.step("setup", || setup::all(root))?;
    steps.cargo(root, "format", &["fmt", "--all", "--", "--check"])?;
    steps.cargo(
        root,
        "clippy (host)",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    steps.cargo(
        root,
        "clippy (wasm32-wasip1)",
        &[
            "clippy",
            "-p",
            "canary-filter",
            "-p",
            "noop-filter",
            "--target",
            "wasm32-wasip1",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    let plugin = steps.step("plugin artifacts", || {
        let artifacts = wasm::plugin(root, &wasm::Args::default())?;
        println!("{artifacts}");
        Ok(artifacts)
    })?;
    let noop = steps.step("noop filter", || {
        let wasm = wasm_build::build_wasm(root, "noop-filter")?;
        println!("{}", wasm.display());
        Ok(wasm)
    })?;

    // The controller image's packaging, from a cheaply optimised static build; the plugin's
    // layout (just written) is checked with it.
    steps.step("images", || {
        image::run(
            root,
            &image::Args {
                tag: None,
                out_dir: Some(wasm_build::target_dir(root).join("image-check/controller-oci")),
                profile: "image-check".to_owned(),
            },
        )
    })?;

    // The two cdylib filters only make sense for wasm; natively they would not even link.
    // nextest runs the tests of all binaries side by side (`.config/nextest.toml`): the
    // end-to-end ones mostly wait on processes and timers, and one after another they took
    // twice as long.
    let workspace = [
        "--workspace",
        "--exclude",
        "canary-filter",
        "--exclude",
        "noop-filter",
    ];
    let mut tests = cargo(root);
    tests
        .args(["nextest", "run", "--no-tests=warn"])
        .args(workspace)
        .env("CANARY_PLUGIN_WASM", &plugin.wasm)
        .env("NOOP_FILTER_WASM", &noop)
        .env("ENVOY_BIN", &tools.envoy)
        .env("KUBECTL_BIN", &tools.kubectl);
    if !tools.nextest_path.is_empty() {
        tests.env("PATH", setup::prepend_path(&tools.nextest_path)?);
    }
    steps.command("tests", &mut tests)?;
    // nextest does not run doctests.
    let mut doctests = cargo(root);
    doctests.args(["test", "--doc"]).args(workspace);
    steps.command("doctests", &mut doctests)?;

    match &tools.wasm_bindgen_bin {
        Some(bin) => {
            let path = setup::prepend_path(std::slice::from_ref(bin))?;
            // `--tests`: doctests cannot run under wasm-bindgen-test-runner (they "pass" without
            // running), and they already ran natively above.
            let mut core = cargo(root);
            core.args([
                "test",
                "-p",
                "canary-core",
                "--target",
                "wasm32-unknown-unknown",
                "--tests",
            ])
            .env("PATH", path)
            .env(
                "CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER",
                "wasm-bindgen-test-runner",
            );
            steps.command("core tests (wasm32 under Node)", &mut core)?;
        }
        None => println!(
            "==> core tests (wasm32 under Node): skipped, wasm-bindgen is not in Cargo.lock"
        ),
    }

    println!(
        "test: all {} steps passed in {}",
        steps.done,
        cmd::elapsed(start)
    );
    Ok(())
}

struct Steps {
    done: usize,
}

impl Steps {
    fn step<T>(&mut self, name: &str, body: impl FnOnce() -> Result<T>) -> Result<T> {
        println!("==> {name}");
        let start = Instant::now();
        let value = body()
            .with_context(|| format!("step `{name}` failed after {}", cmd::elapsed(start)))?;
        println!("<== {name}: ok in {}", cmd::elapsed(start));
        self.done += 1;
        Ok(value)
    }

    fn command(&mut self, name: &str, cmd: &mut Command) -> Result<()> {
        self.step(name, || {
            println!("    $ {}", describe(cmd));
            cmd::run(cmd)
        })
    }

    fn cargo(&mut self, root: &Path, name: &str, args: &[&str]) -> Result<()> {
        self.command(name, cargo(root).args(args))
    }
}
