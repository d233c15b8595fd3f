//! Qwen2.5-VL videos against qwen-vl-utils and transformers (`fixtures/qwen2_5_vl/*/video_cases.json`,
//! made by `scripts/golden/make_qwen2_5_vl_video.py`): clips of 8 frames of 300x200 (scaled up
//! to the per-frame minimum) and 5 frames of 640x360 (padded to 6), given as frame lists as the
//! `inference_qwen` scripts give them. Pixel values bit for bit, grids and their timing, input
//! ids with `<|video_pad|>` expanded, M-RoPE positions, logits (1e-4).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use serde_json::Value;
use sha2::{Digest, Sha256};
use unireward_models::preprocess::{
    load_image, QwenVlProcessor, QwenVlProcessorConfig, QwenVlVideo,
};
use unireward_models::qwen2_5_vl::Qwen25Vl;
use unireward_models::tokenize::PromptTokenizer;
use unireward_models::MediaFeatures;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/qwen2_5_vl")
}

struct Golden {
    model_dir: PathBuf,
    cases: Vec<Value>,
    tensors: HashMap<String, Tensor>,
}

fn golden(name: &str) -> Golden {
    let dir = root().join(name);
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("video_cases.json")).unwrap())
            .unwrap();
    Golden {
        model_dir: dir.join("model"),
        cases: json["cases"].as_array().unwrap().clone(),
        tensors: candle_core::safetensors::load(
            dir.join("expected_video.safetensors"),
            &Device::Cpu,
        )
        .unwrap(),
    }
}

impl Golden {
    fn t(&self, case: &Value, name: &str) -> &Tensor {
        let key = format!("{}.{name}", case["name"].as_str().unwrap());
        self.tensors.get(&key).unwrap_or_else(|| panic!("no {key}"))
    }
}

fn videos(case: &Value, proc: &QwenVlProcessor) -> Vec<QwenVlVideo> {
    case["videos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|frames| {
            let frames: Vec<_> = frames
                .as_array()
                .unwrap()
                .iter()
                .map(|f| {
                    proc.rgb(&load_image(root().join("media").join(f.as_str().unwrap())).unwrap())
                })
                .collect();
            proc.preprocess_frames(&frames).unwrap()
        })
        .collect()
}

fn ids_of(t: &Tensor) -> Vec<u32> {
    t.to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|i| i as u32)
        .collect()
}

#[test]
fn video_frames_match_qwen_vl_utils_and_the_processor_bit_for_bit() {
    let g = golden("qwen2_5_vl_3b");
    let proc = QwenVlProcessor::new(
        QwenVlProcessorConfig::from_file(g.model_dir.join("preprocessor_config.json")).unwrap(),
    );
    for case in &g.cases {
        let name = case["name"].as_str().unwrap();
        let vids = videos(case, &proc);
        let grids = g.t(case, "video_grid_thw").to_vec2::<i64>().unwrap();
        for (i, v) in vids.iter().enumerate() {
            let (t, h, w) = v.pixels.grid_thw;
            assert_eq!(
                [t as i64, h as i64, w as i64],
                grids[i][..],
                "{name} video {i} grid"
            );
            assert_eq!(
                v.second_per_grid,
                case["second_per_grid_ts"][i].as_f64().unwrap(),
                "{name} video {i} timing"
            );
            let head = g.t(case, &format!("pixel_values_head{i}"));
            let ours = v.pixels.pixel_values.i(0..4).unwrap();
            let diff = (ours - head).unwrap().abs().unwrap().max_all().unwrap();
            let bytes: Vec<u8> = v
                .pixels
                .pixel_values
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect();
            let sha = format!("{:x}", Sha256::digest(&bytes));
            assert_eq!(
                sha,
                case["pixel_values_sha256"][i].as_str().unwrap(),
                "{name} video {i}: pixel values differ (first rows by up to {diff})"
            );
        }
    }
}

#[test]
fn video_prompts_match_input_ids_positions_and_logits() {
    for name in ["qwen2_5_vl_3b", "qwen2_5_vl_7b"] {
        let g = golden(name);
        let proc = QwenVlProcessor::new(
            QwenVlProcessorConfig::from_file(g.model_dir.join("preprocessor_config.json")).unwrap(),
        );
        let tok = PromptTokenizer::load_qwen_vl(&g.model_dir, 151655, 151656).unwrap();
        let model = Qwen25Vl::load(&g.model_dir, DType::F32, &Device::Cpu).unwrap();
        for case in &g.cases {
            let cname = case["name"].as_str().unwrap();
            let vids = videos(case, &proc);
            let lens: Vec<usize> = vids.iter().map(|v| v.pixels.num_tokens(2)).collect();
            let text = format!(
                "{}{}",
                case["prompt"].as_str().unwrap(),
                case["completion"].as_str().unwrap()
            );
            let tokens = tok.encode(&text, &[], &lens).unwrap();
            assert_eq!(
                tokens.ids,
                ids_of(g.t(case, "input_ids")),
                "{name} {cname} ids"
            );
            let grids: Vec<_> = vids.iter().map(|v| model.video_grid(v)).collect();
            let pos = model.positions(&tokens, &[], &grids).unwrap();
            let want = g.t(case, "position_ids").to_vec2::<i64>().unwrap();
            for (a, axis) in pos.axes.iter().enumerate() {
                let got: Vec<i64> = axis.iter().map(|&p| p as i64).collect();
                assert_eq!(got, want[a], "{name} {cname} positions axis {a}");
            }
            let refs: Vec<_> = vids.iter().map(|v| &v.pixels).collect();
            let media = MediaFeatures {
                videos: model.media_features_batch(&refs).unwrap(),
                video_grids: grids,
                ..Default::default()
            };
            let embeds = model.embed(&tokens, &media).unwrap().unsqueeze(0).unwrap();
            let hidden = model
                .hidden_states(&embeds, &pos.to_tensor(&Device::Cpu).unwrap(), None)
                .unwrap();
            let prompt_len = case["prompt_len"].as_u64().unwrap() as usize;
            let n = tokens.ids.len();
            let rows = hidden.i((0, prompt_len - 1..n - 1)).unwrap();
            let logits = model.logits(&rows).unwrap();
            let want = g.t(case, "logits_cols");
            let cols = want.dim(1).unwrap();
            let diff = (logits.narrow(1, 0, cols).unwrap() - want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            println!("{name} {cname}: logits max diff {diff:.2e}");
            assert!(diff < 1e-4, "{name} {cname}: logits differ by {diff}");
        }
    }
}
