//! The judge families unireward can run, and what each one answers to.

use crate::judge::templates::Family as TemplateFamily;

/// A judge family unireward can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelFamily {
    /// SigLIP → 2-layer projector → anyres packing → Qwen2 (UnifiedReward-7b, -7b-v1.5, -0.5b;
    /// both the transformers and the LLaVA-NeXT checkpoint layouts).
    LlavaOnevision,
    /// Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`): window-attention vision transformer
    /// → 2x2 merger → Qwen2 with 3-D M-RoPE positions (UnifiedReward-qwen-3b/7b/32b,
    /// UnifiedReward-2.0-qwen-*, UnifiedReward-Think-qwen-7b). The model is
    /// [`crate::qwen2_5_vl::Qwen25Vl`]; the trainer runs it through the family seam, the
    /// engine through its own `Decoder`.
    Qwen25Vl,
    /// Qwen3-VL, dense (`Qwen3VLForConditionalGeneration`): vision transformer with deep-stack
    /// features → Qwen3 decoder with q/k norms and interleaved M-RoPE
    /// (UnifiedReward-2.0-qwen3vl-*, UnifiedReward-Think-qwen3vl-*). The model is
    /// [`crate::qwen3_vl::Qwen3Vl`]; the trainer runs it through the family seam, the engine
    /// through its Qwen-VL `Decoder`.
    Qwen3Vl,
}

impl ModelFamily {
    /// Whether the engine runs this family through its Qwen-VL decoder (M-RoPE positions, the
    /// model's own vision transformer) rather than the LLaVA backends.
    pub fn is_qwen_vl(self) -> bool {
        matches!(self, ModelFamily::Qwen25Vl | ModelFamily::Qwen3Vl)
    }

    /// Why a command that runs judges through the LLaVA-shaped seams (the engine's backends,
    /// the exporter) cannot take this family yet; `None` when it can.
    pub fn not_runnable_by(self, what: &str) -> Option<String> {
        match self {
            ModelFamily::LlavaOnevision => None,
            ModelFamily::Qwen25Vl => Some(format!(
                "Qwen2.5-VL checkpoints (UnifiedReward-qwen-*, UnifiedReward-2.0-qwen-*, \
                 UnifiedReward-Think-qwen-7b) are not run by {what}, which takes LLaVA-OneVision \
                 judges (UnifiedReward-7b, -7b-v1.5, -0.5b); the engine's Qwen-VL backends (candle, \
                 and ONNX Runtime on their exports) run them"
            )),
            ModelFamily::Qwen3Vl => Some(format!(
                "Qwen3-VL checkpoints (UnifiedReward-2.0-qwen3vl-*, UnifiedReward-Think-qwen3vl-*) \
                 are not run by {what}, which takes LLaVA-OneVision judges (UnifiedReward-7b, \
                 -7b-v1.5, -0.5b); the engine's Qwen-VL backends (candle, and ONNX Runtime on \
                 their exports) run them"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ModelFamily::LlavaOnevision => "llava-onevision",
            ModelFamily::Qwen25Vl => "qwen2.5-vl",
            ModelFamily::Qwen3Vl => "qwen3-vl",
        }
    }

    /// Which reference scripts' prompts this family's checkpoints were trained on.
    pub fn template_family(self) -> TemplateFamily {
        match self {
            ModelFamily::LlavaOnevision => TemplateFamily::Llava,
            ModelFamily::Qwen25Vl => TemplateFamily::Qwen,
            // Every Qwen3-VL UnifiedReward checkpoint is a 2.0 or Think one.
            ModelFamily::Qwen3Vl => TemplateFamily::V2,
        }
    }
}
