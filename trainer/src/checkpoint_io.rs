//! Writing trained weights so that `LlavaOnevision::load` reads them back: every tensor under
//! the key it was loaded with (the checkpoint's own layout, which `KeyLayout` maps the model
//! onto), in one `model.safetensors`, with the source directory's other files (config,
//! tokenizer, processor and chat template) copied beside it.
//!
//! With LoRA, only the adapter is written, in the PEFT layout (`adapter_config.json`,
//! `adapter_model.safetensors`; see [`crate::lora`]).
//!
//! Training checkpoints (`OUT/checkpoint-STEP/`) add the optimizer moments and the loop's
//! state; each is written to a temporary directory and renamed into place, so a directory
//! with that name is always complete. Files are synced before a rename and directories
//! after it: otherwise a crash can leave the rename on disk and the data not.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde_json::Value;
use unireward_models::checkpoint::{load_all, Checkpoint};

use crate::durable_file::{sync_dir, sync_files_in};
use crate::json_file::write_json;
use crate::model_files::{
    copy_model_files, ADAPTER_WEIGHTS_FILE, OPTIMIZER_FILE, STATE_FILE, WEIGHTS_FILE,
};
use crate::optim::AdamW;
use crate::trainee::Trainee;
use crate::varmap_model::VarMapModel;
use crate::{Error, Result};

const CHECKPOINT_PREFIX: &str = "checkpoint-";

/// Writes `model`'s weights and the non-weight files of `source_dir` into `dir` (created).
pub fn write_model(model: &VarMapModel, source_dir: &Path, dir: &Path) -> Result<()> {
    copy_model_files(source_dir, dir)?;
    let tensors = model.tensors()?;
    let path = dir.join(WEIGHTS_FILE);
    candle_core::safetensors::save(&tensors, &path)?;
    Ok(())
}

/// Every tensor of the checkpoint in `dir`, by name.
pub fn read_weights(dir: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    Ok(load_all(&Checkpoint::open(dir)?, device)?)
}

/// The adapter factors saved in `dir`, by PEFT name.
pub fn read_adapter_weights(dir: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let path = dir.join(ADAPTER_WEIGHTS_FILE);
    if !path.is_file() {
        return Err(Error::Resume(format!(
            "{} holds no adapter ({ADAPTER_WEIGHTS_FILE})",
            dir.display()
        )));
    }
    Ok(candle_core::safetensors::load(&path, device)?)
}

pub fn checkpoint_dir(out: &Path, step: usize) -> PathBuf {
    out.join(format!("{CHECKPOINT_PREFIX}{step}"))
}

/// Writes `OUT/checkpoint-STEP/` (weights and copied config files, or the adapter; optimizer
/// state; `state`) through a temporary directory.
pub fn save_checkpoint(
    out: &Path,
    step: usize,
    model: &impl Trainee,
    optimizer: &AdamW,
    state: &Value,
    source_dir: &Path,
) -> Result<PathBuf> {
    let tmp = out.join(format!(".{CHECKPOINT_PREFIX}{step}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    model.write_trained(source_dir, &tmp)?;
    optimizer.save(&tmp.join(OPTIMIZER_FILE))?;
    write_json(&tmp.join(STATE_FILE), state)?;
    sync_files_in(&tmp)?;
    let dir = checkpoint_dir(out, step);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    std::fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, e))?;
    sync_dir(out)?;
    Ok(dir)
}

/// Writes the final weights (or adapter) into `out` itself (through a temporary directory
/// whose files are then renamed into place).
pub fn save_final(out: &Path, model: &impl Trainee, source_dir: &Path) -> Result<()> {
    let tmp = out.join(".final.tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    model.write_trained(source_dir, &tmp)?;
    sync_files_in(&tmp)?;
    let entries = std::fs::read_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(&tmp, e))?;
        let to = out.join(entry.file_name());
        std::fs::rename(entry.path(), &to).map_err(|e| Error::io(&to, e))?;
    }
    sync_dir(out)?;
    std::fs::remove_dir(&tmp).map_err(|e| Error::io(&tmp, e))
}

/// Complete checkpoints in `out`, by step, oldest first.
pub fn list_checkpoints(out: &Path) -> Result<Vec<(usize, PathBuf)>> {
    if !out.is_dir() {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(out).map_err(|e| Error::io(out, e))? {
        let entry = entry.map_err(|e| Error::io(out, e))?;
        let name = entry.file_name();
        let step = name
            .to_str()
            .and_then(|n| n.strip_prefix(CHECKPOINT_PREFIX))
            .and_then(|s| s.parse::<usize>().ok());
        if let Some(step) = step {
            if entry.path().join(STATE_FILE).is_file() {
                found.push((step, entry.path()));
            }
        }
    }
    found.sort();
    Ok(found)
}

pub fn latest_checkpoint(out: &Path) -> Result<Option<(usize, PathBuf)>> {
    Ok(list_checkpoints(out)?.pop())
}

/// Removes all but the newest `keep` checkpoints (`keep` 0 keeps them all).
pub fn prune_checkpoints(out: &Path, keep: usize) -> Result<()> {
    if keep == 0 {
        return Ok(());
    }
    let all = list_checkpoints(out)?;
    let excess = all.len().saturating_sub(keep);
    for (_, dir) in all.into_iter().take(excess) {
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    Ok(())
}
