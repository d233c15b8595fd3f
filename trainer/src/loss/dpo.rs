//! The DPO losses of TRL's `DPOTrainer` and the metrics it logs.
//!
//! With h = (log π(c) − log π_ref(c)) − (log π(r) − log π_ref(r)) for chosen c and rejected r:
//! - `sigmoid`: −(1 − ε)·log σ(β·h) − ε·log σ(−β·h) (ε the label smoothing, "cDPO");
//! - `ipo`: (h − 1/(2β))², with every log-probability divided by its answer's token count
//!   (IPO's length normalisation, as TRL applies it);
//! - `hinge`: max(0, 1 − β·h).
//!
//! Rewards are β·(log π − log π_ref) of each answer; `rewards/accuracies` is the share of
//! pairs whose chosen reward is strictly the larger.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::logprob::to_f64_vec;
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DpoLossKind {
    Sigmoid,
    Ipo,
    Hinge,
}

impl FromStr for DpoLossKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "sigmoid" => Ok(Self::Sigmoid),
            "ipo" => Ok(Self::Ipo),
            "hinge" => Ok(Self::Hinge),
            other => Err(format!(
                "unknown DPO loss {other:?}: expected sigmoid, ipo or hinge"
            )),
        }
    }
}

impl fmt::Display for DpoLossKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Sigmoid => "sigmoid",
            Self::Ipo => "ipo",
            Self::Hinge => "hinge",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DpoParams {
    pub beta: f64,
    pub loss: DpoLossKind,
    /// ε of the sigmoid loss; 0 is plain DPO.
    pub label_smoothing: f64,
}

impl DpoParams {
    pub fn validate(&self) -> Result<()> {
        if !(self.beta > 0.0 && self.beta.is_finite()) {
            return Err(Error::Config(format!(
                "beta must be positive, got {}",
                self.beta
            )));
        }
        if !(0.0..0.5).contains(&self.label_smoothing) {
            return Err(Error::Config(format!(
                "label smoothing must be in [0, 0.5), got {}",
                self.label_smoothing
            )));
        }
        if self.label_smoothing > 0.0 && self.loss != DpoLossKind::Sigmoid {
            return Err(Error::Config(format!(
                "label smoothing applies to the sigmoid loss only, not {}",
                self.loss
            )));
        }
        Ok(())
    }
}

/// Summed answer log-probabilities of a batch of pairs (each `[B]`) and the answers' token
/// counts. The reference values carry no gradient.
pub struct PairLogps<'a> {
    pub policy_chosen: &'a Tensor,
    pub policy_rejected: &'a Tensor,
    pub ref_chosen: &'a Tensor,
    pub ref_rejected: &'a Tensor,
    pub chosen_tokens: &'a [usize],
    pub rejected_tokens: &'a [usize],
}

/// Per-pair values behind the logged metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DpoStats {
    pub rewards_chosen: Vec<f64>,
    pub rewards_rejected: Vec<f64>,
    pub logps_chosen: Vec<f64>,
    pub logps_rejected: Vec<f64>,
}

impl DpoStats {
    /// Each metric summed over the pairs, under TRL's names.
    pub fn sums(&self) -> Vec<(String, f64)> {
        let sum = |v: &[f64]| v.iter().sum::<f64>();
        let pairs = self.rewards_chosen.iter().zip(&self.rewards_rejected);
        let accurate = pairs.clone().filter(|(c, r)| c > r).count() as f64;
        let margins: f64 = pairs.map(|(c, r)| c - r).sum();
        vec![
            ("rewards/chosen".into(), sum(&self.rewards_chosen)),
            ("rewards/rejected".into(), sum(&self.rewards_rejected)),
            ("rewards/accuracies".into(), accurate),
            ("rewards/margins".into(), margins),
            ("logps/chosen".into(), sum(&self.logps_chosen)),
            ("logps/rejected".into(), sum(&self.logps_rejected)),
        ]
    }

    /// Each metric averaged over the pairs.
    pub fn means(&self) -> Vec<(String, f64)> {
        let n = self.rewards_chosen.len().max(1) as f64;
        self.sums().into_iter().map(|(k, v)| (k, v / n)).collect()
    }
}

pub struct DpoOutput {
    /// `[B]` f64, differentiable in the policy log-probabilities.
    pub losses: Tensor,
    pub stats: DpoStats,
}

pub fn dpo_loss(params: &DpoParams, lp: &PairLogps) -> Result<DpoOutput> {
    params.validate()?;
    let b = lp.policy_chosen.dim(0)?;
    for (name, t) in [
        ("policy rejected", lp.policy_rejected),
        ("reference chosen", lp.ref_chosen),
        ("reference rejected", lp.ref_rejected),
    ] {
        if t.dims() != [b] {
            return Err(Error::Config(format!(
                "DPO: {name} log-probs have shape {:?}, expected [{b}]",
                t.dims()
            )));
        }
    }
    if lp.chosen_tokens.len() != b || lp.rejected_tokens.len() != b {
        return Err(Error::Config(format!(
            "DPO: token counts for {} / {} answers, expected {b}",
            lp.chosen_tokens.len(),
            lp.rejected_tokens.len()
        )));
    }
    let f64_of = |t: &Tensor| t.to_dtype(DType::F64);
    let (mut pc, mut pr) = (f64_of(lp.policy_chosen)?, f64_of(lp.policy_rejected)?);
    let (mut rc, mut rr) = (
        f64_of(&lp.ref_chosen.detach())?,
        f64_of(&lp.ref_rejected.detach())?,
    );
    if params.loss == DpoLossKind::Ipo {
        let lens = |counts: &[usize]| -> Result<Tensor> {
            let v: Vec<f64> = counts.iter().map(|&n| n.max(1) as f64).collect();
            Ok(Tensor::from_vec(v, b, lp.policy_chosen.device())?)
        };
        let (lc, lr) = (lens(lp.chosen_tokens)?, lens(lp.rejected_tokens)?);
        pc = pc.div(&lc)?;
        rc = rc.div(&lc)?;
        pr = pr.div(&lr)?;
        rr = rr.div(&lr)?;
    }
    let chosen_ratio = (&pc - &rc)?;
    let rejected_ratio = (&pr - &rr)?;
    let h = (&chosen_ratio - &rejected_ratio)?;
    let beta = params.beta;
    let losses = match params.loss {
        DpoLossKind::Sigmoid => {
            let eps = params.label_smoothing;
            // −log σ(x) = softplus(−x).
            let lose = (softplus(&(&h * -beta)?)? * (1.0 - eps))?;
            if eps > 0.0 {
                (lose + (softplus(&(&h * beta)?)? * eps)?)?
            } else {
                lose
            }
        }
        DpoLossKind::Ipo => (&h - 1.0 / (2.0 * beta))?.sqr()?,
        DpoLossKind::Hinge => ((&h * -beta)? + 1.0)?.relu()?,
    };
    let stats = DpoStats {
        rewards_chosen: to_f64_vec(&(chosen_ratio.detach() * beta)?)?,
        rewards_rejected: to_f64_vec(&(rejected_ratio.detach() * beta)?)?,
        logps_chosen: to_f64_vec(&pc.detach())?,
        logps_rejected: to_f64_vec(&pr.detach())?,
    };
    Ok(DpoOutput { losses, stats })
}

/// ln(1 + eˣ) = max(x, 0) + ln(1 + e^−|x|), which neither overflows nor loses small values.
pub(crate) fn softplus(x: &Tensor) -> Result<Tensor> {
    let tail = (x.abs()?.neg()?.exp()? + 1.0)?.log()?;
    Ok((x.relu()? + tail)?)
}
