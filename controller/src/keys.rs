//! Names the controller writes on objects: finalizers, labels, annotations, selector keys.
//! Kruise's keys where Kruise has one, so tools that read them keep working.

/// Finalizer on a Rollout: deleting it first routes traffic back to stable and cleans up.
pub const ROLLOUT_FINALIZER: &str = "rollouts.kruise.io/rollout";
/// Label on the canary Deployment naming the stable Deployment.
pub const CANARY_DEPLOYMENT_LABEL: &str = "rollouts.kruise.io/canary-deployment";
/// Rollout annotation choosing Kruise's rolling style; only `canary` is supported.
pub const ROLLING_STYLE_ANNOTATION: &str = "rollouts.kruise.io/rolling-style";
/// Workload label (or annotation) naming a release, as Kruise reads it.
pub const ROLLOUT_ID_LABEL: &str = "rollouts.kruise.io/rollout-id";
/// The label Deployments give their pods and ReplicaSets; Services select it to split
/// versions.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// Rollout annotation that aborts the release of one revision: its value is the
/// `status.canaryStatus.canaryRevision` to abort. A stale value (another revision) does
/// nothing, so nobody has to clean it up; remove it to release that revision again.
pub const ABORT_ANNOTATION: &str = "rollouts.higress-canary.io/abort";
/// Annotation on the canary Deployment: the revision (pod template hash) it runs.
pub const REVISION_ANNOTATION: &str = "rollouts.higress-canary.io/revision";
/// Label on every object the controller creates, naming the Rollout.
pub const ROLLOUT_LABEL: &str = "rollouts.higress-canary.io/rollout";
/// `app.kubernetes.io/managed-by` value on created objects.
pub const MANAGED_BY: &str = "higress-canary";

/// Higress canary Ingress annotations (Higress also reads the nginx prefix, first).
pub const HIGRESS_CANARY: &str = "higress.io/canary";
pub const HIGRESS_CANARY_BY_HEADER: &str = "higress.io/canary-by-header";
pub const HIGRESS_CANARY_BY_HEADER_VALUE: &str = "higress.io/canary-by-header-value";
/// Annotation prefixes whose `canary*` keys must not be copied from the stable Ingress.
pub const CANARY_ANNOTATION_PREFIXES: &[&str] = &["higress.io/", "nginx.ingress.kubernetes.io/"];
