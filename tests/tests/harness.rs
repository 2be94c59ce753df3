//! The harness checked on its own, without the canary plugin: Envoy starts with each kind of
//! filter, routes reach the right backends, ECDS updates arrive, and the backends behave.

use std::fs;
use std::thread;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use e2e::envoy::{FILTER_NAME, OTHER_HOST};
use e2e::fixture::{CANARY, OTHER, STABLE, TAG_HEADER, TAG_VALUE};
use e2e::{eventually, free_port, paths, Backend, Client, ConfigRejected, Deployment, Filter};

fn ecds_stat(suffix: &str) -> String {
    format!("extension_config_discovery.http_filter.{FILTER_NAME}.{suffix}")
}

#[test]
fn envoy_without_a_filter_routes_by_host_and_tag_header() -> Result<()> {
    let d = Deployment::builder(Filter::None)
        .concurrency(1)
        .access_log(true)
        .start()?;
    let mut client = d.client();

    let plain = client.get("/", &[])?;
    ensure!(
        plain.status == 200,
        "status {}: {}",
        plain.status,
        plain.text()
    );
    ensure!(plain.version.as_deref() == Some(STABLE), "{plain:?}");
    ensure!(plain.header("x-served-by") == Some(STABLE), "{plain:?}");
    ensure!(plain.saw("host") == Some("demo.example.com"), "{plain:?}");

    // Without a plugin nothing strips the tag, so the canary route's regex decides alone.
    for (value, want) in [("always", CANARY), (TAG_VALUE, CANARY), ("never", STABLE)] {
        let reply = client.get("/some/path", &[(TAG_HEADER, value)])?;
        ensure!(
            reply.version.as_deref() == Some(want),
            "{TAG_HEADER}: {value} should reach {want}, got {reply:?}"
        );
    }

    let mut other = Client::new(d.envoy.listener_addr()).with_host(OTHER_HOST);
    let reply = other.get("/", &[])?;
    ensure!(reply.version.as_deref() == Some(OTHER), "{reply:?}");

    let unknown = Client::new(d.envoy.listener_addr())
        .with_host("nobody.example.com")
        .get("/", &[])?;
    ensure!(unknown.status == 404, "unknown host got {unknown:?}");

    for _ in 0..50 {
        ensure!(client.get("/", &[])?.status == 200);
    }
    ensure!(client.connections_opened() == 1, "keep-alive was not kept");

    ensure!(d.envoy.stat("server.live") == Some(1));
    ensure!(d.envoy.stat("no.such.stat").is_none());
    let prometheus = d.envoy.stats_prometheus()?;
    ensure!(prometheus.contains("envoy_server_live"), "{prometheus}");
    ensure!(d.envoy.listener_url().starts_with("http://127.0.0.1:"));

    let access_log = d.envoy.dir().join("access.log");
    eventually(Duration::from_secs(10), Duration::from_millis(50), || {
        let text = fs::read_to_string(&access_log).unwrap_or_default();
        ensure!(
            text.contains("route=default/demo-canary") && text.contains("tag=always"),
            "access log so far: {text}"
        );
        Ok(())
    })?;
    Ok(())
}

#[test]
fn noop_filter_config_updates_arrive_through_ecds() -> Result<()> {
    let d = Deployment::builder(Filter::noop("{}")?)
        .concurrency(2)
        .start()?;
    let mut client = d.client();
    ensure!(d.envoy.stat(&ecds_stat("update_success")) == Some(1));

    for n in 0..3 {
        d.envoy
            .set_plugin_config(&format!("{{\"generation\":{n}}}"))?;
        let reply = client.get("/", &[])?;
        ensure!(reply.version.as_deref() == Some(STABLE), "{reply:?}");
    }
    ensure!(d.envoy.stat(&ecds_stat("update_success")) == Some(4));
    ensure!(d.envoy.stat(&ecds_stat("update_rejected")).unwrap_or(0) == 0);
    ensure!(client.connections_opened() == 1);
    Ok(())
}

#[test]
fn an_unloadable_module_is_reported_as_a_rejected_update_and_the_old_one_keeps_serving(
) -> Result<()> {
    // A private copy of the module that the test can take away.
    let dir = tempfile::tempdir()?;
    let wasm = dir.path().join("noop.wasm");
    fs::copy(paths::noop_wasm()?, &wasm)?;
    let filter = Filter::Wasm {
        wasm: wasm.clone(),
        configuration: "{}".to_string(),
    };
    let d = Deployment::builder(filter).concurrency(1).start()?;

    fs::remove_file(&wasm)?;
    // A different configuration: Envoy skips rebuilding a filter whose config hash is unchanged.
    let err = d
        .envoy
        .set_plugin_config("{\"generation\":2}")
        .expect_err("a config whose module is gone must not be accepted");
    ensure!(
        err.downcast_ref::<ConfigRejected>().is_some(),
        "expected ConfigRejected, got {err:#}"
    );
    let reply = d.client().get("/", &[])?;
    ensure!(reply.status == 200, "old filter stopped serving: {reply:?}");

    fs::copy(paths::noop_wasm()?, &wasm)?;
    d.envoy.set_plugin_config("{\"generation\":3}")?;
    Ok(())
}

#[test]
fn lua_filter_runs_inline_code() -> Result<()> {
    let code = r#"
function envoy_on_request(handle)
  handle:headers():add("x-lua", "yes")
end
"#;
    let d = Deployment::builder(Filter::lua(code))
        .concurrency(1)
        .start()?;
    let reply = d.client().get("/", &[])?;
    ensure!(reply.saw("x-lua") == Some("yes"), "{reply:?}");
    Ok(())
}

#[test]
fn backend_keeps_connections_alive_and_fails_the_requested_fraction() -> Result<()> {
    let backend = Backend::start("v9")?;
    backend.fail_fraction(500, 0.2);
    let mut client = Client::new(backend.addr());
    let mut failed = 0;
    for _ in 0..100 {
        let reply = client.get("/x?y=1", &[("x-Custom", "a"), ("x-custom", "b")])?;
        ensure!(reply.version.as_deref() == Some("v9"), "{reply:?}");
        ensure!(reply.saw("x-custom") == Some("a, b"), "{reply:?}");
        if reply.status == 500 {
            failed += 1;
        }
    }
    ensure!(failed == 20, "{failed} of 100 failed, wanted exactly 20");
    ensure!(client.connections_opened() == 1);
    ensure!(backend.requests() == 100);

    backend.fail_fraction(500, 0.0);
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let addr = backend.addr();
            thread::spawn(move || -> Result<()> {
                let mut client = Client::new(addr);
                for _ in 0..50 {
                    ensure!(client.get("/", &[])?.status == 200);
                }
                Ok(())
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("worker panicked")?;
    }
    ensure!(backend.requests() == 500);
    Ok(())
}

#[test]
fn eventually_returns_the_first_success_or_the_last_error() -> Result<()> {
    let mut calls = 0;
    let value = eventually(Duration::from_secs(5), Duration::from_millis(1), || {
        calls += 1;
        ensure!(calls >= 3, "only {calls} calls");
        Ok(calls)
    })?;
    ensure!(value == 3);

    let err = eventually(
        Duration::from_millis(30),
        Duration::from_millis(5),
        || -> Result<()> { anyhow::bail!("never") },
    )
    .expect_err("must time out");
    ensure!(format!("{err:#}").contains("never"), "{err:#}");

    let port = free_port().context("free port")?;
    ensure!(port != 0);
    Ok(())
}
