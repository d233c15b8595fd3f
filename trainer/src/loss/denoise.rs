//! The plain denoising loss diffusers' train_text_to_image.py trains with:
//! `F.mse_loss(model_pred.float(), target.float(), reduction="mean")`, the target the noise
//! (ε-prediction) or the velocity (v-prediction). The loop divides a micro-batch's sum by
//! its examples, so the sum of per-sample means is returned; with samples of one shape (as a
//! micro-batch's are) that is the mean over every element.

use candle_core::Tensor;

use crate::loss::diffusion_dpo::per_sample_mse;
use crate::Result;

/// Σ over samples of mean((pred − target)²), a scalar carrying the gradient.
pub fn denoising_loss_sum(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    Ok(per_sample_mse(pred, target)?.sum_all()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The loss of fixed tensors against the formula written out, and its gradient
    /// d/dpred = 2 (pred − target) / (elements per sample).
    #[test]
    fn equals_the_reference_formula() -> Result<()> {
        let pred: Vec<f32> = (0..24).map(|i| ((i * 7) % 11) as f32 * 0.3 - 1.2).collect();
        let target: Vec<f32> = (0..24).map(|i| ((i * 5) % 13) as f32 * 0.2 - 0.9).collect();
        let p = Var::from_vec(pred.clone(), (2, 3, 2, 2), &Device::Cpu)?;
        let t = Tensor::from_vec(target.clone(), (2, 3, 2, 2), &Device::Cpu)?;
        let loss = denoising_loss_sum(p.as_tensor(), &t)?;
        // The loop divides by the two samples: the mean over all 24 elements.
        let mean = loss.to_scalar::<f32>()? as f64 / 2.0;
        let want: f64 = pred
            .iter()
            .zip(&target)
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum::<f64>()
            / 24.0;
        assert!((mean - want).abs() < 1e-6, "{mean} vs {want}");
        let grads = loss.backward()?;
        let g = grads
            .get(p.as_tensor())
            .expect("gradient of pred")
            .flatten_all()?
            .to_vec1::<f32>()?;
        for ((g, a), b) in g.iter().zip(&pred).zip(&target) {
            let want = 2.0 * (a - b) / 12.0;
            assert!((g - want).abs() < 1e-6, "{g} vs {want}");
        }
        Ok(())
    }
}
