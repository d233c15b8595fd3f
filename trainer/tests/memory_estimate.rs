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
    frame_patches: 0,
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

/// Qwen2.5-VL (the 3b-shaped fixture: blocks 1 and 3 of 4 attend over whole frames, the others
/// within windows): the tower's share follows its patches and its largest frame, and is there
/// only when the tower trains.
#[test]
fn the_qwen2_5_vl_estimate_follows_patches_and_frames() -> Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/qwen2_5_vl/qwen2_5_vl_3b/model");
    let parts = |vision| TrainParts {
        vision,
        projector: true,
        decoder: true,
    };
    let with_tower = VarMapModel::load(&dir, DType::F32, &Device::Cpu, parts(true))?;
    let without = VarMapModel::load(&dir, DType::F32, &Device::Cpu, parts(false))?;
    // Two 300x200 images: 14 x 20 patches of 14 px each after smart_resize.
    let shape = StepShape {
        rows: 2,
        tokens: 400,
        scored: 20,
        tiles: 560,
        frame_patches: 280,
    };
    let trained = MemoryEstimate::new(&with_tower, shape)?;
    let frozen = MemoryEstimate::new(&without, shape)?;
    println!(
        "Qwen2.5-VL 3b-shaped, 2 x 400 tokens, 560 patches: {trained}; tower frozen: {frozen}"
    );
    assert_eq!(trained.weights, frozen.weights);
    assert!(trained.grads > frozen.grads);
    let tower = trained.activations - frozen.activations;
    assert!(tower > 0);
    // As many patches in frames of 5,920 (a 1920x1080 image is 10,764) and in frames of 280:
    // the full-attention blocks attend over the whole frame.
    let one_frame = MemoryEstimate::new(
        &with_tower,
        StepShape {
            tiles: 5920,
            frame_patches: 5920,
            ..shape
        },
    )?;
    let wide = MemoryEstimate::new(
        &with_tower,
        StepShape {
            tiles: 5920,
            frame_patches: 280,
            ..shape
        },
    )?;
    assert!(one_frame.activations > wide.activations);
    assert!(wide.activations > trained.activations);
    Ok(())
}

/// Qwen3-VL (the 4b-shaped fixture): every block of its tower attends over a whole frame, so a
/// larger frame of as many patches costs more; a frozen tower keeps nothing.
#[test]
fn the_qwen3_vl_estimate_follows_patches_and_frames() -> Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/qwen3_vl/qwen3_vl_4b/model");
    let parts = |vision| TrainParts {
        vision,
        projector: true,
        decoder: true,
    };
    let with_tower = VarMapModel::load(&dir, DType::F32, &Device::Cpu, parts(true))?;
    let without = VarMapModel::load(&dir, DType::F32, &Device::Cpu, parts(false))?;
    // Two 300x200 images: 14 x 20 patches of 16 px each after smart_resize.
    let shape = StepShape {
        rows: 2,
        tokens: 400,
        scored: 20,
        tiles: 560,
        frame_patches: 280,
    };
    let trained = MemoryEstimate::new(&with_tower, shape)?;
    let frozen = MemoryEstimate::new(&without, shape)?;
    println!("Qwen3-VL 4b-shaped, 2 x 400 tokens, 560 patches: {trained}; tower frozen: {frozen}");
    assert!(trained.activations > frozen.activations);
    let one_frame = MemoryEstimate::new(
        &with_tower,
        StepShape {
            frame_patches: 560,
            ..shape
        },
    )?;
    assert!(one_frame.activations > trained.activations);
    Ok(())
}
