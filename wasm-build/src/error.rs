use std::{
    io,
    path::{Path, PathBuf},
    process::ExitStatus,
};

/// Everything that can go wrong while building or packaging.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed ({status}){}", stderr_suffix(.stderr))]
    Command {
        command: String,
        status: ExitStatus,
        /// The tail of the command's stderr when it was captured rather than shown.
        stderr: String,
    },
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` printed output that is not the expected JSON: {source}")]
    Json {
        command: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("`cargo build -p {package}` succeeded but reported no .wasm file; is it a cdylib?")]
    NoWasmArtifact { package: String },
    #[error("package `{package}` is not in the workspace")]
    UnknownPackage { package: String },
    #[error("{} is not a WebAssembly module: {reason}", .path.display())]
    NotWasm { path: PathBuf, reason: String },
    #[error("invalid image reference `{reference}`: {reason}")]
    ImageRef {
        reference: String,
        reason: &'static str,
    },
    #[error("{} is not a valid OCI image layout: {reason}", .dir.display())]
    InvalidLayout { dir: PathBuf, reason: String },
    #[error(
        "wasm-opt output differs from its input in {what}: before {before:?}, after {after:?}"
    )]
    OptimisedModuleChanged {
        what: &'static str,
        before: Vec<String>,
        after: Vec<String>,
    },
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.trim().is_empty() {
        String::new()
    } else {
        format!(": {}", stderr.trim())
    }
}
