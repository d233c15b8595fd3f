//! `ResnetBlock2D` as the UNet configures it (the "default" time-embedding shift: the
//! projected embedding is added between the two convolutions), and the convolutions that
//! halve and double the resolution between blocks.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::diffusion::conv::{conv2d, Conv2d};
use crate::diffusion::group_norm::GroupNorm;
use crate::linear::Linear;

#[derive(Clone)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Linear,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock2D {
    pub fn new(
        vb: VarBuilder,
        c_in: usize,
        c_out: usize,
        temb: usize,
        groups: usize,
        eps: f64,
    ) -> Result<Self> {
        Ok(Self {
            norm1: GroupNorm::new(vb.pp("norm1"), groups, c_in, eps)?,
            conv1: conv2d(vb.pp("conv1"), c_in, c_out, 3, 1, 1)?,
            time_emb_proj: Linear::load(vb.pp("time_emb_proj"), temb, c_out, true)?,
            norm2: GroupNorm::new(vb.pp("norm2"), groups, c_out, eps)?,
            conv2: conv2d(vb.pp("conv2"), c_out, c_out, 3, 1, 1)?,
            conv_shortcut: if c_in != c_out {
                Some(conv2d(vb.pp("conv_shortcut"), c_in, c_out, 1, 1, 0)?)
            } else {
                None
            },
        })
    }

    /// `temb` is the time embedding [B, temb] before the block's SiLU.
    pub fn forward(&self, xs: &Tensor, temb: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward(xs)?.silu()?)?;
        let t = self
            .time_emb_proj
            .forward(&temb.silu()?)?
            .unsqueeze(2)?
            .unsqueeze(3)?;
        let h = h.broadcast_add(&t)?;
        let h = self.conv2.forward(&self.norm2.forward(&h)?.silu()?)?;
        match &self.conv_shortcut {
            Some(c) => c.forward(xs)? + h,
            None => xs + h,
        }
    }
}

/// `Downsample2D` with a convolution: 3x3, stride 2, the config's padding.
#[derive(Clone)]
pub struct Downsample2D {
    /// Unpadded: `forward` pads.
    conv: Conv2d,
    padding: usize,
}

impl Downsample2D {
    pub fn new(vb: VarBuilder, channels: usize, padding: usize) -> Result<Self> {
        Ok(Self {
            conv: conv2d(vb.pp("conv"), channels, channels, 3, 2, 0)?,
            padding,
        })
    }
}

impl Module for Downsample2D {
    /// Pads, then drops the rows and columns a stride-2 window never reaches, then convolves
    /// unpadded: candle 0.11's conv2d backward (used on other devices than the CPU) derives
    /// the transposed convolution's output padding from the height alone, so a strided
    /// convolution over a map whose height and width differ in parity (12x10 latents: 6x5
    /// after the first level) gets a gradient of the wrong width. Cropped so, both output
    /// paddings are 0.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let p = self.padding;
        let xs = xs.pad_with_zeros(2, p, p)?.pad_with_zeros(3, p, p)?;
        let (_, _, h, w) = xs.dims4()?;
        if h < 3 || w < 3 {
            candle_core::bail!("downsample: a {h}x{w} map (padded) is smaller than its 3x3 kernel");
        }
        let reach = |n: usize| ((n - 3) / 2) * 2 + 3;
        let xs = xs.narrow(2, 0, reach(h))?.narrow(3, 0, reach(w))?;
        self.conv.forward(&xs)
    }
}

/// `Upsample2D`: nearest-neighbour to `(h, w)` (twice the input, or the size of the skip
/// connection it meets when the latent side is not a multiple of the UNet's total factor),
/// then a 3x3 convolution.
#[derive(Clone)]
pub struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    pub fn new(vb: VarBuilder, channels: usize) -> Result<Self> {
        Ok(Self {
            conv: conv2d(vb.pp("conv"), channels, channels, 3, 1, 1)?,
        })
    }

    pub fn forward(&self, xs: &Tensor, size: (usize, usize)) -> Result<Tensor> {
        self.conv.forward(&nearest_upsample(xs, size)?)
    }
}

/// Nearest upsampling whose gradient adds up: candle's `upsample_nearest2d` backward assigns
/// its gradient instead of adding it (0.11), which is wrong whenever its input has another
/// consumer, and it refuses non-integer factors. Integer factors go through index_select
/// (whose backward accumulates); other sizes pick torch's source rows floor(i·in/out).
fn nearest_upsample(xs: &Tensor, (h_out, w_out): (usize, usize)) -> Result<Tensor> {
    let (_, _, h, w) = xs.dims4()?;
    let rows: Vec<u32> = (0..h_out).map(|i| (i * h / h_out) as u32).collect();
    let cols: Vec<u32> = (0..w_out).map(|j| (j * w / w_out) as u32).collect();
    let rows = Tensor::from_vec(rows, h_out, xs.device())?;
    let cols = Tensor::from_vec(cols, w_out, xs.device())?;
    xs.index_select(&rows, 2)?.index_select(&cols, 3)
}
