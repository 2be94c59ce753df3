//! The simulator's I/O: watch caches, rounds of decisions, and the writes they call for.
//!
//! A round snapshots the caches, runs the controllers in the order a cluster would react
//! (garbage collector, deployment controller, ReplicaSet controller, kubelet, endpoints
//! controller) and performs their writes. Objects a controller wrote are left alone by the
//! later controllers of the same round. The next round waits until the caches show every
//! write of this one (or `settle_timeout` passes).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt::Debug,
    pin::pin,
    sync::Arc,
    time::Duration,
};

use futures::{FutureExt, StreamExt};
use jiff::Timestamp;
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, ReplicaSet},
        core::v1::{Endpoints, Event, EventSource, ObjectReference, Pod, Service},
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
};
use kube::{
    api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions, PropagationPolicy},
    runtime::{
        reflector::{self, ObjectRef, Store},
        watcher, WatchStreamExt,
    },
    Client, Resource,
};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::{
    sync::{watch, Notify},
    task::JoinHandle,
    time::Instant,
};
use tracing::{debug, info, warn};

use super::{
    deployment::{self, REVISION},
    endpoints,
    hash::equal_ignore_hash,
    kubelet::{self, Observed},
    replicaset,
    server::PodServer,
    util::{annotation, controller_of, random_suffix},
    Error, SimConfig, PORT_ANNOTATION,
};

/// Field manager of the controllers' writes (the real ones write as their user agent).
const CONTROLLER_MANAGER: &str = "kube-controller-manager";
const KUBELET: &str = "kubelet";

/// How long a stopped pod server may take to close its connections before it is killed.
const KILL_AFTER_STOP: Duration = Duration::from_secs(1);

// === caches ===

struct Stores {
    deployments: Store<Deployment>,
    replicasets: Store<ReplicaSet>,
    pods: Store<Pod>,
    services: Store<Service>,
    endpoints: Store<Endpoints>,
}

fn reflect<K>(client: &Client, notify: &Arc<Notify>, tasks: &mut Vec<JoinHandle<()>>) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let api = Api::<K>::all(client.clone());
    let notify = notify.clone();
    tasks.push(tokio::spawn(async move {
        let kind = K::kind(&());
        let mut events = pin!(watcher(api, watcher::Config::default())
            .default_backoff()
            .reflect(writer));
        while let Some(event) = events.next().await {
            if let Err(e) = event {
                debug!(%kind, error = %e, "watch failed; retrying");
            }
            notify.notify_one();
        }
    }));
    reader
}

fn key(meta: &ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

fn namespace(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("default")
}

fn name(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or_default()
}

// === read-your-writes barrier ===

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Deployment,
    ReplicaSet,
    Pod,
    Endpoints,
}

#[derive(Debug)]
enum Want {
    /// The cache holds this resourceVersion or a later one (or, for an update, the object
    /// is gone meanwhile).
    Version { rv: u64, created: bool },
    /// The object is gone (or being deleted, or replaced by another with the same name).
    Gone { uid: Option<String> },
}

#[derive(Debug)]
struct Expect {
    kind: Kind,
    ns: String,
    name: String,
    want: Want,
}

#[derive(Default)]
struct Barrier {
    pending: Vec<Expect>,
    since: Option<Instant>,
}

struct Seen {
    rv: Option<u64>,
    uid: Option<String>,
    deleting: bool,
}

impl Stores {
    fn seen(&self, kind: Kind, ns: &str, name: &str) -> Option<Seen> {
        fn summary(meta: &ObjectMeta) -> Seen {
            Seen {
                rv: meta
                    .resource_version
                    .as_deref()
                    .and_then(|v| v.parse().ok()),
                uid: meta.uid.clone(),
                deleting: meta.deletion_timestamp.is_some(),
            }
        }
        match kind {
            Kind::Deployment => self
                .deployments
                .get(&ObjectRef::new(name).within(ns))
                .map(|o| summary(&o.metadata)),
            Kind::ReplicaSet => self
                .replicasets
                .get(&ObjectRef::new(name).within(ns))
                .map(|o| summary(&o.metadata)),
            Kind::Pod => self
                .pods
                .get(&ObjectRef::new(name).within(ns))
                .map(|o| summary(&o.metadata)),
            Kind::Endpoints => self
                .endpoints
                .get(&ObjectRef::new(name).within(ns))
                .map(|o| summary(&o.metadata)),
        }
    }
}

impl Barrier {
    fn written(&mut self, kind: Kind, meta: &ObjectMeta, created: bool) {
        // Without a numeric resourceVersion there is nothing to wait for.
        let Some(rv) = meta
            .resource_version
            .as_deref()
            .and_then(|v| v.parse().ok())
        else {
            return;
        };
        let (ns, name) = key(meta);
        self.pending.push(Expect {
            kind,
            ns,
            name,
            want: Want::Version { rv, created },
        });
    }

    fn deleted(&mut self, kind: Kind, ns: &str, name: &str, uid: Option<String>) {
        let (ns, name) = (ns.to_owned(), name.to_owned());
        self.pending.push(Expect {
            kind,
            ns,
            name,
            want: Want::Gone { uid },
        });
    }

    fn settled(&mut self, stores: &Stores) -> bool {
        self.pending.retain(|e| {
            let seen = stores.seen(e.kind, &e.ns, &e.name);
            let met = match (&e.want, seen) {
                (Want::Version { rv, .. }, Some(s)) => s.rv.is_none_or(|cur| cur >= *rv),
                (Want::Version { created, .. }, None) => !created,
                (Want::Gone { .. }, None) => true,
                (Want::Gone { uid }, Some(s)) => s.deleting || (uid.is_some() && s.uid != *uid),
            };
            !met
        });
        self.pending.is_empty()
    }
}

// === pods the kubelet runs ===

struct RunningPod {
    server: PodServer,
    started: Timestamp,
    ready: bool,
    ready_changed: Timestamp,
}

struct Terminating {
    server: PodServer,
    stop_at: Instant,
    kill_at: Instant,
}

/// The earliest of several wake-up times.
#[derive(Default)]
struct Wake(Option<Timestamp>);

impl Wake {
    fn add(&mut self, t: Option<Timestamp>) {
        if let Some(t) = t {
            self.0 = Some(self.0.map_or(t, |w| w.min(t)));
        }
    }
}

// === the loop ===

pub(super) async fn start(
    client: Client,
    config: SimConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<(JoinHandle<()>, Vec<JoinHandle<()>>), Error> {
    let notify = Arc::new(Notify::new());
    let mut watches = Vec::new();
    let stores = Stores {
        deployments: reflect(&client, &notify, &mut watches),
        replicasets: reflect(&client, &notify, &mut watches),
        pods: reflect(&client, &notify, &mut watches),
        services: reflect(&client, &notify, &mut watches),
        endpoints: reflect(&client, &notify, &mut watches),
    };
    let all_ready = async {
        let _ = tokio::join!(
            stores.deployments.wait_until_ready(),
            stores.replicasets.wait_until_ready(),
            stores.pods.wait_until_ready(),
            stores.services.wait_until_ready(),
            stores.endpoints.wait_until_ready(),
        );
    };
    if tokio::time::timeout(config.sync_timeout, all_ready)
        .await
        .is_err()
    {
        let pending = |ready: bool, kind: &str| (!ready).then(|| kind.to_owned());
        let kinds: Vec<String> = [
            pending(
                stores
                    .deployments
                    .wait_until_ready()
                    .now_or_never()
                    .is_some(),
                "deployments",
            ),
            pending(
                stores
                    .replicasets
                    .wait_until_ready()
                    .now_or_never()
                    .is_some(),
                "replicasets",
            ),
            pending(
                stores.pods.wait_until_ready().now_or_never().is_some(),
                "pods",
            ),
            pending(
                stores.services.wait_until_ready().now_or_never().is_some(),
                "services",
            ),
            pending(
                stores.endpoints.wait_until_ready().now_or_never().is_some(),
                "endpoints",
            ),
        ]
        .into_iter()
        .flatten()
        .collect();
        for w in &watches {
            w.abort();
        }
        return Err(Error::NotSynced {
            timeout: config.sync_timeout,
            kinds: kinds.join(", "),
        });
    }
    let runner = Runner {
        client,
        cfg: config,
        stores,
        notify,
        barrier: Barrier::default(),
        pods: HashMap::new(),
        terminating: Vec::new(),
        finalized: HashSet::new(),
        endpoints_of: HashSet::new(),
        event_seq: 0,
    };
    Ok((tokio::spawn(runner.run(shutdown)), watches))
}

struct Runner {
    client: Client,
    cfg: SimConfig,
    stores: Stores,
    notify: Arc<Notify>,
    barrier: Barrier,
    /// Running pods by uid.
    pods: HashMap<String, RunningPod>,
    terminating: Vec<Terminating>,
    /// Pods whose graceful deletion the kubelet has completed.
    finalized: HashSet<String>,
    /// Services whose Endpoints this controller maintains.
    endpoints_of: HashSet<(String, String)>,
    event_seq: u64,
}

fn post(manager: &str) -> PostParams {
    PostParams {
        dry_run: false,
        field_manager: Some(manager.to_owned()),
    }
}

fn patch_params(manager: &str) -> PatchParams {
    PatchParams {
        field_manager: Some(manager.to_owned()),
        ..PatchParams::default()
    }
}

fn delete_params(uid: Option<String>) -> DeleteParams {
    DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        preconditions: uid.map(|uid| Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..DeleteParams::default()
    }
}

fn api_error(e: &kube::Error) -> Option<&kube::core::Status> {
    match e {
        kube::Error::Api(s) => Some(s),
        _ => None,
    }
}

/// Races every controller meets (stale caches, objects deleted meanwhile) are debug noise;
/// anything else is worth a warning.
fn report(what: &str, target: &str, e: &kube::Error) {
    let expected = api_error(e).is_some_and(|s| s.is_conflict() || s.is_not_found());
    if expected {
        debug!(target_object = %target, error = %e, "{what}: will retry");
    } else {
        warn!(target_object = %target, error = %e, "{what} failed");
    }
}

fn instant_of(t: Timestamp) -> Instant {
    let now = Timestamp::now();
    let delta = t.duration_since(now);
    Instant::now() + Duration::try_from(delta).unwrap_or(Duration::ZERO)
}

impl Runner {
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                break;
            }
            let now = Instant::now();
            self.reap_terminating(now);
            let settled = self.barrier.settled(&self.stores);
            let timed_out = self
                .barrier
                .since
                .is_some_and(|s| now >= s + self.cfg.settle_timeout);
            let mut deadline = now + self.cfg.resync;
            if settled || timed_out {
                if !settled {
                    debug!(pending = ?self.barrier.pending, "writes not seen by the watches in time");
                }
                self.barrier = Barrier::default();
                if let Some(wake) = self.round(Timestamp::now()).await {
                    deadline = deadline.min(instant_of(wake));
                }
                if !self.barrier.pending.is_empty() {
                    self.barrier.since = Some(Instant::now());
                }
            } else if let Some(since) = self.barrier.since {
                deadline = deadline.min(since + self.cfg.settle_timeout);
            }
            if let Some(t) = self
                .terminating
                .iter()
                .map(|t| t.stop_at.min(t.kill_at))
                .min()
            {
                if t > now {
                    deadline = deadline.min(t);
                }
            }
            tokio::select! {
                _ = self.notify.notified() => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = shutdown.changed() => {}
            }
        }
        // Dropping the servers kills them.
        self.pods.clear();
        self.terminating.clear();
    }

    fn reap_terminating(&mut self, now: Instant) {
        self.terminating.retain_mut(|t| {
            if now >= t.stop_at {
                t.server.stop();
            }
            !(now >= t.kill_at || (now >= t.stop_at && t.server.is_finished()))
        });
    }

    /// One round over a snapshot of the caches; returns when to look again at the latest.
    async fn round(&mut self, now: Timestamp) -> Option<Timestamp> {
        let deployments = self.stores.deployments.state();
        let rss = self.stores.replicasets.state();
        let pods = self.stores.pods.state();
        let services = self.stores.services.state();
        let mut rs_by_ns: BTreeMap<String, Vec<ReplicaSet>> = BTreeMap::new();
        for rs in &rss {
            rs_by_ns
                .entry(namespace(&rs.metadata).to_owned())
                .or_default()
                .push((**rs).clone());
        }
        let mut pods_by_ns: BTreeMap<String, Vec<Pod>> = BTreeMap::new();
        for pod in &pods {
            pods_by_ns
                .entry(namespace(&pod.metadata).to_owned())
                .or_default()
                .push((**pod).clone());
        }
        let no_rs: Vec<ReplicaSet> = Vec::new();
        let no_pods: Vec<Pod> = Vec::new();
        let mut wake = Wake::default();

        self.collect_garbage(&deployments, &rss, &pods).await;

        let mut touched_rs: HashSet<(String, String)> = HashSet::new();
        for d in &deployments {
            let ns = namespace(&d.metadata);
            let plan = deployment::sync(
                d,
                rs_by_ns.get(ns).unwrap_or(&no_rs),
                pods_by_ns.get(ns).unwrap_or(&no_pods),
                now,
            );
            wake.add(plan.requeue_at);
            self.apply_deployment(d, plan, &mut touched_rs, now).await;
        }

        let mut deleted_pods: HashSet<String> = HashSet::new();
        for rs in &rss {
            if touched_rs.contains(&key(&rs.metadata)) {
                continue;
            }
            let ns = namespace(&rs.metadata);
            let plan = replicaset::sync(rs, pods_by_ns.get(ns).unwrap_or(&no_pods), now);
            wake.add(plan.requeue_at);
            self.apply_replicaset(rs, plan, &mut deleted_pods).await;
        }

        self.kubelet(&pods, &deleted_pods, now, &mut wake).await;
        self.endpoints(&services, &pods_by_ns).await;
        wake.0
    }

    // --- garbage collector (fallback for API servers without background GC) ---

    async fn collect_garbage(
        &mut self,
        deployments: &[Arc<Deployment>],
        rss: &[Arc<ReplicaSet>],
        pods: &[Arc<Pod>],
    ) {
        let d_uids: HashSet<&str> = deployments
            .iter()
            .filter_map(|d| d.metadata.uid.as_deref())
            .collect();
        let rs_uids: HashSet<&str> = rss
            .iter()
            .filter_map(|r| r.metadata.uid.as_deref())
            .collect();
        let orphan = |meta: &ObjectMeta, kind: &str, live: &HashSet<&str>| {
            controller_of(meta)
                .filter(|o| o.api_version == "apps/v1" && o.kind == kind)
                .filter(|o| !live.contains(o.uid.as_str()) && meta.deletion_timestamp.is_none())
                .map(|o| (o.name.clone(), o.uid.clone()))
        };
        for rs in rss {
            if let Some((owner, owner_uid)) = orphan(&rs.metadata, "Deployment", &d_uids) {
                let ns = namespace(&rs.metadata);
                let api: Api<Deployment> = Api::namespaced(self.client.clone(), ns);
                if owner_exists(api, &owner, &owner_uid).await {
                    continue;
                }
                let rs_api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), ns);
                let uid = rs.metadata.uid.clone();
                debug!(replicaset = %name(&rs.metadata), %owner, "collecting orphaned ReplicaSet");
                match rs_api
                    .delete(name(&rs.metadata), &delete_params(uid.clone()))
                    .await
                {
                    Ok(_) => self
                        .barrier
                        .deleted(Kind::ReplicaSet, ns, name(&rs.metadata), uid),
                    Err(e) => report("garbage-collect ReplicaSet", name(&rs.metadata), &e),
                }
            }
        }
        for pod in pods {
            if let Some((owner, owner_uid)) = orphan(&pod.metadata, "ReplicaSet", &rs_uids) {
                let ns = namespace(&pod.metadata);
                let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), ns);
                if owner_exists(api, &owner, &owner_uid).await {
                    continue;
                }
                let pod_api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
                let uid = pod.metadata.uid.clone();
                debug!(pod = %name(&pod.metadata), %owner, "collecting orphaned pod");
                match pod_api
                    .delete(name(&pod.metadata), &delete_params(uid.clone()))
                    .await
                {
                    Ok(_) => self
                        .barrier
                        .deleted(Kind::Pod, ns, name(&pod.metadata), uid),
                    Err(e) => report("garbage-collect pod", name(&pod.metadata), &e),
                }
            }
        }
    }

    // --- deployment controller ---

    async fn apply_deployment(
        &mut self,
        d: &Deployment,
        plan: deployment::Plan,
        touched: &mut HashSet<(String, String)>,
        now: Timestamp,
    ) {
        let ns = namespace(&d.metadata);
        let rs_api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), ns);
        let mut all_ok = true;
        for write in plan.writes {
            let ok = match write {
                deployment::Write::CreateReplicaSet(rs) => {
                    touched.insert(key(&rs.metadata));
                    match rs_api.create(&post(CONTROLLER_MANAGER), &rs).await {
                        Ok(created) => {
                            info!(replicaset = %name(&created.metadata), replicas = ?created.spec.replicas, "created ReplicaSet");
                            self.barrier
                                .written(Kind::ReplicaSet, &created.metadata, true);
                            true
                        }
                        Err(e) if api_error(&e).is_some_and(|s| s.is_already_exists()) => {
                            self.name_taken(d, &rs).await;
                            false
                        }
                        Err(e) => {
                            report("create ReplicaSet", name(&rs.metadata), &e);
                            false
                        }
                    }
                }
                deployment::Write::UpdateReplicaSet(rs) => {
                    touched.insert(key(&rs.metadata));
                    match rs_api
                        .replace(name(&rs.metadata), &post(CONTROLLER_MANAGER), &rs)
                        .await
                    {
                        Ok(updated) => {
                            self.barrier
                                .written(Kind::ReplicaSet, &updated.metadata, false);
                            true
                        }
                        Err(e) => {
                            report("update ReplicaSet", name(&rs.metadata), &e);
                            false
                        }
                    }
                }
                deployment::Write::DeleteReplicaSet { name: rs_name, uid } => {
                    match rs_api.delete(&rs_name, &delete_params(uid.clone())).await {
                        Ok(_) => {
                            self.barrier.deleted(Kind::ReplicaSet, ns, &rs_name, uid);
                            true
                        }
                        Err(e) if api_error(&e).is_some_and(|s| s.is_not_found()) => true,
                        Err(e) => {
                            report("delete old ReplicaSet", &rs_name, &e);
                            false
                        }
                    }
                }
                deployment::Write::UpdateStatus(updated) => {
                    self.write_deployment_status(&updated).await
                }
            };
            if !ok {
                // The Go controller returns the error and the sync is retried.
                all_ok = false;
                break;
            }
        }
        if all_ok && self.cfg.events {
            for note in plan.events {
                self.record_event(d, &note, now).await;
            }
        }
    }

    /// `PUT …/status` with the whole object, as `UpdateStatus` does. The revision annotation
    /// travels along (a real server keeps annotations on Deployment status updates); if this
    /// server dropped it, it is set on the object itself.
    async fn write_deployment_status(&mut self, d: &Deployment) -> bool {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), namespace(&d.metadata));
        let stored = match api
            .replace_status(name(&d.metadata), &post(CONTROLLER_MANAGER), d)
            .await
        {
            Ok(stored) => stored,
            Err(e) => {
                report("update Deployment status", name(&d.metadata), &e);
                return false;
            }
        };
        self.barrier
            .written(Kind::Deployment, &stored.metadata, false);
        let want = annotation(&d.metadata, REVISION);
        if want.is_some() && annotation(&stored.metadata, REVISION) != want {
            let patch = json!({"metadata": {
                "resourceVersion": stored.metadata.resource_version,
                "annotations": {REVISION: want},
            }});
            match api
                .patch(
                    name(&d.metadata),
                    &patch_params(CONTROLLER_MANAGER),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(patched) => self
                    .barrier
                    .written(Kind::Deployment, &patched.metadata, false),
                Err(e) => report("set Deployment revision", name(&d.metadata), &e),
            }
        }
        true
    }

    /// The new ReplicaSet's name exists already: either our cache is behind (it is ours and
    /// has our template) or it is a hash collision, which bumps `status.collisionCount`.
    async fn name_taken(&mut self, d: &Deployment, rs: &ReplicaSet) {
        let ns = namespace(&d.metadata);
        let rs_api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), ns);
        let Ok(Some(existing)) = rs_api.get_opt(name(&rs.metadata)).await else {
            return;
        };
        let ours = controller_of(&existing.metadata)
            .is_some_and(|o| Some(o.uid.as_str()) == d.metadata.uid.as_deref());
        let same = existing
            .spec
            .template
            .as_ref()
            .is_some_and(|t| equal_ignore_hash(t, &d.spec.template));
        if ours && same {
            self.barrier
                .written(Kind::ReplicaSet, &existing.metadata, true);
            return;
        }
        let mut bumped = d.clone();
        let status = bumped.status.get_or_insert_with(Default::default);
        status.collision_count = Some(status.collision_count.unwrap_or(0) + 1);
        info!(deployment = %name(&d.metadata), replicaset = %name(&rs.metadata), "hash collision; bumping collisionCount");
        self.write_deployment_status(&bumped).await;
    }

    async fn record_event(&mut self, d: &Deployment, note: &deployment::Note, now: Timestamp) {
        self.event_seq += 1;
        let ns = namespace(&d.metadata);
        let nanos = u64::try_from(now.as_nanosecond()).unwrap_or(0) + self.event_seq;
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{}.{nanos:x}", name(&d.metadata))),
                namespace: Some(ns.to_owned()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("apps/v1".into()),
                kind: Some("Deployment".into()),
                name: d.metadata.name.clone(),
                namespace: Some(ns.to_owned()),
                uid: d.metadata.uid.clone(),
                resource_version: d.metadata.resource_version.clone(),
                ..Default::default()
            },
            reason: Some(note.reason.to_owned()),
            message: Some(note.message.clone()),
            type_: Some(note.type_.to_owned()),
            source: Some(EventSource {
                component: Some("deployment-controller".into()),
                host: None,
            }),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            count: Some(1),
            reporting_component: Some("deployment-controller".into()),
            ..Default::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), ns);
        if let Err(e) = api.create(&post(CONTROLLER_MANAGER), &event).await {
            debug!(error = %e, "recording an event failed");
        }
    }

    // --- ReplicaSet controller ---

    async fn apply_replicaset(
        &mut self,
        rs: &ReplicaSet,
        plan: replicaset::Plan,
        deleted: &mut HashSet<String>,
    ) {
        let ns = namespace(&rs.metadata);
        let pod_api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        for write in plan.writes {
            match write {
                replicaset::Write::CreatePod(mut pod) => {
                    let prefix = pod.metadata.generate_name.clone().unwrap_or_default();
                    // Like generateName: a random suffix, another one if it is taken.
                    for attempt in 0..3 {
                        pod.metadata.name = Some(format!("{prefix}{}", random_suffix()));
                        match pod_api.create(&post(CONTROLLER_MANAGER), &pod).await {
                            Ok(created) => {
                                debug!(pod = %name(&created.metadata), "created pod");
                                self.barrier.written(Kind::Pod, &created.metadata, true);
                                break;
                            }
                            Err(e)
                                if attempt < 2
                                    && api_error(&e).is_some_and(|s| s.is_already_exists()) => {}
                            Err(e) => {
                                report("create pod", name(&rs.metadata), &e);
                                return;
                            }
                        }
                    }
                }
                replicaset::Write::DeletePod {
                    name: pod_name,
                    uid,
                } => match pod_api.delete(&pod_name, &delete_params(uid.clone())).await {
                    Ok(_) => {
                        debug!(pod = %pod_name, "deleted pod");
                        if let Some(uid) = &uid {
                            deleted.insert(uid.clone());
                        }
                        self.barrier.deleted(Kind::Pod, ns, &pod_name, uid);
                    }
                    Err(e) => report("delete pod", &pod_name, &e),
                },
                replicaset::Write::UpdateStatus(updated) => {
                    let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), ns);
                    match api
                        .replace_status(name(&rs.metadata), &post(CONTROLLER_MANAGER), &updated)
                        .await
                    {
                        Ok(stored) => {
                            self.barrier
                                .written(Kind::ReplicaSet, &stored.metadata, false)
                        }
                        Err(e) => report("update ReplicaSet status", name(&rs.metadata), &e),
                    }
                }
            }
        }
    }

    // --- kubelet ---

    async fn kubelet(
        &mut self,
        pods: &[Arc<Pod>],
        deleted: &HashSet<String>,
        now: Timestamp,
        wake: &mut Wake,
    ) {
        let mut live: HashSet<String> = HashSet::new();
        let mut present: HashSet<String> = HashSet::new();
        for pod in pods {
            let Some(uid) = pod.metadata.uid.clone() else {
                continue;
            };
            present.insert(uid.clone());
            if replicaset::is_pod_terminal(pod) {
                continue;
            }
            if deleted.contains(&uid) {
                // Deleted this round; the watch will say so.
                live.insert(uid);
                continue;
            }
            if pod.metadata.deletion_timestamp.is_some() {
                // Graceful deletion: stop the containers, then finish the deletion.
                if self.finalized.insert(uid.clone()) {
                    let api: Api<Pod> =
                        Api::namespaced(self.client.clone(), namespace(&pod.metadata));
                    let dp = DeleteParams {
                        grace_period_seconds: Some(0),
                        ..delete_params(Some(uid.clone()))
                    };
                    if let Err(e) = api.delete(name(&pod.metadata), &dp).await {
                        report("finish pod deletion", name(&pod.metadata), &e);
                    }
                }
                continue;
            }
            if self.run_pod(pod, &uid, now, wake).await {
                live.insert(uid);
            }
        }
        let gone: Vec<String> = self
            .pods
            .keys()
            .filter(|u| !live.contains(*u))
            .cloned()
            .collect();
        for uid in gone {
            if let Some(rp) = self.pods.remove(&uid) {
                debug!(port = rp.server.port(), "pod gone; stopping its server");
                let stop_at = Instant::now() + self.cfg.termination_grace;
                self.terminating.push(Terminating {
                    server: rp.server,
                    stop_at,
                    kill_at: stop_at + KILL_AFTER_STOP,
                });
            }
        }
        self.finalized.retain(|u| present.contains(u));
    }

    /// Runs `pod` (starting its server if needed) and reports its state. Returns whether it
    /// is running.
    async fn run_pod(&mut self, pod: &Pod, uid: &str, now: Timestamp, wake: &mut Wake) -> bool {
        let pod_name = name(&pod.metadata).to_owned();
        if !self.pods.contains_key(uid) {
            let preferred = kubelet::port_of(&pod.metadata);
            let server = match PodServer::start(&pod_name, kubelet::body_of(pod), preferred).await {
                Ok(server) => server,
                Err(e) => {
                    warn!(pod = %pod_name, error = %e, "cannot bind a pod server");
                    return false;
                }
            };
            // After a simulator restart, a pod that was ready stays ready.
            let (ready, ready_changed, started) = match kubelet::reported_readiness(pod) {
                Some((true, since, started)) => (true, since, started.unwrap_or(now)),
                _ => (false, now, now),
            };
            debug!(pod = %pod_name, port = server.port(), "pod started");
            self.pods.insert(
                uid.to_owned(),
                RunningPod {
                    server,
                    started,
                    ready,
                    ready_changed,
                },
            );
        }
        let Some(rp) = self.pods.get_mut(uid) else {
            return false;
        };
        let knobs = kubelet::knobs(pod);
        rp.server.set_error_rate(knobs.error_rate);
        let (ready, next) =
            kubelet::readiness(knobs, rp.ready, rp.started, self.cfg.readiness_delay, now);
        wake.add(next);
        if ready != rp.ready {
            rp.ready = ready;
            rp.ready_changed = now;
        }
        let port = rp.server.port();
        let seen = Observed {
            started: rp.started,
            ready: rp.ready,
            ready_changed: rp.ready_changed,
        };

        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace(&pod.metadata));
        if kubelet::port_of(&pod.metadata) != Some(port) {
            let patch = json!({"metadata": {"annotations": {PORT_ANNOTATION: port.to_string()}}});
            match api
                .patch(&pod_name, &patch_params(KUBELET), &Patch::Merge(&patch))
                .await
            {
                Ok(p) => self.barrier.written(Kind::Pod, &p.metadata, false),
                Err(e) => report("record pod port", &pod_name, &e),
            }
        }
        let desired = kubelet::pod_status(pod, seen);
        if !kubelet::status_matches(pod.status.as_ref(), &desired) {
            let patch = json!({"status": desired});
            match api
                .patch_status(&pod_name, &patch_params(KUBELET), &Patch::Merge(&patch))
                .await
            {
                Ok(p) => self.barrier.written(Kind::Pod, &p.metadata, false),
                Err(e) => report("update pod status", &pod_name, &e),
            }
        }
        true
    }

    // --- endpoints controller ---

    async fn endpoints(
        &mut self,
        services: &[Arc<Service>],
        pods_by_ns: &BTreeMap<String, Vec<Pod>>,
    ) {
        let no_pods: Vec<Pod> = Vec::new();
        let mut managed = HashSet::new();
        let all: HashSet<(String, String)> = services.iter().map(|s| key(&s.metadata)).collect();
        for svc in services {
            let ns = namespace(&svc.metadata);
            let Some(desired) = endpoints::desired(svc, pods_by_ns.get(ns).unwrap_or(&no_pods))
            else {
                continue;
            };
            let svc_name = name(&svc.metadata);
            managed.insert(key(&svc.metadata));
            let api: Api<Endpoints> = Api::namespaced(self.client.clone(), ns);
            match self
                .stores
                .endpoints
                .get(&ObjectRef::new(svc_name).within(ns))
            {
                None => match api.create(&post(CONTROLLER_MANAGER), &desired).await {
                    Ok(created) => self
                        .barrier
                        .written(Kind::Endpoints, &created.metadata, true),
                    Err(e) if api_error(&e).is_some_and(|s| s.is_already_exists()) => {}
                    Err(e) => report("create Endpoints", svc_name, &e),
                },
                Some(current) if endpoints::differs(&current, &desired) => {
                    let mut next = (*current).clone();
                    next.subsets = desired.subsets;
                    next.metadata.labels = desired.metadata.labels;
                    match api
                        .replace(svc_name, &post(CONTROLLER_MANAGER), &next)
                        .await
                    {
                        Ok(stored) => {
                            self.barrier
                                .written(Kind::Endpoints, &stored.metadata, false)
                        }
                        Err(e) => report("update Endpoints", svc_name, &e),
                    }
                }
                Some(_) => {}
            }
        }
        // A Service that went away takes its Endpoints along.
        for (ns, svc_name) in self.endpoints_of.difference(&managed) {
            if all.contains(&(ns.clone(), svc_name.clone())) {
                continue;
            }
            let api: Api<Endpoints> = Api::namespaced(self.client.clone(), ns);
            match api.delete(svc_name, &DeleteParams::default()).await {
                Ok(_) => self.barrier.deleted(Kind::Endpoints, ns, svc_name, None),
                Err(e) if api_error(&e).is_some_and(|s| s.is_not_found()) => {}
                Err(e) => report("delete Endpoints", svc_name, &e),
            }
        }
        self.endpoints_of = managed;
    }
}

/// Whether the owner still exists, asked of the API server itself (the caches may lag), as
/// the garbage collector does before deleting a dependent.
async fn owner_exists<K>(api: Api<K>, owner: &str, uid: &str) -> bool
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    match api.get_opt(owner).await {
        Ok(Some(o)) => o.meta().uid.as_deref() == Some(uid),
        Ok(None) => false,
        // Unsure: leave it.
        Err(_) => true,
    }
}
