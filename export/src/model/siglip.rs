//! The SigLIP vision tower as ONNX, mirroring `unireward_models::encode::siglip`: the patch
//! convolution as a crop to whole patches, a reshape + MatMul over non-overlapping patches, learned positions, then
//! pre-LayerNorm blocks with tanh-GELU MLPs, stopping at the configured feature layer (no
//! post-layernorm).

use unireward_models::config::VisionConfig;

use crate::error::Result;
use crate::graph::Value;
use crate::model::layers::{key, Emitter};

/// pixels [n, C, S, S] (compute type) → patch embeddings + positions [n, patches, hidden].
/// `prefix` is the tower's (`vision_tower.`), `embeddings.` follows it.
pub fn embeddings(
    e: &mut Emitter,
    cfg: &VisionConfig,
    prefix: &str,
    pixels: &Value,
) -> Result<Value> {
    let (d, c, p) = (cfg.hidden_size, cfg.num_channels, cfg.patch_size);
    let g = cfg.patches_per_side();
    let emb = key(prefix, "embeddings.");
    // conv.reshape((d, c·p·p)).t(): the convolution as a [c·p·p, d] matrix, stored so.
    let w = e.weight_transposed(
        &key(&emb, "patch_embedding.weight"),
        &[d, c, p, p],
        d,
        c * p * p,
    )?;
    let bias = e.weight(&key(&emb, "patch_embedding.bias"), &[d])?;
    let positions = e.weight(
        &key(&emb, "position_embedding.weight"),
        &[cfg.tokens_per_tile(), d],
    )?;
    let (c, p, g) = (c as i64, p as i64, g as i64);
    // As candle's `narrow`s: a stride-p convolution ignores the pixels past the last whole
    // patch (so400m: 384 px tiles, 27 patches of 14 px, 6 px dropped).
    let pixels = e.slice(pixels, 2, 0, g * p)?;
    let pixels = e.slice(&pixels, 3, 0, g * p)?;
    let patches = e.reshape(&pixels, &[0, c, g, p, g, p])?;
    let patches = e.transpose(&patches, &[0, 2, 4, 1, 3, 5])?;
    let patches = e.reshape(&patches, &[0, g * g, c * p * p])?;
    let xs = e.op("MatMul", &[&patches, &w], &[])?;
    let xs = e.op("Add", &[&xs, &bias], &[])?;
    e.op("Add", &[&xs, &positions], &[])
}

/// Multi-head self-attention of one block; `prefix` ends in `self_attn.`.
fn attention(e: &mut Emitter, cfg: &VisionConfig, prefix: &str, xs: &Value) -> Result<Value> {
    let d = cfg.hidden_size;
    let heads = cfg.num_attention_heads;
    let hd = d / heads;
    let split = |e: &mut Emitter, name: &str| -> Result<Value> {
        let t = e.linear(&key(prefix, name), d, d, true, xs)?;
        let t = e.reshape(&t, &[0, 0, heads as i64, hd as i64])?;
        e.transpose(&t, &[0, 2, 1, 3])
    };
    // As candle's block: the scale applied to q, not to the n² scores.
    let q = split(e, "q_proj")?;
    let scale = e.scalar((1.0 / (hd as f64).sqrt()) as f32)?;
    let q = e.op("Mul", &[&q, &scale], &[])?;
    let k = split(e, "k_proj")?;
    let v = split(e, "v_proj")?;
    let kt = e.transpose(&k, &[0, 1, 3, 2])?;
    let scores = e.op("MatMul", &[&q, &kt], &[])?;
    let probs = e.softmax(&scores)?;
    let out = e.op("MatMul", &[&probs, &v], &[])?;
    let out = e.transpose(&out, &[0, 2, 1, 3])?;
    let out = e.reshape(&out, &[0, 0, d as i64])?;
    e.linear(&key(prefix, "out_proj"), d, d, true, &out)
}

/// One encoder block; `prefix` ends in `encoder.layers.N.`.
pub fn encoder_layer(
    e: &mut Emitter,
    cfg: &VisionConfig,
    prefix: &str,
    xs: &Value,
) -> Result<Value> {
    let (d, eps, i) = (cfg.hidden_size, cfg.layer_norm_eps, cfg.intermediate_size);
    let h = e.layer_norm(&key(prefix, "layer_norm1"), d, eps, xs)?;
    let a = attention(e, cfg, &key(prefix, "self_attn."), &h)?;
    let xs = e.op("Add", &[xs, &a], &[])?;
    let h = e.layer_norm(&key(prefix, "layer_norm2"), d, eps, &xs)?;
    let h = e.linear(&key(prefix, "mlp.fc1"), d, i, true, &h)?;
    let h = e.gelu_tanh(&h)?;
    let h = e.linear(&key(prefix, "mlp.fc2"), i, d, true, &h)?;
    e.op("Add", &[&xs, &h], &[])
}

/// pixels [n, C, S, S] (compute type) → hidden states after `layers_used` blocks.
pub fn tower(
    e: &mut Emitter,
    cfg: &VisionConfig,
    layers_used: usize,
    prefix: &str,
    pixels: &Value,
) -> Result<Value> {
    e.graph().set_scope("vision.embeddings");
    let mut xs = embeddings(e, cfg, prefix, pixels)?;
    for i in 0..layers_used {
        e.graph().set_scope(&format!("vision.layers.{i}"));
        xs = encoder_layer(e, cfg, &key(prefix, &format!("encoder.layers.{i}.")), &xs)?;
    }
    e.graph().set_scope("");
    Ok(xs)
}
