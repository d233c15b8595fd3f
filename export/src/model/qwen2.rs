//! The Qwen2 decoder as ONNX, mirroring `unireward_models::decode::qwen2` with its KV cache:
//! rotary tables from the position ids (1-D, or Qwen-VL's 3-D M-RoPE), grouped-query
//! attention over the cached and new keys under a causal and padding mask built in the graph,
//! SwiGLU MLPs, RMSNorm; the attention of candle's `AttentionVariant` (Qwen3's per-head q/k
//! norms, no biases, its own head width), features added after the first layers (Qwen3-VL's
//! deep stack); the last layer and the head run on the requested rows only, then a
//! log-softmax in f32.

use unireward_models::config::TextConfig;
use unireward_models::decode::qwen2::QUERY_BLOCKS;
use unireward_models::decode::AttentionVariant;

use crate::dtype::{DataType, ElementSlice};
use crate::error::Result;
use crate::graph::{Attr, Value};
use crate::model::layers::{key, Emitter};

/// The additive attention mask [B, 1, T, S] (f32) from `attention_mask` [B, S] (i64, 1 =
/// token, 0 = padding) over the S = past + T cached and new positions; T is read from
/// `embeds` [B, T, D]. Query t, at absolute index past + t, sees key j when j ≤ past + t
/// and j is a token. Without a cache S = T and this is the plain causal mask.
///
/// Masked entries get f32's lowest finite value rather than −inf: the softmax is the same
/// wherever a row sees any key, and a row that sees none (a padding query before every token,
/// under left padding) comes out uniform instead of NaN.
pub fn attention_mask(e: &mut Emitter, attention_mask: &Value, embeds: &Value) -> Result<Value> {
    e.graph().set_scope("mask");
    let one_scalar = e.graph().const_i64("one", &[], &[1])?;
    let zero_scalar = e.graph().const_i64("zero", &[], &[0])?;
    let total_shape = e.op("Shape", &[attention_mask], &[])?;
    let s = e.op(
        "Gather",
        &[&total_shape, &one_scalar],
        &[("axis", Attr::Int(0))],
    )?;
    let new_shape = e.op("Shape", &[embeds], &[])?;
    let t = e.op(
        "Gather",
        &[&new_shape, &one_scalar],
        &[("axis", Attr::Int(0))],
    )?;
    let past = e.op("Sub", &[&s, &t], &[])?;
    let query = e.op("Range", &[&past, &s, &one_scalar], &[])?;
    let key = e.op("Range", &[&zero_scalar, &s, &one_scalar], &[])?;
    let rows = e.unsqueeze(&query, &[1])?;
    let cols = e.unsqueeze(&key, &[0])?;
    let causal = e.op("LessOrEqual", &[&cols, &rows], &[])?;
    let keep = e.graph().cast(attention_mask, DataType::Bool)?;
    let keep = e.unsqueeze(&keep, &[1, 2])?;
    let allowed = e.op("And", &[&causal, &keep], &[])?;
    let zero = e.scalar_f32(0.0)?;
    let lowest = e.scalar_f32(f32::MIN)?;
    let mask = e.op("Where", &[&allowed, &zero, &lowest], &[])?;
    e.graph().set_scope("");
    Ok(mask)
}

/// cos / sin tables [B, 1, T, head_dim] (compute type) for `position_ids` [B, T] (i64), or
/// with M-RoPE [3, B, T], computed in f32 as candle's `Rotary::tables` does.
pub fn rotary(
    e: &mut Emitter,
    cfg: &TextConfig,
    variant: &AttentionVariant,
    position_ids: &Value,
) -> Result<(Value, Value)> {
    e.graph().set_scope("rotary");
    let dim = variant.head_dim;
    let half = dim / 2;
    let inv: Vec<f32> = (0..half)
        .map(|i| (1.0 / cfg.rope_theta.powf((2 * i) as f64 / dim as f64)) as f32)
        .collect();
    let inv_freq = e.graph().initializer(
        "rotary.inv_freq",
        &[1, 1, half],
        ElementSlice::F32(&inv),
        DataType::Float,
    )?;
    let pos = e.graph().cast(position_ids, DataType::Float)?;
    let pos = e.unsqueeze(&pos, &[-1])?;
    let freqs = match &variant.mrope_section {
        None => e.op("Mul", &[&pos, &inv_freq], &[])?,
        Some(sections) => {
            if sections.len() != 3 || sections.iter().sum::<usize>() != half {
                return Err(crate::error::Error::Unsupported(format!(
                    "mrope_section {sections:?} does not split head_dim {dim} / 2 in three"
                )));
            }
            if variant.mrope_interleaved {
                // Each angle is one axis' position times its frequency, the other axes
                // weighted by an exact 0 (candle's one-hot sum).
                let mut onehot = vec![0f32; 3 * half];
                for j in 0..half {
                    let axis = match j % 3 {
                        1 if j < 3 * sections[1] => 1,
                        2 if j < 3 * sections[2] => 2,
                        _ => 0,
                    };
                    onehot[axis * half + j] = 1.0;
                }
                let onehot = e.graph().initializer(
                    "rotary.mrope_axes",
                    &[3, 1, 1, half],
                    ElementSlice::F32(&onehot),
                    DataType::Float,
                )?;
                let all = e.op("Mul", &[&pos, &inv_freq], &[])?;
                let picked = e.op("Mul", &[&all, &onehot], &[])?;
                reduce_sum(e, &picked, 0)?
            } else {
                // Three runs of frequencies, run i rotated by axis i.
                let mut pieces = Vec::with_capacity(3);
                let mut start = 0;
                for (i, &len) in sections.iter().enumerate() {
                    let index = e.graph().const_i64("mrope_axis", &[], &[(i % 3) as i64])?;
                    let axis = e.op("Gather", &[&pos, &index], &[("axis", Attr::Int(0))])?;
                    let inv = e.slice(&inv_freq, -1, start as i64, (start + len) as i64)?;
                    pieces.push(e.op("Mul", &[&axis, &inv], &[])?);
                    start += len;
                }
                let refs: Vec<&Value> = pieces.iter().collect();
                e.op("Concat", &refs, &[("axis", Attr::Int(-1))])?
            }
        }
    };
    let emb = e.op("Concat", &[&freqs, &freqs], &[("axis", Attr::Int(-1))])?;
    let emb = e.unsqueeze(&emb, &[1])?;
    let cos = e.op("Cos", &[&emb], &[])?;
    let sin = e.op("Sin", &[&emb], &[])?;
    let tables = (e.narrow(&cos)?, e.narrow(&sin)?);
    e.graph().set_scope("");
    Ok(tables)
}

/// `ReduceSum` over `axis` without keeping it (its axes an input from opset 13).
fn reduce_sum(e: &mut Emitter, x: &Value, axis: i64) -> Result<Value> {
    let axes = e.ints(&[axis])?;
    e.op("ReduceSum", &[x, &axes], &[("keepdims", Attr::Int(0))])
}

/// x·cos + rotate_half(x)·sin over the last dim.
fn apply_rotary(e: &mut Emitter, x: &Value, cos: &Value, sin: &Value, dim: usize) -> Result<Value> {
    let half = (dim / 2) as i64;
    let x1 = e.slice(x, -1, 0, half)?;
    let x2 = e.slice(x, -1, half, 2 * half)?;
    let neg = e.op("Neg", &[&x2], &[])?;
    let rotated = e.op("Concat", &[&neg, &x1], &[("axis", Attr::Int(-1))])?;
    let a = e.op("Mul", &[x, cos], &[])?;
    let b = e.op("Mul", &[&rotated, sin], &[])?;
    e.op("Add", &[&a, &b], &[])
}

/// One layer's keys and values [B, kv_heads, S, head_dim] in the compute type: keys after the
/// rotation, as candle's `LayerCache` holds them.
#[derive(Debug, Clone)]
pub struct LayerKv {
    pub key: Value,
    pub value: Value,
}

/// x [.., T at `axis`, ..] → its rows `index` [B, P] (i64) along `axis`: [.., P at `axis`,
/// ..], as candle's `gather_rows` (an index expanded over the other dims, then a gather).
pub fn gather_rows(e: &mut Emitter, x: &Value, index: &Value, axis: usize) -> Result<Value> {
    let rank = match axis {
        1 => 3,
        2 => 4,
        _ => {
            return Err(crate::error::Error::Unsupported(format!(
                "rows gathered along axis {axis}"
            )))
        }
    };
    let lone: Vec<i64> = (1..rank as i64).filter(|&a| a != axis as i64).collect();
    let idx = e.unsqueeze(index, &lone)?;
    // x's dims with the batch and the gathered axis set to 1: Expand broadcasts the index
    // [B, .., P, ..] over the rest.
    let keep: Vec<i64> = (0..rank).map(|a| i64::from(a != 0 && a != axis)).collect();
    let dims = e.op("Shape", &[x], &[])?;
    let keep_t = e.ints(&keep)?;
    let kept = e.op("Mul", &[&dims, &keep_t], &[])?;
    let ones: Vec<i64> = keep.iter().map(|k| 1 - k).collect();
    let ones_t = e.ints(&ones)?;
    let shape = e.op("Add", &[&kept, &ones_t], &[])?;
    let idx = e.op("Expand", &[&idx, &shape], &[])?;
    e.op(
        "GatherElements",
        &[x, &idx],
        &[("axis", Attr::Int(axis as i64))],
    )
}

/// The last layer's selected rows (candle's `Rows`): their indices [B, P] into this call's
/// tokens, rotary tables [B, 1, P, head_dim] and additive mask [B, 1, P, past + T].
#[derive(Debug, Clone)]
pub struct Rows {
    pub index: Value,
    pub cos: Value,
    pub sin: Value,
    pub mask: Value,
}

impl Rows {
    pub fn new(
        e: &mut Emitter,
        index: &Value,
        rope: &(Value, Value),
        mask: &Value,
    ) -> Result<Self> {
        Ok(Self {
            mask: gather_rows(e, mask, index, 2)?,
            cos: gather_rows(e, &rope.0, index, 2)?,
            sin: gather_rows(e, &rope.1, index, 2)?,
            index: index.clone(),
        })
    }
}

/// Grouped-query attention of one layer; `prefix` ends in `self_attn.`. With `past`, this
/// call's keys and values are appended to it (candle's `LayerCache::append`); with `rows`,
/// only those rows' queries are computed. Returns the output and the keys and values
/// attended over.
#[allow(clippy::too_many_arguments)]
fn attention(
    e: &mut Emitter,
    cfg: &TextConfig,
    variant: &AttentionVariant,
    prefix: &str,
    xs: &Value,
    rope: &(Value, Value),
    mask: &Value,
    past: Option<&LayerKv>,
    rows: Option<&Rows>,
) -> Result<(Value, LayerKv)> {
    let (d, hd) = (cfg.hidden_size, variant.head_dim);
    let (h, kvh) = (cfg.num_attention_heads, cfg.num_key_value_heads);
    let bias = variant.qkv_bias;
    let split = |e: &mut Emitter, name: &str, heads: usize, x: &Value| -> Result<Value> {
        let t = e.linear(&key(prefix, name), d, heads * hd, bias, x)?;
        let t = e.reshape(&t, &[0, 0, heads as i64, hd as i64])?;
        e.transpose(&t, &[0, 2, 1, 3])
    };
    let (q_in, q_cos, q_sin, mask) = match rows {
        Some(r) => (gather_rows(e, xs, &r.index, 1)?, &r.cos, &r.sin, &r.mask),
        None => (xs.clone(), &rope.0, &rope.1, mask),
    };
    let q = split(e, "q_proj", h, &q_in)?;
    let k = split(e, "k_proj", kvh, xs)?;
    let v = split(e, "v_proj", kvh, xs)?;
    let (q, k) = if variant.qk_norm {
        let eps = cfg.rms_norm_eps;
        (
            e.rms_norm(&key(prefix, "q_norm"), hd, eps, &q)?,
            e.rms_norm(&key(prefix, "k_norm"), hd, eps, &k)?,
        )
    } else {
        (q, k)
    };
    // As candle's block: the scale applied to q after the rotation, not to the T² scores.
    let q = apply_rotary(e, &q, q_cos, q_sin, hd)?;
    let scale = e.scalar((1.0 / (hd as f64).sqrt()) as f32)?;
    let q = e.op("Mul", &[&q, &scale], &[])?;
    let k = apply_rotary(e, &k, &rope.0, &rope.1, hd)?;
    let (k, v) = match past {
        Some(p) => (
            e.op("Concat", &[&p.key, &k], &[("axis", Attr::Int(2))])?,
            e.op("Concat", &[&p.value, &v], &[("axis", Attr::Int(2))])?,
        ),
        None => (k, v),
    };
    let present = LayerKv {
        key: k.clone(),
        value: v.clone(),
    };
    let heads = (kvh, h / kvh, hd);
    let out = match rows {
        // The selected rows sit anywhere in the sequence: one block over every key.
        Some(_) => attend(e, &q, &k, &v, mask, heads)?,
        None => attend_in_blocks(e, &q, &k, &v, mask, heads)?,
    };
    let out = e.transpose(&out, &[0, 2, 1, 3])?;
    let out = e.reshape(&out, &[0, 0, (h * hd) as i64])?;
    let out = e.linear(&key(prefix, "o_proj"), h * hd, d, false, &out)?;
    Ok((out, present))
}

/// [`attend`] over candle's `query_blocks`: each block of queries sees only the keys up to
/// its last query.
fn attend_in_blocks(
    e: &mut Emitter,
    q: &Value,
    k: &Value,
    v: &Value,
    mask: &Value,
    heads: (usize, usize, usize),
) -> Result<Value> {
    // Bound j is T − ⌊(n − j)·T / n⌋, as in candle's `query_blocks`.
    let two = e.ints(&[2])?;
    let zero = e.ints(&[0])?;
    let q_shape = e.op("Shape", &[q], &[])?;
    let t = e.op("Gather", &[&q_shape, &two], &[("axis", Attr::Int(0))])?;
    let k_shape = e.op("Shape", &[k], &[])?;
    let s = e.op("Gather", &[&k_shape, &two], &[("axis", Attr::Int(0))])?;
    let past = e.op("Sub", &[&s, &t], &[])?;
    let n = e.ints(&[QUERY_BLOCKS as i64])?;
    let bounds = (0..=QUERY_BLOCKS)
        .map(|j| {
            let rest = e.ints(&[(QUERY_BLOCKS - j) as i64])?;
            let scaled = e.op("Mul", &[&t, &rest], &[])?;
            let before_end = e.op("Div", &[&scaled, &n], &[])?;
            e.op("Sub", &[&t, &before_end], &[])
        })
        .collect::<Result<Vec<_>>>()?;
    let mask_axes = e.ints(&[2, 3])?;
    let mut blocks = Vec::with_capacity(QUERY_BLOCKS);
    for j in 0..QUERY_BLOCKS {
        let (start, end) = (&bounds[j], &bounds[j + 1]);
        let keys = e.op("Add", &[&past, end], &[])?;
        let qj = e.op("Slice", &[q, start, end, &two], &[])?;
        let kj = e.op("Slice", &[k, &zero, &keys, &two], &[])?;
        let vj = e.op("Slice", &[v, &zero, &keys, &two], &[])?;
        let mask_start = e.op("Concat", &[start, &zero], &[("axis", Attr::Int(0))])?;
        let mask_end = e.op("Concat", &[end, &keys], &[("axis", Attr::Int(0))])?;
        let mj = e.op("Slice", &[mask, &mask_start, &mask_end, &mask_axes], &[])?;
        blocks.push(attend(e, &qj, &kj, &vj, &mj, heads)?);
    }
    let refs: Vec<&Value> = blocks.iter().collect();
    e.op("Concat", &refs, &[("axis", Attr::Int(2))])
}

/// softmax(q·kᵀ + mask)·v (candle's `Attention::attend`): q [B, heads, Tq, hd] already scaled,
/// k and v [B, kv_heads, S, hd], `heads` = (kv_heads, query heads per kv head, head_dim); the
/// scores and softmax in f32, the query heads of a kv head stacked into one product's rows.
fn attend(
    e: &mut Emitter,
    q: &Value,
    k: &Value,
    v: &Value,
    mask: &Value,
    (kvh, n, hd): (usize, usize, usize),
) -> Result<Value> {
    let (kvh, h, hd) = (kvh as i64, (kvh * n) as i64, hd as i64);
    let q = e.reshape(q, &[0, kvh, -1, hd])?;
    let kt = e.transpose(k, &[0, 1, 3, 2])?;
    let scores = e.op("MatMul", &[&q, &kt], &[])?;
    let scores = e.reshape(&scores, &[0, h, -1, 0])?;
    let scores = e.widen(&scores)?;
    let scores = e.op("Add", &[&scores, mask], &[])?;
    let probs = e.op("Softmax", &[&scores], &[("axis", Attr::Int(-1))])?;
    let probs = e.narrow(&probs)?;
    let probs = e.reshape(&probs, &[0, kvh, -1, 0])?;
    let out = e.op("MatMul", &[&probs, v], &[])?;
    e.reshape(&out, &[0, h, -1, hd])
}

/// SwiGLU: down(silu(gate(x)) · up(x)); `prefix` ends in `mlp.`.
fn mlp(e: &mut Emitter, cfg: &TextConfig, prefix: &str, xs: &Value) -> Result<Value> {
    let (d, i) = (cfg.hidden_size, cfg.intermediate_size);
    let gate = e.linear(&key(prefix, "gate_proj"), d, i, false, xs)?;
    let gate = e.silu(&gate)?;
    let up = e.linear(&key(prefix, "up_proj"), d, i, false, xs)?;
    let h = e.op("Mul", &[&gate, &up], &[])?;
    e.linear(&key(prefix, "down_proj"), i, d, false, &h)
}

/// One decoder layer; `prefix` ends in `layers.N.`. `rope` from [`rotary`], `mask` from
/// [`attention_mask`], `past` this layer's cache if the graph has one, `rows` the only rows
/// to compute. Returns the layer's output and its keys and values (past and new).
#[allow(clippy::too_many_arguments)]
pub fn layer(
    e: &mut Emitter,
    cfg: &TextConfig,
    variant: &AttentionVariant,
    prefix: &str,
    xs: &Value,
    rope: &(Value, Value),
    mask: &Value,
    past: Option<&LayerKv>,
    rows: Option<&Rows>,
) -> Result<(Value, LayerKv)> {
    let (d, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
    let h = e.rms_norm(&key(prefix, "input_layernorm"), d, eps, xs)?;
    let (a, present) = attention(
        e,
        cfg,
        variant,
        &key(prefix, "self_attn."),
        &h,
        rope,
        mask,
        past,
        rows,
    )?;
    let xs = match rows {
        Some(r) => gather_rows(e, xs, &r.index, 1)?,
        None => xs.clone(),
    };
    let xs = e.op("Add", &[&xs, &a], &[])?;
    let h = e.rms_norm(&key(prefix, "post_attention_layernorm"), d, eps, &xs)?;
    let m = mlp(e, cfg, &key(prefix, "mlp."), &h)?;
    Ok((e.op("Add", &[&xs, &m], &[])?, present))
}

/// The final-normed hidden states of [`body`] and each layer's keys and values.
#[derive(Debug, Clone)]
pub struct BodyOutput {
    pub hidden: Value,
    /// One per layer: the past (if any) with this call's keys and values appended.
    pub presents: Vec<LayerKv>,
}

/// embeds [B, T, hidden] (compute type) → final-normed hidden states; `prefix` is the Qwen2
/// body's (`language_model.model.`). `past`, one entry per layer, makes the layers attend
/// over cached keys and values too (candle's `forward` with a `KvCache`); `None` is the
/// cacheless forward. `rows` [B, P] (i64) computes only those rows in the last layer and
/// returns [B, P, hidden] (candle's `forward_at`). `injections[i]` [B, T, hidden] (compute
/// type) is added after layer i (candle's `forward_injected`).
#[allow(clippy::too_many_arguments)]
pub fn body(
    e: &mut Emitter,
    cfg: &TextConfig,
    variant: &AttentionVariant,
    prefix: &str,
    embeds: &Value,
    position_ids: &Value,
    mask: &Value,
    past: Option<&[LayerKv]>,
    rows: Option<&Value>,
    injections: &[Value],
) -> Result<BodyOutput> {
    if injections.len() > cfg.num_hidden_layers {
        return Err(crate::error::Error::Unsupported(format!(
            "{} injected feature levels for {} decoder layers",
            injections.len(),
            cfg.num_hidden_layers
        )));
    }
    if let Some(p) = past {
        if p.len() != cfg.num_hidden_layers {
            return Err(crate::error::Error::Unsupported(format!(
                "a cache of {} layers for a decoder of {}",
                p.len(),
                cfg.num_hidden_layers
            )));
        }
    }
    let rope = rotary(e, cfg, variant, position_ids)?;
    let rows = match rows {
        Some(index) => {
            e.graph().set_scope("rows");
            Some(Rows::new(e, index, &rope, mask)?)
        }
        None => None,
    };
    let mut xs = embeds.clone();
    let mut presents = Vec::with_capacity(cfg.num_hidden_layers);
    let last = cfg.num_hidden_layers.saturating_sub(1);
    for i in 0..cfg.num_hidden_layers {
        e.graph().set_scope(&format!("decoder.layers.{i}"));
        let layer_rows = rows.as_ref().filter(|_| i == last);
        let (out, present) = layer(
            e,
            cfg,
            variant,
            &key(prefix, &format!("layers.{i}.")),
            &xs,
            &rope,
            mask,
            past.map(|p| &p[i]),
            layer_rows,
        )?;
        xs = match (injections.get(i), layer_rows) {
            (Some(add), Some(r)) => {
                let add = gather_rows(e, add, &r.index, 1)?;
                e.op("Add", &[&out, &add], &[])?
            }
            (Some(add), None) => e.op("Add", &[&out, add], &[])?,
            (None, _) => out,
        };
        presents.push(present);
    }
    if let Some(r) = rows.as_ref().filter(|_| cfg.num_hidden_layers == 0) {
        xs = gather_rows(e, &xs, &r.index, 1)?;
    }
    e.graph().set_scope("decoder.norm");
    let hidden = e.rms_norm(&key(prefix, "norm"), cfg.hidden_size, cfg.rms_norm_eps, &xs)?;
    e.graph().set_scope("");
    Ok(BodyOutput { hidden, presents })
}

/// hidden [.., D] → log-softmax over the vocabulary [.., vocab] in f32. `head` is the output
/// projection's prefix, or `None` for a head tied to `embed_tokens` under `body_prefix`.
pub fn head_log_probs(
    e: &mut Emitter,
    cfg: &TextConfig,
    head: Option<&str>,
    body_prefix: &str,
    hidden: &Value,
) -> Result<Value> {
    e.graph().set_scope("head");
    let name = match head {
        Some(h) => h.to_string(),
        None => key(body_prefix, "embed_tokens"),
    };
    let logits = e.linear(&name, cfg.hidden_size, cfg.vocab_size, false, hidden)?;
    let logits = e.widen(&logits)?;
    // The normaliser in f64: ONNX Runtime's f32 LogSoftmax sums the 151k exponentials one by
    // one, and on the conformance checkpoints every row came out shifted by up to 1.3e-4
    // (transformers' f32: 1e-5). Summed in f64 the rows are within 1e-5; the cast costs a few
    // ms at the 10 rows a judgement reads.
    let wide = e.graph().cast(&logits, DataType::Double)?;
    let out = e.op("LogSoftmax", &[&wide], &[("axis", Attr::Int(-1))])?;
    let out = e.graph().cast(&out, DataType::Float)?;
    e.graph().set_scope("");
    Ok(out)
}
