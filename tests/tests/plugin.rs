//! The canary plugin in a real Envoy: who goes to the canary, and what the backends see.
//!
//! Each test starts its own Envoy and backends. Requests for the demo host first match the base
//! route (`default/demo` → v1); the plugin's tag header makes Envoy re-route them to the canary
//! route (`default/demo-canary` → v2), exactly as with Higress's canary Ingress.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, ensure, Context, Result};
use e2e::envoy::{BASE_ROUTE, CANARY_ROUTE, OTHER_HOST};
use e2e::fixture::{
    await_generation, await_version, demo_rule, plugin_config, run_load, with_generation, CANARY,
    OTHER, ROLLOUT, STABLE, TAG_HEADER, TAG_VALUE,
};
use e2e::wait::check_binomial;
use e2e::{Client, Deployment, Filter, Reply};
use serde_json::{json, Value};

/// Requests per weight in the accuracy test (spec: at least 10,000).
const WEIGHT_SAMPLE: u64 = 10_000;

fn rule_with(weight: f64, extra: Value) -> Value {
    let mut rule = demo_rule(weight);
    if let (Some(rule), Some(extra)) = (rule.as_object_mut(), extra.as_object()) {
        for (key, value) in extra {
            rule.insert(key.clone(), value.clone());
        }
    }
    rule
}

fn start(rules: &[Value]) -> Result<Deployment> {
    Deployment::start(&plugin_config(rules))
}

/// Fails unless `reply` came from `want`, with the tag header as the spec says: present with
/// the tag value on canary requests, absent on stable ones.
fn expect_routed(reply: &Reply, want: &str, what: &str) -> Result<()> {
    ensure!(
        reply.status == 200,
        "{what}: status {}: {}",
        reply.status,
        reply.text()
    );
    ensure!(
        reply.version.as_deref() == Some(want),
        "{what}: expected {want}, got {:?} (backend saw {:?})",
        reply.version,
        reply.seen
    );
    let tag = reply.saw(TAG_HEADER);
    if want == CANARY {
        ensure!(
            tag == Some(TAG_VALUE),
            "{what}: canary backend saw {TAG_HEADER}: {tag:?}, expected {TAG_VALUE:?}"
        );
    } else {
        ensure!(
            tag.is_none(),
            "{what}: {want} backend saw {TAG_HEADER}: {tag:?}"
        );
    }
    Ok(())
}

type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);

fn check_cases(d: &Deployment, cases: &[Case<'_>]) -> Result<()> {
    let mut client = d.client();
    let mut failures = Vec::new();
    for (path, headers, want) in cases {
        let what = format!("GET {path} with {headers:?}");
        match client.get(path, headers) {
            Ok(reply) => {
                if let Err(err) = expect_routed(&reply, want, &what) {
                    failures.push(format!("{err:#}"));
                }
            }
            Err(err) => failures.push(format!("{what}: {err:#}")),
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} of {} cases failed:\n{}",
            failures.len(),
            cases.len(),
            failures.join("\n")
        );
    }
    Ok(())
}

// === weight ===

#[test]
fn weights_of_10_and_30_percent_split_traffic_within_a_binomial_bound() -> Result<()> {
    let d = start(&[with_generation(demo_rule(10.0), 1)])?;
    let mut clients = d.clients(4);
    for (generation, weight) in [(1u32, 10.0), (2, 30.0)] {
        if generation > 1 {
            d.envoy.set_plugin_config(&plugin_config(&[with_generation(
                demo_rule(weight),
                generation,
            )]))?;
        }
        for client in &mut clients {
            await_generation(client, generation)?;
        }
        let per_client = WEIGHT_SAMPLE / clients.len() as u64;
        let tally = run_load(&mut clients, per_client)?;
        let n = tally.total();
        ensure!(
            tally.count(CANARY, 200) + tally.count(STABLE, 200) == n,
            "unexpected replies at {weight}%: {:?}",
            tally.replies
        );
        check_binomial(
            &format!("canary share at weight {weight}%"),
            tally.count(CANARY, 200),
            n,
            weight / 100.0,
        )?;
    }
    Ok(())
}

// === stickiness ===

/// Sends each of `users` `rounds` times, alternating between `clients` (connections that may
/// sit on different workers and so different VMs), and returns each user's single version.
fn versions_per_user(
    clients: &mut [Client],
    users: &[String],
    rounds: usize,
    request: impl Fn(&mut Client, &str) -> Result<Reply>,
) -> Result<BTreeMap<String, String>> {
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for round in 0..rounds {
        let client = &mut clients[round % clients.len()];
        for user in users {
            let reply = request(client, user)?;
            let version = reply
                .version
                .clone()
                .with_context(|| format!("user {user}: no backend answered: {reply:?}"))?;
            expect_routed(&reply, &version, &format!("user {user}"))?;
            if let Some(before) = seen.insert(user.clone(), version.clone()) {
                ensure!(
                    before == version,
                    "user {user} moved from {before} to {version} in round {round}"
                );
            }
        }
    }
    Ok(seen)
}

fn users(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

fn canary_users(versions: &BTreeMap<String, String>) -> BTreeSet<String> {
    versions
        .iter()
        .filter(|(_, v)| v.as_str() == CANARY)
        .map(|(u, _)| u.clone())
        .collect()
}

#[test]
fn a_sticky_header_keeps_every_user_on_one_version_and_splits_users_by_weight() -> Result<()> {
    let d = start(&[rule_with(30.0, json!({"sticky": {"header": "x-user-id"}}))])?;
    let users = users("user", 1000);
    let versions = versions_per_user(&mut d.clients(2), &users, 3, |client, user| {
        client.get("/", &[("x-user-id", user)])
    })?;
    let on_canary = canary_users(&versions).len() as u64;
    check_binomial("users on canary at 30%", on_canary, users.len() as u64, 0.3)
}

#[test]
fn a_sticky_cookie_keeps_every_user_on_one_version_and_splits_users_by_weight() -> Result<()> {
    let d = start(&[rule_with(30.0, json!({"sticky": {"cookie": "uid"}}))])?;
    let users = users("visitor", 1000);
    let versions = versions_per_user(&mut d.clients(2), &users, 3, |client, user| {
        let cookie = format!("theme=dark; uid={user}; lang=en");
        client.get("/", &[("cookie", &cookie)])
    })?;
    let on_canary = canary_users(&versions).len() as u64;
    check_binomial("users on canary at 30%", on_canary, users.len() as u64, 0.3)
}

#[test]
fn users_on_canary_at_10_percent_stay_there_when_the_weight_grows_to_30() -> Result<()> {
    let sticky = json!({"sticky": {"header": "x-user-id"}});
    let d = start(&[with_generation(rule_with(10.0, sticky.clone()), 1)])?;
    let users = users("member", 2000);
    let request = |client: &mut Client, user: &str| client.get("/", &[("x-user-id", user)]);

    let mut clients = d.clients(2);
    let at_10 = canary_users(&versions_per_user(&mut clients, &users, 1, request)?);
    check_binomial("users on canary at 10%", at_10.len() as u64, 2000, 0.1)?;

    d.envoy.set_plugin_config(&plugin_config(&[with_generation(
        rule_with(30.0, sticky),
        2,
    )]))?;
    for client in &mut clients {
        await_generation(client, 2)?;
    }
    let at_30 = canary_users(&versions_per_user(&mut clients, &users, 2, request)?);
    let lost: Vec<_> = at_10.difference(&at_30).take(10).collect();
    ensure!(
        lost.is_empty(),
        "{} users left the canary when its weight grew, e.g. {lost:?}",
        at_10.difference(&at_30).count()
    );
    check_binomial("users on canary at 30%", at_30.len() as u64, 2000, 0.3)
}

/// The bucket in a `Set-Cookie: higress-canary-bucket=<n>; ...` line.
fn issued_bucket(reply: &Reply, name: &str) -> Result<u16> {
    let cookies = reply.header_all("set-cookie");
    let line = cookies
        .iter()
        .find(|c| c.starts_with(&format!("{name}=")))
        .with_context(|| format!("no Set-Cookie {name} on {reply:?}"))?;
    let value = line[name.len() + 1..]
        .split(';')
        .next()
        .unwrap_or("")
        .trim();
    let bucket: u16 = value
        .parse()
        .with_context(|| format!("bucket cookie value {value:?} in {line:?}"))?;
    ensure!(bucket < 10_000, "bucket {bucket} out of range in {line:?}");
    ensure!(
        line.to_ascii_lowercase().contains("max-age=3600"),
        "Set-Cookie {line:?} lacks Max-Age=3600"
    );
    Ok(bucket)
}

#[test]
fn anonymous_users_get_a_bucket_cookie_that_later_requests_honour() -> Result<()> {
    const COOKIE: &str = "higress-canary-bucket";
    let d = start(&[rule_with(
        50.0,
        json!({"sticky": {"bucketCookie": {"name": COOKIE, "maxAgeSeconds": 3600}}}),
    )])?;
    let mut client = d.client();

    // Fresh visitors: each gets a cookie, and its own request is routed by that bucket.
    let mut issued = Vec::new();
    for i in 0..1000 {
        let reply = client.get("/", &[])?;
        let bucket = issued_bucket(&reply, COOKIE).with_context(|| format!("visitor {i}"))?;
        let want = if bucket < 5000 { CANARY } else { STABLE };
        expect_routed(
            &reply,
            want,
            &format!("visitor {i} with issued bucket {bucket}"),
        )?;
        issued.push((bucket, want));
    }
    let on_canary = issued.iter().filter(|(_, v)| *v == CANARY).count() as u64;
    check_binomial("anonymous visitors on canary at 50%", on_canary, 1000, 0.5)?;

    // Returning visitors keep their version, on another connection too.
    let mut other_conn = d.client();
    for (bucket, want) in issued.iter().take(200) {
        let cookie = format!("a=1; {COOKIE}={bucket}");
        for client in [&mut client, &mut other_conn] {
            let reply = client.get("/", &[("cookie", &cookie)])?;
            expect_routed(
                &reply,
                want,
                &format!("returning visitor with bucket {bucket}"),
            )?;
        }
    }

    // The boundary: canary iff bucket < weight in basis points.
    for (bucket, want) in [(0, CANARY), (4999, CANARY), (5000, STABLE), (9999, STABLE)] {
        let cookie = format!("{COOKIE}={bucket}");
        let reply = client.get("/", &[("cookie", &cookie)])?;
        expect_routed(&reply, want, &format!("hand-made bucket cookie {bucket}"))?;
    }
    Ok(())
}

// === A/B matches ===

#[test]
fn header_matches_of_every_type_send_requests_to_canary_at_weight_zero() -> Result<()> {
    let d = start(&[rule_with(
        0.0,
        json!({"matches": [
            {"headers": [{"name": "user-agent", "value": "android"}]},
            {"headers": [{"name": "x-tenant", "type": "Prefix", "value": "beta-"}]},
            {"headers": [{"name": "x-device", "type": "RegularExpression", "value": "ip(hone|ad)"}]},
            {"headers": [{"name": "x-plan", "type": "Exact", "value": "gold"}]},
        ]}),
    )])?;
    check_cases(
        &d,
        &[
            ("/", &[], STABLE),
            ("/", &[("user-agent", "android")], CANARY),
            ("/", &[("User-Agent", "android")], CANARY),
            ("/", &[("user-agent", "Android")], STABLE),
            ("/", &[("user-agent", "android 14")], STABLE),
            ("/", &[("x-tenant", "beta-42")], CANARY),
            ("/", &[("x-tenant", "beta-")], CANARY),
            ("/", &[("x-tenant", "alpha-beta-1")], STABLE),
            ("/", &[("x-device", "iphone")], CANARY),
            ("/", &[("x-device", "ipad")], CANARY),
            ("/", &[("x-device", "my-iphone")], STABLE),
            ("/", &[("x-device", "iphone-x")], STABLE),
            ("/", &[("x-plan", "gold")], CANARY),
            ("/", &[("x-plan", "golden")], STABLE),
            ("/", &[("x-other", "android")], STABLE),
        ],
    )
}

#[test]
fn cookie_and_query_param_matches_send_requests_to_canary_at_weight_zero() -> Result<()> {
    let d = start(&[rule_with(
        0.0,
        json!({"matches": [
            {"cookies": [{"name": "beta", "value": "1"}]},
            {"cookies": [{"name": "cohort", "type": "Prefix", "value": "early"}]},
            {"queryParams": [{"name": "canary", "value": "true"}]},
            {"queryParams": [{"name": "build", "type": "RegularExpression", "value": "[0-9]+-rc"}]},
        ]}),
    )])?;
    check_cases(
        &d,
        &[
            ("/", &[("cookie", "beta=1")], CANARY),
            ("/", &[("cookie", "a=b; beta=1; c=d")], CANARY),
            ("/", &[("cookie", "beta=10")], STABLE),
            ("/", &[("cookie", "xbeta=1")], STABLE),
            ("/", &[("cookie", "cohort=early-adopters")], CANARY),
            ("/", &[("cookie", "cohort=late")], STABLE),
            ("/?canary=true", &[], CANARY),
            ("/shop?x=1&canary=true", &[], CANARY),
            ("/?canary=false", &[], STABLE),
            ("/?canary=truex", &[], STABLE),
            ("/?xcanary=true", &[], STABLE),
            ("/?build=123-rc", &[], CANARY),
            ("/?build=123-rc2", &[], STABLE),
            ("/", &[("x-canary", "true")], STABLE),
        ],
    )
}

#[test]
fn path_matches_of_every_type_send_requests_to_canary_at_weight_zero() -> Result<()> {
    let d = start(&[rule_with(
        0.0,
        json!({"matches": [
            {"path": {"type": "Exact", "value": "/exact"}},
            {"path": {"type": "Prefix", "value": "/api/v2/"}},
            {"path": {"type": "RegularExpression", "value": "/items/[0-9]+"}},
        ]}),
    )])?;
    check_cases(
        &d,
        &[
            ("/exact", &[], CANARY),
            ("/exact?q=1", &[], CANARY),
            ("/exact/more", &[], STABLE),
            ("/exactly", &[], STABLE),
            ("/api/v2/users", &[], CANARY),
            ("/api/v1/users", &[], STABLE),
            ("/items/42", &[], CANARY),
            ("/items/42?x=y", &[], CANARY),
            ("/items/42/parts", &[], STABLE),
            ("/items/abc", &[], STABLE),
            ("/", &[], STABLE),
        ],
    )
}

#[test]
fn every_condition_of_a_match_group_must_hold() -> Result<()> {
    let d = start(&[rule_with(
        0.0,
        json!({"matches": [{
            "headers": [{"name": "x-and", "value": "yes"}],
            "cookies": [{"name": "tier", "value": "pro"}],
            "queryParams": [{"name": "and", "value": "yes"}],
            "path": {"type": "Prefix", "value": "/both"},
        }]}),
    )])?;
    let all: &[(&str, &str)] = &[("x-and", "yes"), ("cookie", "tier=pro")];
    check_cases(
        &d,
        &[
            ("/both?and=yes", all, CANARY),
            ("/both?and=yes", &[("x-and", "yes")], STABLE),
            ("/both?and=yes", &[("cookie", "tier=pro")], STABLE),
            ("/both", all, STABLE),
            ("/other?and=yes", all, STABLE),
        ],
    )
}

// === override ===

#[test]
fn the_override_header_forces_either_version_and_never_reaches_the_backend() -> Result<()> {
    let rule = |weight| rule_with(weight, json!({"override": {"header": "x-canary-override"}}));
    let d = start(&[rule(0.0)])?;
    let cases: &[Case<'_>] = &[
        ("/", &[("x-canary-override", "canary")], CANARY),
        ("/", &[("x-canary-override", "stable")], STABLE),
        ("/", &[("x-canary-override", "maybe")], STABLE),
        ("/", &[], STABLE),
    ];
    check_cases(&d, cases)?;

    d.envoy.set_plugin_config(&plugin_config(&[rule(100.0)]))?;
    let mut client = d.client();
    await_version(&mut client, "/", &[], CANARY)?;
    check_cases(
        &d,
        &[
            ("/", &[("x-canary-override", "stable")], STABLE),
            ("/", &[("x-canary-override", "canary")], CANARY),
            ("/", &[("x-canary-override", "maybe")], CANARY),
        ],
    )?;

    for value in ["canary", "stable", "maybe"] {
        let reply = client.get("/", &[("x-canary-override", value)])?;
        ensure!(
            reply.saw("x-canary-override").is_none(),
            "backend saw the override header: {reply:?}"
        );
    }
    Ok(())
}

#[test]
fn an_override_with_a_secret_counts_only_with_the_right_secret_and_both_headers_are_removed(
) -> Result<()> {
    let rule = |weight| {
        rule_with(
            weight,
            json!({"override": {
                "header": "x-canary-override",
                "secretHeader": "x-canary-override-secret",
                "secret": "s3cret",
            }}),
        )
    };
    let d = start(&[rule(0.0)])?;
    let right = "s3cret";
    let cases: &[Case<'_>] = &[
        (
            "/",
            &[
                ("x-canary-override", "canary"),
                ("x-canary-override-secret", right),
            ],
            CANARY,
        ),
        (
            "/",
            &[
                ("x-canary-override", "canary"),
                ("x-canary-override-secret", "wrong"),
            ],
            STABLE,
        ),
        (
            "/",
            &[
                ("x-canary-override", "canary"),
                ("x-canary-override-secret", "s3cret2"),
            ],
            STABLE,
        ),
        (
            "/",
            &[
                ("x-canary-override", "canary"),
                ("x-canary-override-secret", ""),
            ],
            STABLE,
        ),
        ("/", &[("x-canary-override", "canary")], STABLE),
        ("/", &[("x-canary-override-secret", right)], STABLE),
    ];
    check_cases(&d, cases)?;

    d.envoy.set_plugin_config(&plugin_config(&[rule(100.0)]))?;
    let mut client = d.client();
    await_version(&mut client, "/", &[], CANARY)?;
    check_cases(
        &d,
        &[
            (
                "/",
                &[
                    ("x-canary-override", "stable"),
                    ("x-canary-override-secret", right),
                ],
                STABLE,
            ),
            (
                "/",
                &[
                    ("x-canary-override", "stable"),
                    ("x-canary-override-secret", "nope"),
                ],
                CANARY,
            ),
            ("/", &[("x-canary-override", "stable")], CANARY),
        ],
    )?;

    for headers in cases.iter().map(|(_, h, _)| *h) {
        let reply = client.get("/", headers)?;
        for name in ["x-canary-override", "x-canary-override-secret"] {
            ensure!(
                reply.saw(name).is_none(),
                "backend {:?} saw {name} for request headers {headers:?}",
                reply.version
            );
        }
    }
    Ok(())
}

// === anti-spoofing ===

#[test]
fn spoofed_tag_headers_never_reach_the_canary_nor_any_backend() -> Result<()> {
    let d = start(&[demo_rule(0.0)])?;
    let spoofs: &[&[(&str, &str)]] = &[
        &[(TAG_HEADER, "always")],
        &[(TAG_HEADER, TAG_VALUE)],
        &[("X-Higress-Canary", "always")],
        &[(TAG_HEADER, "always"), (TAG_HEADER, TAG_VALUE)],
    ];
    let mut client = d.client();
    for headers in spoofs {
        let reply = client.get("/", headers)?;
        expect_routed(&reply, STABLE, &format!("spoofed {headers:?}"))?;
    }

    // The tag is removed on every request, also where no rule applies.
    let mut other = Client::new(d.envoy.listener_addr()).with_host(OTHER_HOST);
    for headers in spoofs {
        let reply = other.get("/", headers)?;
        ensure!(reply.version.as_deref() == Some(OTHER), "{reply:?}");
        ensure!(
            reply.saw(TAG_HEADER).is_none(),
            "{OTHER_HOST} backend saw spoofed {headers:?}: {:?}",
            reply.saw(TAG_HEADER)
        );
    }

    // At 100% the canary backend sees exactly the plugin's tag, not the client's.
    d.envoy
        .set_plugin_config(&plugin_config(&[demo_rule(100.0)]))?;
    await_version(&mut client, "/", &[], CANARY)?;
    for headers in spoofs {
        let reply = client.get("/", headers)?;
        expect_routed(&reply, CANARY, &format!("spoofed {headers:?} at 100%"))?;
    }
    ensure!(d.canary.requests() > 0 && d.stable.requests() > 0);
    Ok(())
}

// === rules that do not apply ===

#[test]
fn a_request_on_a_route_no_rule_names_passes_untouched() -> Result<()> {
    let d = start(&[rule_with(
        100.0,
        json!({
            "versionHeader": "x-canary-version",
            "sticky": {"bucketCookie": {"name": "higress-canary-bucket"}},
            "override": {"header": "x-canary-override"},
        }),
    )])?;
    let mut demo = d.client();
    let reply = demo.get("/", &[])?;
    expect_routed(&reply, CANARY, "demo host at 100%")?;
    ensure!(
        reply.header("x-canary-version") == Some("canary"),
        "{reply:?}"
    );

    let mut other = Client::new(d.envoy.listener_addr()).with_host(OTHER_HOST);
    for _ in 0..20 {
        let reply = other.get("/path?q=1", &[("user-agent", "e2e")])?;
        ensure!(
            reply.status == 200 && reply.version.as_deref() == Some(OTHER),
            "{reply:?}"
        );
        ensure!(
            reply.saw(TAG_HEADER).is_none(),
            "backend saw a tag: {:?}",
            reply.seen
        );
        ensure!(reply.saw("user-agent") == Some("e2e"), "{:?}", reply.seen);
        ensure!(
            reply.header("x-canary-version").is_none(),
            "version header on an untouched request: {reply:?}"
        );
        ensure!(
            reply.header_all("set-cookie").is_empty(),
            "cookie on an untouched request: {reply:?}"
        );
    }
    ensure!(d.canary.requests() == 1 && d.stable.requests() == 0);
    Ok(())
}

#[test]
fn the_version_header_names_the_version_only_when_configured() -> Result<()> {
    let d = start(&[rule_with(
        50.0,
        json!({"versionHeader": "x-canary-version"}),
    )])?;
    let mut client = d.client();
    let mut seen = BTreeSet::new();
    for _ in 0..200 {
        let reply = client.get("/", &[])?;
        let want = match reply.version.as_deref() {
            Some(CANARY) => "canary",
            Some(STABLE) => "stable",
            other => bail!("unexpected backend {other:?}: {reply:?}"),
        };
        ensure!(
            reply.header("x-canary-version") == Some(want),
            "x-canary-version {:?} on a reply from {:?}",
            reply.header("x-canary-version"),
            reply.version
        );
        ensure!(reply.header_all("x-canary-version").len() == 1, "{reply:?}");
        seen.insert(want);
    }
    ensure!(seen.len() == 2, "200 requests at 50% saw only {seen:?}");

    d.envoy
        .set_plugin_config(&plugin_config(&[demo_rule(100.0)]))?;
    let reply = await_version(&mut client, "/", &[], CANARY)?;
    ensure!(reply.header("x-canary-version").is_none(), "{reply:?}");
    for _ in 0..50 {
        let reply = client.get("/", &[])?;
        ensure!(reply.header("x-canary-version").is_none(), "{reply:?}");
    }
    Ok(())
}

fn domain_rule(rollout: &str, domains: &[&str]) -> Value {
    json!({"_match_domain_": domains, "rollout": rollout, "tagValue": TAG_VALUE, "weight": 100})
}

#[test]
fn match_domain_rules_apply_by_exact_suffix_and_prefix_host() -> Result<()> {
    let config = plugin_config(&[
        domain_rule("default/by-suffix", &["*.example.com"]),
        domain_rule("default/by-prefix", &["shop.*"]),
        domain_rule("default/by-exact", &["exact.example.org"]),
    ]);
    let d = Deployment::builder(Filter::canary(&config)?)
        .demo_domains(&[
            "demo.example.com",
            "demo.example.com:8080",
            "shop.example.net",
            "exact.example.org",
            "demo.example.org",
            "exact.example.org.evil",
        ])
        .start()?;
    for (host, want) in [
        ("demo.example.com", CANARY),
        ("demo.example.com:8080", CANARY),
        ("shop.example.net", CANARY),
        ("exact.example.org", CANARY),
        ("demo.example.org", STABLE),
        ("exact.example.org.evil", STABLE),
    ] {
        let reply = d.client().get("/", &[("host", host)])?;
        expect_routed(&reply, want, &format!("Host {host}"))?;
    }
    Ok(())
}

fn service_rule(services: &[&str]) -> Value {
    json!({"_match_service_": services, "rollout": ROLLOUT, "tagValue": TAG_VALUE, "weight": 100})
}

#[test]
fn match_service_rules_apply_by_fqdn_or_fqdn_and_port() -> Result<()> {
    let d = start(&[service_rule(&[
        "demo.default.svc.cluster.local:80",
        "demo-canary.default.svc.cluster.local:80",
    ])])?;
    let mut client = d.client();
    expect_routed(&client.get("/", &[])?, CANARY, "fqdn:port rule")?;
    let reply = Client::new(d.envoy.listener_addr())
        .with_host(OTHER_HOST)
        .get("/", &[])?;
    ensure!(reply.version.as_deref() == Some(OTHER) && reply.saw(TAG_HEADER).is_none());

    d.envoy.set_plugin_config(&plugin_config(&[service_rule(&[
        "demo.default.svc.cluster.local:8080",
    ])]))?;
    let reply = await_version(&mut client, "/", &[], STABLE)?;
    expect_routed(&reply, STABLE, "rule for another port")?;

    d.envoy.set_plugin_config(&plugin_config(&[service_rule(&[
        "demo.default.svc.cluster.local",
    ])]))?;
    let reply = await_version(&mut client, "/", &[], CANARY)?;
    expect_routed(&reply, CANARY, "fqdn rule")?;
    Ok(())
}

#[test]
fn the_first_matching_rule_wins() -> Result<()> {
    let d = start(&[
        json!({"_match_route_": [BASE_ROUTE, CANARY_ROUTE], "rollout": "default/first",
               "tagValue": TAG_VALUE, "weight": 100}),
        json!({"_match_domain_": ["demo.example.com"], "rollout": "default/second",
               "tagValue": TAG_VALUE, "weight": 0}),
    ])?;
    let mut client = d.client();
    for _ in 0..20 {
        expect_routed(&client.get("/", &[])?, CANARY, "first rule at 100%")?;
    }
    Ok(())
}

#[test]
fn top_level_fields_act_as_a_fallback_rule_for_requests_no_rule_matches() -> Result<()> {
    let config = json!({
        "rollout": "default/fallback",
        "tagValue": TAG_VALUE,
        "weight": 100,
        "_rules_": [{"_match_domain_": [OTHER_HOST], "rollout": "default/other",
                     "tagValue": "other", "weight": 0}],
    });
    let d = Deployment::start(&config.to_string())?;
    expect_routed(
        &d.client().get("/", &[])?,
        CANARY,
        "demo host under the fallback rule",
    )?;
    let reply = Client::new(d.envoy.listener_addr())
        .with_host(OTHER_HOST)
        .get("/", &[])?;
    ensure!(reply.version.as_deref() == Some(OTHER), "{reply:?}");
    ensure!(
        reply.saw(TAG_HEADER).is_none(),
        "the other host's own rule (weight 0) should win over the fallback: {:?}",
        reply.seen
    );
    Ok(())
}

#[test]
fn a_spoofed_tag_is_removed_even_when_the_rule_names_only_the_base_route() -> Result<()> {
    // A spoofed request first matches the canary route, which this rule does not name; the
    // plugin must still strip the tag so Envoy falls back to the base route.
    let mut rule = demo_rule(0.0);
    rule["_match_route_"] = json!([BASE_ROUTE]);
    let d = start(&[rule])?;
    let mut client = d.client();
    for value in ["always", TAG_VALUE] {
        let reply = client.get("/", &[(TAG_HEADER, value)])?;
        expect_routed(&reply, STABLE, &format!("spoofed {TAG_HEADER}: {value}"))?;
    }
    ensure!(d.canary.requests() == 0, "the canary backend was reached");
    Ok(())
}
