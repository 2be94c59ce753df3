//! Errors: the `Status` bodies the API server answers with (always with a `reason`, see the
//! wire reference G1), the field errors validation collects, and the library's own [`Error`].

use std::fmt;

use serde_json::{json, Value};

use super::registry::ResourceType;

/// A failed API call, rendered as a `kind: Status` body with the same HTTP status code.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status code, also `Status.code`.
    pub code: u16,
    /// `Status.reason`, e.g. `NotFound`, `AlreadyExists`, `Conflict`, `Invalid`.
    pub reason: String,
    /// `Status.message`, in the apiserver's wording.
    pub message: String,
    /// `Status.details`, when the apiserver sends them.
    pub details: Option<Value>,
    /// `Status.metadata` (a ListMeta; an expired continue token carries a fresh one).
    pub metadata: Option<Value>,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} {})", self.message, self.code, self.reason)
    }
}

impl std::error::Error for ApiError {}

/// `deployments.apps "web"` or `services "web"`: how messages name an object.
fn qualified(rt: &ResourceType) -> String {
    if rt.group.is_empty() {
        rt.plural.clone()
    } else {
        format!("{}.{}", rt.plural, rt.group)
    }
}

/// `Deployment.apps "web"` or `Service "web"`: how `Invalid` messages name an object.
fn qualified_kind(rt: &ResourceType) -> String {
    if rt.group.is_empty() {
        rt.kind.clone()
    } else {
        format!("{}.{}", rt.kind, rt.group)
    }
}

impl ApiError {
    pub fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason: reason.to_string(),
            message: message.into(),
            details: None,
            metadata: None,
        }
    }

    fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    fn object_details(rt: &ResourceType, name: &str) -> Value {
        json!({"name": name, "group": rt.group, "kind": rt.plural})
    }

    pub fn not_found(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", qualified(rt)),
        )
        .with_details(Self::object_details(rt, name))
    }

    /// A namespaced create into a namespace that does not exist.
    pub fn namespace_not_found(ns: &str) -> Self {
        Self::new(404, "NotFound", format!("namespaces \"{ns}\" not found"))
            .with_details(json!({"name": ns, "kind": "namespaces"}))
    }

    /// Unknown path, unregistered resource, or a subresource the kind does not have.
    pub fn no_route() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
        .with_details(json!({}))
    }

    pub fn already_exists(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", qualified(rt)),
        )
        .with_details(Self::object_details(rt, name))
    }

    pub fn conflict(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                qualified(rt)
            ),
        )
        .with_details(Self::object_details(rt, name))
    }

    /// A delete precondition (uid or resourceVersion) that does not hold.
    pub fn precondition_failed(rt: &ResourceType, name: &str, what: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {what}",
                qualified(rt)
            ),
        )
        .with_details(Self::object_details(rt, name))
    }

    /// Server-side apply conflicts, one `(manager, field)` per conflicting field.
    pub fn apply_conflicts(rt: &ResourceType, name: &str, conflicts: &[(String, String)]) -> Self {
        let listed: Vec<String> = conflicts
            .iter()
            .map(|(manager, field)| format!("conflict with \"{manager}\": {field}"))
            .collect();
        let message = match listed.as_slice() {
            [one] => format!("Apply failed with 1 conflict: {one}"),
            many => format!(
                "Apply failed with {} conflicts: {}",
                many.len(),
                many.join("\n")
            ),
        };
        let causes: Vec<Value> = conflicts
            .iter()
            .map(|(manager, field)| {
                json!({"reason": "FieldManagerConflict",
                       "message": format!("conflict with \"{manager}\""),
                       "field": field})
            })
            .collect();
        Self::new(409, "Conflict", message).with_details(json!({
            "name": name, "group": rt.group, "kind": rt.plural, "causes": causes
        }))
    }

    /// 422 `Invalid` for an object, from validation errors.
    pub fn invalid(rt: &ResourceType, name: &str, errors: &[FieldError]) -> Self {
        Self::invalid_named(&qualified_kind(rt), &rt.group, &rt.kind, name, errors)
    }

    pub fn invalid_named(
        what: &str,
        group: &str,
        kind: &str,
        name: &str,
        errors: &[FieldError],
    ) -> Self {
        let rendered: Vec<String> = errors.iter().map(FieldError::to_string).collect();
        let list = match rendered.as_slice() {
            [one] => one.clone(),
            many => format!("[{}]", many.join(", ")),
        };
        let causes: Vec<Value> = errors
            .iter()
            .map(|e| json!({"reason": e.reason(), "message": e.detail_message(), "field": e.field}))
            .collect();
        Self::new(
            422,
            "Invalid",
            format!("{what} \"{name}\" is invalid: {list}"),
        )
        .with_details(json!({"name": name, "group": group, "kind": kind, "causes": causes}))
    }

    /// 422 with a free-form message (e.g. a failed JSON patch `test`).
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(422, "Invalid", message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn unsupported_patch(rt: &ResourceType) -> Self {
        let _ = rt;
        Self::new(
            415,
            "UnsupportedMediaType",
            "the body of the request was in an unknown format - accepted media types include: \
             application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
        )
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - unsupported media type {content_type:?}"),
        )
    }

    pub fn method_not_allowed(method: &str) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource: {method}"),
        )
    }

    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    /// The `Status` object, as sent in error bodies and in watch `ERROR` events.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": self.metadata.clone().unwrap_or_else(|| json!({})),
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }

    /// The `reason` the apiserver uses for a status code (for injected faults).
    pub fn reason_for_code(code: u16) -> &'static str {
        match code {
            400 => "BadRequest",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "NotFound",
            405 => "MethodNotAllowed",
            409 => "Conflict",
            410 => "Expired",
            415 => "UnsupportedMediaType",
            422 => "Invalid",
            429 => "TooManyRequests",
            503 => "ServiceUnavailable",
            504 => "Timeout",
            _ => "InternalError",
        }
    }
}

/// One validation failure, rendered as the apiserver's `field.Error`.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    /// The field path, e.g. `spec.template.spec.containers[0].image`.
    pub field: String,
    pub kind: FieldErrorKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FieldErrorKind {
    /// `Invalid value: <value>: <detail>`.
    Invalid { value: String, detail: String },
    /// `Required value[: detail]`.
    Required(String),
    /// `Forbidden: detail`.
    Forbidden(String),
    /// `Unsupported value: <value>: supported values: "a", "b"`.
    NotSupported { value: String, allowed: Vec<String> },
    /// `Duplicate value: <value>`.
    Duplicate(String),
}

impl FieldError {
    pub fn invalid(field: impl Into<String>, value: &Value, detail: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            kind: FieldErrorKind::Invalid {
                value: render_value(value),
                detail: detail.into(),
            },
        }
    }

    pub fn required(field: impl Into<String>, detail: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            kind: FieldErrorKind::Required(detail.into()),
        }
    }

    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            kind: FieldErrorKind::Forbidden(detail.into()),
        }
    }

    pub fn not_supported(field: impl Into<String>, value: &Value, allowed: &[&str]) -> Self {
        FieldError {
            field: field.into(),
            kind: FieldErrorKind::NotSupported {
                value: render_value(value),
                allowed: allowed.iter().map(|a| a.to_string()).collect(),
            },
        }
    }

    pub fn duplicate(field: impl Into<String>, value: &Value) -> Self {
        FieldError {
            field: field.into(),
            kind: FieldErrorKind::Duplicate(render_value(value)),
        }
    }

    fn reason(&self) -> &'static str {
        match self.kind {
            FieldErrorKind::Invalid { .. } => "FieldValueInvalid",
            FieldErrorKind::Required(_) => "FieldValueRequired",
            FieldErrorKind::Forbidden(_) => "FieldValueForbidden",
            FieldErrorKind::NotSupported { .. } => "FieldValueNotSupported",
            FieldErrorKind::Duplicate(_) => "FieldValueDuplicate",
        }
    }

    /// The message without the field prefix, as in `details.causes[].message`.
    fn detail_message(&self) -> String {
        match &self.kind {
            FieldErrorKind::Invalid { value, detail } if detail.is_empty() => {
                format!("Invalid value: {value}")
            }
            FieldErrorKind::Invalid { value, detail } => {
                format!("Invalid value: {value}: {detail}")
            }
            FieldErrorKind::Required(d) if d.is_empty() => "Required value".to_string(),
            FieldErrorKind::Required(d) => format!("Required value: {d}"),
            FieldErrorKind::Forbidden(d) => format!("Forbidden: {d}"),
            FieldErrorKind::NotSupported { value, allowed } => {
                let allowed: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
                format!(
                    "Unsupported value: {value}: supported values: {}",
                    allowed.join(", ")
                )
            }
            FieldErrorKind::Duplicate(v) => format!("Duplicate value: {v}"),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.detail_message())
    }
}

/// A value as it appears in an `Invalid value:` message (JSON; strings quoted).
fn render_value(value: &Value) -> String {
    value.to_string()
}

/// Errors of the library API (starting the server, seeding it), as opposed to HTTP answers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("binding the fake API server to {addr}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing YAML")]
    Yaml(#[from] serde_yaml::Error),
    #[error("the YAML document is not a {expected}: {found}")]
    WrongKind { expected: String, found: String },
    #[error(
        "unknown resource {0:?} (use a plural, optionally with its group: `deployments.apps`)"
    )]
    UnknownResource(String),
    #[error("the API server refused the write: {0}")]
    Api(#[from] ApiError),
    #[error("writing kubeconfig {path}")]
    Kubeconfig {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("building a kube client")]
    Client(#[source] kube::Error),
}
