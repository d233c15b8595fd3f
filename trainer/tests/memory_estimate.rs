//! The memory estimate printed before training: its parts follow from the model and the
//! step's shape, checkpointing and LoRA shrink what they should, and a run that cannot fit is
//! refused before its first step with a message that says what would help.

mod common;

use anyhow::Result;
use candle_core::{DType, Device};
use common::*;
use unireward_trainer::checkpoint_keys::TrainParts;
use unireward_trainer::lora::LoraConfig;
use unireward_trainer::memory_estimate::{MemoryEstimate, StepShape};
use unireward_trainer::varmap_model::VarMapModel;

const SHAPE: StepShape = StepShape {
    rows: 2,
    tokens: 1200,
    scored: 40,
    tiles: 5,
};

#[test]
fn the_estimate_follows_the_model_and_the_step() -> Result<()> {
    let dir = golden_model()?;
    let parts = TrainParts {
        vision: false,
        projector: true,
        decoder: true,
    };
    let mut model = VarMapModel::load(&dir, DType::F32, &Device::Cpu, parts)?;
    let all: usize = model
        .shapes()?
        .values()
        .map(|d| d.iter().product::<usize>())
        .sum();
    let trained: usize = model
        .trained_vars()?
        .iter()
        .map(|(_, v)| v.elem_count())
        .sum();
    let plain = MemoryEstimate::new(&model, SHAPE)?;
    println!("golden model, 2 x 1200 tokens: {plain}");
    assert_eq!(plain.weights, 4 * all as u64);
    assert_eq!(plain.grads, 4 * trained as u64);
    // AdamW's two f32 moments.
    assert_eq!(plain.optimizer, 2 * 4 * trained as u64);
    assert!(plain.activations > 0);

    // More tokens, more activations; checkpointing keeps fewer.
    let longer = MemoryEstimate::new(
        &model,
        StepShape {
            tokens: 2400,
            ..SHAPE
        },
    )?;
    assert!(longer.activations > plain.activations);
    model.set_grad_checkpointing(true)?;
    let ckpt = MemoryEstimate::new(&model, SHAPE)?;
    println!("with --grad-checkpointing: {ckpt}");
    assert!(ckpt.activations < plain.activations);
    assert_eq!(ckpt.weights, plain.weights);

    // LoRA: gradients and moments only for the factors.
    let mut lora = VarMapModel::load(&dir, DType::F32, &Device::Cpu, parts)?;
    lora.add_lora(&LoraConfig::new(4, None, 0.0, Vec::new()), 1)?;
    let adapters = MemoryEstimate::new(&lora, SHAPE)?;
    println!("LoRA r4: {adapters}");
    assert!(adapters.grads < plain.grads / 10);

    // Too little memory: refused, naming what would help.
    let msg = plain
        .check(plain.total() / 2, &Device::Cpu)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        msg.contains("--grad-checkpointing") && msg.contains("--lora-rank"),
        "{msg}"
    );
    assert!(plain.check(plain.total(), &Device::Cpu).is_ok());
    Ok(())
}
