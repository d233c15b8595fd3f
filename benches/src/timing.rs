//! Timing a bench's runs, and a PyTorch reference script of `benches/reference/` in the same
//! run: the script prints one line in the bench's format, whose median is read back.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// `warmup` untimed runs of `run`, then `iters` timed ones; prints the median, min, max and
/// the last run's checksum under `label`, and returns the median in seconds.
pub fn median(
    label: &str,
    iters: usize,
    warmup: usize,
    mut run: impl FnMut() -> Result<f32>,
) -> Result<f64> {
    for _ in 0..warmup {
        run()?;
    }
    let mut times = Vec::with_capacity(iters.max(1));
    let mut checksum = 0.0;
    for _ in 0..iters.max(1) {
        let t0 = Instant::now();
        checksum = run()?;
        times.push(t0.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "{label:<14} median {median:.3} s  min {:.3} s  max {:.3} s  ({} runs; checksum {checksum:.3})",
        times[0],
        times[times.len() - 1],
        times.len()
    );
    Ok(median)
}

/// Runs `benches/reference/<script>` with `python` on `dir`; its median in seconds.
pub fn time_reference(
    python: &Path,
    script: &str,
    dir: &Path,
    iters: usize,
    warmup: usize,
) -> Result<f64> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("reference")
        .join(script);
    let out = Command::new(python)
        .arg(&script)
        .arg("--dir")
        .arg(dir)
        .args(["--iters", &iters.to_string()])
        .args(["--warmup", &warmup.to_string()])
        .output()
        .with_context(|| format!("running {} {}", python.display(), script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{} failed:\n{}{}",
            script.display(),
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    print!("{stdout}");
    stdout
        .split_whitespace()
        .skip_while(|w| *w != "median")
        .nth(1)
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("no median in {stdout:?}"))
}
