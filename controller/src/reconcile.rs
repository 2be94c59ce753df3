//! The controller loop, in kube-runtime's shape: a [`Controller`] over all Rollouts, woken by
//! changes to the Deployments, Services and Ingresses they name (stable and canary), to other
//! Rollouts naming the same Deployment or Ingress, and to the shared WasmPlugin. Each
//! [`reconcile`] reads the Rollout fresh and its world mostly from the watches' caches
//! ([`crate::observe`], which says what is read fresh and when a cached view is confirmed),
//! calls the pure [`crate::step::plan`] and writes the plan ([`crate::apply`]);
//! [`error_policy`] retries with a backoff chosen by error kind.
//!
//! All state lives in the API objects (the Rollout's status), so the loop is restart-safe: a
//! controller killed at any moment and started again plans from what it reads.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Service, networking::v1::Ingress};
use kube::{
    api::{Api, DynamicObject, ListParams},
    runtime::{
        controller::{Action, Config as ControllerConfig, Controller},
        events::{Recorder, Reporter},
        reflector::{self, ObjectRef, Store},
        utils::Backoff,
        watcher, WatchStreamExt,
    },
    Client, ResourceExt,
};
use tracing::{debug, info, instrument, warn};

use crate::{
    analysis::{self, Answer, Measurement},
    apply::{apply, PluginSync},
    crd::Rollout,
    metrics::{rollout_key, Metrics},
    observe::{needs_confirmation, observe, wasm_plugin_api, wasm_plugin_resource, Caches, Source},
    prometheus::{self, Prometheus},
    render::{self, PluginRef},
    step,
    validate::Names,
    Error, Result,
};

/// The field manager of every write, and the Events' reporting controller.
pub const FIELD_MANAGER: &str = "higress-canary";
/// Look at every Rollout at least this often, even when nothing wakes it.
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(300);
/// When a reconcile comes before the caches are listed, it is tried again after this.
const CACHES_NOT_READY_RETRY: Duration = Duration::from_millis(100);

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The shared WasmPlugin: where it lives and the plugin `url` it is created with.
    pub plugin: PluginRef,
    /// Field manager of every write.
    pub field_manager: String,
    /// Reconciles running at once (different Rollouts; one Rollout is never reconciled twice
    /// at once).
    pub concurrency: u16,
    /// This replica's name in Events (`reportingInstance`), e.g. the pod name.
    pub instance: Option<String>,
    /// Where reconciles are counted; share it with [`crate::metrics::serve`].
    pub metrics: Arc<Metrics>,
    /// Look at every Rollout at least this often.
    pub resync: Duration,
    /// The Prometheus the metric analysis queries. Without it, steps with analysis get no
    /// verdict (reported in their status) and never pass.
    pub prometheus: Option<prometheus::Endpoint>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            plugin: PluginRef::default(),
            field_manager: FIELD_MANAGER.to_owned(),
            concurrency: 16,
            instance: None,
            metrics: Arc::default(),
            resync: DEFAULT_RESYNC,
            prometheus: None,
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    /// The API client.
    pub client: Client,
    pub settings: Settings,
    /// Publishes Kubernetes Events on Rollouts.
    pub recorder: Recorder,
    /// The controller's cache of Rollouts (for conflicts and for mapping watched objects to
    /// Rollouts; planning reads the Rollout itself fresh).
    pub rollouts: Store<Rollout>,
    /// The caches of Deployments, Services, Ingresses and the WasmPlugin that planning reads
    /// from ([`crate::observe`]).
    pub caches: Caches,
    /// Serialized, coalesced writes of the shared WasmPlugin.
    pub plugin: PluginSync,
    /// The metric analysis' Prometheus, from [`Settings::prometheus`].
    pub prometheus: Option<Prometheus>,
    /// Consecutive failures per Rollout, for the backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// Fails only on unusable [`Settings::prometheus`] settings.
    pub fn new(
        client: Client,
        settings: Settings,
        rollouts: Store<Rollout>,
        caches: Caches,
    ) -> Result<Self> {
        let prometheus = settings
            .prometheus
            .as_ref()
            .map(Prometheus::new)
            .transpose()?;
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: settings.field_manager.clone(),
                instance: settings.instance.clone(),
            },
        );
        Ok(Self {
            client,
            settings,
            recorder,
            rollouts,
            caches,
            plugin: PluginSync::default(),
            prometheus,
            failures: Mutex::default(),
        })
    }

    /// Asks Prometheus the queries of the analysis run due for `rollout`, if one is.
    async fn measure(&self, rollout: &Rollout, key: &str) -> Option<Measurement> {
        let plan = analysis::pending_queries(rollout, Timestamp::now())?;
        let answers = match &self.prometheus {
            Some(prometheus) => prometheus.answer(&plan.queries).await,
            None => plan
                .queries
                .iter()
                .map(|q| {
                    let why = "no Prometheus configured: start the controller with \
                               --prometheus-url";
                    (q.id.clone(), Answer::Error(why.to_owned()))
                })
                .collect(),
        };
        for (id, answer) in &answers {
            self.settings
                .metrics
                .analysis_query(matches!(answer, Answer::Values(_)));
            match answer {
                Answer::Values(values) => {
                    debug!(rollout = %key, query = %id, ?values, "analysis query answered")
                }
                Answer::Error(error) => {
                    warn!(rollout = %key, query = %id, %error, "analysis query failed")
                }
            }
        }
        Some(Measurement {
            step_index: plan.step_index,
            canary_revision: plan.canary_revision,
            answers,
        })
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One reconcile: read fresh, plan, write. See the module docs.
#[instrument(skip(rollout, ctx), fields(rollout = %rollout_key(&rollout)))]
pub async fn reconcile(rollout: Arc<Rollout>, ctx: Arc<Context>) -> Result<Action> {
    let start = Instant::now();
    let key = rollout_key(&rollout);
    let result = reconcile_fresh(&rollout, &ctx, &key).await;
    match &result {
        Ok(_) => {
            ctx.settings.metrics.reconciled(start.elapsed());
            ctx.failures().remove(&key);
        }
        Err(e) => ctx
            .settings
            .metrics
            .failed(e.metric_label(), start.elapsed()),
    }
    result
}

async fn reconcile_fresh(cached: &Rollout, ctx: &Context, key: &str) -> Result<Action> {
    let names = Names::of(cached);
    let api: Api<Rollout> = Api::namespaced(ctx.client.clone(), &names.namespace);
    // The cache may lag behind this controller's own last status write; plan from the
    // current object so the status write below does not conflict with ourselves.
    let Some(rollout) = api
        .get_opt(&names.rollout)
        .await
        .map_err(|e| Error::kube(format!("reading Rollout {key}"), e))?
    else {
        // Gone (deleted without our finalizer, or the finalizer was removed by hand): make
        // sure its rule is not left on the gateway.
        ctx.settings.metrics.forget(key);
        ctx.plugin
            .sync(
                &ctx.client,
                &ctx.settings.plugin,
                &ctx.settings.field_manager,
            )
            .await?;
        return Ok(Action::await_change());
    };
    if !ctx.caches.ready() {
        // Until the caches hold their first list, a missing object may exist.
        debug!("caches not listed yet; planning shortly");
        return Ok(Action::requeue(CACHES_NOT_READY_RETRY));
    }
    let others = ctx.rollouts.state();
    let plugin = &ctx.settings.plugin;
    let mut observed = observe(
        &ctx.client,
        Source::Cache(&ctx.caches),
        plugin,
        &rollout,
        &others,
    )
    .await?;
    if needs_confirmation(&rollout, &observed) {
        observed = observe(&ctx.client, Source::Api, plugin, &rollout, &others).await?;
    }
    observed.measurement = ctx.measure(&rollout, key).await;
    let plan = step::plan(&rollout, &observed, Timestamp::now());
    let applied = apply(ctx, &rollout, &plan).await?;
    if applied.released {
        ctx.settings.metrics.forget(key);
    } else {
        ctx.settings.metrics.rollout(&rollout, &plan.status);
    }
    let requeue = plan.requeue.unwrap_or(ctx.settings.resync);
    debug!(
        changes = applied.changes,
        status_written = applied.status_written,
        plugin_synced = applied.plugin_synced,
        requeue_ms = u64::try_from(requeue.as_millis()).unwrap_or(u64::MAX),
        message = plan.status.message.as_deref().unwrap_or(""),
        "reconciled"
    );
    Ok(Action::requeue(requeue))
}

/// Retries a failed reconcile after a backoff that depends on the error kind and grows with
/// consecutive failures of the same Rollout.
pub fn error_policy(rollout: Arc<Rollout>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = rollout_key(&rollout);
    let failures = {
        let mut all = ctx.failures();
        let n = all.entry(key.clone()).or_default();
        *n = n.saturating_add(1);
        *n
    };
    let after = error.backoff(failures);
    let retry_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
    match error {
        Error::Conflict { .. } => {
            debug!(rollout = %key, error = %error, retry_ms, "conflict; planning again")
        }
        _ => warn!(rollout = %key, error = %error, failures, retry_ms, "reconcile failed"),
    }
    Action::requeue(after)
}

/// Which kind of object a watch event is about, to find the Rollouts that name it.
#[derive(Debug, Clone, Copy)]
enum Related {
    Deployment,
    Service,
    Ingress,
}

/// The Rollouts in `namespace` that name `name` as their stable or canary object of `kind`.
fn naming(
    store: &Store<Rollout>,
    kind: Related,
    namespace: &str,
    name: &str,
) -> Vec<ObjectRef<Rollout>> {
    store
        .state()
        .iter()
        .filter(|r| r.namespace().as_deref() == Some(namespace))
        .filter(|r| {
            let names = Names::of(r);
            let (stable, canary) = match kind {
                Related::Deployment => (names.deployment, names.canary_deployment),
                Related::Service => (names.service, names.canary_service),
                Related::Ingress => (names.ingress, names.canary_ingress),
            };
            stable.as_deref() == Some(name) || canary.as_deref() == Some(name)
        })
        .map(|r| ObjectRef::from_obj(r.as_ref()))
        .collect()
}

fn mapper<K: ResourceExt>(
    store: Store<Rollout>,
    kind: Related,
) -> impl Fn(K) -> Vec<ObjectRef<Rollout>> + Send + Sync + 'static {
    move |obj: K| {
        let namespace = obj.namespace().unwrap_or_default();
        naming(&store, kind, &namespace, &obj.name_any())
    }
}

/// A change to a Rollout (also its deletion) wakes the other Rollouts in its namespace that
/// name the same Deployment or Ingress: one of them may be held back by a `WorkloadConflict`
/// or `RouteConflict` with it that has just ended. Nothing else of theirs changes then, so
/// without this they would wait for the resync.
fn sibling_mapper(
    store: Store<Rollout>,
) -> impl Fn(Rollout) -> Vec<ObjectRef<Rollout>> + Send + Sync + 'static {
    move |changed: Rollout| siblings(&store.state(), &changed)
}

/// Called for every Rollout event with every Rollout: compares names in place, allocating
/// only for the (rare) siblings.
fn siblings(all: &[Arc<Rollout>], changed: &Rollout) -> Vec<ObjectRef<Rollout>> {
    let shares = |mine: Option<&str>, theirs: Option<&str>| mine.is_some() && mine == theirs;
    let (deployment, ingress) = (changed.workload_name(), changed.ingress_name());
    all.iter()
        .filter(|r| r.metadata.namespace == changed.metadata.namespace)
        .filter(|r| r.metadata.name != changed.metadata.name)
        .filter(|r| shares(deployment, r.workload_name()) || shares(ingress, r.ingress_name()))
        .map(|r| ObjectRef::from_obj(r.as_ref()))
        .collect()
}

/// A change to the shared WasmPlugin wakes the Rollouts whose rule the gateway does not
/// carry as recorded (a hand edit, a lost write).
fn plugin_mapper(
    store: Store<Rollout>,
) -> impl Fn(DynamicObject) -> Vec<ObjectRef<Rollout>> + Send + Sync + 'static {
    move |obj: DynamicObject| {
        let spec = obj.data.get("spec").cloned().unwrap_or_default();
        let live = render::parse_spec(&spec).unwrap_or_default();
        store
            .state()
            .iter()
            .filter(|r| {
                let key = Names::of(r).key;
                r.plugin_rule() != live.rules.iter().find(|rule| rule.rollout == key)
            })
            .map(|r| ObjectRef::from_obj(r.as_ref()))
            .collect()
    }
}

/// Backoff of the controller's watches after an error. kube's default (client-go's: 0.8 s
/// doubling to 30 s, reset only after 2 minutes) is shared by all five watches, so one
/// compaction (a 410 on each) would leave the controller deaf to changes for ~30 s; this one
/// starts at 100 ms and stops growing at 5 s, and resets on the next event.
#[derive(Debug, Clone)]
struct TriggerBackoff {
    next: Duration,
}

impl TriggerBackoff {
    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    fn new() -> Self {
        Self { next: Self::MIN }
    }
}

impl Iterator for TriggerBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let current = self.next;
        self.next = (current * 2).min(Self::MAX);
        Some(current)
    }
}

impl Backoff for TriggerBackoff {
    fn reset(&mut self) {
        self.next = Self::MIN;
    }
}

/// A watch of all `K` feeding a cache: the store, and the stream of changed (and deleted)
/// objects to wake Rollouts with. Managed fields are dropped (never read; they are a large
/// part of every object).
fn cached_watch<K>(
    client: &Client,
    config: &watcher::Config,
) -> (
    Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store();
    let events = watcher(Api::<K>::all(client.clone()), config.clone())
        .modify(|obj| obj.managed_fields_mut().clear())
        .reflect(writer)
        .touched_objects();
    (store, events)
}

/// Runs the controller until `shutdown` resolves, then lets running reconciles finish.
pub async fn run(
    client: Client,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<()> {
    let rollouts = Api::<Rollout>::all(client.clone());
    rollouts
        .list(&ListParams::default().limit(1))
        .await
        .map_err(|e| {
            Error::kube(
                "listing Rollouts (is the CRD installed? `higress-canary crd | kubectl apply -f -`)",
                e,
            )
        })?;

    let wc = watcher::Config::default().any_semantic();
    let controller = Controller::new(rollouts, wc.clone());
    let store = controller.store();
    let metrics = settings.metrics.clone();
    let plugin_api = wasm_plugin_api(&client, &settings.plugin);
    let plugin_wc = wc
        .clone()
        .fields(&format!("metadata.name={}", settings.plugin.name));
    let concurrency = settings.concurrency;
    // Deployments, Services and Ingresses are cached from the same watches that wake the
    // Rollouts naming them, the WasmPlugin from its own; each store is updated before its
    // event is mapped to a reconcile.
    let (deployments, deployment_events) = cached_watch::<Deployment>(&client, &wc);
    let (services, service_events) = cached_watch::<Service>(&client, &wc);
    let (ingresses, ingress_events) = cached_watch::<Ingress>(&client, &wc);
    // The shared WasmPlugin too (one object: the watch selects it by name).
    let plugin_writer = reflector::store::Writer::new(wasm_plugin_resource());
    let plugin_cache = plugin_writer.as_reader();
    let plugin_events = watcher(plugin_api, plugin_wc)
        .modify(|obj| obj.managed_fields_mut().clear())
        .reflect(plugin_writer)
        .touched_objects();
    let caches = Caches {
        deployments,
        services,
        ingresses,
        plugin: plugin_cache,
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        settings,
        store.clone(),
        caches,
    )?);

    let ready = store.clone();
    let ready_metrics = metrics.clone();
    let readiness = tokio::spawn(async move {
        // Polled again and again: kube-runtime's `DelayedInit` wakes only the last task that
        // polled it, and the controller's own applier waits on the same store.
        loop {
            match tokio::time::timeout(Duration::from_millis(100), ready.wait_until_ready()).await {
                Ok(Ok(())) => {
                    ready_metrics.set_ready(true);
                    info!("Rollout cache synced; controller ready");
                    return;
                }
                Ok(Err(_)) => return,
                Err(_) => {}
            }
        }
    });

    info!(
        plugin = %format!("{}/{}", ctx.settings.plugin.namespace, ctx.settings.plugin.name),
        prometheus = ctx.prometheus.as_ref().map_or("(none)", |p| p.url()),
        "starting the Rollout controller"
    );
    controller
        .watches(
            Api::<Rollout>::all(client.clone()),
            wc.clone(),
            sibling_mapper(store.clone()),
        )
        .watches_stream(
            deployment_events,
            mapper::<Deployment>(store.clone(), Related::Deployment),
        )
        .watches_stream(
            service_events,
            mapper::<Service>(store.clone(), Related::Service),
        )
        .watches_stream(
            ingress_events,
            mapper::<Ingress>(store.clone(), Related::Ingress),
        )
        .watches_stream_with(
            plugin_events,
            plugin_mapper(store.clone()),
            wasm_plugin_resource(),
        )
        .with_config(ControllerConfig::default().concurrency(concurrency))
        .trigger_backoff(TriggerBackoff::new())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            use kube::runtime::controller::Error as ControllerError;
            match result {
                Ok(_) => {}
                // Handled by `error_policy`.
                Err(ControllerError::ReconcilerFailed(..)) => {}
                // A Rollout deleted while a reconcile of it was scheduled.
                Err(ControllerError::ObjectNotFound(obj)) => {
                    debug!(object = %obj, "scheduled reconcile of a deleted Rollout skipped")
                }
                Err(e) => warn!(error = %e, "watch failed; retrying with backoff"),
            }
        })
        .await;
    readiness.abort();
    metrics.set_ready(false);
    info!("Rollout controller stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(namespace: &str, name: &str, deployment: &str, ingress: &str) -> Arc<Rollout> {
        let yaml = format!(
            "apiVersion: rollouts.kruise.io/v1alpha1
kind: Rollout
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  objectRef: {{workloadRef: {{apiVersion: apps/v1, kind: Deployment, name: {deployment}}}}}
  strategy:
    canary:
      steps: [{{weight: 10}}]
      trafficRoutings: [{{service: svc, ingress: {{name: {ingress}}}}}]
"
        );
        Arc::new(serde_yaml::from_str(&yaml).expect("test Rollout"))
    }

    #[test]
    fn a_rollout_change_wakes_the_rollouts_sharing_its_deployment_or_ingress() {
        let all = [
            rollout("a", "first", "web", "web"),
            rollout("a", "same-deployment", "web", "other"),
            rollout("a", "same-ingress", "api", "web"),
            rollout("a", "unrelated", "api", "api"),
            rollout("b", "other-namespace", "web", "web"),
        ];
        let woken: Vec<String> = siblings(&all, &all[0])
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(woken, ["same-deployment", "same-ingress"]);
        let woken: Vec<String> = siblings(&all, &all[3])
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(woken, ["same-ingress"]);
    }

    #[test]
    fn the_trigger_backoff_doubles_to_five_seconds_and_resets() {
        let mut b = TriggerBackoff::new();
        let first: Vec<u64> = b.by_ref().take(8).map(|d| d.as_millis() as u64).collect();
        assert_eq!(first, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(b.next(), Some(Duration::from_millis(100)));
    }
}
