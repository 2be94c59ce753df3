//! Patches: JSON merge patch (RFC 7386), JSON patch (RFC 6902), and the subset of strategic
//! merge patch that kubectl sends (merge keys, `$patch: delete|replace`, `$setElementOrder`,
//! `$deleteFromPrimitiveList`, `$retainKeys`, `null` deletions). Also the list semantics that
//! server-side apply shares with SMP: which lists merge by key and which are atomic.

use serde_json::{Map, Value};

use super::registry::ResourceType;

/// How a list field merges.
#[derive(Debug, Clone, PartialEq)]
pub enum ListKind {
    /// Replaced wholesale.
    Atomic,
    /// Items are maps merged by these key fields.
    Map(Vec<String>),
    /// Items are scalars merged as a set (e.g. `metadata.finalizers`).
    Set,
}

/// List semantics for a resource type, looked up by the path of field names (list positions
/// are not part of the path: `spec.template.spec.containers.ports`).
pub fn list_kind(rt: &ResourceType, path: &[String]) -> ListKind {
    let p: Vec<&str> = path.iter().map(String::as_str).collect();
    // Metadata is the same for every kind.
    match p.as_slice() {
        ["metadata", "finalizers"] => return ListKind::Set,
        ["metadata", "ownerReferences"] => return ListKind::Map(vec!["uid".into()]),
        _ => {}
    }
    match rt.schema() {
        Some(schema) => schema_list_kind(schema, &p),
        None if rt.is_custom() => ListKind::Atomic,
        None => builtin_list_kind(&rt.kind, &p),
    }
}

fn key(k: &str) -> ListKind {
    ListKind::Map(vec![k.to_string()])
}

/// The patch merge keys of the built-in Go types this server models.
fn builtin_list_kind(kind: &str, p: &[&str]) -> ListKind {
    const CONTAINER_LISTS: [&str; 3] = ["containers", "initContainers", "ephemeralContainers"];
    let Some((last, parents)) = p.split_last() else {
        return ListKind::Atomic;
    };
    let parent = parents.last().copied().unwrap_or_default();
    match *last {
        l if CONTAINER_LISTS.contains(&l) => key("name"),
        "volumes" | "imagePullSecrets" | "resourceClaims" | "schedulingGates" => key("name"),
        "env" if CONTAINER_LISTS.contains(&parent) => key("name"),
        "volumeMounts" => key("mountPath"),
        "volumeDevices" => key("devicePath"),
        "ports" if CONTAINER_LISTS.contains(&parent) => key("containerPort"),
        "ports" if kind == "Service" && p == ["spec", "ports"] => key("port"),
        "hostAliases" => key("ip"),
        "topologySpreadConstraints" => key("topologyKey"),
        "conditions" if p.first() == Some(&"status") => key("type"),
        "containerStatuses" | "initContainerStatuses" => key("name"),
        _ => ListKind::Atomic,
    }
}

/// CRD lists: atomic unless `x-kubernetes-list-type: map|set`.
fn schema_list_kind(schema: &Value, p: &[&str]) -> ListKind {
    let Some(node) = schema_at(schema, p) else {
        return ListKind::Atomic;
    };
    match node.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("map") => ListKind::Map(
            node.get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|ks| {
                    ks.iter()
                        .filter_map(|k| k.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
        ),
        Some("set") => ListKind::Set,
        _ => ListKind::Atomic,
    }
}

/// The schema node at a field path (list items are stepped through implicitly).
pub fn schema_at<'a>(schema: &'a Value, p: &[&str]) -> Option<&'a Value> {
    let mut cur = schema;
    for name in p {
        if let Some(items) = cur.get("items") {
            cur = items;
        }
        cur = cur
            .get("properties")
            .and_then(|props| props.get(*name))
            .or_else(|| cur.get("additionalProperties").filter(|a| a.is_object()))?;
    }
    Some(cur)
}

/// RFC 7386 merge patch.
pub fn merge(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// RFC 6902 JSON patch, all or nothing; the error text is the 422 message. Like the
/// apiserver's implementation, a `test` for `null` passes on a missing path (kube-runtime's
/// finalizer helper relies on that when an object has no finalizers yet).
pub fn json(target: &mut Value, patch: &Value) -> Result<(), String> {
    let ops: json_patch::Patch =
        serde_json::from_value(patch.clone()).map_err(|e| format!("invalid JSON patch: {e}"))?;
    let mut work = target.clone();
    for op in ops.0 {
        if let json_patch::PatchOperation::Test(t) = &op {
            if t.value.is_null() && work.pointer(t.path.as_str()).is_none_or(Value::is_null) {
                continue;
            }
        }
        json_patch::patch(&mut work, std::slice::from_ref(&op)).map_err(|e| e.to_string())?;
    }
    *target = work;
    Ok(())
}

/// Strategic merge patch for a built-in kind.
pub fn strategic(
    target: &mut Value,
    patch: &Value,
    kinds: &dyn Fn(&[String]) -> ListKind,
) -> Result<(), String> {
    let Value::Object(patch) = patch else {
        return Err("strategic merge patch must be a JSON object".to_string());
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target) = target else {
        unreachable!("invariant: target was just made an object")
    };
    smp_map(target, patch, &mut Vec::new(), kinds)
}

fn smp_map(
    target: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    path: &mut Vec<String>,
    kinds: &dyn Fn(&[String]) -> ListKind,
) -> Result<(), String> {
    if patch.get("$patch").and_then(Value::as_str) == Some("replace") {
        *target = strip(patch);
        return Ok(());
    }
    let mut orders: Vec<(String, Vec<Value>)> = Vec::new();
    for (k, v) in patch {
        if let Some(list) = k.strip_prefix("$setElementOrder/") {
            orders.push((list.to_string(), v.as_array().cloned().unwrap_or_default()));
            continue;
        }
        if let Some(list) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(items)), Some(remove)) = (target.get_mut(list), v.as_array())
            {
                items.retain(|i| !remove.contains(i));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        path.push(k.clone());
        match v {
            Value::Null => {
                target.remove(k);
            }
            Value::Object(pm) => {
                if pm.get("$patch").and_then(Value::as_str) == Some("delete") {
                    target.remove(k);
                } else if let Some(Value::Object(tm)) = target.get_mut(k) {
                    smp_map(tm, pm, path, kinds)?;
                } else {
                    target.insert(k.clone(), Value::Object(strip(pm)));
                }
            }
            Value::Array(items) => {
                let merged = match (kinds(path.as_slice()), target.remove(k)) {
                    (ListKind::Map(keys), Some(Value::Array(existing))) => {
                        smp_list(existing, items, &keys, path, kinds)?
                    }
                    (ListKind::Set, Some(Value::Array(mut existing))) => {
                        for i in items {
                            if !existing.contains(i) {
                                existing.push(i.clone());
                            }
                        }
                        existing
                    }
                    _ => items
                        .iter()
                        .filter(|i| i.get("$patch").is_none())
                        .map(strip_value)
                        .collect(),
                };
                target.insert(k.clone(), Value::Array(merged));
            }
            scalar => {
                target.insert(k.clone(), scalar.clone());
            }
        }
        path.pop();
    }
    if let Some(retain) = patch.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = retain.iter().filter_map(Value::as_str).collect();
        target.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (list, order) in orders {
        path.push(list.clone());
        if let (ListKind::Map(keys), Some(Value::Array(items))) =
            (kinds(path.as_slice()), target.get_mut(&list))
        {
            let pos = |item: &Value| {
                order
                    .iter()
                    .position(|o| keys.iter().all(|k| o.get(k) == item.get(k)))
                    .unwrap_or(usize::MAX)
            };
            items.sort_by_key(|i| pos(i));
        }
        path.pop();
    }
    Ok(())
}

fn same_key(a: &Value, b: &Value, keys: &[String]) -> bool {
    keys.iter().all(|k| a.get(k) == b.get(k))
}

fn smp_list(
    mut existing: Vec<Value>,
    items: &[Value],
    keys: &[String],
    path: &mut Vec<String>,
    kinds: &dyn Fn(&[String]) -> ListKind,
) -> Result<Vec<Value>, String> {
    if items
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        return Ok(items
            .iter()
            .filter(|i| i.get("$patch").is_none())
            .map(strip_value)
            .collect());
    }
    for item in items {
        let Value::Object(pm) = item else {
            if !existing.contains(item) {
                existing.push(item.clone());
            }
            continue;
        };
        if keys.iter().any(|k| !pm.contains_key(k)) {
            return Err(format!(
                "map: {item} does not contain declared merge key: {}",
                keys.join(",")
            ));
        }
        let found = existing.iter().position(|e| same_key(e, item, keys));
        if pm.get("$patch").and_then(Value::as_str) == Some("delete") {
            if let Some(i) = found {
                existing.remove(i);
            }
            continue;
        }
        match found {
            Some(i) => {
                if let Value::Object(em) = &mut existing[i] {
                    smp_map(em, pm, path, kinds)?;
                }
            }
            None => existing.push(Value::Object(strip(pm))),
        }
    }
    Ok(existing)
}

/// Removes SMP directives and `null`s from a value that is inserted as a whole.
fn strip(m: &Map<String, Value>) -> Map<String, Value> {
    m.iter()
        .filter(|(k, v)| !k.starts_with('$') && !v.is_null())
        .map(|(k, v)| (k.clone(), strip_value(v)))
        .collect()
}

fn strip_value(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(strip(m)),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .filter(|i| i.get("$patch").is_none())
                .map(strip_value)
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::registry::Registry;
    use serde_json::json;

    fn smp(kind_plural: &str, mut target: Value, patch: Value) -> Value {
        let reg = Registry::new();
        let rt = reg.find(kind_plural).unwrap().clone();
        strategic(&mut target, &patch, &|p| list_kind(&rt, p)).unwrap();
        target
    }

    #[test]
    fn set_image_keeps_the_containers_ports_and_defaults() {
        let live = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "web", "image": "nginx:1.26", "ports": [{"containerPort": 80, "protocol": "TCP"}],
             "imagePullPolicy": "IfNotPresent"},
            {"name": "side", "image": "busybox"}]}}}});
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "web"}, {"name": "side"}],
            "containers": [{"image": "nginx:1.27", "name": "web"}]}}}});
        let out = smp("deployments", live, patch);
        let c = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(c[0]["image"], "nginx:1.27");
        assert_eq!(c[0]["ports"][0]["containerPort"], 80);
        assert_eq!(c[0]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(c[1]["name"], "side");
    }

    #[test]
    fn delete_directives_and_nulls_remove_items_and_fields() {
        let live = json!({"metadata": {"labels": {"a": "1"}, "finalizers": ["x"]},
            "spec": {"replicas": 3, "template": {"spec": {"containers": [
                {"name": "web", "image": "a"}, {"name": "sidecar", "image": "b"}]}}}});
        let patch = json!({"metadata": {"labels": null, "finalizers": ["y"]},
            "spec": {"replicas": null, "template": {"spec": {"containers": [
                {"$patch": "delete", "name": "sidecar"}]}}}});
        let out = smp("deployments", live, patch);
        assert!(out["metadata"].get("labels").is_none());
        assert_eq!(out["metadata"]["finalizers"], json!(["x", "y"]));
        assert!(out["spec"].get("replicas").is_none());
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name": "web", "image": "a"}])
        );
    }

    #[test]
    fn service_ports_merge_by_port() {
        let live = json!({"spec": {"ports": [{"port": 80, "targetPort": 80, "name": "http"},
                                             {"port": 443, "name": "https"}]}});
        let patch = json!({"spec": {"$setElementOrder/ports": [{"port": 8080}, {"port": 443}],
            "ports": [{"port": 8080, "targetPort": 80}, {"$patch": "delete", "port": 80}]}});
        let out = smp("services", live, patch);
        assert_eq!(
            out["spec"]["ports"],
            json!([{"port": 8080, "targetPort": 80}, {"port": 443, "name": "https"}])
        );
    }

    #[test]
    fn ingress_rules_are_atomic() {
        let live = json!({"spec": {"rules": [{"host": "a"}, {"host": "b"}]}});
        let patch = json!({"spec": {"rules": [{"host": "c"}]}});
        let out = smp("ingresses", live, patch);
        assert_eq!(out["spec"]["rules"], json!([{"host": "c"}]));
    }

    #[test]
    fn merge_patch_replaces_arrays_and_keeps_stale_keys() {
        let mut v = json!({"spec": {"defaultConfig": {"a": 1, "b": 2}, "list": [1, 2]}});
        merge(
            &mut v,
            &json!({"spec": {"defaultConfig": {"a": 3}, "list": [3]}}),
        );
        assert_eq!(
            v,
            json!({"spec": {"defaultConfig": {"a": 3, "b": 2}, "list": [3]}})
        );
    }

    #[test]
    fn a_test_for_null_passes_on_a_missing_path() {
        let mut v = json!({"metadata": {}});
        json(
            &mut v,
            &json!([{"op": "test", "path": "/metadata/finalizers", "value": null},
                    {"op": "add", "path": "/metadata/finalizers", "value": ["a"]}]),
        )
        .unwrap();
        assert_eq!(v, json!({"metadata": {"finalizers": ["a"]}}));
    }

    #[test]
    fn a_failed_json_patch_test_is_an_error() {
        let mut v = json!({"metadata": {"finalizers": ["a"]}});
        let err = json(
            &mut v,
            &json!([{"op": "test", "path": "/metadata/finalizers/0", "value": "b"}]),
        );
        assert!(err.is_err());
        json(
            &mut v,
            &json!([{"op": "test", "path": "/metadata/finalizers/0", "value": "a"},
                    {"op": "remove", "path": "/metadata/finalizers/0"}]),
        )
        .unwrap();
        assert_eq!(v, json!({"metadata": {"finalizers": []}}));
    }
}
