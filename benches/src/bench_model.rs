//! The benches' reward models, with random weights made on the spot, written as checkpoint
//! directories (hub layout, golden tokenizer) so that every command can load them:
//! - "bench-small" of the issues: SigLIP 384-dim, 6 layers, 6 heads, MLP 1536, 224 px tiles
//!   of 14 px; Qwen2 512-dim, 8 layers, 8 heads, 2 KV heads, MLP 1536, vocab 32000;
//! - "ov-0.5b": LLaVA-OneVision-0.5B's shapes: SigLIP so400m (1152-dim, 27 layers, 16 heads,
//!   MLP 4304, 384 px tiles of 14 px) and Qwen2-0.5B (896-dim, 24 layers, 14 heads, 2 KV
//!   heads, MLP 4864, vocab 151,936).
#![allow(dead_code)] // each bench binary uses some of these

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use serde_json::json;

/// The sizes that make a LLaVA-OneVision model.
pub struct Dims {
    pub vision_hidden: usize,
    pub vision_mlp: usize,
    pub vision_layers: usize,
    pub vision_heads: usize,
    pub tile: usize,
    pub text_hidden: usize,
    pub text_mlp: usize,
    pub text_layers: usize,
    pub text_heads: usize,
    pub text_kv_heads: usize,
    pub vocab: usize,
}

pub const BENCH_SMALL: Dims = Dims {
    vision_hidden: 384,
    vision_mlp: 1536,
    vision_layers: 6,
    vision_heads: 6,
    tile: 224,
    text_hidden: 512,
    text_mlp: 1536,
    text_layers: 8,
    text_heads: 8,
    text_kv_heads: 2,
    vocab: 32000,
};

pub const OV_0_5B: Dims = Dims {
    vision_hidden: 1152,
    vision_mlp: 4304,
    vision_layers: 27,
    vision_heads: 16,
    tile: 384,
    text_hidden: 896,
    text_mlp: 4864,
    text_layers: 24,
    text_heads: 14,
    text_kv_heads: 2,
    vocab: 151_936,
};

const PATCH: usize = 14;

pub fn config(d: &Dims) -> serde_json::Value {
    let pinpoints: Vec<[usize; 2]> = (1..=6)
        .flat_map(|i| (1..=6).map(move |j| [d.tile * i, d.tile * j]))
        .collect();
    json!({
        "architectures": ["LlavaOnevisionForConditionalGeneration"],
        "model_type": "llava_onevision",
        "vision_config": {"model_type": "siglip_vision_model", "hidden_size": d.vision_hidden,
            "intermediate_size": d.vision_mlp, "num_hidden_layers": d.vision_layers,
            "num_attention_heads": d.vision_heads, "image_size": d.tile, "patch_size": PATCH,
            "hidden_act": "gelu_pytorch_tanh"},
        "text_config": {"model_type": "qwen2", "hidden_size": d.text_hidden,
            "intermediate_size": d.text_mlp, "num_hidden_layers": d.text_layers,
            "num_attention_heads": d.text_heads, "num_key_value_heads": d.text_kv_heads,
            "vocab_size": d.vocab, "rope_theta": 1000000.0, "max_position_embeddings": 8192,
            "eos_token_id": 573},
        "image_grid_pinpoints": pinpoints, "vision_aspect_ratio": "anyres_max_9",
        "vision_feature_layer": -1, "vision_feature_select_strategy": "full",
        // The golden tokenizer's ids, which it shares: its 576 tokens fit the vocabularies.
        "image_token_index": 574, "video_token_index": 575
    })
}

pub fn bench_small_config() -> serde_json::Value {
    config(&BENCH_SMALL)
}

fn shapes(d: &Dims) -> Vec<(String, Vec<usize>)> {
    let (vh, th) = (d.vision_hidden, d.text_hidden);
    let positions = (d.tile / PATCH) * (d.tile / PATCH);
    let mut s = vec![
        (
            "vision_tower.vision_model.embeddings.patch_embedding.weight".into(),
            vec![vh, 3, PATCH, PATCH],
        ),
        (
            "vision_tower.vision_model.embeddings.patch_embedding.bias".into(),
            vec![vh],
        ),
        (
            "vision_tower.vision_model.embeddings.position_embedding.weight".into(),
            vec![positions, vh],
        ),
        ("multi_modal_projector.linear_1.weight".into(), vec![th, vh]),
        ("multi_modal_projector.linear_1.bias".into(), vec![th]),
        ("multi_modal_projector.linear_2.weight".into(), vec![th, th]),
        ("multi_modal_projector.linear_2.bias".into(), vec![th]),
        ("image_newline".into(), vec![th]),
        (
            "language_model.model.embed_tokens.weight".into(),
            vec![d.vocab, th],
        ),
        ("language_model.model.norm.weight".into(), vec![th]),
        ("language_model.lm_head.weight".into(), vec![d.vocab, th]),
    ];
    for i in 0..d.vision_layers {
        let p = format!("vision_tower.vision_model.encoder.layers.{i}");
        for n in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            s.push((format!("{p}.self_attn.{n}.weight"), vec![vh, vh]));
            s.push((format!("{p}.self_attn.{n}.bias"), vec![vh]));
        }
        for n in ["layer_norm1", "layer_norm2"] {
            s.push((format!("{p}.{n}.weight"), vec![vh]));
            s.push((format!("{p}.{n}.bias"), vec![vh]));
        }
        s.push((format!("{p}.mlp.fc1.weight"), vec![d.vision_mlp, vh]));
        s.push((format!("{p}.mlp.fc1.bias"), vec![d.vision_mlp]));
        s.push((format!("{p}.mlp.fc2.weight"), vec![vh, d.vision_mlp]));
        s.push((format!("{p}.mlp.fc2.bias"), vec![vh]));
    }
    let kv = th / d.text_heads * d.text_kv_heads;
    for i in 0..d.text_layers {
        let p = format!("language_model.model.layers.{i}");
        s.push((format!("{p}.self_attn.q_proj.weight"), vec![th, th]));
        s.push((format!("{p}.self_attn.q_proj.bias"), vec![th]));
        for n in ["k_proj", "v_proj"] {
            s.push((format!("{p}.self_attn.{n}.weight"), vec![kv, th]));
            s.push((format!("{p}.self_attn.{n}.bias"), vec![kv]));
        }
        s.push((format!("{p}.self_attn.o_proj.weight"), vec![th, th]));
        s.push((format!("{p}.mlp.gate_proj.weight"), vec![d.text_mlp, th]));
        s.push((format!("{p}.mlp.up_proj.weight"), vec![d.text_mlp, th]));
        s.push((format!("{p}.mlp.down_proj.weight"), vec![th, d.text_mlp]));
        s.push((format!("{p}.input_layernorm.weight"), vec![th]));
        s.push((format!("{p}.post_attention_layernorm.weight"), vec![th]));
    }
    s
}

/// The repository: `$UNIREWARD_REPO` when set (a bench binary run away from the tree it was
/// built in, as scripts/gpu-check.sh does), else the one it was built in.
pub fn repo_dir() -> PathBuf {
    match std::env::var_os("UNIREWARD_REPO") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
    }
}

/// The golden checkpoint's directory: its tokenizer serves the bench models.
pub fn golden_model_dir() -> Result<PathBuf> {
    let dir = repo_dir().join("fixtures/golden/llava_ov_tiny/model");
    if !dir.join("tokenizer.json").is_file() {
        anyhow::bail!("golden checkpoint not found at {}", dir.display());
    }
    Ok(dir)
}

/// Writes a checkpoint of `dims` to `dir`, weights random (candle's RNG, 1/√fan-in scale,
/// norms 1) and stored as `dtype`. The tokenizer comes from `golden` (a checkpoint directory).
pub fn write_model(dir: &Path, dims: &Dims, dtype: DType, golden: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let dev = Device::Cpu;
    let mut tensors = HashMap::new();
    for (name, shape) in shapes(dims) {
        let fan_in = *shape.last().unwrap_or(&1) as f64;
        let t = if name.ends_with("norm.weight")
            || name.contains("layer_norm") && name.ends_with("weight")
        {
            Tensor::ones(shape, DType::F32, &dev)?
        } else {
            Tensor::randn(0f32, (1.0 / fan_in).sqrt() as f32, shape, &dev)?
        };
        tensors.insert(name, t.to_dtype(dtype)?);
    }
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config(dims))?,
    )?;
    for f in ["tokenizer.json", "chat_template.jinja"] {
        std::fs::copy(golden.join(f), dir.join(f))?;
    }
    Ok(())
}

/// Writes the bench-small checkpoint (random weights, seed fixed by candle's RNG) to `dir`.
pub fn write_bench_small(dir: &Path) -> Result<()> {
    write_model(dir, &BENCH_SMALL, DType::F32, &golden_model_dir()?)
}
