//! The "bench-small" reward model of the issues, with random weights made on the spot:
//! SigLIP 384-dim, 6 layers, 6 heads, MLP 1536, 224 px tiles of 14 px; Qwen2 512-dim,
//! 8 layers, 8 heads, 2 KV heads, MLP 1536, vocab 32000. Written as a checkpoint directory
//! (hub layout, golden tokenizer) so that every command can load it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use serde_json::json;

pub fn bench_small_config() -> serde_json::Value {
    let pinpoints: Vec<[usize; 2]> = (1..=6)
        .flat_map(|i| (1..=6).map(move |j| [224 * i, 224 * j]))
        .collect();
    json!({
        "architectures": ["LlavaOnevisionForConditionalGeneration"],
        "model_type": "llava_onevision",
        "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 384,
            "intermediate_size": 1536, "num_hidden_layers": 6, "num_attention_heads": 6,
            "image_size": 224, "patch_size": 14, "hidden_act": "gelu_pytorch_tanh"},
        "text_config": {"model_type": "qwen2", "hidden_size": 512, "intermediate_size": 1536,
            "num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 2,
            "vocab_size": 32000, "rope_theta": 1000000.0, "max_position_embeddings": 8192,
            "eos_token_id": 573},
        "image_grid_pinpoints": pinpoints, "vision_aspect_ratio": "anyres_max_9",
        "vision_feature_layer": -1, "vision_feature_select_strategy": "full",
        // The golden tokenizer's ids, which it shares: its 576 tokens fit the 32000 vocab.
        "image_token_index": 574, "video_token_index": 575
    })
}

fn shapes() -> Vec<(String, Vec<usize>)> {
    let mut s = vec![
        (
            "vision_tower.vision_model.embeddings.patch_embedding.weight".into(),
            vec![384, 3, 14, 14],
        ),
        (
            "vision_tower.vision_model.embeddings.patch_embedding.bias".into(),
            vec![384],
        ),
        (
            "vision_tower.vision_model.embeddings.position_embedding.weight".into(),
            vec![256, 384],
        ),
        (
            "multi_modal_projector.linear_1.weight".into(),
            vec![512, 384],
        ),
        ("multi_modal_projector.linear_1.bias".into(), vec![512]),
        (
            "multi_modal_projector.linear_2.weight".into(),
            vec![512, 512],
        ),
        ("multi_modal_projector.linear_2.bias".into(), vec![512]),
        ("image_newline".into(), vec![512]),
        (
            "language_model.model.embed_tokens.weight".into(),
            vec![32000, 512],
        ),
        ("language_model.model.norm.weight".into(), vec![512]),
        ("language_model.lm_head.weight".into(), vec![32000, 512]),
    ];
    for i in 0..6 {
        let p = format!("vision_tower.vision_model.encoder.layers.{i}");
        for n in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            s.push((format!("{p}.self_attn.{n}.weight"), vec![384, 384]));
            s.push((format!("{p}.self_attn.{n}.bias"), vec![384]));
        }
        for n in ["layer_norm1", "layer_norm2"] {
            s.push((format!("{p}.{n}.weight"), vec![384]));
            s.push((format!("{p}.{n}.bias"), vec![384]));
        }
        s.push((format!("{p}.mlp.fc1.weight"), vec![1536, 384]));
        s.push((format!("{p}.mlp.fc1.bias"), vec![1536]));
        s.push((format!("{p}.mlp.fc2.weight"), vec![384, 1536]));
        s.push((format!("{p}.mlp.fc2.bias"), vec![384]));
    }
    for i in 0..8 {
        let p = format!("language_model.model.layers.{i}");
        s.push((format!("{p}.self_attn.q_proj.weight"), vec![512, 512]));
        s.push((format!("{p}.self_attn.q_proj.bias"), vec![512]));
        for n in ["k_proj", "v_proj"] {
            s.push((format!("{p}.self_attn.{n}.weight"), vec![128, 512]));
            s.push((format!("{p}.self_attn.{n}.bias"), vec![128]));
        }
        s.push((format!("{p}.self_attn.o_proj.weight"), vec![512, 512]));
        s.push((format!("{p}.mlp.gate_proj.weight"), vec![1536, 512]));
        s.push((format!("{p}.mlp.up_proj.weight"), vec![1536, 512]));
        s.push((format!("{p}.mlp.down_proj.weight"), vec![512, 1536]));
        s.push((format!("{p}.input_layernorm.weight"), vec![512]));
        s.push((format!("{p}.post_attention_layernorm.weight"), vec![512]));
    }
    s
}

/// The golden checkpoint's directory: its tokenizer serves the bench model.
pub fn golden_model_dir() -> Result<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/golden/llava_ov_tiny/model");
    if !dir.join("tokenizer.json").is_file() {
        anyhow::bail!("golden checkpoint not found at {}", dir.display());
    }
    Ok(dir)
}

/// Writes the bench-small checkpoint (random weights, seed fixed by candle's RNG) to `dir`.
pub fn write_bench_small(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let dev = Device::Cpu;
    let mut tensors = HashMap::new();
    for (name, shape) in shapes() {
        let fan_in = *shape.last().unwrap_or(&1) as f64;
        let t = if name.ends_with("norm.weight")
            || name.contains("layer_norm") && name.ends_with("weight")
        {
            Tensor::ones(shape, DType::F32, &dev)?
        } else {
            Tensor::randn(0f32, (1.0 / fan_in).sqrt() as f32, shape, &dev)?
        };
        tensors.insert(name, t);
    }
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&bench_small_config())?,
    )?;
    let golden = golden_model_dir()?;
    for f in ["tokenizer.json", "chat_template.jinja"] {
        std::fs::copy(golden.join(f), dir.join(f))?;
    }
    Ok(())
}
