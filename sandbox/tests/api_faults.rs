//! The fake API server's test controls, each shown to work through kube's real client:
//! injected status codes, delays and dropped connections (matched by verb, resource, name
//! and subresource), the request log, closing watches, and writes by another actor.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use futures::StreamExt;
use k8s_openapi::api::{apps::v1::Deployment, core::v1::ConfigMap};
use kube::{
    api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams},
    ResourceExt,
};
use sandbox::api::{ApiConfig, ApiServer, Fault, FaultAction, Matcher};
use serde_json::json;

async fn server() -> Result<(ApiServer, Api<ConfigMap>)> {
    let server = ApiServer::start(ApiConfig::default()).await?;
    let api = Api::namespaced(server.client(), "default");
    Ok((server, api))
}

fn cm(name: &str) -> Result<ConfigMap> {
    Ok(serde_json::from_value(
        json!({"metadata": {"name": name}, "data": {"k": "v"}}),
    )?)
}

fn api_error<T: std::fmt::Debug>(r: kube::Result<T>) -> Result<(u16, String)> {
    match r {
        Err(kube::Error::Api(s)) => Ok((s.code, s.reason.clone())),
        other => bail!("expected an API error, got {other:?}"),
    }
}

/// A client without kube's default retries (it retries 429/503/504 up to 15 times).
fn no_retry_client(server: &ApiServer) -> Result<kube::Client> {
    let mut config = server.kube_config();
    config.default_retry = false;
    Ok(kube::Client::try_from(config)?)
}

#[tokio::test]
async fn injected_status_codes_reach_the_client_with_their_reason() -> Result<()> {
    let server = ApiServer::start(ApiConfig::default()).await?;
    let api: Api<ConfigMap> = Api::namespaced(no_retry_client(&server)?, "default");
    api.create(&PostParams::default(), &cm("x")?).await?;
    for (code, reason) in [
        (429, "TooManyRequests"),
        (500, "InternalError"),
        (503, "ServiceUnavailable"),
        (504, "Timeout"),
        (409, "Conflict"),
    ] {
        server.inject(
            Fault::status(Matcher::verb("get").resource("configmaps").name("x"), code).times(1),
        );
        ensure!(api_error(api.get("x").await)? == (code, reason.to_string()));
        ensure!(api.get("x").await.is_ok(), "a times(1) fault fires once");
    }
    let log = server.requests();
    let faulted = log
        .iter()
        .filter(|r| r.verb == "get" && r.status >= 400)
        .count();
    ensure!(
        faulted == 5,
        "the log records injected answers, got {faulted}"
    );
    Ok(())
}

#[tokio::test]
async fn kubes_default_client_retries_through_transient_faults() -> Result<()> {
    let (server, api) = server().await?;
    api.create(&PostParams::default(), &cm("x")?).await?;
    server.clear_requests();
    server.inject(Fault::status(Matcher::verb("get"), 503).times(2));
    api.get("x").await.context("retried past two 503s")?;
    let statuses: Vec<u16> = server.requests().iter().map(|r| r.status).collect();
    ensure!(statuses == [503, 503, 200], "{statuses:?}");
    Ok(())
}

#[tokio::test]
async fn faults_match_only_their_verb_resource_name_and_subresource() -> Result<()> {
    let server = ApiServer::start(ApiConfig::default()).await?;
    let deploys: Api<Deployment> = Api::namespaced(server.client(), "default");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}}}))?;
    deploys.create(&PostParams::default(), &d).await?;
    let id = server.inject(Fault::status(
        Matcher::verb("patch")
            .resource("deployments.apps")
            .namespace("default")
            .name("web")
            .subresource("status"),
        409,
    ));
    let status = Patch::Merge(json!({"status": {"replicas": 1}}));
    ensure!(
        api_error(
            deploys
                .patch_status("web", &PatchParams::default(), &status)
                .await
        )?
        .1 == "Conflict"
    );
    deploys
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 2}})),
        )
        .await
        .context("the main resource is not matched")?;
    deploys.get("web").await.context("get is not matched")?;
    server.remove_fault(id);
    deploys
        .patch_status("web", &PatchParams::default(), &status)
        .await
        .context("the fault was removed")?;
    Ok(())
}

#[tokio::test]
async fn delays_hold_the_answer_back() -> Result<()> {
    let (server, api) = server().await?;
    server.inject(Fault::delay(
        Matcher::verb("list").resource("configmaps"),
        Duration::from_millis(400),
    ));
    let start = Instant::now();
    api.list(&ListParams::default()).await?;
    ensure!(
        start.elapsed() >= Duration::from_millis(400),
        "{:?}",
        start.elapsed()
    );
    server.clear_faults();
    let start = Instant::now();
    api.list(&ListParams::default()).await?;
    ensure!(start.elapsed() < Duration::from_millis(400));
    Ok(())
}

#[tokio::test]
async fn dropped_connections_fail_the_request_without_an_answer() -> Result<()> {
    let (server, api) = server().await?;
    server.inject(Fault::drop_connection(Matcher::verb("create").resource("configmaps")).times(1));
    match api.create(&PostParams::default(), &cm("dropped")?).await {
        Err(kube::Error::Api(s)) => bail!("expected a transport error, got a Status {s:?}"),
        Err(_) => {}
        Ok(_) => bail!("the create should have failed"),
    }
    ensure!(
        api.get_opt("dropped").await?.is_none(),
        "nothing was stored"
    );
    api.create(&PostParams::default(), &cm("dropped")?)
        .await
        .context("the next request works")?;
    let log = server.requests();
    ensure!(
        log.iter().any(|r| r.verb == "create" && r.status == 0),
        "logged with status 0"
    );
    Ok(())
}

#[tokio::test]
async fn the_request_log_records_what_the_client_sent() -> Result<()> {
    let (server, api) = server().await?;
    api.create(&PostParams::default(), &cm("logged")?).await?;
    server.clear_requests();
    let pp = PatchParams::apply("log-test").force();
    api.patch("logged", &pp, &Patch::Apply(json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "logged"}, "data": {"k": "w"}})))
        .await?;
    let log = server.requests();
    ensure!(log.len() == 1, "{log:?}");
    let r = &log[0];
    ensure!(r.method == "PATCH" && r.verb == "patch" && r.resource == "configmaps");
    ensure!(
        r.path == "/api/v1/namespaces/default/configmaps/logged",
        "{}",
        r.path
    );
    ensure!(r.param("fieldManager") == Some("log-test") && r.param("force") == Some("true"));
    ensure!(r.content_type.as_deref() == Some("application/apply-patch+yaml"));
    ensure!(r.body.contains("\"w\""), "{}", r.body);
    ensure!(r.status == 200, "{}", r.line());
    Ok(())
}

#[tokio::test]
async fn closing_watches_ends_every_open_stream() -> Result<()> {
    let (server, api) = server().await?;
    let rv = api
        .list(&ListParams::default())
        .await?
        .metadata
        .resource_version
        .context("rv")?;
    let mut a = api.watch(&WatchParams::default(), &rv).await?.boxed();
    let mut b = api
        .watch(&WatchParams::default().labels("x=y"), &rv)
        .await?
        .boxed();
    // Make sure both streams are established before closing them.
    api.create(&PostParams::default(), &cm("seen")?).await?;
    match tokio::time::timeout(Duration::from_secs(10), a.next()).await? {
        Some(Ok(WatchEvent::Added(c))) => ensure!(c.name_any() == "seen"),
        other => bail!("expected ADDED, got {other:?}"),
    }
    server.close_watches();
    ensure!(tokio::time::timeout(Duration::from_secs(10), a.next())
        .await?
        .is_none());
    ensure!(tokio::time::timeout(Duration::from_secs(10), b.next())
        .await?
        .is_none());
    Ok(())
}

#[tokio::test]
async fn writes_by_another_actor_bump_the_version_and_reach_watchers() -> Result<()> {
    let (server, api) = server().await?;
    let created = api.create(&PostParams::default(), &cm("shared")?).await?;
    let rv = created.resource_version().context("rv")?;
    let mut stream = api.watch(&WatchParams::default(), &rv).await?.boxed();
    let after = server.external_write("configmaps", "default", "shared", |obj| {
        obj["data"]["k"] = json!("changed by a human");
    })?;
    ensure!(after["metadata"]["resourceVersion"] != json!(rv));
    match tokio::time::timeout(Duration::from_secs(10), stream.next()).await? {
        Some(Ok(WatchEvent::Modified(c))) => {
            ensure!(c.data.unwrap_or_default()["k"] == "changed by a human")
        }
        other => bail!("expected MODIFIED, got {other:?}"),
    }
    // The client's copy is now stale.
    let mut stale = created.clone();
    stale.data = Some([("k".to_string(), "mine".to_string())].into());
    ensure!(
        api_error(api.replace("shared", &PostParams::default(), &stale).await)?.1 == "Conflict"
    );
    // A no-op external write changes nothing.
    let rv_now = server.resource_version();
    server.external_write("cm", "default", "shared", |_| {})?;
    ensure!(server.resource_version() == rv_now);
    server.external_delete("configmaps", "default", "shared")?;
    ensure!(api.get_opt("shared").await?.is_none());
    ensure!(server.object("configmaps", "default", "shared").is_none());
    Ok(())
}

#[tokio::test]
async fn a_retry_after_fault_carries_its_delay() -> Result<()> {
    let server = ApiServer::start(ApiConfig::default()).await?;
    let api: Api<ConfigMap> = Api::namespaced(no_retry_client(&server)?, "default");
    server.inject(Fault {
        matcher: Matcher::verb("list"),
        action: FaultAction::Status {
            code: 429,
            message: "slow down".into(),
            retry_after: Some(3),
        },
        times: Some(1),
    });
    match api.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) => {
            ensure!(s.code == 429 && s.message == "slow down");
            ensure!(s.details.map(|d| d.retry_after_seconds) == Some(3));
        }
        other => bail!("expected 429, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn shutting_down_ends_watches_and_frees_the_port() -> Result<()> {
    let (server, api) = server().await?;
    let rv = api
        .list(&ListParams::default())
        .await?
        .metadata
        .resource_version
        .context("rv")?;
    let mut stream = api.watch(&WatchParams::default(), &rv).await?.boxed();
    let addr = server.addr();
    drop(server);
    let end = tokio::time::timeout(Duration::from_secs(10), stream.next()).await?;
    ensure!(
        !matches!(end, Some(Ok(_))),
        "the watch ends (or errors), got {end:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        ensure!(
            Instant::now() < deadline,
            "{addr} still accepts connections"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
