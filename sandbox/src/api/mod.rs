//! A fake Kubernetes API server on loopback, for tests and the local sandbox.
//!
//! It speaks the REST wire protocol kube's real HTTP client and kubectl 1.37 rely on
//! (see `shared/reference/kube-api-wire.md` and `kubectl-wire.md`): built-in resources and
//! CRDs, discovery (aggregated v2 and legacy), an OpenAPI v3 stub, one global resourceVersion
//! with an event history, lists with selectors and pagination, watches with bookmarks,
//! replay, in-stream 410s and watch-list, create/replace/delete with apiserver-shaped `Status`
//! errors, merge/JSON/strategic merge patches, server-side apply with field managers, status
//! and scale subresources, finalizers, background garbage collection, `dryRun=All`,
//! metadata-only and Table responses, defaulting and validation of Deployments and Services,
//! CRD schema pruning, defaults and validation, and decoding of built-in kinds through their
//! k8s-openapi types (unknown fields dropped and reported per `fieldValidation`).
//!
//! It is a test double. What it does not model: authentication and authorization, admission
//! webhooks, CEL rules and schema combinators (`oneOf`/`anyOf`/`allOf`/`not`) in CRD
//! schemas, CRD version conversion (versions share storage and only `apiVersion` changes;
//! core and `events.k8s.io` Events are stored apart), protobuf/CBOR, consistent snapshots
//! across list pages and historical reads (`resourceVersionMatch=Exact` serves the current
//! state unless compacted), graceful pod deletion (pods go at once), namespace termination
//! (deleting a namespace deletes its content at once), `metadata.managedFields` (ownership
//! is tracked for server-side apply, conflicts included, but not exposed, so kubectl never
//! migrates client-side to server-side apply), NodePort
//! allocation, GC of objects created with dangling owner references, `blockOwnerDeletion`,
//! and the controllers that make objects come alive (see [`crate::sim`]). Garbage collection
//! runs synchronously right after a deletion.
//!
//! Test controls: [`ApiServer::requests`] (request log), [`ApiServer::inject`] (status codes,
//! delays, dropped connections; note that kube's default client retries 429/503/504 up to 15
//! times, so use [`Fault::times`] for those), [`ApiServer::close_watches`],
//! [`ApiServer::compact`], and writes by another actor ([`ApiServer::external_write`] and
//! friends).

mod apply;
mod controls;
pub mod crds;
mod defaults;
mod discovery;
mod errors;
mod handlers;
mod patch;
mod registry;
mod render;
mod schema;
mod selectors;
mod store;
mod typed;
mod watch;

use std::{
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::Value;
use tokio::{net::TcpListener, sync::watch as signal, task::JoinHandle};
use tracing::{debug, info};

pub use controls::{Fault, FaultAction, FaultId, Matcher, RequestRecord};
pub use errors::{ApiError, Error};

use store::{DeleteOpts, State, Sub, WriteOpts};

/// How to run the server.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// Interval of BOOKMARK events on watches that allow them (the real server: ~1 min).
    pub bookmark_interval: Duration,
    /// Upper bound of a watch's duration; also the duration when `timeoutSeconds` is absent.
    /// Lower it to make clients re-watch often.
    pub max_watch_timeout: Duration,
    /// Events kept for watch replay; older ones are compacted away (then 410 Expired).
    pub history_limit: usize,
    /// Namespaces created at start (a real cluster has `default` and the `kube-*` ones).
    pub namespaces: Vec<String>,
    /// CRD YAML documents registered at start.
    pub crds: Vec<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            port: 0,
            bookmark_interval: Duration::from_secs(60),
            max_watch_timeout: Duration::from_secs(1800),
            history_limit: 10_000,
            namespaces: ["default", "kube-system", "kube-public", "kube-node-lease"]
                .map(str::to_string)
                .to_vec(),
            crds: Vec::new(),
        }
    }
}

/// State shared by the connection tasks.
pub(crate) struct Shared {
    state: Mutex<State>,
    config: ApiConfig,
    controls: controls::Controls,
    shutdown: signal::Receiver<bool>,
    /// `127.0.0.1:PORT`.
    address: String,
}

/// A running fake API server; stops on [`ApiServer::shutdown`] or drop.
pub struct ApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: signal::Sender<bool>,
    task: JoinHandle<()>,
}

impl ApiServer {
    /// Binds 127.0.0.1 and serves on the current tokio runtime.
    pub async fn start(config: ApiConfig) -> Result<ApiServer, Error> {
        let bind = format!("127.0.0.1:{}", config.port);
        let listener = TcpListener::bind(&bind)
            .await
            .map_err(|source| Error::Bind {
                addr: bind.clone(),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: bind.clone(),
            source,
        })?;
        let (stop, shutdown) = signal::channel(false);
        let mut state = State::new(config.history_limit);
        let boot = WriteOpts {
            manager: "sandbox".into(),
            manager_explicit: true,
            ..WriteOpts::default()
        };
        let ns_rt = state
            .registry
            .find("namespaces")
            .cloned()
            .expect("invariant: namespaces are built in");
        for ns in &config.namespaces {
            let body = serde_json::json!({"metadata": {"name": ns}});
            state.create(&ns_rt, "", body, &boot)?;
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            config: config.clone(),
            controls: controls::Controls::new(),
            shutdown,
            address: addr.to_string(),
        });
        let server = ApiServer {
            shared: shared.clone(),
            addr,
            stop,
            task: tokio::spawn(accept_loop(listener, shared)),
        };
        for yaml in &config.crds {
            server.register_crd_yaml(yaml)?;
        }
        info!(url = %server.url(), "fake API server listening");
        Ok(server)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kube config pointing at this server (default namespace `default`).
    pub fn kube_config(&self) -> kube::Config {
        let uri = self
            .url()
            .parse()
            .expect("invariant: http://127.0.0.1:PORT is a valid URI");
        kube::Config::new(uri)
    }

    /// kube's real HTTP client, talking plain HTTP to this server.
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.kube_config())
            .expect("invariant: a plain-http kube config always builds a client")
    }

    /// A kubeconfig (YAML) with one cluster, context and user named `sandbox`.
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: sandbox\n  cluster:\n    server: {}\n\
             contexts:\n- name: sandbox\n  context:\n    cluster: sandbox\n    user: sandbox\n    \
             namespace: default\ncurrent-context: sandbox\npreferences: {{}}\nusers:\n- name: \
             sandbox\n  user: {{}}\n",
            self.url()
        )
    }

    /// Writes [`ApiServer::kubeconfig_yaml`] to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<(), Error> {
        std::fs::write(path, self.kubeconfig_yaml()).map_err(|source| Error::Kubeconfig {
            path: path.display().to_string(),
            source,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .expect("invariant: state lock not poisoned")
    }

    /// Registers the CRDs in a (multi-document) YAML, as `kubectl apply` would: each becomes
    /// a CustomResourceDefinition object (created, or replaced if it exists) and its
    /// resources are served at once. Returns the CRD names.
    pub fn register_crd_yaml(&self, yaml: &str) -> Result<Vec<String>, Error> {
        let mut names = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            let value: Value = serde::Deserialize::deserialize(doc)?;
            if value.is_null() {
                continue;
            }
            let kind = value
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if kind != "CustomResourceDefinition" {
                return Err(Error::WrongKind {
                    expected: "CustomResourceDefinition".into(),
                    found: kind.to_string(),
                });
            }
            let name = value
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let mut state = self.state();
            let rt = state
                .registry
                .find("customresourcedefinitions")
                .cloned()
                .expect("invariant: CRDs are built in");
            let opts = WriteOpts {
                manager: "sandbox".into(),
                manager_explicit: true,
                ..WriteOpts::default()
            };
            match state.get(&rt, "", &name) {
                Ok(existing) => {
                    let mut next = value;
                    next["metadata"]["resourceVersion"] =
                        existing["metadata"]["resourceVersion"].clone();
                    state.update(&rt, "", &name, next, Sub::Main, &opts)?;
                }
                Err(_) => {
                    state.create(&rt, "", value, &opts)?;
                }
            }
            names.push(name);
        }
        Ok(names)
    }

    /// Every request served so far, in order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared
            .controls
            .requests
            .lock()
            .expect("invariant: request log lock not poisoned")
            .clone()
    }

    /// Forgets the request log.
    pub fn clear_requests(&self) {
        self.shared
            .controls
            .requests
            .lock()
            .expect("invariant: request log lock not poisoned")
            .clear();
    }

    /// Injects a fault; the first matching fault applies to each request.
    pub fn inject(&self, fault: Fault) -> FaultId {
        self.shared.controls.inject(fault)
    }

    pub fn remove_fault(&self, id: FaultId) {
        self.shared.controls.remove(id);
    }

    pub fn clear_faults(&self) {
        self.shared.controls.clear();
    }

    /// Ends every open watch stream cleanly (as an apiserver restart or a load balancer
    /// cutting idle connections would); clients re-watch from their last resourceVersion.
    pub fn close_watches(&self) {
        debug!("closing every watch");
        self.shared.controls.close_all_watches();
    }

    /// Compacts the event history up to now: watches from an older resourceVersion get an
    /// in-stream 410 Expired, so clients re-list.
    pub fn compact(&self) {
        self.state().compact();
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.state().current_rv()
    }

    fn resource(&self, state: &State, resource: &str) -> Result<registry::ResourceType, Error> {
        state
            .registry
            .find(resource)
            .cloned()
            .ok_or_else(|| Error::UnknownResource(resource.to_string()))
    }

    /// Reads an object without a request (`resource` as kubectl names it: `deployments`,
    /// `deploy`, `wasmplugins.extensions.higress.io`, ...). `namespace` is ignored for
    /// cluster-scoped kinds.
    pub fn object(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let state = self.state();
        let rt = self.resource(&state, resource).ok()?;
        state.get(&rt, namespace, name).ok()
    }

    fn actor_opts() -> WriteOpts {
        WriteOpts {
            manager: "external-actor".into(),
            manager_explicit: true,
            ..WriteOpts::default()
        }
    }

    /// Writes an object as another actor would (a human with kubectl, an HPA...): `edit`
    /// changes the current object, which then goes through the normal update pipeline (RV
    /// bump and MODIFIED event, or nothing for a no-op). Status changes are ignored for kinds
    /// with a status subresource; use [`ApiServer::external_write_status`] for those.
    pub fn external_write(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        edit: impl FnOnce(&mut Value),
    ) -> Result<Value, Error> {
        self.external(resource, namespace, name, edit, Sub::Main)
    }

    /// Like [`ApiServer::external_write`], through the status subresource.
    pub fn external_write_status(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        edit: impl FnOnce(&mut Value),
    ) -> Result<Value, Error> {
        self.external(resource, namespace, name, edit, Sub::Status)
    }

    fn external(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        edit: impl FnOnce(&mut Value),
        sub: Sub,
    ) -> Result<Value, Error> {
        let mut state = self.state();
        let rt = self.resource(&state, resource)?;
        let mut obj = state.get(&rt, namespace, name)?;
        edit(&mut obj);
        Ok(state
            .update(&rt, namespace, name, obj, sub, &Self::actor_opts())?
            .object)
    }

    /// Creates an object as another actor.
    pub fn external_create(
        &self,
        resource: &str,
        namespace: &str,
        object: Value,
    ) -> Result<Value, Error> {
        let mut state = self.state();
        let rt = self.resource(&state, resource)?;
        Ok(state
            .create(&rt, namespace, object, &Self::actor_opts())?
            .object)
    }

    /// Deletes an object as another actor (background propagation).
    pub fn external_delete(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Value, Error> {
        let mut state = self.state();
        let rt = self.resource(&state, resource)?;
        Ok(state.delete(&rt, namespace, name, &DeleteOpts::default())?)
    }

    /// Stops accepting, closes every connection and watch. Also done on drop.
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
        self.task.abort();
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let stream = tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    debug!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let mut conn_shutdown = shared.shutdown.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req| handlers::handle(shared.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::select! {
                result = conn => {
                    if let Err(e) = result {
                        debug!(error = %e, "connection ended");
                    }
                }
                _ = conn_shutdown.changed() => {}
            }
        });
    }
}
