//! Qwen-VL videos against qwen-vl-utils and transformers (made by
//! `scripts/golden/make_qwen3_vl_video.py`):
//! - `fixtures/qwen2_5_vl/video_sampling.json`: how qwen_vl_utils samples a video *file*
//!   (`smart_nframes`, torch's float32 linspace rounded, `sample_fps`) and sizes its clip, as
//!   pure functions.
//! - `fixtures/qwen3_vl/*/video_item_cases.json`: Qwen3-VL video items (an 8-frame 300x200 clip, a
//!   5-frame 640x360 one padded to 6, an image next to a video, and a 20-frame video file at
//!   10 fps): pixel values bit for bit, input ids with each temporal patch's
//!   `<t.t seconds><|vision_start|>...<|vision_end|>`, M-RoPE positions, merged and deep-stack
//!   video features, logits (1e-4), completion log-probs (1e-3).
//!
//! The video file is decoded by a stand-in `ffmpeg` (`unireward_tests::fake_ffmpeg`: a shell
//! script that prints the decoded frames as PPM and a stream listing in ffmpeg's format); the
//! reference decoded the same frames through qwen_vl_utils' decord reader on a stand-in
//! `decord`. What a real ffmpeg prints is not checked here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use serde_json::Value;
use sha2::{Digest, Sha256};
use unireward_models::pack::{merge_deepstack, merge_media, EncodedMedia};
use unireward_models::preprocess::qwen_vl_video::{clip_size, sample_file_frames, smart_nframes};
use unireward_models::preprocess::{load_image, QwenVlProcessor, QwenVlProcessorConfig};
use unireward_models::qwen2_5_vl::{QwenMedia, QwenVideo, QwenVision};
use unireward_models::qwen3_vl::Qwen3Vl;
use unireward_models::tokenize::PromptTokenizer;
use unireward_tests::fake_ffmpeg::fake_ffmpeg;

const LOGIT_TOL: f32 = 1e-4;
const LOGPROB_TOL: f64 = 1e-3;
/// The vision features are compared as the image features are in `qwen3_vl.rs`.
const FEATURE_TOL: f32 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

fn media_dir() -> PathBuf {
    fixtures().join("qwen2_5_vl/media")
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn file_sampling_matches_qwen_vl_utils() {
    let g = json(&fixtures().join("qwen2_5_vl/video_sampling.json"));
    for c in g["cases"].as_array().unwrap() {
        let total = c["total_frames"].as_u64().unwrap() as usize;
        let fps = c["video_fps"].as_f64().unwrap();
        let Some(n) = c["nframes"].as_u64() else {
            assert!(
                smart_nframes(total, fps).is_err(),
                "{total} frames: should fail"
            );
            continue;
        };
        assert_eq!(
            smart_nframes(total, fps).unwrap(),
            n as usize,
            "{total}@{fps}"
        );
        let (indices, sample_fps) = sample_file_frames(total, fps).unwrap();
        let want: Vec<usize> = c["indices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(indices, want, "{total}@{fps} indices");
        assert_eq!(
            sample_fps,
            c["sample_fps"].as_f64().unwrap(),
            "{total}@{fps}"
        );
    }
    for c in g["sizes"].as_array().unwrap() {
        let u = |k: &str| c[k].as_u64().unwrap();
        let got = clip_size(
            u("height") as u32,
            u("width") as u32,
            u("nframes") as usize,
            u("factor") as u32,
        )
        .unwrap();
        let want = &c["resized"];
        assert_eq!(
            [got.0 as u64, got.1 as u64],
            [want[0].as_u64().unwrap(), want[1].as_u64().unwrap()],
            "{c}"
        );
    }
}

struct Golden {
    model_dir: PathBuf,
    json: Value,
    tensors: HashMap<String, Tensor>,
}

fn golden(name: &str) -> Golden {
    let dir = fixtures().join("qwen3_vl").join(name);
    Golden {
        model_dir: dir.join("model"),
        json: json(&dir.join("video_item_cases.json")),
        tensors: candle_core::safetensors::load(
            dir.join("expected_video_items.safetensors"),
            &Device::Cpu,
        )
        .unwrap(),
    }
}

impl Golden {
    fn t(&self, case: &str, name: &str) -> &Tensor {
        let key = format!("{case}.{name}");
        self.tensors.get(&key).unwrap_or_else(|| panic!("no {key}"))
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a.to_dtype(DType::F32).unwrap() - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn sha(t: &Tensor) -> String {
    let bytes: Vec<u8> = t
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    format!("{:x}", Sha256::digest(&bytes))
}

/// A case's media read as `engine logprob` reads them: frame lists through the processor's
/// list branch, the video file through the stand-in ffmpeg.
fn case_media(g: &Golden, case: &Value, proc: &QwenVlProcessor, tmp: &Path) -> QwenMedia {
    let images = case["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let img = load_image(media_dir().join(i.as_str().unwrap())).unwrap();
            proc.preprocess_torchvision(&img).unwrap()
        })
        .collect();
    let videos = case["videos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| match v {
            Value::Array(frames) => {
                let frames: Vec<_> = frames
                    .iter()
                    .map(|f| proc.rgb(&load_image(media_dir().join(f.as_str().unwrap())).unwrap()))
                    .collect();
                QwenVideo::Item(proc.preprocess_frames(&frames).unwrap())
            }
            _ => {
                let (ffmpeg, clip) = file_video(&g.json, tmp);
                QwenVideo::Item(proc.preprocess_file(&clip, Some(&ffmpeg)).unwrap())
            }
        })
        .collect();
    QwenMedia { images, videos }
}

#[test]
fn qwen3_vl_video_items_match_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["qwen3_vl_4b", "qwen3_vl_8b"] {
        let g = golden(name);
        let proc = QwenVlProcessor::from_model_dir(&g.model_dir).unwrap();
        assert_eq!(proc.video_clip_pixels, Some((4096, 25165824)));
        let tok = PromptTokenizer::load_qwen_vl(&g.model_dir, 151655, 151656).unwrap();
        let model = Qwen3Vl::load(&g.model_dir, DType::F32, &Device::Cpu).unwrap();
        for case in g.json["cases"].as_array().unwrap() {
            let cname = case["name"].as_str().unwrap();
            let media = case_media(&g, case, &proc, tmp.path());
            // Pixels and grids, per video.
            let grids = g.t(cname, "video_grid_thw").to_vec2::<i64>().unwrap();
            for (i, v) in media.videos.iter().enumerate() {
                let QwenVideo::Item(v) = v else {
                    unreachable!()
                };
                let (t, h, w) = v.pixels.grid_thw;
                assert_eq!([t as i64, h as i64, w as i64], grids[i][..], "{cname} grid");
                let head = g.t(cname, &format!("pixel_values_head{i}"));
                let diff = max_diff(&v.pixels.pixel_values.i(0..4).unwrap(), head);
                assert_eq!(
                    sha(&v.pixels.pixel_values),
                    case["pixel_values_sha256"][i].as_str().unwrap(),
                    "{name} {cname}: pixel values differ (first rows by up to {diff})"
                );
            }
            let encoded: EncodedMedia = media.encoded(&model as &dyn QwenVision).unwrap();
            if let Some(want) = g.tensors.get(&format!("{cname}.video_features0")) {
                let features = encoded.clone().into_features();
                assert_eq!(
                    features.videos.len(),
                    4,
                    "one feature run per temporal patch"
                );
                let merged = Tensor::cat(&features.videos, 0).unwrap();
                let d = max_diff(&merged, want);
                println!("{name} {cname}: video features max diff {d:.2e}");
                assert!(d < FEATURE_TOL, "{cname}: video features differ by {d}");
                for (l, level) in features.deepstack.iter().enumerate() {
                    let got = Tensor::cat(&level.videos, 0).unwrap();
                    let d = max_diff(&got, g.t(cname, &format!("deepstack{l}_features0")));
                    assert!(d < FEATURE_TOL, "{cname}: deep-stack {l} differs by {d}");
                }
            }
            // In marker order, as `engine logprob` takes a raw prompt's media.
            let features = encoded.into_features();
            let (image_lens, video_pads) = features.pads().unwrap();
            let prompt = case["prompt"].as_str().unwrap();
            let text = format!("{prompt}{}", case["completion"].as_str().unwrap());
            let tokens = tok.encode_videos(&text, &image_lens, &video_pads).unwrap();
            let want_ids: Vec<u32> = g
                .t(cname, "input_ids")
                .to_vec1::<i64>()
                .unwrap()
                .into_iter()
                .map(|i| i as u32)
                .collect();
            assert_eq!(tokens.ids, want_ids, "{name} {cname} ids");
            let prompt_len = tok
                .encode_videos(prompt, &image_lens, &video_pads)
                .unwrap()
                .ids
                .len();
            assert_eq!(prompt_len as u64, case["prompt_len"].as_u64().unwrap());
            let pos = model
                .positions(&tokens, &features.image_grids, &features.video_grids)
                .unwrap();
            let want = g.t(cname, "position_ids").to_vec2::<i64>().unwrap();
            for (a, axis) in pos.axes.iter().enumerate() {
                let got: Vec<i64> = axis.iter().map(|&p| p as i64).collect();
                assert_eq!(got, want[a], "{name} {cname} positions axis {a}");
            }
            let ids = Tensor::new(tokens.ids.as_slice(), &Device::Cpu).unwrap();
            let text_embeds = model.decoder().embed(&ids).unwrap();
            let embeds = merge_media(&text_embeds, &tokens, &features)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let deepstack: Vec<Tensor> = merge_deepstack(&text_embeds, &tokens, &features)
                .unwrap()
                .into_iter()
                .map(|l| l.unsqueeze(0).unwrap())
                .collect();
            let hidden = model
                .hidden_states(
                    &embeds,
                    &deepstack,
                    &pos.to_tensor(&Device::Cpu).unwrap(),
                    None,
                    None,
                )
                .unwrap();
            let n = tokens.ids.len();
            let logits = model
                .logits(&hidden.i((0, prompt_len - 1..n - 1)).unwrap())
                .unwrap();
            let want = g.t(cname, "logits_cols");
            let cols = want.dim(1).unwrap();
            let d = max_diff(&logits.narrow(1, 0, cols).unwrap(), want);
            let logp =
                candle_nn::ops::log_softmax(&logits.to_dtype(DType::F64).unwrap(), 1).unwrap();
            let targets = Tensor::new(&tokens.ids[prompt_len..], &Device::Cpu)
                .unwrap()
                .unsqueeze(1)
                .unwrap();
            let total: f64 = logp
                .gather(&targets, 1)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            let dl = (total - case["completion_logprob"].as_f64().unwrap()).abs();
            println!("{name} {cname}: logits max diff {d:.2e}, completion log-prob diff {dl:.2e}");
            assert!(d < LOGIT_TOL, "{name} {cname}: logits differ by {d}");
            assert!(dl < LOGPROB_TOL, "{name} {cname}: log-prob differs by {dl}");
        }
    }
}

#[test]
fn a_video_file_without_ffmpeg_names_the_file_and_the_cause() {
    let tmp = tempfile::tempdir().unwrap();
    let clip = tmp.path().join("clip.mp4");
    std::fs::write(&clip, b"x").unwrap();
    let proc = QwenVlProcessor::new(QwenVlProcessorConfig::default());
    let err = proc.preprocess_file(&clip, None).unwrap_err().to_string();
    assert!(
        err.contains("clip.mp4") && err.contains("`ffmpeg` was not found on PATH"),
        "{err}"
    );
}

#[test]
fn a_clip_the_video_processor_would_resize_again_is_refused() {
    let mut proc = QwenVlProcessor::new(QwenVlProcessorConfig::default());
    let frame = image::RgbImage::from_pixel(300, 200, image::Rgb([10, 20, 30]));
    assert!(proc
        .preprocess_frames(&[frame.clone(), frame.clone()])
        .is_ok());
    proc.video_clip_pixels = Some((4096, 100_000));
    let err = proc
        .preprocess_frames(&[frame.clone(), frame])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("outside the video processor's 4096..=100000"),
        "{err}"
    );
}

/// The stand-in ffmpeg in `dir` for the file recorded in a golden's `file_video`, and a
/// placeholder file for it to "decode".
fn file_video(g: &Value, dir: &Path) -> (PathBuf, PathBuf) {
    let file = &g["file_video"];
    let frames = media_dir().join(file["frames"].as_str().unwrap());
    let fps = file["fps"].as_f64().unwrap().to_string();
    let ffmpeg = fake_ffmpeg(dir, &frames, &fps).unwrap();
    let clip = dir.join("clip.mp4");
    std::fs::write(&clip, b"decoded by the stand-in ffmpeg").unwrap();
    (ffmpeg, clip)
}

#[test]
fn qwen2_5_vl_video_file_matches_qwen_vl_utils_and_the_processor() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["qwen2_5_vl_3b", "qwen2_5_vl_7b"] {
        let dir = fixtures().join("qwen2_5_vl").join(name);
        let g = json(&dir.join("video_file_cases.json"));
        let (ffmpeg, clip) = file_video(&g, tmp.path());
        let proc = QwenVlProcessor::from_model_dir(&dir.join("model")).unwrap();
        let v = proc.preprocess_file(&clip, Some(&ffmpeg)).unwrap();
        let case = &g["cases"][0];
        let (t, h, w) = v.pixels.grid_thw;
        let want: Vec<u64> = case["video_grid_thw"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        assert_eq!(vec![t as u64, h as u64, w as u64], want, "{name} grid");
        assert_eq!(
            v.second_per_grid,
            case["second_per_grid_ts"][0].as_f64().unwrap(),
            "{name} timing"
        );
        assert_eq!(
            sha(&v.pixels.pixel_values),
            case["pixel_values_sha256"].as_str().unwrap(),
            "{name} pixels"
        );
    }
}
