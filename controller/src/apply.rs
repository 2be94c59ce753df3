//! Writes a [`Plan`] in the order its docs prescribe: the object changes (stopping at the
//! first error), then the Rollout's status with the resourceVersion it was planned from, then
//! the Events, then — if the plan changed this Rollout's plugin rule — the shared WasmPlugin,
//! rendered from every Rollout's status.
//!
//! Every write uses one field manager ([`crate::reconcile::Settings::field_manager`]). Canary
//! objects are server-side applied (forced: they are the controller's own); Deployment pauses
//! and Service pins are merge patches of one field; finalizers and the status carry the
//! resourceVersion they were computed from, so a concurrent `kubectl-kruise rollout approve`
//! makes the write fail with a conflict (and the reconcile plan again) instead of being undone.

use std::sync::atomic::{AtomicU64, Ordering};

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Service, networking::v1::Ingress};
use kube::{
    api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams},
    runtime::events::{Event as KubeEvent, EventType},
    Client, Resource, ResourceExt,
};
use serde_json::{json, Value};
use tracing::{debug, info, warn};

use crate::{
    crd::Rollout,
    keys::{POD_TEMPLATE_HASH, ROLLOUT_FINALIZER},
    observe::wasm_plugin_api,
    reconcile::Context,
    render::{self, PluginRef},
    step::{Change, Event, EventKind, Plan},
    validate::Names,
    Error, Result,
};

/// What applying a plan did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Object changes made (finalizers included).
    pub changes: usize,
    /// Whether the status was written.
    pub status_written: bool,
    /// Whether the shared WasmPlugin was synced.
    pub plugin_synced: bool,
    /// The finalizer came off a deleted Rollout: it is gone.
    pub released: bool,
}

/// Applies `plan`, computed from `rollout` (as read, with its resourceVersion).
pub async fn apply(ctx: &Context, rollout: &Rollout, plan: &Plan) -> Result<Applied> {
    let names = Names::of(rollout);
    let writer = Writer {
        client: &ctx.client,
        namespace: &names.namespace,
        field_manager: &ctx.settings.field_manager,
    };
    let mut applied = Applied::default();
    let mut resource_version = rollout.resource_version();
    let mut plugin = false;
    for change in &plan.changes {
        match change {
            Change::SetPluginRule(_) => {
                plugin = true;
                continue;
            }
            Change::AddFinalizer => {
                resource_version = writer.finalizer(rollout, resource_version, true).await?;
            }
            Change::RemoveFinalizer => {
                writer
                    .finalizer(rollout, resource_version.clone(), false)
                    .await?;
                applied.released = true;
            }
            other => writer.change(other).await?,
        }
        debug!(change = %describe(change), "applied");
        applied.changes += 1;
    }

    if !applied.released && rollout.status.as_ref() != Some(&plan.status) {
        writer
            .status(rollout, resource_version, &plan.status)
            .await?;
        applied.status_written = true;
    }

    publish(ctx, rollout, &plan.events).await;

    if plugin {
        ctx.plugin
            .sync(
                &ctx.client,
                &ctx.settings.plugin,
                &ctx.settings.field_manager,
            )
            .await?;
        applied.plugin_synced = true;
    }
    Ok(applied)
}

/// A one-line description of a change, for logs.
pub fn describe(change: &Change) -> String {
    match change {
        Change::AddFinalizer => "add finalizer".to_owned(),
        Change::RemoveFinalizer => "remove finalizer".to_owned(),
        Change::PauseDeployment { name, paused } => format!("Deployment {name} paused={paused}"),
        Change::ApplyDeployment(d) => format!(
            "apply Deployment {} replicas={}",
            d.name_any(),
            d.spec.replicas.unwrap_or(1)
        ),
        Change::DeleteDeployment { name } => format!("delete Deployment {name}"),
        Change::ApplyService(s) => format!("apply Service {}", s.name_any()),
        Change::PinService {
            name,
            pod_template_hash,
        } => format!(
            "Service {name} {POD_TEMPLATE_HASH}={}",
            pod_template_hash.as_deref().unwrap_or("(any)")
        ),
        Change::DeleteService { name } => format!("delete Service {name}"),
        Change::ApplyIngress(i) => format!("apply Ingress {}", i.name_any()),
        Change::DeleteIngress { name } => format!("delete Ingress {name}"),
        Change::SetPluginRule(rule) => match rule {
            Some(r) => format!(
                "plugin rule weight={} matches={}",
                r.weight,
                r.matches.len()
            ),
            None => "no plugin rule".to_owned(),
        },
    }
}

struct Writer<'a> {
    client: &'a Client,
    namespace: &'a str,
    field_manager: &'a str,
}

impl Writer<'_> {
    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), self.namespace)
    }

    fn patch_params(&self) -> PatchParams {
        PatchParams {
            field_manager: Some(self.field_manager.to_owned()),
            ..Default::default()
        }
    }

    fn apply_params(&self) -> PatchParams {
        PatchParams::apply(self.field_manager).force()
    }

    async fn change(&self, change: &Change) -> Result<()> {
        match change {
            Change::PauseDeployment { name, paused } => {
                let patch = json!({"spec": {"paused": paused}});
                self.api::<Deployment>()
                    .patch(name, &self.patch_params(), &Patch::Merge(&patch))
                    .await
                    .map_err(|e| Error::kube(format!("pausing Deployment {name}"), e))?;
            }
            Change::ApplyDeployment(d) => {
                let name = d.name_any();
                self.api::<Deployment>()
                    .patch(&name, &self.apply_params(), &Patch::Apply(d.as_ref()))
                    .await
                    .map_err(|e| Error::kube(format!("applying Deployment {name}"), e))?;
            }
            Change::ApplyService(s) => {
                let name = s.name_any();
                self.api::<Service>()
                    .patch(&name, &self.apply_params(), &Patch::Apply(s.as_ref()))
                    .await
                    .map_err(|e| Error::kube(format!("applying Service {name}"), e))?;
            }
            Change::ApplyIngress(i) => {
                let name = i.name_any();
                self.api::<Ingress>()
                    .patch(&name, &self.apply_params(), &Patch::Apply(i.as_ref()))
                    .await
                    .map_err(|e| Error::kube(format!("applying Ingress {name}"), e))?;
            }
            Change::PinService {
                name,
                pod_template_hash,
            } => {
                let patch = json!({"spec": {"selector": {POD_TEMPLATE_HASH: pod_template_hash}}});
                self.api::<Service>()
                    .patch(name, &self.patch_params(), &Patch::Merge(&patch))
                    .await
                    .map_err(|e| Error::kube(format!("pinning Service {name}"), e))?;
            }
            Change::DeleteDeployment { name } => {
                delete(&self.api::<Deployment>(), "Deployment", name).await?
            }
            Change::DeleteService { name } => {
                delete(&self.api::<Service>(), "Service", name).await?
            }
            Change::DeleteIngress { name } => {
                delete(&self.api::<Ingress>(), "Ingress", name).await?
            }
            // Handled by `apply`.
            Change::AddFinalizer | Change::RemoveFinalizer | Change::SetPluginRule(_) => {}
        }
        Ok(())
    }

    /// Adds or removes the finalizer with a merge patch that carries the resourceVersion, so
    /// other finalizers are never lost. Returns the new resourceVersion.
    async fn finalizer(
        &self,
        rollout: &Rollout,
        resource_version: Option<String>,
        add: bool,
    ) -> Result<Option<String>> {
        let mut finalizers: Vec<String> = rollout.finalizers().to_vec();
        finalizers.retain(|f| f != ROLLOUT_FINALIZER);
        if add {
            finalizers.push(ROLLOUT_FINALIZER.to_owned());
        }
        let patch = json!({"metadata": {
            "resourceVersion": resource_version,
            "finalizers": finalizers,
        }});
        let name = rollout.name_any();
        let what = if add { "adding" } else { "removing" };
        let updated = self
            .api::<Rollout>()
            .patch(&name, &self.patch_params(), &Patch::Merge(&patch))
            .await
            .map_err(|e| Error::kube(format!("{what} the finalizer of Rollout {name}"), e))?;
        Ok(updated.resource_version())
    }

    /// Replaces the status, conditional on the resourceVersion the plan was made from.
    async fn status(
        &self,
        rollout: &Rollout,
        resource_version: Option<String>,
        status: &crate::crd::RolloutStatus,
    ) -> Result<()> {
        let name = rollout.name_any();
        let mut body = rollout.clone();
        body.metadata.resource_version = resource_version;
        body.metadata.managed_fields = None;
        body.status = Some(status.clone());
        let params = PostParams {
            field_manager: Some(self.field_manager.to_owned()),
            ..Default::default()
        };
        self.api::<Rollout>()
            .replace_status(&name, &params, &body)
            .await
            .map_err(|e| Error::kube(format!("writing the status of Rollout {name}"), e))?;
        Ok(())
    }
}

/// Deletes in the background; already gone is done.
async fn delete<K>(api: &Api<K>, kind: &str, name: &str) -> Result<()>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(Error::kube(format!("deleting {kind} {name}"), e)),
    }
}

/// Publishes the plan's Events on the Rollout. A failure is logged, never fatal: Events are
/// best effort.
async fn publish(ctx: &Context, rollout: &Rollout, events: &[Event]) {
    if events.is_empty() {
        return;
    }
    let reference = rollout.object_ref(&());
    for event in events {
        match event.kind {
            EventKind::Normal => info!(reason = event.reason, "{}", event.note),
            EventKind::Warning => warn!(reason = event.reason, "{}", event.note),
        }
        let kube_event = KubeEvent {
            type_: match event.kind {
                EventKind::Normal => EventType::Normal,
                EventKind::Warning => EventType::Warning,
            },
            reason: event.reason.to_owned(),
            note: Some(truncate(&event.note, 1024)),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&kube_event, &reference).await {
            warn!(reason = event.reason, error = %e, "could not publish an Event");
        }
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

// === the shared WasmPlugin ===

/// Writes the shared WasmPlugin from every Rollout's status, coalescing concurrent requests.
///
/// A caller asks after writing its Rollout's status and returns once a write has happened that
/// listed the Rollouts after that status write, so the config it wrote includes the caller's
/// rule. Writes are serialized: two reconciles can never write configs from different views in
/// the wrong order, and a burst of requests (many Rollouts stepping at once) is served by one
/// list and one write.
#[derive(Debug, Default)]
pub struct PluginSync {
    requested: AtomicU64,
    written: tokio::sync::Mutex<u64>,
}

impl PluginSync {
    pub async fn sync(
        &self,
        client: &Client,
        plugin: &PluginRef,
        field_manager: &str,
    ) -> Result<()> {
        let ticket = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let mut written = self.written.lock().await;
        if *written >= ticket {
            return Ok(());
        }
        // Every request up to here was made after its status write: the list below sees them.
        let upto = self.requested.load(Ordering::SeqCst);
        write_plugin(client, plugin, field_manager).await?;
        *written = upto;
        Ok(())
    }
}

/// Renders the config from all Rollouts and writes it: creates the WasmPlugin if missing,
/// else replaces `spec.defaultConfig` and `spec.matchRules` with a JSON patch (so rules of
/// finished Rollouts disappear), and does nothing if they are already right.
pub async fn write_plugin(client: &Client, plugin: &PluginRef, field_manager: &str) -> Result<()> {
    let rollouts = Api::<Rollout>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::kube("listing Rollouts", e))?;
    let rendered = render::plugin_config(&rollouts.items);
    for (rollout, error) in &rendered.skipped {
        warn!(rollout = %rollout, error = %error, "plugin rule left out of the shared WasmPlugin");
    }
    let (default_config, match_rules) = render::spec_fields(&rendered.config);
    let match_rules = Value::Array(match_rules);
    let api = wasm_plugin_api(client, plugin);
    let what = format!("WasmPlugin {}/{}", plugin.namespace, plugin.name);
    for _ in 0..3 {
        let current = api
            .get_opt(&plugin.name)
            .await
            .map_err(|e| Error::kube(format!("reading {what}"), e))?;
        let Some(current) = current else {
            let object: DynamicObject =
                serde_json::from_value(render::wasm_plugin(plugin, &rendered.config)).map_err(
                    |source| Error::Encode {
                        what: what.clone(),
                        source,
                    },
                )?;
            let params = PostParams {
                field_manager: Some(field_manager.to_owned()),
                ..Default::default()
            };
            match api.create(&params, &object).await {
                Ok(_) => {
                    info!(plugin = %what, url = %plugin.url, rules = rendered.config.rules.len(), "created the shared WasmPlugin");
                    return Ok(());
                }
                // Created meanwhile: patch it instead.
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(Error::kube(format!("creating {what}"), e)),
            }
        };
        let spec = current.data.get("spec");
        if spec.and_then(|s| s.get("defaultConfig")) == Some(&default_config)
            && spec.and_then(|s| s.get("matchRules")) == Some(&match_rules)
        {
            return Ok(());
        }
        let ops = if spec.is_some_and(Value::is_object) {
            json!([
                {"op": "add", "path": "/spec/defaultConfig", "value": default_config},
                {"op": "add", "path": "/spec/matchRules", "value": match_rules},
            ])
        } else {
            json!([{"op": "add", "path": "/spec", "value": {
                "url": plugin.url,
                "defaultConfig": default_config,
                "matchRules": match_rules,
            }}])
        };
        let patch: json_patch::Patch =
            serde_json::from_value(ops).map_err(|source| Error::Encode {
                what: what.clone(),
                source,
            })?;
        let params = PatchParams {
            field_manager: Some(field_manager.to_owned()),
            ..Default::default()
        };
        api.patch(&plugin.name, &params, &Patch::Json::<()>(patch))
            .await
            .map_err(|e| Error::kube(format!("writing {what}"), e))?;
        debug!(plugin = %what, rules = rendered.config.rules.len(), "wrote the shared WasmPlugin");
        return Ok(());
    }
    Err(Error::Conflict { what })
}
