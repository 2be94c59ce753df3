//! HTTP dispatch: routes a request to discovery, OpenAPI or a resource verb, applies
//! injected faults, records the request, and renders the answer (JSON object, list,
//! metadata-only, Table, watch stream, or a `Status` error that always carries a reason).

use std::{sync::Arc, time::Duration};

use axum::{
    body::{Body, Bytes},
    http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode},
};
use serde_json::{json, Value};
use tracing::debug;

use super::{
    controls::{FaultAction, RequestRecord},
    discovery,
    errors::ApiError,
    registry::ResourceType,
    render::{self, Shape},
    selectors::{FieldSelector, LabelSelector},
    store::{DeleteOpts, FieldValidation, PatchType, State, Sub, WriteOpts},
    watch::{self, WatchRequest},
    Shared,
};

/// Returned to hyper to close the connection without an answer (injected fault).
#[derive(Debug, thiserror::Error)]
#[error("connection dropped by an injected fault")]
pub struct Dropped;

/// Where a path points.
#[derive(Debug, Clone, PartialEq)]
enum Route {
    Version,
    Health,
    Api,
    Apis,
    GroupVersion(String, String),
    Group(String),
    OpenApiIndex,
    OpenApiGroupVersion(String, String),
    OpenApiV2,
    Resource(ResourcePath),
    NotFound,
}

#[derive(Debug, Clone, PartialEq)]
struct ResourcePath {
    group: String,
    version: String,
    plural: String,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn route(state: &State, path: &str) -> Route {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["version"] => Route::Version,
        ["healthz" | "livez" | "readyz"] => Route::Health,
        ["api"] => Route::Api,
        ["apis"] => Route::Apis,
        ["api", v] => Route::GroupVersion(String::new(), v.to_string()),
        ["apis", g] => Route::Group(g.to_string()),
        ["apis", g, v] => Route::GroupVersion(g.to_string(), v.to_string()),
        ["openapi", "v3"] => Route::OpenApiIndex,
        ["openapi", "v3", "api", v] => Route::OpenApiGroupVersion(String::new(), v.to_string()),
        ["openapi", "v3", "apis", g, v] => Route::OpenApiGroupVersion(g.to_string(), v.to_string()),
        ["openapi", "v2"] => Route::OpenApiV2,
        ["api", v, rest @ ..] => resource_route(state, "", v, rest),
        ["apis", g, v, rest @ ..] => resource_route(state, g, v, rest),
        _ => Route::NotFound,
    }
}

fn resource_route(state: &State, group: &str, version: &str, rest: &[&str]) -> Route {
    let namespaced_plural = |p: &str| {
        state
            .registry
            .get(group, version, p)
            .is_some_and(|rt| rt.namespaced)
    };
    let (namespace, tail) = match rest {
        ["namespaces", ns, plural, tail @ ..] if namespaced_plural(plural) => {
            (Some(ns.to_string()), [&[*plural][..], tail].concat())
        }
        _ => (None, rest.to_vec()),
    };
    let (plural, name, sub) = match tail.as_slice() {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(name.to_string()), None),
        [plural, name, sub] => (*plural, Some(name.to_string()), Some(sub.to_string())),
        _ => return Route::NotFound,
    };
    if plural.is_empty() || name.as_deref() == Some("") {
        return Route::NotFound;
    }
    Route::Resource(ResourcePath {
        group: group.to_string(),
        version: version.to_string(),
        plural: plural.to_string(),
        namespace,
        name,
        sub,
    })
}

/// Query parameters, decoded (kube's leading `&` and empty pairs are skipped).
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(raw: &str) -> Self {
        Query(
            form_urlencoded::parse(raw.as_bytes())
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// One answer: status, extra headers, body.
struct Reply {
    status: u16,
    content_type: &'static str,
    headers: Vec<(header::HeaderName, String)>,
    body: Body,
}

impl Reply {
    fn json(status: u16, value: &Value) -> Self {
        Reply {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            body: Body::from(value.to_string()),
        }
    }

    fn error(err: &ApiError) -> Self {
        let mut reply = Reply::json(err.code, &err.to_status());
        if let Some(secs) = err
            .details
            .as_ref()
            .and_then(|d| d.get("retryAfterSeconds"))
            .and_then(Value::as_u64)
        {
            reply.headers.push((header::RETRY_AFTER, secs.to_string()));
        }
        reply
    }

    fn warnings(mut self, warnings: &[String]) -> Self {
        for w in warnings {
            let escaped = w.replace('\\', "\\\\").replace('"', "\\\"");
            self.headers
                .push((header::WARNING, format!("299 - \"{escaped}\"")));
        }
        self
    }

    fn into_response(self) -> Response<Body> {
        let mut resp = Response::new(self.body);
        *resp.status_mut() = StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK);
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                resp.headers_mut().append(name, v);
            }
        }
        resp
    }
}

/// The entry point hyper calls for every request.
pub async fn handle(
    shared: Arc<Shared>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Dropped> {
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(Body::new(body), 64 << 20).await {
        Ok(b) => b,
        Err(_) => Bytes::new(),
    };
    let path = parts.uri.path().to_string();
    let raw_query = parts.uri.query().unwrap_or_default().to_string();
    let query = Query::parse(&raw_query);
    let route = {
        let state = shared
            .state
            .lock()
            .expect("invariant: state lock not poisoned");
        route(&state, &path)
    };
    let mut record = RequestRecord {
        method: parts.method.to_string(),
        path: path.clone(),
        query: raw_query,
        params: query.0.clone(),
        verb: verb_of(&parts.method, &route, &query).to_string(),
        group: String::new(),
        resource: String::new(),
        namespace: None,
        name: None,
        subresource: String::new(),
        content_type: header_str(&parts.headers, header::CONTENT_TYPE),
        accept: header_str(&parts.headers, header::ACCEPT),
        user_agent: header_str(&parts.headers, header::USER_AGENT),
        body: String::from_utf8_lossy(&body).into_owned(),
        status: 0,
    };
    if let Route::Resource(rp) = &route {
        record.group = rp.group.clone();
        record.resource = rp.plural.clone();
        record.namespace = rp.namespace.clone();
        record.name = rp.name.clone();
        record.subresource = rp.sub.clone().unwrap_or_default();
    }

    let mut fault_reply = None;
    if let Some(action) = shared.controls.take(&record) {
        match action {
            FaultAction::Delay(d) => {
                let mut shutdown = shared.shutdown.clone();
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = shutdown.changed() => {}
                }
            }
            FaultAction::DropConnection => {
                debug!(request = %record.line(), "dropping the connection (injected)");
                shared.controls.record(record);
                return Err(Dropped);
            }
            FaultAction::Status {
                code,
                message,
                retry_after,
            } => {
                let mut err = ApiError::new(code, ApiError::reason_for_code(code), message);
                if let Some(secs) = retry_after {
                    err.details = Some(json!({"retryAfterSeconds": secs}));
                }
                fault_reply = Some(Reply::error(&err));
            }
        }
    }
    let reply = match fault_reply {
        Some(r) => r,
        None => dispatch(
            &shared,
            &parts.method,
            &parts.headers,
            &route,
            &query,
            &body,
        ),
    };
    record.status = reply.status;
    debug!(request = %record.line(), "served");
    shared.controls.record(record);
    Ok(reply.into_response())
}

fn verb_of(method: &Method, route: &Route, query: &Query) -> &'static str {
    match route {
        Route::Resource(rp) => match (method.as_str(), rp.name.is_some()) {
            ("GET", true) => "get",
            ("GET", false) if query.flag("watch") => "watch",
            ("GET", false) => "list",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("PATCH", _) => "patch",
            ("DELETE", true) => "delete",
            ("DELETE", false) => "deletecollection",
            _ => "other",
        },
        Route::Api | Route::Apis | Route::Group(_) | Route::GroupVersion(..) => "discovery",
        Route::OpenApiIndex | Route::OpenApiGroupVersion(..) | Route::OpenApiV2 => "openapi",
        Route::Version => "version",
        Route::Health | Route::NotFound => "other",
    }
}

fn dispatch(
    shared: &Arc<Shared>,
    method: &Method,
    headers: &HeaderMap,
    route: &Route,
    query: &Query,
    body: &Bytes,
) -> Reply {
    let accept = header_str(headers, header::ACCEPT).unwrap_or_default();
    if !matches!(route, Route::Resource(_)) && method != Method::GET {
        return Reply::error(&ApiError::method_not_allowed(method.as_str()));
    }
    let state = || {
        shared
            .state
            .lock()
            .expect("invariant: state lock not poisoned")
    };
    match route {
        Route::Version => Reply::json(200, &discovery::version()),
        Route::Health => Reply {
            status: 200,
            content_type: "text/plain",
            headers: Vec::new(),
            body: Body::from("ok"),
        },
        Route::Api | Route::Apis => {
            let core = *route == Route::Api;
            let st = state();
            if discovery::wants_aggregated(&accept) {
                let mut r = Reply::json(200, &discovery::aggregated(&st.registry, core));
                r.content_type = discovery::AGGREGATED_CONTENT_TYPE;
                r
            } else if core {
                Reply::json(200, &discovery::api_versions(&shared.address))
            } else {
                Reply::json(200, &discovery::api_group_list(&st.registry))
            }
        }
        Route::Group(g) => match discovery::group(&state().registry, g) {
            Some(v) => Reply::json(200, &v),
            None => Reply::error(&ApiError::no_route()),
        },
        Route::GroupVersion(g, v) => match discovery::resource_list(&state().registry, g, v) {
            Some(v) => Reply::json(200, &v),
            None => Reply::error(&ApiError::no_route()),
        },
        Route::OpenApiIndex => Reply::json(200, &discovery::openapi_index(&state().registry)),
        Route::OpenApiGroupVersion(g, v) => {
            match discovery::openapi_group_version(&state().registry, g, v) {
                Some(doc) => Reply::json(200, &doc),
                None => Reply::error(&ApiError::no_route()),
            }
        }
        Route::OpenApiV2 | Route::NotFound => Reply::error(&ApiError::no_route()),
        Route::Resource(rp) => match resource(shared, method, headers, rp, query, body) {
            Ok(reply) => reply,
            Err(err) => Reply::error(&err),
        },
    }
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    serde_json::from_slice(body)
        .or_else(|_| serde_yaml::from_slice::<Value>(body))
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

fn write_opts(headers: &HeaderMap, query: &Query) -> Result<WriteOpts, ApiError> {
    let mut dry_run = false;
    for d in query.all("dryRun") {
        match d {
            "All" => dry_run = true,
            "" => {}
            other => {
                return Err(ApiError::bad_request(format!(
                    "dryRun: Unsupported value: {other:?}: supported values: \"All\""
                )))
            }
        }
    }
    let explicit = query.get("fieldManager").filter(|m| !m.is_empty());
    let manager = match explicit {
        Some(m) => m.to_string(),
        None => header_str(headers, header::USER_AGENT)
            .and_then(|ua| ua.split('/').next().map(|s| s.trim().to_string()))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown".to_string()),
    };
    let field_validation = match query.get("fieldValidation") {
        None | Some("") | Some("Warn") => FieldValidation::Warn,
        Some("Strict") => FieldValidation::Strict,
        Some("Ignore") => FieldValidation::Ignore,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "fieldValidation: Unsupported value: {other:?}: supported values: \"Ignore\", \
                 \"Strict\", \"Warn\""
            )))
        }
    };
    Ok(WriteOpts {
        dry_run,
        manager,
        manager_explicit: explicit.is_some(),
        force: query.flag("force"),
        field_validation,
    })
}

fn list_meta(rv: u64, continue_token: Option<&str>, remaining: Option<u64>) -> Value {
    let mut m = json!({"resourceVersion": rv.to_string()});
    if let Some(c) = continue_token {
        m["continue"] = json!(c);
    }
    if let Some(r) = remaining {
        m["remainingItemCount"] = json!(r);
    }
    m
}

fn shaped(rt: &ResourceType, obj: Value, shape: Shape) -> Value {
    match shape {
        Shape::Full => obj,
        Shape::Metadata => render::partial_metadata(&obj),
        Shape::Table => {
            let rv = obj
                .pointer("/metadata/resourceVersion")
                .cloned()
                .unwrap_or(json!(""));
            render::table(rt, &[obj], json!({"resourceVersion": rv}))
        }
    }
}

fn resource(
    shared: &Arc<Shared>,
    method: &Method,
    headers: &HeaderMap,
    rp: &ResourcePath,
    query: &Query,
    body: &Bytes,
) -> Result<Reply, ApiError> {
    let accept = header_str(headers, header::ACCEPT).unwrap_or_default();
    let shape = Shape::from_accept(&accept);
    let mut state = shared
        .state
        .lock()
        .expect("invariant: state lock not poisoned");
    let rt = state
        .registry
        .get(&rp.group, &rp.version, &rp.plural)
        .cloned()
        .ok_or_else(ApiError::no_route)?;
    let sub = match rp.sub.as_deref() {
        None => Sub::Main,
        Some("status") if rt.status => Sub::Status,
        Some("scale") if rt.scale.is_some() => Sub::Scale,
        Some(_) => return Err(ApiError::no_route()),
    };
    if !rt.namespaced && rp.namespace.is_some() {
        return Err(ApiError::no_route());
    }
    let ns = rp.namespace.clone().unwrap_or_default();
    let needs_ns = rt.namespaced && rp.namespace.is_none();
    match (method.as_str(), rp.name.as_deref()) {
        ("GET", Some(name)) => {
            if needs_ns {
                return Err(ApiError::no_route());
            }
            let obj = state.get(&rt, &ns, name)?;
            if sub == Sub::Scale {
                return Ok(Reply::json(200, &State::scale_of(&rt, &obj)?));
            }
            Ok(Reply::json(200, &shaped(&rt, obj, shape)))
        }
        ("GET", None) => {
            let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or_default())
                .map_err(ApiError::bad_request)?;
            let fields =
                FieldSelector::parse(query.get("fieldSelector").unwrap_or_default(), &rt.kind)
                    .map_err(ApiError::bad_request)?;
            let namespace = rp.namespace.clone();
            if query.flag("watch") {
                let send_initial = query.flag("sendInitialEvents");
                let bookmarks = query.flag("allowWatchBookmarks");
                if send_initial {
                    let mut errs = Vec::new();
                    if query.get("resourceVersionMatch") != Some("NotOlderThan") {
                        errs.push("sendInitialEvents: Forbidden: sendInitialEvents is forbidden for watch unless resourceVersionMatch is set to NotOlderThan");
                    }
                    if !bookmarks {
                        errs.push("allowWatchBookmarks: Forbidden: allowWatchBookmarks must be set to true when sendInitialEvents is set");
                    }
                    if !errs.is_empty() {
                        return Err(ApiError::new(
                            422,
                            "Invalid",
                            format!(
                                "ListOptions.meta.k8s.io \"\" is invalid: {}",
                                errs.join(", ")
                            ),
                        ));
                    }
                }
                let requested = query
                    .get("timeoutSeconds")
                    .and_then(|t| t.parse::<u64>().ok())
                    .map(Duration::from_secs)
                    .unwrap_or(shared.config.max_watch_timeout);
                drop(state);
                let req = WatchRequest {
                    rt,
                    namespace,
                    labels,
                    fields,
                    resource_version: query.get("resourceVersion").map(str::to_string),
                    send_initial_events: send_initial,
                    bookmarks,
                    timeout: requested.min(shared.config.max_watch_timeout),
                    shape,
                };
                let body = watch::start(shared.clone(), req);
                return Ok(Reply {
                    status: 200,
                    content_type: "application/json",
                    headers: Vec::new(),
                    body,
                });
            }
            if query.get("resourceVersionMatch") == Some("Exact") {
                if let Some(rv) = query
                    .get("resourceVersion")
                    .and_then(|r| r.parse::<u64>().ok())
                {
                    if rv < state.oldest() {
                        return Err(ApiError::expired(format!(
                            "too old resource version: {rv} ({})",
                            state.oldest()
                        )));
                    }
                }
            }
            let limit = query.get("limit").and_then(|l| l.parse::<usize>().ok());
            let page = state.list(
                &rt,
                namespace.as_deref(),
                &labels,
                &fields,
                limit,
                query.get("continue").filter(|c| !c.is_empty()),
            )?;
            let meta = list_meta(
                page.resource_version,
                page.continue_token.as_deref(),
                page.remaining,
            );
            let out = match shape {
                Shape::Full => json!({
                    "kind": rt.list_kind, "apiVersion": rt.api_version(),
                    "metadata": meta, "items": page.items,
                }),
                Shape::Metadata => render::partial_metadata_list(&page.items, meta),
                Shape::Table => render::table(&rt, &page.items, meta),
            };
            Ok(Reply::json(200, &out))
        }
        ("POST", None) => {
            if needs_ns {
                return Err(ApiError::method_not_allowed("POST"));
            }
            let opts = write_opts(headers, query)?;
            let outcome = state.create(&rt, &ns, parse_body(body)?, &opts)?;
            Ok(
                Reply::json(201, &shaped(&rt, outcome.object, shape.no_table()))
                    .warnings(&outcome.warnings),
            )
        }
        ("PUT", Some(name)) => {
            if needs_ns {
                return Err(ApiError::no_route());
            }
            let opts = write_opts(headers, query)?;
            let outcome = state.update(&rt, &ns, name, parse_body(body)?, sub, &opts)?;
            let code = if outcome.created { 201 } else { 200 };
            Ok(
                Reply::json(code, &shaped(&rt, outcome.object, shape.no_table()))
                    .warnings(&outcome.warnings),
            )
        }
        ("PATCH", Some(name)) => {
            if needs_ns {
                return Err(ApiError::no_route());
            }
            let ct = header_str(headers, header::CONTENT_TYPE).unwrap_or_default();
            let media = ct.split(';').next().unwrap_or_default().trim();
            let type_ = match media {
                "application/merge-patch+json" => PatchType::Merge,
                "application/json-patch+json" => PatchType::Json,
                "application/strategic-merge-patch+json" => PatchType::Strategic,
                "application/apply-patch+yaml" => PatchType::Apply,
                other => return Err(ApiError::unsupported_media_type(other)),
            };
            let opts = write_opts(headers, query)?;
            let patch = parse_body(body)?;
            let outcome = state.patch(&rt, &ns, name, type_, &patch, sub, &opts)?;
            let code = if outcome.created { 201 } else { 200 };
            Ok(
                Reply::json(code, &shaped(&rt, outcome.object, shape.no_table()))
                    .warnings(&outcome.warnings),
            )
        }
        ("DELETE", Some(name)) => {
            if needs_ns || sub != Sub::Main {
                return Err(ApiError::no_route());
            }
            let opts = delete_opts(query, body)?;
            let obj = state.delete(&rt, &ns, name, &opts)?;
            Ok(Reply::json(200, &shaped(&rt, obj, shape.no_table())))
        }
        ("DELETE", None) => {
            let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or_default())
                .map_err(ApiError::bad_request)?;
            let fields =
                FieldSelector::parse(query.get("fieldSelector").unwrap_or_default(), &rt.kind)
                    .map_err(ApiError::bad_request)?;
            let opts = delete_opts(query, body)?;
            let page = state.list(&rt, rp.namespace.as_deref(), &labels, &fields, None, None)?;
            let mut deleted = Vec::new();
            for item in page.items {
                let name = item
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let ons = item
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                if let Ok(obj) = state.delete(&rt, &ons, &name, &opts) {
                    deleted.push(obj);
                }
            }
            Ok(Reply::json(
                200,
                &json!({
                    "kind": rt.list_kind, "apiVersion": rt.api_version(),
                    "metadata": {"resourceVersion": state.current_rv().to_string()},
                    "items": deleted,
                }),
            ))
        }
        (m, _) => Err(ApiError::method_not_allowed(m)),
    }
}

impl Shape {
    /// Writes answer objects (or metadata), never tables.
    fn no_table(self) -> Shape {
        match self {
            Shape::Table => Shape::Full,
            other => other,
        }
    }
}

fn delete_opts(query: &Query, body: &Bytes) -> Result<DeleteOpts, ApiError> {
    let parsed: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
    };
    let body_dry_run = parsed
        .get("dryRun")
        .and_then(Value::as_array)
        .is_some_and(|d| d.iter().any(|x| x == "All"));
    let query_dry_run = query.all("dryRun").any(|d| d == "All");
    let orphan = parsed.get("orphanDependents").and_then(Value::as_bool) == Some(true)
        || query.get("orphanDependents") == Some("true");
    let propagation = parsed
        .get("propagationPolicy")
        .and_then(Value::as_str)
        .or(query.get("propagationPolicy"))
        .map(str::to_string)
        .or_else(|| orphan.then(|| "Orphan".to_string()));
    if let Some(p) = &propagation {
        if !["Background", "Foreground", "Orphan"].contains(&p.as_str()) {
            return Err(ApiError::bad_request(format!(
                "propagationPolicy: Unsupported value: {p:?}"
            )));
        }
    }
    Ok(DeleteOpts {
        dry_run: body_dry_run || query_dry_run,
        propagation,
        precondition_uid: parsed
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_string),
        precondition_rv: parsed
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_route_to_namespaced_cluster_and_subresources() {
        let state = State::new(10);
        let r = |p: &str| route(&state, p);
        let Route::Resource(rp) = r("/apis/apps/v1/namespaces/default/deployments/web/scale")
        else {
            panic!("not a resource route");
        };
        assert_eq!(rp.namespace.as_deref(), Some("default"));
        assert_eq!(rp.name.as_deref(), Some("web"));
        assert_eq!(rp.sub.as_deref(), Some("scale"));
        let Route::Resource(rp) = r("/apis/apps/v1/deployments") else {
            panic!("not a resource route");
        };
        assert_eq!((rp.namespace, rp.name), (None, None));
        let Route::Resource(rp) = r("/api/v1/namespaces/default") else {
            panic!("not a resource route");
        };
        assert_eq!(rp.plural, "namespaces");
        assert_eq!(rp.name.as_deref(), Some("default"));
        let Route::Resource(rp) = r("/api/v1/namespaces/default/status") else {
            panic!("not a resource route");
        };
        assert_eq!(rp.sub.as_deref(), Some("status"));
        assert_eq!(
            r("/apis/apps/v1"),
            Route::GroupVersion("apps".into(), "v1".into())
        );
        assert_eq!(
            r("/openapi/v3/api/v1"),
            Route::OpenApiGroupVersion(String::new(), "v1".into())
        );
    }

    #[test]
    fn kube_style_queries_with_a_leading_ampersand_parse() {
        let q = Query::parse("&watch=true&labelSelector=app%3Dweb&&timeoutSeconds=290");
        assert!(q.flag("watch"));
        assert_eq!(q.get("labelSelector"), Some("app=web"));
        assert_eq!(q.get("timeoutSeconds"), Some("290"));
    }
}
