//! Reading the host state a decision needs, and nothing more.

use std::cell::Cell;

use canary_core::{Request, RouteKeys, Router, Rule};
use proxy_wasm::hostcalls;
use proxy_wasm::types::MapType;

pub(crate) fn request_header(name: &str) -> Option<String> {
    hostcalls::get_map_value(MapType::HttpRequestHeaders, name)
        .ok()
        .flatten()
}

thread_local! {
    /// Whether this host answers properties only under `xds` (upstream Envoy) rather than at the
    /// top level (Higress). Learned from the first answer, so each read costs one host call.
    static XDS_FIRST: Cell<bool> = const { Cell::new(false) };
}

/// A property as UTF-8. Higress names it `route_name`; upstream Envoy answers only under `xds`.
fn property(name: &str) -> Option<String> {
    let top_level = || hostcalls::get_property(vec![name]).ok().flatten();
    let under_xds = || hostcalls::get_property(vec!["xds", name]).ok().flatten();
    let bytes = if XDS_FIRST.get() {
        under_xds().or_else(top_level)
    } else {
        top_level().or_else(|| {
            let bytes = under_xds()?;
            XDS_FIRST.set(true);
            Some(bytes)
        })
    }?;
    String::from_utf8(bytes).ok()
}

/// The route keys the router asked for, read from the host.
pub(crate) struct HostRouteKeys {
    route_name: Option<String>,
    authority: Option<String>,
    cluster_name: Option<String>,
}

impl HostRouteKeys {
    pub(crate) fn read(router: &Router) -> Self {
        Self {
            route_name: router
                .needs_route_name()
                .then(|| property("route_name"))
                .flatten(),
            authority: router
                .needs_authority()
                .then(|| request_header(":authority"))
                .flatten(),
            cluster_name: router
                .needs_cluster_name()
                .then(|| property("cluster_name"))
                .flatten(),
        }
    }

    pub(crate) fn keys(&self) -> RouteKeys<'_> {
        RouteKeys {
            route_name: self.route_name.as_deref(),
            authority: self.authority.as_deref(),
            cluster_name: self.cluster_name.as_deref(),
        }
    }
}

/// The headers one rule's decision reads, captured before anything is stripped.
pub(crate) struct HostRequest<'r> {
    headers: Vec<(&'r str, String)>,
    path: Option<String>,
}

impl<'r> HostRequest<'r> {
    pub(crate) fn read(rule: &'r Rule) -> Self {
        let headers = rule
            .request_headers()
            .iter()
            .filter_map(|name| Some((name.as_str(), request_header(name)?)))
            .collect();
        let path = if rule.needs_path() {
            request_header(":path")
        } else {
            None
        };
        Self { headers, path }
    }
}

impl Request for HostRequest<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }
}
