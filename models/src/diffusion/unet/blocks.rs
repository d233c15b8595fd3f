//! The UNet's down, mid and up blocks: resnets, each optionally followed by a
//! cross-attention transformer, and the resampling between resolutions. Down blocks hand
//! every output to the up blocks as skip connections.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::{BlockSpec, UNetSpec};
use super::resnet::{Downsample2D, ResnetBlock2D, Upsample2D};
use super::transformer_2d::{Transformer2DModel, TransformerSpec};

/// The block's cross-attention `Transformer2DModel` (also the motion UNet's).
pub(crate) fn transformer(
    vb: VarBuilder,
    spec: &UNetSpec,
    block: &BlockSpec,
) -> Result<Transformer2DModel> {
    Transformer2DModel::new(
        vb,
        TransformerSpec {
            channels: block.out_channels,
            heads: block.heads,
            layers: block.transformer_layers,
            context_dim: spec.cross_attention_dim,
            groups: spec.groups,
            linear_projection: spec.use_linear_projection,
        },
    )
}

/// `DownBlock2D` (no attention) or `CrossAttnDownBlock2D`.
#[derive(Clone)]
pub struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    downsample: Option<Downsample2D>,
}

impl DownBlock {
    pub fn new(
        vb: VarBuilder,
        spec: &UNetSpec,
        block: &BlockSpec,
        c_in: usize,
        last: bool,
    ) -> Result<Self> {
        let c = block.out_channels;
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for j in 0..spec.layers_per_block {
            let from = if j == 0 { c_in } else { c };
            resnets.push(ResnetBlock2D::new(
                vb.pp(format!("resnets.{j}")),
                from,
                c,
                spec.time_embed_dim,
                spec.groups,
                spec.eps,
            )?);
            if block.cross_attention {
                attentions.push(transformer(vb.pp(format!("attentions.{j}")), spec, block)?);
            }
        }
        let downsample = if last {
            None
        } else {
            Some(Downsample2D::new(
                vb.pp("downsamplers.0"),
                c,
                spec.downsample_padding,
            )?)
        };
        Ok(Self {
            resnets,
            attentions,
            downsample,
        })
    }

    /// Runs the block, pushing each output the up blocks will meet onto `skips`.
    pub fn forward(
        &self,
        xs: &Tensor,
        temb: &Tensor,
        context: &Tensor,
        skips: &mut Vec<Tensor>,
    ) -> Result<Tensor> {
        let mut xs = xs.clone();
        for (j, resnet) in self.resnets.iter().enumerate() {
            xs = resnet.forward(&xs, temb)?;
            if let Some(attn) = self.attentions.get(j) {
                xs = attn.forward(&xs, context)?;
            }
            skips.push(xs.clone());
        }
        if let Some(down) = &self.downsample {
            xs = down.forward(&xs)?;
            skips.push(xs.clone());
        }
        Ok(xs)
    }
}

/// `UNetMidBlock2DCrossAttn`: resnet, then (transformer, resnet) once.
#[derive(Clone)]
pub struct MidBlock {
    first: ResnetBlock2D,
    attention: Transformer2DModel,
    second: ResnetBlock2D,
}

impl MidBlock {
    pub fn new(vb: VarBuilder, spec: &UNetSpec) -> Result<Self> {
        let Some(block) = spec.down.last() else {
            candle_core::bail!("unet: no down blocks");
        };
        let c = block.out_channels;
        let resnet = |i: usize| {
            ResnetBlock2D::new(
                vb.pp(format!("resnets.{i}")),
                c,
                c,
                spec.time_embed_dim,
                spec.groups,
                spec.eps,
            )
        };
        Ok(Self {
            first: resnet(0)?,
            attention: transformer(vb.pp("attentions.0"), spec, block)?,
            second: resnet(1)?,
        })
    }

    pub fn forward(&self, xs: &Tensor, temb: &Tensor, context: &Tensor) -> Result<Tensor> {
        let xs = self.first.forward(xs, temb)?;
        let xs = self.attention.forward(&xs, context)?;
        self.second.forward(&xs, temb)
    }
}

/// `UpBlock2D` or `CrossAttnUpBlock2D`: each resnet takes the running features
/// concatenated with the newest skip connection.
#[derive(Clone)]
pub struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    upsample: Option<Upsample2D>,
}

/// The channel counts an up block is built from (diffusers' names).
pub struct UpChannels {
    pub prev_output: usize,
    /// Channels of the deepest skip it meets last (the down block below's output).
    pub input: usize,
}

impl UpBlock {
    pub fn new(
        vb: VarBuilder,
        spec: &UNetSpec,
        block: &BlockSpec,
        channels: UpChannels,
        last: bool,
    ) -> Result<Self> {
        let c = block.out_channels;
        let layers = spec.layers_per_block + 1;
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for j in 0..layers {
            let skip = if j == layers - 1 { channels.input } else { c };
            let from = if j == 0 { channels.prev_output } else { c };
            resnets.push(ResnetBlock2D::new(
                vb.pp(format!("resnets.{j}")),
                from + skip,
                c,
                spec.time_embed_dim,
                spec.groups,
                spec.eps,
            )?);
            if block.cross_attention {
                attentions.push(transformer(vb.pp(format!("attentions.{j}")), spec, block)?);
            }
        }
        let upsample = if last {
            None
        } else {
            Some(Upsample2D::new(vb.pp("upsamplers.0"), c)?)
        };
        Ok(Self {
            resnets,
            attentions,
            upsample,
        })
    }

    /// Runs the block over its skip connections (popped from the end of `skips`); the
    /// upsampler, if any, grows the result to the size of the next skip left on `skips`.
    pub fn forward(
        &self,
        xs: &Tensor,
        temb: &Tensor,
        context: &Tensor,
        skips: &mut Vec<Tensor>,
    ) -> Result<Tensor> {
        let mut xs = xs.clone();
        for (j, resnet) in self.resnets.iter().enumerate() {
            let Some(skip) = skips.pop() else {
                candle_core::bail!("unet: an up block ran out of skip connections");
            };
            xs = resnet.forward(&Tensor::cat(&[&xs, &skip], 1)?, temb)?;
            if let Some(attn) = self.attentions.get(j) {
                xs = attn.forward(&xs, context)?;
            }
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
