//! Content hashes that identify what is being released.
//!
//! A Deployment's pod-template-hash is computed by the Deployment controller and only
//! appears on ReplicaSets; to tell "the template changed" from "the template went back to the
//! stable one" the controller hashes templates itself, the way Kruise's `ComputeHash` does.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use xxhash_rust::xxh3::xxh3_64;

use crate::{crd::CanaryStrategy, keys::POD_TEMPLATE_HASH};

/// The revision of a pod template: equal for a Deployment's template and the template of the
/// ReplicaSet it created (which carries the extra `pod-template-hash` label).
pub fn template_hash(template: &PodTemplateSpec) -> String {
    let mut template = template.clone();
    if let Some(labels) = template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(POD_TEMPLATE_HASH);
    }
    hash_json(&template)
}

/// The hash of a release plan, stored as `canaryStatus.rolloutHash`. Pauses and the failure
/// threshold are left out, as in Kruise: changing them does not recompute the current step.
/// So is the analysis (an extension): changed checks apply from the next run on.
pub fn strategy_hash(canary: &CanaryStrategy) -> String {
    let mut canary = canary.clone();
    canary.failure_threshold = None;
    canary.analysis = None;
    for step in &mut canary.steps {
        step.pause = Default::default();
        step.analysis = None;
    }
    hash_json(&canary)
}

fn hash_json<T: serde::Serialize>(value: &T) -> String {
    // Serializing plain data (string-keyed maps; the analysis, whose floats could be NaN, is
    // left out) cannot fail;
    // struct fields and BTreeMaps serialize in a fixed order, so equal values hash equally.
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    format!("{:016x}", xxh3_64(&bytes))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::{
        api::core::v1::{Container, PodSpec},
        apimachinery::pkg::apis::meta::v1::ObjectMeta,
    };

    use super::*;
    use crate::crd::{CanaryStep, RolloutPause};

    fn template(image: &str, extra_label: Option<(&str, &str)>) -> PodTemplateSpec {
        let mut labels = BTreeMap::from([("app".to_owned(), "demo".to_owned())]);
        if let Some((k, v)) = extra_label {
            labels.insert(k.to_owned(), v.to_owned());
        }
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(labels),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "main".into(),
                    image: Some(image.into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }
    }

    #[test]
    fn replica_set_template_hashes_like_its_deployment_template() {
        let deployment = template("demo:v1", None);
        let replica_set = template("demo:v1", Some((POD_TEMPLATE_HASH, "5d8f")));
        assert_eq!(template_hash(&deployment), template_hash(&replica_set));
    }

    #[test]
    fn a_new_image_is_a_new_revision() {
        assert_ne!(
            template_hash(&template("demo:v1", None)),
            template_hash(&template("demo:v2", None))
        );
    }

    #[test]
    fn pauses_do_not_change_the_strategy_hash_but_weights_do() {
        let step = |weight, pause| CanaryStep {
            weight: Some(weight),
            pause: RolloutPause { duration: pause },
            ..Default::default()
        };
        let plan = |steps| CanaryStrategy {
            steps,
            ..Default::default()
        };
        let base = strategy_hash(&plan(vec![step(10, None)]));
        assert_eq!(base, strategy_hash(&plan(vec![step(10, Some(60))])));
        assert_ne!(base, strategy_hash(&plan(vec![step(20, None)])));
    }
}
