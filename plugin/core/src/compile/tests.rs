use wasm_bindgen_test::wasm_bindgen_test;

use super::*;
use crate::testing::{one_rule, rejection, router};

fn keys<'a>(
    route: Option<&'a str>,
    authority: Option<&'a str>,
    cluster: Option<&'a str>,
) -> RouteKeys<'a> {
    RouteKeys {
        route_name: route,
        authority,
        cluster_name: cluster,
    }
}

fn rollout_of(router: &Router, keys: RouteKeys<'_>) -> Option<String> {
    router
        .select(keys)
        .map(|id| router.rule(id).rollout().to_owned())
}

const MIXED: &str = r#"{"_rules_":[
    {"_match_domain_":["shop.example.com"],"rollout":"ns/by-exact-domain","tagValue":"a"},
    {"_match_route_":["default/demo","default/demo-canary"],"rollout":"ns/by-route","tagValue":"b"},
    {"_match_domain_":["*.example.com"],"rollout":"ns/by-suffix","tagValue":"c"},
    {"_match_domain_":["api*"],"rollout":"ns/by-prefix","tagValue":"d"},
    {"_match_service_":["demo.default.svc.cluster.local:80"],"rollout":"ns/by-service-port","tagValue":"e"},
    {"_match_service_":["other.default.svc.cluster.local"],"rollout":"ns/by-service","tagValue":"f"}
]}"#;

#[wasm_bindgen_test(unsupported = test)]
fn rule_selection_follows_higress_semantics() {
    let router = router(MIXED);
    let cases: &[(RouteKeys<'_>, Option<&str>)] = &[
        (keys(Some("default/demo"), None, None), Some("ns/by-route")),
        (
            keys(Some("default/demo-canary"), None, None),
            Some("ns/by-route"),
        ),
        (keys(Some("default/other"), None, None), None),
        (
            keys(None, Some("shop.example.com"), None),
            Some("ns/by-exact-domain"),
        ),
        (
            keys(None, Some("shop.example.com:8080"), None),
            Some("ns/by-exact-domain"),
        ),
        (
            keys(None, Some("SHOP.Example.com"), None),
            Some("ns/by-exact-domain"),
        ),
        (
            keys(None, Some("www.example.com"), None),
            Some("ns/by-suffix"),
        ),
        (keys(None, Some("example.com"), None), None),
        (keys(None, Some("api.internal"), None), Some("ns/by-prefix")),
        (keys(None, Some("[::1]:80"), None), None),
        (
            keys(
                None,
                None,
                Some("outbound|80||demo.default.svc.cluster.local"),
            ),
            Some("ns/by-service-port"),
        ),
        (
            keys(
                None,
                None,
                Some("outbound|8080||demo.default.svc.cluster.local"),
            ),
            None,
        ),
        (
            keys(
                None,
                None,
                Some("outbound|80|v1|other.default.svc.cluster.local"),
            ),
            Some("ns/by-service"),
        ),
        (keys(None, None, Some("not-an-istio-cluster")), None),
        (keys(None, None, None), None),
        // First match wins in rule order, across kinds of match.
        (
            keys(Some("default/demo"), Some("shop.example.com"), None),
            Some("ns/by-exact-domain"),
        ),
        (
            keys(Some("default/demo"), Some("www.example.com"), None),
            Some("ns/by-route"),
        ),
        (
            keys(Some("default/other"), Some("api.example.com"), None),
            Some("ns/by-suffix"),
        ),
    ];
    for (k, expected) in cases {
        assert_eq!(rollout_of(&router, *k).as_deref(), *expected, "{k:?}");
    }
}

#[wasm_bindgen_test(unsupported = test)]
fn global_rule_catches_what_no_entry_matches() {
    let router = router(
        r#"{"rollout":"ns/global","tagValue":"g","_rules_":[{"_match_route_":["a"],"rollout":"ns/a","tagValue":"a"}]}"#,
    );
    assert_eq!(
        rollout_of(&router, keys(Some("a"), None, None)).as_deref(),
        Some("ns/a")
    );
    assert_eq!(
        rollout_of(&router, keys(Some("b"), None, None)).as_deref(),
        Some("ns/global")
    );
    assert_eq!(
        rollout_of(&router, keys(None, None, None)).as_deref(),
        Some("ns/global")
    );
}

#[wasm_bindgen_test(unsupported = test)]
fn router_reports_which_route_keys_it_needs() {
    let by_route = router(&one_rule(""));
    assert!(
        by_route.needs_route_name()
            && !by_route.needs_authority()
            && !by_route.needs_cluster_name()
    );
    let mixed = router(MIXED);
    assert!(mixed.needs_route_name() && mixed.needs_authority() && mixed.needs_cluster_name());
    let empty = router("{}");
    assert!(empty.is_empty() && !empty.needs_route_name() && empty.managed_headers().is_empty());
}

#[wasm_bindgen_test(unsupported = test)]
fn managed_headers_cover_every_tag_and_override_header_once() {
    let router = router(
        r#"{"_rules_":[
        {"_match_route_":["a"],"rollout":"ns/a","tagValue":"a","override":{"secret":"x"}},
        {"_match_route_":["b"],"rollout":"ns/b","tagValue":"b","tagHeader":"X-Other-Tag","override":{}},
        {"_match_route_":["c"],"rollout":"ns/c","tagValue":"c"}]}"#,
    );
    assert_eq!(
        router.managed_headers(),
        [
            "x-higress-canary",
            "x-canary-override",
            "x-canary-override-secret",
            "x-other-tag"
        ]
    );
}

#[wasm_bindgen_test(unsupported = test)]
fn rule_reads_only_the_headers_it_needs() {
    let plain = router(&one_rule(r#""weight":10"#));
    let rule = plain.rule(
        plain
            .select(keys(Some("default/demo"), None, None))
            .unwrap(),
    );
    assert!(rule.request_headers().is_empty());
    assert!(!rule.needs_path());

    let busy = router(&one_rule(
        r#""matches":[{"headers":[{"name":"User-Agent","value":"android"}],"cookies":[{"name":"b","value":"1"}]},
                      {"queryParams":[{"name":"q","value":"1"}]}],
           "sticky":{"header":"x-user-id","cookie":"uid"},"override":{"secret":"s"}"#,
    ));
    let rule = busy.rule(busy.select(keys(Some("default/demo"), None, None)).unwrap());
    assert_eq!(
        rule.request_headers(),
        [
            "user-agent",
            "cookie",
            "x-user-id",
            "x-canary-override",
            "x-canary-override-secret"
        ]
    );
    assert!(rule.needs_path());
}

#[wasm_bindgen_test(unsupported = test)]
fn invalid_configs_are_rejected_naming_the_field() {
    let rules = |body: &str| format!(r#"{{"_rules_":[{body}]}}"#);
    let cases: Vec<(String, &str, &str)> = vec![
        (rules(r#"{"rollout":"r","tagValue":"v"}"#), "_rules_[0]", "needs one of _match_route_"),
        (
            rules(r#"{"_match_route_":["a"],"_match_domain_":["b"],"rollout":"r","tagValue":"v"}"#),
            "_rules_[0]",
            "exactly one of",
        ),
        (
            rules(r#"{"_match_route_":["a"],"rollout":"r","tagValue":"v"},{"_match_route_":["b","a"],"rollout":"s","tagValue":"v"}"#),
            "_rules_[1]._match_route_[1]",
            "already matched by _rules_[0]",
        ),
        (
            rules(r#"{"_match_domain_":["*.x.com"],"rollout":"r","tagValue":"v"},{"_match_domain_":["*.X.com"],"rollout":"s","tagValue":"v"}"#),
            "_rules_[1]._match_domain_[0]",
            "already matched by _rules_[0]",
        ),
        (
            rules(r#"{"_match_route_":["a"],"rollout":"r","tagValue":"v"},{"_match_route_":["b"],"rollout":"r","tagValue":"w"}"#),
            "_rules_[1].rollout",
            "already has a rule at _rules_[0]",
        ),
        (rules(r#"{"_match_route_":[""],"rollout":"r","tagValue":"v"}"#), "_rules_[0]._match_route_[0]", "must not be empty"),
        (rules(r#"{"_match_route_":["a"],"rollout":"","tagValue":"v"}"#), "_rules_[0].rollout", "must not be empty"),
        (rules(r#"{"_match_route_":["a"],"rollout":"r","tagValue":"always"}"#), "_rules_[0].tagValue", "always"),
        (rules(r#"{"_match_route_":["a"],"rollout":"r","tagValue":"v1|v2"}"#), "_rules_[0].tagValue", "letters, digits"),
        (rules(r#"{"_match_route_":["a"],"rollout":"r","tagValue":"v","tagHeader":"host"}"#), "_rules_[0].tagHeader", "reserved"),
        (rules(r#"{"_match_route_":["a"],"rollout":"r","tagValue":"v","tagHeader":"x canary"}"#), "_rules_[0].tagHeader", "not a valid HTTP header name"),
        (rules(r#"{"_match_route_":["a"],"rollout":"r","tagValue":"v","tagHeader":":path"}"#), "_rules_[0].tagHeader", "not a valid HTTP header name"),
        (
            rules(r#"{"_match_route_":["a"],"rollout":"r","tagValue":"v","matches":[{"headers":[{"name":"x","type":"RegularExpression","value":"(unclosed"}]}]}"#),
            "_rules_[0].matches[0].headers[0].value",
            "invalid regular expression",
        ),
        (
            rules(r#"{"_match_route_":["a"],"rollout":"r","tagValue":"v","matches":[{"headers":[{"name":"x","type":"RegularExpression","value":"\\w{1000}{1000}"}]}]}"#),
            "_rules_[0].matches[0].headers[0].value",
            "invalid regular expression",
        ),
        (
            rules(r#"{"_match_route_":["a"],"rollout":"r","tagValue":"v","matches":[{"path":{"type":"RegularExpression","value":"["}}]}"#),
            "_rules_[0].matches[0].path.value",
            "invalid regular expression",
        ),
        (
            rules(r#"{"_match_route_":["a"],"rollout":"r","tagValue":"v","matches":[{"headers":[{"name":"x","type":"Regex","value":"a"}]}]}"#),
            "_rules_[0].matches[0].headers[0].type",
            "unknown variant",
        ),
        (rules(r#"{"_match_route_":["a"],"rollout":"r","tagValue":"v","matches":[{}]}"#), "_rules_[0].matches[0]", "at least one of"),
        (
            rules(r#"{"_match_route_":["a"],"rollout":"r","tagValue":"v","matches":[{"headers":[{"name":"X-Higress-Canary","value":"v"}]}]}"#),
            "_rules_[0].matches[0].headers[0].name",
            "tag header",
        ),
        (
            rules(r#"{"_match_route_":["a"],"rollout":"r","tagValue":"v"},{"_match_route_":["b"],"rollout":"s","tagValue":"w","tagHeader":"x-other","sticky":{"header":"x-higress-canary"}}"#),
            "_rules_[1].sticky.header",
            "tag header",
        ),
        (
            rules(r#"{"_match_route_":["a"],"rollout":"r","tagValue":"v","override":{"header":"x-higress-canary"}}"#),
            "_rules_[0].override.header",
            "also a tag header",
        ),
        (
            rules(r#"{"_match_route_":["a"],"rollout":"r","tagValue":"v","override":{"secret":"s","secretHeader":"x-canary-override"}}"#),
            "_rules_[0].override.secretHeader",
            "its own header",
        ),
        (rules(r#"{"_match_route_":["a"],"rollout":"r","tagValue":"v","override":{"secret":""}}"#), "_rules_[0].override.secret", "must not be empty"),
        (rules(r#"{"_match_route_":["a"],"rollout":"r","tagValue":"v","sticky":{}}"#), "_rules_[0].sticky", "at least one of"),
        (
            rules(r#"{"_match_route_":["a"],"rollout":"r","tagValue":"v","sticky":{"bucketCookie":{"name":"a b"}}}"#),
            "_rules_[0].sticky.bucketCookie.name",
            "not a valid cookie name",
        ),
        (
            rules(r#"{"_match_route_":["a"],"rollout":"r","tagValue":"v","sticky":{"bucketCookie":{"name":"b","maxAgeSeconds":1.5}}}"#),
            "_rules_[0].sticky.bucketCookie.maxAgeSeconds",
            "whole number",
        ),
        (rules(r#"{"_match_route_":["a"],"rollout":"r","tagValue":"v","versionHeader":"content-length"}"#), "_rules_[0].versionHeader", "reserved"),
        (r#"{"_match_route_":["a"],"rollout":"g","tagValue":"v"}"#.to_owned(), "_match_route_", "top level"),
        (r#"{"rollout":"g","tagValue":"v","_rules_":[{"_match_route_":["a"],"rollout":"g","tagValue":"w"}]}"#.to_owned(), "rollout", "already has a rule at _rules_[0]"),
    ];
    for (json, path, message) in cases {
        let err = rejection(&json);
        assert_eq!(err.path(), path, "{json}\n-> {err}");
        assert!(
            err.to_string().contains(message),
            "{json}\n-> {err}\nexpected to mention {message:?}"
        );
        assert!(err.to_string().starts_with(path), "{err}");
    }
}

#[wasm_bindgen_test(unsupported = test)]
fn pseudo_headers_may_be_matched_but_not_written() {
    let router = router(&one_rule(
        r#""matches":[{"headers":[{"name":":authority","value":"beta.example.com"}]}]"#,
    ));
    let rule = router.rule(
        router
            .select(keys(Some("default/demo"), None, None))
            .unwrap(),
    );
    assert_eq!(rule.request_headers(), [":authority"]);
}

#[wasm_bindgen_test(unsupported = test)]
fn regex_patterns_over_the_length_limit_are_rejected() {
    let long = "a".repeat(crate::matcher::REGEX_MAX_PATTERN_LEN + 1);
    let err = rejection(&one_rule(&format!(
        r#""matches":[{{"headers":[{{"name":"x","type":"RegularExpression","value":"{long}"}}]}}]"#
    )));
    assert_eq!(err.path(), "_rules_[0].matches[0].headers[0].value");
    assert!(err.to_string().contains("the limit is"), "{err}");
}

#[wasm_bindgen_test(unsupported = test)]
fn route_lookup_is_indexed_for_a_thousand_rules() {
    let entries: Vec<String> = (0..1000)
        .map(|i| {
            format!(r#"{{"_match_route_":["ns/app-{i}"],"rollout":"ns/r-{i}","tagValue":"v{i}"}}"#)
        })
        .collect();
    let router = router(&format!(r#"{{"_rules_":[{}]}}"#, entries.join(",")));
    assert_eq!(
        rollout_of(&router, keys(Some("ns/app-999"), None, None)).as_deref(),
        Some("ns/r-999")
    );
    assert_eq!(
        rollout_of(&router, keys(Some("ns/app-0"), None, None)).as_deref(),
        Some("ns/r-0")
    );
    assert_eq!(router.managed_headers(), ["x-higress-canary"]);
}
