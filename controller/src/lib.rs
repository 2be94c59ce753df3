//! The Rollout controller and CLI for higress-canary.
//!
//! Placeholder: the controller (Kruise-compatible `Rollout` reconciliation that writes the shared
//! `WasmPlugin`) is built in its own issue. It will serialize `canary_core::config` types, the
//! plugin's wire schema, so both sides share one definition. It must not depend on proxy-wasm.

pub use canary_core::config;
