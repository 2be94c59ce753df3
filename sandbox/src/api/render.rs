//! Response shapes other than plain objects: metadata-only (`as=PartialObjectMetadata[List]`)
//! and the `meta.k8s.io/v1 Table` kubectl asks for in `get`.

use serde_json::{json, Value};

use super::{registry::ResourceType, store::get_path};

/// What the client's `Accept` header asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Full,
    Metadata,
    Table,
}

impl Shape {
    pub fn from_accept(accept: &str) -> Shape {
        // The first acceptable type wins; kubectl lists Table first, then plain JSON.
        for part in accept.split(',') {
            let p = part.replace(' ', "");
            if p.contains("as=Table") {
                return Shape::Table;
            }
            if p.contains("as=PartialObjectMetadata") {
                return Shape::Metadata;
            }
            if p.starts_with("application/json") || p.starts_with("*/*") {
                return Shape::Full;
            }
        }
        Shape::Full
    }
}

/// `PartialObjectMetadata` for one object.
pub fn partial_metadata(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
    })
}

/// `PartialObjectMetadataList` for a list.
pub fn partial_metadata_list(items: &[Value], list_meta: Value) -> Value {
    json!({
        "kind": "PartialObjectMetadataList",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "items": items.iter().map(partial_metadata).collect::<Vec<_>>(),
    })
}

/// `5s`, `3m`, `2h`, `4d`, like kubectl's `HumanDuration` (coarsely).
pub fn age(created: Option<&str>) -> String {
    let Some(ts) = created.and_then(|c| c.parse::<jiff::Timestamp>().ok()) else {
        return "<unknown>".to_string();
    };
    let secs = (jiff::Timestamp::now().as_second() - ts.as_second()).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 3600 * 3 => format!("{}m", s / 60),
        s if s < 86400 * 2 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn int(obj: &Value, path: &str) -> i64 {
    get_path(obj, path).and_then(Value::as_i64).unwrap_or(0)
}

fn text(obj: &Value, path: &str) -> String {
    match get_path(obj, path) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn column(name: &str, type_: &str) -> Value {
    let format = if name == "Name" { "name" } else { "" };
    json!({"name": name, "type": type_, "format": format, "description": "", "priority": 0})
}

/// Columns and cells for a kind, the way the real printers show them (main columns only).
fn columns_and_cells(rt: &ResourceType, obj: &Value) -> (Vec<Value>, Vec<Value>) {
    let name = text(obj, "metadata.name");
    let created = obj
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str);
    let mut cols = vec![column("Name", "string")];
    let mut cells = vec![json!(name)];
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("apps", "Deployment") => {
            cols.extend([
                column("Ready", "string"),
                column("Up-to-date", "integer"),
                column("Available", "integer"),
            ]);
            cells.extend([
                json!(format!(
                    "{}/{}",
                    int(obj, "status.readyReplicas"),
                    int(obj, "spec.replicas")
                )),
                json!(int(obj, "status.updatedReplicas")),
                json!(int(obj, "status.availableReplicas")),
            ]);
        }
        ("apps", "ReplicaSet") => {
            cols.extend([
                column("Desired", "integer"),
                column("Current", "integer"),
                column("Ready", "integer"),
            ]);
            cells.extend([
                json!(int(obj, "spec.replicas")),
                json!(int(obj, "status.replicas")),
                json!(int(obj, "status.readyReplicas")),
            ]);
        }
        ("", "Pod") => {
            let statuses = obj
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let total = obj
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let ready = statuses
                .iter()
                .filter(|s| s.get("ready").and_then(Value::as_bool) == Some(true))
                .count();
            let restarts: i64 = statuses
                .iter()
                .filter_map(|s| s.get("restartCount").and_then(Value::as_i64))
                .sum();
            let phase = text(obj, "status.phase");
            let status = if obj.pointer("/metadata/deletionTimestamp").is_some() {
                "Terminating".to_string()
            } else {
                phase
            };
            cols.extend([
                column("Ready", "string"),
                column("Status", "string"),
                column("Restarts", "string"),
            ]);
            cells.extend([
                json!(format!("{ready}/{total}")),
                json!(status),
                json!(restarts.to_string()),
            ]);
        }
        ("", "Service") => {
            let ports: Vec<String> = obj
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            let port = p.get("port").map(Value::to_string).unwrap_or_default();
                            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                            match p.get("nodePort") {
                                Some(np) => format!("{port}:{np}/{proto}"),
                                None => format!("{port}/{proto}"),
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            cols.extend([
                column("Type", "string"),
                column("Cluster-IP", "string"),
                column("External-IP", "string"),
                column("Port(s)", "string"),
            ]);
            cells.extend([
                json!(text(obj, "spec.type")),
                json!(text(obj, "spec.clusterIP")),
                json!("<none>"),
                json!(if ports.is_empty() {
                    "<none>".to_string()
                } else {
                    ports.join(",")
                }),
            ]);
        }
        ("networking.k8s.io", "Ingress") => {
            let class = obj
                .pointer("/spec/ingressClassName")
                .and_then(Value::as_str)
                .unwrap_or("<none>")
                .to_string();
            let hosts: Vec<String> = obj
                .pointer("/spec/rules")
                .and_then(Value::as_array)
                .map(|rs| {
                    rs.iter()
                        .map(|r| {
                            r.get("host")
                                .and_then(Value::as_str)
                                .unwrap_or("*")
                                .to_string()
                        })
                        .collect()
                })
                .unwrap_or_default();
            cols.extend([
                column("Class", "string"),
                column("Hosts", "string"),
                column("Address", "string"),
                column("Ports", "string"),
            ]);
            cells.extend([
                json!(class),
                json!(if hosts.is_empty() {
                    "*".to_string()
                } else {
                    hosts.join(",")
                }),
                json!(""),
                json!("80"),
            ]);
        }
        ("", "Namespace") => {
            cols.push(column("Status", "string"));
            cells.push(json!(text(obj, "status.phase")));
        }
        _ if !rt.printer_columns.is_empty() => {
            // A CRD's own columns replace the default Age column.
            for c in rt.printer_columns.iter().filter(|c| c.priority == 0) {
                cols.push(json!({"name": c.name, "type": c.type_, "format": "",
                    "description": c.description, "priority": c.priority}));
                let path = c.json_path.trim_start_matches('.');
                let cell = get_path(obj, path).cloned().unwrap_or(Value::Null);
                cells.push(match (c.type_.as_str(), cell) {
                    ("date", Value::String(s)) => json!(age(Some(&s))),
                    (_, Value::Null) => json!("<none>"),
                    (_, v) => v,
                });
            }
            return (cols, cells);
        }
        _ => {}
    }
    cols.push(column("Age", "string"));
    cells.push(json!(age(created)));
    (cols, cells)
}

/// A Table for a list of objects (a single GET is a table with one row).
pub fn table(rt: &ResourceType, objects: &[Value], list_meta: Value) -> Value {
    let mut columns = None;
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let (cols, cells) = columns_and_cells(rt, o);
            columns.get_or_insert(cols);
            json!({"cells": cells, "object": partial_metadata(o)})
        })
        .collect();
    let columns = columns.unwrap_or_else(|| columns_and_cells(rt, &json!({})).0);
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": columns,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectl_accept_headers_pick_the_table() {
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(Shape::from_accept(kubectl), Shape::Table);
        assert_eq!(
            Shape::from_accept("application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"),
            Shape::Metadata
        );
        assert_eq!(Shape::from_accept("application/json, */*"), Shape::Full);
    }
}
