//! The pure routing core of the higress-canary plugin.
//!
//! It owns three things:
//! - [`config`]: the plugin's wire schema, exactly the JSON Higress hands to a Wasm plugin
//!   (`defaultConfig` keys at the top level plus a `_rules_` array). The controller serializes
//!   these same types, so the schema has a single definition.
//! - [`compile`]: validation of that JSON into a [`Router`] whose regexes, indexes and header
//!   lists are all built once, at config time.
//! - [`decision`]: the per-request decision, a pure function of the request's headers and a
//!   random number the caller supplies.
//!
//! This crate must not depend on proxy-wasm, a clock, an RNG or a logger: it runs natively, in
//! the filter's Wasm VM, in the controller and under `wasm-bindgen-test`, and explains itself
//! through return values (`Decision::reason`, `ConfigError`) instead of log lines.
#![forbid(unsafe_code)]

pub mod compile;
pub mod config;
pub mod decision;
mod error;
mod matcher;

pub use compile::{RouteKeys, Router, Rule, RuleId};
pub use config::{PluginConfig, RuleConfig, Weight};
pub use decision::{Bucket, BucketSource, Decision, Reason, Request, Version};
pub use error::ConfigError;

#[cfg(test)]
mod testing;
