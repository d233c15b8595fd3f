//! diffusers' `UNet2DConditionModel` as SD 1.5, SDXL and SDXL-Turbo configure it: the noise
//! (or velocity) prediction for latents at a timestep, conditioned on prompt embeddings by
//! cross-attention and, for SDXL, on the pooled prompt embedding and the size/crop ids.

pub mod blocks;
pub mod config;
pub mod embeddings;
pub mod resnet;
pub mod transformer_2d;

use std::path::Path;

use candle_core::{DType, Device, Module, Result as CResult, Tensor};
use candle_nn::VarBuilder;

use crate::checkpoint::Checkpoint;
use crate::diffusion::component::{open_component, DIFFUSERS_WEIGHTS};
use crate::diffusion::conv::{conv2d, Conv2d};
use crate::diffusion::group_norm::GroupNorm;
use crate::Result;
use blocks::{DownBlock, MidBlock, UpBlock, UpChannels};
pub use config::{UNetConfig, UNetSpec};
use embeddings::{timestep_embedding, TimestepEmbedding};

/// SDXL's added conditioning: the pooled prompt embedding (text_encoder_2's projection) and
/// the six ids (original height, width, crop top, left, target height, width).
pub struct AddedCond<'a> {
    pub text_embeds: &'a Tensor,
    pub time_ids: &'a Tensor,
}

#[derive(Clone)]
pub struct UNet2DConditionModel {
    spec: UNetSpec,
    conv_in: Conv2d,
    time_embedding: TimestepEmbedding,
    add_embedding: Option<TimestepEmbedding>,
    down: Vec<DownBlock>,
    mid: Option<MidBlock>,
    up: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl UNet2DConditionModel {
    pub fn new(spec: &UNetSpec, vb: VarBuilder) -> CResult<Self> {
        let c0 = spec.down[0].out_channels;
        let add_embedding = match &spec.text_time {
            Some(tt) => Some(TimestepEmbedding::new(
                vb.pp("add_embedding"),
                tt.projection_input_dim,
                spec.time_embed_dim,
            )?),
            None => None,
        };
        let n = spec.down.len();
        let mut down = Vec::with_capacity(n);
        let mut c_in = c0;
        for (i, block) in spec.down.iter().enumerate() {
            down.push(DownBlock::new(
                vb.pp(format!("down_blocks.{i}")),
                spec,
                block,
                c_in,
                i == n - 1,
            )?);
            c_in = block.out_channels;
        }
        let mid = if spec.mid_block {
            Some(MidBlock::new(vb.pp("mid_block"), spec)?)
        } else {
            None
        };
        let mut up = Vec::with_capacity(n);
        let mut prev_output = spec.down[n - 1].out_channels;
        for (i, block) in spec.up.iter().enumerate() {
            // The deepest skip an up block meets comes from the down block one level
            // further up (the first block's own input, conv_in's output, for the last).
            let input = spec.up[(i + 1).min(n - 1)].out_channels;
            up.push(UpBlock::new(
                vb.pp(format!("up_blocks.{i}")),
                spec,
                block,
                UpChannels { prev_output, input },
                i == n - 1,
            )?);
            prev_output = block.out_channels;
        }
        Ok(Self {
            spec: spec.clone(),
            conv_in: conv2d(vb.pp("conv_in"), spec.in_channels, c0, 3, 1, 1)?,
            time_embedding: TimestepEmbedding::new(
                vb.pp("time_embedding"),
                c0,
                spec.time_embed_dim,
            )?,
            add_embedding,
            down,
            mid,
            up,
            conv_norm_out: GroupNorm::new(vb.pp("conv_norm_out"), spec.groups, c0, spec.eps)?,
            conv_out: conv2d(vb.pp("conv_out"), c0, spec.out_channels, 3, 1, 1)?,
        })
    }

    /// The `unet/` directory of a pipeline (config.json and diffusers' weight file), every
    /// missing or misshapen key named.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let (config, ckpt): (UNetConfig, Checkpoint) = open_component(dir, DIFFUSERS_WEIGHTS)?;
        let spec = config.resolve()?;
        let (vb, audit) = ckpt.var_builder(dtype, device);
        let model = Self::new(&spec, vb);
        audit.finish_named(dir, "diffusers UNet2DConditionModel")?;
        Ok(model?)
    }

    pub fn spec(&self) -> &UNetSpec {
        &self.spec
    }

    /// The model's prediction for `sample` [B, C, H, W] at `timesteps` [B] given the prompt
    /// embeddings `context` [B, S, cross_attention_dim] (and SDXL's added conditioning).
    pub fn forward(
        &self,
        sample: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
        added: Option<AddedCond>,
    ) -> CResult<Tensor> {
        let dtype = sample.dtype();
        let c0 = self.spec.down[0].out_channels;
        let t = timestep_embedding(
            timesteps,
            c0,
            self.spec.flip_sin_to_cos,
            self.spec.freq_shift,
        )?;
        let mut temb = self.time_embedding.forward(&t.to_dtype(dtype)?)?;
        match (&self.add_embedding, &self.spec.text_time, added) {
            (Some(add), Some(tt), Some(cond)) => {
                let b = cond.text_embeds.dim(0)?;
                let ids = cond.time_ids.flatten_all()?;
                let time_embeds = timestep_embedding(
                    &ids,
                    tt.time_embed_dim,
                    self.spec.flip_sin_to_cos,
                    self.spec.freq_shift,
                )?
                .reshape((b, ()))?;
                // torch.concat promotes: f32 beside half text embeddings, f64 beside f64.
                let work = match cond.text_embeds.dtype() {
                    DType::F64 => DType::F64,
                    _ => DType::F32,
                };
                let add_in = Tensor::cat(
                    &[
                        &cond.text_embeds.to_dtype(work)?,
                        &time_embeds.to_dtype(work)?,
                    ],
                    1,
                )?
                .to_dtype(dtype)?;
                temb = (temb + add.forward(&add_in)?)?;
            }
            (Some(_), _, None) => candle_core::bail!(
                "this UNet (addition_embed_type text_time, SDXL) needs the pooled text \
                 embedding and the time ids"
            ),
            (None, _, Some(_)) => candle_core::bail!(
                "added conditioning given to a UNet without addition_embed_type text_time"
            ),
            _ => {}
        }
        let mut xs = self.conv_in.forward(sample)?;
        let mut skips = vec![xs.clone()];
        for block in &self.down {
            xs = block.forward(&xs, &temb, context, &mut skips)?;
        }
        if let Some(mid) = &self.mid {
            xs = mid.forward(&xs, &temb, context)?;
        }
        for block in &self.up {
            xs = block.forward(&xs, &temb, context, &mut skips)?;
        }
        let xs = self.conv_norm_out.forward(&xs)?.silu()?;
        self.conv_out.forward(&xs)
    }
}
