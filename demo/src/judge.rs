//! Verdicts, sans I/O: for every window in which one step's routing was in force, the share
//! of each client group's answers that came from the new version, with a Wilson score
//! interval, against the configured share (and, for an ending such as a rollback, whether the
//! Rollout ended as required); and which failed requests were expected (the 500s of a
//! version released to fail) and which were not.

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use crate::traffic::{Answer, Sample};

/// z of a two-sided 99.9% interval.
pub const Z_999: f64 = 3.290_527;
/// Fewer answers than this in a window cannot say much; such a check fails rather than pass
/// on a wide interval.
pub const MIN_REQUESTS: u64 = 100;

/// A stretch of time during which one configuration was in force and served by the gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// Index into the stories.
    pub story: usize,
    /// "1/2", or "released".
    pub step: String,
    /// "weight 10%", "user-agent=android", "all traffic".
    pub config: String,
    /// The version the story releases.
    pub new_version: String,
    pub start: Duration,
    pub end: Duration,
    /// Per client, the share of its requests the new version should answer.
    pub expected: Vec<f64>,
    /// What the Rollout must have done for this window to pass, as the director found it.
    pub requirement: Option<Requirement>,
}

/// Something the director checked on the Rollout itself, e.g. that the analysis rolled it
/// back.
#[derive(Debug, Clone, PartialEq)]
pub struct Requirement {
    /// What was found: `Succeeded=False, Analysis=False (CheckFailed): success-rate 80.1%`.
    pub found: String,
    pub met: bool,
}

/// One verdict: a window and the clients that expect the same share in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// Index into the windows.
    pub window: usize,
    pub clients: Vec<usize>,
    pub expected: f64,
    /// Answers from a known version in the window: successes, and pods' error answers
    /// (which count for the pod's version).
    pub requests: u64,
    /// Of which from the new version.
    pub new: u64,
    /// Failed answers in the window, of any kind.
    pub failures: u64,
    /// 99.9% Wilson interval of the observed share.
    pub interval: (f64, f64),
    /// The window's requirement was met (true when it has none).
    pub requirement_met: bool,
}

impl Check {
    pub fn observed(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.new as f64 / self.requests as f64
        }
    }

    /// The configured share lies inside the interval, from enough answers. For a configured
    /// 0 or 1 this means every answer agreed (the interval touches 0 only when none was new).
    pub fn matched(&self) -> bool {
        self.requirement_met
            && self.requests >= MIN_REQUESTS
            && self.interval.0 <= self.expected
            && self.expected <= self.interval.1
    }
}

/// The Wilson score interval of `successes` out of `n` at `z`. Exact at the ends: 0 successes
/// give a lower bound of exactly 0, `n` an upper bound of exactly 1.
pub fn wilson(successes: u64, n: u64, z: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let nf = n as f64;
    let p = successes as f64 / nf;
    let z2 = z * z;
    let centre = (p + z2 / (2.0 * nf)) / (1.0 + z2 / nf);
    let half = z * (p * (1.0 - p) / nf + z2 / (4.0 * nf * nf)).sqrt() / (1.0 + z2 / nf);
    let lower = if successes == 0 {
        0.0
    } else {
        (centre - half).max(0.0)
    };
    let upper = if successes == n {
        1.0
    } else {
        (centre + half).min(1.0)
    };
    (lower, upper)
}

/// Image tag by pod name, for the pods' error answers.
pub type PodVersions = BTreeMap<String, String>;

/// The version that gave an answer, if known.
fn version_of<'a>(answer: &'a Answer, pods: &'a PodVersions) -> Option<&'a str> {
    match answer {
        Answer::Version(v) => Some(v),
        Answer::Rejected { pod, .. } => pods.get(pod).map(String::as_str),
        Answer::Failed(_) => None,
    }
}

/// One check per window and group of clients expecting the same share, in window order.
pub fn judge(windows: &[Window], samples: &[Sample], pods: &PodVersions) -> Vec<Check> {
    let mut checks = Vec::new();
    for (index, window) in windows.iter().enumerate() {
        let mut groups: Vec<(f64, Vec<usize>)> = Vec::new();
        for (client, &share) in window.expected.iter().enumerate() {
            match groups.iter_mut().find(|(s, _)| *s == share) {
                Some((_, clients)) => clients.push(client),
                None => groups.push((share, vec![client])),
            }
        }
        for (expected, clients) in groups {
            let mut check = Check {
                window: index,
                clients,
                expected,
                requests: 0,
                new: 0,
                failures: 0,
                interval: (0.0, 1.0),
                requirement_met: window.requirement.as_ref().is_none_or(|r| r.met),
            };
            for sample in samples.iter().filter(|s| {
                s.at >= window.start && s.at < window.end && check.clients.contains(&s.client)
            }) {
                check.failures += u64::from(sample.answer.failed());
                if let Some(version) = version_of(&sample.answer, pods) {
                    check.requests += 1;
                    check.new += u64::from(version == window.new_version);
                }
            }
            check.interval = wilson(check.new, check.requests, Z_999);
            checks.push(check);
        }
    }
    checks
}

/// The failed answers of the run, oldest first.
#[derive(Debug, Default)]
pub struct Failures<'a> {
    /// 500s from pods of a version released to answer them (by design, not a fault of the
    /// release machinery).
    pub expected: Vec<&'a Sample>,
    /// Everything else: connection errors, the gateway's own errors, errors from other
    /// versions' pods.
    pub genuine: Vec<&'a Sample>,
}

/// Sorts the failed answers into expected and genuine; `faulty` are the versions released to
/// answer 500.
pub fn failures<'a>(samples: &'a [Sample], pods: &PodVersions, faulty: &[&str]) -> Failures<'a> {
    let mut out = Failures::default();
    for sample in samples.iter().filter(|s| s.answer.failed()) {
        let expected = matches!(&sample.answer, Answer::Rejected { status: 500, .. })
            && version_of(&sample.answer, pods).is_some_and(|v| faulty.contains(&v));
        if expected {
            out.expected.push(sample);
        } else {
            out.genuine.push(sample);
        }
    }
    out.expected.sort_by_key(|s| s.at);
    out.genuine.sort_by_key(|s| s.at);
    out
}

/// A percentage with one decimal, or none when whole: `10%`, `9.8%`, `100%`.
pub fn percent(share: f64) -> String {
    let p = share * 100.0;
    if (p - p.round()).abs() < 0.05 {
        format!("{}%", p.round())
    } else {
        format!("{p:.1}%")
    }
}

/// The client names of a check, `all` when every client is in it.
pub fn client_names(clients: &[usize], names: &[&str]) -> String {
    if clients.len() == names.len() {
        "all clients".to_owned()
    } else {
        clients
            .iter()
            .map(|&c| names.get(c).copied().unwrap_or("?"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The summary table printed at the end.
pub fn summary_table(
    story_titles: &[&str],
    windows: &[Window],
    checks: &[Check],
    client_names_: &[&str],
) -> String {
    let header = [
        "STORY",
        "STEP",
        "CONFIG",
        "CLIENTS",
        "CONFIGURED",
        "OBSERVED [99.9% CI]",
        "REQUESTS",
        "FAILED",
        "RESULT",
    ];
    let rows: Vec<[String; 9]> = checks
        .iter()
        .map(|check| {
            let window = &windows[check.window];
            [
                story_titles
                    .get(window.story)
                    .copied()
                    .unwrap_or("?")
                    .to_owned(),
                window.step.clone(),
                window.config.clone(),
                client_names(&check.clients, client_names_),
                format!("{} {}", percent(check.expected), window.new_version),
                format!(
                    "{} [{}, {}]",
                    percent(check.observed()),
                    percent(check.interval.0),
                    percent(check.interval.1)
                ),
                check.requests.to_string(),
                check.failures.to_string(),
                verdict(check).to_owned(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut text = String::new();
        for (cell, w) in cells.iter().zip(widths) {
            let _ = write!(text, "{cell:<w$}  ");
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&header);
    for row in &rows {
        line(&row.each_ref().map(String::as_str));
    }
    out
}

/// "ok", "UNMET" (the Rollout did not end as required), "MISMATCH" or "TOO FEW".
pub fn verdict(check: &Check) -> &'static str {
    if check.matched() {
        "ok"
    } else if !check.requirement_met {
        "UNMET"
    } else if check.requests < MIN_REQUESTS {
        "TOO FEW"
    } else {
        "MISMATCH"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: u64, client: usize, version: &str) -> Sample {
        Sample {
            at: Duration::from_millis(at_ms),
            client,
            answer: Answer::Version(version.to_owned()),
        }
    }

    #[test]
    fn wilson_matches_known_values_and_is_exact_at_the_ends() {
        // 10 of 100 at 95%: [0.0552, 0.1744] (Wilson 1927; any statistics table).
        let (lo, hi) = wilson(10, 100, 1.959_964);
        assert!((lo - 0.0552).abs() < 1e-4, "{lo}");
        assert!((hi - 0.1744).abs() < 1e-4, "{hi}");
        assert_eq!(wilson(0, 500, Z_999).0, 0.0);
        assert!(wilson(0, 500, Z_999).1 > 0.0);
        assert_eq!(wilson(500, 500, Z_999).1, 1.0);
        assert!(wilson(1, 500, Z_999).0 > 0.0);
    }

    fn window(expected: Vec<f64>) -> Window {
        Window {
            story: 0,
            step: "1/1".into(),
            config: "weight 10%".into(),
            new_version: "v2".into(),
            start: Duration::from_secs(1),
            end: Duration::from_secs(2),
            expected,
            requirement: None,
        }
    }

    #[test]
    fn a_window_is_judged_per_group_of_clients_expecting_the_same_share() {
        let mut samples = Vec::new();
        for i in 0..1000u64 {
            // Client 0 always v2; client 1 v2 one time in ten; outside the window: noise.
            samples.push(sample(1000 + i, 0, "v2"));
            let v = if i % 10 == 0 { "v2" } else { "v1" };
            samples.push(sample(1000 + i, 1, v));
            samples.push(sample(2500, 1, "v2"));
        }
        samples.push(Sample {
            at: Duration::from_millis(1500),
            client: 1,
            answer: Answer::Failed("503".into()),
        });
        let checks = judge(&[window(vec![1.0, 0.1])], &samples, &PodVersions::new());
        assert_eq!(checks.len(), 2);
        assert_eq!((checks[0].clients.clone(), checks[0].new), (vec![0], 1000));
        assert!(checks[0].matched());
        assert_eq!((checks[1].clients.clone(), checks[1].new), (vec![1], 100));
        assert_eq!(checks[1].failures, 1);
        assert!(checks[1].matched());
        let table = summary_table(&["canary"], &[window(vec![1.0, 0.1])], &checks, &["a", "b"]);
        assert!(table.contains("100% v2"), "{table}");
        assert!(table.contains("10% [7.3%, 13.6%]"), "{table}");
    }

    #[test]
    fn a_share_outside_the_interval_or_too_few_answers_do_not_match() {
        let samples: Vec<Sample> = (0..1000)
            .map(|i| sample(1000 + i, 0, if i % 5 == 0 { "v2" } else { "v1" }))
            .collect();
        let checks = judge(&[window(vec![0.1])], &samples, &PodVersions::new());
        assert!(!checks[0].matched(), "20% observed against 10%");
        assert_eq!(verdict(&checks[0]), "MISMATCH");

        let one_stray = [sample(1000, 0, "v3")];
        let checks = judge(&[window(vec![0.0])], &one_stray, &PodVersions::new());
        assert_eq!(verdict(&checks[0]), "TOO FEW");
        let mut all_stable: Vec<Sample> = (0..200).map(|i| sample(1000 + i, 0, "v1")).collect();
        assert!(judge(&[window(vec![0.0])], &all_stable, &PodVersions::new())[0].matched());
        all_stable.push(sample(1500, 0, "v2"));
        assert!(
            !judge(&[window(vec![0.0])], &all_stable, &PodVersions::new())[0].matched(),
            "one new answer where none is configured"
        );
    }

    fn rejected(at_ms: u64, status: u16, pod: &str) -> Sample {
        Sample {
            at: Duration::from_millis(at_ms),
            client: 0,
            answer: Answer::Rejected {
                status,
                pod: pod.into(),
                body: "error injected".into(),
            },
        }
    }

    #[test]
    fn only_the_500s_of_a_faulty_version_are_expected_failures() {
        let pods: PodVersions = [
            ("demo-canary-a".to_owned(), "v4".to_owned()),
            ("demo-b".to_owned(), "v3".to_owned()),
        ]
        .into();
        let samples = vec![
            rejected(1, 500, "demo-canary-a"),
            rejected(2, 500, "demo-b"),
            rejected(3, 503, "demo-canary-a"),
            rejected(4, 500, "unknown-pod"),
            Sample {
                at: Duration::from_millis(5),
                client: 0,
                answer: Answer::Failed("connect: refused".into()),
            },
            sample(6, 0, "v4"),
        ];
        let failed = failures(&samples, &pods, &["v4"]);
        assert_eq!(failed.expected, vec![&samples[0]]);
        assert_eq!(
            failed.genuine,
            samples[1..5].iter().collect::<Vec<_>>(),
            "stable's 500, another status, an unknown pod, a connection error"
        );
    }

    #[test]
    fn a_pods_error_answer_counts_for_its_version_and_a_requirement_must_hold() {
        let pods: PodVersions = [("demo-canary-a".to_owned(), "v2".to_owned())].into();
        let mut samples: Vec<Sample> = (0..200).map(|i| sample(1000 + i, 0, "v1")).collect();
        assert!(judge(&[window(vec![0.0])], &samples, &pods)[0].matched());
        samples.push(rejected(1500, 500, "demo-canary-a"));
        let check = &judge(&[window(vec![0.0])], &samples, &pods)[0];
        assert_eq!((check.requests, check.new, check.failures), (201, 1, 1));
        assert!(
            !check.matched(),
            "a 500 from the new version is an answer from it"
        );

        samples.pop();
        let mut rolled_back = window(vec![0.0]);
        rolled_back.requirement = Some(Requirement {
            found: "Succeeded=True".into(),
            met: false,
        });
        let check = &judge(&[rolled_back], &samples, &pods)[0];
        assert!(!check.matched());
        assert_eq!(verdict(check), "UNMET");
    }
}
