//! The demo's image generator: a tiny Stable-Diffusion-1.5-style pipeline in diffusers'
//! directory layout, sized for the world's 32x32 images, written from scratch.
//!
//! | component | what |
//! | --- | --- |
//! | `vae/` | `AutoencoderKL` with one downsample (32x32 RGB → 16x16x3 latents), its weights **set by hand, not learnt**: the encoder averages each 2x2 block of pixels, the decoder repeats each latent pixel 2x2 (details below) |
//! | `unet/` | `UNet2DConditionModel`, 16x16x3, blocks (32, 64), one cross-attention level; random weights (`synthetic_weights`) |
//! | `text_encoder/` | `CLIPTextModel`, 32 wide, 2 layers, 32 positions; random weights, frozen (as train_text_to_image.py freezes it) |
//! | `tokenizer/` | CLIP's BPE over the bytes, with merges that spell the captions' words |
//! | `scheduler/` | `DDIMScheduler` with SD 1.5's scaled-linear betas |
//!
//! Why a hand-set VAE: a random one does not invert itself, and training one is a second
//! model to train in the demo's minutes. An average-pooling encoder loses only what is finer
//! than 2x2 pixels (the world's shapes are 5 to 10 pixels wide), so the UNet is the one thing
//! that learns. In `AutoencoderKL`'s layout that takes one trick: the output norms (GroupNorm,
//! then SiLU) sit before `conv_out` and cannot be switched off, so `conv_in` writes each colour
//! channel twice (s and −s, so that the group mean is 0) beside ten channels held at ±20 (so
//! that the group's deviation is √250 whatever the picture, to 0.08%); the norm's gain gives the
//! scale back and its bias of 12 puts SiLU where it is the identity to 2e-4; `conv_out` takes
//! the 12 away. Every resnet's `conv2` is zero, so each resnet passes its input on.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde_json::{json, Value};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use unireward_models::diffusion::clip_text::{ClipTextConfig, ClipTextModel};
use unireward_models::diffusion::synthetic_weights::{synthetic_tensor, TensorSpec};
use unireward_models::diffusion::unet::{UNet2DConditionModel, UNetConfig};
use unireward_models::diffusion::vae::{AttentionNames, AutoencoderKL, VaeConfig};

use crate::error::{Error, Result};
use crate::jsonl::write_json;

/// Latent channels: the three colours, averaged.
const LATENT: usize = 3;
/// The VAE's width: 3 colours, their negatives, 10 anchors.
const VAE_WIDTH: usize = 16;
/// The anchors' level.
const ANCHOR: f64 = 20.0;
/// What the output norms add before SiLU (and `conv_out` takes away).
const SILU_SHIFT: f64 = 12.0;
/// The tokenizer's (and text encoder's) sequence length: the longest caption is 8 words.
const MAX_TOKENS: usize = 32;

/// Sizes of the generator.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GeneratorShape {
    pub unet_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub text_hidden: usize,
    pub text_layers: usize,
}

fn io<E: std::fmt::Display>(path: &Path) -> impl Fn(E) -> Error + '_ {
    move |e| Error::Invalid(format!("{}: {e}", path.display()))
}

fn save(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    candle_core::safetensors::save(tensors, path).map_err(io(path))
}

/// Every tensor a model built by `build` asks its `VarBuilder` for, by name.
fn names_and_shapes(
    build: impl FnOnce(VarBuilder) -> Result<()>,
) -> Result<BTreeMap<String, Vec<usize>>> {
    let vars = VarMap::new();
    build(VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu))?;
    let data = vars
        .data()
        .lock()
        .map_err(|e| Error::Invalid(e.to_string()))?;
    Ok(data
        .iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect())
}

/// Deterministic random weights for every name (`synthetic_weights`: the same scales as
/// PyTorch's default initialisation, a function of the name only).
fn random_weights(shapes: &BTreeMap<String, Vec<usize>>) -> Result<HashMap<String, Tensor>> {
    shapes
        .iter()
        .map(|(name, shape)| {
            let spec = TensorSpec {
                name: name.clone(),
                shape: shape.clone(),
            };
            Ok((name.clone(), synthetic_tensor(&spec, "", &Device::Cpu)?))
        })
        .collect()
}

pub fn unet_config(shape: &GeneratorShape, text_hidden: usize) -> Value {
    let n = shape.unet_channels.len();
    // Cross-attention at every level but the full-resolution one (SD 1.5 has it at every level
    // but the lowest): self-attention over all 256 latent pixels of 16x16 made a pretraining
    // step 1.3-1.6x slower (40 batch-16 steps: 51.8 s against 39.0 s), and the mid block
    // still attends at 8x8.
    let down: Vec<&str> = (0..n)
        .map(|i| {
            if i > 0 {
                "CrossAttnDownBlock2D"
            } else {
                "DownBlock2D"
            }
        })
        .collect();
    let up: Vec<&str> = (0..n)
        .map(|i| {
            if i + 1 < n {
                "CrossAttnUpBlock2D"
            } else {
                "UpBlock2D"
            }
        })
        .collect();
    json!({
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": "0.42.1",
        "sample_size": 16,
        "in_channels": LATENT,
        "out_channels": LATENT,
        "center_input_sample": false,
        "flip_sin_to_cos": true,
        "freq_shift": 0,
        "down_block_types": down,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": up,
        "block_out_channels": shape.unet_channels,
        "layers_per_block": shape.layers_per_block,
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "act_fn": "silu",
        "norm_num_groups": 8,
        "norm_eps": 1e-5,
        "cross_attention_dim": text_hidden,
        "attention_head_dim": 8
    })
}

fn write_unet(dir: &Path, shape: &GeneratorShape) -> Result<()> {
    let config = unet_config(shape, shape.text_hidden);
    let parsed: UNetConfig = serde_json::from_value(config.clone())
        .map_err(|e| Error::Invalid(format!("unet config: {e}")))?;
    let spec = parsed.resolve()?;
    let shapes = names_and_shapes(|vb| {
        UNet2DConditionModel::new(&spec, vb)?;
        Ok(())
    })?;
    write_json(&dir.join("unet/config.json"), &config)?;
    save(
        &dir.join("unet/diffusion_pytorch_model.safetensors"),
        &random_weights(&shapes)?,
    )
}

pub fn vae_config(scaling_factor: f64) -> Value {
    json!({
        "_class_name": "AutoencoderKL",
        "_diffusers_version": "0.42.1",
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
        "block_out_channels": [VAE_WIDTH, VAE_WIDTH],
        "layers_per_block": 1,
        "act_fn": "silu",
        "latent_channels": LATENT,
        "norm_num_groups": 1,
        "sample_size": 32,
        "scaling_factor": scaling_factor,
        "force_upcast": false,
        "use_quant_conv": false,
        "use_post_quant_conv": false,
        "mid_block_add_attention": false
    })
}

/// A [out, in, 3, 3] kernel with `taps` (out, in, y, x, value).
fn kernel(shape: &[usize], taps: &[(usize, usize, usize, usize, f64)]) -> Result<Tensor> {
    let (o, i, kh, kw) = (shape[0], shape[1], shape[2], shape[3]);
    let mut w = vec![0f32; o * i * kh * kw];
    for &(a, b, y, x, v) in taps {
        w[((a * i + b) * kh + y) * kw + x] = v as f32;
    }
    Ok(Tensor::from_vec(w, (o, i, kh, kw), &Device::Cpu)?)
}

fn vector(n: usize, f: impl Fn(usize) -> f64) -> Result<Tensor> {
    let v: Vec<f32> = (0..n).map(|k| f(k) as f32).collect();
    Ok(Tensor::from_vec(v, n, &Device::Cpu)?)
}

/// The ±20 anchors' values on channels 6..16 (channel k: + for even k, − for odd).
fn anchor(k: usize) -> f64 {
    match k {
        0..=5 => 0.0,
        _ if k.is_multiple_of(2) => ANCHOR,
        _ => -ANCHOR,
    }
}

/// `conv_in` of encoder or decoder: input channel c to c and −c (the anchors come from the
/// bias, [`anchor`]).
fn spread(shape: &[usize]) -> Result<Tensor> {
    let taps: Vec<_> = (0..LATENT)
        .flat_map(|c| [(c, c, 1, 1, 1.0), (c + LATENT, c, 1, 1, -1.0)])
        .collect();
    kernel(shape, &taps)
}

/// The output norm's gain and bias: the anchors' deviation back, SiLU's linear region.
fn output_norm() -> Result<(Tensor, Tensor)> {
    let sigma = (10.0 * ANCHOR * ANCHOR / VAE_WIDTH as f64).sqrt();
    Ok((
        vector(VAE_WIDTH, |_| sigma)?,
        vector(VAE_WIDTH, |k| if k < 2 * LATENT { SILU_SHIFT } else { 0.0 })?,
    ))
}

fn vae_weights(shapes: &BTreeMap<String, Vec<usize>>) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for (name, shape) in shapes {
        let t = if name.ends_with("conv_in.weight") {
            spread(shape)?
        } else if name.ends_with("conv_in.bias") {
            vector(VAE_WIDTH, anchor)?
        } else if name.ends_with("conv_norm_out.weight") {
            output_norm()?.0
        } else if name.ends_with("conv_norm_out.bias") {
            output_norm()?.1
        } else if name == "encoder.conv_out.weight" {
            // The mean: the colours; the log-variance: 0 weights and a bias of −20.
            let taps: Vec<_> = (0..LATENT).map(|c| (c, c, 1, 1, 1.0)).collect();
            kernel(shape, &taps)?
        } else if name == "encoder.conv_out.bias" {
            vector(2 * LATENT, |k| if k < LATENT { -SILU_SHIFT } else { -20.0 })?
        } else if name == "decoder.conv_out.weight" {
            let taps: Vec<_> = (0..LATENT).map(|c| (c, c, 1, 1, 1.0)).collect();
            kernel(shape, &taps)?
        } else if name == "decoder.conv_out.bias" {
            vector(LATENT, |_| -SILU_SHIFT)?
        } else if name.contains("downsamplers") && name.ends_with("weight") {
            // Stride 2 over the input padded on the right and bottom: taps (0..2, 0..2)
            // cover one 2x2 block.
            let taps: Vec<_> = (0..VAE_WIDTH)
                .flat_map(|c| [(0, 0), (0, 1), (1, 0), (1, 1)].map(|(y, x)| (c, c, y, x, 0.25)))
                .collect();
            kernel(shape, &taps)?
        } else if name.contains("upsamplers") && name.ends_with("weight") {
            let taps: Vec<_> = (0..VAE_WIDTH).map(|c| (c, c, 1, 1, 1.0)).collect();
            kernel(shape, &taps)?
        } else if shape.len() == 1 && name.contains("norm") && name.ends_with("weight") {
            Tensor::ones(shape.as_slice(), DType::F32, &Device::Cpu)?
        } else {
            // Every resnet's convolutions and every other bias: zero, so that resnets pass
            // their input on.
            Tensor::zeros(shape.as_slice(), DType::F32, &Device::Cpu)?
        };
        out.insert(name.clone(), t);
    }
    Ok(out)
}

fn write_vae(dir: &Path, scaling_factor: f64) -> Result<()> {
    let config = vae_config(scaling_factor);
    let parsed: VaeConfig = serde_json::from_value(config.clone())
        .map_err(|e| Error::Invalid(format!("vae config: {e}")))?;
    let shapes = names_and_shapes(|vb| {
        AutoencoderKL::new(parsed, vb, AttentionNames::Diffusers)?;
        Ok(())
    })?;
    write_json(&dir.join("vae/config.json"), &config)?;
    save(
        &dir.join("vae/diffusion_pytorch_model.safetensors"),
        &vae_weights(&shapes)?,
    )
}

/// The tokenizer's vocabulary and merges: the 256 byte symbols with and without `</w>`, then
/// for each word the merges that build it left to right, then the two specials.
fn tokenizer_files(words: &BTreeSet<String>) -> (Vec<String>, Vec<(String, String)>) {
    let mut alphabet: Vec<String> = ByteLevel::alphabet()
        .into_iter()
        .map(String::from)
        .collect();
    alphabet.sort();
    let mut vocab: Vec<String> = alphabet.clone();
    vocab.extend(alphabet.iter().map(|c| format!("{c}</w>")));
    let mut merges: Vec<(String, String)> = Vec::new();
    let mut known: BTreeSet<String> = vocab.iter().cloned().collect();
    for word in words {
        let chars: Vec<String> = word.chars().map(String::from).collect();
        let mut left = chars[0].clone();
        for (k, c) in chars.iter().enumerate().skip(1) {
            let right = if k + 1 == chars.len() {
                format!("{c}</w>")
            } else {
                c.clone()
            };
            let joined = format!("{left}{right}");
            if known.insert(joined.clone()) {
                merges.push((left.clone(), right));
                vocab.push(joined.clone());
            }
            left = joined;
        }
    }
    vocab.push("<|startoftext|>".into());
    vocab.push("<|endoftext|>".into());
    (vocab, merges)
}

fn write_tokenizer(dir: &Path, words: &BTreeSet<String>) -> Result<usize> {
    let (vocab, merges) = tokenizer_files(words);
    let tok = dir.join("tokenizer");
    let map: serde_json::Map<String, Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    write_json(&tok.join("vocab.json"), &Value::Object(map))?;
    let mut text = String::from("#version: 0.2\n");
    for (a, b) in &merges {
        text.push_str(&format!("{a} {b}\n"));
    }
    let path = tok.join("merges.txt");
    std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
    let special = |s: &str| {
        json!({"content": s, "lstrip": false, "normalized": true, "rstrip": false,
               "single_word": false})
    };
    write_json(
        &tok.join("tokenizer_config.json"),
        &json!({
            "add_prefix_space": false,
            "bos_token": special("<|startoftext|>"),
            "eos_token": special("<|endoftext|>"),
            "unk_token": special("<|endoftext|>"),
            "pad_token": "<|endoftext|>",
            "do_lower_case": true,
            "errors": "replace",
            "model_max_length": MAX_TOKENS,
            "tokenizer_class": "CLIPTokenizer"
        }),
    )?;
    Ok(vocab.len())
}

fn write_text_encoder(dir: &Path, shape: &GeneratorShape, vocab: usize) -> Result<()> {
    let config = json!({
        "architectures": ["CLIPTextModel"],
        "model_type": "clip_text_model",
        "attention_dropout": 0.0,
        "bos_token_id": vocab - 2,
        "eos_token_id": vocab - 1,
        "pad_token_id": vocab - 1,
        "hidden_act": "quick_gelu",
        "hidden_size": shape.text_hidden,
        "intermediate_size": 2 * shape.text_hidden,
        "layer_norm_eps": 1e-5,
        "max_position_embeddings": MAX_TOKENS,
        "num_attention_heads": 4,
        "num_hidden_layers": shape.text_layers,
        "projection_dim": shape.text_hidden,
        "torch_dtype": "float32",
        "vocab_size": vocab
    });
    let parsed: ClipTextConfig = serde_json::from_value(config.clone())
        .map_err(|e| Error::Invalid(format!("text encoder config: {e}")))?;
    let shapes = names_and_shapes(|vb| {
        ClipTextModel::new(parsed, vb)?;
        Ok(())
    })?;
    write_json(&dir.join("text_encoder/config.json"), &config)?;
    save(
        &dir.join("text_encoder/model.safetensors"),
        &random_weights(&shapes)?,
    )
}

fn write_scheduler(dir: &Path) -> Result<()> {
    write_json(
        &dir.join("scheduler/scheduler_config.json"),
        &json!({
            "_class_name": "DDIMScheduler",
            "_diffusers_version": "0.42.1",
            "beta_start": 0.00085,
            "beta_end": 0.012,
            "beta_schedule": "scaled_linear",
            "num_train_timesteps": 1000,
            "clip_sample": false,
            "set_alpha_to_one": false,
            "steps_offset": 1,
            "prediction_type": "epsilon",
            "timestep_spacing": "leading",
            "trained_betas": null
        }),
    )
}

/// Writes the untrained pipeline into `dir`: the tokenizer spells `words`; `scaling_factor`
/// brings the latents to unit deviation (as SD's 0.18215 does for its VAE).
pub fn write_pipeline(
    dir: &Path,
    shape: &GeneratorShape,
    words: &BTreeSet<String>,
    scaling_factor: f64,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    write_unet(dir, shape)?;
    write_vae(dir, scaling_factor)?;
    let vocab = write_tokenizer(dir, words)?;
    write_text_encoder(dir, shape, vocab)?;
    write_scheduler(dir)?;
    write_json(
        &dir.join("model_index.json"),
        &json!({
            "_class_name": "StableDiffusionPipeline",
            "_diffusers_version": "0.42.1",
            "feature_extractor": [null, null],
            "image_encoder": [null, null],
            "requires_safety_checker": false,
            "safety_checker": [null, null],
            "scheduler": ["diffusers", "DDIMScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        }),
    )
}
