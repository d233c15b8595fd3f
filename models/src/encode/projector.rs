//! The multimodal projector: Linear → GELU (exact erf form) → Linear, vision width to text width.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use crate::linear::Linear;

use crate::config::LlavaConfig;
use crate::Result;

pub struct Projector {
    linear_1: Linear,
    linear_2: Linear,
}

impl Projector {
    /// `names` are the two linear layers' prefixes, which differ between checkpoint layouts.
    pub fn new(cfg: &LlavaConfig, vb: &VarBuilder, names: &[String; 2]) -> Result<Self> {
        let (v, t) = (cfg.vision.hidden_size, cfg.text.hidden_size);
        let linear = |i: usize, d: usize| -> Result<Linear> {
            Ok(Linear::load(vb.pp(&names[i]), d, t, cfg.projector_bias)?)
        };
        Ok(Self {
            linear_1: linear(0, v)?,
            linear_2: linear(1, t)?,
        })
    }
}

impl Module for Projector {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.linear_2
            .forward(&self.linear_1.forward(xs)?.gelu_erf()?)
    }
}
