//! Qwen2 decoder: grouped-query attention with rotary positions (`rope_theta`), q/k/v biases
//! only, SwiGLU MLP, RMSNorm; the head tied to the embeddings when the config says so.

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Embedding, VarBuilder};

use std::sync::Arc;

use crate::config::TextConfig;
use crate::decode::checkpointing::{checkpointed, Checkpointing};
use crate::decode::kv_cache::{KvCache, LayerCache};
use crate::linear::Linear;
use crate::nn::RmsNorm;
use crate::Result;

/// cos / sin tables for given positions, computed in f32 as the reference does.
///
/// With `mrope_section` (Qwen2-VL's multimodal rotary embedding) positions are 3-D: the
/// head's frequencies split into three runs, rotated by the temporal, height and width
/// position respectively (positions [3, B, T]); with all three equal this is the 1-D rotary
/// embedding. Plain positions [B, T] are taken as three equal ones.
pub struct Rotary {
    inv_freq: Tensor,
    mrope_section: Option<Vec<usize>>,
    /// Qwen3-VL's layout: frequency j rotates by the height when j % 3 == 1 and j < 3·h, by
    /// the width when j % 3 == 2 and j < 3·w, by the time otherwise (instead of three runs).
    /// A one-hot [3, 1, 1, head_dim / 2] of each frequency's axis.
    interleaved: Option<Tensor>,
}

impl Rotary {
    fn new(cfg: &TextConfig, variant: &AttentionVariant, device: &Device) -> Result<Self> {
        let dim = variant.head_dim;
        let mrope_section = variant.mrope_section.as_deref();
        if let Some(s) = mrope_section {
            if s.len() != 3 || s.iter().sum::<usize>() * 2 != dim {
                return Err(crate::Error::Config(format!(
                    "mrope_section {s:?} does not split head_dim {dim} / 2 in three"
                )));
            }
        }
        let inv: Vec<f32> = (0..dim / 2)
            .map(|i| (1.0 / cfg.rope_theta.powf((2 * i) as f64 / dim as f64)) as f32)
            .collect();
        let interleaved = match mrope_section.filter(|_| variant.mrope_interleaved) {
            Some(s) => {
                let half = dim / 2;
                let mut onehot = vec![0f32; 3 * half];
                for j in 0..half {
                    let axis = match j % 3 {
                        1 if j < 3 * s[1] => 1,
                        2 if j < 3 * s[2] => 2,
                        _ => 0,
                    };
                    onehot[axis * half + j] = 1.0;
                }
                Some(Tensor::from_vec(onehot, (3, 1, 1, half), device)?)
            }
            None => None,
        };
        Ok(Self {
            inv_freq: Tensor::from_vec(inv, (1, 1, dim / 2), device)?,
            mrope_section: mrope_section.map(<[usize]>::to_vec),
            interleaved,
        })
    }

    /// positions [B, T] or, with M-RoPE, [3, B, T] (u32) → (cos, sin) each [B, 1, T, head_dim]
    /// in `dtype`.
    fn tables(&self, positions: &Tensor, dtype: DType) -> Result<(Tensor, Tensor)> {
        let freqs = match (positions.rank(), &self.mrope_section) {
            (2, _) => positions
                .to_dtype(DType::F32)?
                .unsqueeze(D::Minus1)?
                .broadcast_mul(&self.inv_freq)?,
            // Each angle is one axis' position times its frequency, the others weighted by an
            // exact 0: the same f32 products transformers computes.
            (3, Some(_)) if self.interleaved.is_some() => {
                let onehot = self.interleaved.as_ref().ok_or_else(|| {
                    crate::Error::Config("interleaved M-RoPE without its axis table".into())
                })?;
                positions
                    .to_dtype(DType::F32)?
                    .unsqueeze(D::Minus1)?
                    .broadcast_mul(&self.inv_freq)?
                    .broadcast_mul(onehot)?
                    .sum(0)?
            }
            (3, Some(sections)) => {
                let pos = positions.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?;
                let mut pieces = Vec::with_capacity(sections.len());
                let mut start = 0;
                for (i, &len) in sections.iter().enumerate() {
                    let axis = pos.get(i % 3)?;
                    let inv = self.inv_freq.narrow(D::Minus1, start, len)?;
                    pieces.push(axis.broadcast_mul(&inv)?);
                    start += len;
                }
                Tensor::cat(&pieces, D::Minus1)?
            }
            (rank, _) => {
                return Err(crate::Error::Input(format!(
                    "positions of rank {rank}: this decoder takes [B, T]{}",
                    if self.mrope_section.is_some() {
                        " or [3, B, T]"
                    } else {
                        ""
                    }
                )))
            }
        };
        let emb = Tensor::cat(&[&freqs, &freqs], D::Minus1)?.unsqueeze(1)?;
        Ok((emb.cos()?.to_dtype(dtype)?, emb.sin()?.to_dtype(dtype)?))
    }
}

/// x·cos + rotate_half(x)·sin, built from basic ops so that it has a backward pass.
fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?)
}

/// Where a decoder of the Qwen2 family departs from Qwen2's attention. Qwen3 (the text model of
/// Qwen3-VL) sizes its heads apart from `hidden_size / heads`, has no q/k/v biases, normalises
/// each head's queries and keys (RMSNorm over the head, before the rotary embedding), and
/// Qwen3-VL interleaves the M-RoPE axes.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionVariant {
    pub head_dim: usize,
    pub qkv_bias: bool,
    pub qk_norm: bool,
    /// `mrope_section` of Qwen2-VL's multimodal rotary embedding ([`Rotary`]).
    pub mrope_section: Option<Vec<usize>>,
    pub mrope_interleaved: bool,
}

impl AttentionVariant {
    /// Qwen2's (and Qwen2.5-VL's, with `mrope_section`).
    pub fn qwen2(cfg: &TextConfig, mrope_section: Option<&[usize]>) -> Self {
        Self {
            head_dim: cfg.head_dim(),
            qkv_bias: true,
            qk_norm: false,
            mrope_section: mrope_section.map(<[usize]>::to_vec),
            mrope_interleaved: false,
        }
    }
}

#[derive(Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    /// Per-head RMSNorm of the queries and keys (Qwen3).
    qk_norm: Option<(RmsNorm, RmsNorm)>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(cfg: &TextConfig, variant: &AttentionVariant, vb: VarBuilder) -> Result<Self> {
        let (d, hd, bias) = (cfg.hidden_size, variant.head_dim, variant.qkv_bias);
        let (h, kvh) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let qk_norm = if variant.qk_norm {
            Some((
                RmsNorm::new(vb.pp("q_norm"), hd, cfg.rms_norm_eps)?,
                RmsNorm::new(vb.pp("k_norm"), hd, cfg.rms_norm_eps)?,
            ))
        } else {
            None
        };
        Ok(Self {
            q_proj: Linear::load(vb.pp("q_proj"), d, h * hd, bias)?,
            k_proj: Linear::load(vb.pp("k_proj"), d, kvh * hd, bias)?,
            v_proj: Linear::load(vb.pp("v_proj"), d, kvh * hd, bias)?,
            o_proj: Linear::load(vb.pp("o_proj"), h * hd, d, false)?,
            qk_norm,
            heads: h,
            kv_heads: kvh,
            head_dim: hd,
        })
    }

    /// With `rows`, only those rows' queries are computed (every key and value still is):
    /// the output is [B, P, hidden] instead of [B, T, hidden].
    fn forward(
        &self,
        xs: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Mask,
        cache: Option<&mut LayerCache>,
        rows: Option<&Rows>,
    ) -> Result<Tensor> {
        let b = xs.dim(0)?;
        let split = |x: Tensor, heads: usize| -> Result<Tensor> {
            let t = x.dim(1)?;
            Ok(x.reshape((b, t, heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let (q_in, q_cos, q_sin, mask) = match rows {
            Some(r) => (
                gather_rows(xs, &r.index, 1)?,
                &r.cos,
                &r.sin,
                Mask::Additive(&r.mask),
            ),
            None => (xs.clone(), cos, sin, mask),
        };
        let q = split(self.q_proj.forward(&q_in)?, self.heads)?;
        let k = split(self.k_proj.forward(xs)?, self.kv_heads)?;
        let v = split(self.v_proj.forward(xs)?, self.kv_heads)?;
        let (q, k) = match &self.qk_norm {
            Some((qn, kn)) => (qn.forward(&q)?, kn.forward(&k)?),
            None => (q, k),
        };
        // Scaling q instead of the scores touches T·d values instead of T·S.
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let q = (apply_rotary(&q, q_cos, q_sin)? * scale)?;
        let k = apply_rotary(&k, cos, sin)?;
        let (k, v) = match cache {
            Some(c) => c.append(&k, &v)?,
            None => (k, v),
        };
        let t = q.dim(2)?;
        let out = match rows {
            // The selected rows sit anywhere in the sequence: one block over every key.
            Some(_) => self.attend(&q, &k, &v, mask)?,
            None => self.attend_in_blocks(&q, &k, &v, mask)?,
        };
        let out = out
            .transpose(1, 2)?
            .reshape((b, t, self.heads * self.head_dim))?;
        Ok(self.o_proj.forward(&out)?)
    }

    /// [`Self::attend`] over the causal [`query_blocks`]: each block of queries sees only the
    /// keys up to its last query.
    fn attend_in_blocks(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: Mask) -> Result<Tensor> {
        let t = q.dim(2)?;
        let past = k.dim(2)? - t;
        let blocks = query_blocks(t)
            .map(|(start, end)| {
                let keys = past + end;
                let (q, k, v) = (
                    q.narrow(2, start, end - start)?,
                    k.narrow(2, 0, keys)?,
                    v.narrow(2, 0, keys)?,
                );
                match mask {
                    Mask::Causal { .. } => {
                        self.attend(&q, &k, &v, Mask::Causal { past: past + start })
                    }
                    Mask::Additive(m) => {
                        let rank = m.rank();
                        let m = match m.dim(rank - 2)? {
                            1 => m.clone(),
                            _ => m.narrow(rank - 2, start, end - start)?,
                        };
                        let m = match m.dim(rank - 1)? {
                            1 => m,
                            _ => m.narrow(rank - 1, 0, keys)?,
                        };
                        self.attend(&q, &k, &v, Mask::Additive(&m))
                    }
                    Mask::None => self.attend(&q, &k, &v, Mask::None),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&blocks, 2)?)
    }

    /// softmax(q·kᵀ + mask)·v for q [B, heads, Tq, hd] (already scaled) over k, v [B, kv_heads,
    /// S, hd]; the scores and softmax in f32. The query heads sharing a kv head are stacked
    /// into the rows of one product with that head's keys and values, instead of copying the
    /// keys and values once per query head.
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: Mask) -> Result<Tensor> {
        let (b, h, tq, hd) = q.dims4()?;
        let (kvh, s) = (self.kv_heads, k.dim(2)?);
        let grouped = (b, kvh, h / kvh * tq);
        let scores = q
            .reshape((grouped.0, grouped.1, grouped.2, hd))?
            .matmul(&k.t()?)?
            .reshape((b, h, tq, s))?
            .to_dtype(DType::F32)?;
        let probs = match mask {
            Mask::Causal { past } => crate::nn::causal_softmax_last_dim(&scores, past)?,
            Mask::Additive(m) => crate::nn::softmax_last_dim(&scores.broadcast_add(m)?)?,
            Mask::None => crate::nn::softmax_last_dim(&scores)?,
        }
        .to_dtype(v.dtype())?;
        Ok(probs
            .reshape((grouped.0, grouped.1, grouped.2, s))?
            .matmul(v)?
            .reshape((b, h, tq, hd))?)
    }
}

/// Causal attention splits this call's queries into this many blocks; the block ending at
/// query `end` attends to the keys up to `past + end` only, the rest having zero weight under
/// the causal mask. Four blocks skip 3/8 of the scores, softmax and weighted sum (bench-small's
/// attention: 4.4 → 2.6 ms a layer in ONNX Runtime). The export emits the same blocks.
pub const QUERY_BLOCKS: usize = 4;

/// The non-empty query blocks [start, end) of `t` queries: bound j is t − ⌊(n − j)·t / n⌋,
/// so that when t < n the empty blocks are the last ones, whose keys (up to t) are never
/// none (the export's reshapes cannot infer a dim of an empty score block with no keys).
pub fn query_blocks(t: usize) -> impl Iterator<Item = (usize, usize)> {
    let bound = move |j: usize| t - (QUERY_BLOCKS - j) * t / QUERY_BLOCKS;
    (0..QUERY_BLOCKS)
        .map(move |j| (bound(j), bound(j + 1)))
        .filter(|(start, end)| start < end)
}

/// x [B | 1, .., T at `dim`, ..] → its rows `index` [B, P] (u32) along `dim`, per batch
/// entry: [B, .., P at `dim`, ..]. A batch dim of 1 serves every entry.
fn gather_rows(x: &Tensor, index: &Tensor, dim: usize) -> Result<Tensor> {
    let (b, p) = index.dims2()?;
    let mut idx_shape = vec![1; x.rank()];
    idx_shape[0] = b;
    idx_shape[dim] = p;
    let mut out_shape = x.dims().to_vec();
    out_shape[0] = b;
    out_shape[dim] = p;
    let idx = index
        .reshape(idx_shape)?
        .broadcast_as(out_shape.as_slice())?
        .contiguous()?;
    let mut src_shape = x.dims().to_vec();
    src_shape[0] = b;
    Ok(x.broadcast_as(src_shape.as_slice())?
        .contiguous()?
        .gather(&idx, dim)?)
}

/// What the last layer needs to compute only some rows: their indices [B, P] into this
/// call's tokens, their rotary tables [B, 1, P, head_dim], and their additive mask over every
/// key [B, 1 | heads, P, past + T].
struct Rows {
    index: Tensor,
    cos: Tensor,
    sin: Tensor,
    mask: Tensor,
}

impl Rows {
    fn new(index: &Tensor, cos: &Tensor, sin: &Tensor, mask: Mask, past: usize) -> Result<Self> {
        let index = index.to_dtype(DType::U32)?;
        let mask = match mask {
            Mask::Additive(m) => {
                let lead = vec![1; 4usize.saturating_sub(m.rank())];
                gather_rows(&m.reshape([lead, m.dims().to_vec()].concat())?, &index, 2)?
            }
            // Row r of this call sits at absolute position past + r and sees keys up to it.
            Mask::Causal { .. } | Mask::None => {
                let (b, p) = index.dims2()?;
                let keys = cos.dim(2)? + past;
                let limit = (index.to_dtype(DType::F32)? + past as f64)?.reshape((b, 1, p, 1))?;
                let key = Tensor::arange(0u32, keys as u32, index.device())?
                    .to_dtype(DType::F32)?
                    .reshape((1, 1, 1, keys))?;
                let seen = key.broadcast_le(&limit)?;
                let zero = Tensor::zeros((b, 1, p, keys), DType::F32, index.device())?;
                let lowest = Tensor::full(f32::MIN, (b, 1, p, keys), index.device())?;
                seen.where_cond(&zero, &lowest)?
            }
        };
        Ok(Self {
            cos: gather_rows(cos, &index, 2)?,
            sin: gather_rows(sin, &index, 2)?,
            mask,
            index,
        })
    }
}

/// Which keys each query may attend to.
#[derive(Clone, Copy)]
enum Mask<'a> {
    /// Query i sees the `past` cached keys and this call's keys up to its own.
    Causal { past: usize },
    /// An additive mask broadcastable to [B, heads, T, past + T] (padding, custom layouts).
    Additive(&'a Tensor),
    /// Every key (a single new token after the cache).
    None,
}

#[derive(Clone)]
struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    fn new(cfg: &TextConfig, vb: VarBuilder) -> Result<Self> {
        let (d, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_proj: Linear::load(vb.pp("gate_proj"), d, i, false)?,
            up_proj: Linear::load(vb.pp("up_proj"), d, i, false)?,
            down_proj: Linear::load(vb.pp("down_proj"), i, d, false)?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let gate = self.gate_proj.forward(xs)?.silu()?;
        Ok(self
            .down_proj
            .forward(&(gate * self.up_proj.forward(xs)?)?)?)
    }
}

#[derive(Clone)]
struct Layer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl Layer {
    fn new(cfg: &TextConfig, variant: &AttentionVariant, vb: VarBuilder) -> Result<Self> {
        let (d, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        Ok(Self {
            input_layernorm: RmsNorm::new(vb.pp("input_layernorm"), d, eps)?,
            self_attn: Attention::new(cfg, variant, vb.pp("self_attn"))?,
            post_attention_layernorm: RmsNorm::new(vb.pp("post_attention_layernorm"), d, eps)?,
            mlp: Mlp::new(cfg, vb.pp("mlp"))?,
        })
    }

    fn forward(
        &self,
        xs: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Mask,
        cache: Option<&mut LayerCache>,
        rows: Option<&Rows>,
    ) -> Result<Tensor> {
        let h = self.input_layernorm.forward(xs)?;
        let a = self.self_attn.forward(&h, cos, sin, mask, cache, rows)?;
        let xs = match rows {
            Some(r) => (gather_rows(xs, &r.index, 1)? + a)?,
            None => (xs + a)?,
        };
        let h = self.post_attention_layernorm.forward(&xs)?;
        Ok((&xs + self.mlp.forward(&h)?)?)
    }
}

pub struct Qwen2 {
    embed_tokens: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Linear,
    rotary: Rotary,
    cfg: TextConfig,
    checkpointing: Option<Arc<Checkpointing>>,
}

impl Qwen2 {
    /// `body` holds `embed_tokens`, `layers.N`, `norm`; `head` the output projection, or
    /// `None` to tie it to the embeddings.
    pub fn new(cfg: &TextConfig, body: VarBuilder, head: Option<VarBuilder>) -> Result<Self> {
        Self::with_mrope(cfg, body, head, None)
    }

    /// [`Self::new`] with Qwen2-VL's multimodal rotary embedding when `mrope_section` is given:
    /// [`Self::forward`] then also takes 3-D positions [3, B, T].
    pub fn with_mrope(
        cfg: &TextConfig,
        body: VarBuilder,
        head: Option<VarBuilder>,
        mrope_section: Option<&[usize]>,
    ) -> Result<Self> {
        Self::with_variant(
            cfg,
            body,
            head,
            &AttentionVariant::qwen2(cfg, mrope_section),
        )
    }

    /// [`Self::new`] with the attention of `variant` (Qwen3's, Qwen3-VL's).
    pub fn with_variant(
        cfg: &TextConfig,
        body: VarBuilder,
        head: Option<VarBuilder>,
        variant: &AttentionVariant,
    ) -> Result<Self> {
        let embeddings = body.get((cfg.vocab_size, cfg.hidden_size), "embed_tokens.weight")?;
        let lm_head = match head {
            Some(vb) => Linear::load(vb, cfg.hidden_size, cfg.vocab_size, false)?,
            None => Linear::tied(embeddings.clone()),
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::new(cfg, variant, body.pp(format!("layers.{i}"))))
            .collect::<Result<_>>()?;
        Ok(Self {
            embed_tokens: Embedding::new(embeddings, cfg.hidden_size),
            layers,
            norm: RmsNorm::new(body.pp("norm"), cfg.hidden_size, cfg.rms_norm_eps)?,
            lm_head,
            rotary: Rotary::new(cfg, variant, body.device())?,
            cfg: cfg.clone(),
            checkpointing: None,
        })
    }

    /// From now on, a forward over whole sequences without a cache (training's) checkpoints
    /// every layer: it keeps only the layers' inputs, and backward recomputes each layer,
    /// depositing the weights' gradients in `grads` ([`crate::decode::checkpointing`]).
    /// `None` turns it off.
    pub fn set_checkpointing(&mut self, grads: Option<Arc<Checkpointing>>) {
        self.checkpointing = grads;
    }

    pub fn config(&self) -> &TextConfig {
        &self.cfg
    }

    /// Token ids [B, T] → embeddings [B, T, hidden].
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(self.embed_tokens.forward(ids)?)
    }

    pub fn dtype(&self) -> DType {
        self.embed_tokens.embeddings().dtype()
    }

    /// Embeddings [B, T, hidden] at `positions` [B, T] (or [3, B, T] with M-RoPE) →
    /// final-normed hidden states.
    /// `mask` is additive, broadcastable to [B, heads, T, past + T]; `None` means causal over
    /// this call's tokens alone (no cache) — the common case of whole right-padded sequences.
    pub fn forward(
        &self,
        embeds: &Tensor,
        positions: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        self.forward_rows(embeds, positions, mask, cache, None, &[])
    }

    /// [`Self::forward`] for callers that read only the rows `rows` [B, P] (indices into this
    /// call's tokens): the last layer computes just those rows' queries, attention and MLP,
    /// and the result is [B, P, hidden]. The cache still gets every token's keys and values.
    pub fn forward_at(
        &self,
        embeds: &Tensor,
        positions: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        rows: &Tensor,
    ) -> Result<Tensor> {
        self.forward_rows(embeds, positions, mask, cache, Some(rows), &[])
    }

    /// [`Self::forward`] (or [`Self::forward_at`] with `rows`) adding `injections[i]` [B, T,
    /// hidden] to the hidden states after layer i: Qwen3-VL's deep-stack visual features, zero
    /// outside the media tokens.
    pub fn forward_injected(
        &self,
        embeds: &Tensor,
        positions: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        rows: Option<&Tensor>,
        injections: &[Tensor],
    ) -> Result<Tensor> {
        if injections.len() > self.layers.len() {
            return Err(crate::Error::Input(format!(
                "{} injected feature levels for {} decoder layers",
                injections.len(),
                self.layers.len()
            )));
        }
        self.forward_rows(embeds, positions, mask, cache, rows, injections)
    }

    fn forward_rows(
        &self,
        embeds: &Tensor,
        positions: &Tensor,
        mask: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
        rows: Option<&Tensor>,
        injections: &[Tensor],
    ) -> Result<Tensor> {
        let (_, t, _) = embeds.dims3()?;
        let (cos, sin) = self.rotary.tables(positions, embeds.dtype())?;
        let past = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        let mask = match mask {
            Some(m) => Mask::Additive(m),
            None if t > 1 => Mask::Causal { past },
            None => Mask::None,
        };
        let rows = rows
            .map(|r| Rows::new(r, &cos, &sin, mask, past))
            .transpose()?;
        let mut xs = embeds.clone();
        let last = self.layers.len().saturating_sub(1);
        for (i, layer) in self.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| c.layer(i));
            let layer_rows = rows.as_ref().filter(|_| i == last);
            xs = match (&self.checkpointing, layer_cache, layer_rows) {
                (Some(grads), None, None) => {
                    let (layer, cos, sin) = (layer.clone(), cos.clone(), sin.clone());
                    // The mask, owned: the recomputation runs after this call returns.
                    let (additive, causal) = match mask {
                        Mask::Additive(m) => (Some(m.clone()), None),
                        Mask::Causal { past } => (None, Some(past)),
                        Mask::None => (None, None),
                    };
                    let f = move |x: &Tensor| {
                        let mask = match (&additive, causal) {
                            (Some(m), _) => Mask::Additive(m),
                            (None, Some(past)) => Mask::Causal { past },
                            (None, None) => Mask::None,
                        };
                        layer
                            .forward(x, &cos, &sin, mask, None, None)
                            .map_err(crate::nn::into_candle)
                    };
                    checkpointed(&xs, Arc::new(f), grads)?
                }
                (_, layer_cache, layer_rows) => {
                    layer.forward(&xs, &cos, &sin, mask, layer_cache, layer_rows)?
                }
            };
            if let Some(add) = injections.get(i) {
                xs = match layer_rows {
                    Some(r) => (xs + gather_rows(add, &r.index, 1)?)?,
                    None => (xs + add)?,
                };
            }
        }
        if let Some(r) = rows.as_ref().filter(|_| self.layers.is_empty()) {
            xs = gather_rows(&xs, &r.index, 1)?;
        }
        Ok(self.norm.forward(&xs)?)
    }

    /// Hidden states [.., hidden] → logits [.., vocab] in f32.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(self.lm_head.forward(hidden)?.to_dtype(DType::F32)?)
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_blocks_tile_the_queries_with_the_empty_ones_last() {
        assert_eq!(
            query_blocks(688).collect::<Vec<_>>(),
            [(0, 172), (172, 344), (344, 516), (516, 688)]
        );
        assert_eq!(
            query_blocks(7).collect::<Vec<_>>(),
            [(0, 2), (2, 4), (4, 6), (6, 7)]
        );
        assert_eq!(query_blocks(1).collect::<Vec<_>>(), [(0, 1)]);
        for t in 1..40 {
            let blocks: Vec<_> = query_blocks(t).collect();
            assert_eq!(blocks[0].0, 0);
            assert_eq!(blocks[blocks.len() - 1].1, t);
            assert!(blocks.windows(2).all(|w| w[0].1 == w[1].0));
            assert_eq!(blocks.len(), t.min(QUERY_BLOCKS), "t = {t}");
        }
    }
}
