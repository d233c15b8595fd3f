//! A model's LoRA adapters: a pair of factors per adapted linear layer, created fresh or read
//! from an adapter directory, merged into the weights they adapt, and saved in PEFT's layout.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use serde_json::{json, Value};
use unireward_models::checkpoint::KeyLayout;

use super::config::LoraConfig;
use super::module_names::module_name;
use super::peft_file::{peft_key, AdapterFile, A_SUFFIX, B_SUFFIX};
use super::targets::{linear_modules, select_by_suffix, select_modules, target_modules_value};
use crate::checkpoint_keys::{Shapes, TrainParts};
use crate::json_file::write_json;
use crate::model_files::{ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};
use crate::{Error, Result};
use unireward_models::splitmix64::SplitMix64;

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
        let named: Vec<(String, String)> = selected
            .iter()
            .map(|path| (path.clone(), module_name(layout, path)))
            .collect();
        let target_modules = target_modules_value(&config.targets, &selected, shapes, layout);
        Self::init_named(config, &named, target_modules, shapes, dtype, device, seed)
    }

    /// Fresh adapters for a model whose checkpoint keys are its module paths and which is
    /// adapted wherever `config.targets` match (a diffusers UNet): PEFT's suffix rule over
    /// every linear layer, and `target_modules` the target names as given.
    pub fn init_by_suffix(
        config: &LoraConfig,
        shapes: &Shapes,
        dtype: DType,
        device: &Device,
        seed: u64,
    ) -> Result<Self> {
        config.validate_for_training()?;
        let selected = select_by_suffix(&config.targets, shapes)?;
        let named: Vec<(String, String)> =
            selected.iter().map(|p| (p.clone(), p.clone())).collect();
        let mut names: Vec<&str> = config.targets.iter().map(|t| t.trim()).collect();
        names.sort();
        names.dedup();
        Self::init_named(config, &named, json!(names), shapes, dtype, device, seed)
    }

    /// Fresh factors (A Kaiming-uniform, B zero) on the (checkpoint path, saved name) modules.
    fn init_named(
        config: &LoraConfig,
        named: &[(String, String)],
        target_modules: Value,
        shapes: &Shapes,
        dtype: DType,
        device: &Device,
        seed: u64,
    ) -> Result<Self> {
        let dims: HashMap<&str, [usize; 2]> = linear_modules(shapes).collect();
        let r = config.rank;
        let mut modules = BTreeMap::new();
        for (path, module) in named {
            let [out, inp] = dims[path.as_str()];
            let a = kaiming_uniform(r, inp, seed, path, device)?.to_dtype(dtype)?;
            let b = Tensor::zeros((out, r), dtype, device)?;
            modules.insert(path.clone(), Factors::new(&a, &b, module.clone())?);
        }
        Ok(Self {
            config: config.clone(),
            scale: config.scale(),
            target_modules,
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

    /// An adapter of given factors (module path = saved name; a model whose checkpoint keys
    /// are its module paths), which become variables.
    pub(super) fn from_factors(
        config: LoraConfig,
        target_modules: Value,
        factors: Vec<(String, Tensor, Tensor)>,
    ) -> Result<Self> {
        let mut modules = BTreeMap::new();
        for (path, a, b) in factors {
            modules.insert(path.clone(), Factors::new(&a, &b, path)?);
        }
        Ok(Self {
            scale: config.scale(),
            config,
            target_modules,
            modules,
        })
    }

    /// `target_modules` as the adapter's settings state it.
    pub fn target_modules(&self) -> &Value {
        &self.target_modules
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

    /// The tensor a model's linear layer reads under `name` to carry this adapter's branch
    /// unmerged (`{path}.lora_A.weight`, `{path}.lora_B.weight`: the variables themselves;
    /// `{path}.lora_scale`: the scale, f64); `None` for any other name.
    pub fn branch_tensor(&self, name: &str) -> Option<candle_core::Result<Tensor>> {
        let (path, what) = name.rsplit_once(".lora_")?;
        let f = self.modules.get(path)?;
        match what {
            "A.weight" => Some(Ok(f.a.as_tensor().clone())),
            "B.weight" => Some(Ok(f.b.as_tensor().clone())),
            "scale" => Some(Tensor::new(self.scale, f.a.device())),
            _ => None,
        }
    }

    /// Writes `adapter_config.json` and `adapter_model.safetensors` into `dir` (created).
    pub fn save(&self, dir: &Path, base_model: &str) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let config = self
            .config
            .adapter_config_json(&self.target_modules, base_model);
        write_json(&dir.join(ADAPTER_CONFIG_FILE), &config)?;
        let path = dir.join(ADAPTER_WEIGHTS_FILE);
        candle_core::safetensors::save(&self.tensors(), &path)?;
        Ok(())
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
            let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            bound * (2.0 * u - 1.0)
        })
        .collect();
    Ok(Tensor::from_vec(values, (rows, fan_in), device)?)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::json_file::read_json;
    use crate::lora::test_support::*;

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
