//! Text-to-image sampling (`unireward_models::diffusion::pipeline`) on the tiny SD 1.5
//! pipeline of `unireward_tests::diffusion_pipeline`.

use anyhow::Result;
use candle_core::{DType, Device};
use unireward_models::diffusion::clip_text::ClipTextModel;
use unireward_models::diffusion::clip_tokenizer::ClipTokenizer;
use unireward_models::diffusion::scheduler::SchedulerConfig;
use unireward_models::diffusion::unet::UNet2DConditionModel;
use unireward_models::diffusion::vae::AutoencoderKL;
use unireward_tests::diffusion_pipeline::{tiny_sd15_pipeline_with, TinyScheduler};

#[test]
fn the_tiny_pipeline_loads_component_by_component() -> Result<()> {
    for sched in TinyScheduler::ALL {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path();
        tiny_sd15_pipeline_with(dir, sched)?;
        let dev = Device::Cpu;
        let unet = UNet2DConditionModel::load(&dir.join("unet"), DType::F32, &dev)?;
        let vae = AutoencoderKL::load(&dir.join("vae"), DType::F32, &dev)?;
        let te = ClipTextModel::load(&dir.join("text_encoder"), DType::F32, &dev)?;
        ClipTokenizer::from_dir(&dir.join("tokenizer"))?;
        let config = SchedulerConfig::from_file(dir.join("scheduler/scheduler_config.json"))?;
        assert_eq!(config.class.name(), sched.class_name());
        assert_eq!(vae.config().scaling_factor, 0.18215);
        assert_eq!(te.hidden_size(), 32);
        assert_eq!(unet.spec().in_channels, vae.latent_channels());
    }
    Ok(())
}
