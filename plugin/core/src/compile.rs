//! Validation: [`PluginConfig`] in, [`Router`] out. Every regex, index, header list and hash
//! salt the request path needs is built here, once per config load.

use std::collections::HashMap;

use xxhash_rust::xxh3::xxh3_64;

use crate::config::{MatchGroup, Override, PluginConfig, RuleConfig, Sticky, ValueMatch, Weight};
use crate::matcher::ValueMatcher;
use crate::ConfigError;

/// Where a compiled rule lives in its [`Router`]; stable for the router's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RuleId(usize);

impl RuleId {
    /// Position in [`Router::rules`], for callers that keep per-rule data (such as metric ids)
    /// in a parallel `Vec`.
    pub fn index(self) -> usize {
        self.0
    }
}

/// What the host knows about a request's destination, for rule selection.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteKeys<'a> {
    /// Envoy's route name (Higress: `<namespace>/<ingress>`).
    pub route_name: Option<&'a str>,
    /// `:authority`, possibly with a port.
    pub authority: Option<&'a str>,
    /// Envoy's cluster name (Istio: `outbound|<port>|<subset>|<fqdn>`).
    pub cluster_name: Option<&'a str>,
}

/// A validated config, ready to route requests.
#[derive(Debug, Clone, Default)]
pub struct Router {
    /// `_rules_` in order, then the global rule if there is one.
    rules: Vec<Rule>,
    global: Option<RuleId>,
    by_route: HashMap<String, RuleId>,
    by_service: HashMap<String, RuleId>,
    by_domain: HashMap<String, RuleId>,
    /// `*.example.com` stored as `.example.com`, in rule order.
    domain_suffixes: Vec<(String, RuleId)>,
    /// `api*` stored as `api`, in rule order.
    domain_prefixes: Vec<(String, RuleId)>,
    /// Every tag and override header any rule manages: removed from every request.
    managed_headers: Vec<String>,
}

/// One compiled canary release.
#[derive(Debug, Clone)]
pub struct Rule {
    pub(crate) rollout: String,
    pub(crate) tag_header: String,
    pub(crate) tag_value: String,
    pub(crate) weight: Weight,
    pub(crate) groups: Vec<Group>,
    pub(crate) sticky: Option<CompiledSticky>,
    pub(crate) override_: Option<CompiledOverride>,
    pub(crate) version_header: Option<String>,
    /// Lowercase names of the request headers the decision reads, without duplicates.
    pub(crate) request_headers: Vec<String>,
    pub(crate) needs_path: bool,
    /// Seed for sticky hashing, derived from the rollout so that users land in independent
    /// buckets for different releases but in the same bucket across a release's steps.
    pub(crate) salt: u64,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Group {
    pub(crate) headers: Vec<(String, ValueMatcher)>,
    pub(crate) cookies: Vec<(String, ValueMatcher)>,
    pub(crate) query_params: Vec<(String, ValueMatcher)>,
    pub(crate) path: Option<ValueMatcher>,
}

#[derive(Debug, Clone)]
pub(crate) struct CompiledSticky {
    pub(crate) header: Option<String>,
    pub(crate) cookie: Option<String>,
    pub(crate) bucket_cookie: Option<(String, u32)>,
}

#[derive(Debug, Clone)]
pub(crate) struct CompiledOverride {
    pub(crate) header: String,
    pub(crate) secret: Option<(String, String)>,
}

const COOKIE_HEADER: &str = "cookie";

// === impl Router ===

impl Router {
    /// Parses and validates the bytes Envoy passes to `on_configure`.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        Self::new(&PluginConfig::from_json(bytes)?)
    }

    /// Validates a config. The error names the first offending field.
    pub fn new(config: &PluginConfig) -> Result<Self, ConfigError> {
        let mut router = Router::default();
        let mut rollouts: HashMap<&str, String> = HashMap::new();
        let entries = config
            .rules
            .iter()
            .enumerate()
            .map(|(i, rule)| (format!("_rules_[{i}]"), rule, true))
            .chain(
                config
                    .global
                    .iter()
                    .map(|rule| (String::new(), rule, false)),
            );
        for (path, rule_config, is_entry) in entries {
            let id = RuleId(router.rules.len());
            let rule = compile_rule(&path, rule_config)?;
            if let Some(first) = rollouts.insert(&rule_config.rollout, path.clone()) {
                return Err(ConfigError::invalid(
                    join(&path, "rollout"),
                    format!(
                        "rollout {:?} already has a rule at {}; give each release one rule",
                        rule_config.rollout,
                        display_path(&first)
                    ),
                ));
            }
            if is_entry {
                router.index_rule(&path, rule_config, id)?;
            } else {
                check_no_match_keys(rule_config)?;
                router.global = Some(id);
            }
            router.rules.push(rule);
        }
        router.check_managed_headers()?;
        Ok(router)
    }

    /// The rule for a request: the first `_rules_` entry whose route, domain or service
    /// matches, else the global rule, else none (the request passes untouched).
    pub fn select(&self, keys: RouteKeys<'_>) -> Option<RuleId> {
        let by_route = keys.route_name.and_then(|r| self.by_route.get(r).copied());
        let by_domain = keys.authority.and_then(|a| self.match_domain(a));
        let by_service = keys.cluster_name.and_then(|c| self.match_service(c));
        // First match wins in rule order: the smallest index among the candidates.
        [by_route, by_domain, by_service]
            .into_iter()
            .flatten()
            .min_by_key(|id| id.0)
            .or(self.global)
    }

    pub fn rule(&self, id: RuleId) -> &Rule {
        &self.rules[id.0]
    }

    pub fn rules(&self) -> impl Iterator<Item = (RuleId, &Rule)> {
        self.rules.iter().enumerate().map(|(i, r)| (RuleId(i), r))
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Headers to remove from every request before anything else: all tag headers (so no
    /// client can pick the canary route itself) and all override headers (so they never
    /// reach an upstream).
    pub fn managed_headers(&self) -> &[String] {
        &self.managed_headers
    }

    /// Whether [`Router::select`] looks at the route name; if not, the host need not read it.
    pub fn needs_route_name(&self) -> bool {
        !self.by_route.is_empty()
    }

    pub fn needs_authority(&self) -> bool {
        !self.by_domain.is_empty()
            || !self.domain_suffixes.is_empty()
            || !self.domain_prefixes.is_empty()
    }

    pub fn needs_cluster_name(&self) -> bool {
        !self.by_service.is_empty()
    }

    fn match_domain(&self, authority: &str) -> Option<RuleId> {
        let host = strip_port(authority);
        let lowered;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = host.to_ascii_lowercase();
            lowered.as_str()
        } else {
            host
        };
        let exact = self.by_domain.get(host).copied();
        let suffix = self
            .domain_suffixes
            .iter()
            .find(|(s, _)| host.ends_with(s.as_str()))
            .map(|(_, id)| *id);
        let prefix = self
            .domain_prefixes
            .iter()
            .find(|(p, _)| host.starts_with(p.as_str()))
            .map(|(_, id)| *id);
        [exact, suffix, prefix]
            .into_iter()
            .flatten()
            .min_by_key(|id| id.0)
    }

    fn match_service(&self, cluster_name: &str) -> Option<RuleId> {
        // outbound|<port>|<subset>|<fqdn>
        let mut parts = cluster_name.splitn(4, '|');
        let (Some(_direction), Some(port), Some(_subset), Some(fqdn)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return self.by_service.get(cluster_name).copied();
        };
        let with_port = self.by_service.get(&format!("{fqdn}:{port}")).copied();
        let bare = self.by_service.get(fqdn).copied();
        [with_port, bare]
            .into_iter()
            .flatten()
            .min_by_key(|id| id.0)
    }

    fn index_rule(&mut self, path: &str, rule: &RuleConfig, id: RuleId) -> Result<(), ConfigError> {
        let kinds = [
            ("_match_route_", &rule.match_route),
            ("_match_domain_", &rule.match_domain),
            ("_match_service_", &rule.match_service),
        ];
        let used: Vec<_> = kinds.iter().filter(|(_, v)| !v.is_empty()).collect();
        match used.len() {
            0 => {
                return Err(ConfigError::invalid(
                    path,
                    "a _rules_ entry needs one of _match_route_, _match_domain_ or _match_service_",
                ))
            }
            1 => {}
            _ => {
                return Err(ConfigError::invalid(
                    path,
                    format!(
                        "a _rules_ entry takes exactly one of _match_route_, _match_domain_ or \
                         _match_service_; split {} and {} into separate entries",
                        used[0].0, used[1].0
                    ),
                ))
            }
        }
        let rules = &self.rules;
        let insert = |map: &mut HashMap<String, RuleId>, key: String, at: String| {
            if let Some(first) = map.get(&key) {
                let first_path = format!("_rules_[{}]", first.0);
                return Err(ConfigError::invalid(
                    at,
                    format!(
                        "{key:?} is already matched by {first_path} (rollout {:?}); the first \
                         match wins, so this entry would never apply",
                        rules[first.0].rollout
                    ),
                ));
            }
            map.insert(key, id);
            Ok(())
        };
        for (i, route) in rule.match_route.iter().enumerate() {
            let at = format!("{path}._match_route_[{i}]");
            non_empty(&at, route)?;
            insert(&mut self.by_route, route.clone(), at)?;
        }
        for (i, service) in rule.match_service.iter().enumerate() {
            let at = format!("{path}._match_service_[{i}]");
            non_empty(&at, service)?;
            insert(&mut self.by_service, service.clone(), at)?;
        }
        for (i, domain) in rule.match_domain.iter().enumerate() {
            let at = format!("{path}._match_domain_[{i}]");
            non_empty(&at, domain)?;
            let domain = domain.to_ascii_lowercase();
            if let Some(suffix) = domain.strip_prefix('*') {
                push_unique(&mut self.domain_suffixes, suffix, id, &at, &self.rules)?;
            } else if let Some(prefix) = domain.strip_suffix('*') {
                push_unique(&mut self.domain_prefixes, prefix, id, &at, &self.rules)?;
            } else {
                insert(&mut self.by_domain, domain, at)?;
            }
        }
        Ok(())
    }

    fn check_managed_headers(&mut self) -> Result<(), ConfigError> {
        let tags: Vec<&str> = self.rules.iter().map(|r| r.tag_header.as_str()).collect();
        for (id, rule) in self.rules() {
            let path = self.rule_path(id);
            if let Some(o) = &rule.override_ {
                let secret_header = o.secret.as_ref().map(|(h, _)| h.as_str());
                for (field, header) in [
                    ("header", Some(&o.header[..])),
                    ("secretHeader", secret_header),
                ] {
                    if let Some(header) = header.filter(|h| tags.contains(h)) {
                        return Err(ConfigError::invalid(
                            join(&path, &format!("override.{field}")),
                            format!("{header:?} is also a tag header; use a separate header"),
                        ));
                    }
                }
            }
            let match_headers = rule.groups.iter().enumerate().flat_map(|(g, group)| {
                group.headers.iter().enumerate().map(move |(h, (name, _))| {
                    (format!("matches[{g}].headers[{h}].name"), name.as_str())
                })
            });
            let sticky_header = rule
                .sticky
                .as_ref()
                .and_then(|s| s.header.as_deref())
                .map(|h| ("sticky.header".to_owned(), h));
            for (field, header) in match_headers.chain(sticky_header) {
                if tags.contains(&header) {
                    return Err(ConfigError::invalid(
                        join(&path, &field),
                        format!(
                            "{header:?} is a tag header, which the plugin removes from every \
                             request first; use another header"
                        ),
                    ));
                }
            }
        }
        let mut managed: Vec<String> = Vec::new();
        for rule in &self.rules {
            let mut add = |h: &str| {
                if !managed.iter().any(|m| m == h) {
                    managed.push(h.to_owned());
                }
            };
            add(&rule.tag_header);
            if let Some(o) = &rule.override_ {
                add(&o.header);
                if let Some((secret_header, _)) = &o.secret {
                    add(secret_header);
                }
            }
        }
        self.managed_headers = managed;
        Ok(())
    }

    fn rule_path(&self, id: RuleId) -> String {
        if Some(id) == self.global {
            String::new()
        } else {
            format!("_rules_[{}]", id.0)
        }
    }
}

fn push_unique(
    list: &mut Vec<(String, RuleId)>,
    pattern: &str,
    id: RuleId,
    at: &str,
    rules: &[Rule],
) -> Result<(), ConfigError> {
    if let Some((_, first)) = list.iter().find(|(p, _)| p == pattern) {
        return Err(ConfigError::invalid(
            at,
            format!(
                "this domain pattern is already matched by _rules_[{}] (rollout {:?}); the first \
                 match wins, so this entry would never apply",
                first.0, rules[first.0].rollout
            ),
        ));
    }
    list.push((pattern.to_owned(), id));
    Ok(())
}

fn check_no_match_keys(rule: &RuleConfig) -> Result<(), ConfigError> {
    for (key, values) in [
        ("_match_route_", &rule.match_route),
        ("_match_domain_", &rule.match_domain),
        ("_match_service_", &rule.match_service),
    ] {
        if !values.is_empty() {
            return Err(ConfigError::invalid(
                key,
                "match keys belong inside _rules_ entries, not at the top level",
            ));
        }
    }
    Ok(())
}

fn compile_rule(path: &str, rule: &RuleConfig) -> Result<Rule, ConfigError> {
    let rollout = non_empty(&join(path, "rollout"), &rule.rollout)?.to_owned();
    let tag_header = header_name(&join(path, "tagHeader"), &rule.tag_header, false)?;
    let tag_value = tag_value(&join(path, "tagValue"), &rule.tag_value)?;

    let mut request_headers: Vec<String> = Vec::new();
    let mut needs_path = false;
    let mut need = |name: &str| {
        if !request_headers.iter().any(|h| h == name) {
            request_headers.push(name.to_owned());
        }
    };

    let mut groups = Vec::with_capacity(rule.matches.len());
    for (i, group) in rule.matches.iter().enumerate() {
        let at = join(path, &format!("matches[{i}]"));
        let compiled = compile_group(&at, group)?;
        compiled.headers.iter().for_each(|(name, _)| need(name));
        if !compiled.cookies.is_empty() {
            need(COOKIE_HEADER);
        }
        needs_path |= compiled.path.is_some() || !compiled.query_params.is_empty();
        groups.push(compiled);
    }

    let sticky = match &rule.sticky {
        Some(sticky) => Some(compile_sticky(&join(path, "sticky"), sticky)?),
        None => None,
    };
    if let Some(sticky) = &sticky {
        if let Some(header) = &sticky.header {
            need(header);
        }
        if sticky.cookie.is_some() || sticky.bucket_cookie.is_some() {
            need(COOKIE_HEADER);
        }
    }

    let override_ = match &rule.r#override {
        Some(o) => Some(compile_override(&join(path, "override"), o)?),
        None => None,
    };
    if let Some(o) = &override_ {
        need(&o.header);
        if let Some((secret_header, _)) = &o.secret {
            need(secret_header);
        }
    }

    let version_header = match &rule.version_header {
        Some(h) => Some(header_name(&join(path, "versionHeader"), h, false)?),
        None => None,
    };

    Ok(Rule {
        salt: xxh3_64(rollout.as_bytes()),
        rollout,
        tag_header,
        tag_value,
        weight: rule.weight,
        groups,
        sticky,
        override_,
        version_header,
        request_headers,
        needs_path,
    })
}

fn compile_group(path: &str, group: &MatchGroup) -> Result<Group, ConfigError> {
    if group.headers.is_empty()
        && group.cookies.is_empty()
        && group.query_params.is_empty()
        && group.path.is_none()
    {
        return Err(ConfigError::invalid(
            path,
            "a match group needs at least one of headers, cookies, queryParams or path; an empty \
             group would send every request to the canary (use weight 100 for that)",
        ));
    }
    let conditions = |field: &str, list: &[ValueMatch], is_header: bool| {
        list.iter()
            .enumerate()
            .map(|(i, m)| {
                let at = join(path, &format!("{field}[{i}]"));
                let name = if is_header {
                    header_name(&join(&at, "name"), &m.name, true)?
                } else {
                    non_empty(&join(&at, "name"), &m.name)?.to_owned()
                };
                let matcher = ValueMatcher::new(m.r#type, &m.value)
                    .map_err(|e| ConfigError::invalid(join(&at, "value"), e))?;
                Ok((name, matcher))
            })
            .collect::<Result<Vec<_>, ConfigError>>()
    };
    Ok(Group {
        headers: conditions("headers", &group.headers, true)?,
        cookies: conditions("cookies", &group.cookies, false)?,
        query_params: conditions("queryParams", &group.query_params, false)?,
        path: match &group.path {
            Some(p) => Some(
                ValueMatcher::new(p.r#type, &p.value)
                    .map_err(|e| ConfigError::invalid(join(path, "path.value"), e))?,
            ),
            None => None,
        },
    })
}

fn compile_sticky(path: &str, sticky: &Sticky) -> Result<CompiledSticky, ConfigError> {
    if sticky.header.is_none() && sticky.cookie.is_none() && sticky.bucket_cookie.is_none() {
        return Err(ConfigError::invalid(
            path,
            "sticky needs at least one of header, cookie or bucketCookie",
        ));
    }
    Ok(CompiledSticky {
        header: match &sticky.header {
            Some(h) => Some(header_name(&join(path, "header"), h, false)?),
            None => None,
        },
        cookie: match &sticky.cookie {
            Some(c) => Some(cookie_name(&join(path, "cookie"), c)?),
            None => None,
        },
        bucket_cookie: match &sticky.bucket_cookie {
            Some(b) => Some((
                cookie_name(&join(path, "bucketCookie.name"), &b.name)?,
                b.max_age_seconds,
            )),
            None => None,
        },
    })
}

fn compile_override(path: &str, o: &Override) -> Result<CompiledOverride, ConfigError> {
    let header = header_name(&join(path, "header"), &o.header, false)?;
    let secret = match &o.secret {
        Some(secret) => {
            non_empty(&join(path, "secret"), secret)?;
            let secret_header = header_name(&join(path, "secretHeader"), &o.secret_header, false)?;
            if secret_header == header {
                return Err(ConfigError::invalid(
                    join(path, "secretHeader"),
                    "the secret needs its own header, not the override header",
                ));
            }
            Some((secret_header, secret.clone()))
        }
        None => None,
    };
    Ok(CompiledOverride { header, secret })
}

/// Headers that a rule may never set, strip or key on: they carry HTTP framing or are read by
/// Envoy itself.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "cookie",
    "content-length",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
];

/// Validates and lowercases a header name. Match conditions may also name the pseudo-headers a
/// request has (`:authority`, `:method`, `:scheme`, `:path`); headers the plugin writes or
/// strips may not.
fn header_name(path: &str, name: &str, for_matching: bool) -> Result<String, ConfigError> {
    non_empty(path, name)?;
    let lower = name.to_ascii_lowercase();
    if for_matching && [":authority", ":method", ":scheme", ":path"].contains(&lower.as_str()) {
        return Ok(lower);
    }
    if !lower.bytes().all(is_token_byte) {
        return Err(ConfigError::invalid(
            path,
            format!("{name:?} is not a valid HTTP header name"),
        ));
    }
    if !for_matching && RESERVED_HEADERS.contains(&lower.as_str()) {
        return Err(ConfigError::invalid(
            path,
            format!("{name:?} is reserved for HTTP itself; pick another header"),
        ));
    }
    Ok(lower)
}

fn cookie_name(path: &str, name: &str) -> Result<String, ConfigError> {
    non_empty(path, name)?;
    if !name.bytes().all(is_token_byte) {
        return Err(ConfigError::invalid(
            path,
            format!("{name:?} is not a valid cookie name"),
        ));
    }
    Ok(name.to_owned())
}

fn tag_value(path: &str, value: &str) -> Result<String, ConfigError> {
    non_empty(path, value)?;
    if value == "always" {
        return Err(ConfigError::invalid(
            path,
            "\"always\" is what a Higress canary route accepts from anyone; use the release's own \
             value",
        ));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(ConfigError::invalid(
            path,
            format!(
                "{value:?} may only contain letters, digits, '.', '_' and '-', because the canary \
                 route matches it inside the regex `always|<value>`"
            ),
        ));
    }
    Ok(value.to_owned())
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn non_empty<'a>(path: &str, value: &'a str) -> Result<&'a str, ConfigError> {
    if value.trim().is_empty() {
        return Err(ConfigError::invalid(path, "must not be empty"));
    }
    Ok(value)
}

fn strip_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        // [v6]:port
        return rest.split_once(']').map_or(authority, |(host, _)| host);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

fn display_path(path: &str) -> &str {
    if path.is_empty() {
        "the top level"
    } else {
        path
    }
}

#[cfg(test)]
mod tests;
