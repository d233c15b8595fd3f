//! The UNet against diffusers (`scripts/golden/make_unet.py`, fixtures/diffusion/unet): SD 1.5's
//! and SDXL's block layouts with shrunk widths, latents whose sides do and do not divide by the
//! UNet's factor, SDXL's added conditioning; forward within 1e-4 in f32 through the loader
//! users run, and gradients (f64) equal to torch's autograd and to finite differences.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use serde::Deserialize;
use unireward_models::diffusion::synthetic_weights::{synthetic_tensors, TensorSpec};
use unireward_models::diffusion::unet::{AddedCond, UNet2DConditionModel, UNetConfig};

fn fixture(model: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/diffusion/unet")
        .join(model)
}

fn manifest(model: &str) -> Result<Vec<TensorSpec>> {
    let path = fixture(model).join("unet/weights.json");
    Ok(serde_json::from_str(
        &std::fs::read_to_string(&path).context("weights.json")?,
    )?)
}

/// The fixture's UNet as a checkpoint directory users would have: config.json and
/// diffusion_pytorch_model.safetensors.
fn write_checkpoint(model: &str, dir: &Path) -> Result<()> {
    std::fs::copy(
        fixture(model).join("unet/config.json"),
        dir.join("config.json"),
    )?;
    let tensors = synthetic_tensors(&manifest(model)?, "", DType::F32, &Device::Cpu)?;
    candle_core::safetensors::save(&tensors, dir.join("diffusion_pytorch_model.safetensors"))?;
    Ok(())
}

#[derive(Deserialize)]
struct Cases {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    grad_keys: Vec<String>,
}

fn cases(model: &str) -> Result<Vec<Case>> {
    let text = std::fs::read_to_string(fixture(model).join("cases.json"))?;
    Ok(serde_json::from_str::<Cases>(&text)?.cases)
}

fn expected(model: &str) -> Result<HashMap<String, Tensor>> {
    Ok(candle_core::safetensors::load(
        fixture(model).join("expected.safetensors"),
        &Device::Cpu,
    )?)
}

fn get(t: &HashMap<String, Tensor>, key: &str, dtype: DType) -> Result<Tensor> {
    Ok(t.get(key)
        .with_context(|| format!("golden tensor {key}"))?
        .to_dtype(dtype)?)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    Ok((a.to_dtype(DType::F64)? - b.to_dtype(DType::F64)?)?
        .abs()?
        .max_all()?
        .to_scalar::<f64>()?)
}

fn max_abs(a: &Tensor) -> Result<f64> {
    Ok(a.to_dtype(DType::F64)?
        .abs()?
        .max_all()?
        .to_scalar::<f64>()?)
}

fn run(
    unet: &UNet2DConditionModel,
    golden: &HashMap<String, Tensor>,
    case: &str,
    sample: &Tensor,
    dtype: DType,
) -> Result<Tensor> {
    let t = get(golden, &format!("{case}.timesteps"), DType::F32)?;
    let ctx = get(golden, &format!("{case}.context"), dtype)?;
    let added = match golden.get(&format!("{case}.text_embeds")) {
        Some(text) => Some((
            text.to_dtype(dtype)?,
            get(golden, &format!("{case}.time_ids"), dtype)?,
        )),
        None => None,
    };
    Ok(unet.forward(
        sample,
        &t,
        &ctx,
        added.as_ref().map(|(text_embeds, time_ids)| AddedCond {
            text_embeds,
            time_ids,
        }),
    )?)
}

/// The case at timestep 0 and zero time ids, where the golden gradients were taken (their
/// float32 sinusoids are exact there; elsewhere torch's and Rust's sin differ in the last bit).
fn run_at_zero(
    unet: &UNet2DConditionModel,
    golden: &HashMap<String, Tensor>,
    case: &str,
    sample: &Tensor,
) -> Result<Tensor> {
    let t = get(golden, &format!("{case}.timesteps"), DType::F32)?.zeros_like()?;
    let ctx = get(golden, &format!("{case}.context"), DType::F64)?;
    let text = golden.get(&format!("{case}.text_embeds"));
    let ids =
        get(golden, &format!("{case}.time_ids"), DType::F64).and_then(|t| Ok(t.zeros_like()?));
    let added = match (text, &ids) {
        (Some(text_embeds), Ok(time_ids)) => Some(AddedCond {
            text_embeds,
            time_ids,
        }),
        _ => None,
    };
    Ok(unet.forward(sample, &t, &ctx, added)?)
}

fn forward_matches(model: &str) -> Result<()> {
    let dir = tempfile::tempdir()?;
    write_checkpoint(model, dir.path())?;
    let unet = UNet2DConditionModel::load(dir.path(), DType::F32, &Device::Cpu)?;
    let golden = expected(model)?;
    for case in cases(model)? {
        let sample = get(&golden, &format!("{}.sample", case.name), DType::F32)?;
        let got = run(&unet, &golden, &case.name, &sample, DType::F32)?;
        let want = get(&golden, &format!("{}.output", case.name), DType::F64)?;
        assert_eq!(got.dims(), want.dims(), "{model} {}", case.name);
        let diff = max_abs_diff(&got, &want)?;
        assert!(diff < 1e-4, "{model} {}: max |Δ| {diff}", case.name);
    }
    Ok(())
}

#[test]
fn sd15_unet_matches_diffusers() -> Result<()> {
    forward_matches("sd15")
}

#[test]
fn sdxl_unet_with_added_conditioning_matches_diffusers() -> Result<()> {
    forward_matches("sdxl")
}

/// The checkpoint's weights as f64 `Var`s and the UNet built on them.
fn trainable(model: &str) -> Result<(UNet2DConditionModel, HashMap<String, Var>)> {
    let tensors = synthetic_tensors(&manifest(model)?, "", DType::F64, &Device::Cpu)?;
    let vars: HashMap<String, Var> = tensors
        .into_iter()
        .map(|(k, t)| Ok((k, Var::from_tensor(&t)?)))
        .collect::<Result<_>>()?;
    let as_tensors: HashMap<String, Tensor> = vars
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    let text = std::fs::read_to_string(fixture(model).join("unet/config.json"))?;
    let spec = serde_json::from_str::<UNetConfig>(&text)?.resolve()?;
    let vb = VarBuilder::from_tensors(as_tensors, DType::F64, &Device::Cpu);
    Ok((UNet2DConditionModel::new(&spec, vb)?, vars))
}

fn gradients_match(model: &str) -> Result<()> {
    let (unet, vars) = trainable(model)?;
    let golden = expected(model)?;
    for case in cases(model)? {
        let name = &case.name;
        let sample = Var::from_tensor(&get(&golden, &format!("{name}.sample"), DType::F64)?)?;
        let out = run_at_zero(&unet, &golden, name, sample.as_tensor())?;
        let proj = get(&golden, &format!("{name}.proj"), DType::F64)?;
        let grads = (out * proj)?.sum_all()?.backward()?;
        let mut checked = vec![("sample".to_string(), sample.as_tensor().clone())];
        for key in &case.grad_keys {
            checked.push((key.clone(), vars[key].as_tensor().clone()));
        }
        for (key, var) in checked {
            let got = grads
                .get(&var)
                .with_context(|| format!("{model} {name}: no gradient reached {key}"))?;
            let want = get(&golden, &format!("{name}.grad.{key}"), DType::F64)?;
            let rel = max_abs_diff(got, &want)? / max_abs(&want)?.max(1e-12);
            assert!(
                rel < 1e-9,
                "{model} {name} grad {key}: relative max |Δ| {rel}"
            );
        }
    }
    Ok(())
}

#[test]
fn sd15_unet_gradients_equal_torch_autograd() -> Result<()> {
    gradients_match("sd15")
}

#[test]
fn sdxl_unet_gradients_equal_torch_autograd() -> Result<()> {
    gradients_match("sdxl")
}

/// Central differences on single weights, against candle's backward: for the parameters whose
/// backward is candle's own (convolution with stride 2, the nearest upsampling to a size that
/// is not twice the input, GroupNorm's composition).
#[test]
fn unet_gradients_equal_finite_differences() -> Result<()> {
    let (unet, vars) = trainable("sd15")?;
    let golden = expected("sd15")?;
    // The 12x10 latents go through the non-doubling upsample (2 -> 3 -> 5 -> 10 rows).
    let case = "latents_12x10";
    let sample = get(&golden, &format!("{case}.sample"), DType::F64)?;
    let proj = get(&golden, &format!("{case}.proj"), DType::F64)?;
    let objective = |unet: &UNet2DConditionModel| -> Result<Tensor> {
        Ok((run_at_zero(unet, &golden, case, &sample)? * &proj)?.sum_all()?)
    };
    let grads = objective(&unet)?.backward()?;
    for (key, index) in [
        ("down_blocks.1.downsamplers.0.conv.weight", 17usize),
        ("up_blocks.1.upsamplers.0.conv.weight", 5),
        ("mid_block.resnets.1.norm2.weight", 3),
        ("up_blocks.2.resnets.2.conv_shortcut.weight", 9),
    ] {
        let var = &vars[key];
        let base = var.as_tensor().flatten_all()?.to_vec1::<f64>()?;
        let analytic = grads
            .get(var.as_tensor())
            .with_context(|| format!("no gradient reached {key}"))?
            .flatten_all()?
            .to_vec1::<f64>()?[index];
        let h = 1e-5;
        let at = |delta: f64| -> Result<f64> {
            let mut v = base.clone();
            v[index] += delta;
            var.set(&Tensor::from_vec(v, var.as_tensor().shape(), &Device::Cpu)?)?;
            Ok(objective(&unet)?.to_scalar::<f64>()?)
        };
        let numeric = (at(h)? - at(-h)?) / (2.0 * h);
        at(0.0)?;
        let err = (numeric - analytic).abs() / analytic.abs().max(1e-3);
        assert!(
            err < 1e-5,
            "{key}[{index}]: numeric {numeric} analytic {analytic}"
        );
    }
    Ok(())
}

#[test]
fn a_checkpoint_missing_keys_is_refused_naming_them() -> Result<()> {
    let dir = tempfile::tempdir()?;
    write_checkpoint("sd15", dir.path())?;
    let path = dir.path().join("diffusion_pytorch_model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu)?;
    tensors.remove("mid_block.attentions.0.proj_in.weight");
    candle_core::safetensors::save(&tensors, &path)?;
    let err = match UNet2DConditionModel::load(dir.path(), DType::F32, &Device::Cpu) {
        Ok(_) => anyhow::bail!("a checkpoint without a weight was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("mid_block.attentions.0.proj_in.weight")
            && err.contains("UNet2DConditionModel"),
        "{err}"
    );
    Ok(())
}

#[test]
fn unsupported_settings_are_refused_by_name() -> Result<()> {
    let text = std::fs::read_to_string(fixture("sdxl").join("unet/config.json"))?;
    for (key, value, named) in [
        (
            "addition_embed_type",
            serde_json::json!("text_image"),
            "addition_embed_type",
        ),
        (
            "time_cond_proj_dim",
            serde_json::json!(256),
            "time_cond_proj_dim",
        ),
        (
            "resnet_time_scale_shift",
            serde_json::json!("scale_shift"),
            "resnet_time_scale_shift",
        ),
        (
            "down_block_types",
            serde_json::json!([
                "DownBlock2D",
                "SimpleCrossAttnDownBlock2D",
                "CrossAttnDownBlock2D"
            ]),
            "SimpleCrossAttnDownBlock2D",
        ),
    ] {
        let mut cfg: serde_json::Value = serde_json::from_str(&text)?;
        cfg[key] = value;
        let err = serde_json::from_value::<UNetConfig>(cfg)?
            .resolve()
            .err()
            .with_context(|| format!("{key} was accepted"))?
            .to_string();
        assert!(err.contains(named), "{key}: {err}");
    }
    Ok(())
}
