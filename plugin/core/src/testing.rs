//! Helpers shared by the table tests.

use crate::{Request, Router};

/// A request built from literal headers; header names are lowercased like the host does.
#[derive(Debug, Default, Clone)]
pub(crate) struct TestRequest {
    headers: Vec<(String, String)>,
    path: Option<String>,
}

impl TestRequest {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_owned()));
        self
    }

    pub(crate) fn path(mut self, path: &str) -> Self {
        self.path = Some(path.to_owned());
        self
    }
}

impl Request for TestRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }
}

/// A router from JSON, panicking with the config error if the test's config is wrong.
pub(crate) fn router(json: &str) -> Router {
    match Router::from_json(json.as_bytes()) {
        Ok(router) => router,
        Err(e) => panic!("test config rejected: {e}"),
    }
}

/// The error for a config that must be rejected.
pub(crate) fn rejection(json: &str) -> crate::ConfigError {
    match Router::from_json(json.as_bytes()) {
        Ok(_) => panic!("config was accepted but must be rejected: {json}"),
        Err(e) => e,
    }
}

/// A one-rule config on route `default/demo` with extra rule fields spliced in.
pub(crate) fn one_rule(extra: &str) -> String {
    let sep = if extra.is_empty() { "" } else { "," };
    format!(
        r#"{{"_rules_":[{{"_match_route_":["default/demo","default/demo-canary"],
            "rollout":"default/rollouts-demo","tagValue":"demo-v2"{sep}{extra}}}]}}"#
    )
}
