//! Qwen3-VL (dense) against Hugging Face transformers (`fixtures/qwen3_vl`, made by
//! `scripts/golden/make_qwen3_vl.py`): the processor's pixels bit for bit, input ids with
//! `<|image_pad|>` expanded, M-RoPE positions, merged and deep-stack vision features, logits
//! (1e-4), completion log-probs (1e-3) and greedy generation with the KV cache, on a 1920x1080,
//! a 300x200 and a 40x30 image; one checkpoint sharded, both bf16.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use serde_json::Value;
use sha2::{Digest, Sha256};
use unireward_models::preprocess::{
    load_image, QwenVlPixels, QwenVlProcessor, QwenVlProcessorConfig,
};
use unireward_models::qwen2_5_vl::continuation_positions;
use unireward_models::qwen2_5_vl::QwenVisionFeatures;
use unireward_models::qwen3_vl::Qwen3Vl;
use unireward_models::tokenize::{PromptTokenizer, Tokenized};

const LOGIT_TOL: f32 = 1e-4;
const LOGPROB_TOL: f64 = 1e-3;
const SPECIALS_START: usize = 151643;
const IM_END: u32 = 151645;
const IMAGE_PAD: u32 = 151655;
const VIDEO_PAD: u32 = 151656;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/qwen3_vl")
}

struct Golden {
    model_dir: PathBuf,
    media: PathBuf,
    cases: Vec<Value>,
    generation: Value,
    tensors: HashMap<String, Tensor>,
}

fn golden(name: &str) -> Golden {
    let dir = root().join(name);
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    Golden {
        model_dir: dir.join("model"),
        media: dir.join(json["media"].as_str().unwrap()),
        cases: json["cases"].as_array().unwrap().clone(),
        generation: json["generation"].clone(),
        tensors: candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu)
            .unwrap(),
    }
}

impl Golden {
    fn t(&self, case: &str, name: &str) -> &Tensor {
        self.tensors
            .get(&format!("{case}.{name}"))
            .unwrap_or_else(|| panic!("no {case}.{name}"))
    }

    fn processor(&self) -> QwenVlProcessor {
        QwenVlProcessor::new(
            QwenVlProcessorConfig::from_file(self.model_dir.join("preprocessor_config.json"))
                .unwrap(),
        )
    }

    fn images(&self, case: &Value) -> Vec<QwenVlPixels> {
        let proc = self.processor();
        case["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                let img = load_image(self.media.join(f.as_str().unwrap())).unwrap();
                proc.preprocess(&img).unwrap()
            })
            .collect()
    }

    fn images_pillow(&self, case: &Value) -> Vec<QwenVlPixels> {
        let proc = self.processor();
        case["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                let img = load_image(self.media.join(f.as_str().unwrap())).unwrap();
                proc.preprocess_pillow(&img).unwrap()
            })
            .collect()
    }

    /// The prompt's and the whole text's tokens, image spans expanded to their merged counts.
    fn tokenize(&self, case: &Value, imgs: &[QwenVlPixels]) -> (Tokenized, usize) {
        let tok = PromptTokenizer::load_qwen_vl(&self.model_dir, IMAGE_PAD, VIDEO_PAD).unwrap();
        let lens: Vec<usize> = imgs.iter().map(|p| p.num_tokens(2)).collect();
        let prompt = case["prompt"].as_str().unwrap();
        let text = format!("{prompt}{}", case["completion"].as_str().unwrap_or(""));
        let full = tok.encode(&text, &lens, &[]).unwrap();
        let prompt_len = tok.encode(prompt, &lens, &[]).unwrap().ids.len();
        (full, prompt_len)
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn processor_pixels_are_bit_equal_and_grids_equal() {
    let g = golden("qwen3_vl_4b");
    let mut checked = 0;
    for case in &g.cases {
        let name = case["name"].as_str().unwrap();
        let imgs = g.images(case);
        if imgs.is_empty() {
            continue;
        }
        let grids = g.t(name, "image_grid_thw").to_vec2::<i64>().unwrap();
        // The config names the torchvision backend (`Qwen2VLImageProcessorFast`), which
        // `preprocess` follows and the references were computed from.
        let hashes = case["pixel_values_sha256_torchvision"].as_array().unwrap();
        for (i, px) in imgs.iter().enumerate() {
            let (t, h, w) = px.grid_thw;
            assert_eq!(grids[i], [t as i64, h as i64, w as i64], "{name} image {i}");
            assert_eq!(
                px.pixel_values
                    .narrow(0, 0, 4)
                    .unwrap()
                    .to_vec2::<f32>()
                    .unwrap(),
                g.t(name, &format!("pixel_values_head{i}"))
                    .to_vec2::<f32>()
                    .unwrap(),
                "{name} image {i}: first patches"
            );
            let values = px
                .pixel_values
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            let digest = format!("{:x}", Sha256::digest(&bytes));
            assert_eq!(
                digest,
                hashes[i].as_str().unwrap(),
                "{name} image {i}: pixel bytes"
            );
            checked += 1;
        }
    }
    // 1920x1080, 300x200 twice (alone and in the pair), 40x30.
    assert_eq!(checked, 4);
}

fn sha256_of(px: &QwenVlPixels) -> String {
    let values = px
        .pixel_values
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    format!("{:x}", Sha256::digest(&bytes))
}

/// The Pillow backend (`Qwen2VLImageProcessor`, what a config naming the slow processor loads)
/// differs from the torchvision one on every image; its pixels are bit-equal too.
#[test]
fn pillow_backend_pixels_are_bit_equal() {
    let g = golden("qwen3_vl_4b");
    let mut checked = 0;
    for case in &g.cases {
        let name = case["name"].as_str().unwrap();
        let hashes = case["pixel_values_sha256"].as_array();
        for (i, px) in g.images_pillow(case).iter().enumerate() {
            let want = hashes.unwrap()[i].as_str().unwrap();
            assert_eq!(sha256_of(px), want, "{name} image {i}: Pillow pixel bytes");
            assert_ne!(
                want,
                case["pixel_values_sha256_torchvision"][i].as_str().unwrap(),
                "{name} image {i}: the backends agree here"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 4);
}

#[test]
fn input_ids_and_positions_match_the_processor_and_get_rope_index() {
    let g = golden("qwen3_vl_4b");
    let model = Qwen3Vl::load(&g.model_dir, DType::F32, &Device::Cpu).unwrap();
    for case in &g.cases {
        let name = case["name"].as_str().unwrap();
        let imgs = g.images(case);
        let (tokens, prompt_len) = g.tokenize(case, &imgs);
        let want_ids: Vec<u32> = g
            .t(name, "input_ids")
            .to_vec1::<i64>()
            .unwrap()
            .into_iter()
            .map(|i| i as u32)
            .collect();
        assert_eq!(tokens.ids, want_ids, "{name}");
        assert_eq!(prompt_len as u64, case["prompt_len"].as_u64().unwrap());
        if imgs.is_empty() {
            continue;
        }
        let grids: Vec<_> = imgs.iter().map(|p| model.image_grid(p)).collect();
        let pos = model.positions(&tokens, &grids, &[]).unwrap();
        let want = g.t(name, "position_ids").to_vec2::<i64>().unwrap();
        for (axis, (got, want)) in pos.axes.iter().zip(&want).enumerate() {
            let want: Vec<u32> = want.iter().map(|&v| v as u32).collect();
            assert_eq!(got, &want, "{name} axis {axis}");
        }
    }
}

fn features(model: &Qwen3Vl, imgs: &[QwenVlPixels]) -> Vec<QwenVisionFeatures> {
    model
        .image_features(&imgs.iter().collect::<Vec<_>>())
        .unwrap()
}

/// Every case's features, logits and completion log-prob; returns the largest logit gap.
fn check_checkpoint(name: &str) -> f32 {
    let g = golden(name);
    let model = Qwen3Vl::load(&g.model_dir, DType::F32, &Device::Cpu).unwrap();
    let mut worst = 0f32;
    for case in &g.cases {
        let cname = case["name"].as_str().unwrap();
        let imgs = g.images(case);
        let (tokens, prompt_len) = g.tokenize(case, &imgs);
        let feats = features(&model, &imgs);
        for (i, f) in feats.iter().enumerate() {
            if let Some(want) = g.tensors.get(&format!("{cname}.image_features{i}")) {
                let d = max_abs_diff(&f.merged, want);
                assert!(d < LOGIT_TOL, "{name} {cname} image {i} features: {d}");
                for (j, level) in f.deepstack.iter().enumerate() {
                    let want = g.t(cname, &format!("deepstack{j}_features{i}"));
                    let d = max_abs_diff(level, want);
                    assert!(
                        d < LOGIT_TOL,
                        "{name} {cname} image {i} deep-stack {j}: {d}"
                    );
                }
            }
        }
        let grids: Vec<_> = imgs.iter().map(|p| model.image_grid(p)).collect();
        let pos = model.positions(&tokens, &grids, &[]).unwrap();
        let inputs = model.inputs(&tokens, &feats).unwrap();
        let embeds = inputs.embeds.unsqueeze(0).unwrap();
        let deepstack: Vec<Tensor> = inputs
            .deepstack
            .iter()
            .map(|l| l.unsqueeze(0).unwrap())
            .collect();
        let n = tokens.ids.len();
        let rows: Vec<u32> = (prompt_len as u32 - 1..n as u32).collect();
        let rows_t = Tensor::new(rows.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let hidden = model
            .hidden_states(
                &embeds,
                &deepstack,
                &pos.to_tensor(&Device::Cpu).unwrap(),
                None,
                Some(&rows_t),
            )
            .unwrap();
        let logits = model.logits(&hidden).unwrap().i(0).unwrap();
        let k = rows.len() - 1;
        let comp = logits.narrow(0, 0, k).unwrap();
        let cols = g.t(cname, "logits_cols");
        let d = max_abs_diff(&comp.narrow(1, 0, cols.dim(1).unwrap()).unwrap(), cols);
        assert!(d < LOGIT_TOL, "{name} {cname} logits: {d}");
        worst = worst.max(d);
        let specials = g.t(cname, "logits_specials");
        let d = max_abs_diff(
            &comp
                .narrow(1, SPECIALS_START, specials.dim(1).unwrap())
                .unwrap(),
            specials,
        );
        assert!(d < LOGIT_TOL, "{name} {cname} special-token logits: {d}");
        let want_last = g.t(cname, "last_logits_cols");
        let d = max_abs_diff(
            &logits
                .i(k)
                .unwrap()
                .narrow(0, 0, want_last.dim(0).unwrap())
                .unwrap(),
            want_last,
        );
        assert!(d < LOGIT_TOL, "{name} {cname} last logits: {d}");

        // Completion log-prob in f64 from the f32 logits.
        let rows_f64 = comp.to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap();
        let want_lse = g.t(cname, "logsumexp").to_vec1::<f32>().unwrap();
        let mut total = 0.0;
        for (j, row) in rows_f64.iter().enumerate() {
            let lse = row.iter().map(|v| v.exp()).sum::<f64>().ln();
            assert!(
                (lse - want_lse[j] as f64).abs() < LOGIT_TOL as f64,
                "{name} {cname} lse {j}"
            );
            total += row[tokens.ids[prompt_len + j] as usize] - lse;
        }
        let want = case["completion_logprob"].as_f64().unwrap();
        assert!(
            (total - want).abs() < LOGPROB_TOL,
            "{name} {cname} completion log-prob {total} vs {want}"
        );
        eprintln!(
            "{name} {cname}: {n} tokens, completion log-prob {total:.6} (transformers {want:.6})"
        );
    }
    worst
}

#[test]
fn tied_sharded_4b_checkpoint_matches_transformers() {
    let worst = check_checkpoint("qwen3_vl_4b");
    eprintln!("qwen3_vl_4b: largest logit gap {worst:e}");
}

#[test]
fn untied_8b_checkpoint_matches_transformers() {
    let worst = check_checkpoint("qwen3_vl_8b");
    eprintln!("qwen3_vl_8b: largest logit gap {worst:e}");
}

#[test]
fn greedy_generation_with_the_cache_matches_generate() {
    for name in ["qwen3_vl_4b", "qwen3_vl_8b"] {
        let g = golden(name);
        let model = Qwen3Vl::load(&g.model_dir, DType::F32, &Device::Cpu).unwrap();
        let gen = &g.generation;
        let imgs = g.images(gen);
        let (tokens, _) = g.tokenize(gen, &imgs);
        let feats = features(&model, &imgs);
        let grids: Vec<_> = imgs.iter().map(|p| model.image_grid(p)).collect();
        let pos = model.positions(&tokens, &grids, &[]).unwrap();
        let inputs = model.inputs(&tokens, &feats).unwrap();
        let deepstack: Vec<Tensor> = inputs
            .deepstack
            .iter()
            .map(|l| l.unsqueeze(0).unwrap())
            .collect();
        let mut cache = model.new_cache();
        let hidden = model
            .hidden_states(
                &inputs.embeds.unsqueeze(0).unwrap(),
                &deepstack,
                &pos.to_tensor(&Device::Cpu).unwrap(),
                Some(&mut cache),
                None,
            )
            .unwrap();
        let n = tokens.ids.len();
        let mut next = argmax(&model.logits(&hidden.narrow(1, n - 1, 1).unwrap()).unwrap());
        let mut out = Vec::new();
        let max_new = gen["max_new_tokens"].as_u64().unwrap() as usize;
        while out.len() < max_new {
            out.push(next);
            if next == IM_END {
                break;
            }
            let positions =
                continuation_positions(1, 1, cache.len(), pos.delta, &Device::Cpu).unwrap();
            let emb = model
                .decoder()
                .embed(&Tensor::new(&[[next]], &Device::Cpu).unwrap())
                .unwrap();
            let h = model
                .hidden_states(&emb, &[], &positions, Some(&mut cache), None)
                .unwrap();
            next = argmax(&model.logits(&h).unwrap());
        }
        let want: Vec<u32> = gen["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(out, want, "{name}");
    }
}

#[test]
fn bf16_load_runs_and_stays_near_the_f32_logits() {
    let g = golden("qwen3_vl_8b");
    let case = &g.cases[2];
    let imgs = g.images(case);
    let (tokens, _) = g.tokenize(case, &imgs);
    let mut last = Vec::new();
    for dtype in [DType::F32, DType::BF16] {
        let model = Qwen3Vl::load(&g.model_dir, dtype, &Device::Cpu).unwrap();
        assert_eq!(model.dtype(), dtype);
        let feats = features(&model, &imgs);
        let grids: Vec<_> = imgs.iter().map(|p| model.image_grid(p)).collect();
        let pos = model.positions(&tokens, &grids, &[]).unwrap();
        let inputs = model.inputs(&tokens, &feats).unwrap();
        let deepstack: Vec<Tensor> = inputs
            .deepstack
            .iter()
            .map(|l| l.unsqueeze(0).unwrap())
            .collect();
        let hidden = model
            .hidden_states(
                &inputs.embeds.unsqueeze(0).unwrap(),
                &deepstack,
                &pos.to_tensor(&Device::Cpu).unwrap(),
                None,
                None,
            )
            .unwrap();
        let n = tokens.ids.len();
        last.push(
            model
                .logits(&hidden.narrow(1, n - 1, 1).unwrap())
                .unwrap()
                .flatten_all()
                .unwrap(),
        );
    }
    // bf16 arithmetic through 5 vision blocks and 4 decoder layers: a sanity bound, not a
    // conformance tolerance (that is the f32 comparison's 1e-4).
    let d = max_abs_diff(&last[0], &last[1]);
    eprintln!("bf16 vs f32 last-row logits: {d}");
    assert!(d < 0.5, "bf16 logits drift {d}");
}

fn argmax(logits: &Tensor) -> u32 {
    logits
        .flatten_all()
        .unwrap()
        .argmax(0)
        .unwrap()
        .to_scalar::<u32>()
        .unwrap()
}
