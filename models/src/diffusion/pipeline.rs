//! Text-to-image sampling from a diffusers pipeline directory, as diffusers'
//! `StableDiffusionPipeline` (SD 1.x / 2.x) and `StableDiffusionXLPipeline` (SDXL base,
//! SDXL-Turbo) compute it, with the randomness made ours: the candidates that `engine pairs`
//! judges and Diffusion-DPO trains on are drawn without Python.
//!
//! [`TextToImage::load`] reads `model_index.json` for the pipeline class and its components
//! (`tokenizer/`, `text_encoder/`, for SDXL `tokenizer_2/` and `text_encoder_2/`, `unet/`, `vae/`,
//! `scheduler/`). [`TextToImage::generate`] then runs what the pipelines' `__call__` runs:
//!
//! 1. the prompt embeddings: SD's `last_hidden_state` (or with `clip_skip` the final-normed
//!    earlier state), SDXL's penultimate states of both encoders side by side plus the pooled
//!    projection and the six time ids `(height, width, 0, 0, height, width)`; with
//!    classifier-free guidance (`guidance_scale > 1`, diffusers' `do_classifier_free_guidance`)
//!    the negative prompts' embeddings first in the batch (SD: `""` when none is given; SDXL:
//!    zeros when none is given and `force_zeros_for_empty_prompt`, its default);
//! 2. initial latents `[1, C, H/f, W/f]` per candidate from [`gaussian`] with seed `seed + j`
//!    for the `j`-th prompt of the batch, times the sampler's `init_noise_sigma`;
//! 3. per timestep: `scale_model_input`, the UNet on the (doubled) batch, the guidance
//!    `uncond + g·(cond − uncond)`, the sampler's `step`; a step that draws noise (Euler
//!    ancestral, DDPM) gets, for candidate `j`, `gaussian([1, C, h, w], step_noise_seed(seed +
//!    j, k))` at step `k` ([`step_noise_seed`]);
//! 4. the VAE decoder on `latents / scaling_factor` (SDXL: `latents·std / scaling + mean` when
//!    the VAE has `latents_mean` / `latents_std`), one image at a time;
//! 5. diffusers' postprocess: `(x / 2 + 0.5).clamp(0, 1)`, then `numpy_to_pil`'s
//!    `(x · 255).round()` (half to even, in float32) to 8-bit RGB.
//!
//! Everything before the decoder matches diffusers given the same initial latents and step
//! noise (`fixtures/diffusion/pipeline`, made by `scripts/golden/make_pipeline.py`, which hands
//! diffusers these latents and noises): the sampled latents within float32 noise, the pixels
//! within one level where float32 rounding straddles a half. Like `StableDiffusionPipeline`,
//! the SD path sets the scheduler's `steps_offset` to 1 and `clip_sample` to false (diffusers
//! rewrites outdated configs that way when it builds the pipeline). Not implemented: img2img,
//! `guidance_rescale`, `timestep_cond` (LCM), IP adapters, the SDXL refiner
//! (`requires_aesthetics_score`), `denoising_end`.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use serde_json::Value;

use super::clip_text::{sd15_prompt_embeds, sdxl_prompt_embeds, ClipTextModel, ClipTextOutput};
use super::clip_tokenizer::ClipTokenizer;
use super::scheduler::{gaussian, Sampler, SchedulerClass, SchedulerConfig};
use super::unet::{AddedCond, UNet2DConditionModel};
use super::vae::AutoencoderKL;
use crate::splitmix64;
use crate::{Error, Result};

/// The pipeline classes [`TextToImage`] runs, by `model_index.json`'s `_class_name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipelineKind {
    /// `StableDiffusionPipeline`: SD 1.x / 2.x, one CLIP text encoder.
    StableDiffusion,
    /// `StableDiffusionXLPipeline`: SDXL base and SDXL-Turbo, two text encoders.
    StableDiffusionXl,
}

impl PipelineKind {
    pub fn name(self) -> &'static str {
        match self {
            PipelineKind::StableDiffusion => "StableDiffusionPipeline",
            PipelineKind::StableDiffusionXl => "StableDiffusionXLPipeline",
        }
    }

    /// The kind of a `_class_name`; other pipelines are refused, naming them.
    pub fn from_name(name: &str) -> Result<Self> {
        [
            PipelineKind::StableDiffusion,
            PipelineKind::StableDiffusionXl,
        ]
        .into_iter()
        .find(|k| k.name() == name)
        .ok_or_else(|| {
            Error::Config(format!(
                "model_index.json: pipeline class {name:?} is not supported \
                     (StableDiffusionPipeline, StableDiffusionXLPipeline are)"
            ))
        })
    }

    /// diffusers' default `guidance_scale` for the class (7.5 for SD, 5.0 for SDXL).
    pub fn default_guidance_scale(self) -> f64 {
        match self {
            PipelineKind::StableDiffusion => 7.5,
            PipelineKind::StableDiffusionXl => 5.0,
        }
    }
}

/// A pipeline's `model_index.json`: its class, its components (`"unet": ["diffusers",
/// "UNet2DConditionModel"]`, `[null, null]` for an absent one) and its registered settings.
#[derive(Debug, Clone)]
pub struct ModelIndex {
    pub kind: PipelineKind,
    entries: serde_json::Map<String, Value>,
}

impl ModelIndex {
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("model_index.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let value: Value = serde_json::from_str(&text).map_err(|source| Error::Json {
            path: path.clone(),
            source,
        })?;
        let Value::Object(entries) = value else {
            return Err(Error::Config(format!(
                "{}: not a JSON object",
                path.display()
            )));
        };
        let class = entries
            .get("_class_name")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::Config(format!("{}: no \"_class_name\"", path.display())))?;
        Ok(Self {
            kind: PipelineKind::from_name(class)?,
            entries,
        })
    }

    /// The (library, class) of component `name`; `None` when absent or `[null, null]`.
    pub fn component(&self, name: &str) -> Option<(&str, &str)> {
        let pair = self.entries.get(name)?.as_array()?;
        match (pair.first()?.as_str(), pair.get(1)?.as_str()) {
            (Some(lib), Some(class)) => Some((lib, class)),
            _ => None,
        }
    }

    /// A registered boolean setting (`force_zeros_for_empty_prompt`, ...), when written.
    pub fn flag(&self, name: &str) -> Option<bool> {
        self.entries.get(name).and_then(Value::as_bool)
    }

    /// Refuses a pipeline whose component `name` is missing or of another class than `want`.
    fn require(&self, name: &str, want: &[&str]) -> Result<()> {
        match self.component(name) {
            Some((_, class)) if want.contains(&class) => Ok(()),
            Some((_, class)) => Err(Error::Config(format!(
                "model_index.json: {name} is a {class}, {} wants {}",
                self.kind.name(),
                want.join(" or ")
            ))),
            None => Err(Error::Config(format!(
                "model_index.json: {} needs a {name} component",
                self.kind.name()
            ))),
        }
    }
}

/// What [`TextToImage::generate`] is asked for beside the prompts (diffusers' `__call__`
/// arguments of the same names).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// Classifier-free guidance weight; at most 1 means no guidance (one UNet pass a step).
    pub guidance_scale: f64,
    pub num_inference_steps: usize,
    /// Pixels; `None`: the UNet's `sample_size` × the VAE's factor.
    pub height: Option<usize>,
    pub width: Option<usize>,
    /// Candidate `j` of the batch draws its noise from seed `seed + j` (wrapping).
    pub seed: u64,
    /// Layers to skip from the end of the text encoder (diffusers' `clip_skip`).
    pub clip_skip: Option<usize>,
}

impl GenerateOptions {
    /// diffusers' defaults for `kind`: 50 steps, guidance 7.5 (SD) or 5.0 (SDXL), the
    /// model's own size, seed 0.
    pub fn defaults(kind: PipelineKind) -> Self {
        Self {
            guidance_scale: kind.default_guidance_scale(),
            num_inference_steps: 50,
            height: None,
            width: None,
            seed: 0,
            clip_skip: None,
        }
    }

    /// diffusers' `do_classifier_free_guidance`: `guidance_scale > 1`.
    pub fn guided(&self) -> bool {
        self.guidance_scale > 1.0
    }
}

/// The seed of the noise that candidate seed `candidate_seed` draws at sampling step `step`
/// (Euler ancestral, DDPM): SplitMix64's output for the state `(candidate_seed ⊕
/// 0x7374_6570) + (step + 1)·0x9E3779B97F4A7C15` — the (step + 1)-th output of SplitMix64
/// started at `candidate_seed ⊕ "step"`. Independent of the initial latents' stream
/// (`gaussian(.., candidate_seed, ..)`) and of the other candidates' seeds.
pub fn step_noise_seed(candidate_seed: u64, step: usize) -> u64 {
    splitmix64::mix(
        (candidate_seed ^ 0x7374_6570).wrapping_add(
            (step as u64)
                .wrapping_add(1)
                .wrapping_mul(splitmix64::GAMMA),
        ),
    )
}

/// One Gaussian latent `[1, C, h, w]` per seed, stacked along the batch: `[seeds, C, h, w]`.
pub fn seeded_latents(seeds: &[u64], chw: [usize; 3], device: &Device) -> Result<Tensor> {
    let [c, h, w] = chw;
    let parts = seeds
        .iter()
        .map(|&s| gaussian(&[1, c, h, w], s, device))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&parts, 0)?)
}

/// diffusers' `VaeImageProcessor.postprocess` + `numpy_to_pil` for decoded images
/// `[B, 3, H, W]` (about [-1, 1]): `(x · 0.5 + 0.5).clamp(0, 1)`, `· 255`, rounded half to
/// even (numpy's `round`), all in float32.
pub fn postprocess(images: &Tensor) -> Result<Vec<RgbImage>> {
    let (b, c, h, w) = images.dims4()?;
    if c != 3 {
        return Err(Error::Input(format!(
            "postprocess wants RGB images [B, 3, H, W], got {:?}",
            images.dims()
        )));
    }
    let x = images
        .to_dtype(DType::F32)?
        .affine(0.5, 0.5)?
        .clamp(0f32, 1f32)?
        .permute((0, 2, 3, 1))?
        .contiguous()?;
    let mut out = Vec::with_capacity(b);
    for i in 0..b {
        let v: Vec<f32> = x.get(i)?.flatten_all()?.to_vec1()?;
        let bytes: Vec<u8> = v
            .into_iter()
            .map(|p| (p * 255f32).round_ties_even() as u8)
            .collect();
        let img = RgbImage::from_raw(w as u32, h as u32, bytes)
            .ok_or_else(|| Error::Input(format!("postprocess: {h}x{w} image buffer")))?;
        out.push(img);
    }
    Ok(out)
}

struct TextEncoder {
    tokenizer: ClipTokenizer,
    model: ClipTextModel,
}

impl TextEncoder {
    fn load(dir: &Path, tok: &str, enc: &str, dtype: DType, device: &Device) -> Result<Self> {
        Ok(Self {
            tokenizer: ClipTokenizer::from_dir(&dir.join(tok))?,
            model: ClipTextModel::load(&dir.join(enc), dtype, device)?,
        })
    }

    fn run(&self, prompts: &[&str]) -> Result<ClipTextOutput> {
        self.model.encode_prompts(&self.tokenizer, prompts)
    }
}

/// The conditioning of one batch: `[B', 77, D]` embeddings and, for SDXL, the pooled
/// embeddings `[B', P]` and time ids `[B', 6]` (B' = 2B with guidance: negatives first).
struct Conditioning {
    context: Tensor,
    added: Option<(Tensor, Tensor)>,
}

/// A text-to-image pipeline loaded from a diffusers directory.
pub struct TextToImage {
    kind: PipelineKind,
    text_encoder: TextEncoder,
    /// SDXL's `tokenizer_2` / `text_encoder_2`.
    text_encoder_2: Option<TextEncoder>,
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    scheduler: SchedulerConfig,
    /// `unet/config.json`'s `sample_size` (latent pixels), when it is one number.
    sample_size: Option<usize>,
    force_zeros_for_empty_prompt: bool,
    dtype: DType,
    device: Device,
}

impl TextToImage {
    /// Loads every component of the pipeline at `dir` in `dtype` on `device` (the VAE in
    /// float32 when `dtype` is float16 and its config says `force_upcast`, as diffusers
    /// decodes). Missing components, unsupported classes and bad weights are named.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        Self::load_with_unet(dir, dtype, device, None)
    }

    /// [`Self::load`] with `unet` (an adapted copy of the pipeline's own, say) in place of the
    /// one in `dir/unet`, which is then not read; checked against the other components as
    /// loading checks its own.
    pub fn load_with_unet(
        dir: &Path,
        dtype: DType,
        device: &Device,
        unet: Option<UNet2DConditionModel>,
    ) -> Result<Self> {
        let index = ModelIndex::from_dir(dir)?;
        let kind = index.kind;
        index.require("unet", &["UNet2DConditionModel"])?;
        index.require("vae", &["AutoencoderKL"])?;
        index.require("tokenizer", &["CLIPTokenizer", "CLIPTokenizerFast"])?;
        index.require("text_encoder", &["CLIPTextModel"])?;
        let sched_class = index
            .component("scheduler")
            .map(|(_, c)| c)
            .ok_or_else(|| {
                Error::Config("model_index.json: the pipeline needs a scheduler component".into())
            })?;
        SchedulerClass::from_name(sched_class)?;
        let text_encoder_2 = match kind {
            PipelineKind::StableDiffusion => None,
            PipelineKind::StableDiffusionXl => {
                index.require("tokenizer_2", &["CLIPTokenizer", "CLIPTokenizerFast"])?;
                index.require("text_encoder_2", &["CLIPTextModelWithProjection"])?;
                if index.flag("requires_aesthetics_score") == Some(true) {
                    return Err(Error::Config(
                        "model_index.json: requires_aesthetics_score (the SDXL refiner, an \
                         img2img pipeline) is not supported"
                            .into(),
                    ));
                }
                Some(TextEncoder::load(
                    dir,
                    "tokenizer_2",
                    "text_encoder_2",
                    dtype,
                    device,
                )?)
            }
        };
        let text_encoder = TextEncoder::load(dir, "tokenizer", "text_encoder", dtype, device)?;
        let unet = match unet {
            Some(unet) => unet,
            None => UNet2DConditionModel::load(&dir.join("unet"), dtype, device)?,
        };
        let sample_size = read_json(&dir.join("unet/config.json"))?
            .get("sample_size")
            .and_then(Value::as_u64)
            .map(|s| s as usize);
        let vae_dir = dir.join("vae");
        let vae_config = super::vae::VaeConfig::from_file(&vae_dir.join("config.json"))?;
        let vae_dtype = if dtype == DType::F16 && vae_config.force_upcast {
            DType::F32
        } else {
            dtype
        };
        let vae = AutoencoderKL::load(&vae_dir, vae_dtype, device)?;
        let mut scheduler =
            SchedulerConfig::from_file(dir.join("scheduler/scheduler_config.json"))?;
        if kind == PipelineKind::StableDiffusion {
            // StableDiffusionPipeline.__init__ rewrites outdated scheduler configs so.
            scheduler.steps_offset = 1;
            if scheduler.clip_sample() {
                scheduler.clip_sample = Some(false);
            }
        }
        let pipe = Self {
            kind,
            text_encoder,
            text_encoder_2,
            unet,
            vae,
            scheduler,
            sample_size,
            force_zeros_for_empty_prompt: index
                .flag("force_zeros_for_empty_prompt")
                .unwrap_or(true),
            dtype,
            device: device.clone(),
        };
        pipe.check_widths()?;
        Ok(pipe)
    }

    /// The text encoders' widths against the UNet's (cross-attention, pooled + time ids) and
    /// the VAE's latent channels against the UNet's.
    fn check_widths(&self) -> Result<()> {
        let spec = self.unet.spec();
        let context = self.text_encoder.model.hidden_size()
            + self
                .text_encoder_2
                .as_ref()
                .map_or(0, |t| t.model.hidden_size());
        if context != spec.cross_attention_dim {
            return Err(Error::Config(format!(
                "{}: the text encoders give {context}-wide embeddings, the UNet's \
                 cross_attention_dim is {}",
                self.kind.name(),
                spec.cross_attention_dim
            )));
        }
        if spec.in_channels != self.vae.latent_channels() {
            return Err(Error::Config(format!(
                "{}: the UNet takes {} channels, the VAE has {} latent channels",
                self.kind.name(),
                spec.in_channels,
                self.vae.latent_channels()
            )));
        }
        match (&self.text_encoder_2, &spec.text_time) {
            (Some(te2), Some(tt)) => {
                let passed = 6 * tt.time_embed_dim + te2.model.config().projection_dim;
                if passed != tt.projection_input_dim {
                    return Err(Error::Config(format!(
                        "StableDiffusionXLPipeline: the UNet's add_embedding takes {} values, \
                         the pooled embedding ({}) and six time ids ({} each) give {passed}",
                        tt.projection_input_dim,
                        te2.model.config().projection_dim,
                        tt.time_embed_dim
                    )));
                }
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(Error::Config(
                    "StableDiffusionXLPipeline: the UNet has no addition_embed_type text_time"
                        .into(),
                ))
            }
            (None, Some(_)) => {
                return Err(Error::Config(
                    "StableDiffusionPipeline: the UNet wants SDXL's added conditioning \
                     (addition_embed_type text_time)"
                        .into(),
                ))
            }
        }
        Ok(())
    }

    pub fn kind(&self) -> PipelineKind {
        self.kind
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn unet(&self) -> &UNet2DConditionModel {
        &self.unet
    }

    pub fn vae(&self) -> &AutoencoderKL {
        &self.vae
    }

    /// The sampler settings in use (after the SD pipeline's rewrites).
    pub fn scheduler_config(&self) -> &SchedulerConfig {
        &self.scheduler
    }

    /// Samples with `config` instead (diffusers' `pipe.scheduler = X.from_config(...)`).
    pub fn with_scheduler(mut self, config: SchedulerConfig) -> Result<Self> {
        Sampler::new(&config)?;
        self.scheduler = config;
        Ok(self)
    }

    /// The VAE's downsampling factor (8 for SD / SDXL).
    pub fn vae_scale_factor(&self) -> usize {
        self.vae.downsampling_factor()
    }

    /// The (height, width) in pixels when none is asked for: the UNet's `sample_size` × the
    /// VAE's factor; `None` when the UNet's config has no `sample_size`.
    pub fn default_size(&self) -> Option<(usize, usize)> {
        self.sample_size.map(|s| {
            let px = s * self.vae_scale_factor();
            (px, px)
        })
    }

    /// Checks `opts` and gives (height, width) in pixels.
    fn size_of(&self, opts: &GenerateOptions) -> Result<(usize, usize)> {
        let default = self.default_size();
        let pick = |v: Option<usize>, what: &str| {
            v.or(default.map(|d| d.0)).ok_or_else(|| {
                Error::Input(format!(
                    "no {what} given and unet/config.json has no sample_size to default to"
                ))
            })
        };
        let (h, w) = (pick(opts.height, "height")?, pick(opts.width, "width")?);
        let f = self.vae_scale_factor();
        // The pipelines' check_inputs: multiples of 8.
        for (v, what) in [(h, "height"), (w, "width")] {
            if v == 0 || !v.is_multiple_of(8) || !v.is_multiple_of(f) {
                return Err(Error::Input(format!(
                    "{what} {v} must be a positive multiple of {}",
                    f.max(8)
                )));
            }
        }
        if opts.num_inference_steps == 0 {
            return Err(Error::Input(
                "num_inference_steps must be at least 1".into(),
            ));
        }
        if !opts.guidance_scale.is_finite() {
            return Err(Error::Input(format!(
                "guidance_scale {} is not a number",
                opts.guidance_scale
            )));
        }
        Ok((h, w))
    }

    /// One image per prompt (see the module documentation): prompt `j` is sampled from seed
    /// `opts.seed + j`. `negative_prompts`: one for all or one per prompt; used only with
    /// guidance.
    pub fn generate(
        &self,
        prompts: &[&str],
        negative_prompts: Option<&[&str]>,
        opts: &GenerateOptions,
    ) -> Result<Vec<RgbImage>> {
        let latents = self.sample_latents(prompts, negative_prompts, opts)?;
        self.decode_latents(&latents)
    }

    /// The denoised latents `[B, C, H/f, W/f]` the decoder would take (before the
    /// `1 / scaling_factor`), in the UNet's dtype.
    pub fn sample_latents(
        &self,
        prompts: &[&str],
        negative_prompts: Option<&[&str]>,
        opts: &GenerateOptions,
    ) -> Result<Tensor> {
        if prompts.is_empty() {
            return Err(Error::Input("no prompts to generate for".into()));
        }
        let (height, width) = self.size_of(opts)?;
        let b = prompts.len();
        let guided = opts.guided();
        let negatives: Option<Vec<&str>> = match negative_prompts {
            None => None,
            Some([one]) => Some(vec![*one; b]),
            Some(list) if list.len() == b => Some(list.to_vec()),
            Some(list) => {
                return Err(Error::Input(format!(
                    "{} negative prompts for {b} prompts (give one, or one per prompt)",
                    list.len()
                )))
            }
        };
        let cond = self.conditioning(prompts, negatives.as_deref(), guided, height, width, opts)?;

        let mut sampler = Sampler::new(&self.scheduler)?;
        sampler.set_timesteps(opts.num_inference_steps)?;
        let f = self.vae_scale_factor();
        let chw = [self.unet.spec().in_channels, height / f, width / f];
        let seeds: Vec<u64> = (0..b as u64).map(|j| opts.seed.wrapping_add(j)).collect();
        let mut latents = seeded_latents(&seeds, chw, &self.device)?
            .to_dtype(self.dtype)?
            .affine(f64::from(sampler.init_noise_sigma()), 0.0)?;
        let added = cond.added.as_ref();
        for k in 0..sampler.timesteps().len() {
            let x = if guided {
                Tensor::cat(&[&latents, &latents], 0)?
            } else {
                latents.clone()
            };
            let x = sampler.scale_model_input(&x, k)?;
            let t = sampler.timesteps()[k];
            let ts = Tensor::from_vec(vec![t; x.dim(0)?], x.dim(0)?, &self.device)?;
            let pred = self.unet.forward(
                &x,
                &ts,
                &cond.context,
                added.map(|(text_embeds, time_ids)| AddedCond {
                    text_embeds,
                    time_ids,
                }),
            )?;
            let pred = if guided {
                let uncond = pred.narrow(0, 0, b)?;
                let text = pred.narrow(0, b, b)?;
                (&uncond + ((text - &uncond)? * opts.guidance_scale)?)?
            } else {
                pred
            };
            let noise = if sampler.step_needs_noise(k) {
                let step_seeds: Vec<u64> = seeds.iter().map(|&s| step_noise_seed(s, k)).collect();
                Some(seeded_latents(&step_seeds, chw, &self.device)?.to_dtype(latents.dtype())?)
            } else {
                None
            };
            latents = sampler.step(&pred, k, &latents, noise.as_ref())?;
        }
        Ok(latents)
    }

    /// Images from denoised latents `[B, C, h, w]`: the pipeline's unscaling, the VAE
    /// decoder (one image at a time), [`postprocess`].
    pub fn decode_latents(&self, latents: &Tensor) -> Result<Vec<RgbImage>> {
        let cfg = self.vae.config();
        let vae_dtype = self.vae.dtype();
        let z = latents.to_dtype(vae_dtype)?;
        let z = match (self.kind, &cfg.latents_mean, &cfg.latents_std) {
            (PipelineKind::StableDiffusionXl, Some(mean), Some(std)) => {
                let c = cfg.latent_channels;
                let t = |v: &[f64]| -> Result<Tensor> {
                    if v.len() != c {
                        return Err(Error::Config(format!(
                            "vae: latents_mean / latents_std have {} values for {c} channels",
                            v.len()
                        )));
                    }
                    Ok(Tensor::from_slice(v, (1, c, 1, 1), &self.device)?.to_dtype(vae_dtype)?)
                };
                (z.broadcast_mul(&t(std)?)? / cfg.scaling_factor)?.broadcast_add(&t(mean)?)?
            }
            _ => (z / cfg.scaling_factor)?,
        };
        let mut images = Vec::with_capacity(z.dim(0)?);
        for i in 0..z.dim(0)? {
            let decoded = self.vae.decode(&z.narrow(0, i, 1)?)?;
            images.extend(postprocess(&decoded)?);
        }
        Ok(images)
    }

    fn conditioning(
        &self,
        prompts: &[&str],
        negatives: Option<&[&str]>,
        guided: bool,
        height: usize,
        width: usize,
        opts: &GenerateOptions,
    ) -> Result<Conditioning> {
        let b = prompts.len();
        match &self.text_encoder_2 {
            None => {
                let te = &self.text_encoder;
                let cond = sd15_prompt_embeds(&te.model, &te.run(prompts)?, opts.clip_skip)?;
                let context = if guided {
                    let empty = vec![""; b];
                    let neg = negatives.unwrap_or(&empty);
                    // diffusers encodes the negatives without clip_skip.
                    let uncond = sd15_prompt_embeds(&te.model, &te.run(neg)?, None)?;
                    Tensor::cat(&[&uncond, &cond], 0)?
                } else {
                    cond
                };
                Ok(Conditioning {
                    context: context.to_dtype(self.dtype)?,
                    added: None,
                })
            }
            Some(te2) => {
                let encode = |texts: &[&str], clip_skip| -> Result<(Tensor, Tensor)> {
                    let o1 = self.text_encoder.run(texts)?;
                    let o2 = te2.run(texts)?;
                    sdxl_prompt_embeds(&[&o1, &o2], clip_skip)
                };
                let (cond, pooled) = encode(prompts, opts.clip_skip)?;
                let ids: Vec<f32> = [height, width, 0, 0, height, width]
                    .iter()
                    .map(|&v| v as f32)
                    .collect();
                let rows = if guided { 2 * b } else { b };
                let time_ids = Tensor::from_vec(ids, (1, 6), &self.device)?
                    .repeat((rows, 1))?
                    .to_dtype(self.dtype)?;
                let (context, pooled) = if guided {
                    let (uncond, uncond_pooled) = match negatives {
                        None if self.force_zeros_for_empty_prompt => {
                            (cond.zeros_like()?, pooled.zeros_like()?)
                        }
                        None => encode(&vec![""; b], None)?,
                        Some(neg) => encode(neg, None)?,
                    };
                    (
                        Tensor::cat(&[&uncond, &cond], 0)?,
                        Tensor::cat(&[&uncond_pooled, &pooled], 0)?,
                    )
                } else {
                    (cond, pooled)
                };
                Ok(Conditioning {
                    context: context.to_dtype(self.dtype)?,
                    added: Some((pooled.to_dtype(self.dtype)?, time_ids)),
                })
            }
        }
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}
