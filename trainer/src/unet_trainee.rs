//! A diffusers UNet as the loop's [`Trainee`]: every weight a `Var` (full fine-tuning, as
//! DiffusionDPO's train.py trains SD 1.5 and SDXL), written back in diffusers' layout
//! (`unet/config.json`, `unet/diffusion_pytorch_model.safetensors`) so that
//! `UNet2DConditionModel.from_pretrained(OUT/unet)` and our loader read the result.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use serde_json::{json, Value};
use unireward_models::checkpoint::load_all;
use unireward_models::diffusion::component::{open_component, DIFFUSERS_WEIGHTS};
use unireward_models::diffusion::unet::{UNet2DConditionModel, UNetConfig, UNetSpec};

use crate::memory_estimate::{MemoryEstimate, StepShape};
use crate::trainee::Trainee;
use crate::{Error, Result};

/// Where a pipeline keeps its UNet, and the file the trained one is written to.
pub const UNET_DIR: &str = "unet";
pub const UNET_WEIGHTS: &str = "diffusion_pytorch_model.safetensors";

pub struct UNetTrainee {
    spec: UNetSpec,
    /// Sorted by name: the optimizer's moments are saved in this order.
    vars: Vec<(String, Var)>,
    dtype: DType,
    device: Device,
    model: UNet2DConditionModel,
}

impl UNetTrainee {
    /// The UNet of the pipeline in `pipeline` (its `unet/` directory), every weight trained,
    /// in `dtype`.
    pub fn load(pipeline: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let dir = pipeline.join(UNET_DIR);
        let (config, ckpt): (UNetConfig, _) = open_component(&dir, DIFFUSERS_WEIGHTS)?;
        let spec = config.resolve()?;
        let tensors = load_all(&ckpt, device)?;
        let mut vars: Vec<(String, Var)> = tensors
            .into_iter()
            .map(|(k, t)| Ok((k, Var::from_tensor(&t.to_dtype(dtype)?)?)))
            .collect::<Result<_>>()?;
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let model = build(&spec, &vars, dtype, device)
            .map_err(|e| Error::Config(format!("{}: {e}", dir.display())))?;
        Ok(Self {
            spec,
            vars,
            dtype,
            device: device.clone(),
            model,
        })
    }

    pub fn spec(&self) -> &UNetSpec {
        &self.spec
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }
}

fn build(
    spec: &UNetSpec,
    vars: &[(String, Var)],
    dtype: DType,
    device: &Device,
) -> candle_core::Result<UNet2DConditionModel> {
    let tensors: HashMap<String, Tensor> = vars
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    UNet2DConditionModel::new(spec, VarBuilder::from_tensors(tensors, dtype, device))
}

fn weights_path(dir: &Path) -> PathBuf {
    dir.join(UNET_DIR).join(UNET_WEIGHTS)
}

impl Trainee for UNetTrainee {
    type Model = UNet2DConditionModel;

    fn model(&self) -> &UNet2DConditionModel {
        &self.model
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn trained_vars(&self) -> Result<Vec<(String, Var)>> {
        Ok(self.vars.clone())
    }

    fn settings(&self) -> Value {
        json!({"dtype": format!("{:?}", self.dtype), "trained": "unet"})
    }

    /// Weights, gradients and AdamW's moments are known exactly; the UNet's activations are
    /// not modelled (they depend on the latent size and every block's attention), so no
    /// estimate is claimed.
    fn memory_estimate(&self, _shape: StepShape) -> Result<Option<MemoryEstimate>> {
        Ok(None)
    }

    fn write_trained(&self, source_dir: &Path, dir: &Path) -> Result<()> {
        let unet = dir.join(UNET_DIR);
        std::fs::create_dir_all(&unet).map_err(|e| Error::io(&unet, e))?;
        let config = source_dir.join(UNET_DIR).join("config.json");
        std::fs::copy(&config, unet.join("config.json")).map_err(|e| Error::io(&config, e))?;
        let tensors: HashMap<String, Tensor> = self
            .vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        candle_core::safetensors::save(&tensors, weights_path(dir))?;
        Ok(())
    }

    fn restore(&mut self, dir: &Path) -> Result<()> {
        let path = weights_path(dir);
        if !path.is_file() {
            return Err(Error::Resume(format!("{} is missing", path.display())));
        }
        let saved = candle_core::safetensors::load(&path, &self.device)?;
        for (name, var) in &self.vars {
            let value = saved.get(name).ok_or_else(|| {
                Error::Resume(format!("{} holds no tensor {name}", path.display()))
            })?;
            if value.dims() != var.dims() {
                return Err(Error::Resume(format!(
                    "{}: {name} is {:?}, the model's is {:?}",
                    path.display(),
                    value.dims(),
                    var.dims()
                )));
            }
            var.set(&value.to_dtype(self.dtype)?)?;
        }
        Ok(())
    }
}
