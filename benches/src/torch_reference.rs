//! Running a PyTorch reference script of `benches/reference/` in the same run as a bench: the
//! script prints one line in the bench's format, whose median (seconds) is read back.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

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
