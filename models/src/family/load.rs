//! Building a family's model: the one place that knows every implementation.

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use super::judge_model::JudgeModel;
use super::kind::ModelFamily;
use crate::checkpoint::KeyLayout;
use crate::config::LlavaConfig;
use crate::llava::LlavaOnevision;
use crate::Result;

impl ModelFamily {
    /// Loads the checkpoint in `dir` as this family's model.
    pub fn load(self, dir: &Path, dtype: DType, device: &Device) -> Result<Box<dyn JudgeModel>> {
        match self {
            ModelFamily::LlavaOnevision => Ok(Box::new(LlavaOnevision::load(dir, dtype, device)?)),
            // `JudgeModel` hands out encode-tiles and 1-D-position calls; Qwen2.5-VL's vision
            // tower needs each medium's grid and its decoder 3-D positions from the prompt's
            // media layout, which the trait does not carry yet.
            ModelFamily::Qwen25Vl => Err(crate::Error::Config(format!(
                "{}: {}",
                dir.join("config.json").display(),
                self.not_runnable_by("the judge-model seam (engine, trainer)")
                    .unwrap_or_default()
            ))),
        }
    }
}

/// Detects the family of `dir` and loads it: what every command that opens a checkpoint calls.
pub fn load_judge(dir: &Path, dtype: DType, device: &Device) -> Result<Box<dyn JudgeModel>> {
    ModelFamily::of_dir(dir)?.load(dir, dtype, device)
}

/// Builds a LLaVA-OneVision model from any weight source whose names follow `layout` (a
/// checkpoint, or a `VarMap` for training).
pub fn build_llava(
    cfg: LlavaConfig,
    layout: KeyLayout,
    vb: VarBuilder,
) -> Result<Box<dyn JudgeModel>> {
    Ok(Box::new(LlavaOnevision::new(cfg, layout, vb)?))
}
