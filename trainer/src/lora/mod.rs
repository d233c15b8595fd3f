//! LoRA adapters (Hu et al. 2021) as PEFT defines, stores and merges them.
//!
//! For each targeted linear weight W [out, in] the adapter holds A [r, in] (initialised
//! Kaiming-uniform with a = √5, as PEFT does: U(−1/√in, 1/√in)) and B [out, r] (zeros), and
//! the layer computes with W + (alpha / r)·B·A. Training keeps W frozen and builds the model
//! with that merged weight: an expression in A and B, so backpropagation reaches them and
//! nothing else, and the model crate's layers stay as they are (the model is rebuilt after
//! every optimizer step anyway, see [`crate::varmap_model`]). The update is added in f32 (f64
//! for f64 weights) and rounded once to the weight's dtype, as [`merge`] does, so a merged
//! checkpoint computes what the trained model computed.
//!
//! Dropout on the adapter's input masks every token's input differently, which no merged
//! weight can express: training refuses a dropout other than 0. Adapters trained elsewhere
//! with dropout merge and load as usual (dropout is off at inference).
//!
//! On disk, the PEFT layout: `adapter_config.json` and `adapter_model.safetensors` with the
//! keys `base_model.model.<module>.lora_A.weight` / `.lora_B.weight`, where `<module>` is the
//! module's path in transformers' model ([`module_names`]), so that `PeftModel` loads our
//! adapters; in memory, modules are known by their checkpoint key without `.weight`.
//! [`peft_file`] reads adapters, [`merge`] folds one into a checkpoint.

mod merge;
pub mod module_names;
mod peft_file;

pub use merge::{merge, MergeSummary};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use unireward_models::checkpoint::KeyLayout;

use self::module_names::module_name;
use self::peft_file::AdapterFile;
use crate::checkpoint_io::write_json;
use crate::data::order::SplitMix64;
use crate::varmap_model::{part_of, TrainParts};
use crate::{Error, Result};

pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// The decoder's attention projections (with the default parts, the vision tower is frozen,
/// so its own `q_proj`… are not adapted).
pub const DEFAULT_TARGETS: [&str; 4] = ["q_proj", "k_proj", "v_proj", "o_proj"];
/// What PEFT puts before a module's path: the `PeftModel`'s `base_model` (the `LoraModel`)
/// and its `model` (the transformers model).
const PEFT_PREFIX: &str = "base_model.model.";
const A_SUFFIX: &str = ".lora_A.weight";
const B_SUFFIX: &str = ".lora_B.weight";
/// 2-D weights that are lookup tables, not linear layers (PEFT adapts those differently).
const EMBEDDINGS: [&str; 2] = ["embed_tokens", "position_embedding"];
/// The names of the projector's layers in the transformers layout, which also name them in
/// layouts that number them (`mm_projector.0`, `mm_projector.2`).
const PROJECTOR_NAMES: [&str; 2] = ["linear_1", "linear_2"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Module names: a linear layer is adapted when its path is the name or ends with
    /// `.name` (PEFT's rule), within the parts of the model that are trained.
    pub targets: Vec<String>,
}

impl LoraConfig {
    /// `alpha` defaults to the rank (a scale of 1, as PEFT's defaults r = 8, alpha = 8 give),
    /// `targets` to [`DEFAULT_TARGETS`].
    pub fn new(rank: usize, alpha: Option<f64>, dropout: f64, targets: Vec<String>) -> Self {
        let targets = if targets.is_empty() {
            DEFAULT_TARGETS.iter().map(|s| s.to_string()).collect()
        } else {
            targets
        };
        Self {
            rank,
            alpha: alpha.unwrap_or(rank as f64),
            dropout,
            targets,
        }
    }

    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// What training with this configuration needs.
    pub fn validate_for_training(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(Error::Config("--lora-rank must be at least 1".into()));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(Error::Config(format!(
                "--lora-alpha must be positive, got {}",
                self.alpha
            )));
        }
        if self.dropout != 0.0 {
            return Err(Error::Config(format!(
                "--lora-dropout {}: only 0 is supported. This trainer applies LoRA through the \
                 merged weight W + (alpha/r)·B·A, and dropout on the adapter's input (a \
                 different mask for every token) cannot be expressed through a weight",
                self.dropout
            )));
        }
        if self.targets.iter().any(|t| t.trim().is_empty()) {
            return Err(Error::Config(
                "--lora-targets: empty module name (a stray comma?)".into(),
            ));
        }
        Ok(())
    }
}

/// A checkpoint key's shape, by key.
pub type Shapes = BTreeMap<String, Vec<usize>>;

/// The linear layers of a checkpoint: (module path, [out, in]).
fn linear_modules(shapes: &Shapes) -> impl Iterator<Item = (&str, [usize; 2])> {
    shapes.iter().filter_map(|(key, dims)| {
        let path = key.strip_suffix(".weight")?;
        let last = path.rsplit('.').next().unwrap_or(path);
        match dims.as_slice() {
            &[out, inp] if !EMBEDDINGS.contains(&last) => Some((path, [out, inp])),
            _ => None,
        }
    })
}

/// PEFT's rule for a list of target names.
fn peft_matches(target: &str, path: &str) -> bool {
    path == target
        || path
            .strip_suffix(target)
            .is_some_and(|head| head.ends_with('.'))
}

fn matches(target: &str, path: &str, layout: &KeyLayout) -> bool {
    peft_matches(target, path)
        || layout
            .projector
            .iter()
            .zip(PROJECTOR_NAMES)
            .any(|(p, name)| p == path && name == target)
}

/// The module paths (sorted) that `targets` name among the linear layers of the trained
/// `parts`; a target that names none is an error.
pub fn select_modules(
    targets: &[String],
    layout: &KeyLayout,
    parts: TrainParts,
    shapes: &Shapes,
) -> Result<Vec<String>> {
    let mut selected = BTreeSet::new();
    let mut unmatched = Vec::new();
    for target in targets {
        let target = target.trim();
        let mut found = false;
        for (path, _) in linear_modules(shapes) {
            let key = format!("{path}.weight");
            if matches(target, path, layout) && parts.trains(part_of(layout, &key)) {
                selected.insert(path.to_string());
                found = true;
            }
        }
        if !found {
            unmatched.push(target.to_string());
        }
    }
    if !unmatched.is_empty() {
        return Err(Error::Config(format!(
            "--lora-targets: {} name(s) no linear layer of the trained parts (vision {}, \
             projector {}, decoder {}; --train-vision, --train-projector and --train-decoder \
             choose where adapters go)",
            unmatched.join(", "),
            on_off(parts.vision),
            on_off(parts.projector),
            on_off(parts.decoder)
        )));
    }
    Ok(selected.into_iter().collect())
}

fn on_off(b: bool) -> &'static str {
    if b {
        "trained"
    } else {
        "frozen"
    }
}

/// `target_modules` as PEFT must read it to adapt exactly `selected` in transformers' model:
/// the target names when PEFT's suffix rule picks exactly those modules among the model's
/// (named as transformers names them), otherwise (a part left out, a projector named by
/// alias) the full module names, each of which only matches itself.
fn target_modules_value(
    targets: &[String],
    selected: &[String],
    shapes: &Shapes,
    layout: &KeyLayout,
) -> Value {
    let by_suffix: BTreeSet<String> = linear_modules(shapes)
        .map(|(path, _)| module_name(layout, path))
        .filter(|module| targets.iter().any(|t| peft_matches(t.trim(), module)))
        .collect();
    let wanted: BTreeSet<String> = selected.iter().map(|p| module_name(layout, p)).collect();
    if by_suffix == wanted {
        let mut names: Vec<&str> = targets.iter().map(|t| t.trim()).collect();
        names.sort();
        names.dedup();
        json!(names)
    } else {
        json!(wanted)
    }
}

fn peft_key(path: &str, suffix: &str) -> String {
    format!("{PEFT_PREFIX}{path}{suffix}")
}

/// The dtype the update is added in: f64 for f64 weights, f32 otherwise.
fn compute_dtype(dtype: DType) -> DType {
    if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// W + scale·B·A, in W's dtype (added in f32, or f64 for f64 weights). Differentiable in
/// every argument.
pub fn merged_weight(
    w: &Tensor,
    b: &Tensor,
    a: &Tensor,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let cd = compute_dtype(w.dtype());
    let delta = (b.to_dtype(cd)?.matmul(&a.to_dtype(cd)?)? * scale)?;
    (w.to_dtype(cd)? + delta)?.to_dtype(w.dtype())
}

/// One adapted module's factors and its name in the adapter file.
#[derive(Clone)]
struct Factors {
    a: Var,
    b: Var,
    module: String,
}

impl Factors {
    fn new(a: &Tensor, b: &Tensor, module: String) -> Result<Self> {
        Ok(Self {
            a: Var::from_tensor(a)?,
            b: Var::from_tensor(b)?,
            module,
        })
    }
}

/// The adapters of a model: a pair of factors per adapted linear layer.
#[derive(Clone)]
pub struct LoraAdapter {
    config: LoraConfig,
    scale: f64,
    /// As `adapter_config.json` states it.
    target_modules: Value,
    /// By checkpoint path (the adapted weight's key without `.weight`).
    modules: BTreeMap<String, Factors>,
}

impl LoraAdapter {
    /// Fresh adapters (A Kaiming-uniform, B zero) for the modules `config.targets` select;
    /// A's values follow from `seed` and the module's path alone.
    pub fn init(
        config: &LoraConfig,
        layout: &KeyLayout,
        parts: TrainParts,
        shapes: &Shapes,
        dtype: DType,
        device: &Device,
        seed: u64,
    ) -> Result<Self> {
        config.validate_for_training()?;
        let selected = select_modules(&config.targets, layout, parts, shapes)?;
        let dims: HashMap<&str, [usize; 2]> = linear_modules(shapes).collect();
        let r = config.rank;
        let mut modules = BTreeMap::new();
        for path in &selected {
            let [out, inp] = dims[path.as_str()];
            let a = kaiming_uniform(r, inp, seed, path, device)?.to_dtype(dtype)?;
            let b = Tensor::zeros((out, r), dtype, device)?;
            modules.insert(
                path.clone(),
                Factors::new(&a, &b, module_name(layout, path))?,
            );
        }
        Ok(Self {
            config: config.clone(),
            scale: config.scale(),
            target_modules: target_modules_value(&config.targets, &selected, shapes, layout),
            modules,
        })
    }

    /// Reads the adapter in `dir` (written for any key layout, by PEFT or by us) for a model
    /// of `layout` whose weights have `shapes`; the factors become variables in `dtype` on
    /// `device`, and are saved again under the names transformers gives the modules.
    pub fn load(
        dir: &Path,
        layout: &KeyLayout,
        shapes: &Shapes,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let file = AdapterFile::read(dir, device)?;
        let (config, scale, target_modules) =
            (file.config.clone(), file.scale, file.target_modules.clone());
        let mut modules = BTreeMap::new();
        for (path, m) in file.resolve(shapes, dir)? {
            let (a, b) = (m.a.to_dtype(dtype)?, m.b.to_dtype(dtype)?);
            let module = module_name(layout, &path);
            modules.insert(path, Factors::new(&a, &b, module)?);
        }
        Ok(Self {
            config,
            scale,
            target_modules,
            modules,
        })
    }

    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// The factor B·A is multiplied by.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// The adapted modules' checkpoint paths (keys without `.weight`), sorted.
    pub fn module_paths(&self) -> impl Iterator<Item = &str> {
        self.modules.keys().map(String::as_str)
    }

    /// The name under which the module adapting `{path}.weight` is saved (transformers'
    /// module path), and its factors' PEFT names.
    pub fn module_name(&self, path: &str) -> Option<&str> {
        self.modules.get(path).map(|f| f.module.as_str())
    }

    /// Every factor under its PEFT name, sorted by name (the optimizer's order).
    pub fn vars(&self) -> Vec<(String, Var)> {
        let mut out: Vec<(String, Var)> = self
            .modules
            .values()
            .flat_map(|f| {
                [
                    (peft_key(&f.module, A_SUFFIX), f.a.clone()),
                    (peft_key(&f.module, B_SUFFIX), f.b.clone()),
                ]
            })
            .collect();
        out.sort_by(|x, y| x.0.cmp(&y.0));
        out
    }

    /// Every factor under its PEFT name (sharing storage with the variables).
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.vars()
            .into_iter()
            .map(|(k, v)| (k, v.as_detached_tensor()))
            .collect()
    }

    /// Overwrites every factor with the tensor of the same PEFT name in `values`.
    pub fn set_tensors(&self, values: &HashMap<String, Tensor>) -> Result<()> {
        for (name, var) in self.vars() {
            let v = values
                .get(&name)
                .ok_or_else(|| Error::Resume(format!("no adapter weight {name}")))?;
            if v.shape() != var.shape() {
                return Err(Error::Resume(format!(
                    "{name}: shape {:?}, the adapter has {:?}",
                    v.dims(),
                    var.dims()
                )));
            }
            var.set(&v.to_device(var.device())?.to_dtype(var.dtype())?)?;
        }
        Ok(())
    }

    /// `w`, the weight stored under `key`, with this adapter's update added when `key` is an
    /// adapted module's weight (differentiable in A and B); `None` for other keys.
    pub fn adapted(&self, key: &str, w: &Tensor) -> Option<candle_core::Result<Tensor>> {
        let f = self.modules.get(key.strip_suffix(".weight")?)?;
        Some(merged_weight(
            w,
            f.b.as_tensor(),
            f.a.as_tensor(),
            self.scale,
        ))
    }

    /// Writes `adapter_config.json` and `adapter_model.safetensors` into `dir` (created).
    pub fn save(&self, dir: &Path, base_model: &str) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let c = &self.config;
        let config = json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": c.rank,
            "lora_alpha": json_number(c.alpha),
            "lora_dropout": c.dropout,
            "target_modules": self.target_modules,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "modules_to_save": null,
            "use_rslora": false,
            "use_dora": false,
            "rank_pattern": {},
            "alpha_pattern": {},
            "layers_to_transform": null,
            "layers_pattern": null,
            "revision": null,
        });
        write_json(&dir.join(ADAPTER_CONFIG_FILE), &config)?;
        let path = dir.join(ADAPTER_WEIGHTS_FILE);
        candle_core::safetensors::save(&self.tensors(), &path)?;
        Ok(())
    }
}

/// PEFT writes `lora_alpha` as an integer; so do we when it is one.
fn json_number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 9.0e15 {
        json!(x as i64)
    } else {
        json!(x)
    }
}

/// U(−1/√fan_in, 1/√fan_in), what `kaiming_uniform_(a=√5)` draws, from a generator seeded by
/// `seed` and the module's path.
fn kaiming_uniform(
    rows: usize,
    fan_in: usize,
    seed: u64,
    path: &str,
    device: &Device,
) -> Result<Tensor> {
    let path_hash = path.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let mut rng = SplitMix64(seed ^ path_hash);
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    let values: Vec<f64> = (0..rows * fan_in)
        .map(|_| {
            let u = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
            bound * (2.0 * u - 1.0)
        })
        .collect();
    Ok(Tensor::from_vec(values, (rows, fan_in), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint_io::read_json;

    fn hf_layout() -> KeyLayout {
        KeyLayout {
            name: "test",
            vision: "vision_tower.".into(),
            projector: [
                "multi_modal_projector.linear_1".into(),
                "multi_modal_projector.linear_2".into(),
            ],
            image_newline: "image_newline".into(),
            decoder: "language_model.model.".into(),
            lm_head: Some("language_model.lm_head".into()),
        }
    }

    fn next_layout() -> KeyLayout {
        KeyLayout {
            name: "test",
            vision: "model.vision_tower.vision_tower.vision_model.".into(),
            projector: ["model.mm_projector.0".into(), "model.mm_projector.2".into()],
            image_newline: "model.image_newline".into(),
            decoder: "model.".into(),
            lm_head: Some("lm_head".into()),
        }
    }

    fn shapes(keys: &[(&str, &[usize])]) -> Shapes {
        keys.iter()
            .map(|(k, d)| (k.to_string(), d.to_vec()))
            .collect()
    }

    fn hf_shapes() -> Shapes {
        shapes(&[
            (
                "vision_tower.encoder.layers.0.self_attn.q_proj.weight",
                &[4, 4],
            ),
            ("vision_tower.encoder.layers.0.self_attn.q_proj.bias", &[4]),
            ("vision_tower.encoder.layers.0.mlp.fc1.weight", &[6, 4]),
            ("vision_tower.embeddings.position_embedding.weight", &[9, 4]),
            ("multi_modal_projector.linear_1.weight", &[8, 4]),
            ("multi_modal_projector.linear_2.weight", &[8, 8]),
            ("language_model.model.embed_tokens.weight", &[32, 8]),
            (
                "language_model.model.layers.0.self_attn.q_proj.weight",
                &[8, 8],
            ),
            (
                "language_model.model.layers.0.self_attn.v_proj.weight",
                &[4, 8],
            ),
            ("language_model.model.layers.0.mlp.up_proj.weight", &[12, 8]),
            ("language_model.model.norm.weight", &[8]),
            ("language_model.lm_head.weight", &[32, 8]),
        ])
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    const DEFAULT_PARTS: TrainParts = TrainParts {
        vision: false,
        projector: true,
        decoder: true,
    };

    #[test]
    fn targets_select_linear_layers_of_trained_parts() -> Result<()> {
        let s = hf_shapes();
        let l = hf_layout();
        let got = select_modules(&names(&["q_proj", "v_proj"]), &l, DEFAULT_PARTS, &s)?;
        assert_eq!(
            got,
            names(&[
                "language_model.model.layers.0.self_attn.q_proj",
                "language_model.model.layers.0.self_attn.v_proj"
            ])
        );
        // The vision tower's q_proj is a match too, so the config lists full paths, as
        // transformers names the modules.
        assert_eq!(
            target_modules_value(&names(&["q_proj", "v_proj"]), &got, &s, &l),
            json!([
                "model.language_model.layers.0.self_attn.q_proj",
                "model.language_model.layers.0.self_attn.v_proj"
            ])
        );
        // With the tower trained, PEFT's suffix rule picks exactly what we adapt.
        let got = select_modules(&names(&["q_proj", "v_proj"]), &l, TrainParts::all(), &s)?;
        assert_eq!(got.len(), 3);
        assert_eq!(
            target_modules_value(&names(&["v_proj", "q_proj"]), &got, &s, &l),
            json!(["q_proj", "v_proj"])
        );
        let got = select_modules(
            &names(&["linear_1", "fc1", "lm_head"]),
            &l,
            TrainParts::all(),
            &s,
        )?;
        assert_eq!(
            got,
            names(&[
                "language_model.lm_head",
                "multi_modal_projector.linear_1",
                "vision_tower.encoder.layers.0.mlp.fc1"
            ])
        );
        Ok(())
    }

    #[test]
    fn unmatched_targets_and_embeddings_are_refused() {
        let s = hf_shapes();
        let l = hf_layout();
        let err = select_modules(&names(&["fc1", "q_proj"]), &l, DEFAULT_PARTS, &s)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("fc1") && err.contains("vision frozen"),
            "{err}"
        );
        for t in ["embed_tokens", "position_embedding", "norm", "proj"] {
            assert!(
                select_modules(&names(&[t]), &l, TrainParts::all(), &s).is_err(),
                "{t}"
            );
        }
    }

    #[test]
    fn projector_names_reach_numbered_projectors() -> Result<()> {
        let s = shapes(&[
            ("model.mm_projector.0.weight", &[8, 4]),
            ("model.mm_projector.2.weight", &[8, 8]),
            ("model.layers.0.self_attn.o_proj.weight", &[8, 8]),
            (
                "model.vision_tower.vision_tower.vision_model.encoder.layers.0.self_attn.out_proj.weight",
                &[4, 4],
            ),
        ]);
        let got = select_modules(
            &names(&["linear_2", "o_proj"]),
            &next_layout(),
            DEFAULT_PARTS,
            &s,
        )?;
        assert_eq!(
            got,
            names(&["model.layers.0.self_attn.o_proj", "model.mm_projector.2"])
        );
        // In transformers' model the projector's layer is `linear_2` whatever the checkpoint
        // calls it, so PEFT's suffix rule picks exactly these.
        let l = next_layout();
        assert_eq!(
            target_modules_value(&names(&["linear_2", "o_proj"]), &got, &s, &l),
            json!(["linear_2", "o_proj"])
        );
        // `out_proj` also names the frozen tower's layer, which is not adapted: full names.
        assert_eq!(
            target_modules_value(&names(&["o_proj", "out_proj"]), &got[..1], &s, &l),
            json!(["model.language_model.layers.0.self_attn.o_proj"])
        );
        Ok(())
    }

    #[test]
    fn training_settings_are_checked() {
        let ok = LoraConfig::new(8, None, 0.0, Vec::new());
        assert_eq!(ok.alpha, 8.0);
        assert_eq!(ok.targets, names(&DEFAULT_TARGETS));
        assert!(ok.validate_for_training().is_ok());
        let dropout = LoraConfig::new(8, Some(16.0), 0.05, Vec::new());
        let msg = dropout
            .validate_for_training()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("--lora-dropout 0.05") && msg.contains("only 0"));
        assert!(LoraConfig::new(0, None, 0.0, Vec::new())
            .validate_for_training()
            .is_err());
        assert!(LoraConfig::new(4, Some(-1.0), 0.0, Vec::new())
            .validate_for_training()
            .is_err());
    }

    #[test]
    fn init_is_peft_like_and_seeded() -> Result<()> {
        let s = hf_shapes();
        let l = hf_layout();
        let cfg = LoraConfig::new(2, Some(4.0), 0.0, names(&["up_proj"]));
        let mk =
            |seed| LoraAdapter::init(&cfg, &l, DEFAULT_PARTS, &s, DType::F32, &Device::Cpu, seed);
        let (x, y, z) = (mk(1)?, mk(1)?, mk(2)?);
        assert_eq!(x.scale(), 2.0);
        let t = |ad: &LoraAdapter, suffix: &str| {
            ad.tensors()[&peft_key("model.language_model.layers.0.mlp.up_proj", suffix)].clone()
        };
        let a = t(&x, A_SUFFIX);
        assert_eq!(a.dims(), &[2, 8]);
        assert_eq!(t(&x, B_SUFFIX).dims(), &[12, 2]);
        let av = a.flatten_all()?.to_vec1::<f32>()?;
        let bound = 1.0 / 8f32.sqrt();
        assert!(av.iter().all(|v| v.abs() <= bound) && av.iter().any(|v| *v != 0.0));
        assert!(t(&x, B_SUFFIX)
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .all(|v| *v == 0.0));
        assert_eq!(av, t(&y, A_SUFFIX).flatten_all()?.to_vec1::<f32>()?);
        assert_ne!(av, t(&z, A_SUFFIX).flatten_all()?.to_vec1::<f32>()?);
        Ok(())
    }

    #[test]
    fn saved_adapters_read_back() -> Result<()> {
        let s = hf_shapes();
        let l = hf_layout();
        let cfg = LoraConfig::new(2, Some(3.0), 0.0, names(&["q_proj"]));
        let ad = LoraAdapter::init(&cfg, &l, DEFAULT_PARTS, &s, DType::F32, &Device::Cpu, 7)?;
        let dir = std::env::temp_dir().join(format!("lora-roundtrip-{}", std::process::id()));
        ad.save(&dir, "base/model")?;
        let json = read_json(&dir.join(ADAPTER_CONFIG_FILE))?;
        assert_eq!(json["r"], json!(2));
        assert_eq!(json["lora_alpha"], json!(3));
        assert_eq!(json["peft_type"], json!("LORA"));
        assert_eq!(
            json["target_modules"],
            json!(["model.language_model.layers.0.self_attn.q_proj"])
        );
        assert_eq!(
            ad.module_name("language_model.model.layers.0.self_attn.q_proj"),
            Some("model.language_model.layers.0.self_attn.q_proj")
        );
        let back = LoraAdapter::load(&dir, &l, &s, DType::F32, &Device::Cpu)?;
        assert_eq!(back.scale(), 1.5);
        assert_eq!(
            back.module_paths().collect::<Vec<_>>(),
            ad.module_paths().collect::<Vec<_>>()
        );
        // An adapter for another model is refused, naming the weight.
        let mut other = s.clone();
        other.insert(
            "language_model.model.layers.0.self_attn.q_proj.weight".into(),
            vec![8, 9],
        );
        let msg = LoraAdapter::load(&dir, &l, &other, DType::F32, &Device::Cpu)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("q_proj"), "{msg}");
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(())
    }
}
