//! The kubelet's decisions, as pure functions: failure knobs, readiness, and the pod status
//! a kubelet reports for a pod whose first container is a running HTTP server.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::{
    api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStatus, HostIP, Pod, PodCondition, PodIP,
        PodStatus,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use super::{
    util::{annotation, api_time, image_tag},
    ERROR_RATE_ANNOTATION, NEVER_READY_ANNOTATION, PORT_ANNOTATION,
};

/// The loopback address every simulated pod and node has.
pub const LOOPBACK: &str = "127.0.0.1";

/// Failure knobs in effect for a pod.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Knobs {
    /// The readiness probe never passes.
    pub never_ready: bool,
    /// Fraction of requests answered with 500, in `[0, 1]`.
    pub error_rate: f64,
}

/// Knobs for `pod`, from its annotations: set in the pod template, copied from the
/// ReplicaSet when the pod was created (see [`super::replicaset::pod_from_template`]), or
/// put on the running pod (which takes effect at once).
pub fn knobs(pod: &Pod) -> Knobs {
    let lookup = |key: &str| annotation(&pod.metadata, key);
    Knobs {
        never_ready: lookup(NEVER_READY_ANNOTATION)
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true")),
        error_rate: lookup(ERROR_RATE_ANNOTATION)
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite())
            .map_or(0.0, |v| v.clamp(0.0, 1.0)),
    }
}

/// The server port recorded on a pod.
pub fn port_of(meta: &ObjectMeta) -> Option<u16> {
    annotation(meta, PORT_ANNOTATION)?.parse().ok()
}

/// What the pod's server answers: the tag of its first container's image.
pub fn body_of(pod: &Pod) -> String {
    let image = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.as_deref())
        .unwrap_or_default();
    image_tag(image).to_owned()
}

/// Whether a pod that started at `started` should be ready at `now`, and when that changes
/// if it is not ready yet. The readiness delay is an initial delay: a ready pod stays ready,
/// unless the never-ready knob makes its probe fail.
pub fn readiness(
    knobs: Knobs,
    ready: bool,
    started: Timestamp,
    delay: Duration,
    now: Timestamp,
) -> (bool, Option<Timestamp>) {
    if knobs.never_ready {
        return (false, None);
    }
    let ready_at = started + delay;
    if ready || ready_at <= now {
        (true, None)
    } else {
        (false, Some(ready_at))
    }
}

/// What the kubelet reports for a running pod.
#[derive(Clone, Copy, Debug)]
pub struct Observed {
    pub started: Timestamp,
    pub ready: bool,
    /// When `ready` last changed (or `started`).
    pub ready_changed: Timestamp,
}

/// The status a kubelet writes for a running pod: phase Running, the five pod conditions,
/// loopback addresses and one running container status per container.
pub fn pod_status(pod: &Pod, seen: Observed) -> PodStatus {
    let started = api_time(seen.started);
    let changed = api_time(seen.ready_changed);
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    let names: Vec<&str> = containers.iter().map(|c| c.name.as_str()).collect();
    let cond =
        |type_: &str, ok: bool, at: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time| {
            PodCondition {
                type_: type_.to_owned(),
                status: if ok { "True" } else { "False" }.to_owned(),
                last_transition_time: Some(at.clone()),
                reason: (!ok).then(|| "ContainersNotReady".to_owned()),
                message: (!ok)
                    .then(|| format!("containers with unready status: [{}]", names.join(" "))),
                ..Default::default()
            }
        };
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    PodStatus {
        phase: Some("Running".into()),
        conditions: Some(vec![
            cond("PodReadyToStartContainers", true, &started),
            cond("Initialized", true, &started),
            cond("Ready", seen.ready, &changed),
            cond("ContainersReady", seen.ready, &changed),
            cond("PodScheduled", true, &started),
        ]),
        host_ip: Some(LOOPBACK.into()),
        host_ips: Some(vec![HostIP {
            ip: LOOPBACK.into(),
        }]),
        pod_ip: Some(LOOPBACK.into()),
        pod_ips: Some(vec![PodIP {
            ip: LOOPBACK.into(),
        }]),
        start_time: Some(started.clone()),
        qos_class: Some(qos_class(pod).into()),
        container_statuses: Some(
            containers
                .iter()
                .map(|c| {
                    let image = c.image.clone().unwrap_or_default();
                    ContainerStatus {
                        name: c.name.clone(),
                        image_id: format!("{image}@sha256:{:064x}", fnv64(image.as_bytes())),
                        image,
                        container_id: Some(format!("sandbox://{uid}/{}", c.name)),
                        ready: seen.ready,
                        started: Some(true),
                        restart_count: 0,
                        state: Some(ContainerState {
                            running: Some(ContainerStateRunning {
                                started_at: Some(started.clone()),
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }
                })
                .collect(),
        ),
        ..Default::default()
    }
}

/// `BestEffort` without requests or limits; `Guaranteed` when every container limits cpu and
/// memory with equal (or unset) requests; `Burstable` otherwise.
fn qos_class(pod: &Pod) -> &'static str {
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    let resources: Vec<_> = containers
        .iter()
        .filter_map(|c| c.resources.as_ref())
        .collect();
    let any = resources.iter().any(|r| {
        r.requests.as_ref().is_some_and(|m| !m.is_empty())
            || r.limits.as_ref().is_some_and(|m| !m.is_empty())
    });
    if !any {
        return "BestEffort";
    }
    let guaranteed = resources.len() == containers.len()
        && resources.iter().all(|r| {
            ["cpu", "memory"].iter().all(|k| {
                let limit = r.limits.as_ref().and_then(|l| l.get(*k));
                let request = r.requests.as_ref().and_then(|l| l.get(*k));
                limit.is_some() && (request.is_none() || request == limit)
            })
        });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

fn fnv64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Whether the current status already says what `desired` says, on the fields clients
/// read (phase, addresses, condition states, container readiness). Avoids rewriting a
/// status whose timestamps the API server rendered differently.
pub fn status_matches(current: Option<&PodStatus>, desired: &PodStatus) -> bool {
    let Some(cur) = current else { return false };
    let conds = |s: &PodStatus| -> Vec<(String, String)> {
        let mut v: Vec<_> = s
            .conditions
            .iter()
            .flatten()
            .map(|c| (c.type_.clone(), c.status.clone()))
            .collect();
        v.sort();
        v
    };
    let containers = |s: &PodStatus| -> Vec<(String, bool)> {
        s.container_statuses
            .iter()
            .flatten()
            .map(|c| (c.name.clone(), c.ready))
            .collect()
    };
    cur.phase == desired.phase
        && cur.pod_ip == desired.pod_ip
        && cur.host_ip == desired.host_ip
        && cur.start_time == desired.start_time
        && conds(cur) == conds(desired)
        && containers(cur) == containers(desired)
}

/// The Ready condition's state and transition time in a reported status, to resume after
/// a simulator restart without flapping.
pub fn reported_readiness(pod: &Pod) -> Option<(bool, Timestamp, Option<Timestamp>)> {
    let status = pod.status.as_ref()?;
    let ready = status
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    let since = ready.last_transition_time.as_ref()?.0;
    Some((
        ready.status == "True",
        since,
        status.start_time.as_ref().map(|t| t.0),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec};

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).expect("valid time")
    }

    fn pod(annotations: &[(&str, &str)]) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("demo-abc-xyz12".into()),
                uid: Some("pod-uid".into()),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![
                    Container {
                        name: "main".into(),
                        image: Some("registry.example/version:v2".into()),
                        ..Default::default()
                    },
                    Container {
                        name: "sidecar".into(),
                        image: Some("envoy".into()),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn knobs_come_from_the_pod_annotations() {
        let p = pod(&[
            (ERROR_RATE_ANNOTATION, "0.3"),
            (NEVER_READY_ANNOTATION, "true"),
        ]);
        assert_eq!(
            knobs(&p),
            Knobs {
                never_ready: true,
                error_rate: 0.3
            }
        );
        let p = pod(&[
            (NEVER_READY_ANNOTATION, "TRUE "),
            (ERROR_RATE_ANNOTATION, "7"),
        ]);
        assert_eq!(
            knobs(&p),
            Knobs {
                never_ready: true,
                error_rate: 1.0
            },
            "clamped"
        );
        let p = pod(&[
            (NEVER_READY_ANNOTATION, "false"),
            (ERROR_RATE_ANNOTATION, "lots"),
        ]);
        assert_eq!(knobs(&p), Knobs::default());
        assert_eq!(knobs(&pod(&[])), Knobs::default());
    }

    #[test]
    fn readiness_follows_the_delay_and_the_never_ready_knob() {
        let delay = Duration::from_millis(1500);
        let ok = Knobs::default();
        assert_eq!(
            readiness(ok, false, at(0), delay, at(1)),
            (false, Some(at(0) + delay))
        );
        assert_eq!(readiness(ok, false, at(0), delay, at(2)), (true, None));
        assert_eq!(
            readiness(ok, false, at(0), Duration::ZERO, at(0)),
            (true, None)
        );
        assert_eq!(
            readiness(ok, true, at(0), delay, at(1)),
            (true, None),
            "stays ready"
        );
        let never = Knobs {
            never_ready: true,
            ..Knobs::default()
        };
        assert_eq!(
            readiness(never, false, at(0), delay, at(100)),
            (false, None)
        );
        assert_eq!(
            readiness(never, true, at(0), delay, at(100)),
            (false, None),
            "probe fails"
        );
    }

    #[test]
    fn a_ready_pod_reports_what_a_kubelet_reports() {
        let p = pod(&[]);
        let s = pod_status(
            &p,
            Observed {
                started: at(0),
                ready: true,
                ready_changed: at(1),
            },
        );
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(s.pod_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(s.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(s.qos_class.as_deref(), Some("BestEffort"));
        let conds: Vec<(&str, &str)> = s
            .conditions
            .iter()
            .flatten()
            .map(|c| (c.type_.as_str(), c.status.as_str()))
            .collect();
        assert_eq!(
            conds,
            [
                ("PodReadyToStartContainers", "True"),
                ("Initialized", "True"),
                ("Ready", "True"),
                ("ContainersReady", "True"),
                ("PodScheduled", "True"),
            ]
        );
        let ready = s
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready")
            .expect("Ready");
        assert_eq!(
            ready.last_transition_time.as_ref().map(|t| t.0),
            Some(at(1))
        );
        let cs = s.container_statuses.as_ref().expect("container statuses");
        assert_eq!(cs.len(), 2);
        assert!(cs.iter().all(|c| c.ready && c.started == Some(true)));
        assert!(cs[0]
            .state
            .as_ref()
            .and_then(|s| s.running.as_ref())
            .is_some());
        assert!(status_matches(Some(&s), &s));
    }

    #[test]
    fn an_unready_pod_says_which_containers_are_unready() {
        let p = pod(&[]);
        let s = pod_status(
            &p,
            Observed {
                started: at(0),
                ready: false,
                ready_changed: at(0),
            },
        );
        let ready = s
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready")
            .expect("Ready");
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason.as_deref(), Some("ContainersNotReady"));
        assert_eq!(
            ready.message.as_deref(),
            Some("containers with unready status: [main sidecar]")
        );
        let ready_now = pod_status(
            &p,
            Observed {
                started: at(0),
                ready: true,
                ready_changed: at(3),
            },
        );
        assert!(!status_matches(Some(&s), &ready_now));
        assert!(!status_matches(None, &s));
    }

    #[test]
    fn the_body_is_the_first_containers_tag() {
        assert_eq!(body_of(&pod(&[])), "v2");
        let mut p = pod(&[]);
        p.metadata.annotations = Some([(PORT_ANNOTATION.to_owned(), "4242".to_owned())].into());
        assert_eq!(port_of(&p.metadata), Some(4242));
    }
}
