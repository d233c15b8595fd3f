//! `trainer dpo --kind vlm` and `trainer reward` on a Qwen2.5-VL checkpoint (the 3b-shaped
//! fixture, tied head, hub layout), with images of real sizes and a video given as its frames:
//! DPO learns to prefer the chosen answer, a run stopped (and one that lost its newest
//! checkpoint) and resumed ends as the uninterrupted one, and supervised fine-tuning lowers the
//! held-out loss. The same structure as the LLaVA tests (`learning.rs`, `resume.rs`).

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

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/qwen2_5_vl")
}

fn qwen_model() -> PathBuf {
    fixtures().join("qwen2_5_vl_3b/model")
}

fn media(name: &str) -> String {
    path_str(&fixtures().join("media").join(name)).to_string()
}

/// Pairs over the 300x200 and 40x30 images; with `video`, the fourth over the 8-frame 300x200
/// clip instead (a video is the slow part: kept to one where it is the point).
fn qwen_pairs(n: usize, video: bool) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let mut rec = json!({
                "id": format!("q{i}"),
                "prompt": format!("Does caption {i} describe it?"),
                "chosen": "Yes, it matches",
                "rejected": "No, it does not",
            });
            if video && i == 3 {
                rec["video"] = json!(media("clip_300x200"));
            } else {
                rec["image"] = json!(media(["300x200.png", "40x30.png"][i % 2]));
            }
            rec
        })
        .collect()
}

fn dpo_args<'a>(model: &'a str, data: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "dpo",
        "--kind",
        "vlm",
        "--model",
        model,
        "--data",
        data,
        "--out",
        out,
        "--beta",
        "0.1",
        "--no-progress",
    ]
}

#[test]
fn qwen_dpo_learns_to_prefer_the_chosen_answer() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("pairs.jsonl");
    write_jsonl(&data, &qwen_pairs(6, true))?;
    let out = tmp.path().join("run");
    let model = qwen_model();
    let mut args = dpo_args(path_str(&model), path_str(&data), path_str(&out));
    args.extend([
        "--max-steps",
        "6",
        "--batch-size",
        "2",
        "--lr",
        "2e-3",
        "--warmup-ratio",
        "0.1",
    ]);
    trainer(&args)?;
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
    // The output is a Qwen2.5-VL checkpoint again.
    let trained = load_judge(&out, DType::F32, &Device::Cpu)?;
    assert_eq!(trained.family(), ModelFamily::Qwen25Vl);
    Ok(())
}

#[test]
fn resumed_qwen_dpo_run_repeats_the_uninterrupted_one() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("pairs.jsonl");
    write_jsonl(&data, &qwen_pairs(4, false))?;
    let model = qwen_model();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let run = |extra: &[&str], out: &Path| -> Result<()> {
        let mut args = dpo_args(path_str(&model), path_str(&data), path_str(out));
        args.extend([
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
        ]);
        args.extend(extra);
        trainer(&args)?;
        Ok(())
    };
    run(&[], &a)?;
    run(&["--stop-after", "3"], &b)?;
    assert_eq!(metrics(&b)?.len(), 3);
    assert!(b.join("checkpoint-2").is_dir() && b.join("checkpoint-3").is_dir());
    // As if the run had died after logging step 3 but before checkpointing it.
    std::fs::remove_dir_all(b.join("checkpoint-3"))?;
    run(&["--resume"], &b)?;
    assert_same_metrics(&metrics(&a)?, &metrics(&b)?);
    assert_same_weights(&a, &b)?;
    load_judge(&b, DType::F32, &Device::Cpu)?;
    Ok(())
}

#[test]
fn qwen_reward_training_lowers_held_out_loss() -> Result<()> {
    qwen_reward::reward_training_lowers_held_out_loss(
        &qwen_model(),
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/qwen2_5_vl/media"),
    )
}

/// `trainer merge-lora` on a Qwen2.5-VL adapter (decoder attention, the tower's `qkv`, the
/// merger's first layer; the hub's key layout: `model.layers.…`, `visual.…`): the merged
/// checkpoint keeps the base's keys and dtypes and computes what the adapted model computes.
#[test]
fn qwen_lora_merges_into_a_checkpoint_that_computes_the_same() -> Result<()> {
    qwen_merge::check_merge(
        &qwen_model(),
        &qwen_pairs(4, false),
        "q_proj,k_proj,v_proj,o_proj,qkv,mlp.0",
    )
}
