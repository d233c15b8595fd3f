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
use crate::qwen3_vl::{Qwen3Vl, Qwen3VlConfig};
use crate::Result;

impl ModelFamily {
    /// Loads the checkpoint in `dir` as this family's model.
    pub fn load(self, dir: &Path, dtype: DType, device: &Device) -> Result<Box<dyn JudgeModel>> {
        match self {
            ModelFamily::LlavaOnevision => Ok(Box::new(LlavaOnevision::load(dir, dtype, device)?)),
            ModelFamily::Qwen25Vl => Ok(Box::new(Qwen25Vl::load(dir, dtype, device)?)),
            ModelFamily::Qwen3Vl => Ok(Box::new(Qwen3Vl::load(dir, dtype, device)?)),
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

/// Builds a Qwen3-VL model from any weight source in its checkpoints' key layout (a
/// checkpoint, or a `VarMap` for training); `tied`: the head is the embeddings.
pub fn build_qwen3_vl(
    cfg: Qwen3VlConfig,
    tied: bool,
    vb: VarBuilder,
) -> Result<Box<dyn JudgeModel>> {
    Ok(Box::new(Qwen3Vl::new(cfg, tied, vb)?))
}
