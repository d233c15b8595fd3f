//! A LoRA adapter's settings ([`LoraConfig`]) and PEFT's `adapter_config.json`, in which
//! they are stored: read from adapters written by PEFT or by us (what this trainer cannot
//! apply is refused, naming the setting), and written as PEFT writes it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::json_file::read_json;
use crate::{Error, Result};

/// The decoder's attention projections (with the default parts, the vision tower is frozen,
/// so its own `q_proj`… are not adapted).
pub const DEFAULT_TARGETS: [&str; 4] = ["q_proj", "k_proj", "v_proj", "o_proj"];
/// A UNet's attention projections, what diffusers' LoRA training scripts adapt
/// (`train_text_to_image_lora.py`: `target_modules=["to_k", "to_q", "to_v", "to_out.0"]`).
pub const UNET_DEFAULT_TARGETS: [&str; 4] = ["to_k", "to_q", "to_v", "to_out.0"];

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
                "--lora-dropout {}: only 0 is supported. Dropout on the adapter's input would \
                 need a training-only, seeded mask (so that a resumed run repeats the \
                 uninterrupted one), which this trainer does not have yet",
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

/// An adapter's settings as its `adapter_config.json` states them.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterSettings {
    pub config: LoraConfig,
    /// The factor B·A is multiplied by: alpha / r, or alpha / √r with rsLoRA.
    pub scale: f64,
    /// `target_modules` as written (null when absent), kept to be written again.
    pub target_modules: Value,
}

/// A setting of the type it should have, or anything else, which counts as absent (PEFT's
/// default then applies, or the setting is refused as missing).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Loose<T> {
    Typed(T),
    Other(IgnoredAny),
}

fn typed<T>(setting: Option<Loose<T>>) -> Option<T> {
    match setting {
        Some(Loose::Typed(t)) => Some(t),
        Some(Loose::Other(_)) | None => None,
    }
}

/// `adapter_config.json` as written: the settings this trainer reads (others are ignored).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawAdapterConfig {
    peft_type: Option<Loose<String>>,
    r: Option<Loose<u64>>,
    lora_alpha: Option<Loose<f64>>,
    lora_dropout: Option<Loose<f64>>,
    use_dora: Option<Loose<bool>>,
    fan_in_fan_out: Option<Loose<bool>>,
    use_rslora: Option<Loose<bool>>,
    rank_pattern: Option<Loose<BTreeMap<String, IgnoredAny>>>,
    alpha_pattern: Option<Loose<BTreeMap<String, IgnoredAny>>>,
    bias: Option<Loose<String>>,
    modules_to_save: Option<IgnoredAny>,
    target_modules: Option<Value>,
}

impl AdapterSettings {
    /// Reads `adapter_config.json` at `path`; only plain LoRA (optionally rsLoRA) is
    /// accepted.
    pub fn read(path: &Path) -> Result<Self> {
        let bad = |msg: String| Error::Config(format!("{}: {msg}", path.display()));
        let raw = match read_json(path)? {
            value @ Value::Object(_) => {
                RawAdapterConfig::deserialize(value).map_err(|e| bad(e.to_string()))?
            }
            _ => RawAdapterConfig::default(),
        };
        let peft_type = typed(raw.peft_type).unwrap_or_default();
        if peft_type != "LORA" {
            return Err(bad(format!(
                "peft_type {peft_type:?}: only LORA adapters are supported"
            )));
        }
        let rank = typed(raw.r)
            .filter(|&r| r > 0)
            .ok_or_else(|| bad("no positive integer r".into()))? as usize;
        let alpha = typed(raw.lora_alpha).ok_or_else(|| bad("no lora_alpha".into()))?;
        let dropout = typed(raw.lora_dropout).unwrap_or(0.0);
        for (unsupported, set) in [
            ("use_dora", typed(raw.use_dora)),
            ("fan_in_fan_out", typed(raw.fan_in_fan_out)),
        ] {
            if set.unwrap_or(false) {
                return Err(bad(format!("{unsupported} is not supported")));
            }
        }
        for (pattern, set) in [
            ("rank_pattern", typed(raw.rank_pattern)),
            ("alpha_pattern", typed(raw.alpha_pattern)),
        ] {
            if set.is_some_and(|m| !m.is_empty()) {
                return Err(bad(format!(
                    "{pattern} (per-module ranks or alphas) is not supported"
                )));
            }
        }
        let bias = typed(raw.bias).unwrap_or_else(|| "none".into());
        if bias != "none" {
            return Err(bad(format!(
                "bias {bias:?}: only adapters without trained biases are supported"
            )));
        }
        if raw.modules_to_save.is_some() {
            return Err(bad("modules_to_save is not supported".into()));
        }
        // rsLoRA scales by alpha/√r instead of alpha/r.
        let scale = if typed(raw.use_rslora).unwrap_or(false) {
            alpha / (rank as f64).sqrt()
        } else {
            alpha / rank as f64
        };
        let target_modules = raw.target_modules.unwrap_or(Value::Null);
        let targets = match &target_modules {
            Value::Array(a) => a
                .iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect(),
            Value::String(s) => vec![s.clone()],
            _ => Vec::new(),
        };
        Ok(Self {
            config: LoraConfig {
                rank,
                alpha,
                dropout,
                targets,
            },
            scale,
            target_modules,
        })
    }
}

impl LoraConfig {
    /// `adapter_config.json` as PEFT writes it for this configuration, adapting
    /// `target_modules` of `base_model`.
    pub fn adapter_config_json(&self, target_modules: &Value, base_model: &str) -> Value {
        json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": self.rank,
            "lora_alpha": json_number(self.alpha),
            "lora_dropout": self.dropout,
            "target_modules": target_modules,
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
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json_file::write_json;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
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

    fn read(config: Value) -> std::result::Result<AdapterSettings, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("adapter_config.json");
        write_json(&path, &config).map_err(|e| e.to_string())?;
        AdapterSettings::read(&path).map_err(|e| {
            let msg = e.to_string();
            let prefix = format!("{}: ", path.display());
            msg.strip_prefix(&prefix).unwrap_or(&msg).to_string()
        })
    }

    /// What is read, what PEFT's defaults fill in, and the settings refused, as the file
    /// states them (a setting of another type counts as absent).
    #[test]
    fn adapter_config_is_read_with_peft_defaults() {
        let written = LoraConfig::new(4, Some(8.0), 0.0, names(&["q_proj"]));
        let back = read(written.adapter_config_json(&json!(["q_proj", "v_proj"]), "base")).unwrap();
        assert_eq!(back.scale, 2.0);
        assert_eq!(back.config.targets, names(&["q_proj", "v_proj"]));
        assert_eq!(back.target_modules, json!(["q_proj", "v_proj"]));

        let minimal = read(json!({"peft_type": "LORA", "r": 4, "lora_alpha": 2,
            "lora_dropout": "high", "bias": 3, "use_dora": "yes", "rank_pattern": [1],
            "target_modules": "q_proj", "modules_to_save": null}))
        .unwrap();
        assert_eq!(
            minimal.config,
            LoraConfig {
                rank: 4,
                alpha: 2.0,
                dropout: 0.0,
                targets: names(&["q_proj"]),
            }
        );
        assert_eq!(minimal.scale, 0.5);
        let rs = read(json!({"peft_type": "LORA", "r": 4, "lora_alpha": 2, "use_rslora": true}))
            .unwrap();
        assert_eq!(rs.scale, 1.0);
        assert_eq!(rs.target_modules, Value::Null);
        assert!(rs.config.targets.is_empty());

        let lora = |extra: Value| {
            let mut c = json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8});
            for (k, v) in extra.as_object().into_iter().flatten() {
                c[k] = v.clone();
            }
            read(c).err().unwrap_or_default()
        };
        assert_eq!(
            read(json!([1, 2])).err().unwrap_or_default(),
            "peft_type \"\": only LORA adapters are supported"
        );
        assert_eq!(
            lora(json!({"peft_type": "IA3"})),
            "peft_type \"IA3\": only LORA adapters are supported"
        );
        for r in [json!(0), json!(-2), json!(4.0), json!("4")] {
            assert_eq!(lora(json!({"r": r})), "no positive integer r");
        }
        assert_eq!(lora(json!({"lora_alpha": "8"})), "no lora_alpha");
        assert_eq!(
            lora(json!({"fan_in_fan_out": true})),
            "fan_in_fan_out is not supported"
        );
        assert_eq!(
            lora(json!({"alpha_pattern": {"q_proj": 2}})),
            "alpha_pattern (per-module ranks or alphas) is not supported"
        );
        assert_eq!(
            lora(json!({"bias": "all"})),
            "bias \"all\": only adapters without trained biases are supported"
        );
        assert_eq!(
            lora(json!({"modules_to_save": ["lm_head"]})),
            "modules_to_save is not supported"
        );
    }
}
