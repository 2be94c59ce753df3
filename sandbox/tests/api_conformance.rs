//! Wire-contract conformance of the fake API server, written only with kube's `Api<K>` (and
//! `watcher`) so the same tests run against a real cluster:
//!
//! - `fake::*` run against a fresh in-process [`sandbox::api::ApiServer`] (the default);
//! - `real_cluster::*` are `#[ignore]`d; run them with `SANDBOX_REAL_CLUSTER=1` and a
//!   `KUBECONFIG` pointing at a disposable cluster (they create namespaces and one CRD,
//!   `widgets.conformance.sandbox.test`): `cargo test -p sandbox --test api_conformance --
//!   --ignored`.
//!
//! Tests that need the fake's controls (compaction, closing watches) exist only in `fake`.

use std::{future::Future, time::Duration};

use anyhow::{anyhow, bail, ensure, Context, Result};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        coordination::v1::Lease,
        core::v1::{ConfigMap, Namespace, Service},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    api::{
        Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
        PatchParams, PostParams, WatchEvent, WatchParams,
    },
    runtime::watcher,
    Client, ResourceExt,
};
use sandbox::api::{ApiConfig, ApiServer};
use serde_json::{json, Value};
use tokio::time::Instant;

/// Where the tests run.
struct Target {
    client: Client,
    ns: String,
    server: Option<ApiServer>,
}

impl Target {
    async fn fake() -> Result<Target> {
        let server = ApiServer::start(ApiConfig::default()).await?;
        let client = server.client();
        let target = Target {
            client,
            ns: String::new(),
            server: Some(server),
        };
        target.with_namespace().await
    }

    /// `None` unless `SANDBOX_REAL_CLUSTER=1`.
    async fn real() -> Result<Option<Target>> {
        if std::env::var("SANDBOX_REAL_CLUSTER").as_deref() != Ok("1") {
            eprintln!(
                "skipped: set SANDBOX_REAL_CLUSTER=1 and KUBECONFIG to run against a real cluster"
            );
            return Ok(None);
        }
        let client = Client::try_default()
            .await
            .context("building a client from KUBECONFIG")?;
        let target = Target {
            client,
            ns: String::new(),
            server: None,
        };
        Ok(Some(target.with_namespace().await?))
    }

    async fn with_namespace(mut self) -> Result<Target> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"generateName": "conformance-"}}))?;
        let created = api.create(&PostParams::default(), &ns).await?;
        self.ns = created.name_any();
        Ok(self)
    }

    async fn cleanup(&self) -> Result<()> {
        if self.server.is_none() {
            let api: Api<Namespace> = Api::all(self.client.clone());
            api.delete(&self.ns, &DeleteParams::default()).await?;
        }
        Ok(())
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn server(&self) -> &ApiServer {
        self.server
            .as_ref()
            .expect("invariant: fake-only tests run against the fake")
    }
}

/// Generates `fake::<test>` and an ignored `real_cluster::<test>` for each conformance test.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod fake {
            $(
                #[tokio::test]
                async fn $name() -> anyhow::Result<()> {
                    let target = super::Target::fake().await?;
                    super::$name(&target).await?;
                    target.cleanup().await
                }
            )*
        }
        mod real_cluster {
            $(
                #[tokio::test]
                #[ignore = "needs a real cluster: SANDBOX_REAL_CLUSTER=1 and KUBECONFIG"]
                async fn $name() -> anyhow::Result<()> {
                    let Some(target) = super::Target::real().await? else { return Ok(()) };
                    let result = super::$name(&target).await;
                    target.cleanup().await?;
                    result
                }
            )*
        }
    };
}

conformance!(
    created_objects_get_server_fields_and_defaults,
    errors_are_status_objects_that_carry_a_reason,
    no_op_writes_do_not_bump_the_resource_version,
    status_is_a_separate_subresource_and_generation_follows_the_spec,
    merge_json_and_strategic_merge_patches_apply,
    server_side_apply_upserts_removes_dropped_fields_and_reports_conflicts,
    lists_filter_by_selectors_and_paginate,
    watches_replay_from_a_resource_version_and_follow_selector_transitions,
    streaming_lists_send_initial_events_then_a_bookmark,
    the_scale_subresource_reads_and_writes_replicas,
    finalizers_hold_deletion_until_removed,
    deleting_an_owner_collects_its_dependents,
    foreground_and_orphan_deletion_propagate_as_asked,
    metadata_watchers_across_namespaces_see_partial_objects,
    dry_run_validates_without_storing,
    metadata_only_requests_get_partial_object_metadata,
    services_get_a_unique_immutable_cluster_ip,
    custom_resources_are_pruned_defaulted_and_validated,
    generic_kinds_support_crud,
    legacy_discovery_lists_groups_and_resources,
    unknown_fields_of_built_in_kinds_are_dropped_or_rejected,
);

fn deployment(name: &str, image: &str) -> Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": image,
                                          "ports": [{"containerPort": 8080}]}]}
            }
        }
    }))?)
}

fn config_map(name: &str, labels: Value, data: Value) -> Result<ConfigMap> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "data": data
    }))?)
}

/// `(code, reason)` of an API error.
fn api_error<T: std::fmt::Debug>(r: kube::Result<T>) -> Result<(u16, String)> {
    match r {
        Err(kube::Error::Api(s)) => Ok((s.code, s.reason.clone())),
        other => bail!("expected an API error, got {other:?}"),
    }
}

fn rv<K: kube::Resource>(obj: &K) -> String {
    obj.resource_version().unwrap_or_default()
}

/// Polls `f` until it yields `Some`, for at most 20 s.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(t) = f().await? {
            return Ok(t);
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn created_objects_get_server_fields_and_defaults(t: &Target) -> Result<()> {
    let api: Api<Deployment> = t.api();
    let mut d = deployment("web", "registry.example/version:v1")?;
    d.status = Some(serde_json::from_value(json!({"replicas": 9}))?);
    let created = api.create(&PostParams::default(), &d).await?;
    ensure!(created.uid().is_some_and(|u| !u.is_empty()), "uid");
    ensure!(created.creation_timestamp().is_some(), "creationTimestamp");
    ensure!(!rv(&created).is_empty(), "resourceVersion");
    ensure!(created.metadata.generation == Some(1), "generation 1");
    let spec = created.spec.clone();
    let strategy = serde_json::to_value(&spec.strategy)?;
    ensure!(strategy["type"] == "RollingUpdate", "{strategy}");
    ensure!(strategy["rollingUpdate"]["maxSurge"] == "25%", "{strategy}");
    ensure!(spec.revision_history_limit == Some(10));
    ensure!(spec.progress_deadline_seconds == Some(600));
    let pod = serde_json::to_value(&spec.template.spec)?;
    ensure!(pod["restartPolicy"] == "Always", "{pod}");
    ensure!(pod["dnsPolicy"] == "ClusterFirst", "{pod}");
    ensure!(pod["terminationGracePeriodSeconds"] == 30, "{pod}");
    let c = &pod["containers"][0];
    ensure!(c["imagePullPolicy"] == "IfNotPresent", "{c}");
    ensure!(c["terminationMessagePath"] == "/dev/termination-log", "{c}");
    ensure!(c["ports"][0]["protocol"] == "TCP", "{c}");
    let replicas = created.status.as_ref().and_then(|s| s.replicas);
    ensure!(
        replicas.is_none(),
        "status is reset on create, got {replicas:?}"
    );

    let got = api.get("web").await?;
    ensure!(rv(&got) == rv(&created));
    let all: Api<Deployment> = Api::all(t.client.clone());
    let listed = all.list(&ListParams::default()).await?;
    ensure!(listed
        .items
        .iter()
        .any(|d| d.name_any() == "web" && d.namespace() == Some(t.ns.clone())));
    ensure!(listed
        .metadata
        .resource_version
        .is_some_and(|r| !r.is_empty()));

    let version = t.client.apiserver_version().await?;
    ensure!(!version.major.is_empty());
    Ok(())
}

async fn errors_are_status_objects_that_carry_a_reason(t: &Target) -> Result<()> {
    let api: Api<Deployment> = t.api();
    ensure!(api_error(api.get("missing").await)? == (404, "NotFound".into()));
    ensure!(
        api.get_opt("missing").await?.is_none(),
        "get_opt maps 404 to None"
    );
    let d = deployment("dup", "nginx:1.27")?;
    let created = api.create(&PostParams::default(), &d).await?;
    ensure!(
        api_error(api.create(&PostParams::default(), &d).await)? == (409, "AlreadyExists".into())
    );

    // A stale resourceVersion conflicts.
    api.patch(
        "dup",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 3}})),
    )
    .await?;
    let mut stale = created.clone();
    stale.spec.replicas = Some(4);
    ensure!(
        api_error(api.replace("dup", &PostParams::default(), &stale).await)?
            == (409, "Conflict".into())
    );

    // resourceVersion on create, and a namespace that contradicts the URL.
    let mut with_rv = deployment("with-rv", "nginx:1.27")?;
    with_rv.metadata.resource_version = Some("42".into());
    ensure!(
        api_error(api.create(&PostParams::default(), &with_rv).await)?
            == (500, "InternalError".into())
    );
    let mut elsewhere = deployment("elsewhere", "nginx:1.27")?;
    elsewhere.metadata.namespace = Some("kube-system".into());
    ensure!(
        api_error(api.create(&PostParams::default(), &elsewhere).await)?
            == (400, "BadRequest".into())
    );

    // Validation: the selector must match the template labels, and is immutable.
    let mut bad = deployment("bad", "nginx:1.27")?;
    bad.spec.selector = serde_json::from_value(json!({"matchLabels": {"app": "other"}}))?;
    let err = api.create(&PostParams::default(), &bad).await;
    match &err {
        Err(kube::Error::Api(s)) => ensure!(
            s.code == 422 && s.reason == "Invalid" && s.message.contains("does not match template"),
            "{s:?}"
        ),
        other => bail!("expected 422, got {other:?}"),
    }
    let change_selector = Patch::Merge(json!({"spec": {
        "selector": {"matchLabels": {"app": "dup", "x": "y"}},
        "template": {"metadata": {"labels": {"x": "y"}}}}}));
    ensure!(
        api_error(
            api.patch("dup", &PatchParams::default(), &change_selector)
                .await
        )? == (422, "Invalid".into())
    );

    // A failed JSON-patch `test` is a 422.
    let failing: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/name", "value": "nope"}]))?;
    ensure!(
        api_error(
            api.patch("dup", &PatchParams::default(), &Patch::Json::<()>(failing))
                .await
        )?
        .0 == 422
    );

    // Apply requires a field manager (kube checks that client-side); no such object to delete.
    ensure!(
        api_error(api.delete("missing", &DeleteParams::default()).await)?
            == (404, "NotFound".into())
    );
    Ok(())
}

async fn no_op_writes_do_not_bump_the_resource_version(t: &Target) -> Result<()> {
    let api: Api<ConfigMap> = t.api();
    let cm = api
        .create(
            &PostParams::default(),
            &config_map("cm", json!({"a": "b"}), json!({"k": "v"}))?,
        )
        .await?;
    let same = api
        .patch(
            "cm",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k": "v"}})),
        )
        .await?;
    ensure!(rv(&same) == rv(&cm), "merge patch with the same values");
    let replaced = api.replace("cm", &PostParams::default(), &same).await?;
    ensure!(rv(&replaced) == rv(&cm), "replace with the same object");
    let changed = api
        .patch(
            "cm",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k": "w"}})),
        )
        .await?;
    ensure!(rv(&changed) != rv(&cm));
    Ok(())
}

async fn status_is_a_separate_subresource_and_generation_follows_the_spec(
    t: &Target,
) -> Result<()> {
    let api: Api<Deployment> = t.api();
    api.create(&PostParams::default(), &deployment("gen", "nginx:1.27")?)
        .await?;
    let labelled = api
        .patch(
            "gen",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "1"}}})),
        )
        .await?;
    ensure!(
        labelled.metadata.generation == Some(1),
        "metadata changes keep the generation"
    );
    let scaled = api
        .patch(
            "gen",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}, "status": {"replicas": 7}})),
        )
        .await?;
    ensure!(
        scaled.metadata.generation == Some(2),
        "spec changes bump the generation"
    );
    ensure!(
        scaled.status.as_ref().and_then(|s| s.replicas).is_none(),
        "the main resource ignores status"
    );

    let status = api
        .patch_status(
            "gen",
            &PatchParams::default(),
            &Patch::Merge(json!({
            "spec": {"replicas": 10},
            "status": {"observedGeneration": 2, "replicas": 3}})),
        )
        .await?;
    ensure!(status.status.as_ref().and_then(|s| s.replicas) == Some(3));
    ensure!(status.spec.replicas == Some(3), "status writes ignore spec");
    ensure!(
        status.metadata.generation == Some(2),
        "status writes keep the generation"
    );
    let read = api.get_status("gen").await?;
    ensure!(read.status.and_then(|s| s.observed_generation) == Some(2));
    Ok(())
}

async fn merge_json_and_strategic_merge_patches_apply(t: &Target) -> Result<()> {
    let api: Api<Deployment> = t.api();
    let mut d = deployment("patched", "nginx:1.26")?;
    let pod = d.spec.template.spec.as_mut().context("pod")?;
    pod.containers.push(serde_json::from_value(
        json!({"name": "side", "image": "busybox:1"}),
    )?);
    api.create(&PostParams::default(), &d).await?;

    // kubectl set image: SMP merges containers by name, the other fields survive.
    let smp = Patch::Strategic(json!({"spec": {"template": {"spec": {
        "$setElementOrder/containers": [{"name": "main"}, {"name": "side"}],
        "containers": [{"name": "main", "image": "nginx:1.27"}]}}}}));
    let out = api.patch("patched", &PatchParams::default(), &smp).await?;
    let pod = serde_json::to_value(&out.spec.template.spec)?;
    ensure!(pod["containers"][0]["image"] == "nginx:1.27", "{pod}");
    ensure!(
        pod["containers"][0]["ports"][0]["containerPort"] == 8080,
        "{pod}"
    );
    ensure!(pod["containers"][1]["name"] == "side", "{pod}");

    // SMP list deletion directive.
    let delete_side = Patch::Strategic(json!({"spec": {"template": {"spec": {
        "containers": [{"$patch": "delete", "name": "side"}]}}}}));
    let out = api
        .patch("patched", &PatchParams::default(), &delete_side)
        .await?;
    ensure!(out.spec.template.spec.context("pod")?.containers.len() == 1);

    // Merge patch replaces lists wholesale and deletes with null.
    let merge = Patch::Merge(json!({"metadata": {"annotations": {"a": "1", "b": "2"}}}));
    api.patch("patched", &PatchParams::default(), &merge)
        .await?;
    let merge = Patch::Merge(json!({"metadata": {"annotations": {"a": null}}}));
    let out = api
        .patch("patched", &PatchParams::default(), &merge)
        .await?;
    ensure!(
        out.annotations().get("a").is_none()
            && out.annotations().get("b").is_some_and(|b| b == "2")
    );

    // JSON patch: add then test+remove a finalizer (kube-runtime's finalizer helper).
    let add: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/finalizers", "value": null},
        {"op": "add", "path": "/metadata/finalizers", "value": ["example.com/cleanup"]}]))?;
    let out = api
        .patch("patched", &PatchParams::default(), &Patch::Json::<()>(add))
        .await?;
    ensure!(out.finalizers() == ["example.com/cleanup"]);
    let remove: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/finalizers/0", "value": "example.com/cleanup"},
        {"op": "remove", "path": "/metadata/finalizers/0"}]))?;
    let out = api
        .patch(
            "patched",
            &PatchParams::default(),
            &Patch::Json::<()>(remove),
        )
        .await?;
    ensure!(out.finalizers().is_empty());

    // A merge patch carrying a stale resourceVersion is an optimistic lock.
    let locked =
        Patch::Merge(json!({"metadata": {"resourceVersion": "1"}, "spec": {"replicas": 1}}));
    ensure!(
        api_error(api.patch("patched", &PatchParams::default(), &locked).await)?.1 == "Conflict"
    );
    Ok(())
}

async fn server_side_apply_upserts_removes_dropped_fields_and_reports_conflicts(
    t: &Target,
) -> Result<()> {
    let api: Api<ConfigMap> = t.api();
    let first = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "ssa", "labels": {"owner": "a"}}, "data": {"a": "1", "b": "2"}});
    let pp = PatchParams::apply("manager-a");
    let created = api.patch("ssa", &pp, &Patch::Apply(&first)).await?;
    ensure!(created.data.as_ref().is_some_and(|d| d.len() == 2));

    // Another manager takes `c`; manager-a then drops `b`, which goes, and never owned `c`.
    api.patch(
        "ssa",
        &PatchParams::apply("manager-b"),
        &Patch::Apply(json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"c": "3"}})),
    )
    .await?;
    let second = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "ssa"}, "data": {"a": "1"}});
    let out = api.patch("ssa", &pp, &Patch::Apply(&second)).await?;
    let data = out.data.clone().unwrap_or_default();
    ensure!(data.get("a").is_some_and(|v| v == "1"), "{data:?}");
    ensure!(!data.contains_key("b"), "dropped field removed: {data:?}");
    ensure!(
        data.get("c").is_some_and(|v| v == "3"),
        "other manager's field kept: {data:?}"
    );
    ensure!(
        out.labels().is_empty(),
        "dropped label removed: {:?}",
        out.labels()
    );
    let again = api.patch("ssa", &pp, &Patch::Apply(&second)).await?;
    ensure!(
        rv(&again) == rv(&out),
        "re-applying the same configuration is a no-op"
    );

    // manager-b setting `a` to another value conflicts unless forced.
    let conflicting = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "ssa"}, "data": {"a": "other", "c": "3"}});
    let err = api
        .patch(
            "ssa",
            &PatchParams::apply("manager-b"),
            &Patch::Apply(&conflicting),
        )
        .await;
    ensure!(api_error(err)? == (409, "Conflict".into()));
    let forced = api
        .patch(
            "ssa",
            &PatchParams::apply("manager-b").force(),
            &Patch::Apply(&conflicting),
        )
        .await?;
    ensure!(forced
        .data
        .unwrap_or_default()
        .get("a")
        .is_some_and(|v| v == "other"));
    Ok(())
}

async fn lists_filter_by_selectors_and_paginate(t: &Target) -> Result<()> {
    let api: Api<ConfigMap> = t.api();
    for i in 0..5 {
        let tier = if i % 2 == 0 { "even" } else { "odd" };
        api.create(
            &PostParams::default(),
            &config_map(
                &format!("page-{i}"),
                json!({"tier": tier, "set": "pages"}),
                json!({}),
            )?,
        )
        .await?;
    }
    let first = api
        .list(&ListParams::default().labels("set=pages").limit(2))
        .await?;
    ensure!(first.items.len() == 2);
    let token = first.metadata.continue_.clone().context("continue token")?;
    let rest = api
        .list(
            &ListParams::default()
                .labels("set=pages")
                .limit(10)
                .continue_token(&token),
        )
        .await?;
    ensure!(rest.items.len() == 3, "got {}", rest.items.len());
    let names: Vec<String> = first
        .items
        .iter()
        .chain(&rest.items)
        .map(|c| c.name_any())
        .collect();
    ensure!(
        names == ["page-0", "page-1", "page-2", "page-3", "page-4"],
        "{names:?}"
    );

    let unfiltered = api.list(&ListParams::default().limit(1)).await?;
    ensure!(unfiltered
        .metadata
        .remaining_item_count
        .is_some_and(|n| n >= 4));

    let even = api.list(&ListParams::default().labels("tier=even")).await?;
    ensure!(even.items.len() == 3);
    let set_based = api
        .list(&ListParams::default().labels("tier in (odd),set"))
        .await?;
    ensure!(set_based.items.len() == 2);
    let not_even = api
        .list(&ListParams::default().labels("set=pages,tier!=even"))
        .await?;
    ensure!(not_even.items.len() == 2);
    let by_name = api
        .list(&ListParams::default().fields("metadata.name=page-3"))
        .await?;
    ensure!(by_name.items.len() == 1 && by_name.items[0].name_any() == "page-3");
    let others = api
        .list(
            &ListParams::default()
                .labels("set=pages")
                .fields("metadata.name!=page-3"),
        )
        .await?;
    ensure!(others.items.len() == 4);
    Ok(())
}

async fn next_event<K>(
    stream: &mut (impl futures::Stream<Item = kube::Result<WatchEvent<K>>> + Unpin),
) -> Result<WatchEvent<K>> {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .context("no watch event within 20s")?
            .context("watch ended")??;
        if !matches!(event, WatchEvent::Bookmark(_)) {
            return Ok(event);
        }
    }
}

async fn watches_replay_from_a_resource_version_and_follow_selector_transitions(
    t: &Target,
) -> Result<()> {
    let api: Api<ConfigMap> = t.api();
    let start = api.list(&ListParams::default()).await?;
    let from = start.metadata.resource_version.context("list RV")?;
    // Written before the watch starts: replayed from history.
    api.create(
        &PostParams::default(),
        &config_map("w", json!({"watched": "yes"}), json!({"v": "1"}))?,
    )
    .await?;
    let wp = WatchParams::default().labels("watched=yes").timeout(60);
    let mut stream = api.watch(&wp, &from).await?.boxed();
    match next_event(&mut stream).await? {
        WatchEvent::Added(cm) => ensure!(cm.name_any() == "w" && !rv(&cm).is_empty()),
        other => bail!("expected ADDED, got {other:?}"),
    }
    api.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"v": "2"}})),
    )
    .await?;
    match next_event(&mut stream).await? {
        WatchEvent::Modified(cm) => ensure!(cm
            .data
            .unwrap_or_default()
            .get("v")
            .is_some_and(|v| v == "2")),
        other => bail!("expected MODIFIED, got {other:?}"),
    }
    // Leaving the selector is a DELETED for this watch; coming back is an ADDED.
    api.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"watched": "no"}}})),
    )
    .await?;
    ensure!(
        matches!(next_event(&mut stream).await?, WatchEvent::Deleted(_)),
        "left the selector"
    );
    api.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"watched": "yes"}}})),
    )
    .await?;
    ensure!(
        matches!(next_event(&mut stream).await?, WatchEvent::Added(_)),
        "came back"
    );
    api.delete("w", &DeleteParams::default()).await?;
    match next_event(&mut stream).await? {
        WatchEvent::Deleted(cm) => ensure!(!rv(&cm).is_empty(), "DELETED carries an RV"),
        other => bail!("expected DELETED, got {other:?}"),
    }
    Ok(())
}

async fn streaming_lists_send_initial_events_then_a_bookmark(t: &Target) -> Result<()> {
    let api: Api<ConfigMap> = t.api();
    for name in ["s1", "s2"] {
        api.create(
            &PostParams::default(),
            &config_map(name, json!({}), json!({}))?,
        )
        .await?;
    }
    let cfg = watcher::Config::default().streaming_lists();
    let mut events = watcher(api.clone(), cfg).boxed();
    let mut initial = Vec::new();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(20), events.try_next())
            .await
            .context("no watcher event within 20s")??
            .context("watcher ended")?;
        match event {
            watcher::Event::Init => {}
            watcher::Event::InitApply(cm) => initial.push(cm.name_any()),
            watcher::Event::InitDone => break,
            other => bail!("unexpected {other:?} before InitDone"),
        }
    }
    initial.retain(|n| n.starts_with('s'));
    initial.sort();
    ensure!(initial == ["s1", "s2"], "{initial:?}");
    api.create(
        &PostParams::default(),
        &config_map("s3", json!({}), json!({}))?,
    )
    .await?;
    loop {
        let event = tokio::time::timeout(Duration::from_secs(20), events.try_next())
            .await
            .context("no live event")??
            .context("watcher ended")?;
        if let watcher::Event::Apply(cm) = event {
            ensure!(cm.name_any() == "s3");
            return Ok(());
        }
    }
}

async fn the_scale_subresource_reads_and_writes_replicas(t: &Target) -> Result<()> {
    let api: Api<Deployment> = t.api();
    api.create(&PostParams::default(), &deployment("scaled", "nginx:1.27")?)
        .await?;
    let scale = api.get_scale("scaled").await?;
    ensure!(scale.spec.as_ref().and_then(|s| s.replicas) == Some(2));
    let patched = api
        .patch_scale(
            "scaled",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 4}})),
        )
        .await?;
    ensure!(patched.spec.as_ref().and_then(|s| s.replicas) == Some(4));
    let d = api.get("scaled").await?;
    ensure!(d.spec.replicas == Some(4));
    ensure!(d.metadata.generation == Some(2), "scaling changes the spec");
    Ok(())
}

async fn finalizers_hold_deletion_until_removed(t: &Target) -> Result<()> {
    let api: Api<ConfigMap> = t.api();
    let mut cm = config_map("held", json!({}), json!({}))?;
    cm.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    api.create(&PostParams::default(), &cm).await?;
    api.delete("held", &DeleteParams::default()).await?;
    let marked = api.get("held").await?;
    ensure!(
        marked.metadata.deletion_timestamp.is_some(),
        "deletionTimestamp set"
    );
    let add =
        Patch::Merge(json!({"metadata": {"finalizers": ["example.com/hold", "example.com/new"]}}));
    ensure!(api_error(api.patch("held", &PatchParams::default(), &add).await)?.0 == 422);
    api.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await?;
    eventually("the object to go", || {
        let api = api.clone();
        async move { Ok(api.get_opt("held").await?.is_none().then_some(())) }
    })
    .await
}

async fn deleting_an_owner_collects_its_dependents(t: &Target) -> Result<()> {
    let api: Api<ConfigMap> = t.api();
    let owner = api
        .create(
            &PostParams::default(),
            &config_map("owner", json!({}), json!({}))?,
        )
        .await?;
    let mut child = config_map("child", json!({}), json!({}))?;
    child.metadata.owner_references = Some(vec![serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
        "uid": owner.uid().context("uid")?}))?]);
    api.create(&PostParams::default(), &child).await?;
    let mut orphan = config_map("orphan", json!({}), json!({}))?;
    orphan.metadata.owner_references = child.metadata.owner_references.clone();
    api.create(&PostParams::default(), &orphan).await?;
    // The orphan's owner reference is removed before the owner goes.
    api.patch(
        "orphan",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"ownerReferences": null}})),
    )
    .await?;
    api.delete("owner", &DeleteParams::background()).await?;
    eventually("the dependent to be collected", || {
        let api = api.clone();
        async move { Ok(api.get_opt("child").await?.is_none().then_some(())) }
    })
    .await?;
    ensure!(api.get_opt("orphan").await?.is_some());
    Ok(())
}

async fn owner_and_child(t: &Target, owner: &str) -> Result<()> {
    let api: Api<ConfigMap> = t.api();
    let created = api
        .create(
            &PostParams::default(),
            &config_map(owner, json!({}), json!({}))?,
        )
        .await?;
    let mut child = config_map(&format!("{owner}-child"), json!({}), json!({}))?;
    child.metadata.owner_references = Some(vec![serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap", "name": owner,
        "uid": created.uid().context("uid")?, "blockOwnerDeletion": true}))?]);
    api.create(&PostParams::default(), &child).await?;
    Ok(())
}

async fn foreground_and_orphan_deletion_propagate_as_asked(t: &Target) -> Result<()> {
    let api: Api<ConfigMap> = t.api();
    owner_and_child(t, "fg").await?;
    api.delete("fg", &DeleteParams::foreground()).await?;
    for name in ["fg-child", "fg"] {
        eventually(&format!("{name} to go"), || {
            let api = api.clone();
            async move { Ok(api.get_opt(name).await?.is_none().then_some(())) }
        })
        .await?;
    }
    owner_and_child(t, "orph").await?;
    api.delete("orph", &DeleteParams::orphan()).await?;
    eventually("the orphan's owner reference to go", || {
        let api = api.clone();
        async move {
            let child = api.get("orph-child").await?;
            Ok(child.owner_references().is_empty().then_some(()))
        }
    })
    .await?;
    eventually("the owner to go", || {
        let api = api.clone();
        async move { Ok(api.get_opt("orph").await?.is_none().then_some(())) }
    })
    .await
}

async fn metadata_watchers_across_namespaces_see_partial_objects(t: &Target) -> Result<()> {
    // `Api<PartialObjectMeta<K>>` sends the metadata-only Accept header.
    let all: Api<kube::core::PartialObjectMeta<ConfigMap>> = Api::all(t.client.clone());
    let mut events = watcher(all, watcher::Config::default()).boxed();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(20), events.try_next())
            .await
            .context("no watcher event")??
            .context("watcher ended")?;
        if matches!(event, watcher::Event::InitDone) {
            break;
        }
    }
    let api: Api<ConfigMap> = t.api();
    api.create(
        &PostParams::default(),
        &config_map("meta-watched", json!({"a": "b"}), json!({"k": "v"}))?,
    )
    .await?;
    loop {
        let event = tokio::time::timeout(Duration::from_secs(20), events.try_next())
            .await
            .context("no live event")??
            .context("watcher ended")?;
        if let watcher::Event::Apply(meta) = event {
            if meta.metadata.name.as_deref() != Some("meta-watched") {
                continue;
            }
            ensure!(meta.metadata.namespace.as_deref() == Some(t.ns.as_str()));
            ensure!(meta
                .metadata
                .labels
                .unwrap_or_default()
                .get("a")
                .is_some_and(|v| v == "b"));
            let kind = meta.types.map(|t| t.kind).unwrap_or_default();
            ensure!(kind == "PartialObjectMetadata", "kind {kind}");
            return Ok(());
        }
    }
}

async fn dry_run_validates_without_storing(t: &Target) -> Result<()> {
    let api: Api<Deployment> = t.api();
    let pp = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let out = api.create(&pp, &deployment("dry", "nginx:1.27")?).await?;
    ensure!(out.spec.revision_history_limit == Some(10), "defaulted");
    ensure!(api.get_opt("dry").await?.is_none(), "not stored");
    let mut bad = deployment("dry-bad", "nginx:1.27")?;
    bad.spec.selector = serde_json::from_value(json!({"matchLabels": {"app": "x"}}))?;
    ensure!(
        api_error(api.create(&pp, &bad).await)?.0 == 422,
        "still validated"
    );
    Ok(())
}

async fn metadata_only_requests_get_partial_object_metadata(t: &Target) -> Result<()> {
    let api: Api<Deployment> = t.api();
    api.create(&PostParams::default(), &deployment("meta", "nginx:1.27")?)
        .await?;
    let meta = api.get_metadata("meta").await?;
    ensure!(meta.metadata.name.as_deref() == Some("meta"));
    let kind = meta
        .types
        .as_ref()
        .map(|t| t.kind.clone())
        .unwrap_or_default();
    ensure!(kind == "PartialObjectMetadata", "kind {kind}");
    let list = api.list_metadata(&ListParams::default()).await?;
    ensure!(list
        .items
        .iter()
        .any(|m| m.metadata.name.as_deref() == Some("meta")));
    Ok(())
}

async fn services_get_a_unique_immutable_cluster_ip(t: &Target) -> Result<()> {
    let api: Api<Service> = t.api();
    let svc = |name: &str, ip: Option<&str>| -> Result<Service> {
        let mut spec = json!({"selector": {"app": "web"}, "ports": [{"port": 80, "name": "http"}]});
        if let Some(ip) = ip {
            spec["clusterIP"] = json!(ip);
        }
        Ok(serde_json::from_value(
            json!({"metadata": {"name": name}, "spec": spec}),
        )?)
    };
    let a = api.create(&PostParams::default(), &svc("a", None)?).await?;
    let spec = a.spec.clone().context("spec")?;
    let ip = spec.cluster_ip.clone().context("clusterIP allocated")?;
    ensure!(!ip.is_empty() && spec.cluster_ips == Some(vec![ip.clone()]));
    ensure!(spec.type_.as_deref() == Some("ClusterIP"));
    let port = serde_json::to_value(&spec.ports.context("ports")?[0])?;
    ensure!(
        port["targetPort"] == 80 && port["protocol"] == "TCP",
        "{port}"
    );
    // Copying a Service (with its clusterIP) into a new one is rejected.
    ensure!(
        api_error(
            api.create(&PostParams::default(), &svc("b", Some(&ip))?)
                .await
        )? == (422, "Invalid".into())
    );
    let change = Patch::Merge(
        json!({"spec": {"clusterIP": "10.96.250.250", "clusterIPs": ["10.96.250.250"]}}),
    );
    ensure!(api_error(api.patch("a", &PatchParams::default(), &change).await)?.0 == 422);
    Ok(())
}

const WIDGET_CRD: &str = "widgets.conformance.sandbox.test";

fn widget_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("conformance.sandbox.test", "v1", "Widget"),
        "widgets",
    )
}

/// Creates the Widget CRD through the API (if absent) and waits until it is served.
async fn widget_crd(t: &Target) -> Result<Api<DynamicObject>> {
    let crds: Api<CustomResourceDefinition> = Api::all(t.client.clone());
    if crds.get_opt(WIDGET_CRD).await?.is_none() {
        let crd: CustomResourceDefinition = serde_json::from_value(json!({
            "metadata": {"name": WIDGET_CRD},
            "spec": {"group": "conformance.sandbox.test", "scope": "Namespaced",
                "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wg"]},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "subresources": {"status": {}},
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                        "spec": {"type": "object", "required": ["size"], "properties": {
                            "size": {"type": "integer", "minimum": 1},
                            "color": {"type": "string", "enum": ["red", "blue"], "default": "red"},
                            "config": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}},
                        "status": {"type": "object", "properties": {
                            "phase": {"type": "string"}}}}}}}]}
        }))?;
        crds.create(&PostParams::default(), &crd).await?;
    }
    let api: Api<DynamicObject> = Api::namespaced_with(t.client.clone(), &t.ns, &widget_resource());
    let probe = api.clone();
    eventually("the CRD to be served", || {
        let probe = probe.clone();
        async move { Ok(probe.list(&ListParams::default()).await.ok().map(|_| ())) }
    })
    .await?;
    Ok(api)
}

fn widget(name: &str, spec: Value) -> DynamicObject {
    DynamicObject::new(name, &widget_resource()).data(json!({"spec": spec}))
}

async fn custom_resources_are_pruned_defaulted_and_validated(t: &Target) -> Result<()> {
    let api = widget_crd(t).await?;
    let created = api
        .create(
            &PostParams::default(),
            &widget(
                "w1",
                json!({"size": 2, "typo": true, "config": {"free": {"form": 1}}}),
            ),
        )
        .await?;
    let spec = &created.data["spec"];
    ensure!(spec.get("typo").is_none(), "pruned: {spec}");
    ensure!(spec["color"] == "red", "defaulted: {spec}");
    ensure!(spec["config"]["free"]["form"] == 1, "preserved: {spec}");
    ensure!(created.metadata.generation == Some(1));

    let (code, reason) = api_error(
        api.create(
            &PostParams::default(),
            &widget("w2", json!({"size": 0, "color": "green"})),
        )
        .await,
    )?;
    ensure!((code, reason.as_str()) == (422, "Invalid"));
    ensure!(
        api_error(
            api.create(&PostParams::default(), &widget("w3", json!({})))
                .await
        )?
        .0 == 422,
        "required"
    );

    // CRs get no strategic merge patch, and a PUT must carry a resourceVersion.
    let smp = Patch::Strategic(json!({"spec": {"size": 3}}));
    ensure!(
        api_error(api.patch("w1", &PatchParams::default(), &smp).await)?
            == (415, "UnsupportedMediaType".into())
    );
    let mut no_rv = api.get("w1").await?;
    no_rv.metadata.resource_version = None;
    ensure!(
        api_error(api.replace("w1", &PostParams::default(), &no_rv).await)?
            == (422, "Invalid".into())
    );

    // Status is a subresource; generation counts spec changes only.
    let with_status = api
        .patch_status(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Ready", "unknown": 1}})),
        )
        .await?;
    ensure!(with_status.data["status"]["phase"] == "Ready");
    ensure!(
        with_status.data["status"].get("unknown").is_none(),
        "status pruned too"
    );
    ensure!(with_status.metadata.generation == Some(1));
    let main = api
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 5}, "status": {"phase": "Lost"}})),
        )
        .await?;
    ensure!(main.metadata.generation == Some(2));
    ensure!(
        main.data["status"]["phase"] == "Ready",
        "main writes ignore status"
    );

    // Merge patches only add keys to preserve-unknown-fields objects; JSON patch replaces.
    let out = api
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"config": {"other": 2}}})),
        )
        .await?;
    ensure!(
        out.data["spec"]["config"]["free"]["form"] == 1 && out.data["spec"]["config"]["other"] == 2
    );
    let replace: json_patch::Patch = serde_json::from_value(json!([
        {"op": "replace", "path": "/spec/config", "value": {"only": true}}]))?;
    let out = api
        .patch("w1", &PatchParams::default(), &Patch::Json::<()>(replace))
        .await?;
    ensure!(out.data["spec"]["config"] == json!({"only": true}));

    // Server-side apply works on CRs too.
    let applied = api
        .patch(
            "w-ssa",
            &PatchParams::apply("conformance"),
            &Patch::Apply(json!({
            "apiVersion": "conformance.sandbox.test/v1", "kind": "Widget",
            "metadata": {"name": "w-ssa"}, "spec": {"size": 1}})),
        )
        .await?;
    ensure!(applied.data["spec"]["color"] == "red");
    Ok(())
}

async fn generic_kinds_support_crud(t: &Target) -> Result<()> {
    let leases: Api<Lease> = t.api();
    let lease: Lease = serde_json::from_value(json!({"metadata": {"name": "leader"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}}))?;
    let created = leases.create(&PostParams::default(), &lease).await?;
    let mut taken = created.clone();
    taken.spec.as_mut().context("spec")?.holder_identity = Some("b".into());
    leases
        .replace("leader", &PostParams::default(), &taken)
        .await?;
    ensure!(
        api_error(
            leases
                .replace("leader", &PostParams::default(), &taken)
                .await
        )?
        .1 == "Conflict"
    );
    let events: Api<k8s_openapi::api::events::v1::Event> = t.api();
    let event: k8s_openapi::api::events::v1::Event = serde_json::from_value(json!({
        "metadata": {"name": "e1"}, "eventTime": "2026-01-01T00:00:00.000000Z",
        "reportingController": "conformance", "reportingInstance": "conformance-1",
        "action": "Tested", "reason": "Testing", "type": "Normal",
        "regarding": {"kind": "Lease", "name": "leader", "namespace": t.ns}}))?;
    events.create(&PostParams::default(), &event).await?;
    ensure!(events.get("e1").await?.reason.as_deref() == Some("Testing"));
    Ok(())
}

async fn legacy_discovery_lists_groups_and_resources(t: &Target) -> Result<()> {
    let core = t.client.list_core_api_versions().await?;
    ensure!(core.versions.contains(&"v1".to_string()));
    let v1 = t.client.list_core_api_resources("v1").await?;
    let svc = v1
        .resources
        .iter()
        .find(|r| r.name == "services")
        .context("services")?;
    ensure!(
        svc.namespaced
            && svc
                .short_names
                .as_ref()
                .is_some_and(|s| s.contains(&"svc".to_string()))
    );
    let groups = t.client.list_api_groups().await?;
    let apps = groups
        .groups
        .iter()
        .find(|g| g.name == "apps")
        .context("apps group")?;
    ensure!(apps
        .preferred_version
        .as_ref()
        .is_some_and(|v| v.group_version == "apps/v1"));
    let apps_v1 = t.client.list_api_group_resources("apps/v1").await?;
    for name in [
        "deployments",
        "deployments/scale",
        "deployments/status",
        "replicasets",
    ] {
        ensure!(
            apps_v1.resources.iter().any(|r| r.name == name),
            "{name} missing"
        );
    }
    Ok(())
}

async fn unknown_fields_of_built_in_kinds_are_dropped_or_rejected(t: &Target) -> Result<()> {
    let ar = ApiResource::erase::<ConfigMap>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(t.client.clone(), &t.ns, &ar);
    let obj = DynamicObject::new("loose", &ar).data(json!({"data": {"k": "v"}, "bogus": 1}));
    let created = api.create(&PostParams::default(), &obj).await?;
    ensure!(
        created.data.get("bogus").is_none(),
        "dropped: {:?}",
        created.data
    );
    ensure!(created.data["data"]["k"] == "v");
    let strict = PatchParams::default().validation_strict();
    let err = api
        .patch("loose", &strict, &Patch::Merge(json!({"bogus": 2})))
        .await;
    match err {
        Err(kube::Error::Api(s)) => ensure!(
            s.code == 400 && s.message.contains("unknown field \"bogus\""),
            "{s:?}"
        ),
        other => bail!("expected 400, got {other:?}"),
    }
    let wrong_type = Patch::Merge(json!({"data": {"k": 5}}));
    ensure!(
        api_error(
            api.patch("loose", &PatchParams::default(), &wrong_type)
                .await
        )?
        .0 == 400
    );
    Ok(())
}

// === fake-only: tests that need the server's controls ===

mod fake_only {
    use super::*;

    #[tokio::test]
    async fn a_watch_from_a_compacted_version_gets_an_in_stream_410() -> Result<()> {
        let t = Target::fake().await?;
        let api: Api<ConfigMap> = t.api();
        let old = api
            .list(&ListParams::default())
            .await?
            .metadata
            .resource_version
            .context("rv")?;
        api.create(
            &PostParams::default(),
            &config_map("c", json!({}), json!({}))?,
        )
        .await?;
        t.server().compact();
        let mut stream = api.watch(&WatchParams::default(), &old).await?.boxed();
        match next_event(&mut stream).await? {
            WatchEvent::Error(e) => ensure!(e.code == 410 && e.reason == "Expired", "{e:?}"),
            other => bail!("expected an ERROR event, got {other:?}"),
        }
        ensure!(
            stream.next().await.is_none(),
            "the stream closes after the error"
        );
        let log = t.server().requests();
        let watch = log
            .iter()
            .rev()
            .find(|r| r.verb == "watch")
            .context("watch logged")?;
        ensure!(
            watch.status == 200,
            "410 is sent in-stream, the HTTP status is 200"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_continue_token_from_before_compaction_is_expired() -> Result<()> {
        let t = Target::fake().await?;
        let api: Api<ConfigMap> = t.api();
        for name in ["a", "b", "c"] {
            api.create(
                &PostParams::default(),
                &config_map(name, json!({}), json!({}))?,
            )
            .await?;
        }
        let first = api.list(&ListParams::default().limit(1)).await?;
        let token = first.metadata.continue_.context("continue token")?;
        api.create(
            &PostParams::default(),
            &config_map("d", json!({}), json!({}))?,
        )
        .await?;
        t.server().compact();
        let err = api
            .list(&ListParams::default().limit(1).continue_token(&token))
            .await;
        match err {
            Err(kube::Error::Api(s)) => {
                ensure!(s.code == 410 && s.reason == "Expired", "{s:?}");
                let fresh = s
                    .metadata
                    .and_then(|m| m.continue_)
                    .context("a fresh token")?;
                let rest = api
                    .list(&ListParams::default().limit(10).continue_token(&fresh))
                    .await?;
                let names: Vec<String> = rest.items.iter().map(|c| c.name_any()).collect();
                ensure!(names == ["b", "c", "d"], "{names:?}");
            }
            other => bail!("expected 410, got {other:?}"),
        }
        Ok(())
    }

    #[tokio::test]
    async fn the_watcher_relists_after_compaction_and_closed_watches() -> Result<()> {
        let t = Target::fake().await?;
        let api: Api<Deployment> = t.api();
        api.create(&PostParams::default(), &deployment("first", "nginx:1.27")?)
            .await?;
        let mut events = watcher(api.clone(), watcher::Config::default()).boxed();
        let mut inits = 0;
        let mut seen = Vec::new();
        let mut step = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let event = tokio::time::timeout(Duration::from_secs(10), events.next())
                .await
                .context("no watcher event")?
                .context("watcher ended")?;
            match event {
                Ok(watcher::Event::Init) => inits += 1,
                Ok(watcher::Event::InitDone) if inits == 1 && step == 0 => {
                    step = 1;
                    // Another kind moves the global RV past the watcher's, then history is
                    // compacted and every watch closed: re-watching gets 410 → re-list.
                    let cms: Api<ConfigMap> = t.api();
                    cms.create(
                        &PostParams::default(),
                        &config_map("bump", json!({}), json!({}))?,
                    )
                    .await?;
                    api.create(&PostParams::default(), &deployment("second", "nginx:1.27")?)
                        .await?;
                }
                Ok(watcher::Event::Apply(d)) if d.name_any() == "second" && step == 1 => {
                    step = 2;
                    cms_bump(&t).await?;
                    t.server().compact();
                    t.server().close_watches();
                }
                Ok(watcher::Event::InitApply(d)) => seen.push(d.name_any()),
                Ok(watcher::Event::InitDone) if inits == 2 => {
                    ensure!(seen.contains(&"second".to_string()), "relisted: {seen:?}");
                    let lists = t
                        .server()
                        .requests()
                        .iter()
                        .filter(|r| r.verb == "list" && r.resource == "deployments")
                        .count();
                    ensure!(lists == 2, "one initial list and one re-list, got {lists}");
                    return Ok(());
                }
                Ok(_) => {}
                Err(e) => {
                    ensure!(e.to_string().contains("too old resource version"), "{e}");
                }
            }
        }
        bail!("the watcher did not re-list (inits = {inits}, step = {step})")
    }

    async fn cms_bump(t: &Target) -> Result<()> {
        let cms: Api<ConfigMap> = t.api();
        cms.patch(
            "bump",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"n": "1"}})),
        )
        .await?;
        Ok(())
    }

    #[tokio::test]
    async fn bookmarks_carry_the_global_resource_version() -> Result<()> {
        let server = ApiServer::start(ApiConfig {
            bookmark_interval: Duration::from_millis(100),
            ..ApiConfig::default()
        })
        .await?;
        let client = server.client();
        let api: Api<Deployment> = Api::namespaced(client.clone(), "default");
        let from = api
            .list(&ListParams::default())
            .await?
            .metadata
            .resource_version
            .context("rv")?;
        let cms: Api<ConfigMap> = Api::namespaced(client, "default");
        cms.create(
            &PostParams::default(),
            &config_map("elsewhere", json!({}), json!({}))?,
        )
        .await?;
        let mut stream = api
            .watch(&WatchParams::default().timeout(30), &from)
            .await?
            .boxed();
        let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await?
            .context("ended")??;
        match event {
            WatchEvent::Bookmark(b) => ensure!(
                b.metadata.resource_version == server.resource_version().to_string(),
                "bookmark RV {}",
                b.metadata.resource_version
            ),
            other => bail!("expected a bookmark, got {other:?}"),
        }
        Ok(())
    }

    #[tokio::test]
    async fn crds_registered_through_the_api_are_discoverable() -> Result<()> {
        let t = Target::fake().await?;
        widget_crd(&t).await?;
        let discovery = kube::Discovery::new(t.client.clone()).run().await?;
        let (ar, caps) = discovery
            .groups()
            .flat_map(|g| g.recommended_resources())
            .find(|(ar, _)| ar.kind == "Widget")
            .ok_or_else(|| anyhow!("Widget not discovered"))?;
        ensure!(ar.plural == "widgets" && caps.scope == kube::discovery::Scope::Namespaced);
        let wasm = sandbox::api::crds::higress_wasmplugin_crd_yaml();
        ensure!(t.server().register_crd_yaml(wasm)? == ["wasmplugins.extensions.higress.io"]);
        let plugin_ar = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("extensions.higress.io", "v1alpha1", "WasmPlugin"),
            "wasmplugins",
        );
        let plugins: Api<DynamicObject> = Api::namespaced_with(t.client.clone(), &t.ns, &plugin_ar);
        let bad = DynamicObject::new("p", &plugin_ar)
            .data(json!({"spec": {"phase": "NOPE", "url": "file:///x.wasm"}}));
        ensure!(api_error(plugins.create(&PostParams::default(), &bad).await)?.0 == 422);
        // Deleting the CRD removes its objects and stops serving it.
        let crds: Api<CustomResourceDefinition> = Api::all(t.client.clone());
        let widgets: Api<DynamicObject> =
            Api::namespaced_with(t.client.clone(), &t.ns, &widget_resource());
        widgets
            .create(&PostParams::default(), &widget("gone", json!({"size": 1})))
            .await?;
        crds.delete(WIDGET_CRD, &DeleteParams::default()).await?;
        ensure!(api_error(widgets.list(&ListParams::default()).await)?.0 == 404);
        Ok(())
    }
}
