//! The exported graphs against the candle model they mirror.
//!
//! Per block (SigLIP embeddings + layer, projector, one Qwen2 layer with rotary, GQA and the
//! padding mask, the Qwen-VL decoders' M-RoPE, Qwen3 attention and deep-stack injection, final
//! norm + head) on random weights and inputs: single-block graphs made by
//! the exporter's own emitters, run in ONNX Runtime, within 1e-5 of candle. Then whole exports
//! of the golden checkpoint: the vision graph against `LlavaOnevision::encode_tiles` on the
//! golden pixels, the decoder through `OrtBackend` against `CandleBackend` (1e-4) and against
//! transformers' completion log-probs (1e-3), fp16 against fp32, and onnx's checker.
//!
//! Needs the ONNX Runtime library (ORT_DYLIB_PATH, an onnxruntime Python package, or `.ort/`
//! from scripts/fetch-onnxruntime.sh) and, for the checker test, python3 with `onnx`.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::VarBuilder;
use unireward_engine::backend::{
    Backend, CandleBackend, Decoder, Decoding, InputTensor, OrtBackend, OrtSession, Outputs,
    SessionConfig,
};
use unireward_export::model::{graphs, projector, qwen2, siglip, Emitter, Weights};
use unireward_export::{export_onnx, DataType, Dim, ExportOptions, ExportReport, GraphBuilder};
use unireward_export::{Precision, Value};
use unireward_models::config::{LlavaConfig, TextConfig, VisionConfig};
use unireward_models::decode::{AttentionVariant, Qwen2};
use unireward_models::encode::{Projector, SiglipVision};
use unireward_models::family::JudgeModel;
use unireward_models::pack::{merge_media, MediaFeatures};
use unireward_models::tokenize::{PromptTokenizer, Tokenized};
use unireward_models::LlavaOnevision;
use unireward_tests::{golden_cases, golden_model_dir, golden_tensors};

const BLOCK_TOL: f32 = 1e-5;

// ---------------------------------------------------------------------------------------------
// Random weights and single-block graphs.

/// Deterministic uniform values in [-scale, scale].
struct Rng(u64);

impl Rng {
    fn values(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 = self
                    .0
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (((self.0 >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0) * scale
            })
            .collect()
    }

    fn tensor(&mut self, shape: &[usize], scale: f32) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_vec(self.values(n, scale), shape, &Device::Cpu).unwrap()
    }
}

/// What a weight is, for picking a scale that keeps activations O(1).
enum Kind {
    /// [out, in, ...] matrix: scale 1/√in.
    Matrix,
    Bias,
    /// Normalisation gain around 1.
    Gain,
    /// Embedding-like table of O(1) values.
    Table,
}

struct RandomWeights {
    rng: Rng,
    map: HashMap<String, Tensor>,
}

impl RandomWeights {
    fn new(seed: u64) -> Self {
        Self {
            rng: Rng(seed),
            map: HashMap::new(),
        }
    }

    fn add(&mut self, name: &str, shape: &[usize], kind: Kind) {
        let t = match kind {
            Kind::Matrix => {
                let fan_in: usize = shape[1..].iter().product();
                self.rng.tensor(shape, 1.0 / (fan_in as f32).sqrt())
            }
            Kind::Bias => self.rng.tensor(shape, 0.1),
            Kind::Gain => (self.rng.tensor(shape, 0.2) + 1.0).unwrap(),
            Kind::Table => self.rng.tensor(shape, 1.0),
        };
        self.map.insert(name.to_string(), t);
    }

    fn var_builder(&self) -> VarBuilder<'static> {
        VarBuilder::from_tensors(self.map.clone(), DType::F32, &Device::Cpu)
    }
}

fn session(model: &Path) -> OrtSession {
    OrtSession::open(model, &SessionConfig::default()).unwrap_or_else(|e| panic!("{e}"))
}

/// Builds a one-output graph with `build`, saves it, runs it on `inputs`, returns the output.
fn run_block(
    weights: &Weights,
    inputs: &[(&str, DataType, Vec<Dim>)],
    feeds: &[(&str, InputTensor<'_>)],
    build: impl FnOnce(&mut Emitter, &[Value]) -> Value,
) -> (Vec<usize>, Vec<f32>) {
    let dir = tempfile::tempdir().unwrap();
    let g = GraphBuilder::new(dir.path(), "block").unwrap();
    let mut e = Emitter::new(g, weights, Precision::F32);
    let values: Vec<Value> = inputs
        .iter()
        .map(|(name, dtype, dims)| e.graph().input(name, *dtype, dims).unwrap())
        .collect();
    let out = build(&mut e, &values);
    let mut g = e.into_graph();
    g.output("out", &out, DataType::Float, &[]).unwrap();
    let saved = g.save().unwrap();
    let outputs: Outputs = session(&saved.model).run(feeds).unwrap();
    let out = outputs.get("out").unwrap();
    (out.shape.clone(), out.as_f32().unwrap().to_vec())
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn small_vision() -> VisionConfig {
    VisionConfig {
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 1,
        num_attention_heads: 4,
        num_channels: 3,
        image_size: 16,
        patch_size: 4,
        layer_norm_eps: 1e-6,
    }
}

#[test]
fn siglip_embeddings_and_layer_match_candle() {
    let cfg = small_vision();
    let (d, c, p, i) = (cfg.hidden_size, 3, cfg.patch_size, cfg.intermediate_size);
    let mut w = RandomWeights::new(11);
    w.add(
        "vt.embeddings.patch_embedding.weight",
        &[d, c, p, p],
        Kind::Matrix,
    );
    w.add("vt.embeddings.patch_embedding.bias", &[d], Kind::Bias);
    w.add(
        "vt.embeddings.position_embedding.weight",
        &[cfg.tokens_per_tile(), d],
        Kind::Table,
    );
    let l = "vt.encoder.layers.0.";
    for ln in ["layer_norm1", "layer_norm2"] {
        w.add(&format!("{l}{ln}.weight"), &[d], Kind::Gain);
        w.add(&format!("{l}{ln}.bias"), &[d], Kind::Bias);
    }
    for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
        w.add(
            &format!("{l}self_attn.{proj}.weight"),
            &[d, d],
            Kind::Matrix,
        );
        w.add(&format!("{l}self_attn.{proj}.bias"), &[d], Kind::Bias);
    }
    w.add(&format!("{l}mlp.fc1.weight"), &[i, d], Kind::Matrix);
    w.add(&format!("{l}mlp.fc1.bias"), &[i], Kind::Bias);
    w.add(&format!("{l}mlp.fc2.weight"), &[d, i], Kind::Matrix);
    w.add(&format!("{l}mlp.fc2.bias"), &[d], Kind::Bias);

    let n = 3;
    let pixels = w.rng.tensor(&[n, c, cfg.image_size, cfg.image_size], 1.0);
    let pixel_data = flat(&pixels);
    let shape = [n, c, cfg.image_size, cfg.image_size];
    let weights = Weights::from_var_builder(w.var_builder());
    for layers in [0, 1] {
        let candle = SiglipVision::new(&cfg, layers, w.var_builder().pp("vt"))
            .unwrap()
            .forward(&pixels)
            .unwrap();
        let input_dims = vec!["tiles".into(), c.into(), 16usize.into(), 16usize.into()];
        let (out_shape, out) = run_block(
            &weights,
            &[("pixels", DataType::Float, input_dims)],
            &[(
                "pixels",
                InputTensor::F32 {
                    shape: &shape,
                    data: &pixel_data,
                },
            )],
            |e, v| siglip::tower(e, &cfg, layers, "vt.", &v[0]).unwrap(),
        );
        assert_eq!(out_shape, candle.dims());
        let diff = max_abs_diff(&out, &flat(&candle));
        println!("siglip embeddings + {layers} layer(s): max |diff| {diff:.3e}");
        assert!(
            diff <= BLOCK_TOL,
            "siglip with {layers} layers differs by {diff}"
        );
    }
}

fn llava_config(vision: &VisionConfig, text: &TextConfig) -> LlavaConfig {
    let json = serde_json::json!({
        "vision_config": {
            "hidden_size": vision.hidden_size,
            "intermediate_size": vision.intermediate_size,
            "num_hidden_layers": vision.num_hidden_layers,
            "num_attention_heads": vision.num_attention_heads,
            "image_size": vision.image_size,
            "patch_size": vision.patch_size,
        },
        "text_config": {
            "hidden_size": text.hidden_size,
            "intermediate_size": text.intermediate_size,
            "num_hidden_layers": text.num_hidden_layers,
            "num_attention_heads": text.num_attention_heads,
            "num_key_value_heads": text.num_key_value_heads,
            "vocab_size": text.vocab_size,
            "rope_theta": text.rope_theta,
            "tie_word_embeddings": text.tie_word_embeddings,
        },
    });
    LlavaConfig::from_json(&json, None).unwrap()
}

fn small_text(layers: usize, tied: bool) -> TextConfig {
    TextConfig {
        vocab_size: 50,
        hidden_size: 32,
        intermediate_size: 48,
        num_hidden_layers: layers,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        max_position_embeddings: 4096,
        rope_theta: 10000.0,
        rms_norm_eps: 1e-6,
        tie_word_embeddings: tied,
        eos_token_id: None,
    }
}

#[test]
fn projector_matches_candle() {
    let cfg = llava_config(&small_vision(), &small_text(1, false));
    let (v, t) = (cfg.vision.hidden_size, cfg.text.hidden_size);
    let names = ["mmp.linear_1".to_string(), "mmp.linear_2".to_string()];
    let mut w = RandomWeights::new(12);
    w.add("mmp.linear_1.weight", &[t, v], Kind::Matrix);
    w.add("mmp.linear_1.bias", &[t], Kind::Bias);
    w.add("mmp.linear_2.weight", &[t, t], Kind::Matrix);
    w.add("mmp.linear_2.bias", &[t], Kind::Bias);
    let x = w.rng.tensor(&[2, 5, v], 2.0);
    let candle = Projector::new(&cfg, &w.var_builder(), &names)
        .unwrap()
        .forward(&x)
        .unwrap();
    let weights = Weights::from_var_builder(w.var_builder());
    let data = flat(&x);
    let (shape, out) = run_block(
        &weights,
        &[("x", DataType::Float, vec!["n".into(), "p".into(), v.into()])],
        &[(
            "x",
            InputTensor::F32 {
                shape: &[2, 5, v],
                data: &data,
            },
        )],
        |e, vals| projector::projector(e, &cfg, &names, &vals[0]).unwrap(),
    );
    assert_eq!(shape, candle.dims());
    let diff = max_abs_diff(&out, &flat(&candle));
    println!("projector: max |diff| {diff:.3e}");
    assert!(diff <= BLOCK_TOL, "projector differs by {diff}");
}

/// Qwen2 weights under `lm.model.` (+ `lm.head` unless tied).
fn qwen2_weights(cfg: &TextConfig, seed: u64) -> RandomWeights {
    let (d, hd, i) = (cfg.hidden_size, cfg.head_dim(), cfg.intermediate_size);
    let (h, kvh, v) = (
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.vocab_size,
    );
    let mut w = RandomWeights::new(seed);
    w.add("lm.model.embed_tokens.weight", &[v, d], Kind::Table);
    for l in 0..cfg.num_hidden_layers {
        let p = format!("lm.model.layers.{l}.");
        w.add(&format!("{p}input_layernorm.weight"), &[d], Kind::Gain);
        w.add(
            &format!("{p}post_attention_layernorm.weight"),
            &[d],
            Kind::Gain,
        );
        w.add(
            &format!("{p}self_attn.q_proj.weight"),
            &[h * hd, d],
            Kind::Matrix,
        );
        w.add(&format!("{p}self_attn.q_proj.bias"), &[h * hd], Kind::Bias);
        for kv in ["k_proj", "v_proj"] {
            w.add(
                &format!("{p}self_attn.{kv}.weight"),
                &[kvh * hd, d],
                Kind::Matrix,
            );
            w.add(&format!("{p}self_attn.{kv}.bias"), &[kvh * hd], Kind::Bias);
        }
        w.add(
            &format!("{p}self_attn.o_proj.weight"),
            &[d, h * hd],
            Kind::Matrix,
        );
        w.add(&format!("{p}mlp.gate_proj.weight"), &[i, d], Kind::Matrix);
        w.add(&format!("{p}mlp.up_proj.weight"), &[i, d], Kind::Matrix);
        w.add(&format!("{p}mlp.down_proj.weight"), &[d, i], Kind::Matrix);
    }
    w.add("lm.model.norm.weight", &[d], Kind::Gain);
    if !cfg.tie_word_embeddings {
        w.add("lm.head.weight", &[v, d], Kind::Matrix);
    }
    w
}

fn candle_qwen2(cfg: &TextConfig, w: &RandomWeights) -> Qwen2 {
    let vb = w.var_builder();
    let head = (!cfg.tie_word_embeddings).then(|| vb.pp("lm.head"));
    Qwen2::new(cfg, vb.pp("lm.model"), head).unwrap()
}

/// One layer with rotary (positions that do not start at 0), GQA (4 heads over 2 kv heads)
/// and a right-padded batch, then the final norm (the block `Qwen2::forward` ends with); then
/// the same with only some rows computed in that (last) layer (`Qwen2::forward_at`).
#[test]
fn qwen2_layer_matches_candle() {
    let rows: Vec<i64> = vec![6, 0, 3, 3, 1, 2];
    qwen2_layer_case(None);
    qwen2_layer_case(Some(&rows));
}

fn qwen2_layer_case(rows: Option<&[i64]>) {
    let cfg = small_text(1, false);
    let mut w = qwen2_weights(&cfg, 13);
    let (b, t, d) = (2, 7, cfg.hidden_size);
    let lens = [7usize, 4];
    let embeds = w.rng.tensor(&[b, t, d], 1.0);
    let positions: Vec<i64> = (0..b as i64)
        .flat_map(|r| (0..t as i64).map(move |j| j + 5 * r))
        .collect();
    let mask: Vec<i64> = lens
        .iter()
        .flat_map(|&n| (0..t).map(move |j| i64::from(j < n)))
        .collect();

    // candle with the equivalent additive mask: causal, and no key past a row's length.
    let additive: Vec<f32> = (0..b)
        .flat_map(|r| {
            (0..t).flat_map(move |i| {
                (0..t).map(move |j| {
                    if j <= i && j < lens[r] {
                        0.0
                    } else {
                        f32::NEG_INFINITY
                    }
                })
            })
        })
        .collect();
    let additive = Tensor::from_vec(additive, (b, 1, t, t), &Device::Cpu).unwrap();
    let pos_u32: Vec<u32> = positions.iter().map(|&p| p as u32).collect();
    let pos_t = Tensor::from_vec(pos_u32, (b, t), &Device::Cpu).unwrap();
    let model = candle_qwen2(&cfg, &w);
    let candle = match rows {
        Some(r) => {
            let idx: Vec<u32> = r.iter().map(|&i| i as u32).collect();
            let idx = Tensor::from_vec(idx, (b, r.len() / b), &Device::Cpu).unwrap();
            model.forward_at(&embeds, &pos_t, Some(&additive), None, &idx)
        }
        None => model.forward(&embeds, &pos_t, Some(&additive), None),
    }
    .unwrap();

    let weights = Weights::from_var_builder(w.var_builder());
    let embed_data = flat(&embeds);
    let bt = || vec![Dim::from("batch"), Dim::from("sequence")];
    let (shape, out) = run_block(
        &weights,
        &[
            (
                "embeds",
                DataType::Float,
                vec!["batch".into(), "sequence".into(), d.into()],
            ),
            ("mask", DataType::Int64, bt()),
            ("pos", DataType::Int64, bt()),
            (
                "rows",
                DataType::Int64,
                vec!["batch".into(), "positions".into()],
            ),
        ],
        &[
            (
                "embeds",
                InputTensor::F32 {
                    shape: &[b, t, d],
                    data: &embed_data,
                },
            ),
            (
                "mask",
                InputTensor::I64 {
                    shape: &[b, t],
                    data: &mask,
                },
            ),
            (
                "pos",
                InputTensor::I64 {
                    shape: &[b, t],
                    data: &positions,
                },
            ),
            (
                "rows",
                InputTensor::I64 {
                    shape: &[b, rows.map_or(0, |r| r.len() / b)],
                    data: rows.unwrap_or(&[]),
                },
            ),
        ],
        |e, v| {
            let m = qwen2::attention_mask(e, &v[1], &v[0]).unwrap();
            let rows = rows.map(|_| &v[3]);
            let variant = AttentionVariant::qwen2(&cfg, None);
            qwen2::body(
                e,
                &cfg,
                &variant,
                "lm.model.",
                &v[0],
                &v[2],
                &m,
                None,
                rows,
                &[],
            )
            .unwrap()
            .hidden
        },
    );
    assert_eq!(shape, candle.dims());
    let diff = max_abs_diff(&out, &flat(&candle));
    println!(
        "qwen2 layer + final norm (rotary, GQA, padding; rows {rows:?}): max |diff| {diff:.3e}"
    );
    assert!(diff <= BLOCK_TOL, "qwen2 layer differs by {diff}");
}

/// Weights of a Qwen2-family decoder with `variant`'s attention under `lm.model.`.
fn variant_weights(cfg: &TextConfig, variant: &AttentionVariant, seed: u64) -> RandomWeights {
    let (d, hd, i) = (cfg.hidden_size, variant.head_dim, cfg.intermediate_size);
    let (h, kvh) = (cfg.num_attention_heads, cfg.num_key_value_heads);
    let mut w = RandomWeights::new(seed);
    w.add(
        "lm.model.embed_tokens.weight",
        &[cfg.vocab_size, d],
        Kind::Table,
    );
    for l in 0..cfg.num_hidden_layers {
        let p = format!("lm.model.layers.{l}.");
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            w.add(&format!("{p}{norm}.weight"), &[d], Kind::Gain);
        }
        for (name, heads) in [("q_proj", h), ("k_proj", kvh), ("v_proj", kvh)] {
            w.add(
                &format!("{p}self_attn.{name}.weight"),
                &[heads * hd, d],
                Kind::Matrix,
            );
            if variant.qkv_bias {
                w.add(
                    &format!("{p}self_attn.{name}.bias"),
                    &[heads * hd],
                    Kind::Bias,
                );
            }
        }
        if variant.qk_norm {
            w.add(&format!("{p}self_attn.q_norm.weight"), &[hd], Kind::Gain);
            w.add(&format!("{p}self_attn.k_norm.weight"), &[hd], Kind::Gain);
        }
        w.add(
            &format!("{p}self_attn.o_proj.weight"),
            &[d, h * hd],
            Kind::Matrix,
        );
        w.add(&format!("{p}mlp.gate_proj.weight"), &[i, d], Kind::Matrix);
        w.add(&format!("{p}mlp.up_proj.weight"), &[i, d], Kind::Matrix);
        w.add(&format!("{p}mlp.down_proj.weight"), &[d, i], Kind::Matrix);
    }
    w.add("lm.model.norm.weight", &[d], Kind::Gain);
    w
}

/// The Qwen-VL decoders' departures from Qwen2, two layers and the final norm: 3-D M-RoPE
/// positions whose axes differ (Qwen2.5-VL's three runs of frequencies; Qwen3-VL's
/// interleaved axes), Qwen3's attention (per-head q/k RMSNorm, no biases, a head width apart
/// from hidden / heads) and a deep-stack injection after the first layer, over a right-padded
/// batch, whole and with only some rows computed in the last layer.
#[test]
fn qwen_vl_decoder_variants_match_candle() {
    let cfg = small_text(2, false);
    let variants = [
        AttentionVariant::qwen2(&cfg, Some(&[1, 1, 2])),
        AttentionVariant {
            head_dim: 12,
            qkv_bias: false,
            qk_norm: true,
            mrope_section: Some(vec![2, 2, 2]),
            mrope_interleaved: true,
        },
    ];
    for (v_i, variant) in variants.iter().enumerate() {
        let mut w = variant_weights(&cfg, variant, 21 + v_i as u64);
        let (b, t, d) = (2, 7, cfg.hidden_size);
        let lens = [7usize, 5];
        let embeds = w.rng.tensor(&[b, t, d], 1.0);
        let inject = if variant.qk_norm {
            vec![w.rng.tensor(&[b, t, d], 0.5)]
        } else {
            Vec::new()
        };
        // Axis a of row r at position 3·j + a + r: the three axes apart everywhere.
        let positions: Vec<i64> = (0..3i64)
            .flat_map(|a| {
                (0..b as i64).flat_map(move |r| (0..t as i64).map(move |j| 3 * j + a + r))
            })
            .collect();
        let mask: Vec<i64> = lens
            .iter()
            .flat_map(|&n| (0..t).map(move |j| i64::from(j < n)))
            .collect();
        let additive: Vec<f32> = (0..b)
            .flat_map(|r| {
                (0..t).flat_map(move |i| {
                    (0..t).map(move |j| {
                        if j <= i && j < lens[r] {
                            0.0
                        } else {
                            f32::NEG_INFINITY
                        }
                    })
                })
            })
            .collect();
        let additive = Tensor::from_vec(additive, (b, 1, t, t), &Device::Cpu).unwrap();
        let pos_u32: Vec<u32> = positions.iter().map(|&p| p as u32).collect();
        let pos_t = Tensor::from_vec(pos_u32, (3, b, t), &Device::Cpu).unwrap();
        let vb = w.var_builder();
        // Tied head: only the body is compared.
        let model = Qwen2::with_variant(&cfg, vb.pp("lm.model"), None, variant).unwrap();
        let weights = Weights::from_var_builder(w.var_builder());
        let embed_data = flat(&embeds);
        let inject_data: Vec<Vec<f32>> = inject.iter().map(flat).collect();
        for rows in [None, Some(vec![6i64, 0, 4, 1])] {
            let idx = rows.as_ref().map(|r| {
                let r: Vec<u32> = r.iter().map(|&i| i as u32).collect();
                Tensor::from_vec(r, (b, 2), &Device::Cpu).unwrap()
            });
            let candle = model
                .forward_injected(
                    &embeds,
                    &pos_t,
                    Some(&additive),
                    None,
                    idx.as_ref(),
                    &inject,
                )
                .unwrap();
            let btd = || vec![Dim::from("batch"), Dim::from("sequence"), d.into()];
            let mut inputs = vec![
                ("embeds", DataType::Float, btd()),
                (
                    "mask",
                    DataType::Int64,
                    vec!["batch".into(), "sequence".into()],
                ),
                (
                    "pos",
                    DataType::Int64,
                    vec![3usize.into(), "batch".into(), "sequence".into()],
                ),
                (
                    "rows",
                    DataType::Int64,
                    vec!["batch".into(), "positions".into()],
                ),
            ];
            let row_data = rows.clone().unwrap_or_default();
            let (btd_shape, bt_shape, pos_shape) = ([b, t, d], [b, t], [3, b, t]);
            let rows_shape = [b, if rows.is_some() { 2 } else { 0 }];
            let mut feeds = vec![
                (
                    "embeds",
                    InputTensor::F32 {
                        shape: &btd_shape,
                        data: &embed_data,
                    },
                ),
                (
                    "mask",
                    InputTensor::I64 {
                        shape: &bt_shape,
                        data: &mask,
                    },
                ),
                (
                    "pos",
                    InputTensor::I64 {
                        shape: &pos_shape,
                        data: &positions,
                    },
                ),
                (
                    "rows",
                    InputTensor::I64 {
                        shape: &rows_shape,
                        data: &row_data,
                    },
                ),
            ];
            for data in &inject_data {
                inputs.push(("inject", DataType::Float, btd()));
                feeds.push((
                    "inject",
                    InputTensor::F32 {
                        shape: &btd_shape,
                        data,
                    },
                ));
            }
            let with_rows = rows.is_some();
            let (shape, out) = run_block(&weights, &inputs, &feeds, |e, v| {
                let m = qwen2::attention_mask(e, &v[1], &v[0]).unwrap();
                let rows = with_rows.then_some(&v[3]);
                qwen2::body(
                    e,
                    &cfg,
                    variant,
                    "lm.model.",
                    &v[0],
                    &v[2],
                    &m,
                    None,
                    rows,
                    &v[4..],
                )
                .unwrap()
                .hidden
            });
            assert_eq!(shape, candle.dims());
            let diff = max_abs_diff(&out, &flat(&candle));
            println!("qwen-vl decoder variant {v_i} (rows {rows:?}): max |diff| {diff:.3e}");
            assert!(diff <= BLOCK_TOL, "variant {v_i} differs by {diff}");
        }
    }
}

/// Final RMSNorm, the rows asked for, the head (own or tied) and the f32 log-softmax.
#[test]
fn final_norm_and_head_match_candle() {
    for tied in [false, true] {
        let cfg = small_text(0, tied);
        let mut w = qwen2_weights(&cfg, 14);
        let (b, t, d, v) = (2, 6, cfg.hidden_size, cfg.vocab_size);
        let x = w.rng.tensor(&[b, t, d], 1.5);
        let rows: Vec<Vec<usize>> = vec![vec![5, 0, 3], vec![2, 2, 4]];
        let model = candle_qwen2(&cfg, &w);
        let pos = Tensor::zeros((b, t), DType::U32, &Device::Cpu).unwrap();
        let normed = model.forward(&x, &pos, None, None).unwrap();
        let mut want = Vec::new();
        for (r, idx) in rows.iter().enumerate() {
            let idx: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
            let idx = Tensor::new(idx.as_slice(), &Device::Cpu).unwrap();
            let h = normed.get(r).unwrap().index_select(&idx, 0).unwrap();
            let logits = model.logits(&h).unwrap();
            want.extend(flat(
                &candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap(),
            ));
        }

        let weights = Weights::from_var_builder(w.var_builder());
        let x_data = flat(&x);
        let row_data: Vec<i64> = rows.iter().flatten().map(|&i| i as i64).collect();
        let head = (!tied).then_some("lm.head");
        let (shape, out) = run_block(
            &weights,
            &[
                (
                    "hidden",
                    DataType::Float,
                    vec!["batch".into(), "sequence".into(), d.into()],
                ),
                (
                    "rows",
                    DataType::Int64,
                    vec!["batch".into(), "positions".into()],
                ),
            ],
            &[
                (
                    "hidden",
                    InputTensor::F32 {
                        shape: &[b, t, d],
                        data: &x_data,
                    },
                ),
                (
                    "rows",
                    InputTensor::I64 {
                        shape: &[b, 3],
                        data: &row_data,
                    },
                ),
            ],
            |e, vals| {
                let h = e
                    .rms_norm("lm.model.norm", d, cfg.rms_norm_eps, &vals[0])
                    .unwrap();
                let h = qwen2::gather_rows(e, &h, &vals[1], 1).unwrap();
                qwen2::head_log_probs(e, &cfg, head, "lm.model.", &h).unwrap()
            },
        );
        assert_eq!(shape, [b, 3, v]);
        let diff = max_abs_diff(&out, &want);
        println!("final norm + head (tied: {tied}): max |diff| {diff:.3e}");
        assert!(diff <= BLOCK_TOL, "head (tied: {tied}) differs by {diff}");
    }
}

// ---------------------------------------------------------------------------------------------
// Whole exports of the golden checkpoint.

fn export(precision: Precision) -> (tempfile::TempDir, ExportReport) {
    let dir = tempfile::tempdir().unwrap();
    let opts = ExportOptions {
        precision,
        ..Default::default()
    };
    let report = export_onnx(&golden_model_dir().unwrap(), dir.path(), &opts)
        .unwrap_or_else(|e| panic!("export failed: {e}"));
    (dir, report)
}

fn ort_backend(dir: &Path) -> OrtBackend {
    OrtBackend::open(dir, &SessionConfig::default()).unwrap_or_else(|e| panic!("{e}"))
}

fn candle_backend() -> CandleBackend {
    let model =
        LlavaOnevision::load(&golden_model_dir().unwrap(), DType::F32, &Device::Cpu).unwrap();
    CandleBackend::new(model).unwrap()
}

#[test]
fn vision_graph_matches_encode_tiles_on_golden_pixels() {
    let (dir, _) = export(Precision::F32);
    let ort = ort_backend(dir.path());
    let model =
        LlavaOnevision::load(&golden_model_dir().unwrap(), DType::F32, &Device::Cpu).unwrap();
    let expected = golden_tensors().unwrap();
    let mut worst = 0f32;
    let mut batches = 0;
    for case in golden_cases().unwrap() {
        let mut tiles = Vec::new();
        if let Some(pix) = expected.get(&format!("{}.pixel_values", case.name)) {
            for (i, n) in case.num_patches_per_image.iter().enumerate() {
                tiles.push(pix.get(i).unwrap().narrow(0, 0, *n).unwrap());
            }
        }
        if let Some(frames) = expected.get(&format!("{}.pixel_values_videos", case.name)) {
            tiles.push(frames.clone());
        }
        for t in tiles {
            let want = model.encode_tiles(&t).unwrap();
            let got = ort.encode_tiles(&t).unwrap();
            assert_eq!(got.dims(), want.dims());
            worst = worst.max(max_abs_diff(&flat(&got), &flat(&want)));
            batches += 1;
        }
    }
    println!("vision graph vs encode_tiles: {batches} tile batches, max |diff| {worst:.3e}");
    assert!(batches >= 4);
    assert!(worst <= BLOCK_TOL, "vision features differ by {worst}");
}

/// `text` tokenized with the case's media, and its merged embeddings [T, hidden].
fn embed(
    backend: &dyn Backend,
    tok: &PromptTokenizer,
    text: &str,
    media: &MediaFeatures,
) -> (Tokenized, Tensor) {
    let lens = |ts: &[Tensor]| ts.iter().map(|t| t.dim(0).unwrap()).collect::<Vec<_>>();
    let tokens = tok
        .encode(text, &lens(&media.images), &lens(&media.videos))
        .unwrap();
    let text_embeds = backend.embed_tokens(&tokens.ids).unwrap();
    let merged = merge_media(&text_embeds, &tokens, media).unwrap();
    (tokens, merged)
}

/// The rows predicting tokens `from..` and the sum of those tokens' log-probs (f64).
fn completion(tokens: &Tokenized, from: usize) -> (Vec<usize>, Vec<u32>) {
    let n = tokens.ids.len();
    ((from - 1..n - 1).collect(), tokens.ids[from..].to_vec())
}

fn summed(log_probs: &Tensor, targets: &[u32]) -> f64 {
    let rows = log_probs
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec2::<f64>()
        .unwrap();
    rows.iter().zip(targets).map(|(r, &t)| r[t as usize]).sum()
}

#[test]
fn decoder_log_probs_match_candle_and_transformers() {
    let (dir, _) = export(Precision::F32);
    let ort = ort_backend(dir.path());
    let candle = candle_backend();
    let ort_tok = PromptTokenizer::load(dir.path(), ort.config()).unwrap();
    let candle_tok = PromptTokenizer::load(&golden_model_dir().unwrap(), candle.config()).unwrap();
    let expected = golden_tensors().unwrap();
    let cases = golden_cases().unwrap();

    let mut seqs = Vec::new();
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    let mut candle_lp = Vec::new();
    let mut candle_seqs = Vec::new();
    for case in &cases {
        let (tokens, merged) = embed(
            &ort,
            &ort_tok,
            &case.text,
            &common::case_media(&ort, case, &expected),
        );
        let want_ids = expected[&format!("{}.input_ids", case.name)]
            .to_vec1::<i64>()
            .unwrap();
        assert_eq!(
            tokens.ids.iter().map(|&i| i as i64).collect::<Vec<_>>(),
            want_ids,
            "{}: input ids",
            case.name
        );
        let (pos, tgt) = completion(&tokens, case.prompt_len);
        let (ctokens, cmerged) = embed(
            &candle,
            &candle_tok,
            &case.text,
            &common::case_media(&candle, case, &expected),
        );
        assert_eq!(ctokens, tokens);
        let lp = candle
            .log_probs_at(std::slice::from_ref(&cmerged), std::slice::from_ref(&pos))
            .unwrap()
            .remove(0);
        candle_lp.push(lp);
        candle_seqs.push(cmerged);
        seqs.push(merged);
        rows.push(pos);
        targets.push(tgt);
    }

    // candle batches them too: right padding, and row lists of different lengths.
    let candle_batch = candle.log_probs_at(&candle_seqs, &rows).unwrap();
    let candle_pad = candle_batch
        .iter()
        .zip(&candle_lp)
        .map(|(b, a)| max_abs_diff(&flat(b), &flat(a)))
        .fold(0f32, f32::max);
    println!("candle batch vs alone: {candle_pad:.3e}");
    assert!(
        candle_pad <= 1e-5,
        "candle's batch changed log-probs by {candle_pad}"
    );

    // One right-padded batch of every case through ONNX Runtime.
    let start = Instant::now();
    let ort_lp = ort.log_probs_at(&seqs, &rows).unwrap();
    let batched = start.elapsed();
    let longest = seqs.iter().map(|s| s.dim(0).unwrap()).max().unwrap();
    println!(
        "ORT decoder forward: batch of {} (up to {longest} tokens) in {:.2} ms",
        seqs.len(),
        batched.as_secs_f64() * 1e3
    );
    let mut worst_rows = 0f32;
    let mut worst_sum = 0f64;
    for (k, case) in cases.iter().enumerate() {
        let d = max_abs_diff(&flat(&ort_lp[k]), &flat(&candle_lp[k]));
        let lp = summed(&ort_lp[k], &targets[k]);
        let err = (lp - case.completion_logprob).abs();
        println!(
            "{}: log-prob rows max |ort - candle| {d:.3e}; completion {lp:.6} vs transformers {:.6} (|diff| {err:.2e})",
            case.name, case.completion_logprob
        );
        worst_rows = worst_rows.max(d);
        worst_sum = worst_sum.max(err);
        assert!(
            d <= 1e-4,
            "{}: ORT and candle log-probs differ by {d}",
            case.name
        );
        assert!(
            err <= 1e-3,
            "{}: completion log-prob off by {err}",
            case.name
        );
    }
    // Alone (no padding) the same as in the batch.
    let alone = ort.log_probs_at(&seqs[..1], &rows[..1]).unwrap().remove(0);
    let pad_effect = max_abs_diff(&flat(&alone), &flat(&ort_lp[0]));
    println!("max |ort - candle| {worst_rows:.3e}, max completion error {worst_sum:.2e}, batch vs alone {pad_effect:.3e}");
    let past = vec![seqs[0].dim(0).unwrap()];
    let err = ort
        .log_probs_at(&seqs[..1], &[past])
        .unwrap_err()
        .to_string();
    assert!(err.contains("past the sequence"), "{err}");
    let err = ort.embed_tokens(&[576]).unwrap_err().to_string();
    assert!(err.contains("outside the vocabulary"), "{err}");
    assert!(
        pad_effect <= 1e-5,
        "padding changed a sequence's log-probs by {pad_effect}"
    );
}

const VERDICTS: [&str; 3] = [
    "Image 1 is better than Image 2.",
    "Image 2 is better than Image 1.",
    "Both images are equally good.",
];

/// Summed log-prob of each verdict after the pair case's prompt, and every completion row.
fn verdict_scores(backend: &dyn Backend, dir: &Path) -> (Vec<f64>, Vec<Tensor>) {
    let tok = PromptTokenizer::load(dir, backend.config()).unwrap();
    let expected = golden_tensors().unwrap();
    let case = golden_cases()
        .unwrap()
        .into_iter()
        .find(|c| c.name == "pair_tall_and_large")
        .unwrap();
    let media = common::case_media(backend, &case, &expected);
    let (prompt, _) = embed(backend, &tok, &case.prompt, &media);
    assert_eq!(prompt.ids.len(), case.prompt_len);
    let mut seqs = Vec::new();
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for v in VERDICTS {
        let (tokens, merged) = embed(backend, &tok, &format!("{}{v}", case.prompt), &media);
        assert_eq!(tokens.ids[..case.prompt_len], prompt.ids[..]);
        let (pos, tgt) = completion(&tokens, case.prompt_len);
        seqs.push(merged);
        rows.push(pos);
        targets.push(tgt);
    }
    let lp = backend.log_probs_at(&seqs, &rows).unwrap();
    let scores = lp.iter().zip(&targets).map(|(l, t)| summed(l, t)).collect();
    (scores, lp)
}

fn argmax(v: &[f64]) -> usize {
    (0..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best })
}

fn data_bytes(r: &ExportReport) -> u64 {
    r.vision.data_bytes + r.decoder.data_bytes
}

#[test]
fn fp16_export_is_half_the_size_and_agrees_on_the_verdict() {
    let (dir32, r32) = export(Precision::F32);
    let (dir16, r16) = export(Precision::F16);
    let (b32, b16) = (data_bytes(&r32), data_bytes(&r16));
    let emb = |d: &Path| {
        std::fs::metadata(d.join("embeddings.safetensors"))
            .unwrap()
            .len()
    };
    println!(
        "external data: fp32 {b32} bytes, fp16 {b16} bytes (ratio {:.3}); embeddings {} vs {} bytes",
        b16 as f64 / b32 as f64,
        emb(dir32.path()),
        emb(dir16.path())
    );
    // Norm weights stay f32 and small tensors are 64-byte aligned: a little over half.
    assert!(b16 * 2 <= b32 + b32 / 20, "fp16 data {b16} vs fp32 {b32}");
    assert!(b16 * 2 >= b32 - b32 / 20, "fp16 data {b16} vs fp32 {b32}");
    assert_eq!(r16.manifest.dtype, "fp16");

    let ort32 = ort_backend(dir32.path());
    let ort16 = ort_backend(dir16.path());
    assert_eq!(ort16.name(), "ort-cpu-fp16");
    let (s32, lp32) = verdict_scores(&ort32, dir32.path());
    let (s16, lp16) = verdict_scores(&ort16, dir16.path());
    let worst_row = lp32
        .iter()
        .zip(&lp16)
        .map(|(a, b)| max_abs_diff(&flat(a), &flat(b)))
        .fold(0.0, f32::max);
    let worst_sum = s32
        .iter()
        .zip(&s16)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    for (k, v) in VERDICTS.iter().enumerate() {
        println!("{v:?}: fp32 {:.5}, fp16 {:.5}", s32[k], s16[k]);
    }
    println!("fp16 vs fp32: max |log-prob diff| per row {worst_row:.3e}, per verdict sum {worst_sum:.3e}");
    assert_eq!(argmax(&s16), argmax(&s32), "fp16 picks another verdict");
}

#[test]
fn onnx_checker_accepts_golden_exports() {
    let (dir32, r32) = export(Precision::F32);
    let (dir16, r16) = export(Precision::F16);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/check-onnx.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .args([
            &r32.vision.model,
            &r32.decoder.model,
            &r16.vision.model,
            &r16.decoder.model,
        ])
        .output()
        .unwrap_or_else(|e| panic!("python3 could not be started: {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    println!("{text}");
    assert!(
        out.status.success(),
        "onnx checker failed (needs `pip install onnx`):\n{text}"
    );
    assert!(text.contains("4 passed"), "{text}");
    drop((dir32, dir16));
}

#[test]
fn export_writes_manifest_and_refuses_missing_weights() {
    let (dir, report) = export(Precision::F32);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["format_version"], 2);
    assert_eq!(manifest["kv_cache"]["num_layers"], 2);
    assert_eq!(
        manifest["graphs"]["decoder"]["inputs"][4]["name"],
        "past_key_values.0.key"
    );
    assert_eq!(
        manifest["graphs"]["decoder"]["outputs"][2]["name"],
        "present.0.value"
    );
    assert_eq!(
        manifest["graphs"]["decoder"]["outputs"][0]["name"],
        graphs::LOG_PROBS
    );
    assert_eq!(manifest["config"]["text"]["vocab_size"], 576);
    for f in [
        "tokenizer.json",
        "config.json",
        "processor_config.json",
        "chat_template.jinja",
    ] {
        assert!(dir.path().join(f).is_file(), "{f} not copied");
    }
    let files = report.files().unwrap();
    assert!(files.iter().all(|(_, n)| *n > 0));

    // A checkpoint without the final norm: the export names the key and writes no manifest.
    let broken = tempfile::tempdir().unwrap();
    let src = golden_model_dir().unwrap();
    let mut tensors =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    tensors.remove("language_model.model.norm.weight").unwrap();
    candle_core::safetensors::save(&tensors, broken.path().join("model.safetensors")).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), broken.path().join(f)).unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    let err = export_onnx(broken.path(), out.path(), &ExportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("language_model.model.norm.weight"), "{err}");
    assert!(!out.path().join("manifest.json").exists());

    let bad_opset = ExportOptions {
        opset: 21,
        ..Default::default()
    };
    let err = export_onnx(&src, out.path(), &bad_opset)
        .unwrap_err()
        .to_string();
    assert!(err.contains("opset 21"), "{err}");
}
