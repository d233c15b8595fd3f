//! The model-family seam: what differs between judge families sits behind [`JudgeModel`]
//! (the candle model: vision encoder, packing, positions, decoder) and [`ModelFamily`] (which
//! family a checkpoint is, how to build its model, which prompt templates it answers).
//! The engine's candle backend, the trainer and the exporter hold a family through these, so
//! a second family (Qwen2.5-VL, Qwen3-VL) is one more variant and one more implementation.
//!
//! LLaVA-OneVision is the first implementation (`crate::llava`).

mod detect;
mod judge_model;

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use crate::checkpoint::KeyLayout;
use crate::config::LlavaConfig;
use crate::judge::templates::Family as TemplateFamily;
use crate::llava::LlavaOnevision;
use crate::Result;

pub use detect::UnsupportedFamily;
pub use judge_model::JudgeModel;

/// A judge family unireward can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelFamily {
    /// SigLIP → 2-layer projector → anyres packing → Qwen2 (UnifiedReward-7b, -7b-v1.5, -0.5b;
    /// both the transformers and the LLaVA-NeXT checkpoint layouts).
    LlavaOnevision,
}

impl ModelFamily {
    /// The family of the checkpoint in `dir`, from its `config.json`; a known family that is
    /// not implemented yet is refused by name, before any weight is read.
    pub fn of_dir(dir: &Path) -> Result<Self> {
        detect::family_of_config(&dir.join("config.json"))
    }

    pub fn name(self) -> &'static str {
        match self {
            ModelFamily::LlavaOnevision => "llava-onevision",
        }
    }

    /// Loads the checkpoint in `dir` as this family's model.
    pub fn load(self, dir: &Path, dtype: DType, device: &Device) -> Result<Box<dyn JudgeModel>> {
        match self {
            ModelFamily::LlavaOnevision => Ok(Box::new(LlavaOnevision::load(dir, dtype, device)?)),
        }
    }

    /// Which reference scripts' prompts this family's checkpoints were trained on.
    pub fn template_family(self) -> TemplateFamily {
        match self {
            ModelFamily::LlavaOnevision => TemplateFamily::Llava,
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
