//! Fast verdicts: the answer's start is forced and the verdict sentences (pair) or the score's
//! digits (point) are scored as continuations of one prompt pass.
//!
//! The multi-dimension formats are read from the same one pass: each dimension's line is forced
//! in turn right after the prompt, off the prompt's cache ("Alignment Score (1-5): ",
//! "Coherence Score (1-5): ", ...), and its score's digits are scored after it. The first
//! dimension is read where the checkpoint writes it; the later ones as if their line came
//! first, since the earlier lines' values are not known in one pass. Whole-number scores (ACS)
//! are read as the "Final Score" is; the 2.0 checkpoints write decimals ("2.6947", shares
//! "0.4357"), read to the first decimal: the leading digit's probability from its
//! continuation, the first decimal's expectation from the distribution after "d.", weighted by
//! the probability that a "." follows at all.

use candle_core::Tensor;
use unireward_models::formats::score_record::{PairScores, PairShare, PointScores};
use unireward_models::judge::answer_format::{score_line, share_line, Dimension};
use unireward_models::judge::sift_templates::AnswerForm;
use unireward_models::judge::{
    pair_probs, pair_verdicts, point_score, AnswerFormat, Mode, PairProbs, PointScore, Task,
    Verdict,
};

use super::{Judge, Outcome};
use crate::backend::Continuation;
use crate::error::{EngineError, Result};

/// What a fast judgement scores: the continuations and how to read them.
pub struct Plan {
    pub continuations: Vec<Vec<u32>>,
    kind: PlanKind,
}

enum PlanKind {
    Pair(Vec<Verdict>),
    Point(Vec<u32>),
    /// Per dimension, one continuation per whole score, then (with decimals) one per
    /// "score." whose next token is the first decimal.
    DimensionScores {
        dims: &'static [Dimension],
        scores: Vec<u32>,
        decimals: bool,
    },
    /// Per dimension: the first candidate's share starting "0", starting "1", and "0.".
    DimensionShares {
        dims: &'static [Dimension],
    },
}

pub fn plan(
    judge: &Judge,
    task: Task,
    mode: Mode,
    form: &AnswerForm,
    prompt_text: &str,
) -> Result<Plan> {
    let tokens = |text: &str| judge.continuation_tokens(prompt_text, text);
    match (mode, form.format) {
        (Mode::Pair, AnswerFormat::Verdict | AnswerFormat::Think) => {
            let verdicts = pair_verdicts(judge.style.family, task);
            let continuations = verdicts
                .iter()
                .map(|v| tokens(&format!("{}{}", form.verdict_lead, v.text)))
                .collect::<Result<Vec<_>>>()?;
            Ok(Plan {
                continuations,
                kind: PlanKind::Pair(verdicts.iter().map(|v| v.verdict).collect()),
            })
        }
        (Mode::Point, AnswerFormat::FinalScore) => {
            let scores: Vec<u32> = form.score_range.values().collect();
            let continuations = scores
                .iter()
                .map(|s| tokens(&s.to_string()))
                .collect::<Result<Vec<_>>>()?;
            Ok(Plan {
                continuations,
                kind: PlanKind::Point(scores),
            })
        }
        (
            Mode::Point,
            AnswerFormat::DimensionScores {
                dims,
                range,
                decimals,
            },
        ) => {
            if decimals {
                judge.single_digits()?;
            }
            let scores: Vec<u32> = range.values().collect();
            let mut continuations = Vec::new();
            for d in dims {
                let line = score_line(d, range);
                for s in &scores {
                    continuations.push(tokens(&format!("{line}{s}"))?);
                }
                if decimals {
                    for s in &scores {
                        continuations.push(tokens(&format!("{line}{s}."))?);
                    }
                }
            }
            Ok(Plan {
                continuations,
                kind: PlanKind::DimensionScores {
                    dims,
                    scores,
                    decimals,
                },
            })
        }
        (Mode::Pair, AnswerFormat::DimensionShares { dims, item }) => {
            judge.single_digits()?;
            let mut continuations = Vec::new();
            for d in dims {
                let line = share_line(d, item);
                for tail in ["0", "1", "0."] {
                    continuations.push(tokens(&format!("{line}{tail}"))?);
                }
            }
            Ok(Plan {
                continuations,
                kind: PlanKind::DimensionShares { dims },
            })
        }
        (mode, format) => Err(EngineError::Invalid(format!(
            "a {mode} prompt cannot be read in the answer format {format:?}"
        ))),
    }
}

/// The verdict from the scored continuations of `plan`.
pub fn reduce(judge: &Judge, plan: &Plan, scored: &[Continuation]) -> Result<Outcome> {
    if scored.len() != plan.continuations.len() {
        return Err(EngineError::Invalid(format!(
            "{} continuations scored for a plan of {}",
            scored.len(),
            plan.continuations.len()
        )));
    }
    match &plan.kind {
        PlanKind::Pair(verdicts) => {
            let lps: Vec<_> = verdicts
                .iter()
                .zip(scored)
                .map(|(v, c)| (*v, c.total()))
                .collect();
            Ok(Outcome::Pair {
                probs: pair_probs(&lps)?,
                scores: None,
                text: None,
            })
        }
        PlanKind::Point(scores) => Ok(Outcome::Point {
            score: whole_score(judge, scores, scored)?,
            scores: None,
            text: None,
        }),
        PlanKind::DimensionScores {
            dims,
            scores,
            decimals,
        } => {
            let per_dim = (if *decimals { 2 } else { 1 }) * scores.len();
            let mut by_dim = PointScores::new();
            let (mut expected, mut argmax) = (0.0, 0.0);
            for (d, chunk) in dims.iter().zip(scored.chunks(per_dim)) {
                let s = if *decimals {
                    let (whole, dotted) = chunk.split_at(scores.len());
                    decimal_score(judge, scores, whole, dotted)?
                } else {
                    whole_score(judge, scores, chunk)?
                };
                by_dim.insert(d.key.to_string(), s.expected);
                expected += s.expected;
                argmax += s.argmax;
            }
            let n = dims.len() as f64;
            Ok(Outcome::Point {
                score: PointScore {
                    expected: expected / n,
                    argmax: argmax / n,
                },
                scores: Some(by_dim),
                text: None,
            })
        }
        PlanKind::DimensionShares { dims } => {
            let mut by_dim = PairScores::new();
            let mut first_total = 0.0;
            for (d, chunk) in dims.iter().zip(scored.chunks(3)) {
                let [zero, one, dotted] = chunk else {
                    return Err(EngineError::Invalid(
                        "a share without its continuations".into(),
                    ));
                };
                // "0" against "1" as the first candidate's leading digit.
                let lead = pair_probs(&[
                    (Verdict::First, zero.total()),
                    (Verdict::Second, one.total()),
                ])?;
                let first = lead.second
                    + lead.first * dot_probability(zero, dotted) * tenths(judge, dotted)?;
                by_dim.insert(
                    d.key.to_string(),
                    PairShare {
                        first,
                        second: 1.0 - first,
                    },
                );
                first_total += first;
            }
            let first = first_total / dims.len() as f64;
            Ok(Outcome::Pair {
                probs: PairProbs {
                    first,
                    second: 1.0 - first,
                    tie: 0.0,
                },
                scores: Some(by_dim),
                text: None,
            })
        }
    }
}

/// A whole-number score from one continuation per candidate, each counted only where no
/// further digit follows: "1" must not also collect the mass of "10".
fn whole_score(judge: &Judge, scores: &[u32], scored: &[Continuation]) -> Result<PointScore> {
    let Some(first) = scored.first() else {
        return Err(EngineError::Invalid("no score continuations".into()));
    };
    let digits = Tensor::new(judge.digit_tokens(), first.next.device())?;
    let candidates = scores
        .iter()
        .zip(scored)
        .map(|(&s, c)| {
            let p_digit: f32 = c
                .next
                .index_select(&digits, 0)?
                .exp()?
                .sum_all()?
                .to_scalar()?;
            let p_end = (1.0 - p_digit as f64).max(f64::MIN_POSITIVE);
            Ok((s as f64, c.total() + p_end.ln()))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(point_score(&candidates)?)
}

/// A decimal score: the leading digit's probabilities from `whole` ("3"), the first decimal
/// from `dotted` ("3."). The argmax is the most probable leading digit.
fn decimal_score(
    judge: &Judge,
    scores: &[u32],
    whole: &[Continuation],
    dotted: &[Continuation],
) -> Result<PointScore> {
    let lead = point_score(
        &scores
            .iter()
            .zip(whole)
            .map(|(&s, c)| (s as f64, c.total()))
            .collect::<Vec<_>>(),
    )?;
    let max = whole
        .iter()
        .map(Continuation::total)
        .fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = whole.iter().map(|c| (c.total() - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut expected = 0.0;
    for ((&s, w), (w_cont, d_cont)) in scores.iter().zip(&weights).zip(whole.iter().zip(dotted)) {
        let value = s as f64 + dot_probability(w_cont, d_cont) * tenths(judge, d_cont)?;
        expected += w / total * value;
    }
    Ok(PointScore {
        expected,
        argmax: lead.argmax,
    })
}

/// The probability that "." follows the digit of `digit`, from the totals of "d" and "d.".
fn dot_probability(digit: &Continuation, dotted: &Continuation) -> f64 {
    (dotted.total() - digit.total()).exp().clamp(0.0, 1.0)
}

/// The expected first decimal (in tenths) after `dotted`'s ".", over the ten digit tokens.
fn tenths(judge: &Judge, dotted: &Continuation) -> Result<f64> {
    let digits = judge.single_digits()?;
    let ids = Tensor::new(&digits[..], dotted.next.device())?;
    let probs: Vec<f32> = dotted.next.index_select(&ids, 0)?.exp()?.to_vec1()?;
    let total: f64 = probs.iter().map(|&p| p as f64).sum();
    if total.is_nan() || total <= 0.0 {
        return Err(EngineError::Invalid(
            "no probability on any decimal digit after a score's \".\"".into(),
        ));
    }
    Ok(probs
        .iter()
        .enumerate()
        .map(|(j, &p)| j as f64 / 10.0 * p as f64)
        .sum::<f64>()
        / total)
}
