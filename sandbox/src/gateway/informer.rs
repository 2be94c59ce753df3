//! Informers on the API: one in-memory store per kind, and a signal on every change.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::model::{Fingerprint, Objects};
use super::Error;

/// Higress's WasmPlugin kind.
pub fn wasm_plugin_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("extensions.higress.io", "v1alpha1", "WasmPlugin"),
        "wasmplugins",
    )
}

/// The objects of one kind, as a watcher last reported them.
pub struct Store<K> {
    inner: Mutex<StoreState<K>>,
}

struct StoreState<K> {
    items: BTreeMap<(String, String), Arc<K>>,
    /// Objects of a re-list in progress; swapped in at `InitDone`.
    relist: Option<BTreeMap<(String, String), Arc<K>>>,
    ready: bool,
}

impl<K: ResourceExt> Store<K> {
    fn new() -> Self {
        Self {
            inner: Mutex::new(StoreState {
                items: BTreeMap::new(),
                relist: None,
                ready: false,
            }),
        }
    }

    fn key(obj: &K) -> (String, String) {
        (obj.namespace().unwrap_or_default(), obj.name_any())
    }

    /// Applies one watcher event; `true` when the visible state may have changed.
    fn apply(&self, event: Event<K>) -> bool {
        let mut s = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        match event {
            Event::Init => {
                s.relist = Some(BTreeMap::new());
                false
            }
            Event::InitApply(obj) => {
                let key = Self::key(&obj);
                s.relist
                    .get_or_insert_with(BTreeMap::new)
                    .insert(key, Arc::new(obj));
                false
            }
            Event::InitDone => {
                if let Some(items) = s.relist.take() {
                    s.items = items;
                }
                s.ready = true;
                true
            }
            Event::Apply(obj) => {
                let key = Self::key(&obj);
                s.items.insert(key, Arc::new(obj));
                true
            }
            Event::Delete(obj) => {
                let key = Self::key(&obj);
                s.items.remove(&key).is_some()
            }
        }
    }

    /// The objects.
    pub fn list(&self) -> Vec<Arc<K>> {
        let s = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        s.items.values().cloned().collect()
    }

    /// Whether the first list has completed.
    pub fn is_ready(&self) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .ready
    }
}

/// The four stores the gateway translates from.
pub struct Stores {
    /// Ingresses, all namespaces.
    pub ingresses: Store<Ingress>,
    /// Services, all namespaces.
    pub services: Store<Service>,
    /// Endpoints, all namespaces.
    pub endpoints: Store<Endpoints>,
    /// WasmPlugins of the system namespace.
    pub wasm_plugins: Store<DynamicObject>,
    /// Notified on every change.
    pub changed: Notify,
}

impl Stores {
    /// Empty stores.
    pub fn new() -> Self {
        Self {
            ingresses: Store::new(),
            services: Store::new(),
            endpoints: Store::new(),
            wasm_plugins: Store::new(),
            changed: Notify::new(),
        }
    }

    /// What the stores hold now.
    pub fn snapshot(&self) -> Objects {
        Objects {
            ingresses: self.ingresses.list(),
            services: self.services.list(),
            endpoints: self.endpoints.list(),
            wasm_plugins: self.wasm_plugins.list(),
        }
    }

    /// Whether Ingresses, Services and Endpoints have been listed once.
    pub fn core_ready(&self) -> bool {
        self.ingresses.is_ready() && self.services.is_ready() && self.endpoints.is_ready()
    }
}

impl Default for Stores {
    fn default() -> Self {
        Self::new()
    }
}

/// Starts the four watchers; they run until aborted.
pub fn spawn(client: &Client, system_namespace: &str, stores: &Arc<Stores>) -> Vec<JoinHandle<()>> {
    let plugins: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), system_namespace, &wasm_plugin_resource());
    vec![
        tokio::spawn(run(
            Api::<Ingress>::all(client.clone()),
            stores.clone(),
            |s| &s.ingresses,
        )),
        tokio::spawn(run(
            Api::<Service>::all(client.clone()),
            stores.clone(),
            |s| &s.services,
        )),
        tokio::spawn(run(
            Api::<Endpoints>::all(client.clone()),
            stores.clone(),
            |s| &s.endpoints,
        )),
        tokio::spawn(run(plugins, stores.clone(), |s| &s.wasm_plugins)),
    ]
}

async fn run<K>(api: Api<K>, stores: Arc<Stores>, store: fn(&Stores) -> &Store<K>)
where
    K: Resource + ResourceExt + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let kind = std::any::type_name::<K>()
        .rsplit("::")
        .next()
        .unwrap_or("?");
    let mut events = watch_stream(api).boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(event) => {
                if store(&stores).apply(event) {
                    debug!(kind, "watch event");
                    stores.changed.notify_one();
                }
            }
            Err(e) => warn!(kind, error = %e, "watch failed; retrying"),
        }
    }
}

fn watch_stream<K>(
    api: Api<K>,
) -> impl futures::Stream<Item = Result<Event<K>, watcher::Error>> + Send
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    watcher::watcher(api, watcher::Config::default()).backoff(QuickBackoff::default())
}

/// Retry delays after a watch error: 10 ms doubling up to 5 s, back to 10 ms after a success.
///
/// kube's default starts at 800 ms, so an in-stream 410 (history compacted) would hold every
/// update back for about a second; client-go informers, as in Higress, re-list at once.
#[derive(Debug, Clone, Copy)]
struct QuickBackoff {
    next: Duration,
}

const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

impl Default for QuickBackoff {
    fn default() -> Self {
        Self { next: BACKOFF_MIN }
    }
}

impl Iterator for QuickBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        Some(delay)
    }
}

impl Backoff for QuickBackoff {
    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

/// `(kind, namespace, name, resourceVersion)` of everything the gateway watches, listed now.
/// WasmPlugins count as none when their CRD is not installed.
pub async fn list_fingerprint(
    client: &Client,
    system_namespace: &str,
) -> Result<Fingerprint, Error> {
    let lp = ListParams::default();
    let ingresses = Api::<Ingress>::all(client.clone()).list(&lp).await?;
    let services = Api::<Service>::all(client.clone()).list(&lp).await?;
    let endpoints = Api::<Endpoints>::all(client.clone()).list(&lp).await?;
    let plugins: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), system_namespace, &wasm_plugin_resource());
    let wasm_plugins = match plugins.list(&lp).await {
        Ok(list) => list.items,
        Err(kube::Error::Api(status)) if status.code == 404 => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let objects = Objects {
        ingresses: ingresses.items.into_iter().map(Arc::new).collect(),
        services: services.items.into_iter().map(Arc::new).collect(),
        endpoints: endpoints.items.into_iter().map(Arc::new).collect(),
        wasm_plugins: wasm_plugins.into_iter().map(Arc::new).collect(),
    };
    Ok(objects.fingerprint())
}
