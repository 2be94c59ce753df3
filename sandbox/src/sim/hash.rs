//! The `pod-template-hash`: a stable hash of a Deployment's pod template, and the template
//! equality (`EqualIgnoreHash`) the deployment controller uses to find its new ReplicaSet.
//!
//! The real controller hashes the Go struct with FNV-32a (`controller.ComputeHash`) and
//! encodes the decimal hash with `rand.SafeEncodeString`. We hash a canonical JSON rendering
//! of the template instead (the Go struct printer cannot be reproduced), with the same
//! FNV-32a, collision-count suffix and encoding, so the values look like real ones
//! (`7c5ddbdf54`) and are stable across runs and processes.
//!
//! Templates are compared and hashed after [`normalize`]: the hash label removed, the API
//! server's pod-template defaults filled in where absent, and `null`/empty values dropped
//! (apimachinery's semantic equality treats nil and empty alike). A template therefore hashes
//! the same whether or not the API server defaulted it.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use serde_json::{Map, Value};

use super::util::{image_tag, SAFE_ALPHABET};

/// The label the deployment controller adds to ReplicaSets, their selectors and pods.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// The hash of `template` as `controller.ComputeHash` shapes it.
pub fn pod_template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut canonical = String::new();
    write_canonical(&normalize(template), &mut canonical);
    let mut hasher = Fnv32a::new();
    hasher.write(canonical.as_bytes());
    if let Some(count) = collision_count {
        // Go writes an 8-byte buffer holding the little-endian uint32.
        let mut buf = [0u8; 8];
        buf[..4].copy_from_slice(&(count as u32).to_le_bytes());
        hasher.write(&buf);
    }
    safe_encode(&hasher.finish().to_string())
}

/// `deploymentutil.EqualIgnoreHash`: the templates are equal apart from the hash label.
pub fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    normalize(a) == normalize(b)
}

/// `rand.SafeEncodeString`.
fn safe_encode(s: &str) -> String {
    s.bytes()
        .map(|b| char::from(SAFE_ALPHABET[usize::from(b) % SAFE_ALPHABET.len()]))
        .collect()
}

/// FNV-32a, as Go's `hash/fnv.New32a`.
struct Fnv32a(u32);

impl Fnv32a {
    fn new() -> Self {
        Self(0x811c_9dc5)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u32::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0193);
        }
    }

    fn finish(&self) -> u32 {
        self.0
    }
}

/// The template as JSON without the hash label, with defaults filled and empties pruned.
pub fn normalize(template: &PodTemplateSpec) -> Value {
    let mut v = serde_json::to_value(template).unwrap_or(Value::Null);
    if let Some(labels) = v
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(POD_TEMPLATE_HASH);
    }
    if let Some(spec) = v.get_mut("spec").and_then(Value::as_object_mut) {
        default_pod_spec(spec);
    }
    prune(&mut v);
    v
}

fn set_default(obj: &mut Map<String, Value>, key: &str, value: Value) {
    if obj.get(key).is_none_or(Value::is_null) {
        obj.insert(key.to_owned(), value);
    }
}

/// The subset of `SetDefaults_PodSpec`/`SetDefaults_Container` a Deployment template gets.
fn default_pod_spec(spec: &mut Map<String, Value>) {
    set_default(spec, "restartPolicy", "Always".into());
    set_default(spec, "dnsPolicy", "ClusterFirst".into());
    set_default(spec, "terminationGracePeriodSeconds", 30.into());
    set_default(spec, "schedulerName", "default-scheduler".into());
    set_default(spec, "enableServiceLinks", true.into());
    for list in ["containers", "initContainers"] {
        let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in containers.iter_mut().filter_map(Value::as_object_mut) {
            default_container(c);
        }
    }
}

fn default_container(c: &mut Map<String, Value>) {
    let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
    let tagless = image_tag(image) == "latest";
    let pull = if tagless { "Always" } else { "IfNotPresent" };
    set_default(c, "imagePullPolicy", pull.into());
    set_default(c, "terminationMessagePath", "/dev/termination-log".into());
    set_default(c, "terminationMessagePolicy", "File".into());
    if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            set_default(p, "protocol", "TCP".into());
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let Some(p) = c.get_mut(probe).and_then(Value::as_object_mut) else {
            continue;
        };
        set_default(p, "timeoutSeconds", 1.into());
        set_default(p, "periodSeconds", 10.into());
        set_default(p, "successThreshold", 1.into());
        set_default(p, "failureThreshold", 3.into());
        if let Some(get) = p.get_mut("httpGet").and_then(Value::as_object_mut) {
            set_default(get, "scheme", "HTTP".into());
        }
    }
}

/// Drops nulls, empty arrays and empty objects, recursively. Returns whether `v` itself
/// became empty.
fn prune(v: &mut Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(items) => {
            items.iter_mut().for_each(|item| {
                prune(item);
            });
            items.is_empty()
        }
        Value::Object(map) => {
            map.retain(|_, child| !prune(child));
            map.is_empty()
        }
        _ => false,
    }
}

/// JSON with object keys sorted, whatever map type `serde_json` was built with.
fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template(v: Value) -> PodTemplateSpec {
        serde_json::from_value(v).expect("a valid pod template")
    }

    fn demo(image: &str) -> PodTemplateSpec {
        template(json!({
            "metadata": {"labels": {"app": "demo"}},
            "spec": {"containers": [{"name": "main", "image": image,
                                     "ports": [{"containerPort": 8080}]}]}
        }))
    }

    #[test]
    fn fnv32a_matches_the_reference_vectors() {
        let mut h = Fnv32a::new();
        assert_eq!(h.finish(), 0x811c_9dc5);
        h.write(b"a");
        assert_eq!(h.finish(), 0xe40c_292c);
        let mut h = Fnv32a::new();
        h.write(b"foobar");
        assert_eq!(h.finish(), 0xbf9c_f968);
    }

    #[test]
    fn hash_is_stable_and_looks_like_a_real_one() {
        let a = pod_template_hash(&demo("registry.example/version:v1"), None);
        assert_eq!(
            a,
            pod_template_hash(&demo("registry.example/version:v1"), None)
        );
        // Decimal digits map onto this alphabet subset, like real hashes (`5d59d67564`).
        assert!(a.bytes().all(|b| b"456789bcdf".contains(&b)), "{a}");
        assert!((6..=10).contains(&a.len()), "{a}");
    }

    #[test]
    fn hash_changes_with_the_template_and_the_collision_count() {
        let v1 = pod_template_hash(&demo("registry.example/version:v1"), None);
        let v2 = pod_template_hash(&demo("registry.example/version:v2"), None);
        assert_ne!(v1, v2);
        let bumped = pod_template_hash(&demo("registry.example/version:v1"), Some(1));
        assert_ne!(v1, bumped);
        assert_ne!(
            bumped,
            pod_template_hash(&demo("registry.example/version:v1"), Some(2))
        );
    }

    #[test]
    fn hash_ignores_the_hash_label_defaults_and_key_order() {
        let plain = demo("registry.example/version:v1");
        let defaulted = template(json!({
            "metadata": {"labels": {"pod-template-hash": "abc", "app": "demo"},
                         "creationTimestamp": null},
            "spec": {
                "terminationGracePeriodSeconds": 30, "restartPolicy": "Always",
                "dnsPolicy": "ClusterFirst", "schedulerName": "default-scheduler",
                "securityContext": {},
                "containers": [{"name": "main", "image": "registry.example/version:v1",
                                "imagePullPolicy": "IfNotPresent", "resources": {},
                                "terminationMessagePath": "/dev/termination-log",
                                "terminationMessagePolicy": "File",
                                "ports": [{"containerPort": 8080, "protocol": "TCP"}]}]
            }
        }));
        assert!(equal_ignore_hash(&plain, &defaulted));
        assert_eq!(
            pod_template_hash(&plain, None),
            pod_template_hash(&defaulted, None)
        );
    }

    #[test]
    fn an_explicit_non_default_value_is_a_different_template() {
        let plain = demo("registry.example/version:v1");
        let mut always = plain.clone();
        if let Some(spec) = always.spec.as_mut() {
            spec.containers[0].image_pull_policy = Some("Always".into());
        }
        assert!(!equal_ignore_hash(&plain, &always));
    }
}
