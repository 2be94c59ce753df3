use std::{
    env,
    ffi::OsString,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::Value;

use crate::{Error, Result};

/// The target Higress (and upstream Envoy) load proxy-wasm modules for.
pub const WASM_TARGET: &str = "wasm32-wasip1";

/// A `cargo` command: the one running us (`$CARGO`) when there is one, so that a nested build uses
/// the same toolchain, else `cargo` from `PATH`.
fn cargo() -> Command {
    Command::new(env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo")))
}

/// Builds `package` in release mode for [`WASM_TARGET`] and returns the path of its `.wasm`.
///
/// Cargo's diagnostics and progress go to our stderr. The artifact path comes from cargo's own
/// JSON messages, so it is right whatever the target dir (`CARGO_TARGET_DIR`,
/// `build.target-dir`, ...).
pub fn build_wasm(workspace_root: &Path, package: &str) -> Result<PathBuf> {
    let args = [
        "build",
        "--release",
        "--target",
        WASM_TARGET,
        "-p",
        package,
        "--message-format=json-render-diagnostics",
    ];
    let command = format!("cargo {}", args.join(" "));
    let mut child = cargo()
        .args(args)
        .current_dir(workspace_root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn {
            command: command.clone(),
            source,
        })?;

    let lib_name = package.replace('-', "_");
    let mut artifact = None;
    let stdout = child.stdout.take().expect("invariant: stdout is piped");
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(|source| Error::Spawn {
            command: command.clone(),
            source,
        })?;
        // Anything that is not a JSON object (there should be nothing) is not ours to judge.
        let Ok(message) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if let Some(path) = wasm_artifact(&message, &lib_name) {
            artifact = Some(path);
        }
    }
    let status = child.wait().map_err(|source| Error::Spawn {
        command: command.clone(),
        source,
    })?;
    if !status.success() {
        return Err(Error::Command {
            command,
            status,
            stderr: String::new(),
        });
    }
    artifact.ok_or_else(|| Error::NoWasmArtifact {
        package: package.to_string(),
    })
}

/// The `.wasm` file of a `compiler-artifact` message for the library target `lib_name`.
fn wasm_artifact(message: &Value, lib_name: &str) -> Option<PathBuf> {
    if message["reason"] != "compiler-artifact" || message["target"]["name"] != lib_name {
        return None;
    }
    message["filenames"]
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .find(|f| f.ends_with(".wasm"))
        .map(PathBuf::from)
}

/// The workspace root as cargo sees it from the current directory.
pub fn workspace_root() -> Result<PathBuf> {
    let stdout =
        capture(cargo().args(["locate-project", "--workspace", "--message-format", "plain"]))?;
    let manifest = PathBuf::from(stdout.trim());
    Ok(manifest.parent().map(Path::to_path_buf).unwrap_or(manifest))
}

/// The target directory of the workspace at `workspace_root`: `CARGO_TARGET_DIR` (relative to
/// the root) if set, else `<root>/target`. Prefer the path [`build_wasm`] returns; this is for
/// callers that only need to know where things go.
pub fn target_dir(workspace_root: &Path) -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace_root.join(dir),
        _ => workspace_root.join("target"),
    }
}

/// The version of workspace member `package`, e.g. for a default image tag.
pub fn package_version(workspace_root: &Path, package: &str) -> Result<String> {
    let mut cmd = cargo();
    cmd.args([
        "metadata",
        "--format-version",
        "1",
        "--no-deps",
        "--offline",
    ])
    .current_dir(workspace_root);
    let stdout = capture(&mut cmd)?;
    let metadata: Value = serde_json::from_str(&stdout).map_err(|source| Error::Json {
        command: describe(&cmd),
        source,
    })?;
    metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == package)
        .and_then(|p| p["version"].as_str())
        .map(str::to_string)
        .ok_or_else(|| Error::UnknownPackage {
            package: package.to_string(),
        })
}

/// Runs `cmd` to completion and returns its stdout; its stderr becomes part of the error.
pub(crate) fn capture(cmd: &mut Command) -> Result<String> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn {
            command: describe(cmd),
            source,
        })?;
    if !output.status.success() {
        return Err(Error::Command {
            command: describe(cmd),
            status: output.status,
            stderr: tail(&String::from_utf8_lossy(&output.stderr), 20),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `program arg arg…`, for error messages.
pub(crate) fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The last `lines` lines of `text`: enough to explain a failure without flooding the message.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_wasm_file_of_the_requested_library_is_picked_from_cargo_messages() {
        let message = json!({
            "reason": "compiler-artifact",
            "target": {"name": "noop_filter", "kind": ["cdylib"]},
            "filenames": ["/t/wasm32-wasip1/release/noop_filter.wasm"],
        });
        assert_eq!(
            wasm_artifact(&message, "noop_filter"),
            Some(PathBuf::from("/t/wasm32-wasip1/release/noop_filter.wasm"))
        );
        assert_eq!(wasm_artifact(&message, "canary_filter"), None);
    }

    #[test]
    fn dependency_artifacts_without_a_wasm_file_are_ignored() {
        let message = json!({
            "reason": "compiler-artifact",
            "target": {"name": "proxy_wasm", "kind": ["lib"]},
            "filenames": ["/t/deps/libproxy_wasm-1.rlib", "/t/deps/libproxy_wasm-1.rmeta"],
        });
        assert_eq!(wasm_artifact(&message, "proxy_wasm"), None);
        assert_eq!(
            wasm_artifact(&json!({"reason": "build-finished"}), "x"),
            None
        );
    }

    #[test]
    fn tail_keeps_only_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
