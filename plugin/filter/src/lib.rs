//! proxy-wasm glue for the higress-canary routing plugin; builds `plugin.wasm`.
//!
//! Each request: read the host state the config needs (route name, a few headers), ask
//! `canary_core` once, act on its [`canary_core::Decision`]: strip spoofed tags, set the canary
//! tag header, clear the route cache, and count the request per version. Every routing rule
//! lives in `canary_core`; this crate must stay a thin adapter over the proxy-wasm ABI 0.2.1 (no
//! Higress-only hostcalls, so the module loads in upstream Envoy too) and must never panic.

mod http;
mod metrics;
mod request;
mod root;

use proxy_wasm::traits::RootContext;
use proxy_wasm::types::LogLevel;

proxy_wasm::main! {{
    // Host calls are not allowed while the module initialises; the root context adopts the
    // host's log level once it is configured.
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(root::CanaryRoot::default()) });
}}
