//! One Diffusion-DPO step (DiffusionDPO train.py's): the trained UNet's forward and backward
//! over a chosen and a rejected latent sharing noise and timestep, the frozen reference's
//! forward, the loss, and AdamW's update. Candle (`trainer`'s UNet trainee, loss and AdamW),
//! and with `--torch` PyTorch eager + diffusers' `UNet2DConditionModel` with torch.optim.AdamW
//! on the same checkpoint and inputs, in the same run.
//!
//! The UNet: SD 1.5's layout (3 cross-attention down blocks and a plain one, 2 resnets a
//! block, 8 heads, conv projections, cross-attention 768 wide) at 0.4 of its widths:
//! block_out_channels [128, 256, 512, 512] (SD 1.5: [320, 640, 1280, 1280]); 32x32 latents
//! (256 px images), 77 prompt tokens, f32. Deterministic weights (`synthetic_weights`).
//!
//! `cargo run --release -p unireward-benches --bin bench-diffusion-dpo-step -- --iters 3 --torch python3`

mod timing;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use clap::Parser;
use serde_json::json;
use unireward_models::diffusion::scheduler::{gaussian, NoiseSchedule, SchedulerConfig};
use unireward_models::diffusion::synthetic_weights::{synthetic_tensors, TensorSpec};
use unireward_models::diffusion::unet::{UNet2DConditionModel, UNetConfig};
use unireward_trainer::loss::diffusion_dpo::{diffusion_dpo_loss, per_sample_mse, PairErrors};
use unireward_trainer::optim::{AdamW, AdamWParams};
use unireward_trainer::trainee::Trainee;
use unireward_trainer::unet_trainee::UNetTrainee;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 3)]
    iters: usize,
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Keep the checkpoint (`DIR/unet`) and inputs (`DIR/inputs.safetensors`) here.
    #[arg(long)]
    keep: Option<PathBuf>,
    /// Also time PyTorch eager (diffusers) on the same checkpoint and inputs in this run, with
    /// this Python (it needs torch and diffusers; see benches/reference/).
    #[arg(long)]
    torch: Option<PathBuf>,
}

const LATENT: usize = 32;
const TOKENS: usize = 77;
const BETA: f64 = 5000.0;
const LR: f64 = 1e-5;

fn config() -> serde_json::Value {
    json!({
        "_class_name": "UNet2DConditionModel",
        "sample_size": LATENT, "in_channels": 4, "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2,
        "attention_head_dim": 8, "cross_attention_dim": 768, "norm_num_groups": 32,
        "flip_sin_to_cos": true, "freq_shift": 0, "downsample_padding": 1,
    })
}

/// `DIR/unet/` with deterministic weights, and the step's inputs.
fn write_checkpoint(dir: &Path) -> Result<()> {
    let unet = dir.join("unet");
    std::fs::create_dir_all(&unet)?;
    std::fs::write(unet.join("config.json"), config().to_string())?;
    let spec = serde_json::from_value::<UNetConfig>(config())?.resolve()?;
    // The names and shapes the model asks for, from a builder that makes what is asked.
    let varmap = VarMap::new();
    UNet2DConditionModel::new(
        &spec,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )?;
    let specs: Vec<TensorSpec> = varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("varmap lock"))?
        .iter()
        .map(|(name, v)| TensorSpec {
            name: name.clone(),
            shape: v.dims().to_vec(),
        })
        .collect();
    let weights = synthetic_tensors(&specs, "", DType::F32, &Device::Cpu)?;
    candle_core::safetensors::save(&weights, unet.join("diffusion_pytorch_model.safetensors"))?;
    let dev = Device::Cpu;
    let pair = |seed| gaussian(&[1, 4, LATENT, LATENT], seed, &dev);
    let noise = pair(3)?;
    let inputs: HashMap<String, Tensor> = [
        (
            "latents".to_string(),
            Tensor::cat(&[pair(1)?, pair(2)?], 0)?,
        ),
        ("noise".to_string(), Tensor::cat(&[&noise, &noise], 0)?),
        ("timesteps".to_string(), Tensor::new(&[500f32, 500.], &dev)?),
        ("context".to_string(), {
            let c = gaussian(&[1, TOKENS, 768], 4, &dev)?;
            Tensor::cat(&[&c, &c], 0)?
        }),
    ]
    .into();
    candle_core::safetensors::save(&inputs, dir.join("inputs.safetensors"))?;
    Ok(())
}

fn main() -> Result<()> {
    unireward_models::allocator::retain_freed_memory();
    let args = Args::parse();
    let dir = args.keep.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("unireward-bench-ddpo-{}", std::process::id()))
    });
    let dir = dir.as_path();
    write_checkpoint(dir)?;
    let dev = Device::Cpu;
    let trainee = UNetTrainee::load(dir, DType::F32, &dev)?;
    let reference = UNet2DConditionModel::load(&dir.join("unet"), DType::F32, &dev)?;
    let vars = trainee.trained_vars()?;
    let params: usize = vars.iter().map(|(_, v)| v.elem_count()).sum();
    println!(
        "UNet {:.1}M parameters, latents {LATENT}x{LATENT}, {TOKENS} prompt tokens, f32, one pair",
        params as f64 / 1e6
    );
    let mut optimizer = AdamW::new(vars.clone(), AdamWParams::default())?;
    let inputs = candle_core::safetensors::load(dir.join("inputs.safetensors"), &dev)?;
    let get = |k: &str| inputs[k].clone();
    let (latents, noise, t, ctx) = (
        get("latents"),
        get("noise"),
        get("timesteps"),
        get("context"),
    );
    // SD 1.5's training schedule, as the reference script's DDPMScheduler.
    let schedule = NoiseSchedule::new(&SchedulerConfig::from_json(
        r#"{"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085,
            "beta_end": 0.012, "beta_schedule": "scaled_linear"}"#,
    )?)?;
    let noisy = schedule.add_noise(&latents, &noise, &[500, 500])?;
    let t_candle = timing::median("candle", args.iters, args.warmup, || {
        let pred = trainee.model().forward(&noisy, &t, &ctx, None)?;
        let ref_pred = reference.forward(&noisy, &t, &ctx, None)?.detach();
        let m = per_sample_mse(&pred, &noise)?;
        let r = per_sample_mse(&ref_pred, &noise)?;
        let out = diffusion_dpo_loss(
            BETA,
            &PairErrors {
                model_chosen: &m.narrow(0, 0, 1)?,
                model_rejected: &m.narrow(0, 1, 1)?,
                ref_chosen: &r.narrow(0, 0, 1)?,
                ref_rejected: &r.narrow(0, 1, 1)?,
            },
        )?;
        let loss = out.losses.mean_all()?;
        let grads = loss.backward()?;
        let g: Vec<Option<Tensor>> = vars
            .iter()
            .map(|(_, v)| grads.get(v.as_tensor()).cloned())
            .collect();
        optimizer.step(&g, LR)?;

        Ok(loss.to_dtype(DType::F32)?.to_scalar::<f32>()?)
    })?;
    if let Some(python) = &args.torch {
        let t_torch = timing::time_reference(
            python,
            "diffusion_dpo_step_torch.py",
            dir,
            args.iters,
            args.warmup,
        )?;
        println!(
            "candle / torch eager step time: {:.2}x (below 1: candle faster)",
            t_candle / t_torch
        );
    }
    if args.keep.is_none() {
        std::fs::remove_dir_all(dir)?;
    }
    Ok(())
}
