//! Defaulting and validation of the built-in kinds, as the apiserver's Go types do it (the
//! subset a canary controller meets): Deployment, ReplicaSet, Pod (templates), Service,
//! Ingress, Namespace, plus object metadata for every kind.

use serde_json::{json, Map, Value};

use super::{errors::FieldError, registry::ResourceType, selectors};

fn obj_mut<'a>(v: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
    let m = v
        .as_object_mut()
        .expect("invariant: defaulting walks objects");
    let entry = m
        .entry(key.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(Map::new());
    }
    entry
        .as_object_mut()
        .expect("invariant: just made an object")
}

fn set_default(m: &mut Map<String, Value>, key: &str, value: Value) {
    if m.get(key).is_none_or(Value::is_null) {
        m.insert(key.to_string(), value);
    }
}

/// Applies the built-in defaults for `rt` to a full object.
pub fn apply(rt: &ResourceType, obj: &mut Value) {
    if !obj.is_object() {
        return;
    }
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("apps", "Deployment") => deployment(obj),
        ("apps", "ReplicaSet") => {
            let spec = obj_mut(obj, "spec");
            set_default(spec, "replicas", json!(1));
            if let Some(t) = spec.get_mut("template") {
                pod_template(t);
            }
        }
        ("", "Pod") => {
            let spec = obj_mut(obj, "spec");
            pod_spec(spec);
            set_default(spec, "enableServiceLinks", json!(true));
            set_default(spec, "priority", json!(0));
            set_default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
            set_default(spec, "serviceAccountName", json!("default"));
        }
        ("", "Service") => service(obj),
        ("", "Namespace") => {
            let name = obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let meta = obj_mut(obj, "metadata");
            let labels = meta.entry("labels").or_insert_with(|| json!({}));
            if let Some(labels) = labels.as_object_mut() {
                labels.insert("kubernetes.io/metadata.name".into(), json!(name));
            }
            let spec = obj_mut(obj, "spec");
            set_default(spec, "finalizers", json!(["kubernetes"]));
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            let spec = obj_mut(obj, "spec");
            set_default(spec, "conversion", json!({"strategy": "None"}));
            if let Some(names) = spec.get_mut("names").and_then(Value::as_object_mut) {
                if let Some(kind) = names.get("kind").and_then(Value::as_str) {
                    let (singular, list) = (kind.to_lowercase(), format!("{kind}List"));
                    set_default(names, "singular", json!(singular));
                    set_default(names, "listKind", json!(list));
                }
            }
        }
        _ => {}
    }
}

fn deployment(obj: &mut Value) {
    let spec = obj_mut(obj, "spec");
    set_default(spec, "replicas", json!(1));
    set_default(spec, "revisionHistoryLimit", json!(10));
    set_default(spec, "progressDeadlineSeconds", json!(600));
    let strategy = spec
        .entry("strategy")
        .or_insert_with(|| json!({}))
        .as_object_mut();
    if let Some(strategy) = strategy {
        set_default(strategy, "type", json!("RollingUpdate"));
        if strategy.get("type") == Some(&json!("RollingUpdate")) {
            let ru = strategy.entry("rollingUpdate").or_insert_with(|| json!({}));
            if let Some(ru) = ru.as_object_mut() {
                set_default(ru, "maxSurge", json!("25%"));
                set_default(ru, "maxUnavailable", json!("25%"));
            }
        }
    }
    if let Some(t) = spec.get_mut("template") {
        pod_template(t);
    }
}

fn pod_template(t: &mut Value) {
    if let Some(tm) = t.as_object_mut() {
        let spec = tm.entry("spec").or_insert_with(|| json!({}));
        if let Some(spec) = spec.as_object_mut() {
            pod_spec(spec);
        }
    }
}

fn pod_spec(spec: &mut Map<String, Value>) {
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "securityContext", json!({}));
    for list in ["containers", "initContainers"] {
        if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                container(c);
            }
        }
    }
}

fn container(c: &mut Map<String, Value>) {
    let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
    let policy = image_pull_policy(image);
    set_default(c, "imagePullPolicy", json!(policy));
    set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(c, "terminationMessagePolicy", json!("File"));
    set_default(c, "resources", json!({}));
    if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            set_default(p, "protocol", json!("TCP"));
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get_mut(probe).and_then(Value::as_object_mut) {
            set_default(p, "timeoutSeconds", json!(1));
            set_default(p, "periodSeconds", json!(10));
            set_default(p, "successThreshold", json!(1));
            set_default(p, "failureThreshold", json!(3));
        }
    }
}

/// `Always` for `:latest` or no tag, else `IfNotPresent` (digests count as tagged).
pub fn image_pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn service(obj: &mut Value) {
    let spec = obj_mut(obj, "spec");
    set_default(spec, "type", json!("ClusterIP"));
    set_default(spec, "sessionAffinity", json!("None"));
    let ty = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    if ty != "ExternalName" {
        set_default(spec, "ipFamilies", json!(["IPv4"]));
        set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
        set_default(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    if ty == "NodePort" || ty == "LoadBalancer" {
        set_default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if ty == "LoadBalancer" {
        set_default(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            set_default(p, "protocol", json!("TCP"));
            if let Some(port) = p.get("port").cloned() {
                set_default(p, "targetPort", port);
            }
        }
    }
}

/// What `status` a kind with a status subresource starts with on create.
pub fn initial_status(rt: &ResourceType) -> Option<Value> {
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "Pod") => Some(json!({"phase": "Pending", "qosClass": "BestEffort"})),
        ("", "Service") => Some(json!({"loadBalancer": {}})),
        ("", "Namespace") => Some(json!({"phase": "Active"})),
        ("networking.k8s.io", "Ingress") => Some(json!({"loadBalancer": {}})),
        ("apps", _) => Some(json!({})),
        _ => None,
    }
}

/// `creationTimestamp` style timestamps.
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or_else(|_| jiff::Timestamp::now())
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

// === validation ===

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn is_label_value(s: &str) -> bool {
    s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && (s.is_empty()
            || (s.starts_with(|c: char| c.is_ascii_alphanumeric())
                && s.ends_with(|c: char| c.is_ascii_alphanumeric())))
}

fn is_qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    prefix.is_none_or(is_dns_subdomain) && !name.is_empty() && is_label_value(name)
}

/// Metadata checks every kind gets: name format, label keys and values.
pub fn validate_metadata(rt: &ResourceType, obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let label_like = matches!(
        (rt.group.as_str(), rt.kind.as_str()),
        ("", "Namespace") | ("", "Service")
    );
    let ok = if label_like {
        is_dns_label(name) && name.starts_with(|c: char| c.is_ascii_lowercase())
    } else if rt.kind == "Event" {
        !name.is_empty()
    } else {
        is_dns_subdomain(name)
    };
    if !ok {
        let detail = if label_like {
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or \
             '-', and must start and end with an alphanumeric character"
        } else {
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, \
             '-' or '.', and must start and end with an alphanumeric character"
        };
        errs.push(FieldError::invalid("metadata.name", &json!(name), detail));
    }
    if let Some(labels) = obj.pointer("/metadata/labels").and_then(Value::as_object) {
        for (k, v) in labels {
            if !is_qualified_name(k) {
                errs.push(FieldError::invalid(
                    "metadata.labels",
                    &json!(k),
                    "name part must consist of alphanumeric characters, '-', '_' or '.'",
                ));
            }
            match v.as_str() {
                Some(s) if is_label_value(s) => {}
                _ => errs.push(FieldError::invalid(
                    format!("metadata.labels.{k}"),
                    v,
                    "a valid label must be an empty string or consist of alphanumeric \
                     characters, '-', '_' or '.', and must start and end with an alphanumeric \
                     character",
                )),
            }
        }
    }
    errs
}

/// Type-specific validation; `old` is the stored object on updates.
pub fn validate(rt: &ResourceType, obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = validate_metadata(rt, obj);
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("apps", "Deployment") | ("apps", "ReplicaSet") => {
            workload(rt, obj, old, &mut errs);
        }
        ("", "Pod") => {
            if let Some(spec) = obj.get("spec") {
                pod_spec_errors(spec, "spec", &mut errs);
            } else {
                errs.push(FieldError::required("spec.containers", ""));
            }
        }
        ("", "Service") => service_errors(obj, old, &mut errs),
        ("networking.k8s.io", "Ingress") => ingress_errors(obj, &mut errs),
        _ => {}
    }
    errs
}

fn workload(rt: &ResourceType, obj: &Value, old: Option<&Value>, errs: &mut Vec<FieldError>) {
    let spec = obj.get("spec").cloned().unwrap_or(json!({}));
    match spec.get("selector") {
        None | Some(Value::Null) => errs.push(FieldError::required("spec.selector", "")),
        Some(sel) => {
            let empty = sel
                .get("matchLabels")
                .and_then(Value::as_object)
                .is_none_or(Map::is_empty)
                && sel
                    .get("matchExpressions")
                    .and_then(Value::as_array)
                    .is_none_or(Vec::is_empty);
            if empty {
                errs.push(FieldError::invalid(
                    "spec.selector",
                    sel,
                    "empty selector is invalid for deployment",
                ));
            }
            let labels = selectors::labels_of(spec.get("template").unwrap_or(&Value::Null));
            if !empty && !selectors::selector_object_matches(sel, &labels) {
                errs.push(FieldError::invalid(
                    "spec.template.metadata.labels",
                    &json!(labels),
                    "`selector` does not match template `labels`",
                ));
            }
            if let Some(old_sel) = old.and_then(|o| o.pointer("/spec/selector")) {
                if old_sel != sel {
                    errs.push(FieldError::invalid(
                        "spec.selector",
                        sel,
                        "field is immutable",
                    ));
                }
            }
        }
    }
    if let Some(r) = spec.get("replicas") {
        if r.as_i64().is_none_or(|r| r < 0) {
            errs.push(FieldError::invalid(
                "spec.replicas",
                r,
                "must be greater than or equal to 0",
            ));
        }
    }
    if rt.kind == "Deployment" {
        let strategy = spec.get("strategy");
        let ty = strategy.and_then(|s| s.get("type")).and_then(Value::as_str);
        match ty {
            Some("Recreate") => {
                if strategy
                    .and_then(|s| s.get("rollingUpdate"))
                    .is_some_and(|r| !r.is_null())
                {
                    errs.push(FieldError::forbidden(
                        "spec.strategy.rollingUpdate",
                        "may not be specified when strategy `type` is 'Recreate'",
                    ));
                }
            }
            Some("RollingUpdate") | None => {}
            Some(other) => errs.push(FieldError::not_supported(
                "spec.strategy.type",
                &json!(other),
                &["Recreate", "RollingUpdate"],
            )),
        }
    }
    match spec.pointer("/template/spec") {
        Some(ps) => {
            pod_spec_errors(ps, "spec.template.spec", errs);
            if let Some(rp) = ps.get("restartPolicy").and_then(Value::as_str) {
                if rp != "Always" {
                    errs.push(FieldError::not_supported(
                        "spec.template.spec.restartPolicy",
                        &json!(rp),
                        &["Always"],
                    ));
                }
            }
        }
        None => errs.push(FieldError::required("spec.template.spec.containers", "")),
    }
}

fn pod_spec_errors(spec: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let containers = spec
        .get("containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if containers.is_empty() {
        errs.push(FieldError::required(format!("{path}.containers"), ""));
    }
    let mut seen: Vec<String> = Vec::new();
    for (i, c) in containers.iter().enumerate() {
        let at = format!("{path}.containers[{i}]");
        match c.get("name").and_then(Value::as_str) {
            None | Some("") => errs.push(FieldError::required(format!("{at}.name"), "")),
            Some(name) => {
                if seen.iter().any(|s| s == name) {
                    errs.push(FieldError::duplicate(format!("{at}.name"), &json!(name)));
                } else if !is_dns_label(name) {
                    errs.push(FieldError::invalid(
                        format!("{at}.name"),
                        &json!(name),
                        "a lowercase RFC 1123 label must consist of lower case alphanumeric \
                         characters or '-'",
                    ));
                }
                seen.push(name.to_string());
            }
        }
        if c.get("image")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            errs.push(FieldError::required(format!("{at}.image"), ""));
        }
        if let Some(ports) = c.get("ports").and_then(Value::as_array) {
            for (j, p) in ports.iter().enumerate() {
                let port = p.get("containerPort").and_then(Value::as_i64).unwrap_or(0);
                if !(1..=65535).contains(&port) {
                    errs.push(FieldError::invalid(
                        format!("{at}.ports[{j}].containerPort"),
                        p.get("containerPort").unwrap_or(&Value::Null),
                        "must be between 1 and 65535, inclusive",
                    ));
                }
            }
        }
    }
}

fn service_errors(obj: &Value, old: Option<&Value>, errs: &mut Vec<FieldError>) {
    let spec = obj.get("spec").cloned().unwrap_or(json!({}));
    let ty = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP");
    if !["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].contains(&ty) {
        errs.push(FieldError::not_supported(
            "spec.type",
            &json!(ty),
            &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
        ));
    }
    let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
    let ports = spec
        .get("ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if ports.is_empty() && ty != "ExternalName" && !headless {
        errs.push(FieldError::required("spec.ports", ""));
    }
    let mut names: Vec<String> = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
        if !(1..=65535).contains(&port) {
            errs.push(FieldError::invalid(
                format!("spec.ports[{i}].port"),
                p.get("port").unwrap_or(&Value::Null),
                "must be between 1 and 65535, inclusive",
            ));
        }
        let name = p.get("name").and_then(Value::as_str).unwrap_or_default();
        if ports.len() > 1 && name.is_empty() {
            errs.push(FieldError::required(format!("spec.ports[{i}].name"), ""));
        } else if !name.is_empty() && names.iter().any(|n| n == name) {
            errs.push(FieldError::duplicate(
                format!("spec.ports[{i}].name"),
                &json!(name),
            ));
        }
        names.push(name.to_string());
    }
    if let Some(old_ip) = old.and_then(|o| o.pointer("/spec/clusterIP")) {
        let new_ip = spec.get("clusterIP");
        if new_ip.is_some_and(|ip| ip != old_ip) {
            errs.push(FieldError::invalid(
                "spec.clusterIPs[0]",
                new_ip.unwrap_or(&Value::Null),
                "may not change once set",
            ));
        }
    }
}

fn ingress_errors(obj: &Value, errs: &mut Vec<FieldError>) {
    let rules = obj
        .pointer("/spec/rules")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, rule) in rules.iter().enumerate() {
        let paths = rule
            .pointer("/http/paths")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for (j, p) in paths.iter().enumerate() {
            let at = format!("spec.rules[{i}].http.paths[{j}]");
            match p.get("pathType").and_then(Value::as_str) {
                None => errs.push(FieldError::required(
                    format!("{at}.pathType"),
                    "pathType must be specified",
                )),
                Some("Exact" | "Prefix" | "ImplementationSpecific") => {}
                Some(other) => errs.push(FieldError::not_supported(
                    format!("{at}.pathType"),
                    &json!(other),
                    &["Exact", "ImplementationSpecific", "Prefix"],
                )),
            }
            if p.get("backend").is_none_or(Value::is_null) {
                errs.push(FieldError::required(format!("{at}.backend"), ""));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::registry::Registry;

    fn rt(name: &str) -> ResourceType {
        Registry::new().find(name).unwrap().clone()
    }

    #[test]
    fn a_deployment_gets_the_apiserver_defaults() {
        let mut d = json!({"metadata": {"name": "web"}, "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [
                {"name": "web", "image": "nginx:1.27", "ports": [{"containerPort": 80}]},
                {"name": "side", "image": "busybox"}]}}}});
        apply(&rt("deployments"), &mut d);
        let spec = &d["spec"];
        assert_eq!(spec["replicas"], 1);
        assert_eq!(spec["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert_eq!(spec["revisionHistoryLimit"], 10);
        assert_eq!(spec["progressDeadlineSeconds"], 600);
        let ps = &spec["template"]["spec"];
        assert_eq!(ps["restartPolicy"], "Always");
        assert_eq!(ps["schedulerName"], "default-scheduler");
        assert_eq!(ps["containers"][0]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(ps["containers"][1]["imagePullPolicy"], "Always");
        assert_eq!(ps["containers"][0]["ports"][0]["protocol"], "TCP");
        assert!(validate(&rt("deployments"), &d, None).is_empty());
    }

    #[test]
    fn a_selector_that_misses_the_template_labels_is_invalid() {
        let d = json!({"metadata": {"name": "web"}, "spec": {
            "selector": {"matchLabels": {"app": "other"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [
                {"name": "web", "image": "x"}, {"name": "web"}]}}}});
        let errs: Vec<String> = validate(&rt("deployments"), &d, None)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(errs
            .iter()
            .any(|e| e.contains("`selector` does not match template `labels`")));
        assert!(errs
            .iter()
            .any(|e| e.contains("containers[1].name: Duplicate value")));
        assert!(errs
            .iter()
            .any(|e| e.contains("containers[1].image: Required value")));
    }

    #[test]
    fn a_service_gets_defaults_and_its_target_port() {
        let mut s = json!({"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}});
        apply(&rt("services"), &mut s);
        assert_eq!(s["spec"]["type"], "ClusterIP");
        assert_eq!(s["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(s["spec"]["ports"][0]["protocol"], "TCP");
        assert_eq!(s["spec"]["ipFamilies"], json!(["IPv4"]));
    }

    #[test]
    fn image_pull_policy_follows_the_tag() {
        assert_eq!(image_pull_policy("nginx"), "Always");
        assert_eq!(image_pull_policy("nginx:latest"), "Always");
        assert_eq!(image_pull_policy("localhost:5000/nginx"), "Always");
        assert_eq!(
            image_pull_policy("localhost:5000/nginx:1.2"),
            "IfNotPresent"
        );
        assert_eq!(image_pull_policy("nginx@sha256:abc"), "IfNotPresent");
    }
}
