//! WasmPlugins to Wasm filters, with the plugin JSON built exactly as Higress builds it.
//!
//! Pure. Follows alibaba/higress `pkg/ingress/config/ingress_config.go`
//! (`convertIstioWasmPlugin`) and Istio's filter ordering by phase and priority.

use std::path::{Path, PathBuf};

use kube::api::DynamicObject;
use kube::ResourceExt;
use serde_json::{Map, Value};

use super::model::{EnvVar, Phase, PluginOutcome, WasmFilter};
use super::TranslateConfig;

#[cfg(test)]
mod tests;

/// `<ns>.<name>`: the filter and ECDS resource name Istio gives a WasmPlugin.
pub fn filter_name(plugin: &DynamicObject) -> String {
    format!(
        "{}.{}",
        plugin.namespace().unwrap_or_default(),
        plugin.name_any()
    )
}

/// Converts one WasmPlugin; `config` says where its `url` points on this machine.
pub fn convert(plugin: &DynamicObject, config: &TranslateConfig) -> PluginOutcome {
    let name = filter_name(plugin);
    let empty = Value::Object(Map::new());
    let spec = plugin.data.get("spec").unwrap_or(&empty);

    let configuration = match plugin_config(spec) {
        Ok(Some(config)) => config,
        Ok(None) => return PluginOutcome::Disabled,
        Err(reason) => {
            return PluginOutcome::Invalid(format!("invalid wasmPlugin {name}: {reason}"))
        }
    };
    let url = spec.get("url").and_then(Value::as_str).unwrap_or("");
    let wasm = match wasm_path(url, &config.plugin_root, config.oci_wasm.as_deref()) {
        Ok(path) => path,
        Err(reason) => return PluginOutcome::Unsupported(format!("wasmPlugin {name}: {reason}")),
    };
    let phase = match spec.get("phase") {
        Some(Value::String(s)) => match s.as_str() {
            "AUTHN" => Phase::Authn,
            "AUTHZ" => Phase::Authz,
            "STATS" => Phase::Stats,
            _ => Phase::Unspecified,
        },
        Some(Value::Number(n)) => match n.as_i64() {
            Some(1) => Phase::Authn,
            Some(2) => Phase::Authz,
            Some(3) => Phase::Stats,
            _ => Phase::Unspecified,
        },
        _ => Phase::Unspecified,
    };
    let priority = spec.get("priority").and_then(Value::as_i64).unwrap_or(0);
    let fail_open = matches!(
        spec.get("failStrategy"),
        Some(Value::String(s)) if s == "FAIL_OPEN"
    ) || spec.get("failStrategy").and_then(Value::as_i64) == Some(1);
    let root_id = spec
        .get("pluginName")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let env = spec
        .pointer("/vmConfig/env")
        .and_then(Value::as_array)
        .map(|vars| {
            vars.iter()
                .filter_map(|var| {
                    let name = var.get("name")?.as_str()?.to_string();
                    let from_host = matches!(var.get("valueFrom"), Some(Value::String(s)) if s == "HOST")
                        || var.get("valueFrom").and_then(Value::as_i64) == Some(1);
                    Some(if from_host {
                        EnvVar::Host { name }
                    } else {
                        EnvVar::Inline {
                            name,
                            value: var.get("value").and_then(Value::as_str).unwrap_or("").to_string(),
                        }
                    })
                })
                .collect()
        })
        .unwrap_or_default();

    PluginOutcome::Filter(WasmFilter {
        name,
        root_id,
        wasm,
        configuration,
        fail_open,
        phase,
        priority,
        env,
    })
}

/// The plugin JSON (`convertIstioWasmPlugin`).
///
/// `Ok(None)`: the plugin is dropped (defaultConfigDisable and no enabled rule).
/// `Ok(Some(None))`: installed without configuration. `Err`: a rule without any match list,
/// which makes Higress refuse the whole plugin.
pub fn plugin_config(spec: &Value) -> Result<Option<Option<String>>, String> {
    if let Some(raw) = spec.get("pluginConfig").filter(|v| !v.is_null()) {
        return Ok(Some(Some(to_json(raw))));
    }
    let default_disabled = spec
        .get("defaultConfigDisable")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut config: Option<Map<String, Value>> = if default_disabled {
        None
    } else {
        spec.get("defaultConfig")
            .and_then(Value::as_object)
            .cloned()
    };
    let mut has_valid_rule = false;
    let rules = spec
        .get("matchRules")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if !rules.is_empty() {
        let config = config.get_or_insert_with(Map::new);
        let mut values = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            if rule
                .get("configDisable")
                .and_then(Value::as_bool)
                .unwrap_or(false)
            {
                continue;
            }
            let mut object = rule
                .get("config")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let mut valid = false;
            for (field, key) in [
                ("ingress", "_match_route_"),
                ("service", "_match_service_"),
                ("domain", "_match_domain_"),
            ] {
                let items: Vec<Value> = rule
                    .get(field)
                    .and_then(Value::as_array)
                    .map(|list| list.to_vec())
                    .unwrap_or_default();
                if !items.is_empty() {
                    valid = true;
                    object.insert(key.to_string(), Value::Array(items));
                }
            }
            if !valid {
                return Err(format!(
                    "matchRules[{i}] has no match condition (ingress, domain or service)"
                ));
            }
            values.push(Value::Object(object));
        }
        if !values.is_empty() {
            has_valid_rule = true;
            config.insert("_rules_".to_string(), Value::Array(values));
        }
    }
    if !has_valid_rule && default_disabled {
        return Ok(None);
    }
    Ok(Some(config.map(|c| to_json(&Value::Object(c)))))
}

/// Compact JSON as Istio's protobuf `Struct` marshalling writes it: keys sorted, and every
/// number a double, so integral values print without a fraction (`10`, not `10.0`).
pub fn to_json(value: &Value) -> String {
    serde_json::to_string(&normalize(value)).unwrap_or_else(|_| "{}".to_string())
}

fn normalize(value: &Value) -> Value {
    match value {
        Value::Number(n) => {
            let f = n.as_f64().unwrap_or(0.0);
            if f.fract() == 0.0 && f.abs() < 9.0e15 {
                Value::from(f as i64)
            } else {
                serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
            }
        }
        Value::Array(items) => Value::Array(items.iter().map(normalize).collect()),
        // serde_json's default Map is a BTreeMap: keys come out sorted.
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), normalize(v))).collect())
        }
        other => other.clone(),
    }
}

/// The local file a `url` names: `file://<path>` or a plain path, relative ones resolved
/// against `root`; `oci://` urls are served from `oci` when given. Registries and web URLs
/// are not fetched by this stand-in.
pub fn wasm_path(url: &str, root: &Path, oci: Option<&Path>) -> Result<PathBuf, String> {
    let path = if let Some(rest) = url.strip_prefix("file://") {
        rest
    } else if let (Some(local), true) = (oci, url.starts_with("oci://")) {
        return Ok(local.to_path_buf());
    } else if let Some((scheme, _)) = url.split_once("://") {
        return Err(format!(
            "url {url:?}: {scheme}:// is not supported by the sandbox gateway (it loads local files \
             only); use file:///<absolute path> or a path such as dist/plugin.wasm"
        ));
    } else {
        url
    };
    if path.is_empty() {
        return Err("url is empty".to_string());
    }
    let path = Path::new(path);
    Ok(if path.is_absolute() {
        path.to_path_buf()
    } else {
        root.join(path)
    })
}

/// Istio's chain order: AUTHN, AUTHZ, STATS, then UNSPECIFIED; within a phase higher priority
/// first, then by name.
pub fn order(filters: &mut [WasmFilter]) {
    filters.sort_by(|a, b| {
        a.phase
            .cmp(&b.phase)
            .then_with(|| b.priority.cmp(&a.priority))
            .then_with(|| a.name.cmp(&b.name))
    });
}
