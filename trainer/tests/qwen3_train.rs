//! `trainer dpo --kind vlm` and `trainer reward` on a Qwen3-VL checkpoint (the 4b-shaped
//! fixture: tied head, sharded, patch 16, three deep-stack levels), with images of real sizes:
//! DPO learns to prefer the chosen answer, a stopped run resumes exactly, and supervised
//! fine-tuning lowers the held-out loss.
//! As `qwen_train.rs` does for Qwen2.5-VL.

mod common;
#[path = "common/qwen_merge.rs"]
mod qwen_merge;
#[path = "common/qwen_reward.rs"]
mod qwen_reward;

use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::{DType, Device};
use common::*;
use serde_json::{json, Value};
use unireward_models::family::{load_judge, ModelFamily};
use unireward_trainer::checkpoint_keys::TrainParts;
use unireward_trainer::lora::LoraConfig;
use unireward_trainer::varmap_model::VarMapModel;

fn qwen3_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/qwen3_vl/qwen3_vl_4b/model")
}

fn media(name: &str) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/qwen2_5_vl/media");
    path_str(&dir.join(name)).to_string()
}

/// The 1920x1080 image (8160 patches under full attention) made one pair's DPO run 101 s here:
/// the engine's goldens cover it.
const IMAGES: [&str; 2] = ["300x200.png", "40x30.png"];

/// `--train-projector` trains the main merger's two linear layers only (its norm and the
/// deep-stack mergers go with the tower), and adapters carry transformers 5's module paths,
/// the deep-stack mergers' included.
#[test]
fn qwen3_parts_and_adapter_names() -> Result<()> {
    let projector = TrainParts {
        vision: false,
        projector: true,
        decoder: false,
    };
    let model = VarMapModel::load(&qwen3_model(), DType::F32, &Device::Cpu, projector)?;
    let names: Vec<String> = model.trained_vars()?.into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        names,
        [
            "model.visual.merger.linear_fc1.bias",
            "model.visual.merger.linear_fc1.weight",
            "model.visual.merger.linear_fc2.bias",
            "model.visual.merger.linear_fc2.weight",
        ]
    );
    // Tied: the embeddings are the head, and no `lm_head` is stored or adapted.
    assert!(!model.shapes()?.contains_key("lm_head.weight"));

    let mut model = VarMapModel::load(&qwen3_model(), DType::F32, &Device::Cpu, TrainParts::all())?;
    let targets = ["q_proj", "linear_fc1", "qkv"].map(String::from).to_vec();
    model.add_lora(&LoraConfig::new(2, None, 0.0, targets), 0)?;
    let modules: Vec<String> = model
        .trained_vars()?
        .into_iter()
        .filter_map(|(k, _)| k.strip_suffix(".lora_A.weight").map(String::from))
        .collect();
    for want in [
        "base_model.model.model.language_model.layers.3.self_attn.q_proj",
        "base_model.model.model.visual.blocks.0.attn.qkv",
        "base_model.model.model.visual.merger.linear_fc1",
        "base_model.model.model.visual.deepstack_merger_list.2.linear_fc1",
    ] {
        assert!(
            modules.iter().any(|m| m == want),
            "{want} not in {modules:?}"
        );
    }
    Ok(())
}

#[test]
fn qwen3_dpo_learns_to_prefer_the_chosen_answer() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("pairs.jsonl");
    let pairs: Vec<Value> = (0..6)
        .map(|i| {
            json!({
                "id": format!("q{i}"),
                "image": media(IMAGES[i % 2]),
                "prompt": format!("Does caption {i} describe it?"),
                "chosen": "Yes, it matches",
                "rejected": "No, it does not",
            })
        })
        .collect();
    write_jsonl(&data, &pairs)?;
    let out = tmp.path().join("run");
    let model = qwen3_model();
    trainer(&[
        "dpo",
        "--kind",
        "vlm",
        "--model",
        path_str(&model),
        "--data",
        path_str(&data),
        "--out",
        path_str(&out),
        "--beta",
        "0.1",
        "--no-progress",
        "--max-steps",
        "6",
        "--batch-size",
        "2",
        "--lr",
        "2e-3",
        "--warmup-ratio",
        "0.1",
    ])?;
    let lines = metrics(&out)?;
    assert_eq!(lines.len(), 6);
    let first = num(&lines[0], "loss");
    println!(
        "step 1 loss {first:.9} (ln 2 = {:.9})",
        std::f64::consts::LN_2
    );
    assert!((first - std::f64::consts::LN_2).abs() < 1e-6, "{first}");
    let tail = &lines[lines.len() - 3..];
    let mean = |key: &str| tail.iter().map(|l| num(l, key)).sum::<f64>() / tail.len() as f64;
    let head_acc = lines[..2]
        .iter()
        .map(|l| num(l, "rewards/accuracies"))
        .sum::<f64>()
        / 2.0;
    let (acc, margin, loss) = (
        mean("rewards/accuracies"),
        mean("rewards/margins"),
        mean("loss"),
    );
    println!(
        "first 2 steps accuracy {head_acc:.3}; last 3 steps: accuracy {acc:.3}, margin \
         {margin:.3}, loss {loss:.4}"
    );
    assert!(
        acc > 0.9 && acc > head_acc,
        "rewards/accuracies {head_acc} -> {acc}"
    );
    assert!(margin > 0.0 && loss < first, "margin {margin}, loss {loss}");
    let trained = load_judge(&out, DType::F32, &Device::Cpu)?;
    assert_eq!(trained.family(), ModelFamily::Qwen3Vl);
    Ok(())
}

/// A run stopped (and one that lost its newest checkpoint) and resumed ends as the
/// uninterrupted one: the tower trained, the reference a frozen copy of the model.
#[test]
fn resumed_qwen3_dpo_run_repeats_the_uninterrupted_one() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("pairs.jsonl");
    let pairs: Vec<Value> = (0..4)
        .map(|i| {
            json!({
                "id": format!("r{i}"),
                "image": media(IMAGES[i % 2]),
                "prompt": format!("Is caption {i} right?"),
                "chosen": "Yes",
                "rejected": "No, not at all",
            })
        })
        .collect();
    write_jsonl(&data, &pairs)?;
    let model = qwen3_model();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let run = |extra: &[&str], out: &Path| -> Result<()> {
        let mut args = vec![
            "dpo",
            "--kind",
            "vlm",
            "--model",
            path_str(&model),
            "--data",
            path_str(&data),
            "--out",
            path_str(out),
            "--no-progress",
            "--max-steps",
            "6",
            "--batch-size",
            "2",
            "--grad-accum",
            "2",
            "--lr",
            "1e-3",
            "--save-every",
            "2",
            "--keep-checkpoints",
            "0",
            "--train-vision",
            "--ref",
            "frozen",
            "--sft-weight",
            "0.5",
        ];
        args.extend(extra);
        trainer(&args)?;
        Ok(())
    };
    run(&[], &a)?;
    run(&["--stop-after", "3"], &b)?;
    assert_eq!(metrics(&b)?.len(), 3);
    std::fs::remove_dir_all(b.join("checkpoint-3"))?;
    run(&["--resume"], &b)?;
    assert_same_metrics(&metrics(&a)?, &metrics(&b)?);
    assert_same_weights(&a, &b)?;
    Ok(())
}

#[test]
fn qwen3_reward_training_lowers_held_out_loss() -> Result<()> {
    qwen_reward::reward_training_lowers_held_out_loss(
        &qwen3_model(),
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/qwen2_5_vl/media"),
    )
}

/// `trainer merge-lora` on a Qwen3-VL adapter (decoder attention, the tower's `qkv` and
/// `linear_fc1` layers, the mergers' first layers; transformers 5's key layout): the merged
/// checkpoint keeps the base's keys and dtypes and computes what the adapted model computes.
#[test]
fn qwen3_lora_merges_into_a_checkpoint_that_computes_the_same() -> Result<()> {
    let pairs: Vec<Value> = (0..4)
        .map(|i| {
            json!({
                "id": format!("q{i}"),
                "image": media(IMAGES[i % 2]),
                "prompt": format!("Does caption {i} describe it?"),
                "chosen": "Yes, it matches",
                "rejected": "No, it does not",
            })
        })
        .collect();
    qwen_merge::check_merge(
        &qwen3_model(),
        &pairs,
        "q_proj,k_proj,v_proj,o_proj,qkv,linear_fc1",
    )
}
