//! The golden checkpoint on CUDA against Hugging Face transformers' numbers, with the CPU
//! test's tolerances (golden_model.rs): logits within 1e-4, completion log-probs within
//! 1e-3, f32 weights. Needs the `cuda` feature and a GPU; without a GPU it prints
//! `SKIPPED: no CUDA device` and passes.
//!
//! `cargo test -p unireward-tests --features cuda --test cuda_golden -- --nocapture`
#![cfg(feature = "cuda")]

use std::collections::HashMap;

use anyhow::Result;
use candle_core::{DType, Device, Tensor, D};
use unireward_models::tokenize::PromptTokenizer;
use unireward_models::LlavaOnevision;
use unireward_tests::{golden_cases, golden_model_dir, golden_tensors, max_abs_diff, run_case};

#[test]
fn golden_logits_on_cuda_match_transformers() -> Result<()> {
    let dev = match Device::new_cuda(0) {
        Ok(dev) => dev,
        Err(e) => {
            let e = e.to_string();
            let cause = e.lines().next().unwrap_or_default();
            println!("SKIPPED: no CUDA device (cuda_golden: {cause})");
            return Ok(());
        }
    };
    let dir = golden_model_dir()?;
    let model = LlavaOnevision::load(&dir, DType::F32, &dev)?;
    let tok = PromptTokenizer::load(&dir, model.config())?;
    // The golden pixel values go to the GPU with the model; the logits come back to compare.
    let expected = golden_tensors()?
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_device(&dev)?)))
        .collect::<Result<HashMap<String, Tensor>>>()?;
    for case in golden_cases()? {
        let (tokens, logits) = run_case(&model, &tok, &case, &expected)?;
        assert!(logits.device().is_cuda(), "{}: ran off the GPU", case.name);
        let logits = logits.to_device(&Device::Cpu)?;
        let want = expected[&format!("{}.logits", case.name)].to_device(&Device::Cpu)?;
        let diff = max_abs_diff(&logits, &want)?;
        let logp = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F64)?, D::Minus1)?;
        let ids = Tensor::new(&tokens.ids[case.prompt_len..], &Device::Cpu)?;
        let rows = logp.narrow(0, case.prompt_len - 1, ids.dim(0)?)?;
        let lp: f64 = rows.gather(&ids.unsqueeze(1)?, 1)?.sum_all()?.to_scalar()?;
        let err = (lp - case.completion_logprob).abs();
        println!(
            "cuda-golden {:<24} logits max|diff| {diff:.2e}  completion logprob {lp:.6} vs {:.6}",
            case.name, case.completion_logprob
        );
        assert!(diff < 1e-4, "{}: logits differ by {diff}", case.name);
        assert!(err < 1e-3, "{}: completion logprob off by {err}", case.name);
    }
    Ok(())
}
