//! What the two diffusion objectives share — `dpo --kind diffusion` (Diffusion-DPO,
//! [`super::diffusion_dpo`]) and `denoise` (the plain denoising loss, [`super::denoise`]): the
//! frozen text encoders, images to VAE latents (optionally cached), the noise schedule, and the
//! per-example draws (flip, latent sample, noise, timestep), each a function of the seed and the
//! example's position in the run's stream so that a resumed run draws what the uninterrupted
//! one would have.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use unireward_models::diffusion::clip_text::{
    sd15_prompt_embeds, sdxl_prompt_embeds, ClipTextModel,
};
use unireward_models::diffusion::clip_tokenizer::ClipTokenizer;
use unireward_models::diffusion::denoiser::Denoiser;
use unireward_models::diffusion::scheduler::{
    gaussian, turbo_timesteps, NoiseSchedule, PredictionType, SchedulerConfig,
};
use unireward_models::diffusion::train_image::load_train_pixels;
use unireward_models::diffusion::unet::AddedCond;
use unireward_models::diffusion::vae::{AutoencoderKL, DiagonalGaussian};
use unireward_models::splitmix64;

use crate::data::diffusion_pairs::Candidate;
use crate::data::fingerprint::Fnv1a;
use crate::unet_trainee::UNET_DIR;
use crate::{Error, Result};

/// How training timesteps are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestepDraw {
    /// Uniform over [0, num_train_timesteps), train.py's default.
    Uniform,
    /// SDXL-Turbo's grid t = 250k + 249, k uniform in 0..4 (train.py when the model path
    /// names "turbo").
    Turbo,
}

/// The frozen text encoders and what the UNet takes from them.
pub struct Conditioner {
    /// SD 1.5's one encoder, or SDXL's two in pipeline order.
    encoders: Vec<(ClipTokenizer, ClipTextModel)>,
    /// SDXL: the resolution its time ids state; `None` for SD 1.5.
    sdxl_resolution: Option<u32>,
}

/// Prompt embeddings [B, 77, D] and, for SDXL, the pooled embedding and the time ids.
pub struct Conditioning {
    pub context: Tensor,
    pub added: Option<(Tensor, Tensor)>,
}

impl Conditioner {
    /// The pipeline's text encoder(s): SDXL's two when `sdxl`.
    pub fn load(
        pipeline: &Path,
        sdxl: bool,
        resolution: u32,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let dirs: &[(&str, &str)] = if sdxl {
            &[
                ("tokenizer", "text_encoder"),
                ("tokenizer_2", "text_encoder_2"),
            ]
        } else {
            &[("tokenizer", "text_encoder")]
        };
        let encoders = dirs
            .iter()
            .map(|(tok, enc)| {
                Ok((
                    ClipTokenizer::from_dir(&pipeline.join(tok))?,
                    ClipTextModel::load(&pipeline.join(enc), dtype, device)?,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            encoders,
            sdxl_resolution: sdxl.then_some(resolution),
        })
    }

    pub fn is_sdxl(&self) -> bool {
        self.sdxl_resolution.is_some()
    }

    pub fn encode(&self, captions: &[&str]) -> Result<Conditioning> {
        let outputs = self
            .encoders
            .iter()
            .map(|(tokenizer, encoder)| encoder.encode_prompts(tokenizer, captions))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let Some(resolution) = self.sdxl_resolution else {
            let (_, encoder) = &self.encoders[0];
            return Ok(Conditioning {
                context: sd15_prompt_embeds(encoder, &outputs[0], None)?.detach(),
                added: None,
            });
        };
        let refs: Vec<_> = outputs.iter().collect();
        let (context, pooled) = sdxl_prompt_embeds(&refs, None)?;
        let r = resolution as f32;
        let ids = [r, r, 0.0, 0.0, r, r].repeat(captions.len());
        let time_ids = Tensor::from_vec(ids, (captions.len(), 6), context.device())?
            .to_dtype(context.dtype())?;
        Ok(Conditioning {
            context: context.detach(),
            added: Some((pooled.detach(), time_ids)),
        })
    }
}

/// Images to scaled latents through the frozen VAE, the distribution cached on disk when a
/// cache directory is given.
pub struct LatentEncoder {
    pub vae: AutoencoderKL,
    pub resolution: u32,
    pub cache: Option<PathBuf>,
}

impl LatentEncoder {
    fn cache_path(&self, image: &Path, flip: bool) -> Result<Option<PathBuf>> {
        let Some(dir) = &self.cache else {
            return Ok(None);
        };
        // The file's identity (path, size, modification time) and the transform: an image
        // replaced under the same name is encoded again.
        let meta = std::fs::metadata(image).map_err(|e| Error::io(image, e))?;
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let key = format!(
            "{}|{}|{modified}|{}|{flip}",
            image.display(),
            meta.len(),
            self.resolution
        );
        let mut h = Fnv1a::default();
        std::hash::Hasher::write(&mut h, key.as_bytes());
        Ok(Some(dir.join(format!("{}.safetensors", h.hex()))))
    }

    fn distribution(&self, image: &Path, flip: bool) -> Result<DiagonalGaussian> {
        let cached = self.cache_path(image, flip)?;
        let device = self.vae.device();
        if let Some(path) = &cached {
            if path.is_file() {
                let t = candle_core::safetensors::load(path, device)?;
                if let (Some(mean), Some(logvar)) = (t.get("mean"), t.get("logvar")) {
                    return Ok(DiagonalGaussian {
                        mean: mean.to_dtype(self.vae.dtype())?,
                        logvar: logvar.to_dtype(self.vae.dtype())?,
                    });
                }
            }
        }
        let pixels = load_train_pixels(image, self.resolution, flip, device)?
            .unsqueeze(0)?
            .to_dtype(self.vae.dtype())?;
        let dist = self.vae.encode(&pixels)?;
        if let Some(path) = &cached {
            let dir = path.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            let tmp = path.with_extension("tmp");
            let map: HashMap<String, Tensor> = [
                ("mean".to_string(), dist.mean.clone()),
                ("logvar".to_string(), dist.logvar.clone()),
            ]
            .into();
            candle_core::safetensors::save(&map, &tmp)?;
            std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        }
        Ok(dist)
    }

    /// `latent_dist.sample() * scaling_factor` of one image, [1, C, h, w].
    pub fn latents(&self, image: &Path, flip: bool, seed: u64) -> Result<Tensor> {
        let dist = self.distribution(image, flip)?;
        let noise =
            gaussian(dist.mean.dims(), seed, dist.mean.device())?.to_dtype(dist.mean.dtype())?;
        Ok(self.vae.to_latents(&dist.sample(&noise)?)?)
    }

    /// An image's latents [1, C, h, w], or a video's [1, C, F, h, w]: every frame encoded
    /// on its own (as AnimateDiff's VAE sees frames), flipped alike, each with its own
    /// latent sample draw.
    pub fn candidate_latents(&self, c: &Candidate, flip: bool, seed: u64) -> Result<Tensor> {
        match c {
            Candidate::Image(path) => self.latents(path, flip, seed),
            Candidate::Frames(frames) => {
                let latents = frames
                    .iter()
                    .enumerate()
                    .map(|(k, frame)| {
                        let draw = splitmix64::mix(
                            seed.wrapping_add((k as u64 + 1).wrapping_mul(splitmix64::GAMMA)),
                        );
                        self.latents(frame, flip, draw)
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Tensor::stack(&latents, 2)?)
            }
        }
    }
}

/// What each random draw of an example's visit is for.
#[derive(Clone, Copy)]
pub enum Draw {
    Flips = 1,
    /// The latent sample of a pair's chosen image, or of a denoising example's image.
    ChosenSample = 2,
    RejectedSample = 3,
    Noise = 4,
    Timestep = 5,
}

/// A seed for `draw` at stream position `position`: splitmix64 of the three.
pub fn draw_seed(seed: u64, position: usize, draw: Draw) -> u64 {
    splitmix64::mix(
        seed.wrapping_add((position as u64).wrapping_mul(splitmix64::GAMMA))
            .wrapping_add((draw as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)),
    )
}

/// Reads the pipeline's scheduler config as train.py (and diffusers' train_text_to_image.py)
/// builds its noise scheduler (`DDPMScheduler.from_pretrained(model, subfolder="scheduler")`).
/// `objective` names the command for the error about `sample` prediction, which neither
/// supports.
pub fn noise_schedule(pipeline: &Path, objective: &str) -> Result<(NoiseSchedule, PredictionType)> {
    let path = pipeline.join("scheduler").join("scheduler_config.json");
    let config = SchedulerConfig::from_file(&path)?;
    let schedule = NoiseSchedule::new(&config)?;
    let prediction = schedule.prediction_type();
    if prediction == PredictionType::Sample {
        return Err(Error::Config(format!(
            "{}: prediction_type \"sample\" is not supported by {objective} (epsilon and \
             v_prediction are)",
            path.display()
        )));
    }
    Ok((schedule, prediction))
}

/// A frozen copy of the pipeline's starting UNet.
pub fn load_frozen_unet(pipeline: &Path, dtype: DType, device: &Device) -> Result<Denoiser> {
    Ok(Denoiser::load(&pipeline.join(UNET_DIR), dtype, device)?)
}

/// Everything a diffusion objective needs to turn images and captions into the UNet's
/// training inputs.
pub struct DiffusionSetup {
    pub latents: LatentEncoder,
    pub conditioner: Conditioner,
    pub schedule: NoiseSchedule,
    pub prediction: PredictionType,
    pub timesteps: TimestepDraw,
    pub hflip: bool,
    pub seed: u64,
    /// The UNet's compute dtype.
    pub dtype: DType,
}

/// Noised latents with their timesteps, targets and conditioning: one UNet call's inputs.
pub struct NoisedBatch {
    pub noisy: Tensor,
    pub timesteps: Tensor,
    pub target: Tensor,
    pub context: Tensor,
    pub added: Option<(Tensor, Tensor)>,
}

impl DiffusionSetup {
    /// The horizontal flip of image `which` (0 or 1) of the example at `position`.
    pub fn flip(&self, position: usize, which: u32) -> bool {
        self.hflip && draw_seed(self.seed, position, Draw::Flips) & (1 << which) != 0
    }

    /// A candidate's scaled latents, sampled with the `draw` of the example at `position`.
    pub fn candidate_latents(
        &self,
        c: &Candidate,
        flip: bool,
        position: usize,
        draw: Draw,
    ) -> Result<Tensor> {
        self.latents
            .candidate_latents(c, flip, draw_seed(self.seed, position, draw))
    }

    /// The noise for latents of `dims` of the example at `position`.
    pub fn noise(&self, dims: &[usize], position: usize, device: &Device) -> Result<Tensor> {
        Ok(gaussian(
            dims,
            draw_seed(self.seed, position, Draw::Noise),
            device,
        )?)
    }

    /// The training timestep of the example at `position`.
    pub fn timestep(&self, position: usize) -> Result<usize> {
        let u = draw_seed(self.seed, position, Draw::Timestep);
        Ok(match self.timesteps {
            TimestepDraw::Uniform => (u % self.schedule.num_train_timesteps() as u64) as usize,
            TimestepDraw::Turbo => turbo_timesteps(&[(u % 4) as usize])?[0],
        })
    }

    /// `latents` [N, ...] noised with `noise` at `timesteps` (one each), with their targets
    /// (the noise, or the velocity) and the conditioning of `captions`, each caption's repeated
    /// `repeat` times in a row of blocks (Diffusion-DPO's chosen half, then its rejected half).
    pub fn noised(
        &self,
        latents: &Tensor,
        noise: &Tensor,
        timesteps: &[usize],
        captions: &[&str],
        repeat: usize,
    ) -> Result<NoisedBatch> {
        let noisy = self.schedule.add_noise(latents, noise, timesteps)?;
        let target = self
            .schedule
            .target(self.prediction, latents, noise, timesteps)?;
        let cond = self.conditioner.encode(captions)?;
        let blocks = |t: &Tensor| Tensor::cat(&vec![t; repeat], 0);
        let ts: Vec<f32> = timesteps.iter().map(|&t| t as f32).collect();
        Ok(NoisedBatch {
            noisy: noisy.to_dtype(self.dtype)?,
            timesteps: Tensor::from_vec(ts, timesteps.len(), latents.device())?,
            target,
            context: blocks(&cond.context)?.to_dtype(self.dtype)?,
            added: match cond.added {
                Some((pooled, ids)) => Some((
                    blocks(&pooled)?.to_dtype(self.dtype)?,
                    blocks(&ids)?.to_dtype(self.dtype)?,
                )),
                None => None,
            },
        })
    }
}

/// `model`'s prediction for the batch.
pub fn predict(model: &Denoiser, b: &NoisedBatch) -> Result<Tensor> {
    let added = b.added.as_ref().map(|(text_embeds, time_ids)| AddedCond {
        text_embeds,
        time_ids,
    });
    Ok(model.forward(&b.noisy, &b.timesteps, &b.context, added)?)
}
