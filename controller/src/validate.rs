//! Turning a `Rollout` into a [`Release`]: every name, step and plugin rule the planner needs,
//! checked once. What cannot be honoured is an [`Invalid`] with a message that says what to
//! fix; the planner then changes nothing.
//!
//! Two stages: [`Release::from_rollout`] needs only the Rollout (the offline `render` command
//! uses it), [`Release::check_world`] checks it against what exists in the cluster.

use canary_core::{
    config::{self as wire, MatchGroup, RuleConfig, Weight, DEFAULT_TAG_HEADER},
    PluginConfig, Router,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use crate::{
    analysis::{self, Analysis, Check, CheckKind, NoDataPolicy},
    crd::{
        self, CanaryStep, HigressRouting, HttpRouteMatch, NoDataAction, PatchPodTemplateMetadata,
        Rollout, DEFAULT_INGRESS_CLASS_TYPE,
    },
    keys::ROLLING_STYLE_ANNOTATION,
    observed::{owned_by, Observed},
    revision::strategy_hash,
};

/// Kruise's limit on steps.
pub const MAX_STEPS: usize = 50;
/// Ingress class types Higress serves (it reads nginx's canary annotations too).
pub const SUPPORTED_CLASS_TYPES: &[&str] = &["nginx", "higress", "mse"];
/// Kruise's header name that means "cookie `<value>` is `always`".
pub const CANARY_BY_COOKIE: &str = "canary-by-cookie";

/// Why a Rollout cannot be acted on. `reason` is a PascalCase condition/event reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Invalid {
    pub reason: &'static str,
    pub message: String,
}

/// Reasons of [`Invalid`].
pub mod reason {
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const UNSUPPORTED: &str = "Unsupported";
    pub const WORKLOAD_NOT_FOUND: &str = "WorkloadNotFound";
    pub const SERVICE_NOT_FOUND: &str = "ServiceNotFound";
    pub const INGRESS_NOT_FOUND: &str = "IngressNotFound";
    pub const WORKLOAD_CONFLICT: &str = "WorkloadConflict";
    pub const ROUTE_CONFLICT: &str = "RouteConflict";
    pub const OBJECT_CONFLICT: &str = "ObjectConflict";
}

impl Invalid {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }

    fn spec(message: impl Into<String>) -> Self {
        Self::new(reason::INVALID_SPEC, message)
    }

    fn unsupported(message: impl Into<String>) -> Self {
        Self::new(reason::UNSUPPORTED, message)
    }
}

/// The names of every object a Rollout touches, derived from its spec. Available even when
/// the spec is otherwise invalid, so deletion can still clean up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    pub namespace: String,
    pub rollout: String,
    /// `<namespace>/<name>`: the plugin rule's `rollout` and metric label.
    pub key: String,
    pub deployment: Option<String>,
    pub canary_deployment: Option<String>,
    pub service: Option<String>,
    pub canary_service: Option<String>,
    pub ingress: Option<String>,
    pub canary_ingress: Option<String>,
}

impl Names {
    pub fn of(rollout: &Rollout) -> Self {
        let namespace = rollout.namespace().unwrap_or_else(|| "default".to_owned());
        let name = rollout.name_any();
        let deployment = rollout.workload_name().map(str::to_owned);
        let service = rollout.service_name().map(str::to_owned);
        let ingress = rollout.ingress_name().map(str::to_owned);
        Self {
            key: format!("{namespace}/{name}"),
            namespace,
            rollout: name,
            canary_deployment: deployment.as_ref().map(|d| canary_name(d)),
            deployment,
            canary_service: service.as_ref().map(|s| canary_name(s)),
            service,
            canary_ingress: ingress.as_ref().map(|i| canary_name(i)),
            ingress,
        }
    }

    /// The gateway routes of the Ingress and its canary (`<namespace>/<ingress>`): what this
    /// Rollout's plugin rule matches, and what no other Rollout's rule may.
    pub fn routes(&self) -> Vec<String> {
        [&self.ingress, &self.canary_ingress]
            .into_iter()
            .flatten()
            .map(|ingress| format!("{}/{ingress}", self.namespace))
            .collect()
    }
}

/// `<name>-canary`, Kruise's suffix for canary Services and Ingresses.
pub fn canary_name(stable: &str) -> String {
    format!("{stable}-canary")
}

/// The plugin's tag value for a Rollout: its name. Kubernetes names use only lowercase
/// letters, digits, `-` and `.`, all literal-safe in the canary route's `always|<value>`
/// regex; the one name the plugin refuses, `always`, gets a suffix. Tag values only need to
/// be unique per route, and each Ingress belongs to one Rollout, so the namespace is left out.
pub fn tag_value(rollout_name: &str) -> String {
    if rollout_name == "always" {
        "always-rollout".to_owned()
    } else {
        rollout_name.to_owned()
    }
}

/// A validated Rollout.
#[derive(Debug, Clone, PartialEq)]
pub struct Release {
    pub names: Names,
    pub deployment: String,
    pub canary_deployment: String,
    pub service: String,
    pub canary_service: String,
    pub ingress: String,
    pub canary_ingress: String,
    /// Route names of the stable and canary Ingress: `<namespace>/<ingress>[-canary]`.
    pub routes: Vec<String>,
    pub grace_period_seconds: i64,
    pub tag_header: String,
    pub tag_value: String,
    pub steps: Vec<Step>,
    pub failure_threshold: Option<IntOrString>,
    pub patch_pod_template_metadata: Option<PatchPodTemplateMetadata>,
    /// [`strategy_hash`] of the canary strategy.
    pub strategy_hash: String,
}

/// One validated step.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Canary pods: a count or a percentage (`replicas`, or `<weight>%` when unset).
    pub replicas: IntOrString,
    /// The plugin rule while this step is in place; `None` for a step with neither weight
    /// nor matches, where traffic follows the pods (stable and canary behind one Service).
    pub rule: Option<RuleConfig>,
    /// `pause.duration`; `None` waits for approval.
    pub pause_seconds: Option<i64>,
    /// The step's metric analysis: `strategy.canary.analysis` with the step's overrides.
    pub analysis: Option<Analysis>,
}

impl Step {
    /// Canary pods for a Deployment of `total` replicas: percentages round up, never more
    /// than `total`.
    pub fn canary_replicas(&self, total: i32) -> i32 {
        scaled(&self.replicas, total).min(total).max(0)
    }

    /// Kruise lets the last step pass without approval when it already runs 100%.
    pub fn is_full(&self) -> bool {
        matches!(&self.replicas, IntOrString::String(s) if s.trim() == "100%")
    }

    pub fn weight(&self) -> Weight {
        self.rule.as_ref().map(|r| r.weight).unwrap_or_default()
    }

    /// A one-line summary: "10% of traffic, 1 pod" or "matches only, 1 pod".
    pub fn describe(&self, total: Option<i32>) -> String {
        let pods = match total {
            Some(total) => {
                let n = self.canary_replicas(total);
                format!("{n} canary pod{}", if n == 1 { "" } else { "s" })
            }
            None => format!("replicas {}", int_or_string(&self.replicas)),
        };
        let traffic = match &self.rule {
            None => "traffic by pod count".to_owned(),
            Some(rule) => {
                let matches = if rule.matches.is_empty() {
                    String::new()
                } else {
                    format!(
                        " + {} match group{}",
                        rule.matches.len(),
                        if rule.matches.len() == 1 { "" } else { "s" }
                    )
                };
                format!("{} of traffic{matches}", rule.weight)
            }
        };
        format!("{traffic}, {pods}")
    }
}

/// `IntOrString` scaled against a total, rounding percentages up (Kubernetes'
/// `GetScaledValueFromIntOrPercent(.., true)`). Unparseable strings count as 0; validation
/// rejects them first.
pub fn scaled(value: &IntOrString, total: i32) -> i32 {
    match value {
        IntOrString::Int(n) => *n,
        IntOrString::String(s) => match parse_percent(s) {
            Some(p) => {
                let v = (i64::from(p) * i64::from(total) + 99) / 100;
                i32::try_from(v).unwrap_or(i32::MAX)
            }
            None => 0,
        },
    }
}

fn parse_percent(s: &str) -> Option<i32> {
    s.trim().strip_suffix('%')?.trim().parse().ok()
}

pub fn int_or_string(v: &IntOrString) -> String {
    match v {
        IntOrString::Int(n) => n.to_string(),
        IntOrString::String(s) => s.clone(),
    }
}

// === impl Release ===

impl Release {
    /// Checks everything that needs only the Rollout.
    pub fn from_rollout(rollout: &Rollout) -> Result<Self, Invalid> {
        let names = Names::of(rollout);
        let spec = &rollout.spec;

        let workload = spec.object_ref.workload_ref.as_ref().ok_or_else(|| {
            Invalid::spec("spec.objectRef.workloadRef is required: name the Deployment to release")
        })?;
        if workload.api_version != "apps/v1" || workload.kind != "Deployment" {
            return Err(Invalid::unsupported(format!(
                "spec.objectRef.workloadRef: only apps/v1 Deployment is supported, not {} {}",
                workload.api_version, workload.kind
            )));
        }
        let deployment = names.deployment.clone().ok_or_else(|| {
            Invalid::spec("spec.objectRef.workloadRef.name must name a Deployment")
        })?;
        if let Some(style) = rollout.annotations().get(ROLLING_STYLE_ANNOTATION) {
            if style != "canary" {
                return Err(Invalid::unsupported(format!(
                    "annotation {ROLLING_STYLE_ANNOTATION}: {style:?} is not supported; only \
                     the canary style (an extra canary Deployment) is; remove the annotation"
                )));
            }
        }

        let canary = spec.strategy.canary.as_ref().ok_or_else(|| {
            Invalid::spec("spec.strategy.canary is required: list the release's steps")
        })?;
        if canary.steps.is_empty() || canary.steps.len() > MAX_STEPS {
            return Err(Invalid::spec(format!(
                "spec.strategy.canary.steps: between 1 and {MAX_STEPS} steps are required, got {}",
                canary.steps.len()
            )));
        }
        if canary.disable_generate_canary_service {
            return Err(Invalid::unsupported(
                "spec.strategy.canary.disableGenerateCanaryService: the Higress canary route \
                 needs a canary Service; set it to false",
            ));
        }
        let [routing] = canary.traffic_routings.as_slice() else {
            return Err(Invalid::unsupported(format!(
                "spec.strategy.canary.trafficRoutings: exactly one entry (a service and an \
                 ingress) is required, got {}",
                canary.traffic_routings.len()
            )));
        };
        let at = "spec.strategy.canary.trafficRoutings[0]";
        if routing.gateway.is_some() || !routing.custom_network_refs.is_empty() {
            return Err(Invalid::unsupported(format!(
                "{at}: gateway and customNetworkRefs are not supported; route through an ingress"
            )));
        }
        let service = names
            .service
            .clone()
            .ok_or_else(|| Invalid::spec(format!("{at}.service must name the stable Service")))?;
        let ingress_ref = routing.ingress.as_ref().ok_or_else(|| {
            Invalid::spec(format!(
                "{at}.ingress is required: name the Ingress Higress serves the workload through"
            ))
        })?;
        let ingress = names
            .ingress
            .clone()
            .ok_or_else(|| Invalid::spec(format!("{at}.ingress.name must name an Ingress")))?;
        let class = ingress_ref
            .class_type
            .as_deref()
            .or(routing.r#type.as_deref())
            .unwrap_or(DEFAULT_INGRESS_CLASS_TYPE);
        if !SUPPORTED_CLASS_TYPES.contains(&class) {
            return Err(Invalid::unsupported(format!(
                "{at}.ingress.classType: {class:?} is not served by Higress; use one of {}",
                SUPPORTED_CLASS_TYPES.join(", ")
            )));
        }
        if routing.grace_period_seconds < 0 {
            return Err(Invalid::spec(format!(
                "{at}.gracePeriodSeconds must not be negative, got {}",
                routing.grace_period_seconds
            )));
        }
        if let Some(threshold) = &canary.failure_threshold {
            check_int_or_percent("spec.strategy.canary.failureThreshold", threshold, true)?;
        }

        let ext = canary.higress.clone().unwrap_or_default();
        let tag_header = ext
            .tag_header
            .clone()
            .unwrap_or_else(|| DEFAULT_TAG_HEADER.to_owned());
        let routes = names.routes();
        let tag_value = tag_value(&names.rollout);

        if let Some(base) = &canary.analysis {
            check_analysis_fields(ANALYSIS_AT, base)?;
        }
        let mut steps = Vec::with_capacity(canary.steps.len());
        for (i, step) in canary.steps.iter().enumerate() {
            let at = format!("spec.strategy.canary.steps[{i}]");
            let mut validated = validate_step(
                &at,
                step,
                &RuleBase {
                    routes: &routes,
                    key: &names.key,
                    tag_header: &tag_header,
                    tag_value: &tag_value,
                    ext: &ext,
                },
            )?;
            validated.analysis = step_analysis(
                &at,
                canary.analysis.as_ref(),
                step.analysis.as_ref(),
                validated.rule.is_some(),
            )?;
            steps.push(validated);
        }
        // Same-kind values can be compared without the Deployment's size; the rest is checked
        // in `check_world`.
        check_non_decreasing(&steps, None)?;

        Ok(Release {
            canary_deployment: canary_name(&deployment),
            deployment,
            canary_service: canary_name(&service),
            service,
            canary_ingress: canary_name(&ingress),
            ingress,
            routes,
            grace_period_seconds: i64::from(routing.grace_period_seconds),
            tag_header,
            tag_value,
            steps,
            failure_threshold: canary.failure_threshold.clone(),
            patch_pod_template_metadata: canary.patch_pod_template_metadata.clone(),
            strategy_hash: strategy_hash(canary),
            names,
        })
    }

    /// Checks the Rollout against the cluster: the objects it names exist, nobody else owns
    /// them, and its rules fit next to the other Rollouts' in the shared WasmPlugin.
    pub fn check_world(&self, rollout: &Rollout, observed: &Observed) -> Result<(), Invalid> {
        let ns = &self.names.namespace;
        if let Some(first) = observed.conflicts.first() {
            return Err(Invalid::new(
                reason::WORKLOAD_CONFLICT,
                format!(
                    "Deployment {} is already released by Rollout {first}; a Deployment can \
                     have one Rollout, delete one of them",
                    self.deployment
                ),
            ));
        }
        let workload = observed.workload.as_ref().ok_or_else(|| {
            Invalid::new(
                reason::WORKLOAD_NOT_FOUND,
                format!(
                    "Deployment {} not found in namespace {ns}; create it or fix \
                     spec.objectRef.workloadRef.name",
                    self.deployment
                ),
            )
        })?;
        if observed.service.is_none() {
            return Err(Invalid::new(
                reason::SERVICE_NOT_FOUND,
                format!(
                    "Service {} not found in namespace {ns}; create it or fix \
                     spec.strategy.canary.trafficRoutings[0].service",
                    self.service
                ),
            ));
        }
        let ingress = observed.ingress.as_ref().ok_or_else(|| {
            Invalid::new(
                reason::INGRESS_NOT_FOUND,
                format!(
                    "Ingress {} not found in namespace {ns}; create it or fix \
                     spec.strategy.canary.trafficRoutings[0].ingress.name",
                    self.ingress
                ),
            )
        })?;
        if !crate::resources::ingress_routes_to(ingress, &self.service) {
            return Err(Invalid::spec(format!(
                "Ingress {} has no path with backend Service {}; point the Ingress at the \
                 Service or fix spec.strategy.canary.trafficRoutings[0]",
                self.ingress, self.service
            )));
        }
        for (kind, name, owner) in [
            (
                "Deployment",
                &self.canary_deployment,
                observed
                    .canary
                    .as_ref()
                    .map(|c| owned_by(&c.deployment, rollout)),
            ),
            (
                "Service",
                &self.canary_service,
                observed
                    .canary_service
                    .as_ref()
                    .map(|s| owned_by(s, rollout)),
            ),
            (
                "Ingress",
                &self.canary_ingress,
                observed
                    .canary_ingress
                    .as_ref()
                    .map(|i| owned_by(i, rollout)),
            ),
        ] {
            if owner == Some(false) {
                return Err(Invalid::new(
                    reason::OBJECT_CONFLICT,
                    format!(
                        "{kind} {name} exists and is not owned by this Rollout; the controller \
                         will not take it over, rename or delete it"
                    ),
                ));
            }
        }
        check_non_decreasing(&self.steps, Some(workload.replicas()))?;

        if let Some(plugin) = &observed.plugin {
            for other in plugin.rules.iter().filter(|r| r.rollout != self.names.key) {
                if let Some(route) = other.match_route.iter().find(|r| self.routes.contains(r)) {
                    return Err(Invalid::new(
                        reason::ROUTE_CONFLICT,
                        format!(
                            "route {route} (Ingress {}) is already routed by Rollout {} in the \
                             shared WasmPlugin; an Ingress can serve one release at a time",
                            self.ingress, other.rollout
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn step(&self, index: i32) -> Option<&Step> {
        usize::try_from(index)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| self.steps.get(i))
    }

    pub fn step_count(&self) -> i32 {
        // At most MAX_STEPS.
        i32::try_from(self.steps.len()).unwrap_or(i32::MAX)
    }

    /// Kruise's `nextStepIndex`: the step after `index`, or -1 after the last.
    pub fn next_index(&self, index: i32) -> i32 {
        if index < self.step_count() {
            index + 1
        } else {
            -1
        }
    }
}

struct RuleBase<'a> {
    routes: &'a [String],
    key: &'a str,
    tag_header: &'a str,
    tag_value: &'a str,
    ext: &'a HigressRouting,
}

fn validate_step(at: &str, step: &CanaryStep, base: &RuleBase<'_>) -> Result<Step, Invalid> {
    if let Some(weight) = step.weight {
        if !(0..=100).contains(&weight) {
            return Err(Invalid::spec(format!(
                "{at}.weight must be between 0 and 100, got {weight}"
            )));
        }
    }
    if step
        .request_header_modifier
        .as_ref()
        .is_some_and(|m| !m.set.is_empty() || !m.add.is_empty() || !m.remove.is_empty())
    {
        return Err(Invalid::unsupported(format!(
            "{at}.requestHeaderModifier is not supported by higress-canary; remove it"
        )));
    }
    let replicas = match (&step.replicas, step.weight) {
        (Some(r), _) => r.clone(),
        (None, Some(w)) if w > 0 => IntOrString::String(format!("{w}%")),
        (None, _) => {
            return Err(Invalid::spec(format!(
                "{at}.replicas is required: the canary pods for this step, a count or a \
                 percentage like \"20%\""
            )))
        }
    };
    check_int_or_percent(&format!("{at}.replicas"), &replicas, false)?;
    if let Some(d) = step.pause.duration {
        if d < 0 {
            return Err(Invalid::spec(format!(
                "{at}.pause.duration must not be negative, got {d}"
            )));
        }
    }

    let rule = if step.weight.is_some() || !step.matches.is_empty() {
        let rule = build_rule(step, base);
        let config = PluginConfig {
            global: None,
            rules: vec![rule.clone()],
        };
        Router::new(&config).map_err(|e| {
            Invalid::spec(format!(
                "{at}: the plugin would reject this step's rule: {e}"
            ))
        })?;
        Some(rule)
    } else {
        None
    };
    Ok(Step {
        replicas,
        rule,
        pause_seconds: step.pause.duration.map(i64::from),
        analysis: None,
    })
}

// === analysis ===

const ANALYSIS_AT: &str = "spec.strategy.canary.analysis";

/// Checks the values one `analysis` block sets, naming the field of a bad one.
fn check_analysis_fields(at: &str, a: &crd::Analysis) -> Result<(), Invalid> {
    let range = |field: &str, value: Option<i64>, min: i64, max: i64| match value {
        Some(v) if !(min..=max).contains(&v) => Err(Invalid::spec(format!(
            "{at}.{field} must be between {min} and {max}, got {v}"
        ))),
        _ => Ok(()),
    };
    range(
        "intervalSeconds",
        a.interval_seconds.map(i64::from),
        1,
        86_400,
    )?;
    range("windowSeconds", a.window_seconds.map(i64::from), 1, 604_800)?;
    range("minRequests", a.min_requests, 0, i64::MAX)?;
    range("failureLimit", a.failure_limit.map(i64::from), 1, 1_000)?;
    if let Some(no_data) = &a.no_data {
        range(
            "noData.timeoutSeconds",
            no_data.timeout_seconds.map(i64::from),
            1,
            604_800,
        )?;
        if no_data.action == NoDataAction::Wait && no_data.timeout_seconds.is_some() {
            return Err(Invalid::spec(format!(
                "{at}.noData.timeoutSeconds applies only with action: Fail; remove it or set                  action: Fail"
            )));
        }
    }
    let real = |field: &str, value: Option<f64>, ok: &dyn Fn(f64) -> bool, what: &str| match value {
        Some(v) if !v.is_finite() || !ok(v) => Err(Invalid::spec(format!(
            "{at}.{field} must be {what}, got {v}"
        ))),
        _ => Ok(()),
    };
    if let Some(sr) = &a.success_rate {
        if sr.min_percent.is_none() && sr.max_drop_from_stable.is_none() {
            return Err(Invalid::spec(format!(
                "{at}.successRate: set minPercent, maxDropFromStable or both"
            )));
        }
        let percent = |v: f64| (0.0..=100.0).contains(&v);
        real(
            "successRate.minPercent",
            sr.min_percent,
            &percent,
            "a percentage between 0 and 100",
        )?;
        real(
            "successRate.maxDropFromStable",
            sr.max_drop_from_stable,
            &percent,
            "percentage points between 0 and 100",
        )?;
    }
    if let Some(l) = &a.latency {
        if l.max_ms.is_none() && l.max_ratio_to_stable.is_none() {
            return Err(Invalid::spec(format!(
                "{at}.latency: set maxMs, maxRatioToStable or both"
            )));
        }
        real(
            "latency.percentile",
            l.percentile,
            &|v| v > 0.0 && v < 100.0,
            "above 0 and below 100 (e.g. 99 or 99.9)",
        )?;
        real(
            "latency.maxMs",
            l.max_ms,
            &|v| v > 0.0,
            "a positive number of milliseconds",
        )?;
        real(
            "latency.maxRatioToStable",
            l.max_ratio_to_stable,
            &|v| v > 0.0,
            "a positive factor (e.g. 1.5)",
        )?;
    }
    let mut seen: Vec<&str> = Vec::new();
    for (i, check) in a.checks.iter().flatten().enumerate() {
        let at = format!("{at}.checks[{i}]");
        if !is_check_name(&check.name) {
            return Err(Invalid::spec(format!(
                "{at}.name {:?} must be 1-63 lowercase letters, digits and '-', starting and                  ending with a letter or digit",
                check.name
            )));
        }
        if seen.contains(&check.name.as_str()) {
            return Err(Invalid::spec(format!(
                "{at}.name {:?} is used twice; check names must be unique",
                check.name
            )));
        }
        seen.push(&check.name);
        if check.query.trim().is_empty() {
            return Err(Invalid::spec(format!(
                "{at}.query is empty: give a PromQL query returning one value"
            )));
        }
        analysis::placeholders_in(&check.query)
            .map_err(|e| Invalid::spec(format!("{at}.query: {e}")))?;
        for (field, value) in [("min", check.min), ("max", check.max)] {
            if value.is_some_and(|v| !v.is_finite()) {
                return Err(Invalid::spec(format!(
                    "{at}.{field} must be a finite number"
                )));
            }
        }
        match (check.min, check.max) {
            (None, None) => {
                return Err(Invalid::spec(format!(
                    "{at}: set min, max or both (the bounds the query's value must stay within)"
                )))
            }
            (Some(min), Some(max)) if min > max => {
                return Err(Invalid::spec(format!(
                    "{at}: min ({min}) is greater than max ({max})"
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

fn is_check_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let edge_ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.iter().all(|&b| edge_ok(b) || b == b'-')
        && edge_ok(bytes[0])
        && edge_ok(bytes[bytes.len() - 1])
}

/// The step's own `analysis` fields over the Rollout's.
fn merge_analysis(base: &crd::Analysis, step: &crd::Analysis) -> crd::Analysis {
    crd::Analysis {
        enabled: step.enabled.or(base.enabled),
        interval_seconds: step.interval_seconds.or(base.interval_seconds),
        window_seconds: step.window_seconds.or(base.window_seconds),
        min_requests: step.min_requests.or(base.min_requests),
        failure_limit: step.failure_limit.or(base.failure_limit),
        no_data: step.no_data.clone().or_else(|| base.no_data.clone()),
        success_rate: step
            .success_rate
            .clone()
            .or_else(|| base.success_rate.clone()),
        latency: step.latency.clone().or_else(|| base.latency.clone()),
        checks: step.checks.clone().or_else(|| base.checks.clone()),
    }
}

/// A step's analysis: the Rollout's with the step's overrides, defaults applied. `routed`:
/// whether the step has a plugin rule (the built-in checks read its metrics).
fn step_analysis(
    at: &str,
    base: Option<&crd::Analysis>,
    step: Option<&crd::Analysis>,
    routed: bool,
) -> Result<Option<Analysis>, Invalid> {
    if let Some(own) = step {
        check_analysis_fields(&format!("{at}.analysis"), own)?;
    }
    let (spec, where_) = match (base, step) {
        (None, None) => return Ok(None),
        (Some(b), None) => (b.clone(), ANALYSIS_AT.to_owned()),
        (None, Some(s)) => (s.clone(), format!("{at}.analysis")),
        (Some(b), Some(s)) => (merge_analysis(b, s), format!("{at}.analysis")),
    };
    if spec.enabled == Some(false) {
        return Ok(None);
    }
    let mut checks = Vec::new();
    if let Some(sr) = &spec.success_rate {
        if let Some(min_percent) = sr.min_percent {
            checks.push(Check {
                name: analysis::success_rate_name(),
                kind: CheckKind::SuccessRate { min_percent },
            });
        }
        if let Some(max_drop) = sr.max_drop_from_stable {
            checks.push(Check {
                name: analysis::success_rate_vs_stable_name(),
                kind: CheckKind::SuccessRateVsStable { max_drop },
            });
        }
    }
    if let Some(l) = &spec.latency {
        let percentile = l.percentile.unwrap_or(analysis::DEFAULT_PERCENTILE);
        if let Some(max_ms) = l.max_ms {
            checks.push(Check {
                name: analysis::latency_name(percentile),
                kind: CheckKind::Latency { percentile, max_ms },
            });
        }
        if let Some(max_ratio) = l.max_ratio_to_stable {
            checks.push(Check {
                name: analysis::latency_vs_stable_name(percentile),
                kind: CheckKind::LatencyVsStable {
                    percentile,
                    max_ratio,
                },
            });
        }
    }
    let builtin = checks.len();
    for custom in spec.checks.iter().flatten() {
        if checks.iter().any(|c| c.name == custom.name) {
            return Err(Invalid::spec(format!(
                "{where_}.checks: the name {:?} is a built-in check's; choose another",
                custom.name
            )));
        }
        checks.push(Check {
            name: custom.name.clone(),
            kind: CheckKind::Query {
                template: custom.query.clone(),
                min: custom.min,
                max: custom.max,
            },
        });
    }
    if checks.is_empty() {
        return Err(Invalid::spec(format!(
            "{where_} has no checks: set successRate, latency or checks (or enabled: false to              turn analysis off)"
        )));
    }
    if builtin > 0 && !routed {
        return Err(Invalid::spec(format!(
            "{at}: successRate and latency read the plugin's metrics, which a step without              weight or matches does not produce; give the step a weight, use custom checks, or              set analysis.enabled: false for it"
        )));
    }
    let interval_seconds = spec
        .interval_seconds
        .map_or(analysis::DEFAULT_INTERVAL_SECONDS, i64::from);
    let failure_limit = spec
        .failure_limit
        .and_then(|f| u32::try_from(f).ok())
        .unwrap_or(analysis::DEFAULT_FAILURE_LIMIT);
    let no_data = match &spec.no_data {
        Some(n) if n.action == NoDataAction::Fail => NoDataPolicy::FailAfter {
            seconds: n
                .timeout_seconds
                .map_or(i64::from(failure_limit) * interval_seconds, i64::from),
        },
        _ => NoDataPolicy::Wait,
    };
    Ok(Some(Analysis {
        interval_seconds,
        window_seconds: spec
            .window_seconds
            .map_or(analysis::DEFAULT_WINDOW_SECONDS, i64::from),
        min_requests: spec
            .min_requests
            .and_then(|m| u64::try_from(m).ok())
            .unwrap_or(analysis::DEFAULT_MIN_REQUESTS),
        failure_limit,
        no_data,
        checks,
    }))
}

fn build_rule(step: &CanaryStep, base: &RuleBase<'_>) -> RuleConfig {
    let ext = base.ext;
    RuleConfig {
        match_route: base.routes.to_vec(),
        rollout: base.key.to_owned(),
        tag_header: base.tag_header.to_owned(),
        tag_value: base.tag_value.to_owned(),
        // 0..=100, checked by the caller.
        weight: u8::try_from(step.weight.unwrap_or(0))
            .ok()
            .and_then(Weight::from_percent)
            .unwrap_or_default(),
        matches: step.matches.iter().map(match_group).collect(),
        sticky: ext.sticky.as_ref().map(Into::into),
        r#override: ext.r#override.as_ref().map(Into::into),
        version_header: ext.version_header.clone(),
        ..Default::default()
    }
}

/// One Kruise match becomes one plugin match group. Kruise's `canary-by-cookie` header
/// (nginx's "cookie `<value>` is `always`") becomes a cookie condition.
fn match_group(m: &HttpRouteMatch) -> MatchGroup {
    let mut group = MatchGroup {
        headers: Vec::new(),
        cookies: m.cookies.iter().map(Into::into).collect(),
        query_params: m.query_params.iter().map(Into::into).collect(),
        path: m.path.as_ref().map(Into::into),
    };
    for header in &m.headers {
        let exact = header
            .r#type
            .is_none_or(|t| t == crate::crd::MatchType::Exact);
        if exact && header.name.eq_ignore_ascii_case(CANARY_BY_COOKIE) {
            group.cookies.push(wire::ValueMatch {
                name: header.value.clone(),
                r#type: wire::MatchType::Exact,
                value: "always".to_owned(),
            });
        } else {
            group.headers.push(header.into());
        }
    }
    group
}

fn check_int_or_percent(at: &str, value: &IntOrString, zero_ok: bool) -> Result<(), Invalid> {
    let ok = match value {
        IntOrString::Int(n) => *n > 0 || (zero_ok && *n == 0),
        IntOrString::String(s) => {
            parse_percent(s).is_some_and(|p| (p > 0 || (zero_ok && p == 0)) && p <= 100)
        }
    };
    if ok {
        Ok(())
    } else {
        Err(Invalid::spec(format!(
            "{at} must be a positive count or a percentage between 1% and 100%, got {:?}",
            int_or_string(value)
        )))
    }
}

/// Steps may not shrink the canary. Without the Deployment's size only counts can be compared
/// with counts and percentages with percentages.
fn check_non_decreasing(steps: &[Step], total: Option<i32>) -> Result<(), Invalid> {
    for (i, pair) in steps.windows(2).enumerate() {
        let (a, b) = (&pair[0].replicas, &pair[1].replicas);
        let (va, vb) = match (total, a, b) {
            (Some(total), _, _) => (
                pair[0].canary_replicas(total),
                pair[1].canary_replicas(total),
            ),
            (None, IntOrString::Int(x), IntOrString::Int(y)) => (*x, *y),
            (None, IntOrString::String(x), IntOrString::String(y)) => {
                (parse_percent(x).unwrap_or(0), parse_percent(y).unwrap_or(0))
            }
            (None, _, _) => continue,
        };
        if vb < va {
            return Err(Invalid::spec(format!(
                "spec.strategy.canary.steps[{}].replicas ({}) is less than steps[{i}].replicas \
                 ({}); the canary may only grow from one step to the next",
                i + 1,
                int_or_string(b),
                int_or_string(a)
            )));
        }
    }
    Ok(())
}
