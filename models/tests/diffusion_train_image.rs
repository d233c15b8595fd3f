//! DiffusionDPO train.py's image transform against torchvision
//! (`scripts/golden/make_train_image.py`): Resize (bilinear) of the shorter side, CenterCrop,
//! ToTensor, Normalize([0.5], [0.5]), bit-equal; and the horizontal flip.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::Device;
use serde::Deserialize;
use unireward_models::diffusion::train_image::{load_train_pixels, resized_size};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/diffusion/train_image")
}

#[derive(Deserialize)]
struct Case {
    name: String,
    file: String,
    resolution: u32,
}

#[derive(Deserialize)]
struct Cases {
    cases: Vec<Case>,
}

#[test]
fn training_pixels_equal_torchvision() -> Result<()> {
    let cases: Cases = serde_json::from_str(&std::fs::read_to_string(dir().join("cases.json"))?)?;
    let want = candle_core::safetensors::load(dir().join("expected.safetensors"), &Device::Cpu)?;
    for case in cases.cases {
        for (flip, key) in [
            (false, case.name.clone()),
            (true, format!("{}.flipped", case.name)),
        ] {
            let got =
                load_train_pixels(&dir().join(&case.file), case.resolution, flip, &Device::Cpu)?;
            let expected = want.get(&key).context("golden")?;
            assert_eq!(got.dims(), expected.dims(), "{key}");
            let diff = (got - expected)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert_eq!(diff, 0.0, "{key}: pixels differ by {diff}");
        }
    }
    Ok(())
}

#[test]
fn the_shorter_side_becomes_the_resolution() {
    assert_eq!(resized_size(300, 200, 64), (96, 64));
    assert_eq!(resized_size(203, 333, 48), (48, 78));
    assert_eq!(resized_size(1920, 1080, 512), (910, 512));
}
