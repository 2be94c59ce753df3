//! Server-side apply and field ownership.
//!
//! Ownership is tracked per object in a side table (not exposed as `metadata.managedFields`,
//! so kubectl never starts its client-side → server-side apply migration). Each manager
//! `(name, operation, subresource)` owns a set of leaf field paths:
//! - `Apply` owns exactly the leaves of its last applied configuration;
//! - `Update` (every other write with a manager) takes the leaves it changed, from everyone;
//! - an apply that drops a leaf it owned removes it from the object, unless another manager
//!   still owns it;
//! - an apply that sets a leaf another manager owns to a different value is a conflict
//!   (409 with `FieldManagerConflict` causes) unless `force=true`, which takes ownership.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use super::patch::ListKind;

/// One step of a field path: a map field, or a keyed list item (`{"name":"web"}` as JSON).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum PathElem {
    Field(String),
    Key(String),
}

pub type FieldPath = Vec<PathElem>;
pub type FieldSet = BTreeSet<FieldPath>;

/// Whether the manager applied (SSA) or updated (PUT, non-apply PATCH, POST).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Operation {
    Apply,
    Update,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ManagerKey {
    pub manager: String,
    pub operation: Operation,
    /// `""`, `"status"` or `"scale"`.
    pub subresource: String,
}

/// The field owners of one object.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Managers(pub BTreeMap<ManagerKey, FieldSet>);

/// Which part of an object a write may touch, for ownership purposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The main resource; `status` is excluded when the kind has a status subresource.
    Main { exclude_status: bool },
    /// Only `.status`.
    Status,
}

/// The part of an object whose fields are owned: labels, annotations, finalizers and owner
/// references of the metadata, and everything else except `apiVersion`/`kind`.
pub fn managed_view(obj: &Value, scope: Scope) -> Value {
    let mut out = Map::new();
    let Some(m) = obj.as_object() else {
        return Value::Object(out);
    };
    match scope {
        Scope::Status => {
            if let Some(s) = m.get("status") {
                out.insert("status".into(), s.clone());
            }
        }
        Scope::Main { exclude_status } => {
            for (k, v) in m {
                match k.as_str() {
                    "apiVersion" | "kind" => {}
                    "status" if exclude_status => {}
                    "metadata" => {
                        let mut meta = Map::new();
                        for f in ["labels", "annotations", "finalizers", "ownerReferences"] {
                            if let Some(x) = v.get(f) {
                                meta.insert(f.into(), x.clone());
                            }
                        }
                        if !meta.is_empty() {
                            out.insert("metadata".into(), Value::Object(meta));
                        }
                    }
                    _ => {
                        out.insert(k.clone(), v.clone());
                    }
                }
            }
        }
    }
    Value::Object(out)
}

/// The leaf paths of a value.
pub fn leaves(v: &Value, kinds: &dyn Fn(&[String]) -> ListKind) -> FieldSet {
    let mut out = FieldSet::new();
    collect(v, kinds, &mut Vec::new(), &mut Vec::new(), &mut out);
    out
}

fn collect(
    v: &Value,
    kinds: &dyn Fn(&[String]) -> ListKind,
    names: &mut Vec<String>,
    prefix: &mut FieldPath,
    out: &mut FieldSet,
) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                if child.is_null() {
                    continue;
                }
                names.push(k.clone());
                prefix.push(PathElem::Field(k.clone()));
                collect(child, kinds, names, prefix, out);
                prefix.pop();
                names.pop();
            }
        }
        Value::Array(items) if !items.is_empty() => match kinds(names.as_slice()) {
            ListKind::Map(keys) if items.iter().all(Value::is_object) => {
                for item in items {
                    prefix.push(PathElem::Key(item_key(item, &keys)));
                    collect(item, kinds, names, prefix, out);
                    prefix.pop();
                }
            }
            _ => {
                out.insert(prefix.clone());
            }
        },
        _ => {
            out.insert(prefix.clone());
        }
    }
}

fn item_key(item: &Value, keys: &[String]) -> String {
    let mut m = Map::new();
    for k in keys {
        m.insert(k.clone(), item.get(k).cloned().unwrap_or(Value::Null));
    }
    Value::Object(m).to_string()
}

fn matches_key(item: &Value, key: &str) -> bool {
    let Ok(Value::Object(k)) = serde_json::from_str::<Value>(key) else {
        return false;
    };
    k.iter()
        .all(|(f, v)| item.get(f).unwrap_or(&Value::Null) == v)
}

/// The value at a field path.
pub fn value_at<'a>(v: &'a Value, path: &[PathElem]) -> Option<&'a Value> {
    let mut cur = v;
    for elem in path {
        cur = match elem {
            PathElem::Field(f) => cur.get(f)?,
            PathElem::Key(k) => cur.as_array()?.iter().find(|i| matches_key(i, k))?,
        };
    }
    Some(cur)
}

/// `.spec.template.spec.containers[name="web"].image`, as in conflict messages.
pub fn render_path(path: &[PathElem]) -> String {
    let mut s = String::new();
    for elem in path {
        match elem {
            PathElem::Field(f) => {
                s.push('.');
                s.push_str(f);
            }
            PathElem::Key(k) => {
                let parsed: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
                let parts: Vec<String> = parsed.iter().map(|(f, v)| format!("{f}={v}")).collect();
                s.push_str(&format!("[{}]", parts.join(",")));
            }
        }
    }
    s
}

/// Removes the leaf at `path`, then any map, list or keyed item that became empty (or was
/// reduced to its key fields) on the way.
fn remove_at(v: &mut Value, path: &[PathElem]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    match (first, v) {
        (PathElem::Field(f), Value::Object(m)) => {
            if rest.is_empty() {
                m.remove(f);
            } else if let Some(child) = m.get_mut(f) {
                remove_at(child, rest);
                if is_empty(child) {
                    m.remove(f);
                }
            }
        }
        (PathElem::Key(k), Value::Array(items)) => {
            let Some(i) = items.iter().position(|item| matches_key(item, k)) else {
                return;
            };
            let key_fields: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            let removes_key =
                matches!(rest, [PathElem::Field(f)] if key_fields.contains_key(f.as_str()));
            if rest.is_empty() || removes_key {
                items.remove(i);
                return;
            }
            remove_at(&mut items[i], rest);
            let only_keys = items[i]
                .as_object()
                .is_some_and(|m| m.keys().all(|f| key_fields.contains_key(f)));
            if only_keys {
                items.remove(i);
            }
        }
        _ => {}
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// Merges an applied configuration into the live object: maps recursively, keyed lists by
/// key, everything else replaced; `null`s in the configuration are ignored.
fn merge_applied(
    live: &mut Value,
    applied: &Value,
    kinds: &dyn Fn(&[String]) -> ListKind,
    names: &mut Vec<String>,
) {
    match (live, applied) {
        (Value::Object(lm), Value::Object(am)) => {
            for (k, av) in am {
                if av.is_null() {
                    continue;
                }
                names.push(k.clone());
                match lm.get_mut(k) {
                    Some(lv) => merge_applied(lv, av, kinds, names),
                    None => {
                        let mut fresh = Value::Null;
                        merge_applied(&mut fresh, av, kinds, names);
                        lm.insert(k.clone(), fresh);
                    }
                }
                names.pop();
            }
        }
        (Value::Array(li), Value::Array(ai)) => match kinds(names.as_slice()) {
            ListKind::Map(keys) => {
                for item in ai {
                    let key = item_key(item, &keys);
                    match li.iter_mut().find(|l| matches_key(l, &key)) {
                        Some(existing) => merge_applied(existing, item, kinds, names),
                        None => li.push(without_nulls(item)),
                    }
                }
            }
            ListKind::Set => {
                for item in ai {
                    if !li.contains(item) {
                        li.push(item.clone());
                    }
                }
            }
            ListKind::Atomic => *li = ai.iter().map(without_nulls).collect(),
        },
        (live, applied) => *live = without_nulls(applied),
    }
}

fn without_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

impl Managers {
    /// Records an `Update` by `manager`: it takes every leaf it changed or added; leaves it
    /// removed are owned by nobody any more.
    pub fn record_update(
        &mut self,
        manager: &str,
        subresource: &str,
        old: Option<&Value>,
        new: &Value,
        scope: Scope,
        kinds: &dyn Fn(&[String]) -> ListKind,
    ) {
        let new_view = managed_view(new, scope);
        let new_leaves = leaves(&new_view, kinds);
        let (changed, removed): (FieldSet, FieldSet) = match old {
            None => (new_leaves, FieldSet::new()),
            Some(old) => {
                let old_view = managed_view(old, scope);
                let changed = new_leaves
                    .into_iter()
                    .filter(|p| value_at(&old_view, p) != value_at(&new_view, p))
                    .collect();
                let removed = leaves(&old_view, kinds)
                    .into_iter()
                    .filter(|p| value_at(&new_view, p).is_none())
                    .collect();
                (changed, removed)
            }
        };
        if changed.is_empty() && removed.is_empty() {
            return;
        }
        for set in self.0.values_mut() {
            set.retain(|p| !changed.contains(p) && !removed.contains(p));
        }
        let key = ManagerKey {
            manager: manager.to_string(),
            operation: Operation::Update,
            subresource: subresource.to_string(),
        };
        self.0.entry(key).or_default().extend(changed);
        self.0.retain(|_, set| !set.is_empty());
    }

    /// Server-side apply of `applied` onto `live` (`None` when the object does not exist yet).
    /// Returns the merged object, or the conflicts `(manager, field)` when not forced.
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        &mut self,
        manager: &str,
        subresource: &str,
        live: Option<&Value>,
        applied: &Value,
        scope: Scope,
        force: bool,
        kinds: &dyn Fn(&[String]) -> ListKind,
    ) -> Result<Value, Vec<(String, String)>> {
        let key = ManagerKey {
            manager: manager.to_string(),
            operation: Operation::Apply,
            subresource: subresource.to_string(),
        };
        let view = managed_view(applied, scope);
        let new_set = leaves(&view, kinds);
        let live_obj = live.cloned().unwrap_or_else(|| Value::Object(Map::new()));
        let live_view = managed_view(&live_obj, scope);

        let mut conflicts = Vec::new();
        let mut taken: Vec<(ManagerKey, FieldPath)> = Vec::new();
        for p in &new_set {
            if value_at(&live_view, p) == value_at(&view, p) {
                continue;
            }
            for (other, set) in &self.0 {
                if *other != key && set.contains(p) {
                    conflicts.push((other.manager.clone(), render_path(p)));
                    taken.push((other.clone(), p.clone()));
                }
            }
        }
        if !force && !conflicts.is_empty() {
            return Err(conflicts);
        }
        for (other, p) in taken {
            if let Some(set) = self.0.get_mut(&other) {
                set.remove(&p);
            }
        }

        let old_set = self.0.get(&key).cloned().unwrap_or_default();
        let others: FieldSet = self
            .0
            .iter()
            .filter(|(k, _)| **k != key)
            .flat_map(|(_, s)| s.iter().cloned())
            .collect();
        let mut result = live_obj;
        for p in old_set.difference(&new_set) {
            if !others.contains(p) {
                remove_at(&mut result, p);
            }
        }
        // What the apply may write: within scope, plus identity (name, apiVersion, kind).
        let mut writable = match scope {
            Scope::Status => managed_view(applied, Scope::Status),
            Scope::Main { exclude_status } => {
                let mut a = applied.clone();
                if exclude_status {
                    if let Some(m) = a.as_object_mut() {
                        m.remove("status");
                    }
                }
                a
            }
        };
        if let Some(m) = writable.as_object_mut() {
            if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.retain(|k, _| {
                    matches!(
                        k.as_str(),
                        "name"
                            | "namespace"
                            | "labels"
                            | "annotations"
                            | "finalizers"
                            | "ownerReferences"
                            | "resourceVersion"
                            | "generateName"
                    )
                });
            }
        }
        merge_applied(&mut result, &writable, kinds, &mut Vec::new());
        if new_set.is_empty() {
            self.0.remove(&key);
        } else {
            self.0.insert(key, new_set);
        }
        self.0.retain(|_, set| !set.is_empty());
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kinds(p: &[String]) -> ListKind {
        match p.last().map(String::as_str) {
            Some("containers") => ListKind::Map(vec!["name".into()]),
            _ => ListKind::Atomic,
        }
    }

    const MAIN: Scope = Scope::Main {
        exclude_status: true,
    };

    #[test]
    fn an_apply_that_drops_a_field_removes_it_unless_someone_else_owns_it() {
        let mut m = Managers::default();
        let first = json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "a", "labels": {"x": "1", "y": "2"}},
            "spec": {"replicas": 2, "containers": [{"name": "web", "image": "a"}, {"name": "side", "image": "b"}]}});
        let live = m
            .apply("mgr", "", None, &first, MAIN, false, &kinds)
            .unwrap();
        assert_eq!(live["spec"]["containers"][1]["name"], "side");
        // Another writer takes labels.y.
        let mut edited = live.clone();
        edited["metadata"]["labels"]["y"] = json!("3");
        m.record_update("other", "", Some(&live), &edited, MAIN, &kinds);
        let second = json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "a"},
            "spec": {"containers": [{"name": "web", "image": "a2"}]}});
        let out = m
            .apply("mgr", "", Some(&edited), &second, MAIN, false, &kinds)
            .unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"y": "3"}));
        assert!(out["spec"].get("replicas").is_none());
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "web", "image": "a2"}])
        );
    }

    #[test]
    fn a_different_value_owned_by_another_manager_conflicts_unless_forced() {
        let mut m = Managers::default();
        let live = json!({"metadata": {"name": "a"}, "spec": {"replicas": 2}});
        m.record_update("kubectl", "scale", None, &live, MAIN, &kinds);
        let applied = json!({"metadata": {"name": "a"}, "spec": {"replicas": 3}});
        let err = m
            .apply("ctl", "", Some(&live), &applied, MAIN, false, &kinds)
            .unwrap_err();
        assert_eq!(
            err,
            vec![("kubectl".to_string(), ".spec.replicas".to_string())]
        );
        // Same value: shared ownership, no conflict.
        let same = json!({"metadata": {"name": "a"}, "spec": {"replicas": 2}});
        assert!(m
            .apply("ctl", "", Some(&live), &same, MAIN, false, &kinds)
            .is_ok());
        let out = m
            .apply("ctl", "", Some(&live), &applied, MAIN, true, &kinds)
            .unwrap();
        assert_eq!(out["spec"]["replicas"], 3);
    }

    #[test]
    fn paths_render_like_the_apiserver() {
        let p = vec![
            PathElem::Field("spec".into()),
            PathElem::Field("containers".into()),
            PathElem::Key(r#"{"name":"web"}"#.into()),
            PathElem::Field("image".into()),
        ];
        assert_eq!(render_path(&p), r#".spec.containers[name="web"].image"#);
    }
}
