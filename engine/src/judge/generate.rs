//! Generate mode: greedy decoding with the rationale kept; the verdict parsed from the text
//! as the reference scripts do. An answer without a verdict is an error on the record.

use candle_core::Tensor;
use unireward_models::judge::{parse_pair, parse_score, Mode, PairProbs, PointScore, Task};

use super::{Judge, Outcome};
use crate::decoding::Decoding;
use crate::error::{EngineError, Result};

pub fn judge(judge: &Judge, task: Task, mode: Mode, embeds: &Tensor) -> Result<Outcome> {
    let ids = judge
        .backend
        .generate(embeds, judge.max_new_tokens, &stop_tokens(judge))?;
    let text = judge.tokenizer.decode(&ids)?;
    outcome_of_text(judge, task, mode, text)
}

/// The tokens that end an answer: the chat turn's end, the text's end, and the model's EOS.
pub fn stop_tokens(judge: &Judge) -> Vec<u32> {
    let mut stop: Vec<u32> = ["<|im_end|>", "<|endoftext|>"]
        .iter()
        .filter_map(|t| judge.tokenizer.token_id(t))
        .collect();
    stop.extend(judge.backend.config().text.eos_token_id);
    stop
}

/// The verdict a generated answer `text` gives, with the text kept.
pub fn outcome_of_text(judge: &Judge, task: Task, mode: Mode, text: String) -> Result<Outcome> {
    let parse_err = |e: unireward_models::judge::ParseError| EngineError::Invalid(e.to_string());
    match mode {
        Mode::Pair => {
            let verdict = parse_pair(judge.style.family, task, &text).map_err(parse_err)?;
            Ok(Outcome::Pair {
                probs: PairProbs::certain(verdict),
                text: Some(text),
            })
        }
        Mode::Point => {
            let score = parse_score(&text).map_err(parse_err)?;
            Ok(Outcome::Point {
                score: PointScore {
                    expected: score,
                    argmax: score,
                },
                text: Some(text),
            })
        }
    }
}
