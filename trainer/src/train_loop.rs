//! The loop `trainer reward` and `trainer dpo` share, over an [`Objective`]:
//!
//! - each optimizer step takes `batch_size · grad_accum` examples from a seeded stream of
//!   shuffled epochs ([`DataOrder`]), in `grad_accum` micro-batches whose gradients add up;
//!   the step's loss is the objective's per-unit loss averaged over the whole step (units are
//!   answer tokens for SFT, pairs for DPO), whatever the micro-batching;
//! - the gradients' global norm is clipped, the learning rate follows the [`Schedule`], and
//!   [`AdamW`] updates the trained weights;
//! - `OUT/metrics.jsonl` gets one line per optimizer step: `step` (1-based), `epoch`, `loss`,
//!   `lr` (the rate that step used), `grad_norm` (before clipping) and the objective's metrics;
//! - every `save_every` steps a checkpoint is written (temporary directory, then renamed);
//!   `--resume` restores weights (or LoRA adapters), optimizer moments and step from the
//!   newest one, drops the metrics lines after it, and carries on: the schedule and the data
//!   order are functions of the step and the seed, so the resumed run repeats the
//!   uninterrupted one;
//! - a non-finite loss or gradient norm stops the run naming the step, before the weights
//!   are touched, so the last checkpoint stays the last good state.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use crate::checkpoint_io::{latest_checkpoint, prune_checkpoints, save_checkpoint, save_final};
use crate::data::fingerprint::file_digest;
use crate::data::order::DataOrder;
use crate::durable_file::replace_file;
use crate::json_file::read_json;
use crate::memory_estimate::{available_memory, StepShape};
use crate::model_files::{OPTIMIZER_FILE, STATE_FILE};
use crate::optim::{AdamW, AdamWParams};
use crate::schedule::{Schedule, ScheduleKind};
use crate::trainee::Trainee;
use crate::{Error, Result};
use candle_core::{DType, Tensor, Var};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Map, Value};

pub const METRICS_FILE: &str = "metrics.jsonl";

/// A micro-batch ready for the model, how many loss units (tokens, pairs) it holds, and
/// the shape of its decoder call (for the memory estimate).
pub struct Prepared<B> {
    pub batch: B,
    pub weight: f64,
    pub shape: StepShape,
}

/// A micro-batch's summed loss (a scalar with its graph) and summed metrics; the loop
/// divides both by the step's total weight.
pub struct Forward {
    pub loss_sum: Tensor,
    pub metric_sums: Vec<(String, f64)>,
}

/// What a command trains for.
pub trait Objective {
    type Batch;
    /// The model its forward runs (the [`Trainee`]'s).
    type Model: ?Sized;

    fn num_examples(&self) -> usize;

    /// Loads and tokenizes the examples at `indices`; `position` is where the first of them
    /// stands in the run's stream of examples (a function of the step, so an objective that
    /// draws noise per visit draws the same after a resume).
    fn prepare(&self, indices: &[usize], position: usize) -> Result<Prepared<Self::Batch>>;

    fn forward(&self, model: &Self::Model, batch: &Self::Batch) -> Result<Forward>;

    /// Held-out metrics, merged into the line of the steps they are computed at.
    fn evaluate(&self, _model: &Self::Model) -> Result<Vec<(String, f64)>> {
        Ok(Vec::new())
    }

    /// Settings a resumed run must share with the run that wrote the checkpoint.
    fn describe(&self) -> Value;

    /// The training data file, whose fingerprint a checkpoint records so that a resumed
    /// run refuses data that changed under it; `None` when there is no file to guard.
    fn data_file(&self) -> Option<&Path> {
        None
    }
}

#[derive(Debug, Clone)]
pub struct LoopConfig {
    pub out: PathBuf,
    /// The model directory whose config and tokenizer files go beside saved weights.
    pub source_dir: PathBuf,
    /// Overrides `epochs` when set.
    pub max_steps: Option<usize>,
    pub epochs: f64,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub seed: u64,
    pub shuffle: bool,
    pub lr: f64,
    pub warmup_ratio: f64,
    pub schedule: ScheduleKind,
    pub save_every: Option<usize>,
    /// Newest checkpoints kept (0: all).
    pub keep_checkpoints: usize,
    pub resume: bool,
    /// Resume even though the data file is not the one the checkpoint was written with.
    pub allow_data_change: bool,
    /// Stop (with a checkpoint) once this step is done, the schedule still that of the
    /// whole run: for runs split over several sessions.
    pub stop_after: Option<usize>,
    pub max_grad_norm: Option<f64>,
    pub adamw: AdamWParams,
    /// Evaluate every N steps and at the last one (when the objective has held-out data).
    pub eval_every: Option<usize>,
    pub progress: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TrainSummary {
    /// The last step done (1-based).
    pub step: usize,
    pub total_steps: usize,
    /// All steps done and the final weights written to `out`.
    pub finished: bool,
}

impl LoopConfig {
    /// Refuses settings no run can use, naming the command-line flag of each: the trainer
    /// calls this before it loads anything (and [`train`] again, for other callers).
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(msg));
        if self.batch_size == 0 {
            return bad("--batch-size must be at least 1, got 0".into());
        }
        if self.grad_accum == 0 {
            return bad("--grad-accum must be at least 1, got 0".into());
        }
        for (flag, value) in [
            ("--max-steps", self.max_steps),
            ("--save-every", self.save_every),
            ("--eval-every", self.eval_every),
            ("--stop-after", self.stop_after),
        ] {
            if value == Some(0) {
                return bad(format!("{flag} must be at least 1, got 0"));
            }
        }
        if !(self.epochs > 0.0 && self.epochs.is_finite()) {
            return bad(format!(
                "--epochs must be a positive number, got {}",
                self.epochs
            ));
        }
        if !(self.lr >= 0.0 && self.lr.is_finite()) {
            return bad(format!(
                "--lr must be a finite number of at least 0, got {}",
                self.lr
            ));
        }
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            return bad(format!(
                "--warmup-ratio must be within [0, 1], got {}",
                self.warmup_ratio
            ));
        }
        if let Some(max) = self.max_grad_norm {
            if !(max > 0.0 && max.is_finite()) {
                return bad(format!(
                    "--max-grad-norm must be a finite number of at least 0 (0: no \
                     clipping), got {max}"
                ));
            }
        }
        let wd = self.adamw.weight_decay;
        if !(wd >= 0.0 && wd.is_finite()) {
            return bad(format!(
                "--weight-decay must be a finite number of at least 0, got {wd}"
            ));
        }
        Ok(())
    }

    fn examples_per_step(&self) -> usize {
        self.batch_size * self.grad_accum
    }

    /// (examples the run visits or `None` for an endless stream, optimizer steps).
    fn extent(&self, n: usize) -> (Option<usize>, usize) {
        match self.max_steps {
            Some(steps) => (None, steps),
            None => {
                let examples = (self.epochs * n as f64).ceil().max(1.0) as usize;
                (Some(examples), examples.div_ceil(self.examples_per_step()))
            }
        }
    }
}

/// Trains `model` for `objective`; see the module documentation.
pub fn train<T: Trainee, O: Objective<Model = T::Model>>(
    model: &mut T,
    objective: &O,
    cfg: &LoopConfig,
) -> Result<TrainSummary> {
    cfg.validate()?;
    let n = objective.num_examples();
    if n == 0 {
        return Err(Error::Config("the data set is empty".into()));
    }
    let (examples, total_steps) = cfg.extent(n);
    let schedule = Schedule::new(cfg.schedule, cfg.lr, cfg.warmup_ratio, total_steps);
    let vars = model.trained_vars()?;
    if vars.is_empty() {
        return Err(Error::Config(
            "nothing to train: every part of the model is frozen".into(),
        ));
    }
    let mut optimizer = AdamW::new(vars, cfg.adamw)?;
    let settings = settings(model, objective, cfg, n, total_steps);
    let data_digest = objective.data_file().map(file_digest).transpose()?;
    std::fs::create_dir_all(&cfg.out).map_err(|e| Error::io(&cfg.out, e))?;
    let metrics_path = cfg.out.join(METRICS_FILE);

    let start = if cfg.resume {
        let data = DataCheck {
            file: objective.data_file(),
            digest: data_digest.as_deref(),
            allow_change: cfg.allow_data_change,
        };
        resume_from(model, &mut optimizer, &cfg.out, &settings, &data)?
    } else {
        check_fresh_out(&cfg.out, false)?;
        0
    };
    keep_metrics_until(&metrics_path, start)?;
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(|e| Error::io(&metrics_path, e))?;

    let progress = progress_bar(cfg.progress, total_steps, start);
    let mut order = DataOrder::new(n, cfg.seed, cfg.shuffle);
    let per_step = cfg.examples_per_step();
    for step in start..total_steps {
        let first = step * per_step;
        let end = examples.map_or(first + per_step, |e| e.min(first + per_step));
        let indices: Vec<usize> = (first..end).map(|k| order.example(k)).collect();
        let micro = indices
            .chunks(cfg.batch_size)
            .enumerate()
            .map(|(i, c)| objective.prepare(c, first + i * cfg.batch_size))
            .collect::<Result<Vec<_>>>()?;
        if step == start {
            let shape = micro
                .iter()
                .map(|m| m.shape)
                .max_by_key(|s| s.rows * s.tokens)
                .unwrap_or_default();
            if let Some(estimate) = model.memory_estimate(shape)? {
                tracing::info!(
                    "trainer: memory estimate for a micro-batch of {} sequence(s) of up to {} \
                     tokens: {estimate}",
                    shape.rows,
                    shape.tokens,
                );
                if let Some(free) = available_memory(model.device()) {
                    estimate.check(free, model.device())?;
                }
            }
        }
        let total_weight: f64 = micro.iter().map(|m| m.weight).sum();
        if total_weight <= 0.0 {
            return Err(Error::Config(format!(
                "step {}: the examples hold nothing to score",
                step + 1
            )));
        }
        let acc = accumulate(model, objective, &micro, optimizer.vars())?;
        let (mut grads, sums) = (acc.grads, acc.metric_sums);
        let loss = acc.loss_sum / total_weight;
        if !loss.is_finite() {
            return Err(non_finite(&cfg.out, step + 1, "loss", loss));
        }
        let grad_norm = global_norm(&grads)?;
        if !grad_norm.is_finite() {
            return Err(non_finite(&cfg.out, step + 1, "gradient norm", grad_norm));
        }
        if let Some(max) = cfg.max_grad_norm {
            clip(&mut grads, grad_norm, max)?;
        }
        let lr = schedule.lr(step);
        // In place: the model reads the variables' storage (no rebuild; see varmap_model).
        optimizer.step(&grads, lr)?;

        let done = step + 1;
        let mut line = Map::new();
        line.insert("step".into(), json!(done));
        line.insert("epoch".into(), json!(end as f64 / n as f64));
        line.insert("loss".into(), json!(loss));
        line.insert("lr".into(), json!(lr));
        line.insert("grad_norm".into(), json!(grad_norm));
        for (k, v) in sums {
            line.insert(k, json!(v / total_weight));
        }
        let eval_due = cfg
            .eval_every
            .is_some_and(|e| done % e == 0 || done == total_steps);
        if eval_due {
            for (k, v) in objective.evaluate(model.model())? {
                line.insert(k, json!(v));
            }
        }
        writeln!(metrics, "{}", Value::Object(line)).map_err(|e| Error::io(&metrics_path, e))?;
        metrics.flush().map_err(|e| Error::io(&metrics_path, e))?;
        progress.set_message(format!("loss {loss:.4}"));
        progress.inc(1);

        let stopping = cfg.stop_after == Some(done) && done < total_steps;
        if cfg.save_every.is_some_and(|s| done % s == 0) || stopping {
            let state = json!({"step": done, "settings": settings, "data_digest": data_digest});
            save_checkpoint(&cfg.out, done, model, &optimizer, &state, &cfg.source_dir)?;
            prune_checkpoints(&cfg.out, cfg.keep_checkpoints)?;
        }
        if stopping {
            progress.finish_and_clear();
            return Ok(TrainSummary {
                step: done,
                total_steps,
                finished: false,
            });
        }
    }
    progress.finish_and_clear();
    save_final(&cfg.out, model, &cfg.source_dir)?;
    Ok(TrainSummary {
        step: total_steps,
        total_steps,
        finished: true,
    })
}

/// One optimizer step's worth of micro-batches: their summed loss and metrics, and the
/// gradient of (summed loss / step weight) for each variable, added up over micro-batches.
struct Accumulated {
    loss_sum: f64,
    metric_sums: Vec<(String, f64)>,
    grads: Vec<Option<Tensor>>,
}

fn accumulate<T: Trainee, O: Objective<Model = T::Model>>(
    model: &T,
    objective: &O,
    micro: &[Prepared<O::Batch>],
    vars: &[(String, Var)],
) -> Result<Accumulated> {
    let checkpointing = model.checkpointing();
    let model = model.model();
    let total_weight: f64 = micro.iter().map(|m| m.weight).sum();
    let mut out = Accumulated {
        loss_sum: 0.0,
        metric_sums: Vec::new(),
        grads: vec![None; vars.len()],
    };
    for mb in micro {
        let fwd = objective.forward(model, &mb.batch)?;
        let value = scalar(&fwd.loss_sum)?;
        out.loss_sum += value;
        add_metrics(&mut out.metric_sums, fwd.metric_sums);
        if !value.is_finite() {
            // No backward through a NaN; the caller reports the step.
            return Ok(out);
        }
        if let Some(c) = checkpointing {
            c.clear()?;
        }
        let grads = (fwd.loss_sum * (1.0 / total_weight))?.backward()?;
        for ((_, var), acc) in vars.iter().zip(out.grads.iter_mut()) {
            // Checkpointed layers' weights get theirs from the recomputation.
            let recomputed = match checkpointing {
                Some(c) => c.take(var.as_tensor())?,
                None => None,
            };
            for g in grads
                .get(var.as_tensor())
                .into_iter()
                .chain(recomputed.as_ref())
            {
                // Detached, so that what is kept past this micro-batch holds no activation
                // (see AdamW::step).
                let g = g.detach();
                *acc = Some(match acc.take() {
                    Some(a) => (a + g)?,
                    None => g,
                });
            }
        }
    }
    Ok(out)
}

/// Scales the gradients so that their global norm is at most `max` (as
/// `torch.nn.utils.clip_grad_norm_`, with its 1e-6 guard).
fn clip(grads: &mut [Option<Tensor>], norm: f64, max: f64) -> Result<()> {
    let coef = max / (norm + 1e-6);
    if coef < 1.0 {
        for g in grads.iter_mut().flatten() {
            *g = (&*g * coef)?;
        }
    }
    Ok(())
}

/// A run that does not resume must not mix its metrics and checkpoints with an earlier
/// run's: refuses an `out` that holds either.
pub fn check_fresh_out(out: &Path, resume: bool) -> Result<()> {
    if resume {
        return Ok(());
    }
    if out.join(METRICS_FILE).exists() || latest_checkpoint(out)?.is_some() {
        return Err(Error::Config(format!(
            "{} already holds a run (metrics or checkpoints): pass --resume to continue it, \
             or choose another output directory",
            out.display()
        )));
    }
    Ok(())
}

/// What a checkpoint records about the run, compared on resume.
fn settings<T: Trainee, O: Objective<Model = T::Model>>(
    model: &T,
    objective: &O,
    cfg: &LoopConfig,
    n: usize,
    total_steps: usize,
) -> Value {
    let mut settings = json!({
        "num_examples": n,
        "total_steps": total_steps,
        "max_steps": cfg.max_steps,
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "grad_accum": cfg.grad_accum,
        "seed": cfg.seed,
        "shuffle": cfg.shuffle,
        "lr": cfg.lr,
        "warmup_ratio": cfg.warmup_ratio,
        "schedule": cfg.schedule.to_string(),
        "max_grad_norm": cfg.max_grad_norm,
        "adamw": serde_json::to_value(cfg.adamw).unwrap_or(Value::Null),
        "objective": objective.describe(),
    });
    if let (Value::Object(own), Some(map)) = (model.settings(), settings.as_object_mut()) {
        map.extend(own);
    }
    settings
}

/// The data file a run trains on, its fingerprint, and whether a resumed run may go on
/// when it differs from the checkpoint's.
struct DataCheck<'a> {
    file: Option<&'a Path>,
    digest: Option<&'a str>,
    allow_change: bool,
}

impl DataCheck<'_> {
    /// Compares with the fingerprint in the `state` of checkpoint `dir` (checkpoints written
    /// before fingerprints were recorded have none and pass).
    fn against(&self, dir: &Path, state: &Value) -> Result<()> {
        let saved = state.get("data_digest").and_then(Value::as_str);
        let (Some(saved), Some(now), Some(file)) = (saved, self.digest, self.file) else {
            return Ok(());
        };
        if saved == now {
            return Ok(());
        }
        if self.allow_change {
            tracing::warn!(
                "trainer: --allow-data-change: {} changed since {} was written (fingerprint \
                 {saved} then, {now} now); going on with the new data",
                file.display(),
                dir.display()
            );
            return Ok(());
        }
        Err(Error::Resume(format!(
            "{} changed since {} was written (fingerprint {saved} then, {now} now): the run \
             would go on over other examples (and a precomputed DPO reference be computed \
             again); restore the file, or pass --allow-data-change to go on with the new data",
            file.display(),
            dir.display()
        )))
    }
}

/// Before anything is loaded: refuses `--resume` over a data file that is not the one the
/// newest checkpoint of `out` was written with, unless `allow_change`.
pub fn check_resume_data(out: &Path, data: &Path, allow_change: bool) -> Result<()> {
    let Some((_, dir)) = latest_checkpoint(out)? else {
        return Ok(());
    };
    let state = read_json(&dir.join(STATE_FILE))?;
    let digest = file_digest(data)?;
    DataCheck {
        file: Some(data),
        digest: Some(&digest),
        allow_change,
    }
    .against(&dir, &state)
}

/// Restores the newest checkpoint of `out` into `model` and `optimizer`; the step to start
/// from (0 when there is none).
fn resume_from(
    model: &mut impl Trainee,
    optimizer: &mut AdamW,
    out: &Path,
    settings: &Value,
    data: &DataCheck,
) -> Result<usize> {
    let Some((step, dir)) = latest_checkpoint(out)? else {
        tracing::info!(
            "trainer: --resume: no checkpoint in {}, starting from the beginning",
            out.display()
        );
        return Ok(0);
    };
    let state = read_json(&dir.join(STATE_FILE))?;
    let saved = state.get("settings").cloned().unwrap_or(Value::Null);
    if &saved != settings {
        return Err(Error::Resume(format!(
            "{} was written with other settings ({}); resume with the same ones",
            dir.display(),
            differences(&saved, settings)
        )));
    }
    data.against(&dir, &state)?;
    model.restore(&dir)?;
    optimizer.load(&dir.join(OPTIMIZER_FILE))?;
    tracing::info!("trainer: resuming from {} (step {step})", dir.display());
    Ok(step)
}

fn differences(saved: &Value, now: &Value) -> String {
    let (Some(a), Some(b)) = (saved.as_object(), now.as_object()) else {
        return "unreadable settings".into();
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            format!(
                "{k}: {} then, {} now",
                a.get(k).unwrap_or(&Value::Null),
                b.get(k).unwrap_or(&Value::Null)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Drops the lines of steps after `step` (written by a run that stopped before its next
/// checkpoint), through a temporary file.
fn keep_metrics_until(path: &Path, step: usize) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(Value::as_u64))
                .is_some_and(|s| s as usize <= step)
        })
        .collect();
    let mut body = kept.join("\n");
    if !body.is_empty() {
        body.push('\n');
    }
    replace_file(path, body.as_bytes())
}

fn non_finite(out: &Path, step: usize, what: &'static str, value: f64) -> Error {
    Error::NonFinite {
        step,
        what,
        value,
        last_checkpoint: latest_checkpoint(out).ok().flatten().map(|(_, p)| p),
    }
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

fn add_metrics(acc: &mut Vec<(String, f64)>, more: Vec<(String, f64)>) {
    for (k, v) in more {
        match acc.iter_mut().find(|(name, _)| *name == k) {
            Some((_, total)) => *total += v,
            None => acc.push((k, v)),
        }
    }
}

/// √(Σ g²) over every gradient, in f64.
fn global_norm(grads: &[Option<Tensor>]) -> Result<f64> {
    let mut sq = 0.0;
    for g in grads.iter().flatten() {
        sq += g
            .to_dtype(DType::F64)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f64>()?;
    }
    Ok(sq.sqrt())
}

fn progress_bar(enabled: bool, total: usize, start: usize) -> ProgressBar {
    if !enabled || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    if let Ok(style) = ProgressStyle::with_template(
        "{elapsed_precise} [{bar:40}] step {pos}/{len} {msg} (eta {eta})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_position(start as u64);
    bar
}
