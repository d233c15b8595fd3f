//! Generate mode: greedy decoding with the rationale kept; the verdict parsed from the text
//! as the reference scripts do (`unireward_models::judge::verdict`, and
//! `unireward_models::judge::answer_format` for the multi-dimension and Think formats). An
//! answer without a verdict is an error on the record.

use unireward_models::formats::score_record::{PairScores, PairShare, PointScores};
use unireward_models::judge::answer_format::{
    mean_score, parse_dimension_scores, parse_dimension_shares, parse_think, shares_probs,
};
use unireward_models::judge::sift_templates::AnswerForm;
use unireward_models::judge::{
    parse_pair, parse_score, AnswerFormat, Mode, PairProbs, PointScore, Task,
};

use super::{Judge, Outcome};
use crate::decoding::{Decoding, Prompt};
use crate::error::{EngineError, Result};

pub fn judge(
    judge: &Judge,
    form: &AnswerForm,
    task: Task,
    mode: Mode,
    prompt: &Prompt,
) -> Result<Outcome> {
    let ids = judge
        .decoder
        .generate_after(prompt, judge.max_new_tokens, &stop_tokens(judge))?;
    let text = judge.tokenizer.decode(&ids)?;
    outcome_of_format(judge, form.format, task, mode, text)
}

/// The tokens that end an answer: the chat turn's end, the text's end, and the model's EOS.
pub fn stop_tokens(judge: &Judge) -> Vec<u32> {
    let mut stop: Vec<u32> = ["<|im_end|>", "<|endoftext|>"]
        .iter()
        .filter_map(|t| judge.tokenizer.token_id(t))
        .collect();
    stop.extend(judge.decoder.text_config().eos_token_id);
    stop
}

/// The verdict a generated answer `text` to the judge's built-in prompt gives, with the text
/// kept.
pub fn outcome_of_text(judge: &Judge, task: Task, mode: Mode, text: String) -> Result<Outcome> {
    let form = judge.answer_form(task, mode)?;
    outcome_of_format(judge, form.format, task, mode, text)
}

/// The verdict of a generated answer in `format`, with the text kept.
pub fn outcome_of_format(
    judge: &Judge,
    format: AnswerFormat,
    task: Task,
    mode: Mode,
    text: String,
) -> Result<Outcome> {
    let parse_err = |e: unireward_models::judge::ParseError| EngineError::Invalid(e.to_string());
    let family = judge.style.family;
    match (mode, format) {
        (Mode::Pair, AnswerFormat::Verdict | AnswerFormat::Think) => {
            let verdict = if format == AnswerFormat::Think {
                parse_think(family, task, &text)
            } else {
                parse_pair(family, task, &text)
            }
            .map_err(parse_err)?;
            Ok(Outcome::Pair {
                probs: PairProbs::certain(verdict),
                scores: None,
                text: Some(text),
            })
        }
        (Mode::Pair, AnswerFormat::DimensionShares { dims, item }) => {
            let shares = parse_dimension_shares(dims, item, &text).map_err(parse_err)?;
            let (first, second) = shares_probs(&shares)
                .map_err(|e| EngineError::Invalid(format!("{e} in the judge's answer {text:?}")))?;
            let scores: PairScores = shares
                .iter()
                .map(|s| {
                    (
                        s.key.to_string(),
                        PairShare {
                            first: s.first,
                            second: s.second,
                        },
                    )
                })
                .collect();
            Ok(Outcome::Pair {
                probs: PairProbs {
                    first,
                    second,
                    tie: 0.0,
                },
                scores: Some(scores),
                text: Some(text),
            })
        }
        (Mode::Point, AnswerFormat::FinalScore) => {
            let score = parse_score(&text).map_err(parse_err)?;
            Ok(Outcome::Point {
                score: PointScore {
                    expected: score,
                    argmax: score,
                },
                scores: None,
                text: Some(text),
            })
        }
        (Mode::Point, AnswerFormat::DimensionScores { dims, .. }) => {
            let by_dim = parse_dimension_scores(dims, &text).map_err(parse_err)?;
            let overall = mean_score(&by_dim);
            let scores: PointScores = by_dim.iter().map(|(k, v)| (k.to_string(), *v)).collect();
            Ok(Outcome::Point {
                score: PointScore {
                    expected: overall,
                    argmax: overall,
                },
                scores: Some(scores),
                text: Some(text),
            })
        }
        (mode, format) => Err(EngineError::Invalid(format!(
            "a {mode} prompt cannot be read in the answer format {format:?}"
        ))),
    }
}
