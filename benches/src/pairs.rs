//! `engine pairs` throughput on bench-small: prompts with 10 image-generation candidates
//! (224x224 PNGs), fast judging end to end through the library's pairs job, the share of
//! time spent preprocessing, and generate mode's cost with 100 new tokens per judgement.
//!
//! `cargo run --release -p unireward-benches --bin bench-pairs -- --prompts 4`
//!
//! `--backend ort` exports bench-small first (fp32, not timed) and runs the export in ONNX
//! Runtime on the CPU; `--recompute` then scores and decodes through `Recomputing`, which
//! reruns the whole prompt per continuation and per token (what a format-1 export without a
//! KV cache does).

// Tensors of a few MB are allocated and freed per op; glibc's malloc returns them to the
// system each time, and faulting the pages back in cost a fifth of a CPU forward.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bench_model;

use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use clap::{Parser, ValueEnum};
use image::{Rgb, RgbImage};
use serde_json::json;
use unireward_engine::backend::{
    Backend, CandleBackend, Decoder, DecoderCache, Decoding, Limits, OrtBackend, Recomputing, Rows,
    SessionConfig,
};
use unireward_engine::encode_media::encode_media;
use unireward_engine::judge::{Judge, JudgeMode, PromptStyle};
use unireward_engine::pairs::job::{Grouping, PairsJob, PairsMedia, DEFAULT_TOKEN_BUDGET};
use unireward_engine::pairs::{PairOptions, Recipe};
use unireward_export::{export_onnx, ExportOptions};
use unireward_models::config::{LlavaConfig, TextConfig};
use unireward_models::judge::{Media, Mode, Task};
use unireward_models::preprocess::{MediaLoader, MediaRequest};
use unireward_models::tokenize::PromptTokenizer;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 4)]
    prompts: usize,
    /// Tokens decoded per judgement in the generate-mode estimate.
    #[arg(long, default_value_t = 100)]
    new_tokens: usize,
    #[arg(long, value_enum, default_value_t = BackendKind::Candle)]
    backend: BackendKind,
    /// With `--backend ort`: recompute the prompt per continuation and per generated token
    /// instead of using the decoder's KV cache.
    #[arg(long)]
    recompute: bool,
    /// Padded tokens per batched prompt pass.
    #[arg(long, default_value_t = DEFAULT_TOKEN_BUDGET)]
    token_budget: usize,
    /// Each judgement its own prompt pass, one prompt at a time (as before issue 14).
    #[arg(long)]
    one_by_one: bool,
}

/// Where the time of the judged run goes: the backend's calls, timed, and the rows its
/// decoder calls ran (padding included), which do not vary with the machine's load.
#[derive(Default)]
struct Profile {
    decoded_rows: usize,
    prompt_passes: (usize, f64),
    continuation_passes: (usize, f64),
    other_decodes: (usize, f64),
    vision: (usize, f64),
    embed: (usize, f64),
}

struct Profiled<'a> {
    inner: &'a dyn Backend,
    profile: Mutex<Profile>,
}

impl Profiled<'_> {
    fn add(&self, which: impl FnOnce(&mut Profile) -> &mut (usize, f64), t0: Instant) {
        let dt = t0.elapsed().as_secs_f64();
        if let Ok(mut p) = self.profile.lock() {
            let slot = which(&mut p);
            slot.0 += 1;
            slot.1 += dt;
        }
    }
}

impl Decoder for Profiled<'_> {
    fn name(&self) -> String {
        self.inner.name()
    }

    fn text_config(&self) -> &TextConfig {
        self.inner.text_config()
    }
    fn embed_tokens(&self, ids: &[u32]) -> unireward_engine::error::Result<Tensor> {
        let t0 = Instant::now();
        let out = self.inner.embed_tokens(ids);
        self.add(|p| &mut p.embed, t0);
        out
    }
    fn limits(&self) -> Limits {
        self.inner.limits()
    }
    fn new_cache(&self) -> unireward_engine::error::Result<Box<dyn DecoderCache>> {
        self.inner.new_cache()
    }
    fn decode(
        &self,
        seqs: &[Tensor],
        rows: Rows<'_>,
        cache: Option<&mut dyn DecoderCache>,
    ) -> unireward_engine::error::Result<Vec<Tensor>> {
        let kind = match (&rows, cache.as_ref().map(|c| c.is_empty())) {
            (Rows::At(_), Some(true)) => 0,
            (Rows::All, Some(false)) => 1,
            _ => 2,
        };
        let longest = seqs
            .iter()
            .map(|s| s.dim(0).unwrap_or(0))
            .max()
            .unwrap_or(0);
        if let Ok(mut p) = self.profile.lock() {
            p.decoded_rows += seqs.len() * longest;
        }
        let t0 = Instant::now();
        let out = self.inner.decode(seqs, rows, cache);
        self.add(
            |p| match kind {
                0 => &mut p.prompt_passes,
                1 => &mut p.continuation_passes,
                _ => &mut p.other_decodes,
            },
            t0,
        );
        out
    }
}

impl Backend for Profiled<'_> {
    fn config(&self) -> &LlavaConfig {
        self.inner.config()
    }

    fn image_newline(&self) -> &Tensor {
        self.inner.image_newline()
    }

    fn encode_tiles(&self, tiles: &Tensor) -> unireward_engine::error::Result<Tensor> {
        let t0 = Instant::now();
        let out = self.inner.encode_tiles(tiles);
        self.add(|p| &mut p.vision, t0);
        out
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendKind {
    Candle,
    Ort,
}

/// A 224x224 candidate: a background and a filled disc whose place and colour vary.
fn draw(path: &Path, k: usize) -> Result<()> {
    let mut img = RgbImage::from_pixel(224, 224, Rgb([20 + (k * 23 % 200) as u8, 40, 90]));
    let (cx, cy, r) = (40 + (k * 37) % 140, 50 + (k * 53) % 120, 20 + (k * 7) % 40);
    for y in 0..224 {
        for x in 0..224 {
            let (dx, dy) = (x as i64 - cx as i64, y as i64 - cy as i64);
            if dx * dx + dy * dy <= (r * r) as i64 {
                img.put_pixel(x, y, Rgb([200, (k * 41 % 255) as u8, 30]));
            }
        }
    }
    img.save(path)?;
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("unireward-bench-pairs-{}", std::process::id()));
    let model_dir = dir.join("model");
    bench_model::write_bench_small(&model_dir)?;
    let mut lines = Vec::new();
    for p in 0..args.prompts {
        let cands: Vec<String> = (0..10)
            .map(|c| {
                let path = dir.join(format!("p{p}_c{c}.png"));
                draw(&path, p * 10 + c)?;
                Ok(path.to_string_lossy().into_owned())
            })
            .collect::<Result<_>>()?;
        lines.push(json!({"id": p, "task": "image_generation", "prompt": format!("a red disc, number {p}"), "candidates": cands}).to_string());
    }
    let input = dir.join("candidates.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n")?;

    let (candle, ort, recomputing);
    let backend: &dyn Backend = match args.backend {
        BackendKind::Candle => {
            candle = CandleBackend::load(&model_dir, DType::F32, &Device::Cpu)?;
            &candle
        }
        BackendKind::Ort => {
            let onnx_dir = dir.join("onnx");
            export_onnx(&model_dir, &onnx_dir, &ExportOptions::default())?;
            ort = OrtBackend::open(&onnx_dir, &SessionConfig::default())?;
            if args.recompute {
                recomputing = Recomputing(&ort);
                &recomputing
            } else {
                &ort
            }
        }
    };
    let profiled = Profiled {
        inner: backend,
        profile: Mutex::new(Profile::default()),
    };
    let backend: &dyn Backend = &profiled;
    let tokenizer = PromptTokenizer::load(&model_dir, backend.config())?;
    let loader = MediaLoader::from_model_dir(&model_dir, backend.config(), 8)?;
    let judge = Judge::new(
        backend,
        &tokenizer,
        PromptStyle::default(),
        JudgeMode::Fast,
        100,
    )?;

    // Preprocessing alone: decode + resize + tile the 10 candidates of each prompt.
    let t0 = Instant::now();
    let mut prepared = Vec::new();
    for p in 0..args.prompts {
        let req = MediaRequest {
            images: (0..10)
                .map(|c| dir.join(format!("p{p}_c{c}.png")))
                .collect(),
            videos: vec![],
        };
        prepared.push(loader.load(&req, &dir)?);
    }
    let t_pre = t0.elapsed().as_secs_f64() / args.prompts as f64;
    // Vision encoding of the 10 candidates (once per prompt, reused by every judgement).
    let t0 = Instant::now();
    let feats = encode_media(backend, &prepared[0])?;
    let t_vision = t0.elapsed().as_secs_f64();

    // Fast judging end to end, as `engine pairs` runs it.
    let job = PairsJob {
        judge: &judge,
        media: PairsMedia::Llava(&loader),
        // The inference scripts' prompts at the bench images' own size, as every figure in
        // RESULTS.md was measured (the sift recipe's 512 px resize would multiply the tiles).
        options: PairOptions {
            recipe: Recipe::Inference,
            ..PairOptions::default()
        },
    };
    let out = dir.join("pairs.jsonl");
    let grouping = if args.one_by_one {
        Grouping::OneByOne
    } else {
        Grouping::Batched {
            token_budget: args.token_budget,
        }
    };
    if let Ok(mut p) = profiled.profile.lock() {
        *p = Profile::default();
    }
    let t0 = Instant::now();
    let summary = job.run_grouped(&input, &out, false, grouping)?;
    let t_fast = t0.elapsed().as_secs_f64() / args.prompts as f64;
    let fast_profile = std::mem::take(
        &mut *profiled
            .profile
            .lock()
            .map_err(|_| anyhow::anyhow!("profile lock poisoned"))?,
    );

    // Generate mode: each prompt judges 5 pairs and scores up to 10 candidates, each a
    // prefill plus `new_tokens` greedy steps; measured on one pair and one point prompt.
    let gen = |mode: Mode, n: usize| -> Result<f64> {
        let text = judge.prompt_text(
            Task::ImageGeneration,
            mode,
            "a red disc",
            &[],
            Media::Images(n),
        )?;
        let media = unireward_models::MediaFeatures {
            images: feats.images[..n].to_vec(),
            videos: vec![],
            ..Default::default()
        };
        let lens: Vec<usize> = media
            .images
            .iter()
            .map(|t| t.dim(0))
            .collect::<candle_core::Result<_>>()?;
        let tokens = tokenizer.encode(&text, &lens, &[])?;
        let embeds = unireward_models::pack::merge_media(
            &backend.embed_tokens(&tokens.ids)?,
            &tokens,
            &media,
        )?;
        let t0 = Instant::now();
        let ids = backend.generate(&embeds, args.new_tokens, &[])?;
        assert_eq!(ids.len(), args.new_tokens);
        Ok(t0.elapsed().as_secs_f64())
    };
    let t_gen_pair = gen(Mode::Pair, 2)?;
    let t_gen_point = gen(Mode::Point, 1)?;
    let t_gen = t_pre + t_vision + 5.0 * t_gen_pair + 10.0 * t_gen_point;

    println!("backend {}", backend.name());
    println!("engine pairs on bench-small, 10 image-generation candidates (224x224) per prompt, {} prompts ({} answered, {} failed)", args.prompts, summary.answered, summary.failed);
    println!("  fast:      {t_fast:.2} s/prompt = {:.3} prompts/s (end to end: load, preprocess, encode, 5 pairs + 10 points)", 1.0 / t_fast);
    println!("    preprocessing (decode, resize, tile) {t_pre:.3} s/prompt = {:.1}% of fast; vision encoding of the 10 candidates {t_vision:.3} s", 100.0 * t_pre / t_fast);
    println!("  generate:  {t_gen:.2} s/prompt = {:.4} prompts/s (5 pair + 10 point judgements x {} new tokens: {t_gen_pair:.2} s per pair, {t_gen_point:.2} s per point)", 1.0 / t_gen, args.new_tokens);
    println!("  fast is {:.1}x generate", t_gen / t_fast);
    let per_prompt = |(n, t): (usize, f64)| {
        format!(
            "{:.1} calls {:.3} s",
            n as f64 / args.prompts as f64,
            t / args.prompts as f64
        )
    };
    let p = &fast_profile;
    let accounted =
        p.prompt_passes.1 + p.continuation_passes.1 + p.other_decodes.1 + p.vision.1 + p.embed.1;
    println!(
        "  fast per prompt ({grouping:?}): {} decoded rows; prompt passes {}; continuation passes {}; other decoder calls (shared beginnings' followers) {}; vision {}; token embedding {}; the rest (tokenize, render, merge, reduce, write) {:.3} s",
        p.decoded_rows / args.prompts,
        per_prompt(p.prompt_passes),
        per_prompt(p.continuation_passes),
        per_prompt(p.other_decodes),
        per_prompt(p.vision),
        per_prompt(p.embed),
        t_fast - accounted / args.prompts as f64
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
