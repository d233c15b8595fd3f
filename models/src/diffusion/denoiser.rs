//! A pipeline's `unet/`, whichever of the two UNets its config names: the image
//! `UNet2DConditionModel` (latents [B, C, H, W]) or AnimateDiff's `UNetMotionModel` (videos
//! [B, C, F, H, W]). Diffusion-DPO trains either through this one type.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Result as CResult, Tensor};
use candle_nn::VarBuilder;
use serde_json::Value;

use crate::diffusion::unet::{AddedCond, UNet2DConditionModel, UNetConfig, UNetSpec};
use crate::diffusion::unet_motion::{MotionSpec, UNetMotionModel};
use crate::{Error, Result};

/// A `unet/config.json` checked and resolved, by its `_class_name`.
#[derive(Debug, Clone, PartialEq)]
pub enum DenoiserSpec {
    Image(UNetSpec),
    Motion(MotionSpec),
}

impl DenoiserSpec {
    /// `UNetMotionModel` configs are the motion UNet; any other class name (or none) is read
    /// as a `UNet2DConditionModel`, whose own checks name what it does not support.
    pub fn from_config(config: &Value) -> Result<Self> {
        match config.get("_class_name").and_then(Value::as_str) {
            Some("UNetMotionModel") => Ok(Self::Motion(MotionSpec::from_config(config)?)),
            _ => {
                let cfg: UNetConfig = serde_json::from_value(config.clone())
                    .map_err(|e| Error::Config(format!("unet: {e}")))?;
                Ok(Self::Image(cfg.resolve()?))
            }
        }
    }

    /// The spatial UNet's settings (the motion UNet's image part).
    pub fn unet(&self) -> &UNetSpec {
        match self {
            Self::Image(spec) => spec,
            Self::Motion(spec) => &spec.unet,
        }
    }

    pub fn is_video(&self) -> bool {
        matches!(self, Self::Motion(_))
    }
}

#[derive(Clone)]
pub enum Denoiser {
    Image(UNet2DConditionModel),
    Motion(UNetMotionModel),
}

impl Denoiser {
    pub fn new(spec: &DenoiserSpec, vb: VarBuilder) -> CResult<Self> {
        Ok(match spec {
            DenoiserSpec::Image(s) => Self::Image(UNet2DConditionModel::new(s, vb)?),
            DenoiserSpec::Motion(s) => Self::Motion(UNetMotionModel::new(s, vb)?),
        })
    }

    /// The UNet built on `tensors` (a trainee's variables and frozen weights).
    pub fn from_tensors(
        spec: &DenoiserSpec,
        tensors: HashMap<String, Tensor>,
        dtype: DType,
        device: &Device,
    ) -> CResult<Self> {
        Self::new(spec, VarBuilder::from_tensors(tensors, dtype, device))
    }

    /// The `unet/` directory of a pipeline, either kind, every missing key named.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let config: Value =
            serde_json::from_str(&text).map_err(|source| Error::Json { path, source })?;
        Ok(match config.get("_class_name").and_then(Value::as_str) {
            Some("UNetMotionModel") => Self::Motion(UNetMotionModel::load(dir, dtype, device)?),
            _ => Self::Image(UNet2DConditionModel::load(dir, dtype, device)?),
        })
    }

    /// The prediction for `sample` (images [B, C, H, W] or, for the motion UNet, videos
    /// [B, C, F, H, W]) at `timesteps` [B] given one prompt embedding per sample.
    pub fn forward(
        &self,
        sample: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
        added: Option<AddedCond>,
    ) -> CResult<Tensor> {
        match (self, added) {
            (Self::Image(unet), added) => unet.forward(sample, timesteps, context, added),
            (Self::Motion(unet), None) => unet.forward(sample, timesteps, context),
            (Self::Motion(_), Some(_)) => candle_core::bail!(
                "the motion UNet (SD 1.5 AnimateDiff) takes no added conditioning"
            ),
        }
    }
}
