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
//! The inputs (latents, conditioning, the draws, the latent cache) are built as for
//! `trainer denoise`, by [`super::diffusion`].

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};
use unireward_models::diffusion::denoiser::Denoiser;
use unireward_models::diffusion::scheduler::{NoiseSchedule, PredictionType};

use super::diffusion::{
    load_frozen_unet, noise_schedule, predict, DiffusionSetup, Draw, NoisedBatch,
};
use crate::data::diffusion_pairs::{Candidate, DiffusionPairs};
use crate::loss::diffusion_dpo::{diffusion_dpo_loss, per_sample_mse, with_chosen_sft, PairErrors};
use crate::memory_estimate::StepShape;
use crate::train_loop::{Forward, Objective, Prepared};
use crate::{Error, Result};

pub struct DiffusionDpoObjective {
    pub data: DiffusionPairs,
    /// Held-out pairs, judged at fixed draws by [`Objective::evaluate`].
    pub eval: Option<DiffusionPairs>,
    pub data_file: PathBuf,
    pub setup: DiffusionSetup,
    pub reference: Denoiser,
    pub beta: f64,
    /// `--sft-weight`: [`with_chosen_sft`].
    pub sft_weight: f64,
}

/// One micro-batch: the chosen half first, then the rejected, sharing noise and timesteps.
pub struct DiffusionBatch {
    pub inputs: NoisedBatch,
    pub pairs: usize,
    /// [P] f64: each pair's weight on its loss.
    pub pair_weights: Tensor,
}

/// Where evaluation draws stand in the stream: far past any run's training positions.
pub(crate) const EVAL_POSITION: usize = 1 << 40;
/// Draws per held-out example: one timestep says little (the loss swings with it).
pub(crate) const EVAL_DRAWS: usize = 8;

impl DiffusionDpoObjective {
    /// Reads the pipeline's scheduler config as train.py builds its noise scheduler.
    pub fn noise_schedule(pipeline: &Path) -> Result<(NoiseSchedule, PredictionType)> {
        noise_schedule(pipeline, "Diffusion-DPO")
    }

    /// The frozen reference: the starting UNet, loaded again.
    pub fn load_reference(pipeline: &Path, dtype: DType, device: &Device) -> Result<Denoiser> {
        load_frozen_unet(pipeline, dtype, device)
    }

    /// A micro-batch of `data`'s pairs at `indices`, the first at stream `position`.
    pub fn prepare_from(
        &self,
        data: &DiffusionPairs,
        indices: &[usize],
        position: usize,
    ) -> Result<Prepared<DiffusionBatch>> {
        let s = &self.setup;
        let mut chosen = Vec::with_capacity(indices.len());
        let mut rejected = Vec::with_capacity(indices.len());
        let mut noise = Vec::with_capacity(indices.len());
        let mut steps = Vec::with_capacity(indices.len());
        for (i, &index) in indices.iter().enumerate() {
            let pos = position + i;
            let pair = &data.pairs[index];
            let (flip_c, flip_r) = (s.flip(pos, 0), s.flip(pos, 1));
            let latents = |c: &Candidate, flip, draw| {
                s.candidate_latents(c, flip, pos, draw)
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
            noise.push(s.noise(c.dims(), pos, c.device())?);
            steps.push(s.timestep(pos)?);
            chosen.push(c);
            rejected.push(r);
        }
        let pairs = indices.len();
        let latents = Tensor::cat(&[Tensor::cat(&chosen, 0)?, Tensor::cat(&rejected, 0)?], 0)?;
        let noise = Tensor::cat(&noise, 0)?.to_dtype(latents.dtype())?;
        let noise = Tensor::cat(&[&noise, &noise], 0)?;
        let timesteps: Vec<usize> = steps.iter().chain(&steps).copied().collect();
        let captions: Vec<&str> = indices
            .iter()
            .map(|&i| data.pairs[i].caption.as_str())
            .collect();
        let inputs = s.noised(&latents, &noise, &timesteps, &captions, 2)?;
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
                inputs,
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
        let pred = predict(model, &b.inputs)?;
        let ref_pred = predict(&self.reference, &b.inputs)?.detach();
        let m = per_sample_mse(&pred, &b.inputs.target)?;
        let r = per_sample_mse(&ref_pred, &b.inputs.target)?;
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
        let losses = with_chosen_sft(&out.losses, &m.narrow(0, 0, p)?, self.sft_weight)?;
        Ok(Forward {
            loss_sum: (losses * &b.pair_weights)?.sum_all()?,
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
            "timesteps": format!("{:?}", self.setup.timesteps),
            "resolution": self.setup.latents.resolution,
            "hflip": self.setup.hflip,
            "prediction_type": format!("{:?}", self.setup.prediction),
            "sdxl": self.setup.conditioner.is_sdxl(),
        })
    }

    fn data_file(&self) -> Option<&Path> {
        Some(&self.data_file)
    }
}
