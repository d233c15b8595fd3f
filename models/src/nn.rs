//! The normalisations and softmax every block uses, in one place so that inference and
//! training take the same path: our ops, which have a backward pass (candle_nn's fused ones
//! record none, so gradients would silently stop at every norm).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    crate::ops::softmax_last_dim(xs).map_err(into_candle)
}

/// Causal attention softmax over scores [.., T, past + T] (see `ops::causal_softmax_last_dim`).
pub fn causal_softmax_last_dim(xs: &Tensor, past: usize) -> Result<Tensor> {
    crate::ops::causal_softmax_last_dim(xs, past).map_err(into_candle)
}

/// GELU with the exact normal CDF, x·Φ(x) = ½x·(1 + erf(x/√2)), composed from `erf`: candle's
/// fused `gelu_erf` backward writes 1/√(2π) as 0.398942, 7e-7 off, which moved a UNet's f64
/// gradients 5e-6 (relative) away from torch's.
pub fn gelu_erf(xs: &Tensor) -> Result<Tensor> {
    let cdf = ((xs / std::f64::consts::SQRT_2)?.erf()? + 1.0)?;
    (xs * 0.5)? * cdf
}

/// LayerNorm over the last dimension (SigLIP).
#[derive(Clone)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(vb: VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            bias: vb.get(dim, "bias")?,
            eps,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        crate::ops::layer_norm(xs, &self.weight, &self.bias, self.eps).map_err(into_candle)
    }
}

/// RMSNorm over the last dimension (Qwen2), statistics in f32 as the reference computes them.
#[derive(Clone)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    pub fn new(vb: VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            eps,
        })
    }
}

impl Module for RmsNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        crate::ops::rms_norm(xs, &self.weight, self.eps).map_err(into_candle)
    }
}

/// `Module::forward` speaks candle's error type; ours wraps it.
pub(crate) fn into_candle(e: crate::Error) -> candle_core::Error {
    match e {
        crate::Error::Candle(c) => c,
        other => candle_core::Error::Msg(other.to_string()),
    }
}
