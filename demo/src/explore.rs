//! What `--keep` prints: the commands to explore the sandbox the demo leaves running.

use std::fmt::Write as _;

/// What the commands need to name.
#[derive(Debug, Clone)]
pub struct Explore {
    pub kubeconfig: String,
    pub kubectl: String,
    /// How to run `higress-canary`: a binary path or a `cargo run` line.
    pub cli: String,
    pub gateway: String,
    /// The version every request gets now.
    pub version: String,
    pub rollout: String,
    pub deployment: String,
    pub container: String,
    /// The image without its tag.
    pub image: String,
    pub next_version: String,
    /// A request header the Rollout's steps match (name, value), if any.
    pub match_header: Option<(String, String)>,
    /// The override header, if the Rollout configures one.
    pub override_header: Option<String>,
    /// Every step advances by itself (`pause.duration`, with its analysis holding): no
    /// approvals to give.
    pub automatic: bool,
    /// A pod-template annotation to drop with the image change (the sandbox's `error-rate`
    /// knob a story left behind), so the next version answers cleanly.
    pub drop_template_annotation: Option<String>,
}

/// The commands, ready to paste, in the order to run them.
pub fn commands(e: &Explore) -> String {
    let url = format!("http://{}/version", e.gateway);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "The sandbox keeps running; Ctrl-C stops it. Explore it from another terminal:\n"
    );
    let _ = writeln!(s, "  export KUBECONFIG={}", e.kubeconfig);
    let _ = writeln!(
        s,
        "  {} get rollouts,deployments,pods,services,ingresses",
        e.kubectl
    );
    let _ = writeln!(
        s,
        "  {} get wasmplugins -n higress-system higress-canary -o yaml",
        e.kubectl
    );
    let _ = writeln!(s, "  {} status", e.cli);
    let _ = writeln!(s, "  curl -s {url}    # {}", e.version);

    let _ = writeln!(
        s,
        "\nRelease {} through Rollout {}, overriding single requests on the way:",
        e.next_version, e.rollout
    );
    let header = match &e.override_header {
        Some(header) => header.clone(),
        None => {
            let header = canary_core::config::DEFAULT_OVERRIDE_HEADER;
            let _ = writeln!(
                s,
                "  # the seed Rollouts leave the override header off; turn it on first:"
            );
            let _ = writeln!(
                s,
                "  {} patch rollout {} --type merge -p '{{\"spec\":{{\"strategy\":{{\"canary\":{{\"higress\":{{\"override\":{{\"header\":\"{header}\"}}}}}}}}}}}}'",
                e.kubectl, e.rollout
            );
            header.to_owned()
        }
    };
    match &e.drop_template_annotation {
        None => {
            let _ = writeln!(
                s,
                "  {} set image deployment/{} {}={}:{}",
                e.kubectl, e.deployment, e.container, e.image, e.next_version
            );
        }
        Some(annotation) => {
            // One patch, so the template changes once and one release starts.
            let escaped = annotation.replace('~', "~0").replace('/', "~1");
            let _ = writeln!(
                s,
                "  # the last version was made to fail; release the next one without that knob:"
            );
            let _ = writeln!(
                s,
                "  {} patch deployment {} --type json -p '[{{\"op\":\"remove\",\"path\":\"/spec/template/metadata/annotations/{escaped}\"}},{{\"op\":\"replace\",\"path\":\"/spec/template/spec/containers/0/image\",\"value\":\"{}:{}\"}}]'",
                e.kubectl, e.deployment, e.image, e.next_version
            );
        }
    }
    let watch_hint = if e.automatic {
        "Ctrl-C once step 1 is in place (StepMetricsAnalysis)"
    } else {
        "Ctrl-C once step 1 is StepPaused"
    };
    let _ = writeln!(s, "  {} status -w {}    # {watch_hint}", e.cli, e.rollout);
    if let Some((name, value)) = &e.match_header {
        let _ = writeln!(
            s,
            "  curl -s -H '{name}: {value}' {url}    # {}",
            e.next_version
        );
    }
    let _ = writeln!(s, "  curl -s {url}    # {}", e.version);
    let _ = writeln!(
        s,
        "  curl -s -H '{header}: canary' {url}    # {}",
        e.next_version
    );
    if let Some((name, value)) = &e.match_header {
        let _ = writeln!(
            s,
            "  curl -s -H '{name}: {value}' -H '{header}: stable' {url}    # {}",
            e.version
        );
    }
    if e.automatic {
        let _ = writeln!(
            s,
            "  {} status -w {}    # each step advances once its analysis held for its pause",
            e.cli, e.rollout
        );
    } else {
        let _ = writeln!(s, "  {} approve {}", e.cli, e.rollout);
    }
    let _ = writeln!(s, "  curl -s {url}    # {} once released", e.next_version);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn explore(override_header: Option<&str>) -> Explore {
        Explore {
            kubeconfig: "/w/target/demo/kubeconfig".into(),
            kubectl: "/w/.venv/bin/kubectl".into(),
            cli: "/w/target/debug/higress-canary".into(),
            gateway: "127.0.0.1:4000".into(),
            version: "v3".into(),
            rollout: "rollouts-header".into(),
            deployment: "demo".into(),
            container: "main".into(),
            image: "registry/version".into(),
            next_version: "v4".into(),
            match_header: Some(("user-agent".into(), "android".into())),
            override_header: override_header.map(str::to_owned),
            automatic: false,
            drop_template_annotation: None,
        }
    }

    #[test]
    fn without_an_override_header_it_says_how_to_turn_it_on() {
        let text = commands(&explore(None));
        for want in [
            "export KUBECONFIG=/w/target/demo/kubeconfig",
            "/w/.venv/bin/kubectl set image deployment/demo main=registry/version:v4",
            "/w/target/debug/higress-canary approve rollouts-header",
            "curl -s -H 'user-agent: android' http://127.0.0.1:4000/version    # v4",
            r#"patch rollout rollouts-header --type merge -p '{"spec":{"strategy":{"canary":{"higress":{"override":{"header":"x-canary-override"}}}}}}'"#,
            "curl -s -H 'x-canary-override: canary' http://127.0.0.1:4000/version    # v4",
        ] {
            assert!(text.contains(want), "no {want:?} in\n{text}");
        }
        let at = |what: &str| text.find(what).unwrap();
        assert!(
            at("patch rollout") < at("set image"),
            "turned on before the release"
        );
        assert!(at("set image") < at("x-canary-override: canary"));
        assert!(at("x-canary-override: canary") < at("approve"));
    }

    #[test]
    fn after_an_automatic_failing_story_it_drops_the_knob_and_does_not_approve() {
        let mut e = explore(Some("x-pick"));
        e.automatic = true;
        e.drop_template_annotation = Some("sandbox.higress-canary.io/error-rate".into());
        let text = commands(&e);
        assert!(!text.contains("set image"), "{text}");
        assert!(!text.contains(" approve "), "{text}");
        assert!(
            text.contains(
                r#"/spec/template/metadata/annotations/sandbox.higress-canary.io~1error-rate"#
            ) && text.contains(r#""value":"registry/version:v4""#),
            "{text}"
        );
        assert!(text.contains("once its analysis held"), "{text}");
    }

    #[test]
    fn with_an_override_header_it_uses_it() {
        let text = commands(&explore(Some("x-pick")));
        assert!(!text.contains("patch rollout"), "{text}");
        assert!(text.contains("-H 'x-pick: canary'"), "{text}");
        assert!(
            text.contains("-H 'user-agent: android' -H 'x-pick: stable'"),
            "{text}"
        );
    }
}
