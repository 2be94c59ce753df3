//! The controller's API requests, from the sandbox API server's request log.

use std::collections::BTreeMap;

use sandbox::api::RequestRecord;

/// Counts of one window of the controller's requests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestStats {
    pub total: usize,
    /// By Kubernetes verb (`get`, `list`, `watch`, `patch`, …).
    pub by_verb: BTreeMap<String, usize>,
    /// By `verb resource[/subresource]`, e.g. `update rollouts/status`.
    pub by_kind: BTreeMap<String, usize>,
    /// Answers ≥ 400 or dropped connections, by `verb resource[/subresource] status`; reads
    /// of absent objects are counted apart.
    pub failed: BTreeMap<String, usize>,
    /// `get`s answered 404: the controller reads the canary objects before they exist.
    pub not_found_reads: usize,
}

impl RequestStats {
    pub fn of(records: &[RequestRecord]) -> Self {
        let mut stats = RequestStats {
            total: records.len(),
            ..RequestStats::default()
        };
        for r in records {
            *stats.by_verb.entry(r.verb.clone()).or_default() += 1;
            let what = if r.subresource.is_empty() {
                format!("{} {}", r.verb, r.resource)
            } else {
                format!("{} {}/{}", r.verb, r.resource, r.subresource)
            };
            // A watch that ends is answered 200 up front; 0 is a connection the server dropped.
            if r.verb == "get" && r.status == 404 {
                stats.not_found_reads += 1;
            } else if r.status >= 400 || r.status == 0 {
                *stats
                    .failed
                    .entry(format!("{what} → {}", r.status))
                    .or_default() += 1;
            }
            *stats.by_kind.entry(what).or_default() += 1;
        }
        stats
    }

    pub fn failed_total(&self) -> usize {
        self.failed.values().sum()
    }

    /// `get 10, list 2, …` in descending order of count.
    pub fn verbs_text(&self) -> String {
        top(&self.by_verb, usize::MAX)
    }

    /// The `n` most frequent kinds of request.
    pub fn kinds_text(&self, n: usize) -> String {
        top(&self.by_kind, n)
    }

    pub fn failed_text(&self) -> String {
        if self.failed.is_empty() {
            "none".to_owned()
        } else {
            top(&self.failed, usize::MAX)
        }
    }
}

fn top(counts: &BTreeMap<String, usize>, n: usize) -> String {
    let mut entries: Vec<(&String, &usize)> = counts.iter().collect();
    entries.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    entries
        .into_iter()
        .take(n)
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn record(
        verb: &str,
        resource: &str,
        subresource: &str,
        status: u16,
    ) -> RequestRecord {
        RequestRecord {
            method: "GET".into(),
            path: "/".into(),
            query: String::new(),
            params: Vec::new(),
            verb: verb.into(),
            group: String::new(),
            resource: resource.into(),
            namespace: None,
            name: None,
            subresource: subresource.into(),
            content_type: None,
            accept: None,
            user_agent: None,
            body: String::new(),
            status,
        }
    }

    #[test]
    fn requests_are_counted_by_verb_kind_and_failure() {
        let stats = RequestStats::of(&[
            record("get", "rollouts", "", 200),
            record("get", "rollouts", "", 200),
            record("update", "rollouts", "status", 409),
            record("patch", "wasmplugins", "", 0),
            record("get", "services", "", 404),
        ]);
        assert_eq!(stats.total, 5);
        assert_eq!(stats.not_found_reads, 1);
        assert_eq!(stats.by_verb["get"], 3);
        assert_eq!(stats.by_kind["update rollouts/status"], 1);
        assert_eq!(stats.failed_total(), 2);
        assert_eq!(stats.failed["update rollouts/status → 409"], 1);
        assert_eq!(stats.verbs_text(), "get 3, patch 1, update 1");
        assert_eq!(stats.kinds_text(1), "get rollouts 2");
    }
}
