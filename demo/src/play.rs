//! The director: plays the stories against the sandbox as a user would (server-side apply,
//! `kubectl set image`, `kubectl-kruise rollout approve`), and records, for every step, the
//! window in which its routing was in force at the gateway, and for a release its analysis
//! rolled back, when and why.

use std::{
    fmt::Debug,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use higress_canary::{
    commands::Commands,
    config::PluginConfig,
    crd::{condition, Rollout, RolloutPhase, StepState},
    observe::wasm_plugin_api,
    render::{self, PluginRef},
};
use k8s_openapi::{
    api::{apps::v1::Deployment, core::v1::Service, networking::v1::Ingress},
    NamespaceResourceScope,
};
use kube::{
    api::{Api, DeleteParams, Patch, PatchParams, PostParams},
    Client, Resource,
};
use sandbox::{cluster::Cluster, gateway::http, sim::ERROR_RATE_ANNOTATION};
use serde::{de::DeserializeOwned, Deserialize as _};
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::{
    board::{Board, StoryState},
    judge::{self, percent, Requirement, Window},
    report::{Rollback, StorySpan},
    story::{self, Ending, Story, CLIENTS},
    traffic::Log,
};

pub const NAMESPACE: &str = "default";
/// Field manager of the demo's applies, like `kubectl apply --server-side`'s.
const MANAGER: &str = "higress-canary-demo";
/// How long any one wait may take before the demo gives up (a release step takes seconds).
const PATIENCE: Duration = Duration::from_secs(120);
/// After the gateway acknowledged a config, let every Envoy worker pick it up before judging.
const SETTLE: Duration = Duration::from_millis(500);
const POLL: Duration = Duration::from_millis(100);

/// How the director paces the stories.
#[derive(Debug, Clone)]
pub struct Pace {
    /// How long each step (and each finished release) is watched before moving on.
    pub step: Duration,
}

pub struct Director<'a> {
    cluster: &'a Cluster,
    client: Client,
    board: Board,
    log: Log,
    pace: Pace,
    /// Enter presses, with `--interactive`.
    enter: Option<UnboundedReceiver<()>>,
    /// The version the app runs now.
    version: String,
    /// The Rollout of the previous story, still in the cluster.
    previous: Option<String>,
    pub windows: Vec<Window>,
    pub stories: Vec<StorySpan>,
}

impl<'a> Director<'a> {
    pub fn new(
        cluster: &'a Cluster,
        board: Board,
        log: Log,
        pace: Pace,
        enter: Option<UnboundedReceiver<()>>,
    ) -> Self {
        Self {
            cluster,
            client: cluster.api.client(),
            board,
            log,
            pace,
            enter,
            version: String::new(),
            previous: None,
            windows: Vec::new(),
            stories: Vec::new(),
        }
    }

    /// The version the app runs now.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The image tags of every pod seen so far, by pod name.
    fn pods(&self) -> judge::PodVersions {
        self.board.lock().pod_versions.clone()
    }

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), NAMESPACE)
    }

    fn rollouts(&self) -> Api<Rollout> {
        Api::namespaced(self.client.clone(), NAMESPACE)
    }

    /// `kubectl apply --server-side` of every document of a YAML stream.
    pub async fn apply(&self, yaml: &str) -> Result<()> {
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            let value = Value::deserialize(doc).context("parsing a scenario document")?;
            if value.is_null() {
                continue;
            }
            match value["kind"].as_str().unwrap_or_default() {
                "Deployment" => self.apply_one::<Deployment>(&value).await?,
                "Service" => self.apply_one::<Service>(&value).await?,
                "Ingress" => self.apply_one::<Ingress>(&value).await?,
                "Rollout" => self.apply_one::<Rollout>(&value).await?,
                other => bail!("unexpected kind {other:?} in a scenario file"),
            }
        }
        Ok(())
    }

    async fn apply_one<K>(&self, value: &Value) -> Result<()>
    where
        K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
        K::DynamicType: Default,
    {
        let name = value["metadata"]["name"]
            .as_str()
            .context("a scenario object without metadata.name")?;
        let kind = value["kind"].as_str().unwrap_or_default();
        Api::<K>::namespaced(self.client.clone(), NAMESPACE)
            .patch(
                name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(value),
            )
            .await
            .with_context(|| format!("applying {kind} {name}"))?;
        self.board.event(format!("applied {kind}/{name}"));
        Ok(())
    }

    /// Creates the shared WasmPlugin, empty, as the install manifests (`deploy/`) do before any
    /// Rollout exists. Left to the controller, it would be created at the first step, and
    /// adding a Wasm filter changes Envoy's listener: keep-alive connections then move to
    /// the new listener only as Envoy drains the old one (gradually, over seconds at this
    /// request rate), so the first step would be judged while part of the traffic still
    /// bypassed the plugin.
    pub async fn install_plugin(&self, plugin: &PluginRef) -> Result<()> {
        let object = render::wasm_plugin(plugin, &PluginConfig::default());
        wasm_plugin_api(&self.client, plugin)
            .create(&PostParams::default(), &serde_json::from_value(object)?)
            .await
            .with_context(|| format!("creating WasmPlugin {}/{}", plugin.namespace, plugin.name))?;
        self.board.event(format!(
            "installed WasmPlugin {}/{} (no rules yet; the controller fills them in)",
            plugin.namespace, plugin.name
        ));
        Ok(())
    }

    /// Waits until the gateway answers `version` to 20 requests in a row.
    pub async fn wait_served(&mut self, version: &str) -> Result<()> {
        self.board
            .activity(format!("waiting for the gateway to serve {version}"), None);
        let gateway = self.cluster.gateway.listener_addr();
        let start = Instant::now();
        let mut streak = 0;
        let mut last = String::new();
        while streak < 20 {
            match http::get(gateway, "/version", &[]).await {
                Ok(r) if r.status == 200 && r.text() == version => streak += 1,
                Ok(r) => {
                    streak = 0;
                    last = format!("{} {:?}", r.status, r.text());
                }
                Err(e) => {
                    streak = 0;
                    last = e.to_string();
                }
            }
            if start.elapsed() > PATIENCE {
                bail!(
                    "the gateway does not serve {version} after {PATIENCE:?}; last answer: {last}"
                );
            }
            if streak == 0 {
                tokio::time::sleep(POLL).await;
            }
        }
        self.cluster
            .gateway
            .synced()
            .await
            .context("waiting for the gateway to apply the current config")?;
        self.version = version.to_owned();
        self.board.event(format!(
            "the gateway serves {version} at http://{gateway}/version"
        ));
        Ok(())
    }

    /// Polls a Rollout until `pred` holds, showing `what` meanwhile.
    async fn wait_rollout(
        &self,
        name: &str,
        what: &str,
        pred: impl Fn(&Rollout) -> bool,
    ) -> Result<Rollout> {
        self.board.activity(format!("waiting for {what}"), None);
        let start = Instant::now();
        loop {
            let rollout = self.rollouts().get(name).await?;
            if pred(&rollout) {
                return Ok(rollout);
            }
            if start.elapsed() > PATIENCE {
                bail!(
                    "Rollout {name}: no {what} after {PATIENCE:?}; status: {}",
                    serde_json::to_string_pretty(&rollout.status).unwrap_or_default()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The gateway runs the API's current config, and every Envoy worker had time to see it.
    async fn gateway_settled(&self) -> Result<()> {
        self.board
            .activity("waiting for the gateway to apply it", None);
        self.cluster
            .gateway
            .synced()
            .await
            .context("waiting for the gateway to apply the current config")?;
        tokio::time::sleep(SETTLE).await;
        Ok(())
    }

    /// Holds for the step's pace, or until Enter with `--interactive` (once stdin is closed,
    /// for the pace again).
    async fn hold(&mut self, what: &str) {
        if let Some(enter) = &mut self.enter {
            while enter.try_recv().is_ok() {}
            self.board.activity(format!("press Enter to {what}"), None);
            if enter.recv().await.is_some() {
                return;
            }
            self.board
                .event("stdin is closed: approving after each step's pace from now on");
            self.enter = None;
        }
        let deadline = Instant::now() + self.pace.step;
        self.board.activity(what, Some(deadline));
        tokio::time::sleep_until(deadline.into()).await;
    }

    /// Plays one story: replaces the previous story's Rollout with this one, releases
    /// `story.new_version` through it, and judges every step.
    pub async fn play(&mut self, index: usize, story: &Story, rollout_yaml: &str) -> Result<()> {
        let rollout = story::parse_rollout(rollout_yaml)?;
        let name = rollout
            .metadata
            .name
            .clone()
            .context("the story's Rollout has no name")?;
        let steps = story::plan(&rollout, CLIENTS)
            .with_context(|| format!("story {}: {}", index + 1, story.rollout_file))?;
        let from = self.version.clone();
        let new = story.new_version;
        self.stories.push(StorySpan {
            title: story.title.to_owned(),
            from_version: from.clone(),
            new_version: new.to_owned(),
            start: self.board.elapsed(),
            rollback: None,
        });
        self.board.set_story(StoryState {
            index,
            count: story::STORIES.len(),
            title: story.title.to_owned(),
            rollout: name.clone(),
            from_version: from.clone(),
            new_version: new.to_owned(),
        });
        let plan: Vec<String> = steps
            .iter()
            .enumerate()
            .map(|(k, s)| format!("{}) {}", k + 1, s.config))
            .collect();
        self.board.event(format!(
            "▶ story {}/{}: {} with Rollout {name} ({}), {from} → {new}; steps: {}, then all",
            index + 1,
            story::STORIES.len(),
            story.title,
            story.rollout_file,
            plan.join(", ")
        ));

        if let Some(previous) = self.previous.take() {
            // One Rollout per Deployment: the finished one goes (its finalizer releases the
            // Deployment), then the next one adopts it.
            self.rollouts()
                .delete(&previous, &DeleteParams::default())
                .await
                .with_context(|| format!("deleting Rollout {previous}"))?;
            self.board.event(format!("deleted Rollout {previous}"));
            self.board
                .activity(format!("waiting for Rollout {previous} to be gone"), None);
            let start = Instant::now();
            while self.rollouts().get_opt(&previous).await?.is_some() {
                if start.elapsed() > PATIENCE {
                    bail!("Rollout {previous} is still there {PATIENCE:?} after its deletion");
                }
                tokio::time::sleep(POLL).await;
            }
        }

        self.apply(rollout_yaml).await?;
        let deployment = rollout
            .spec
            .object_ref
            .workload_ref
            .as_ref()
            .map(|w| w.name.clone())
            .context("the story's Rollout names no Deployment")?;
        self.wait_rollout(&name, "the controller to adopt the Deployment", |r| {
            r.status.as_ref().and_then(|s| s.phase) == Some(RolloutPhase::Healthy)
        })
        .await?;
        self.set_image(&deployment, new, story.error_rate).await?;

        // Nobody approves a release its analysis decides.
        let approved_steps = if story.ending == Ending::Released {
            &steps[..]
        } else {
            &[]
        };
        for (k, step) in approved_steps.iter().enumerate() {
            let k = k + 1;
            let n = steps.len();
            let what = format!("step {k}/{n}: canary pods, routing, grace period");
            self.wait_rollout(&name, &what, |r| {
                r.canary_status().is_some_and(|c| {
                    usize::try_from(c.current_step_index) == Ok(k)
                        && c.current_step_state == StepState::StepPaused
                })
            })
            .await?;
            if !step.needs_approval {
                bail!("step {k}/{n} pauses for a duration; the demo plays approval steps only");
            }
            self.gateway_settled().await?;
            self.board.event(format!(
                "step {k}/{n} in force ({}): watching the traffic",
                step.config
            ));
            self.watch(
                &format!("approve step {k}/{n}"),
                Window {
                    story: index,
                    step: format!("{k}/{n}"),
                    config: step.config.clone(),
                    new_version: new.to_owned(),
                    start: Duration::ZERO,
                    end: Duration::ZERO,
                    expected: step.expected.clone(),
                    requirement: None,
                },
            )
            .await;
            let approved = Commands::new(self.client.clone(), NAMESPACE)
                .approve(&name)
                .await?;
            self.board.event(approved);
        }

        match story.ending {
            Ending::Released => {
                self.wait_rollout(
                    &name,
                    &format!("the full release: {deployment} rolls to {new}, then the canary goes"),
                    |r| {
                        r.status.as_ref().is_some_and(|s| {
                            s.phase == Some(RolloutPhase::Healthy)
                                && s.condition("Succeeded").is_some_and(|c| c.status == "True")
                        })
                    },
                )
                .await?;
                self.board.event(format!("Rollout {name} released {new}"));
                self.gateway_settled().await?;
                self.watch(
                    "go on",
                    Window {
                        story: index,
                        step: "released".to_owned(),
                        config: "no rule: all new".to_owned(),
                        new_version: new.to_owned(),
                        start: Duration::ZERO,
                        end: Duration::ZERO,
                        expected: vec![1.0; CLIENTS.len()],
                        requirement: None,
                    },
                )
                .await;
                self.version = new.to_owned();
            }
            Ending::RolledBackByAnalysis => self.rolled_back(index, &name, &from, new).await?,
        }
        self.previous = Some(name);
        Ok(())
    }

    /// The end of a release nobody approves: waits until the Rollout is finished either way,
    /// marks when and why its analysis rolled it back, then judges that no traffic reaches
    /// the released version any more.
    async fn rolled_back(
        &mut self,
        index: usize,
        name: &str,
        stable: &str,
        new: &str,
    ) -> Result<()> {
        self.board.event(format!(
            "nobody approves: each step advances by itself only while the analysis' checks \
             hold, and a failing check rolls the release back ({new} answers 500 to some \
             requests)"
        ));
        let done = self
            .wait_rollout(
                name,
                "the analysis' verdict (it queries Prometheus every interval)",
                |r| {
                    r.status.as_ref().is_some_and(|s| {
                        s.phase == Some(RolloutPhase::Healthy)
                            && s.condition(condition::SUCCEEDED).is_some()
                    })
                },
            )
            .await?;
        let status = done.status.as_ref();
        let describe = |r#type: &str| {
            status.and_then(|s| s.condition(r#type)).map_or_else(
                || (String::new(), format!("{type}: none", type = r#type)),
                |c| {
                    (
                        c.status.clone(),
                        format!("{}={} ({}): {}", r#type, c.status, c.reason, c.message),
                    )
                },
            )
        };
        let (succeeded, succeeded_text) = describe(condition::SUCCEEDED);
        let (analysis, analysis_text) = describe(condition::ANALYSIS);
        let met = succeeded == condition::FALSE && analysis == condition::FALSE;
        let reason = status
            .and_then(|s| s.condition(condition::ANALYSIS))
            .map_or_else(String::new, |c| c.message.clone());
        if met {
            if let Some(story) = self.stories.last_mut() {
                story.rollback = Some(Rollback {
                    at: self.board.elapsed(),
                    reason: reason.clone(),
                });
            }
            self.board.event(format!(
                "⟲ Rollout {name} rolled back by its analysis: {reason}; traffic back to {stable}"
            ));
        } else {
            self.board.event(format!(
                "Rollout {name} was NOT rolled back by its analysis: {succeeded_text}; \
                 {analysis_text}"
            ));
        }
        self.gateway_settled().await?;
        self.watch(
            "go on",
            Window {
                story: index,
                step: "rolled back".to_owned(),
                config: "rolled back by analysis, traffic back to stable".to_owned(),
                new_version: new.to_owned(),
                start: Duration::ZERO,
                end: Duration::ZERO,
                expected: vec![0.0; CLIENTS.len()],
                requirement: Some(Requirement {
                    found: format!("{succeeded_text}; {analysis_text}"),
                    met,
                }),
            },
        )
        .await;
        Ok(())
    }

    /// `kubectl set image deployment/<name> <first container>=<image with tag>`, with the
    /// sandbox's `error-rate` annotation in the pod template when the version is to fail.
    async fn set_image(&self, deployment: &str, tag: &str, error_rate: Option<&str>) -> Result<()> {
        let current = self.deployments().get(deployment).await?;
        let container = current
            .spec
            .template
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .context("the Deployment has no container")?;
        let image = container.image.as_deref().unwrap_or_default();
        let base = image.rsplit_once(':').map_or(image, |(base, _)| base);
        let mut patch = json!({"spec": {"template": {"spec": {"containers": [
            {"name": container.name, "image": format!("{base}:{tag}")}
        ]}}}});
        if let Some(rate) = error_rate {
            patch["spec"]["template"]["metadata"] =
                json!({"annotations": {ERROR_RATE_ANNOTATION: rate}});
        }
        self.deployments()
            .patch(
                deployment,
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await
            .with_context(|| format!("setting the image of Deployment {deployment}"))?;
        self.board.event(format!(
            "kubectl set image deployment/{deployment} {}={base}:{tag}",
            container.name
        ));
        if let Some(rate) = error_rate {
            self.board.event(format!(
                "its pods answer 500 to a share of {rate} of their requests (pod template \
                 annotation {ERROR_RATE_ANNOTATION})"
            ));
        }
        Ok(())
    }

    /// Watches a configuration in force from now on: holds (for the pace, or until Enter),
    /// goes on collecting until every group of clients has enough answers to be judged (or
    /// the demo's patience runs out, and the verdict says too few), then records the window.
    async fn watch(&mut self, what: &str, mut window: Window) {
        window.start = self.board.elapsed();
        self.hold(what).await;
        let since = Instant::now();
        loop {
            window.end = self.board.elapsed();
            let pods = self.pods();
            let enough = judge::judge(std::slice::from_ref(&window), &self.log.lock(), &pods)
                .iter()
                .all(|c| c.requests >= judge::MIN_REQUESTS);
            if enough || since.elapsed() > PATIENCE {
                break;
            }
            self.board.activity(
                format!("collecting answers to judge this step, then {what}"),
                None,
            );
            tokio::time::sleep(POLL).await;
        }
        self.record(window);
    }

    /// Keeps a judged window and tells how it looks.
    fn record(&mut self, window: Window) {
        let pods = self.pods();
        let checks = judge::judge(std::slice::from_ref(&window), &self.log.lock(), &pods);
        let names: Vec<&str> = CLIENTS.iter().map(|c| c.name).collect();
        let summary: Vec<String> = checks
            .iter()
            .map(|c| {
                format!(
                    "{}: {} of {} answers from {} (configured {}) {}",
                    judge::client_names(&c.clients, &names),
                    percent(c.observed()),
                    c.requests,
                    window.new_version,
                    percent(c.expected),
                    judge::verdict(c)
                )
            })
            .collect();
        self.board.event(format!(
            "step {} judged over {:.1}s: {}",
            window.step,
            (window.end - window.start).as_secs_f64(),
            summary.join("; ")
        ));
        self.windows.push(window);
    }
}
