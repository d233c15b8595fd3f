//! A diffusers UNet as the loop's [`Trainee`]: every weight a `Var` (full fine-tuning, as
//! DiffusionDPO's train.py trains SD 1.5 and SDXL), or only the linear layers' (as VideoDPO
//! trains its video UNet), written back in diffusers' layout (`unet/config.json`,
//! `unet/diffusion_pytorch_model.safetensors`) so that `UNet2DConditionModel.from_pretrained
//! (OUT/unet)` (or `UNetMotionModel`'s) and our loader read the result. The UNet is either
//! kind a pipeline holds ([`Denoiser`]: image, or AnimateDiff's motion UNet).
//!
//! Or, with LoRA, every weight frozen and adapters on the targeted linear layers trained
//! (PEFT's base(x) + s·B(A(x)), through `models::linear`'s branch), written as diffusers saves
//! a UNet's LoRA (`pytorch_lora_weights.safetensors`, which `pipe.load_lora_weights(OUT)`
//! reads). The adapter's base is the starting UNet, so it is also the DPO reference.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use serde_json::{json, Value};
use unireward_models::checkpoint::load_all;
use unireward_models::diffusion::component::{open_component, DIFFUSERS_WEIGHTS};
use unireward_models::diffusion::denoiser::{Denoiser, DenoiserSpec};
use unireward_models::diffusion::unet::UNetSpec;
use unireward_models::linear::{LORA_A, LORA_B, LORA_SCALE};

use crate::checkpoint_keys::Shapes;
use crate::lora::{read_diffusers, restore_diffusers, save_diffusers, LoraAdapter, LoraConfig};
use crate::memory_estimate::{MemoryEstimate, StepShape};
use crate::trainee::Trainee;
use crate::{Error, Result};

/// Where a pipeline keeps its UNet, and the file the trained one is written to.
pub const UNET_DIR: &str = "unet";
pub const UNET_WEIGHTS: &str = "diffusion_pytorch_model.safetensors";

/// Which of the UNet's weights train (`--train`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainedPart {
    /// Every parameter (DiffusionDPO's train.py).
    All,
    /// The `nn.Linear` layers' weights and biases only (VideoDPO): attention projections,
    /// feed-forwards, linear proj_in/out, time-embedding MLPs; convolutions, norms and
    /// buffers stay frozen.
    Linear,
}

/// A buffer, not a parameter: torch's optimizers never see it.
fn is_buffer(name: &str) -> bool {
    name.ends_with("pos_embed.pe")
}

/// Whether `name` is trained under `part`, given every tensor's shape.
fn trains(part: TrainedPart, name: &str, shapes: &Shapes) -> bool {
    if is_buffer(name) {
        return false;
    }
    match part {
        TrainedPart::All => true,
        TrainedPart::Linear => {
            // A linear layer's weight is the one rank-2 parameter kind of a UNet (convolution
            // kernels are rank 4, norms and biases rank 1); a bias is linear when its weight is.
            let module = name
                .strip_suffix(".weight")
                .or_else(|| name.strip_suffix(".bias"));
            module.is_some_and(|m| {
                shapes
                    .get(&format!("{m}.weight"))
                    .is_some_and(|s| s.len() == 2)
            })
        }
    }
}

pub struct UNetTrainee {
    spec: DenoiserSpec,
    /// Sorted by name: the optimizer's moments are saved in this order.
    vars: Vec<(String, Var)>,
    /// The weights that do not train (`--train linear`'s others, buffers), written back as
    /// they were read.
    frozen: Vec<(String, Tensor)>,
    part: TrainedPart,
    dtype: DType,
    device: Device,
    model: Denoiser,
    /// With LoRA: the adapters (then `vars` are theirs and every weight is in `frozen`).
    lora: Option<LoraAdapter>,
}

impl UNetTrainee {
    /// The UNet of the pipeline in `pipeline` (its `unet/` directory), every weight trained,
    /// in `dtype`.
    pub fn load(pipeline: &Path, dtype: DType, device: &Device) -> Result<Self> {
        Self::load_part(pipeline, dtype, device, TrainedPart::All)
    }

    /// [`Self::load`] training only `part` of the weights.
    pub fn load_part(
        pipeline: &Path,
        dtype: DType,
        device: &Device,
        part: TrainedPart,
    ) -> Result<Self> {
        let dir = pipeline.join(UNET_DIR);
        let (spec, tensors) = frozen_tensors(&dir, dtype, device)?;
        let shapes = shapes_of(&tensors);
        let mut vars = Vec::new();
        let mut frozen = Vec::new();
        for (k, t) in tensors {
            if trains(part, &k, &shapes) {
                vars.push((k, Var::from_tensor(&t)?));
            } else {
                frozen.push((k, t));
            }
        }
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        frozen.sort_by(|a, b| a.0.cmp(&b.0));
        if vars.is_empty() {
            return Err(Error::Config(format!(
                "{}: no weight to train under --train {part:?}",
                dir.display()
            )));
        }
        let model = build(&spec, &vars, &frozen, dtype, device)
            .map_err(|e| Error::Config(format!("{}: {e}", dir.display())))?;
        Ok(Self {
            spec,
            vars,
            frozen,
            part,
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
        let model = Denoiser::from_tensors(
            &spec,
            with_branches(tensors.clone(), &adapter)?,
            dtype,
            device,
        )
        .map_err(|e| Error::Config(format!("{}: {e}", dir.display())))?;
        let mut frozen: Vec<(String, Tensor)> = tensors.into_iter().collect();
        frozen.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Self {
            spec,
            vars: adapter.vars(),
            frozen,
            part: TrainedPart::All,
            dtype,
            device: device.clone(),
            model,
            lora: Some(adapter),
        })
    }

    pub fn lora(&self) -> Option<&LoraAdapter> {
        self.lora.as_ref()
    }

    /// The spatial UNet's settings (the motion UNet's image part).
    pub fn spec(&self) -> &UNetSpec {
        self.spec.unet()
    }

    /// Whether the UNet is AnimateDiff's motion UNet, trained on videos.
    pub fn is_video(&self) -> bool {
        self.spec.is_video()
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }
}

fn build(
    spec: &DenoiserSpec,
    vars: &[(String, Var)],
    frozen: &[(String, Tensor)],
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Denoiser> {
    let tensors: HashMap<String, Tensor> = vars
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .chain(frozen.iter().cloned())
        .collect();
    Denoiser::new(spec, VarBuilder::from_tensors(tensors, dtype, device))
}

/// The UNet in `unet_dir` with the adapter diffusers saved in `adapter_dir`
/// (`pytorch_lora_weights.safetensors`, ours or diffusers') applied unmerged, for inference.
pub fn load_adapted_unet(
    unet_dir: &Path,
    adapter_dir: &Path,
    dtype: DType,
    device: &Device,
) -> Result<Denoiser> {
    let (spec, tensors) = frozen_tensors(unet_dir, dtype, device)?;
    let adapter = read_diffusers(adapter_dir, &shapes_of(&tensors), dtype, device)?;
    Denoiser::from_tensors(&spec, with_branches(tensors, &adapter)?, dtype, device)
        .map_err(|e| Error::Config(format!("{}: {e}", unet_dir.display())))
}

/// A UNet directory's config (either kind) and weights (in `dtype`), as plain tensors.
fn frozen_tensors(
    dir: &Path,
    dtype: DType,
    device: &Device,
) -> Result<(DenoiserSpec, HashMap<String, Tensor>)> {
    let (config, ckpt): (Value, _) = open_component(dir, DIFFUSERS_WEIGHTS)?;
    let spec = DenoiserSpec::from_config(&config)?;
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
    type Model = Denoiser;

    fn model(&self) -> &Denoiser {
        &self.model
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn trained_vars(&self) -> Result<Vec<(String, Var)>> {
        Ok(self.vars.clone())
    }

    fn settings(&self) -> Value {
        if let Some(l) = &self.lora {
            return json!({
                "dtype": format!("{:?}", self.dtype),
                "trained": "unet lora",
                "lora": l.config(),
            });
        }
        match self.part {
            TrainedPart::All => json!({"dtype": format!("{:?}", self.dtype), "trained": "unet"}),
            TrainedPart::Linear => json!({
                "dtype": format!("{:?}", self.dtype),
                "trained": "unet",
                "trained_part": "linear",
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
            .chain(self.frozen.iter().cloned())
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
