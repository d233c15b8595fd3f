//! `Transformer2DModel` over a feature map (continuous input): GroupNorm, projection to
//! tokens, `BasicTransformerBlock`s (self-attention, cross-attention to the prompt, GEGLU
//! feed-forward, each pre-LayerNorm with a residual), projection back, residual.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use crate::diffusion::conv::{conv2d, Conv2d};
use crate::diffusion::group_norm::GroupNorm;
use crate::linear::Linear;
use crate::nn::{gelu_erf, softmax_last_dim, LayerNorm};

/// diffusers' `Attention` as the UNet uses it: no q/k/v biases, `to_out.0` with one.
#[derive(Clone)]
pub struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    pub fn new(vb: VarBuilder, dim: usize, context_dim: usize, heads: usize) -> Result<Self> {
        let head_dim = dim / heads;
        Ok(Self {
            to_q: Linear::load(vb.pp("to_q"), dim, dim, false)?,
            to_k: Linear::load(vb.pp("to_k"), context_dim, dim, false)?,
            to_v: Linear::load(vb.pp("to_v"), context_dim, dim, false)?,
            to_out: Linear::load(vb.pp("to_out.0"), dim, dim, true)?,
            heads,
            head_dim,
        })
    }

    fn split_heads(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, l, _) = xs.dims3()?;
        xs.reshape((b, l, self.heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// `xs` [B, L, dim] attends to `context` [B, S, context_dim] (itself when `None`).
    pub fn forward(&self, xs: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let context = context.unwrap_or(xs);
        let q = self.split_heads(&self.to_q.forward(xs)?)?;
        let k = self.split_heads(&self.to_k.forward(context)?)?;
        let v = self.split_heads(&self.to_v.forward(context)?)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?;
        let out = softmax_last_dim(&scores)?.matmul(&v)?;
        let (b, _, l, _) = out.dims4()?;
        let out = out
            .transpose(1, 2)?
            .reshape((b, l, self.heads * self.head_dim))?;
        self.to_out.forward(&out)
    }
}

/// `FeedForward` with GEGLU: proj to 2·inner, value · gelu(gate) (erf), back to dim.
#[derive(Clone)]
pub(crate) struct GegluFeedForward {
    proj: Linear,
    out: Linear,
    inner: usize,
}

impl GegluFeedForward {
    pub(crate) fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        let inner = dim * 4;
        Ok(Self {
            proj: Linear::load(vb.pp("net.0.proj"), dim, inner * 2, true)?,
            out: Linear::load(vb.pp("net.2"), inner, dim, true)?,
            inner,
        })
    }
}

impl Module for GegluFeedForward {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let h = self.proj.forward(xs)?;
        let value = h.narrow(D::Minus1, 0, self.inner)?;
        let gate = h.narrow(D::Minus1, self.inner, self.inner)?;
        self.out.forward(&(value * gelu_erf(&gate)?)?)
    }
}

#[derive(Clone)]
struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: GegluFeedForward,
}

impl BasicTransformerBlock {
    fn new(vb: VarBuilder, dim: usize, context_dim: usize, heads: usize) -> Result<Self> {
        // BasicTransformerBlock's norm_eps default; the UNet never passes another.
        let eps = 1e-5;
        Ok(Self {
            norm1: LayerNorm::new(vb.pp("norm1"), dim, eps)?,
            attn1: Attention::new(vb.pp("attn1"), dim, dim, heads)?,
            norm2: LayerNorm::new(vb.pp("norm2"), dim, eps)?,
            attn2: Attention::new(vb.pp("attn2"), dim, context_dim, heads)?,
            norm3: LayerNorm::new(vb.pp("norm3"), dim, eps)?,
            ff: GegluFeedForward::new(vb.pp("ff"), dim)?,
        })
    }

    fn forward(&self, xs: &Tensor, context: &Tensor) -> Result<Tensor> {
        let xs = (self.attn1.forward(&self.norm1.forward(xs)?, None)? + xs)?;
        let xs = (self
            .attn2
            .forward(&self.norm2.forward(&xs)?, Some(context))?
            + xs)?;
        self.ff.forward(&self.norm3.forward(&xs)?)? + xs
    }
}

/// The projections in and out of token space: 1x1 convolutions (SD 1.5) or linear layers
/// over the flattened tokens (`use_linear_projection`, SDXL).
#[derive(Clone)]
enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

impl Projection {
    fn new(vb: VarBuilder, c_in: usize, c_out: usize, linear: bool) -> Result<Self> {
        Ok(if linear {
            Projection::Linear(Linear::load(vb, c_in, c_out, true)?)
        } else {
            Projection::Conv(conv2d(vb, c_in, c_out, 1, 1, 0)?)
        })
    }
}

#[derive(Clone)]
pub struct Transformer2DModel {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Projection,
}

/// How one `Transformer2DModel` is built.
#[derive(Debug, Clone, Copy)]
pub struct TransformerSpec {
    pub channels: usize,
    pub heads: usize,
    pub layers: usize,
    pub context_dim: usize,
    pub groups: usize,
    pub linear_projection: bool,
}

impl Transformer2DModel {
    pub fn new(vb: VarBuilder, spec: TransformerSpec) -> Result<Self> {
        let c = spec.channels;
        let blocks = (0..spec.layers)
            .map(|i| {
                BasicTransformerBlock::new(
                    vb.pp(format!("transformer_blocks.{i}")),
                    c,
                    spec.context_dim,
                    spec.heads,
                )
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            // Transformer2DModel's own GroupNorm eps, not the config's norm_eps.
            norm: GroupNorm::new(vb.pp("norm"), spec.groups, c, 1e-6)?,
            proj_in: Projection::new(vb.pp("proj_in"), c, c, spec.linear_projection)?,
            blocks,
            proj_out: Projection::new(vb.pp("proj_out"), c, c, spec.linear_projection)?,
        })
    }

    pub fn forward(&self, xs: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        let normed = self.norm.forward(xs)?;
        let to_tokens = |t: &Tensor| t.permute((0, 2, 3, 1))?.reshape((b, h * w, c));
        let mut tokens = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(&conv.forward(&normed)?)?,
            Projection::Linear(lin) => lin.forward(&to_tokens(&normed)?)?,
        };
        for block in &self.blocks {
            tokens = block.forward(&tokens, context)?;
        }
        let to_map = |t: &Tensor| t.reshape((b, h, w, c))?.permute((0, 3, 1, 2));
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(&to_map(&tokens)?.contiguous()?)?,
            Projection::Linear(lin) => to_map(&lin.forward(&tokens)?)?,
        };
        out + xs
    }
}
