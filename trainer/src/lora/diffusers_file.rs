//! A UNet's adapter as diffusers saves and loads it: `pytorch_lora_weights.safetensors` with
//! the keys `unet.<module>.lora_A.weight` / `.lora_B.weight` (PEFT's factors under the
//! pipeline component's name) and the adapter's `LoraConfig` as JSON in the file's
//! `lora_adapter_metadata` (what `StableDiffusionPipeline.save_lora_weights(...,
//! unet_lora_adapter_metadata=...)` writes and `load_lora_weights` reads back; without it
//! diffusers would take alpha = r, a scale of 1, whatever the adapter was trained with).

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};

use super::adapter::LoraAdapter;
use super::config::LoraConfig;
use super::peft_file::{peft_key, A_SUFFIX, B_SUFFIX, PEFT_PREFIX};
use crate::checkpoint_keys::Shapes;
use crate::{Error, Result};

/// The file diffusers' `load_lora_weights(dir)` looks for.
pub const DIFFUSERS_LORA_FILE: &str = "pytorch_lora_weights.safetensors";
/// The pipeline component the factors belong to.
const COMPONENT: &str = "unet";
const METADATA_KEY: &str = "lora_adapter_metadata";
/// A header larger than this is not an adapter's (safetensors' own bound is 100 MB).
const MAX_HEADER: u64 = 100 << 20;

/// The adapter's settings as diffusers stores them: `LoraConfig` keyword arguments, each
/// under the component's prefix (`unet.r`, ...).
fn metadata_json(adapter: &LoraAdapter, target_modules: &Value) -> Value {
    let c = adapter.config();
    let mut m = serde_json::Map::new();
    for (k, v) in [
        ("r", json!(c.rank)),
        // An integral alpha as an integer, as PEFT's configs hold it.
        (
            "lora_alpha",
            if c.alpha.fract() == 0.0 && c.alpha.abs() < 1e15 {
                json!(c.alpha as i64)
            } else {
                json!(c.alpha)
            },
        ),
        ("lora_dropout", json!(c.dropout)),
        ("target_modules", target_modules.clone()),
        ("bias", json!("none")),
        ("use_dora", json!(false)),
        ("use_rslora", json!(false)),
        ("init_lora_weights", json!(true)),
    ] {
        m.insert(format!("{COMPONENT}.{k}"), v);
    }
    Value::Object(m)
}

/// Writes `adapter` into `dir` (which exists) as diffusers saves a UNet's LoRA.
pub fn save_diffusers(adapter: &LoraAdapter, dir: &Path) -> Result<()> {
    let tensors: BTreeMap<String, Tensor> = adapter
        .tensors()
        .into_iter()
        .map(|(k, t)| {
            let module = k.strip_prefix(PEFT_PREFIX).unwrap_or(&k);
            (format!("{COMPONENT}.{module}"), t)
        })
        .collect();
    // diffusers writes the metadata with `json.dumps(indent=2, sort_keys=True)`; serde_json's
    // map is sorted, and the indent only changes the whitespace.
    let metadata = serde_json::to_string_pretty(&metadata_json(adapter, adapter.target_modules()))
        .map_err(|e| Error::Config(format!("adapter metadata: {e}")))?;
    let info = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        (METADATA_KEY.to_string(), metadata),
    ]);
    let path = dir.join(DIFFUSERS_LORA_FILE);
    safetensors::tensor::serialize_to_file(tensors.iter(), Some(info), &path)
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    Ok(())
}

/// The `__metadata__` of the safetensors file at `path` (the header only is read).
fn file_metadata(path: &Path) -> Result<HashMap<String, String>> {
    let io = |e| Error::io(path, e);
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(io)?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER {
        return Err(Error::Config(format!(
            "{}: safetensors header of {n} bytes",
            path.display()
        )));
    }
    let mut header = Vec::with_capacity(n as usize);
    file.take(n).read_to_end(&mut header).map_err(io)?;
    let header: Value = serde_json::from_slice(&header)
        .map_err(|e| Error::Config(format!("{}: bad safetensors header: {e}", path.display())))?;
    Ok(header
        .get("__metadata__")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default())
}

/// Reads the UNet adapter in `dir` (written by diffusers or by us) for a UNet whose weights
/// have `shapes`: its settings from the file's metadata (or diffusers' defaults without it:
/// the rank from the factors, alpha = r), its factors as variables in `dtype`.
pub fn read_diffusers(
    dir: &Path,
    shapes: &Shapes,
    dtype: DType,
    device: &Device,
) -> Result<LoraAdapter> {
    let path = dir.join(DIFFUSERS_LORA_FILE);
    if !path.is_file() {
        return Err(Error::Config(format!(
            "{}: no {DIFFUSERS_LORA_FILE} (a UNet adapter as diffusers saves it)",
            dir.display()
        )));
    }
    let bad = |msg: String| Error::Config(format!("{}: {msg}", path.display()));
    let metadata = file_metadata(&path)?;
    let settings: serde_json::Map<String, Value> = match metadata.get(METADATA_KEY) {
        Some(text) => {
            serde_json::from_str(text).map_err(|e| bad(format!("{METADATA_KEY}: {e}")))?
        }
        None => serde_json::Map::new(),
    };
    let setting = |k: &str| settings.get(&format!("{COMPONENT}.{k}"));
    for flag in ["use_dora", "use_rslora"] {
        if setting(flag).and_then(Value::as_bool).unwrap_or(false) {
            return Err(bad(format!("{flag} is not supported")));
        }
    }
    let raw = candle_core::safetensors::load(&path, device)?;
    let mut factors: BTreeMap<String, (Option<Tensor>, Option<Tensor>)> = BTreeMap::new();
    for (key, t) in raw {
        let Some(rest) = key.strip_prefix(&format!("{COMPONENT}.")) else {
            return Err(bad(format!(
                "{key}: not a UNet factor (expected `{COMPONENT}.<module>.lora_A.weight`; \
                 text-encoder adapters and kohya-style files are not supported)"
            )));
        };
        if let Some(module) = rest.strip_suffix(A_SUFFIX) {
            factors.entry(module.to_string()).or_default().0 = Some(t);
        } else if let Some(module) = rest.strip_suffix(B_SUFFIX) {
            factors.entry(module.to_string()).or_default().1 = Some(t);
        } else {
            return Err(bad(format!("{key}: not a lora_A / lora_B weight")));
        }
    }
    let mut modules = Vec::with_capacity(factors.len());
    let mut rank = None;
    for (module, pair) in factors {
        let (Some(a), Some(b)) = pair else {
            return Err(bad(format!("{module}: lora_A or lora_B is missing")));
        };
        let dims = shapes
            .get(&format!("{module}.weight"))
            .ok_or_else(|| bad(format!("{module}: the UNet has no such linear layer")))?;
        let (r, d_in) = a.dims2()?;
        let (d_out, r_b) = b.dims2()?;
        if dims.as_slice() != [d_out, d_in] || r != r_b {
            return Err(bad(format!(
                "{module}: factors A {:?} and B {:?} do not fit its weight {dims:?}",
                a.dims(),
                b.dims()
            )));
        }
        if *rank.get_or_insert(r) != r {
            return Err(bad(
                "factors of different ranks (rank_pattern) are not supported".into(),
            ));
        }
        modules.push((module, a.to_dtype(dtype)?, b.to_dtype(dtype)?));
    }
    let rank = rank.ok_or_else(|| bad("holds no factors".into()))?;
    if let Some(r) = setting("r").and_then(Value::as_u64) {
        if r as usize != rank {
            return Err(bad(format!(
                "metadata says r = {r}, the factors have rank {rank}"
            )));
        }
    }
    let alpha = setting("lora_alpha")
        .and_then(Value::as_f64)
        .unwrap_or(rank as f64);
    let target_modules = setting("target_modules").cloned().unwrap_or_else(|| {
        json!(modules
            .iter()
            .map(|(m, _, _)| m.clone())
            .collect::<Vec<_>>())
    });
    let config = LoraConfig::new(rank, Some(alpha), 0.0, Vec::new());
    LoraAdapter::from_factors(config, target_modules, modules)
}

/// Overwrites `adapter`'s factors with those saved in `dir` by [`save_diffusers`].
pub fn restore_diffusers(adapter: &LoraAdapter, dir: &Path) -> Result<()> {
    let path = dir.join(DIFFUSERS_LORA_FILE);
    if !path.is_file() {
        return Err(Error::Resume(format!("{} is missing", path.display())));
    }
    let device = adapter
        .vars()
        .first()
        .map(|(_, v)| v.device().clone())
        .unwrap_or(Device::Cpu);
    let values: HashMap<String, Tensor> = candle_core::safetensors::load(&path, &device)?
        .into_iter()
        .filter_map(|(k, t)| {
            let module = k.strip_prefix(&format!("{COMPONENT}."))?.to_string();
            let (module, suffix) = if let Some(m) = module.strip_suffix(A_SUFFIX) {
                (m.to_string(), A_SUFFIX)
            } else {
                (module.strip_suffix(B_SUFFIX)?.to_string(), B_SUFFIX)
            };
            Some((peft_key(&module, suffix), t))
        })
        .collect();
    adapter.set_tensors(&values)
}
