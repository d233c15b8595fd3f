//! Fast verdicts: the answer's start is forced and the verdict sentences (pair) or the score's
//! digits (point) are scored as continuations of one prompt pass.

use candle_core::Tensor;
use unireward_models::judge::sift_templates::AnswerForm;
use unireward_models::judge::{pair_probs, pair_verdicts, point_score, Mode, Task, Verdict};

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
}

pub fn plan(
    judge: &Judge,
    task: Task,
    mode: Mode,
    form: &AnswerForm,
    prompt_text: &str,
) -> Result<Plan> {
    match mode {
        Mode::Pair => {
            let verdicts = pair_verdicts(judge.style.family, task);
            let continuations = verdicts
                .iter()
                .map(|v| {
                    let text = format!("{}{}", form.verdict_lead, v.text);
                    judge.continuation_tokens(prompt_text, &text)
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Plan {
                continuations,
                kind: PlanKind::Pair(verdicts.iter().map(|v| v.verdict).collect()),
            })
        }
        Mode::Point => {
            let scores: Vec<u32> = form.score_range.values().collect();
            let continuations = scores
                .iter()
                .map(|s| judge.continuation_tokens(prompt_text, &s.to_string()))
                .collect::<Result<Vec<_>>>()?;
            Ok(Plan {
                continuations,
                kind: PlanKind::Point(scores),
            })
        }
    }
}

/// The verdict from the scored continuations of `plan`.
pub fn reduce(judge: &Judge, plan: &Plan, scored: &[Continuation]) -> Result<Outcome> {
    match &plan.kind {
        PlanKind::Pair(verdicts) => {
            let lps: Vec<_> = verdicts
                .iter()
                .zip(scored)
                .map(|(v, c)| (*v, c.total()))
                .collect();
            Ok(Outcome::Pair {
                probs: pair_probs(&lps)?,
                text: None,
            })
        }
        PlanKind::Point(scores) => {
            let Some(first) = scored.first() else {
                return Err(EngineError::Invalid("no score continuations".into()));
            };
            let digits = Tensor::new(judge.digit_tokens(), first.next.device())?;
            let candidates = scores
                .iter()
                .zip(scored)
                .map(|(&s, c)| {
                    // The score ends here only if no further digit follows: "1" must not
                    // also collect the mass of "10".
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
            Ok(Outcome::Point {
                score: point_score(&candidates)?,
                text: None,
            })
        }
    }
}
