//! The per-request context: decide on request headers, annotate the response, count on log.

use std::rc::Rc;
use std::time::SystemTime;

use canary_core::{RuleId, Version};
use log::debug;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType, Status};

use crate::request::{request_header, HostRequest, HostRouteKeys};
use crate::root::Generation;

pub(crate) struct CanaryHttp {
    generation: Option<Rc<Generation>>,
    /// Set once the request matched a rule and was decided.
    decided: Option<Decided>,
}

struct Decided {
    rule: RuleId,
    version: Version,
    started: Option<SystemTime>,
    /// `Set-Cookie` value for an anonymous request's new bucket.
    set_cookie: Option<String>,
    status: Option<u32>,
}

impl CanaryHttp {
    pub(crate) fn new(generation: Option<Rc<Generation>>) -> Self {
        Self {
            generation,
            decided: None,
        }
    }
}

impl Context for CanaryHttp {}

impl HttpContext for CanaryHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(generation) = self.generation.clone() else {
            return Action::Continue;
        };
        let router = &generation.router;
        if router.is_empty() {
            return Action::Continue;
        }

        let route_keys = HostRouteKeys::read(router);
        let rule_id = router.select(route_keys.keys());
        // Read what the decision needs before stripping: the override headers are managed too.
        let rule = rule_id.map(|id| (id, router.rule(id)));
        let request = rule.map(|(_, rule)| HostRequest::read(rule));

        let mut headers_changed = false;
        for header in router.managed_headers() {
            if request_header(header).is_some() {
                let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, header, None);
                headers_changed = true;
            }
        }

        if let (Some((id, rule)), Some(request)) = (rule, request) {
            let decision = rule.decide(&request, fastrand::u64(..));
            debug!(
                "higress-canary: {} -> {} ({})",
                rule.rollout(),
                decision.version,
                decision.reason
            );
            if decision.version == Version::Canary {
                let _ = hostcalls::set_map_value(
                    MapType::HttpRequestHeaders,
                    rule.tag_header(),
                    Some(rule.tag_value()),
                );
                headers_changed = true;
            }
            if let Some(metrics) = generation.metrics.get(id.index()) {
                metrics.count_request(decision.version);
            }
            self.decided = Some(Decided {
                rule: id,
                version: decision.version,
                started: hostcalls::get_current_time().ok(),
                set_cookie: decision
                    .issue_bucket_cookie
                    .and_then(|b| rule.bucket_cookie(b)),
                status: None,
            });
        }

        if headers_changed {
            clear_route_cache();
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let (Some(generation), Some(decided)) = (&self.generation, &mut self.decided) else {
            return Action::Continue;
        };
        decided.status = hostcalls::get_map_value(MapType::HttpResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|s| s.parse().ok());
        let rule = generation.router.rule(decided.rule);
        if let Some(header) = rule.version_header() {
            let _ = hostcalls::set_map_value(
                MapType::HttpResponseHeaders,
                header,
                Some(decided.version.as_str()),
            );
        }
        if let Some(cookie) = decided.set_cookie.take() {
            let _ = hostcalls::add_map_value(MapType::HttpResponseHeaders, "set-cookie", &cookie);
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        let (Some(generation), Some(decided)) = (&self.generation, &self.decided) else {
            return;
        };
        if let Some(metrics) = generation.metrics.get(decided.rule.index()) {
            let latency = decided.started.and_then(|start| {
                let now = hostcalls::get_current_time().ok()?;
                now.duration_since(start).ok()
            });
            metrics.count_response(decided.version, decided.status, latency);
        }
    }
}

/// Makes Envoy re-match the route after a header change. Envoy also does this by itself for
/// ABI 0.2.1 modules today, but upstream has made that automatic refresh conditional; hosts
/// without the foreign function answer NotFound, which is fine.
fn clear_route_cache() {
    match hostcalls::call_foreign_function("clear_route_cache", None) {
        Ok(_) | Err(Status::NotFound) => {}
        Err(status) => debug!("higress-canary: clear_route_cache failed: {status:?}"),
    }
}
