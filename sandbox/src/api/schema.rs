//! Structural-schema handling for custom resources, as the apiextensions apiserver does it:
//! pruning of unknown fields, `default:` values, and validation of types, enums, required
//! fields and simple bounds. CEL rules (`x-kubernetes-validations`) are not evaluated.

use serde_json::{Map, Value};

use super::errors::FieldError;

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

fn preserves(schema: &Value) -> bool {
    schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true)
}

/// Removes fields the schema does not declare; returns their paths (for `fieldValidation`).
/// At the root `apiVersion`, `kind` and `metadata` are always kept.
pub fn prune(obj: &mut Value, schema: &Value) -> Vec<String> {
    let mut pruned = Vec::new();
    if let Value::Object(m) = obj {
        let keep_root = ["apiVersion", "kind", "metadata"];
        let props = schema.get("properties").and_then(Value::as_object);
        let mut drop = Vec::new();
        for (k, v) in m.iter_mut() {
            if keep_root.contains(&k.as_str()) {
                continue;
            }
            match props.and_then(|p| p.get(k)) {
                Some(s) => prune_value(v, s, k, &mut pruned),
                None if preserves(schema) => {}
                None => drop.push(k.clone()),
            }
        }
        for k in drop {
            m.remove(&k);
            pruned.push(k);
        }
    }
    pruned
}

fn prune_value(v: &mut Value, schema: &Value, path: &str, pruned: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            let embedded = schema
                .get("x-kubernetes-embedded-resource")
                .and_then(Value::as_bool)
                == Some(true);
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            let mut drop = Vec::new();
            for (k, child) in m.iter_mut() {
                if embedded && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let child_path = join(path, k);
                if let Some(s) = props.and_then(|p| p.get(k)) {
                    prune_value(child, s, &child_path, pruned);
                } else if let Some(s) = additional.filter(|a| a.is_object()) {
                    prune_value(child, s, &child_path, pruned);
                } else if additional == Some(&Value::Bool(true)) || preserves(schema) {
                } else {
                    drop.push(k.clone());
                }
            }
            for k in drop {
                m.remove(&k);
                pruned.push(join(path, &k));
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune_value(item, s, &format!("{path}[{i}]"), pruned);
                }
            }
        }
        _ => {}
    }
}

/// Fills `default:` values for absent fields (and `null`s of non-nullable fields), below the
/// root and inside objects that exist. `metadata` is left alone.
pub fn apply_defaults(obj: &mut Value, schema: &Value) {
    if let Value::Object(m) = obj {
        default_object(m, schema, true);
    }
}

fn default_object(m: &mut Map<String, Value>, schema: &Value, root: bool) {
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (k, s) in props {
            if root && k == "metadata" {
                continue;
            }
            let nullable = s.get("nullable").and_then(Value::as_bool) == Some(true);
            if let Some(d) = s.get("default") {
                match m.get(k) {
                    None => {
                        m.insert(k.clone(), d.clone());
                    }
                    Some(Value::Null) if !nullable => {
                        m.insert(k.clone(), d.clone());
                    }
                    _ => {}
                }
            }
            if let Some(child) = m.get_mut(k) {
                default_value(child, s);
            }
        }
    }
    if let Some(s) = schema.get("additionalProperties").filter(|a| a.is_object()) {
        for child in m.values_mut() {
            default_value(child, s);
        }
    }
}

fn default_value(v: &mut Value, schema: &Value) {
    match v {
        Value::Object(m) => default_object(m, schema, false),
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for item in items {
                    default_value(item, s);
                }
            }
        }
        _ => {}
    }
}

/// Validates an object against its schema (below the root, `metadata` excluded).
pub fn validate(obj: &Value, schema: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if let Value::Object(m) = obj {
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (k, s) in props {
                if matches!(k.as_str(), "metadata" | "apiVersion" | "kind") {
                    continue;
                }
                if let Some(v) = m.get(k) {
                    validate_value(v, s, k, &mut errs);
                }
            }
        }
        required(m, schema, "", &mut errs);
    }
    errs
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_ok(v: &Value, ty: &str) -> bool {
    match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        "number" => v.is_number(),
        _ => true,
    }
}

fn required(m: &Map<String, Value>, schema: &Value, path: &str, errs: &mut Vec<FieldError>) {
    if let Some(req) = schema.get("required").and_then(Value::as_array) {
        for r in req.iter().filter_map(Value::as_str) {
            if !m.contains_key(r) {
                errs.push(FieldError::required(join(path, r), ""));
            }
        }
    }
}

fn validate_value(v: &Value, schema: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let ty = schema.get("type").and_then(Value::as_str);
    if v.is_null() {
        if schema.get("nullable").and_then(Value::as_bool) != Some(true) && ty.is_some() {
            let ty = ty.unwrap_or_default();
            errs.push(FieldError::invalid(
                path,
                &Value::String("null".into()),
                format!("{path} in body must be of type {ty}: \"null\""),
            ));
        }
        return;
    }
    let int_or_string = schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true);
    if int_or_string {
        if !(v.is_string() || type_ok(v, "integer")) {
            errs.push(FieldError::invalid(
                path,
                &Value::String(type_name(v).into()),
                format!("{path} in body must be of type integer-or-string"),
            ));
            return;
        }
    } else if let Some(ty) = ty {
        if !type_ok(v, ty) {
            let found = type_name(v);
            errs.push(FieldError::invalid(
                path,
                &Value::String(found.into()),
                format!("{path} in body must be of type {ty}: \"{found}\""),
            ));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(v) {
            let names: Vec<String> = allowed
                .iter()
                .map(|a| {
                    a.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| a.to_string())
                })
                .collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            errs.push(FieldError::not_supported(path, v, &refs));
        }
    }
    if let Some(n) = v.as_f64() {
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
            if n > max {
                errs.push(FieldError::invalid(
                    path,
                    v,
                    format!("{path} in body should be less than or equal to {max}"),
                ));
            }
        }
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
            if n < min {
                errs.push(FieldError::invalid(
                    path,
                    v,
                    format!("{path} in body should be greater than or equal to {min}"),
                ));
            }
        }
    }
    if let Some(s) = v.as_str() {
        let len = s.chars().count() as u64;
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
            if len > max {
                errs.push(FieldError::invalid(
                    path,
                    v,
                    format!("{path} in body should be at most {max} chars long"),
                ));
            }
        }
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
            if len < min {
                errs.push(FieldError::invalid(
                    path,
                    v,
                    format!("{path} in body should be at least {min} chars long"),
                ));
            }
        }
        if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
            if let Ok(re) = regex::Regex::new(pattern) {
                if !re.is_match(s) {
                    errs.push(FieldError::invalid(
                        path,
                        v,
                        format!("{path} in body should match '{pattern}'"),
                    ));
                }
            }
        }
    }
    match v {
        Value::Object(m) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (k, child) in m {
                let child_path = join(path, k);
                if let Some(s) = props.and_then(|p| p.get(k)) {
                    validate_value(child, s, &child_path, errs);
                } else if let Some(s) = additional {
                    validate_value(child, s, &child_path, errs);
                }
            }
            required(m, schema, path, errs);
        }
        Value::Array(items) => {
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64) {
                if items.len() as u64 > max {
                    errs.push(FieldError::invalid(
                        path,
                        &Value::from(items.len()),
                        format!("{path} in body should have at most {max} items"),
                    ));
                }
            }
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64) {
                if (items.len() as u64) < min {
                    errs.push(FieldError::invalid(
                        path,
                        &Value::from(items.len()),
                        format!("{path} in body should have at least {min} items"),
                    ));
                }
            }
            if let Some(s) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    validate_value(item, s, &format!("{path}[{i}]"), errs);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["url"], "properties": {
                "url": {"type": "string"},
                "phase": {"type": "string", "enum": ["AUTHN", "STATS"], "default": "STATS"},
                "priority": {"type": "integer", "nullable": true},
                "defaultConfig": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "steps": {"type": "array", "items": {"type": "object", "properties": {
                    "weight": {"type": "integer", "minimum": 0, "maximum": 100}}}}}},
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}})
    }

    #[test]
    fn unknown_fields_are_pruned_except_under_preserve_unknown_fields() {
        let mut obj = json!({"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "a"},
            "extra": 1,
            "spec": {"url": "u", "typo": true, "defaultConfig": {"anything": {"goes": 1}},
                     "steps": [{"weight": 1, "nope": 2}]},
            "status": {"free": "form"}});
        let pruned = prune(&mut obj, &schema());
        assert_eq!(pruned.len(), 3, "{pruned:?}");
        assert!(pruned.contains(&"spec.typo".to_string()));
        assert!(pruned.contains(&"spec.steps[0].nope".to_string()));
        assert_eq!(obj["spec"]["defaultConfig"]["anything"]["goes"], 1);
        assert_eq!(obj["status"]["free"], "form");
        assert!(obj.get("extra").is_none());
    }

    #[test]
    fn defaults_fill_missing_fields_and_validation_reports_each_error() {
        let mut obj = json!({"spec": {"url": "u"}});
        apply_defaults(&mut obj, &schema());
        assert_eq!(obj["spec"]["phase"], "STATS");
        assert!(validate(&obj, &schema()).is_empty());

        let bad =
            json!({"spec": {"phase": "NOPE", "priority": "high", "steps": [{"weight": 120}]}});
        let errs: Vec<String> = validate(&bad, &schema())
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(errs
            .iter()
            .any(|e| e.starts_with("spec.url: Required value")));
        assert!(errs
            .iter()
            .any(|e| e.starts_with("spec.phase: Unsupported value: \"NOPE\"")));
        assert!(errs
            .iter()
            .any(|e| e.contains("spec.priority in body must be of type integer")));
        assert!(errs
            .iter()
            .any(|e| e.starts_with("spec.steps[0].weight: Invalid value: 120")));
        let null_priority = json!({"spec": {"url": "u", "priority": null}});
        assert!(validate(&null_priority, &schema()).is_empty());
    }
}
