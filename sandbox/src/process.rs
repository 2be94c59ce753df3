//! A child process the sandbox supervises (Envoy, Prometheus): its stdout and stderr go to a
//! log file whose tail explains failures, readiness is polled against a deadline, and it is
//! killed and reaped on drop so no test leaves one behind.

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

/// A running child writing to its log file, killed (then waited for) on drop.
pub struct ChildProcess {
    // A mutex so that `exit_status` and `kill` (which need `&mut Child`) take `&self`.
    child: Mutex<Child>,
    pid: u32,
    log: PathBuf,
}

impl ChildProcess {
    /// Spawns `command` with stdin closed and stdout and stderr written to a new file `log`;
    /// `io_error` makes the caller's error from what was being done and the cause.
    pub fn spawn<E>(
        command: &mut Command,
        log: PathBuf,
        io_error: impl Fn(String, std::io::Error) -> E,
    ) -> Result<Self, E> {
        let name = log.file_name().unwrap_or_default().to_string_lossy();
        let out = File::create(&log).map_err(|e| io_error(format!("creating {name}"), e))?;
        let err = out
            .try_clone()
            .map_err(|e| io_error(format!("opening {name}"), e))?;
        let program = Path::new(command.get_program()).display().to_string();
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| io_error(format!("spawning {program}"), e))?;
        Ok(Self {
            pid: child.id(),
            child: Mutex::new(child),
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `Some(status)` once the child has exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.child.lock().ok()?.try_wait().ok().flatten()
    }

    /// The last `count` log lines that `prefer` keeps, or the last `count` lines if it keeps
    /// none.
    pub fn log_tail(&self, count: usize, prefer: impl Fn(&str) -> bool) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let preferred: Vec<&str> = text.lines().filter(|l| prefer(l)).collect();
        let lines = if preferred.is_empty() {
            text.lines().collect()
        } else {
            preferred
        };
        lines[lines.len().saturating_sub(count)..].join("\n")
    }

    /// Asks `ready` every `interval` until it says yes; fails with the reason if the child
    /// exits first or `deadline` passes.
    pub async fn wait_ready(
        &self,
        deadline: Duration,
        interval: Duration,
        mut ready: impl AsyncFnMut() -> bool,
    ) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.exit_status() {
                return Err(format!("it exited with {status}"));
            }
            if ready().await {
                return Ok(());
            }
            if start.elapsed() > deadline {
                return Err(format!("not ready after {deadline:?}"));
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// Kills the child and waits for it; a no-op once it is gone.
    pub fn kill(&self) {
        let mut child = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, log: PathBuf) -> ChildProcess {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        ChildProcess::spawn(&mut command, log, |what, e| format!("{what}: {e}")).expect("sh spawns")
    }

    #[tokio::test]
    async fn an_exit_before_ready_is_the_reason_and_the_tail_prefers_what_the_filter_keeps() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let child = sh(
            "echo one; echo two >&2; echo three; exit 3",
            dir.path().join("sh.log"),
        );
        let waited = child
            .wait_ready(
                Duration::from_secs(30),
                Duration::from_millis(5),
                async || false,
            )
            .await;
        assert_eq!(waited, Err("it exited with exit status: 3".to_string()));
        assert_eq!(child.log_tail(2, |line| line == "two"), "two");
        assert_eq!(child.log_tail(2, |_| false), "two\nthree");
    }

    #[test]
    fn drop_kills_and_reaps_the_child() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let child = sh("sleep 60", dir.path().join("sh.log"));
        let proc_entry = PathBuf::from(format!("/proc/{}", child.pid()));
        assert!(proc_entry.exists());
        drop(child);
        assert!(
            !proc_entry.exists(),
            "{} is still there",
            proc_entry.display()
        );
    }
}
