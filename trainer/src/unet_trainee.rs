//! A diffusers UNet as the loop's [`Trainee`]: every weight a `Var` (full fine-tuning, as
//! DiffusionDPO's train.py trains SD 1.5 and SDXL), written back in diffusers' layout
//! (`unet/config.json`, `unet/diffusion_pytorch_model.safetensors`) so that
//! `UNet2DConditionModel.from_pretrained(OUT/unet)` and our loader read the result; or, with
//! LoRA, the weights frozen and adapters on the targeted linear layers trained (PEFT's
//! base(x) + s·B(A(x)), through `models::linear`'s branch), written as diffusers saves a
//! UNet's LoRA (`pytorch_lora_weights.safetensors`, which `pipe.load_lora_weights(OUT)`
//! reads). The adapter's base is the starting UNet, so it is also the DPO reference.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use serde_json::{json, Value};
use unireward_models::checkpoint::load_all;
use unireward_models::diffusion::component::{open_component, DIFFUSERS_WEIGHTS};
use unireward_models::diffusion::unet::{UNet2DConditionModel, UNetConfig, UNetSpec};
use unireward_models::linear::{LORA_A, LORA_B, LORA_SCALE};

use crate::checkpoint_keys::Shapes;
use crate::lora::{read_diffusers, restore_diffusers, save_diffusers, LoraAdapter, LoraConfig};
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
    /// With LoRA: the adapters (then `vars` are theirs and the weights are frozen).
    lora: Option<LoraAdapter>,
}

impl UNetTrainee {
    /// The UNet of the pipeline in `pipeline` (its `unet/` directory), every weight trained,
    /// in `dtype`.
    pub fn load(pipeline: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let dir = pipeline.join(UNET_DIR);
        let (spec, tensors) = frozen_tensors(&dir, dtype, device)?;
        let mut vars: Vec<(String, Var)> = tensors
            .into_iter()
            .map(|(k, t)| Ok((k, Var::from_tensor(&t)?)))
            .collect::<Result<_>>()?;
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let tensors = vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        let model = build(&spec, tensors, dtype, device)
            .map_err(|e| Error::Config(format!("{}: {e}", dir.display())))?;
        Ok(Self {
            spec,
            vars,
            dtype,
            device: device.clone(),
            model,
            lora: None,
        })
    }

    /// The UNet of `pipeline` frozen in `dtype`, with fresh LoRA adapters (A's values from
    /// `seed` and each module's path) on the linear layers `config.targets` name.
    pub fn load_with_lora(
        pipeline: &Path,
        dtype: DType,
        device: &Device,
        config: &LoraConfig,
        seed: u64,
    ) -> Result<Self> {
        let dir = pipeline.join(UNET_DIR);
        let (spec, tensors) = frozen_tensors(&dir, dtype, device)?;
        let adapter =
            LoraAdapter::init_by_suffix(config, &shapes_of(&tensors), dtype, device, seed)
                .map_err(|e| Error::Config(format!("{}: {e}", dir.display())))?;
        let model = build(&spec, with_branches(tensors, &adapter)?, dtype, device)
            .map_err(|e| Error::Config(format!("{}: {e}", dir.display())))?;
        Ok(Self {
            spec,
            vars: adapter.vars(),
            dtype,
            device: device.clone(),
            model,
            lora: Some(adapter),
        })
    }

    pub fn lora(&self) -> Option<&LoraAdapter> {
        self.lora.as_ref()
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
    tensors: HashMap<String, Tensor>,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<UNet2DConditionModel> {
    UNet2DConditionModel::new(spec, VarBuilder::from_tensors(tensors, dtype, device))
}

/// The UNet in `unet_dir` with the adapter diffusers saved in `adapter_dir`
/// (`pytorch_lora_weights.safetensors`, ours or diffusers') applied unmerged, for inference.
pub fn load_adapted_unet(
    unet_dir: &Path,
    adapter_dir: &Path,
    dtype: DType,
    device: &Device,
) -> Result<UNet2DConditionModel> {
    let (spec, tensors) = frozen_tensors(unet_dir, dtype, device)?;
    let adapter = read_diffusers(adapter_dir, &shapes_of(&tensors), dtype, device)?;
    build(&spec, with_branches(tensors, &adapter)?, dtype, device)
        .map_err(|e| Error::Config(format!("{}: {e}", unet_dir.display())))
}

/// A UNet directory's config and weights (in `dtype`), as plain tensors.
fn frozen_tensors(
    dir: &Path,
    dtype: DType,
    device: &Device,
) -> Result<(UNetSpec, HashMap<String, Tensor>)> {
    let (config, ckpt): (UNetConfig, _) = open_component(dir, DIFFUSERS_WEIGHTS)?;
    let spec = config.resolve()?;
    let tensors = load_all(&ckpt, device)?
        .into_iter()
        .map(|(k, t)| Ok((k, t.to_dtype(dtype)?)))
        .collect::<Result<_>>()?;
    Ok((spec, tensors))
}

fn shapes_of(tensors: &HashMap<String, Tensor>) -> Shapes {
    tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.dims().to_vec()))
        .collect()
}

/// `tensors` plus, beside each adapted layer's weight, the branch `models::linear` reads
/// (`lora_A.weight`, `lora_B.weight`: the adapter's variables; `lora_scale`).
fn with_branches(
    mut tensors: HashMap<String, Tensor>,
    adapter: &LoraAdapter,
) -> Result<HashMap<String, Tensor>> {
    for path in adapter.module_paths() {
        for part in [LORA_A, LORA_B, LORA_SCALE] {
            let name = format!("{path}.{part}");
            if let Some(t) = adapter.branch_tensor(&name) {
                tensors.insert(name, t?);
            }
        }
    }
    Ok(tensors)
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
        match &self.lora {
            None => json!({"dtype": format!("{:?}", self.dtype), "trained": "unet"}),
            Some(l) => json!({
                "dtype": format!("{:?}", self.dtype),
                "trained": "unet lora",
                "lora": l.config(),
            }),
        }
    }

    /// Weights, gradients and AdamW's moments are known exactly; the UNet's activations are
    /// not modelled (they depend on the latent size and every block's attention), so no
    /// estimate is claimed.
    fn memory_estimate(&self, _shape: StepShape) -> Result<Option<MemoryEstimate>> {
        Ok(None)
    }

    fn write_trained(&self, source_dir: &Path, dir: &Path) -> Result<()> {
        if let Some(adapter) = &self.lora {
            return save_diffusers(adapter, dir);
        }
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
        if let Some(adapter) = &self.lora {
            return restore_diffusers(adapter, dir);
        }
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
