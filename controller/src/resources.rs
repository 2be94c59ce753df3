//! The objects a release creates, built from the stable ones. Pure: the planner puts them in
//! its plan and the I/O layer applies them with server-side apply.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec},
        core::v1::{Service, ServiceSpec},
        networking::v1::{HTTPIngressRuleValue, Ingress, IngressRule, IngressSpec},
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kube::{Resource, ResourceExt};

use crate::{
    crd::Rollout,
    keys::{
        CANARY_ANNOTATION_PREFIXES, CANARY_DEPLOYMENT_LABEL, HIGRESS_CANARY,
        HIGRESS_CANARY_BY_HEADER, HIGRESS_CANARY_BY_HEADER_VALUE, MANAGED_BY, POD_TEMPLATE_HASH,
        REVISION_ANNOTATION, ROLLOUT_LABEL,
    },
    validate::Release,
};

const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Annotations that describe the stable object itself and must not be copied.
const NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    "deployment.kubernetes.io/revision",
];

/// Metadata of an object owned by the Rollout.
fn owned_meta(rollout: &Rollout, release: &Release, name: &str) -> ObjectMeta {
    let owner: Option<OwnerReference> = rollout.controller_owner_ref(&());
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(release.names.namespace.clone()),
        labels: Some(BTreeMap::from([
            (ROLLOUT_LABEL.to_owned(), rollout.name_any()),
            (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
        ])),
        owner_references: owner.map(|o| vec![o]),
        ..Default::default()
    }
}

/// The canary Deployment: the stable Deployment's spec with `replicas` canary pods, unpaused,
/// the template extended by `patchPodTemplateMetadata`. Same selector as the stable one: the
/// Services tell the two apart by `pod-template-hash`.
pub fn canary_deployment(
    rollout: &Rollout,
    release: &Release,
    stable: &Deployment,
    revision: &str,
    replicas: i32,
) -> Deployment {
    let mut meta = owned_meta(rollout, release, &release.canary_deployment);
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    for (k, v) in stable.labels() {
        labels.entry(k.clone()).or_insert_with(|| v.clone());
    }
    labels.insert(CANARY_DEPLOYMENT_LABEL.to_owned(), stable.name_any());
    meta.annotations = Some(BTreeMap::from([(
        REVISION_ANNOTATION.to_owned(),
        revision.to_owned(),
    )]));

    let stable_spec = stable.spec.clone();
    let mut template = stable_spec.template.clone();
    if let Some(patch) = &release.patch_pod_template_metadata {
        let m = template.metadata.get_or_insert_with(Default::default);
        m.labels
            .get_or_insert_with(BTreeMap::new)
            .extend(patch.labels.clone());
        m.annotations
            .get_or_insert_with(BTreeMap::new)
            .extend(patch.annotations.clone());
    }
    Deployment {
        metadata: meta,
        spec: DeploymentSpec {
            replicas: Some(replicas),
            paused: Some(false),
            template,
            ..stable_spec
        },
        status: None,
    }
}

/// The canary Service: the stable Service's ports, selecting the canary pods by
/// `pod-template-hash`. Cluster IPs and node ports are left for the API server to assign.
pub fn canary_service(
    rollout: &Rollout,
    release: &Release,
    stable: &Service,
    pod_template_hash: &str,
) -> Service {
    let stable_spec = stable.spec.clone().unwrap_or_default();
    let mut selector = stable_spec.selector.clone().unwrap_or_default();
    selector.insert(POD_TEMPLATE_HASH.to_owned(), pod_template_hash.to_owned());
    let ports = stable_spec.ports.map(|ports| {
        ports
            .into_iter()
            .map(|mut p| {
                p.node_port = None;
                p
            })
            .collect()
    });
    Service {
        metadata: owned_meta(rollout, release, &release.canary_service),
        spec: Some(ServiceSpec {
            ports,
            selector: Some(selector),
            type_: match stable_spec.type_.as_deref() {
                // A canary needs no external exposure of its own.
                Some("NodePort") | Some("LoadBalancer") => Some("ClusterIP".to_owned()),
                other => other.map(str::to_owned),
            },
            session_affinity: stable_spec.session_affinity,
            session_affinity_config: stable_spec.session_affinity_config,
            publish_not_ready_addresses: stable_spec.publish_not_ready_addresses,
            ..Default::default()
        }),
        status: None,
    }
}

/// The canary Ingress Higress turns into a header route inserted before the stable route:
/// the stable Ingress's paths that lead to the stable Service, now leading to the canary
/// Service, taken only by requests carrying `<tagHeader>: <tagValue>` (which the plugin sets).
pub fn canary_ingress(rollout: &Rollout, release: &Release, stable: &Ingress) -> Ingress {
    let mut meta = owned_meta(rollout, release, &release.canary_ingress);
    meta.annotations = Some(canary_ingress_annotations(release, stable));
    let stable_spec = stable.spec.clone().unwrap_or_default();
    let rules = stable_spec.rules.as_ref().map(|rules| {
        rules
            .iter()
            .filter_map(|rule| {
                let http = rule.http.as_ref()?;
                let paths: Vec<_> = http
                    .paths
                    .iter()
                    .filter(|p| backend_service(p) == Some(&release.service))
                    .cloned()
                    .map(|mut p| {
                        if let Some(svc) = p.backend.service.as_mut() {
                            svc.name = release.canary_service.clone();
                        }
                        p
                    })
                    .collect();
                (!paths.is_empty()).then(|| IngressRule {
                    host: rule.host.clone(),
                    http: Some(HTTPIngressRuleValue { paths }),
                })
            })
            .collect()
    });
    Ingress {
        metadata: meta,
        spec: Some(IngressSpec {
            ingress_class_name: stable_spec.ingress_class_name.clone(),
            tls: stable_spec.tls.clone(),
            rules,
            default_backend: None,
        }),
        status: None,
    }
}

/// The stable Ingress's annotations (they carry its class and Higress policies) without any
/// canary keys, plus the header-canary annotations.
pub fn canary_ingress_annotations(release: &Release, stable: &Ingress) -> BTreeMap<String, String> {
    let mut annotations: BTreeMap<String, String> = stable
        .annotations()
        .iter()
        .filter(|(k, _)| !NOT_COPIED.contains(&k.as_str()))
        .filter(|(k, _)| {
            !CANARY_ANNOTATION_PREFIXES.iter().any(|p| {
                k.strip_prefix(p)
                    .is_some_and(|rest| rest.starts_with("canary"))
            })
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    annotations.insert(HIGRESS_CANARY.to_owned(), "true".to_owned());
    annotations.insert(
        HIGRESS_CANARY_BY_HEADER.to_owned(),
        release.tag_header.clone(),
    );
    annotations.insert(
        HIGRESS_CANARY_BY_HEADER_VALUE.to_owned(),
        release.tag_value.clone(),
    );
    annotations
}

/// Whether any path of the Ingress leads to the Service.
pub fn ingress_routes_to(ingress: &Ingress, service: &str) -> bool {
    ingress
        .spec
        .iter()
        .flat_map(|s| s.rules.iter().flatten())
        .flat_map(|r| r.http.iter().flat_map(|h| h.paths.iter()))
        .any(|p| backend_service(p).is_some_and(|s| s == service))
}

fn backend_service(path: &k8s_openapi::api::networking::v1::HTTPIngressPath) -> Option<&String> {
    path.backend.service.as_ref().map(|s| &s.name)
}
