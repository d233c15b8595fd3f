//! The model over a `VarMap` that holds every tensor of a checkpoint under the checkpoint's own
//! key names, so that training can update the weights in place and saving writes them back
//! in the layout they came from.
//!
//! Each part (vision tower, projector, decoder) is trained or frozen by flag. A trained
//! part's weights reach the model as the `Var`s themselves (gradients flow to them); a frozen
//! part's as detached views of the same storage, so that backpropagation never computes a
//! gradient for them and the optimizer never sees them.
//!
//! With LoRA adapters attached ([`VarMapModel::add_lora`]) every weight is frozen and only
//! the adapters' factors are trained: an adapted layer reads its frozen weight and, beside
//! it, the factors as variables (`models::linear`'s LoRA branch, PEFT's base(x) + s·B(A(x))).
//!
//! Every trained tensor reaches the model as its variable or a view of its storage, so the
//! optimizer's in-place updates are seen by the next forward: nothing is rebuilt per step
//! (rebuilding re-transposed every frozen weight: a copy of the whole model each step).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{VarBuilder, VarMap};
use unireward_models::checkpoint::{load_all, open_model_dir, Checkpoint, KeyLayout};
use unireward_models::config::LlavaConfig;
use unireward_models::decode::checkpointing::Checkpointing;
use unireward_models::family::{
    build_llava, build_qwen2_5_vl, build_qwen3_vl, JudgeModel, ModelFamily,
};
use unireward_models::qwen2_5_vl::{Qwen25VlConfig, Qwen25VlLayout};
use unireward_models::qwen3_vl::Qwen3VlConfig;

use crate::checkpoint_keys::{part_of, qwen3_vl_keys, qwen_vl_keys, Shapes, TrainParts};
use crate::lora::{LoraAdapter, LoraConfig};
use crate::{Error, Result};

/// The family the weights build, with its configuration (and, for Qwen2.5-VL, its own key
/// layout; [`VarMapModel::layout`] is the layout parts and adapters are read in).
#[derive(Clone)]
pub enum Architecture {
    Llava(LlavaConfig),
    /// Qwen2.5-VL.
    QwenVl(Qwen25VlConfig, Qwen25VlLayout),
    /// Qwen3-VL, dense; `true`: the head is the embeddings.
    Qwen3Vl(Qwen3VlConfig, bool),
}

pub struct VarMapModel {
    arch: Architecture,
    layout: KeyLayout,
    varmap: VarMap,
    trained: BTreeSet<String>,
    parts: TrainParts,
    dtype: DType,
    device: Device,
    lora: Option<LoraAdapter>,
    model: Box<dyn JudgeModel>,
    /// Set when the decoder's layers are checkpointed: where their gradients are deposited.
    checkpointing: Option<Arc<Checkpointing>>,
}

impl VarMapModel {
    /// Reads `config.json` and every tensor of the checkpoint in `dir`, converted to `dtype`.
    pub fn load(dir: &Path, dtype: DType, device: &Device, parts: TrainParts) -> Result<Self> {
        match ModelFamily::of_dir(dir)? {
            ModelFamily::LlavaOnevision => {
                // As `LlavaOnevision::load`: config fixed up and checked against the stored
                // shapes.
                let (cfg, ckpt, layout) = open_model_dir(dir)?;
                let tensors = load_all(&ckpt, device)?;
                Self::from_tensors(cfg, layout, tensors, dtype, device, parts)
            }
            ModelFamily::Qwen25Vl => {
                let cfg = Qwen25VlConfig::from_file(&dir.join("config.json"))?;
                let ckpt = Checkpoint::open(dir)?;
                let layout = Qwen25VlLayout::detect(&ckpt, cfg.text.tie_word_embeddings);
                let tensors = load_all(&ckpt, device)?;
                Self::with_architecture(
                    Architecture::QwenVl(cfg, layout),
                    tensors,
                    dtype,
                    device,
                    parts,
                )
            }
            ModelFamily::Qwen3Vl => {
                let cfg = Qwen3VlConfig::from_file(&dir.join("config.json"))?;
                let ckpt = Checkpoint::open(dir)?;
                // As `Qwen3Vl::load`: a checkpoint without a head is tied whatever its config.
                let tied = cfg.text.tie_word_embeddings || !ckpt.contains("lm_head.weight");
                let tensors = load_all(&ckpt, device)?;
                Self::with_architecture(
                    Architecture::Qwen3Vl(cfg, tied),
                    tensors,
                    dtype,
                    device,
                    parts,
                )
            }
        }
    }

    /// Builds the model over `tensors` (named by `layout`); every tensor becomes a `Var`,
    /// also those the model does not use, so that saving writes the whole checkpoint back.
    pub fn from_tensors(
        cfg: LlavaConfig,
        layout: KeyLayout,
        tensors: HashMap<String, Tensor>,
        dtype: DType,
        device: &Device,
        parts: TrainParts,
    ) -> Result<Self> {
        Self::over_tensors(
            Architecture::Llava(cfg),
            layout,
            tensors,
            dtype,
            device,
            parts,
        )
    }

    /// [`Self::from_tensors`] for any family (a Qwen2.5-VL model's keys named by its layout).
    pub fn with_architecture(
        arch: Architecture,
        tensors: HashMap<String, Tensor>,
        dtype: DType,
        device: &Device,
        parts: TrainParts,
    ) -> Result<Self> {
        let layout = match &arch {
            Architecture::Llava(_) => {
                return Err(Error::Config(
                    "a LLaVA model over tensors takes its key layout (from_tensors)".into(),
                ))
            }
            Architecture::QwenVl(_, layout) => qwen_vl_keys(layout),
            Architecture::Qwen3Vl(_, tied) => qwen3_vl_keys(*tied),
        };
        Self::over_tensors(arch, layout, tensors, dtype, device, parts)
    }

    fn over_tensors(
        arch: Architecture,
        layout: KeyLayout,
        tensors: HashMap<String, Tensor>,
        dtype: DType,
        device: &Device,
        parts: TrainParts,
    ) -> Result<Self> {
        let varmap = VarMap::new();
        let mut trained = BTreeSet::new();
        {
            let mut data = lock(&varmap)?;
            for (name, t) in tensors {
                let t = t.to_device(device)?.to_dtype(dtype)?;
                if parts.trains(part_of(&layout, &name)) {
                    trained.insert(name.clone());
                }
                data.insert(name, Var::from_tensor(&t)?);
            }
        }
        let model = build(&arch, &layout, &varmap, &trained, None, dtype, device)?;
        Ok(Self {
            arch,
            layout,
            varmap,
            trained,
            parts,
            dtype,
            device: device.clone(),
            lora: None,
            model,
            checkpointing: None,
        })
    }

    pub fn model(&self) -> &dyn JudgeModel {
        self.model.as_ref()
    }

    /// The LLaVA configuration; an error for other families.
    pub fn config(&self) -> Result<&LlavaConfig> {
        match &self.arch {
            Architecture::Llava(cfg) => Ok(cfg),
            Architecture::QwenVl(..) | Architecture::Qwen3Vl(..) => Err(Error::Config(
                "a Qwen-VL model has no LLaVA configuration".into(),
            )),
        }
    }

    pub fn architecture(&self) -> &Architecture {
        &self.arch
    }

    pub fn layout(&self) -> &KeyLayout {
        &self.layout
    }

    pub fn parts(&self) -> TrainParts {
        self.parts
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// Rebuilds the model over the `Var`s (after adapters are attached, or every weight is
    /// replaced by a resume); an optimizer step needs none.
    pub fn rebuild(&mut self) -> Result<()> {
        self.model = build(
            &self.arch,
            &self.layout,
            &self.varmap,
            &self.trained,
            self.lora.as_ref(),
            self.dtype,
            &self.device,
        )?;
        if self.checkpointing.is_some() {
            self.checkpoint_layers()?;
        }
        Ok(())
    }

    /// Gradient checkpointing of the decoder's layers (`--grad-checkpointing`): training keeps
    /// one hidden state per layer instead of every intermediate, and pays one more forward of
    /// each layer in backward. The gradients are the same.
    pub fn set_grad_checkpointing(&mut self, on: bool) -> Result<()> {
        if on {
            self.checkpoint_layers()
        } else {
            self.checkpointing = None;
            Ok(self.model.set_checkpointing(None)?)
        }
    }

    fn checkpoint_layers(&mut self) -> Result<()> {
        let params = self
            .trained_vars()?
            .into_iter()
            .map(|(_, v)| v.as_tensor().clone())
            .collect();
        let grads = Checkpointing::new(params);
        self.model.set_checkpointing(Some(grads.clone()))?;
        self.checkpointing = Some(grads);
        Ok(())
    }

    /// Where checkpointed layers deposit the trained weights' gradients, when they are on.
    pub fn checkpointing(&self) -> Option<&Checkpointing> {
        self.checkpointing.as_deref()
    }

    /// Every weight's shape, by name.
    pub fn shapes(&self) -> Result<Shapes> {
        let data = lock(&self.varmap)?;
        Ok(data
            .iter()
            .map(|(k, v)| (k.clone(), v.dims().to_vec()))
            .collect::<BTreeMap<_, _>>())
    }

    /// Attaches fresh LoRA adapters to the linear layers `config.targets` name within the
    /// trained parts (A's initial values follow from `seed`); from then on only the adapters
    /// are trained.
    pub fn add_lora(&mut self, config: &LoraConfig, seed: u64) -> Result<()> {
        let adapter = LoraAdapter::init(
            config,
            &self.layout,
            self.parts,
            &self.shapes()?,
            self.dtype,
            &self.device,
            seed,
        )?;
        self.attach(adapter)
    }

    /// Attaches the adapter saved in `dir` (PEFT layout).
    pub fn load_lora(&mut self, dir: &Path) -> Result<()> {
        let adapter =
            LoraAdapter::load(dir, &self.layout, &self.shapes()?, self.dtype, &self.device)?;
        self.attach(adapter)
    }

    fn attach(&mut self, adapter: LoraAdapter) -> Result<()> {
        self.trained.clear();
        self.lora = Some(adapter);
        self.rebuild()
    }

    pub fn lora(&self) -> Option<&LoraAdapter> {
        self.lora.as_ref()
    }

    /// Overwrites the adapters' factors (PEFT names) in place: the model sees them at once.
    pub fn set_lora_tensors(&mut self, values: &HashMap<String, Tensor>) -> Result<()> {
        let adapter = self
            .lora
            .as_ref()
            .ok_or_else(|| Error::Config("the model has no LoRA adapters".into()))?;
        adapter.set_tensors(values)
    }

    /// The trained parts' variables (with LoRA: the adapters' factors), sorted by name (the
    /// optimizer's order).
    pub fn trained_vars(&self) -> Result<Vec<(String, Var)>> {
        if let Some(adapter) = &self.lora {
            return Ok(adapter.vars());
        }
        let data = lock(&self.varmap)?;
        Ok(self
            .trained
            .iter()
            .filter_map(|name| data.get(name).map(|v| (name.clone(), v.clone())))
            .collect())
    }

    /// Every weight by name (sharing storage with the variables).
    pub fn tensors(&self) -> Result<HashMap<String, Tensor>> {
        let data = lock(&self.varmap)?;
        Ok(data
            .iter()
            .map(|(k, v)| (k.clone(), v.as_detached_tensor()))
            .collect())
    }

    /// Overwrites every weight with the tensor of the same name in `values`, which must name
    /// them all with the same shapes, then rebuilds the model.
    pub fn set_tensors(&mut self, values: &HashMap<String, Tensor>) -> Result<()> {
        {
            let data = lock(&self.varmap)?;
            let missing: Vec<&String> = data.keys().filter(|k| !values.contains_key(*k)).collect();
            if !missing.is_empty() {
                return Err(Error::Resume(format!(
                    "{} weight(s) missing, e.g. {}",
                    missing.len(),
                    missing[0]
                )));
            }
            for (name, var) in data.iter() {
                let v = values[name].to_device(&self.device)?.to_dtype(self.dtype)?;
                if v.shape() != var.shape() {
                    return Err(Error::Resume(format!(
                        "{name}: shape {:?}, the model has {:?}",
                        v.dims(),
                        var.dims()
                    )));
                }
                var.set(&v)?;
            }
        }
        self.rebuild()
    }

    /// A model over copies of the current weights (adapters merged) that never change and
    /// track no gradient: the DPO reference.
    pub fn frozen_copy(&self) -> Result<Box<dyn JudgeModel>> {
        let copies = {
            let data = lock(&self.varmap)?;
            data.iter()
                .map(|(k, v)| {
                    let w = v.as_detached_tensor();
                    let w = match self.lora.as_ref().and_then(|a| a.adapted(k, &w)) {
                        Some(merged) => merged?.detach(),
                        None => w.copy()?,
                    };
                    Ok((k.clone(), w))
                })
                .collect::<Result<HashMap<_, _>>>()?
        };
        let vb = VarBuilder::from_tensors(copies, self.dtype, &self.device);
        build_arch(&self.arch, &self.layout, vb)
    }
}

fn lock(varmap: &VarMap) -> Result<std::sync::MutexGuard<'_, HashMap<String, Var>>> {
    varmap
        .data()
        .lock()
        .map_err(|_| Error::Config("the weight map's lock was poisoned by a panic".into()))
}

/// The family's model over `vb`.
fn build_arch(
    arch: &Architecture,
    layout: &KeyLayout,
    vb: VarBuilder,
) -> Result<Box<dyn JudgeModel>> {
    Ok(match arch {
        Architecture::Llava(cfg) => build_llava(cfg.clone(), layout.clone(), vb)?,
        Architecture::QwenVl(cfg, layout) => build_qwen2_5_vl(cfg.clone(), layout, vb)?,
        Architecture::Qwen3Vl(cfg, tied) => build_qwen3_vl(cfg.clone(), *tied, vb)?,
    })
}

fn build(
    arch: &Architecture,
    layout: &KeyLayout,
    varmap: &VarMap,
    trained: &BTreeSet<String>,
    lora: Option<&LoraAdapter>,
    dtype: DType,
    device: &Device,
) -> Result<Box<dyn JudgeModel>> {
    let vars = lock(varmap)?.clone();
    let backend = VarBackend {
        vars,
        trained: trained.clone(),
        lora: lora.cloned(),
    };
    let vb = VarBuilder::from_backend(Box::new(backend), dtype, device.clone());
    build_arch(arch, layout, vb)
}

/// Serves trained weights as their `Var`s, frozen ones as detached views, and an adapted
/// layer's LoRA factors and scale under the names `models::linear` reads them by; a key the
/// checkpoint lacks is an error naming it (never a fresh initialisation).
struct VarBackend {
    vars: HashMap<String, Var>,
    trained: BTreeSet<String>,
    lora: Option<LoraAdapter>,
}

impl VarBackend {
    fn tensor(&self, name: &str) -> candle_core::Result<Tensor> {
        if let Some(t) = self.lora.as_ref().and_then(|a| a.branch_tensor(name)) {
            return t;
        }
        let var = self.vars.get(name).ok_or_else(|| {
            candle_core::Error::Msg(format!("the checkpoint has no weight {name}"))
        })?;
        if self.trained.contains(name) {
            return Ok(var.as_tensor().clone());
        }
        Ok(var.as_detached_tensor())
    }
}

impl SimpleBackend for VarBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        _: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.tensor(name)?;
        if t.shape() != &s {
            candle_core::bail!(
                "weight {name} has shape {:?}, the model expects {:?}",
                t.dims(),
                s.dims()
            );
        }
        t.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, _: &Device) -> candle_core::Result<Tensor> {
        self.tensor(name)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.vars.contains_key(name)
            || self
                .lora
                .as_ref()
                .is_some_and(|a| a.branch_tensor(name).is_some())
    }
}

impl crate::trainee::Trainee for VarMapModel {
    type Model = dyn JudgeModel;

    fn model(&self) -> &Self::Model {
        self.model.as_ref()
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn trained_vars(&self) -> Result<Vec<(String, Var)>> {
        VarMapModel::trained_vars(self)
    }

    fn checkpointing(&self) -> Option<&Checkpointing> {
        VarMapModel::checkpointing(self)
    }

    fn settings(&self) -> serde_json::Value {
        let mut settings = serde_json::json!({
            "parts": serde_json::to_value(self.parts).unwrap_or_default(),
            "dtype": format!("{:?}", self.dtype),
        });
        // Only with LoRA, so that checkpoints of runs without it still resume.
        if let (Some(adapter), Some(map)) = (&self.lora, settings.as_object_mut()) {
            map.insert(
                "lora".into(),
                serde_json::to_value(adapter.config()).unwrap_or_default(),
            );
        }
        settings
    }

    fn memory_estimate(
        &self,
        shape: crate::memory_estimate::StepShape,
    ) -> Result<Option<crate::memory_estimate::MemoryEstimate>> {
        crate::memory_estimate::MemoryEstimate::new(self, shape).map(Some)
    }

    /// The adapter when the model has one (its `base_model_name_or_path` is `source_dir`),
    /// otherwise the whole model.
    fn write_trained(&self, source_dir: &Path, dir: &Path) -> Result<()> {
        match &self.lora {
            Some(adapter) => adapter.save(dir, &source_dir.to_string_lossy()),
            None => crate::checkpoint_io::write_model(self, source_dir, dir),
        }
    }

    fn restore(&mut self, dir: &Path) -> Result<()> {
        use crate::checkpoint_io::{read_adapter_weights, read_weights};
        if self.lora.is_some() {
            let values = read_adapter_weights(dir, &self.device)?;
            self.set_lora_tensors(&values)
        } else {
            let values = read_weights(dir, &self.device)?;
            self.set_tensors(&values)
        }
    }
}
