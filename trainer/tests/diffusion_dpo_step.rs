//! One Diffusion-DPO micro-batch against SalesforceAIResearch/DiffusionDPO's train.py run by
//! `scripts/golden/make_unet.py` (fixtures/diffusion/unet/sd15/dpo_step.*): the tiny SD 1.5
//! UNet's and its reference's predictions on shared noise and timesteps, the per-sample MSEs,
//! the loss, the implicit accuracy, the logged MSEs, and the loss's gradients.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use serde::Deserialize;
use unireward_models::diffusion::synthetic_weights::{synthetic_tensors, TensorSpec};
use unireward_models::diffusion::unet::{UNet2DConditionModel, UNetConfig};
use unireward_trainer::loss::diffusion_dpo::{diffusion_dpo_loss, per_sample_mse, PairErrors};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/diffusion/unet/sd15")
}

#[derive(Deserialize)]
struct Meta {
    beta: f64,
    pairs: usize,
    grad_keys: Vec<String>,
    reference_salt: String,
}

fn unet(tensors: HashMap<String, Tensor>) -> Result<UNet2DConditionModel> {
    let text = std::fs::read_to_string(fixture().join("unet/config.json"))?;
    let spec = serde_json::from_str::<UNetConfig>(&text)?.resolve()?;
    let vb = VarBuilder::from_tensors(tensors, DType::F64, &Device::Cpu);
    Ok(UNet2DConditionModel::new(&spec, vb)?)
}

fn rel_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    let d = (a - b)?.abs()?.max_all()?.to_scalar::<f64>()?;
    let m = b.abs()?.max_all()?.to_scalar::<f64>()?;
    Ok(d / m.max(1e-12))
}

#[test]
fn a_diffusion_dpo_step_equals_the_reference_trainer() -> Result<()> {
    let meta: Meta =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("dpo_step.json"))?)?;
    let golden =
        candle_core::safetensors::load(fixture().join("dpo_step.safetensors"), &Device::Cpu)?;
    let g = |k: &str| -> Result<Tensor> {
        Ok(golden
            .get(k)
            .with_context(|| format!("golden {k}"))?
            .clone())
    };
    let specs: Vec<TensorSpec> = serde_json::from_str(&std::fs::read_to_string(
        fixture().join("unet/weights.json"),
    )?)?;
    let vars: HashMap<String, Var> = synthetic_tensors(&specs, "", DType::F64, &Device::Cpu)?
        .into_iter()
        .map(|(k, t)| Ok((k, Var::from_tensor(&t)?)))
        .collect::<Result<_>>()?;
    let model = unet(
        vars.iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect(),
    )?;
    let reference = unet(synthetic_tensors(
        &specs,
        &meta.reference_salt,
        DType::F64,
        &Device::Cpu,
    )?)?;

    let (noisy, t, ctx, target) = (
        g("noisy_latents")?,
        g("timesteps")?,
        g("context")?,
        g("noise")?,
    );
    let model_pred = model.forward(&noisy, &t, &ctx, None)?;
    let ref_pred = reference.forward(&noisy, &t, &ctx, None)?.detach();
    // Both UNets embed the timestep in float32, as diffusers does, where torch's sin/cos and
    // Rust's differ in the last bit (6e-8 relative): that is the floor of every comparison
    // below but the formula's own (measured: predictions 1e-9, MSEs 3e-11, loss 1.4e-9,
    // gradients <= 3.2e-8, the largest on the layer the sinusoid feeds).
    assert!(rel_diff(&model_pred, &g("model_pred")?)? < 1e-8);
    assert!(rel_diff(&ref_pred, &g("ref_pred")?)? < 1e-8);

    let m = per_sample_mse(&model_pred, &target)?;
    let r = per_sample_mse(&ref_pred, &target)?;
    assert!(rel_diff(&m, &g("model_losses")?)? < 1e-8);
    assert!(rel_diff(&r, &g("ref_losses")?)? < 1e-8);
    let p = meta.pairs;
    let out = diffusion_dpo_loss(
        meta.beta,
        &PairErrors {
            model_chosen: &m.narrow(0, 0, p)?,
            model_rejected: &m.narrow(0, p, p)?,
            ref_chosen: &r.narrow(0, 0, p)?,
            ref_rejected: &r.narrow(0, p, p)?,
        },
    )?;
    let loss = out.losses.mean_all()?;
    let want = g("loss")?.to_vec1::<f64>()?[0];
    let got = loss.to_scalar::<f64>()?;
    assert!(
        (got - want).abs() <= 1e-8 * want.abs(),
        "loss {got} vs {want}"
    );
    let metric = |name: &str| -> f64 {
        out.metric_sums
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v / p as f64)
            .unwrap_or(f64::NAN)
    };
    assert_eq!(
        metric("implicit_acc"),
        g("implicit_acc")?.to_vec1::<f64>()?[0]
    );
    let raw_model = 0.5 * (metric("mse/model_chosen") + metric("mse/model_rejected"));
    let raw_ref = 0.5 * (metric("mse/ref_chosen") + metric("mse/ref_rejected"));
    for (got, key) in [(raw_model, "raw_model_loss"), (raw_ref, "raw_ref_loss")] {
        let want = g(key)?.to_vec1::<f64>()?[0];
        assert!(
            (got - want).abs() <= 1e-10 * want.abs(),
            "{key}: {got} vs {want}"
        );
    }

    // The formula alone, on train.py's own per-sample MSEs: exact.
    let (tm, tr) = (g("model_losses")?, g("ref_losses")?);
    let exact = diffusion_dpo_loss(
        meta.beta,
        &PairErrors {
            model_chosen: &tm.narrow(0, 0, p)?,
            model_rejected: &tm.narrow(0, p, p)?,
            ref_chosen: &tr.narrow(0, 0, p)?,
            ref_rejected: &tr.narrow(0, p, p)?,
        },
    )?
    .losses
    .mean_all()?
    .to_scalar::<f64>()?;
    assert!(
        (exact - want).abs() <= 1e-12 * want.abs(),
        "formula {exact} vs {want}"
    );

    let grads = loss.backward()?;
    for key in &meta.grad_keys {
        let got = grads
            .get(vars[key].as_tensor())
            .with_context(|| format!("no gradient reached {key}"))?;
        let rel = rel_diff(got, &g(&format!("grad.{key}"))?)?;
        assert!(rel < 1e-7, "grad {key}: relative {rel}");
    }
    // The reference is frozen: nothing flows into its predictions.
    assert!(grads.get(&ref_pred).is_none());
    Ok(())
}
