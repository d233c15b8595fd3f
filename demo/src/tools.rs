//! Running the project's binaries (`trainer`, `unireward-export`, `engine`), found beside the
//! `demo` binary (one `cargo build --release --bins` builds them all). Each run's output goes to
//! a log file under `OUT/logs/`; a failure shows the log's tail.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// A binary of the workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Trainer,
    Export,
    Engine,
}

impl Tool {
    pub fn name(self) -> &'static str {
        match self {
            Tool::Trainer => "trainer",
            Tool::Export => "unireward-export",
            Tool::Engine => "engine",
        }
    }

    /// The binary beside the running executable.
    pub fn path(self) -> Result<PathBuf> {
        let exe = std::env::current_exe().map_err(|e| Error::Tool {
            tool: self.name().into(),
            msg: format!("cannot locate the demo executable: {e}"),
        })?;
        // Test binaries live one level deeper (target/release/deps/).
        let mut dirs = vec![exe.with_file_name("")];
        if let Some(parent) = exe.parent().and_then(Path::parent) {
            dirs.push(parent.to_path_buf());
        }
        for dir in &dirs {
            let path = dir.join(format!("{}{}", self.name(), std::env::consts::EXE_SUFFIX));
            if path.is_file() {
                return Ok(path);
            }
        }
        Err(Error::Tool {
            tool: self.name().into(),
            msg: format!(
                "not found beside {} (build every binary first: cargo build --release --bins)",
                exe.display()
            ),
        })
    }
}

/// How a tool run ended.
#[derive(Debug, Clone)]
pub struct Finished {
    pub code: i32,
    pub elapsed: Duration,
    pub log: PathBuf,
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    // Progress bars redraw with carriage returns; keep what was last drawn on each line.
    let clean: Vec<&str> = text
        .lines()
        .map(|l| l.rsplit('\r').next().unwrap_or(l))
        .collect();
    clean[clean.len().saturating_sub(lines)..].join("\n")
}

/// Runs `tool` with `args`, its output to `log`. Exit codes in `accepted` count as success
/// (the engine exits 1 when some records failed and the run itself went through).
pub fn run(tool: Tool, args: &[String], log: &Path, accepted: &[i32]) -> Result<Finished> {
    let bin = tool.path()?;
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let out = std::fs::File::create(log).map_err(|e| Error::io(log, e))?;
    let err = out.try_clone().map_err(|e| Error::io(log, e))?;
    let start = Instant::now();
    let status = Command::new(&bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status()
        .map_err(|e| Error::Tool {
            tool: tool.name().into(),
            msg: format!("cannot start {}: {e}", bin.display()),
        })?;
    let elapsed = start.elapsed();
    let code = status.code().unwrap_or(-1);
    if code != 0 && !accepted.contains(&code) {
        return Err(Error::Tool {
            tool: tool.name().into(),
            msg: format!(
                "{} {} exited with {status}; last lines of {}:\n{}",
                bin.display(),
                args.join(" "),
                log.display(),
                tail(log, 15)
            ),
        });
    }
    Ok(Finished {
        code,
        elapsed,
        log: log.to_path_buf(),
    })
}

/// Makes the directory an output file of a tool goes into.
pub fn ensure_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(dir) => std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e)),
        None => Ok(()),
    }
}

/// Paths as arguments.
pub fn arg(p: &Path) -> String {
    p.display().to_string()
}
