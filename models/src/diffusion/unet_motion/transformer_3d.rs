//! AnimateDiff's motion module, diffusers' `AnimateDiffTransformer3D`: attention across the
//! frames of each pixel. GroupNorm over [B, C, F, H, W], a linear projection to one token per
//! frame and pixel, transformer blocks whose two self-attentions see sinusoidal frame
//! positions, the projection back, and a residual.

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::diffusion::group_norm::GroupNorm;
use crate::diffusion::unet::transformer_2d::{Attention, GegluFeedForward};
use crate::linear::Linear;
use crate::nn::LayerNorm;

/// diffusers' `SinusoidalPositionalEmbedding` table [max_len, dim]: sin at even, cos at odd
/// channels, position·10000^(−2i/dim). Computed in f64 and rounded to f32 (diffusers builds
/// the same table in f32; the two differ by at most one f32 ulp). Checkpoints store it as the
/// `pos_embed.pe` buffer; it is computed here rather than read so that it never becomes a
/// trained variable (torch trains parameters, not buffers).
pub fn sinusoidal_positions(max_len: usize, dim: usize, device: &Device) -> Result<Tensor> {
    let mut table = vec![0f32; max_len * dim];
    for pos in 0..max_len {
        for i in (0..dim).step_by(2) {
            let angle = pos as f64 * (-(10000f64.ln()) * i as f64 / dim as f64).exp();
            table[pos * dim + i] = angle.sin() as f32;
            if i + 1 < dim {
                table[pos * dim + i + 1] = angle.cos() as f32;
            }
        }
    }
    Tensor::from_vec(table, (max_len, dim), device)
}

/// `BasicTransformerBlock` as the motion module builds it: two self-attentions over the
/// frames (`double_self_attention`, no cross-attention), each after a LayerNorm and the
/// positional table, then the GEGLU feed-forward; residuals around all three.
#[derive(Clone)]
struct TemporalBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: GegluFeedForward,
}

impl TemporalBlock {
    fn new(vb: VarBuilder, dim: usize, heads: usize) -> Result<Self> {
        let eps = 1e-5;
        Ok(Self {
            norm1: LayerNorm::new(vb.pp("norm1"), dim, eps)?,
            attn1: Attention::new(vb.pp("attn1"), dim, dim, heads)?,
            norm2: LayerNorm::new(vb.pp("norm2"), dim, eps)?,
            attn2: Attention::new(vb.pp("attn2"), dim, dim, heads)?,
            norm3: LayerNorm::new(vb.pp("norm3"), dim, eps)?,
            ff: GegluFeedForward::new(vb.pp("ff"), dim)?,
        })
    }

    /// `xs` [N, F, dim]; `positions` [1, F, dim].
    fn forward(&self, xs: &Tensor, positions: &Tensor) -> Result<Tensor> {
        let h = self.norm1.forward(xs)?.broadcast_add(positions)?;
        let xs = (self.attn1.forward(&h, None)? + xs)?;
        let h = self.norm2.forward(&xs)?.broadcast_add(positions)?;
        let xs = (self.attn2.forward(&h, None)? + xs)?;
        self.ff.forward(&self.norm3.forward(&xs)?)? + xs
    }
}

#[derive(Clone)]
pub struct AnimateDiffTransformer3D {
    norm: GroupNorm,
    proj_in: Linear,
    blocks: Vec<TemporalBlock>,
    proj_out: Linear,
    /// [max_seq_length, channels], in the model's dtype.
    positions: Tensor,
}

impl AnimateDiffTransformer3D {
    pub fn new(
        vb: VarBuilder,
        channels: usize,
        heads: usize,
        layers: usize,
        groups: usize,
        max_seq_length: usize,
    ) -> Result<Self> {
        let blocks = (0..layers)
            .map(|i| TemporalBlock::new(vb.pp(format!("transformer_blocks.{i}")), channels, heads))
            .collect::<Result<_>>()?;
        let positions =
            sinusoidal_positions(max_seq_length, channels, vb.device())?.to_dtype(vb.dtype())?;
        Ok(Self {
            // AnimateDiffTransformer3D's own GroupNorm eps, not the config's norm_eps.
            norm: GroupNorm::new(vb.pp("norm"), groups, channels, 1e-6)?,
            proj_in: Linear::load(vb.pp("proj_in"), channels, channels, true)?,
            blocks,
            proj_out: Linear::load(vb.pp("proj_out"), channels, channels, true)?,
            positions,
        })
    }

    /// `xs` [B·F, C, H, W], the frames of each video consecutive.
    pub fn forward(&self, xs: &Tensor, frames: usize) -> Result<Tensor> {
        let (bf, c, h, w) = xs.dims4()?;
        let max = self.positions.dim(0)?;
        if frames == 0 || !bf.is_multiple_of(frames) || frames > max {
            candle_core::bail!(
                "motion module: {bf} maps are not whole videos of {frames} frames (at most \
                 motion_max_seq_length {max})"
            );
        }
        let b = bf / frames;
        let video = xs.reshape((b, frames, c, h, w))?.permute((0, 2, 1, 3, 4))?;
        let normed = self.norm.forward(&video)?;
        let tokens = normed
            .permute((0, 3, 4, 2, 1))?
            .reshape((b * h * w, frames, c))?;
        let mut tokens = self.proj_in.forward(&tokens)?;
        let positions = self.positions.narrow(0, 0, frames)?.unsqueeze(0)?;
        for block in &self.blocks {
            tokens = block.forward(&tokens, &positions)?;
        }
        let out = self
            .proj_out
            .forward(&tokens)?
            .reshape((b, h, w, frames, c))?
            .permute((0, 3, 4, 1, 2))?
            .reshape((bf, c, h, w))?;
        out + xs
    }
}
