use std::collections::BTreeMap;
use std::thread;
use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use serde_json::{json, Value};

use crate::backend::Backend;
use crate::envoy::{
    EnvoyConfig, Filter, Route, VirtualHost, BASE_ROUTE, CANARY_CLUSTER, CANARY_ROUTE, DEMO_HOST,
    OTHER_CLUSTER, STABLE_CLUSTER,
};
use crate::http::{Client, Reply};
use crate::wait::eventually;
use crate::Envoy;

/// Version the stable backend reports.
pub const STABLE: &str = "v1";
/// Version the canary backend reports.
pub const CANARY: &str = "v2";
/// Version the backend behind `default/other` reports.
pub const OTHER: &str = "other";

/// The default tag header.
pub const TAG_HEADER: &str = "x-higress-canary";
/// Tag value of the demo rollout; the canary route matches `always|rollouts-demo`.
pub const TAG_VALUE: &str = "rollouts-demo";
/// Rollout name of the demo release (metric label and sticky salt).
pub const ROLLOUT: &str = "default/rollouts-demo";

/// Header of the match group [`with_generation`] adds; see there.
pub const GENERATION_HEADER: &str = "x-e2e-generation";

/// How long a test waits for a hot config change to reach a worker.
pub const APPLY_DEADLINE: Duration = Duration::from_secs(10);
/// Poll interval while waiting for it.
pub const APPLY_POLL: Duration = Duration::from_millis(5);

// === plugin config builders ===

/// A rule for the demo routes (base and canary route, as the spec advises) at `weight` percent.
pub fn demo_rule(weight: f64) -> Value {
    json!({
        "_match_route_": [BASE_ROUTE, CANARY_ROUTE],
        "rollout": ROLLOUT,
        "tagValue": TAG_VALUE,
        "weight": weight,
    })
}

/// `{"_rules_": rules}` as a string.
pub fn plugin_config(rules: &[Value]) -> String {
    json!({ "_rules_": rules }).to_string()
}

/// Adds a match group `GENERATION_HEADER == generation` to `rule`.
///
/// After a hot change a worker keeps the old config for a few milliseconds, and every
/// connection lives on one worker. A request carrying the new generation's header goes to the
/// canary only once that connection's worker runs the new config, so probing it on each
/// client's connection ([`await_generation`]) tells when counting may start. Requests without
/// the header are unaffected.
pub fn with_generation(mut rule: Value, generation: u32) -> Value {
    let group = json!({"headers": [{"name": GENERATION_HEADER, "value": generation.to_string()}]});
    match rule.get_mut("matches").and_then(Value::as_array_mut) {
        Some(groups) => groups.push(group),
        None => rule["matches"] = json!([group]),
    }
    rule
}

/// Waits until `client`'s connection runs the config carrying `generation`.
pub fn await_generation(client: &mut Client, generation: u32) -> Result<()> {
    let value = generation.to_string();
    eventually(APPLY_DEADLINE, APPLY_POLL, || {
        let reply = client.get("/", &[(GENERATION_HEADER, &value)])?;
        ensure!(
            reply.version.as_deref() == Some(CANARY),
            "generation {generation} not applied yet: {reply:?}"
        );
        Ok(())
    })
    .with_context(|| format!("waiting for config generation {generation}"))
}

/// Waits until `client` gets `want` for `GET path` with `headers`, and returns that reply.
pub fn await_version(
    client: &mut Client,
    path: &str,
    headers: &[(&str, &str)],
    want: &str,
) -> Result<Reply> {
    eventually(APPLY_DEADLINE, APPLY_POLL, || {
        let reply = client.get(path, headers)?;
        ensure!(
            reply.version.as_deref() == Some(want),
            "GET {path} {headers:?}: wanted {want}, got {reply:?}"
        );
        Ok(reply)
    })
}

// === load ===

/// What a batch of requests saw.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Replies per `(version, status)`; version is "" for Envoy's own replies.
    pub replies: BTreeMap<(String, u16), u64>,
    /// Requests that got no reply at all, with the error.
    pub errors: Vec<String>,
}

impl Tally {
    /// Replies from `version`, any status.
    pub fn from(&self, version: &str) -> u64 {
        self.replies
            .iter()
            .filter(|((v, _), _)| v == version)
            .map(|(_, n)| n)
            .sum()
    }

    /// Replies from `version` with `status`.
    pub fn count(&self, version: &str, status: u16) -> u64 {
        self.replies
            .get(&(version.to_string(), status))
            .copied()
            .unwrap_or(0)
    }

    /// All replies.
    pub fn total(&self) -> u64 {
        self.replies.values().sum()
    }

    fn merge(&mut self, other: Tally) {
        for (key, n) in other.replies {
            *self.replies.entry(key).or_default() += n;
        }
        self.errors.extend(other.errors);
    }
}

/// Sends `GET /` `per_client` times on each client, the clients in parallel threads.
pub fn run_load(clients: &mut [Client], per_client: u64) -> Result<Tally> {
    let tallies: Vec<Tally> = thread::scope(|scope| {
        let workers: Vec<_> = clients
            .iter_mut()
            .map(|client| {
                scope.spawn(move || {
                    let mut tally = Tally::default();
                    for _ in 0..per_client {
                        match client.get("/", &[]) {
                            Ok(reply) => {
                                let version = reply.version.unwrap_or_default();
                                *tally.replies.entry((version, reply.status)).or_default() += 1;
                            }
                            Err(err) => tally.errors.push(format!("{err:#}")),
                        }
                    }
                    tally
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_default())
            .collect()
    });
    let mut total = Tally::default();
    for tally in tallies {
        total.merge(tally);
    }
    if let Some(first) = total.errors.first() {
        return Err(anyhow!(
            "{} of {} requests failed; first: {first}",
            total.errors.len(),
            per_client * clients.len() as u64
        ));
    }
    Ok(total)
}

// === Deployment ===

/// The demo deployment as most tests need it: stable (v1), canary (v2) and an unrelated
/// service (`other`) behind one Envoy, with the demo host routed the way Higress routes a
/// header canary and `other.example.com` on a route no rule names.
pub struct Deployment {
    /// Declared first so it is dropped first: backends never see Envoy half-alive.
    pub envoy: Envoy,
    /// Serves the stable version.
    pub stable: Backend,
    /// Serves the canary version.
    pub canary: Backend,
    /// Serves `default/other`.
    pub other: Backend,
}

/// Options for [`Deployment`].
#[derive(Debug, Clone)]
pub struct DeploymentBuilder {
    filter: Filter,
    tag_header: String,
    tag_value: String,
    concurrency: u32,
    demo_domains: Vec<String>,
    access_log: bool,
}

impl DeploymentBuilder {
    /// Tag header and value the canary route matches (`<header>` ~ `always|<value>`).
    pub fn tag(mut self, header: &str, value: &str) -> Self {
        self.tag_header = header.to_string();
        self.tag_value = value.to_string();
        self
    }

    /// Envoy worker threads.
    pub fn concurrency(mut self, workers: u32) -> Self {
        self.concurrency = workers;
        self
    }

    /// Hosts the demo virtual host answers (default: `demo.example.com` only).
    pub fn demo_domains(mut self, domains: &[&str]) -> Self {
        self.demo_domains = domains.iter().map(|d| d.to_string()).collect();
        self
    }

    /// Writes Envoy's access log (see [`EnvoyConfig::access_log`]).
    pub fn access_log(mut self, on: bool) -> Self {
        self.access_log = on;
        self
    }

    /// Starts the backends and Envoy.
    pub fn start(self) -> Result<Deployment> {
        let stable = Backend::start(STABLE)?;
        let canary = Backend::start(CANARY)?;
        let other = Backend::start(OTHER)?;
        let domains: Vec<&str> = self.demo_domains.iter().map(String::as_str).collect();
        let demo = VirtualHost::new("demo", &domains)
            .route(Route::canary(&self.tag_header, &self.tag_value))
            .route(Route::new(BASE_ROUTE, STABLE_CLUSTER));
        let config = EnvoyConfig::new(self.filter)
            .concurrency(self.concurrency)
            .access_log(self.access_log)
            .virtual_host(demo)
            .virtual_host(VirtualHost::other())
            .cluster(STABLE_CLUSTER, stable.addr())
            .cluster(CANARY_CLUSTER, canary.addr())
            .cluster(OTHER_CLUSTER, other.addr());
        let envoy = Envoy::start(&config).context("starting the demo deployment's Envoy")?;
        Ok(Deployment {
            envoy,
            stable,
            canary,
            other,
        })
    }
}

impl Deployment {
    /// Options for a deployment with `filter` in front of the router.
    pub fn builder(filter: Filter) -> DeploymentBuilder {
        DeploymentBuilder {
            filter,
            tag_header: TAG_HEADER.to_string(),
            tag_value: TAG_VALUE.to_string(),
            concurrency: 2,
            demo_domains: vec![DEMO_HOST.to_string()],
            access_log: false,
        }
    }

    /// The canary plugin with `plugin_config`, default tag header and value, two workers.
    pub fn start(plugin_config: &str) -> Result<Self> {
        Self::builder(Filter::canary(plugin_config)?).start()
    }

    /// A keep-alive client for the demo host.
    pub fn client(&self) -> Client {
        self.envoy.client()
    }

    /// `n` keep-alive clients for the demo host.
    pub fn clients(&self, n: usize) -> Vec<Client> {
        (0..n).map(|_| self.client()).collect()
    }
}
