//! The run loop every batch command shares: read JSONL, skip what `--resume` finds answered,
//! prepare records (media decoding, resizing) on worker threads while the model works on the
//! previous window, write answers in input order and flush them window by window.
//!
//! Commands answer each record with their typed answer or an error; the pipeline alone puts
//! the record's id on it and turns an error into the error record ([`Record`]).

use std::io::IsTerminal;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::sync::OnceLock;
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;
use serde_json::Value;
use unireward_models::formats::record::Record;
use unireward_models::preprocess::{MediaLoader, MediaRequest, PreparedMedia};

use crate::error::{EngineError, Result};
use crate::records::{
    duplicate_ids, id_key, read_input_capped, OutputMode, OutputWriter, DEFAULT_MAX_LINE_BYTES,
};

/// Records per window: what is prepared ahead and written at once.
const WINDOW: usize = 32;

/// Default bound on decoded image bytes in flight across the preprocessing workers.
pub const DEFAULT_DECODE_BUDGET_BYTES: u64 = 1 << 30;

/// Bytes an image is charged per pixel while it is decoded and preprocessed: an 8000×8000
/// PNG peaked at 590 MB over the engine's resident size (the decoded pixels and the copies
/// conversion and resizing make of them), 9.2 bytes a pixel.
const DECODED_BYTES_PER_PIXEL: u64 = 10;

/// How a run reads its input and treats its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOptions {
    pub output: OutputMode,
    /// A longer input line is an error record, never read whole.
    pub max_line_bytes: usize,
    /// Records whose images would decode to more than this together are not prepared at
    /// the same time (one record over it alone still is).
    pub decode_budget_bytes: u64,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            output: OutputMode::default(),
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            decode_budget_bytes: DEFAULT_DECODE_BUDGET_BYTES,
        }
    }
}

static PROCESS_OPTIONS: OnceLock<RunOptions> = OnceLock::new();

impl RunOptions {
    /// Makes these the options of runs started through [`run_pipeline`] /
    /// [`run_media_pipeline`], whose callers pass only `resume`; the first call wins.
    pub fn install(self) {
        let _ = PROCESS_OPTIONS.set(self);
    }

    /// The installed options (defaults when none were) with `resume` as given.
    pub fn installed(resume: bool) -> Self {
        let mut opts = PROCESS_OPTIONS.get().copied().unwrap_or_default();
        opts.output.resume = resume;
        opts.output.retry_failed &= resume;
        opts
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunSummary {
    pub answered: usize,
    pub failed: usize,
    pub skipped: usize,
}

/// A record and its loaded media, as `process` receives them.
pub type Prepared<R> = (Value, (R, PreparedMedia));

/// [`run_pipeline`] for requests with media: `parse` reads a record and names its media,
/// which are loaded on the workers (relative paths from the input file's directory).
pub fn run_media_pipeline<R, A, F, G>(
    input: &Path,
    out: &Path,
    resume: bool,
    loader: &MediaLoader,
    parse: F,
    process: G,
) -> Result<RunSummary>
where
    R: Send,
    F: Fn(&Value) -> std::result::Result<(R, MediaRequest), String> + Sync,
    A: Serialize,
    G: FnMut(Vec<Prepared<R>>) -> Vec<Result<A>>,
{
    let opts = RunOptions::installed(resume);
    run_media_pipeline_with(&opts, input, out, loader, parse, process)
}

/// [`run_media_pipeline`] with explicit options.
pub fn run_media_pipeline_with<R, A, F, G>(
    opts: &RunOptions,
    input: &Path,
    out: &Path,
    loader: &MediaLoader,
    parse: F,
    process: G,
) -> Result<RunSummary>
where
    R: Send,
    F: Fn(&Value) -> std::result::Result<(R, MediaRequest), String> + Sync,
    A: Serialize,
    G: FnMut(Vec<Prepared<R>>) -> Vec<Result<A>>,
{
    let base = input.parent().unwrap_or(Path::new(".")).to_path_buf();
    run_pipeline_with(
        opts,
        input,
        out,
        |v: &Value| {
            parse(v)
                .map(|(_, media)| decoded_image_bytes(&media, &base))
                .unwrap_or(0)
        },
        |v: &Value| {
            let (req, media) = parse(v)?;
            let loaded = loader.load(&media, &base).map_err(|e| e.to_string())?;
            Ok((req, loaded))
        },
        process,
    )
}

/// What a request's images take decoded, read from their headers; an unreadable image
/// counts nothing here and fails when it is loaded.
pub(crate) fn decoded_image_bytes(media: &MediaRequest, base: &Path) -> u64 {
    media
        .images
        .iter()
        .map(|p| {
            let path: PathBuf = if p.is_absolute() {
                p.clone()
            } else {
                base.join(p)
            };
            image::ImageReader::open(&path)
                .and_then(|r| r.with_guessed_format())
                .ok()
                .and_then(|r| r.into_dimensions().ok())
                .map_or(0, |(w, h)| {
                    u64::from(w) * u64::from(h) * DECODED_BYTES_PER_PIXEL
                })
        })
        .sum()
}

/// Splits consecutive records of the given costs into groups prepared at the same time:
/// each group's total stays within `budget`, except a group of one record over it alone.
pub fn groups_within_budget(costs: &[u64], budget: u64) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut total: u64 = 0;
    for (i, &c) in costs.iter().enumerate() {
        if i > start && total.saturating_add(c) > budget {
            out.push(start..i);
            start = i;
            total = 0;
        }
        total = total.saturating_add(c);
    }
    if start < costs.len() {
        out.push(start..costs.len());
    }
    out
}

/// Answers each record on its own.
pub fn answer_each<R, A>(
    batch: Vec<Prepared<R>>,
    answer: impl Fn(&R, &PreparedMedia) -> Result<A>,
) -> Vec<Result<A>> {
    batch
        .into_iter()
        .map(|(_, (req, media))| answer(&req, &media))
        .collect()
}

enum Slot<P> {
    Ready(Value, P),
    Failed(Value, String),
}

/// `prepare` runs on worker threads per record; `process` answers the prepared records of a
/// window, one answer or error per record, in order.
pub fn run_pipeline<P, A, F, G>(
    input: &Path,
    out: &Path,
    resume: bool,
    prepare: F,
    process: G,
) -> Result<RunSummary>
where
    P: Send,
    F: Fn(&Value) -> std::result::Result<P, String> + Sync,
    A: Serialize,
    G: FnMut(Vec<(Value, P)>) -> Vec<Result<A>>,
{
    let opts = RunOptions::installed(resume);
    run_pipeline_with(&opts, input, out, |_: &Value| 0, prepare, process)
}

/// [`run_pipeline`] with explicit options; `cost` is what preparing a record holds in memory
/// (decoded image bytes), bounded across the workers by `opts.decode_budget_bytes`.
pub fn run_pipeline_with<P, A, C, F, G>(
    opts: &RunOptions,
    input: &Path,
    out: &Path,
    cost: C,
    prepare: F,
    mut process: G,
) -> Result<RunSummary>
where
    P: Send,
    C: Fn(&Value) -> u64 + Sync,
    F: Fn(&Value) -> std::result::Result<P, String> + Sync,
    A: Serialize,
    G: FnMut(Vec<(Value, P)>) -> Vec<Result<A>>,
{
    let lines = read_input_capped(input, opts.max_line_bytes)?;
    warn_duplicates(&lines, opts.output.resume);
    let (mut writer, done) = OutputWriter::open_with(out, opts.output)?;
    let total = lines.len();
    let todo: Vec<_> = lines
        .into_iter()
        .filter(|l| !done.contains(&id_key(&l.id())))
        .collect();
    let skipped = total - todo.len();
    let progress = Progress::new(todo.len(), skipped);

    std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = sync_channel::<Vec<Slot<P>>>(1);
        let prepare = &prepare;
        let cost = &cost;
        let todo = &todo;
        scope.spawn(move || {
            for window in todo.chunks(WINDOW) {
                // Decoding is where memory peaks, so records are let onto the workers in
                // groups whose decoded images fit the budget together.
                let costs: Vec<u64> = window
                    .iter()
                    .map(|l| l.value.as_ref().map_or(0, cost))
                    .collect();
                let mut slots: Vec<Slot<P>> = Vec::with_capacity(window.len());
                for group in groups_within_budget(&costs, opts.decode_budget_bytes) {
                    slots.par_extend(window[group].par_iter().map(|line| {
                        let id = line.id();
                        let value = match &line.value {
                            Ok(v) => v,
                            Err(e) => return Slot::Failed(id, format!("line {}: {e}", line.line)),
                        };
                        match prepare(value) {
                            Ok(p) => Slot::Ready(id, p),
                            Err(e) => Slot::Failed(id, e),
                        }
                    }));
                }
                if tx.send(slots).is_err() {
                    return;
                }
            }
        });
        for slots in rx {
            let mut order: Vec<Option<Record<A>>> = Vec::with_capacity(slots.len());
            let mut ready = Vec::new();
            let mut ready_at = Vec::new();
            for (i, slot) in slots.into_iter().enumerate() {
                match slot {
                    Slot::Ready(id, p) => {
                        ready_at.push((i, id.clone()));
                        ready.push((id, p));
                        order.push(None);
                    }
                    Slot::Failed(id, error) => order.push(Some(Record::Error { id, error })),
                }
            }
            let mut answers = process(ready).into_iter();
            for (i, id) in ready_at {
                let answer = answers
                    .next()
                    .unwrap_or_else(|| Err(EngineError::Invalid("not answered".into())));
                order[i] = Some(match answer {
                    Ok(answer) => Record::Answer { id, answer },
                    Err(e) => Record::Error {
                        id,
                        error: e.to_string(),
                    },
                });
            }
            // Every slot was filled above: a failed one at once, a ready one by its answer.
            let records: Vec<Record<A>> = order.into_iter().flatten().collect();
            writer.write_batch(&records)?;
            progress.advance(records.len(), writer.failed);
        }
        Ok(())
    })?;
    progress.finish(writer.written, writer.failed);
    Ok(RunSummary {
        answered: writer.written,
        failed: writer.failed,
        skipped,
    })
}

/// Says which ids are given more than once: each such line is answered, and `--resume`
/// counts an id as done once any answer with it is in the output.
fn warn_duplicates(lines: &[crate::records::InputLine], resume: bool) {
    let dups = duplicate_ids(lines);
    if dups.is_empty() {
        return;
    }
    let shown: Vec<String> = dups
        .iter()
        .take(5)
        .map(|(id, at)| {
            let at: Vec<String> = at.iter().map(usize::to_string).collect();
            format!("{id} (lines {})", at.join(", "))
        })
        .collect();
    let more = dups.len().saturating_sub(shown.len());
    tracing::warn!(
        "warning: {} id(s) given on more than one line: {}{}; each line is answered, so the \
         output has as many records with that id{}",
        dups.len(),
        shown.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        },
        if resume {
            "; --resume skips every line of an id once one answer with it is in the output"
        } else {
            ""
        }
    );
}

/// A bar on a terminal, a log line per window otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: usize,
    start: Instant,
    done: std::cell::Cell<usize>,
}

impl Progress {
    fn new(total: usize, skipped: usize) -> Self {
        if skipped > 0 {
            tracing::info!("resuming: {skipped} record(s) already answered");
        }
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total as u64);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} records  {per_sec}  ETA {eta}  {msg}",
            ) {
                bar.set_style(style);
            }
            bar
        });
        Self {
            bar,
            total,
            start: Instant::now(),
            done: std::cell::Cell::new(0),
        }
    }

    fn advance(&self, n: usize, failed: usize) {
        self.done.set(self.done.get() + n);
        let done = self.done.get();
        match &self.bar {
            Some(bar) => {
                bar.inc(n as u64);
                if failed > 0 {
                    bar.set_message(format!("{failed} failed"));
                }
            }
            None => {
                let secs = self.start.elapsed().as_secs_f64();
                let rate = done as f64 / secs.max(1e-9);
                let eta = (self.total - done) as f64 / rate.max(1e-9);
                tracing::info!(
                    "{done}/{} records, {rate:.2} records/s, ETA {eta:.0}s, {failed} failed",
                    self.total
                );
            }
        }
    }

    fn finish(&self, written: usize, failed: usize) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        tracing::info!(
            "answered {written} record(s) in {:.1}s, {failed} failed",
            self.start.elapsed().as_secs_f64()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn groups_stay_within_the_budget() {
        assert_eq!(
            groups_within_budget(&[4, 4, 4, 1, 9, 0], 8),
            vec![0..2, 2..4, 4..5, 5..6]
        );
        assert_eq!(groups_within_budget(&[0; 5], 0), vec![0..5]);
        assert!(groups_within_budget(&[], 8).is_empty());
    }

    #[test]
    fn the_pipeline_puts_the_id_on_every_answer_and_error() {
        let dir = std::env::temp_dir().join(format!("unireward-ids-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (input, out) = (dir.join("in.jsonl"), dir.join("out.jsonl"));
        std::fs::write(
            &input,
            "{\"id\":\"a\",\"n\":1}\n{\"n\":2}\n{\"id\":3,\"n\":-1}\n{\"id\":4,\"n\":4}\n",
        )
        .unwrap();
        #[derive(Serialize)]
        struct Doubled {
            twice: i64,
        }
        let summary = run_pipeline_with(
            &RunOptions::default(),
            &input,
            &out,
            |_: &Value| 0,
            |v: &Value| match v["n"].as_i64() {
                Some(n) if n >= 0 => Ok(n),
                _ => Err("n must not be negative".to_string()),
            },
            |batch| {
                batch
                    .into_iter()
                    .map(|(_, n)| match n {
                        4 => Err(EngineError::Invalid("four is refused".into())),
                        n => Ok(Doubled { twice: 2 * n }),
                    })
                    .collect()
            },
        )
        .unwrap();
        assert_eq!((summary.answered, summary.failed), (4, 2));
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "{\"id\":\"a\",\"twice\":2}\n{\"id\":\"line 2\",\"twice\":4}\n\
             {\"id\":3,\"error\":\"n must not be negative\"}\n{\"id\":4,\"error\":\"four is refused\"}\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn records_in_preparation_never_hold_more_than_the_budget() {
        let dir = std::env::temp_dir().join(format!("unireward-budget-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let input = dir.join("in.jsonl");
        let lines: Vec<String> = (0..24)
            .map(|i| format!("{{\"id\":{i},\"cost\":600}}"))
            .collect();
        std::fs::write(&input, lines.join("\n")).unwrap();
        let peak_with_budget = |budget: u64| -> u64 {
            let opts = RunOptions {
                decode_budget_bytes: budget,
                ..RunOptions::default()
            };
            let (in_flight, peak) = (AtomicU64::new(0), AtomicU64::new(0));
            let cost = |v: &Value| v["cost"].as_u64().unwrap_or(0);
            let summary = run_pipeline_with(
                &opts,
                &input,
                &dir.join("out.jsonl"),
                cost,
                |v: &Value| {
                    let now = in_flight.fetch_add(cost(v), Ordering::SeqCst) + cost(v);
                    peak.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    in_flight.fetch_sub(cost(v), Ordering::SeqCst);
                    Ok(())
                },
                |batch| {
                    batch
                        .into_iter()
                        .map(|_| Ok(serde_json::Map::new()))
                        .collect()
                },
            )
            .unwrap();
            assert_eq!(summary.answered, 24);
            peak.load(Ordering::SeqCst)
        };
        // Unbounded, the workers prepare several records at once: what the bound is for.
        if rayon::current_num_threads() >= 2 {
            assert!(peak_with_budget(u64::MAX) >= 1200);
        }
        assert_eq!(peak_with_budget(1000), 600);
    }
}
