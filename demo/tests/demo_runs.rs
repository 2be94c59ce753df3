//! The demo as CI runs it: the built binary, stdout a pipe (so line output, not the live
//! view), short steps. It must play the three stories, judge every step as matching and the
//! third release as rolled back by its analysis, count the faulty version's 500s as expected,
//! exit 0 and write a report with a chart marking every judged window and the rollback.

use std::{
    io::Read,
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};

/// The demo takes under a minute and a half; a slow, shared CI machine gets plenty more.
const DEADLINE: Duration = Duration::from_secs(300);

/// Reads a pipe to the end on a thread, so a chatty child never blocks on a full pipe.
fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

/// Waits for the child; past the deadline, asks it to stop (it stops Envoy and its pod
/// servers on SIGTERM), then kills it.
fn wait(child: &mut Child) -> Result<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if start.elapsed() > DEADLINE {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let grace = Instant::now();
            while grace.elapsed() < Duration::from_secs(20) {
                if child.try_wait()?.is_some() {
                    break;
                }
                thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
            bail!("the demo did not finish within {DEADLINE:?}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_demo_plays_every_story_every_step_matches_and_the_report_marks_each_window() -> Result<()> {
    let out = tempfile::tempdir()?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_higress-canary-demo"))
        .args(["--step-seconds", "3", "--out-dir"])
        .arg(out.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting higress-canary-demo")?;
    let stdout = drain(child.stdout.take().context("stdout")?);
    let stderr = drain(child.stderr.take().context("stderr")?);
    let status = wait(&mut child);
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    let status = status.with_context(|| format!("stdout:\n{stdout}\nstderr:\n{stderr}"))?;
    ensure!(
        status.success(),
        "the demo exited with {status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );

    // Line output, no cursor movement: stdout is not a terminal.
    ensure!(!stdout.contains("\x1b["), "ANSI escapes in piped output");
    let summary = stdout
        .split("summary:")
        .nth(1)
        .with_context(|| format!("no summary in\n{stdout}"))?;
    // The table: the lines after its header, up to the first blank line.
    let rows: Vec<&str> = summary
        .lines()
        .skip_while(|l| !l.starts_with("STORY"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .collect();
    let expected_rows = [
        ("canary release", "1/2", "weight 10%", "10% v2"),
        ("canary release", "2/2", "weight 30%", "30% v2"),
        ("canary release", "released", "no rule", "100% v2"),
        ("A/B testing", "1/1", "user-agent=android", "100% v3"),
        ("A/B testing", "1/1", "user-agent=android", "0% v3"),
        ("A/B testing", "released", "no rule", "100% v3"),
        (
            "analysis rollback",
            "rolled back",
            "rolled back by analysis, traffic back to stable",
            "0% v4",
        ),
    ];
    ensure!(
        rows.len() == expected_rows.len(),
        "expected {} summary rows, got:\n{summary}",
        expected_rows.len()
    );
    for (row, (story, step, config, configured)) in rows.iter().zip(expected_rows) {
        let cells: Vec<&str> = row.split("  ").map(str::trim).collect();
        for want in [story, step, config, configured] {
            ensure!(
                cells.iter().any(|c| c.starts_with(want)),
                "row {row:?} lacks {want:?}"
            );
        }
        ensure!(row.trim_end().ends_with("ok"), "not ok: {row}");
    }
    ensure!(
        summary.contains(", 0 failed") && summary.contains("PASS"),
        "{summary}"
    );
    // The third release ended as required, and its version's 500s were seen and expected.
    ensure!(
        summary.lines().any(
            |l| l.starts_with("analysis rollback rolled back: Succeeded=False")
                && l.contains("Analysis=False (CheckFailed)")
                && l.contains("success-rate")
                && l.ends_with("(as required)")
        ),
        "no rollback by analysis in\n{summary}"
    );
    ensure!(
        summary.contains("expected 500s from v4"),
        "the faulty version's 500s were not counted: {summary}"
    );
    // The live lines showed the analysis' failing check.
    ensure!(
        stdout.contains("analysis step 1 Failed") && stdout.contains("(threshold >= 95%) Fail"),
        "the live view never showed the failed analysis"
    );

    let report = out.path().join("report.html");
    ensure!(
        summary.contains(&report.display().to_string()),
        "the report's path is not printed"
    );
    check_report(&report)
}

fn check_report(path: &Path) -> Result<()> {
    let page =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(page.starts_with("<!DOCTYPE html>") && page.trim_end().ends_with("</html>"));
    ensure!(page.matches("<svg").count() == 1 && page.matches("</svg>").count() == 1);
    // One marked window per step of each story, and one per finished release.
    let windows = [
        ("1", "1/2"),
        ("1", "2/2"),
        ("1", "released"),
        ("2", "1/1"),
        ("2", "released"),
        ("3", "rolled back"),
    ];
    ensure!(
        page.matches("class=\"step-window").count() == windows.len(),
        "expected {} step windows in the chart",
        windows.len()
    );
    for (story, step) in windows {
        let marker = format!("data-story=\"{story}\" data-step=\"{step}\"");
        ensure!(page.contains(&marker), "no {marker} in the chart");
    }
    ensure!(
        !page.contains("step-window bad"),
        "a window marked as failed"
    );
    ensure!(
        page.matches("class=\"rollback\"").count() == 1
            && page.contains("class=\"rollback\" data-story=\"3\""),
        "the rollback of story 3 is not marked once in the chart"
    );
    // Observed curves: one path per group of clients, with points.
    ensure!(page.matches("<title>observed").count() == 2);
    ensure!(page.contains("PASS"));
    ensure!(!page.contains("<script") && !page.contains("src=") && !page.contains("href="));
    Ok(())
}
