//! The motion UNet's down, mid and up blocks (`CrossAttnDownBlockMotion`, `DownBlockMotion`,
//! `UNetMidBlockCrossAttnMotion`, `CrossAttnUpBlockMotion`, `UpBlockMotion`): the image UNet's
//! resnets, cross-attention transformers and resamplers over all frames at once ([B·F, C, H,
//! W]), with a motion module after each resnet (and its transformer) mixing the frames.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::{MotionBlockSpec, MotionSpec};
use super::transformer_3d::AnimateDiffTransformer3D;
use crate::diffusion::unet::blocks::{transformer, UpChannels};
use crate::diffusion::unet::config::BlockSpec;
use crate::diffusion::unet::resnet::{Downsample2D, ResnetBlock2D, Upsample2D};
use crate::diffusion::unet::transformer_2d::Transformer2DModel;

fn motion_module(
    vb: VarBuilder,
    spec: &MotionSpec,
    channels: usize,
    motion: MotionBlockSpec,
) -> Result<AnimateDiffTransformer3D> {
    AnimateDiffTransformer3D::new(
        vb,
        channels,
        motion.heads,
        motion.layers,
        spec.unet.groups,
        spec.max_seq_length,
    )
}

fn resnet(vb: VarBuilder, spec: &MotionSpec, c_in: usize, c_out: usize) -> Result<ResnetBlock2D> {
    let u = &spec.unet;
    ResnetBlock2D::new(vb, c_in, c_out, u.time_embed_dim, u.groups, u.eps)
}

/// One resnet with what follows it: the optional cross-attention, then the motion module.
#[derive(Clone)]
struct Layer {
    resnet: ResnetBlock2D,
    attention: Option<Transformer2DModel>,
    motion: AnimateDiffTransformer3D,
}

impl Layer {
    fn new(
        vb: &VarBuilder,
        spec: &MotionSpec,
        block: &BlockSpec,
        motion: MotionBlockSpec,
        j: usize,
        c_in: usize,
    ) -> Result<Self> {
        let c = block.out_channels;
        Ok(Self {
            resnet: resnet(vb.pp(format!("resnets.{j}")), spec, c_in, c)?,
            attention: if block.cross_attention {
                Some(transformer(
                    vb.pp(format!("attentions.{j}")),
                    &spec.unet,
                    block,
                )?)
            } else {
                None
            },
            motion: motion_module(vb.pp(format!("motion_modules.{j}")), spec, c, motion)?,
        })
    }

    fn forward(
        &self,
        xs: &Tensor,
        temb: &Tensor,
        context: &Tensor,
        frames: usize,
    ) -> Result<Tensor> {
        let mut xs = self.resnet.forward(xs, temb)?;
        if let Some(attn) = &self.attention {
            xs = attn.forward(&xs, context)?;
        }
        self.motion.forward(&xs, frames)
    }
}

#[derive(Clone)]
pub struct MotionDownBlock {
    layers: Vec<Layer>,
    downsample: Option<Downsample2D>,
}

impl MotionDownBlock {
    pub fn new(
        vb: VarBuilder,
        spec: &MotionSpec,
        i: usize,
        c_in: usize,
        last: bool,
    ) -> Result<Self> {
        let block = &spec.unet.down[i];
        let c = block.out_channels;
        let layers = (0..spec.unet.layers_per_block)
            .map(|j| {
                let from = if j == 0 { c_in } else { c };
                Layer::new(&vb, spec, block, spec.down[i], j, from)
            })
            .collect::<Result<_>>()?;
        let downsample = if last {
            None
        } else {
            Some(Downsample2D::new(
                vb.pp("downsamplers.0"),
                c,
                spec.unet.downsample_padding,
            )?)
        };
        Ok(Self { layers, downsample })
    }

    /// Runs the block, pushing each output the up blocks will meet onto `skips`.
    pub fn forward(
        &self,
        xs: &Tensor,
        temb: &Tensor,
        context: &Tensor,
        frames: usize,
        skips: &mut Vec<Tensor>,
    ) -> Result<Tensor> {
        let mut xs = xs.clone();
        for layer in &self.layers {
            xs = layer.forward(&xs, temb, context, frames)?;
            skips.push(xs.clone());
        }
        if let Some(down) = &self.downsample {
            xs = down.forward(&xs)?;
            skips.push(xs.clone());
        }
        Ok(xs)
    }
}

/// `UNetMidBlockCrossAttnMotion`: resnet, then cross-attention, motion module, resnet.
#[derive(Clone)]
pub struct MotionMidBlock {
    first: ResnetBlock2D,
    attention: Transformer2DModel,
    motion: AnimateDiffTransformer3D,
    second: ResnetBlock2D,
}

impl MotionMidBlock {
    pub fn new(vb: VarBuilder, spec: &MotionSpec, motion: MotionBlockSpec) -> Result<Self> {
        let Some(block) = spec.unet.down.last() else {
            candle_core::bail!("unet: no down blocks");
        };
        let c = block.out_channels;
        Ok(Self {
            first: resnet(vb.pp("resnets.0"), spec, c, c)?,
            attention: transformer(vb.pp("attentions.0"), &spec.unet, block)?,
            motion: motion_module(vb.pp("motion_modules.0"), spec, c, motion)?,
            second: resnet(vb.pp("resnets.1"), spec, c, c)?,
        })
    }

    pub fn forward(
        &self,
        xs: &Tensor,
        temb: &Tensor,
        context: &Tensor,
        frames: usize,
    ) -> Result<Tensor> {
        let xs = self.first.forward(xs, temb)?;
        let xs = self.attention.forward(&xs, context)?;
        let xs = self.motion.forward(&xs, frames)?;
        self.second.forward(&xs, temb)
    }
}

#[derive(Clone)]
pub struct MotionUpBlock {
    layers: Vec<Layer>,
    upsample: Option<Upsample2D>,
}

impl MotionUpBlock {
    pub fn new(
        vb: VarBuilder,
        spec: &MotionSpec,
        i: usize,
        channels: UpChannels,
        last: bool,
    ) -> Result<Self> {
        let block = &spec.unet.up[i];
        let c = block.out_channels;
        let n = spec.unet.layers_per_block + 1;
        let layers = (0..n)
            .map(|j| {
                let skip = if j == n - 1 { channels.input } else { c };
                let from = if j == 0 { channels.prev_output } else { c };
                Layer::new(&vb, spec, block, spec.up[i], j, from + skip)
            })
            .collect::<Result<_>>()?;
        let upsample = if last {
            None
        } else {
            Some(Upsample2D::new(vb.pp("upsamplers.0"), c)?)
        };
        Ok(Self { layers, upsample })
    }

    /// Runs the block over its skip connections (popped from the end of `skips`); the
    /// upsampler, if any, grows the result to the size of the next skip left on `skips`.
    pub fn forward(
        &self,
        xs: &Tensor,
        temb: &Tensor,
        context: &Tensor,
        frames: usize,
        skips: &mut Vec<Tensor>,
    ) -> Result<Tensor> {
        let mut xs = xs.clone();
        for layer in &self.layers {
            let Some(skip) = skips.pop() else {
                candle_core::bail!("unet: an up block ran out of skip connections");
            };
            xs = layer.forward(&Tensor::cat(&[&xs, &skip], 1)?, temb, context, frames)?;
        }
        if let Some(up) = &self.upsample {
            let size = match skips.last() {
                Some(next) => {
                    let (_, _, h, w) = next.dims4()?;
                    (h, w)
                }
                None => {
                    let (_, _, h, w) = xs.dims4()?;
                    (2 * h, 2 * w)
                }
            };
            xs = up.forward(&xs, size)?;
        }
        Ok(xs)
    }
}
