//! Qwen2.5-VL as a judge (`engine score`) on the tiny checkpoints of `fixtures/qwen2_5_vl`,
//! against transformers (`scripts/golden/make_qwen2_5_vl.py`):
//! - the cached decoding paths the judge uses (a prompt pass at M-RoPE positions, then
//!   continuations or greedy tokens at the prompt's offset) give transformers' completion
//!   log-probs (1e-3) for prompts of one, two and no images and of one and two videos (frame
//!   lists through qwen-vl-utils), alone and batched together, and greedy tokens equal to its
//!   `generate`;
//! - the judge's prompt rendered with `--template` and the Qwen-VL markers is the processor's
//!   chat text, token for token;
//! - `engine score` as a user runs it: generate mode writes what `generate` writes, fast mode
//!   answers image and video records (videos as frame directories), a video file or a missing
//!   image is an error on its record and the run goes on.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};
use unireward_engine::backend::{Decoding, Prompt, QwenVlBackend};
use unireward_engine::judge::{Judge, JudgeMode, PromptStyle};
use unireward_models::judge::{
    ChatTemplate, Family, Media, MediaMarkers, Mode, PromptTemplate, Task,
};
use unireward_models::preprocess::{
    load_image, MediaRequest, QwenVlPixels, QwenVlProcessor, QwenVlProcessorConfig, VideoSource,
};
use unireward_models::qwen2_5_vl::{MediaGrid, QwenMedia, QwenVideo, QwenVideos};
use unireward_models::tokenize::{unquote_user_text, PromptTokenizer};
use unireward_models::MediaFeatures;

const IMAGE_PAD: u32 = 151655;
const VIDEO_PAD: u32 = 151656;
const IM_END: u32 = 151645;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/qwen2_5_vl")
}

struct Fixture {
    backend: QwenVlBackend,
    tokenizer: PromptTokenizer,
    processor: QwenVlProcessor,
    cases: Vec<Value>,
    video_cases: Vec<Value>,
    generation: Value,
    expected: std::collections::HashMap<String, Tensor>,
}

fn fixture(name: &str) -> Result<Fixture> {
    let dir = fixtures().join(name);
    let json: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json"))?)?;
    let videos: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("video_cases.json"))?)?;
    let model = dir.join("model");
    Ok(Fixture {
        backend: QwenVlBackend::load(&model, DType::F32, &Device::Cpu)?,
        tokenizer: PromptTokenizer::load_qwen_vl(&model, IMAGE_PAD, VIDEO_PAD)?,
        processor: QwenVlProcessor::new(QwenVlProcessorConfig::from_file(
            model.join("preprocessor_config.json"),
        )?),
        cases: json["cases"].as_array().cloned().unwrap_or_default(),
        video_cases: videos["cases"].as_array().cloned().unwrap_or_default(),
        generation: json["generation"].clone(),
        expected: candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu)?,
    })
}

impl Fixture {
    fn judge(&self, mode: JudgeMode, template: Option<PromptTemplate>) -> Result<Judge<'_>> {
        let style = PromptStyle {
            family: Family::Qwen,
            chat: ChatTemplate::ChatMl,
            user_template: template,
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

    fn images(&self, case: &Value) -> Result<Vec<QwenVlPixels>> {
        case["images"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|f| {
                let path = fixtures()
                    .join("media")
                    .join(f.as_str().unwrap_or_default());
                Ok(self.processor.preprocess(&load_image(&path)?)?)
            })
            .collect()
    }

    fn features(&self, images: &[QwenVlPixels]) -> Result<MediaFeatures> {
        let refs: Vec<&QwenVlPixels> = images.iter().collect();
        Ok(MediaFeatures {
            images: self
                .backend
                .model()
                .vision()
                .encode_media(&refs)?
                .into_iter()
                .map(|f| f.merged)
                .collect(),
            image_grids: images.iter().map(MediaGrid::of_image).collect(),
            ..Default::default()
        })
    }

    /// A video case's prompt (videos as frame lists, read as `engine score` reads them) and its
    /// completion's token ids, by tokenizing the whole text.
    fn video_prompt(&self, judge: &Judge, case: &Value) -> Result<(Prompt, Vec<u32>)> {
        let videos = case["videos"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|frames| {
                let files = frames.as_array().cloned().unwrap_or_default();
                VideoSource::FrameFiles(
                    files
                        .iter()
                        .map(|f| {
                            fixtures()
                                .join("media")
                                .join(f.as_str().unwrap_or_default())
                        })
                        .collect(),
                )
            })
            .collect();
        let request = MediaRequest {
            images: Vec::new(),
            videos,
        };
        let (media, _) = QwenMedia::read(&self.processor, &request, &fixtures(), QwenVideos::Items)
            .map_err(anyhow::Error::msg)?
            .encoded(self.backend.model().vision())?
            .all()?;
        let text = case["prompt"].as_str().unwrap_or_default();
        let prompt = judge.prompt(text, &media)?;
        let lens: Vec<usize> = media
            .videos
            .iter()
            .map(|v| v.dim(0))
            .collect::<candle_core::Result<_>>()?;
        let full = format!("{text}{}", case["completion"].as_str().unwrap_or_default());
        let ids = self.tokenizer.encode(&full, &[], &lens)?.ids;
        let prompt_len = case["prompt_len"].as_u64().unwrap_or_default() as usize;
        assert_eq!(
            prompt.embeds.dim(0)?,
            prompt_len,
            "{}: prompt tokens",
            case["name"]
        );
        Ok((prompt, ids[prompt_len..].to_vec()))
    }

    /// A golden case's prompt as the judge builds it, and its completion's token ids.
    fn case_prompt(&self, judge: &Judge, case: &Value) -> Result<(Prompt, Vec<u32>)> {
        let name = case["name"].as_str().unwrap_or_default();
        let media = self.features(&self.images(case)?)?;
        let prompt = judge.prompt(case["prompt"].as_str().unwrap_or_default(), &media)?;
        let ids: Vec<u32> = self.expected[&format!("{name}.input_ids")]
            .to_vec1::<i64>()?
            .into_iter()
            .map(|i| i as u32)
            .collect();
        let prompt_len = case["prompt_len"].as_u64().unwrap_or_default() as usize;
        assert_eq!(prompt.embeds.dim(0)?, prompt_len, "{name}: prompt tokens");
        Ok((prompt, ids[prompt_len..].to_vec()))
    }
}

#[test]
fn cached_continuations_at_mrope_positions_match_transformers() -> Result<()> {
    for name in ["qwen2_5_vl_3b", "qwen2_5_vl_7b"] {
        let f = fixture(name)?;
        let judge = f.judge(JudgeMode::Fast, None)?;
        let mut prompts = Vec::new();
        let mut completions = Vec::new();
        for case in &f.cases {
            let (prompt, completion) = f.case_prompt(&judge, case)?;
            prompts.push(prompt);
            completions.push(vec![completion]);
        }
        for case in &f.video_cases {
            let (prompt, completion) = f.video_prompt(&judge, case)?;
            prompts.push(prompt);
            completions.push(vec![completion]);
        }
        // Alone, then all seven in one right-padded prompt pass (lengths 30 to 2700 tokens).
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
        let all = f.cases.iter().chain(&f.video_cases);
        for ((case, a), t) in all.zip(&alone).zip(&together) {
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
    }
    Ok(())
}

#[test]
fn judge_prompt_and_greedy_generation_match_the_processor_and_generate() -> Result<()> {
    for name in ["qwen2_5_vl_3b", "qwen2_5_vl_7b"] {
        let f = fixture(name)?;
        let template = PromptTemplate::parse("test", "{media}Text Caption: [{prompt}]")?;
        let judge = f.judge(JudgeMode::Generate, Some(template))?;
        let text = judge.prompt_text(
            Task::ImageGeneration,
            Mode::Point,
            "two green triangles",
            &[],
            Media::Images(1),
        )?;
        let gen = &f.generation;
        assert_eq!(
            unquote_user_text(&text),
            gen["prompt"].as_str().unwrap_or_default()
        );
        let media = f.features(&f.images(gen)?)?;
        let prompt = judge.prompt(&text, &media)?;
        let tokens = f.backend.generate_after(&prompt, 24, &[IM_END])?;
        let want: Vec<u32> = serde_json::from_value(gen["tokens"].clone())?;
        assert_eq!(tokens, want, "{name}");
    }
    Ok(())
}

fn engine_score(model: &Path, input: &Path, out: &Path, extra: &[&str]) -> Result<Option<i32>> {
    Ok(Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(["score", "--model"])
        .arg(model)
        .arg("--batch")
        .arg(input)
        .arg("--out")
        .arg(out)
        .args(extra)
        .status()?
        .code())
}

fn records(path: &Path) -> Result<Vec<Value>> {
    Ok(std::fs::read_to_string(path)?
        .lines()
        .map(serde_json::from_str)
        .collect::<std::result::Result<_, _>>()?)
}

#[test]
fn engine_score_on_qwen2_5_vl() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let model = fixtures().join("qwen2_5_vl_3b").join("model");
    let media = fixtures().join("media");
    let clip = |k: &str| media.join(k).to_string_lossy().into_owned();
    let img = |k: &str| {
        media
            .join(format!("{k}.png"))
            .to_string_lossy()
            .into_owned()
    };

    // Generate mode with the golden prompt as a template: the tiny model's answer holds no
    // score, so the record is an error quoting the answer, which is transformers' `generate`.
    let template = tmp.path().join("template.txt");
    std::fs::write(&template, "{media}Text Caption: [{prompt}]")?;
    let input = tmp.path().join("gen.jsonl");
    std::fs::write(
        &input,
        json!({"id": "g", "task": "image_generation", "mode": "point",
               "prompt": "two green triangles", "images": [img("300x200")]})
        .to_string()
            + "\n",
    )?;
    let out = tmp.path().join("gen.out.jsonl");
    let template_arg = template.to_string_lossy().into_owned();
    let code = engine_score(
        &model,
        &input,
        &out,
        &[
            "--judge",
            "generate",
            "--max-new-tokens",
            "24",
            "--template",
            &template_arg,
        ],
    )?;
    assert_eq!(code, Some(1));
    let answers = records(&out)?;
    let cases: Value = serde_json::from_str(&std::fs::read_to_string(
        fixtures().join("qwen2_5_vl_3b").join("cases.json"),
    )?)?;
    let text = cases["generation"]["text"].as_str().unwrap_or_default();
    let error = answers[0]["error"].as_str().unwrap_or_default();
    assert!(error.contains(&format!("{text:?}")), "{error}");

    // Fast mode on the built-in Qwen prompts of the four image tasks, with a video and a
    // missing image among them.
    let lines = [
        json!({"id": "gen-point", "task": "image_generation", "mode": "point",
               "prompt": "a yellow star", "images": [img("1920x1080")]}),
        json!({"id": "gen-pair", "task": "image_generation", "mode": "pair",
               "prompt": "a yellow star", "images": [img("300x200"), img("40x30")]}),
        json!({"id": "video", "task": "video_generation", "mode": "point",
               "prompt": "a yellow star", "videos": [img("300x200")]}),
        json!({"id": "video-pair", "task": "video_generation", "mode": "pair",
               "prompt": "a yellow square moving", "videos": [clip("clip_300x200"), clip("clip_640x360")]}),
        json!({"id": "und-point", "task": "image_understanding", "mode": "point",
               "prompt": "What is drawn?", "images": [img("300x200")], "answers": ["Triangles."]}),
        json!({"id": "missing", "task": "image_generation", "mode": "point",
               "prompt": "x", "images": [img("nowhere")]}),
        json!({"id": "und-pair", "task": "image_understanding", "mode": "pair",
               "prompt": "What is drawn?", "images": [img("40x30")],
               "answers": ["Triangles.", "A star."]}),
    ];
    let input = tmp.path().join("fast.jsonl");
    std::fs::write(
        &input,
        lines
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
            + "\n",
    )?;
    let out = tmp.path().join("fast.out.jsonl");
    assert_eq!(engine_score(&model, &input, &out, &[])?, Some(1));
    let answers = records(&out)?;
    // The 2.0 family sends each video as sampled frames (`--frames 4`): per-dimension shares.
    let v2_input = tmp.path().join("v2.jsonl");
    std::fs::write(&v2_input, lines[3].to_string() + "\n")?;
    let v2_out = tmp.path().join("v2.out.jsonl");
    let code = engine_score(
        &model,
        &v2_input,
        &v2_out,
        &["--template-family", "2.0", "--frames", "4"],
    )?;
    assert_eq!(code, Some(0));
    let v2 = records(&v2_out)?;
    assert!(
        v2[0]["scores"].is_object() && v2[0]["probs"].is_object(),
        "{}",
        v2[0]
    );
    let ids: Vec<&str> = answers
        .iter()
        .map(|a| a["id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        ids,
        [
            "gen-point",
            "gen-pair",
            "video",
            "video-pair",
            "und-point",
            "missing",
            "und-pair"
        ]
    );
    for a in &answers {
        match a["id"].as_str().unwrap_or("") {
            // A still image given as a video file: decoded by ffmpeg as any file, so an error
            // on its record naming the file (no ffmpeg on PATH; with one, a single frame is
            // under the 2 qwen_vl_utils samples).
            "video" => assert!(
                a["error"].as_str().unwrap_or("").contains("300x200.png"),
                "{a}"
            ),
            "missing" => assert!(a["error"].as_str().unwrap_or("").contains("nowhere"), "{a}"),
            "gen-pair" | "und-pair" | "video-pair" => {
                let p = &a["probs"];
                let sum: f64 = ["first", "second", "tie"]
                    .iter()
                    .map(|k| p[k].as_f64().unwrap_or(f64::NAN))
                    .sum();
                assert!((sum - 1.0).abs() < 1e-4, "{a}");
            }
            _ => {
                let s = a["score"].as_f64().unwrap_or(f64::NAN);
                assert!(s.is_finite() && a.get("error").is_none(), "{a}");
            }
        }
    }
    Ok(())
}

/// Frames mode (the 2.0 and Think-qwen3vl scripts): a video's frames sampled as
/// `linspace(0, n - 1, N, dtype=int)`, each the image the processor makes of it.
#[test]
fn frames_mode_sends_sampled_frames_as_images() -> Result<()> {
    let f = fixture("qwen2_5_vl_3b")?;
    let clip = fixtures().join("media").join("clip_300x200");
    let request = MediaRequest {
        images: Vec::new(),
        videos: vec![VideoSource::FrameDir(clip.clone())],
    };
    let media = QwenMedia::read(&f.processor, &request, &fixtures(), QwenVideos::Frames(4))
        .map_err(anyhow::Error::msg)?;
    let frames = match media.videos.as_slice() {
        [QwenVideo::Frames(frames)] => frames,
        _ => anyhow::bail!("one video of frames expected"),
    };
    assert_eq!(frames.len(), 4);
    let (features, marks) = media.encoded(f.backend.model().vision())?.all()?;
    assert_eq!(marks, Media::Images(4));
    assert_eq!(features.image_grids.len(), 4);
    for (image, k) in frames.iter().zip([0, 2, 4, 7]) {
        let frame = load_image(clip.join(format!("frame_{k:02}.png")))?;
        let want = f.processor.preprocess(&frame)?;
        assert_eq!(image.grid_thw, want.grid_thw);
        let diff = (&image.pixel_values - &want.pixel_values)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert_eq!(diff, 0.0, "frame {k}");
    }
    Ok(())
}

/// `engine pairs` with a Qwen2.5-VL judge (inference recipe): image candidates ranked round
/// robin, video candidates (frame directories) in the 2.0 family's frames mode; every pair
/// record names two different candidates with the chosen one scored at least as high.
#[test]
fn engine_pairs_on_qwen2_5_vl() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let model = fixtures().join("qwen2_5_vl_3b").join("model");
    let media = fixtures().join("media");
    let p = |rel: &str| media.join(rel).to_string_lossy().into_owned();
    let cases = [
        (
            json!({"id": "img", "task": "image_generation", "prompt": "a yellow square",
                   "candidates": [p("300x200.png"), p("40x30.png"),
                                  p("clip_300x200/frame_00.png"), p("clip_300x200/frame_07.png")]}),
            vec!["--ranking", "round-robin"],
        ),
        (
            json!({"id": "vid", "task": "video_generation", "prompt": "a yellow square moving",
                   "candidates": [p("clip_300x200"), p("clip_640x360")]}),
            vec!["--template-family", "2.0", "--frames", "4"],
        ),
    ];
    for (record, extra) in cases {
        let input = tmp.path().join("in.jsonl");
        let out = tmp.path().join(format!(
            "{}.out.jsonl",
            record["id"].as_str().unwrap_or("x")
        ));
        std::fs::write(&input, record.to_string() + "\n")?;
        let status = Command::new(env!("CARGO_BIN_EXE_engine"))
            .arg("pairs")
            .arg(&input)
            .arg("--model")
            .arg(&model)
            .arg("--out")
            .arg(&out)
            .args(["--recipe", "inference"])
            .args(&extra)
            .status()?;
        assert_eq!(status.code(), Some(0), "{record}");
        let lines = records(&out)?;
        assert_eq!(lines.len(), 1);
        let line = &lines[0];
        assert_eq!(line["id"], record["id"]);
        assert!(line.get("dropped").is_none(), "{line}");
        assert_ne!(line["chosen"], line["rejected"], "{line}");
        let (c, r) = (
            line["chosen_score"].as_f64(),
            line["rejected_score"].as_f64(),
        );
        assert!(c.is_some() && r.is_some() && c >= r, "{line}");
        if record["id"] == "img" {
            // The point score of the chosen image is what `engine score` gives it.
            let point = tmp.path().join("point.jsonl");
            std::fs::write(
                &point,
                json!({"id": "p", "task": "image_generation", "mode": "point",
                       "prompt": "a yellow square", "images": [line["chosen"]]})
                .to_string()
                    + "\n",
            )?;
            let scored = tmp.path().join("point.out.jsonl");
            assert_eq!(engine_score(&model, &point, &scored, &[])?, Some(0));
            let s = records(&scored)?[0]["score"].as_f64().unwrap_or(f64::NAN);
            let c = c.unwrap_or(f64::NAN);
            assert!((s - c).abs() < 1e-6, "engine score {s} vs pairs {c}");
        }
    }
    Ok(())
}
