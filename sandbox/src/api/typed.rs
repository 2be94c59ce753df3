//! Decoding of built-in kinds through their k8s-openapi types, as the apiserver decodes
//! into Go structs: fields the type does not have are dropped (and reported, for
//! `fieldValidation`), and values of the wrong type are a 400 `BadRequest`.

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, ReplicaSet},
        coordination::v1::Lease,
        core::v1::{ConfigMap, Endpoints, Event, Namespace, Pod, Secret, Service, ServiceAccount},
        networking::v1::Ingress,
        policy::v1::PodDisruptionBudget,
        rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;

use super::registry::ResourceType;

/// What decoding found.
pub enum Decoded {
    /// The kind has no typed model here; nothing was checked.
    Unmodelled,
    /// Paths of the fields the type does not know (`spec.template.spec.containers[0].x`).
    Unknown(Vec<String>),
    /// A value of the wrong type: the decoder's message.
    WrongType(String),
}

fn roundtrip<K: DeserializeOwned + Serialize>(obj: &Value) -> Decoded {
    // Through bytes, like kube's own (de)serialization, so the code is shared with it.
    let bytes = match serde_json::to_vec(obj) {
        Ok(b) => b,
        Err(e) => return Decoded::WrongType(e.to_string()),
    };
    let typed: K = match serde_json::from_slice(&bytes) {
        Ok(t) => t,
        // Missing required fields are left to validation (Go decodes them as zero values).
        Err(e) if e.to_string().starts_with("missing field") => return Decoded::Unmodelled,
        Err(e) => return Decoded::WrongType(e.to_string()),
    };
    let back: Value = match serde_json::to_vec(&typed).map(|b| serde_json::from_slice(&b)) {
        Ok(Ok(v)) => v,
        _ => return Decoded::Unmodelled,
    };
    let mut unknown = Vec::new();
    diff(obj, &back, "", &mut unknown);
    Decoded::Unknown(unknown)
}

fn diff(input: &Value, known: &Value, path: &str, out: &mut Vec<String>) {
    match (input, known) {
        (Value::Object(i), Value::Object(k)) => {
            for (key, v) in i {
                let p = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match k.get(key) {
                    Some(kv) => diff(v, kv, &p, out),
                    None if v.is_null() => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Array(i), Value::Array(k)) if i.len() == k.len() => {
            for (n, (iv, kv)) in i.iter().zip(k).enumerate() {
                diff(iv, kv, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

/// Decodes `obj` as its built-in type.
pub fn decode(rt: &ResourceType, obj: &Value) -> Decoded {
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("apps", "Deployment") => roundtrip::<Deployment>(obj),
        ("apps", "ReplicaSet") => roundtrip::<ReplicaSet>(obj),
        ("", "Pod") => roundtrip::<Pod>(obj),
        ("", "Service") => roundtrip::<Service>(obj),
        ("", "Endpoints") => roundtrip::<Endpoints>(obj),
        ("", "Namespace") => roundtrip::<Namespace>(obj),
        ("", "ConfigMap") => roundtrip::<ConfigMap>(obj),
        ("", "Secret") => roundtrip::<Secret>(obj),
        ("", "ServiceAccount") => roundtrip::<ServiceAccount>(obj),
        ("", "Event") => roundtrip::<Event>(obj),
        ("events.k8s.io", "Event") => roundtrip::<k8s_openapi::api::events::v1::Event>(obj),
        ("networking.k8s.io", "Ingress") => roundtrip::<Ingress>(obj),
        ("coordination.k8s.io", "Lease") => roundtrip::<Lease>(obj),
        ("rbac.authorization.k8s.io", "ClusterRole") => roundtrip::<ClusterRole>(obj),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => roundtrip::<ClusterRoleBinding>(obj),
        ("rbac.authorization.k8s.io", "Role") => roundtrip::<Role>(obj),
        ("rbac.authorization.k8s.io", "RoleBinding") => roundtrip::<RoleBinding>(obj),
        ("policy", "PodDisruptionBudget") => roundtrip::<PodDisruptionBudget>(obj),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            roundtrip::<CustomResourceDefinition>(obj)
        }
        _ => Decoded::Unmodelled,
    }
}

/// Removes the fields at `paths` (as reported by [`decode`]).
pub fn remove_paths(obj: &mut Value, paths: &[String]) {
    for path in paths {
        remove_path(obj, &split(path));
    }
}

fn remove_path(obj: &mut Value, parts: &[Part<'_>]) {
    match parts {
        [] => {}
        [Part::Key(k)] => {
            if let Some(m) = obj.as_object_mut() {
                m.remove(*k);
            }
        }
        [Part::Index(_)] => {}
        [first, rest @ ..] => {
            let next = match first {
                Part::Key(k) => obj.get_mut(*k),
                Part::Index(i) => obj.get_mut(*i),
            };
            if let Some(n) = next {
                remove_path(n, rest);
            }
        }
    }
}

enum Part<'a> {
    Key(&'a str),
    Index(usize),
}

/// `a.b[0].c` → `a`, `b`, `0`, `c`.
fn split(path: &str) -> Vec<Part<'_>> {
    let mut parts = Vec::new();
    for seg in path.split('.') {
        let mut rest = seg;
        let key_end = rest.find('[').unwrap_or(rest.len());
        parts.push(Part::Key(&rest[..key_end]));
        rest = &rest[key_end..];
        while let Some(stripped) = rest.strip_prefix('[') {
            let close = stripped.find(']').unwrap_or(stripped.len());
            if let Ok(i) = stripped[..close].parse() {
                parts.push(Part::Index(i));
            }
            rest = stripped.get(close + 1..).unwrap_or_default();
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::registry::Registry;
    use serde_json::json;

    #[test]
    fn unknown_fields_of_built_ins_are_found_and_removed() {
        let rt = Registry::new().find("deployments").unwrap().clone();
        let mut d = json!({"metadata": {"name": "web", "labels": {"a": "b"}, "bogus": 1},
            "spec": {"selector": {"matchLabels": {"a": "b"}}, "replicas": 2,
                "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [
                    {"name": "c", "image": "i", "imagePullPolicyy": "Always", "env": null}]}}}});
        let Decoded::Unknown(paths) = decode(&rt, &d) else {
            panic!("decodes");
        };
        assert_eq!(
            paths,
            [
                "metadata.bogus",
                "spec.template.spec.containers[0].imagePullPolicyy"
            ]
        );
        remove_paths(&mut d, &paths);
        assert!(d["metadata"].get("bogus").is_none());
        assert!(d["spec"]["template"]["spec"]["containers"][0]
            .get("imagePullPolicyy")
            .is_none());
        assert_eq!(d["spec"]["replicas"], 2);
    }

    #[test]
    fn a_value_of_the_wrong_type_is_reported() {
        let rt = Registry::new().find("deployments").unwrap().clone();
        let d = json!({"metadata": {"name": "web"}, "spec": {"replicas": "two",
            "selector": {}, "template": {}}});
        assert!(matches!(decode(&rt, &d), Decoded::WrongType(_)));
    }
}
