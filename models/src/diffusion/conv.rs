//! The convolutions of the UNet and the VAE, read from a checkpoint under diffusers' names
//! (`weight` [out, in, k, k], `bias` [out]).

use candle_core::Result;
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};

pub fn conv2d(
    vb: VarBuilder,
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding,
        stride,
        ..Default::default()
    };
    let weight = vb.get((c_out, c_in, kernel, kernel), "weight")?;
    let bias = vb.get(c_out, "bias")?;
    Ok(Conv2d::new(weight, Some(bias), cfg))
}
