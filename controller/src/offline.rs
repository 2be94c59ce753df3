//! `higress-canary render`: what each step of a Rollout would apply, without a cluster.
//!
//! Input is YAML (one or more documents, from one or more files) holding a Rollout and,
//! optionally, the Deployment and Ingress it names; output is, per step, the shared WasmPlugin
//! with this Rollout's rule and the canary Ingress, as YAML documents. It uses the same
//! functions as the controller ([`Release::from_rollout`], [`crate::resources`],
//! [`crate::render`]), so what it prints is what the controller would write.

use std::fmt::Write as _;

use k8s_openapi::api::{apps::v1::Deployment, networking::v1::Ingress};
use kube::ResourceExt;
use serde::Deserialize;

use crate::{
    crd::Rollout,
    observed::spec_replicas,
    render::{rules_config, wasm_plugin, PluginRef},
    resources::{canary_ingress, canary_ingress_annotations},
    validate::{Invalid, Release},
};

/// What went wrong, worded for the command line.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("reading YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
    #[error("no Rollout (apiVersion rollouts.kruise.io/v1alpha1) in the input")]
    NoRollout,
    #[error("{0} Rollouts in the input; pass one at a time")]
    ManyRollouts(usize),
    #[error("the Rollout is invalid ({}): {}", .0.reason, .0.message)]
    Invalid(Invalid),
    #[error("--step {step}: the Rollout has steps 1 to {count}")]
    NoSuchStep { step: usize, count: usize },
}

/// Options of `render`.
#[derive(Debug, Clone, Default)]
pub struct RenderOptions {
    /// Only this step (1-based); all steps when `None`.
    pub step: Option<usize>,
    /// Namespace for a Rollout without one (default `default`).
    pub namespace: Option<String>,
    pub plugin: PluginRef,
}

/// Renders the steps of the Rollout found in `inputs` (YAML texts).
pub fn render(inputs: &[String], options: &RenderOptions) -> Result<String, RenderError> {
    let mut rollouts = Vec::new();
    let mut deployments = Vec::new();
    let mut ingresses = Vec::new();
    for input in inputs {
        for doc in serde_yaml::Deserializer::from_str(input) {
            let value = serde_yaml::Value::deserialize(doc)?;
            if value.is_null() {
                continue;
            }
            match (value["apiVersion"].as_str(), value["kind"].as_str()) {
                (Some("rollouts.kruise.io/v1alpha1"), Some("Rollout")) => {
                    rollouts.push(serde_yaml::from_value::<Rollout>(value)?)
                }
                (Some("apps/v1"), Some("Deployment")) => {
                    deployments.push(serde_yaml::from_value::<Deployment>(value)?)
                }
                (Some("networking.k8s.io/v1"), Some("Ingress")) => {
                    ingresses.push(serde_yaml::from_value::<Ingress>(value)?)
                }
                _ => {}
            }
        }
    }
    let mut rollout = match rollouts.len() {
        0 => return Err(RenderError::NoRollout),
        1 => rollouts.remove(0),
        n => return Err(RenderError::ManyRollouts(n)),
    };
    let namespace = rollout
        .namespace()
        .or_else(|| options.namespace.clone())
        .unwrap_or_else(|| "default".to_owned());
    rollout.metadata.namespace = Some(namespace.clone());
    let release = Release::from_rollout(&rollout).map_err(RenderError::Invalid)?;
    let in_namespace = |ns: Option<String>| ns.as_deref().unwrap_or(&namespace) == namespace;
    let deployment = deployments
        .iter()
        .find(|d| d.name_any() == release.deployment && in_namespace(d.namespace()));
    let ingress = ingresses
        .iter()
        .find(|i| i.name_any() == release.ingress && in_namespace(i.namespace()));
    let total = deployment.map(spec_replicas);

    let count = release.steps.len();
    let steps: Vec<usize> = match options.step {
        Some(step) if step == 0 || step > count => {
            return Err(RenderError::NoSuchStep { step, count })
        }
        Some(step) => vec![step],
        None => (1..=count).collect(),
    };

    let mut out = String::new();
    for index in steps {
        let step = &release.steps[index - 1];
        let pause = match step.pause_seconds {
            None => "then waits for approval".to_owned(),
            Some(s) => format!("then waits {s}s"),
        };
        let _ = writeln!(
            out,
            "# Step {index}/{count} of Rollout {}/{}: {}; {pause}.",
            release.names.namespace,
            release.names.rollout,
            step.describe(total)
        );
        let config = rules_config(step.rule.clone()).config;
        out.push_str(&to_yaml(&wasm_plugin(&options.plugin, &config))?);
        out.push_str("---\n");
        if step.rule.is_none() {
            let _ = writeln!(
                out,
                "# No canary route in this step: stable and canary pods share Service {}.",
                release.service
            );
        }
        match ingress {
            Some(stable) => {
                out.push_str(&to_yaml(&canary_ingress(&rollout, &release, stable))?);
            }
            None => {
                let _ = writeln!(
                    out,
                    "# spec: the paths of Ingress {} that lead to Service {}, with backend {} \
                     (pass the Ingress with -f to render it).",
                    release.ingress, release.service, release.canary_service
                );
                let mut skeleton = Ingress::default();
                skeleton.metadata.name = Some(release.canary_ingress.clone());
                skeleton.metadata.namespace = Some(namespace.clone());
                skeleton.metadata.annotations =
                    Some(canary_ingress_annotations(&release, &Ingress::default()));
                out.push_str(&to_yaml(&skeleton)?);
            }
        }
        out.push_str("---\n");
    }
    Ok(out)
}

fn to_yaml<T: serde::Serialize>(value: &T) -> Result<String, RenderError> {
    Ok(serde_yaml::to_string(value)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::step::sim::{DEMO_APP, ROLLOUT_AB, ROLLOUT_CANARY};

    fn docs(out: &str) -> Vec<serde_yaml::Value> {
        serde_yaml::Deserializer::from_str(out)
            .map(|d| serde_yaml::Value::deserialize(d).expect("output is YAML"))
            .filter(|v| !v.is_null())
            .collect()
    }

    #[test]
    fn every_step_renders_a_wasmplugin_and_a_canary_ingress() {
        let out = render(
            &[ROLLOUT_CANARY.to_owned(), DEMO_APP.to_owned()],
            &RenderOptions::default(),
        )
        .expect("renders");
        let docs = docs(&out);
        assert_eq!(docs.len(), 4, "{out}");
        assert_eq!(docs[0]["kind"], "WasmPlugin");
        let config = &docs[0]["spec"]["matchRules"][0]["config"];
        assert_eq!(config["weight"].as_u64(), Some(10));
        assert_eq!(config["rollout"], "default/rollouts-demo");
        assert_eq!(
            docs[2]["spec"]["matchRules"][0]["config"]["weight"].as_u64(),
            Some(30)
        );
        let ingress = &docs[1];
        assert_eq!(ingress["kind"], "Ingress");
        assert_eq!(ingress["metadata"]["name"], "demo-canary");
        assert_eq!(
            ingress["metadata"]["annotations"]["higress.io/canary"],
            "true"
        );
        assert_eq!(
            ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"],
            "demo-canary"
        );
        assert!(out
            .contains("# Step 1/2 of Rollout default/rollouts-demo: 10% of traffic, 1 canary pod"));
    }

    #[test]
    fn one_step_can_be_rendered_without_the_ingress() {
        let out = render(
            &[ROLLOUT_AB.to_owned()],
            &RenderOptions {
                step: Some(1),
                namespace: Some("shop".into()),
                ..Default::default()
            },
        )
        .expect("renders");
        let docs = docs(&out);
        assert_eq!(docs.len(), 2);
        let rule = &docs[0]["spec"]["matchRules"][0];
        assert_eq!(rule["ingress"][0], "shop/demo");
        assert_eq!(
            rule["config"]["matches"][0]["headers"][0]["value"],
            "android"
        );
        assert_eq!(
            docs[1]["metadata"]["annotations"]["higress.io/canary-by-header-value"],
            "rollouts-header"
        );
        assert!(out.contains("pass the Ingress with -f"));
    }

    #[test]
    fn a_step_out_of_range_is_an_error() {
        let err = render(
            &[ROLLOUT_AB.to_owned()],
            &RenderOptions {
                step: Some(3),
                ..Default::default()
            },
        )
        .expect_err("no step 3");
        assert_eq!(err.to_string(), "--step 3: the Rollout has steps 1 to 1");
    }

    #[test]
    fn an_invalid_rollout_is_an_error_that_says_what_to_fix() {
        let bad = ROLLOUT_CANARY.replace("weight: 30", "weight: 130");
        let err = render(&[bad], &RenderOptions::default()).expect_err("invalid");
        assert!(
            err.to_string()
                .contains("weight must be between 0 and 100, got 130"),
            "{err}"
        );
    }

    #[test]
    fn input_without_a_rollout_is_an_error() {
        let err = render(&[DEMO_APP.to_owned()], &RenderOptions::default()).expect_err("none");
        assert!(matches!(err, RenderError::NoRollout));
    }
}
