//! Training Qwen2.5-VL against transformers and peft (fixtures/qwen2_5_vl/dpo, made by
//! scripts/golden/make_qwen2_5_vl_dpo.py in float64 from the 7b-shaped fixture): a preference
//! pair on a 300x200 image tokenizes to transformers' ids, both answers' log-probs (M-RoPE
//! positions, image features) and the DPO loss equal transformers', the full-fine-tuning
//! gradient of weights in the decoder, the merger and the vision tower equals torch autograd's,
//! and a LoRA adapter our trainer wrote gives, loaded by `PeftModel`, the log-probs, loss and
//! factor gradients we compute with it.

mod common;
#[path = "common/dpo_golden.rs"]
mod dpo_golden;

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use dpo_golden::{adapted_modules, QwenGolden};
use unireward_trainer::checkpoint_keys::TrainParts;
use unireward_trainer::varmap_model::VarMapModel;

fn golden() -> QwenGolden {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/qwen2_5_vl");
    QwenGolden {
        dir: fixtures.join("dpo"),
        model: fixtures.join("qwen2_5_vl_7b/model"),
        image: fixtures.join("media/300x200.png"),
    }
}

#[test]
fn dpo_logprobs_loss_and_gradients_match_transformers() -> Result<()> {
    golden().check_full_fine_tuning()
}

#[test]
fn our_lora_adapter_reproduces_peft_and_names_its_modules() -> Result<()> {
    let golden = golden();
    let (model, peft_modules) = golden.check_lora()?;
    // The adapter names what PeftModel attached (transformers 5's module paths), and a fresh
    // adapter of the same settings names the same modules today.
    let config = model.lora().context("adapter")?.config().clone();
    let mut fresh = VarMapModel::load(&golden.model, DType::F64, &Device::Cpu, TrainParts::all())?;
    fresh.add_lora(&config, 1)?;
    let ours = adapted_modules(&fresh)?;
    assert_eq!(ours, peft_modules);
    assert!(ours.iter().any(|m| m.contains("model.visual.")), "{ours:?}");
    assert!(
        ours.iter().any(|m| m.contains("model.language_model.")),
        "{ours:?}"
    );
    Ok(())
}
