//! `trainer merge-lora` on a Qwen-VL adapter: one check for both families (`qwen_train.rs`,
//! `qwen3_train.rs`). A LoRA trained by `trainer dpo` (decoder attention, the tower's `qkv`, a
//! merger layer) merged into its base gives a checkpoint with the base's keys and dtypes whose
//! log-probs are the adapted model's.

use std::path::Path;

use anyhow::Result;
use candle_core::{DType, Device};
use serde_json::Value;
use unireward_models::family::load_judge;
use unireward_trainer::checkpoint_keys::TrainParts;
use unireward_trainer::data::dpo::DpoData;
use unireward_trainer::data::Preparer;
use unireward_trainer::objectives::dpo::compute_reference;
use unireward_trainer::varmap_model::{Architecture, VarMapModel};

use super::{path_str, trainer, weights, write_jsonl};

/// Trains a LoRA on `targets` over `pairs` from the checkpoint in `source` (copied and cast to
/// f64), merges it, and compares the merged checkpoint with the adapter and the base.
pub fn check_merge(source: &Path, pairs: &[Value], targets: &str) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("pairs.jsonl");
    write_jsonl(&data, pairs)?;
    // The fixture in f64: merged into its bf16, W + s·B·A is rounded (the adapter's path keeps
    // it apart), which moved Qwen2.5-VL's log-probs by 9e-2, and in f32 the two orders of
    // summation differ by 4.6e-5; in f64 the two must agree to rounding.
    let model = tmp.path().join("base");
    std::fs::create_dir_all(&model)?;
    for entry in std::fs::read_dir(source)? {
        let path = entry?.path();
        let is_weights = path.extension().is_some_and(|e| e == "safetensors")
            || path
                .file_name()
                .is_some_and(|n| n == "model.safetensors.index.json");
        if let (Some(name), false) = (path.file_name(), is_weights) {
            std::fs::copy(&path, model.join(name))?;
        }
    }
    // Every shard's tensors, in one f64 file.
    let mut f64_weights = std::collections::HashMap::new();
    for entry in std::fs::read_dir(source)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            for (k, t) in candle_core::safetensors::load(&path, &Device::Cpu)? {
                f64_weights.insert(k, t.to_dtype(DType::F64)?);
            }
        }
    }
    candle_core::safetensors::save(&f64_weights, model.join("model.safetensors"))?;
    let out = tmp.path().join("adapter");
    trainer(&[
        "dpo",
        "--kind",
        "vlm",
        "--model",
        path_str(&model),
        "--data",
        path_str(&data),
        "--out",
        path_str(&out),
        "--beta",
        "0.1",
        "--no-progress",
        "--lora-rank",
        "4",
        "--lora-alpha",
        "8",
        "--lora-targets",
        targets,
        "--train-vision",
        "--max-steps",
        "4",
        "--batch-size",
        "2",
        "--lr",
        "2e-2",
        "--warmup-ratio",
        "0",
    ])?;
    let merged = tmp.path().join("merged");
    trainer(&[
        "merge-lora",
        "--model",
        path_str(&model),
        "--adapter",
        path_str(&out),
        "--out",
        path_str(&merged),
    ])?;
    let (mw, bw) = (weights(&merged)?, weights(&model)?);
    let mut keys: Vec<&String> = mw.keys().collect();
    let mut base_keys: Vec<&String> = bw.keys().collect();
    keys.sort();
    base_keys.sort();
    assert_eq!(keys, base_keys);
    assert!(mw.iter().all(|(k, t)| t.dtype() == bw[k].dtype()));
    assert!(!merged.join("adapter_config.json").exists());

    let mut adapted = VarMapModel::load(&model, DType::F64, &Device::Cpu, TrainParts::all())?;
    adapted.load_lora(&out)?;
    let root = tmp.path().to_path_buf();
    let prep = match adapted.architecture() {
        Architecture::QwenVl(cfg, _) => Preparer::qwen_vl(&model, cfg, root, None)?,
        Architecture::Qwen3Vl(cfg, _) => Preparer::qwen_vl(&model, cfg, root, None)?,
        Architecture::Llava(_) => anyhow::bail!("not a Qwen-VL checkpoint"),
    };
    let family = load_judge(&model, DType::F64, &Device::Cpu)?.family();
    let pairs = DpoData::read(&data, prep)?;
    let via_adapter = compute_reference(adapted.model(), &pairs, 2, false)?;
    let via_merged = compute_reference(
        load_judge(&merged, DType::F64, &Device::Cpu)?.as_ref(),
        &pairs,
        2,
        false,
    )?;
    let via_base = compute_reference(
        load_judge(&model, DType::F64, &Device::Cpu)?.as_ref(),
        &pairs,
        2,
        false,
    )?;
    let (mut worst, mut moved): (f64, f64) = (0.0, 0.0);
    for ((a, m), b) in via_adapter.iter().zip(&via_merged).zip(&via_base) {
        for k in 0..2 {
            worst = worst.max((a[k] - m[k]).abs());
            moved = moved.max((a[k] - b[k]).abs());
        }
    }
    println!(
        "{}: log-probs adapter vs merged max diff {worst:.2e}; adapter vs base max diff {moved:.3}",
        family.name()
    );
    assert!(worst <= 1e-9, "adapter vs merged {worst}");
    assert!(moved > 0.1, "the adapter changes the model");
    Ok(())
}
