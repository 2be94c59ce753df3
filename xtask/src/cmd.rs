//! Running commands: spelled out in logs and errors, failing with the command's name.

use std::{
    env,
    ffi::{OsStr, OsString},
    io,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};

/// `cargo`, the one running us when there is one, in `root`.
pub fn cargo(root: &Path) -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo")));
    cmd.current_dir(root);
    cmd
}

/// `program arg arg…`, for logs and errors.
pub fn describe(cmd: &Command) -> String {
    let program = Path::new(cmd.get_program());
    // `$CARGO` is an absolute toolchain path; its file name is what a reader wants.
    let program = if program.file_name() == Some(OsStr::new("cargo")) {
        OsStr::new("cargo")
    } else {
        program.as_os_str()
    };
    std::iter::once(program)
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` with inherited stdout/stderr and fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("could not run `{}`", describe(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(cmd));
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout (and stderr, which some tools print versions on) if it
/// exits 0; `Ok(None)` if the program does not exist or fails. For probing what is installed.
pub fn probe(cmd: &mut Command) -> Result<Option<String>> {
    match cmd.stdin(Stdio::null()).output() {
        Ok(out) if out.status.success() => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            Ok(Some(text))
        }
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("could not run `{}`", describe(cmd))),
    }
}

/// The first executable file named `name` on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Seconds since `start`, for step lines.
pub fn elapsed(start: Instant) -> String {
    format!("{:.1}s", start.elapsed().as_secs_f64())
}
