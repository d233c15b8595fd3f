//! JSONL in and out: input lines with their numbers (each read with a length cap), and an
//! output file that is locked, appended to, flushed per batch, and read back on `--resume` to
//! skip what is already answered.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::de::IgnoredAny;
use serde::Serialize;
use serde_json::Value;
use unireward_models::formats::record::Record;

use crate::error::{EngineError, Result};

/// Default cap on one input line: far over any context length in text, small enough that a
/// line is never a memory problem.
pub const DEFAULT_MAX_LINE_BYTES: usize = 4 << 20;

/// One input line: its 1-based number and its parsed JSON, or why it did not parse.
pub struct InputLine {
    pub line: usize,
    pub value: std::result::Result<Value, String>,
}

impl InputLine {
    /// The record's id, or a stand-in naming the line when it has none.
    pub fn id(&self) -> Value {
        self.value
            .as_ref()
            .ok()
            .and_then(|v| v.get("id").cloned())
            .unwrap_or_else(|| Value::String(format!("line {}", self.line)))
    }
}

/// Reads every non-blank line of `path` with the default line cap.
pub fn read_input(path: &Path) -> Result<Vec<InputLine>> {
    read_input_capped(path, DEFAULT_MAX_LINE_BYTES)
}

/// Reads every non-blank line of `path`. A line over `max_line_bytes` becomes an error line
/// and the rest of it is skipped without being held. A read error, a directory, or a NUL
/// byte (no JSONL text has one; `/dev/zero` is nothing else) ends the run instead, as
/// no record could be trusted after it.
pub fn read_input_capped(path: &Path, max_line_bytes: usize) -> Result<Vec<InputLine>> {
    let meta = std::fs::metadata(path).map_err(|e| EngineError::io(path, e))?;
    if meta.is_dir() {
        return Err(EngineError::Invalid(format!(
            "{}: is a directory, not a JSONL file",
            path.display()
        )));
    }
    let file = File::open(path).map_err(|e| EngineError::io(path, e))?;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut out = Vec::new();
    let mut line = Vec::new();
    let mut overlong = false;
    let mut line_no = 1;
    let mut offset: u64 = 0;
    loop {
        let chunk = match reader.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(EngineError::io(path, e)),
        };
        if chunk.is_empty() {
            if overlong || !line.is_empty() {
                out.extend(finish_line(line_no, &line, overlong, max_line_bytes));
            }
            return Ok(out);
        }
        let end = chunk.iter().position(|&b| b == b'\n');
        let part = &chunk[..end.unwrap_or(chunk.len())];
        if let Some(at) = part.iter().position(|&b| b == 0) {
            return Err(EngineError::Invalid(format!(
                "{}: a NUL byte at byte {} (line {line_no}): not a JSONL text file",
                path.display(),
                offset + at as u64
            )));
        }
        if !overlong && line.len() + part.len() <= max_line_bytes {
            line.extend_from_slice(part);
        } else if !overlong {
            overlong = true;
            line = Vec::new();
        }
        let used = part.len() + usize::from(end.is_some());
        reader.consume(used);
        offset += used as u64;
        if end.is_some() {
            out.extend(finish_line(line_no, &line, overlong, max_line_bytes));
            line.clear();
            overlong = false;
            line_no += 1;
        }
    }
}

/// The record of one complete line; none for a blank one.
fn finish_line(
    line_no: usize,
    bytes: &[u8],
    overlong: bool,
    max_line_bytes: usize,
) -> Option<InputLine> {
    if overlong {
        return Some(InputLine {
            line: line_no,
            value: Err(format!(
                "over {max_line_bytes} bytes (--max-line-bytes), not read"
            )),
        });
    }
    let value = match std::str::from_utf8(bytes) {
        Ok(text) if text.trim().is_empty() => return None,
        Ok(text) => serde_json::from_str::<Value>(text)
            .map_err(|e| format!("malformed JSON: {e}"))
            .and_then(|v| {
                if v.is_object() {
                    Ok(v)
                } else {
                    Err("a record must be a JSON object".to_string())
                }
            }),
        Err(e) => Err(format!("unreadable line: not UTF-8: {e}")),
    };
    Some(InputLine {
        line: line_no,
        value,
    })
}

/// Canonical text of an id, so that `7` and `"7"` stay distinct but compare stably.
pub fn id_key(id: &Value) -> String {
    id.to_string()
}

/// Ids given on more than one line: each id with the line numbers it is on, in input order.
pub fn duplicate_ids(lines: &[InputLine]) -> Vec<(Value, Vec<usize>)> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut dups: Vec<(Value, Vec<usize>)> = Vec::new();
    for l in lines {
        let Ok(v) = &l.value else { continue };
        let Some(id) = v.get("id") else { continue };
        match seen.get(&id_key(id)) {
            Some(&k) => dups[k].1.push(l.line),
            None => {
                seen.insert(id_key(id), dups.len());
                dups.push((id.clone(), vec![l.line]));
            }
        }
    }
    dups.retain(|(_, at)| at.len() > 1);
    dups
}

/// Refuses an output path that would overwrite what the run reads: one of `inputs` (the
/// same file by any name: symlink, hard link, relative path) or anything inside
/// `protected_dir` (the checkpoint). Checked before anything is opened for writing.
pub fn check_output_path(out: &Path, inputs: &[&Path], protected_dir: Option<&Path>) -> Result<()> {
    let refuse = |what: String| {
        Err(EngineError::Invalid(format!(
            "--out {} {what}; refusing to overwrite it",
            out.display()
        )))
    };
    if let Ok(out_meta) = std::fs::metadata(out) {
        for input in inputs {
            if let Ok(m) = std::fs::metadata(input) {
                if (m.dev(), m.ino()) == (out_meta.dev(), out_meta.ino()) {
                    return refuse(format!("is the same file as {}", input.display()));
                }
            }
        }
    }
    if let Some(dir) = protected_dir {
        let (Some(out_abs), Ok(dir_abs)) = (resolved(out), dir.canonicalize()) else {
            return Ok(());
        };
        if out_abs.starts_with(&dir_abs) {
            return refuse(format!("is inside the model directory {}", dir.display()));
        }
    }
    Ok(())
}

/// `path` with every symlink resolved, also when the file itself does not exist yet.
fn resolved(path: &Path) -> Option<PathBuf> {
    if let Ok(p) = path.canonicalize() {
        return Some(p);
    }
    let name = path.file_name()?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Some(parent.canonicalize().ok()?.join(name))
}

/// How an output file is opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutputMode {
    /// Keep what is there and skip its ids.
    pub resume: bool,
    /// With `resume`: drop the error records, so that their ids are answered again.
    pub retry_failed: bool,
}

/// Appends answers to the output file, which it holds an exclusive lock on.
pub struct OutputWriter {
    path: PathBuf,
    file: File,
    pub failed: usize,
    pub written: usize,
}

impl OutputWriter {
    /// Opens `path` for appending. With `resume`, returns the ids already answered, after
    /// cutting a torn last line (a run killed mid-write) back to the last newline.
    pub fn open(path: &Path, resume: bool) -> Result<(Self, HashSet<String>)> {
        Self::open_with(
            path,
            OutputMode {
                resume,
                retry_failed: false,
            },
        )
    }

    /// Opens `path` as `mode` says and returns the ids already answered. The file is locked
    /// before anything in it changes: a second run on the same file is refused, where the
    /// two would interleave or truncate each other's answers.
    pub fn open_with(path: &Path, mode: OutputMode) -> Result<(Self, HashSet<String>)> {
        let io = |e| EngineError::io(path, e);
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        lock(&file, path)?;
        let mut done = HashSet::new();
        if !mode.resume {
            file.set_len(0).map_err(io)?;
        } else {
            repair_torn_tail(&mut file, path)?;
            let mut text = String::new();
            file.seek(SeekFrom::Start(0))
                .and_then(|_| file.read_to_string(&mut text))
                .map_err(io)?;
            let mut kept = String::with_capacity(text.len());
            let mut dropped = 0;
            for line in text.lines() {
                // Any command's answers: only their ids and errors matter here.
                if let Ok(record) = serde_json::from_str::<Record<IgnoredAny>>(line) {
                    if mode.retry_failed && record.error().is_some() {
                        dropped += 1;
                        continue;
                    }
                    done.insert(id_key(record.id()));
                }
                kept.push_str(line);
                kept.push('\n');
            }
            if dropped > 0 {
                file = replace_contents(path, kept.as_bytes())?;
                tracing::info!("retrying {dropped} failed record(s) of {}", path.display());
            }
        }
        file.seek(SeekFrom::End(0)).map_err(io)?;
        Ok((
            Self {
                path: path.to_path_buf(),
                file,
                failed: 0,
                written: 0,
            },
            done,
        ))
    }

    /// Writes records and flushes them: once this returns they survive a kill.
    pub fn write_batch<A: Serialize>(&mut self, records: &[Record<A>]) -> Result<()> {
        let mut buf = String::new();
        for r in records {
            let line = serde_json::to_string(r).map_err(|e| {
                EngineError::Invalid(format!("writing the answer to {}: {e}", r.id()))
            })?;
            if r.error().is_some() {
                self.failed += 1;
            }
            buf.push_str(&line);
            buf.push('\n');
        }
        self.written += records.len();
        self.file
            .write_all(buf.as_bytes())
            .and_then(|_| self.file.flush())
            .and_then(|_| self.file.sync_data())
            .map_err(|e| EngineError::io(&self.path, e))
    }
}

fn lock(file: &File, path: &Path) -> Result<()> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(EngineError::Invalid(format!(
            "{}: another engine run is writing this file",
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(EngineError::io(path, e)),
    }
}

/// Replaces `path`'s contents with `bytes` so that a crash leaves the old or the new file,
/// never a mix: a locked temporary file next to it is written, synced and renamed over it,
/// then the directory is synced so that the rename itself survives a power loss. Returns the
/// new file, still locked.
fn replace_contents(path: &Path, bytes: &[u8]) -> Result<File> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let io = |e| EngineError::io(&tmp, e);
    let mut f = OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io)?;
    lock(&f, &tmp)?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| EngineError::io(dir, e))?;
    Ok(f)
}

fn repair_torn_tail(file: &mut File, path: &Path) -> Result<()> {
    let io = |e| EngineError::io(path, e);
    let len = file.metadata().map_err(io)?.len();
    if len == 0 {
        return Ok(());
    }
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_to_end(&mut bytes))
        .map_err(io)?;
    if bytes.ends_with(b"\n") {
        return Ok(());
    }
    let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    file.set_len(keep as u64).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer record holding `fields` after the id.
    fn answered(id: Value, fields: Value) -> Record<Value> {
        Record::Answer { id, answer: fields }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("unireward-records-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn resume_repairs_torn_line_and_lists_ids() {
        let dir = scratch("torn");
        let path = dir.join("out.jsonl");
        std::fs::write(
            &path,
            "{\"id\":\"a\",\"x\":1}\n{\"id\":2}\n{\"id\":\"c\",\"x",
        )
        .unwrap();
        let (mut w, done) = OutputWriter::open(&path, true).unwrap();
        assert!(done.contains("\"a\"") && done.contains("2") && done.len() == 2);
        w.write_batch(&[answered(serde_json::json!("c"), serde_json::json!({}))])
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"id\":\"a\",\"x\":1}\n{\"id\":2}\n{\"id\":\"c\"}\n");
    }

    #[test]
    fn malformed_lines_are_reported_with_their_number() {
        let dir = scratch("input");
        let path = dir.join("in.jsonl");
        std::fs::write(&path, "{\"id\":1}\n\nnot json\n[1]\n").unwrap();
        let lines = read_input(&path).unwrap();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[1].line, 3);
        assert!(lines[1]
            .value
            .as_ref()
            .unwrap_err()
            .contains("malformed JSON"));
        assert_eq!(lines[1].id(), Value::String("line 3".into()));
        assert!(lines[2].value.is_err());
    }

    #[test]
    fn an_overlong_line_is_an_error_line_and_the_next_lines_are_read() {
        let dir = scratch("overlong");
        let path = dir.join("in.jsonl");
        let long = format!("{{\"id\":\"big\",\"prompt\":\"{}\"}}", "x".repeat(200_000));
        // No newline after the last line: it still counts.
        let mut bytes = format!("{{\"id\":1}}\n{long}\n").into_bytes();
        bytes.extend_from_slice(b"\xc3\xff\n{\"id\":4}");
        std::fs::write(&path, bytes).unwrap();
        let lines = read_input_capped(&path, 1000).unwrap();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[1].line, 2);
        assert_eq!(lines[1].id(), Value::String("line 2".into()));
        assert!(lines[1]
            .value
            .as_ref()
            .unwrap_err()
            .contains("over 1000 bytes"));
        assert!(lines[2].value.as_ref().unwrap_err().contains("UTF-8"));
        assert_eq!(lines[3].id(), serde_json::json!(4));
        assert!(read_input_capped(&path, 1 << 20).unwrap()[1].value.is_ok());
    }

    #[test]
    fn a_retry_drops_error_records_and_keeps_one_per_id() {
        let dir = scratch("retry");
        let path = dir.join("out.jsonl");
        std::fs::write(
            &path,
            "{\"id\":1,\"x\":1}\n{\"id\":2,\"error\":\"e\"}\n{\"id\":3}\n",
        )
        .unwrap();
        let mode = OutputMode {
            resume: true,
            retry_failed: true,
        };
        let (mut w, done) = OutputWriter::open_with(&path, mode).unwrap();
        assert_eq!(done, HashSet::from(["1".to_string(), "3".to_string()]));
        w.write_batch(&[answered(serde_json::json!(2), serde_json::json!({"x": 2}))])
            .unwrap();
        drop(w);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"id\":1,\"x\":1}\n{\"id\":3}\n{\"id\":2,\"x\":2}\n"
        );
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn a_second_writer_on_the_same_file_is_refused_and_leaves_it_alone() {
        let dir = scratch("lock");
        let path = dir.join("out.jsonl");
        let (mut first, _) = OutputWriter::open(&path, false).unwrap();
        first
            .write_batch(&[answered(serde_json::json!(1), serde_json::json!({}))])
            .unwrap();
        let err = OutputWriter::open(&path, false).err().unwrap();
        assert!(err.to_string().contains("another engine run"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"id\":1}\n");
        drop(first);
        assert!(OutputWriter::open(&path, true).is_ok());
    }

    #[test]
    fn duplicate_ids_are_found_with_their_lines() {
        let dir = scratch("dups");
        let path = dir.join("in.jsonl");
        std::fs::write(&path, "{\"id\":1}\n{\"id\":\"1\"}\n{\"id\":1}\n{\"x\":0}\n").unwrap();
        let dups = duplicate_ids(&read_input(&path).unwrap());
        assert_eq!(dups, vec![(serde_json::json!(1), vec![1, 3])]);
    }
}
