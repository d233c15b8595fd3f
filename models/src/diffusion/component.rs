//! One component directory of a diffusers pipeline (`unet/`, `vae/`, `text_encoder/`, ...):
//! its `config.json` and its memory-mapped weights.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::checkpoint::Checkpoint;
use crate::{Error, Result};

/// The weight names diffusers writes for its own models (full precision first).
pub const DIFFUSERS_WEIGHTS: &[&str] = &["diffusion_pytorch_model", "diffusion_pytorch_model.fp16"];
/// The weight names transformers writes (the text encoders of a pipeline).
pub const TRANSFORMERS_WEIGHTS: &[&str] = &["model", "model.fp16"];

/// Reads `dir/config.json` as `C` and opens the first weight file of `stems` beside it.
pub fn open_component<C: DeserializeOwned>(dir: &Path, stems: &[&str]) -> Result<(C, Checkpoint)> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let config = serde_json::from_str(&text).map_err(|source| Error::Json { path, source })?;
    Ok((config, Checkpoint::open_stem(dir, stems)?))
}
