//! `engine pairs` as the reference's DPO-data scripts build pairs: candidates resized before
//! judging, the record saying which candidates were left out of ranking, the TRL layout, and
//! understanding prompts refused without the media their question is about.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;
use serde_json::{json, Value};
use unireward_models::config::LlavaConfig;
use unireward_models::formats::pair_record::{PairRecord, Turns};
use unireward_models::preprocess::image::to_rgb;
use unireward_models::preprocess::resize::resize_pillow;
use unireward_models::preprocess::{load_image, Filter, MediaLoader, MediaRequest, VideoSource};
use unireward_tests::{golden_cases_dir, golden_model_dir};

fn engine() -> Command {
    Command::new(env!("CARGO_BIN_EXE_engine"))
}

fn scratch(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("unireward-pairs-{}-{name}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn img(name: &str) -> Result<String> {
    Ok(golden_cases_dir()?
        .join(name)
        .to_string_lossy()
        .into_owned())
}

fn read_jsonl(path: &Path) -> Result<Vec<Value>> {
    std::fs::read_to_string(path)?
        .lines()
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}

fn run_pairs(dir: &Path, lines: &[Value], extra: &[&str]) -> Result<Vec<Value>> {
    let input = dir.join("in.jsonl");
    let out = dir.join(format!("out{}.jsonl", extra.join("")));
    let text: Vec<String> = lines.iter().map(Value::to_string).collect();
    std::fs::write(&input, text.join("\n"))?;
    engine()
        .arg("pairs")
        .arg(&input)
        .arg("--model")
        .arg(golden_model_dir()?)
        .arg("--out")
        .arg(&out)
        .args(extra)
        .status()?;
    read_jsonl(&out)
}

#[test]
fn resized_loading_is_pillow_bicubic_then_the_processor() -> Result<()> {
    let dir = scratch("resize")?;
    let model = golden_model_dir()?;
    let cfg = LlavaConfig::from_file(&model.join("config.json"))?;
    let loader = MediaLoader::from_model_dir(&model, &cfg, 8)?;
    let original = img("img1.png")?;
    let req = MediaRequest {
        images: vec![PathBuf::from(&original)],
        videos: vec![],
    };
    let resized = loader.load_resized(&req, &dir, Some((512, 512)))?;
    assert_eq!(resized.images[0].original_size, (512, 512));

    // The same pixels as an image resized beforehand and loaded as is.
    let rgb = to_rgb(&load_image(&original)?, Default::default());
    assert_ne!(rgb.dimensions(), (512, 512));
    let by_hand = dir.join("by_hand.png");
    resize_pillow(&rgb, 512, 512, Filter::Bicubic)?.save(&by_hand)?;
    let expected = loader.load(
        &MediaRequest {
            images: vec![by_hand],
            videos: vec![],
        },
        &dir,
    )?;
    let diff = (&resized.images[0].pixel_values - &expected.images[0].pixel_values)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    assert_eq!(diff, 0.0);
    // Without a size nothing changes.
    let plain = loader.load_resized(&req, &dir, None)?;
    assert_eq!(plain.images[0].original_size, (rgb.height(), rgb.width()));
    Ok(())
}

#[test]
fn resized_loading_resizes_video_frames_too() -> Result<()> {
    let dir = scratch("frames")?;
    let model = golden_model_dir()?;
    let cfg = LlavaConfig::from_file(&model.join("config.json"))?;
    let loader = MediaLoader::from_model_dir(&model, &cfg, 8)?;
    let frames: Vec<PathBuf> = ["frame0.png", "frame1.png", "frame2.png"]
        .iter()
        .map(|f| img(f).map(PathBuf::from))
        .collect::<Result<_>>()?;
    let mut by_hand = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let rgb = to_rgb(&load_image(f)?, Default::default());
        let path = dir.join(format!("f{i}.png"));
        resize_pillow(&rgb, 512, 512, Filter::Bicubic)?.save(&path)?;
        by_hand.push(path);
    }
    let video = |fs: Vec<PathBuf>| MediaRequest {
        images: vec![],
        videos: vec![VideoSource::FrameFiles(fs)],
    };
    let resized = loader.load_resized(&video(frames.clone()), &dir, Some((512, 512)))?;
    let expected = loader.load(&video(by_hand), &dir)?;
    let untouched = loader.load(&video(frames), &dir)?;
    let max_diff = |a: &candle_core::Tensor, b: &candle_core::Tensor| -> Result<f32> {
        Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?)
    };
    assert_eq!(max_diff(&resized.videos[0], &expected.videos[0])?, 0.0);
    assert!(max_diff(&resized.videos[0], &untouched.videos[0])? > 0.0);
    Ok(())
}

/// `Image.open(p).resize((512, 512))` as `DiffusionDPO/sift_dpo_data.py` writes it (Pillow's
/// default filter for RGB, BICUBIC), summed by Pillow 13.0.0: (sum of bytes, sum of
/// (index + 1) * byte mod 2^61).
#[test]
fn the_sift_resize_is_pillows_default_resize() -> Result<()> {
    for (name, sum, weighted) in [
        ("img1.png", 88_259_219u64, 36_559_920_814_404u64),
        ("img3.png", 97_917_020, 38_802_374_511_725),
    ] {
        let rgb = to_rgb(&load_image(img(name)?)?, Default::default());
        let out = resize_pillow(&rgb, 512, 512, Filter::Bicubic)?;
        let bytes = out.as_raw();
        let s: u64 = bytes.iter().map(|&b| u64::from(b)).sum();
        let w = bytes.iter().enumerate().fold(0u64, |acc, (i, &b)| {
            (acc + (i as u64 + 1) * u64::from(b)) % (1 << 61)
        });
        assert_eq!((s, w), (sum, weighted), "{name}");
    }
    Ok(())
}

#[test]
fn records_name_unranked_candidates_and_trl_layout_reads_back() -> Result<()> {
    let dir = scratch("layout")?;
    let five: Vec<String> = ["img0.png", "img1.png", "img2.png", "img3.png", "img1.png"]
        .iter()
        .map(|f| img(f))
        .collect::<Result<_>>()?;
    let lines = [
        json!({"id": "gen", "task": "image_generation", "prompt": "a red circle", "candidates": five}),
        json!({"id": "und", "task": "image_understanding", "prompt": "What color is the ball?",
            "images": [img("img3.png")?],
            "candidates": ["Red.", "Blue.", "Green.", "It is red.", "Round."]}),
        json!({"id": "blind", "task": "image_understanding", "prompt": "What color is the ball?",
            "candidates": ["Red.", "Blue."]}),
    ];
    let plain = run_pairs(&dir, &lines, &[])?;
    let trl = run_pairs(&dir, &lines, &["--format", "trl"])?;
    assert_eq!((plain.len(), trl.len()), (3, 3));
    for out in [&plain, &trl] {
        // Five candidates in disjoint pairs: the fifth is never judged, and the record says so.
        for line in &out[..2] {
            assert_eq!(line["unranked"], json!([4]), "{line}");
        }
        let err = out[2]["error"].as_str().unwrap_or_default();
        assert!(err.contains("asks about images"), "{}", out[2]);
    }

    // The fixture's judge keeps both prompts (deterministic fast scores).
    assert!(plain[0].get("dropped").is_none() && plain[1].get("dropped").is_none());
    {
        let p: PairRecord = serde_json::from_value(plain[1].clone())?;
        let t: PairRecord = serde_json::from_value(trl[1].clone())?;
        assert!(matches!(p.prompt, Turns::Text(_)));
        assert_eq!(t.prompt.media_items(), Some((1, 0)));
        assert_eq!(
            trl[1]["prompt"][0]["content"][0],
            json!({"type": "image"}),
            "{}",
            trl[1]
        );
        assert_eq!(trl[1]["chosen"][0]["role"], "assistant");
        assert_eq!(p.prompt.text(), t.prompt.text());
        assert_eq!(p.chosen.text(), t.chosen.text());
        assert_eq!(p.rejected.text(), t.rejected.text());
        assert_eq!(p.images, t.images);
    }
    // Generation pairs are media paths for diffusion DPO: plain in both layouts.
    assert!(trl[0]["prompt"].is_string() && trl[0]["chosen"].is_string());
    Ok(())
}

#[test]
fn the_sift_recipe_needs_the_llava_family() -> Result<()> {
    let dir = scratch("family")?;
    let input = dir.join("in.jsonl");
    std::fs::write(
        &input,
        json!({"id": "a", "task": "image_generation", "prompt": "x",
               "candidates": [img("img0.png")?, img("img1.png")?]})
        .to_string(),
    )?;
    let run = |recipe: &str| -> Result<std::process::Output> {
        Ok(engine()
            .arg("pairs")
            .arg(&input)
            .arg("--model")
            .arg(golden_model_dir()?)
            .arg("--out")
            .arg(dir.join(format!("{recipe}.jsonl")))
            .args(["--template-family", "qwen", "--recipe", recipe])
            .output()?)
    };
    let sift = run("sift")?;
    assert_eq!(sift.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&sift.stderr).contains("--recipe inference"));
    assert!(run("inference")?.status.success());
    Ok(())
}
