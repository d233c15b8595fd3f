//! Text-to-image sampling (`unireward_models::diffusion::pipeline`) on the tiny SD 1.5 and
//! SDXL pipelines of `unireward_tests::diffusion_pipeline`, against diffusers'
//! `StableDiffusionPipeline` and `StableDiffusionXLPipeline` (`fixtures/diffusion/pipeline`,
//! made by `scripts/golden/make_pipeline.py` with our seeded initial latents and step noise).

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;
use unireward_models::diffusion::clip_text::ClipTextModel;
use unireward_models::diffusion::clip_tokenizer::ClipTokenizer;
use unireward_models::diffusion::pipeline::{GenerateOptions, PipelineKind, TextToImage};
use unireward_models::diffusion::scheduler::{Sampler, SchedulerConfig};
use unireward_models::diffusion::unet::UNet2DConditionModel;
use unireward_models::diffusion::vae::AutoencoderKL;
use unireward_tests::diffusion_pipeline::{
    tiny_sd15_pipeline_with, tiny_sdxl_pipeline_with, TinyScheduler, TINY_SD15_SIZE,
};

fn fixture() -> PathBuf {
    unireward_tests::repo_dir().join("fixtures/diffusion/pipeline")
}

#[derive(Deserialize)]
struct Cases {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    pipeline: String,
    scheduler: String,
    prompts: Vec<String>,
    negative_prompts: Option<Vec<String>>,
    guidance_scale: f64,
    num_inference_steps: usize,
    height: usize,
    width: usize,
    seed: u64,
    clip_skip: Option<usize>,
    timesteps: Vec<f32>,
}

fn tiny_scheduler(name: &str) -> Result<TinyScheduler> {
    Ok(match name {
        "pndm" => TinyScheduler::Pndm,
        "ddim" => TinyScheduler::Ddim,
        "euler" => TinyScheduler::EulerDiscrete,
        "euler_a_trailing" => TinyScheduler::EulerAncestralTrailing,
        other => anyhow::bail!("unknown scheduler {other}"),
    })
}

fn tiny(sched: TinyScheduler) -> Result<(tempfile::TempDir, TextToImage)> {
    tiny_of("sd15", sched)
}

fn tiny_of(pipeline: &str, sched: TinyScheduler) -> Result<(tempfile::TempDir, TextToImage)> {
    let tmp = tempfile::tempdir()?;
    match pipeline {
        "sd15" => tiny_sd15_pipeline_with(tmp.path(), sched)?,
        "sdxl" => tiny_sdxl_pipeline_with(tmp.path(), sched)?,
        other => anyhow::bail!("unknown pipeline {other}"),
    }
    let pipe = TextToImage::load(tmp.path(), DType::F32, &Device::Cpu)?;
    Ok((tmp, pipe))
}

fn options(case: &Case) -> GenerateOptions {
    GenerateOptions {
        guidance_scale: case.guidance_scale,
        num_inference_steps: case.num_inference_steps,
        height: Some(case.height),
        width: Some(case.width),
        seed: case.seed,
        clip_skip: case.clip_skip,
    }
}

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
    let tmp = tempfile::tempdir()?;
    tiny_sdxl_pipeline_with(tmp.path(), TinyScheduler::EulerAncestralTrailing)?;
    let te2 = ClipTextModel::load(&tmp.path().join("text_encoder_2"), DType::F32, &Device::Cpu)?;
    assert_eq!(te2.config().projection_dim, 48);
    ClipTokenizer::from_dir(&tmp.path().join("tokenizer_2"))?;
    let unet = UNet2DConditionModel::load(&tmp.path().join("unet"), DType::F32, &Device::Cpu)?;
    assert_eq!(unet.spec().cross_attention_dim, 32 + 48);
    Ok(())
}

#[test]
fn sampling_matches_diffusers_sd_and_sdxl_pipelines() -> Result<()> {
    let cases: Cases =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("cases.json"))?)?;
    let golden =
        candle_core::safetensors::load(fixture().join("expected.safetensors"), &Device::Cpu)?;
    let g = |k: &str| -> Result<Tensor> {
        golden
            .get(k)
            .cloned()
            .with_context(|| format!("golden {k}"))
    };
    let mut pipes: HashMap<(String, String), (tempfile::TempDir, TextToImage)> = HashMap::new();
    let mut report = Vec::new();
    for case in &cases.cases {
        let key = (case.pipeline.clone(), case.scheduler.clone());
        if !pipes.contains_key(&key) {
            let sched = tiny_scheduler(&case.scheduler)?;
            pipes.insert(key.clone(), tiny_of(&case.pipeline, sched)?);
        }
        let pipe = &pipes[&key].1;
        let kind = match case.pipeline.as_str() {
            "sdxl" => PipelineKind::StableDiffusionXl,
            _ => PipelineKind::StableDiffusion,
        };
        assert_eq!(pipe.kind(), kind, "{}", case.name);
        let prompts: Vec<&str> = case.prompts.iter().map(String::as_str).collect();
        let negatives: Option<Vec<&str>> = case
            .negative_prompts
            .as_ref()
            .map(|v| v.iter().map(String::as_str).collect());
        let mut sampler = Sampler::new(pipe.scheduler_config())?;
        sampler.set_timesteps(case.num_inference_steps)?;
        assert_eq!(
            sampler.timesteps(),
            case.timesteps.as_slice(),
            "{}",
            case.name
        );
        let latents = pipe.sample_latents(&prompts, negatives.as_deref(), &options(case))?;
        let want = g(&format!("{}.latents", case.name))?;
        assert_eq!(latents.dims(), want.dims(), "{}", case.name);
        let lat_diff = (&latents - &want)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        let lat_max = want.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;

        // The decoder and postprocess alone, from diffusers' own latents, before quantisation.
        let scale = pipe.vae().config().scaling_factor;
        let decoded = pipe.vae().decode(&(&want / scale)?)?;
        let floats = decoded
            .affine(0.5, 0.5)?
            .clamp(0f32, 1f32)?
            .permute((0, 2, 3, 1))?;
        let want_floats = g(&format!("{}.images_float", case.name))?;
        let float_diff = (floats - &want_floats)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert!(
            float_diff <= 1e-5,
            "{}: decoded images differ by {float_diff}",
            case.name
        );

        let images = pipe.decode_latents(&latents)?;
        let want_u8 = g(&format!("{}.images", case.name))?;
        let (b, h, w, _) = want_u8.dims4()?;
        assert_eq!(
            (images.len(), case.height, case.width),
            (b, h, w),
            "{}",
            case.name
        );
        let want_u8: Vec<u8> = want_u8.flatten_all()?.to_vec1()?;
        let ours: Vec<u8> = images
            .iter()
            .flat_map(|i| i.as_raw().iter().copied())
            .collect();
        let mut differing = 0usize;
        let mut worst = 0i32;
        for (a, b) in ours.iter().zip(&want_u8) {
            let d = (i32::from(*a) - i32::from(*b)).abs();
            worst = worst.max(d);
            differing += usize::from(d != 0);
        }
        report.push(format!(
            "{}: latents max |diff| {lat_diff:.2e} (ref max {lat_max:.1}), decoded from \
             diffusers' latents {float_diff:.1e}, {differing}/{} subpixels differ, worst {worst}",
            case.name,
            ours.len()
        ));
        assert!(
            lat_diff <= 1e-4 * lat_max.max(1.0),
            "{}: latents differ by {lat_diff} (scale {lat_max})",
            case.name
        );
        assert!(worst <= 1, "{}: a pixel differs by {worst}", case.name);
        assert!(
            differing * 1000 <= ours.len(),
            "{}: {differing} of {} subpixels differ",
            case.name,
            ours.len()
        );
    }
    for line in &report {
        eprintln!("{line}");
    }
    Ok(())
}

fn opts(guidance: f64, steps: usize, seed: u64) -> GenerateOptions {
    GenerateOptions {
        guidance_scale: guidance,
        num_inference_steps: steps,
        height: None,
        width: None,
        seed,
        clip_skip: None,
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

#[test]
fn a_seed_gives_the_same_images_and_candidate_j_is_seed_plus_j_alone() -> Result<()> {
    let (_tmp, pipe) = tiny(TinyScheduler::Pndm)?;
    assert_eq!(pipe.kind(), PipelineKind::StableDiffusion);
    assert_eq!(pipe.default_size(), Some((TINY_SD15_SIZE, TINY_SD15_SIZE)));
    let prompts = ["a red fox", "a red fox", "a blue bird"];
    let o = opts(7.5, 3, 100);
    let a = pipe.generate(&prompts, None, &o)?;
    let b = pipe.generate(&prompts, None, &o)?;
    assert_eq!(a.len(), 3);
    assert!(
        a.iter().zip(&b).all(|(x, y)| x == y),
        "same seed, other images"
    );
    assert_eq!(a[0].dimensions(), (64, 64));
    // The same prompt with seeds 100 and 101: different candidates.
    assert_ne!(a[0], a[1]);
    // Candidate j of a batch is what seed + j gives on its own (batching changes nothing
    // beyond float32 rounding).
    let batch = pipe.sample_latents(&prompts, None, &o)?;
    for (j, p) in prompts.iter().enumerate() {
        let alone = pipe.sample_latents(&[p], None, &opts(7.5, 3, 100 + j as u64))?;
        let d = max_diff(&batch.narrow(0, j, 1)?, &alone)?;
        assert!(d <= 1e-4, "candidate {j}: batch and alone differ by {d}");
    }
    let other = pipe.generate(&prompts[..1], None, &opts(7.5, 3, 7))?;
    assert_ne!(other[0], a[0]);
    Ok(())
}

#[test]
fn without_guidance_the_negative_prompts_are_not_used() -> Result<()> {
    let (_tmp, pipe) = tiny(TinyScheduler::Ddim)?;
    for g in [0.0, 1.0] {
        let plain = pipe.sample_latents(&["a house"], None, &opts(g, 2, 5))?;
        let neg = pipe.sample_latents(&["a house"], Some(&["ugly"]), &opts(g, 2, 5))?;
        assert_eq!(max_diff(&plain, &neg)?, 0.0, "guidance {g}");
    }
    // With guidance they are: the same run with another negative prompt differs.
    let plain = pipe.sample_latents(&["a house"], None, &opts(4.0, 2, 5))?;
    let neg = pipe.sample_latents(&["a house"], Some(&["ugly"]), &opts(4.0, 2, 5))?;
    assert!(max_diff(&plain, &neg)? > 1e-3);
    // One negative prompt serves every prompt; a count that fits neither is refused.
    let one = pipe.sample_latents(&["a", "b"], Some(&["ugly"]), &opts(4.0, 1, 5))?;
    let each = pipe.sample_latents(&["a", "b"], Some(&["ugly", "ugly"]), &opts(4.0, 1, 5))?;
    assert_eq!(max_diff(&one, &each)?, 0.0);
    let err = pipe
        .sample_latents(&["a", "b", "c"], Some(&["x", "y"]), &opts(4.0, 1, 5))
        .unwrap_err();
    assert!(
        err.to_string().contains("2 negative prompts for 3 prompts"),
        "{err}"
    );
    Ok(())
}

#[test]
fn the_ancestral_sampler_draws_its_step_noise_from_the_candidate_seed() -> Result<()> {
    let (_tmp, pipe) = tiny(TinyScheduler::EulerAncestralTrailing)?;
    let o = opts(0.0, 4, 9);
    let a = pipe.sample_latents(&["a tree", "a tree"], None, &o)?;
    let b = pipe.sample_latents(&["a tree", "a tree"], None, &o)?;
    assert_eq!(max_diff(&a, &b)?, 0.0, "not deterministic");
    assert!(max_diff(&a.narrow(0, 0, 1)?, &a.narrow(0, 1, 1)?)? > 1e-2);
    // Sane values: finite, about the data's scale after four steps, images not flat.
    let v: Vec<f32> = a.flatten_all()?.to_vec1()?;
    assert!(v.iter().all(|x| x.is_finite()));
    let images = pipe.decode_latents(&a)?;
    let distinct: std::collections::HashSet<&[u8]> = images[0].as_raw().chunks(3).collect();
    assert!(distinct.len() > 100, "{} distinct colours", distinct.len());
    Ok(())
}

#[test]
fn bad_requests_are_refused_with_what_is_wrong() -> Result<()> {
    let (_tmp, pipe) = tiny(TinyScheduler::Pndm)?;
    let mut o = opts(7.5, 2, 0);
    o.height = Some(60);
    let err = pipe.generate(&["x"], None, &o).unwrap_err().to_string();
    assert!(
        err.contains("height 60 must be a positive multiple of 8"),
        "{err}"
    );
    let err = pipe
        .generate(&[], None, &opts(7.5, 2, 0))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no prompts"), "{err}");
    let err = pipe
        .generate(&["x"], None, &opts(7.5, 0, 0))
        .unwrap_err()
        .to_string();
    assert!(err.contains("num_inference_steps"), "{err}");
    let err = pipe
        .generate(&["x"], None, &opts(f64::NAN, 2, 0))
        .unwrap_err()
        .to_string();
    assert!(err.contains("guidance_scale"), "{err}");

    // A directory that is not a supported pipeline.
    let tmp = tempfile::tempdir()?;
    tiny_sd15_pipeline_with(tmp.path(), TinyScheduler::Pndm)?;
    let index = tmp.path().join("model_index.json");
    let text = std::fs::read_to_string(&index)?;
    std::fs::write(
        &index,
        text.replace("StableDiffusionPipeline", "FluxPipeline"),
    )?;
    let err = TextToImage::load(tmp.path(), DType::F32, &Device::Cpu)
        .err()
        .context("FluxPipeline loaded")?
        .to_string();
    assert!(err.contains("\"FluxPipeline\" is not supported"), "{err}");
    std::fs::write(
        &index,
        text.replace("\"CLIPTextModel\"", "\"T5EncoderModel\""),
    )?;
    let err = TextToImage::load(tmp.path(), DType::F32, &Device::Cpu)
        .err()
        .context("T5 loaded")?
        .to_string();
    assert!(err.contains("text_encoder is a T5EncoderModel"), "{err}");
    Ok(())
}

#[test]
fn sdxl_guides_from_zeros_without_a_negative_prompt_unless_told_otherwise() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    tiny_sdxl_pipeline_with(tmp.path(), TinyScheduler::EulerDiscrete)?;
    let pipe = TextToImage::load(tmp.path(), DType::F32, &Device::Cpu)?;
    assert_eq!(pipe.kind(), PipelineKind::StableDiffusionXl);
    assert_eq!(pipe.vae().config().scaling_factor, 0.13025);
    let zeros = pipe.sample_latents(&["a boat"], None, &opts(5.0, 2, 1))?;
    let empty = pipe.sample_latents(&["a boat"], Some(&[""]), &opts(5.0, 2, 1))?;
    assert!(
        max_diff(&zeros, &empty)? > 1e-3,
        "zeros and \"\" guided alike"
    );
    // force_zeros_for_empty_prompt false: no negative prompt means "".
    let index = tmp.path().join("model_index.json");
    let text = std::fs::read_to_string(&index)?;
    std::fs::write(
        &index,
        text.replace(
            "\"force_zeros_for_empty_prompt\": true",
            "\"force_zeros_for_empty_prompt\": false",
        ),
    )?;
    let pipe = TextToImage::load(tmp.path(), DType::F32, &Device::Cpu)?;
    let none = pipe.sample_latents(&["a boat"], None, &opts(5.0, 2, 1))?;
    assert_eq!(max_diff(&none, &empty)?, 0.0);
    Ok(())
}
