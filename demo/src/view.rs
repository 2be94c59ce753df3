//! The live view. [`live_lines`] and [`status_line`] are pure (state in, text out); [`Screen`]
//! draws them: in a terminal, a block redrawn in place several times a second under a
//! scrolling log (ANSI cursor movement); otherwise plain lines, one when something changes
//! and one every few seconds.

use std::{
    collections::BTreeMap,
    io::Write as _,
    time::{Duration, Instant},
};

use tokio::{sync::watch, task::JoinHandle};

use crate::{
    board::{Board, State},
    judge::percent,
    story::Client,
    traffic::{Answer, Log, Sample},
};

/// The span the bars and shares cover.
pub const RECENT: Duration = Duration::from_secs(2);
const BAR_WIDTH: usize = 30;
const TTY_EVERY: Duration = Duration::from_millis(150);
const LINES_EVERY: Duration = Duration::from_millis(250);
/// In line mode, the status is printed at least this often.
const HEARTBEAT: Duration = Duration::from_secs(2);

/// Answers of the last [`RECENT`] per client, and totals.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Traffic {
    /// Per client: answers per version.
    pub recent: Vec<BTreeMap<String, u64>>,
    pub recent_failures: u64,
    pub total: u64,
    pub total_failures: u64,
}

impl Traffic {
    /// Sums the log; `counted` carries the failure count between calls, so that the whole
    /// log is not rescanned every frame.
    pub fn of(samples: &[Sample], clients: usize, now: Duration, counted: &mut Counted) -> Self {
        for s in &samples[counted.upto.min(samples.len())..] {
            counted.failures += u64::from(s.answer.failed());
        }
        counted.upto = samples.len();
        let mut traffic = Traffic {
            recent: vec![BTreeMap::new(); clients],
            recent_failures: 0,
            total: samples.len() as u64,
            total_failures: counted.failures,
        };
        let since = now.saturating_sub(RECENT);
        // Connections interleave, so the log is ordered only roughly: look a bit further back.
        let slack = Duration::from_millis(200);
        for s in samples
            .iter()
            .rev()
            .take_while(|s| s.at + slack >= since)
            .filter(|s| s.at >= since)
        {
            match &s.answer {
                Answer::Version(v) => {
                    if let Some(per) = traffic.recent.get_mut(s.client) {
                        *per.entry(v.clone()).or_default() += 1;
                    }
                }
                Answer::Rejected { .. } | Answer::Failed(_) => traffic.recent_failures += 1,
            }
        }
        traffic
    }
}

/// How far [`Traffic::of`] has counted failures.
#[derive(Debug, Default)]
pub struct Counted {
    upto: usize,
    failures: u64,
}

/// `0:42`.
pub fn clock(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}", s / 60, s % 60)
}

/// `[  42.1s]`, the prefix of log lines.
pub fn stamp(d: Duration) -> String {
    format!("[{:>6.1}s]", d.as_secs_f64())
}

/// Colour and glyph of a version, stable across the run: `v1` is always the first.
fn style(version: &str) -> (u8, char) {
    const PALETTE: [(u8, char); 4] = [(34, '█'), (32, '▓'), (35, '▒'), (33, '░')];
    let index = version
        .strip_prefix('v')
        .and_then(|n| n.parse::<usize>().ok())
        .map_or_else(
            || version.bytes().map(usize::from).sum::<usize>(),
            |n| n.saturating_sub(1),
        );
    PALETTE[index % PALETTE.len()]
}

fn paint(text: &str, version: &str, color: bool) -> String {
    if color {
        format!("\x1b[{}m{text}\x1b[0m", style(version).0)
    } else {
        text.to_owned()
    }
}

/// A stacked bar of `width` cells, each version's share by largest remainder.
pub fn bar(counts: &BTreeMap<String, u64>, width: usize, color: bool) -> String {
    let total: u64 = counts.values().sum();
    if total == 0 {
        return "·".repeat(width);
    }
    let exact: Vec<(&String, f64)> = counts
        .iter()
        .map(|(v, &n)| (v, n as f64 * width as f64 / total as f64))
        .collect();
    let mut cells: Vec<usize> = exact.iter().map(|(_, x)| x.floor() as usize).collect();
    let mut order: Vec<usize> = (0..exact.len()).collect();
    order.sort_by(|&a, &b| {
        let fa = exact[a].1.fract();
        let fb = exact[b].1.fract();
        fb.total_cmp(&fa)
    });
    let short = width.saturating_sub(cells.iter().sum());
    for &i in order.iter().take(short) {
        cells[i] += 1;
    }
    exact
        .iter()
        .zip(cells)
        .map(|((version, _), n)| {
            paint(
                &style(version).1.to_string().repeat(n),
                version.as_str(),
                color,
            )
        })
        .collect()
}

fn shares(counts: &BTreeMap<String, u64>, color: bool) -> String {
    let total: u64 = counts.values().sum();
    counts
        .iter()
        .map(|(v, &n)| {
            paint(
                &format!("{v} {}", percent(n as f64 / total.max(1) as f64)),
                v,
                color,
            )
        })
        .collect::<Vec<_>>()
        .join("  ")
}

fn pods(state: &State, color: bool) -> String {
    if state.world.pods.is_empty() {
        return "none yet".to_owned();
    }
    state
        .world
        .pods
        .iter()
        .map(|(v, (ready, all))| paint(&format!("{v} {ready}/{all} ready"), v, color))
        .collect::<Vec<_>>()
        .join("  ")
}

fn rollout(state: &State) -> String {
    match &state.world.rollout {
        None => "-".to_owned(),
        Some(r) => {
            let step = r
                .step
                .map_or("-".to_owned(), |(k, n)| format!("step {k}/{n}"));
            format!("{}  {}  {step}  {}  {}", r.name, r.phase, r.state, r.config)
        }
    }
}

fn activity(state: &State, now: Instant) -> String {
    let a = &state.activity;
    match a.deadline {
        Some(deadline) => format!(
            "{} in {:.0}s",
            a.text,
            deadline.saturating_duration_since(now).as_secs_f64().ceil()
        ),
        None => format!("{} ({:.0}s)", a.text, (now - a.since).as_secs_f64()),
    }
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The block a terminal shows, redrawn in place.
pub fn live_lines(
    state: &State,
    traffic: &Traffic,
    clients: &[Client],
    now: Instant,
    log_path: &str,
    color: bool,
) -> Vec<String> {
    let bold = |s: &str| {
        if color {
            format!("\x1b[1m{s}\x1b[0m")
        } else {
            s.to_owned()
        }
    };
    let story = state.story.as_ref().map_or("setting up".to_owned(), |s| {
        format!(
            "story {}/{} {} · {} → {}",
            s.index + 1,
            s.count,
            s.title,
            s.from_version,
            s.new_version
        )
    });
    let mut lines = vec![
        bold(&format!(
            "── higress-canary demo · {} · {story}",
            clock(now - state.started)
        )),
        format!("  rollout  {}", rollout(state)),
        format!("  pods     {}", pods(state, color)),
        format!("  now      {}", activity(state, now)),
        format!(
            "  traffic  last {}s: {} failed · total {} answers, {} failed",
            RECENT.as_secs(),
            traffic.recent_failures,
            thousands(traffic.total),
            traffic.total_failures
        ),
    ];
    for (client, counts) in clients.iter().zip(&traffic.recent) {
        lines.push(format!(
            "  {:<8} {}  {}",
            client.name,
            bar(counts, BAR_WIDTH, color),
            shares(counts, color)
        ));
    }
    if let Some(analysis) = state
        .world
        .rollout
        .as_ref()
        .and_then(|r| r.analysis.as_ref())
    {
        lines.push(format!("  analysis {}", analysis.summary));
        for check in &analysis.checks {
            lines.push(format!("           {check}"));
        }
    }
    if let Some(error) = &state.world.error {
        lines.push(format!("  (monitor: {error})"));
    }
    lines.push(format!("  logs     {log_path}"));
    lines
}

/// One line for logs: the state, and the new version's share per client. Also returns the
/// state without the numbers that change all the time, to print only when it changes.
pub fn status_line(
    state: &State,
    traffic: &Traffic,
    clients: &[Client],
    now: Instant,
) -> (String, String) {
    let story = state.story.as_ref().map_or("setup".to_owned(), |s| {
        format!("story {}/{}", s.index + 1, s.count)
    });
    let steady = [
        story,
        rollout(state),
        format!("pods {}", pods(state, false)),
    ];
    let analysis = state
        .world
        .rollout
        .as_ref()
        .and_then(|r| r.analysis.as_ref());
    // A new run (every few seconds) prints a line; its values alone do not.
    let key = format!(
        "{} | {} | {}",
        steady.join(" | "),
        state.activity.text,
        analysis.map_or("", |a| a.summary.as_str())
    );
    let mut parts = steady.to_vec();
    parts.push(activity(state, now));
    if let Some(a) = analysis {
        let mut text = format!("analysis {}", a.summary);
        if !a.checks.is_empty() {
            text.push_str(&format!(": {}", a.checks.join(", ")));
        }
        parts.push(text);
    }
    if let Some(new) = state.story.as_ref().map(|s| s.new_version.as_str()) {
        let shares = clients
            .iter()
            .zip(&traffic.recent)
            .map(|(c, counts)| {
                let total: u64 = counts.values().sum();
                let n = counts.get(new).copied().unwrap_or(0);
                format!("{} {}", c.name, percent(n as f64 / total.max(1) as f64))
            })
            .collect::<Vec<_>>()
            .join(" ");
        parts.push(format!("{new} share last {}s: {shares}", RECENT.as_secs()));
    }
    parts.push(format!(
        "{} answers, {} failed",
        thousands(traffic.total),
        traffic.total_failures
    ));
    let line = format!("{} {}", stamp(now - state.started), parts.join(" | "));
    (key, line)
}

/// Draws the board until stopped.
pub struct Screen {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Screen {
    pub fn start(
        board: Board,
        log: Log,
        clients: &'static [Client],
        tty: bool,
        log_path: String,
    ) -> Self {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut drawn = 0usize;
            let mut counted = Counted::default();
            let mut last_key = String::new();
            let mut last_line = Instant::now();
            let mut out = std::io::stdout();
            if tty {
                // Hide the cursor while redrawing.
                let _ = write!(out, "\x1b[?25l");
            }
            loop {
                let finished = *stopped.borrow();
                let now = Instant::now();
                let (events, state) = {
                    let mut state = board.lock();
                    (std::mem::take(&mut state.events), state.clone())
                };
                let traffic = {
                    let samples = log.lock();
                    Traffic::of(&samples, clients.len(), now - state.started, &mut counted)
                };
                let mut text = String::new();
                if tty && drawn > 0 {
                    // Back to the top of the block, and clear it.
                    text.push_str(&format!("\r\x1b[{drawn}A\x1b[J"));
                }
                for (at, event) in &events {
                    text.push_str(&format!("{} {event}\n", stamp(*at)));
                }
                if tty {
                    drawn = 0;
                    if !finished {
                        for line in live_lines(&state, &traffic, clients, now, &log_path, true) {
                            text.push_str(&line);
                            text.push('\n');
                            drawn += 1;
                        }
                    }
                } else {
                    let (key, line) = status_line(&state, &traffic, clients, now);
                    let due = key != last_key || now - last_line >= HEARTBEAT;
                    if !finished && due {
                        text.push_str(&line);
                        text.push('\n');
                        last_key = key;
                        last_line = now;
                    }
                }
                if finished && tty {
                    text.push_str("\x1b[?25h");
                }
                let _ = out.write_all(text.as_bytes());
                let _ = out.flush();
                if finished {
                    break;
                }
                let every = if tty { TTY_EVERY } else { LINES_EVERY };
                let _ = tokio::time::timeout(every, stopped.changed()).await;
            }
        });
        Self { stop, task }
    }

    /// Prints what is pending, removes the live block and returns the terminal as it was.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::board::{AnalysisView, RolloutView, StoryState, World};
    use crate::story::CLIENTS;

    fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(v, n)| ((*v).to_owned(), *n)).collect()
    }

    #[test]
    fn bars_fill_their_width_in_proportion() {
        let b = bar(&counts(&[("v1", 70), ("v2", 30)]), 30, false);
        assert_eq!(b, format!("{}{}", "█".repeat(21), "▓".repeat(9)));
        let b = bar(&counts(&[("v1", 1), ("v2", 1), ("v3", 1)]), 10, false);
        assert_eq!(b.chars().count(), 10);
        assert_eq!(bar(&BTreeMap::new(), 5, false), "·····");
    }

    fn state() -> State {
        let board = crate::board::Board::new(Instant::now() - Duration::from_secs(42));
        board.set_story(StoryState {
            index: 0,
            count: 2,
            title: "canary release".into(),
            rollout: "rollouts-demo".into(),
            from_version: "v1".into(),
            new_version: "v2".into(),
        });
        board.set_world(
            World {
                rollout: Some(RolloutView {
                    name: "rollouts-demo".into(),
                    phase: "Progressing".into(),
                    step: Some((2, 2)),
                    state: "StepPaused".into(),
                    config: "weight 30%".into(),
                    analysis: Some(AnalysisView {
                        summary: "step 2 Failing, 1 failed run in a row; 412 canary responses"
                            .into(),
                        checks: vec!["success-rate 80.1% (threshold >= 95%) Fail".into()],
                    }),
                }),
                pods: [("v1".to_owned(), (5, 5)), ("v2".to_owned(), (2, 2))].into(),
                error: None,
            },
            [],
        );
        board.activity("approving step 2/2", None);
        let state = board.lock().clone();
        state
    }

    #[test]
    fn the_live_block_shows_step_config_pods_and_shares_per_client() {
        let traffic = Traffic {
            recent: vec![counts(&[("v1", 70), ("v2", 30)]); CLIENTS.len()],
            recent_failures: 0,
            total: 12_345,
            total_failures: 1,
        };
        let lines = live_lines(&state(), &traffic, CLIENTS, Instant::now(), "x.log", false);
        let text = lines.join("\n");
        for want in [
            "0:42",
            "story 1/2 canary release · v1 → v2",
            "rollouts-demo  Progressing  step 2/2  StepPaused  weight 30%",
            "v1 5/5 ready  v2 2/2 ready",
            "approving step 2/2 (0s)",
            "total 12,345 answers, 1 failed",
            "v1 70%  v2 30%",
            "analysis step 2 Failing, 1 failed run in a row; 412 canary responses",
            "success-rate 80.1% (threshold >= 95%) Fail",
            "x.log",
        ] {
            assert!(text.contains(want), "no {want:?} in\n{text}");
        }
        assert!(lines.iter().all(|l| l.chars().count() <= 80), "{text}");
        let (key, line) = status_line(&state(), &traffic, CLIENTS, Instant::now());
        assert!(key.contains("step 2/2  StepPaused  weight 30%"), "{key}");
        assert!(
            line.contains("v2 share last 2s: android 30% iphone 30%"),
            "{line}"
        );
        assert!(
            line.contains("1 failed run in a row; 412 canary responses: success-rate 80.1%"),
            "{line}"
        );
    }
}
