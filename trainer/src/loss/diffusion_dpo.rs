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
