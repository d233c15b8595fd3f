//! Reading an adapter in PEFT's layout (`adapter_config.json`, `adapter_model.safetensors`)
//! written by PEFT or by us: its settings ([`AdapterSettings`]), its factors (refused when
//! not finite), and the checkpoint weight each of its modules adapts; and the factors' key
//! names.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use super::config::{AdapterSettings, LoraConfig};
use super::module_names::checkpoint_paths;
use crate::checkpoint_keys::Shapes;
use crate::model_files::{ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};
use crate::{Error, Result};

/// What PEFT puts before a module's path: the `PeftModel`'s `base_model` (the `LoraModel`)
/// and its `model` (the transformers model).
pub(super) const PEFT_PREFIX: &str = "base_model.model.";
pub(super) const A_SUFFIX: &str = ".lora_A.weight";
pub(super) const B_SUFFIX: &str = ".lora_B.weight";

/// A factor's name in the adapter file.
pub(super) fn peft_key(path: &str, suffix: &str) -> String {
    format!("{PEFT_PREFIX}{path}{suffix}")
}

/// An adapter as read from disk: its settings and, per module path as written, (A, B).
pub(super) struct AdapterFile {
    pub config: LoraConfig,
    pub scale: f64,
    pub target_modules: Value,
    pub modules: BTreeMap<String, (Tensor, Tensor)>,
}

/// One module of an adapter, placed on a model.
pub(super) struct Resolved {
    /// The module's path as the adapter names it.
    pub module: String,
    pub a: Tensor,
    pub b: Tensor,
}

impl AdapterFile {
    pub fn read(dir: &Path, device: &Device) -> Result<Self> {
        let AdapterSettings {
            config,
            scale,
            target_modules,
        } = AdapterSettings::read(&dir.join(ADAPTER_CONFIG_FILE))?;
        let rank = config.rank;
        let weights_path = dir.join(ADAPTER_WEIGHTS_FILE);
        if !weights_path.is_file() {
            return Err(Error::Config(format!(
                "{}: no adapter weights",
                weights_path.display()
            )));
        }
        let tensors = candle_core::safetensors::load(&weights_path, device)?;
        let mut halves: BTreeMap<String, (Option<Tensor>, Option<Tensor>)> = BTreeMap::new();
        for (key, t) in tensors {
            check_finite(&t, &key, &weights_path)?;
            let unknown = || {
                Error::Config(format!(
                    "{}: {key} is not a LoRA factor (expected \
                     {PEFT_PREFIX}<module>{A_SUFFIX} or {B_SUFFIX})",
                    weights_path.display()
                ))
            };
            let rest = key.strip_prefix(PEFT_PREFIX).ok_or_else(unknown)?;
            if let Some(path) = rest.strip_suffix(A_SUFFIX) {
                halves.entry(path.to_string()).or_default().0 = Some(t);
            } else if let Some(path) = rest.strip_suffix(B_SUFFIX) {
                halves.entry(path.to_string()).or_default().1 = Some(t);
            } else {
                return Err(unknown());
            }
        }
        let mut modules = BTreeMap::new();
        for (path, pair) in halves {
            let (Some(a), Some(b)) = pair else {
                return Err(Error::Config(format!(
                    "{}: {path} lacks lora_A or lora_B",
                    weights_path.display()
                )));
            };
            let ok =
                matches!((a.dims(), b.dims()), (&[ra, _], &[_, rb]) if ra == rank && rb == rank);
            if !ok {
                return Err(Error::Config(format!(
                    "{}: {path}: lora_A {:?} and lora_B {:?} do not have rank r = {rank}",
                    weights_path.display(),
                    a.dims(),
                    b.dims()
                )));
            }
            modules.insert(path, (a, b));
        }
        if modules.is_empty() {
            return Err(Error::Config(format!(
                "{}: no LoRA factors",
                weights_path.display()
            )));
        }
        Ok(Self {
            config,
            scale,
            target_modules,
            modules,
        })
    }

    /// The checkpoint path (key without `.weight`) each module adapts in a model with
    /// weights `shapes`, whatever layout the adapter was written for; each must be a weight
    /// of shape [B's rows, A's columns], and no two modules may adapt the same one.
    pub fn resolve(self, shapes: &Shapes, dir: &Path) -> Result<BTreeMap<String, Resolved>> {
        let mut out: BTreeMap<String, Resolved> = BTreeMap::new();
        for (module, (a, b)) in self.modules {
            let paths = checkpoint_paths(&module, shapes);
            let path = match paths.as_slice() {
                [one] => one.clone(),
                [] => {
                    return Err(Error::Config(format!(
                        "adapter {}: the model has no weight for the module {module} (neither \
                         {module}.weight nor its name in the model's key layout; an adapter for \
                         another model?)",
                        dir.display()
                    )))
                }
                many => {
                    return Err(Error::Config(format!(
                        "adapter {}: the module {module} may name any of {}",
                        dir.display(),
                        many.join(", ")
                    )))
                }
            };
            let key = format!("{path}.weight");
            let want = [b.dim(0)?, a.dim(1)?];
            let dims = shapes.get(&key).map(Vec::as_slice).unwrap_or_default();
            if dims != want.as_slice() {
                return Err(Error::Config(format!(
                    "adapter {}: {module} adapts a [{}, {}] weight, the model's {key} is {dims:?}",
                    dir.display(),
                    want[0],
                    want[1]
                )));
            }
            if let Some(other) = out.get(&path) {
                return Err(Error::Config(format!(
                    "adapter {}: the modules {} and {module} both adapt {key}",
                    dir.display(),
                    other.module
                )));
            }
            out.insert(path, Resolved { module, a, b });
        }
        Ok(out)
    }
}

/// A factor with a NaN or an infinity would merge into a weight that computes nothing useful
/// (a diverged run): refused, naming the tensor.
fn check_finite(t: &Tensor, key: &str, file: &Path) -> Result<()> {
    let values = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let nan = values.iter().filter(|v| v.is_nan()).count();
    let inf = values.iter().filter(|v| v.is_infinite()).count();
    if nan + inf == 0 {
        return Ok(());
    }
    let first = values.iter().position(|v| !v.is_finite()).unwrap_or(0);
    Err(Error::Config(format!(
        "{}: {key} holds {nan} NaN and {inf} infinite value(s) of {} (the first at element \
         {first}); refusing to use it (did the run that wrote it diverge?)",
        file.display(),
        values.len()
    )))
}
