//! What the Qwen-VL DPO goldens (`qwen_dpo_golden.rs`, `qwen3_dpo_golden.rs`) share: the
//! objective over a golden pair, its loss and gradients, and the comparisons with their
//! tolerances.

use std::collections::HashMap;

use anyhow::{Context, Result};
use candle_core::{backprop::GradStore, DType, Tensor, Var};
use serde_json::Value;
use unireward_trainer::data::dpo::DpoData;
use unireward_trainer::logprob::{media_features, sequence_logprobs, to_f64_vec};
use unireward_trainer::loss::dpo::{DpoLossKind, DpoParams};
use unireward_trainer::objectives::{DpoObjective, Reference};
use unireward_trainer::train_loop::Objective;
use unireward_trainer::trainee::Trainee;
use unireward_trainer::varmap_model::VarMapModel;

/// The task's bound on log-probs; the measured differences are printed.
pub const LOGPROB_TOL: f64 = 1e-3;
/// Gradients, relative to the tensor's largest entry. Both sides run in float64 but for the
/// head: our decoder computes logits and their log-softmax in f32 at every dtype, which puts
/// the log-probs ~1e-5 from transformers' float64 ones and the gradients ~2e-6 (measured).
pub const GRAD_REL_TOL: f64 = 1e-5;

pub fn pair(cases: &Value) -> [f64; 2] {
    [0, 1].map(|i| cases[i].as_f64().unwrap_or(f64::NAN))
}

pub fn objective(data: DpoData, reference: [f64; 2], beta: f64) -> DpoObjective {
    DpoObjective {
        data,
        params: DpoParams {
            beta,
            loss: DpoLossKind::Sigmoid,
            label_smoothing: 0.0,
        },
        sft_weight: 0.0,
        reference: Reference::Precomputed(vec![reference]),
    }
}

/// The DPO loss of the pair and its gradients.
pub fn loss_and_grads(model: &VarMapModel, obj: &DpoObjective) -> Result<(f64, GradStore)> {
    let batch = obj.prepare(&[0], 0)?.batch;
    let fwd = obj.forward(Trainee::model(model), &batch)?;
    let loss = fwd.loss_sum.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    Ok((loss, fwd.loss_sum.backward()?))
}

pub fn max_abs(t: &Tensor) -> Result<f64> {
    Ok(t.abs()?
        .flatten_all()?
        .max(0)?
        .to_dtype(DType::F64)?
        .to_scalar()?)
}

/// Each golden gradient `prefix.<name>` against ours for the variable of that name; returns
/// the worst relative difference.
pub fn check_grads(
    vars: &[(String, Var)],
    grads: &GradStore,
    want: &HashMap<String, Tensor>,
    prefix: &str,
) -> Result<f64> {
    let mut worst: f64 = 0.0;
    let mut n = 0;
    for (key, expected) in want.iter().filter(|(k, _)| k.starts_with(prefix)) {
        let name = &key[prefix.len()..];
        let (_, var) = vars
            .iter()
            .find(|(k, _)| k == name)
            .with_context(|| format!("no trained variable {name}"))?;
        let got = grads
            .get(var.as_tensor())
            .with_context(|| format!("no gradient for {name}"))?;
        let scale = max_abs(expected)?;
        let rel = max_abs(&(got.to_dtype(DType::F64)? - expected.to_dtype(DType::F64)?)?)? / scale;
        println!("{name}: max |grad| {scale:.3e}, relative difference {rel:.2e}");
        assert!(scale > 0.0, "{name}: the golden gradient is zero");
        worst = worst.max(rel);
        n += 1;
    }
    assert!(n >= 2, "the golden holds {n} gradient(s) under {prefix}");
    assert!(
        worst <= GRAD_REL_TOL,
        "{prefix}: relative difference {worst:.3e}"
    );
    Ok(worst)
}

pub fn check_logps(what: &str, got: [f64; 2], want: [f64; 2]) {
    for (k, (g, w)) in ["chosen", "rejected"].iter().zip(got.iter().zip(want)) {
        println!(
            "{what} {k}: ours {g:.10}, transformers {w:.10}, diff {:.2e}",
            (g - w).abs()
        );
        assert!((g - w).abs() <= LOGPROB_TOL, "{what} {k}: {g} vs {w}");
    }
}

/// The policy's (chosen, rejected) log-probs of the pair.
pub fn policy_logps(model: &VarMapModel, data: &DpoData) -> Result<[f64; 2]> {
    let ex = data.prepare(0)?;
    let feats = media_features(model.model(), &ex.media)?;
    let lp = sequence_logprobs(
        model.model(),
        &[(&ex.chosen, &feats), (&ex.rejected, &feats)],
    )?;
    let v = to_f64_vec(&lp)?;
    Ok([v[0], v[1]])
}
