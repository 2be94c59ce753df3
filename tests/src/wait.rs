use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// A port on 127.0.0.1 that was free a moment ago.
///
/// The port is released before returning, so another process may take it first; prefer binding
/// port 0 and asking the socket when the code doing the binding allows it.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Calls `probe` every `poll_interval` until it returns `Ok` or `deadline` has passed.
///
/// On timeout the last error is returned, with the number of attempts and the deadline added, so
/// a failing test says what it was still waiting for.
pub fn eventually<T>(
    deadline: Duration,
    poll_interval: Duration,
    mut probe: impl FnMut() -> Result<T>,
) -> Result<T> {
    let start = Instant::now();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match probe() {
            Ok(value) => return Ok(value),
            Err(err) if start.elapsed() >= deadline => {
                return Err(err.context(format!(
                    "still failing after {attempts} attempts over {deadline:?}"
                )));
            }
            Err(_) => thread::sleep(poll_interval),
        }
    }
}

/// Half-width of the two-sided 99.9% normal-approximation interval for a binomial count:
/// `|observed − p·n| ≤ 3.29 · sqrt(n·p·(1−p))` holds for a fair coin of bias `p` except
/// once in a thousand runs.
pub fn binomial_bound(n: u64, p: f64) -> f64 {
    const Z_999: f64 = 3.29;
    Z_999 * (n as f64 * p * (1.0 - p)).sqrt()
}

/// Fails unless `observed` successes out of `n` are within [`binomial_bound`] of `p·n`.
pub fn check_binomial(what: &str, observed: u64, n: u64, p: f64) -> Result<()> {
    let expected = p * n as f64;
    let bound = binomial_bound(n, p);
    let off = (observed as f64 - expected).abs();
    anyhow::ensure!(
        off <= bound,
        "{what}: {observed} of {n} ({:.3}%), expected {expected:.0} ± {bound:.1} ({}%)",
        100.0 * observed as f64 / n as f64,
        100.0 * p
    );
    Ok(())
}
