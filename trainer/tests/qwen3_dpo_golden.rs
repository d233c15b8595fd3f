//! Training Qwen3-VL against transformers (fixtures/qwen3_vl/dpo, made by
//! scripts/golden/make_qwen3_vl_dpo.py in float64 from the 4b-shaped fixture): a preference pair
//! on a 300x200 image tokenizes to transformers' ids, both answers' log-probs (M-RoPE positions,
//! image features, deep-stack features added after the first decoder layers) and the DPO loss
//! equal transformers', and the full-fine-tuning gradient of weights in the decoder (q/k norms
//! included), the merger, a deep-stack merger and the vision tower equals torch autograd's; a
//! LoRA adapter our trainer wrote gives, loaded by `PeftModel`, the log-probs, loss and factor
//! gradients we compute with it, on the modules PEFT attaches.

mod common;
#[path = "common/dpo_golden.rs"]
mod dpo_golden;

use std::path::Path;

use anyhow::Result;
use dpo_golden::{adapted_modules, QwenGolden};

fn golden() -> QwenGolden {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    QwenGolden {
        dir: fixtures.join("qwen3_vl/dpo"),
        model: fixtures.join("qwen3_vl/qwen3_vl_4b/model"),
        image: fixtures.join("qwen2_5_vl/media/300x200.png"),
    }
}

#[test]
fn qwen3_dpo_logprobs_loss_and_gradients_match_transformers() -> Result<()> {
    golden().check_full_fine_tuning()
}

#[test]
fn our_qwen3_lora_adapter_reproduces_peft_and_names_its_modules() -> Result<()> {
    let (model, peft_modules) = golden().check_lora()?;
    assert_eq!(adapted_modules(&model)?, peft_modules);
    Ok(())
}
