//! The timestep's sinusoidal embedding and the MLP that lifts it (`time_proj` +
//! `time_embedding`), also used for SDXL's size-and-crop ids (`add_time_proj` +
//! `add_embedding`).

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use crate::linear::Linear;

/// diffusers' `get_timestep_embedding` with scale 1 and max period 10000: [N] → [N, dim], in
/// f32 whatever the model's dtype, as diffusers computes it before casting.
pub fn timestep_embedding(
    timesteps: &Tensor,
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
) -> Result<Tensor> {
    let half = dim / 2;
    let denom = half as f64 - freq_shift;
    // exp(-ln(10000)·i / (half - shift)) in f32, as torch.exp of the f32 exponent.
    let freqs: Vec<f32> = (0..half)
        .map(|i| {
            let exponent = (-(10000f64.ln() as f32) * i as f32) / denom as f32;
            exponent.exp()
        })
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), timesteps.device())?;
    let t = timesteps.to_dtype(DType::F32)?.unsqueeze(1)?;
    let args = t.broadcast_mul(&freqs)?;
    let (sin, cos) = (args.sin()?, args.cos()?);
    let emb = if flip_sin_to_cos {
        Tensor::cat(&[cos, sin], D::Minus1)?
    } else {
        Tensor::cat(&[sin, cos], D::Minus1)?
    };
    if dim % 2 == 1 {
        emb.pad_with_zeros(D::Minus1, 0, 1)
    } else {
        Ok(emb)
    }
}

/// `TimestepEmbedding`: linear_1 → SiLU → linear_2.
#[derive(Clone)]
pub struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedding {
    pub fn new(vb: VarBuilder, d_in: usize, d_out: usize) -> Result<Self> {
        Ok(Self {
            linear_1: Linear::load(vb.pp("linear_1"), d_in, d_out, true)?,
            linear_2: Linear::load(vb.pp("linear_2"), d_out, d_out, true)?,
        })
    }
}

impl Module for TimestepEmbedding {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.linear_2.forward(&self.linear_1.forward(xs)?.silu()?)
    }
}
