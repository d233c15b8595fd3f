//! `trainer denoise`: the plain denoising fine-tune of a diffusers pipeline's UNet on captioned
//! images, as diffusers' `examples/text_to_image/train_text_to_image.py` trains SD 1.5: the
//! image through the transform and the frozen VAE (latent sample × scaling factor), one noise
//! tensor and one uniform timestep per image, the noised latents through the UNet with the
//! frozen text encoder's conditioning, and the mean squared error of its prediction against the
//! noise (ε-prediction) or the velocity (v-prediction), [`crate::loss::denoise`]. No SNR
//! weighting, no noise offset, no caption dropout (train_text_to_image.py's defaults).
//!
//! It shares the inputs and the draws with Diffusion-DPO ([`super::diffusion`]): an example is
//! drawn as a pair's chosen image is, so resume is as exact.

use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use serde_json::{json, Value};
use unireward_models::diffusion::denoiser::Denoiser;

use super::diffusion::{predict, DiffusionSetup, Draw, NoisedBatch};
use super::diffusion_dpo::{EVAL_DRAWS, EVAL_POSITION};
use crate::data::captioned_images::CaptionedImages;
use crate::loss::denoise::denoising_loss_sum;
use crate::memory_estimate::StepShape;
use crate::train_loop::{Forward, Objective, Prepared};
use crate::{Error, Result};

pub struct DenoiseObjective {
    pub data: CaptionedImages,
    /// Held-out captioned images: their mean loss at fixed draws, `eval_loss`.
    pub eval: Option<CaptionedImages>,
    pub data_file: PathBuf,
    pub setup: DiffusionSetup,
}

impl DenoiseObjective {
    /// A micro-batch of `data`'s examples at `indices`, the first at stream `position`.
    pub fn prepare_from(
        &self,
        data: &CaptionedImages,
        indices: &[usize],
        position: usize,
    ) -> Result<Prepared<NoisedBatch>> {
        let s = &self.setup;
        let mut latents = Vec::with_capacity(indices.len());
        let mut noise = Vec::with_capacity(indices.len());
        let mut steps = Vec::with_capacity(indices.len());
        for (i, &index) in indices.iter().enumerate() {
            let pos = position + i;
            let ex = &data.examples[index];
            let l = s
                .candidate_latents(&ex.image, s.flip(pos, 0), pos, Draw::ChosenSample)
                .map_err(|e| Error::record(&ex.id, e))?;
            if let Some(first) = latents.first().map(Tensor::dims) {
                if first != l.dims() {
                    return Err(Error::record(
                        &ex.id,
                        format!(
                            "latents {:?} differ from the micro-batch's {first:?} (images of \
                             other sizes or frame counts; use --batch-size 1)",
                            l.dims()
                        ),
                    ));
                }
            }
            noise.push(s.noise(l.dims(), pos, l.device())?);
            steps.push(s.timestep(pos)?);
            latents.push(l);
        }
        let latents = Tensor::cat(&latents, 0)?;
        let noise = Tensor::cat(&noise, 0)?.to_dtype(latents.dtype())?;
        let captions: Vec<&str> = indices
            .iter()
            .map(|&i| data.examples[i].caption.as_str())
            .collect();
        let batch = s.noised(&latents, &noise, &steps, &captions, 1)?;
        Ok(Prepared {
            weight: indices.len() as f64,
            shape: StepShape {
                rows: indices.len(),
                tokens: latents.dims().iter().skip(2).product(),
                scored: 0,
                tiles: 0,
                frame_patches: 0,
            },
            batch,
        })
    }
}

impl Objective for DenoiseObjective {
    type Batch = NoisedBatch;
    type Model = Denoiser;

    fn num_examples(&self) -> usize {
        self.data.examples.len()
    }

    fn prepare(&self, indices: &[usize], position: usize) -> Result<Prepared<NoisedBatch>> {
        self.prepare_from(&self.data, indices, position)
    }

    fn forward(&self, model: &Denoiser, b: &NoisedBatch) -> Result<Forward> {
        let pred = predict(model, b)?;
        Ok(Forward {
            loss_sum: denoising_loss_sum(&pred, &b.target)?,
            metric_sums: Vec::new(),
        })
    }

    /// The held-out images' mean loss over [`EVAL_DRAWS`] draws of each, at the same draws
    /// every time, so that evaluations compare across steps and runs.
    fn evaluate(&self, model: &Denoiser) -> Result<Vec<(String, f64)>> {
        let Some(eval) = &self.eval else {
            return Ok(Vec::new());
        };
        let mut loss = 0.0;
        for draw in 0..EVAL_DRAWS {
            for index in 0..eval.examples.len() {
                let position = EVAL_POSITION + draw * eval.examples.len() + index;
                let batch = self.prepare_from(eval, &[index], position)?;
                let fwd = self.forward(model, &batch.batch)?;
                loss += fwd.loss_sum.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            }
        }
        let n = (EVAL_DRAWS * eval.examples.len()).max(1) as f64;
        Ok(vec![("eval_loss".into(), loss / n)])
    }

    fn describe(&self) -> Value {
        json!({
            "kind": "denoise",
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
