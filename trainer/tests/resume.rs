//! `--resume` repeats the uninterrupted run: a run stopped after k steps (and one that lost
//! its newest checkpoint, as a crash between checkpoints does) and resumed to n logs the
//! same metrics, within 1e-6, and ends with the same weights. Also: the reference choices
//! agree, settings changed between sessions are refused, and a non-finite loss stops the
//! run naming the step while the last good checkpoint stays.

mod common;

use std::path::Path;

use anyhow::Result;
use candle_core::{DType, Device};
use common::*;
use serde_json::{json, Value};

#[test]
fn resumed_dpo_run_repeats_the_uninterrupted_one() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("pairs.jsonl");
    write_jsonl(&data, &image_pairs(7)?)?;
    let model = golden_model()?;
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let args = |out: &Path| -> Vec<String> {
        [
            "dpo",
            "--kind",
            "vlm",
            "--model",
            path_str(&model),
            "--data",
            path_str(&data),
            "--out",
            path_str(out),
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
            "--no-progress",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run = |extra: &[&str], out: &Path| -> Result<()> {
        let mut all = args(out);
        all.extend(extra.iter().map(|s| s.to_string()));
        trainer(&all.iter().map(String::as_str).collect::<Vec<_>>())?;
        Ok(())
    };
    run(&[], &a)?;
    run(&["--stop-after", "3"], &b)?;
    assert_eq!(metrics(&b)?.len(), 3);
    assert!(b.join("checkpoint-2").is_dir() && b.join("checkpoint-3").is_dir());
    assert!(
        !b.join("model.safetensors").exists(),
        "a stopped run writes no final weights"
    );
    // As if the run had died after logging step 3 but before checkpointing it.
    std::fs::remove_dir_all(b.join("checkpoint-3"))?;
    run(&["--resume"], &b)?;
    assert_same_metrics(&metrics(&a)?, &metrics(&b)?);
    assert_same_weights(&a, &b)?;
    // The output directories load as checkpoints.
    unireward_models::LlavaOnevision::load(&b, DType::F32, &Device::Cpu)?;
    unireward_models::LlavaOnevision::load(&b.join("checkpoint-6"), DType::F32, &Device::Cpu)?;
    Ok(())
}

#[test]
fn resumed_reward_run_repeats_the_uninterrupted_one() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let images = golden_images()?;
    let records: Vec<Value> = (0..5)
        .map(|i| {
            json!({"id": i, "image": path_str(&images[i % 4]), "conversations": [
                {"from": "human", "value": format!("<image>\nRate image {i}.")},
                {"from": "gpt", "value": format!("Final Score: {}", i + 3)}]})
        })
        .collect();
    let data = tmp.path().join("judge.jsonl");
    write_jsonl(&data, &records)?;
    let model = golden_model()?;
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    // Two epochs of 5 examples in steps of 2: 5 steps, the stream crossing an epoch mid-step.
    let base = |out: &Path, lr: &str| -> Vec<String> {
        [
            "reward",
            "--model",
            path_str(&model),
            "--data",
            path_str(&data),
            "--out",
            path_str(out),
            "--epochs",
            "2",
            "--batch-size",
            "2",
            "--lr",
            lr,
            "--save-every",
            "2",
            "--no-progress",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run = |mut args: Vec<String>, extra: &[&str]| -> Result<std::process::Output> {
        args.extend(extra.iter().map(|s| s.to_string()));
        trainer_unchecked(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    assert!(run(base(&a, "1e-3"), &[])?.status.success());
    assert_eq!(metrics(&a)?.len(), 5);
    assert!(run(base(&b, "1e-3"), &["--stop-after", "2"])?
        .status
        .success());

    // A second session must use the same settings, and must say --resume.
    let changed = run(base(&b, "2e-3"), &["--resume"])?;
    let msg = String::from_utf8_lossy(&changed.stderr);
    assert!(!changed.status.success() && msg.contains("lr"), "{msg}");
    let fresh = run(base(&b, "1e-3"), &[])?;
    let msg = String::from_utf8_lossy(&fresh.stderr);
    assert!(!fresh.status.success() && msg.contains("--resume"), "{msg}");

    assert!(run(base(&b, "1e-3"), &["--resume"])?.status.success());
    assert_same_metrics(&metrics(&a)?, &metrics(&b)?);
    assert_same_weights(&a, &b)?;
    Ok(())
}

#[test]
fn precomputed_and_frozen_references_agree() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("pairs.jsonl");
    write_jsonl(&data, &image_pairs(4)?)?;
    let model = golden_model()?;
    let mut lines = Vec::new();
    for reference in ["precompute", "frozen"] {
        let out = tmp.path().join(reference);
        let args = [
            "dpo",
            "--kind",
            "vlm",
            "--model",
            path_str(&model),
            "--data",
            path_str(&data),
            "--out",
            path_str(&out),
            "--max-steps",
            "3",
            "--batch-size",
            "2",
            "--lr",
            "1e-3",
            "--loss",
            "ipo",
            "--ref",
            reference,
            "--no-progress",
        ];
        if reference == "precompute" {
            // Two sessions: the second reads the cached reference log-probs.
            trainer(&[&args[..], &["--stop-after", "1"]].concat())?;
            assert!(out.join("ref_logps.jsonl").is_file());
            let second = trainer(&[&args[..], &["--resume"]].concat())?;
            let msg = String::from_utf8_lossy(&second.stderr);
            assert!(msg.contains("reference log-probs from"), "{msg}");
        } else {
            trainer(&args)?;
        }
        lines.push(metrics(&out)?);
    }
    assert_eq!(lines[0].len(), 3);
    for (p, f) in lines[0].iter().zip(&lines[1]) {
        for key in ["loss", "rewards/margins", "logps/chosen", "grad_norm"] {
            let (x, y) = (num(p, key), num(f, key));
            assert!(
                (x - y).abs() < 1e-5 * (1.0 + x.abs()),
                "step {}: {key} {x} vs {y}",
                p["step"]
            );
        }
    }
    Ok(())
}

#[test]
fn non_finite_loss_stops_naming_the_step_and_keeps_the_last_checkpoint() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("pairs.jsonl");
    write_jsonl(&data, &letter_pairs(4))?;
    let out = tmp.path().join("run");
    let model = golden_model()?;
    // A rate of 1e30 puts every trained weight near ±1e30 after one step: the next forward
    // pass overflows.
    let res = trainer_unchecked(&[
        "dpo",
        "--kind",
        "vlm",
        "--model",
        path_str(&model),
        "--data",
        path_str(&data),
        "--out",
        path_str(&out),
        "--max-steps",
        "5",
        "--batch-size",
        "2",
        "--lr",
        "1e30",
        "--schedule",
        "constant",
        "--warmup-ratio",
        "0",
        "--save-every",
        "1",
        "--no-progress",
    ])?;
    let msg = String::from_utf8_lossy(&res.stderr);
    println!("{msg}");
    assert!(!res.status.success());
    assert!(
        msg.contains("step 2") && msg.contains("not finite"),
        "{msg}"
    );
    assert!(msg.contains("checkpoint-1"), "{msg}");
    assert_eq!(metrics(&out)?.len(), 1);
    assert!(out.join("checkpoint-1/model.safetensors").is_file());
    assert!(!out.join("checkpoint-2").exists());
    Ok(())
}
