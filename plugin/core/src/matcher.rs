//! Compiled conditions and the request parsing they need (cookies, query string, path).
//! Everything here is built at config time; matching allocates only to percent-decode a
//! query parameter that is actually encoded.

use regex::{Regex, RegexBuilder};

use crate::config::MatchType;

/// Upper bound on a compiled regex, so one config cannot make the VM grow without limit.
const REGEX_SIZE_LIMIT: usize = 256 * 1024;
/// Upper bound on the lazy DFA's cache per regex.
const REGEX_DFA_SIZE_LIMIT: usize = 256 * 1024;
/// Upper bound on a pattern's length; longer patterns are almost certainly a mistake.
pub(crate) const REGEX_MAX_PATTERN_LEN: usize = 4096;

/// One compiled comparison.
#[derive(Debug, Clone)]
pub(crate) enum ValueMatcher {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

impl ValueMatcher {
    /// Compiles a condition; the error is a message for the caller to put behind a path.
    pub(crate) fn new(kind: MatchType, value: &str) -> Result<Self, String> {
        Ok(match kind {
            MatchType::Exact => Self::Exact(value.to_owned()),
            MatchType::Prefix => Self::Prefix(value.to_owned()),
            MatchType::RegularExpression => {
                if value.len() > REGEX_MAX_PATTERN_LEN {
                    return Err(format!(
                        "regular expression is {} bytes long; the limit is {REGEX_MAX_PATTERN_LEN}",
                        value.len()
                    ));
                }
                // Anchored so that the pattern must match the whole value, as in Envoy.
                let regex = RegexBuilder::new(&format!("^(?:{value})$"))
                    .size_limit(REGEX_SIZE_LIMIT)
                    .dfa_size_limit(REGEX_DFA_SIZE_LIMIT)
                    .build()
                    .map_err(|e| format!("invalid regular expression: {e}"))?;
                Self::Regex(regex)
            }
        })
    }

    pub(crate) fn matches(&self, candidate: &str) -> bool {
        match self {
            Self::Exact(v) => candidate == v,
            Self::Prefix(v) => candidate.starts_with(v.as_str()),
            Self::Regex(r) => r.is_match(candidate),
        }
    }
}

/// The value of cookie `name` in a `Cookie` header (`a=1; b=2`), without surrounding quotes.
pub(crate) fn cookie<'h>(header: &'h str, name: &str) -> Option<&'h str> {
    header.split(';').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key.trim() == name).then(|| {
            let value = value.trim();
            value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value)
        })
    })
}

/// Splits `:path` into the path and the query string (without `?`; fragment dropped).
pub(crate) fn split_path(path: &str) -> (&str, &str) {
    let path = path.split_once('#').map_or(path, |(p, _)| p);
    path.split_once('?').unwrap_or((path, ""))
}

/// Whether any occurrence of query parameter `name` (percent-decoded) satisfies `matcher`.
pub(crate) fn query_param_matches(query: &str, name: &str, matcher: &ValueMatcher) -> bool {
    form_urlencoded::parse(query.as_bytes()).any(|(k, v)| k == name && matcher.matches(&v))
}
