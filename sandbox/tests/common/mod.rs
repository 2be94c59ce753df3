//! Helpers shared by the sandbox's integration tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use sandbox::sim::server::PodServer;

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("invariant: the sandbox crate lives in the workspace")
        .to_path_buf()
}

/// kubectl 1.37 from `cargo xtask setup` (`KUBECTL_BIN` overrides `.venv/bin/kubectl`).
pub fn kubectl_bin() -> Result<PathBuf> {
    let path = std::env::var_os("KUBECTL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".venv/bin/kubectl"));
    ensure!(
        path.is_file(),
        "no kubectl at {} (KUBECTL_BIN): run `cargo xtask setup`",
        path.display()
    );
    Ok(path)
}

/// A seed scenario: `../shared/scenarios/<name>`, or the controller's byte-checked copy where
/// `../shared` is absent.
pub fn scenario(name: &str) -> Result<String> {
    let shared = workspace().join("../shared/scenarios").join(name);
    let path = if shared.is_file() {
        shared
    } else {
        workspace().join("controller/tests/fixtures").join(name)
    };
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// A real HTTP server answering every request 200 with a fixed body: the simulator's pod
/// server, started by hand. Stops on drop.
pub struct Backend {
    server: PodServer,
    pub addr: std::net::SocketAddr,
}

impl Backend {
    pub async fn start(body: &'static str) -> Result<Self> {
        let server = PodServer::start(body, body.to_owned(), None).await?;
        Ok(Self {
            addr: server.addr(),
            server,
        })
    }
}
