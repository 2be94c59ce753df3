//! The per-request decision: which version serves a request, and why.

use std::fmt;

use subtle::ConstantTimeEq;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::compile::{Group, Rule};
use crate::config::Weight;
use crate::matcher::{cookie, query_param_matches, split_path};

/// Number of buckets: one per basis point, so a bucket is canary iff it is below the weight.
const BUCKETS: u16 = 10_000;

/// The request as the decision sees it. The host supplies only what the rule asks for.
pub trait Request {
    /// A request header by its lowercase name, one of [`Rule::request_headers`].
    fn header(&self, name: &str) -> Option<&str>;
    /// `:path` with its query string; asked only when [`Rule::needs_path`] is true.
    fn path(&self) -> Option<&str>;
}

/// Which version serves a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    Stable,
    Canary,
}

impl Version {
    pub const ALL: [Version; 2] = [Version::Stable, Version::Canary];

    /// The `version` label of the plugin's metrics and the value of the version header.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Stable => "stable",
            Version::Canary => "canary",
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A position in 0..10,000. Requests in buckets below the weight (in basis points) go to the
/// canary, so raising the weight only ever moves buckets from stable to canary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bucket(u16);

impl Bucket {
    pub fn new(value: u16) -> Option<Self> {
        (value < BUCKETS).then_some(Self(value))
    }

    /// A bucket from a random number the host drew.
    pub fn from_random(random: u64) -> Self {
        // The modulo bias of a 64-bit draw over 10,000 buckets is below 1e-15.
        Self((random % u64::from(BUCKETS)) as u16)
    }

    /// The bucket of a sticky key (a user id) within a release.
    pub fn from_key(salt: u64, key: &str) -> Self {
        Self::from_random(xxh3_64_with_seed(key.as_bytes(), salt))
    }

    pub fn get(self) -> u16 {
        self.0
    }

    fn is_canary_at(self, weight: Weight) -> bool {
        self.0 < weight.basis_points()
    }
}

/// Where a request's bucket came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketSource {
    StickyHeader,
    StickyCookie,
    /// The bucket cookie the plugin issued on an earlier response.
    BucketCookie,
    /// Drawn for this request only.
    Random,
}

/// Why a request went where it went; logged by the filter at debug level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The override header forced the version.
    Override,
    /// The match group at this index matched.
    Match(usize),
    /// The request's bucket against the weight.
    Weight {
        bucket: Bucket,
        source: BucketSource,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Override => f.write_str("override header"),
            Reason::Match(i) => write!(f, "matches[{i}]"),
            Reason::Weight { bucket, source } => write!(f, "bucket {} ({source:?})", bucket.0),
        }
    }
}

/// What the filter acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub version: Version,
    pub reason: Reason,
    /// A bucket to store in the bucket cookie on the response, for an anonymous request that
    /// drew one while the release is split.
    pub issue_bucket_cookie: Option<Bucket>,
}

// === impl Rule ===

impl Rule {
    /// Decides where a request goes: a forced override first, then any match group, then the
    /// request's bucket against the weight. `random` is used only when no sticky key exists.
    pub fn decide(&self, request: &impl Request, random: u64) -> Decision {
        if let Some(version) = self.forced_version(request) {
            return Decision {
                version,
                reason: Reason::Override,
                issue_bucket_cookie: None,
            };
        }
        if let Some(i) = self.groups.iter().position(|g| g.matches(request)) {
            return Decision {
                version: Version::Canary,
                reason: Reason::Match(i),
                issue_bucket_cookie: None,
            };
        }
        let (bucket, source) = self.bucket(request, random);
        let version = if bucket.is_canary_at(self.weight) {
            Version::Canary
        } else {
            Version::Stable
        };
        let split = self.weight != Weight::ZERO && self.weight != Weight::FULL;
        let issue = source == BucketSource::Random
            && split
            && self
                .sticky
                .as_ref()
                .is_some_and(|s| s.bucket_cookie.is_some());
        Decision {
            version,
            reason: Reason::Weight { bucket, source },
            issue_bucket_cookie: issue.then_some(bucket),
        }
    }

    fn forced_version(&self, request: &impl Request) -> Option<Version> {
        let o = self.override_.as_ref()?;
        let value = request.header(&o.header)?.trim();
        let version = if value.eq_ignore_ascii_case("canary") {
            Version::Canary
        } else if value.eq_ignore_ascii_case("stable") {
            Version::Stable
        } else {
            return None;
        };
        if let Some((secret_header, secret)) = &o.secret {
            let given = request.header(secret_header)?;
            if !bool::from(given.as_bytes().ct_eq(secret.as_bytes())) {
                return None;
            }
        }
        Some(version)
    }

    fn bucket(&self, request: &impl Request, random: u64) -> (Bucket, BucketSource) {
        if let Some(sticky) = &self.sticky {
            let key = sticky
                .header
                .as_deref()
                .and_then(|h| request.header(h))
                .filter(|k| !k.is_empty());
            if let Some(key) = key {
                return (Bucket::from_key(self.salt, key), BucketSource::StickyHeader);
            }
            let cookies = request.header("cookie");
            let key = sticky
                .cookie
                .as_deref()
                .zip(cookies)
                .and_then(|(name, h)| cookie(h, name));
            if let Some(key) = key.filter(|k| !k.is_empty()) {
                return (Bucket::from_key(self.salt, key), BucketSource::StickyCookie);
            }
            let stored = sticky
                .bucket_cookie
                .as_ref()
                .zip(cookies)
                .and_then(|((name, _), h)| cookie(h, name))
                .and_then(|v| v.parse::<u16>().ok())
                .and_then(Bucket::new);
            if let Some(bucket) = stored {
                return (bucket, BucketSource::BucketCookie);
            }
        }
        (Bucket::from_random(random), BucketSource::Random)
    }

    /// The `Set-Cookie` value that stores `bucket` in this rule's bucket cookie.
    pub fn bucket_cookie(&self, bucket: Bucket) -> Option<String> {
        let (name, max_age) = self.sticky.as_ref()?.bucket_cookie.as_ref()?;
        Some(format!(
            "{name}={}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax",
            bucket.0
        ))
    }

    /// `<namespace>/<name>` of the release; the metrics' `rollout` label.
    pub fn rollout(&self) -> &str {
        &self.rollout
    }

    pub fn tag_header(&self) -> &str {
        &self.tag_header
    }

    pub fn tag_value(&self) -> &str {
        &self.tag_value
    }

    pub fn weight(&self) -> Weight {
        self.weight
    }

    /// Response header naming the version, if the rule asks for one.
    pub fn version_header(&self) -> Option<&str> {
        self.version_header.as_deref()
    }

    /// The lowercase request headers [`Rule::decide`] may read; the host reads only these.
    pub fn request_headers(&self) -> &[String] {
        &self.request_headers
    }

    /// Whether [`Rule::decide`] reads `:path`.
    pub fn needs_path(&self) -> bool {
        self.needs_path
    }
}

// === impl Group ===

impl Group {
    fn matches(&self, request: &impl Request) -> bool {
        let headers_match = self
            .headers
            .iter()
            .all(|(name, m)| request.header(name).is_some_and(|v| m.matches(v)));
        if !headers_match {
            return false;
        }
        if !self.cookies.is_empty() {
            let Some(cookies) = request.header("cookie") else {
                return false;
            };
            if !self
                .cookies
                .iter()
                .all(|(name, m)| cookie(cookies, name).is_some_and(|v| m.matches(v)))
            {
                return false;
            }
        }
        if self.path.is_none() && self.query_params.is_empty() {
            return true;
        }
        let Some(full_path) = request.path() else {
            return false;
        };
        let (path, query) = split_path(full_path);
        self.path.as_ref().is_none_or(|m| m.matches(path))
            && self
                .query_params
                .iter()
                .all(|(name, m)| query_param_matches(query, name, m))
    }
}

#[cfg(test)]
mod tests;
