//! DPO on CUDA against the same run on the CPU: `trainer dpo --device cuda` and `--device
//! cpu` from the golden checkpoint, on pairs with images (vision tower trained too, so the
//! LayerNorm / GELU / attention kernels' backward passes run), f32, three optimizer steps.
//! Each step's loss, gradient norm and log-probs agree: step 1 checks the forward and the
//! reference, steps 2-3 the gradients and AdamW updates that produced them. Needs the `cuda`
//! feature and a GPU; without a GPU it prints `SKIPPED: no CUDA device` and passes.
//!
//! `cargo test -p unireward-trainer --features cuda --test cuda_dpo -- --nocapture`
//! (`UNIREWARD_TRAINER_BIN` runs another trainer binary, as scripts/gpu-check.sh does.)
#![cfg(feature = "cuda")]

mod common;

use std::process::Command;

use anyhow::{bail, Result};
use common::*;
use serde_json::json;

fn run_trainer(args: &[&str]) -> Result<()> {
    let bin = std::env::var("UNIREWARD_TRAINER_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_trainer").to_string());
    let out = Command::new(&bin).args(args).output()?;
    if !out.status.success() {
        bail!(
            "{bin} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[test]
fn dpo_steps_on_cuda_match_the_cpu() -> Result<()> {
    if let Err(e) = candle_core::Device::new_cuda(0) {
        let e = e.to_string();
        let cause = e.lines().next().unwrap_or_default();
        println!("SKIPPED: no CUDA device (cuda_dpo: {cause})");
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("pairs.jsonl");
    let images = golden_images()?;
    let pairs: Vec<_> = letter_pairs(6)
        .into_iter()
        .enumerate()
        .map(|(i, mut p)| {
            p["prompt"] = json!(format!("<image>\n{}", p["prompt"].as_str().unwrap_or("")));
            p["image"] = json!(path_str(&images[i % images.len()]));
            p
        })
        .collect();
    write_jsonl(&data, &pairs)?;
    let model = golden_model()?;
    let mut runs = Vec::new();
    for device in ["cpu", "cuda"] {
        let out = tmp.path().join(device);
        run_trainer(&[
            "dpo",
            "--kind",
            "vlm",
            "--model",
            path_str(&model),
            "--data",
            path_str(&data),
            "--out",
            path_str(&out),
            "--device",
            device,
            "--max-steps",
            "3",
            "--batch-size",
            "2",
            "--lr",
            "1e-3",
            "--warmup-ratio",
            "0",
            "--schedule",
            "constant",
            "--train-vision",
            "--no-shuffle",
            "--no-progress",
        ])?;
        runs.push(metrics(&out)?);
    }
    let (cpu, cuda) = (&runs[0], &runs[1]);
    assert_eq!(cpu.len(), 3);
    assert_eq!(cuda.len(), 3);
    for (step, (c, g)) in cpu.iter().zip(cuda).enumerate() {
        for key in ["loss", "grad_norm", "logps/chosen", "logps/rejected"] {
            let (a, b) = (num(c, key), num(g, key));
            let diff = (a - b).abs();
            println!(
                "cuda-dpo step {} {key:<15} cpu {a:.7} cuda {b:.7} |diff| {diff:.2e}",
                step + 1
            );
            // f32 on both; the kernels differ in summation order only.
            assert!(diff <= 1e-4 * a.abs().max(1.0), "step {} {key}", step + 1);
        }
    }
    Ok(())
}
