//! Reading an adapter in PEFT's layout (`adapter_config.json`, `adapter_model.safetensors`)
//! written by PEFT or by us: its settings, its factors (refused when not finite), and the
//! checkpoint weight each of its modules adapts.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use super::module_names::checkpoint_paths;
use super::{
    LoraConfig, Shapes, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, A_SUFFIX, B_SUFFIX, PEFT_PREFIX,
};
use crate::checkpoint_io::read_json;
use crate::{Error, Result};

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
        let config_path = dir.join(ADAPTER_CONFIG_FILE);
        let cfg = read_json(&config_path)?;
        let bad = |msg: String| Error::Config(format!("{}: {msg}", config_path.display()));
        let peft_type = cfg.get("peft_type").and_then(Value::as_str).unwrap_or("");
        if peft_type != "LORA" {
            return Err(bad(format!(
                "peft_type {peft_type:?}: only LORA adapters are supported"
            )));
        }
        let rank = cfg
            .get("r")
            .and_then(Value::as_u64)
            .filter(|&r| r > 0)
            .ok_or_else(|| bad("no positive integer r".into()))? as usize;
        let alpha = cfg
            .get("lora_alpha")
            .and_then(Value::as_f64)
            .ok_or_else(|| bad("no lora_alpha".into()))?;
        let dropout = cfg
            .get("lora_dropout")
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        let flag = |k: &str| cfg.get(k).and_then(Value::as_bool).unwrap_or(false);
        for unsupported in ["use_dora", "fan_in_fan_out"] {
            if flag(unsupported) {
                return Err(bad(format!("{unsupported} is not supported")));
            }
        }
        for pattern in ["rank_pattern", "alpha_pattern"] {
            if cfg
                .get(pattern)
                .and_then(Value::as_object)
                .is_some_and(|m| !m.is_empty())
            {
                return Err(bad(format!(
                    "{pattern} (per-module ranks or alphas) is not supported"
                )));
            }
        }
        let bias = cfg.get("bias").and_then(Value::as_str).unwrap_or("none");
        if bias != "none" {
            return Err(bad(format!(
                "bias {bias:?}: only adapters without trained biases are supported"
            )));
        }
        if cfg.get("modules_to_save").is_some_and(|v| !v.is_null()) {
            return Err(bad("modules_to_save is not supported".into()));
        }
        // rsLoRA scales by alpha/√r instead of alpha/r.
        let scale = if flag("use_rslora") {
            alpha / (rank as f64).sqrt()
        } else {
            alpha / rank as f64
        };
        let target_modules = cfg.get("target_modules").cloned().unwrap_or(Value::Null);
        let targets = match &target_modules {
            Value::Array(a) => a
                .iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect(),
            Value::String(s) => vec![s.clone()],
            _ => Vec::new(),
        };

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
            config: LoraConfig {
                rank,
                alpha,
                dropout,
                targets,
            },
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
