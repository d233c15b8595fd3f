//! The Qwen-VL vision towers as ONNX, mirroring `unireward_models::encode::qwen2_5_vl_vision`
//! (Qwen2.5-VL) and `unireward_models::qwen3_vl::vision` (Qwen3-VL) block for block: the Conv3d
//! patch embedding as the matmul of each flattened patch, the 2-D rotary rotation in f32,
//! attention within segments (windows, frames), the MLPs, the 2x2 patch mergers.
//!
//! What the candle towers compute on the host from the grids (window order, rotary tables,
//! the learned positions' taps, segment boundaries) the graph takes as inputs
//! (`unireward_models::encode::vision_graph_inputs`, names in the export manifest's contract).
//! Segments of different lengths attend at one fixed shape, each padded to the longest with
//! its padding keys masked.

use unireward_models::qwen2_5_vl::Qwen25VisionConfig;
use unireward_models::qwen3_vl::Qwen3VisionConfig;

use crate::dtype::DataType;
use crate::error::Result;
use crate::graph::{Attr, Value};
use crate::model::layers::{key, Emitter};

/// Both towers' RMSNorm and LayerNorm epsilon.
const NORM_EPS: f64 = 1e-6;

/// Query blocks of attention over a whole frame: a 1920x1080 image is one segment of 10764
/// patches, whose scores would be 463 MB a head (7.4 GB over the 7B tower's 16 heads) in one
/// product; in 8 blocks of rows, 0.93 GB. (candle blocks by 2048 rows; a graph has no loop
/// over a data-dependent count, so it splits into a fixed number of blocks.)
pub const FRAME_QUERY_BLOCKS: usize = 8;

/// One kind of segment as the graph holds it: `gather` [S, L] rows into the padded layout,
/// the additive key mask [S, 1, 1, L] (f32) and `scatter` [N] back.
pub struct Segments {
    pub gather: Value,
    pub mask: Value,
    pub scatter: Value,
    /// Queries per segment split into this many blocks.
    pub query_blocks: usize,
}

impl Segments {
    /// From the graph's inputs: `keys` [S, L] (i64, 1 = real row).
    pub fn new(
        e: &mut Emitter,
        gather: &Value,
        keys: &Value,
        scatter: &Value,
        query_blocks: usize,
    ) -> Result<Self> {
        let keep = e.graph().cast(keys, DataType::Bool)?;
        let zero = e.scalar_f32(0.0)?;
        let lowest = e.scalar_f32(f32::MIN)?;
        let mask = e.op("Where", &[&keep, &zero, &lowest], &[])?;
        let mask = e.unsqueeze(&mask, &[1, 2])?;
        Ok(Self {
            gather: gather.clone(),
            mask,
            scatter: scatter.clone(),
            query_blocks: query_blocks.max(1),
        })
    }
}

/// candle's rotation of the vision towers: x [N, heads, hd] → x·cos + rotate_half(x)·sin in
/// f32 with cos / sin [N, 1, hd], back to the compute type.
fn rotate(e: &mut Emitter, x: &Value, cos: &Value, sin: &Value, hd: usize) -> Result<Value> {
    let xf = e.widen(x)?;
    let half = (hd / 2) as i64;
    let x1 = e.slice(&xf, -1, 0, half)?;
    let x2 = e.slice(&xf, -1, half, 2 * half)?;
    let neg = e.op("Neg", &[&x2], &[])?;
    let rotated = e.op("Concat", &[&neg, &x1], &[("axis", Attr::Int(-1))])?;
    let a = e.op("Mul", &[&xf, cos], &[])?;
    let b = e.op("Mul", &[&rotated, sin], &[])?;
    let y = e.op("Add", &[&a, &b], &[])?;
    e.narrow(&y)
}

/// [N, heads, hd] → the padded segments [S, heads, L, hd].
fn padded(e: &mut Emitter, x: &Value, seg: &Segments) -> Result<Value> {
    let g = e.op("Gather", &[x, &seg.gather], &[("axis", Attr::Int(0))])?;
    e.transpose(&g, &[0, 2, 1, 3])
}

/// softmax(q·kᵀ + mask)·v per segment, scores and softmax in f32 (candle's `attend`).
fn attend(e: &mut Emitter, q: &Value, k: &Value, v: &Value, mask: &Value) -> Result<Value> {
    let kt = e.transpose(k, &[0, 1, 3, 2])?;
    let scores = e.op("MatMul", &[q, &kt], &[])?;
    let scores = e.widen(&scores)?;
    let scores = e.op("Add", &[&scores, mask], &[])?;
    let probs = e.op("Softmax", &[&scores], &[("axis", Attr::Int(-1))])?;
    let probs = e.narrow(&probs)?;
    e.op("MatMul", &[&probs, v], &[])
}

/// candle's `VisionAttention::forward`: fused qkv with biases, the rotation, q scaled, attention
/// within `seg`, the output projection; `prefix` ends in `attn`.
#[allow(clippy::too_many_arguments)]
fn attention(
    e: &mut Emitter,
    prefix: &str,
    d: usize,
    heads: usize,
    x: &Value,
    cos: &Value,
    sin: &Value,
    seg: &Segments,
) -> Result<Value> {
    let hd = d / heads;
    let qkv = e.linear(&key(prefix, "qkv"), d, 3 * d, true, x)?;
    let qkv = e.reshape(&qkv, &[-1, 3, heads as i64, hd as i64])?;
    let part = |e: &mut Emitter, i: i64| -> Result<Value> {
        let idx = e.graph().const_i64("qkv_part", &[], &[i])?;
        e.op("Gather", &[&qkv, &idx], &[("axis", Attr::Int(1))])
    };
    let (q, k, v) = (part(e, 0)?, part(e, 1)?, part(e, 2)?);
    let q = rotate(e, &q, cos, sin, hd)?;
    let k = rotate(e, &k, cos, sin, hd)?;
    let scale = e.scalar((1.0 / (hd as f64).sqrt()) as f32)?;
    let q = e.op("Mul", &[&q, &scale], &[])?;
    let (q, k, v) = (
        padded(e, &q, seg)?,
        padded(e, &k, seg)?,
        padded(e, &v, seg)?,
    );
    let out = if seg.query_blocks == 1 {
        attend(e, &q, &k, &v, &seg.mask)?
    } else {
        // Row blocks j of L: [L − ⌊(n − j)·L / n⌋, L − ⌊(n − j − 1)·L / n⌋).
        let n = seg.query_blocks as i64;
        let two = e.ints(&[2])?;
        let shape = e.op("Shape", &[&q], &[])?;
        let len = e.op("Gather", &[&shape, &two], &[("axis", Attr::Int(0))])?;
        let n_t = e.ints(&[n])?;
        let bounds = (0..=n)
            .map(|j| {
                let rest = e.ints(&[n - j])?;
                let scaled = e.op("Mul", &[&len, &rest], &[])?;
                let before_end = e.op("Div", &[&scaled, &n_t], &[])?;
                e.op("Sub", &[&len, &before_end], &[])
            })
            .collect::<Result<Vec<_>>>()?;
        let mut blocks = Vec::with_capacity(seg.query_blocks);
        for j in 0..seg.query_blocks {
            let qj = e.op("Slice", &[&q, &bounds[j], &bounds[j + 1], &two], &[])?;
            blocks.push(attend(e, &qj, &k, &v, &seg.mask)?);
        }
        let refs: Vec<&Value> = blocks.iter().collect();
        e.op("Concat", &refs, &[("axis", Attr::Int(2))])?
    };
    // [S, heads, L, hd] → [S·L, d] → each row from its slot.
    let out = e.transpose(&out, &[0, 2, 1, 3])?;
    let out = e.reshape(&out, &[-1, d as i64])?;
    let out = e.op("Gather", &[&out, &seg.scatter], &[("axis", Attr::Int(0))])?;
    e.linear(&key(prefix, "proj"), d, d, true, &out)
}

/// The patch embedding: flattened patches [N, C·tp·p·p] (f32) times the Conv3d kernel
/// [d, C, tp, p, p] read as a matrix (+ its bias, Qwen3-VL's); `prefix` ends in `proj`.
fn patch_embed(
    e: &mut Emitter,
    prefix: &str,
    kernel: [usize; 5],
    bias: bool,
    pixels: &Value,
) -> Result<Value> {
    let [d, c, tp, p, _] = kernel;
    let cols = c * tp * p * p;
    let w = e.weight_transposed(&key(prefix, "weight"), &kernel, d, cols)?;
    let x = e.narrow(pixels)?;
    let y = e.op("MatMul", &[&x, &w], &[])?;
    if !bias {
        return Ok(y);
    }
    let b = e.weight(&key(prefix, "bias"), &[d])?;
    e.op("Add", &[&y, &b], &[])
}

/// cos / sin inputs [N, hd] (f32) → [N, 1, hd].
fn rotary_inputs(e: &mut Emitter, cos: &Value, sin: &Value) -> Result<(Value, Value)> {
    Ok((e.unsqueeze(cos, &[1])?, e.unsqueeze(sin, &[1])?))
}

/// Qwen2.5-VL's tower inputs, as the graph holds them.
pub struct Qwen25VisionInputs<'a> {
    pub pixels: &'a Value,
    pub window_order: &'a Value,
    pub cos: &'a Value,
    pub sin: &'a Value,
    pub windows: Segments,
    pub frames: Segments,
    pub merge_order: &'a Value,
}

/// candle's `Qwen25VisionTransformer::forward`: patches → merged features [N / 4,
/// out_hidden_size] in raster order; `prefix` is the tower's (`visual`).
pub fn qwen25_tower(
    e: &mut Emitter,
    cfg: &Qwen25VisionConfig,
    prefix: &str,
    inputs: &Qwen25VisionInputs<'_>,
) -> Result<Value> {
    let d = cfg.hidden_size;
    let (p, tp, c) = (cfg.patch_size, cfg.temporal_patch_size, cfg.in_channels);
    e.graph().set_scope("vision.patch_embed");
    let x = patch_embed(
        e,
        &key(prefix, "patch_embed.proj"),
        [d, c, tp, p, p],
        false,
        inputs.pixels,
    )?;
    let mut x = e.op(
        "Gather",
        &[&x, inputs.window_order],
        &[("axis", Attr::Int(0))],
    )?;
    let (cos, sin) = rotary_inputs(e, inputs.cos, inputs.sin)?;
    for i in 0..cfg.depth {
        e.graph().set_scope(&format!("vision.blocks.{i}"));
        let b = key(prefix, &format!("blocks.{i}."));
        let seg = if cfg.fullatt_block_indexes.contains(&i) {
            &inputs.frames
        } else {
            &inputs.windows
        };
        let h = e.rms_norm(&key(&b, "norm1"), d, NORM_EPS, &x)?;
        let a = attention(e, &key(&b, "attn"), d, cfg.num_heads, &h, &cos, &sin, seg)?;
        x = e.op("Add", &[&x, &a], &[])?;
        let h = e.rms_norm(&key(&b, "norm2"), d, NORM_EPS, &x)?;
        let i_dim = cfg.intermediate_size;
        let gate = e.linear(&key(&b, "mlp.gate_proj"), d, i_dim, true, &h)?;
        let gate = e.silu(&gate)?;
        let up = e.linear(&key(&b, "mlp.up_proj"), d, i_dim, true, &h)?;
        let m = e.op("Mul", &[&gate, &up], &[])?;
        let m = e.linear(&key(&b, "mlp.down_proj"), i_dim, d, true, &m)?;
        x = e.op("Add", &[&x, &m], &[])?;
    }
    e.graph().set_scope("vision.merger");
    let group = d * cfg.spatial_merge_size * cfg.spatial_merge_size;
    let m = key(prefix, "merger.");
    let h = e.rms_norm(&key(&m, "ln_q"), d, NORM_EPS, &x)?;
    let h = e.reshape(&h, &[-1, group as i64])?;
    let h = e.linear(&key(&m, "mlp.0"), group, group, true, &h)?;
    let h = e.gelu_erf(&h)?;
    let h = e.linear(&key(&m, "mlp.2"), group, cfg.out_hidden_size, true, &h)?;
    let out = e.op(
        "Gather",
        &[&h, inputs.merge_order],
        &[("axis", Attr::Int(0))],
    )?;
    e.graph().set_scope("");
    Ok(out)
}

/// Qwen3-VL's tower inputs, as the graph holds them.
pub struct Qwen3VisionInputs<'a> {
    pub pixels: &'a Value,
    pub pos_index: &'a Value,
    pub pos_weight: &'a Value,
    pub cos: &'a Value,
    pub sin: &'a Value,
    pub frames: Segments,
}

/// candle's Qwen3-VL `PatchMerger`: the main one normalises each patch before the 2x2
/// concatenation, a deep-stack one (`postshuffle`) after it; `prefix` ends in `.`.
fn qwen3_merger(
    e: &mut Emitter,
    cfg: &Qwen3VisionConfig,
    prefix: &str,
    postshuffle: bool,
    x: &Value,
) -> Result<Value> {
    let d = cfg.hidden_size;
    let group = d * cfg.spatial_merge_size * cfg.spatial_merge_size;
    let h = if postshuffle {
        let h = e.reshape(x, &[-1, group as i64])?;
        e.layer_norm(&key(prefix, "norm"), group, NORM_EPS, &h)?
    } else {
        let h = e.layer_norm(&key(prefix, "norm"), d, NORM_EPS, x)?;
        e.reshape(&h, &[-1, group as i64])?
    };
    let h = e.linear(&key(prefix, "linear_fc1"), group, group, true, &h)?;
    let h = e.gelu_erf(&h)?;
    e.linear(
        &key(prefix, "linear_fc2"),
        group,
        cfg.out_hidden_size,
        true,
        &h,
    )
}

/// candle's `Qwen3VisionTransformer::forward`: patches → the merged features and each
/// deep-stack level's [N / 4, out_hidden_size]; `prefix` is the tower's (`model.visual`).
pub fn qwen3_tower(
    e: &mut Emitter,
    cfg: &Qwen3VisionConfig,
    prefix: &str,
    inputs: &Qwen3VisionInputs<'_>,
) -> Result<(Value, Vec<Value>)> {
    let d = cfg.hidden_size;
    let (p, tp, c) = (cfg.patch_size, cfg.temporal_patch_size, cfg.in_channels);
    e.graph().set_scope("vision.patch_embed");
    let x = patch_embed(
        e,
        &key(prefix, "patch_embed.proj"),
        [d, c, tp, p, p],
        true,
        inputs.pixels,
    )?;
    // The learned positions: four taps of the grid, weighted and summed.
    let table = e.weight(
        &key(prefix, "pos_embed.weight"),
        &[cfg.num_position_embeddings, d],
    )?;
    let taps = e.op(
        "Gather",
        &[&table, inputs.pos_index],
        &[("axis", Attr::Int(0))],
    )?;
    let taps = e.reshape(&taps, &[-1, 4, d as i64])?;
    let w = e.narrow(inputs.pos_weight)?;
    let w = e.reshape(&w, &[-1, 4, 1])?;
    let weighted = e.op("Mul", &[&taps, &w], &[])?;
    let axes = e.ints(&[1])?;
    let pos = e.op(
        "ReduceSum",
        &[&weighted, &axes],
        &[("keepdims", Attr::Int(0))],
    )?;
    let mut x = e.op("Add", &[&x, &pos], &[])?;
    let (cos, sin) = rotary_inputs(e, inputs.cos, inputs.sin)?;
    let mut deepstack = Vec::with_capacity(cfg.deepstack_visual_indexes.len());
    for i in 0..cfg.depth {
        e.graph().set_scope(&format!("vision.blocks.{i}"));
        let b = key(prefix, &format!("blocks.{i}."));
        let h = e.layer_norm(&key(&b, "norm1"), d, NORM_EPS, &x)?;
        let a = attention(
            e,
            &key(&b, "attn"),
            d,
            cfg.num_heads,
            &h,
            &cos,
            &sin,
            &inputs.frames,
        )?;
        x = e.op("Add", &[&x, &a], &[])?;
        let h = e.layer_norm(&key(&b, "norm2"), d, NORM_EPS, &x)?;
        let i_dim = cfg.intermediate_size;
        let m = e.linear(&key(&b, "mlp.linear_fc1"), d, i_dim, true, &h)?;
        let m = e.gelu_tanh(&m)?;
        let m = e.linear(&key(&b, "mlp.linear_fc2"), i_dim, d, true, &m)?;
        x = e.op("Add", &[&x, &m], &[])?;
        if let Some(level) = cfg.deepstack_visual_indexes.iter().position(|&l| l == i) {
            e.graph()
                .set_scope(&format!("vision.deepstack_merger_list.{level}"));
            let prefix = key(prefix, &format!("deepstack_merger_list.{level}."));
            deepstack.push(qwen3_merger(e, cfg, &prefix, true, &x)?);
        }
    }
    e.graph().set_scope("vision.merger");
    let merged = qwen3_merger(e, cfg, &key(prefix, "merger."), false, &x)?;
    e.graph().set_scope("");
    Ok((merged, deepstack))
}
