//! The `Rollout` custom resource, `rollouts.kruise.io/v1alpha1`.
//!
//! Field names, defaults and status enums follow OpenKruise Rollout's v1alpha1 API, so that
//! Rollouts written for Kruise (including the seed document's) are accepted unchanged and
//! `kubectl-kruise rollout approve|pause|resume` work against this controller. Fields Kruise
//! has but this controller cannot honour (Gateway API and custom network refs, request header
//! modifiers, partition style) are part of the schema, so nothing is pruned, and are reported
//! as validation errors by [`crate::validate`].
//!
//! Additions of this project are optional and marked "Extension" in their docs:
//! - `steps[].matches[].{cookies,queryParams,path}` and the `Prefix` match type, evaluated by the
//!   Wasm plugin;
//! - `strategy.canary.higress` (tag header, stickiness, override header, version header);
//! - `strategy.canary.analysis` and `steps[].analysis`: checks of the canary's metrics in
//!   Prometheus that advance or abort the release ([`Analysis`]);
//! - the condition types `Accepted` and `Analysis`, `status.canaryStatus.higress` (the plugin
//!   rule this Rollout currently contributes, and when the routing last changed) and
//!   `status.canaryStatus.analysis` (the current step's latest check results).
//!
//! The match and plugin-setting types mirror `canary_core::config` field for field and convert
//! into it with `From`; the plugin's wire schema itself is never re-declared here.

use std::collections::BTreeMap;

use canary_core::config::{self as wire, RuleConfig};
use k8s_openapi::apimachinery::pkg::{apis::meta::v1::Time, util::intstr::IntOrString};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

/// Default `trafficRoutings[].gracePeriodSeconds`, as in Kruise.
pub const DEFAULT_GRACE_PERIOD_SECONDS: i32 = 3;
/// Default `trafficRoutings[].ingress.classType`, as in Kruise.
pub const DEFAULT_INGRESS_CLASS_TYPE: &str = "nginx";

/// A progressive release of one Deployment: canary batches, each with a share of traffic or
/// the requests that match a header, cookie, query parameter or path.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "rollouts.kruise.io",
    version = "v1alpha1",
    kind = "Rollout",
    namespaced,
    status = "RolloutStatus",
    derive = "Default",
    derive = "PartialEq",
    doc = "Rollout is the Schema for the rollouts API (OpenKruise Rollout v1alpha1, served by higress-canary)",
    printcolumn = r#"{"name":"STATUS","type":"string","description":"The rollout status phase","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"CANARY_STEP","type":"integer","description":"The rollout canary status step","jsonPath":".status.canaryStatus.currentStepIndex"}"#,
    printcolumn = r#"{"name":"CANARY_STATE","type":"string","description":"The rollout canary status step state","jsonPath":".status.canaryStatus.currentStepState"}"#,
    printcolumn = r#"{"name":"MESSAGE","type":"string","description":"The rollout canary status message","jsonPath":".status.message"}"#,
    printcolumn = r#"{"name":"AGE","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// The workload this Rollout releases. Only `apps/v1` Deployments are supported.
    pub object_ref: ObjectRef,
    /// How the release proceeds.
    pub strategy: RolloutStrategy,
    /// Deprecated in Kruise: set the label `rollouts.kruise.io/rollout-id` on the workload
    /// instead. Accepted and ignored.
    #[serde(rename = "rolloutID", default, skip_serializing_if = "Option::is_none")]
    pub rollout_id: Option<String>,
    /// Stops managing the workload: an ongoing release is rolled back to the stable version,
    /// canary resources are removed and the Deployment is unpaused.
    #[serde(default, skip_serializing_if = "is_false")]
    pub disabled: bool,
}

/// The workload reference.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    /// The workload, in the Rollout's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_ref: Option<WorkloadRef>,
}

/// A workload in the Rollout's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRef {
    /// `apps/v1`.
    pub api_version: String,
    /// `Deployment`.
    pub kind: String,
    pub name: String,
}

/// The release strategy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStrategy {
    /// Holds the release at its current step (`kubectl-kruise rollout pause|resume`). Routing
    /// stays as it is; a rollback still proceeds.
    #[serde(default, skip_serializing_if = "is_false")]
    pub paused: bool,
    /// Canary release in batches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryStrategy>,
}

/// Canary release: an extra Deployment with the new template, scaled per step, and per-step
/// traffic routing.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStrategy {
    /// The batches, in order; at least one, at most 50.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<CanaryStep>,
    /// Where traffic is routed. Exactly one entry with `service` and `ingress` is supported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traffic_routings: Vec<TrafficRoutingRef>,
    /// Canary pods that may be unavailable while a batch still counts as ready (a count or a
    /// percentage of the batch). Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<IntOrString>,
    /// Labels and annotations added to the canary Deployment's pod template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_pod_template_metadata: Option<PatchPodTemplateMetadata>,
    /// Kruise: route through the stable Service with subsets instead of a canary Service. Not
    /// supported (the Higress canary route needs a canary Service); must be false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub disable_generate_canary_service: bool,
    /// Extension: how the higress-canary Wasm plugin routes this release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub higress: Option<HigressRouting>,
    /// Extension: checks of the canary's metrics in Prometheus, run by every step after its
    /// traffic is in place (a step's own `analysis` overrides fields of this one). A step
    /// with analysis advances only after its checks pass; failing checks abort the release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<Analysis>,
}

/// One batch.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStep {
    /// Percent of traffic (0-100) sent to the canary during this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
    /// Kruise: headers to set on canary requests. Not supported; must be empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<HttpHeaderFilter>,
    /// Requests that go to the canary whatever the weight. The entries are ORed; the
    /// conditions inside one entry are ANDed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpRouteMatch>,
    /// Canary pods for this step: a count (`2`) or a percentage of the Deployment's replicas
    /// (`"20%"`, rounded up). Must not decrease from one step to the next. Defaults to
    /// `"<weight>%"` when only `weight` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<IntOrString>,
    /// What happens once the step is in place. `{}` (or no `pause`) waits for approval
    /// (`kubectl-kruise rollout approve`); `duration` waits that many seconds. With
    /// analysis: approval is asked for once the checks pass; `duration` advances once the
    /// checks held for that long.
    #[serde(default)]
    pub pause: RolloutPause,
    /// Extension: this step's analysis. Each field set here replaces the same field of
    /// `strategy.canary.analysis` (`checks` as a whole); `enabled: false` turns it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<Analysis>,
}

/// The pause after a step.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutPause {
    /// Seconds to wait before the next step; without it the step waits for approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<i32>,
}

/// Conditions on a request; all must hold.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteMatch {
    /// Request headers. A header named `canary-by-cookie` means, as in Kruise's nginx
    /// provider, "the cookie named by `value` equals `always`".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<NameValueMatch>,
    /// Extension: cookies of the `Cookie` header.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cookies: Vec<NameValueMatch>,
    /// Extension: query parameters, percent-decoded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<NameValueMatch>,
    /// Extension: the request path without its query string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
}

/// A condition on a named header, cookie or query parameter (Gateway API's `HTTPHeaderMatch`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NameValueMatch {
    /// How `value` is compared. Default `Exact`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub r#type: Option<MatchType>,
    /// Header names are case-insensitive; cookie and query parameter names are not.
    pub name: String,
    pub value: String,
}

/// Extension: a condition on the request path.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PathMatch {
    /// How `value` is compared. Default `Exact`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub r#type: Option<MatchType>,
    pub value: String,
}

/// How a value is compared. `Prefix` is an extension.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum MatchType {
    #[default]
    Exact,
    Prefix,
    /// RE2 syntax, matching the whole value.
    RegularExpression,
}

/// Gateway API's `HTTPHeaderFilter`, kept for schema compatibility.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpHeaderFilter {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<HttpHeader>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<HttpHeader>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// A header name and value.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct HttpHeader {
    pub name: String,
    pub value: String,
}

/// Where traffic for the workload enters.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficRoutingRef {
    /// The stable Service; `<service>-canary` is created next to it.
    pub service: String,
    /// Seconds to wait after each routing change before the next stage. Default 3.
    #[serde(default = "default_grace_period_seconds")]
    pub grace_period_seconds: i32,
    /// The Ingress Higress serves the workload through; `<name>-canary` is created next to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressTrafficRouting>,
    /// Kruise: a Gateway API HTTPRoute. Not supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayTrafficRouting>,
    /// Kruise: custom network objects driven by Lua. Not supported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub custom_network_refs: Vec<CustomNetworkRef>,
    /// Deprecated (Kruise v0.1): the ingress class type, now `ingress.classType`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub r#type: Option<String>,
}

fn default_grace_period_seconds() -> i32 {
    DEFAULT_GRACE_PERIOD_SECONDS
}

/// An Ingress.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressTrafficRouting {
    /// `nginx` (default), `higress` or `mse`: Higress serves all three annotation sets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_type: Option<String>,
    pub name: String,
}

/// A Gateway API route, kept for schema compatibility.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayTrafficRouting {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_route_name: Option<String>,
}

/// A custom network object, kept for schema compatibility.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CustomNetworkRef {
    pub api_version: String,
    pub kind: String,
    pub name: String,
}

/// Metadata merged into the canary Deployment's pod template.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PatchPodTemplateMetadata {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Extension: how the higress-canary Wasm plugin routes this release. Mirrors the rule fields
/// of the plugin's config (`docs/plugin-config.md`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HigressRouting {
    /// Request header the plugin sets on canary requests and the canary Ingress matches.
    /// Default `x-higress-canary`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag_header: Option<String>,
    /// Keeps a user on one version across requests and as the weight grows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<Sticky>,
    /// Lets a request force a version with `<header>: canary|stable`.
    #[serde(rename = "override", default, skip_serializing_if = "Option::is_none")]
    pub r#override: Option<Override>,
    /// Response header naming the version that served the request. Off unless set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_header: Option<String>,
}

/// Extension: sources of a request's sticky key, tried in order.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Sticky {
    /// A header holding a user id, e.g. `x-user-id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// A cookie holding a user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// A cookie the plugin issues to requests without a user id, so anonymous users stick too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket_cookie: Option<BucketCookie>,
}

/// Extension: the cookie the plugin issues to anonymous users.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BucketCookie {
    pub name: String,
    /// Default one day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_seconds: Option<u32>,
}

/// Extension: the per-request override.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Override {
    /// Default `x-canary-override`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// When set, the override counts only if `secretHeader` carries exactly this value. It is
    /// readable by anyone who can read this Rollout or the WasmPlugin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Default `x-canary-override-secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_header: Option<String>,
}

/// Extension: metric analysis of a step. The built-in checks read the Wasm plugin's own
/// per-version metrics (`higress_canary_*`, docs/plugin-config.md) for this Rollout; custom
/// checks are PromQL. Every field is optional; a step needs at least one check.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Analysis {
    /// `false` turns analysis off (typically for one step). Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Seconds between two runs of the checks. Default 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_seconds: Option<i32>,
    /// The range of the queries (`rate(...[<window>])`, `{{window}}`) in seconds. It never
    /// reaches back before this release's canary got traffic. Default 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_seconds: Option<i32>,
    /// Canary responses the window must hold before a run gives a verdict; fewer count as
    /// no data. Default 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<i64>,
    /// Consecutive failed runs that abort the release. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_limit: Option<i32>,
    /// What happens while runs give no verdict (no data, too few requests, Prometheus
    /// unreachable or failing). Default: wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_data: Option<NoData>,
    /// Built-in: the canary's share of non-5xx responses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<SuccessRateCheck>,
    /// Built-in: the canary's latency at a percentile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyCheck>,
    /// Custom PromQL checks. A step's list replaces the Rollout's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<Vec<QueryCheck>>,
}

/// Extension: what runs without a verdict do.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NoData {
    /// `Wait` (default): the step holds until a run gives a verdict. `Fail`: the release is
    /// aborted once runs gave no verdict for `timeoutSeconds`.
    #[serde(default)]
    pub action: NoDataAction,
    /// With `Fail`: seconds without a verdict before the release is aborted. Default
    /// `failureLimit × intervalSeconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i32>,
}

/// Extension: see [`NoData::action`].
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum NoDataAction {
    #[default]
    Wait,
    Fail,
}

/// Extension: the built-in success-rate check (non-5xx share of the canary's responses).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SuccessRateCheck {
    /// The canary's success rate must be at least this many percent (0-100), e.g. `99`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_percent: Option<f64>,
    /// The canary's success rate may be at most this many percentage points below the
    /// stable version's over the same window, e.g. `1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_drop_from_stable: Option<f64>,
}

/// Extension: the built-in latency check (the plugin's latency histogram, request headers to
/// the end of the stream).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LatencyCheck {
    /// The percentile, above 0 and below 100. Default 99.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentile: Option<f64>,
    /// The canary's latency at the percentile must be at most this many milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ms: Option<f64>,
    /// The canary's latency at the percentile may be at most this multiple of the stable
    /// version's (never tighter than 1 ms, the histogram's finest bucket), e.g. `1.5`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ratio_to_stable: Option<f64>,
}

/// Extension: a custom check, a PromQL query whose single value must stay within bounds.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueryCheck {
    /// Shown in the status and events; lowercase letters, digits and `-`.
    pub name: String,
    /// An instant PromQL query returning one value (aggregate with `sum(...)` or the like).
    /// Placeholders: `{{namespace}}`, `{{name}}` (the Rollout's), `{{rollout}}`
    /// (`<namespace>/<name>`, the plugin metrics' `rollout` label), `{{version}}` (`canary`,
    /// their `version` label), `{{podTemplateHash}}` and `{{stablePodTemplateHash}}` (the
    /// canary and stable pods' `pod-template-hash`), `{{window}}` (the range, e.g. `60s`).
    pub query: String,
    /// The value must be at least this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// The value must be at most this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

// === status ===

/// What the controller observed and did. Field names and enum strings are Kruise's.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// The `metadata.generation` the controller last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The current (or last) release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_status: Option<CanaryStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<RolloutCondition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RolloutPhase>,
    /// A human-readable summary of what the Rollout is doing or waiting for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The Rollout's lifecycle phase.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RolloutPhase {
    /// Not yet in control of the workload.
    Initial,
    /// In control; no release in progress.
    Healthy,
    /// A release is in progress.
    Progressing,
    /// Being deleted: cleaning up.
    Terminating,
    /// `spec.disabled` was set: cleaning up.
    Disabling,
    /// `spec.disabled`: the workload is not managed.
    Disabled,
}

/// A condition, as Kruise writes them.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutCondition {
    /// `Progressing`, `Succeeded`, `Terminating`, or the extensions `Accepted`, `Analysis`.
    #[serde(rename = "type")]
    pub r#type: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    pub reason: String,
    pub message: String,
}

/// Condition types and reasons, as Kruise spells them (`Accepted` and `Analysis` are
/// extensions).
pub mod condition {
    /// A release is moving (reasons below) or finished (`Completed`).
    pub const PROGRESSING: &str = "Progressing";
    /// True after a release completed, False after it was cancelled.
    pub const SUCCEEDED: &str = "Succeeded";
    /// The Rollout is being deleted.
    pub const TERMINATING: &str = "Terminating";
    /// Extension: whether the spec and the objects it names are usable.
    pub const ACCEPTED: &str = "Accepted";
    /// Extension: the latest metric analysis run (True: checks pass; False: a check fails;
    /// Unknown: no verdict).
    pub const ANALYSIS: &str = "Analysis";

    pub const TRUE: &str = "True";
    pub const FALSE: &str = "False";
    pub const UNKNOWN: &str = "Unknown";

    pub const INITIALIZING: &str = "Initializing";
    pub const IN_ROLLING: &str = "InRolling";
    pub const FINALISING: &str = "Finalising";
    pub const COMPLETED: &str = "Completed";
    pub const CANCELLING: &str = "Cancelling";
    pub const PAUSED: &str = "Paused";
    pub const IN_TERMINATING: &str = "InTerminating";
}

/// The state of the current release.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStatus {
    /// The Deployment's `metadata.generation` when the controller last acted on it.
    #[serde(default)]
    pub observed_workload_generation: i64,
    /// The release's id: the workload's `rollouts.kruise.io/rollout-id` label, else the
    /// canary revision.
    #[serde(
        rename = "observedRolloutID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub observed_rollout_id: Option<String>,
    /// Hash of the strategy (without pauses) the release runs; a change restarts the step
    /// calculation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_hash: Option<String>,
    /// `pod-template-hash` of the stable ReplicaSet when the release started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_revision: Option<String>,
    /// Hash of the Deployment's pod template being released.
    #[serde(default)]
    pub canary_revision: String,
    /// `pod-template-hash` of the canary pods; the canary Service selects it.
    #[serde(default)]
    pub pod_template_hash: String,
    /// Canary pods wanted for the current step.
    #[serde(default)]
    pub canary_replicas: i32,
    /// Canary pods available.
    #[serde(default)]
    pub canary_ready_replicas: i32,
    /// The current step, from 1.
    #[serde(default)]
    pub current_step_index: i32,
    /// The step after the current one, or -1 on the last step. Patch it to jump to a step.
    #[serde(default)]
    pub next_step_index: i32,
    #[serde(default)]
    pub current_step_state: StepState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the step state last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_time: Option<Time>,
    /// Extension: what this Rollout currently asks of the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub higress: Option<HigressStatus>,
    /// Extension: the metric analysis of the current (or last analysed) step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisStatus>,
}

/// A step's state. Approval is `StepPaused` → `StepReady`, written by
/// `kubectl-kruise rollout approve` as a merge patch of the status.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum StepState {
    /// Scaling the canary Deployment and waiting for its pods.
    #[default]
    StepUpgrade,
    /// Pointing the canary Service, canary Ingress and plugin rule at this step.
    StepTrafficRouting,
    /// Running the step's metric analysis until its checks pass (steps without analysis
    /// pass at once, as in Kruise).
    StepMetricsAnalysis,
    /// Waiting for approval or for `pause.duration`.
    StepPaused,
    /// Approved; the next reconcile moves to the next step.
    StepReady,
    /// After the last step: promoting, then done.
    Completed,
}

/// Extension: the part of the gateway this Rollout controls. The shared WasmPlugin's config is
/// rendered from these, over all Rollouts.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HigressStatus {
    /// The plugin rule (`canary_core::config::RuleConfig`, the plugin's wire shape) this
    /// Rollout currently contributes to the shared WasmPlugin. Absent: no rule, all traffic
    /// goes to the stable route.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_rule"
    )]
    #[schemars(schema_with = "plugin_rule_schema")]
    pub rule: Option<RuleConfig>,
    /// When the controller last changed the routing (plugin rule, Service selectors, canary
    /// Ingress); the next stage waits `gracePeriodSeconds` after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_update_time: Option<Time>,
}

/// Extension: the metric analysis of one step, kept in the status so a restarted controller
/// continues it (consecutive failures, how long the checks have held).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisStatus {
    /// The step these results belong to.
    #[serde(default)]
    pub step_index: i32,
    #[serde(default)]
    pub phase: AnalysisPhase,
    /// When this release's canary got traffic: query windows never reach back before it (an
    /// earlier release's canary had the same labels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_since: Option<Time>,
    /// When this step's analysis began (its traffic in place).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the checks last ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_time: Option<Time>,
    /// Since when the checks have held without a break (a failed run or one without a
    /// verdict ends it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passing_since: Option<Time>,
    /// Since when runs have given no verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_verdict_since: Option<Time>,
    /// Failed runs in a row.
    #[serde(default)]
    pub consecutive_failures: i32,
    /// Canary responses in the window at the last run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_requests: Option<f64>,
    /// The last run's outcome in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Each check's latest result.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckStatus>,
}

/// Extension: where a step's analysis stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum AnalysisPhase {
    /// No run yet.
    #[default]
    Pending,
    /// The last run passed.
    Passing,
    /// The last run failed; fewer than `failureLimit` in a row.
    Failing,
    /// The last run gave no verdict (no data, too few requests, Prometheus errors).
    NoVerdict,
    /// The release was aborted by this analysis.
    Failed,
}

/// Extension: one check's latest result.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckStatus {
    pub name: String,
    pub verdict: CheckVerdict,
    /// The canary's value (percent for success rates, milliseconds for latency).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// The stable version's value, for checks relative to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_value: Option<f64>,
    /// The bound, in words: `>= 99%`, `<= 1.5 x stable (12.3ms)`.
    #[serde(default)]
    pub threshold: String,
    /// Why there is no value (no data, a query error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Extension: a check's verdict.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum CheckVerdict {
    Pass,
    Fail,
    /// The query returned nothing (or NaN: no traffic in the window).
    #[default]
    NoData,
    /// The canary served fewer than `minRequests` responses in the window.
    TooFewRequests,
    /// Prometheus could not be asked or answered with an error.
    Error,
}

/// A rule that does not parse is dropped rather than failing the whole Rollout: a list watch
/// fails on one undecodable object, and without the rule the gateway falls back to stable.
fn lenient_rule<'de, D: Deserializer<'de>>(d: D) -> Result<Option<RuleConfig>, D::Error> {
    let value = Option::<serde_json::Value>::deserialize(d)?;
    Ok(value.and_then(|v| serde_json::from_value(v).ok()))
}

fn plugin_rule_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "A rule of the higress-canary plugin config (see docs/plugin-config.md).",
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

fn is_false(b: &bool) -> bool {
    !*b
}

// === impl Rollout ===

impl Rollout {
    /// The step state of the current release, if one ever started.
    pub fn canary_status(&self) -> Option<&CanaryStatus> {
        self.status.as_ref().and_then(|s| s.canary_status.as_ref())
    }

    /// The rule this Rollout contributes to the shared WasmPlugin right now.
    pub fn plugin_rule(&self) -> Option<&RuleConfig> {
        self.canary_status()
            .and_then(|c| c.higress.as_ref())
            .and_then(|h| h.rule.as_ref())
    }

    /// How many canary steps the spec has (0 without a canary strategy).
    pub fn step_count(&self) -> usize {
        self.spec
            .strategy
            .canary
            .as_ref()
            .map_or(0, |c| c.steps.len())
    }

    /// The Deployment `spec.objectRef.workloadRef` names (`None` if unnamed).
    pub fn workload_name(&self) -> Option<&str> {
        self.spec
            .object_ref
            .workload_ref
            .as_ref()
            .map(|w| w.name.as_str())
            .filter(|n| !n.is_empty())
    }

    /// The Service of the first traffic routing (`None` if unnamed).
    pub fn service_name(&self) -> Option<&str> {
        self.first_routing()
            .map(|r| r.service.as_str())
            .filter(|n| !n.is_empty())
    }

    /// The Ingress of the first traffic routing (`None` if unnamed).
    pub fn ingress_name(&self) -> Option<&str> {
        self.first_routing()
            .and_then(|r| r.ingress.as_ref())
            .map(|i| i.name.as_str())
            .filter(|n| !n.is_empty())
    }

    fn first_routing(&self) -> Option<&TrafficRoutingRef> {
        self.spec
            .strategy
            .canary
            .as_ref()
            .and_then(|c| c.traffic_routings.first())
    }
}

impl RolloutStatus {
    pub fn condition(&self, r#type: &str) -> Option<&RolloutCondition> {
        self.conditions.iter().find(|c| c.r#type == r#type)
    }
}

// === conversions into the plugin's wire types ===

impl From<MatchType> for wire::MatchType {
    fn from(t: MatchType) -> Self {
        match t {
            MatchType::Exact => wire::MatchType::Exact,
            MatchType::Prefix => wire::MatchType::Prefix,
            MatchType::RegularExpression => wire::MatchType::RegularExpression,
        }
    }
}

impl From<&NameValueMatch> for wire::ValueMatch {
    fn from(m: &NameValueMatch) -> Self {
        wire::ValueMatch {
            name: m.name.clone(),
            r#type: m.r#type.unwrap_or_default().into(),
            value: m.value.clone(),
        }
    }
}

impl From<&PathMatch> for wire::PathMatch {
    fn from(m: &PathMatch) -> Self {
        wire::PathMatch {
            r#type: m.r#type.unwrap_or_default().into(),
            value: m.value.clone(),
        }
    }
}

impl From<&Sticky> for wire::Sticky {
    fn from(s: &Sticky) -> Self {
        wire::Sticky {
            header: s.header.clone(),
            cookie: s.cookie.clone(),
            bucket_cookie: s.bucket_cookie.as_ref().map(|b| wire::BucketCookie {
                name: b.name.clone(),
                max_age_seconds: b
                    .max_age_seconds
                    .unwrap_or(wire::DEFAULT_BUCKET_COOKIE_MAX_AGE_SECONDS),
            }),
        }
    }
}

impl From<&Override> for wire::Override {
    fn from(o: &Override) -> Self {
        let defaults = wire::Override::default();
        wire::Override {
            header: o.header.clone().unwrap_or(defaults.header),
            secret: o.secret.clone(),
            secret_header: o.secret_header.clone().unwrap_or(defaults.secret_header),
        }
    }
}

#[cfg(test)]
mod tests;
