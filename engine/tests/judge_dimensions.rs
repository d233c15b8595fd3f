//! Fast per-dimension scores against plain full-sequence log-probabilities (`engine logprob`'s
//! path, no KV cache) on the golden checkpoint: each dimension's line forced right after the
//! prompt, its leading digit and (2.0) its first decimal read as `judge::fast` documents.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use unireward_engine::backend::{Backend, CandleBackend, Decoding};
use unireward_engine::encode_media::encode_media;
use unireward_engine::judge::{Judge, JudgeMode, Outcome, PromptStyle};
use unireward_models::judge::answer_format::{score_line, share_line, ACS};
use unireward_models::judge::{Family, Media, Mode, ScoreRange, Task};
use unireward_models::preprocess::{MediaLoader, MediaRequest};
use unireward_models::tokenize::PromptTokenizer;
use unireward_models::MediaFeatures;
use unireward_tests::{golden_cases_dir, golden_model_dir};

struct Fixture {
    backend: CandleBackend,
    tokenizer: PromptTokenizer,
    features: MediaFeatures,
}

fn fixture() -> Result<Fixture> {
    let dir = golden_model_dir()?;
    let backend = CandleBackend::load(&dir, DType::F32, &Device::Cpu)?;
    let tokenizer = PromptTokenizer::load(&dir, backend.config())?;
    let loader = MediaLoader::from_model_dir(&dir, backend.config(), 8)?;
    let req = MediaRequest {
        images: vec!["img1.png".into(), "img2.png".into()],
        videos: vec![],
    };
    let prepared = loader.load(&req, &golden_cases_dir()?)?;
    let features = encode_media(&backend, &prepared)?;
    Ok(Fixture {
        backend,
        tokenizer,
        features,
    })
}

/// log p(completion | prompt) and the log-probs of the token after it, from one full pass.
fn logprob(
    f: &Fixture,
    prompt: &str,
    completion: &str,
    media: &MediaFeatures,
) -> Result<(f64, Tensor)> {
    let lens = |ts: &[Tensor]| ts.iter().map(|t| t.dim(0).unwrap()).collect::<Vec<_>>();
    let full = f.tokenizer.encode(
        &format!("{prompt}{completion}"),
        &lens(&media.images),
        &lens(&media.videos),
    )?;
    let n = f
        .tokenizer
        .encode(prompt, &lens(&media.images), &lens(&media.videos))?
        .ids
        .len();
    let backend: &dyn Backend = &f.backend;
    let embeds =
        unireward_models::pack::merge_media(&backend.embed_tokens(&full.ids)?, &full, media)?;
    let positions: Vec<usize> = (n - 1..full.ids.len()).collect();
    let rows = backend.log_probs_at(&[embeds], &[positions])?.remove(0);
    let mut total = 0.0;
    for (j, &t) in full.ids[n..].iter().enumerate() {
        total += rows.get(j)?.get(t as usize)?.to_scalar::<f32>()? as f64;
    }
    Ok((total, rows.get(full.ids.len() - n)?))
}

/// The expected first decimal (tenths) from the log-probs after a ".".
fn tenths(f: &Fixture, next: &Tensor) -> Result<f64> {
    let ids: Vec<u32> = (0..10)
        .map(|d| f.tokenizer.token_id(&d.to_string()).unwrap())
        .collect();
    let p: Vec<f32> = next
        .index_select(&Tensor::new(ids.as_slice(), &Device::Cpu)?, 0)?
        .exp()?
        .to_vec1()?;
    let z: f64 = p.iter().map(|&x| x as f64).sum();
    Ok(p.iter()
        .enumerate()
        .map(|(j, &x)| j as f64 / 10.0 * x as f64)
        .sum::<f64>()
        / z)
}

fn judge<'a>(f: &'a Fixture, family: Family) -> Result<Judge<'a>> {
    let style = PromptStyle {
        family,
        ..PromptStyle::default()
    };
    Ok(Judge::new(
        &f.backend,
        &f.tokenizer,
        style,
        JudgeMode::Fast,
        64,
    )?)
}

#[test]
fn v2_point_dimensions_are_leading_digit_and_tenth_expectations() -> Result<()> {
    let f = fixture()?;
    let judge = judge(&f, Family::V2)?;
    let media = MediaFeatures {
        images: vec![f.features.images[0].clone()],
        videos: vec![],
        ..Default::default()
    };
    let task = Task::ImageGeneration;
    let text = judge.prompt_text(task, Mode::Point, "a red circle", &[], Media::Images(1))?;
    let Outcome::Point { score, scores, .. } = judge.judge(task, Mode::Point, &text, &media)?
    else {
        panic!("a point prompt gave no score")
    };
    let scores = scores.expect("per-dimension scores");
    let range = ScoreRange { min: 1, max: 5 };
    let mut mean = 0.0;
    for d in &ACS {
        let line = score_line(d, range);
        let mut weighted = Vec::new();
        for s in range.values() {
            let (lp, _) = logprob(&f, &text, &format!("{line}{s}"), &media)?;
            let (lp_dot, next) = logprob(&f, &text, &format!("{line}{s}."), &media)?;
            let value = s as f64 + (lp_dot - lp).exp().min(1.0) * tenths(&f, &next)?;
            weighted.push((value, lp.exp()));
        }
        let z: f64 = weighted.iter().map(|(_, w)| w).sum();
        let want: f64 = weighted.iter().map(|(v, w)| v * w / z).sum();
        let got = scores[d.key];
        println!("{}: fast {got} vs full passes {want}", d.key);
        assert!((got - want).abs() < 1e-4, "{}: {got} vs {want}", d.key);
        mean += want / 3.0;
    }
    assert!((score.expected - mean).abs() < 1e-4);
    Ok(())
}

#[test]
fn v2_pair_shares_are_leading_digit_and_tenth_expectations() -> Result<()> {
    let f = fixture()?;
    let judge = judge(&f, Family::V2)?;
    let task = Task::ImageGeneration;
    let text = judge.prompt_text(task, Mode::Pair, "a red circle", &[], Media::Images(2))?;
    let Outcome::Pair { probs, scores, .. } = judge.judge(task, Mode::Pair, &text, &f.features)?
    else {
        panic!("a pair prompt gave no verdict")
    };
    let scores = scores.expect("per-dimension shares");
    let mut first_mean = 0.0;
    for d in &ACS {
        let line = share_line(d, "Image");
        let (lp0, _) = logprob(&f, &text, &format!("{line}0"), &f.features)?;
        let (lp1, _) = logprob(&f, &text, &format!("{line}1"), &f.features)?;
        let (lp_dot, next) = logprob(&f, &text, &format!("{line}0."), &f.features)?;
        let p1 = 1.0 / (1.0 + (lp0 - lp1).exp());
        let want = p1 + (1.0 - p1) * (lp_dot - lp0).exp().min(1.0) * tenths(&f, &next)?;
        let got = scores[d.key];
        println!("{}: fast {got:?} vs full passes {want}", d.key);
        assert!((got.first - want).abs() < 1e-4, "{}", d.key);
        assert!((got.first + got.second - 1.0).abs() < 1e-12);
        first_mean += want / 3.0;
    }
    assert!((probs.first - first_mean).abs() < 1e-4 && probs.tie == 0.0);
    Ok(())
}

#[test]
fn acs_point_dimensions_read_whole_scores_as_final_score_is_read() -> Result<()> {
    let f = fixture()?;
    let judge = judge(&f, Family::LlavaAcs)?;
    let media = MediaFeatures {
        images: vec![f.features.images[0].clone()],
        videos: vec![],
        ..Default::default()
    };
    let task = Task::ImageGeneration;
    let text = judge.prompt_text(task, Mode::Point, "a red circle", &[], Media::Images(1))?;
    assert!(text.contains("Word-wise Scores"));
    let Outcome::Point { scores, .. } = judge.judge(task, Mode::Point, &text, &media)? else {
        panic!("a point prompt gave no score")
    };
    let scores = scores.expect("per-dimension scores");
    let digits = Tensor::new(judge.digit_tokens(), &Device::Cpu)?;
    let range = ScoreRange { min: 1, max: 5 };
    for d in &ACS {
        let line = score_line(d, range);
        let mut weighted = Vec::new();
        for s in range.values() {
            let (lp, next) = logprob(&f, &text, &format!("{line}{s}"), &media)?;
            let p_digit: f32 = next
                .index_select(&digits, 0)?
                .exp()?
                .sum_all()?
                .to_scalar()?;
            weighted.push((s as f64, (lp + (1.0 - p_digit as f64).ln()).exp()));
        }
        let z: f64 = weighted.iter().map(|(_, w)| w).sum();
        let want: f64 = weighted.iter().map(|(s, w)| s * w / z).sum();
        assert!((scores[d.key] - want).abs() < 1e-4, "{}", d.key);
    }
    Ok(())
}
