//! The generator's UNet as pretrained offline, shipped with the demo (`demo/assets/generator/`).
//!
//! A diffusion model learns to draw the world's pictures in thousands of denoising steps, not
//! the hundred the demo's five minutes hold: after 100 steps of 16 its samples were coloured
//! noise (DDIM, 10 or 50 steps, in candle and in diffusers alike), after 500 grey fields with
//! blobs that followed the seed rather than the caption, after 2500 (21 min on 2 cores) shapes
//! in the captions' colours (colour right 0.79 over 160 samples; places barely: 0.47), grainy
//! and faded as most of the data is. So the pretraining ran once, with the demo's own commands
//! (`demo generator --pretrain` on a seed-0 `full` world, 2500 steps of 16: `trainer denoise`
//! from the random UNet `pipeline` writes, on the judge-training split's images captioned with
//! what they show), and its UNet ships here;
//! `assets/generator/pretrained.json` says how it was made. Everything else of the pipeline
//! (VAE, text encoder, tokenizer, scheduler) is written by `pipeline`, deterministic whatever
//! the world's seed, so the shipped UNet meets the same text encoder it learnt with.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::generator::pipeline::{unet_config, GeneratorShape};

const CONFIG: &str = include_str!("../../assets/generator/unet/config.json");
const WEIGHTS: &[u8] =
    include_bytes!("../../assets/generator/unet/diffusion_pytorch_model.safetensors");
const PROVENANCE: &str = include_str!("../../assets/generator/pretrained.json");

/// `assets/generator/pretrained.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Provenance {
    /// The VAE scaling factor the UNet learnt with (`pipeline` derives it from the images).
    pub scaling_factor: f64,
    pub steps: usize,
}

pub fn provenance() -> Result<Provenance> {
    serde_json::from_str(PROVENANCE)
        .map_err(|e| Error::Invalid(format!("assets/generator/pretrained.json: {e}")))
}

/// Writes the shipped UNet as `dir/unet/`, refusing a shape it was not trained for.
pub fn install(dir: &Path, shape: &GeneratorShape) -> Result<()> {
    let shipped: Value = serde_json::from_str(CONFIG)
        .map_err(|e| Error::Invalid(format!("assets/generator/unet/config.json: {e}")))?;
    let wanted = unet_config(shape, shape.text_hidden);
    if shipped != wanted {
        return Err(Error::Invalid(format!(
            "the shipped generator UNet (demo/assets/generator) was trained for another shape \
             than these settings' ({shape:?}); run `demo generator --pretrain` to \
             pretrain one"
        )));
    }
    let unet = dir.join("unet");
    std::fs::create_dir_all(&unet).map_err(|e| Error::io(&unet, e))?;
    let config = unet.join("config.json");
    std::fs::write(&config, CONFIG).map_err(|e| Error::io(&config, e))?;
    let weights = unet.join("diffusion_pytorch_model.safetensors");
    std::fs::write(&weights, WEIGHTS).map_err(|e| Error::io(&weights, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Settings;

    #[test]
    fn the_shipped_unet_fits_both_presets_and_another_shape_is_refused() {
        let made = provenance().expect("pretrained.json parses");
        assert!(made.steps > 0 && made.scaling_factor > 0.0);
        for preset in ["small", "full"] {
            let settings = Settings::preset(preset, 3).expect("preset");
            let dir = tempfile::tempdir().expect("tempdir");
            install(dir.path(), &settings.generator.shape).expect("installs");
            let weights =
                std::fs::read(dir.path().join("unet/diffusion_pytorch_model.safetensors"))
                    .expect("weights written");
            assert_eq!(weights.len(), WEIGHTS.len());
        }
        let mut shape = Settings::preset("full", 0).expect("preset").generator.shape;
        shape.unet_channels = vec![16, 32];
        let dir = tempfile::tempdir().expect("tempdir");
        let err = install(dir.path(), &shape).expect_err("another shape is refused");
        assert!(err.to_string().contains("--pretrain"), "{err}");
        assert!(!dir.path().join("unet").exists());
    }
}
