//! The results as the "Controller" section of `docs/benchmarks.md`, with the targets.

use std::{fmt::Write as _, time::Duration};

use crate::{
    latency::{self, ms, Sample},
    machine::Machine,
    scale,
};

/// The limit on the median time from approval to the gateway serving the new weight.
pub const LATENCY_P50_LIMIT: Duration = Duration::from_millis(200);
/// The limit on the controller's resident memory with 500 Rollouts.
pub const MEMORY_LIMIT_MIB: f64 = 150.0;

pub struct Report<'a> {
    pub machine: &'a Machine,
    /// The command as typed, e.g. `cargo xtask bench controller`.
    pub command: &'a str,
    /// Which sources the binaries were built from.
    pub source: &'a str,
    pub latency: Option<&'a latency::Outcome>,
    pub scale: Option<&'a scale::Outcome>,
    /// 1-minute load average at the end.
    pub load_at_end: String,
}

/// One target and its verdict.
pub struct Target {
    pub name: String,
    pub measured: String,
    pub limit: String,
    pub met: bool,
}

/// Nearest-rank percentile (`p` in 0..=100) of unsorted values; `None` when empty.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn fmt_ms(value: Option<f64>) -> String {
    match value {
        Some(v) if v >= 1_000.0 => format!("{:.2} s", v / 1_000.0),
        Some(v) => format!("{v:.1} ms"),
        None => "n/a".to_owned(),
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn pct(share: f64) -> String {
    format!("{:.0}%", 100.0 * share)
}

/// Served times of the approvals that do (`adds_pods`) or do not start a canary pod first.
fn served(samples: &[Sample], adds_pods: bool) -> Vec<f64> {
    samples
        .iter()
        .filter(|s| s.adds_pods == adds_pods)
        .map(|s| ms(s.served))
        .collect()
}

impl Report<'_> {
    pub fn targets(&self) -> Vec<Target> {
        let mut targets = Vec::new();
        if let Some(l) = self.latency {
            let limit = ms(LATENCY_P50_LIMIT);
            for (adds_pods, what) in [
                (false, "steps that change only the weight"),
                (true, "steps that first start another canary pod"),
            ] {
                let p50 = percentile(&served(&l.samples, adds_pods), 50.0);
                targets.push(Target {
                    name: format!("approve → gateway serves the new weight, p50, {what}"),
                    measured: fmt_ms(p50),
                    limit: format!("≤ {limit:.0} ms"),
                    met: p50.is_some_and(|v| v <= limit),
                });
            }
        }
        if let Some(s) = self.scale {
            targets.push(Target {
                name: format!(
                    "{} Rollouts released at once: all succeed, end state right",
                    s.apps
                ),
                measured: format!(
                    "{} of {}{}",
                    s.succeeded,
                    s.apps,
                    if s.check_failures.is_empty() {
                        String::new()
                    } else {
                        format!(", {} end-state problems", s.check_failures.len())
                    }
                ),
                limit: "all".to_owned(),
                met: s.succeeded == s.apps && s.check_failures.is_empty() && !s.gave_up,
            });
            let errors = s.adoption.metrics.error_total() + s.release.metrics.error_total();
            targets.push(Target {
                name: "… reconcile errors (adoption and release)".to_owned(),
                measured: errors.to_string(),
                limit: "0".to_owned(),
                met: errors == 0,
            });
            let failed = s.adoption.requests.failed_total() + s.release.requests.failed_total();
            targets.push(Target {
                name: "… failed API requests of the controller".to_owned(),
                measured: failed.to_string(),
                limit: "0".to_owned(),
                met: failed == 0,
            });
            let peak = mib(s.release.memory.hwm_kib);
            targets.push(Target {
                name: format!(
                    "… controller peak resident memory (VmHWM) with {} Rollouts",
                    s.apps
                ),
                measured: format!("{peak:.1} MiB"),
                limit: format!("≤ {MEMORY_LIMIT_MIB:.0} MiB"),
                met: peak <= MEMORY_LIMIT_MIB,
            });
        }
        targets
    }

    pub fn targets_markdown(&self) -> String {
        let mut out = String::from("| target | measured | limit | result |\n|---|---:|---:|---|\n");
        for t in self.targets() {
            let _ = writeln!(
                out,
                "| {} | {} | {} | **{}** |",
                t.name,
                t.measured,
                t.limit,
                if t.met { "PASS" } else { "FAIL" }
            );
        }
        out
    }

    fn load_note(&self) -> String {
        let other: Vec<f64> = self
            .latency
            .map(|l| l.other_cpu_share)
            .into_iter()
            .chain(self.scale.map(|s| s.release.other_cpu_share))
            .collect();
        let busiest = other.iter().copied().fold(0.0, f64::max);
        if busiest > 0.10 {
            format!(
                ", **under load**: other processes used up to {} of the machine's CPU time \
                 meanwhile, so the times are longer than on a quiet machine",
                pct(busiest)
            )
        } else {
            String::new()
        }
    }

    fn latency_markdown(&self, l: &latency::Outcome) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "### Approve → gateway\n\n\
             One app (a Deployment of {replicas} pods, its Service and Ingress) and a Rollout of \
             nine steps, 10% to 90% in steps of 10, each waiting for approval, canary pods \
             1, 1, 1, 2, 2, 2, 3, 3, 3, sticky on the `x-user-id` header; {releases} releases, \
             so {n} approvals were measured (the ninth approval of each release starts the \
             promotion and is not). Times from sending the approval to the first request the \
             canary answered at the new weight:\n\n\
             | steps | approvals | p50 | p90 | max | min |\n\
             |---|---:|---:|---:|---:|---:|",
            replicas = latency::REPLICAS,
            releases = l.releases,
            n = l.samples.len(),
        );
        let all: Vec<f64> = l.samples.iter().map(|s| ms(s.served)).collect();
        for (what, values) in [
            ("only the weight changes", served(&l.samples, false)),
            ("another canary pod starts first", served(&l.samples, true)),
            ("all", all),
        ] {
            let _ = writeln!(
                out,
                "| {what} | {} | {} | {} | {} | {} |",
                values.len(),
                fmt_ms(percentile(&values, 50.0)),
                fmt_ms(percentile(&values, 90.0)),
                fmt_ms(percentile(&values, 100.0)),
                fmt_ms(percentile(&values, 0.0)),
            );
        }
        let weight_only: Vec<&Sample> = l.samples.iter().filter(|s| !s.adds_pods).collect();
        let stage = |f: &dyn Fn(&Sample) -> Option<Duration>| -> Vec<f64> {
            weight_only.iter().filter_map(|s| f(s)).map(ms).collect()
        };
        let _ = writeln!(
            out,
            "\nWhere the time goes, over the approvals that change only the weight. Each row is \
             measured from the approval, so it includes the rows above it:\n\n\
             | from the approval until … | p50 | p90 | max | samples |\n\
             |---|---:|---:|---:|---:|"
        );
        let rows: [(&str, Vec<f64>); 4] = [
            (
                "the controller's status write for the next step arrives on a watch",
                stage(&|s| s.status),
            ),
            (
                "the WasmPlugin with the new weight arrives on a watch",
                stage(&|s| s.plugin),
            ),
            (
                "the gateway has written the plugin's ECDS file (its mtime)",
                stage(&|s| s.ecds_file),
            ),
            (
                "the first request at the new weight reaches the canary",
                stage(&|s| Some(s.served)),
            ),
        ];
        for (what, values) in rows {
            let _ = writeln!(
                out,
                "| {what} | {} | {} | {} | {} |",
                fmt_ms(percentile(&values, 50.0)),
                fmt_ms(percentile(&values, 90.0)),
                fmt_ms(percentile(&values, 100.0)),
                values.len()
            );
        }
        let _ = writeln!(
            out,
            "\nThe controller over these {releases} releases: {reconciles} reconciles \
             ({per:.1} ms each on average), {errors} reconcile errors{error_kinds}; \
             {requests} API requests ({verbs}; {not_found} reads of objects not yet created \
             answered 404), failed: {failed}; resident memory \
             {rss:.1} MiB, peak {hwm:.1} MiB. Wall time {wall}.\n",
            releases = l.releases,
            reconciles = l.metrics.reconciles,
            per = if l.metrics.duration_count > 0 {
                1e3 * l.metrics.duration_sum_seconds / l.metrics.duration_count as f64
            } else {
                0.0
            },
            errors = l.metrics.error_total(),
            error_kinds = error_kinds(&l.metrics),
            requests = l.requests.total,
            verbs = l.requests.verbs_text(),
            failed = l.requests.failed_text(),
            not_found = l.requests.not_found_reads,
            rss = mib(l.memory.rss_kib),
            hwm = mib(l.memory.hwm_kib),
            wall = secs(l.wall),
        );
        out
    }

    fn scale_markdown(&self, s: &scale::Outcome) -> String {
        let steps = scale::steps();
        let per_rollout = |n: usize| n as f64 / s.apps as f64;
        let release_cpu_share = s.release.cpu.as_secs_f64() / s.release.wall.as_secs_f64();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "### {apps} Rollouts released at once\n\n\
             | | |\n\
             |---|---|\n\
             | apps | {apps} Deployments of {replicas} pod{plural}, each with a Service, an \
             Ingress (its own host) and a Rollout: {steps_text}, each `pause: {{duration: 0}}`, \
             grace period 3 s (Kruise's default) |\n\
             | gateway | {gateway} |\n\
             | setup (not timed against a target) | {setup} to create the apps and have their \
             pods and routes served |\n\
             | adoption | controller started, then {apps} Rollouts created: all `Healthy` after \
             {adoption}; {a_reconciles} reconciles, {a_errors} errors{a_kinds}; {a_requests} API \
             requests ({a_per:.1} per Rollout), failed: {a_failed} |\n\
             | release | every image changed within {images}; first Rollout released after \
             {first}, half after {half}, {done} of {apps} after **{all}**{gave_up} |\n\
             | reconciles | {r_reconciles} ({r_per:.1} per Rollout, {r_ms:.1} ms each on \
             average); errors: {r_errors}{r_kinds} |\n\
             | controller API requests in the release | {r_requests} ({r_per_rollout:.1} per \
             Rollout): {r_verbs} |\n\
             | most frequent | {r_kinds_top} |\n\
             | failed | {r_failed} ({r_not_found} reads of objects not yet created answered \
             404, not counted as failures) |\n\
             | controller CPU time in the release | {r_cpu} ({r_cpu_share} of one CPU) |\n\
             | sandbox CPU time in the release | {s_cpu} ({s_cpu_share} of one CPU): API \
             server, simulator and pod servers{bridge}, the benchmark's polling |\n\
             | all API requests in the release, by client | {by_client} |\n\
             | controller memory | resident {a_rss:.1} MiB after adoption, {r_rss:.1} MiB after \
             the release; peak (VmHWM) **{hwm:.1} MiB** |\n\
             | end state | {end} |\n\
             | controller log | {warnings} |\n",
            apps = s.apps,
            replicas = s.replicas,
            plural = if s.replicas == 1 { "" } else { "s" },
            steps_text = steps
                .iter()
                .map(|st| format!("{}% with {} canary pod", st.weight, st.replicas))
                .collect::<Vec<_>>()
                .join(" → "),
            gateway = match &s.without_gateway {
                None => "running: the bridge watches every Ingress, Service and Endpoints and \
                         drives Envoy"
                    .to_owned(),
                Some(why) => format!(
                    "**not running**: {why}. The controller does not depend on the gateway; \
                     without it the machine has more CPU for the controller, the API server \
                     and the simulator"
                ),
            },
            setup = secs(s.setup),
            adoption = secs(s.adoption.wall),
            a_reconciles = s.adoption.metrics.reconciles,
            a_errors = s.adoption.metrics.error_total(),
            a_kinds = error_kinds(&s.adoption.metrics),
            a_requests = s.adoption.requests.total,
            a_per = per_rollout(s.adoption.requests.total),
            a_failed = s.adoption.requests.failed_text(),
            images = secs(s.images_changed),
            first = s.first_done.map_or("n/a".to_owned(), secs),
            half = s.half_done.map_or("n/a".to_owned(), secs),
            done = s.succeeded,
            all = secs(s.release.wall),
            gave_up = if s.gave_up { " (gave up waiting)" } else { "" },
            r_reconciles = s.release.metrics.reconciles,
            r_per = per_rollout(s.release.metrics.reconciles as usize),
            r_ms = if s.release.metrics.duration_count > 0 {
                1e3 * s.release.metrics.duration_sum_seconds
                    / s.release.metrics.duration_count as f64
            } else {
                0.0
            },
            r_errors = s.release.metrics.error_total(),
            r_kinds = error_kinds(&s.release.metrics),
            r_requests = s.release.requests.total,
            r_per_rollout = per_rollout(s.release.requests.total),
            r_verbs = s.release.requests.verbs_text(),
            r_kinds_top = s.release.requests.kinds_text(6),
            r_failed = s.release.requests.failed_text(),
            r_not_found = s.release.requests.not_found_reads,
            r_cpu = secs(s.release.cpu),
            r_cpu_share = pct(release_cpu_share),
            s_cpu = secs(s.release.sandbox_cpu),
            s_cpu_share = pct(s.release.sandbox_cpu.as_secs_f64() / s.release.wall.as_secs_f64()),
            bridge = if s.without_gateway.is_none() {
                ", gateway bridge"
            } else {
                ""
            },
            by_client = s
                .release
                .requests_by_client
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", "),
            a_rss = mib(s.adoption.memory.rss_kib),
            r_rss = mib(s.release.memory.rss_kib),
            hwm = mib(s.release.memory.hwm_kib),
            end = if s.gave_up {
                "not checked (the release did not finish)".to_owned()
            } else if s.check_failures.is_empty() {
                "no canary Deployment left; every Deployment paused on the new image with all \
                 pods updated and available; no rule left in the WasmPlugin"
                    .to_owned()
            } else {
                s.check_failures.join("; ")
            },
            warnings = match s.controller_warnings.len() {
                0 => "no WARN or ERROR line".to_owned(),
                n => format!(
                    "{n} WARN/ERROR lines, e.g. `{}`",
                    s.controller_warnings[0]
                        .chars()
                        .take(200)
                        .collect::<String>()
                ),
            },
        );
        if !s.unfinished.is_empty() {
            let _ = writeln!(out, "Not released: {}.\n", s.unfinished.join("; "));
        }
        out
    }

    /// The section, from its `## Controller` heading.
    pub fn markdown(&self) -> String {
        let m = self.machine;
        let controller_command = self
            .latency
            .map(|l| l.controller_command.as_str())
            .unwrap_or("higress-canary run");
        let mut out = format!(
            "## Controller\n\n\
             How long an approval takes to reach the gateway, and how the controller copes with \
             many Rollouts released at once. Both run end to end on the sandbox (fake API \
             server, workload simulator, gateway bridge driving a real Envoy) against the \
             release build of the controller, started as its own process.\n\n\
             Measured {date} with `{command}`{load}.\n\n\
             | | |\n\
             |---|---|\n\
             | CPU | {cpu}, {cpus} logical CPUs |\n\
             | kernel | Linux {kernel} |\n\
             | controller | `target/release/higress-canary` ({source}): `{controller_command}` |\n\
             | sandbox | in the benchmark's process, built with `--release`; pods ready 500 ms \
             after they start; Envoy with 2 workers, the plugin from `dist/plugin.wasm` |\n\
             | load | 1-minute load average {load_start} at the start, {load_end} at the end; \
             other processes' share of the CPU time: {other} |\n\n\
             ### Targets\n\n\
             From the issue: the time from `approve` to the gateway serving the new weight \
             (p50 ≤ 200 ms in the sandbox), and 500 Rollouts on 500 Deployments released at \
             once with no errors, all complete, and the controller's resident memory ≤ 150 MiB. \
             Verdicts are on the numbers as measured.\n\n\
             {targets}\n",
            date = m.date,
            command = self.command,
            load = self.load_note(),
            cpu = m.cpu_model,
            cpus = m.cpus,
            kernel = m.kernel,
            source = self.source,
            load_start = m.load_at_start,
            load_end = self.load_at_end,
            other = [
                self.latency
                    .map(|l| format!("{} in the latency part", pct(l.other_cpu_share))),
                self.scale.map(|s| format!(
                    "{} in the release of {}",
                    pct(s.release.other_cpu_share),
                    s.apps
                )),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(", "),
            targets = self.targets_markdown(),
        );
        if let Some(l) = self.latency {
            out.push_str(&self.latency_markdown(l));
        }
        if let Some(s) = self.scale {
            out.push_str(&self.scale_markdown(s));
        }
        out.push_str(&method_markdown());
        out
    }
}

fn error_kinds(metrics: &crate::controller::Metrics) -> String {
    if metrics.errors.is_empty() {
        return String::new();
    }
    format!(
        " ({})",
        metrics
            .errors
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn method_markdown() -> String {
    format!(
        "### Method\n\n\
         - The sandbox (API server, simulator, gateway bridge) runs inside the benchmark's \
         process, the controller (`higress-canary run`, release build) and Envoy as separate \
         processes. The sandbox's own clients and the benchmark's send `User-Agent`s of their \
         own; every other request in the API server's request log is the controller's. Leader election, where the binary has it, is off \
         (`--leader-elect=false`): one replica is measured.\n\
         - Approve → gateway: at each pause the benchmark reads the WasmPlugin, parses its \
         config with the plugin's own code (`canary_core`) and picks {keys} user ids that the \
         rule sends to stable at this step's weight and to the canary at the next one's, plus \
         one that is canary at both and one that is stable at both. It checks through the \
         gateway that they are routed so, sends the approval (the `/status` merge patch \
         `{{\"status\":{{\"canaryStatus\":{{\"currentStepState\":\"StepReady\"}}}}}}` that \
         `kubectl-kruise rollout approve` sends), then polls the gateway on one keep-alive \
         connection with the moving ids, {gap} ms apart, until one is answered by the canary \
         version. That is the measured time; its resolution is the poll gap plus one request \
         (about 1 ms). It then checks that every moving id reaches the canary and the stable \
         id still reaches stable. Envoy runs 2 workers; the poll connection is on one of them.\n\
         - The breakdown uses the benchmark's own watches on the Rollout and the WasmPlugin \
         (arrival time of the first version showing the next step or the new weight), and the \
         modification time of the gateway's ECDS file. Watch arrival includes the API \
         server's fan-out and the benchmark's scheduling, a millisecond or so.\n\
         - The latency Rollout's grace period is {grace} s instead of Kruise's 3 s: the grace \
         period runs after a routing change and before the step pauses, so it lengthens the \
         benchmark but not the measured time.\n\
         - Many Rollouts: the apps are created and their pods served before the controller \
         starts; then the Rollouts are created (adoption), then every Deployment's image is \
         changed with {parallel} patches in flight. Progress is one list of Rollouts per \
         second. A Rollout counts as released when it is `Healthy` with `Succeeded=True`; \
         none had a `Succeeded` condition before. Errors are the controller's \
         `higress_canary_reconcile_errors_total` (every kind, conflicts included) and its \
         requests the API server answered with ≥ 400 or dropped. Memory is `VmRSS` and \
         `VmHWM` of `/proc/<pid>/status` (VmHWM is the kernel's record of the peak since the \
         process started, covering adoption and release). CPU time is `utime + stime` of \
         `/proc/<pid>/stat`.\n\
         - Other processes' share is the machine's busy time in `/proc/stat` minus that of \
         the benchmark and its children, over all CPUs' time; above 10% the run is marked as \
         taken under load.\n\
         - Percentiles are nearest-rank. Reproduce with `cargo xtask bench controller` \
         (`--releases`, `--apps`, `--replicas`, `--only latency|scale`, `--no-write`, \
         `--check`); it builds the release binaries and the plugin first.\n",
        keys = latency::MOVING_KEYS,
        gap = latency::POLL_GAP.as_millis(),
        grace = latency::GRACE_SECONDS,
        parallel = scale::PARALLEL_WRITES,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let values = [5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(percentile(&values, 50.0), Some(3.0));
        assert_eq!(percentile(&values, 90.0), Some(5.0));
        assert_eq!(percentile(&values, 100.0), Some(5.0));
        assert_eq!(percentile(&values, 0.0), Some(1.0));
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&ten, 50.0), Some(5.0));
        assert_eq!(percentile(&ten, 90.0), Some(9.0));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
