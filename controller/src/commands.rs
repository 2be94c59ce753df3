//! The CLI's cluster commands, with the same wire effects as `kubectl-kruise`'s so either tool
//! can drive a release:
//! - `approve`: a merge patch of `status.canaryStatus.currentStepState: StepReady` on the
//!   `/status` subresource, only while the step is `StepPaused`;
//! - `pause` / `resume`: a merge patch of `spec.strategy.paused`;
//! - `abort`: the annotation [`ABORT_ANNOTATION`] naming the release's `canaryRevision`
//!   (higress-canary's own; Kruise has no abort);
//! - `undo`: the Deployment's pod template replaced by the stable ReplicaSet's (during a
//!   release) or the previous revision's, like `kubectl-kruise rollout undo`;
//! - `status`: a table of Rollouts, then each one's latest analysis results.
//!
//! They return what to print; the binary prints it. This is CLI code: errors are `anyhow`,
//! worded for a person.

use std::fmt::Write as _;

use anyhow::{bail, Context as _, Result};
use canary_core::config::{MatchGroup, MatchType, RuleConfig, ValueMatch};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use kube::{
    api::{Api, ListParams, Patch, PatchParams},
    Client, ResourceExt,
};
use serde_json::json;

use crate::{
    crd::{Rollout, RolloutPhase, StepState},
    keys::{ABORT_ANNOTATION, POD_TEMPLATE_HASH},
    observed::spec_replicas,
    reconcile::FIELD_MANAGER,
    revision::template_hash,
    validate::Names,
};

/// The cluster commands, in one namespace.
#[derive(Clone)]
pub struct Commands {
    client: Client,
    namespace: String,
}

impl Commands {
    pub fn new(client: Client, namespace: impl Into<String>) -> Self {
        Self {
            client,
            namespace: namespace.into(),
        }
    }

    fn rollouts(&self) -> Api<Rollout> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn params() -> PatchParams {
        PatchParams {
            field_manager: Some(format!("{FIELD_MANAGER}-cli")),
            ..Default::default()
        }
    }

    async fn get(&self, name: &str) -> Result<Rollout> {
        self.rollouts()
            .get_opt(name)
            .await
            .with_context(|| format!("reading Rollout {name} in namespace {}", self.namespace))?
            .with_context(|| format!("Rollout {name} not found in namespace {}", self.namespace))
    }

    /// Approves the step waiting for approval.
    pub async fn approve(&self, name: &str) -> Result<String> {
        let rollout = self.get(name).await?;
        let Some(cs) = rollout.canary_status() else {
            bail!("Rollout {name} has no release in progress; nothing to approve");
        };
        if cs.current_step_state != StepState::StepPaused {
            bail!(
                "Rollout {name} is not waiting for approval: step {} is in state {:?}",
                cs.current_step_index,
                cs.current_step_state
            );
        }
        let patch = json!({"status": {"canaryStatus": {"currentStepState": StepState::StepReady}}});
        self.rollouts()
            .patch_status(name, &Self::params(), &Patch::Merge(&patch))
            .await
            .with_context(|| format!("approving Rollout {name}"))?;
        Ok(format!(
            "rollout.rollouts.kruise.io/{name} approved (step {})",
            cs.current_step_index
        ))
    }

    /// Sets `spec.strategy.paused`.
    pub async fn set_paused(&self, name: &str, paused: bool) -> Result<String> {
        let rollout = self.get(name).await?;
        let verb = if paused { "paused" } else { "resumed" };
        if rollout.spec.strategy.paused == paused {
            return Ok(format!("rollout.rollouts.kruise.io/{name} already {verb}"));
        }
        let patch = json!({"spec": {"strategy": {"paused": paused}}});
        self.rollouts()
            .patch(name, &Self::params(), &Patch::Merge(&patch))
            .await
            .with_context(|| format!("setting spec.strategy.paused of Rollout {name}"))?;
        Ok(format!("rollout.rollouts.kruise.io/{name} {verb}"))
    }

    /// Aborts the release in progress: traffic back to stable, canary removed.
    pub async fn abort(&self, name: &str) -> Result<String> {
        let rollout = self.get(name).await?;
        let progressing = rollout
            .status
            .as_ref()
            .is_some_and(|s| s.phase == Some(RolloutPhase::Progressing));
        let revision = rollout
            .canary_status()
            .map(|c| c.canary_revision.clone())
            .filter(|r| !r.is_empty());
        let (true, Some(revision)) = (progressing, revision) else {
            bail!("Rollout {name} has no release in progress; nothing to abort");
        };
        let patch = json!({"metadata": {"annotations": {ABORT_ANNOTATION: revision}}});
        self.rollouts()
            .patch(name, &Self::params(), &Patch::Merge(&patch))
            .await
            .with_context(|| format!("annotating Rollout {name}"))?;
        Ok(format!(
            "rollout.rollouts.kruise.io/{name} aborting the release of revision {revision}: \
             traffic goes back to stable, then the canary is removed"
        ))
    }

    /// Reverts the Deployment's pod template: to the stable ReplicaSet's during a release,
    /// else to `to_revision` (a `deployment.kubernetes.io/revision`) or the previous revision.
    pub async fn undo(&self, name: &str, to_revision: Option<i64>) -> Result<String> {
        let rollout = self.get(name).await?;
        let names = Names::of(&rollout);
        let Some(deployment_name) = names.deployment else {
            bail!("Rollout {name} names no Deployment (spec.objectRef.workloadRef)");
        };
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), &self.namespace);
        let deployment = deployments
            .get_opt(&deployment_name)
            .await
            .with_context(|| format!("reading Deployment {deployment_name}"))?
            .with_context(|| {
                format!(
                    "Deployment {deployment_name} not found in namespace {}",
                    self.namespace
                )
            })?;
        let uid = deployment.metadata.uid.clone().unwrap_or_default();
        let replica_sets: Vec<ReplicaSet> =
            Api::<ReplicaSet>::namespaced(self.client.clone(), &self.namespace)
                .list(&ListParams::default())
                .await
                .context("listing ReplicaSets")?
                .items
                .into_iter()
                .filter(|rs| {
                    rs.owner_references()
                        .iter()
                        .any(|o| o.controller == Some(true) && o.uid == uid)
                })
                .collect();
        let revision_of = |rs: &ReplicaSet| -> i64 {
            rs.annotations()
                .get("deployment.kubernetes.io/revision")
                .and_then(|r| r.parse().ok())
                .unwrap_or(0)
        };
        let current = template_hash(&deployment.spec.template);
        let stable_hash = rollout
            .canary_status()
            .and_then(|c| c.stable_revision.clone())
            .filter(|_| {
                rollout
                    .status
                    .as_ref()
                    .is_some_and(|s| s.phase == Some(RolloutPhase::Progressing))
            });
        let target = match (to_revision, stable_hash) {
            (Some(wanted), _) => replica_sets
                .iter()
                .find(|rs| revision_of(rs) == wanted)
                .with_context(|| format!("Deployment {deployment_name} has no revision {wanted}"))?,
            (None, Some(hash)) => replica_sets
                .iter()
                .find(|rs| rs.labels().get(POD_TEMPLATE_HASH) == Some(&hash))
                .with_context(|| {
                    format!("the stable ReplicaSet ({POD_TEMPLATE_HASH}={hash}) of Deployment {deployment_name} is gone")
                })?,
            (None, None) => {
                let mut older: Vec<&ReplicaSet> = replica_sets
                    .iter()
                    .filter(|rs| {
                        rs.spec
                            .template
                            .as_ref()
                            .is_some_and(|t| template_hash(t) != current)
                    })
                    .collect();
                older.sort_by_key(|rs| revision_of(rs));
                *older.last().with_context(|| {
                    format!("Deployment {deployment_name} has no previous revision to go back to")
                })?
            }
        };
        let mut template = target
            .spec
            .template
            .clone()
            .context("the ReplicaSet has no pod template")?;
        if let Some(labels) = template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
            labels.remove(POD_TEMPLATE_HASH);
        }
        if template_hash(&template) == current {
            return Ok(format!(
                "deployment.apps/{deployment_name} skipped rollback (current template already \
                 matches revision {})",
                revision_of(target)
            ));
        }
        let ops = json!([{"op": "replace", "path": "/spec/template", "value": template}]);
        let patch: json_patch::Patch = serde_json::from_value(ops).context("building the patch")?;
        deployments
            .patch(&deployment_name, &Self::params(), &Patch::Json::<()>(patch))
            .await
            .with_context(|| format!("reverting Deployment {deployment_name}"))?;
        Ok(format!(
            "deployment.apps/{deployment_name} rolled back to revision {}",
            revision_of(target)
        ))
    }

    /// The status table of one Rollout, or of all in the namespace.
    pub async fn status(&self, name: Option<&str>) -> Result<String> {
        let rollouts = match name {
            Some(name) => vec![self.get(name).await?],
            None => {
                let mut items = self
                    .rollouts()
                    .list(&ListParams::default())
                    .await
                    .with_context(|| format!("listing Rollouts in namespace {}", self.namespace))?
                    .items;
                items.sort_by_key(|r| r.name_any());
                items
            }
        };
        if rollouts.is_empty() {
            return Ok(format!("No Rollouts in namespace {}.\n", self.namespace));
        }
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), &self.namespace);
        let mut rows = Vec::with_capacity(rollouts.len());
        for rollout in &rollouts {
            let names = Names::of(rollout);
            let stable = match &names.deployment {
                Some(d) => deployments
                    .get_opt(d)
                    .await
                    .context("reading the Deployment")?,
                None => None,
            };
            let canary = match &names.canary_deployment {
                Some(d) => deployments
                    .get_opt(d)
                    .await
                    .context("reading the canary Deployment")?,
                None => None,
            };
            rows.push(StatusRow::of(rollout, stable.as_ref(), canary.as_ref()));
        }
        let mut out = table(&rows);
        if let [only] = rollouts.as_slice() {
            if let Some(message) = only.status.as_ref().and_then(|s| s.message.as_deref()) {
                let _ = writeln!(out, "\n{message}");
            }
        }
        for rollout in &rollouts {
            if let Some(state) = rollout.canary_status().and_then(|c| c.analysis.as_ref()) {
                let _ = write!(
                    out,
                    "\n{}: {}",
                    rollout.name_any(),
                    crate::analysis::describe_status(state)
                );
            }
        }
        Ok(out)
    }
}

/// One line of `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRow {
    pub name: String,
    pub phase: String,
    pub step: String,
    pub state: String,
    pub weight: String,
    pub matches: String,
    /// Available/desired canary pods.
    pub canary: String,
    /// Available/desired pods of the stable Deployment.
    pub stable: String,
}

impl StatusRow {
    pub fn of(rollout: &Rollout, stable: Option<&Deployment>, canary: Option<&Deployment>) -> Self {
        let status = rollout.status.as_ref();
        let cs = rollout
            .canary_status()
            .filter(|_| status.is_some_and(|s| s.phase == Some(RolloutPhase::Progressing)));
        let steps = rollout.step_count();
        let rule = rollout.plugin_rule();
        let pods = |d: Option<&Deployment>| match d {
            Some(d) => format!(
                "{}/{}",
                d.status
                    .as_ref()
                    .and_then(|s| s.available_replicas)
                    .unwrap_or(0),
                spec_replicas(d)
            ),
            None => "-".to_owned(),
        };
        StatusRow {
            name: rollout.name_any(),
            phase: status
                .and_then(|s| s.phase)
                .map_or("-".to_owned(), |p| format!("{p:?}")),
            step: cs.map_or("-".to_owned(), |c| {
                format!("{}/{steps}", c.current_step_index)
            }),
            state: cs.map_or("-".to_owned(), |c| format!("{:?}", c.current_step_state)),
            weight: rule.map_or("-".to_owned(), |r| r.weight.to_string()),
            matches: rule.map_or("-".to_owned(), describe_matches),
            canary: pods(canary),
            stable: pods(stable),
        }
    }
}

/// The rule's match groups as text: `user-agent=android | cookie:beta=1 & path^=/api/`.
pub fn describe_matches(rule: &RuleConfig) -> String {
    if rule.matches.is_empty() {
        return "-".to_owned();
    }
    rule.matches
        .iter()
        .map(describe_group)
        .collect::<Vec<_>>()
        .join(" | ")
}

fn describe_group(group: &MatchGroup) -> String {
    let op = |t: &MatchType| match t {
        MatchType::Exact => "=",
        MatchType::Prefix => "^=",
        MatchType::RegularExpression => "~=",
    };
    let value =
        |prefix: &str, m: &ValueMatch| format!("{prefix}{}{}{}", m.name, op(&m.r#type), m.value);
    let mut parts: Vec<String> = Vec::new();
    parts.extend(group.headers.iter().map(|m| value("", m)));
    parts.extend(group.cookies.iter().map(|m| value("cookie:", m)));
    parts.extend(group.query_params.iter().map(|m| value("query:", m)));
    if let Some(path) = &group.path {
        parts.push(format!("path{}{}", op(&path.r#type), path.value));
    }
    parts.join(" & ")
}

/// Left-aligned columns, like kubectl's tables.
pub fn table(rows: &[StatusRow]) -> String {
    let header = [
        "NAME", "PHASE", "STEP", "STATE", "WEIGHT", "MATCHES", "CANARY", "STABLE",
    ];
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.phase.clone(),
                r.step.clone(),
                r.state.clone(),
                r.weight.clone(),
                r.matches.clone(),
                r.canary.clone(),
                r.stable.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let last = cells.len() - 1;
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i == last {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<w$}   ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in &cells {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use canary_core::config::Weight;

    #[test]
    fn matches_read_as_conditions_ored_by_group() {
        let rule = RuleConfig {
            weight: Weight::from_percent(10).expect("a percentage"),
            matches: vec![
                MatchGroup {
                    headers: vec![ValueMatch {
                        name: "user-agent".into(),
                        r#type: MatchType::Exact,
                        value: "android".into(),
                    }],
                    ..Default::default()
                },
                MatchGroup {
                    cookies: vec![ValueMatch {
                        name: "beta".into(),
                        r#type: MatchType::RegularExpression,
                        value: "1|yes".into(),
                    }],
                    path: Some(canary_core::config::PathMatch {
                        r#type: MatchType::Prefix,
                        value: "/api/".into(),
                    }),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert_eq!(
            describe_matches(&rule),
            "user-agent=android | cookie:beta~=1|yes & path^=/api/"
        );
    }

    #[test]
    fn a_rollout_without_release_shows_dashes() {
        let rollout = Rollout::new("demo", Default::default());
        let row = StatusRow::of(&rollout, None, None);
        let text = table(&[row]);
        assert_eq!(
            text,
            "NAME   PHASE   STEP   STATE   WEIGHT   MATCHES   CANARY   STABLE\n\
             demo   -       -      -       -        -         -        -\n"
        );
    }
}
