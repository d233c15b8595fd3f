//! Support for the workspace-level tests: where the golden data lives and what its cases say.

pub mod diffusion_pipeline;
pub mod fake_ffmpeg;
pub mod http;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::Deserialize;
use unireward_models::family::JudgeModel;
use unireward_models::tokenize::{PromptTokenizer, Tokenized};
use unireward_models::MediaFeatures;

/// The repository the fixtures are read from: `$UNIREWARD_REPO` when set (test binaries
/// built on one machine and run on another, as scripts/gpu-check.sh does), else the one
/// these tests were built in.
pub fn repo_dir() -> PathBuf {
    match std::env::var_os("UNIREWARD_REPO") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
    }
}

/// `fixtures/golden` of this repository (transformers' outputs on tiny checkpoints).
pub fn golden_dir() -> Result<PathBuf> {
    let dir = repo_dir().join("fixtures/golden");
    if !dir.join("llava_ov_tiny").is_dir() {
        bail!("golden data not found at {}", dir.display());
    }
    Ok(dir)
}

pub fn golden_model_dir() -> Result<PathBuf> {
    Ok(golden_dir()?.join("llava_ov_tiny/model"))
}

pub fn golden_cases_dir() -> Result<PathBuf> {
    Ok(golden_dir()?.join("llava_ov_tiny/cases"))
}

#[derive(Debug, Clone, Deserialize)]
pub struct Case {
    pub name: String,
    pub text: String,
    pub prompt: String,
    pub completion: String,
    pub images: Vec<String>,
    pub video_frames: Vec<String>,
    pub prompt_len: usize,
    pub seq_len: usize,
    pub completion_logprob: f64,
    pub num_image_tokens: usize,
    pub num_video_tokens: usize,
    pub num_patches_per_image: Vec<usize>,
}

#[derive(Deserialize)]
struct CasesFile {
    cases: Vec<Case>,
}

pub fn golden_cases() -> Result<Vec<Case>> {
    let path = golden_cases_dir()?.join("cases.json");
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    Ok(serde_json::from_str::<CasesFile>(&text)?.cases)
}

/// Every tensor of `expected.safetensors`, keyed `<case>.<name>`.
pub fn golden_tensors() -> Result<HashMap<String, Tensor>> {
    let path = golden_cases_dir()?.join("expected.safetensors");
    Ok(candle_core::safetensors::load(&path, &Device::Cpu)?)
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    let d = (a.to_dtype(candle_core::DType::F32)? - b.to_dtype(candle_core::DType::F32)?)?;
    Ok(d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

/// Runs `case` through `model` on the golden pixel values → (tokens, logits [seq, vocab] f32).
pub fn run_case(
    model: &dyn JudgeModel,
    tok: &PromptTokenizer,
    case: &Case,
    expected: &HashMap<String, Tensor>,
) -> Result<(Tokenized, Tensor)> {
    let (tokens, embeds) = case_embeds(model, tok, case, expected)?;
    let hidden = model.hidden_states(&embeds, None)?;
    let logits = model.logits(&hidden)?.squeeze(0)?;
    Ok((tokens, logits))
}

/// `case`'s tokens and input embeddings [1, seq, hidden], media from the golden pixel values.
pub fn case_embeds(
    model: &dyn JudgeModel,
    tok: &PromptTokenizer,
    case: &Case,
    expected: &HashMap<String, Tensor>,
) -> Result<(Tokenized, Tensor)> {
    let mut media = MediaFeatures::default();
    if let Some(pix) = expected.get(&format!("{}.pixel_values", case.name)) {
        let sizes = expected[&format!("{}.image_sizes", case.name)].to_vec2::<i64>()?;
        for (i, n) in case.num_patches_per_image.iter().enumerate() {
            let tiles = pix.get(i)?.narrow(0, 0, *n)?;
            let size = (sizes[i][0] as u32, sizes[i][1] as u32);
            media.images.push(model.image_features(&tiles, size)?);
        }
    }
    if let Some(frames) = expected.get(&format!("{}.pixel_values_videos", case.name)) {
        media.videos.push(model.video_features(frames)?);
    }
    let lens = |ts: &[Tensor]| {
        ts.iter()
            .map(|t| t.dim(0))
            .collect::<candle_core::Result<Vec<_>>>()
    };
    let tokens = tok.encode(&case.text, &lens(&media.images)?, &lens(&media.videos)?)?;
    let embeds = model.embed(&tokens, &media)?.unsqueeze(0)?;
    Ok((tokens, embeds))
}
