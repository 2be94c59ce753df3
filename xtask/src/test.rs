//! `cargo xtask test`: what CI runs. Each step prints its command and duration; the first
//! failure stops the run with an error naming the step.

use std::{env, ffi::OsString, path::Path, process::Command, time::Instant};

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
    let mut tests = cargo(root);
    tests
        .args([
            "test",
            "--workspace",
            "--exclude",
            "canary-filter",
            "--exclude",
            "noop-filter",
        ])
        .env("CANARY_PLUGIN_WASM", &plugin.wasm)
        .env("NOOP_FILTER_WASM", &noop)
        .env("ENVOY_BIN", &tools.envoy)
        .env("KUBECTL_BIN", &tools.kubectl);
    steps.command("tests", &mut tests)?;

    match &tools.wasm_bindgen_bin {
        Some(bin) => {
            let mut path = OsString::from(bin);
            if let Some(old) = env::var_os("PATH") {
                path.push(":");
                path.push(old);
            }
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
