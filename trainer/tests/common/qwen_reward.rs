//! `trainer reward` on a Qwen-VL checkpoint lowers the held-out loss: one check for both
//! families (`qwen_train.rs`, `qwen3_train.rs`), over the images of `fixtures/qwen2_5_vl/media`.

use std::path::Path;

use anyhow::Result;
use candle_core::{DType, Device};
use serde_json::{json, Value};
use unireward_trainer::checkpoint_keys::TrainParts;
use unireward_trainer::data::reward::RewardData;
use unireward_trainer::data::Preparer;
use unireward_trainer::objectives::reward::mean_nll;
use unireward_trainer::varmap_model::{Architecture, VarMapModel};

use super::{metrics, num, path_str, trainer};

/// Judge records over the 300x200 and 40x30 images in `media`, every answer the same verdict.
fn judge_records(media: &Path, prompts: &[&str]) -> Vec<Value> {
    prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            json!({
                "id": format!("judge-{i}"),
                "image": path_str(&media.join(["300x200.png", "40x30.png"][i % 2])),
                "conversations": [
                    {"from": "human", "value": format!("<image>\n{p}")},
                    {"from": "gpt", "value": "Final Score: 4"}
                ]
            })
        })
        .collect()
}

fn held_out_nll(model_dir: &Path, data: &Path, root: &Path) -> Result<f64> {
    let model = VarMapModel::load(model_dir, DType::F32, &Device::Cpu, TrainParts::all())?;
    let prep = match model.architecture() {
        Architecture::QwenVl(cfg, _) => Preparer::qwen_vl(model_dir, cfg, root.into(), None)?,
        Architecture::Qwen3Vl(cfg, _) => Preparer::qwen_vl(model_dir, cfg, root.into(), None)?,
        Architecture::Llava(_) => anyhow::bail!("not a Qwen-VL checkpoint"),
    };
    Ok(mean_nll(model.model(), &RewardData::read(data, prep)?, 2)?)
}

/// Six steps of `trainer reward` on the checkpoint `model`: the train loss falls, the held-out
/// loss falls, and the logged held-out loss is the one recomputed from the written model.
pub fn reward_training_lowers_held_out_loss(model: &Path, media: &Path) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (train, held_out) = (tmp.path().join("train.json"), tmp.path().join("held.json"));
    let train_prompts = [
        "Rate the image.",
        "Score this picture.",
        "How good is it?",
        "Judge the image quality.",
        "Give the image a score.",
        "Evaluate this image.",
    ];
    std::fs::write(
        &train,
        serde_json::to_string(&judge_records(media, &train_prompts))?,
    )?;
    std::fs::write(
        &held_out,
        serde_json::to_string(&judge_records(media, &["Please rate it.", "Your score?"]))?,
    )?;
    let before = held_out_nll(model, &held_out, tmp.path())?;
    let out = tmp.path().join("run");
    trainer(&[
        "reward",
        "--model",
        path_str(model),
        "--data",
        path_str(&train),
        "--out",
        path_str(&out),
        "--eval-data",
        path_str(&held_out),
        "--max-steps",
        "6",
        "--batch-size",
        "2",
        "--lr",
        "1e-3",
        "--no-progress",
    ])?;
    let lines = metrics(&out)?;
    let (first, last) = (num(&lines[0], "loss"), num(&lines[lines.len() - 1], "loss"));
    let after = held_out_nll(&out, &held_out, tmp.path())?;
    let logged = num(&lines[lines.len() - 1], "eval_loss");
    println!("train loss {first:.4} -> {last:.4}; held-out loss {before:.4} -> {after:.4} (logged {logged:.4})");
    assert!(last < first, "train loss {first} -> {last}");
    assert!(after < before, "held-out loss {before} -> {after}");
    assert!((after - logged).abs() < 1e-4, "{after} vs logged {logged}");
    Ok(())
}
