//! GPU timings of a LLaVA-OneVision-0.5B-shaped reward model (SigLIP so400m + Qwen2-0.5B,
//! random weights, bf16) on CUDA, and PyTorch eager + transformers on the same GPU, same
//! checkpoint and same inputs, in the same run:
//! - forward: one 384x384 image (2 tiles of 729 patches) plus 1,000 text tokens, log-probs of
//!   the last 10 positions (what a judge reads), as bench-forward does on the CPU;
//! - DPO step: `trainer dpo --device cuda --dtype bf16` (decoder and projector trained, the
//!   reference precomputed) on pairs of that image, a ~1,000-token prompt and two answers;
//!   seconds per optimizer step from two runs that differ only in their step count (so loading
//!   and the reference pass cancel). PyTorch runs the same step on the same token ids, pixel
//!   values and scored positions (written here from the trainer's own data preparation):
//!   policy log-probs of chosen and rejected, sigmoid DPO loss, backward, AdamW.
//!
//! `bench-gpu [--torch python3] [--trainer target/release/trainer]` (feature `cuda`).

mod bench_model;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Parser;
use image::{Rgb, RgbImage};
use serde_json::json;
use unireward_engine::backend::{Backend, CandleBackend, Decoder};
use unireward_models::device::parse_device;
use unireward_models::tokenize::{MediaKind, MediaSpan, Tokenized};
use unireward_models::MediaFeatures;
use unireward_trainer::data::dpo::DpoData;
use unireward_trainer::data::Preparer;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Timed forwards.
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// Untimed forwards (and DPO steps) first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed DPO steps.
    #[arg(long, default_value_t = 4)]
    steps: usize,
    /// The trainer binary (default: `trainer` next to this one).
    #[arg(long)]
    trainer: Option<PathBuf>,
    /// Also time PyTorch eager with this Python (torch with CUDA, transformers).
    #[arg(long)]
    torch: Option<PathBuf>,
    /// Keep the checkpoint and inputs here.
    #[arg(long)]
    keep: Option<PathBuf>,
}

const IMAGE: (u32, u32) = (384, 384);
const TILES: usize = 2;
const TEXT_TOKENS: u32 = 1000;
const IMAGE_AT: usize = 20;
/// The bench models' `image_token_index`.
const IMAGE_TOKEN: u32 = 574;

fn prompt_ids(n_img: usize) -> Vec<u32> {
    let mut ids: Vec<u32> = (0..TEXT_TOKENS).map(|i| 100 + i % 400).collect();
    ids.splice(IMAGE_AT..IMAGE_AT, std::iter::repeat_n(IMAGE_TOKEN, n_img));
    ids
}

/// The image packed into its tokens (what the prompt's image span holds).
fn packed_image(backend: &dyn Backend, tiles: &Tensor) -> Result<Tensor> {
    let feats = backend.encode_tiles(tiles)?;
    Ok(unireward_models::pack::pack_image(
        &feats,
        IMAGE,
        backend.image_newline(),
        &backend.config().anyres,
    )?)
}

/// One judged forward; its checksum (which also waits for the GPU to finish).
fn forward(backend: &dyn Backend, tiles: &Tensor) -> Result<f32> {
    let packed = packed_image(backend, tiles)?;
    let n_img = packed.dim(0)?;
    let tokens = Tokenized {
        spans: vec![MediaSpan {
            kind: MediaKind::Image,
            index: 0,
            start: IMAGE_AT,
            len: n_img,
        }],
        ids: prompt_ids(n_img),
    };
    let media = MediaFeatures {
        images: vec![packed],
        videos: vec![],
        ..Default::default()
    };
    let embeds =
        unireward_models::pack::merge_media(&backend.embed_tokens(&tokens.ids)?, &tokens, &media)?;
    let t = embeds.dim(0)?;
    let rows = backend.log_probs_at(&[embeds], &[(t - 10..t).collect()])?;
    Ok(rows[0]
        .to_dtype(DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()?)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time_forward(args: &Args, backend: &dyn Backend, tiles: &Tensor) -> Result<(f64, f32)> {
    for _ in 0..args.warmup {
        forward(backend, tiles)?;
    }
    let mut times = Vec::with_capacity(args.iters);
    let mut value = 0.0;
    for _ in 0..args.iters {
        let t0 = Instant::now();
        value = forward(backend, tiles)?;
        times.push(t0.elapsed().as_secs_f64());
    }
    Ok((median(times), value))
}

/// A 384x384 picture with some structure for the vision tower.
fn draw_image() -> RgbImage {
    RgbImage::from_fn(IMAGE.1, IMAGE.0, |x, y| {
        let (dx, dy) = (x as i64 - 150, y as i64 - 200);
        if dx * dx + dy * dy < 60 * 60 {
            Rgb([200, 40, 40])
        } else {
            Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
        }
    })
}

/// `n` identical pairs: the image, a long question (the golden tokenizer spends about a token
/// per character, so ~1,000 characters), two answers.
fn write_pairs(dir: &Path, n: usize) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    draw_image().save(dir.join("image.png"))?;
    let sentence = "Does the picture match the caption? ";
    let question: String = sentence.repeat(1000 / sentence.len());
    let path = dir.join("pairs.jsonl");
    let mut file = std::fs::File::create(&path)?;
    for i in 0..n {
        let line = json!({
            "id": format!("pair-{i}"),
            "image": "image.png",
            "prompt": format!("<image>\n{question}"),
            "chosen": "Yes. A red disc on a colour gradient, as the caption says. Score: 8.",
            "rejected": "No, there is no disc in this picture. Score: 2.",
        });
        writeln!(file, "{line}")?;
    }
    Ok(path)
}

/// Wall seconds of `trainer dpo` for `steps` optimizer steps.
fn run_trainer(args: &Args, model: &Path, data: &Path, out: &Path, steps: usize) -> Result<f64> {
    let trainer = match &args.trainer {
        Some(t) => t.clone(),
        None => std::env::current_exe()?.with_file_name("trainer"),
    };
    let t0 = Instant::now();
    let res = Command::new(&trainer)
        .args([
            "dpo",
            "--kind",
            "vlm",
            "--ref",
            "precompute",
            "--no-progress",
        ])
        .args([
            "--device",
            &args.device,
            "--dtype",
            "bf16",
            "--batch-size",
            "1",
        ])
        .args([
            "--lr",
            "5e-7",
            "--schedule",
            "constant",
            "--warmup-ratio",
            "0",
        ])
        .arg("--model")
        .arg(model)
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(["--max-steps", &steps.to_string()])
        .output()
        .with_context(|| format!("running {}", trainer.display()))?;
    if !res.status.success() {
        bail!(
            "{} dpo failed: {}",
            trainer.display(),
            String::from_utf8_lossy(&res.stderr)
        );
    }
    Ok(t0.elapsed().as_secs_f64())
}

/// Writes what the PyTorch reference needs: the forward's tiles and ids, and the DPO pair as
/// the trainer prepares it (token ids, scored positions, pixel values, image size).
fn write_torch_inputs(
    path: &Path,
    backend: &dyn Backend,
    tiles: &Tensor,
    model_dir: &Path,
    data: &Path,
) -> Result<(usize, usize)> {
    let n_img = packed_image(backend, tiles)?.dim(0)?;
    let cpu = Device::Cpu;
    let ids = |v: &[u32]| -> Result<Tensor> {
        let v: Vec<i64> = v.iter().map(|&i| i64::from(i)).collect();
        Ok(Tensor::new(v.as_slice(), &cpu)?)
    };
    let mask = |v: &[bool]| -> Result<Tensor> {
        let v: Vec<u8> = v.iter().map(|&b| u8::from(b)).collect();
        Ok(Tensor::new(v.as_slice(), &cpu)?)
    };
    let root = data.parent().unwrap_or(Path::new(".")).to_path_buf();
    let preparer = Preparer::new(model_dir, backend.config(), root, 8, None)?;
    let pairs = DpoData::read(data, preparer)?;
    let ex = pairs.prepare(0)?;
    let image = ex
        .media
        .images
        .first()
        .context("the DPO pair has no image")?;
    let (h, w) = image.original_size;
    let tensors = HashMap::from([
        (
            "pixel_values".to_string(),
            tiles.to_device(&cpu)?.to_dtype(DType::F32)?,
        ),
        ("input_ids".to_string(), ids(&prompt_ids(n_img))?),
        (
            "image_size".to_string(),
            Tensor::new(&[IMAGE.0 as i64, IMAGE.1 as i64], &cpu)?,
        ),
        (
            "dpo.pixel_values".to_string(),
            image.pixel_values.to_dtype(DType::F32)?,
        ),
        (
            "dpo.image_size".to_string(),
            Tensor::new(&[h as i64, w as i64], &cpu)?,
        ),
        ("dpo.chosen_ids".to_string(), ids(&ex.chosen.tokens.ids)?),
        ("dpo.chosen_targets".to_string(), mask(&ex.chosen.targets)?),
        (
            "dpo.rejected_ids".to_string(),
            ids(&ex.rejected.tokens.ids)?,
        ),
        (
            "dpo.rejected_targets".to_string(),
            mask(&ex.rejected.targets)?,
        ),
    ]);
    candle_core::safetensors::save(&tensors, path)?;
    Ok((ex.chosen.tokens.ids.len(), ex.rejected.tokens.ids.len()))
}

/// Runs benches/reference/gpu_torch.py; its (forward, DPO step) medians in seconds.
fn time_torch(python: &Path, dir: &Path, args: &Args) -> Result<(f64, f64)> {
    let script = bench_model::repo_dir().join("benches/reference/gpu_torch.py");
    let out = Command::new(python)
        .arg(&script)
        .arg("--dir")
        .arg(dir)
        .args(["--iters", &args.iters.to_string()])
        .args(["--warmup", &args.warmup.to_string()])
        .args(["--steps", &args.steps.to_string()])
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
    let value = |key: &str| -> Result<f64> {
        stdout
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().skip_while(|w| *w != "median").nth(1))
            .and_then(|m| m.parse().ok())
            .with_context(|| format!("no `{key} ... median` in {stdout:?}"))
    };
    Ok((value("torch forward")?, value("torch dpo step")?))
}

fn main() -> Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.iters > 0 && args.steps > 0,
        "--iters and --steps must be >= 1"
    );
    let dev = parse_device(&args.device)?;
    let dir = args.keep.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("unireward-bench-gpu-{}", std::process::id()))
    });
    let model_dir = dir.join("model");
    let t0 = Instant::now();
    bench_model::write_model(
        &model_dir,
        &bench_model::OV_0_5B,
        DType::BF16,
        &bench_model::golden_model_dir()?,
    )?;
    println!(
        "ov-0.5b-shaped checkpoint (bf16, random) written in {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    let backend = CandleBackend::load(&model_dir, DType::BF16, &dev)?;
    let tiles = Tensor::randn(
        0f32,
        1.0,
        (TILES, 3, IMAGE.0 as usize, IMAGE.1 as usize),
        &dev,
    )?
    .to_dtype(DType::BF16)?;
    let n_img = packed_image(&backend, &tiles)?.dim(0)?;
    let (t_fwd, checksum) = time_forward(&args, &backend, &tiles)?;
    println!(
        "bench-gpu forward candle bf16 {}: median {t_fwd:.4} s over {} runs ({n_img} image + \
         {TEXT_TOKENS} text tokens; checksum {checksum:.3})",
        args.device, args.iters
    );

    let data = write_pairs(&dir.join("data"), args.warmup + args.steps + 2)?;
    let short = run_trainer(
        &args,
        &model_dir,
        &data,
        &dir.join("run-a"),
        args.warmup + 1,
    )?;
    let long = run_trainer(
        &args,
        &model_dir,
        &data,
        &dir.join("run-b"),
        args.warmup + 1 + args.steps,
    )?;
    let t_step = (long - short) / args.steps as f64;
    println!(
        "bench-gpu dpo step candle bf16 {}: mean {t_step:.4} s over {} steps (runs of {short:.1} \
         s and {long:.1} s)",
        args.device, args.steps
    );

    if let Some(python) = &args.torch {
        let (chosen, rejected) = write_torch_inputs(
            &dir.join("inputs.safetensors"),
            &backend,
            &tiles,
            &model_dir,
            &data,
        )?;
        println!("dpo pair: chosen {chosen} tokens, rejected {rejected} tokens");
        drop(backend);
        let (torch_fwd, torch_step) = time_torch(python, &dir, &args)?;
        println!(
            "bench-gpu candle/torch time: forward {:.2}x, dpo step {:.2}x (target <= 1.00x)",
            t_fwd / torch_fwd,
            t_step / torch_step
        );
    }
    if args.keep.is_none() {
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}
