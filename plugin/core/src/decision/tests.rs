use wasm_bindgen_test::wasm_bindgen_test;

use super::*;
use crate::testing::{one_rule, router, TestRequest};
use crate::{RouteKeys, Router};

fn the_rule(router: &Router) -> &Rule {
    let keys = RouteKeys {
        route_name: Some("default/demo"),
        ..RouteKeys::default()
    };
    router.rule(
        router
            .select(keys)
            .expect("the test rule matches default/demo"),
    )
}

fn version(extra: &str, request: &TestRequest, random: u64) -> Version {
    let router = router(&one_rule(extra));
    the_rule(&router).decide(request, random).version
}

#[wasm_bindgen_test(unsupported = test)]
fn weight_splits_buckets_at_the_boundary() {
    use Version::*;
    // (weight in percent, random draw, expected)
    let cases: &[(&str, u64, Version)] = &[
        ("0", 0, Stable),
        ("0", 9999, Stable),
        ("0.01", 0, Canary),
        ("0.01", 1, Stable),
        ("10", 0, Canary),
        ("10", 999, Canary),
        ("10", 1000, Stable),
        ("10", 9999, Stable),
        ("10", 10_000 + 999, Canary),
        ("30", 2999, Canary),
        ("30", 3000, Stable),
        ("99.99", 9998, Canary),
        ("99.99", 9999, Stable),
        ("100", 9999, Canary),
        ("100", u64::MAX, Canary),
    ];
    for (weight, random, expected) in cases {
        let got = version(
            &format!(r#""weight":{weight}"#),
            &TestRequest::new(),
            *random,
        );
        assert_eq!(got, *expected, "weight {weight}, random {random}");
    }
}

#[wasm_bindgen_test(unsupported = test)]
fn every_match_type_is_honoured() {
    use Version::*;
    let req = TestRequest::new;
    let group = |json: &str| format!(r#""matches":[{json}]"#);
    let cases: Vec<(String, TestRequest, Version)> = vec![
        (
            group(r#"{"headers":[{"name":"user-agent","value":"android"}]}"#),
            req().header("user-agent", "android"),
            Canary,
        ),
        (
            group(r#"{"headers":[{"name":"user-agent","value":"android"}]}"#),
            req().header("user-agent", "Android"),
            Stable,
        ),
        (
            group(r#"{"headers":[{"name":"user-agent","value":"android"}]}"#),
            req().header("user-agent", "android 14"),
            Stable,
        ),
        (
            group(r#"{"headers":[{"name":"user-agent","value":"android"}]}"#),
            req(),
            Stable,
        ),
        (
            group(
                r#"{"headers":[{"name":"User-Agent","type":"Prefix","value":"Mozilla/5.0 (Linux; Android"}]}"#,
            ),
            req().header("user-agent", "Mozilla/5.0 (Linux; Android 14)"),
            Canary,
        ),
        (
            group(r#"{"headers":[{"name":"user-agent","type":"Prefix","value":"Mozilla"}]}"#),
            req().header("user-agent", "curl/8"),
            Stable,
        ),
        (
            group(
                r#"{"headers":[{"name":"user-agent","type":"RegularExpression","value":".*(?i)android.*"}]}"#,
            ),
            req().header("user-agent", "x ANDROID y"),
            Canary,
        ),
        // Regexes are anchored: a partial match is not a match.
        (
            group(
                r#"{"headers":[{"name":"user-agent","type":"RegularExpression","value":"android"}]}"#,
            ),
            req().header("user-agent", "my android"),
            Stable,
        ),
        (
            group(
                r#"{"headers":[{"name":"x-region","type":"RegularExpression","value":"eu|us"}]}"#,
            ),
            req().header("x-region", "us"),
            Canary,
        ),
        (
            group(
                r#"{"headers":[{"name":"x-region","type":"RegularExpression","value":"eu|us"}]}"#,
            ),
            req().header("x-region", "usa"),
            Stable,
        ),
        (
            group(r#"{"cookies":[{"name":"beta","value":"1"}]}"#),
            req().header("cookie", "a=b; beta=1; c=d"),
            Canary,
        ),
        (
            group(r#"{"cookies":[{"name":"beta","value":"1"}]}"#),
            req().header("cookie", "beta=\"1\""),
            Canary,
        ),
        (
            group(r#"{"cookies":[{"name":"beta","value":"1"}]}"#),
            req().header("cookie", "xbeta=1"),
            Stable,
        ),
        (
            group(r#"{"cookies":[{"name":"beta","value":"1"}]}"#),
            req().header("cookie", "beta=10"),
            Stable,
        ),
        (
            group(r#"{"cookies":[{"name":"beta","type":"Prefix","value":"1"}]}"#),
            req().header("cookie", "beta=10"),
            Canary,
        ),
        (
            group(r#"{"cookies":[{"name":"beta","value":"1"}]}"#),
            req(),
            Stable,
        ),
        (
            group(r#"{"queryParams":[{"name":"canary","value":"true"}]}"#),
            req().path("/version?a=1&canary=true"),
            Canary,
        ),
        (
            group(r#"{"queryParams":[{"name":"canary","value":"true"}]}"#),
            req().path("/version?canary=false"),
            Stable,
        ),
        (
            group(r#"{"queryParams":[{"name":"canary","value":"true"}]}"#),
            req().path("/version"),
            Stable,
        ),
        (
            group(r#"{"queryParams":[{"name":"who","value":"a b/c"}]}"#),
            req().path("/?who=a+b%2Fc"),
            Canary,
        ),
        (
            group(r#"{"queryParams":[{"name":"v","type":"RegularExpression","value":"[0-9]+"}]}"#),
            req().path("/?v=42#frag"),
            Canary,
        ),
        (
            group(r#"{"path":{"value":"/version"}}"#),
            req().path("/version?x=1"),
            Canary,
        ),
        (
            group(r#"{"path":{"value":"/version"}}"#),
            req().path("/version/2"),
            Stable,
        ),
        (
            group(r#"{"path":{"type":"Prefix","value":"/api/"}}"#),
            req().path("/api/v2/users"),
            Canary,
        ),
        (
            group(r#"{"path":{"type":"Prefix","value":"/api/"}}"#),
            req().path("/apix"),
            Stable,
        ),
        (
            group(r#"{"path":{"type":"RegularExpression","value":"/users/[0-9]+"}}"#),
            req().path("/users/17"),
            Canary,
        ),
        (
            group(r#"{"path":{"type":"RegularExpression","value":"/users/[0-9]+"}}"#),
            req().path("/users/17/edit"),
            Stable,
        ),
        (
            group(r#"{"headers":[{"name":":authority","value":"beta.example.com"}]}"#),
            req().header(":authority", "beta.example.com"),
            Canary,
        ),
        // AND inside a group.
        (
            group(
                r#"{"headers":[{"name":"user-agent","value":"android"}],"cookies":[{"name":"beta","value":"1"}]}"#,
            ),
            req().header("user-agent", "android"),
            Stable,
        ),
        (
            group(
                r#"{"headers":[{"name":"user-agent","value":"android"}],"cookies":[{"name":"beta","value":"1"}]}"#,
            ),
            req()
                .header("user-agent", "android")
                .header("cookie", "beta=1"),
            Canary,
        ),
        (
            group(r#"{"headers":[{"name":"a","value":"1"},{"name":"b","value":"2"}]}"#),
            req().header("a", "1").header("b", "3"),
            Stable,
        ),
        (
            group(r#"{"path":{"value":"/x"},"queryParams":[{"name":"q","value":"1"}]}"#),
            req().path("/x?q=1"),
            Canary,
        ),
        (
            group(r#"{"path":{"value":"/x"},"queryParams":[{"name":"q","value":"1"}]}"#),
            req().path("/y?q=1"),
            Stable,
        ),
        // OR across groups.
        (
            group(
                r#"{"headers":[{"name":"a","value":"1"}]},{"headers":[{"name":"b","value":"2"}]}"#,
            ),
            req().header("b", "2"),
            Canary,
        ),
        (
            group(
                r#"{"headers":[{"name":"a","value":"1"}]},{"headers":[{"name":"b","value":"2"}]}"#,
            ),
            req().header("a", "2"),
            Stable,
        ),
    ];
    for (extra, request, expected) in cases {
        // Weight 0: only the matches can send a request to the canary.
        assert_eq!(
            version(&extra, &request, 0),
            expected,
            "{extra} with {request:?}"
        );
    }
}

#[wasm_bindgen_test(unsupported = test)]
fn matches_report_which_group_matched() {
    let router = router(&one_rule(
        r#""weight":50,"matches":[{"headers":[{"name":"a","value":"1"}]},{"headers":[{"name":"b","value":"2"}]}]"#,
    ));
    let d = the_rule(&router).decide(&TestRequest::new().header("b", "2"), 9999);
    assert_eq!(
        d,
        Decision {
            version: Version::Canary,
            reason: Reason::Match(1),
            issue_bucket_cookie: None
        }
    );
}

#[wasm_bindgen_test(unsupported = test)]
fn sticky_key_gives_the_same_version_whatever_the_draw() {
    let router = router(&one_rule(
        r#""weight":30,"sticky":{"header":"x-user-id","cookie":"uid"}"#,
    ));
    let rule = the_rule(&router);
    for user in 0..200 {
        let id = format!("user-{user}");
        let by_header = TestRequest::new().header("x-user-id", &id);
        let by_cookie = TestRequest::new().header("cookie", &format!("theme=dark; uid={id}"));
        let first = rule.decide(&by_header, 0);
        for random in [1, 4242, 9999, u64::MAX] {
            assert_eq!(
                rule.decide(&by_header, random).version,
                first.version,
                "{id}"
            );
            assert_eq!(
                rule.decide(&by_cookie, random).version,
                first.version,
                "{id} by cookie"
            );
        }
        assert!(matches!(
            first.reason,
            Reason::Weight {
                source: BucketSource::StickyHeader,
                ..
            }
        ));
        assert!(matches!(
            rule.decide(&by_cookie, 0).reason,
            Reason::Weight {
                source: BucketSource::StickyCookie,
                ..
            }
        ));
        assert_eq!(first.issue_bucket_cookie, None);
    }
}

#[wasm_bindgen_test(unsupported = test)]
fn sticky_users_on_the_canary_stay_there_as_the_weight_grows() {
    let weights = ["0", "1", "10", "12.5", "30", "50", "99.99", "100"];
    let routers: Vec<Router> = weights
        .iter()
        .map(|w| {
            router(&one_rule(&format!(
                r#""weight":{w},"sticky":{{"header":"x-user-id"}}"#
            )))
        })
        .collect();
    let users = 10_000;
    let mut canary_counts = vec![0u32; weights.len()];
    for user in 0..users {
        let request = TestRequest::new().header("x-user-id", &format!("{user}"));
        let mut was_canary = false;
        for (i, router) in routers.iter().enumerate() {
            let is_canary = the_rule(router).decide(&request, 0).version == Version::Canary;
            assert!(
                !was_canary || is_canary,
                "user {user} left the canary at weight {}",
                weights[i]
            );
            was_canary = is_canary;
            canary_counts[i] += u32::from(is_canary);
        }
    }
    // The hash spreads users evenly: each share is within 4 standard deviations of the weight.
    for (i, w) in weights.iter().enumerate() {
        let p: f64 = w.parse::<f64>().unwrap() / 100.0;
        let expected = p * f64::from(users);
        let bound = 4.0 * (f64::from(users) * p * (1.0 - p)).sqrt() + 1e-9;
        let got = f64::from(canary_counts[i]);
        assert!(
            (got - expected).abs() <= bound,
            "weight {w}: {got} users on canary, expected {expected} ± {bound}"
        );
    }
}

#[wasm_bindgen_test(unsupported = test)]
fn sticky_buckets_are_independent_between_rollouts() {
    // The same user must not be first on the canary of every release.
    let buckets: Vec<Bucket> = (0..20)
        .map(|salt| Bucket::from_key(salt, "user-1"))
        .collect();
    assert!(buckets.iter().any(|b| *b != buckets[0]), "{buckets:?}");
    assert_eq!(Bucket::from_key(7, "user-1"), Bucket::from_key(7, "user-1"));
}

#[wasm_bindgen_test(unsupported = test)]
fn anonymous_requests_get_a_bucket_cookie_only_while_the_release_is_split() {
    let sticky =
        r#""sticky":{"cookie":"uid","bucketCookie":{"name":"canary-bucket","maxAgeSeconds":600}}"#;
    let split = router(&one_rule(&format!(r#""weight":10,{sticky}"#)));
    let rule = the_rule(&split);
    let d = rule.decide(&TestRequest::new(), 12_345);
    assert_eq!(d.issue_bucket_cookie, Bucket::new(2345));
    assert_eq!(d.version, Version::Stable);
    assert_eq!(
        rule.bucket_cookie(d.issue_bucket_cookie.unwrap())
            .as_deref(),
        Some("canary-bucket=2345; Path=/; Max-Age=600; HttpOnly; SameSite=Lax")
    );

    // The cookie is honoured later, whatever the draw, and not issued again.
    let returning = TestRequest::new().header("cookie", "canary-bucket=5");
    for random in [0, 9999] {
        let d = rule.decide(&returning, random);
        assert_eq!(d.version, Version::Canary);
        assert_eq!(
            d.reason,
            Reason::Weight {
                bucket: Bucket::new(5).unwrap(),
                source: BucketSource::BucketCookie
            }
        );
        assert_eq!(d.issue_bucket_cookie, None);
    }

    // A user id beats the bucket cookie; a garbage bucket cookie is replaced.
    let both = TestRequest::new().header("cookie", "canary-bucket=5; uid=alice");
    assert!(matches!(
        rule.decide(&both, 0).reason,
        Reason::Weight {
            source: BucketSource::StickyCookie,
            ..
        }
    ));
    for garbage in [
        "canary-bucket=10000",
        "canary-bucket=-1",
        "canary-bucket=abc",
        "canary-bucket=",
    ] {
        let d = rule.decide(&TestRequest::new().header("cookie", garbage), 42);
        assert_eq!(d.issue_bucket_cookie, Bucket::new(42), "{garbage}");
    }

    for weight in ["0", "100"] {
        let whole = router(&one_rule(&format!(r#""weight":{weight},{sticky}"#)));
        assert_eq!(
            the_rule(&whole)
                .decide(&TestRequest::new(), 3)
                .issue_bucket_cookie,
            None,
            "weight {weight}"
        );
    }
    let no_cookie = router(&one_rule(r#""weight":10,"sticky":{"cookie":"uid"}"#));
    assert_eq!(
        the_rule(&no_cookie).bucket_cookie(Bucket::new(1).unwrap()),
        None
    );
    assert_eq!(
        the_rule(&no_cookie)
            .decide(&TestRequest::new(), 3)
            .issue_bucket_cookie,
        None
    );
}

#[wasm_bindgen_test(unsupported = test)]
fn override_forces_a_version_before_matches_and_weight() {
    use Version::*;
    let open = r#""weight":100,"matches":[{"headers":[{"name":"a","value":"1"}]}],"override":{}"#;
    let req = TestRequest::new;
    let cases: Vec<(TestRequest, Version, bool)> = vec![
        (req().header("x-canary-override", "stable"), Stable, true),
        (
            req().header("x-canary-override", "stable").header("a", "1"),
            Stable,
            true,
        ),
        (req().header("x-canary-override", "STABLE"), Stable, true),
        (req().header("x-canary-override", " canary "), Canary, true),
        (req().header("x-canary-override", "v2"), Canary, false),
        (req(), Canary, false),
    ];
    let router = router(&one_rule(open));
    for (request, expected, by_override) in cases {
        let d = the_rule(&router).decide(&request, 0);
        assert_eq!(d.version, expected, "{request:?}");
        assert_eq!(d.reason == Reason::Override, by_override, "{request:?}");
    }
}

#[wasm_bindgen_test(unsupported = test)]
fn override_with_a_secret_needs_the_exact_secret() {
    let router = router(&one_rule(
        r#""override":{"header":"x-force","secret":"s3cret","secretHeader":"x-force-key"}"#,
    ));
    let rule = the_rule(&router);
    let force = |key: Option<&str>| {
        let mut r = TestRequest::new().header("x-force", "canary");
        if let Some(key) = key {
            r = r.header("x-force-key", key);
        }
        rule.decide(&r, 9999).version
    };
    assert_eq!(force(Some("s3cret")), Version::Canary);
    assert_eq!(force(None), Version::Stable);
    assert_eq!(force(Some("s3cre")), Version::Stable);
    assert_eq!(force(Some("s3cret2")), Version::Stable);
    assert_eq!(force(Some("S3CRET")), Version::Stable);
    // The default override header is not the configured one.
    let default_header = TestRequest::new()
        .header("x-canary-override", "canary")
        .header("x-force-key", "s3cret");
    assert_eq!(rule.decide(&default_header, 9999).version, Version::Stable);
}

#[wasm_bindgen_test(unsupported = test)]
fn rules_without_an_override_ignore_override_headers() {
    let req = TestRequest::new().header("x-canary-override", "canary");
    assert_eq!(version(r#""weight":0"#, &req, 0), Version::Stable);
}

#[wasm_bindgen_test(unsupported = test)]
fn bucket_bounds_are_enforced() {
    assert_eq!(Bucket::new(9999).map(Bucket::get), Some(9999));
    assert_eq!(Bucket::new(10_000), None);
    assert_eq!(Bucket::from_random(20_001).get(), 1);
    assert_eq!(Version::Canary.as_str(), "canary");
    assert_eq!(
        Reason::Weight {
            bucket: Bucket(7),
            source: BucketSource::Random
        }
        .to_string(),
        "bucket 7 (Random)"
    );
}
