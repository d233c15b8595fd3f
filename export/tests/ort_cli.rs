//! The deployment path as a user runs it: `unireward-export onnx` on the golden checkpoint, then
//! `engine logprob` / `engine score` on the export, served by ONNX Runtime.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Result};
use serde_json::{json, Value};
use unireward_tests::{golden_cases, golden_cases_dir, golden_model_dir};

fn export_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_unireward-export"))
}

/// The engine binary is built beside ours by `cargo test --workspace`.
fn engine_bin() -> Result<PathBuf> {
    let p = export_bin().with_file_name(format!("engine{}", std::env::consts::EXE_SUFFIX));
    if !p.is_file() {
        bail!(
            "{} is not built: run the workspace's tests (cargo test --workspace)",
            p.display()
        );
    }
    Ok(p)
}

fn scratch(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("unireward-ortcli-{}-{name}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn export(dir: &Path, dtype: &str) -> Result<PathBuf> {
    let out = dir.join(format!("export-{dtype}"));
    let status = Command::new(export_bin())
        .args(["onnx", "--model"])
        .arg(golden_model_dir()?)
        .arg("--out")
        .arg(&out)
        .args(["--dtype", dtype])
        .status()?;
    assert!(status.success(), "unireward-export onnx --dtype {dtype}");
    Ok(out)
}

fn logprob_requests(dir: &Path) -> Result<PathBuf> {
    let cases = golden_cases_dir()?;
    let abs = |f: &String| cases.join(f).to_string_lossy().into_owned();
    let lines: Vec<String> = golden_cases()?
        .iter()
        .map(|c| {
            let mut r = json!({"id": c.name, "prompt": c.prompt, "completion": c.completion,
                "images": c.images.iter().map(abs).collect::<Vec<_>>()});
            if !c.video_frames.is_empty() {
                r["video"] = json!(c.video_frames.iter().map(abs).collect::<Vec<_>>());
            }
            r.to_string()
        })
        .collect();
    let path = dir.join("logprob.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n")?;
    Ok(path)
}

fn read_jsonl(path: &Path) -> Result<Vec<Value>> {
    std::fs::read_to_string(path)?
        .lines()
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}

fn engine_logprob(model: &Path, input: &Path, out: &Path, backend: &str) -> Result<Vec<Value>> {
    let status = Command::new(engine_bin()?)
        .args(["logprob", "--backend", backend, "--model"])
        .arg(model)
        .arg("--input")
        .arg(input)
        .arg("--out")
        .arg(out)
        .status()?;
    assert!(status.success(), "engine logprob --backend {backend}");
    read_jsonl(out)
}

#[test]
fn ort_logprob_matches_transformers_and_candle() -> Result<()> {
    let dir = scratch("fp32")?;
    let exported = export(&dir, "fp32")?;
    let input = logprob_requests(&dir)?;
    // The default backend of an exported directory is ONNX Runtime.
    let ort = engine_logprob(&exported, &input, &dir.join("ort.jsonl"), "auto")?;
    let candle = engine_logprob(
        &golden_model_dir()?,
        &input,
        &dir.join("candle.jsonl"),
        "candle",
    )?;
    for ((o, c), case) in ort.iter().zip(&candle).zip(golden_cases()?) {
        let (lo, lc) = (
            o["logprob"].as_f64().unwrap(),
            c["logprob"].as_f64().unwrap(),
        );
        println!(
            "{}: ort {lo:.6} candle {lc:.6} golden {:.6}",
            case.name, case.completion_logprob
        );
        assert!((lo - lc).abs() < 1e-4, "{}: ort vs candle", case.name);
        assert!(
            (lo - case.completion_logprob).abs() < 1e-3,
            "{}: ort vs golden",
            case.name
        );
        assert_eq!(o["prompt_tokens"], json!(case.prompt_len));
        assert_eq!(
            o["completion_tokens"],
            json!(case.seq_len - case.prompt_len)
        );
    }
    Ok(())
}

#[test]
fn fp16_export_is_half_the_size_and_agrees_on_verdicts() -> Result<()> {
    let dir = scratch("fp16")?;
    let f32_dir = export(&dir, "fp32")?;
    let f16_dir = export(&dir, "fp16")?;
    let size = |d: &Path| -> Result<u64> {
        let mut total = 0;
        for e in std::fs::read_dir(d)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".data") {
                total += e.metadata()?.len();
            }
        }
        Ok(total)
    };
    let (s32, s16) = (size(&f32_dir)?, size(&f16_dir)?);
    println!("external data: fp32 {s32} bytes, fp16 {s16} bytes");
    assert!((s16 as f64 / s32 as f64 - 0.5).abs() < 0.02);
    // Judge the same pair prompts with both: the verdicts agree.
    let cases = golden_cases_dir()?;
    let img = |f: &str| cases.join(f).to_string_lossy().into_owned();
    let reqs: Vec<String> = [
        ("img0.png", "img1.png"),
        ("img2.png", "img3.png"),
        ("img1.png", "img3.png"),
    ]
    .iter()
    .enumerate()
    .map(|(i, (a, b))| {
        json!({"id": i, "task": "image_generation", "mode": "pair", "prompt": "a red circle",
                "images": [img(a), img(b)]})
        .to_string()
    })
    .collect();
    let input = dir.join("score.jsonl");
    std::fs::write(&input, reqs.join("\n") + "\n")?;
    let mut verdicts = Vec::new();
    for model in [&f32_dir, &f16_dir] {
        let out = dir.join(format!(
            "{}.out",
            model.file_name().unwrap().to_string_lossy()
        ));
        let status = Command::new(engine_bin()?)
            .args(["score", "--model"])
            .arg(model)
            .arg("--batch")
            .arg(&input)
            .arg("--out")
            .arg(&out)
            .status()?;
        assert!(status.success());
        verdicts.push(read_jsonl(&out)?);
    }
    for (a, b) in verdicts[0].iter().zip(&verdicts[1]) {
        println!("fp32 {} / fp16 {}", a["probs"], b["probs"]);
        assert_eq!(a["verdict"], b["verdict"]);
    }
    Ok(())
}
