//! The candle model against Hugging Face transformers on the golden checkpoint, fed the
//! golden pixel values: token ids equal, logits within 1e-4, completion log-probs within 1e-3.

use anyhow::Result;
use candle_core::{DType, Device, Tensor, D};
use unireward_models::family::JudgeModel;
use unireward_models::tokenize::PromptTokenizer;
use unireward_models::LlavaOnevision;
use unireward_tests::{
    case_embeds, golden_cases, golden_model_dir, golden_tensors, max_abs_diff, run_case,
};

#[test]
fn logits_match_transformers_on_golden_pixels() -> Result<()> {
    let dir = golden_model_dir()?;
    let model = LlavaOnevision::load(&dir, DType::F32, &Device::Cpu)?;
    let tok = PromptTokenizer::load(&dir, model.config())?;
    let expected = golden_tensors()?;
    for case in golden_cases()? {
        let (tokens, logits) = run_case(&model, &tok, &case, &expected)?;
        let want_ids = expected[&format!("{}.input_ids", case.name)].to_vec1::<i64>()?;
        let got_ids: Vec<i64> = tokens.ids.iter().map(|&i| i as i64).collect();
        assert_eq!(got_ids, want_ids, "{}: input_ids", case.name);
        let media_tokens = |k| -> usize {
            tokens
                .spans
                .iter()
                .filter(|s| s.kind == k)
                .map(|s| s.len)
                .sum()
        };
        use unireward_models::tokenize::MediaKind;
        assert_eq!(
            media_tokens(MediaKind::Image),
            case.num_image_tokens,
            "{}",
            case.name
        );
        assert_eq!(
            media_tokens(MediaKind::Video),
            case.num_video_tokens,
            "{}",
            case.name
        );

        let want = &expected[&format!("{}.logits", case.name)];
        let diff = max_abs_diff(&logits, want)?;
        println!("{}: logits max abs diff {diff:.3e}", case.name);
        assert!(diff < 1e-4, "{}: logits differ by {diff}", case.name);

        let logp = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F64)?, D::Minus1)?;
        let ids = Tensor::new(&tokens.ids[case.prompt_len..], &Device::Cpu)?;
        let rows = logp.narrow(0, case.prompt_len - 1, ids.dim(0)?)?;
        let lp: f64 = rows.gather(&ids.unsqueeze(1)?, 1)?.sum_all()?.to_scalar()?;
        let err = (lp - case.completion_logprob).abs();
        println!(
            "{}: completion logprob {lp:.6} vs {:.6}",
            case.name, case.completion_logprob
        );
        assert!(err < 1e-3, "{}: completion logprob off by {err}", case.name);
    }
    Ok(())
}

/// `hidden_states_at`, which computes only the asked rows in the last layer, against the full
/// forward's rows: one sequence, a right-padded batch with a different row list per entry,
/// and after a KV cache.
#[test]
fn last_layer_rows_match_the_full_forward() -> Result<()> {
    let dir = golden_model_dir()?;
    let model = LlavaOnevision::load(&dir, DType::F32, &Device::Cpu)?;
    let tok = PromptTokenizer::load(&dir, model.config())?;
    let expected = golden_tensors()?;
    let cases = golden_cases()?;
    let mut seqs = Vec::new();
    for case in cases.iter().take(2) {
        seqs.push(case_embeds(&model, &tok, case, &expected)?.1.squeeze(0)?);
    }
    let lens: Vec<usize> = seqs.iter().map(|s| s.dim(0)).collect::<Result<_, _>>()?;
    let rows_of = |b: usize| -> Vec<u32> {
        let n = lens[b] as u32;
        vec![n - 1, 0, n / 2, n - 2]
    };
    let gather = |h: &Tensor, rows: &[u32]| -> Result<Tensor> {
        Ok(h.index_select(&Tensor::new(rows, &Device::Cpu)?, 0)?)
    };
    let mut worst = 0f32;

    // Each sequence alone.
    let mut full = Vec::new();
    for (b, s) in seqs.iter().enumerate() {
        let h = model.hidden_states(&s.unsqueeze(0)?, None)?.squeeze(0)?;
        let idx = Tensor::new(rows_of(b).as_slice(), &Device::Cpu)?.unsqueeze(0)?;
        let at = model
            .hidden_states_at(&s.unsqueeze(0)?, None, &idx)?
            .squeeze(0)?;
        worst = worst.max(max_abs_diff(&at, &gather(&h, &rows_of(b))?)?);
        full.push(h);
    }

    // A right-padded batch of both.
    let longest = lens.iter().copied().max().unwrap_or(0);
    let padded = seqs
        .iter()
        .map(|s| s.pad_with_zeros(0, 0, longest - s.dim(0)?))
        .collect::<Result<Vec<_>, _>>()?;
    let idx = Tensor::from_vec([rows_of(0), rows_of(1)].concat(), (2, 4), &Device::Cpu)?;
    let at = model.hidden_states_at(&Tensor::stack(&padded, 0)?, None, &idx)?;
    for (b, h) in full.iter().enumerate() {
        worst = worst.max(max_abs_diff(&at.get(b)?, &gather(h, &rows_of(b))?)?);
    }

    // After a cache: the first sequence's prompt, then its last 5 tokens as new ones.
    let n = lens[0];
    let mut cache = model.new_cache();
    let prompt = seqs[0].narrow(0, 0, n - 5)?.unsqueeze(0)?;
    let last = Tensor::new(&[[(n - 6) as u32]], &Device::Cpu)?;
    let at = model.hidden_states_at(&prompt, Some(&mut cache), &last)?;
    worst = worst.max(max_abs_diff(
        &at.squeeze(0)?,
        &gather(&full[0], &[(n - 6) as u32])?,
    )?);
    let rest = seqs[0].narrow(0, n - 5, 5)?.unsqueeze(0)?;
    let idx = Tensor::new(&[[4u32, 0, 2]], &Device::Cpu)?;
    let at = model.hidden_states_at(&rest, Some(&mut cache), &idx)?;
    let want = gather(&full[0], &[(n - 1) as u32, (n - 5) as u32, (n - 3) as u32])?;
    worst = worst.max(max_abs_diff(&at.squeeze(0)?, &want)?);

    println!("last-layer rows vs full forward: max abs diff {worst:.3e}");
    assert!(worst < 1e-5, "rows differ from the full forward by {worst}");
    Ok(())
}
