//! The judge families unireward can run, and what each one answers to.

use crate::judge::templates::Family as TemplateFamily;

/// A judge family unireward can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelFamily {
    /// SigLIP → 2-layer projector → anyres packing → Qwen2 (UnifiedReward-7b, -7b-v1.5, -0.5b;
    /// both the transformers and the LLaVA-NeXT checkpoint layouts).
    LlavaOnevision,
}

impl ModelFamily {
    pub fn name(self) -> &'static str {
        match self {
            ModelFamily::LlavaOnevision => "llava-onevision",
        }
    }

    /// Which reference scripts' prompts this family's checkpoints were trained on.
    pub fn template_family(self) -> TemplateFamily {
        match self {
            ModelFamily::LlavaOnevision => TemplateFamily::Llava,
        }
    }
}
