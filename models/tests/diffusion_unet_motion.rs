//! The motion UNet against diffusers' `UNetMotionModel` (`scripts/golden/make_unet_motion.py`,
//! fixtures/diffusion/unet_motion): AnimateDiff v1.5's layouts with shrunk widths, 8 and 16
//! frames, latents whose sides do and do not divide by the UNet's factor, with and without the
//! motion mid block; forward within 1e-4 in f32 through the loader users run, gradients (f64)
//! equal to torch's autograd, missing keys and unsupported settings named.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use serde::Deserialize;
use unireward_models::diffusion::synthetic_weights::{synthetic_tensors, TensorSpec};
use unireward_models::diffusion::unet_motion::{MotionSpec, UNetMotionModel};

fn fixture(model: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/diffusion/unet_motion")
        .join(model)
}

fn manifest(model: &str) -> Result<Vec<TensorSpec>> {
    let path = fixture(model).join("unet/weights.json");
    Ok(serde_json::from_str(
        &std::fs::read_to_string(&path).context("weights.json")?,
    )?)
}

fn config(model: &str) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(fixture(model).join("unet/config.json"))?;
    Ok(serde_json::from_str(&text)?)
}

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

fn forward_matches(model: &str) -> Result<()> {
    let dir = tempfile::tempdir()?;
    write_checkpoint(model, dir.path())?;
    let unet = UNetMotionModel::load(dir.path(), DType::F32, &Device::Cpu)?;
    let golden = expected(model)?;
    for case in cases(model)? {
        let name = &case.name;
        let sample = get(&golden, &format!("{name}.sample"), DType::F32)?;
        let t = get(&golden, &format!("{name}.timesteps"), DType::F32)?;
        let ctx = get(&golden, &format!("{name}.context"), DType::F32)?;
        let got = unet.forward(&sample, &t, &ctx)?;
        let want = get(&golden, &format!("{name}.output"), DType::F64)?;
        assert_eq!(got.dims(), want.dims(), "{model} {name}");
        let diff = max_abs_diff(&got, &want)?;
        eprintln!(
            "{model} {name}: max |Δ| {diff:.2e} (output max {:.2})",
            max_abs(&want)?
        );
        assert!(diff < 1e-4, "{model} {name}: max |Δ| {diff}");
    }
    Ok(())
}

#[test]
fn animatediff_v1_5_2_motion_unet_matches_diffusers() -> Result<()> {
    forward_matches("v1_5_2")
}

#[test]
fn animatediff_v1_without_motion_mid_block_matches_diffusers() -> Result<()> {
    forward_matches("animatediff_v1")
}

fn gradients_match(model: &str) -> Result<()> {
    let tensors = synthetic_tensors(&manifest(model)?, "", DType::F64, &Device::Cpu)?;
    let vars: HashMap<String, Var> = tensors
        .into_iter()
        .map(|(k, t)| Ok((k, Var::from_tensor(&t)?)))
        .collect::<Result<_>>()?;
    let as_tensors: HashMap<String, Tensor> = vars
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    let spec = MotionSpec::from_config(&config(model)?)?;
    let vb = VarBuilder::from_tensors(as_tensors, DType::F64, &Device::Cpu);
    let unet = UNetMotionModel::new(&spec, vb)?;
    let golden = expected(model)?;
    for case in cases(model)? {
        let name = &case.name;
        let sample = Var::from_tensor(&get(&golden, &format!("{name}.sample"), DType::F64)?)?;
        // At timestep 0, where the golden gradients were taken (the float32 timestep
        // sinusoids are exact there on both sides).
        let t = get(&golden, &format!("{name}.timesteps"), DType::F32)?.zeros_like()?;
        let ctx = get(&golden, &format!("{name}.context"), DType::F64)?;
        let out = unet.forward(sample.as_tensor(), &t, &ctx)?;
        let proj = get(&golden, &format!("{name}.proj"), DType::F64)?;
        let grads = (out * proj)?.sum_all()?.backward()?;
        let mut checked = vec![("sample".to_string(), sample.as_tensor().clone())];
        for key in &case.grad_keys {
            let var = vars.get(key).with_context(|| format!("no weight {key}"))?;
            checked.push((key.clone(), var.as_tensor().clone()));
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
fn motion_unet_gradients_equal_torch_autograd() -> Result<()> {
    gradients_match("v1_5_2")?;
    gradients_match("animatediff_v1")
}

#[test]
fn a_checkpoint_missing_motion_keys_is_refused_naming_them() -> Result<()> {
    let dir = tempfile::tempdir()?;
    write_checkpoint("v1_5_2", dir.path())?;
    let path = dir.path().join("diffusion_pytorch_model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu)?;
    let gone = [
        "down_blocks.0.motion_modules.1.transformer_blocks.0.attn2.to_q.weight",
        "mid_block.motion_modules.0.proj_out.bias",
    ];
    for key in gone {
        tensors.remove(key);
    }
    candle_core::safetensors::save(&tensors, &path)?;
    let err = match UNetMotionModel::load(dir.path(), DType::F32, &Device::Cpu) {
        Ok(_) => anyhow::bail!("a checkpoint without motion weights was accepted"),
        Err(e) => e.to_string(),
    };
    for key in gone {
        assert!(err.contains(key), "{err}");
    }
    assert!(err.contains("UNetMotionModel"), "{err}");
    Ok(())
}

#[test]
fn unsupported_motion_settings_are_refused_by_name() -> Result<()> {
    for (key, value, named) in [
        (
            "addition_embed_type",
            serde_json::json!("text_time"),
            "AnimateDiff-SDXL",
        ),
        (
            "reverse_motion_num_attention_heads",
            serde_json::json!([8, 8, 8, 8]),
            "reverse_motion_num_attention_heads",
        ),
        (
            "motion_max_seq_length",
            serde_json::json!(0),
            "motion_max_seq_length",
        ),
        ("mid_block_layers", serde_json::json!(2), "mid_block_layers"),
        (
            "motion_num_attention_heads",
            serde_json::json!(5),
            "motion heads",
        ),
        (
            "down_block_types",
            serde_json::json!([
                "CrossAttnDownBlockMotion",
                "CrossAttnDownBlockMotion",
                "CrossAttnDownBlockMotion",
                "DownBlockSpatioTemporal"
            ]),
            "DownBlockSpatioTemporal",
        ),
        (
            "layers_per_block",
            serde_json::json!([2, 2, 2, 2]),
            "layers_per_block",
        ),
    ] {
        let mut cfg = config("v1_5_2")?;
        cfg[key] = value;
        let err = MotionSpec::from_config(&cfg)
            .err()
            .with_context(|| format!("{key} was accepted"))?
            .to_string();
        assert!(err.contains(named), "{key}: {err}");
    }
    Ok(())
}

#[test]
fn more_frames_than_the_position_table_are_refused() -> Result<()> {
    let mut cfg = config("animatediff_v1")?;
    cfg["motion_max_seq_length"] = serde_json::json!(4);
    let spec = MotionSpec::from_config(&cfg)?;
    let tensors = synthetic_tensors(&manifest("animatediff_v1")?, "", DType::F32, &Device::Cpu)?;
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let unet = UNetMotionModel::new(&spec, vb)?;
    let sample = Tensor::zeros((1, 4, 5, 8, 8), DType::F32, &Device::Cpu)?;
    let t = Tensor::zeros(1, DType::F32, &Device::Cpu)?;
    let ctx = Tensor::zeros((1, 7, 32), DType::F32, &Device::Cpu)?;
    let err = match unet.forward(&sample, &t, &ctx) {
        Ok(_) => anyhow::bail!("5 frames ran through a 4-long position table"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("motion_max_seq_length 4"), "{err}");
    Ok(())
}
