//! Qwen3-VL as a judge on the tiny checkpoints of `fixtures/qwen3_vl`, against transformers
//! (`scripts/golden/make_qwen3_vl.py`):
//! - the cached decoding paths the judge uses — a prompt pass at M-RoPE positions with the
//!   deep-stack features added after the decoder's first layers, then continuations or greedy
//!   tokens at the prompt's offset — give transformers' completion log-probs (1e-3) for prompts
//!   of no, one (1920x1080, 300x200) and two images, alone and batched together, and greedy
//!   tokens equal to its `generate`;
//! - `engine logprob` as a user runs it, with images and video items (frame lists and a video
//!   file through a stand-in ffmpeg, `scripts/golden/make_qwen3_vl_video.py`);
//! - `engine score` on the 2.0 prompts (fast: images, a video as sampled frames or as video
//!   items) and in generate mode with the golden prompt as a template.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};
use unireward_engine::backend::{Decoding, Prompt, QwenVlBackend};
use unireward_engine::judge::{Judge, JudgeMode, PromptStyle};
use unireward_models::family::ModelFamily;
use unireward_models::judge::{ChatTemplate, Family, MediaMarkers};
use unireward_models::preprocess::{MediaRequest, QwenVlProcessor};
use unireward_models::qwen2_5_vl::{QwenMedia, QwenVideos};
use unireward_models::tokenize::PromptTokenizer;
use unireward_tests::fake_ffmpeg::fake_ffmpeg;

const IMAGE_PAD: u32 = 151655;
const VIDEO_PAD: u32 = 151656;
const IM_END: u32 = 151645;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/qwen3_vl")
}

/// The images are `fixtures/qwen2_5_vl/media`'s.
fn media_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/qwen2_5_vl/media")
}

struct Fixture {
    backend: QwenVlBackend,
    tokenizer: PromptTokenizer,
    processor: QwenVlProcessor,
    cases: Vec<Value>,
    generation: Value,
    expected: std::collections::HashMap<String, Tensor>,
}

fn fixture(name: &str) -> Result<Fixture> {
    let dir = fixtures().join(name);
    let json: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json"))?)?;
    let model = dir.join("model");
    Ok(Fixture {
        backend: QwenVlBackend::load(&model, DType::F32, &Device::Cpu)?,
        tokenizer: PromptTokenizer::load_qwen_vl(&model, IMAGE_PAD, VIDEO_PAD)?,
        // As `engine` reads it: the config names the torchvision backend.
        processor: QwenVlProcessor::from_model_dir(&model)?,
        cases: json["cases"].as_array().cloned().unwrap_or_default(),
        generation: json["generation"].clone(),
        expected: candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu)?,
    })
}

impl Fixture {
    fn judge(&self, mode: JudgeMode) -> Result<Judge<'_>> {
        let style = PromptStyle {
            family: Family::V2,
            chat: ChatTemplate::ChatMl,
            markers: MediaMarkers::QwenVl,
            ..Default::default()
        };
        Ok(Judge::with_decoder(
            &self.backend,
            &self.tokenizer,
            style,
            mode,
            24,
        )?)
    }

    /// A case's raw prompt with its images read as `engine score` reads them.
    fn prompt(&self, judge: &Judge, case: &Value) -> Result<Prompt> {
        let images = case["images"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|f| media_dir().join(f.as_str().unwrap_or_default()))
            .collect();
        let request = MediaRequest {
            images,
            videos: Vec::new(),
        };
        let (media, _) =
            QwenMedia::read(&self.processor, &request, &media_dir(), QwenVideos::Items)
                .map_err(anyhow::Error::msg)?
                .encoded(self.backend.model().vision())?
                .all()?;
        Ok(judge.prompt(case["prompt"].as_str().unwrap_or_default(), &media)?)
    }

    fn completion(&self, case: &Value) -> Result<Vec<u32>> {
        let name = case["name"].as_str().unwrap_or_default();
        let ids: Vec<u32> = self.expected[&format!("{name}.input_ids")]
            .to_vec1::<i64>()?
            .into_iter()
            .map(|i| i as u32)
            .collect();
        let prompt_len = case["prompt_len"].as_u64().unwrap_or_default() as usize;
        Ok(ids[prompt_len..].to_vec())
    }
}

#[test]
fn cached_continuations_with_deepstack_match_transformers() -> Result<()> {
    for name in ["qwen3_vl_4b", "qwen3_vl_8b"] {
        let f = fixture(name)?;
        assert_eq!(f.backend.model().family(), ModelFamily::Qwen3Vl);
        let judge = f.judge(JudgeMode::Fast)?;
        let mut prompts = Vec::new();
        let mut completions = Vec::new();
        for case in &f.cases {
            let prompt = f.prompt(&judge, case)?;
            let want_len = case["prompt_len"].as_u64().unwrap_or_default() as usize;
            assert_eq!(prompt.embeds.dim(0)?, want_len, "{name} {}", case["name"]);
            // Three deep-stack levels for a prompt with images, none for text alone.
            let images = case["images"].as_array().map_or(0, Vec::len);
            assert_eq!(prompt.deepstack.len(), if images > 0 { 3 } else { 0 });
            prompts.push(prompt);
            completions.push(vec![f.completion(case)?]);
        }
        // Alone, then all four in one right-padded prompt pass (34 to 2080 tokens; the text-only
        // prompt without deep-stack features beside three with them).
        let alone: Vec<f64> = prompts
            .iter()
            .zip(&completions)
            .map(|(p, c)| {
                let scored = f
                    .backend
                    .prompt_continuations_batch(std::slice::from_ref(p), std::slice::from_ref(c))?;
                Ok(scored[0][0].total())
            })
            .collect::<Result<_>>()?;
        let together = f
            .backend
            .prompt_continuations_batch(&prompts, &completions)?;
        for ((case, a), t) in f.cases.iter().zip(&alone).zip(&together) {
            let want = case["completion_logprob"].as_f64().unwrap_or(f64::NAN);
            let t = t[0].total();
            println!(
                "{name} {}: alone {a:.6} batched {t:.6} transformers {want:.6}",
                case["name"]
            );
            assert!(
                (a - want).abs() < 1e-3,
                "{name} {}: {a} vs {want}",
                case["name"]
            );
            assert!(
                (t - want).abs() < 1e-3,
                "{name} {}: {t} vs {want}",
                case["name"]
            );
        }
        // Without the deep-stack features the image prompts are far off: the check above
        // rests on them.
        let bare: Vec<Prompt> = prompts
            .iter()
            .map(|p| Prompt {
                deepstack: Vec::new(),
                ..p.clone()
            })
            .collect();
        let without = f.backend.prompt_continuations_batch(&bare, &completions)?;
        let case = &f.cases[2];
        let want = case["completion_logprob"].as_f64().unwrap_or(f64::NAN);
        let off = (without[2][0].total() - want).abs();
        println!("{name} {} without deep-stack: {off:.4} off", case["name"]);
        assert!(
            off > 1e-2,
            "{name}: deep-stack features change nothing ({off})"
        );
    }
    Ok(())
}

#[test]
fn greedy_generation_matches_generate() -> Result<()> {
    for name in ["qwen3_vl_4b", "qwen3_vl_8b"] {
        let f = fixture(name)?;
        let judge = f.judge(JudgeMode::Generate)?;
        let prompt = f.prompt(&judge, &f.generation)?;
        let tokens = f.backend.generate_after(&prompt, 24, &[IM_END])?;
        let want: Vec<u32> = serde_json::from_value(f.generation["tokens"].clone())?;
        assert_eq!(tokens, want, "{name}");
    }
    Ok(())
}

fn run_engine(args: &[&str], model: &Path, input: &Path, out: &Path) -> Result<Option<i32>> {
    let input_flag = if args[0] == "score" {
        "--batch"
    } else {
        "--input"
    };
    Ok(Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(args)
        .arg("--model")
        .arg(model)
        .arg(input_flag)
        .arg(input)
        .arg("--out")
        .arg(out)
        .status()?
        .code())
}

fn records(path: &Path) -> Result<Vec<Value>> {
    Ok(std::fs::read_to_string(path)?
        .lines()
        .map(serde_json::from_str)
        .collect::<std::result::Result<_, _>>()?)
}

fn write_lines(path: &Path, lines: &[Value]) -> Result<()> {
    let text: Vec<String> = lines.iter().map(Value::to_string).collect();
    Ok(std::fs::write(path, text.join("\n") + "\n")?)
}

#[test]
fn engine_logprob_on_qwen3_vl() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let name = "qwen3_vl_4b";
    let f = fixture(name)?;
    let mut lines: Vec<Value> = f
        .cases
        .iter()
        .map(|c| {
            let images: Vec<String> = c["images"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|i| {
                    media_dir()
                        .join(i.as_str().unwrap_or_default())
                        .to_string_lossy()
                        .into_owned()
                })
                .collect();
            json!({"id": c["name"], "prompt": c["prompt"], "completion": c["completion"],
                   "images": images})
        })
        .collect();
    // Video items (`video_item_cases.json`): frame lists, an image beside a video, and a video file
    // decoded by a stand-in ffmpeg found on PATH.
    let vcases: Value = serde_json::from_str(&std::fs::read_to_string(
        fixtures().join(name).join("video_item_cases.json"),
    )?)?;
    let file = &vcases["file_video"];
    let frames = media_dir().join(file["frames"].as_str().unwrap_or_default());
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin)?;
    fake_ffmpeg(
        &bin,
        &frames,
        &file["fps"].as_f64().unwrap_or(0.0).to_string(),
    )?;
    let vcases = vcases["cases"].as_array().cloned().unwrap_or_default();
    let path = |p: &Value| {
        media_dir()
            .join(p.as_str().unwrap_or_default())
            .to_string_lossy()
            .into_owned()
    };
    for c in &vcases {
        let images: Vec<String> = c["images"]
            .as_array()
            .into_iter()
            .flatten()
            .map(path)
            .collect();
        // One video a record: its frames, or the file (a placeholder the stand-in "decodes").
        let video: Vec<String> = match &c["videos"][0] {
            Value::Array(frames) => frames.iter().map(path).collect(),
            _ => {
                let clip = tmp.path().join("clip.mp4");
                std::fs::write(&clip, b"decoded by the stand-in ffmpeg")?;
                vec![clip.to_string_lossy().into_owned()]
            }
        };
        lines.push(
            json!({"id": c["name"], "prompt": c["prompt"], "completion": c["completion"],
                          "images": images, "video": video}),
        );
    }
    let input = tmp.path().join("in.jsonl");
    let out = tmp.path().join("out.jsonl");
    write_lines(&input, &lines)?;
    let model = fixtures().join(name).join("model");
    let status = Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(["logprob", "--model"])
        .arg(&model)
        .arg("--input")
        .arg(&input)
        .arg("--out")
        .arg(&out)
        .env("PATH", &bin)
        .status()?;
    let answers = records(&out)?;
    assert_eq!(answers.len(), f.cases.len() + vcases.len());
    for (a, c) in answers.iter().zip(f.cases.iter().chain(&vcases)) {
        assert_eq!(a["id"], c["name"], "{a}");
        let lp = a["logprob"].as_f64().unwrap_or(f64::NAN);
        let want = c["completion_logprob"].as_f64().unwrap_or(f64::NAN);
        println!("{name} {}: {lp:.6} vs {want:.6}", c["name"]);
        assert!((lp - want).abs() < 1e-3, "{}: {lp} vs {want}", c["name"]);
        assert_eq!(a["prompt_tokens"], c["prompt_len"]);
    }
    assert_eq!(status.code(), Some(0));
    // Without an ffmpeg the file's record says so; on ONNX Runtime and in training video items
    // are refused (checked where those run).
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty)?;
    let file_case = vcases.iter().find(|c| !c["videos"][0].is_array());
    let (input, out) = (
        tmp.path().join("file.jsonl"),
        tmp.path().join("file_out.jsonl"),
    );
    write_lines(&input, &lines[lines.len() - 1..])?;
    let status = Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(["logprob", "--model"])
        .arg(&model)
        .arg("--input")
        .arg(&input)
        .arg("--out")
        .arg(&out)
        .env("PATH", &empty)
        .status()?;
    assert_eq!(status.code(), Some(1));
    let answers = records(&out)?;
    assert!(file_case.is_some());
    let err = answers[0]["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("clip.mp4") && err.contains("`ffmpeg` was not found on PATH"),
        "{err}"
    );
    Ok(())
}

#[test]
fn engine_score_on_qwen3_vl() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let model = fixtures().join("qwen3_vl_4b").join("model");
    let img = |k: &str| {
        media_dir()
            .join(format!("{k}.png"))
            .to_string_lossy()
            .into_owned()
    };
    let clip = |k: &str| media_dir().join(k).to_string_lossy().into_owned();

    // Generate mode with the golden prompt as a template: the tiny model's answer holds no
    // score, so the record is an error quoting the answer, which is transformers' `generate`.
    let template = tmp.path().join("template.txt");
    std::fs::write(&template, "{media}Text Caption: [{prompt}]")?;
    let input = tmp.path().join("gen.jsonl");
    write_lines(
        &input,
        &[
            json!({"id": "g", "task": "image_generation", "mode": "point",
                 "prompt": "two green triangles", "images": [img("300x200")]}),
        ],
    )?;
    let out = tmp.path().join("gen.out.jsonl");
    let template_arg = template.to_string_lossy().into_owned();
    let code = run_engine(
        &[
            "score",
            "--template-family",
            "2.0",
            "--judge",
            "generate",
            "--max-new-tokens",
            "24",
            "--template",
            &template_arg,
        ],
        &model,
        &input,
        &out,
    )?;
    assert_eq!(code, Some(1));
    let cases: Value = serde_json::from_str(&std::fs::read_to_string(
        fixtures().join("qwen3_vl_4b").join("cases.json"),
    )?)?;
    let text = cases["generation"]["text"].as_str().unwrap_or_default();
    let error = records(&out)?[0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(error.contains(&format!("{text:?}")), "{error}");

    // Fast mode on the 2.0 prompts: images of real sizes, a video as 4 sampled frames (the 2.0
    // scripts' way), a missing image, a task the 2.0 scripts do not judge.
    let lines = [
        json!({"id": "gen-point", "task": "image_generation", "mode": "point",
               "prompt": "a yellow star", "images": [img("1920x1080")]}),
        json!({"id": "gen-pair", "task": "image_generation", "mode": "pair",
               "prompt": "a yellow star", "images": [img("300x200"), img("40x30")]}),
        json!({"id": "video-pair", "task": "video_generation", "mode": "pair",
               "prompt": "a yellow square moving",
               "videos": [clip("clip_300x200"), clip("clip_640x360")]}),
        json!({"id": "missing", "task": "image_generation", "mode": "point",
               "prompt": "x", "images": [img("nowhere")]}),
        json!({"id": "und-pair", "task": "image_understanding", "mode": "pair",
               "prompt": "What is drawn?", "images": [img("40x30")],
               "answers": ["Triangles.", "A star."]}),
    ];
    let input = tmp.path().join("fast.jsonl");
    write_lines(&input, &lines)?;
    let out = tmp.path().join("fast.out.jsonl");
    let code = run_engine(
        &["score", "--template-family", "2.0", "--frames", "4"],
        &model,
        &input,
        &out,
    )?;
    assert_eq!(code, Some(1));
    let answers = records(&out)?;
    let ids: Vec<&str> = answers
        .iter()
        .map(|a| a["id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        ids,
        ["gen-point", "gen-pair", "video-pair", "missing", "und-pair"]
    );
    for a in &answers {
        match a["id"].as_str().unwrap_or("") {
            "missing" => assert!(a["error"].as_str().unwrap_or("").contains("nowhere"), "{a}"),
            // The 2.0 scripts judge generation only: refused on its record, by name.
            "und-pair" => assert!(
                a["error"]
                    .as_str()
                    .unwrap_or("")
                    .contains("has no image_understanding pair prompt"),
                "{a}"
            ),
            "gen-point" => {
                let s = a["score"].as_f64().unwrap_or(f64::NAN);
                assert!(s.is_finite() && a.get("error").is_none(), "{a}");
                assert!(a["scores"].is_object(), "{a}");
            }
            _ => {
                let p = &a["probs"];
                assert!(p.is_object() && a["scores"].is_object(), "{a}");
            }
        }
    }

    // The same pair of videos as video items (`--video-mode pooled`): each clip shown one
    // temporal patch at a time after its time, as Qwen3VLProcessor shows a video item.
    let input = tmp.path().join("items.jsonl");
    write_lines(&input, &lines[2..3])?;
    let out = tmp.path().join("items.out.jsonl");
    let args = [
        "score",
        "--template-family",
        "2.0",
        "--video-mode",
        "pooled",
    ];
    assert_eq!(run_engine(&args, &model, &input, &out)?, Some(0));
    let a = &records(&out)?[0];
    assert!(
        a["probs"].is_object() && a["scores"].is_object() && a.get("error").is_none(),
        "{a}"
    );
    Ok(())
}
