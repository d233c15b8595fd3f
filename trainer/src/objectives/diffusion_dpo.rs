//! `trainer dpo --kind diffusion`: Diffusion-DPO on pairs of generated images, as
//! SalesforceAIResearch/DiffusionDPO train.py trains SD 1.5 and SDXL(-Turbo), and on pairs of
//! generated videos for AnimateDiff's motion UNet (each frame through the VAE, the latents
//! stacked into [1, C, F, h, w]; one noise tensor over all frames and one timestep shared by
//! chosen and rejected; the MSE over all frames). A pair's optional weight multiplies its loss.
//!
//! Per pair and visit: both images through train.py's transform (each flipped with
//! probability ½ unless `--no-hflip`), the VAE's latent distribution sampled and scaled,
//! one noise tensor and one timestep shared by chosen and rejected (uniform over the
//! schedule's steps, or the Turbo grid 250k + 249), the noised latents through the trained UNet
//! and the frozen reference, and the loss of [`crate::loss::diffusion_dpo`]. Conditioning is
//! the frozen text encoders' (SD 1.5: the last hidden state; SDXL: both encoders' penultimate
//! states, text_encoder_2's pooled embedding, and the time ids [res, res, 0, 0, res, res]).
//!
//! Every random draw is a function of the seed and the example's position in the run's
//! stream, so a resumed run draws what the uninterrupted one would have. With
//! `--cache-latents` each image's latent distribution (mean and log-variance, per flip) is
//! computed once and kept on disk under `OUT/latent_cache/`, so memory stays bounded whatever
//! the data set's size; the sample is still drawn per visit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};
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

use crate::data::diffusion_pairs::{Candidate, DiffusionPairs};
use crate::data::fingerprint::Fnv1a;
use crate::loss::diffusion_dpo::{diffusion_dpo_loss, per_sample_mse, PairErrors};
use crate::memory_estimate::StepShape;
use crate::train_loop::{Forward, Objective, Prepared};
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

pub struct DiffusionDpoObjective {
    pub data: DiffusionPairs,
    /// Held-out pairs, judged at fixed draws by [`Objective::evaluate`].
    pub eval: Option<DiffusionPairs>,
    pub data_file: PathBuf,
    pub latents: LatentEncoder,
    pub conditioner: Conditioner,
    pub reference: Denoiser,
    pub schedule: NoiseSchedule,
    pub prediction: PredictionType,
    pub beta: f64,
    pub timesteps: TimestepDraw,
    pub hflip: bool,
    pub seed: u64,
    /// The UNet's compute dtype.
    pub dtype: DType,
}

/// One micro-batch: the chosen half first, then the rejected, sharing noise and timesteps.
pub struct DiffusionBatch {
    pub noisy: Tensor,
    pub timesteps: Tensor,
    pub target: Tensor,
    pub context: Tensor,
    pub added: Option<(Tensor, Tensor)>,
    pub pairs: usize,
    /// [P] f64: each pair's weight on its loss.
    pub pair_weights: Tensor,
}

/// Where evaluation draws stand in the stream: far past any run's training positions.
const EVAL_POSITION: usize = 1 << 40;
/// Draws per held-out pair: one timestep says little (the loss swings with it).
const EVAL_DRAWS: usize = 8;

/// What each random draw of an example's visit is for.
#[derive(Clone, Copy)]
enum Draw {
    Flips = 1,
    ChosenSample = 2,
    RejectedSample = 3,
    Noise = 4,
    Timestep = 5,
}

/// A seed for `draw` at stream position `position`: splitmix64 of the three.
fn draw_seed(seed: u64, position: usize, draw: Draw) -> u64 {
    splitmix64::mix(
        seed.wrapping_add((position as u64).wrapping_mul(splitmix64::GAMMA))
            .wrapping_add((draw as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)),
    )
}

impl DiffusionDpoObjective {
    /// Reads the pipeline's scheduler config as train.py builds its noise scheduler
    /// (`DDPMScheduler.from_pretrained(model, subfolder="scheduler")`).
    pub fn noise_schedule(pipeline: &Path) -> Result<(NoiseSchedule, PredictionType)> {
        let path = pipeline.join("scheduler").join("scheduler_config.json");
        let config = SchedulerConfig::from_file(&path)?;
        let schedule = NoiseSchedule::new(&config)?;
        let prediction = schedule.prediction_type();
        if prediction == PredictionType::Sample {
            return Err(Error::Config(format!(
                "{}: prediction_type \"sample\" is not supported by Diffusion-DPO (epsilon \
                 and v_prediction are)",
                path.display()
            )));
        }
        Ok((schedule, prediction))
    }

    /// The frozen reference: the starting UNet, loaded again.
    pub fn load_reference(pipeline: &Path, dtype: DType, device: &Device) -> Result<Denoiser> {
        Ok(Denoiser::load(&pipeline.join(UNET_DIR), dtype, device)?)
    }
    /// A micro-batch of `data`'s pairs at `indices`, the first at stream `position`.
    pub fn prepare_from(
        &self,
        data: &DiffusionPairs,
        indices: &[usize],
        position: usize,
    ) -> Result<Prepared<DiffusionBatch>> {
        let mut chosen = Vec::with_capacity(indices.len());
        let mut rejected = Vec::with_capacity(indices.len());
        let mut noise = Vec::with_capacity(indices.len());
        let mut steps = Vec::with_capacity(indices.len());
        let n_train = self.schedule.num_train_timesteps();
        for (i, &index) in indices.iter().enumerate() {
            let pos = position + i;
            let pair = &data.pairs[index];
            let flips = draw_seed(self.seed, pos, Draw::Flips);
            let (flip_c, flip_r) = (self.hflip && flips & 1 == 1, self.hflip && flips & 2 == 2);
            let latents = |c: &Candidate, flip, draw| {
                self.latents
                    .candidate_latents(c, flip, draw_seed(self.seed, pos, draw))
                    .map_err(|e| Error::record(&pair.id, e))
            };
            let c = latents(&pair.chosen, flip_c, Draw::ChosenSample)?;
            let r = latents(&pair.rejected, flip_r, Draw::RejectedSample)?;
            if c.dims() != r.dims() {
                return Err(Error::record(
                    &pair.id,
                    format!("latents {:?} and {:?} differ", c.dims(), r.dims()),
                ));
            }
            noise.push(gaussian(
                c.dims(),
                draw_seed(self.seed, pos, Draw::Noise),
                c.device(),
            )?);
            let u = draw_seed(self.seed, pos, Draw::Timestep);
            steps.push(match self.timesteps {
                TimestepDraw::Uniform => (u % n_train as u64) as usize,
                TimestepDraw::Turbo => turbo_timesteps(&[(u % 4) as usize])?[0],
            });
            chosen.push(c);
            rejected.push(r);
        }
        let pairs = indices.len();
        let latents = Tensor::cat(&[Tensor::cat(&chosen, 0)?, Tensor::cat(&rejected, 0)?], 0)?;
        let noise = Tensor::cat(&noise, 0)?.to_dtype(latents.dtype())?;
        let noise = Tensor::cat(&[&noise, &noise], 0)?;
        let timesteps: Vec<usize> = steps.iter().chain(&steps).copied().collect();
        let noisy = self.schedule.add_noise(&latents, &noise, &timesteps)?;
        let target = self
            .schedule
            .target(self.prediction, &latents, &noise, &timesteps)?;
        let captions: Vec<&str> = indices
            .iter()
            .map(|&i| data.pairs[i].caption.as_str())
            .collect();
        let cond = self.conditioner.encode(&captions)?;
        let twice = |t: &Tensor| Tensor::cat(&[t, t], 0);
        let ts: Vec<f32> = timesteps.iter().map(|&t| t as f32).collect();
        // Latent positions per sample: h·w, times the frames of a video.
        let positions: usize = latents.dims().iter().skip(2).product();
        let weights: Vec<f64> = indices.iter().map(|&i| data.pairs[i].weight).collect();
        Ok(Prepared {
            weight: pairs as f64,
            shape: StepShape {
                rows: 2 * pairs,
                tokens: positions,
                scored: 0,
                tiles: 0,
                frame_patches: 0,
            },
            batch: DiffusionBatch {
                noisy: noisy.to_dtype(self.dtype)?,
                timesteps: Tensor::from_vec(ts, 2 * pairs, latents.device())?,
                target,
                context: twice(&cond.context)?.to_dtype(self.dtype)?,
                added: match cond.added {
                    Some((pooled, ids)) => Some((
                        twice(&pooled)?.to_dtype(self.dtype)?,
                        twice(&ids)?.to_dtype(self.dtype)?,
                    )),
                    None => None,
                },
                pairs,
                pair_weights: Tensor::from_vec(weights, pairs, latents.device())?,
            },
        })
    }
}

impl Objective for DiffusionDpoObjective {
    type Batch = DiffusionBatch;
    type Model = Denoiser;

    fn num_examples(&self) -> usize {
        self.data.pairs.len()
    }

    fn prepare(&self, indices: &[usize], position: usize) -> Result<Prepared<DiffusionBatch>> {
        self.prepare_from(&self.data, indices, position)
    }

    fn forward(&self, model: &Denoiser, b: &DiffusionBatch) -> Result<Forward> {
        let added = || {
            b.added.as_ref().map(|(text_embeds, time_ids)| AddedCond {
                text_embeds,
                time_ids,
            })
        };
        let pred = model.forward(&b.noisy, &b.timesteps, &b.context, added())?;
        let ref_pred = self
            .reference
            .forward(&b.noisy, &b.timesteps, &b.context, added())?
            .detach();
        let m = per_sample_mse(&pred, &b.target)?;
        let r = per_sample_mse(&ref_pred, &b.target)?;
        let p = b.pairs;
        let out = diffusion_dpo_loss(
            self.beta,
            &PairErrors {
                model_chosen: &m.narrow(0, 0, p)?,
                model_rejected: &m.narrow(0, p, p)?,
                ref_chosen: &r.narrow(0, 0, p)?,
                ref_rejected: &r.narrow(0, p, p)?,
            },
        )?;
        Ok(Forward {
            loss_sum: (out.losses * &b.pair_weights)?.sum_all()?,
            metric_sums: out.metric_sums,
        })
    }

    /// The held-out pairs' mean loss and implicit accuracy over [`EVAL_DRAWS`] draws of each,
    /// every pair at the same draws
    /// (noise, timestep, flips, latent sample) every time, so that evaluations are comparable
    /// across steps and runs.
    fn evaluate(&self, model: &Denoiser) -> Result<Vec<(String, f64)>> {
        let Some(eval) = &self.eval else {
            return Ok(Vec::new());
        };
        let (mut loss, mut accurate) = (0.0, 0.0);
        for draw in 0..EVAL_DRAWS {
            for index in 0..eval.pairs.len() {
                let position = EVAL_POSITION + draw * eval.pairs.len() + index;
                let batch = self.prepare_from(eval, &[index], position)?;
                let fwd = self.forward(model, &batch.batch)?;
                loss += fwd.loss_sum.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                accurate += fwd
                    .metric_sums
                    .iter()
                    .find(|(k, _)| k == "implicit_acc")
                    .map_or(0.0, |(_, v)| *v);
            }
        }
        let n = (EVAL_DRAWS * eval.pairs.len()).max(1) as f64;
        Ok(vec![
            ("eval_loss".into(), loss / n),
            ("eval_implicit_acc".into(), accurate / n),
        ])
    }

    fn describe(&self) -> Value {
        json!({
            "kind": "diffusion-dpo",
            "beta": self.beta,
            "timesteps": format!("{:?}", self.timesteps),
            "resolution": self.latents.resolution,
            "hflip": self.hflip,
            "prediction_type": format!("{:?}", self.prediction),
            "sdxl": self.conditioner.is_sdxl(),
        })
    }

    fn data_file(&self) -> Option<&Path> {
        Some(&self.data_file)
    }
}
