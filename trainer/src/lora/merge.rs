//! `trainer merge-lora`: an adapter folded into a full checkpoint, in the base's key layout,
//! dtype and sharding.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use super::adapter::merged_weight;
use super::peft_file::AdapterFile;
use crate::checkpoint_keys::Shapes;
use crate::json_file::read_json;
use crate::model_files::{copy_model_files, WEIGHTS_FILE};
use crate::{Error, Result};

/// The weight files of the checkpoint in `dir` (one file or an index's shards), and the
/// index when there is one.
fn weight_files(dir: &Path) -> Result<(Vec<PathBuf>, Option<PathBuf>)> {
    let single = dir.join(WEIGHTS_FILE);
    if single.is_file() {
        return Ok((vec![single], None));
    }
    let index = dir.join(format!("{WEIGHTS_FILE}.index.json"));
    if !index.is_file() {
        return Err(Error::Config(format!(
            "{}: no {WEIGHTS_FILE} and no {WEIGHTS_FILE}.index.json",
            dir.display()
        )));
    }
    let map = read_json(&index)?;
    let files: BTreeSet<&str> = map
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::Config(format!("{}: no weight_map", index.display())))?
        .values()
        .filter_map(Value::as_str)
        .collect();
    Ok((
        files.into_iter().map(|f| dir.join(f)).collect(),
        Some(index),
    ))
}

fn open_safetensors(path: &Path) -> Result<MmapedSafetensors> {
    // SAFETY: mapped read-only; as every safetensors reader, we rely on nobody truncating
    // the file while it is read.
    unsafe { MmapedSafetensors::new(path) }
        .map_err(|e| Error::Config(format!("{}: cannot read safetensors: {e}", path.display())))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeSummary {
    /// Weights the adapter changed.
    pub modules: usize,
    /// The weight files written.
    pub files: Vec<PathBuf>,
}

/// Writes into `out` the checkpoint `base` with the adapter in `adapter` merged: each
/// adapted weight becomes W + scale·B·A (in W's dtype), every other tensor is copied, the
/// weight files keep the base's names and sharding, and the base's configuration and
/// tokenizer files are copied beside them.
pub fn merge(base: &Path, adapter: &Path, out: &Path) -> Result<MergeSummary> {
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same(out, base) || same(out, adapter) {
        return Err(Error::Config(format!(
            "--out {} is the base model's or the adapter's directory; write the merged \
             model elsewhere",
            out.display()
        )));
    }
    let file = AdapterFile::read(adapter, &Device::Cpu)?;
    let (files, index) = weight_files(base)?;
    let mut shapes = Shapes::new();
    for path in &files {
        for (key, view) in open_safetensors(path)?.tensors() {
            shapes.insert(key, view.shape().to_vec());
        }
    }
    let scale = file.scale;
    let modules = file.resolve(&shapes, adapter)?;

    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    copy_model_files(base, out)?;
    let mut written = Vec::with_capacity(files.len());
    for path in &files {
        let st = open_safetensors(path)?;
        let mut tensors = HashMap::new();
        for (key, _) in st.tensors() {
            let t = st.load(&key, &Device::Cpu)?;
            let module = key.strip_suffix(".weight").and_then(|p| modules.get(p));
            let t = match module {
                Some(m) => {
                    let merged = merged_weight(&t, &m.b, &m.a, scale)?;
                    if !all_finite(&merged)? && all_finite(&t)? {
                        return Err(Error::Config(format!(
                            "merging {} into {key}: the merged weight is not finite (it \
                             overflows {:?})",
                            m.module,
                            t.dtype()
                        )));
                    }
                    merged
                }
                None => t,
            };
            tensors.insert(key, t);
        }
        let name = path.file_name().unwrap_or_default();
        let to = out.join(name);
        candle_core::safetensors::save(&tensors, &to)?;
        written.push(to);
    }
    if let Some(index) = index {
        let to = out.join(index.file_name().unwrap_or_default());
        std::fs::copy(&index, &to).map_err(|e| Error::io(&to, e))?;
    }
    Ok(MergeSummary {
        modules: modules.len(),
        files: written,
    })
}

/// Whether `t` holds neither NaN nor infinity (0·x is 0 exactly for the finite values, NaN
/// for the others).
fn all_finite(t: &Tensor) -> Result<bool> {
    let zeros = (t.to_dtype(DType::F32)? * 0.0)?;
    Ok(zeros.sum_all()?.to_scalar::<f32>()? == 0.0)
}
