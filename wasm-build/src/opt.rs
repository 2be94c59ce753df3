use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{cargo::capture, wasm, Error, Result};

/// Whether and how to run binaryen's `wasm-opt`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum WasmOpt {
    /// Use `wasm-opt` from `PATH`; copy the module unoptimised if there is none.
    #[default]
    Auto,
    /// Use this `wasm-opt` binary.
    Binary(PathBuf),
    /// Do not optimise.
    Off,
}

/// What happened to the module on its way to `plugin.wasm`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Optimisation {
    /// `wasm-opt -O3` ran and its output validated with the same features.
    Optimised {
        /// The `wasm-opt` binary.
        tool: PathBuf,
        /// The `--enable-*` flags derived from the module's features.
        feature_flags: Vec<String>,
    },
    /// The module was copied as is.
    Skipped {
        /// Why, in words fit for a build log.
        reason: String,
    },
}

/// Features LLVM enables by default for wasm32 as of rustc 1.95 (LLVM's "generic" CPU). Used when
/// a module carries no `target_features` section to tell us.
const RUSTC_DEFAULT_FEATURES: &[&str] = &[
    "bulk-memory",
    "bulk-memory-opt",
    "call-indirect-overlong",
    "multivalue",
    "mutable-globals",
    "nontrapping-fptoint",
    "reference-types",
    "sign-ext",
];

/// The `wasm-opt` flag for an LLVM wasm feature: `Some(None)` for features that need none,
/// `None` for features this table does not know.
fn feature_flag(llvm_name: &str) -> Option<Option<&'static str>> {
    Some(Some(match llvm_name {
        "atomics" => "--enable-threads",
        // memory.copy/fill only: a subset of bulk memory, which older binaryen has no flag for.
        "bulk-memory" | "bulk-memory-opt" => "--enable-bulk-memory",
        // Only an encoding relaxation (LEB table index in call_indirect) that binaryen accepts.
        "call-indirect-overlong" => return Some(None),
        "exception-handling" => "--enable-exception-handling",
        "extended-const" => "--enable-extended-const",
        "fp16" => "--enable-fp16",
        "gc" => "--enable-gc",
        "memory64" => "--enable-memory64",
        "multimemory" => "--enable-multimemory",
        "multivalue" => "--enable-multivalue",
        "mutable-globals" => "--enable-mutable-globals",
        "nontrapping-fptoint" => "--enable-nontrapping-float-to-int",
        "reference-types" => "--enable-reference-types",
        "relaxed-simd" => "--enable-relaxed-simd",
        "sign-ext" => "--enable-sign-ext",
        "simd128" => "--enable-simd",
        "tail-call" => "--enable-tail-call",
        _ => return None,
    }))
}

/// The sorted, deduplicated `--enable-*` flags for `module`'s features, or the names of the
/// features no flag is known for.
pub(crate) fn feature_flags(module: &[u8]) -> Result<Vec<String>, Vec<String>> {
    let declared = match wasm::target_features(module) {
        Ok(Some(features)) => features
            .into_iter()
            .filter(|f| f.prefix != '-')
            .map(|f| f.name)
            .collect::<Vec<_>>(),
        // No section, or one we cannot read: assume what rustc emits by default.
        Ok(None) | Err(_) => RUSTC_DEFAULT_FEATURES
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    let mut flags = Vec::new();
    let mut unknown = Vec::new();
    for name in declared {
        match feature_flag(&name) {
            Some(Some(flag)) => flags.push(flag.to_string()),
            Some(None) => {}
            None => unknown.push(name),
        }
    }
    if !unknown.is_empty() {
        return Err(unknown);
    }
    flags.sort();
    flags.dedup();
    Ok(flags)
}

/// Writes `input` (read from `input_path`) to `out`, optimised as `how` says. `out` is replaced
/// only once the optimised module has validated, so a failure leaves no half-checked file.
pub(crate) fn optimise_into(
    input_path: &Path,
    input: &[u8],
    out: &Path,
    how: &WasmOpt,
) -> Result<Optimisation> {
    let tool = match how {
        WasmOpt::Off => return copy(input, out, "disabled (--no-opt)".to_string()),
        WasmOpt::Binary(path) => path.clone(),
        WasmOpt::Auto => match find_on_path("wasm-opt") {
            Some(path) => path,
            None => {
                let reason = "wasm-opt not found on PATH (apt-get install binaryen)".to_string();
                return copy(input, out, reason);
            }
        },
    };
    let feature_flags = match feature_flags(input) {
        Ok(flags) => flags,
        Err(unknown) => {
            let reason = format!(
                "the module uses wasm feature(s) {} that have no known wasm-opt flag",
                unknown.join(", ")
            );
            return copy(input, out, reason);
        }
    };

    let tmp = out.with_extension("wasm.tmp");
    if let Err(err) = optimise_and_check(&tool, &feature_flags, input_path, input, &tmp) {
        let _ = fs::remove_file(&tmp);
        return Err(err);
    }
    fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
    Ok(Optimisation::Optimised {
        tool,
        feature_flags,
    })
}

/// Runs `wasm-opt -O3` from `input_path` to `tmp` and checks the result.
fn optimise_and_check(
    tool: &Path,
    feature_flags: &[String],
    input_path: &Path,
    input: &[u8],
    tmp: &Path,
) -> Result<()> {
    let mut optimise = Command::new(tool);
    optimise
        .arg("-O3")
        .args(feature_flags)
        .arg(input_path)
        .arg("-o")
        .arg(tmp);
    capture(&mut optimise)?;

    // wasm-opt validates what it reads; reading the output back with exactly the module's own
    // features proves the optimiser did not rely on anything the module was not built for.
    let mut validate = Command::new(tool);
    validate.args(feature_flags).arg(tmp);
    capture(&mut validate)?;

    // Envoy finds the plugin's entry points by export name; an optimiser must not touch them.
    let optimised = fs::read(tmp).map_err(|e| Error::io(tmp, e))?;
    let (before, after) = (exports(input_path, input)?, exports(tmp, &optimised)?);
    if before != after {
        return Err(Error::OptimisedModuleChanged {
            what: "exports",
            before,
            after,
        });
    }
    Ok(())
}

fn exports(path: &Path, module: &[u8]) -> Result<Vec<String>> {
    wasm::export_names(module).map_err(|reason| Error::NotWasm {
        path: path.to_path_buf(),
        reason,
    })
}

fn copy(input: &[u8], out: &Path, reason: String) -> Result<Optimisation> {
    fs::write(out, input).map_err(|e| Error::io(out, e))?;
    Ok(Optimisation::Skipped { reason })
}

/// The first file named `name` in `PATH`.
pub(crate) fn find_on_path(name: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wasm::tests::module;

    #[test]
    fn declared_features_map_to_sorted_wasm_opt_flags() {
        let m = module(
            &[
                "sign-ext",
                "mutable-globals",
                "bulk-memory",
                "bulk-memory-opt",
            ],
            &[],
        );
        assert_eq!(
            feature_flags(&m).unwrap(),
            [
                "--enable-bulk-memory",
                "--enable-mutable-globals",
                "--enable-sign-ext"
            ]
        );
    }

    #[test]
    fn a_module_without_a_features_section_gets_rustcs_defaults() {
        let flags = feature_flags(b"\0asm\x01\0\0\0").unwrap();
        for flag in [
            "--enable-bulk-memory",
            "--enable-multivalue",
            "--enable-mutable-globals",
            "--enable-nontrapping-float-to-int",
            "--enable-reference-types",
            "--enable-sign-ext",
        ] {
            assert!(
                flags.iter().any(|f| f == flag),
                "{flag} missing from {flags:?}"
            );
        }
    }

    /// The release profile strips the `target_features` section, so the fallback list is what
    /// wasm-opt gets; this catches a toolchain bump that enables a feature the list lacks.
    #[test]
    fn the_fallback_covers_every_wasm_feature_the_installed_rustc_enables() {
        let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
        let Ok(out) = Command::new(rustc)
            .args(["--print", "cfg", "--target", crate::WASM_TARGET])
            .output()
        else {
            eprintln!("skipped: rustc cannot be run");
            return;
        };
        let cfg = String::from_utf8_lossy(&out.stdout);
        let enabled: Vec<&str> = cfg
            .lines()
            .filter_map(|l| l.strip_prefix("target_feature=\""))
            .filter_map(|l| l.strip_suffix('"'))
            .filter(|f| *f != "crt-static") // a linking mode, not a wasm feature
            .collect();
        assert!(
            !enabled.is_empty(),
            "rustc printed no target features:\n{cfg}"
        );
        for feature in enabled {
            assert!(
                RUSTC_DEFAULT_FEATURES.contains(&feature),
                "add {feature:?} to the fallback"
            );
        }
    }

    #[test]
    fn unknown_features_are_reported_by_name() {
        let m = module(&["sign-ext", "teleportation"], &[]);
        assert_eq!(feature_flags(&m).unwrap_err(), ["teleportation"]);
    }

    #[test]
    fn no_opt_copies_the_module_unchanged() {
        let dir = crate::tests::TempDir::new("no-opt");
        let m = module(&["sign-ext"], &["a"]);
        let input = dir.path().join("in.wasm");
        fs::write(&input, &m).unwrap();
        let out = dir.path().join("out.wasm");
        let result = optimise_into(&input, &m, &out, &WasmOpt::Off).unwrap();
        assert!(matches!(result, Optimisation::Skipped { .. }));
        assert_eq!(fs::read(out).unwrap(), m);
    }

    #[test]
    fn a_failing_wasm_opt_is_an_error_naming_it_and_leaves_no_partial_output() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = crate::tests::TempDir::new("opt-fails");
        // Writes junk to its last argument (the -o file), complains, and fails.
        let tool = dir.path().join("wasm-opt");
        let script = "#!/bin/sh\nfor last; do :; done\necho junk > \"$last\"\necho 'Fatal: boom' >&2\nexit 3\n";
        fs::write(&tool, script).unwrap();
        fs::set_permissions(&tool, fs::Permissions::from_mode(0o755)).unwrap();
        let m = module(&["sign-ext"], &["a"]);
        let input = dir.path().join("in.wasm");
        fs::write(&input, &m).unwrap();
        let out = dir.path().join("plugin.wasm");

        // Another test thread forking while the script was open for writing can make exec fail
        // with ETXTBSY for a moment; that is the test's doing, so try again.
        let how = WasmOpt::Binary(tool);
        let mut attempts = 0;
        let err = loop {
            attempts += 1;
            match optimise_into(&input, &m, &out, &how) {
                Err(Error::Spawn { source, .. })
                    if source.raw_os_error() == Some(26) && attempts < 100 =>
                {
                    std::thread::yield_now()
                }
                result => break result.unwrap_err(),
            }
        };
        let message = err.to_string();
        assert!(
            message.contains("wasm-opt -O3 --enable-sign-ext"),
            "{message}"
        );
        assert!(message.contains("Fatal: boom"), "{message}");
        assert!(!out.exists());
        assert!(!out.with_extension("wasm.tmp").exists());
    }

    /// Runs only where binaryen is installed (`cargo xtask setup` installs it).
    #[test]
    fn wasm_opt_output_validates_and_keeps_the_exports() {
        let Some(tool) = find_on_path("wasm-opt") else {
            eprintln!("skipped: wasm-opt is not on PATH");
            return;
        };
        let dir = crate::tests::TempDir::new("opt");
        let m = module(
            &["sign-ext", "mutable-globals"],
            &["proxy_on_memory_allocate", "a"],
        );
        let input = dir.path().join("in.wasm");
        fs::write(&input, &m).unwrap();
        let out = dir.path().join("plugin.wasm");
        let result = optimise_into(&input, &m, &out, &WasmOpt::Binary(tool)).unwrap();
        assert!(
            matches!(result, Optimisation::Optimised { .. }),
            "{result:?}"
        );
        let optimised = fs::read(&out).unwrap();
        assert_eq!(
            wasm::export_names(&optimised).unwrap(),
            ["a", "proxy_on_memory_allocate"]
        );
        assert!(!out.with_extension("wasm.tmp").exists());
    }
}
