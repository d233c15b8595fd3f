//! The Qwen-VL exports (Qwen2.5-VL 3b/7b shapes, Qwen3-VL 4b/8b shapes: `fixtures/qwen2_5_vl`,
//! `fixtures/qwen3_vl`, real geometry) run by ONNX Runtime against transformers
//! (`scripts/golden/make_qwen2_5_vl.py`, `make_qwen3_vl.py`) and against the candle model:
//! - the vision graph's merged and deep-stack features (images of 1920x1080, 300x200, 40x30;
//!   8- and 5-frame video items, Qwen3-VL's shown one temporal patch at a time, an image beside
//!   a video) within 1e-4 of transformers' and of candle's;
//! - the decoder's log-probs at the completion rows within 1e-4 of transformers' logits minus
//!   their log-sum-exp, and completion log-probs (the judge's cached paths, alone and batched)
//!   within 1e-3 of transformers';
//! - greedy generation equal to transformers' `generate`;
//! - as a user runs it: `unireward-export onnx`, then `engine logprob` on the export.
//!
//! Needs the ONNX Runtime library (ORT_DYLIB_PATH, an onnxruntime Python package, or `.ort/`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};
use unireward_engine::backend::{
    Decoder, Decoding, OrtQwenVlBackend, Prompt, QwenBackend, QwenVlBackend, Rows, SessionConfig,
};
use unireward_export::{export_onnx, ExportOptions};
use unireward_models::pack::{merge_deepstack, merge_media};
use unireward_models::preprocess::{MediaRequest, QwenVlProcessor, VideoSource};
use unireward_models::qwen2_5_vl::{QwenMedia, QwenVideos};
use unireward_models::tokenize::PromptTokenizer;
use unireward_models::MediaFeatures;

const FEATURE_TOL: f32 = 1e-4;
const LOGPROB_TOL: f32 = 1e-4;
const COMPLETION_TOL: f64 = 1e-3;
const IM_END: u32 = 151645;
/// Where `logits_specials` starts: the vocabulary's special tokens.
const SPECIALS_START: usize = 151643;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

fn media_dir() -> PathBuf {
    root().join("qwen2_5_vl/media")
}

/// A fixture: where it lies and its goldens.
struct Golden {
    dir: PathBuf,
    cases: Vec<Value>,
    video_cases: Vec<Value>,
    generation: Value,
    tensors: HashMap<String, Tensor>,
}

fn golden(family: &str, name: &str) -> Result<Golden> {
    let dir = root().join(family).join(name);
    let json: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json"))?)?;
    // Video cases: Qwen2.5-VL's items, Qwen3-VL's timed items. A case whose video is a file
    // goes through ffmpeg (a stand-in in the candle tests); the model sees the same frames
    // either way, so here the frame-list cases stand for it.
    let mut video_cases = Vec::new();
    let mut tensors =
        candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu)?;
    for (cases, expected) in [
        ("video_cases.json", "expected_video.safetensors"),
        ("video_item_cases.json", "expected_video_items.safetensors"),
    ] {
        if let Ok(text) = std::fs::read_to_string(dir.join(cases)) {
            let listed = serde_json::from_str::<Value>(&text)?["cases"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            video_cases.extend(listed.into_iter().filter(|c| {
                c["videos"]
                    .as_array()
                    .is_some_and(|v| v.iter().all(Value::is_array))
            }));
            tensors.extend(candle_core::safetensors::load(
                dir.join(expected),
                &Device::Cpu,
            )?);
        }
    }
    Ok(Golden {
        cases: json["cases"].as_array().cloned().unwrap_or_default(),
        generation: json["generation"].clone(),
        video_cases,
        tensors,
        dir,
    })
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    let a = a.to_dtype(DType::F32)?.flatten_all()?;
    let b = b.to_dtype(DType::F32)?.flatten_all()?;
    Ok((a - b)?.abs()?.max(0)?.to_scalar::<f32>()?)
}

/// A case's media: its images, or its videos as items (frame lists).
fn request(case: &Value) -> MediaRequest {
    let files = |v: &Value| -> Vec<PathBuf> {
        v.as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|f| media_dir().join(f.as_str().unwrap_or_default()))
            .collect()
    };
    MediaRequest {
        images: files(&case["images"]),
        videos: case["videos"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|frames| VideoSource::FrameFiles(files(frames)))
            .collect(),
    }
}

fn encoded(
    backend: &dyn QwenBackend,
    processor: &QwenVlProcessor,
    case: &Value,
) -> Result<MediaFeatures> {
    let media = QwenMedia::read(processor, &request(case), &media_dir(), QwenVideos::Items)
        .map_err(anyhow::Error::msg)?;
    Ok(media.encoded(backend.vision())?.into_features())
}

/// A raw prompt with the checkpoint's own media markers, as `engine logprob` reads it: the
/// tokenizer fills the i-th image and the i-th video marker in turn (a Qwen3-VL video one run
/// per temporal patch, each after its time), the media merged in, at the prompt's positions.
fn raw_prompt(
    backend: &dyn QwenBackend,
    tokenizer: &PromptTokenizer,
    text: &str,
    media: &MediaFeatures,
) -> Result<Prompt> {
    let (images, videos) = media.pads()?;
    let tokens = tokenizer.encode_videos(text, &images, &videos)?;
    let embeds = backend.embed_tokens(&tokens.ids)?;
    Ok(Prompt {
        embeds: merge_media(&embeds, &tokens, media)?,
        positions: backend.prompt_positions(&tokens, media)?,
        deepstack: merge_deepstack(&embeds, &tokens, media)?,
    })
}

/// The case's completion tokens (from transformers' input ids).
fn completion(g: &Golden, case: &Value) -> Result<Vec<u32>> {
    let name = case["name"].as_str().unwrap_or_default();
    let ids: Vec<u32> = g.tensors[&format!("{name}.input_ids")]
        .to_vec1::<i64>()?
        .into_iter()
        .map(|i| i as u32)
        .collect();
    let prompt_len = case["prompt_len"].as_u64().unwrap_or_default() as usize;
    Ok(ids[prompt_len..].to_vec())
}

fn check_export(family: &str, name: &str) -> Result<()> {
    let g = golden(family, name)?;
    let model = g.dir.join("model");
    let out = tempfile::tempdir()?;
    let start = Instant::now();
    export_onnx(&model, out.path(), &ExportOptions::default())?;
    println!("{name}: exported in {:.1?}", start.elapsed());
    let ort = OrtQwenVlBackend::open(out.path(), &SessionConfig::default())?;
    let candle = QwenVlBackend::load(&model, DType::F32, &Device::Cpu)?;
    let (image_pad, video_pad) = ort.media_token_ids();
    // The export's own copies of the tokenizer and processor files.
    let tokenizer = PromptTokenizer::load_qwen_vl(out.path(), image_pad, video_pad)?;
    let processor = QwenVlProcessor::from_model_dir(out.path())?;

    let mut prompts = Vec::new();
    let mut completions = Vec::new();
    for case in g.cases.iter().chain(&g.video_cases) {
        let cname = case["name"].as_str().unwrap_or_default();
        let media = encoded(&ort, &processor, case)?;
        let reference = encoded(&candle, &processor, case)?;
        let levels = media.deepstack.len();
        for (i, (f, c)) in media
            .images
            .iter()
            .chain(&media.videos)
            .zip(reference.images.iter().chain(&reference.videos))
            .enumerate()
        {
            let d = max_abs_diff(f, c)?;
            println!("{name} {cname} medium {i}: ort vs candle features {d:.2e}");
            assert!(d < FEATURE_TOL, "{name} {cname} medium {i}: {d}");
            if let Some(want) = g.tensors.get(&format!("{cname}.image_features{i}")) {
                let d = max_abs_diff(f, want)?;
                println!("{name} {cname} image {i}: ort vs transformers features {d:.2e}");
                assert!(d < FEATURE_TOL, "{name} {cname} image {i}: {d}");
            }
            for l in 0..levels {
                let key = format!("{cname}.deepstack{l}_features{i}");
                if let (Some(want), Some(got)) =
                    (g.tensors.get(&key), media.deepstack[l].images.get(i))
                {
                    let d = max_abs_diff(got, want)?;
                    println!("{name} {key}: {d:.2e}");
                    assert!(d < FEATURE_TOL, "{name} {key}: {d}");
                }
            }
        }
        for (l, (got, want)) in media.deepstack.iter().zip(&reference.deepstack).enumerate() {
            for (f, c) in got
                .images
                .iter()
                .chain(&got.videos)
                .zip(want.images.iter().chain(&want.videos))
            {
                let d = max_abs_diff(f, c)?;
                assert!(d < FEATURE_TOL, "{name} {cname} deep-stack level {l}: {d}");
            }
        }
        let prompt = raw_prompt(
            &ort,
            &tokenizer,
            case["prompt"].as_str().unwrap_or_default(),
            &media,
        )?;
        let want_len = case["prompt_len"].as_u64().unwrap_or_default() as usize;
        assert_eq!(prompt.embeds.dim(0)?, want_len, "{name} {cname}");

        // Log-probs at the completion rows against transformers' logits: the prompt and its
        // completion in one pass, the completion's positions continuing the prompt's.
        if let Some(cols) = g.tensors.get(&format!("{cname}.logits_cols")) {
            let k = cols.dim(0)?;
            let ids = completion(&g, case)?;
            let text = ort.embed_tokens(&ids)?;
            let mut positions = prompt.positions.clone().expect("M-RoPE positions");
            let start = want_len as i64 + positions.delta;
            for axis in positions.axes.iter_mut() {
                axis.extend((0..ids.len() as i64).map(|i| (start + i) as u32));
            }
            let full = Prompt {
                embeds: Tensor::cat(&[&prompt.embeds, &text], 0)?,
                positions: Some(positions),
                deepstack: prompt
                    .deepstack
                    .iter()
                    .map(|l| Tensor::cat(&[l, &text.zeros_like()?], 0))
                    .collect::<candle_core::Result<_>>()?,
            };
            let rows = vec![(want_len - 1..want_len - 1 + k).collect::<Vec<usize>>()];
            let mut cache = ort.new_cache()?;
            let got = ort
                .decode_prompts(std::slice::from_ref(&full), Rows::At(&rows), cache.as_mut())?
                .remove(0);
            let got_cols = got.narrow(1, 0, cols.dim(1)?)?;
            match g.tensors.get(&format!("{cname}.logsumexp")) {
                Some(lse) => {
                    let lse = lse.unsqueeze(1)?;
                    let d = max_abs_diff(&got_cols, &cols.broadcast_sub(&lse)?)?;
                    let specials = &g.tensors[&format!("{cname}.logits_specials")];
                    let want_s = specials.broadcast_sub(&lse)?;
                    let got_s = got.narrow(1, SPECIALS_START, specials.dim(1)?)?;
                    let ds = max_abs_diff(&got_s, &want_s)?;
                    println!("{name} {cname}: log-probs {d:.2e}, special tokens {ds:.2e}");
                    assert!(
                        d < LOGPROB_TOL && ds < LOGPROB_TOL,
                        "{name} {cname}: {d} {ds}"
                    );
                }
                None => {
                    // The video goldens keep the logits without their normaliser: each row's
                    // log-probs are its logits shifted by one constant.
                    let shift = (&got_cols - cols)?;
                    let first = shift.narrow(1, 0, 1)?;
                    let d = max_abs_diff(&shift, &first.broadcast_as(shift.shape())?)?;
                    println!("{name} {cname}: log-probs up to each row's normaliser {d:.2e}");
                    assert!(d < LOGPROB_TOL, "{name} {cname}: {d}");
                }
            }
        }
        prompts.push(prompt);
        completions.push(vec![completion(&g, case)?]);
    }
    // The judge's cached paths: each prompt alone, then all in one right-padded pass.
    let together = ort.prompt_continuations_batch(&prompts, &completions)?;
    for (i, case) in g.cases.iter().chain(&g.video_cases).enumerate() {
        let alone = ort.prompt_continuations_batch(
            std::slice::from_ref(&prompts[i]),
            std::slice::from_ref(&completions[i]),
        )?[0][0]
            .total();
        let batched = together[i][0].total();
        let want = case["completion_logprob"].as_f64().unwrap_or(f64::NAN);
        println!(
            "{name} {}: ort alone {alone:.6} batched {batched:.6} transformers {want:.6}",
            case["name"]
        );
        assert!(
            (alone - want).abs() < COMPLETION_TOL,
            "{name} {}",
            case["name"]
        );
        assert!(
            (batched - want).abs() < COMPLETION_TOL,
            "{name} {}",
            case["name"]
        );
    }

    // Greedy generation after the generation case's prompt.
    let gen = &g.generation;
    let media = encoded(&ort, &processor, gen)?;
    let prompt = raw_prompt(
        &ort,
        &tokenizer,
        gen["prompt"].as_str().unwrap_or_default(),
        &media,
    )?;
    let max_new = gen["max_new_tokens"].as_u64().unwrap_or(24) as usize;
    let tokens = ort.generate_after(&prompt, max_new, &[IM_END])?;
    let want: Vec<u32> = serde_json::from_value(gen["tokens"].clone())?;
    assert_eq!(tokens, want, "{name} greedy generation");
    Ok(())
}

#[test]
fn qwen2_5_vl_3b_export_matches_transformers() -> Result<()> {
    check_export("qwen2_5_vl", "qwen2_5_vl_3b")
}

#[test]
fn qwen2_5_vl_7b_export_matches_transformers() -> Result<()> {
    check_export("qwen2_5_vl", "qwen2_5_vl_7b")
}

#[test]
fn qwen3_vl_4b_export_matches_transformers() -> Result<()> {
    check_export("qwen3_vl", "qwen3_vl_4b")
}

#[test]
fn qwen3_vl_8b_export_matches_transformers() -> Result<()> {
    check_export("qwen3_vl", "qwen3_vl_8b")
}

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

/// `unireward-export onnx`, then `engine logprob` on the export as a user runs them: raw
/// prompts with the checkpoint's placeholders, images and (Qwen2.5-VL) videos as frame lists.
#[test]
fn engine_logprob_on_qwen_exports_matches_transformers() -> Result<()> {
    for (family, name) in [("qwen2_5_vl", "qwen2_5_vl_3b"), ("qwen3_vl", "qwen3_vl_4b")] {
        let g = golden(family, name)?;
        let dir = tempfile::tempdir()?;
        let exported = dir.path().join("export");
        let status = Command::new(export_bin())
            .args(["onnx", "--model"])
            .arg(g.dir.join("model"))
            .arg("--out")
            .arg(&exported)
            .status()?;
        assert!(status.success(), "unireward-export onnx {name}");
        let cases: Vec<&Value> = g.cases.iter().chain(&g.video_cases).collect();
        let lines: Vec<String> = cases
            .iter()
            .map(|c| {
                let r = request(c);
                let mut line = json!({"id": c["name"], "prompt": c["prompt"],
                                      "completion": c["completion"], "images": r.images});
                let videos: Vec<Value> = r
                    .videos
                    .iter()
                    .filter_map(|v| match v {
                        VideoSource::FrameFiles(f) => Some(json!(f)),
                        _ => None,
                    })
                    .collect();
                if !videos.is_empty() {
                    line["video"] = json!(videos);
                }
                line.to_string()
            })
            .collect();
        let input = dir.path().join("in.jsonl");
        let out = dir.path().join("out.jsonl");
        std::fs::write(&input, lines.join("\n") + "\n")?;
        let status = Command::new(engine_bin()?)
            .args(["logprob", "--model"])
            .arg(&exported)
            .arg("--input")
            .arg(&input)
            .arg("--out")
            .arg(&out)
            .status()?;
        let answers: Vec<Value> = std::fs::read_to_string(&out)?
            .lines()
            .map(serde_json::from_str)
            .collect::<std::result::Result<_, _>>()?;
        assert!(
            status.success(),
            "engine logprob on the {name} export: {answers:?}"
        );
        assert_eq!(answers.len(), cases.len());
        for (a, c) in answers.iter().zip(&cases) {
            let lp = a["logprob"].as_f64().unwrap_or(f64::NAN);
            let want = c["completion_logprob"].as_f64().unwrap_or(f64::NAN);
            println!(
                "{name} {}: engine logprob (ort) {lp:.6} vs {want:.6}",
                c["name"]
            );
            assert!(
                (lp - want).abs() < COMPLETION_TOL,
                "{name} {}: {a}",
                c["name"]
            );
            assert_eq!(a["prompt_tokens"], c["prompt_len"]);
        }
    }
    Ok(())
}

/// fp16 exports: half the weight bytes of fp32's, completion log-probs within fp16's unit
/// roundoff (2⁻¹¹, relative) of transformers', greedy tokens equal to `generate`, and both
/// precisions' graphs accepted by onnx's checker (full check: strict shape inference).
#[test]
fn fp16_qwen_exports_agree_within_half_precision() -> Result<()> {
    for (family, name) in [("qwen2_5_vl", "qwen2_5_vl_3b"), ("qwen3_vl", "qwen3_vl_4b")] {
        let g = golden(family, name)?;
        let model = g.dir.join("model");
        let (d32, d16) = (tempfile::tempdir()?, tempfile::tempdir()?);
        let r32 = export_onnx(&model, d32.path(), &ExportOptions::default())?;
        let r16 = export_onnx(
            &model,
            d16.path(),
            &ExportOptions {
                precision: unireward_export::Precision::F16,
                ..Default::default()
            },
        )?;
        let bytes = |r: &unireward_export::ExportReport| r.vision.data_bytes + r.decoder.data_bytes;
        let ratio = bytes(&r16) as f64 / bytes(&r32) as f64;
        println!("{name}: fp16 weights {:.3} of fp32's", ratio);
        assert!((0.45..=0.55).contains(&ratio), "{name}: {ratio}");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/check-onnx.py");
        let checked = Command::new("python3")
            .arg(script)
            .args([
                &r32.vision.model,
                &r32.decoder.model,
                &r16.vision.model,
                &r16.decoder.model,
            ])
            .output()?;
        let text = String::from_utf8_lossy(&checked.stdout).to_string()
            + &String::from_utf8_lossy(&checked.stderr);
        println!("{text}");
        assert!(checked.status.success(), "{name}: onnx checker:\n{text}");

        let ort = OrtQwenVlBackend::open(d16.path(), &SessionConfig::default())?;
        let (image_pad, video_pad) = ort.media_token_ids();
        let tokenizer = PromptTokenizer::load_qwen_vl(d16.path(), image_pad, video_pad)?;
        let processor = QwenVlProcessor::from_model_dir(d16.path())?;
        for case in g.cases.iter().chain(&g.video_cases) {
            let media = encoded(&ort, &processor, case)?;
            let prompt = raw_prompt(
                &ort,
                &tokenizer,
                case["prompt"].as_str().unwrap_or_default(),
                &media,
            )?;
            let got = ort.prompt_continuations_batch(
                std::slice::from_ref(&prompt),
                &[vec![completion(&g, case)?]],
            )?[0][0]
                .total();
            let want = case["completion_logprob"].as_f64().unwrap_or(f64::NAN);
            let rel = (got - want).abs() / want.abs();
            println!(
                "{name} fp16 {}: {got:.6} vs {want:.6} ({rel:.1e})",
                case["name"]
            );
            assert!(rel < 2f64.powi(-11), "{name} fp16 {}: {rel}", case["name"]);
        }
        let gen = &g.generation;
        let media = encoded(&ort, &processor, gen)?;
        let prompt = raw_prompt(
            &ort,
            &tokenizer,
            gen["prompt"].as_str().unwrap_or_default(),
            &media,
        )?;
        let max_new = gen["max_new_tokens"].as_u64().unwrap_or(24) as usize;
        let tokens = ort.generate_after(&prompt, max_new, &[IM_END])?;
        let want: Vec<u32> = serde_json::from_value(gen["tokens"].clone())?;
        assert_eq!(tokens, want, "{name} fp16 greedy generation");
    }
    Ok(())
}

fn engine_score(model: &Path, input: &Path, out: &Path, extra: &[&str]) -> Result<Vec<Value>> {
    let status = Command::new(engine_bin()?)
        .args(["score", "--model"])
        .arg(model)
        .arg("--batch")
        .arg(input)
        .arg("--out")
        .arg(out)
        .args(extra)
        .status()?;
    let answers: Vec<Value> = std::fs::read_to_string(out)?
        .lines()
        .map(serde_json::from_str)
        .collect::<std::result::Result<_, _>>()?;
    assert!(status.success(), "engine score {model:?}: {answers:?}");
    Ok(answers)
}

/// Every number of a record (scores, probabilities, per-dimension values), by its path.
fn numbers(v: &Value, path: String, out: &mut Vec<(String, f64)>) {
    match v {
        Value::Number(n) => out.push((path, n.as_f64().unwrap_or(f64::NAN))),
        Value::Object(m) => {
            for (k, x) in m {
                numbers(x, format!("{path}.{k}"), out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                numbers(x, format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// `engine score` in fast mode on an export answers as on the checkpoint (candle): point
/// scores of a 1920x1080 image, image pairs, a pair of videos, an understanding record; for
/// Qwen3-VL the 2.0 prompts with a video as sampled frames.
#[test]
fn engine_score_on_qwen_exports_answers_as_candle_does() -> Result<()> {
    let img = |k: &str| media_dir().join(format!("{k}.png"));
    let clip = |k: &str| media_dir().join(k);
    let runs: [(&str, &str, Vec<Value>, &[&str]); 2] = [
        (
            "qwen2_5_vl",
            "qwen2_5_vl_3b",
            vec![
                json!({"id": "gen-point", "task": "image_generation", "mode": "point",
                       "prompt": "a yellow star", "images": [img("1920x1080")]}),
                json!({"id": "gen-pair", "task": "image_generation", "mode": "pair",
                       "prompt": "a yellow star", "images": [img("300x200"), img("40x30")]}),
                json!({"id": "video-pair", "task": "video_generation", "mode": "pair",
                       "prompt": "a yellow square moving",
                       "videos": [clip("clip_300x200"), clip("clip_640x360")]}),
                json!({"id": "und-point", "task": "image_understanding", "mode": "point",
                       "prompt": "What is drawn?", "images": [img("300x200")],
                       "answers": ["Triangles."]}),
            ],
            &[],
        ),
        (
            "qwen3_vl",
            "qwen3_vl_4b",
            vec![
                json!({"id": "gen-point", "task": "image_generation", "mode": "point",
                       "prompt": "a yellow star", "images": [img("1920x1080")]}),
                json!({"id": "gen-pair", "task": "image_generation", "mode": "pair",
                       "prompt": "a yellow star", "images": [img("300x200"), img("40x30")]}),
                json!({"id": "video", "task": "video_generation", "mode": "point",
                       "prompt": "a yellow square moving", "videos": [clip("clip_640x360")]}),
            ],
            &["--template-family", "2.0", "--frames", "4"],
        ),
    ];
    for (family, name, lines, extra) in runs {
        let g = golden(family, name)?;
        let dir = tempfile::tempdir()?;
        let exported = dir.path().join("export");
        export_onnx(&g.dir.join("model"), &exported, &ExportOptions::default())?;
        let input = dir.path().join("in.jsonl");
        let text: Vec<String> = lines.iter().map(Value::to_string).collect();
        std::fs::write(&input, text.join("\n") + "\n")?;
        let ort = engine_score(&exported, &input, &dir.path().join("ort.jsonl"), extra)?;
        let candle = engine_score(
            &g.dir.join("model"),
            &input,
            &dir.path().join("candle.jsonl"),
            extra,
        )?;
        assert_eq!(ort.len(), lines.len());
        for (o, c) in ort.iter().zip(&candle) {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            numbers(o, String::new(), &mut a);
            numbers(c, String::new(), &mut b);
            assert!(!a.is_empty(), "{name}: {o}");
            assert_eq!(
                a.iter().map(|x| &x.0).collect::<Vec<_>>(),
                b.iter().map(|x| &x.0).collect::<Vec<_>>(),
                "{name}: {o} vs {c}"
            );
            let worst = a
                .iter()
                .zip(&b)
                .map(|((_, x), (_, y))| (x - y).abs())
                .fold(0.0, f64::max);
            println!(
                "{name} {}: ort vs candle {worst:.2e} over {} numbers",
                o["id"],
                a.len()
            );
            assert!(worst < 1e-4, "{name}: {o} vs {c}");
        }
    }
    Ok(())
}

/// `engine serve` on a Qwen2.5-VL export, a 1920x1080 image in the request: a chat completion
/// generates what `engine score --judge generate` generates on the checkpoint (candle), and
/// `/v1/score` in fast mode answers as `engine score` there.
#[test]
fn engine_serve_on_a_qwen_export_answers_as_candle_does() -> Result<()> {
    let g = golden("qwen2_5_vl", "qwen2_5_vl_3b")?;
    let dir = tempfile::tempdir()?;
    let exported = dir.path().join("export");
    export_onnx(&g.dir.join("model"), &exported, &ExportOptions::default())?;
    let mut command = Command::new(engine_bin()?);
    command
        .args(["serve", "--model"])
        .arg(&exported)
        .args([
            "--port",
            "0",
            "--max-new-tokens",
            "24",
            "--allowed-media-dir",
        ])
        .arg(media_dir())
        .stderr(std::process::Stdio::inherit());
    let server = unireward_tests::http::ServerProcess::spawn(command)?;

    let caption = "a yellow star";
    let record = json!({"id": "big", "task": "image_generation", "mode": "point",
                        "prompt": caption, "images": [media_dir().join("1920x1080.png")]});
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, record.to_string() + "\n")?;
    let generate = ["--judge", "generate", "--max-new-tokens", "24"];
    let status = Command::new(engine_bin()?)
        .args(["score", "--model"])
        .arg(g.dir.join("model"))
        .arg("--batch")
        .arg(&input)
        .arg("--out")
        .arg(dir.path().join("gen.jsonl"))
        .args(generate)
        .status()?;
    // The tiny model's answer holds no score: the record is an error quoting what it wrote.
    assert_eq!(status.code(), Some(1));
    let cli: Value =
        serde_json::from_str(std::fs::read_to_string(dir.path().join("gen.jsonl"))?.trim())?;
    let served = server.post("/v1/score?judge=generate", &json!([record]))?;
    assert_eq!(served.status, 200, "{}", served.body);
    assert_eq!(served.json()?, json!([cli]), "generate mode");

    let candle = engine_score(
        &g.dir.join("model"),
        &input,
        &dir.path().join("fast.jsonl"),
        &[],
    )?;
    let fast = server.post("/v1/score", &json!([record]))?;
    assert_eq!(fast.status, 200, "{}", fast.body);
    let fast = fast.json()?;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    numbers(&fast[0], String::new(), &mut a);
    numbers(&candle[0], String::new(), &mut b);
    assert!(!a.is_empty() && a.len() == b.len(), "{fast} vs {candle:?}");
    let worst = a
        .iter()
        .zip(&b)
        .map(|((_, x), (_, y))| (x - y).abs())
        .fold(0.0, f64::max);
    println!("serve (ort) vs engine score (candle), 1920x1080: {worst:.2e}");
    assert!(worst < 1e-4, "{fast} vs {candle:?}");

    // A chat completion as MixGRPO's client sends it: the image by path, then the question.
    let chat = json!({"model": "UnifiedReward", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "1920x1080.png"}},
        {"type": "text", "text": "Describe the image."},
    ]}], "temperature": 0, "max_tokens": 24});
    let reply = server.post("/v1/chat/completions", &chat)?;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let usage = &reply.json()?["usage"];
    // 1920x1080 is 2691 merged tokens after smart_resize, plus the question.
    assert!(
        usage["prompt_tokens"].as_u64().unwrap_or(0) > 2691,
        "{usage}"
    );
    Ok(())
}
