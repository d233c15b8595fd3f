//! Whole-model gradients against central finite differences, on a tiny random
//! LLaVA-OneVision in f64: coordinates in the SigLIP tower (patch embedding, LayerNorm,
//! attention, MLP), the projector, `image_newline` and the Qwen2 decoder (embeddings, RMSNorm,
//! attention, MLP, head). The loss runs through anyres packing, video pooling, media merging,
//! right padding and the fused log-softmax-gather, so a gradient stopped anywhere on the way
//! (a norm or softmax without backward) shows up as a mismatch.
//!
//! The decoder's attention softmax and its logits are computed in f32 whatever the weights'
//! dtype (as the reference does), so the loss carries f32 rounding: the step is 1e-2 and
//! the tolerance allows for it (a stopped or wrong gradient is off by far more).

use std::collections::HashMap;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde_json::json;
use unireward_models::checkpoint::KeyLayout;
use unireward_models::config::LlavaConfig;
use unireward_models::family::JudgeModel;
use unireward_models::tokenize::{MediaKind, MediaSpan, Tokenized};
use unireward_models::{LlavaOnevision, MediaFeatures};
use unireward_trainer::checkpoint_keys::TrainParts;
use unireward_trainer::logprob::{sequence_logprobs, ScoredSequence};
use unireward_trainer::varmap_model::VarMapModel;

const IMAGE_ID: u32 = 30;
const VIDEO_ID: u32 = 31;

fn tiny_config() -> Result<LlavaConfig> {
    let v = json!({
        "vision_config": {"hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 2,
                          "num_attention_heads": 2, "image_size": 8, "patch_size": 4,
                          "layer_norm_eps": 1e-6},
        "text_config": {"vocab_size": 32, "hidden_size": 8, "intermediate_size": 12,
                        "num_hidden_layers": 2, "num_attention_heads": 2,
                        "num_key_value_heads": 1, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
                        "max_position_embeddings": 64, "tie_word_embeddings": false},
        "image_token_index": IMAGE_ID, "video_token_index": VIDEO_ID,
        "image_grid_pinpoints": [[8, 8], [8, 16], [16, 8], [16, 16]],
        "vision_aspect_ratio": "anyres_max_9",
        "vision_feature_layer": -1, "vision_feature_select_strategy": "full"
    });
    Ok(LlavaConfig::from_json(&v, None)?)
}

fn layout() -> KeyLayout {
    KeyLayout {
        name: "test",
        vision: "vision_tower.".into(),
        projector: [
            "multi_modal_projector.linear_1".into(),
            "multi_modal_projector.linear_2".into(),
        ],
        image_newline: "image_newline".into(),
        decoder: "language_model.model.".into(),
        lm_head: Some("language_model.lm_head".into()),
    }
}

/// A fixed pseudo-random stream in [-1, 1) (an LCG: the test must not depend on a seed
/// source).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }
    fn tensor(&mut self, dims: &[usize], scale: f64, offset: f64) -> Result<Tensor> {
        let n: usize = dims.iter().product();
        let v: Vec<f64> = (0..n).map(|_| offset + scale * self.next()).collect();
        Ok(Tensor::from_vec(v, dims, &Device::Cpu)?)
    }
}

/// Every weight the model asks for, drawn at random (norm weights around 1).
fn random_weights(cfg: &LlavaConfig, rng: &mut Lcg) -> Result<HashMap<String, Tensor>> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu);
    LlavaOnevision::new(cfg.clone(), layout(), vb)?;
    let mut names: Vec<(String, Vec<usize>)> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect();
    names.sort();
    let mut out = HashMap::new();
    for (name, dims) in names {
        let norm = name.contains("norm") && name.ends_with(".weight");
        let t = if norm {
            rng.tensor(&dims, 0.2, 1.0)?
        } else {
            rng.tensor(&dims, 0.5, 0.0)?
        };
        out.insert(name, t);
    }
    Ok(out)
}

struct Inputs {
    image_tiles: Tensor,
    video_frames: Tensor,
    seqs: Vec<ScoredSequence>,
}

fn inputs(cfg: &LlavaConfig, rng: &mut Lcg) -> Result<Inputs> {
    // An 8x16 image: base tile + a 1x2 grid; a two-frame video.
    let image_tiles = rng.tensor(&[3, 3, 8, 8], 1.0, 0.0)?;
    let video_frames = rng.tensor(&[2, 3, 8, 8], 1.0, 0.0)?;
    let n_img = cfg.anyres.image_token_count((8, 16))?;
    let n_vid = cfg.anyres.video_token_count(2);
    let mut ids = vec![1, 2];
    let img_start = ids.len();
    ids.extend(std::iter::repeat_n(IMAGE_ID, n_img));
    ids.push(3);
    let vid_start = ids.len();
    ids.extend(std::iter::repeat_n(VIDEO_ID, n_vid));
    let prompt_len = ids.len() + 2;
    ids.extend([4, 5, 6, 7, 8]);
    let long = Tokenized {
        ids,
        spans: vec![
            MediaSpan {
                kind: MediaKind::Image,
                index: 0,
                start: img_start,
                len: n_img,
            },
            MediaSpan {
                kind: MediaKind::Video,
                index: 0,
                start: vid_start,
                len: n_vid,
            },
        ],
    };
    let short = Tokenized {
        ids: vec![9, 10, 11, 12, 13],
        spans: vec![],
    };
    Ok(Inputs {
        image_tiles,
        video_frames,
        seqs: vec![
            ScoredSequence::from_prompt_len(long, prompt_len),
            ScoredSequence::from_prompt_len(short, 3),
        ],
    })
}

/// −(sum of both sequences' answer log-probs), through the training path.
fn loss(model: &dyn JudgeModel, x: &Inputs) -> Result<Tensor> {
    let media = MediaFeatures {
        images: vec![model.image_features(&x.image_tiles, (8, 16))?],
        videos: vec![model.video_features(&x.video_frames)?],
        ..Default::default()
    };
    let none = MediaFeatures::default();
    let lp = sequence_logprobs(model, &[(&x.seqs[0], &media), (&x.seqs[1], &none)])?;
    Ok(lp.to_dtype(DType::F64)?.sum_all()?.neg()?)
}

fn value(t: &Tensor) -> Result<f64> {
    Ok(t.to_scalar::<f64>()?)
}

#[test]
fn gradients_match_finite_differences_in_every_part() -> Result<()> {
    let cfg = tiny_config()?;
    let mut rng = Lcg(0x5eed);
    let weights = random_weights(&cfg, &mut rng)?;
    let x = inputs(&cfg, &mut rng)?;
    let model = VarMapModel::from_tensors(
        cfg,
        layout(),
        weights,
        DType::F64,
        &Device::Cpu,
        TrainParts::all(),
    )?;
    let l0 = loss(model.model(), &x)?;
    println!("loss {:.6}", value(&l0)?);
    let grads = l0.backward()?;
    let vars: HashMap<String, candle_core::Var> = model.trained_vars()?.into_iter().collect();

    let probes: &[(&str, &[usize])] = &[
        ("vision_tower.embeddings.patch_embedding.weight", &[5, 37]),
        (
            "vision_tower.embeddings.position_embedding.weight",
            &[3, 20],
        ),
        ("vision_tower.encoder.layers.0.layer_norm1.weight", &[2, 6]),
        ("vision_tower.encoder.layers.0.layer_norm2.bias", &[1]),
        (
            "vision_tower.encoder.layers.1.self_attn.q_proj.weight",
            &[9, 40],
        ),
        ("vision_tower.encoder.layers.1.mlp.fc1.weight", &[17]),
        ("multi_modal_projector.linear_1.weight", &[4, 33]),
        ("multi_modal_projector.linear_2.bias", &[6]),
        ("image_newline", &[0, 5]),
        (
            "language_model.model.embed_tokens.weight",
            &[4 * 8 + 2, 12 * 8 + 1],
        ),
        (
            "language_model.model.layers.0.input_layernorm.weight",
            &[0, 7],
        ),
        (
            "language_model.model.layers.0.self_attn.k_proj.weight",
            &[3, 12],
        ),
        ("language_model.model.layers.1.self_attn.q_proj.bias", &[5]),
        (
            "language_model.model.layers.1.post_attention_layernorm.weight",
            &[4],
        ),
        ("language_model.model.layers.1.mlp.gate_proj.weight", &[50]),
        ("language_model.model.norm.weight", &[1, 6]),
        ("language_model.lm_head.weight", &[5 * 8 + 3, 8 * 8]),
    ];
    let h = 1e-2;
    let mut worst: f64 = 0.0;
    for (name, coords) in probes {
        let var = &vars[*name];
        let base = var.as_detached_tensor().flatten_all()?.to_vec1::<f64>()?;
        let analytic = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"))
            .flatten_all()?
            .to_vec1::<f64>()?;
        for &i in *coords {
            let at = |delta: f64| -> Result<f64> {
                let mut v = base.clone();
                v[i] += delta;
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu)?)?;
                value(&loss(model.model(), &x)?)
            };
            let fd = (at(h)? - at(-h)?) / (2.0 * h);
            var.set(&Tensor::from_vec(base.clone(), var.shape(), &Device::Cpu)?)?;
            let a = analytic[i];
            let err = (a - fd).abs() / (1e-2 + fd.abs());
            println!("{name}[{i}]: analytic {a:+.6e} finite diff {fd:+.6e} (rel err {err:.1e})");
            worst = worst.max(err);
            assert!(
                err < 1e-2,
                "{name}[{i}]: analytic {a} vs finite difference {fd}"
            );
        }
    }
    println!("worst relative error {worst:.2e}");
    Ok(())
}

#[test]
fn frozen_parts_get_no_gradient_and_no_optimizer_slot() -> Result<()> {
    let cfg = tiny_config()?;
    let mut rng = Lcg(0xf00d);
    let weights = random_weights(&cfg, &mut rng)?;
    let all: Vec<String> = weights.keys().cloned().collect();
    let x = inputs(&cfg, &mut rng)?;
    let parts = TrainParts {
        vision: false,
        projector: true,
        decoder: false,
    };
    let model = VarMapModel::from_tensors(cfg, layout(), weights, DType::F64, &Device::Cpu, parts)?;
    let trained: Vec<String> = model.trained_vars()?.into_iter().map(|(n, _)| n).collect();
    assert!(!trained.is_empty());
    assert!(
        trained
            .iter()
            .all(|n| n.starts_with("multi_modal_projector.")),
        "{trained:?}"
    );
    let grads = loss(model.model(), &x)?.backward()?;
    let tensors = model.tensors()?;
    let varmap = model.varmap().data().lock().unwrap().clone();
    for name in &all {
        let has_grad = grads.get(varmap[name].as_tensor()).is_some();
        assert_eq!(has_grad, trained.contains(name), "{name}");
        assert!(tensors.contains_key(name), "{name} is saved too");
    }
    Ok(())
}

/// Every trained variable's gradient from a plain backward and from one through
/// checkpointed decoder layers (candle's pass plus what the recomputation deposited):
/// the worst relative difference, and how many variables got theirs from recomputation.
fn compare_checkpointed(
    plain: &VarMapModel,
    ckpt: &VarMapModel,
    x: &Inputs,
) -> Result<(f64, usize)> {
    let (lp, lc) = (loss(plain.model(), x)?, loss(ckpt.model(), x)?);
    // The forward is the same computation.
    assert_eq!(value(&lp)?, value(&lc)?);
    let (gp, gc) = (lp.backward()?, lc.backward()?);
    let recomputed = ckpt
        .checkpointing()
        .ok_or_else(|| anyhow::anyhow!("checkpointing is off"))?;
    let mut worst: f64 = 0.0;
    let mut from_recomputation = 0;
    for ((name, vp), (_, vc)) in plain.trained_vars()?.iter().zip(ckpt.trained_vars()?) {
        let want = gp.get(vp.as_tensor());
        let got = match (gc.get(vc.as_tensor()), recomputed.take(vc.as_tensor())?) {
            (Some(a), Some(b)) => Some((a + b)?),
            (Some(a), None) => Some(a.clone()),
            (None, Some(b)) => {
                from_recomputation += 1;
                Some(b)
            }
            (None, None) => None,
        };
        let (want, got) = match (want, got) {
            (Some(w), Some(g)) => (w.clone(), g),
            (None, None) => continue,
            (w, g) => panic!(
                "{name}: gradient plain {} vs checkpointed {}",
                w.is_some(),
                g.is_some()
            ),
        };
        let scale = want.abs()?.max_all()?.to_scalar::<f64>()?.max(1e-30);
        let diff = (&want - &got)?.abs()?.max_all()?.to_scalar::<f64>()?;
        worst = worst.max(diff / scale);
    }
    Ok((worst, from_recomputation))
}

/// Gradient checkpointing recomputes each decoder layer in backward: every trained weight
/// gets the gradient a plain backward gives it, with every part trained, and with LoRA
/// adapters over frozen embeddings (the layers' input then tracks nothing).
#[test]
fn checkpointed_layers_give_the_same_gradients() -> Result<()> {
    let cfg = tiny_config()?;
    let mut rng = Lcg(0x5eed);
    let weights = random_weights(&cfg, &mut rng)?;
    let x = inputs(&cfg, &mut rng)?;
    let build = || {
        VarMapModel::from_tensors(
            cfg.clone(),
            layout(),
            weights.clone(),
            DType::F64,
            &Device::Cpu,
            TrainParts::all(),
        )
    };
    let plain = build()?;
    let mut ckpt = build()?;
    ckpt.set_grad_checkpointing(true)?;
    let (worst, recomputed) = compare_checkpointed(&plain, &ckpt, &x)?;
    println!("every part trained: worst relative difference {worst:e}, {recomputed} variables from recomputation");
    // The decoder layers' weights: 2 layers x (2 norms, q/k/v weights and biases, o, 3 MLP).
    assert_eq!(recomputed, 2 * 12);
    assert!(worst < 1e-12, "{worst}");

    let lora = unireward_trainer::lora::LoraConfig::new(
        2,
        Some(4.0),
        0.0,
        vec!["q_proj".into(), "down_proj".into()],
    );
    let parts = TrainParts {
        vision: false,
        projector: false,
        decoder: true,
    };
    let adapted = || -> Result<VarMapModel> {
        let mut m = VarMapModel::from_tensors(
            cfg.clone(),
            layout(),
            weights.clone(),
            DType::F64,
            &Device::Cpu,
            parts,
        )?;
        m.add_lora(&lora, 3)?;
        // B starts at zero (A's gradient would be zero): give it values.
        let mut r = Lcg(9);
        // In name order (vars() is sorted), so both models get the same values.
        let values: HashMap<String, Tensor> = m
            .lora()
            .map(|a| a.vars())
            .unwrap_or_default()
            .into_iter()
            .map(|(k, t)| {
                let v: Vec<f64> = (0..t.elem_count()).map(|_| 0.1 * r.next()).collect();
                Ok((k, Tensor::from_vec(v, t.shape(), &Device::Cpu)?))
            })
            .collect::<Result<_>>()?;
        m.set_lora_tensors(&values)?;
        Ok(m)
    };
    let plain = adapted()?;
    let mut ckpt = adapted()?;
    ckpt.set_grad_checkpointing(true)?;
    let (worst, recomputed) = compare_checkpointed(&plain, &ckpt, &x)?;
    println!("LoRA on q_proj and down_proj: worst relative difference {worst:e}, {recomputed} factors from recomputation");
    assert_eq!(recomputed, 2 * 2 * 2);
    assert!(worst < 1e-12, "{worst}");
    Ok(())
}
