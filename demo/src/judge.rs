//! Verdicts, sans I/O: for every window in which one step's routing was in force, the share
//! of each client group's answers that came from the new version, with a Wilson score
//! interval, against the configured share.

use std::{fmt::Write as _, time::Duration};

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
}

/// One verdict: a window and the clients that expect the same share in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// Index into the windows.
    pub window: usize,
    pub clients: Vec<usize>,
    pub expected: f64,
    /// Successful answers in the window.
    pub requests: u64,
    /// Of which from the new version.
    pub new: u64,
    pub failures: u64,
    /// 99.9% Wilson interval of the observed share.
    pub interval: (f64, f64),
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
        self.requests >= MIN_REQUESTS
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

/// One check per window and group of clients expecting the same share, in window order.
pub fn judge(windows: &[Window], samples: &[Sample]) -> Vec<Check> {
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
            };
            for sample in samples.iter().filter(|s| {
                s.at >= window.start && s.at < window.end && check.clients.contains(&s.client)
            }) {
                match &sample.answer {
                    Answer::Version(v) => {
                        check.requests += 1;
                        check.new += u64::from(*v == window.new_version);
                    }
                    Answer::Failed(_) => check.failures += 1,
                }
            }
            check.interval = wilson(check.new, check.requests, Z_999);
            checks.push(check);
        }
    }
    checks
}

/// Every failed answer of the run, oldest first.
pub fn failures(samples: &[Sample]) -> Vec<&Sample> {
    let mut failed: Vec<&Sample> = samples
        .iter()
        .filter(|s| matches!(s.answer, Answer::Failed(_)))
        .collect();
    failed.sort_by_key(|s| s.at);
    failed
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

/// "ok", "MISMATCH" or "TOO FEW".
pub fn verdict(check: &Check) -> &'static str {
    if check.matched() {
        "ok"
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
        let checks = judge(&[window(vec![1.0, 0.1])], &samples);
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
        let checks = judge(&[window(vec![0.1])], &samples);
        assert!(!checks[0].matched(), "20% observed against 10%");
        assert_eq!(verdict(&checks[0]), "MISMATCH");

        let one_stray = [sample(1000, 0, "v3")];
        let checks = judge(&[window(vec![0.0])], &one_stray);
        assert_eq!(verdict(&checks[0]), "TOO FEW");
        let mut all_stable: Vec<Sample> = (0..200).map(|i| sample(1000 + i, 0, "v1")).collect();
        assert!(judge(&[window(vec![0.0])], &all_stable)[0].matched());
        all_stable.push(sample(1500, 0, "v2"));
        assert!(
            !judge(&[window(vec![0.0])], &all_stable)[0].matched(),
            "one new answer where none is configured"
        );
    }
}
