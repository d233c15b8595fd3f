//! What the binary-driven tests share: the golden model and images, data files written into
//! a temporary directory, running `trainer`, and reading its metrics.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};

pub fn golden_model() -> Result<PathBuf> {
    unireward_tests::golden_model_dir()
}

/// The golden case images (32x32, 50x30, 23x71, 160x160).
pub fn golden_images() -> Result<Vec<PathBuf>> {
    let dir = unireward_tests::golden_cases_dir()?;
    Ok((0..4).map(|i| dir.join(format!("img{i}.png"))).collect())
}

pub fn write_jsonl(path: &Path, records: &[Value]) -> Result<()> {
    let body: String = records.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(path, body)?;
    Ok(())
}

/// Text-only pairs where the chosen answer always ends in " A" and the rejected in " B".
pub fn letter_pairs(n: usize) -> Vec<Value> {
    let topics = [
        "colour", "shape", "size", "texture", "lighting", "layout", "style", "mood",
    ];
    (0..n)
        .map(|i| {
            json!({
                "id": format!("pair-{i}"),
                "prompt": format!("Question {i}: which option fits the {} best?", topics[i % topics.len()]),
                "chosen": "The answer is A",
                "rejected": "The answer is B",
            })
        })
        .collect()
}

/// Runs the trainer binary; fails with its stderr when it exits non-zero.
pub fn trainer(args: &[&str]) -> Result<Output> {
    let out = trainer_unchecked(args)?;
    if !out.status.success() {
        bail!(
            "trainer {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

pub fn trainer_unchecked(args: &[&str]) -> Result<Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args)
        .output()?)
}

pub fn metrics(out: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(out.join("metrics.jsonl"))?;
    Ok(text
        .lines()
        .map(serde_json::from_str)
        .collect::<std::result::Result<_, _>>()?)
}

pub fn num(v: &Value, key: &str) -> f64 {
    v.get(key)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("no number {key} in {v}"))
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// DPO pairs over the golden images, some with two images, the answers differing at the end.
pub fn image_pairs(n: usize) -> Result<Vec<Value>> {
    let images = golden_images()?;
    Ok((0..n)
        .map(|i| {
            let mut rec = json!({
                "id": format!("p{i}"),
                "prompt": format!("<image>\nIs caption {i} right?"),
                "chosen": "Yes, it matches",
                "rejected": "No, it does not",
            });
            if i % 3 == 0 {
                rec["images"] = json!([path_str(&images[i % 4]), path_str(&images[(i + 1) % 4])]);
            } else {
                rec["image"] = json!(path_str(&images[i % 4]));
            }
            rec
        })
        .collect())
}

/// Two runs' metrics lines: the same keys, values within 1e-6.
pub fn assert_same_metrics(a: &[Value], b: &[Value]) {
    assert_eq!(a.len(), b.len(), "number of metrics lines");
    let mut worst: f64 = 0.0;
    for (la, lb) in a.iter().zip(b) {
        let (Some(ma), Some(mb)) = (la.as_object(), lb.as_object()) else {
            panic!("metrics lines must be objects: {la} / {lb}");
        };
        assert_eq!(
            ma.keys().collect::<Vec<_>>(),
            mb.keys().collect::<Vec<_>>(),
            "keys of step {}",
            la["step"]
        );
        for (k, va) in ma {
            let (x, y) = (
                va.as_f64().unwrap_or(f64::NAN),
                mb[k].as_f64().unwrap_or(f64::NAN),
            );
            let d = (x - y).abs();
            worst = worst.max(d);
            assert!(d <= 1e-6, "step {}: {k} {x} vs {y}", la["step"]);
        }
    }
    println!("metrics of {} steps agree; max diff {worst:.2e}", a.len());
}

pub fn weights(dir: &Path) -> Result<HashMap<String, Tensor>> {
    Ok(candle_core::safetensors::load(
        dir.join("model.safetensors"),
        &Device::Cpu,
    )?)
}

/// Two runs' final weights (`model.safetensors`): within 1e-6.
pub fn assert_same_weights(a: &Path, b: &Path) -> Result<()> {
    let (wa, wb) = (weights(a)?, weights(b)?);
    assert_eq!(wa.len(), wb.len());
    let mut worst: f32 = 0.0;
    for (k, ta) in &wa {
        let d = (ta.to_dtype(DType::F32)? - wb[k].to_dtype(DType::F32)?)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        worst = worst.max(d);
    }
    println!("final weights: max abs diff {worst:.2e}");
    assert!(worst <= 1e-6);
    Ok(())
}
