//! Forward throughput of a bench-small-sized Qwen2.5-VL judge: one 644x644 image (46 x 46
//! patches, 529 merged tokens: bench-small's 528) plus 160 text tokens, log-probs read at the
//! last 10 positions as a judge does. Candle, ONNX Runtime on the checkpoint's fp32 export
//! (`unireward-export onnx`), and with `--torch` PyTorch eager (transformers'
//! `Qwen2_5_VLForConditionalGeneration`, eager attention) on the same checkpoint and inputs in
//! the same run.
//!
//! The model: vision 384-dim, 6 blocks (full attention in blocks 2 and 5, 112 px windows
//! elsewhere), 6 heads, MLP 1536, 14 px patches, temporal patch 2, 2x2 merge; decoder 512-dim,
//! 8 layers, 8 heads, 2 KV heads, MLP 1536, M-RoPE sections 8:12:12 (the real 16:24:24 halved
//! with head_dim 64), vocab 32000 (the media token ids moved into it). Random weights, hub
//! layout.
//!
//! `cargo run --release -p unireward-benches --bin bench-forward-qwen -- --iters 10 --torch python3`

// serde_json's `json!` of the whole config nests deeper than the default limit.
#![recursion_limit = "256"]

mod timing;

// Tensors of a few MB are allocated and freed per op; glibc's malloc returns them to the
// system each time, and faulting the pages back in cost a fifth of a CPU forward.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::{DType, Device, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use clap::Parser;
use serde_json::json;
use unireward_engine::backend::{
    Decoder, OrtQwenVlBackend, Prompt, QwenBackend, Rows, SessionConfig,
};
use unireward_export::{export_onnx, ExportOptions};
use unireward_models::pack::merge_media;
use unireward_models::preprocess::{QwenVlPixels, QwenVlProcessor, QwenVlProcessorConfig};
use unireward_models::qwen2_5_vl::{MediaGrid, Qwen25Vl, Qwen25VlConfig, Qwen25VlLayout};
use unireward_models::tokenize::{MediaKind, MediaSpan, Tokenized};
use unireward_models::MediaFeatures;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 10)]
    iters: usize,
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Keep the checkpoint (`DIR/model`) and inputs (`DIR/inputs.safetensors`) here.
    #[arg(long)]
    keep: Option<PathBuf>,
    /// Also time PyTorch eager (transformers) on the same checkpoint and inputs in this run,
    /// with this Python (it needs torch and transformers; see benches/reference/).
    #[arg(long)]
    torch: Option<PathBuf>,
}

const IMAGE_SIDE: u32 = 644;
const TEXT_TOKENS: u32 = 160;
const IMAGE_AT: usize = 20;
const VOCAB: usize = 32000;
const IMAGE_TOKEN: u32 = 31_995;
const VIDEO_TOKEN: u32 = 31_996;
const VISION_START: u32 = 31_993;
const VISION_END: u32 = 31_994;

fn config() -> serde_json::Value {
    json!({
        "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
        "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
        "hidden_size": 512, "initializer_range": 0.02, "intermediate_size": 1536,
        "max_position_embeddings": 32768, "max_window_layers": 8, "num_attention_heads": 8,
        "num_hidden_layers": 8, "num_key_value_heads": 2, "rms_norm_eps": 1e-6,
        "rope_scaling": {"mrope_section": [8, 12, 12], "rope_type": "default", "type": "default"},
        "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": false,
        "torch_dtype": "float32", "use_cache": true, "use_sliding_window": false,
        "vocab_size": VOCAB, "vision_start_token_id": VISION_START,
        "vision_end_token_id": VISION_END, "vision_token_id": 31_992,
        "image_token_id": IMAGE_TOKEN, "video_token_id": VIDEO_TOKEN,
        "vision_config": {"depth": 6, "hidden_act": "silu", "hidden_size": 384,
            "intermediate_size": 1536, "num_heads": 6, "in_chans": 3, "out_hidden_size": 512,
            "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14,
            "window_size": 112, "fullatt_block_indexes": [2, 5], "tokens_per_second": 2,
            "temporal_patch_size": 2}
    })
}

/// Writes the checkpoint: the model built over a `VarMap` names and shapes every weight; each
/// is then drawn (norm weights 1, others N(0, 0.02)).
fn write_checkpoint(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let cfg = config();
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&cfg)?)?;
    let parsed = Qwen25VlConfig::from_json(&cfg)?;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    Qwen25Vl::new(parsed, &Qwen25VlLayout::HUB, vb)?;
    for (name, var) in varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .iter()
    {
        let shape = var.shape().clone();
        let value = if name.contains("norm") || name.ends_with("ln_q.weight") {
            Tensor::ones(shape, DType::F32, &Device::Cpu)?
        } else {
            (Tensor::randn(0f32, 1.0, shape, &Device::Cpu)? * 0.02)?
        };
        var.set(&value)?;
    }
    varmap.save(dir.join("model.safetensors"))?;
    // The exporter copies a tokenizer for the engine; the bench feeds token ids and reads none.
    let tokenizer = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/qwen2_5_vl/qwen2_5_vl_3b/model/tokenizer.json");
    std::fs::copy(tokenizer, dir.join("tokenizer.json"))?;
    Ok(())
}

/// The prompt's token ids: text, then the image's run between its vision markers.
fn prompt(n_img: usize) -> Tokenized {
    let mut ids: Vec<u32> = (0..TEXT_TOKENS).map(|i| 100 + i % 400).collect();
    let mut run = vec![VISION_START];
    run.extend(std::iter::repeat_n(IMAGE_TOKEN, n_img));
    run.push(VISION_END);
    ids.splice(IMAGE_AT..IMAGE_AT, run);
    Tokenized {
        spans: vec![MediaSpan {
            kind: MediaKind::Image,
            index: 0,
            start: IMAGE_AT + 1,
            len: n_img,
        }],
        ids,
    }
}

/// One judged forward: vision tower, merge, decoder at M-RoPE positions, log-probs of the
/// last 10 rows.
fn forward(model: &Qwen25Vl, pixels: &unireward_models::preprocess::QwenVlPixels) -> Result<f32> {
    let feats = model.media_features(pixels)?;
    let tokens = prompt(feats.dim(0)?);
    let media = MediaFeatures {
        images: vec![feats],
        image_grids: vec![model.image_grid(pixels)],
        ..Default::default()
    };
    let positions = model
        .positions(&tokens, &media.image_grids, &[])?
        .to_tensor(&Device::Cpu)?;
    let embeds = model.embed(&tokens, &media)?.unsqueeze(0)?;
    let t = tokens.ids.len() as u32;
    let rows = Tensor::arange(t - 10, t, &Device::Cpu)?.unsqueeze(0)?;
    let hidden = model
        .decoder()
        .forward_at(&embeds, &positions, None, None, &rows)?;
    let logp = candle_nn::ops::log_softmax(&model.logits(&hidden)?, D::Minus1)?;
    Ok(logp.sum_all()?.to_scalar::<f32>()?)
}

/// [`forward`] on ONNX Runtime: the vision graph, the merge, one prompt pass of the decoder
/// graph reading the last 10 rows (the judge's path over an export).
fn forward_ort(backend: &OrtQwenVlBackend, pixels: &QwenVlPixels) -> Result<f32> {
    let feats = backend.vision().encode_media(&[pixels])?.remove(0).merged;
    let tokens = prompt(feats.dim(0)?);
    let media = MediaFeatures {
        images: vec![feats],
        image_grids: vec![MediaGrid::of_image(pixels)],
        ..Default::default()
    };
    let text = backend.embed_tokens(&tokens.ids)?;
    let judged = Prompt {
        embeds: merge_media(&text, &tokens, &media)?,
        positions: backend.prompt_positions(&tokens, &media)?,
        deepstack: Vec::new(),
    };
    let t = tokens.ids.len();
    let rows = vec![(t - 10..t).collect::<Vec<usize>>()];
    let mut cache = backend.new_cache()?;
    let logp = backend
        .decode_prompts(
            std::slice::from_ref(&judged),
            Rows::At(&rows),
            cache.as_mut(),
        )?
        .remove(0);
    Ok(logp.sum_all()?.to_scalar::<f32>()?)
}

fn main() -> Result<()> {
    // The engine binary's allocator setting, so that the forward timed is the one it runs.
    unireward_models::allocator::retain_freed_memory();
    let args = Args::parse();
    let dir = args.keep.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("unireward-bench-qwen-{}", std::process::id()))
    });
    write_checkpoint(&dir.join("model"))?;
    let model = Qwen25Vl::load(&dir.join("model"), DType::F32, &Device::Cpu)?;
    let image = image::RgbImage::from_fn(IMAGE_SIDE, IMAGE_SIDE, |x, y| {
        image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x * y) % 239) as u8])
    });
    let pixels = QwenVlProcessor::new(QwenVlProcessorConfig::default()).preprocess_rgb(&image)?;
    let n_img = pixels.num_tokens(2);
    println!(
        "bench-small Qwen2.5-VL forward: {IMAGE_SIDE}x{IMAGE_SIDE} image ({} patches, {n_img} \
         tokens) + {} text tokens",
        pixels.grid_thw.1 * pixels.grid_thw.2,
        TEXT_TOKENS + 2
    );
    let t_candle = timing::median("candle f32", args.iters, args.warmup, || {
        forward(&model, &pixels)
    })?;
    export_onnx(
        &dir.join("model"),
        &dir.join("export"),
        &ExportOptions::default(),
    )?;
    let ort = OrtQwenVlBackend::open(&dir.join("export"), &SessionConfig::default())?;
    let t_ort = timing::median("ort f32", args.iters, args.warmup, || {
        forward_ort(&ort, &pixels)
    })?;
    if let Some(python) = &args.torch {
        let (t, h, w) = pixels.grid_thw;
        let ids: Vec<i64> = prompt(n_img).ids.into_iter().map(i64::from).collect();
        let grid = [t as i64, h as i64, w as i64];
        let tensors = HashMap::from([
            ("pixel_values".to_string(), pixels.pixel_values.clone()),
            (
                "input_ids".to_string(),
                Tensor::new(ids.as_slice(), &Device::Cpu)?,
            ),
            (
                "image_grid_thw".to_string(),
                Tensor::new(&grid, &Device::Cpu)?,
            ),
        ]);
        candle_core::safetensors::save(&tensors, dir.join("inputs.safetensors"))?;
        let t_torch = timing::time_reference(
            python,
            "forward_qwen_torch.py",
            &dir,
            args.iters,
            args.warmup,
        )?;
        println!(
            "speed-up over torch eager: candle {:.2}x, ort {:.2}x",
            t_torch / t_candle,
            t_torch / t_ort
        );
    }
    if args.keep.is_none() {
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}
