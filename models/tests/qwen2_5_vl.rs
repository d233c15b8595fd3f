//! Qwen2.5-VL against Hugging Face transformers (`fixtures/qwen2_5_vl`, made by
//! `scripts/golden/make_qwen2_5_vl.py`): the processor's pixels bit for bit, input ids with
//! `<|image_pad|>` expanded, M-RoPE positions, vision features, logits (1e-4), completion
//! log-probs (1e-3) and greedy generation, on a 1920x1080, a 300x200 and a 40x30 image.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use serde_json::Value;
use sha2::{Digest, Sha256};
use unireward_models::pack::MediaFeatures;
use unireward_models::preprocess::{
    load_image, QwenVlPixels, QwenVlProcessor, QwenVlProcessorConfig,
};
use unireward_models::qwen2_5_vl::{continuation_positions, Qwen25Vl};
use unireward_models::tokenize::{PromptTokenizer, Tokenized};

const LOGIT_TOL: f32 = 1e-4;
const LOGPROB_TOL: f64 = 1e-3;
const SPECIALS_START: usize = 151643;
const IM_END: u32 = 151645;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/qwen2_5_vl")
}

struct Golden {
    model_dir: PathBuf,
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

    fn tokenizer(&self) -> PromptTokenizer {
        PromptTokenizer::load_qwen_vl(&self.model_dir, 151655, 151656).unwrap()
    }
}

fn images(case: &Value, proc: &QwenVlProcessor) -> Vec<QwenVlPixels> {
    case["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let img = load_image(root().join("media").join(f.as_str().unwrap())).unwrap();
            proc.preprocess(&img).unwrap()
        })
        .collect()
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

fn ids_of(t: &Tensor) -> Vec<u32> {
    t.to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|i| i as u32)
        .collect()
}

#[test]
fn processor_pixels_are_bit_equal_and_grids_equal() {
    let g = golden("qwen2_5_vl_3b");
    let proc = g.processor();
    let mut checked = 0;
    for case in &g.cases {
        let name = case["name"].as_str().unwrap();
        let imgs = images(case, &proc);
        if imgs.is_empty() {
            continue;
        }
        let grids = g.t(name, "image_grid_thw").to_vec2::<i64>().unwrap();
        let hashes = case["pixel_values_sha256"].as_array().unwrap();
        for (i, px) in imgs.iter().enumerate() {
            let (t, h, w) = px.grid_thw;
            assert_eq!(grids[i], [t as i64, h as i64, w as i64], "{name} image {i}");
            let values = px
                .pixel_values
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let head = g.t(name, &format!("pixel_values_head{i}"));
            assert_eq!(
                px.pixel_values
                    .narrow(0, 0, 4)
                    .unwrap()
                    .to_vec2::<f32>()
                    .unwrap(),
                head.to_vec2::<f32>().unwrap(),
                "{name} image {i}: first patches"
            );
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

/// The prompt's and the whole text's tokens, media spans expanded to their merged counts.
fn tokenize(g: &Golden, case: &Value, imgs: &[QwenVlPixels]) -> (Tokenized, usize) {
    let tok = g.tokenizer();
    let lens: Vec<usize> = imgs.iter().map(|p| p.num_tokens(2)).collect();
    let prompt = case["prompt"].as_str().unwrap();
    let text = format!("{prompt}{}", case["completion"].as_str().unwrap());
    let full = tok.encode(&text, &lens, &[]).unwrap();
    let prompt_len = tok.encode(prompt, &lens, &[]).unwrap().ids.len();
    (full, prompt_len)
}

#[test]
fn input_ids_and_positions_match_the_processor_and_get_rope_index() {
    let g = golden("qwen2_5_vl_3b");
    let proc = g.processor();
    let model_cfg =
        unireward_models::qwen2_5_vl::Qwen25VlConfig::from_file(&g.model_dir.join("config.json"))
            .unwrap();
    for case in &g.cases {
        let name = case["name"].as_str().unwrap();
        let imgs = images(case, &proc);
        let (tokens, prompt_len) = tokenize(&g, case, &imgs);
        assert_eq!(tokens.ids, ids_of(g.t(name, "input_ids")), "{name}");
        assert_eq!(
            prompt_len as u64,
            case["prompt_len"].as_u64().unwrap(),
            "{name}"
        );
        if imgs.is_empty() {
            continue;
        }
        let grids: Vec<_> = imgs
            .iter()
            .map(|p| unireward_models::qwen2_5_vl::MediaGrid {
                t: p.grid_thw.0,
                h: p.grid_thw.1,
                w: p.grid_thw.2,
                time_interval: 1.0,
            })
            .collect();
        let pos = unireward_models::qwen2_5_vl::RopePositions::new(
            &tokens,
            &grids,
            &[],
            model_cfg.vision.spatial_merge_size,
        )
        .unwrap();
        let want = g.t(name, "position_ids").to_vec2::<i64>().unwrap();
        for (axis, (got, want)) in pos.axes.iter().zip(&want).enumerate() {
            let want: Vec<u32> = want.iter().map(|&v| v as u32).collect();
            assert_eq!(got, &want, "{name} axis {axis}");
        }
    }
}

/// The model's features of `imgs`, encoded together as one request's.
fn features(model: &Qwen25Vl, imgs: &[QwenVlPixels]) -> MediaFeatures {
    let refs: Vec<&QwenVlPixels> = imgs.iter().collect();
    MediaFeatures {
        images: model.media_features_batch(&refs).unwrap(),
        videos: Vec::new(),
        ..Default::default()
    }
}

fn check_checkpoint(name: &str) {
    let g = golden(name);
    let proc = g.processor();
    let model = Qwen25Vl::load(&g.model_dir, DType::F32, &Device::Cpu).unwrap();
    for case in &g.cases {
        let cname = case["name"].as_str().unwrap();
        let imgs = images(case, &proc);
        let (tokens, prompt_len) = tokenize(&g, case, &imgs);
        let media = features(&model, &imgs);
        for (i, f) in media.images.iter().enumerate() {
            if let Some(want) = g.tensors.get(&format!("{cname}.image_features{i}")) {
                let d = max_abs_diff(f, want);
                assert!(d < LOGIT_TOL, "{name} {cname} image {i} features: {d}");
            }
        }
        let grids: Vec<_> = imgs.iter().map(|p| model.image_grid(p)).collect();
        let pos = model.positions(&tokens, &grids, &[]).unwrap();
        let embeds = model.embed(&tokens, &media).unwrap().unsqueeze(0).unwrap();
        let positions = pos.to_tensor(&Device::Cpu).unwrap();
        let n = tokens.ids.len();
        // Rows predicting each completion token, and the last row.
        let rows: Vec<u32> = (prompt_len as u32 - 1..n as u32).collect();
        let rows_t = Tensor::new(rows.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let hidden = model
            .decoder()
            .forward_at(&embeds, &positions, None, None, &rows_t)
            .unwrap();
        let logits = model.logits(&hidden).unwrap().i(0).unwrap();
        let k = rows.len() - 1;
        let comp = logits.narrow(0, 0, k).unwrap();
        let cols = g.t(cname, "logits_cols");
        let d = max_abs_diff(&comp.narrow(1, 0, cols.dim(1).unwrap()).unwrap(), cols);
        assert!(d < LOGIT_TOL, "{name} {cname} logits: {d}");
        let specials = g.t(cname, "logits_specials");
        let d = max_abs_diff(
            &comp
                .narrow(1, SPECIALS_START, specials.dim(1).unwrap())
                .unwrap(),
            specials,
        );
        assert!(d < LOGIT_TOL, "{name} {cname} special-token logits: {d}");
        let last = logits.i(k).unwrap();
        let want_last = g.t(cname, "last_logits_cols");
        let d = max_abs_diff(
            &last.narrow(0, 0, want_last.dim(0).unwrap()).unwrap(),
            want_last,
        );
        assert!(d < LOGIT_TOL, "{name} {cname} last logits: {d}");

        // Completion log-prob in f64 from the f32 logits.
        let lse = comp
            .to_dtype(DType::F64)
            .unwrap()
            .exp()
            .unwrap()
            .sum(1)
            .unwrap()
            .log()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let want_lse = g.t(cname, "logsumexp").to_vec1::<f32>().unwrap();
        let rows_f64 = comp.to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap();
        let mut total = 0.0;
        for (j, row) in rows_f64.iter().enumerate() {
            assert!(
                (lse[j] - want_lse[j] as f64).abs() < LOGIT_TOL as f64,
                "{name} {cname} lse {j}"
            );
            total += row[tokens.ids[prompt_len + j] as usize] - lse[j];
        }
        let want = case["completion_logprob"].as_f64().unwrap();
        assert!(
            (total - want).abs() < LOGPROB_TOL,
            "{name} {cname} completion log-prob {total} vs {want}"
        );
    }
}

#[test]
fn tied_3b_checkpoint_matches_transformers() {
    check_checkpoint("qwen2_5_vl_3b");
}

#[test]
fn untied_7b_checkpoint_matches_transformers() {
    check_checkpoint("qwen2_5_vl_7b");
}

#[test]
fn greedy_generation_with_the_cache_matches_generate() {
    for name in ["qwen2_5_vl_3b", "qwen2_5_vl_7b"] {
        let g = golden(name);
        let proc = g.processor();
        let model = Qwen25Vl::load(&g.model_dir, DType::F32, &Device::Cpu).unwrap();
        let gen = &g.generation;
        let imgs = images(gen, &proc);
        let lens: Vec<usize> = imgs.iter().map(|p| p.num_tokens(2)).collect();
        let tokens = g
            .tokenizer()
            .encode(gen["prompt"].as_str().unwrap(), &lens, &[])
            .unwrap();
        let media = features(&model, &imgs);
        let grids: Vec<_> = imgs.iter().map(|p| model.image_grid(p)).collect();
        let pos = model.positions(&tokens, &grids, &[]).unwrap();
        let mut cache = model.new_cache();
        let embeds = model.embed(&tokens, &media).unwrap().unsqueeze(0).unwrap();
        let hidden = model
            .hidden_states(
                &embeds,
                &pos.to_tensor(&Device::Cpu).unwrap(),
                Some(&mut cache),
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
            let past = cache.len();
            let positions = continuation_positions(1, 1, past, pos.delta, &Device::Cpu).unwrap();
            let ids = Tensor::new(&[[next]], &Device::Cpu).unwrap();
            let emb = model.decoder().embed(&ids).unwrap();
            let h = model
                .hidden_states(&emb, &positions, Some(&mut cache))
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

fn argmax(logits: &Tensor) -> u32 {
    logits
        .flatten_all()
        .unwrap()
        .argmax(0)
        .unwrap()
        .to_scalar::<u32>()
        .unwrap()
}
