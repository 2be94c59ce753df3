//! The root context: turns each config Envoy delivers into a `Router` and hands it to the
//! requests that start afterwards.

use std::rc::Rc;

use canary_core::Router;
use log::{error, info};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType};

use crate::http::CanaryHttp;
use crate::metrics::{self, RuleMetrics};

/// What every request of one config generation shares.
pub(crate) struct Generation {
    pub(crate) router: Router,
    /// Indexed like `router.rules()`.
    pub(crate) metrics: Vec<RuleMetrics>,
}

#[derive(Default)]
pub(crate) struct CanaryRoot {
    /// `None` until a config is accepted; requests then pass untouched.
    generation: Option<Rc<Generation>>,
}

impl Context for CanaryRoot {}

impl RootContext for CanaryRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        // Follow the host's log level, so per-request debug lines cost nothing unless asked for.
        if let Ok(level) = hostcalls::get_log_level() {
            proxy_wasm::set_log_level(level);
        }
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(bytes) => bytes.unwrap_or_default(),
            Err(status) => {
                error!("higress-canary: cannot read the plugin configuration: {status:?}");
                return false;
            }
        };
        let router = match Router::from_json(&bytes) {
            Ok(router) => router,
            Err(e) => {
                // Returning false makes Envoy keep serving with the previous config.
                error!("higress-canary: config rejected: {e}");
                return false;
            }
        };
        let metrics = match router
            .rules()
            .map(|(_, rule)| RuleMetrics::define(rule))
            .collect()
        {
            Ok(metrics) => metrics,
            Err(status) => {
                error!("higress-canary: cannot define metrics: {status:?}");
                return false;
            }
        };
        info!(
            "higress-canary: config accepted: {} rule(s), {} managed header(s)",
            router.rules().count(),
            router.managed_headers().len()
        );
        self.generation = Some(Rc::new(Generation { router, metrics }));
        // Counts wait in the VM until the timer hands them to Envoy; see `metrics`.
        if let Err(status) = hostcalls::set_tick_period(metrics::FLUSH_PERIOD) {
            error!("higress-canary: cannot start the metrics timer: {status:?}");
            return false;
        }
        true
    }

    fn on_tick(&mut self) {
        metrics::flush();
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(CanaryHttp::new(self.generation.clone())))
    }
}
