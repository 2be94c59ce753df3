//! CRDs the sandbox ships (the YAML lives in `sandbox/crds/`).

/// Higress's `wasmplugins.extensions.higress.io` CRD (v1alpha1, namespaced, status
/// subresource, `defaultConfig` and `matchRules[].config` preserve unknown fields).
pub fn higress_wasmplugin_crd_yaml() -> &'static str {
    include_str!("../../crds/wasmplugins.extensions.higress.io.yaml")
}
