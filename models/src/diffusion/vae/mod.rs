//! diffusers' `AutoencoderKL`, the VAE of Stable Diffusion 1.x / 2.x, SDXL, and the
//! AnimateDiff / VideoDPO video generators built on them (frames encoded one by one).
//!
//! `encode` gives the posterior [`DiagonalGaussian`] (mean, log-variance clamped to
//! [-30, 20]); the diffusion model works on `latents = (sample − shift) · scaling_factor`
//! ([`AutoencoderKL::to_latents`]), which [`AutoencoderKL::from_latents`] undoes before
//! [`AutoencoderKL::decode`]. Every op has a backward, so gradients pass through the decoder
//! (and the encoder) as through the other models.

mod blocks;
mod config;

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;

pub use blocks::{upsample_nearest_2x, AttentionNames, SCORES_PER_PASS};
pub use config::{SampleSize, VaeConfig, DOWN_BLOCK, UP_BLOCK};

use super::component::{open_component, DIFFUSERS_WEIGHTS};
use crate::diffusion::conv::{conv2d, Conv2d};
use crate::{Error, Result};

/// The posterior of one encoding: a diagonal Gaussian over the latents, in the layout of
/// the input ([B, latent, h, w] for images, [B, latent, F, h, w] for videos).
#[derive(Debug, Clone)]
pub struct DiagonalGaussian {
    pub mean: Tensor,
    /// Clamped to [-30, 20], as diffusers' `DiagonalGaussianDistribution` does.
    pub logvar: Tensor,
}

impl DiagonalGaussian {
    /// Splits moments [B, 2·latent, ...] into mean and log-variance along dimension 1.
    pub fn from_moments(moments: &Tensor) -> Result<Self> {
        let c = moments.dim(1)?;
        if !c.is_multiple_of(2) {
            return Err(Error::Input(format!(
                "VAE moments have {c} channels: not a mean and a log-variance"
            )));
        }
        Ok(Self {
            mean: moments.narrow(1, 0, c / 2)?,
            logvar: moments.narrow(1, c / 2, c / 2)?.clamp(-30f64, 20f64)?,
        })
    }

    /// exp(logvar / 2).
    pub fn std(&self) -> Result<Tensor> {
        Ok((&self.logvar * 0.5)?.exp()?)
    }

    /// mean + std · noise, with `noise` ~ N(0, 1) of the mean's shape (diffusers draws it
    /// inside `sample(generator)`; here the caller owns the randomness).
    pub fn sample(&self, noise: &Tensor) -> Result<Tensor> {
        if noise.dims() != self.mean.dims() {
            return Err(Error::Input(format!(
                "VAE sample: noise {:?} does not match the posterior {:?}",
                noise.dims(),
                self.mean.dims()
            )));
        }
        let noise = noise.to_dtype(self.mean.dtype())?;
        Ok((&self.mean + self.std()?.mul(&noise)?)?)
    }

    /// The most likely latent: the mean.
    pub fn mode(&self) -> Tensor {
        self.mean.clone()
    }
}

/// diffusers `AutoencoderKL`.
pub struct AutoencoderKL {
    config: VaeConfig,
    encoder: blocks::Encoder,
    decoder: blocks::Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    dtype: DType,
    device: Device,
}

impl AutoencoderKL {
    /// Loads a diffusers component directory (`vae/`): `config.json` and
    /// `diffusion_pytorch_model.safetensors` (or the `.fp16` variant), weights in `dtype`.
    /// Checkpoints with the legacy attention names are recognised; missing or misshapen keys
    /// are all named, with the layout that was expected.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let (config, ckpt) = open_component::<VaeConfig>(dir, DIFFUSERS_WEIGHTS)?;
        config.validate()?;
        let names = AttentionNames::detect(ckpt.keys());
        let (vb, audit) = ckpt.var_builder(dtype, device);
        let built = Self::new(config, vb, names);
        audit.finish_named(dir, names.layout())?;
        built
    }

    /// Builds the model from `vb` (a checkpoint's, or a `VarMap`'s for training from scratch).
    pub fn new(config: VaeConfig, vb: VarBuilder, names: AttentionNames) -> Result<Self> {
        config.validate()?;
        let latent = config.latent_channels;
        let conv1x1 = |vb: VarBuilder, c: usize| conv2d(vb, c, c, 1, 1, 0);
        Ok(Self {
            encoder: blocks::Encoder::new(vb.pp("encoder"), &config, names)?,
            decoder: blocks::Decoder::new(vb.pp("decoder"), &config, names)?,
            quant_conv: if config.use_quant_conv {
                Some(conv1x1(vb.pp("quant_conv"), 2 * latent)?)
            } else {
                None
            },
            post_quant_conv: if config.use_post_quant_conv {
                Some(conv1x1(vb.pp("post_quant_conv"), latent)?)
            } else {
                None
            },
            dtype: vb.dtype(),
            device: vb.device().clone(),
            config,
        })
    }

    /// Bounds the mid blocks' attention scores held at once to `n` elements (default
    /// [`SCORES_PER_PASS`]): the queries are taken in runs that fit. The result is the same;
    /// without a gradient graph, peak memory follows `n`.
    pub fn with_attention_scores_per_pass(mut self, n: usize) -> Self {
        self.encoder.set_scores_per_pass(n);
        self.decoder.set_scores_per_pass(n);
        self
    }

    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// The dtype of the weights (inputs are converted to it).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn latent_channels(&self) -> usize {
        self.config.latent_channels
    }

    /// 2^(blocks − 1): 8 for SD / SDXL.
    pub fn downsampling_factor(&self) -> usize {
        self.config.downsampling_factor()
    }

    /// The posterior of images x [B, in_channels, H, W] in [-1, 1]; H and W must be
    /// multiples of [`Self::downsampling_factor`] (SD's multiples of 8).
    pub fn encode(&self, x: &Tensor) -> Result<DiagonalGaussian> {
        DiagonalGaussian::from_moments(&self.moments(x)?)
    }

    /// encoder → quant_conv: [B, 2·latent, H/f, W/f].
    fn moments(&self, x: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = x.dims4().map_err(|_| {
            Error::Input(format!(
                "VAE encode wants images [B, C, H, W], got {:?}",
                x.dims()
            ))
        })?;
        let f = self.downsampling_factor();
        if c != self.config.in_channels
            || !h.is_multiple_of(f)
            || !w.is_multiple_of(f)
            || h == 0
            || w == 0
        {
            return Err(Error::Input(format!(
                "VAE encode wants [B, {}, H, W] with H and W multiples of {f}, got {:?}",
                self.config.in_channels,
                x.dims()
            )));
        }
        let h = self.encoder.forward(&x.to_dtype(self.dtype)?)?;
        Ok(match &self.quant_conv {
            Some(q) => q.forward(&h)?,
            None => h,
        })
    }

    /// Images [B, out_channels, h·f, w·f] (about [-1, 1]) from sample-space latents
    /// z [B, latent, h, w] (undo the scaling with [`Self::from_latents`] first).
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let (_, c, _, _) = z.dims4().map_err(|_| {
            Error::Input(format!(
                "VAE decode wants latents [B, C, h, w], got {:?}",
                z.dims()
            ))
        })?;
        if c != self.config.latent_channels {
            return Err(Error::Input(format!(
                "VAE decode wants {} latent channels, got {:?}",
                self.config.latent_channels,
                z.dims()
            )));
        }
        let z = z.to_dtype(self.dtype)?;
        let z = match &self.post_quant_conv {
            Some(p) => p.forward(&z)?,
            None => z,
        };
        Ok(self.decoder.forward(&z)?)
    }

    /// The posterior of videos [B, C, F, H, W], frame by frame (AnimateDiff, VideoDPO):
    /// the B·F frames go through [`Self::encode`] at most `frames_per_pass` at a time, so
    /// that memory does not grow with the clip; mean and logvar are [B, latent, F, h, w].
    pub fn encode_frames(
        &self,
        video: &Tensor,
        frames_per_pass: usize,
    ) -> Result<DiagonalGaussian> {
        let (b, c, f, h, w) = video.dims5().map_err(|_| {
            Error::Input(format!(
                "VAE encode_frames wants videos [B, C, F, H, W], got {:?}",
                video.dims()
            ))
        })?;
        let images = video.permute((0, 2, 1, 3, 4))?.reshape((b * f, c, h, w))?;
        let moments = in_passes(&images, frames_per_pass, |x| self.moments(x))?;
        DiagonalGaussian::from_moments(&frames_of(&moments, b, f)?)
    }

    /// Videos [B, out_channels, F, H, W] from sample-space latents [B, latent, F, h, w],
    /// frame by frame, at most `frames_per_pass` frames at a time (AnimateDiff's
    /// `decode_latents` after its 1 / scaling_factor).
    pub fn decode_frames(&self, z: &Tensor, frames_per_pass: usize) -> Result<Tensor> {
        let (b, c, f, h, w) = z.dims5().map_err(|_| {
            Error::Input(format!(
                "VAE decode_frames wants latents [B, C, F, h, w], got {:?}",
                z.dims()
            ))
        })?;
        let latents = z.permute((0, 2, 1, 3, 4))?.reshape((b * f, c, h, w))?;
        let images = in_passes(&latents, frames_per_pass, |x| self.decode(x))?;
        frames_of(&images, b, f)
    }

    /// What the diffusion model sees: (sample − shift_factor) · scaling_factor, or with
    /// per-channel `latents_mean` / `latents_std`, (sample − mean_c) · scaling_factor / std_c.
    /// Channels are dimension 1 ([B, latent, h, w] or [B, latent, F, h, w]).
    pub fn to_latents(&self, sample: &Tensor) -> Result<Tensor> {
        let sf = self.config.scaling_factor;
        match self.channel_stats(sample)? {
            Some((mean, std)) => Ok((sample.broadcast_sub(&mean)?.broadcast_div(&std)? * sf)?),
            None => {
                let shift = self.config.shift_factor.unwrap_or(0.0);
                Ok(((sample - shift)? * sf)?)
            }
        }
    }

    /// The inverse of [`Self::to_latents`]: what [`Self::decode`] takes.
    pub fn from_latents(&self, latents: &Tensor) -> Result<Tensor> {
        let sf = self.config.scaling_factor;
        match self.channel_stats(latents)? {
            Some((mean, std)) => Ok((latents / sf)?.broadcast_mul(&std)?.broadcast_add(&mean)?),
            None => {
                let shift = self.config.shift_factor.unwrap_or(0.0);
                Ok(((latents / sf)? + shift)?)
            }
        }
    }

    /// `latents_mean`, `latents_std` shaped [1, latent, 1, ...] like `x`, when configured.
    fn channel_stats(&self, x: &Tensor) -> Result<Option<(Tensor, Tensor)>> {
        let (Some(mean), Some(std)) = (&self.config.latents_mean, &self.config.latents_std) else {
            return Ok(None);
        };
        let c = self.config.latent_channels;
        if x.rank() < 2 || x.dim(1)? != c {
            return Err(Error::Input(format!(
                "VAE latents want {c} channels in dimension 1, got {:?}",
                x.dims()
            )));
        }
        let mut shape = vec![1usize; x.rank()];
        shape[1] = c;
        let t = |v: &[f64]| -> Result<Tensor> {
            Ok(Tensor::from_slice(v, c, x.device())?
                .to_dtype(x.dtype())?
                .reshape(shape.as_slice())?)
        };
        Ok(Some((t(mean)?, t(std)?)))
    }
}

/// `f` over `x` split along dimension 0 into runs of at most `per_pass`, concatenated.
fn in_passes(x: &Tensor, per_pass: usize, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    if per_pass == 0 {
        return Err(Error::Input("frames_per_pass is 0".into()));
    }
    let n = x.dim(0)?;
    let mut parts = Vec::with_capacity(n.div_ceil(per_pass));
    for start in (0..n).step_by(per_pass) {
        parts.push(f(&x.narrow(0, start, per_pass.min(n - start))?)?);
    }
    if parts.len() == 1 {
        return Ok(parts.pop().expect("one part"));
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// [B·F, C, h, w] → [B, C, F, h, w].
fn frames_of(x: &Tensor, b: usize, f: usize) -> Result<Tensor> {
    let (_, c, h, w) = x.dims4()?;
    Ok(x.reshape((b, f, c, h, w))?.permute((0, 2, 1, 3, 4))?)
}
