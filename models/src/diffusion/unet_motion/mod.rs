//! diffusers' `UNetMotionModel` (AnimateDiff on SD 1.5): the image UNet's blocks run over
//! every frame at once, with motion modules (`AnimateDiffTransformer3D`) after each resnet
//! mixing the frames of each pixel. Latents are videos [B, C, F, H, W]; the prediction has
//! their shape.

pub mod blocks;
pub mod config;
pub mod transformer_3d;

use std::path::Path;

use candle_core::{DType, Device, Module, Result as CResult, Tensor};
use candle_nn::VarBuilder;
use serde_json::Value;

use crate::checkpoint::Checkpoint;
use crate::diffusion::component::{open_component, DIFFUSERS_WEIGHTS};
use crate::diffusion::conv::{conv2d, Conv2d};
use crate::diffusion::group_norm::GroupNorm;
use crate::diffusion::unet::blocks::{MidBlock, UpChannels};
use crate::diffusion::unet::embeddings::{timestep_embedding, TimestepEmbedding};
use crate::Result;
use blocks::{MotionDownBlock, MotionMidBlock, MotionUpBlock};
pub use config::{MotionBlockSpec, MotionSpec};

/// `use_motion_mid_block` true (AnimateDiff v2's adapters) or false (v1's: the image UNet's).
#[derive(Clone)]
enum Mid {
    Motion(MotionMidBlock),
    Image(MidBlock),
}

#[derive(Clone)]
pub struct UNetMotionModel {
    spec: MotionSpec,
    conv_in: Conv2d,
    time_embedding: TimestepEmbedding,
    down: Vec<MotionDownBlock>,
    mid: Mid,
    up: Vec<MotionUpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl UNetMotionModel {
    pub fn new(spec: &MotionSpec, vb: VarBuilder) -> CResult<Self> {
        let u = &spec.unet;
        let c0 = u.down[0].out_channels;
        let n = u.down.len();
        let mut down = Vec::with_capacity(n);
        let mut c_in = c0;
        for (i, block) in u.down.iter().enumerate() {
            down.push(MotionDownBlock::new(
                vb.pp(format!("down_blocks.{i}")),
                spec,
                i,
                c_in,
                i == n - 1,
            )?);
            c_in = block.out_channels;
        }
        let mid = match spec.mid {
            Some(motion) => Mid::Motion(MotionMidBlock::new(vb.pp("mid_block"), spec, motion)?),
            None => Mid::Image(MidBlock::new(vb.pp("mid_block"), u)?),
        };
        let mut up = Vec::with_capacity(n);
        let mut prev_output = u.down[n - 1].out_channels;
        for (i, block) in u.up.iter().enumerate() {
            // As in the image UNet: the deepest skip an up block meets is the output of the
            // down block one level further up.
            let input = u.up[(i + 1).min(n - 1)].out_channels;
            up.push(MotionUpBlock::new(
                vb.pp(format!("up_blocks.{i}")),
                spec,
                i,
                UpChannels { prev_output, input },
                i == n - 1,
            )?);
            prev_output = block.out_channels;
        }
        Ok(Self {
            spec: spec.clone(),
            conv_in: conv2d(vb.pp("conv_in"), u.in_channels, c0, 3, 1, 1)?,
            time_embedding: TimestepEmbedding::new(vb.pp("time_embedding"), c0, u.time_embed_dim)?,
            down,
            mid,
            up,
            conv_norm_out: GroupNorm::new(vb.pp("conv_norm_out"), u.groups, c0, u.eps)?,
            conv_out: conv2d(vb.pp("conv_out"), c0, u.out_channels, 3, 1, 1)?,
        })
    }

    /// The `unet/` directory of an AnimateDiff pipeline (config.json with `_class_name`
    /// `UNetMotionModel`, diffusers' weight file), every missing or misshapen key named.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let (config, ckpt): (Value, Checkpoint) = open_component(dir, DIFFUSERS_WEIGHTS)?;
        let spec = MotionSpec::from_config(&config)?;
        let (vb, audit) = ckpt.var_builder(dtype, device);
        let model = Self::new(&spec, vb);
        audit.finish_named(dir, "diffusers UNetMotionModel")?;
        Ok(model?)
    }

    pub fn spec(&self) -> &MotionSpec {
        &self.spec
    }

    /// The prediction for videos `sample` [B, C, F, H, W] at `timesteps` [B] given the prompt
    /// embeddings `context` [B, S, cross_attention_dim], one prompt per video (diffusers'
    /// AnimateDiff pipeline repeats each prompt per frame before calling the UNet; this does
    /// that itself).
    pub fn forward(
        &self,
        sample: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
    ) -> CResult<Tensor> {
        let (b, c, frames, h, w) = sample.dims5()?;
        let dtype = sample.dtype();
        let u = &self.spec.unet;
        let c0 = u.down[0].out_channels;
        if context.dim(0)? != b || timesteps.dims() != [b] {
            candle_core::bail!(
                "motion UNet: {b} videos need {b} timesteps and {b} prompt embeddings, got {:?} \
                 and {:?}",
                timesteps.dims(),
                context.dims()
            );
        }
        let t = timestep_embedding(timesteps, c0, u.flip_sin_to_cos, u.freq_shift)?;
        let temb = self.time_embedding.forward(&t.to_dtype(dtype)?)?;
        let per_frame = |x: &Tensor| -> CResult<Tensor> {
            let (_, rest) = x.dims().split_at(1);
            let mut to = vec![b, frames];
            to.extend_from_slice(rest);
            let mut flat = vec![b * frames];
            flat.extend_from_slice(rest);
            x.unsqueeze(1)?
                .broadcast_as(to.as_slice())?
                .contiguous()?
                .reshape(flat.as_slice())
        };
        let temb = per_frame(&temb)?;
        let context = per_frame(context)?;
        let xs = sample
            .permute((0, 2, 1, 3, 4))?
            .reshape((b * frames, c, h, w))?;
        let mut xs = self.conv_in.forward(&xs)?;
        let mut skips = vec![xs.clone()];
        for block in &self.down {
            xs = block.forward(&xs, &temb, &context, frames, &mut skips)?;
        }
        xs = match &self.mid {
            Mid::Motion(mid) => mid.forward(&xs, &temb, &context, frames)?,
            Mid::Image(mid) => mid.forward(&xs, &temb, &context)?,
        };
        for block in &self.up {
            xs = block.forward(&xs, &temb, &context, frames, &mut skips)?;
        }
        let xs = self.conv_norm_out.forward(&xs)?.silu()?;
        let out = self.conv_out.forward(&xs)?;
        let (_, c_out, h, w) = out.dims4()?;
        out.reshape((b, frames, c_out, h, w))?
            .permute((0, 2, 1, 3, 4))?
            .contiguous()
    }
}
