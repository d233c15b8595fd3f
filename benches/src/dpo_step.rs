//! Seconds per optimizer step of `trainer dpo --kind vlm` on bench-small, with the
//! reference log-probs precomputed (the command's default): batch sizes 1 and 2, training
//! the decoder and projector (the default) and also the vision tower (`--train-vision`).
//!
//! The run is the command's, through the library it is made of: the same model loading,
//! data reader, precomputed reference, DPO objective and train loop (`train_loop::train`,
//! which also clips, steps AdamW, rebuilds the model and writes metrics.jsonl). The
//! objective is wrapped so that the loop's calls to it are timed: the loop prepares each
//! step's batch first, so the time between two `prepare` calls is one whole optimizer step.
//! The first steps are warm-up and not counted.
//!
//! Data: synthetic pairs, each a 224x224 PNG (drawn here) with a question and two answers.
//!
//! With `--torch PYTHON`, the same steps run in PyTorch eager + transformers in the same
//! sitting (benches/reference/dpo_step_torch.py, on the same checkpoint and pairs), and the
//! ratios are printed.
//!
//! `cargo run --release -p unireward-benches --bin bench-dpo-step -- --steps 5 [--torch python3]`

// Tensors of a few MB are allocated and freed per op; glibc's malloc returns them to the
// system each time, and faulting the pages back in cost a fifth of a CPU forward.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bench_model;

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Parser;
use image::{Rgb, RgbImage};
use serde_json::{json, Value};
use unireward_models::family::JudgeMedia;
use unireward_trainer::checkpoint_keys::TrainParts;
use unireward_trainer::data::dpo::DpoData;
use unireward_trainer::data::Preparer;
use unireward_trainer::lora::LoraConfig;
use unireward_trainer::loss::dpo::{DpoLossKind, DpoParams};
use unireward_trainer::objectives::dpo::compute_reference;
use unireward_trainer::objectives::{DpoObjective, Reference};
use unireward_trainer::optim::AdamWParams;
use unireward_trainer::schedule::ScheduleKind;
use unireward_trainer::train_loop::{train, Forward, LoopConfig, Objective, Prepared};
use unireward_trainer::varmap_model::VarMapModel;

#[derive(Parser)]
struct Args {
    /// Timed optimizer steps per configuration.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Pairs in the synthetic data file.
    #[arg(long, default_value_t = 8)]
    pairs: usize,
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2])]
    batch_sizes: Vec<usize>,
    /// Also time the step in PyTorch eager + transformers with this python (torch,
    /// transformers; peft for the LoRA row).
    #[arg(long)]
    torch: Option<std::path::PathBuf>,
    /// Rank of the LoRA row (adapters on the decoder's attention, alpha = 2 x rank).
    #[arg(long, default_value_t = 16)]
    lora_rank: usize,
}

/// Times the train loop's calls to the objective it wraps.
struct Timed<O> {
    inner: O,
    step_starts: RefCell<Vec<Instant>>,
    prepare_s: RefCell<Vec<f64>>,
    forward_s: RefCell<Vec<f64>>,
}

impl<O: Objective> Objective for Timed<O> {
    type Batch = O::Batch;
    type Model = O::Model;

    fn num_examples(&self) -> usize {
        self.inner.num_examples()
    }

    fn prepare(
        &self,
        indices: &[usize],
        position: usize,
    ) -> unireward_trainer::Result<Prepared<O::Batch>> {
        let t = Instant::now();
        self.step_starts.borrow_mut().push(t);
        let out = self.inner.prepare(indices, position);
        self.prepare_s.borrow_mut().push(t.elapsed().as_secs_f64());
        out
    }

    fn forward(&self, model: &O::Model, batch: &O::Batch) -> unireward_trainer::Result<Forward> {
        let t = Instant::now();
        let out = self.inner.forward(model, batch);
        self.forward_s.borrow_mut().push(t.elapsed().as_secs_f64());
        out
    }

    fn describe(&self) -> Value {
        self.inner.describe()
    }
}

/// A picture with some structure for the vision tower: colour ramps and a disc whose
/// place and colour depend on `seed`.
fn draw_image(seed: u32) -> RgbImage {
    let (cx, cy) = (60 + (seed * 37) % 100, 60 + (seed * 53) % 100);
    RgbImage::from_fn(224, 224, |x, y| {
        let (dx, dy) = (x as i64 - cx as i64, y as i64 - cy as i64);
        if dx * dx + dy * dy < 40 * 40 {
            Rgb([200, (seed * 40 % 256) as u8, 40])
        } else {
            Rgb([x as u8, y as u8, ((x + y + seed * 29) % 256) as u8])
        }
    })
}

/// `n` pairs in the UnifiedReward DPO format, each with its own image.
fn write_pairs(dir: &Path, n: usize) -> Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("pairs.jsonl");
    let mut file = std::fs::File::create(&path)?;
    for i in 0..n {
        let name = format!("image_{i}.png");
        draw_image(i as u32).save(dir.join(&name))?;
        let line = json!({
            "id": format!("pair-{i}"),
            "image": name,
            "prompt": "<image>\nDoes the picture match the caption \"a red disc on a colour \
                       gradient\"? Answer with a short judgement and a score.",
            "chosen": format!("Yes. The red disc sits on a smooth gradient, as the caption \
                               says. Score: {}.", 8 + i % 2),
            "rejected": "No, there is no disc in this picture. Score: 2.",
        });
        writeln!(file, "{line}")?;
    }
    Ok(path)
}

struct Measured {
    label: String,
    batch_size: usize,
    trained_params: usize,
    reference_s: f64,
    step_s: Vec<f64>,
    prepare_s: f64,
    forward_s: f64,
}

/// One row of the table: what is trained and how.
struct Setup {
    label: String,
    parts: TrainParts,
    lora_rank: Option<usize>,
    grad_checkpointing: bool,
    batch_sizes: Vec<usize>,
    /// The matching reference run's flags for dpo_step_torch.py, if it has one.
    torch_flags: Option<Vec<String>>,
}

fn run_config(
    args: &Args,
    model_dir: &Path,
    data: &Path,
    out: &Path,
    batch_size: usize,
    setup: &Setup,
) -> Result<Measured> {
    let mut model = VarMapModel::load(model_dir, DType::F32, &Device::Cpu, setup.parts)?;
    // The reference is the model as loaded (adapters start as a no-op).
    let root = data.parent().unwrap_or(Path::new(".")).to_path_buf();
    let preparer = Preparer::new(model_dir, model.config()?, root, 8, None)?;
    let pairs = DpoData::read(data, preparer)?;
    let t = Instant::now();
    let reference = compute_reference(model.model(), &pairs, batch_size, false)?;
    let reference_s = t.elapsed().as_secs_f64();
    if let Some(rank) = setup.lora_rank {
        model.add_lora(
            &LoraConfig::new(rank, Some(2.0 * rank as f64), 0.0, Vec::new()),
            42,
        )?;
    }
    model.set_grad_checkpointing(setup.grad_checkpointing)?;
    let trained_params = model
        .trained_vars()?
        .iter()
        .map(|(_, v)| v.as_tensor().elem_count())
        .sum();
    let objective = Timed {
        inner: DpoObjective {
            data: pairs,
            params: DpoParams {
                beta: 0.1,
                loss: DpoLossKind::Sigmoid,
                label_smoothing: 0.0,
            },
            sft_weight: 0.0,
            reference: Reference::Precomputed(reference),
        },
        step_starts: RefCell::new(Vec::new()),
        prepare_s: RefCell::new(Vec::new()),
        forward_s: RefCell::new(Vec::new()),
    };
    // One step more than timed: a step ends where the next one's prepare begins.
    let total = args.warmup + args.steps + 1;
    let cfg = LoopConfig {
        out: out.to_path_buf(),
        source_dir: model_dir.to_path_buf(),
        max_steps: Some(total),
        epochs: 1.0,
        batch_size,
        grad_accum: 1,
        seed: 42,
        shuffle: true,
        lr: 5e-7,
        warmup_ratio: 0.3,
        schedule: ScheduleKind::Cosine,
        save_every: None,
        keep_checkpoints: 2,
        resume: false,
        allow_data_change: false,
        stop_after: None,
        max_grad_norm: Some(1.0),
        adamw: AdamWParams::default(),
        eval_every: None,
        progress: false,
    };
    train(&mut model, &objective, &cfg)?;
    let starts = objective.step_starts.into_inner();
    let timed = args.warmup..args.warmup + args.steps;
    let step_s = timed
        .clone()
        .map(|s| (starts[s + 1] - starts[s]).as_secs_f64())
        .collect();
    let mean = |v: Vec<f64>| v[timed.clone()].iter().sum::<f64>() / args.steps as f64;
    Ok(Measured {
        label: setup.label.clone(),
        batch_size,
        trained_params,
        reference_s,
        step_s,
        prepare_s: mean(objective.prepare_s.into_inner()),
        forward_s: mean(objective.forward_s.into_inner()),
    })
}

fn main() -> Result<()> {
    // The trainer binary's allocator setting, so that the step timed is the step it runs.
    unireward_models::allocator::retain_freed_memory();
    let args = Args::parse();
    anyhow::ensure!(args.steps > 0, "--steps must be at least 1");
    let dir = std::env::temp_dir().join(format!("unireward-bench-dpo-{}", std::process::id()));
    let model_dir = dir.join("model");
    bench_model::write_bench_small(&model_dir)?;
    let data = write_pairs(&dir.join("data"), args.pairs)?;

    // The sequences a step scores, as the trainer tokenizes them.
    {
        let model = VarMapModel::load(&model_dir, DType::F32, &Device::Cpu, TrainParts::all())?;
        let root = dir.join("data");
        let pairs = DpoData::read(
            &data,
            Preparer::new(&model_dir, model.config()?, root, 8, None)?,
        )?;
        let ex = pairs.prepare(0)?;
        println!(
            "bench-small DPO, {} pairs, one 224x224 PNG each: chosen {} tokens ({} scored), \
             rejected {} tokens ({} scored); f32 on {} CPUs",
            pairs.len(),
            ex.chosen.len(),
            ex.chosen.num_targets(),
            ex.rejected.len(),
            ex.rejected.num_targets(),
            std::thread::available_parallelism().map_or(0, |n| n.get()),
        );
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load average at start: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "{:<26} {:>5} {:>12} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "trained", "batch", "params", "ref s", "step s", "min s", "max s", "prep s", "fwd s"
    );
    let dec_proj = TrainParts {
        vision: false,
        projector: true,
        decoder: true,
    };
    let setups = [
        Setup {
            label: "decoder+projector".into(),
            parts: dec_proj,
            lora_rank: None,
            grad_checkpointing: false,
            batch_sizes: args.batch_sizes.clone(),
            torch_flags: Some(Vec::new()),
        },
        Setup {
            label: "decoder+projector ckpt".into(),
            parts: dec_proj,
            lora_rank: None,
            grad_checkpointing: true,
            batch_sizes: vec![1],
            torch_flags: Some(vec!["--grad-checkpointing".into()]),
        },
        Setup {
            label: format!("lora r{} (decoder attn)", args.lora_rank),
            parts: dec_proj,
            lora_rank: Some(args.lora_rank),
            grad_checkpointing: false,
            batch_sizes: vec![1],
            torch_flags: Some(vec!["--lora-rank".into(), args.lora_rank.to_string()]),
        },
        Setup {
            label: "decoder+projector+vision".into(),
            parts: TrainParts::all(),
            lora_rank: None,
            grad_checkpointing: false,
            batch_sizes: args.batch_sizes.clone(),
            torch_flags: None,
        },
    ];
    if args.torch.is_some() {
        write_torch_pairs(&dir, &model_dir, &data)?;
    }
    let mut run = 0;
    let mut ratios = Vec::new();
    for setup in &setups {
        for &batch_size in &setup.batch_sizes {
            run += 1;
            let out = dir.join(format!("run-{run}"));
            let m = run_config(&args, &model_dir, &data, &out, batch_size, setup)?;
            let mean = m.step_s.iter().sum::<f64>() / m.step_s.len() as f64;
            let min = m.step_s.iter().copied().fold(f64::INFINITY, f64::min);
            let max = m.step_s.iter().copied().fold(0.0, f64::max);
            println!(
                "{:<26} {:>5} {:>12} {:>8.2} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                m.label,
                m.batch_size,
                m.trained_params,
                m.reference_s,
                mean,
                min,
                max,
                m.prepare_s,
                m.forward_s
            );
            std::fs::remove_dir_all(&out)?;
            if let (Some(python), Some(flags), 1) = (&args.torch, &setup.torch_flags, batch_size) {
                match time_torch(python, &dir, &args, flags) {
                    Ok(torch) => ratios.push((setup.label.clone(), mean, torch)),
                    Err(e) => println!("{:<26} skipped: {e:#}", "torch"),
                }
            }
        }
    }
    println!(
        "step s: mean seconds per optimizer step over {} steps after {} warm-up; prep s and \
         fwd s: the step's data preparation and forward pass (the rest is backward, clipping, \
         AdamW and the metrics line); ref s: precomputing the reference log-probs of all \
         pairs",
        args.steps, args.warmup
    );
    for (label, ours, torch) in ratios {
        println!(
            "{label}, batch 1: {ours:.3} s/step, PyTorch {torch:.3} s/step: {:.2}x PyTorch's time",
            ours / torch
        );
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// Every pair's sequences, scored-token flags, tiles and image size, for
/// benches/reference/dpo_step_torch.py: the inputs the trainer's step gets.
fn write_torch_pairs(dir: &Path, model_dir: &Path, data: &Path) -> Result<()> {
    let model = VarMapModel::load(model_dir, DType::F32, &Device::Cpu, TrainParts::all())?;
    let root = data.parent().unwrap_or(Path::new(".")).to_path_buf();
    let pairs = DpoData::read(
        data,
        Preparer::new(model_dir, model.config()?, root, 8, None)?,
    )?;
    let dev = Device::Cpu;
    let mut tensors = HashMap::new();
    tensors.insert("pairs".to_string(), Tensor::new(pairs.len() as i64, &dev)?);
    for i in 0..pairs.len() {
        let ex = pairs.prepare(i)?;
        let JudgeMedia::Llava(media) = &ex.media else {
            bail!("the bench model is LLaVA-OneVision");
        };
        let image = media
            .images
            .first()
            .context("a bench pair without its image")?;
        for (name, seq) in [("chosen", &ex.chosen), ("rejected", &ex.rejected)] {
            let ids: Vec<i64> = seq.tokens.ids.iter().map(|&t| i64::from(t)).collect();
            let targets: Vec<u8> = seq.targets.iter().map(|&t| u8::from(t)).collect();
            tensors.insert(
                format!("{i}.{name}_ids"),
                Tensor::new(ids.as_slice(), &dev)?,
            );
            tensors.insert(
                format!("{i}.{name}_targets"),
                Tensor::new(targets.as_slice(), &dev)?,
            );
        }
        tensors.insert(format!("{i}.pixel_values"), image.pixel_values.clone());
        let (h, w) = image.original_size;
        tensors.insert(
            format!("{i}.image_size"),
            Tensor::new(&[i64::from(h), i64::from(w)], &dev)?,
        );
    }
    candle_core::safetensors::save(&tensors, dir.join("torch_pairs.safetensors"))?;
    Ok(())
}

/// Runs benches/reference/dpo_step_torch.py with `flags`; its mean seconds per step.
fn time_torch(python: &Path, dir: &Path, args: &Args, flags: &[String]) -> Result<f64> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("reference/dpo_step_torch.py");
    let out = Command::new(python)
        .arg(&script)
        .arg("--dir")
        .arg(dir)
        .args(["--steps", &args.steps.to_string()])
        .args(["--warmup", &args.warmup.to_string()])
        .args(flags)
        .output()
        .with_context(|| format!("running {} {}", python.display(), script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().last().unwrap_or_default();
        bail!("{} failed: {last}", script.display());
    }
    print!("{stdout}");
    // The mean is the 5th column, after the label's words, batch and parameter count.
    stdout
        .split_whitespace()
        .filter_map(|w| w.parse::<f64>().ok())
        .nth(2)
        .with_context(|| format!("no mean in {stdout:?}"))
}
