//! What the demo plays, as data: the traffic's clients and the stories. A story is a Rollout
//! (a seed scenario, or one of the demo's own), the image it releases and how it ends;
//! everything else (steps, weights, matches, what each client should see) is read from the
//! Rollout itself, so a story is added by adding an entry to [`STORIES`].

use anyhow::{bail, Context as _, Result};
use canary_core::{
    config::{PluginConfig, RuleConfig},
    Reason, Request, Router, Version,
};
use higress_canary::{commands::describe_matches, crd::Rollout, validate::Release};

use crate::report::Group;

/// One kind of client in the continuous traffic: one keep-alive connection sending its
/// `user-agent` on every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    /// Short name for tables and bars.
    pub name: &'static str,
    pub user_agent: &'static str,
}

/// The traffic: `android` is what the A/B story's Rollout matches; the others must not be.
pub const CLIENTS: &[Client] = &[
    Client {
        name: "android",
        user_agent: "android",
    },
    Client {
        name: "iphone",
        user_agent: "iphone",
    },
    Client {
        name: "curl",
        user_agent: "curl/8.5.0",
    },
    Client {
        name: "browser",
        user_agent: "Mozilla/5.0 (X11; Linux x86_64)",
    },
];

/// The curves of the report's chart: the client the A/B story matches, and the others.
pub const CHART_GROUPS: &[Group] = &[
    Group {
        name: "android",
        clients: &[0],
        colour: "#e8590c",
    },
    Group {
        name: "other clients",
        clients: &[1, 2, 3],
        colour: "#1c7ed6",
    },
];

/// How a story must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Every step approved, then full release: every client gets the new version.
    Released,
    /// Nobody approves: the Rollout's metric analysis fails and aborts the release, and
    /// every client gets the stable version again.
    RolledBackByAnalysis,
}

/// Where a story's Rollout comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A seed scenario file (`../shared/scenarios`, or the controller's copies).
    Seed,
    /// One of the demo's own scenarios (`demo/scenarios/`), built in.
    Demo(&'static str),
}

/// One release played end to end.
#[derive(Debug, Clone, Copy)]
pub struct Story {
    pub title: &'static str,
    /// The scenario file holding the Rollout.
    pub rollout_file: &'static str,
    pub source: Source,
    /// The image tag released (pods answer their tag).
    pub new_version: &'static str,
    /// The share of requests the new version's pods answer with 500 (the sandbox's
    /// `error-rate` knob, set in the pod template with the new image); such answers are
    /// expected, not failures of the demo.
    pub error_rate: Option<&'static str>,
    pub ending: Ending,
}

/// The stories, in order. Each starts from where the previous one left the app.
pub const STORIES: &[Story] = &[
    Story {
        title: "canary release",
        rollout_file: "rollout-canary.yaml",
        source: Source::Seed,
        new_version: "v2",
        error_rate: None,
        ending: Ending::Released,
    },
    Story {
        title: "A/B testing",
        rollout_file: "rollout-ab.yaml",
        source: Source::Seed,
        new_version: "v3",
        error_rate: None,
        ending: Ending::Released,
    },
    Story {
        title: "analysis rollback",
        rollout_file: "rollout-analysis.yaml",
        source: Source::Demo(include_str!("../scenarios/rollout-analysis.yaml")),
        new_version: "v4",
        error_rate: Some("0.2"),
        ending: Ending::RolledBackByAnalysis,
    },
];

/// The versions whose pods answer 500 by design: their 500s are expected.
pub fn faulty_versions() -> Vec<&'static str> {
    STORIES
        .iter()
        .filter(|s| s.error_rate.is_some())
        .map(|s| s.new_version)
        .collect()
}

/// The Rollout of a scenario file (its only document).
pub fn parse_rollout(yaml: &str) -> Result<Rollout> {
    serde_yaml::from_str(yaml).context("parsing the Rollout")
}

/// A step as the demo judges it: what is configured and what each client should see.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedStep {
    /// "weight 10%", "user-agent=android", "weight 10% + user-agent=android".
    pub config: String,
    /// Per client (in [`CLIENTS`] order), the share of its requests the new version should
    /// answer.
    pub expected: Vec<f64>,
    /// Waits for approval (`pause: {}`), as opposed to `pause.duration`.
    pub needs_approval: bool,
}

/// The steps of a Rollout, validated the way the controller validates them.
pub fn plan(rollout: &Rollout, clients: &[Client]) -> Result<Vec<PlannedStep>> {
    let release = Release::from_rollout(rollout)
        .map_err(|e| anyhow::anyhow!("{}: {}", e.reason, e.message))
        .context("the story's Rollout is not valid")?;
    release
        .steps
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let Some(rule) = &step.rule else {
                // Traffic follows pod counts there, which is not a configured share to judge.
                bail!(
                    "step {} has neither weight nor matches; the demo judges only routed steps",
                    i + 1
                );
            };
            Ok(PlannedStep {
                config: describe_rule(rule),
                expected: expected_shares(rule, clients)?,
                needs_approval: step.pause_seconds.is_none(),
            })
        })
        .collect()
}

/// The configured routing of a rule, in one phrase.
pub fn describe_rule(rule: &RuleConfig) -> String {
    let weight = format!("weight {}", rule.weight);
    match (rule.weight.basis_points(), rule.matches.is_empty()) {
        (_, true) => weight,
        (0, false) => describe_matches(rule),
        (_, false) => format!("{weight} + {}", describe_matches(rule)),
    }
}

/// The share of each client's requests a rule sends to the new version: 1 or 0 where a match
/// group decides (the plugin's own decision, from its core), else the weight.
pub fn expected_shares(rule: &RuleConfig, clients: &[Client]) -> Result<Vec<f64>> {
    let config = PluginConfig {
        global: None,
        rules: vec![rule.clone()],
    };
    let router = Router::new(&config).context("the step's plugin rule does not validate")?;
    let (_, compiled) = router
        .rules()
        .next()
        .context("invariant: a router built from one rule has it")?;
    Ok(clients
        .iter()
        .map(|client| {
            let decision = compiled.decide(&ClientRequest(client), 0);
            match decision.reason {
                Reason::Weight { .. } => rule.weight.percent() / 100.0,
                Reason::Match(_) | Reason::Override => {
                    if decision.version == Version::Canary {
                        1.0
                    } else {
                        0.0
                    }
                }
            }
        })
        .collect())
}

/// A request of the demo's traffic, as the plugin's core sees it.
struct ClientRequest<'a>(&'a Client);

impl Request for ClientRequest<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        (name == "user-agent").then_some(self.0.user_agent)
    }

    fn path(&self) -> Option<&str> {
        Some("/version")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(name: &str) -> Rollout {
        let path = format!(
            "{}/../controller/tests/fixtures/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        parse_rollout(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn the_canary_story_sends_10_then_30_percent_of_every_client() {
        let steps = plan(&seed("rollout-canary.yaml"), CLIENTS).unwrap();
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[0].config, "weight 10%");
        assert_eq!(steps[0].expected, vec![0.1; CLIENTS.len()]);
        assert_eq!(steps[1].config, "weight 30%");
        assert_eq!(steps[1].expected, vec![0.3; CLIENTS.len()]);
        assert!(steps.iter().all(|s| s.needs_approval));
    }

    #[test]
    fn the_ab_story_sends_all_android_requests_and_nothing_else() {
        let steps = plan(&seed("rollout-ab.yaml"), CLIENTS).unwrap();
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0].config, "user-agent=android");
        assert_eq!(steps[0].expected, vec![1.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn the_analysis_story_releases_automatically_with_a_success_rate_check() {
        let Source::Demo(yaml) = STORIES[2].source else {
            panic!("story 3 is the demo's own")
        };
        let rollout = parse_rollout(yaml).unwrap();
        let steps = plan(&rollout, CLIENTS).unwrap();
        assert_eq!(steps[0].config, "weight 20%");
        assert!(steps.iter().all(|s| !s.needs_approval), "nobody approves");
        let analysis = rollout
            .spec
            .strategy
            .canary
            .as_ref()
            .and_then(|c| c.analysis.as_ref())
            .expect("an analysis spec");
        assert!(analysis.success_rate.is_some());
        assert_eq!(faulty_versions(), vec!["v4"]);
    }

    #[test]
    fn a_step_with_weight_and_matches_gives_the_weight_to_the_others() {
        let mut rollout = seed("rollout-ab.yaml");
        let canary = rollout.spec.strategy.canary.as_mut().unwrap();
        canary.steps[0].weight = Some(20);
        let steps = plan(&rollout, CLIENTS).unwrap();
        assert_eq!(steps[0].config, "weight 20% + user-agent=android");
        assert_eq!(steps[0].expected, vec![1.0, 0.2, 0.2, 0.2]);
    }
}
