//! The training path (VarMap model with every part trained, batched sequence log-probs with
//! gradients) against transformers' completion log-probabilities of the golden cases.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use unireward_models::tokenize::PromptTokenizer;
use unireward_models::MediaFeatures;
use unireward_tests::{golden_cases, golden_model_dir, golden_tensors, Case};
use unireward_trainer::checkpoint_keys::TrainParts;
use unireward_trainer::logprob::{sequence_logprobs, to_f64_vec, ScoredSequence};
use unireward_trainer::varmap_model::VarMapModel;

/// The case's media encoded from the golden pixel values (as `run_case` does), with grads.
fn case_media(
    model: &VarMapModel,
    case: &Case,
    expected: &std::collections::HashMap<String, Tensor>,
) -> Result<MediaFeatures> {
    let m = model.model();
    let mut media = MediaFeatures::default();
    if let Some(pix) = expected.get(&format!("{}.pixel_values", case.name)) {
        let sizes = expected[&format!("{}.image_sizes", case.name)].to_vec2::<i64>()?;
        for (i, n) in case.num_patches_per_image.iter().enumerate() {
            let tiles = pix.get(i)?.narrow(0, 0, *n)?;
            let size = (sizes[i][0] as u32, sizes[i][1] as u32);
            media.images.push(m.image_features(&tiles, size)?);
        }
    }
    if let Some(frames) = expected.get(&format!("{}.pixel_values_videos", case.name)) {
        media.videos.push(m.video_features(frames)?);
    }
    Ok(media)
}

#[test]
fn completion_logprobs_match_transformers_and_have_gradients() -> Result<()> {
    let dir = golden_model_dir()?;
    let model = VarMapModel::load(&dir, DType::F32, &Device::Cpu, TrainParts::all())?;
    let tok = PromptTokenizer::load(&dir, model.config()?)?;
    let expected = golden_tensors()?;
    let cases = golden_cases()?;
    let mut seqs = Vec::new();
    let mut medias = Vec::new();
    for case in &cases {
        let media = case_media(&model, case, &expected)?;
        let lens = |ts: &[Tensor]| ts.iter().map(|t| t.dim(0)).collect::<Result<Vec<_>, _>>();
        let tokens = tok.encode(&case.text, &lens(&media.images)?, &lens(&media.videos)?)?;
        assert_eq!(tokens.ids.len(), case.seq_len, "{}", case.name);
        seqs.push(ScoredSequence::from_prompt_len(tokens, case.prompt_len));
        medias.push(media);
    }

    // One case at a time, then all five in one right-padded batch.
    let mut single = Vec::new();
    for ((case, seq), media) in cases.iter().zip(&seqs).zip(&medias) {
        let lp = to_f64_vec(&sequence_logprobs(model.model(), &[(seq, media)])?)?[0];
        let err = (lp - case.completion_logprob).abs();
        println!(
            "{}: {lp:.6} vs transformers {:.6} (diff {err:.2e})",
            case.name, case.completion_logprob
        );
        assert!(err < 1e-3, "{}: off by {err}", case.name);
        single.push(lp);
    }
    let batch: Vec<_> = seqs.iter().zip(&medias).collect();
    let lp = sequence_logprobs(model.model(), &batch)?;
    for ((case, got), alone) in cases.iter().zip(to_f64_vec(&lp)?).zip(&single) {
        let err = (got - case.completion_logprob).abs();
        assert!(err < 1e-3, "{} batched: off by {err}", case.name);
        assert!(
            (got - alone).abs() < 1e-4,
            "{}: padding changed it",
            case.name
        );
    }

    // Gradients reach every used weight of all three parts.
    let grads = lp.sum_all()?.backward()?;
    let vars = model.trained_vars()?;
    for probe in [
        "vision_tower.embeddings.patch_embedding.weight",
        "vision_tower.encoder.layers.1.layer_norm2.weight",
        "multi_modal_projector.linear_1.weight",
        "image_newline",
        "language_model.model.layers.0.input_layernorm.weight",
        "language_model.model.norm.weight",
        "language_model.lm_head.weight",
    ] {
        let (_, var) = vars
            .iter()
            .find(|(n, _)| n == probe)
            .unwrap_or_else(|| panic!("{probe} is not trained"));
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {probe}"));
        let norm = g.sqr()?.sum_all()?.to_scalar::<f32>()?.sqrt();
        println!("grad norm {probe}: {norm:.4e}");
        assert!(
            norm.is_finite() && norm > 0.0,
            "{probe}: gradient norm {norm}"
        );
    }
    Ok(())
}
