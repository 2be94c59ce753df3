//! The endpoints controller, as a pure function: the core/v1 Endpoints a Service with a
//! selector should have, given the pods in its namespace.
//!
//! Every simulated pod has the IP 127.0.0.1 and its own server port, so each pod gets its
//! own subset (what `RepackSubsets` makes of addresses whose ports differ): ready pods in
//! `addresses`, unready ones in `notReadyAddresses` (unless `publishNotReadyAddresses`),
//! each Service port mapped to the pod's server port. Terminating and terminal pods, and
//! pods whose server has no port yet, are left out. Subsets are ordered by pod name.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{
        EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use super::{
    kubelet::port_of,
    replicaset::{is_pod_ready, is_pod_terminal},
    util::map_selector_matches,
};

/// Label the endpoints controller puts on Endpoints of headless Services.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

/// The Endpoints for `svc`, or `None` when the Service has no selector (its Endpoints are
/// managed by hand) or is an ExternalName Service.
pub fn desired(svc: &Service, pods: &[Pod]) -> Option<Endpoints> {
    let spec = svc.spec.as_ref()?;
    let selector = spec.selector.as_ref().filter(|s| !s.is_empty())?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let namespace = svc.metadata.namespace.as_deref().unwrap_or("default");
    let headless = spec.cluster_ip.as_deref() == Some("None");
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
    let service_ports = spec.ports.as_deref().unwrap_or_default();
    let empty = BTreeMap::new();

    let mut pods: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.metadata.namespace.as_deref().unwrap_or("default") == namespace)
        .filter(|p| map_selector_matches(selector, p.metadata.labels.as_ref().unwrap_or(&empty)))
        .filter(|p| !is_pod_terminal(p) && p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some())
        .collect();
    pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));

    let mut subsets = Vec::new();
    for pod in pods {
        let Some(port) = port_of(&pod.metadata) else {
            continue;
        };
        let ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_default();
        let address = EndpointAddress {
            ip,
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                namespace: pod
                    .metadata
                    .namespace
                    .clone()
                    .or_else(|| Some(namespace.into())),
                uid: pod.metadata.uid.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let ports: Vec<EndpointPort> = service_ports
            .iter()
            .map(|sp| EndpointPort {
                name: sp.name.clone(),
                port: i32::from(port),
                protocol: Some(sp.protocol.clone().unwrap_or_else(|| "TCP".into())),
                app_protocol: sp.app_protocol.clone(),
            })
            .collect();
        if ports.is_empty() && !headless {
            continue;
        }
        let ready = is_pod_ready(pod) || publish_not_ready;
        subsets.push(EndpointSubset {
            addresses: ready.then(|| vec![address.clone()]),
            not_ready_addresses: (!ready).then(|| vec![address]),
            ports: (!ports.is_empty()).then_some(ports),
        });
    }

    let mut labels = svc.metadata.labels.clone().unwrap_or_default();
    if headless {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    } else {
        labels.remove(HEADLESS_LABEL);
    }
    Some(Endpoints {
        metadata: ObjectMeta {
            name: svc.metadata.name.clone(),
            namespace: Some(namespace.into()),
            labels: (!labels.is_empty()).then_some(labels),
            ..Default::default()
        },
        subsets: (!subsets.is_empty()).then_some(subsets),
    })
}

/// Whether `current` differs from `desired` in what the controller owns (subsets, labels).
pub fn differs(current: &Endpoints, desired: &Endpoints) -> bool {
    let subsets = |e: &Endpoints| e.subsets.clone().filter(|s| !s.is_empty());
    let labels = |e: &Endpoints| e.metadata.labels.clone().filter(|l| !l.is_empty());
    subsets(current) != subsets(desired) || labels(current) != labels(desired)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus, ServicePort, ServiceSpec};

    fn svc(ports: Vec<ServicePort>) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("demo".into()),
                namespace: Some("default".into()),
                labels: Some([("team".to_owned(), "a".to_owned())].into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                selector: Some([("app".to_owned(), "demo".to_owned())].into()),
                ports: Some(ports),
                cluster_ip: Some("10.96.0.10".into()),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn http_port() -> ServicePort {
        ServicePort {
            name: Some("http".into()),
            port: 80,
            ..Default::default()
        }
    }

    fn pod(name: &str, app: &str, port: Option<u16>, ready: bool) -> Pod {
        let mut annotations = BTreeMap::new();
        if let Some(p) = port {
            annotations.insert(super::super::PORT_ANNOTATION.to_owned(), p.to_string());
        }
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(format!("{name}-uid")),
                labels: Some([("app".to_owned(), app.to_owned())].into()),
                annotations: Some(annotations),
                ..Default::default()
            },
            spec: None,
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ip: Some("127.0.0.1".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn each_matching_pod_gets_a_subset_with_its_server_port() {
        let pods = [
            pod("demo-b", "demo", Some(40002), true),
            pod("demo-a", "demo", Some(40001), true),
            pod("other", "other", Some(40003), true),
            pod("demo-c", "demo", None, true),
        ];
        let eps = desired(&svc(vec![http_port()]), &pods).expect("endpoints");
        assert_eq!(eps.metadata.name.as_deref(), Some("demo"));
        assert_eq!(
            eps.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("team"))
                .map(String::as_str),
            Some("a")
        );
        let subsets = eps.subsets.expect("subsets");
        assert_eq!(subsets.len(), 2);
        let first = &subsets[0];
        let addr = &first.addresses.as_ref().expect("addresses")[0];
        assert_eq!(addr.ip, "127.0.0.1");
        let target = addr.target_ref.as_ref().expect("targetRef");
        assert_eq!(target.kind.as_deref(), Some("Pod"));
        assert_eq!(target.name.as_deref(), Some("demo-a"));
        assert_eq!(target.namespace.as_deref(), Some("default"));
        assert_eq!(target.uid.as_deref(), Some("demo-a-uid"));
        assert_eq!(
            first.ports.as_deref(),
            Some(
                &[EndpointPort {
                    name: Some("http".into()),
                    port: 40001,
                    protocol: Some("TCP".into()),
                    app_protocol: None
                }][..]
            )
        );
        assert_eq!(subsets[1].ports.as_ref().map(|p| p[0].port), Some(40002));
    }

    #[test]
    fn unready_pods_are_listed_as_not_ready_and_terminating_pods_not_at_all() {
        let mut going = pod("going", "demo", Some(40003), true);
        going.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH),
        );
        let pods = [
            pod("ready", "demo", Some(40001), true),
            pod("warming", "demo", Some(40002), false),
            going,
        ];
        let subsets = desired(&svc(vec![http_port()]), &pods)
            .and_then(|e| e.subsets)
            .expect("subsets");
        assert_eq!(subsets.len(), 2);
        assert!(subsets[0].addresses.is_some() && subsets[0].not_ready_addresses.is_none());
        assert!(subsets[1].addresses.is_none() && subsets[1].not_ready_addresses.is_some());
        let mut publish = svc(vec![http_port()]);
        if let Some(spec) = publish.spec.as_mut() {
            spec.publish_not_ready_addresses = Some(true);
        }
        let subsets = desired(&publish, &pods)
            .and_then(|e| e.subsets)
            .expect("subsets");
        assert!(subsets.iter().all(|s| s.addresses.is_some()));
    }

    #[test]
    fn services_without_selectors_are_left_alone_and_empty_ones_get_no_subsets() {
        let mut manual = svc(vec![http_port()]);
        if let Some(spec) = manual.spec.as_mut() {
            spec.selector = None;
        }
        assert_eq!(desired(&manual, &[]), None);
        let eps = desired(&svc(vec![http_port()]), &[]).expect("endpoints");
        assert_eq!(eps.subsets, None);
    }

    #[test]
    fn every_service_port_maps_to_the_pod_server() {
        let ports = vec![
            http_port(),
            ServicePort {
                name: Some("admin".into()),
                port: 9000,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        ];
        let pods = [pod("demo-a", "demo", Some(40001), true)];
        let subsets = desired(&svc(ports), &pods)
            .and_then(|e| e.subsets)
            .expect("subsets");
        let ports: Vec<(Option<&str>, i32)> = subsets[0]
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.as_deref(), p.port))
            .collect();
        assert_eq!(ports, [(Some("http"), 40001), (Some("admin"), 40001)]);
    }

    #[test]
    fn differences_in_subsets_or_labels_need_a_write() {
        let pods = [pod("demo-a", "demo", Some(40001), true)];
        let a = desired(&svc(vec![http_port()]), &pods).expect("endpoints");
        let mut stored = a.clone();
        stored.metadata.resource_version = Some("42".into());
        assert!(!differs(&stored, &a));
        let b = desired(&svc(vec![http_port()]), &[]).expect("endpoints");
        assert!(differs(&stored, &b));
    }
}
