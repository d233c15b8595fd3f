//! Complete, tiny Stable Diffusion 1.5 and SDXL pipeline directories in diffusers' layout,
//! assembled from the repository's diffusion fixtures, for tests that need a whole generator
//! (sampling, Diffusion-DPO training) rather than one component.
//!
//! SD 1.5 ([`tiny_sd15_pipeline`]):
//!
//! | component | from | notes |
//! | --- | --- | --- |
//! | `unet/` | `fixtures/diffusion/unet/sd15/unet` | config.json as is; `diffusion_pytorch_model.safetensors` (float32) written from `weights.json` by `synthetic_weights::synthetic_tensors` (no salt) |
//! | `vae/` | `fixtures/diffusion/vae/sdxl_tiny/model` | 4 latent channels, 8x downsampling; the fp16 weights written as float32 `diffusion_pytorch_model.safetensors` (exact); `scaling_factor` set to SD 1.5's 0.18215 (the fixture has SDXL's 0.13025) |
//! | `text_encoder/` | `fixtures/diffusion/clip_text/text_encoder` | hidden 32 = the UNet's `cross_attention_dim`; the compact weights densified to float32 `model.safetensors` (zero rows for unused ids), as `models/tests/diffusion_clip_text.rs` does |
//! | `tokenizer/` | `fixtures/diffusion/clip_text/tokenizer` | copied |
//! | `scheduler/` | `fixtures/diffusion/scheduler/configs` | see [`TinyScheduler`] |
//!
//! `model_index.json` names `StableDiffusionPipeline` with no safety checker or feature
//! extractor, so `StableDiffusionPipeline.from_pretrained(dir)` loads the directory too.
//!
//! SDXL ([`tiny_sdxl_pipeline`], `StableDiffusionXLPipeline`, `force_zeros_for_empty_prompt`):
//! `unet/` from `fixtures/diffusion/pipeline/sdxl_unet` (the `unet/sdxl` fixture's blocks with
//! `cross_attention_dim` 80 = 32 + 48, the two encoders side by side, and a 48-wide pooled
//! embedding: `projection_class_embeddings_input_dim` 48 + 6·256), synthetic weights as above;
//! `vae/` as above with SDXL's own `scaling_factor` 0.13025; `text_encoder/` + `tokenizer/` as
//! above, `text_encoder_2/` (`CLIPTextModelWithProjection`) + `tokenizer_2/` from
//! `fixtures/diffusion/clip_text`; the scheduler SDXL's Euler by default.
//!
//! AnimateDiff ([`tiny_motion_pipeline_with`], `AnimateDiffPipeline`): the SD 1.5 components
//! above with `unet/` the `UNetMotionModel` of `fixtures/diffusion/unet_motion/v1_5_2`.
//!
//! `scripts/golden/make_pipeline.py` builds the same directories in Python (the goldens of
//! `fixtures/diffusion/pipeline` come from it). Both UNets' `sample_size` is 8: the default image
//! is [`TINY_SD15_SIZE`] pixels square (8 x 8 latents).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};
use unireward_models::diffusion::synthetic_weights::{synthetic_tensors, TensorSpec};

use crate::repo_dir;

/// The tiny pipeline's default height and width in pixels (UNet `sample_size` 8 × VAE factor 8).
pub const TINY_SD15_SIZE: usize = 64;

/// SD 1.5's VAE `scaling_factor`, written into the tiny SD 1.5 pipeline's `vae/config.json`
/// (the SDXL one keeps the fixture's 0.13025, SDXL's).
pub const SD15_SCALING_FACTOR: f64 = 0.18215;

/// Which `scheduler/scheduler_config.json` the tiny pipeline gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TinyScheduler {
    /// SD 1.5's own: `PNDMScheduler` (PLMS, `skip_prk_steps`), scaled_linear, leading,
    /// `steps_offset` 1 (`configs/sd15.json`).
    Pndm,
    /// SD 1.5's betas as `DDIMScheduler` (eta 0), `clip_sample` and `set_alpha_to_one` false.
    Ddim,
    /// SDXL base's `EulerDiscreteScheduler`, leading (`configs/sdxl.json`).
    EulerDiscrete,
    /// SDXL-Turbo's `EulerAncestralDiscreteScheduler`, trailing (`configs/sdxl_turbo.json`):
    /// an ancestral sampler that draws noise at every step, meant for 1-4 steps without
    /// classifier-free guidance.
    EulerAncestralTrailing,
}

impl TinyScheduler {
    pub const ALL: [TinyScheduler; 4] = [
        TinyScheduler::Pndm,
        TinyScheduler::Ddim,
        TinyScheduler::EulerDiscrete,
        TinyScheduler::EulerAncestralTrailing,
    ];

    /// The scheduler config this choice writes.
    pub fn config(self) -> Result<Value> {
        let configs = repo_dir().join("fixtures/diffusion/scheduler/configs");
        let (file, class) = match self {
            TinyScheduler::Pndm => ("sd15.json", None),
            TinyScheduler::Ddim => ("sd15.json", Some("DDIMScheduler")),
            TinyScheduler::EulerDiscrete => ("sdxl.json", None),
            TinyScheduler::EulerAncestralTrailing => ("sdxl_turbo.json", None),
        };
        let mut config = read_json(&configs.join(file))?;
        if let Some(class) = class {
            let obj = config
                .as_object_mut()
                .context("scheduler config is not an object")?;
            obj.insert("_class_name".into(), json!(class));
            obj.insert("clip_sample".into(), json!(false));
            obj.insert("set_alpha_to_one".into(), json!(false));
        }
        Ok(config)
    }

    /// diffusers' class name (`PNDMScheduler`, ...).
    pub fn class_name(self) -> &'static str {
        match self {
            TinyScheduler::Pndm => "PNDMScheduler",
            TinyScheduler::Ddim => "DDIMScheduler",
            TinyScheduler::EulerDiscrete => "EulerDiscreteScheduler",
            TinyScheduler::EulerAncestralTrailing => "EulerAncestralDiscreteScheduler",
        }
    }
}

/// Writes the tiny SD 1.5 pipeline (SD 1.5's PNDM scheduler) into `dir` (created if missing).
pub fn tiny_sd15_pipeline(dir: &Path) -> Result<()> {
    tiny_sd15_pipeline_with(dir, TinyScheduler::Pndm)
}

/// Writes the tiny SD 1.5 pipeline with `scheduler` into `dir` (created if missing).
pub fn tiny_sd15_pipeline_with(dir: &Path, scheduler: TinyScheduler) -> Result<()> {
    let fixtures = repo_dir().join("fixtures/diffusion");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_unet(dir, &fixtures.join("unet/sd15/unet"))?;
    write_vae(dir, Some(SD15_SCALING_FACTOR))?;
    write_text_encoder(dir, "")?;
    write_scheduler(dir, scheduler)?;
    write_json(
        &dir.join("model_index.json"),
        &json!({
            "_class_name": "StableDiffusionPipeline",
            "_diffusers_version": "0.42.1",
            "feature_extractor": [null, null],
            "image_encoder": [null, null],
            "requires_safety_checker": false,
            "safety_checker": [null, null],
            "scheduler": ["diffusers", scheduler.class_name()],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        }),
    )
}

/// Writes a tiny AnimateDiff (SD 1.5 + motion adapter v1-5-2) pipeline into `dir`: the tiny
/// SD 1.5 pipeline's VAE, text encoder, tokenizer and scheduler (`scheduler`), and as `unet/`
/// the `UNetMotionModel` of `fixtures/diffusion/unet_motion/v1_5_2` (the SD 1.5 fixture's
/// widths with 8-head motion modules), synthetic float32 weights as above.
pub fn tiny_motion_pipeline_with(dir: &Path, scheduler: TinyScheduler) -> Result<()> {
    let fixtures = repo_dir().join("fixtures/diffusion");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_unet(dir, &fixtures.join("unet_motion/v1_5_2/unet"))?;
    write_vae(dir, Some(SD15_SCALING_FACTOR))?;
    write_text_encoder(dir, "")?;
    write_scheduler(dir, scheduler)?;
    write_json(
        &dir.join("model_index.json"),
        &json!({
            "_class_name": "AnimateDiffPipeline",
            "_diffusers_version": "0.42.1",
            "feature_extractor": [null, null],
            "image_encoder": [null, null],
            "motion_adapter": [null, null],
            "scheduler": ["diffusers", scheduler.class_name()],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNetMotionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        }),
    )
}

/// Writes the tiny SDXL pipeline (SDXL base's Euler scheduler) into `dir`.
pub fn tiny_sdxl_pipeline(dir: &Path) -> Result<()> {
    tiny_sdxl_pipeline_with(dir, TinyScheduler::EulerDiscrete)
}

/// Writes the tiny SDXL pipeline with `scheduler` into `dir` (created if missing);
/// [`TinyScheduler::EulerAncestralTrailing`] makes it SDXL-Turbo-like.
pub fn tiny_sdxl_pipeline_with(dir: &Path, scheduler: TinyScheduler) -> Result<()> {
    let fixtures = repo_dir().join("fixtures/diffusion");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_unet(dir, &fixtures.join("pipeline/sdxl_unet"))?;
    write_vae(dir, None)?;
    write_text_encoder(dir, "")?;
    write_text_encoder(dir, "_2")?;
    write_scheduler(dir, scheduler)?;
    write_json(
        &dir.join("model_index.json"),
        &json!({
            "_class_name": "StableDiffusionXLPipeline",
            "_diffusers_version": "0.42.1",
            "feature_extractor": [null, null],
            "force_zeros_for_empty_prompt": true,
            "image_encoder": [null, null],
            "scheduler": ["diffusers", scheduler.class_name()],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "tokenizer_2": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        }),
    )
}

/// `unet/`: `src`'s config.json, and float32 weights from its `weights.json`.
fn write_unet(dir: &Path, src: &Path) -> Result<()> {
    let unet = make_dir(dir, "unet")?;
    copy(&src.join("config.json"), &unet.join("config.json"))?;
    let specs: Vec<TensorSpec> = serde_json::from_value(read_json(&src.join("weights.json"))?)
        .context("unet weights.json")?;
    let weights = synthetic_tensors(&specs, "", DType::F32, &Device::Cpu)?;
    save(&weights, &unet.join("diffusion_pytorch_model.safetensors"))
}

/// `vae/`: the `sdxl_tiny` VAE in float32, its `scaling_factor` replaced when given.
fn write_vae(dir: &Path, scaling_factor: Option<f64>) -> Result<()> {
    let src = repo_dir().join("fixtures/diffusion/vae/sdxl_tiny/model");
    let vae = make_dir(dir, "vae")?;
    let mut config = read_json(&src.join("config.json"))?;
    if let Some(sf) = scaling_factor {
        config["scaling_factor"] = json!(sf);
    }
    write_json(&vae.join("config.json"), &config)?;
    let weights = candle_core::safetensors::load(
        src.join("diffusion_pytorch_model.fp16.safetensors"),
        &Device::Cpu,
    )?
    .into_iter()
    .map(|(k, v)| Ok((k, v.to_dtype(DType::F32)?)))
    .collect::<Result<HashMap<_, _>>>()?;
    save(&weights, &vae.join("diffusion_pytorch_model.safetensors"))
}

/// `text_encoder{suffix}/` (dense float32 `model.safetensors`) and `tokenizer{suffix}/`.
fn write_text_encoder(dir: &Path, suffix: &str) -> Result<()> {
    let clip = repo_dir().join("fixtures/diffusion/clip_text");
    let name = format!("text_encoder{suffix}");
    let src = clip.join(&name);
    let out = make_dir(dir, &name)?;
    copy(&src.join("config.json"), &out.join("config.json"))?;
    let vocab = read_json(&src.join("config.json"))?["vocab_size"]
        .as_u64()
        .with_context(|| format!("{name} config: vocab_size"))? as usize;
    let dense = densify(&src.join("weights.compact.safetensors"), vocab)?;
    save(&dense, &out.join("model.safetensors"))?;

    let name = format!("tokenizer{suffix}");
    let src = clip.join(&name);
    let out = make_dir(dir, &name)?;
    for entry in std::fs::read_dir(&src).with_context(|| src.display().to_string())? {
        let entry = entry?;
        copy(&entry.path(), &out.join(entry.file_name()))?;
    }
    Ok(())
}

fn write_scheduler(dir: &Path, scheduler: TinyScheduler) -> Result<()> {
    let sched = make_dir(dir, "scheduler")?;
    write_json(&sched.join("scheduler_config.json"), &scheduler.config()?)
}

/// The compact CLIP checkpoint (every tensor under its hub name, the token embedding as
/// `<name>.rows` + `<name>.values`) as the dense float32 state dict transformers ran.
fn densify(path: &Path, vocab: usize) -> Result<HashMap<String, Tensor>> {
    let compact = candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| path.display().to_string())?;
    let mut dense = HashMap::new();
    for (name, tensor) in &compact {
        if name.ends_with(".rows") {
            continue;
        }
        let Some(base) = name.strip_suffix(".values") else {
            dense.insert(name.clone(), tensor.to_dtype(DType::F32)?);
            continue;
        };
        let rows = compact
            .get(&format!("{base}.rows"))
            .with_context(|| format!("{base}.values without {base}.rows"))?
            .to_vec1::<i64>()?;
        let values = tensor.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let d = values.first().map_or(0, Vec::len);
        let mut data = vec![0f32; vocab * d];
        for (&r, row) in rows.iter().zip(values) {
            let r = usize::try_from(r).ok().filter(|&r| r < vocab);
            let Some(r) = r else {
                bail!("{base}: row id outside the vocabulary of {vocab}");
            };
            data[r * d..(r + 1) * d].copy_from_slice(&row);
        }
        dense.insert(
            base.to_string(),
            Tensor::from_vec(data, (vocab, d), &Device::Cpu)?,
        );
    }
    Ok(dense)
}

fn make_dir(dir: &Path, name: &str) -> Result<std::path::PathBuf> {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    Ok(d)
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

fn save(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    candle_core::safetensors::save(tensors, path).with_context(|| path.display().to_string())
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    serde_json::from_str(&text).with_context(|| path.display().to_string())
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    std::fs::write(path, text).with_context(|| path.display().to_string())
}

/// Makes the pipeline in `dir`'s VAE encode as a trained one does: an untrained VAE's
/// posterior has unit variance (log-variance ~0), so a latent sample is mostly sampling noise
/// and chosen and rejected images hardly differ after it; a trained one's is narrow, and its
/// scaling factor brings the latents to unit variance. Here the log-variance is set to -12
/// (quant_conv's log-variance half: zero weights, bias -12) and the scaling factor to 2.
pub fn sharpen_vae(dir: &Path) -> Result<()> {
    let weights = dir.join("vae/diffusion_pytorch_model.safetensors");
    let mut t = candle_core::safetensors::load(&weights, &Device::Cpu)?;
    let w = t
        .get("quant_conv.weight")
        .context("quant_conv.weight")?
        .clone();
    let b = t.get("quant_conv.bias").context("quant_conv.bias")?.clone();
    let half = w.dim(0)? / 2;
    let w = Tensor::cat(
        &[
            w.narrow(0, 0, half)?,
            w.narrow(0, half, half)?.zeros_like()?,
        ],
        0,
    )?;
    let b = Tensor::cat(
        &[
            b.narrow(0, 0, half)?,
            (b.narrow(0, half, half)?.zeros_like()? - 12.0)?,
        ],
        0,
    )?;
    t.insert("quant_conv.weight".into(), w);
    t.insert("quant_conv.bias".into(), b);
    candle_core::safetensors::save(&t, &weights)?;
    let config_path = dir.join("vae/config.json");
    let mut config = read_json(&config_path)?;
    config["scaling_factor"] = json!(2.0);
    write_json(&config_path, &config)
}
