//! Small helpers shared by the simulated controllers: label selectors, int-or-percent
//! values, owner references, times and the image tag a pod server answers with.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::{
    apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference, Time},
    util::intstr::IntOrString,
};

/// `metav1.Time` as the API stores it: whole seconds (RFC 3339 without fraction). Building
/// conditions from truncated times keeps an in-memory status equal to its round-tripped copy.
pub fn api_time(now: Timestamp) -> Time {
    Time(Timestamp::from_second(now.as_second()).unwrap_or(now))
}

/// Go's `omitempty` on an `int32`: zero counts are absent from the JSON a real server returns.
pub fn nz(v: i32) -> Option<i32> {
    (v != 0).then_some(v)
}

/// `intstr.GetScaledValueFromIntOrPercent`: an int is taken as is, `"N%"` is N percent of
/// `total`, rounded up or down. Anything else is an error (API validation rejects it).
pub fn scaled_value(v: &IntOrString, total: i32, round_up: bool) -> Result<i32, String> {
    match v {
        IntOrString::Int(i) => Ok(*i),
        IntOrString::String(s) => {
            let Some(pct) = s.strip_suffix('%') else {
                return Err(format!(
                    "invalid value for IntOrString {s:?}: string is not a percentage"
                ));
            };
            let pct: i64 = pct.parse().map_err(|_| {
                format!("invalid value for IntOrString {s:?}: not an integer percentage")
            })?;
            let scaled = pct as f64 * f64::from(total) / 100.0;
            Ok(if round_up {
                scaled.ceil()
            } else {
                scaled.floor()
            } as i32)
        }
    }
}

/// Whether `labels` satisfy a `metav1.LabelSelector` (matchLabels AND matchExpressions).
/// An empty selector matches everything, as `LabelSelectorAsSelector` makes it.
pub fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = sel.match_expressions.iter().flatten().all(|req| {
        let values = req.values.as_deref().unwrap_or_default();
        let value = labels.get(&req.key);
        match req.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

/// Whether a selector selects nothing in particular (`{}`), which the deployment controller
/// refuses to act on.
pub fn selector_is_empty(sel: &LabelSelector) -> bool {
    sel.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
        && sel.match_expressions.as_ref().is_none_or(Vec::is_empty)
}

/// A Service's map selector (`spec.selector`) against pod labels. Callers skip Services
/// without a selector: their Endpoints are managed by hand.
pub fn map_selector_matches(
    sel: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The owner reference marked `controller: true`, if any (`metav1.GetControllerOf`).
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// Whether `meta` is controlled by the object with this uid and kind.
pub fn is_controlled_by(meta: &ObjectMeta, kind: &str, uid: &str) -> bool {
    controller_of(meta).is_some_and(|r| r.kind == kind && r.uid == uid)
}

/// `metav1.NewControllerRef`: the reference a controller puts on what it creates.
pub fn controller_ref(api_version: &str, kind: &str, owner: &ObjectMeta) -> OwnerReference {
    OwnerReference {
        api_version: api_version.to_owned(),
        kind: kind.to_owned(),
        name: owner.name.clone().unwrap_or_default(),
        uid: owner.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Annotation lookup.
pub fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

/// Creation time for sorting; objects not yet created sort as "now" (newest).
pub fn created(meta: &ObjectMeta, now: Timestamp) -> Timestamp {
    meta.creation_timestamp.as_ref().map_or(now, |t| t.0)
}

/// The tag a pod server answers with: `registry.example/version:v2` → `v2`; no tag →
/// `latest`. A digest (`@sha256:…`) is ignored, and a registry port (`host:5000/img`) is
/// not a tag.
pub fn image_tag(image: &str) -> &str {
    let name = image.split('@').next().unwrap_or(image);
    let last_segment = name.rsplit('/').next().unwrap_or(name);
    match last_segment.rsplit_once(':') {
        Some((_, tag)) if !tag.is_empty() => tag,
        _ => "latest",
    }
}

/// Characters Kubernetes uses for generated names and hashes (`rand.SafeEncodeString`):
/// no vowels, no ambiguous digits.
pub const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// A 5-character suffix like the one `generateName` gets from the API server.
pub fn random_suffix() -> String {
    let bytes = *uuid::Uuid::new_v4().as_bytes();
    bytes[..5]
        .iter()
        .map(|b| char::from(SAFE_ALPHABET[usize::from(*b) % SAFE_ALPHABET.len()]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn percentages_round_up_for_surge_and_down_for_unavailable() {
        let pct = IntOrString::String("25%".into());
        assert_eq!(scaled_value(&pct, 5, true), Ok(2));
        assert_eq!(scaled_value(&pct, 5, false), Ok(1));
        assert_eq!(scaled_value(&pct, 4, true), Ok(1));
        assert_eq!(scaled_value(&pct, 3, false), Ok(0));
        assert_eq!(scaled_value(&IntOrString::Int(3), 10, false), Ok(3));
        assert!(scaled_value(&IntOrString::String("3".into()), 10, false).is_err());
    }

    #[test]
    fn image_tags_follow_the_reference_grammar() {
        for (image, tag) in [
            ("registry.example/version:v2", "v2"),
            (
                "registry.cn-hangzhou.aliyuncs.com/mse-ingress/version:v1",
                "v1",
            ),
            ("nginx", "latest"),
            ("localhost:5000/app", "latest"),
            ("localhost:5000/app:1.2", "1.2"),
            ("app:v3@sha256:abcd", "v3"),
            ("app@sha256:abcd", "latest"),
        ] {
            assert_eq!(image_tag(image), tag, "{image}");
        }
    }

    #[test]
    fn selectors_support_expressions() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("app", "demo")])),
            match_expressions: Some(vec![
                LabelSelectorRequirement {
                    key: "tier".into(),
                    operator: "In".into(),
                    values: Some(vec!["web".into(), "api".into()]),
                },
                LabelSelectorRequirement {
                    key: "canary".into(),
                    operator: "DoesNotExist".into(),
                    values: None,
                },
            ]),
        };
        assert!(selector_matches(
            &sel,
            &labels(&[("app", "demo"), ("tier", "web")])
        ));
        assert!(!selector_matches(
            &sel,
            &labels(&[("app", "demo"), ("tier", "db")])
        ));
        assert!(!selector_matches(
            &sel,
            &labels(&[("app", "demo"), ("tier", "web"), ("canary", "1")])
        ));
        assert!(selector_matches(&LabelSelector::default(), &labels(&[])));
        assert!(selector_is_empty(&LabelSelector::default()));
    }

    #[test]
    fn random_suffixes_use_the_safe_alphabet() {
        let s = random_suffix();
        assert_eq!(s.len(), 5);
        assert!(s.bytes().all(|b| SAFE_ALPHABET.contains(&b)));
    }
}
