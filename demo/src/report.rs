//! The HTML report, sans I/O: one self-contained page (inline CSS and SVG, no scripts, no
//! external assets) with the observed share of the new version over time against the
//! configured one, every judged window marked and labelled, every rollback by analysis
//! marked, and the verdict table.

use std::{fmt::Write as _, time::Duration};

use crate::{
    board::ConfigPoint,
    judge::{client_names, percent, verdict, Check, Window, MIN_REQUESTS},
    story::Client,
    traffic::Sample,
};

/// Width of one point of the observed curve.
const BIN: Duration = Duration::from_millis(500);
/// A bin with fewer answers than this is left out of the curve (a gap, not a guess).
const MIN_BIN_ANSWERS: u64 = 5;
const WIDTH: f64 = 1000.0;
const HEIGHT: f64 = 430.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 78.0;
const BOTTOM: f64 = 36.0;

/// Clients drawn as one curve each.
#[derive(Debug, Clone, Copy)]
pub struct Group {
    pub name: &'static str,
    pub clients: &'static [usize],
    pub colour: &'static str,
}

/// When each story began, and what it released.
#[derive(Debug, Clone, PartialEq)]
pub struct StorySpan {
    pub title: String,
    pub from_version: String,
    pub new_version: String,
    pub start: Duration,
    /// When the story's release was rolled back by its analysis, if it was.
    pub rollback: Option<Rollback>,
}

/// A release aborted by its metric analysis.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollback {
    /// When the director saw the Rollout finished, rolled back.
    pub at: Duration,
    /// The Analysis condition's message: the check, its value and threshold.
    pub reason: String,
}

/// Everything the report shows.
pub struct Input<'a> {
    pub stories: &'a [StorySpan],
    pub windows: &'a [Window],
    pub checks: &'a [Check],
    pub clients: &'a [Client],
    pub groups: &'a [Group],
    pub samples: &'a [Sample],
    pub configured: &'a [ConfigPoint],
    pub duration: Duration,
    /// Failed requests that count against the run.
    pub failures: usize,
    /// The 500s of versions released to answer them.
    pub expected_failures: usize,
    pub passed: bool,
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

struct Scale {
    seconds: f64,
}

impl Scale {
    fn x(&self, at: Duration) -> f64 {
        LEFT + at.as_secs_f64() / self.seconds * (WIDTH - LEFT - RIGHT)
    }

    fn y(&self, share: f64) -> f64 {
        TOP + (1.0 - share) * (HEIGHT - TOP - BOTTOM)
    }
}

/// The version a story released at time `at` (the first story's before it began).
fn new_version_at(stories: &[StorySpan], at: Duration) -> Option<&str> {
    stories
        .iter()
        .rev()
        .find(|s| s.start <= at)
        .or(stories.first())
        .map(|s| s.new_version.as_str())
}

/// The observed share of the new version per bin for `clients`; `None` where too few answers.
pub fn observed_curve(
    samples: &[Sample],
    stories: &[StorySpan],
    clients: &[usize],
    duration: Duration,
) -> Vec<(Duration, Option<f64>)> {
    let bins = (duration.as_secs_f64() / BIN.as_secs_f64()).ceil() as usize;
    let mut counts = vec![(0u64, 0u64); bins.max(1)];
    for s in samples.iter().filter(|s| clients.contains(&s.client)) {
        let Some(version) = s.version() else { continue };
        let bin = ((s.at.as_secs_f64() / BIN.as_secs_f64()) as usize).min(counts.len() - 1);
        let bin_start = BIN * bin as u32;
        counts[bin].0 += 1;
        counts[bin].1 += u64::from(new_version_at(stories, bin_start) == Some(version));
    }
    counts
        .iter()
        .enumerate()
        .map(|(i, &(all, new))| {
            let mid = BIN * i as u32 + BIN / 2;
            let share = (all >= MIN_BIN_ANSWERS).then(|| new as f64 / all as f64);
            (mid, share)
        })
        .collect()
}

/// The configured share for `clients` as a step function: (from, share) points.
pub fn configured_curve(configured: &[ConfigPoint], clients: &[usize]) -> Vec<(Duration, f64)> {
    configured
        .iter()
        .map(|p| {
            let shares: Vec<f64> = clients
                .iter()
                .filter_map(|&c| p.expected.get(c).copied())
                .collect();
            let mean = shares.iter().sum::<f64>() / shares.len().max(1) as f64;
            (p.at, mean)
        })
        .collect()
}

/// Where a centred label of `chars` characters goes, kept inside the chart.
fn label_position(centre: f64, chars: usize) -> (f64, &'static str) {
    let half = chars as f64 * 3.2;
    if centre + half > WIDTH - 2.0 {
        (WIDTH - 2.0, "end")
    } else if centre - half < 2.0 {
        (2.0, "start")
    } else {
        (centre, "middle")
    }
}

fn svg(input: &Input<'_>) -> String {
    let scale = Scale {
        seconds: input.duration.as_secs_f64().max(1.0),
    };
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="share of the new version over time">"#
    );
    s.push_str(r#"<style>text{font:11px sans-serif;fill:#333}.axis{stroke:#999}.grid{stroke:#eee}.story{stroke:#555;stroke-dasharray:2 3}.step-window rect{fill:#dde7f5;opacity:.55}.step-window.bad rect{fill:#f8d0d0}.rollback line{stroke:#c92a2a;stroke-width:2}.rollback text{fill:#c92a2a}</style>"#);
    let (x0, x1) = (LEFT, WIDTH - RIGHT);
    let (y0, y1) = (scale.y(0.0), scale.y(1.0));
    // Grid and axes.
    for pct in [0, 25, 50, 75, 100] {
        let y = scale.y(f64::from(pct) / 100.0);
        let _ = write!(
            s,
            r#"<line class="grid" x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}"/><text x="{}" y="{:.1}" text-anchor="end">{pct}%</text>"#,
            x0 - 6.0,
            y + 4.0
        );
    }
    let step: u32 = if scale.seconds > 150.0 { 30 } else { 10 };
    let mut t: u32 = 0;
    while f64::from(t) <= scale.seconds {
        let x = scale.x(Duration::from_secs(u64::from(t)));
        let _ = write!(
            s,
            r#"<line class="axis" x1="{x:.1}" y1="{y0:.1}" x2="{x:.1}" y2="{:.1}"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{t}s</text>"#,
            y0 + 4.0,
            y0 + 17.0
        );
        t += step;
    }
    let _ = write!(
        s,
        r#"<line class="axis" x1="{x0}" y1="{y0:.1}" x2="{x1}" y2="{y0:.1}"/><line class="axis" x1="{x0}" y1="{y0:.1}" x2="{x0}" y2="{y1:.1}"/>"#
    );
    // Judged windows, labelled with the step above and its routing below it.
    for (i, window) in input.windows.iter().enumerate() {
        let (xa, xb) = (scale.x(window.start), scale.x(window.end));
        let ok = input
            .checks
            .iter()
            .filter(|c| c.window == i)
            .all(Check::matched);
        let step = if window.step.contains('/') {
            format!("step {}", window.step)
        } else {
            window.step.clone()
        };
        let (x, anchor) = label_position((xa + xb) / 2.0, step.len().max(window.config.len()));
        let _ = write!(
            s,
            r#"<g class="step-window{}" data-story="{}" data-step="{}"><rect x="{xa:.1}" y="{y1:.1}" width="{:.1}" height="{:.1}"/><text x="{x:.1}" y="{:.1}" text-anchor="{anchor}">{}</text><text x="{x:.1}" y="{:.1}" text-anchor="{anchor}">{}</text></g>"#,
            if ok { "" } else { " bad" },
            window.story + 1,
            escape(&window.step),
            (xb - xa).max(1.0),
            y0 - y1,
            TOP - 22.0,
            escape(&step),
            TOP - 8.0,
            escape(&window.config),
        );
    }
    // Story boundaries.
    for (i, story) in input.stories.iter().enumerate() {
        let x = scale.x(story.start);
        let _ = write!(
            s,
            r#"<line class="story" x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{y0:.1}"/><text x="{:.1}" y="{}">story {}: {} ({} → {})</text>"#,
            14.0,
            x + 4.0,
            // Alternate rows, so that a short story's label does not run into the next one.
            14 + 14 * (i % 2),
            i + 1,
            escape(&story.title),
            escape(&story.from_version),
            escape(&story.new_version)
        );
        if let Some(rollback) = &story.rollback {
            let x = scale.x(rollback.at);
            let label = "rolled back by analysis";
            let (lx, anchor) = label_position(x, label.len());
            let _ = write!(
                s,
                r#"<g class="rollback" data-story="{}"><title>{}</title><line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{y0:.1}"/><text x="{lx:.1}" y="42" text-anchor="{anchor}">{label}</text></g>"#,
                i + 1,
                escape(&rollback.reason),
                46.0,
            );
        }
    }
    // Configured (dashed steps) and observed (solid) curves per group.
    for group in input.groups {
        let points = configured_curve(input.configured, group.clients);
        if !points.is_empty() {
            let mut d = String::new();
            let mut last: Option<f64> = None;
            for &(at, share) in &points {
                let x = scale.x(at);
                match last {
                    None => {
                        let _ = write!(d, "M{x:.1},{:.1}", scale.y(share));
                    }
                    Some(_) => {
                        let _ = write!(d, " H{x:.1} V{:.1}", scale.y(share));
                    }
                }
                last = Some(share);
            }
            let _ = write!(d, " H{x1:.1}");
            let _ = write!(
                s,
                r#"<path d="{d}" fill="none" stroke="{}" stroke-width="1.5" stroke-dasharray="6 4" opacity=".8"><title>configured, {}</title></path>"#,
                group.colour,
                escape(group.name)
            );
        }
        let curve = observed_curve(input.samples, input.stories, group.clients, input.duration);
        let mut d = String::new();
        let mut pen_down = false;
        for (at, share) in curve {
            match share {
                Some(share) => {
                    let _ = write!(
                        d,
                        "{}{:.1},{:.1} ",
                        if pen_down { "L" } else { "M" },
                        scale.x(at),
                        scale.y(share)
                    );
                    pen_down = true;
                }
                None => pen_down = false,
            }
        }
        let _ = write!(
            s,
            r#"<path d="{}" fill="none" stroke="{}" stroke-width="2"><title>observed, {}</title></path>"#,
            d.trim_end(),
            group.colour,
            escape(group.name)
        );
    }
    s.push_str("</svg>");
    s
}

fn table(input: &Input<'_>) -> String {
    let names: Vec<&str> = input.clients.iter().map(|c| c.name).collect();
    let mut s = String::from(
        "<table><thead><tr><th>story</th><th>step</th><th>configured routing</th><th>clients</th>\
         <th>configured share</th><th>observed share</th><th>99.9% interval</th><th>answers</th>\
         <th>failed</th><th>result</th></tr></thead><tbody>",
    );
    for check in input.checks {
        let window = &input.windows[check.window];
        let title = input
            .stories
            .get(window.story)
            .map_or("?", |s| s.title.as_str());
        let _ = write!(
            s,
            "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} {}</td><td>{}</td><td>[{}, {}]</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if check.matched() { "ok" } else { "bad" },
            escape(title),
            escape(&window.step),
            escape(&window.config),
            escape(&client_names(&check.clients, &names)),
            percent(check.expected),
            escape(&window.new_version),
            percent(check.observed()),
            percent(check.interval.0),
            percent(check.interval.1),
            check.requests,
            check.failures,
            verdict(check)
        );
    }
    s.push_str("</tbody></table>");
    s
}

/// The whole page.
pub fn html(input: &Input<'_>) -> String {
    let total = input.samples.len();
    let expected = if input.expected_failures > 0 {
        format!(
            " ({} answers were the expected 500s of a version released to fail them)",
            input.expected_failures
        )
    } else {
        String::new()
    };
    let verdict = if input.passed {
        format!(
            "PASS: every step's observed share matched its configuration, every ending was as \
             required, and no request failed unexpectedly{expected}."
        )
    } else {
        format!(
            "FAIL: {} of {} checks matched; {} of {total} requests failed unexpectedly{expected}.",
            input.checks.iter().filter(|c| c.matched()).count(),
            input.checks.len(),
            input.failures
        )
    };
    let legend: String = input
        .groups
        .iter()
        .map(|g| {
            format!(
                "<li><span class=\"swatch\" style=\"border-color:{c}\"></span>{n}, observed \
                 <span class=\"swatch dashed\" style=\"border-color:{c}\"></span>{n}, configured</li>",
                c = g.colour,
                n = escape(g.name)
            )
        })
        .collect();
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>higress-canary demo report</title>
<style>
body{{font:14px/1.45 sans-serif;margin:2em auto;max-width:1040px;color:#222}}
h1{{font-size:1.4em}} .pass{{color:#2b8a3e}} .fail{{color:#c92a2a}}
table{{border-collapse:collapse;margin-top:1em}} th,td{{border:1px solid #ccc;padding:3px 8px;text-align:left}}
tr.bad td{{background:#fde8e8}} ul.legend{{list-style:none;padding:0}} ul.legend li{{display:inline-block;margin-right:2em}}
.swatch{{display:inline-block;width:24px;margin:0 6px 3px 12px;border-top:2px solid}} .swatch.dashed{{border-top-style:dashed}}
</style></head><body>
<h1>higress-canary demo</h1>
<p class="{}"><strong>{}</strong></p>
<p>{total} requests through the gateway in {:.0} s. The chart shows, per 0.5 s, the share of
answers that came from the version each story releases (solid), against the share the
gateway was configured to send there (dashed), per group of clients. Shaded spans are the
windows each step was judged on (red if it did not match): from the moment the gateway served
the step until it was approved. A step matches when its configured share lies inside the
99.9% Wilson interval of the observed one, from at least {MIN_REQUESTS} answers. A red line
marks a release rolled back by its metric analysis (hover for the failed check).</p>
{}
<ul class="legend">{legend}</ul>
{}
</body></html>
"#,
        if input.passed { "pass" } else { "fail" },
        escape(&verdict),
        input.duration.as_secs_f64(),
        svg(input),
        table(input)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{judge::judge, story::CLIENTS, traffic::Answer};

    #[test]
    fn the_page_has_one_marked_window_per_step_and_the_table() {
        let stories = vec![StorySpan {
            title: "canary <release>".into(),
            from_version: "v1".into(),
            new_version: "v2".into(),
            start: Duration::from_secs(1),
            rollback: Some(Rollback {
                at: Duration::from_secs(3),
                reason: "success-rate 80.1% (threshold >= 95%)".into(),
            }),
        }];
        let windows = vec![Window {
            story: 0,
            step: "1/2".into(),
            config: "weight 10%".into(),
            new_version: "v2".into(),
            start: Duration::from_secs(2),
            end: Duration::from_secs(4),
            expected: vec![0.1; CLIENTS.len()],
            requirement: None,
        }];
        let samples: Vec<Sample> = (0..4000u64)
            .map(|i| Sample {
                at: Duration::from_millis(i),
                client: (i % 4) as usize,
                answer: Answer::Version(if i % 10 == 3 { "v2" } else { "v1" }.into()),
            })
            .collect();
        let checks = judge(&windows, &samples, &Default::default());
        let groups = [Group {
            name: "all",
            clients: &[0, 1, 2, 3],
            colour: "#123456",
        }];
        let configured = vec![ConfigPoint {
            at: Duration::from_secs(2),
            story: 0,
            expected: vec![0.1; 4],
        }];
        let page = html(&Input {
            stories: &stories,
            windows: &windows,
            checks: &checks,
            clients: CLIENTS,
            groups: &groups,
            samples: &samples,
            configured: &configured,
            duration: Duration::from_secs(4),
            failures: 0,
            expected_failures: 0,
            passed: true,
        });
        assert_eq!(page.matches("class=\"step-window").count(), 1);
        assert!(page.contains("data-step=\"1/2\""));
        assert_eq!(
            page.matches("class=\"rollback\" data-story=\"1\"").count(),
            1
        );
        assert!(page.contains("<title>success-rate 80.1% (threshold &gt;= 95%)</title>"));
        assert!(page.contains("canary &lt;release&gt;"), "escaped");
        assert!(page.contains("<svg") && page.contains("</svg>"));
        assert!(page.contains("PASS"));
        assert!(!page.contains("<script"));
        assert!(
            !page.contains("src=") && !page.contains("href="),
            "no external assets"
        );
        // The observed curve sits at 10%: y of 0.1.
        let curve = observed_curve(&samples, &stories, &[0, 1, 2, 3], Duration::from_secs(4));
        assert!(curve
            .iter()
            .all(|(_, s)| s.is_some_and(|s| (s - 0.1).abs() < 0.01)));
    }
}
