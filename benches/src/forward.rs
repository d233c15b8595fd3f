//! Forward throughput of the reward model on bench-small: one 224x224 image (528 image
//! tokens) plus 160 text tokens, log-probs read at the last 10 positions as a judge does.
//! Candle and ONNX Runtime (fp32, CPU) on the same inputs in the same run.
//!
//! `cargo run --release -p unireward-benches --bin bench-forward -- --iters 10`

mod bench_model;
mod timing;

// Tensors of a few MB are allocated and freed per op; glibc's malloc returns them to the
// system each time, and faulting the pages back in cost a fifth of a CPU forward.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use clap::Parser;
use unireward_engine::backend::{
    Backend, CandleBackend, Decoding, ExecutionProvider, OrtBackend, SessionConfig,
};
use unireward_export::{export_onnx, ExportOptions};
use unireward_models::tokenize::{MediaKind, MediaSpan, Tokenized};
use unireward_models::MediaFeatures;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 10)]
    iters: usize,
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Skip ONNX Runtime (no library at hand).
    #[arg(long)]
    no_ort: bool,
    /// Write the checkpoint (`DIR/model`), its export (`DIR/onnx`) and the inputs
    /// (`DIR/inputs.safetensors`) here and keep them, for profiling with other tools.
    #[arg(long)]
    keep: Option<PathBuf>,
    /// Also time PyTorch eager (transformers) on the same checkpoint and inputs in this run,
    /// with this Python (it needs torch and transformers; see benches/reference/).
    #[arg(long)]
    torch: Option<PathBuf>,
}

/// The judged image's size, and the text tokens around it.
const IMAGE: (u32, u32) = (224, 224);
const TEXT_TOKENS: u32 = 160;
const IMAGE_AT: usize = 20;
/// bench-small's `image_token_index`.
const IMAGE_TOKEN: u32 = 574;

/// The prompt's token ids with `n_img` image tokens at [`IMAGE_AT`].
fn prompt_ids(n_img: usize) -> Vec<u32> {
    let mut ids: Vec<u32> = (0..TEXT_TOKENS).map(|i| 100 + i % 400).collect();
    ids.splice(IMAGE_AT..IMAGE_AT, std::iter::repeat_n(IMAGE_TOKEN, n_img));
    ids
}

/// One judged forward: encode the image, pack it, merge, decode, log-probs of the last 10 rows.
fn forward(backend: &dyn Backend, tiles: &Tensor) -> Result<f32> {
    let feats = backend.encode_tiles(tiles)?;
    let packed = unireward_models::pack::pack_image(
        &feats,
        IMAGE,
        backend.image_newline(),
        &backend.config().anyres,
    )?;
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
    Ok(rows[0].sum_all()?.to_scalar::<f32>()?)
}

fn time(label: &str, args: &Args, backend: &dyn Backend, tiles: &Tensor) -> Result<f64> {
    timing::median(label, args.iters, args.warmup, || forward(backend, tiles))
}

/// Writes the inputs of [`forward`] for the PyTorch reference: the tiles, the prompt's ids
/// and the image size.
fn write_inputs(path: &Path, backend: &dyn Backend, tiles: &Tensor) -> Result<()> {
    let feats = backend.encode_tiles(tiles)?;
    let n_img = unireward_models::pack::pack_image(
        &feats,
        IMAGE,
        backend.image_newline(),
        &backend.config().anyres,
    )?
    .dim(0)?;
    let ids: Vec<i64> = prompt_ids(n_img).into_iter().map(i64::from).collect();
    let size = [IMAGE.0 as i64, IMAGE.1 as i64];
    let tensors = HashMap::from([
        ("pixel_values".to_string(), tiles.clone()),
        (
            "input_ids".to_string(),
            Tensor::new(ids.as_slice(), &Device::Cpu)?,
        ),
        ("image_size".to_string(), Tensor::new(&size, &Device::Cpu)?),
    ]);
    candle_core::safetensors::save(&tensors, path)?;
    Ok(())
}

fn main() -> Result<()> {
    // The engine binary's allocator setting, so that the forward timed is the one it runs.
    unireward_models::allocator::retain_freed_memory();
    let args = Args::parse();
    let dir = args.keep.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("unireward-bench-small-{}", std::process::id()))
    });
    bench_model::write_bench_small(&dir.join("model"))?;
    let dev = Device::Cpu;
    let tiles = Tensor::randn(0f32, 1.0, (2, 3, IMAGE.0 as usize, IMAGE.1 as usize), &dev)?;
    println!(
        "bench-small forward: 224x224 image (528 tokens) + 160 text tokens = 688 tokens, ~52 GFLOP"
    );
    let candle = CandleBackend::load(&dir.join("model"), DType::F32, &dev)?;
    let t_candle = time("candle f32", &args, &candle, &tiles)?;
    if !args.no_ort {
        export_onnx(
            &dir.join("model"),
            &dir.join("onnx"),
            &ExportOptions::default(),
        )?;
        let ort = OrtBackend::open(
            &dir.join("onnx"),
            &SessionConfig {
                provider: ExecutionProvider::Cpu,
                intra_threads: None,
            },
        )?;
        let t_ort = time("ort f32 cpu", &args, &ort, &tiles)?;
        println!("ort speed-up over candle: {:.2}x", t_candle / t_ort);
        if let Some(python) = &args.torch {
            write_inputs(&dir.join("inputs.safetensors"), &candle, &tiles)?;
            let t_torch =
                timing::time_reference(python, "forward_torch.py", &dir, args.iters, args.warmup)?;
            println!(
                "speed-up over torch eager: candle {:.2}x, ort {:.2}x",
                t_torch / t_candle,
                t_torch / t_ort
            );
        }
    }
    if args.keep.is_none() {
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}
