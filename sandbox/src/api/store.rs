//! The object store: one global resourceVersion counter (etcd-revision style), every object
//! as JSON, an event history with a compaction floor, and the write pipeline every verb goes
//! through (preconditions, status/spec separation, defaulting, pruning, validation,
//! generation, no-op detection, finalizers, garbage collection).

use std::{
    collections::{BTreeMap, BTreeSet, HashSet, VecDeque},
    sync::Arc,
};

use serde_json::{json, Map, Value};
use tokio::sync::broadcast;

use super::{
    apply::{Managers, Scope},
    defaults,
    errors::{ApiError, FieldError},
    patch::{self, ListKind},
    registry::{Registry, ResKey, ResourceType, ScaleSelector},
    schema,
    selectors::{self, FieldSelector, LabelSelector},
    typed::{self, Decoded},
};

/// Watch event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change in the history, shared by every watcher.
#[derive(Debug)]
pub struct StoredEvent {
    pub rv: u64,
    pub type_: EventType,
    pub key: ResKey,
    pub object: Arc<Value>,
    /// The state before a MODIFIED, for selector transitions.
    pub previous: Option<Arc<Value>>,
}

/// A live feed of every stored event.
pub type Subscription = broadcast::Receiver<Arc<StoredEvent>>;

/// Which part of the object a write addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sub {
    Main,
    Status,
    Scale,
}

impl Sub {
    pub fn name(self) -> &'static str {
        match self {
            Sub::Main => "",
            Sub::Status => "status",
            Sub::Scale => "scale",
        }
    }
}

/// `fieldValidation` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

/// Per-request write options.
#[derive(Debug, Clone)]
pub struct WriteOpts {
    pub dry_run: bool,
    /// `fieldManager`, or derived from the User-Agent.
    pub manager: String,
    /// Whether `fieldManager` was given explicitly (SSA requires it).
    pub manager_explicit: bool,
    pub force: bool,
    pub field_validation: FieldValidation,
}

impl Default for WriteOpts {
    fn default() -> Self {
        WriteOpts {
            dry_run: false,
            manager: "unknown".to_string(),
            manager_explicit: false,
            force: false,
            field_validation: FieldValidation::Warn,
        }
    }
}

/// What a write produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub object: Value,
    /// 201 rather than 200.
    pub created: bool,
    /// `Warning` headers.
    pub warnings: Vec<String>,
}

/// The patch formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Json,
    Strategic,
    Apply,
}

/// `DeleteOptions` (body and query merged).
#[derive(Debug, Clone, Default)]
pub struct DeleteOpts {
    pub dry_run: bool,
    pub propagation: Option<String>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
}

/// A page of a list.
#[derive(Debug)]
pub struct ListPage {
    pub items: Vec<Value>,
    pub resource_version: u64,
    pub continue_token: Option<String>,
    pub remaining: Option<u64>,
}

#[derive(Debug, Clone)]
struct Entry {
    obj: Value,
    managers: Managers,
}

type Objects = BTreeMap<(String, String), Entry>;

/// Everything behind the server's lock.
pub struct State {
    pub registry: Registry,
    rv: u64,
    objects: BTreeMap<ResKey, Objects>,
    history: VecDeque<Arc<StoredEvent>>,
    /// Every event with an RV greater than this is still in `history`.
    oldest: u64,
    history_limit: usize,
    events: broadcast::Sender<Arc<StoredEvent>>,
}

static NULL: Value = Value::Null;

fn meta(v: &Value) -> &Value {
    v.get("metadata").unwrap_or(&NULL)
}

fn meta_str<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    meta(v).get(key).and_then(Value::as_str)
}

fn meta_mut(v: &mut Value) -> &mut Map<String, Value> {
    if !v.is_object() {
        *v = json!({});
    }
    let m = v.as_object_mut().expect("invariant: just made an object");
    let entry = m.entry("metadata").or_insert_with(|| json!({}));
    if !entry.is_object() {
        *entry = json!({});
    }
    entry
        .as_object_mut()
        .expect("invariant: just made an object")
}

fn finalizers(v: &Value) -> Vec<String> {
    meta(v)
        .get("finalizers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn is_terminating(v: &Value) -> bool {
    meta(v)
        .get("deletionTimestamp")
        .is_some_and(|t| !t.is_null())
}

fn owner_uids(v: &Value) -> Vec<String> {
    meta(v)
        .get("ownerReferences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|r| r.get("uid").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Reads a dotted path.
pub fn get_path<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |cur, p| cur.get(p))
}

fn set_path(v: &mut Value, path: &str, value: Value) {
    let mut cur = v;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, p) in parts.iter().enumerate() {
        if !cur.is_object() {
            *cur = json!({});
        }
        let m = cur.as_object_mut().expect("invariant: just made an object");
        if i + 1 == parts.len() {
            m.insert(p.to_string(), value);
            return;
        }
        cur = m.entry(p.to_string()).or_insert_with(|| json!({}));
    }
}

/// Sets `apiVersion` and `kind` for the version a request addressed.
pub fn with_type_meta(rt: &ResourceType, mut obj: Value) -> Value {
    if let Some(m) = obj.as_object_mut() {
        m.insert("apiVersion".into(), json!(rt.api_version()));
        m.insert("kind".into(), json!(rt.kind));
    }
    obj
}

fn random_suffix() -> String {
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let uuid = uuid::Uuid::new_v4();
    uuid.as_bytes()[..5]
        .iter()
        .map(|b| CHARS[*b as usize % CHARS.len()] as char)
        .collect()
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

impl State {
    pub fn new(history_limit: usize) -> Self {
        let (events, _) = broadcast::channel(4096);
        State {
            registry: Registry::new(),
            rv: 1,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            oldest: 1,
            history_limit: history_limit.max(1),
            events,
        }
    }

    pub fn current_rv(&self) -> u64 {
        self.rv
    }

    /// The RV below which watches get `410 Expired`.
    pub fn oldest(&self) -> u64 {
        self.oldest
    }

    /// Moves the compaction floor to now: watches from any older RV get 410.
    pub fn compact(&mut self) {
        self.history.clear();
        self.oldest = self.rv;
    }

    fn kinds(rt: &ResourceType) -> impl Fn(&[String]) -> ListKind + '_ {
        move |p: &[String]| patch::list_kind(rt, p)
    }

    fn emit(&mut self, type_: EventType, key: &ResKey, obj: &Value, previous: Option<&Value>) {
        let event = Arc::new(StoredEvent {
            rv: self.rv,
            type_,
            key: key.clone(),
            object: Arc::new(obj.clone()),
            previous: previous.map(|p| Arc::new(p.clone())),
        });
        self.history.push_back(event.clone());
        while self.history.len() > self.history_limit {
            if let Some(dropped) = self.history.pop_front() {
                self.oldest = dropped.rv;
            }
        }
        let _ = self.events.send(event);
    }

    fn bump(&mut self, obj: &mut Value) {
        self.rv += 1;
        meta_mut(obj).insert("resourceVersion".into(), json!(self.rv.to_string()));
    }

    /// The history after `rv` for one resource, and a live subscription, atomically.
    pub fn watch_from(
        &self,
        key: &ResKey,
        rv: u64,
    ) -> Result<(Vec<Arc<StoredEvent>>, Subscription), ApiError> {
        if rv < self.oldest {
            return Err(ApiError::expired(format!(
                "too old resource version: {rv} ({})",
                self.oldest
            )));
        }
        let replay = self
            .history
            .iter()
            .filter(|e| e.rv > rv && e.key == *key)
            .cloned()
            .collect();
        Ok((replay, self.events.subscribe()))
    }

    /// Current objects (for synthetic ADDED events) and a live subscription, atomically.
    pub fn snapshot(&self, key: &ResKey) -> (Vec<Value>, u64, Subscription) {
        let objects = self
            .objects
            .get(key)
            .map(|objs| objs.values().map(|e| e.obj.clone()).collect())
            .unwrap_or_default();
        (objects, self.rv, self.events.subscribe())
    }

    fn entry(&self, rt: &ResourceType, ns: &str, name: &str) -> Option<&Entry> {
        self.objects
            .get(&rt.key())?
            .get(&(ns.to_string(), name.to_string()))
    }

    /// Raw stored object (any version).
    pub fn peek(&self, key: &ResKey, ns: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(key)?
            .get(&(ns.to_string(), name.to_string()))
            .map(|e| &e.obj)
    }

    pub fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.entry(rt, ns, name)
            .map(|e| with_type_meta(rt, e.obj.clone()))
            .ok_or_else(|| ApiError::not_found(rt, name))
    }

    pub fn list(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
        limit: Option<usize>,
        continue_token: Option<&str>,
    ) -> Result<ListPage, ApiError> {
        let (list_rv, start_after) = match continue_token {
            None => (self.rv, None),
            Some(token) => {
                let decoded = unhex(token)
                    .and_then(|t| {
                        let (rv, rest) = t.split_once(':')?;
                        let (ns, name) = rest.split_once('/')?;
                        Some((rv.parse::<u64>().ok()?, (ns.to_string(), name.to_string())))
                    })
                    .ok_or_else(|| ApiError::bad_request("continue key is not valid"))?;
                if decoded.0 < self.oldest {
                    let mut err = ApiError::expired(
                        "The provided continue parameter is too old to display a consistent \
                         list result. You can start a new list without the continue parameter, \
                         or use the continue token in this response to retrieve the remainder \
                         of the results. Continuing with the provided token results in an \
                         inconsistent list - objects that were created, modified, or deleted \
                         between the time the first chunk was returned and now may show up in \
                         the list.",
                    );
                    let fresh = hex(&format!("{}:{}/{}", self.rv, decoded.1 .0, decoded.1 .1));
                    err.metadata = Some(json!({"continue": fresh}));
                    return Err(err);
                }
                (decoded.0, Some(decoded.1))
            }
        };
        let empty = Objects::new();
        let objects = self.objects.get(&rt.key()).unwrap_or(&empty);
        let matching: Vec<(&(String, String), &Entry)> = objects
            .iter()
            .filter(|(k, _)| start_after.as_ref().is_none_or(|s| *k > s))
            .filter(|((ons, _), _)| ns.is_none_or(|n| n == ons))
            .filter(|(_, e)| labels.matches_object(&e.obj) && fields.matches(&e.obj))
            .collect();
        let total = matching.len();
        let take = limit.filter(|l| *l > 0).unwrap_or(usize::MAX).min(total);
        let items: Vec<Value> = matching[..take]
            .iter()
            .map(|(_, e)| {
                let mut o = e.obj.clone();
                if rt.is_custom() {
                    o = with_type_meta(rt, o);
                } else if let Some(m) = o.as_object_mut() {
                    m.remove("apiVersion");
                    m.remove("kind");
                }
                o
            })
            .collect();
        let (continue_token, remaining) = if take < total {
            let ((lns, lname), _) = matching[take - 1];
            let token = hex(&format!("{list_rv}:{lns}/{lname}"));
            let remaining =
                (labels.is_empty() && fields.is_empty()).then_some((total - take) as u64);
            (Some(token), remaining)
        } else {
            (None, None)
        };
        Ok(ListPage {
            items,
            resource_version: list_rv,
            continue_token,
            remaining,
        })
    }

    fn check_namespace(&self, rt: &ResourceType, ns: &str) -> Result<(), ApiError> {
        if !rt.namespaced {
            return Ok(());
        }
        let key = ResKey {
            group: String::new(),
            plural: "namespaces".into(),
        };
        match self.peek(&key, "", ns) {
            Some(n) if is_terminating(n) => Err(ApiError::new(
                403,
                "Forbidden",
                format!(
                    "unable to create new content in namespace {ns} because it is being \
                     terminated"
                ),
            )),
            Some(_) => Ok(()),
            None => Err(ApiError::namespace_not_found(ns)),
        }
    }

    fn check_type_meta(rt: &ResourceType, body: &Value) -> Result<(), ApiError> {
        if let Some(av) = body.get("apiVersion").and_then(Value::as_str) {
            let group_ok = match av.rsplit_once('/') {
                Some((g, _)) => g == rt.group,
                None => rt.group.is_empty(),
            };
            if !group_ok {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({av}) does not match the expected API version ({})",
                    rt.api_version()
                )));
            }
        }
        if let Some(kind) = body.get("kind").and_then(Value::as_str) {
            if kind != rt.kind {
                return Err(ApiError::bad_request(format!(
                    "the kind in the data ({kind}) does not match the expected kind ({})",
                    rt.kind
                )));
            }
        }
        Ok(())
    }

    /// `fieldValidation` for fields the schema or type does not know: a 400 under `Strict`,
    /// `Warning` headers under `Warn` (the default), nothing under `Ignore`.
    fn unknown_fields(
        rt: &ResourceType,
        opts: &WriteOpts,
        paths: &[String],
        warnings: &mut Vec<String>,
    ) -> Result<(), ApiError> {
        if paths.is_empty() {
            return Ok(());
        }
        let fields = paths.iter().map(|p| format!("unknown field \"{p}\""));
        match opts.field_validation {
            FieldValidation::Strict => Err(ApiError::bad_request(format!(
                "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
                rt.kind,
                rt.version,
                rt.kind,
                fields.collect::<Vec<_>>().join(", ")
            ))),
            FieldValidation::Warn => {
                warnings.extend(fields);
                Ok(())
            }
            FieldValidation::Ignore => Ok(()),
        }
    }

    /// Defaulting, pruning and validation shared by create and update.
    fn admit(
        &self,
        rt: &ResourceType,
        obj: &mut Value,
        old: Option<&Value>,
        opts: &WriteOpts,
        warnings: &mut Vec<String>,
    ) -> Result<(), ApiError> {
        let name = meta_str(obj, "name").unwrap_or_default().to_string();
        let mut errs: Vec<FieldError> = Vec::new();
        match rt.schema() {
            Some(s) => {
                let pruned = schema::prune(obj, s);
                Self::unknown_fields(rt, opts, &pruned, warnings)?;
                schema::apply_defaults(obj, s);
                errs.extend(defaults::validate_metadata(rt, obj));
                errs.extend(schema::validate(obj, s));
            }
            None => {
                match typed::decode(rt, obj) {
                    Decoded::WrongType(msg) => {
                        return Err(ApiError::bad_request(format!(
                            "{} in version \"{}\" cannot be handled as a {}: {msg}",
                            rt.kind, rt.version, rt.kind
                        )))
                    }
                    Decoded::Unknown(paths) => {
                        Self::unknown_fields(rt, opts, &paths, warnings)?;
                        typed::remove_paths(obj, &paths);
                    }
                    Decoded::Unmodelled => {}
                }
                defaults::apply(rt, obj);
                if rt.kind == "Service" && rt.group.is_empty() {
                    self.allocate_cluster_ip(obj, old, &mut errs);
                }
                errs.extend(defaults::validate(rt, obj, old));
            }
        }
        if rt.kind == "CustomResourceDefinition" {
            if let Err(e) = super::registry::crd_types(obj) {
                errs.push(FieldError::invalid("spec", &json!(null), e));
            }
        }
        if let Some(old) = old {
            if is_terminating(old) {
                let before = finalizers(old);
                if finalizers(obj).iter().any(|f| !before.contains(f)) {
                    errs.push(FieldError::forbidden(
                        "metadata.finalizers",
                        "no new finalizers can be added if the object is being deleted",
                    ));
                }
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid(rt, &name, &errs))
        }
    }

    fn used_cluster_ips(&self) -> BTreeSet<String> {
        let key = ResKey {
            group: String::new(),
            plural: "services".into(),
        };
        self.objects
            .get(&key)
            .map(|objs| {
                objs.values()
                    .filter_map(|e| e.obj.pointer("/spec/clusterIP").and_then(Value::as_str))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `spec.clusterIP(s)`: kept on update when omitted, allocated from 10.96.0.0/16 on create,
    /// and an explicit one that is already used is rejected.
    fn allocate_cluster_ip(
        &self,
        obj: &mut Value,
        old: Option<&Value>,
        errs: &mut Vec<FieldError>,
    ) {
        let ty = obj
            .pointer("/spec/type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
            .to_string();
        if ty == "ExternalName" {
            return;
        }
        let requested = obj
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .filter(|ip| !ip.is_empty())
            .map(str::to_string);
        let old_ip = old
            .and_then(|o| o.pointer("/spec/clusterIP"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let ip = match (requested, old_ip) {
            (None, Some(old_ip)) => old_ip,
            (Some(ip), Some(old_ip)) if ip == old_ip => ip,
            (Some(ip), Some(_)) => ip, // validation reports the change
            (Some(ip), None) => {
                if ip != "None" && self.used_cluster_ips().contains(&ip) {
                    errs.push(FieldError::invalid(
                        "spec.clusterIPs",
                        &json!([ip]),
                        format!("failed to allocate IP {ip}: provided IP is already allocated"),
                    ));
                }
                ip
            }
            (None, None) => {
                let used = self.used_cluster_ips();
                (10u32..65534)
                    .map(|n| format!("10.96.{}.{}", n / 256, n % 256))
                    .find(|ip| !used.contains(ip))
                    .unwrap_or_else(|| "10.96.255.254".to_string())
            }
        };
        if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
            spec.insert("clusterIP".into(), json!(ip));
            spec.insert("clusterIPs".into(), json!([ip]));
        }
    }

    /// The status a CRD object reports once registered.
    fn crd_status(obj: &Value) -> Value {
        let now = defaults::now_rfc3339();
        let names = obj.pointer("/spec/names").cloned().unwrap_or(json!({}));
        let stored: Vec<Value> = obj
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .map(|vs| {
                vs.iter()
                    .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
                    .filter_map(|v| v.get("name").cloned())
                    .collect()
            })
            .unwrap_or_default();
        json!({
            "acceptedNames": names,
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                 "message": "no conflicts found", "lastTransitionTime": now},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                 "message": "the initial names have been accepted", "lastTransitionTime": now}
            ],
            "storedVersions": stored
        })
    }

    pub fn create(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        mut body: Value,
        opts: &WriteOpts,
    ) -> Result<Outcome, ApiError> {
        if !body.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        Self::check_type_meta(rt, &body)?;
        let ns = if rt.namespaced { ns } else { "" };
        {
            let m = meta_mut(&mut body);
            if let Some(body_ns) = m.get("namespace").and_then(Value::as_str) {
                if rt.namespaced && !body_ns.is_empty() && body_ns != ns {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace \
                         sent on the request",
                    ));
                }
            }
            if m.get("resourceVersion")
                .and_then(Value::as_str)
                .is_some_and(|rv| !rv.is_empty())
            {
                return Err(ApiError::internal(
                    "resourceVersion should not be set on objects to be created",
                ));
            }
            let name = m.get("name").and_then(Value::as_str).unwrap_or_default();
            if name.is_empty() {
                match m.get("generateName").and_then(Value::as_str) {
                    Some(prefix) if !prefix.is_empty() => {
                        let generated = format!("{prefix}{}", random_suffix());
                        m.insert("name".into(), json!(generated));
                    }
                    _ => {
                        return Err(ApiError::invalid(
                            rt,
                            "",
                            &[FieldError::required(
                                "metadata.name",
                                "name or generateName is required",
                            )],
                        ))
                    }
                }
            }
            if rt.namespaced {
                m.insert("namespace".into(), json!(ns));
            } else {
                m.remove("namespace");
            }
            m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            m.insert("creationTimestamp".into(), json!(defaults::now_rfc3339()));
            for server_owned in [
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "managedFields",
                "selfLink",
                "resourceVersion",
            ] {
                m.remove(server_owned);
            }
            if rt.generation {
                m.insert("generation".into(), json!(1));
            } else {
                m.remove("generation");
            }
        }
        self.check_namespace(rt, ns)?;
        body = with_type_meta(rt, body);
        if rt.status {
            let m = body.as_object_mut().expect("invariant: checked above");
            m.remove("status");
            if let Some(initial) = defaults::initial_status(rt) {
                m.insert("status".into(), initial);
            }
        }
        let mut warnings = Vec::new();
        self.admit(rt, &mut body, None, opts, &mut warnings)?;
        let name = meta_str(&body, "name").unwrap_or_default().to_string();
        if self.entry(rt, ns, &name).is_some() {
            return Err(ApiError::already_exists(rt, &name));
        }
        if rt.kind == "CustomResourceDefinition" {
            let status = Self::crd_status(&body);
            body["status"] = status;
        }
        if opts.dry_run {
            return Ok(Outcome {
                object: body,
                created: true,
                warnings,
            });
        }
        self.bump(&mut body);
        let mut managers = Managers::default();
        let scope = Scope::Main {
            exclude_status: false,
        };
        managers.record_update(&opts.manager, "", None, &body, scope, &Self::kinds(rt));
        self.insert(rt, ns, &name, body.clone(), managers);
        self.emit(EventType::Added, &rt.key(), &body, None);
        if rt.kind == "CustomResourceDefinition" {
            self.registry
                .register_crd(&body)
                .map_err(ApiError::internal)?;
        }
        Ok(Outcome {
            object: body,
            created: true,
            warnings,
        })
    }

    fn insert(&mut self, rt: &ResourceType, ns: &str, name: &str, obj: Value, managers: Managers) {
        self.objects
            .entry(rt.key())
            .or_default()
            .insert((ns.to_string(), name.to_string()), Entry { obj, managers });
    }

    fn check_identity(
        rt: &ResourceType,
        ns: &str,
        name: &str,
        body: &Value,
    ) -> Result<(), ApiError> {
        if !body.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        Self::check_type_meta(rt, body)?;
        if let Some(body_name) = meta_str(body, "name") {
            if body_name != name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({body_name}) does not match the name on the URL ({name})"
                )));
            }
        }
        if let Some(body_ns) = meta_str(body, "namespace") {
            if rt.namespaced && !body_ns.is_empty() && body_ns != ns {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on \
                     the request",
                ));
            }
        }
        Ok(())
    }

    /// PUT of the main resource or a subresource.
    pub fn update(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        body: Value,
        sub: Sub,
        opts: &WriteOpts,
    ) -> Result<Outcome, ApiError> {
        let ns = if rt.namespaced { ns } else { "" };
        if sub == Sub::Scale {
            return self.write_scale(rt, ns, name, None, Some(body), opts);
        }
        Self::check_identity(rt, ns, name, &body)?;
        let Some(entry) = self.entry(rt, ns, name).cloned() else {
            let creatable =
                matches!(rt.plural.as_str(), "endpoints" | "leases") && sub == Sub::Main;
            if creatable {
                let mut body = body;
                meta_mut(&mut body).insert("name".into(), json!(name));
                return self.create(rt, ns, body, opts);
            }
            return Err(ApiError::not_found(rt, name));
        };
        let body_rv = meta_str(&body, "resourceVersion").filter(|rv| !rv.is_empty());
        if body_rv.is_none() && rt.is_custom() {
            return Err(ApiError::invalid(
                rt,
                name,
                &[FieldError::invalid(
                    "metadata.resourceVersion",
                    &json!("0x0"),
                    "must be specified for an update",
                )],
            ));
        }
        self.commit(rt, ns, name, entry, body, sub, opts, None)
    }

    /// PATCH of the main resource or a subresource.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        type_: PatchType,
        patch_body: &Value,
        sub: Sub,
        opts: &WriteOpts,
    ) -> Result<Outcome, ApiError> {
        let ns = if rt.namespaced { ns } else { "" };
        if opts.force && type_ != PatchType::Apply {
            return Err(ApiError::invalid_named(
                "PatchOptions.meta.k8s.io",
                "meta.k8s.io",
                "PatchOptions",
                "",
                &[FieldError::forbidden(
                    "force",
                    "may not be specified for non-apply patch",
                )],
            ));
        }
        if type_ == PatchType::Strategic && rt.is_custom() {
            return Err(ApiError::unsupported_patch(rt));
        }
        if sub == Sub::Scale {
            return self.write_scale(rt, ns, name, Some((type_, patch_body)), None, opts);
        }
        let existing = self.entry(rt, ns, name).cloned();
        if type_ == PatchType::Apply {
            return self.server_side_apply(rt, ns, name, existing, patch_body, sub, opts);
        }
        let Some(entry) = existing else {
            return Err(ApiError::not_found(rt, name));
        };
        let mut target = with_type_meta(rt, entry.obj.clone());
        Self::apply_patch(rt, &mut target, type_, patch_body)?;
        self.commit(rt, ns, name, entry, target, sub, opts, None)
    }

    fn apply_patch(
        rt: &ResourceType,
        target: &mut Value,
        type_: PatchType,
        body: &Value,
    ) -> Result<(), ApiError> {
        match type_ {
            PatchType::Merge => {
                if !body.is_object() {
                    return Err(ApiError::bad_request("merge patch must be a JSON object"));
                }
                patch::merge(target, body);
                Ok(())
            }
            PatchType::Json => patch::json(target, body).map_err(ApiError::unprocessable),
            PatchType::Strategic => {
                patch::strategic(target, body, &Self::kinds(rt)).map_err(ApiError::unprocessable)
            }
            PatchType::Apply => Err(ApiError::internal("apply is not a plain patch")),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn server_side_apply(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        existing: Option<Entry>,
        applied: &Value,
        sub: Sub,
        opts: &WriteOpts,
    ) -> Result<Outcome, ApiError> {
        if !opts.manager_explicit {
            return Err(ApiError::invalid_named(
                "PatchOptions.meta.k8s.io",
                "meta.k8s.io",
                "PatchOptions",
                "",
                &[FieldError::required(
                    "fieldManager",
                    "is required for apply patch",
                )],
            ));
        }
        if !applied.is_object() {
            return Err(ApiError::bad_request("apply patch must be an object"));
        }
        for field in ["apiVersion", "kind"] {
            if applied
                .get(field)
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                return Err(ApiError::bad_request(format!("{field} must be set")));
            }
        }
        Self::check_type_meta(rt, applied)?;
        Self::check_identity(rt, ns, name, applied)?;
        let scope = match sub {
            Sub::Status => Scope::Status,
            _ => Scope::Main {
                exclude_status: rt.status,
            },
        };
        let kinds = Self::kinds(rt);
        match existing {
            None => {
                if sub != Sub::Main {
                    return Err(ApiError::not_found(rt, name));
                }
                let mut managers = Managers::default();
                let mut obj = managers
                    .apply(&opts.manager, "", None, applied, scope, true, &kinds)
                    .map_err(|c| ApiError::apply_conflicts(rt, name, &c))?;
                meta_mut(&mut obj).insert("name".into(), json!(name));
                let mut outcome = self.create(rt, ns, obj, opts)?;
                if !opts.dry_run {
                    // Ownership is the applied set, not the creator-owns-all of a plain create.
                    if let Some(e) = self
                        .objects
                        .get_mut(&rt.key())
                        .and_then(|o| o.get_mut(&(ns.to_string(), name.to_string())))
                    {
                        e.managers = managers;
                    }
                }
                outcome.created = true;
                Ok(outcome)
            }
            Some(entry) => {
                let mut managers = entry.managers.clone();
                let live = with_type_meta(rt, entry.obj.clone());
                let merged = managers
                    .apply(
                        &opts.manager,
                        sub.name(),
                        Some(&live),
                        applied,
                        scope,
                        opts.force,
                        &kinds,
                    )
                    .map_err(|c| ApiError::apply_conflicts(rt, name, &c))?;
                self.commit(rt, ns, name, entry, merged, sub, opts, Some(managers))
            }
        }
    }

    /// The `autoscaling/v1 Scale` of a scalable object.
    pub fn scale_of(rt: &ResourceType, obj: &Value) -> Result<Value, ApiError> {
        let spec = rt.scale.as_ref().ok_or_else(ApiError::no_route)?;
        let replicas = get_path(obj, &spec.spec_replicas)
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let status_replicas = get_path(obj, &spec.status_replicas)
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let selector = match &spec.selector {
            ScaleSelector::LabelSelector(p) => get_path(obj, p)
                .map(selectors::label_selector_string)
                .unwrap_or_default(),
            ScaleSelector::Text(p) => get_path(obj, p)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            ScaleSelector::None => String::new(),
        };
        let m = meta(obj);
        let mut metadata = Map::new();
        for k in [
            "name",
            "namespace",
            "uid",
            "resourceVersion",
            "creationTimestamp",
        ] {
            if let Some(v) = m.get(k) {
                metadata.insert(k.into(), v.clone());
            }
        }
        let mut status = json!({"replicas": status_replicas});
        if !selector.is_empty() {
            status["selector"] = json!(selector);
        }
        Ok(json!({
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": metadata,
            "spec": {"replicas": replicas},
            "status": status,
        }))
    }

    fn write_scale(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        patch_req: Option<(PatchType, &Value)>,
        put: Option<Value>,
        opts: &WriteOpts,
    ) -> Result<Outcome, ApiError> {
        let spec = rt.scale.clone().ok_or_else(ApiError::no_route)?;
        let entry = self
            .entry(rt, ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        let current = Self::scale_of(rt, &entry.obj)?;
        let new_scale = match (patch_req, put) {
            (Some((type_, body)), _) => {
                let mut s = current.clone();
                let scale_rt = ResourceType {
                    kind: "Scale".into(),
                    ..rt.clone()
                };
                Self::apply_patch(&scale_rt, &mut s, type_, body)?;
                s
            }
            (None, Some(body)) => body,
            (None, None) => current.clone(),
        };
        let replicas = new_scale
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .ok_or_else(|| {
                ApiError::invalid_named(
                    "Scale.autoscaling",
                    "autoscaling",
                    "Scale",
                    name,
                    &[FieldError::required("spec.replicas", "")],
                )
            })?;
        if replicas < 0 {
            return Err(ApiError::invalid_named(
                "Scale.autoscaling",
                "autoscaling",
                "Scale",
                name,
                &[FieldError::invalid(
                    "spec.replicas",
                    &json!(replicas),
                    "must be greater than or equal to 0",
                )],
            ));
        }
        let mut target = with_type_meta(rt, entry.obj.clone());
        if let Some(rv) = meta_str(&new_scale, "resourceVersion").filter(|rv| !rv.is_empty()) {
            meta_mut(&mut target).insert("resourceVersion".into(), json!(rv));
        }
        set_path(&mut target, &spec.spec_replicas, json!(replicas));
        let outcome = self.commit(rt, ns, name, entry, target, Sub::Scale, opts, None)?;
        Ok(Outcome {
            object: Self::scale_of(rt, &outcome.object)?,
            ..outcome
        })
    }

    /// The update pipeline behind PUT, PATCH and apply.
    #[allow(clippy::too_many_arguments)]
    fn commit(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        entry: Entry,
        candidate: Value,
        sub: Sub,
        opts: &WriteOpts,
        apply_managers: Option<Managers>,
    ) -> Result<Outcome, ApiError> {
        let old = &entry.obj;
        let old_rv = meta_str(old, "resourceVersion").unwrap_or_default();
        if let Some(rv) = meta_str(&candidate, "resourceVersion").filter(|rv| !rv.is_empty()) {
            if rv != old_rv {
                return Err(ApiError::conflict(rt, name));
            }
        }
        let mut next = match sub {
            Sub::Main | Sub::Scale => {
                let mut n = candidate;
                if rt.status {
                    let m = n.as_object_mut().expect("invariant: checked object");
                    match old.get("status") {
                        Some(s) => m.insert("status".into(), s.clone()),
                        None => m.remove("status"),
                    };
                }
                n
            }
            Sub::Status => {
                if !rt.status {
                    return Err(ApiError::no_route());
                }
                let mut n = old.clone();
                let m = n
                    .as_object_mut()
                    .expect("invariant: stored objects are objects");
                match candidate.get("status") {
                    Some(s) => m.insert("status".into(), s.clone()),
                    None => m.remove("status"),
                };
                n
            }
        };
        next = with_type_meta(rt, next);
        {
            let old_meta = meta(old).clone();
            let m = meta_mut(&mut next);
            for k in [
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "generation",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "resourceVersion",
            ] {
                match old_meta.get(k) {
                    Some(v) => m.insert(k.into(), v.clone()),
                    None => m.remove(k),
                };
            }
            m.remove("managedFields");
            m.remove("selfLink");
        }
        let mut warnings = Vec::new();
        self.admit(rt, &mut next, Some(old), opts, &mut warnings)?;
        if rt.kind == "CustomResourceDefinition" {
            let status = Self::crd_status(&next);
            next["status"] = status;
        }
        if rt.generation && sub != Sub::Status && Self::spec_changed(rt, old, &next) {
            let g = meta(old)
                .get("generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            meta_mut(&mut next).insert("generation".into(), json!(g + 1));
        }
        let scope = match sub {
            Sub::Status => Scope::Status,
            _ => Scope::Main {
                exclude_status: rt.status,
            },
        };
        // An apply has already settled ownership; any other write takes what it changed.
        let managers = match apply_managers {
            Some(m) => m,
            None => {
                let mut m = entry.managers.clone();
                m.record_update(
                    &opts.manager,
                    sub.name(),
                    Some(old),
                    &next,
                    scope,
                    &Self::kinds(rt),
                );
                m
            }
        };
        let with_old_rv = |mut v: Value| {
            meta_mut(&mut v).insert("resourceVersion".into(), json!(old_rv));
            v
        };
        let finishes_deletion = is_terminating(&next) && finalizers(&next).is_empty();
        if with_old_rv(next.clone()) == *old && !finishes_deletion {
            if !opts.dry_run {
                self.set_managers(rt, ns, name, managers);
            }
            return Ok(Outcome {
                object: old.clone(),
                created: false,
                warnings,
            });
        }
        if opts.dry_run {
            return Ok(Outcome {
                object: next,
                created: false,
                warnings,
            });
        }
        self.bump(&mut next);
        if finishes_deletion {
            self.remove(rt, ns, name, &next);
            return Ok(Outcome {
                object: next,
                created: false,
                warnings,
            });
        }
        self.insert(rt, ns, name, next.clone(), managers);
        self.emit(EventType::Modified, &rt.key(), &next, Some(old));
        if rt.kind == "CustomResourceDefinition" {
            self.registry
                .register_crd(&next)
                .map_err(ApiError::internal)?;
        }
        Ok(Outcome {
            object: next,
            created: false,
            warnings,
        })
    }

    fn set_managers(&mut self, rt: &ResourceType, ns: &str, name: &str, managers: Managers) {
        if let Some(e) = self
            .objects
            .get_mut(&rt.key())
            .and_then(|o| o.get_mut(&(ns.to_string(), name.to_string())))
        {
            e.managers = managers;
        }
    }

    fn spec_changed(rt: &ResourceType, old: &Value, new: &Value) -> bool {
        if rt.is_custom() {
            let strip = |v: &Value| {
                let mut v = v.clone();
                if let Some(m) = v.as_object_mut() {
                    for k in ["metadata", "status", "apiVersion", "kind"] {
                        m.remove(k);
                    }
                }
                v
            };
            strip(old) != strip(new)
        } else {
            old.get("spec") != new.get("spec")
        }
    }

    /// Final removal: the DELETED event carries the last state with a new RV (already bumped
    /// by the caller), then garbage collection and kind-specific cleanup run.
    fn remove(&mut self, rt: &ResourceType, ns: &str, name: &str, last: &Value) {
        if let Some(objs) = self.objects.get_mut(&rt.key()) {
            objs.remove(&(ns.to_string(), name.to_string()));
        }
        self.emit(EventType::Deleted, &rt.key(), last, None);
        if rt.kind == "CustomResourceDefinition" {
            if let (Some(group), Some(plural)) = (
                last.pointer("/spec/group").and_then(Value::as_str),
                last.pointer("/spec/names/plural").and_then(Value::as_str),
            ) {
                let key = ResKey {
                    group: group.to_string(),
                    plural: plural.to_string(),
                };
                self.purge(&key, None);
                self.registry.unregister_crd_group(group, plural);
            }
        }
        if rt.kind == "Namespace" && rt.group.is_empty() {
            let keys: Vec<ResKey> = self.objects.keys().cloned().collect();
            for key in keys {
                self.purge(&key, Some(name));
            }
        }
        self.collect_garbage();
    }

    /// Deletes every object of a resource (in one namespace), finalizers notwithstanding.
    fn purge(&mut self, key: &ResKey, ns: Option<&str>) {
        let Some(objs) = self.objects.get(key) else {
            return;
        };
        let doomed: Vec<(String, String)> = objs
            .keys()
            .filter(|(ons, _)| ns.is_none_or(|n| n == ons))
            .cloned()
            .collect();
        for k in doomed {
            let Some(entry) = self.objects.get_mut(key).and_then(|o| o.remove(&k)) else {
                continue;
            };
            let mut last = entry.obj;
            self.bump(&mut last);
            self.emit(EventType::Deleted, key, &last, None);
        }
    }

    pub fn delete(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        opts: &DeleteOpts,
    ) -> Result<Value, ApiError> {
        let ns = if rt.namespaced { ns } else { "" };
        let entry = self
            .entry(rt, ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        let obj = with_type_meta(rt, entry.obj.clone());
        let uid = meta_str(&obj, "uid").unwrap_or_default().to_string();
        let rv = meta_str(&obj, "resourceVersion")
            .unwrap_or_default()
            .to_string();
        if let Some(want) = &opts.precondition_uid {
            if *want != uid {
                return Err(ApiError::precondition_failed(
                    rt,
                    name,
                    &format!("Precondition failed: UID in precondition: {want}, UID in object meta: {uid}"),
                ));
            }
        }
        if let Some(want) = &opts.precondition_rv {
            if *want != rv {
                return Err(ApiError::precondition_failed(
                    rt,
                    name,
                    &format!(
                        "the ResourceVersion in the precondition ({want}) does not match the \
                         ResourceVersion in record ({rv}). The object might have been modified"
                    ),
                ));
            }
        }
        let mut fins = finalizers(&obj);
        let propagation = opts.propagation.as_deref().unwrap_or("Background");
        if propagation == "Foreground"
            && self.has_dependents(&uid)
            && !fins.contains(&"foregroundDeletion".to_string())
        {
            fins.push("foregroundDeletion".to_string());
        }
        if opts.dry_run {
            return Ok(obj);
        }
        if propagation == "Orphan" {
            self.orphan_dependents(&uid);
        }
        if !fins.is_empty() {
            if is_terminating(&obj) && fins == finalizers(&obj) {
                return Ok(obj);
            }
            let mut next = obj.clone();
            {
                let m = meta_mut(&mut next);
                if !is_terminating(&obj) {
                    m.insert("deletionTimestamp".into(), json!(defaults::now_rfc3339()));
                    m.insert("deletionGracePeriodSeconds".into(), json!(0));
                }
                m.insert("finalizers".into(), json!(fins));
            }
            self.bump(&mut next);
            self.insert(rt, ns, name, next.clone(), entry.managers);
            self.emit(EventType::Modified, &rt.key(), &next, Some(&obj));
            self.collect_garbage();
            return Ok(self
                .entry(rt, ns, name)
                .map(|e| with_type_meta(rt, e.obj.clone()))
                .unwrap_or(next));
        }
        let mut last = obj;
        self.bump(&mut last);
        self.remove(rt, ns, name, &last);
        Ok(last)
    }

    fn has_dependents(&self, uid: &str) -> bool {
        self.objects
            .values()
            .flat_map(|o| o.values())
            .any(|e| owner_uids(&e.obj).iter().any(|u| u == uid))
    }

    /// Orphan propagation: strips owner references to `uid` from every dependent.
    fn orphan_dependents(&mut self, uid: &str) {
        let mut changed: Vec<(ResKey, (String, String), Value, Value)> = Vec::new();
        for (key, objs) in &self.objects {
            for (k, e) in objs {
                if owner_uids(&e.obj).iter().any(|u| u == uid) {
                    let mut next = e.obj.clone();
                    if let Some(refs) = meta_mut(&mut next)
                        .get_mut("ownerReferences")
                        .and_then(Value::as_array_mut)
                    {
                        refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(uid));
                    }
                    changed.push((key.clone(), k.clone(), e.obj.clone(), next));
                }
            }
        }
        for (key, k, old, mut next) in changed {
            self.bump(&mut next);
            if let Some(e) = self.objects.get_mut(&key).and_then(|o| o.get_mut(&k)) {
                e.obj = next.clone();
            }
            self.emit(EventType::Modified, &key, &next, Some(&old));
        }
    }

    /// Background garbage collection, run to a fixpoint after deletions:
    /// - an object none of whose owners exists any more is deleted (with its finalizers);
    /// - an owner in foreground deletion gets its dependents deleted, and loses its
    ///   `foregroundDeletion` finalizer once none is left.
    fn collect_garbage(&mut self) {
        for _ in 0..1000 {
            let uids: HashSet<String> = self
                .objects
                .values()
                .flat_map(|o| o.values())
                .filter_map(|e| meta_str(&e.obj, "uid").map(str::to_string))
                .collect();
            let mut doomed: Vec<(ResKey, String, String)> = Vec::new();
            let mut release: Vec<(ResKey, String, String)> = Vec::new();
            for (key, objs) in &self.objects {
                for ((ns, name), e) in objs {
                    let owners = owner_uids(&e.obj);
                    if !owners.is_empty()
                        && !is_terminating(&e.obj)
                        && owners.iter().all(|u| !uids.contains(u))
                    {
                        doomed.push((key.clone(), ns.clone(), name.clone()));
                    }
                    if is_terminating(&e.obj)
                        && finalizers(&e.obj).iter().any(|f| f == "foregroundDeletion")
                    {
                        let uid = meta_str(&e.obj, "uid").unwrap_or_default();
                        let mut any = false;
                        for (dkey, dobjs) in &self.objects {
                            for ((dns, dname), d) in dobjs {
                                if owner_uids(&d.obj).iter().any(|u| u == uid) {
                                    any = true;
                                    if !is_terminating(&d.obj) {
                                        doomed.push((dkey.clone(), dns.clone(), dname.clone()));
                                    }
                                }
                            }
                        }
                        if !any {
                            release.push((key.clone(), ns.clone(), name.clone()));
                        }
                    }
                }
            }
            if doomed.is_empty() && release.is_empty() {
                return;
            }
            for (key, ns, name) in doomed {
                if let Some(rt) = self.registry.any_version(&key).cloned() {
                    let _ = self.delete(&rt, &ns, &name, &DeleteOpts::default());
                }
            }
            for (key, ns, name) in release {
                let Some(rt) = self.registry.any_version(&key).cloned() else {
                    continue;
                };
                let Some(entry) = self.entry(&rt, &ns, &name).cloned() else {
                    continue;
                };
                let mut next = with_type_meta(&rt, entry.obj.clone());
                if let Some(f) = meta_mut(&mut next)
                    .get_mut("finalizers")
                    .and_then(Value::as_array_mut)
                {
                    f.retain(|x| x != "foregroundDeletion");
                }
                let opts = WriteOpts {
                    manager: "garbage-collector".into(),
                    ..WriteOpts::default()
                };
                let _ = self.commit(&rt, &ns, &name, entry, next, Sub::Main, &opts, None);
            }
        }
    }

    #[cfg(test)]
    pub fn count(&self, key: &ResKey) -> usize {
        self.objects.get(key).map(BTreeMap::len).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> WriteOpts {
        WriteOpts {
            manager: "test".into(),
            manager_explicit: true,
            ..WriteOpts::default()
        }
    }

    fn setup() -> State {
        let mut s = State::new(100);
        let ns = s.registry.find("namespaces").unwrap().clone();
        s.create(&ns, "", json!({"metadata": {"name": "default"}}), &opts())
            .unwrap();
        s
    }

    fn cm(name: &str) -> Value {
        json!({"metadata": {"name": name}, "data": {"a": "1"}})
    }

    #[test]
    fn writes_bump_one_global_counter_and_no_ops_do_not() {
        let mut s = setup();
        let rt = s.registry.find("configmaps").unwrap().clone();
        let a = s.create(&rt, "default", cm("a"), &opts()).unwrap().object;
        let rv_a: u64 = a["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let b = s.create(&rt, "default", cm("b"), &opts()).unwrap().object;
        let rv_b: u64 = b["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(rv_b, rv_a + 1);
        let same = s
            .patch(
                &rt,
                "default",
                "a",
                PatchType::Merge,
                &json!({"data": {"a": "1"}}),
                Sub::Main,
                &opts(),
            )
            .unwrap();
        assert_eq!(
            same.object["metadata"]["resourceVersion"],
            a["metadata"]["resourceVersion"]
        );
        assert_eq!(s.current_rv(), rv_b);
    }

    #[test]
    fn stale_resource_versions_conflict_and_missing_objects_are_not_found() {
        let mut s = setup();
        let rt = s.registry.find("configmaps").unwrap().clone();
        let a = s.create(&rt, "default", cm("a"), &opts()).unwrap().object;
        let mut stale = a.clone();
        s.patch(
            &rt,
            "default",
            "a",
            PatchType::Merge,
            &json!({"data": {"b": "2"}}),
            Sub::Main,
            &opts(),
        )
        .unwrap();
        stale["data"]["c"] = json!("3");
        let err = s
            .update(&rt, "default", "a", stale, Sub::Main, &opts())
            .unwrap_err();
        assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
        let err = s.get(&rt, "default", "zzz").unwrap_err();
        assert_eq!((err.code, err.reason.as_str()), (404, "NotFound"));
        let err = s.create(&rt, "default", cm("a"), &opts()).unwrap_err();
        assert_eq!(err.reason, "AlreadyExists");
        let err = s.create(&rt, "nowhere", cm("x"), &opts()).unwrap_err();
        assert_eq!(err.message, "namespaces \"nowhere\" not found");
    }

    #[test]
    fn deleting_an_owner_collects_its_dependents() {
        let mut s = setup();
        let rt = s.registry.find("configmaps").unwrap().clone();
        let owner = s
            .create(&rt, "default", cm("owner"), &opts())
            .unwrap()
            .object;
        let uid = owner["metadata"]["uid"].as_str().unwrap().to_string();
        let mut child = cm("child");
        child["metadata"]["ownerReferences"] =
            json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}]);
        s.create(&rt, "default", child, &opts()).unwrap();
        let mut grandchild = cm("grandchild");
        let child_uid = s.get(&rt, "default", "child").unwrap()["metadata"]["uid"].clone();
        grandchild["metadata"]["ownerReferences"] =
            json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "child", "uid": child_uid}]);
        s.create(&rt, "default", grandchild, &opts()).unwrap();
        s.delete(&rt, "default", "owner", &DeleteOpts::default())
            .unwrap();
        assert_eq!(s.count(&rt.key()), 0);
    }

    #[test]
    fn finalizers_hold_deletion_until_removed() {
        let mut s = setup();
        let rt = s.registry.find("configmaps").unwrap().clone();
        let mut obj = cm("a");
        obj["metadata"]["finalizers"] = json!(["example.com/x"]);
        s.create(&rt, "default", obj, &opts()).unwrap();
        let marked = s
            .delete(&rt, "default", "a", &DeleteOpts::default())
            .unwrap();
        assert!(marked["metadata"]["deletionTimestamp"].is_string());
        let err = s
            .patch(
                &rt,
                "default",
                "a",
                PatchType::Merge,
                &json!({"metadata": {"finalizers": ["example.com/x", "new"]}}),
                Sub::Main,
                &opts(),
            )
            .unwrap_err();
        assert_eq!(err.code, 422);
        s.patch(
            &rt,
            "default",
            "a",
            PatchType::Merge,
            &json!({"metadata": {"finalizers": null}}),
            Sub::Main,
            &opts(),
        )
        .unwrap();
        assert!(s.get(&rt, "default", "a").is_err());
    }
}
