//! A UNet's LoRA as diffusers saves and loads it, against `scripts/golden/make_unet_lora.py`
//! (diffusers 0.42.1 + PEFT 0.21.2): the adapter diffusers wrote, applied by us to the tiny
//! SD 1.5 UNet, predicts what diffusers' adapted UNet predicts; without metadata the scale is
//! diffusers' default (alpha = r); an adapter we save has diffusers' keys, shapes, values and
//! settings; adapters that do not fit are refused by name.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use unireward_models::diffusion::denoiser::Denoiser;
use unireward_tests::diffusion_pipeline::tiny_sd15_pipeline;
use unireward_tests::repo_dir;
use unireward_trainer::checkpoint_keys::Shapes;
use unireward_trainer::lora::{read_diffusers, save_diffusers, DIFFUSERS_LORA_FILE};
use unireward_trainer::unet_trainee::load_adapted_unet;

fn fixture() -> PathBuf {
    repo_dir().join("fixtures/diffusion/unet_lora")
}

fn expected() -> Result<HashMap<String, Tensor>> {
    Ok(candle_core::safetensors::load(
        fixture().join("expected.safetensors"),
        &Device::Cpu,
    )?)
}

fn cases() -> Result<Vec<String>> {
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("cases.json"))?)?;
    json["cases"]
        .as_array()
        .context("cases")?
        .iter()
        .map(|c| Ok(c["name"].as_str().context("case name")?.to_string()))
        .collect()
}

fn get(t: &HashMap<String, Tensor>, key: &str, dtype: DType) -> Result<Tensor> {
    Ok(t.get(key)
        .with_context(|| key.to_string())?
        .to_dtype(dtype)?)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    Ok((a.to_dtype(DType::F64)? - b.to_dtype(DType::F64)?)?
        .abs()?
        .max_all()?
        .to_scalar::<f64>()?)
}

fn predict(
    unet: &Denoiser,
    t: &HashMap<String, Tensor>,
    case: &str,
    dtype: DType,
) -> Result<Tensor> {
    Ok(unet.forward(
        &get(t, &format!("{case}.sample"), dtype)?,
        &get(t, &format!("{case}.timesteps"), dtype)?,
        &get(t, &format!("{case}.context"), dtype)?,
        None,
    )?)
}

fn pipeline(dir: &Path) -> Result<PathBuf> {
    let p = dir.join("pipeline");
    tiny_sd15_pipeline(&p)?;
    Ok(p.join("unet"))
}

#[test]
fn diffusers_adapters_predict_as_in_diffusers() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let unet_dir = pipeline(tmp.path())?;
    let t = expected()?;
    let adapted = load_adapted_unet(&unet_dir, &fixture(), DType::F32, &Device::Cpu)?;
    let plain = load_adapted_unet(
        &unet_dir,
        &fixture().join("no_metadata"),
        DType::F32,
        &Device::Cpu,
    )?;
    let base = Denoiser::load(&unet_dir, DType::F32, &Device::Cpu)?;
    for case in cases()? {
        let want = get(&t, &format!("{case}.output"), DType::F64)?;
        let got = predict(&adapted, &t, &case, DType::F32)?;
        let diff = max_abs_diff(&got, &want)?;
        // f32 against diffusers' f64, the UNet test's tolerance.
        assert!(diff < 1e-4, "{case}: {diff}");
        // The adapter matters: without it the prediction is diffusers' base one, far off.
        let base_out = predict(&base, &t, &case, DType::F32)?;
        assert!(max_abs_diff(&base_out, &get(&t, &format!("{case}.base"), DType::F64)?)? < 1e-4);
        assert!(
            max_abs_diff(&base_out, &want)? > 1e-2,
            "{case}: the adapter changes nothing"
        );
        // Without metadata diffusers reads alpha = r (scale 1, not the adapter's 2): so do we.
        let want_plain = get(&t, &format!("{case}.output_no_metadata"), DType::F64)?;
        let diff = max_abs_diff(&predict(&plain, &t, &case, DType::F32)?, &want_plain)?;
        assert!(diff < 1e-4, "{case} without metadata: {diff}");
    }
    Ok(())
}

fn shapes(unet_dir: &Path) -> Result<Shapes> {
    let weights = candle_core::safetensors::load(
        unet_dir.join("diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )?;
    Ok(weights
        .iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect())
}

/// The file's `__metadata__` → its `lora_adapter_metadata` parsed.
fn adapter_metadata(path: &Path) -> Result<serde_json::Map<String, Value>> {
    let bytes = std::fs::read(path)?;
    let n = u64::from_le_bytes(bytes[..8].try_into()?) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n])?;
    let text = header["__metadata__"]["lora_adapter_metadata"]
        .as_str()
        .context("no lora_adapter_metadata")?;
    Ok(serde_json::from_str(text)?)
}

#[test]
fn saved_adapters_have_diffusers_keys_values_and_settings() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let unet_dir = pipeline(tmp.path())?;
    let shapes = shapes(&unet_dir)?;
    let adapter = read_diffusers(&fixture(), &shapes, DType::F32, &Device::Cpu)?;
    assert_eq!(adapter.scale(), 2.0);
    let out = tmp.path().join("saved");
    std::fs::create_dir_all(&out)?;
    save_diffusers(&adapter, &out)?;
    let theirs = candle_core::safetensors::load(fixture().join(DIFFUSERS_LORA_FILE), &Device::Cpu)?;
    let ours = candle_core::safetensors::load(out.join(DIFFUSERS_LORA_FILE), &Device::Cpu)?;
    let mut keys: Vec<&String> = ours.keys().collect();
    keys.sort();
    let mut want: Vec<&String> = theirs.keys().collect();
    want.sort();
    assert_eq!(keys, want);
    for (k, v) in &theirs {
        assert_eq!(max_abs_diff(v, &ours[k])?, 0.0, "{k}");
        assert_eq!(v.dtype(), ours[k].dtype(), "{k}");
    }
    // The settings diffusers reads back (LoraConfig keyword arguments under `unet.`).
    let (a, b) = (
        adapter_metadata(&fixture().join(DIFFUSERS_LORA_FILE))?,
        adapter_metadata(&out.join(DIFFUSERS_LORA_FILE))?,
    );
    for key in [
        "unet.r",
        "unet.lora_alpha",
        "unet.bias",
        "unet.use_dora",
        "unet.use_rslora",
    ] {
        assert_eq!(a.get(key), b.get(key), "{key}");
    }
    let sorted = |m: &serde_json::Map<String, Value>| -> Vec<String> {
        let mut v: Vec<String> = m["unet.target_modules"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    assert_eq!(sorted(&a), sorted(&b));
    // Read back: the same adapter.
    let again = read_diffusers(&out, &shapes, DType::F32, &Device::Cpu)?;
    assert_eq!(again.scale(), 2.0);
    assert_eq!(
        again.module_paths().collect::<Vec<_>>(),
        adapter.module_paths().collect::<Vec<_>>()
    );
    Ok(())
}

#[test]
fn adapters_that_do_not_fit_are_refused_by_name() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let unet_dir = pipeline(tmp.path())?;
    let mut shapes = shapes(&unet_dir)?;
    let key = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight";
    shapes.insert(key.into(), vec![16, 32]);
    let err = read_diffusers(&fixture(), &shapes, DType::F32, &Device::Cpu)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("attn1.to_q") && err.contains("do not fit"),
        "{err}"
    );
    let err = read_diffusers(tmp.path(), &shapes, DType::F32, &Device::Cpu)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains(DIFFUSERS_LORA_FILE), "{err}");
    Ok(())
}
