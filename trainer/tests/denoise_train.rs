//! `trainer denoise` as a user runs it, on the tiny SD 1.5 pipeline
//! (`unireward_tests::diffusion_pipeline`) and captioned images in both layouts: the run
//! learns (the held-out loss at fixed draws falls), the metrics carry the loss, the result
//! loads as a UNet, and a run stopped and resumed ends with the very weights of an
//! uninterrupted one. The loss itself is checked against the formula in `loss::denoise`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device};
use image::{Rgb, RgbImage};
use serde_json::Value;
use unireward_models::diffusion::unet::UNet2DConditionModel;
use unireward_tests::diffusion_pipeline::{sharpen_vae, tiny_sd15_pipeline};

/// A 64x64 picture: a warm disc on a cool ground, placed by `seed`.
fn picture(seed: u32) -> RgbImage {
    let (cx, cy) = (16 + (seed * 11) % 32, 16 + (seed * 7) % 32);
    RgbImage::from_fn(64, 64, |x, y| {
        let (dx, dy) = (x as i32 - cx as i32, y as i32 - cy as i32);
        if dx * dx + dy * dy < 150 {
            Rgb([240, 200, 40])
        } else {
            Rgb([40, 60, 150 + ((x + y) % 8) as u8])
        }
    })
}

/// Six captioned images, the first three as `{"caption", "image"}`, the others as diffusers'
/// imagefolder metadata `{"file_name", "text"}`.
fn write_data(dir: &Path) -> Result<PathBuf> {
    let mut lines = Vec::new();
    for i in 0..6u32 {
        let name = format!("img{i}.png");
        picture(i).save(dir.join(&name))?;
        let caption = format!("a yellow disc number {i}");
        lines.push(if i < 3 {
            serde_json::json!({"caption": caption, "image": name})
        } else {
            serde_json::json!({"file_name": name, "text": caption})
        });
    }
    let path = dir.join("captions.jsonl");
    let text: Vec<String> = lines.iter().map(Value::to_string).collect();
    std::fs::write(&path, text.join("\n") + "\n")?;
    Ok(path)
}

fn train(pipeline: &Path, data: &Path, out: &Path, extra: &[&str]) -> Result<()> {
    let status = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .arg("denoise")
        .arg("--model")
        .arg(pipeline)
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args([
            "--resolution",
            "64",
            "--batch-size",
            "3",
            "--lr",
            "1e-3",
            "--schedule",
            "constant",
            "--cache-latents",
            "--no-progress",
        ])
        .args(extra)
        .status()?;
    ensure!(status.success(), "trainer failed: {status}");
    Ok(())
}

fn metrics(out: &Path) -> Result<Vec<Value>> {
    std::fs::read_to_string(out.join("metrics.jsonl"))?
        .lines()
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}

fn field(line: &Value, key: &str) -> Result<f64> {
    line.get(key)
        .and_then(Value::as_f64)
        .with_context(|| format!("metrics line without {key}: {line}"))
}

#[test]
fn denoise_learns_and_resumes_exactly() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let pipeline = tmp.path().join("pipeline");
    tiny_sd15_pipeline(&pipeline)?;
    sharpen_vae(&pipeline)?;
    let data = write_data(tmp.path())?;
    let data_arg = data.to_string_lossy().to_string();

    let out = tmp.path().join("run");
    train(
        &pipeline,
        &data,
        &out,
        &[
            "--max-steps",
            "30",
            "--eval-data",
            &data_arg,
            "--eval-every",
            "2",
        ],
    )?;
    let lines = metrics(&out)?;
    assert_eq!(lines.len(), 30);
    for key in ["loss", "grad_norm", "lr"] {
        field(&lines[0], key)?;
    }
    // The held-out loss at fixed draws (8 per image), after 2 steps and after 30.
    let (early, late) = (
        field(&lines[1], "eval_loss")?,
        field(&lines[29], "eval_loss")?,
    );
    eprintln!("denoise: eval loss {early} after 2 steps, {late} after 30");
    assert!(late < 0.8 * early, "eval loss {early} -> {late}");
    UNet2DConditionModel::load(&out.join("unet"), DType::F32, &Device::Cpu)?;

    // Stopped after 3 of 6 steps and resumed: the same weights as 6 steps at once.
    let whole = tmp.path().join("whole");
    train(&pipeline, &data, &whole, &["--max-steps", "6"])?;
    let split = tmp.path().join("split");
    train(
        &pipeline,
        &data,
        &split,
        &["--max-steps", "6", "--save-every", "3", "--stop-after", "3"],
    )?;
    train(
        &pipeline,
        &data,
        &split,
        &["--max-steps", "6", "--save-every", "3", "--resume"],
    )?;
    let a = candle_core::safetensors::load(
        whole.join("unet/diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )?;
    let b = candle_core::safetensors::load(
        split.join("unet/diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )?;
    assert_eq!(a.len(), b.len());
    for (k, t) in &a {
        let d = (t - b.get(k).context("key")?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert_eq!(d, 0.0, "{k} differs after resume by {d}");
    }
    assert_eq!(metrics(&whole)?, metrics(&split)?);
    Ok(())
}

#[test]
fn a_record_without_a_caption_is_refused_by_position() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let pipeline = tmp.path().join("pipeline");
    tiny_sd15_pipeline(&pipeline)?;
    picture(0).save(tmp.path().join("a.png"))?;
    let data = tmp.path().join("captions.jsonl");
    std::fs::write(
        &data,
        "{\"caption\": \"x\", \"image\": \"a.png\"}\n{\"image\": \"a.png\"}\n",
    )?;
    let out = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(["denoise", "--model"])
        .arg(&pipeline)
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(tmp.path().join("run"))
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("caption") && err.contains('2'), "{err}");
    Ok(())
}

/// A video record (a list of frames) for an image UNet is refused before training, naming the
/// data file, the record and both kinds.
#[test]
fn a_video_for_an_image_unet_is_refused_by_record() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let pipeline = tmp.path().join("pipeline");
    tiny_sd15_pipeline(&pipeline)?;
    picture(0).save(tmp.path().join("a.png"))?;
    picture(1).save(tmp.path().join("b.png"))?;
    let data = tmp.path().join("captions.jsonl");
    std::fs::write(
        &data,
        "{\"id\": \"still\", \"caption\": \"x\", \"image\": \"a.png\"}\n\
         {\"id\": \"clip\", \"caption\": \"y\", \"image\": [\"a.png\", \"b.png\"]}\n",
    )?;
    let out = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(["denoise", "--model"])
        .arg(&pipeline)
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(tmp.path().join("run"))
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("captions.jsonl")
            && err.contains("record clip holds videos")
            && err.contains("an image UNet"),
        "{err}"
    );
    Ok(())
}
