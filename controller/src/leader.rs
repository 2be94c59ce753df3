//! Leader election for `higress-canary run`, so several replicas can run and one acts.
//!
//! Every replica competes for one `coordination.k8s.io/v1` Lease (default
//! `higress-canary`). [`run_as_leader`] waits until this replica holds it, then runs the
//! controller loop ([`crate::run`]) until shutdown, renewing the Lease meanwhile; on a graceful
//! shutdown it releases the Lease so another replica takes over at once. A leader that loses the
//! Lease stops its controller at once and returns [`Error::LostLeadership`]: the process exits
//! non-zero and restarts as a follower (controller-runtime does the same).
//!
//! The Lease is written by `kube-lease-manager`: acquisition is a server-side apply of
//! `holderIdentity` without force, so of two replicas racing for a free Lease the API server
//! lets one win (the other gets a field-manager conflict); the leader renews `renewTime`
//! [`Election::renew_grace_secs`] before the Lease would expire; a follower clears a Lease
//! whose holder stopped renewing once it has expired by the follower's clock, then takes it.
//! This module adds a watch of the Lease, for what the manager does not do:
//! - a follower notices a free Lease (released, or cleared as expired) at once and starts a
//!   fresh acquisition (the manager would look again only when the old Lease expires);
//! - the leader notices at once that someone else holds or cleared the Lease, and stops;
//! - the leader stops when its Lease expires by its own clock without a renewal it has seen
//!   (renewals failing, the API unreachable). `renewTime` is written from the leader's own
//!   clock, so this deadline needs no clock agreement.
//!
//! So a leader that still reaches the API stops as soon as its watch shows a follower clearing
//! its expired Lease, while that follower still has to take it and sync its caches before it
//! acts; one that does not reach the API stops at its own expiry, when followers (with clocks
//! that agree) may start clearing it.
//!
//! What this does not give: fencing. The API server does not check the Lease on the
//! controller's writes, so a write sent just before the old leader stopped (or by a process
//! that was frozen past its Lease and resumes) can land after the new leader started; a leader
//! that can write but not watch, with its clock behind a follower's, overlaps it by the skew at
//! most. Such an overlap
//! is brief and safe because of how [`crate::apply`] writes: the Rollout status is a
//! `PUT …/status` carrying the resourceVersion it was planned from and finalizers are merge
//! patches carrying it, so a stale leader never records a status planned from an outdated
//! Rollout (it gets 409 Conflict once the new leader wrote it); every other write (forced server-side apply of the canary objects,
//! one-field merge patches of `spec.paused` and Service pins, background deletes, the
//! WasmPlugin's JSON patch) is an idempotent function of a recorded status. A stale one can
//! put back an earlier step's object or routing for a moment; the new leader watches those
//! objects (and the WasmPlugin against every Rollout's recorded rule) and writes them again.

use std::{
    future::Future,
    time::{Duration, SystemTime},
};

use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{
    runtime::{watcher, WatchStreamExt},
    Api, Client,
};
use kube_lease_manager::{LeaseCreateMode, LeaseManager, LeaseManagerBuilder, LeaseParams};
use tracing::{debug, error, info, warn};

use crate::reconcile::Settings;

/// Default name of the Lease.
pub const DEFAULT_LEASE_NAME: &str = "higress-canary";
/// Default seconds a Lease stays valid after its last renewal.
pub const DEFAULT_LEASE_DURATION_SECS: u64 = 15;
/// How long a graceful shutdown waits for the Lease to be released.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed renewal before the next attempt (the deadline still applies).
const RENEW_RETRY: Duration = Duration::from_millis(500);
/// Bounds of the pause after a failed acquisition attempt.
const ACQUIRE_RETRY_MIN: Duration = Duration::from_secs(1);
const ACQUIRE_RETRY_MAX: Duration = Duration::from_secs(15);

/// How this replica takes part in the election.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Election {
    /// Name of the Lease (default [`DEFAULT_LEASE_NAME`]).
    pub lease_name: String,
    /// Namespace of the Lease (`higress-canary run` uses `POD_NAMESPACE`, else
    /// `higress-system`).
    pub lease_namespace: String,
    /// This replica's `holderIdentity`; must differ between processes ([`unique_identity`]).
    pub identity: String,
    /// Seconds a Lease stays valid after its last renewal (the Lease API counts in seconds):
    /// how long followers wait before taking over from a crashed leader. At least 2.
    pub lease_duration_secs: u64,
    /// The leader renews this many seconds before its Lease would expire; at least 1 and less
    /// than the duration. Failed renewals are retried until the Lease expires.
    pub renew_grace_secs: u64,
}

impl Election {
    /// An election renewing a third of `lease_duration_secs` (at least 1 s) before expiry.
    pub fn new(
        lease_name: impl Into<String>,
        lease_namespace: impl Into<String>,
        identity: impl Into<String>,
        lease_duration_secs: u64,
    ) -> Self {
        Self {
            lease_name: lease_name.into(),
            lease_namespace: lease_namespace.into(),
            identity: identity.into(),
            lease_duration_secs,
            renew_grace_secs: (lease_duration_secs / 3).max(1),
        }
    }

    /// Checks the timing (kube-lease-manager panics on values it cannot use).
    pub fn validate(&self) -> Result<(), Error> {
        let (duration, grace) = (self.lease_duration_secs, self.renew_grace_secs);
        if duration < 2 || grace < 1 || grace >= duration || duration > i32::MAX as u64 {
            return Err(Error::Timing {
                lease_duration_secs: duration,
                renew_grace_secs: grace,
            });
        }
        if self.identity.is_empty() {
            return Err(Error::EmptyIdentity);
        }
        Ok(())
    }

    /// `<namespace>/<name>`, for logs and errors.
    pub fn lease(&self) -> String {
        format!("{}/{}", self.lease_namespace, self.lease_name)
    }
}

/// `base` plus a random 5-character suffix (as Kubernetes' `generateName`), so two processes
/// with one pod or host name never share an identity and a restarted process never mistakes
/// its predecessor's Lease for its own.
pub fn unique_identity(base: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let suffix: String = (0..5)
        .map(|_| char::from(ALPHABET[fastrand::usize(..ALPHABET.len())]))
        .collect();
    format!("{base}-{suffix}")
}

/// What can end [`run_as_leader`] with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "lease duration {lease_duration_secs} s with renew grace {renew_grace_secs} s: the \
         duration must be at least 2 s, the grace at least 1 s and shorter than the duration"
    )]
    Timing {
        lease_duration_secs: u64,
        renew_grace_secs: u64,
    },
    #[error("the leader-election identity is empty: pass --instance or set POD_NAME")]
    EmptyIdentity,
    /// Another replica holds the Lease now, or this one could not renew it in time: the
    /// controller was stopped so that two replicas do not act together.
    #[error("lost the leadership of Lease {lease}: {reason}; the controller stopped")]
    LostLeadership { lease: String, reason: Lost },
    /// The controller loop failed.
    #[error(transparent)]
    Controller(#[from] crate::Error),
}

/// Why a leader stopped leading.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Lost {
    #[error("it is held by {0} now")]
    TakenBy(String),
    #[error("it was cleared by another replica, which found it expired")]
    Cleared,
    #[error("it was deleted")]
    Deleted,
    #[error("no renewal was seen before it expired at {0}")]
    Expired(jiff::Timestamp),
}

/// Who holds the Lease, as seen by `identity`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Holder {
    /// This replica, valid until `renewTime + leaseDurationSeconds` (the epoch if either is
    /// missing: not valid).
    Us {
        until: SystemTime,
    },
    Other(String),
    Nobody,
    /// No Lease.
    Gone,
}

fn holder(lease: Option<&Lease>, identity: &str) -> Holder {
    let Some(lease) = lease else {
        return Holder::Gone;
    };
    let spec = lease.spec.clone().unwrap_or_default();
    match spec.holder_identity {
        None => Holder::Nobody,
        Some(h) if h.is_empty() => Holder::Nobody,
        Some(h) if h != identity => Holder::Other(h),
        Some(_) => {
            let until = match (spec.renew_time, spec.lease_duration_seconds) {
                (Some(renewed), Some(secs)) => {
                    SystemTime::from(renewed.0) + Duration::from_secs(secs.max(0) as u64)
                }
                _ => SystemTime::UNIX_EPOCH,
            };
            Holder::Us { until }
        }
    }
}

/// Runs the controller loop ([`crate::run`]) while this replica holds the Lease.
///
/// Waits for the Lease (a follower: `/readyz` answers 200, `higress_canary_leader` is 0), then
/// runs the controller until `shutdown`, then releases the Lease and returns `Ok`. Returns
/// `Ok` without running the controller when `shutdown` comes first. Returns
/// [`Error::LostLeadership`] as soon as leadership is lost, with the controller stopped
/// (reconciles in flight are cancelled); the caller should exit.
pub async fn run_as_leader(
    client: Client,
    settings: Settings,
    election: Election,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), Error> {
    election.validate()?;
    let metrics = settings.metrics.clone();
    let shutdown = shutdown.shared();
    let leases = Api::<Lease>::namespaced(client.clone(), &election.lease_namespace);
    metrics.set_leader(false);

    let Some(manager) = follow(&client, &leases, &election, shutdown.clone(), &settings).await
    else {
        return Ok(());
    };

    info!(identity = %election.identity, lease = %election.lease(), "became the leader; starting the controller");
    metrics.set_ready(false);
    metrics.set_leader(true);
    // A fresh watch: events queued while following describe the Lease before this replica
    // held it.
    let observed = watcher::watch_object(leases.clone(), &election.lease_name).default_backoff();
    let controller = crate::run(client, settings, shutdown);
    let outcome = {
        tokio::pin!(controller);
        tokio::select! {
            result = &mut controller => Ok(result),
            lost = hold(&manager, &leases, observed, &election) => Err(lost),
        }
    };
    metrics.set_leader(false);
    match outcome {
        Ok(result) => {
            release(&manager, &election).await;
            result.map_err(Error::from)
        }
        Err(reason) => {
            metrics.set_ready(false);
            error!(identity = %election.identity, lease = %election.lease(), %reason, "lost the leadership; controller stopped");
            Err(Error::LostLeadership {
                lease: election.lease(),
                reason,
            })
        }
    }
}

enum Following {
    Acquired,
    Released,
    Shutdown,
}

/// Waits until this replica holds the Lease (`Some`) or `shutdown` (`None`).
async fn follow(
    client: &Client,
    leases: &Api<Lease>,
    election: &Election,
    shutdown: impl Future<Output = ()> + Clone + Unpin,
    settings: &Settings,
) -> Option<LeaseManager> {
    let identity = election.identity.as_str();
    let lease = election.lease();
    let observed = watcher::watch_object(leases.clone(), &election.lease_name).default_backoff();
    tokio::pin!(observed);
    let mut seen: Option<Holder> = None;
    let mut retry = ACQUIRE_RETRY_MIN;
    loop {
        let manager = tokio::select! {
            built = manager(client, election) => match built {
                Ok(manager) => manager,
                Err(e) => {
                    warn!(%identity, %lease, error = %e, "cannot use the Lease; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(retry) => {}
                        _ = shutdown.clone() => return None,
                    }
                    retry = (retry * 2).min(ACQUIRE_RETRY_MAX);
                    continue;
                }
            },
            _ = shutdown.clone() => return None,
        };
        // A follower is ready: it is healthy, and a rollout of the controller's own
        // Deployment must not wait for it to lead.
        settings.metrics.set_ready(true);

        let acquire = async {
            let mut retry = ACQUIRE_RETRY_MIN;
            loop {
                match manager.changed().await {
                    Ok(true) => return,
                    Ok(false) => {}
                    Err(e) => {
                        warn!(%identity, %lease, error = %e, "trying to acquire the Lease failed; retrying");
                        tokio::time::sleep(retry).await;
                        retry = (retry * 2).min(ACQUIRE_RETRY_MAX);
                    }
                }
            }
        };
        let released = async {
            while let Some(event) = observed.next().await {
                let now = match event {
                    Ok(lease) => holder(lease.as_ref(), identity),
                    Err(e) => {
                        debug!(%identity, error = %e, "watching the Lease failed; retrying");
                        continue;
                    }
                };
                let was_held = matches!(seen, Some(Holder::Other(_)));
                if let Holder::Other(holder) = &now {
                    if seen.as_ref() != Some(&now) {
                        info!(%identity, %lease, %holder, "waiting for leadership");
                    }
                }
                seen = Some(now.clone());
                if was_held && now == Holder::Nobody {
                    return;
                }
            }
        };
        let outcome = tokio::select! {
            _ = acquire => Following::Acquired,
            _ = released => Following::Released,
            _ = shutdown.clone() => Following::Shutdown,
        };
        match outcome {
            Following::Acquired => return Some(manager),
            Following::Released => {
                // Released by its holder, or cleared as expired (maybe by this replica): the
                // manager would look again only when the old holder's Lease expires.
                info!(%identity, %lease, "the Lease is free; acquiring it");
                retry = ACQUIRE_RETRY_MIN;
            }
            Following::Shutdown => {
                // An acquisition may have landed just as it was cancelled.
                if let Ok(current) = leases.get_opt(&election.lease_name).await {
                    if matches!(holder(current.as_ref(), identity), Holder::Us { .. }) {
                        release(&manager, election).await;
                    }
                }
                return None;
            }
        }
    }
}

async fn manager(
    client: &Client,
    election: &Election,
) -> Result<LeaseManager, kube_lease_manager::LeaseManagerError> {
    LeaseManagerBuilder::new(client.clone(), &election.lease_name)
        .with_namespace(&election.lease_namespace)
        .with_parameters(LeaseParams::new(
            &election.identity,
            election.lease_duration_secs,
            election.renew_grace_secs,
        ))
        .with_create_mode(LeaseCreateMode::AutoCreate)
        .build()
        .await
}

/// Renews the Lease until leadership is lost, and says why.
async fn hold(
    manager: &LeaseManager,
    leases: &Api<Lease>,
    observed: impl Stream<Item = Result<Option<Lease>, watcher::Error>>,
    election: &Election,
) -> Lost {
    let identity = election.identity.as_str();
    let renew = async {
        loop {
            match manager.changed().await {
                // The manager saw another holder when it renewed (the watch usually tells
                // first); read who.
                Ok(false) => {
                    let current = leases.get_opt(&election.lease_name).await;
                    return match current.map(|lease| holder(lease.as_ref(), identity)) {
                        Ok(Holder::Other(holder)) => Lost::TakenBy(holder),
                        Ok(Holder::Nobody) => Lost::Cleared,
                        Ok(Holder::Gone) => Lost::Deleted,
                        Ok(Holder::Us { .. }) | Err(_) => Lost::TakenBy("another replica".into()),
                    };
                }
                Ok(true) => {}
                Err(e) => {
                    warn!(%identity, lease = %election.lease(), error = %e, "renewing the Lease failed; retrying");
                    tokio::time::sleep(RENEW_RETRY).await;
                }
            }
        }
    };
    let watch = async {
        tokio::pin!(observed);
        // Until the watch shows the Lease: it was acquired just now, and is renewed `grace`
        // before it expires.
        let mut until = SystemTime::now()
            + Duration::from_secs(election.lease_duration_secs - election.renew_grace_secs);
        loop {
            let left = until
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            if left.is_zero() {
                return Lost::Expired(jiff::Timestamp::try_from(until).unwrap_or_default());
            }
            tokio::select! {
                // Checked again at the top (the wall clock may have been stepped).
                _ = tokio::time::sleep(left) => {}
                event = observed.next() => match event {
                    Some(Ok(lease)) => match holder(lease.as_ref(), identity) {
                        Holder::Us { until: renewed_until } => until = renewed_until,
                        Holder::Other(holder) => return Lost::TakenBy(holder),
                        Holder::Nobody => return Lost::Cleared,
                        Holder::Gone => return Lost::Deleted,
                    },
                    Some(Err(e)) => {
                        debug!(%identity, error = %e, "watching the Lease failed; retrying")
                    }
                    // The watcher never ends; the deadline still applies.
                    None => tokio::time::sleep(left).await,
                },
            }
        }
    };
    tokio::select! {
        lost = renew => lost,
        lost = watch => lost,
    }
}

async fn release(manager: &LeaseManager, election: &Election) {
    let (identity, lease) = (&election.identity, election.lease());
    match tokio::time::timeout(RELEASE_TIMEOUT, manager.release()).await {
        Ok(Ok(())) => info!(%identity, %lease, "released the Lease"),
        Ok(Err(e)) => {
            warn!(%identity, %lease, error = %e, "could not release the Lease; another replica takes over when it expires")
        }
        Err(_) => {
            warn!(%identity, %lease, "releasing the Lease timed out; another replica takes over when it expires")
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::coordination::v1::LeaseSpec, apimachinery::pkg::apis::meta::v1::MicroTime,
    };

    use super::*;

    fn lease(holder: Option<&str>, renewed: Option<i64>, secs: Option<i32>) -> Lease {
        Lease {
            metadata: Default::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                renew_time: renewed.map(|s| MicroTime(jiff::Timestamp::from_second(s).unwrap())),
                lease_duration_seconds: secs,
                ..Default::default()
            }),
        }
    }

    #[test]
    fn the_holder_is_read_from_the_lease() {
        let epoch = SystemTime::UNIX_EPOCH;
        let cases = [
            (
                Some(lease(Some("me"), Some(100), Some(15))),
                Holder::Us {
                    until: epoch + Duration::from_secs(115),
                },
            ),
            (
                Some(lease(Some("me"), None, Some(15))),
                Holder::Us { until: epoch },
            ),
            (
                Some(lease(Some("other"), Some(100), Some(15))),
                Holder::Other("other".into()),
            ),
            (Some(lease(None, None, None)), Holder::Nobody),
            (Some(lease(Some(""), None, None)), Holder::Nobody),
            (Some(Lease::default()), Holder::Nobody),
            (None, Holder::Gone),
        ];
        for (lease, want) in cases {
            assert_eq!(holder(lease.as_ref(), "me"), want, "{lease:?}");
        }
    }

    #[test]
    fn the_renew_grace_is_a_third_of_the_duration_and_at_least_a_second() {
        for (duration, grace) in [(15, 5), (2, 1), (3, 1), (7, 2), (60, 20)] {
            let election = Election::new("l", "ns", "me", duration);
            assert_eq!(election.renew_grace_secs, grace, "duration {duration}");
            election.validate().unwrap();
        }
    }

    #[test]
    fn unusable_timings_and_identities_are_rejected() {
        for (duration, grace) in [(1, 1), (0, 0), (5, 0), (5, 5), (5, 6)] {
            let election = Election {
                renew_grace_secs: grace,
                ..Election::new("l", "ns", "me", duration)
            };
            let err = election.validate().unwrap_err();
            assert!(
                matches!(err, Error::Timing { .. }),
                "{duration}/{grace}: {err}"
            );
        }
        let err = Election::new("l", "ns", "", 15).validate().unwrap_err();
        assert!(err.to_string().contains("--instance"), "{err}");
    }

    #[test]
    fn identities_keep_the_base_and_differ_between_calls() {
        let a = unique_identity("higress-canary-7d9f8-x2k4p");
        let b = unique_identity("higress-canary-7d9f8-x2k4p");
        assert!(a.starts_with("higress-canary-7d9f8-x2k4p-"), "{a}");
        assert_eq!(a.len(), "higress-canary-7d9f8-x2k4p".len() + 6);
        // 27^5 suffixes: a collision here is a one-in-14-million event.
        assert_ne!(a, b);
    }
}
