//! Test controls: the request log and fault injection. (Closing watches, compaction and
//! writes by another actor are methods of [`super::ApiServer`].)

use std::{sync::Mutex, time::Duration};

use tokio::sync::watch;

/// One request as the server saw it, with the status it answered.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestRecord {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path without the query.
    pub path: String,
    /// The raw query string (may start with `&`, as kube sends it).
    pub query: String,
    /// Decoded query pairs.
    pub params: Vec<(String, String)>,
    /// The Kubernetes verb: `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection`; or `discovery`, `openapi`, `version`, `other`.
    pub verb: String,
    /// API group of the resource (empty for core).
    pub group: String,
    /// Plural resource name, empty when not a resource path.
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// `status`, `scale` or empty.
    pub subresource: String,
    pub content_type: Option<String>,
    pub accept: Option<String>,
    pub user_agent: Option<String>,
    /// The request body as text.
    pub body: String,
    /// The HTTP status answered (200 for a watch that started; 0 for a dropped connection).
    pub status: u16,
}

impl RequestRecord {
    /// The value of a query parameter.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `PATCH /apis/apps/v1/...?...` for messages.
    pub fn line(&self) -> String {
        if self.query.is_empty() {
            format!("{} {} -> {}", self.method, self.path, self.status)
        } else {
            format!(
                "{} {}?{} -> {}",
                self.method, self.path, self.query, self.status
            )
        }
    }
}

/// Which requests a fault applies to; `None` fields match anything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Matcher {
    pub verb: Option<String>,
    /// Plural resource name (`deployments`), optionally with its group (`deployments.apps`).
    pub resource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// `status`, `scale`, or `""` for the main resource.
    pub subresource: Option<String>,
}

impl Matcher {
    pub fn any() -> Self {
        Matcher::default()
    }

    /// Matches one verb (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`).
    pub fn verb(verb: &str) -> Self {
        Matcher {
            verb: Some(verb.to_string()),
            ..Matcher::default()
        }
    }

    pub fn resource(mut self, resource: &str) -> Self {
        self.resource = Some(resource.to_string());
        self
    }

    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = Some(namespace.to_string());
        self
    }

    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    pub fn subresource(mut self, subresource: &str) -> Self {
        self.subresource = Some(subresource.to_string());
        self
    }

    pub(crate) fn matches(&self, r: &RequestRecord) -> bool {
        let resource_ok = self
            .resource
            .as_deref()
            .is_none_or(|want| match want.split_once('.') {
                Some((plural, group)) => r.resource == plural && r.group == group,
                None => r.resource == want,
            });
        self.verb.as_deref().is_none_or(|v| v == r.verb)
            && resource_ok
            && self
                .namespace
                .as_deref()
                .is_none_or(|ns| r.namespace.as_deref() == Some(ns))
            && self
                .name
                .as_deref()
                .is_none_or(|n| r.name.as_deref() == Some(n))
            && self
                .subresource
                .as_deref()
                .is_none_or(|s| s == r.subresource)
    }
}

/// What an injected fault does.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultAction {
    /// Answer with this status code and a Status body whose reason fits the code
    /// (429 `TooManyRequests`, 500 `InternalError`, 503 `ServiceUnavailable`, 504 `Timeout`,
    /// 409 `Conflict`, ...). `retry_after` adds `details.retryAfterSeconds` and a
    /// `Retry-After` header.
    Status {
        code: u16,
        message: String,
        retry_after: Option<u64>,
    },
    /// Wait this long, then handle the request normally.
    Delay(Duration),
    /// Close the connection without answering.
    DropConnection,
}

/// An injected fault: a matcher, an action and how many times it fires.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub matcher: Matcher,
    pub action: FaultAction,
    /// `None`: every matching request until removed.
    pub times: Option<usize>,
}

impl Fault {
    /// A status-code fault with the apiserver's reason for that code.
    pub fn status(matcher: Matcher, code: u16) -> Self {
        Fault {
            matcher,
            action: FaultAction::Status {
                code,
                message: format!("injected fault: HTTP {code}"),
                retry_after: None,
            },
            times: None,
        }
    }

    pub fn delay(matcher: Matcher, delay: Duration) -> Self {
        Fault {
            matcher,
            action: FaultAction::Delay(delay),
            times: None,
        }
    }

    pub fn drop_connection(matcher: Matcher) -> Self {
        Fault {
            matcher,
            action: FaultAction::DropConnection,
            times: None,
        }
    }

    /// Fires only for the next `n` matching requests.
    pub fn times(mut self, n: usize) -> Self {
        self.times = Some(n);
        self
    }
}

/// Identifies an injected fault, to remove it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultId(pub(crate) u64);

pub(crate) struct Controls {
    pub requests: Mutex<Vec<RequestRecord>>,
    faults: Mutex<Vec<(FaultId, Fault)>>,
    next_fault: Mutex<u64>,
    pub close_watches: watch::Sender<u64>,
}

impl Controls {
    pub fn new() -> Self {
        Controls {
            requests: Mutex::new(Vec::new()),
            faults: Mutex::new(Vec::new()),
            next_fault: Mutex::new(0),
            close_watches: watch::channel(0).0,
        }
    }

    pub fn record(&self, r: RequestRecord) {
        self.requests
            .lock()
            .expect("invariant: request log lock not poisoned")
            .push(r);
    }

    pub fn inject(&self, fault: Fault) -> FaultId {
        let mut next = self
            .next_fault
            .lock()
            .expect("invariant: lock not poisoned");
        *next += 1;
        let id = FaultId(*next);
        self.faults
            .lock()
            .expect("invariant: fault lock not poisoned")
            .push((id, fault));
        id
    }

    pub fn remove(&self, id: FaultId) {
        self.faults
            .lock()
            .expect("invariant: fault lock not poisoned")
            .retain(|(i, _)| *i != id);
    }

    pub fn clear(&self) {
        self.faults
            .lock()
            .expect("invariant: fault lock not poisoned")
            .clear();
    }

    /// The first fault matching a request (consuming one of its `times`).
    pub fn take(&self, r: &RequestRecord) -> Option<FaultAction> {
        let mut faults = self
            .faults
            .lock()
            .expect("invariant: fault lock not poisoned");
        let i = faults.iter().position(|(_, f)| f.matcher.matches(r))?;
        let action = faults[i].1.action.clone();
        if let Some(times) = &mut faults[i].1.times {
            *times = times.saturating_sub(1);
            if *times == 0 {
                faults.remove(i);
            }
        }
        Some(action)
    }

    pub fn close_all_watches(&self) {
        self.close_watches.send_modify(|n| *n += 1);
    }
}
