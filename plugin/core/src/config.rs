//! The plugin's config, as JSON on the wire.
//!
//! Higress turns a `WasmPlugin`'s `defaultConfig` into top-level keys and each `matchRules[]`
//! entry into an element of `_rules_`, adding `_match_route_`, `_match_domain_` or
//! `_match_service_` inside that element. [`PluginConfig`] reads and writes exactly that shape.
//! Validation beyond the shape (regexes, duplicates, header names) happens in
//! [`crate::compile`].

use std::fmt;

use serde::de::{self, Deserializer};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// Header the plugin sets on canary requests unless a rule names another.
pub const DEFAULT_TAG_HEADER: &str = "x-higress-canary";
/// Header that forces a version for one request unless a rule names another.
pub const DEFAULT_OVERRIDE_HEADER: &str = "x-canary-override";
/// Header carrying the override secret unless a rule names another.
pub const DEFAULT_OVERRIDE_SECRET_HEADER: &str = "x-canary-override-secret";
/// Lifetime of an issued bucket cookie unless a rule says otherwise: one day.
pub const DEFAULT_BUCKET_COOKIE_MAX_AGE_SECONDS: u32 = 86_400;

/// The whole plugin config: an optional global rule (the top-level keys, applied to requests no
/// `_rules_` entry matches) and the ordered `_rules_`, first match wins.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PluginConfig {
    /// Top-level rule fields, from the WasmPlugin's `defaultConfig`. `None` when the top level
    /// holds nothing but `_rules_`, which is the usual case: unmatched requests pass untouched.
    pub global: Option<RuleConfig>,
    /// `_rules_`, in order.
    pub rules: Vec<RuleConfig>,
}

/// One canary release on one set of routes, domains or services.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleConfig {
    /// Route names (`<namespace>/<ingress>` in Higress) this rule applies to. List the canary
    /// Ingress's route too (`<namespace>/<ingress>-canary`): a request that arrives with a
    /// spoofed tag header was first routed there, and the rule must still see it.
    #[serde(
        rename = "_match_route_",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub match_route: Vec<String>,
    /// Domains: exact, `*.suffix` or `prefix*`, compared with `:authority` without its port.
    #[serde(
        rename = "_match_domain_",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub match_domain: Vec<String>,
    /// Services: `fqdn` or `fqdn:port`, compared with the cluster name
    /// `outbound|<port>|<subset>|<fqdn>`.
    #[serde(
        rename = "_match_service_",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub match_service: Vec<String>,

    /// `<namespace>/<name>` of the Rollout; the `rollout` label of the plugin's metrics and the
    /// salt of sticky buckets. Unique across rules.
    pub rollout: String,
    /// Request header set on canary requests. Default `x-higress-canary`.
    #[serde(default = "default_tag_header")]
    pub tag_header: String,
    /// Value of the tag header on canary requests; the canary route matches `always|<tagValue>`.
    /// Letters, digits, `.`, `_` and `-` only, so it is literal inside that regex.
    pub tag_value: String,
    /// Share of traffic sent to the canary, in percent with a resolution of 0.01.
    #[serde(default, skip_serializing_if = "Weight::is_zero")]
    pub weight: Weight,
    /// A/B matches: a request matching any group goes to the canary whatever the weight.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<MatchGroup>,
    /// Where a request's sticky key comes from. Without it, each request draws a fresh bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<Sticky>,
    /// The per-request override header. Without it, requests cannot force a version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#override: Option<Override>,
    /// Response header naming the version that served the request (`stable` or `canary`).
    /// Off unless set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_header: Option<String>,
}

fn default_tag_header() -> String {
    DEFAULT_TAG_HEADER.to_owned()
}

/// A group of conditions that must all hold. `matches` ORs the groups.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatchGroup {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cookies: Vec<ValueMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<ValueMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
}

/// A condition on a named header, cookie or query parameter. Absent means no match.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ValueMatch {
    /// Header names are case-insensitive; cookie and query parameter names are not.
    pub name: String,
    #[serde(default, skip_serializing_if = "MatchType::is_exact")]
    pub r#type: MatchType,
    pub value: String,
}

/// A condition on the request path (`:path` without its query string).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathMatch {
    #[serde(default, skip_serializing_if = "MatchType::is_exact")]
    pub r#type: MatchType,
    pub value: String,
}

/// How a value is compared, with Kruise's and the Gateway API's names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MatchType {
    /// Byte-for-byte equality.
    #[default]
    Exact,
    /// The value starts with the given string.
    Prefix,
    /// The whole value matches the regex (RE2 syntax, implicitly anchored at both ends).
    RegularExpression,
}

impl MatchType {
    fn is_exact(&self) -> bool {
        *self == MatchType::Exact
    }
}

/// Sources of a request's sticky key, tried in order: header, cookie, then the bucket cookie
/// the plugin issued earlier.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sticky {
    /// A header holding a user id, e.g. `x-user-id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// A cookie holding a user id, e.g. `uid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// A cookie in which the plugin stores the bucket it drew for a request that had no key,
    /// so anonymous users stick too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket_cookie: Option<BucketCookie>,
}

/// The cookie the plugin issues to anonymous users.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BucketCookie {
    pub name: String,
    /// Default one day.
    #[serde(
        default = "default_bucket_cookie_max_age",
        deserialize_with = "integral_u32"
    )]
    pub max_age_seconds: u32,
}

fn default_bucket_cookie_max_age() -> u32 {
    DEFAULT_BUCKET_COOKIE_MAX_AGE_SECONDS
}

/// The per-request override: `<header>: canary` or `<header>: stable`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Override {
    /// Default `x-canary-override`. Never forwarded upstream.
    #[serde(default = "default_override_header")]
    pub header: String,
    /// When set, the override counts only if `secretHeader` carries exactly this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Default `x-canary-override-secret`. Never forwarded upstream.
    #[serde(default = "default_override_secret_header")]
    pub secret_header: String,
}

impl Default for Override {
    fn default() -> Self {
        Self {
            header: default_override_header(),
            secret: None,
            secret_header: default_override_secret_header(),
        }
    }
}

fn default_override_header() -> String {
    DEFAULT_OVERRIDE_HEADER.to_owned()
}

fn default_override_secret_header() -> String {
    DEFAULT_OVERRIDE_SECRET_HEADER.to_owned()
}

// === impl Weight ===

/// A traffic share in basis points (1/100 of a percent), written on the wire as a percentage:
/// `10` is 10%, `0.25` is 0.25%. Values outside 0..=100 or finer than 0.01 are rejected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Weight(u16);

impl Weight {
    /// 10,000 basis points: every request.
    pub const FULL: Weight = Weight(10_000);
    pub const ZERO: Weight = Weight(0);

    pub fn from_basis_points(bp: u16) -> Option<Self> {
        (bp <= 10_000).then_some(Self(bp))
    }

    /// Whole percent, as Kruise's steps write it.
    pub fn from_percent(percent: u8) -> Option<Self> {
        Self::from_basis_points(u16::from(percent) * 100)
    }

    pub fn basis_points(self) -> u16 {
        self.0
    }

    pub fn percent(self) -> f64 {
        f64::from(self.0) / 100.0
    }

    fn is_zero(&self) -> bool {
        self.0 == 0
    }

    fn from_percent_f64(percent: f64) -> Result<Self, String> {
        if !percent.is_finite() || !(0.0..=100.0).contains(&percent) {
            return Err(format!(
                "weight must be a percentage between 0 and 100, got {percent}"
            ));
        }
        let bp = (percent * 100.0).round();
        if (bp - percent * 100.0).abs() > 1e-6 {
            return Err(format!(
                "weight {percent} is finer than the 0.01 resolution; round it to two decimals"
            ));
        }
        // In range and integral, checked above.
        Ok(Self(bp as u16))
    }
}

impl fmt::Display for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.percent())
    }
}

impl Serialize for Weight {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Whole percentages stay integers on the wire, as people write them.
        if self.0.is_multiple_of(100) {
            s.serialize_u64(u64::from(self.0 / 100))
        } else {
            s.serialize_f64(self.percent())
        }
    }
}

impl<'de> Deserialize<'de> for Weight {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Higress hands numbers through a protobuf Struct, so `10` may arrive as `10.0`.
        let percent = f64::deserialize(d)?;
        Weight::from_percent_f64(percent).map_err(de::Error::custom)
    }
}

/// Reads a `u32` that may arrive as a double (`600.0`): Higress passes config through a
/// protobuf `Struct`, whose numbers are all doubles.
fn integral_u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let value = f64::deserialize(d)?;
    if value.fract() != 0.0 || !(0.0..=f64::from(u32::MAX)).contains(&value) {
        return Err(de::Error::custom(format!(
            "expected a whole number of seconds, got {value}"
        )));
    }
    Ok(value as u32)
}

// === impl PluginConfig ===

const RULES_KEY: &str = "_rules_";

impl PluginConfig {
    /// Parses the bytes Envoy passes to `on_configure`. Empty input is an empty config: the
    /// plugin then passes every request through.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        let mut top: serde_json::Map<String, serde_json::Value> = parse(bytes, "")?;
        let rules = match top.remove(RULES_KEY) {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(value) => parse_value(value, RULES_KEY)?,
        };
        let global = if top.is_empty() {
            None
        } else {
            Some(parse_value(serde_json::Value::Object(top), "")?)
        };
        Ok(Self { global, rules })
    }

    /// The JSON Envoy would pass to the plugin for this config.
    pub fn to_json(&self) -> String {
        // Serializing plain data structs into a String cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl Serialize for PluginConfig {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(flatten, skip_serializing_if = "Option::is_none")]
            global: Option<&'a RuleConfig>,
            #[serde(rename = "_rules_", skip_serializing_if = "<[_]>::is_empty")]
            rules: &'a [RuleConfig],
        }
        Wire {
            global: self.global.as_ref(),
            rules: &self.rules,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for PluginConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        let bytes = serde_json::to_vec(&value).map_err(de::Error::custom)?;
        PluginConfig::from_json(&bytes).map_err(de::Error::custom)
    }
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8], prefix: &str) -> Result<T, ConfigError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| shape_error(prefix, e))?;
    de.end().map_err(|e| ConfigError::Shape {
        path: ".".into(),
        message: e.to_string(),
    })?;
    Ok(value)
}

fn parse_value<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
    prefix: &str,
) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| shape_error(prefix, e))
}

fn shape_error<E: fmt::Display>(prefix: &str, e: serde_path_to_error::Error<E>) -> ConfigError {
    let inner = e.path().to_string();
    let path = match (prefix.is_empty(), inner.as_str()) {
        (true, ".") => ".".to_owned(),
        (true, _) => inner,
        (false, ".") => prefix.to_owned(),
        // serde_path_to_error writes sequence indexes as `[i]` and fields as `a.b`.
        (false, _) if inner.starts_with('[') => format!("{prefix}{inner}"),
        (false, _) => format!("{prefix}.{inner}"),
    };
    ConfigError::Shape {
        path,
        message: e.into_inner().to_string(),
    }
}

#[cfg(test)]
mod tests;
