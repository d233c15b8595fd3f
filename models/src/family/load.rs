//! Building a family's model: the one place that knows every implementation.

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use super::judge_model::JudgeModel;
use super::kind::ModelFamily;
use crate::checkpoint::KeyLayout;
use crate::config::LlavaConfig;
use crate::llava::LlavaOnevision;
use crate::qwen2_5_vl::{Qwen25Vl, Qwen25VlConfig, Qwen25VlLayout};
use crate::Result;

impl ModelFamily {
    /// Loads the checkpoint in `dir` as this family's model.
    pub fn load(self, dir: &Path, dtype: DType, device: &Device) -> Result<Box<dyn JudgeModel>> {
        match self {
            ModelFamily::LlavaOnevision => Ok(Box::new(LlavaOnevision::load(dir, dtype, device)?)),
            ModelFamily::Qwen25Vl => Ok(Box::new(Qwen25Vl::load(dir, dtype, device)?)),
            ModelFamily::Qwen3Vl => Err(crate::Error::Config(format!(
                "{}: {}",
                dir.join("config.json").display(),
                self.not_trainable().unwrap_or_default()
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

/// Builds a Qwen2.5-VL model from any weight source whose names follow `layout` (a
/// checkpoint, or a `VarMap` for training).
pub fn build_qwen2_5_vl(
    cfg: Qwen25VlConfig,
    layout: &Qwen25VlLayout,
    vb: VarBuilder,
) -> Result<Box<dyn JudgeModel>> {
    Ok(Box::new(Qwen25Vl::new(cfg, layout, vb)?))
}
