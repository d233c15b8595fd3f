//! Diffusion-DPO's loss as SalesforceAIResearch/DiffusionDPO `train.py` computes it (the
//! trainer UnifiedReward's `DiffusionDPO/` runs): chosen and rejected latents are noised with
//! the same noise at the same timestep; m = the per-sample mean squared error of the model's
//! prediction against the target (the noise for ε-prediction, the velocity for v-prediction),
//! r the same for the frozen reference;
//!
//!   loss = −log σ(−½·β·((m_w − m_l) − (r_w − r_l)))
//!
//! averaged over pairs (β 5000 by default). Logged as train.py logs them: the implicit
//! accuracy (the share of pairs whose inside term is > 0), and the model's and reference's
//! MSE, here of chosen and rejected apart.

use candle_core::{DType, Tensor};

use crate::logprob::to_f64_vec;
use crate::loss::dpo::softplus;
use crate::{Error, Result};

/// train.py's `--beta_dpo` default.
pub const DEFAULT_BETA: f64 = 5000.0;

/// [N, ...] predictions against their targets: the mean squared error of each sample, in
/// f32 (or f64 for f64 inputs) whatever the model's dtype, as train.py's `.float()`.
pub fn per_sample_mse(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    if pred.dims() != target.dims() || pred.rank() < 2 {
        return Err(Error::Config(format!(
            "Diffusion-DPO: prediction {:?} and target {:?} must share a shape [N, ...]",
            pred.dims(),
            target.dims()
        )));
    }
    let work = if pred.dtype() == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    let n = pred.dim(0)?;
    let diff = (pred.to_dtype(work)? - target.to_dtype(work)?)?;
    Ok(diff.sqr()?.reshape((n, ()))?.mean(1)?)
}

/// Per-sample MSEs of a micro-batch of pairs, each `[P]`: the model's carry the gradient.
pub struct PairErrors<'a> {
    pub model_chosen: &'a Tensor,
    pub model_rejected: &'a Tensor,
    pub ref_chosen: &'a Tensor,
    pub ref_rejected: &'a Tensor,
}

pub struct DiffusionDpoOutput {
    /// `[P]` −log σ(inside) per pair, differentiable in the model's errors.
    pub losses: Tensor,
    /// Each logged metric summed over the pairs (the loop averages them).
    pub metric_sums: Vec<(String, f64)>,
}

pub fn diffusion_dpo_loss(beta: f64, e: &PairErrors) -> Result<DiffusionDpoOutput> {
    if !(beta > 0.0 && beta.is_finite()) {
        return Err(Error::Config(format!(
            "--beta must be a positive number, got {beta}"
        )));
    }
    let p = e.model_chosen.dim(0)?;
    for (name, t) in [
        ("model rejected", e.model_rejected),
        ("reference chosen", e.ref_chosen),
        ("reference rejected", e.ref_rejected),
    ] {
        if t.dims() != [p] {
            return Err(Error::Config(format!(
                "Diffusion-DPO: {name} errors have shape {:?}, expected [{p}]",
                t.dims()
            )));
        }
    }
    let f = |t: &Tensor| t.to_dtype(DType::F64);
    let model_diff = (f(e.model_chosen)? - f(e.model_rejected)?)?;
    let ref_diff = (f(&e.ref_chosen.detach())? - f(&e.ref_rejected.detach())?)?;
    let inside = ((model_diff - ref_diff)? * (-0.5 * beta))?;
    // −log σ(x) = softplus(−x).
    let losses = softplus(&inside.neg()?)?;
    let sum = |t: &Tensor| -> Result<f64> { Ok(to_f64_vec(&t.detach())?.iter().sum()) };
    let accurate = to_f64_vec(&inside.detach())?
        .iter()
        .filter(|&&x| x > 0.0)
        .count() as f64;
    let metric_sums = vec![
        ("implicit_acc".to_string(), accurate),
        ("mse/model_chosen".to_string(), sum(e.model_chosen)?),
        ("mse/model_rejected".to_string(), sum(e.model_rejected)?),
        ("mse/ref_chosen".to_string(), sum(e.ref_chosen)?),
        ("mse/ref_rejected".to_string(), sum(e.ref_rejected)?),
    ];
    Ok(DiffusionDpoOutput {
        losses,
        metric_sums,
    })
}

/// Each pair's loss plus `sft_weight` times the model's error on its chosen image: the
/// denoising loss on the chosen half (`--sft-weight`; train.py has none, i.e. 0). Without it
/// nothing holds the model near the chosen images while the loss pushes it away from the
/// rejected ones; measured on the demo's generator (README), that push alone drifted every
/// sample's colour.
pub fn with_chosen_sft(losses: &Tensor, model_chosen: &Tensor, sft_weight: f64) -> Result<Tensor> {
    if !(sft_weight >= 0.0 && sft_weight.is_finite()) {
        return Err(Error::Config(format!(
            "--sft-weight must be a finite number of at least 0, got {sft_weight}"
        )));
    }
    if sft_weight == 0.0 {
        return Ok(losses.clone());
    }
    let chosen = model_chosen.to_dtype(losses.dtype())?;
    Ok((losses + (chosen * sft_weight)?)?)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    fn sigmoid(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    /// Values and the gradient in the chosen error: β/2·σ(−inside) from the DPO term, plus
    /// the weight.
    #[test]
    fn the_sft_term_adds_its_weight_times_the_chosen_error() -> Result<()> {
        let dev = Device::Cpu;
        let beta = 5000.0;
        let (mw, ml, rw, rl) = (
            [0.1300f64, 0.0910],
            [0.1280f64, 0.0950],
            [0.1310f64, 0.0920],
            [0.1270f64, 0.0940],
        );
        for weight in [0.0, 300.0] {
            let chosen = Var::new(&mw[..], &dev)?;
            let rejected = Tensor::new(&ml[..], &dev)?;
            let (ref_w, ref_l) = (Tensor::new(&rw[..], &dev)?, Tensor::new(&rl[..], &dev)?);
            let out = diffusion_dpo_loss(
                beta,
                &PairErrors {
                    model_chosen: chosen.as_tensor(),
                    model_rejected: &rejected,
                    ref_chosen: &ref_w,
                    ref_rejected: &ref_l,
                },
            )?;
            let total = with_chosen_sft(&out.losses, chosen.as_tensor(), weight)?;
            let values = to_f64_vec(&total)?;
            let grads = total.sum_all()?.backward()?;
            let grad = to_f64_vec(
                grads
                    .get(&chosen)
                    .expect("a gradient for the chosen errors"),
            )?;
            for i in 0..2 {
                let inside = -0.5 * beta * ((mw[i] - ml[i]) - (rw[i] - rl[i]));
                let dpo = (1.0 + (-inside).exp()).ln();
                assert!(
                    (values[i] - (dpo + weight * mw[i])).abs() < 1e-12,
                    "{values:?}"
                );
                let want = 0.5 * beta * sigmoid(-inside) + weight;
                assert!(
                    (grad[i] - want).abs() < 1e-9 * want.abs().max(1.0),
                    "{grad:?} vs {want}"
                );
            }
        }
        let t = Tensor::new(&[0.5f64], &dev)?;
        assert!(with_chosen_sft(&t, &t, -1.0).is_err());
        assert!(with_chosen_sft(&t, &t, f64::NAN).is_err());
        Ok(())
    }
}
