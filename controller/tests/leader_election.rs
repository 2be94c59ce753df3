//! Leader election on the sandbox: two replicas of the controller (`run_as_leader`, in-process,
//! each with its own client, user agent and metrics, as two pods would have) compete for one
//! Lease while the seed canary release runs. Which replica wrote what is told apart by the user
//! agent the sandbox API server records.

mod common;

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, ensure, Context as _, Result};
use common::{phase, run_test, scenario, Harness, PATIENCE};
use futures::FutureExt;
use higress_canary::{
    leader::{self, run_as_leader, Election, Lost},
    metrics::Metrics,
    Settings,
};
use k8s_openapi::{api::coordination::v1::Lease, apimachinery::pkg::apis::meta::v1::MicroTime};
use kube::api::{Api, Patch, PatchParams};
use sandbox::api::{Fault, Matcher};
use serde_json::json;
use tokio::{sync::oneshot, task::JoinHandle};

const LEASE: &str = "higress-canary";
const LEASE_NAMESPACE: &str = "higress-system";
const ROLLOUT: &str = "rollouts-demo";
const USER_AGENT_PREFIX: &str = "leader-election-test/";

/// One replica of `higress-canary run`, running in-process.
struct Replica {
    identity: String,
    metrics: Arc<Metrics>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), leader::Error>>,
}

impl Replica {
    fn start(h: &Harness, identity: &str, lease_duration_secs: u64) -> Result<Self> {
        let mut config = h.cluster.api.kube_config();
        config.headers.push((
            "user-agent".try_into()?,
            format!("{USER_AGENT_PREFIX}{identity}").try_into()?,
        ));
        let client = kube::Client::try_from(config)?;
        let metrics = Arc::new(Metrics::default());
        let settings = Settings {
            metrics: metrics.clone(),
            instance: Some(identity.to_owned()),
            ..h.settings.clone()
        };
        let election = Election::new(LEASE, LEASE_NAMESPACE, identity, lease_duration_secs);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(run_as_leader(client, settings, election, async move {
            let _ = stopped.await;
        }));
        Ok(Self {
            identity: identity.to_owned(),
            metrics,
            stop: Some(stop),
            task,
        })
    }

    fn leads(&self) -> bool {
        self.metrics.is_leader()
            && self
                .metrics
                .render()
                .lines()
                .any(|l| l == "higress_canary_leader 1")
    }

    /// Fails if the replica stopped (with what it returned).
    fn expect_running(&mut self) -> Result<()> {
        match (&mut self.task).now_or_never() {
            None => Ok(()),
            Some(result) => bail!("replica {} stopped: {result:?}", self.identity),
        }
    }

    /// Graceful shutdown (SIGTERM): returns what `run_as_leader` returned.
    async fn stop(mut self) -> Result<Result<(), leader::Error>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .with_context(|| format!("replica {} did not stop", self.identity))?
            .context("replica task")
    }

    /// A crash: the task is dropped wherever it is; nothing is released.
    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    /// Waits until `run_as_leader` returns by itself.
    async fn ended(mut self) -> Result<Result<(), leader::Error>> {
        tokio::time::timeout(PATIENCE, &mut self.task)
            .await
            .with_context(|| format!("replica {} kept running", self.identity))?
            .context("replica task")
    }
}

async fn lease(h: &Harness) -> Result<Lease> {
    Api::<Lease>::namespaced(h.client.clone(), LEASE_NAMESPACE)
        .get(LEASE)
        .await
        .context("reading the Lease")
}

fn holder(lease: &Lease) -> Option<&str> {
    lease.spec.as_ref()?.holder_identity.as_deref()
}

fn time(t: Option<&MicroTime>) -> Result<SystemTime> {
    Ok(SystemTime::from(t.context("the Lease has no such time")?.0))
}

/// When the Lease expires unless renewed again: `renewTime + leaseDurationSeconds`.
fn expiry(lease: &Lease) -> Result<SystemTime> {
    let spec = lease.spec.as_ref().context("Lease without spec")?;
    let secs = spec
        .lease_duration_seconds
        .context("no leaseDurationSeconds")?;
    Ok(time(spec.renew_time.as_ref())? + Duration::from_secs(secs as u64))
}

/// Waits until exactly one of `replicas` leads, holds the Lease and has synced its caches, and
/// the others follow (ready, gauge 0); returns the leader's index.
async fn one_leader(h: &Harness, replicas: &mut [&mut Replica]) -> Result<usize> {
    let start = Instant::now();
    loop {
        for replica in replicas.iter_mut() {
            replica.expect_running()?;
        }
        let leaders: Vec<usize> = (0..replicas.len())
            .filter(|&i| replicas[i].leads())
            .collect();
        ensure!(leaders.len() <= 1, "two replicas lead at once: {leaders:?}");
        let current = lease(h).await?;
        if let [i] = leaders[..] {
            let others_follow = replicas.iter().enumerate().all(|(j, r)| {
                j == i
                    || (r.metrics.is_ready()
                        && r.metrics
                            .render()
                            .lines()
                            .any(|l| l == "higress_canary_leader 0"))
            });
            if holder(&current) == Some(replicas[i].identity.as_str())
                && replicas[i].metrics.is_ready()
                && others_follow
            {
                return Ok(i);
            }
        }
        ensure!(
            start.elapsed() < PATIENCE,
            "no single leader after {PATIENCE:?}; Lease holder {:?}",
            holder(&current)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The writes the controller replicas made to the release's objects (not the Lease, not
/// Events), from request `from` on, as `(identity, "verb resource/name")`.
fn controller_writes(h: &Harness, from: usize) -> Vec<(String, String)> {
    h.cluster
        .api
        .requests()
        .into_iter()
        .skip(from)
        .filter(|r| r.method != "GET" && r.resource != "leases" && r.resource != "events")
        .filter_map(|r| {
            let identity = r.user_agent.as_deref()?.strip_prefix(USER_AGENT_PREFIX)?;
            let label = format!("{} {}/{}", r.verb, r.resource, r.name.unwrap_or_default());
            Some((identity.to_owned(), label))
        })
        .collect()
}

fn expect_only_writer(writes: &[(String, String)], writer: &str) -> Result<()> {
    ensure!(!writes.is_empty(), "{writer} wrote nothing");
    let others: Vec<_> = writes.iter().filter(|(w, _)| w != writer).collect();
    ensure!(
        others.is_empty(),
        "writes by a replica other than the leader {writer}: {others:?}"
    );
    Ok(())
}

/// Lease writes that clear the holder, by the replica with `identity`, from request `from` on
/// (a release, or the clearing of an expired Lease before taking it).
fn releases_by(h: &Harness, identity: &str, from: usize) -> usize {
    let manager = format!("kube-lease-manager-{identity}");
    h.cluster
        .api
        .requests()
        .iter()
        .skip(from)
        .filter(|r| {
            r.resource == "leases"
                && r.method == "PATCH"
                && r.param("fieldManager") == Some(manager.as_str())
                && r.body.contains("\"holderIdentity\":null")
        })
        .count()
}

/// Creates the seed canary Rollout and waits until the leader took control of `demo`.
async fn adopt(h: &Harness) -> Result<()> {
    h.create_yaml(&scenario("rollout-canary.yaml")).await?;
    h.wait_rollout(ROLLOUT, "phase Healthy", |r| phase(r) == "Healthy")
        .await?;
    let demo = h.deployments().get("demo").await?;
    ensure!(
        demo.spec.paused == Some(true),
        "demo is not paused after adoption"
    );
    Ok(())
}

#[test]
fn a_crashed_leader_is_replaced_once_its_lease_expires_and_the_release_completes() -> Result<()> {
    run_test(|| async {
        let h = Harness::start().await?;
        let mut a = Replica::start(&h, "replica-a", 6)?;
        let mut b = Replica::start(&h, "replica-b", 6)?;
        let first = one_leader(&h, &mut [&mut a, &mut b]).await?;
        let (mut leader, mut follower) = if first == 0 { (a, b) } else { (b, a) };

        adopt(&h).await?;
        h.set_image("v2").await?;
        h.wait_paused_at(ROLLOUT, 1).await?;
        follower.expect_running()?;
        ensure!(!follower.leads(), "the follower leads too");
        ensure!(
            holder(&lease(&h).await?) == Some(leader.identity.as_str()),
            "the Lease changed hands during the release"
        );
        expect_only_writer(&controller_writes(&h, 0), &leader.identity)?;

        // A crash: the Lease stays with the dead leader until it expires.
        leader.expect_running()?;
        let dead = leader.identity.clone();
        leader.kill().await;
        let at_crash = lease(&h).await?;
        ensure!(
            holder(&at_crash) == Some(dead.as_str()),
            "the Lease moved on at the crash: {:?}",
            at_crash.spec
        );
        // The dead leader's last renewal may still land: its expiry is this or later.
        let dead_expiry = expiry(&at_crash)?;
        let marker = h.cluster.api.requests().len();
        let first = one_leader(&h, &mut [&mut follower]).await?;
        ensure!(first == 0);
        let taken = lease(&h).await?;
        let acquired = time(taken.spec.as_ref().and_then(|s| s.acquire_time.as_ref()))?;
        ensure!(
            acquired > dead_expiry,
            "the follower took the Lease at {acquired:?}, before the dead leader's expired at \
             {dead_expiry:?}"
        );
        ensure!(
            releases_by(&h, &dead, 0) == 0,
            "a killed leader released its Lease"
        );
        let takeover = h.cluster.api.requests().len();

        // The new leader completes the release.
        h.approve_like_kruise(ROLLOUT).await?;
        h.wait_paused_at(ROLLOUT, 2).await?;
        h.approve_like_kruise(ROLLOUT).await?;
        h.wait_finished(ROLLOUT, "True").await?;
        expect_only_writer(&controller_writes(&h, takeover), &follower.identity)?;
        // Only in-flight requests of the dead leader may land between the crash and the
        // takeover.
        ensure!(
            controller_writes(&h, marker)
                .iter()
                .all(|(w, _)| w == &follower.identity || w == &dead),
            "an unknown writer"
        );

        // A graceful stop releases the Lease.
        let survivor = follower.identity.clone();
        let before_stop = h.cluster.api.requests().len();
        follower.stop().await??;
        let released = lease(&h).await?;
        ensure!(
            holder(&released).is_none(),
            "the Lease is still held after a graceful stop: {:?}",
            released.spec
        );
        ensure!(releases_by(&h, &survivor, before_stop) == 1);
        Ok(())
    })
}

#[test]
fn a_leader_stopped_gracefully_hands_over_at_once_and_a_leader_that_loses_the_lease_stops(
) -> Result<()> {
    run_test(|| async {
        let h = Harness::start().await?;
        // A long Lease: a takeover before it expires can only come from a release.
        let mut a = Replica::start(&h, "replica-a", 10)?;
        let mut b = Replica::start(&h, "replica-b", 10)?;
        let first = one_leader(&h, &mut [&mut a, &mut b]).await?;
        let (leader, mut follower) = if first == 0 { (a, b) } else { (b, a) };

        adopt(&h).await?;
        h.set_image("v2").await?;
        h.wait_paused_at(ROLLOUT, 1).await?;

        let before = lease(&h).await?;
        let old_expiry = expiry(&before)?;
        let old = leader.identity.clone();
        let before_stop = h.cluster.api.requests().len();
        leader.stop().await?.context("a graceful stop returns Ok")?;
        ensure!(
            releases_by(&h, &old, before_stop) == 1,
            "the leader did not release the Lease"
        );
        let first = one_leader(&h, &mut [&mut follower]).await?;
        ensure!(first == 0);
        let taken = lease(&h).await?;
        let acquired = time(taken.spec.as_ref().and_then(|s| s.acquire_time.as_ref()))?;
        ensure!(
            acquired < old_expiry,
            "the follower took over at {acquired:?}, not before the released Lease would have \
             expired at {old_expiry:?}"
        );
        let takeover = h.cluster.api.requests().len();
        h.approve_like_kruise(ROLLOUT).await?;
        h.wait_paused_at(ROLLOUT, 2).await?;
        expect_only_writer(&controller_writes(&h, takeover), &follower.identity)?;

        // The leader cannot renew (the API answers 500 to every Lease write): it stops once
        // its Lease expires, as it can no longer rule out another leader.
        let fault = h.cluster.api.inject(Fault::status(
            Matcher::verb("patch").resource("leases"),
            500,
        ));
        let metrics = follower.metrics.clone();
        match follower.ended().await? {
            Err(leader::Error::LostLeadership {
                reason: Lost::Expired(_),
                ..
            }) => {}
            other => bail!("expected the leadership lost to expiry, got {other:?}"),
        }
        ensure!(!metrics.is_leader(), "the gauge still says leader");
        h.cluster.api.remove_fault(fault);

        // A new replica takes the expired Lease; then someone else takes it (as a replica that
        // judged it expired would): the leader stops its controller and returns an error.
        let mut c = Replica::start(&h, "replica-c", 10)?;
        one_leader(&h, &mut [&mut c]).await?;
        let now = jiff::Timestamp::now();
        Api::<Lease>::namespaced(h.client.clone(), LEASE_NAMESPACE)
            .patch(
                LEASE,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {
                    "holderIdentity": "intruder",
                    "acquireTime": MicroTime(now),
                    "renewTime": MicroTime(now),
                    "leaseDurationSeconds": 60,
                }})),
            )
            .await?;
        let metrics = c.metrics.clone();
        match c.ended().await? {
            Err(leader::Error::LostLeadership {
                reason: Lost::TakenBy(by),
                ..
            }) if by == "intruder" => {}
            other => bail!("expected the leadership lost to the intruder, got {other:?}"),
        }
        ensure!(
            !metrics.is_leader()
                && metrics
                    .render()
                    .lines()
                    .any(|l| l == "higress_canary_leader 0"),
            "the gauge still says leader"
        );
        Ok(())
    })
}
